//! Ingest throughput on the daemon's own path (issue: architecture). Prints figures; asserts
//! nothing. `cargo bench --bench validate_insert`. Env: `LINES` (100000), `ROUNDS` (5),
//! `BIG_RUNS` (1000000; 0 skips the large-store figures).
//!
//! Side by side on one file of `LINES` jobs naming four videos (wall time, and the CPU time
//! each used: on a machine others load too, wall time follows the CPU time one can get):
//! - `jq -c . FILE > /dev/null` (parses and prints JSON: no rules, no paths, no store);
//! - our validation alone;
//! - the daemon's intake (`Intake::take`, what cosmosd's loop calls for a file renamed into
//!   the inbox): claim, hash, validate, stage the inputs (once per distinct video), insert
//!   every run in one transaction, receipt, archive.
//!
//! Then a running cosmosd (queue paused) takes in `BIG_RUNS` runs as files of `LINES` lines
//! dropped into its inbox; once idle: its resident memory and how long its status.json
//! writes take (from its debug log); and `cosmos list runs --status queued|failed --limit 50`
//! on that store (the real binary; queued is the common status, failed the rare one).

use cosmos_workflow::config::Config;
use cosmos_workflow::intake::{Fate, Intake};
use cosmos_workflow::spec::{parse_job_file_at, Rules};
use cosmos_workflow::store::Store;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A JSONL file of `lines` varied jobs naming four videos in `videos/`.
fn write_jobs(path: &Path, lines: usize, tag: &str) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create jobs file"));
    for i in 0..lines {
        let w = (i % 10) as f64 / 10.0 + 0.05;
        let depth = if i % 3 == 0 { r#", "input_control": "videos/depth.mp4""# } else { "" };
        writeln!(
            f,
            r#"{{"visual_input": "videos/color{v}.mp4", "prompt": "{tag}: a futuristic cityscape at night, shot {i}, rain and neon", "name": "job-{i}", "seed": {seed}, "control_overrides": {{"vis": {{"control_weight": {w:.2}}}, "edge": {{"control_weight": 0.4}}, "depth": {{"control_weight": 0.2{depth}}}}}}}"#,
            v = i % 3,
            seed = i % 1000,
        )
        .expect("write job");
    }
    f.flush().expect("flush");
}

/// The user + system CPU time of this process (`RUSAGE_SELF`: every thread) or of its waited
/// children (`RUSAGE_CHILDREN`).
fn cpu_time(who: i32) -> Duration {
    // SAFETY: getrusage writes one rusage into the zeroed struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn config_for(root: &Path) -> Config {
    let mut c = Config::default();
    c.paths.inbox = root.join("inbox");
    c.paths.outbox = root.join("outbox");
    c.paths.state = root.join("state");
    c.runtime.backend = cosmos_workflow::config::Backend::Sim;
    c
}

/// A fresh root with the four videos in its inbox.
fn fresh_root(dir: &Path, name: &str) -> PathBuf {
    let root = dir.join(name);
    let _ = std::fs::remove_dir_all(&root);
    let videos = root.join("inbox/videos");
    std::fs::create_dir_all(&videos).expect("videos");
    // Real videos (intake probes them), 1 MiB each and each its own content: the example
    // video with a trailing `free` box of a different filler.
    let example = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/videos/city1/color.mp4")).expect("example video");
    for (i, v) in ["color0.mp4", "color1.mp4", "color2.mp4", "depth.mp4"].iter().enumerate() {
        let mut bytes = example.clone();
        let pad = (1usize << 20) - example.len();
        bytes.extend_from_slice(&(pad as u32).to_be_bytes());
        bytes.extend_from_slice(b"free");
        bytes.resize(1 << 20, i as u8);
        std::fs::write(videos.join(v), bytes).expect("video");
    }
    root
}

