//! `cosmos` across hosts (`[cluster] database` set), through the real binary: runs put in a
//! private PostgreSQL (tests/common/pg.rs) by two "hosts" through the library's queue (no
//! daemon), then `list runs`, `show`, `cancel`, `retry` and `status` read and change them,
//! in text and JSON. And a database that is not there: one clear error, exit 1.

mod common;
#[path = "common/pg.rs"]
#[allow(dead_code)]
mod pg;

use common::{drop_file, grep_id, wait_until, Daemon, Home};
use cosmos_workflow::cluster::{ClaimRequest, HostBeat, NewRun, Outcome, PgQueue, SlotBeat};
use cosmos_workflow::ids::{new_id, IdKind};
use cosmos_workflow::spec::{Control, Hint, RunSpec, Settings, SpecStyle};
use cosmos_workflow::store::{Change, RunStatus, Store};
use cosmos_workflow::time::Timestamp;
use pg::Pg;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn spec(name: &str, hints: &[Hint], priority: i32) -> RunSpec {
    RunSpec {
        video: None,
        style: SpecStyle::Cli,
        name: Some(name.into()),
        prompt: format!("prompt of {name}"),
        negative_prompt: None,
        visual_input: "/shared/inputs/color.mp4".into(),
        controls: hints.iter().map(|h| (*h, Control::generated(0.5))).collect::<BTreeMap<_, _>>(),
        settings: Settings::default(),
        priority,
        upscale_weight: None,
        sim: None,
    }
}

fn enqueue(q: &mut PgQueue, name: &str, hints: &[Hint], priority: i32) -> String {
    let id = new_id(IdKind::Run);
    enqueue_as(q, &id, name, hints, priority);
    id
}

fn enqueue_as(q: &mut PgQueue, id: &str, name: &str, hints: &[Hint], priority: i32) {
    let s = spec(name, hints, priority);
    q.enqueue(&[NewRun { id, spec: &s, created_at: Timestamp::now(), parent_id: None, home: None }]).expect("enqueue");
}

fn claim(q: &mut PgQueue, slot: &str) -> String {
    let req = ClaimRequest { slot, loaded: None, max_affinity_wait: Duration::from_secs(3600), lease: Duration::from_secs(600) };
    q.claim(&req).expect("claim").expect("a run to claim").run.id
}

/// A configuration that makes `cosmos` host `host_id` of the queue at `database`.
fn cluster_config(home: &Home, database: &str, host_id: &str) -> PathBuf {
    let shared = home.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let path = home.path().join(format!("{host_id}.toml"));
    std::fs::write(
        &path,
        format!(
            "[runtime]\nkind = \"process\"\nbackend = \"sim\"\n[cluster]\ndatabase = \"{database}\"\nshared_dir = \"{}\"\nhost_id = \"{host_id}\"\nlease = \"90s\"\n",
            shared.display()
        ),
    )
    .unwrap();
    path
}

/// `cosmos --config CONFIG ARGS`: exit code, stdout, stderr.
fn cosmos(home: &Home, config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = home.cosmos().arg("--config").arg(config).args(args).output().expect("run cosmos");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn ok(home: &Home, config: &Path, args: &[&str]) -> String {
    let (code, stdout, stderr) = cosmos(home, config, args);
    assert_eq!(code, Some(0), "cosmos {args:?}: {stderr}\n{stdout}");
    stdout
}

fn json(home: &Home, config: &Path, args: &[&str]) -> Value {
    let text = ok(home, config, args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("cosmos {args:?} printed no JSON ({e}): {text}"))
}

fn by_id<'a>(list: &'a Value, id: &str) -> &'a Value {
    list.as_array().and_then(|a| a.iter().find(|r| r["id"] == id)).unwrap_or_else(|| panic!("{id} not listed: {list}"))
}

