//! status.json (DESIGN.md section 12): each worker's entry, the current run with its
//! progress and ETA, the queue counts, the GPUs, why runs wait. One file for every worker of
//! the daemon, written under the shared board's lock, on every change and at least every
//! `daemon.status_interval`.
//!
//! Also where the ETA is learned and told: each finished run and model load adds a sample
//! to its pace in the store (`rates`), and status.json's `eta` forecasts the queue
//! ([`policy::forecast`]) over every worker's entry.

use super::{policy, Scheduler};
use crate::store::{RateKey, RateUnit, Run};
use crate::time::Timestamp;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How many queued runs (in queue order) the ETA simulates; past them status.json says it
/// covers only these (a million queued runs would cost a scan at every status write).
pub const ETA_RUNS: usize = 10_000;
/// How many of them status.json lists one by one (`eta.next`); `cosmos list runs` gives any.
pub const ETA_LISTED: usize = 100;
/// How often the forecast is made again while nothing it depends on changed.
const ETA_EVERY: Duration = Duration::from_secs(1);

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
    /// What the attempt is expected to take, by the learned paces; looked up at the first
    /// status write of the attempt (`None` until then).
    pub expected: Option<Expected>,
    /// The run's control set, looked up with `expected`: what the worker holds once the
    /// attempt is over.
    pub control_set: Option<String>,
}

/// What an attempt is expected to take.
#[derive(Debug, Clone, Copy, Default)]
pub struct Expected {
    /// A model load comes first, of this many seconds (`None` inside: not measured yet).
    pub load: Option<Option<f64>>,
    /// The run itself.
    pub run: Option<(f64, policy::Basis)>,
}

impl Current {
    pub fn new(run_id: &str) -> Current {
        Current { run_id: run_id.to_string(), started_at: Timestamp::now().rfc3339(), started: Some(Instant::now()), ..Current::default() }
    }

    /// Seconds until the attempt ends: at the run's own pace once it reports steps, else
    /// by the learned paces (the load still to come and the run); `None`: neither known.
    pub fn remaining(&self) -> Option<f64> {
        let elapsed = self.started?.elapsed();
        let expected = self.expected.unwrap_or_default();
        let run = expected.run.map(|r| r.0);
        match (expected.load, self.load_seconds) {
            // Still loading: the load's estimate and the run's, from the attempt's start.
            (Some(load), None) => policy::remaining(elapsed, 0, 0, load.zip(run).map(|(l, r)| l + r)),
            // The run's pace is over the run alone, not the load before it.
            (_, loaded) => {
                // The worker reports the load's seconds: a huge one (1e300 is valid JSON) would
                // make `from_secs_f64` panic; anything past `Duration::MAX` is "still loading".
                let load = Duration::try_from_secs_f64(loaded.unwrap_or(0.0).max(0.0)).unwrap_or(Duration::MAX);
                let run_elapsed = elapsed.saturating_sub(load);
                policy::remaining(run_elapsed, self.step, self.steps, run)
            }
        }
    }

