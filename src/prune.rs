//! Pruning (`cosmos prune`, `daemon.prune_after`): the files of runs that ended before a
//! cut-off. Their work folders, their submissions' archived originals, staged inputs that no
//! kept run names, the daemon's rotated log files; a published run folder only when asked.
//!
//! Only what the store says is over goes: a run not ended (pending, queued, running), a
//! submission with such a run, an input such a run names are never touched. What the store
//! does not know (a deleted run's folder) goes once it is older than the cut-off.

use crate::fsutil::PathIo;
use crate::layout::{parse_claim_name, Layout};
use crate::store::{Store, StoreError};
use crate::time::Timestamp;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Io(#[from] PathIo),
}

/// What is pruned.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Files of runs that ended before this go.
    pub cutoff: SystemTime,
    /// Published run folders too (`--outbox`).
    pub outbox: bool,
    /// Say what would go; remove nothing.
    pub dry_run: bool,
    /// `log.dir`: rotated `cosmosd.log.*` files older than the cut-off go (none when empty).
    pub log_dir: PathBuf,
}

/// The kinds of what a prune removes, as `--json` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `state/work/<run>/`
    Work,
    /// `state/archive/<sb>__<name>`
    Archive,
    /// `state/work/inputs/<sha256>.<ext>`
    Input,
    /// `log.dir/cosmosd.log.<date>`
    Log,
    /// `outbox/run_<run>/`
    Outbox,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Work => "work",
            Kind::Archive => "archive",
            Kind::Input => "input",
            Kind::Log => "log",
            Kind::Outbox => "outbox",
        }
    }
}

/// One thing removed (or, in a dry run, that would be).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Removed {
    pub kind: Kind,
    pub path: PathBuf,
    pub bytes: u64,
}

/// What a prune did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    pub removed: Vec<Removed>,
    /// What could not be removed, each with its path and why.
    pub errors: Vec<String>,
}

impl Report {
    pub fn bytes(&self) -> u64 {
        self.removed.iter().map(|r| r.bytes).sum()
    }

    pub fn count(&self, kind: Kind) -> usize {
        self.removed.iter().filter(|r| r.kind == kind).count()
    }

    fn take(&mut self, kind: Kind, path: PathBuf, dry_run: bool) {
        let bytes = tree_bytes(&path);
        if !dry_run {
            if let Err(e) = crate::fsutil::remove_any(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    self.errors.push(format!("cannot remove {}: {e}", path.display()));
                }
                return;
            }
        }
        self.removed.push(Removed { kind, path, bytes });
    }
}

/// Removes what `plan` names under `layout`, by what `store` says of each run.
pub fn prune(store: &Store, layout: &Layout, plan: &Plan) -> Result<Report, PruneError> {
    let cutoff = Timestamp::from_system_time(plan.cutoff).rfc3339();
    let mut report = Report::default();
    let older = |path: &Path| modified(path).is_some_and(|m| m < plan.cutoff);

    // Work folders: one per run that has started.
    let work = layout.work();
    for (name, path) in entries(&work)? {
        let is_run = crate::ids::parse_prefix(&name) == Ok(crate::ids::IdKind::Run) && name.len() == 3 + crate::ids::ID_CHARS;
        if !is_run || !path.is_dir() {
            continue;
        }
        let prune = match store.ended_before(&name, &cutoff)? {
            Some(ended) => ended,
            None => older(&path),
        };
        if prune {
            report.take(Kind::Work, path, plan.dry_run);
        }
    }

    // Archived originals: a submission's, once every run of it ended before the cut-off.
    for (name, path) in entries(&layout.archive())? {
        let Some((sb, _)) = parse_claim_name(&name) else { continue };
        let prune = match store.submission_ended_before(sb, &cutoff)? {
            Some(over) => over,
            None => older(&path),
        };
        if prune {
            report.take(Kind::Archive, path, plan.dry_run);
        }
    }

    // Staged inputs: only those no kept run names, and older than the cut-off themselves
    // (one intake is staging now is not in the store yet).
    let inputs = layout.inputs();
    let staged = entries(&inputs)?;
    if !staged.is_empty() {
        let named = names_in_use(store, &inputs, &cutoff)?;
        for (name, path) in staged {
            if name.starts_with('.') || named.contains(&name) || !path.is_file() || !older(&path) {
                continue;
            }
            report.take(Kind::Input, path, plan.dry_run);
        }
    }

    if !plan.log_dir.as_os_str().is_empty() {
        prune_logs(&plan.log_dir, plan.cutoff, plan.dry_run, &mut report)?;
    }

    if plan.outbox {
        for (name, path) in entries(layout.outbox())? {
            let Some(run) = name.strip_prefix("run_") else { continue };
            if path.is_dir() && store.ended_before(run, &cutoff)? == Some(true) {
                report.take(Kind::Outbox, path, plan.dry_run);
            }
        }
    }
    Ok(report)
}

