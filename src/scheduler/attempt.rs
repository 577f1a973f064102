//! One attempt of one run: start it in the store, write its spec, make the worker hold its
//! control set (one load per set, not per run), send it, and wait, the load and the run
//! alike under one [`Watchdog`] (timeout, ping, cancel, stop); then settle it: publish,
//! retry with backoff, or fail.

use super::board::Current;
use super::policy::{self, Verdict};
use super::publish::{video_ok, Finished};
use super::watchdog::{Action, Limits, Stop, Watchdog};
use super::{Result, Scheduler, WorkerState, POLL, PONG_TIMEOUT, QUIET_BEFORE_PING};
use crate::fsutil::at;
use crate::runtime::protocol::{Event, FailureKind, Op, Outputs};
use crate::runtime::worker::WorkerMsg;
use crate::store::{Batch, Change, Run, StoreError};
use crate::time::Timestamp;
use serde_json::json;
use std::path::Path;
use std::time::Instant;

/// How an attempt ended, as the scheduler sees it.
pub enum Ending {
    Done {
        outputs: Outputs,
        seconds: f64,
    },
    Failed {
        kind: FailureKind,
        retryable: bool,
        message: String,
    },
    Cancelled,
    /// The daemon is stopping: the run goes back to the queue.
    HandedBack,
    /// The lease on the shared queue was lost: another host may run it; nothing of this
    /// attempt is kept.
    Discarded {
        why: String,
    },
}

