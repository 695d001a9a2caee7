#!/usr/bin/env bash
# Checks the unit files with `systemd-analyze verify` (skips, exit 0, when it is absent).
# ExecStart must name an existing executable, so the units are copied to a temporary
# directory with /usr/bin/vfio-sidecar replaced by the built binary (argument 1, default
# target/debug/vfio-sidecar) and instantiated as vfio-sidecar@verify.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$(realpath "${1:-$here/../../target/debug/vfio-sidecar}")"
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "skipped: systemd-analyze not installed"
    exit 0
fi
[ -x "$bin" ] || { echo "no executable $bin (cargo build -p vfio-sidecar first)" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for u in socket service; do
    sed "s#/usr/bin/vfio-sidecar#$bin#g" "$here/vfio-sidecar@.$u" >"$tmp/vfio-sidecar@.$u"
    cp "$tmp/vfio-sidecar@.$u" "$tmp/vfio-sidecar@verify.$u"
done
out="$(cd "$tmp" && systemd-analyze verify --man=no ./vfio-sidecar@verify.socket ./vfio-sidecar@verify.service 2>&1)" || {
    echo "$out" >&2
    exit 1
}
# verify exits 0 on unknown keys and bad values (it only warns): treat any output as failure.
if [ -n "$out" ]; then
    echo "$out" >&2
    exit 1
fi
echo "systemd-analyze verify: ok"
