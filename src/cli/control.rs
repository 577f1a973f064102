//! Talking to a running daemon through the store and the outbox: `cancel`, `retry`,
//! `pause`, `resume` write the store (the daemon reads it every 250 ms); `status` reads
//! status.json; `logs` reads a run's execution.log. [`Outlook`] is when runs are expected
//! to end (`list runs`, `submit --wait`).

use super::{print_json, resolve_all, usage, CliError, Result};
use crate::config::Config;
use crate::ids::IdKind;
use crate::prune::Kind;
use crate::scheduler::policy::{self, RunForecast, WorkerView};
use crate::store::{Change, Run, RunStatus, Store};
use crate::time::Timestamp;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::time::Duration;

pub fn cancel(store: &mut Store, prefixes: &[String], as_json: bool, out: &mut dyn Write) -> Result<()> {
    let ids = resolve_all(store, IdKind::Run, prefixes)?;
    let mut done = Vec::new();
    for id in ids {
        let before = store.request_cancel(&id)?;
        let stopping = before == RunStatus::Running;
        let status = store.run(&id)?.status;
        if !as_json {
            match stopping {
                true => writeln!(out, "Cancelling run {id} (running; the daemon stops it within scheduler.cancel_grace)")?,
                false => writeln!(out, "Cancelled run {id}")?,
            }
        }
        done.push(json!({"id": id, "status": status, "stopping": stopping}));
    }
    if as_json {
        print_json(out, &json!({"runs": done}))?;
    }
    Ok(())
}

pub fn retry(store: &mut Store, prefixes: &[String], as_json: bool, out: &mut dyn Write) -> Result<()> {
    let ids = resolve_all(store, IdKind::Run, prefixes)?;
    for id in &ids {
        let run = store.run(id)?;
        if !matches!(run.status, RunStatus::Failed | RunStatus::Cancelled) {
            return Err(usage(format!("run {id} is {}; only failed or cancelled runs are retried", run.status)));
        }
    }
    let mut done = Vec::new();
    for id in ids {
        let run = store.change(&id, Change::Queue { detail: "retry requested".into() })?;
        if !as_json {
            writeln!(out, "Queued run {id} again")?;
        }
        done.push(json!({"id": id, "status": run.status}));
    }
    if as_json {
        print_json(out, &json!({"runs": done}))?;
    }
    Ok(())
}

pub fn pause(store: &mut Store, paused: bool, as_json: bool, out: &mut dyn Write) -> Result<()> {
    store.set_paused(paused)?;
    if as_json {
        return print_json(out, &json!({"paused": paused, "paused_since": store.paused_since()?}));
    }
    if paused {
        writeln!(out, "Paused: no new run starts; the running one finishes. `cosmos resume` to continue.")?;
    } else {
        writeln!(out, "Resumed.")?;
    }
    Ok(())
}

/// `cosmos prune`: see [`crate::prune`].
pub fn prune(
    store: &Store,
    config: &Config,
    older_than: crate::config::Dur,
    outbox: bool,
    dry_run: bool,
    as_json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let plan = crate::prune::Plan { cutoff: crate::prune::cutoff(older_than.0), outbox, dry_run, log_dir: config.log.dir.clone() };
    let layout = crate::layout::Layout::of(&config.paths);
    let report = crate::prune::prune(store, &layout, &plan)?;
    let cutoff = Timestamp::from_system_time(plan.cutoff).rfc3339();
    if as_json {
        let counts: serde_json::Map<String, Value> = [Kind::Work, Kind::Archive, Kind::Input, Kind::Log, Kind::Outbox]
            .into_iter()
            .map(|k| (k.as_str().to_string(), json!(report.count(k))))
            .collect();
        let v = json!({
            "dry_run": dry_run,
            "older_than": older_than.to_string(),
            "cutoff": cutoff,
            "outbox": outbox,
            "removed": report.removed,
            "counts": counts,
            "bytes": report.bytes(),
            "errors": report.errors,
        });
        print_json(out, &v)?;
    } else {
        let verb = if dry_run { "would remove" } else { "removed" };
        for r in &report.removed {
            writeln!(out, "{verb} {} {} ({})", r.kind.as_str(), r.path.display(), crate::prune::human_bytes(r.bytes))?;
        }
        for e in &report.errors {
            writeln!(out, "error: {e}")?;
        }
        writeln!(
            out,
            "{}{} work folder(s), {} archived original(s), {} staged input(s), {} log file(s), {} outbox run folder(s) of runs that ended before {cutoff}: {} {}",
            if dry_run { "dry run, nothing removed: " } else { "" },
            report.count(Kind::Work),
            report.count(Kind::Archive),
            report.count(Kind::Input),
            report.count(Kind::Log),
            report.count(Kind::Outbox),
            crate::prune::human_bytes(report.bytes()),
            if dry_run { "would be freed" } else { "freed" },
        )?;
    }
    if report.errors.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failed(format!("{} thing(s) could not be removed (see above)", report.errors.len())))
    }
}

