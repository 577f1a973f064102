//! `cosmosd`: the daemon. Parsing, logging set-up and exit codes here; the work is in
//! the library (`cosmos_workflow::daemon`); the command line is `cosmos_workflow::cli::daemon_args`.

use clap::Parser;
use cosmos_workflow::cli::daemon_args::{DaemonArgs, DaemonCmd};
use cosmos_workflow::cli::share;
use cosmos_workflow::config::ConfigSource;
use std::process::ExitCode;

fn main() -> ExitCode {
    share::group_umask();
    let args = DaemonArgs::parse();
    // Before anything is read or made (`--root` makes folders, check-host a work folder): as
    // root, become the owner of the state folder, as `cosmos` does.
    let acting_as = match share::act_as_state_owner(&args.global) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cosmosd: {e}");
            return ExitCode::from(1);
        }
    };
    let said = |acting_as: &Option<(u32, u32, std::path::PathBuf)>| {
        if let Some((uid, gid, folder)) = acting_as {
            tracing::debug!(uid, gid, folder = %folder.display(), "running as root: acting as the owner of the state folder");
        }
    };
    let loaded = match args.global.load() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cosmosd: {e}");
            return ExitCode::from(if e.is_usage() { 2 } else { 1 });
        }
    };
    if args.command.is_some() {
        cosmos_workflow::cli::diagnostics_on_stderr();
        said(&acting_as);
    }
    match args.command {
        Some(DaemonCmd::CheckConfig) => {
            let source = match &loaded.source {
                ConfigSource::File(p) | ConfigSource::SystemFile(p) => p.display().to_string(),
                ConfigSource::Defaults => "none (built-in defaults)".into(),
            };
            println!("# config file: {source}");
            println!("# the configuration is valid; effective values:");
            print!("{}", loaded.config.to_toml_redacted());
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
            said(&acting_as);
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