/// Rotated daemon logs in `dir` (`cosmosd.log.<date>`) last written before `cutoff`.
pub fn prune_logs(dir: &Path, cutoff: SystemTime, dry_run: bool, report: &mut Report) -> Result<(), PruneError> {
    let mut logs: Vec<(SystemTime, PathBuf)> = entries(dir)?
        .into_iter()
        .filter(|(name, path)| name.starts_with("cosmosd.log.") && path.is_file())
        .filter_map(|(_, path)| modified(&path).map(|m| (m, path)))
        .collect();
    logs.sort();
    // The newest is the one being written, however quiet the daemon has been.
    logs.pop();
    for (m, path) in logs {
        if m < cutoff {
            report.take(Kind::Log, path, dry_run);
        }
    }
    Ok(())
}

/// The cut-off `age` before now.
pub fn cutoff(age: Duration) -> SystemTime {
    SystemTime::now().checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The names under `inputs/` that the specs of kept runs name. Read from the JSON text of
/// each spec, where every staged path appears as `<inputs>/<name>"`: no spec is parsed.
fn names_in_use(store: &Store, inputs: &Path, cutoff: &str) -> Result<HashSet<String>, StoreError> {
    // The folder as serde_json writes it inside a string (quotes, backslashes escaped).
    let quoted = serde_json::to_string(&format!("{}/", inputs.display())).unwrap_or_default();
    let prefix = quoted.trim_start_matches('"').trim_end_matches('"').to_string();
    let mut named = HashSet::new();
    store.for_each_kept_spec(cutoff, |spec| {
        let mut rest = spec;
        while let Some(at) = rest.find(&prefix) {
            rest = &rest[at + prefix.len()..];
            let end = rest.find(['"', '/', '\\']).unwrap_or(rest.len());
            named.insert(rest[..end].to_string());
        }
    })?;
    Ok(named)
}

/// The entries of `dir` (none if it does not exist).
fn entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, PathIo> {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(crate::fsutil::at("cannot list", dir)(e)),
    };
    let mut out = Vec::new();
    for e in read {
        let e = e.map_err(crate::fsutil::at("cannot list", dir))?;
        out.push((e.file_name().to_string_lossy().into_owned(), e.path()));
    }
    out.sort();
    Ok(out)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::symlink_metadata(path).and_then(|m| m.modified()).ok()
}

/// The bytes of the files under `path` (links not followed).
fn tree_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path).map(|r| r.flatten().map(|e| tree_bytes(&e.path())).sum()).unwrap_or(0)
}

/// `1.5 MiB`: bytes for people.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }

    #[test]
    fn rotated_logs_older_than_the_cutoff_go_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["cosmosd.log.2020-01-01", "cosmosd.log.2020-01-02", "cosmosd.log.2020-01-03", "notes.txt"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
            // Distinct times: the newest is the one being written and always stays.
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut report = Report::default();
        // A cut-off in the past: everything is newer.
        prune_logs(dir.path(), SystemTime::now() - Duration::from_secs(3600), false, &mut report).unwrap();
        assert!(report.removed.is_empty());
        let future = SystemTime::now() + Duration::from_secs(3600);
        prune_logs(dir.path(), future, true, &mut report).unwrap();
        assert_eq!(report.count(Kind::Log), 2);
        assert!(dir.path().join("cosmosd.log.2020-01-01").is_file(), "a dry run removes nothing");
        let mut report = Report::default();
        prune_logs(dir.path(), future, false, &mut report).unwrap();
        assert_eq!(report.count(Kind::Log), 2);
        assert_eq!(report.bytes(), 2);
        assert!(!dir.path().join("cosmosd.log.2020-01-01").exists());
        assert!(dir.path().join("notes.txt").is_file(), "only cosmosd's rotated logs");
        assert!(dir.path().join("cosmosd.log.2020-01-03").is_file(), "the newest log is the current one");
    }
}
