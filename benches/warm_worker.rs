//! The warm worker against the ways the Python system ran the same work (issue: warm
//! worker). Prints figures; asserts nothing. `cargo bench --bench warm_worker`.
//! Env: LOAD (3 s), JOB (0.5 s), FILES (6), PER_FILE (10), ARRIVAL (2 s), SINGLE (runs for
//! the fresh-worker-per-run case; default FILES*PER_FILE), MIXED (100).
//!
//! All three cases use the real sim worker (`python3 -m cosmos_worker --backend sim`):
//! - cosmosd: the daemon, files dropped into its inbox ARRIVAL apart;
//! - per batch (the Python system): a fresh worker per file, loading each time, batches run
//!   one after another as they arrive;
//! - per run: a fresh worker per run.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn worker_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("worker")
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_daemon(root: &Path, load: f64, job: f64) -> (Daemon, PathBuf) {
    std::fs::create_dir_all(root.join("inbox/videos")).expect("inbox");
    // A real video: intake probes it (issue 13's preflight).
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/videos/city1/color.mp4");
    std::fs::copy(example, root.join("inbox/videos/color.mp4")).expect("video");
    let config = root.join("cosmosd.toml");
    std::fs::write(
        &config,
        format!(
            "[runtime]\nkind = \"process\"\nbackend = \"sim\"\ngpus = []\nworker_path = \"{}\"\nbackend_args = [\"--load-seconds\", \"{load}\", \"--job-seconds\", \"{job}\"]\n[outbox]\nmin_free = \"1MiB\"\n",
            worker_dir().display()
        ),
    )
    .expect("config");
    let log = root.join("cosmosd.log");
    let f = std::fs::File::create(&log).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_cosmosd"))
        .arg("--config")
        .arg(&config)
        .arg("--root")
        .arg(root)
        .env("COSMOS_LOG_LEVEL", "debug")
        .stdout(f.try_clone().expect("log"))
        .stderr(f)
        .spawn()
        .expect("start cosmosd");
    let d = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("watching the inbox") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    (d, log)
}

fn job_line(tag: &str, i: usize, controls: &str) -> String {
    format!("{{\"visual_input\": \"videos/color.mp4\", \"prompt\": \"{tag} {i}\", \"control_overrides\": {controls}}}\n")
}

const EDGE: &str = "{\"edge\": {\"control_weight\": 0.5}}";

