//! The shared queue on a real PostgreSQL (src/cluster): idempotent enqueue, claims from
//! many connections at once, the scheduler's order, leases, fencing, the reaper, cancel
//! and retry across hosts, the host registry, LISTEN/NOTIFY, and a database restart.
//! Each test makes its own instance (tests/common/pg.rs).

#[path = "common/pg.rs"]
mod pg;

use cosmos_workflow::cluster::{ClaimRequest, ClusterError, Enqueued, HostBeat, NewRun, Outcome, PgQueue, SlotBeat, Token, Wake};
use cosmos_workflow::spec::{Control, Hint, RunSpec, Settings, SpecStyle};
use cosmos_workflow::store::RunStatus;
use cosmos_workflow::time::Timestamp;
use pg::Pg;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

fn queue(pg: &Pg, host: &str) -> PgQueue {
    PgQueue::connect(&pg.url(), host).expect("connect to the queue")
}

fn enqueue_one(q: &mut PgQueue, id: &str, hints: &[Hint], priority: i32) {
    let s = spec(id, hints, priority);
    let got = q.enqueue(&[NewRun { id, spec: &s, created_at: Timestamp::now(), parent_id: None, home: None }]).expect("enqueue");
    assert_eq!(got, [Enqueued::Added], "{id}");
}

fn req<'a>(slot: &'a str, loaded: Option<&'a str>, wait: Duration) -> ClaimRequest<'a> {
    ClaimRequest { slot, loaded, max_affinity_wait: wait, lease: Duration::from_secs(60) }
}

fn done() -> Outcome {
    Outcome::Completed { outputs: serde_json::json!({"video": "output.mp4"}), child: None }
}

const HOUR: Duration = Duration::from_secs(3600);

#[test]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); cargo nextest run --run-ignored all runs it, as CI does"]
fn the_schema_is_made_once_by_hosts_starting_together_and_a_newer_one_is_refused() {
    let Some(pg) = Pg::start() else { return };
    let url = pg.url();
    let hosts: Vec<_> = (0..6)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || PgQueue::connect(&url, &format!("h{i}")).map(|_| ()))
        })
        .collect();
    for h in hosts {
        h.join().expect("thread").expect("every host connects and migrates");
    }
    let mut c = pg.client();
    let versions: Vec<i32> = c.query("SELECT version FROM cosmos_schema", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(versions, [cosmos_workflow::cluster::SCHEMA_VERSION], "one row, the current version");
    // Connecting again changes nothing and keeps the data.
    let mut q = queue(&pg, "h0");
    enqueue_one(&mut q, "rs_keep", &[Hint::Edge], 0);
    drop(queue(&pg, "h1"));
    assert_eq!(q.run("rs_keep").unwrap().status, RunStatus::Queued);

    c.execute("UPDATE cosmos_schema SET version = 99", &[]).unwrap();
    let err = PgQueue::connect(&url, "h9").err().expect("a newer schema is refused");
    let text = err.to_string();
    assert!(matches!(err, ClusterError::TooNew { found: 99, .. }), "{text}");
    assert!(text.contains("upgrade cosmos-workflow") && text.contains(&format!("cosmos@127.0.0.1:{}", pg.port)), "{text}");
}

#[test]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); cargo nextest run --run-ignored all runs it, as CI does"]
fn enqueue_is_idempotent_across_hosts() {
    let Some(pg) = Pg::start() else { return };
    let (mut a, mut b) = (queue(&pg, "host-a"), queue(&pg, "host-b"));
    let first = spec("first", &[Hint::Vis, Hint::Edge], 3);
    let other = spec("other", &[Hint::Depth], 9);
    let run = |id, s| NewRun { id, spec: s, created_at: Timestamp::now(), parent_id: None, home: None };
    assert_eq!(a.enqueue(&[run("rs_1", &first), run("rs_2", &first)]).unwrap(), [Enqueued::Added, Enqueued::Added]);
    // The same id again, from another host and with another spec: nothing changes.
    assert_eq!(b.enqueue(&[run("rs_1", &other), run("rs_3", &other)]).unwrap(), [Enqueued::AlreadyThere, Enqueued::Added]);
    assert_eq!(a.enqueue(&[run("rs_1", &first)]).unwrap(), [Enqueued::AlreadyThere]);
    let r1 = b.run("rs_1").unwrap();
    assert_eq!((r1.priority, r1.control_set.as_str(), r1.origin_host.as_str()), (3, "vis,edge", "host-a"));
    assert_eq!(r1.spec, first, "the spec survives the round trip through jsonb");
    assert_eq!(b.run("rs_3").unwrap().origin_host, "host-b");
    assert_eq!(a.counts().unwrap().queued, 3);
    let kinds: Vec<String> = a.events("rs_1").unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["enqueued"], "one enqueue recorded");
    let orphan = NewRun { id: "rs_orphan", spec: &first, created_at: Timestamp::now(), parent_id: Some("rs_missing"), home: None };
    let err = a.enqueue(&[run("rs_4", &first), orphan]).expect_err("a parent must be in the queue");
    assert!(err.is_usage() && err.to_string().contains("rs_missing"), "{err}");
    assert!(matches!(a.run("rs_4"), Err(ClusterError::NotFound(_))), "all or none: rs_4 was not added either");
    assert!(matches!(a.run("rs_nope"), Err(ClusterError::NotFound(_))));
    assert_eq!(a.resolve("rs_3").unwrap(), "rs_3");
    assert!(matches!(a.resolve("rs_"), Err(ClusterError::Ambiguous { count: 3, .. })));
}

