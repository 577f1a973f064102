//! The `docker` runtime against a real dockerd, with the sim worker inside a container made
//! by `packaging/docker/test-image.sh` (no registry). Without an engine these tests skip
//! with a reason, unless COSMOS_REQUIRE_DOCKER=1 (CI), where a missing engine fails them.

mod common;

use common::{drop_file, runs, status, wait_until, Daemon, Home};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);
const IMAGE: &str = "cosmos-test-worker:latest";

/// Whether the Docker tests can run here; builds the test image when it is missing.
fn docker_ready() -> bool {
    let engine =
        Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output().map(|o| o.status.success()).unwrap_or(false);
    if !engine {
        if std::env::var("COSMOS_REQUIRE_DOCKER").as_deref() == Ok("1") {
            panic!("COSMOS_REQUIRE_DOCKER=1 but no Docker engine answers (is dockerd running?)");
        }
        println!("skipped: no Docker engine answers (set COSMOS_REQUIRE_DOCKER=1 to make this a failure)");
        return false;
    }
    let have = Command::new("docker").args(["image", "inspect", IMAGE]).output().map(|o| o.status.success()).unwrap_or(false);
    if !have {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/docker/test-image.sh");
        let ok = Command::new("bash").arg(script).arg(IMAGE).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "cannot build the test image with {script}");
    }
    true
}

/// A docker-runtime config with its own instance name, so tests do not share containers.
fn config(instance: &str, image: &str, extra: &str) -> String {
    format!("kind = \"docker\"\nimage = \"{image}\"\ngpus = []\ninstance = \"{instance}\"\nbackend_args = [\"--load-seconds\", \"1\", \"--job-seconds\", \"0.3\"]\n{extra}")
}

fn instance(tag: &str) -> String {
    format!("t{}-{tag}", std::process::id())
}

struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &format!("cosmos-{}", self.0)]).output();
    }
}

