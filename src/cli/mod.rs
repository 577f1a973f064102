//! `cosmos`, the command line: the seed's prompt/run workflow (`create prompt`, `create run`,
//! `batch-inference`, `inference`, `list`, `show`, `delete`) plus `validate`, against the
//! store. Every command that creates something prints its id.

mod cluster;
mod control;
pub mod daemon_args;
mod demo;
pub mod docs;
pub mod json;
pub mod share;
mod submit;

use crate::config::{Config, ConfigError};
use crate::ids::IdKind;
use crate::spec::{self, nvidia, Control, Hint, Level, RunSpec, Settings, SpecStyle};
use crate::store::{NewPrompt, PromptInputs, Run, RunLink, RunStatus, Store, StoreError};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A mistake in what was asked: exit 2.
    #[error("{0}")]
    Usage(String),
    /// Already reported in full on stdout (`validate`): exit 2 with this summary.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file or folder the command reads or writes, named.
    #[error(transparent)]
    Path(#[from] crate::fsutil::PathIo),
    /// Writing what the command prints (stdout) failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    /// What was asked did not work out (runs that did not complete, no daemon to take a
    /// submission): exit 1.
    #[error("{0}")]
    Failed(String),
    /// `cosmos status` with no daemon running: exit 3, after the report.
    #[error("{0}")]
    NotRunning(String),
    #[error(transparent)]
    Prune(#[from] crate::prune::PruneError),
    /// The shared queue of `[cluster]` (PostgreSQL): unreachable, or what was asked of it refused.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// Another process held the store past the busy timeout: exit 1, try again.
    #[error("the store {} is busy: another process holds it (a long transaction, a backup?); nothing was changed, try again in a moment", .0.display())]
    Busy(PathBuf),
}

impl CliError {
    /// DESIGN.md section 13: 0 ok, 1 failure, 2 usage or validation error; 3 from `status`
    /// when the daemon is not running.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Invalid(_) => 2,
            CliError::Store(e) if e.is_usage() => 2,
            CliError::Config(e) if e.is_usage() => 2,
            CliError::Cluster(e) if e.is_usage() => 2,
            CliError::NotRunning(_) => 3,
            _ => 1,
        }
    }
}

type Result<T> = std::result::Result<T, CliError>;

pub use crate::config::GlobalOpts;