/// The daemon's intake of `jobs` dropped into `root`'s inbox as `name`: how long, the CPU
/// time it used, how many runs.
fn intake(root: &Path, jobs: &Path, name: &str) -> (Duration, Duration, u64) {
    let config = config_for(root);
    std::fs::create_dir_all(&config.paths.state).expect("state");
    let store = Store::open(&config.paths.state.join("cosmos.db")).expect("store");
    let mut intake = Intake::new(&config, store).expect("intake");
    std::fs::copy(jobs, root.join(format!(".{name}.tmp"))).expect("copy");
    std::fs::rename(root.join(format!(".{name}.tmp")), config.paths.inbox.join(name)).expect("drop");
    let (t, cpu) = (Instant::now(), cpu_time(libc::RUSAGE_SELF));
    let taken = intake.take(name).expect("take").expect("taken");
    let (d, cpu) = (t.elapsed(), cpu_time(libc::RUSAGE_SELF).saturating_sub(cpu));
    match taken.fate {
        Fate::Accepted { runs } => (d, cpu, runs),
        other => panic!("not accepted: {other:?}"),
    }
}

/// `jq -c . FILE > /dev/null`: how long, and the CPU time it used.
fn jq(path: &Path) -> Option<(Duration, Duration)> {
    let (start, cpu) = (Instant::now(), cpu_time(libc::RUSAGE_CHILDREN));
    let status = Command::new("jq").args(["-c", "."]).arg(path).stdout(Stdio::null()).stderr(Stdio::null()).status().ok()?;
    status.success().then(|| (start.elapsed(), cpu_time(libc::RUSAGE_CHILDREN).saturating_sub(cpu)))
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
}

