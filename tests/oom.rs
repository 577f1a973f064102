//! OOM that heals, end to end: the real daemon and the Python worker's sim backend, whose
//! `oom` fault goes away only once the memory it names is saved (`sim.cured_by`), as a real
//! model's does. The scheduler's ladder (src/scheduler/policy.rs) adds memory-saving
//! options attempt by attempt, or moves the run to a larger GPU group.

mod common;

use common::{drop_file, runs, wait_until, Daemon, Home};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn line(name: &str, extra: &str) -> String {
    format!(
        "{{\"name\": \"{name}\", \"visual_input\": \"videos/city1/color.mp4\", \"prompt\": \"{name}\", \
         \"control_overrides\": {{\"edge\": {{\"control_weight\": 0.5}}}}{extra}}}\n"
    )
}

fn by_name(home: &Home, name: &str) -> Option<Value> {
    runs(home).into_iter().find(|r| r["name"] == name)
}

fn ended(home: &Home, name: &str) -> bool {
    by_name(home, name).is_some_and(|r| ["completed", "failed", "cancelled"].contains(&r["status"].as_str().unwrap_or("")))
}

fn manifest(home: &Home, id: &str) -> Value {
    let path = home.outbox().join(format!("run_{id}/manifest.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn event_kinds(home: &Home, id: &str) -> Vec<String> {
    let shown: Value = serde_json::from_str(&home.ok(&["show", id, "--json"])).unwrap();
    shown["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap_or("").to_string()).collect()
}

#[test]
fn a_run_out_of_memory_twice_heals_with_options_and_its_manifest_says_which() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let daemon = Daemon::start(&home, "backend_args = [\"--job-seconds\", \"0.2\"]", &[]);
    // Cured by the T5 offload (first rung) and the network offload (second): two OOMs, then
    // the third attempt (scheduler.max_attempts is 3) fits.
    let cure = ", \"sim\": {\"fail\": \"oom\", \"cured_by\": [\"offload_text_encoder_model\", \"offload_network\"]}";
    drop_file(&home, "heal.jsonl", &format!("{}{}", line("heals", cure), line("plain", "")));
    assert!(wait_until(LONG, || ended(&home, "heals") && ended(&home, "plain")), "{}", daemon.log_text());
    let run = by_name(&home, "heals").unwrap();
    assert_eq!(run["status"], "completed", "{run}\n{}", daemon.log_text());
    assert_eq!(run["attempts"], 3);
    let id = run["id"].as_str().unwrap();
    let m = manifest(&home, id);
    let remedy = &m["remedy"];
    let steps: Vec<(u64, Vec<String>, bool)> = remedy["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let changes = s["changes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
            (s["after_attempt"].as_u64().unwrap(), changes, s["keeps_result"].as_bool().unwrap())
        })
        .collect();
    let want = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        steps,
        [
            (1, want(&["offload_guardrail_models = true", "offload_text_encoder_model = true", "offload_tokenizer = true"]), true),
            (2, want(&["offload_network = true"]), true),
        ],
        "{m}"
    );
    // The worker really loaded with them (it reports what it applied) and the run went to no
    // other group.
    let applied = &m["settings"]["load_options"];
    assert_eq!(applied.as_object().map(|o| o.len()), Some(4), "{m}");
    assert_eq!(applied["offload_network"], true);
    assert_eq!(remedy["min_gpus"], 0);
    assert_eq!(m["attempts"], 3);
    let log = std::fs::read_to_string(home.outbox().join(format!("run_{id}/execution.log"))).unwrap();
    assert!(log.contains("out of GPU memory: the next attempt adds offload_network = true"), "{log}");
    assert!(log.contains("memory-saving options for this attempt"), "{log}");
    assert_eq!(event_kinds(&home, id).iter().filter(|k| *k == "remedy").count(), 2);
    // A run that needed nothing: no remedy, and a model loaded without the options.
    let plain = by_name(&home, "plain").unwrap();
    assert_eq!(plain["status"], "completed");
    let pm = manifest(&home, plain["id"].as_str().unwrap());
    assert_eq!(pm["remedy"], Value::Null, "{pm}");
    assert_eq!(pm["settings"]["load_options"], serde_json::json!({}), "{pm}");
}

