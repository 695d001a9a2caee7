#!/bin/bash
# tests/qemu-interop/setup.sh: one-time (cached) preparation for run.sh.
#
#  * QEMU >= 10.1 with vfio-user-pci: the Debian trixie root of scripts/trixie-root.sh (QEMU 11.1 from
#    trixie-backports; built once, ~3 minutes, needs root);
#  * the kernel `linux-image-cloud-amd64` depends on in trixie (6.12: uio_pci_generic, vfio-pci,
#    intel-iommu) and busybox-static (amd64), both `apt-get download`ed in that root (never installed),
#    cached under $cache/qemu-interop/<kernel package>/;
#  * initrd-base.cpio there: busybox + /init + the modules the checks need (uio_pci_generic, vfio-pci,
#    vfio_iommu_type1, nvram and their modinfo `depends=`), in load order.
#
# Prints QI_ROOT=, QI_QEMU_VERSION=, QI_KERNEL=, QI_INITRD= on its last four lines.
# Every missing piece is an error (exit != 0) with the reason: never a silent skip.
set -euo pipefail
# shellcheck source=../lib/kmods.sh
. "$(dirname "$0")/../lib/kmods.sh"
# xz and zstd come from the trixie root, not the host.
kmods_unxz() { rootbin xz -dc "$1"; }
kmods_unzstd() { rootbin zstd -qdc "$1"; }
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
die() { echo "qemu-interop setup: ERROR: $*" >&2; exit 1; }
log() { echo "qemu-interop setup: $*" >&2; }
cache=${VFIO_SIDECAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vfio-sidecar}/qemu-interop
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9                                    # concurrent runs share one cache

R=$("$top/scripts/trixie-root.sh" | tail -1) || die "scripts/trixie-root.sh failed (see above)"
[ -x "$R/usr/bin/qemu-system-x86_64" ] || die "$R has no qemu-system-x86_64"
ver=$(chroot "$R" qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9][0-9.]*\).*/\1/p')
[ -n "$ver" ] || die "cannot read the QEMU version in $R"
IFS=. read -r vmaj vmin _ <<< "$ver"
{ [ "$vmaj" -gt 10 ] || { [ "$vmaj" = 10 ] && [ "$vmin" -ge 1 ]; }; } || die "QEMU $ver in $R is older than 10.1"
chroot "$R" qemu-system-x86_64 -device help 2>/dev/null | grep -q '"vfio-user-pci"' \
    || die "QEMU $ver in $R has no vfio-user-pci device"
# The root's own tools (cpio, xz) run through its dynamic loader: the host needs none of them.
rootbin() {
    "$R/lib64/ld-linux-x86-64.so.2" --library-path "$R/lib/x86_64-linux-gnu:$R/usr/lib/x86_64-linux-gnu" \
        "$R/usr/bin/$1" "${@:2}"
}
rootbin cpio --version >/dev/null && rootbin xz --version >/dev/null || die "cpio/xz of $R do not run"

meta=linux-image-cloud-amd64
# apt-cache in the root takes ~1 s: reuse the resolution for a day (QEMU_INTEROP_REFRESH=1 forces it).
pkg=
if [ "${QEMU_INTEROP_REFRESH:-0}" != 1 ] && [ -n "$(find "$cache/resolved" -mmin -1440 2>/dev/null)" ]; then
    read -r pkg < "$cache/resolved" || pkg=
    [ -f "$cache/$pkg/.complete" ] || pkg=
fi
fresh=0
if [ -z "$pkg" ]; then
    fresh=1
    pkg=$(chroot "$R" apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
    if [ -z "$pkg" ]; then
        chroot "$R" apt-get update -qq >/dev/null 2>&1 || die "apt-get update in $R failed"
        pkg=$(chroot "$R" apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
    fi
fi
[ -n "$pkg" ] || die "cannot resolve $meta to a kernel package in $R (apt-cache depends $meta gave nothing)"
kver=${pkg#linux-image-}
dir=$cache/$pkg
if [ ! -f "$dir/.complete" ]; then
    rm -rf "$dir"; mkdir -p "$dir"
    dl=$(mktemp -d "$R/tmp/qemu-interop-dl.XXXXXX")
    log "downloading $pkg and busybox-static in $R"
    chroot "$R" sh -c "cd /tmp/${dl##*/} && apt-get download -q -o APT::Sandbox::User=root $pkg busybox-static" \
        >"$dir/download.log" 2>&1 || { rm -rf "$dl"; die "apt-get download $pkg busybox-static failed: $(tail -3 "$dir/download.log")"; }
    d=/tmp/${dl##*/}
    chroot "$R" sh -c "dpkg-deb -x $d/linux-image-*.deb $d/x && dpkg-deb -x $d/busybox-static_*.deb $d/bb" \
        || { rm -rf "$dl"; die "dpkg-deb -x of $pkg / busybox-static failed"; }
    mv "$dl/x" "$dir/x"; mv "$dl/bb" "$dir/bb"; rm -rf "$dl"
    cfg=$dir/x/boot/config-$kver
    [ -f "$cfg" ] || die "$pkg has no boot/config-$kver"
    for opt in CONFIG_VFIO= CONFIG_VFIO_PCI= CONFIG_VFIO_PCI_INTX=y CONFIG_VFIO_IOMMU_TYPE1= CONFIG_UIO_PCI_GENERIC= \
               CONFIG_INTEL_IOMMU=y CONFIG_IRQ_REMAP=y CONFIG_PCI_MSI=y CONFIG_NVRAM=; do
        grep -q "^$opt" "$cfg" || die "$pkg: kernel config lacks $opt"
    done
    cp "$dir/x/boot/vmlinuz-$kver" "$dir/vmlinuz"
    root=$dir/root
    mkdir -p "$root"/{bin,dev,proc,sys,tmp,lib/modules}
    bb=$(find "$dir/bb" -name busybox -type f -perm -u+x | head -1)
    [ -n "$bb" ] || die "busybox-static has no busybox binary"
    cp "$bb" "$root/bin/busybox"
    kmod=$dir/x/usr/lib/modules/$kver
    [ -d "$kmod" ] || kmod=$dir/x/lib/modules/$kver
    [ -d "$kmod/kernel" ] || die "$pkg has no modules directory for $kver"
    kmods_collect "$kmod" "$root/lib/modules" "$pkg" nvram uio uio_pci_generic vfio vfio_iommu_type1 vfio-pci
    order=("${KMODS_ORDER[@]}")
    printf '%s\n' "${order[@]}" > "$root/lib/modules/load-order"
    log "modules ${order[*]}"
    rm -rf "$dir/x" "$dir/bb"               # keep only vmlinuz + the initramfs tree (~20 MB)
    touch "$dir/.complete"
fi
[ "$fresh" = 1 ] && echo "$pkg" > "$cache/resolved"
# /init may change without a new kernel: rebuild the (cheap) cpio every time.
cp "$here/init" "$dir/root/init"; chmod 755 "$dir/root/init"
(cd "$dir/root" && find . -print0 | sort -z | rootbin cpio --null -o -H newc --owner=0:0 --quiet) > "$dir/initrd-base.cpio.tmp"
mv "$dir/initrd-base.cpio.tmp" "$dir/initrd-base.cpio"
echo "QI_ROOT=$R"
echo "QI_QEMU_VERSION=$ver"
echo "QI_KERNEL=$dir/vmlinuz"
echo "QI_INITRD=$dir/initrd-base.cpio"
