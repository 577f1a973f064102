#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), from the committed seeds plus the
# corpus earlier runs grew (fuzz/corpus/, not committed). Needs a nightly toolchain and
# cargo-fuzz (`cargo install cargo-fuzz`). A crash is left in fuzz/artifacts/<target>/;
# make it a regression test before fixing it.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
for target in jsonl_line run_spec config worker_event; do
    mkdir -p "corpus/$target"
    echo "== $target ($seconds s)"
    cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- -max_total_time="$seconds" -max_len=8192 2>&1 \
        | grep -E "^Done|SUMMARY|panicked|crash-" || true
done
