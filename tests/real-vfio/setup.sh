#!/bin/bash
# tests/real-vfio/setup.sh: one-time (cached) preparation for run.sh.
#
#  * apt packages qemu-system-x86, busybox-static, cpio (--no-install-recommends) if missing;
#  * the kernel that `linux-image-cloud-amd64` currently depends on: `apt-get download` + `dpkg-deb -x`
#    (downloaded, never installed), cached under cache/<package>/ keyed by the package name;
#  * cache/<package>/initrd-base.cpio: busybox + /init + only the modules VFIO needs
#    (vfio, vfio_iommu_type1, vfio-pci and their modinfo `depends=`), in load order.
#
# Prints `REAL_VFIO_KERNEL=<path>` and `REAL_VFIO_INITRD=<path>` on its last two lines.
# Any missing package or failed download is an error (exit != 0) with a message: never a silent skip.
set -euo pipefail
# shellcheck source=../lib/kmods.sh
. "$(dirname "$0")/../lib/kmods.sh"
here=$(cd "$(dirname "$0")" && pwd)
cache=$here/cache
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9                                    # concurrent cargo test runs share one cache
die() { echo "real-vfio setup: ERROR: $*" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
{ [ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -x poweroff >/dev/null; } || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing packages: ${need[*]} (run as root, or: apt-get install --no-install-recommends ${need[*]})"
    echo "real-vfio setup: installing ${need[*]}" >&2
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
        || die "apt-get install ${need[*]} failed"
fi
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 still missing after install"
file /bin/busybox 2>/dev/null | grep -q 'dynamically linked' && die "/bin/busybox is not static: install busybox-static"

meta=linux-image-cloud-amd64
# apt-cache takes 1-2 s: reuse the last resolution for a day (REAL_VFIO_REFRESH=1 forces a lookup).
pkg=
if [ "${REAL_VFIO_REFRESH:-0}" != 1 ] && [ -n "$(find "$cache/resolved" -mmin -1440 2>/dev/null)" ]; then
    read -r pkg < "$cache/resolved" || pkg=
    [ -f "$cache/$pkg/.complete" ] || pkg=
fi
fresh=0
if [ -z "$pkg" ]; then
    fresh=1
    pkg=$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
fi
if [ -z "$pkg" ]; then
    # apt lists may be missing on a fresh machine
    [ "$(id -u)" = 0 ] && apt-get update -qq || true
    pkg=$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
fi
[ -n "$pkg" ] || die "cannot resolve $meta to a kernel package (apt-cache depends $meta gave nothing; apt-get update?)"
kver=${pkg#linux-image-}
dir=$cache/$pkg
if [ ! -f "$dir/.complete" ]; then
    rm -rf "$dir"; mkdir -p "$dir/deb"
    echo "real-vfio setup: downloading $pkg" >&2
    (cd "$dir/deb" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null) || die "apt-get download $pkg failed"
    deb=$(ls "$dir"/deb/*.deb 2>/dev/null | head -1)
    [ -n "$deb" ] || die "apt-get download $pkg produced no .deb"
    dpkg-deb -x "$deb" "$dir/x" || die "dpkg-deb -x $deb failed"
    cfg=$dir/x/boot/config-$kver
    [ -f "$cfg" ] || die "$pkg has no boot/config-$kver"
    for opt in CONFIG_VFIO= CONFIG_VFIO_PCI= CONFIG_VFIO_IOMMU_TYPE1= CONFIG_INTEL_IOMMU=y CONFIG_IRQ_REMAP=y; do
        grep -q "^$opt" "$cfg" || die "$pkg: kernel config lacks $opt"
    done
    cp "$dir/x/boot/vmlinuz-$kver" "$dir/vmlinuz"

    # initramfs: busybox, /init, the modules (dependencies first)
    root=$dir/root
    mkdir -p "$root"/{bin,dev,proc,sys,tmp,lib/modules}
    cp /bin/busybox "$root/bin/busybox"
    kmod=$dir/x/lib/modules/$kver
    mods=(vfio vfio_iommu_type1 vfio-pci)
    # iommufd (/dev/iommu) when the kernel has it as a module (CONFIG_IOMMUFD=m): the
    # backend's IommuBackend::Auto then takes it. No Debian kernel up to 7.2 sets it.
    if grep -q '^CONFIG_IOMMUFD=m' "$cfg"; then mods+=(iommufd); fi
    kmods_collect "$kmod" "$root/lib/modules" "$pkg" "${mods[@]}"
    order=("${KMODS_ORDER[@]}")
    printf '%s\n' "${order[@]}" > "$root/lib/modules/load-order"
    echo "real-vfio setup: modules ${order[*]}" >&2
    rm -rf "$dir/x" "$dir/deb"              # keep only vmlinuz + initrd (~17 MB)
    touch "$dir/.complete"
fi
[ "$fresh" = 1 ] && echo "$pkg" > "$cache/resolved"
# /init may change without a new kernel: rebuild the (cheap) cpio every time.
cp "$here/init" "$dir/root/init"; chmod 755 "$dir/root/init"
(cd "$dir/root" && find . -print0 | sort -z | cpio --null -o -H newc --owner=0:0 --quiet) > "$dir/initrd-base.cpio.tmp"
mv "$dir/initrd-base.cpio.tmp" "$dir/initrd-base.cpio"
echo "REAL_VFIO_KERNEL=$dir/vmlinuz"
echo "REAL_VFIO_INITRD=$dir/initrd-base.cpio"
