//! The scheduler (DESIGN.md section 9): takes queued runs from the store and feeds them,
//! one at a time, to a warm worker; publishes what finished to the outbox.
//!
//! Order: priority, then age; among runs of the same priority, the control set the worker
//! has loaded goes first (one load, many jobs), unless the oldest waiting run has waited
//! longer than `scheduler.max_affinity_wait`. A finished run's folder is published after
//! the next run has been sent, so the GPU never waits for our bookkeeping.
//!
//! Runs on its own thread with its own store connection; `cosmos` changes (queue, cancel,
//! retry, pause) are read from the store every 250 ms.

use crate::config::Config;
use crate::ids::{self, IdKind};
use crate::outbox::{Outbox, WorkerInfo};
use crate::runtime::docker::DockerWorker;
use crate::runtime::process::{LogSink, ProcessWorker, WorkerMsg};
use crate::runtime::protocol::{self, Event, Op, Outputs};
use crate::spec::{nvidia, Control, Hint, RunSpec};
use crate::store::{Change, Run, RunStatus, Store, StoreError};
use crate::time::Timestamp;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(250);
/// How often an idle scheduler looks for queued runs: new work starts within this.
const IDLE_POLL: Duration = Duration::from_millis(50);
const HELLO_TIMEOUT: Duration = Duration::from_secs(60);
/// With no word from a running worker for this long, ask it (ping).
const QUIET_BEFORE_PING: Duration = Duration::from_secs(30);
const PONG_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

type Result<T> = std::result::Result<T, SchedulerError>;

/// How a run attempt ended, as the scheduler sees it.
enum Ending {
    Done { outputs: Outputs, seconds: f64 },
    Failed { kind: String, retryable: bool, message: String },
    Cancelled,
    /// The daemon is stopping: the run goes back to the queue.
    HandedBack,
}

/// A finished run waiting to be published once the next run is on its way.
struct Finished {
    run_id: String,
    outputs: Outputs,
    seconds: f64,
    /// GPU peak and mean over the run, for its manifest.
    gpu: Value,
}

#[derive(Debug, Clone, Default)]
struct Current {
    run_id: String,
    step: u64,
    steps: u64,
    started_at: String,
    started: Option<Instant>,
}

/// What the schedulers of one daemon share: one per worker (GPU or GPU group), all taking
/// runs from the same store.
#[derive(Clone)]
pub struct Shared {
    /// Each worker's entry (and current run) for status.json, by slot; the lock also
    /// serialises writes of status.json.
    board: Arc<Mutex<std::collections::BTreeMap<usize, (Value, Option<Value>)>>>,
    /// Runs a re-attached worker is still running: start-up recovery leaves them alone.
    adopted: Arc<Mutex<std::collections::HashSet<String>>>,
    barrier: Arc<std::sync::Barrier>,
    pub slots: usize,
    /// Inbox entries that cannot be taken in right now, as the intake reports them.
    intake_stuck: Arc<Mutex<Value>>,
}

impl Shared {
    pub fn new(slots: usize) -> Shared {
        Shared {
            board: Arc::default(),
            adopted: Arc::default(),
            barrier: Arc::new(std::sync::Barrier::new(slots.max(1))),
            slots: slots.max(1),
            intake_stuck: Arc::new(Mutex::new(Value::Array(Vec::new()))),
        }
    }

    /// What status.json says of inbox entries that cannot be taken in (from the intake).
    pub fn set_intake_stuck(&self, stuck: Value) {
        if let Ok(mut s) = self.intake_stuck.lock() {
            *s = stuck;
        }
    }
}

/// The GPUs of each worker: `"all"` -> one worker with every GPU; `[]` -> one worker with
/// none; `[0, 1]` -> a worker per GPU; `[[0, 1], [2, 3]]` -> a worker per group.
pub fn worker_groups(gpus: &crate::config::Gpus) -> Vec<Option<Vec<u32>>> {
    match gpus {
        crate::config::Gpus::Named(_) => vec![None],
        crate::config::Gpus::Each(v) if v.is_empty() => vec![Some(Vec::new())],
        crate::config::Gpus::Each(v) => v.iter().map(|g| Some(vec![*g])).collect(),
        crate::config::Gpus::Groups(g) => g.iter().map(|grp| Some(grp.clone())).collect(),
    }
}

/// The worker, wherever it lives.
enum Worker {
    Process(ProcessWorker),
    Docker(Box<DockerWorker>),
}

impl Worker {
    fn send(&mut self, op: &Op) -> bool {
        match self {
            Worker::Process(w) => w.send(op).is_ok(),
            Worker::Docker(w) => w.send(op).is_ok(),
        }
    }

    fn recv(&self, timeout: Duration) -> Option<WorkerMsg> {
        match self {
            Worker::Process(w) => w.recv(timeout),
            Worker::Docker(w) => w.recv(timeout),
        }
    }

    fn kill(&mut self) {
        match self {
            Worker::Process(w) => w.kill(),
            Worker::Docker(w) => w.kill(),
        }
    }

