//! The fuzz targets' properties (`cosmos_workflow::fuzzing`) over every committed seed
//! (`fuzz/seeds/<target>/`) and every input a fuzz run ever crashed on
//! (`fuzz/regressions/<target>/`, where a crash from `fuzz/artifacts/` is copied before it
//! is fixed), so they hold in every ordinary test run, without a nightly toolchain.

use std::path::Path;

#[test]
fn every_seed_and_every_crash_found_passes_its_targets_property() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut checked = 0;
    for (target, check) in cosmos_workflow::fuzzing::TARGETS {
        for folder in ["seeds", "regressions"] {
            let dir = fuzz.join(folder).join(target);
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries {
                let path = entry.expect("a readable folder").path();
                let data = std::fs::read(&path).expect("a readable input");
                if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
                    let why = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
                    panic!("{target}: {} breaks the property: {}", path.display(), why.unwrap_or_default());
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 4, "only {checked} inputs found under {}", fuzz.display());
}
