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
    /// GPU peak and mean over the run, for its manifest.
    pub gpu: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Outbox(#[from] crate::outbox::OutboxError),
}

impl Scheduler {
    /// Publishes the finished run waiting for it, if any. A run that cannot be published
    /// fails with the reason (it never shows as completed without its folder).
    pub(super) fn publish_pending(&mut self) {
        let Some(f) = self.pending.take() else { return };
        if let Err(e) = self.publish(&f) {
            tracing::error!(run = %f.run_id, error = %e, "cannot publish the run");
            let _ = self.store.finish_unsuccessfully(&f.run_id, Change::Fail { error: format!("cannot publish the run folder: {e}") });
        }
    }

    fn publish(&mut self, f: &Finished) -> Result<(), PublishError> {
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
        let dir = self.outbox.publish_run(&run, &f.outputs, batch.as_ref(), &info, child_id.as_deref(), f.seconds, f.gpu.clone())?;
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

    /// The run's receipt, rewritten with its new status.
    pub(super) fn after_end(&self, run: &Run) {
        if let Err(e) = self.outbox.update_receipt_of(&self.store, run) {
            tracing::warn!(error = %e, run = %run.id, "cannot update the receipt");
        }
    }
}

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
