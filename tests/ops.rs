//! What an operator meets, through the real binaries: a scheduler that dies stops cosmosd
//! (exit 1) after handing its run back; `cosmos status` tells from the daemon's lock whether
//! it runs (exit 3 when not), when a pause was made, and nothing of NVML without GPUs;
//! journald lines when stderr is the journal; `cosmos prune` and `daemon.prune_after`;
//! `cosmos delete run` takes its work folder with it.

mod common;

use common::{drop_file, grep_id, runs, wait_until, Daemon, Home};
use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

fn ended(home: &Home, n: usize) -> bool {
    let r = runs(home);
    r.len() == n && r.iter().all(|r| ["completed", "failed", "cancelled"].contains(&r["status"].as_str().unwrap_or("")))
}

/// `cosmos ARGS`: exit code, stdout.
fn cosmos(home: &Home, args: &[&str]) -> (Option<i32>, String) {
    let out = home.cosmos().args(args).output().expect("run cosmos");
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Waits for the daemon to exit by itself; its exit code.
fn exit_code(daemon: &mut Daemon, within: Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = daemon.child.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("cosmosd did not exit by itself:\n{}", daemon.log_text());
}

#[test]
fn a_scheduler_that_stops_on_an_error_hands_its_run_back_and_cosmosd_exits_1() {
    let home = Home::new();
    let ps = grep_id(&home.ok(&["create", "prompt", "A city", "videos/city1"]), "ps_");
    let rs = grep_id(&home.ok(&["create", "run", &ps, "--weights", "0.5", "0.5", "0", "0"]), "rs_");
    // The run's work folder cannot be made: a file stands where it goes (what a permission
    // error on state/work does for an unprivileged daemon, and root cannot be refused).
    let work = home.root().join("state/work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join(&rs), b"in the way").unwrap();
    let mut daemon = Daemon::start(&home, "", &[]);
    home.ok(&["inference", &rs]);
    assert_eq!(exit_code(&mut daemon, LONG), Some(1), "non-zero, so that systemd restarts it:\n{}", daemon.log_text());
    let log = daemon.log_text();
    let output = work.join(&rs).join("output");
    assert!(log.contains(&format!("cannot create {}", output.display())), "the error names its path:\n{log}");
    assert!(log.contains("handed the run back to the queue before stopping"), "{log}");
    let run = home.json(&["show", &rs, "--json"]);
    assert_eq!(run["status"], "queued", "{run}");
    assert_eq!(run["attempts"], 1);
    assert!(run["error"].as_str().is_some_and(|e| e.contains("handed back") && e.contains(&output.display().to_string())), "{run}");
    // With the folder free again, the next daemon runs it.
    std::fs::remove_file(work.join(&rs)).unwrap();
    let daemon = Daemon::start(&home, "", &[]);
    assert!(wait_until(LONG, || ended(&home, 1)), "{}", daemon.log_text());
    assert_eq!(runs(&home)[0]["status"], "completed");
}

#[test]
fn status_tells_a_running_daemon_from_a_stale_status_json_and_when_the_pause_was_made() {
    let home = Home::new();
    let (code, text) = cosmos(&home, &["status"]);
    assert_eq!(code, Some(3), "no daemon ever ran: {text}");
    assert!(text.contains("cosmosd is not running"), "{text}");

    let daemon = Daemon::start(&home, "", &[]);
    assert!(wait_until(LONG, || home.outbox().join("status.json").is_file()), "{}", daemon.log_text());
    let (code, text) = cosmos(&home, &["status"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("running since"), "{text}");
    // The sim backend asks for no GPU: not a word of NVML.
    assert!(!text.to_lowercase().contains("nvml") && !text.contains("gpus:"), "{text}");
    let v = home.json(&["status", "--json"]);
    assert_eq!((v["daemon_running"].as_bool(), v["daemon_alive"].as_bool()), (Some(true), Some(true)), "{v}");
    assert!(v["nvml"].is_null(), "{v}");

    std::thread::sleep(Duration::from_millis(1100));
    let paused = home.json(&["pause", "--json"]);
    assert_eq!(paused["paused"], true);
    let since = paused["paused_since"].as_str().expect("the time of the pause").to_string();
    assert!(wait_until(LONG, || common::status(&home)["daemon"]["state"] == "paused"), "{}", daemon.log_text());
    let started = common::status(&home)["daemon"]["started_at"].as_str().unwrap_or_default().to_string();
    assert_ne!(since, started, "the pause was made after the start");
    let (code, text) = cosmos(&home, &["status"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(&format!("paused since {since}")), "{text}");
    assert!(!text.contains(&started), "not the daemon's start time: {text}");

    let status = daemon.stop();
    assert!(status.success());
    // status.json still says what it last said ("draining"); the lock says no daemon runs.
    assert!(home.outbox().join("status.json").is_file());
    let (code, text) = cosmos(&home, &["status"]);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("cosmosd is not running"), "{text}");
    assert!(!text.contains("draining") && !text.contains("alive"), "{text}");
    assert!(text.contains(&format!("paused since {since}")), "the pause outlives the daemon: {text}");
    let out = home.cosmos().args(["status", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON even when not running");
    assert_eq!((v["daemon_running"].as_bool(), v["daemon_alive"].as_bool()), (Some(false), Some(false)), "{v}");
    assert!(v.get("daemon").is_none(), "nothing of the stale status.json: {v}");
    assert!(v["status_updated_at"].is_string(), "only when it was last written: {v}");
    assert_eq!(v["paused_since"], since.as_str());
}

/// cosmosd on `home` with stderr into `log`, and `$JOURNAL_STREAM` set to `journal` (or to
/// the log file's own device:inode when `None`: what systemd does).
fn start_with_journal(home: &Home, log: &Path, journal: Option<&str>) -> std::process::Child {
    let file = std::fs::File::create(log).unwrap();
    let meta = file.metadata().unwrap();
    let stream = journal.map_or_else(|| format!("{}:{}", meta.dev(), meta.ino()), str::to_string);
    let config = home.path().join("journal.toml");
    std::fs::write(&config, "[runtime]\nkind = \"process\"\nbackend = \"sim\"\n[watch]\nsettle = \"300ms\"\nrescan = \"2s\"\n").unwrap();
    std::process::Command::new(assert_cmd::cargo::cargo_bin("cosmosd"))
        .current_dir(home.path())
        .env_remove("COSMOS_CONFIG")
        .env_remove("COSMOS_LOG_LEVEL")
        .env("JOURNAL_STREAM", stream)
        .arg("--config")
        .arg(&config)
        .arg("--root")
        .arg(home.root())
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap()
}

fn stop(mut child: std::process::Child) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

#[test]
fn on_the_journal_lines_carry_a_priority_and_no_timestamp() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    let log = home.path().join("journal.log");
    let child = start_with_journal(&home, &log, None);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_until(LONG, || read().contains("watching the inbox")), "{}", read());
    // A rejected file is a warning.
    drop_file(&home, "bad.jsonl", "{\"prompt\": 3}\n");
    assert!(wait_until(LONG, || read().contains("rejected")), "{}", read());
    stop(child);
    let text = read();
    let starting = text.lines().find(|l| l.contains("cosmosd starting")).expect("a start line");
    assert!(starting.starts_with("<6>cosmosd starting"), "info is <6>, and no time of ours: {starting}");
    let rejected = text.lines().find(|l| l.contains("rejected")).expect("a rejected line");
    assert!(rejected.starts_with("<4>"), "warnings are <4>: {rejected}");
    for line in text.lines().filter(|l| !l.is_empty()) {
        assert!(line.starts_with('<') && line.as_bytes().get(2) == Some(&b'>'), "every line has its priority: {line}");
        assert!(!line.contains(" INFO ") && !line[3..].starts_with("20"), "no timestamp or level of ours: {line}");
    }

    // $JOURNAL_STREAM inherited by a process whose stderr goes elsewhere: plain lines.
    let other = home.path().join("plain.log");
    let child = start_with_journal(&home, &other, Some("1:1"));
    let read = || std::fs::read_to_string(&other).unwrap_or_default();
    assert!(wait_until(LONG, || read().contains("watching the inbox")), "{}", read());
    stop(child);
    let starting = read().lines().find(|l| l.contains("cosmosd starting")).map(str::to_string).unwrap_or_default();
    assert!(starting.starts_with("20") && starting.contains("INFO"), "timestamps and levels off the journal: {starting}");
}

/// A job file of `n` runs on `video` (under videos/ in the inbox), made distinct by `tag`.
fn jobs_on(tag: &str, video: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{{\"name\": \"{tag}-{i}\", \"visual_input\": \"{video}\", \"prompt\": \"{tag} {i}\", \"control_overrides\": {{\"edge\": {{\"control_weight\": 0.5}}}}}}\n"
            )
        })
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
    v.sort();
    v
}

fn by_kind(report: &Value, kind: &str) -> Vec<PathBuf> {
    report["removed"].as_array().unwrap().iter().filter(|r| r["kind"] == kind).map(|r| PathBuf::from(r["path"].as_str().unwrap())).collect()
}

#[test]
fn prune_removes_the_files_of_runs_that_ended_and_keeps_what_unfinished_runs_need() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let daemon = Daemon::start(&home, "", &[]);
    drop_file(&home, "done.jsonl", &jobs_on("done", "videos/city1/color.mp4", 2));
    assert!(wait_until(LONG, || ended(&home, 2)), "{}", daemon.log_text());
    // A queued run keeps its submission's original and its staged input.
    home.ok(&["pause"]);
    drop_file(&home, "later.jsonl", &jobs_on("later", "videos/street1/color.mp4", 1));
    assert!(wait_until(LONG, || runs(&home).len() == 3), "{}", daemon.log_text());
    let state = home.root().join("state");
    let done: Vec<String> =
        runs(&home).iter().filter(|r| r["status"] == "completed").map(|r| r["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(done.len(), 2);
    for id in &done {
        assert!(state.join("work").join(id).is_dir(), "a finished run leaves its work folder");
    }
    let archived = names(&state.join("archive"));
    assert_eq!(archived.len(), 2, "{archived:?}");
    let inputs = names(&state.join("work/inputs"));
    assert_eq!(inputs.len(), 2, "one per distinct video: {inputs:?}");
    // Files a second old: ended "before" a cut-off of 0s from now.
    std::thread::sleep(Duration::from_millis(1100));

    let nothing = home.json(&["prune", "--older-than", "30d", "--json"]);
    assert_eq!(nothing["removed"].as_array().map(Vec::len), Some(0), "{nothing}");
    assert_eq!(nothing["bytes"], 0);

    let dry = home.json(&["prune", "--older-than", "0s", "--dry-run", "--json"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["counts"]["work"], 2, "{dry}");
    assert_eq!(dry["counts"]["archive"], 1, "only the finished submission's original: {dry}");
    assert_eq!(dry["counts"]["input"], 1, "the queued run's video stays: {dry}");
    assert_eq!(dry["counts"]["outbox"], 0, "never the outbox without --outbox");
    assert!(dry["bytes"].as_u64().unwrap() > 0);
    for p in by_kind(&dry, "work").iter().chain(&by_kind(&dry, "archive")).chain(&by_kind(&dry, "input")) {
        assert!(p.exists(), "a dry run removes nothing: {}", p.display());
    }
    let kept_input = names(&state.join("work/inputs"))
        .into_iter()
        .find(|n| !by_kind(&dry, "input").iter().any(|p| p.ends_with(n)))
        .expect("one input kept");
    let queued = runs(&home).into_iter().find(|r| r["status"] == "queued").unwrap();
    assert!(queued["visual_input"].as_str().unwrap().ends_with(&kept_input), "the kept input is the queued run's: {queued}");

    let pruned = home.json(&["prune", "--older-than", "0s", "--json"]);
    assert_eq!(pruned["counts"], dry["counts"]);
    assert_eq!(pruned["bytes"], dry["bytes"], "what the dry run said is what went");
    let sum: u64 = pruned["removed"].as_array().unwrap().iter().map(|r| r["bytes"].as_u64().unwrap()).sum();
    assert_eq!(pruned["bytes"].as_u64(), Some(sum));
    for id in &done {
        assert!(!state.join("work").join(id).exists());
        assert!(home.outbox().join(format!("run_{id}/output.mp4")).is_file(), "published folders stay");
    }
    assert_eq!(names(&state.join("archive")).len(), 1);
    assert_eq!(names(&state.join("work/inputs")), vec![kept_input.clone()]);

    // The queued run still runs, from its staged input.
    home.ok(&["resume"]);
    assert!(wait_until(LONG, || ended(&home, 3)), "{}", daemon.log_text());
    assert!(runs(&home).iter().all(|r| r["status"] == "completed"), "{:?}", runs(&home));

    let text = home.ok(&["prune", "--older-than", "0s", "--outbox", "--dry-run"]);
    assert!(text.contains("dry run, nothing removed") && text.contains("3 outbox run folder(s)"), "{text}");
    std::thread::sleep(Duration::from_millis(1100));
    let all = home.json(&["prune", "--older-than", "0s", "--outbox", "--json"]);
    assert_eq!(all["counts"]["outbox"], 3, "{all}");
    assert!(names(&home.outbox()).iter().all(|n| !n.starts_with("run_")), "{:?}", names(&home.outbox()));
}

#[test]
fn daemon_prune_after_prunes_by_itself() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let daemon = Daemon::start(&home, "[daemon]\nprune_after = \"1s\"\n", &[]);
    drop_file(&home, "jobs.jsonl", &jobs_on("auto", "videos/city1/color.mp4", 1));
    assert!(wait_until(LONG, || ended(&home, 1)), "{}", daemon.log_text());
    let id = runs(&home)[0]["id"].as_str().unwrap().to_string();
    let work = home.root().join("state/work").join(&id);
    assert!(wait_until(LONG, || !work.exists()), "the work folder outlived daemon.prune_after:\n{}", daemon.log_text());
    assert!(home.outbox().join(format!("run_{id}/output.mp4")).is_file(), "never the published folder");
    daemon.wait_log("pruned the files of runs that ended long ago", LONG);
}

#[test]
fn delete_run_takes_its_work_folder_with_it() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let daemon = Daemon::start(&home, "", &[]);
    drop_file(&home, "jobs.jsonl", &jobs_on("del", "videos/city1/color.mp4", 1));
    assert!(wait_until(LONG, || ended(&home, 1)), "{}", daemon.log_text());
    let id = runs(&home)[0]["id"].as_str().unwrap().to_string();
    let work = home.root().join("state/work").join(&id);
    assert!(work.is_dir());
    let v = home.json(&["delete", "run", &id, "--json"]);
    assert_eq!(v["runs"], serde_json::json!([id]));
    assert_eq!(v["work_folders"], serde_json::json!([work]));
    assert!(!work.exists());
    assert!(home.outbox().join(format!("run_{id}")).is_dir(), "the published folder is the user's");
}

#[test]
fn submit_json_reports_the_receipt_and_with_wait_how_each_run_ended() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let daemon = Daemon::start(&home, "", &[]);
    // Beside its videos, outside the inbox: submit carries them along.
    let file = home.path().join("jobs.jsonl");
    std::fs::write(&file, jobs_on("sub", "videos/city1/color.mp4", 2)).unwrap();
    let out = home.cosmos().args(["submit"]).arg(&file).args(["--wait", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), daemon.log_text());
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document, no progress lines");
    let sub = &v["submissions"][0];
    assert_eq!(sub["source"], file.display().to_string());
    assert_eq!(sub["submission"]["status"], "accepted", "{v}");
    assert_eq!(sub["submission"]["runs"], 2);
    assert!(Path::new(sub["receipt"].as_str().unwrap()).is_file(), "{v}");
    let ran = v["runs"].as_array().expect("runs with --wait");
    assert_eq!(ran.len(), 2);
    assert!(ran.iter().all(|r| r["status"] == "completed" && r["outputs"]["output_dir"].is_string()), "{v}");
}

const NOBODY: u32 = 65534;

fn running_as_root() -> bool {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() == 0 }
}