fn container_id(name: &str) -> Option<String> {
    let out = Command::new("docker").args(["inspect", "--format", "{{.Id}}", name]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn line(name: &str, extra: &str) -> String {
    format!("{{\"name\": \"{name}\", \"visual_input\": \"videos/city1/color.mp4\", \"prompt\": \"{name}\", \"control_overrides\": {{\"edge\": {{\"control_weight\": 0.5}}}}{extra}}}\n")
}

fn completed(home: &Home) -> usize {
    runs(home).iter().filter(|r| r["status"] == "completed").count()
}

#[test]
#[ignore = "needs a running dockerd (the test image is built on first use); cargo nextest run --run-ignored all runs it, as CI does"]
fn one_container_one_load_across_submissions_and_daemon_restarts() {
    if !docker_ready() {
        return;
    }
    let inst = instance("warm");
    let _cleanup = Cleanup(inst.clone());
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let cfg = config(&inst, IMAGE, "");
    let daemon = Daemon::start(&home, &cfg, &[]);
    drop_file(&home, "first.jsonl", &line("a", ""));
    assert!(wait_until(LONG, || completed(&home) == 1), "{}", daemon.log_text());
    let id = container_id(&format!("cosmos-{inst}")).expect("the worker container");
    std::thread::sleep(Duration::from_secs(5));
    drop_file(&home, "second.jsonl", &line("b", ""));
    assert!(wait_until(LONG, || completed(&home) == 2), "{}", daemon.log_text());
    assert_eq!(status(&home)["workers"][0]["loads"], 1, "one load for both submissions");
    assert_eq!(status(&home)["workers"][0]["container_id"], id.as_str());
    assert!(daemon.stop().success());
    assert_eq!(container_id(&format!("cosmos-{inst}")).as_deref(), Some(id.as_str()), "the container outlives the daemon");

    let daemon = Daemon::start(&home, &cfg, &[]);
    daemon.wait_log("re-attached to the running worker container", LONG);
    // A bundle folder naming its video by a relative path.
    let bundle = home.path().join("shoot");
    std::fs::create_dir_all(bundle.join("clips")).unwrap();
    std::fs::copy(home.path().join("videos/city1/color.mp4"), bundle.join("clips/color.mp4")).unwrap();
    std::fs::write(bundle.join("jobs.jsonl"), line("c", "").replace("videos/city1/color.mp4", "clips/color.mp4")).unwrap();
    std::fs::write(bundle.join("READY"), "").unwrap();
    std::fs::rename(&bundle, home.inbox().join("shoot")).unwrap();
    assert!(wait_until(LONG, || completed(&home) == 3), "{}", daemon.log_text());
    assert_eq!(status(&home)["workers"][0]["loads"], 0, "the model stayed loaded: no new load");
    assert_eq!(container_id(&format!("cosmos-{inst}")).as_deref(), Some(id.as_str()));
    // Runs as the daemon's user, without a network.
    let out = Command::new("docker").args(["inspect", "--format", "{{.Config.User}} {{.HostConfig.NetworkMode}}", &id]).output().unwrap();
    // SAFETY: getuid/getgid cannot fail.
    let me = format!("{}:{} none", unsafe { libc::getuid() }, unsafe { libc::getgid() });
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), me);
    // Confined: no capabilities, no privilege gain, a process limit; the inputs, inbox and
    // outbox read-only (only the work folder is writable).
    let out = Command::new("docker").args(["inspect", &id]).output().unwrap();
    let inspected: Value = serde_json::from_slice(&out.stdout).expect("docker inspect");
    let hc = &inspected[0]["HostConfig"];
    assert_eq!(hc["CapDrop"], serde_json::json!(["ALL"]), "{hc}");
    assert!(hc["SecurityOpt"].as_array().is_some_and(|o| o.iter().any(|x| x == "no-new-privileges")), "{hc}");
    assert_eq!(hc["PidsLimit"], 16384, "{hc}");
    assert_eq!(hc["NetworkMode"], "none");
    let mounts = inspected[0]["Mounts"].as_array().expect("mounts").clone();
    let rw = |dest: &str| mounts.iter().find(|m| m["Destination"] == dest).map(|m| m["RW"].as_bool() == Some(true));
    assert_eq!(rw("/cosmos/work"), Some(true));
    for dest in ["/cosmos/work/inputs", "/cosmos/inbox", "/cosmos/outbox"] {
        assert_eq!(rw(dest), Some(false), "{dest} read-only: {mounts:?}");
    }
    // And from inside: a write to an input is refused.
    let staged = std::fs::read_dir(home.root().join("state/work/inputs")).unwrap().flatten().next().expect("a staged input");
    let target = format!("/cosmos/work/inputs/{}", staged.file_name().to_string_lossy());
    let out = Command::new("docker").args(["exec", &id, "python3", "-c", &format!("open('{target}', 'ab').write(b'x')")]).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    assert!(!out.status.success(), "an input was writable from the container: {said}");
    assert!(said.contains("Read-only file system"), "{said}");
    // A bundle's relative paths reach the worker as container paths.
    let c = runs(&home).into_iter().find(|r| r["name"] == "c").unwrap();
    let spec: Value =
        serde_json::from_str(&std::fs::read_to_string(home.outbox().join(format!("run_{}/spec.json", c["id"].as_str().unwrap()))).unwrap())
            .unwrap();
    let seen = spec["input_video_path"].as_str().unwrap();
    assert!(seen.starts_with("/cosmos/work/inputs/") && seen.ends_with(".mp4"), "a staged input, by content: {spec}");
}

