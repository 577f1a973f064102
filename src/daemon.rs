//! `cosmosd`'s main loop: signals, the inbox watcher, the readiness tracker and intake.
//!
//! One thread owns the store connection and does the claiming, so a claim is never
//! interrupted half-way: SIGTERM/SIGINT set a flag that is read between claims, and the
//! claim in hand is finished before the loop exits.

use crate::config::GlobalOpts;
use crate::config::{Config, ConfigError, Loaded};
use crate::intake::tracker::Tracker;
use crate::intake::watch::{self, Active, Hint};
use crate::intake::{Fate, Intake};
use crate::store::{Store, StoreError};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("cannot watch the inbox {path}: {source}")]
    Watch { path: String, source: notify::Error },
    #[error("{0}")]
    Intake(#[from] crate::intake::fate::IntakeError),
    #[error(transparent)]
    Path(#[from] crate::fsutil::PathIo),
    #[error("cannot start the scheduler of worker {slot}: {source}")]
    Scheduler { slot: usize, source: crate::scheduler::SchedulerError },
    #[error("the scheduler of worker {slot} stopped ({error}); cosmosd stops too, so that its supervisor restarts it")]
    SchedulerEnded { slot: usize, error: String },
    #[error(transparent)]
    Web(#[from] crate::web::WebError),
    #[error(transparent)]
    Hooks(#[from] crate::hooks::HookError),
    #[error("the shared queue ([cluster]): {0}")]
    Cluster(#[from] crate::cluster::HomeError),
}

/// What reaches the daemon's loop.
#[derive(Debug)]
enum Msg {
    Fs(notify::Result<notify::Event>),
    Signal(i32),
    /// A scheduler's thread ended while the daemon was not stopping.
    SchedulerEnded {
        slot: usize,
        error: String,
    },
}

/// The watcher's events, into the loop.
fn forward(tx: &mpsc::Sender<Msg>) -> watch::OnEvent {
    let tx = tx.clone();
    Box::new(move |event| {
        let _ = tx.send(Msg::Fs(event));
    })
}

/// Sends [`Msg::SchedulerEnded`] when a scheduler's thread ends, by error or panic, while
/// the daemon is not stopping: a daemon that goes on taking work that no worker will run
/// is worse than one that stops (systemd restarts it).
struct SlotGuard {
    slot: usize,
    tx: mpsc::Sender<Msg>,
    stop: Arc<AtomicBool>,
    error: Option<String>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if self.stop.load(Ordering::SeqCst) && self.error.is_none() {
            return;
        }
        let error = self.error.take().unwrap_or_else(|| {
            if std::thread::panicking() {
                "it panicked".into()
            } else {
                "it returned while the daemon was running".into()
            }
        });
        let _ = self.tx.send(Msg::SchedulerEnded { slot: self.slot, error });
    }
}

/// Sets up logging: `$COSMOS_LOG_LEVEL`, else `log.level`; to `log.dir/cosmosd.log` (daily
/// files, kept `log.keep`) when set, else stderr. On stderr that is the journal (started by
/// systemd), lines carry a syslog priority and no timestamp of ours: journald keeps its own,
/// and `journalctl -p err` finds errors. Keep the guard alive while logging.
pub fn init_logging(config: &Config) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    let level = std::env::var("COSMOS_LOG_LEVEL").ok().filter(|l| !l.is_empty()).unwrap_or_else(|| config.log.level.clone());
    let filter = match level.to_ascii_lowercase().as_str() {
        "error" => tracing::level_filters::LevelFilter::ERROR,
        "warn" | "warning" => tracing::level_filters::LevelFilter::WARN,
        "debug" => tracing::level_filters::LevelFilter::DEBUG,
        "trace" => tracing::level_filters::LevelFilter::TRACE,
        _ => tracing::level_filters::LevelFilter::INFO,
    };
    let builder = tracing_subscriber::fmt().with_max_level(filter).with_target(false);
    if config.log.dir.as_os_str().is_empty() {
        if stderr_is_journal() {
            let _ = builder.with_ansi(false).event_format(JournalFormat).with_writer(std::io::stderr).try_init();
        } else {
            let _ = builder.with_writer(std::io::stderr).with_ansi(false).try_init();
        }
        None
    } else {
        let appender = tracing_appender::rolling::daily(&config.log.dir, "cosmosd.log");
        let (writer, guard) = tracing_appender::non_blocking(appender);
        let _ = builder.with_writer(writer).with_ansi(false).try_init();
        Some(guard)
    }
}

/// Whether stderr is connected to the journal: systemd sets `$JOURNAL_STREAM` to the
/// `device:inode` of the stream it gives the service (systemd.exec(5)); one inherited by a
/// child whose stderr goes elsewhere does not match.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsRawFd;
    let Some(var) = std::env::var_os("JOURNAL_STREAM") else { return false };
    // SAFETY: fstat fills a struct we own, for a descriptor that stays open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(std::io::stderr().as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    journal_stream_matches(&var.to_string_lossy(), st.st_dev, st.st_ino)
}

/// `$JOURNAL_STREAM` (`"DEV:INO"`, decimal) names this device and inode.
fn journal_stream_matches(var: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = var.trim().split_once(':') else { return false };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
}

/// The syslog priority of a level, as sd-daemon(3)'s `<N>` prefix: err, warning, info, debug.
fn priority(level: tracing::Level) -> u8 {
    match level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        tracing::Level::DEBUG | tracing::Level::TRACE => 7,
    }
}

