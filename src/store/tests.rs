//! The store against a real SQLite file: transitions and their events, prefixes, batches,
//! deletion, submissions seen whole or not at all, listing by status.

use super::*;
use crate::spec::{Control, Settings, SpecStyle};
use std::collections::BTreeMap;

fn spec(prompt: &str) -> RunSpec {
    let mut controls = BTreeMap::new();
    controls.insert(Hint::Edge, Control::generated(0.5));
    RunSpec {
        video: None,
        style: SpecStyle::Cli,
        name: None,
        prompt: prompt.into(),
        negative_prompt: None,
        visual_input: "/v/color.mp4".into(),
        controls,
        settings: Settings::default(),
        priority: 0,
        upscale_weight: None,
        sim: None,
    }
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("cosmos.db")).unwrap();
    (dir, store)
}

fn prompt(store: &mut Store) -> Prompt {
    store
        .create_prompt(NewPrompt {
            name: Some("city1".into()),
            text: "A city".into(),
            negative_prompt: None,
            inputs: PromptInputs { color: "/v/color.mp4".into(), depth: None, seg: None, edge: None },
        })
        .unwrap()
}

#[test]
fn open_sets_wal_and_schema_and_reopens() {
    let (dir, store) = store();
    let mode: String = store.conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(store.schema_version().unwrap(), schema::MIGRATIONS.len() as i64);
    drop(store);
    let again = Store::open(&dir.path().join("cosmos.db")).unwrap();
    assert_eq!(again.schema_version().unwrap(), schema::MIGRATIONS.len() as i64);
}

#[test]
fn a_newer_schema_is_refused() {
    let (dir, store) = store();
    store.conn.pragma_update(None, "user_version", 99).unwrap();
    drop(store);
    let err = Store::open(&dir.path().join("cosmos.db")).err().unwrap();
    assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
}

#[test]
fn every_transition_writes_an_event_and_illegal_ones_are_refused() {
    let (_d, mut store) = store();
    let p = prompt(&mut store);
    let run = store.create_run(&p.id, spec("x")).unwrap();
    assert_eq!(run.status, RunStatus::Pending);
    let err = store.change(&run.id, Change::Start).unwrap_err();
    assert!(matches!(err, StoreError::IllegalTransition { from: RunStatus::Pending, to: RunStatus::Running, .. }));
    store.change(&run.id, Change::Queue { detail: "t".into() }).unwrap();
    let r = store.change(&run.id, Change::Start).unwrap();
    assert_eq!(r.attempts, 1);
    let r = store.change(&run.id, Change::Complete { outputs: serde_json::json!({"type": "batch_inference"}) }).unwrap();
    assert_eq!(r.status, RunStatus::Completed);
    assert!(r.finished_at.is_some());
    // A completed run never runs again.
    assert!(store.change(&run.id, Change::Requeue { reason: "again".into() }).is_err());
    assert!(store.queue_batch("again", std::slice::from_ref(&run.id)).is_err());
    let kinds: Vec<String> = store.events(&run.id).unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec!["created", "queued", "running", "completed"]);
    // Events are append-only.
    assert!(store.conn.execute("DELETE FROM events", []).is_err());
    assert!(store.conn.execute("UPDATE events SET kind = 'x'", []).is_err());
}

#[test]
fn prefixes_resolve_uniquely_or_say_which_match() {
    let (_d, mut store) = store();
    let p = prompt(&mut store);
    let a = store.create_run(&p.id, spec("a")).unwrap();
    let b = store.create_run(&p.id, spec("b")).unwrap();
    assert_eq!(store.resolve(IdKind::Run, &a.id[..10]).unwrap_or_default().len(), 15);
    assert_eq!(store.resolve(IdKind::Run, &a.id).unwrap(), a.id);
    match store.resolve(IdKind::Run, "rs_").unwrap_err() {
        StoreError::Ambiguous { count, list, .. } => {
            assert_eq!(count, 2);
            assert!(list.contains(&a.id) && list.contains(&b.id));
        }
        other => panic!("{other}"),
    }
    assert!(matches!(store.resolve(IdKind::Run, "rs_zzzzzzzzzzzz"), Err(StoreError::NotFound { .. })));
    assert!(matches!(store.resolve(IdKind::Run, "rs_BAD"), Err(StoreError::Id(_))));
    assert!(matches!(store.resolve(IdKind::Run, &p.id), Err(StoreError::Refused(_))));
    assert_eq!(store.resolve_any(&p.id[..8]).unwrap(), (IdKind::Prompt, p.id.clone()));
}

