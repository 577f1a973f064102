//! Run-spec files (`.json`, one run): the Transfer1 `--controlnet_specs` style and the
//! Transfer2.5 `InferenceArguments` style, told apart by their keys. A `.json` holding one
//! JSONL-style job (`visual_input`) is accepted too.

use super::fields::{self, check_keys, describe, Key, Problems};
use super::jsonl;
use super::values::{path_value, read_extensions, read_settings, required_path, required_prompt, MAX_PROMPT_CHARS};
use super::{Control, Hint, Job, PathPolicy, Problem, Report, Rules, RunSpec, SpecStyle};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::io::Read;

const T1_SETTINGS: &[&str] = &[
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
const EXTENSION_KEYS: &[&str] = &["name", "priority", "upscale_weight", "sim"];
const T1_HINT_KEYS: &[&str] = &["control_weight", "input_control", "input_control_prompt"];

const T25_KEYS: &[&str] = &[
    "name",
    "prompt",
    "prompt_path",
    "negative_prompt",
    "video_path",
    "seed",
    "guidance",
    "num_steps",
    "sigma_max",
    "resolution",
    "max_frames",
    "num_conditional_frames",
    "num_video_frames_per_chunk",
    "edge",
    "vis",
    "depth",
    "seg",
    "priority",
    "sim",
];
const T25_HINTS: [Hint; 4] = [Hint::Edge, Hint::Vis, Hint::Depth, Hint::Seg];

/// Validates a run-spec file read from `reader` (at most `limits.max_line_bytes`).
pub fn parse_run_spec_reader(reader: impl Read, policy: &mut PathPolicy, rules: &Rules, sink: &mut dyn FnMut(Job)) -> Report {
    let mut report = Report::default();
    let mut bytes = Vec::new();
    let cap = rules.limits.max_line_bytes as u64;
    if let Err(e) = reader.take(cap + 1).read_to_end(&mut bytes) {
        report.add(Problem { line: None, key: None, message: format!("cannot read the file: {e}") });
        return report;
    }
    if bytes.len() as u64 > cap {
        report.add(Problem { line: None, key: None, message: format!("the file is over the limit of {cap} bytes for a run spec") });
        return report;
    }
    report.lines = 1;
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            report.add(Problem {
                line: Some(e.line() as u64),
                key: None,
                message: format!("invalid JSON at column {}: {}", e.column(), e.to_string().split(" at line ").next().unwrap_or("")),
            });
            return report;
        }
    };
    let mut p = Problems::new(None);
    let spec = match &value {
        Value::Object(obj) => parse_run_spec_object(obj, policy, rules, &mut p),
        other => {
            p.push_general(format!("expected a JSON object (one run spec), got {}", describe(other)));
            None
        }
    };
    for problem in p.list {
        report.add(problem);
    }
    if let Some(spec) = spec.filter(|_| report.is_ok()) {
        report.runs = 1;
        sink(Job { line: 1, spec });
    }
    report
}

/// Tells the style apart by its keys and parses accordingly.
pub(crate) fn parse_run_spec_object(obj: &Map<String, Value>, policy: &mut PathPolicy, rules: &Rules, p: &mut Problems) -> Option<RunSpec> {
    let t1 = obj.contains_key("input_video_path");
    let t25 = obj.contains_key("video_path")
        || obj.contains_key("prompt_path")
        || obj.values().any(|v| v.as_object().is_some_and(|h| h.contains_key("control_path")));
    let line_style = obj.contains_key("visual_input");
    let mut spec = match (t1, t25, line_style) {
        (true, false, false) => parse_transfer1(obj, policy, p),
        (false, true, false) => parse_transfer2_5(obj, policy, p),
        (false, false, true) => return jsonl::parse_line_object(obj, policy, SpecStyle::Jsonl, rules, p),
        (false, false, false) => {
            p.push_general(
                "cannot tell the run-spec style: expected `input_video_path` (Transfer1), `video_path` (Transfer2.5) or `visual_input` (a job line)",
            );
            None
        }
        _ => {
            p.push_general("mixes the keys of two styles: use `input_video_path` (Transfer1), `video_path` (Transfer2.5) or `visual_input` (a job line), not several");
            None
        }
    }?;
    rules.model.check(&spec, p);
    policy.preflight(&mut spec, p);
    Some(spec).filter(|_| p.is_empty())
}