#[test]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); cargo nextest run --run-ignored all runs it, as CI does"]
fn concurrent_claims_never_give_one_run_twice() {
    let Some(pg) = Pg::start() else { return };
    const RUNS: usize = 300;
    const SLOTS: usize = 8;
    let mut q = queue(&pg, "intake");
    let sets: [&[Hint]; 3] = [&[Hint::Edge], &[Hint::Vis, Hint::Depth], &[Hint::Seg]];
    let specs: Vec<RunSpec> = (0..RUNS).map(|i| spec(&format!("r{i}"), sets[i % 3], (i % 4) as i32)).collect();
    let ids: Vec<String> = (0..RUNS).map(|i| format!("rs_{i:04}")).collect();
    let runs: Vec<NewRun> =
        ids.iter().zip(&specs).map(|(id, s)| NewRun { id, spec: s, created_at: Timestamp::now(), parent_id: None, home: None }).collect();
    q.enqueue(&runs).unwrap();

    let url = pg.url();
    let threads: Vec<_> = (0..SLOTS)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut q = PgQueue::connect(&url, &format!("host{}", i % 3)).expect("connect");
                let slot = format!("gpu{i}");
                let mut loaded: Option<String> = None;
                let (mut got, mut latencies) = (Vec::new(), Vec::new());
                loop {
                    let t = Instant::now();
                    let claim = q.claim(&req(&slot, loaded.as_deref(), HOUR)).expect("claim");
                    latencies.push(t.elapsed());
                    let Some(c) = claim else { break };
                    loaded = Some(c.run.control_set.clone());
                    q.finish(&c.run.id, c.token, &done()).expect("complete under its own token");
                    got.push((c.run.id, c.token));
                }
                (got, latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut latencies = Vec::new();
    for t in threads {
        let (got, lat) = t.join().expect("slot thread");
        all.extend(got);
        latencies.extend(lat);
    }
    let unique: HashSet<&String> = all.iter().map(|(id, _)| id).collect();
    assert_eq!(all.len(), RUNS, "every run claimed once, none twice");
    assert_eq!(unique.len(), RUNS);
    let tokens: HashSet<Token> = all.iter().map(|(_, t)| *t).collect();
    assert_eq!(tokens.len(), RUNS, "a token per claim");
    let counts = q.counts().unwrap();
    assert_eq!((counts.completed, counts.queued, counts.running), (RUNS as u64, 0, 0));
    for id in ids.iter().step_by(37) {
        let claims = q.events(id).unwrap().iter().filter(|e| e.kind == "claimed").count();
        assert_eq!(claims, 1, "{id}");
    }
    latencies.sort();
    let pct = |p: usize| latencies[(latencies.len() - 1) * p / 100].as_secs_f64() * 1000.0;
    println!("claim latency over {} claims from {SLOTS} connections: p50 {:.2} ms, p99 {:.2} ms", latencies.len(), pct(50), pct(99));
}

#[test]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); cargo nextest run --run-ignored all runs it, as CI does"]
fn claims_follow_priority_then_affinity_then_age_and_max_affinity_wait() {
    let Some(pg) = Pg::start() else { return };
    let mut q = queue(&pg, "h");
    let take = |q: &mut PgQueue, loaded: Option<&str>, wait: Duration| -> Option<String> {
        let c = q.claim(&req("gpu0", loaded, wait)).unwrap()?;
        q.finish(&c.run.id, c.token, &done()).unwrap();
        Some(c.run.id)
    };
    // Age, and the loaded set before age.
    enqueue_one(&mut q, "rs_a_vis", &[Hint::Vis], 0);
    enqueue_one(&mut q, "rs_b_edge", &[Hint::Edge], 0);
    enqueue_one(&mut q, "rs_c_vis", &[Hint::Vis], 0);
    enqueue_one(&mut q, "rs_d_edge", &[Hint::Edge], 0);
    assert_eq!(take(&mut q, None, HOUR).as_deref(), Some("rs_a_vis"), "nothing loaded: the oldest");
    assert_eq!(take(&mut q, Some("edge"), Duration::MAX).as_deref(), Some("rs_b_edge"), "the loaded set first (no wait is too long)");
    assert_eq!(take(&mut q, Some("edge"), HOUR).as_deref(), Some("rs_d_edge"), "still the loaded set, past an older run");
    assert_eq!(take(&mut q, Some("edge"), HOUR).as_deref(), Some("rs_c_vis"), "none of the loaded set left: the head");
    assert_eq!(take(&mut q, Some("edge"), HOUR), None, "an empty queue");

    // Priority before affinity.
    enqueue_one(&mut q, "rs_low_edge", &[Hint::Edge], 0);
    enqueue_one(&mut q, "rs_high_vis", &[Hint::Vis], 5);
    assert_eq!(take(&mut q, Some("edge"), HOUR).as_deref(), Some("rs_high_vis"));
    assert_eq!(take(&mut q, Some("edge"), HOUR).as_deref(), Some("rs_low_edge"));

    // No starvation: once the head waited past max_affinity_wait it goes first.
    enqueue_one(&mut q, "rs_old_vis", &[Hint::Vis], 0);
    enqueue_one(&mut q, "rs_new_edge", &[Hint::Edge], 0);
    let wait = Duration::from_secs(1);
    let c = q.claim(&req("gpu0", Some("edge"), wait)).unwrap().expect("a run");
    assert_eq!(c.run.id, "rs_new_edge", "the head has not waited 1s yet");
    let back = q.finish(&c.run.id, c.token, &Outcome::HandBack { reason: "test".into() }).unwrap();
    assert_eq!(back.attempts, 0, "a hand-back is not an attempt");
    assert_eq!(back.queued_at, c.run.queued_at, "a requeued run keeps its place by age");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(take(&mut q, Some("edge"), wait).as_deref(), Some("rs_old_vis"), "the head waited too long");
    assert_eq!(take(&mut q, Some("edge"), wait).as_deref(), Some("rs_new_edge"));

    // A retry waits out its backoff.
    enqueue_one(&mut q, "rs_retry", &[Hint::Edge], 0);
    let c = q.claim(&req("gpu0", None, HOUR)).unwrap().expect("a run");
    let after = Duration::from_millis(500);
    let back = q.finish(&c.run.id, c.token, &Outcome::Retry { reason: "oom".into(), after }).unwrap();
    assert_eq!((back.status, back.error.as_deref()), (RunStatus::Queued, Some("oom")));
    assert!(back.not_before.is_some());
    assert_eq!(take(&mut q, None, HOUR), None, "not before its backoff has passed");
    std::thread::sleep(after + Duration::from_millis(100));
    let c = q.claim(&req("gpu0", None, HOUR)).unwrap().expect("after the backoff");
    assert_eq!((c.run.id.as_str(), c.run.attempts), ("rs_retry", 2));
    q.finish(&c.run.id, c.token, &done()).unwrap();

    // An upscale child waits for its parent, whatever its priority.
    let (ps, cs) = (spec("parent", &[Hint::Edge], 0), spec("child", &[Hint::Upscale], 9));
    q.enqueue(&[
        NewRun { id: "rs_parent", spec: &ps, created_at: Timestamp::now(), parent_id: None, home: None },
        NewRun { id: "rs_child", spec: &cs, created_at: Timestamp::now(), parent_id: Some("rs_parent"), home: None },
    ])
    .unwrap();
    let p = q.claim(&req("gpu0", Some("upscale"), HOUR)).unwrap().expect("the parent");
    assert_eq!(p.run.id, "rs_parent");
    assert!(q.claim(&req("gpu1", None, HOUR)).unwrap().is_none(), "the child waits while its parent runs");
    let grandchild = spec("grandchild", &[Hint::Upscale], 0);
    q.finish(
        &p.run.id,
        p.token,
        &Outcome::Completed { outputs: serde_json::json!({}), child: Some(Box::new(("rs_up".into(), grandchild))) },
    )
    .unwrap();
    assert_eq!(take(&mut q, None, HOUR).as_deref(), Some("rs_child"), "parent completed: the child may start");
    let up = q.run("rs_up").unwrap();
    assert_eq!(
        (up.status, up.parent_id.as_deref(), up.control_set.as_str(), up.origin_host.as_str()),
        (RunStatus::Queued, Some("rs_parent"), "upscale", "h")
    );
    assert_eq!(take(&mut q, None, HOUR).as_deref(), Some("rs_up"));
}

#[test]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); cargo nextest run --run-ignored all runs it, as CI does"]
fn a_lapsed_lease_is_reaped_and_its_late_holder_is_fenced() {
    let Some(pg) = Pg::start() else { return };
    let (mut a, mut b) = (queue(&pg, "host-a"), queue(&pg, "host-b"));
    enqueue_one(&mut a, "rs_lapse", &[Hint::Edge], 0);
    let short = ClaimRequest { slot: "gpu0", loaded: None, max_affinity_wait: HOUR, lease: Duration::from_millis(300) };
    let first = a.claim(&short).unwrap().expect("a claims");
    assert!(!a.renew("rs_lapse", first.token, HOUR).unwrap(), "renewed, no cancel");
    assert!(b.reap(3).unwrap().is_empty(), "a live lease is not reaped");
    // Its last renewal is a short one; then host a stops renewing (crash, SIGSTOP,
    // partition) and the lease lapses.
    assert!(!a.renew("rs_lapse", first.token, Duration::from_millis(200)).unwrap());
    std::thread::sleep(Duration::from_millis(400));
    let reaped = b.reap(3).unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!((reaped[0].run_id.as_str(), reaped[0].host.as_str(), reaped[0].token), ("rs_lapse", "host-a", first.token));
    assert_eq!(reaped[0].requeued_after, Some(Duration::from_secs(1)), "the retry backoff of a first attempt");
    assert!(b.reap(3).unwrap().is_empty(), "reaped once");
    let queued = b.run("rs_lapse").unwrap();
    assert_eq!((queued.status, queued.holder.is_none()), (RunStatus::Queued, true));

    // The late holder is refused: renew and finish alike.
    let err = a.renew("rs_lapse", first.token, Duration::from_secs(60)).expect_err("stale renew");
    assert!(matches!(err, ClusterError::Fenced { .. }) && err.to_string().contains("lapsed"), "{err}");
    let err = a.finish("rs_lapse", first.token, &done()).expect_err("stale complete");
    assert!(err.to_string().contains("must be discarded"), "{err}");

    // After the backoff another host runs it under a newer token; the old one stays refused.
    std::thread::sleep(Duration::from_millis(1100));
    let second = b.claim(&req("gpu3", None, HOUR)).unwrap().expect("b claims it again");
    assert!(second.token > first.token, "tokens only grow");
    assert_eq!(second.run.attempts, 2);
    let err = a.finish("rs_lapse", first.token, &done()).expect_err("still stale");
    assert!(err.to_string().contains("claimed again, by host-b slot gpu3"), "{err}");
    let finished = b.finish("rs_lapse", second.token, &done()).unwrap();
    assert_eq!((finished.status, finished.ran_on.as_deref()), (RunStatus::Completed, Some("host-b")));
    // The same finish told again (its answer lost with a connection) is recognised.
    assert_eq!(b.finish("rs_lapse", second.token, &done()).unwrap().status, RunStatus::Completed);
    let err = a.finish("rs_lapse", first.token, &Outcome::Failed { error: "late".into() }).expect_err("no overwrite");
    assert!(err.to_string().contains("is completed"), "{err}");
    assert_eq!(b.run("rs_lapse").unwrap().outputs, Some(serde_json::json!({"video": "output.mp4"})));

    // Out of attempts, a lapse fails the run.
    enqueue_one(&mut a, "rs_once", &[Hint::Edge], 0);
    let c = a.claim(&short).unwrap().expect("claim");
    std::thread::sleep(Duration::from_millis(500));
    let reaped = b.reap(1).unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].requeued_after, None);
    let failed = b.run("rs_once").unwrap();
    assert_eq!(failed.status, RunStatus::Failed);
    let error = failed.error.unwrap_or_default();
    assert!(error.contains("lease of host-a slot gpu0") && error.contains("after 1 attempts"), "{error}");
    assert!(a.finish("rs_once", c.token, &done()).is_err());
    let kinds: Vec<String> = b.events("rs_lapse").unwrap().into_iter().map(|e| format!("{}@{}", e.kind, e.host)).collect();
    assert_eq!(kinds, ["enqueued@host-a", "claimed@host-a", "lease_lapsed@host-b", "claimed@host-b", "completed@host-b"]);
}

