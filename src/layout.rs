//! Every path of the inbox, the outbox and the state folder (DESIGN.md sections 3, 6, 7): the
//! one place that names them. Nothing else joins path segments onto these folders.
//!
//! ```text
//! inbox/                      what users drop
//!   .cosmos/claimed/<daemon>/ claims made by one daemon, on the inbox's filesystem
//! state/                      cosmos.db, daemon-id, cosmosd.lock
//!   claimed/ archive/         submissions being taken in, and their originals after
//!   work/inputs/<sha256>.<ext> staged inputs, one per distinct content
//!   work/<run>/               spec.json, execution.log, output/ (result.json, output.mp4, ...)
//! outbox/
//!   .staging/                 run and batch folders being built
//!   run_<run>/                output.mp4, execution.log, spec.json, prompt.txt, controls/, manifest.*
//!   batch_<name>_<stamp>/     receipts/<stem>.<sb>.json   rejected/<stem>.<sb>/   status.json
//! ```

use std::path::{Path, PathBuf};

/// Names inside a published run folder (and a run's work folder).
pub mod run_files {
    pub const OUTPUT_VIDEO: &str = "output.mp4";
    pub const EXECUTION_LOG: &str = "execution.log";
    pub const SPEC: &str = "spec.json";
    pub const PROMPT: &str = "prompt.txt";
    pub const CONTROLS: &str = "controls";
    pub const MANIFEST_TXT: &str = "manifest.txt";
    pub const MANIFEST_JSON: &str = "manifest.json";
    pub const RESULT: &str = "result.json";
    pub const ERRORS: &str = "errors.txt";
    pub const BATCH_LOG: &str = "batch_run.log";
    pub const BATCH_SPEC: &str = "batch_spec.json";
}

/// The folder under the inbox that intake keeps for itself (never taken in).
pub const INBOX_PRIVATE: &str = ".cosmos";

/// The three folders, and everything under them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    inbox: PathBuf,
    outbox: PathBuf,
    state: PathBuf,
}

impl Layout {
    pub fn new(inbox: &Path, outbox: &Path, state: &Path) -> Layout {
        Layout { inbox: inbox.to_path_buf(), outbox: outbox.to_path_buf(), state: state.to_path_buf() }
    }

    pub fn of(paths: &crate::config::Paths) -> Layout {
        Layout::new(&paths.inbox, &paths.outbox, &paths.state)
    }

    // ---- the inbox -----------------------------------------------------------------

    pub fn inbox(&self) -> &Path {
        &self.inbox
    }

    pub fn inbox_entry(&self, name: &str) -> PathBuf {
        self.inbox.join(name)
    }

    /// `inbox/.cosmos/claimed`: every daemon's claim folder.
    pub fn inbox_claims_root(&self) -> PathBuf {
        self.inbox.join(INBOX_PRIVATE).join("claimed")
    }

    /// This daemon's claim folder in the inbox.
    pub fn inbox_claims(&self, daemon: &str) -> PathBuf {
        self.inbox_claims_root().join(daemon)
    }

    /// A claim in this daemon's claim folder in the inbox.
    pub fn inbox_claim(&self, daemon: &str, submission: &str, name: &str) -> PathBuf {
        self.inbox_claims(daemon).join(claim_name(submission, name))
    }

    // ---- the state folder ----------------------------------------------------------

    pub fn state(&self) -> &Path {
        &self.state
    }

    pub fn database(&self) -> PathBuf {
        self.state.join("cosmos.db")
    }

    pub fn daemon_id_file(&self) -> PathBuf {
        self.state.join("daemon-id")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.state.join("cosmosd.lock")
    }

    pub fn claimed(&self) -> PathBuf {
        self.state.join("claimed")
    }

    pub fn claimed_entry(&self, submission: &str, name: &str) -> PathBuf {
        self.claimed().join(claim_name(submission, name))
    }

    pub fn archive(&self) -> PathBuf {
        self.state.join("archive")
    }

    /// Where a submission's original ends, kept.
    pub fn archived(&self, submission: &str, name: &str) -> PathBuf {
        self.archive().join(claim_name(submission, name))
    }

    /// Mounted read-write into the worker's container: staged inputs and run folders.
    pub fn work(&self) -> PathBuf {
        self.state.join("work")
    }

    /// Staged inputs, one file per distinct content, named by its sha256.
    pub fn inputs(&self) -> PathBuf {
        self.work().join("inputs")
    }

