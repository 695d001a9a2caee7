#!/bin/sh
# Runs inside the guest (as /test.sh) after /init bound edu to vfio-pci. One boot, every check.
# Exit status = number of failed phases (0 = all pass).
rc=0
echo "== real-vfio: direct (vfio::open + Device impl in-process)"
/bin/real-vfio-client direct || rc=$((rc + 1))
echo "== real-vfio: e2e (vfio-sidecar serve + vfio-user client)"
/bin/real-vfio-client e2e /bin/vfio-sidecar || rc=$((rc + 1))
exit $rc
