//! cosmosd intake end to end: the real daemon on temp folders, files delivered the ways
//! people deliver them. Every file ends accepted, duplicate or rejected; none lost, none twice.

mod common;

use common::{wait_until, Daemon, Home};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(20);

fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write file");
}

#[test]
fn cp_mv_rsync_and_submit_are_all_taken_in_once() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    // Intake only: the runs stay queued, so the receipts below say `queued` for each.
    home.ok(&["pause"]);
    let daemon = Daemon::start(&home, "", &[]);
    let outside = home.path().join("outgoing");
    std::fs::create_dir_all(&outside).unwrap();

    // cp: written in place, taken on close.
    write_file(&outside.join("by-cp.jsonl"), &home.jobs("cp", 2));
    assert!(std::process::Command::new("cp").arg(outside.join("by-cp.jsonl")).arg(home.inbox()).status().unwrap().success());
    // mv: renamed in, taken at once.
    write_file(&outside.join("by-mv.jsonl"), &home.jobs("mv", 3));
    std::fs::rename(outside.join("by-mv.jsonl"), home.inbox().join("by-mv.jsonl")).unwrap();
    // rsync: a hidden temp name, then a rename.
    write_file(&outside.join("by-rsync.jsonl"), &home.jobs("rsync", 4));
    let status = std::process::Command::new("rsync")
        .arg("-a")
        .arg(outside.join("by-rsync.jsonl"))
        .arg(format!("{}/", home.inbox().display()))
        .status();
    assert!(status.expect("rsync is installed (.ci/run installs it)").success());
    // cosmos submit: a job file whose videos sit beside it travels as a bundle.
    std::fs::create_dir_all(outside.join("videos/city1")).unwrap();
    for f in ["color.mp4", "depth.mp4"] {
        std::fs::copy(home.path().join("videos/city1").join(f), outside.join("videos/city1").join(f)).unwrap();
    }
    write_file(&outside.join("by-submit.jsonl"), &home.jobs("submit", 5));
    let out = home.ok(&["submit", outside.join("by-submit.jsonl").to_str().unwrap()]);
    assert!(out.contains("receipt ") && out.contains("accepted, 5 run(s) queued"), "{out}");

    assert!(wait_until(LONG, || home.receipts_with("accepted").len() == 4), "receipts: {:?}\n{}", home.receipts(), daemon.log_text());
    assert_eq!(home.run_count(), 2 + 3 + 4 + 5);
    for r in home.receipts() {
        let runs = r["runs"].as_array().unwrap();
        assert!(runs.iter().all(|run| run["status"] == "queued" && run["run_id"].as_str().unwrap().starts_with("rs_")));
        let lines: Vec<u64> = runs.iter().map(|run| run["line"].as_u64().unwrap()).collect();
        assert_eq!(lines, (1..=runs.len() as u64).collect::<Vec<_>>(), "line -> run id, in order");
    }
    // Staged inputs: one copy per distinct content (the color and the depth video), not a
    // folder per run; every run names them.
    let inputs = home.root().join("state/work/inputs");
    assert_eq!(std::fs::read_dir(&inputs).unwrap().count(), 2);
    for run in common::runs(&home) {
        assert!(std::path::Path::new(run["visual_input"].as_str().unwrap()).starts_with(&inputs), "{run}");
    }
    // Nothing was deleted: every original is in the archive.
    assert_eq!(std::fs::read_dir(home.root().join("state/archive")).unwrap().count(), 4);
    assert!(
        std::fs::read_dir(home.inbox()).unwrap().all(|e| ["videos", ".cosmos"].contains(&e.unwrap().file_name().to_str().unwrap())),
        "the inbox keeps only the videos folder (and intake's own hidden folder)"
    );
    assert_eq!(common::inbox_claims(&home).len(), 0, "no claim left behind in the inbox");
    assert!(daemon.stop().success(), "SIGTERM exits 0");
}

#[test]
fn a_slow_writer_is_never_claimed_early() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let daemon = Daemon::start(&home, "", &[]);
    let path = home.inbox().join("slow.jsonl");
    let text = home.jobs("slow", 5);
    let mut f = std::fs::File::create(&path).unwrap();
    // Five lines over five seconds, each cut in the middle for a while: longer pauses than
    // watch.settle, so only the close may make the file ready.
    for line in text.lines() {
        let (a, b) = line.split_at(line.len() / 2);
        f.write_all(a.as_bytes()).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        assert!(path.exists(), "claimed while being written:\n{}", daemon.log_text());
        f.write_all(b.as_bytes()).unwrap();
        f.write_all(b"\n").unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        assert!(path.exists(), "claimed while being written:\n{}", daemon.log_text());
    }
    drop(f);
    assert!(wait_until(LONG, || home.receipts_with("accepted").len() == 1), "{}", daemon.log_text());
    assert_eq!(home.receipts()[0]["runs"].as_array().unwrap().len(), 5);
}

