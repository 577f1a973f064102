//! The runs of the shared queue: enqueue, claim, renew, finish under a token, the reaper,
//! and what `cosmos` needs across hosts (cancel, retry, list, show). One transaction each.

use super::conn::{Failure, OpResult};
use super::{status_from_db, ClusterError, PgQueue, Result};
use crate::policy;
use crate::spec::RunSpec;
use crate::store::{Counts, RunStatus};
use crate::time::Timestamp;
use postgres::{GenericClient, Row};
use serde_json::Value;
use std::fmt;
use std::time::{Duration, SystemTime};

/// The channel `LISTEN`ers are told on when a run becomes claimable.
pub(super) const CHANNEL: &str = "cosmos_queue";

/// A fencing token: strictly increasing over every claim of every run on every host. Only
/// the current token of a run may renew, finish or hand it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Token(pub i64);

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A run to put in the queue. `id` is the key: enqueueing it again changes nothing.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    pub id: &'a str,
    /// Its control set and priority are the queue's keys.
    pub spec: &'a RunSpec,
    /// When the host that took it in created it (its own clock; informative).
    pub created_at: Timestamp,
    /// An upscale run waits until this run completed.
    pub parent_id: Option<&'a str>,
    /// The origin host's own record of the run (prompt, batch, submission, line), carried
    /// so that whichever host runs it writes the manifest the origin would have.
    pub home: Option<&'a Value>,
}

/// What [`PgQueue::enqueue`] did with one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Added,
    /// The id was there already (from this host or another): nothing changed.
    AlreadyThere,
}

/// Who holds a running run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Holder {
    pub host: String,
    pub slot: String,
    pub token: Token,
    /// The database's clock.
    pub expires_at: Timestamp,
}

/// A run as the shared queue holds it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QueueRun {
    pub id: String,
    pub status: RunStatus,
    pub priority: i32,
    pub control_set: String,
    pub spec: RunSpec,
    /// The host whose inbox took it in: its outbox gets the run's folder.
    pub origin_host: String,
    pub parent_id: Option<String>,
    pub attempts: u32,
    pub cancel_requested: bool,
    /// Set while running.
    pub holder: Option<Holder>,
    /// The host of the latest attempt.
    pub ran_on: Option<String>,
    pub outputs: Option<Value>,
    pub error: Option<String>,
    pub created_at: Timestamp,
    pub queued_at: Timestamp,
    pub not_before: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub updated_at: Timestamp,
    /// See [`NewRun::home`].
    pub home: Option<Value>,
    /// What an OOM left for the next attempt (the scheduler's `policy::Remedy` as JSON).
    pub remedy: Option<Value>,
    /// When the origin host took the ended run into its outbox and store.
    pub delivered_at: Option<Timestamp>,
}

/// A slot asking for work.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    pub slot: &'a str,
    /// The control set its worker has loaded, if any.
    pub loaded: Option<&'a str>,
    /// `scheduler.max_affinity_wait`.
    pub max_affinity_wait: Duration,
    /// `cluster.lease`.
    pub lease: Duration,
}

/// A claimed run under its lease. The holder renews before `lease` has passed (a third of
/// it is the usual pace) and stops the run where it could not: its result would be refused.
#[derive(Debug, Clone)]
pub struct Claim {
    pub run: QueueRun,
    pub token: Token,
    pub lease: Duration,
}

/// How an attempt ended, told under its token.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done; an upscale child (`id`, spec), if any, enters the queue in the same transaction.
    Completed { outputs: Value, child: Option<Box<(String, RunSpec)>> },
    /// Failed for good; queued children fail with it.
    Failed { error: String },
    /// Stopped on a cancel request; queued children are cancelled with it.
    Cancelled,
    /// A retryable failure: back to the queue, not to start before `after` has passed.
    Retry { reason: String, after: Duration },
    /// Given back unfinished (the daemon stops): queued again at once, the attempt not counted.
    /// Requeued runs keep their place by age, as in the SQLite store.
    HandBack { reason: String },
}

/// One run the reaper took from a lapsed lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Reaped {
    pub run_id: String,
    pub host: String,
    pub slot: String,
    pub token: Token,
    /// `Some(wait)`: queued again after `wait`; `None`: failed (attempts used up).
    pub requeued_after: Option<Duration>,
}

