//! The direction of the code, checked: the top-level modules of `src/` form layers, and a
//! module imports only modules of lower layers (so no two import each other and none
//! reaches back). The data flows intake -> store -> scheduler -> runtime -> outbox; what a
//! later stage needs of an earlier one is its data types (the outbox writes the store's
//! records and the runtime's outputs), never its machinery.
//!
//! A new module must be given its layer here: the test names it otherwise.

use std::collections::BTreeMap;
use std::path::Path;

/// Lower layers first. A module may use `crate::X` only for an X in a lower layer.
const LAYERS: &[&[&str]] = &[
    // Foundations: no part of the flow.
    &["time", "fsutil", "gpu"],
    &["ids", "config", "probe"],
    &["layout"],
    &["spec"],
    // The store of record, and the worker runtimes (both only know runs as data).
    &["store", "runtime"],
    // The scheduler's pure decisions (shared by the SQLite scheduler and the PostgreSQL
    // claim), and what users see: run folders, receipts, status.json.
    &["policy", "outbox"],
    // The registry the parts record metrics into; the HTTP endpoint reads it.
    &["metrics"],
    // What reads the store and the outbox for others: the HTTP endpoint, pruning, hooks.
    &["web", "prune", "hooks"],
    // The shared PostgreSQL queue of several hosts: the scheduler's order in SQL, leases,
    // shared storage and the origin host's side (delivery into its outbox).
    &["cluster"],
    // The two active stages, each driving the ones below.
    &["intake", "scheduler", "checkhost"],
    &["daemon"],
    &["cli"],
    // Test support: the fuzz targets' properties.
    &["fuzzing"],
];

fn imports(path: &Path, out: &mut Vec<String>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("src readable") {
            imports(&entry.expect("entry").path(), out);
        }
        return;
    }
    if path.extension().is_none_or(|e| e != "rs") {
        return;
    }
    let text = std::fs::read_to_string(path).expect("source readable");
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
}

#[test]
fn modules_import_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layer_of: BTreeMap<&str, usize> = LAYERS.iter().enumerate().flat_map(|(i, l)| l.iter().map(move |m| (*m, i))).collect();
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(&src).expect("src") {
        let path = entry.expect("entry").path();
        let Some(stem) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else { continue };
        if stem == "lib" || stem == "bin" {
            continue;
        }
        let Some(&mine) = layer_of.get(stem.as_str()) else {
            problems.push(format!("src/{stem} is in no layer of tests/architecture.rs: give it one"));
            continue;
        };
        let mut used = Vec::new();
        imports(&path, &mut used);
        used.sort();
        used.dedup();
        for dep in used.iter().filter(|d| **d != stem) {
            match layer_of.get(dep.as_str()) {
                Some(&theirs) if theirs < mine => {}
                Some(_) => problems.push(format!("{stem} imports {dep}, which is not below it")),
                None => problems.push(format!("{stem} imports crate::{dep}, which is in no layer")),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