#[test]
fn the_same_file_five_times_runs_once() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let daemon = Daemon::start(&home, "", &[]);
    let text = home.jobs("same", 3);
    for i in 0..5 {
        let tmp = home.inbox().join(format!(".copy{i}.tmp"));
        write_file(&tmp, &text);
        std::fs::rename(&tmp, home.inbox().join(format!("same{i}.jsonl"))).unwrap();
        // rsync re-sending the very same name after it left the inbox.
        assert!(wait_until(LONG, || home.receipts().len() == i + 1), "{}", daemon.log_text());
    }
    let accepted = home.receipts_with("accepted");
    let duplicates = home.receipts_with("duplicate");
    assert_eq!(accepted.len(), 1);
    assert_eq!(duplicates.len(), 4);
    for d in &duplicates {
        assert_eq!(d["duplicate_of"], accepted[0]["submission"], "the receipt names what it repeats");
        assert_eq!(d["runs"].as_array().map(Vec::len), Some(0));
    }
    assert_eq!(home.run_count(), 3, "runs recorded once");
}

#[test]
fn a_bundle_whose_jobs_arrive_before_its_videos_waits_for_them() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    let daemon = Daemon::start(&home, "", &[]);
    let bundle = home.inbox().join("shoot1");
    std::fs::create_dir_all(&bundle).unwrap();
    write_file(&bundle.join("jobs.jsonl"), &home.jobs("shoot", 2));
    // Longer than watch.settle, shorter than watch.incomplete_grace.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(bundle.exists(), "taken before its videos arrived:\n{}", daemon.log_text());
    std::fs::create_dir_all(bundle.join("videos/city1")).unwrap();
    for f in ["color.mp4", "depth.mp4"] {
        std::fs::copy(home.path().join("videos/city1").join(f), bundle.join("videos/city1").join(f)).unwrap();
    }
    assert!(wait_until(LONG, || home.receipts_with("accepted").len() == 1), "{:?}\n{}", home.receipts(), daemon.log_text());
    assert!(home.receipts_with("rejected").is_empty());
    // The runs name their staged copies, not the bundle (which went to the archive).
    let runs = home.json(&["list", "runs", "--json"]);
    for run in runs.as_array().unwrap() {
        let input = run["visual_input"].as_str().unwrap();
        assert!(input.contains("/state/work/inputs/") && input.ends_with(".mp4"), "{input}");
        assert!(Path::new(input).is_file());
    }
}

#[test]
fn kill_9_between_claim_and_commit_takes_the_file_exactly_once() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let daemon = Daemon::start(&home, "", &[("COSMOS_FAULT_PAUSE", "claim:5000")]);
    write_file(&home.inbox().join(".j.tmp"), &home.jobs("crash", 3));
    std::fs::rename(home.inbox().join(".j.tmp"), home.inbox().join("crash.jsonl")).unwrap();
    daemon.wait_log("COSMOS_FAULT_PAUSE: pausing", LONG);
    daemon.kill9();
    let claimed = home.root().join("state/claimed");
    let in_inbox = common::inbox_claims(&home);
    assert_eq!(in_inbox.len(), 1, "the file sits in the inbox's claim folder");
    assert!(in_inbox[0].file_name().unwrap().to_str().unwrap().ends_with("__crash.jsonl"));
    assert!(!home.inbox().join("crash.jsonl").exists(), "claimed: no longer under its own name");
    assert_eq!(home.run_count(), 0, "nothing was committed");

    let daemon = Daemon::start(&home, "", &[]);
    assert!(wait_until(LONG, || home.receipts_with("accepted").len() == 1), "{}", daemon.log_text());
    assert_eq!(home.run_count(), 3);
    assert_eq!(std::fs::read_dir(&claimed).unwrap().count(), 0);
    assert!(common::inbox_claims(&home).is_empty());
    drop(daemon);

    // Killed after the commit, before the receipt and the archive: finished, not redone.
    let daemon = Daemon::start(&home, "", &[("COSMOS_FAULT_PAUSE", "commit:5000")]);
    write_file(&home.inbox().join(".k.tmp"), &home.jobs("crash2", 2));
    std::fs::rename(home.inbox().join(".k.tmp"), home.inbox().join("crash2.jsonl")).unwrap();
    daemon.wait_log("COSMOS_FAULT_PAUSE: pausing", LONG);
    daemon.kill9();
    assert_eq!(home.run_count(), 5, "committed before the kill");
    let daemon = Daemon::start(&home, "", &[]);
    assert!(wait_until(LONG, || home.receipts_with("accepted").len() == 2), "{}", daemon.log_text());
    assert_eq!(home.run_count(), 5, "no run twice");
    assert_eq!(std::fs::read_dir(home.root().join("state/archive")).unwrap().count(), 2);
}

