//! Drop-to-queued latency of cosmosd's intake (issue: intake). Prints figures; asserts
//! nothing. `cargo bench --bench intake_latency`. Env: `DROPS` (200), `BURST` (1000).
//!
//! A file is renamed into the inbox (as rsync and `cosmos submit` deliver); it counts as
//! queued when its receipt appears (the receipt is written after the store commit), seen by
//! an inotify watch on the receipts folder. Measured for inotify mode, for poll mode, and
//! for an inbox on a FUSE mount (bindfs, as NFS or sshfs look to the daemon: poll mode
//! chosen by `watch.mode = "auto"`, files renamed in behind the mount as another host would,
//! the state folder on the local disk), side by side with each mode's target.

use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A bindfs mount, unmounted when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount").args(["-u", "-z"]).arg(&self.0).status();
    }
}

/// Mounts `backing` at `root/inbox` with bindfs; `None` (and why) without bindfs or FUSE.
fn fuse_inbox(root: &Path, backing: &Path) -> Option<Mount> {
    std::fs::create_dir_all(root.join("inbox")).ok()?;
    std::fs::create_dir_all(backing).ok()?;
    match Command::new("bindfs").arg(backing).arg(root.join("inbox")).status() {
        Ok(s) if s.success() => Some(Mount(root.join("inbox"))),
        other => {
            println!("  FUSE inbox: skipped, bindfs could not mount ({other:?}); install bindfs and fuse3");
            None
        }
    }
}

fn start(root: &Path, watch: &str) -> Daemon {
    std::fs::create_dir_all(root.join("inbox/videos")).expect("inbox");
    // A real video: intake probes it (issue 13's preflight).
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/videos/city1/color.mp4");
    std::fs::copy(example, root.join("inbox/videos/color.mp4")).expect("video");
    let config = root.join("cosmosd.toml");
    std::fs::write(&config, format!("[watch]\n{watch}\nrescan = \"60s\"\n[runtime]\nkind = \"process\"\nbackend = \"sim\"\ngpus = []\n"))
        .expect("config");
    let child = Command::new(env!("CARGO_BIN_EXE_cosmosd"))
        .arg("--config")
        .arg(&config)
        .arg("--root")
        .arg(root)
        .env("COSMOS_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cosmosd");
    let d = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !root.join("outbox/receipts").is_dir() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    d
}

fn job(i: usize, tag: &str) -> String {
    format!("{{\"visual_input\": \"videos/color.mp4\", \"prompt\": \"{tag} {i}\", \"control_overrides\": {{\"edge\": {{\"control_weight\": 0.5}}}}}}\n")
}

/// Receipt stem -> when its receipt appeared.
fn watch_receipts(dir: &Path) -> (notify::RecommendedWatcher, mpsc::Receiver<(String, Instant)>) {
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let now = Instant::now();
        if let Ok(ev) = ev {
            if matches!(ev.kind, EventKind::Modify(_) | EventKind::Create(_)) {
                for p in ev.paths {
                    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    if !name.starts_with('.') && name.ends_with(".json") {
                        let stem = name.split('.').next().unwrap_or_default().to_string();
                        let _ = tx.send((stem, now));
                    }
                }
            }
        }
    })
    .expect("watcher");
    watcher.watch(dir, RecursiveMode::NonRecursive).expect("watch receipts");
    (watcher, rx)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Drops `n` files into `drop_dir` (the inbox, or the folder behind a mounted inbox) one
/// every `gap`, returns each one's drop-to-receipt latency.
fn latencies(root: &Path, drop_dir: &Path, n: usize, gap: Duration, tag: &str) -> Vec<Duration> {
    let (_w, rx) = watch_receipts(&root.join("outbox/receipts"));
    // Beside the drop folder, on its filesystem, so that the drop is a rename.
    let staging = drop_dir.with_extension("staging");
    std::fs::create_dir_all(&staging).expect("staging");
    let mut dropped: HashMap<String, Instant> = HashMap::new();
    let mut seen: HashMap<String, Instant> = HashMap::new();
    for i in 0..n {
        let stem = format!("{tag}{i:04}");
        let src = staging.join(format!("{stem}.jsonl"));
        std::fs::write(&src, job(i, tag)).expect("write");
        let t = Instant::now();
        std::fs::rename(&src, drop_dir.join(format!("{stem}.jsonl"))).expect("drop");
        dropped.insert(stem, t);
        let next = t + gap;
        while let Ok((stem, at)) = rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
            seen.entry(stem).or_insert(at);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < n && Instant::now() < deadline {
        if let Ok((stem, at)) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.entry(stem).or_insert(at);
        }
    }
    let mut out: Vec<Duration> = dropped.iter().filter_map(|(s, t)| seen.get(s).map(|at| at.saturating_duration_since(*t))).collect();
    out.sort();
    if out.len() < n {
        println!("  ({} of {n} drops got no receipt within 30 s)", n - out.len());
    }
    out
}

