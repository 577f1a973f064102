//! `cluster.shared_dir`, the storage every host mounts: the inputs of runs that may run on
//! any host, and the run folders built by the host that ran them until the origin host
//! takes them into its outbox.
//!
//! - `inputs/<sha256>.<ext>`: content-addressed, as `<state>/work/inputs/` is (the same
//!   names): a video named by 100,000 runs is copied once, and a copy already there is
//!   never written again.
//! - `results/<token>/run_<id>/`: one folder per attempt, named by its fencing token, so a
//!   host whose lease lapsed can never write over the folder of the attempt that counts;
//!   the origin host takes only the folder the queue committed.
//!
//! Each file appears by rename from a temporary name beside it, so no host reads half of one.

use crate::fsutil::{at, PathIo};
use crate::spec::RunSpec;
use std::path::{Path, PathBuf};

/// The shared folder's layout.
#[derive(Debug, Clone)]
pub struct SharedDir {
    root: PathBuf,
}

impl SharedDir {
    pub fn new(root: &Path) -> SharedDir {
        SharedDir { root: root.to_path_buf() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn inputs(&self) -> PathBuf {
        self.root.join("inputs")
    }

    /// Where the attempt under `token` builds its run folders.
    pub fn results(&self, token: super::Token) -> PathBuf {
        self.root.join("results").join(token.to_string())
    }

    pub fn create_all(&self) -> Result<(), PathIo> {
        for d in [self.inputs(), self.root.join("results")] {
            std::fs::create_dir_all(&d).map_err(at("cannot create", &d))?;
        }
        Ok(())
    }

    /// Points every input of `spec` that lies in this host's content-addressed store
    /// (`local_inputs`) at the shared copy of the same name, copying the file there first
    /// if it is not there yet. Inputs elsewhere are left as they are (they must be on
    /// storage every host sees).
    pub fn share_inputs(&self, spec: &mut RunSpec, local_inputs: &Path) -> Result<(), PathIo> {
        let place = |p: &Path| -> Result<PathBuf, PathIo> {
            match p.strip_prefix(local_inputs) {
                Ok(rel) => {
                    let shared = self.inputs().join(rel);
                    self.copy_once(p, &shared)?;
                    Ok(shared)
                }
                Err(_) => Ok(p.to_path_buf()),
            }
        };
        spec.visual_input = place(&spec.visual_input)?;
        for control in spec.controls.values_mut() {
            if let Some(input) = &control.input {
                control.input = Some(place(input)?);
            }
            if let Some(mask) = &control.mask_path {
                control.mask_path = Some(place(mask)?);
            }
        }
        Ok(())
    }

    /// A copy of `file` among the shared inputs, named by its content (the output video
    /// of a run an upscale run will read, wherever that runs).
    pub fn share_file(&self, file: &Path) -> Result<PathBuf, PathIo> {
        let digest = crate::fsutil::sha256_file(file).map_err(at("cannot hash", file))?;
        let ext = file.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
        let shared = self.inputs().join(format!("{digest}{ext}"));
        self.copy_once(file, &shared)?;
        Ok(shared)
    }

    /// Copies `from` to `to` unless `to` is there already (content-addressed: the same).
    fn copy_once(&self, from: &Path, to: &Path) -> Result<(), PathIo> {
        if to.is_file() {
            // Named again: its time says so, and pruning (by age) leaves it be. (Setting the
            // time needs only ownership, not write permission: a read-only open will do.)
            if let Ok(f) = std::fs::File::open(to) {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
            return Ok(());
        }
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).map_err(at("cannot create", dir))?;
        }
        let tmp = crate::fsutil::temp_beside(to);
        let copied = std::fs::copy(from, &tmp).map_err(at("cannot copy into the shared folder", from)).and_then(|_| {
            std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(at("cannot sync", &tmp))?;
            std::fs::rename(&tmp, to).map_err(at("cannot rename into place", to))
        });
        if copied.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        copied
    }
}

impl SharedDir {
    /// Removes shared inputs not named for `older_than` (by their time, which every new
    /// use renews) that no run still open in the queue names (`open`: their paths).
    /// Returns how many went.
    pub fn prune_inputs(&self, older_than: std::time::Duration, open: &std::collections::HashSet<PathBuf>) -> usize {
        let Ok(entries) = std::fs::read_dir(self.inputs()) else { return 0 };
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        for e in entries.flatten() {
            let path = e.path();
            let old = e
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= older_than);
            if old && !open.contains(&path) && std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

/// Copies the folder `from` (on the shared storage) to `to` (in the outbox), built under
/// `staging` (on the outbox's filesystem) and renamed into place whole. Already there (a
/// delivery repeated after a crash): left as it is.
pub fn copy_folder_into(from: &Path, to: &Path, staging: &Path) -> Result<(), PathIo> {
    if to.is_dir() {
        return Ok(());
    }
    let tmp = staging.join(to.file_name().unwrap_or_default());
    let _ = std::fs::remove_dir_all(&tmp);
    let copied = copy_tree(from, &tmp).and_then(|()| {
        crate::outbox::sync_tree(&tmp);
        std::fs::rename(&tmp, to).map_err(at("cannot publish", to))
    });
    if copied.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    copied
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), PathIo> {
    std::fs::create_dir_all(to).map_err(at("cannot create", to))?;
    for entry in std::fs::read_dir(from).map_err(at("cannot read", from))? {
        let entry = entry.map_err(at("cannot read", from))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().map_err(at("cannot read", &src))?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_file() {
            std::fs::copy(&src, &dst).map_err(at("cannot copy", &src))?;
            // The mode the executing host gave it (outbox.mode) comes with the copy.
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Settings, SpecStyle};

    fn spec_on(video: PathBuf) -> RunSpec {
        RunSpec {
            video: None,
            style: SpecStyle::Cli,
            name: None,
            prompt: "p".into(),
            negative_prompt: None,
            visual_input: video,
            controls: Default::default(),
            settings: Settings::default(),
            priority: 0,
            upscale_weight: None,
            sim: None,
        }
    }

    #[test]
    fn inputs_in_the_local_store_are_shared_once_and_others_left_alone() {
        let t = tempfile::tempdir().expect("tempdir");
        let local = t.path().join("state/work/inputs");
        std::fs::create_dir_all(&local).expect("mkdir");
        let video = local.join("abc.mp4");
        std::fs::write(&video, b"video bytes").expect("write");
        let shared = SharedDir::new(&t.path().join("shared"));
        shared.create_all().expect("create");
        let mut spec = spec_on(video.clone());
        shared.share_inputs(&mut spec, &local).expect("share");
        assert_eq!(spec.visual_input, shared.inputs().join("abc.mp4"));
        assert_eq!(std::fs::read(&spec.visual_input).expect("read"), b"video bytes");
        // Already there: not written again (content-addressed), but its time is renewed.
        let shared_copy = shared.inputs().join("abc.mp4");
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
        std::fs::File::open(&shared_copy).and_then(|f| f.set_modified(old)).expect("age it");
        std::fs::write(&video, b"changed").expect("write");
        let mut again = spec_on(video);
        shared.share_inputs(&mut again, &local).expect("share");
        assert_eq!(std::fs::read(&again.visual_input).expect("read"), b"video bytes");
        let age = std::fs::metadata(&shared_copy).and_then(|m| m.modified()).expect("mtime").elapsed().unwrap_or_default();
        assert!(age < std::time::Duration::from_secs(3600), "a use renews the copy's time: {age:?}");
        // Outside the local store: as it was.
        let mut elsewhere = spec_on(PathBuf::from("/mnt/videos/x.mp4"));
        shared.share_inputs(&mut elsewhere, &local).expect("share");
        assert_eq!(elsewhere.visual_input, PathBuf::from("/mnt/videos/x.mp4"));
    }

    #[test]
    fn shared_inputs_are_pruned_only_when_old_and_named_by_no_open_run() {
        let t = tempfile::tempdir().expect("tempdir");
        let shared = SharedDir::new(t.path());
        shared.create_all().expect("create");
        let (a, b) = (shared.inputs().join("a.mp4"), shared.inputs().join("b.mp4"));
        for f in [&a, &b] {
            std::fs::write(f, b"v").expect("write");
        }
        let none = std::collections::HashSet::new();
        assert_eq!(shared.prune_inputs(std::time::Duration::from_secs(3600), &none), 0, "young files stay");
        let open: std::collections::HashSet<PathBuf> = [a.clone()].into();
        assert_eq!(shared.prune_inputs(std::time::Duration::ZERO, &open), 1);
        assert!(a.is_file() && !b.exists(), "the one an open run names stays");
    }

    #[test]
    fn a_folder_is_delivered_whole_and_once() {
        let t = tempfile::tempdir().expect("tempdir");
        let from = t.path().join("results/7/run_x");
        std::fs::create_dir_all(from.join("controls")).expect("mkdir");
        std::fs::write(from.join("output.mp4"), b"v").expect("write");
        std::fs::write(from.join("controls/depth.mp4"), b"d").expect("write");
        let (outbox, staging) = (t.path().join("outbox"), t.path().join("outbox/.staging"));
        std::fs::create_dir_all(&staging).expect("mkdir");
        let to = outbox.join("run_x");
        copy_folder_into(&from, &to, &staging).expect("copy");
        assert_eq!(std::fs::read(to.join("controls/depth.mp4")).expect("read"), b"d");
        assert_eq!(std::fs::read_dir(&staging).expect("staging").count(), 0, "nothing left in staging");
        std::fs::write(from.join("output.mp4"), b"other").expect("write");
        copy_folder_into(&from, &to, &staging).expect("again");
        assert_eq!(std::fs::read(to.join("output.mp4")).expect("read"), b"v", "a delivered folder is not replaced");
    }
}
