//! Cosmos Workflow: run NVIDIA Cosmos Transfer video generation unattended.
//!
//! Data flows one way: `intake` -> [`store`] -> `scheduler` -> `runtime` -> `outbox`.
//! This crate is the library both binaries share: `cosmosd` (the daemon) and `cosmos`
//! (the command line).

pub mod checkhost;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
pub mod gpu;
pub mod hooks;
pub mod ids;
pub mod intake;
pub mod layout;
pub mod metrics;
pub mod outbox;
pub mod policy;
pub mod probe;
pub mod prune;
pub mod runtime;
pub mod scheduler;
pub mod spec;
pub mod store;
pub mod time;
pub mod web;
