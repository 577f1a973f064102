//! Input staging: each distinct input file of a submission is stored once under
//! `<state>/work/inputs/<sha256>.<ext>`, named by its content, and every run's spec names
//! that copy. 100,000 lines naming four videos make four staged files, not 100,000 folders;
//! the same video in a later submission is not stored again. A copy (a reflink where the
//! filesystem offers one), never a link: the sender may change or delete the original the
//! moment the submission is accepted, and nothing that runs changes with it.
//!
//! Two steps, so that nothing is written for a file that is rejected: [`Stager::plan`]
//! hashes each distinct input when first seen and points the spec at its content-addressed
//! name; [`Stager::commit`], once the whole file is valid, copies what is not stored yet,
//! checking each copy against the hash it was planned under. Both open the input with
//! [`open_exact`]: the path intake checked (resolved, inside the allowed folders) is the
//! file read, never a symbolic link swapped in since.

use crate::fsutil::{hex, open_exact, sync_dir};
use crate::spec::RunSpec;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("cannot read the input {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot store the input {path} as {staged}: {source}")]
    Write { path: PathBuf, staged: PathBuf, source: io::Error },
    #[error("the input {path} changed while it was being taken in (its content is no longer what was checked); submit it again")]
    Changed { path: PathBuf },
}

/// One distinct input of a submission.
struct Planned {
    source: PathBuf,
    sha256: String,
}

/// The inputs of one submission (or of the runs one `cosmos` command queues).
pub struct Stager {
    dir: PathBuf,
    /// Source path (its bytes: one pass to hash, not one per component) -> staged path:
    /// each distinct file is hashed once.
    by_source: HashMap<OsString, PathBuf>,
    /// Staged path -> what to copy there at commit.
    planned: HashMap<PathBuf, Planned>,
    /// Resolve links in a source first (the CLI, on the user's own files); intake's paths
    /// were resolved and checked already, and a link found now is refused.
    follow_links: bool,
}

impl Stager {
    /// `dir`: the content-addressed store (`Layout::inputs`).
    pub fn new(dir: &Path) -> Stager {
        Stager { dir: dir.to_path_buf(), by_source: HashMap::new(), planned: HashMap::new(), follow_links: false }
    }

    /// A stager for `cosmos batch-inference` and `inference`: a prompt's videos may be links
    /// (resolved here); what they resolve to is what is read.
    pub fn following_links(dir: &Path) -> Stager {
        Stager { follow_links: true, ..Stager::new(dir) }
    }

    /// Points every input of `spec` at its content-addressed name (hashing each distinct
    /// file the first time it is seen). Nothing is written yet.
    pub fn plan(&mut self, spec: &mut RunSpec) -> Result<(), StageError> {
        spec.visual_input = self.place(&spec.visual_input)?;
        for control in spec.controls.values_mut() {
            if let Some(input) = &control.input {
                control.input = Some(self.place(input)?);
            }
            if let Some(mask) = &control.mask_path {
                control.mask_path = Some(self.place(mask)?);
            }
        }
        Ok(())
    }

    fn place(&mut self, source: &Path) -> Result<PathBuf, StageError> {
        if let Some(staged) = self.by_source.get(source.as_os_str()) {
            return Ok(staged.clone());
        }
        if source.starts_with(&self.dir) {
            // Already a staged input (a run queued again).
            return Ok(source.to_path_buf());
        }
        let read_err = |e| StageError::Read { path: source.to_path_buf(), source: e };
        let exact = match self.follow_links {
            true => std::fs::canonicalize(source).map_err(read_err)?,
            false => source.to_path_buf(),
        };
        let mut h = Sha256::new();
        hash_into(&mut open_exact(&exact).map_err(read_err)?, &mut h).map_err(read_err)?;
        let sha256 = hex(&h.finalize());
        let staged = self.dir.join(staged_name(source, &sha256));
        self.by_source.insert(source.as_os_str().to_os_string(), staged.clone());
        self.planned.entry(staged.clone()).or_insert(Planned { source: exact, sha256 });
        Ok(staged)
    }

    /// How many distinct inputs this stager planned.
    pub fn len(&self) -> usize {
        self.planned.len()
    }

    pub fn is_empty(&self) -> bool {
        self.planned.is_empty()
    }