/// One journal line per event: `<3>message key=value ...`, with no time (journald's own).
struct JournalFormat;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JournalFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// How often `daemon.prune_after` prunes (at most; see `Upkeep::tick`), and `log.keep`
/// trims `log.dir`.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
const LOGS_EVERY: Duration = Duration::from_secs(86_400);

/// The daemon's own upkeep, off its loop's thread: `daemon.prune_after` hourly, `log.keep`
/// daily, both once at start.
struct Upkeep {
    next_prune: Instant,
    next_logs: Instant,
    busy: Option<std::thread::JoinHandle<()>>,
}

impl Upkeep {
    fn new(now: Instant) -> Upkeep {
        Upkeep { next_prune: now, next_logs: now, busy: None }
    }

    fn next_due(&self, config: &Config) -> Option<Instant> {
        let prune = config.daemon.prune_after.0.map(|_| self.next_prune);
        let logs = (config.log.keep.0.is_some() && !config.log.dir.as_os_str().is_empty()).then_some(self.next_logs);
        prune.into_iter().chain(logs).min()
    }

    /// Starts what is due, unless the last round is still going.
    fn tick(&mut self, config: &Config, now: Instant) {
        if self.busy.as_ref().is_some_and(|t| !t.is_finished()) || self.next_due(config).is_none_or(|t| now < t) {
            return;
        }
        if let Some(t) = self.busy.take() {
            let _ = t.join();
        }
        let prune = config.daemon.prune_after.0.filter(|_| now >= self.next_prune);
        let keep = config.log.keep.0.filter(|_| now >= self.next_logs && !config.log.dir.as_os_str().is_empty());
        if let Some(age) = prune {
            // Hourly; as often as the age itself when that is shorter (a test's "2s").
            self.next_prune = now + age.clamp(Duration::from_secs(1), PRUNE_EVERY);
        }
        if keep.is_some() {
            self.next_logs = now + LOGS_EVERY;
        }
        let (layout, log_dir) = (crate::layout::Layout::of(&config.paths), config.log.dir.clone());
        let spawned = std::thread::Builder::new().name("upkeep".into()).spawn(move || upkeep(&layout, &log_dir, prune, keep));
        match spawned {
            Ok(t) => self.busy = Some(t),
            Err(e) => tracing::warn!(error = %e, "cannot start the upkeep thread; trying again later"),
        }
    }
}

