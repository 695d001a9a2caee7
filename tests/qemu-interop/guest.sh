#!/bin/sh
# Runs inside each guest of run.sh (as /guest.sh BOOT, from /init). The checks are the qemu-guest
# binary's; this script only sequences them. Exit status = number of failed modes.
g=/bin/qemu-guest
rc=0
run() { $g "$@" || rc=$((rc + 1)); }
case $1 in
normal)
    # Stage byte in CMOS RAM (survives the machine reset, zero in a new QEMU).
    stage=$($g stage) || { echo "QI-CHECK FAIL reboot-clean: cannot read the stage byte"; exit 1; }
    if [ "$stage" = 0 ]; then
        run pci normal
        run uio
        run dirty
        $g stage 1 >/dev/null
        echo "[guest] rebooting (machine reset)"
        sync
        reboot -f
        sleep 30
        exit 1
    fi
    $g stage 0 >/dev/null
    run clean
    run pci reset
    # QEMU is killed from the host here (the backend must keep serving the next one).
    echo QI-READY-TO-KILL
    sleep 600 ;;
viommu)
    run pci viommu nodma
    run vfio ;;
plain)
    run pci plain ;;
*)
    echo "QI-CHECK FAIL usage: guest.sh normal|viommu|plain, not '$1'"; rc=1 ;;
esac
exit $rc
