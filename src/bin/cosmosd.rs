//! `cosmosd`: the daemon. Parsing, logging set-up and exit codes here; the work is in
//! the library (`cosmos_workflow::daemon`).

use clap::{Parser, Subcommand};
use cosmos_workflow::config::ConfigSource;
use cosmos_workflow::config::GlobalOpts;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "cosmosd", version, about = "Cosmos Workflow daemon: inbox -> store -> worker -> outbox")]
struct Args {
    #[command(flatten)]
    global: GlobalOpts,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Validate the configuration and print the effective values
    CheckConfig,
    /// Check the host as the daemon will use it (GPUs, Docker, image, NVIDIA's code,
    /// checkpoints, Hugging Face cache, disk), with the fix for each miss; exit 1 on a miss
    CheckHost,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let loaded = match args.global.load() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cosmosd: {e}");
            return ExitCode::from(if e.is_usage() { 2 } else { 1 });
        }
    };
    match args.command {
        Some(Cmd::CheckConfig) => {
            let source = match &loaded.source {
                ConfigSource::File(p) | ConfigSource::SystemFile(p) => p.display().to_string(),
                ConfigSource::Defaults => "none (built-in defaults)".into(),
            };
            println!("# config file: {source}");
            println!("# the configuration is valid; effective values:");
            print!("{}", loaded.config.to_toml());
            ExitCode::SUCCESS
        }
        Some(Cmd::CheckHost) => {
            let (text, missing) = cosmos_workflow::checkhost::render(&cosmos_workflow::checkhost::check_host(&loaded.config));
            print!("{text}");
            if missing {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        None => {
            let _guard = cosmos_workflow::daemon::init_logging(&loaded.config);
            match cosmos_workflow::daemon::run(&args.global, loaded) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "cosmosd failed");
                    eprintln!("cosmosd: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
