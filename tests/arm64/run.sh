#!/usr/bin/env bash
# tests/arm64/run.sh: Linux's own pl330.ko, in an arm64 KVM guest, driving the PL330 of vfio-sidecar.
#
#   host (x86) ── qemu-system-aarch64 -M virt,virtualization=on,gic-version=3 -cpu max (TCG, EL2: /dev/kvm inside)
#                 └─ outer Linux (Debian arm64 kernel), /init = tests/arm64/init-outer, per configuration:
#                      vfio-sidecar serve --device model:pl330 --eoi …   (aarch64, seccomp on)
#                      vmm-shim linux …  ── arm64 KVM guest: the same kernel, /init = tests/arm64/init-inner:
#                                           pl330.ko (AMBA probe through the backend) + sidecar_dmatest.ko
# Configurations: clear-register, first-access, exec-off (guest RAM mapped without EXEC: the fetch must fault).
#
# Steps (each failure exits non-zero naming it): setup (tests/arm64/setup.sh), cross-build
# (scripts/cross-aarch64.sh, unless AARCH64_VFIO_SIDECAR and AARCH64_VMM_SHIM name the binaries), outer
# initramfs, boot (with a watchdog), results. The whole console log is kept (path printed). Last line:
#   arm64 Linux pl330: T/T transfers verified, host interrupts per device event C (clear-register), F (first-access), exec-off fault seen: yes|no
# Exit 0 only when T >= 200 and all verified, C == 1.00, F > 1.5, the exec-off fault was seen (pl330's own
# "Reset Channel-" report in the inner dmesg and transfers failing with an error) and every hostile suite
# passed against the aarch64 backend in the outer machine (run before the configurations).
#
# Env: TIMEOUT [1500] s for the outer QEMU; ARM64_ARTIFACTS [<repo>/target/arm64-harness] where the console log
#      goes; CONFIGS [clear-register first-access exec-off]; DMATEST_COUNT [32] transfers per channel;
#      DMATEST_CHANNELS [4]; DMATEST_TIMEOUT_MS [60000] per transfer (exec-off: 3000); DMATEST_MAX_SIZE [1048576]; DMATEST_BENCH [1] (clear-register run only);
#      EXEC_OFF_COUNT [8] transfers per channel in the exec-off run; SHIM_EXTRA [] more vmm-shim linux options;
#      SHIM_TIMEOUT [600] s per inner run; OUTER_SMP [2];
#      OUTER_MEM [2G]; HOSTILE_SUITES [hostile_protocol hostile_liveness hostile_dma_irq hostile_memfd_shrink]
#      names of tests/tests/hostile_*.rs suites to cross-build (scripts/
#      cross-aarch64.sh with CROSS_CARGO_EXTRA="--test NAME...") and run; HOSTILE_TESTS [] aarch64 test executables of the hostile suites (cargo test --no-run
#      --target aarch64-unknown-linux-gnu): run in the outer machine against the aarch64 backend first.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
t0=${EPOCHREALTIME/./}
elapsed() { local d=$(( ${EPOCHREALTIME/./} - t0 )); printf '%d.%02d' $((d / 1000000)) $((d / 10000 % 100)); }
fail() { echo "arm64 harness: FAILED at step '$1': $2" >&2; exit 1; }
say() { echo "[host $(elapsed)s] $*"; }

# --- step: setup ---------------------------------------------------------------------------------------------
out=$("$here/setup.sh") || fail setup "tests/arm64/setup.sh failed (see its ERROR above)"
eval "$(grep '^ARM64_' <<< "$out")"
: "${ARM64_ROOT:?}" "${ARM64_IMAGE:?}" "${ARM64_INNER_INITRD:?}" "${ARM64_KVER:?}"
R=$ARM64_ROOT
say "setup done: kernel $ARM64_KVER"

# --- step: cross-build ---------------------------------------------------------------------------------------
if [ -z "${AARCH64_VFIO_SIDECAR:-}" ] || [ -z "${AARCH64_VMM_SHIM:-}" ]; then
    [ -x "$top/scripts/cross-aarch64.sh" ] || fail cross-build "scripts/cross-aarch64.sh missing"
    out=$("$top/scripts/cross-aarch64.sh" vfio-sidecar vmm-shim) || fail cross-build "scripts/cross-aarch64.sh failed (see above)"
    eval "$(grep '^AARCH64_' <<< "$out")"
