//! The scheduler (DESIGN.md section 9): one per worker (GPU or GPU group), each on its own
//! thread with its own store connection, taking queued runs from the shared store and
//! feeding them, one at a time, to a warm worker.
//!
//! Its loop is a short sequence of named steps: take a reloaded configuration; write
//! status.json when due; check the gates (pause, disk); pick the next run ([`policy`]);
//! run one attempt of it ([`attempt`]: the model load and the run under one [`watchdog`]);
//! settle it (publish, retry or fail). A finished run is published ([`publish`]) after the
//! next run has been sent, so the GPU never waits for our bookkeeping. Start-up reconciles
//! runs a crash left `running` ([`recovery`]); [`board`] writes status.json.

mod attempt;
mod board;
mod cluster;
mod publish;
mod recovery;
pub mod watchdog;

/// The pure decisions (next run, retry verdict, gates, ETA) live below the scheduler, where the
/// shared queue's claim can follow the same rules.
pub use crate::policy;

use crate::config::{Config, RuntimeKind};
use crate::layout::Layout;
use crate::outbox::Outbox;
use crate::runtime::docker::DockerWorker;
use crate::runtime::worker::{LogSink, Worker, WorkerError, WorkerMsg};
use crate::runtime::ProcessWorker;
use crate::spec::{nvidia, Hint, RunSpec};
use crate::store::{Store, StoreError};
use crate::time::Timestamp;
use serde_json::Value;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use board::{run_forecast_json, worker_views, ETA_RUNS};
pub use cluster::ClusterSlot;
pub use publish::upscale_spec;

/// How often a busy scheduler looks at the worker, the store (cancel) and the stop flag.
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
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: std::path::PathBuf, source: std::io::Error },
    /// The shared queue cannot be reached or refused a claim: waited out like a busy store.
    #[error("cannot claim from the shared queue: {0}")]
    Queue(crate::cluster::ClusterError),
}

impl From<crate::fsutil::PathIo> for SchedulerError {
    fn from(e: crate::fsutil::PathIo) -> SchedulerError {
        SchedulerError::Io { what: e.what, path: e.path, source: e.source }
    }
}

impl SchedulerError {
    /// A failure the scheduler waits out (the store busy or its disk full, an I/O error):
    /// it says so in status.json and tries again; anything else ends its thread (and
    /// the daemon).
    pub fn is_transient(&self) -> bool {
        match self {
            SchedulerError::Store(e) => e.is_transient(),
            SchedulerError::Io { source, .. } => crate::fsutil::is_transient_io(source),
            SchedulerError::Queue(_) => true,
        }
    }
}

type Result<T> = std::result::Result<T, SchedulerError>;

/// How long the scheduler waits before trying again after a transient failure.
const TROUBLE_RETRY: Duration = Duration::from_secs(1);

/// The worker as status.json shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    Down,
    Starting,
    Idle,
    Loading,
    Running,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Down => "down",
            WorkerState::Starting => "starting",
            WorkerState::Idle => "idle",
            WorkerState::Loading => "loading",
            WorkerState::Running => "running",
        }
    }
}

/// One worker's entry in status.json and its current run's.
type WorkerEntry = (Value, Option<Value>);

/// What the schedulers of one daemon share: one per worker (GPU or GPU group), all taking
/// runs from the same store.
#[derive(Clone)]
pub struct Shared {
    /// Each worker's entry (and current run) for status.json, by slot; the lock also
    /// serialises writes of status.json.
    board: Arc<Mutex<std::collections::BTreeMap<usize, WorkerEntry>>>,
    /// Runs a re-attached worker is still running: start-up recovery leaves them alone.
    adopted: Arc<Mutex<std::collections::HashSet<String>>>,
    barrier: Arc<std::sync::Barrier>,
    pub slots: usize,
    /// Inbox entries that cannot be taken in right now, as the intake reports them.
    intake_stuck: Arc<Mutex<Value>>,
    /// Submissions whose receipt is behind its runs, since when (see `after_end`).
    receipts: Arc<Mutex<std::collections::HashMap<String, Instant>>>,
    /// Where runs, loads and status documents are recorded for `/metrics` ([`crate::web`]).
    pub metrics: Arc<crate::metrics::Registry>,
    /// The shared queue's hosts and counts for status.json (`Null`: one host).
    cluster: Arc<Mutex<Value>>,
}

