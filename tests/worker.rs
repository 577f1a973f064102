//! The warm worker end to end: the real daemon, the real Python worker (sim backend), run
//! folders in the outbox.

mod common;

use common::{drop_file, runs, status, wait_until, Daemon, Home};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(40);

fn line(name: &str, controls: &str, extra: &str) -> String {
    format!(
        "{{\"name\": \"{name}\", \"visual_input\": \"videos/city1/color.mp4\", \"prompt\": \"{name}\", \"control_overrides\": {controls}{extra}}}\n"
    )
}

const EDGE: &str = "{\"edge\": {\"control_weight\": 0.5}}";

fn by_name<'a>(runs: &'a [Value], name: &str) -> &'a Value {
    runs.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no run named {name}"))
}

fn all_final(home: &Home, n: usize) -> bool {
    let r = runs(home);
    r.len() == n && r.iter().all(|r| ["completed", "failed", "cancelled"].contains(&r["status"].as_str().unwrap_or("")))
}

/// Checks every `size mtime sha256 path` line of a manifest.txt, as `sha256sum -c` would.
fn verify_manifest(dir: &Path) -> usize {
    let text = std::fs::read_to_string(dir.join("manifest.txt")).unwrap();
    let mut n = 0;
    for l in text.lines() {
        let parts: Vec<&str> = l.splitn(4, ' ').collect();
        assert_eq!(parts.len(), 4, "{l}");
        let path = dir.join(parts[3]);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len().to_string(), parts[0], "{l}");
        let out = std::process::Command::new("sha256sum").arg(&path).output().unwrap();
        let digest = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string();
        assert_eq!(digest, parts[2], "{l}");
        n += 1;
    }
    n
}

#[test]
fn three_lines_give_three_verified_run_folders_and_a_batch_folder() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let daemon = Daemon::start(&home, "backend_args = [\"--job-seconds\", \"0.2\"]", &[]);
    let text = format!(
        "{}{}{}",
        line(
            "a",
            "{\"vis\": {\"control_weight\": 0.3}, \"depth\": {\"input_control\": \"videos/city1/depth.mp4\", \"control_weight\": 0.2}}",
            ""
        ),
        line("b", EDGE, ", \"seed\": 7"),
        line("c", EDGE, ", \"priority\": 5"),
    );
    drop_file(&home, "three.jsonl", &text);
    assert!(wait_until(LONG, || all_final(&home, 3)), "{:?}\n{}", runs(&home), daemon.log_text());
    let runs = runs(&home);
    for r in &runs {
        assert_eq!(r["status"], "completed", "{r}");
        let dir = home.outbox().join(format!("run_{}", r["id"].as_str().unwrap()));
        for f in ["output.mp4", "execution.log", "manifest.txt", "manifest.json", "spec.json", "prompt.txt"] {
            assert!(dir.join(f).is_file(), "{} lacks {f}", dir.display());
        }
        assert!(std::fs::metadata(dir.join("output.mp4")).unwrap().len() > 0);
        assert!(verify_manifest(&dir) >= 5, "output, log, spec, prompt and a control video");
        let manifest: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["run_id"], r["id"]);
        assert_eq!(manifest["prompt_id"], r["prompt_id"]);
        assert_eq!(manifest["worker"]["backend"], "sim");
        assert_eq!(r["outputs"]["output_dir"].as_str().unwrap(), dir.to_str().unwrap());
        assert_eq!(r["outputs"]["type"], "batch_inference");
        // spec.json is exactly what the worker got: its own controls only.
        let spec: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("spec.json")).unwrap()).unwrap();
        let hints: Vec<&str> = ["vis", "edge", "depth", "seg"].into_iter().filter(|h| spec.get(*h).is_some()).collect();
        assert_eq!(hints.join(","), r["control_set"].as_str().unwrap());
    }
    assert!(home.outbox().join(format!("run_{}/controls/depth.mp4", by_name(&runs, "a")["id"].as_str().unwrap())).is_file());
    // Priority 5 ran first.
    let started = |n: &str| by_name(&runs, n)["started_at"].as_str().unwrap().to_string();
    assert!(started("c") < started("a") && started("c") < started("b"));
    // The batch folder, in NVIDIA's format.
    let batch = std::fs::read_dir(home.outbox())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("batch_three_"))
        .expect("batch folder");
    for f in ["batch_spec.json", "batch_run.log", "three.jsonl"] {
        assert!(batch.join(f).is_file(), "{f}");
    }
    assert_eq!(std::fs::read_to_string(batch.join("three.jsonl")).unwrap().lines().count(), 3);
    // Receipt updated as runs ended; status.json live.
    let receipt = &home.receipts_with("accepted")[0];
    assert!(receipt["runs"].as_array().unwrap().iter().all(|r| r["status"] == "completed"), "{receipt}");
    let st = status(&home);
    assert_eq!(st["queue"]["completed"], 3);
    assert_eq!(st["daemon"]["state"], "running");
    // cosmos status and logs.
    let text = home.ok(&["status"]);
    assert!(text.contains("3 completed") && text.contains("worker 0: sim idle (process"), "{text}");
    let log = home.ok(&["logs", by_name(&runs, "a")["id"].as_str().unwrap()]);
    assert!(log.contains("attempt 1 of run") && log.contains("reports done"), "{log}");
    assert!(daemon.stop().success());
    assert_eq!(status(&home)["daemon"]["state"], "draining");
}