    /// Stores every planned input that is not stored yet, synced, each checked against the
    /// content it was planned under. Returns the paths it created (to remove should the
    /// submission not commit after all).
    pub fn commit(self) -> Result<Vec<PathBuf>, StageError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| StageError::Write {
            path: self.dir.clone(),
            staged: self.dir.clone(),
            source,
        })?;
        let mut created = Vec::new();
        for (staged, p) in self.planned {
            if staged.is_file() {
                // Stored already: its time is brought up to now, so that `cosmos prune`
                // (which removes only inputs older than its cut-off that no kept run
                // names) leaves it to the runs about to name it. Best effort.
                let _ = std::fs::File::options().write(true).open(&staged).and_then(|f| f.set_modified(std::time::SystemTime::now()));
                continue;
            }
            let tmp = crate::fsutil::temp_beside(&staged);
            let write_err = |source| StageError::Write { path: p.source.clone(), staged: staged.clone(), source };
            let got = copy_hashing(&p.source, &tmp).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                match e {
                    CopyError::Read(source) => StageError::Read { path: p.source.clone(), source },
                    CopyError::Write(source) => write_err(source),
                }
            })?;
            if got != p.sha256 {
                let _ = std::fs::remove_file(&tmp);
                return Err(StageError::Changed { path: p.source });
            }
            std::fs::rename(&tmp, &staged).map_err(write_err)?;
            created.push(staged);
        }
        sync_dir(&self.dir);
        Ok(created)
    }
}

/// `<sha256>.<ext>`, the source's extension kept when it is a plain one (`mp4`).
fn staged_name(source: &Path, sha256: &str) -> String {
    match source.extension().and_then(|e| e.to_str()) {
        Some(ext) if !ext.is_empty() && ext.len() <= 8 && ext.chars().all(|c| c.is_ascii_alphanumeric()) => {
            format!("{sha256}.{}", ext.to_ascii_lowercase())
        }
        _ => sha256.to_string(),
    }
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies `src` to `dst` (made new), fsynced, and returns the sha256 of what was written: a
/// reflink where the filesystem offers one (then hashed), else a copy hashed on the way.
fn copy_hashing(src: &Path, dst: &Path) -> Result<String, CopyError> {
    let mut from = open_exact(src).map_err(CopyError::Read)?;
    let mut to = std::fs::OpenOptions::new().write(true).create_new(true).open(dst).map_err(CopyError::Write)?;
    let mut h = Sha256::new();
    if reflink(&from, &to) {
        // Same blocks, shared: hash what the copy holds.
        let mut check = std::fs::File::open(dst).map_err(CopyError::Write)?;
        hash_into(&mut check, &mut h).map_err(CopyError::Read)?;
    } else {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = from.read(&mut buf).map_err(CopyError::Read)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            to.write_all(&buf[..n]).map_err(CopyError::Write)?;
        }
    }
    to.sync_all().map_err(CopyError::Write)?;
    Ok(hex(&h.finalize()))
}

fn hash_into(f: &mut std::fs::File, h: &mut Sha256) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

/// FICLONE: the destination shares the source's blocks (btrfs, XFS, ...); copy-on-write
/// keeps it unchanged when the source is later rewritten.
fn reflink(from: &std::fs::File, to: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: ioctl(FICLONE) on two descriptors we own; failure is reported, nothing else.
    unsafe { libc::ioctl(to.as_raw_fd(), FICLONE as _, from.as_raw_fd()) == 0 }
}

