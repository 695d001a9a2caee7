#!/bin/bash
# tests/qemu-interop/run.sh BACKEND GUEST
#
# QEMU >= 10.1 as a real vfio-user client of vfio-sidecar. Starts `BACKEND serve --device model:edu`
# (the host vfio-sidecar binary, seccomp on by default) on a socket, then boots Linux guests (the
# trixie cloud kernel, q35, TCG) in the trixie root's QEMU with `-device vfio-user-pci` on that socket,
# one after another against the same backend process. GUEST is the `qemu-guest` binary: it runs inside
# each guest (with its `ldd` libraries) and prints `QI-CHECK PASS|FAIL id: detail` lines.
#
#   normal  memory-backend-memfd share=on: IDs, BAR0, liveness, factorial, DMA both ways, INTx through
#           uio_pci_generic; state left in the device, guest reboot (machine reset -> DEVICE_RESET),
#           state clean and the device working after it; then QEMU is killed with SIGKILL
#   viommu  a new QEMU attached to the same backend; intel-iommu,caching-mode=on: guest vfio-pci
#           (INTx in default mode, MSI, DMA at an IOVA, unmapped IOVA blocked)
#   plain   guest RAM without share=on (fd-less DMA_MAPs): IDs, registers, DMA both ways
# plus host-side checks: QEMU version, the backend's seccomp mode, no DMA error lines on QEMU's stderr
# (every boot) or in the backend's log (normal and plain boots; the vIOMMU boot provokes a DMA fault
# on purpose), the backend alive after QEMU was killed, its exit.
#
# The LAST line of the output is the summary
#   QEMU <version> vfio-user-pci: P/N checks passed[; failed: id id ...]
# Every expected check that did not report counts as failed. Exit status 0 iff P = N.
# A setup error (no trixie root, download failure) exits 1 with the reason: never a silent skip.
# Env: QI_TIMEOUT [150] seconds per QEMU run; QI_LOG_DIR [] keep serial/stderr/backend logs there;
#      QI_BOOTS ["normal viommu plain"] a subset, for debugging (the summary then counts fewer checks).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# = 2 ] && [ -x "$1" ] && [ -x "$2" ] || { echo "usage: $0 BACKEND GUEST  (both executables)" >&2; exit 2; }
backend_bin=$(realpath "$1"); guest_bin=$(realpath "$2")
t0=${EPOCHREALTIME/./}
elapsed() { local d=$(( ${EPOCHREALTIME/./} - t0 )); printf '%d.%01d' $((d / 1000000)) $((d / 100000 % 10)); }
log() { echo "[host $(elapsed)s] $*"; }

boots=${QI_BOOTS:-normal viommu plain}
# The checks each part must report (ids of qemu-guest's QI-CHECK lines and of the host's own).
pci_ids() { local p; for p in ids enable bar0-id liveness factorial; do echo "$1-$p"; done; [ "${2:-}" = nodma ] || echo "$1-dma"; }
expected_normal="$(pci_ids normal) uio-bind uio-no-spurious uio-intx uio-ack-quiet uio-intx-again reboot-dirty
    reboot-clean $(pci_ids reset) normal-qemu-quiet normal-backend-quiet qemu-killed-backend-alive"
expected_viommu="$(pci_ids viommu nodma) vfio-bind vfio-open vfio-intx vfio-intx-unmask vfio-msi vfio-dma vfio-dma-unmapped
    viommu-qemu-exit viommu-qemu-quiet"
expected_plain="$(pci_ids plain) plain-qemu-exit plain-qemu-quiet plain-backend-quiet"
expected="qemu-version backend-seccomp backend-exit"
for b in $boots; do v=expected_$b; expected="$expected ${!v}"; done