#[test]
#[ignore = "needs a running dockerd (the test image is built on first use); cargo nextest run --run-ignored all runs it, as CI does"]
fn a_killed_or_removed_container_is_recreated_and_nothing_is_lost() {
    if !docker_ready() {
        return;
    }
    let inst = instance("kill");
    let _cleanup = Cleanup(inst.clone());
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let daemon = Daemon::start(&home, &config(&inst, IMAGE, ""), &[]);
    drop_file(&home, "long.jsonl", &line("long", ", \"sim\": {\"seconds\": 5}"));
    assert!(wait_until(LONG, || runs(&home).first().is_some_and(|r| r["status"] == "running")), "{}", daemon.log_text());
    std::thread::sleep(Duration::from_millis(500));
    let first = container_id(&format!("cosmos-{inst}")).expect("container");
    assert!(Command::new("docker").args(["kill", &first]).output().unwrap().status.success());
    assert!(wait_until(LONG, || completed(&home) == 1), "{:?}\n{}", runs(&home), daemon.log_text());
    let run = &runs(&home)[0];
    assert_eq!(run["attempts"], 2, "retried after the container died: {run}");
    let second = container_id(&format!("cosmos-{inst}")).expect("a new container");
    assert_ne!(first, second);
    // Removed while idle: recreated for the next run.
    assert!(Command::new("docker").args(["rm", "-f", &second]).output().unwrap().status.success());
    std::thread::sleep(Duration::from_secs(1));
    drop_file(&home, "after.jsonl", &line("after", ""));
    assert!(wait_until(LONG, || completed(&home) == 2), "{:?}\n{}", runs(&home), daemon.log_text());
}

#[test]
#[ignore = "needs a running dockerd (the test image is built on first use); cargo nextest run --run-ignored all runs it, as CI does"]
fn a_missing_image_is_named_and_runs_wait_for_it() {
    if !docker_ready() {
        return;
    }
    let inst = instance("img");
    let _cleanup = Cleanup(inst.clone());
    let image = format!("cosmos-missing-{}:latest", std::process::id());
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let daemon = Daemon::start(&home, &config(&inst, &image, ""), &[]);
    drop_file(&home, "wait.jsonl", &line("w", ""));
    assert!(
        wait_until(LONG, || status(&home)["waiting"].as_str().is_some_and(|w| w.contains(&image) && w.contains("packaging/docker"))),
        "{}\n{}",
        status(&home),
        daemon.log_text()
    );
    // The worker is started eagerly, so the wait may be reported before the file is in.
    assert!(wait_until(LONG, || runs(&home).len() == 1), "{}", daemon.log_text());
    assert_eq!(runs(&home)[0]["status"], "queued");
    assert!(Command::new("docker").args(["tag", IMAGE, &image]).output().unwrap().status.success());
    assert!(wait_until(LONG, || completed(&home) == 1), "{}", daemon.log_text());
    let _ = Command::new("docker").args(["rm", "-f", &format!("cosmos-{inst}")]).output();
    let _ = Command::new("docker").args(["rmi", &image]).output();
}

#[test]
#[ignore = "needs a running dockerd (the test image is built on first use); cargo nextest run --run-ignored all runs it, as CI does"]
fn two_gpus_get_two_containers_and_runs_spread_over_both() {
    if !docker_ready() {
        return;
    }
    let inst = instance("two");
    let _c0 = Cleanup(format!("{inst}-0"));
    let _c1 = Cleanup(format!("{inst}-1"));
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let cfg = config(&inst, IMAGE, "").replace("gpus = []", "gpus = [0, 1]");
    let daemon = Daemon::start(&home, &cfg, &[("COSMOS_FAKE_GPUS", "2:81920")]);
    let text: String = (0..6).map(|i| line(&format!("s{i}"), ", \"sim\": {\"seconds\": 1}")).collect();
    drop_file(&home, "spread.jsonl", &text);
    assert!(wait_until(LONG, || completed(&home) == 6), "{:?}\n{}", runs(&home), daemon.log_text());
    let c0 = container_id(&format!("cosmos-{inst}-0")).expect("container for GPU 0");
    let c1 = container_id(&format!("cosmos-{inst}-1")).expect("container for GPU 1");
    assert_ne!(c0, c1);
    let mut used = std::collections::BTreeSet::new();
    for r in runs(&home) {
        let m: Value = serde_json::from_str(
            &std::fs::read_to_string(home.outbox().join(format!("run_{}/manifest.json", r["id"].as_str().unwrap()))).unwrap(),
        )
        .unwrap();
        used.insert(m["worker"]["container_id"].as_str().unwrap().to_string());
    }
    assert_eq!(used.len(), 2, "runs spread over both containers: {used:?}");
    let st = status(&home);
    assert_eq!(st["workers"].as_array().map(Vec::len), Some(2), "{st}");
    assert_eq!(st["workers"][1]["gpus"], serde_json::json!([1]));
}

