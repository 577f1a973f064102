//! Claim and fate: one inbox entry becomes exactly one submission.

use super::stuck::{Key, Retries, Stage};
use super::{classify, stage, EntryKind};
use crate::config::Config;
use crate::fsutil::{at, move_entry, remove_any, sha256_file, sync_dir, write_atomic, PathIo};
use crate::ids::{self, IdKind};
use crate::layout::{parse_claim_name, stem_of, Layout};
use crate::outbox::ReceiptLock;
use crate::spec::{self, FileKind, Problem, Report, Rules};
use crate::store::{PreparedRuns, ReceiptLine, RunStatus, Store, StoreError, Submission, SubmissionStatus, Unaccepted};
use sha2::{Digest, Sha256};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The entry could not be renamed into the claim folder: it is still in the inbox.
    #[error("cannot claim {path}: {source}")]
    Claim { path: PathBuf, source: io::Error },
    /// Claimed, but not moved into the state folder: it waits in the inbox's claim folder.
    #[error("cannot copy {from} into {to}: {source}")]
    Copy { from: PathBuf, to: PathBuf, source: io::Error },
    #[error(transparent)]
    Io(#[from] PathIo),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Outbox(#[from] crate::outbox::OutboxError),
    #[error(transparent)]
    Stage(#[from] stage::StageError),
    /// Nothing is claimed while the state folder is nearly full (see `INTAKE_FLOOR`): an
    /// entry waits in the inbox under its own name rather than half-way.
    #[error("the state folder {path} has {free} free, under {need}: files wait in the inbox until there is room")]
    StateFull { path: PathBuf, free: crate::config::Size, need: crate::config::Size },
    /// The parsing thread stopped because the inserting one failed (whose error is told).
    #[error("intake stopped")]
    Stopped,
}

/// What the caller of `finish` already has, so that it is not made again.
enum Known {
    Nothing,
    /// A rejection's errors.txt text.
    Errors(String),
    /// The lines of an accepted submission just committed, and the receipt lock held
    /// since before the commit.
    Lines(ReceiptLock, Vec<ReceiptLine>),
}

/// What the parsing thread of [`Intake::judge`] found.
struct Parsed {
    report: Report,
    display: PathBuf,
    /// Why the lines could not all be prepared (an input unreadable, the inserts failed).
    failure: Option<IntakeError>,
    /// The inputs stored, once the file was found good.
    staged: Option<std::result::Result<Vec<PathBuf>, stage::StageError>>,
    lines: Vec<ReceiptLine>,
}

/// The parsing side of [`Intake::judge`]: validates every line, plans its inputs, sends
/// its rows to the inserting thread in batches, and, the file being good, stores the
/// inputs.
#[allow(clippy::too_many_arguments)]
fn parse_and_stage(
    claimed: &Path,
    name: &str,
    shape: &Claimed,
    inbox: &Path,
    roots: &[PathBuf],
    rules: &Rules,
    mut stager: stage::Stager,
    rows: std::sync::mpsc::SyncSender<PreparedRuns>,
    returned: std::sync::mpsc::Receiver<PreparedRuns>,
) -> Parsed {
    let mut failure: Option<IntakeError> = None;
    let mut lines = Vec::new();
    let mut batch = PreparedRuns::default();
    let (report, display) = parse_entry(claimed, name, shape, inbox, roots, rules, &mut |mut job| {
        if failure.is_some() {
            return;
        }
        let run_id = ids::new_id(IdKind::Run);
        let prepared = stager.plan(&mut job.spec).map_err(IntakeError::from).and_then(|()| Ok(batch.push(&run_id, &job)?));
        match prepared {
            Ok(()) => lines.push(ReceiptLine {
                line: job.line,
                name: job.spec.name,
                run_id,
                status: RunStatus::Queued,
                error: None,
                ran_on: None,
            }),
            Err(e) => failure = Some(e),
        }
        if batch.len() == ROWS_PER_BATCH {
            let next = match returned.try_recv() {
                Ok(mut old) => {
                    old.clear();
                    old
                }
                Err(_) => PreparedRuns::default(),
            };
            // A closed channel means the inserts failed; that error is the one told.
            if rows.send(std::mem::replace(&mut batch, next)).is_err() {
                failure = Some(IntakeError::Stopped);
            }
        }
    });
    if failure.is_none() && !batch.is_empty() && rows.send(batch).is_err() {
        failure = Some(IntakeError::Stopped);
    }
    drop(rows);
    let staged = (failure.is_none() && report.is_ok()).then(|| stager.commit());
    // Until the inserting thread is done with the last batches.
    returned.iter().for_each(drop);
    Parsed { report, display, failure, staged, lines }
}

/// Below this much free space in the state folder (or `outbox.min_free`, if smaller),
/// nothing is claimed: a submission's rows and staged inputs need room, and SQLite failing
/// half-way with "disk full" helps nobody.
pub const INTAKE_FLOOR: u64 = 256 << 20;

/// Rows sent from the parsing thread to the inserting one at a time, and how many such
/// batches may wait: about 4,000 rows (a few MiB) in flight at most.
const ROWS_PER_BATCH: usize = 256;
const ROWS_IN_FLIGHT: usize = 16;

impl IntakeError {
    /// How far the entry got, so the log and status.json say where it waits.
    pub fn stage(&self) -> Stage {
        match self {
            IntakeError::Claim { .. } | IntakeError::StateFull { .. } => Stage::Claim,
            IntakeError::Copy { .. } => Stage::Copy,
            _ => Stage::Decide,
        }
    }
}

type Result<T> = std::result::Result<T, IntakeError>;

/// What became of a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Accepted {
        runs: u64,
    },
    Duplicate {
        of: String,
    },
    /// `same_as`: rejected before for the very same problems; its rejected/ folder says them.
    Rejected {
        problems: u64,
        same_as: Option<String>,
    },
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
    /// This daemon's id: it names the daemon's claim folder in the inbox.
    daemon: String,
    store: Store,
    roots: Vec<PathBuf>,
    rules: Rules,
    file_mode: u32,
    /// Entries that failed, waiting for their next try.
    retries: Retries,
    /// Free space the state folder must have for anything to be claimed: `outbox.min_free`,
    /// at most [`INTAKE_FLOOR`] (runs already wait below `outbox.min_free`; submissions are
    /// still taken in until the disk is nearly full).
    min_free: u64,
}

