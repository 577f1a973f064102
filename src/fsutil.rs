//! Small filesystem helpers shared by intake, the outbox and the CLI: hashing, linking,
//! syncing, atomic writes, moves that work across filesystems, and an I/O error that names
//! what was being done and where.
//!
//! The inbox, the outbox and the state folder may each be on its own filesystem (NFS, CIFS,
//! FUSE, another disk): a rename between them fails with EXDEV. [`move_entry`] is the one
//! place that crosses: a rename where it can, else a copy that appears whole by a rename on
//! the target's own filesystem.

use sha2::{Digest, Sha256};
use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// An I/O failure with its context: "cannot publish /outbox/run_rs_x: No space left".
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct PathIo {
    pub what: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

/// For `map_err`: `std::fs::rename(a, b).map_err(at("cannot publish", b))?`.
pub fn at<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PathIo + 'a {
    move |source| PathIo { what, path: path.to_path_buf(), source }
}

/// sha256 of a regular file's bytes, as lowercase hex. Refuses fifos and devices (which
/// could block or never end).
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = open_regular_file(path).map_err(io::Error::other)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `src` as `dst`: a hard link where the filesystem allows (same filesystem, permitted),
/// else a copy.
pub fn link_or_copy(src: &Path, dst: &Path) -> io::Result<()> {
    if std::fs::hard_link(src, dst).is_err() {
        std::fs::copy(src, dst)?;
    }
    Ok(())
}

/// fsync of a folder, so that a rename in it survives power loss. Best effort.
pub fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Why `meta` is not a regular file, if it is not: "x is a fifo; expected a regular file".
pub fn require_regular(meta: &Metadata, path: &Path) -> Result<(), String> {
    let ft = meta.file_type();
    let what = if ft.is_file() {
        return Ok(());
    } else if ft.is_dir() {
        "a folder"
    } else if ft.is_fifo() {
        "a fifo"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a plain file"
    };
    Err(format!("{} is {what}; expected a regular file", path.display()))
}

/// Opens `path` for reading only if it is a regular file: opening a fifo would block and a
/// device could be endless.
pub fn open_regular_file(path: &Path) -> Result<File, String> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        _ => format!("cannot read: {e}"),
    })?;
    require_regular(&meta, path)?;
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    // Checked again on the handle: the name may have been swapped in between.
    let meta = file.metadata().map_err(|e| format!("cannot read: {e}"))?;
    require_regular(&meta, path)?;
    Ok(file)
}

/// Opens the regular file at the absolute, already resolved `path` for reading without
/// following a symbolic link anywhere on the way: each folder is opened from the one
/// before (`openat` with `O_NOFOLLOW`), so a link swapped in after the path was checked
/// (say, to lead out of the allowed folders) is refused, not followed. What was checked
/// is what is read.
pub fn open_exact(path: &Path) -> io::Result<File> {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let refuse = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    if !path.is_absolute() {
        return Err(refuse(format!("{} is not an absolute path", path.display())));
    }
    let mut names = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => names.push(CString::new(n.as_bytes()).map_err(|_| refuse(format!("{} holds a NUL", path.display())))?),
            _ => return Err(refuse(format!("{} is not a resolved path", path.display()))),
        }
    }
    let root = CString::new("/").map_err(io::Error::other)?;
    // SAFETY: open(2) of a NUL-terminated path; the descriptor is owned at once.
    let fd = unsafe { libc::open(root.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just opened and own.
    let mut at = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut walked = PathBuf::from("/");
    for (i, name) in names.iter().enumerate() {
        let last = i + 1 == names.len();
        walked.push(std::ffi::OsStr::from_bytes(name.as_bytes()));
        // Folders as O_PATH (search permission is enough); the file itself read-only and
        // non-blocking, so that a fifo swapped in cannot block the open.
        let flags = libc::O_NOFOLLOW
            | libc::O_CLOEXEC
            | if last { libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY } else { libc::O_PATH | libc::O_DIRECTORY };
        // SAFETY: openat(2) relative to a descriptor we own, with a NUL-terminated name.
        let fd = unsafe { libc::openat(at.as_raw_fd(), name.as_ptr(), flags) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            let is_link = std::fs::symlink_metadata(&walked).is_ok_and(|m| m.file_type().is_symlink());
            if is_link {
                return Err(refuse(format!(
                    "{} is a symbolic link (it was not when the path was checked, or it leads elsewhere): refused",
                    walked.display()
                )));
            }
            return Err(e);
        }
        // SAFETY: as above.
        at = unsafe { OwnedFd::from_raw_fd(fd) };
    }
    let file = File::from(at);
    let meta = file.metadata()?;
    require_regular(&meta, path).map_err(refuse)?;
    // Reads block as usual from here (O_NONBLOCK means nothing for a regular file anyway).
    // SAFETY: fcntl(2) on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok(file)
}

/// Resolves `.` and `..` without touching the filesystem. `..` above `/` stays at `/`.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// `path` made absolute against the current directory, without touching the filesystem.
pub fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    match std::env::current_dir() {
        Ok(cwd) => normalize(&cwd.join(path)),
        Err(_) => path.to_path_buf(),
    }
}

