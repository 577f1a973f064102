//! The store: SQLite at `<state>/cosmos.db` (DESIGN.md section 7). WAL, a busy timeout,
//! forward migrations in `user_version`. Every status change commits with its event row in
//! one transaction, and illegal transitions are refused.

mod counters;
mod owed;
mod rates;
mod remote;
mod schema;
mod status;

pub use counters::{Finish, FINISHED_KINDS};
pub use owed::{Owed, OwedKind, Settle};
pub use rates::{per_unit as rates_per_unit, QueuedRun, Rate, RateKey, Unit as RateUnit};

pub use status::{Change, RunStatus, SubmissionStatus};

use crate::ids::{self, IdKind, IdSyntaxError};
use crate::spec::{Hint, Job, RunSpec};
use crate::time::Timestamp;
use rusqlite::{params, Connection, OptionalExtension, Statement, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store {path}: {source} (is paths.state right? `--root DIR` puts it under DIR/state)")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("the store {path} has schema version {found}; this program knows up to {known}: upgrade cosmos-workflow")]
    TooNew { path: PathBuf, found: i64, known: i64 },
    #[error(transparent)]
    Id(#[from] IdSyntaxError),
    #[error("no {kind} has an id starting with `{prefix}`")]
    NotFound { kind: IdKind, prefix: String },
    #[error("`{prefix}` matches {count} {kind}s ({list}); type more of the id")]
    Ambiguous { kind: IdKind, prefix: String, count: usize, list: String },
    #[error("run {id} is {from}; it cannot become {to}")]
    IllegalTransition { id: String, from: RunStatus, to: RunStatus },
    /// A request the data does not allow, said in words (delete of a running run, ...).
    #[error("{0}")]
    Refused(String),
    #[error("the store holds damaged data: {0}")]
    Corrupt(String),
    #[error("store error: {0}")]
    Sql(#[from] rusqlite::Error),
}

impl StoreError {
    /// A failure that passes by itself: another process holds the database (busy,
    /// locked), its disk is full, or an I/O error (a network filesystem hiccup). The daemon
    /// waits and tries again; everything else is a bug or damage and stops what it was doing.
    pub fn is_transient(&self) -> bool {
        use rusqlite::ErrorCode::*;
        let code = match self {
            StoreError::Sql(rusqlite::Error::SqliteFailure(e, _))
            | StoreError::Open { source: rusqlite::Error::SqliteFailure(e, _), .. } => e.code,
            _ => return false,
        };
        matches!(code, DatabaseBusy | DatabaseLocked | DiskFull | SystemIoFailure)
    }

    /// Another process holds the database.
    pub fn is_busy(&self) -> bool {
        use rusqlite::ErrorCode::*;
        matches!(
            self,
            StoreError::Sql(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error { code: DatabaseBusy | DatabaseLocked, .. }, _))
                | StoreError::Open {
                    source: rusqlite::Error::SqliteFailure(rusqlite::ffi::Error { code: DatabaseBusy | DatabaseLocked, .. }, _),
                    ..
                }
        )
    }

    /// Errors in what a person asked for (exit 2), as opposed to failures (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            StoreError::Id(_)
                | StoreError::NotFound { .. }
                | StoreError::Ambiguous { .. }
                | StoreError::IllegalTransition { .. }
                | StoreError::Refused(_)
        )
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The videos of a prompt: `color.mp4` and what else its folder holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptInputs {
    pub color: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seg: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prompt {
    pub id: String,
    pub name: Option<String>,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub inputs: PromptInputs,
    pub created_at: String,
}

#[derive(Debug, Clone)]
pub struct NewPrompt {
    pub name: Option<String>,
    pub text: String,
    pub negative_prompt: Option<String>,
    pub inputs: PromptInputs,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub id: String,
    pub prompt_id: String,
    pub name: Option<String>,
    pub status: RunStatus,
    pub spec: RunSpec,
    pub control_set: String,
    pub priority: i32,
    pub batch_id: Option<String>,
    pub submission_id: Option<String>,
    pub line: Option<u64>,
    pub parent_id: Option<String>,
    pub attempts: u32,
    pub outputs: Option<Value>,
    pub error: Option<String>,
    pub created_at: String,
    pub queued_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Batch {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub created_at: String,
}

impl Batch {
    /// `batch_<name>_<YYYYmmdd_HHMMSS>`, the batch's folder in the outbox.
    pub fn folder_name(&self) -> String {
        let stamp = Timestamp::parse_rfc3339(&self.created_at).unwrap_or(Timestamp(0)).compact();
        format!("batch_{}_{stamp}", self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Submission {
    pub id: String,
    pub file: String,
    pub sha256: String,
    pub status: SubmissionStatus,
    /// `duplicate`: the accepted submission it repeats. `rejected`: the earlier rejection
    /// with the same content and the same problems, whose rejected/ folder says them.
    pub duplicate_of: Option<String>,
    pub runs: u64,
    pub problems: u64,
    pub received_at: String,
    /// sha256 of the problems as rendered without the file's name (`rejected` only).
    pub problems_digest: Option<String>,
    /// The latest rejection of the same content before this submission, if any.
    pub rejected_before: Option<String>,
}

/// What [`Store::record_submission`] records of a submission that was not accepted.
#[derive(Debug, Clone)]
pub struct Unaccepted<'a> {
    pub file: &'a str,
    pub sha256: &'a str,
    /// `Duplicate` or `Rejected`.
    pub status: SubmissionStatus,
    pub duplicate_of: Option<&'a str>,
    pub problems: u64,
    pub problems_digest: Option<&'a str>,
    pub rejected_before: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub seq: i64,
    pub run_id: Option<String>,
    pub time: String,
    pub kind: String,
    pub detail: Option<String>,
}

/// Counts of runs by status.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    pub pending: u64,
    pub queued: u64,
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl Counts {
    pub fn of(&self, status: RunStatus) -> u64 {
        match status {
            RunStatus::Pending => self.pending,
            RunStatus::Queued => self.queued,
            RunStatus::Running => self.running,
            RunStatus::Completed => self.completed,
            RunStatus::Failed => self.failed,
            RunStatus::Cancelled => self.cancelled,
        }
    }

    pub fn total(&self) -> u64 {
        self.pending + self.queued + self.running + self.completed + self.failed + self.cancelled
    }
}

/// One line of a receipt: a run of a submission, as [`Store::receipt_lines`] gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiptLine {
    pub line: u64,
    pub name: Option<String>,
    pub run_id: String,
    pub status: RunStatus,
    pub error: Option<String>,
    /// The host that ran it, when several share a queue.
    pub ran_on: Option<String>,
}

pub use remote::EndedElsewhere;

/// See [`Store::queue_candidates`].
#[derive(Debug, Clone, Default)]
pub struct QueueCandidates {
    pub head: Option<Run>,
    pub same_set: Option<Run>,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// The page size of a new store (see [`Store::open`]).
const PAGE_SIZE: i64 = 32768;

const SUBMISSION_COLUMNS: &str = "id, file, sha256, status, duplicate_of, runs, problems, received_at, problems_digest, rejected_before";

const RUN_COLUMNS: &str = "id, prompt_id, name, status, spec, control_set, priority, batch_id, submission_id, line, \
     parent_id, attempts, outputs, error, created_at, queued_at, started_at, finished_at, updated_at";

impl Store {
    /// Opens (creating if needed) the store and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        let open_err = |source| StoreError::Open { path: path.to_path_buf(), source };
        configure_sqlite();
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(open_err)?;
        // Read before anything writes: a store from a newer version (or not a database at
        // all) is refused as it is, not converted first.
        let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(open_err)?;
        let known = schema::MIGRATIONS.len() as i64;
        if found > known {
            return Err(StoreError::TooNew { path: path.to_path_buf(), found, known });
        }
        if found == 0 {
            // A new store: 32 KiB pages (set before WAL and the first table fix the size; on a
            // database that has pages already this does nothing). A submission's rows (about
            // 1 KB a run) and index entries take an eighth of the pages they take at 4 KiB,
            // and index descents are shorter: in benches/validate_insert, a 100,000-line
            // submission's inserts took a quarter less CPU time, its commit half (16 KiB:
            // somewhat less than that). A store made with 4 KiB pages keeps them.
            conn.pragma_update(None, "page_size", PAGE_SIZE).map_err(open_err)?;
        }
        // WAL: readers (cosmos) never block the writer (cosmosd). FULL: a commit survives
        // power loss, since a lost submission is the one thing we must never do.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(open_err)?;
        // Statement journals (an insert that fires a trigger keeps one) in memory, not in
        // a temp file written page by page: most of a large submission's cost otherwise.
        conn.pragma_update(None, "temp_store", "MEMORY").map_err(open_err)?;
        // 64 MiB of page cache: a large submission inserts into random-id indexes, which
        // thrash the default 2 MiB cache.
        conn.pragma_update(None, "cache_size", -65536).map_err(open_err)?;
        // A shared (setgid) state folder: the files SQLite made are opened to the group.
        share_store_files(path);
        let mut store = Store { conn, path: path.to_path_buf() };
        // Up to date: no write lock taken (another process may hold it; reading goes on).
        if found < known {
            store.migrate()?;
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `synchronous = NORMAL` for this connection: commits survive a crash of the process,
    /// not a power loss. The scheduler's changes are all recoverable (a lost "running" is
    /// retried from the work folder), and an fsync per change would sit in the dispatch gap.
    /// Intake keeps FULL: a submission is never lost.
    pub fn relax_sync(&self) -> Result<()> {
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(())
    }

    /// The intake's connection: it inserts a submission's rows (prompts and runs) whose
    /// references it makes itself in the same transaction, so foreign-key checks (a lookup
    /// per row) buy nothing there; and it leaves checkpointing the WAL to quiet moments
    /// ([`Store::checkpoint`]) unless the WAL passes 256 MiB, so that a large submission's
    /// commit does not also copy every page into the database file, while a burst of them
    /// cannot grow the WAL without bound.
    pub fn tune_for_intake(&self) -> Result<()> {
        self.conn.pragma_update(None, "foreign_keys", "OFF")?;
        // In pages: 256 MiB whatever the store's page size.
        let page: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        self.conn.pragma_update(None, "wal_autocheckpoint", (256 << 20) / page.max(512))?;
        Ok(())
    }

    /// The daemon's connections: while another process holds the database (a `sqlite3`
    /// shell in a long transaction, a backup tool), wait for it as long as it takes instead
    /// of failing after the busy timeout, unless `stop` is set (then the statement fails
    /// with "busy", and the caller hands its work back). Waits are logged every 30 s, and
    /// systemd's watchdog is fed meanwhile: waiting on another process is not a hang.
    /// `stop` is consulted on the thread that runs the statements: call this there.
    pub fn wait_while_busy(&mut self, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Result<()> {
        PATIENCE.with(|p| *p.borrow_mut() = Some(Patience { stop, since: None, told: None }));
        self.conn.busy_handler(Some(patient_busy_handler))?;
        Ok(())
    }

    /// Copies what the WAL holds into the database file, as far as readers allow.
    pub fn checkpoint(&self) -> Result<()> {
        self.conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Frees what this connection's page cache holds (it refills on demand).
    pub fn release_memory(&self) {
        let _ = self.conn.execute_batch("PRAGMA shrink_memory");
    }

    fn migrate(&mut self) -> Result<()> {
        let known = schema::MIGRATIONS.len() as i64;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if found > known {
            return Err(StoreError::TooNew { path: self.path.clone(), found, known });
        }
        for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(found as usize) {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn schema_version(&self) -> Result<i64> {
        Ok(self.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    // ---- ids -------------------------------------------------------------------------

    /// The full id of the one `kind` whose id starts with `prefix`.
    pub fn resolve(&self, kind: IdKind, prefix: &str) -> Result<String> {
        let found = ids::parse_prefix(prefix)?;
        if found != kind {
            return Err(StoreError::Refused(format!("`{prefix}` is a {found} id; expected a {kind} id ({}...)", kind.prefix())));
        }
        let table = table_of(kind);
        let mut stmt = self.conn.prepare_cached(&format!("SELECT id FROM {table} WHERE id GLOB ?1 ORDER BY id LIMIT 11"))?;
        let matches: Vec<String> = stmt.query_map([format!("{prefix}*")], |r| r.get(0))?.collect::<std::result::Result<_, _>>()?;
        match matches.len() {
            0 => Err(StoreError::NotFound { kind, prefix: prefix.to_string() }),
            1 => Ok(matches.into_iter().next().unwrap_or_default()),
            n => {
                let count = if n > 10 { self.count_prefix(table, prefix)? } else { n };
                let mut list = matches.into_iter().take(10).collect::<Vec<_>>().join(", ");
                if count > 10 {
                    list.push_str(", ...");
                }
                Err(StoreError::Ambiguous { kind, prefix: prefix.to_string(), count, list })
            }
        }
    }

    /// The kind and full id of whatever `prefix` names (for `cosmos show`).
    pub fn resolve_any(&self, prefix: &str) -> Result<(IdKind, String)> {
        let kind = ids::parse_prefix(prefix)?;
        Ok((kind, self.resolve(kind, prefix)?))
    }

    fn count_prefix(&self, table: &str, prefix: &str) -> Result<usize> {
        let n: i64 =
            self.conn.query_row(&format!("SELECT count(*) FROM {table} WHERE id GLOB ?1"), [format!("{prefix}*")], |r| r.get(0))?;
        Ok(n as usize)
    }

    // ---- prompts ---------------------------------------------------------------------

    pub fn create_prompt(&mut self, new: NewPrompt) -> Result<Prompt> {
        let now = Timestamp::now().rfc3339();
        let tx = self.conn.transaction()?;
        let prompt = insert_prompt(&tx, new, &now)?;
        tx.commit()?;
        Ok(prompt)
    }

    pub fn prompt(&self, id: &str) -> Result<Prompt> {
        self.conn
            .query_row("SELECT id, name, text, negative_prompt, inputs, created_at FROM prompts WHERE id = ?1", [id], prompt_from_row)
            .optional()?
            .ok_or_else(|| StoreError::NotFound { kind: IdKind::Prompt, prefix: id.to_string() })?
    }

    pub fn list_prompts(&self, limit: Option<usize>) -> Result<Vec<Prompt>> {
        let mut stmt =
            self.conn.prepare("SELECT id, name, text, negative_prompt, inputs, created_at FROM prompts ORDER BY rowid DESC LIMIT ?1")?;
        let rows = stmt.query_map([limit_value(limit)], prompt_from_row)?;
        rows.map(|r| r?).collect()
    }

    // ---- runs ------------------------------------------------------------------------

    /// A new `pending` run of a prompt (`cosmos create run`), with its `created` event.
    pub fn create_run(&mut self, prompt_id: &str, spec: RunSpec) -> Result<Run> {
        let now = Timestamp::now().rfc3339();
        let tx = self.conn.transaction()?;
        let id = ids::new_id(IdKind::Run);
        insert_run(&tx, &id, prompt_id, &spec, RunStatus::Pending, None, None, None, &now)?;
        count_inserted(&tx, RunStatus::Pending, 1)?;
        tx.commit()?;
        self.run(&id)
    }

    pub fn run(&self, id: &str) -> Result<Run> {
        self.conn
            .query_row(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"), [id], run_from_row)
            .optional()?
            .ok_or_else(|| StoreError::NotFound { kind: IdKind::Run, prefix: id.to_string() })?
    }

    /// Runs, newest first, optionally of one status.
    pub fn list_runs(&self, status: Option<RunStatus>, limit: Option<usize>) -> Result<Vec<Run>> {
        let Some(status) = status else {
            let mut stmt = self.conn.prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs ORDER BY rowid DESC LIMIT ?1"))?;
            let rows = stmt.query_map([limit_value(limit)], run_from_row)?;
            return rows.map(|r| r?).collect();
        };
        // Two ways, chosen by the run counts: walking the table newest first meets `limit`
        // runs of a common status soon (the 50 newest of a million queued: 50 rows read),
        // but reads every row to find a rare one; the status index finds the runs of a
        // rare status at once, but must then sort them all (a million queued: slow).
        let counts = self.counts()?;
        let (matching, total) = (counts.of(status), counts.total());
        let scan_reads = match limit {
            Some(l) => (l as u64).saturating_mul(total) / matching.max(1),
            None => total,
        };
        let access = if matching.saturating_mul(4) < scan_reads { "INDEXED BY runs_queue" } else { "NOT INDEXED" };
        let mut stmt =
            self.conn.prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs {access} WHERE status = ?1 ORDER BY rowid DESC LIMIT ?2"))?;
        let rows = stmt.query_map(params![status.as_str(), limit_value(limit)], run_from_row)?;
        rows.map(|r| r?).collect()
    }

    pub fn runs_where(&self, column: RunLink, id: &str) -> Result<Vec<Run>> {
        let col = match column {
            RunLink::Prompt => "prompt_id",
            RunLink::Batch => "batch_id",
            RunLink::Submission => "submission_id",
            RunLink::Parent => "parent_id",
        };
        let mut stmt = self.conn.prepare(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE {col} = ?1 ORDER BY line, rowid"))?;
        let rows = stmt.query_map([id], run_from_row)?;
        rows.map(|r| r?).collect()
    }

    pub fn counts(&self) -> Result<Counts> {
        let mut c = Counts::default();
        // Kept by triggers (schema 4): six rows, however many runs.
        let mut stmt = self.conn.prepare_cached("SELECT status, n FROM run_counts")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let status: String = row.get(0)?;
            let n: i64 = row.get(1)?;
            let n = n as u64;
            match RunStatus::parse(&status) {
                Some(RunStatus::Pending) => c.pending = n,
                Some(RunStatus::Queued) => c.queued = n,
                Some(RunStatus::Running) => c.running = n,
                Some(RunStatus::Completed) => c.completed = n,
                Some(RunStatus::Failed) => c.failed = n,
                Some(RunStatus::Cancelled) => c.cancelled = n,
                None => return Err(StoreError::Corrupt(format!("unknown run status {status:?}"))),
            }
        }
        Ok(c)
    }

    /// Applies `change` to a run, with its event, in one transaction.
    pub fn change(&mut self, run_id: &str, change: Change) -> Result<Run> {
        let now = Timestamp::now().rfc3339();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        apply_change(&tx, run_id, &change, &now)?;
        tx.commit()?;
        self.run(run_id)
    }

    /// Queues `run_ids` as one batch named `name` (`cosmos batch-inference`): all or
    /// nothing. Pending, failed and cancelled runs may be queued; queued, running and
    /// completed ones are refused (a completed run never runs again).
    pub fn queue_batch(&mut self, name: &str, run_ids: &[String]) -> Result<Batch> {
        let now = Timestamp::now().rfc3339();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        check_queueable(&tx, run_ids)?;
        let batch =
            Batch { id: ids::new_id(IdKind::Batch), name: name.to_string(), kind: "batch_inference".into(), created_at: now.clone() };
        tx.execute(
            "INSERT INTO batches (id, name, kind, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![batch.id, batch.name, batch.kind, batch.created_at],
        )?;
        for id in run_ids {
            tx.execute("UPDATE runs SET batch_id = ?1 WHERE id = ?2", params![batch.id, id])?;
            apply_change(&tx, id, &Change::Queue { detail: format!("batch {} ({})", batch.name, batch.id) }, &now)?;
        }
        tx.commit()?;
        Ok(batch)
    }

    /// Replaces a not-yet-started run's spec (its inputs were staged). Refused once the
    /// run is queued or later: the daemon may be reading it.
    pub fn restage(&mut self, run_id: &str, spec: &RunSpec) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE runs SET spec = ?2 WHERE id = ?1 AND status IN ('pending', 'failed', 'cancelled')",
            params![run_id, spec_json(spec)?],
        )?;
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError::Refused(format!("run {run_id} is queued or running; its inputs are already set")))
        }
    }

    /// Queues runs one by one (`cosmos inference`), all or nothing; with `upscale_weight`,
    /// each is followed by an upscale run once it completes.
    pub fn queue_single(&mut self, run_ids: &[String], upscale_weight: Option<f64>) -> Result<()> {
        let now = Timestamp::now().rfc3339();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        check_queueable(&tx, run_ids)?;
        for id in run_ids {
            if let Some(w) = upscale_weight {
                let mut spec = load_run(&tx, id)?.spec;
                spec.upscale_weight = Some(w);
                tx.execute("UPDATE runs SET spec = ?1 WHERE id = ?2", params![spec_json(&spec)?, id])?;
            }
            tx.execute("UPDATE runs SET batch_id = NULL WHERE id = ?1", [id])?;
            apply_change(&tx, id, &Change::Queue { detail: "single inference".into() }, &now)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes runs. A running run is never deleted; a queued one only with `force`.
    pub fn delete_runs(&mut self, run_ids: &[String], force: bool) -> Result<()> {
        let now = Timestamp::now().rfc3339();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for id in run_ids {
            let run = load_run(&tx, id)?;
            check_deletable(&run, force)?;
            delete_run_row(&tx, &run, &now)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes prompts. A prompt with runs needs `force`, which deletes its runs too
    /// (never a running one).
    pub fn delete_prompts(&mut self, prompt_ids: &[String], force: bool) -> Result<()> {
        let now = Timestamp::now().rfc3339();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for pid in prompt_ids {
            let runs = runs_of_prompt(&tx, pid)?;
            if !runs.is_empty() && !force {
                return Err(StoreError::Refused(format!(
                    "prompt {pid} has {} run(s) ({}); delete them first or pass --force to delete them too",
                    runs.len(),
                    runs.iter().map(|r| r.id.as_str()).take(5).collect::<Vec<_>>().join(", ")
                )));
            }
            for run in &runs {
                check_deletable(run, force)?;
                delete_run_row(&tx, run, &now)?;
            }
            let n = tx.execute("DELETE FROM prompts WHERE id = ?1", [pid])?;
            if n == 0 {
                return Err(StoreError::NotFound { kind: IdKind::Prompt, prefix: pid.clone() });
            }
            insert_event(&tx, None, &now, "prompt_deleted", Some(pid))?;
        }
        tx.commit()?;
        Ok(())
    }

    /// A run's events, oldest first. The first, `created`, is the run row itself (its
    /// creation time, status and origin commit with it): a 100,000-line submission does
    /// not also write 100,000 event rows that say nothing the runs do not.
    pub fn events(&self, run_id: &str) -> Result<Vec<Event>> {
        // A live run's creation is read from its row; a deleted run's was written out when
        // it was deleted (see `delete_run_row`), so its trail outlives it.
        let mut out = match self.run(run_id) {
            Ok(run) => vec![creation_event(&run)],
            Err(StoreError::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        let live = !out.is_empty();
        // Stores written before schema 4 also hold a stored `created` row for live runs.
        let mut stmt = self.conn.prepare_cached("SELECT seq, run_id, time, kind, detail FROM events WHERE run_id = ?1 ORDER BY seq")?;
        let rows = stmt.query_map([run_id], |r| {
            Ok(Event { seq: r.get(0)?, run_id: r.get(1)?, time: r.get(2)?, kind: r.get(3)?, detail: r.get(4)? })
        })?;
        for row in rows {
            let event = row?;
            if live && event.kind == "created" {
                continue;
            }
            out.push(event);
        }
        Ok(out)
    }

    // ---- scheduling ------------------------------------------------------------------

    /// The lines of a submission's receipt, in line order (its runs' specs are not read).
    pub fn receipt_lines(&self, submission: &str) -> Result<Vec<ReceiptLine>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT line, name, id, status, error, ran_on FROM runs WHERE submission_id = ?1 AND line IS NOT NULL ORDER BY rowid",
        )?;
        let rows = stmt.query_map([submission], |r| {
            let status: String = r.get(3)?;
            Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?, status, r.get(4)?, r.get(5)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (line, name, run_id, status, error, ran_on) = row?;
            let status = RunStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("unknown run status {status:?}")))?;
            out.push(ReceiptLine { line: line as u64, name, run_id, status, error, ran_on });
        }
        // Read in insertion order, which for a submission is line order (no sort of every
        // row in SQL); a stable sort keeps it so should that ever not hold.
        if !out.is_sorted_by_key(|l| l.line) {
            out.sort_by_key(|l| l.line);
        }
        Ok(out)
    }

    /// What the next-run choice looks at (DESIGN.md section 9): the head of the queue
    /// (highest priority, then oldest) among runs that may start now, and the oldest of
    /// the head's priority whose control set is `prefer` (the loaded model's).
    pub fn queue_candidates(&self, prefer: Option<&str>, now: Timestamp) -> Result<QueueCandidates> {
        self.queue_candidates_for(prefer, now, i64::MAX as usize)
    }

    /// [`Store::queue_candidates`] for a worker of `gpus` GPUs: runs that need a larger
    /// group (an OOM moved them, see [`Store::retry_with_remedy`]) are left to another.
    pub fn queue_candidates_for(&self, prefer: Option<&str>, now: Timestamp, gpus: usize) -> Result<QueueCandidates> {
        let now_text = now.rfc3339();
        let gpus = gpus.min(i64::MAX as usize) as i64;
        let eligible = "status = 'queued' AND (not_before IS NULL OR not_before <= ?1) AND min_gpus <= ?4 \
             AND (parent_id IS NULL OR EXISTS (SELECT 1 FROM runs p WHERE p.id = runs.parent_id AND p.status = 'completed'))";
        let head = self
            .conn
            // ?2 and ?3 belong to the second query; SQLite binds unused numbers as nothing.
            .prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE {eligible} ORDER BY priority DESC, queued_at, rowid LIMIT 1"))?
            .query_row(params![now_text, 0, "", gpus], run_from_row)
            .optional()?
            .transpose()?;
        let same_set = match (&head, prefer) {
            (Some(h), Some(set)) if h.control_set != set => self
                .conn
                .prepare_cached(&format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE {eligible} AND priority = ?2 AND control_set = ?3 ORDER BY queued_at, rowid LIMIT 1"
                ))?
                .query_row(params![now_text, h.priority, set, gpus], run_from_row)
                .optional()?
                .transpose()?,
            _ => None,
        };
        Ok(QueueCandidates { head, same_set })
    }

    /// Back to the queue after a retryable failure, not to start before `not_before`.
    pub fn retry_later(&mut self, run_id: &str, reason: &str, not_before: Timestamp) -> Result<Run> {
        let now = Timestamp::now().rfc3339();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        apply_change(&tx, run_id, &Change::Requeue { reason: reason.to_string() }, &now)?;
        tx.execute("UPDATE runs SET not_before = ?2 WHERE id = ?1", params![run_id, not_before.rfc3339()])?;
        tx.commit()?;
        self.run(run_id)
    }

    /// [`Store::retry_later`] with the memory-saving remedy (JSON) the next attempt uses and
    /// the smallest GPU group it may run on, in the same transaction.
    pub fn retry_with_remedy(&mut self, run_id: &str, reason: &str, not_before: Timestamp, remedy: &Value, min_gpus: usize) -> Result<Run> {
        let now = Timestamp::now().rfc3339();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        apply_change(&tx, run_id, &Change::Requeue { reason: reason.to_string() }, &now)?;
        tx.execute(
            "UPDATE runs SET not_before = ?2, remedy = ?3, min_gpus = ?4 WHERE id = ?1",
            params![run_id, not_before.rfc3339(), remedy.to_string(), min_gpus.min(i64::MAX as usize) as i64],
        )?;
        insert_event(&tx, Some(run_id), &now, "remedy", Some(&remedy.to_string()))?;
        tx.commit()?;
        self.run(run_id)
    }

    /// The remedy an OOM left for the run's next attempt (`None`: none).
    pub fn remedy(&self, run_id: &str) -> Result<Option<Value>> {
        let text: Option<Option<String>> =
            self.conn.query_row("SELECT remedy FROM runs WHERE id = ?1", [run_id], |r| r.get(0)).optional()?;
        Ok(text.flatten().and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// `cosmos cancel`: a pending or queued run is cancelled at once; a running one is
    /// marked, and the daemon stops it. Returns the run's status after the request.
    pub fn request_cancel(&mut self, run_id: &str) -> Result<RunStatus> {
        let now = Timestamp::now().rfc3339();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let run = load_run(&tx, run_id)?;
        let status = match run.status {
            RunStatus::Pending | RunStatus::Queued => {
                apply_change(&tx, run_id, &Change::Cancel { reason: "cancelled by request".into() }, &now)?;
                cancel_children(&tx, run_id, &now)?;
                RunStatus::Cancelled
            }
            RunStatus::Running => {
                tx.execute("UPDATE runs SET cancel_requested = 1, updated_at = ?2 WHERE id = ?1", params![run_id, now])?;
                insert_event(&tx, Some(run_id), &now, "cancel_requested", None)?;
                RunStatus::Running
            }
            other => {
                return Err(StoreError::Refused(format!("run {run_id} is {other}; only pending, queued or running runs can be cancelled")))
            }
        };
        tx.commit()?;
        Ok(status)
    }

    pub fn cancel_requested(&self, run_id: &str) -> Result<bool> {
        let v: Option<i64> = self.conn.query_row("SELECT cancel_requested FROM runs WHERE id = ?1", [run_id], |r| r.get(0)).optional()?;
        Ok(v == Some(1))
    }

    /// Ends a run for good (failed or cancelled) and, in the same transaction, its queued
    /// upscale children with the reason.
    pub fn finish_unsuccessfully(&mut self, run_id: &str, change: Change) -> Result<Run> {
        let now = Timestamp::now().rfc3339();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        apply_change(&tx, run_id, &change, &now)?;
        cancel_children(&tx, run_id, &now)?;
        tx.commit()?;
        self.run(run_id)
    }

    /// Marks a run completed with its outputs and, in the same transaction, creates its
    /// upscale child (queued, waiting on nothing now) when it asked for one.
    pub fn complete(&mut self, run_id: &str, outputs: Value, child: Option<(&str, RunSpec)>) -> Result<Run> {
        let now = Timestamp::now().rfc3339();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // The child first: its submission still has an open run when the parent ends, so
        // the submission's hooks wait for the child.
        if let Some((child_id, spec)) = child {
            let parent = load_run(&tx, run_id)?;
            insert_run(&tx, child_id, &parent.prompt_id, &spec, RunStatus::Queued, None, parent.submission_id.as_deref(), None, &now)?;
            count_inserted(&tx, RunStatus::Queued, 1)?;
            tx.execute("UPDATE runs SET parent_id = ?2 WHERE id = ?1", params![child_id, run_id])?;
        }
        apply_change(&tx, run_id, &Change::Complete { outputs }, &now)?;
        tx.commit()?;
        self.run(run_id)
    }

    /// Pauses or resumes the queue. The time of the pause is kept (`paused_since`): pausing
    /// again keeps the first time, resuming forgets it.
    pub fn set_paused(&mut self, paused: bool) -> Result<()> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO daemon_state (key, value) VALUES ('paused', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [if paused { "1" } else { "0" }],
        )?;
        if paused {
            tx.execute("INSERT OR IGNORE INTO daemon_state (key, value) VALUES ('paused_at', ?1)", [Timestamp::now().rfc3339()])?;
        } else {
            tx.execute("DELETE FROM daemon_state WHERE key = 'paused_at'", [])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// When the queue was paused, while it is (a store paused before this was kept: none).
    pub fn paused_since(&self) -> Result<Option<String>> {
        if !self.paused()? {
            return Ok(None);
        }
        Ok(self.conn.query_row("SELECT value FROM daemon_state WHERE key = 'paused_at'", [], |r| r.get(0)).optional()?)
    }

    pub fn paused(&self) -> Result<bool> {
        let v: Option<String> = self.conn.query_row("SELECT value FROM daemon_state WHERE key = 'paused'", [], |r| r.get(0)).optional()?;
        Ok(v.as_deref() == Some("1"))
    }

    // ---- pruning ------------------------------------------------------------------

    /// Whether a run's files may be pruned at `cutoff`: `Some(true)` for a run that ended
    /// (completed, failed, cancelled) before it, `Some(false)` for any other, `None` for
    /// no such run (deleted).
    pub fn ended_before(&self, run_id: &str, cutoff: &str) -> Result<Option<bool>> {
        let mut stmt = self.conn.prepare_cached("SELECT status, finished_at FROM runs WHERE id = ?1")?;
        let row: Option<(String, Option<String>)> = stmt.query_row([run_id], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        Ok(row.map(|(status, finished)| {
            let ended = RunStatus::parse(&status).is_some_and(RunStatus::is_final);
            ended && finished.is_some_and(|f| f.as_str() < cutoff)
        }))
    }

    /// Whether a submission is over at `cutoff`: every run of it ended before it (or it
    /// has none and was received before it). `None`: no such submission.
    pub fn submission_ended_before(&self, submission: &str, cutoff: &str) -> Result<Option<bool>> {
        let received: Option<String> =
            self.conn.query_row("SELECT received_at FROM submissions WHERE id = ?1", [submission], |r| r.get(0)).optional()?;
        let Some(received) = received else { return Ok(None) };
        let (unfinished, last): (i64, Option<String>) = self.conn.query_row(
            "SELECT count(*) FILTER (WHERE status IN ('pending', 'queued', 'running') OR finished_at IS NULL), max(finished_at) \
             FROM runs WHERE submission_id = ?1",
            [submission],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let last = last.unwrap_or(received);
        Ok(Some(unfinished == 0 && last.as_str() < cutoff))
    }

    /// Calls `f` with the spec (JSON text) of every run whose files a prune at `cutoff`
    /// keeps: not ended, or ended at or after it. Streamed: a million queued runs are not
    /// held at once.
    pub fn for_each_kept_spec(&self, cutoff: &str, mut f: impl FnMut(&str)) -> Result<()> {
        let mut stmt = self.conn.prepare(
            "SELECT spec FROM runs WHERE status IN ('pending', 'queued', 'running') OR finished_at IS NULL OR finished_at >= ?1",
        )?;
        let mut rows = stmt.query([cutoff])?;
        while let Some(row) = rows.next()? {
            let text: String = row.get(0)?;
            f(&text);
        }
        Ok(())
    }

    // ---- batches and submissions ----------------------------------------------------

    pub fn batch(&self, id: &str) -> Result<Batch> {
        self.conn
            .query_row("SELECT id, name, kind, created_at FROM batches WHERE id = ?1", [id], |r| {
                Ok(Batch { id: r.get(0)?, name: r.get(1)?, kind: r.get(2)?, created_at: r.get(3)? })
            })
            .optional()?
            .ok_or_else(|| StoreError::NotFound { kind: IdKind::Batch, prefix: id.to_string() })
    }

    pub fn submission(&self, id: &str) -> Result<Submission> {
        self.conn
            .query_row(&format!("SELECT {SUBMISSION_COLUMNS} FROM submissions WHERE id = ?1"), [id], submission_from_row)
            .optional()?
            .ok_or_else(|| StoreError::NotFound { kind: IdKind::Submission, prefix: id.to_string() })
    }

    /// Submissions of a file of this name and content received at or after `since`
    /// (RFC 3339), oldest first: how `cosmos submit` finds the receipt of what it sent.
    pub fn submissions_of(&self, file: &str, sha256: &str, since: &str) -> Result<Vec<Submission>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {SUBMISSION_COLUMNS} FROM submissions \
             WHERE file = ?1 AND sha256 = ?2 AND received_at >= ?3 ORDER BY received_at, rowid"
        ))?;
        let rows = stmt.query_map(params![file, sha256, since], submission_from_row)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// The earlier accepted submission with this content, if any: what a duplicate repeats.
    /// (An earlier rejection is no reason to refuse a file: what was wrong, a missing
    /// video say, may have been put right since, so such a file is judged again.)
    pub fn accepted_by_sha256(&self, sha256: &str) -> Result<Option<Submission>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {SUBMISSION_COLUMNS} FROM submissions \
                     WHERE sha256 = ?1 AND status = 'accepted' ORDER BY received_at, rowid LIMIT 1"
                ),
                [sha256],
                submission_from_row,
            )
            .optional()?)
    }

    /// Earlier rejections of this content, newest first.
    pub fn rejections_by_sha256(&self, sha256: &str) -> Result<Vec<Submission>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {SUBMISSION_COLUMNS} FROM submissions \
             WHERE sha256 = ?1 AND status = 'rejected' ORDER BY received_at DESC, rowid DESC"
        ))?;
        let rows = stmt.query_map([sha256], submission_from_row)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Starts taking in an accepted submission: its runs are added one by one as the file
    /// is read (memory stays bounded) and become visible together at [`SubmissionWriter::commit`].
    /// Dropping the writer without committing leaves no trace.
    pub fn begin_submission(&mut self, file: &str, sha256: &str, batch_name: &str) -> Result<SubmissionWriter<'_>> {
        self.begin_submission_with_id(&ids::new_id(IdKind::Submission), file, sha256, batch_name)
    }

    /// [`Store::begin_submission`] with an id chosen by the caller: the intake names the
    /// claimed file after it, so that a restart can tell whether its commit happened.
    pub fn begin_submission_with_id(&mut self, id: &str, file: &str, sha256: &str, batch_name: &str) -> Result<SubmissionWriter<'_>> {
        let now = Timestamp::now().rfc3339();
        // The transaction and the writer's two statements share the connection by
        // reference (`&mut self` keeps anyone else off it while the writer lives).
        let conn: &Connection = &self.conn;
        let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
        let batch =
            Batch { id: ids::new_id(IdKind::Batch), name: batch_name.to_string(), kind: "submission".into(), created_at: now.clone() };
        tx.execute(
            "INSERT INTO submissions (id, file, sha256, status, received_at) VALUES (?1, ?2, ?3, 'accepted', ?4)",
            params![id, file, sha256, now],
        )?;
        tx.execute(
            "INSERT INTO batches (id, name, kind, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![batch.id, batch.name, batch.kind, batch.created_at],
        )?;
        let (insert_prompt, insert_run) = (conn.prepare(&insert_prompts_sql(1))?, conn.prepare(&insert_runs_sql(1))?);
        let (insert_prompts, insert_runs) =
            (conn.prepare(&insert_prompts_sql(ROWS_PER_INSERT))?, conn.prepare(&insert_runs_sql(ROWS_PER_INSERT))?);
        Ok(SubmissionWriter { insert_prompt, insert_run, insert_prompts, insert_runs, tx, id: id.to_string(), batch, now, runs: 0 })
    }

    /// Records a submission that was not accepted (duplicate or rejected), in one row.
    pub fn record_submission(&mut self, id: Option<&str>, sub: &Unaccepted<'_>) -> Result<Submission> {
        let now = Timestamp::now().rfc3339();
        let id = id.map_or_else(|| ids::new_id(IdKind::Submission), str::to_string);
        self.conn.execute(
            "INSERT INTO submissions (id, file, sha256, status, duplicate_of, problems, problems_digest, rejected_before, received_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                id,
                sub.file,
                sub.sha256,
                sub.status.as_str(),
                sub.duplicate_of,
                sub.problems as i64,
                sub.problems_digest,
                sub.rejected_before,
                now
            ],
        )?;
        self.submission(&id)
    }
}

/// Which link `runs_where` follows.
#[derive(Debug, Clone, Copy)]
pub enum RunLink {
    Prompt,
    Batch,
    Submission,
    Parent,
}

/// An accepted submission being taken in; see [`Store::begin_submission`].
pub struct SubmissionWriter<'c> {
    // Prepared once per submission, not looked up per row; declared before `tx` so that
    // they are finalized before it ends.
    insert_prompt: Statement<'c>,
    insert_run: Statement<'c>,
    insert_prompts: Statement<'c>,
    insert_runs: Statement<'c>,
    tx: Transaction<'c>,
    id: String,
    batch: Batch,
    now: String,
    runs: u64,
}

impl SubmissionWriter<'_> {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Adds one job as a prompt and a queued run; returns the run id.
    pub fn add(&mut self, job: &Job) -> Result<String> {
        let run_id = ids::new_id(IdKind::Run);
        let mut one = PreparedRuns::default();
        one.push(&run_id, job)?;
        self.add_prepared(&one)?;
        Ok(run_id)
    }

    /// Adds jobs prepared (ids drawn, JSON encoded) by [`PreparedRuns::push`], perhaps on
    /// another thread: all that is left here is the inserts.
    pub fn add_prepared(&mut self, batch: &PreparedRuns) -> Result<()> {
        let mut chunks = batch.rows.chunks_exact(ROWS_PER_INSERT);
        for chunk in &mut chunks {
            bind_rows(&mut self.insert_prompts, &mut self.insert_runs, &batch.text, chunk, &self.batch.id, &self.id, &self.now)?;
        }
        for row in chunks.remainder() {
            bind_rows(
                &mut self.insert_prompt,
                &mut self.insert_run,
                &batch.text,
                std::slice::from_ref(row),
                &self.batch.id,
                &self.id,
                &self.now,
            )?;
        }
        self.runs += batch.rows.len() as u64;
        Ok(())
    }

    /// Notes the earlier rejection of the same content that this acceptance follows.
    pub fn set_rejected_before(&mut self, earlier: &str) -> Result<()> {
        self.tx.execute("UPDATE submissions SET rejected_before = ?1 WHERE id = ?2", params![earlier, self.id])?;
        Ok(())
    }

    pub fn commit(self) -> Result<(Submission, Batch)> {
        let SubmissionWriter { insert_prompt, insert_run, insert_prompts, insert_runs, tx, id, batch, runs, .. } = self;
        drop((insert_prompt, insert_run, insert_prompts, insert_runs));
        // Every run it inserted is queued, so open (`open_runs`, migration 8).
        tx.execute("UPDATE submissions SET runs = ?1, open_runs = ?1 WHERE id = ?2", params![runs as i64, id])?;
        count_inserted(&tx, RunStatus::Queued, runs)?;
        let sub = tx.query_row(&format!("SELECT {SUBMISSION_COLUMNS} FROM submissions WHERE id = ?1"), [&id], submission_from_row)?;
        tx.commit()?;
        Ok((sub, batch))
    }
}

/// Jobs of a submission as the prompt and run rows they become. Building them is the
/// costly part of a line (ids, JSON) and needs no connection: intake builds them on the
/// thread that parses, while the store's thread only inserts. Every text of a batch lives
/// in one buffer: a row is a few ranges, not eight allocations to make and free.
#[derive(Debug, Default)]
pub struct PreparedRuns {
    text: String,
    rows: Vec<PreparedRow>,
    /// Where a row's JSON is encoded before it joins `text`: reused, so that encoding a row
    /// allocates nothing once the batch has warmed up.
    scratch: Vec<u8>,
}

#[derive(Debug)]
struct PreparedRow {
    run_id: Range<usize>,
    prompt_id: Range<usize>,
    name: Option<Range<usize>>,
    text: Range<usize>,
    negative_prompt: Option<Range<usize>>,
    inputs: Range<usize>,
    spec: Range<usize>,
    control_set: Range<usize>,
    priority: i64,
    line: u64,
}

impl PreparedRuns {
    /// Adds `job` as the run `run_id` (and a new prompt).
    pub fn push(&mut self, run_id: &str, job: &Job) -> Result<()> {
        let spec = &job.spec;
        let scratch = &mut self.scratch;
        let buf = &mut self.text;
        let mut put = |text: &str| {
            let start = buf.len();
            buf.push_str(text);
            start..buf.len()
        };
        let row = PreparedRow {
            run_id: put(run_id),
            prompt_id: put(&ids::new_id(IdKind::Prompt)),
            name: spec.name.as_deref().map(&mut put),
            text: put(&spec.prompt),
            negative_prompt: spec.negative_prompt.as_deref().map(&mut put),
            inputs: put(encode_json(scratch, &InputsOf::of(spec))?),
            spec: put(encode_json(scratch, spec)?),
            control_set: {
                let start = buf.len();
                crate::spec::push_control_set(buf, spec.controls.keys().copied());
                start..buf.len()
            },
            priority: spec.priority.into(),
            line: job.line,
        };
        self.rows.push(row);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Empties the batch, keeping its memory for the next.
    pub fn clear(&mut self) {
        self.text.clear();
        self.rows.clear();
    }
}

/// The [`PromptInputs`] of a spec, borrowed (no path copied); it encodes to the same JSON.
#[derive(Serialize)]
struct InputsOf<'a> {
    color: &'a Path,
    #[serde(skip_serializing_if = "Option::is_none")]
    depth: Option<&'a Path>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seg: Option<&'a Path>,
    #[serde(skip_serializing_if = "Option::is_none")]
    edge: Option<&'a Path>,
}

impl<'a> InputsOf<'a> {
    fn of(spec: &'a RunSpec) -> InputsOf<'a> {
        let file = |h: Hint| spec.controls.get(&h).and_then(|c| c.input.as_deref());
        InputsOf { color: &spec.visual_input, depth: file(Hint::Depth), seg: file(Hint::Seg), edge: file(Hint::Edge) }
    }
}

/// `value` as JSON in `scratch` (emptied first), as it is stored.
fn encode_json<'s>(scratch: &'s mut Vec<u8>, value: &impl serde::Serialize) -> Result<&'s str> {
    let encode = |e: String| StoreError::Corrupt(format!("cannot encode a run spec: {e}"));
    scratch.clear();
    serde_json::to_writer(&mut *scratch, value).map_err(|e| encode(e.to_string()))?;
    std::str::from_utf8(scratch).map_err(|e| encode(e.to_string()))
}

/// Rows per multi-row INSERT of a submission: one statement execution costs about as much
/// as the rows it writes, so 32 rows a statement nearly halve a large submission's inserts.
const ROWS_PER_INSERT: usize = 32;

fn insert_prompts_sql(rows: usize) -> String {
    let values: Vec<String> =
        (0..rows).map(|i| format!("(?{}, ?{}, ?{}, ?{}, ?{}, ?1)", 6 * i + 2, 6 * i + 3, 6 * i + 4, 6 * i + 5, 6 * i + 6)).collect();
    // OR ROLLBACK: a conflict (a fresh random id taken) ends the whole transaction anyway,
    // and SQLite then needs no statement journal for the 32-row statement (it was a tenth of
    // the time of a large submission's inserts).
    format!("INSERT OR ROLLBACK INTO prompts (id, name, text, negative_prompt, inputs, created_at) VALUES {}", values.join(", "))
}

/// Parameters 1-3: the time, batch and submission shared by all rows; then 7 per row.
fn insert_runs_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|i| {
            let p = |k: usize| 7 * i + 3 + k;
            format!("(?{}, ?{}, ?{}, 'queued', ?{}, ?{}, ?{}, ?2, ?3, ?{}, ?1, ?1, ?1)", p(1), p(2), p(3), p(4), p(5), p(6), p(7))
        })
        .collect();
    format!(
        "INSERT OR ROLLBACK INTO runs (id, prompt_id, name, status, spec, control_set, priority, batch_id, submission_id, line, \
         created_at, queued_at, updated_at) VALUES {}",
        values.join(", ")
    )
}

