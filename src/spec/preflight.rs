//! The video preflight of a run (issue 13): every video a run names is probed
//! ([`crate::probe`]), once per distinct file however many lines name it, and a control
//! video must match its input in frame count and size, as NVIDIA's models need. The input's
//! facts go into [`RunSpec::video`]. Intake, `cosmos validate` and `cosmos submit` all get
//! this through [`super::parse_job_file`], so they judge a video alike.
//!
//! Spatial masks (`mask_path`, Transfer2.5) are not probed: NVIDIA's code resizes them.

use super::fields::Problems;
use super::{Hint, Problem, RunSpec, SpecStyle, VideoFacts};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// How many distinct videos one check remembers (as [`super::PathPolicy`] caps its paths).
const CACHE_MAX: usize = 100_000;

/// Probes videos, each resolved path once.
#[derive(Default)]
pub struct VideoCheck {
    cache: HashMap<PathBuf, Result<VideoFacts, String>>,
}

impl VideoCheck {
    pub fn new() -> VideoCheck {
        VideoCheck::default()
    }

    /// The facts of the video at `path`, or why it cannot be used.
    pub fn facts(&mut self, path: &Path) -> Result<VideoFacts, String> {
        if let Some(hit) = self.cache.get(path) {
            return hit.clone();
        }
        let got = crate::probe::probe(path).map_err(|e| e.to_string());
        if self.cache.len() < CACHE_MAX {
            self.cache.insert(path.to_path_buf(), got.clone());
        }
        got
    }

    /// Checks every video of `spec` and fills `spec.video`; the problems, keyed as the
    /// run's own file style names them, on `line`.
    pub fn check(&mut self, spec: &mut RunSpec, line: Option<u64>) -> Vec<Problem> {
        let mut p = Problems::new(line);
        self.check_into(spec, &mut p);
        p.list
    }

    pub(crate) fn check_into(&mut self, spec: &mut RunSpec, p: &mut Problems) {
        let input = self.facts(&spec.visual_input);
        match &input {
            Ok(facts) => spec.video = Some(facts.clone()),
            Err(message) => p.push(input_key(spec.style), message.clone()),
        }
        for (hint, control) in &spec.controls {
            let Some(path) = &control.input else { continue };
            if *path == spec.visual_input {
                continue;
            }
            match (self.facts(path), &input) {
                (Err(message), _) => p.push(control_key(spec.style, *hint), message),
                (Ok(c), Ok(i)) if (c.frames, c.width, c.height) != (i.frames, i.width, i.height) => p.push(
                    control_key(spec.style, *hint),
                    format!(
                        "{} has {} frames of {}x{}; expected {} frames of {}x{} like the input video {} \
                         (NVIDIA's models need a control video aligned with its input)",
                        path.display(),
                        c.frames,
                        c.width,
                        c.height,
                        i.frames,
                        i.width,
                        i.height,
                        spec.visual_input.display()
                    ),
                ),
                _ => {}
            }
        }
    }
}

/// The key of the input video in each file style.
fn input_key(style: SpecStyle) -> &'static str {
    match style {
        SpecStyle::Jsonl | SpecStyle::Cli => "visual_input",
        SpecStyle::Transfer1 => "input_video_path",
        SpecStyle::Transfer2_5 => "video_path",
    }
}

/// The key of a control's video in each file style.
fn control_key(style: SpecStyle, hint: Hint) -> String {
    match style {
        SpecStyle::Jsonl | SpecStyle::Cli => format!("control_overrides.{hint}.input_control"),
        SpecStyle::Transfer1 => format!("{hint}.input_control"),
        SpecStyle::Transfer2_5 => format!("{hint}.control_path"),
    }
}
