//! What the metrics read from the store: runs finished by outcome, counted from the
//! append-only `events` table (so the counts survive restarts and a deleted run still
//! counts), and the runs that finished last. Both read by `seq` (the rowid), so a scrape
//! reads only the events written since the one before.

use super::{Result, Store};

/// The event kinds that end a run, in the order [`Store::finished_counts_after`] counts them.
pub const FINISHED_KINDS: [&str; 3] = ["completed", "failed", "cancelled"];

/// How far back [`Store::recent_finished`] looks, in events: the newest finishes are near
/// the end, and a backlog of other events (a large batch queued) must not make the status
/// page read the whole table.
const RECENT_SCAN: i64 = 200_000;

/// A run's last ending, as its event says.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub seq: i64,
    pub run_id: String,
    pub time: String,
    pub kind: String,
}

impl Store {
    /// Events that ended a run with `seq` above `after`, by kind ([`FINISHED_KINDS`]
    /// order), and the highest `seq` read (to pass as `after` next time).
    pub fn finished_counts_after(&self, after: i64) -> Result<([u64; 3], i64)> {
        let mut counts = [0u64; 3];
        let mut stmt = self.conn.prepare_cached(
            "SELECT kind, count(*), max(seq) FROM events WHERE seq > ?1 AND kind IN ('completed', 'failed', 'cancelled') GROUP BY kind",
        )?;
        let mut rows = stmt.query([after])?;
        while let Some(row) = rows.next()? {
            let kind: String = row.get(0)?;
            let n: i64 = row.get(1)?;
            if let Some(i) = FINISHED_KINDS.iter().position(|k| *k == kind) {
                counts[i] = n.max(0) as u64;
            }
        }
        // Up to the newest event of any kind: the next scrape starts after it.
        let last: Option<i64> = self.conn.query_row("SELECT max(seq) FROM events", [], |r| r.get(0))?;
        Ok((counts, last.unwrap_or(0).max(after)))
    }

    /// The runs that ended last, newest first, each once (its latest ending).
    pub fn recent_finished(&self, limit: usize) -> Result<Vec<Finish>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, run_id, time, kind FROM events \
             WHERE seq > (SELECT coalesce(max(seq), 0) FROM events) - ?1 \
               AND kind IN ('completed', 'failed', 'cancelled') AND run_id IS NOT NULL \
             ORDER BY seq DESC",
        )?;
        let mut rows = stmt.query([RECENT_SCAN])?;
        let mut out: Vec<Finish> = Vec::new();
        while let Some(row) = rows.next()? {
            let f = Finish { seq: row.get(0)?, run_id: row.get(1)?, time: row.get(2)?, kind: row.get(3)? };
            if !out.iter().any(|o| o.run_id == f.run_id) {
                out.push(f);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::{Control, Hint, RunSpec, Settings, SpecStyle};
    use crate::store::{Change, NewPrompt, PromptInputs, Store};

    fn spec(prompt: &str) -> RunSpec {
        let mut controls = std::collections::BTreeMap::new();
        controls.insert(Hint::Edge, Control::generated(0.5));
        RunSpec {
            video: None,
            style: SpecStyle::Cli,
            name: None,
            prompt: prompt.into(),
            negative_prompt: None,
            visual_input: "/v/color.mp4".into(),
            controls,
            settings: Settings::default(),
            priority: 0,
            upscale_weight: None,
            sim: None,
        }
    }

    #[test]
    fn finished_runs_are_counted_once_from_the_events_and_listed_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("cosmos.db")).unwrap();
        let p = store
            .create_prompt(NewPrompt {
                name: None,
                text: "a".into(),
                negative_prompt: None,
                inputs: PromptInputs { color: "/v/color.mp4".into(), depth: None, seg: None, edge: None },
            })
            .unwrap();
        let mut ids = Vec::new();
        for i in 0..3 {
            let r = store.create_run(&p.id, spec(&format!("run {i}"))).unwrap();
            store.queue_single(std::slice::from_ref(&r.id), None).unwrap();
            store.change(&r.id, Change::Start).unwrap();
            ids.push(r.id);
        }
        let (zero, last0) = store.finished_counts_after(0).unwrap();
        assert_eq!(zero, [0, 0, 0]);
        store.complete(&ids[0], serde_json::json!({}), None).unwrap();
        store.finish_unsuccessfully(&ids[1], Change::Fail { error: "x".into() }).unwrap();
        let (after, last1) = store.finished_counts_after(last0).unwrap();
        assert_eq!(after, [1, 1, 0]);
        assert!(last1 > last0);
        assert_eq!(store.finished_counts_after(last1).unwrap().0, [0, 0, 0], "nothing counted twice");
        // A failed run retried and completed: its latest ending is listed, once.
        store.change(&ids[1], Change::Requeue { reason: "retry".into() }).unwrap();
        store.change(&ids[1], Change::Start).unwrap();
        store.complete(&ids[1], serde_json::json!({}), None).unwrap();
        store.finish_unsuccessfully(&ids[2], Change::Cancel { reason: "asked".into() }).unwrap();
        let recent = store.recent_finished(10).unwrap();
        let seen: Vec<(&str, &str)> = recent.iter().map(|f| (f.run_id.as_str(), f.kind.as_str())).collect();
        assert_eq!(seen, vec![(ids[2].as_str(), "cancelled"), (ids[1].as_str(), "completed"), (ids[0].as_str(), "completed")]);
        assert_eq!(store.recent_finished(1).unwrap().len(), 1);
        assert_eq!(store.finished_counts_after(0).unwrap().0, [2, 1, 1], "every ending since the start");
    }
}
