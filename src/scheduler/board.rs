//! status.json (DESIGN.md section 12): each worker's entry, the current run with its
//! progress and ETA, the queue counts, the GPUs, why runs wait. One file for every worker of
//! the daemon, written under the shared board's lock, on every change and at least every
//! `daemon.status_interval`.

use super::{policy, Scheduler};
use crate::time::Timestamp;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// The run in hand, as status.json shows it.
#[derive(Debug, Clone, Default)]
pub struct Current {
    pub run_id: String,
    pub step: u64,
    pub steps: u64,
    pub started_at: String,
    pub started: Option<Instant>,
    /// The model load this attempt waited for, in seconds (`None`: the worker held the
    /// run's control set already).
    pub load_seconds: Option<f64>,
}

impl Current {
    pub fn new(run_id: &str) -> Current {
        Current { run_id: run_id.to_string(), started_at: Timestamp::now().rfc3339(), started: Some(Instant::now()), ..Current::default() }
    }

    fn to_json(&self) -> Value {
        let eta = self.started.and_then(|t| policy::eta(t.elapsed(), self.step, self.steps));
        json!({"run_id": self.run_id, "step": self.step, "steps": self.steps, "started_at": self.started_at, "eta_seconds": eta})
    }
}

/// What one scheduler contributes to status.json.
pub struct Board {
    pub started_at: String,
    /// See [`gpus_asked`].
    gpus_asked: bool,
    last_written: Option<Instant>,
    pub gpus: Box<dyn crate::gpu::GpuProbe>,
    pub samples: Vec<crate::gpu::GpuSample>,
    pub current: Option<Current>,
    /// Why runs wait (pause, disk, GPU memory), if they do.
    pub waiting: Option<String>,
    /// The last failure to write status.json and when it was logged: said once, then
    /// every minute while it lasts (a full outbox would fill the log otherwise).
    write_failure: Option<(String, Instant)>,
}

/// Whether the daemon's workers use GPUs at all: not with the sim backend or `gpus = []`
/// (unless fake GPUs are set for a test). Where they do not, NVML is not even opened, and
/// status.json says nothing of it.
pub fn gpus_asked(config: &crate::config::Config) -> bool {
    let fake = std::env::var("COSMOS_FAKE_GPUS").is_ok_and(|v| !v.is_empty());
    let none = config.runtime.backend == crate::config::Backend::Sim
        || matches!(&config.runtime.gpus, crate::config::Gpus::Each(v) if v.is_empty());
    fake || !none
}

impl Board {
    pub fn new(gpus_asked: bool) -> Board {
        Board {
            started_at: Timestamp::now().rfc3339(),
            last_written: None,
            gpus_asked,
            gpus: if gpus_asked { crate::gpu::probe() } else { Box::new(crate::gpu::NoNvml("no GPU is asked for".into())) },
            samples: Vec::new(),
            current: None,
            waiting: None,
            write_failure: None,
        }
    }
}

impl Scheduler {
    /// status.json: on every change (`force`) and at least every `daemon.status_interval`.
    pub(super) fn write_status_if_due(&mut self, force: bool) {
        let now = Instant::now();
        let started = now;
        if !force && self.board.last_written.is_some_and(|t| now.duration_since(t) < self.config.daemon.status_interval.0) {
            return;
        }
        self.board.last_written = Some(now);
        self.flush_receipts(false);
        self.board.samples = self.board.gpus.sample();
        if self.board.current.is_some() {
            let wanted = self.slot_gpus.clone();
            let mine: Vec<_> =
                self.board.samples.iter().filter(|g| wanted.as_ref().is_none_or(|w| w.contains(&g.index))).cloned().collect();
            self.run_gpu.add(&mine);
        }
        let counts = self.store.counts().unwrap_or_default();
        let paused_since = self.store.paused_since().unwrap_or(None);
        let state = if self.stop.load(Ordering::SeqCst) {
            "draining"
        } else if paused_since.is_some() || self.store.paused().unwrap_or(false) {
            "paused"
        } else {
            "running"
        };
        let current = self.board.current.as_ref().map(Current::to_json);
        let worker = json!({
            "slot": self.slot,
            "backend": self.config.runtime.backend.as_str(),
            "runtime": match self.config.runtime.kind { crate::config::RuntimeKind::Process => "process", crate::config::RuntimeKind::Docker => "docker" },
            "state": self.hand.state.as_str(),
            "pid": self.hand.worker.as_ref().map(|w| w.info().pid),
            "container_id": self.hand.worker.as_ref().and_then(|w| w.info().container_id),
            "loaded_controls": self.hand.loaded.as_ref().map(|s| s.split(',').collect::<Vec<_>>()),
            "loads": self.hand.loads,
            "gpus": self.slot_gpus,
            "current": current,
            "waiting": self.board.waiting.as_ref().or(self.hand.error.as_ref()),
        });
        // One status.json for all workers, written under the board's lock.
        let Ok(mut board) = self.shared.board.lock() else { return };
        board.insert(self.slot, (worker, current.clone()));
        let workers: Vec<Value> = board.values().map(|(w, _)| w.clone()).collect();
        let current = board.values().find_map(|(_, c)| c.clone());
        let waiting = board.values().find_map(|(w, _)| w["waiting"].as_str().map(str::to_string));
        let status = json!({
            "daemon": {"pid": std::process::id(), "version": env!("CARGO_PKG_VERSION"), "started_at": self.board.started_at, "state": state, "paused_since": paused_since},
            "queue": counts,
            "current": current,
            "waiting": waiting,
            "workers": workers,
            "intake": {"stuck": self.shared.intake_stuck.lock().map(|s| s.clone()).unwrap_or(Value::Null)},
            "gpus": self.board.samples,
            "nvml": self.board.gpus_asked.then(|| self.board.gpus.describe()),
            "updated_at": Timestamp::now().rfc3339(),
        });
        self.shared.metrics.set_status(&status);
        match self.outbox.write_status(&status) {
            Ok(()) => {
                if self.board.write_failure.take().is_some() {
                    tracing::info!("status.json is written again");
                }
                tracing::debug!(took_us = started.elapsed().as_micros() as u64, "status.json written");
            }
            Err(e) => {
                let why = e.to_string();
                let due = match &self.board.write_failure {
                    Some((last, at)) => *last != why || at.elapsed() >= std::time::Duration::from_secs(60),
                    None => true,
                };
                if due {
                    tracing::warn!(error = %why, "cannot write status.json (said again each minute while it lasts)");
                    self.board.write_failure = Some((why, Instant::now()));
                }
            }
        }
    }
}