/// Binds `rows` (ranges into `text`) to the prompt and run inserts made for that many
/// rows, and runs both.
fn bind_rows(
    prompts: &mut Statement<'_>,
    runs: &mut Statement<'_>,
    text: &str,
    rows: &[PreparedRow],
    batch: &str,
    submission: &str,
    now: &str,
) -> Result<()> {
    let at = |r: &Range<usize>| &text[r.clone()]; // ok: the ranges were made when `text` was written
    prompts.raw_bind_parameter(1, now)?;
    runs.raw_bind_parameter(1, now)?;
    runs.raw_bind_parameter(2, batch)?;
    runs.raw_bind_parameter(3, submission)?;
    for (i, p) in rows.iter().enumerate() {
        let (q, r) = (6 * i + 1, 7 * i + 3);
        let name = p.name.as_ref().map(at);
        prompts.raw_bind_parameter(q + 1, at(&p.prompt_id))?;
        prompts.raw_bind_parameter(q + 2, name)?;
        prompts.raw_bind_parameter(q + 3, at(&p.text))?;
        prompts.raw_bind_parameter(q + 4, p.negative_prompt.as_ref().map(at))?;
        prompts.raw_bind_parameter(q + 5, at(&p.inputs))?;
        runs.raw_bind_parameter(r + 1, at(&p.run_id))?;
        runs.raw_bind_parameter(r + 2, at(&p.prompt_id))?;
        runs.raw_bind_parameter(r + 3, name)?;
        runs.raw_bind_parameter(r + 4, at(&p.spec))?;
        runs.raw_bind_parameter(r + 5, at(&p.control_set))?;
        runs.raw_bind_parameter(r + 6, p.priority)?;
        runs.raw_bind_parameter(r + 7, p.line as i64)?;
    }
    prompts.raw_execute()?;
    runs.raw_execute()?;
    Ok(())
}

