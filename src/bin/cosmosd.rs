//! `cosmosd`: the daemon. Parsing, logging set-up and exit codes here; the work is in
//! the library (`cosmos_workflow::daemon`); the command line is `cosmos_workflow::cli::daemon_args`.

use clap::Parser;
use cosmos_workflow::cli::daemon_args::{DaemonArgs, DaemonCmd};
use cosmos_workflow::config::ConfigSource;
use std::process::ExitCode;

fn main() -> ExitCode {
    cosmos_workflow::cli::share::group_umask();
    let args = DaemonArgs::parse();
    let loaded = match args.global.load() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cosmosd: {e}");
            return ExitCode::from(if e.is_usage() { 2 } else { 1 });
        }
    };
    match args.command {
        Some(DaemonCmd::CheckConfig) => {
            let source = match &loaded.source {
                ConfigSource::File(p) | ConfigSource::SystemFile(p) => p.display().to_string(),
                ConfigSource::Defaults => "none (built-in defaults)".into(),
            };
            println!("# config file: {source}");
            println!("# the configuration is valid; effective values:");
            print!("{}", loaded.config.to_toml());
            ExitCode::SUCCESS
        }
        Some(DaemonCmd::CheckHost) => {
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
