//! The metrics document, the same for `/metrics` and the textfile: the registry's figures
//! (in memory since start), the store's (runs by status, runs finished by outcome: they
//! survive restarts) and the last status.json document's (workers, GPUs, intake).

use crate::metrics::{Exposition, Kind, Snapshot};
use crate::store::Store;
use serde_json::Value;
use std::path::Path;

/// Runs finished by outcome, read from the store's events incrementally: the first read
/// counts every event, each later one only those written since.
#[derive(Debug, Default)]
pub struct Finished {
    counts: [u64; 3],
    after: i64,
}

impl Finished {
    pub fn update(&mut self, store: &Store) -> Result<[u64; 3], crate::store::StoreError> {
        let (new, last) = store.finished_counts_after(self.after)?;
        for (c, n) in self.counts.iter_mut().zip(new) {
            *c += n;
        }
        self.after = last;
        Ok(self.counts)
    }
}

/// What the store said at this scrape; `None` where it could not be read (the families
/// are then left out, so a scraper sees them missing rather than wrong).
pub struct FromStore {
    pub counts: Option<crate::store::Counts>,
    pub finished: Option<[u64; 3]>,
}

const WORKER_STATES: [&str; 5] = ["down", "starting", "idle", "loading", "running"];
const DAEMON_STATES: [&str; 3] = ["running", "paused", "draining"];