#[derive(Debug, Parser)]
#[command(name = "cosmos", version, about = "Cosmos Workflow: prompts, runs and batches for NVIDIA Cosmos Transfer")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a prompt or a run
    #[command(subcommand)]
    Create(Create),
    /// Queue runs as one batch: one model load, many jobs
    BatchInference {
        /// Run ids (any unique prefix)
        #[arg(required = true, value_name = "RS")]
        runs: Vec<String>,
        /// Batch name ([A-Za-z0-9._-], at most 64): the outbox folder is batch_<name>_<time>
        #[arg(long, value_name = "N")]
        batch_name: Option<String>,
        /// Print the NVIDIA batch JSONL and base spec; change nothing
        #[arg(long)]
        dry_run: bool,
        /// Print JSON: {batch, runs, outbox, batch_folder}; with --dry-run {dry_run, batch_name, folder, runs, jsonl, base_spec, notes, refused}
        #[arg(long)]
        json: bool,
    },
    /// Queue runs one by one, optionally each followed by an upscale run
    Inference {
        /// Run ids (any unique prefix)
        #[arg(required = true, value_name = "RS")]
        runs: Vec<String>,
        /// Once a run completes, upscale its output with this weight, in (0, 1]
        #[arg(long, value_name = "W")]
        upscale_weight: Option<f64>,
        /// Print each run's NVIDIA spec; change nothing
        #[arg(long)]
        dry_run: bool,
        /// Print JSON: {queued: [{id, upscale_weight}]}; with --dry-run {dry_run, runs: [{id, spec, upscale_weight}]}
        #[arg(long)]
        json: bool,
    },
    /// List prompts or runs, newest first (with [cluster]: every host's runs)
    List {
        /// What to list: prompts or runs
        what: ListWhat,
        /// Only runs with this status
        #[arg(long, value_name = "S")]
        status: Option<RunStatus>,
        /// At most N rows
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Print JSON (an array; see README.md, "JSON output")
        #[arg(long)]
        json: bool,
    },
    /// Show one prompt, run, batch or submission
    Show {
        /// An id or unique prefix: ps_..., rs_..., bt_..., sb_...
        id: String,
        /// Print JSON (the object, with its runs, children and events)
        #[arg(long)]
        json: bool,
    },
    /// Validate job files exactly as cosmosd will; exit 2 listing every problem
    Validate {
        /// .jsonl job files, .json run specs, or bundle folders holding them
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Print JSON: {ok, backend, problems, files: [{path, ok, runs, problems: [{line, key, message}]}]}
        #[arg(long)]
        json: bool,
    },
    /// Validate job files here, then deliver them into the inbox and print their receipts
    Submit {
        /// .jsonl job files, .json run specs, or bundle folders
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// The inbox to deliver into (default: paths.inbox)
        #[arg(long, value_name = "DIR")]
        inbox: Option<PathBuf>,
        /// Follow the runs until they end; exit 0 only if every run completed
        #[arg(long)]
        wait: bool,
        /// Print JSON: {submissions: [{source, delivered_as, receipt, submission}], runs}
        #[arg(long)]
        json: bool,
    },
    /// Cancel runs: queued ones at once, running ones within scheduler.cancel_grace
    Cancel {
        /// Run ids (any unique prefix)
        #[arg(required = true, value_name = "RS")]
        runs: Vec<String>,
        /// Print JSON: {runs: [{id, status, stopping}]} (and running_on, with [cluster])
        #[arg(long)]
        json: bool,
    },
    /// Queue failed or cancelled runs again
    Retry {
        /// Run ids (any unique prefix) of failed or cancelled runs
        #[arg(required = true, value_name = "RS")]
        runs: Vec<String>,
        /// Print JSON: {runs: [{id, status}]}
        #[arg(long)]
        json: bool,
    },
    /// Start no new runs (the running one finishes)
    Pause {
        /// Print JSON: {paused, paused_since}
        #[arg(long)]
        json: bool,
    },
    /// Start runs again after `cosmos pause`
    Resume {
        /// Print JSON: {paused, paused_since}
        #[arg(long)]
        json: bool,
    },
    /// The daemon's state: queue, current run with progress and ETA, workers, GPUs; exit 3
    /// when cosmosd is not running
    Status {
        /// Print JSON: status.json with daemon_running, daemon_alive, queue_now (and cluster, with [cluster])
        #[arg(long)]
        json: bool,
    },
    /// A run's execution log
    Logs {
        /// Run id (any unique prefix)
        #[arg(value_name = "RS")]
        run: String,
        /// Keep printing as the log grows, until the run ends
        #[arg(short, long)]
        follow: bool,
    },
    /// The main job in one command: the daemon with the sim backend under ./cosmos-home (or
    /// --root), the examples submitted and followed, the finished run folders listed
    Demo,
    /// Run cosmosd in this process (what `cosmos demo` starts); `cosmosd` is the daemon to use
    #[command(hide = true)]
    Daemon,
    /// Print the completion script of cosmos (or of cosmosd with --program cosmosd) for SHELL
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
        /// The program to complete
        #[arg(long, value_enum, default_value = "cosmos")]
        program: docs::Program,
    },
    /// Write the man pages of cosmos and cosmosd into DIR (the packaging script's)
    #[command(hide = true)]
    Man {
        /// The folder to write cosmos.1, cosmos-SUBCOMMAND.1, cosmosd.1... into (created if missing)
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Delete prompts or runs (never a running run); a run's work folder goes with it
    Delete {
        /// What to delete: prompt or run
        what: DeleteWhat,
        /// Prompt or run ids (any unique prefix)
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
        /// Also delete queued runs, and a prompt's runs with it
        #[arg(long)]
        force: bool,
        /// Print JSON: {prompts, runs, work_folders}
        #[arg(long)]
        json: bool,
    },
    /// Remove the files of runs that ended before a cut-off: work folders, archived
    /// originals, staged inputs no kept run names, rotated daemon logs
    Prune {
        /// The age of the cut-off: files of runs that ended longer ago than this go (30d, 12h)
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        older_than: crate::config::Dur,
        /// Also remove the published run folders (outbox/run_<id>/) of those runs
        #[arg(long)]
        outbox: bool,
        /// Say what would go; remove nothing
        #[arg(long)]
        dry_run: bool,
        /// Print JSON: {dry_run, cutoff, removed: [{kind, path, bytes}], counts, bytes, errors}
        #[arg(long)]
        json: bool,
    },
}

/// `--older-than`: a duration as the configuration writes them (`30d`, `12h`, `90m`).
fn parse_age(text: &str) -> std::result::Result<crate::config::Dur, String> {
    crate::config::parse_duration(text).map(crate::config::Dur)
}

#[derive(Debug, Subcommand)]
pub enum Create {
    /// A prompt: TEXT and a folder with color.mp4 (and optionally depth.mp4,
    /// segmentation.mp4 or seg.mp4, edge.mp4)
    Prompt {
        /// The prompt text (1 to 10000 characters)
        text: String,
        /// The folder holding color.mp4 and the optional control videos
        video_dir: PathBuf,
        /// A name for the prompt ([A-Za-z0-9._-], at most 64; default: the folder's name)
        #[arg(long, value_name = "N")]
        name: Option<String>,
        /// The negative prompt
        #[arg(long, value_name = "TEXT")]
        negative: Option<String>,
        /// Print JSON: the prompt, as `show --json` prints it
        #[arg(long)]
        json: bool,
    },
    /// A run of a prompt, with control weights for vis, edge, depth and seg
    Run(CreateRun),
}