/// When queued and running runs are expected to end, as of now: the daemon's learned paces
/// (the store) over its workers as status.json last told them (backend, the model each
/// holds, when each is free, less the file's age), or, with no daemon running, the
/// configured workers, idle with nothing loaded.
pub(super) struct Outlook {
    queue: HashMap<String, RunForecast>,
    /// Seconds left of each running run, where known.
    running: HashMap<String, Option<f64>>,
    paces: policy::Paces,
    groups: Vec<String>,
}

impl Outlook {
    pub fn of(store: &Store, config: &Config) -> Result<Outlook> {
        let layout = crate::layout::Layout::of(&config.paths);
        let status = read_status(config).filter(|_| daemon_lock(&layout) != DaemonLock::Free);
        let age = status
            .as_ref()
            .and_then(|s| s["updated_at"].as_str())
            .and_then(Timestamp::parse_rfc3339)
            .map_or(0.0, |t| ((Timestamp::now().0 - t.0).max(0) as f64) / 1000.0);
        let less_age = |x: f64| (x - age).max(0.0).round();
        let mut views: Vec<WorkerView> = status.as_ref().map(crate::scheduler::worker_views).unwrap_or_default();
        for v in &mut views {
            v.free_in = v.free_in.map(less_age);
        }
        if views.is_empty() {
            views = crate::scheduler::worker_groups(&config.runtime.gpus)
                .iter()
                .enumerate()
                .map(|(slot, g)| WorkerView { slot, gpus: policy::gpu_group_key(g.as_deref()), loaded: None, free_in: Some(0.0) })
                .collect();
        }
        let mut running = HashMap::new();
        for w in status.as_ref().and_then(|s| s["workers"].as_array()).into_iter().flatten() {
            if let Some(id) = w["current"]["run_id"].as_str() {
                running.insert(id.to_string(), w["current"]["eta_seconds"].as_f64().map(less_age));
            }
        }
        // The daemon's backend, which a `cosmos` without its configuration file cannot know.
        let backend = status.as_ref().and_then(|s| s["workers"][0]["backend"].as_str()).unwrap_or(config.runtime.backend.as_str());
        let rates = store.rates(backend)?;
        let queue = store.queue_for_eta(crate::scheduler::ETA_RUNS)?;
        let paces = policy::paces(&rates);
        let forecast = policy::forecast(&queue, &views, &paces);
        let queue = forecast.runs.into_iter().map(|r| (r.run_id.clone(), r)).collect();
        Ok(Outlook { queue, running, paces, groups: views.into_iter().map(|v| v.gpus).collect() })
    }

    /// Seconds until `run` ends: `Some(None)` when there is no estimate; `None` for a run
    /// that is neither queued nor running.
    pub fn done_in(&self, run: &Run) -> Option<Option<f64>> {
        match run.status {
            RunStatus::Queued => Some(self.queue.get(&run.id).and_then(|f| f.done_in)),
            RunStatus::Running => Some(match self.running.get(&run.id) {
                Some(left) => *left,
                // Started since status.json was written: its whole learned duration (on the
                // slowest GPU group that has one, not knowing which took it).
                None => self
                    .groups
                    .iter()
                    .filter_map(|g| {
                        policy::run_seconds(
                            self.paces.get(&(run.control_set.clone(), g.clone())),
                            run.spec.video.as_ref().map(|v| v.frames),
                        )
                    })
                    .map(|(s, _)| s)
                    .reduce(f64::max),
            }),
            _ => None,
        }
    }

    /// `eta` of `cosmos list runs --json`.
    pub fn json(&self, run: &Run) -> Value {
        match (run.status, self.queue.get(&run.id)) {
            (RunStatus::Queued, Some(f)) => crate::scheduler::run_forecast_json(f),
            (RunStatus::Queued, None) => json!({"run_id": run.id, "seconds": null, "done_in": null, "beyond": crate::scheduler::ETA_RUNS}),
            (RunStatus::Running, _) => json!({"run_id": run.id, "done_in": self.done_in(run).flatten()}),
            _ => Value::Null,
        }
    }

