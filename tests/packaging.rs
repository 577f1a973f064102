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

/// Runs `packaging/slurm/cosmosd.sbatch --check` as node `node`, outside Slurm, with the
/// settings under `dir`; returns (exit code, stdout, stderr).
fn slurm_check(dir: &Path, node: &str, template: &Path) -> (Option<i32>, String, String) {
    let out = Command::new("bash")
        .arg(repo("packaging/slurm/cosmosd.sbatch"))
        .arg("--check")
        .env_remove("COSMOS_CONFIG")
        .env("SLURMD_NODENAME", node)
        .env("COSMOS_DATABASE_FILE", dir.join("database-url"))
        .env("COSMOS_SHARED", dir.join("shared"))
        .env("COSMOS_STATE_BASE", dir.join(node))
        .env("COSMOS_TEMPLATE", template)
        .env("COSMOSD", assert_cmd::cargo::cargo_bin("cosmosd"))
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_slurm_recipe_writes_each_node_its_own_valid_configuration() {
    use cosmos_workflow::config::Config;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // A password with URL-encoded and shell-special characters survives as it is.
    let url = "postgres://cosmos:p%40ss$w0rd&x@db.internal:5432/cosmos";
    std::fs::write(dir.path().join("database-url"), format!("{url}\n")).unwrap();
    let template = repo("packaging/slurm/cosmosd.toml");
    let mut outboxes = Vec::new();
    for node in ["gpu-07", "gpu-08"] {
        let (code, stdout, stderr) = slurm_check(dir.path(), node, &template);
        assert_eq!(code, Some(0), "{stdout}{stderr}");
        let path = Path::new(stdout.trim());
        assert_eq!(path, dir.path().join(node).join("cosmosd.toml"), "{stdout}");
        assert_eq!(std::fs::metadata(path).unwrap().permissions().mode() & 0o077, 0, "the password file is the user's only");
        let config = Config::from_toml(&std::fs::read_to_string(path).unwrap(), path).unwrap();
        assert_eq!(config.cluster.host_id, node);
        assert_eq!(config.cluster.database, url);
        assert_eq!(config.cluster.shared_dir, dir.path().join("shared"));
        assert_eq!(config.paths.inbox, dir.path().join("shared/inbox"), "one inbox for the pool");
        assert_eq!(config.paths.state, dir.path().join(node).join("state"), "node-local state");
        assert!(config.paths.outbox.is_dir());
        // SIGTERM comes 120 s before the end: a run must be finished or handed back by then.
        assert!(config.daemon.stop_grace.0 < std::time::Duration::from_secs(120), "{:?}", config.daemon.stop_grace);
        outboxes.push(config.paths.outbox);
    }
    assert_ne!(outboxes[0], outboxes[1], "each node its own outbox");
    let script = std::fs::read_to_string(repo("packaging/slurm/cosmosd.sbatch")).unwrap();
    assert!(script.lines().any(|l| l == "#SBATCH --signal=TERM@120"), "the clean hand-back signal");

    // A template that brings its own [cluster] is refused, naming it; so is a missing URL file.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[runtime]\nbackend = \"sim\"\n[cluster]\nhost_id = \"x\"\n").unwrap();
    let (code, _, stderr) = slurm_check(dir.path(), "gpu-09", &bad);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("bad.toml") && stderr.contains("leave [paths] and [cluster] out"), "{stderr}");
    std::fs::remove_file(dir.path().join("database-url")).unwrap();
    let (code, _, stderr) = slurm_check(dir.path(), "gpu-09", &template);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot read") && stderr.contains("database-url"), "{stderr}");
}

