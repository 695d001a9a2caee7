#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time each (CI: e.g. 20 s).
#
#   scripts/fuzz-ci.sh [SECONDS] [TARGET...]
#
# SECONDS defaults to 20; TARGETs default to every [[bin]] of fuzz/Cargo.toml
# that lives in fuzz_targets/ (protocol_server, server_pl330, server_hostile, pl330_model).
#
# * Toolchain: cargo-fuzz needs nightly -Z flags. Only stable is installed
#   here, so the script sets RUSTC_BOOTSTRAP=1 (stable rustc then accepts the
#   -Z flags). cargo-fuzz is installed from crates.io when missing, into the
#   project's cache ($VFIO_SIDECAR_CACHE/cargo-tools, default ~/.cache/vfio-sidecar).
# * Sanitizer: FUZZ_SANITIZER (default "address"); if the ASan build fails the
#   script retries with "none" and says so.
# * Corpus: the committed fuzz/corpus/TARGET/ is read as seeds; new inputs go
#   to a temporary directory (the committed corpus is not modified).
# * Result: per target the executions and whether it crashed; crashing inputs
#   are in fuzz/artifacts/TARGET/. Exit status 1 if any target crashed or
#   failed to build, 0 otherwise.
# * Each target runs single-process (-jobs not used): the CI machine is small.
set -uo pipefail
cd "$(dirname "$0")/../fuzz"

SECS="${1:-20}"
shift || true
export RUSTC_BOOTSTRAP=1
SAN="${FUZZ_SANITIZER:-address}"

# cargo-fuzz lives in the project's cache (cargo install --root), not in ~/.cargo/bin.
tools=${VFIO_SIDECAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vfio-sidecar}/cargo-tools
export PATH="$tools/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-ci: installing cargo-fuzz from crates.io into $tools (once, ~2 min)" >&2
    cargo install --root "$tools" cargo-fuzz --locked || { echo "fuzz-ci: cannot install cargo-fuzz" >&2; exit 1; }
fi

if [ "$#" -gt 0 ]; then
    TARGETS=("$@")
else
    mapfile -t TARGETS < <(awk '/^\[\[bin\]\]/{b=1} b && /^name *=/{gsub(/[" ]/,"",$0); split($0,a,"="); n=a[2]} b && /^path *= *"fuzz_targets\//{print n; b=0}' Cargo.toml)
fi
if [ "${#TARGETS[@]}" -eq 0 ]; then
    echo "fuzz-ci: no targets found in fuzz/Cargo.toml" >&2
    exit 1
fi

build() {
    cargo fuzz build -O --sanitizer "$SAN" "$1"
}

status=0
summary=()
for t in "${TARGETS[@]}"; do
    echo "=== fuzz-ci: $t for ${SECS}s (sanitizer $SAN)"
    if ! build "$t"; then
        if [ "$SAN" != none ]; then
            echo "fuzz-ci: $SAN build of $t failed; retrying with --sanitizer none" >&2
            SAN=none
            build "$t" || { summary+=("$t: BUILD FAILED"); status=1; continue; }
        else
            summary+=("$t: BUILD FAILED"); status=1; continue
        fi
    fi
    work="$(mktemp -d)"
    mkdir -p "corpus/$t" "artifacts/$t"
    log="$work/log"
    cargo fuzz run -O --sanitizer "$SAN" "$t" "$work" "corpus/$t" -- \
        -max_total_time="$SECS" \
        -max_len=65536 \
        -rss_limit_mb=2048 \
        -timeout=20 \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n1)"
    if [ "$rc" -ne 0 ]; then
        tail -n 60 "$log"
        summary+=("$t: CRASH (exit $rc) after ${execs:-?} executions; input in fuzz/artifacts/$t/")
        status=1
    else
        summary+=("$t: ok, ${execs:-?} executions, $(ls "$work" | wc -l) new inputs (discarded)")
    fi
    rm -rf "$work"
done

echo "=== fuzz-ci summary (${SECS}s per target)"
printf '  %s\n' "${summary[@]}"
exit "$status"