impl Shared {
    pub fn new(slots: usize) -> Shared {
        Shared {
            board: Arc::default(),
            adopted: Arc::default(),
            barrier: Arc::new(std::sync::Barrier::new(slots.max(1))),
            slots: slots.max(1),
            intake_stuck: Arc::new(Mutex::new(Value::Array(Vec::new()))),
            receipts: Arc::default(),
            metrics: Arc::default(),
            cluster: Arc::new(Mutex::new(Value::Null)),
        }
    }

    /// What status.json says of the shared queue (from [`crate::cluster::Home`]).
    pub fn set_cluster(&self, cluster: Value) {
        if let Ok(mut c) = self.cluster.lock() {
            *c = cluster;
        }
    }

    /// Every slot of this daemon as status.json last said it, for the cluster heartbeat.
    pub fn slots_now(&self) -> Vec<crate::cluster::SlotNow> {
        let Ok(board) = self.board.lock() else { return Vec::new() };
        board
            .values()
            .map(|(w, current)| crate::cluster::SlotNow {
                slot: w["slot"].as_u64().unwrap_or(0).to_string(),
                gpus: w["gpus"].as_array().map(|g| g.iter().filter_map(|n| n.as_u64()).map(|n| n as u32).collect()).unwrap_or_default(),
                loaded_controls: w["loaded_controls"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")),
                state: w["state"].as_str().unwrap_or("down").to_string(),
                run_id: current.as_ref().and_then(|c| c["run_id"].as_str()).map(str::to_string),
            })
            .collect()
    }

    /// Records into `metrics` (the daemon's registry) rather than a registry of its own.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Registry>) -> Shared {
        self.metrics = metrics;
        self
    }

    /// Notes that a submission's receipt is behind (the first time counts).
    fn mark_receipt(&self, submission: &str) {
        if let Ok(mut r) = self.receipts.lock() {
            r.entry(submission.to_string()).or_insert_with(Instant::now);
        }
    }

    /// Takes the submissions whose receipt has been behind for `every` (all, with `all`).
    fn due_receipts(&self, all: bool, every: Duration) -> Vec<String> {
        let Ok(mut r) = self.receipts.lock() else { return Vec::new() };
        let now = Instant::now();
        let due: Vec<String> =
            r.iter().filter(|(_, since)| all || now.duration_since(**since) >= every).map(|(sb, _)| sb.clone()).collect();
        for sb in &due {
            r.remove(sb);
        }
        due
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

/// What starting a worker needs.
pub struct SpawnRequest<'a> {
    pub config: &'a Config,
    pub log: LogSink,
    pub slot: usize,
    pub slots: usize,
    pub gpus: Option<&'a [u32]>,
    pub ranks: usize,
    pub stop: &'a AtomicBool,
}

/// Starts a worker: the real runtimes, or a fake in tests.
pub type Spawner = Box<dyn FnMut(&SpawnRequest) -> std::result::Result<Box<dyn Worker>, WorkerError> + Send>;

/// The runtime `runtime.kind` names: a child process or a container.
pub fn runtime_spawner() -> Spawner {
    Box::new(|r: &SpawnRequest| -> std::result::Result<Box<dyn Worker>, WorkerError> {
        match r.config.runtime.kind {
            RuntimeKind::Process => {
                Ok(Box::new(ProcessWorker::spawn(r.config, r.log.clone(), HELLO_TIMEOUT, r.slot, r.gpus, r.ranks, r.stop)?))
            }
            RuntimeKind::Docker => {
                let path = crate::runtime::process::worker_path(r.config);
                let load_limit = r.config.scheduler.run_timeout.0;
                let w = DockerWorker::start(
                    r.config,
                    &path,
                    r.log.clone(),
                    HELLO_TIMEOUT,
                    load_limit,
                    r.slot,
                    r.slots,
                    r.gpus,
                    r.ranks,
                    r.stop,
                )?;
                Ok(Box::new(w))
            }
        }
    })
}

/// A worker, its state and what it holds.
struct Hand {
    worker: Option<Box<dyn Worker>>,
    state: WorkerState,
    /// The control set the worker holds loaded.
    loaded: Option<String>,
    /// The constructor options that load was made with (an OOM's remedy; `{}`: none).
    loaded_options: Value,
    /// Model loads since the worker started.
    loads: u64,
    /// Why the worker cannot start, until it does.
    error: Option<String>,
    next_spawn: Instant,
    backoff: Duration,
}

pub struct Scheduler {
    /// Which worker this is (0-based), and its GPUs (`None`: all).
    slot: usize,
    slot_gpus: Option<Vec<u32>>,
    shared: Shared,
    config: Config,
    layout: Layout,
    store: Store,
    outbox: Outbox,
    stop: Arc<AtomicBool>,
    reloads: Option<std::sync::mpsc::Receiver<Config>>,
    spawn: Spawner,
    hand: Hand,
    /// A run the worker was already running when this daemon attached (docker re-attach).
    adopt: Option<String>,
    log: LogSink,
    board: board::Board,
    /// Finished runs, published once the next run is on its way (in order; more than one
    /// only while publication fails for a reason that passes, a full disk say).
    pending: std::collections::VecDeque<publish::Finished>,
    /// Why the last publication could not be done, while it cannot: no new run starts.
    publish_blocked: Option<String>,
    /// When the worker last reported a run done: the dispatch gap runs from here to the
    /// next `run` op.
    last_done: Option<Instant>,
    run_gpu: crate::gpu::RunGpuStats,
    /// The shared queue of several hosts (`[cluster]`); `None`: the store's own queue.
    cluster: Option<ClusterSlot>,
}

impl Scheduler {
    pub fn new(config: &Config, stop: Arc<AtomicBool>, slot: usize, slot_gpus: Option<Vec<u32>>, shared: Shared) -> Result<Scheduler> {
        Scheduler::with_spawner(config, stop, slot, slot_gpus, shared, runtime_spawner())
    }