/// One round of upkeep: prune the files of runs that ended `prune` ago (not the outbox),
/// remove rotated logs older than `keep`.
fn upkeep(layout: &crate::layout::Layout, log_dir: &Path, prune: Option<Duration>, keep: Option<Duration>) {
    let mut report = crate::prune::Report::default();
    if let Some(age) = prune {
        let plan = crate::prune::Plan { cutoff: crate::prune::cutoff(age), outbox: false, dry_run: false, log_dir: PathBuf::new() };
        match Store::open(&layout.database()).map_err(crate::prune::PruneError::from).and_then(|s| crate::prune::prune(&s, layout, &plan)) {
            Ok(r) => report = r,
            Err(e) => tracing::warn!(error = %e, "daemon.prune_after: cannot prune; trying again in an hour"),
        }
    }
    if let Some(keep) = keep {
        if let Err(e) = crate::prune::prune_logs(log_dir, crate::prune::cutoff(keep), false, &mut report) {
            tracing::warn!(error = %e, "log.keep: cannot remove old log files");
        }
    }
    for e in &report.errors {
        tracing::warn!(error = %e, "upkeep: cannot remove");
    }
    if !report.removed.is_empty() {
        use crate::prune::Kind;
        tracing::info!(
            work = report.count(Kind::Work),
            archive = report.count(Kind::Archive),
            inputs = report.count(Kind::Input),
            logs = report.count(Kind::Log),
            bytes = report.bytes(),
            freed = %crate::prune::human_bytes(report.bytes()),
            "pruned the files of runs that ended long ago (daemon.prune_after, log.keep)"
        );
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(global: &GlobalOpts, loaded: Loaded) -> Result<(), DaemonError> {
    let mut config = loaded.config;
    let inbox = std::fs::canonicalize(&config.paths.inbox).or_else(|_| {
        std::fs::create_dir_all(&config.paths.inbox)?;
        std::fs::canonicalize(&config.paths.inbox)
    });
    config.paths.inbox =
        inbox.map_err(|source| DaemonError::Io { what: format!("cannot open the inbox {}", config.paths.inbox.display()), source })?;
    std::fs::create_dir_all(&config.paths.state)
        .map_err(|source| DaemonError::Io { what: format!("cannot create {}", config.paths.state.display()), source })?;
    // One daemon per state folder: a second one would finish the first one's claims.
    let _state_lock = lock_state(&crate::layout::Layout::of(&config.paths))?;
    let store = Store::open(&config.paths.database())?;
    let mut intake = Intake::new(&config, store)?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        inbox = %config.paths.inbox.display(),
        outbox = %config.paths.outbox.display(),
        state = %config.paths.state.display(),
        "cosmosd starting"
    );
    for taken in intake.recover()? {
        log_taken(&taken);
    }
    intake.rest();

    let (tx, rx) = mpsc::channel::<Msg>();
    let stop = Arc::new(AtomicBool::new(false));
    // Another process holding the store (a `sqlite3` shell, a backup) is waited for.
    intake.store_mut().wait_while_busy(Arc::clone(&stop))?;
    // One scheduler (and worker) per GPU or GPU group; they share the queue in the store.
    let groups = crate::scheduler::worker_groups(&config.runtime.gpus);
    // What the parts record for /metrics; the endpoint (if configured) starts before any
    // scheduler, so a taken address stops the start-up with nothing to undo.
    let metrics = Arc::new(crate::metrics::Registry::new());
    let web = crate::web::Web::start(&config, Arc::clone(&metrics))?;
    // Before any scheduler: runs that start-up recovery ends owe their hooks too.
    let hooks = crate::hooks::Hooks::start(&config, Arc::clone(&stop))?;
    let shared = crate::scheduler::Shared::new(groups.len()).with_metrics(Arc::clone(&metrics));
    // Several hosts on one PostgreSQL queue: the origin host's side, and the lease keeper
    // every slot of this host shares; before any slot claims.
    let cluster = match config.cluster.database.trim().is_empty() {
        true => None,
        false => Some(ClusterHost::start(&config, &shared)?),
    };
    let mut reload_txs = Vec::new();
    let mut scheduler_threads = Vec::new();
    for (slot, gpus) in groups.into_iter().enumerate() {
        let (reload_tx, reload_rx) = mpsc::channel::<Config>();
        reload_txs.push(reload_tx);
        let mut scheduler = crate::scheduler::Scheduler::new(&config, Arc::clone(&stop), slot, gpus, shared.clone())
            .map_err(|source| DaemonError::Scheduler { slot, source })?
            .with_reloads(reload_rx);
        if let Some(c) = &cluster {
            scheduler = scheduler.with_cluster(c.slot(&config, slot)?);
        }
        let mut guard = SlotGuard { slot, tx: tx.clone(), stop: Arc::clone(&stop), error: None };
        let thread = std::thread::Builder::new()
            .name(format!("scheduler-{slot}"))
            .spawn(move || {
                if let Err(e) = scheduler.run() {
                    tracing::error!(error = %e, slot, "the scheduler stopped");
                    guard.error = Some(e.to_string());
                }
                drop(guard);
            })
            .map_err(|source| DaemonError::Io { what: "cannot start the scheduler thread".into(), source })?;
        scheduler_threads.push(thread);
    }
    for sig in [SIGTERM, SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|source| DaemonError::Io { what: "cannot install signal handlers".into(), source })?;
    }
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|source| DaemonError::Io { what: "cannot install signal handlers".into(), source })?;
    let signal_handle = signals.handle();
    let signal_tx = tx.clone();
    let signal_thread = std::thread::spawn(move || {
        for sig in signals.forever() {
            if signal_tx.send(Msg::Signal(sig)).is_err() {
                break;
            }
        }
    });

    let (mut active, why) = watch::resolve(config.watch.mode, &config.paths.inbox);
    let mut watcher = match watch::start(active, &config.paths.inbox, config.watch.poll_interval.0, forward(&tx)) {
        Ok(w) => w,
        Err(e) if active == Active::Inotify => {
            // Out of inotify watches, say: polling still works.
            tracing::warn!(error = %e, "inotify unavailable, polling the inbox instead");
            active = Active::Poll;
            watch::start(active, &config.paths.inbox, config.watch.poll_interval.0, forward(&tx))
                .map_err(|source| DaemonError::Watch { path: config.paths.inbox.display().to_string(), source })?
        }
        Err(source) => return Err(DaemonError::Watch { path: config.paths.inbox.display().to_string(), source }),
    };
    tracing::info!(mode = ?active, reason = %why, "watching the inbox");

    let mut tracker = Tracker::new(config.watch.settle.0, config.watch.incomplete_grace.0, active == Active::Inotify);
    // systemd (Type=notify): ready once the store and the watcher are up; the watchdog is
    // fed from this loop, so a wedged loop gets the daemon restarted.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status("watching the inbox")]);
    let watchdog = sd_notify::watchdog_enabled().map(|every| every / 2);
    let mut next_watchdog = Instant::now();
    let mut next_rescan = Instant::now();
    // Look at the tracked entries when a hint arrives or a settle deadline passes; other
    // wake-ups (events that say nothing) cost nothing.
    let mut check_now = true;
    let mut next_check: Option<Instant> = None;
    let mut upkeep = Upkeep::new(Instant::now());
    let result = loop {
        let now = Instant::now();
        upkeep.tick(&config, now);
        if now >= next_rescan {
            if let Err(e) = tracker.rescan(&config.paths.inbox, now) {
                tracing::error!(error = %e, "cannot list the inbox");
            }
            next_rescan = now + config.watch.rescan.0;
            check_now = true;
        }
        if check_now || next_check.is_some_and(|t| now >= t) {
            if take_ready(&mut tracker, &mut intake, &config, &stop, &metrics) > 0 {
                intake.rest();
            }
            check_now = false;
            next_check = tracker.next_wake(Instant::now());
        }
        // Entries that failed earlier, each on its own backoff.
        if intake.next_retry().is_some_and(|t| now >= t) && !stop.load(Ordering::SeqCst) {
            let done = intake.retry_due();
            done.iter().for_each(log_taken);
            done.iter().for_each(|t| metrics.record_intake(fate_of(&t.fate), None));
            if !done.is_empty() {
                intake.rest();
            }
        }
        shared.set_intake_stuck(intake.stuck_report());
        if stop.load(Ordering::SeqCst) {
            break Ok(());
        }
        let now = Instant::now();
        if let Some(every) = watchdog {
            if now >= next_watchdog {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                next_watchdog = now + every;
            }
        }
        let mut wake = next_check.map_or(next_rescan, |w| w.min(next_rescan));
        if let Some(retry) = intake.next_retry() {
            wake = wake.min(retry);
        }
        if watchdog.is_some() {
            wake = wake.min(next_watchdog);
        }
        if let Some(due) = upkeep.next_due(&config) {
            wake = wake.min(due.max(now));
        }
        match rx.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(Msg::Signal(SIGHUP)) => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                if let Some((new_config, new_watcher)) = reload(global, &config, &tx) {
                    if let Some((w, now_active)) = new_watcher {
                        watcher = w;
                        active = now_active;
                    }
                    tracker.set_timing(new_config.watch.settle.0, new_config.watch.incomplete_grace.0, active == Active::Inotify);
                    check_now = true;
                    intake.set_config(&new_config);
                    for tx in &reload_txs {
                        let _ = tx.send(new_config.clone());
                    }
                    hooks.reload(&new_config);
                    config = new_config;
                }
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            }
            Ok(Msg::Signal(_)) => {
                stop.store(true, Ordering::SeqCst);
            }
            Ok(Msg::Fs(Ok(event))) => {
                let now = Instant::now();
                for hint in watch::hints(&config.paths.inbox, &event) {
                    check_now = true;
                    match hint {
                        Hint::Rescan => {
                            tracing::warn!("watcher lost events (queue overflow): rescanning the inbox");
                            next_rescan = now;
                        }
                        Hint::Entry { name, whole } => tracker.hint(&config.paths.inbox, &name, whole, now),
                    }
                }
            }
            Ok(Msg::SchedulerEnded { slot, error }) => {
                tracing::error!(slot, %error, "a scheduler stopped: cosmosd stops (exit 1) so that systemd restarts it");
                break Err(DaemonError::SchedulerEnded { slot, error });
            }
            Ok(Msg::Fs(Err(e))) => {
                tracing::warn!(error = %e, "watcher error: rescanning the inbox");
                next_rescan = Instant::now();
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break Ok(()),
        }
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    stop.store(true, Ordering::SeqCst);
    drop(watcher);
    tracing::info!("stopping: waiting for the scheduler (a running run finishes or is handed back within daemon.stop_grace)");
    for thread in scheduler_threads {
        let _ = thread.join();
    }
    // After the slots: what they finished on the way out is delivered first.
    if let Some(c) = cluster {
        c.stop();
    }
    hooks.join();
    web.stop();
    signal_handle.close();
    let _ = signal_thread.join();
    tracing::info!("cosmosd stopped");
    result
}

