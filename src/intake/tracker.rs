//! When is an inbox entry ready? Watcher events are hints; the truth is what a `stat` says
//! (DESIGN.md section 3):
//! - renamed into the inbox, or closed after writing: ready at once (if it looks whole);
//! - otherwise: size, mtime and inode unchanged across two looks `settle` apart;
//! - a job file whose last line is cut off waits, and is taken (to be rejected) only once
//!   unchanged for `incomplete_grace`;
//! - a bundle folder: ready with a `READY` file, or once nothing in it changed for `settle`
//!   and its job file validates (or `incomplete_grace` passed); a folder with no job file is
//!   not a submission and is left alone.

use super::{classify, fate::looks_complete, EntryKind};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// What a look at an entry saw; any difference means it is still changing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Signature {
    len: u64,
    mtime_ns: i128,
    ino: u64,
    dev: u64,
    /// Bundles: a digest of every (path, size, mtime) inside.
    inner: u64,
}

#[derive(Debug)]
struct Candidate {
    kind: EntryKind,
    sig: Signature,
    /// When the signature last changed (or was first seen).
    changed_at: Instant,
    /// A watcher said it was renamed in or closed after writing, and it has not changed since.
    hinted: bool,
    /// First seen through a watcher event (not a scan): with inotify, such a file is
    /// written in place and ready only when its writer closes it.
    from_event: bool,
    /// When [`Tracker::due`] last looked at it: a settle deadline that passed since then is
    /// worth a look at once, one that passed before is not (it waits for something else).
    last_look: Instant,
}

pub struct Tracker {
    settle: Duration,
    grace: Duration,
    tick: Duration,
    /// inotify reports close-after-write; PollWatcher cannot.
    close_write_seen: bool,
    entries: HashMap<String, Candidate>,
}

impl Tracker {
    /// `close_write_seen`: the watcher reports writers closing files (inotify).
    pub fn new(settle: Duration, grace: Duration, close_write_seen: bool) -> Tracker {
        let tick = (settle / 4).clamp(Duration::from_millis(20), Duration::from_millis(250));
        Tracker { settle, grace, tick, close_write_seen, entries: HashMap::new() }
    }

    pub fn set_timing(&mut self, settle: Duration, grace: Duration, close_write_seen: bool) {
        *self = Tracker { entries: std::mem::take(&mut self.entries), ..Tracker::new(settle, grace, close_write_seen) };
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A watcher saw `name` change; `whole` when it was renamed in or closed after writing.
    pub fn hint(&mut self, inbox: &Path, name: &str, whole: bool, now: Instant) {
        self.observe(inbox, name, whole, true, now);
    }

    fn observe(&mut self, inbox: &Path, name: &str, whole: bool, from_event: bool, now: Instant) {
        let path = inbox.join(name);
        let Some(kind) = classify(&path).filter(|k| *k != EntryKind::Ignored) else {
            self.entries.remove(name);
            return;
        };
        let Some(sig) = signature(&path, kind) else {
            self.entries.remove(name);
            return;
        };
        tracing::trace!(entry = name, whole, from_event, ?sig, "seen");
        match self.entries.get_mut(name) {
            Some(c) if c.sig == sig => c.hinted |= whole,
            Some(c) => {
                c.sig = sig;
                c.changed_at = now;
                c.hinted = whole;
                c.from_event |= from_event;
            }
            None => {
                self.entries.insert(name.to_string(), Candidate { kind, sig, changed_at: now, hinted: whole, from_event, last_look: now });
            }
        }
    }

    /// A full look at the inbox: every entry not yet tracked becomes a candidate (found by a
    /// scan, so it must settle).
    pub fn rescan(&mut self, inbox: &Path, now: Instant) -> std::io::Result<()> {
        for entry in std::fs::read_dir(inbox)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                tracing::warn!(path = %entry.path().display(), "inbox entry with a name that is not UTF-8, left alone");
                continue;
            };
            if !self.entries.contains_key(&name) {
                self.observe(inbox, &name, false, false, now);
            }
        }
        Ok(())
    }

    /// Looks at every candidate again and returns the names that are ready, oldest change
    /// first; they are no longer tracked. `bundle_ok` says whether a quiet bundle's job
    /// file validates as it stands.
    pub fn due(&mut self, inbox: &Path, now: Instant, bundle_ok: &mut dyn FnMut(&Path) -> bool) -> Vec<String> {
        let mut ready: Vec<(Instant, String)> = Vec::new();
        let mut gone = Vec::new();
        for (name, c) in self.entries.iter_mut() {
            c.last_look = now;
            let path = inbox.join(name);
            let Some(sig) = classify(&path).and_then(|k| signature(&path, k)) else {
                gone.push(name.clone());
                continue;
            };
            if sig != c.sig {
                c.sig = sig;
                c.changed_at = now;
                c.hinted = false;
                continue;
            }
            let quiet = now.saturating_duration_since(c.changed_at);
            let is_ready = match c.kind {
                EntryKind::Ignored => {
                    gone.push(name.clone());
                    false
                }
                EntryKind::JobFile if c.hinted => looks_complete(&path) || quiet >= self.grace,
                // Written in place under inotify: wait for the close. Should that event be
                // lost, the grace period still takes the file.
                EntryKind::JobFile if self.close_write_seen && c.from_event => quiet >= self.grace,
                EntryKind::JobFile => quiet >= self.settle && (looks_complete(&path) || quiet >= self.grace),
                EntryKind::Bundle => {
                    // A folder with no job file (say, videos that top-level job files name)
                    // is not a submission: it is never taken, unless marked READY.
                    let has_job = crate::spec::bundle_job_files(&path).map(|f| !f.is_empty()).unwrap_or(false);
                    path.join("READY").exists()
                        || (has_job && (c.hinted || quiet >= self.settle) && (quiet >= self.grace || bundle_ok(&path)))
                }
                EntryKind::Foreign => quiet >= self.settle,
            };
            if is_ready {
                ready.push((c.changed_at, name.clone()));
            }
            tracing::trace!(entry = %name, quiet_ms = quiet.as_millis() as u64, is_ready, "looked at");
        }
        for name in gone {
            self.entries.remove(&name);
        }
        ready.sort();
        ready
            .into_iter()
            .map(|(_, name)| {
                self.entries.remove(&name);
                name
            })
            .collect()
    }

    /// When the next look is worth making, if anything is tracked.
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        if self.entries.is_empty() {
            return None;
        }
        let mut wake = now + self.tick;
        for c in self.entries.values() {
            // A deadline not yet looked at, even one that passed while other entries were
            // being taken in, is looked at when it comes (or now), not a tick later.
            let settle_at = c.changed_at + self.settle;
            if settle_at > c.last_look {
                wake = wake.min(settle_at.max(now));
            }
        }
        Some(wake)
    }
}