/// Removes inputs a rolled-back submission stored (content no committed run names).
pub fn remove_created(created: &[PathBuf]) {
    for p in created {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Control, Hint, Settings, SpecStyle};
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt;

    fn spec(video: &Path, depth: &Path) -> RunSpec {
        let mut controls = BTreeMap::new();
        controls.insert(Hint::Depth, Control::from_file(0.5, depth.to_path_buf()));
        controls.insert(Hint::Edge, Control::generated(0.5));
        RunSpec {
            video: None,
            style: SpecStyle::Jsonl,
            name: None,
            prompt: "p".into(),
            negative_prompt: None,
            visual_input: video.to_path_buf(),
            controls,
            settings: Settings::default(),
            priority: 0,
            upscale_weight: None,
            sim: None,
        }
    }

    #[test]
    fn each_distinct_input_is_stored_once_as_a_copy_named_by_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("inbox");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("color.mp4"), b"color").unwrap();
        std::fs::write(src.join("d.mp4"), b"depth").unwrap();
        std::fs::write(src.join("same-as-color.mp4"), b"color").unwrap();
        let store = dir.path().join("work/inputs");
        let mut stager = Stager::new(&store);
        let mut specs: Vec<RunSpec> = (0..1000).map(|_| spec(&src.join("color.mp4"), &src.join("d.mp4"))).collect();
        specs.push(spec(&src.join("same-as-color.mp4"), &src.join("d.mp4")));
        for s in &mut specs {
            stager.plan(s).unwrap();
        }
        assert!(!store.exists(), "nothing is written before the commit");
        assert_eq!(stager.len(), 2, "two distinct contents");
        let created = stager.commit().unwrap();
        assert_eq!(created.len(), 2);
        assert_eq!(std::fs::read_dir(&store).unwrap().count(), 2, "1,001 runs, two stored files");
        let staged = &specs[0].visual_input;
        assert_eq!(staged, &specs[1000].visual_input, "the same content, whatever its name");
        assert!(staged.file_name().unwrap().to_str().unwrap().ends_with(".mp4"));
        assert_eq!(std::fs::read(staged).unwrap(), b"color");
        assert_ne!(std::fs::metadata(staged).unwrap().ino(), std::fs::metadata(src.join("color.mp4")).unwrap().ino(), "a copy, not a link");
        // The sender rewrites the original in place: the staged input stays as it was.
        std::fs::write(src.join("color.mp4"), b"changed").unwrap();
        assert_eq!(std::fs::read(staged).unwrap(), b"color");
        // A later submission of the same content stores nothing new.
        let mut again = Stager::new(&store);
        let mut s = spec(&src.join("same-as-color.mp4"), &src.join("d.mp4"));
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        std::fs::File::options().write(true).open(staged).unwrap().set_modified(old).unwrap();
        again.plan(&mut s).unwrap();
        assert_eq!(again.commit().unwrap().len(), 0);
        // ... but brings the stored copy's time up to now (`cosmos prune` keeps it).
        assert!(std::fs::metadata(staged).unwrap().modified().unwrap() > old + std::time::Duration::from_secs(86_400));
    }

    #[test]
    fn an_input_swapped_for_a_link_after_its_check_is_refused_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::write(base.join("v.mp4"), b"the video").unwrap();
        std::fs::write(base.join("secret.mp4"), b"the video").unwrap();
        let mut stager = Stager::new(&base.join("inputs"));
        let mut s = spec(&base.join("v.mp4"), &base.join("v.mp4"));
        stager.plan(&mut s).unwrap();
        // Same bytes, so only the link itself can give it away.
        std::fs::remove_file(base.join("v.mp4")).unwrap();
        std::os::unix::fs::symlink(base.join("secret.mp4"), base.join("v.mp4")).unwrap();
        match stager.commit() {
            Err(StageError::Read { source, .. }) => assert!(source.to_string().contains("is a symbolic link"), "{source}"),
            Err(e) => panic!("{e}"),
            Ok(created) => panic!("followed the link: {created:?}"),
        }
        assert_eq!(std::fs::read_dir(base.join("inputs")).unwrap().count(), 0);
        // Planned over a link: refused at once.
        let mut again = Stager::new(&base.join("inputs"));
        let mut s = spec(&base.join("v.mp4"), &base.join("v.mp4"));
        assert!(matches!(again.plan(&mut s), Err(StageError::Read { .. })));
    }

    #[test]
    fn an_input_that_changes_between_check_and_copy_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("v.mp4"), b"before").unwrap();
        let mut stager = Stager::new(&dir.path().join("inputs"));
        let mut s = spec(&dir.path().join("v.mp4"), &dir.path().join("v.mp4"));
        stager.plan(&mut s).unwrap();
        std::fs::write(dir.path().join("v.mp4"), b"after").unwrap();
        assert!(matches!(stager.commit(), Err(StageError::Changed { .. })));
        assert_eq!(std::fs::read_dir(dir.path().join("inputs")).unwrap().count(), 0, "no half-made copy left");
    }
}