    fn info(&self) -> WorkerInfo {
        match self {
            Worker::Process(w) => WorkerInfo { backend: w.backend.clone(), version: w.version.clone(), pid: w.pid, container_id: None },
            Worker::Docker(w) => {
                WorkerInfo { backend: w.backend.clone(), version: w.version.clone(), pid: w.pid, container_id: Some(w.container_id.clone()) }
            }
        }
    }

    /// The daemon is stopping: a child process is asked to exit; a container keeps
    /// running, with its model loaded, for the next daemon to re-attach to.
    fn leave(self) {
        match self {
            Worker::Process(w) => w.shutdown(Duration::from_secs(5)),
            Worker::Docker(w) => drop(w),
        }
    }

    /// Host paths in `spec` and `output_dir` as the worker sees them; `Err` names a path
    /// the worker cannot see.
    fn localize(&self, spec: &mut Value, output_dir: &Path) -> std::result::Result<String, String> {
        match self {
            Worker::Process(_) => Ok(output_dir.display().to_string()),
            Worker::Docker(w) => {
                let unmounted = w.map.rewrite_spec(spec);
                if let Some(p) = unmounted.first() {
                    return Err(format!("{p} is not in a folder mounted into the container; add its folder to paths.input_roots"));
                }
                w.map.to_container(output_dir).map(|p| p.display().to_string()).ok_or_else(|| "the work folder is not mounted".to_string())
            }
        }
    }

    /// The worker's output paths, as the host sees them.
    fn to_host(&self, outputs: Outputs) -> Outputs {
        match self {
            Worker::Process(_) => outputs,
            Worker::Docker(w) => {
                let back = |p: String| w.map.to_host(Path::new(&p)).map_or(p, |h| h.display().to_string());
                Outputs { video: outputs.video.map(back), controls: outputs.controls.into_iter().map(|(k, v)| (k, back(v))).collect(), settings: outputs.settings }
            }
        }
    }
}

pub struct Scheduler {
    /// Which worker this is (0-based), and its GPUs (`None`: all).
    slot: usize,
    slot_gpus: Option<Vec<u32>>,
    shared: Shared,
    config: Config,
    store: Store,
    outbox: Outbox,
    work: PathBuf,
    stop: Arc<AtomicBool>,
    worker: Option<Worker>,
    /// A run the worker was already running when this daemon attached (docker re-attach).
    adopt: Option<String>,
    worker_state: &'static str,
    loaded: Option<String>,
    loads: u64,
    log: LogSink,
    current: Option<Current>,
    waiting_reason: Option<String>,
    /// Why the worker cannot start, until it does (status.json shows it while runs wait).
    worker_error: Option<String>,
    started_at: String,
    last_status: Instant,
    next_spawn: Instant,
    spawn_backoff: Duration,
    pending: Option<Finished>,
    reloads: Option<std::sync::mpsc::Receiver<Config>>,
    /// When the worker last reported a run done: the dispatch gap runs from here to the
    /// next `run` op.
    last_done: Option<Instant>,
    gpus: Box<dyn crate::gpu::GpuProbe>,
    gpu_samples: Vec<crate::gpu::GpuSample>,
    run_gpu: crate::gpu::RunGpuStats,
}

impl Scheduler {
    pub fn new(config: &Config, stop: Arc<AtomicBool>, slot: usize, slot_gpus: Option<Vec<u32>>, shared: Shared) -> Result<Scheduler> {
        let store = Store::open(&config.paths.database())?;
        store.relax_sync()?;
        let outbox = Outbox::new(&config.paths.outbox, config.outbox.mode.0);
        outbox.create_all()?;
        let work = config.paths.state.join("work");
        std::fs::create_dir_all(&work)?;
        Ok(Scheduler {
            slot,
            slot_gpus,
            shared,
            config: config.clone(),
            store,
            outbox,
            work,
            stop,
            worker: None,
            adopt: None,
            worker_state: "down",
            loaded: None,
            loads: 0,
            log: Arc::new(Mutex::new(None)),
            current: None,
            waiting_reason: None,
            worker_error: None,
            started_at: Timestamp::now().rfc3339(),
            last_status: Instant::now() - Duration::from_secs(3600),
            next_spawn: Instant::now(),
            spawn_backoff: Duration::from_secs(1),
            pending: None,
            reloads: None,
            last_done: None,
            gpus: crate::gpu::probe(),
            gpu_samples: Vec::new(),
            run_gpu: crate::gpu::RunGpuStats::default(),
        })
    }

    /// New configurations (SIGHUP) arrive here.
    pub fn with_reloads(mut self, rx: std::sync::mpsc::Receiver<Config>) -> Scheduler {
        self.reloads = Some(rx);
        self
    }

    /// Takes the settings a reload may change.
    pub fn set_config(&mut self, config: &Config) {
        let paths = self.config.paths.clone();
        self.config = config.clone();
        self.config.paths = paths;
        self.outbox.mode = config.outbox.mode.0;
    }

    fn work_dir(&self, run_id: &str) -> PathBuf {
        self.work.join(run_id)
    }

