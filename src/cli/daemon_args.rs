//! `cosmosd`'s command line, defined here rather than in its binary so that one generator
//! ([`super::docs`]) writes the man pages and completions of both programs.

use crate::config::GlobalOpts;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cosmosd",
    version,
    about = "Cosmos Workflow daemon: inbox -> store -> worker -> outbox",
    long_about = "Cosmos Workflow daemon: takes job files from the inbox, records their runs in the store, feeds them to a warm \
                  NVIDIA Cosmos Transfer worker and publishes each finished run as a folder in the outbox. Without a \
                  subcommand it runs until SIGTERM or SIGINT (which drain), reloading the configuration on SIGHUP."
)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Option<DaemonCmd>,
}

#[derive(Debug, Subcommand)]
pub enum DaemonCmd {
    /// Validate the configuration and print the effective values
    CheckConfig,
    /// Check the host as the daemon will use it (GPUs, Docker, image, NVIDIA's code,
    /// checkpoints, Hugging Face cache, disk), with the fix for each miss; exit 1 on a miss
    CheckHost,
}
