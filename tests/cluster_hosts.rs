//! Three cosmosd processes on one queue in a real PostgreSQL (issue 14): each host its own
//! state, inbox and outbox, all of them one shared folder; sim workers. What must hold
//! whatever happens to a host or to the database: every run completes exactly once (one
//! "completed" event in `cosmos_events`), its folder appears in the outbox of the host whose
//! inbox took it in, and a host that lost its lease publishes nothing.

#[path = "common/pg.rs"]
#[allow(dead_code)]
mod pg;

mod common;

use common::{drop_file, Home};
use pg::Pg;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// `cluster.lease` of the test hosts: renewed every 2 s, lapsed after 6 s without.
const LEASE: Duration = Duration::from_secs(6);
/// Long enough for a loaded 2-core machine; a run that takes longer is a failure.
const LONG: Duration = Duration::from_secs(120);

/// One cosmosd of the cluster, killed when dropped.
struct Host {
    id: String,
    home: Home,
    /// The network namespace it runs in, if any.
    netns: Option<String>,
    database: String,
    shared: PathBuf,
    /// TOML added to [runtime] (backend_args, say).
    runtime: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Host {
    fn new(id: &str, database: String, shared: &Path, runtime: &str) -> Host {
        let home = Home::new();
        std::fs::create_dir_all(home.inbox()).expect("inbox");
        home.videos_in_inbox();
        let log = home.path().join("cosmosd.log");
        Host {
            id: id.to_string(),
            home,
            netns: None,
            database,
            shared: shared.to_path_buf(),
            runtime: runtime.to_string(),
            child: None,
            log,
        }
    }

    fn config(&self) -> String {
        format!(
            "[watch]\nsettle = \"300ms\"\nrescan = \"2s\"\nincomplete_grace = \"3s\"\npoll_interval = \"200ms\"\n\
             [runtime]\nkind = \"process\"\nbackend = \"sim\"\n{}\n\
             [scheduler]\nmax_attempts = 5\n\
             [outbox]\nmin_free = \"1MiB\"\n\
             [daemon]\nstatus_interval = \"300ms\"\nstop_grace = \"3s\"\n\
             [cluster]\ndatabase = \"{}\"\nshared_dir = \"{}\"\nhost_id = \"{}\"\nlease = \"{}s\"\n",
            self.runtime,
            self.database,
            self.shared.display(),
            self.id,
            LEASE.as_secs()
        )
    }

    /// Starts (or starts again) this host's cosmosd and waits until it watches its inbox.
    fn start(&mut self) {
        let config = self.home.path().join("cosmosd.toml");
        std::fs::write(&config, self.config()).expect("write config");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let bin = assert_cmd::cargo::cargo_bin("cosmosd");
        // `ip netns exec` execs cosmosd itself: the child's pid is the daemon's.
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.current_dir(self.home.path())
            .env_remove("COSMOS_CONFIG")
            .env("COSMOS_LOG_LEVEL", "debug")
            .arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(self.home.root())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("start cosmosd"));
        let started = wait_until(Duration::from_secs(30), || self.log_text().contains("watching the inbox"));
        assert!(started, "{} never watched its inbox:\n{}", self.id, self.log_text());
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Drops a job file into this host's inbox.
    fn drop_jobs(&self, name: &str, lines: &[String]) {
        drop_file(&self.home, name, &lines.concat());
    }

    /// The run folders in this host's outbox, by run id.
    fn run_folders(&self) -> BTreeMap<String, PathBuf> {
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(self.home.outbox()).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_prefix("run_") {
                out.insert(id.to_string(), e.path());
            }
        }
        out
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // A stopped host would never see the SIGKILL's effect reaped otherwise.
        self.signal(libc::SIGCONT);
        self.kill9();
    }
}

/// Polls `cond` every 200 ms (each look at the queue is a query) until it holds or
/// `timeout` passes.
fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Two control sets: a model load per set per worker at least.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Set {
    Edge,
    Vis,
}