    /// The ETA column of `cosmos list runs`.
    pub fn words(&self, run: &Run) -> String {
        match self.done_in(run) {
            Some(Some(s)) => policy::duration_words(s),
            Some(None) => "no estimate".into(),
            None => "-".into(),
        }
    }
}

/// `cosmos status`'s lines about status.json's `eta`.
fn eta_lines(eta: &Value, out: &mut dyn Write) -> Result<()> {
    if !eta.is_object() {
        return Ok(());
    }
    let (queued, covered) = (eta["queued"].as_u64().unwrap_or(0), eta["covered"].as_u64().unwrap_or(0));
    let of = if covered < queued { format!("the first {covered} of {queued} queued runs") } else { format!("{queued} queued run(s)") };
    let loads = eta["loads"].as_u64().unwrap_or(0);
    match eta["seconds"].as_f64() {
        Some(s) => writeln!(out, "eta: queue done in {} ({of}, {loads} model load(s) ahead)", policy::duration_words(s))?,
        None => {
            let missing: Vec<&str> = eta["no_estimate"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            writeln!(
                out,
                "eta: no estimate yet for {of}: {} run(s) and {} load(s) of a kind not measured yet ({})",
                eta["unknown_runs"].as_u64().unwrap_or(0),
                eta["unknown_loads"].as_u64().unwrap_or(0),
                if missing.is_empty() { "a worker's current run".to_string() } else { missing.join("; ") }
            )?
        }
    }
    for p in eta["paces"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "  pace: controls {} on {}: {:.3} s per {} ({} sample(s))",
            p["control_set"].as_str().unwrap_or("?"),
            policy::group_words(p["gpus"].as_str().unwrap_or("?")),
            p["seconds"].as_f64().unwrap_or(0.0),
            p["unit"].as_str().unwrap_or("?"),
            p["samples"]
        )?;
    }
    Ok(())
}

fn read_status(config: &Config) -> Option<Value> {
    let text = std::fs::read_to_string(crate::layout::Layout::of(&config.paths).status_json()).ok()?;
    // Only an object: the callers add keys to it, which panics on any other JSON value.
    serde_json::from_str(&text).ok().filter(Value::is_object)
}

/// Whether a cosmosd holds the state folder's lock (see `daemon::lock_state`): the truth
/// status.json cannot tell, since a daemon that stopped leaves its last one behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonLock {
    /// Held, by the pid written in it.
    Held(String),
    /// Not held (or no lock file): no daemon runs on this state folder.
    Free,
    /// Cannot tell (the file cannot be opened, a filesystem without locks): status.json's age decides.
    Unknown,
}

pub fn daemon_lock(layout: &crate::layout::Layout) -> DaemonLock {
    use std::os::fd::AsRawFd;
    let mut file = match std::fs::File::open(layout.lock_file()) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return DaemonLock::Free,
        Err(_) => return DaemonLock::Unknown,
    };
    // A shared lock, given back at once: it fails only while the daemon holds its exclusive
    // one (and a daemon starting in that instant tries again; see `lock_state`).
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        // SAFETY: as above.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        return DaemonLock::Free;
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EWOULDBLOCK) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            DaemonLock::Held(pid.trim().to_string())
        }
        _ => DaemonLock::Unknown,
    }
}

