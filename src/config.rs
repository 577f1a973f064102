//! The TOML configuration of DESIGN.md section 12: every key has a default, unknown keys
//! are errors, durations (`"2s"`) and sizes (`"10GiB"`) are parsed into types, and
//! `--root DIR` relocates the three folders for a quick start.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the configuration came from, for `check-config` and error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// `--config PATH` or `$COSMOS_CONFIG`.
    File(PathBuf),
    /// `/etc/cosmos/config.toml`, found on its own.
    SystemFile(PathBuf),
    /// No file: every value is a default.
    Defaults,
}

pub const SYSTEM_CONFIG: &str = "/etc/cosmos/config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {key}: {message}")]
    Invalid { path: String, key: &'static str, message: String },
    #[error("cannot create {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
}

impl ConfigError {
    /// A usage error (bad file contents) rather than a failure of the host.
    pub fn is_usage(&self) -> bool {
        !matches!(self, ConfigError::CreateDir { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub paths: Paths,
    pub watch: Watch,
    pub runtime: Runtime,
    pub jobs: Jobs,
    pub scheduler: Scheduler,
    pub outbox: Outbox,
    pub daemon: Daemon,
    pub hooks: Hooks,
    pub log: Log,
    pub cluster: Cluster,
}

/// `[cluster]` (DESIGN.md, "Several hosts"): an empty `database` keeps the single-host
/// SQLite queue; a PostgreSQL URL makes every host's daemon share one queue there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DBNAME`, or key=value form; empty: one host.
    pub database: String,
    /// Storage every host mounts, for staged inputs and outputs in flight.
    pub shared_dir: PathBuf,
    /// This host's name in the shared queue; empty: the hostname.
    pub host_id: String,
    /// How long a claimed run stays with its slot without a renewal.
    pub lease: Dur,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster { database: String::new(), shared_dir: PathBuf::new(), host_id: String::new(), lease: Dur::secs(90) }
    }
}

impl Cluster {
    /// Whether the shared queue is in use (a database is named).
    pub fn enabled(&self) -> bool {
        !self.database.trim().is_empty()
    }

    /// `host_id`, else the hostname (else "localhost" where the host has none).
    pub fn effective_host_id(&self) -> String {
        let id = self.host_id.trim();
        if !id.is_empty() {
            return id.to_string();
        }
        hostname().unwrap_or_else(|| "localhost".to_string())
    }
}

/// The kernel's hostname, `None` where it is empty or unreadable.
fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}

/// Host ids go into the queue, status and receipts: a name, not arbitrary text.
fn valid_host_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 253 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Commands and URLs told when a run or a submission ends (DESIGN.md section 12).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hooks {
    /// A command run when a run ends: `COSMOS_RUN_ID`, `COSMOS_RUN_STATUS`, `COSMOS_RUN_DIR`.
    pub on_run: String,
    /// A command run when every run of a submission ended: `COSMOS_SUBMISSION_ID`, `COSMOS_RECEIPT`.
    pub on_submission: String,
    /// URLs that receive the receipt JSON by POST.
    pub webhook: Vec<String>,
    /// How long one hook or webhook call may take before it counts as failed.
    pub timeout: Dur,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks { on_run: String::new(), on_submission: String::new(), webhook: Vec::new(), timeout: Dur::secs(30) }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Paths {
    pub inbox: PathBuf,
    pub outbox: PathBuf,
    /// cosmos.db, claimed/, archive/, work/.
    pub state: PathBuf,
    /// Absolute folders that jobs may name; the inbox is always allowed.
    pub input_roots: Vec<PathBuf>,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            inbox: "/srv/cosmos/inbox".into(),
            outbox: "/srv/cosmos/outbox".into(),
            state: "/var/lib/cosmos".into(),
            input_roots: Vec::new(),
        }
    }
}

