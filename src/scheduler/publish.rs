//! Publication of a finished run: its folder built in the outbox and renamed into place,
//! the run completed in the store (with its upscale child, if it asked for one), its
//! receipt rewritten. Done after the next run has been sent to the worker.

use super::Scheduler;
use crate::ids::{self, IdKind};
use crate::layout::run_files;
use crate::runtime::protocol::Outputs;
use crate::runtime::worker::WorkerInfo;
use crate::spec::{Control, Hint, RunSpec};
use crate::store::{Change, Run, StoreError};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A finished run waiting to be published once the next run is on its way.
pub struct Finished {
    pub run_id: String,
    pub outputs: Outputs,
    pub seconds: f64,
    /// The model load the run waited for (`None`: the model was loaded already).
    pub load_seconds: Option<f64>,
    /// GPU peak and mean over the run, for its manifest.
    pub gpu: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Outbox(#[from] crate::outbox::OutboxError),
    /// The shared queue cannot take the result now (the run waits; its lease is kept).
    #[error(transparent)]
    Queue(crate::cluster::ClusterError),
}

impl PublishError {
    /// A full disk, a busy store, an I/O error: the run is published once it passes.
    pub fn is_transient(&self) -> bool {
        match self {
            PublishError::Store(e) => e.is_transient(),
            PublishError::Outbox(e) => e.is_transient(),
            PublishError::Queue(_) => true,
        }
    }
}

impl Scheduler {
    /// Publishes the finished runs waiting for it, in order. One that cannot be published
    /// for a reason that passes (a full disk) stays waiting, and no new run starts until it
    /// is out (`publish_blocked` says why in status.json); for any other reason the run
    /// fails with it. A run never shows as completed without its folder.
    pub(super) fn publish_pending(&mut self) {
        while let Some(f) = self.pending.pop_front() {
            match self.publish(&f) {
                Ok(()) => {
                    if self.publish_blocked.take().is_some() {
                        tracing::info!(run = %f.run_id, "published after waiting");
                    }
                }
                Err(e) if e.is_transient() => {
                    let why = format!("cannot publish run {} yet: {e}", f.run_id);
                    if self.publish_blocked.as_deref() != Some(why.as_str()) {
                        tracing::warn!(run = %f.run_id, error = %e, "cannot publish the run yet; it waits (its outputs are kept)");
                    }
                    self.publish_blocked = Some(why);
                    self.pending.push_front(f);
                    return;
                }
                Err(e) => {
                    tracing::error!(run = %f.run_id, error = %e, "cannot publish the run");
                    let error = format!("cannot publish the run folder: {e}");
                    if let Err(e) = self.persist(|s| s.finish_unsuccessfully(&f.run_id, Change::Fail { error: error.clone() })) {
                        tracing::error!(run = %f.run_id, error = %e, "cannot record the failure; start-up recovery will find the run");
                    }
                }
            }
        }
    }

    fn publish(&mut self, f: &Finished) -> Result<(), PublishError> {
        if self.cluster.is_some() {
            return self.cluster_publish(f);
        }
        let run = self.store.run(&f.run_id)?;
        let batch = match &run.batch_id {
            Some(b) => Some(self.store.batch(b)?),
            None => None,
        };
        // A restart re-publishing must name the same child as the folder already does.
        let child_id = run.spec.upscale_weight.map(|_| self.outbox.published_child(&run.id).unwrap_or_else(|| ids::new_id(IdKind::Run)));
        let info = self
            .hand
            .worker
            .as_ref()
            .map(|w| w.info())
            .unwrap_or_else(|| WorkerInfo { backend: self.config.runtime.backend.as_str().to_string(), ..Default::default() });
        let timing = crate::outbox::RunTiming { seconds: f.seconds, load_seconds: f.load_seconds };
        // What OOMs changed on the way (None: nothing).
        let remedy = self.store.remedy(&run.id)?;
        let extra = crate::outbox::RunExtra { gpu: f.gpu.clone(), remedy };
        let dir = self.outbox.publish_run(&run, &f.outputs, batch.as_ref(), &info, child_id.as_deref(), timing, extra)?;
        let video = dir.join(run_files::OUTPUT_VIDEO);
        let outputs = json!({
            "type": if batch.is_some() { "batch_inference" } else { "inference" },
            "output_dir": dir,
            "primary_output": video,
            "batch_name": batch.as_ref().map(|b| b.folder_name()),
        });
        let child = match (&child_id, run.spec.upscale_weight) {
            (Some(id), Some(w)) => Some((id.as_str(), upscale_spec(&run.spec, w, &video))),
            _ => None,
        };
        let done = self.store.complete(&run.id, outputs, child)?;
        tracing::info!(run = %run.id, folder = %dir.display(), "completed");
        self.after_end(&done);
        self.write_status_if_due(true);
        Ok(())
    }

    /// The run's receipt, rewritten with its new status: at once for a submission of up
    /// to [`RECEIPT_AT_ONCE`] runs; a larger one is marked and rewritten by
    /// [`Scheduler::flush_receipts`] at most every [`RECEIPT_EVERY`] (rewriting a
    /// 100,000-line receipt at every run's end would cost more than the runs).
    pub(super) fn after_end(&self, run: &Run) {
        let Some(sb) = &run.submission_id else { return };
        match self.store.submission(sb) {
            Ok(sub) if sub.runs > RECEIPT_AT_ONCE => self.shared.mark_receipt(sb),
            Ok(sub) => {
                if let Err(e) = self.outbox.write_receipt(&self.store, &sub) {
                    tracing::warn!(error = %e, run = %run.id, "cannot update the receipt");
                }
            }
            Err(e) => tracing::warn!(error = %e, run = %run.id, "cannot update the receipt"),
        }
    }

    /// Rewrites the marked receipts that have waited [`RECEIPT_EVERY`], or all of them
    /// (`all`: the daemon stops).
    pub(super) fn flush_receipts(&self, all: bool) {
        for sb in self.shared.due_receipts(all, RECEIPT_EVERY) {
            let written = self
                .store
                .submission(&sb)
                .map_err(crate::outbox::OutboxError::from)
                .and_then(|sub| self.outbox.write_receipt(&self.store, &sub));
            if let Err(e) = written {
                tracing::warn!(error = %e, submission = %sb, "cannot update the receipt");
            }
        }
    }
}

pub use crate::outbox::{RECEIPT_AT_ONCE, RECEIPT_EVERY};

/// The upscale run that follows a completed run: control `upscale` at `weight` on the
/// parent's output video.
pub fn upscale_spec(parent: &RunSpec, weight: f64, output: &Path) -> RunSpec {
    let mut controls = std::collections::BTreeMap::new();
    controls.insert(Hint::Upscale, Control::from_file(weight, output.to_path_buf()));
    RunSpec {
        name: parent.name.as_ref().map(|n| format!("{}-upscale", n.chars().take(56).collect::<String>())),
        visual_input: output.to_path_buf(),
        controls,
        upscale_weight: None,
        sim: None,
        ..parent.clone()
    }
}

/// Whether the run's output video is there and not empty: a run without it is never done.
pub fn video_ok(outputs: &Outputs, out_dir: &Path) -> bool {
    let video = outputs.video.as_deref().map(PathBuf::from).unwrap_or_else(|| out_dir.join(run_files::OUTPUT_VIDEO));
    std::fs::metadata(video).map(|m| m.is_file() && m.len() > 0).unwrap_or(false)
}
