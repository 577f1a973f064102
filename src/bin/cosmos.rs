//! `cosmos`: the command line. Parsing and exit codes here; the work is in the library.

use clap::Parser;
use cosmos_workflow::cli::{self, share, Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    share::group_umask();
    let args = Cli::parse();
    cosmos_workflow::cli::diagnostics_on_stderr();
    // Before anything is read or made: as root, become the owner of the state folder. Not for
    // the generators, which touch no state (and write where root asked, say a build tree).
    let generator = matches!(args.command, Command::Completions { .. } | Command::Man { .. });
    match if generator { Ok(None) } else { share::act_as_state_owner(&args.global) } {
        Ok(Some((uid, gid, folder))) => {
            tracing::debug!(uid, gid, folder = %folder.display(), "running as root: acting as the owner of the state folder");
        }
        Ok(None) => {}
        Err(e) => {
            eprintln!("cosmos: {e}");
            return ExitCode::from(1);
        }
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cli::run(args, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        // `cosmos list | head`: the reader has what it wanted; stop quietly, as ripgrep does.
        Err(cli::CliError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            drop(out);
            eprintln!("cosmos: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