impl Paths {
    pub fn database(&self) -> PathBuf {
        self.state.join("cosmos.db")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchMode {
    Auto,
    Inotify,
    Poll,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Watch {
    pub mode: WatchMode,
    pub poll_interval: Dur,
    pub settle: Dur,
    pub rescan: Dur,
    pub incomplete_grace: Dur,
}

impl Default for Watch {
    fn default() -> Self {
        Watch {
            mode: WatchMode::Auto,
            poll_interval: Dur::secs(2),
            settle: Dur::secs(2),
            rescan: Dur::secs(60),
            incomplete_grace: Dur::secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Docker,
    Process,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backend {
    #[serde(rename = "sim")]
    Sim,
    #[serde(rename = "transfer1")]
    Transfer1,
    #[serde(rename = "transfer2_5")]
    Transfer2_5,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sim => "sim",
            Backend::Transfer1 => "transfer1",
            Backend::Transfer2_5 => "transfer2_5",
        }
    }
}

/// `runtime.gpus`: `"all"`, `[0, 1]` (a worker per GPU), `[[0, 1], [2, 3]]` (a worker per
/// group) or `[]` (one worker with no GPU, for sim and tests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Gpus {
    Named(AllGpus),
    Each(Vec<u32>),
    Groups(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllGpus {
    All,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    pub kind: RuntimeKind,
    pub backend: Backend,
    pub backend_args: Vec<String>,
    pub python: String,
    pub worker_path: PathBuf,
    pub image: String,
    pub checkpoints: PathBuf,
    pub gpus: Gpus,
    pub network: String,
    pub shm_size: Size,
    pub ipc_host: bool,
    /// The most processes and threads the worker's container may have (docker): a fork
    /// bomb in a model's code stops there. 0: no limit.
    pub pids_limit: u64,
    pub min_free_gpu_mib: u64,
    pub instance: String,
    /// NVIDIA's checkout (cosmos-transfer1 or cosmos-transfer2.5): the worker's working
    /// directory, first on PYTHONPATH. A container path for docker. Empty: not set.
    pub model_code: PathBuf,
    /// A Hugging Face cache on the host: mounted read-only (docker), `HF_HOME`,
    /// `HF_HUB_OFFLINE=1`. Empty: not set.
    pub hf_home: PathBuf,
    /// Extra environment for the worker.
    pub env: BTreeMap<String, String>,
    /// Extra bind mounts for the container, `"HOST:CONTAINER[:ro]"`.
    pub mounts: Vec<String>,
    pub guardrails: Guardrails,
    /// transfer1: NVIDIA's Cosmos-Transfer1-7B-Sample-AV base, whose controls are `hdmap`
    /// and `lidar` (and only those), instead of the base 7B model.
    pub av_sample: bool,
}

/// `runtime.guardrails`: NVIDIA's safety models, where the backend has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Guardrails {
    On,
    Off,
    /// On, with the guardrail models offloaded to the CPU between uses.
    Offload,
}

impl Guardrails {
    pub fn as_str(self) -> &'static str {
        match self {
            Guardrails::On => "on",
            Guardrails::Off => "off",
            Guardrails::Offload => "offload",
        }
    }
}

/// One `runtime.mounts` entry, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraMount {
    pub host: PathBuf,
    pub container: PathBuf,
    pub read_only: bool,
}

/// Parses `"HOST:CONTAINER[:ro|:rw]"` (both absolute).
pub fn parse_mount(text: &str) -> Result<ExtraMount, String> {
    let expected = || format!("expected \"HOST:CONTAINER\" or \"HOST:CONTAINER:ro\" with absolute paths, got {text:?}");
    let parts: Vec<&str> = text.split(':').collect();
    let (host, container, read_only) = match parts.as_slice() {
        [h, c] => (*h, *c, false),
        [h, c, "ro"] => (*h, *c, true),
        [h, c, "rw"] => (*h, *c, false),
        _ => return Err(expected()),
    };
    if !host.starts_with('/') || !container.starts_with('/') {
        return Err(expected());
    }
    Ok(ExtraMount { host: host.into(), container: container.into(), read_only })
}

impl Runtime {
    /// `runtime.mounts`, parsed (checked when the configuration is loaded).
    pub fn extra_mounts(&self) -> Vec<ExtraMount> {
        self.mounts.iter().filter_map(|m| parse_mount(m).ok()).collect()
    }
}

/// The controls of NVIDIA Cosmos Transfer, by name (the job formats' `spec::Hint`).
pub const CONTROL_NAMES: [&str; 8] = ["vis", "edge", "depth", "seg", "keypoint", "hdmap", "lidar", "upscale"];

/// `[jobs]`: what a job line that leaves something out gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Jobs {
    /// The controls of a line without `control_overrides` (NVIDIA's batch format lets a base
    /// spec supply them; outside a bundle with such a spec, these do).
    pub default_controls: BTreeMap<String, DefaultControl>,
}

impl Default for Jobs {
    fn default() -> Self {
        Jobs { default_controls: BTreeMap::from([("edge".to_string(), DefaultControl { control_weight: 1.0, input_control: None })]) }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultControl {
    pub control_weight: f64,
    /// An absolute path (under `paths.input_roots`); absent: generated from the input video.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_control: Option<PathBuf>,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            kind: RuntimeKind::Docker,
            backend: Backend::Transfer1,
            backend_args: Vec::new(),
            python: "python3".into(),
            worker_path: PathBuf::new(),
            image: "cosmos-transfer1:latest".into(),
            checkpoints: "/srv/cosmos/checkpoints".into(),
            gpus: Gpus::Named(AllGpus::All),
            network: "none".into(),
            shm_size: Size(8 << 30),
            ipc_host: false,
            pids_limit: 16384,
            min_free_gpu_mib: 0,
            instance: "default".into(),
            model_code: PathBuf::new(),
            hf_home: PathBuf::new(),
            env: BTreeMap::new(),
            mounts: Vec::new(),
            guardrails: Guardrails::On,
            av_sample: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scheduler {
    pub max_attempts: u32,
    pub run_timeout: Dur,
    pub max_affinity_wait: Dur,
    pub cancel_grace: Dur,
    /// A run out of GPU memory may be retried with options that change its output (fewer
    /// frames per chunk), after those that keep it (offloading, a larger GPU group).
    pub oom_may_change_result: bool,
}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler {
            max_attempts: 3,
            run_timeout: Dur::secs(2 * 3600),
            max_affinity_wait: Dur::secs(600),
            cancel_grace: Dur::secs(30),
            oom_may_change_result: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Outbox {
    pub mode: FileMode,
    pub min_free: Size,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox { mode: FileMode(0o644), min_free: Size(10 << 30) }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Daemon {
    pub stop_grace: Dur,
    pub status_interval: Dur,
    /// `"127.0.0.1:9464"`: `/metrics`, `/status.json` and `/` (the status page); empty: off.
    pub listen: String,
    /// node_exporter textfile output (`*.prom`), rewritten atomically; empty: off.
    pub metrics_file: PathBuf,
    /// Work folders, archived originals and old logs of runs finished longer ago are removed;
    /// empty: never.
    pub prune_after: OptDur,
}

impl Default for Daemon {
    fn default() -> Self {
        Daemon {
            stop_grace: Dur::secs(300),
            status_interval: Dur::secs(2),
            listen: String::new(),
            metrics_file: PathBuf::new(),
            prune_after: OptDur(None),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub level: String,
    pub dir: PathBuf,
    /// Log files under `dir` older than this are removed (`"14d"`); empty: kept forever.
    pub keep: OptDur,
}

impl Default for Log {
    fn default() -> Self {
        Log { level: "info".into(), dir: PathBuf::new(), keep: OptDur(Some(Duration::from_secs(14 * 86_400))) }
    }
}

/// A duration written `"500ms"`, `"1.5s"`, `"10m"`, `"2h"` or `"30d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }
}

/// Parses jiff's friendly duration format: `"500ms"`, `"1.5s"`, `"10m"`, `"2h 30m"`,
/// `"30d"`, `"2 hours"`. A day is 24 hours here (a timeout, not a calendar date); months
/// and years, whose length varies, and negative durations are refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    use jiff::{SignedDuration, Span, SpanRelativeTo};
    let expected = || format!("expected a duration like \"500ms\", \"1.5s\", \"10m\", \"2h\" or \"30d\", got {text:?}");
    let span: Span = text.trim().parse().map_err(|_| expected())?;
    if span.is_negative() {
        return Err(format!("a duration cannot be negative, got {text:?}"));
    }
    if span.get_years() != 0 || span.get_months() != 0 {
        return Err(format!("months and years have no fixed length: write {text:?} in days, hours, minutes or seconds"));
    }
    let exact: SignedDuration = span.to_duration(SpanRelativeTo::days_are_24_hours()).map_err(|_| expected())?;
    Duration::try_from(exact).map_err(|_| format!("duration {text:?} is too large"))
}

impl fmt::Display for Dur {
    /// The shortest exact form in one unit (`1500ms`, `2h`, `30d`), which parses back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0.as_nanos();
        for (unit, per) in [
            ("d", 86_400_000_000_000u128),
            ("h", 3_600_000_000_000),
            ("m", 60_000_000_000),
            ("s", 1_000_000_000),
            ("ms", 1_000_000),
            ("us", 1000),
        ] {
            if ns >= per && ns.is_multiple_of(per) {
                return write!(f, "{}{unit}", ns / per);
            }
        }
        write!(f, "{ns}ns")
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map(Dur).map_err(serde::de::Error::custom)
    }
}

/// A duration that may be left empty (`""`: off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OptDur(pub Option<Duration>);

impl fmt::Display for OptDur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) => Dur(d).fmt(f),
            None => Ok(()),
        }
    }
}

impl Serialize for OptDur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for OptDur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim().is_empty() {
            return Ok(OptDur(None));
        }
        parse_duration(&text).map(|d| OptDur(Some(d))).map_err(serde::de::Error::custom)
    }
}

