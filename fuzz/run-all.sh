#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), from the committed seeds plus the
# corpus earlier runs grew (fuzz/corpus/, not committed). Needs a nightly toolchain and
# cargo-fuzz (`cargo install cargo-fuzz`). Exits 1 when a target crashed: the input is left
# in fuzz/artifacts/<target>/; copy it into fuzz/regressions/<target>/ (which
# tests/fuzz_regressions.rs runs in every test run) before fixing it.
set -uo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
failed=()
for target in jsonl_line run_spec config worker_event video; do
    mkdir -p "corpus/$target"
    echo "== $target ($seconds s)"
    log=$(mktemp)
    cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- -max_total_time="$seconds" -max_len=8192 >"$log" 2>&1
    status=$?
    grep -E "^Done|SUMMARY|panicked|crash-" "$log"
    if [ "$status" -ne 0 ]; then
        tail -n 20 "$log"
        failed+=("$target")
    fi
    rm -f "$log"
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: crashed or failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: no crash"
