//! The attempt logic against an in-memory fake worker: loads per control set, a worker
//! that dies, cancel during a load, a stop during a hung load, failures that are and are
//! not retried, and receipts of large submissions.
//!
//! The fake speaks the protocol as our worker does (worker/cosmos_worker/protocol.py):
//! a `load` is answered by `loaded` (or `load_failed`), a `run` by `progress` events, then
//! `result.json` and the video written into `output_dir`, then `done` (or `failed`); a
//! `ping` is answered at once by `pong` with the worker's state, even mid-load; `cancel`
//! of the running run ends it with `failed` of kind `cancelled`. Ops are handled one at a
//! time, in order, as that worker's main thread does.

use super::*;
use crate::config::Dur;
use crate::runtime::protocol::{Event, FailureKind, Op, Outputs};
use crate::runtime::worker::WorkerInfo;
use crate::spec::{Control, Settings, SpecStyle};
use crate::store::{Change, NewPrompt, PromptInputs, RunStatus};
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

/// What the fake does with a run, by the run's name (its prompt is `prompt of <name>`).
#[derive(Debug, Clone, PartialEq)]
enum OnRun {
    Done,
    Fail {
        kind: FailureKind,
        retryable: bool,
    },
    /// The process dies mid-run (its stream closes).
    Die,
}

/// What the fake does with a load.
#[derive(Debug, Clone, Copy, PartialEq)]
enum OnLoad {
    Loaded,
    /// Never answers (a load stuck on a slow disk): only pings are answered.
    Hang,
}

/// The fake's script and what it was sent, shared by every worker the spawner starts.
#[derive(Default)]
struct Script {
    on_load: Option<OnLoad>,
    /// How many loads without constructor options run out of GPU memory (`load_failed`
    /// of kind `oom`, as our worker reports a CUDA OOM while loading).
    load_ooms: u32,
    /// By run name; a name absent here completes. Each entry is used once, then `Done`.
    on_run: BTreeMap<String, VecDeque<OnRun>>,
    /// Everything sent, as `load:<controls>`, `run:<name>`, `cancel`, `ping`, `kill`,
    /// `leave`, `spawn`.
    log: Vec<String>,
}

type Shared_ = Arc<Mutex<Script>>;

struct FakeWorker {
    script: Shared_,
    events: Mutex<VecDeque<WorkerMsg>>,
    state: &'static str,
    loaded: Option<Vec<String>>,
    dead: bool,
}

impl FakeWorker {
    fn note(&self, what: String) {
        self.script.lock().unwrap().log.push(what);
    }

    fn emit(&self, ev: Event) {
        self.events.lock().unwrap().push_back(WorkerMsg::Event(ev));
    }
}