fn signature(path: &Path, kind: EntryKind) -> Option<Signature> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let inner = if kind == EntryKind::Bundle { fingerprint(path, 0) } else { 0 };
    Some(Signature {
        len: meta.len(),
        mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        ino: meta.ino(),
        dev: meta.dev(),
        inner,
    })
}

/// A digest of what a folder holds, recursively: names, sizes, mtimes.
fn fingerprint(dir: &Path, depth: usize) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut items: Vec<(std::ffi::OsString, u64, i64, i64, u64)> = Vec::new();
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let sub = if meta.is_dir() && depth < 8 { fingerprint(&entry.path(), depth + 1) } else { 0 };
        items.push((entry.file_name(), meta.len(), meta.mtime(), meta.mtime_nsec(), sub));
    }
    items.sort();
    items.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn found_files_settle_and_renamed_files_are_ready_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path();
        let line = "{\"a\": 1}\n";
        std::fs::write(inbox.join("scanned.jsonl"), line).unwrap();
        let mut t = Tracker::new(Duration::from_millis(200), Duration::from_secs(5), true);
        let t0 = Instant::now();
        t.rescan(inbox, t0).unwrap();
        assert!(t.due(inbox, t0, &mut |_| true).is_empty(), "one look is not enough");
        assert_eq!(t.due(inbox, t0 + Duration::from_millis(250), &mut |_| true), vec!["scanned.jsonl"]);

        std::fs::write(inbox.join("moved.jsonl"), line).unwrap();
        t.hint(inbox, "moved.jsonl", true, t0);
        assert_eq!(t.due(inbox, t0, &mut |_| true), vec!["moved.jsonl"]);
    }

    #[test]
    fn with_inotify_a_file_written_in_place_waits_for_its_close() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path();
        std::fs::write(inbox.join("slow.jsonl"), "{\"a\": 1}\n").unwrap();
        let mut t = Tracker::new(Duration::from_millis(100), Duration::from_secs(5), true);
        let t0 = Instant::now();
        t.hint(inbox, "slow.jsonl", false, t0);
        assert!(t.due(inbox, t0 + Duration::from_secs(1), &mut |_| true).is_empty(), "no close yet");
        t.hint(inbox, "slow.jsonl", true, t0 + Duration::from_secs(1));
        assert_eq!(t.due(inbox, t0 + Duration::from_secs(1), &mut |_| true), vec!["slow.jsonl"]);
        // Polling cannot see closes: the settle rule decides.
        let mut t = Tracker::new(Duration::from_millis(100), Duration::from_secs(5), false);
        std::fs::write(inbox.join("polled.jsonl"), "{\"a\": 1}\n").unwrap();
        t.hint(inbox, "polled.jsonl", false, t0);
        assert_eq!(t.due(inbox, t0 + Duration::from_millis(150), &mut |_| true), vec!["polled.jsonl"]);
    }

    #[test]
    fn a_cut_off_last_line_waits_for_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path();
        std::fs::write(inbox.join("half.jsonl"), "{\"a\": 1}\n{\"b\": ").unwrap();
        let mut t = Tracker::new(Duration::from_millis(100), Duration::from_secs(2), true);
        let t0 = Instant::now();
        t.hint(inbox, "half.jsonl", true, t0);
        assert!(t.due(inbox, t0 + Duration::from_millis(500), &mut |_| true).is_empty());
        assert_eq!(t.due(inbox, t0 + Duration::from_secs(3), &mut |_| true), vec!["half.jsonl"]);
    }

    #[test]
    fn a_change_restarts_the_settle_and_ignored_names_are_never_tracked() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path();
        std::fs::write(inbox.join("grow.jsonl"), "{}\n").unwrap();
        std::fs::write(inbox.join(".grow.jsonl.Ab12Cd"), "{}\n").unwrap();
        let mut t = Tracker::new(Duration::from_millis(200), Duration::from_secs(5), true);
        let t0 = Instant::now();
        t.rescan(inbox, t0).unwrap();
        assert_eq!(t.len(), 1);
        std::fs::write(inbox.join("grow.jsonl"), "{}\n{}\n").unwrap();
        assert!(t.due(inbox, t0 + Duration::from_millis(300), &mut |_| true).is_empty(), "it changed");
        assert!(t.due(inbox, t0 + Duration::from_millis(400), &mut |_| true).is_empty(), "not settled since");
        assert_eq!(t.due(inbox, t0 + Duration::from_millis(600), &mut |_| true), vec!["grow.jsonl"]);
    }

    #[test]
    fn a_deadline_that_passed_while_others_were_taken_is_looked_at_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path();
        std::fs::write(inbox.join("a.jsonl"), "{}\n").unwrap();
        std::fs::write(inbox.join("b.jsonl"), "{}\n").unwrap();
        let settle = Duration::from_millis(500);
        let mut t = Tracker::new(settle, Duration::from_secs(5), false);
        let t0 = Instant::now();
        t.hint(inbox, "a.jsonl", false, t0);
        t.hint(inbox, "b.jsonl", false, t0 + Duration::from_millis(1));
        // a's deadline: b is a millisecond short of its own.
        assert_eq!(t.due(inbox, t0 + settle, &mut |_| true), vec!["a.jsonl"]);
        // Taking a in took 4 ms: b's deadline passed meanwhile, so look again now, not a
        // tick (125 ms) later.
        let after = t0 + settle + Duration::from_millis(4);
        assert_eq!(t.next_wake(after), Some(after));
        assert_eq!(t.due(inbox, after, &mut |_| true), vec!["b.jsonl"]);
        // An entry past its settle that waits for something else (a cut-off last line)
        // does not make the loop spin: the next look is a tick away.
        std::fs::write(inbox.join("half.jsonl"), "{\"a\": ").unwrap();
        t.hint(inbox, "half.jsonl", false, after);
        let later = after + settle;
        assert!(t.due(inbox, later, &mut |_| true).is_empty());
        assert_eq!(t.next_wake(later), Some(later + Duration::from_millis(125)));
    }

    #[test]
    fn folders_without_a_job_file_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path();
        std::fs::create_dir_all(inbox.join("videos")).unwrap();
        std::fs::write(inbox.join("videos/color.mp4"), "v").unwrap();
        let mut t = Tracker::new(Duration::from_millis(100), Duration::from_millis(200), true);
        let t0 = Instant::now();
        t.rescan(inbox, t0).unwrap();
        assert!(t.due(inbox, t0 + Duration::from_secs(10), &mut |_| true).is_empty());
    }

    #[test]
    fn bundles_wait_for_ready_or_quiet_and_valid() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path();
        std::fs::create_dir_all(inbox.join("b1")).unwrap();
        std::fs::write(inbox.join("b1/jobs.jsonl"), "{}\n").unwrap();
        let mut t = Tracker::new(Duration::from_millis(100), Duration::from_secs(10), true);
        let t0 = Instant::now();
        t.rescan(inbox, t0).unwrap();
        assert!(t.due(inbox, t0 + Duration::from_millis(200), &mut |_| false).is_empty(), "quiet but not valid yet");
        std::fs::write(inbox.join("b1/READY"), "").unwrap();
        // READY changed the folder; READY wins at once.
        assert_eq!(t.due(inbox, t0 + Duration::from_millis(300), &mut |_| false), Vec::<String>::new());
        assert_eq!(t.due(inbox, t0 + Duration::from_millis(310), &mut |_| false), vec!["b1"]);
    }
}
