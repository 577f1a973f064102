//! Shared use of one installation by every member of the group that owns its folders
//! (`cosmos` in the package): files made group-writable where the folder is setgid, and root
//! acting as the owner of the state folder, so that neither leaves a file the daemon cannot
//! write.

use crate::config::{Config, GlobalOpts};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error(
        "running as root: cannot act as uid {uid} gid {gid}, the owner of {} ({source}); nothing was changed. \
         Run it as a member of the folder's group instead",
        .path.display()
    )]
    Switch { path: PathBuf, uid: u32, gid: u32, source: std::io::Error },
}

/// Umask 0002 for the whole process: what the daemon and the CLI create is group-writable, so
/// in setgid folders (group `cosmos`) every member of the group can use it. Modes set
/// explicitly (`outbox.mode`) are not affected.
pub fn group_umask() {
    // SAFETY: umask(2) cannot fail; it only changes this process's creation mask.
    unsafe { libc::umask(0o002) };
}

/// Who owns the state folder (or, while it does not exist yet, the nearest folder above it).
fn state_owner(state: &Path) -> Option<(PathBuf, u32, u32)> {
    state.ancestors().find_map(|p| std::fs::metadata(p).ok().map(|m| (p.to_path_buf(), m.uid(), m.gid())))
}

/// The state folder the command will use, found without creating anything (`--root` creates
/// its folders when the configuration is loaded). None when the configuration does not load:
/// loading it again reports why, before anything is touched.
fn state_folder(global: &GlobalOpts) -> Option<PathBuf> {
    if let Some(root) = &global.root {
        return Some(crate::fsutil::absolute(root).join("state"));
    }
    let from_env = std::env::var_os("COSMOS_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from);
    Config::load(global.config.clone().or(from_env).as_deref()).ok().map(|l| l.config.paths.state)
}

/// Run as root, `cosmos` and `cosmosd` take the uid and gid of the state folder's owner before
/// they touch anything: the store, work folders and inbox files they then make are the daemon
/// user's, exactly as if that user had run them, where root-owned ones would later stop the
/// scheduler. (Refusing would push operators to `sudo -u cosmos`, which does the same by hand.)
/// A root-owned state folder is root's own installation: nothing changes. Returns who it now
/// acts as.
pub fn act_as_state_owner(global: &GlobalOpts) -> Result<Option<(u32, u32, PathBuf)>, ShareError> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let Some((path, uid, gid)) = state_folder(global).as_deref().and_then(state_owner) else { return Ok(None) };
    if uid == 0 {
        return Ok(None);
    }
    let fail = |path: &Path| ShareError::Switch { path: path.to_path_buf(), uid, gid, source: std::io::Error::last_os_error() };
    // Groups first: once the uid is dropped, they can no longer be changed. The owner's own
    // supplementary groups (from /etc/group), else only the folder's: root's (docker, disk)
    // must not come along.
    let groups = [gid as libc::gid_t];
    let name = user_name(uid);
    // SAFETY: plain system calls on this process (still single-threaded); a failure is
    // reported with errno. `name` is a NUL-terminated string that outlives the call.
    unsafe {
        let grouped = match &name {
            Some(n) => libc::initgroups(n.as_ptr(), gid),
            None => libc::setgroups(1, groups.as_ptr()),
        };
        if grouped != 0 {
            return Err(fail(&path));
        }
        if libc::setresgid(gid, gid, gid) != 0 {
            return Err(fail(&path));
        }
        if libc::setresuid(uid, uid, uid) != 0 {
            return Err(fail(&path));
        }
    }
    Ok(Some((uid, gid, path)))
}

/// The login name of `uid`, where the password database has one.
fn user_name(uid: u32) -> Option<std::ffi::CString> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: zeroed passwd is a valid out-parameter; getpwuid_r writes only within `buf`.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points at a NUL-terminated string inside `buf`.
    Some(unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) }.to_owned())
}

/// In a shared (setgid) inbox, what `cosmos submit` delivered under `tmp` is made readable by
/// the group (folders also writable and searchable: the daemon renames and empties them):
/// a copy keeps its source's mode, so a private `0600` job file would be unreadable to the
/// daemon. A hard link is the user's own file, whose mode is not ours to change: one the
/// group cannot read is replaced by a copy.
pub fn share_delivery(inbox: &Path, tmp: &Path) -> std::io::Result<()> {
    if !std::fs::metadata(inbox).is_ok_and(|m| m.mode() & libc::S_ISGID != 0) {
        return Ok(());
    }
    open_to_group(tmp)
}

fn open_to_group(path: &Path) -> std::io::Result<()> {
    let m = std::fs::symlink_metadata(path)?;
    let want = if m.is_dir() { 0o070 } else { 0o040 };
    let linked = m.is_file() && m.nlink() > 1;
    if linked && m.mode() & want != want {
        let copy = crate::fsutil::temp_beside(path);
        std::fs::copy(path, &copy)?;
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode((m.mode() & 0o7777) | want))?;
        std::fs::rename(&copy, path)?;
    } else if !linked && (m.is_dir() || m.is_file()) && m.mode() & want != want {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode((m.mode() & 0o7777) | want))?;
    }
    if m.is_dir() {
        for e in std::fs::read_dir(path)? {
            open_to_group(&e?.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_a_name_and_an_unused_uid_has_none() {
        assert_eq!(user_name(0).as_deref(), Some(c"root"));
        assert_eq!(user_name(64_999), None);
    }

    #[test]
    fn the_owner_is_found_above_a_state_folder_that_does_not_exist_yet() {
        let dir = tempfile::tempdir().unwrap();
        let (path, uid, _) = state_owner(&dir.path().join("a/b/state")).unwrap();
        assert_eq!(path, dir.path());
        assert_eq!(uid, std::fs::metadata(dir.path()).unwrap().uid());
    }

    #[test]
    fn a_private_delivery_in_a_shared_inbox_is_opened_to_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("inbox");
        std::fs::create_dir(&inbox).unwrap();
        std::fs::set_permissions(&inbox, std::fs::Permissions::from_mode(0o2775)).unwrap();
        let tmp = inbox.join(".bundle.tmp");
        std::fs::create_dir(&tmp).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700)).unwrap();
        let copied = tmp.join("jobs.jsonl");
        std::fs::write(&copied, b"{}\n").unwrap();
        std::fs::set_permissions(&copied, std::fs::Permissions::from_mode(0o600)).unwrap();
        let original = dir.path().join("video.mp4");
        std::fs::write(&original, b"v").unwrap();
        std::fs::set_permissions(&original, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::hard_link(&original, tmp.join("video.mp4")).unwrap();
        let public = dir.path().join("public.mp4");
        std::fs::write(&public, b"p").unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::hard_link(&public, tmp.join("public.mp4")).unwrap();
        share_delivery(&inbox, &tmp).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&tmp), 0o770);
        assert_eq!(mode(&copied), 0o640);
        assert_eq!(mode(&original), 0o600, "a hard-linked original keeps its own mode");
        assert_eq!(mode(&tmp.join("video.mp4")), 0o640, "its delivered name is a group-readable copy");
        assert_eq!(std::fs::read(tmp.join("video.mp4")).unwrap(), b"v");
        assert_eq!(std::fs::metadata(tmp.join("public.mp4")).unwrap().nlink(), 2, "a readable hard link stays a link");
    }
}