#[test]
fn failures_are_isolated_and_retryable_ones_retried() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let daemon = Daemon::start(&home, "backend_args = [\"--job-seconds\", \"0.1\"]\n[scheduler]\nrun_timeout = \"3s\"\n", &[]);
    let text = format!(
        "{}{}{}{}{}",
        line("err", EDGE, ", \"sim\": {\"fail\": \"error\"}"),
        line("crash", EDGE, ", \"sim\": {\"fail\": \"crash\", \"attempts\": 1}"),
        line("hang", EDGE, ", \"sim\": {\"fail\": \"hang\", \"attempts\": 1}"),
        line("oom", EDGE, ", \"sim\": {\"fail\": \"oom\"}"),
        line("fine", EDGE, ""),
    );
    drop_file(&home, "faults.jsonl", &text);
    assert!(wait_until(Duration::from_secs(90), || all_final(&home, 5)), "{:#?}\n{}", runs(&home), daemon.log_text());
    let runs = runs(&home);
    let err = by_name(&runs, "err");
    assert_eq!((err["status"].as_str(), err["attempts"].as_u64()), (Some("failed"), Some(1)), "not retried: {err}");
    assert_eq!(err["error"], "simulated error");
    let crash = by_name(&runs, "crash");
    assert_eq!((crash["status"].as_str(), crash["attempts"].as_u64()), (Some("completed"), Some(2)), "{crash}");
    let hang = by_name(&runs, "hang");
    assert_eq!((hang["status"].as_str(), hang["attempts"].as_u64()), (Some("completed"), Some(2)), "{hang}");
    let oom = by_name(&runs, "oom");
    assert_eq!((oom["status"].as_str(), oom["attempts"].as_u64()), (Some("failed"), Some(3)), "retried up to max_attempts: {oom}");
    assert_eq!(by_name(&runs, "fine")["status"], "completed");
    // Failed runs leave no run folder; completed ones do.
    assert!(!home.outbox().join(format!("run_{}", err["id"].as_str().unwrap())).exists());
    let show = home.json(&["show", hang["id"].as_str().unwrap(), "--json"]);
    let kinds: Vec<&str> = show["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["created", "running", "queued", "running", "completed"], "{show}");
    // `cosmos retry` queues a failed run again (it fails again, the same way).
    home.ok(&["retry", err["id"].as_str().unwrap()]);
    assert!(wait_until(LONG, || home.json(&["show", err["id"].as_str().unwrap(), "--json"])["attempts"] == 2), "{}", daemon.log_text());
}

#[test]
fn cancel_a_queued_and_a_running_run() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let daemon = Daemon::start(&home, "backend_args = [\"--job-seconds\", \"0.1\"]\n[scheduler]\ncancel_grace = \"5s\"\n", &[]);
    let text = format!("{}{}", line("long", EDGE, ", \"sim\": {\"seconds\": 30}"), line("next", EDGE, ""));
    drop_file(&home, "cancel.jsonl", &text);
    assert!(wait_until(LONG, || status(&home)["current"]["run_id"].is_string()), "{}", daemon.log_text());
    let all = runs(&home);
    let (long, next) =
        (by_name(&all, "long")["id"].as_str().unwrap().to_string(), by_name(&all, "next")["id"].as_str().unwrap().to_string());
    assert_eq!(status(&home)["current"]["run_id"], long.as_str());
    let out = home.ok(&["cancel", &next]);
    assert!(out.contains(&format!("Cancelled run {next}")), "{out}");
    let out = home.ok(&["cancel", &long]);
    assert!(out.contains("Cancelling run"), "{out}");
    assert!(wait_until(Duration::from_secs(5), || all_final(&home, 2)), "{:?}\n{}", runs(&home), daemon.log_text());
    let all = runs(&home);
    assert!(all.iter().all(|r| r["status"] == "cancelled"), "{all:?}");
    assert!(!home.outbox().join(format!("run_{long}")).exists());
    // A finished run cannot be cancelled.
    assert!(home.usage_error(&["cancel", &long]).contains("only pending, queued or running"));
}

