//! A video file (MP4/MOV) through the intake preflight's probe. The property is in
//! `cosmos_workflow::fuzzing::video`, which the ordinary tests also run over the seeds and
//! every crash found (`tests/fuzz_regressions.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cosmos_workflow::fuzzing::video(data));