#[test]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); cargo nextest run --run-ignored all runs it, as CI does"]
fn list_show_cancel_retry_and_status_see_every_hosts_runs() {
    let Some(pg) = Pg::start() else { return };
    let mut a = PgQueue::connect(&pg.url(), "gpu-a").expect("host a");
    let mut b = PgQueue::connect(&pg.url(), "gpu-b").expect("host b");
    // Host b claims its own run (the highest priority), host a runs one that fails.
    let running = enqueue(&mut b, "held-by-b", &[Hint::Edge], 50);
    assert_eq!(claim(&mut b, "0"), running);
    let failing = enqueue(&mut a, "fails-on-a", &[Hint::Depth], 40);
    let failed_token = {
        let req = ClaimRequest { slot: "1", loaded: None, max_affinity_wait: Duration::from_secs(3600), lease: Duration::from_secs(600) };
        let c = a.claim(&req).unwrap().expect("the failing run");
        assert_eq!(c.run.id, failing);
        c.token
    };
    a.finish(&failing, failed_token, &Outcome::Failed { error: "model error: bad input".into() }).expect("fail it");
    let queued = enqueue(&mut a, "waits-on-a", &[Hint::Vis], 0);
    let queued_b = enqueue(&mut b, "waits-from-b", &[Hint::Vis], 0);
    let now = Timestamp::now();
    let slots_b = [SlotBeat { slot: "0", gpus: &[0, 1], loaded_controls: Some("edge"), state: "running", run_id: Some(&running) }];
    b.heartbeat(&HostBeat { version: "0.1.0", pid: 4242, started_at: now, slots: &slots_b }).unwrap();
    let slots_a = [
        SlotBeat { slot: "0", gpus: &[0], loaded_controls: None, state: "idle", run_id: None },
        SlotBeat { slot: "1", gpus: &[1], loaded_controls: Some("depth"), state: "idle", run_id: None },
    ];
    a.heartbeat(&HostBeat { version: "0.1.0", pid: 1717, started_at: now, slots: &slots_a }).unwrap();

    let home = Home::new();
    let config = cluster_config(&home, &pg.url(), "gpu-a");
    // A run of this host's store that never entered the shared queue (pending).
    let prompt = grep_id(&ok(&home, &config, &["create", "prompt", "A city at night", "videos/city1"]), "ps_");
    let pending = grep_id(&ok(&home, &config, &["create", "run", &prompt, "--weights", "0.5", "0.5", "0", "0"]), "rs_");
    // And one of this host's runs that entered the shared queue under its own id (as the
    // daemon moves them): listed once, with what this host's record adds.
    let homed = grep_id(&ok(&home, &config, &["create", "run", &prompt, "--weights", "0", "1", "0", "0"]), "rs_");
    enqueue_as(&mut a, &homed, "homed", &[Hint::Edge], 0);

    // list runs: every host's, with where each came from and where it runs or ran.
    let list = json(&home, &config, &["list", "runs", "--json"]);
    assert_eq!(list.as_array().map(Vec::len), Some(6), "{list}");
    let r = by_id(&list, &running);
    assert_eq!((r["status"].as_str(), r["origin_host"].as_str(), r["ran_on"].as_str()), (Some("running"), Some("gpu-b"), Some("gpu-b")));
    assert_eq!((r["holder"]["host"].as_str(), r["holder"]["slot"].as_str()), (Some("gpu-b"), Some("0")), "{r}");
    assert!(r["holder"]["token"].as_i64().is_some_and(|t| t > 0) && r["holder"]["expires_at"].is_string(), "{r}");
    assert_eq!((r["name"].as_str(), r["in_shared_queue"].as_bool()), (Some("held-by-b"), Some(true)));
    let f = by_id(&list, &failing);
    assert_eq!(
        (f["status"].as_str(), f["ran_on"].as_str(), f["error"].as_str()),
        (Some("failed"), Some("gpu-a"), Some("model error: bad input"))
    );
    assert!(f["holder"].is_null(), "{f}");
    assert_eq!(by_id(&list, &queued_b)["origin_host"], "gpu-b");
    assert!(by_id(&list, &queued_b)["prompt_id"].is_null(), "another host's run has no record here");
    let p = by_id(&list, &pending);
    assert_eq!(
        (p["status"].as_str(), p["origin_host"].as_str(), p["in_shared_queue"].as_bool()),
        (Some("pending"), Some("gpu-a"), Some(false))
    );
    assert_eq!(p["prompt_id"], prompt.as_str());
    let h = by_id(&list, &homed);
    assert_eq!(
        (h["status"].as_str(), h["in_shared_queue"].as_bool(), h["prompt_id"].as_str()),
        (Some("queued"), Some(true), Some(prompt.as_str()))
    );
    // Newest first; --status and --limit as for one host.
    let order: Vec<&str> = list.as_array().unwrap().iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(order, [homed.as_str(), &pending, &queued_b, &queued, &failing, &running], "{list}");
    let only = json(&home, &config, &["list", "runs", "--status", "running", "--json"]);
    assert_eq!(only.as_array().map(|a| a.iter().map(|r| r["id"].clone()).collect::<Vec<_>>()), Some(vec![Value::from(running.clone())]));
    assert_eq!(json(&home, &config, &["list", "runs", "--limit", "2", "--json"]).as_array().map(Vec::len), Some(2));
    let text = ok(&home, &config, &["list", "runs"]);
    let header = text.lines().next().unwrap_or_default();
    assert!(header.starts_with("ID") && header.contains("ORIGIN") && header.contains(" ON ") && header.contains("ATTEMPTS"), "{text}");
    let line = text.lines().find(|l| l.starts_with(&running)).unwrap_or_else(|| panic!("{running} not in\n{text}"));
    assert!(line.contains("gpu-b/0") && line.contains(" running ") && line.contains("prompt of held-by-b"), "{line}");
    let line = text.lines().find(|l| l.starts_with(&failing)).unwrap();
    assert!(line.contains(" failed ") && line.contains("gpu-a"), "{line}");

    // show: the run from the shared queue with its history there; a prefix is enough.
    let shown = json(&home, &config, &["show", &running[..11], "--json"]);
    assert_eq!((shown["id"].as_str(), shown["origin_host"].as_str()), (Some(running.as_str()), Some("gpu-b")));
    let kinds: Vec<&str> = shown["events"].as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, ["enqueued", "claimed"], "{shown}");
    assert_eq!(shown["events"][1]["host"], "gpu-b");
    assert!(shown["local"].is_null(), "this host has no record of b's run: {shown}");
    let text = ok(&home, &config, &["show", &running]);
    assert!(text.contains("origin_host: gpu-b") && text.contains("kind=claimed") && text.contains("host=gpu-b"), "{text}");
    // The local run: not in the shared queue, shown from this host's store.
    assert_eq!(json(&home, &config, &["show", &pending, "--json"])["status"], "pending");
    // A home run: the shared queue's record with this host's beside it.
    let shown = json(&home, &config, &["show", &homed, "--json"]);
    assert_eq!((shown["status"].as_str(), shown["local"]["status"].as_str()), (Some("queued"), Some("pending")), "{shown}");
    assert_eq!(
        (shown["local"]["prompt_id"].as_str(), shown["local"]["events"][0]["kind"].as_str()),
        (Some(prompt.as_str()), Some("created"))
    );

    // cancel: a queued run at once; a running one (on the other host) is marked, and its
    // holder learns it at its next renewal.
    let out = ok(&home, &config, &["cancel", &queued]);
    assert!(out.contains(&format!("Cancelled run {queued}")), "{out}");
    assert_eq!(a.run(&queued).unwrap().status, RunStatus::Cancelled);
    let out = json(&home, &config, &["cancel", &running, "--json"]);
    assert_eq!(out["runs"][0]["stopping"], true, "{out}");
    assert_eq!((out["runs"][0]["status"].as_str(), out["runs"][0]["running_on"].as_str()), (Some("running"), Some("gpu-b/0")));
    let token = b.run(&running).unwrap().holder.expect("still held").token;
    assert!(b.renew(&running, token, Duration::from_secs(600)).unwrap(), "the holder is told to cancel");
    let out = ok(&home, &config, &["cancel", &queued_b]);
    assert!(out.contains("Cancelled run"), "any host's run: {out}");
    // What cannot be cancelled, and ids that are no run: exit 2, nothing changed.
    let (code, _, err) = cosmos(&home, &config, &["cancel", &failing]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is failed") && err.contains("only queued or running"), "{err}");
    let (code, _, err) = cosmos(&home, &config, &["cancel", "rs_zzzzzzzzzzzz", &queued_b]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("rs_zzzzzzzzzzzz"), "{err}");

    // retry: failed and cancelled runs queued again for any host; others refused first.
    let (code, _, err) = cosmos(&home, &config, &["retry", &failing, &running]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("run {running} is running")), "{err}");
    assert_eq!(a.run(&failing).unwrap().status, RunStatus::Failed, "a refused retry changes nothing");
    let out = ok(&home, &config, &["retry", &failing[..10], &queued_b]);
    assert!(out.contains(&format!("Queued run {failing} again")) && out.contains(&format!("Queued run {queued_b} again")), "{out}");
    let again = a.run(&failing).unwrap();
    assert_eq!((again.status, again.attempts, again.error), (RunStatus::Queued, 0, None));
    let out = json(&home, &config, &["retry", &queued, "--json"]);
    assert_eq!(out["runs"][0]["status"], "queued");
    let history: Vec<String> = a.events(&failing).unwrap().into_iter().map(|e| format!("{}@{}", e.kind, e.host)).collect();
    assert_eq!(history, ["enqueued@gpu-a", "claimed@gpu-a", "failed@gpu-a", "retried@gpu-a"]);

    // status: no daemon on this host (exit 3), but every host and the shared queue.
    let (code, stdout, stderr) = cosmos(&home, &config, &["status", "--json"]);
    assert_eq!(code, Some(3), "{stderr}");
    let s: Value = serde_json::from_str(&stdout).expect("status JSON");
    let c = &s["cluster"];
    assert_eq!((c["host_id"].as_str(), c["connected"].as_bool()), (Some("gpu-a"), Some(true)), "{c}");
    assert_eq!(c["database"], format!("cosmos@127.0.0.1:{}/postgres", pg.port));
    assert_eq!(c["queue"], serde_json::json!({"queued": 4, "running": 1, "completed": 0, "failed": 0, "cancelled": 0}), "{c}");
    let hosts: Vec<&str> = c["hosts"].as_array().unwrap().iter().filter_map(|h| h["host_id"].as_str()).collect();
    assert_eq!(hosts, ["gpu-a", "gpu-b"]);
    let hb = &c["hosts"][1];
    assert_eq!((hb["pid"].as_u64(), hb["version"].as_str()), (Some(4242), Some("0.1.0")));
    assert!(hb["seconds_since_heartbeat"].as_f64().is_some_and(|s| (0.0..60.0).contains(&s)), "{hb}");
    assert_eq!(
        hb["slots"],
        serde_json::json!([{"slot": "0", "gpus": [0, 1], "loaded_controls": "edge", "state": "running", "run_id": running}])
    );
    assert_eq!(c["hosts"][0]["slots"][1]["loaded_controls"], "depth");
    let (code, text, _) = cosmos(&home, &config, &["status"]);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("cluster: host gpu-a of 2 host(s) on cosmos@127.0.0.1:"), "{text}");
    assert!(text.contains("queue (shared): 4 queued, 1 running, 0 completed, 0 failed, 0 cancelled"), "{text}");
    assert!(text.contains("host gpu-a (this host): cosmosd 0.1.0 (pid 1717)"), "{text}");
    assert!(text.contains("host gpu-b: cosmosd 0.1.0 (pid 4242), heartbeat "), "{text}");
    assert!(text.contains(&format!("  slot 0: GPU 0,1, loaded edge, running {running}")), "{text}");
    assert!(text.contains("  slot 1: GPU 1, loaded depth, idle"), "{text}");
    assert!(!text.contains("down?"), "both beat just now: {text}");

    // Retrying one of this host's runs whose end it had recorded (failed on host b): queued
    // in the shared queue and here again, so its next end is recorded here when it comes.
    let mine = grep_id(&ok(&home, &config, &["create", "run", &prompt, "--weights", "0", "0", "1", "0"]), "rs_");
    let mut store = Store::open(&home.root().join("state/cosmos.db")).expect("this host's store");
    store.change(&mine, Change::Queue { detail: "queued".into() }).unwrap();
    enqueue_as(&mut a, &mine, "mine", &[Hint::Depth], 99);
    let req = ClaimRequest { slot: "0", loaded: None, max_affinity_wait: Duration::from_secs(3600), lease: Duration::from_secs(600) };
    let c = b.claim(&req).unwrap().expect("the highest priority run");
    assert_eq!(c.run.id, mine);
    b.finish(&mine, c.token, &Outcome::Failed { error: "guardrail".into() }).unwrap();
    store.change(&mine, Change::Start).unwrap();
    store.change(&mine, Change::Fail { error: "guardrail".into() }).unwrap();
    let listed = json(&home, &config, &["list", "runs", "--status", "failed", "--json"]);
    assert_eq!((listed[0]["id"].as_str(), listed[0]["ran_on"].as_str()), (Some(mine.as_str()), Some("gpu-b")), "{listed}");
    assert_eq!(listed[0]["prompt_id"], prompt.as_str(), "this host's record");
    let out = ok(&home, &config, &["retry", &mine]);
    assert!(out.contains(&format!("Queued run {mine} again")), "{out}");
    assert_eq!(a.run(&mine).unwrap().status, RunStatus::Queued);
    assert_eq!(store.run(&mine).unwrap().status, RunStatus::Queued, "this host's record is queued again too");
}

