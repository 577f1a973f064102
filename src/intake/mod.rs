//! Intake: what the inbox holds becomes submissions, exactly once (DESIGN.md section 3).
//!
//! A ready entry is renamed into `<state>/claimed/<sb_id>__<name>`, so its submission id is
//! fixed before anything else happens; then hashed and parsed; then exactly one of
//! accepted / duplicate / rejected, decided in one store transaction. Whatever a crash
//! interrupts, [`Intake::recover`] finishes from `claimed/` at start-up: the store says
//! whether the decision was committed, and every step after it is idempotent. Nothing is
//! ever deleted: originals end in `<state>/archive/`.

pub mod fate;
pub mod stage;
pub mod tracker;
pub mod watch;

pub use fate::{Fate, Taken};

use crate::config::Config;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// The folders intake reads and writes.
#[derive(Debug, Clone)]
pub struct Layout {
    pub inbox: PathBuf,
    pub outbox: PathBuf,
    pub claimed: PathBuf,
    pub archive: PathBuf,
    pub work: PathBuf,
    pub receipts: PathBuf,
    pub rejected: PathBuf,
}

impl Layout {
    pub fn new(config: &Config) -> Layout {
        let p = &config.paths;
        Layout {
            inbox: p.inbox.clone(),
            outbox: p.outbox.clone(),
            claimed: p.state.join("claimed"),
            archive: p.state.join("archive"),
            work: p.state.join("work"),
            receipts: p.outbox.join("receipts"),
            rejected: p.outbox.join("rejected"),
        }
    }

    pub fn create_all(&self) -> std::io::Result<()> {
        for dir in [&self.inbox, &self.outbox, &self.claimed, &self.archive, &self.work, &self.receipts, &self.rejected] {
            std::fs::create_dir_all(dir)?;
        }
        Ok(())
    }

    pub fn receipt_path(&self, stem: &str, submission: &str) -> PathBuf {
        self.receipts.join(format!("{stem}.{submission}.json"))
    }
}

/// What an inbox entry is, by its name and type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Never touched: hidden and temp names (rsync's `.name.XXXXXX`, `.part`, ...).
    Ignored,
    /// `NAME.jsonl` or `NAME.json`.
    JobFile,
    /// `NAME/`: job files plus the videos they name.
    Bundle,
    /// Anything else at the top level (another extension, a symlink, a fifo): taken in and
    /// rejected with the reason, so the sender learns of it.
    Foreign,
}

/// Names intake never touches (DESIGN.md section 3).
pub fn is_ignored_name(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else { return false };
    name.starts_with('.')
        || name.ends_with('~')
        || [".tmp", ".part", ".partial", ".crdownload"].iter().any(|suffix| name.ends_with(suffix))
}

/// Classifies an inbox entry without following symlinks.
pub fn classify(path: &Path) -> Option<EntryKind> {
    let name = path.file_name()?;
    if is_ignored_name(name) {
        return Some(EntryKind::Ignored);
    }
    let meta = std::fs::symlink_metadata(path).ok()?;
    let ft = meta.file_type();
    Some(if ft.is_dir() {
        EntryKind::Bundle
    } else if ft.is_file() && crate::spec::FileKind::of(path).is_some() {
        EntryKind::JobFile
    } else {
        EntryKind::Foreign
    })
}

/// `jobs` for `jobs.jsonl`, `shoot1` for a bundle `shoot1/`: names receipts and rejected/.
pub fn stem_of(name: &str) -> String {
    let stem = match name.rsplit_once('.') {
        Some((s, ext)) if ext == "jsonl" || ext == "json" => s,
        _ => name,
    };
    let safe: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).take(64).collect();
    if safe.is_empty() || safe.chars().all(|c| c == '.') {
        "submission".into()
    } else {
        safe
    }
}

pub use fate::Intake;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignored_names_follow_the_design_card() {
        for n in [".jobs.jsonl.Xy12Ab", "jobs.jsonl.tmp", "a.part", "b.partial", "c.crdownload", "d.jsonl~", ".cosmos"] {
            assert!(is_ignored_name(OsStr::new(n)), "{n}");
        }
        for n in ["jobs.jsonl", "spec.json", "bundle", "notes.txt"] {
            assert!(!is_ignored_name(OsStr::new(n)), "{n}");
        }
    }

    #[test]
    fn stems_are_safe_folder_names() {
        assert_eq!(stem_of("jobs.jsonl"), "jobs");
        assert_eq!(stem_of("spec.v2.json"), "spec.v2");
        assert_eq!(stem_of("my shoot"), "my_shoot");
        assert_eq!(stem_of("notes.txt"), "notes.txt");
        assert_eq!(stem_of(".."), "submission");
    }
}