/// NVIDIA Transfer1's `--controlnet_specs` file: settings at the top level, hint objects
/// beside them. A hint without `control_weight` gets NVIDIA's default, 0.5.
fn parse_transfer1(obj: &Map<String, Value>, policy: &mut PathPolicy, p: &mut Problems) -> Option<RunSpec> {
    let mut allowed: Vec<&str> = T1_SETTINGS.to_vec();
    allowed.extend_from_slice(EXTENSION_KEYS);
    allowed.extend(Hint::ALL.iter().map(|h| h.as_str()));
    check_keys(obj, &allowed, Key::from(""), p);
    let visual_input = required_path(obj, "input_video_path", "the path of the input video", policy, p);
    let prompt = required_prompt(obj, "prompt", p);
    let mut controls = BTreeMap::new();
    for hint in Hint::ALL {
        let Some(v) = obj.get(hint.as_str()) else { continue };
        let key = hint.as_str();
        let Some(h) = fields::object(v, key, p) else { continue };
        check_keys(h, T1_HINT_KEYS, Key::from(key), p);
        let weight = match h.get("control_weight") {
            None => Some(0.5),
            Some(w) => fields::number(w, Key::from(key).then("control_weight"), 0.0, 1.0, false, p),
        };
        let input = match h.get("input_control") {
            None | Some(Value::Null) if hint.can_generate() => None,
            None | Some(Value::Null) => {
                p.push(
                    Key::from(key).then("input_control"),
                    format!("missing; `{hint}` cannot be generated, expected the path of its control video"),
                );
                None
            }
            Some(v) => path_value(v, Key::from(key).then("input_control"), policy, p),
        };
        let control_prompt = match h.get("input_control_prompt") {
            None => None,
            Some(_) if hint != Hint::Seg => {
                p.push(Key::from(key).then("input_control_prompt"), "only the `seg` control takes a prompt");
                None
            }
            Some(v) => fields::text(v, Key::from(key).then("input_control_prompt"), MAX_PROMPT_CHARS, false, p),
        };
        if let Some(w) = weight.filter(|w| *w > 0.0) {
            controls.insert(hint, Control { input, control_prompt, ..Control::generated(w) });
        }
    }
    finish(obj, SpecStyle::Transfer1, visual_input, prompt, controls, read_settings(obj, "", p), p)
}

/// NVIDIA Transfer2.5's per-sample spec. `guidance` is an integer 0..7 there; a hint's
/// `control_weight` defaults to 1.0.
fn parse_transfer2_5(obj: &Map<String, Value>, policy: &mut PathPolicy, p: &mut Problems) -> Option<RunSpec> {
    check_keys(obj, T25_KEYS, Key::from(""), p);
    let visual_input = required_path(obj, "video_path", "the path of the input video", policy, p);
    let prompt = match (obj.get("prompt"), obj.get("prompt_path")) {
        (Some(_), Some(_)) => {
            p.push("prompt_path", "give `prompt` or `prompt_path`, not both");
            None
        }
        (None, Some(v)) => path_value(v, "prompt_path", policy, p).and_then(|path| read_prompt_file(&path, p)),
        _ => required_prompt(obj, "prompt", p),
    };
    let mut settings = read_settings_2_5(obj, p);
    let mut controls = BTreeMap::new();
    for hint in T25_HINTS {
        let key = hint.as_str();
        let Some(v) = obj.get(key) else { continue };
        let Some(h) = fields::object(v, key, p) else { continue };
        let mut allowed = vec!["control_path", "control_weight", "mask_path", "mask_prompt"];
        match hint {
            Hint::Edge => allowed.push("preset_edge_threshold"),
            Hint::Vis => allowed.push("preset_blur_strength"),
            Hint::Seg => allowed.push("control_prompt"),
            _ => {}
        }
        check_keys(h, &allowed, Key::from(key), p);
        let weight = match h.get("control_weight") {
            None => Some(1.0),
            Some(w) => fields::number(w, Key::from(key).then("control_weight"), 0.0, 1.0, false, p),
        };
        let input = match h.get("control_path") {
            None | Some(Value::Null) => None,
            Some(v) => path_value(v, Key::from(key).then("control_path"), policy, p),
        };
        let mask_path = h.get("mask_path").and_then(|v| path_value(v, Key::from(key).then("mask_path"), policy, p));
        let mask_prompt =
            h.get("mask_prompt").and_then(|v| fields::text(v, Key::from(key).then("mask_prompt"), MAX_PROMPT_CHARS, false, p));
        let control_prompt =
            h.get("control_prompt").and_then(|v| fields::text(v, Key::from(key).then("control_prompt"), MAX_PROMPT_CHARS, false, p));
        if let Some(v) = h.get("preset_edge_threshold") {
            settings.canny_threshold = fields::level(v, Key::from(key).then("preset_edge_threshold"), p);
        }
        if let Some(v) = h.get("preset_blur_strength") {
            settings.blur_strength = fields::level(v, Key::from(key).then("preset_blur_strength"), p);
        }
        if let Some(w) = weight.filter(|w| *w > 0.0) {
            controls.insert(hint, Control { weight: w, input, mask_path, mask_prompt, control_prompt });
        }
    }
    finish(obj, SpecStyle::Transfer2_5, visual_input, prompt, controls, settings, p)
}

