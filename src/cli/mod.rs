//! `cosmos`, the command line: the seed's prompt/run workflow (`create prompt`, `create run`,
//! `batch-inference`, `inference`, `list`, `show`, `delete`) plus `validate`, against the
//! store. Every command that creates something prints its id.

mod control;
pub mod daemon_args;
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
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Another process held the store past the busy timeout: exit 1, try again.
    #[error("the store {} is busy: another process holds it (a long transaction, a backup?); nothing was changed, try again in a moment", .0.display())]
    Busy(PathBuf),
}

impl CliError {
    /// DESIGN.md section 13: 0 ok, 1 failure, 2 usage or validation error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Invalid(_) => 2,
            CliError::Store(e) if e.is_usage() => 2,
            CliError::Config(e) if e.is_usage() => 2,
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
    },
    /// Queue runs one by one, optionally each followed by an upscale run
    Inference {
        #[arg(required = true, value_name = "RS")]
        runs: Vec<String>,
        /// Once a run completes, upscale its output with this weight, in (0, 1]
        #[arg(long, value_name = "W")]
        upscale_weight: Option<f64>,
        /// Print each run's NVIDIA spec; change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// List prompts or runs, newest first
    List {
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
        #[arg(long)]
        json: bool,
    },
    /// Validate job files exactly as cosmosd will; exit 2 listing every problem
    Validate {
        /// .jsonl job files, .json run specs, or bundle folders holding them
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
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
    },
    /// Cancel runs: queued ones at once, running ones within scheduler.cancel_grace
    Cancel {
        #[arg(required = true, value_name = "RS")]
        runs: Vec<String>,
    },
    /// Queue failed or cancelled runs again
    Retry {
        #[arg(required = true, value_name = "RS")]
        runs: Vec<String>,
    },
    /// Start no new runs (the running one finishes)
    Pause,
    /// Start runs again after `cosmos pause`
    Resume,
    /// The daemon's state: queue, current run with progress and ETA, workers, GPUs
    Status {
        #[arg(long)]
        json: bool,
    },
    /// A run's execution log
    Logs {
        #[arg(value_name = "RS")]
        run: String,
        /// Keep printing as the log grows, until the run ends
        #[arg(short, long)]
        follow: bool,
    },
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
    /// Delete prompts or runs (never a running run)
    Delete {
        what: DeleteWhat,
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
        /// Also delete queued runs, and a prompt's runs with it
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum Create {
    /// A prompt: TEXT and a folder with color.mp4 (and optionally depth.mp4,
    /// segmentation.mp4 or seg.mp4, edge.mp4)
    Prompt {
        text: String,
        video_dir: PathBuf,
        #[arg(long, value_name = "N")]
        name: Option<String>,
        #[arg(long, value_name = "TEXT")]
        negative: Option<String>,
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
    Prompts,
    Runs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DeleteWhat {
    Prompt,
    Run,
}

/// Runs one `cosmos` command, printing to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    // Generated from the command line alone: no configuration needed (a packaging host has none).
    match &cli.command {
        Command::Completions { shell, program } => return Ok(docs::completions(*shell, *program, out)?),
        Command::Man { out: dir } => {
            let pages = docs::man_pages(dir)
                .map_err(|e| CliError::Io(std::io::Error::other(format!("cannot write the man pages into {}: {e}", dir.display()))))?;
            for page in pages {
                writeln!(out, "{}", page.display())?;
            }
            return Ok(());
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
        Command::Validate { files } => validate(&config, &files, out),
        Command::Submit { files, inbox, wait } => submit::submit(&config, &files, inbox, wait, out),
        command => {
            let mut store = Store::open(&config.paths.database())?;
            match command {
                Command::Create(Create::Prompt { text, video_dir, name, negative }) => {
                    create_prompt(&mut store, text, &video_dir, name, negative, out)
                }
                Command::Create(Create::Run(args)) => create_run(&mut store, args, out),
                Command::BatchInference { runs, batch_name, dry_run } => {
                    batch_inference(&mut store, &config, &runs, batch_name, dry_run, out)
                }
                Command::Inference { runs, upscale_weight, dry_run } => inference(&mut store, &config, &runs, upscale_weight, dry_run, out),
                Command::List { what, status, limit, json } => {
                    list(&store, spec::Model::from_config(&config), what, status, limit, json, out)
                }
                Command::Show { id, json } => show(&store, spec::Model::from_config(&config), &id, json, out),
                Command::Delete { what, ids, force } => delete(&mut store, what, &ids, force, out),
                Command::Cancel { runs } => control::cancel(&mut store, &runs, out),
                Command::Retry { runs } => control::retry(&mut store, &runs, out),
                Command::Pause => control::pause(&mut store, true, out),
                Command::Resume => control::pause(&mut store, false, out),
                Command::Status { json } => control::status(&store, &config, json, out),
                Command::Logs { run, follow } => control::logs(&store, &config, &run, follow, out),
                Command::Validate { .. } | Command::Submit { .. } | Command::Completions { .. } | Command::Man { .. } => Ok(()),
            }
        }
    }
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
        Ok(m) if m.is_file() => Ok(Some(std::fs::canonicalize(&path)?)),
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
    writeln!(out, "Created prompt {} (name {}; videos: {})", prompt.id, prompt.name.as_deref().unwrap_or("-"), videos.join(", "))?;
    Ok(())
}

fn create_run(store: &mut Store, a: CreateRun, out: &mut dyn Write) -> Result<()> {
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
    out: &mut dyn Write,
) -> Result<()> {
    let name = batch_name.unwrap_or_else(|| "batch".into());
    if !spec::is_safe_name(&name) {
        return Err(usage(format!("--batch-name {name:?}: expected 1 to 64 of A-Z a-z 0-9 . _ -")));
    }
    let ids = resolve_all(store, IdKind::Run, prefixes)?;
    if dry_run {
        let runs = load_runs(store, &ids)?;
        let pairs: Vec<(&str, &RunSpec)> = runs.iter().map(|r| (r.id.as_str(), &r.spec)).collect();
        let batch = nvidia::nvidia_batch(&pairs);
        let folder = format!("batch_{name}_{}", crate::time::Timestamp::now().compact());
        writeln!(out, "# dry run: nothing was queued")?;
        writeln!(out, "# batch {name}: {} runs -> {}", runs.len(), crate::layout::Layout::of(&config.paths).batch_dir(&folder).display())?;
        for (i, r) in runs.iter().enumerate() {
            writeln!(out, "# line {}: {} ({}; controls {})", i + 1, r.id, r.status, r.control_set)?;
        }
        writeln!(out, "# --- {name}.jsonl (NVIDIA transfer.py --batch_input_path) ---")?;
        write!(out, "{}", batch.jsonl())?;
        writeln!(out, "# --- batch_spec.json (NVIDIA transfer.py --controlnet_specs) ---")?;
        write!(out, "{}", batch.base_spec_text())?;
        let blocked: Vec<String> = runs
            .iter()
            .filter(|r| !matches!(r.status, RunStatus::Pending | RunStatus::Failed | RunStatus::Cancelled))
            .map(|r| format!("{} is {}", r.id, r.status))
            .collect();
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
    let mut restaged = Vec::new();
    for id in ids {
        let run = store.run(id)?;
        // Only runs that can be queued; the queueing step explains the others.
        let queueable = matches!(run.status, RunStatus::Pending | RunStatus::Failed | RunStatus::Cancelled);
        if !queueable {
            continue;
        }
        let mut spec = run.spec.clone();
        stager.plan(&mut spec).map_err(|e| usage(format!("run {id}: {e}")))?;
        if spec != run.spec {
            restaged.push((id.clone(), spec));
        }
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
    out: &mut dyn Write,
) -> Result<()> {
    if let Some(w) = upscale {
        if !(w.is_finite() && w > 0.0 && w <= 1.0) {
            return Err(usage(format!("--upscale-weight: expected a number in (0, 1], got {w}")));
        }
    }
    let ids = resolve_all(store, IdKind::Run, prefixes)?;
    if dry_run {
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
    for id in &ids {
        match upscale {
            Some(w) => writeln!(out, "Queued run {id} (then upscale at weight {w})")?,
            None => writeln!(out, "Queued run {id}")?,
        }
    }
    Ok(())
}

fn list(
    store: &Store,
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
            if as_json {
                let arr: Vec<_> = runs.iter().map(|r| json::run(r, model)).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&arr).unwrap_or_default())?;
                return Ok(());
            }
            writeln!(out, "{:<16} {:<10} {:<16} {:<20} {:<16} {:<24} PROMPT", "ID", "STATUS", "PROMPT_ID", "CONTROLS", "BATCH", "CREATED")?;
            for r in runs {
                writeln!(
                    out,
                    "{:<16} {:<10} {:<16} {:<20} {:<16} {:<24} {}",
                    r.id,
                    r.status,
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
            v["runs"] = store.runs_where(RunLink::Prompt, &id)?.iter().map(json::run_ref).collect();
            v
        }
        IdKind::Run => {
            let run = store.run(&id)?;
            let mut v = json::run(&run, model);
            v["spec"] = crate::scheduler::worker_spec(&run.spec, model);
            v["children"] = store.runs_where(RunLink::Parent, &id)?.iter().map(json::run_ref).collect();
            v["events"] = store.events(&id)?.iter().map(json::event).collect();
            v
        }
        IdKind::Batch => {
            let mut v = json::batch(&store.batch(&id)?);
            v["runs"] = store.runs_where(RunLink::Batch, &id)?.iter().map(json::run_ref).collect();
            v
        }
        IdKind::Submission => {
            let mut v = json::submission(&store.submission(&id)?);
            v["runs"] = store.runs_where(RunLink::Submission, &id)?.iter().map(json::run_ref).collect();
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

fn validate(config: &Config, paths: &[PathBuf], out: &mut dyn Write) -> Result<()> {
    let mut roots = config.paths.input_roots.clone();
    roots.push(config.paths.inbox.clone());
    // The daemon's own rules: its backend, its default controls.
    let rules = spec::Rules::from_config(config);
    let mut problems_total = 0u64;
    let (mut ok, mut checked) = (0usize, 0usize);
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
            writeln!(
                out,
                "{}: ok, {} run{} for the {} backend",
                shown.display(),
                report.runs,
                if report.runs == 1 { "" } else { "s" },
                rules.model.name()
            )?;
        } else {
            problems_total += report.problem_count();
            write!(out, "{}", report.render(&shown))?;
        }
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

fn delete(store: &mut Store, what: DeleteWhat, prefixes: &[String], force: bool, out: &mut dyn Write) -> Result<()> {
    match what {
        DeleteWhat::Run => {
            let ids = resolve_all(store, IdKind::Run, prefixes)?;
            store.delete_runs(&ids, force)?;
            for id in ids {
                writeln!(out, "Deleted run {id}")?;
            }
        }
        DeleteWhat::Prompt => {
            let ids = resolve_all(store, IdKind::Prompt, prefixes)?;
            store.delete_prompts(&ids, force)?;
            for id in ids {
                writeln!(out, "Deleted prompt {id}")?;
            }
        }
    }
    Ok(())
}
