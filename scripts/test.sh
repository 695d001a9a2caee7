#!/usr/bin/env bash
# The project's test command (README, second command). CI runs exactly this via .ci/run.
#
# 1. installs what the tests need and a fresh machine lacks (idempotent, skipped when present; Debian
#    packages need root: as non-root the script names what to install and stops):
#    binutils (GNU as/ld for the shim's guest driver), python3-venv; dtschema in a venv and the kernel's
#    DT binding schemas (scripts/dt-tools.sh, in the project's cache),
#    QEMU + busybox + cpio for the real-VFIO harness (tests/real-vfio, which fetches its own kernel);
# 2. checks formatting, clippy and the API docs (cargo doc, warnings as errors);
# 3. runs the whole test suite (unit, property, cross-process, KVM end-to-end, real VFIO in a nested guest);
# 4. runs every cargo-fuzz target for a short bounded time (FUZZ_SECONDS, default 20); the
#    committed corpora are also replayed by `cargo test`, and the benchmarks' quick mode runs as
#    a test (bench/tests/quick.rs), so neither can rot.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v as >/dev/null 2>&1 || need_apt+=(binutils)
command -v qemu-system-x86_64 >/dev/null 2>&1 || need_apt+=(qemu-system-x86)
[ -x /bin/busybox ] || need_apt+=(busybox-static)
command -v cpio >/dev/null 2>&1 || need_apt+=(cpio)
/usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "scripts/test.sh: missing Debian packages: ${need_apt[*]}" >&2
        echo "  install them as root (apt-get install --no-install-recommends ${need_apt[*]}), or run this script as root" >&2
        exit 1
    fi
    echo "== installing Debian packages: ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# dt-schema (in a venv of the project's cache, never the system Python) and the kernel's DT binding
# schemas (from Debian's kernel source package): the DT tests call this script themselves; running it
# here first reports a problem before the long build.
echo "== dt-schema tools and kernel DT bindings (scripts/dt-tools.sh, cached)"
scripts/dt-tools.sh >/dev/null

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo doc --workspace --no-deps (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc -q --workspace --no-deps
echo "== cargo test --workspace"
cargo test --workspace
echo "== fuzz targets, ${FUZZ_SECONDS:-20} s each (scripts/fuzz-ci.sh)"
scripts/fuzz-ci.sh "${FUZZ_SECONDS:-20}"