#[test]
fn a_database_that_is_not_there_is_one_clear_error_naming_it() {
    let home = Home::new();
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = cluster_config(&home, &format!("postgres://cosmos:s3cret@127.0.0.1:{port}/queue"), "gpu-a");
    let target = format!("cosmos@127.0.0.1:{port}/queue");
    // The commands wait a few seconds each for the database: run them side by side.
    let commands: Vec<Vec<&str>> = vec![vec!["list", "runs"], vec!["cancel", "rs_aaaaaaaaaaaa"], vec!["status", "--json"]];
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = commands.iter().map(|args| s.spawn(|| cosmos(&home, &config, args))).collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect::<Vec<_>>()
    });
    for (args, (code, stdout, stderr)) in commands.iter().zip(&results) {
        assert_eq!(*code, Some(1), "cosmos {args:?}: {stderr}\n{stdout}");
        assert!(
            stderr.contains(&target) && stderr.contains("is PostgreSQL running there and cluster.database right?"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("s3cret") && !stdout.contains("s3cret"), "the password shows: {stderr}{stdout}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
    // status --json still says what it knows, the database among it.
    let s: Value = serde_json::from_str(&results[2].1).expect("status JSON");
    assert_eq!((s["cluster"]["connected"].as_bool(), s["cluster"]["database"].as_str()), (Some(false), Some(target.as_str())), "{s}");
    assert!(s["cluster"]["error"].as_str().is_some_and(|e| e.contains("cannot reach")), "{s}");
    assert_eq!(s["daemon_running"], false);
}

#[test]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); cargo nextest run --run-ignored all runs it, as CI does"]
fn a_daemon_on_the_shared_queue_is_seen_and_steered_by_the_cli() {
    let Some(pg) = Pg::start() else { return };
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let shared = home.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let extra = format!(
        "backend_args = [\"--job-seconds\", \"8\", \"--load-seconds\", \"0.2\"]\n[daemon]\nstatus_interval = \"300ms\"\n\
         [cluster]\ndatabase = \"{}\"\nshared_dir = \"{}\"\nhost_id = \"gpu-e2e\"\nlease = \"6s\"\n",
        pg.url(),
        shared.display()
    );
    let daemon = Daemon::start(&home, &extra, &[]);
    // `cosmos` reads the daemon's own configuration file.
    let config = home.path().join("cosmosd.toml");
    drop_file(&home, "one.jsonl", &home.jobs("e2e", 1));

    // status: this host in the registry, its slot running the run.
    let mut run_id = String::new();
    let seen = wait_until(Duration::from_secs(60), || {
        let (code, stdout, _) = cosmos(&home, &config, &["status", "--json"]);
        let s: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        let slot = &s["cluster"]["hosts"][0]["slots"][0];
        if code == Some(0) && s["cluster"]["hosts"][0]["host_id"] == "gpu-e2e" && slot["state"] == "running" {
            run_id = slot["run_id"].as_str().unwrap_or_default().to_string();
        }
        !run_id.is_empty()
    });
    assert!(seen, "the slot never showed the run running:\n{}", daemon.log_text());
    let list = json(&home, &config, &["list", "runs", "--json"]);
    let r = by_id(&list, &run_id);
    assert_eq!(
        (r["status"].as_str(), r["origin_host"].as_str(), r["holder"]["host"].as_str()),
        (Some("running"), Some("gpu-e2e"), Some("gpu-e2e")),
        "{r}"
    );
    assert!(r["prompt_id"].as_str().is_some_and(|p| p.starts_with("ps_")), "this host's record: {r}");
    let text = ok(&home, &config, &["status"]);
    assert!(text.contains("host gpu-e2e (this host): cosmosd ") && text.contains(&format!(", running {run_id}")), "{text}");
    assert_eq!(common::status(&home)["cluster"]["hosts"][0]["host_id"], "gpu-e2e", "status.json has the cluster block");

    // cancel through the shared queue: the daemon learns it at its next renewal, stops the
    // run, and records the end here.
    let out = ok(&home, &config, &["cancel", &run_id]);
    assert!(out.contains(&format!("Cancelling run {run_id} (running on gpu-e2e/")), "{out}");
    let ended = wait_until(Duration::from_secs(30), || {
        let v = json(&home, &config, &["show", &run_id, "--json"]);
        v["status"] == "cancelled" && v["local"]["status"] == "cancelled"
    });
    assert!(ended, "the cancel never went through: {}\n{}", json(&home, &config, &["show", &run_id, "--json"]), daemon.log_text());

    // retry: queued again (here too), run again, and its new end recorded and published here.
    let out = ok(&home, &config, &["retry", &run_id]);
    assert!(out.contains(&format!("Queued run {run_id} again")), "{out}");
    let done = wait_until(Duration::from_secs(40), || {
        let v = json(&home, &config, &["show", &run_id, "--json"]);
        v["status"] == "completed" && v["local"]["status"] == "completed"
    });
    assert!(
        done,
        "the retried run's end never reached this host: {}\n{}",
        json(&home, &config, &["show", &run_id, "--json"]),
        daemon.log_text()
    );
    assert!(home.outbox().join(format!("run_{run_id}/output.mp4")).is_file(), "no run folder in the outbox");
    assert!(daemon.stop().success());
}
