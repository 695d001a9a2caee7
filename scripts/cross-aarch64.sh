#!/usr/bin/env bash
# scripts/cross-aarch64.sh: release builds of `vfio-sidecar` and `vmm-shim` for aarch64-unknown-linux-gnu,
# made on this (x86_64) machine inside the cached Debian trixie root (scripts/trixie-root.sh) with Debian's
# own rustc/cargo (1.85, the workspace MSRV), libstd-rust-dev:arm64 and aarch64-linux-gnu-gcc as linker.
#
# The checkout is bind-mounted read-only into the root (private mount namespace, nothing leaks to the
# host), crates come from the registry (through the root's copy of the host CA bundle), and the target
# and cargo directories are cached, so a warm run only rebuilds what changed:
#   $VFIO_SIDECAR_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/vfio-sidecar)/aarch64-target
#   $VFIO_SIDECAR_CACHE/aarch64-cargo-home
# Needs root (chroot, mount). On a real arm64 host none of this is needed: `cargo build --release`.
#
# Usage: scripts/cross-aarch64.sh [CARGO_PACKAGE...]    (default: vfio-sidecar vmm-shim)
#        CROSS_CARGO_EXTRA="--test NAME ..." adds cargo build arguments (test executables: $target/<triple>/release/deps)
#        CROSS_CLIPPY=1 scripts/cross-aarch64.sh vmm-shim  (clippy --all-targets --no-deps -D warnings, aarch64,
#        instead of the build; needs rust-clippy in the root; prints no paths)
# The last two lines of the output are
#   AARCH64_VFIO_SIDECAR=<path of the aarch64 vfio-sidecar binary>
#   AARCH64_VMM_SHIM=<path of the aarch64 vmm-shim binary>
# (a package left out of the arguments is reported as an empty path).
set -euo pipefail
die() { echo "cross-aarch64: ERROR: $*" >&2; exit 1; }
log() { echo "cross-aarch64: $*" >&2; }
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${VFIO_SIDECAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vfio-sidecar}
target=$cache/aarch64-target
home=$cache/aarch64-cargo-home
triple=aarch64-unknown-linux-gnu
packages=("$@")
[ ${#packages[@]} -gt 0 ] || packages=(vfio-sidecar vmm-shim)
[ "$(id -u)" = 0 ] || die "needs root (chroot and bind mounts into the trixie root); on an arm64 host use plain cargo build"
[ -f "$src/Cargo.lock" ] || die "no Cargo.lock in $src"
R=$("$src/scripts/trixie-root.sh" | tail -1)
[ -x "$R/usr/bin/cargo" ] || die "the trixie root at $R has no cargo"
mkdir -p "$target" "$home"
exec 8>"$cache/.cross-aarch64.lock"
flock 8 # one build at a time in the shared target directory
pargs=()
for p in "${packages[@]}"; do pargs+=(-p "$p"); done
# more cargo build arguments, word-split (tests/arm64/run.sh: --test NAME... for the hostile suites)
# shellcheck disable=SC2206
pargs+=(${CROSS_CARGO_EXTRA:-})
cmd="build --release --locked --target $triple"
if [ "${CROSS_CLIPPY:-}" = 1 ]; then
    [ -x "$R/usr/bin/cargo-clippy" ] || die "CROSS_CLIPPY=1: no cargo-clippy in the root (apt-get install rust-clippy there)"
    cmd="clippy --locked --target $triple --all-targets --no-deps"
    pargs+=(-- -D warnings)
fi
log "building ${packages[*]} for $triple in $R ($(chroot "$R" rustc --version))"
# One private mount namespace for the bind mounts: they vanish with the build, even when it fails.
unshare -m --propagation private -- /bin/sh -eu -c '
  R=$1 src=$2 target=$3 home=$4 cmd=$5; shift 5
  mkdir -p "$R/build/src" "$R/build/target" "$R/build/cargo-home" "$R/proc" "$R/dev"
  mount --bind "$src" "$R/build/src"
  mount -o remount,bind,ro "$R/build/src"
  mount --bind "$target" "$R/build/target"
  mount --bind "$home" "$R/build/cargo-home"
  mount -t proc proc "$R/proc"
  mount --rbind /dev "$R/dev"
  exec chroot "$R" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root \
    CARGO_HOME=/build/cargo-home CARGO_TARGET_DIR=/build/target \
    SSL_CERT_FILE=/etc/ssl-host-ca.pem CARGO_HTTP_CAINFO=/etc/ssl-host-ca.pem \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
    CARGO_TERM_COLOR=never \
    /bin/sh -c "cd /build/src && exec cargo $cmd \"\$@\"" cargo "$@"
' sh "$R" "$src" "$target" "$home" "$cmd" "${pargs[@]}" >&2 || die "cargo ${cmd%% *} failed (see above)"
if [ "${CROSS_CLIPPY:-}" = 1 ]; then log "clippy clean for ${packages[*]} ($triple)"; exit 0; fi
out=$target/$triple/release
have() { case " ${packages[*]} " in *" $1 "*) [ -x "$out/$2" ] || die "$out/$2 missing after the build"; echo "$out/$2" ;; esac; }
sidecar=$(have vfio-sidecar vfio-sidecar)
shim=$(have vmm-shim vmm-shim)
for b in $sidecar $shim; do
    file_info=$(od -An -tx1 -j18 -N2 "$b" | tr -d ' ')
    [ "$file_info" = "b700" ] || die "$b is not an aarch64 ELF (e_machine $file_info)"
done
echo "AARCH64_VFIO_SIDECAR=$sidecar"
echo "AARCH64_VMM_SHIM=$shim"
