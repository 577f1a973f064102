//! The learned pace of runs and model loads, for the ETA (table `rates`, schema 5): per
//! backend, control set and GPU group, seconds per output frame, per run (where a run's
//! frames were not known) and per model load.
//!
//! The estimate is the median of the last [`RECENT`] samples: one odd run (a cold page
//! cache, a GPU shared for a moment, a retry after an OOM) moves it little or not at all,
//! where a mean would follow it; a real change (other hardware, a new driver) takes over
//! once it is most of the recent samples. With durations that hold steady it is exact after
//! the first sample.

use super::{Result, Store, StoreError};
use crate::time::Timestamp;
use rusqlite::{params, OptionalExtension};

/// How many samples the median is taken over.
pub const RECENT: usize = 9;

/// What a sample is the seconds of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// One output frame of a run whose input was probed.
    Frame,
    /// A whole run, its frames not known.
    Run,
    /// One model load.
    Load,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Frame => "frame",
            Unit::Run => "run",
            Unit::Load => "load",
        }
    }

    pub fn parse(text: &str) -> Option<Unit> {
        [Unit::Frame, Unit::Run, Unit::Load].into_iter().find(|u| u.as_str() == text)
    }
}

/// Which pace: a backend, a control set (`"edge,vis"`), a GPU group (see
/// [`crate::scheduler::policy::gpu_group_key`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RateKey {
    pub backend: String,
    pub control_set: String,
    pub gpus: String,
}

/// One learned pace.
#[derive(Debug, Clone, PartialEq)]
pub struct Rate {
    pub key: RateKey,
    pub unit: Unit,
    /// The estimate: seconds per unit.
    pub seconds: f64,
    /// Samples taken in all.
    pub samples: u64,
    pub updated_at: String,
}

/// `recent` with `sample` added, the oldest dropped beyond [`RECENT`].
pub fn push_sample(mut recent: Vec<f64>, sample: f64) -> Vec<f64> {
    recent.push(sample);
    if recent.len() > RECENT {
        recent.drain(..recent.len() - RECENT);
    }
    recent
}

/// The median (the mean of the middle two for an even count); `None` for no samples.
pub fn median(samples: &[f64]) -> Option<f64> {
    let mut s: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    Some(if s.len() % 2 == 1 { s[mid] } else { (s[mid - 1] + s[mid]) / 2.0 }) // ok: s is not empty, so mid >= 1 when even
}

/// A measured duration of `units` units, as one sample of seconds per unit: `None` for what
/// no pace can come of (no units, a negative or non-finite duration).
pub fn per_unit(seconds: f64, units: u64) -> Option<f64> {
    (units > 0 && seconds.is_finite() && seconds >= 0.0).then(|| seconds / units as f64)
}