#[test]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); cargo nextest run --run-ignored all runs it, as CI does"]
fn renewal_carries_cancel_and_cancel_and_retry_work_across_hosts() {
    let Some(pg) = Pg::start() else { return };
    let (mut gpu_host, mut cli) = (queue(&pg, "gpu-host"), queue(&pg, "laptop"));
    enqueue_one(&mut gpu_host, "rs_run", &[Hint::Edge], 0);
    let c = gpu_host.claim(&req("gpu0", None, HOUR)).unwrap().expect("claim");
    // Restarted, the host finds what it holds, with the tokens to finish or hand it back.
    let mut restarted = queue(&pg, "gpu-host");
    let held: Vec<(String, Token)> = restarted.held_here().unwrap().into_iter().map(|c| (c.run.id, c.token)).collect();
    assert_eq!(held, [("rs_run".to_string(), c.token)]);
    assert!(cli.held_here().unwrap().is_empty(), "another host holds nothing");
    assert!(!gpu_host.renew("rs_run", c.token, HOUR).unwrap());
    assert_eq!(cli.cancel("rs_run").unwrap(), RunStatus::Running, "a running run is marked");
    assert!(cli.run("rs_run").unwrap().cancel_requested);
    assert!(gpu_host.renew("rs_run", c.token, HOUR).unwrap(), "the renewal carries the cancel");
    let r = gpu_host.finish("rs_run", c.token, &Outcome::Cancelled).unwrap();
    assert_eq!(r.status, RunStatus::Cancelled);

    let again = cli.retry("rs_run").unwrap();
    assert_eq!((again.status, again.attempts, again.cancel_requested, again.error), (RunStatus::Queued, 0, false, None));
    let c2 = gpu_host.claim(&req("gpu0", None, HOUR)).unwrap().expect("claimable again");
    assert!(c2.token > c.token);
    assert!(!gpu_host.renew("rs_run", c2.token, HOUR).unwrap(), "a retried run starts without the old cancel");
    assert!(matches!(gpu_host.finish("rs_run", c.token, &done()), Err(ClusterError::Fenced { .. })), "the old token is dead");
    gpu_host.finish("rs_run", c2.token, &Outcome::Failed { error: "bad prompt".into() }).unwrap();
    let err = cli.cancel("rs_run").expect_err("a failed run cannot be cancelled");
    assert!(err.is_usage() && err.to_string().contains("is failed"), "{err}");

    // A queued run is cancelled at once, its waiting child with it; neither is claimed.
    let (ps, cs) = (spec("p", &[Hint::Vis], 0), spec("c", &[Hint::Upscale], 0));
    cli.enqueue(&[
        NewRun { id: "rs_p", spec: &ps, created_at: Timestamp::now(), parent_id: None, home: None },
        NewRun { id: "rs_c", spec: &cs, created_at: Timestamp::now(), parent_id: Some("rs_p"), home: None },
    ])
    .unwrap();
    assert_eq!(cli.cancel("rs_p").unwrap(), RunStatus::Cancelled);
    let child = cli.run("rs_c").unwrap();
    assert_eq!((child.status, child.error.as_deref()), (RunStatus::Cancelled, Some("parent run rs_p was cancelled")));
    assert!(gpu_host.claim(&req("gpu0", None, HOUR)).unwrap().is_none());
    // Retried, the child is queued again but still waits on its (cancelled) parent.
    assert_eq!(cli.retry("rs_c").unwrap().status, RunStatus::Queued);
    assert!(gpu_host.claim(&req("gpu0", None, HOUR)).unwrap().is_none(), "its parent never completed");
    let err = cli.retry("rs_c").expect_err("a queued run cannot be retried");
    assert!(err.to_string().contains("is queued"), "{err}");

    let listed: Vec<String> = cli.list(Some(RunStatus::Cancelled), None).unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(listed, ["rs_p"]);
    assert_eq!(cli.list(None, Some(2)).unwrap().len(), 2);
    let counts = cli.counts().unwrap();
    assert_eq!((counts.failed, counts.cancelled, counts.queued), (1, 1, 1));
}

