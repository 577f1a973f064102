//! What the package ships, checked from the checkout: the conffile is a configuration the
//! binaries accept, the unit stays hardened with the GPUs and the Docker socket reachable,
//! and the generators work without any configuration (a packaging host has none).

use std::path::Path;
use std::process::Command;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn the_packaged_config_is_valid_and_keeps_the_design_defaults() {
    let out = Command::new(assert_cmd::cargo::cargo_bin("cosmosd"))
        .env_remove("COSMOS_CONFIG")
        .arg("--config")
        .arg(repo("packaging/deb/config.toml"))
        .arg("check-config")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for line in ["state = \"/var/lib/cosmos\"", "inbox = \"/srv/cosmos/inbox\"", "kind = \"docker\"", "worker_path = \"\""] {
        assert!(text.lines().any(|l| l == line), "{line} missing from the effective configuration:\n{text}");
    }
}

#[test]
fn the_unit_is_hardened_and_still_reaches_the_gpus() {
    let unit = std::fs::read_to_string(repo("systemd/cosmosd.service")).unwrap();
    for needed in
        ["Type=notify", "WatchdogSec=", "DevicePolicy=closed", "DeviceAllow=char-nvidia-frontend rw", "DeviceAllow=char-nvidia-uvm rw"]
    {
        assert!(unit.lines().any(|l| l.starts_with(needed)), "the unit lost {needed:?}");
    }
    // Either would cut the daemon off from /dev/nvidia* or from the docker socket's group.
    for forbidden in ["PrivateDevices=yes", "PrivateUsers=yes", "SupplementaryGroups="] {
        assert!(!unit.lines().any(|l| l.starts_with(forbidden)), "the unit has {forbidden:?}");
    }
    let dropin = std::fs::read_to_string(repo("systemd/cosmosd.service.d/docker.conf")).unwrap();
    assert!(dropin.lines().any(|l| l == "SupplementaryGroups=docker"), "{dropin}");

    let Ok(out) = Command::new("systemd-analyze").args(["security", "--offline=yes"]).arg(repo("systemd/cosmosd.service")).output() else {
        eprintln!("skipped the exposure figure: no systemd-analyze here (CI checks the installed unit)");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for cosmosd.service: ").map(|(_, r)| r.split_whitespace().next().unwrap_or("")))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure figure in:\n{text}{}", String::from_utf8_lossy(&out.stderr)));
    assert!(exposure <= 3.0, "exposure {exposure} is above 3.0:\n{text}");
}

#[test]
fn completions_and_man_pages_need_no_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "this is not toml").unwrap();
    let cosmos = || {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("cosmos"));
        c.env("COSMOS_CONFIG", &broken);
        c
    };
    let bash = cosmos().args(["completions", "bash", "--program", "cosmosd"]).output().unwrap();
    assert!(bash.status.success(), "{}", String::from_utf8_lossy(&bash.stderr));
    assert!(String::from_utf8_lossy(&bash.stdout).contains("complete -F _cosmosd"));
    let man = cosmos().arg("man").arg("--out").arg(dir.path().join("man")).output().unwrap();
    assert!(man.status.success(), "{}", String::from_utf8_lossy(&man.stderr));
    assert!(dir.path().join("man/cosmos-list.1").is_file() && dir.path().join("man/cosmosd.1").is_file());
    // The hidden command stays out of the help a user reads.
    let help = cosmos().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("completions") && !help.lines().any(|l| l.trim_start().starts_with("man ")), "{help}");
    // And a real command still reports the broken file, naming it.
    let list = cosmos().args(["list", "runs"]).output().unwrap();
    assert_eq!(list.status.code(), Some(2), "{}", String::from_utf8_lossy(&list.stderr));
    assert!(String::from_utf8_lossy(&list.stderr).contains("broken.toml"));
}
