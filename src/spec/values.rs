//! The values every job style shares (JSONL lines, Transfer1 and Transfer2.5 run specs,
//! a bundle's base spec): prompts, paths, control overrides, generation settings and our
//! extension keys, each read into a typed value or a problem that says what was expected.

use super::fields::{self, check_keys, describe, Key, Problems};
use super::{Control, Hint, PathPolicy, Settings, SimFailure, SimFault};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

const OVERRIDE_KEYS: &[&str] = &["control_weight", "input_control", "input_control_prompt"];
/// The longest prompt (DESIGN.md section 4).
pub(crate) const MAX_PROMPT_CHARS: usize = 10_000;

pub(crate) fn required_prompt(obj: &Map<String, Value>, key: &str, p: &mut Problems) -> Option<String> {
    match fields::get(obj, key) {
        None => {
            p.push(key, format!("missing; expected the text prompt (1 to {MAX_PROMPT_CHARS} characters)"));
            None
        }
        Some(v) => fields::text(v, key, MAX_PROMPT_CHARS, false, p),
    }
}

/// A required path key: checked and resolved, or a problem saying what was expected.
pub(crate) fn required_path(
    obj: &Map<String, Value>,
    key: &'static str,
    what: &str,
    policy: &mut PathPolicy,
    p: &mut Problems,
) -> Option<std::path::PathBuf> {
    match fields::get(obj, key) {
        None => {
            p.push(key, format!("missing; expected {what}"));
            None
        }
        Some(v) => path_value(v, key, policy, p),
    }
}

pub(crate) fn path_value<'k>(v: &Value, key: impl Into<Key<'k>>, policy: &mut PathPolicy, p: &mut Problems) -> Option<std::path::PathBuf> {
    let key = key.into();
    match v {
        Value::String(s) => match policy.resolve(s) {
            Ok(path) => Some(path),
            Err(msg) => {
                p.push(key, msg);
                None
            }
        },
        other => {
            p.push(key, format!("expected a file path, got {}", describe(other)));
            None
        }
    }
}

/// `control_overrides`: hint -> `{control_weight, input_control}`. Weight-0 controls are
/// checked, then left out: off means not sent to the model.
pub(crate) fn parse_overrides(v: &Value, policy: &mut PathPolicy, p: &mut Problems) -> Option<BTreeMap<Hint, Control>> {
    let obj = fields::object(v, "control_overrides", p)?;
    let before = p.list.len();
    let mut controls = BTreeMap::new();
    let names: Vec<&str> = Hint::ALL.iter().map(|h| h.as_str()).collect();
    check_keys(obj, &names, Key::from("control_overrides"), p);
    for (key, spec) in obj {
        let Some(hint) = Hint::parse(key) else { continue };
        let prefix = Key::from("control_overrides").then(key);
        let Some(spec) = fields::object(spec, prefix, p) else { continue };
        check_keys(spec, OVERRIDE_KEYS, prefix, p);
        let weight = match fields::get(spec, "control_weight") {
            None => {
                p.push(prefix.then("control_weight"), "missing; expected a number in [0, 1] (0 turns the control off)");
                None
            }
            Some(w) => fields::number(w, prefix.then("control_weight"), 0.0, 1.0, false, p),
        };
        let input = match fields::get(spec, "input_control") {
            None | Some(Value::Null) => {
                if !hint.can_generate() {
                    p.push(
                        prefix.then("input_control"),
                        format!("missing; `{hint}` cannot be generated from the input video, expected the path of its control video"),
                    );
                }
                None
            }
            Some(v) => path_value(v, prefix.then("input_control"), policy, p),
        };
        let control_prompt = match fields::get(spec, "input_control_prompt") {
            None => None,
            Some(_) if hint != Hint::Seg => {
                p.push(prefix.then("input_control_prompt"), "only the `seg` control takes a prompt");
                None
            }
            Some(v) => fields::text(v, prefix.then("input_control_prompt"), MAX_PROMPT_CHARS, false, p),
        };
        if let Some(weight) = weight {
            if weight > 0.0 {
                controls.insert(hint, Control { weight, input, control_prompt, ..Control::generated(weight) });
            }
        }
    }
    if p.list.len() == before && controls.is_empty() {
        p.push("control_overrides", "expected at least one control with control_weight > 0");
    }
    Some(controls)
}