fn read_settings_2_5(obj: &Map<String, Value>, p: &mut Problems) -> super::Settings {
    let mut s = super::Settings {
        seed: obj.get("seed").and_then(|v| fields::integer(v, "seed", 0, u32::MAX as i64, p)).map(|x| x as u64),
        num_steps: obj.get("num_steps").and_then(|v| fields::integer(v, "num_steps", 1, 1000, p)).map(|x| x as u32),
        guidance: obj.get("guidance").and_then(|v| fields::integer(v, "guidance", 0, 7, p)).map(|x| x as f64),
        sigma_max: obj.get("sigma_max").and_then(|v| sigma_max_2_5(v, p)),
        ..Default::default()
    };
    s.resolution = obj.get("resolution").and_then(|v| match v {
        Value::String(r) if ["480", "720", "1080"].contains(&r.as_str()) => Some(r.clone()),
        Value::Number(n) if ["480", "720", "1080"].contains(&n.to_string().as_str()) => Some(n.to_string()),
        other => {
            p.push("resolution", format!("expected \"480\", \"720\" or \"1080\", got {}", describe(other)));
            None
        }
    });
    s.max_frames = obj.get("max_frames").and_then(|v| fields::integer(v, "max_frames", 1, 100_000, p)).map(|x| x as u32);
    s.num_conditional_frames =
        obj.get("num_conditional_frames").and_then(|v| fields::integer(v, "num_conditional_frames", 0, 2, p)).map(|x| x as u32);
    s.num_video_frames_per_chunk = obj
        .get("num_video_frames_per_chunk")
        .and_then(|v| fields::integer(v, "num_video_frames_per_chunk", 1, 10_000, p))
        .map(|x| x as u32);
    s
}

/// Transfer2.5's `sigma_max` is a string holding a number (`InferenceArguments.sigma_max:
/// str | None`, turned into a float by `float()` at generation): `"80"` or `80` here, and a
/// string that is no number is refused now rather than on the GPU.
fn sigma_max_2_5(v: &Value, p: &mut Problems) -> Option<f64> {
    match v {
        Value::String(text) => match text.trim().parse::<f64>() {
            Ok(x) if x.is_finite() && x > 0.0 && x <= 1000.0 => Some(x),
            _ => {
                p.push("sigma_max", format!("expected a number in (0, 1000] (as a string, as Transfer2.5 writes it), got {text:?}"));
                None
            }
        },
        other => fields::number(other, "sigma_max", 0.0, 1000.0, true, p),
    }
}

fn read_prompt_file(path: &std::path::Path, p: &mut Problems) -> Option<String> {
    let mut text = String::new();
    let read = std::fs::File::open(path).and_then(|f| f.take(64 * 1024 + 1).read_to_string(&mut text));
    match read {
        Err(e) => {
            p.push("prompt_path", format!("cannot read {} as UTF-8 text: {e}", path.display()));
            None
        }
        Ok(_) => fields::text(&Value::String(text.trim_end().to_string()), "prompt_path", MAX_PROMPT_CHARS, false, p),
    }
}

