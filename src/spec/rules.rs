//! What a job is checked against beyond its own syntax:
//! - the **base**: the controls (and settings) of a line that leaves `control_overrides` out,
//!   from a bundle's Transfer1 base spec `.json` (NVIDIA's batch format) or from
//!   `jobs.default_controls`;
//! - the **model**: what the configured backend can run. A line NVIDIA's code would refuse,
//!   or would quietly run differently from what it asks, is rejected here, at intake, with
//!   the reason, never failed on the GPU minutes later.

use super::fields::{self, check_keys, Key, Problems};
use super::values::{parse_overrides, path_value, read_settings, MAX_PROMPT_CHARS};
use super::{Control, Hint, PathPolicy, RunSpec, Settings, SpecStyle};
use crate::config::{Backend, Config};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Limits that keep validation bounded.
#[derive(Debug, Clone)]
pub struct JsonlLimits {
    /// The longest line accepted; a longer one is skipped (never held in memory) and reported.
    pub max_line_bytes: usize,
}

impl Default for JsonlLimits {
    fn default() -> Self {
        JsonlLimits { max_line_bytes: 1 << 20 }
    }
}

/// Everything a job file is validated against.
#[derive(Debug, Clone)]
pub struct Rules {
    pub limits: JsonlLimits,
    pub base: Base,
    pub model: Model,
}

impl Default for Rules {
    /// The built-in configuration's base (`edge` at 1.0) and the `sim` model (which runs
    /// anything): for tests and tools without a configuration.
    fn default() -> Rules {
        Rules { limits: JsonlLimits::default(), base: Base::from_config(&Config::default()), model: Model::Sim }
    }
}

impl Rules {
    /// The rules of the daemon that `config` describes.
    pub fn from_config(config: &Config) -> Rules {
        Rules { limits: JsonlLimits::default(), base: Base::from_config(config), model: Model::from_config(config) }
    }
}

/// Where a base came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseOrigin {
    /// `jobs.default_controls`: used only by lines without `control_overrides`.
    Config,
    /// A bundle's base spec (its file name): NVIDIA's batch semantics, every line starts from
    /// a fresh copy of it and its `control_overrides` change only the controls it has.
    Spec(String),
}

/// One control of a base, as written (paths resolve per line, against that line's folder).
#[derive(Debug, Clone, PartialEq)]
pub struct BaseControl {
    pub weight: f64,
    pub input: Option<String>,
    pub control_prompt: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Base {
    pub origin: BaseOrigin,
    /// Every control of the base, weight 0 included (a line may turn it on).
    pub controls: BTreeMap<Hint, BaseControl>,
    pub settings: Settings,
    pub negative_prompt: Option<String>,
}

impl Base {
    pub fn from_config(config: &Config) -> Base {
        let controls = config
            .jobs
            .default_controls
            .iter()
            .filter_map(|(hint, c)| {
                let input = c.input_control.as_ref().map(|p| p.display().to_string());
                Some((Hint::parse(hint)?, BaseControl { weight: c.control_weight, input, control_prompt: None }))
            })
            .collect();
        Base { origin: BaseOrigin::Config, controls, settings: Settings::default(), negative_prompt: None }
    }

    fn describe(&self) -> String {
        match &self.origin {
            BaseOrigin::Config => "jobs.default_controls".into(),
            BaseOrigin::Spec(name) => format!("the base spec {name}"),
        }
    }

