//! JSONL job files: one job per line, NVIDIA's batch keys plus our extension keys.
//! Read line by line with a cap on line length, so memory stays bounded whatever the file.

use super::fields::{self, check_keys, describe, Key, Problems};
use super::values::{read_extensions, read_settings, required_path, required_prompt, MAX_PROMPT_CHARS};
use super::{Job, PathPolicy, Problem, Report, Rules, RunSpec, SpecStyle};
use serde_json::{Map, Value};
use std::collections::hash_map::{Entry, RandomState};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io::BufRead;

/// The keys of a JSONL job line (DESIGN.md section 4).
pub(crate) const LINE_KEYS: &[&str] = &[
    "visual_input",
    "prompt",
    "control_overrides",
    "name",
    "negative_prompt",
    "seed",
    "num_steps",
    "guidance",
    "sigma_max",
    "fps",
    "blur_strength",
    "canny_threshold",
    "priority",
    "upscale_weight",
    "sim",
];

enum LineRead {
    Eof,
    /// A whole line is in the buffer (without its `\n`).
    Line {
        newline: bool,
    },
    /// The line was longer than the cap; it was skipped up to its end.
    TooLong {
        bytes: u64,
    },
}

/// Reads one line into `buf`, holding at most `max` bytes of it.
fn read_capped_line(r: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> std::io::Result<LineRead> {
    buf.clear();
    let mut seen: u64 = 0;
    let mut too_long = false;
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(match (seen, too_long) {
                (0, _) => LineRead::Eof,
                (_, true) => LineRead::TooLong { bytes: seen },
                (_, false) => LineRead::Line { newline: false },
            });
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        seen += take as u64;
        if !too_long {
            if buf.len() + take > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(&chunk[..take]);
            }
        }
        r.consume(if done { take + 1 } else { take });
        if done {
            return Ok(if too_long { LineRead::TooLong { bytes: seen } } else { LineRead::Line { newline: true } });
        }
    }
}