#[test]
fn a_thousand_files_at_once_are_all_accepted() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let daemon = Daemon::start(&home, "", &[]);
    let staging = home.root().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    for i in 0..1000 {
        write_file(&staging.join(format!("burst{i:04}.jsonl")), &home.jobs(&format!("burst{i}"), 1));
    }
    for i in 0..1000 {
        let name = format!("burst{i:04}.jsonl");
        std::fs::rename(staging.join(&name), home.inbox().join(&name)).unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(120), || home.receipts_with("accepted").len() == 1000),
        "{} accepted\n{}",
        home.receipts_with("accepted").len(),
        daemon.log_text().lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    assert_eq!(home.run_count(), 1000);
    assert!(home.receipts_with("rejected").is_empty());
}

#[test]
fn broken_and_unsafe_files_are_rejected_with_every_reason() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let outside = home.path().join("secret");
    std::fs::create_dir_all(&outside).unwrap();
    write_file(&outside.join("private.mp4"), "not yours");
    std::os::unix::fs::symlink(outside.join("private.mp4"), home.inbox().join("videos/link.mp4")).unwrap();
    let daemon = Daemon::start(&home, "", &[]);
    let jobs = [
        ("broken.jsonl", concat!(
            "{\"visual_input\": \"videos/city1/color.mp4\", \"promt\": \"x\", \"control_overrides\": {\"vis\": {\"control_weight\": 0.3}}}\n",
            "{\"visual_input\": \"videos/city1/color.mp4\", \"prompt\": \"x\", \"control_overrides\": {\"vis\": {\"control_weight\": 3}}}\n",
            "not json at all\n",
        ).to_string()),
        ("traversal.jsonl", "{\"visual_input\": \"../../secret/private.mp4\", \"prompt\": \"x\", \"control_overrides\": {\"vis\": {\"control_weight\": 0.3}}}\n".to_string()),
        ("symlink.jsonl", "{\"visual_input\": \"videos/link.mp4\", \"prompt\": \"x\", \"control_overrides\": {\"vis\": {\"control_weight\": 0.3}}}\n".to_string()),
        ("absolute.jsonl", format!("{{\"visual_input\": \"{}\", \"prompt\": \"x\", \"control_overrides\": {{\"vis\": {{\"control_weight\": 0.3}}}}}}\n", outside.join("private.mp4").display())),
        ("notes.txt", "hello\n".to_string()),
    ];
    for (name, text) in &jobs {
        let tmp = home.inbox().join(format!(".{name}.tmp"));
        write_file(&tmp, text);
        std::fs::rename(&tmp, home.inbox().join(name)).unwrap();
    }
    // A fifo: rejected without ever being opened.
    assert!(std::process::Command::new("mkfifo").arg(home.inbox().join("pipe.jsonl")).status().unwrap().success());
    assert!(wait_until(LONG, || home.receipts_with("rejected").len() == 6), "{:?}\n{}", home.receipts(), daemon.log_text());
    assert_eq!(home.run_count(), 0, "all-or-nothing: the good lines of a bad file run neither");
    let errors = |stem: &str| -> String {
        let dir = std::fs::read_dir(home.outbox().join("rejected"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{stem}.sb_")))
            .unwrap_or_else(|| panic!("no rejected folder for {stem}"));
        std::fs::read_to_string(dir.join("errors.txt")).unwrap()
    };
    let broken = errors("broken");
    assert!(broken.contains("broken.jsonl:1: promt: unknown key; did you mean `prompt`?"), "{broken}");
    assert!(broken.contains("broken.jsonl:2: control_overrides.vis.control_weight: expected a number in [0, 1], got 3"), "{broken}");
    assert!(broken.contains("broken.jsonl:3: invalid JSON"), "{broken}");
    assert!(errors("traversal").contains("uses `..` to leave the allowed folders"));
    assert!(errors("symlink").contains("leads through a symlink"));
    assert!(errors("absolute").contains("outside the allowed folders"));
    assert!(errors("notes.txt").contains("not a submission"));
    assert!(errors("pipe").contains("not a regular file"));
    // The original travels with its errors, and stays in the archive too.
    let rejected_dirs: Vec<_> = std::fs::read_dir(home.outbox().join("rejected")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(rejected_dirs.iter().any(|d| d.join("broken.jsonl").is_file()));
    assert_eq!(std::fs::read_dir(home.root().join("state/archive")).unwrap().count(), 6);
}

#[test]
fn poll_mode_and_sighup_reload() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let daemon = Daemon::start(&home, "[log]\nlevel = \"debug\"\n", &[]);
    // Switch to polling by SIGHUP.
    let config = home.path().join("cosmosd.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace("[watch]\n", "[watch]\nmode = \"poll\"\n");
    std::fs::write(&config, &text).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("watch.mode: \"auto\" -> \"poll\"", LONG);
    daemon.wait_log("mode=Poll", LONG);
    write_file(&home.inbox().join("polled.jsonl"), &home.jobs("poll", 2));
    assert!(wait_until(LONG, || home.receipts_with("accepted").len() == 1), "{}", daemon.log_text());
    // A broken config is reported and changes nothing.
    std::fs::write(&config, "[watch]\nsetle = \"1s\"\n").unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("config reload failed; keeping the running configuration", LONG);
    write_file(&home.inbox().join("after.jsonl"), &home.jobs("after", 1));
    assert!(wait_until(LONG, || home.receipts_with("accepted").len() == 2), "{}", daemon.log_text());
    assert!(daemon.stop().success());
}

#[test]
fn tells_systemd_it_is_ready() {
    let home = Home::new();
    let sock_path = home.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let daemon = Daemon::start(&home, "", &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())]);
    let mut buf = [0u8; 1024];
    let n = sock.recv(&mut buf).expect("a notification from cosmosd");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.contains("READY=1"), "{msg}");
    assert!(daemon.stop().success());
    let n = sock.recv(&mut buf).expect("the stopping notification");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
}