#[derive(Debug, Args)]
pub struct CreateRun {
    /// Prompt id (any unique prefix)
    pub prompt_id: String,
    /// Control weights in [0, 1], in the order VIS EDGE DEPTH SEG; 0 turns a control off
    #[arg(long, num_args = 4, required = true, value_names = ["VIS", "EDGE", "DEPTH", "SEG"], allow_negative_numbers = true)]
    pub weights: Vec<f64>,
    /// Diffusion steps (NVIDIA default 35)
    #[arg(long)]
    pub steps: Option<u32>,
    /// Classifier-free guidance (NVIDIA default 5)
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Random seed (NVIDIA default 1)
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output frames per second (NVIDIA default 24)
    #[arg(long)]
    pub fps: Option<u32>,
    /// Maximum noise level (NVIDIA default 70)
    #[arg(long)]
    pub sigma_max: Option<f64>,
    /// Blur of the vis control: very_low, low, medium, high, very_high
    #[arg(long, value_name = "LEVEL")]
    pub blur_strength: Option<LevelArg>,
    /// Canny threshold of the edge control: very_low, low, medium, high, very_high
    #[arg(long, value_name = "LEVEL")]
    pub canny_threshold: Option<LevelArg>,
    /// Queue priority, -100..100 (higher runs first)
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Print JSON: the run, as `show --json` prints it
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum LevelArg {
    VeryLow,
    Low,
    Medium,
    High,
    VeryHigh,
}

impl From<LevelArg> for Level {
    fn from(l: LevelArg) -> Level {
        match l {
            LevelArg::VeryLow => Level::VeryLow,
            LevelArg::Low => Level::Low,
            LevelArg::Medium => Level::Medium,
            LevelArg::High => Level::High,
            LevelArg::VeryHigh => Level::VeryHigh,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ListWhat {
    /// Every prompt
    Prompts,
    /// Every run (or those of --status)
    Runs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DeleteWhat {
    /// Prompts (with --force, their runs too)
    Prompt,
    /// Runs and their work folders
    Run,
}

/// Diagnostics on stderr, only when asked for with `COSMOS_LOG_LEVEL` (stdout is the
/// command's report): what `cosmos` and cosmosd's subcommands use; the daemon itself logs
/// through [`crate::daemon::init_logging`].
pub fn diagnostics_on_stderr() {
    let Some(level) = std::env::var("COSMOS_LOG_LEVEL").ok().and_then(|l| l.trim().parse::<tracing::Level>().ok()) else { return };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Runs one `cosmos` command, printing to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    // Generated from the command line alone: no configuration needed (a packaging host has none).
    match &cli.command {
        Command::Completions { shell, program } => return Ok(docs::completions(*shell, *program, out)?),
        Command::Man { out: dir } => {
            let pages =
                docs::man_pages(dir).map_err(|e| CliError::Failed(format!("cannot write the man pages into {}: {e}", dir.display())))?;
            for page in pages {
                writeln!(out, "{}", page.display())?;
            }
            return Ok(());
        }
        Command::Demo => return demo::demo(&cli.global, out),
        Command::Daemon => {
            let loaded = cli.global.load()?;
            let _guard = crate::daemon::init_logging(&loaded.config);
            return crate::daemon::run(&cli.global, loaded).map_err(|e| {
                tracing::error!(error = %e, "cosmosd failed");
                CliError::Failed(e.to_string())
            });
        }
        _ => {}
    }
    let loaded = cli.global.load()?;
    let config = loaded.config;
    let database = config.paths.database();
    run_command(cli.command, &config, out).map_err(|e| match e {
        CliError::Store(e) if e.is_busy() => CliError::Busy(database),
        other => other,
    })
}

fn run_command(command: Command, config: &Config, out: &mut dyn Write) -> Result<()> {
    let config = config.clone();
    match command {
        Command::Validate { files, json } => validate(&config, &files, json, out),
        Command::Submit { files, inbox, wait, json } => submit::submit(&config, &files, inbox, wait, json, out),
        command => {
            let mut store = Store::open(&config.paths.database())?;
            let model = spec::Model::from_config(&config);
            // `[cluster] database` set: the runs are every host's, in the shared queue.
            let shared = config.cluster.enabled();
            match command {
                Command::List { what: ListWhat::Runs, status, limit, json } if shared => {
                    cluster::list_runs(&config, &store, status, limit, json, out)
                }
                Command::Show { id, json } if shared && IdKind::of(&id) == Some(IdKind::Run) => {
                    match cluster::show_run(&config, &store, model, &id, json, out)? {
                        true => Ok(()),
                        false => show(&store, model, &id, json, out),
                    }
                }
                Command::Cancel { runs, json } if shared => cluster::cancel(&config, &mut store, &runs, json, out),
                Command::Retry { runs, json } if shared => cluster::retry(&config, &mut store, &runs, json, out),
                Command::Create(Create::Prompt { text, video_dir, name, negative, json }) => {
                    create_prompt(&mut store, text, &video_dir, name, negative, json, out)
                }
                Command::Create(Create::Run(args)) => create_run(&mut store, model, args, out),
                Command::BatchInference { runs, batch_name, dry_run, json } => {
                    batch_inference(&mut store, &config, &runs, batch_name, dry_run, json, out)
                }
                Command::Inference { runs, upscale_weight, dry_run, json } => {
                    inference(&mut store, &config, &runs, upscale_weight, dry_run, json, out)
                }
                Command::List { what, status, limit, json } => list(&store, &config, model, what, status, limit, json, out),
                Command::Show { id, json } => show(&store, model, &id, json, out),
                Command::Delete { what, ids, force, json } => delete(&mut store, &config, what, &ids, force, json, out),
                Command::Cancel { runs, json } => control::cancel(&mut store, &runs, json, out),
                Command::Retry { runs, json } => control::retry(&mut store, &runs, json, out),
                Command::Pause { json } => control::pause(&mut store, true, json, out),
                Command::Resume { json } => control::pause(&mut store, false, json, out),
                Command::Status { json } => control::status(&store, &config, json, out),
                Command::Logs { run, follow } => control::logs(&store, &config, &run, follow, out),
                Command::Prune { older_than, outbox, dry_run, json } => {
                    control::prune(&store, &config, older_than, outbox, dry_run, json, out)
                }
                Command::Validate { .. }
                | Command::Submit { .. }
                | Command::Demo
                | Command::Daemon
                | Command::Completions { .. }
                | Command::Man { .. } => Ok(()),
            }
        }
    }
}

/// Prints `v` as indented JSON, one document.
pub(crate) fn print_json(out: &mut dyn Write, v: &serde_json::Value) -> Result<()> {
    writeln!(out, "{}", serde_json::to_string_pretty(v).unwrap_or_default())?;
    Ok(())
}

pub(crate) fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

fn check_text(what: &str, text: &str, allow_empty: bool) -> Result<()> {
    let n = text.chars().count();
    if (n == 0 && !allow_empty) || n > 10_000 {
        return Err(usage(format!("{what}: expected 1 to 10000 characters, got {n}")));
    }
    if text.contains('\0') {
        return Err(usage(format!("{what}: expected text without NUL characters")));
    }
    Ok(())
}

/// A regular file in `dir`, if there is one by that name.
fn video_in(dir: &Path, name: &str) -> Result<Option<PathBuf>> {
    let path = dir.join(name);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(Some(std::fs::canonicalize(&path).map_err(crate::fsutil::at("cannot resolve", &path))?)),
        Ok(_) => Err(usage(format!("{}: expected a regular file", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(usage(format!("{}: {e}", path.display()))),
    }
}

fn create_prompt(
    store: &mut Store,
    text: String,
    video_dir: &Path,
    name: Option<String>,
    negative: Option<String>,
    as_json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    check_text("prompt TEXT", &text, false)?;
    if let Some(n) = &negative {
        check_text("--negative", n, true)?;
    }
    match std::fs::metadata(video_dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(usage(format!("VIDEO_DIR {}: expected a folder holding color.mp4", video_dir.display()))),
        Err(e) => return Err(usage(format!("VIDEO_DIR {}: {e}", video_dir.display()))),
    }
    let color = video_in(video_dir, "color.mp4")?
        .ok_or_else(|| usage(format!("VIDEO_DIR {}: no color.mp4 in it (the input video)", video_dir.display())))?;
    let seg = match video_in(video_dir, "segmentation.mp4")? {
        Some(s) => Some(s),
        None => video_in(video_dir, "seg.mp4")?,
    };
    let inputs = PromptInputs { color, depth: video_in(video_dir, "depth.mp4")?, seg, edge: video_in(video_dir, "edge.mp4")? };
    let name = match name {
        Some(n) if spec::is_safe_name(&n) => Some(n),
        Some(n) => return Err(usage(format!("--name {n:?}: expected 1 to 64 of A-Z a-z 0-9 . _ -"))),
        None => std::fs::canonicalize(video_dir)
            .ok()
            .and_then(|d| d.file_name().map(|f| f.to_string_lossy().into_owned()))
            .filter(|n| spec::is_safe_name(n)),
    };
    let mut videos = vec!["color"];
    for (label, present) in [("depth", &inputs.depth), ("seg", &inputs.seg), ("edge", &inputs.edge)] {
        if present.is_some() {
            videos.push(label);
        }
    }
    let prompt = store.create_prompt(NewPrompt { name, text, negative_prompt: negative, inputs })?;
    if as_json {
        return print_json(out, &json::prompt(&prompt));
    }
    writeln!(out, "Created prompt {} (name {}; videos: {})", prompt.id, prompt.name.as_deref().unwrap_or("-"), videos.join(", "))?;
    Ok(())
}

fn create_run(store: &mut Store, model: spec::Model, a: CreateRun, out: &mut dyn Write) -> Result<()> {
    let prompt_id = store.resolve(IdKind::Prompt, &a.prompt_id)?;
    let prompt = store.prompt(&prompt_id)?;
    let hints = [Hint::Vis, Hint::Edge, Hint::Depth, Hint::Seg];
    if a.weights.len() != 4 {
        return Err(usage("--weights: expected four numbers: VIS EDGE DEPTH SEG"));
    }
    for (h, w) in hints.iter().zip(&a.weights) {
        if !(w.is_finite() && (0.0..=1.0).contains(w)) {
            return Err(usage(format!("--weights: the {h} weight must be in [0, 1], got {w}")));
        }
    }
    if a.weights.iter().all(|w| *w == 0.0) {
        return Err(usage("--weights: at least one weight must be above 0 (0 turns a control off)"));
    }
    let range = |name: &str, ok: bool, expected: &str| if ok { Ok(()) } else { Err(usage(format!("{name}: expected {expected}"))) };
    if let Some(s) = a.steps {
        range("--steps", (1..=1000).contains(&s), &format!("an integer in [1, 1000], got {s}"))?;
    }
    if let Some(g) = a.guidance {
        range("--guidance", g.is_finite() && (0.0..=20.0).contains(&g), &format!("a number in [0, 20], got {g}"))?;
    }
    if let Some(s) = a.seed {
        range("--seed", s <= u32::MAX as u64, &format!("an integer in [0, {}], got {s}", u32::MAX))?;
    }
    if let Some(f) = a.fps {
        range("--fps", (1..=240).contains(&f), &format!("an integer in [1, 240], got {f}"))?;
    }
    if let Some(s) = a.sigma_max {
        range("--sigma-max", s.is_finite() && s > 0.0 && s <= 1000.0, &format!("a number in (0, 1000], got {s}"))?;
    }
    range("--priority", (-100..=100).contains(&a.priority), &format!("an integer in [-100, 100], got {}", a.priority))?;
    if !prompt.inputs.color.is_file() {
        return Err(usage(format!("prompt {}: its input video {} is gone", prompt.id, prompt.inputs.color.display())));
    }
    let mut controls = BTreeMap::new();
    for (&hint, &w) in hints.iter().zip(&a.weights) {
        if w == 0.0 {
            continue;
        }
        let file = match hint {
            Hint::Depth => prompt.inputs.depth.clone(),
            Hint::Seg => prompt.inputs.seg.clone(),
            Hint::Edge => prompt.inputs.edge.clone(),
            _ => None,
        };
        controls.insert(
            hint,
            match file {
                Some(f) => Control::from_file(w, f),
                None => Control::generated(w),
            },
        );
    }
    let spec = RunSpec {
        video: None,
        style: SpecStyle::Cli,
        name: None,
        prompt: prompt.prompt.clone(),
        negative_prompt: prompt.negative_prompt.clone(),
        visual_input: prompt.inputs.color.clone(),
        controls,
        settings: Settings {
            seed: a.seed,
            num_steps: a.steps,
            guidance: a.guidance,
            sigma_max: a.sigma_max,
            fps: a.fps,
            blur_strength: a.blur_strength.map(Level::from),
            canny_threshold: a.canny_threshold.map(Level::from),
            ..Settings::default()
        },
        priority: a.priority,
        upscale_weight: None,
        sim: None,
    };
    let run = store.create_run(&prompt.id, spec)?;
    if a.json {
        return print_json(out, &json::run(&run, model));
    }
    let weights: Vec<String> = hints.iter().zip(&a.weights).map(|(h, w)| format!("{h} {w}")).collect();
    writeln!(out, "Created run {} for prompt {} (weights: {})", run.id, prompt.id, weights.join(", "))?;
    Ok(())
}

/// Resolves every prefix, reporting all that fail at once.
pub(crate) fn resolve_all(store: &Store, kind: IdKind, prefixes: &[String]) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut problems = Vec::new();
    for p in prefixes {
        match store.resolve(kind, p) {
            Ok(id) => ids.push(id),
            Err(e) => problems.push(e.to_string()),
        }
    }
    match problems.len() {
        0 => Ok(ids),
        1 => Err(usage(problems.remove(0))),
        _ => Err(usage(problems.join("; "))),
    }
}

fn load_runs(store: &Store, ids: &[String]) -> Result<Vec<Run>> {
    ids.iter().map(|id| store.run(id).map_err(CliError::from)).collect()
}

fn batch_inference(
    store: &mut Store,
    config: &Config,
    prefixes: &[String],
    batch_name: Option<String>,
    dry_run: bool,
    as_json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let name = batch_name.unwrap_or_else(|| "batch".into());
    if !spec::is_safe_name(&name) {
        return Err(usage(format!("--batch-name {name:?}: expected 1 to 64 of A-Z a-z 0-9 . _ -")));
    }
    let ids = resolve_all(store, IdKind::Run, prefixes)?;
    let layout = crate::layout::Layout::of(&config.paths);
    if dry_run {
        let runs = load_runs(store, &ids)?;
        let pairs: Vec<(&str, &RunSpec)> = runs.iter().map(|r| (r.id.as_str(), &r.spec)).collect();
        let batch = nvidia::nvidia_batch(&pairs);
        let folder = format!("batch_{name}_{}", crate::time::Timestamp::now().compact());
        let refused: Vec<String> = runs
            .iter()
            .filter(|r| !matches!(r.status, RunStatus::Pending | RunStatus::Failed | RunStatus::Cancelled))
            .map(|r| format!("{} is {}", r.id, r.status))
            .collect();
        if as_json {
            let lines: Vec<serde_json::Value> = batch.jsonl().lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
            let base: serde_json::Value = serde_json::from_str(&batch.base_spec_text()).unwrap_or(serde_json::Value::Null);
            let v = serde_json::json!({
                "dry_run": true,
                "batch_name": name,
                "folder": layout.batch_dir(&folder),
                "runs": runs.iter().map(|r| serde_json::json!({"id": r.id, "status": r.status, "control_set": r.control_set})).collect::<Vec<_>>(),
                "jsonl": lines,
                "base_spec": base,
                "notes": batch.notes,
                "refused": refused,
            });
            return print_json(out, &v);
        }
        writeln!(out, "# dry run: nothing was queued")?;
        writeln!(out, "# batch {name}: {} runs -> {}", runs.len(), crate::layout::Layout::of(&config.paths).batch_dir(&folder).display())?;
        for (i, r) in runs.iter().enumerate() {
            writeln!(out, "# line {}: {} ({}; controls {})", i + 1, r.id, r.status, r.control_set)?;
        }
        writeln!(out, "# --- {name}.jsonl (NVIDIA transfer.py --batch_input_path) ---")?;
        write!(out, "{}", batch.jsonl())?;
        writeln!(out, "# --- batch_spec.json (NVIDIA transfer.py --controlnet_specs) ---")?;
        write!(out, "{}", batch.base_spec_text())?;
        let blocked = refused;
        if !batch.notes.is_empty() || !blocked.is_empty() {
            writeln!(out, "# --- notes ---")?;
            for note in &batch.notes {
                writeln!(out, "# {note}")?;
            }
            if !blocked.is_empty() {
                writeln!(out, "# queueing would be refused: {}", blocked.join("; "))?;
            }
        }
        return Ok(());
    }
    check_model(store, config, &ids)?;
    stage_inputs(store, config, &ids)?;
    let batch = store.queue_batch(&name, &ids)?;
    if as_json {
        let v = serde_json::json!({
            "batch": json::batch(&batch),
            "runs": ids,
            "outbox": config.paths.outbox,
            "batch_folder": layout.batch_dir(&batch.folder_name()),
        });
        return print_json(out, &v);
    }
    writeln!(out, "Queued batch {} ({}): {} runs", batch.name, batch.id, ids.len())?;
    for id in &ids {
        writeln!(out, "  {id}")?;
    }
    writeln!(
        out,
        "Outputs: {}/run_<id>/ and {}/",
        config.paths.outbox.display(),
        crate::layout::Layout::of(&config.paths).batch_dir(&batch.folder_name()).display()
    )?;
    Ok(())
}

/// Refuses to queue runs the configured backend cannot run as asked (a control it does not
/// serve, a setting it would ignore), each named with why: found now, not on the GPU.
fn check_model(store: &Store, config: &Config, ids: &[String]) -> Result<()> {
    let model = spec::Model::from_config(config);
    let mut lines = Vec::new();
    for id in ids {
        let run = store.run(id)?;
        for p in model.problems(&run.spec) {
            lines.push(format!("{id}: {}: {}", p.key.unwrap_or_default(), p.message));
        }
    }
    if lines.is_empty() {
        Ok(())
    } else {
        Err(usage(format!("nothing was queued; the {} backend cannot run: {}", model.name(), lines.join("; "))))
    }
}

/// Stores the inputs of runs about to be queued in `<state>/work/inputs/` (one copy per
/// distinct content), as intake does for submissions: the worker (in a container too) reads
/// them there, and the user may change, move or delete the originals.
fn stage_inputs(store: &mut Store, config: &Config, ids: &[String]) -> Result<()> {
    let inputs = crate::layout::Layout::of(&config.paths).inputs();
    let mut stager = crate::intake::stage::Stager::following_links(&inputs);
    // The same video preflight as intake: a run whose video cannot run is refused now.
    let mut videos = spec::VideoCheck::new();
    let mut bad_videos = Vec::new();
    let mut restaged = Vec::new();
    for id in ids {
        let run = store.run(id)?;
        // Only runs that can be queued; the queueing step explains the others.
        let queueable = matches!(run.status, RunStatus::Pending | RunStatus::Failed | RunStatus::Cancelled);
        if !queueable {
            continue;
        }
        let mut spec = run.spec.clone();
        for p in videos.check(&mut spec, None) {
            bad_videos.push(format!("{id}: {}: {}", p.key.unwrap_or_default(), p.message));
        }
        stager.plan(&mut spec).map_err(|e| usage(format!("run {id}: {e}")))?;
        if spec != run.spec {
            restaged.push((id.clone(), spec));
        }
    }
    if !bad_videos.is_empty() {
        return Err(usage(format!("nothing was queued; the videos cannot run: {}", bad_videos.join("; "))));
    }
    stager.commit().map_err(|e| usage(format!("cannot stage the input videos under {}: {e}", inputs.display())))?;
    for (id, spec) in restaged {
        store.restage(&id, &spec)?;
    }
    Ok(())
}

fn inference(
    store: &mut Store,
    config: &Config,
    prefixes: &[String],
    upscale: Option<f64>,
    dry_run: bool,
    as_json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    if let Some(w) = upscale {
        if !(w.is_finite() && w > 0.0 && w <= 1.0) {
            return Err(usage(format!("--upscale-weight: expected a number in (0, 1], got {w}")));
        }
    }
    let ids = resolve_all(store, IdKind::Run, prefixes)?;
    if dry_run {
        let model = spec::Model::from_config(config);
        if as_json {
            let runs: Vec<serde_json::Value> = load_runs(store, &ids)?
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "id": r.id,
                        "spec": crate::scheduler::worker_spec(&r.spec, model),
                        "upscale_weight": upscale.or(r.spec.upscale_weight),
                    })
                })
                .collect();
            return print_json(out, &serde_json::json!({"dry_run": true, "runs": runs}));
        }
        writeln!(out, "# dry run: nothing was queued")?;
        for run in load_runs(store, &ids)? {
            writeln!(out, "# --- {} spec.json (what the {} worker gets) ---", run.id, config.runtime.backend.as_str())?;
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&crate::scheduler::worker_spec(&run.spec, spec::Model::from_config(config)))
                    .unwrap_or_default()
            )?;
            if let Some(w) = upscale.or(run.spec.upscale_weight) {
                writeln!(out, "# then an upscale run: control upscale at weight {w} on this run's output.mp4")?;
            }
        }
        return Ok(());
    }
    check_model(store, config, &ids)?;
    if upscale.is_some() && spec::Model::from_config(config) == spec::Model::Transfer2_5 {
        return Err(usage("--upscale-weight: the transfer2_5 backend has no upscale control"));
    }
    stage_inputs(store, config, &ids)?;
    store.queue_single(&ids, upscale)?;
    if as_json {
        let queued: Vec<serde_json::Value> = ids.iter().map(|id| serde_json::json!({"id": id, "upscale_weight": upscale})).collect();
        return print_json(out, &serde_json::json!({"queued": queued}));
    }
    for id in &ids {
        match upscale {
            Some(w) => writeln!(out, "Queued run {id} (then upscale at weight {w})")?,
            None => writeln!(out, "Queued run {id}")?,
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn list(
    store: &Store,
    config: &Config,
    model: spec::Model,
    what: ListWhat,
    status: Option<RunStatus>,
    limit: Option<usize>,
    as_json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    match what {
        ListWhat::Prompts => {
            if status.is_some() {
                return Err(usage("--status applies to runs, not prompts"));
            }
            let prompts = store.list_prompts(limit)?;
            if as_json {
                let arr: Vec<_> = prompts.iter().map(json::prompt).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&arr).unwrap_or_default())?;
                return Ok(());
            }
            writeln!(out, "{:<16} {:<20} {:<24} {:<24} PROMPT", "ID", "NAME", "VIDEOS", "CREATED")?;
            for p in prompts {
                let mut videos = vec!["color"];
                for (l, v) in [("depth", &p.inputs.depth), ("seg", &p.inputs.seg), ("edge", &p.inputs.edge)] {
                    if v.is_some() {
                        videos.push(l);
                    }
                }
                writeln!(
                    out,
                    "{:<16} {:<20} {:<24} {:<24} {}",
                    p.id,
                    p.name.as_deref().unwrap_or("-"),
                    videos.join(","),
                    p.created_at,
                    shorten(&p.prompt, 60)
                )?;
            }
        }
        ListWhat::Runs => {
            let runs = store.list_runs(status, limit)?;
            // When each queued or running run is expected to end (the queue ahead of it
            // and its own learned pace); only looked up when one is listed.
            let outlook = match runs.iter().any(|r| matches!(r.status, RunStatus::Queued | RunStatus::Running)) {
                true => Some(control::Outlook::of(store, config)?),
                false => None,
            };
            if as_json {
                let arr: Vec<_> = runs
                    .iter()
                    .map(|r| {
                        let mut v = json::run(r, model);
                        v["eta"] = outlook.as_ref().map_or(serde_json::Value::Null, |o| o.json(r)); // ok: json::run builds an object
                        v
                    })
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&arr).unwrap_or_default())?;
                return Ok(());
            }
            writeln!(
                out,
                "{:<16} {:<10} {:<12} {:<16} {:<20} {:<16} {:<24} PROMPT",
                "ID", "STATUS", "ETA", "PROMPT_ID", "CONTROLS", "BATCH", "CREATED"
            )?;
            for r in runs {
                writeln!(
                    out,
                    "{:<16} {:<10} {:<12} {:<16} {:<20} {:<16} {:<24} {}",
                    r.id,
                    r.status,
                    outlook.as_ref().map_or("-".to_string(), |o| o.words(&r)),
                    r.prompt_id,
                    r.control_set,
                    r.batch_id.as_deref().unwrap_or("-"),
                    r.created_at,
                    shorten(&r.spec.prompt, 40)
                )?;
            }
        }
    }
    Ok(())
}

