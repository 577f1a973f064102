//! The worker as the scheduler sees it, wherever it lives: a [`Worker`] trait over the child
//! process and the container (and, in tests, a scripted fake), the messages it sends, and the
//! errors of starting and speaking to it.

pub use super::error::{LocalizeError, WorkerError};
use super::protocol::{Event, Op, Outputs};
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a worker's reader saw.
#[derive(Debug)]
pub enum WorkerMsg {
    Event(Event),
    /// Its stream closed: the worker is gone.
    Exited,
}

/// The worker that ran a run, for its manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerInfo {
    pub backend: String,
    pub version: String,
    pub pid: u32,
    pub container_id: Option<String>,
}

/// What a re-attached worker was doing when this daemon found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub running: Option<String>,
    pub controls: Vec<String>,
    /// The constructor options its model was loaded with (`{}`: none, or not said).
    pub options: Value,
}

/// A worker the scheduler drives with protocol ops.
pub trait Worker: Send {
    fn send(&mut self, op: &Op) -> Result<(), WorkerError>;
    /// The next message, or `None` after `timeout`.
    fn recv(&self, timeout: Duration) -> Option<WorkerMsg>;
    /// Ends it now (a hung or dead worker is replaced).
    fn kill(&mut self);
    fn info(&self) -> WorkerInfo;
    /// The daemon is stopping: a child process is asked to exit; a container keeps running,
    /// with its model loaded, for the next daemon to re-attach to.
    fn leave(self: Box<Self>);
    /// Host paths in `spec` and `output_dir` as the worker sees them.
    fn localize(&self, _spec: &mut Value, output_dir: &Path) -> Result<String, LocalizeError> {
        Ok(output_dir.display().to_string())
    }
    /// The worker's output paths as the host sees them.
    fn to_host(&self, outputs: Outputs) -> Outputs {
        outputs
    }
    /// What a re-attached worker was doing (once; `None` for a fresh worker).
    fn take_found(&mut self) -> Option<Found> {
        None
    }
}

/// Where the worker's stderr lines go besides the daemon log: the running run's log.
pub type LogSink = Arc<Mutex<Option<std::fs::File>>>;

/// One line the worker wrote on stderr: into the daemon log and the current run's log.
pub fn log_worker_line(log: &LogSink, line: &str) {
    tracing::info!(target: "worker", "{line}");
    if let Ok(mut sink) = log.lock() {
        if let Some(f) = sink.as_mut() {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// A worker's stderr (log text) as lines into the daemon log and the run's log, in any
/// chunks: invalid UTF-8 is shown lossily, and an endless line is cut every
/// [`MAX_EVENT_LINE`](super::protocol::MAX_EVENT_LINE) bytes rather than held.
#[derive(Debug, Default)]
pub struct LogLines {
    buf: Vec<u8>,
}

impl LogLines {
    pub fn push(&mut self, mut chunk: &[u8], log: &LogSink) {
        while let Some(i) = chunk.iter().position(|b| *b == b'\n') {
            self.buf.extend_from_slice(&chunk[..i]);
            self.flush(log);
            chunk = &chunk[i + 1..];
        }
        self.buf.extend_from_slice(chunk);
        if self.buf.len() > super::protocol::MAX_EVENT_LINE {
            self.flush(log);
        }
    }

    pub fn finish(mut self, log: &LogSink) {
        if !self.buf.is_empty() {
            self.flush(log);
        }
    }

    fn flush(&mut self, log: &LogSink) {
        log_worker_line(log, String::from_utf8_lossy(&self.buf).trim_end());
        self.buf.clear();
    }
}

/// One line of a worker's event stream, from either runtime's reader: an event goes to the
/// scheduler; garbage is said in the daemon log and the current run's execution.log, and
/// otherwise ignored (a library printing on the wrong stream must not end a run).
pub fn forward_line(line: super::protocol::WorkerLine, tx: &std::sync::mpsc::Sender<WorkerMsg>, log: &LogSink) {
    match line {
        super::protocol::WorkerLine::Event(ev) => {
            // Nobody listens once the worker was let go: the rest is drained, unread.
            let _ = tx.send(WorkerMsg::Event(ev));
        }
        super::protocol::WorkerLine::Garbage(what) => {
            tracing::warn!(%what, "the worker wrote something that is not an event; ignored");
            if let Ok(mut sink) = log.lock() {
                if let Some(f) = sink.as_mut() {
                    let _ = writeln!(f, "{} cosmosd: the worker wrote {what}; ignored", crate::time::Timestamp::now().rfc3339());
                }
            }
        }
    }
}

/// The next message from a worker's reader, or `None` after `timeout`; a reader that is
/// gone means the worker is.
pub fn recv_msg(events: &Receiver<WorkerMsg>, timeout: Duration) -> Option<WorkerMsg> {
    match events.recv_timeout(timeout) {
        Ok(m) => Some(m),
        Err(RecvTimeoutError::Timeout) => None,
        Err(RecvTimeoutError::Disconnected) => Some(WorkerMsg::Exited),
    }
}

/// How a start-up wait (hello, a load under way at re-attach) ends.
pub enum Awaited<T> {
    Got(T),
    Exited,
    TimedOut,
    Stopped,
}

/// Reads `events` until `pick` returns something, the worker exits, `limit` passes or the
/// daemon is asked to stop: no start-up wait outlasts a stop.
pub fn await_event<T>(
    recv: impl Fn(Duration) -> Option<WorkerMsg>,
    limit: Duration,
    stop: &AtomicBool,
    mut pick: impl FnMut(Event) -> Option<T>,
) -> Awaited<T> {
    let deadline = Instant::now() + limit;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Awaited::Stopped;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Awaited::TimedOut;
        }
        match recv(left.min(Duration::from_millis(250))) {
            Some(WorkerMsg::Event(ev)) => {
                if let Some(t) = pick(ev) {
                    return Awaited::Got(t);
                }
            }
            Some(WorkerMsg::Exited) => return Awaited::Exited,
            None => {}
        }
    }
}
