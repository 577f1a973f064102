//! Job formats: JSONL job files (DESIGN.md section 4) and run-spec files (section 5), parsed
//! and validated into one internal [`RunSpec`]; and the NVIDIA side ([`nvidia`]), which
//! writes what NVIDIA's own `transfer.py` accepts.
//!
//! Validation reports every problem it finds (file, line, key, what was expected), never
//! only the first, and reads job files line by line with a cap on line length, so that a
//! huge file or a huge line cannot exhaust memory.

mod fields;
pub mod jsonl;
pub mod nvidia;
pub mod paths;
pub mod preflight;
pub mod rules;
pub mod runspec;
mod suggest;
mod values;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use crate::probe::VideoFacts;
pub use fields::is_safe_name;
pub use jsonl::parse_jsonl;
pub use paths::PathPolicy;
pub use preflight::VideoCheck;
pub use rules::JsonlLimits;
pub use rules::{Base, BaseOrigin, Model, Rules};

/// A control ("hint") of NVIDIA Cosmos Transfer. Declaration order is the canonical order
/// used in control-set strings and exported files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hint {
    Vis,
    Edge,
    Depth,
    Seg,
    Keypoint,
    Hdmap,
    Lidar,
    Upscale,
}

impl Hint {
    /// Every control, in the order of [`crate::config::CONTROL_NAMES`] (a test holds them equal).
    pub const ALL: [Hint; 8] = [Hint::Vis, Hint::Edge, Hint::Depth, Hint::Seg, Hint::Keypoint, Hint::Hdmap, Hint::Lidar, Hint::Upscale];

    pub fn as_str(self) -> &'static str {
        match self {
            Hint::Vis => "vis",
            Hint::Edge => "edge",
            Hint::Depth => "depth",
            Hint::Seg => "seg",
            Hint::Keypoint => "keypoint",
            Hint::Hdmap => "hdmap",
            Hint::Lidar => "lidar",
            Hint::Upscale => "upscale",
        }
    }

    pub fn parse(text: &str) -> Option<Hint> {
        Hint::ALL.into_iter().find(|h| h.as_str() == text)
    }

    /// NVIDIA generates these from the input video when no `input_control` is given;
    /// `hdmap`, `lidar` and `upscale` need a file.
    pub fn can_generate(self) -> bool {
        matches!(self, Hint::Vis | Hint::Edge | Hint::Depth | Hint::Seg | Hint::Keypoint)
    }
}

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One control of a run. Only controls with weight > 0 exist in a [`RunSpec`]: weight 0
/// means off, and an off control is not sent to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Control {
    pub weight: f64,
    /// The control video; `None` asks the model to generate it from the input video.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<PathBuf>,
    /// Transfer2.5 spatial mask (`mask_path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_path: Option<PathBuf>,
    /// Transfer2.5 mask by prompt (`mask_prompt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_prompt: Option<String>,
    /// seg only: the prompt for generating the segmentation (`input_control_prompt` in
    /// Transfer1, `control_prompt` in Transfer2.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_prompt: Option<String>,
}

impl Control {
    pub fn generated(weight: f64) -> Control {
        Control { weight, input: None, mask_path: None, mask_prompt: None, control_prompt: None }
    }

    pub fn from_file(weight: f64, input: PathBuf) -> Control {
        Control { input: Some(input), ..Control::generated(weight) }
    }
}

/// The named strengths of `blur_strength` and `canny_threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    VeryLow,
    Low,
    Medium,
    High,
    VeryHigh,
}

impl Level {
    pub const NAMES: [&'static str; 5] = ["very_low", "low", "medium", "high", "very_high"];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::VeryLow => "very_low",
            Level::Low => "low",
            Level::Medium => "medium",
            Level::High => "high",
            Level::VeryHigh => "very_high",
        }
    }

    pub fn parse(text: &str) -> Option<Level> {
        [Level::VeryLow, Level::Low, Level::Medium, Level::High, Level::VeryHigh].into_iter().find(|l| l.as_str() == text)
    }
}

/// Generation settings. `None` means "the backend's default" (see [`nvidia::Transfer1Defaults`]),
/// so a run records only what its author asked for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_steps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigma_max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blur_strength: Option<Level>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canny_threshold: Option<Level>,
    // Transfer2.5 only; passed through to that backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_frames: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_conditional_frames: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_video_frames_per_chunk: Option<u32>,
}

/// The `sim` backend's fault injection (DESIGN.md section 8).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SimFault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<SimFailure>,
    /// Fail only the first N attempts; `None`: every attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// This run's simulated duration, overriding `--job-seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// `oom` only: what cures it, as a real model's OOM is cured by saving memory: the
    /// sim's load options (`offload_network`, ...), `num_video_frames_per_chunk` (fewer
    /// than 93), `gpus:N` (a group of at least N). Every one must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cured_by: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimFailure {
    Error,
    Crash,
    Hang,
    Oom,
}

