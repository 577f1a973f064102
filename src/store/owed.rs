//! Completion hooks owed (schema 5). What is owed commits in the transaction that ends a
//! run, so a daemon killed between a run's end and its hook still owes the hook when it
//! starts again; the hook thread (`crate::hooks`) reads what is due and settles it.

use super::{insert_event, Result, RunStatus, Store, StoreError};
use crate::time::Timestamp;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

/// What an owed hook is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwedKind {
    /// A run ended (completed, failed or cancelled).
    Run,
    /// The last open run of a submission ended.
    Submission,
}

impl OwedKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OwedKind::Run => "run",
            OwedKind::Submission => "submission",
        }
    }
}

/// One event whose hooks are not all delivered yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Owed {
    pub id: i64,
    pub kind: OwedKind,
    /// The run's or the submission's id.
    pub subject: String,
    /// The run's final status (`ended` for a submission).
    pub status: String,
    pub created_at: String,
    /// Delivery rounds tried so far.
    pub attempts: u32,
    /// The hooks (`on_run`, `webhook URL`, ...) already done: not run again.
    pub delivered: Vec<String>,
}

/// How a delivery round went, recorded in one transaction with its events.
#[derive(Debug, Clone, Default)]
pub struct Settle {
    pub delivered: Vec<String>,
    pub attempts: u32,
    /// When to try the rest again; `None` with `done`.
    pub not_before: Option<Timestamp>,
    /// Every hook delivered, or given up on.
    pub done: bool,
    /// `(kind, detail)` events of the subject (a run, or a submission's id).
    pub events: Vec<(String, String)>,
}

/// The `daemon_state` key naming the kinds of event the daemon has hooks for.
const WANTED_KEY: &str = "hooks";

impl Store {
    /// Which events owe hooks from now on (the daemon's `[hooks]`): a store whose daemon
    /// has no hooks records nothing, so a million runs leave no rows behind.
    pub fn set_hooks_wanted(&mut self, run: bool, submission: bool) -> Result<()> {
        let value = match (run, submission) {
            (true, true) => "run,submission",
            (true, false) => "run",
            (false, true) => "submission",
            (false, false) => "",
        };
        self.conn.execute(
            "INSERT INTO daemon_state (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![WANTED_KEY, value],
        )?;
        Ok(())
    }

    /// Owed hooks due at `now`, oldest first, at most `limit`.
    pub fn owed_hooks(&self, now: Timestamp, limit: usize) -> Result<Vec<Owed>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, kind, subject, status, created_at, attempts, delivered FROM hooks_owed \
             WHERE done_at IS NULL AND (not_before IS NULL OR not_before <= ?1) ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now.rfc3339(), limit as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get::<_, i64>(5)?, r.get::<_, String>(6)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, kind, subject, status, created_at, attempts, delivered) = row?;
            let kind = match kind.as_str() {
                "run" => OwedKind::Run,
                "submission" => OwedKind::Submission,
                other => return Err(StoreError::Corrupt(format!("owed hook {id} has kind {other:?}"))),
            };
            let delivered = serde_json::from_str(&delivered)
                .map_err(|e| StoreError::Corrupt(format!("owed hook {id}: delivered is not a JSON list of names: {e}")))?;
            out.push(Owed { id, kind, subject, status, created_at, attempts: attempts.max(0) as u32, delivered });
        }
        Ok(out)
    }

    /// When the next owed hook that waits on a backoff is due.
    pub fn next_owed_at(&self) -> Result<Option<Timestamp>> {
        let next: Option<String> =
            self.conn.query_row("SELECT min(not_before) FROM hooks_owed WHERE done_at IS NULL", [], |r| r.get(0)).optional()?.flatten();
        Ok(next.as_deref().and_then(Timestamp::parse_rfc3339))
    }

    /// Records a delivery round of owed hook `id` with its events, in one transaction.
    pub fn settle_hook(&mut self, id: i64, subject: &str, settle: &Settle) -> Result<()> {
        let now = Timestamp::now().rfc3339();
        let delivered = serde_json::to_string(&settle.delivered).unwrap_or_else(|_| "[]".into());
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE hooks_owed SET attempts = ?2, delivered = ?3, not_before = ?4, done_at = ?5 WHERE id = ?1",
            params![id, settle.attempts, delivered, settle.not_before.map(|t| t.rfc3339()), settle.done.then_some(now.as_str())],
        )?;
        for (kind, detail) in &settle.events {
            insert_event(&tx, Some(subject), &now, kind, Some(detail))?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// Called where a run's status changes, inside that transaction: a run that reached a
/// final status owes its `run` hooks, and the submission whose last open run it was owes
/// its `submission` hooks.
pub(super) fn owe_on_end(conn: &Connection, run_id: &str, to: RunStatus, now: &str) -> Result<()> {
    if !to.is_final() {
        return Ok(());
    }
    let wanted: Option<String> =
        conn.prepare_cached("SELECT value FROM daemon_state WHERE key = ?1")?.query_row([WANTED_KEY], |r| r.get(0)).optional()?;
    let Some(wanted) = wanted.filter(|w| !w.is_empty()) else { return Ok(()) };
    let mut insert = conn.prepare_cached("INSERT INTO hooks_owed (kind, subject, status, created_at) VALUES (?1, ?2, ?3, ?4)")?;
    if wanted.split(',').any(|k| k == "run") {
        insert.execute(params!["run", run_id, to.as_str(), now])?;
    }
    if wanted.split(',').any(|k| k == "submission") {
        let submission: Option<String> =
            conn.prepare_cached("SELECT submission_id FROM runs WHERE id = ?1")?.query_row([run_id], |r| r.get(0)).optional()?.flatten();
        if let Some(sb) = submission {
            // Counted in the submission's row (migration 8): no scan of its runs.
            let open: i64 = conn
                .prepare_cached("SELECT open_runs FROM submissions WHERE id = ?1")?
                .query_row([&sb], |r| r.get(0))
                .optional()?
                .unwrap_or(0);
            if open <= 0 {
                insert.execute(params!["submission", sb, "ended", now])?;
            }
        }
    }
    Ok(())
}