/// The prompt videos a job names: its input video and the control videos it gives (what
/// [`InputsOf`] encodes, borrowed).
#[cfg(test)]
fn inputs_of(spec: &RunSpec) -> PromptInputs {
    let file = |h: Hint| spec.controls.get(&h).and_then(|c| c.input.clone());
    PromptInputs { color: spec.visual_input.clone(), depth: file(Hint::Depth), seg: file(Hint::Seg), edge: file(Hint::Edge) }
}

fn table_of(kind: IdKind) -> &'static str {
    match kind {
        IdKind::Prompt => "prompts",
        IdKind::Run => "runs",
        IdKind::Batch => "batches",
        IdKind::Submission => "submissions",
    }
}

fn limit_value(limit: Option<usize>) -> i64 {
    limit.map_or(-1, |l| l.min(i64::MAX as usize) as i64)
}

fn spec_json(spec: &RunSpec) -> Result<String> {
    serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(format!("cannot encode a run spec: {e}")))
}

fn insert_prompt(conn: &Connection, new: NewPrompt, now: &str) -> Result<Prompt> {
    let id = ids::new_id(IdKind::Prompt);
    let inputs = serde_json::to_string(&new.inputs).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    conn.prepare_cached("INSERT INTO prompts (id, name, text, negative_prompt, inputs, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?
        .execute(params![id, new.name, new.text, new.negative_prompt, inputs, now])?;
    Ok(Prompt {
        id,
        name: new.name,
        prompt: new.text,
        negative_prompt: new.negative_prompt,
        inputs: new.inputs,
        created_at: now.to_string(),
    })
}

#[allow(clippy::too_many_arguments)]
fn insert_run(
    conn: &Connection,
    id: &str,
    prompt_id: &str,
    spec: &RunSpec,
    status: RunStatus,
    batch_id: Option<&str>,
    submission_id: Option<&str>,
    line: Option<u64>,
    now: &str,
) -> Result<()> {
    let queued_at = (status == RunStatus::Queued).then_some(now);
    conn.prepare_cached(
        "INSERT INTO runs (id, prompt_id, name, status, spec, control_set, priority, batch_id, submission_id, line, \
         created_at, queued_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?11)",
    )?
    .execute(params![
        id,
        prompt_id,
        spec.name,
        status.as_str(),
        spec_json(spec)?,
        spec.control_set(),
        spec.priority,
        batch_id,
        submission_id,
        line.map(|l| l as i64),
        now,
        queued_at,
    ])?;
    if let Some(sb) = submission_id.filter(|_| !status.is_final()) {
        // Inserts are not counted by trigger (see migration 8).
        conn.prepare_cached("UPDATE submissions SET open_runs = open_runs + 1 WHERE id = ?1")?.execute([sb])?;
    }
    Ok(())
}

/// Counts `n` new runs of `status` in `run_counts` (inserts are not counted by trigger).
fn count_inserted(conn: &Connection, status: RunStatus, n: u64) -> Result<()> {
    conn.prepare_cached("UPDATE run_counts SET n = n + ?2 WHERE status = ?1")?.execute(params![status.as_str(), n as i64])?;
    Ok(())
}

fn insert_event(conn: &Connection, run_id: Option<&str>, now: &str, kind: &str, detail: Option<&str>) -> Result<()> {
    conn.prepare_cached("INSERT INTO events (run_id, time, kind, detail) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![run_id, now, kind, detail])?;
    Ok(())
}

fn load_run(conn: &Connection, id: &str) -> Result<Run> {
    conn.query_row(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"), [id], run_from_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound { kind: IdKind::Run, prefix: id.to_string() })?
}

fn runs_of_prompt(conn: &Connection, prompt_id: &str) -> Result<Vec<Run>> {
    let mut stmt = conn.prepare(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE prompt_id = ?1"))?;
    let rows = stmt.query_map([prompt_id], run_from_row)?;
    rows.map(|r| r?).collect()
}

fn check_queueable(conn: &Connection, run_ids: &[String]) -> Result<()> {
    let mut problems = Vec::new();
    for (i, id) in run_ids.iter().enumerate() {
        if run_ids[..i].contains(id) {
            problems.push(format!("{id} is named twice"));
            continue;
        }
        let run = load_run(conn, id)?;
        match run.status {
            RunStatus::Pending | RunStatus::Failed | RunStatus::Cancelled => {}
            RunStatus::Completed => problems.push(format!("{id} is completed; a finished run never runs again (create a new run)")),
            other => problems.push(format!("{id} is already {other}")),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Refused(format!("nothing was queued: {}", problems.join("; "))))
    }
}

/// A run that will never complete takes its queued upscale children with it: failed when
/// it failed, cancelled when it was cancelled, with that reason.
fn cancel_children(conn: &Connection, parent_id: &str, now: &str) -> Result<()> {
    let parent_status: String = conn.query_row("SELECT status FROM runs WHERE id = ?1", [parent_id], |r| r.get(0))?;
    let children: Vec<String> = {
        let mut stmt = conn.prepare("SELECT id FROM runs WHERE parent_id = ?1 AND status IN ('pending', 'queued')")?;
        let rows = stmt.query_map([parent_id], |r| r.get(0))?;
        rows.collect::<std::result::Result<_, _>>()?
    };
    for child in children {
        let reason = format!("its parent {parent_id} {parent_status}");
        let change = if parent_status == "failed" { Change::Fail { error: reason } } else { Change::Cancel { reason } };
        apply_change(conn, &child, &change, now)?;
    }
    Ok(())
}

fn check_deletable(run: &Run, force: bool) -> Result<()> {
    match run.status {
        RunStatus::Running => {
            Err(StoreError::Refused(format!("run {} is running; a running run is never deleted (cancel it first)", run.id)))
        }
        RunStatus::Queued if !force => Err(StoreError::Refused(format!("run {} is queued; cancel it first or pass --force", run.id))),
        _ => Ok(()),
    }
}

fn delete_run_row(conn: &Connection, run: &Run, now: &str) -> Result<()> {
    conn.execute("DELETE FROM runs WHERE id = ?1", [&run.id])?;
    // Creation is not stored while the run exists (it is read from the row); keep it now.
    let created = creation_event(run);
    insert_event(conn, Some(&run.id), &created.time, "created", created.detail.as_deref())?;
    insert_event(conn, Some(&run.id), now, "deleted", Some(&format!("was {}", run.status)))
}

/// What the busy handler of this thread's patient connection consults (see
/// [`Store::wait_while_busy`]); SQLite's handler is a plain function, so it lives here.
struct Patience {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// When the current wait began (reset by the first retry of the next one).
    since: Option<std::time::Instant>,
    /// When the wait was last logged.
    told: Option<std::time::Instant>,
}

thread_local! {
    static PATIENCE: std::cell::RefCell<Option<Patience>> = const { std::cell::RefCell::new(None) };
}

/// How long a patient connection sleeps between tries, by try number: soon at first (most
/// holds are short), then every 100 ms.
fn busy_sleep(tries: i32) -> Duration {
    Duration::from_millis(match tries {
        0..=2 => 1,
        3..=5 => 5,
        6..=9 => 20,
        _ => 100,
    })
}

fn patient_busy_handler(tries: i32) -> bool {
    let now = std::time::Instant::now();
    let keep_waiting = PATIENCE.with(|p| {
        let mut p = p.borrow_mut();
        let Some(p) = p.as_mut() else {
            // Not a patient thread: SQLite's default timeout, about 10 s.
            return tries < 110;
        };
        if p.stop.load(std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        if tries == 0 || p.since.is_none() {
            p.since = Some(now);
            p.told = None;
        }
        let waited = p.since.map_or(Duration::ZERO, |s| now.duration_since(s));
        if waited >= Duration::from_secs(10) && p.told.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(30)) {
            p.told = Some(now);
            tracing::warn!(waited_s = waited.as_secs(), "the store is held by another process; waiting for it (nothing is lost meanwhile)");
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }
        true
    });
    if keep_waiting {
        std::thread::sleep(busy_sleep(tries));
    }
    keep_waiting
}

/// Process-wide SQLite settings, made once before the first connection: no memory
/// statistics (SQLite otherwise takes a global mutex around every allocation it makes;
/// we never read them).
fn configure_sqlite() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: sqlite3_config is only valid before SQLite initialises, which the `Once`
        // and the call's place (before the process's first `Connection::open`) ensure; if
        // it were already initialised the call returns SQLITE_MISUSE and changes nothing.
        unsafe {
            rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, 0 as std::os::raw::c_int);
        }
    });
}

