//! The docker runtime (issue: persistent container). Prints figures; asserts nothing.
//! `cargo bench --bench docker_runtime` with dockerd running; the test image is built with
//! packaging/docker/test-image.sh when missing. Env: LOAD (3 s), JOB (0.5 s), RUNS (20).
//!
//! 1. From submission to the first run running on the model (its first progress report):
//!    with a cold container (none exists: create, start Python, load) and a warm one (a
//!    restarted daemon re-attaches to the container that holds the model).
//! 2. Throughput of two sim workers (two containers, fake GPUs 0 and 1) against one.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "cosmos-test-worker:latest";

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child; SIGTERM lets it detach from the container.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn start(root: &Path, instance: &str, gpus: &str, load: f64, job: f64, fake: Option<&str>) -> Daemon {
    std::fs::create_dir_all(root.join("inbox/videos")).expect("inbox");
    // A real video: intake probes it (issue 13's preflight).
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/videos/city1/color.mp4");
    std::fs::copy(example, root.join("inbox/videos/color.mp4")).expect("video");
    let config = root.join("cosmosd.toml");
    std::fs::write(
        &config,
        format!(
            "[runtime]\nkind = \"docker\"\nbackend = \"sim\"\nimage = \"{IMAGE}\"\ninstance = \"{instance}\"\ngpus = {gpus}\nworker_path = \"{}\"\nbackend_args = [\"--load-seconds\", \"{load}\", \"--job-seconds\", \"{job}\"]\n[outbox]\nmin_free = \"1MiB\"\n[watch]\nsettle = \"100ms\"\n",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("worker").display()
        ),
    )
    .expect("config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cosmosd"));
    cmd.arg("--config").arg(&config).arg("--root").arg(root).env("COSMOS_LOG_LEVEL", "warn").stdout(Stdio::null()).stderr(Stdio::null());
    if let Some(f) = fake {
        cmd.env("COSMOS_FAKE_GPUS", f);
    }
    Daemon(cmd.spawn().expect("cosmosd"))
}

fn status(root: &Path) -> Value {
    std::fs::read_to_string(root.join("outbox/status.json")).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Value::Null)
}

fn drop_jobs(root: &Path, name: &str, n: usize) {
    let text: String = (0..n)
        .map(|i| format!("{{\"visual_input\": \"videos/color.mp4\", \"prompt\": \"{name} {i}\", \"control_overrides\": {{\"edge\": {{\"control_weight\": 0.5}}}}}}\n"))
        .collect();
    let tmp = root.join(format!("{name}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, root.join("inbox").join(format!("{name}.jsonl"))).expect("drop");
}

fn wait(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

fn remove(names: &[String]) {
    for n in names {
        let _ = Command::new("docker").args(["rm", "-f", n]).output();
    }
}

fn main() {
    if !Command::new("docker").arg("info").output().map(|o| o.status.success()).unwrap_or(false) {
        println!("docker_runtime: no Docker engine answers; start dockerd first");
        return;
    }
    if !Command::new("docker").args(["image", "inspect", IMAGE]).output().map(|o| o.status.success()).unwrap_or(false) {
        let script: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/docker/test-image.sh");
        let _ = Command::new("bash").arg(script).status();
    }
    let load = env_f64("LOAD", 3.0);
    let job = env_f64("JOB", 0.5);
    let runs = env_f64("RUNS", 20.0) as usize;
    let tmp = tempfile::tempdir().expect("temp");
    let inst = format!("bench{}", std::process::id());
    remove(&[format!("cosmos-{inst}")]);

    // 1. Cold: no container. The file is in the inbox when the daemon starts (found by the
    //    start-up scan: watch.settle is 100 ms here).
    let root = tmp.path().join("cold");
    std::fs::create_dir_all(root.join("inbox")).expect("inbox");
    drop_jobs(&root, "cold", 1);
    let t = Instant::now();
    let daemon = start(&root, &inst, "[]", load, job, None);
    let cold = wait(Duration::from_secs(120), || status(&root)["current"]["step"].as_u64().unwrap_or(0) >= 1).map(|e| e.duration_since(t));
    wait(Duration::from_secs(60), || status(&root)["queue"]["completed"] == 1);
    drop(daemon);
    // Warm: the daemon restarts, re-attaches to the container holding the model.
    let daemon = start(&root, &inst, "[]", load, job, None);
    wait(Duration::from_secs(30), || status(&root)["workers"][0]["state"] == "idle");
    let t = Instant::now();
    drop_jobs(&root, "warm", 1);
    let warm = wait(Duration::from_secs(120), || status(&root)["current"]["step"].as_u64().unwrap_or(0) >= 1).map(|e| e.duration_since(t));
    wait(Duration::from_secs(60), || status(&root)["queue"]["completed"] == 2);
    drop(daemon);
    remove(&[format!("cosmos-{inst}")]);
    let first_progress = job / 10.0;
    println!("submission -> first run on the model (first progress report, {first_progress:.2} s into the run); sim load {load} s:");
    let show = |d: Option<Duration>| d.map_or("did not start".to_string(), |d| format!("{:.2} s", d.as_secs_f64()));
    println!("  cold container (create, start, load): {}", show(cold));
    println!("  warm container (re-attached, model kept): {}", show(warm));

    // 2. Throughput: one worker vs two (two containers on fake GPUs 0 and 1).
    let mut results = Vec::new();
    for (label, gpus, names) in [
        ("one worker", "[0]", vec![format!("cosmos-{inst}1")]),
        ("two workers", "[0, 1]", vec![format!("cosmos-{inst}2-0"), format!("cosmos-{inst}2-1")]),
    ] {
        let root = tmp.path().join(label.replace(' ', "-"));
        let instance = if names.len() == 1 { format!("{inst}1") } else { format!("{inst}2") };
        let daemon = start(&root, &instance, gpus, load, job, Some("2"));
        wait(Duration::from_secs(60), || status(&root)["workers"].as_array().is_some_and(|w| w.iter().all(|w| w["state"] == "idle")));
        let t = Instant::now();
        drop_jobs(&root, "many", runs);
        let done = wait(Duration::from_secs(600), || status(&root)["queue"]["completed"].as_u64() == Some(runs as u64))
            .map(|e| e.duration_since(t));
        drop(daemon);
        remove(&names);
        results.push((label, done));
    }
    println!("\n{runs} runs of {job} s (sim load {load} s per worker), submission to last completion:");
    let base = results[0].1.map(|d| d.as_secs_f64());
    for (label, d) in &results {
        match (d, base) {
            (Some(d), Some(b)) => println!(
                "  {label:<12} {:>7.2} s   {:.0} runs/min   x{:.2} of one worker",
                d.as_secs_f64(),
                runs as f64 * 60.0 / d.as_secs_f64(),
                b / d.as_secs_f64()
            ),
            _ => println!("  {label:<12} did not finish"),
        }
    }
}