fn main() {
    let lines = env_usize("LINES", 100_000);
    let rounds = env_usize("ROUNDS", 5).max(1);
    let big = env_usize("BIG_RUNS", 1_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let jobs = dir.path().join("jobs.jsonl");
    write_jobs(&jobs, lines, "bench");
    let size = std::fs::metadata(&jobs).map(|m| m.len()).unwrap_or(0);

    let (mut ours, mut validate, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ours_cpu, mut theirs_cpu) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if let Some((d, cpu)) = jq(&jobs) {
            theirs.push(d);
            theirs_cpu.push(cpu);
        }
        let root = fresh_root(dir.path(), "v");
        let t = Instant::now();
        let report = parse_job_file_at(&jobs, &root.join("inbox"), &[], &Rules::default(), &mut |_| {});
        assert!(report.is_ok(), "{:?}", report.problems.first());
        validate.push(t.elapsed());
        let root = fresh_root(dir.path(), &format!("r{round}"));
        // Relative paths resolve against the inbox: the videos are there.
        let (d, cpu, runs) = intake(&root, &jobs, "jobs.jsonl");
        assert_eq!(runs, lines as u64);
        ours.push(d);
        ours_cpu.push(cpu);
        let staged = std::fs::read_dir(root.join("state/work/inputs")).map(|d| d.count()).unwrap_or(0);
        if round == 0 {
            println!("staged inputs for {lines} runs naming 4 videos: {staged} files under state/work/inputs");
        }
        let _ = std::fs::remove_dir_all(&root);
    }
    let rate = |d: Duration| lines as f64 / d.as_secs_f64();
    println!("\n{lines}-line JSONL ({:.1} MiB), median of {rounds} rounds:", size as f64 / (1 << 20) as f64);
    println!("  {:<52} {:>10} {:>12} {:>10}", "", "median", "lines/s", "CPU time");
    let v = median(validate);
    println!("  {:<52} {:>8.1}ms {:>12.0}", "validation alone (parse, rules, paths)", v.as_secs_f64() * 1e3, rate(v));
    let (o, oc) = (median(ours), median(ours_cpu));
    let label = "cosmosd intake (claim, validate, stage, record)";
    println!("  {:<52} {:>8.1}ms {:>12.0} {:>8.1}ms", label, o.as_secs_f64() * 1e3, rate(o), oc.as_secs_f64() * 1e3);
    match theirs.is_empty() {
        true => println!("  jq -c . FILE > /dev/null                              (jq not installed)"),
        false => {
            let (j, jc) = (median(theirs), median(theirs_cpu));
            println!(
                "  {:<52} {:>8.1}ms {:>12.0} {:>8.1}ms",
                "jq -c . FILE > /dev/null",
                j.as_secs_f64() * 1e3,
                rate(j),
                jc.as_secs_f64() * 1e3
            );
            println!("  cosmosd intake vs jq: {:.2}x jq's speed (target: faster than jq)", j.as_secs_f64() / o.as_secs_f64());
            println!(
                "  CPU time: intake {:.2}x jq's (two threads: wall time can beat jq while CPU time does not, on an idle machine)",
                oc.as_secs_f64() / jc.as_secs_f64()
            );
        }
    }

    if big == 0 {
        return;
    }
    // A running cosmosd (the queue paused) takes in BIG_RUNS runs as files of `lines` runs
    // dropped into its inbox; then, idle: its resident memory, how long its status.json
    // writes take (from its debug log), and `cosmos list` on that store.
    let root = fresh_root(dir.path(), "big");
    let cosmos = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_cosmos")).arg("--root").arg(&root).args(args).output().expect("cosmos");
    cosmos(&["pause"]);
    let config = root.join("cosmosd.toml");
    std::fs::write(&config, "[runtime]\nkind = \"process\"\nbackend = \"sim\"\ngpus = []\n[daemon]\nstatus_interval = \"200ms\"\n[outbox]\nmin_free = \"1MiB\"\n").expect("config");
    let log = root.join("cosmosd.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cosmosd"))
        .arg("--config")
        .arg(&config)
        .arg("--root")
        .arg(&root)
        .env("COSMOS_LOG_LEVEL", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("cosmosd");
    let files = big.div_ceil(lines);
    let t = Instant::now();
    for i in 0..files {
        let name = format!("part{i}.jsonl");
        let part = root.join(format!(".{name}.tmp"));
        write_jobs(&part, lines, &format!("part{i}"));
        std::fs::rename(&part, root.join("inbox").join(&name)).expect("drop");
    }
    let want = (files * lines) as u64;
    let queued = || -> u64 {
        let text = std::fs::read_to_string(root.join("outbox/status.json")).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        v["queue"]["queued"].as_u64().unwrap_or(0)
    };
    while queued() < want && t.elapsed() < Duration::from_secs(600) {
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("\n{} runs taken in by cosmosd as {files} files of {lines} lines in {:.1} s", queued(), t.elapsed().as_secs_f64());
    // Idle: nothing to take in, the queue paused.
    std::thread::sleep(Duration::from_secs(5));
    let rss = rss_mib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let list = |args: &[&str]| {
        let t = Instant::now();
        let out = cosmos(args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        t.elapsed()
    };
    for status in ["queued", "failed"] {
        let times: Vec<Duration> = (0..5).map(|_| list(&["list", "runs", "--status", status, "--limit", "50"])).collect();
        let label = format!("cosmos list runs --status {status} --limit 50");
        println!("  {:<52} {:>8.1}ms   target < 50 ms", label, median(times).as_secs_f64() * 1e3);
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    // The writes once idle: the last 20 (those during intake wait on the intake's commits).
    let mut writes: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("status.json written"))
        .filter_map(|l| l.split("took_us=").nth(1)?.split_whitespace().next()?.parse::<f64>().ok())
        .collect();
    let idle_writes = writes.split_off(writes.len().saturating_sub(20));
    let mut writes = idle_writes;
    writes.sort_by(f64::total_cmp);
    match rss {
        Some(r) => println!("  {:<52} {:>8.1}MiB  target < 50 MiB", "cosmosd resident memory, idle after that intake", r),
        None => println!("  cosmosd resident memory: cannot read /proc"),
    }
    match writes.get(writes.len() / 2) {
        Some(us) => {
            println!("  {:<52} {:>8.2}ms   target < 10 ms ({} writes)", "status.json write, median when idle", us / 1e3, writes.len())
        }
        None => println!("  status.json write: no timing in the log"),
    }
}
