//! What a host's store needs when several hosts share one queue (`[cluster]`): the runs
//! this host took in that are waiting to enter the shared queue, and the end of a run that
//! ran elsewhere (or here, through the shared queue), recorded as one transaction with its
//! events, its upscale child and the hooks it owes, as a local end is.

use super::{apply_change, cancel_children, count_inserted, insert_run, load_run, run_from_row, Change, Result, Run, RunStatus, Store};
use super::{TransactionBehavior, RUN_COLUMNS};
use crate::spec::RunSpec;
use crate::time::Timestamp;
use rusqlite::params;
use serde_json::Value;

/// How a run ended in the shared queue.
#[derive(Debug, Clone)]
pub enum EndedElsewhere {
    Completed { outputs: Value, child: Option<Box<(String, RunSpec)>> },
    Failed { error: String },
    Cancelled { reason: String },
}

impl Store {
    /// Queued runs inserted after `rowid` (0: all), oldest first, at most `limit`, each
    /// with its rowid: what the exporter of a host in a cluster puts into the shared queue.
    pub fn queued_after(&self, rowid: i64, limit: usize) -> Result<Vec<(i64, Run)>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {RUN_COLUMNS}, rowid FROM runs WHERE rowid > ?1 AND status = 'queued' ORDER BY rowid LIMIT ?2"
        ))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![rowid, limit], |r| {
            // The rowid comes after the run's columns, which run_from_row reads from 0.
            let n: i64 = r.get(RUN_COLUMNS.split(',').count())?;
            Ok((n, run_from_row(r)?))
        })?;
        rows.map(|r| {
            let (n, run) = r?;
            Ok((n, run?))
        })
        .collect()
    }

    /// The newest event's number (0: none): where watching for runs queued again starts.
    pub fn last_event_seq(&self) -> Result<i64> {
        Ok(self.conn.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| r.get(0))?)
    }

    /// Runs queued again (`batch-inference` of pending runs, `retry`) by events after
    /// `seq`, at most `limit` events read: the last event read, and those runs still queued.
    pub fn queued_again_after(&self, seq: i64, limit: usize) -> Result<(i64, Vec<Run>)> {
        let mut stmt =
            self.conn.prepare_cached("SELECT seq, run_id FROM events WHERE seq > ?1 AND kind = 'queued' ORDER BY seq LIMIT ?2")?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<(i64, Option<String>)> =
            stmt.query_map(params![seq, limit], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<std::result::Result<_, _>>()?;
        let mut last = seq;
        let mut runs = Vec::new();
        for (n, id) in rows {
            last = n;
            if let Some(run) = id.and_then(|id| load_run(&self.conn, &id).ok()).filter(|r| r.status == RunStatus::Queued) {
                runs.push(run);
            }
        }
        Ok((last, runs))
    }

    /// Records the end of a run that went through the shared queue, ran by `host` in
    /// `attempts` attempts. `None`: the run had ended here already (nothing changed).
    pub fn end_elsewhere(&mut self, run_id: &str, host: &str, attempts: u32, end: &EndedElsewhere) -> Result<Option<Run>> {
        let now = Timestamp::now().rfc3339();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let run = load_run(&tx, run_id)?;
        if matches!(run.status, RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled) {
            return Ok(None);
        }
        if run.status != RunStatus::Running {
            apply_change(&tx, run_id, &Change::Start, &now)?;
        }
        tx.execute("UPDATE runs SET attempts = ?2, ran_on = ?3 WHERE id = ?1", params![run_id, i64::from(attempts), host])?;
        match end {
            EndedElsewhere::Completed { outputs, child } => {
                if let Some(boxed) = child {
                    let (child_id, spec) = &**boxed;
                    if load_run(&tx, child_id).is_err() {
                        insert_run(&tx, child_id, &run.prompt_id, spec, RunStatus::Queued, None, run.submission_id.as_deref(), None, &now)?;
                        count_inserted(&tx, RunStatus::Queued, 1)?;
                        tx.execute("UPDATE runs SET parent_id = ?2 WHERE id = ?1", params![child_id, run_id])?;
                    }
                }
                apply_change(&tx, run_id, &Change::Complete { outputs: outputs.clone() }, &now)?;
            }
            EndedElsewhere::Failed { error } => {
                apply_change(&tx, run_id, &Change::Fail { error: error.clone() }, &now)?;
                cancel_children(&tx, run_id, &now)?;
            }
            EndedElsewhere::Cancelled { reason } => {
                apply_change(&tx, run_id, &Change::Cancel { reason: reason.clone() }, &now)?;
                cancel_children(&tx, run_id, &now)?;
            }
        }
        tx.commit()?;
        self.run(run_id).map(Some)
    }
}
