//! A JSONL job file (one or more lines) through the parser intake uses.
//! The property is in `cosmos_workflow::fuzzing::jsonl_line`, which the ordinary tests also run
//! over the seeds and every crash found (`tests/fuzz_regressions.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cosmos_workflow::fuzzing::jsonl_line(data));
