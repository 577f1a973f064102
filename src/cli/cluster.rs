//! `cosmos` across hosts, where `[cluster] database` is set: the runs live in the shared
//! queue on PostgreSQL (every host's), so `list runs`, `show RUN`, `cancel`, `retry` and the
//! cluster part of `status` read and change them there. This host's store still holds its
//! prompts, batches and submissions, and its runs that never entered the shared queue
//! (pending ones: created, not queued yet): those are listed beside the shared ones and
//! handled in the store as before.

use super::{json, print_json, usage, write_plain, CliError, Result};
use crate::cluster::{describe_url, ClusterError, HostView, PgQueue, QueueRun};
use crate::config::Config;
use crate::ids::IdKind;
use crate::spec::Model;
use crate::store::{Change, Run, RunStatus, Store, StoreError};
use crate::time::Timestamp;
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;

/// How long a command keeps trying to reach the database: a person waits seconds, not the
/// daemon's minute (a failover that takes longer is met by running the command again).
const WAIT: Duration = Duration::from_secs(10);

/// The shared queue, as this host.
pub(super) fn connect(config: &Config) -> Result<PgQueue> {
    Ok(PgQueue::connect_within(&config.cluster.database, &config.cluster.effective_host_id(), WAIT)?)
}

/// Where a run is: in the shared queue, or only in this host's store.
enum Found {
    Shared(String),
    Local(String),
}

/// Resolves every prefix (the shared queue first, then this host's store), all or none.
fn resolve_all(q: &mut PgQueue, store: &Store, prefixes: &[String]) -> Result<Vec<Found>> {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for p in prefixes {
        match q.resolve(p) {
            Ok(id) => found.push(Found::Shared(id)),
            Err(ClusterError::NotFound(_)) => match store.resolve(IdKind::Run, p) {
                Ok(id) => found.push(Found::Local(id)),
                Err(StoreError::NotFound { .. }) => {
                    problems.push(format!("no run has an id starting with `{p}`, in the shared queue or here"))
                }
                Err(e) if e.is_usage() => problems.push(e.to_string()),
                Err(e) => return Err(e.into()),
            },
            Err(e) if e.is_usage() => problems.push(e.to_string()),
            Err(e) => return Err(e.into()),
        }
    }
    match problems.is_empty() {
        true => Ok(found),
        false => Err(usage(problems.join("; "))),
    }
}

/// A run of this host's store that is not in the shared queue, in the queue's shape.
fn from_local(r: &Run, host: &str) -> QueueRun {
    let time = |t: &str| Timestamp::parse_rfc3339(t).unwrap_or(Timestamp(0));
    let opt = |t: &Option<String>| t.as_deref().and_then(Timestamp::parse_rfc3339);
    QueueRun {
        id: r.id.clone(),
        status: r.status,
        priority: r.priority,
        control_set: r.control_set.clone(),
        spec: r.spec.clone(),
        origin_host: host.to_string(),
        parent_id: r.parent_id.clone(),
        attempts: r.attempts,
        cancel_requested: false,
        holder: None,
        ran_on: None,
        outputs: r.outputs.clone(),
        error: r.error.clone(),
        created_at: time(&r.created_at),
        queued_at: opt(&r.queued_at).unwrap_or_else(|| time(&r.created_at)),
        not_before: None,
        started_at: opt(&r.started_at),
        finished_at: opt(&r.finished_at),
        updated_at: time(&r.updated_at),
        home: None,
        remedy: None,
        delivered_at: None,
    }
}

/// A run as `list runs --json` and `show --json` print it in cluster mode: the shared
/// queue's record (`origin_host`, `holder` {host, slot, token, expires_at}, `ran_on`, ...),
/// with `name` and `prompt` lifted out of its spec, whether it is in the shared queue, and
/// `prompt_id`, `batch_id`, `submission_id`, `line`: from this host's record where it has
/// one, else from the origin host's record the queue carries (`home`; ids of that host).
fn run_json(r: &QueueRun, shared: bool, local: Option<&Run>) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or_else(|_| json!({"id": r.id}));
    let home = r.home.as_ref().unwrap_or(&Value::Null);
    let (prompt_id, batch_id, submission_id, line) = match local {
        Some(l) => (json!(l.prompt_id), json!(l.batch_id), json!(l.submission_id), json!(l.line)),
        None => (home["prompt_id"].clone(), home["batch"]["id"].clone(), home["submission"].clone(), home["line"].clone()),
    };
    if let Some(map) = v.as_object_mut() {
        map.insert("name".into(), json!(r.spec.name));
        map.insert("prompt".into(), json!(r.spec.prompt));
        map.insert("in_shared_queue".into(), Value::Bool(shared));
        map.insert("prompt_id".into(), prompt_id);
        map.insert("batch_id".into(), batch_id);
        map.insert("submission_id".into(), submission_id);
        map.insert("line".into(), line);
    }
    v
}