/// The creation event of a run, derived from its row: intake of a large submission would
/// otherwise write one event row per run, doubling its inserts.
fn creation_event(run: &Run) -> Event {
    let status = if run.queued_at.as_deref() == Some(run.created_at.as_str()) { RunStatus::Queued } else { RunStatus::Pending };
    let detail = match (&run.submission_id, run.line, &run.parent_id) {
        (Some(s), Some(line), _) => format!("{status} from submission {s} line {line}"),
        (_, _, Some(parent)) => format!("{status}: the upscale of {parent}"),
        _ => format!("{status} for prompt {}", run.prompt_id),
    };
    Event { seq: 0, run_id: Some(run.id.clone()), time: run.created_at.clone(), kind: "created".into(), detail: Some(detail) }
}

/// The one place a run's status changes: checks the transition, updates the row, appends
/// the event. Runs inside the caller's transaction.
fn apply_change(conn: &Connection, run_id: &str, change: &Change, now: &str) -> Result<RunStatus> {
    let from: String = conn
        .query_row("SELECT status FROM runs WHERE id = ?1", [run_id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::NotFound { kind: IdKind::Run, prefix: run_id.to_string() })?;
    let from = RunStatus::parse(&from).ok_or_else(|| StoreError::Corrupt(format!("run {run_id} has status {from:?}")))?;
    let to = change.target();
    if !from.can_become(to) {
        return Err(StoreError::IllegalTransition { id: run_id.to_string(), from, to });
    }
    let (sql, detail): (&str, String) = match change {
        Change::Queue { detail } => (
            "UPDATE runs SET status = ?2, queued_at = ?3, error = NULL, finished_at = NULL, not_before = NULL, \
             cancel_requested = 0, updated_at = ?3 WHERE id = ?1",
            detail.clone(),
        ),
        Change::Requeue { reason } => (
            "UPDATE runs SET status = ?2, queued_at = coalesce(queued_at, ?3), error = ?4, finished_at = NULL, \
             cancel_requested = 0, updated_at = ?3 WHERE id = ?1",
            reason.clone(),
        ),
        Change::Start => (
            "UPDATE runs SET status = ?2, started_at = ?3, attempts = attempts + 1, not_before = NULL, \
             cancel_requested = 0, updated_at = ?3 WHERE id = ?1",
            String::new(),
        ),
        Change::Complete { outputs } => {
            conn.execute("UPDATE runs SET outputs = ?2 WHERE id = ?1", params![run_id, outputs.to_string()])?;
            ("UPDATE runs SET status = ?2, finished_at = ?3, error = NULL, updated_at = ?3 WHERE id = ?1", String::new())
        }
        Change::Fail { error } => {
            ("UPDATE runs SET status = ?2, finished_at = ?3, error = ?4, updated_at = ?3 WHERE id = ?1", error.clone())
        }
        Change::Cancel { reason } => {
            ("UPDATE runs SET status = ?2, finished_at = ?3, error = ?4, updated_at = ?3 WHERE id = ?1", reason.clone())
        }
    };
    let needs_detail = sql.contains("?4");
    let n = if needs_detail {
        conn.execute(sql, params![run_id, to.as_str(), now, detail])?
    } else {
        conn.execute(sql, params![run_id, to.as_str(), now])?
    };
    if n != 1 {
        return Err(StoreError::Corrupt(format!("run {run_id} changed under us")));
    }
    let detail = if detail.is_empty() { format!("from {from}") } else { format!("from {from}: {detail}") };
    insert_event(conn, Some(run_id), now, to.as_str(), Some(&detail))?;
    owed::owe_on_end(conn, run_id, to, now)?;
    Ok(from)
}

fn prompt_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Prompt>> {
    let inputs: String = r.get(4)?;
    let id: String = r.get(0)?;
    let inputs = match serde_json::from_str(&inputs) {
        Ok(i) => i,
        Err(e) => return Ok(Err(StoreError::Corrupt(format!("prompt {id} inputs: {e}")))),
    };
    Ok(Ok(Prompt { id, name: r.get(1)?, prompt: r.get(2)?, negative_prompt: r.get(3)?, inputs, created_at: r.get(5)? }))
}

fn run_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Run>> {
    let id: String = r.get(0)?;
    let status: String = r.get(3)?;
    let Some(status) = RunStatus::parse(&status) else {
        return Ok(Err(StoreError::Corrupt(format!("run {id} has status {status:?}"))));
    };
    let spec: String = r.get(4)?;
    let spec = match serde_json::from_str(&spec) {
        Ok(s) => s,
        Err(e) => return Ok(Err(StoreError::Corrupt(format!("run {id} spec: {e}")))),
    };
    let outputs: Option<String> = r.get(12)?;
    let outputs = match outputs.map(|o| serde_json::from_str(&o)).transpose() {
        Ok(o) => o,
        Err(e) => return Ok(Err(StoreError::Corrupt(format!("run {id} outputs: {e}")))),
    };
    let line: Option<i64> = r.get(9)?;
    let attempts: i64 = r.get(11)?;
    Ok(Ok(Run {
        id,
        prompt_id: r.get(1)?,
        name: r.get(2)?,
        status,
        spec,
        control_set: r.get(5)?,
        priority: r.get(6)?,
        batch_id: r.get(7)?,
        submission_id: r.get(8)?,
        line: line.map(|l| l as u64),
        parent_id: r.get(10)?,
        attempts: attempts as u32,
        outputs,
        error: r.get(13)?,
        created_at: r.get(14)?,
        queued_at: r.get(15)?,
        started_at: r.get(16)?,
        finished_at: r.get(17)?,
        updated_at: r.get(18)?,
    }))
}

fn submission_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Submission> {
    let runs: i64 = r.get(5)?;
    let problems: i64 = r.get(6)?;
    Ok(Submission {
        id: r.get(0)?,
        file: r.get(1)?,
        sha256: r.get(2)?,
        status: {
            let text: String = r.get(3)?;
            SubmissionStatus::parse(&text).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    3,
                    rusqlite::types::Type::Text,
                    format!("unknown submission status {text:?}").into(),
                )
            })?
        },
        duplicate_of: r.get(4)?,
        runs: runs as u64,
        problems: problems as u64,
        received_at: r.get(7)?,
        problems_digest: r.get(8)?,
        rejected_before: r.get(9)?,
    })
}