#[test]
fn kill_9_mid_run_loses_nothing_and_completes_each_run_once() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let cfg = "backend_args = [\"--job-seconds\", \"0.8\"]";
    let daemon = Daemon::start(&home, cfg, &[]);
    let text: String = (0..4).map(|i| line(&format!("k{i}"), EDGE, "")).collect();
    drop_file(&home, "kill.jsonl", &text);
    assert!(wait_until(LONG, || runs(&home).iter().filter(|r| r["status"] == "completed").count() >= 1), "{}", daemon.log_text());
    assert!(wait_until(LONG, || runs(&home).iter().any(|r| r["status"] == "running")));
    let worker_pid = status(&home)["workers"][0]["pid"].as_u64().unwrap();
    daemon.kill9();
    // The worker notices its daemon is gone (stdin closed) and exits: no orphans.
    assert!(
        wait_until(Duration::from_secs(10), || !Path::new(&format!("/proc/{worker_pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{worker_pid}/stat")).map(|s| s.contains(") Z ")).unwrap_or(true)),
        "worker {worker_pid} outlived its daemon"
    );
    let daemon = Daemon::start(&home, cfg, &[]);
    assert!(wait_until(LONG, || all_final(&home, 4)), "{:?}\n{}", runs(&home), daemon.log_text());
    for r in runs(&home) {
        assert_eq!(r["status"], "completed", "{r}");
        let show = home.json(&["show", r["id"].as_str().unwrap(), "--json"]);
        let completions = show["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "completed").count();
        assert_eq!(completions, 1, "completed exactly once: {show}");
    }
    let folders =
        std::fs::read_dir(home.outbox()).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("run_")).count();
    assert_eq!(folders, 4);
    let staging = std::fs::read_dir(home.outbox().join(".staging")).unwrap().count();
    assert_eq!(staging, 0, "no half-built folder left");
}

#[test]
fn interleaved_control_sets_load_once_each() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let daemon = Daemon::start(&home, "backend_args = [\"--load-seconds\", \"0.2\"]", &[]);
    let sets = [
        "{\"edge\": {\"control_weight\": 0.5}}",
        "{\"vis\": {\"control_weight\": 0.5}}",
        "{\"depth\": {\"control_weight\": 0.5}}",
        "{\"seg\": {\"control_weight\": 0.5}}",
    ];
    let text: String = (0..12).map(|i| line(&format!("i{i}"), sets[i % 4], "")).collect();
    drop_file(&home, "mixed.jsonl", &text);
    assert!(wait_until(LONG, || all_final(&home, 12)), "{}", daemon.log_text());
    assert!(runs(&home).iter().all(|r| r["status"] == "completed"));
    assert_eq!(status(&home)["workers"][0]["loads"], 4, "one load per control set: {}", status(&home));
}