pub fn status(store: &Store, config: &Config, as_json: bool, out: &mut dyn Write) -> Result<()> {
    let layout = crate::layout::Layout::of(&config.paths);
    let status = read_status(config);
    // status.json is rewritten at least every daemon.status_interval while cosmosd runs.
    let age_ms =
        status.as_ref().and_then(|s| s["updated_at"].as_str()).and_then(Timestamp::parse_rfc3339).map(|t| Timestamp::now().0 - t.0);
    let fresh = age_ms.is_some_and(|age| age >= 0 && (age as u128) < (config.daemon.status_interval.0 * 3).as_millis().max(5000));
    let lock = daemon_lock(&layout);
    let running = match &lock {
        DaemonLock::Held(_) => true,
        DaemonLock::Free => false,
        DaemonLock::Unknown => fresh,
    };
    // What status.json says holds only while its daemon runs.
    let alive = running && fresh;
    let paused_since = store.paused_since()?;
    // `[cluster]`: every host and the shared queue, read from the database now.
    let cluster = config.cluster.enabled().then(|| super::cluster::view(config));
    let (cluster, cluster_error) = match cluster {
        Some((v, e)) => (Some(v), e),
        None => (None, None),
    };
    let not_running = || {
        CliError::NotRunning(match lock {
            DaemonLock::Unknown => {
                format!("cosmosd is not running (status.json is stale; {} cannot be checked)", layout.lock_file().display())
            }
            _ => format!("cosmosd is not running (no daemon holds {})", layout.lock_file().display()),
        })
    };
    if as_json {
        let updated_at = status.as_ref().map(|s| s["updated_at"].clone()).unwrap_or(Value::Null);
        let mut v = status.filter(|_| running).unwrap_or_else(|| json!({}));
        v["status_updated_at"] = updated_at; // ok: read_status keeps only objects
        v["daemon_running"] = Value::Bool(running);
        v["daemon_alive"] = Value::Bool(alive);
        v["paused_since"] = json!(paused_since);
        v["queue_now"] = serde_json::to_value(store.counts()?).unwrap_or(Value::Null);
        if let Some(c) = cluster {
            v["cluster"] = c;
        }
        print_json(out, &v)?;
        return match (cluster_error, running) {
            (Some(e), _) => Err(e),
            (None, true) => Ok(()),
            (None, false) => Err(not_running()),
        };
    }
    let counts = store.counts()?;
    match (&status, running, alive) {
        (Some(s), true, true) => {
            let state = s["daemon"]["state"].as_str().unwrap_or("?");
            // Paused: since the pause was made, not since the daemon started.
            let since = match (state, &paused_since) {
                ("paused", Some(p)) => p.clone(),
                _ => s["daemon"]["started_at"].as_str().unwrap_or("?").to_string(),
            };
            writeln!(out, "cosmosd {} (pid {}), {state} since {since}", s["daemon"]["version"].as_str().unwrap_or("?"), s["daemon"]["pid"])?
        }
        (_, true, _) => writeln!(
            out,
            "cosmosd is running{} but {} is {}",
            match &lock {
                DaemonLock::Held(pid) if !pid.is_empty() => format!(" (pid {pid})"),
                _ => String::new(),
            },
            layout.status_json().display(),
            match age_ms {
                Some(ms) => format!("{}s old", ms.max(0) / 1000),
                None => "missing".to_string(),
            }
        )?,
        (Some(s), false, _) => {
            writeln!(out, "cosmosd is not running (status.json last updated {})", s["updated_at"].as_str().unwrap_or("?"))?
        }
        (None, false, _) => writeln!(out, "cosmosd is not running (no {})", layout.status_json().display())?,
    }
    if let (Some(p), false) = (&paused_since, alive) {
        writeln!(out, "paused since {p}: no run starts until `cosmos resume`")?;
    }
    match &cluster {
        Some(c) => super::cluster::status_lines(c, config.cluster.lease.0, out)?,
        None => writeln!(
            out,
            "queue: {} queued, {} running, {} completed, {} failed, {} cancelled, {} pending",
            counts.queued, counts.running, counts.completed, counts.failed, counts.cancelled, counts.pending
        )?,
    }
    if let Some(s) = status.filter(|_| alive) {
        match s["current"].as_object() {
            Some(c) => {
                let eta = c
                    .get("eta_seconds")
                    .and_then(Value::as_f64)
                    .map_or(", no ETA yet".to_string(), |e| format!(", ETA {}", policy::duration_words(e)));
                writeln!(
                    out,
                    "current: {} step {}/{}{} (since {})",
                    c["run_id"].as_str().unwrap_or("?"),
                    c["step"],
                    c["steps"],
                    eta,
                    c["started_at"].as_str().unwrap_or("?")
                )?;
            }
            None => writeln!(out, "current: none")?,
        }
        if let Some(w) = s["waiting"].as_str() {
            writeln!(out, "waiting: {w}")?;
        }
        eta_lines(&s["eta"], out)?;
        for w in s["workers"].as_array().into_iter().flatten() {
            let container =
                w["container_id"].as_str().map_or(String::new(), |c| format!(" container {}", c.chars().take(12).collect::<String>()));
            let gpus = w["gpus"].as_array().map_or("all GPUs".to_string(), |g| {
                if g.is_empty() {
                    "no GPU".to_string()
                } else {
                    format!("GPU {}", g.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","))
                }
            });
            writeln!(
                out,
                "worker {}: {} {} ({}{container}, {gpus}), loaded {}, {} load(s)",
                w["slot"].as_u64().unwrap_or(0),
                w["backend"].as_str().unwrap_or("?"),
                w["state"].as_str().unwrap_or("?"),
                w["runtime"].as_str().unwrap_or("?"),
                w["loaded_controls"].as_array().map_or("nothing".to_string(), |a| a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")),
                w["loads"]
            )?;
        }
        let gpus = s["gpus"].as_array().cloned().unwrap_or_default();
        // Nothing about NVML where no GPU is asked for (the sim backend, gpus = []).
        if let Some(nvml) = s["nvml"].as_str() {
            writeln!(out, "gpus: {nvml}")?;
        }
        for g in gpus {
            writeln!(
                out,
                "  gpu {} {}: {}/{} MiB, {}% busy, {} C, {} W",
                g["index"],
                g["name"].as_str().unwrap_or("?"),
                g["memory_used_mib"],
                g["memory_total_mib"],
                g["utilization_pct"],
                g["temperature_c"],
                g["power_w"]
            )?;
        }
        let stuck = s["intake"]["stuck"].as_array().cloned().unwrap_or_default();
        if !stuck.is_empty() {
            writeln!(
                out,
                "intake: {} inbox entr{} cannot be taken in (retried with backoff):",
                stuck.len(),
                if stuck.len() == 1 { "y" } else { "ies" }
            )?;
            for e in stuck {
                writeln!(
                    out,
                    "  {}: {} ({}; attempt {}, next try {})",
                    e["file"].as_str().unwrap_or("?"),
                    e["reason"].as_str().unwrap_or("?"),
                    e["waits"].as_str().unwrap_or("?"),
                    e["attempts"],
                    e["next_try_at"].as_str().unwrap_or("?")
                )?;
            }
        }
    }
    match (cluster_error, running) {
        (Some(e), _) => Err(e),
        (None, true) => Ok(()),
        (None, false) => Err(not_running()),
    }
}