fn chown_tree(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).expect("chown");
    if path.is_dir() {
        for e in std::fs::read_dir(path).expect("read_dir").flatten() {
            chown_tree(&e.path(), uid);
        }
    }
}

#[test]
fn a_permission_error_on_the_work_folder_names_it_hands_the_run_back_and_exits_1() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    // The daemon's state, with a work folder it may not write in (its staged inputs it may).
    let work = home.root().join("state/work");
    std::fs::create_dir_all(work.join("inputs")).unwrap();
    let mut cmd = if running_as_root() {
        // As nobody (root writes anywhere): the temp folder opened for reading, the home given.
        if std::process::Command::new("setpriv").arg("--version").output().is_err() {
            panic!("running as root without setpriv (util-linux): cannot drop to an unprivileged user");
        }
        std::fs::set_permissions(home.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        chown_tree(&home.root(), NOBODY);
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid", &NOBODY.to_string(), "--regid", &NOBODY.to_string(), "--clear-groups", "--"]);
        c.arg(assert_cmd::cargo::cargo_bin("cosmosd"));
        c
    } else {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("cosmosd"))
    };
    std::fs::set_permissions(&work, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
    let config = home.path().join("cosmosd.toml");
    std::fs::write(&config, "[runtime]\nkind = \"process\"\nbackend = \"sim\"\ngpus = []\n[watch]\nsettle = \"300ms\"\n").unwrap();
    let log = home.path().join("cosmosd.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = cmd
        .env_remove("COSMOS_CONFIG")
        .arg("--config")
        .arg(&config)
        .arg("--root")
        .arg(home.root())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start cosmosd");
    let mut daemon = Daemon { child, log };
    daemon.wait_log("watching the inbox", LONG);
    let jobs = home.inbox().join(".perm.jsonl.tmp");
    std::fs::write(&jobs, jobs_on("perm", "videos/city1/color.mp4", 1)).unwrap();
    if running_as_root() {
        chown_tree(&jobs, NOBODY);
    }
    std::fs::rename(&jobs, home.inbox().join("perm.jsonl")).unwrap();
    assert_eq!(exit_code(&mut daemon, LONG), Some(1), "{}", daemon.log_text());
    let text = daemon.log_text();
    let id = runs(&home)[0]["id"].as_str().unwrap().to_string();
    let output = work.join(&id).join("output");
    assert!(text.contains(&format!("cannot create {}: Permission denied", output.display())), "the path, and why:\n{text}");
    let run = &runs(&home)[0];
    assert_eq!(run["status"], "queued", "handed back: {run}");
    std::fs::set_permissions(&work, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

#[test]
fn log_keep_removes_old_rotated_logs_at_start() {
    let home = Home::new();
    let logs = home.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let month_ago = std::time::SystemTime::now() - Duration::from_secs(30 * 86_400);
    let week_ago = std::time::SystemTime::now() - Duration::from_secs(7 * 86_400);
    for (name, when) in [("cosmosd.log.2020-01-01", month_ago), ("cosmosd.log.2020-01-24", week_ago)] {
        std::fs::write(logs.join(name), b"old lines\n").unwrap();
        std::fs::File::options().write(true).open(logs.join(name)).unwrap().set_modified(when).unwrap();
    }
    std::fs::write(logs.join("notes.txt"), b"not ours").unwrap();
    std::fs::File::options().write(true).open(logs.join("notes.txt")).unwrap().set_modified(month_ago).unwrap();
    let config = home.path().join("logs.toml");
    std::fs::write(
        &config,
        format!("[runtime]\nkind = \"process\"\nbackend = \"sim\"\n[log]\ndir = \"{}\"\nkeep = \"14d\"\n", logs.display()),
    )
    .unwrap();
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("cosmosd"))
        .env_remove("COSMOS_CONFIG")
        .arg("--config")
        .arg(&config)
        .arg("--root")
        .arg(home.root())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let gone = wait_until(LONG, || !logs.join("cosmosd.log.2020-01-01").exists());
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    assert!(gone, "a rotated log older than log.keep outlived the start: {:?}", names(&logs));
    assert!(logs.join("cosmosd.log.2020-01-24").is_file(), "a week old is within 14 days");
    assert!(logs.join("notes.txt").is_file(), "only cosmosd's own logs");
    assert!(names(&logs).iter().any(|n| n.starts_with("cosmosd.log.") && n != "cosmosd.log.2020-01-24"), "today's log: {:?}", names(&logs));
}
