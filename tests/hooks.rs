//! Completion hooks end to end: the real daemon and sim worker, hook commands that write
//! what they were told to a file, a local HTTP server receiving the webhooks.

mod common;

use common::{drop_file, runs, wait_until, Daemon, Home};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(40);

/// A fast sim worker plus `[hooks]` keys; the disk guard low, so that a build host's
/// nearly full disk does not hold the runs (nothing here writes much).
fn config(hooks: &str) -> String {
    format!("backend_args = [\"--load-seconds\", \"0.2\", \"--job-seconds\", \"0.2\"]\n[outbox]\nmin_free = \"1MiB\"\n[hooks]\n{hooks}\n")
}

/// A hook script that appends one line of what it was told to `out`, copies the receipt it
/// was named beside it, and prints a line (kept in the run's events).
fn hook_script(home: &Home) -> PathBuf {
    let path = home.path().join("hook.sh");
    std::fs::write(
        &path,
        "#!/bin/sh\nout=\"$1\"\n\
         echo \"event=$COSMOS_EVENT run=$COSMOS_RUN_ID status=$COSMOS_RUN_STATUS dir=$COSMOS_RUN_DIR sub=$COSMOS_SUBMISSION_ID receipt=$COSMOS_RECEIPT\" >> \"$out\"\n\
         if [ \"$COSMOS_EVENT\" = submission ]; then cp \"$COSMOS_RECEIPT\" \"$out.receipt.json\"; fi\n\
         echo \"told ${COSMOS_RUN_ID:-$COSMOS_SUBMISSION_ID}\"\n",
    )
    .unwrap();
    path
}

fn hook_command(script: &Path, out: &Path) -> String {
    format!("'sh \"{}\" \"{}\"'", script.display(), out.display())
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
}

/// `key=value` fields of a hook line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    line.split(' ').find_map(|f| f.strip_prefix(prefix.as_str())).unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

fn events(home: &Home, id: &str) -> Vec<Value> {
    home.json(&["show", id, "--json"])["events"].as_array().cloned().unwrap_or_default()
}

fn hook_details(home: &Home, id: &str, kind: &str) -> Vec<String> {
    events(home, id).iter().filter(|e| e["kind"] == kind).map(|e| e["detail"].as_str().unwrap_or("").to_string()).collect()
}

fn all_completed(home: &Home, n: usize) -> bool {
    let r = runs(home);
    r.len() == n && r.iter().all(|r| r["status"] == "completed")
}

fn start(home: &Home, hooks: &str, env: &[(&str, &str)]) -> Daemon {
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    Daemon::start(home, &config(hooks), env)
}

#[test]
fn hooks_get_their_environment_and_the_submission_hook_fires_once_after_all_runs() {
    let home = Home::new();
    let script = hook_script(&home);
    let (run_calls, sub_calls) = (home.path().join("runs.txt"), home.path().join("subs.txt"));
    let hooks = format!("on_run = {}\non_submission = {}", hook_command(&script, &run_calls), hook_command(&script, &sub_calls));
    let daemon = start(&home, &hooks, &[]);
    drop_file(&home, "three.jsonl", &home.jobs("env", 3));
    assert!(wait_until(LONG, || lines(&run_calls).len() == 3 && lines(&sub_calls).len() == 1), "{}", daemon.log_text());
    let receipt = home.receipts_with("accepted").pop().expect("a receipt");
    let sb = receipt["submission"].as_str().unwrap().to_string();
    let receipt_path = home.outbox().join("receipts").join(format!("three.{sb}.json"));
    for line in lines(&run_calls) {
        assert_eq!(field(&line, "event"), "run");
        assert_eq!(field(&line, "status"), "completed");
        let run = field(&line, "run");
        assert_eq!(field(&line, "dir"), home.outbox().join(format!("run_{run}")).display().to_string());
        assert!(Path::new(field(&line, "dir")).join("output.mp4").is_file());
        assert_eq!(field(&line, "sub"), sb);
        assert_eq!(field(&line, "receipt"), receipt_path.display().to_string());
        let told = hook_details(&home, run, "hook");
        assert_eq!(told.len(), 1, "{told:?}");
        assert!(
            told[0].starts_with("on_run ok for run completed (exit 0, attempt 1") && told[0].ends_with(&format!("told {run}")),
            "{told:?}"
        );
    }
    let mut ids: Vec<String> = lines(&run_calls).iter().map(|l| field(l, "run").to_string()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "one call per run");
    let sub_line = &lines(&sub_calls)[0];
    assert_eq!((field(sub_line, "event"), field(sub_line, "sub"), field(sub_line, "run")), ("submission", sb.as_str(), ""));
    assert_eq!(field(sub_line, "receipt"), receipt_path.display().to_string());
    // The receipt the submission hook read already said every run completed.
    let seen: Value = serde_json::from_str(&std::fs::read_to_string(sub_calls.with_extension("txt.receipt.json")).unwrap()).unwrap();
    let statuses: Vec<&str> = seen["runs"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, vec!["completed"; 3]);
    let told = hook_details(&home, &sb, "hook");
    assert!(
        told.len() == 1 && told[0].starts_with("on_submission ok for submission ended (exit 0") && told[0].ends_with(&format!("told {sb}")),
        "{told:?}"
    );
    // Once: nothing more comes however long it waits (the owed rows are done).
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!((lines(&run_calls).len(), lines(&sub_calls).len()), (3, 1));
    assert!(daemon.log_text().contains("hook delivered"));
}

