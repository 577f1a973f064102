//! Validate-and-insert throughput (issue: foundation). Prints figures; asserts nothing.
//!
//! `cargo bench --bench validate_insert` (release build). Env: `LINES` (default 100000),
//! `BIG_LINES` (default 1000000, 0 to skip the peak-memory pass), `ROUNDS` (default 5).
//!
//! Side by side on the same file: our validation alone, our validation plus insertion into
//! a fresh store (all runs in one transaction), and `jq -c . FILE > /dev/null` (which only
//! parses and prints JSON: no rules, no paths, no store).

use cosmos_workflow::spec::{parse_job_file, Rules};
use cosmos_workflow::store::{Ingest, Store};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A JSONL file of `lines` varied jobs naming the two videos in `dir`.
fn write_jobs(dir: &Path, name: &str, lines: usize) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("create jobs file"));
    for i in 0..lines {
        let w = (i % 10) as f64 / 10.0 + 0.05;
        let depth = if i % 3 == 0 { r#", "input_control": "depth.mp4""# } else { "" };
        writeln!(
            f,
            r#"{{"visual_input": "color.mp4", "prompt": "A futuristic cityscape at night, shot {i}, rain and neon", "name": "job-{i}", "seed": {seed}, "control_overrides": {{"vis": {{"control_weight": {w:.2}}}, "edge": {{"control_weight": 0.4}}, "depth": {{"control_weight": 0.2{depth}}}}}}}"#,
            seed = i % 1000,
        )
        .expect("write job");
    }
    f.flush().expect("flush");
    path
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// The process's peak resident memory so far (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn validate(path: &Path) -> u64 {
    let report = parse_job_file(path, &[], &Rules::default(), &mut |_| {});
    assert!(report.is_ok(), "bench file must be valid: {:?}", report.problems.first());
    report.runs
}

fn validate_and_insert(path: &Path, db_dir: &Path) -> u64 {
    let _ = std::fs::remove_dir_all(db_dir);
    std::fs::create_dir_all(db_dir).expect("db dir");
    let mut store = Store::open(&db_dir.join("cosmos.db")).expect("open store");
    match store.ingest(path, "bench", "bench", &[], &cosmos_workflow::spec::Rules::default()).expect("ingest") {
        Ingest::Accepted { submission, .. } => submission.runs,
        Ingest::Rejected { report } => panic!("rejected: {:?}", report.problems.first()),
    }
}

fn jq(path: &Path) -> Option<Duration> {
    let start = Instant::now();
    let status = Command::new("jq")
        .args(["-c", "."])
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    status.success().then(|| start.elapsed())
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let lines = env_usize("LINES", 100_000);
    let big = env_usize("BIG_LINES", 1_000_000);
    let rounds = env_usize("ROUNDS", 5).max(1);
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("color.mp4"), b"video").expect("video");
    std::fs::write(dir.path().join("depth.mp4"), b"depth").expect("video");

    // Peak memory first, while the high-water mark is still low.
    if big > 0 {
        let before = peak_rss_mib();
        let big_file = write_jobs(dir.path(), "big.jsonl", big);
        let size = std::fs::metadata(&big_file).map(|m| m.len()).unwrap_or(0);
        let after_write = peak_rss_mib();
        let t = Instant::now();
        let n = validate(&big_file);
        let secs = t.elapsed().as_secs_f64();
        let after_validate = peak_rss_mib();
        let t = Instant::now();
        let m = validate_and_insert(&big_file, &dir.path().join("db-big"));
        let insert_secs = t.elapsed().as_secs_f64();
        let after_insert = peak_rss_mib();
        println!("peak memory, {n} lines ({:.0} MiB file):", size as f64 / (1 << 20) as f64);
        println!("  process start {before:.1} MiB, after writing {after_write:.1} MiB");
        println!("  after validating:            {after_validate:.1} MiB peak ({secs:.2} s)");
        println!("  after validating+inserting:  {after_insert:.1} MiB peak ({m} runs, {insert_secs:.2} s)");
        let _ = std::fs::remove_file(&big_file);
        let _ = std::fs::remove_dir_all(dir.path().join("db-big"));
    }

    let file = write_jobs(dir.path(), "jobs.jsonl", lines);
    let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let mut ours_validate = Vec::new();
    let mut ours_insert = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        assert_eq!(validate(&file), lines as u64);
        ours_validate.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(validate_and_insert(&file, &dir.path().join("db")), lines as u64);
        ours_insert.push(t.elapsed());
        if let Some(d) = jq(&file) {
            theirs.push(d);
        }
    }
    let rate = |d: Duration| lines as f64 / d.as_secs_f64();
    println!("\n{lines}-line JSONL ({:.1} MiB), median of {rounds} rounds:", size as f64 / (1 << 20) as f64);
    println!("  {:<36} {:>10} {:>14}", "", "median", "lines/s");
    let v = median(ours_validate);
    println!("  {:<36} {:>8.1}ms {:>14.0}", "cosmos validate (parse+rules+paths)", v.as_secs_f64() * 1e3, rate(v));
    let i = median(ours_insert);
    println!("  {:<36} {:>8.1}ms {:>14.0}", "cosmos validate + insert (SQLite)", i.as_secs_f64() * 1e3, rate(i));
    if theirs.is_empty() {
        println!("  jq -c . FILE > /dev/null              (jq not installed)");
    } else {
        let j = median(theirs);
        println!("  {:<36} {:>8.1}ms {:>14.0}", "jq -c . FILE > /dev/null", j.as_secs_f64() * 1e3, rate(j));
        println!("  validate+insert vs jq: {:.2}x the speed", j.as_secs_f64() / i.as_secs_f64());
    }
    println!("  target: validate+insert >= 200000 lines/s");
}
