//! A run-spec file (`.json`: Transfer1, Transfer2.5 or JSONL style) through its parser.
//! The property is in `cosmos_workflow::fuzzing::run_spec`, which the ordinary tests also run
//! over the seeds and every crash found (`tests/fuzz_regressions.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cosmos_workflow::fuzzing::run_spec(data));