/// Which file style a run came from; the worker backends are told, so nothing is lost in
/// translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpecStyle {
    /// A JSONL job line (NVIDIA's batch format plus our extension keys).
    Jsonl,
    /// A Transfer1 `--controlnet_specs` file.
    Transfer1,
    /// A Transfer2.5 `InferenceArguments` file.
    Transfer2_5,
    /// Made by `cosmos create run`.
    Cli,
}

/// One run, whatever file it came from. Paths are absolute and were checked when the run
/// was parsed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub style: SpecStyle,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    pub visual_input: PathBuf,
    /// Exactly the controls this run uses (weight > 0); never inherited from another run.
    pub controls: BTreeMap<Hint, Control>,
    #[serde(default)]
    pub settings: Settings,
    #[serde(default)]
    pub priority: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upscale_weight: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sim: Option<SimFault>,
    /// What probing the input video found (intake's preflight); `None` until it was probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoFacts>,
}

impl RunSpec {
    /// The canonical control-set key, e.g. `"vis,edge,depth"`: runs with the same key can
    /// share one loaded model.
    pub fn control_set(&self) -> String {
        control_set_key(self.controls.keys().copied())
    }
}

pub fn control_set_key(hints: impl IntoIterator<Item = Hint>) -> String {
    let mut out = String::new();
    push_control_set(&mut out, hints);
    out
}

/// [`control_set_key`] appended to `out` (intake writes it into a batch's shared buffer).
pub fn push_control_set(out: &mut String, hints: impl IntoIterator<Item = Hint>) {
    for (i, h) in hints.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(h.as_str());
    }
}

/// One problem found in a job file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line number (JSONL) or `None` for the file as a whole.
    pub line: Option<u64>,
    /// The key path, e.g. `control_overrides.depth.control_weight`.
    pub key: Option<String>,
    pub message: String,
}

impl Problem {
    /// The one-line form, with the file named: `jobs.jsonl:3: prompt: expected ...`.
    pub fn display_in<'a>(&'a self, file: &'a Path) -> impl fmt::Display + 'a {
        struct D<'a>(&'a Problem, &'a Path);
        impl fmt::Display for D<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.1.display())?;
                if let Some(line) = self.0.line {
                    write!(f, ":{line}")?;
                }
                if let Some(key) = &self.0.key {
                    write!(f, ": {key}")?;
                }
                write!(f, ": {}", self.0.message)
            }
        }
        D(self, file)
    }
}

/// The outcome of validating one file: problems kept up to a cap (the total is counted),
/// and how many runs were good.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub runs: u64,
    pub lines: u64,
    pub problems: Vec<Problem>,
    /// Problems beyond [`MAX_PROBLEMS_KEPT`], counted but not kept.
    pub problems_not_kept: u64,
    /// The last line had no newline and did not parse: likely still being written.
    pub incomplete_last_line: bool,
}

/// How many problems one report keeps in memory; a million bad lines must not cost a
/// million messages.
pub const MAX_PROBLEMS_KEPT: usize = 1000;

impl Report {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.problems_not_kept == 0
    }

    pub fn problem_count(&self) -> u64 {
        self.problems.len() as u64 + self.problems_not_kept
    }

    pub(crate) fn add(&mut self, p: Problem) {
        if self.problems.len() < MAX_PROBLEMS_KEPT {
            self.problems.push(p);
        } else {
            self.problems_not_kept += 1;
        }
    }

    /// Every problem, one per line, file named, plus a count of those not kept.
    pub fn render(&self, file: &Path) -> String {
        let mut out = String::new();
        for p in &self.problems {
            out.push_str(&p.display_in(file).to_string());
            out.push('\n');
        }
        if self.problems_not_kept > 0 {
            out.push_str(&format!(
                "{}: ... and {} more problems (only the first {MAX_PROBLEMS_KEPT} are listed)\n",
                file.display(),
                self.problems_not_kept
            ));
        }
        out
    }
}

/// A validated run and the line it came from (1 for a run-spec file).
#[derive(Debug, Clone)]
pub struct Job {
    pub line: u64,
    pub spec: RunSpec,
}

/// What kind of job file a path is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Jsonl,
    RunSpec,
}

impl FileKind {
    pub fn of(path: &Path) -> Option<FileKind> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl") => Some(FileKind::Jsonl),
            Some("json") => Some(FileKind::RunSpec),
            _ => None,
        }
    }
}

/// The job files at the top of a bundle folder, sorted, without hidden names.
pub fn bundle_job_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') || FileKind::of(&path).is_none() {
            continue;
        }
        if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Validates one job file (`.jsonl` or `.json`) and hands each good run to `sink`. This is
/// the exact validation the daemon applies to a submission; `cosmos validate` calls it too.
/// Paths in the file resolve against the file's folder under `policy`'s rules.
pub fn parse_job_file(path: &Path, roots: &[PathBuf], rules: &Rules, sink: &mut dyn FnMut(Job)) -> Report {
    let base = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    parse_job_file_at(path, &base, roots, rules, sink)
}