/// This host's part in a shared queue (`[cluster]`): the home loop on its own thread (see
/// [`crate::cluster::Home`]) and the lease keeper its slots share.
struct ClusterHost {
    keeper: Arc<crate::cluster::LeaseKeeper>,
    home_stop: Arc<AtomicBool>,
    home: Option<std::thread::JoinHandle<()>>,
}

impl ClusterHost {
    fn start(config: &Config, shared: &crate::scheduler::Shared) -> Result<ClusterHost, DaemonError> {
        use crate::cluster::{Home, HomeError, HomeSetup, LeaseKeeper, PgQueue};
        let c = &config.cluster;
        let host = c.effective_host_id();
        let home_stop = Arc::new(AtomicBool::new(false));
        let (slots, status) = (shared.clone(), shared.clone());
        let home = Home::start(HomeSetup {
            config: config.clone(),
            stop: Arc::clone(&home_stop),
            slots: Box::new(move || slots.slots_now()),
            status: Box::new(move |v| status.set_cluster(v)),
        })?;
        let queue = PgQueue::connect(&c.database, &host).map_err(HomeError::from)?;
        tracing::info!(host = %host, database = %queue.target(), lease = %c.lease, shared_dir = %c.shared_dir.display(), "taking runs from the shared queue");
        let keeper = Arc::new(LeaseKeeper::start(queue, (c.lease.0 / 3).max(Duration::from_millis(100))));
        let home = std::thread::Builder::new()
            .name("cluster-home".into())
            .spawn(move || home.run())
            .map_err(|source| DaemonError::Io { what: "cannot start the cluster thread".into(), source })?;
        Ok(ClusterHost { keeper, home_stop, home: Some(home) })
    }

