//! The shared queue of several hosts on PostgreSQL (DESIGN.md, "Several hosts"; issue 14).
//!
//! Every host's daemon connects to one database named by `cluster.database`. Runs enter the
//! queue once (the run id is the key); a GPU slot claims the next one with `FOR UPDATE SKIP
//! LOCKED`, in the order of `scheduler::policy::choose_next`, and holds it under a lease with
//! a fencing token: renewals, results and hand-backs are taken only under the current token,
//! so a host presumed dead (crashed, paused, cut off) cannot publish or overwrite anything
//! once its run was reaped. Times are the database's clock (`now()`), one clock for all hosts.
//!
//! Each operation is one SQL transaction; a lost connection is re-established and the
//! operation tried again ([`PgQueue::reconnect_within`]). An operation whose COMMIT was sent
//! when the connection broke may have happened: the ones that end a lease recognise their
//! own earlier success, a claim whose answer was lost is a lease nobody renews (it lapses and
//! the reaper requeues the run; nothing is lost, one attempt is spent).
//!
//! No TLS yet: connections are plain TCP (or a Unix socket), so the database belongs on a
//! trusted network or behind a tunnel; `sslmode=require` is refused with that said.
//!
//! The scheduler claims, renews (through the host's [`LeaseKeeper`]) and finishes runs here
//! when `cluster.database` is set; [`Home`] is the origin host's side: it puts the runs its
//! inbox took in into the queue (inputs copied into [`SharedDir`]), takes the runs that
//! ended into its outbox and store, reaps lapsed leases and keeps the host's heartbeat.

mod conn;
mod home;
mod hosts;
mod lease;
mod queue;
mod schema;
mod shared;
mod wake;

pub use conn::{check_url, describe_url};
pub use home::{home_record, local_view, Home, HomeError, HomeSetup, SlotNow};
pub use hosts::{HostBeat, HostView, SlotBeat, SlotView};
pub use lease::{LeaseKeeper, LeaseState};
pub use queue::{Claim, ClaimRequest, Enqueued, Holder, NewRun, Outcome, QueueEvent, QueueRun, Reaped, Token};
pub use schema::SCHEMA_VERSION;
pub use shared::{copy_folder_into, SharedDir};
pub use wake::{Wake, Waker};

use crate::store::RunStatus;
use std::time::Duration;

/// What went wrong with the shared queue; each says what to check.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.database: {0}")]
    Url(String),
    #[error(
        "cannot reach the queue database {target} (tried for {tried:.0?}): {}; is PostgreSQL running there and cluster.database right?",
        with_causes(source)
    )]
    Unavailable { target: String, tried: Duration, source: postgres::Error },
    #[error(
        "the queue database {target} has schema version {found}; this program knows up to {known}: upgrade cosmos-workflow on this host"
    )]
    TooNew { target: String, found: i32, known: i32 },
    #[error("queue database {target}: {op}: {source}")]
    Db { target: String, op: &'static str, source: postgres::Error },
    /// The token is no longer the run's: its lease lapsed and was reaped (or the run was
    /// retried). The caller must stop the run and discard its output.
    #[error("run {run_id}: lease token {token} is no longer current ({why}); the output of this attempt must be discarded")]
    Fenced { run_id: String, token: i64, why: String },
    #[error("no run in the shared queue has an id starting with `{0}`")]
    NotFound(String),
    #[error("`{prefix}` matches {count} runs in the shared queue ({list}); type more of the id")]
    Ambiguous { prefix: String, count: usize, list: String },
    /// A request the run's state does not allow, said in words.
    #[error("{0}")]
    Refused(String),
    #[error("the shared queue holds damaged data: {0}")]
    Corrupt(String),
}

/// An error with what caused it ("error connecting to server: Connection refused").
fn with_causes(e: &postgres::Error) -> String {
    let mut text = e.to_string();
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        let c = cause.to_string();
        if !text.contains(&c) {
            text = format!("{text}: {c}");
        }
        next = cause.source();
    }
    text
}

impl ClusterError {
    /// Errors in what a person asked for (exit 2), as opposed to failures (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, ClusterError::Url(_) | ClusterError::NotFound(_) | ClusterError::Ambiguous { .. } | ClusterError::Refused(_))
    }
}

pub type Result<T> = std::result::Result<T, ClusterError>;

/// The shared queue, through one connection (one per GPU slot or per host thread: a
/// connection runs one transaction at a time). Reconnects by itself.
pub struct PgQueue {
    conn: conn::Conn,
    host_id: String,
}

impl PgQueue {
    /// Connects to `url`, creating or migrating the schema, as host `host_id`.
    pub fn connect(url: &str, host_id: &str) -> Result<PgQueue> {
        PgQueue::connect_within(url, host_id, conn::RETRY_FOR)
    }

    /// As [`PgQueue::connect`], trying for at most `limit` (the first connection and every
    /// later reconnection, as [`PgQueue::reconnect_within`]): `cosmos` and `check-host` wait
    /// seconds for a database that is not there, not the daemon's minute.
    pub fn connect_within(url: &str, host_id: &str, limit: Duration) -> Result<PgQueue> {
        let mut conn = conn::Conn::new(url)?;
        conn.retry_for = limit;
        let target = conn.target().to_string();
        conn.run("migrate the schema", |c| schema::migrate(c, &target))?;
        Ok(PgQueue { conn, host_id: host_id.to_string() })
    }

    /// How long an operation keeps reconnecting after the database went away (a restart,
    /// a failover) before it fails with [`ClusterError::Unavailable`]. Default 60 s.
    pub fn reconnect_within(&mut self, limit: Duration) {
        self.conn.retry_for = limit;
    }

    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// The database as errors and logs name it (no password).
    pub fn target(&self) -> &str {
        self.conn.target()
    }

    /// A listener for enqueue notifications on its own connection.
    pub fn waker(&self) -> Result<Waker> {
        Waker::connect(self.conn.url())
    }
}

/// Status text as the table holds it.
fn status_from_db(text: &str, run_id: &str) -> Result<RunStatus> {
    RunStatus::parse(text).ok_or_else(|| ClusterError::Corrupt(format!("run {run_id} has status {text:?}")))
}