/// Bytes free to an unprivileged writer under `dir` (statvfs), if it can be asked.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct we own from a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Writes `path` whole or not at all: a temp name in the same folder, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // Unique per call: several threads may replace the same file (a receipt) at once.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{file_name}.{}.{n}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Whether an error is "these two paths are on different filesystems".
pub fn is_cross_device(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EXDEV)
}

/// How [`move_entry`] got an entry to its new place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved {
    /// One rename: both places are on one filesystem.
    Renamed,
    /// Copied (and synced) under a temp name beside the target, renamed into place, then
    /// the source removed.
    Copied,
}

/// The temp name [`move_entry`] copies to before the final rename: hidden, beside `dst`.
/// Whoever owns the target folder removes leftovers of a crash ([`is_move_leftover`]).
pub fn move_temp(dst: &Path) -> PathBuf {
    let name = dst.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dst.with_file_name(format!(".{name}.copying"))
}

/// A hidden temp name beside `path` (`.name.<pid>.tmp`), for building it before a rename;
/// the pid lets [`remove_dead_temps`] tell a crashed process's leftover from work under way.
pub fn temp_beside(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// The pid in a temp name made by [`temp_beside`] (`.name.<pid>.tmp`) or [`write_atomic`]
/// (`.name.<pid>.<n>.tmp`).
fn temp_owner(name: &str) -> Option<i32> {
    let inner = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let mut parts = inner.rsplit('.');
    let last = parts.next()?;
    let before = parts.next()?;
    match (before.parse::<i32>(), last.parse::<i32>()) {
        (Ok(pid), Ok(_)) => Some(pid),
        (Err(_), Ok(pid)) => Some(pid),
        _ => None,
    }
}

/// Removes, directly in `dir`, the temps ([`temp_beside`], [`write_atomic`]) of processes
/// that no longer run: what a crash (kill -9) left half-written. A live process's are kept.
pub fn remove_dead_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = temp_owner(&name).filter(|p| *p > 0) else { continue };
        // SAFETY: kill(2) with signal 0 only asks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let _ = remove_any(&e.path());
        }
    }
}

/// Whether a name in a folder is a half-made copy of [`move_entry`].
pub fn is_move_leftover(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".copying")
}

