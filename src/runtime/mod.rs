//! Runtimes: where the worker lives: `process` (a child process on the host) or `docker` (a
//! persistent container). Both start it as [`launch`] says and speak [`protocol`].

pub mod docker;
pub mod launch;
pub mod process;
pub mod protocol;

pub use process::{ProcessWorker, WorkerError};
pub use protocol::{Event, Op};