/// The shape of a claimed entry.
enum Claimed {
    File,
    Bundle,
    Foreign(String),
}

impl Intake {
    pub fn new(config: &Config, store: Store) -> std::result::Result<Intake, PathIo> {
        let layout = Layout::of(&config.paths);
        if let Err(e) = store.tune_for_intake() {
            tracing::warn!(error = %e, "cannot tune the intake's store connection");
        }
        std::fs::create_dir_all(layout.state()).map_err(at("cannot create", layout.state()))?;
        let daemon = super::daemon_id(&layout)?;
        layout.create_all(&daemon)?;
        // Copies of inputs a crash cut short.
        crate::fsutil::remove_dead_temps(&layout.inputs());
        let mut intake = Intake {
            layout,
            daemon,
            store,
            roots: Vec::new(),
            rules: Rules::from_config(config),
            file_mode: 0o644,
            retries: Retries::default(),
            min_free: 0,
        };
        intake.set_config(config);
        Ok(intake)
    }

    /// Takes the settings that a reload may change (input roots, file mode, the backend's
    /// rules and default controls).
    pub fn set_config(&mut self, config: &Config) {
        let mut roots = config.paths.input_roots.clone();
        roots.push(config.paths.inbox.clone());
        self.roots = roots;
        self.file_mode = config.outbox.mode.0;
        self.rules = Rules::from_config(config);
        self.min_free = config.outbox.min_free.0.min(INTAKE_FLOOR);
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }

    /// Claims `inbox/<name>` and decides its fate. `Ok(None)`: it was gone already (another
    /// daemon took it, or the sender removed it), or it waits for a retry after a failure.
    /// A failure is logged, remembered and retried by [`Intake::retry_due`].
    pub fn take(&mut self, name: &str) -> Result<Option<Taken>> {
        let key = Key::Inbox(name.to_string());
        if self.retries.waiting(&key, Instant::now()) {
            return Ok(None);
        }
        if let Some(free) = crate::fsutil::free_bytes(self.layout.state()).filter(|f| *f < self.min_free) {
            let err = IntakeError::StateFull {
                path: self.layout.state().to_path_buf(),
                free: crate::config::Size(free),
                need: crate::config::Size(self.min_free),
            };
            self.note_failure(key, name, &err);
            return Err(err);
        }
        let sb = ids::new_id(IdKind::Submission);
        let source = self.layout.inbox_entry(name);
        let in_inbox = self.layout.inbox_claim(&self.daemon, &sb, name);
        // The claim: a rename within the inbox's own filesystem, so it is atomic on NFS too
        // and of two daemons sharing the inbox only one wins.
        match std::fs::rename(&source, &in_inbox) {
            Ok(()) => {
                self.retries.cleared(&key);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.retries.cleared(&key);
                return Ok(None);
            }
            Err(e) => {
                let err = IntakeError::Claim { path: source, source: e };
                self.note_failure(key, name, &err);
                return Err(err);
            }
        }
        // The claim must survive a crash before anything depends on it.
        sync_dir(&self.layout.inbox_claims(&self.daemon));
        crate::fsutil::fault_pause("claim");
        tracing::debug!(submission = %sb, file = name, "claimed");
        self.finish_claim(&sb, name).map(Some)
    }

