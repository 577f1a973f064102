//! Completion hooks (`[hooks]`): `on_run` and `on_submission` commands and `webhook` URLs,
//! told when a run ends and when the last run of a submission ends.
//!
//! What is owed is recorded by the store in the transaction that ends the run
//! (`hooks_owed`), so a daemon killed before a hook ran runs it after it starts: at least
//! once per event. One thread of its own delivers, so a slow or hanging hook never holds
//! up a scheduler. Each hook has `hooks.timeout`; one that fails is tried again with
//! backoff (1 s, 2 s, 4 s, ... up to [`MAX_ROUNDS`] rounds); one that succeeded is not run
//! again. Every outcome goes into the daemon's log and the subject's events (`cosmos show`).

use crate::config::Config;
use crate::layout::Layout;
use crate::outbox::Outbox;
use crate::store::{Owed, OwedKind, Settle, Store, StoreError};
use crate::time::Timestamp;
use serde_json::json;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Delivery rounds of one event before its failing hooks are given up on (about 8.5 min
/// of backoff in all).
pub const MAX_ROUNDS: u32 = 10;
/// How often the thread looks for owed hooks when none waits on a backoff: runs that end
/// commit their hooks from other threads (and `cosmos cancel` from another process).
const POLL: Duration = Duration::from_millis(250);
/// How much of a command's output is kept for the log and the event.
const OUTPUT_KEPT: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the hook thread: {0}")]
    Thread(std::io::Error),
}

/// The hook thread, started by the daemon.
pub struct Hooks {
    reload: mpsc::Sender<Config>,
    thread: std::thread::JoinHandle<()>,
}

impl Hooks {
    /// Opens the store, tells it which events owe hooks under `config`, and starts the
    /// thread that delivers them (also those owed from before a restart).
    pub fn start(config: &Config, stop: Arc<AtomicBool>) -> Result<Hooks, HookError> {
        let mut store = Store::open(&config.paths.database())?;
        store.relax_sync()?;
        want(&mut store, config)?;
        let (reload, reloads) = mpsc::channel();
        let mut deliverer = Deliverer { config: config.clone(), store, stop, reloads };
        let thread = std::thread::Builder::new().name("hooks".into()).spawn(move || deliverer.run()).map_err(HookError::Thread)?;
        Ok(Hooks { reload, thread })
    }

    /// A reloaded configuration (SIGHUP): its hooks apply to what is owed from now on.
    pub fn reload(&self, config: &Config) {
        let _ = self.reload.send(config.clone());
    }

    /// Waits for the thread; the daemon set `stop` first. A command running then is
    /// stopped and stays owed: it runs again after the next start.
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

fn want(store: &mut Store, config: &Config) -> Result<(), StoreError> {
    let h = &config.hooks;
    store
        .set_hooks_wanted(!h.on_run.trim().is_empty() || !h.webhook.is_empty(), !h.on_submission.trim().is_empty() || !h.webhook.is_empty())
}

/// One hook of an event.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    Command { name: &'static str, command: String },
    Webhook { url: String },
}

impl Target {
    /// The name kept in `delivered` and shown in events.
    fn name(&self) -> String {
        match self {
            Target::Command { name, .. } => name.to_string(),
            Target::Webhook { url } => format!("webhook {url}"),
        }
    }
}

/// The hooks `config` has for events of `kind`.
fn targets(config: &Config, kind: OwedKind) -> Vec<Target> {
    let (name, command) = match kind {
        OwedKind::Run => ("on_run", &config.hooks.on_run),
        OwedKind::Submission => ("on_submission", &config.hooks.on_submission),
    };
    let mut out = Vec::new();
    if !command.trim().is_empty() {
        out.push(Target::Command { name, command: command.clone() });
    }
    out.extend(config.hooks.webhook.iter().map(|url| Target::Webhook { url: url.clone() }));
    out
}

/// What a hook is told about its event: the environment of a command, the body of a POST.
struct Context {
    env: Vec<(&'static str, String)>,
    body: String,
}

/// How one hook went.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ok: bool,
    /// `exit 0`, `exit 3`, `killed at the timeout (30s)`, `HTTP 200`, `HTTP 500`, ...
    pub summary: String,
    /// The command's output (stdout, then stderr), or the HTTP error, cut to a few KiB.
    pub output: String,
}

struct Deliverer {
    config: Config,
    store: Store,
    stop: Arc<AtomicBool>,
    reloads: mpsc::Receiver<Config>,
}