#[test]
fn batches_queue_all_or_nothing() {
    let (_d, mut store) = store();
    let p = prompt(&mut store);
    let a = store.create_run(&p.id, spec("a")).unwrap();
    let b = store.create_run(&p.id, spec("b")).unwrap();
    store.queue_single(std::slice::from_ref(&b.id), Some(0.7)).unwrap();
    let err = store.queue_batch("mixed", &[a.id.clone(), b.id.clone()]).unwrap_err();
    assert!(err.to_string().contains("already queued"), "{err}");
    assert_eq!(store.run(&a.id).unwrap().status, RunStatus::Pending, "nothing was queued");
    assert_eq!(store.run(&b.id).unwrap().spec.upscale_weight, Some(0.7));
    let batch = store.queue_batch("urban", std::slice::from_ref(&a.id)).unwrap();
    let a = store.run(&a.id).unwrap();
    assert_eq!(a.status, RunStatus::Queued);
    assert_eq!(a.batch_id.as_deref(), Some(batch.id.as_str()));
    assert!(batch.folder_name().starts_with("batch_urban_"));
    assert_eq!(store.counts().unwrap().queued, 2);
}

#[test]
fn running_runs_are_never_deleted() {
    let (_d, mut store) = store();
    let p = prompt(&mut store);
    let a = store.create_run(&p.id, spec("a")).unwrap();
    store.change(&a.id, Change::Queue { detail: String::new() }).unwrap();
    assert!(store.delete_runs(std::slice::from_ref(&a.id), false).unwrap_err().to_string().contains("--force"));
    store.change(&a.id, Change::Start).unwrap();
    assert!(store.delete_runs(std::slice::from_ref(&a.id), true).unwrap_err().to_string().contains("never deleted"));
    assert!(store.delete_prompts(std::slice::from_ref(&p.id), true).is_err());
    store.change(&a.id, Change::Fail { error: "boom".into() }).unwrap();
    assert!(store.delete_prompts(std::slice::from_ref(&p.id), false).unwrap_err().to_string().contains("--force"));
    store.delete_prompts(std::slice::from_ref(&p.id), true).unwrap();
    assert!(store.run(&a.id).is_err());
    assert!(store.prompt(&p.id).is_err());
    let kinds: Vec<String> = store.events(&a.id).unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds.last().map(String::as_str), Some("deleted"), "the audit trail outlives the run");
}

#[test]
fn a_submission_is_visible_whole_or_not_at_all() {
    let (_d, mut store) = store();
    let job = crate::spec::Job { line: 1, spec: spec("a") };
    {
        let mut w = store.begin_submission("jobs.jsonl", "abc", "jobs").unwrap();
        w.add(&job).unwrap();
        // dropped without commit
    }
    assert_eq!(store.counts().unwrap().queued, 0);
    let mut w = store.begin_submission("jobs.jsonl", "abc", "jobs").unwrap();
    let run_id = w.add(&job).unwrap();
    w.add(&crate::spec::Job { line: 2, spec: spec("b") }).unwrap();
    let (sub, batch) = w.commit().unwrap();
    assert_eq!(sub.runs, 2);
    let run = store.run(&run_id).unwrap();
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(run.submission_id.as_deref(), Some(sub.id.as_str()));
    assert_eq!(run.batch_id.as_deref(), Some(batch.id.as_str()));
    assert_eq!(store.accepted_by_sha256("abc").unwrap().map(|s| s.id), Some(sub.id));
}

