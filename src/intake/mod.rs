//! Intake: what the inbox holds becomes submissions, exactly once (DESIGN.md section 3).
//!
//! A ready entry is first renamed into this daemon's hidden claim folder inside the inbox,
//! `inbox/.cosmos/claimed/<daemon>/<sb_id>__<name>`: a rename within one filesystem, atomic
//! even on NFS, so of two daemons sharing an inbox exactly one wins it, and its submission id
//! is fixed before anything else happens. It is then moved into `<state>/claimed/` (a rename
//! where inbox and state share a filesystem, else a copy fsynced and renamed into place),
//! hashed and parsed; then exactly one of accepted / duplicate / rejected, decided in one
//! store transaction. Whatever a crash interrupts, [`Intake::recover`] finishes at start-up
//! from either claim folder: the store says whether the decision was committed, and every
//! step after it is idempotent. Nothing is ever deleted: originals end in
//! `<state>/archive/`. An entry that cannot be taken in is retried with backoff ([`stuck`]).

pub mod fate;
pub mod stage;
pub mod stuck;
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
    /// `inbox/.cosmos/claimed`: every daemon's claim folder, on the inbox's filesystem.
    pub inbox_claims_root: PathBuf,
    /// This daemon's claim folder in the inbox (`inbox_claims_root/<daemon id>`).
    pub inbox_claims: PathBuf,
    pub outbox: PathBuf,
    pub claimed: PathBuf,
    pub archive: PathBuf,
    pub work: PathBuf,
    pub receipts: PathBuf,
    pub rejected: PathBuf,
}

/// The folder under the inbox that intake keeps for itself (never taken in).
pub const INBOX_PRIVATE: &str = ".cosmos";

impl Layout {
    /// `daemon`: this daemon's id ([`daemon_id`]), which names its claim folder in the inbox.
    pub fn new(config: &Config, daemon: &str) -> Layout {
        let p = &config.paths;
        let inbox_claims_root = p.inbox.join(INBOX_PRIVATE).join("claimed");
        Layout {
            inbox: p.inbox.clone(),
            inbox_claims: inbox_claims_root.join(daemon),
            inbox_claims_root,
            outbox: p.outbox.clone(),
            claimed: p.state.join("claimed"),
            archive: p.state.join("archive"),
            work: p.state.join("work"),
            receipts: p.outbox.join("receipts"),
            rejected: p.outbox.join("rejected"),
        }
    }

    pub fn create_all(&self) -> Result<(), crate::fsutil::PathIo> {
        for dir in [&self.inbox, &self.inbox_claims, &self.outbox, &self.claimed, &self.archive, &self.work, &self.receipts, &self.rejected] {
            std::fs::create_dir_all(dir).map_err(crate::fsutil::at("cannot create", dir))?;
        }
        Ok(())
    }

    pub fn receipt_path(&self, stem: &str, submission: &str) -> PathBuf {
        self.receipts.join(format!("{stem}.{submission}.json"))
    }
}

/// This daemon's id: `<host>-<random>`, made once and kept in `<state>/daemon-id`. It names
/// the daemon's claim folder in the inbox, so that daemons sharing an inbox (two hosts on
/// one NFS share) each finish only their own claims after a crash.
pub fn daemon_id(state: &Path) -> Result<String, crate::fsutil::PathIo> {
    let path = state.join("daemon-id");
    match std::fs::read_to_string(&path) {
        Ok(text) if is_daemon_id(text.trim()) => return Ok(text.trim().to_string()),
        Ok(_) => tracing::warn!(path = %path.display(), "daemon-id is not a valid id; making a new one"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(crate::fsutil::PathIo { what: "cannot read", path, source: e }),
    }
    let host: String = hostname().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(40).collect();
    let id = format!("{}-{}", if host.is_empty() { "host" } else { &host }, crate::ids::token());
    crate::fsutil::write_atomic(&path, format!("{id}\n").as_bytes()).map_err(crate::fsutil::at("cannot write", &path))?;
    Ok(id)
}

fn is_daemon_id(text: &str) -> bool {
    !text.is_empty() && text.len() <= 64 && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into the buffer we own.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
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
    fn the_daemon_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let id = daemon_id(dir.path()).unwrap();
        assert!(is_daemon_id(&id), "{id}");
        assert_eq!(daemon_id(dir.path()).unwrap(), id);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(daemon_id(other.path()).unwrap(), id, "another state folder, another daemon");
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
