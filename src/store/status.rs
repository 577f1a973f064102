//! Run status and the only transitions allowed between them; a submission's status.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a run is in its life. `Completed` is final: a finished job never runs twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Created, not queued (`cosmos create run`).
    Pending,
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub const ALL: [RunStatus; 6] =
        [RunStatus::Pending, RunStatus::Queued, RunStatus::Running, RunStatus::Completed, RunStatus::Failed, RunStatus::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether a run in this status may move to `next`.
    pub fn can_become(self, next: RunStatus) -> bool {
        use RunStatus::*;
        matches!(
            (self, next),
            (Pending, Queued)
                | (Pending, Cancelled)
                | (Queued, Running)
                | (Queued, Cancelled)
                // A queued upscale child fails when its parent fails.
                | (Queued, Failed)
                | (Running, Completed)
                | (Running, Failed)
                | (Running, Cancelled)
                // Handed back (daemon stop, lost worker) or retried after a retryable failure.
                | (Running, Queued)
                // `cosmos retry`, or queueing a failed/cancelled run again.
                | (Failed, Queued)
                | (Cancelled, Queued)
        )
    }

    pub fn is_final(self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RunStatus::parse(s).ok_or_else(|| format!("expected one of {}, got {s:?}", RunStatus::ALL.map(|s| s.as_str()).join(", ")))
    }
}

/// A change to a run, with the data that change carries. The store applies it, with its
/// event row, in one transaction, and refuses it when the run's status does not allow it.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Queue {
        detail: String,
    },
    Start,
    Complete {
        outputs: serde_json::Value,
    },
    Fail {
        error: String,
    },
    Cancel {
        reason: String,
    },
    /// Back to the queue from running (hand-back, retryable failure) or from failed or
    /// cancelled (`cosmos retry`).
    Requeue {
        reason: String,
    },
}

impl Change {
    pub fn target(&self) -> RunStatus {
        match self {
            Change::Queue { .. } | Change::Requeue { .. } => RunStatus::Queued,
            Change::Start => RunStatus::Running,
            Change::Complete { .. } => RunStatus::Completed,
            Change::Fail { .. } => RunStatus::Failed,
            Change::Cancel { .. } => RunStatus::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_is_final_and_nothing_skips_running() {
        for next in RunStatus::ALL {
            assert!(!RunStatus::Completed.can_become(next), "completed -> {next}");
            assert!(!next.can_become(next), "{next} -> {next}");
        }
        assert!(!RunStatus::Pending.can_become(RunStatus::Running));
        assert!(!RunStatus::Queued.can_become(RunStatus::Completed));
        assert!(RunStatus::Failed.can_become(RunStatus::Queued));
        assert_eq!("running".parse::<RunStatus>(), Ok(RunStatus::Running));
        assert!("runing".parse::<RunStatus>().unwrap_err().contains("expected one of"));
    }
}

/// What became of a submission (DESIGN.md section 3); the text is what the store, the
/// receipts and `cosmos` say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubmissionStatus {
    Accepted,
    /// The same content as an accepted submission: nothing runs again.
    Duplicate,
    Rejected,
}

impl SubmissionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SubmissionStatus::Accepted => "accepted",
            SubmissionStatus::Duplicate => "duplicate",
            SubmissionStatus::Rejected => "rejected",
        }
    }

    pub fn parse(text: &str) -> Option<SubmissionStatus> {
        [SubmissionStatus::Accepted, SubmissionStatus::Duplicate, SubmissionStatus::Rejected].into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for SubmissionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
