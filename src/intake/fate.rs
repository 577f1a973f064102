//! Claim and fate: one inbox entry becomes exactly one submission.

use super::{classify, stage, stem_of, EntryKind, Layout};
use crate::config::Config;
use crate::ids::{self, IdKind};
use crate::spec::{self, nvidia::write_atomic, FileKind, JsonlLimits, Problem, Report};
use crate::fsutil::{at, sha256_file, sync_dir, PathIo};
use crate::store::{Store, StoreError, Submission};
use sha2::{Digest, Sha256};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error(transparent)]
    Io(#[from] PathIo),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Outbox(#[from] crate::outbox::OutboxError),
}

type Result<T> = std::result::Result<T, IntakeError>;

/// What became of a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Accepted { runs: u64 },
    Duplicate { of: String },
    Rejected { problems: u64 },
}

/// One entry taken in.
#[derive(Debug, Clone)]
pub struct Taken {
    pub submission: String,
    pub name: String,
    pub fate: Fate,
    pub receipt: PathBuf,
}

/// Turns inbox entries into submissions; owns the store connection it writes with.
pub struct Intake {
    layout: Layout,
    store: Store,
    roots: Vec<PathBuf>,
    limits: JsonlLimits,
    file_mode: u32,
}

/// The shape of a claimed entry.
enum Claimed {
    File,
    Bundle,
    Foreign(String),
}

impl Intake {
    pub fn new(config: &Config, store: Store) -> io::Result<Intake> {
        let layout = Layout::new(config);
        layout.create_all()?;
        let mut intake = Intake { layout, store, roots: Vec::new(), limits: JsonlLimits::default(), file_mode: 0o644 };
        intake.set_config(config);
        Ok(intake)
    }