/// Validates a JSONL job stream, handing each good job to `sink` as it goes. Every bad line
/// is reported; blank lines are skipped.
pub fn parse_jsonl(mut reader: impl BufRead, policy: &mut PathPolicy, rules: &Rules, sink: &mut dyn FnMut(Job)) -> Report {
    let limits = &rules.limits;
    let mut report = Report::default();
    let mut buf = Vec::with_capacity(4096);
    // Names seen so far, by a 64-bit hash: a million names cost 16 MB, not the names
    // themselves. Two different names sharing a hash (odds about 1 in 10^7 for a million
    // names) would be reported as a duplicate; nothing is ever accepted wrongly.
    // The names are hashed once, with keys drawn for this file; the map's own hasher then
    // passes that hash through rather than hashing it again.
    let name_keys = RandomState::new();
    let mut names: HashMap<u64, u64, HashIsKey> = HashMap::default();
    let mut line_no: u64 = 0;
    loop {
        let read = match read_capped_line(&mut reader, &mut buf, limits.max_line_bytes) {
            Ok(r) => r,
            Err(e) => {
                report.add(Problem { line: Some(line_no + 1), key: None, message: format!("cannot read the file: {e}") });
                break;
            }
        };
        let newline = match read {
            LineRead::Eof => break,
            LineRead::TooLong { bytes } => {
                line_no += 1;
                report.lines += 1;
                report.add(Problem {
                    line: Some(line_no),
                    key: None,
                    message: format!("line is {bytes} bytes, over the limit of {} bytes; each line must be one job", limits.max_line_bytes),
                });
                continue;
            }
            LineRead::Line { newline } => newline,
        };
        line_no += 1;
        let mut bytes = &buf[..];
        if line_no == 1 {
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        }
        if bytes.last() == Some(&b'\r') {
            bytes = &bytes[..bytes.len() - 1];
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        report.lines += 1;
        let mut p = Problems::new(Some(line_no));
        match serde_json::from_slice::<Value>(bytes) {
            Err(e) if !newline && e.is_eof() => {
                report.incomplete_last_line = true;
                p.push_general("the last line ends without a newline and is not complete JSON (is the file still being written?)");
            }
            Err(e) => p.push_general(format!("invalid JSON: {}", json_error_text(&e))),
            Ok(Value::Object(obj)) => {
                if let Some(spec) = parse_line_object(&obj, policy, SpecStyle::Jsonl, rules, &mut p) {
                    if let Some(name) = &spec.name {
                        match names.entry(name_keys.hash_one(name)) {
                            Entry::Occupied(first) => p.push(
                                "name",
                                format!("{name:?} is already the name of line {}; names must be unique in a file", first.get()),
                            ),
                            Entry::Vacant(slot) => {
                                slot.insert(line_no);
                            }
                        }
                    }
                    if p.is_empty() {
                        report.runs += 1;
                        sink(Job { line: line_no, spec });
                    }
                }
            }
            Ok(other) => p.push_general(format!("expected a JSON object (one job per line), got {}", describe(&other))),
        }
        for problem in p.list {
            report.add(problem);
        }
    }
    if report.lines == 0 && report.is_ok() {
        report.add(Problem { line: None, key: None, message: "the file holds no jobs (every line is blank)".into() });
    }
    report
}

/// The hasher of a map whose `u64` keys are hashes already (keyed: not chosen by the file).
#[derive(Default, Clone, Copy)]
struct HashIsKey;

impl BuildHasher for HashIsKey {
    type Hasher = PassThrough;
    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here (`write_u64`); anything else is folded in.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// serde_json's message without its "at line 1 column N" tail, plus the column.
fn json_error_text(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let msg = match full.rfind(" at line ") {
        Some(i) => &full[..i],
        None => &full,
    };
    format!("{msg} (column {})", e.column())
}

/// Validates one job object in the JSONL style (also accepted as a `.json` file). A line
/// without `control_overrides` gets the base's controls (see [`super::rules::Base`]); the
/// result is checked against what the configured model can run.
pub(crate) fn parse_line_object(
    obj: &Map<String, Value>,
    policy: &mut PathPolicy,
    style: SpecStyle,
    rules: &Rules,
    p: &mut Problems,
) -> Option<RunSpec> {
    check_keys(obj, LINE_KEYS, Key::from(""), p);
    let visual_input = required_path(obj, "visual_input", "the path of the input (color) video", policy, p);
    let prompt = required_prompt(obj, "prompt", p);
    let controls = rules.base.controls_for(fields::get(obj, "control_overrides"), policy, p);
    let mut settings = read_settings(obj, "", p);
    rules.base.fill_settings(&mut settings);
    let ext = read_extensions(obj, p);
    let negative_prompt = match fields::get(obj, "negative_prompt") {
        Some(v) => fields::text(v, "negative_prompt", MAX_PROMPT_CHARS, true, p),
        None => rules.base.negative_prompt.clone(),
    };
    let mut spec = RunSpec {
        video: None,
        style,
        name: ext.name,
        prompt: prompt?,
        negative_prompt,
        visual_input: visual_input?,
        controls: controls?,
        settings,
        priority: ext.priority,
        upscale_weight: ext.upscale_weight,
        sim: ext.sim,
    };
    rules.model.check(&spec, p);
    policy.preflight(&mut spec, p);
    Some(spec).filter(|_| p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Hint, JsonlLimits};
    use std::io::Cursor;
    use std::path::Path;

    fn run(text: &str, dir: &Path) -> (Report, Vec<Job>) {
        let mut jobs = Vec::new();
        let mut policy = PathPolicy::new(dir, &[]);
        let report = parse_jsonl(Cursor::new(text.as_bytes().to_vec()), &mut policy, &Rules::default(), &mut |j| jobs.push(j));
        (report, jobs)
    }

    fn videos() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("city1")).unwrap();
        std::fs::write(dir.path().join("city1/color.mp4"), b"v").unwrap();
        std::fs::write(dir.path().join("city1/depth.mp4"), b"d").unwrap();
        dir
    }

    #[test]
    fn seed_example_lines_parse_and_weight_zero_is_off() {
        let dir = videos();
        let text = concat!(
            r#"{"visual_input": "city1/color.mp4", "prompt": "A city", "control_overrides": {"vis": {"control_weight": 0.3}, "depth": {"input_control": null, "control_weight": 0.2}, "seg": {"control_weight": 0}}}"#,
            "\n\n",
            r#"{"visual_input": "city1/color.mp4", "prompt": "B", "control_overrides": {"depth": {"input_control": "city1/depth.mp4", "control_weight": 1}}, "seed": 7, "blur_strength": "low"}"#,
            "\n"
        );
        let (report, jobs) = run(text, dir.path());
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].line, 1);
        assert_eq!(jobs[1].line, 3, "blank line skipped but counted");
        assert_eq!(jobs[0].spec.control_set(), "vis,depth", "seg weight 0 is off");
        assert_eq!(jobs[1].spec.settings.seed, Some(7));
        assert!(jobs[1].spec.controls[&Hint::Depth].input.as_ref().unwrap().ends_with("city1/depth.mp4"));
    }

    #[test]
    fn every_bad_line_and_key_is_reported() {
        let dir = videos();
        let text = concat!(
            r#"{"visual_input": "city1/color.mp4", "promt": "typo", "control_overrides": {"edge": {"control_weight": 0.5}}}"#,
            "\n",
            r#"{"visual_input": "city1/missing.mp4", "prompt": "x", "control_overrides": {"edge": {"control_weight": 1.5}}}"#,
            "\n",
            "not json\n",
            r#"[1, 2]"#,
            "\n",
            r#"{"visual_input": "city1/color.mp4", "prompt": "", "control_overrides": {"hdmap": {"control_weight": 0.5}, "deph": {"control_weight": 0.1}}}"#,
            "\n",
        );
        let (report, jobs) = run(text, dir.path());
        assert!(jobs.is_empty());
        let shown = report.render(Path::new("jobs.jsonl"));
        for needle in [
            "jobs.jsonl:1: promt: unknown key; did you mean `prompt`?",
            "jobs.jsonl:1: prompt: missing",
            "jobs.jsonl:2: visual_input: no such file",
            "jobs.jsonl:2: control_overrides.edge.control_weight: expected a number in [0, 1], got 1.5",
            "jobs.jsonl:3: invalid JSON",
            "jobs.jsonl:4: expected a JSON object",
            "jobs.jsonl:5: prompt: expected a non-empty string",
            "jobs.jsonl:5: control_overrides.hdmap.input_control: missing",
            "jobs.jsonl:5: control_overrides.deph: unknown key; did you mean `depth`?",
        ] {
            assert!(shown.contains(needle), "missing {needle:?} in:\n{shown}");
        }
    }

    #[test]
    fn the_sim_oom_fault_names_what_cures_it_and_nothing_else() {
        let dir = videos();
        let line = |cures: &str| {
            format!(
                r#"{{"visual_input": "city1/color.mp4", "prompt": "p", "control_overrides": {{"edge": {{"control_weight": 0.5}}}}, "sim": {{"fail": "oom", "cured_by": {cures}}}}}"#
            )
        };
        let (report, jobs) = run(&format!("{}\n", line(r#"["offload_network", "gpus:2", "num_video_frames_per_chunk"]"#)), dir.path());
        assert!(report.is_ok(), "{:?}", report.problems);
        let cures = jobs[0].spec.sim.as_ref().and_then(|s| s.cured_by.clone()).unwrap();
        assert_eq!(cures, ["offload_network", "gpus:2", "num_video_frames_per_chunk"]);
        let (report, jobs) =
            run(&format!("{}\n{}\n", line(r#"["offload_everything", "gpus:0"]"#), line(r#""offload_network""#)), dir.path());
        assert!(jobs.is_empty());
        let shown = report.render(Path::new("f.jsonl"));
        assert!(shown.contains("f.jsonl:1: sim.cured_by: expected a list of offload_guardrail_models"), "{shown}");
        assert!(shown.contains("got the string \"offload_everything\"") && shown.contains("got the string \"gpus:0\""), "{shown}");
        assert!(shown.contains("f.jsonl:2: sim.cured_by:"), "{shown}");
    }

    #[test]
    fn duplicate_names_and_all_zero_weights_are_refused() {
        let dir = videos();
        let line = |name: &str, w: f64| {
            format!(
                r#"{{"name": "{name}", "visual_input": "city1/color.mp4", "prompt": "p", "control_overrides": {{"vis": {{"control_weight": {w}}}}}}}"#
            )
        };
        let text = format!("{}\n{}\n{}\n", line("a", 0.5), line("a", 0.5), line("b", 0.0));
        let (report, jobs) = run(&text, dir.path());
        assert_eq!(jobs.len(), 1);
        let shown = report.render(Path::new("f.jsonl"));
        assert!(shown.contains("f.jsonl:2: name: \"a\" is already the name of line 1"), "{shown}");
        assert!(shown.contains("f.jsonl:3: control_overrides: expected at least one control"), "{shown}");
    }

    #[test]
    fn incomplete_last_line_is_flagged() {
        let dir = videos();
        let (report, _) = run(r#"{"visual_input": "city1/color.mp4", "prompt": "#, dir.path());
        assert!(report.incomplete_last_line);
        assert!(!report.is_ok());
    }

    #[test]
    fn overlong_line_is_skipped_without_holding_it() {
        let dir = videos();
        let mut text = String::from("{\"prompt\": \"");
        text.push_str(&"x".repeat(3000));
        text.push_str("\"}\n");
        text.push_str(r#"{"visual_input": "city1/color.mp4", "prompt": "ok", "control_overrides": {"vis": {"control_weight": 0.5}}}"#);
        text.push('\n');
        let mut jobs = Vec::new();
        let mut policy = PathPolicy::new(dir.path(), &[]);
        let rules = Rules { limits: JsonlLimits { max_line_bytes: 1024 }, ..Rules::default() };
        let report = parse_jsonl(Cursor::new(text.into_bytes()), &mut policy, &rules, &mut |j| jobs.push(j));
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].line, 2);
        let shown = report.render(Path::new("big.jsonl"));
        assert!(shown.contains("big.jsonl:1: line is 3014 bytes, over the limit of 1024 bytes"), "{shown}");
    }

    #[test]
    fn capped_reader_handles_every_boundary() {
        let text = b"ab\ncdef\n\ng";
        let mut r = std::io::BufReader::with_capacity(2, &text[..]);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        loop {
            match read_capped_line(&mut r, &mut buf, 3).unwrap() {
                LineRead::Eof => break,
                LineRead::Line { newline } => got.push(format!("{}{}", String::from_utf8_lossy(&buf), if newline { "/" } else { "" })),
                LineRead::TooLong { bytes } => got.push(format!("long{bytes}")),
            }
        }
        assert_eq!(got, vec!["ab/", "long4", "/", "g"]);
    }
}
