#!/usr/bin/env bash
# tests/arm64/setup.sh: cached preparation of the arm64 harness's inner machine (run.sh boots it).
#
#  * the Debian trixie root (scripts/trixie-root.sh): QEMU aarch64 with EL2, Debian's cross gcc, busybox:arm64;
#  * the kernel `linux-image-arm64:arm64` depends on in that root: `apt-get download` + `dpkg-deb -x`
#    (never installed); kept: its raw arm64 Image, its config, and pl330.ko (.xz decompressed) with every
#    module it needs (modinfo `depends=`), in load order;
#  * that kernel's headers: linux-headers-<ver>-arm64, -common and the amd64 linux-kbuild, extracted into
#    the root (kbuild's paths are absolute: /usr/src/linux-headers-<ver>-*), for an out-of-tree build;
#  * tests/arm64/module (the harness's own dmaengine client) built against them with Debian's cross gcc;
#  * inner.cpio: busybox, the modules, the test module, tests/arm64/init-inner as /init.
# Cache: ${VFIO_SIDECAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vfio-sidecar}/arm64/<kernel version>/; the
# module and the cpio are rebuilt when their sources change, the kernel and headers never.
#
# Prints on its last lines: ARM64_ROOT=…, ARM64_KVER=…, ARM64_IMAGE=…, ARM64_INNER_INITRD=…
# Any failure exits non-zero with the failing step named: never a silent skip.
set -euo pipefail
# shellcheck source=../lib/kmods.sh
. "$(dirname "$0")/../lib/kmods.sh"
# zstd from the trixie root (paths inside it).
kmods_unzstd() { inroot zstd -qdc "${1#"$R"}"; }
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
die() { echo "arm64 setup: ERROR: $*" >&2; exit 1; }
log() { echo "arm64 setup: $*" >&2; }
cache=${VFIO_SIDECAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vfio-sidecar}
[ "$(id -u)" = 0 ] || die "needs root (chroot into the trixie root for apt-get and the cross build)"