#[test]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); cargo nextest run --run-ignored all runs it, as CI does"]
fn hosts_report_their_slots_and_loaded_control_sets() {
    let Some(pg) = Pg::start() else { return };
    let (mut a, mut b) = (queue(&pg, "node-a"), queue(&pg, "node-b"));
    let started = Timestamp::now();
    let slots = [
        SlotBeat { slot: "gpu0", gpus: &[0], loaded_controls: Some("edge"), state: "running", run_id: Some("rs_x") },
        SlotBeat { slot: "gpu1", gpus: &[1], loaded_controls: None, state: "idle", run_id: None },
    ];
    a.heartbeat(&HostBeat { version: "0.1.0", pid: 42, started_at: started, slots: &slots }).unwrap();
    b.heartbeat(&HostBeat { version: "0.1.0", pid: 7, started_at: started, slots: &slots[1..] }).unwrap();
    let hosts = b.hosts().unwrap();
    assert_eq!(hosts.iter().map(|h| h.host_id.as_str()).collect::<Vec<_>>(), ["node-a", "node-b"]);
    assert_eq!(hosts[0].slots.len(), 2);
    assert_eq!(hosts[0].slots[0].loaded_controls.as_deref(), Some("edge"));
    assert_eq!(hosts[0].slots[0].run_id.as_deref(), Some("rs_x"));
    assert_eq!(hosts[0].pid, 42);
    assert!(hosts[0].seconds_since_heartbeat >= 0.0 && hosts[0].seconds_since_heartbeat < 60.0);
    // A later beat replaces the slots: gpu0 is gone.
    a.heartbeat(&HostBeat { version: "0.1.1", pid: 42, started_at: started, slots: &slots[1..] }).unwrap();
    let hosts = b.hosts().unwrap();
    assert_eq!(hosts[0].slots.iter().map(|s| s.slot.as_str()).collect::<Vec<_>>(), ["gpu1"]);
    assert_eq!(hosts[0].version, "0.1.1");
    a.leave().unwrap();
    assert_eq!(b.hosts().unwrap().iter().map(|h| h.host_id.as_str()).collect::<Vec<_>>(), ["node-b"]);
}