/// A job line of control set `set`; `seconds` overrides the sim worker's run time.
fn job(name: &str, set: Set, seconds: Option<f64>) -> String {
    let controls = match set {
        Set::Edge => r#"{"edge": {"control_weight": 0.5}}"#,
        Set::Vis => r#"{"vis": {"control_weight": 0.4}}"#,
    };
    let sim = seconds.map(|s| format!(r#", "sim": {{"seconds": {s}}}"#)).unwrap_or_default();
    format!(
        "{{\"name\": \"{name}\", \"visual_input\": \"videos/city1/color.mp4\", \"prompt\": \"{name}\", \"control_overrides\": {controls}{sim}}}\n"
    )
}

/// A private PostgreSQL, one shared folder, three hosts h1, h2, h3 (not yet started).
struct Cluster {
    hosts: Vec<Host>,
    /// The test's own connection, made again after a restart.
    client: std::cell::RefCell<Option<postgres::Client>>,
    // Dropped after the hosts: a host never outlives its database in a test.
    shared: tempfile::TempDir,
    pg: Pg,
}

/// One row of `cosmos_runs`.
#[derive(Debug, Clone)]
struct Row {
    id: String,
    status: String,
    origin: String,
    ran_on: Option<String>,
    lease_host: Option<String>,
    attempts: i32,
    /// The origin host took it into its outbox (and marked so in the queue).
    delivered: bool,
}

impl Cluster {
    fn new(pg: Pg, runtime: &str) -> Cluster {
        let shared = tempfile::tempdir().expect("shared dir");
        let hosts = ["h1", "h2", "h3"].iter().map(|id| Host::new(id, pg.url(), shared.path(), runtime)).collect();
        Cluster { hosts, client: std::cell::RefCell::new(None), shared, pg }
    }

    fn start_all(&mut self) {
        for h in &mut self.hosts {
            h.start();
        }
    }

    fn host(&self, id: &str) -> &Host {
        self.hosts.iter().find(|h| h.id == id).expect("a host of the cluster")
    }

    fn host_mut(&mut self, id: &str) -> &mut Host {
        self.hosts.iter_mut().find(|h| h.id == id).expect("a host of the cluster")
    }

    /// Rows of `sql`; none while the database is away (or before the schema exists).
    fn query(&self, sql: &str) -> Vec<postgres::Row> {
        let mut client = self.client.borrow_mut();
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            *client = postgres::Client::connect(&self.pg.url(), postgres::NoTls).ok();
        }
        let Some(c) = client.as_mut() else { return Vec::new() };
        match c.query(sql, &[]) {
            Ok(rows) => rows,
            Err(e) => {
                // A broken connection is made again at the next look.
                if e.is_closed() || e.as_db_error().is_none() {
                    *client = None;
                }
                Vec::new()
            }
        }
    }

    /// Every run in the shared queue (none before the schema exists).
    fn rows(&self) -> Vec<Row> {
        self.query("SELECT id, status, origin_host, ran_on, lease_host, attempts, delivered_at IS NOT NULL FROM cosmos_runs ORDER BY id")
            .iter()
            .map(|r| Row {
                id: r.get(0),
                status: r.get(1),
                origin: r.get(2),
                ran_on: r.get(3),
                lease_host: r.get(4),
                attempts: r.get(5),
                delivered: r.get(6),
            })
            .collect()
    }

    /// Run id -> how many events of `kind` it has.
    fn count_events(&self, kind: &str) -> BTreeMap<String, i64> {
        self.query(&format!("SELECT run_id, count(*) FROM cosmos_events WHERE kind = '{kind}' GROUP BY run_id"))
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// (host, kind) of every event of `run_id`, in order.
    fn events(&self, run_id: &str) -> Vec<(String, String)> {
        let sql = format!("SELECT host, kind FROM cosmos_events WHERE run_id = '{}' ORDER BY seq", run_id.replace('\'', ""));
        self.query(&sql).iter().map(|r| (r.get(0), r.get(1))).collect()
    }

    /// Waits until the queue holds `n` runs, all completed and delivered.
    fn wait_completed(&self, n: usize, timeout: Duration) {
        let ok = wait_until(timeout, || {
            let rows = self.rows();
            rows.len() == n && rows.iter().all(|r| r.status == "completed" && r.delivered)
        });
        if !ok {
            panic!("not all {n} runs completed within {timeout:?}: {:#?}\n{}", self.rows(), self.logs());
        }
    }

    /// A running run held by `host`, once there is one.
    fn wait_held_by(&self, host: &str, timeout: Duration) -> String {
        let mut found = None;
        let ok = wait_until(timeout, || {
            found = self.rows().into_iter().find(|r| r.status == "running" && r.lease_host.as_deref() == Some(host)).map(|r| r.id);
            found.is_some()
        });
        assert!(ok, "{host} never held a run: {:#?}\n{}", self.rows(), self.logs());
        found.unwrap_or_default()
    }

    fn logs(&self) -> String {
        self.hosts.iter().map(|h| format!("----- {} (pid {}) -----\n{}\n", h.id, h.pid(), h.log_text())).collect()
    }

    /// What every test checks at the end: `n` runs, each completed exactly once, its folder
    /// whole in its origin's outbox only, its manifest naming the host that ran it, and the
    /// origin's receipt saying so. Returns the rows.
    fn assert_exactly_once(&self, n: usize) -> Vec<Row> {
        let rows = self.rows();
        assert_eq!(rows.len(), n, "{rows:#?}");
        let (completions, deliveries) = (self.count_events("completed"), self.count_events("delivered"));
        for r in &rows {
            assert_eq!(r.status, "completed", "{r:?}\n{}", self.logs());
            assert_eq!(completions.get(&r.id), Some(&1), "run {} must complete exactly once: {:?}", r.id, self.events(&r.id));
            assert_eq!(deliveries.get(&r.id), Some(&1), "run {} must be delivered exactly once: {:?}", r.id, self.events(&r.id));
        }
        assert_eq!(completions.len(), n, "a completion of a run not in the queue: {completions:?}");
        let mut in_outboxes = 0;
        for h in &self.hosts {
            let folders = h.run_folders();
            in_outboxes += folders.len();
            for (id, folder) in &folders {
                let row = rows.iter().find(|r| &r.id == id).unwrap_or_else(|| panic!("{}: a folder of unknown run {id}", h.id));
                assert_eq!(row.origin, h.id, "run {id} came in at {} but its folder is in {}'s outbox", row.origin, h.id);
                let manifest: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(folder.join("manifest.json")).expect("manifest.json")).expect("json");
                assert_eq!(manifest["run_id"], id.as_str());
                assert_eq!(manifest["host"].as_str(), row.ran_on.as_deref(), "run {id}: manifest host vs the queue's ran_on");
                assert!(folder.join("output.mp4").is_file(), "{}", folder.display());
            }
            // The origin's receipts say where each of its runs ran.
            for receipt in h.home.receipts() {
                for line in receipt["runs"].as_array().into_iter().flatten() {
                    let id = line["run_id"].as_str().unwrap_or_default();
                    let row = rows.iter().find(|r| r.id == id).unwrap_or_else(|| panic!("{}: receipt names unknown run {id}", h.id));
                    assert_eq!(line["status"], "completed", "{}: {line}", h.id);
                    assert_eq!(line["ran_on"].as_str(), row.ran_on.as_deref(), "{}: {line}", h.id);
                }
            }
        }
        assert_eq!(in_outboxes, n, "one folder per run over all outboxes");
        rows
    }

    /// Nothing left in the shared folder's results for `run_id` (a discarded attempt's
    /// output is removed, a delivered one moved out).
    fn leftovers(&self, run_id: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.shared.path().join("results")];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().contains(run_id) {
                    out.push(e.path());
                } else if e.path().is_dir() {
                    stack.push(e.path());
                }
            }
        }
        out
    }
}

