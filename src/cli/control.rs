//! Talking to a running daemon through the store and the outbox: `cancel`, `retry`,
//! `pause`, `resume` write the store (the daemon reads it every 250 ms); `status` reads
//! status.json; `logs` reads a run's execution.log.

use super::{resolve_all, usage, CliError, Result};
use crate::config::Config;
use crate::ids::IdKind;
use crate::store::{Change, RunStatus, Store};
use crate::time::Timestamp;
use serde_json::Value;
use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::time::Duration;

pub fn cancel(store: &mut Store, prefixes: &[String], out: &mut dyn Write) -> Result<()> {
    let ids = resolve_all(store, IdKind::Run, prefixes)?;
    for id in ids {
        match store.request_cancel(&id)? {
            RunStatus::Running => writeln!(out, "Cancelling run {id} (running; the daemon stops it within scheduler.cancel_grace)")?,
            _ => writeln!(out, "Cancelled run {id}")?,
        }
    }
    Ok(())
}

pub fn retry(store: &mut Store, prefixes: &[String], out: &mut dyn Write) -> Result<()> {
    let ids = resolve_all(store, IdKind::Run, prefixes)?;
    for id in &ids {
        let run = store.run(id)?;
        if !matches!(run.status, RunStatus::Failed | RunStatus::Cancelled) {
            return Err(usage(format!("run {id} is {}; only failed or cancelled runs are retried", run.status)));
        }
    }
    for id in ids {
        store.change(&id, Change::Queue { detail: "retry requested".into() })?;
        writeln!(out, "Queued run {id} again")?;
    }
    Ok(())
}

pub fn pause(store: &mut Store, paused: bool, out: &mut dyn Write) -> Result<()> {
    store.set_paused(paused)?;
    if paused {
        writeln!(out, "Paused: no new run starts; the running one finishes. `cosmos resume` to continue.")?;
    } else {
        writeln!(out, "Resumed.")?;
    }
    Ok(())
}

fn read_status(config: &Config) -> Option<Value> {
    let text = std::fs::read_to_string(crate::layout::Layout::of(&config.paths).status_json()).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn status(store: &Store, config: &Config, as_json: bool, out: &mut dyn Write) -> Result<()> {
    let status = read_status(config);
    // status.json is rewritten at least every daemon.status_interval while cosmosd runs.
    let fresh = status.as_ref().and_then(|s| s["updated_at"].as_str()).and_then(Timestamp::parse_rfc3339).is_some_and(|t| {
        let age = Timestamp::now().0 - t.0;
        age >= 0 && (age as u128) < (config.daemon.status_interval.0 * 3).as_millis().max(5000)
    });
    if as_json {
        let mut v = status.unwrap_or_else(|| serde_json::json!({}));
        v["daemon_alive"] = Value::Bool(fresh);
        v["queue_now"] = serde_json::to_value(store.counts()?).unwrap_or(Value::Null);
        writeln!(out, "{}", serde_json::to_string_pretty(&v).unwrap_or_default())?;
        return Ok(());
    }
    let counts = store.counts()?;
    match (&status, fresh) {
        (Some(s), true) => writeln!(
            out,
            "cosmosd {} (pid {}), {} since {}",
            s["daemon"]["version"].as_str().unwrap_or("?"),
            s["daemon"]["pid"],
            s["daemon"]["state"].as_str().unwrap_or("?"),
            s["daemon"]["started_at"].as_str().unwrap_or("?")
        )?,
        (Some(s), false) => writeln!(out, "cosmosd is not running (status.json last updated {})", s["updated_at"].as_str().unwrap_or("?"))?,
        (None, _) => writeln!(out, "cosmosd is not running (no {})", crate::layout::Layout::of(&config.paths).status_json().display())?,
    }
    writeln!(
        out,
        "queue: {} queued, {} running, {} completed, {} failed, {} cancelled, {} pending",
        counts.queued, counts.running, counts.completed, counts.failed, counts.cancelled, counts.pending
    )?;
    if let Some(s) = status.filter(|_| fresh) {
        match s["current"].as_object() {
            Some(c) => {
                let eta = c.get("eta_seconds").and_then(Value::as_f64).map_or(String::new(), |e| format!(", ETA {e:.0}s"));
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
        for w in s["workers"].as_array().into_iter().flatten() {
            let container = w["container_id"].as_str().map_or(String::new(), |c| format!(" container {}", &c[..c.len().min(12)]));
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
        writeln!(out, "gpus: {}", s["nvml"].as_str().unwrap_or("none"))?;
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
    Ok(())
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
            f.seek(std::io::SeekFrom::Start(offset))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
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
