//! The errors of starting and speaking to a worker, in either runtime: one module that the
//! worker trait and both runtimes use, so that none of them imports another for its errors.

use super::protocol::PROTOCOL_VERSION;
use std::time::Duration;

/// Starting or speaking to a worker failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot start the worker ({command}): {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("the worker did not say hello within {0:?}")]
    NoHello(Duration),
    #[error("the worker exited")]
    Exited,
    #[error("the worker speaks protocol {0}; this daemon speaks {ours}", ours = PROTOCOL_VERSION)]
    Protocol(u32),
    #[error("cannot write to the worker: {0}")]
    Write(#[source] std::io::Error),
    #[error("the daemon is stopping")]
    Stopped,
    #[error(transparent)]
    Docker(#[from] DockerError),
}

/// A path in a run the worker cannot see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalizeError {
    #[error("{0} is not in a folder mounted into the container; add its folder to paths.input_roots")]
    Unmounted(String),
    #[error("the work folder is not mounted into the container")]
    WorkNotMounted,
}

/// The Docker Engine, or the worker in its container, failed us.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker engine at {socket}: {source}")]
    Engine { socket: String, source: bollard::errors::Error },
    #[error("the image {image} is not on this host; build it (see packaging/docker/README.md) or set runtime.image")]
    MissingImage { image: String },
    #[error("docker: {0}")]
    Api(#[from] bollard::errors::Error),
    #[error("cannot start an async runtime for the Docker client: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("the worker in the container did not say hello within {0:?}")]
    NoHello(Duration),
    #[error("the worker in the container speaks protocol {0}; this daemon speaks {ours}", ours = PROTOCOL_VERSION)]
    Protocol(u32),
    #[error("the worker in the container did not answer a ping after re-attaching")]
    NoPong,
    #[error("cannot write to the worker in the container: {0}")]
    Write(#[source] std::io::Error),
    #[error("the container's stream ended")]
    Exited,
    #[error("the daemon is stopping")]
    Stopped,
    #[error("the check did not finish within {0:?}")]
    CheckTimeout(Duration),
}