    fn to_json(&self) -> Value {
        let run = self.expected.and_then(|e| e.run);
        json!({
            "run_id": self.run_id,
            "step": self.step,
            "steps": self.steps,
            "started_at": self.started_at,
            "eta_seconds": self.remaining(),
            "expected_seconds": run.map(|r| round1(r.0)),
            "expected_basis": run.map(|r| r.1.as_str()),
        })
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The workers of a status.json document (its `workers`), as the ETA sees them.
pub fn worker_views(status: &Value) -> Vec<policy::WorkerView> {
    status["workers"].as_array().into_iter().flatten().filter_map(worker_view).collect()
}

fn worker_view(w: &Value) -> Option<policy::WorkerView> {
    let gpus = match &w["gpus"] {
        Value::Array(g) => g.iter().filter_map(Value::as_u64).map(|g| g.to_string()).collect::<Vec<_>>().join(","),
        _ => String::new(),
    };
    let gpus = match (&w["gpus"], gpus.is_empty()) {
        (Value::Array(_), true) => "none".to_string(),
        (Value::Array(_), false) => gpus,
        _ => "all".to_string(),
    };
    // The set it will hold once free (a worker loading for its run holds the old one until
    // loaded); from an older status.json, the set it holds.
    let loaded = match w["holds_next"].as_str() {
        Some(set) => Some(set.to_string()),
        None => w["loaded_controls"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")),
    };
    Some(policy::WorkerView {
        slot: w["slot"].as_u64()? as usize,
        gpus,
        loaded: loaded.filter(|l| !l.is_empty()),
        free_in: w["free_in_seconds"].as_f64(),
    })
}

/// status.json's `eta`: the forecast of the first `covered` of `queued` runs, and the
/// paces it was made with.
pub fn eta_json(f: &policy::Forecast, queued: u64, covered: usize, rates: &[crate::store::Rate], listed: usize) -> Value {
    let next: Vec<Value> = f.runs.iter().take(listed).map(run_forecast_json).collect();
    let paces: Vec<Value> = rates
        .iter()
        .map(|r| {
            json!({"control_set": r.key.control_set, "gpus": r.key.gpus, "unit": r.unit.as_str(), "seconds": r.seconds, "samples": r.samples, "updated_at": r.updated_at})
        })
        .collect();
    json!({
        "seconds": f.seconds.map(round1),
        "queued": queued,
        "covered": covered,
        "loads": f.loads,
        "unknown_runs": f.unknown_runs,
        "unknown_loads": f.unknown_loads,
        "no_estimate": f.missing,
        "next": next,
        "paces": paces,
    })
}

/// One run's forecast as JSON (status.json `eta.next`, `cosmos list runs --json` `eta`).
pub fn run_forecast_json(r: &policy::RunForecast) -> Value {
    json!({
        "run_id": r.run_id,
        "worker": r.slot,
        "load": r.load,
        "seconds": r.seconds.map(round1),
        "basis": r.basis.map(policy::Basis::as_str),
        "starts_in": r.starts_in.map(round1),
        "done_in": r.done_in.map(round1),
    })
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
    /// The paces learned so far (this backend's), read again with each forecast.
    rates: Vec<crate::store::Rate>,
    /// The last forecast, when it was made and what it was made of: made again when the
    /// queue or a worker's model changes, or after [`ETA_EVERY`].
    eta: Option<(Instant, EtaInputs, Value)>,
}

#[derive(Debug, Clone, PartialEq)]
struct EtaInputs {
    queued: u64,
    running: u64,
    completed: u64,
    workers: Vec<(usize, Option<String>)>,
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
            rates: Vec::new(),
            eta: None,
        }
    }
}

impl Scheduler {
    fn rate_key(&self, control_set: &str) -> RateKey {
        RateKey {
            backend: self.config.runtime.backend.as_str().to_string(),
            control_set: control_set.to_string(),
            gpus: policy::gpu_group_key(self.slot_gpus.as_deref()),
        }
    }

    /// Adds a sample to a pace. A failure to record one costs an estimate, never a run:
    /// it is logged and passed over.
    fn learn(&mut self, control_set: &str, unit: RateUnit, sample: Option<f64>) {
        let Some(sample) = sample else { return };
        let key = self.rate_key(control_set);
        match self.store.record_rate(&key, unit, sample) {
            Ok(r) => {
                tracing::debug!(controls = %control_set, unit = unit.as_str(), sample, estimate = r.seconds, samples = r.samples, "pace learned")
            }
            Err(e) => {
                tracing::warn!(error = %e, controls = %control_set, unit = unit.as_str(), "cannot record the pace; the ETA goes without this sample")
            }
        }
        self.board.eta = None;
    }

    /// Learns from a model load of `control_set` that took `seconds`.
    pub(super) fn learn_load(&mut self, control_set: &str, seconds: f64) {
        self.learn(control_set, RateUnit::Load, crate::store::rates_per_unit(seconds, 1));
    }