#[test]
#[ignore = "needs a running dockerd (the test image is built on first use); cargo nextest run --run-ignored all runs it, as CI does"]
fn a_daemon_killed_mid_run_finds_the_run_going_on_or_finished_in_the_container() {
    if !docker_ready() {
        return;
    }
    let inst = instance("adopt");
    let _cleanup = Cleanup(inst.clone());
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let cfg = config(&inst, IMAGE, "");
    // Still running when the daemon comes back: followed, not restarted.
    let daemon = Daemon::start(&home, &cfg, &[]);
    drop_file(&home, "a.jsonl", &line("going", ", \"sim\": {\"seconds\": 4}"));
    // Past the model load: the worker has the run (it reported progress).
    assert!(wait_until(LONG, || status(&home)["current"]["step"].as_u64().unwrap_or(0) >= 1), "{}", daemon.log_text());
    daemon.kill9();
    let daemon = Daemon::start(&home, &cfg, &[]);
    assert!(wait_until(LONG, || completed(&home) == 1), "{}", daemon.log_text());
    assert!(daemon.log_text().contains("the worker is still running it: following it"), "{}", daemon.log_text());
    assert_eq!(runs(&home)[0]["attempts"], 1, "not run again");
    // Finished while no daemon was attached: published from result.json.
    drop_file(&home, "b.jsonl", &line("finished", ", \"sim\": {\"seconds\": 2}"));
    assert!(
        wait_until(LONG, || status(&home)["current"]["run_id"]
            .as_str()
            .is_some_and(|id| runs(&home).iter().any(|r| r["id"] == id && r["name"] == "finished"))
            && status(&home)["current"]["step"].as_u64().unwrap_or(0) >= 1),
        "{}",
        daemon.log_text()
    );
    daemon.kill9();
    std::thread::sleep(Duration::from_secs(4));
    let daemon = Daemon::start(&home, &cfg, &[]);
    assert!(wait_until(LONG, || completed(&home) == 2), "{}", daemon.log_text());
    let r = runs(&home).into_iter().find(|r| r["name"] == "finished").unwrap();
    assert_eq!(r["attempts"], 1, "published from result.json, not re-run: {r}");
    assert!(daemon.log_text().contains("finished while the daemon was down"), "{}", daemon.log_text());
}

#[test]
#[ignore = "needs a running dockerd (the test image is built on first use); cargo nextest run --run-ignored all runs it, as CI does"]
fn an_engine_that_is_away_holds_runs_and_is_found_again() {
    if !docker_ready() {
        return;
    }
    let inst = instance("away");
    let _cleanup = Cleanup(inst.clone());
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    // This daemon's engine socket does not exist yet: the engine is "down" for it alone.
    let socket = home.path().join("engine.sock");
    let host = format!("unix://{}", socket.display());
    let daemon = Daemon::start(&home, &config(&inst, IMAGE, ""), &[("DOCKER_HOST", host.as_str())]);
    drop_file(&home, "held.jsonl", &line("held", ""));
    assert!(
        wait_until(LONG, || status(&home)["waiting"].as_str().is_some_and(|w| w.contains("cannot reach the Docker engine"))),
        "{}\n{}",
        status(&home),
        daemon.log_text()
    );
    assert!(wait_until(LONG, || runs(&home).len() == 1));
    assert_eq!(runs(&home)[0]["status"], "queued");
    // The engine comes back.
    std::os::unix::fs::symlink("/var/run/docker.sock", &socket).unwrap();
    assert!(wait_until(Duration::from_secs(90), || completed(&home) == 1), "{}\n{}", status(&home), daemon.log_text());
}