#[test]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); cargo nextest run --run-ignored all runs it, as CI does"]
fn notify_wakes_a_waiter_and_the_waker_rides_out_a_restart() {
    let Some(pg) = Pg::start() else { return };
    let mut q = queue(&pg, "h");
    let mut waker = q.waker().unwrap();
    assert_eq!(waker.wait(Duration::from_millis(200)).unwrap(), Wake::TimedOut, "nothing enqueued yet");
    let waiter = std::thread::spawn(move || {
        let got = waker.wait(Duration::from_secs(60)).unwrap();
        (waker, got)
    });
    std::thread::sleep(Duration::from_millis(100));
    enqueue_one(&mut q, "rs_wake", &[Hint::Edge], 0);
    let (mut waker, got) = waiter.join().unwrap();
    assert_eq!(got, Wake::Notified, "woken by the enqueue, not by the 60 s timeout");
    // A repeated enqueue of the same id adds nothing and announces nothing.
    let s = spec("rs_wake", &[Hint::Edge], 0);
    q.enqueue(&[NewRun { id: "rs_wake", spec: &s, created_at: Timestamp::now(), parent_id: None, home: None }]).unwrap();
    assert_eq!(waker.wait(Duration::from_millis(300)).unwrap(), Wake::TimedOut);

    pg.restart("fast");
    let mut seen = Vec::new();
    for _ in 0..20 {
        let w = waker.wait(Duration::from_millis(500)).unwrap();
        let reconnected = w == Wake::Reconnected;
        seen.push(w);
        if reconnected {
            break;
        }
    }
    assert!(matches!(seen.first(), Some(Wake::Disconnected(_))), "the loss is said: {seen:?}");
    assert_eq!(seen.last(), Some(&Wake::Reconnected), "{seen:?}");
    enqueue_one(&mut q, "rs_after", &[Hint::Edge], 0);
    assert_eq!(waker.wait(Duration::from_secs(60)).unwrap(), Wake::Notified, "listening again after the restart");
}

