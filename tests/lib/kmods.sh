# tests/lib/kmods.sh: sourced by the harness setup scripts (tests/real-vfio, tests/qemu-interop,
# tests/arm64). Copies kernel modules out of an extracted kernel package, decompressed, together with
# every module their modinfo `depends=` names, in load order.
#
#   kmods_collect KMOD OUT WHAT MODULE...
#     KMOD   the extracted lib/modules/<version> directory (has kernel/ and modules.builtin)
#     OUT    directory that receives NAME.ko (dashes in NAME become underscores)
#     WHAT   the package, named in error messages
#   Sets KMODS_ORDER (an array: the modules in load order). A module that is built in is skipped; one
#   that is neither present nor built in is an error (the caller's `die`).
#
# Decompression goes through kmods_unxz / kmods_unzstd FILE (to stdout); a caller whose host lacks
# the tool redefines them after sourcing (e.g. to run the trixie root's xz).
kmods_unxz() { xz -dc "$1"; }
kmods_unzstd() { zstd -qdc "$1"; }

kmods_collect() {
    local kmod=$1 out=$2 what=$3 m
    shift 3
    declare -gA KMODS_SEEN=()
    KMODS_ORDER=()
    for m in "$@"; do _kmods_add "$kmod" "$out" "$what" "$m"; done
}

_kmods_file() {
    find "$1/kernel" -regextype posix-extended \
        -regex ".*/($2|$(tr _- -_ <<< "$2"))\.ko(\.xz|\.zst|\.gz)?" | head -1 || true
}

_kmods_add() {
    local kmod=$1 out=$2 what=$3 mod=$4
    local name=${mod//-/_} f d
    [ -n "${KMODS_SEEN[$name]:-}" ] && return 0
    KMODS_SEEN[$name]=1
    f=$(_kmods_file "$kmod" "$mod")
    if [ -z "$f" ]; then
        grep -qE "/($mod|$name)\.ko" "$kmod/modules.builtin" 2>/dev/null && return 0
        die "module $mod not found in $what"
    fi
    case $f in
        *.xz) kmods_unxz "$f" ;; *.zst) kmods_unzstd "$f" ;; *.gz) gzip -dc "$f" ;; *) cat "$f" ;;
    esac > "$out/$name.ko" || die "cannot unpack $f"
    # modinfo strings are NUL-separated: `depends=a,b` stands on a line of its own after tr.
    for d in $(tr '\0' '\n' < "$out/$name.ko" | sed -n 's/^depends=//p' | tr , ' '); do
        _kmods_add "$kmod" "$out" "$what" "$d"
    done
    KMODS_ORDER+=("$name")
}