fn drop_file(root: &Path, name: &str, text: &str) {
    let tmp = root.join(format!("{name}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, root.join("inbox").join(name)).expect("drop");
}

fn status(root: &Path) -> Value {
    std::fs::read_to_string(root.join("outbox/status.json")).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Value::Null)
}

fn wait_completed(root: &Path, n: u64, limit: Duration) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if status(root)["queue"]["completed"].as_u64() == Some(n) {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// A fresh sim worker driven over its protocol, as the Python system started one per batch.
struct Worker {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Worker {
    fn start(load: f64, job: f64) -> Worker {
        let mut child = Command::new("python3")
            .args(["-m", "cosmos_worker", "--backend", "sim", "--load-seconds", &load.to_string(), "--job-seconds", &job.to_string()])
            .env("PYTHONPATH", worker_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 worker");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut w = Worker { child, out };
        w.until("hello");
        w
    }

    fn send(&mut self, v: Value) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{v}").expect("send");
        stdin.flush().expect("flush");
    }

    fn until(&mut self, kind: &str) {
        let mut line = String::new();
        loop {
            line.clear();
            if self.out.read_line(&mut line).expect("read") == 0 {
                panic!("worker exited");
            }
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if v["event"] == kind {
                return;
            }
        }
    }

    fn run_batch(&mut self, tmp: &Path, video: &Path, n: usize) {
        self.send(json!({"op": "load", "controls": ["edge"], "options": {}}));
        self.until("loaded");
        for i in 0..n {
            let spec = json!({"prompt": "p", "input_video_path": video, "edge": {"control_weight": 0.5}});
            self.send(
                json!({"op": "run", "run_id": format!("rs_{i}"), "attempt": 1, "spec": spec, "output_dir": tmp.join(format!("o{i}"))}),
            );
            self.until("done");
        }
    }

    fn stop(mut self) {
        self.send(json!({"op": "shutdown"}));
        let _ = self.child.wait();
    }
}

/// Batches arriving `arrival` apart, each run by a fresh worker once the previous is done.
fn fresh_worker_per_batch(tmp: &Path, load: f64, job: f64, batches: usize, per: usize, arrival: f64) -> Duration {
    std::fs::create_dir_all(tmp).expect("dir");
    let video = tmp.join("color.mp4");
    std::fs::write(&video, b"video bytes").expect("video");
    let start = Instant::now();
    for b in 0..batches {
        let arrives = Duration::from_secs_f64(arrival * b as f64);
        if let Some(wait) = arrives.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let mut w = Worker::start(load, job);
        w.run_batch(tmp, &video, per);
        w.stop();
    }
    start.elapsed()
}

fn main() {
    let load = env_f64("LOAD", 3.0);
    let job = env_f64("JOB", 0.5);
    let files = env_f64("FILES", 6.0) as usize;
    let per = env_f64("PER_FILE", 10.0) as usize;
    let arrival = env_f64("ARRIVAL", 2.0);
    let total = files * per;
    let single = env_f64("SINGLE", total as f64) as usize;
    let mixed = env_f64("MIXED", 100.0) as usize;
    let tmp = tempfile::tempdir().expect("temp");
    let ideal = load + total as f64 * job;

    // 1. cosmosd.
    let root = tmp.path().join("cosmosd");
    let (daemon, log) = start_daemon(&root, load, job);
    let start = Instant::now();
    for f in 0..files {
        let arrives = Duration::from_secs_f64(arrival * f as f64);
        if let Some(wait) = arrives.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let text: String = (0..per).map(|i| job_line(&format!("file{f}"), i, EDGE)).collect();
        drop_file(&root, &format!("file{f}.jsonl"), &text);
    }
    let end = wait_completed(&root, total as u64, Duration::from_secs_f64(ideal * 4.0 + 60.0));
    let cosmosd = end.map(|e| e.duration_since(start));
    let loads = status(&root)["workers"][0]["loads"].as_u64().unwrap_or(0);
    drop(daemon);
    let mut gaps: Vec<f64> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split("gap_us=").nth(1)?.split_whitespace().next()?.parse::<f64>().ok())
        .map(|us| us / 1000.0)
        .collect();
    gaps.sort_by(|a, b| a.total_cmp(b));

    // 2. A fresh worker per batch, as the Python system ran it.
    let per_batch = fresh_worker_per_batch(&tmp.path().join("per-batch"), load, job, files, per, arrival);
    // 3. A fresh worker per run.
    let per_run_dir = tmp.path().join("per-run");
    std::fs::create_dir_all(&per_run_dir).expect("dir");
    let per_run = fresh_worker_per_batch(&per_run_dir, load, job, single, 1, 0.0);

    println!(
        "{total} runs in {files} files {arrival} s apart; sim load {load} s, job {job} s; ideal = one load + {total} jobs = {ideal:.1} s"
    );
    println!("  {:<44} {:>9} {:>12}", "", "wall (s)", "x ideal");
    match cosmosd {
        Some(d) => {
            println!("  {:<44} {:>9.2} {:>12.3}   target <= 1.02", "cosmosd (warm worker)", d.as_secs_f64(), d.as_secs_f64() / ideal)
        }
        None => println!("  cosmosd did not finish"),
    }
    println!(
        "  {:<44} {:>9.2} {:>12.3}",
        "fresh worker per batch (the Python system)",
        per_batch.as_secs_f64(),
        per_batch.as_secs_f64() / ideal
    );
    let scaled = per_run.as_secs_f64() * total as f64 / single.max(1) as f64;
    println!(
        "  {:<44} {:>9.2} {:>12.3}{}",
        "fresh worker per run",
        scaled,
        scaled / ideal,
        if single < total { format!("   ({single} runs measured, scaled)") } else { String::new() }
    );
    println!("  cosmosd model loads: {loads}");
    if !gaps.is_empty() {
        let pct = |p: f64| gaps[(((gaps.len() - 1) as f64) * p).round() as usize];
        println!(
            "  dispatch gap (done -> next run sent), {} gaps: median {:.3} ms, p99 {:.3} ms, max {:.3} ms   target: median < 2 ms",
            gaps.len(),
            pct(0.5),
            pct(0.99),
            gaps[gaps.len() - 1]
        );
    }

    // 4. Control-set affinity: 4 sets interleaved.
    let root = tmp.path().join("mixed");
    let (daemon, _log) = start_daemon(&root, 0.05, 0.0);
    let sets = [
        "{\"edge\": {\"control_weight\": 0.5}}",
        "{\"vis\": {\"control_weight\": 0.5}}",
        "{\"depth\": {\"control_weight\": 0.5}}",
        "{\"seg\": {\"control_weight\": 0.5}}",
    ];
    let text: String = (0..mixed).map(|i| job_line("mixed", i, sets[i % 4])).collect();
    drop_file(&root, "mixed.jsonl", &text);
    wait_completed(&root, mixed as u64, Duration::from_secs(300));
    let loads = status(&root)["workers"][0]["loads"].as_u64().unwrap_or(0);
    drop(daemon);
    let fifo = (0..mixed).filter(|i| *i == 0 || sets[i % 4] != sets[(i - 1) % 4]).count();
    println!("\n{mixed} runs, 4 control sets interleaved (edge, vis, depth, seg, edge, ...):");
    println!("  model loads: cosmosd {loads} (target <= 4 + forced switches), first-in-first-out order {fifo}");
}