    /// Learns from a run that finished in `seconds` (the worker's time, the load not
    /// included): per output frame where its input's frames are known, and per run.
    pub(super) fn learn_run(&mut self, run: &Run, seconds: f64) {
        if let Some(frames) = run.spec.video.as_ref().map(|v| v.frames) {
            self.learn(&run.control_set, RateUnit::Frame, crate::store::rates_per_unit(seconds, frames));
        }
        self.learn(&run.control_set, RateUnit::Run, crate::store::rates_per_unit(seconds, 1));
    }

    /// What the attempt in hand is expected to take, looked up once per attempt.
    fn expect_current(&mut self) {
        let Some(id) = self.board.current.as_ref().filter(|c| c.expected.is_none()).map(|c| c.run_id.clone()) else { return };
        let Ok(run) = self.store.run(&id) else { return };
        if self.board.eta.is_none() {
            self.board.rates = self.store.rates(self.config.runtime.backend.as_str()).unwrap_or_default();
        }
        let paces = policy::paces(&self.board.rates);
        let pace = paces.get(&(run.control_set.clone(), policy::gpu_group_key(self.slot_gpus.as_deref())));
        // Loading now (and not loaded yet): the load is part of what is left.
        let loading = self.hand.state == super::WorkerState::Loading;
        let expected = Expected {
            load: loading.then(|| pace.and_then(|p| p.load)),
            run: policy::run_seconds(pace, run.spec.video.as_ref().map(|v| v.frames)),
        };
        if let Some(c) = self.board.current.as_mut() {
            c.expected = Some(expected);
            c.control_set = Some(run.control_set);
        }
    }