#[test]
fn inputs_on_another_filesystem_are_copied_not_linked() {
    use std::os::unix::fs::MetadataExt;
    let shm = Path::new("/dev/shm");
    let home = Home::new();
    let other = match tempfile::tempdir_in(shm) {
        Ok(d) if std::fs::metadata(d.path()).map(|m| m.dev()).ok() != std::fs::metadata(home.path()).map(|m| m.dev()).ok() => d,
        _ => {
            println!("skipped: no second filesystem at /dev/shm");
            return;
        }
    };
    let video = other.path().join("color.mp4");
    std::fs::copy(home.path().join("videos/city1/color.mp4"), &video).unwrap();
    std::fs::create_dir_all(home.inbox()).unwrap();
    let daemon = Daemon::start(&home, &format!("[paths]\ninput_roots = [\"{}\"]\n", other.path().display()), &[]);
    let line = format!(
        "{{\"visual_input\": \"{}\", \"prompt\": \"x\", \"control_overrides\": {{\"vis\": {{\"control_weight\": 0.3}}}}}}\n",
        video.display()
    );
    write_file(&home.inbox().join(".x.tmp"), &line);
    std::fs::rename(home.inbox().join(".x.tmp"), home.inbox().join("remote.jsonl")).unwrap();
    assert!(wait_until(LONG, || home.receipts_with("accepted").len() == 1), "{}", daemon.log_text());
    let run = &home.json(&["list", "runs", "--json"])[0];
    let staged = Path::new(run["visual_input"].as_str().unwrap());
    assert_eq!(std::fs::read(staged).unwrap(), std::fs::read(&video).unwrap());
    assert_ne!(std::fs::metadata(staged).unwrap().dev(), std::fs::metadata(&video).unwrap().dev(), "a copy on the state filesystem");
}