impl Deliverer {
    fn run(&mut self) {
        tracing::debug!("hook thread started");
        while !self.stopping() {
            self.take_reloads();
            let due = match self.store.owed_hooks(Timestamp::now(), 16) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "hooks: cannot read what is owed; trying again");
                    self.sleep(Duration::from_secs(1));
                    continue;
                }
            };
            if due.is_empty() {
                let wait = match self.store.next_owed_at() {
                    Ok(Some(t)) => Duration::from_millis((t.0 - Timestamp::now().0).clamp(0, POLL.as_millis() as i64) as u64),
                    _ => POLL,
                };
                self.sleep(wait);
                continue;
            }
            for owed in &due {
                if self.stopping() {
                    break;
                }
                self.deliver(owed);
            }
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn take_reloads(&mut self) {
        while let Ok(config) = self.reloads.try_recv() {
            if let Err(e) = want(&mut self.store, &config) {
                tracing::warn!(error = %e, "hooks: cannot record the reloaded [hooks]");
            }
            self.config = config;
        }
    }

    /// Sleeps up to `d`, waking early to stop.
    fn sleep(&self, d: Duration) {
        let end = Instant::now() + d;
        while !self.stopping() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }

    /// One delivery round of `owed`: every hook not delivered yet, then the round recorded.
    fn deliver(&mut self, owed: &Owed) {
        crate::fsutil::fault_pause("hook");
        let todo: Vec<Target> = targets(&self.config, owed.kind).into_iter().filter(|t| !owed.delivered.contains(&t.name())).collect();
        let mut settle = Settle { delivered: owed.delivered.clone(), attempts: owed.attempts + 1, ..Default::default() };
        if todo.is_empty() {
            // Its hooks were removed from the configuration since (SIGHUP): nothing is owed.
            settle.done = true;
            return self.record(owed, &settle);
        }
        let failed = match self.context(owed) {
            Ok(context) => match self.run_targets(owed, &todo, &context, &mut settle) {
                Some(failed) => failed,
                None => {
                    // Stopped with the daemon, not failed: what was delivered is kept, the
                    // rest stays owed for the next start, and the round does not count.
                    tracing::info!(subject = %owed.subject, "hooks: stopped with the daemon; the rest runs after the next start");
                    settle.attempts = owed.attempts;
                    return self.record(owed, &settle);
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, subject = %owed.subject, "hooks: cannot read the event's facts");
                settle.events.push(("hook".into(), format!("attempt {}: cannot read the event's facts: {e}", settle.attempts)));
                todo.len()
            }
        };
        if failed == 0 {
            settle.done = true;
        } else if settle.attempts >= MAX_ROUNDS {
            settle.done = true;
            let why = format!("{failed} hook(s) still failing after {} attempts; given up", settle.attempts);
            settle.events.push(("hook_gave_up".into(), why));
            tracing::error!(subject = %owed.subject, attempts = settle.attempts, "hooks: given up");
        } else {
            let wait = backoff(settle.attempts);
            settle.not_before = Some(Timestamp(Timestamp::now().0 + wait.as_millis() as i64));
            settle.events.push(("hook_retry".into(), format!("{failed} hook(s) failed; trying again in {}s", wait.as_secs())));
        }
        self.record(owed, &settle);
    }

    /// Runs the hooks in `todo`, noting each outcome in `settle`; how many failed, or
    /// `None` when the daemon's stop cut the round short.
    fn run_targets(&self, owed: &Owed, todo: &[Target], context: &Context, settle: &mut Settle) -> Option<usize> {
        let timeout = self.config.hooks.timeout.0;
        let mut failed = 0;
        for target in todo {
            let started = Instant::now();
            let outcome = match target {
                Target::Command { command, .. } => run_command(command, &context.env, timeout, &self.stop),
                Target::Webhook { url } => post(url, owed.kind, &context.body, timeout),
            };
            if self.stopping() && !outcome.ok {
                return None;
            }
            let seconds = started.elapsed().as_secs_f64();
            let verdict = if outcome.ok { "ok" } else { "failed" };
            let (name, kind, attempt) = (target.name(), owed.kind.as_str(), settle.attempts);
            let mut detail = format!("{name} {verdict} for {kind} {} ({}, attempt {attempt}, {seconds:.2}s)", owed.status, outcome.summary);
            let output = outcome.output.trim_end();
            if !output.is_empty() {
                detail.push_str(": ");
                detail.push_str(output);
            }
            if outcome.ok {
                tracing::info!(hook = %name, subject = %owed.subject, result = %outcome.summary, output, "hook delivered");
                settle.delivered.push(name);
            } else {
                tracing::warn!(hook = %name, subject = %owed.subject, result = %outcome.summary, output, attempt, "hook failed");
                failed += 1;
            }
            settle.events.push(("hook".into(), detail));
        }
        Some(failed)
    }

    fn record(&mut self, owed: &Owed, settle: &Settle) {
        // Busy or full for a moment: tried again until it passes (a delivered hook that is
        // not recorded would run again after a restart: at least once, not exactly once).
        for tries in 0.. {
            match self.store.settle_hook(owed.id, &owed.subject, settle) {
                Ok(()) => return,
                Err(e) if e.is_transient() && !self.stopping() && tries < 600 => self.sleep(Duration::from_millis(100)),
                Err(e) => {
                    tracing::error!(error = %e, subject = %owed.subject, "hooks: cannot record a delivery; it runs again after a restart");
                    return;
                }
            }
        }
    }

    /// The environment and body of `owed`'s hooks, read from the store now.
    fn context(&self, owed: &Owed) -> Result<Context, String> {
        let layout = Layout::of(&self.config.paths);
        match owed.kind {
            OwedKind::Run => {
                let run = match self.store.run(&owed.subject) {
                    Ok(r) => Some(r),
                    // Deleted since it ended: its id and status are still worth telling.
                    Err(StoreError::NotFound { .. }) => None,
                    Err(e) => return Err(e.to_string()),
                };
                let dir = run
                    .as_ref()
                    .and_then(|r| r.outputs.as_ref())
                    .and_then(|o| o.get("output_dir"))
                    .and_then(|d| d.as_str())
                    .map(str::to_string)
                    // Not completed: its work folder, where its execution.log is.
                    .unwrap_or_else(|| layout.run_work(&owed.subject).display().to_string());
                let submission = run.as_ref().and_then(|r| r.submission_id.clone());
                let receipt = match &submission {
                    Some(sb) => self.store.submission(sb).ok().map(|s| layout.receipt(&s.file, &s.id).display().to_string()),
                    None => None,
                };
                let body = json!({
                    "event": "run",
                    "run_id": owed.subject,
                    "status": owed.status,
                    "run_dir": dir,
                    "submission_id": submission,
                    "receipt": receipt,
                    "error": run.as_ref().and_then(|r| r.error.clone()),
                    "finished_at": run.as_ref().and_then(|r| r.finished_at.clone()),
                })
                .to_string();
                let env = vec![
                    ("COSMOS_EVENT", "run".to_string()),
                    ("COSMOS_RUN_ID", owed.subject.clone()),
                    ("COSMOS_RUN_STATUS", owed.status.clone()),
                    ("COSMOS_RUN_DIR", dir),
                    ("COSMOS_SUBMISSION_ID", submission.unwrap_or_default()),
                    ("COSMOS_RECEIPT", receipt.unwrap_or_default()),
                ];
                Ok(Context { env, body })
            }
            OwedKind::Submission => {
                let sub = self.store.submission(&owed.subject).map_err(|e| e.to_string())?;
                // Written here, not left to the scheduler: the receipt a hook reads says
                // every run ended (a large submission's is otherwise rewritten later).
                let outbox = Outbox::new(&layout, self.config.outbox.mode.0);
                let path = outbox.write_receipt(&self.store, &sub).map_err(|e| e.to_string())?;
                let body = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let env = vec![
                    ("COSMOS_EVENT", "submission".to_string()),
                    ("COSMOS_SUBMISSION_ID", sub.id.clone()),
                    ("COSMOS_RECEIPT", path.display().to_string()),
                ];
                Ok(Context { env, body })
            }
        }
    }
}