R=$("$top/scripts/trixie-root.sh" | tail -1) || die "scripts/trixie-root.sh failed (see above)"
[ -x "$R/usr/bin/aarch64-linux-gnu-gcc" ] || die "the root $R has no aarch64-linux-gnu-gcc"
mkdir -p "$cache/arm64"
exec 9>"$cache/arm64/.lock"
flock 9                                   # concurrent runs share one cache
inroot() { chroot "$R" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"; }
# a work dir inside the root (the chroot sees it as $rtmp), removed on exit
rtmp=/tmp/vfio-sidecar-arm64.$$
trap 'rm -rf "$R$rtmp"' EXIT
mkdir -p "$R$rtmp"

resolve() { inroot apt-cache depends linux-image-arm64:arm64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}'; }
pkg=$(resolve)
if [ -z "$pkg" ]; then
    inroot apt-get update -qq || die "apt-get update in the root failed"
    pkg=$(resolve)
fi
[ -n "$pkg" ] || die "cannot resolve linux-image-arm64:arm64 to a kernel package in the root"
pkg=${pkg%:arm64}
kver=${pkg#linux-image-}                  # e.g. 6.12.117+deb13-arm64
base=${kver%-arm64}                       # e.g. 6.12.117+deb13
dir=$cache/arm64/$kver
mkdir -p "$dir"

# apt-get download in the root; a stale package list (404) gets one apt-get update and a retry
download() {
    local d=$1; shift
    mkdir -p "$R$d"
    inroot sh -c "cd $d && apt-get download -q -o APT::Sandbox::User=root $*" >"$R$d/download.log" 2>&1 && return 0
    log "apt-get download $* failed; apt-get update and retry"
    inroot apt-get update -qq || die "apt-get update in the root failed"
    inroot sh -c "cd $d && apt-get download -q -o APT::Sandbox::User=root $*" >"$R$d/download.log" 2>&1 \
        || die "apt-get download $* failed: $(tail -3 "$R$d/download.log")"
}

# --- 1. the kernel: Image, config, pl330.ko and its dependencies -------------------------------------------
if [ ! -f "$dir/.kernel-complete" ]; then
    log "downloading $pkg:arm64 (~90 MB)"
    rm -rf "$dir/modules" "$dir/Image" "$dir/config"
    download "$rtmp/k" "$pkg:arm64"
    deb=$(cd "$R$rtmp/k" && ls ./*.deb 2>/dev/null | head -1)
    [ -n "$deb" ] || die "apt-get download $pkg produced no .deb"
    inroot dpkg-deb -x "$rtmp/k/$deb" "$rtmp/k/x" || die "dpkg-deb -x $deb failed"
    x=$R$rtmp/k/x
    cfg=$x/boot/config-$kver
    [ -f "$cfg" ] || die "$pkg has no boot/config-$kver"
    for opt in CONFIG_KVM=y CONFIG_ARM_AMBA=y CONFIG_DMA_ENGINE=y CONFIG_PL330_DMA=m CONFIG_MODULES=y; do
        grep -q "^$opt\$" "$cfg" || die "$pkg: kernel config lacks $opt"
    done
    img=$x/boot/vmlinuz-$kver
    [ -f "$img" ] || die "$pkg has no boot/vmlinuz-$kver"
    # a raw arm64 Image carries the magic "ARM\x64" at offset 0x38
    [ "$(od -An -c -j56 -N3 "$img" | tr -d ' ')" = ARM ] || die "boot/vmlinuz-$kver is not a raw arm64 Image"
    mkdir -p "$dir/modules"
    kmod=$x/usr/lib/modules/$kver                 # merged /usr (trixie); older packages: /lib/modules
    [ -d "$kmod" ] || kmod=$x/lib/modules/$kver
    [ -d "$kmod/kernel" ] || die "$pkg has no lib/modules/$kver/kernel"
    kmods_collect "$kmod" "$dir/modules" "$pkg" pl330
    order=("${KMODS_ORDER[@]}")
    printf '%s\n' "${order[@]}" > "$dir/modules/load-order"
    cp "$img" "$dir/Image"
    cp "$cfg" "$dir/config"
    rm -rf "$R$rtmp/k"
    touch "$dir/.kernel-complete"
    log "kernel $kver: Image $(du -h "$dir/Image" | cut -f1), modules ${order[*]}"
fi

# --- 2. the headers, extracted into the root -----------------------------------------------------------------
hdr=/usr/src/linux-headers-$kver
if [ ! -f "$R$hdr/.vfio-sidecar-complete" ]; then
    log "downloading the headers of $kver (arm64, -common, amd64 kbuild; ~17 MB)"
    download "$rtmp/h" "linux-headers-$kver:arm64" "linux-headers-$base-common" "linux-kbuild-$base"
    for d in "$R$rtmp"/h/*.deb; do
        inroot dpkg-deb -x "${d#"$R"}" / || die "dpkg-deb -x $(basename "$d") failed"
    done
    [ -f "$R$hdr/Makefile" ] || die "the headers package has no $hdr/Makefile"
    rm -rf "$R$rtmp/h"
    touch "$R$hdr/.vfio-sidecar-complete"
fi

# --- 3. the test module --------------------------------------------------------------------------------------
sum=$(cat "$here/module/Kbuild" "$here/module/sidecar_dmatest.c" | sha256sum | cut -d' ' -f1)
if [ ! -f "$dir/sidecar_dmatest.ko" ] || [ "$(cat "$dir/module.sum" 2>/dev/null)" != "$sum" ]; then
    log "building tests/arm64/module against $kver"
    rm -f "$dir/sidecar_dmatest.ko"
    mkdir -p "$R$rtmp/m"
    cp "$here/module/Kbuild" "$here/module/sidecar_dmatest.c" "$R$rtmp/m/"
    inroot make -C "$hdr" M="$rtmp/m" ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- \
        CONFIG_DEBUG_INFO_BTF_MODULES= modules >"$dir/module-build.log" 2>&1 \
        || die "module build failed: $(grep -m5 -E 'error|Error' "$dir/module-build.log"); see $dir/module-build.log"
    vm=$(strings "$R$rtmp/m/sidecar_dmatest.ko" | sed -n 's/^vermagic=//p')
    case $vm in "$kver "*) ;; *) die "sidecar_dmatest.ko has vermagic '$vm', not $kver" ;; esac
    cp "$R$rtmp/m/sidecar_dmatest.ko" "$dir/sidecar_dmatest.ko"
    echo "$sum" > "$dir/module.sum"
fi

# --- 4. the inner initramfs (cheap: every time) --------------------------------------------------------------
# busybox:arm64 from the root; the cpio is written by the root's cpio (no root-owned files or device nodes
# needed: --owner=0:0, and /dev comes from devtmpfs)
bb=$R/usr/bin/busybox
[ "$(od -An -tx1 -j18 -N1 "$bb" | tr -d ' ')" = b7 ] || die "$bb is not an aarch64 busybox (busybox-static:arm64)"
s=$R$rtmp/inner
mkdir -p "$s"/{bin,dev,proc,sys,tmp,lib/modules}
cp "$bb" "$s/bin/busybox"
cp "$dir"/modules/*.ko "$dir/modules/load-order" "$s/lib/modules/"
cp "$dir/sidecar_dmatest.ko" "$s/lib/modules/"
install -m755 "$here/init-inner" "$s/init"
inroot sh -c "cd $rtmp/inner && find . | LC_ALL=C sort | cpio -o -H newc --owner=0:0 --quiet" > "$dir/inner.cpio.tmp" \
    || die "cpio of the inner initramfs failed"
mv "$dir/inner.cpio.tmp" "$dir/inner.cpio"

echo "ARM64_ROOT=$R"
echo "ARM64_KVER=$kver"
echo "ARM64_IMAGE=$dir/Image"
echo "ARM64_INNER_INITRD=$dir/inner.cpio"