declare -A result=()
record() { # id PASS|FAIL detail
    result[$1]=$2
    echo "QI-CHECK $2 $1: $3"
}
summary() {
    local pass=0 n=0 failed=() id
    for id in $expected; do
        n=$((n + 1))
        if [ "${result[$id]:-}" = PASS ]; then pass=$((pass + 1)); else failed+=("$id"); fi
    done
    local line="QEMU ${QI_QEMU_VERSION:-unknown} vfio-user-pci: $pass/$n checks passed"
    [ ${#failed[@]} -gt 0 ] && line="$line; failed: ${failed[*]}"
    echo "$line"
    [ "$pass" = "$n" ]
}

if [ "$(id -u)" != 0 ]; then
    echo "qemu-interop: needs root (QEMU runs in the trixie root by chroot; scripts/trixie-root.sh uses debootstrap)" >&2
    summary; exit 1
fi
out=$("$here/setup.sh") || { echo "qemu-interop: setup.sh failed (see above)" >&2; summary; exit 1; }
eval "$(grep '^QI_' <<< "$out")"
: "${QI_ROOT:?}" "${QI_KERNEL:?}" "${QI_INITRD:?}" "${QI_QEMU_VERSION:?}"
R=$QI_ROOT
record qemu-version PASS "QEMU $QI_QEMU_VERSION (trixie root $R) lists vfio-user-pci"
log "setup done: QEMU $QI_QEMU_VERSION, kernel $(basename "$(dirname "$QI_KERNEL")")"

# The work directory lives inside the root: QEMU runs there by chroot and sees it as /tmp/<name>.
work=$(mktemp -d "$R/tmp/qemu-interop.XXXXXX") || exit 1
gwork=/tmp/${work##*/}
bpid=
qpid=
cleanup() {
    [ -n "$qpid" ] && kill -9 "$qpid" 2>/dev/null
    [ -n "$bpid" ] && kill -9 "$bpid" 2>/dev/null
    if [ -n "${QI_LOG_DIR:-}" ]; then mkdir -p "$QI_LOG_DIR" && cp "$work"/*.log "$QI_LOG_DIR"/ 2>/dev/null; fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

# initramfs = the cached base + guest.sh + the guest binary with its libraries
mkdir -p "$work/extra/bin"
install -m755 "$here/guest.sh" "$work/extra/guest.sh"
install -m755 "$guest_bin" "$work/extra/bin/qemu-guest"
strip --strip-debug "$work/extra/bin/qemu-guest" 2>/dev/null || true
for lib in $(ldd "$guest_bin" | grep -o '/[^ ]*'); do
    mkdir -p "$work/extra$(dirname "$lib")"; cp -L "$lib" "$work/extra$lib"
done
cpio_bin() {
    "$R/lib64/ld-linux-x86-64.so.2" --library-path "$R/lib/x86_64-linux-gnu:$R/usr/lib/x86_64-linux-gnu" \
        "$R/usr/bin/cpio" "$@"
}
(cd "$work/extra" && find . -print0 | cpio_bin --null -o -H newc --owner=0:0 --quiet) > "$work/extra.cpio" \
    || { echo "qemu-interop: cannot build the guest cpio" >&2; exit 1; }
cat "$QI_INITRD" "$work/extra.cpio" > "$work/initrd.cpio"
cp "$QI_KERNEL" "$work/vmlinuz"

# ---- the backend: one process for every QEMU below
sock=$work/edu.sock
[ ${#sock} -lt 100 ] || { echo "qemu-interop: socket path $sock is too long for a Unix socket (set VFIO_SIDECAR_CACHE to a shorter directory)" >&2; summary; exit 1; }
"$backend_bin" serve --socket "$sock" --device model:edu 2> "$work/backend.log" &
bpid=$!
for _ in $(seq 100); do grep -q 'listening on' "$work/backend.log" && break; sleep 0.1; done
if ! grep -q 'listening on' "$work/backend.log"; then
    echo "qemu-interop: the backend did not start:" >&2; cat "$work/backend.log" >&2; summary; exit 1
fi
sc=$(awk '/^Seccomp:/ {print $2}' "/proc/$bpid/status")
[ "$sc" = 2 ] && record backend-seccomp PASS "backend pid $bpid runs with Seccomp: 2 (filter)" \
              || record backend-seccomp FAIL "backend pid $bpid Seccomp: ${sc:-?}"
log "backend up: $(grep -m1 'listening on' "$work/backend.log" | sed 's/^\[[^]]*\] //')"

# qemu NAME KILL_MARKER QEMU-ARGS...: runs QEMU in the root, serial -> NAME.serial.log, stderr ->
# NAME.qemu.log; kills it with SIGKILL when the serial shows KILL_MARKER (if not empty) or after
# QI_TIMEOUT. Sets qemu_status. The guest's QI-CHECK lines are recorded.
qemu() {
    local name=$1 marker=$2; shift 2
    local serial=$work/$name.serial.log deadline=$(( $(date +%s) + ${QI_TIMEOUT:-150} ))
    : > "$serial"
    log "$name: chroot $R qemu-system-x86_64 $*"
    chroot "$R" qemu-system-x86_64 "$@" < /dev/null > "$serial" 2> "$work/$name.qemu.log" &
    qpid=$!
    while kill -0 "$qpid" 2>/dev/null; do
        if [ -n "$marker" ] && grep -q "$marker" "$serial"; then
            log "$name: guest printed $marker: kill -9 QEMU"; kill -9 "$qpid"; break
        fi
        [ "$(date +%s)" -ge "$deadline" ] && { log "$name: timeout: kill -9 QEMU"; kill -9 "$qpid"; break; }
        sleep 0.2
    done
    wait "$qpid" 2>/dev/null; qemu_status=$?; qpid=
    tr -d '\r' < "$serial" | sed "s/^/  [$name] /"
    log "$name: QEMU exited with status $qemu_status"
    local w st id detail
    while read -r w st id detail; do
        record "${id%:}" "$st" "$detail" > /dev/null
    done < <(tr -d '\r' < "$serial" | grep -a '^QI-CHECK ')
}

# Common QEMU arguments; the guest runs `guest.sh BOOT`.
qargs() { # BOOT APPEND-EXTRA
    local append="console=ttyS0 panic=-1 mitigations=off cryptomgr.notests tsc=reliable no_timer_check nokaslr quiet loglevel=3 $2 -- $1"
    printf '%s\n' -accel tcg -cpu qemu64 -smp 1 -m 256 \
        -kernel "$gwork/vmlinuz" -initrd "$gwork/initrd.cpio" -append "$append" \
        -display none -serial stdio -monitor none -nodefaults
}
vfio_user_dev="{\"driver\":\"vfio-user-pci\",\"socket\":{\"path\":\"$gwork/edu.sock\",\"type\":\"unix\"}}"
memfd=(-object memory-backend-memfd,id=mem,size=256M,share=on -machine q35,memory-backend=mem)

# Lines of the backend log from line $1 on that are warnings or errors.
backend_noise() { tail -n "+$1" "$work/backend.log" | grep -aE '^\[[^]]* (WARN|ERROR) ' ; }
# QEMU stderr lines about DMA: its vfio-user error replies (DMA_MAP = command 2, DMA_UNMAP = 3),
# failed vfio_container_dma_(un)map calls. ("Could not enable error recovery": no AER, not DMA.)
qemu_noise() { grep -aiE 'dma|error reply|= -[0-9]+ ' "$work/$1.qemu.log"; }
quiet_check() { # ID WHAT LINES
    if [ -z "$3" ]; then record "$1" PASS "no DMA/error lines in $2"
    else record "$1" FAIL "$(wc -l <<< "$3") lines in $2, first: $(head -1 <<< "$3")"; fi
}

for boot in $boots; do
    bl=$(( $(wc -l < "$work/backend.log") + 1 ))
    case $boot in
    normal)
        mapfile -t a < <(qargs normal "")
        qemu normal QI-READY-TO-KILL "${a[@]}" "${memfd[@]}" -device "$vfio_user_dev"
        quiet_check normal-qemu-quiet "QEMU's stderr" "$(qemu_noise normal)"
        quiet_check normal-backend-quiet "the backend's log (default level)" "$(backend_noise "$bl")"
        sleep 1
        if [ "$qemu_status" = 137 ] && kill -0 "$bpid" 2>/dev/null && [ -S "$sock" ]; then
            record qemu-killed-backend-alive PASS "QEMU killed by SIGKILL (137); backend pid $bpid alive, socket present"
        else
            record qemu-killed-backend-alive FAIL "QEMU status $qemu_status (137 = our SIGKILL); backend alive: $(kill -0 "$bpid" 2>/dev/null && echo yes || echo no)"
        fi ;;
    viommu)
        mapfile -t a < <(qargs viommu "intel_iommu=on")
        qemu viommu "" "${a[@]}" "${memfd[@]}" -device intel-iommu,caching-mode=on,intremap=on -device "$vfio_user_dev" -no-reboot
        [ "$qemu_status" = 0 ] && grep -aq 'QEMU-INTEROP-RESULT rc=' "$work/viommu.serial.log" \
            && record viommu-qemu-exit PASS "guest powered off, QEMU exit 0" \
            || record viommu-qemu-exit FAIL "QEMU status $qemu_status"
        # (the backend logs the deliberate DMA to an unmapped IOVA: only QEMU's side is checked)
        quiet_check viommu-qemu-quiet "QEMU's stderr" "$(qemu_noise viommu)" ;;
    plain)
        mapfile -t a < <(qargs plain "")
        qemu plain "" "${a[@]}" -machine q35 -device "$vfio_user_dev" -no-reboot
        [ "$qemu_status" = 0 ] && grep -aq 'QEMU-INTEROP-RESULT rc=' "$work/plain.serial.log" \
            && record plain-qemu-exit PASS "guest powered off, QEMU exit 0" \
            || record plain-qemu-exit FAIL "QEMU status $qemu_status"
        quiet_check plain-qemu-quiet "QEMU's stderr" "$(qemu_noise plain)"
        quiet_check plain-backend-quiet "the backend's log (default level)" "$(backend_noise "$bl")" ;;
    *) echo "qemu-interop: unknown boot $boot" >&2 ;;
    esac
    for f in "$work/$boot.qemu.log"; do [ -s "$f" ] && sed "s/^/  [$boot qemu stderr] /" "$f"; done
done

# ---- the backend still serves and exits cleanly on SIGTERM
kill -TERM "$bpid"
for _ in $(seq 50); do kill -0 "$bpid" 2>/dev/null || break; sleep 0.1; done
wait "$bpid"; bst=$?; bpid=
[ "$bst" = 0 ] && record backend-exit PASS "backend exited 0 on SIGTERM after every boot" \
               || record backend-exit FAIL "backend exit status $bst"
sed 's/^/  [backend] /' "$work/backend.log" | tail -40
for id in $expected; do [ -n "${result[$id]:-}" ] || echo "QI-CHECK FAIL $id: not reported"; done
log "done"
summary
