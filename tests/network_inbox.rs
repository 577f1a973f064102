//! An inbox and an outbox on a network filesystem (issue 9). bindfs makes a FUSE mount over
//! a local folder: cosmosd sees another filesystem, as with NFS, CIFS or sshfs, and inotify
//! does not see what is written behind the mount; the tests write there, as another host
//! would. The state folder stays on the local disk, so every move between inbox and state
//! crosses filesystems. Without bindfs these tests skip with the reason, unless
//! COSMOS_REQUIRE_FUSE=1 (CI), where that is a failure.

mod common;

use common::{claims_under, wait_until, BindMount, Daemon, Home};
use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(30);
/// The test daemon's watch.poll_interval and watch.settle (tests/common).
const POLL_INTERVAL: Duration = Duration::from_millis(200);
const SETTLE: Duration = Duration::from_millis(300);

/// What the issue promises a network inbox: taken in within poll_interval + settle + 1 s.
fn deadline() -> Duration {
    POLL_INTERVAL + SETTLE + Duration::from_secs(1)
}

fn copy_videos(from: &Path, to: &Path) {
    for scene in ["city1", "street1"] {
        std::fs::create_dir_all(to.join(scene)).unwrap();
        for e in std::fs::read_dir(from.join(scene)).unwrap().flatten() {
            std::fs::copy(e.path(), to.join(scene).join(e.file_name())).unwrap();
        }
    }
}

/// Receipts under `outbox/receipts`, by the inbox name they are for.
fn receipts_in(outbox: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(outbox.join("receipts")).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        if let Some(v) = std::fs::read_to_string(e.path()).ok().and_then(|t| serde_json::from_str(&t).ok()) {
            out.push(v);
        }
    }
    out
}

/// How long after `since` the receipt for `name` appeared, if within `limit`.
fn receipt_after(outbox: &Path, name: &str, since: Instant, limit: Duration) -> Option<Duration> {
    let ok = wait_until(limit + Duration::from_secs(5), || receipts_in(outbox).iter().any(|r| r["file"] == name));
    ok.then(|| since.elapsed())
}

fn run(cmd: &mut std::process::Command) {
    let status = cmd.status().expect("run a command");
    assert!(status.success(), "{cmd:?} failed");
}