/// The generation settings common to the JSONL and Transfer1 styles.
pub(crate) fn read_settings(obj: &Map<String, Value>, prefix: &str, p: &mut Problems) -> Settings {
    let k = |key: &'static str| Key::from(prefix).then(key);
    Settings {
        seed: fields::get(obj, "seed").and_then(|v| fields::integer(v, k("seed"), 0, u32::MAX as i64, p)).map(|x| x as u64),
        num_steps: fields::get(obj, "num_steps").and_then(|v| fields::integer(v, k("num_steps"), 1, 1000, p)).map(|x| x as u32),
        guidance: fields::get(obj, "guidance").and_then(|v| fields::number(v, k("guidance"), 0.0, 20.0, false, p)),
        sigma_max: fields::get(obj, "sigma_max").and_then(|v| fields::number(v, k("sigma_max"), 0.0, 1000.0, true, p)),
        fps: fields::get(obj, "fps").and_then(|v| fields::integer(v, k("fps"), 1, 240, p)).map(|x| x as u32),
        blur_strength: fields::get(obj, "blur_strength").and_then(|v| fields::level(v, k("blur_strength"), p)),
        canny_threshold: fields::get(obj, "canny_threshold").and_then(|v| fields::level(v, k("canny_threshold"), p)),
        ..Settings::default()
    }
}

/// Our extension keys, shared by every style.
pub(crate) struct Extensions {
    pub name: Option<String>,
    pub priority: i32,
    pub upscale_weight: Option<f64>,
    pub sim: Option<SimFault>,
}

pub(crate) fn read_extensions(obj: &Map<String, Value>, p: &mut Problems) -> Extensions {
    Extensions {
        name: fields::get(obj, "name").and_then(|v| fields::name(v, "name", p)),
        priority: fields::get(obj, "priority").and_then(|v| fields::integer(v, "priority", -100, 100, p)).unwrap_or(0) as i32,
        upscale_weight: fields::get(obj, "upscale_weight").and_then(|v| fields::number(v, "upscale_weight", 0.0, 1.0, true, p)),
        sim: fields::get(obj, "sim").and_then(|v| parse_sim(v, p)),
    }
}

fn parse_sim(v: &Value, p: &mut Problems) -> Option<SimFault> {
    let obj = fields::object(v, "sim", p)?;
    check_keys(obj, &["fail", "attempts", "seconds", "cured_by"], Key::from("sim"), p);
    let fail = fields::get(obj, "fail").and_then(|v| match v.as_str() {
        Some("error") => Some(SimFailure::Error),
        Some("crash") => Some(SimFailure::Crash),
        Some("hang") => Some(SimFailure::Hang),
        Some("oom") => Some(SimFailure::Oom),
        _ => {
            p.push("sim.fail", format!("expected one of error, crash, hang, oom, got {}", describe(v)));
            None
        }
    });
    Some(SimFault {
        fail,
        attempts: fields::get(obj, "attempts").and_then(|v| fields::integer(v, "sim.attempts", 0, 1000, p)).map(|x| x as u32),
        seconds: fields::get(obj, "seconds").and_then(|v| fields::number(v, "sim.seconds", 0.0, 86_400.0, false, p)),
        cured_by: fields::get(obj, "cured_by").and_then(|v| parse_cures(v, p)),
    })
}

/// What the sim backend offers to save memory (worker/cosmos_worker/backends/sim.py).
const SIM_CURES: &[&str] =
    &["offload_guardrail_models", "offload_text_encoder_model", "offload_tokenizer", "offload_network", "num_video_frames_per_chunk"];

fn parse_cures(v: &Value, p: &mut Problems) -> Option<Vec<String>> {
    let expected = "expected a list of offload_guardrail_models, offload_text_encoder_model, offload_tokenizer, \
                    offload_network, num_video_frames_per_chunk or gpus:N (N from 1 to 64)";
    let Some(items) = v.as_array() else {
        p.push("sim.cured_by", format!("{expected}, got {}", describe(v)));
        return None;
    };
    let mut out = Vec::new();
    for item in items {
        let ok = item.as_str().filter(|s| {
            SIM_CURES.contains(s) || s.strip_prefix("gpus:").and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| (1..=64).contains(&n))
        });
        match ok {
            Some(s) => out.push(s.to_string()),
            None => p.push("sim.cured_by", format!("{expected}, got {}", describe(item))),
        }
    }
    Some(out)
}
