//! What a worker writes on its event stream, in arbitrary chunks, through the reader both runtimes use.
//! The property is in `cosmos_workflow::fuzzing::worker_event`, which the ordinary tests also run
//! over the seeds and every crash found (`tests/fuzz_regressions.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cosmos_workflow::fuzzing::worker_event(data));
