//! The origin host's side of the shared queue, on a thread of its own:
//!
//! - **export**: the runs this host's inbox (or `cosmos`) queued enter the shared queue
//!   once, their inputs copied into `shared_dir` first, with the host's own record of each
//!   (prompt, batch, submission, line) so that any host can write the manifest;
//! - **delivery**: a run of this host that ended, on whichever host, is taken into this
//!   host's outbox (the folder the queue committed, copied whole and renamed into place),
//!   its end recorded in the store (with the host it ran on, its upscale child, the hooks it
//!   owes), its receipt rewritten, and only then marked delivered;
//! - **upkeep**: the host's heartbeat (its slots, for `cosmos status` on any host), the
//!   reaper of lapsed leases (every host runs it; each lapsed run is reaped once), and the
//!   cluster's part of status.json.
//!
//! Every step is idempotent, so a crash anywhere is repaired by doing it again: a run
//! enqueued twice is there once, a folder delivered twice is there once, an end recorded
//! twice is recorded once.

use super::{ClusterError, HostBeat, NewRun, Outcome, PgQueue, QueueRun, SharedDir, SlotBeat};
use crate::config::Config;
use crate::layout::{run_files, Layout};
use crate::outbox::{Outbox, RECEIPT_AT_ONCE, RECEIPT_EVERY};
use crate::store::{Batch, EndedElsewhere, Run, RunStatus, Store};
use crate::time::Timestamp;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the home loop looks for runs to export and to deliver.
const TICK: Duration = Duration::from_millis(250);
/// Runs per enqueue call (one transaction).
const EXPORT_CHUNK: usize = 500;

/// One of this host's slots, as the heartbeat reports it.
#[derive(Debug, Clone, Default)]
pub struct SlotNow {
    pub slot: String,
    pub gpus: Vec<u32>,
    pub loaded_controls: Option<String>,
    pub state: String,
    pub run_id: Option<String>,
}

