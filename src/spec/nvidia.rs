//! What NVIDIA's own tools accept, made from our runs:
//! - the per-run `spec.json` (a Transfer1 `--controlnet_specs` file for exactly one run);
//! - a batch: the `--batch_input_path` JSONL plus the base `--controlnet_specs` file.
//!
//! NVIDIA's batch mode deep-copies the base spec for every line and applies the line's
//! `control_overrides` only to hints the base already has, so the base fixes the control
//! set of the whole batch. The Python system put the first run's controls in the base and
//! so leaked them into runs that had switched them off. Here the base holds the union of
//! hints at weight 0 and every line sets every hint of the union, so each line's effective
//! controls are exactly its own. Settings NVIDIA cannot vary per line are reported.

use super::{Hint, RunSpec};
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::path::Path;

/// NVIDIA's default negative prompt. The same text is transfer.py's `--negative_prompt`
/// default and `default_negative_prompt` in transfer_pipeline.py (cosmos-transfer1), and
/// `DEFAULT_NEGATIVE_PROMPT` in config.py (cosmos-transfer2.5). A run that gives no negative
/// prompt gets it; an explicit `""` stays `""` (negative conditioning off).
pub const DEFAULT_NEGATIVE_PROMPT: &str = "The video captures a game playing, with bad crappy graphics and cartoonish frames. It represents a recording of old outdated games. The lighting looks very fake. The textures are very raw and basic. The geometries are very primitive. The images are very pixelated and of poor CG quality. There are many subtitles in the footage. Overall, the video is unrealistic at all.";

/// NVIDIA Transfer1's defaults (transfer.py's arguments, `TransferPipeline.generate`'s
/// keywords), used where a run leaves a setting unset.
pub struct Transfer1Defaults;

impl Transfer1Defaults {
    pub const SEED: u64 = 1;
    pub const NUM_STEPS: u32 = 35;
    pub const GUIDANCE: f64 = 5.0;
    pub const SIGMA_MAX: f64 = 70.0;
    /// transfer.py `--fps`; `TransferPipeline` fixes it at 24.
    pub const FPS: u32 = 24;
    pub const BLUR_STRENGTH: &'static str = "medium";
    pub const CANNY_THRESHOLD: &'static str = "medium";
}

/// NVIDIA Transfer2.5's defaults (config.py `InferenceArguments`, its `BlurConfig` and
/// `EdgeConfig` presets). `sigma_max` has none: unset, it is not sent.
pub struct Transfer25Defaults;

impl Transfer25Defaults {
    pub const SEED: u64 = 2025;
    pub const NUM_STEPS: u32 = 35;
    pub const GUIDANCE: u32 = 3;
    pub const RESOLUTION: &'static str = "720";
    pub const NUM_CONDITIONAL_FRAMES: u32 = 1;
    pub const NUM_VIDEO_FRAMES_PER_CHUNK: u32 = 93;
    pub const PRESET: &'static str = "medium";
}

/// The negative prompt a run sends: its own (even `""`), else NVIDIA's default text.
pub fn negative_prompt(spec: &RunSpec) -> &str {
    spec.negative_prompt.as_deref().unwrap_or(DEFAULT_NEGATIVE_PROMPT)
}

/// The settings of a run as NVIDIA Transfer1 would use them, defaults filled in, in the
/// order `transfer.py` lists them.
pub fn effective_settings(spec: &RunSpec) -> Vec<(&'static str, Value)> {
    let s = &spec.settings;
    vec![
        ("negative_prompt", json!(negative_prompt(spec))),
        ("seed", json!(s.seed.unwrap_or(Transfer1Defaults::SEED))),
        ("num_steps", json!(s.num_steps.unwrap_or(Transfer1Defaults::NUM_STEPS))),
        ("guidance", json!(s.guidance.unwrap_or(Transfer1Defaults::GUIDANCE))),
        ("sigma_max", json!(s.sigma_max.unwrap_or(Transfer1Defaults::SIGMA_MAX))),
        ("fps", json!(s.fps.unwrap_or(Transfer1Defaults::FPS))),
        ("blur_strength", json!(s.blur_strength.map_or(Transfer1Defaults::BLUR_STRENGTH, |l| l.as_str()))),
        ("canny_threshold", json!(s.canny_threshold.map_or(Transfer1Defaults::CANNY_THRESHOLD, |l| l.as_str()))),
    ]
}