    /// A line's controls: the base's, with the line's `control_overrides` applied where the
    /// base is a bundle's spec, or the overrides alone where it is the configuration's.
    pub(crate) fn controls_for(
        &self,
        overrides: Option<&Value>,
        policy: &mut PathPolicy,
        p: &mut Problems,
    ) -> Option<BTreeMap<Hint, Control>> {
        let merge = match (overrides, &self.origin) {
            (None, _) => None,
            (Some(v), BaseOrigin::Config) => return parse_overrides(v, policy, p),
            (Some(v), BaseOrigin::Spec(_)) => Some(fields::object(v, "control_overrides", p)?),
        };
        let before = p.list.len();
        let mut merged = self.controls.clone();
        if let Some(obj) = merge {
            let names: Vec<&str> = Hint::ALL.iter().map(|h| h.as_str()).collect();
            check_keys(obj, &names, Key::from("control_overrides"), p);
            for (key, spec) in obj {
                let Some(hint) = Hint::parse(key) else { continue };
                let prefix = Key::from("control_overrides").then(key);
                let Some(spec) = fields::object(spec, prefix, p) else { continue };
                check_keys(spec, &["control_weight", "input_control", "input_control_prompt"], prefix, p);
                let Some(slot) = merged.get_mut(&hint) else {
                    p.push(
                        prefix,
                        format!(
                            "`{hint}` is not in {}: NVIDIA's batch mode ignores overrides of controls the base does not have; add it to the base spec",
                            self.describe()
                        ),
                    );
                    continue;
                };
                if let Some(w) = spec.get("control_weight") {
                    if let Some(w) = fields::number(w, prefix.then("control_weight"), 0.0, 1.0, false, p) {
                        slot.weight = w;
                    }
                }
                match spec.get("input_control") {
                    None => {}
                    Some(Value::Null) => slot.input = None,
                    Some(Value::String(s)) => slot.input = Some(s.clone()),
                    Some(other) => p.push(prefix.then("input_control"), format!("expected a file path, got {}", fields::describe(other))),
                }
                if let Some(v) = spec.get("input_control_prompt") {
                    slot.control_prompt = fields::text(v, prefix.then("input_control_prompt"), MAX_PROMPT_CHARS, false, p);
                }
            }
        }
        let mut controls = BTreeMap::new();
        for (hint, c) in merged.into_iter().filter(|(_, c)| c.weight > 0.0) {
            let key_owned = format!("control_overrides.{hint}.input_control");
            let input = match &c.input {
                Some(raw) => path_value(&Value::String(raw.clone()), Key::from(key_owned.as_str()), policy, p),
                None if !hint.can_generate() => {
                    p.push(
                        format!("control_overrides.{hint}.input_control"),
                        format!("missing in {}; `{hint}` cannot be generated from the input video", self.describe()),
                    );
                    None
                }
                None => None,
            };
            controls.insert(
                hint,
                Control { weight: c.weight, input, control_prompt: c.control_prompt.clone(), ..Control::generated(c.weight) },
            );
        }
        if p.list.len() == before && controls.is_empty() {
            p.push(
                "control_overrides",
                format!("missing, and {} has no control with control_weight > 0; expected at least one control, e.g. {{\"edge\": {{\"control_weight\": 0.5}}}}", self.describe()),
            );
        }
        Some(controls)
    }

    /// Fills what the line leaves unset from the base's settings.
    pub(crate) fn fill_settings(&self, s: &mut Settings) {
        let b = &self.settings;
        s.seed = s.seed.or(b.seed);
        s.num_steps = s.num_steps.or(b.num_steps);
        s.guidance = s.guidance.or(b.guidance);
        s.sigma_max = s.sigma_max.or(b.sigma_max);
        s.fps = s.fps.or(b.fps);
        s.blur_strength = s.blur_strength.or(b.blur_strength);
        s.canny_threshold = s.canny_threshold.or(b.canny_threshold);
    }
}

/// The keys of a Transfer1 base spec: NVIDIA's `--controlnet_specs` file.
const BASE_SPEC_KEYS: &[&str] = &[
    "prompt",
    "input_video_path",
    "negative_prompt",
    "seed",
    "num_steps",
    "guidance",
    "sigma_max",
    "fps",
    "blur_strength",
    "canny_threshold",
];

/// Parses a bundle's base spec (a Transfer1 `--controlnet_specs` object). Its `prompt` and
/// `input_video_path`, if any, are ignored as NVIDIA's batch mode ignores them: each line
/// names its own.
pub(crate) fn parse_base_spec(obj: &Map<String, Value>, name: &str, p: &mut Problems) -> Base {
    let mut allowed: Vec<&str> = BASE_SPEC_KEYS.to_vec();
    allowed.extend(Hint::ALL.iter().map(|h| h.as_str()));
    check_keys(obj, &allowed, Key::from(""), p);
    let mut controls = BTreeMap::new();
    for hint in Hint::ALL {
        let key = hint.as_str();
        let Some(v) = obj.get(key) else { continue };
        let Some(h) = fields::object(v, key, p) else { continue };
        check_keys(h, &["control_weight", "input_control", "input_control_prompt"], Key::from(key), p);
        // NVIDIA's default weight where the spec gives none (inference_utils.py
        // validate_controlnet_specs: "Setting to 0.5").
        let weight = match h.get("control_weight") {
            None => Some(0.5),
            Some(w) => fields::number(w, Key::from(key).then("control_weight"), 0.0, 1.0, false, p),
        };
        let input = match h.get("input_control") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                p.push(Key::from(key).then("input_control"), format!("expected a file path, got {}", fields::describe(other)));
                None
            }
        };
        let control_prompt = h
            .get("input_control_prompt")
            .and_then(|v| fields::text(v, Key::from(key).then("input_control_prompt"), MAX_PROMPT_CHARS, false, p));
        if let Some(weight) = weight {
            controls.insert(hint, BaseControl { weight, input, control_prompt });
        }
    }
    let negative_prompt = obj.get("negative_prompt").and_then(|v| fields::text(v, "negative_prompt", MAX_PROMPT_CHARS, true, p));
    Base { origin: BaseOrigin::Spec(name.to_string()), controls, settings: read_settings(obj, "", p), negative_prompt }
}

