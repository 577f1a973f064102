//! Soak: random `kill -9` of the daemon and of its worker (and `docker kill` of the
//! container in docker mode) while job files arrive over time; then the invariants: every
//! accepted run completed exactly once, one folder per run matching its manifest, nothing
//! partial or stray in the outbox, receipts that agree with the store, an empty inbox, no
//! worker process or container left behind.
//!
//! The CI form is short; the long form is the same test with bigger numbers:
//!
//! ```sh
//! COSMOS_SOAK_RUNS=200 COSMOS_SOAK_DAEMON_KILLS=50 COSMOS_SOAK_WORKER_KILLS=20 \
//!   cargo nextest run --release --test soak --no-capture
//! COSMOS_SOAK_SEED=N ...           # repeat a run: the seed is printed at the start
//! ```
//!
//! The docker form (`docker kill` of the container for the worker kills) runs where an
//! engine answers (in CI: required), with the test image of `packaging/docker/test-image.sh`.

mod common;

use common::{drop_file, runs, wait_until, Daemon, Home};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// xorshift64*: a seeded, repeatable sequence (no dependency for it).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn worker_pids(daemon_pid: u32) -> Vec<i32> {
    // The worker is the daemon's child running cosmos_worker.
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|p| p.parse::<u32>().ok());
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(daemon_pid) && String::from_utf8_lossy(&cmd).contains("cosmos_worker") {
            out.push(pid);
        }
    }
    out
}

/// Every process running cosmos_worker whose command names `home` (this test's workers).
fn leftover_workers(home: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmd = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).replace('\0', " ");
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        if cmd.contains("cosmos_worker") && cwd.starts_with(home) {
            out.push(format!("{pid}: {cmd}"));
        }
    }
    out
}

fn verify_folder(dir: &Path) {
    let text = std::fs::read_to_string(dir.join("manifest.txt")).unwrap_or_else(|_| panic!("{} has no manifest", dir.display()));
    let mut listed = BTreeSet::new();
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        let (size, _mtime, sha, rel) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        let bytes = std::fs::read(dir.join(rel)).unwrap_or_else(|_| panic!("{} lists {rel}, which is missing", dir.display()));
        assert_eq!(bytes.len().to_string(), size, "{}/{rel}", dir.display());
        assert_eq!(cosmos_workflow::fsutil::hex(&Sha256::digest(&bytes)), sha, "{}/{rel}", dir.display());
        listed.insert(rel.to_string());
    }
    assert!(listed.contains("output.mp4"), "{}", dir.display());
}

#[test]
fn random_kills_while_files_arrive_lose_nothing_and_run_nothing_twice() {
    soak(false, 24, 5, 4);
}

#[test]
#[ignore = "needs a running dockerd (the test image is built on first use); cargo nextest run --run-ignored all runs it, as CI does"]
fn random_kills_of_the_daemon_and_its_container_lose_nothing_and_run_nothing_twice() {
    let engine = Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output().is_ok_and(|o| o.status.success());
    let image = Command::new("docker").args(["image", "inspect", "cosmos-test-worker:latest"]).output().is_ok_and(|o| o.status.success());
    if !(engine && image) {
        assert!(std::env::var("COSMOS_REQUIRE_DOCKER").as_deref() != Ok("1"), "COSMOS_REQUIRE_DOCKER=1 but no engine or no test image");
        println!("skipped: no Docker engine or no cosmos-test-worker image (packaging/docker/test-image.sh)");
        return;
    }
    soak(true, 12, 3, 2);
}