impl Store {
    /// Adds one sample (seconds per `unit`) to the pace of `key`, and returns the new
    /// estimate. A sample that is negative or not finite is refused.
    pub fn record_rate(&mut self, key: &RateKey, unit: Unit, sample: f64) -> Result<Rate> {
        if !sample.is_finite() || sample < 0.0 {
            return Err(StoreError::Refused(format!("a pace of {sample} seconds per {} is no measurement", unit.as_str())));
        }
        let now = Timestamp::now().rfc3339();
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let found: Option<(String, i64)> = tx
            .query_row(
                "SELECT recent, samples FROM rates WHERE backend = ?1 AND control_set = ?2 AND gpus = ?3 AND unit = ?4",
                params![key.backend, key.control_set, key.gpus, unit.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        // Damaged samples start afresh: a pace is learned again in a few runs, and a
        // scheduler must not stop over it.
        let (recent, samples) = found.map_or((Vec::new(), 0), |(text, n)| (serde_json::from_str(&text).unwrap_or_default(), n.max(0)));
        let recent = push_sample(recent, sample);
        let seconds = median(&recent).unwrap_or(sample);
        let text = serde_json::to_string(&recent).map_err(|e| StoreError::Corrupt(format!("cannot encode pace samples: {e}")))?;
        tx.execute(
            "INSERT INTO rates (backend, control_set, gpus, unit, seconds, samples, recent, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (backend, control_set, gpus, unit) DO UPDATE SET \
             seconds = excluded.seconds, samples = excluded.samples, recent = excluded.recent, updated_at = excluded.updated_at",
            params![key.backend, key.control_set, key.gpus, unit.as_str(), seconds, samples + 1, text, now],
        )?;
        tx.commit()?;
        Ok(Rate { key: key.clone(), unit, seconds, samples: (samples + 1) as u64, updated_at: now })
    }

    /// Every pace learned for `backend`.
    pub fn rates(&self, backend: &str) -> Result<Vec<Rate>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT control_set, gpus, unit, seconds, samples, updated_at FROM rates WHERE backend = ?1 ORDER BY control_set, gpus, unit",
        )?;
        let mut rows = stmt.query([backend])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let unit: String = r.get(2)?;
            let unit = Unit::parse(&unit).ok_or_else(|| StoreError::Corrupt(format!("a pace has the unknown unit {unit:?}")))?;
            let samples: i64 = r.get(4)?;
            out.push(Rate {
                key: RateKey { backend: backend.to_string(), control_set: r.get(0)?, gpus: r.get(1)? },
                unit,
                seconds: r.get(3)?,
                samples: samples.max(0) as u64,
                updated_at: r.get(5)?,
            });
        }
        Ok(out)
    }

    /// The queued runs in queue order (priority, then age), at most `limit`, as the ETA
    /// needs them: id, control set, priority and the input's frame count where probed.
    pub fn queue_for_eta(&self, limit: usize) -> Result<Vec<QueuedRun>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, control_set, priority, json_extract(spec, '$.video.frames') FROM runs \
             WHERE status = 'queued' ORDER BY priority DESC, queued_at, rowid LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit.min(i64::MAX as usize) as i64], |r| {
            let frames: Option<i64> = r.get(3).ok().flatten();
            Ok(QueuedRun {
                id: r.get(0)?,
                control_set: r.get(1)?,
                priority: r.get(2)?,
                frames: frames.filter(|f| *f > 0).map(|f| f as u64),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }
}

/// A queued run as the ETA sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedRun {
    pub id: String,
    pub control_set: String,
    pub priority: i32,
    /// The input video's frames, where it was probed.
    pub frames: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_the_recent_samples_shrugs_off_an_outlier() {
        let table: &[(&[f64], Option<f64>)] = &[
            (&[], None),
            (&[2.0], Some(2.0)),
            (&[2.0, 4.0], Some(3.0)),
            (&[2.0, 2.1, 60.0], Some(2.1)),
            (&[1.0, 9.0, 2.0, 8.0, 3.0], Some(3.0)),
            (&[f64::NAN, 5.0], Some(5.0)),
        ];
        for (samples, want) in table {
            assert_eq!(median(samples), *want, "{samples:?}");
        }
        let mut recent = Vec::new();
        for i in 0..20 {
            recent = push_sample(recent, i as f64);
        }
        assert_eq!(recent, (11..20).map(|i| i as f64).collect::<Vec<_>>(), "the last RECENT samples, oldest first");
        assert_eq!(per_unit(10.0, 4), Some(2.5));
        assert_eq!(per_unit(10.0, 0), None, "no frames: no pace per frame");
        assert_eq!(per_unit(-1.0, 4), None);
        assert_eq!(per_unit(f64::INFINITY, 4), None);
    }

    #[test]
    fn paces_are_kept_per_backend_set_group_and_unit_and_follow_a_real_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("cosmos.db")).unwrap();
        let key = |set: &str, gpus: &str| RateKey { backend: "sim".into(), control_set: set.into(), gpus: gpus.into() };
        assert!(store.rates("sim").unwrap().is_empty(), "nothing learned yet");
        let first = store.record_rate(&key("edge", "0"), Unit::Frame, 0.5).unwrap();
        assert_eq!((first.seconds, first.samples), (0.5, 1));
        store.record_rate(&key("edge", "0"), Unit::Frame, 0.5).unwrap();
        let odd = store.record_rate(&key("edge", "0"), Unit::Frame, 30.0).unwrap();
        assert_eq!(odd.seconds, 0.5, "one slow run does not move the median");
        store.record_rate(&key("edge", "1"), Unit::Frame, 2.0).unwrap();
        store.record_rate(&key("edge", "0"), Unit::Load, 40.0).unwrap();
        store.record_rate(&key("vis", "0"), Unit::Run, 7.0).unwrap();
        let rates = store.rates("sim").unwrap();
        let seen: Vec<(&str, &str, &str, f64, u64)> =
            rates.iter().map(|r| (r.key.control_set.as_str(), r.key.gpus.as_str(), r.unit.as_str(), r.seconds, r.samples)).collect();
        assert_eq!(
            seen,
            vec![
                ("edge", "0", "frame", 0.5, 3),
                ("edge", "0", "load", 40.0, 1),
                ("edge", "1", "frame", 2.0, 1),
                ("vis", "0", "run", 7.0, 1)
            ]
        );
        assert!(store.rates("transfer1").unwrap().is_empty(), "per backend");
        // The hardware changed: once the new pace is most of the recent samples it rules.
        let mut last = 0.0;
        for _ in 0..RECENT / 2 + 1 {
            last = store.record_rate(&key("edge", "0"), Unit::Frame, 1.0).unwrap().seconds;
        }
        assert_eq!(last, 1.0);
        assert!(matches!(store.record_rate(&key("edge", "0"), Unit::Frame, f64::NAN), Err(StoreError::Refused(_))));
        // Damaged samples start afresh rather than stop the scheduler.
        store.conn.execute("UPDATE rates SET recent = 'not json' WHERE unit = 'load'", []).unwrap();
        let healed = store.record_rate(&key("edge", "0"), Unit::Load, 20.0).unwrap();
        assert_eq!((healed.seconds, healed.samples), (20.0, 2));
    }
}