    /// [`Scheduler::new`] with the worker started by `spawn` (tests give a fake).
    pub fn with_spawner(
        config: &Config,
        stop: Arc<AtomicBool>,
        slot: usize,
        slot_gpus: Option<Vec<u32>>,
        shared: Shared,
        spawn: Spawner,
    ) -> Result<Scheduler> {
        let layout = Layout::of(&config.paths);
        let store = Store::open(&layout.database())?;
        store.relax_sync()?;
        let outbox = Outbox::new(&layout, config.outbox.mode.0);
        outbox.create_all()?;
        std::fs::create_dir_all(layout.work()).map_err(|source| SchedulerError::Io {
            what: "cannot create",
            path: layout.work(),
            source,
        })?;
        Ok(Scheduler {
            slot,
            slot_gpus,
            shared,
            config: config.clone(),
            layout,
            store,
            outbox,
            stop,
            reloads: None,
            spawn,
            hand: Hand {
                worker: None,
                state: WorkerState::Down,
                loaded: None,
                loaded_options: Value::Object(Default::default()),
                loads: 0,
                error: None,
                next_spawn: Instant::now(),
                backoff: Duration::from_secs(1),
            },
            adopt: None,
            log: Arc::new(Mutex::new(None)),
            board: board::Board::new(board::gpus_asked(config)),
            pending: std::collections::VecDeque::new(),
            publish_blocked: None,
            last_done: None,
            run_gpu: crate::gpu::RunGpuStats::default(),
            cluster: None,
        })
    }

    /// Takes runs from the shared queue of several hosts instead of the store's own.
    pub fn with_cluster(mut self, slot: ClusterSlot) -> Scheduler {
        self.cluster = Some(slot);
        self
    }

    /// New configurations (SIGHUP) arrive here.
    pub fn with_reloads(mut self, rx: std::sync::mpsc::Receiver<Config>) -> Scheduler {
        self.reloads = Some(rx);
        self
    }

    /// Runs until the stop flag is set; then hands back or finishes the run in hand.
    pub fn run(mut self) -> Result<()> {
        // Another process holding the store is waited for (here, on this thread).
        self.store.wait_while_busy(self.stop.clone())?;
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
        if let Err(e) = recovered {
            if !e.is_transient() {
                return Err(e);
            }
            // Recovery is done again at the next start; running runs stay as they are.
            tracing::warn!(error = %e, "start-up recovery could not finish; it is tried again at the next start");
        }
        let mut trouble: Option<String> = None;
        while !self.stopping() {
            match self.turn() {
                Ok(()) => {
                    if trouble.take().is_some() {
                        tracing::info!("the store and the disks answer again: going on");
                    }
                }
                Err(e) if e.is_transient() => {
                    let why = e.to_string();
                    if trouble.as_deref() != Some(why.as_str()) {
                        tracing::warn!(error = %why, "waiting for this to pass (nothing is lost meanwhile)");
                    }
                    self.set_waiting(Some(format!("{why}; retrying")));
                    trouble = Some(why);
                    self.sleep_unless_stopping(TROUBLE_RETRY);
                }
                Err(e) => {
                    // The run in hand was handed back (see `attempt`); what is finished is
                    // published and the worker let go, as at a stop.
                    self.wind_down();
                    return Err(e);
                }
            }
        }
        self.wind_down();
        Ok(())
    }