    /// Takes the settings that a reload may change (input roots, file mode).
    pub fn set_config(&mut self, config: &Config) {
        let mut roots = config.paths.input_roots.clone();
        roots.push(config.paths.inbox.clone());
        self.roots = roots;
        self.file_mode = config.outbox.mode.0;
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Claims `inbox/<name>` and decides its fate. `Ok(None)`: it was gone already.
    pub fn take(&mut self, name: &str) -> Result<Option<Taken>> {
        let source = self.layout.inbox.join(name);
        let sb = ids::new_id(IdKind::Submission);
        let claimed = self.layout.claimed.join(format!("{sb}__{name}"));
        match std::fs::rename(&source, &claimed) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PathIo { what: "cannot claim", path: source, source: e }.into()),
        }
        // The claim must survive a crash before anything depends on it.
        sync_dir(&self.layout.claimed);
        fault_pause("claim");
        tracing::debug!(submission = %sb, file = name, "claimed");
        self.process(&claimed, &sb, name).map(Some)
    }

    /// Finishes every claim a crash (or an earlier error) left in `claimed/`.
    pub fn recover(&mut self) -> Result<Vec<Taken>> {
        let mut entries: Vec<(String, String, PathBuf)> = Vec::new();
        let dir = &self.layout.claimed;
        for entry in std::fs::read_dir(dir).map_err(at("cannot list", dir))? {
            let entry = entry.map_err(at("cannot list", dir))?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            match file_name.split_once("__") {
                Some((sb, name)) if ids::parse_prefix(sb) == Ok(IdKind::Submission) && sb.len() == 15 => {
                    entries.push((sb.to_string(), name.to_string(), entry.path()))
                }
                _ => tracing::warn!(path = %entry.path().display(), "unexpected entry in claimed/, left alone"),
            }
        }
        entries.sort();
        let mut done = Vec::new();
        for (sb, name, path) in entries {
            tracing::info!(submission = %sb, file = %name, "finishing an interrupted claim");
            done.push(self.process(&path, &sb, &name)?);
        }
        Ok(done)
    }

    fn process(&mut self, claimed: &Path, sb: &str, name: &str) -> Result<Taken> {
        let shape = claimed_shape(claimed);
        if let Some(sub) = self.existing(sb)? {
            // The decision was committed before a crash: only the idempotent steps remain.
            return self.finish(claimed, &sub, &shape, None);
        }
        let sha = hash_entry(claimed, &shape).map_err(at("cannot read", claimed))?;
        if let Some(prev) = self.store.submission_by_sha256(&sha)? {
            let sub = self.store.record_submission(Some(sb), name, &sha, "duplicate", Some(&prev.id), 0)?;
                return self.finish(claimed, &sub, &shape, None);
        }
        let (report, display) = self.validate(claimed, name, &shape, &mut |_| {});
        if !report.is_ok() {
            return self.reject(claimed, sb, name, &sha, &shape, &report, &display);
        }
        // Second pass: stage each run's inputs and insert it, in one transaction.
        let work = self.layout.work.clone();
        let (base, job_path) = self.job_file(claimed, &shape);
        let roots = self.roots.clone();
        let limits = self.limits.clone();
        let mut writer = self.store.begin_submission_with_id(sb, name, &sha, &stem_of(name))?;
        let mut staged: Vec<String> = Vec::new();
        let mut failure: Option<IntakeError> = None;
        let report = match &job_path {
            Some(path) => spec::parse_job_file_at(path, &base, &roots, &limits, &mut |mut job| {
                if failure.is_some() {
                    return;
                }
                let run_id = ids::new_id(IdKind::Run);
                if let Err(e) = stage::stage_run(&work, &run_id, &mut job.spec) {
                    failure = Some(PathIo { what: "cannot stage the inputs of", path: work.join(&run_id), source: e }.into());
                    return;
                }
                staged.push(run_id.clone());
                if let Err(e) = writer.add_with_id(&run_id, &job) {
                    failure = Some(e.into());
                }
            }),
            None => Report::default(),
        };
        if let Some(e) = failure {
            drop(writer);
            stage::unstage(&work, &staged);
            return Err(e);
        }
        if !report.is_ok() {
            // A file the first pass accepted changed under us (an input vanished).
            drop(writer);
            stage::unstage(&work, &staged);
            return self.reject(claimed, sb, name, &sha, &shape, &report, &display);
        }
        let (sub, _batch) = writer.commit()?;
        fault_pause("commit");
        self.finish(claimed, &sub, &shape, None)
    }

    fn existing(&self, sb: &str) -> Result<Option<Submission>> {
        match self.store.submission(sb) {
            Ok(s) => Ok(Some(s)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The job file to parse and the folder its relative paths resolve against: the inbox
    /// for a top-level file, the bundle for a bundle.
    fn job_file(&self, claimed: &Path, shape: &Claimed) -> (PathBuf, Option<PathBuf>) {
        match shape {
            Claimed::File => (self.layout.inbox.clone(), Some(claimed.to_path_buf())),
            Claimed::Bundle => {
                let files = bundle_job_files(claimed).unwrap_or_default();
                (claimed.to_path_buf(), if files.len() == 1 { files.into_iter().next() } else { None })
            }
            Claimed::Foreign(_) => (self.layout.inbox.clone(), None),
        }
    }

    /// Validates a claimed entry; returns the report and the name to show in errors.
    fn validate(&self, claimed: &Path, name: &str, shape: &Claimed, sink: &mut dyn FnMut(spec::Job)) -> (Report, PathBuf) {
        let mut report = Report::default();
        let problem = |message: String| Problem { line: None, key: None, message };
        match shape {
            Claimed::Foreign(why) => {
                report.add(problem(why.clone()));
                (report, PathBuf::from(name))
            }
            Claimed::File => {
                let report = spec::parse_job_file_at(claimed, &self.layout.inbox, &self.roots, &self.limits, sink);
                (report, PathBuf::from(name))
            }
            Claimed::Bundle => {
                let files = match bundle_job_files(claimed) {
                    Ok(f) => f,
                    Err(e) => {
                        report.add(problem(format!("cannot list the bundle folder: {e}")));
                        return (report, PathBuf::from(name));
                    }
                };
                match files.as_slice() {
                    [file] => {
                        let display = Path::new(name).join(file.file_name().unwrap_or_default());
                        (spec::parse_job_file_at(file, claimed, &self.roots, &self.limits, sink), display)
                    }
                    [] => {
                        report.add(problem("the bundle folder holds no .jsonl or .json job file at its top level".into()));
                        (report, PathBuf::from(name))
                    }
                    many => {
                        let names: Vec<String> = many.iter().filter_map(|f| f.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
                        report.add(problem(format!("a bundle folder holds one job file; this one has {}: {}", many.len(), names.join(", "))));
                        (report, PathBuf::from(name))
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn reject(&mut self, claimed: &Path, sb: &str, name: &str, sha: &str, shape: &Claimed, report: &Report, display: &Path) -> Result<Taken> {
        let sub = self.store.record_submission(Some(sb), name, sha, "rejected", None, report.problem_count())?;
        self.finish(claimed, &sub, shape, Some(report.render(display)))
    }

    /// The steps after the decision, each safe to repeat: rejected/ folder, receipt, archive.
    fn finish(&mut self, claimed: &Path, sub: &Submission, shape: &Claimed, errors: Option<String>) -> Result<Taken> {
        let name = sub.file.clone();
        let stem = stem_of(&name);
        let fate = match sub.status.as_str() {
            "accepted" => Fate::Accepted { runs: sub.runs },
            "duplicate" => Fate::Duplicate { of: sub.duplicate_of.clone().unwrap_or_default() },
            _ => Fate::Rejected { problems: sub.problems },
        };
        if let Fate::Rejected { .. } = fate {
            let errors = match errors {
                Some(e) => e,
                None => {
                    let (report, display) = self.validate(claimed, &name, shape, &mut |_| {});
                    report.render(&display)
                }
            };
            self.write_rejected(claimed, &name, &stem, &sub.id, &errors)?;
        }
        let receipt = self.write_receipt(sub)?;
        let archived = self.layout.archive.join(format!("{}__{name}", sub.id));
        if claimed.exists() {
            std::fs::rename(claimed, &archived).map_err(at("cannot archive", claimed))?;
            sync_dir(&self.layout.archive);
        }
        Ok(Taken { submission: sub.id.clone(), name, fate, receipt })
    }

    fn write_rejected(&self, claimed: &Path, name: &str, stem: &str, sb: &str, errors: &str) -> Result<()> {
        let final_dir = self.layout.rejected.join(format!("{stem}.{sb}"));
        if final_dir.exists() {
            return Ok(());
        }
        let tmp = self.layout.rejected.join(format!(".{stem}.{sb}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(at("cannot create", &tmp))?;
        copy_original(claimed, &tmp.join(name)).map_err(at("cannot copy the original into", &tmp))?;
        let errors_path = tmp.join("errors.txt");
        write_atomic(&errors_path, errors.as_bytes()).map_err(at("cannot write", &errors_path))?;
        let _ = std::fs::set_permissions(&errors_path, std::fs::Permissions::from_mode(self.file_mode));
        std::fs::rename(&tmp, &final_dir).map_err(at("cannot publish", &final_dir))?;
        sync_dir(&self.layout.rejected);
        Ok(())
    }

    /// Writes (or rewrites) the receipt of a submission from the store.
    pub fn write_receipt(&self, sub: &Submission) -> Result<PathBuf> {
        let outbox = crate::outbox::Outbox::new(&self.layout.outbox, self.file_mode);
        Ok(outbox.write_receipt(&self.store, sub)?)
    }
}

fn claimed_shape(path: &Path) -> Claimed {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => return Claimed::Foreign(format!("cannot read it: {e}")),
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        Claimed::Foreign("a symlink; put the file itself into the inbox".into())
    } else if ft.is_dir() {
        Claimed::Bundle
    } else if ft.is_fifo() || ft.is_block_device() || ft.is_char_device() || ft.is_socket() {
        Claimed::Foreign("not a regular file (a fifo, socket or device)".into())
    } else if FileKind::of(path).is_some() {
        Claimed::File
    } else {
        Claimed::Foreign("not a submission: expected NAME.jsonl (jobs), NAME.json (one run spec) or a bundle folder".into())
    }
}

/// The job files at the top of a bundle, without hidden names.
fn bundle_job_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    crate::spec::bundle_job_files(dir)
}

/// The sha256 the daemon will record for a job file or a bundle folder (what `cosmos
/// submit` looks for in the store).
pub fn submission_sha256(path: &Path) -> io::Result<String> {
    let shape = if std::fs::symlink_metadata(path)?.is_dir() { Claimed::Bundle } else { Claimed::File };
    hash_entry(path, &shape)
}

/// sha256 of a file's bytes; of a bundle, over its sorted (path, sha256) list; of anything
/// else, over its kind, so that it still has a stable identity.
fn hash_entry(path: &Path, shape: &Claimed) -> io::Result<String> {
    match shape {
        Claimed::File => sha256_file(path),
        Claimed::Bundle => {
            let mut files = Vec::new();
            walk(path, path, &mut files)?;
            files.sort();
            let mut h = Sha256::new();
            for (rel, digest) in files {
                h.update(rel.as_bytes());
                h.update([0]);
                h.update(digest.as_bytes());
                h.update(b"\n");
            }
            Ok(crate::fsutil::hex(&h.finalize()))
        }
        Claimed::Foreign(_) => {
            let meta = std::fs::symlink_metadata(path)?;
            if meta.file_type().is_file() {
                sha256_file(path)
            } else {
                // Fifos and links have no content to hash: name them by their place.
                let mut h = Sha256::new();
                h.update(path.as_os_str().as_encoded_bytes());
                Ok(crate::fsutil::hex(&h.finalize()))
            }
        }
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let ft = entry.file_type()?;
        let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
        if ft.is_dir() {
            walk(root, &path, out)?;
        } else if ft.is_file() {
            out.push((rel, sha256_file(&path)?));
        } else if ft.is_symlink() {
            out.push((rel, format!("-> {}", std::fs::read_link(&path)?.display())));
        }
    }
    Ok(())
}

/// Copies (hard-links where it can) a claimed original into the rejected folder.
fn copy_original(src: &Path, dst: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    let ft = meta.file_type();
    if ft.is_file() {
        crate::fsutil::link_or_copy(src, dst)?;
    } else if ft.is_dir() {
        let options = fs_extra::dir::CopyOptions::new().copy_inside(true);
        fs_extra::dir::copy(src, dst, &options).map_err(|e| io::Error::other(e.to_string()))?;
    }
    // Links, fifos and devices are not copied; errors.txt says what they were, and the
    // original stays in the archive.
    Ok(())
}

/// Fault injection for the crash tests: `COSMOS_FAULT_PAUSE=claim:MS` (or `commit:MS`)
/// makes intake stop for MS milliseconds right after that step, so a test can `kill -9`
/// the daemon there. Unset in production; reading it costs one lookup per claim.
fn fault_pause(point: &str) {
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

/// Whether `path` looks wholly written (DESIGN.md section 3): a job file whose last line has
/// no newline and does not parse is still being written.
pub fn looks_complete(path: &Path) -> bool {
    match classify(path) {
        Some(EntryKind::JobFile) => {}
        _ => return true,
    }
    let Ok(mut f) = std::fs::File::open(path) else { return true };
    let Ok(len) = f.metadata().map(|m| m.len()) else { return true };
    if len == 0 {
        return false;
    }
    use std::io::{Seek, SeekFrom};
    // Read the tail, at most one maximal line.
    let tail_len = len.min(1 << 20);
    if f.seek(SeekFrom::Start(len - tail_len)).is_err() {
        return true;
    }
    let mut tail = Vec::with_capacity(tail_len as usize);
    if f.take(tail_len).read_to_end(&mut tail).is_err() {
        return true;
    }
    if FileKind::of(path) == Some(FileKind::RunSpec) {
        if len > tail_len {
            return true;
        }
        return !matches!(serde_json::from_slice::<serde_json::Value>(&tail), Err(e) if e.is_eof());
    }
    if tail.last() == Some(&b'\n') {
        return true;
    }
    let last = match tail.iter().rposition(|&b| b == b'\n') {
        Some(i) => &tail[i + 1..],
        None if len > tail_len => return true,
        None => &tail[..],
    };
    !matches!(serde_json::from_slice::<serde_json::Value>(last), Err(e) if e.is_eof())
}