/// This host's record of a run, if it has one.
fn local_record(store: &Store, id: &str) -> Result<Option<Run>> {
    match store.run(id) {
        Ok(run) => Ok(Some(run)),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Where a run runs or ran: `host/slot` while it is held, else the host of its last attempt.
fn on(r: &QueueRun) -> String {
    match (&r.holder, &r.ran_on) {
        (Some(h), _) => format!("{}/{}", h.host, h.slot),
        (None, Some(host)) => host.clone(),
        (None, None) => "-".into(),
    }
}

/// `cosmos list runs`: every host's runs from the shared queue, newest first, with this
/// host's pending runs (never in the shared queue) among them.
pub(super) fn list_runs(
    config: &Config,
    store: &Store,
    status: Option<RunStatus>,
    limit: Option<usize>,
    as_json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let mut q = connect(config)?;
    let mut runs: Vec<(QueueRun, bool)> = q.list(status, limit)?.into_iter().map(|r| (r, true)).collect();
    let mut pending = Vec::new();
    if matches!(status, None | Some(RunStatus::Pending)) {
        let host = q.host_id().to_string();
        pending = store.list_runs(Some(RunStatus::Pending), limit)?;
        pending.retain(|l| !runs.iter().any(|(r, _)| r.id == l.id));
        runs.extend(pending.iter().map(|l| (from_local(l, &host), false)));
        runs.sort_by(|(a, _), (b, _)| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
        runs.truncate(limit.unwrap_or(usize::MAX));
    }
    if as_json {
        let mut arr = Vec::with_capacity(runs.len());
        for (r, shared) in &runs {
            let local = match shared {
                true => local_record(store, &r.id)?,
                false => pending.iter().find(|l| l.id == r.id).cloned(),
            };
            arr.push(run_json(r, *shared, local.as_ref()));
        }
        return print_json(out, &Value::Array(arr));
    }
    // Host names vary in length: the columns fit the longest.
    let origin_w = runs.iter().map(|(r, _)| r.origin_host.chars().count()).max().unwrap_or(0).max(6);
    let on_w = runs.iter().map(|(r, _)| on(r).chars().count()).max().unwrap_or(0).max(2);
    writeln!(
        out,
        "{:<16} {:<10} {:<origin_w$} {:<on_w$} {:<20} {:>8} {:<24} PROMPT",
        "ID", "STATUS", "ORIGIN", "ON", "CONTROLS", "ATTEMPTS", "CREATED"
    )?;
    for (r, _) in &runs {
        writeln!(
            out,
            "{:<16} {:<10} {:<origin_w$} {:<on_w$} {:<20} {:>8} {:<24} {}",
            r.id,
            r.status,
            r.origin_host,
            on(r),
            r.control_set,
            r.attempts,
            r.created_at.rfc3339(),
            super::shorten(&r.spec.prompt, 40)
        )?;
    }
    Ok(())
}

/// `cosmos show RUN`: the run from the shared queue with its history there (`events`:
/// which host took it in, claimed, renewed, lost, finished it) and, where this host holds
/// it, its own record (`local`). `Ok(false)`: no such run in the shared queue; the caller
/// looks in this host's store.
pub(super) fn show_run(config: &Config, store: &Store, model: Model, prefix: &str, as_json: bool, out: &mut dyn Write) -> Result<bool> {
    let mut q = connect(config)?;
    let id = match q.resolve(prefix) {
        Ok(id) => id,
        Err(ClusterError::NotFound(_)) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let run = q.run(&id)?;
    let local = local_record(store, &id)?;
    let mut v = run_json(&run, true, local.as_ref());
    v["events"] = serde_json::to_value(q.events(&id)?).unwrap_or(Value::Null); // ok: run_json builds an object
    v["local"] = match &local {
        Some(local) => {
            let mut l = json::run(local, model);
            l["events"] = store.events(&id)?.iter().map(json::event).collect(); // ok: json::run builds an object
            l
        }
        None => Value::Null,
    };
    if as_json {
        print_json(out, &v)?;
    } else {
        write_plain(&v, "", out)?;
    }
    Ok(true)
}

/// `cosmos cancel` across hosts: a queued run at once, a running one when its holder
/// renews its lease next (within a third of `cluster.lease`) and stops it.
pub(super) fn cancel(config: &Config, store: &mut Store, prefixes: &[String], as_json: bool, out: &mut dyn Write) -> Result<()> {
    let mut q = connect(config)?;
    let found = resolve_all(&mut q, store, prefixes)?;
    let mut done = Vec::new();
    for f in found {
        let (id, status, stopping, running_on) = match f {
            Found::Shared(id) => {
                let after = q.cancel(&id)?;
                let stopping = after == RunStatus::Running;
                let holder = if stopping { q.run(&id)?.holder } else { None };
                let running_on = holder.map(|h| format!("{}/{}", h.host, h.slot));
                if !as_json {
                    match &running_on {
                        Some(at) => writeln!(out, "Cancelling run {id} (running on {at}; that host stops it at its next lease renewal)")?,
                        None if stopping => writeln!(out, "Cancelling run {id} (running; its host stops it at its next lease renewal)")?,
                        None => writeln!(out, "Cancelled run {id}")?,
                    }
                }
                (id, after, stopping, running_on)
            }
            Found::Local(id) => {
                let before = store.request_cancel(&id)?;
                let stopping = before == RunStatus::Running;
                if !as_json {
                    match stopping {
                        true => writeln!(out, "Cancelling run {id} (running; the daemon stops it within scheduler.cancel_grace)")?,
                        false => writeln!(out, "Cancelled run {id}")?,
                    }
                }
                (id.clone(), store.run(&id)?.status, stopping, None)
            }
        };
        done.push(json!({"id": id, "status": status, "stopping": stopping, "running_on": running_on}));
    }
    if as_json {
        print_json(out, &json!({"runs": done}))?;
    }
    Ok(())
}

/// `cosmos retry` across hosts: failed or cancelled runs queued again (every one is checked
/// before any is changed), for any host's slot to claim.
pub(super) fn retry(config: &Config, store: &mut Store, prefixes: &[String], as_json: bool, out: &mut dyn Write) -> Result<()> {
    let mut q = connect(config)?;
    let found = resolve_all(&mut q, store, prefixes)?;
    for f in &found {
        let (id, status) = match f {
            Found::Shared(id) => (id, q.run(id)?.status),
            Found::Local(id) => (id, store.run(id)?.status),
        };
        if !matches!(status, RunStatus::Failed | RunStatus::Cancelled) {
            return Err(usage(format!("run {id} is {status}; only failed or cancelled runs are retried")));
        }
    }
    let mut done = Vec::new();
    for f in found {
        let (id, status) = match f {
            Found::Shared(id) => {
                let run = q.retry(&id)?;
                // This host's own run whose end it had recorded: queued here again too, so
                // that the new end is recorded when it comes (a home run stays queued here
                // until it ended somewhere).
                if local_record(store, &id)?.is_some_and(|l| matches!(l.status, RunStatus::Failed | RunStatus::Cancelled)) {
                    store.change(&id, Change::Queue { detail: "retry requested (shared queue)".into() })?;
                }
                (id, run.status)
            }
            Found::Local(id) => {
                let run = store.change(&id, Change::Queue { detail: "retry requested".into() })?;
                (id, run.status)
            }
        };
        if !as_json {
            writeln!(out, "Queued run {id} again")?;
        }
        done.push(json!({"id": id, "status": status}));
    }
    if as_json {
        print_json(out, &json!({"runs": done}))?;
    }
    Ok(())
}

/// The `cluster` object of `cosmos status --json`, read from the database now (the shape
/// cosmosd writes into status.json): `{host_id, database, connected, queue, hosts}`; with
/// `error` and the reason where the database cannot be reached.
pub(super) fn view(config: &Config) -> (Value, Option<CliError>) {
    let host_id = config.cluster.effective_host_id();
    let database = describe_url(&config.cluster.database).unwrap_or_else(|_| "?".into());
    let read = (|| -> Result<(crate::store::Counts, Vec<HostView>)> {
        let mut q = connect(config)?;
        Ok((q.counts()?, q.hosts()?))
    })();
    match read {
        Ok((c, hosts)) => (
            json!({
                "host_id": host_id,
                "database": database,
                "connected": true,
                "lease_seconds": config.cluster.lease.0.as_secs_f64(),
                "queue": {"queued": c.queued, "running": c.running, "completed": c.completed, "failed": c.failed, "cancelled": c.cancelled},
                "hosts": serde_json::to_value(&hosts).unwrap_or(Value::Null),
            }),
            None,
        ),
        Err(e) => (
            json!({"host_id": host_id, "database": database, "connected": false, "lease_seconds": config.cluster.lease.0.as_secs_f64(), "queue": null, "hosts": [], "error": e.to_string()}),
            Some(e),
        ),
    }
}

/// `cosmos status`'s lines about the shared queue and every host, from [`view`]'s object.
pub(super) fn status_lines(v: &Value, lease: Duration, out: &mut dyn Write) -> Result<()> {
    let me = v["host_id"].as_str().unwrap_or("?");
    let database = v["database"].as_str().unwrap_or("?");
    if v["connected"] != Value::Bool(true) {
        writeln!(out, "cluster: host {me}; the queue database {database} cannot be reached")?;
        return Ok(());
    }
    let hosts = v["hosts"].as_array().cloned().unwrap_or_default();
    writeln!(out, "cluster: host {me} of {} host(s) on {database}", hosts.len())?;
    let q = &v["queue"];
    writeln!(
        out,
        "queue (shared): {} queued, {} running, {} completed, {} failed, {} cancelled",
        q["queued"], q["running"], q["completed"], q["failed"], q["cancelled"]
    )?;
    for h in &hosts {
        let id = h["host_id"].as_str().unwrap_or("?");
        let age = h["seconds_since_heartbeat"].as_f64().unwrap_or(f64::INFINITY);
        // A host silent for longer than a lease holds nothing any more: its runs move on.
        let silent = if age > lease.as_secs_f64() {
            format!(" (silent for longer than cluster.lease = {}s: down?)", lease.as_secs())
        } else {
            String::new()
        };
        writeln!(
            out,
            "host {id}{}: cosmosd {} (pid {}), heartbeat {} ago{silent}",
            if id == me { " (this host)" } else { "" },
            h["version"].as_str().unwrap_or("?"),
            h["pid"],
            crate::policy::duration_words(age)
        )?;
        let slots = h["slots"].as_array().cloned().unwrap_or_default();
        if slots.is_empty() {
            writeln!(out, "  no worker slot")?;
        }
        for s in slots {
            let gpus: Vec<String> = s["gpus"].as_array().into_iter().flatten().map(|g| g.to_string()).collect();
            writeln!(
                out,
                "  slot {}: {}, loaded {}, {}{}",
                s["slot"].as_str().unwrap_or("?"),
                if gpus.is_empty() { "no GPU".to_string() } else { format!("GPU {}", gpus.join(",")) },
                s["loaded_controls"].as_str().unwrap_or("nothing"),
                s["state"].as_str().unwrap_or("?"),
                s["run_id"].as_str().map_or(String::new(), |r| format!(" {r}"))
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_name_every_host_its_gpus_controls_and_state_and_flag_a_silent_one() {
        let v = json!({
            "host_id": "gpu-a", "database": "cosmos@db:5432/q", "connected": true,
            "queue": {"queued": 3, "running": 1, "completed": 7, "failed": 0, "cancelled": 2},
            "hosts": [
                {"host_id": "gpu-a", "version": "0.1.0", "pid": 10, "seconds_since_heartbeat": 1.2,
                 "slots": [{"slot": "0", "gpus": [0, 1], "loaded_controls": "edge,vis", "state": "running", "run_id": "rs_abc"}]},
                {"host_id": "gpu-b", "version": "0.1.0", "pid": 20, "seconds_since_heartbeat": 500.0, "slots": []},
            ],
        });
        let mut out = Vec::new();
        status_lines(&v, Duration::from_secs(90), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("cluster: host gpu-a of 2 host(s) on cosmos@db:5432/q"), "{text}");
        assert!(text.contains("queue (shared): 3 queued, 1 running, 7 completed, 0 failed, 2 cancelled"), "{text}");
        assert!(text.contains("host gpu-a (this host): cosmosd 0.1.0 (pid 10), heartbeat 1s ago\n"), "{text}");
        assert!(text.contains("  slot 0: GPU 0,1, loaded edge,vis, running rs_abc"), "{text}");
        assert!(text.contains("host gpu-b: cosmosd 0.1.0 (pid 20), heartbeat") && text.contains("down?"), "{text}");
        let mut out = Vec::new();
        status_lines(&json!({"host_id": "gpu-a", "database": "cosmos@db:5432/q", "connected": false}), Duration::from_secs(90), &mut out)
            .unwrap();
        assert!(String::from_utf8(out).unwrap().contains("cosmos@db:5432/q cannot be reached"));
    }
}