fn shorten(text: &str, max: usize) -> String {
    let one_line = text.replace(['\n', '\r'], " ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut s: String = one_line.chars().take(max - 3).collect();
    s.push_str("...");
    s
}

fn show(store: &Store, model: spec::Model, prefix: &str, as_json: bool, out: &mut dyn Write) -> Result<()> {
    let (kind, id) = store.resolve_any(prefix)?;
    let value = match kind {
        IdKind::Prompt => {
            let mut v = json::prompt(&store.prompt(&id)?);
            v["runs"] = store.runs_where(RunLink::Prompt, &id)?.iter().map(json::run_ref).collect(); // ok: json::prompt builds an object
            v
        }
        IdKind::Run => {
            let run = store.run(&id)?;
            let mut v = json::run(&run, model);
            v["spec"] = crate::scheduler::worker_spec(&run.spec, model); // ok: json::run builds an object
            v["children"] = store.runs_where(RunLink::Parent, &id)?.iter().map(json::run_ref).collect();
            v["events"] = store.events(&id)?.iter().map(json::event).collect();
            v
        }
        IdKind::Batch => {
            let mut v = json::batch(&store.batch(&id)?);
            v["runs"] = store.runs_where(RunLink::Batch, &id)?.iter().map(json::run_ref).collect(); // ok: json::batch builds an object
            v
        }
        IdKind::Submission => {
            let mut v = json::submission(&store.submission(&id)?);
            v["runs"] = store.runs_where(RunLink::Submission, &id)?.iter().map(json::run_ref).collect(); // ok: json::submission builds an object

            // Its on_submission and webhook outcomes (the submission's own events).
            v["events"] = store.events(&id)?.iter().map(json::event).collect();
            v
        }
    };
    if as_json {
        writeln!(out, "{}", serde_json::to_string_pretty(&value).unwrap_or_default())?;
    } else {
        write_plain(&value, "", out)?;
    }
    Ok(())
}

/// `key: value` lines, nested objects indented, for people.
fn write_plain(v: &serde_json::Value, indent: &str, out: &mut dyn Write) -> std::io::Result<()> {
    use serde_json::Value;
    let Value::Object(map) = v else { return writeln!(out, "{indent}{v}") };
    for (k, val) in map {
        match val {
            Value::Null => {}
            Value::String(s) => writeln!(out, "{indent}{k}: {s}")?,
            Value::Object(m) if m.is_empty() => {}
            Value::Object(_) => {
                writeln!(out, "{indent}{k}:")?;
                write_plain(val, &format!("{indent}  "), out)?;
            }
            Value::Array(items) if items.is_empty() => {}
            Value::Array(items) => {
                writeln!(out, "{indent}{k}:")?;
                for item in items {
                    match item {
                        Value::Object(m) => {
                            let parts: Vec<String> = m
                                .iter()
                                .filter(|(_, x)| !x.is_null())
                                .map(|(a, b)| match b {
                                    Value::String(s) => format!("{a}={s}"),
                                    other => format!("{a}={other}"),
                                })
                                .collect();
                            writeln!(out, "{indent}  - {}", parts.join("  "))?;
                        }
                        other => writeln!(out, "{indent}  - {other}")?,
                    }
                }
            }
            other => writeln!(out, "{indent}{k}: {other}")?,
        }
    }
    Ok(())
}

fn validate(config: &Config, paths: &[PathBuf], as_json: bool, out: &mut dyn Write) -> Result<()> {
    let mut roots = config.paths.input_roots.clone();
    roots.push(config.paths.inbox.clone());
    // The daemon's own rules: its backend, its default controls.
    let rules = spec::Rules::from_config(config);
    let mut problems_total = 0u64;
    let (mut ok, mut checked) = (0usize, 0usize);
    let mut files = Vec::new();
    for p in paths {
        checked += 1;
        let (report, shown) = match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => {
                // A bundle: its job file, with the base spec beside it where there is one.
                let (report, layout) = spec::parse_bundle(p, &roots, &rules, &mut |_| {});
                let shown = layout.map_or_else(|| p.clone(), |l| l.jobs().to_path_buf());
                (report, shown)
            }
            _ => (spec::parse_job_file(p, &roots, &rules, &mut |_| {}), p.clone()),
        };
        if report.is_ok() {
            ok += 1;
        } else {
            problems_total += report.problem_count();
        }
        if as_json {
            let problems: Vec<serde_json::Value> =
                report.problems.iter().map(|p| serde_json::json!({"line": p.line, "key": p.key, "message": p.message})).collect();
            files.push(serde_json::json!({
                "path": shown,
                "ok": report.is_ok(),
                "runs": report.runs,
                "problems": problems,
                "problems_not_listed": report.problems_not_kept,
            }));
        } else if report.is_ok() {
            writeln!(
                out,
                "{}: ok, {} run{} for the {} backend",
                shown.display(),
                report.runs,
                if report.runs == 1 { "" } else { "s" },
                rules.model.name()
            )?;
        } else {
            write!(out, "{}", report.render(&shown))?;
        }
    }
    if as_json {
        let v = serde_json::json!({"ok": problems_total == 0, "backend": rules.model.name(), "problems": problems_total, "files": files});
        print_json(out, &v)?;
    }
    if problems_total == 0 {
        Ok(())
    } else {
        Err(CliError::Invalid(format!(
            "{problems_total} problem{} in {} of {} file{}",
            if problems_total == 1 { "" } else { "s" },
            checked - ok,
            checked,
            if checked == 1 { "" } else { "s" }
        )))
    }
}

