//! A slot's side of the shared queue (`[cluster]`, DESIGN.md "Several hosts"): the next run
//! is claimed from PostgreSQL (affinity to the loaded control set, priority, age), held
//! under a lease the host's [`LeaseKeeper`] renews, and ended only under its fencing token.
//! A finished run's folder is built in `shared_dir/results/<token>/` and committed with the
//! finish; the origin host takes it into its outbox. A slot whose lease was lost stops the
//! run and discards what it made: another host may be running it already.
//!
//! The rest of the attempt (the worker, the watchdog, the retry verdict, OOM healing) is the
//! scheduler's own, the same on one host and on many.

use super::attempt::Ending;
use super::publish::{upscale_spec, Finished, PublishError};
use super::{Result, Scheduler};
use crate::cluster::{self, ClaimRequest, ClusterError, LeaseKeeper, LeaseState, Outcome, PgQueue, SharedDir, Token, Wake, Waker};
use crate::layout::run_files;
use crate::runtime::worker::WorkerInfo;
use crate::store::{Batch, Run};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an idle slot waits for a notification before it looks at the queue anyway
/// (notifications are lost while disconnected; backoffs end unannounced).
const POLL_FALLBACK: Duration = Duration::from_secs(1);

/// What a slot needs to take runs from the shared queue.
pub struct ClusterSlot {
    queue: PgQueue,
    waker: Option<Waker>,
    keeper: Arc<LeaseKeeper>,
    shared: SharedDir,
    lease: Duration,
    /// `<slot number>`: the slot's name in the queue (the host is the queue's host id).
    slot_name: String,
    /// Claimed runs this slot still holds (in the worker, or finished and waiting to be
    /// published), by id.
    held: HashMap<String, Held>,
    /// Why the lease of the run in the worker was lost, once it was.
    lost: Option<String>,
    /// Set after a notification or the poll fallback: look at the queue now.
    look: bool,
}

struct Held {
    token: Token,
    run: Run,
    batch: Option<Batch>,
    remedy: Option<Value>,
}

impl ClusterSlot {
    /// `queue`: a connection of this slot's own; `keeper`: the host's.
    pub fn new(mut queue: PgQueue, keeper: Arc<LeaseKeeper>, shared: SharedDir, lease: Duration, slot: usize) -> ClusterSlot {
        // A slot blocked on an unreachable database cannot see a stop or its worker: it
        // tries again at its next turn instead (the lease keeper decides when a held lease
        // is lost).
        // And no single wait (a commit on a cut link) may outlast a sixth of the lease: the
        // slot must be back in time to see its lease lost and discard the attempt (a wait
        // and its retry together stay within a third).
        let wait = (lease / 6).min(Duration::from_secs(10));
        queue.reconnect_within(wait);
        queue.limit_waits(wait);
        let waker = match queue.waker() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for new runs; polling every second instead");
                None
            }
        };
        ClusterSlot { queue, waker, keeper, shared, lease, slot_name: slot.to_string(), held: HashMap::new(), lost: None, look: true }
    }
}

impl Scheduler {
    /// The next run from the shared queue, claimed under a lease; only once a worker is
    /// there to take it (a claimed run must not wait on a worker that cannot start).
    pub(super) fn cluster_pick(&mut self) -> Result<Option<Run>> {
        if !self.ensure_worker() {
            return Ok(None);
        }
        let loaded = self.hand.loaded.clone();
        let max_affinity_wait = self.config.scheduler.max_affinity_wait.0;
        let Some(c) = self.cluster.as_mut() else { return Ok(None) };
        if !c.look {
            return Ok(None);
        }
        let sent = Instant::now();
        let req = ClaimRequest { slot: &c.slot_name, loaded: loaded.as_deref(), max_affinity_wait, lease: c.lease };
        let claim = match c.queue.claim(&req) {
            Ok(Some(claim)) => claim,
            Ok(None) => {
                c.look = false;
                return Ok(None);
            }
            // Waited out by the loop (said in status.json), then tried again.
            Err(e) => return Err(super::SchedulerError::Queue(e)),
        };
        c.keeper.hold(&claim.run.id, claim.token, claim.lease, sent);
        let (run, batch) = cluster::local_view(&claim.run);
        tracing::info!(run = %run.id, token = %claim.token, attempt = run.attempts, origin = %claim.run.origin_host, "claimed from the shared queue");
        c.held.insert(run.id.clone(), Held { token: claim.token, run: run.clone(), batch, remedy: claim.run.remedy.clone() });
        c.lost = None;
        Ok(Some(run))
    }