    /// What a scheduler does last: publish what finished, write the receipts, let the
    /// worker go, say so in status.json.
    fn wind_down(&mut self) {
        self.publish_pending();
        self.flush_receipts(true);
        if let Some(w) = self.hand.worker.take() {
            w.leave();
        }
        self.hand.state = WorkerState::Down;
        self.write_status_if_due(true);
    }

    /// One turn of the loop: take a reloaded configuration, write status.json when due,
    /// check the gates, then attempt the next run or wait for one.
    fn turn(&mut self) -> Result<()> {
        self.take_reload();
        self.write_status_if_due(false);
        // A publication that waits for a reason that passes (a full disk) is tried again
        // first. Any other finished run is published once the next run is on its way
        // (`attempt`), or now if none is: the GPU does not wait for our bookkeeping.
        if self.publish_blocked.is_some() {
            self.publish_pending();
        }
        if let Some(reason) = self.gate()?.reason().or_else(|| self.publish_blocked.clone()) {
            // The gates hold new runs, not the outputs of finished ones.
            self.publish_pending();
            self.set_waiting(Some(reason));
            std::thread::sleep(POLL);
            return Ok(());
        }
        let picked = self.pick();
        if picked.is_err() {
            // No next run to dispatch first (the store or the shared queue does not answer):
            // what finished is published now, or (its lease lost) discarded.
            self.publish_pending();
        }
        match picked? {
            Some(run) => {
                self.set_waiting(None);
                self.attempt(run)?;
            }
            None => {
                self.last_done = None;
                self.publish_pending();
                self.set_waiting(None);
                self.idle_wait();
            }
        }
        Ok(())
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn sleep_unless_stopping(&self, total: Duration) {
        let until = Instant::now() + total;
        while !self.stopping() && Instant::now() < until {
            std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
        }
    }

    /// Runs a store write until it is done, waiting out transient failures (a full disk,
    /// an I/O error; a busy store is already waited for) unless the daemon stops. What a
    /// stop leaves undone, start-up recovery finds (a run still `running`).
    fn persist<T>(&mut self, mut write: impl FnMut(&mut Store) -> std::result::Result<T, StoreError>) -> Result<T> {
        let mut told = false;
        loop {
            match write(&mut self.store) {
                Err(e) if e.is_transient() && !self.stopping() => {
                    if !told {
                        tracing::warn!(error = %e, "cannot record this yet; retrying until it can be");
                        told = true;
                    }
                    self.set_waiting(Some(format!("{e}; retrying")));
                    self.sleep_unless_stopping(TROUBLE_RETRY);
                }
                other => return Ok(other?),
            }
        }
    }

    /// Takes the newest configuration a SIGHUP sent, keeping the folders (they move only on
    /// restart).
    fn take_reload(&mut self) {
        if let Some(config) = self.reloads.as_ref().and_then(|rx| rx.try_iter().last()) {
            let paths = self.config.paths.clone();
            self.config = config;
            self.config.paths = paths;
            self.outbox.mode = self.config.outbox.mode.0;
        }
    }

    /// What holds the queue: pause, then the disk guard.
    fn gate(&self) -> Result<policy::Gate> {
        let free = [self.layout.outbox().to_path_buf(), self.layout.state().to_path_buf()].map(|d| {
            let f = crate::fsutil::free_bytes(&d);
            (d, f)
        });
        Ok(policy::gate(self.store.paused()?, &free, self.config.outbox.min_free.0))
    }

    /// The next run, by [`policy::choose_next`] over the store's candidates (or claimed
    /// from the shared queue, which follows the same rules).
    fn pick(&mut self) -> Result<Option<crate::store::Run>> {
        if self.cluster.is_some() {
            return self.cluster_pick();
        }
        let (loaded, now) = (self.hand.loaded.as_deref(), crate::time::Timestamp::now());
        // A run an OOM moved to a larger group than any there is now (the configuration
        // changed) is not left waiting for ever: the largest group takes any run.
        let mine = self.group_gpus();
        let within = if self.group_sizes().into_iter().all(|size| size <= mine) { usize::MAX } else { mine };
        let candidates = self.store.queue_candidates_for(loaded, now, within)?;
        Ok(policy::choose_next(candidates, loaded, now, self.config.scheduler.max_affinity_wait.0))
    }

    /// How many GPUs this worker has (`None`, all: as many as the host has, at least 1).
    fn group_gpus(&self) -> usize {
        match &self.slot_gpus {
            Some(g) => g.len().max(1),
            None => self.board.samples.len().max(1),
        }
    }

    /// The sizes of every worker's GPU group, as the configuration makes them.
    fn group_sizes(&self) -> Vec<usize> {
        worker_groups(&self.config.runtime.gpus)
            .iter()
            .map(|g| match g {
                Some(g) => g.len().max(1),
                None => self.board.samples.len().max(1),
            })
            .collect()
    }

    fn idle_wait(&mut self) {
        // Read worker messages (a crash while idle is noticed here) until the next poll.
        if self.cluster.is_some() {
            if let Some(WorkerMsg::Exited) = self.hand.worker.as_ref().and_then(|w| w.recv(Duration::ZERO)) {
                tracing::warn!("the worker exited while idle; it restarts with the next run");
                self.drop_worker();
            }
            self.cluster_idle_wait();
            return;
        }
        if let Some(w) = &self.hand.worker {
            if let Some(WorkerMsg::Exited) = w.recv(IDLE_POLL) {
                tracing::warn!("the worker exited while idle; it restarts with the next run");
                self.drop_worker();
            }
        } else {
            std::thread::sleep(IDLE_POLL);
        }
    }

    fn drop_worker(&mut self) {
        if let Some(mut w) = self.hand.worker.take() {
            w.kill();
        }
        self.hand.loaded = None;
        self.hand.state = WorkerState::Down;
    }

    /// A worker to send to, started (or re-attached to) if there is none, unless its GPUs
    /// lack memory or it failed to start too recently.
    fn ensure_worker(&mut self) -> bool {
        if self.hand.worker.is_some() {
            return true;
        }
        if Instant::now() < self.hand.next_spawn {
            std::thread::sleep(POLL);
            return false;
        }
        self.board.samples = self.board.gpus.sample();
        if let Some(reason) = policy::gpu_short(&self.board.samples, self.slot_gpus.as_deref(), self.config.runtime.min_free_gpu_mib) {
            self.set_waiting(Some(reason));
            std::thread::sleep(Duration::from_secs(1));
            return false;
        }
        self.hand.state = WorkerState::Starting;
        self.write_status_if_due(true);
        // One process per GPU of this worker (torchrun for more than one).
        let ranks = crate::runtime::launch::ranks_for(self.slot_gpus.as_deref(), self.board.samples.len());
        let request = SpawnRequest {
            config: &self.config,
            log: self.log.clone(),
            slot: self.slot,
            slots: self.shared.slots,
            gpus: self.slot_gpus.as_deref(),
            ranks,
            stop: &self.stop,
        };
        match (self.spawn)(&request) {
            Ok(mut w) => {
                let info = w.info();
                tracing::info!(backend = %info.backend, version = %info.version, pid = info.pid, container = ?info.container_id, "worker ready");
                self.hand.loads = 0;
                self.hand.loaded = None;
                if let Some(found) = w.take_found() {
                    if !found.controls.is_empty() {
                        let set = crate::spec::control_set_key(found.controls.iter().filter_map(|c| Hint::parse(c)));
                        tracing::info!(controls = %set, "the worker still holds its model: no new load");
                        self.hand.loaded = Some(set);
                        self.hand.loaded_options = found.options.clone();
                    }
                    // On a shared queue the run went back at start-up (another host may have it).
                    self.adopt = if self.cluster.is_some() { None } else { found.running };
                }
                self.hand.worker = Some(w);
                self.hand.state = WorkerState::Idle;
                self.hand.backoff = Duration::from_secs(1);
                self.hand.error = None;
                self.set_waiting(None);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?self.hand.backoff, "cannot start the worker; runs stay queued");
                self.hand.error = Some(format!("worker not starting: {e}"));
                self.hand.state = WorkerState::Down;
                self.write_status_if_due(true);
                self.hand.next_spawn = Instant::now() + self.hand.backoff;
                self.hand.backoff = policy::spawn_backoff(self.hand.backoff);
                false
            }
        }
    }

    /// A line in the current run's execution.log.
    fn run_log(&self, line: &str) {
        if let Ok(mut sink) = self.log.lock() {
            if let Some(f) = sink.as_mut() {
                let _ = writeln!(f, "{} cosmosd: {line}", Timestamp::now().rfc3339());
            }
        }
    }

    fn set_waiting(&mut self, reason: Option<String>) {
        if reason != self.board.waiting {
            if let Some(r) = &reason {
                tracing::info!(reason = %r, "waiting");
            }
            self.board.waiting = reason;
            self.write_status_if_due(true);
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
        v["sim"] = serde_json::to_value(sim).unwrap_or(Value::Null); // ok: transfer1_spec returns an object
    }
    v
}

#[cfg(test)]
mod tests;