/// One line of a run's history in the shared queue.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QueueEvent {
    pub seq: i64,
    pub time: Timestamp,
    pub host: String,
    pub kind: String,
    pub detail: Option<String>,
}

const COLUMNS: &str = "id, status, priority, control_set, spec, origin_host, parent_id, created_at, queued_at, not_before, attempts, \
     cancel_requested, lease_host, lease_slot, lease_token, lease_expires, ran_on, outputs, error, started_at, finished_at, updated_at, home, remedy, delivered_at";

/// Runs that may start now: queued, past their backoff, their parent (if any) completed.
const ELIGIBLE: &str = "r.status = 'queued' AND (r.not_before IS NULL OR r.not_before <= now()) \
     AND (r.parent_id IS NULL OR EXISTS (SELECT 1 FROM cosmos_runs p WHERE p.id = r.parent_id AND p.status = 'completed'))";

impl PgQueue {
    /// Puts runs in the queue, all or none; an id already there is left as it is.
    pub fn enqueue(&mut self, runs: &[NewRun<'_>]) -> Result<Vec<Enqueued>> {
        let specs = runs
            .iter()
            .map(|r| serde_json::to_value(r.spec).map_err(|e| ClusterError::Corrupt(format!("run {}: spec does not serialise: {e}", r.id))))
            .collect::<Result<Vec<Value>>>()?;
        let host = self.host_id.clone();
        self.conn.run("enqueue runs", |c| {
            let mut tx = c.transaction()?;
            let insert = tx.prepare(
                "INSERT INTO cosmos_runs (id, status, priority, control_set, spec, origin_host, parent_id, created_at, queued_at, updated_at, home) \
                 VALUES ($1, 'queued', $2, $3, $4, $5, $6, $7, now(), now(), $8) ON CONFLICT (id) DO NOTHING",
            )?;
            let mut out = Vec::with_capacity(runs.len());
            for (run, spec) in runs.iter().zip(&specs) {
                let created = to_system(run.created_at);
                if let Some(parent) = run.parent_id {
                    // Earlier runs of this same call are visible here: a parent may come first.
                    if tx.query_opt("SELECT 1 FROM cosmos_runs WHERE id = $1", &[&parent])?.is_none() {
                        return Err(Failure::Queue(ClusterError::Refused(format!(
                            "run {} waits on run {parent}, which is not in the shared queue: enqueue the parent first",
                            run.id
                        ))));
                    }
                }
                let set = run.spec.control_set();
                let n = tx.execute(&insert, &[&run.id, &run.spec.priority, &set, spec, &host, &run.parent_id, &created, &run.home])?;
                if n == 1 {
                    event(&mut tx, run.id, &host, "enqueued", None)?;
                }
                out.push(if n == 1 { Enqueued::Added } else { Enqueued::AlreadyThere });
            }
            if out.contains(&Enqueued::Added) {
                notify(&mut tx)?;
            }
            tx.commit()?;
            Ok(out)
        })
    }

    /// The next run for a slot, by the rules of [`policy::choose_next`]: the highest
    /// priority, then the loaded control set (unless the oldest run of that priority has
    /// waited longer than `max_affinity_wait`), then age. Runs other slots are claiming
    /// right now are skipped, not waited for. `None`: nothing may start.
    pub fn claim(&mut self, req: &ClaimRequest<'_>) -> Result<Option<Claim>> {
        let host = self.host_id.clone();
        let (wait, lease) = (seconds(req.max_affinity_wait), seconds(req.lease));
        let pick = format!(
            "WITH head AS (SELECT r.priority, r.queued_at FROM cosmos_runs r WHERE {ELIGIBLE} ORDER BY r.priority DESC, r.queued_at, r.id LIMIT 1) \
             SELECT r.id FROM cosmos_runs r CROSS JOIN head h WHERE {ELIGIBLE} \
             ORDER BY r.priority DESC, \
                 COALESCE(r.priority = h.priority AND r.control_set = $1 AND h.queued_at >= now() - $2::float8 * interval '1 second', false) DESC, \
                 r.queued_at, r.id \
             LIMIT 1 FOR UPDATE OF r SKIP LOCKED"
        );
        self.conn.run("claim a run", |c| {
            let mut tx = c.transaction()?;
            let Some(row) = tx.query_opt(&pick, &[&req.loaded, &wait])? else {
                return Ok(None);
            };
            let id: String = row.try_get(0)?;
            let row = tx.query_one(
                &format!(
                    "UPDATE cosmos_runs SET status = 'running', attempts = attempts + 1, lease_host = $2, lease_slot = $3, \
                     lease_token = nextval('cosmos_fence'), lease_expires = now() + $4::float8 * interval '1 second', ran_on = $2, \
                     not_before = NULL, cancel_requested = false, started_at = now(), updated_at = now() \
                     WHERE id = $1 RETURNING {COLUMNS}"
                ),
                &[&id, &host, &req.slot, &lease],
            )?;
            let run = run_from_row(&row)?;
            let token = run.holder.as_ref().map(|h| h.token).ok_or_else(|| corrupt(&id, "claimed without a token"))?;
            event(&mut tx, &id, &host, "claimed", Some(&format!("slot {} token {token} attempt {}", req.slot, run.attempts)))?;
            tx.commit()?;
            Ok(Some(Claim { run, token, lease: req.lease }))
        })
    }

    /// Extends a lease by `lease` from now, under its token. Returns whether a cancel was
    /// requested (the holder then stops the run and finishes it `Cancelled`).
    /// [`ClusterError::Fenced`]: the lease is gone; stop and discard the output.
    pub fn renew(&mut self, run_id: &str, token: Token, lease: Duration) -> Result<bool> {
        let lease = seconds(lease);
        self.conn.run("renew a lease", |c| {
            let row = c.query_opt(
                "UPDATE cosmos_runs SET lease_expires = now() + $3::float8 * interval '1 second' \
                 WHERE id = $1 AND lease_token = $2 AND status = 'running' RETURNING cancel_requested",
                &[&run_id, &token.0, &lease],
            )?;
            match row {
                Some(row) => Ok(row.try_get(0)?),
                None => Err(stale(c, run_id, token)?),
            }
        })
    }

    /// Ends an attempt under its token. A stale token is refused ([`ClusterError::Fenced`]):
    /// the caller must discard its output. Told again after a lost connection, a finish
    /// that already happened under this token returns the run as it is.
    pub fn finish(&mut self, run_id: &str, token: Token, outcome: &Outcome) -> Result<QueueRun> {
        let host = self.host_id.clone();
        let child_spec = match outcome {
            Outcome::Completed { child: Some(child), .. } => {
                let (id, spec) = &**child;
                Some(serde_json::to_value(spec).map_err(|e| ClusterError::Corrupt(format!("run {id}: spec does not serialise: {e}")))?)
            }
            _ => None,
        };
        self.conn.run("finish a run", |c| {
            let mut tx = c.transaction()?;
            let after = match outcome {
                Outcome::Retry { after, .. } => seconds(*after),
                _ => 0.0,
            };
            let (set, detail, extra): (&str, &str, Vec<&(dyn postgres::types::ToSql + Sync)>) = match outcome {
                Outcome::Completed { outputs, .. } => {
                    ("status = 'completed', outputs = $3, error = NULL, finished_at = now()", "", vec![outputs])
                }
                Outcome::Failed { error } => ("status = 'failed', error = $3, finished_at = now()", error, vec![error]),
                Outcome::Cancelled => ("status = 'cancelled', error = 'cancelled by request', finished_at = now()", "", vec![]),
                Outcome::Retry { reason, .. } => (
                    "status = 'queued', error = $3, not_before = now() + $4::float8 * interval '1 second'",
                    reason,
                    vec![reason, &after],
                ),
                Outcome::HandBack { reason } => {
                    ("status = 'queued', attempts = GREATEST(attempts - 1, 0), not_before = NULL", reason, vec![])
                }
            };
            let sql = format!(
                "UPDATE cosmos_runs SET {set}, lease_expires = NULL, updated_at = now() \
                 WHERE id = $1 AND lease_token = $2 AND status = 'running' RETURNING {COLUMNS}"
            );
            let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![&run_id, &token.0];
            params.extend(extra);
            let Some(row) = tx.query_opt(&sql, &params)? else {
                return match already_finished(&mut tx, run_id, token)? {
                    Some(run) => Ok(run),
                    None => Err(stale(&mut tx, run_id, token)?),
                };
            };
            let run = run_from_row(&row)?;
            let kind = match outcome {
                Outcome::Completed { .. } => "completed",
                Outcome::Failed { .. } => "failed",
                Outcome::Cancelled => "cancelled",
                Outcome::Retry { .. } => "retry_later",
                Outcome::HandBack { .. } => "handed_back",
            };
            event(&mut tx, run_id, &host, kind, Some(&format!("token {token}{}{detail}", if detail.is_empty() { "" } else { ": " })))?;
            match outcome {
                Outcome::Failed { error } => end_children(&mut tx, run_id, &host, "failed", &format!("parent run {run_id} failed: {error}"))?,
                Outcome::Cancelled => end_children(&mut tx, run_id, &host, "cancelled", &format!("parent run {run_id} was cancelled"))?,
                Outcome::Completed { child: Some(boxed), .. } => {
                    let (child_id, child) = &**boxed;
                    let spec = child_spec.as_ref().ok_or_else(|| corrupt(child_id, "child spec lost"))?;
                    let n = tx.execute(
                        "INSERT INTO cosmos_runs (id, status, priority, control_set, spec, origin_host, parent_id, created_at, queued_at, updated_at, home) \
                         VALUES ($1, 'queued', $2, $3, $4, $5, $6, now(), now(), now(), $7) ON CONFLICT (id) DO NOTHING",
                        &[child_id, &child.priority, &child.control_set(), spec, &run.origin_host, &run_id, &run.home],
                    )?;
                    if n == 1 {
                        event(&mut tx, child_id, &host, "enqueued", Some(&format!("upscale of {run_id}")))?;
                    }
                    notify(&mut tx)?;
                }
                Outcome::Retry { .. } | Outcome::HandBack { .. } => notify(&mut tx)?,
                Outcome::Completed { child: None, .. } => {}
            }
            tx.commit()?;
            Ok(run)
        })
    }

    /// Takes back every run whose lease lapsed (its host crashed, paused or was cut off):
    /// queued again after the retry backoff, or failed once `max_attempts` attempts were
    /// made. Safe on every host at once: each lapsed run is reaped by exactly one.
    pub fn reap(&mut self, max_attempts: u32) -> Result<Vec<Reaped>> {
        let host = self.host_id.clone();
        self.conn.run("reap lapsed leases", |c| {
            let mut tx = c.transaction()?;
            let rows = tx.query(
                "SELECT id, attempts, lease_host, lease_slot, lease_token FROM cosmos_runs r \
                 WHERE status = 'running' AND lease_expires < now() ORDER BY lease_expires FOR UPDATE SKIP LOCKED",
                &[],
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let id: String = row.try_get(0)?;
                let attempts = u32::try_from(row.try_get::<_, i32>(1)?).unwrap_or(0);
                let holder_host: String = row.try_get::<_, Option<String>>(2)?.unwrap_or_default();
                let slot: String = row.try_get::<_, Option<String>>(3)?.unwrap_or_default();
                let token = Token(row.try_get::<_, Option<i64>>(4)?.unwrap_or(0));
                let why = format!("lease of {holder_host} slot {slot} (token {token}) lapsed");
                // The token goes with the lease: the late holder's renew or finish is refused.
                let requeued_after = match policy::retry_verdict(true, attempts, max_attempts, &why) {
                    policy::Verdict::Retry { after } => {
                        tx.execute(
                            "UPDATE cosmos_runs SET status = 'queued', lease_token = NULL, lease_host = NULL, lease_slot = NULL, \
                             lease_expires = NULL, error = $2, not_before = now() + $3::float8 * interval '1 second', \
                             updated_at = now() WHERE id = $1",
                            &[&id, &why, &after.as_secs_f64()],
                        )?;
                        event(&mut tx, &id, &host, "lease_lapsed", Some(&format!("{why}; queued again in {}s", after.as_secs())))?;
                        Some(after)
                    }
                    policy::Verdict::Fail { error } => {
                        tx.execute(
                            "UPDATE cosmos_runs SET status = 'failed', lease_token = NULL, lease_expires = NULL, error = $2, \
                             finished_at = now(), updated_at = now() WHERE id = $1",
                            &[&id, &error],
                        )?;
                        event(&mut tx, &id, &host, "lease_lapsed", Some(&error))?;
                        end_children(&mut tx, &id, &host, "failed", &format!("parent run {id} failed: {error}"))?;
                        None
                    }
                };
                out.push(Reaped { run_id: id, host: holder_host, slot, token, requeued_after });
            }
            if out.iter().any(|r| r.requeued_after.is_some()) {
                notify(&mut tx)?;
            }
            tx.commit()?;
            Ok(out)
        })
    }

    /// The runs this host's slots hold now, each with its token: after a restart of the
    /// daemon, it finishes (a worker's result on disk) or hands back each one at once
    /// rather than leaving it to lapse.
    pub fn held_here(&mut self) -> Result<Vec<Claim>> {
        let host = self.host_id.clone();
        self.conn.run("read this host's leases", |c| {
            let rows =
                c.query(&format!("SELECT {COLUMNS} FROM cosmos_runs WHERE status = 'running' AND lease_host = $1 ORDER BY id"), &[&host])?;
            rows.iter()
                .map(|row| {
                    let run = run_from_row(row)?;
                    let holder = run.holder.as_ref().ok_or_else(|| corrupt(&run.id, "running without a lease"))?;
                    let (token, lease) = (holder.token, Duration::ZERO);
                    Ok(Claim { run, token, lease })
                })
                .collect()
        })
    }

    /// `cosmos cancel` across hosts: a queued run is cancelled at once (its queued children
    /// with it); a running one is marked, and its holder learns it at the next renewal.
    /// Returns the run's status after the request.
    pub fn cancel(&mut self, run_id: &str) -> Result<RunStatus> {
        let host = self.host_id.clone();
        self.conn.run("cancel a run", |c| {
            let mut tx = c.transaction()?;
            let status = lock_status(&mut tx, run_id)?;
            let after = match status {
                RunStatus::Queued | RunStatus::Pending => {
                    tx.execute(
                        "UPDATE cosmos_runs SET status = 'cancelled', error = 'cancelled by request', finished_at = now(), updated_at = now() WHERE id = $1",
                        &[&run_id],
                    )?;
                    event(&mut tx, run_id, &host, "cancelled", Some("cancelled by request"))?;
                    end_children(&mut tx, run_id, &host, "cancelled", &format!("parent run {run_id} was cancelled"))?;
                    RunStatus::Cancelled
                }
                RunStatus::Running => {
                    tx.execute("UPDATE cosmos_runs SET cancel_requested = true, updated_at = now() WHERE id = $1", &[&run_id])?;
                    event(&mut tx, run_id, &host, "cancel_requested", None)?;
                    RunStatus::Running
                }
                other => {
                    return Err(Failure::Queue(ClusterError::Refused(format!(
                        "run {run_id} is {other}; only queued or running runs can be cancelled"
                    ))))
                }
            };
            tx.commit()?;
            Ok(after)
        })
    }

    /// `cosmos retry` across hosts: a failed or cancelled run is queued again, its attempts
    /// counted afresh.
    pub fn retry(&mut self, run_id: &str) -> Result<QueueRun> {
        let host = self.host_id.clone();
        self.conn.run("retry a run", |c| {
            let mut tx = c.transaction()?;
            let status = lock_status(&mut tx, run_id)?;
            if !matches!(status, RunStatus::Failed | RunStatus::Cancelled) {
                return Err(Failure::Queue(ClusterError::Refused(format!(
                    "run {run_id} is {status}; only failed or cancelled runs can be retried"
                ))));
            }
            let row = tx.query_one(
                &format!(
                    "UPDATE cosmos_runs SET status = 'queued', attempts = 0, error = NULL, cancel_requested = false, lease_token = NULL, \
                     lease_host = NULL, lease_slot = NULL, lease_expires = NULL, not_before = NULL, finished_at = NULL, delivered_at = NULL, \
                     updated_at = now() WHERE id = $1 RETURNING {COLUMNS}"
                ),
                &[&run_id],
            )?;
            event(&mut tx, run_id, &host, "retried", None)?;
            notify(&mut tx)?;
            let run = run_from_row(&row)?;
            tx.commit()?;
            Ok(run)
        })
    }

    /// One run by its full id.
    pub fn run(&mut self, run_id: &str) -> Result<QueueRun> {
        self.conn.run("read a run", |c| {
            let row = c.query_opt(&format!("SELECT {COLUMNS} FROM cosmos_runs WHERE id = $1"), &[&run_id])?;
            match row {
                Some(row) => run_from_row(&row),
                None => Err(Failure::Queue(ClusterError::NotFound(run_id.to_string()))),
            }
        })
    }

    /// The full id of the one run whose id starts with `prefix`.
    pub fn resolve(&mut self, prefix: &str) -> Result<String> {
        self.conn.run("resolve a run id", |c| {
            let rows = c.query("SELECT id FROM cosmos_runs WHERE starts_with(id, $1) ORDER BY id LIMIT 6", &[&prefix])?;
            let ids = rows.iter().map(|r| r.try_get::<_, String>(0)).collect::<std::result::Result<Vec<_>, _>>()?;
            match ids.as_slice() {
                [one] => Ok(one.clone()),
                [] => Err(Failure::Queue(ClusterError::NotFound(prefix.to_string()))),
                many => Err(Failure::Queue(ClusterError::Ambiguous {
                    prefix: prefix.to_string(),
                    count: many.len(),
                    list: many.iter().take(5).cloned().collect::<Vec<_>>().join(", ") + if many.len() > 5 { ", ..." } else { "" },
                })),
            }
        })
    }

    /// Runs of every host, newest first, optionally of one status.
    pub fn list(&mut self, status: Option<RunStatus>, limit: Option<usize>) -> Result<Vec<QueueRun>> {
        let status = status.map(RunStatus::as_str);
        let limit = limit.map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
        self.conn.run("list runs", |c| {
            let rows = c.query(
                &format!(
                    "SELECT {COLUMNS} FROM cosmos_runs WHERE ($1::text IS NULL OR status = $1) ORDER BY created_at DESC, id DESC LIMIT $2"
                ),
                &[&status, &limit],
            )?;
            rows.iter().map(run_from_row).collect()
        })
    }

    /// Runs by status, over every host.
    pub fn counts(&mut self) -> Result<Counts> {
        self.conn.run("count runs", |c| {
            let mut counts = Counts::default();
            for row in c.query("SELECT status, count(*) FROM cosmos_runs GROUP BY status", &[])? {
                let status: String = row.try_get(0)?;
                let n = u64::try_from(row.try_get::<_, i64>(1)?).unwrap_or(0);
                match status_from_db(&status, "(count)")? {
                    RunStatus::Pending => counts.pending = n,
                    RunStatus::Queued => counts.queued = n,
                    RunStatus::Running => counts.running = n,
                    RunStatus::Completed => counts.completed = n,
                    RunStatus::Failed => counts.failed = n,
                    RunStatus::Cancelled => counts.cancelled = n,
                }
            }
            Ok(counts)
        })
    }

    /// A run's history in the shared queue, oldest first: which host took it in, claimed,
    /// renewed, lost or finished it.
    pub fn events(&mut self, run_id: &str) -> Result<Vec<QueueEvent>> {
        self.conn.run("read a run's events", |c| {
            let rows = c.query("SELECT seq, time, host, kind, detail FROM cosmos_events WHERE run_id = $1 ORDER BY seq", &[&run_id])?;
            rows.iter()
                .map(|r| {
                    Ok(QueueEvent {
                        seq: r.try_get(0)?,
                        time: Timestamp::from_system_time(r.try_get(1)?),
                        host: r.try_get(2)?,
                        kind: r.try_get(3)?,
                        detail: r.try_get(4)?,
                    })
                })
                .collect()
        })
    }
}

impl PgQueue {
    /// Keeps the remedy an OOM chose for the run's next attempt, under the holder's token
    /// (before it finishes the attempt [`Outcome::Retry`]).
    pub fn set_remedy(&mut self, run_id: &str, token: Token, remedy: &Value) -> Result<()> {
        self.conn.run("keep a run's remedy", |c| {
            let n = c.execute(
                "UPDATE cosmos_runs SET remedy = $3, updated_at = now() WHERE id = $1 AND lease_token = $2 AND status = 'running'",
                &[&run_id, &token.0, remedy],
            )?;
            if n == 1 {
                Ok(())
            } else {
                Err(stale(c, run_id, token)?)
            }
        })
    }

