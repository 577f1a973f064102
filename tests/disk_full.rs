//! Full disks, on small tmpfs filesystems made in the test: the outbox (runs wait with the
//! reason, nothing partial appears, a publication cut short by ENOSPC waits and is done
//! when space returns) and, separately, the state folder (nothing is claimed, the file
//! waits in the inbox, the daemon stays up, and it all goes on by itself). Mounting needs
//! root: without it these tests skip with the reason, unless COSMOS_REQUIRE_MOUNT=1 (CI).

mod common;

use common::{drop_file, runs, status, wait_until, Daemon, Home};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

/// A tmpfs of `size` at `path`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).expect("mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(Tmpfs(path.to_path_buf()));
        }
        if std::env::var("COSMOS_REQUIRE_MOUNT").as_deref() == Ok("1") {
            panic!("COSMOS_REQUIRE_MOUNT=1 but a tmpfs cannot be mounted here (not root?)");
        }
        println!("skipped: cannot mount a tmpfs (needs root; set COSMOS_REQUIRE_MOUNT=1 to make this a failure)");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills `dir`'s filesystem until less than `leave` bytes are free; returns the ballast.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let ballast = dir.join(".ballast");
    let free = free_bytes(dir);
    let size = free.saturating_sub(leave);
    let f = std::fs::File::create(&ballast).expect("ballast");
    // Written, not sparse: tmpfs counts what is written.
    use std::io::Write;
    let mut w = std::io::BufWriter::new(f);
    let block = vec![0x55u8; 64 << 10];
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        if w.write_all(&block[..n]).is_err() {
            break;
        }
        left -= n as u64;
    }
    let _ = w.flush();
    ballast
}

fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("df").args(["-B1", "--output=avail"]).arg(dir).output().expect("df");
    String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).expect("df avail")
}

fn completed(home: &Home) -> usize {
    runs(home).iter().filter(|r| r["status"] == "completed").count()
}

/// No partial or stray entry where users sync: only whole run folders (with their
/// manifest), batch folders, receipts, rejected/, status.json, and the empty staging.
fn outbox_is_clean(outbox: &Path) {
    for e in std::fs::read_dir(outbox).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        match name.as_str() {
            "receipts" | "rejected" | "status.json" | ".ballast" => {}
            ".staging" => assert_eq!(std::fs::read_dir(&p).unwrap().count(), 0, "staging left with something in it"),
            n if n.starts_with("run_") => assert!(p.join("manifest.json").is_file(), "{n} without its manifest"),
            n if n.starts_with("batch_") => assert!(p.join("batch_run.log").is_file(), "{n} is partial"),
            n => panic!("a stray entry in the outbox: {n}"),
        }
    }
}