    /// A slot's own connection to the queue, sharing the host's lease keeper.
    fn slot(&self, config: &Config, slot: usize) -> Result<crate::scheduler::ClusterSlot, DaemonError> {
        let c = &config.cluster;
        let queue = crate::cluster::PgQueue::connect(&c.database, &c.effective_host_id()).map_err(crate::cluster::HomeError::from)?;
        let shared = crate::cluster::SharedDir::new(&c.shared_dir);
        Ok(crate::scheduler::ClusterSlot::new(queue, Arc::clone(&self.keeper), shared, c.lease.0, slot))
    }

    fn stop(mut self) {
        self.home_stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.home.take() {
            let _ = t.join();
        }
    }
}

/// Holds `<state>/cosmosd.lock` (flock) for the daemon's life, with its pid in it; another
/// daemon on the same state folder is refused with that pid. (Daemons that share only an
/// inbox, each with its own state, are fine: claims keep them apart.)
fn lock_state(layout: &crate::layout::Layout) -> Result<std::fs::File, DaemonError> {
    let (path, state) = (layout.lock_file(), layout.state());
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    let io_err = |what: &str, source| DaemonError::Io { what: format!("{what} {}", path.display()), source };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io_err("cannot open", e))?;
    // `cosmos status` takes a shared lock for an instant to see whether a daemon runs: a few
    // tries tell that from another daemon, which holds it for good.
    let mut tries = 0;
    // SAFETY: flock on a descriptor we own.
    while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        tries += 1;
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) && tries < 10 {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(DaemonError::Io {
                what: format!("another cosmosd (pid {}) uses the state folder {}; stop it first", pid.trim(), state.display()),
                source: err,
            });
        }
        // A filesystem without locks (some NFS setups): go on, and say so.
        tracing::warn!(path = %path.display(), error = %err, "cannot lock the state folder; make sure no other cosmosd uses it");
        break;
    }
    file.set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| writeln!(file, "{}", std::process::id()))
        .map_err(|e| io_err("cannot write", e))?;
    Ok(file)
}