    /// Runs this host took in that ended (on any host) and are not yet in its outbox and
    /// store, oldest end first.
    pub fn undelivered(&mut self, limit: usize) -> Result<Vec<QueueRun>> {
        let host = self.host_id.clone();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.conn.run("read ended runs to deliver", |c| {
            let rows = c.query(
                &format!(
                    "SELECT {COLUMNS} FROM cosmos_runs WHERE origin_host = $1 AND delivered_at IS NULL \
                     AND status IN ('completed', 'failed', 'cancelled') ORDER BY finished_at, id LIMIT $2"
                ),
                &[&host, &limit],
            )?;
            rows.iter().map(run_from_row).collect()
        })
    }

    /// Forgets this host's runs delivered longer than `older_than` ago, and their events
    /// (`daemon.prune_after`): the shared queue keeps what is in flight, not the history
    /// every host's store already has. A parent whose upscale child is still open stays.
    pub fn prune_delivered(&mut self, older_than: Duration) -> Result<u64> {
        let host = self.host_id.clone();
        let age = seconds(older_than);
        self.conn.run("prune delivered runs", |c| {
            let mut tx = c.transaction()?;
            let rows = tx.query(
                "DELETE FROM cosmos_runs r WHERE origin_host = $1 AND delivered_at < now() - $2::float8 * interval '1 second' \
                 AND NOT EXISTS (SELECT 1 FROM cosmos_runs k WHERE k.parent_id = r.id AND k.delivered_at IS NULL) RETURNING id",
                &[&host, &age],
            )?;
            let ids: Vec<String> = rows.iter().map(|r| r.try_get(0)).collect::<std::result::Result<_, _>>()?;
            tx.execute("DELETE FROM cosmos_events WHERE run_id = ANY($1)", &[&ids])?;
            tx.commit()?;
            Ok(ids.len() as u64)
        })
    }