/// What the configured backend can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// No model: runs anything (tests and benchmarks).
    Sim,
    /// NVIDIA's `TransferPipeline`, on the base 7B model or (`av_sample`) the Sample-AV base.
    Transfer1 { av_sample: bool },
    /// NVIDIA's `Control2WorldInference`.
    Transfer2_5,
}

/// `TransferPipeline`'s hints (transfer_pipeline.py `hint_keys`; `keypoint` is left out
/// there: "causing dependency issue").
pub const TRANSFER1_HINTS: [Hint; 5] = [Hint::Vis, Hint::Seg, Hint::Edge, Hint::Depth, Hint::Upscale];
/// The Sample-AV base's hints (transfer_pipeline.py `hint_keys_av`).
pub const TRANSFER1_AV_HINTS: [Hint; 2] = [Hint::Hdmap, Hint::Lidar];
/// Transfer2.5's controls, in its own order (config.py `CONTROL_KEYS`).
pub const TRANSFER2_5_HINTS: [Hint; 4] = [Hint::Edge, Hint::Vis, Hint::Depth, Hint::Seg];

impl Model {
    pub fn from_config(config: &Config) -> Model {
        match config.runtime.backend {
            Backend::Sim => Model::Sim,
            Backend::Transfer1 => Model::Transfer1 { av_sample: config.runtime.av_sample },
            Backend::Transfer2_5 => Model::Transfer2_5,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Model::Sim => "sim",
            Model::Transfer1 { av_sample: false } => "transfer1",
            Model::Transfer1 { av_sample: true } => "transfer1 (Sample-AV)",
            Model::Transfer2_5 => "transfer2_5",
        }
    }