#[test]
fn listing_by_status_is_newest_first_whether_the_status_is_common_or_rare() {
    let (_d, mut store) = store();
    let p = prompt(&mut store);
    let mut queued = Vec::new();
    let mut failed = Vec::new();
    for i in 0..40 {
        let run = store.create_run(&p.id, spec(&format!("r{i}"))).unwrap();
        store.change(&run.id, Change::Queue { detail: "t".into() }).unwrap();
        if i % 13 == 5 {
            store.change(&run.id, Change::Start).unwrap();
            store.change(&run.id, Change::Fail { error: "boom".into() }).unwrap();
            failed.push(run.id);
        } else {
            queued.push(run.id);
        }
    }
    let counts = store.counts().unwrap();
    assert_eq!((counts.queued, counts.failed, counts.total()), (37, 3, 40));
    let ids = |runs: Vec<Run>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let newest = |v: &[String], n: usize| v.iter().rev().take(n).cloned().collect::<Vec<_>>();
    // Common: found walking the table; rare: found by the index, then ordered.
    assert_eq!(ids(store.list_runs(Some(RunStatus::Queued), Some(5)).unwrap()), newest(&queued, 5));
    assert_eq!(ids(store.list_runs(Some(RunStatus::Failed), Some(2)).unwrap()), newest(&failed, 2));
    assert_eq!(ids(store.list_runs(Some(RunStatus::Failed), None).unwrap()), newest(&failed, 3));
    assert_eq!(ids(store.list_runs(Some(RunStatus::Queued), None).unwrap()), newest(&queued, 37));
    assert!(store.list_runs(Some(RunStatus::Cancelled), Some(5)).unwrap().is_empty());
    assert_eq!(store.list_runs(None, Some(3)).unwrap().len(), 3);
}

#[test]
fn pause_keeps_the_time_it_was_made() {
    let (_d, mut store) = store();
    assert_eq!(store.paused_since().unwrap(), None);
    store.set_paused(true).unwrap();
    let first = store.paused_since().unwrap().expect("paused since");
    assert!(crate::time::Timestamp::parse_rfc3339(&first).is_some(), "{first}");
    std::thread::sleep(Duration::from_millis(5));
    store.set_paused(true).unwrap();
    assert_eq!(store.paused_since().unwrap(), Some(first), "pausing again keeps the first time");
    store.set_paused(false).unwrap();
    assert_eq!(store.paused_since().unwrap(), None);
    assert!(!store.paused().unwrap());
}

#[test]
fn prune_queries_tell_ended_runs_from_the_rest() {
    let (_d, mut store) = store();
    let p = prompt(&mut store);
    let done = store.create_run(&p.id, spec("done")).unwrap();
    let live = store.create_run(&p.id, spec("live")).unwrap();
    store.queue_single(&[done.id.clone(), live.id.clone()], None).unwrap();
    store.change(&done.id, Change::Start).unwrap();
    store.finish_unsuccessfully(&done.id, Change::Fail { error: "x".into() }).unwrap();
    let later = "9999-01-01T00:00:00.000Z";
    let earlier = "2000-01-01T00:00:00.000Z";
    assert_eq!(store.ended_before(&done.id, later).unwrap(), Some(true));
    assert_eq!(store.ended_before(&done.id, earlier).unwrap(), Some(false), "ended after the cut-off");
    assert_eq!(store.ended_before(&live.id, later).unwrap(), Some(false), "queued runs never");
    assert_eq!(store.ended_before("rs_nosuchrun000000", later).unwrap(), None);
    let mut kept = Vec::new();
    store.for_each_kept_spec(later, |s| kept.push(s.to_string())).unwrap();
    assert_eq!(kept.len(), 1, "only the queued run is kept at a late cut-off");
    assert!(kept[0].contains("live"), "{kept:?}");
    kept.clear();
    store.for_each_kept_spec(earlier, |s| kept.push(s.to_string())).unwrap();
    assert_eq!(kept.len(), 2);
}

