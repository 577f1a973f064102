//! A run-spec file (`.json`: Transfer1, Transfer2.5 or JSONL style) through its parser.
#![no_main]

use cosmos_workflow::spec::runspec::parse_run_spec_reader;
use cosmos_workflow::spec::{PathPolicy, Rules};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir();
    let mut policy = PathPolicy::new(&dir, &[]);
    let _ = parse_run_spec_reader(std::io::Cursor::new(data), &mut policy, &Rules::default(), &mut |_| {});
});