    /// The process group of worker `slot` (process runtime), so that a worker a dead
    /// daemon left running is ended before a new one takes its GPUs.
    pub fn worker_pid_file(&self, slot: usize) -> PathBuf {
        self.work().join(format!("worker-{slot}.pid"))
    }

    pub fn run_work(&self, run_id: &str) -> PathBuf {
        self.work().join(run_id)
    }

    /// Where the worker writes a run's outputs (and result.json).
    pub fn run_output(&self, run_id: &str) -> PathBuf {
        self.run_work(run_id).join("output")
    }

    pub fn run_log(&self, run_id: &str) -> PathBuf {
        self.run_work(run_id).join(run_files::EXECUTION_LOG)
    }

    pub fn run_spec(&self, run_id: &str) -> PathBuf {
        self.run_work(run_id).join(run_files::SPEC)
    }

    // ---- the outbox ----------------------------------------------------------------

    pub fn outbox(&self) -> &Path {
        &self.outbox
    }

    /// Run and batch folders are built here and renamed into place.
    pub fn outbox_staging(&self) -> PathBuf {
        self.outbox.join(".staging")
    }

    pub fn receipts(&self) -> PathBuf {
        self.outbox.join("receipts")
    }

    pub fn receipt(&self, file: &str, submission: &str) -> PathBuf {
        self.receipts().join(format!("{}.{submission}.json", stem_of(file)))
    }

    pub fn rejected(&self) -> PathBuf {
        self.outbox.join("rejected")
    }

    pub fn rejected_dir(&self, file: &str, submission: &str) -> PathBuf {
        self.rejected().join(format!("{}.{submission}", stem_of(file)))
    }

    pub fn run_dir(&self, run_id: &str) -> PathBuf {
        self.outbox.join(format!("run_{run_id}"))
    }

    pub fn batch_dir(&self, folder_name: &str) -> PathBuf {
        self.outbox.join(folder_name)
    }

    pub fn status_json(&self) -> PathBuf {
        self.outbox.join("status.json")
    }

    /// The folders the daemon needs, made where missing.
    pub fn create_all(&self, daemon: &str) -> Result<(), crate::fsutil::PathIo> {
        for dir in [
            self.inbox.clone(),
            self.inbox_claims(daemon),
            self.outbox.clone(),
            self.outbox_staging(),
            self.receipts(),
            self.rejected(),
            self.claimed(),
            self.archive(),
            self.inputs(),
        ] {
            std::fs::create_dir_all(&dir).map_err(crate::fsutil::at("cannot create", &dir))?;
        }
        Ok(())
    }
}

/// `sb_xxx__name`: a claim's name in either claim folder, and its original's in the archive.
pub fn claim_name(submission: &str, name: &str) -> String {
    format!("{submission}__{name}")
}

/// The submission id and inbox name of a claim, if `entry` is one.
pub fn parse_claim_name(entry: &str) -> Option<(&str, &str)> {
    let (sb, name) = entry.split_once("__")?;
    let is_id = crate::ids::parse_prefix(sb) == Ok(crate::ids::IdKind::Submission) && sb.len() == 3 + crate::ids::ID_CHARS;
    (is_id && !name.is_empty()).then_some((sb, name))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_are_safe_folder_names() {
        assert_eq!(stem_of("jobs.jsonl"), "jobs");
        assert_eq!(stem_of("spec.v2.json"), "spec.v2");
        assert_eq!(stem_of("my shoot"), "my_shoot");
        assert_eq!(stem_of("notes.txt"), "notes.txt");
        assert_eq!(stem_of(".."), "submission");
    }

    #[test]
    fn the_layout_of_the_design_card() {
        let l = Layout::new(Path::new("/in"), Path::new("/out"), Path::new("/st"));
        assert_eq!(l.inbox_claims("h-1"), Path::new("/in/.cosmos/claimed/h-1"));
        assert_eq!(l.receipt("jobs.jsonl", "sb_x"), Path::new("/out/receipts/jobs.sb_x.json"));
        assert_eq!(l.rejected_dir("shoot", "sb_x"), Path::new("/out/rejected/shoot.sb_x"));
        assert_eq!(l.run_output("rs_a"), Path::new("/st/work/rs_a/output"));
        assert_eq!(l.inputs(), Path::new("/st/work/inputs"));
        assert_eq!(l.run_dir("rs_a"), Path::new("/out/run_rs_a"));
        assert_eq!(l.database(), Path::new("/st/cosmos.db"));
    }
}
