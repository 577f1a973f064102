//! Several hosts on one PostgreSQL queue (issue 14): throughput of N cosmosd hosts against
//! one, and the latency of a claim. Prints figures; asserts nothing.
//! `cargo bench --bench cluster`. Env: `HOSTS` (3), `RUNS` (24 per round), `ROUNDS` (3),
//! `JOB_SECONDS` (1.0: the sim worker's fixed run time), `CLAIMS` (600).
//!
//! Throughput: each round starts 1, then N, cosmosd processes (sim backend, one worker
//! each, a fresh database), drops RUNS runs of one control set spread over their inboxes
//! and measures, by the database's clock, from the first claim to the last completion
//! (`cosmos_events`): runs per second, the median over rounds, and the ratio N hosts / one
//! host against the goal of 0.95 x N. Claim latency: `PgQueue::claim` timed in this process,
//! with 1, N and 4 x N slots claiming and finishing at once over CLAIMS queued runs.

#[path = "../tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use cosmos_workflow::cluster::{ClaimRequest, NewRun, Outcome, PgQueue};
use cosmos_workflow::spec::{Control, Hint, RunSpec, Settings, SpecStyle};
use cosmos_workflow::time::Timestamp;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts host `id` under `root` on the queue `database`; waits until it watches its inbox.
fn start_host(root: &Path, id: &str, database: &str, shared: &Path, job_seconds: f64) -> Daemon {
    std::fs::create_dir_all(root.join("inbox/videos")).expect("inbox");
    // A real video: intake probes it.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/videos/city1/color.mp4");
    std::fs::copy(example, root.join("inbox/videos/color.mp4")).expect("video");
    let config = root.join("cosmosd.toml");
    std::fs::write(
        &config,
        format!(
            "[watch]\nsettle = \"200ms\"\npoll_interval = \"200ms\"\n\
             [runtime]\nkind = \"process\"\nbackend = \"sim\"\ngpus = []\nbackend_args = [\"--job-seconds\", \"{job_seconds}\", \"--load-seconds\", \"0.2\"]\n\
             [outbox]\nmin_free = \"1MiB\"\n\
             [cluster]\ndatabase = \"{database}\"\nshared_dir = \"{}\"\nhost_id = \"{id}\"\nlease = \"30s\"\n",
            shared.display()
        ),
    )
    .expect("config");
    let log = std::fs::File::create(root.join("cosmosd.log")).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_cosmosd"))
        .arg("--config")
        .arg(&config)
        .arg("--root")
        .arg(root)
        .env_remove("COSMOS_CONFIG")
        .env("COSMOS_LOG_LEVEL", "info")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start cosmosd");
    let d = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::fs::read_to_string(root.join("cosmosd.log")).unwrap_or_default().contains("watching the inbox") {
            return d;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("host {id} never watched its inbox: {}", std::fs::read_to_string(root.join("cosmosd.log")).unwrap_or_default());
}

fn job(tag: &str, i: usize) -> String {
    format!("{{\"visual_input\": \"videos/color.mp4\", \"prompt\": \"{tag} {i}\", \"control_overrides\": {{\"edge\": {{\"control_weight\": 0.5}}}}}}\n")
}

/// A fresh database on the server for one round.
fn fresh_database(pg: &pg::Pg, name: &str) -> String {
    pg.client().batch_execute(&format!("CREATE DATABASE {name}")).expect("create database");
    format!("postgres://cosmos@127.0.0.1:{}/{name}", pg.port)
}

/// One round: `hosts` cosmosd on a fresh database, `runs` runs spread over their inboxes.
/// Returns runs per second from the first claim to the last completion (database clock).
fn round(pg: &pg::Pg, hosts: usize, runs: usize, job_seconds: f64, tag: &str) -> Option<f64> {
    let database = fresh_database(pg, tag);
    let dir = tempfile::tempdir().expect("temp dir");
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&shared).expect("shared");
    let roots: Vec<PathBuf> = (0..hosts).map(|h| dir.path().join(format!("h{h}"))).collect();
    let _daemons: Vec<Daemon> =
        roots.iter().enumerate().map(|(h, root)| start_host(root, &format!("h{h}"), &database, &shared, job_seconds)).collect();
    for (h, root) in roots.iter().enumerate() {
        let text: String = (0..runs).filter(|i| i % hosts == h).map(|i| job(tag, i)).collect();
        let tmp = root.join(format!(".{tag}.tmp"));
        std::fs::write(&tmp, text).expect("write jobs");
        std::fs::rename(&tmp, root.join(format!("inbox/{tag}.jsonl"))).expect("drop");
    }
    let mut client = postgres::Client::connect(&database, postgres::NoTls).expect("connect");
    let limit = Duration::from_secs_f64(60.0 + 3.0 * job_seconds * runs as f64);
    let deadline = Instant::now() + limit;
    loop {
        let done: i64 = client.query_one("SELECT count(*) FROM cosmos_events WHERE kind = 'completed'", &[]).map(|r| r.get(0)).unwrap_or(0);
        if done as usize >= runs {
            break;
        }
        if Instant::now() > deadline {
            println!("    round {tag}: only {done} of {runs} runs completed within {limit:?}; is the daemon wired onto the queue?");
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let span: f64 = client
        .query_one(
            "SELECT EXTRACT(EPOCH FROM (max(time) FILTER (WHERE kind = 'completed') - min(time) FILTER (WHERE kind = 'claimed')))::float8 \
             FROM cosmos_events",
            &[],
        )
        .map(|r| r.get(0))
        .unwrap_or(f64::NAN);
    let per_host: BTreeMap<String, i64> = client
        .query("SELECT ran_on, count(*) FROM cosmos_runs WHERE status = 'completed' GROUP BY ran_on ORDER BY ran_on", &[])
        .map(|rows| rows.iter().map(|r| (r.get::<_, Option<String>>(0).unwrap_or_default(), r.get(1))).collect())
        .unwrap_or_default();
    let rate = runs as f64 / span;
    println!("    {tag}: {runs} runs in {span:.2} s = {rate:.3} runs/s; ran on {per_host:?}");
    Some(rate)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn spec(i: usize) -> RunSpec {
    let hints = [Hint::Edge, Hint::Vis];
    RunSpec {
        video: None,
        style: SpecStyle::Cli,
        name: Some(format!("c{i}")),
        prompt: format!("claim {i}"),
        negative_prompt: None,
        visual_input: "/shared/inputs/color.mp4".into(),
        controls: std::iter::once((hints[i % 2], Control::generated(0.5))).collect(),
        settings: Settings::default(),
        priority: 0,
        upscale_weight: None,
        sim: None,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `slots` threads (over `hosts` host ids) claim and complete `claims` queued runs; every
/// claim that got a run is timed.
fn claim_latency(pg: &pg::Pg, slots: usize, hosts: usize, claims: usize, tag: &str) -> Vec<Duration> {
    let database = fresh_database(pg, tag);
    let mut q = PgQueue::connect(&database, "intake").expect("connect");
    let specs: Vec<RunSpec> = (0..claims).map(spec).collect();
    let ids: Vec<String> = (0..claims).map(|i| format!("rs_{tag}_{i:05}")).collect();
    let runs: Vec<NewRun> =
        ids.iter().zip(&specs).map(|(id, s)| NewRun { id, spec: s, created_at: Timestamp::now(), parent_id: None, home: None }).collect();
    for chunk in runs.chunks(200) {
        q.enqueue(chunk).expect("enqueue");
    }
    let threads: Vec<_> = (0..slots)
        .map(|s| {
            let database = database.clone();
            std::thread::spawn(move || {
                let mut q = PgQueue::connect(&database, &format!("h{}", s % hosts)).expect("connect");
                let slot = format!("gpu{s}");
                let mut loaded: Option<String> = None;
                let mut times = Vec::new();
                loop {
                    let req = ClaimRequest {
                        slot: &slot,
                        loaded: loaded.as_deref(),
                        max_affinity_wait: Duration::from_secs(600),
                        lease: Duration::from_secs(60),
                    };
                    let t = Instant::now();
                    let Some(claim) = q.claim(&req).expect("claim") else { break };
                    times.push(t.elapsed());
                    loaded = Some(claim.run.control_set.clone());
                    let done = Outcome::Completed { outputs: serde_json::json!({"video": "output.mp4"}), child: None };
                    q.finish(&claim.run.id, claim.token, &done).expect("finish");
                }
                times
            })
        })
        .collect();
    let mut all: Vec<Duration> = threads.into_iter().flat_map(|t| t.join().expect("claim thread")).collect();
    all.sort();
    all
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let hosts = env_usize("HOSTS", 3).max(2);
    let runs = env_usize("RUNS", 24);
    let rounds = env_usize("ROUNDS", 3).max(1);
    let job_seconds = env_f64("JOB_SECONDS", 1.0);
    let claims = env_usize("CLAIMS", 600);
    println!("cluster bench: {hosts} hosts vs 1, {runs} runs per round of {job_seconds} s each, {rounds} rounds; {claims} claims");
    let Some(pg) = pg::Pg::start() else {
        println!("skipped: no PostgreSQL here (apt-get install postgresql)");
        return;
    };

    println!("claim latency (PgQueue::claim, one transaction, FOR UPDATE SKIP LOCKED):");
    for slots in [1, hosts, 4 * hosts] {
        let lat = claim_latency(&pg, slots, hosts, claims, &format!("claims_{slots}"));
        if lat.is_empty() {
            continue;
        }
        println!(
            "  {slots:>2} slots over {hosts} hosts: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} claims)",
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(lat[lat.len() - 1]),
            lat.len()
        );
    }

    println!("throughput (cosmosd processes, sim workers, one slot each):");
    let (mut one, mut many) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        match round(&pg, 1, runs, job_seconds, &format!("one_{r}")) {
            Some(rate) => one.push(rate),
            None => return,
        }
        match round(&pg, hosts, runs, job_seconds, &format!("many_{r}")) {
            Some(rate) => many.push(rate),
            None => return,
        }
    }
    let (m1, mn) = (median(one), median(many));
    let ratio = mn / m1;
    println!(
        "  median: 1 host {m1:.3} runs/s, {hosts} hosts {mn:.3} runs/s; ratio {ratio:.2} = {:.2} x N (goal 0.95 x N = {:.2}); \
         ideal per slot {:.3} runs/s",
        ratio / hosts as f64,
        0.95 * hosts as f64,
        1.0 / job_seconds
    );
}
