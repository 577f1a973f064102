//! Entries that cannot be taken in right now (a permission, a read-only mount, an I/O error),
//! each retried with backoff rather than on every look, and named with the reason in
//! status.json and `cosmos status`.

use crate::time::Timestamp;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The first retry comes after this; each failure doubles it.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Retries never wait longer than this: a fixed mount or permission is noticed soon.
pub const MAX_RETRY: Duration = Duration::from_secs(120);

/// How far an entry got before it stuck; where it waits meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Not claimed: it is still in the inbox under its own name.
    Claim,
    /// Claimed, not yet copied into the state folder: it waits in the inbox's hidden
    /// claim folder.
    Copy,
    /// In `<state>/claimed/`; hashing, validating or recording it failed.
    Decide,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Claim => "claim",
            Stage::Copy => "copy",
            Stage::Decide => "decide",
        }
    }

    /// Where the entry waits, for people.
    pub fn waits_in(self) -> &'static str {
        match self {
            Stage::Claim => "it stays in the inbox",
            Stage::Copy => "it waits in the inbox's .cosmos/claimed folder",
            Stage::Decide => "it waits in the state folder's claimed/",
        }
    }
}

/// What is retried: an inbox name not yet claimed, or a claim (by submission id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Inbox(String),
    Claim(String),
}

#[derive(Debug, Clone)]
pub struct Stuck {
    /// The name the user gave it in the inbox.
    pub file: String,
    pub stage: Stage,
    pub reason: String,
    pub attempts: u32,
    pub since: String,
    pub next_try: Instant,
}

/// The entries waiting for a retry.
#[derive(Debug, Default)]
pub struct Retries {
    entries: BTreeMap<Key, Stuck>,
}

/// The wait before retry number `attempts` + 1: 1 s, 2 s, 4 s, ... up to [`MAX_RETRY`].
pub fn backoff(attempts: u32) -> Duration {
    let doubled = FIRST_RETRY.saturating_mul(1u32.checked_shl(attempts.saturating_sub(1)).unwrap_or(u32::MAX));
    doubled.min(MAX_RETRY)
}

impl Retries {
    /// Records a failure; returns how long until the next try.
    pub fn failed(&mut self, key: Key, file: &str, stage: Stage, reason: String, now: Instant) -> Duration {
        let entry = self.entries.entry(key).or_insert_with(|| Stuck {
            file: file.to_string(),
            stage,
            reason: String::new(),
            attempts: 0,
            since: Timestamp::now().rfc3339(),
            next_try: now,
        });
        entry.attempts += 1;
        entry.stage = stage;
        entry.reason = reason;
        let wait = backoff(entry.attempts);
        entry.next_try = now + wait;
        wait
    }

    /// It went through: no longer stuck. Returns whether it was.
    pub fn cleared(&mut self, key: &Key) -> bool {
        self.entries.remove(key).is_some()
    }

    /// Whether `key` is waiting for its next try.
    pub fn waiting(&self, key: &Key, now: Instant) -> bool {
        self.entries.get(key).is_some_and(|s| s.next_try > now)
    }

    pub fn get(&self, key: &Key) -> Option<&Stuck> {
        self.entries.get(key)
    }

    /// The keys whose next try has come.
    pub fn due(&self, now: Instant) -> Vec<(Key, Stuck)> {
        self.entries.iter().filter(|(_, s)| s.next_try <= now).map(|(k, s)| (k.clone(), s.clone())).collect()
    }

    /// When the next retry is due, if any entry is stuck.
    pub fn next_try(&self) -> Option<Instant> {
        self.entries.values().map(|s| s.next_try).min()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What status.json shows: one object per stuck entry.
    pub fn report(&self, now: Instant) -> Value {
        let entries: Vec<Value> = self
            .entries
            .iter()
            .map(|(key, s)| {
                json!({
                    "file": s.file,
                    "submission": match key { Key::Claim(sb) => Some(sb), Key::Inbox(_) => None },
                    "stage": s.stage.as_str(),
                    "reason": s.reason,
                    "waits": s.stage.waits_in(),
                    "attempts": s.attempts,
                    "since": s.since,
                    "next_try_at": Timestamp(Timestamp::now().0 + s.next_try.saturating_duration_since(now).as_millis() as i64).rfc3339(),
                })
            })
            .collect();
        Value::Array(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let waits: Vec<u64> = (1..=10).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 64, 120, 120, 120]);
        assert_eq!(backoff(u32::MAX), MAX_RETRY);
    }

    #[test]
    fn a_failure_waits_its_turn_and_a_success_clears_it() {
        let mut r = Retries::default();
        let t0 = Instant::now();
        let key = Key::Inbox("remote.jsonl".into());
        assert_eq!(r.failed(key.clone(), "remote.jsonl", Stage::Claim, "Read-only file system".into(), t0), Duration::from_secs(1));
        assert!(r.waiting(&key, t0));
        assert!(r.due(t0).is_empty());
        assert_eq!(r.due(t0 + Duration::from_secs(1)).len(), 1);
        assert_eq!(r.failed(key.clone(), "remote.jsonl", Stage::Claim, "again".into(), t0), Duration::from_secs(2));
        assert_eq!(r.next_try(), Some(t0 + Duration::from_secs(2)));
        let report = r.report(t0);
        assert_eq!(report[0]["file"], "remote.jsonl");
        assert_eq!(report[0]["attempts"], 2);
        assert_eq!(report[0]["reason"], "again");
        assert_eq!(report[0]["stage"], "claim");
        assert!(r.cleared(&key));
        assert!(r.is_empty() && !r.waiting(&key, t0));
    }
}
