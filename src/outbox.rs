//! The outbox (DESIGN.md section 6): what users sync back. Every folder is built under
//! `outbox/.staging/` and renamed into place, so a folder under its final name is complete;
//! receipts and status.json are replaced atomically.

use crate::fsutil::{at, link_or_copy, sha256_file, sync_dir, write_atomic, PathIo};
use crate::layout::{run_files, Layout};
use crate::runtime::protocol::Outputs;
pub use crate::runtime::worker::WorkerInfo;
use crate::spec::nvidia;
use crate::store::{Batch, ReceiptLine, Run, RunLink, Store, StoreError, Submission, SubmissionStatus};
use crate::time::Timestamp;
use serde_json::{json, Value};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Io(#[from] PathIo),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl OutboxError {
    /// See [`StoreError::is_transient`] and [`crate::fsutil::is_transient_io`].
    pub fn is_transient(&self) -> bool {
        match self {
            OutboxError::Io(e) => crate::fsutil::is_transient_io(&e.source),
            OutboxError::Store(e) => e.is_transient(),
        }
    }
}

type Result<T> = std::result::Result<T, OutboxError>;

#[derive(Debug, Clone)]
pub struct Outbox {
    layout: Layout,
    pub mode: u32,
}

/// Submissions of up to this many runs have their receipt rewritten at each run's end; a
/// larger one's at most every [`RECEIPT_EVERY`] (rewriting a 100,000-line receipt at every
/// run's end would cost more than the runs). The scheduler and, on a shared queue, the
/// origin host's delivery both follow this.
pub const RECEIPT_AT_ONCE: u64 = 1000;
pub const RECEIPT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl Outbox {
    pub fn new(layout: &Layout, mode: u32) -> Outbox {
        Outbox { layout: layout.clone(), mode }
    }

    pub fn create_all(&self) -> std::result::Result<(), PathIo> {
        for d in [self.layout.outbox().to_path_buf(), self.layout.outbox_staging(), self.layout.receipts(), self.layout.rejected()] {
            std::fs::create_dir_all(&d).map_err(at("cannot create", &d))?;
        }
        Ok(())
    }

    /// Removes half-built folders a crash left in staging: they were never visible.
    /// At start-up: what a crash left half-made where users sync is removed (the staging
    /// folder's contents; the temps of dead processes beside status.json, receipts and
    /// rejected folders).
    pub fn clear_leftovers(&self) {
        if let Ok(entries) = std::fs::read_dir(self.layout.outbox_staging()) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        for dir in [self.layout.outbox().to_path_buf(), self.layout.receipts(), self.layout.rejected()] {
            crate::fsutil::remove_dead_temps(&dir);
        }
    }

    pub fn run_dir(&self, run_id: &str) -> PathBuf {
        self.layout.run_dir(run_id)
    }

    pub fn batch_dir(&self, batch: &Batch) -> PathBuf {
        self.layout.batch_dir(&batch.folder_name())
    }

    fn set_mode(&self, path: &Path) {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(self.mode));
    }

    /// Builds `run_<id>/` from a finished run's work folder and renames it into place.
    /// Already there (a restart re-publishing): left as it is.
    #[allow(clippy::too_many_arguments)]
    pub fn publish_run(
        &self,
        run: &Run,
        outputs: &Outputs,
        batch: Option<&Batch>,
        worker: &WorkerInfo,
        child: Option<&str>,
        timing: RunTiming,
        extra: RunExtra,
    ) -> Result<PathBuf> {
        self.publish_run_on(run, outputs, batch, worker, child, timing, extra, None)
    }

    /// [`Outbox::publish_run`] by a host of several sharing a queue: the manifest names
    /// `host`, the one that ran it.
    #[allow(clippy::too_many_arguments)]
    pub fn publish_run_on(
        &self,
        run: &Run,
        outputs: &Outputs,
        batch: Option<&Batch>,
        worker: &WorkerInfo,
        child: Option<&str>,
        timing: RunTiming,
        extra: RunExtra,
        host: Option<&str>,
    ) -> Result<PathBuf> {
        let RunExtra { gpu, remedy } = extra;
        let final_dir = self.run_dir(&run.id);
        if final_dir.is_dir() {
            return Ok(final_dir);
        }
        let tmp = self.layout.outbox_staging().join(final_dir.file_name().unwrap_or_default());
        let _ = std::fs::remove_dir_all(&tmp);
        // Built aside; what a failure (a full disk) leaves half-made is removed, so that a
        // retry starts clean and nothing partial lingers even in the hidden staging folder.
        let built = (|| -> Result<()> {
            std::fs::create_dir_all(tmp.join(run_files::CONTROLS)).map_err(at("cannot create", &tmp))?;
            let video = outputs
                .video
                .as_deref()
                .map(PathBuf::from)
                .unwrap_or_else(|| self.layout.run_output(&run.id).join(run_files::OUTPUT_VIDEO));
            link_or_copy(&video, &tmp.join(run_files::OUTPUT_VIDEO)).map_err(at("cannot place the output video", &video))?;
            for (hint, path) in &outputs.controls {
                let safe: String = hint.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if safe.is_empty() {
                    continue;
                }
                let src = Path::new(path);
                link_or_copy(src, &tmp.join(run_files::CONTROLS).join(format!("{safe}.mp4")))
                    .map_err(at("cannot place a control video", src))?;
            }
            let log = self.layout.run_log(&run.id);
            if log.is_file() {
                std::fs::copy(&log, tmp.join(run_files::EXECUTION_LOG)).map_err(at("cannot copy", &log))?;
            } else {
                std::fs::write(tmp.join(run_files::EXECUTION_LOG), b"").map_err(at("cannot write", &tmp))?;
            }
            let spec = self.layout.run_spec(&run.id);
            std::fs::copy(&spec, tmp.join(run_files::SPEC)).map_err(at("cannot copy", &spec))?;
            std::fs::write(tmp.join(run_files::PROMPT), format!("{}\n", run.spec.prompt)).map_err(at("cannot write", &tmp))?;

            // The manifest covers every other file.
            let mut files = Vec::new();
            collect(&tmp, &tmp, &mut files).map_err(at("cannot read", &tmp))?;
            files.sort();
            let mut text = String::new();
            let mut entries = Vec::new();
            for rel in &files {
                let path = tmp.join(rel);
                self.set_mode(&path);
                let meta = std::fs::metadata(&path).map_err(at("cannot read", &path))?;
                let mtime = meta.modified().map(Timestamp::from_system_time).unwrap_or(Timestamp(0)).rfc3339();
                let digest = sha256_file(&path).map_err(at("cannot hash", &path))?;
                text.push_str(&format!("{} {} {} {}\n", meta.len(), mtime, digest, rel));
                entries.push(json!({"path": rel, "size": meta.len(), "mtime": mtime, "sha256": digest}));
            }
            let finished = Timestamp::now().rfc3339();
            let mut manifest = json!({
                "run_id": run.id,
                "prompt_id": run.prompt_id,
                "name": run.name,
                "batch": batch.map(|b| json!({"id": b.id, "name": b.name, "folder": b.folder_name()})),
                "submission": run.submission_id,
                "line": run.line,
                "parent": run.parent_id,
                "children": child.map(|c| vec![c]).unwrap_or_default(),
                "prompt": run.spec.prompt,
                "negative_prompt": run.spec.negative_prompt,
                // The input video as intake's preflight probed it.
                "video": run.spec.video,
                "timings": timing.to_json(run, &finished),
                "gpu": gpu,
                "worker": {"backend": worker.backend, "version": worker.version, "pid": worker.pid, "container_id": worker.container_id},
                "attempts": run.attempts,
                // What running out of GPU memory changed, attempt by attempt: the options
                // each later attempt added (`load`: the model's constructor, `run`: the
                // run's spec), the GPU group it needed, whether each keeps the result.
                "remedy": remedy,
                // What the model was called with, as the worker reported it (defaults included).
                "settings": outputs.settings,
                "files": entries,
            });
            if let (Some(host), Some(m)) = (host, manifest.as_object_mut()) {
                m.insert("host".into(), json!(host));
            }
            std::fs::write(tmp.join(run_files::MANIFEST_TXT), text).map_err(at("cannot write", &tmp))?;
            let mut mj = serde_json::to_string_pretty(&manifest).unwrap_or_default();
            mj.push('\n');
            std::fs::write(tmp.join(run_files::MANIFEST_JSON), mj).map_err(at("cannot write", &tmp))?;
            for f in [run_files::MANIFEST_TXT, run_files::MANIFEST_JSON] {
                self.set_mode(&tmp.join(f));
            }
            sync_tree(&tmp);
            Ok(())
        })();
        if let Err(e) = built {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if let Err(e) = std::fs::rename(&tmp, &final_dir) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(at("cannot publish", &final_dir)(e).into());
        }
        sync_dir(self.layout.outbox());
        Ok(final_dir)
    }

    /// The child id a published run's manifest names, if any (a restart re-publishing
    /// must create the same child).
    pub fn published_child(&self, run_id: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.run_dir(run_id).join(run_files::MANIFEST_JSON)).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        v["children"].get(0)?.as_str().map(str::to_string)
    }

    /// `batch_<name>_<stamp>/` with NVIDIA's JSONL, the base spec and batch_run.log.
    pub fn ensure_batch_folder(&self, store: &Store, batch: &Batch) -> Result<PathBuf> {
        let final_dir = self.batch_dir(batch);
        if final_dir.is_dir() {
            return Ok(final_dir);
        }
        let runs = store.runs_where(RunLink::Batch, &batch.id)?;
        let pairs: Vec<(&str, &crate::spec::RunSpec)> = runs.iter().map(|r| (r.id.as_str(), &r.spec)).collect();
        let files = nvidia::nvidia_batch(&pairs);
        // Several workers may start runs of one batch at once: each builds its own copy,
        // the first rename wins.
        let tmp = self.layout.outbox_staging().join(format!("{}.{}", batch.folder_name(), crate::ids::new_id(crate::ids::IdKind::Batch)));
        std::fs::create_dir_all(&tmp).map_err(at("cannot create", &tmp))?;
        files.write_to(&tmp, &batch.name).map_err(at("cannot write", &tmp))?;
        let mut log = format!("{} batch {} ({}) {}: {} runs\n", Timestamp::now().rfc3339(), batch.name, batch.id, batch.kind, runs.len());
        for (i, r) in runs.iter().enumerate() {
            log.push_str(&format!("  line {} -> {} ({})\n", i + 1, r.id, r.control_set));
        }
        for note in &files.notes {
            log.push_str(&format!("  note: {note}\n"));
        }
        std::fs::write(tmp.join(run_files::BATCH_LOG), log).map_err(at("cannot write", &tmp))?;
        for f in [run_files::BATCH_LOG, run_files::BATCH_SPEC] {
            self.set_mode(&tmp.join(f));
        }
        self.set_mode(&tmp.join(format!("{}.jsonl", batch.name)));
        if let Err(e) = std::fs::rename(&tmp, &final_dir) {
            let _ = std::fs::remove_dir_all(&tmp);
            if !final_dir.is_dir() {
                return Err(at("cannot publish", &final_dir)(e).into());
            }
        }
        Ok(final_dir)
    }

    pub fn append_batch_log(&self, batch: &Batch, line: &str) {
        use std::io::Write;
        let path = self.batch_dir(batch).join(run_files::BATCH_LOG);
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(path) {
            let _ = writeln!(f, "{} {line}", Timestamp::now().rfc3339());
        }
    }

    /// Writes (or rewrites) the receipt of a submission from the store.
    pub fn write_receipt(&self, store: &Store, sub: &Submission) -> Result<PathBuf> {
        let lock = ReceiptLock::take();
        // The lines alone, not whole runs: a 100,000-line submission's receipt.
        let lines = store.receipt_lines(&sub.id)?;
        self.write_receipt_of(&lock, store, sub, &lines)
    }

    /// Writes the receipt of `sub` listing `lines`, which must be what the store holds
    /// now: the intake passes the lines it just committed (held since before the commit,
    /// the lock keeps a run's end from writing its receipt in between).
    pub fn write_receipt_of(&self, _lock: &ReceiptLock, store: &Store, sub: &Submission, lines: &[ReceiptLine]) -> Result<PathBuf> {
        let runs: Vec<ReceiptRun> = lines
            .iter()
            .map(|r| ReceiptRun {
                line: r.line,
                name: r.name.as_deref(),
                run_id: &r.run_id,
                status: r.status,
                error: r.error.as_deref(),
                output_dir: (r.status == crate::store::RunStatus::Completed).then(|| self.run_dir(&r.run_id)),
                ran_on: r.ran_on.as_deref(),
            })
            .collect();
        let mut receipt = Receipt {
            submission: &sub.id,
            file: &sub.file,
            sha256: &sub.sha256,
            status: sub.status,
            received_at: &sub.received_at,
            duplicate_of: sub.duplicate_of.as_deref(),
            // Judged again after an earlier rejection of the same content.
            rejected_before: sub.rejected_before.as_deref(),
            problems: None,
            note: None,
            errors: None,
            runs,
        };
        if sub.status == SubmissionStatus::Rejected {
            receipt.problems = Some(sub.problems);
            let errors = match &sub.duplicate_of {
                // The same problems as a rejection before: its folder says them.
                Some(first) => {
                    let first_file = store.submission(first).map(|s| s.file).unwrap_or_else(|_| sub.file.clone());
                    receipt.note = Some(format!("rejected again for the same problems as {first}; no new rejected/ folder"));
                    self.layout.rejected_dir(&first_file, first).join(run_files::ERRORS)
                }
                None => self.layout.rejected_dir(&sub.file, &sub.id).join(run_files::ERRORS),
            };
            receipt.errors = Some(errors);
        } else if sub.status == SubmissionStatus::Accepted && sub.rejected_before.is_some() {
            receipt.note = Some("accepted this time: what made the earlier rejection is gone".into());
        }
        let path = self.layout.receipt(&sub.file, &sub.id);
        // Indented for people; one line when it lists thousands of runs (a tool reads it).
        let mut text = if receipt.runs.len() <= 1000 { serde_json::to_string_pretty(&receipt) } else { serde_json::to_string(&receipt) }
            .unwrap_or_default();
        text.push('\n');
        write_atomic(&path, text.as_bytes()).map_err(at("cannot write", &path))?;
        self.set_mode(&path);
        Ok(path)
    }

    pub fn write_status(&self, status: &Value) -> std::result::Result<(), PathIo> {
        let path = self.layout.status_json();
        let mut text = serde_json::to_string_pretty(status).unwrap_or_default();
        text.push('\n');
        write_atomic(&path, text.as_bytes()).map_err(at("cannot write", &path))?;
        self.set_mode(&path);
        Ok(())
    }
}