/// The soak, in the process runtime or (`docker`) the docker runtime; the numbers are the
/// CI form's, unless COSMOS_SOAK_RUNS, COSMOS_SOAK_DAEMON_KILLS, COSMOS_SOAK_WORKER_KILLS.
fn soak(docker: bool, runs_default: u64, daemon_kills_default: u64, worker_kills_default: u64) {
    let total_runs = env_num("COSMOS_SOAK_RUNS", runs_default) as usize;
    let daemon_kills = env_num("COSMOS_SOAK_DAEMON_KILLS", daemon_kills_default);
    let worker_kills = env_num("COSMOS_SOAK_WORKER_KILLS", worker_kills_default);
    let seed = env_num(
        "COSMOS_SOAK_SEED",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7),
    );
    let mode = if docker { "docker" } else { "process" };
    println!("soak ({mode}): {total_runs} runs, {daemon_kills} daemon kills, {worker_kills} worker kills, seed {seed} (COSMOS_SOAK_SEED={seed} repeats it)");
    let mut rng = Rng(seed | 1);
    let started = Instant::now();

    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let instance = format!("soak{}", std::process::id());
    // The kills are not the runs' fault: enough attempts that no run fails of them (a run
    // that kills its worker on its own fails after scheduler.max_attempts; tested elsewhere).
    let attempts = "[scheduler]\nmax_attempts = 1000\n";
    let extra = if docker {
        format!("kind = \"docker\"\nimage = \"cosmos-test-worker:latest\"\ngpus = []\ninstance = \"{instance}\"\nbackend_args = [\"--job-seconds\", \"0.3\"]\n{attempts}")
    } else {
        format!("backend_args = [\"--job-seconds\", \"0.3\"]\n{attempts}")
    };
    let start = || Daemon::start(&home, &extra, &[]);

    // The files: 1 to 4 lines each, every line distinct.
    let mut files: Vec<(String, String)> = Vec::new();
    let mut made = 0;
    while made < total_runs {
        let n = (1 + rng.below(4) as usize).min(total_runs - made);
        let tag = format!("f{}", files.len());
        files.push((format!("{tag}.jsonl"), home.jobs(&tag, n)));
        made += n;
    }

    let mut d = start();
    let (mut next_file, mut dk, mut wk) = (0, 0, 0);
    // Kills spread over the deliveries (and a little after): each step delivers a file or
    // kills, in proportion to what is left of each. A worker kill finds a worker only while
    // one runs; after the last file, kills go on until the queue is done, then stop.
    let mut after_last = 0;
    while next_file < files.len() || ((dk < daemon_kills || wk < worker_kills) && after_last < 40) {
        let left = (files.len() - next_file) as u64 + (daemon_kills - dk) + (worker_kills - wk);
        let pick = rng.below(left);
        if pick < (files.len() - next_file) as u64 {
            let (name, text) = &files[next_file];
            drop_file(&home, name, text);
            next_file += 1;
        } else if pick < (files.len() - next_file) as u64 + (daemon_kills - dk) {
            d.kill9();
            dk += 1;
            std::thread::sleep(Duration::from_millis(rng.below(500)));
            d = start();
        } else if docker {
            let _ = Command::new("docker").args(["kill", &format!("cosmos-{instance}")]).output();
            wk += 1;
        } else if let Some(pid) = worker_pids(d.child.id()).first() {
            // SAFETY: kill(2) on the worker's process group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            wk += 1;
        }
        if next_file == files.len() {
            after_last += 1;
        }
        std::thread::sleep(Duration::from_millis(100 + rng.below(500)));
    }

    // Everything taken in and run to its end.
    let settle = Duration::from_secs(120 + total_runs as u64 * 2);
    let done = wait_until(settle, || {
        let r = runs(&home);
        r.len() == total_runs && r.iter().all(|r| r["status"] == "completed")
    });
    let all = runs(&home);
    if !done {
        let bad: Vec<Value> =
            all.iter().filter(|r| r["status"] != "completed").map(|r| home.json(&["show", r["id"].as_str().unwrap(), "--json"])).collect();
        panic!("{} of {total_runs} runs; not completed: {bad:#?}\n{}", all.len(), d.log_text());
    }
    // Receipts are rewritten as runs end: the last ones may trail by a moment.
    let receipts_agree = || {
        let statuses: BTreeMap<String, String> =
            runs(&home).iter().map(|r| (r["id"].as_str().unwrap().into(), r["status"].as_str().unwrap().into())).collect();
        let receipts = home.receipts_with("accepted");
        receipts.len() == files.len()
            && receipts.iter().all(|rc: &Value| {
                rc["runs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|l| statuses.get(l["run_id"].as_str().unwrap()).map(String::as_str) == l["status"].as_str())
            })
    };
    assert!(wait_until(Duration::from_secs(20), receipts_agree), "receipts disagree with the store: {:#?}", home.receipts());
    let exit = d.stop();
    assert!(exit.success(), "{exit:?}");

    // Exactly once: one completion event per run, one folder per run, matching its manifest.
    let mut folders = 0;
    for r in &all {
        let id = r["id"].as_str().unwrap();
        let shown = home.json(&["show", id, "--json"]);
        let completions = shown["events"].as_array().map(|e| e.iter().filter(|e| e["kind"] == "completed").count()).unwrap_or(0);
        assert_eq!(completions, 1, "{id}: {shown}");
        verify_folder(&home.outbox().join(format!("run_{id}")));
        folders += 1;
    }
    // Nothing partial or stray where users sync.
    for e in std::fs::read_dir(home.outbox()).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        match name.as_str() {
            "receipts" | "rejected" | "status.json" => {}
            ".staging" => assert_eq!(std::fs::read_dir(e.path()).unwrap().count(), 0, "staging not empty"),
            n if n.starts_with("run_") || n.starts_with("batch_") => {}
            n => panic!("stray entry in the outbox: {n}"),
        }
    }
    let run_folders =
        std::fs::read_dir(home.outbox()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("run_")).count();
    assert_eq!(run_folders, folders, "one folder per run, no more");
    assert!(std::fs::read_dir(home.root().join("outbox/rejected")).map(|d| d.count() == 0).unwrap_or(true), "nothing rejected");
    // The inbox holds only the videos: every job file was taken, every claim finished.
    let left: Vec<String> = std::fs::read_dir(home.inbox())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "videos" && n != ".cosmos")
        .collect();
    assert!(left.is_empty(), "left in the inbox: {left:?}");
    assert!(common::inbox_claims(&home).is_empty(), "claims left: {:?}", common::inbox_claims(&home));
    // No worker left behind.
    std::thread::sleep(Duration::from_millis(500));
    if docker {
        let out = Command::new("docker").args(["ps", "-aq", "--filter", &format!("name=cosmos-{instance}")]).output().unwrap();
        let _ = Command::new("docker").args(["rm", "-f", &format!("cosmos-{instance}")]).output();
        // The container outlives the daemon by design (warm for the next one): one, no more.
        assert!(String::from_utf8_lossy(&out.stdout).lines().count() <= 1);
    } else {
        assert_eq!(leftover_workers(&home.root()), Vec::<String>::new(), "orphan workers");
    }
    println!(
        "soak ({mode}): {} runs in {} files, {dk} daemon kills, {wk} worker kills: completed {}, lost 0, run twice 0, {:.0} s",
        all.len(),
        files.len(),
        all.len(),
        started.elapsed().as_secs_f64()
    );
}
