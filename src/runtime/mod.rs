//! Runtimes: where the worker lives. `process` (a child process on the host) is here; the
//! Docker runtime comes with its issue. Both speak [`protocol`].

pub mod docker;
pub mod process;
pub mod protocol;

pub use process::{ProcessWorker, WorkerError};
pub use protocol::{Event, Op};