fn report(label: &str, lat: &[Duration], target: &str) {
    if lat.is_empty() {
        println!("  {label:<44} no data");
        return;
    }
    println!(
        "  {label:<44} median {:>7.1} ms   p99 {:>7.1} ms   max {:>7.1} ms   target {target}",
        percentile(lat, 0.5).as_secs_f64() * 1e3,
        percentile(lat, 0.99).as_secs_f64() * 1e3,
        lat[lat.len() - 1].as_secs_f64() * 1e3,
    );
}

fn burst(root: &Path, n: usize) -> Option<Duration> {
    let staging = root.join("burst");
    std::fs::create_dir_all(&staging).ok()?;
    for i in 0..n {
        std::fs::write(staging.join(format!("burst{i:05}.jsonl")), job(i, "burst")).ok()?;
    }
    let receipts = root.join("outbox/receipts");
    let before = std::fs::read_dir(&receipts).ok()?.count();
    let t = Instant::now();
    for i in 0..n {
        let name = format!("burst{i:05}.jsonl");
        std::fs::rename(staging.join(&name), root.join("inbox").join(&name)).ok()?;
    }
    let deadline = t + Duration::from_secs(300);
    loop {
        let count = std::fs::read_dir(&receipts)
            .ok()?
            .filter(|e| e.as_ref().map(|e| !e.file_name().to_string_lossy().starts_with('.')).unwrap_or(false))
            .count();
        if count >= before + n {
            return Some(t.elapsed());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn main() {
    let drops = env_usize("DROPS", 200);
    let burst_n = env_usize("BURST", 1000);
    let tmp = tempfile::tempdir().expect("temp dir");

    println!("drop-to-queued latency, {drops} drops each (renamed into the inbox, one every 100 ms):");
    let root: PathBuf = tmp.path().join("inotify");
    let daemon = start(&root, "mode = \"inotify\"\nsettle = \"2s\"");
    let lat = latencies(&root, &root.join("inbox"), drops, Duration::from_millis(100), "ino");
    report("inotify (settle 2s: not needed for renames)", &lat, "< 50 ms");
    let burst_time = burst(&root, burst_n);
    drop(daemon);

    let root: PathBuf = tmp.path().join("poll");
    let daemon = start(&root, "mode = \"poll\"\npoll_interval = \"500ms\"\nsettle = \"500ms\"");
    let lat = latencies(&root, &root.join("inbox"), drops, Duration::from_millis(100), "poll");
    report("poll (poll_interval 500ms, settle 500ms)", &lat, "p99 <= 1100 ms (interval + settle + 100 ms)");
    drop(daemon);

    let root: PathBuf = tmp.path().join("fuse");
    let share = tmp.path().join("share");
    if let Some(mount) = fuse_inbox(&root, &share) {
        let daemon = start(&root, "mode = \"auto\"\npoll_interval = \"500ms\"\nsettle = \"500ms\"");
        let lat = latencies(&root, &share, drops, Duration::from_millis(100), "fuse");
        report("FUSE inbox, auto -> poll (500ms, 500ms)", &lat, "p99 <= 1100 ms (interval + settle + 100 ms)");
        drop(daemon);
        drop(mount);
    }

    match burst_time {
        Some(t) => println!(
            "\nburst: {burst_n} files renamed into the inbox at once, all accepted in {:.2} s ({:.0} files/s), inotify mode",
            t.as_secs_f64(),
            burst_n as f64 / t.as_secs_f64()
        ),
        None => println!("\nburst: {burst_n} files were not all accepted within 300 s"),
    }
}