fi
for b in "${AARCH64_VFIO_SIDECAR:-}" "${AARCH64_VMM_SHIM:-}"; do
    [ -f "$b" ] || fail cross-build "aarch64 binary '$b' missing"
    [ "$(od -An -tx1 -j18 -N2 "$b" | tr -d ' ')" = b700 ] || fail cross-build "$b is not an aarch64 ELF"
done
say "cross-build done: $AARCH64_VFIO_SIDECAR, $AARCH64_VMM_SHIM"
# the hostile suites as aarch64 test executables (cargo build --test NAME puts them in release/deps)
# default: every hostile suite that drives a backend process (hostile_fuzz_replay replays the fuzz corpus
# in-process from the source tree instead); HOSTILE_SUITES="" runs none
HOSTILE_SUITES=${HOSTILE_SUITES-hostile_protocol hostile_liveness hostile_dma_irq hostile_memfd_shrink}
if [ -n "$HOSTILE_SUITES" ] && [ -z "${HOSTILE_TESTS:-}" ]; then
    extra=""; for n in $HOSTILE_SUITES; do extra="$extra --test $n"; done
    CROSS_CARGO_EXTRA=$extra "$top/scripts/cross-aarch64.sh" vfio-sidecar-tests >/dev/null \
        || fail cross-build "scripts/cross-aarch64.sh vfio-sidecar-tests ($extra) failed (see above)"
    deps=$(dirname "$AARCH64_VFIO_SIDECAR")/deps
    HOSTILE_TESTS=""
    for n in $HOSTILE_SUITES; do
        t=$(find "$deps" -maxdepth 1 -type f -perm -u+x -name "$n-*" -printf '%T@ %p\n' | sort -n | tail -1 | cut -d' ' -f2)
        [ -n "$t" ] || fail cross-build "no aarch64 test executable $n-* in $deps"
        HOSTILE_TESTS="$HOSTILE_TESTS $t"
    done
    say "hostile suites cross-built: $HOSTILE_TESTS"
fi

# --- step: outer initramfs -------------------------------------------------------------------------------------
# Built in a work dir inside the root (its cpio, strip and readelf run there); removed on exit.
rtmp=/tmp/vfio-sidecar-arm64-run.$$
w=$R$rtmp
trap 'rm -rf "$w"' EXIT
mkdir -p "$w/root"/{bin,lib,dev,proc,sys,tmp,guest} || fail initramfs "cannot create $w"
inroot() { chroot "$R" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 "$@"; }
cp "$R/usr/bin/busybox" "$w/root/bin/busybox" || fail initramfs "no busybox in the root"
cp "$AARCH64_VFIO_SIDECAR" "$w/root/bin/vfio-sidecar" && cp "$AARCH64_VMM_SHIM" "$w/root/bin/vmm-shim" \
    || fail initramfs "cannot copy the aarch64 binaries"
inroot aarch64-linux-gnu-strip --strip-debug "$rtmp/root/bin/vfio-sidecar" "$rtmp/root/bin/vmm-shim" \
    || fail initramfs "aarch64-linux-gnu-strip failed"