    /// Runs until the stop flag is set; then hands back or finishes the run in hand.
    pub fn run(mut self) -> Result<()> {
        // Start (or re-attach to) the worker first: a container may still be running a run.
        self.ensure_worker();
        if let Some(run) = self.adopt.clone() {
            if let Ok(mut a) = self.shared.adopted.lock() {
                a.insert(run);
            }
        }
        // Every worker has said what it is still running before anything is requeued, and
        // recovery is over before any worker takes a new run.
        self.shared.barrier.wait();
        let recovered = self.recover();
        self.shared.barrier.wait();
        recovered?;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let newest = self.reloads.as_ref().and_then(|rx| rx.try_iter().last());
            if let Some(config) = newest {
                self.set_config(&config);
            }
            self.write_status_if_due(false);
            if self.store.paused()? {
                self.publish_pending();
                self.set_waiting(Some("paused (cosmos resume to continue)".into()));
                std::thread::sleep(POLL);
                continue;
            }
            if let Some(reason) = self.disk_guard() {
                self.publish_pending();
                self.set_waiting(Some(reason));
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            let max_wait = self.config.scheduler.max_affinity_wait.0;
            let next = self.store.next_run(self.loaded.as_deref(), max_wait)?;
            let Some(run) = next else {
                self.last_done = None;
                self.publish_pending();
                self.set_waiting(None);
                self.idle_wait();
                continue;
            };
            self.set_waiting(None);
            self.execute(run)?;
        }
        self.publish_pending();
        if let Some(w) = self.worker.take() {
            w.leave();
        }
        self.worker_state = "down";
        self.write_status_if_due(true);
        Ok(())
    }

    /// Start-up reconciliation: runs left `running` by a crash are published if their
    /// result.json says done, and otherwise go back to the queue.
    fn recover(&mut self) -> Result<()> {
        if let Some(id) = self.adopt.take() {
            if let Ok(run) = self.store.run(&id) {
                if run.status == RunStatus::Running {
                    tracing::info!(run = %run.id, "the worker is still running it: following it");
                    let out = self.work_dir(&run.id).join("output");
                    self.follow_adopted(run, &out)?;
                }
            }
        }
        if self.slot != 0 {
            return Ok(());
        }
        self.outbox.clear_staging();
        let adopted = self.shared.adopted.lock().map(|a| a.clone()).unwrap_or_default();
        for run in self.store.list_runs(Some(RunStatus::Running), None)? {
            let out = self.work_dir(&run.id).join("output");
            if adopted.contains(&run.id) {
                continue;
            }
            let result = protocol::read_result(&out).map(|ev| match ev {
                Event::Done { run_id, outputs, seconds } => Event::Done { run_id, outputs: self.outputs_on_host(outputs), seconds },
                other => other,
            });
            match result {
                Some(Event::Done { outputs, seconds, .. }) if video_ok(&outputs, &out) => {
                    tracing::info!(run = %run.id, "finished while the daemon was down: publishing");
                    self.pending = Some(Finished { run_id: run.id.clone(), outputs, seconds, gpu: Value::Null });
                    self.publish_pending();
                }
                _ => {
                    tracing::info!(run = %run.id, "was running when the daemon stopped: back to the queue");
                    self.store.change(&run.id, Change::Requeue { reason: "the daemon restarted mid-run".into() })?;
                }
            }
        }
        Ok(())
    }

    /// Output paths from a result.json, as host paths: a container wrote container paths.
    fn outputs_on_host(&self, outputs: Outputs) -> Outputs {
        let map = crate::runtime::docker::PathMap::for_config(&self.config, &crate::runtime::process::worker_path(&self.config));
        let host = |p: String| {
            if Path::new(&p).exists() {
                return p;
            }
            map.to_host(Path::new(&p)).filter(|h| h.exists()).map_or(p, |h| h.display().to_string())
        };
        Outputs { video: outputs.video.map(host), controls: outputs.controls.into_iter().map(|(k, v)| (k, host(v))).collect(), settings: outputs.settings }
    }

    /// A run the re-attached worker is still running: wait for it like any other.
    fn follow_adopted(&mut self, run: Run, out: &Path) -> Result<()> {
        let work = self.work_dir(&run.id);
        if let Ok(log) = std::fs::OpenOptions::new().create(true).append(true).open(work.join("execution.log")) {
            if let Ok(mut sink) = self.log.lock() {
                *sink = Some(log);
            }
        }
        self.run_log("the daemon restarted and re-attached; the run went on");
        let batch = match &run.batch_id {
            Some(b) => Some(self.store.batch(b)?),
            None => None,
        };
        self.current = Some(Current { run_id: run.id.clone(), started_at: Timestamp::now().rfc3339(), started: Some(Instant::now()), ..Current::default() });
        self.worker_state = "running";
        let ending = self.wait_for(&run, out);
        self.worker_state = if self.worker.is_some() { "idle" } else { "down" };
        self.settle(&run, ending, batch.as_ref())?;
        self.current = None;
        if let Ok(mut sink) = self.log.lock() {
            *sink = None;
        }
        self.publish_pending();
        Ok(())
    }