/// [`parse_job_file`] with relative paths resolved against `base` rather than the file's
/// own folder: the daemon reads a claimed file as if it were still in the inbox.
pub fn parse_job_file_at(path: &Path, base: &Path, roots: &[PathBuf], rules: &Rules, sink: &mut dyn FnMut(Job)) -> Report {
    let mut report = Report::default();
    let kind = match FileKind::of(path) {
        Some(k) => k,
        None => {
            report.add(Problem { line: None, key: None, message: "expected a .jsonl job file or a .json run-spec file".into() });
            return report;
        }
    };
    let file = match paths::open_regular_file(path) {
        Ok(f) => f,
        Err(message) => {
            report.add(Problem { line: None, key: None, message });
            return report;
        }
    };
    // The daemon's judgement, so every video is probed (the preflight) as well.
    let mut policy = PathPolicy::new(base, roots).checking_videos();
    match kind {
        FileKind::Jsonl => parse_jsonl(std::io::BufReader::with_capacity(1 << 16, file), &mut policy, rules, sink),
        FileKind::RunSpec => runspec::parse_run_spec_reader(file, &mut policy, rules, sink),
    }
}

/// What a bundle folder holds at its top level: one job file, or a JSONL with a Transfer1
/// base spec `.json` beside it (NVIDIA's batch format: `--batch_input_path` plus
/// `--controlnet_specs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleJobs {
    One(PathBuf),
    WithBase { jobs: PathBuf, base: PathBuf },
}

impl BundleJobs {
    /// The job file whose lines become runs.
    pub fn jobs(&self) -> &Path {
        match self {
            BundleJobs::One(p) => p,
            BundleJobs::WithBase { jobs, .. } => jobs,
        }
    }
}

/// The job files of a bundle folder, or why it has no usable set of them.
pub fn bundle_jobs(dir: &Path) -> Result<BundleJobs, String> {
    let files = bundle_job_files(dir).map_err(|e| format!("cannot list the bundle folder: {e}"))?;
    let (jsonl, json): (Vec<&PathBuf>, Vec<&PathBuf>) = files.iter().partition(|f| FileKind::of(f) == Some(FileKind::Jsonl));
    match (jsonl.as_slice(), json.as_slice()) {
        ([one], []) | ([], [one]) => Ok(BundleJobs::One((*one).clone())),
        ([jobs], [base]) => Ok(BundleJobs::WithBase { jobs: (*jobs).clone(), base: (*base).clone() }),
        ([], []) => Err("the bundle folder holds no .jsonl or .json job file at its top level".into()),
        _ => {
            let names: Vec<String> = files.iter().filter_map(|f| f.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
            Err(format!(
                "a bundle folder holds one job file (a .jsonl may have one base spec .json beside it); this one has {}: {}",
                names.len(),
                names.join(", ")
            ))
        }
    }
}

/// Validates a bundle folder as the daemon takes it in: its job file, with its base spec as
/// the base where it has one, paths resolved against the folder. Returns the report and the
/// bundle's job files (`None` when it has no usable set; the report says why).
pub fn parse_bundle(dir: &Path, roots: &[PathBuf], rules: &Rules, sink: &mut dyn FnMut(Job)) -> (Report, Option<BundleJobs>) {
    let mut report = Report::default();
    let general = |message: String| Problem { line: None, key: None, message };
    let layout = match bundle_jobs(dir) {
        Ok(l) => l,
        Err(message) => {
            report.add(general(message));
            return (report, None);
        }
    };
    let rules = match &layout {
        BundleJobs::One(_) => rules.clone(),
        BundleJobs::WithBase { base, .. } => match read_base_spec(base, rules) {
            Ok(b) => Rules { base: b, ..rules.clone() },
            Err(problems) => {
                for p in problems {
                    report.add(p);
                }
                return (report, Some(layout));
            }
        },
    };
    (parse_job_file_at(layout.jobs(), dir, roots, &rules, sink), Some(layout))
}

/// A bundle's base spec, or its problems (each naming the file).
fn read_base_spec(path: &Path, rules: &Rules) -> Result<Base, Vec<Problem>> {
    use std::io::Read;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let fail = |message: String| vec![Problem { line: None, key: None, message: format!("base spec {name}: {message}") }];
    let file = paths::open_regular_file(path).map_err(fail)?;
    let mut bytes = Vec::new();
    let cap = rules.limits.max_line_bytes as u64;
    file.take(cap + 1).read_to_end(&mut bytes).map_err(|e| fail(format!("cannot read it: {e}")))?;
    if bytes.len() as u64 > cap {
        return Err(fail(format!("over the limit of {cap} bytes")));
    }
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| fail(format!("invalid JSON: {e}")))?;
    let Some(obj) = value.as_object() else {
        return Err(fail("expected a JSON object (NVIDIA's --controlnet_specs file)".into()));
    };
    let mut p = fields::Problems::new(None);
    let base = rules::parse_base_spec(obj, &name, &mut p);
    if p.is_empty() {
        Ok(base)
    } else {
        Err(p.list.into_iter().map(|x| Problem { message: format!("base spec {name}: {}", x.message), ..x }).collect())
    }
}