/// The settings the configured model gets for a run, its own defaults filled in: what
/// `cosmos list runs --json` shows and the worker receives.
pub fn model_settings(spec: &RunSpec, model: super::Model) -> Vec<(&'static str, Value)> {
    match model {
        super::Model::Transfer2_5 => {
            let s = &spec.settings;
            let mut out = vec![
                ("negative_prompt", json!(negative_prompt(spec))),
                ("seed", json!(s.seed.unwrap_or(Transfer25Defaults::SEED))),
                ("num_steps", json!(s.num_steps.unwrap_or(Transfer25Defaults::NUM_STEPS))),
                // A whole number (checked at intake): Transfer2.5's guidance is an int.
                ("guidance", json!(s.guidance.map_or(Transfer25Defaults::GUIDANCE, |g| g as u32))),
                ("resolution", json!(s.resolution.as_deref().unwrap_or(Transfer25Defaults::RESOLUTION))),
                ("num_conditional_frames", json!(s.num_conditional_frames.unwrap_or(Transfer25Defaults::NUM_CONDITIONAL_FRAMES))),
                (
                    "num_video_frames_per_chunk",
                    json!(s.num_video_frames_per_chunk.unwrap_or(Transfer25Defaults::NUM_VIDEO_FRAMES_PER_CHUNK)),
                ),
            ];
            if let Some(sigma) = s.sigma_max {
                // `sigma_max: str | None` in InferenceArguments: a float there is an error.
                out.push(("sigma_max", json!(format_number(sigma))));
            }
            if let Some(m) = s.max_frames {
                out.push(("max_frames", json!(m)));
            }
            out
        }
        _ => effective_settings(spec),
    }
}

/// A number as short text: `80` for 80.0, `72.5` for 72.5.
fn format_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// One run as a Transfer2.5 `InferenceArguments` object, NVIDIA's own per-sample format
/// (what `examples/inference.py -i` reads): the sample is named `output`, so the model writes
/// `output.mp4`; each control carries its weight, video, masks and presets.
pub fn transfer2_5_spec(spec: &RunSpec) -> Value {
    let mut out = Map::new();
    out.insert("name".into(), json!("output"));
    out.insert("prompt".into(), json!(spec.prompt));
    out.insert("video_path".into(), json!(spec.visual_input));
    for (k, v) in model_settings(spec, super::Model::Transfer2_5) {
        out.insert(k.into(), v);
    }
    let preset = |l: Option<super::Level>| l.map_or(Transfer25Defaults::PRESET, |l| l.as_str());
    for hint in super::rules::TRANSFER2_5_HINTS {
        let Some(c) = spec.controls.get(&hint) else { continue };
        let mut h = Map::new();
        h.insert("control_weight".into(), json!(c.weight));
        if let Some(p) = &c.input {
            h.insert("control_path".into(), json!(p));
        }
        if let Some(p) = &c.mask_path {
            h.insert("mask_path".into(), json!(p));
        }
        if let Some(p) = &c.mask_prompt {
            h.insert("mask_prompt".into(), json!(p));
        }
        match hint {
            Hint::Edge => {
                h.insert("preset_edge_threshold".into(), json!(preset(spec.settings.canny_threshold)));
            }
            Hint::Vis => {
                h.insert("preset_blur_strength".into(), json!(preset(spec.settings.blur_strength)));
            }
            Hint::Seg => {
                if let Some(p) = &c.control_prompt {
                    h.insert("control_prompt".into(), json!(p));
                }
            }
            _ => {}
        }
        out.insert(hint.as_str().into(), Value::Object(h));
    }
    Value::Object(out)
}

fn hint_object(spec: &RunSpec, hint: Hint) -> Value {
    let mut h = Map::new();
    if let Some(c) = spec.controls.get(&hint) {
        h.insert("control_weight".into(), json!(c.weight));
        if let Some(input) = &c.input {
            h.insert("input_control".into(), json!(input));
        }
        if let Some(p) = &c.control_prompt {
            h.insert("input_control_prompt".into(), json!(p));
        }
    } else {
        h.insert("control_weight".into(), json!(0.0));
    }
    Value::Object(h)
}

/// One run as a Transfer1 `--controlnet_specs` file: prompt, input video, every setting
/// with defaults filled in, and exactly the run's own controls.
pub fn transfer1_spec(spec: &RunSpec) -> Value {
    let mut out = Map::new();
    out.insert("prompt".into(), json!(spec.prompt));
    out.insert("input_video_path".into(), json!(spec.visual_input));
    for (k, v) in effective_settings(spec) {
        out.insert(k.into(), v);
    }
    for &hint in spec.controls.keys() {
        out.insert(hint.as_str().into(), hint_object(spec, hint));
    }
    Value::Object(out)
}

/// A batch in NVIDIA's format.
#[derive(Debug, Clone)]
pub struct NvidiaBatch {
    /// One object per run, in order: `{visual_input, prompt, control_overrides}`.
    pub lines: Vec<Value>,
    /// The base `--controlnet_specs` file.
    pub base_spec: Value,
    /// Where NVIDIA's batch mode cannot honour what the runs ask, said plainly.
    pub notes: Vec<String>,
}

