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

use std::ffi::OsStr;
use std::path::Path;

/// This daemon's id: `<host>-<random>`, made once and kept in `<state>/daemon-id`. It names
/// the daemon's claim folder in the inbox, so that daemons sharing an inbox (two hosts on
/// one NFS share) each finish only their own claims after a crash.
pub fn daemon_id(layout: &crate::layout::Layout) -> Result<String, crate::fsutil::PathIo> {
    let path = layout.daemon_id_file();
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
    name.starts_with('.') || name.ends_with('~') || [".tmp", ".part", ".partial", ".crdownload"].iter().any(|suffix| name.ends_with(suffix))
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
        let layout = |d: &Path| crate::layout::Layout::new(d, d, d);
        let id = daemon_id(&layout(dir.path())).unwrap();
        assert!(is_daemon_id(&id), "{id}");
        assert_eq!(daemon_id(&layout(dir.path())).unwrap(), id);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(daemon_id(&layout(other.path())).unwrap(), id, "another state folder, another daemon");
    }
}