fn cosmos_at(root: &Path, args: &[&str]) -> String {
    let out =
        assert_cmd::Command::cargo_bin("cosmos").unwrap().env_remove("COSMOS_CONFIG").arg("--root").arg(root).args(args).output().unwrap();
    assert!(out.status.success(), "cosmos {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
#[ignore = "needs bindfs and /dev/fuse (FUSE mounts); cargo nextest run --run-ignored all runs it, as CI does"]
fn a_fuse_inbox_takes_in_rsync_cp_mv_and_bundles_written_behind_the_mount() {
    let home = Home::new();
    let share = home.path().join("share");
    let Some(_mount) = BindMount::new(&share, &home.inbox(), &[]) else { return };
    assert!(common::is_fuse(&home.inbox()));
    copy_videos(&home.path().join("videos"), &share.join("videos"));
    let daemon = Daemon::start(&home, "", &[]);
    daemon.wait_log("the inbox is on FUSE", LONG);
    daemon.wait_log("mode=Poll", LONG);

    let outgoing = home.path().join("outgoing");
    std::fs::create_dir_all(&outgoing).unwrap();
    let outbox = home.outbox();
    let mut took: BTreeMap<&str, Duration> = BTreeMap::new();

    // rsync: a hidden temp name behind the mount, then a rename.
    std::fs::write(outgoing.join("by-rsync.jsonl"), home.jobs("rsync", 2)).unwrap();
    run(std::process::Command::new("rsync").arg("-a").arg(outgoing.join("by-rsync.jsonl")).arg(format!("{}/", share.display())));
    let t = Instant::now();
    took.insert("by-rsync.jsonl", receipt_after(&outbox, "by-rsync.jsonl", t, deadline()).expect("rsync'd file taken in"));

    // cp: written in place behind the mount.
    std::fs::write(outgoing.join("by-cp.jsonl"), home.jobs("cp", 3)).unwrap();
    run(std::process::Command::new("cp").arg(outgoing.join("by-cp.jsonl")).arg(&share));
    let t = Instant::now();
    took.insert("by-cp.jsonl", receipt_after(&outbox, "by-cp.jsonl", t, deadline()).expect("cp'd file taken in"));

    // mv: renamed in from a folder beside the share, on its filesystem.
    let beside = home.path().join("share-beside");
    std::fs::create_dir_all(&beside).unwrap();
    std::fs::write(beside.join("by-mv.jsonl"), home.jobs("mv", 4)).unwrap();
    run(std::process::Command::new("mv").arg(beside.join("by-mv.jsonl")).arg(&share));
    let t = Instant::now();
    took.insert("by-mv.jsonl", receipt_after(&outbox, "by-mv.jsonl", t, deadline()).expect("mv'd file taken in"));

    // A bundle with its videos, copied in whole (cp -r writes in place, file by file).
    let bundle = outgoing.join("shoot1");
    copy_videos(&home.path().join("videos"), &bundle.join("videos"));
    std::fs::write(bundle.join("jobs.jsonl"), home.jobs("shoot", 2)).unwrap();
    run(std::process::Command::new("cp").arg("-r").arg(&bundle).arg(&share));
    let t = Instant::now();
    took.insert("shoot1", receipt_after(&outbox, "shoot1", t, deadline()).expect("bundle taken in"));

    println!("taken in after delivery (poll_interval {POLL_INTERVAL:?} + settle {SETTLE:?}): {took:?}");
    for (name, d) in &took {
        assert!(*d <= deadline(), "{name} took {d:?}, more than poll_interval + settle + 1 s:\n{}", daemon.log_text());
    }
    let receipts = receipts_in(&outbox);
    assert_eq!(receipts.len(), 4);
    assert!(receipts.iter().all(|r| r["status"] == "accepted"), "{receipts:?}");
    assert_eq!(home.run_count(), 2 + 3 + 4 + 2);
    // Nothing left behind on the share but the videos and intake's empty claim folder.
    assert_eq!(names_in(&share), [".cosmos", "videos"]);
    assert!(claims_under(&share).is_empty());
    // Originals archived on the state disk; the runs name inputs staged there too.
    assert_eq!(std::fs::read_dir(home.root().join("state/archive")).unwrap().count(), 4);
    assert!(home.root().join("state/archive").read_dir().unwrap().flatten().any(|e| e.path().join("videos/city1/color.mp4").is_file()));
    for r in common::runs(&home) {
        let input = PathBuf::from(r["visual_input"].as_str().unwrap());
        assert!(input.starts_with(home.root().join("state/work")) && input.is_file(), "{input:?}");
    }
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs bindfs and /dev/fuse (FUSE mounts); cargo nextest run --run-ignored all runs it, as CI does"]
fn two_daemons_on_one_network_inbox_take_200_files_each_exactly_once() {
    let home = Home::new();
    let share = home.path().join("share");
    let (host_a, host_b) = (home.path().join("host-a"), home.path().join("host-b"));
    // Two hosts, each with its own mount of the one share, its own state and outbox.
    let Some(_ma) = BindMount::new(&share, &host_a.join("inbox"), &[]) else { return };
    let Some(_mb) = BindMount::new(&share, &host_b.join("inbox"), &[]) else { return };
    copy_videos(&home.path().join("videos"), &share.join("videos"));
    // Only intake is under test: the queues stay paused.
    cosmos_at(&host_a, &["pause"]);
    cosmos_at(&host_b, &["pause"]);
    let a = Daemon::start_with(&home, &home.path().join("a.toml"), "", &[OsStr::new("--root"), host_a.as_os_str()], &[]);
    let b = Daemon::start_with(&home, &home.path().join("b.toml"), "", &[OsStr::new("--root"), host_b.as_os_str()], &[]);

    // 200 files behind the mounts, in waves: half renamed in, half written in place.
    let beside = home.path().join("share-beside");
    std::fs::create_dir_all(&beside).unwrap();
    let mut expected = Vec::new();
    for wave in 0..4 {
        for i in 0..50 {
            let n = wave * 50 + i;
            let name = format!("f{n:03}.jsonl");
            if n % 2 == 0 {
                std::fs::write(beside.join(&name), home.jobs(&format!("f{n}"), 1)).unwrap();
                std::fs::rename(beside.join(&name), share.join(&name)).unwrap();
            } else {
                std::fs::write(share.join(&name), home.jobs(&format!("f{n}"), 1)).unwrap();
            }
            expected.push(name);
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    let all = || {
        let mut r = receipts_in(&host_a.join("outbox"));
        r.extend(receipts_in(&host_b.join("outbox")));
        r
    };
    assert!(wait_until(Duration::from_secs(90), || all().len() >= 200), "{} receipts\n{}\n{}", all().len(), a.log_text(), b.log_text());
    std::thread::sleep(Duration::from_secs(1)); // a second taker would show up by now
    let receipts = all();
    let mut names: Vec<String> = receipts.iter().map(|r| r["file"].as_str().unwrap().to_string()).collect();
    names.sort();
    assert_eq!(names, expected, "every file taken in exactly once across both daemons");
    assert!(receipts.iter().all(|r| r["status"] == "accepted"));
    let runs =
        |root: &Path| serde_json::from_str::<Value>(&cosmos_at(root, &["list", "runs", "--json"])).unwrap().as_array().map_or(0, Vec::len);
    let (ra, rb) = (runs(&host_a), runs(&host_b));
    println!("host a took {ra}, host b took {rb}");
    assert_eq!(ra + rb, 200);
    assert_eq!(names_in(&share), [".cosmos", "videos"]);
    assert!(claims_under(&share).is_empty());
    assert_eq!(std::fs::read_dir(share.join(".cosmos/claimed")).unwrap().count(), 2, "a claim folder per daemon");
    drop((a, b));
}

#[test]
#[ignore = "needs bindfs and /dev/fuse (FUSE mounts); cargo nextest run --run-ignored all runs it, as CI does"]
fn kill_9_during_a_claim_on_the_mount_takes_the_file_exactly_once() {
    let home = Home::new();
    let share = home.path().join("share");
    let Some(_mount) = BindMount::new(&share, &home.inbox(), &[]) else { return };
    copy_videos(&home.path().join("videos"), &share.join("videos"));
    let claimed = home.root().join("state/claimed");

    // Killed right after the copy into the state folder, before the decision.
    let daemon = Daemon::start(&home, "", &[("COSMOS_FAULT_PAUSE", "copy:5000")]);
    std::fs::write(share.join("copied.jsonl"), home.jobs("copied", 2)).unwrap();
    daemon.wait_log("COSMOS_FAULT_PAUSE: pausing", LONG);
    daemon.kill9();
    assert!(claims_under(&share).is_empty(), "moved off the share");
    assert_eq!(std::fs::read_dir(&claimed).unwrap().count(), 1, "and whole in the state folder");
    assert!(!share.join("copied.jsonl").exists());
    assert_eq!(home.run_count(), 0);

    // Killed right after the claim, before the copy. (Start-up first finishes the file above.)
    let daemon = Daemon::start(&home, "", &[("COSMOS_FAULT_PAUSE", "claim:5000")]);
    assert!(wait_until(LONG, || home.receipts_with("accepted").len() == 1), "{}", daemon.log_text());
    std::fs::write(share.join("crash.jsonl"), home.jobs("crash", 3)).unwrap();
    daemon.wait_log("COSMOS_FAULT_PAUSE: pausing", LONG);
    daemon.kill9();
    let held = claims_under(&share);
    assert_eq!(held.len(), 1, "the file waits in the share's claim folder");
    assert!(held[0].to_string_lossy().ends_with("__crash.jsonl"));
    assert!(!share.join("crash.jsonl").exists());
    assert_eq!(std::fs::read_dir(&claimed).unwrap().count(), 0);
    assert_eq!(home.run_count(), 2);

    let daemon = Daemon::start(&home, "", &[]);
    assert!(wait_until(LONG, || home.receipts_with("accepted").len() == 2), "{}", daemon.log_text());
    // The same bytes again: a duplicate, nothing runs twice.
    std::fs::write(share.join("again.jsonl"), home.jobs("crash", 3)).unwrap();
    assert!(wait_until(LONG, || home.receipts_with("duplicate").len() == 1), "{}", daemon.log_text());
    assert_eq!(home.run_count(), 5, "each file taken exactly once");
    assert_eq!(std::fs::read_dir(&claimed).unwrap().count(), 0);
    assert!(claims_under(&share).is_empty());
    assert_eq!(names_in(&share), [".cosmos", "videos"]);
    assert_eq!(std::fs::read_dir(home.root().join("state/archive")).unwrap().count(), 3);
}

#[test]
#[ignore = "needs bindfs and /dev/fuse (FUSE mounts); cargo nextest run --run-ignored all runs it, as CI does"]
fn an_outbox_on_fuse_gets_run_folders_whole_and_rejections_too() {
    let home = Home::new();
    let out_share = home.path().join("out-share");
    let Some(_mount) = BindMount::new(&out_share, &home.outbox(), &[]) else { return };
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let daemon = Daemon::start(&home, "backend_args = [\"--load-seconds\", \"0.2\", \"--job-seconds\", \"0.3\"]\n", &[]);

    // A reader behind the mount (rsync on the other host) looks every few ms; every run
    // folder it ever sees must already hold everything its manifest lists.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, dir) = (stop.clone(), out_share.clone());
        std::thread::spawn(move || {
            let mut problems = Vec::new();
            let mut seen = std::collections::BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if !name.starts_with("run_rs_") {
                        continue;
                    }
                    seen.insert(name.clone());
                    match std::fs::read_to_string(e.path().join("manifest.txt")) {
                        Ok(text) if !text.is_empty() => {
                            for line in text.lines() {
                                let mut f = line.split(' ');
                                let (size, path) = (f.next().unwrap_or(""), f.nth(2).unwrap_or(""));
                                let actual = std::fs::metadata(e.path().join(path)).map(|m| m.len().to_string());
                                if actual.as_deref().ok() != Some(size) {
                                    problems.push(format!("{name}/{path}: manifest says {size} bytes, saw {actual:?}"));
                                }
                            }
                        }
                        other => problems.push(format!("{name} visible without its manifest: {other:?}")),
                    }
                }
                std::thread::sleep(Duration::from_millis(3));
            }
            (problems, seen)
        })
    };
    common::drop_file(&home, "jobs.jsonl", &home.jobs("out", 3));
    common::drop_file(&home, "broken.jsonl", "{\"prompt\": \"no video\"}\n");
    let done = || common::runs(&home).iter().filter(|r| r["status"] == "completed").count();
    assert!(wait_until(Duration::from_secs(60), || done() == 3), "{}", daemon.log_text());
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (problems, seen) = watcher.join().unwrap();
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(seen.len(), 3, "the reader saw every run folder");
    // Each folder checks out against its manifest, read behind the mount.
    for name in &seen {
        let dir = out_share.join(name);
        let manifest = std::fs::read_to_string(dir.join("manifest.txt")).unwrap();
        for line in manifest.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            let out = std::process::Command::new("sha256sum").arg(dir.join(parts[3])).output().unwrap();
            assert!(String::from_utf8_lossy(&out.stdout).starts_with(parts[2]), "{name}/{}", parts[3]);
        }
        assert!(std::fs::metadata(dir.join("output.mp4")).unwrap().len() > 0);
    }
    // The rejection and the receipts are on the mount too, and nothing half-made is.
    let rejected = names_in(&out_share.join("rejected"));
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(out_share.join("rejected").join(&rejected[0]).join("errors.txt").is_file());
    assert_eq!(receipts_in(&out_share).len(), 2);
    assert!(names_in(&out_share.join(".staging")).is_empty(), "no staging leftovers");
    assert!(out_share.join("status.json").is_file());
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs bindfs and /dev/fuse (FUSE mounts); cargo nextest run --run-ignored all runs it, as CI does"]
fn a_network_inbox_that_refuses_claims_is_retried_with_backoff_and_named_in_status() {
    let home = Home::new();
    let share = home.path().join("share");
    let Some(mut mount) = BindMount::new(&share, &home.inbox(), &[]) else { return };
    copy_videos(&home.path().join("videos"), &share.join("videos"));
    let daemon = Daemon::start(&home, "", &[]);
    daemon.wait_log("mode=Poll", LONG);
    // The share turns read-only under the running daemon (a server exporting it ro, say).
    mount.remount(&["-o", "ro"]);
    std::fs::write(share.join("remote.jsonl"), home.jobs("remote", 2)).unwrap();
    let failures = || daemon.log_text().matches("cannot take in; it stays in the inbox").count();
    assert!(wait_until(LONG, || failures() >= 1), "{}", daemon.log_text());
    let first = Instant::now();
    let log = daemon.log_text();
    assert!(log.contains("cannot claim") && log.contains("Read-only file system"), "{log}");
    // status.json and `cosmos status` name the file and the reason.
    assert!(wait_until(LONG, || common::status(&home)["intake"]["stuck"][0]["file"] == "remote.jsonl"), "{}", common::status(&home));
    let stuck = &common::status(&home)["intake"]["stuck"][0];
    assert!(stuck["reason"].as_str().unwrap().contains("Read-only file system"), "{stuck}");
    assert_eq!(stuck["stage"], "claim");
    let text = home.ok(&["status"]);
    assert!(text.contains("intake: 1 inbox entry cannot be taken in") && text.contains("remote.jsonl: cannot claim"), "{text}");
    // With backoff (1 s, 2 s, 4 s, ...) seven seconds hold at most four tries; a retry on
    // every poll (200 ms) would make thirty-five.
    std::thread::sleep(Duration::from_secs(7).saturating_sub(first.elapsed()));
    let tries = failures();
    assert!((2..=5).contains(&tries), "{tries} tries in 7 s:\n{}", daemon.log_text());
    // Writable again: taken in at the next try, and no longer named as stuck.
    mount.remount(&[]);
    assert!(wait_until(LONG, || home.receipts_with("accepted").len() == 1), "{}", daemon.log_text());
    assert!(wait_until(LONG, || common::status(&home)["intake"]["stuck"] == serde_json::json!([])), "{}", common::status(&home));
    assert_eq!(home.run_count(), 2);
    assert!(daemon.stop().success());
}