/// The wait before delivery round `attempts + 1`: 1 s, 2 s, 4 s, ... at most 5 min.
pub fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.saturating_sub(1).min(8)).min(Duration::from_secs(300))
}

/// Runs `command` with `/bin/sh -c`, stdin null, in a process group of its own so that the
/// whole group is killed at `timeout` (or when the daemon stops).
pub fn run_command(command: &str, env: &[(&'static str, String)], timeout: Duration, stop: &AtomicBool) -> Outcome {
    let failed = |summary: String| Outcome { ok: false, summary, output: String::new() };
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(command).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot start /bin/sh: {e}")),
    };
    let (tx, rx) = mpsc::channel();
    for (i, pipe) in [child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>), child.stderr.take().map(|p| Box::new(p) as _)]
        .into_iter()
        .enumerate()
    {
        let Some(pipe) = pipe else { continue };
        let tx = tx.clone();
        // Read to the end (a full pipe would stall the hook), keep the first few KiB.
        let _ = std::thread::Builder::new().name("hook-output".into()).spawn(move || {
            let _ = tx.send((i, read_capped(pipe)));
        });
    }
    drop(tx);
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) => {}
            Err(e) => break Err(format!("cannot wait for the command: {e}")),
        }
        let timed_out = started.elapsed() >= timeout;
        if timed_out || stop.load(Ordering::SeqCst) {
            // SAFETY: kill(2) of our child's own process group (process_group(0) above).
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break Err(if timed_out { format!("killed at the timeout ({}s)", timeout.as_secs_f64()) } else { "stopped".into() });
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // A command that left a process holding its output open is not waited for.
    let mut parts = [String::new(), String::new()];
    let deadline = Instant::now() + Duration::from_secs(1);
    while let Ok((i, text)) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        parts[i] = text; // ok: i is 0 (stdout) or 1 (stderr), the enumerate over two pipes above
    }
    let mut output = parts[0].clone();
    if !parts[1].is_empty() {
        if !output.is_empty() && !output.ends_with('\n') {
            output.push('\n');
        }
        output.push_str(&parts[1]);
    }
    match status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            let summary = match (s.code(), s.signal()) {
                (Some(code), _) => format!("exit {code}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                _ => "ended".into(),
            };
            Outcome { ok: s.success(), summary, output }
        }
        Err(summary) => Outcome { ok: false, summary, output },
    }
}

