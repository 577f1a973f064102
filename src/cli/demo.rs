//! `cosmos demo`: the main job in one command, on an embedded default. It writes the quick
//! start's configuration and example jobs (with their small videos) under `./cosmos-home`
//! (or `--root DIR`), starts the daemon with the `sim` backend as a child of this process,
//! submits the examples and follows them, stops the daemon, then lists the finished run
//! folders. Nothing outside that folder is touched; run it again and the same file is a
//! duplicate (nothing runs twice), which is part of what it shows.

use super::{submit, CliError, Result};
use crate::config::{Config, GlobalOpts};
use crate::fsutil::at;
use crate::layout::Layout;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The quick start's configuration: the sim backend as a child process, no Docker, no GPU.
const CONFIG: &str = include_str!("../../examples/quickstart.toml");
const JOBS: &str = include_str!("../../examples/jobs.jsonl");
/// The videos the example jobs name, relative to the job file.
const VIDEOS: [(&str, &[u8]); 4] = [
    ("videos/city1/color.mp4", include_bytes!("../../examples/videos/city1/color.mp4")),
    ("videos/city1/depth.mp4", include_bytes!("../../examples/videos/city1/depth.mp4")),
    ("videos/street1/color.mp4", include_bytes!("../../examples/videos/street1/color.mp4")),
    ("videos/street1/segmentation.mp4", include_bytes!("../../examples/videos/street1/segmentation.mp4")),
];

/// How long the daemon gets to stop once the runs have ended (they have: it drains at once).
const STOP_WAIT: Duration = Duration::from_secs(60);

pub fn demo(global: &GlobalOpts, out: &mut dyn Write) -> Result<()> {
    let home = global.root.clone().unwrap_or_else(|| PathBuf::from("cosmos-home"));
    std::fs::create_dir_all(&home).map_err(at("cannot create", &home))?;
    let home = std::fs::canonicalize(&home).map_err(at("cannot open", &home))?;

    let config_path = home.join("demo.toml");
    write_file(&config_path, CONFIG.as_bytes())?;
    let examples = home.join("examples");
    write_file(&examples.join("jobs.jsonl"), JOBS.as_bytes())?;
    for (rel, bytes) in VIDEOS {
        write_file(&examples.join(rel), bytes)?;
    }
    let mut config = Config::from_toml(CONFIG, &config_path)?;
    config.apply_root(&home)?;
    let layout = Layout::of(&config.paths);
    writeln!(out, "demo: the sim backend (no GPU, no Docker) under {}", home.display())?;
    writeln!(out, "demo: configuration {}, example jobs {}", config_path.display(), examples.display())?;

    let log_path = home.join("cosmosd.log");
    let mut daemon = start_daemon(&config_path, &home, &log_path)?;
    writeln!(out, "demo: cosmosd started (pid {}), its log is {}", daemon.id(), log_path.display())?;
    // A daemon that cannot start (another one holds this folder, no python3) ends at once.
    std::thread::sleep(Duration::from_millis(300));
    if let Ok(Some(status)) = daemon.try_wait() {
        return Err(CliError::Failed(format!(
            "cosmosd stopped at once ({status}); the end of {}:\n{}",
            log_path.display(),
            tail(&log_path, 10)
        )));
    }

    let submitted = submit::submit(&config, &[examples.join("jobs.jsonl")], None, true, false, out);
    let stopped = stop_daemon(&mut daemon);
    submitted?;
    stopped?;

    let mut folders: Vec<PathBuf> = std::fs::read_dir(layout.outbox())
        .map_err(at("cannot list", layout.outbox()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("run_")))
        .collect();
    folders.sort();
    writeln!(out, "demo: {} finished run folder(s) in {}:", folders.len(), layout.outbox().display())?;
    for folder in &folders {
        let mut files: Vec<String> = std::fs::read_dir(folder)
            .map_err(at("cannot list", folder))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        files.sort();
        writeln!(out, "  {}/  {}", folder.display(), files.join(" "))?;
    }
    writeln!(out, "demo: next: cosmos --root {} list runs; cosmos --root {} show RUN_ID", home.display(), home.display())?;
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(at("cannot create", parent))?;
    }
    Ok(crate::fsutil::write_atomic(path, bytes).map_err(at("cannot write", path))?)
}

/// This same binary, as the daemon (`cosmos daemon`), so `cargo run -- demo` needs no other
/// binary built.
fn start_daemon(config: &Path, home: &Path, log: &Path) -> Result<Child> {
    let exe = std::env::current_exe().map_err(|e| CliError::Failed(format!("cannot find this program: {e}")))?;
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(at("cannot open", log))?;
    Command::new(exe)
        .arg("--config")
        .arg(config)
        .arg("--root")
        .arg(home)
        .arg("daemon")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map_err(|e| CliError::Failed(format!("cannot start the daemon: {e}")))
}

/// SIGTERM, then wait: the daemon drains (no run is left, so at once) and exits.
fn stop_daemon(child: &mut Child) -> Result<()> {
    if let Ok(Some(_)) = child.try_wait() {
        return Ok(());
    }
    // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_WAIT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return Ok(()),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CliError::Failed("cosmosd did not stop within 60 s of SIGTERM; it was killed".into()));
            }
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