fn delete(
    store: &mut Store,
    config: &Config,
    what: DeleteWhat,
    prefixes: &[String],
    force: bool,
    as_json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let layout = crate::layout::Layout::of(&config.paths);
    let (prompts, runs) = match what {
        DeleteWhat::Run => {
            let ids = resolve_all(store, IdKind::Run, prefixes)?;
            store.delete_runs(&ids, force)?;
            (Vec::new(), ids)
        }
        DeleteWhat::Prompt => {
            let ids = resolve_all(store, IdKind::Prompt, prefixes)?;
            // Their runs go with them (with --force): so do those runs' work folders.
            let mut runs = Vec::new();
            for id in &ids {
                runs.extend(store.runs_where(RunLink::Prompt, id)?.into_iter().map(|r| r.id));
            }
            store.delete_prompts(&ids, force)?;
            (ids, runs)
        }
    };
    // The store no longer knows these runs: their work folders (spec, log, outputs not yet
    // published) would stay forever. Published run folders in the outbox are the user's.
    let mut work_folders = Vec::new();
    for id in &runs {
        let dir = layout.run_work(id);
        if dir.exists() {
            crate::fsutil::remove_any(&dir).map_err(crate::fsutil::at("cannot remove the work folder", &dir))?;
            work_folders.push(dir);
        }
    }
    if as_json {
        return print_json(out, &serde_json::json!({"prompts": prompts, "runs": runs, "work_folders": work_folders}));
    }
    for id in &runs {
        writeln!(out, "Deleted run {id}")?;
    }
    for id in &prompts {
        writeln!(out, "Deleted prompt {id}")?;
    }
    for dir in &work_folders {
        writeln!(out, "Removed {}", dir.display())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every argument and option of every command, with the commands that lack help.
    fn bare(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                out.push(format!("{path} {id}"));
            }
            for v in arg.get_possible_values() {
                if !v.is_hide_set() && v.get_help().is_none() && arg.get_help().is_none() {
                    out.push(format!("{path} {id}={}", v.get_name()));
                }
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_name() == "help" {
                continue;
            }
            if sub.get_about().is_none() {
                out.push(format!("{path} {} (no about)", sub.get_name()));
            }
            bare(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_argument_of_every_command_has_help() {
        let mut missing = Vec::new();
        bare(&Cli::command(), "cosmos", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }

    #[test]
    fn the_bare_argument_check_finds_one() {
        // The check above could not pass by finding nothing: it finds an argument without help.
        let cmd = clap::Command::new("x").arg(clap::Arg::new("undocumented").long("undocumented"));
        let mut missing = Vec::new();
        bare(&cmd, "x", &mut missing);
        assert_eq!(missing, vec!["x undocumented"]);
    }

    #[test]
    fn prune_ages_read_as_configuration_durations() {
        assert_eq!(parse_age("30d").map(|d| d.0), Ok(std::time::Duration::from_secs(30 * 86_400)));
        assert!(parse_age("soon").is_err());
    }
}