    /// The controls this model serves; `None`: any.
    pub fn hints(self) -> Option<&'static [Hint]> {
        match self {
            Model::Sim => None,
            Model::Transfer1 { av_sample: false } => Some(&TRANSFER1_HINTS),
            Model::Transfer1 { av_sample: true } => Some(&TRANSFER1_AV_HINTS),
            Model::Transfer2_5 => Some(&TRANSFER2_5_HINTS),
        }
    }

    /// Everything in `spec` this model cannot run as asked (empty: it can).
    pub fn problems(self, spec: &RunSpec) -> Vec<super::Problem> {
        let mut p = Problems::new(None);
        self.check(spec, &mut p);
        p.list
    }

    /// Records a problem for everything in `spec` this model cannot run as asked.
    pub(crate) fn check(self, spec: &RunSpec, p: &mut Problems) {
        let control_key = |hint: Hint| match spec.style {
            SpecStyle::Transfer1 | SpecStyle::Transfer2_5 => hint.as_str().to_string(),
            SpecStyle::Jsonl | SpecStyle::Cli => format!("control_overrides.{hint}"),
        };
        if let Some(served) = self.hints() {
            for &hint in spec.controls.keys() {
                if served.contains(&hint) {
                    continue;
                }
                let why = match (self, hint) {
                    (Model::Transfer1 { av_sample: false }, Hint::Hdmap | Hint::Lidar) => {
                        "needs NVIDIA's Sample-AV base: set runtime.av_sample = true (that base serves only hdmap and lidar)".to_string()
                    }
                    (Model::Transfer1 { av_sample: false }, Hint::Keypoint) => {
                        "NVIDIA's TransferPipeline does not serve keypoint (left out of its hint_keys)".to_string()
                    }
                    (Model::Transfer1 { av_sample: true }, _) => {
                        "the Sample-AV base (runtime.av_sample) serves only hdmap and lidar".to_string()
                    }
                    (Model::Transfer2_5, Hint::Upscale) => "Transfer2.5 has no upscale control".to_string(),
                    _ => format!("not a control of {}", self.name()),
                };
                let served: Vec<&str> = served.iter().map(|h| h.as_str()).collect();
                p.push(control_key(hint), format!("{why}; the {} backend serves {}", self.name(), served.join(", ")));
            }
        }
        let s = &spec.settings;
        match self {
            Model::Sim => {}
            Model::Transfer1 { .. } => {
                if s.fps.is_some_and(|f| f != 24) {
                    p.push("fps", "NVIDIA's TransferPipeline writes 24 fps (fps=24 is fixed there); expected 24 or nothing");
                }
                for (key, set) in [
                    ("resolution", s.resolution.is_some()),
                    ("max_frames", s.max_frames.is_some()),
                    ("num_conditional_frames", s.num_conditional_frames.is_some()),
                    ("num_video_frames_per_chunk", s.num_video_frames_per_chunk.is_some()),
                ] {
                    if set {
                        p.push(key, "a Transfer2.5 setting; the transfer1 backend cannot use it");
                    }
                }
                for (hint, c) in &spec.controls {
                    if c.mask_path.is_some() || c.mask_prompt.is_some() {
                        p.push(
                            control_key(*hint),
                            "masks (mask_path, mask_prompt) are a Transfer2.5 feature; the transfer1 backend cannot use them",
                        );
                    }
                }
            }
            Model::Transfer2_5 => {
                if let Some(g) = s.guidance {
                    if g.fract() != 0.0 || !(0.0..=7.0).contains(&g) {
                        p.push("guidance", format!("Transfer2.5 takes a whole number from 0 to 7 (InferenceArguments.guidance), got {g}"));
                    }
                }
                if s.fps.is_some() {
                    p.push("fps", "Transfer2.5 keeps the input video's frame rate; leave fps out");
                }
                if spec.upscale_weight.is_some() {
                    p.push("upscale_weight", "Transfer2.5 has no upscale control");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn spec(hints: &[Hint]) -> RunSpec {
        RunSpec {
            video: None,
            style: SpecStyle::Jsonl,
            name: None,
            prompt: "p".into(),
            negative_prompt: None,
            visual_input: PathBuf::from("/v.mp4"),
            controls: hints.iter().map(|h| (*h, Control::from_file(0.5, "/c.mp4".into()))).collect(),
            settings: Settings::default(),
            priority: 0,
            upscale_weight: None,
            sim: None,
        }
    }

    fn problems(model: Model, s: &RunSpec) -> Vec<String> {
        let mut p = Problems::new(Some(1));
        model.check(s, &mut p);
        p.list.into_iter().map(|x| format!("{}: {}", x.key.unwrap_or_default(), x.message)).collect()
    }

    #[test]
    fn the_configuration_knows_the_same_controls() {
        let names: Vec<&str> = Hint::ALL.iter().map(|h| h.as_str()).collect();
        assert_eq!(names, crate::config::CONTROL_NAMES);
    }

    #[test]
    fn each_model_refuses_what_nvidia_cannot_run() {
        let t1 = Model::Transfer1 { av_sample: false };
        assert!(problems(t1, &spec(&[Hint::Vis, Hint::Edge, Hint::Depth, Hint::Seg, Hint::Upscale])).is_empty());
        let got = problems(t1, &spec(&[Hint::Hdmap, Hint::Keypoint]));
        assert!(got[0].starts_with("control_overrides.keypoint: NVIDIA's TransferPipeline does not serve keypoint"), "{got:?}");
        assert!(got[1].contains("control_overrides.hdmap: needs NVIDIA's Sample-AV base: set runtime.av_sample = true"), "{got:?}");
        let av = Model::Transfer1 { av_sample: true };
        assert!(problems(av, &spec(&[Hint::Hdmap, Hint::Lidar])).is_empty());
        assert!(problems(av, &spec(&[Hint::Edge]))[0].contains("serves only hdmap and lidar"));
        let mut s = spec(&[Hint::Edge]);
        s.settings.fps = Some(30);
        s.settings.resolution = Some("720".into());
        let got = problems(t1, &s);
        assert!(got.iter().any(|g| g.starts_with("fps: NVIDIA's TransferPipeline writes 24 fps")), "{got:?}");
        assert!(got.iter().any(|g| g.starts_with("resolution: a Transfer2.5 setting")), "{got:?}");

        let t25 = Model::Transfer2_5;
        let mut s = spec(&[Hint::Edge, Hint::Upscale, Hint::Keypoint]);
        s.settings.guidance = Some(5.5);
        s.upscale_weight = Some(0.5);
        let got = problems(t25, &s);
        assert!(got.iter().any(|g| g.starts_with("control_overrides.upscale: Transfer2.5 has no upscale control")), "{got:?}");
        assert!(got.iter().any(|g| g.starts_with("control_overrides.keypoint: not a control of transfer2_5")), "{got:?}");
        assert!(got.iter().any(|g| g.starts_with("guidance: Transfer2.5 takes a whole number from 0 to 7")), "{got:?}");
        assert!(got.iter().any(|g| g.starts_with("upscale_weight")), "{got:?}");
        s = spec(&[Hint::Seg]);
        s.settings.guidance = Some(7.0);
        assert!(problems(t25, &s).is_empty());
        assert!(problems(Model::Sim, &spec(&[Hint::Keypoint, Hint::Hdmap])).is_empty());
    }

    fn bundle(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("videos")).unwrap();
        // Real videos: parse_bundle judges as intake does, probing each.
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/videos/city1");
        for f in ["color.mp4", "depth.mp4"] {
            std::fs::copy(fixtures.join(f), dir.path().join("videos").join(f)).unwrap();
        }
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn parse(dir: &std::path::Path, rules: &Rules) -> (crate::spec::Report, Vec<crate::spec::Job>) {
        let mut jobs = Vec::new();
        let (report, _) = crate::spec::parse_bundle(dir, &[], rules, &mut |j| jobs.push(j));
        (report, jobs)
    }

    #[test]
    fn a_line_without_control_overrides_gets_jobs_default_controls() {
        let mut config = Config::default();
        config.jobs.default_controls = BTreeMap::from([
            ("depth".to_string(), crate::config::DefaultControl { control_weight: 0.5, input_control: None }),
            ("vis".to_string(), crate::config::DefaultControl { control_weight: 0.2, input_control: None }),
            ("seg".to_string(), crate::config::DefaultControl { control_weight: 0.0, input_control: None }),
        ]);
        let rules = Rules::from_config(&config);
        let dir = bundle(&[(
            "jobs.jsonl",
            concat!(
                r#"{"visual_input": "videos/color.mp4", "prompt": "defaults"}"#,
                "\n",
                r#"{"visual_input": "videos/color.mp4", "prompt": "own", "control_overrides": {"edge": {"control_weight": 0.3}}}"#,
                "\n"
            ),
        )]);
        let (report, jobs) = parse(dir.path(), &rules);
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(jobs[0].spec.control_set(), "vis,depth");
        assert_eq!(jobs[0].spec.controls[&Hint::Depth].weight, 0.5);
        assert_eq!(jobs[1].spec.control_set(), "edge", "a line's own overrides replace the configured defaults");
        // Nothing configured and nothing given: said so.
        config.jobs.default_controls.clear();
        let (report, _) = parse(dir.path(), &Rules::from_config(&config));
        let shown = report.render(std::path::Path::new("jobs.jsonl"));
        assert!(
            shown.contains("jobs.jsonl:1: control_overrides: missing, and jobs.default_controls has no control with control_weight > 0"),
            "{shown}"
        );
    }

    #[test]
    fn a_bundle_base_spec_is_the_base_of_every_line_with_no_leak() {
        let dir = bundle(&[
            (
                "batch_spec.json",
                r#"{"negative_prompt": "blurry", "guidance": 6, "prompt": "ignored in batch mode",
                    "vis": {"control_weight": 0.3}, "depth": {"control_weight": 0.0, "input_control": "videos/depth.mp4"}}"#,
            ),
            (
                "jobs.jsonl",
                concat!(
                    r#"{"visual_input": "videos/color.mp4", "prompt": "one"}"#,
                    "\n",
                    r#"{"visual_input": "videos/color.mp4", "prompt": "two", "guidance": 2, "control_overrides": {"depth": {"control_weight": 0.6}, "vis": {"control_weight": 0}}}"#,
                    "\n",
                    r#"{"visual_input": "videos/color.mp4", "prompt": "three"}"#,
                    "\n",
                ),
            ),
        ]);
        let (report, jobs) = parse(dir.path(), &Rules::default());
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(jobs.len(), 3);
        assert_eq!(jobs[0].spec.control_set(), "vis");
        assert_eq!(jobs[1].spec.control_set(), "depth", "vis turned off, depth turned on");
        assert!(jobs[1].spec.controls[&Hint::Depth].input.as_ref().unwrap().ends_with("videos/depth.mp4"));
        assert_eq!(jobs[2].spec.control_set(), "vis", "line two's changes did not leak into line three");
        assert_eq!(jobs[0].spec.settings.guidance, Some(6.0));
        assert_eq!(jobs[1].spec.settings.guidance, Some(2.0), "the line's own setting wins");
        assert_eq!(jobs[2].spec.negative_prompt.as_deref(), Some("blurry"));

        // An override of a control the base lacks: NVIDIA would drop it silently; here it is
        // an error naming the line, the key and the base spec.
        std::fs::write(
            dir.path().join("jobs.jsonl"),
            "{\"visual_input\": \"videos/color.mp4\", \"prompt\": \"x\", \"control_overrides\": {\"seg\": {\"control_weight\": 0.5}}}\n",
        )
        .unwrap();
        let (report, _) = parse(dir.path(), &Rules::default());
        let shown = report.render(std::path::Path::new("jobs.jsonl"));
        assert!(shown.contains("jobs.jsonl:1: control_overrides.seg: `seg` is not in the base spec batch_spec.json"), "{shown}");
        // A bad base spec is reported as such.
        std::fs::write(dir.path().join("batch_spec.json"), r#"{"vis": {"control_weight": 2}}"#).unwrap();
        let (report, _) = parse(dir.path(), &Rules::default());
        let shown = report.render(std::path::Path::new("jobs.jsonl"));
        assert!(shown.contains("base spec batch_spec.json: expected a number in [0, 1], got 2"), "{shown}");
    }

    #[test]
    fn the_configured_model_is_checked_at_intake_with_line_and_key() {
        let dir = bundle(&[(
            "jobs.jsonl",
            concat!(
                r#"{"visual_input": "videos/color.mp4", "prompt": "a", "guidance": 5.5, "control_overrides": {"edge": {"control_weight": 0.5}}}"#,
                "\n",
                r#"{"visual_input": "videos/color.mp4", "prompt": "b", "control_overrides": {"edge": {"control_weight": 0.5}}, "guidance": 3}"#,
                "\n"
            ),
        )]);
        let rules = Rules { model: Model::Transfer2_5, ..Rules::default() };
        let (report, jobs) = parse(dir.path(), &rules);
        assert_eq!(jobs.len(), 1, "the good line still validates");
        let shown = report.render(std::path::Path::new("jobs.jsonl"));
        assert!(shown.contains("jobs.jsonl:1: guidance: Transfer2.5 takes a whole number from 0 to 7"), "{shown}");
    }
}
