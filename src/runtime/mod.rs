//! Runtimes: where the worker lives: `process` (a child process on the host) or `docker` (a
//! persistent container). Both start it as [`launch`] says and speak [`protocol`].

pub mod docker;
pub mod error;
pub mod launch;
pub mod process;
pub mod protocol;
pub mod worker;

pub use process::ProcessWorker;
pub use protocol::{Event, FailureKind, Op};
pub use worker::{Worker, WorkerError, WorkerInfo, WorkerMsg};
