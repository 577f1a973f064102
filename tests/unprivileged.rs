//! The daemon end to end as an unprivileged user: as `nobody` (via setpriv) when the tests
//! run as root (CI), else as the user running them. Nothing in cosmosd needs root.

mod common;

use common::{wait_until, Daemon, Home};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const NOBODY: u32 = 65534;

fn running_as_root() -> bool {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() == 0 }
}

/// `program args...` as the unprivileged user.
fn unprivileged(program: &Path) -> Command {
    if running_as_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", &NOBODY.to_string(), "--regid", &NOBODY.to_string(), "--clear-groups", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn chown_tree(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).expect("chown");
    if path.is_dir() {
        for e in std::fs::read_dir(path).expect("read_dir").flatten() {
            chown_tree(&e.path(), uid);
        }
    }
}

fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc");
    status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().next()).and_then(|u| u.parse().ok()).expect("uid")
}

#[test]
fn the_daemon_runs_end_to_end_as_an_unprivileged_user() {
    let home = Home::new();
    let user = if running_as_root() {
        if Command::new("setpriv").arg("--version").output().is_err() {
            panic!("running as root without setpriv (util-linux): cannot drop to an unprivileged user");
        }
        NOBODY
    } else {
        // SAFETY: getuid cannot fail.
        unsafe { libc::getuid() }
    };
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    if running_as_root() {
        // The temp folder is root's (0700): open it for reading, give the home to nobody.
        std::fs::set_permissions(home.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        chown_tree(&home.root(), NOBODY);
    }
    let config = home.path().join("cosmosd.toml");
    std::fs::write(&config, "[runtime]\nkind = \"process\"\nbackend = \"sim\"\ngpus = []\n[watch]\nsettle = \"300ms\"\n").unwrap();
    let log = home.path().join("cosmosd.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = unprivileged(&assert_cmd::cargo::cargo_bin("cosmosd"))
        .env_remove("COSMOS_CONFIG")
        .env("COSMOS_LOG_LEVEL", "debug")
        .arg("--config")
        .arg(&config)
        .arg("--root")
        .arg(home.root())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start cosmosd");
    let d = Daemon { child, log };
    d.wait_log("watching the inbox", Duration::from_secs(20));
    assert_eq!(uid_of(d.child.id()), user, "cosmosd runs as the unprivileged user");
    assert_ne!(uid_of(d.child.id()), 0);

    // A job file delivered by that user (as rsync would), run to the end.
    let jobs = home.path().join("jobs.jsonl");
    std::fs::write(&jobs, home.jobs("plain", 2)).unwrap();
    let submit = unprivileged(&assert_cmd::cargo::cargo_bin("cosmos"))
        .env_remove("COSMOS_CONFIG")
        .arg("--root")
        .arg(home.root())
        .args(["submit", "--wait"])
        .arg(&jobs)
        .output()
        .expect("cosmos submit");
    assert!(
        submit.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&submit.stdout),
        String::from_utf8_lossy(&submit.stderr),
        d.log_text()
    );
    let folders = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(home.outbox())
            .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.join("manifest.json").is_file()).collect())
            .unwrap_or_default()
    };
    assert!(wait_until(Duration::from_secs(60), || folders().len() == 2), "{}", d.log_text());
    for f in folders() {
        for file in ["output.mp4", "manifest.json", "execution.log"] {
            assert_eq!(std::fs::metadata(f.join(file)).unwrap().uid(), user, "{} is the daemon user's", f.join(file).display());
        }
    }
    assert_eq!(std::fs::metadata(home.root().join("state/cosmos.db")).unwrap().uid(), user);
    let exit = d.stop();
    assert!(exit.success(), "{exit:?}");
}
