//! Shared use of one installation, as the package sets it up: the daemon's user owns the
//! folders, setgid to a group (`cosmos` in the package) whose members all use the CLI. Two
//! users are made with setpriv, so these tests need root (CI runs them as root); elsewhere
//! they say so and skip.

mod common;

use common::{wait_until, Daemon, Home};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The group of the installation, the daemon's user, and a second operator whose own
/// primary group is not the installation's (only a supplementary membership).
const GROUP: u32 = 64100;
const DAEMON_USER: u32 = 64101;
const OPERATOR: u32 = 64102;

fn root_with_setpriv() -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: making two users needs root (CI runs these tests as root)");
        return false;
    }
    assert!(Command::new("setpriv").arg("--version").output().is_ok(), "running as root without setpriv (util-linux)");
    true
}

/// `program` as uid:gid with exactly the supplementary `groups`.
fn as_user(uid: u32, gid: u32, groups: &[u32], program: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", &uid.to_string(), "--regid", &gid.to_string()]);
    if groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        c.arg("--groups").arg(groups.iter().map(u32::to_string).collect::<Vec<_>>().join(","));
    }
    c.arg("--").arg(program);
    c.env_remove("COSMOS_CONFIG");
    c
}

fn cosmos_bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("cosmos")
}

/// What the package's tmpfiles.d makes: inbox, outbox and state owned by the daemon's user,
/// group-writable and setgid to the group. The fixture videos go into the inbox, the daemon's.
fn shared_home() -> Home {
    let home = Home::new();
    // The temp folder is root's (0700): others must reach the home and the job files in it.
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    home.videos_in_inbox();
    for dir in [home.root(), home.inbox(), home.outbox(), home.root().join("state")] {
        std::fs::create_dir_all(&dir).unwrap();
    }
    walk(&home.root(), &mut |p, m| {
        std::os::unix::fs::chown(p, Some(DAEMON_USER), Some(GROUP)).unwrap();
        if m.is_dir() {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o2775)).unwrap();
        }
    });
    home
}

/// Calls `f` on `dir` and everything under it (symlinks not followed).
fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &std::fs::Metadata)) {
    let Ok(meta) = std::fs::symlink_metadata(dir) else { return };
    f(dir, &meta);
    if meta.is_dir() {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            walk(&e.path(), f);
        }
    }
}