/// Sim worker timings: loads cost 0.5 s (so affinity shows), runs 0.3 s unless a job says.
const SIM: &str = "backend_args = [\"--job-seconds\", \"0.3\", \"--load-seconds\", \"0.5\"]";

#[test]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); cargo nextest run --run-ignored all runs it, as CI does"]
fn runs_dropped_into_every_inbox_complete_exactly_once_in_their_origins_outbox() {
    let Some(pg) = Pg::start() else { return };
    let mut c = Cluster::new(pg, SIM);
    c.start_all();
    let per_host = 6;
    for (i, h) in c.hosts.iter().enumerate() {
        let lines: Vec<String> =
            (0..per_host).map(|j| job(&format!("{}-{j}", h.id), if (i + j) % 2 == 0 { Set::Edge } else { Set::Vis }, None)).collect();
        h.drop_jobs(&format!("batch-{}.jsonl", h.id), &lines);
    }
    c.wait_completed(3 * per_host, LONG);
    let rows = c.assert_exactly_once(3 * per_host);
    for h in &c.hosts {
        assert_eq!(rows.iter().filter(|r| r.origin == h.id).count(), per_host, "{}'s inbox took in its own file", h.id);
    }
    // The work was shared: every host ran something (one slot each, 18 runs).
    for h in &c.hosts {
        assert!(rows.iter().any(|r| r.ran_on.as_deref() == Some(h.id.as_str())), "{} ran nothing: {rows:#?}", h.id);
    }
    // status.json tells the cluster.
    let status = common::status(&c.host("h2").home);
    assert_eq!(status["cluster"]["host_id"], "h2", "{status}");
    assert_eq!(status["cluster"]["connected"], true, "{status}");
    let hosts: Vec<&str> = status["cluster"]["hosts"].as_array().into_iter().flatten().filter_map(|h| h["host_id"].as_str()).collect();
    for id in ["h1", "h2", "h3"] {
        assert!(hosts.contains(&id), "status.json cluster.hosts lacks {id}: {status}");
    }
}