    /// Waits for a notification (or the poll fallback) while idle.
    pub(super) fn cluster_idle_wait(&mut self) {
        let Some(c) = self.cluster.as_mut() else { return };
        match c.waker.as_mut().map(|w| w.wait(POLL_FALLBACK)) {
            Some(Ok(Wake::Disconnected(why))) => {
                tracing::debug!(%why, "not listening for new runs; polling");
                std::thread::sleep(super::POLL);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot listen for new runs; polling");
                c.waker = None;
            }
            None => std::thread::sleep(POLL_FALLBACK),
        }
        c.look = true;
    }

    /// The batch of a claimed run (from its origin host's record).
    pub(super) fn cluster_batch(&self, run_id: &str) -> Option<Batch> {
        self.cluster.as_ref()?.held.get(run_id)?.batch.clone()
    }

    /// The remedy an OOM left for a claimed run.
    pub(super) fn cluster_remedy(&self, run_id: &str) -> Option<Value> {
        self.cluster.as_ref()?.held.get(run_id)?.remedy.clone()
    }

    /// Whether a cancel was asked for the run in the worker; a lost lease counts as one
    /// (the run is stopped) and is remembered, so that the attempt is discarded.
    pub(super) fn cluster_should_stop(&mut self, run_id: &str) -> bool {
        let Some(c) = self.cluster.as_mut() else { return false };
        match c.keeper.state(run_id) {
            LeaseState::Held { cancel } => cancel,
            LeaseState::Lost(why) => {
                if c.lost.is_none() {
                    tracing::warn!(run = %run_id, %why, "the lease is lost: stopping the run; its output will be discarded");
                    c.lost = Some(why);
                }
                true
            }
        }
    }

    /// The attempt's ending, or a discard if its lease was lost on the way.
    pub(super) fn cluster_ending(&mut self, ending: Ending) -> Ending {
        if let Some(c) = self.cluster.as_mut() {
            // The slot is free again: the next claim comes at once.
            c.look = true;
        }
        match self.cluster.as_mut().and_then(|c| c.lost.take()) {
            Some(why) => Ending::Discarded { why },
            None => ending,
        }
    }

    /// Ends the attempt of `run` in the shared queue under its token. A refusal (the lease
    /// was lost) or an unreachable database leaves the run to the reaper: logged, not fatal.
    pub(super) fn cluster_finish(&mut self, run_id: &str, outcome: &Outcome) {
        let Some(c) = self.cluster.as_mut() else { return };
        let Some(held) = c.held.remove(run_id) else { return };
        c.keeper.release(run_id);
        c.look = true;
        match c.queue.finish(run_id, held.token, outcome) {
            Ok(_) => {}
            Err(e @ ClusterError::Fenced { .. }) => tracing::warn!(run = %run_id, error = %e, "the attempt's end was refused: discarded"),
            Err(e) => {
                tracing::warn!(run = %run_id, error = %e, "cannot end the attempt in the shared queue; its lease lapses and it is queued again")
            }
        }
    }

    /// Back to the shared queue after a retryable failure, not before `when`.
    pub(super) fn cluster_retry(&mut self, run_id: &str, why: &str, when: crate::time::Timestamp) {
        let after = Duration::from_millis(u64::try_from(when.0 - crate::time::Timestamp::now().0).unwrap_or(0));
        self.cluster_finish(run_id, &Outcome::Retry { reason: why.to_string(), after });
    }

    /// Keeps the remedy for the next attempt of a claimed run (before its retry).
    pub(super) fn cluster_set_remedy(&mut self, run_id: &str, remedy: &Value) {
        let Some(c) = self.cluster.as_mut() else { return };
        let Some(held) = c.held.get(run_id) else { return };
        if let Err(e) = c.queue.set_remedy(run_id, held.token, remedy) {
            tracing::warn!(run = %run_id, error = %e, "cannot keep the run's memory-saving remedy in the shared queue");
        }
    }

