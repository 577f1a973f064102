//! The Python worker's own tests (`worker/tests`, standard library only; the Transfer2.5
//! fakes use pydantic where it is installed), so that `cargo test` runs every test of the
//! project.

use std::process::Command;

#[test]
fn the_python_workers_unittests_pass() {
    let worker = concat!(env!("CARGO_MANIFEST_DIR"), "/worker");
    let out = Command::new(std::env::var("COSMOS_PYTHON").unwrap_or_else(|_| "python3".into()))
        .args(["-m", "unittest", "discover", "-s", "tests"])
        .current_dir(worker)
        .output()
        .expect("python3 runs (the worker needs Python 3.10 or newer)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // unittest prints its summary ("Ran N tests", "OK (skipped=K)") on stderr.
    println!(
        "{}",
        stderr.lines().filter(|l| l.starts_with("Ran ") || l.starts_with("OK") || l.starts_with("FAILED")).collect::<Vec<_>>().join("\n")
    );
    assert!(out.status.success(), "the worker's Python tests failed:\n{stderr}");
    assert!(stderr.contains("\nOK"), "no OK from unittest:\n{stderr}");
}