/// What the test's HTTP server received: (X-Cosmos-Event, body).
type Received = Arc<Mutex<Vec<(String, String)>>>;

/// A local HTTP server answering 500 to the first `fail_first` requests, 200 after.
fn http_server(fail_first: usize) -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/cosmos-hook", listener.local_addr().unwrap());
    let got: Received = Arc::default();
    let seen = Arc::clone(&got);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut length, mut event, mut line) = (0usize, String::new(), String::new());
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if let Some(v) = lower.strip_prefix("x-cosmos-event:") {
                    event = v.trim().to_string();
                }
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            let n = {
                let mut g = seen.lock().unwrap();
                g.push((event, String::from_utf8_lossy(&body).into_owned()));
                g.len()
            };
            let (status, text) = if n <= fail_first { ("500 Internal Server Error", "nope") } else { ("200 OK", "ok") };
            let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}", text.len());
        }
    });
    (url, got)
}

#[test]
fn webhooks_receive_the_receipt_and_are_retried_until_they_succeed() {
    let home = Home::new();
    let (url, got) = http_server(2);
    let daemon = start(&home, &format!("webhook = [\"{url}\"]\ntimeout = \"5s\""), &[]);
    drop_file(&home, "one.jsonl", &home.jobs("web", 1));
    // One run: its event and its submission's, each refused once (500), then delivered.
    assert!(wait_until(LONG, || got.lock().unwrap().len() >= 4), "{:?}\n{}", got.lock().unwrap(), daemon.log_text());
    let run = runs(&home).pop().unwrap();
    let run_id = run["id"].as_str().unwrap();
    let sb = run["submission_id"].as_str().unwrap();
    {
        let got = got.lock().unwrap();
        let of =
            |kind: &str| got.iter().filter(|(e, _)| e == kind).map(|(_, b)| serde_json::from_str::<Value>(b).unwrap()).collect::<Vec<_>>();
        let (run_posts, sub_posts) = (of("run"), of("submission"));
        assert_eq!((run_posts.len(), sub_posts.len()), (2, 2), "{got:?}");
        for p in &run_posts {
            assert_eq!(
                (p["run_id"].as_str(), p["status"].as_str(), p["submission_id"].as_str()),
                (Some(run_id), Some("completed"), Some(sb))
            );
        }
        // The submission's body is its receipt, every run ended.
        for p in &sub_posts {
            assert_eq!(p["submission"], sb);
            assert_eq!(p["runs"][0]["status"], "completed", "{p}");
        }
    }
    let told = hook_details(&home, run_id, "hook");
    assert_eq!(told.len(), 2, "{told:?}");
    assert!(
        told[0].starts_with(&format!("webhook {url} failed for run completed (HTTP 500, attempt 1")) && told[0].ends_with("nope"),
        "{told:?}"
    );
    assert!(told[1].starts_with(&format!("webhook {url} ok for run completed (HTTP 200, attempt 2")), "{told:?}");
    assert_eq!(hook_details(&home, run_id, "hook_retry"), vec!["1 hook(s) failed; trying again in 1s".to_string()]);
    assert!(hook_details(&home, sb, "hook").iter().any(|d| d.contains("ok for submission ended (HTTP 200, attempt 2")));
    // Delivered: not sent again.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(got.lock().unwrap().len(), 4);
}

