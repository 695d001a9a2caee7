#!/usr/bin/env bash
# Runs a cargo-fuzz target for a bounded time.
#
#   fuzz/run.sh [TARGET] [SECONDS]     (defaults: protocol_server 60)
#
# Needs the nightly toolchain (cargo-fuzz builds with sanitizers); installs
# cargo-fuzz from crates.io when missing. Seeds the corpus from the harness.
# Without nightly it exits 2: the same harness is replayed on the committed
# corpus by `cargo test -p vfio-sidecar-protocol --test fuzz_corpus_replay`.
set -euo pipefail
cd "$(dirname "$0")"
TARGET="${1:-protocol_server}"
SECS="${2:-60}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "run.sh: no nightly toolchain; libFuzzer cannot run here." >&2
    echo "run.sh: the harness still runs via: cargo test -p vfio-sidecar-protocol --test fuzz_corpus_replay" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

CORPUS="corpus/$TARGET"
mkdir -p "$CORPUS" artifacts
cargo run --quiet --release --bin write_seeds -- "$CORPUS"

cargo +nightly fuzz run "$TARGET" "$CORPUS" -- \
    -max_total_time="$SECS" \
    -max_len=65536 \
    -rss_limit_mb=2048 \
    -timeout=20 \
    -print_final_stats=1
