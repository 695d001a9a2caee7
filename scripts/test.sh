#!/usr/bin/env bash
# The project's test command (README, second command). CI runs exactly this via .ci/run.
#
# 1. installs what the tests need and a fresh machine lacks (idempotent, skipped when present):
#    binutils (GNU as/ld for the shim's guest driver), python dtschema (dt-validate),
#    QEMU + busybox + cpio for the real-VFIO harness (tests/real-vfio, which fetches its own kernel);
# 2. checks formatting and clippy;
# 3. runs the whole test suite (unit, property, cross-process, KVM end-to-end, real VFIO in a nested guest);
# 4. runs every cargo-fuzz target for a short bounded time (FUZZ_SECONDS, default 20); the
#    committed corpora are also replayed by `cargo test`, and the benchmarks' quick mode runs as
#    a test (bench/tests/quick.rs), so neither can rot.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_apt=()
command -v as >/dev/null 2>&1 || need_apt+=(binutils)
command -v qemu-system-x86_64 >/dev/null 2>&1 || need_apt+=(qemu-system-x86)
[ -x /bin/busybox ] || need_apt+=(busybox-static)
command -v cpio >/dev/null 2>&1 || need_apt+=(cpio)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "== installing Debian packages: ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if ! command -v dt-validate >/dev/null 2>&1; then
    echo "== installing dtschema (dt-validate) from PyPI"
    python3 -m pip install -q dtschema
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test --workspace"
cargo test --workspace
echo "== fuzz targets, ${FUZZ_SECONDS:-20} s each (scripts/fuzz-ci.sh)"
scripts/fuzz-ci.sh "${FUZZ_SECONDS:-20}"