    /// Moves a claim into the state folder and decides its fate; a failure is remembered
    /// under the claim's submission id and retried.
    fn finish_claim(&mut self, sb: &str, name: &str) -> Result<Taken> {
        let key = Key::Claim(sb.to_string());
        let result = self.move_into_state(sb, name).and_then(|claimed| self.process(&claimed, sb, name));
        match &result {
            Ok(_) => {
                if self.retries.cleared(&key) {
                    tracing::info!(submission = %sb, file = name, "taken in after an earlier failure");
                }
            }
            Err(e) => self.note_failure(key, name, e),
        }
        result
    }

    fn note_failure(&mut self, key: Key, name: &str, err: &IntakeError) {
        let stage = err.stage();
        let wait = self.retries.failed(key, name, stage, err.to_string(), Instant::now());
        tracing::error!(file = name, error = %err, retry_in = ?wait, "cannot take in; {} and is retried", stage.waits_in());
    }

    /// Where the claim `sb__name` is in the state folder, moving it there from the inbox's
    /// claim folder first where needed. Idempotent: a crash between the copy and the removal
    /// of the inbox's copy leaves both, and the state's copy (complete, since it appeared by
    /// rename) wins.
    fn move_into_state(&mut self, sb: &str, name: &str) -> Result<PathBuf> {
        let in_state = self.layout.claimed_entry(sb, name);
        let in_inbox = self.layout.inbox_claim(&self.daemon, sb, name);
        let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();
        let copy_error = |source| IntakeError::Copy { from: in_inbox.clone(), to: in_state.clone(), source };
        if exists(&in_state) {
            if exists(&in_inbox) {
                remove_any(&in_inbox).map_err(copy_error)?;
            }
            return Ok(in_state);
        }
        move_entry(&in_inbox, &in_state).map_err(copy_error)?;
        crate::fsutil::fault_pause("copy");
        Ok(in_state)
    }

    /// Finishes every claim a crash left, in this daemon's claim folder in the inbox or in
    /// `claimed/`. An entry that fails is logged and retried later; the others go on.
    pub fn recover(&mut self) -> Result<Vec<Taken>> {
        let mut entries: Vec<(String, String)> = Vec::new();
        for dir in [self.layout.inbox_claims(&self.daemon), self.layout.claimed()] {
            for entry in std::fs::read_dir(&dir).map_err(at("cannot list", &dir))? {
                let entry = entry.map_err(at("cannot list", &dir))?;
                let file_name = entry.file_name().to_string_lossy().into_owned();
                if crate::fsutil::is_move_leftover(&file_name) {
                    // A copy a crash cut short: its source is still in the inbox's claim
                    // folder, and the copy is made again from it.
                    if let Err(e) = remove_any(&entry.path()) {
                        tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a half-made copy");
                    }
                    continue;
                }
                match parse_claim_name(&file_name) {
                    Some((sb, name)) => entries.push((sb.to_string(), name.to_string())),
                    None => tracing::warn!(path = %entry.path().display(), "unexpected entry in a claim folder, left alone"),
                }
            }
        }
        entries.sort();
        entries.dedup();
        self.warn_of_other_claims();
        let mut done = Vec::new();
        for (sb, name) in entries {
            if self.retries.waiting(&Key::Claim(sb.clone()), Instant::now()) {
                continue;
            }
            tracing::info!(submission = %sb, file = %name, "finishing an interrupted claim");
            if let Ok(taken) = self.finish_claim(&sb, &name) {
                done.push(taken);
            }
        }
        Ok(done)
    }

