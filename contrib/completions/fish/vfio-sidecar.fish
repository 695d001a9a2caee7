# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_vfio_sidecar_global_optspecs
    string join \n v/verbose h/help V/version
end

function __fish_vfio_sidecar_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_vfio_sidecar_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_vfio_sidecar_using_subcommand
    set -l cmd (__fish_vfio_sidecar_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c vfio-sidecar -n "__fish_vfio_sidecar_needs_command" -s v -l verbose -d 'More logging (-v debug, -vv trace). RUST_LOG overrides'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_needs_command" -s h -l help -d 'Print help'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_needs_command" -s V -l version -d 'Print version'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_needs_command" -f -a "serve" -d 'Serve a device over a vfio-user socket (one client at a time)'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_needs_command" -f -a "dt" -d 'Print the guest device-tree node of a platform/AMBA device'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_needs_command" -f -a "probe" -d 'Connect to any vfio-user server and describe its device, like lspci -vv (read-only unless --read is given)'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_needs_command" -f -a "list" -d 'List VFIO-bound devices and candidates matching a profile; say how to get VFIO when the host has none (exit code 0 either way)'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_needs_command" -f -a "bind" -d 'Bind a device to the VFIO driver of its bus (driver_override, unbind, drivers_probe); needs root unless --dry-run'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand serve" -s s -l socket -d 'Unix socket path to listen on (created with --socket-mode, removed on exit). Under systemd socket activation (LISTEN_FDS/LISTEN_PID) the inherited socket is used instead and left in place' -r -F
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand serve" -l stats-socket -d 'Also serve live statistics on this Unix socket (off by default): each peer is written one JSON snapshot of the session\'s and the process\'s counters and closed; read it with `probe --stats`. Created like --socket (--socket-mode/-owner/-group), removed on exit; peers pass the --allow-uid/--allow-gid policy' -r -F
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand serve" -s d -l device -d 'Device to serve: model:pl330[,opts], model:scratch, model:edu or vfio:/sys/bus/.../DEVICE' -r
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand serve" -l profile -d 'TOML file with extra device profiles (override built-in ones by name)' -r -F
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand serve" -l profile-name -d 'Use this profile (by name) instead of detecting it' -r
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand serve" -l eoi -d 'EOI policy for level IRQs (default: the profile\'s, clear-register for the PL330): clear-register, resample or first-access (legacy, comparison only)' -r
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand serve" -l iommu -d 'VFIO devices: IOMMU interface. auto = iommufd (/dev/iommu + the device\'s VFIO cdev) when the kernel has it, else the legacy type1v2 container' -r -f -a "auto\t'iommufd when `/dev/iommu` exists and the device has a vfio cdev (`<sysfs dev>/vfio-dev/vfioN`), else the legacy container. Also the legacy container when opening `/dev/iommu` or the cdev is denied (permissions set up for the legacy nodes only), with a warning'
container\t'Legacy VFIO container + group (`/dev/vfio/vfio`, `/dev/vfio/<group>`, type1v2)'
iommufd\t'`/dev/iommu` + the device cdev (`/dev/vfio/devices/vfioN`); an error when the kernel lacks it'"
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand serve" -l max-dma-maps -d 'Maximum number of DMA mappings a client may create' -r
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand serve" -l socket-mode -d 'Permission bits of the socket file we create (octal)' -r
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand serve" -l socket-owner -d 'Owner of the socket file we create (user name or uid), e.g. the VMM\'s user' -r
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand serve" -l socket-group -d 'Group of the socket file we create (group name or gid)' -r
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand serve" -l allow-uid -d 'Accept only peers with this uid (SO_PEERCRED; user name or uid; repeatable). With --allow-uid/--allow-gid, a peer passes if its uid or primary gid is listed; others are logged and disconnected at once' -r
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand serve" -l allow-gid -d 'Accept only peers with this primary gid (group name or gid; repeatable)' -r
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand serve" -l user -d 'Switch to this user (and group; default its primary group) after opening the device and the socket. Needs root' -r
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand serve" -l seccomp -d 'Seccomp allow-list of the serve loop: kill (default), trap (print the syscall number, then die), log (allow, kernel audit log) or off' -r -f -a "kill\t'Kill the process (SIGSYS) at the first forbidden syscall (default)'
trap\t'Print the forbidden syscall\'s number to stderr, then die by SIGSYS'
log\t'Allow it; the kernel logs it to the audit log (finding missing syscalls)'
off\t'No filter at all (debugging only)'"
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand serve" -l no-dmago-gate -d 'PL330 model: do not check DMAGO\'s microcode address against the DMA table'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand serve" -l no-mmap -d 'Never offer regions for mmap (models and VFIO alike): every access traps into the backend'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand serve" -s v -l verbose -d 'More logging (-v debug, -vv trace). RUST_LOG overrides'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand dt" -s d -l device -d 'Device (as for serve)' -r
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand dt" -s f -l format -d 'Output format' -r -f -a "dts\t'Source text'
dtb\t'Flattened blob'"
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand dt" -s o -l output -d 'Output file (default: stdout)' -r -F
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand dt" -l base -d 'Guest-physical base address of the device' -r
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand dt" -l irq-base -d 'First GIC SPI number' -r
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand dt" -l profile -d 'TOML file with extra device profiles' -r -F
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand dt" -l profile-name -d 'Use this profile (by name)' -r
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand dt" -s v -l verbose -d 'More logging (-v debug, -vv trace). RUST_LOG overrides'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand dt" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand probe" -s s -l socket -d 'vfio-user server socket to connect to' -r -F
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand probe" -s r -l read -d 'Also read device memory and hex-dump it: REGION:OFFSET:SIZE, REGION an index or a name (BAR0, config, a described region name). Repeatable. Reads can have side effects on some registers' -r
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand probe" -l timeout -d 'Seconds to wait for each reply' -r
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand probe" -l json -d 'Print one JSON object instead of text'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand probe" -l plain -d 'Do not propose the vfio-sidecar extension (see the device as a plain vfio-user client like QEMU does)'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand probe" -l stats -d 'Read live statistics instead: --socket is then a `serve --stats-socket` (works while a VMM is attached); prints the connected client\'s session counters beside the process totals'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand probe" -l prometheus -d 'With --stats: print them in the Prometheus text exposition format'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand probe" -s v -l verbose -d 'More logging (-v debug, -vv trace). RUST_LOG overrides'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand probe" -s h -l help -d 'Print help'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand list" -l sysfs -d 'Root of sysfs (a fake tree for tests)' -r -F
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand list" -l dev -d 'Root of /dev, where /dev/vfio is looked for (tests)' -r -F
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand list" -l profile -d 'TOML file with extra device profiles (more candidates are recognised)' -r -F
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand list" -l json -d 'Machine-readable output: {"vfio": host status, "devices": [...]}'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand list" -s v -l verbose -d 'More logging (-v debug, -vv trace). RUST_LOG overrides'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand list" -s h -l help -d 'Print help'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand bind" -l sysfs -d 'Root of sysfs (a fake tree for tests)' -r -F
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand bind" -l dry-run -d 'Print the writes as shell commands; change nothing'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand bind" -s v -l verbose -d 'More logging (-v debug, -vv trace). RUST_LOG overrides'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand bind" -s h -l help -d 'Print help'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand help; and not __fish_seen_subcommand_from serve dt probe list bind help" -f -a "serve" -d 'Serve a device over a vfio-user socket (one client at a time)'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand help; and not __fish_seen_subcommand_from serve dt probe list bind help" -f -a "dt" -d 'Print the guest device-tree node of a platform/AMBA device'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand help; and not __fish_seen_subcommand_from serve dt probe list bind help" -f -a "probe" -d 'Connect to any vfio-user server and describe its device, like lspci -vv (read-only unless --read is given)'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand help; and not __fish_seen_subcommand_from serve dt probe list bind help" -f -a "list" -d 'List VFIO-bound devices and candidates matching a profile; say how to get VFIO when the host has none (exit code 0 either way)'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand help; and not __fish_seen_subcommand_from serve dt probe list bind help" -f -a "bind" -d 'Bind a device to the VFIO driver of its bus (driver_override, unbind, drivers_probe); needs root unless --dry-run'
complete -c vfio-sidecar -n "__fish_vfio_sidecar_using_subcommand help; and not __fish_seen_subcommand_from serve dt probe list bind help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