/// A size in bytes written `"512MiB"`, `"10GiB"`, `"1.5GiB"`, `"4096"` (bytes), `"1TiB"`, `"10GB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

/// Parses a size with bytesize: a number (a fraction allowed) and a unit in bytes, binary
/// (`KiB` .. `EiB`) or decimal (`kB` .. `EB`), or a plain count of bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let expected = || format!("expected a size like \"512MiB\", \"1.5GiB\" or \"10GiB\", got {text:?}");
    // bytesize also takes "512m" or "1mb" as decimal megabytes, where docker's "512m" means
    // MiB and "mb" reads as bits: only units spelled in bytes ("B") are unambiguous.
    let unit = t.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.').trim_start();
    if !(unit.is_empty() || unit.ends_with('B')) {
        return Err(expected());
    }
    match t.parse::<bytesize::ByteSize>() {
        // bytesize saturates where the value overflows.
        Ok(size) if size.as_u64() == u64::MAX => Err(format!("size {text:?} is too large")),
        Ok(size) => Ok(size.as_u64()),
        Err(_) => Err(expected()),
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, per) in [("TiB", 1u64 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if self.0 >= per && self.0.is_multiple_of(per) {
                return write!(f, "{}{unit}", self.0 / per);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_size(&text).map(Size).map_err(serde::de::Error::custom)
    }
}

/// A file mode written in octal, `"0644"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl Serialize for FileMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:04o}", self.0))
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match u32::from_str_radix(&text, 8) {
            Ok(m) if m <= 0o7777 && !text.is_empty() => Ok(FileMode(m)),
            _ => Err(serde::de::Error::custom(format!("expected an octal file mode like \"0644\", got {text:?}"))),
        }
    }
}

