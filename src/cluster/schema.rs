//! The queue's tables, created and migrated forward by whichever host connects first: under
//! a transaction-scoped advisory lock, so that hosts starting together migrate once, and
//! versioned in `cosmos_schema` (one row), so that an older program refuses a newer schema.

use super::conn::{Failure, OpResult};
use super::ClusterError;
use postgres::Client;

/// Migration `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: runs, their events, the fencing sequence, hosts and their slots.
    r#"
    CREATE SEQUENCE cosmos_fence AS bigint;
    CREATE TABLE cosmos_runs (
        id               text PRIMARY KEY,
        status           text NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
        priority         integer NOT NULL,
        control_set      text NOT NULL,
        spec             jsonb NOT NULL,
        origin_host      text NOT NULL,
        parent_id        text REFERENCES cosmos_runs (id) ON DELETE SET NULL,
        created_at       timestamptz NOT NULL,
        queued_at        timestamptz NOT NULL,
        not_before       timestamptz,
        attempts         integer NOT NULL DEFAULT 0,
        cancel_requested boolean NOT NULL DEFAULT false,
        -- The lease: who holds the run, under which token, until when. The token stays on a
        -- run its holder ended, so that holder recognises its own finish when it repeats it.
        lease_host       text,
        lease_slot       text,
        lease_token      bigint,
        lease_expires    timestamptz,
        ran_on           text,
        outputs          jsonb,
        error            text,
        started_at       timestamptz,
        finished_at      timestamptz,
        updated_at       timestamptz NOT NULL
    );
    CREATE INDEX cosmos_runs_queued ON cosmos_runs (priority DESC, queued_at, id) WHERE status = 'queued';
    CREATE INDEX cosmos_runs_leases ON cosmos_runs (lease_expires) WHERE status = 'running';
    CREATE INDEX cosmos_runs_parent ON cosmos_runs (parent_id) WHERE parent_id IS NOT NULL;
    CREATE TABLE cosmos_events (
        seq     bigserial PRIMARY KEY,
        run_id  text NOT NULL,
        time    timestamptz NOT NULL DEFAULT now(),
        host    text NOT NULL,
        kind    text NOT NULL,
        detail  text
    );
    CREATE INDEX cosmos_events_run ON cosmos_events (run_id, seq);
    CREATE TABLE cosmos_hosts (
        host_id      text PRIMARY KEY,
        version      text NOT NULL,
        pid          integer NOT NULL,
        started_at   timestamptz NOT NULL,
        heartbeat_at timestamptz NOT NULL
    );
    CREATE TABLE cosmos_slots (
        host_id         text NOT NULL REFERENCES cosmos_hosts (host_id) ON DELETE CASCADE,
        slot            text NOT NULL,
        gpus            integer[] NOT NULL,
        loaded_controls text,
        state           text NOT NULL,
        run_id          text,
        heartbeat_at    timestamptz NOT NULL,
        PRIMARY KEY (host_id, slot)
    );
    "#,
    // 2: what the origin host needs to deliver a run another host ran: its own record of
    // the run (`home`: prompt, batch, submission, line), the remedy an OOM left for the next
    // attempt, and when the origin host took the result into its outbox.
    r#"
    ALTER TABLE cosmos_runs ADD COLUMN home jsonb;
    ALTER TABLE cosmos_runs ADD COLUMN remedy jsonb;
    ALTER TABLE cosmos_runs ADD COLUMN delivered_at timestamptz;
    CREATE INDEX cosmos_runs_undelivered ON cosmos_runs (origin_host, finished_at)
        WHERE delivered_at IS NULL AND status IN ('completed', 'failed', 'cancelled');
    "#,
];

/// The version this program writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Brings the schema up to [`SCHEMA_VERSION`]; a newer one is refused untouched.
pub(super) fn migrate(client: &mut Client, target: &str) -> OpResult<()> {
    let mut tx = client.transaction()?;
    // Any 64-bit key will do, as long as every cosmosd uses the same one.
    tx.execute("SELECT pg_advisory_xact_lock(7305634180926459470)", &[])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS cosmos_schema (version integer NOT NULL)")?;
    let found: i32 = match tx.query_opt("SELECT version FROM cosmos_schema", &[])? {
        Some(row) => row.try_get(0)?,
        None => {
            tx.execute("INSERT INTO cosmos_schema (version) VALUES (0)", &[])?;
            0
        }
    };
    if found > SCHEMA_VERSION {
        return Err(Failure::Queue(ClusterError::TooNew { target: target.to_string(), found, known: SCHEMA_VERSION }));
    }
    for step in MIGRATIONS.iter().skip(found.max(0) as usize) {
        tx.batch_execute(step)?;
    }
    tx.execute("UPDATE cosmos_schema SET version = $1", &[&SCHEMA_VERSION])?;
    tx.commit()?;
    Ok(())
}