#[test]
fn a_file_identical_to_a_rejected_one_is_judged_again() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    let daemon = Daemon::start(&home, "", &[]);
    let rejected_dirs = || {
        std::fs::read_dir(home.outbox().join("rejected"))
            .unwrap()
            .filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
            .count()
    };
    // The job names videos that are not there yet.
    let text = home.jobs("late", 2);
    common::drop_file(&home, "late.jsonl", &text);
    assert!(wait_until(LONG, || home.receipts_with("rejected").len() == 1), "{}", daemon.log_text());
    let first = home.receipts_with("rejected")[0].clone();
    let errors = std::fs::read_to_string(first["errors"].as_str().unwrap()).unwrap();
    assert!(errors.contains("late.jsonl:1: visual_input:") && errors.contains("videos/city1/color.mp4"), "{errors}");

    // Dropped again unchanged: judged again, rejected for the same problems, no new folder.
    common::drop_file(&home, "late.jsonl", &text);
    assert!(wait_until(LONG, || home.receipts_with("rejected").len() == 2), "{}", daemon.log_text());
    let again = home.receipts_with("rejected").into_iter().find(|r| r["submission"] != first["submission"]).unwrap();
    assert_eq!(again["duplicate_of"], first["submission"], "{again}");
    assert_eq!(again["rejected_before"], first["submission"]);
    assert_eq!(again["errors"], first["errors"], "points at the first rejection's errors.txt");
    assert!(again["note"].as_str().unwrap().contains("same problems"), "{again}");
    assert_eq!(rejected_dirs(), 1);

    // The videos arrive; the very same file is accepted now, and its runs run.
    home.videos_in_inbox();
    common::drop_file(&home, "late.jsonl", &text);
    assert!(wait_until(LONG, || home.receipts_with("accepted").len() == 1), "{}", daemon.log_text());
    let accepted = home.receipts_with("accepted")[0].clone();
    assert_eq!(accepted["rejected_before"], again["submission"], "names the latest rejection: {accepted}");
    assert!(accepted["note"].as_str().unwrap().contains("accepted this time"));
    assert!(wait_until(LONG, || common::runs(&home).iter().filter(|r| r["status"] == "completed").count() == 2), "{}", daemon.log_text());
    // Once accepted, the same bytes are a duplicate: nothing runs twice.
    common::drop_file(&home, "late.jsonl", &text);
    assert!(wait_until(LONG, || home.receipts_with("duplicate").len() == 1), "{}", daemon.log_text());
    assert_eq!(home.receipts_with("duplicate")[0]["duplicate_of"], accepted["submission"]);
    assert_eq!(home.run_count(), 2);
    assert_eq!(rejected_dirs(), 1);

    // A bundle without its videos: its errors name the bundle's own paths, not the state
    // folder's copy; judged again with new problems, it gets a folder of its own.
    let bundle = home.path().join("shoot");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(bundle.join("jobs.jsonl"), home.jobs("shoot", 1)).unwrap();
    std::fs::write(bundle.join("READY"), "").unwrap();
    let deliver = |b: &Path| {
        let tmp = home.inbox().join(".shoot.tmp");
        assert!(std::process::Command::new("cp").arg("-r").arg(b).arg(&tmp).status().unwrap().success());
        std::fs::rename(&tmp, home.inbox().join("shoot")).unwrap();
    };
    deliver(&bundle);
    assert!(wait_until(LONG, || home.receipts_with("rejected").len() == 3), "{}", daemon.log_text());
    let shoot = home.receipts_with("rejected").into_iter().find(|r| r["file"] == "shoot").unwrap();
    let errors = std::fs::read_to_string(shoot["errors"].as_str().unwrap()).unwrap();
    assert!(errors.contains("shoot/videos/city1/color.mp4") && !errors.contains("state/claimed"), "{errors}");
    assert_eq!(rejected_dirs(), 2);
    // Half the videos arrive: other problems, so a new folder; the same again: none.
    std::fs::create_dir_all(bundle.join("videos/city1")).unwrap();
    std::fs::copy(home.path().join("videos/city1/color.mp4"), bundle.join("videos/city1/color.mp4")).unwrap();
    deliver(&bundle);
    assert!(wait_until(LONG, || home.receipts_with("rejected").len() == 4), "{}", daemon.log_text());
    assert_eq!(rejected_dirs(), 3, "new problems, new folder");
    deliver(&bundle);
    assert!(wait_until(LONG, || home.receipts_with("rejected").len() == 5), "{}", daemon.log_text());
    assert_eq!(rejected_dirs(), 3, "the same problems again, no new folder");
    assert!(daemon.stop().success());
}

#[test]
fn a_second_daemon_on_the_same_state_folder_is_refused() {
    let home = Home::new();
    let daemon = Daemon::start(&home, "", &[]);
    let config = home.path().join("cosmosd.toml");
    let out = home.cosmosd().arg("--config").arg(&config).arg("--root").arg(home.root()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("another cosmosd (pid {}) uses the state folder", daemon.child.id())), "{err}");
    assert!(daemon.stop().success());
    // Once it stopped, the folder is free again.
    let daemon = Daemon::start(&home, "", &[]);
    assert!(daemon.stop().success());
}