impl NvidiaBatch {
    /// The JSONL text: one compact object per line, each ending in a newline (a blank or
    /// multi-line entry would end NVIDIA's whole batch).
    pub fn jsonl(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            out.push_str(&line.to_string());
            out.push('\n');
        }
        out
    }

    pub fn base_spec_text(&self) -> String {
        let mut text = serde_json::to_string_pretty(&self.base_spec).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Writes `<name>.jsonl` and `batch_spec.json` into `dir`, each by temp file + rename.
    pub fn write_to(&self, dir: &Path, name: &str) -> std::io::Result<()> {
        crate::fsutil::write_atomic(&dir.join(format!("{name}.jsonl")), self.jsonl().as_bytes())?;
        crate::fsutil::write_atomic(&dir.join(crate::layout::run_files::BATCH_SPEC), self.base_spec_text().as_bytes())
    }
}

/// Builds NVIDIA's batch files for `runs` (id, spec), in the given order.
pub fn nvidia_batch(runs: &[(&str, &RunSpec)]) -> NvidiaBatch {
    let union: BTreeSet<Hint> = runs.iter().flat_map(|(_, s)| s.controls.keys().copied()).collect();
    let mut notes = Vec::new();

    let mut lines = Vec::with_capacity(runs.len());
    for (_, spec) in runs {
        let mut overrides = Map::new();
        for &hint in &union {
            overrides.insert(hint.as_str().into(), hint_object(spec, hint));
        }
        lines.push(json!({
            "visual_input": spec.visual_input,
            "prompt": spec.prompt,
            "control_overrides": Value::Object(overrides),
        }));
    }

    // The base: first run's settings (NVIDIA applies them to every line), every hint of
    // the union at weight 0 so that nothing reaches a line that did not ask for it.
    let mut base = Map::new();
    if let Some((_, first)) = runs.first() {
        for (k, v) in effective_settings(first) {
            base.insert(k.into(), v);
        }
    }
    for &hint in &union {
        base.insert(hint.as_str().into(), json!({"control_weight": 0.0}));
    }

    if let Some((first_id, first)) = runs.first() {
        let first_settings = effective_settings(first);
        for (i, (key, first_value)) in first_settings.iter().enumerate() {
            let differing: Vec<String> = runs
                .iter()
                .filter_map(|(id, s)| {
                    let v = &effective_settings(s)[i].1;
                    (v != first_value).then(|| format!("{id} asks {v}"))
                })
                .collect();
            if !differing.is_empty() {
                notes.push(format!(
                    "{key} differs between runs: NVIDIA's batch mode uses {first_value} (from {first_id}) for every line; {}",
                    differing.join(", ")
                ));
            }
        }
        let sets: BTreeSet<String> = runs.iter().map(|(_, s)| s.control_set()).collect();
        if sets.len() > 1 {
            let per_run: Vec<String> = runs.iter().map(|(id, s)| format!("{id}: {}", s.control_set())).collect();
            notes.push(format!(
                "control sets differ ({}): NVIDIA's batch mode loads the union {{{}}} for every line; each line sets the controls it does not use to weight 0, so none leaks in, but the model still computes them",
                per_run.join("; "),
                super::control_set_key(union.iter().copied())
            ));
        }
        for &hint in union.iter().filter(|h| !h.can_generate()) {
            let without: Vec<&str> = runs.iter().filter(|(_, s)| !s.controls.contains_key(&hint)).map(|(id, _)| *id).collect();
            if !without.is_empty() {
                notes.push(format!(
                    "`{hint}` needs a control video on every line in NVIDIA's batch mode, but {} has none; run those separately",
                    without.join(", ")
                ));
            }
        }
        if !notes.is_empty() {
            notes.push("cosmosd runs each run with its own settings and controls; these notes matter only when the files are given to NVIDIA's transfer.py".into());
        }
    }
    NvidiaBatch { lines, base_spec: Value::Object(base), notes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Control, Settings, SpecStyle};
    use std::collections::BTreeMap;

    fn run(controls: &[(Hint, f64, Option<&str>)], seed: Option<u64>) -> RunSpec {
        let mut map = BTreeMap::new();
        for (h, w, input) in controls {
            map.insert(
                *h,
                match input {
                    Some(p) => Control::from_file(*w, p.into()),
                    None => Control::generated(*w),
                },
            );
        }
        RunSpec {
            video: None,
            style: SpecStyle::Cli,
            name: None,
            prompt: "p".into(),
            negative_prompt: None,
            visual_input: "/v/color.mp4".into(),
            controls: map,
            settings: Settings { seed, ..Default::default() },
            priority: 0,
            upscale_weight: None,
            sim: None,
        }
    }

    /// NVIDIA's merge, as `transfer.py` does it: deep-copy the base, update the hints it has.
    fn nvidia_effective(base: &Value, line: &Value) -> BTreeMap<String, Value> {
        let mut spec = base.as_object().unwrap().clone();
        for (hint, ov) in line["control_overrides"].as_object().unwrap() {
            if let Some(Value::Object(b)) = spec.get_mut(hint) {
                for (k, v) in ov.as_object().unwrap() {
                    b.insert(k.clone(), v.clone());
                }
            }
        }
        spec.into_iter().filter(|(_, v)| v.is_object()).collect()
    }

    #[test]
    fn no_control_leaks_between_lines() {
        let a = run(&[(Hint::Vis, 0.3, None), (Hint::Depth, 0.2, Some("/v/depth.mp4"))], None);
        let b = run(&[(Hint::Vis, 0.4, None), (Hint::Edge, 0.6, None)], None);
        let batch = nvidia_batch(&[("rs_a", &a), ("rs_b", &b)]);
        let eff_b = nvidia_effective(&batch.base_spec, &batch.lines[1]);
        assert_eq!(eff_b["depth"]["control_weight"], json!(0.0), "run b switched depth off: {eff_b:?}");
        assert!(eff_b["depth"].get("input_control").is_none(), "a's depth video must not reach b");
        assert_eq!(eff_b["edge"]["control_weight"], json!(0.6));
        let eff_a = nvidia_effective(&batch.base_spec, &batch.lines[0]);
        assert_eq!(eff_a["depth"]["input_control"], json!("/v/depth.mp4"));
        assert_eq!(eff_a["edge"]["control_weight"], json!(0.0));
        assert!(batch.notes.iter().any(|n| n.starts_with("control sets differ")), "{:?}", batch.notes);
    }

    #[test]
    fn differing_settings_are_reported_not_hidden() {
        let a = run(&[(Hint::Vis, 0.5, None)], Some(7));
        let b = run(&[(Hint::Vis, 0.5, None)], Some(9));
        let batch = nvidia_batch(&[("rs_a", &a), ("rs_b", &b)]);
        assert_eq!(batch.base_spec["seed"], json!(7));
        assert!(batch.notes[0].contains("seed differs") && batch.notes[0].contains("rs_b asks 9"), "{:?}", batch.notes);
        let same = nvidia_batch(&[("rs_a", &a), ("rs_c", &a)]);
        assert!(same.notes.is_empty(), "{:?}", same.notes);
    }

    #[test]
    fn jsonl_is_one_object_per_line() {
        let a = run(&[(Hint::Vis, 0.5, None)], None);
        let batch = nvidia_batch(&[("rs_a", &a), ("rs_b", &a)]);
        let text = batch.jsonl();
        assert_eq!(text.lines().count(), 2);
        assert!(text.ends_with('\n'));
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(v.as_object().unwrap().keys().collect::<Vec<_>>(), vec!["visual_input", "prompt", "control_overrides"]);
        }
    }

    #[test]
    fn defaults_are_the_models_own_and_an_explicit_empty_negative_prompt_stays() {
        let mut a = run(&[(Hint::Edge, 0.5, None), (Hint::Vis, 0.3, None)], None);
        let t1 = transfer1_spec(&a);
        assert_eq!(t1["negative_prompt"], json!(DEFAULT_NEGATIVE_PROMPT), "unset: NVIDIA's text, not \"\"");
        assert_eq!((t1["seed"].clone(), t1["guidance"].clone(), t1["sigma_max"].clone()), (json!(1), json!(5.0), json!(70.0)));
        let t25 = transfer2_5_spec(&a);
        assert_eq!((t25["seed"].clone(), t25["guidance"].clone()), (json!(2025), json!(3)), "Transfer2.5's own defaults");
        assert!(t25.get("sigma_max").is_none(), "no default sigma_max in Transfer2.5");
        assert_eq!(t25["edge"]["preset_edge_threshold"], json!("medium"));
        assert_eq!(t25["vis"]["preset_blur_strength"], json!("medium"));
        a.negative_prompt = Some(String::new());
        a.settings.sigma_max = Some(80.0);
        a.settings.guidance = Some(6.0);
        a.settings.canny_threshold = Some(super::super::Level::High);
        let t25 = transfer2_5_spec(&a);
        assert_eq!(t25["negative_prompt"], json!(""));
        assert_eq!(t25["sigma_max"], json!("80"), "a string, as InferenceArguments wants");
        assert_eq!(t25["guidance"], json!(6));
        assert_eq!(t25["edge"]["preset_edge_threshold"], json!("high"));
        assert_eq!(transfer1_spec(&a)["negative_prompt"], json!(""));
    }

    #[test]
    fn per_run_spec_has_only_the_runs_controls() {
        let a = run(&[(Hint::Edge, 0.5, None)], None);
        let spec = transfer1_spec(&a);
        assert!(spec.get("edge").is_some());
        assert!(spec.get("vis").is_none());
        assert_eq!(spec["num_steps"], json!(35));
    }
}