/// The execution.log of a run: the published one, else the one being written.
fn log_path(config: &Config, run_id: &str) -> PathBuf {
    let layout = crate::layout::Layout::of(&config.paths);
    let published = layout.run_dir(run_id).join(crate::layout::run_files::EXECUTION_LOG);
    if published.is_file() {
        published
    } else {
        layout.run_log(run_id)
    }
}

pub fn logs(store: &Store, config: &Config, prefix: &str, follow: bool, out: &mut dyn Write) -> Result<()> {
    let id = store.resolve(IdKind::Run, prefix)?;
    let mut offset = 0u64;
    loop {
        let path = log_path(config, &id);
        if let Ok(mut f) = std::fs::File::open(&path) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if len < offset {
                offset = 0; // the published copy replaced the work log: start over
            }
            f.seek(std::io::SeekFrom::Start(offset)).map_err(crate::fsutil::at("cannot read", &path))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).map_err(crate::fsutil::at("cannot read", &path))?;
            out.write_all(&buf)?;
            out.flush()?;
            offset += buf.len() as u64;
        } else if !follow {
            return Err(CliError::Usage(format!("run {id} has no execution log yet (it has not started)")));
        }
        if !follow {
            return Ok(());
        }
        if store.run(&id)?.status.is_final() && log_path(config, &id) == path {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_json_that_is_not_an_object_is_no_status() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.paths.state = dir.path().join("state");
        config.paths.outbox = dir.path().join("outbox");
        config.paths.inbox = dir.path().join("inbox");
        for d in [&config.paths.state, &config.paths.outbox] {
            std::fs::create_dir_all(d).unwrap();
        }
        let store = Store::open(&config.paths.database()).unwrap();
        let at = crate::layout::Layout::of(&config.paths).status_json();
        for text in ["[1, 2]", "5", "\"x\"", "null"] {
            std::fs::write(&at, text).unwrap();
            assert!(read_status(&config).is_none(), "{text}");
            // Both forms say "not running" rather than panic adding keys to a non-object.
            for as_json in [true, false] {
                let mut out = Vec::new();
                let _ = status(&store, &config, as_json, &mut out);
            }
        }
        std::fs::write(&at, r#"{"updated_at": "2026-01-01T00:00:00Z"}"#).unwrap();
        assert!(read_status(&config).is_some());
    }
}
