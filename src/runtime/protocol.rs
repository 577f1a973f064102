//! The worker protocol of DESIGN.md section 8: JSON lines, ops to the worker's stdin and
//! events from its (protected) stdout.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The protocol version this daemon speaks; a worker's `hello` must say the same. Fields
/// are only added within a version (serde defaults read a worker that leaves them out):
/// `load.options` (constructor options), `loaded.options`, `load_failed.kind`.
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
        /// The constructor options the load applied (an OOM's remedy), as the worker took
        /// them. Added in protocol 1 without a bump: older workers leave it out.
        #[serde(default)]
        options: Option<Value>,
    },
    LoadFailed {
        #[serde(default)]
        controls: Vec<String>,
        message: String,
        /// `oom` when the load ran out of GPU memory (healed like a run's OOM); absent from
        /// older workers: a plain load failure.
        #[serde(default)]
        kind: Option<FailureKind>,
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
        /// The constructor options that model was loaded with (none from older workers).
        #[serde(default)]
        options: Option<Value>,
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

/// The longest event line taken from a worker. Events are small (a `done` with its
/// outputs and settings is a few KiB); a longer line is garbage, dropped as it streams by.
pub const MAX_EVENT_LINE: usize = 1 << 20;

/// What one line of a worker's event stream turned out to be.
#[derive(Debug)]
pub enum WorkerLine {
    Event(Event),
    /// Not an event (a library printing on the wrong stream, invalid UTF-8, a broken
    /// line): what to say about it, with the start of the line.
    Garbage(String),
}

/// Splits a worker's event stream (bytes, in any chunks) into lines, holding at most
/// [`MAX_EVENT_LINE`] bytes of one: a longer line is skipped as it arrives, never held, and
/// a line cut off by the worker's exit is reported as such. The same for both runtimes.
#[derive(Debug, Default)]
pub struct EventLines {
    buf: Vec<u8>,
    /// Bytes of the over-long line being skipped, if one is.
    skipping: Option<u64>,
}

impl EventLines {
    /// Feeds `chunk`; each whole line found goes to `each`.
    pub fn push(&mut self, mut chunk: &[u8], each: &mut dyn FnMut(WorkerLine)) {
        while !chunk.is_empty() {
            let newline = chunk.iter().position(|b| *b == b'\n');
            let (part, rest) = match newline {
                Some(i) => (&chunk[..i], &chunk[i + 1..]),
                None => (chunk, &[][..]),
            };
            if let Some(skipped) = self.skipping.as_mut() {
                *skipped += part.len() as u64;
            } else if self.buf.len() + part.len() > MAX_EVENT_LINE {
                self.skipping = Some((self.buf.len() + part.len()) as u64);
                self.buf = Vec::new();
            } else {
                self.buf.extend_from_slice(part);
            }
            if newline.is_some() {
                match self.skipping.take() {
                    Some(bytes) => each(WorkerLine::Garbage(format!("a line of {bytes} bytes (over {MAX_EVENT_LINE}), skipped"))),
                    None => {
                        let line = std::mem::take(&mut self.buf);
                        if let Some(l) = classify(&line) {
                            each(l);
                        }
                    }
                }
            }
            chunk = rest;
        }
    }

    /// The stream ended: a line without its end means the worker died mid-write.
    pub fn finish(self, each: &mut dyn FnMut(WorkerLine)) {
        match self.skipping {
            Some(bytes) => each(WorkerLine::Garbage(format!("a line of {bytes} bytes, cut off by the worker's exit"))),
            None if !self.buf.iter().all(u8::is_ascii_whitespace) => each(WorkerLine::Garbage(format!(
                "a line cut off by the worker's exit: {}",
                String::from_utf8_lossy(&self.buf).chars().take(200).collect::<String>()
            ))),
            None => {}
        }
    }
}

/// One whole line: an event, garbage, or nothing (blank).
fn classify(line: &[u8]) -> Option<WorkerLine> {
    let Ok(text) = std::str::from_utf8(line) else {
        let shown: String = String::from_utf8_lossy(line).chars().take(200).collect();
        return Some(WorkerLine::Garbage(format!("a line that is not UTF-8: {shown}")));
    };
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    Some(match parse_event(text) {
        Ok(ev) => WorkerLine::Event(ev),
        Err(e) => WorkerLine::Garbage(format!("a line that is not an event ({e})")),
    })
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
    fn load_options_travel_and_a_load_oom_says_so() {
        let op = Op::Load { controls: vec!["edge".into()], options: serde_json::json!({"offload_network": true}) };
        assert_eq!(op.to_line(), "{\"op\":\"load\",\"controls\":[\"edge\"],\"options\":{\"offload_network\":true}}\n");
        let ev = parse_event(r#"{"event":"load_failed","controls":["edge"],"message":"CUDA out of memory","kind":"oom"}"#).unwrap();
        assert!(matches!(ev, Event::LoadFailed { kind: Some(FailureKind::Oom), .. }), "{ev:?}");
        // A worker that says neither (older): a plain load failure, options unknown.
        let ev = parse_event(r#"{"event":"load_failed","message":"m"}"#).unwrap();
        assert!(matches!(ev, Event::LoadFailed { kind: None, .. }), "{ev:?}");
        let ev = parse_event(r#"{"event":"loaded","controls":["edge"],"seconds":1.0}"#).unwrap();
        assert!(matches!(ev, Event::Loaded { options: None, .. }), "{ev:?}");
    }

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

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut lines = EventLines::default();
        let mut got = Vec::new();
        let mut each = |l: WorkerLine| {
            got.push(match l {
                WorkerLine::Event(e) => format!("event {e:?}").chars().take(20).collect(),
                WorkerLine::Garbage(g) => g,
            })
        };
        for c in chunks {
            lines.push(c, &mut each);
        }
        lines.finish(&mut each);
        got
    }

    #[test]
    fn event_lines_survive_garbage_huge_lines_bad_utf8_and_a_cut() {
        let pong = br#"{"event":"pong","state":"idle"}"#;
        // An event split across chunks, a blank line, garbage, invalid UTF-8.
        let got = split(&[&pong[..10], &pong[10..], b"\n\nloading weights...\n", b"\xff\xfe{\n"]);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].starts_with("event Pong"), "{got:?}");
        assert!(got[1].starts_with("a line that is not an event"), "{got:?}");
        assert!(got[2].starts_with("a line that is not UTF-8"), "{got:?}");
        // A line over the cap, fed in pieces: skipped with its size, and the next line is whole.
        let big = vec![b'x'; 300_000];
        let mut chunks: Vec<&[u8]> = (0..5).map(|_| &big[..]).collect();
        chunks.push(b"\n");
        chunks.push(pong);
        chunks.push(b"\n{\"event\":\"do");
        let got = split(&chunks);
        assert_eq!(got[0], "a line of 1500000 bytes (over 1048576), skipped");
        assert!(got[1].starts_with("event Pong"), "{got:?}");
        assert_eq!(got[2], "a line cut off by the worker's exit: {\"event\":\"do");
        assert_eq!(got.len(), 3);
    }
}
