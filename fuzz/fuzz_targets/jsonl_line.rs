//! A JSONL job file (one or more lines) through the parser intake uses: never a panic,
//! and every line is either a job or a problem with its line number.
#![no_main]

use cosmos_workflow::spec::{parse_jsonl, PathPolicy, Rules};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir();
    let mut policy = PathPolicy::new(&dir, &[]);
    let mut jobs = 0u64;
    let report = parse_jsonl(std::io::Cursor::new(data), &mut policy, &Rules::default(), &mut |_| jobs += 1);
    // Every problem names a line that exists, or the file.
    let lines = data.iter().filter(|b| **b == b'\n').count() as u64 + 1;
    for p in &report.problems {
        if let Some(l) = p.line {
            assert!(l >= 1 && l <= lines, "problem on line {l} of {lines}");
        }
    }
});
