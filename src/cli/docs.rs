//! Shell completions (`cosmos completions SHELL`) and man pages (`cosmos man --out DIR`, hidden:
//! the packaging script's) for both programs, generated from their clap definitions so that
//! neither can drift from the options the binaries really take.

use super::daemon_args::DaemonArgs;
use super::Cli;
use clap::{CommandFactory, ValueEnum};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Which program's command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Program {
    Cosmos,
    Cosmosd,
}

impl Program {
    pub fn name(self) -> &'static str {
        match self {
            Program::Cosmos => "cosmos",
            Program::Cosmosd => "cosmosd",
        }
    }

    pub fn command(self) -> clap::Command {
        match self {
            Program::Cosmos => Cli::command(),
            Program::Cosmosd => DaemonArgs::command(),
        }
    }
}

/// The completion script of `program` for `shell`.
pub fn completions(shell: clap_complete::Shell, program: Program, out: &mut dyn Write) -> std::io::Result<()> {
    let mut cmd = program.command();
    // clap_complete writes through `impl Write`; collect first so a broken pipe is an error
    // we return, not a panic inside the generator.
    let mut text = Vec::new();
    clap_complete::generate(shell, &mut cmd, program.name(), &mut text);
    out.write_all(&text)
}

/// Writes `cosmos.1`, `cosmos-<subcommand>.1`..., `cosmosd.1` and `cosmosd-<subcommand>.1`
/// into `dir` (created if missing), each by atomic rename; returns the paths written.
pub fn man_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for program in [Program::Cosmos, Program::Cosmosd] {
        // As clap_mangen::generate_to: no `help` subcommand page; `build` names the
        // subcommands `cosmos-create-prompt` and so on.
        let mut cmd = program.command().disable_help_subcommand(true);
        cmd.build();
        page_tree(cmd, dir, &mut written)?;
    }
    Ok(written)
}

fn page_tree(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
        page_tree(sub, dir, written)?;
    }
    let man = clap_mangen::Man::new(cmd).manual("Cosmos Workflow");
    let path = dir.join(man.get_filename());
    let mut text = Vec::new();
    man.render(&mut text)?;
    crate::fsutil::write_atomic(&path, &text)?;
    written.push(path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_visible_subcommand_of_both_programs_gets_a_page_and_hidden_ones_none() {
        let dir = tempfile::tempdir().unwrap();
        let pages = man_pages(dir.path()).unwrap();
        let names: Vec<String> = pages.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        for expected in
            ["cosmos.1", "cosmos-submit.1", "cosmos-create-prompt.1", "cosmos-completions.1", "cosmosd.1", "cosmosd-check-host.1"]
        {
            assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
        }
        assert!(!names.iter().any(|n| n == "cosmos-man.1"), "the hidden man command got a page: {names:?}");
        let submit = std::fs::read_to_string(dir.path().join("cosmos-submit.1")).unwrap();
        assert!(submit.contains(".TH cosmos-submit 1"), "{submit}");
        assert!(submit.contains("\\-\\-wait"), "the page lists the options: {submit}");
    }

    #[test]
    fn completions_name_the_subcommands_of_the_program_asked_for() {
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
            let mut cosmos = Vec::new();
            completions(shell, Program::Cosmos, &mut cosmos).unwrap();
            let cosmos = String::from_utf8(cosmos).unwrap();
            assert!(cosmos.contains("batch-inference") && cosmos.contains("submit"), "{shell}: {cosmos}");
            let mut daemon = Vec::new();
            completions(shell, Program::Cosmosd, &mut daemon).unwrap();
            let daemon = String::from_utf8(daemon).unwrap();
            assert!(daemon.contains("check-host") && !daemon.contains("batch-inference"), "{shell}: {daemon}");
        }
    }
}