/// What a run's manifest records besides its files and timings.
#[derive(Debug, Clone, Default)]
pub struct RunExtra {
    /// GPU peak and mean over the run.
    pub gpu: Value,
    /// The scheduler's OOM remedy (`policy::Remedy` as JSON), if the run needed one.
    pub remedy: Option<Value>,
}

/// How long a run took, for its manifest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunTiming {
    /// The run itself, as the worker measured it.
    pub seconds: f64,
    /// The model load it waited for; `None` when the worker held its control set already.
    pub load_seconds: Option<f64>,
}

impl RunTiming {
    /// `timings` in manifest.json: `seconds` (the run), `load_seconds` (null: the model was
    /// loaded already), `total_seconds` (both: what the run cost the GPU).
    fn to_json(self, run: &Run, finished_at: &str) -> Value {
        json!({
            "queued_at": run.queued_at,
            "started_at": run.started_at,
            "finished_at": finished_at,
            "seconds": self.seconds,
            "load_seconds": self.load_seconds,
            "model_loaded": self.load_seconds.is_some(),
            "total_seconds": self.seconds + self.load_seconds.unwrap_or(0.0),
        })
    }
}

/// Held while a receipt is read from the store and written: workers finish runs of one
/// submission at the same time, and an older view must not land last and stay.
pub struct ReceiptLock(#[allow(dead_code)] std::sync::MutexGuard<'static, ()>);

impl ReceiptLock {
    pub fn take() -> ReceiptLock {
        static RECEIPTS: std::sync::Mutex<()> = std::sync::Mutex::new(());
        ReceiptLock(RECEIPTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

/// A submission's receipt (DESIGN.md section 9), in this key order.
#[derive(serde::Serialize)]
struct Receipt<'a> {
    submission: &'a str,
    file: &'a str,
    sha256: &'a str,
    status: SubmissionStatus,
    received_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate_of: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rejected_before: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problems: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<PathBuf>,
    runs: Vec<ReceiptRun<'a>>,
}

/// One run in a receipt, in this key order.
#[derive(serde::Serialize)]
struct ReceiptRun<'a> {
    line: u64,
    name: Option<&'a str>,
    run_id: &'a str,
    status: crate::store::RunStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dir: Option<PathBuf>,
    /// Where it ran, when several hosts share the queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    ran_on: Option<&'a str>,
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            collect(root, &p, out)?;
        } else {
            out.push(p.strip_prefix(root).unwrap_or(&p).to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// Syncs every file under `dir`, then `dir` itself.
pub fn sync_tree(dir: &Path) {
    let mut files = Vec::new();
    if collect(dir, dir, &mut files).is_ok() {
        for f in files {
            if let Ok(file) = std::fs::File::open(dir.join(f)) {
                let _ = file.sync_all();
            }
        }
    }
    sync_dir(dir);
}