/// Options both binaries take, before or after the subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalOpts {
    /// Configuration file (default: $COSMOS_CONFIG, else /etc/cosmos/config.toml, else defaults)
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Put inbox, outbox and state under DIR (DIR/inbox, DIR/outbox, DIR/state)
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

impl GlobalOpts {
    /// The configuration in force, with `--root` applied.
    pub fn load(&self) -> Result<Loaded, ConfigError> {
        // An empty $COSMOS_CONFIG counts as unset.
        let from_env = std::env::var_os("COSMOS_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from);
        let mut loaded = Config::load(self.config.clone().or(from_env).as_deref())?;
        if let Some(root) = &self.root {
            loaded.config.apply_root(root)?;
        }
        Ok(loaded)
    }
}

/// The configuration in force and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub source: ConfigSource,
}

impl Config {
    /// Parses TOML text; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: origin.to_path_buf(), message: one_line(&e.to_string()) })?;
        config.check(&origin.display().to_string())?;
        Ok(config)
    }

    /// Rules serde cannot express.
    fn check(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |key: &'static str, message: String| ConfigError::Invalid { path: origin.to_string(), key, message };
        for root in &self.paths.input_roots {
            if !root.is_absolute() {
                return Err(bad("paths.input_roots", format!("expected absolute folders, got {:?}", root.display().to_string())));
            }
        }
        if self.scheduler.max_attempts == 0 {
            return Err(bad("scheduler.max_attempts", "expected at least 1".into()));
        }
        if self.watch.poll_interval.0.is_zero() {
            return Err(bad("watch.poll_interval", "expected a duration above 0".into()));
        }
        if self.daemon.status_interval.0.is_zero() {
            return Err(bad("daemon.status_interval", "expected a duration above 0".into()));
        }
        let listen = self.daemon.listen.trim();
        if !listen.is_empty() && !listen.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()) {
            return Err(bad("daemon.listen", format!("expected HOST:PORT such as \"127.0.0.1:9464\" (or \"\" for none), got {listen:?}")));
        }
        if self.runtime.instance.is_empty() || !self.runtime.instance.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            return Err(bad("runtime.instance", format!("expected letters, digits, '.', '_' or '-', got {:?}", self.runtime.instance)));
        }
        if let Gpus::Groups(groups) = &self.runtime.gpus {
            if groups.iter().any(|g| g.is_empty()) {
                return Err(bad("runtime.gpus", "a GPU group must name at least one GPU".into()));
            }
        }
        for url in &self.hooks.webhook {
            if !url.starts_with("http://") || url.len() == "http://".len() {
                let why = if url.starts_with("https://") { " (https is not built in: post to an http:// relay on this host)" } else { "" };
                return Err(bad("hooks.webhook", format!("expected http://HOST[:PORT]/PATH URLs, got {url:?}{why}")));
            }
        }
        if self.hooks.timeout.0.is_zero() {
            return Err(bad("hooks.timeout", "expected a duration above 0".into()));
        }
        for m in &self.runtime.mounts {
            parse_mount(m).map_err(|e| bad("runtime.mounts", e))?;
        }
        for key in self.runtime.env.keys() {
            let ok = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(bad("runtime.env", format!("expected variable names like HF_TOKEN, got {key:?}")));
            }
        }
        for (path, key) in [(&self.runtime.hf_home, "runtime.hf_home"), (&self.runtime.model_code, "runtime.model_code")] {
            if !path.as_os_str().is_empty() && !path.is_absolute() {
                return Err(bad(key, format!("expected an absolute path, got {:?}", path.display().to_string())));
            }
        }
        if self.runtime.av_sample && self.runtime.backend != Backend::Transfer1 {
            return Err(bad("runtime.av_sample", "the Sample-AV base is a Transfer1 model; set runtime.backend = \"transfer1\"".into()));
        }
        for (hint, c) in &self.jobs.default_controls {
            if !CONTROL_NAMES.contains(&hint.as_str()) {
                return Err(bad(
                    "jobs.default_controls",
                    format!("{hint:?} is not a control; expected vis, edge, depth, seg, keypoint, hdmap, lidar or upscale"),
                ));
            }
            if !(0.0..=1.0).contains(&c.control_weight) {
                return Err(bad(
                    "jobs.default_controls",
                    format!("{hint}.control_weight: expected a number in [0, 1], got {}", c.control_weight),
                ));
            }
            if c.input_control.as_ref().is_some_and(|p| !p.is_absolute()) {
                return Err(bad("jobs.default_controls", format!("{hint}.input_control: expected an absolute path")));
            }
        }
        self.check_cluster(&bad)?;
        let level = self.log.level.to_ascii_lowercase();
        if !["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
            return Err(bad("log.level", format!("expected error, warn, info, debug or trace, got {:?}", self.log.level)));
        }
        Ok(())
    }

    fn check_cluster(&self, bad: &dyn Fn(&'static str, String) -> ConfigError) -> Result<(), ConfigError> {
        let c = &self.cluster;
        if !c.host_id.is_empty() && !valid_host_id(&c.host_id) {
            return Err(bad(
                "cluster.host_id",
                format!("expected letters, digits, '.', '_' or '-' (or \"\" for the hostname), got {:?}", c.host_id),
            ));
        }
        if c.lease.0 < Duration::from_secs(1) {
            return Err(bad("cluster.lease", format!("expected at least 1s (a run is renewed at a third of it), got {}", c.lease)));
        }
        if !c.shared_dir.as_os_str().is_empty() && !c.shared_dir.is_absolute() {
            return Err(bad("cluster.shared_dir", format!("expected an absolute path, got {:?}", c.shared_dir.display().to_string())));
        }
        if c.enabled() {
            parse_database_url(&c.database).map_err(|e| bad("cluster.database", e))?;
            if c.shared_dir.as_os_str().is_empty() {
                return Err(bad("cluster.shared_dir", "expected the folder every host mounts, since cluster.database is set".into()));
            }
        }
        Ok(())
    }

    /// Loads the configuration the way both binaries do: `--config PATH`, else
    /// `$COSMOS_CONFIG` (the caller passes it in `explicit`), else `/etc/cosmos/config.toml`
    /// where it exists, else the defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Loaded, ConfigError> {
        Self::load_with_system(explicit, Path::new(SYSTEM_CONFIG))
    }

    fn load_with_system(explicit: Option<&Path>, system: &Path) -> Result<Loaded, ConfigError> {
        let (path, source) = match explicit {
            Some(p) => (p.to_path_buf(), ConfigSource::File(p.to_path_buf())),
            None if system.is_file() => (system.to_path_buf(), ConfigSource::SystemFile(system.to_path_buf())),
            None => return Ok(Loaded { config: Config::default(), source: ConfigSource::Defaults }),
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        Ok(Loaded { config: Config::from_toml(&text, &path)?, source })
    }

    /// `--root DIR`: inbox, outbox and state go under DIR whatever the file says, created if
    /// missing. Relative DIR is made absolute so that stored paths stay valid from any cwd.
    pub fn apply_root(&mut self, root: &Path) -> Result<(), ConfigError> {
        let root = absolute(root);
        self.paths.inbox = root.join("inbox");
        self.paths.outbox = root.join("outbox");
        self.paths.state = root.join("state");
        for dir in [&self.paths.inbox, &self.paths.outbox, &self.paths.state] {
            std::fs::create_dir_all(dir).map_err(|source| ConfigError::CreateDir { path: dir.clone(), source })?;
        }
        Ok(())
    }

    /// The effective values as TOML, for `cosmosd check-config`.
    pub fn to_toml(&self) -> String {
        // Every field serialises to TOML (strings, integers, arrays, tables).
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// [`Config::to_toml`] for showing: the queue database's password as `***`.
    pub fn to_toml_redacted(&self) -> String {
        let mut shown = self.clone();
        if let Some(secret) = password_in(&shown.cluster.database).map(str::to_string) {
            shown.cluster.database = shown.cluster.database.replace(&secret, "***");
        }
        shown.to_toml()
    }
}

pub use crate::fsutil::absolute;

fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | ")
}