# their glibc libraries (DT_NEEDED, recursively) from the root's aarch64 cross libc, and the dynamic loader
libdir=/usr/aarch64-linux-gnu/lib
needed() { inroot aarch64-linux-gnu-readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
interp=$(inroot aarch64-linux-gnu-readelf -l "$rtmp/root/bin/vfio-sidecar" | sed -n 's/.*interpreter: \(.*\)\]/\1/p')
[ "$interp" = /lib/ld-linux-aarch64.so.1 ] || fail initramfs "unexpected ELF interpreter '$interp'"
cp -L "$R$libdir/ld-linux-aarch64.so.1" "$w/root/lib/" || fail initramfs "no $libdir/ld-linux-aarch64.so.1 in the root"
todo=("$rtmp/root/bin/vfio-sidecar" "$rtmp/root/bin/vmm-shim"); libs=()
# stretch: aarch64 hostile-suite executables (HOSTILE_TESTS), run by the outer /init before the configs
hostile=()
for t in ${HOSTILE_TESTS:-}; do
    [ "$(od -An -tx1 -j18 -N2 "$t" 2>/dev/null | tr -d ' ')" = b700 ] || fail initramfs "HOSTILE_TESTS: $t is not an aarch64 executable"
    mkdir -p "$w/root/t/deps"; ln -sf /bin/vfio-sidecar "$w/root/t/vfio-sidecar"
    cp "$t" "$w/root/t/deps/" && inroot aarch64-linux-gnu-strip --strip-debug "$rtmp/root/t/deps/${t##*/}" \
        || fail initramfs "cannot copy $t"
    todo+=("$rtmp/root/t/deps/${t##*/}"); hostile+=("${t##*/}")
done
while [ ${#todo[@]} -gt 0 ]; do
    f=${todo[0]}; todo=("${todo[@]:1}")
    for l in $(needed "$f"); do
        [ -e "$w/root/lib/$l" ] && continue
        cp -L "$R$libdir/$l" "$w/root/lib/$l" || fail initramfs "library $l (needed by $(basename "$f")) not in $libdir"
        libs+=("$l"); todo+=("$libdir/$l")
    done
done
cp "$ARM64_IMAGE" "$w/root/guest/Image" && cp "$ARM64_INNER_INITRD" "$w/root/guest/inner.cpio" \
    || fail initramfs "cannot copy the inner kernel/initramfs"
install -m755 "$here/init-outer" "$w/root/init"
dm="dmatest_count=${DMATEST_COUNT:-32} dmatest_channels=${DMATEST_CHANNELS:-4} dmatest_max_size=${DMATEST_MAX_SIZE:-1048576} dmatest_timeout_ms=${DMATEST_TIMEOUT_MS:-60000}"
cat > "$w/root/harness.env" <<EOF
CONFIGS="${CONFIGS:-clear-register first-access exec-off}"
DMATEST_ARGS="$dm"
INNER_APPEND="console=ttyS0 panic=-1 quiet"
SHIM_TIMEOUT=${SHIM_TIMEOUT:-600}
SHIM_EXTRA="${SHIM_EXTRA:-}"
EXEC_OFF_COUNT=${EXEC_OFF_COUNT:-8}
BENCH=${DMATEST_BENCH:-1}
PROBE=1
EOF
inroot sh -c "cd $rtmp/root && find . | LC_ALL=C sort | cpio -o -H newc --owner=0:0 --quiet" > "$w/outer.cpio" \
    || fail initramfs "cpio of the outer initramfs failed"
cp "$ARM64_IMAGE" "$w/Image"
say "outer initramfs: $(du -h "$w/outer.cpio" | cut -f1) (libs: ${libs[*]})"

# --- step: boot ------------------------------------------------------------------------------------------------
art=${ARM64_ARTIFACTS:-$top/target/arm64-harness}
mkdir -p "$art" || fail boot "cannot create $art"
log=$art/console.log
: > "$log"
say "booting the outer machine (console log: $log)"
# panic=-1 + -no-reboot: a guest panic ends QEMU at once; the watchdog (timeout) ends a hang.
timeout --foreground -k 10 "${TIMEOUT:-1500}" chroot "$R" qemu-system-aarch64 \
    -M virt,virtualization=on,gic-version=3 -cpu max -smp "${OUTER_SMP:-2}" -m "${OUTER_MEM:-2G}" \
    -nographic -no-reboot -kernel "$rtmp/Image" -initrd "$rtmp/outer.cpio" \
    -append "console=ttyAMA0 panic=-1 quiet" < /dev/null 2>&1 |
while IFS= read -r line; do
    line=${line%$'\r'}
    printf '[host %ss] %s\n' "$(elapsed)" "$line"
    printf '%s\n' "$line" >> "$log"
done
st=${PIPESTATUS[0]}
say "qemu exited with status $st (124 = watchdog timeout); console log: $log"
grep -q '^OUTER-DONE' "$log" || fail boot "the outer machine never finished (qemu status $st); see $log"

# --- step: results ---------------------------------------------------------------------------------------------
result() { grep "^ARM64-RESULT config=$1 " "$log" | tail -1 | tr ' ' '\n' | sed -n "s/^$2=//p"; }
irq() { grep "^ARM64-IRQ config=$1 " "$log" | tail -1 | tr ' ' '\n' | sed -n "s/^$2=//p"; }
ratio() { awk -v h="$1" -v e="$2" 'BEGIN { if (e > 0) printf "%.2f", h / e; else print "n/a" }'; }
errs=()
V=0; T=0
for c in clear-register first-access; do
    v=$(result $c verified); t=$(result $c planned)
    case $v$t in *[!0-9]*|'') errs+=("$c: no transfer result from the inner machine"); continue ;; esac
    V=$((V + v)); T=$((T + t))
    [ "$v" = "$t" ] || errs+=("$c: only $v/$t transfers verified ($(result $c errors) errors, $(result $c faults) faults)")
    [ "$(result $c shim_rc)" = 0 ] || errs+=("$c: vmm-shim exited with status $(result $c shim_rc)")
done
[ "$T" -ge 200 ] || errs+=("only $T transfers planned (need >= 200)")
C=$(ratio "$(irq clear-register host)" "$(irq clear-register events)")
F=$(ratio "$(irq first-access host)" "$(irq first-access events)")
[ "$C" = 1.00 ] || errs+=("clear-register: host interrupts per device event $C, expected 1.00")
awk -v f="$F" 'BEGIN { exit !(f + 0 > 1.5) }' || errs+=("first-access: host interrupts per device event $F, expected > 1.5")
# exec-off: the fetch fault raises irq_abort, Linux's ISR reports it ("Reset Channel-N CS-… FTC-…") and kills
# the thread, the requests fail (the module sees wrong data, an error, not a timeout), nothing hangs.
fe=$(result exec-off faults); ee=$(result exec-off errors); ve=$(result exec-off verified)
rep=$(result exec-off pl330_report)
seen=no
case $fe$ee$ve in *[!0-9]*|'') errs+=("exec-off: no transfer result from the inner machine") ;;
    *) [ "$ee" -gt 0 ] && [ "$rep" = yes ] && seen=yes
       [ "$ve" = 0 ] || errs+=("exec-off: $ve transfers verified although guest RAM was mapped without EXEC") ;; esac