#[test]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); cargo nextest run --run-ignored all runs it, as CI does"]
fn affinity_keeps_model_loads_near_control_sets_times_hosts() {
    let Some(pg) = Pg::start() else { return };
    let mut c = Cluster::new(pg, SIM);
    c.start_all();
    // 30 runs, the two sets interleaved (by age alone every claim would switch sets).
    let n = 30;
    let lines: Vec<String> = (0..n).map(|i| job(&format!("a{i}"), if i % 2 == 0 { Set::Edge } else { Set::Vis }, None)).collect();
    // All in one file, so that they are all queued before the first claim can empty the queue.
    c.host("h1").drop_jobs("mixed.jsonl", &lines);
    c.wait_completed(n, LONG);
    c.assert_exactly_once(n);
    let mut loads = 0;
    for (_, folder) in c.host("h1").run_folders() {
        let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(folder.join("manifest.json")).unwrap()).unwrap();
        if manifest["timings"]["model_loaded"] == true {
            loads += 1;
        }
    }
    // At most one load per set per host (2 x 3), plus one for a set switched back to.
    let bound = 2 * c.hosts.len() + 1;
    println!("{n} runs over 2 control sets on 3 hosts: {loads} model loads");
    assert!(loads >= 2, "each set was loaded at least once: {loads}");
    assert!(loads <= bound, "{loads} model loads for {n} runs: affinity should keep it at most {bound}");
}

#[test]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); cargo nextest run --run-ignored all runs it, as CI does"]
fn a_host_killed_mid_run_loses_nothing_its_run_completes_elsewhere() {
    let Some(pg) = Pg::start() else { return };
    let mut c = Cluster::new(pg, SIM);
    c.start_all();
    // 5-second runs taken in at h2; we wait for one h1 claimed.
    let lines: Vec<String> = (0..5).map(|i| job(&format!("k{i}"), Set::Edge, Some(5.0))).collect();
    c.host("h2").drop_jobs("long.jsonl", &lines);
    let victim = c.wait_held_by("h1", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(800));
    c.host_mut("h1").kill9();
    let killed_at = Instant::now();
    let moved = wait_until(LONG, || c.rows().iter().any(|r| r.id == victim && r.status == "completed"));
    assert!(moved, "{:#?}\n{}", c.rows(), c.logs());
    println!("run {victim} completed elsewhere {:.1} s after h1 was killed (lease {LEASE:?})", killed_at.elapsed().as_secs_f64());
    c.wait_completed(5, LONG);
    let rows = c.assert_exactly_once(5);
    let row = rows.iter().find(|r| r.id == victim).unwrap();
    assert_ne!(row.ran_on.as_deref(), Some("h1"), "{row:?}");
    assert!(row.attempts >= 2, "the killed attempt counted: {row:?}");
    let events = c.events(&victim);
    assert!(events.iter().any(|(_, k)| k == "lease_lapsed"), "reaped from the dead host's lease: {events:?}");
    assert!(!events.iter().any(|(h, k)| h == "h1" && k == "completed"), "{events:?}");
}

