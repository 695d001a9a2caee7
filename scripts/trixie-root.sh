#!/usr/bin/env bash
# scripts/trixie-root.sh: a cached Debian trixie root with what bookworm lacks, all from Debian's archive:
#   * QEMU >= 10.1 from trixie-backports (qemu-system-x86 with vfio-user-pci; qemu-system-aarch64 with
#     EL2 emulation, so arm64 KVM runs inside an emulated arm64 machine);
#   * an aarch64 Rust cross toolchain (Debian's rustc/cargo + libstd-rust-dev:arm64, gcc-aarch64-linux-gnu);
#   * busybox-static:arm64 and cpio for initramfs images, make/bc/flex/bison for out-of-tree kernel modules.
# Needs root (debootstrap, chroot). Idempotent: a complete root is reused (marker file .vfio-sidecar-complete,
# versioned by this script's PACKAGES line); a half-made one is removed and rebuilt.
#
# Usage: scripts/trixie-root.sh            prints the root's path on its last line
# Cache: $VFIO_SIDECAR_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/vfio-sidecar)/trixie-root
set -euo pipefail
die() { echo "trixie-root: ERROR: $*" >&2; exit 1; }
log() { echo "trixie-root: $*" >&2; }
cache=${VFIO_SIDECAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vfio-sidecar}
R=$cache/trixie-root
PACKAGES="rustc cargo libstd-rust-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross busybox-static:arm64 ca-certificates cpio xz-utils make bc flex bison"
BACKPORTS="qemu-system-x86 qemu-system-arm ipxe-qemu qemu-efi-aarch64"
stamp="v1 $PACKAGES | $BACKPORTS"
mkdir -p "$cache"
exec 9>"$cache/.trixie-root.lock"
flock 9
if [ -f "$R/.vfio-sidecar-complete" ] && [ "$(cat "$R/.vfio-sidecar-complete")" = "$stamp" ]; then
    echo "$R"; exit 0
fi
[ "$(id -u)" = 0 ] || die "building the trixie root needs root (debootstrap + chroot); run as root once, or set VFIO_SIDECAR_CACHE to a cache holding a complete root"
export DEBIAN_FRONTEND=noninteractive
if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends debootstrap >/dev/null || die "apt-get install debootstrap failed"
fi
if [ ! -x "$R/bin/sh" ] || [ ! -f "$R/.debootstrap-done" ]; then
    rm -rf "$R"
    log "debootstrap trixie into $R (1-2 minutes)"
    debootstrap --variant=minbase trixie "$R" >"$cache/debootstrap.log" 2>&1 \
        || die "debootstrap failed; see $cache/debootstrap.log"
    touch "$R/.debootstrap-done"
fi
src=$R/etc/apt/sources.list
[ -s "$src" ] || src=$R/etc/apt/sources.list.d/debian.sources
grep -q ' trixie main' "$R/etc/apt/sources.list" 2>/dev/null || die "unexpected apt sources in the root ($src)"
sed 's/ trixie main/ trixie-backports main/' "$R/etc/apt/sources.list" > "$R/etc/apt/sources.list.d/backports.list"
cp "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$R/etc/ssl-host-ca.pem"
cp /etc/resolv.conf "$R/etc/resolv.conf" 2>/dev/null || true
log "installing packages in the root (2-3 minutes)"
chroot "$R" sh -c "dpkg --add-architecture arm64 && apt-get update -qq &&
  apt-get install -y -q --no-install-recommends $PACKAGES &&
  apt-get install -y -q --no-install-recommends -t trixie-backports $BACKPORTS" >"$cache/trixie-packages.log" 2>&1 \
    || die "package install in the root failed; see $cache/trixie-packages.log"
chroot "$R" qemu-system-aarch64 --version >/dev/null || die "qemu-system-aarch64 not runnable in the root"
chroot "$R" sh -c 'qemu-system-x86_64 -device help | grep -q vfio-user-pci' || die "the root's QEMU has no vfio-user-pci"
echo "$stamp" > "$R/.vfio-sidecar-complete"
log "ready: $(chroot "$R" qemu-system-aarch64 --version | head -1); $(chroot "$R" rustc --version)"
echo "$R"