#[test]
fn pause_holds_the_queue_and_submit_wait_reports_failures() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let daemon = Daemon::start(&home, "", &[]);
    home.ok(&["pause"]);
    drop_file(&home, "held.jsonl", &line("held", EDGE, ""));
    assert!(wait_until(LONG, || runs(&home).len() == 1));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(runs(&home)[0]["status"], "queued", "paused: nothing starts");
    assert!(wait_until(LONG, || status(&home)["daemon"]["state"] == "paused"));
    home.ok(&["resume"]);
    assert!(wait_until(LONG, || all_final(&home, 1)), "{}", daemon.log_text());

    // --wait: exit 0 only if every run completed.
    let file = home.path().join("wait.jsonl");
    std::fs::write(&file, format!("{}{}", line("w-ok", EDGE, ""), line("w-bad", EDGE, ", \"sim\": {\"fail\": \"error\"}"))).unwrap();
    let out = home.cosmos().args(["submit", "--wait"]).arg(&file).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("1 completed, 1 failed") && text.contains("failed: simulated error"), "{text}");
    let good = home.path().join("good.jsonl");
    std::fs::write(&good, line("w-good", EDGE, "")).unwrap();
    let out = home.cosmos().args(["submit", "--wait"]).arg(&good).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn seed_commands_execute_and_upscale_follows_its_parent() {
    let home = Home::new();
    let daemon = Daemon::start(&home, "", &[]);
    let ps = common::grep_id(&home.ok(&["create", "prompt", "A city", "videos/city1"]), "ps_");
    let r1 = common::grep_id(&home.ok(&["create", "run", &ps, "--weights", "0.3", "0.4", "0.2", "0"]), "rs_");
    let r2 = common::grep_id(&home.ok(&["create", "run", &ps, "--weights", "0", "0.5", "0", "0"]), "rs_");
    home.ok(&["batch-inference", &r1, "--batch-name", "urban_scenes_v1"]);
    home.ok(&["inference", &r2, "--upscale-weight", "0.7"]);
    assert!(wait_until(LONG, || all_final(&home, 3)), "{:?}\n{}", runs(&home), daemon.log_text());
    let all = runs(&home);
    assert!(all.iter().all(|r| r["status"] == "completed"), "{all:?}");
    let run1 = all.iter().find(|r| r["id"] == r1.as_str()).unwrap();
    assert_eq!(run1["outputs"]["type"], "batch_inference");
    assert!(run1["outputs"]["batch_name"].as_str().unwrap().starts_with("batch_urban_scenes_v1_"));
    assert!(home.outbox().join(run1["outputs"]["batch_name"].as_str().unwrap()).join("urban_scenes_v1.jsonl").is_file());
    let run2 = all.iter().find(|r| r["id"] == r2.as_str()).unwrap();
    assert_eq!(run2["outputs"]["type"], "inference");
    let child = all.iter().find(|r| r["parent_id"] == r2.as_str()).expect("an upscale run followed");
    assert_eq!(child["control_set"], "upscale");
    assert_eq!(child["controls"]["upscale"]["weight"], 0.7);
    let parent_manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(home.outbox().join(format!("run_{r2}/manifest.json"))).unwrap()).unwrap();
    assert_eq!(parent_manifest["children"][0], child["id"]);
    let child_manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(home.outbox().join(format!("run_{}/manifest.json", child["id"].as_str().unwrap()))).unwrap(),
    )
    .unwrap();
    assert_eq!(child_manifest["parent"], r2.as_str());
}

#[test]
fn the_disk_guard_holds_runs_and_says_why() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let daemon = Daemon::start(&home, "[outbox]\nmin_free = \"1000000TiB\"\n", &[]);
    drop_file(&home, "guarded.jsonl", &line("guarded", EDGE, ""));
    assert!(wait_until(LONG, || status(&home)["waiting"].as_str().is_some_and(|w| w.starts_with("disk guard"))), "{}", status(&home));
    assert_eq!(runs(&home)[0]["status"], "queued");
    assert!(home.ok(&["status"]).contains("waiting: disk guard"));
    drop(daemon);
}

#[test]
fn sigterm_hands_a_long_run_back_and_logs_follow_a_run() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let daemon = Daemon::start(&home, "[daemon]\nstop_grace = \"1s\"\n", &[]);
    drop_file(&home, "long.jsonl", &line("long", EDGE, ", \"sim\": {\"fail\": \"hang\", \"attempts\": 1}"));
    assert!(wait_until(LONG, || runs(&home).first().is_some_and(|r| r["status"] == "running")), "{}", daemon.log_text());
    let id = runs(&home)[0]["id"].as_str().unwrap().to_string();
    let started = std::time::Instant::now();
    assert!(daemon.stop().success());
    assert!(started.elapsed() < Duration::from_secs(10), "drained within stop_grace");
    let run = &runs(&home)[0];
    assert_eq!(run["status"], "queued", "handed back, not lost: {run}");
    // Restarted: the run goes again (attempt 2, which the sim key lets through) and
    // `cosmos logs -f` follows it to its end.
    let daemon = Daemon::start(&home, "backend_args = [\"--job-seconds\", \"0.5\"]", &[]);
    let out = home.cosmos().args(["logs", "-f", &id]).timeout(Duration::from_secs(60)).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("handing the run back") && text.contains("attempt 2 of run") && text.contains("reports done"), "{text}");
    assert_eq!(runs(&home)[0]["status"], "completed", "{}", daemon.log_text());
}