#[test]
fn an_oom_no_option_cures_fails_after_max_attempts_with_what_was_tried() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    // One GPU group only, and changes of the result allowed: every rung but the group is
    // tried; the fault wants a group of 4, which this host has not.
    let daemon = Daemon::start(
        &home,
        "backend_args = [\"--job-seconds\", \"0.1\"]\n[scheduler]\nmax_attempts = 5\noom_may_change_result = true\n",
        &[],
    );
    drop_file(&home, "never.jsonl", &line("never", ", \"sim\": {\"fail\": \"oom\", \"cured_by\": [\"gpus:4\"]}"));
    assert!(wait_until(Duration::from_secs(90), || ended(&home, "never")), "{}", daemon.log_text());
    let run = by_name(&home, "never").unwrap();
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["attempts"], 5);
    let error = run["error"].as_str().unwrap();
    assert!(error.starts_with("CUDA out of memory (simulated) (after 5 attempts); memory-saving options tried: "), "{error}");
    for tried in
        ["offload_tokenizer = true", "offload_network = true", "num_video_frames_per_chunk = 61", "num_video_frames_per_chunk = 29"]
    {
        assert!(error.contains(tried), "{tried}: {error}");
    }
    assert!(!error.contains("GPU group"), "no larger group here: {error}");
    // The last attempt's spec (what the worker got) had the fewest frames per chunk.
    let id = run["id"].as_str().unwrap();
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(home.root().join(format!("state/work/{id}/spec.json"))).unwrap())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec["num_video_frames_per_chunk"], 29, "{spec}");
}

#[test]
fn a_larger_gpu_group_takes_a_run_its_own_group_cannot_hold() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    // Groups [0] and [1, 2] of three fake GPUs; the group of two runs under (fake) torchrun,
    // which does not start until the test says so: the run meets the group of one first.
    let fakes = Path::new(env!("CARGO_MANIFEST_DIR")).join("worker/tests/fakes");
    let go = home.path().join("big-group-may-start");
    let go_text = go.display().to_string();
    let daemon = Daemon::start(
        &home,
        &format!(
            "backend_args = [\"--job-seconds\", \"0.1\"]\ngpus = [[0], [1, 2]]\nmodel_code = \"{}\"\n[scheduler]\nmax_attempts = 4\n",
            fakes.display()
        ),
        &[("COSMOS_FAKE_GPUS", "3"), ("FAKE_TORCHRUN_UNTIL", &go_text)],
    );
    drop_file(&home, "big.jsonl", &line("big", ", \"sim\": {\"fail\": \"oom\", \"cured_by\": [\"gpus:2\"]}"));
    // Two offload rungs on the group of one, then the move.
    let db = home.root().join("state/cosmos.db");
    let moved = || {
        rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("SELECT min_gpus FROM runs LIMIT 1", [], |r| r.get::<_, i64>(0)))
            .is_ok_and(|n| n == 2)
    };
    assert!(wait_until(LONG, moved), "{}", daemon.log_text());
    let run = by_name(&home, "big").unwrap();
    assert_eq!(run["attempts"], 3, "three attempts on the group of one: {run}");
    std::fs::write(&go, b"").unwrap();
    assert!(wait_until(Duration::from_secs(90), || ended(&home, "big")), "{}", daemon.log_text());
    let run = by_name(&home, "big").unwrap();
    assert_eq!(run["status"], "completed", "{run}\n{}", daemon.log_text());
    assert_eq!(run["attempts"], 4);
    let m = manifest(&home, run["id"].as_str().unwrap());
    assert_eq!(m["settings"]["world_size"], 2, "ran on the group of two: {m}");
    assert_eq!(m["remedy"]["min_gpus"], 2);
    let last = m["remedy"]["steps"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["changes"], serde_json::json!(["a GPU group of 2"]), "{m}");
    assert_eq!(last["after_attempt"], 3);
}