impl Worker for FakeWorker {
    fn send(&mut self, op: &Op) -> std::result::Result<(), WorkerError> {
        if self.dead {
            return Err(WorkerError::Exited);
        }
        match op {
            Op::Ping => {
                self.note("ping".into());
                self.emit(Event::Pong {
                    state: self.state.into(),
                    run_id: None,
                    controls: self.loaded.clone(),
                    options: None,
                    version: None,
                    pid: Some(1),
                });
            }
            Op::Load { controls, options } => {
                let with = if options.as_object().is_some_and(|o| !o.is_empty()) { format!(" with {options}") } else { String::new() };
                self.note(format!("load:{}{with}", controls.join(",")));
                self.state = "loading";
                let oom = {
                    let mut script = self.script.lock().unwrap();
                    let oom = with.is_empty() && script.load_ooms > 0;
                    script.load_ooms -= u32::from(oom);
                    oom
                };
                if oom {
                    self.state = "idle";
                    self.loaded = None;
                    let message = "CUDA out of memory. Tried to allocate 22.00 GiB".to_string();
                    self.emit(Event::LoadFailed { controls: controls.clone(), message, kind: Some(FailureKind::Oom) });
                    return Ok(());
                }
                if self.script.lock().unwrap().on_load.unwrap_or(OnLoad::Loaded) == OnLoad::Loaded {
                    self.state = "idle";
                    self.loaded = Some(controls.clone());
                    self.emit(Event::Loaded { controls: controls.clone(), seconds: 0.01, options: None });
                }
            }
            Op::Run { run_id, spec, output_dir, .. } => {
                // NVIDIA's spec has no name: the tests' prompts carry it.
                let name = spec["prompt"].as_str().unwrap_or_default().trim_start_matches("prompt of ").to_string();
                self.note(format!("run:{name}"));
                let what = self.script.lock().unwrap().on_run.get_mut(&name).and_then(VecDeque::pop_front).unwrap_or(OnRun::Done);
                self.emit(Event::Progress { run_id: run_id.clone(), step: 1, steps: 2 });
                let event = match what {
                    OnRun::Die => {
                        self.dead = true;
                        self.events.lock().unwrap().push_back(WorkerMsg::Exited);
                        return Ok(());
                    }
                    OnRun::Done => {
                        let video = Path::new(output_dir).join("output.mp4");
                        std::fs::write(&video, b"not really an mp4, but not empty").unwrap();
                        Event::Done {
                            run_id: run_id.clone(),
                            outputs: Outputs { video: Some(video.display().to_string()), ..Default::default() },
                            seconds: 0.01,
                        }
                    }
                    OnRun::Fail { kind, retryable } => {
                        Event::Failed { run_id: run_id.clone(), message: format!("scripted {kind}"), kind, retryable }
                    }
                };
                self.emit(event);
            }
            Op::Cancel { .. } => self.note("cancel".into()),
            Op::Shutdown => self.note("shutdown".into()),
        }
        Ok(())
    }

    fn recv(&self, timeout: Duration) -> Option<WorkerMsg> {
        if let Some(m) = self.events.lock().unwrap().pop_front() {
            return Some(m);
        }
        std::thread::sleep(timeout.min(Duration::from_millis(5)));
        None
    }

    fn kill(&mut self) {
        self.note("kill".into());
        self.dead = true;
    }

    fn info(&self) -> WorkerInfo {
        WorkerInfo { backend: "fake".into(), version: "0".into(), pid: 1, container_id: None }
    }

    fn leave(self: Box<Self>) {
        self.note("leave".into());
    }
}

struct Bench {
    _dir: tempfile::TempDir,
    config: Config,
    store: Store,
    script: Shared_,
}

fn bench() -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.paths.inbox = dir.path().join("inbox");
    config.paths.outbox = dir.path().join("outbox");
    config.paths.state = dir.path().join("state");
    config.runtime.backend = crate::config::Backend::Sim;
    config.outbox.min_free = crate::config::Size(0);
    config.scheduler.cancel_grace = Dur(Duration::from_millis(300));
    config.daemon.stop_grace = Dur(Duration::from_millis(500));
    config.daemon.status_interval = Dur(Duration::from_millis(50));
    std::fs::create_dir_all(&config.paths.state).unwrap();
    let store = Store::open(&config.paths.database()).unwrap();
    Bench { _dir: dir, config, store, script: Arc::default() }
}

fn spec(name: &str, hint: Hint) -> RunSpec {
    let mut controls = BTreeMap::new();
    controls.insert(hint, Control::generated(0.5));
    RunSpec {
        video: None,
        style: SpecStyle::Cli,
        name: Some(name.into()),
        prompt: format!("prompt of {name}"),
        negative_prompt: None,
        visual_input: "/videos/color.mp4".into(),
        controls,
        settings: Settings::default(),
        priority: 0,
        upscale_weight: None,
        sim: None,
    }
}

impl Bench {
    /// Queued runs, oldest first.
    fn queue(&mut self, runs: &[(&str, Hint)]) -> Vec<String> {
        let inputs = PromptInputs { color: "/videos/color.mp4".into(), depth: None, seg: None, edge: None };
        let p = self.store.create_prompt(NewPrompt { name: None, text: "t".into(), negative_prompt: None, inputs }).unwrap();
        runs.iter()
            .map(|(name, hint)| {
                let run = self.store.create_run(&p.id, spec(name, *hint)).unwrap();
                self.store.change(&run.id, Change::Queue { detail: "test".into() }).unwrap();
                run.id
            })
            .collect()
    }