#[test]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); cargo nextest run --run-ignored all runs it, as CI does"]
fn a_host_paused_past_its_lease_has_its_late_result_refused() {
    let Some(pg) = Pg::start() else { return };
    let mut c = Cluster::new(pg, SIM);
    c.start_all();
    let lines: Vec<String> = (0..4).map(|i| job(&format!("p{i}"), Set::Edge, Some(4.0))).collect();
    c.host("h2").drop_jobs("paused.jsonl", &lines);
    let victim = c.wait_held_by("h1", Duration::from_secs(60));
    c.host("h1").signal(libc::SIGSTOP);
    // Stopped until its run has completed elsewhere: well past its lease. Its worker goes on
    // (only cosmosd is stopped) and finishes the attempt, whose result h1 finds at SIGCONT.
    let moved =
        wait_until(LONG, || c.rows().iter().any(|r| r.id == victim && r.status == "completed" && r.ran_on.as_deref() != Some("h1")));
    assert!(moved, "run {victim} never completed elsewhere while h1 was stopped: {:#?}\n{}", c.rows(), c.logs());
    c.host("h1").signal(libc::SIGCONT);
    // h1 wakes to a lapsed lease: it must stop or discard, not publish. Give it two leases.
    c.wait_completed(4, LONG);
    std::thread::sleep(2 * LEASE);
    c.assert_exactly_once(4);
    let events = c.events(&victim);
    assert!(!events.iter().any(|(h, k)| h == "h1" && k == "completed"), "{events:?}");
    assert!(c.leftovers(&victim).is_empty(), "h1's discarded attempt left {:?}", c.leftovers(&victim));
    // h1 noticed, and said so: it stopped or refused its attempt rather than publish it.
    let h1_log = c.host("h1").log_text();
    let said = h1_log.lines().filter(|l| l.contains(victim.as_str()) && l.contains("discard")).collect::<Vec<_>>();
    assert!(!said.is_empty(), "h1 never said it discarded {victim}:\n{h1_log}");
    println!("h1 after SIGCONT: {}", said.join("\n  "));
    // h1 is still a working member: a run of its own inbox completes.
    c.host("h1").drop_jobs("after.jsonl", &[job("after-pause", Set::Vis, None)]);
    c.wait_completed(5, LONG);
    c.assert_exactly_once(5);
}

#[test]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); cargo nextest run --run-ignored all runs it, as CI does"]
fn a_database_restart_mid_work_loses_nothing() {
    let Some(pg) = Pg::start() else { return };
    let mut c = Cluster::new(pg, "backend_args = [\"--job-seconds\", \"0.8\", \"--load-seconds\", \"0.3\"]");
    c.start_all();
    for h in &c.hosts {
        let lines: Vec<String> = (0..6).map(|j| job(&format!("{}-r{j}", h.id), Set::Edge, None)).collect();
        h.drop_jobs("before.jsonl", &lines);
    }
    let started = wait_until(LONG, || c.rows().iter().filter(|r| r.status == "completed").count() >= 3);
    assert!(started, "{:#?}", c.rows());
    // A crash of the server (recovered at start-up) while runs are held and renewed.
    let before = c.rows();
    let unfinished = before.iter().filter(|r| r.status != "completed").count();
    let running = before.iter().filter(|r| r.status == "running").count();
    assert!(unfinished > 0, "the work ended before the restart: {before:#?}");
    c.pg.restart("immediate");
    println!("database restarted with {unfinished} of {} runs unfinished ({running} running)", before.len());
    // And a file taken in while the database was away or just back.
    c.host("h3").drop_jobs("after.jsonl", &[job("h3-after", Set::Vis, None), job("h3-after2", Set::Vis, None)]);
    c.wait_completed(20, LONG);
    let rows = c.assert_exactly_once(20);
    println!("all 20 completed once; {} runs took more than one attempt", rows.iter().filter(|r| r.attempts > 1).count());
    // The hosts noticed the restart and rode it out.
    for h in &c.hosts {
        assert!(h.log_text().contains("queue database: trying again"), "{} never saw the database go:\n{}", h.id, h.log_text());
    }
    // Each host is connected again.
    for h in &c.hosts {
        let ok = wait_until(Duration::from_secs(20), || common::status(&h.home)["cluster"]["connected"] == true);
        assert!(ok, "{} status.json: {}", h.id, common::status(&h.home));
    }
}

/// A network namespace with a veth pair to the host: the host side `10.214.N.1`, the
/// namespace side `10.214.N.2`. Removed (with its pair) when dropped.
struct Netns {
    name: String,
    host_side: String,
    host_addr: String,
}