/// Parses `cluster.database` without connecting: it parses, names a host and a user, and
/// asks for no TLS (not built in yet). Errors never show the password.
pub fn parse_database_url(url: &str) -> Result<postgres::Config, String> {
    let url = url.trim();
    let config = <postgres::Config as std::str::FromStr>::from_str(url).map_err(|e| {
        // The parser's message may quote what it choked on: the password never shows.
        let why = match password_in(url) {
            Some(secret) => e.to_string().replace(secret, "***"),
            None => e.to_string(),
        };
        format!("{why}: expected \"postgres://USER@HOST[:PORT]/DBNAME\" or \"host=... user=... dbname=...\"")
    })?;
    if config.get_hosts().is_empty() {
        return Err("no host named: expected \"postgres://USER@HOST[:PORT]/DBNAME\"".into());
    }
    if config.get_user().is_none() {
        return Err("no user named: expected \"postgres://USER@HOST[:PORT]/DBNAME\"".into());
    }
    if config.get_ssl_mode() == postgres::config::SslMode::Require {
        return Err("sslmode=require: TLS to the queue database is not built in yet; use a trusted network or a tunnel (stunnel, ssh, WireGuard) and sslmode=disable or prefer".into());
    }
    Ok(config)
}

/// The password of a URL that may not parse: `scheme://user:PASSWORD@...` or `password=PASSWORD`.
fn password_in(url: &str) -> Option<&str> {
    if let Some((_, rest)) = url.split_once("://") {
        let userinfo = rest.rsplit_once('@')?.0;
        return userinfo.split_once(':').map(|(_, p)| p).filter(|p| !p.is_empty());
    }
    let start = url.find("password=")? + "password=".len();
    url[start..].split_whitespace().next().map(|p| p.trim_matches('\'')).filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design_card() {
        let c = Config::default();
        assert_eq!(c.watch.settle.0, Duration::from_secs(2));
        assert_eq!(c.scheduler.run_timeout.0, Duration::from_secs(7200));
        assert_eq!(c.outbox.min_free.0, 10 << 30);
        assert_eq!(c.outbox.mode.0, 0o644);
        assert_eq!(c.runtime.gpus, Gpus::Named(AllGpus::All));
        assert_eq!(c.runtime.kind, RuntimeKind::Docker);
        assert_eq!(c.daemon.listen, "");
        assert_eq!(c.daemon.prune_after, OptDur(None));
    }

    #[test]
    fn optional_durations_may_be_empty() {
        let c: Config =
            toml::from_str("[daemon]\nprune_after = \"30d\"\nlisten = \"127.0.0.1:9464\"\n[log]\nkeep = \"\"\n").expect("parses");
        assert_eq!(c.daemon.prune_after, OptDur(Some(Duration::from_secs(30 * 86_400))));
        assert_eq!(c.log.keep, OptDur(None));
        let err = toml::from_str::<Config>("[daemon]\nprune_after = \"soon\"\n").expect_err("refused");
        assert!(err.to_string().contains("expected a duration"), "{err}");
    }

    #[test]
    fn parses_durations_sizes_and_gpus() {
        let text = r#"
            [watch]
            settle = "500ms"
            rescan = "10m"
            [runtime]
            kind = "process"
            backend = "sim"
            gpus = [[0, 1], [2, 3]]
            shm_size = "512MiB"
            [outbox]
            mode = "0640"
        "#;
        let c = Config::from_toml(text, Path::new("t.toml")).unwrap();
        assert_eq!(c.watch.settle.0, Duration::from_millis(500));
        assert_eq!(c.watch.rescan.0, Duration::from_secs(600));
        assert_eq!(c.runtime.gpus, Gpus::Groups(vec![vec![0, 1], vec![2, 3]]));
        assert_eq!(c.runtime.shm_size.0, 512 << 20);
        assert_eq!(c.outbox.mode.0, 0o640);
        assert_eq!(c.runtime.backend, Backend::Sim);
        let again = Config::from_toml(&c.to_toml(), Path::new("round.toml")).unwrap();
        assert_eq!(again, c);
        let c = Config::from_toml("[runtime]\ngpus = []", Path::new("t.toml")).unwrap();
        assert_eq!(c.runtime.gpus, Gpus::Each(vec![]));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_naming_the_key() {
        let err = Config::from_toml("[watch]\nsetle = \"2s\"\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("c.toml") && err.contains("setle"), "{err}");
        let err = Config::from_toml("[watch]\nsettle = \"2 fortnights\"\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("expected a duration"), "{err}");
        let err = Config::from_toml("[paths]\ninput_roots = [\"rel\"]\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("paths.input_roots"), "{err}");
        let err = Config::from_toml("[scheduler]\nmax_attempts = 0\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("max_attempts"), "{err}");
    }

    #[test]
    fn runtime_model_keys_and_default_controls() {
        let text = r#"
            [runtime]
            backend = "transfer1"
            model_code = "/opt/cosmos-transfer1"
            hf_home = "/srv/hf"
            env = { HF_TOKEN = "x", NCCL_DEBUG = "WARN" }
            mounts = ["/srv/code:/workspace/code:ro", "/scratch:/scratch"]
            guardrails = "offload"
            av_sample = true
            [jobs]
            default_controls = { depth = { control_weight = 0.5 }, vis = { control_weight = 0.2 } }
        "#;
        let c = Config::from_toml(text, Path::new("t.toml")).unwrap();
        assert_eq!(c.runtime.guardrails, Guardrails::Offload);
        assert_eq!(
            c.runtime.extra_mounts()[0],
            ExtraMount { host: "/srv/code".into(), container: "/workspace/code".into(), read_only: true }
        );
        assert!(!c.runtime.extra_mounts()[1].read_only);
        assert_eq!(c.runtime.env["NCCL_DEBUG"], "WARN");
        assert_eq!(c.jobs.default_controls.len(), 2);
        assert_eq!(Config::from_toml(&c.to_toml(), Path::new("round.toml")).unwrap(), c);
        assert_eq!(Config::default().jobs.default_controls["edge"].control_weight, 1.0);
        for (bad, key) in [
            ("[runtime]\nmounts = [\"relative:/x\"]", "runtime.mounts"),
            ("[runtime]\nmounts = [\"/a:/b:maybe\"]", "runtime.mounts"),
            ("[runtime]\nenv = { \"1X\" = \"y\" }", "runtime.env"),
            ("[runtime]\nmodel_code = \"code\"", "runtime.model_code"),
            ("[runtime]\nbackend = \"transfer2_5\"\nav_sample = true", "runtime.av_sample"),
            ("[jobs]\ndefault_controls = { blur = { control_weight = 0.5 } }", "jobs.default_controls"),
            ("[jobs]\ndefault_controls = { edge = { control_weight = 1.5 } }", "jobs.default_controls"),
        ] {
            let err = Config::from_toml(bad, Path::new("c.toml")).unwrap_err().to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
        let err = Config::from_toml("[runtime]\nguardrails = \"maybe\"", Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("guardrails"), "{err}");
    }

    #[test]
    fn duration_text() {
        let ms = Duration::from_millis;
        for (text, want) in [
            ("500ms", ms(500)),
            ("2s", ms(2000)),
            ("1.5s", ms(1500)),
            ("10m", ms(600_000)),
            ("2h", ms(7_200_000)),
            ("2.5h", ms(9_000_000)),
            ("2h 30m", ms(9_000_000)),
            ("1d", ms(86_400_000)),
            ("30d", ms(30 * 86_400_000)),
            ("1w", ms(7 * 86_400_000)),
            ("2 hours", ms(7_200_000)),
            (" 0s ", ms(0)),
            ("250us", Duration::from_micros(250)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text:?}");
        }
        for bad in ["2", "", "2 fortnights", "soon", "1.5", "s", "2s3", "1e3s"] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains("expected a duration like") && err.contains(&format!("{bad:?}")), "{bad:?}: {err}");
        }
        let err = parse_duration("-2s").expect_err("negative");
        assert!(err.contains("cannot be negative") && err.contains("\"-2s\""), "{err}");
        let err = parse_duration("2s ago").expect_err("negative");
        assert!(err.contains("cannot be negative"), "{err}");
        let err = parse_duration("1mo").expect_err("months");
        assert!(err.contains("months and years") && err.contains("\"1mo\""), "{err}");
        assert!(parse_duration("1y").expect_err("years").contains("months and years"));
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn duration_display_is_short_and_parses_back() {
        for (d, text) in [
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(2), "2s"),
            (Duration::from_secs(600), "10m"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_secs(30 * 86_400), "30d"),
            (Duration::from_micros(250), "250us"),
            (Duration::from_nanos(1), "1ns"),
            (Duration::ZERO, "0ns"),
        ] {
            assert_eq!(Dur(d).to_string(), text);
            assert_eq!(parse_duration(text), Ok(d), "{text}");
        }
        assert_eq!(OptDur(None).to_string(), "");
    }

    #[test]
    fn size_text() {
        for (text, want) in [
            ("512MiB", 512u64 << 20),
            ("10GiB", 10 << 30),
            ("1.5GiB", 3 << 29),
            ("1TiB", 1 << 40),
            ("4096", 4096),
            ("0", 0),
            ("10 GiB", 10 << 30),
            ("10GB", 10_000_000_000),
            ("64kB", 64_000),
            ("64KB", 64_000),
            ("100B", 100),
        ] {
            assert_eq!(parse_size(text), Ok(want), "{text:?}");
        }
        // "m" and "mb" are refused: docker's "512m" is MiB, bytesize's is MB; "mb" reads as bits.
        for bad in ["10 parsecs", "512m", "1g", "1mb", "1Gb", "", "GiB", "-1GiB", "1.2.3MiB", "1e3B"] {
            let err = parse_size(bad).expect_err(bad);
            assert!(err.contains("expected a size like") && err.contains(&format!("{bad:?}")), "{bad:?}: {err}");
        }
        let err = parse_size("99999999EiB").expect_err("too large");
        assert!(err.contains("too large") && err.contains("\"99999999EiB\""), "{err}");
        assert_eq!(Size(3 << 20).to_string(), "3MiB");
        assert_eq!(Size(3 << 29).to_string(), "1536MiB");
        assert_eq!(Size(100).to_string(), "100B");
        assert_eq!(parse_size(&Size(3 << 29).to_string()), Ok(3 << 29));
    }

    #[test]
    fn config_takes_the_new_forms() {
        let c = Config::from_toml("[watch]\nsettle = \"1.5s\"\n[runtime]\nshm_size = \"1.5GiB\"\n", Path::new("t.toml")).unwrap();
        assert_eq!(c.watch.settle.0, Duration::from_millis(1500));
        assert_eq!(c.runtime.shm_size.0, 3 << 29);
        assert_eq!(Config::from_toml(&c.to_toml(), Path::new("round.toml")).unwrap(), c);
        let err = Config::from_toml("[runtime]\nshm_size = \"512m\"\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("c.toml") && err.contains("shm_size") && err.contains("\"512m\""), "{err}");
    }

    #[test]
    fn cluster_is_off_by_default_and_checked_when_on() {
        let c = Config::default();
        assert!(!c.cluster.enabled());
        assert_eq!(c.cluster.lease.0, Duration::from_secs(90));
        assert!(!c.cluster.effective_host_id().is_empty(), "the hostname stands in");
        let text = "[cluster]\ndatabase = \"postgres://cosmos@db.internal/cosmos\"\nshared_dir = \"/mnt/cosmos\"\nhost_id = \"gpu-07\"\nlease = \"2m\"\n";
        let c = Config::from_toml(text, Path::new("c.toml")).unwrap();
        assert!(c.cluster.enabled());
        assert_eq!((c.cluster.effective_host_id().as_str(), c.cluster.lease.0), ("gpu-07", Duration::from_secs(120)));
        assert_eq!(Config::from_toml(&c.to_toml(), Path::new("round.toml")).unwrap(), c);
        let with_pw = "[cluster]\ndatabase = \"postgres://cosmos:s3cret-pw@db.internal/cosmos\"\nshared_dir = \"/mnt/cosmos\"\n";
        let shown = Config::from_toml(with_pw, Path::new("c.toml")).unwrap().to_toml_redacted();
        assert!(!shown.contains("s3cret-pw") && shown.contains("postgres://cosmos:***@db.internal/cosmos"), "{shown}");
        for (bad, key, says) in [
            ("[cluster]\ndatabase = \"postgres://cosmos@db/q\"", "cluster.shared_dir", "every host mounts"),
            ("[cluster]\ndatabase = \"mysql://x\"\nshared_dir = \"/mnt\"", "cluster.database", "invalid connection string"),
            ("[cluster]\ndatabase = \"postgres://u:pw@db/q?sslmode=require\"\nshared_dir = \"/m\"", "cluster.database", "TLS"),
            ("[cluster]\nshared_dir = \"relative\"", "cluster.shared_dir", "absolute"),
            ("[cluster]\nhost_id = \"gpu 7\"", "cluster.host_id", "letters, digits"),
            ("[cluster]\nlease = \"500ms\"", "cluster.lease", "at least 1s"),
            ("[cluster]\nleese = \"90s\"", "leese", "unknown field"),
        ] {
            let err = Config::from_toml(bad, Path::new("c.toml")).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(says) && !err.contains("pw@"), "{bad}: {err}");
        }
    }

    #[test]
    fn explicit_file_wins_and_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("system.toml");
        std::fs::write(&sys, "[runtime]\nbackend = \"sim\"\n").unwrap();
        let loaded = Config::load_with_system(None, &sys).unwrap();
        assert_eq!(loaded.source, ConfigSource::SystemFile(sys.clone()));
        assert_eq!(loaded.config.runtime.backend, Backend::Sim);
        let none = Config::load_with_system(None, &dir.path().join("absent.toml")).unwrap();
        assert_eq!(none.source, ConfigSource::Defaults);
        assert!(Config::load_with_system(Some(&dir.path().join("nope.toml")), &sys).is_err());
    }
}
