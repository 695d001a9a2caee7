#!/bin/bash
# tests/real-vfio/run.sh [-f FILE]... SCRIPT
#
# Boots the cached Debian cloud kernel + initramfs (setup.sh) in QEMU 7.2 TCG: q35,
# intel-iommu (intremap=on, so type1 needs no allow_unsafe_interrupts) and QEMU's `edu` PCI
# device behind a pcie-root-port (so VFIO_DEVICE_RESET works: secondary bus reset).
# The guest's /init binds edu to vfio-pci and runs SCRIPT (copied to /test.sh) as root.
#   -f FILE  put FILE in the guest's /bin; a dynamic executable gets its `ldd` libraries
#            at the same paths (appended to the initrd as a second cpio archive)
# Exit status: SCRIPT's, taken from the serial marker "REAL-VFIO-RESULT rc=N"; 125 if the guest
# never printed it (QEMU crashed, guest panic, TIMEOUT). Setup errors exit 1 with a message.
# Env: TIMEOUT [180] seconds for QEMU; LOG [] copy the serial log there; VERBOSE [0] 1 = verbose
#      kernel boot; QEMU [qemu-system-x86_64]; SKIP_SETUP [0] 1 = trust REAL_VFIO_KERNEL/INITRD;
#      REAL_VFIO_IOMMU [] auto|container|iommufd, passed to the guest's environment (the
#      client's direct phase opens the device with that VfioOptions::iommu).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
files=()
while [ $# -gt 0 ]; do
    case $1 in
        -f) files+=("$2"); shift 2 ;;
        --) shift; break ;;
        -*) echo "usage: $0 [-f FILE]... SCRIPT" >&2; exit 2 ;;
        *) break ;;
    esac
done
[ $# = 1 ] && [ -f "$1" ] || { echo "usage: $0 [-f FILE]... SCRIPT  (SCRIPT must be a file)" >&2; exit 2; }
script=$1
t0=${EPOCHREALTIME/./}
elapsed() { local d=$(( ${EPOCHREALTIME/./} - t0 )); printf '%d.%02d' $((d / 1000000)) $((d / 10000 % 100)); }

if [ "${SKIP_SETUP:-0}" != 1 ]; then
    out=$("$here/setup.sh") || { echo "real-vfio: setup.sh failed (see above)" >&2; exit 1; }
    eval "$(grep '^REAL_VFIO_' <<< "$out")"
fi
: "${REAL_VFIO_KERNEL:?}" "${REAL_VFIO_INITRD:?}"
echo "[host $(elapsed)s] setup done: $(basename "$(dirname "$REAL_VFIO_KERNEL")")"

work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root/bin"
install -m755 "$script" "$work/root/test.sh"
for f in "${files[@]}"; do
    [ -f "$f" ] || { echo "real-vfio: $f: no such file" >&2; exit 1; }
    install -m755 "$f" "$work/root/bin/"
    # debug builds are ~50 MB each, mostly DWARF: strip it (symbols stay for backtraces)
    command -v strip >/dev/null && strip --strip-debug "$work/root/bin/$(basename "$f")" 2>/dev/null
    if ldd "$f" >/dev/null 2>&1; then
        for lib in $(ldd "$f" | grep -o '/[^ ]*'); do
            mkdir -p "$work/root$(dirname "$lib")"; cp -L "$lib" "$work/root$lib"
        done
    fi
done
(cd "$work/root" && find . -print0 | cpio --null -o -H newc --owner=0:0 --quiet) > "$work/extra.cpio"
cat "$REAL_VFIO_INITRD" "$work/extra.cpio" > "$work/initrd.cpio"

append="console=ttyS0 panic=-1 intel_iommu=on mitigations=off cryptomgr.notests tsc=reliable no_timer_check nokaslr"
[ "${VERBOSE:-0}" = 1 ] || append="$append quiet loglevel=3"
# The kernel hands unknown key=value words to /init as environment: the client reads it.
[ -n "${REAL_VFIO_IOMMU:-}" ] && append="$append REAL_VFIO_IOMMU=$REAL_VFIO_IOMMU"
# panic=-1 + -no-reboot: a guest panic ends QEMU at once instead of hanging until TIMEOUT.
timeout --foreground -k 5 "${TIMEOUT:-180}" "${QEMU:-qemu-system-x86_64}" \
    -accel tcg -M q35 -cpu qemu64 -m 512 -smp 1 \
    -device intel-iommu,intremap=on \
    -device pcie-root-port,id=rp1,chassis=1 -device edu,bus=rp1 \
    -kernel "$REAL_VFIO_KERNEL" -initrd "$work/initrd.cpio" -append "$append" \
    -display none -serial stdio -monitor none -no-reboot -nodefaults < /dev/null 2>&1 |
while IFS= read -r line; do
    line=${line%$'\r'}
    printf '[host %ss] %s\n' "$(elapsed)" "$line"
    printf '%s\n' "$line" >> "$work/serial.log"
done
st=${PIPESTATUS[0]}
[ -n "${LOG:-}" ] && cp "$work/serial.log" "$LOG"
echo "[host $(elapsed)s] qemu exited with status $st"
rc=$(grep -ao 'REAL-VFIO-RESULT rc=[0-9]*' "$work/serial.log" 2>/dev/null | tail -1 | cut -d= -f2)
if [ -z "$rc" ]; then
    echo "real-vfio: the guest reported no result (qemu status $st; 124 = timeout)" >&2
    exit 125
fi
exit "$rc"
