//! The worker protocol of DESIGN.md section 8: JSON lines, ops to the worker's stdin and
//! events from its (protected) stdout.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The protocol version this daemon speaks; a worker's `hello` must say the same.
pub const PROTOCOL_VERSION: u32 = 1;

/// Why a run attempt failed. The worker reports `input`, `blocked`, `oom`, `internal` (and
/// `cancelled`); the daemon adds what it sees from outside. The text is what the store,
/// logs and receipts say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum FailureKind {
    /// Bad input: the run itself is wrong; retrying cannot help.
    Input,
    /// A guardrail refused it.
    Blocked,
    /// Out of GPU memory: another attempt may fit.
    Oom,
    /// The model failed.
    Internal,
    /// The worker stopped it on request.
    Cancelled,
    /// The worker process (or container) died.
    Crash,
    /// The worker stopped answering pings.
    Hang,
    /// `scheduler.run_timeout` passed.
    Timeout,
    /// The model load failed.
    Load,
    /// A kind this daemon does not know, kept as the worker wrote it.
    Other(String),
}

impl FailureKind {
    pub fn as_str(&self) -> &str {
        match self {
            FailureKind::Input => "input",
            FailureKind::Blocked => "blocked",
            FailureKind::Oom => "oom",
            FailureKind::Internal => "internal",
            FailureKind::Cancelled => "cancelled",
            FailureKind::Crash => "crash",
            FailureKind::Hang => "hang",
            FailureKind::Timeout => "timeout",
            FailureKind::Load => "load",
            FailureKind::Other(s) => s,
        }
    }
}

impl From<String> for FailureKind {
    fn from(text: String) -> FailureKind {
        match text.as_str() {
            "input" => FailureKind::Input,
            "blocked" => FailureKind::Blocked,
            "oom" => FailureKind::Oom,
            "internal" => FailureKind::Internal,
            "cancelled" => FailureKind::Cancelled,
            "crash" => FailureKind::Crash,
            "hang" => FailureKind::Hang,
            "timeout" => FailureKind::Timeout,
            "load" => FailureKind::Load,
            _ => FailureKind::Other(text),
        }
    }
}

impl From<FailureKind> for String {
    fn from(k: FailureKind) -> String {
        k.as_str().to_string()
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// daemon -> worker.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Load { controls: Vec<String>, options: Value },
    Run { run_id: String, attempt: u32, spec: Value, output_dir: String },
    Ping,
    Cancel { run_id: String },
    Shutdown,
}

/// worker -> daemon.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Hello {
        protocol: u32,
        backend: String,
        #[serde(default)]
        version: String,
        #[serde(default)]
        pid: u32,
    },
    Loaded {
        controls: Vec<String>,
        #[serde(default)]
        seconds: f64,
    },
    LoadFailed {
        #[serde(default)]
        controls: Vec<String>,
        message: String,
    },
    Progress {
        run_id: String,
        step: u64,
        steps: u64,
    },
    Done {
        run_id: String,
        outputs: Outputs,
        #[serde(default)]
        seconds: f64,
    },
    Failed {
        run_id: String,
        kind: FailureKind,
        retryable: bool,
        message: String,
    },
    Pong {
        state: String,
        #[serde(default)]
        run_id: Option<String>,
        /// The control set the model holds (a re-attached daemon needs no new load).
        #[serde(default)]
        controls: Option<Vec<String>>,
        #[serde(default)]
        version: Option<String>,
        #[serde(default)]
        pid: Option<u32>,
    },
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
pub struct Outputs {
    #[serde(default)]
    pub video: Option<String>,
    #[serde(default)]
    pub controls: BTreeMap<String, String>,
    /// What the model was actually called with (the worker reports it): recorded in the
    /// run's manifest.json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<Value>,
}

impl Op {
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_else(|_| "{\"op\":\"ping\"}".into());
        line.push('\n');
        line
    }
}

/// Parses one line the worker wrote; `Err` says why it is not an event.
pub fn parse_event(line: &str) -> Result<Event, String> {
    serde_json::from_str(line).map_err(|e| format!("{e}: {}", line.chars().take(200).collect::<String>()))
}

/// What a `result.json` in a run's output folder says (the worker writes it before it
/// reports): how a daemon that was down learns a result.
pub fn read_result(output_dir: &std::path::Path) -> Option<Event> {
    let text = std::fs::read_to_string(output_dir.join(crate::layout::run_files::RESULT)).ok()?;
    parse_event(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_and_events_have_the_design_card_shape() {
        let op = Op::Run { run_id: "rs_a".into(), attempt: 2, spec: serde_json::json!({}), output_dir: "/w".into() };
        assert_eq!(op.to_line(), "{\"op\":\"run\",\"run_id\":\"rs_a\",\"attempt\":2,\"spec\":{},\"output_dir\":\"/w\"}\n");
        assert_eq!(Op::Ping.to_line(), "{\"op\":\"ping\"}\n");
        let ev = parse_event(
            r#"{"event":"done","run_id":"rs_a","outputs":{"video":"/w/output.mp4","controls":{"edge":"/w/e.mp4"}},"seconds":1.5}"#,
        )
        .unwrap();
        assert!(matches!(ev, Event::Done { ref run_id, .. } if run_id == "rs_a"));
        let ev = parse_event(r#"{"event":"failed","run_id":"rs_a","kind":"oom","retryable":true,"message":"m","attempt":1}"#).unwrap();
        assert!(matches!(ev, Event::Failed { retryable: true, kind: FailureKind::Oom, .. }));
        let ev = parse_event(r#"{"event":"failed","run_id":"rs_a","kind":"exotic","retryable":false,"message":"m"}"#).unwrap();
        assert!(matches!(ev, Event::Failed { kind: FailureKind::Other(ref k), .. } if k == "exotic"), "unknown kinds are kept");
        assert!(parse_event("loading model...").is_err());
    }
}