/// What an attempt waits for.
pub enum Phase<'a> {
    /// The model to hold this control set.
    Load { set: &'a str },
    /// The run to end; its outputs are under `out`.
    Run { out: &'a Path },
}

impl Scheduler {
    /// One attempt of `run`.
    pub(super) fn attempt(&mut self, run: Run) -> Result<()> {
        if !self.ensure_worker() {
            return Ok(());
        }
        if self.hand.loaded.as_deref() != Some(run.control_set.as_str()) {
            // A model load is coming, far longer than any bookkeeping: publish the finished
            // run first rather than leave it "running" through the load.
            self.publish_pending();
        }
        let run = if self.cluster.is_some() {
            // Claimed from the shared queue: running there already, under a lease.
            run
        } else {
            match self.store.change(&run.id, Change::Start) {
                Ok(r) => r,
                // Another worker took it first (they share the queue): pick again.
                Err(StoreError::IllegalTransition { .. }) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        };
        let started = self.attempt_started(&run);
        if let Err(e) = &started {
            // The run in hand goes back to the queue: on an error that ends this thread (and
            // cosmosd, which systemd restarts) the next daemon runs it again; on one that
            // passes, this scheduler does once it has.
            self.hand_back_on_error(&run, e);
        }
        started
    }

    /// Hands `run` back to the queue because its attempt stopped on `error`.
    pub(super) fn hand_back_on_error(&mut self, run: &Run, error: &super::SchedulerError) {
        self.run_log(&format!("the attempt stopped on an error ({error}): handing the run back to the queue"));
        // The worker is not running it: errors come before the run is sent or after it ended.
        self.hand.state = if self.hand.worker.is_some() { WorkerState::Idle } else { WorkerState::Down };
        self.board.current = None;
        self.close_run_log();
        let reason = format!("handed back: the scheduler stopped on an error: {error}");
        if self.cluster.is_some() {
            self.cluster_finish(&run.id, &crate::cluster::Outcome::HandBack { reason });
            return;
        }
        match self.store.change(&run.id, Change::Requeue { reason }) {
            Ok(_) => tracing::warn!(run = %run.id, error = %error, "handed the run back to the queue before stopping"),
            // Already settled (queued for a retry, failed): nothing to hand back.
            Err(StoreError::IllegalTransition { .. }) => {}
            Err(e) => tracing::error!(run = %run.id, error = %e, "cannot hand the run back; start-up recovery will requeue it"),
        }
    }

    /// The attempt of a run just marked running; an error leaves it running (the caller
    /// hands it back).
    fn attempt_started(&mut self, run: &Run) -> Result<()> {
        let run = run.clone();
        let out = self.layout.run_output(&run.id);
        std::fs::create_dir_all(&out).map_err(at("cannot create", &out))?;
        let _ = std::fs::remove_file(out.join(crate::layout::run_files::RESULT));
        self.open_run_log(&run.id);
        self.run_log(&format!(
            "attempt {} of run {} started (controls {}, priority {})",
            run.attempts, run.id, run.control_set, run.priority
        ));
        let batch = match &run.batch_id {
            // The origin host's batch, which its outbox gets when it takes the run in.
            Some(_) if self.cluster.is_some() => self.cluster_batch(&run.id),
            Some(b) => Some(self.store.batch(b)?),
            None => None,
        };
        if let Some(b) = batch.as_ref().filter(|_| self.cluster.is_none()) {
            if let Err(e) = self.outbox.ensure_batch_folder(&self.store, b) {
                tracing::warn!(error = %e, batch = %b.id, "cannot write the batch folder");
            }
            self.outbox.append_batch_log(b, &format!("{} attempt {} started", run.id, run.attempts));
        }
        self.run_gpu = crate::gpu::RunGpuStats::default();
        self.board.current = Some(Current::new(&run.id));

        let mut spec = super::worker_spec(&run.spec, crate::spec::Model::from_config(&self.config));
        // After an OOM: the options its remedy says (per-run ones are keys of the spec).
        let remedy = self.remedy_of(&run.id);
        if !remedy.steps.is_empty() {
            self.run_log(&format!("memory-saving options for this attempt (after running out of GPU memory): {}", remedy.describe()));
        }
        if let Some(obj) = spec.as_object_mut() {
            obj.extend(remedy.run.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let localized = match &self.hand.worker {
            Some(w) => w.localize(&mut spec, &out).map_err(|e| e.to_string()),
            None => Err("the worker is gone".into()),
        };
        // spec.json is exactly what the worker gets (container paths under docker).
        // Internal until published, when it is synced: no fsync here, in the dispatch gap.
        let mut spec_text = serde_json::to_string_pretty(&spec).unwrap_or_default();
        spec_text.push('\n');
        let spec_path = self.layout.run_spec(&run.id);
        std::fs::write(&spec_path, spec_text.as_bytes()).map_err(at("cannot write", &spec_path))?;
        let ending = match (self.load_for(&run, &remedy), localized) {
            (Some(ending), _) => ending,
            (None, Err(message)) => Ending::Failed { kind: FailureKind::Input, retryable: false, message },
            (None, Ok(output_dir)) => {
                let op = Op::Run { run_id: run.id.clone(), attempt: run.attempts, spec, output_dir };
                match self.hand.worker.as_mut().map(|w| w.send(&op)) {
                    Some(Ok(())) => {
                        if let Some(done) = self.last_done.take() {
                            tracing::debug!(gap_us = done.elapsed().as_micros() as u64, run = %run.id, "dispatched");
                        }
                        self.hand.state = WorkerState::Running;
                        // The worker is busy with this run: now publish the previous one.
                        self.publish_pending();
                        self.write_status_if_due(true);
                        self.wait(Phase::Run { out: &out }, &run)
                    }
                    other => {
                        let why = match other {
                            Some(Err(e)) => e.to_string(),
                            _ => "the worker is gone".into(),
                        };
                        self.drop_worker();
                        Ending::Failed { kind: FailureKind::Crash, retryable: true, message: why }
                    }
                }
            }
        };
        self.hand.state = if self.hand.worker.is_some() { WorkerState::Idle } else { WorkerState::Down };
        let ending = self.cluster_ending(ending);
        let done = matches!(ending, Ending::Done { .. });
        let batch = batch.filter(|_| self.cluster.is_none());
        self.settle(&run, ending, batch.as_ref())?;
        self.board.current = None;
        self.close_run_log();
        // After a success the next dispatch comes first; status.json is rewritten right
        // after it (or when the queue turns out empty).
        self.write_status_if_due(!done);
        Ok(())
    }

    /// Makes the worker hold the run's control set: one load per set, not per run.
    /// `Some`: how the attempt ended instead (the load failed, was cancelled, ...).
    /// Constructor options (an OOM's remedy) are part of what is loaded: other options are
    /// another load.
    fn load_for(&mut self, run: &Run, remedy: &policy::Remedy) -> Option<Ending> {
        let options = json!(remedy.load);
        if self.hand.loaded.as_deref() == Some(run.control_set.as_str()) && self.hand.loaded_options == options {
            return None;
        }
        let controls: Vec<String> = run.spec.controls.keys().map(|h| h.as_str().to_string()).collect();
        self.hand.state = WorkerState::Loading;
        self.write_status_if_due(true);
        if remedy.load.is_empty() {
            self.run_log(&format!("loading the model for controls {}", run.control_set));
        } else {
            self.run_log(&format!("loading the model for controls {} with {options}", run.control_set));
        }
        let sent = self.hand.worker.as_mut().map(|w| w.send(&Op::Load { controls, options: options.clone() }));
        if !matches!(sent, Some(Ok(()))) {
            self.drop_worker();
            return Some(Ending::Failed { kind: FailureKind::Crash, retryable: true, message: "the worker is gone".into() });
        }
        // Whatever the worker holds from here on was loaded with these.
        self.hand.loaded_options = options;
        match self.wait(Phase::Load { set: &run.control_set }, run) {
            Ending::Done { .. } => None,
            other => Some(other),
        }
    }

    /// Reads the worker until the phase ends (loaded; done or failed), or the watchdog ends
    /// it: timeout, hang, cancel, stop.
    pub(super) fn wait(&mut self, phase: Phase<'_>, run: &Run) -> Ending {
        let limits = Limits {
            timeout: self.config.scheduler.run_timeout.0,
            quiet_before_ping: QUIET_BEFORE_PING,
            pong_timeout: PONG_TIMEOUT,
            cancel_grace: self.config.scheduler.cancel_grace.0,
            stop_grace: self.config.daemon.stop_grace.0,
        };
        let mut dog = Watchdog::new(limits, Instant::now());
        let mut next_tick = Instant::now() + POLL;
        loop {
            let msg = match &self.hand.worker {
                Some(w) => w.recv(POLL.min(next_tick.saturating_duration_since(Instant::now()))),
                None => Some(WorkerMsg::Exited),
            };
            match msg {
                Some(WorkerMsg::Event(ev)) => {
                    dog.heard(Instant::now());
                    if let Some(ending) = self.on_event(&phase, run, ev, dog.cancelling()) {
                        return ending;
                    }
                }
                Some(WorkerMsg::Exited) => {
                    self.drop_worker();
                    if dog.cancelling() {
                        return Ending::Cancelled;
                    }
                    let message = match phase {
                        Phase::Load { .. } => "the worker died while loading",
                        Phase::Run { .. } => "the worker process died during the run",
                    };
                    return Ending::Failed { kind: FailureKind::Crash, retryable: true, message: message.into() };
                }
                None => {}
            }
            let now = Instant::now();
            if now < next_tick {
                continue;
            }
            next_tick = now + POLL;
            let cancel = match self.cluster.is_some() {
                true => self.cluster_should_stop(&run.id),
                false => self.store.cancel_requested(&run.id).unwrap_or(false),
            };
            match dog.tick(now, cancel, self.stopping()) {
                Action::Wait => {}
                Action::Ping => {
                    if let Some(w) = self.hand.worker.as_mut() {
                        let _ = w.send(&Op::Ping);
                    }
                }
                Action::Cancel => {
                    self.run_log("cancel requested");
                    // A load cannot be cancelled: it is given cancel_grace to finish (and
                    // its model is kept), then the worker is stopped.
                    if let (Phase::Run { .. }, Some(w)) = (&phase, self.hand.worker.as_mut()) {
                        let _ = w.send(&Op::Cancel { run_id: run.id.clone() });
                    }
                }
                Action::End(stop) => {
                    self.drop_worker();
                    return match stop {
                        Stop::TimedOut => Ending::Failed {
                            kind: FailureKind::Timeout,
                            retryable: true,
                            message: match phase {
                                Phase::Load { .. } => "model load exceeded scheduler.run_timeout".into(),
                                Phase::Run { .. } => {
                                    format!("the run exceeded scheduler.run_timeout ({})", self.config.scheduler.run_timeout)
                                }
                            },
                        },
                        Stop::Hung => Ending::Failed {
                            kind: FailureKind::Hang,
                            retryable: true,
                            message: "the worker stopped answering (no pong)".into(),
                        },
                        Stop::Cancelled => {
                            self.run_log("the worker did not stop within scheduler.cancel_grace: killing it");
                            Ending::Cancelled
                        }
                        Stop::HandedBack => {
                            self.run_log("the daemon is stopping: handing the run back to the queue");
                            Ending::HandedBack
                        }
                    };
                }
            }
            self.write_status_if_due(false);
        }
    }

    /// One event from the worker during `phase`; `Some` ends the phase.
    fn on_event(&mut self, phase: &Phase<'_>, run: &Run, ev: Event, cancelling: bool) -> Option<Ending> {
        match (phase, ev) {
            (Phase::Load { set }, Event::Loaded { seconds, .. }) => {
                self.hand.loads += 1;
                self.hand.loaded = Some(set.to_string());
                self.shared.metrics.record_load(Some(seconds));
                self.learn_load(set, seconds);
                self.run_log(&format!("model loaded in {seconds:.1}s (load {} of this worker)", self.hand.loads));
                if let Some(c) = self.board.current.as_mut() {
                    c.load_seconds = Some(seconds);
                }
                // Cancelled while loading: the run ends, the model stays loaded.
                Some(if cancelling { Ending::Cancelled } else { Ending::Done { outputs: Outputs::default(), seconds } })
            }
            (Phase::Load { .. }, Event::LoadFailed { message, kind, .. }) => {
                self.hand.loaded = None;
                self.shared.metrics.record_load(None);
                // Out of GPU memory while loading: healed as a run's OOM is.
                let kind = if kind == Some(FailureKind::Oom) { FailureKind::Oom } else { FailureKind::Load };
                Some(Ending::Failed { kind, retryable: true, message: format!("model load failed: {message}") })
            }
            (Phase::Run { .. }, Event::Progress { run_id, step, steps }) if run_id == run.id => {
                if let Some(c) = self.board.current.as_mut() {
                    c.step = step;
                    c.steps = steps;
                }
                self.write_status_if_due(true);
                None
            }
            (Phase::Run { out }, Event::Done { run_id, outputs, seconds }) if run_id == run.id => {
                self.last_done = Some(Instant::now());
                let outputs = match &self.hand.worker {
                    Some(w) => w.to_host(outputs),
                    None => outputs,
                };
                self.run_log(&format!("the worker reports done in {seconds:.1}s"));
                if !video_ok(&outputs, out) {
                    return Some(Ending::Failed {
                        kind: FailureKind::Internal,
                        retryable: false,
                        message: "the worker reported done but the output video is missing or empty".into(),
                    });
                }
                Some(Ending::Done { outputs, seconds })
            }
            (Phase::Run { .. }, Event::Failed { run_id, kind: FailureKind::Cancelled, .. }) if run_id == run.id => Some(Ending::Cancelled),
            (Phase::Run { .. }, Event::Failed { run_id, kind, retryable, message }) if run_id == run.id => {
                Some(Ending::Failed { kind, retryable, message })
            }
            (_, Event::Progress { run_id, .. } | Event::Done { run_id, .. } | Event::Failed { run_id, .. }) if run_id != run.id => {
                tracing::warn!(run = %run.id, other = %run_id, "the worker reported on a run it was not given; ignored");
                self.run_log(&format!("the worker reported on run {run_id}, which it was not given; ignored"));
                None
            }
            _ => None,
        }
    }

    /// Records how an attempt ended: publish (after the next dispatch), retry, or fail.
    pub(super) fn settle(&mut self, run: &Run, ending: Ending, batch: Option<&Batch>) -> Result<()> {
        let note = |s: &Self, text: &str| {
            if let Some(b) = batch {
                s.outbox.append_batch_log(b, &format!("{} {text}", run.id));
            }
        };
        match ending {
            Ending::Done { outputs, seconds } => {
                self.shared.metrics.record_run(seconds);
                self.learn_run(run, seconds);
                self.publish_pending();
                let gpu = self.run_gpu.to_json();
                let load_seconds = self.board.current.as_ref().and_then(|c| c.load_seconds);
                self.pending.push_back(Finished { run_id: run.id.clone(), outputs, seconds, load_seconds, gpu });
                note(self, "done");
            }
            Ending::Discarded { why } => {
                self.cluster_discard(&run.id, &why);
                note(self, "discarded (lease lost)");
            }
            Ending::Cancelled if self.cluster.is_some() => {
                self.run_log("cancelled");
                self.cluster_finish(&run.id, &crate::cluster::Outcome::Cancelled);
            }
            Ending::HandedBack if self.cluster.is_some() => {
                self.cluster_finish(&run.id, &crate::cluster::Outcome::HandBack { reason: "handed back: the daemon stopped".into() });
            }
            Ending::Cancelled => {
                self.run_log("cancelled");
                let r = self.persist(|s| s.finish_unsuccessfully(&run.id, Change::Cancel { reason: "cancelled by request".into() }))?;
                self.after_end(&r);
                note(self, "cancelled");
            }
            Ending::HandedBack => {
                self.persist(|s| s.change(&run.id, Change::Requeue { reason: "handed back: the daemon stopped".into() }))?;
                note(self, "handed back");
            }
            Ending::Failed { kind, retryable, message } => {
                self.run_log(&format!("failed ({kind}): {message}"));
                let tried = self.remedy_of(&run.id);
                match policy::retry_verdict(retryable, run.attempts, self.config.scheduler.max_attempts, &message) {
                    Verdict::Retry { after } => {
                        let when = Timestamp(Timestamp::now().0 + after.as_millis() as i64);
                        tracing::warn!(run = %run.id, attempt = run.attempts, %kind, %message, retry_in = ?after, "run failed; retrying");
                        let why = format!("attempt {} failed ({kind}): {message}", run.attempts);
                        self.retry_healing(run, &kind, &tried, &why, when)?;
                        note(self, &format!("attempt {} failed ({kind}), retrying", run.attempts));
                    }
                    Verdict::Fail { error } => {
                        let error = if kind == FailureKind::Oom && !tried.steps.is_empty() {
                            format!("{error}; memory-saving options tried: {}", tried.describe())
                        } else {
                            error
                        };
                        tracing::warn!(run = %run.id, attempt = run.attempts, %kind, %message, "run failed");
                        if self.cluster.is_some() {
                            self.cluster_finish(&run.id, &crate::cluster::Outcome::Failed { error });
                            return Ok(());
                        }
                        let r = self.persist(|s| s.finish_unsuccessfully(&run.id, Change::Fail { error: error.clone() }))?;
                        self.after_end(&r);
                        note(self, &format!("failed ({kind})"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Back to the queue after a retryable failure; after an OOM with the next rung of the
    /// backend's memory-saving ladder ([`policy::next_remedy`]), kept with the run.
    fn retry_healing(&mut self, run: &Run, kind: &FailureKind, tried: &policy::Remedy, why: &str, when: Timestamp) -> Result<()> {
        let groups = self.group_sizes();
        let ctx = policy::HealContext {
            backend: self.config.runtime.backend,
            guardrails: self.config.runtime.guardrails,
            group_gpus: self.group_gpus(),
            groups: &groups,
            may_change_result: self.config.scheduler.oom_may_change_result,
            run_chunk: run.spec.settings.num_video_frames_per_chunk,
        };
        match policy::next_remedy(kind, tried, run.attempts, &ctx) {
            Some(next) => {
                let change = next.steps.last().map(|s| s.changes.join(", ")).unwrap_or_default();
                self.run_log(&format!("out of GPU memory: the next attempt adds {change}"));
                tracing::warn!(run = %run.id, %change, "out of GPU memory: retrying with memory-saving options");
                let value = serde_json::to_value(&next).unwrap_or_default();
                if self.cluster.is_some() {
                    self.cluster_set_remedy(&run.id, &value);
                    self.cluster_retry(&run.id, why, when);
                } else {
                    self.persist(|s| s.retry_with_remedy(&run.id, why, when, &value, next.min_gpus))?;
                }
            }
            None => {
                if *kind == FailureKind::Oom {
                    self.run_log("out of GPU memory, and no memory-saving option is left to add: retrying as it is");
                }
                if self.cluster.is_some() {
                    self.cluster_retry(&run.id, why, when);
                } else {
                    self.persist(|s| s.retry_later(&run.id, why, when))?;
                }
            }
        }
        Ok(())
    }

    /// The remedy earlier OOMs left for the run (none: the default).
    pub(super) fn remedy_of(&self, run_id: &str) -> policy::Remedy {
        if self.cluster.is_some() {
            return self.cluster_remedy(run_id).and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default();
        }
        match self.store.remedy(run_id) {
            Ok(v) => v.and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default(),
            Err(e) => {
                tracing::warn!(run = %run_id, error = %e, "cannot read the run's memory-saving remedy; none used");
                policy::Remedy::default()
            }
        }
    }

    /// The run's execution.log receives the worker's stderr and our notes from now.
    pub(super) fn open_run_log(&mut self, run_id: &str) {
        let path = self.layout.run_log(run_id);
        let opened = std::fs::OpenOptions::new().create(true).append(true).open(&path);
        match (opened, self.log.lock()) {
            (Ok(f), Ok(mut sink)) => *sink = Some(f),
            (Err(e), _) => tracing::warn!(path = %path.display(), error = %e, "cannot open the run's execution.log"),
            _ => {}
        }
    }

    pub(super) fn close_run_log(&mut self) {
        if let Ok(mut sink) = self.log.lock() {
            *sink = None;
        }
    }
}