/// The manifest as JSON, through PyYAML (the parser kubectl's own YAML follows for these
/// constructs); `None` where PyYAML is missing and not required.
fn kubernetes_documents() -> Option<Vec<serde_json::Value>> {
    let code = "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let out = Command::new("python3").args(["-c", code]).arg(repo("packaging/kubernetes/cosmosd-daemonset.yaml")).output();
    match out {
        Ok(o) if o.status.success() => Some(serde_json::from_slice(&o.stdout).expect("PyYAML's JSON")),
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("No module named 'yaml'") => {
            if std::env::var("COSMOS_REQUIRE_PYYAML").as_deref() == Ok("1") {
                panic!("COSMOS_REQUIRE_PYYAML=1 but python3 has no yaml module: pip install pyyaml");
            }
            eprintln!("skipped: python3 has no yaml module (pip install pyyaml)");
            None
        }
        Ok(o) => panic!("the manifest does not parse: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("cannot run python3: {e}"),
    }
}

#[test]
#[ignore = "needs PyYAML; cargo nextest run --run-ignored all runs it, as CI does"]
fn the_kubernetes_daemonset_parses_and_its_init_container_renders_a_valid_configuration() {
    use cosmos_workflow::config::Config;
    let Some(docs) = kubernetes_documents() else { return };
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["ConfigMap", "DaemonSet", "PersistentVolumeClaim"]);
    let (config_map, daemon_set, claim) = (&docs[0], &docs[1], &docs[2]);
    let pod = &daemon_set["spec"]["template"]["spec"];
    assert_eq!(pod["runtimeClassName"], "nvidia");
    let main = &pod["containers"][0];
    let init = &pod["initContainers"][0];
    let env = |c: &serde_json::Value, name: &str| c["env"].as_array().and_then(|e| e.iter().find(|v| v["name"] == name).cloned());
    for c in [main, init] {
        assert_eq!(env(c, "NODE_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName", "host_id from the downward API");
    }
    // The password from a Secret, as PGPASSWORD: no file, no ConfigMap holds it.
    assert_eq!(env(main, "PGPASSWORD").unwrap()["valueFrom"]["secretKeyRef"]["name"], "cosmosd-database");
    assert!(env(init, "PGPASSWORD").is_none(), "the init container needs no password");
    assert_eq!(claim["spec"]["accessModes"], serde_json::json!(["ReadWriteMany"]), "the shared folder is mounted by every node");
    let volume = |name: &str| pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == name).cloned().unwrap();
    assert_eq!(volume("shared")["persistentVolumeClaim"]["claimName"], claim["metadata"]["name"]);
    assert!(volume("state")["hostPath"]["path"].is_string(), "the SQLite state on the node's disk");
    assert_eq!(volume("template")["configMap"]["name"], config_map["metadata"]["name"]);

    // Run the init container's script, its folders moved under a temp dir, for one node.
    let dir = tempfile::tempdir().unwrap();
    let (template_dir, etc, shared) = (dir.path().join("template"), dir.path().join("etc"), dir.path().join("shared"));
    for d in [&template_dir, &etc, &shared] {
        std::fs::create_dir_all(d).unwrap();
    }
    let template = config_map["data"]["config.toml"].as_str().unwrap().replace("/shared", shared.to_str().unwrap());
    std::fs::write(template_dir.join("config.toml"), &template).unwrap();
    assert_eq!(init["command"][0], "/bin/sh");
    let script = init["command"][2]
        .as_str()
        .unwrap()
        .replace("/etc/cosmos-template", template_dir.to_str().unwrap())
        .replace("/etc/cosmos", etc.to_str().unwrap())
        .replace("/shared", shared.to_str().unwrap());
    let bin = assert_cmd::cargo::cargo_bin("cosmosd");
    let path = format!("{}:{}", bin.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("sh")
        .args(["-c", &script])
        .env_remove("COSMOS_CONFIG")
        .env("PATH", &path)
        .env("NODE_NAME", "gpu-node-3")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let rendered = etc.join("config.toml");
    let config = Config::from_toml(&std::fs::read_to_string(&rendered).unwrap(), &rendered).unwrap();
    assert_eq!(config.cluster.host_id, "gpu-node-3");
    let database = cosmos_workflow::config::parse_database_url(&config.cluster.database).unwrap();
    assert!(database.get_password().is_none(), "no password in the configuration: {}", config.cluster.database);
    assert_eq!(config.paths.outbox, shared.join("outbox/gpu-node-3"), "each node its own outbox");
    assert!(config.paths.outbox.is_dir());
    // The kubelet's SIGKILL must not cut the daemon's drain short.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(std::time::Duration::from_secs(grace) > config.daemon.stop_grace.0, "{grace} s vs {:?}", config.daemon.stop_grace);
    // As many GPUs asked of the device plugin as the configuration has workers.
    let cosmos_workflow::config::Gpus::Each(gpus) = &config.runtime.gpus else { panic!("runtime.gpus lists GPUs") };
    assert_eq!(main["resources"]["limits"]["nvidia.com/gpu"].as_u64(), Some(gpus.len() as u64));
    assert_eq!(main["command"], serde_json::json!(["cosmosd", "--config", "/etc/cosmos/config.toml"]));
}
