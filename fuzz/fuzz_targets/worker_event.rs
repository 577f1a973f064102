//! What a worker writes on its event stream, in arbitrary chunks, through the reader both
//! runtimes use: never a panic, never more than the line cap held.
#![no_main]

use cosmos_workflow::runtime::protocol::{parse_event, EventLines, WorkerLine};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_event(text);
    }
    // The first byte picks the chunk size, so splits land everywhere.
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
});