/// Claims every ready entry, stopping early (between claims) when asked to stop.
/// Takes in every entry that is ready; returns how many were taken.
fn take_ready(tracker: &mut Tracker, intake: &mut Intake, config: &Config, stop: &AtomicBool, metrics: &crate::metrics::Registry) -> usize {
    let roots = {
        let mut r = config.paths.input_roots.clone();
        r.push(config.paths.inbox.clone());
        r
    };
    let rules = crate::spec::Rules::from_config(config);
    let mut bundle_ok = |path: &Path| bundle_validates(path, &roots, &rules);
    let ready = tracker.due(&config.paths.inbox, Instant::now(), &mut bundle_ok);
    // Intake latency runs from here (each entry found ready) to its decision, so it
    // includes the wait behind the entries taken before it.
    let found_ready = Instant::now();
    let mut taken = 0;
    for (i, name) in ready.iter().enumerate() {
        if stop.load(Ordering::SeqCst) {
            // Not claimed: they stay in the inbox for the next start.
            tracing::info!(left = ready.len() - i, "stopping: leaving the rest in the inbox");
            return taken;
        }
        // A failure is logged and scheduled for a retry by the intake itself.
        if let Ok(Some(t)) = intake.take(name) {
            log_taken(&t);
            metrics.record_intake(fate_of(&t.fate), Some(found_ready.elapsed()));
            taken += 1;
        }
    }
    taken
}

