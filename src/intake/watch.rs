//! Watching the inbox with notify: inotify where it works, notify's PollWatcher on network
//! and FUSE filesystems (where inotify sees only local writes). Events are hints that feed
//! the [`Tracker`](super::tracker::Tracker); a periodic rescan is the safety net.

use crate::config::WatchMode;
use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use std::path::Path;
use std::time::Duration;

/// The watcher in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Active {
    Inotify,
    Poll,
}

/// What a watcher event says about one inbox entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// `name` changed; `whole`: renamed in, or closed after writing.
    Entry { name: String, whole: bool },
    /// Events were lost (queue overflow) or the watcher failed: look at everything.
    Rescan,
}

/// Filesystems where inotify misses writes made by other hosts.
fn is_network_fs(path: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs fills the struct we own from a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    match st.f_type as i64 {
        0x6969 => Some("NFS"),
        0x517B => Some("SMB"),
        0xFF53_4D42 => Some("CIFS"),
        0xFE53_4D42 => Some("SMB2"),
        0x6573_5546 => Some("FUSE"),
        0x0102_1997 => Some("9P"),
        0x00C3_6400 => Some("Ceph"),
        _ => None,
    }
}

/// `watch.mode` made concrete for this inbox, with the reason.
pub fn resolve(mode: WatchMode, inbox: &Path) -> (Active, String) {
    match mode {
        WatchMode::Inotify => (Active::Inotify, "watch.mode = inotify".into()),
        WatchMode::Poll => (Active::Poll, "watch.mode = poll".into()),
        WatchMode::Auto => match is_network_fs(inbox) {
            Some(fs) => (Active::Poll, format!("watch.mode = auto: the inbox is on {fs}")),
            None => (Active::Inotify, "watch.mode = auto: local filesystem".into()),
        },
    }
}

/// Where a watcher's events go (the daemon's loop).
pub type OnEvent = Box<dyn Fn(notify::Result<Event>) + Send>;

struct Forward(OnEvent);

impl notify::EventHandler for Forward {
    fn handle_event(&mut self, event: notify::Result<Event>) {
        (self.0)(event)
    }
}

/// Starts watching `inbox` (not recursively: bundles are fingerprinted by the tracker).
pub fn start(active: Active, inbox: &Path, poll_interval: Duration, on_event: OnEvent) -> notify::Result<Box<dyn Watcher + Send>> {
    let config = notify::Config::default().with_poll_interval(poll_interval);
    let mut watcher: Box<dyn Watcher + Send> = match active {
        Active::Inotify => Box::new(notify::RecommendedWatcher::new(Forward(on_event), config)?),
        Active::Poll => Box::new(notify::PollWatcher::new(Forward(on_event), config)?),
    };
    watcher.watch(inbox, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// The hints one event carries about entries directly in `inbox`.
pub fn hints(inbox: &Path, event: &Event) -> Vec<Hint> {
    if event.need_rescan() {
        return vec![Hint::Rescan];
    }
    let whole = matches!(
        event.kind,
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) | EventKind::Access(AccessKind::Close(AccessMode::Write))
    );
    let paths: &[std::path::PathBuf] = match event.kind {
        // A rename inside the inbox (rsync's temp name -> final name): the new name matters.
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => event.paths.get(1..).unwrap_or_default(),
        // Opens and reads (ours included: the tracker reads folders to fingerprint them)
        // say nothing about a submission; reacting to them would feed on itself.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => &event.paths,
        EventKind::Access(_) => &[],
        _ => &event.paths,
    };
    paths
        .iter()
        .filter_map(|p| {
            // Only direct children of the inbox are submissions.
            let parent = p.parent()?;
            if parent != inbox {
                // An event deeper down (a bundle's contents): the bundle changed.
                let rel = p.strip_prefix(inbox).ok()?;
                let top = rel.components().next()?;
                return Some(Hint::Entry { name: top.as_os_str().to_str()?.to_string(), whole: false });
            }
            Some(Hint::Entry { name: p.file_name()?.to_str()?.to_string(), whole })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, Flag};

    #[test]
    fn renames_and_close_write_are_whole_creates_are_not() {
        let inbox = Path::new("/in");
        let moved = Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::Both)))
            .add_path("/in/.j.jsonl.X1".into())
            .add_path("/in/j.jsonl".into());
        assert_eq!(hints(inbox, &moved), vec![Hint::Entry { name: "j.jsonl".into(), whole: true }]);
        let closed = Event::new(EventKind::Access(AccessKind::Close(AccessMode::Write))).add_path("/in/k.jsonl".into());
        assert_eq!(hints(inbox, &closed), vec![Hint::Entry { name: "k.jsonl".into(), whole: true }]);
        let created = Event::new(EventKind::Create(CreateKind::File)).add_path("/in/k.jsonl".into());
        assert_eq!(hints(inbox, &created), vec![Hint::Entry { name: "k.jsonl".into(), whole: false }]);
        let deep = Event::new(EventKind::Create(CreateKind::File)).add_path("/in/b/v.mp4".into());
        assert_eq!(hints(inbox, &deep), vec![Hint::Entry { name: "b".into(), whole: false }]);
        let opened = Event::new(EventKind::Access(AccessKind::Open(AccessMode::Any))).add_path("/in/videos".into());
        assert!(hints(inbox, &opened).is_empty(), "reads are not changes");
        let read_closed = Event::new(EventKind::Access(AccessKind::Close(AccessMode::Read))).add_path("/in/videos".into());
        assert!(hints(inbox, &read_closed).is_empty());
        let overflow = Event::new(EventKind::Other).set_flag(Flag::Rescan);
        assert_eq!(hints(inbox, &overflow), vec![Hint::Rescan]);
    }

    #[test]
    fn auto_mode_picks_inotify_on_a_local_disk() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(resolve(WatchMode::Auto, dir.path()).0, Active::Inotify);
        assert_eq!(resolve(WatchMode::Poll, dir.path()).0, Active::Poll);
    }
}