fn read_capped(mut pipe: Box<dyn Read + Send>) -> String {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    let mut cut = false;
    loop {
        match pipe.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = OUTPUT_KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                cut |= n > room;
            }
        }
    }
    let mut text = String::from_utf8_lossy(&kept).into_owned();
    if cut {
        text.push_str("\n[output cut]");
    }
    text
}

/// POSTs `body` (JSON) to `url`: a 2xx status is delivered, anything else failed.
pub fn post(url: &str, kind: OwedKind, body: &str, timeout: Duration) -> Outcome {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build().into();
    match agent.post(url).header("Content-Type", "application/json").header("X-Cosmos-Event", kind.as_str()).send(body) {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let ok = (200..300).contains(&status);
            let output = if ok { String::new() } else { resp.into_body().read_to_string().unwrap_or_default().chars().take(500).collect() };
            Outcome { ok, summary: format!("HTTP {status}"), output }
        }
        Err(e) => Outcome { ok: false, summary: "no HTTP answer".into(), output: e.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_stops_growing() {
        let secs: Vec<u64> = (1..=12).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 256, 256, 256]);
    }

    #[test]
    fn a_command_gets_its_environment_and_output_is_kept() {
        let stop = AtomicBool::new(false);
        let env = vec![("COSMOS_RUN_ID", "rs_x".to_string())];
        let o = run_command("echo id=$COSMOS_RUN_ID; read line; echo err >&2; exit 3", &env, Duration::from_secs(10), &stop);
        assert!(!o.ok);
        assert_eq!(o.summary, "exit 3");
        // stdin is null: `read` sees end of file at once instead of waiting.
        assert_eq!(o.output, "id=rs_x\nerr\n");
    }

    #[test]
    fn a_hanging_command_is_killed_at_the_timeout_with_its_children() {
        let stop = AtomicBool::new(false);
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("late");
        // The grandchild would write the marker after 2 s if only the shell were killed.
        let cmd = format!("(sleep 2; touch {}) & sleep 60", marker.display());
        let o = run_command(&cmd, &[], Duration::from_millis(300), &stop);
        assert!(!o.ok);
        assert!(o.summary.starts_with("killed at the timeout"), "{o:?}");
        std::thread::sleep(Duration::from_millis(2500));
        assert!(!marker.exists(), "the command's whole process group is killed");
    }

    #[test]
    fn a_long_output_is_cut() {
        let stop = AtomicBool::new(false);
        let o = run_command("head -c 100000 /dev/zero | tr '\\0' x", &[], Duration::from_secs(10), &stop);
        assert!(o.ok, "{o:?}");
        assert!(o.output.len() < OUTPUT_KEPT + 20 && o.output.ends_with("[output cut]"), "{}", o.output.len());
    }

    #[test]
    fn a_refused_connection_is_a_failure_naming_it() {
        // A port nobody listens on: bind, read the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let o = post(&format!("http://127.0.0.1:{port}/x"), OwedKind::Run, "{}", Duration::from_secs(5));
        assert!(!o.ok);
        assert_eq!(o.summary, "no HTTP answer");
        assert!(!o.output.is_empty());
    }
}

#[cfg(test)]
mod config_tests {
    use crate::config::Config;
    use std::path::Path;

    #[test]
    fn webhook_urls_must_be_plain_http() {
        let ok = Config::from_toml("[hooks]\nwebhook = [\"http://127.0.0.1:8080/done\"]\ntimeout = \"5s\"\n", Path::new("c.toml")).unwrap();
        assert_eq!(ok.hooks.webhook, vec!["http://127.0.0.1:8080/done".to_string()]);
        let err = Config::from_toml("[hooks]\nwebhook = [\"https://example.org/x\"]\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("c.toml") && err.contains("hooks.webhook") && err.contains("https is not built in"), "{err}");
        let err = Config::from_toml("[hooks]\nwebhook = [\"example.org\"]\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("expected http://HOST[:PORT]/PATH"), "{err}");
        let err = Config::from_toml("[hooks]\ntimeout = \"0s\"\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("hooks.timeout"), "{err}");
    }
}
