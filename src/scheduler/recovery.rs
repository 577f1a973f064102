//! Start-up reconciliation: runs a crash left `running`. One the re-attached worker is
//! still running is followed to its end; one whose worker finished while the daemon was
//! down is published from its result.json; the others go back to the queue.

use super::attempt::Phase;
use super::board::Current;
use super::publish::{video_ok, Finished};
use super::{Result, Scheduler, WorkerState};
use crate::runtime::protocol::{self, Event, Outputs};
use crate::store::{Change, Run, RunStatus};
use serde_json::Value;
use std::path::Path;

impl Scheduler {
    pub(super) fn recover(&mut self) -> Result<()> {
        if let Some(id) = self.adopt.take() {
            if let Ok(run) = self.store.run(&id) {
                if run.status == RunStatus::Running {
                    tracing::info!(run = %run.id, "the worker is still running it: following it");
                    self.follow_adopted(run)?;
                }
            }
        }
        // The rest is done once, by the first slot.
        if self.slot != 0 {
            return Ok(());
        }
        self.outbox.clear_leftovers();
        let adopted = self.shared.adopted.lock().map(|a| a.clone()).unwrap_or_default();
        for run in self.store.list_runs(Some(RunStatus::Running), None)? {
            if adopted.contains(&run.id) {
                continue;
            }
            let out = self.layout.run_output(&run.id);
            let result = protocol::read_result(&out).map(|ev| match ev {
                Event::Done { run_id, outputs, seconds } => Event::Done { run_id, outputs: self.outputs_on_host(outputs), seconds },
                other => other,
            });
            match result {
                Some(Event::Done { outputs, seconds, .. }) if video_ok(&outputs, &out) => {
                    tracing::info!(run = %run.id, "finished while the daemon was down: publishing");
                    self.pending.push_back(Finished { run_id: run.id.clone(), outputs, seconds, load_seconds: None, gpu: Value::Null });
                    self.publish_pending();
                }
                _ => {
                    tracing::info!(run = %run.id, "was running when the daemon stopped: back to the queue");
                    self.store.change(&run.id, Change::Requeue { reason: "the daemon restarted mid-run".into() })?;
                }
            }
        }
        Ok(())
    }

    /// Output paths from a result.json, as host paths: a container wrote container paths.
    fn outputs_on_host(&self, outputs: Outputs) -> Outputs {
        let map = crate::runtime::docker::PathMap::for_config(&self.config, &crate::runtime::process::worker_path(&self.config));
        let host = |p: String| {
            if Path::new(&p).exists() {
                return p;
            }
            map.to_host(Path::new(&p)).filter(|h| h.exists()).map_or(p, |h| h.display().to_string())
        };
        Outputs {
            video: outputs.video.map(host),
            controls: outputs.controls.into_iter().map(|(k, v)| (k, host(v))).collect(),
            settings: outputs.settings,
        }
    }

    /// A run the re-attached worker is still running: waited for like any other.
    fn follow_adopted(&mut self, run: Run) -> Result<()> {
        self.open_run_log(&run.id);
        self.run_log("the daemon restarted and re-attached; the run went on");
        let batch = match &run.batch_id {
            Some(b) => Some(self.store.batch(b)?),
            None => None,
        };
        self.board.current = Some(Current::new(&run.id));
        self.hand.state = WorkerState::Running;
        let out = self.layout.run_output(&run.id);
        let ending = self.wait(Phase::Run { out: &out }, &run);
        self.hand.state = if self.hand.worker.is_some() { WorkerState::Idle } else { WorkerState::Down };
        self.settle(&run, ending, batch.as_ref())?;
        self.board.current = None;
        self.close_run_log();
        self.publish_pending();
        Ok(())
    }
}