/// Moves a file, folder or symlink from `src` to `dst` so that `dst` appears whole or not at
/// all, whatever filesystems the two are on. A crash part-way leaves `src` in place (and
/// perhaps a [`move_temp`] leftover), or `dst` complete beside a `src` not yet removed: the
/// caller's recovery sees which and finishes.
pub fn move_entry(src: &Path, dst: &Path) -> io::Result<Moved> {
    match std::fs::rename(src, dst) {
        Ok(()) => {
            if let Some(parent) = dst.parent() {
                sync_dir(parent);
            }
            return Ok(Moved::Renamed);
        }
        Err(e) if !is_cross_device(&e) => return Err(e),
        Err(_) => {}
    }
    let tmp = move_temp(dst);
    remove_any(&tmp)?;
    if let Err(e) = copy_synced(src, &tmp) {
        let _ = remove_any(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, dst)?;
    if let Some(parent) = dst.parent() {
        sync_dir(parent);
    }
    remove_any(src)?;
    Ok(Moved::Copied)
}

/// Removes a file, symlink or folder tree; absent is fine.
pub fn remove_any(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let result = if meta.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Copies `src` to `dst` (which must not exist) without following symlinks, and fsyncs every
/// file and folder made. Regular files keep their permission bits; symlinks are made again
/// as symlinks; fifos, sockets and devices become fifos (nothing is read from them, and
/// intake still sees that the entry was not a regular file).
pub fn copy_synced(src: &Path, dst: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    let ft = meta.file_type();
    if ft.is_dir() {
        std::fs::create_dir(dst)?;
        for entry in std::fs::read_dir(src)? {
            let entry = entry?;
            copy_synced(&entry.path(), &dst.join(entry.file_name()))?;
        }
        sync_dir(dst);
    } else if ft.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(src)?, dst)?;
    } else if ft.is_file() {
        let mut from = std::fs::File::open(src)?;
        let mut to = std::fs::OpenOptions::new().write(true).create_new(true).open(dst)?;
        io::copy(&mut from, &mut to)?;
        to.set_permissions(std::fs::Permissions::from_mode(meta.permissions().mode() & 0o7777))?;
        to.sync_all()?;
    } else if ft.is_fifo() || ft.is_socket() || ft.is_block_device() || ft.is_char_device() {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dst.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: mkfifo reads a NUL-terminated path we own.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// An I/O failure that passes by itself: a full disk or quota (space may be freed), an I/O
/// error (a network filesystem that comes back). Waited out, not failed.
pub fn is_transient_io(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT | libc::EIO | libc::ESTALE | libc::ETIMEDOUT))
}

