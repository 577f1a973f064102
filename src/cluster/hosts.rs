//! The registry of hosts and their GPU slots, for `cosmos status` and the status page
//! across hosts: each daemon beats for itself; anyone reads them all.

use super::conn::OpResult;
use super::{PgQueue, Result};
use crate::time::Timestamp;

/// One slot (a worker on a GPU or GPU group) as its host reports it.
#[derive(Debug, Clone)]
pub struct SlotBeat<'a> {
    pub slot: &'a str,
    pub gpus: &'a [u32],
    pub loaded_controls: Option<&'a str>,
    /// `idle`, `loading`, `running`, `down`, ...: the worker's state as status.json says it.
    pub state: &'a str,
    pub run_id: Option<&'a str>,
}

/// What a host reports of itself every few seconds.
#[derive(Debug, Clone)]
pub struct HostBeat<'a> {
    pub version: &'a str,
    pub pid: u32,
    pub started_at: Timestamp,
    /// Every slot it has now; slots it no longer names are dropped.
    pub slots: &'a [SlotBeat<'a>],
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SlotView {
    pub slot: String,
    pub gpus: Vec<u32>,
    pub loaded_controls: Option<String>,
    pub state: String,
    pub run_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HostView {
    pub host_id: String,
    pub version: String,
    pub pid: u32,
    pub started_at: Timestamp,
    pub heartbeat_at: Timestamp,
    /// By the database's clock, so hosts' clocks need not agree.
    pub seconds_since_heartbeat: f64,
    pub slots: Vec<SlotView>,
}

impl PgQueue {
    /// Records this host and its slots as they are now, in one transaction.
    pub fn heartbeat(&mut self, beat: &HostBeat<'_>) -> Result<()> {
        let host = self.host_id.clone();
        let pid = i32::try_from(beat.pid).unwrap_or(i32::MAX);
        let started = super::queue::to_system(beat.started_at);
        self.conn.run("heartbeat", |c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "INSERT INTO cosmos_hosts (host_id, version, pid, started_at, heartbeat_at) VALUES ($1, $2, $3, $4, now()) \
                 ON CONFLICT (host_id) DO UPDATE SET version = excluded.version, pid = excluded.pid, started_at = excluded.started_at, \
                 heartbeat_at = now()",
                &[&host, &beat.version, &pid, &started],
            )?;
            let names: Vec<&str> = beat.slots.iter().map(|s| s.slot).collect();
            tx.execute("DELETE FROM cosmos_slots WHERE host_id = $1 AND NOT (slot = ANY($2))", &[&host, &names])?;
            for s in beat.slots {
                let gpus: Vec<i32> = s.gpus.iter().map(|g| i32::try_from(*g).unwrap_or(i32::MAX)).collect();
                tx.execute(
                    "INSERT INTO cosmos_slots (host_id, slot, gpus, loaded_controls, state, run_id, heartbeat_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, now()) ON CONFLICT (host_id, slot) DO UPDATE SET gpus = excluded.gpus, \
                     loaded_controls = excluded.loaded_controls, state = excluded.state, run_id = excluded.run_id, heartbeat_at = now()",
                    &[&host, &s.slot, &gpus, &s.loaded_controls, &s.state, &s.run_id],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// This host leaves the registry (a clean stop); its leases are not touched.
    pub fn leave(&mut self) -> Result<()> {
        let host = self.host_id.clone();
        self.conn.run("leave the registry", |c| {
            c.execute("DELETE FROM cosmos_hosts WHERE host_id = $1", &[&host])?;
            Ok(())
        })
    }

    /// Every host that beat, with its slots, by host id.
    pub fn hosts(&mut self) -> Result<Vec<HostView>> {
        self.conn.run("read the hosts", |c| {
            let mut hosts = Vec::new();
            for r in c.query(
                "SELECT host_id, version, pid, started_at, heartbeat_at, extract(epoch FROM now() - heartbeat_at)::float8 \
                 FROM cosmos_hosts ORDER BY host_id",
                &[],
            )? {
                hosts.push(HostView {
                    host_id: r.try_get(0)?,
                    version: r.try_get(1)?,
                    pid: u32::try_from(r.try_get::<_, i32>(2)?).unwrap_or(0),
                    started_at: Timestamp::from_system_time(r.try_get(3)?),
                    heartbeat_at: Timestamp::from_system_time(r.try_get(4)?),
                    seconds_since_heartbeat: r.try_get(5)?,
                    slots: Vec::new(),
                });
            }
            for r in c.query("SELECT host_id, slot, gpus, loaded_controls, state, run_id FROM cosmos_slots ORDER BY host_id, slot", &[])? {
                let host: String = r.try_get(0)?;
                let slot = slot_from_row(&r)?;
                if let Some(h) = hosts.iter_mut().find(|h| h.host_id == host) {
                    h.slots.push(slot);
                }
            }
            Ok(hosts)
        })
    }
}

fn slot_from_row(r: &postgres::Row) -> OpResult<SlotView> {
    let gpus: Vec<i32> = r.try_get(2)?;
    Ok(SlotView {
        slot: r.try_get(1)?,
        gpus: gpus.into_iter().filter_map(|g| u32::try_from(g).ok()).collect(),
        loaded_controls: r.try_get(3)?,
        state: r.try_get(4)?,
        run_id: r.try_get(5)?,
    })
}