#[test]
#[ignore = "needs a running dockerd (the test image is built on first use); cargo nextest run --run-ignored all runs it, as CI does"]
fn seed_commands_run_in_the_container_from_staged_inputs() {
    if !docker_ready() {
        return;
    }
    let inst = instance("seed");
    let _cleanup = Cleanup(inst.clone());
    let home = Home::new();
    let daemon = Daemon::start(&home, &config(&inst, IMAGE, ""), &[]);
    // The prompt's videos live outside every mounted folder: queueing stages them.
    let ps = common::grep_id(&home.ok(&["create", "prompt", "A city", "videos/city1"]), "ps_");
    let rs = common::grep_id(&home.ok(&["create", "run", &ps, "--weights", "0.3", "0.4", "0.2", "0"]), "rs_");
    home.ok(&["batch-inference", &rs, "--batch-name", "seeded"]);
    let (color, depth) = (
        std::fs::read(home.path().join("videos/city1/color.mp4")).unwrap(),
        std::fs::read(home.path().join("videos/city1/depth.mp4")).unwrap(),
    );
    std::fs::remove_dir_all(home.path().join("videos")).unwrap();
    assert!(wait_until(LONG, || completed(&home) == 1), "{:?}\n{}", runs(&home), daemon.log_text());
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(home.outbox().join(format!("run_{rs}/spec.json"))).unwrap()).unwrap();
    // The staged copies, named by their content, as the container sees them.
    let on_host = |seen: &Value| home.root().join("state/work").join(seen.as_str().unwrap().strip_prefix("/cosmos/work/").unwrap());
    assert!(spec["input_video_path"].as_str().unwrap().starts_with("/cosmos/work/inputs/"), "{spec}");
    assert_eq!(std::fs::read(on_host(&spec["input_video_path"])).unwrap(), color);
    assert_eq!(std::fs::read(on_host(&spec["depth"]["input_control"])).unwrap(), depth);
}

#[test]
#[ignore = "needs a running dockerd (the test image is built on first use); cargo nextest run --run-ignored all runs it, as CI does"]
fn a_load_under_way_when_the_daemon_died_is_kept() {
    if !docker_ready() {
        return;
    }
    let inst = instance("load");
    let _cleanup = Cleanup(inst.clone());
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let cfg = config(&inst, IMAGE, "").replace("\"--load-seconds\", \"1\"", "\"--load-seconds\", \"4\"");
    let daemon = Daemon::start(&home, &cfg, &[]);
    drop_file(&home, "l.jsonl", &line("l", ""));
    assert!(wait_until(LONG, || status(&home)["workers"][0]["state"] == "loading"), "{}", daemon.log_text());
    daemon.kill9();
    let daemon = Daemon::start(&home, &cfg, &[]);
    assert!(wait_until(LONG, || completed(&home) == 1), "{}", daemon.log_text());
    assert!(daemon.log_text().contains("state=loading"), "{}", daemon.log_text());
    assert_eq!(status(&home)["workers"][0]["loads"], 0, "the load the first daemon asked for was kept: {}", status(&home));
}