/// Whether a quiet bundle validates where it stands (so its videos are all there).
fn bundle_validates(dir: &Path, roots: &[std::path::PathBuf], rules: &crate::spec::Rules) -> bool {
    crate::spec::parse_bundle(dir, roots, rules, &mut |_| {}).0.is_ok()
}

fn fate_of(fate: &Fate) -> crate::metrics::IntakeFate {
    match fate {
        Fate::Accepted { .. } => crate::metrics::IntakeFate::Accepted,
        Fate::Duplicate { .. } => crate::metrics::IntakeFate::Duplicate,
        Fate::Rejected { .. } => crate::metrics::IntakeFate::Rejected,
    }
}

fn log_taken(t: &crate::intake::Taken) {
    match &t.fate {
        Fate::Accepted { runs } => {
            tracing::info!(submission = %t.submission, file = %t.name, runs, receipt = %t.receipt.display(), "accepted")
        }
        Fate::Duplicate { of } => {
            tracing::info!(submission = %t.submission, file = %t.name, duplicate_of = %of, "duplicate: nothing runs again")
        }
        Fate::Rejected { problems, same_as: None } => {
            tracing::warn!(submission = %t.submission, file = %t.name, problems, receipt = %t.receipt.display(), "rejected")
        }
        Fate::Rejected { problems, same_as: Some(first) } => tracing::warn!(
            submission = %t.submission,
            file = %t.name,
            problems,
            same_as = %first,
            receipt = %t.receipt.display(),
            "rejected again for the same problems"
        ),
    }
}

type Reloaded = (Config, Option<(Box<dyn notify::Watcher + Send>, Active)>);

/// SIGHUP: reads the configuration again. A bad file changes nothing; changes to the folders
/// need a restart and are reported, not applied.
fn reload(global: &GlobalOpts, current: &Config, tx: &mpsc::Sender<Msg>) -> Option<Reloaded> {
    let mut new = match global.load() {
        Ok(l) => l.config,
        Err(e) => {
            tracing::error!(error = %e, "config reload failed; keeping the running configuration");
            return None;
        }
    };
    new.paths.inbox = current.paths.inbox.clone();
    let changes = diff(current, &new);
    let mut kept = new.clone();
    if new.paths != current.paths {
        tracing::warn!("paths.* changed: folders move only on restart; keeping the running ones");
        kept.paths = current.paths.clone();
    }
    if new.daemon.listen != current.daemon.listen || new.daemon.metrics_file != current.daemon.metrics_file {
        tracing::warn!("daemon.listen or daemon.metrics_file changed: they take effect on restart");
    }
    if changes.is_empty() {
        tracing::info!("config reloaded: nothing changed");
        return Some((kept, None));
    }
    for c in &changes {
        tracing::info!(change = %c, "config reloaded");
    }
    let watcher = if kept.watch.mode != current.watch.mode || kept.watch.poll_interval != current.watch.poll_interval {
        let (active, why) = watch::resolve(kept.watch.mode, &kept.paths.inbox);
        match watch::start(active, &kept.paths.inbox, kept.watch.poll_interval.0, forward(tx)) {
            Ok(w) => {
                tracing::info!(mode = ?active, reason = %why, "watching the inbox");
                Some((w, active))
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start the new watcher; keeping the old one");
                kept.watch.mode = current.watch.mode;
                kept.watch.poll_interval = current.watch.poll_interval;
                None
            }
        }
    } else {
        None
    };
    Some((kept, watcher))
}