/// Makes the store's files (`cosmos.db`, `-wal`, `-shm`) group-writable when their folder is
/// setgid (a shared installation) and this process owns them: SQLite creates the database
/// 0644 whatever the umask, and the `-wal` and `-shm` it makes later copy the database's mode,
/// so one chmod here is what lets every member of the group open the store read-write.
fn share_store_files(db: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let folder = match db.parent() {
        Some(f) if !f.as_os_str().is_empty() => f,
        _ => Path::new("."),
    };
    let setgid = std::fs::metadata(folder).is_ok_and(|m| m.mode() & libc::S_ISGID != 0);
    if !setgid {
        return;
    }
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    for suffix in ["", "-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let path = PathBuf::from(name);
        if let Ok(m) = std::fs::metadata(&path) {
            if m.uid() == me && m.mode() & 0o060 != 0o060 {
                // Best effort: a member who cannot chmod still reads; the owner fixes it at its next open.
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode((m.mode() & 0o7777) | 0o060));
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod share_tests {
    use super::share_store_files;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn store_files_become_group_writable_only_in_a_setgid_folder() {
        let dir = tempfile::tempdir().unwrap();
        for (setgid, expected) in [(false, 0o644), (true, 0o664)] {
            let folder = dir.path().join(format!("s{setgid}"));
            std::fs::create_dir(&folder).unwrap();
            let mode = if setgid { 0o2775 } else { 0o775 };
            std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(mode)).unwrap();
            let db = folder.join("cosmos.db");
            for f in [db.clone(), folder.join("cosmos.db-wal")] {
                std::fs::write(&f, b"").unwrap();
                std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
            }
            share_store_files(&db);
            for f in [db.clone(), folder.join("cosmos.db-wal")] {
                assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, expected, "{} (setgid {setgid})", f.display());
            }
        }
    }
}
