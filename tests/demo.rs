//! `cosmos demo`: one command runs the main job on the embedded default (the sim backend
//! under a home folder) and leaves the finished run folders there.

use assert_cmd::Command;
use std::path::Path;

fn demo(cwd: &Path, root: &Path) -> String {
    let out = Command::cargo_bin("cosmos")
        .expect("cosmos binary")
        .current_dir(cwd)
        .env_remove("COSMOS_CONFIG")
        .arg("--root")
        .arg(root)
        .arg("demo")
        .timeout(std::time::Duration::from_secs(120))
        .output()
        .expect("run cosmos demo");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "cosmos demo failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn run_folders(outbox: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(outbox)
        .expect("outbox")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("run_rs_")))
        .collect();
    v.sort();
    v
}

#[test]
fn demo_runs_the_examples_and_lists_their_folders_and_a_second_demo_runs_nothing_twice() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path().join("cosmos-home");
    let first = demo(tmp.path(), &root);
    assert!(first.contains("accepted, 3 run(s) queued"), "{first}");
    let folders = run_folders(&root.join("outbox"));
    assert_eq!(folders.len(), 3, "{first}");
    for f in &folders {
        assert!(first.contains(&f.display().to_string()), "{} not listed:\n{first}", f.display());
        let video = std::fs::metadata(f.join("output.mp4")).expect("output.mp4");
        assert!(video.len() > 0);
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(f.join("manifest.json")).expect("manifest.json")).expect("manifest parses");
        let run_id = f.file_name().expect("name").to_string_lossy().trim_start_matches("run_").to_string();
        assert_eq!(manifest["run_id"], run_id.as_str(), "{manifest}");
        let listed = manifest["files"].as_array().expect("files").iter().any(|e| e.to_string().contains("output.mp4"));
        assert!(listed, "output.mp4 not in the manifest: {manifest}");
    }
    // The daemon it started is gone: its lock on the state folder is free again.
    let lock = std::fs::File::open(root.join("state/cosmosd.lock")).expect("lock file");
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0, "a daemon still holds the state folder");
    drop(lock);

    let second = demo(tmp.path(), &root);
    assert!(second.contains("duplicate of"), "{second}");
    assert_eq!(run_folders(&root.join("outbox")).len(), 3, "a second demo ran something again:\n{second}");
}
