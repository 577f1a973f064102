//! The store under fire: held by another process, damaged, from a newer version, and
//! hammered by many `cosmos` commands at once while the daemon works through a queue.

mod common;

use common::{drop_file, runs, status, wait_until, Daemon, Home};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(60);

fn sha(path: &Path) -> String {
    cosmos_workflow::fsutil::hex(&Sha256::digest(std::fs::read(path).expect("read")))
}

fn database(home: &Home) -> std::path::PathBuf {
    home.root().join("state/cosmos.db")
}

/// How long another process holds the store in `the_daemon_waits_out_a_store_held_by_another_process`
/// (`COSMOS_HOLD_SECS`; the long form is 60).
fn hold() -> Duration {
    Duration::from_secs(std::env::var("COSMOS_HOLD_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(15))
}

#[test]
fn the_daemon_waits_out_a_store_held_by_another_process() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let d = Daemon::start(&home, "", &[]);
    drop_file(&home, "before.jsonl", &home.jobs("before", 2));
    assert!(wait_until(LONG, || runs(&home).iter().filter(|r| r["status"] == "completed").count() == 2), "{:?}", runs(&home));

    // Another process (here this test, as a `sqlite3` shell would) holds the store in an
    // exclusive transaction.
    let holder = rusqlite::Connection::open(database(&home)).expect("open");
    holder.execute_batch("BEGIN EXCLUSIVE; UPDATE daemon_state SET value = value;").expect("hold");
    let held_at = Instant::now();
    drop_file(&home, "during.jsonl", &home.jobs("during", 2));
    // The CLI says so in one line after its own wait, and changes nothing.
    let out = home.cosmos().args(["pause"]).output().expect("cosmos");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("is busy: another process holds it") && err.contains("cosmos.db"), "{err}");
    // Reading goes on meanwhile (WAL): listing works, the daemon writes status.json.
    home.ok(&["list", "runs"]);
    while held_at.elapsed() < hold() {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(d.child.id() > 0);
    holder.execute_batch("COMMIT").expect("release");
    drop(holder);

    // The daemon is alive and takes the file in, and runs it.
    assert!(
        wait_until(LONG, || runs(&home).iter().filter(|r| r["status"] == "completed").count() == 4),
        "{:?}\n{}",
        runs(&home),
        d.log_text()
    );
    assert_eq!(home.receipts_with("accepted").len(), 2);
    let log = d.log_text();
    assert!(log.contains("the store is held by another process; waiting for it"), "{log}");
    assert!(!log.contains("the scheduler stopped"), "{log}");
    let exit = d.stop();
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn a_damaged_or_newer_store_is_refused_by_name_and_left_as_it_is() {
    for (case, prepare) in [
        ("damaged", Box::new(|db: &Path| std::fs::write(db, vec![0x5a_u8; 8192]).unwrap()) as Box<dyn Fn(&Path)>),
        (
            "newer",
            Box::new(|db: &Path| {
                let c = rusqlite::Connection::open(db).unwrap();
                c.execute_batch("CREATE TABLE t (x); PRAGMA user_version = 99; PRAGMA journal_mode = DELETE;").unwrap();
            }),
        ),
    ] {
        let home = Home::new();
        let db = database(&home);
        std::fs::create_dir_all(db.parent().unwrap()).unwrap();
        prepare(&db);
        let before = sha(&db);
        let out = home.cosmosd().args(["--root"]).arg(home.root()).output().expect("cosmosd");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{case}: {err}");
        assert!(err.contains(&db.display().to_string()), "{case}: the error names the file: {err}");
        match case {
            "damaged" => assert!(err.contains("not a database"), "{err}"),
            _ => assert!(err.contains("schema version 99") && err.contains("upgrade"), "{err}"),
        }
        let out = home.cosmos().args(["list", "runs"]).output().expect("cosmos");
        assert_eq!(out.status.code(), Some(1), "{case}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(&db.display().to_string()));
        assert_eq!(sha(&db), before, "{case}: the file is untouched");
    }
}

#[test]
fn twenty_commands_at_once_through_a_queue_lose_no_update() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    // A slow sim run (0.1 s) so that the queue is still long while the commands run.
    let d = Daemon::start(&home, "backend_args = [\"--job-seconds\", \"0.1\"]", &[]);
    drop_file(&home, "queue.jsonl", &home.jobs("queue", 200));
    assert!(wait_until(LONG, || home.receipts_with("accepted").len() == 1));
    let all = runs(&home);
    assert_eq!(all.len(), 200);
    // The newest 10 runs (last to start) are cancelled by 5 commands of 2 each; 5 more
    // commands list; 5 submit a new file each; 5 cancel and then retry a run each.
    let ids: Vec<String> = all.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    let cancel_pairs: Vec<Vec<String>> = ids[..10].chunks(2).map(|c| c.to_vec()).collect();
    let retried: Vec<String> = ids[10..15].to_vec();
    let home = &home;
    let cancel_said: Vec<String> = std::thread::scope(|s| {
        let mut cancels = Vec::new();
        let mut handles = Vec::new();
        for pair in &cancel_pairs {
            cancels.push(s.spawn(move || home.cosmos().arg("cancel").args(pair).output().expect("cancel")));
        }
        for _ in 0..5 {
            handles.push(s.spawn(move || home.cosmos().args(["list", "runs", "--limit", "50"]).output().expect("list")));
        }
        for i in 0..5 {
            handles.push(s.spawn(move || {
                let file = home.path().join(format!("extra{i}.jsonl"));
                std::fs::write(&file, home.jobs(&format!("extra{i}"), 1)).unwrap();
                home.cosmos().args(["submit"]).arg(&file).output().expect("submit")
            }));
        }
        for id in &retried {
            handles.push(s.spawn(move || {
                let c = home.cosmos().args(["cancel", id]).output().expect("cancel");
                if !c.status.success() {
                    return c;
                }
                home.cosmos().args(["retry", id]).output().expect("retry")
            }));
        }
        let ok = |out: std::process::Output| {
            assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        for h in handles {
            ok(h.join().expect("thread"));
        }
        cancels.into_iter().map(|h| ok(h.join().expect("thread"))).collect()
    });
    // Everything ends; what was asked holds.
    assert!(
        wait_until(Duration::from_secs(600), || {
            let r = runs(home);
            r.len() == 205 && r.iter().all(|r| matches!(r["status"].as_str(), Some("completed" | "cancelled" | "failed")))
        }),
        "{:?}",
        status(home)
    );
    let by_id = |id: &str| runs(home).into_iter().find(|r| r["id"] == id).expect("run");
    let said = cancel_said.join("");
    for id in cancel_pairs.iter().flatten() {
        let r = by_id(id);
        if said.contains(&format!("Cancelled run {id}")) {
            // Cancelled while queued: it must never have run, whatever else went on at once.
            assert_eq!(r["status"], "cancelled", "a cancel reported as done was lost: {r}\n{said}");
        } else {
            // Cancelled while running: stopped, or finished first (the store refuses neither).
            assert!(said.contains(&format!("Cancelling run {id}")), "no word on {id}: {said}");
            assert!(matches!(r["status"].as_str(), Some("cancelled" | "completed")), "{r}");
        }
    }
    for id in &retried {
        assert_eq!(by_id(id)["status"], "completed", "cancelled then retried: it ran");
    }
    assert_eq!(home.receipts_with("accepted").len(), 6);
    drop(d);
}
