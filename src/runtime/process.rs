//! The `process` runtime: the worker as a child process on the host,
//! `python3 -m cosmos_worker --backend B [backend_args]`.
//!
//! Two threads per worker: one turns stdout lines into [`Event`]s on a channel, one copies
//! stderr into the daemon log and into the current run's execution.log. The worker dies
//! with the daemon: its stdin closes and it exits.

use super::launch::{Launch, Side};
use super::protocol::{Event, EventLines, Op, WorkerLine, PROTOCOL_VERSION};
use super::worker::{await_event, forward_line, recv_msg, Awaited, LogLines, LogSink, Worker, WorkerError, WorkerInfo, WorkerMsg};
use crate::config::Config;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

pub struct ProcessWorker {
    child: Child,
    stdin: ChildStdin,
    events: Receiver<WorkerMsg>,
    pub backend: String,
    pub version: String,
    pub pid: u32,
}

/// The folder holding `cosmos_worker`: `runtime.worker_path`, else `$COSMOS_WORKER_PATH`,
/// else `../../worker` beside the binary (a checkout's target/{debug,release}), else
/// `/usr/share/cosmos/worker`.
pub fn worker_path(config: &Config) -> PathBuf {
    if !config.runtime.worker_path.as_os_str().is_empty() {
        return config.runtime.worker_path.clone();
    }
    if let Some(p) = std::env::var_os("COSMOS_WORKER_PATH").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(candidate) = exe.parent().and_then(Path::parent).and_then(Path::parent).map(|p| p.join("worker")) {
            if candidate.join("cosmos_worker").is_dir() {
                return candidate;
            }
        }
    }
    PathBuf::from("/usr/share/cosmos/worker")
}

/// Ends the worker process group a daemon before this one recorded in `pid_file`, if it is
/// still there and still a worker (its command line names cosmos_worker or torchrun: a pid
/// reused by something else is left alone).
fn end_leftover(pid_file: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file).ok().and_then(|t| t.trim().parse::<i32>().ok()).filter(|p| *p > 1) else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let text = String::from_utf8_lossy(&cmdline);
    if text.contains("cosmos_worker") || text.contains("torch.distributed.run") || text.contains("torchrun") {
        tracing::warn!(pid, "a worker left by a daemon before this one is still running: ending it");
        // SAFETY: kill(2) on the process group the earlier daemon made for its worker.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let _ = std::fs::remove_file(pid_file);
}