[ "$rep" = yes ] || errs+=("exec-off: no 'Reset Channel-' from pl330's ISR in the inner dmesg (irq_abort not delivered?)")
[ "${ee:-0}" -gt 0 ] 2>/dev/null || errs+=("exec-off: no transfer failed with an error (verified ${ve:-?}, errors ${ee:-?}, faults/timeouts ${fe:-?})")
[ "$(result exec-off shim_rc)" = 0 ] || errs+=("exec-off: vmm-shim exited with status $(result exec-off shim_rc)")
say "exec-off: pl330's own fault report in the inner dmesg: $rep; $ee transfers failed with an error, $fe timed out"
grep -q 'INNER-AMBA .*driver=dma-pl330' "$log" || errs+=("no AMBA device bound to dma-pl330 in the inner machine")
grep -q 'Loaded driver for PL330 DMAC-' "$log" || errs+=("no 'Loaded driver for PL330 DMAC-' in the inner dmesg")
# figures for docs/benchmarks.md (not asserted: TCG timing says nothing about hardware)
grep -a 'INNER-BENCH sidecar_dmatest: bench' "$log" | tr -d '\r' | tr ' ' '\n' | awk -F= '
    $1 == "size" { s = $2 } $1 == "n" { n = $2 } $1 == "ns" { ns = $2 }
    $1 == "ok" { if (ns > 0) printf "arm64 bench: %8d B  %3d transfers  %8.1f transfers/s  %7.2f MB/s  (%d verified)\n",
                                 s, n, n * 1e9 / ns, s * n * 1e3 / ns, $2 }'
for c in clear-register first-access exec-off; do
    # MMIO exits of the PL330 region (vmm-shim's --json summary; probe included) per completed transfer
    # (= device event: the bench's and the test's)
    j=$(grep -a "^ARM64-JSON config=$c " "$log" | tail -1)
    m=$(sed -n 's/.*"mmio_per_region": *{ *"0": *\([0-9]*\).*/\1/p' <<< "$j")
    n=$(irq $c events)
    per="per completed transfer"; [ "$c" = exec-off ] && per="per device event (abort interrupts: no transfer completes)"
    [ -n "$m" ] && [ "${n:-0}" -gt 0 ] && say "$c: $m MMIO exits of the PL330 region, $(ratio "$m" "$n") $per"
done
for t in "${hostile[@]}"; do
    n=${t%-*}; l=$(grep -a "^ARM64-HOSTILE suite=$n " "$log" | tail -1)
    say "hostile suite on aarch64: ${l:-$n: no result}"
    case $l in *" rc=0 "*) ;; *) errs+=("hostile suite $n failed on the aarch64 backend: ${l:-no result}") ;; esac
done
for c in clear-register first-access exec-off; do
    h=$(irq $c host); e=$(irq $c events)
    [ -n "$e" ] && say "$c: backend IRQ counters: $e device events, $h host interrupts ($(ratio "$h" "$e") per event), unmasks $(irq $c unmasks), refires $(irq $c refires)"
done
for e in "${errs[@]}"; do echo "arm64 harness: FAILED at step 'results': $e" >&2; done
echo "arm64 Linux pl330: $V/$T transfers verified, host interrupts per device event $C (clear-register), $F (first-access), exec-off fault seen: $seen"
[ ${#errs[@]} = 0 ]