#[test]
fn a_run_end_owes_its_hooks_and_the_last_run_its_submission_s() {
    let (_d, mut store) = store();
    let mut w = store.begin_submission("jobs.jsonl", "abc", "jobs").unwrap();
    let a = w.add(&crate::spec::Job { line: 1, spec: spec("a") }).unwrap();
    let b = w.add(&crate::spec::Job { line: 2, spec: spec("b") }).unwrap();
    let (sub, _) = w.commit().unwrap();
    let now = || Timestamp(Timestamp::now().0 + 1000);

    // Handed back before any hook is wanted; then started again.
    store.change(&a, Change::Start).unwrap();
    store.retry_later(&a, "oom", Timestamp(0)).unwrap();
    store.set_hooks_wanted(true, true).unwrap();
    // Not final (back to the queue): nothing owed.
    store.change(&a, Change::Start).unwrap();
    assert!(store.owed_hooks(now(), 10).unwrap().is_empty());

    store.complete(&a, serde_json::json!({"output_dir": "/o/run_a"}), Some(("rs_child00000001", spec("a-up")))).unwrap();
    let owed = store.owed_hooks(now(), 10).unwrap();
    assert_eq!(owed.len(), 1, "run a's hook only: b and a's upscale child are still open: {owed:?}");
    assert_eq!((owed[0].kind, owed[0].subject.as_str(), owed[0].status.as_str()), (OwedKind::Run, a.as_str(), "completed"));

    store.change(&b, Change::Start).unwrap();
    store.finish_unsuccessfully(&b, Change::Fail { error: "bad".into() }).unwrap();
    assert_eq!(store.owed_hooks(now(), 10).unwrap().len(), 2, "the child is still queued: no submission hook yet");
    store.request_cancel("rs_child00000001").unwrap();
    let owed = store.owed_hooks(now(), 10).unwrap();
    let kinds: Vec<_> = owed.iter().map(|o| (o.kind, o.subject.clone())).collect();
    assert_eq!(
        kinds,
        vec![
            (OwedKind::Run, a.clone()),
            (OwedKind::Run, b.clone()),
            (OwedKind::Run, "rs_child00000001".into()),
            (OwedKind::Submission, sub.id.clone())
        ]
    );

    // A round that failed waits for its backoff, keeping what it delivered.
    let first = owed[0].clone();
    let later = Timestamp(Timestamp::now().0 + 60_000);
    let settle = Settle {
        delivered: vec!["on_run".into()],
        attempts: 1,
        not_before: Some(later),
        done: false,
        events: vec![("hook".into(), "webhook http://x failed (HTTP 500, attempt 1)".into())],
    };
    store.settle_hook(first.id, &first.subject, &settle).unwrap();
    let due: Vec<i64> = store.owed_hooks(now(), 10).unwrap().iter().map(|o| o.id).collect();
    assert!(!due.contains(&first.id));
    assert_eq!(store.next_owed_at().unwrap(), Some(later));
    let again = store.owed_hooks(Timestamp(later.0 + 1), 10).unwrap();
    let again = again.iter().find(|o| o.id == first.id).unwrap();
    assert_eq!((again.attempts, again.delivered.clone()), (1, vec!["on_run".to_string()]));
    assert!(store.events(&a).unwrap().iter().any(|e| e.kind == "hook" && e.detail.as_deref().unwrap_or("").contains("HTTP 500")));

    // Done: never due again; the submission's outcome is in its own events.
    for o in store.owed_hooks(Timestamp(later.0 + 1), 10).unwrap() {
        let settle = Settle { done: true, attempts: 1, events: vec![("hook".into(), format!("ok {}", o.subject))], ..Default::default() };
        store.settle_hook(o.id, &o.subject, &settle).unwrap();
    }
    assert!(store.owed_hooks(Timestamp(later.0 + 1), 10).unwrap().is_empty());
    assert_eq!(store.next_owed_at().unwrap(), None);
    assert!(store.events(&sub.id).unwrap().iter().any(|e| e.kind == "hook"));

    // Hooks turned off: the next end owes nothing.
    store.set_hooks_wanted(false, false).unwrap();
    store.change(&b, Change::Queue { detail: "retry".into() }).unwrap();
    store.change(&b, Change::Start).unwrap();
    store.finish_unsuccessfully(&b, Change::Fail { error: "bad".into() }).unwrap();
    assert!(store.owed_hooks(Timestamp(later.0 + 1), 10).unwrap().is_empty());
}