#[test]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); cargo nextest run --run-ignored all runs it, as CI does"]
fn nothing_is_lost_when_the_database_restarts_mid_work() {
    let Some(pg) = Pg::start() else { return };
    const RUNS: usize = 40;
    let mut q = queue(&pg, "intake");
    for i in 0..RUNS {
        enqueue_one(&mut q, &format!("rs_{i:03}"), &[if i % 2 == 0 { Hint::Edge } else { Hint::Vis }], 0);
    }
    let url = pg.url();
    let completed = Arc::new(Mutex::new(Vec::<String>::new()));
    let all_done = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let (url, completed, all_done) = (url.clone(), completed.clone(), all_done.clone());
            std::thread::spawn(move || {
                let mut q = PgQueue::connect(&url, &format!("host{i}")).expect("connect");
                q.reconnect_within(Duration::from_secs(60));
                let lease = Duration::from_secs(2);
                let slot = format!("gpu{i}");
                while !all_done.load(Ordering::SeqCst) {
                    let claim = q
                        .claim(&ClaimRequest { slot: &slot, loaded: None, max_affinity_wait: HOUR, lease })
                        .expect("claim rides out the restart");
                    let Some(c) = claim else {
                        // A claim whose answer was lost leaves a lease nobody renews.
                        q.reap(10).expect("reap");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    };
                    std::thread::sleep(Duration::from_millis(30));
                    match q.renew(&c.run.id, c.token, lease) {
                        Ok(_) => {}
                        Err(ClusterError::Fenced { .. }) => continue,
                        Err(e) => panic!("renew: {e}"),
                    }
                    match q.finish(&c.run.id, c.token, &done()) {
                        Ok(_) => completed.lock().unwrap().push(c.run.id),
                        Err(ClusterError::Fenced { .. }) => {}
                        Err(e) => panic!("finish: {e}"),
                    }
                }
            })
        })
        .collect();
    let wait_for = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while completed.lock().unwrap().len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for(8);
    let before_crash = completed.lock().unwrap().len();
    pg.restart("immediate"); // a crash of the database server, recovered at start-up
    wait_for(20);
    let before_stop = completed.lock().unwrap().len();
    pg.stop("fast");
    std::thread::sleep(Duration::from_secs(1)); // the workers retry against nothing meanwhile
    pg.start_again();
    let mut check = queue(&pg, "checker");
    let deadline = Instant::now() + Duration::from_secs(120);
    while check.counts().unwrap().completed < RUNS as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    all_done.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().expect("a worker panicked");
    }
    assert!(before_crash < RUNS && before_stop < RUNS, "the database went away mid-work ({before_crash}, {before_stop} of {RUNS} done)");
    assert!(pg.log_text().contains("was interrupted"), "the crash was recovered at start-up:\n{}", pg.log_text());
    let counts = check.counts().unwrap();
    assert_eq!((counts.completed, counts.queued, counts.running, counts.failed), (RUNS as u64, 0, 0, 0), "{}", pg.log_text());
    let mut per_run: HashMap<String, usize> = HashMap::new();
    for id in completed.lock().unwrap().iter() {
        *per_run.entry(id.clone()).or_default() += 1;
    }
    assert_eq!(per_run.len(), RUNS, "every run completed");
    assert!(per_run.values().all(|n| *n == 1), "none completed twice: {per_run:?}");
    for i in 0..RUNS {
        let id = format!("rs_{i:03}");
        let finishes = check.events(&id).unwrap().iter().filter(|e| e.kind == "completed").count();
        assert_eq!(finishes, 1, "{id}");
    }
}