/// `key: old -> new` for every value that differs.
pub fn diff(a: &Config, b: &Config) -> Vec<String> {
    fn flatten(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    flatten(&key, v, out);
                }
            }
            other => out.push((prefix.to_string(), other.to_string())),
        }
    }
    let (mut fa, mut fb) = (Vec::new(), Vec::new());
    if let (Ok(va), Ok(vb)) = (toml::Value::try_from(a), toml::Value::try_from(b)) {
        flatten("", &va, &mut fa);
        flatten("", &vb, &mut fb);
    }
    // By key: tables such as runtime.env may gain or lose keys.
    let (ma, mb): (std::collections::BTreeMap<_, _>, std::collections::BTreeMap<_, _>) =
        (fa.into_iter().collect(), fb.into_iter().collect());
    let keys: std::collections::BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
    let none = "(none)".to_string();
    keys.into_iter()
        .filter(|k| ma.get(*k) != mb.get(*k))
        .map(|k| format!("{k}: {} -> {}", ma.get(k).unwrap_or(&none), mb.get(k).unwrap_or(&none)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_changed_keys() {
        let a = Config::default();
        let mut b = a.clone();
        b.watch.settle = crate::config::Dur(Duration::from_millis(500));
        b.scheduler.max_attempts = 5;
        let d = diff(&a, &b);
        assert_eq!(d, vec!["scheduler.max_attempts: 3 -> 5", "watch.settle: \"2s\" -> \"500ms\""]);
        b.runtime.env.insert("NCCL_DEBUG".into(), "WARN".into());
        assert_eq!(diff(&a, &b)[0], "runtime.env.NCCL_DEBUG: (none) -> \"WARN\"");
    }

    #[test]
    fn journal_stream_must_name_this_stream() {
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(journal_stream_matches("8:12345\n", 8, 12345));
        assert!(!journal_stream_matches("8:12346", 8, 12345), "another stream (inherited, stderr redirected)");
        assert!(!journal_stream_matches("9:12345", 8, 12345));
        assert!(!journal_stream_matches("", 8, 12345));
        assert!(!journal_stream_matches("8-12345", 8, 12345));
        assert!(!journal_stream_matches("x:y", 8, 12345));
    }

    #[test]
    fn each_level_has_its_syslog_priority() {
        use tracing::Level;
        let p: Vec<u8> = [Level::ERROR, Level::WARN, Level::INFO, Level::DEBUG, Level::TRACE].into_iter().map(priority).collect();
        assert_eq!(p, vec![3, 4, 6, 7, 7]);
    }

    #[test]
    fn upkeep_is_due_only_for_what_is_configured() {
        let now = Instant::now();
        let u = Upkeep::new(now);
        let mut c = Config::default();
        c.daemon.prune_after = crate::config::OptDur(None);
        c.log.dir = PathBuf::new();
        assert_eq!(u.next_due(&c), None, "no prune_after, logs on stderr: nothing to do");
        c.log.dir = PathBuf::from("/var/log/cosmos");
        assert_eq!(u.next_due(&c), Some(now), "log.keep defaults to 14 days");
        c.log.keep = crate::config::OptDur(None);
        assert_eq!(u.next_due(&c), None);
        c.daemon.prune_after = crate::config::OptDur(Some(Duration::from_secs(86_400)));
        assert_eq!(u.next_due(&c), Some(now));
    }
}