    /// Every input path the runs still open (queued or running) name, on any host.
    pub fn open_inputs(&mut self) -> Result<std::collections::HashSet<std::path::PathBuf>> {
        self.conn.run("read the open runs' inputs", |c| {
            let rows = c.query("SELECT spec FROM cosmos_runs WHERE status IN ('queued', 'running')", &[])?;
            let mut out = std::collections::HashSet::new();
            for row in rows {
                let spec: Value = row.try_get(0)?;
                if let Ok(spec) = serde_json::from_value::<RunSpec>(spec) {
                    out.insert(spec.visual_input.clone());
                    for c in spec.controls.values() {
                        out.extend(c.input.iter().cloned());
                        out.extend(c.mask_path.iter().cloned());
                    }
                }
            }
            Ok(out)
        })
    }

    /// The origin host has the ended run in its outbox and store: it is not delivered again.
    pub fn mark_delivered(&mut self, run_id: &str) -> Result<()> {
        let host = self.host_id.clone();
        self.conn.run("mark a run delivered", |c| {
            let mut tx = c.transaction()?;
            let n = tx.execute("UPDATE cosmos_runs SET delivered_at = now() WHERE id = $1 AND delivered_at IS NULL", &[&run_id])?;
            if n == 1 {
                event(&mut tx, run_id, &host, "delivered", None)?;
            }
            tx.commit()?;
            Ok(())
        })
    }
}

/// A duration as SQL interval seconds, held below PostgreSQL's interval range (a "forever"
/// written as a huge duration must not make the statement fail).
fn seconds(d: Duration) -> f64 {
    d.as_secs_f64().min(100.0 * 365.0 * 86_400.0)
}

pub(super) fn to_system(t: Timestamp) -> SystemTime {
    let ms = Duration::from_millis(t.0.unsigned_abs());
    if t.0 >= 0 {
        SystemTime::UNIX_EPOCH + ms
    } else {
        SystemTime::UNIX_EPOCH - ms
    }
}

fn corrupt(run_id: &str, what: &str) -> Failure {
    Failure::Queue(ClusterError::Corrupt(format!("run {run_id}: {what}")))
}

fn event(c: &mut impl GenericClient, run_id: &str, host: &str, kind: &str, detail: Option<&str>) -> OpResult<()> {
    c.execute("INSERT INTO cosmos_events (run_id, host, kind, detail) VALUES ($1, $2, $3, $4)", &[&run_id, &host, &kind, &detail])?;
    Ok(())
}

/// Delivered when the transaction commits; lost by a listener that is not connected then.
fn notify(c: &mut impl GenericClient) -> OpResult<()> {
    c.execute("SELECT pg_notify($1, '')", &[&CHANNEL])?;
    Ok(())
}

/// A run's status, its row locked until the transaction ends.
fn lock_status(c: &mut impl GenericClient, run_id: &str) -> OpResult<RunStatus> {
    match c.query_opt("SELECT status FROM cosmos_runs WHERE id = $1 FOR UPDATE", &[&run_id])? {
        Some(row) => Ok(status_from_db(&row.try_get::<_, String>(0)?, run_id)?),
        None => Err(Failure::Queue(ClusterError::NotFound(run_id.to_string()))),
    }
}

/// Queued children of a run that ended unsuccessfully end the same way, with the reason.
fn end_children(c: &mut impl GenericClient, parent: &str, host: &str, status: &str, why: &str) -> OpResult<()> {
    let rows = c.query(
        "UPDATE cosmos_runs SET status = $2, error = $3, finished_at = now(), updated_at = now() \
         WHERE parent_id = $1 AND status = 'queued' RETURNING id",
        &[&parent, &status, &why],
    )?;
    for row in rows {
        let id: String = row.try_get(0)?;
        event(c, &id, host, status, Some(why))?;
    }
    Ok(())
}

/// A finish told again under the token that already ended the attempt (its first answer
/// was lost with the connection): the run as that finish left it.
fn already_finished(c: &mut impl GenericClient, run_id: &str, token: Token) -> OpResult<Option<QueueRun>> {
    let row = c.query_opt(
        &format!("SELECT {COLUMNS} FROM cosmos_runs WHERE id = $1 AND lease_token = $2 AND status <> 'running'"),
        &[&run_id, &token.0],
    )?;
    row.as_ref().map(run_from_row).transpose()
}

/// Why `token` is refused for `run_id`, as the error to return.
fn stale(c: &mut impl GenericClient, run_id: &str, token: Token) -> OpResult<Failure> {
    let Some(row) = c.query_opt("SELECT status, lease_token, lease_host, lease_slot FROM cosmos_runs WHERE id = $1", &[&run_id])? else {
        return Ok(Failure::Queue(ClusterError::NotFound(run_id.to_string())));
    };
    let status: String = row.try_get(0)?;
    let current: Option<i64> = row.try_get(1)?;
    let why = match (status.as_str(), current) {
        ("running", Some(t)) => {
            let (h, s): (Option<String>, Option<String>) = (row.try_get(2)?, row.try_get(3)?);
            format!("the run was claimed again, by {} slot {} under token {t}", h.unwrap_or_default(), s.unwrap_or_default())
        }
        ("queued", None) => "its lease lapsed and the run was queued again".to_string(),
        (other, _) => format!("the run is {other}"),
    };
    Ok(Failure::Queue(ClusterError::Fenced { run_id: run_id.to_string(), token: token.0, why }))
}

fn opt_time(row: &Row, i: usize) -> OpResult<Option<Timestamp>> {
    Ok(row.try_get::<_, Option<SystemTime>>(i)?.map(Timestamp::from_system_time))
}

fn run_from_row(row: &Row) -> OpResult<QueueRun> {
    let id: String = row.try_get(0)?;
    let status = status_from_db(&row.try_get::<_, String>(1)?, &id)?;
    let spec: RunSpec = serde_json::from_value(row.try_get(4)?).map_err(|e| corrupt(&id, &format!("unreadable spec: {e}")))?;
    let token: Option<i64> = row.try_get(14)?;
    let expires = opt_time(row, 15)?;
    let holder = match (status, token, expires) {
        (RunStatus::Running, Some(t), Some(expires_at)) => Some(Holder {
            host: row.try_get::<_, Option<String>>(12)?.unwrap_or_default(),
            slot: row.try_get::<_, Option<String>>(13)?.unwrap_or_default(),
            token: Token(t),
            expires_at,
        }),
        _ => None,
    };
    Ok(QueueRun {
        status,
        priority: row.try_get(2)?,
        control_set: row.try_get(3)?,
        spec,
        origin_host: row.try_get(5)?,
        parent_id: row.try_get(6)?,
        created_at: Timestamp::from_system_time(row.try_get(7)?),
        queued_at: Timestamp::from_system_time(row.try_get(8)?),
        not_before: opt_time(row, 9)?,
        attempts: u32::try_from(row.try_get::<_, i32>(10)?).unwrap_or(0),
        cancel_requested: row.try_get(11)?,
        holder,
        ran_on: row.try_get(16)?,
        outputs: row.try_get(17)?,
        error: row.try_get(18)?,
        started_at: opt_time(row, 19)?,
        finished_at: opt_time(row, 20)?,
        updated_at: Timestamp::from_system_time(row.try_get(21)?),
        home: row.try_get(22)?,
        remedy: row.try_get(23)?,
        delivered_at: opt_time(row, 24)?,
        id,
    })
}