impl Netns {
    fn create() -> Result<Netns, String> {
        // SAFETY: getuid cannot fail.
        if unsafe { libc::getuid() } != 0 {
            return Err("not root".into());
        }
        // A name and a /24 no other test process holds: the first whose namespace we can add.
        let mut made = None;
        let mut last_error = String::new();
        for attempt in 0..200 {
            let n = (std::process::id() + attempt) % 200 + 20;
            let name = format!("cosmos14-{n}");
            match Command::new("ip").args(["netns", "add", &name]).output() {
                Ok(out) if out.status.success() => {
                    made = Some(n);
                    break;
                }
                Ok(out) => last_error = String::from_utf8_lossy(&out.stderr).trim().to_string(),
                Err(e) => return Err(format!("cannot run ip: {e}")),
            }
            if !last_error.contains("exists") {
                return Err(format!("ip netns add {name}: {last_error}"));
            }
        }
        let Some(n) = made else { return Err(format!("no free namespace name: {last_error}")) };
        // From here on, Drop removes what was made.
        let ns = Netns { name: format!("cosmos14-{n}"), host_side: format!("c14h{n}"), host_addr: format!("10.214.{n}.1") };
        let peer = format!("c14n{n}");
        let guest_addr = format!("10.214.{n}.2/24");
        let host_cidr = format!("{}/24", ns.host_addr);
        let steps: [&[&str]; 7] = [
            &["link", "add", &ns.host_side, "type", "veth", "peer", "name", &peer],
            &["link", "set", &peer, "netns", &ns.name],
            &["addr", "add", &host_cidr, "dev", &ns.host_side],
            &["link", "set", &ns.host_side, "up"],
            &["netns", "exec", &ns.name, "ip", "addr", "add", &guest_addr, "dev", &peer],
            &["netns", "exec", &ns.name, "ip", "link", "set", &peer, "up"],
            &["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"],
        ];
        for step in steps {
            let out = Command::new("ip").args(step).output().map_err(|e| format!("cannot run ip: {e}"))?;
            if !out.status.success() {
                return Err(format!("ip {}: {}", step.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
            }
        }
        Ok(ns)
    }

    fn network(&self) -> String {
        let prefix = self.host_addr.rsplit_once('.').map_or("", |(p, _)| p);
        format!("{prefix}.0/24")
    }

    /// Takes the host side of the link down (`up`: back up).
    fn link(&self, up: bool) {
        let ok = Command::new("ip").args(["link", "set", &self.host_side, if up { "up" } else { "down" }]).status();
        assert!(ok.is_ok_and(|s| s.success()), "ip link set {} failed", self.host_side);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_side]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// A cluster whose h3 runs in a network namespace of its own, reaching the database over a
/// veth pair (PostgreSQL listens on its host side too); `None` (skipped) without root or
/// iproute2, unless COSMOS_REQUIRE_NETNS=1.
fn cut_off_cluster() -> Option<(Netns, Cluster)> {
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            if std::env::var("COSMOS_REQUIRE_NETNS").as_deref() == Ok("1") {
                panic!("COSMOS_REQUIRE_NETNS=1 but no network namespace could be made: {why}");
            }
            eprintln!("skipped: no network namespace ({why}); needs root and iproute2");
            return None;
        }
    };
    let pg = Pg::start_on(&[&ns.host_addr], &[&ns.network()])?;
    let mut c = Cluster::new(pg, SIM);
    let port = c.pg.port;
    let h3 = c.host_mut("h3");
    h3.netns = Some(ns.name.clone());
    h3.database = format!("postgres://cosmos@{}:{port}/postgres", ns.host_addr);
    Some((ns, c))
}

#[test]
#[ignore = "needs root and ip netns (iproute2) and PostgreSQL; cargo nextest run --run-ignored all runs it, as CI does"]
fn a_host_cut_off_by_the_network_has_its_runs_move_on() {
    let Some((ns, mut c)) = cut_off_cluster() else { return };
    c.start_all();
    let lines: Vec<String> = (0..5).map(|i| job(&format!("n{i}"), Set::Edge, Some(4.0))).collect();
    c.host("h1").drop_jobs("cut.jsonl", &lines);
    let victim = c.wait_held_by("h3", Duration::from_secs(60));
    ns.link(false);
    let cut_at = Instant::now();
    let moved = wait_until(LONG, || c.rows().iter().any(|r| r.id == victim && r.status == "completed"));
    assert!(moved, "{:#?}\n{}", c.rows(), c.logs());
    println!("run {victim} completed elsewhere {:.1} s after h3 was cut off (lease {LEASE:?})", cut_at.elapsed().as_secs_f64());
    c.wait_completed(5, LONG);
    let rows = c.assert_exactly_once(5);
    let row = rows.iter().find(|r| r.id == victim).unwrap();
    assert_ne!(row.ran_on.as_deref(), Some("h3"), "{row:?}");
    let events = c.events(&victim);
    assert!(events.iter().any(|(_, k)| k == "lease_lapsed"), "{events:?}");
    // The link back: h3 publishes nothing of its lapsed attempt, says so, and works again.
    ns.link(true);
    let said = wait_until(LONG, || c.host("h3").log_text().lines().any(|l| l.contains(victim.as_str()) && l.contains("discard")));
    assert!(said, "h3 never discarded {victim}:\n{}", c.host("h3").log_text());
    c.host("h3").drop_jobs("back.jsonl", &[job("n-back", Set::Edge, None)]);
    c.wait_completed(6, LONG);
    c.assert_exactly_once(6);
    assert!(c.leftovers(&victim).is_empty(), "{:?}", c.leftovers(&victim));
}

#[test]
#[ignore = "needs root and ip netns (iproute2) and PostgreSQL; cargo nextest run --run-ignored all runs it, as CI does"]
fn a_cut_off_host_stops_its_run_when_its_lease_ends_without_the_database() {
    let Some((ns, mut c)) = cut_off_cluster() else { return };
    c.start_all();
    // A long run per host (one slot each), so that h3 has one, still running well past the lease.
    let lines: Vec<String> = (0..3).map(|i| job(&format!("long{i}"), Set::Edge, Some(60.0))).collect();
    c.host("h1").drop_jobs("long.jsonl", &lines);
    let victim = c.wait_held_by("h3", Duration::from_secs(60));
    ns.link(false);
    let cut_at = Instant::now();
    // No renewal for a whole lease: h3 must stop the run by itself (the others may already
    // be running it), database or not. A lease and a renewal period of slack.
    let stopped = wait_until(LEASE + LEASE / 3 + Duration::from_secs(3), || {
        c.host("h3").log_text().lines().any(|l| l.contains(victim.as_str()) && l.contains("discard"))
    });
    let took = cut_at.elapsed();
    ns.link(true);
    assert!(stopped, "h3 still ran {victim} {took:?} after it was cut off (lease {LEASE:?}):\n{}", c.host("h3").log_text());
    let log = c.host("h3").log_text();
    let said: Vec<&str> = log.lines().filter(|l| l.contains(victim.as_str()) && l.contains("discard")).collect();
    println!("h3 stopped its run {:.1} s after it was cut off (lease {LEASE:?}): {}", took.as_secs_f64(), said.join("\n  "));
}

#[test]
#[ignore = "needs root and ip netns (iproute2) and PostgreSQL; cargo nextest run --run-ignored all runs it, as CI does"]
fn a_cut_off_host_discards_a_finished_attempt_it_cannot_commit_when_its_lease_ends() {
    let Some((ns, mut c)) = cut_off_cluster() else { return };
    c.start_all();
    // Long runs keep h1 and h2 busy; h3's run (2 s) ends in its worker while h3 is cut off,
    // so that h3 is committing, not running, when its lease ends.
    let mut lines: Vec<String> = (0..2).map(|i| job(&format!("busy{i}"), Set::Edge, Some(60.0))).collect();
    c.host("h1").drop_jobs("busy.jsonl", &lines);
    let busy = wait_until(Duration::from_secs(60), || c.rows().iter().filter(|r| r.status == "running").count() == 2);
    assert!(busy, "{:#?}", c.rows());
    lines = vec![job("short", Set::Edge, Some(2.0))];
    c.host("h1").drop_jobs("short.jsonl", &lines);
    let victim = c.wait_held_by("h3", Duration::from_secs(60));
    ns.link(false);
    let cut_at = Instant::now();
    let stopped = wait_until(LEASE + LEASE / 3 + Duration::from_secs(3), || {
        c.host("h3").log_text().lines().any(|l| l.contains(victim.as_str()) && l.contains("discard"))
    });
    let took = cut_at.elapsed();
    ns.link(true);
    assert!(
        stopped,
        "h3 still held its finished attempt of {victim} {took:?} after it was cut off (lease {LEASE:?}):\n{}",
        c.host("h3").log_text()
    );
    println!("h3 discarded its finished attempt {:.1} s after it was cut off (lease {LEASE:?})", took.as_secs_f64());
}