#[test]
fn the_cluster_exporter_sees_new_and_requeued_runs_and_an_end_elsewhere_is_recorded_once() {
    let (_d, mut store) = store();
    let p = prompt(&mut store);
    let a = store.create_run(&p.id, spec("a")).unwrap();
    let b = store.create_run(&p.id, spec("b")).unwrap();
    let start = store.last_event_seq().unwrap();
    store.queue_single(std::slice::from_ref(&a.id), None).unwrap();
    // New rows after a watermark: only the queued ones.
    let rows = store.queued_after(0, 10).unwrap();
    assert_eq!(rows.iter().map(|(_, r)| r.id.as_str()).collect::<Vec<_>>(), [a.id.as_str()]);
    let (mark, _) = rows[0];
    assert!(store.queued_after(mark, 10).unwrap().is_empty(), "nothing after the last one");
    // Queued later (batch-inference of a pending run): seen by its event, not its row.
    store.queue_batch("later", std::slice::from_ref(&b.id)).unwrap();
    let (last, again) = store.queued_again_after(start, 10).unwrap();
    assert_eq!(again.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), [a.id.as_str(), b.id.as_str()]);
    assert!(store.queued_again_after(last, 10).unwrap().1.is_empty());

    // Ended on another host: recorded with the host, its attempts, its child; once.
    let end = EndedElsewhere::Completed {
        outputs: serde_json::json!({"output_dir": "/o/run_a", "ran_on": "h2"}),
        child: Some(Box::new(("rs_aaaaaaaaaaaa".to_string(), spec("child")))),
    };
    let done = store.end_elsewhere(&a.id, "h2", 2, &end).unwrap().expect("recorded");
    assert_eq!((done.status, done.attempts), (RunStatus::Completed, 2));
    assert!(store.end_elsewhere(&a.id, "h2", 2, &end).unwrap().is_none(), "recorded once");
    let child = store.run("rs_aaaaaaaaaaaa").unwrap();
    assert_eq!((child.status, child.parent_id.as_deref()), (RunStatus::Queued, Some(a.id.as_str())));
    let kinds: Vec<String> = store.events(&a.id).unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["created", "queued", "running", "completed"]);
    let failed = store.end_elsewhere(&b.id, "h3", 1, &EndedElsewhere::Failed { error: "boom".into() }).unwrap().expect("recorded");
    assert_eq!((failed.status, failed.error.as_deref()), (RunStatus::Failed, Some("boom")));
    assert_eq!(store.counts().unwrap().completed, 1);
}

/// A batch of many rows, encoded into one shared buffer with a reused scratch: every row
/// must come back as it went in, whatever the rows before it held.
#[test]
fn prepared_rows_come_back_exactly_as_they_went_in() {
    let (_d, mut store) = store();
    let mut jobs = Vec::new();
    for i in 0..(ROWS_PER_INSERT * 2 + 5) {
        let mut s = spec(&format!("prompt {i} \"quoted\" ünïcode"));
        if i % 2 == 0 {
            s.name = Some(format!("job-{i}"));
            s.negative_prompt = Some("blurry".into());
            s.controls.insert(Hint::Depth, Control::from_file(0.25, "/v/depth.mp4".into()));
        }
        s.priority = (i % 3) as i32;
        jobs.push(crate::spec::Job { line: i as u64 + 1, spec: s });
    }
    let mut batch = PreparedRuns::default();
    let mut ids = Vec::new();
    for job in &jobs {
        let id = ids::new_id(IdKind::Run);
        batch.push(&id, job).unwrap();
        ids.push(id);
    }
    let mut w = store.begin_submission("jobs.jsonl", "abc", "jobs").unwrap();
    w.add_prepared(&batch).unwrap();
    w.commit().unwrap();
    for (id, job) in ids.iter().zip(&jobs) {
        let run = store.run(id).unwrap();
        assert_eq!(run.spec, job.spec);
        assert_eq!(run.name, job.spec.name);
        assert_eq!(run.control_set, job.spec.control_set());
        assert_eq!(run.priority, job.spec.priority);
        assert_eq!(run.line, Some(job.line));
        let prompt = store.prompt(&run.prompt_id).unwrap();
        assert_eq!(prompt.prompt, job.spec.prompt);
        assert_eq!(prompt.negative_prompt, job.spec.negative_prompt);
        assert_eq!(prompt.inputs, inputs_of(&job.spec));
        assert_eq!(prompt.inputs.depth.is_some(), job.spec.controls.contains_key(&Hint::Depth));
    }
}