impl ProcessWorker {
    /// Starts the worker and waits for its `hello` (no longer than a stop request).
    /// `gpus`: this worker's GPUs (`None`: all), given to it as CUDA_VISIBLE_DEVICES;
    /// `ranks`: its processes (more than one: under torchrun).
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        config: &Config,
        log: LogSink,
        hello_timeout: Duration,
        slot: usize,
        gpus: Option<&[u32]>,
        ranks: usize,
        stop: &AtomicBool,
    ) -> Result<ProcessWorker, WorkerError> {
        let rt = &config.runtime;
        let side = Side::Host { worker_path: worker_path(config), work: crate::layout::Layout::of(&config.paths).work() };
        let launch = Launch::new(config, &side, ranks);
        let command = format!("{} (in {})", launch.command_line(), launch.cwd.display());
        tracing::info!(%command, "starting the worker");
        let mut cmd = Command::new(&launch.argv[0]); // ok: Launch::new always starts argv with the interpreter
        cmd.args(&launch.argv[1..]).envs(launch.env.iter().map(|(k, v)| (k, v))).current_dir(&launch.cwd);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // Its own process group: torchrun's ranks are killed with it.
        cmd.process_group(0);
        if let Some(gpus) = gpus {
            cmd.env("CUDA_VISIBLE_DEVICES", gpus.iter().map(u32::to_string).collect::<Vec<_>>().join(","));
        }
        // The worker dies with the daemon (a daemon killed with -9 must not leave a worker on
        // its GPUs, still running a run the next daemon starts again).
        // SAFETY: prctl(2) only, between fork and exec: async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        // And should one outlive it anyway (its ranks under torchrun, a daemon that died
        // between fork and prctl), the group is ended before this one starts.
        let pid_file = crate::layout::Layout::of(&config.paths).worker_pid_file(slot);
        end_leftover(&pid_file);
        let mut child = cmd.spawn().map_err(|source| WorkerError::Spawn { command: command.clone(), source })?;
        if let Err(e) = crate::fsutil::write_atomic(&pid_file, child.id().to_string().as_bytes()) {
            tracing::warn!(path = %pid_file.display(), error = %e, "cannot record the worker's process group");
        }
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            return Err(WorkerError::Spawn { command, source: std::io::Error::other("no pipes") });
        };
        let (tx, events) = mpsc::channel();
        let event_log = log.clone();
        std::thread::spawn(move || {
            let mut stdout = stdout;
            let mut lines = EventLines::default();
            let mut buf = vec![0u8; 64 << 10];
            let mut each = |line: WorkerLine| forward_line(line, &tx, &event_log);
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => lines.push(&buf[..n], &mut each),
                }
            }
            lines.finish(&mut each);
            let _ = tx.send(WorkerMsg::Exited);
        });
        std::thread::spawn(move || {
            let mut stderr = stderr;
            let mut lines = LogLines::default();
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n @ 1..) = stderr.read(&mut buf) {
                lines.push(&buf[..n], &log);
            }
            lines.finish(&log);
        });
        let mut worker = ProcessWorker { child, stdin, events, backend: rt.backend.as_str().to_string(), version: String::new(), pid: 0 };
        let hello = await_event(
            |t| worker.recv(t),
            hello_timeout,
            stop,
            |ev| match ev {
                Event::Hello { protocol, backend, version, pid } => Some((protocol, backend, version, pid)),
                other => {
                    tracing::warn!(?other, "event before hello, ignored");
                    None
                }
            },
        );
        match hello {
            Awaited::Got((protocol, _, _, _)) if protocol != PROTOCOL_VERSION => {
                worker.kill();
                Err(WorkerError::Protocol(protocol))
            }
            Awaited::Got((_, backend, version, pid)) => {
                worker.backend = backend;
                worker.version = version;
                worker.pid = pid;
                Ok(worker)
            }
            Awaited::Exited => {
                let _ = worker.child.wait();
                Err(WorkerError::Exited)
            }
            Awaited::TimedOut => {
                worker.kill();
                Err(WorkerError::NoHello(hello_timeout))
            }
            Awaited::Stopped => {
                worker.kill();
                Err(WorkerError::Stopped)
            }
        }
    }

    pub fn send(&mut self, op: &Op) -> Result<(), WorkerError> {
        self.stdin.write_all(op.to_line().as_bytes()).and_then(|_| self.stdin.flush()).map_err(WorkerError::Write)
    }

    /// The next message, or `None` after `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<WorkerMsg> {
        recv_msg(&self.events, timeout)
    }

    /// Kills the worker (its whole process group: torchrun and every rank) and reaps it.
    pub fn kill(&mut self) {
        // SAFETY: kill(2) on the process group we made for this child.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the worker to exit, then makes sure it did.
    pub fn shutdown(mut self, grace: Duration) {
        let _ = self.send(&Op::Shutdown);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Worker for ProcessWorker {
    fn send(&mut self, op: &Op) -> Result<(), WorkerError> {
        ProcessWorker::send(self, op)
    }

    fn recv(&self, timeout: Duration) -> Option<WorkerMsg> {
        ProcessWorker::recv(self, timeout)
    }

    fn kill(&mut self) {
        ProcessWorker::kill(self)
    }

    fn info(&self) -> WorkerInfo {
        WorkerInfo { backend: self.backend.clone(), version: self.version.clone(), pid: self.pid, container_id: None }
    }

    fn leave(self: Box<Self>) {
        self.shutdown(Duration::from_secs(5))
    }
}

impl Drop for ProcessWorker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}