#[test]
#[ignore = "needs a running dockerd (the test image is built on first use); cargo nextest run --run-ignored all runs it, as CI does"]
fn nvidias_checkout_cache_env_and_mounts_reach_the_container_and_a_transfer1_run_completes() {
    if !docker_ready() {
        return;
    }
    let inst = instance("t1");
    let _cleanup = Cleanup(inst.clone());
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let (hf, ckpt, calls) = (home.path().join("hf"), home.path().join("ckpt"), home.path().join("calls"));
    for d in [&hf, &ckpt, &calls] {
        std::fs::create_dir_all(d).unwrap();
    }
    let fakes = common::nvidia_fakes();
    // NVIDIA's checkout is not in the image: it comes in by runtime.mounts, and
    // runtime.model_code names it where the container sees it.
    let extra = format!(
        "backend = \"transfer1\"\nmodel_code = \"/opt/nvidia\"\nhf_home = \"{}\"\ncheckpoints = \"{}\"\nguardrails = \"off\"\n\
         env = {{ FAKE_NVIDIA_CALLS = \"/calls/calls.jsonl\", NCCL_DEBUG = \"WARN\" }}\n\
         mounts = [\"{}:/opt/nvidia:ro\", \"{}:/calls\"]\n",
        hf.display(),
        ckpt.display(),
        fakes.display(),
        calls.display()
    );
    let daemon = Daemon::start(&home, &config(&inst, IMAGE, &extra), &[]);
    drop_file(&home, "t1.jsonl", &line("t", ""));
    assert!(wait_until(LONG, || completed(&home) == 1), "{}", daemon.log_text());
    let inspect = Command::new("docker").args(["inspect", &format!("cosmos-{inst}")]).output().unwrap();
    let info: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let c = &info[0];
    assert_eq!(c["Config"]["WorkingDir"], "/opt/nvidia", "NVIDIA's code finds its config relative to the working directory");
    let env: Vec<&str> = c["Config"]["Env"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for want in ["HF_HOME=/cosmos/hf", "HF_HUB_OFFLINE=1", "NCCL_DEBUG=WARN"] {
        assert!(env.contains(&want), "{want} not in {env:?}");
    }
    assert!(env.iter().any(|e| e.starts_with("PYTHONPATH=/opt/nvidia:/opt/cosmos/worker")), "{env:?}");
    let cmd: Vec<&str> = c["Config"]["Cmd"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(cmd.windows(2).any(|w| w == ["--checkpoint-dir", "/cosmos/checkpoints"]), "{cmd:?}");
    assert!(cmd.windows(2).any(|w| w == ["--guardrails", "off"]), "{cmd:?}");
    let binds: Vec<&str> = c["HostConfig"]["Binds"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    let canon = |p: &std::path::Path| std::fs::canonicalize(p).unwrap().display().to_string();
    assert!(binds.contains(&format!("{}:/cosmos/hf:ro", canon(&hf)).as_str()), "{binds:?}");
    assert!(binds.contains(&format!("{}:/opt/nvidia:ro", canon(&fakes)).as_str()), "{binds:?}");
    // Inside, NVIDIA's (fake) pipeline ran in the checkout with the mounted checkpoints.
    let init = &common::fake_calls(&calls.join("calls.jsonl"), "TransferPipeline.__init__")[0];
    assert_eq!((init["cwd"].as_str(), init["checkpoint_dir"].as_str()), (Some("/opt/nvidia"), Some("/cosmos/checkpoints")));
    drop(daemon);
}

#[test]
#[ignore = "needs a running dockerd (the test image is built on first use); cargo nextest run --run-ignored all runs it, as CI does"]
fn check_host_looks_inside_a_throwaway_container_as_the_worker_will() {
    if !docker_ready() {
        return;
    }
    let home = Home::new();
    let config = home.path().join("check.toml");
    let run = |image: &str| {
        std::fs::write(
            &config,
            format!("[runtime]\nkind = \"docker\"\nbackend = \"sim\"\ngpus = []\nimage = \"{image}\"\n[outbox]\nmin_free = \"1MiB\"\n"),
        )
        .unwrap();
        let out = home.cosmosd().arg("--config").arg(&config).arg("--root").arg(home.root()).arg("check-host").output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, text) = run(IMAGE);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("[ok  ] Docker engine:") && text.contains("[ok  ] NVIDIA's code in the image: OK python"), "{text}");
    let (code, text) = run("cosmos-no-such-image:latest");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("[MISS] image: cosmos-no-such-image:latest is not on this host"), "{text}");
    // No throwaway container is left behind.
    let left = Command::new("docker").args(["ps", "-aq", "--filter", "label=cosmos.check-host=1"]).output().unwrap();
    assert!(left.stdout.is_empty(), "{}", String::from_utf8_lossy(&left.stdout));
}