    fn spawner(&self) -> Spawner {
        let script = self.script.clone();
        Box::new(move |_r: &SpawnRequest| {
            script.lock().unwrap().log.push("spawn".into());
            Ok(Box::new(FakeWorker { script: script.clone(), events: Mutex::default(), state: "idle", loaded: None, dead: false })
                as Box<dyn Worker>)
        })
    }

    /// Runs a scheduler until `done` holds of the store (or 20 s pass), then stops it;
    /// returns how long the stop took.
    fn run_until(&self, done: impl FnMut(&Store) -> bool) -> Duration {
        self.run_then_stop(done, |_| {})
    }

    fn run_then_stop(&self, mut done: impl FnMut(&Store) -> bool, before_stop: impl Fn(&Store)) -> Duration {
        let stop = Arc::new(AtomicBool::new(false));
        let sched = Scheduler::with_spawner(&self.config, stop.clone(), 0, None, Shared::new(1), self.spawner()).unwrap();
        let handle = std::thread::spawn(move || sched.run());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(&self.store) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        before_stop(&self.store);
        let asked = Instant::now();
        stop.store(true, Ordering::SeqCst);
        handle.join().unwrap().unwrap();
        asked.elapsed()
    }

    fn log(&self) -> Vec<String> {
        self.script.lock().unwrap().log.iter().filter(|l| l.as_str() != "ping").cloned().collect()
    }

    fn status(&self, id: &str) -> RunStatus {
        self.store.run(id).unwrap().status
    }
}

fn all_ended(ids: &[String]) -> impl Fn(&Store) -> bool + '_ {
    move |s: &Store| {
        ids.iter().all(|id| matches!(s.run(id).unwrap().status, RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled))
    }
}

#[test]
fn one_load_per_control_set_and_every_run_published_whole() {
    let mut b = bench();
    let ids = b.queue(&[("a", Hint::Edge), ("b", Hint::Edge), ("c", Hint::Vis)]);
    b.run_until(all_ended(&ids));
    assert_eq!(b.log(), ["spawn", "load:edge", "run:a", "run:b", "load:vis", "run:c", "leave"]);
    for id in &ids {
        assert_eq!(b.status(id), RunStatus::Completed);
        let folder = b.config.paths.outbox.join(format!("run_{id}"));
        assert!(folder.join("output.mp4").is_file(), "{} has its video", folder.display());
        assert!(folder.join("manifest.json").is_file());
    }
}

#[test]
fn manifests_time_the_model_load_and_carry_the_prompt() {
    let mut b = bench();
    let ids = b.queue(&[("a", Hint::Edge), ("b", Hint::Edge)]);
    b.run_until(all_ended(&ids));
    let manifest = |id: &str| -> Value {
        let text = std::fs::read_to_string(b.config.paths.outbox.join(format!("run_{id}/manifest.json"))).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let (first, second) = (manifest(&ids[0]), manifest(&ids[1]));
    assert_eq!(first["prompt"], "prompt of a");
    assert_eq!(second["prompt"], "prompt of b");
    assert!(first.get("negative_prompt").is_some_and(Value::is_null));
    // The fake's load takes 0.01 s and its runs 0.01 s; the second run reuses the model.
    assert_eq!(first["timings"]["load_seconds"], 0.01);
    assert_eq!(first["timings"]["model_loaded"], true);
    assert_eq!(first["timings"]["total_seconds"], 0.02);
    assert!(second["timings"]["load_seconds"].is_null(), "{second}");
    assert_eq!(second["timings"]["model_loaded"], false);
    assert_eq!(second["timings"]["total_seconds"], second["timings"]["seconds"]);
}

#[test]
fn an_error_that_ends_the_scheduler_hands_its_run_back_first() {
    let mut b = bench();
    let ids = b.queue(&[("a", Hint::Edge)]);
    // The run's work folder cannot be made: a file stands where it goes.
    let work = b.config.paths.state.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join(&ids[0]), b"in the way").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sched = Scheduler::with_spawner(&b.config, stop.clone(), 0, None, Shared::new(1), b.spawner()).unwrap();
    let handle = std::thread::spawn(move || sched.run());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !handle.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    let err = handle.join().unwrap().expect_err("the scheduler ends on the error");
    let output = work.join(&ids[0]).join("output");
    assert!(err.to_string().contains(&output.display().to_string()), "the error names its path: {err}");
    assert!(!err.is_transient());
    let run = b.store.run(&ids[0]).unwrap();
    assert_eq!(run.status, RunStatus::Queued, "handed back before the thread ended");
    assert!(run.error.as_deref().is_some_and(|e| e.starts_with("handed back") && e.contains("cannot create")), "{:?}", run.error);
    assert_eq!(b.log(), ["spawn", "leave"], "the worker is let go; the run never reached it");
}