#[test]
#[ignore = "needs root, to mount small tmpfs filesystems; cargo nextest run --run-ignored all runs it, as CI does"]
fn a_full_outbox_holds_runs_with_the_reason_and_a_cut_publication_waits_for_space() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let Some(_fs) = Tmpfs::mount(&home.outbox(), "4m") else { return };
    // Below outbox.min_free: the guard holds the queue and says why.
    let ballast = fill(&home.outbox(), 512 << 10);
    let d = Daemon::start(&home, "[outbox]\nmin_free = \"1MiB\"\n", &[]);
    drop_file(&home, "held.jsonl", &home.jobs("held", 2));
    assert!(
        wait_until(LONG, || status(&home)["waiting"].as_str().is_some_and(|w| w.starts_with("disk guard"))),
        "{}\n{}",
        status(&home),
        d.log_text()
    );
    assert_eq!(completed(&home), 0);
    outbox_is_clean(&home.outbox());
    // Space returns: the runs go on by themselves.
    std::fs::remove_file(&ballast).unwrap();
    assert!(wait_until(LONG, || completed(&home) == 2), "{}", d.log_text());
    outbox_is_clean(&home.outbox());
    drop(d);

    // Now with no guard: the disk fills while a run folder is being built (ENOSPC). A
    // 1 MiB video (the sim worker copies it as the output and each control): room is left
    // for status.json and the receipt, not for the run folder.
    let d = Daemon::start(&home, "[outbox]\nmin_free = \"0\"\n", &[]);
    std::fs::write(home.inbox().join("videos/big.mp4"), common::padded_video(1 << 20)).unwrap();
    let ballast = fill(&home.outbox(), 768 << 10);
    drop_file(&home, "cut.jsonl", &home.jobs("cut", 1).replace("videos/city1/color.mp4", "videos/big.mp4"));
    assert!(
        wait_until(LONG, || status(&home)["waiting"]
            .as_str()
            .is_some_and(|w| w.contains("cannot publish run") && w.contains("No space left"))),
        "{}\n{}",
        status(&home),
        d.log_text()
    );
    outbox_is_clean(&home.outbox());
    let cut = runs(&home).into_iter().find(|r| r["name"] == "cut-0").expect("the run");
    assert_eq!(cut["status"], "running", "neither completed without its folder nor failed: {cut}");
    std::fs::remove_file(&ballast).unwrap();
    assert!(wait_until(LONG, || completed(&home) == 3), "{}", d.log_text());
    outbox_is_clean(&home.outbox());
    assert!(d.log_text().contains("published after waiting"));
    assert!(d.stop().success());
}

#[test]
#[ignore = "needs root, to mount small tmpfs filesystems; cargo nextest run --run-ignored all runs it, as CI does"]
fn a_full_state_folder_leaves_files_in_the_inbox_and_the_daemon_up_until_space_returns() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let state = home.root().join("state");
    let Some(_fs) = Tmpfs::mount(&state, "16m") else { return };
    let d = Daemon::start(&home, "[outbox]\nmin_free = \"2MiB\"\n", &[]);
    let ballast = fill(&state, 1 << 20);
    drop_file(&home, "waits.jsonl", &home.jobs("waits", 3));
    // Not claimed: it stays in the inbox under its name, and status.json says why.
    assert!(
        wait_until(LONG, || status(&home)["intake"]["stuck"][0]["reason"].as_str().is_some_and(|r| r.contains("files wait in the inbox"))),
        "{}\n{}",
        status(&home),
        d.log_text()
    );
    assert!(home.inbox().join("waits.jsonl").is_file(), "still in the inbox");
    assert!(home.receipts().is_empty());
    // Space returns: taken in and run, once.
    std::fs::remove_file(&ballast).unwrap();
    assert!(wait_until(LONG, || completed(&home) == 3), "{}\n{}", status(&home), d.log_text());
    assert_eq!(home.receipts_with("accepted").len(), 1);
    assert!(!home.inbox().join("waits.jsonl").exists());

    // SQLite itself finds the disk full: room enough to claim, not to record 3,000 runs.
    let ballast = fill(&state, 2560 << 10);
    drop_file(&home, "big.jsonl", &home.jobs("big", 3000));
    assert!(wait_until(LONG, || d.log_text().contains("database or disk is full")), "{}\n{}", status(&home), d.log_text());
    // Claimed before SQLite found the disk full: it waits, whole, in claimed/, named with the
    // reason in status.json, and is retried from there.
    assert!(
        wait_until(LONG, || status(&home)["intake"]["stuck"].as_array().is_some_and(|s| s
            .iter()
            .any(|e| e["waits"].as_str().is_some_and(|w| w.contains("claimed/")) && e.to_string().contains("big.jsonl")))),
        "{}",
        status(&home)
    );
    assert!(home.receipts_with("accepted").len() == 1, "not accepted half-way");
    assert_eq!(runs(&home).len(), 3, "no run of it recorded");
    std::fs::remove_file(&ballast).unwrap();
    assert!(wait_until(LONG, || home.receipts_with("accepted").len() == 2), "{}\n{}", status(&home), d.log_text());
    assert_eq!(runs(&home).len(), 3003, "all of it, once");
    assert!(d.stop().success(), "the daemon stayed up");
}