    /// Claim folders of other daemons in the inbox are theirs to finish; one that holds
    /// entries is worth a word, in case it belongs to nobody any more (a state folder that
    /// was wiped).
    fn warn_of_other_claims(&self) {
        let mine = self.layout.inbox_claims(&self.daemon);
        let Ok(entries) = std::fs::read_dir(self.layout.inbox_claims_root()) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path == mine {
                continue;
            }
            let held = std::fs::read_dir(&path).map(|d| d.count()).unwrap_or(0);
            if held > 0 {
                tracing::warn!(
                    folder = %path.display(),
                    entries = held,
                    "another daemon's claims wait in the inbox; that daemon finishes them when it starts \
                     (if none owns this folder any more, move the entries back into the inbox without their sb_...__ prefix)"
                );
            }
        }
    }

    /// Retries the entries whose backoff has passed.
    pub fn retry_due(&mut self) -> Vec<Taken> {
        let mut done = Vec::new();
        for (key, stuck) in self.retries.due(Instant::now()) {
            let taken = match &key {
                Key::Inbox(name) => {
                    if std::fs::symlink_metadata(self.layout.inbox_entry(name)).is_err() {
                        // Gone from the inbox: the sender took it back, or another daemon did.
                        self.retries.cleared(&key);
                        continue;
                    }
                    self.take(name).ok().flatten()
                }
                Key::Claim(sb) => self.finish_claim(sb, &stuck.file).ok(),
            };
            done.extend(taken);
        }
        done
    }

    /// For quiet moments after files were taken in: copies the WAL into the database file
    /// (the intake's connection does not while taking files in), and gives back the memory
    /// a large submission filled (SQLite's page cache, then the allocator's free lists), so
    /// that an idle daemon stays small.
    pub fn rest(&self) {
        if let Err(e) = self.store.checkpoint() {
            tracing::debug!(error = %e, "WAL checkpoint skipped");
        }
        self.store.release_memory();
        crate::fsutil::trim_heap();
    }

    /// When the next retry is due, if anything is stuck.
    pub fn next_retry(&self) -> Option<Instant> {
        self.retries.next_try()
    }

    /// Whether `name` in the inbox waits for a retry (the tracker need not offer it).
    pub fn is_waiting(&self, name: &str) -> bool {
        self.retries.waiting(&Key::Inbox(name.to_string()), Instant::now())
    }

    /// The stuck entries, for status.json.
    pub fn stuck_report(&self) -> serde_json::Value {
        self.retries.report(Instant::now())
    }

    fn process(&mut self, claimed: &Path, sb: &str, name: &str) -> Result<Taken> {
        let shape = claimed_shape(claimed);
        if let Some(sub) = self.existing(sb)? {
            // The decision was committed before a crash: only the idempotent steps remain.
            return self.finish(claimed, &sub, &shape, Known::Nothing);
        }
        let sha = hash_entry(claimed, &shape).map_err(at("cannot read", claimed))?;
        if let Some(prev) = self.store.accepted_by_sha256(&sha)? {
            let sub = self.store.record_submission(
                Some(sb),
                &Unaccepted {
                    file: name,
                    sha256: &sha,
                    status: SubmissionStatus::Duplicate,
                    duplicate_of: Some(&prev.id),
                    problems: 0,
                    problems_digest: None,
                    rejected_before: None,
                },
            )?;
            return self.finish(claimed, &sub, &shape, Known::Nothing);
        }
        // Rejected before? Then it is judged again: what was wrong (a missing video, say)
        // may have been put right since.
        let rejected_before = self.store.rejections_by_sha256(&sha)?.into_iter().next().map(|s| s.id);
        self.judge(claimed, sb, name, &sha, &shape, rejected_before)
    }

    /// Validates and records a new entry in one pass: every good line is inserted as it is
    /// read (its inputs planned under their content's name), in one transaction that
    /// commits only if the whole file is good; a bad line anywhere rolls it back, and
    /// nothing was written to disk.
    ///
    /// Two threads, so that a large file is taken in at the speed of the store: this one
    /// inserts; the other parses, validates and encodes the rows, then (the file being
    /// good) stores the inputs and keeps the receipt's lines, while the inserts go on.
    fn judge(
        &mut self,
        claimed: &Path,
        sb: &str,
        name: &str,
        sha: &str,
        shape: &Claimed,
        rejected_before: Option<String>,
    ) -> Result<Taken> {
        let (inbox, roots, rules) = (self.layout.inbox().to_path_buf(), self.roots.clone(), self.rules.clone());
        let stager = stage::Stager::new(&self.layout.inputs());
        let mut writer = self.store.begin_submission_with_id(sb, name, sha, &stem_of(name))?;
        if let Some(earlier) = &rejected_before {
            writer.set_rejected_before(earlier)?;
        }
        let parsed = std::thread::scope(|scope| {
            let (rows, received) = std::sync::mpsc::sync_channel::<PreparedRuns>(ROWS_IN_FLIGHT);
            // Inserted batches go back to be freed (and their vectors reused) where they
            // were made: freeing 100,000 rows' strings here costs the inserts a tenth.
            let (spent, returned) = std::sync::mpsc::channel::<PreparedRuns>();
            let parser = scope.spawn(move || parse_and_stage(claimed, name, shape, &inbox, &roots, &rules, stager, rows, returned));
            let mut inserted: Result<()> = Ok(());
            for batch in received {
                if let Err(e) = writer.add_prepared(&batch) {
                    inserted = Err(e.into());
                    break;
                }
                let _ = spent.send(batch);
            }
            drop(spent);
            let parsed = parser.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            match inserted {
                Ok(()) => Ok(parsed),
                Err(e) => {
                    // The inserts failed after the inputs were stored: nothing names them.
                    if let Some(Ok(created)) = &parsed.staged {
                        stage::remove_created(created);
                    }
                    Err(e)
                }
            }
        })?;
        if let Some(e) = parsed.failure {
            return Err(e);
        }
        if !parsed.report.is_ok() {
            drop(writer);
            return self.reject(claimed, sb, name, sha, shape, &parsed.report, &parsed.display, rejected_before.as_deref());
        }
        // The inputs were stored (synced) before the runs that name them commit.
        let created = parsed.staged.unwrap_or_else(|| Ok(Vec::new()))?;
        // Held from before the commit until the receipt is written: a run of this
        // submission may end at once, and its receipt must be the one that stays.
        let lock = ReceiptLock::take();
        let (sub, _batch) = writer.commit().inspect_err(|_| stage::remove_created(&created))?;
        crate::fsutil::fault_pause("commit");
        self.finish(claimed, &sub, shape, Known::Lines(lock, parsed.lines))
    }

    fn existing(&self, sb: &str) -> Result<Option<Submission>> {
        match self.store.submission(sb) {
            Ok(s) => Ok(Some(s)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Validates a claimed entry; returns the report and the name to show in errors.
    fn validate(&self, claimed: &Path, name: &str, shape: &Claimed, sink: &mut dyn FnMut(spec::Job)) -> (Report, PathBuf) {
        parse_entry(claimed, name, shape, self.layout.inbox(), &self.roots, &self.rules, sink)
    }

    /// Records a rejection. Rejected before for the very same problems, it gets no second
    /// rejected/ folder: its receipt points at the first one's.
    #[allow(clippy::too_many_arguments)]
    fn reject(
        &mut self,
        claimed: &Path,
        sb: &str,
        name: &str,
        sha: &str,
        shape: &Claimed,
        report: &Report,
        display: &Path,
        rejected_before: Option<&str>,
    ) -> Result<Taken> {
        let digest = crate::fsutil::hex(&Sha256::digest(render_problems(report, Path::new("FILE"), claimed, "FILE").as_bytes()));
        let same_as = match rejected_before {
            Some(_) => self
                .store
                .rejections_by_sha256(sha)?
                .into_iter()
                .find(|s| s.duplicate_of.is_none() && s.problems_digest.as_deref() == Some(digest.as_str()))
                .map(|s| s.id),
            None => None,
        };
        let sub = self.store.record_submission(
            Some(sb),
            &Unaccepted {
                file: name,
                sha256: sha,
                status: SubmissionStatus::Rejected,
                duplicate_of: same_as.as_deref(),
                problems: report.problem_count(),
                problems_digest: Some(&digest),
                rejected_before,
            },
        )?;
        self.finish(claimed, &sub, shape, Known::Errors(render_problems(report, display, claimed, name)))
    }

    /// The steps after the decision, each safe to repeat: rejected/ folder, receipt, archive.
    fn finish(&mut self, claimed: &Path, sub: &Submission, shape: &Claimed, known: Known) -> Result<Taken> {
        let name = sub.file.clone();
        let fate = match sub.status {
            SubmissionStatus::Accepted => Fate::Accepted { runs: sub.runs },
            SubmissionStatus::Duplicate => Fate::Duplicate { of: sub.duplicate_of.clone().unwrap_or_default() },
            SubmissionStatus::Rejected => Fate::Rejected { problems: sub.problems, same_as: sub.duplicate_of.clone() },
        };
        if let Fate::Rejected { same_as: None, .. } = fate {
            let errors = match &known {
                Known::Errors(e) => e.clone(),
                _ => {
                    let (report, display) = self.validate(claimed, &name, shape, &mut |_| {});
                    render_problems(&report, &display, claimed, &name)
                }
            };
            self.write_rejected(claimed, &name, &sub.id, &errors)?;
        }
        let receipt = match known {
            Known::Lines(lock, lines) => {
                crate::outbox::Outbox::new(&self.layout, self.file_mode).write_receipt_of(&lock, &self.store, sub, &lines)?
            }
            _ => self.write_receipt(sub)?,
        };
        let archived = self.layout.archived(&sub.id, &name);
        if std::fs::symlink_metadata(claimed).is_ok() {
            move_entry(claimed, &archived).map_err(at("cannot archive", claimed))?;
        }
        Ok(Taken { submission: sub.id.clone(), name, fate, receipt })
    }

    fn write_rejected(&self, claimed: &Path, name: &str, sb: &str, errors: &str) -> Result<()> {
        let final_dir = self.layout.rejected_dir(name, sb);
        if final_dir.exists() {
            return Ok(());
        }
        let tmp = crate::fsutil::temp_beside(&final_dir);
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(at("cannot create", &tmp))?;
        // The original travels with its errors; a fifo, link or device does not (errors.txt
        // says what it was, and the archive keeps it).
        let ft = std::fs::symlink_metadata(claimed).map_err(at("cannot read", claimed))?.file_type();
        if ft.is_file() || ft.is_dir() {
            crate::fsutil::copy_synced(claimed, &tmp.join(name)).map_err(at("cannot copy the original into", &tmp))?;
        }
        let errors_path = tmp.join(crate::layout::run_files::ERRORS);
        write_atomic(&errors_path, errors.as_bytes()).map_err(at("cannot write", &errors_path))?;
        let _ = std::fs::set_permissions(&errors_path, std::fs::Permissions::from_mode(self.file_mode));
        std::fs::rename(&tmp, &final_dir).map_err(at("cannot publish", &final_dir))?;
        sync_dir(&self.layout.rejected());
        Ok(())
    }

    /// Writes (or rewrites) the receipt of a submission from the store.
    pub fn write_receipt(&self, sub: &Submission) -> Result<PathBuf> {
        let outbox = crate::outbox::Outbox::new(&self.layout, self.file_mode);
        Ok(outbox.write_receipt(&self.store, sub)?)
    }
}

/// Validates a claimed entry as the submission it is: a top-level job file read as if it
/// were still in the inbox, a bundle against its own folder (and its base spec). Returns the
/// report and the name to show in errors.
fn parse_entry(
    claimed: &Path,
    name: &str,
    shape: &Claimed,
    inbox: &Path,
    roots: &[PathBuf],
    rules: &Rules,
    sink: &mut dyn FnMut(spec::Job),
) -> (Report, PathBuf) {
    match shape {
        Claimed::Foreign(why) => {
            let mut report = Report::default();
            report.add(Problem { line: None, key: None, message: why.clone() });
            (report, PathBuf::from(name))
        }
        Claimed::File => (spec::parse_job_file_at(claimed, inbox, roots, rules, sink), PathBuf::from(name)),
        Claimed::Bundle => {
            let (report, layout) = spec::parse_bundle(claimed, roots, rules, sink);
            let display = match layout {
                Some(l) => Path::new(name).join(l.jobs().file_name().unwrap_or_default()),
                None => PathBuf::from(name),
            };
            (report, display)
        }
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

/// A report as errors.txt shows it: the claimed copy's path (inside the state folder, which
/// means nothing to the sender) written as the name the sender gave the entry.
fn render_problems(report: &Report, display: &Path, claimed: &Path, name: &str) -> String {
    report.render(display).replace(&claimed.display().to_string(), name)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The README tells how to compute a bundle's sha256 with sha256sum: this is that line.
    #[test]
    fn a_bundles_sha256_is_what_the_readme_computes_with_sha256sum() {
        let dir = tempfile::tempdir().unwrap();
        let b = dir.path().join("bundle");
        std::fs::create_dir_all(b.join("videos/a")).unwrap();
        std::fs::write(b.join("jobs.jsonl"), "{}\n").unwrap();
        std::fs::write(b.join("videos/a/color.mp4"), b"video bytes").unwrap();
        std::fs::write(b.join("videos/B.mp4"), b"other").unwrap();
        std::fs::write(b.join("READY"), b"").unwrap();
        let shell = r#"cd "$1" && find . -type f -printf '%P\n' | LC_ALL=C sort | while read -r f; do printf '%s\0%s\n' "$f" "$(sha256sum "$f" | cut -c1-64)"; done | sha256sum | cut -c1-64"#;
        let out = std::process::Command::new("sh").args(["-c", shell, "sh"]).arg(&b).output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), submission_sha256(&b).unwrap());
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        intake: Intake,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.paths.inbox = dir.path().join("inbox");
        config.paths.outbox = dir.path().join("outbox");
        config.paths.state = dir.path().join("state");
        std::fs::create_dir_all(config.paths.inbox.join("videos")).unwrap();
        // A real (small) video: intake probes it.
        let video = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/videos/city1/color.mp4");
        std::fs::copy(video, config.paths.inbox.join("videos/color.mp4")).unwrap();
        std::fs::create_dir_all(&config.paths.state).unwrap();
        let store = Store::open(&config.paths.database()).unwrap();
        let intake = Intake::new(&config, store).unwrap();
        Fixture { _dir: dir, intake }
    }

    fn job(tag: &str) -> String {
        format!("{{\"visual_input\": \"videos/color.mp4\", \"prompt\": \"{tag}\", \"control_overrides\": {{\"edge\": {{\"control_weight\": 0.5}}}}}}\n")
    }

    fn count(dir: &Path) -> usize {
        std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
    }

    #[test]
    fn start_up_finishes_a_claim_left_at_every_step() {
        let mut f = fixture();
        let l = f.intake.layout().clone();
        let claims = l.inbox_claims(&f.intake.daemon);
        let sb = || ids::new_id(IdKind::Submission);
        // Claimed in the inbox, never copied.
        std::fs::write(claims.join(crate::layout::claim_name(&sb(), "a.jsonl")), job("a")).unwrap();
        // Copied into the state folder, the inbox's copy not yet removed.
        let both = sb();
        std::fs::write(l.inbox_claim(&f.intake.daemon, &both, "b.jsonl"), job("b")).unwrap();
        std::fs::write(l.claimed_entry(&both, "b.jsonl"), job("b")).unwrap();
        // A copy cut short: a half-made temp beside the target, the source still claimed.
        let cut = sb();
        std::fs::write(l.inbox_claim(&f.intake.daemon, &cut, "c.jsonl"), job("c")).unwrap();
        std::fs::write(crate::fsutil::move_temp(&l.claimed_entry(&cut, "c.jsonl")), "{\"visual_in").unwrap();
        // Another daemon's claim: not ours to finish.
        let theirs = l.inbox_claims("otherhost-aaaaaaaaaaaa");
        std::fs::create_dir_all(&theirs).unwrap();
        std::fs::write(theirs.join(crate::layout::claim_name(&sb(), "d.jsonl")), job("d")).unwrap();

        let done = f.intake.recover().unwrap();
        let mut names: Vec<&str> = done.iter().map(|t| t.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["a.jsonl", "b.jsonl", "c.jsonl"]);
        assert!(done.iter().all(|t| t.fate == Fate::Accepted { runs: 1 }), "{done:?}");
        assert_eq!(count(&claims), 0);
        assert_eq!(count(&l.claimed()), 0, "no leftover temp either");
        assert_eq!(count(&l.archive()), 3);
        assert_eq!(count(&theirs), 1, "another daemon's claim is left alone");
        assert_eq!(f.intake.store().counts().unwrap().queued, 3);
    }

    #[test]
    fn a_claim_that_cannot_be_made_stays_in_the_inbox_and_waits_its_backoff() {
        let mut f = fixture();
        let l = f.intake.layout().clone();
        let claims = l.inbox_claims(&f.intake.daemon);
        std::fs::write(l.inbox_entry("j.jsonl"), job("j")).unwrap();
        // The claim folder is not a folder: every rename into it fails.
        std::fs::remove_dir(&claims).unwrap();
        std::fs::write(&claims, b"").unwrap();
        let err = f.intake.take("j.jsonl").unwrap_err();
        assert_eq!(err.stage(), Stage::Claim);
        assert!(err.to_string().starts_with(&format!("cannot claim {}", l.inbox_entry("j.jsonl").display())), "{err}");
        assert!(l.inbox_entry("j.jsonl").exists(), "still in the inbox under its name");
        assert!(f.intake.is_waiting("j.jsonl"));
        assert!(f.intake.take("j.jsonl").unwrap().is_none(), "not tried again before its backoff");
        let report = f.intake.stuck_report();
        assert_eq!(report[0]["file"], "j.jsonl");
        assert_eq!(report[0]["attempts"], 1);
        assert!(report[0]["reason"].as_str().unwrap().contains("Not a directory"), "{report}");
        // Put right: the retry takes it.
        std::fs::remove_file(&claims).unwrap();
        std::fs::create_dir_all(&claims).unwrap();
        std::thread::sleep(super::super::stuck::FIRST_RETRY);
        let done = f.intake.retry_due();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].fate, Fate::Accepted { runs: 1 });
        assert!(f.intake.next_retry().is_none());
        assert_eq!(f.intake.stuck_report(), serde_json::json!([]));
    }
}