fn finish(
    obj: &Map<String, Value>,
    style: SpecStyle,
    visual_input: Option<std::path::PathBuf>,
    prompt: Option<String>,
    controls: BTreeMap<Hint, Control>,
    settings: super::Settings,
    p: &mut Problems,
) -> Option<RunSpec> {
    let ext = read_extensions(obj, p);
    let negative_prompt = obj.get("negative_prompt").and_then(|v| fields::text(v, "negative_prompt", MAX_PROMPT_CHARS, true, p));
    if controls.is_empty() && p.is_empty() {
        p.push_general("expected at least one control (vis, edge, depth, seg, ...) with control_weight > 0");
    }
    let spec = RunSpec {
        video: None,
        style,
        name: ext.name,
        prompt: prompt?,
        negative_prompt,
        visual_input: visual_input?,
        controls,
        settings,
        priority: ext.priority,
        upscale_weight: ext.upscale_weight,
        sim: ext.sim,
    };
    Some(spec).filter(|_| p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(text: &str, dir: &Path) -> (Report, Option<RunSpec>) {
        let mut got = None;
        let mut policy = PathPolicy::new(dir, &[]);
        let report = parse_run_spec_reader(text.as_bytes(), &mut policy, &Rules::default(), &mut |j| got = Some(j.spec));
        (report, got)
    }

    fn videos() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in ["color.mp4", "depth.mp4", "hd.mp4", "prompt.txt"] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        std::fs::write(dir.path().join("prompt.txt"), "A rainy street\n").unwrap();
        dir
    }

    #[test]
    fn transfer1_spec_file() {
        let dir = videos();
        let (r, spec) = parse(
            r#"{"prompt": "p", "input_video_path": "color.mp4", "seed": 3, "sigma_max": 80,
                "vis": {"control_weight": 0.25}, "depth": {"input_control": "depth.mp4"}, "seg": {"control_weight": 0}}"#,
            dir.path(),
        );
        assert!(r.is_ok(), "{:?}", r.problems);
        let spec = spec.unwrap();
        assert_eq!(spec.style, SpecStyle::Transfer1);
        assert_eq!(spec.control_set(), "vis,depth");
        assert_eq!(spec.controls[&Hint::Depth].weight, 0.5, "NVIDIA's default weight");
        assert_eq!(spec.settings.sigma_max, Some(80.0));
    }

    #[test]
    fn transfer2_5_spec_file() {
        let dir = videos();
        let (r, spec) = parse(
            r#"{"name": "s1", "prompt_path": "prompt.txt", "video_path": "color.mp4", "guidance": 3, "resolution": "720",
                "edge": {"control_weight": 0.7, "preset_edge_threshold": "high"}, "depth": {"control_path": "depth.mp4"}}"#,
            dir.path(),
        );
        assert!(r.is_ok(), "{:?}", r.problems);
        let spec = spec.unwrap();
        assert_eq!(spec.style, SpecStyle::Transfer2_5);
        assert_eq!(spec.prompt, "A rainy street");
        assert_eq!(spec.controls[&Hint::Depth].weight, 1.0);
        assert_eq!(spec.settings.canny_threshold, Some(super::super::Level::High));
        assert_eq!(spec.settings.resolution.as_deref(), Some("720"));
    }

    #[test]
    fn bad_spec_files_explain_themselves() {
        let dir = videos();
        let (r, _) = parse(r#"{"prompt": "p", "input_video_path": "color.mp4", "video_path": "color.mp4"}"#, dir.path());
        assert!(r.render(Path::new("s.json")).contains("mixes the keys"));
        let (r, _) = parse(r#"{"prompt": "p", "video_path": "color.mp4", "guidance": 3.5, "edge": {"control_wieght": 1}}"#, dir.path());
        let shown = r.render(Path::new("s.json"));
        assert!(shown.contains("s.json: guidance: expected an integer in [0, 7], got 3.5"), "{shown}");
        assert!(shown.contains("s.json: edge.control_wieght: unknown key; did you mean `control_weight`?"), "{shown}");
        let (r, _) = parse(r#"{"prompt": "p", "input_video_path": "color.mp4", "hdmap": {"control_weight": 0.3}}"#, dir.path());
        assert!(r.render(Path::new("s.json")).contains("hdmap.input_control: missing"));
        let (r, _) = parse("{\"prompt\": \n", dir.path());
        assert!(r.render(Path::new("s.json")).contains("invalid JSON"));
    }

    #[test]
    fn transfer2_5_sigma_max_is_a_number_written_as_a_string_and_anything_else_is_refused() {
        let dir = videos();
        let spec =
            |sigma: &str| format!(r#"{{"name": "s", "prompt": "p", "video_path": "color.mp4", "sigma_max": {sigma}, "edge": {{}}}}"#);
        let (r, got) = parse(&spec("\"80\""), dir.path());
        assert!(r.is_ok(), "{:?}", r.problems);
        assert_eq!(got.map(|s| s.settings.sigma_max), Some(Some(80.0)));
        for bad in ["\"eighty\"", "\"\"", "\"-3\"", "\"NaN\"", "true"] {
            let (r, got) = parse(&spec(bad), dir.path());
            let shown = r.render(Path::new("s.json"));
            assert!(got.is_none() && shown.contains("s.json: sigma_max: expected"), "{bad}: {shown}");
        }
    }
}