/// The whole document.
pub fn metrics(snap: &Snapshot, store: &FromStore, disks: &[(&str, &Path)]) -> String {
    let mut e = Exposition::new();
    let status = snap.status.as_ref().unwrap_or(&Value::Null);

    e.family("cosmos_build_info", Kind::Gauge, "Always 1; the version of cosmosd in a label.");
    e.sample("cosmos_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    e.family("cosmos_daemon_start_time_seconds", Kind::Gauge, "When this cosmosd started, in seconds since the Unix epoch.");
    let started = snap.started.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    e.sample("cosmos_daemon_start_time_seconds", &[], started.floor());
    if let Some(state) = status["daemon"]["state"].as_str() {
        e.family("cosmos_daemon_state", Kind::Gauge, "1 for the daemon's state (running, paused: no new run starts, draining: stopping).");
        for s in DAEMON_STATES {
            e.sample("cosmos_daemon_state", &[("state", s)], f64::from(u8::from(s == state)));
        }
    }

    if let Some(c) = &store.counts {
        e.family("cosmos_queue_runs", Kind::Gauge, "Runs in the store by status (queued: waiting to run).");
        for s in crate::store::RunStatus::ALL {
            e.sample("cosmos_queue_runs", &[("status", s.as_str())], c.of(s) as f64);
        }
    }
    if let Some(f) = &store.finished {
        e.family(
            "cosmos_runs_finished_total",
            Kind::Counter,
            "Runs that ended, by outcome, counted from the store's event log (kept across restarts; a retried run counts each ending).",
        );
        for (outcome, n) in crate::store::FINISHED_KINDS.iter().zip(f) {
            e.sample("cosmos_runs_finished_total", &[("outcome", outcome)], *n as f64);
        }
    }
    e.histogram(
        "cosmos_run_duration_seconds",
        "Generation time of the runs the worker finished since cosmosd started, as the worker measured it (model load not included).",
        &snap.run_seconds,
    );
    e.histogram("cosmos_model_load_duration_seconds", "Model loads since cosmosd started: how long each took.", &snap.load_seconds);
    e.family("cosmos_model_loads_total", Kind::Counter, "Model loads since cosmosd started, by outcome (loaded, failed).");
    e.sample("cosmos_model_loads_total", &[("outcome", "loaded")], snap.loads_ok as f64);
    e.sample("cosmos_model_loads_total", &[("outcome", "failed")], snap.loads_failed as f64);

    if let Some(workers) = status["workers"].as_array() {
        e.family("cosmos_worker_state", Kind::Gauge, "1 for each worker's state (down, starting, idle, loading, running).");
        for w in workers {
            let slot = w["slot"].as_u64().unwrap_or(0).to_string();
            let state = w["state"].as_str().unwrap_or("");
            for s in WORKER_STATES {
                e.sample("cosmos_worker_state", &[("worker", &slot), ("state", s)], f64::from(u8::from(s == state)));
            }
        }
        e.family("cosmos_worker_run_progress_ratio", Kind::Gauge, "The current run's progress (step / steps), per busy worker.");
        for w in workers {
            let c = &w["current"];
            if let (Some(step), Some(steps)) = (c["step"].as_u64(), c["steps"].as_u64().filter(|s| *s > 0)) {
                let slot = w["slot"].as_u64().unwrap_or(0).to_string();
                let run = c["run_id"].as_str().unwrap_or("");
                e.sample("cosmos_worker_run_progress_ratio", &[("worker", &slot), ("run", run)], step as f64 / steps as f64);
            }
        }
    }

    if let Some(gpus) = status["gpus"].as_array().filter(|g| !g.is_empty()) {
        let gauges: [(&str, &str, &str, f64); 5] = [
            ("cosmos_gpu_memory_used_bytes", "GPU memory in use.", "memory_used_mib", 1048576.0),
            ("cosmos_gpu_memory_total_bytes", "GPU memory in all.", "memory_total_mib", 1048576.0),
            ("cosmos_gpu_utilization_ratio", "GPU busy share of the last sample period (0 to 1).", "utilization_pct", 0.01),
            ("cosmos_gpu_temperature_celsius", "GPU temperature.", "temperature_c", 1.0),
            ("cosmos_gpu_power_watts", "GPU power draw.", "power_w", 1.0),
        ];
        for (name, help, key, scale) in gauges {
            e.family(name, Kind::Gauge, help);
            for g in gpus {
                let index = g["index"].as_u64().unwrap_or(0).to_string();
                let model = g["name"].as_str().unwrap_or("");
                if let Some(v) = g[key].as_f64() {
                    e.sample(name, &[("gpu", &index), ("name", model)], v * scale);
                }
            }
        }
    }

    e.histogram(
        "cosmos_intake_latency_seconds",
        "From an inbox file found ready to its runs queued (accepted files since cosmosd started; retried files not included).",
        &snap.intake_seconds,
    );
    e.family("cosmos_intake_submissions_total", Kind::Counter, "Inbox submissions taken in since cosmosd started, by fate.");
    for (fate, n) in crate::metrics::IntakeFate::ALL.iter().zip(snap.intake) {
        e.sample("cosmos_intake_submissions_total", &[("fate", fate.as_str())], n as f64);
    }
    if let Some(stuck) = status["intake"]["stuck"].as_array() {
        e.family("cosmos_intake_stuck_entries", Kind::Gauge, "Inbox entries that cannot be taken in now and wait for a retry.");
        e.sample("cosmos_intake_stuck_entries", &[], stuck.len() as f64);
    }

    e.family("cosmos_disk_free_bytes", Kind::Gauge, "Bytes free to cosmosd on the filesystem of each folder (outbox, state).");
    for (folder, dir) in disks {
        if let Some(free) = crate::fsutil::free_bytes(dir) {
            e.sample("cosmos_disk_free_bytes", &[("folder", folder), ("path", &dir.display().to_string())], free as f64);
        }
    }
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{IntakeFate, Registry};
    use serde_json::json;

    fn value(doc: &str, series: &str) -> Option<f64> {
        doc.lines().find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.parse().ok()))
    }

    #[test]
    fn the_document_carries_store_registry_and_status_figures() {
        let r = Registry::new();
        r.record_run(42.0);
        r.record_load(Some(7.0));
        r.record_intake(IntakeFate::Accepted, Some(std::time::Duration::from_millis(20)));
        r.set_status(&json!({
            "daemon": {"state": "paused"},
            "workers": [{"slot": 0, "state": "running", "current": {"run_id": "rs_a", "step": 5, "steps": 20}}, {"slot": 1, "state": "idle", "current": null}],
            "gpus": [{"index": 0, "name": "H100", "memory_used_mib": 1024, "memory_total_mib": 81920, "utilization_pct": 50, "temperature_c": 60, "power_w": 300.5}],
            "intake": {"stuck": [{"entry": "x"}]},
        }));
        let counts = crate::store::Counts { queued: 3, completed: 2, ..Default::default() };
        let dir = tempfile::tempdir().unwrap();
        let doc = metrics(&r.snapshot(), &FromStore { counts: Some(counts), finished: Some([2, 1, 0]) }, &[("outbox", dir.path())]);
        assert_eq!(value(&doc, "cosmos_queue_runs{status=\"queued\"}"), Some(3.0));
        assert_eq!(value(&doc, "cosmos_runs_finished_total{outcome=\"failed\"}"), Some(1.0));
        assert_eq!(value(&doc, "cosmos_run_duration_seconds_bucket{le=\"30\"}"), Some(0.0));
        assert_eq!(value(&doc, "cosmos_run_duration_seconds_bucket{le=\"60\"}"), Some(1.0));
        assert_eq!(value(&doc, "cosmos_model_loads_total{outcome=\"loaded\"}"), Some(1.0));
        assert_eq!(value(&doc, "cosmos_worker_state{worker=\"0\",state=\"running\"}"), Some(1.0));
        assert_eq!(value(&doc, "cosmos_worker_state{worker=\"1\",state=\"running\"}"), Some(0.0));
        assert_eq!(value(&doc, "cosmos_worker_run_progress_ratio{worker=\"0\",run=\"rs_a\"}"), Some(0.25));
        assert_eq!(value(&doc, "cosmos_daemon_state{state=\"paused\"}"), Some(1.0));
        assert_eq!(value(&doc, "cosmos_gpu_memory_used_bytes{gpu=\"0\",name=\"H100\"}"), Some(1073741824.0));
        assert_eq!(value(&doc, "cosmos_gpu_utilization_ratio{gpu=\"0\",name=\"H100\"}"), Some(0.5));
        assert_eq!(value(&doc, "cosmos_intake_latency_seconds_count"), Some(1.0));
        assert_eq!(value(&doc, "cosmos_intake_stuck_entries"), Some(1.0));
        let free = format!("cosmos_disk_free_bytes{{folder=\"outbox\",path=\"{}\"}}", dir.path().display());
        assert!(value(&doc, &free).is_some_and(|v| v > 0.0), "{doc}");
        // Families the store could not give are left out, not written as zeros.
        let doc = metrics(&Registry::new().snapshot(), &FromStore { counts: None, finished: None }, &[]);
        assert!(!doc.contains("cosmos_queue_runs") && !doc.contains("cosmos_runs_finished_total"), "{doc}");
        assert!(!doc.contains("cosmos_worker_state"), "no status yet, no workers: {doc}");
    }
}