    /// status.json's `eta`, made again when its inputs changed or it is [`ETA_EVERY`] old.
    fn queue_eta(&mut self, views: &[policy::WorkerView], counts: &crate::store::Counts) -> Value {
        let inputs = EtaInputs {
            queued: counts.queued,
            running: counts.running,
            completed: counts.completed,
            workers: views.iter().map(|v| (v.slot, v.loaded.clone())).collect(),
        };
        if let Some((at, last, value)) = &self.board.eta {
            if *last == inputs && at.elapsed() < ETA_EVERY {
                return value.clone();
            }
        }
        let backend = self.config.runtime.backend.as_str();
        self.board.rates = self.store.rates(backend).unwrap_or_default();
        let queue = match self.store.queue_for_eta(ETA_RUNS) {
            Ok(q) => q,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the queue for the ETA");
                return Value::Null;
            }
        };
        let f = policy::forecast(&queue, views, &policy::paces(&self.board.rates));
        let value = eta_json(&f, counts.queued, queue.len(), &self.board.rates, ETA_LISTED);
        self.board.eta = Some((Instant::now(), inputs, value.clone()));
        value
    }

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
        self.expect_current();
        let current = self.board.current.as_ref().map(Current::to_json);
        // When this worker is free for the next run: now, or when its attempt ends.
        let free_in = match &self.board.current {
            Some(c) => c.remaining(),
            None => Some(0.0),
        };
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
            "free_in_seconds": free_in,
            // What it holds when free: the set of the run in hand (loading or loaded for it).
            "holds_next": self.board.current.as_ref().and_then(|c| c.control_set.clone()).or_else(|| self.hand.loaded.clone()),
            "waiting": self.board.waiting.as_ref().or(self.hand.error.as_ref()),
        });
        // One status.json for all workers, written under the board's lock.
        let shared = self.shared.board.clone();
        let Ok(mut board) = shared.lock() else { return };
        board.insert(self.slot, (worker, current.clone()));
        let workers: Vec<Value> = board.values().map(|(w, _)| w.clone()).collect();
        let current = board.values().find_map(|(_, c)| c.clone());
        let waiting = board.values().find_map(|(w, _)| w["waiting"].as_str().map(str::to_string));
        let views: Vec<policy::WorkerView> = board.values().filter_map(|(w, _)| worker_view(w)).collect();
        let eta = self.queue_eta(&views, &counts);
        let status = json!({
            "daemon": {"pid": std::process::id(), "version": env!("CARGO_PKG_VERSION"), "started_at": self.board.started_at, "state": state, "paused_since": paused_since},
            "queue": counts,
            "current": current,
            "waiting": waiting,
            "workers": workers,
            "eta": eta,
            "intake": {"stuck": self.shared.intake_stuck.lock().map(|s| s.clone()).unwrap_or(Value::Null)},
            "gpus": self.board.samples,
            "nvml": self.board.gpus_asked.then(|| self.board.gpus.describe()),
            "updated_at": Timestamp::now().rfc3339(),
        });
        let mut status = status;
        // Several hosts on one queue: every host, its slots and runs, and the queue's counts.
        if let Some(cluster) = self.shared.cluster.lock().ok().map(|c| c.clone()).filter(|c| !c.is_null()) {
            status["cluster"] = cluster;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A current attempt that started `ago` seconds back.
    fn current(ago: u64, step: u64, load_seconds: Option<f64>, expected: Option<Expected>) -> Current {
        let started = Instant::now().checked_sub(Duration::from_secs(ago));
        Current { run_id: "rs_x".into(), step, steps: 10, started, load_seconds, expected, ..Current::default() }
    }

    #[test]
    fn the_attempt_in_hand_counts_down_its_load_then_its_run() {
        let run = Some((30.0, policy::Basis::Frames));
        let loading = Expected { load: Some(Some(20.0)), run };
        let no_load = Expected { load: None, run };
        let table: &[(&str, Current, Option<f64>)] = &[
            ("loading: the rest of the load and the run", current(5, 0, None, Some(loading)), Some(45.0)),
            ("loading, its load never measured", current(5, 0, None, Some(Expected { load: Some(None), run })), None),
            ("loaded in 20 s: the run's pace is over the run alone", current(25, 0, Some(20.0), Some(loading)), Some(25.0)),
            ("steps reported: its own pace, the load left out", current(30, 5, Some(20.0), Some(loading)), Some(10.0)),
            (
                "a worker's absurd load time (1e300 s) is no panic: the run has not begun",
                current(25, 0, Some(1e300), Some(loading)),
                Some(30.0),
            ),
            ("no load, learned duration", current(10, 0, None, Some(no_load)), Some(20.0)),
            ("nothing learned, no step yet", current(10, 0, None, Some(Expected::default())), None),
            ("not looked up yet", current(10, 0, None, None), None),
        ];
        for (case, c, want) in table {
            assert_eq!(c.remaining(), *want, "{case}");
        }
    }

    #[test]
    fn workers_are_read_back_from_their_status_entries() {
        let status = json!({"workers": [
            {"slot": 0, "gpus": null, "loaded_controls": ["edge", "vis"], "free_in_seconds": 12.0},
            {"slot": 1, "gpus": [2, 3], "loaded_controls": null, "free_in_seconds": null},
            {"slot": 2, "gpus": [], "loaded_controls": [], "free_in_seconds": 0.0},
            {"slot": 3, "gpus": [1], "loaded_controls": ["vis"], "holds_next": "edge", "free_in_seconds": 4.0},
            {"no slot": true},
        ]});
        let views = worker_views(&status);
        let seen: Vec<(usize, &str, Option<&str>, Option<f64>)> =
            views.iter().map(|v| (v.slot, v.gpus.as_str(), v.loaded.as_deref(), v.free_in)).collect();
        assert_eq!(
            seen,
            vec![
                (0, "all", Some("edge,vis"), Some(12.0)),
                (1, "2,3", None, None),
                (2, "none", None, Some(0.0)),
                (3, "1", Some("edge"), Some(4.0))
            ]
        );
        assert!(worker_views(&json!({})).is_empty());
    }
}