#[test]
fn a_hook_owed_when_the_daemon_was_killed_runs_once_after_it_restarts() {
    let home = Home::new();
    let script = hook_script(&home);
    let (run_calls, sub_calls) = (home.path().join("runs.txt"), home.path().join("subs.txt"));
    let hooks = format!("on_run = {}\non_submission = {}", hook_command(&script, &run_calls), hook_command(&script, &sub_calls));
    // The hook thread stops before delivering: the run ends, its hook does not run.
    let daemon = start(&home, &hooks, &[("COSMOS_FAULT_PAUSE", "hook:600000")]);
    drop_file(&home, "one.jsonl", &home.jobs("crash", 1));
    assert!(wait_until(LONG, || all_completed(&home, 1)), "{}", daemon.log_text());
    daemon.wait_log("COSMOS_FAULT_PAUSE: pausing", LONG);
    assert!(lines(&run_calls).is_empty() && lines(&sub_calls).is_empty());
    daemon.kill9();

    let daemon = start(&home, &hooks, &[]);
    assert!(wait_until(LONG, || lines(&run_calls).len() == 1 && lines(&sub_calls).len() == 1), "{}", daemon.log_text());
    let run_id = runs(&home)[0]["id"].as_str().unwrap().to_string();
    assert_eq!(field(&lines(&run_calls)[0], "run"), run_id);
    assert_eq!(daemon.stop().code(), Some(0));

    // Delivered and recorded: a third start owes nothing.
    let daemon = start(&home, &hooks, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!((lines(&run_calls).len(), lines(&sub_calls).len()), (1, 1), "{}", daemon.log_text());
    let told = hook_details(&home, &run_id, "hook");
    assert!(told.len() == 1 && told[0].starts_with("on_run ok"), "{told:?}");
}

#[test]
fn a_hanging_hook_is_killed_at_the_timeout_and_the_runs_go_on() {
    let home = Home::new();
    let calls = home.path().join("calls.txt");
    let hooks = format!("on_run = 'echo \"$COSMOS_RUN_ID\" >> \"{}\"; sleep 20'\ntimeout = \"3s\"", calls.display());
    let daemon = start(&home, &hooks, &[]);
    drop_file(&home, "two.jsonl", &home.jobs("hang", 2));
    assert!(wait_until(LONG, || all_completed(&home, 2)), "{}", daemon.log_text());
    let first_told = |home: &Home| -> Option<(String, Value)> {
        let first = lines(&calls).first()?.clone();
        let e = events(home, &first).into_iter().find(|e| e["kind"] == "hook")?;
        Some((first, e))
    };
    assert!(wait_until(LONG, || first_told(&home).is_some()), "{}", daemon.log_text());
    let (first, event) = first_told(&home).unwrap();
    let detail = event["detail"].as_str().unwrap();
    assert!(detail.starts_with("on_run failed for run completed (killed at the timeout (3s), attempt 1"), "{detail}");
    // The other run finished while the first one's hook still hung: the scheduler never
    // waited for it.
    let other = runs(&home).into_iter().find(|r| r["id"] != first.as_str()).unwrap();
    assert!(other["finished_at"].as_str().unwrap() < event["time"].as_str().unwrap(), "{other} / {event}");
    // Tried again after its backoff.
    assert!(wait_until(LONG, || hook_details(&home, &first, "hook_retry").len() == 1), "{}", daemon.log_text());
}

#[test]
fn a_hook_cut_short_by_the_daemon_s_stop_runs_again_after_the_next_start() {
    let home = Home::new();
    let (calls, release) = (home.path().join("calls.txt"), home.path().join("release"));
    // Hangs until `release` exists; the timeout is far off: only the stop can end it.
    let hooks = format!(
        "on_run = 'echo \"$COSMOS_RUN_ID\" >> \"{}\"; while [ ! -e \"{}\" ]; do sleep 0.1; done'\ntimeout = \"10m\"",
        calls.display(),
        release.display()
    );
    let daemon = start(&home, &hooks, &[]);
    drop_file(&home, "one.jsonl", &home.jobs("stop", 1));
    assert!(wait_until(LONG, || lines(&calls).len() == 1), "{}", daemon.log_text());
    // SIGTERM: the daemon does not wait out the hook; it kills it and stops cleanly.
    assert_eq!(daemon.stop().code(), Some(0));
    let run_id = lines(&calls)[0].clone();
    assert!(hook_details(&home, &run_id, "hook").is_empty(), "an interrupted hook is neither ok nor failed");

    std::fs::write(&release, "").unwrap();
    let daemon = start(&home, &hooks, &[]);
    assert!(wait_until(LONG, || hook_details(&home, &run_id, "hook").len() == 1), "{}", daemon.log_text());
    assert_eq!(lines(&calls), vec![run_id.clone(), run_id.clone()], "run again after the restart");
    let told = hook_details(&home, &run_id, "hook");
    assert!(told[0].starts_with("on_run ok for run completed (exit 0, attempt 1"), "{told:?}");
}