#[cfg(test)]
mod two_threads {
    //! The intake's parsing and inserting threads: batches, their last partial one, and
    //! what is left when a line deep in the file is bad.
    use super::*;

    fn fixture() -> (tempfile::TempDir, Intake) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.paths.inbox = dir.path().join("inbox");
        config.paths.outbox = dir.path().join("outbox");
        config.paths.state = dir.path().join("state");
        std::fs::create_dir_all(config.paths.inbox.join("videos")).unwrap();
        // Three real videos of distinct content (intake probes them).
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/videos");
        for (v, from) in [("a.mp4", "city1/color.mp4"), ("b.mp4", "street1/color.mp4"), ("c.mp4", "street1/segmentation.mp4")] {
            std::fs::copy(fixtures.join(from), config.paths.inbox.join("videos").join(v)).unwrap();
        }
        std::fs::create_dir_all(&config.paths.state).unwrap();
        let store = Store::open(&config.paths.database()).unwrap();
        let intake = Intake::new(&config, store).unwrap();
        (dir, intake)
    }

    /// `lines` jobs over three videos; line `bad` (1-based), if any, names a missing one.
    fn jobs(lines: usize, bad: Option<usize>) -> String {
        (1..=lines)
            .map(|n| {
                let video = if Some(n) == bad { "missing.mp4".to_string() } else { ["a.mp4", "b.mp4", "c.mp4"][n % 3].to_string() };
                format!("{{\"visual_input\": \"videos/{video}\", \"prompt\": \"p{n}\", \"name\": \"job-{n}\", \"control_overrides\": {{\"edge\": {{\"control_weight\": 0.5}}}}}}\n")
            })
            .collect()
    }

    #[test]
    fn many_batches_and_a_partial_last_one_are_all_recorded_in_line_order() {
        let (_dir, mut intake) = fixture();
        let lines = ROWS_PER_BATCH * 3 + 17;
        std::fs::write(intake.layout().inbox_entry("big.jsonl"), jobs(lines, None)).unwrap();
        let taken = intake.take("big.jsonl").unwrap().unwrap();
        assert_eq!(taken.fate, Fate::Accepted { runs: lines as u64 });
        assert_eq!(intake.store().counts().unwrap().queued, lines as u64);
        assert_eq!(intake.store().list_prompts(None).unwrap().len(), lines);
        let receipt: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&taken.receipt).unwrap()).unwrap();
        let runs = receipt["runs"].as_array().unwrap();
        assert_eq!(runs.len(), lines);
        for (i, r) in runs.iter().enumerate() {
            assert_eq!(r["line"], i as u64 + 1);
            assert_eq!(r["name"], format!("job-{}", i + 1));
            assert_eq!(r["status"], "queued");
            // The receipt was written from memory: it must say what the store holds.
            let run = intake.store().run(r["run_id"].as_str().unwrap()).unwrap();
            assert_eq!(run.line, Some(i as u64 + 1));
            assert_eq!(run.name.as_deref(), Some(format!("job-{}", i + 1).as_str()));
        }
        assert_eq!(std::fs::read_dir(intake.layout().inputs()).unwrap().count(), 3, "three videos, three staged files");
    }

    #[test]
    fn a_bad_line_deep_in_a_large_file_leaves_no_row_and_no_staged_input() {
        let (_dir, mut intake) = fixture();
        let lines = ROWS_PER_BATCH * 4;
        let bad = lines - 3;
        std::fs::write(intake.layout().inbox_entry("bad.jsonl"), jobs(lines, Some(bad))).unwrap();
        let taken = intake.take("bad.jsonl").unwrap().unwrap();
        assert_eq!(taken.fate, Fate::Rejected { problems: 1, same_as: None });
        let counts = intake.store().counts().unwrap();
        assert_eq!(counts.queued + counts.pending, 0, "the batches inserted before the bad line were rolled back");
        assert!(intake.store().list_prompts(None).unwrap().is_empty());
        let staged = std::fs::read_dir(intake.layout().inputs()).map(|d| d.count()).unwrap_or(0);
        assert_eq!(staged, 0, "nothing stored for a rejected file");
        let errors = std::fs::read_to_string(intake.layout().rejected_dir("bad.jsonl", &taken.submission).join("errors.txt")).unwrap();
        assert!(errors.contains(&format!("bad.jsonl:{bad}: visual_input")), "{errors}");
    }
}