#[test]
fn a_worker_that_dies_mid_run_is_replaced_and_the_run_retried_with_a_new_load() {
    let mut b = bench();
    b.script.lock().unwrap().on_run.insert("a".into(), VecDeque::from([OnRun::Die]));
    let ids = b.queue(&[("a", Hint::Edge)]);
    b.run_until(all_ended(&ids));
    let run = b.store.run(&ids[0]).unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.attempts, 2);
    // The dead worker's model is gone with it: the new one loads again.
    assert_eq!(b.log(), ["spawn", "load:edge", "run:a", "kill", "spawn", "load:edge", "run:a", "leave"]);
}

#[test]
fn a_failure_not_retryable_fails_the_run_at_once_and_the_queue_goes_on() {
    let mut b = bench();
    b.script.lock().unwrap().on_run.insert("bad".into(), VecDeque::from([OnRun::Fail { kind: FailureKind::Input, retryable: false }]));
    let ids = b.queue(&[("bad", Hint::Edge), ("good", Hint::Edge)]);
    b.run_until(all_ended(&ids));
    let bad = b.store.run(&ids[0]).unwrap();
    assert_eq!((bad.status, bad.attempts), (RunStatus::Failed, 1));
    assert_eq!(bad.error.as_deref(), Some("scripted input"));
    assert_eq!(b.status(&ids[1]), RunStatus::Completed);
    assert_eq!(b.log(), ["spawn", "load:edge", "run:bad", "run:good", "leave"], "one failed run costs no reload");
}

#[test]
fn a_retryable_failure_is_tried_again_after_its_backoff() {
    let mut b = bench();
    b.script.lock().unwrap().on_run.insert("oom".into(), VecDeque::from([OnRun::Fail { kind: FailureKind::Oom, retryable: true }]));
    let ids = b.queue(&[("oom", Hint::Edge)]);
    b.run_until(all_ended(&ids));
    let run = b.store.run(&ids[0]).unwrap();
    assert_eq!((run.status, run.attempts), (RunStatus::Completed, 2));
    let kinds: Vec<String> = b.store.events(&ids[0]).unwrap().into_iter().map(|e| e.kind).collect();
    // An OOM: the retry carries the backend's first memory-saving rung (an event says which).
    assert_eq!(kinds, ["created", "queued", "running", "queued", "remedy", "running", "completed"]);
    let remedy: super::policy::Remedy = serde_json::from_value(b.store.remedy(&ids[0]).unwrap().unwrap()).unwrap();
    assert_eq!(remedy.load.get("offload_text_encoder_model"), Some(&serde_json::Value::Bool(true)), "{remedy:?}");
    assert_eq!(remedy.load.len(), 3, "the sim backend's first rung: guardrail, T5, tokenizer");
    assert_eq!(remedy.steps.len(), 1);
}