    /// Drops an attempt whose lease was lost: nothing of it is published.
    pub(super) fn cluster_discard(&mut self, run_id: &str, why: &str) {
        tracing::warn!(run = %run_id, %why, "the attempt is discarded: nothing of it is published");
        self.run_log(&format!("the lease is lost ({why}): the attempt is discarded"));
        if let Some(c) = self.cluster.as_mut() {
            if let Some(held) = c.held.remove(run_id) {
                let _ = std::fs::remove_dir_all(c.shared.results(held.token));
            }
            c.keeper.release(run_id);
            c.look = true;
        }
        let _ = std::fs::remove_dir_all(self.layout.run_work(run_id));
    }

    /// Publishes a finished claimed run: its folder built in `shared_dir/results/<token>/`
    /// and committed with the finish under the token. Only transient errors come back (the
    /// run waits, its lease kept); a lost lease discards the folder.
    pub(super) fn cluster_publish(&mut self, f: &Finished) -> std::result::Result<(), PublishError> {
        let Some(c) = self.cluster.as_ref() else { return Ok(()) };
        let Some(held) = c.held.get(&f.run_id) else { return Ok(()) };
        let (token, batch, remedy, run) = (held.token, held.batch.clone(), held.remedy.clone(), held.run.clone());
        let run = &run;
        if let LeaseState::Lost(why) = c.keeper.state(&run.id) {
            self.cluster_discard(&run.id, &why);
            return Ok(());
        }
        let results = c.shared.results(token);
        let shared = c.shared.clone();
        let layout = crate::layout::Layout::new(self.layout.inbox(), &results, self.layout.state());
        let outbox = crate::outbox::Outbox::new(&layout, self.outbox.mode);
        let made = outbox.create_all().map_err(crate::outbox::OutboxError::from).and_then(|()| {
            let info = self
                .hand
                .worker
                .as_ref()
                .map(|w| w.info())
                .unwrap_or_else(|| WorkerInfo { backend: self.config.runtime.backend.as_str().to_string(), ..Default::default() });
            let timing = crate::outbox::RunTiming { seconds: f.seconds, load_seconds: f.load_seconds };
            let child_id = run
                .spec
                .upscale_weight
                .map(|_| outbox.published_child(&run.id).unwrap_or_else(|| crate::ids::new_id(crate::ids::IdKind::Run)));
            let extra = crate::outbox::RunExtra { gpu: f.gpu.clone(), remedy };
            let host = self.config.cluster.effective_host_id();
            outbox
                .publish_run_on(run, &f.outputs, batch.as_ref(), &info, child_id.as_deref(), timing, extra, Some(&host))
                .map(|dir| (dir, child_id))
        });
        let (dir, child_id) = match made {
            Ok(v) => v,
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) => {
                tracing::error!(run = %run.id, error = %e, "cannot build the run folder");
                self.cluster_finish(&run.id, &Outcome::Failed { error: format!("cannot publish the run folder: {e}") });
                let _ = std::fs::remove_dir_all(&results);
                return Ok(());
            }
        };
        let video = dir.join(run_files::OUTPUT_VIDEO);
        // The upscale run reads this video wherever it runs: a shared copy, since the
        // origin host takes this folder away once it has it.
        let child = match (child_id, run.spec.upscale_weight) {
            (Some(id), Some(w)) => match shared.share_file(&video) {
                Ok(input) => Some(Box::new((id, upscale_spec(&run.spec, w, &input)))),
                Err(e) => return Err(crate::outbox::OutboxError::from(e).into()),
            },
            _ => None,
        };
        let outputs = json!({
            "type": if batch.is_some() { "batch_inference" } else { "inference" },
            "output_dir": dir,
            "primary_output": video,
            "batch_name": batch.as_ref().map(|b| b.folder_name()),
        });
        let Some(c) = self.cluster.as_mut() else { return Ok(()) };
        match c.queue.finish(&run.id, token, &Outcome::Completed { outputs, child }) {
            Ok(_) => {
                c.held.remove(&run.id);
                c.keeper.release(&run.id);
                c.look = true;
                tracing::info!(run = %run.id, token = %token, folder = %dir.display(), "completed (committed to the shared queue)");
                let _ = std::fs::remove_dir_all(self.layout.run_work(&run.id));
                Ok(())
            }
            Err(e @ ClusterError::Fenced { .. }) => {
                tracing::warn!(run = %run.id, error = %e, "the result was refused: discarding it");
                let why = e.to_string();
                self.cluster_discard(&run.id, &why);
                Ok(())
            }
            Err(e) => Err(PublishError::Queue(e)),
        }
    }
}
