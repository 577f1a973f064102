//! A worker that misbehaves (worker/tests/misbehave: garbage on the event stream, a 100 MB
//! line, invalid UTF-8, events for a run it was not given, `done` without its video, an
//! exit mid-line, a model load that hangs): each run ends retried or failed with a message
//! in its log, and the daemon goes on, its memory bounded.

mod common;

use common::{drop_file, runs, status, wait_until, Daemon, Home};
use serde_json::Value;
use std::time::Duration;

fn line(prompt: &str, controls: &str) -> String {
    format!(
        "{{\"name\": \"{}\", \"visual_input\": \"videos/city1/color.mp4\", \"prompt\": \"{prompt}\", \"control_overrides\": {controls}}}\n",
        prompt.split(' ').next().unwrap_or("x")
    )
}

fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse::<f64>().ok().map(|kb| kb / 1024.0)
}

#[test]
fn each_misbehaviour_ends_in_a_retry_or_a_failure_with_a_message_and_the_daemon_goes_on() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let state = home.path().join("misbehave-state");
    std::fs::create_dir_all(&state).unwrap();
    let worker = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("worker/tests/misbehave");
    let d = Daemon::start(
        &home,
        &format!(
            "worker_path = \"{}\"\nenv = {{ MISBEHAVE_STATE = \"{}\" }}\n[scheduler]\nrun_timeout = \"5s\"\n",
            worker.display(),
            state.display()
        ),
        &[],
    );
    let edge = r#"{"edge": {"control_weight": 0.5}}"#;
    let seg = r#"{"seg": {"control_weight": 0.5}}"#;
    let scenarios = ["garbage", "huge", "badutf8", "stranger", "nooutput", "exitmidline", "fine"];
    let mut text: String = scenarios.iter().map(|s| line(&format!("{s} run"), edge)).collect();
    text.push_str(&line("hangload run", seg));
    drop_file(&home, "misbehave.jsonl", &text);
    let ended = |r: &Value| matches!(r["status"].as_str(), Some("completed" | "failed" | "cancelled"));
    assert!(
        wait_until(Duration::from_secs(90), || {
            let r = runs(&home);
            r.len() == 8 && r.iter().all(ended)
        }),
        "{:#?}\n{}",
        runs(&home),
        d.log_text()
    );
    let all = runs(&home);
    let by_name = |n: &str| all.iter().find(|r| r["name"] == n).unwrap_or_else(|| panic!("no run {n}")).clone();
    let log_of = |n: &str| home.ok(&["logs", by_name(n)["id"].as_str().unwrap()]);

    for (name, says) in [
        ("garbage", "a line that is not an event"),
        ("huge", "a line of 104857600 bytes (over 1048576), skipped"),
        ("badutf8", "a line that is not UTF-8"),
        ("stranger", "which it was not given; ignored"),
    ] {
        let r = by_name(name);
        assert_eq!(r["status"], "completed", "{name}: {r}");
        assert_eq!(r["attempts"], 1, "{name}: ignored, not retried");
        assert!(log_of(name).contains(says), "{name}: {}", log_of(name));
    }
    let r = by_name("nooutput");
    assert_eq!(r["status"], "failed", "{r}");
    assert!(r["error"].as_str().unwrap_or_default().contains("output video is missing"), "{r}");
    let r = by_name("exitmidline");
    assert_eq!((r["status"].as_str(), r["attempts"].as_u64()), (Some("completed"), Some(2)), "retried after the crash: {r}");
    assert!(log_of("exitmidline").contains("cut off by the worker's exit"), "{}", log_of("exitmidline"));
    let r = by_name("hangload");
    assert_eq!((r["status"].as_str(), r["attempts"].as_u64()), (Some("completed"), Some(2)), "retried after the stuck load: {r}");
    assert!(log_of("hangload").contains("model load exceeded scheduler.run_timeout"), "{}", log_of("hangload"));
    assert_eq!(by_name("fine")["status"], "completed");

    // The 100 MB line was never held: the daemon's peak memory stays far below it.
    let peak = peak_rss_mib(d.child.id()).expect("/proc");
    assert!(peak < 80.0, "cosmosd peaked at {peak:.0} MiB");
    let exit = d.stop();
    assert!(exit.success(), "the daemon is fine: {exit:?}");
}

#[test]
fn a_worker_speaking_another_protocol_is_refused_and_its_runs_wait_with_the_reason() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let worker = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("worker/tests/misbehave");
    let d = Daemon::start(&home, &format!("worker_path = \"{}\"\nenv = {{ MISBEHAVE_PROTOCOL = \"7\" }}\n", worker.display()), &[]);
    drop_file(&home, "one.jsonl", &line("fine run", r#"{"edge": {"control_weight": 0.5}}"#));
    let says = "speaks protocol 7; this daemon speaks 1";
    assert!(
        wait_until(Duration::from_secs(30), || status(&home).to_string().contains(says)),
        "status.json: {}\n{}",
        status(&home),
        d.log_text()
    );
    // Refused before anything was sent to it: the run waits in the queue, it is not failed.
    let r = runs(&home);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["status"], "queued", "{r:?}");
    assert!(d.log_text().contains(says), "{}", d.log_text());
    let exit = d.stop();
    assert!(exit.success(), "{exit:?}");
}