/// `open_runs` (migration 8) against the truth, a count over the runs, after every kind of
/// change: starts, ends, a retry, an upscale child, a cancel, a deletion.
#[test]
fn a_submissions_open_run_count_follows_every_change() {
    let (_d, mut store) = store();
    let mut w = store.begin_submission("jobs.jsonl", "abc", "jobs").unwrap();
    let runs: Vec<String> = (0..4).map(|i| w.add(&crate::spec::Job { line: i + 1, spec: spec("p") }).unwrap()).collect();
    let (sub, _) = w.commit().unwrap();
    let check = |store: &Store, want: i64| {
        let counted: i64 = store.conn.query_row("SELECT open_runs FROM submissions WHERE id = ?1", [&sub.id], |r| r.get(0)).unwrap();
        let truth: i64 = store
            .conn
            .query_row(
                "SELECT count(*) FROM runs WHERE submission_id = ?1 AND status IN ('pending', 'queued', 'running')",
                [&sub.id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!((counted, truth), (want, want));
    };
    check(&store, 4);
    store.change(&runs[0], Change::Start).unwrap();
    check(&store, 4);
    store.complete(&runs[0], serde_json::json!({"output_dir": "/o/a"}), Some(("rs_child00000001", spec("up")))).unwrap();
    check(&store, 4); // a ended, its upscale child is queued
    store.change(&runs[1], Change::Start).unwrap();
    store.finish_unsuccessfully(&runs[1], Change::Fail { error: "bad".into() }).unwrap();
    check(&store, 3);
    store.change(&runs[1], Change::Queue { detail: "retry".into() }).unwrap();
    check(&store, 4);
    store.request_cancel("rs_child00000001").unwrap();
    check(&store, 3);
    store.delete_runs(std::slice::from_ref(&runs[2]), true).unwrap(); // queued: needs force
    check(&store, 2);
    store.delete_runs(std::slice::from_ref(&runs[0]), false).unwrap();
    check(&store, 2); // an ended run's deletion changes nothing
}

/// A store made before migration 8 gets its open-run counts from its runs, and loses the
/// index they replace.
#[test]
fn migration_8_counts_the_open_runs_of_an_existing_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cosmos.db");
    {
        let conn = Connection::open(&path).unwrap();
        for sql in &schema::MIGRATIONS[..7] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 7).unwrap();
        conn.execute_batch(
            "INSERT INTO prompts (id, text, inputs, created_at) VALUES ('ps_a', 't', '{}', 'now');
             INSERT INTO submissions (id, file, sha256, status, runs, received_at) VALUES
                 ('sb_a', 'a.jsonl', 'x', 'accepted', 3, 'now'), ('sb_b', 'b.jsonl', 'y', 'accepted', 1, 'now');",
        )
        .unwrap();
        for (id, sb, status) in
            [("rs_1", "sb_a", "queued"), ("rs_2", "sb_a", "running"), ("rs_3", "sb_a", "failed"), ("rs_4", "sb_b", "completed")]
        {
            conn.execute(
                "INSERT INTO runs (id, prompt_id, status, spec, control_set, submission_id, created_at, updated_at) \
                 VALUES (?1, 'ps_a', ?3, '{}', 'edge', ?2, 'now', 'now')",
                [id, sb, status],
            )
            .unwrap();
        }
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), schema::MIGRATIONS.len() as i64);
    let open = |sb: &str| -> i64 { store.conn.query_row("SELECT open_runs FROM submissions WHERE id = ?1", [sb], |r| r.get(0)).unwrap() };
    assert_eq!((open("sb_a"), open("sb_b")), (2, 0));
    let index: i64 =
        store.conn.query_row("SELECT count(*) FROM sqlite_master WHERE name = 'runs_open_by_submission'", [], |r| r.get(0)).unwrap();
    assert_eq!(index, 0);
    let page: i64 = store.conn.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    assert_eq!(page, 4096, "an existing store keeps its page size");
    store.tune_for_intake().unwrap();
    let pages: i64 = store.conn.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0)).unwrap();
    assert_eq!(pages * page, 256 << 20);
}

#[test]
fn a_new_store_has_32_kib_pages_and_checkpoints_at_256_mib() {
    let (_d, store) = store();
    let page: i64 = store.conn.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    assert_eq!(page, PAGE_SIZE);
    store.tune_for_intake().unwrap();
    let pages: i64 = store.conn.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0)).unwrap();
    assert_eq!(pages * page, 256 << 20);
}