#[test]
fn gpu_samples_reach_status_and_manifests_and_gate_the_worker() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    // A worker with a group of two GPUs runs two processes under torchrun (the fake
    // torch.distributed and torchrun of worker/tests/fakes, given as NVIDIA's checkout).
    let fakes = Path::new(env!("CARGO_MANIFEST_DIR")).join("worker/tests/fakes");
    let daemon = Daemon::start(
        &home,
        &format!("backend_args = [\"--job-seconds\", \"0.3\"]\ngpus = [[0, 1]]\nmodel_code = \"{}\"", fakes.display()),
        &[("COSMOS_FAKE_GPUS", "2:81920:1024")],
    );
    drop_file(&home, "gpu.jsonl", &line("g", EDGE, ""));
    assert!(wait_until(LONG, || all_final(&home, 1)), "{}", daemon.log_text());
    let st = status(&home);
    assert!(st["nvml"].as_str().unwrap().starts_with("fake (2 GPUs"), "{st}");
    assert_eq!(st["gpus"].as_array().map(Vec::len), Some(2));
    assert_eq!(st["gpus"][1]["memory_total_mib"], 81920);
    assert_eq!(st["workers"][0]["gpus"], serde_json::json!([0, 1]));
    let id = runs(&home)[0]["id"].as_str().unwrap().to_string();
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(home.outbox().join(format!("run_{id}/manifest.json"))).unwrap()).unwrap();
    assert!(manifest["gpu"]["samples"].as_u64().unwrap() >= 1, "{manifest}");
    assert_eq!(manifest["gpu"]["gpus"][0]["peak_memory_mib"], 1024);
    assert_eq!(manifest["settings"]["world_size"], 2, "two ranks under torchrun: {manifest}");
    assert!(
        daemon.log_text().contains("-m torch.distributed.run --standalone --nnodes=1 --nproc_per_node=2 -m cosmos_worker"),
        "{}",
        daemon.log_text()
    );
    assert!(home.ok(&["status"]).contains("gpu 1 Fake GPU: 1024/81920 MiB"));
    drop(daemon);

    // Memory admission: too little free GPU memory, the worker waits and says why.
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let daemon = Daemon::start(&home, "min_free_gpu_mib = 500", &[("COSMOS_FAKE_GPUS", "1:1000:900")]);
    drop_file(&home, "held.jsonl", &line("held", EDGE, ""));
    assert!(
        wait_until(LONG, || status(&home)["waiting"].as_str().is_some_and(|w| w.contains("GPU 0 has 100 MiB free"))),
        "{}\n{}",
        status(&home),
        daemon.log_text()
    );
    assert!(wait_until(LONG, || runs(&home).len() == 1));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(runs(&home)[0]["status"], "queued", "held back, not started");
}

#[test]
fn a_worker_per_gpu_shares_the_queue_without_running_anything_twice() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let daemon = Daemon::start(&home, "gpus = [0, 1]\nbackend_args = [\"--job-seconds\", \"0.4\"]", &[("COSMOS_FAKE_GPUS", "2")]);
    let text: String = (0..8).map(|i| line(&format!("p{i}"), EDGE, "")).collect();
    drop_file(&home, "two.jsonl", &text);
    assert!(wait_until(LONG, || all_final(&home, 8)), "{}", daemon.log_text());
    let mut pids = std::collections::BTreeSet::new();
    for r in runs(&home) {
        assert_eq!(r["status"], "completed", "{r}\n{}", daemon.log_text());
        assert_eq!(r["attempts"], 1, "each run started once: {r}");
        let m: Value = serde_json::from_str(
            &std::fs::read_to_string(home.outbox().join(format!("run_{}/manifest.json", r["id"].as_str().unwrap()))).unwrap(),
        )
        .unwrap();
        pids.insert(m["worker"]["pid"].as_u64().unwrap());
    }
    assert_eq!(pids.len(), 2, "both workers ran runs: {pids:?}");
    let st = status(&home);
    assert_eq!(st["workers"].as_array().map(Vec::len), Some(2), "{st}");
}

#[test]
fn a_scheduler_that_stops_on_an_error_stops_the_daemon_with_exit_1() {
    let home = Home::new();
    let d = Daemon::start(&home, "", &[]);
    // Something outside breaks the store under the scheduler (here: a table it reads at
    // every turn is gone). Taking files in with no scheduler to run them would be worse
    // than stopping: systemd restarts a daemon that exits 1.
    let db = rusqlite::Connection::open(home.root().join("state/cosmos.db")).expect("open the store");
    db.execute_batch("DROP TABLE daemon_state").expect("drop");
    let mut child = d;
    let ok = wait_until(Duration::from_secs(10), || matches!(child.child.try_wait(), Ok(Some(_))));
    assert!(ok, "cosmosd went on without its scheduler:\n{}", child.log_text());
    let status = child.child.wait().expect("status");
    assert_eq!(status.code(), Some(1), "{}", child.log_text());
    let log = child.log_text();
    assert!(log.contains("the scheduler of worker 0 stopped") && log.contains("no such table: daemon_state"), "{log}");
}
