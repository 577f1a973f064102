//! The properties the fuzz targets (`fuzz/fuzz_targets/`) check on every parser of outside
//! input, kept here so the same checks also run in the ordinary tests over the committed
//! seeds and every crash input ever found (`tests/fuzz_regressions.rs`). Each function
//! panics exactly when the property fails; a panic inside a parser fails it too.

use crate::config::Config;
use crate::runtime::protocol::{parse_event, EventLines, WorkerLine};
use crate::spec::runspec::parse_run_spec_reader;
use crate::spec::{parse_jsonl, PathPolicy, Rules};
use std::path::Path;

/// A JSONL job file: never a panic, and every problem names a line that exists.
pub fn jsonl_line(data: &[u8]) {
    let dir = std::env::temp_dir();
    let mut policy = PathPolicy::new(&dir, &[]);
    let report = parse_jsonl(std::io::Cursor::new(data), &mut policy, &Rules::default(), &mut |_| {});
    let lines = data.iter().filter(|b| **b == b'\n').count() as u64 + 1;
    for p in &report.problems {
        if let Some(l) = p.line {
            assert!(l >= 1 && l <= lines, "problem on line {l} of {lines}");
        }
    }
}

/// A run-spec file (Transfer1, Transfer2.5 or JSONL style): never a panic.
pub fn run_spec(data: &[u8]) {
    let dir = std::env::temp_dir();
    let mut policy = PathPolicy::new(&dir, &[]);
    let _ = parse_run_spec_reader(std::io::Cursor::new(data), &mut policy, &Rules::default(), &mut |_| {});
}

/// The configuration: a clear error or a config, never a panic; a config it accepts renders
/// back to TOML that it accepts again.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = Config::from_toml(text, Path::new("fuzz.toml")) {
        let again = config.to_toml();
        assert!(Config::from_toml(&again, Path::new("again.toml")).is_ok(), "rendered config refused:\n{again}");
    }
}

/// A worker's event stream in arbitrary chunks (the first byte picks the chunk size, so
/// splits land everywhere): never a panic, never a message that holds the whole line.
pub fn worker_event(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_event(text);
    }
    let chunk = data.first().map_or(1, |b| (*b as usize % 61) + 1);
    let mut lines = EventLines::default();
    let mut seen = 0usize;
    let mut each = |l: WorkerLine| {
        seen += 1;
        if let WorkerLine::Garbage(what) = l {
            assert!(what.len() < 4096, "a message holds the whole line");
        }
    };
    for c in data.chunks(chunk) {
        lines.push(c, &mut each);
    }
    lines.finish(&mut each);
    assert!(seen <= data.len() + 1);
}

/// A video file through the preflight's probe (`crate::probe`): a clear error or facts
/// that make sense, never a panic.
pub fn video(data: &[u8]) {
    let got = crate::probe::probe_reader(&mut std::io::Cursor::new(data), data.len() as u64, Path::new("fuzz.mp4"));
    if let Ok(f) = got {
        assert!(f.frames > 0 && f.width > 0 && f.height > 0, "facts without frames or size: {f:?}");
        assert!(f.fps.is_finite() && f.fps > 0.0 && f.duration_seconds.is_finite() && f.duration_seconds > 0.0, "bad timing: {f:?}");
    }
}

/// A property over one input: panics when it fails.
pub type Check = fn(&[u8]);

/// The targets by name, as `fuzz/fuzz_targets/<name>.rs` and `fuzz/seeds/<name>/` call them.
pub const TARGETS: [(&str, Check); 5] =
    [("jsonl_line", jsonl_line), ("run_spec", run_spec), ("config", config), ("worker_event", worker_event), ("video", video)];