/// What the home loop needs from the daemon.
pub struct HomeSetup {
    pub config: Config,
    pub stop: Arc<AtomicBool>,
    /// This host's slots now (the schedulers' board), read at each heartbeat.
    pub slots: Box<dyn Fn() -> Vec<SlotNow> + Send>,
    /// Receives the cluster's part of status.json at each heartbeat.
    pub status: Box<dyn Fn(Value) + Send>,
}

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error(transparent)]
    Queue(#[from] ClusterError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Path(#[from] crate::fsutil::PathIo),
    #[error(transparent)]
    Outbox(#[from] crate::outbox::OutboxError),
}

pub struct Home {
    setup: HomeSetup,
    queue: PgQueue,
    store: Store,
    layout: Layout,
    outbox: Outbox,
    shared: SharedDir,
    host: String,
    started_at: Timestamp,
    /// Export watermarks: runs inserted after this rowid, and runs queued again (events
    /// of kind `queued`) after this event.
    rowid: i64,
    event: i64,
    receipts_due: HashMap<String, Instant>,
    connected: bool,
    next_prune: Instant,
}

impl Home {
    /// Connects, makes the shared folders and hands back the runs a previous daemon of
    /// this host held (it is gone, and so are its workers' runs). Call before any slot of
    /// this host claims, so that nothing claimed now is handed back.
    pub fn start(setup: HomeSetup) -> Result<Home, HomeError> {
        let c = &setup.config.cluster;
        let host = c.effective_host_id();
        let mut queue = PgQueue::connect(&c.database, &host)?;
        // Each step is tried again at the next tick; a stop is not kept waiting for long.
        queue.reconnect_within(Duration::from_secs(10));
        let layout = Layout::of(&setup.config.paths);
        let store = Store::open(&layout.database())?;
        let outbox = Outbox::new(&layout, setup.config.outbox.mode.0);
        let shared = SharedDir::new(&c.shared_dir);
        shared.create_all()?;
        for held in queue.held_here()? {
            let why = "handed back: the daemon of this host restarted mid-run".to_string();
            match queue.finish(&held.run.id, held.token, &Outcome::HandBack { reason: why }) {
                Ok(_) => tracing::warn!(run = %held.run.id, token = %held.token, "handed back a run this host held before it restarted"),
                Err(e) => tracing::warn!(run = %held.run.id, error = %e, "cannot hand back a run held before the restart; it lapses"),
            }
        }
        let event = store.last_event_seq()?;
        Ok(Home {
            setup,
            queue,
            store,
            layout,
            outbox,
            shared,
            host,
            started_at: Timestamp::now(),
            rowid: 0,
            event,
            receipts_due: HashMap::new(),
            connected: true,
            next_prune: Instant::now(),
        })
    }

    /// Runs until the stop flag is set; each step's failure is logged and tried again.
    pub fn run(mut self) {
        let beat_every = (self.setup.config.cluster.lease.0 / 3).clamp(Duration::from_millis(500), Duration::from_secs(10));
        let mut next_beat = Instant::now();
        while !self.setup.stop.load(Ordering::SeqCst) {
            let export = self.export();
            let deliver = self.deliver();
            self.note(export.and(deliver));
            if Instant::now() >= next_beat {
                next_beat = Instant::now() + beat_every;
                let upkeep = self.upkeep();
                self.note(upkeep);
            }
            self.flush_receipts(false);
            std::thread::sleep(TICK);
        }
        self.flush_receipts(true);
        if let Err(e) = self.queue.leave() {
            tracing::debug!(error = %e, "cannot take this host out of the registry");
        }
    }

    fn note(&mut self, step: Result<(), HomeError>) {
        match step {
            Ok(()) => {
                if !self.connected {
                    tracing::info!("the queue database answers again");
                    self.connected = true;
                }
            }
            Err(e) => {
                if self.connected {
                    tracing::warn!(error = %e, "the shared queue step failed; trying again (nothing is lost meanwhile)");
                }
                self.connected = !matches!(e, HomeError::Queue(ClusterError::Unavailable { .. }));
            }
        }
    }

    /// Puts what this host queued since the last look into the shared queue.
    fn export(&mut self) -> Result<(), HomeError> {
        loop {
            let batch = self.store.queued_after(self.rowid, EXPORT_CHUNK)?;
            let Some(&(last, _)) = batch.last() else { break };
            self.enqueue(batch.into_iter().map(|(_, r)| r).collect())?;
            self.rowid = last;
        }
        loop {
            let (last, runs) = self.store.queued_again_after(self.event, EXPORT_CHUNK)?;
            if last == self.event {
                break;
            }
            self.enqueue(runs)?;
            self.event = last;
        }
        Ok(())
    }

    fn enqueue(&mut self, runs: Vec<Run>) -> Result<(), HomeError> {
        let mut prepared = Vec::with_capacity(runs.len());
        for run in runs {
            let mut spec = run.spec.clone();
            self.shared.share_inputs(&mut spec, &self.layout.inputs())?;
            let batch = match &run.batch_id {
                Some(b) => Some(self.store.batch(b)?),
                None => None,
            };
            let home = home_record(&run, batch.as_ref());
            prepared.push((run, spec, home));
        }
        let new: Vec<NewRun<'_>> = prepared
            .iter()
            .map(|(run, spec, home)| NewRun {
                id: &run.id,
                spec,
                created_at: Timestamp::parse_rfc3339(&run.created_at).unwrap_or_else(Timestamp::now),
                parent_id: run.parent_id.as_deref(),
                home: Some(home),
            })
            .collect();
        if !new.is_empty() {
            self.queue.enqueue(&new)?;
            tracing::debug!(runs = new.len(), "runs put into the shared queue");
        }
        Ok(())
    }

    /// Takes the runs of this host that ended into its outbox and store.
    fn deliver(&mut self) -> Result<(), HomeError> {
        for ended in self.queue.undelivered(100)? {
            self.deliver_one(&ended)?;
            self.queue.mark_delivered(&ended.id)?;
            if let Some(dir) = committed_folder(&ended) {
                if let Some(attempt) = dir.parent() {
                    let _ = std::fs::remove_dir_all(attempt);
                }
            }
        }
        Ok(())
    }

    fn deliver_one(&mut self, ended: &QueueRun) -> Result<(), HomeError> {
        let local = match self.store.run(&ended.id) {
            Ok(r) => r,
            // Deleted here meanwhile (`cosmos delete run`): nothing to deliver it to.
            Err(crate::store::StoreError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let host = ended.ran_on.clone().unwrap_or_else(|| self.host.clone());
        let batch = match &local.batch_id {
            Some(b) => Some(self.store.batch(b)?),
            None => None,
        };
        let end = match ended.status {
            RunStatus::Completed => match committed_folder(ended) {
                Some(from) if from.is_dir() => {
                    let to = self.outbox.run_dir(&ended.id);
                    super::copy_folder_into(&from, &to, &self.layout.outbox_staging())?;
                    let child = self.child_of(&ended.id)?.map(Box::new);
                    let outputs = json!({
                        "type": if batch.is_some() { "batch_inference" } else { "inference" },
                        "output_dir": to,
                        "primary_output": to.join(run_files::OUTPUT_VIDEO),
                        "batch_name": batch.as_ref().map(|b| b.folder_name()),
                        "ran_on": host,
                    });
                    EndedElsewhere::Completed { outputs, child }
                }
                _ => EndedElsewhere::Failed {
                    error: format!("completed on {host}, but its run folder is not in cluster.shared_dir: was the shared storage changed?"),
                },
            },
            RunStatus::Cancelled => {
                EndedElsewhere::Cancelled { reason: ended.error.clone().unwrap_or_else(|| "cancelled by request".into()) }
            }
            _ => EndedElsewhere::Failed { error: ended.error.clone().unwrap_or_else(|| "failed".into()) },
        };
        let Some(run) = self.store.end_elsewhere(&ended.id, &host, ended.attempts, &end)? else { return Ok(()) };
        tracing::info!(run = %run.id, status = %run.status, ran_on = %host, "delivered");
        if let Some(b) = &batch {
            if let Err(e) = self.outbox.ensure_batch_folder(&self.store, b) {
                tracing::warn!(error = %e, batch = %b.id, "cannot write the batch folder");
            }
            self.outbox.append_batch_log(b, &format!("{} {} on {host}", run.id, run.status));
        }
        if let Some(sb) = &run.submission_id {
            let sub = self.store.submission(sb)?;
            if sub.runs > RECEIPT_AT_ONCE {
                self.receipts_due.entry(sb.clone()).or_insert_with(Instant::now);
            } else if let Err(e) = self.outbox.write_receipt(&self.store, &sub) {
                tracing::warn!(error = %e, run = %run.id, "cannot update the receipt");
            }
        }
        Ok(())
    }

    /// The upscale child a delivered run's manifest names, as the shared queue holds it.
    fn child_of(&mut self, run_id: &str) -> Result<Option<(String, crate::spec::RunSpec)>, HomeError> {
        let Some(id) = self.outbox.published_child(run_id) else { return Ok(None) };
        match self.queue.run(&id) {
            Ok(child) => Ok(Some((child.id, child.spec))),
            Err(ClusterError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn flush_receipts(&mut self, all: bool) {
        let now = Instant::now();
        let due: Vec<String> = self
            .receipts_due
            .iter()
            .filter(|(_, since)| all || now.duration_since(**since) >= RECEIPT_EVERY)
            .map(|(s, _)| s.clone())
            .collect();
        for sb in due {
            self.receipts_due.remove(&sb);
            let written = self
                .store
                .submission(&sb)
                .map_err(crate::outbox::OutboxError::from)
                .and_then(|sub| self.outbox.write_receipt(&self.store, &sub));
            if let Err(e) = written {
                tracing::warn!(error = %e, submission = %sb, "cannot update the receipt");
            }
        }
    }

    /// The heartbeat, the reaper and the cluster's part of status.json.
    fn upkeep(&mut self) -> Result<(), HomeError> {
        let slots = (self.setup.slots)();
        let beats: Vec<SlotBeat<'_>> = slots
            .iter()
            .map(|s| SlotBeat {
                slot: &s.slot,
                gpus: &s.gpus,
                loaded_controls: s.loaded_controls.as_deref(),
                state: &s.state,
                run_id: s.run_id.as_deref(),
            })
            .collect();
        let beat = HostBeat { version: env!("CARGO_PKG_VERSION"), pid: std::process::id(), started_at: self.started_at, slots: &beats };
        self.queue.heartbeat(&beat)?;
        for r in self.queue.reap(self.setup.config.scheduler.max_attempts)? {
            match r.requeued_after {
                Some(after) => {
                    tracing::warn!(run = %r.run_id, host = %r.host, slot = %r.slot, retry_in = ?after, "a lapsed lease was reaped: the run is queued again")
                }
                None => {
                    tracing::warn!(run = %r.run_id, host = %r.host, slot = %r.slot, "a lapsed lease was reaped: the run is out of attempts and failed")
                }
            }
        }
        if let Some(after) = self.setup.config.daemon.prune_after.0.filter(|_| Instant::now() >= self.next_prune) {
            self.next_prune = Instant::now() + Duration::from_secs(3600);
            let n = self.queue.prune_delivered(after)?;
            if n > 0 {
                tracing::info!(runs = n, "pruned delivered runs from the shared queue (daemon.prune_after)");
            }
            // Inputs no open run names and none named for as long (each host prunes; a
            // file another host removed first is simply gone).
            let open = self.queue.open_inputs()?;
            let gone = self.shared.prune_inputs(after, &open);
            if gone > 0 {
                tracing::info!(files = gone, "pruned inputs no open run names from cluster.shared_dir (daemon.prune_after)");
            }
        }
        let counts = self.queue.counts()?;
        // The same shape as `cosmos status --json` prints (HostView as serde writes it).
        let hosts = serde_json::to_value(self.queue.hosts()?).unwrap_or(Value::Null);
        (self.setup.status)(json!({
            "host_id": self.host,
            "database": self.queue.target(),
            "connected": true,
            "lease_seconds": self.setup.config.cluster.lease.0.as_secs_f64(),
            "queue": {"queued": counts.queued, "running": counts.running, "completed": counts.completed, "failed": counts.failed, "cancelled": counts.cancelled},
            "hosts": hosts,
        }));
        Ok(())
    }
}

/// The origin host's record of a run, carried in the shared queue for the manifest.
pub fn home_record(run: &Run, batch: Option<&Batch>) -> Value {
    json!({
        "prompt_id": run.prompt_id,
        "name": run.name,
        "submission": run.submission_id,
        "line": run.line,
        "created_at": run.created_at,
        "batch": batch.map(|b| json!({"id": b.id, "name": b.name, "kind": b.kind, "created_at": b.created_at})),
    })
}

/// A claimed run as the scheduler handles runs: the shared queue's row with the origin
/// host's record (`home`), running, under its attempt count.
pub fn local_view(q: &QueueRun) -> (Run, Option<Batch>) {
    let home = q.home.clone().unwrap_or(Value::Null);
    let text = |k: &str| home[k].as_str().map(str::to_string);
    let batch = home["batch"].as_object().map(|b| Batch {
        id: b.get("id").and_then(Value::as_str).unwrap_or_default().to_string(),
        name: b.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
        kind: b.get("kind").and_then(Value::as_str).unwrap_or_default().to_string(),
        created_at: b.get("created_at").and_then(Value::as_str).unwrap_or_default().to_string(),
    });
    let run = Run {
        id: q.id.clone(),
        prompt_id: text("prompt_id").unwrap_or_default(),
        name: text("name").or_else(|| q.spec.name.clone()),
        status: RunStatus::Running,
        spec: q.spec.clone(),
        control_set: q.control_set.clone(),
        priority: q.priority,
        batch_id: batch.as_ref().map(|b| b.id.clone()),
        submission_id: text("submission"),
        line: home["line"].as_u64(),
        parent_id: q.parent_id.clone(),
        attempts: q.attempts,
        outputs: None,
        error: None,
        created_at: text("created_at").unwrap_or_else(|| q.created_at.rfc3339()),
        queued_at: Some(q.queued_at.rfc3339()),
        started_at: q.started_at.map(|t| t.rfc3339()),
        finished_at: None,
        updated_at: q.updated_at.rfc3339(),
    };
    (run, batch)
}

/// The run folder the queue committed for a completed run (`outputs.output_dir`).
fn committed_folder(q: &QueueRun) -> Option<PathBuf> {
    q.outputs.as_ref()?.get("output_dir")?.as_str().map(PathBuf::from)
}