#[test]
fn a_model_load_out_of_memory_heals_and_other_options_are_another_load() {
    let mut b = bench();
    b.script.lock().unwrap().load_ooms = 1;
    let ids = b.queue(&[("big", Hint::Edge)]);
    // Once it healed, the same worker gets a run of the same set with no remedy: a load
    // without the options, not the model in hand (constructor options are part of a load).
    let mut store = Store::open(&b.config.paths.database()).unwrap();
    let inputs = PromptInputs { color: "/videos/color.mp4".into(), depth: None, seg: None, edge: None };
    let prompt = store.create_prompt(NewPrompt { name: None, text: "t".into(), negative_prompt: None, inputs }).unwrap();
    let plain = std::cell::RefCell::new(None::<String>);
    b.run_until(|s| {
        if plain.borrow().is_none() && s.run(&ids[0]).unwrap().status == RunStatus::Completed {
            let run = store.create_run(&prompt.id, spec("plain", Hint::Edge)).unwrap();
            store.change(&run.id, Change::Queue { detail: "test".into() }).unwrap();
            *plain.borrow_mut() = Some(run.id);
        }
        plain.borrow().as_ref().is_some_and(|id| s.run(id).unwrap().status == RunStatus::Completed)
    });
    let run = b.store.run(&ids[0]).unwrap();
    assert_eq!((run.status, run.attempts), (RunStatus::Completed, 2), "{:?}", run.error);
    let log = b.script.lock().unwrap().log.clone();
    let loads: Vec<&String> = log.iter().filter(|l| l.starts_with("load:")).collect();
    let with = "load:edge with {\"offload_guardrail_models\":true,\"offload_text_encoder_model\":true,\"offload_tokenizer\":true}";
    assert_eq!(loads, ["load:edge", with, "load:edge"], "one load per set and options");
    assert_eq!(log.iter().filter(|l| *l == "spawn").count(), 1, "one worker throughout: {log:?}");
    let kinds: Vec<String> = b.store.events(&ids[0]).unwrap().into_iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&"remedy".to_string()), "{kinds:?}");
}

#[test]
fn a_run_moved_to_a_larger_group_than_there_is_runs_on_the_largest() {
    let mut b = bench();
    let ids = b.queue(&[("moved", Hint::Edge)]);
    // An OOM under an earlier configuration moved it to a group of 4; this one has 1 GPU.
    b.store.change(&ids[0], Change::Start).unwrap();
    let remedy = serde_json::json!({"load": {}, "run": {}, "min_gpus": 4, "steps": []});
    b.store.retry_with_remedy(&ids[0], "attempt 1 failed (oom)", crate::time::Timestamp::now(), &remedy, 4).unwrap();
    assert!(b.store.queue_candidates_for(None, crate::time::Timestamp::now(), 2).unwrap().head.is_none(), "a group of 2 leaves it");
    assert!(b.store.queue_candidates_for(None, crate::time::Timestamp::now(), 4).unwrap().head.is_some(), "a group of 4 takes it");
    b.run_until(all_ended(&ids));
    assert_eq!(b.status(&ids[0]), RunStatus::Completed);
}

#[test]
fn cancel_during_a_model_load_ends_the_run_cancelled_without_sending_it() {
    let mut b = bench();
    b.script.lock().unwrap().on_load = Some(OnLoad::Hang);
    let ids = b.queue(&[("a", Hint::Edge)]);
    let loading = |s: &Store| s.run(&ids[0]).unwrap().status == RunStatus::Running;
    let mut store = Store::open(&b.config.paths.database()).unwrap();
    let asked = std::cell::Cell::new(None);
    b.run_then_stop(
        |s| {
            if asked.get().is_none() && loading(s) {
                store.request_cancel(&ids[0]).unwrap();
                asked.set(Some(Instant::now()));
            }
            s.run(&ids[0]).unwrap().status == RunStatus::Cancelled
        },
        |_| {},
    );
    let took = asked.get().expect("the load started").elapsed();
    assert_eq!(b.status(&ids[0]), RunStatus::Cancelled);
    // Within cancel_grace (the load is given that long to finish), plus one poll.
    assert!(took < Duration::from_secs(3), "cancel took {took:?}");
    let log = b.log();
    assert!(!log.iter().any(|l| l.starts_with("run:")), "the run was never sent: {log:?}");
    assert!(log.contains(&"kill".to_string()), "the stuck load was ended: {log:?}");
}