    fn idle_wait(&mut self) {
        // Read worker messages (a crash while idle is noticed here) until the next poll.
        if let Some(w) = &self.worker {
            if let Some(WorkerMsg::Exited) = w.recv(IDLE_POLL) {
                tracing::warn!("the worker exited while idle; it restarts with the next run");
                self.drop_worker();
            }
        } else {
            std::thread::sleep(IDLE_POLL);
        }
    }

    fn drop_worker(&mut self) {
        if let Some(mut w) = self.worker.take() {
            w.kill();
        }
        self.loaded = None;
        self.worker_state = "down";
    }

    fn ensure_worker(&mut self) -> bool {
        if self.worker.is_some() {
            return true;
        }
        if Instant::now() < self.next_spawn {
            std::thread::sleep(POLL);
            return false;
        }
        if let Some(reason) = self.gpu_admission() {
            self.set_waiting(Some(reason));
            std::thread::sleep(Duration::from_secs(1));
            return false;
        }
        self.worker_state = "starting";
        self.write_status_if_due(true);
        // One process per GPU of this worker (torchrun for more than one).
        let ranks = crate::runtime::launch::ranks_for(self.slot_gpus.as_deref(), self.gpus.sample().len());
        let started = match self.config.runtime.kind {
            crate::config::RuntimeKind::Process => {
                ProcessWorker::spawn(&self.config, self.log.clone(), HELLO_TIMEOUT, self.slot_gpus.as_deref(), ranks)
                    .map(Worker::Process)
                    .map_err(|e| e.to_string())
            }
            crate::config::RuntimeKind::Docker => {
                let path = crate::runtime::process::worker_path(&self.config);
                DockerWorker::start(&self.config, &path, self.log.clone(), HELLO_TIMEOUT, self.slot, self.shared.slots, self.slot_gpus.as_deref(), ranks)
                    .map(|w| Worker::Docker(Box::new(w)))
                    .map_err(|e| e.to_string())
            }
        };
        match started {
            Ok(w) => {
                let info = w.info();
                tracing::info!(backend = %info.backend, version = %info.version, pid = info.pid, container = ?info.container_id, "worker ready");
                self.loads = 0;
                self.loaded = None;
                if let Worker::Docker(d) = &w {
                    if let Some((state, run, controls)) = &d.found {
                        if !controls.is_empty() {
                            let set = crate::spec::control_set_key(controls.iter().filter_map(|c| Hint::parse(c)));
                            tracing::info!(controls = %set, "the worker still holds its model: no new load");
                            self.loaded = Some(set);
                        }
                        if state == "running" {
                            self.adopt = run.clone();
                        }
                    }
                }
                self.worker = Some(w);
                self.worker_state = "idle";
                self.spawn_backoff = Duration::from_secs(1);
                self.worker_error = None;
                self.set_waiting(None);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?self.spawn_backoff, "cannot start the worker; runs stay queued");
                self.worker_error = Some(format!("worker not starting: {e}"));
                self.write_status_if_due(true);
                self.worker_state = "down";
                self.next_spawn = Instant::now() + self.spawn_backoff;
                self.spawn_backoff = (self.spawn_backoff * 2).min(Duration::from_secs(60));
                false
            }
        }
    }

    /// One attempt of one run.
    fn execute(&mut self, run: Run) -> Result<()> {
        if !self.ensure_worker() {
            return Ok(());
        }
        if self.loaded.as_deref() != Some(run.control_set.as_str()) {
            // A model load is coming, far longer than any bookkeeping: publish the finished
            // run first rather than leave it "running" through the load.
            self.publish_pending();
        }
        let run = match self.store.change(&run.id, Change::Start) {
            Ok(r) => r,
            // Another worker took it first (they share the queue): pick again.
            Err(StoreError::IllegalTransition { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let work = self.work_dir(&run.id);
        let out = work.join("output");
        std::fs::create_dir_all(&out)?;
        let _ = std::fs::remove_file(out.join("result.json"));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(work.join("execution.log"))?;
        if let Ok(mut sink) = self.log.lock() {
            *sink = Some(log);
        }
        self.run_log(&format!(
            "attempt {} of run {} started (controls {}, priority {})",
            run.attempts, run.id, run.control_set, run.priority
        ));
        let batch = match &run.batch_id {
            Some(b) => Some(self.store.batch(b)?),
            None => None,
        };
        if let Some(b) = &batch {
            if let Err(e) = self.outbox.ensure_batch_folder(&self.store, b) {
                tracing::warn!(error = %e, batch = %b.id, "cannot write the batch folder");
            }
            self.outbox.append_batch_log(b, &format!("{} attempt {} started", run.id, run.attempts));
        }
        self.run_gpu = crate::gpu::RunGpuStats::default();
        self.current = Some(Current {
            run_id: run.id.clone(),
            step: 0,
            steps: 0,
            started_at: Timestamp::now().rfc3339(),
            started: Some(Instant::now()),
        });

        let mut spec = worker_spec(&run.spec, crate::spec::Model::from_config(&self.config));
        let localized = match &self.worker {
            Some(w) => w.localize(&mut spec, &out),
            None => Err("the worker is gone".into()),
        };
        // spec.json is exactly what the worker gets (container paths under docker).
        // Internal until published, when it is synced: no fsync here, in the dispatch gap.
        let mut spec_text = serde_json::to_string_pretty(&spec).unwrap_or_default();
        spec_text.push('\n');
        std::fs::write(work.join("spec.json"), spec_text.as_bytes())?;
        let ending = match (self.load_for(&run), localized) {
            (Err(ending), _) => ending,
            (Ok(()), Err(message)) => Ending::Failed { kind: "input".into(), retryable: false, message },
            (Ok(()), Ok(output_dir)) => {
                let op = Op::Run { run_id: run.id.clone(), attempt: run.attempts, spec, output_dir };
                match self.worker.as_mut().map(|w| w.send(&op)) {
                    Some(true) => {
                        if let Some(done) = self.last_done.take() {
                            tracing::debug!(gap_us = done.elapsed().as_micros() as u64, run = %run.id, "dispatched");
                        }
                        self.worker_state = "running";
                        // The worker is busy with this run: now publish the previous one.
                        self.publish_pending();
                        self.write_status_if_due(true);
                        self.wait_for(&run, &out)
                    }
                    _ => {
                        self.drop_worker();
                        Ending::Failed { kind: "crash".into(), retryable: true, message: "the worker is gone".into() }
                    }
                }
            }
        };
        self.worker_state = if self.worker.is_some() { "idle" } else { "down" };
        let done = matches!(ending, Ending::Done { .. });
        self.settle(&run, ending, batch.as_ref())?;
        self.current = None;
        if let Ok(mut sink) = self.log.lock() {
            *sink = None;
        }
        // After a success the next dispatch comes first; status.json is rewritten right
        // after it (or when the queue turns out empty).
        self.write_status_if_due(!done);
        Ok(())
    }

    /// Makes the worker hold the run's control set: one load per set, not per run.
    fn load_for(&mut self, run: &Run) -> std::result::Result<(), Ending> {
        if self.loaded.as_deref() == Some(run.control_set.as_str()) {
            return Ok(());
        }
        let controls: Vec<String> = run.spec.controls.keys().map(|h| h.as_str().to_string()).collect();
        self.worker_state = "loading";
        self.write_status_if_due(true);
        self.run_log(&format!("loading the model for controls {}", run.control_set));
        let sent = self.worker.as_mut().map(|w| w.send(&Op::Load { controls, options: json!({}) }));
        if sent != Some(true) {
            self.drop_worker();
            return Err(Ending::Failed { kind: "crash".into(), retryable: true, message: "the worker is gone".into() });
        }
        let deadline = Instant::now() + self.config.scheduler.run_timeout.0;
        loop {
            let msg = match &self.worker {
                Some(w) => w.recv(POLL),
                None => Some(WorkerMsg::Exited),
            };
            match msg {
                Some(WorkerMsg::Event(Event::Loaded { seconds, .. })) => {
                    self.loads += 1;
                    self.loaded = Some(run.control_set.clone());
                    self.run_log(&format!("model loaded in {seconds:.1}s (load {} of this worker)", self.loads));
                    return Ok(());
                }
                Some(WorkerMsg::Event(Event::LoadFailed { message, .. })) => {
                    self.loaded = None;
                    return Err(Ending::Failed { kind: "load".into(), retryable: true, message: format!("model load failed: {message}") });
                }
                Some(WorkerMsg::Exited) => {
                    self.drop_worker();
                    return Err(Ending::Failed { kind: "crash".into(), retryable: true, message: "the worker died while loading".into() });
                }
                Some(WorkerMsg::Event(_)) => {}
                None => {}
            }
            if Instant::now() > deadline {
                self.drop_worker();
                return Err(Ending::Failed { kind: "timeout".into(), retryable: true, message: "model load exceeded scheduler.run_timeout".into() });
            }
            if self.stop.load(Ordering::SeqCst) {
                return Err(Ending::HandedBack);
            }
        }
    }

    /// Reads the worker until the run ends, times out, is cancelled or the daemon stops.
    fn wait_for(&mut self, run: &Run, out: &Path) -> Ending {
        let started = Instant::now();
        let timeout = self.config.scheduler.run_timeout.0;
        let mut last_word = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        let mut cancel_sent: Option<Instant> = None;
        let mut stop_seen: Option<Instant> = None;
        let mut next_check = Instant::now() + POLL;
        loop {
            let msg = match &self.worker {
                Some(w) => w.recv(POLL.min(next_check.saturating_duration_since(Instant::now()))),
                None => Some(WorkerMsg::Exited),
            };
            match msg {
                Some(WorkerMsg::Event(ev)) => {
                    last_word = Instant::now();
                    ping_sent = None;
                    match ev {
                        Event::Progress { run_id, step, steps } if run_id == run.id => {
                            if let Some(c) = self.current.as_mut() {
                                c.step = step;
                                c.steps = steps;
                            }
                            self.write_status_if_due(true);
                        }
                        Event::Done { run_id, outputs, seconds } if run_id == run.id => {
                            self.last_done = Some(Instant::now());
                            let outputs = match &self.worker {
                                Some(w) => w.to_host(outputs),
                                None => outputs,
                            };
                            self.run_log(&format!("the worker reports done in {seconds:.1}s"));
                            if !video_ok(&outputs, out) {
                                return Ending::Failed {
                                    kind: "internal".into(),
                                    retryable: false,
                                    message: "the worker reported done but the output video is missing or empty".into(),
                                };
                            }
                            return Ending::Done { outputs, seconds };
                        }
                        Event::Failed { run_id, kind, .. } if run_id == run.id && kind == "cancelled" => return Ending::Cancelled,
                        Event::Failed { run_id, kind, retryable, message } if run_id == run.id => {
                            return Ending::Failed { kind, retryable, message }
                        }
                        _ => {}
                    }
                }
                Some(WorkerMsg::Exited) => {
                    self.drop_worker();
                    if cancel_sent.is_some() {
                        return Ending::Cancelled;
                    }
                    return Ending::Failed { kind: "crash".into(), retryable: true, message: "the worker process died during the run".into() };
                }
                None => {}
            }
            let now = Instant::now();
            if now < next_check {
                continue;
            }
            next_check = now + POLL;
            if now.duration_since(started) > timeout {
                self.drop_worker();
                return Ending::Failed {
                    kind: "timeout".into(),
                    retryable: true,
                    message: format!("the run exceeded scheduler.run_timeout ({})", self.config.scheduler.run_timeout),
                };
            }
            match ping_sent {
                Some(t) if now.duration_since(t) > PONG_TIMEOUT => {
                    self.drop_worker();
                    return Ending::Failed { kind: "hang".into(), retryable: true, message: "the worker stopped answering (no pong)".into() };
                }
                None if now.duration_since(last_word) > QUIET_BEFORE_PING => {
                    if let Some(w) = self.worker.as_mut() {
                        let _ = w.send(&Op::Ping);
                    }
                    ping_sent = Some(now);
                }
                _ => {}
            }
            match cancel_sent {
                None => {
                    if self.store.cancel_requested(&run.id).unwrap_or(false) {
                        self.run_log("cancel requested");
                        if let Some(w) = self.worker.as_mut() {
                            let _ = w.send(&Op::Cancel { run_id: run.id.clone() });
                        }
                        cancel_sent = Some(now);
                    }
                }
                Some(t) if now.duration_since(t) > self.config.scheduler.cancel_grace.0 => {
                    self.run_log("the worker did not stop within scheduler.cancel_grace: killing it");
                    self.drop_worker();
                    return Ending::Cancelled;
                }
                Some(_) => {}
            }
            if self.stop.load(Ordering::SeqCst) {
                let since = *stop_seen.get_or_insert(now);
                if now.duration_since(since) > self.config.daemon.stop_grace.0 {
                    self.run_log("the daemon is stopping: handing the run back to the queue");
                    self.drop_worker();
                    return Ending::HandedBack;
                }
            }
            self.write_status_if_due(false);
        }
    }

    /// Records how an attempt ended: publish (after the next dispatch), retry, or fail.
    fn settle(&mut self, run: &Run, ending: Ending, batch: Option<&crate::store::Batch>) -> Result<()> {
        let note = |s: &Self, text: &str| {
            if let Some(b) = batch {
                s.outbox.append_batch_log(b, &format!("{} {text}", run.id));
            }
        };
        match ending {
            Ending::Done { outputs, seconds } => {
                self.publish_pending();
                let gpu = self.run_gpu.to_json();
                self.pending = Some(Finished { run_id: run.id.clone(), outputs, seconds, gpu });
                note(self, "done");
            }
            Ending::Cancelled => {
                self.run_log("cancelled");
                let r = self.store.finish_unsuccessfully(&run.id, Change::Cancel { reason: "cancelled by request".into() })?;
                self.after_end(&r);
                note(self, "cancelled");
            }
            Ending::HandedBack => {
                self.store.change(&run.id, Change::Requeue { reason: "handed back: the daemon stopped".into() })?;
                note(self, "handed back");
            }
            Ending::Failed { kind, retryable, message } => {
                self.run_log(&format!("failed ({kind}): {message}"));
                let max = self.config.scheduler.max_attempts;
                if retryable && run.attempts < max {
                    let backoff = Duration::from_secs(1 << run.attempts.saturating_sub(1).min(6)).min(Duration::from_secs(60));
                    let when = Timestamp(Timestamp::now().0 + backoff.as_millis() as i64);
                    tracing::warn!(run = %run.id, attempt = run.attempts, %kind, %message, retry_in = ?backoff, "run failed; retrying");
                    self.store.retry_later(&run.id, &format!("attempt {} failed ({kind}): {message}", run.attempts), when)?;
                    note(self, &format!("attempt {} failed ({kind}), retrying", run.attempts));
                } else {
                    tracing::warn!(run = %run.id, attempt = run.attempts, %kind, %message, "run failed");
                    let error = if retryable { format!("{message} (after {} attempts)", run.attempts) } else { message };
                    let r = self.store.finish_unsuccessfully(&run.id, Change::Fail { error })?;
                    self.after_end(&r);
                    note(self, &format!("failed ({kind})"));
                }
            }
        }
        Ok(())
    }

    fn after_end(&self, run: &Run) {
        if let Err(e) = self.outbox.update_receipt_of(&self.store, run) {
            tracing::warn!(error = %e, run = %run.id, "cannot update the receipt");
        }
    }

    /// Publishes the finished run waiting for it, if any.
    fn publish_pending(&mut self) {
        let Some(f) = self.pending.take() else { return };
        if let Err(e) = self.publish(&f) {
            tracing::error!(run = %f.run_id, error = %e, "cannot publish the run");
            let _ = self.store.finish_unsuccessfully(&f.run_id, Change::Fail { error: format!("cannot publish the run folder: {e}") });
        }
    }

    fn publish(&mut self, f: &Finished) -> std::result::Result<(), String> {
        let run = self.store.run(&f.run_id).map_err(|e| e.to_string())?;
        let batch = match &run.batch_id {
            Some(b) => Some(self.store.batch(b).map_err(|e| e.to_string())?),
            None => None,
        };
        let child_id = run
            .spec
            .upscale_weight
            .map(|_| self.outbox.published_child(&run.id).unwrap_or_else(|| ids::new_id(IdKind::Run)));
        let info = self.worker.as_ref().map(Worker::info).unwrap_or_else(|| WorkerInfo {
            backend: self.config.runtime.backend.as_str().to_string(),
            ..Default::default()
        });
        let work = self.work_dir(&run.id);
        let dir = self
            .outbox
            .publish_run(&run, &work, &f.outputs, batch.as_ref(), &info, child_id.as_deref(), f.seconds, f.gpu.clone())
            .map_err(|e| e.to_string())?;
        let outputs = json!({
            "type": if batch.is_some() { "batch_inference" } else { "inference" },
            "output_dir": dir,
            "primary_output": dir.join("output.mp4"),
            "batch_name": batch.as_ref().map(|b| b.folder_name()),
        });
        let child = match (&child_id, run.spec.upscale_weight) {
            (Some(id), Some(w)) => Some((id.as_str(), upscale_spec(&run.spec, w, &dir.join("output.mp4")))),
            _ => None,
        };
        let done = self.store.complete(&run.id, outputs, child).map_err(|e| e.to_string())?;
        tracing::info!(run = %run.id, folder = %dir.display(), "completed");
        self.after_end(&done);
        self.write_status_if_due(true);
        Ok(())
    }

    fn run_log(&self, line: &str) {
        if let Ok(mut sink) = self.log.lock() {
            if let Some(f) = sink.as_mut() {
                let _ = writeln!(f, "{} cosmosd: {line}", Timestamp::now().rfc3339());
            }
        }
    }

    fn set_waiting(&mut self, reason: Option<String>) {
        if reason != self.waiting_reason {
            if let Some(r) = &reason {
                tracing::info!(reason = %r, "waiting");
            }
            self.waiting_reason = reason;
            self.write_status_if_due(true);
        }
    }

    /// The GPUs this worker uses (one worker for now: `all`, or the first GPU or group).
    fn worker_gpus(&self) -> Option<Vec<u32>> {
        self.slot_gpus.clone()
    }

    /// A worker starts only where its GPUs have `runtime.min_free_gpu_mib` free (DESIGN.md
    /// section 11). Without NVML nothing can be checked, and nothing is held back.
    fn gpu_admission(&mut self) -> Option<String> {
        let need = self.config.runtime.min_free_gpu_mib;
        if need == 0 {
            return None;
        }
        self.gpu_samples = self.gpus.sample();
        let wanted = self.worker_gpus();
        let short: Vec<String> = self
            .gpu_samples
            .iter()
            .filter(|g| wanted.as_ref().map_or(true, |w| w.contains(&g.index)))
            .filter(|g| g.memory_free_mib() < need)
            .map(|g| format!("GPU {} has {} MiB free", g.index, g.memory_free_mib()))
            .collect();
        (!short.is_empty()).then(|| format!("GPU memory: {}; runtime.min_free_gpu_mib is {need}", short.join(", ")))
    }

    /// Free space under the outbox and the state folder must stay above `outbox.min_free`.
    fn disk_guard(&self) -> Option<String> {
        let need = self.config.outbox.min_free.0;
        for dir in [&self.config.paths.outbox, &self.config.paths.state] {
            if let Some(free) = crate::fsutil::free_bytes(dir) {
                if free < need {
                    return Some(format!(
                        "disk guard: {} free under {}, outbox.min_free is {}",
                        crate::config::Size(free / (1 << 20) * (1 << 20)),
                        dir.display(),
                        self.config.outbox.min_free
                    ));
                }
            }
        }
        None
    }

    /// status.json: on every change (`force`) and at least every `daemon.status_interval`.
    fn write_status_if_due(&mut self, force: bool) {
        let now = Instant::now();
        if !force && now.duration_since(self.last_status) < self.config.daemon.status_interval.0 {
            return;
        }
        self.last_status = now;
        self.gpu_samples = self.gpus.sample();
        if self.current.is_some() {
            let wanted = self.worker_gpus();
            let mine: Vec<_> =
                self.gpu_samples.iter().filter(|g| wanted.as_ref().map_or(true, |w| w.contains(&g.index))).cloned().collect();
            self.run_gpu.add(&mine);
        }
        let counts = self.store.counts().unwrap_or_default();
        let state = if self.stop.load(Ordering::SeqCst) {
            "draining"
        } else if self.store.paused().unwrap_or(false) {
            "paused"
        } else {
            "running"
        };
        let current = self.current.as_ref().map(|c| {
            let eta = match (c.started, c.step, c.steps) {
                (Some(t), step, steps) if step > 0 && steps >= step => {
                    let per = t.elapsed().as_secs_f64() / step as f64;
                    Some(((steps - step) as f64 * per).round())
                }
                _ => None,
            };
            json!({"run_id": c.run_id, "step": c.step, "steps": c.steps, "started_at": c.started_at, "eta_seconds": eta})
        });
        let worker = json!({
            "slot": self.slot,
            "backend": self.config.runtime.backend.as_str(),
            "runtime": match self.config.runtime.kind { crate::config::RuntimeKind::Process => "process", crate::config::RuntimeKind::Docker => "docker" },
            "state": self.worker_state,
            "pid": self.worker.as_ref().map(|w| w.info().pid),
            "container_id": self.worker.as_ref().and_then(|w| w.info().container_id),
            "loaded_controls": self.loaded.as_ref().map(|s| s.split(',').collect::<Vec<_>>()),
            "loads": self.loads,
            "gpus": self.worker_gpus(),
            "current": current,
            "waiting": self.waiting_reason.as_ref().or(self.worker_error.as_ref()),
        });
        // One status.json for all workers, written under the board's lock.
        let Ok(mut board) = self.shared.board.lock() else { return };
        board.insert(self.slot, (worker, current.clone()));
        let workers: Vec<Value> = board.values().map(|(w, _)| w.clone()).collect();
        let current = board.values().find_map(|(_, c)| c.clone());
        let waiting = board.values().find_map(|(w, _)| w["waiting"].as_str().map(str::to_string));
        let status = json!({
            "daemon": {"pid": std::process::id(), "version": env!("CARGO_PKG_VERSION"), "started_at": self.started_at, "state": state},
            "queue": counts,
            "current": current,
            "waiting": waiting,
            "workers": workers,
            "intake": {"stuck": self.shared.intake_stuck.lock().map(|s| s.clone()).unwrap_or(Value::Null)},
            "gpus": self.gpu_samples,
            "nvml": self.gpus.describe(),
            "updated_at": Timestamp::now().rfc3339(),
        });
        if let Err(e) = self.outbox.write_status(&status) {
            tracing::warn!(error = %e, "cannot write status.json");
        }
    }
}

/// What the worker gets for a run, in the configured model's own format: for Transfer2.5
/// NVIDIA's `InferenceArguments` object; otherwise NVIDIA's Transfer1 `--controlnet_specs`
/// object, plus the `sim` fault key where the run has one. Each carries the model's own
/// defaults for what the run leaves unset. Also the run's `spec.json`.
pub fn worker_spec(spec: &RunSpec, model: crate::spec::Model) -> Value {
    if model == crate::spec::Model::Transfer2_5 {
        return nvidia::transfer2_5_spec(spec);
    }
    let mut v = nvidia::transfer1_spec(spec);
    if let Some(sim) = &spec.sim {
        v["sim"] = serde_json::to_value(sim).unwrap_or(Value::Null);
    }
    v
}

/// The upscale run that follows a completed run: control `upscale` at `weight` on the
/// parent's output video.
fn upscale_spec(parent: &RunSpec, weight: f64, output: &Path) -> RunSpec {
    let mut controls = std::collections::BTreeMap::new();
    controls.insert(Hint::Upscale, Control::from_file(weight, output.to_path_buf()));
    RunSpec {
        name: parent.name.as_ref().map(|n| format!("{}-upscale", n.chars().take(56).collect::<String>())),
        visual_input: output.to_path_buf(),
        controls,
        upscale_weight: None,
        sim: None,
        ..parent.clone()
    }
}

fn video_ok(outputs: &Outputs, out_dir: &Path) -> bool {
    let video = outputs.video.as_deref().map(PathBuf::from).unwrap_or_else(|| out_dir.join("output.mp4"));
    std::fs::metadata(video).map(|m| m.is_file() && m.len() > 0).unwrap_or(false)
}

