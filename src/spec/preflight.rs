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
use std::ffi::OsString;
use std::path::Path;

/// How many distinct videos one check remembers (as [`super::PathPolicy`] caps its paths).
const CACHE_MAX: usize = 100_000;

/// Probes videos, each resolved path once.
#[derive(Default)]
pub struct VideoCheck {
    /// Keyed by the path's bytes: hashed in one pass, where a `Path` key hashes component by
    /// component (a lookup per video of every line). Paths here were canonicalized already.
    cache: HashMap<OsString, Result<VideoFacts, String>>,
}

impl VideoCheck {
    pub fn new() -> VideoCheck {
        VideoCheck::default()
    }

    /// The facts of the video at `path`, or why it cannot be used.
    pub fn facts(&mut self, path: &Path) -> Result<VideoFacts, String> {
        if let Some(hit) = self.cache.get(path.as_os_str()) {
            return hit.clone();
        }
        let got = crate::probe::probe(path).map_err(|e| e.to_string());
        if self.cache.len() < CACHE_MAX {
            self.cache.insert(path.as_os_str().to_os_string(), got.clone());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Control, Settings};
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn example(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/videos").join(name)
    }

    fn spec(style: SpecStyle, input: PathBuf, depth: PathBuf) -> RunSpec {
        let mut controls = BTreeMap::new();
        controls.insert(Hint::Depth, Control::from_file(0.5, depth));
        controls.insert(Hint::Edge, Control::generated(0.5));
        RunSpec {
            video: None,
            style,
            name: None,
            prompt: "p".into(),
            negative_prompt: None,
            visual_input: input,
            controls,
            settings: Settings::default(),
            priority: 0,
            upscale_weight: None,
            sim: None,
        }
    }

    #[test]
    fn an_aligned_run_gets_its_input_facts() {
        let mut check = VideoCheck::new();
        let mut s = spec(SpecStyle::Jsonl, example("city1/color.mp4"), example("city1/depth.mp4"));
        assert!(check.check(&mut s, Some(1)).is_empty());
        let facts = s.video.expect("facts filled in");
        assert_eq!((facts.frames, facts.width, facts.height), (16, 64, 64));
    }

    #[test]
    fn a_bad_video_is_reported_under_the_key_its_file_style_uses() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.mp4");
        std::fs::write(&bad, b"not a video").unwrap();
        for (style, input_key, depth_key) in [
            (SpecStyle::Jsonl, "visual_input", "control_overrides.depth.input_control"),
            (SpecStyle::Transfer1, "input_video_path", "depth.input_control"),
            (SpecStyle::Transfer2_5, "video_path", "depth.control_path"),
        ] {
            let mut check = VideoCheck::new();
            let mut s = spec(style, example("city1/color.mp4"), bad.clone());
            let got = check.check(&mut s, Some(3));
            assert_eq!(got.len(), 1, "{got:?}");
            assert_eq!((got[0].line, got[0].key.as_deref()), (Some(3), Some(depth_key)));
            assert!(got[0].message.contains("bad.mp4 is not an MP4"), "{}", got[0].message);
            let mut s = spec(style, bad.clone(), example("city1/depth.mp4"));
            let got = check.check(&mut s, None);
            assert_eq!(got.iter().map(|p| p.key.as_deref()).collect::<Vec<_>>(), [Some(input_key)], "{got:?}");
            assert!(s.video.is_none());
        }
    }

    #[test]
    fn each_distinct_file_is_probed_once() {
        let dir = tempfile::tempdir().unwrap();
        let video = dir.path().join("v.mp4");
        std::fs::copy(example("street1/color.mp4"), &video).unwrap();
        let mut check = VideoCheck::new();
        let first = check.facts(&video).unwrap();
        // Spoiled after the first look: the later lines of the same file reuse what it found.
        std::fs::write(&video, b"spoiled").unwrap();
        assert_eq!(check.facts(&video).unwrap(), first);
        assert!(VideoCheck::new().facts(&video).is_err(), "a new check probes again");
    }
}