fn start_daemon(home: &Home) -> Daemon {
    let config = home.path().join("cosmosd.toml");
    std::fs::write(&config, "[runtime]\nkind = \"process\"\nbackend = \"sim\"\ngpus = []\n[watch]\nsettle = \"300ms\"\nrescan = \"2s\"\n")
        .unwrap();
    let log = home.path().join("cosmosd.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = as_user(DAEMON_USER, GROUP, &[], &assert_cmd::cargo::cargo_bin("cosmosd"))
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
    d
}

fn ok(out: Output, what: &str, d: &Daemon) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{}{}\n--- cosmosd:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.log_text()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_folders(home: &Home) -> usize {
    std::fs::read_dir(home.outbox()).map(|d| d.flatten().filter(|e| e.path().join("manifest.json").is_file()).count()).unwrap_or(0)
}

#[test]
fn a_second_operator_in_the_group_lists_and_submits_against_the_daemons_state() {
    if !root_with_setpriv() {
        return;
    }
    let home = shared_home();
    let d = start_daemon(&home);
    let operator = || {
        let mut c = as_user(OPERATOR, OPERATOR, &[GROUP], &cosmos_bin());
        c.current_dir(home.path()).arg("--root").arg(home.root());
        c
    };

    // Reading the store writes its -shm: "attempt to write a readonly database" without group write.
    let listed = ok(operator().args(["list", "runs"]).output().unwrap(), "the operator's cosmos list runs", &d);
    assert!(!listed.contains("readonly"), "{listed}");

    // The operator's private (0600) job file, delivered into the daemon's inbox and run to the end.
    let jobs = home.path().join("operator-jobs.jsonl");
    std::fs::write(&jobs, home.jobs("operator", 2)).unwrap();
    std::os::unix::fs::chown(&jobs, Some(OPERATOR), Some(OPERATOR)).unwrap();
    std::fs::set_permissions(&jobs, std::fs::Permissions::from_mode(0o600)).unwrap();
    let submitted = ok(operator().args(["submit", "--wait"]).arg(&jobs).output().unwrap(), "the operator's cosmos submit --wait", &d);
    assert!(submitted.contains("accepted, 2 run(s) queued"), "{submitted}");
    assert!(wait_until(Duration::from_secs(60), || run_folders(&home) == 2), "{}", d.log_text());

    // The operator changed the store: the daemon still writes it, and so does the operator.
    ok(operator().arg("pause").output().unwrap(), "the operator's cosmos pause", &d);
    ok(operator().arg("resume").output().unwrap(), "the operator's cosmos resume", &d);
    let runs: serde_json::Value =
        serde_json::from_str(&ok(operator().args(["list", "runs", "--json"]).output().unwrap(), "cosmos list runs --json", &d)).unwrap();
    assert_eq!(runs.as_array().map(|r| r.iter().filter(|r| r["status"] == "completed").count()), Some(2), "{runs}");

    let state = home.root().join("state");
    for name in ["cosmos.db", "cosmos.db-wal", "cosmos.db-shm"] {
        let m = std::fs::metadata(state.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.mode() & 0o060, 0o060, "{name} is group-writable: {:o}", m.mode());
        assert_eq!(m.gid(), GROUP, "{name} belongs to the group");
    }
    // Every folder either of them made is the group's, setgid and group-writable.
    walk(&home.root(), &mut |p, m| {
        assert_eq!(m.gid(), GROUP, "{} belongs to the group", p.display());
        if m.is_dir() {
            assert_eq!(m.mode() & 0o2070, 0o2070, "{} is setgid and group-writable: {:o}", p.display(), m.mode());
        }
    });
    let exit = d.stop();
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn root_running_cosmos_or_cosmosd_acts_as_the_state_owner_and_leaves_no_root_owned_file() {
    if !root_with_setpriv() {
        return;
    }
    let home = shared_home();
    let d = start_daemon(&home);
    let root_cosmos = || {
        let mut c = Command::new(cosmos_bin());
        c.current_dir(home.path()).env_remove("COSMOS_CONFIG").arg("--root").arg(home.root());
        c
    };
    let jobs = home.path().join("root-jobs.jsonl");
    std::fs::write(&jobs, home.jobs("root", 2)).unwrap();

    let out = root_cosmos().env("COSMOS_LOG_LEVEL", "debug").args(["submit", "--wait"]).arg(&jobs).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out, "root's cosmos submit --wait", &d);
    assert!(stderr.contains("acting as the owner of the state folder") && stderr.contains(&DAEMON_USER.to_string()), "{stderr}");
    for args in [&["list", "runs"][..], &["pause"], &["resume"], &["status"]] {
        ok(root_cosmos().args(args).output().unwrap(), &format!("root's cosmos {args:?}"), &d);
    }
    assert!(wait_until(Duration::from_secs(60), || run_folders(&home) == 2), "{}", d.log_text());
    // Asked without debug, it says nothing about it.
    let quiet = root_cosmos().env_remove("COSMOS_LOG_LEVEL").args(["list", "runs"]).output().unwrap();
    assert!(quiet.stderr.is_empty(), "{}", String::from_utf8_lossy(&quiet.stderr));

    // So does cosmosd's host check as root (it makes the work folder and runs the worker's
    // import check in it), which the package's postinst tells operators to run.
    let check = Command::new(assert_cmd::cargo::cargo_bin("cosmosd"))
        .current_dir(home.path())
        .env_remove("COSMOS_CONFIG")
        .env("COSMOS_LOG_LEVEL", "debug")
        .arg("--config")
        .arg(home.path().join("cosmosd.toml"))
        .arg("--root")
        .arg(home.root())
        .arg("check-host")
        .output()
        .unwrap();
    let check_err = String::from_utf8_lossy(&check.stderr).into_owned();
    assert!(check_err.contains("acting as the owner of the state folder"), "{check_err}");
    ok(check, "root's cosmosd check-host", &d);

    // The generators stay root: they touch no state and write where root asked (a build tree).
    let private = tempfile::tempdir().unwrap();
    ok(root_cosmos().arg("man").arg("--out").arg(private.path().join("man")).output().unwrap(), "root's cosmos man --out", &d);
    assert!(private.path().join("man/cosmos.1").is_file());

    let mut roots = Vec::new();
    walk(&home.root(), &mut |p, m| {
        if m.uid() == 0 || m.gid() == 0 {
            roots.push(p.display().to_string());
        }
    });
    assert!(roots.is_empty(), "root's cosmos left root-owned files: {roots:?}");

    // The scheduler goes on after root's visit: a file the daemon user drops runs too.
    std::fs::write(home.path().join("after.jsonl"), home.jobs("after", 1)).unwrap();
    let after = as_user(DAEMON_USER, GROUP, &[], &cosmos_bin())
        .current_dir(home.path())
        .arg("--root")
        .arg(home.root())
        .args(["submit", "--wait"])
        .arg(home.path().join("after.jsonl"))
        .output()
        .unwrap();
    ok(after, "the daemon user's cosmos submit --wait after root's", &d);
    let exit = d.stop();
    assert!(exit.success(), "{exit:?}");
}