/// Returns the allocator's free memory to the system: after a burst (a large submission
/// parsed and inserted) glibc keeps it in its free lists, and an idle daemon would go on
/// holding hundreds of MiB.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Fault injection for the crash tests: `COSMOS_FAULT_PAUSE=POINT:MS` stops the caller for MS
/// milliseconds at that point, so a test can `kill -9` the daemon there. The points: intake's
/// `claim`, `copy`, `commit` (right after each step) and the hook thread's `hook` (before it
/// delivers). Unset in production; reading it costs one environment lookup.
pub fn fault_pause(point: &str) {
    let Ok(spec) = std::env::var("COSMOS_FAULT_PAUSE") else { return };
    if let Some((at, ms)) = spec.split_once(':') {
        if at == point {
            if let Ok(ms) = ms.parse::<u64>() {
                tracing::warn!(point, ms, "COSMOS_FAULT_PAUSE: pausing");
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_temps_of_dead_processes_are_removed_and_the_living_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        // A pid that cannot be running: above the kernel's pid limit.
        let dead = 4_194_304 + 17;
        let mine = std::process::id();
        for name in [
            format!(".status.json.{dead}.3.tmp"),
            format!(".status.json.{mine}.4.tmp"),
            format!(".jobs.sb_abc.{dead}.tmp"),
            "status.json".to_string(),
            ".hidden".to_string(),
            format!(".x.{dead}.copying"),
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join(format!(".batch_x.{dead}.tmp"))).unwrap();
        assert_eq!(temp_owner(&format!(".a.b.{mine}.9.tmp")), Some(mine as i32));
        assert_eq!(temp_owner(".a.tmp"), None);
        remove_dead_temps(dir.path());
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        let mut want = vec![format!(".status.json.{mine}.4.tmp"), ".hidden".into(), format!(".x.{dead}.copying"), "status.json".into()];
        want.sort();
        assert_eq!(left, want);
    }

    #[test]
    fn open_exact_reads_what_was_checked_and_refuses_a_link_anywhere_on_the_way() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(base.join("inbox/videos")).unwrap();
        std::fs::create_dir_all(base.join("secret")).unwrap();
        std::fs::write(base.join("inbox/videos/a.mp4"), b"mine").unwrap();
        std::fs::write(base.join("secret/key.mp4"), b"not yours").unwrap();
        let mut f = open_exact(&base.join("inbox/videos/a.mp4")).unwrap();
        let mut text = String::new();
        f.read_to_string(&mut text).unwrap();
        assert_eq!(text, "mine");
        // The file swapped for a link after the check.
        std::fs::remove_file(base.join("inbox/videos/a.mp4")).unwrap();
        std::os::unix::fs::symlink(base.join("secret/key.mp4"), base.join("inbox/videos/a.mp4")).unwrap();
        let e = open_exact(&base.join("inbox/videos/a.mp4")).unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        // A folder on the way swapped for a link.
        std::fs::rename(base.join("inbox/videos"), base.join("inbox/old")).unwrap();
        std::os::unix::fs::symlink(base.join("secret"), base.join("inbox/videos")).unwrap();
        let e = open_exact(&base.join("inbox/videos/key.mp4")).unwrap_err();
        assert!(e.to_string().contains(&format!("{} is a symbolic link", base.join("inbox/videos").display())), "{e}");
        // Neither a fifo (which would block) nor a relative path.
        let fifo = base.join("pipe.mp4");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(open_exact(&fifo).unwrap_err().to_string().contains("a fifo"));
        assert!(open_exact(Path::new("inbox/a.mp4")).is_err());
    }

    use super::*;

    #[test]
    fn move_entry_renames_on_one_filesystem_and_copies_a_tree_whole() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("bundle");
        std::fs::create_dir_all(src.join("videos")).unwrap();
        std::fs::write(src.join("jobs.jsonl"), b"{}\n").unwrap();
        std::fs::write(src.join("videos/color.mp4"), b"video").unwrap();
        std::os::unix::fs::symlink("videos/color.mp4", src.join("link.mp4")).unwrap();
        let dst = dir.path().join("moved");
        assert_eq!(move_entry(&src, &dst).unwrap(), Moved::Renamed);
        assert!(!src.exists());
        assert_eq!(std::fs::read(dst.join("videos/color.mp4")).unwrap(), b"video");

        // The copy path (what EXDEV takes): same tree, symlink kept as a symlink.
        let copy = dir.path().join("copy");
        copy_synced(&dst, &copy).unwrap();
        assert_eq!(std::fs::read(copy.join("jobs.jsonl")).unwrap(), b"{}\n");
        assert_eq!(std::fs::read_link(copy.join("link.mp4")).unwrap(), Path::new("videos/color.mp4"));
        assert!(copy_synced(&dst, &copy).is_err(), "never copies over an existing entry");
    }

    #[test]
    fn move_entry_across_filesystems_copies_then_removes() {
        use std::os::unix::fs::MetadataExt;
        let home = tempfile::tempdir().unwrap();
        let Ok(other) = tempfile::tempdir_in("/dev/shm") else {
            println!("skipped: no /dev/shm");
            return;
        };
        if std::fs::metadata(home.path()).unwrap().dev() == std::fs::metadata(other.path()).unwrap().dev() {
            println!("skipped: /dev/shm is on the same filesystem");
            return;
        }
        let src = other.path().join("jobs.jsonl");
        std::fs::write(&src, b"line\n").unwrap();
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o640)).unwrap();
        let dst = home.path().join("jobs.jsonl");
        assert_eq!(move_entry(&src, &dst).unwrap(), Moved::Copied);
        assert!(!src.exists());
        assert_eq!(std::fs::read(&dst).unwrap(), b"line\n");
        assert_eq!(std::fs::metadata(&dst).unwrap().permissions().mode() & 0o777, 0o640);
        assert!(!move_temp(&dst).exists(), "no temp left behind");
    }
}