#[test]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); cargo nextest run --run-ignored all runs it, as CI does"]
fn the_lease_keeper_renews_carries_cancel_and_says_lost_when_renewals_stop_or_are_refused() {
    use cosmos_workflow::cluster::{LeaseKeeper, LeaseState};
    let Some(pg) = Pg::start() else { return };
    let (mut a, mut b) = (queue(&pg, "host-a"), queue(&pg, "host-b"));
    let keeper = LeaseKeeper::start(queue(&pg, "host-a"), Duration::from_millis(200));
    let lease = Duration::from_millis(1500);
    enqueue_one(&mut a, "rs_kept", &[Hint::Edge], 0);
    let sent = Instant::now();
    let claim = a.claim(&ClaimRequest { slot: "0", loaded: None, max_affinity_wait: HOUR, lease }).unwrap().expect("claim");
    keeper.hold("rs_kept", claim.token, lease, sent);
    // Kept past three leases: the keeper renews it, nobody can reap it.
    std::thread::sleep(lease * 3);
    assert_eq!(keeper.state("rs_kept"), LeaseState::Held { cancel: false });
    assert!(b.reap(3).unwrap().is_empty(), "a kept lease is not reaped");
    // A cancel from another host reaches the holder with a renewal.
    assert_eq!(b.cancel("rs_kept").unwrap(), RunStatus::Running);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(keeper.state("rs_kept"), LeaseState::Held { cancel: true });
    // The database gone: no renewal gets through, and the lease counts as lost before it
    // can have lapsed there.
    pg.stop("fast");
    std::thread::sleep(lease);
    assert!(matches!(keeper.state("rs_kept"), LeaseState::Lost(why) if why.contains("no renewal")), "{:?}", keeper.state("rs_kept"));
    pg.start_again();
    // Lost for good: the keeper does not renew it once the database is back, so the reaper
    // takes it.
    let mut b = queue(&pg, "host-b");
    let mut reaped = Vec::new();
    for _ in 0..50 {
        reaped = b.reap(3).unwrap();
        if !reaped.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(reaped.len(), 1, "the lapsed lease is reaped");
    assert!(matches!(keeper.state("rs_kept"), LeaseState::Lost(_)));
    keeper.release("rs_kept");
    // A lease another host took over is refused at the next renewal.
    enqueue_one(&mut a, "rs_taken", &[Hint::Edge], 0);
    let sent = Instant::now();
    let short = Duration::from_millis(300);
    let claim = a.claim(&ClaimRequest { slot: "0", loaded: None, max_affinity_wait: HOUR, lease: short }).unwrap().expect("claim");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(b.reap(3).unwrap().len(), 1, "lapsed before the keeper held it");
    keeper.hold("rs_taken", claim.token, lease, sent + Duration::from_millis(500));
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        matches!(keeper.state("rs_taken"), LeaseState::Lost(why) if why.contains("no longer current")),
        "{:?}",
        keeper.state("rs_taken")
    );
    assert!(matches!(keeper.state("rs_kept"), LeaseState::Lost(_)), "a lease not held is not ours");
}

