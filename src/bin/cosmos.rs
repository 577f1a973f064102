//! `cosmos`: the command line. Parsing and exit codes here; the work is in the library.

use clap::Parser;
use cosmos_workflow::cli::{self, Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = Cli::parse();
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