#[test]
fn a_stop_during_a_hung_load_hands_the_run_back_within_stop_grace() {
    let mut b = bench();
    b.script.lock().unwrap().on_load = Some(OnLoad::Hang);
    let ids = b.queue(&[("a", Hint::Edge)]);
    let took = b.run_until(|s| s.run(&ids[0]).unwrap().status == RunStatus::Running && s.events(&ids[0]).unwrap().len() >= 3);
    assert!(took < b.config.daemon.stop_grace.0 + Duration::from_secs(2), "the stop took {took:?}");
    let run = b.store.run(&ids[0]).unwrap();
    assert_eq!(run.status, RunStatus::Queued, "handed back to the queue");
    assert!(!b.log().iter().any(|l| l.starts_with("run:")));
}

#[test]
fn receipts_of_large_submissions_wait_and_are_all_written_at_stop() {
    let shared = Shared::new(1);
    shared.mark_receipt("sb_big");
    shared.mark_receipt("sb_big");
    shared.mark_receipt("sb_other");
    assert!(shared.due_receipts(false, Duration::from_secs(60)).is_empty(), "not due yet");
    std::thread::sleep(Duration::from_millis(20));
    let mut due = shared.due_receipts(false, Duration::from_millis(10));
    due.sort();
    assert_eq!(due, ["sb_big", "sb_other"], "each once, however many runs ended");
    assert!(shared.due_receipts(true, Duration::from_secs(60)).is_empty(), "taken: nothing left");
    shared.mark_receipt("sb_big");
    assert_eq!(shared.due_receipts(true, Duration::from_secs(60)), ["sb_big"], "at stop, all at once");
}

/// The scheduler's pick: the store's candidates, then the policy's choice.
fn pick(store: &Store, loaded: Option<&str>, max_wait: Duration) -> Result<Option<crate::store::Run>> {
    let now = crate::time::Timestamp::now();
    Ok(policy::choose_next(store.queue_candidates(loaded, now)?, loaded, now, max_wait))
}

#[test]
fn pick_prefers_the_loaded_control_set_but_never_starves_the_oldest() {
    let mut b = bench();
    let store = &mut b.store;
    let inputs = PromptInputs { color: "/videos/color.mp4".into(), depth: None, seg: None, edge: None };
    let p = store.create_prompt(NewPrompt { name: None, text: "t".into(), negative_prompt: None, inputs }).unwrap();
    let with = |hint: Hint, priority: i32| {
        let mut s = spec("x", Hint::Edge);
        s.controls.clear();
        s.controls.insert(hint, Control::generated(0.5));
        s.priority = priority;
        s
    };
    let a = store.create_run(&p.id, with(Hint::Edge, 0)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let b = store.create_run(&p.id, with(Hint::Vis, 0)).unwrap();
    let hi = store.create_run(&p.id, with(Hint::Depth, 9)).unwrap();
    for id in [&a.id, &b.id] {
        store.change(id, Change::Queue { detail: String::new() }).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let long = std::time::Duration::from_secs(600);
    assert_eq!(pick(store, None, long).unwrap().unwrap().id, a.id, "oldest first");
    assert_eq!(pick(store, Some("vis"), long).unwrap().unwrap().id, b.id, "the loaded set first");
    assert_eq!(pick(store, Some("vis"), std::time::Duration::ZERO).unwrap().unwrap().id, a.id, "unless the oldest waited too long");
    store.change(&hi.id, Change::Queue { detail: String::new() }).unwrap();
    assert_eq!(pick(store, Some("vis"), long).unwrap().unwrap().id, hi.id, "priority beats affinity");
    // A run waiting out its retry backoff is not eligible.
    store.change(&hi.id, Change::Start).unwrap();
    let later = crate::time::Timestamp(crate::time::Timestamp::now().0 + 60_000);
    store.retry_later(&hi.id, "oom", later).unwrap();
    assert_eq!(pick(store, Some("vis"), long).unwrap().unwrap().id, b.id);
}
