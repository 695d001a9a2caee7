#!/usr/bin/env bash
# scripts/dt-tools.sh: what the device-tree schema tests need, in a cache of the project's own.
#
#  * dt-schema (dt-validate, dt-mk-schema) from PyPI in a venv under the cache, never in the system Python
#    (Debian's python3 refuses `pip install` outside a venv, PEP 668). Needs python3's venv module
#    (Debian package python3-venv; installed when missing and running as root, otherwise a clear error).
#  * The Linux kernel's DT binding schemas the tests validate against (dma/arm,pl330.yaml, dma/dma-common.yaml,
#    dma/dma-controller.yaml, arm/primecell.yaml), extracted from Debian's kernel source package
#    (linux-source-<ver>, `apt-get download`, no root needed) - only those four files are kept.
#
# Prints `DT_BINDINGS=<dir>` and `DT_TOOLS_BIN=<dir with dt-validate>` on its last two lines.
# Cache: $VFIO_SIDECAR_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/vfio-sidecar). Idempotent and locked.
# Any failure is an error with the reason (exit 1): never a silent skip.
set -euo pipefail
die() { echo "dt-tools: ERROR: $*" >&2; exit 1; }
log() { echo "dt-tools: $*" >&2; }
cache=${VFIO_SIDECAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vfio-sidecar}
mkdir -p "$cache"
exec 9>"$cache/.dt-tools.lock"
flock 9
export DEBIAN_FRONTEND=noninteractive

# --- dt-schema in a venv -------------------------------------------------------------------------
DTSCHEMA_VERSION=${DTSCHEMA_VERSION:-2026.9}
venv=$cache/venv-dtschema
if [ ! -x "$venv/bin/dt-validate" ] || [ "$(cat "$venv/.version" 2>/dev/null)" != "$DTSCHEMA_VERSION" ]; then
    py=/usr/bin/python3
    [ -x "$py" ] || py=$(command -v python3) || die "no python3 found (apt-get install python3 python3-venv)"
    if ! "$py" -c 'import venv, ensurepip' 2>/dev/null; then
        [ "$(id -u)" = 0 ] || die "$py has no venv/ensurepip module: apt-get install python3-venv (as root), then rerun"
        log "installing python3-venv"
        apt-get update -qq || die "apt-get update failed"
        apt-get install -y -qq --no-install-recommends python3-venv >/dev/null || die "apt-get install python3-venv failed"
    fi
    rm -rf "$venv"
    log "creating $venv with dtschema==$DTSCHEMA_VERSION from PyPI"
    "$py" -m venv "$venv" || die "python3 -m venv $venv failed"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "dtschema==$DTSCHEMA_VERSION" \
        || die "pip install dtschema==$DTSCHEMA_VERSION into $venv failed"
    echo "$DTSCHEMA_VERSION" > "$venv/.version"
fi
"$venv/bin/dt-validate" --help >/dev/null 2>&1 || die "$venv/bin/dt-validate does not run"

# --- kernel DT bindings from Debian's kernel source package --------------------------------------
files=(dma/arm,pl330.yaml dma/dma-common.yaml dma/dma-controller.yaml arm/primecell.yaml)
pkg=
if [ -f "$cache/dt-bindings.pkg" ] && [ -z "$(find "$cache/dt-bindings.pkg" -mmin +10080)" ]; then
    read -r pkg < "$cache/dt-bindings.pkg" || pkg=
fi
if [ -z "$pkg" ] || [ ! -f "$cache/dt-bindings-$pkg/.complete" ]; then
    pkg=$(apt-cache pkgnames linux-source- 2>/dev/null | grep -E '^linux-source-[0-9]+\.[0-9]+$' | sort -V | tail -1 || true)
    if [ -z "$pkg" ] && [ "$(id -u)" = 0 ]; then apt-get update -qq || true
        pkg=$(apt-cache pkgnames linux-source- 2>/dev/null | grep -E '^linux-source-[0-9]+\.[0-9]+$' | sort -V | tail -1 || true)
    fi
    [ -n "$pkg" ] || die "no linux-source-<version> package known to apt (apt-get update as root?)"
fi
out=$cache/dt-bindings-$pkg
if [ ! -f "$out/.complete" ]; then
    tmp=$(mktemp -d "$cache/.dt-src.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    log "downloading $pkg (Debian's kernel source, ~140 MB, once) for its DT binding schemas"
    (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null) || die "apt-get download $pkg failed"
    deb=$(ls "$tmp"/*.deb 2>/dev/null | head -1); [ -n "$deb" ] || die "apt-get download $pkg gave no .deb"
    ver=${pkg#linux-source-}
    members=(); for f in "${files[@]}"; do members+=("linux-source-$ver/Documentation/devicetree/bindings/$f"); done
    log "extracting ${#files[@]} schema files"
    dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/src/linux-source-$ver.tar.xz" | tar -xJ -C "$tmp" "${members[@]}" \
        || die "extracting the bindings from $pkg failed"
    rm -rf "$out"; mkdir -p "$out"
    for f in "${files[@]}"; do
        mkdir -p "$out/$(dirname "$f")"
        cp "$tmp/linux-source-$ver/Documentation/devicetree/bindings/$f" "$out/$f" || die "$f missing in $pkg"
    done
    touch "$out/.complete"
fi
echo "$pkg" > "$cache/dt-bindings.pkg"
echo "DT_BINDINGS=$out"
echo "DT_TOOLS_BIN=$venv/bin"