#[test]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); cargo nextest run --run-ignored all runs it, as CI does"]
fn ended_runs_are_delivered_to_their_origin_host_once_with_their_home_record_and_remedy() {
    let Some(pg) = Pg::start() else { return };
    let (mut origin, mut runner) = (queue(&pg, "origin"), queue(&pg, "runner"));
    let s = spec("rs_home", &[Hint::Depth], 0);
    let home = serde_json::json!({"prompt_id": "ps_1", "submission": "sb_1", "line": 3, "batch": null});
    origin.enqueue(&[NewRun { id: "rs_home", spec: &s, created_at: Timestamp::now(), parent_id: None, home: Some(&home) }]).unwrap();
    assert!(origin.undelivered(10).unwrap().is_empty(), "nothing ended yet");
    assert!(runner.open_inputs().unwrap().contains(&s.visual_input), "a queued run's input is in use");
    let claim = runner.claim(&req("0", None, HOUR)).unwrap().expect("claim");
    assert_eq!(claim.run.home.as_ref(), Some(&home), "the runner gets the origin's record");
    // An OOM's remedy, kept for the next attempt (by the holder only).
    let remedy = serde_json::json!({"steps": [{"changes": ["offload_text_encoder"]}]});
    runner.set_remedy("rs_home", claim.token, &remedy).unwrap();
    assert!(matches!(origin.set_remedy("rs_home", Token(claim.token.0 + 1000), &remedy), Err(ClusterError::Fenced { .. })));
    runner.finish("rs_home", claim.token, &Outcome::Retry { reason: "oom".into(), after: Duration::ZERO }).unwrap();
    let again = runner.claim(&req("0", None, HOUR)).unwrap().expect("claim again");
    assert_eq!(again.run.remedy.as_ref(), Some(&remedy));
    runner.finish("rs_home", again.token, &done()).unwrap();
    assert!(runner.open_inputs().unwrap().is_empty(), "no open run names an input now");
    assert!(runner.undelivered(10).unwrap().is_empty(), "another host's run is not the runner's to deliver");
    let ended = origin.undelivered(10).unwrap();
    assert_eq!(ended.iter().map(|r| (r.id.as_str(), r.ran_on.as_deref())).collect::<Vec<_>>(), [("rs_home", Some("runner"))]);
    origin.mark_delivered("rs_home").unwrap();
    origin.mark_delivered("rs_home").unwrap();
    assert!(origin.undelivered(10).unwrap().is_empty(), "delivered once");
    let kinds: Vec<String> = origin.events("rs_home").unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "delivered").count(), 1, "{kinds:?}");
    // Pruned once delivered long enough ago, by its origin host only, with its events.
    assert_eq!(runner.prune_delivered(Duration::ZERO).unwrap(), 0, "not the runner's");
    assert_eq!(origin.prune_delivered(HOUR).unwrap(), 0, "delivered just now");
    assert_eq!(origin.prune_delivered(Duration::ZERO).unwrap(), 1);
    assert!(matches!(origin.run("rs_home"), Err(ClusterError::NotFound(_))));
    assert!(origin.events("rs_home").unwrap().is_empty());
}
