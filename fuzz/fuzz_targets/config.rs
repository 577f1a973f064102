//! The TOML configuration: a clear error or a config, never a panic.
//! The property is in `cosmos_workflow::fuzzing::config`, which the ordinary tests also run
//! over the seeds and every crash found (`tests/fuzz_regressions.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cosmos_workflow::fuzzing::config(data));
