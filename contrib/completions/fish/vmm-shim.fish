# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_vmm_shim_global_optspecs
    string join \n v/verbose h/help V/version
end

function __fish_vmm_shim_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_vmm_shim_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_vmm_shim_using_subcommand
    set -l cmd (__fish_vmm_shim_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c vmm-shim -n "__fish_vmm_shim_needs_command" -s v -l verbose -d 'More logging (-v debug, -vv trace). RUST_LOG overrides'
complete -c vmm-shim -n "__fish_vmm_shim_needs_command" -s h -l help -d 'Print help'
complete -c vmm-shim -n "__fish_vmm_shim_needs_command" -s V -l version -d 'Print version'
complete -c vmm-shim -n "__fish_vmm_shim_needs_command" -f -a "run" -d 'Run the guest driver against a backend socket'
complete -c vmm-shim -n "__fish_vmm_shim_needs_command" -f -a "demo" -d 'Start a private backend (built-in PL330 model), run the guest, clean up'
complete -c vmm-shim -n "__fish_vmm_shim_needs_command" -f -a "dtb" -d 'Write a guest device tree (ARM) with the backend\'s device node'
complete -c vmm-shim -n "__fish_vmm_shim_needs_command" -f -a "linux" -d 'Boot a stock arm64 Linux kernel with the backend\'s device (arm64 hosts only)'
complete -c vmm-shim -n "__fish_vmm_shim_needs_command" -f -a "backend" -d '(internal) serve a device like `vfio-sidecar serve`; used by `demo`'
complete -c vmm-shim -n "__fish_vmm_shim_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand run" -s s -l socket -d 'The backend\'s vfio-user socket' -r -F
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand run" -s n -l transfers -d 'Transfers to run (plus one deliberate fault)' -r
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand run" -l max-size -d 'Largest transfer in bytes' -r
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand run" -l eoi -d 'EOI policy; must match the backend\'s --eoi (decides whether a resamplefd is wired)' -r -f -a "clear-register\t'The backend unmasks after the guest\'s INTCLR write reached the device'
resample\t'KVM\'s resamplefd (guest EOI at the PIC) is the backend\'s unmask eventfd'
first-access\t'The backend unmasks on the first trapped access after the interrupt (a measured comparison: the line is still high, so it re-fires)'"
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand run" -l seed -d 'Seed for transfer shapes and data' -r
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand run" -l timeout -d 'Give up after this many seconds' -r
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand run" -l exec-all -d 'DMA-map all guest RAM executable (comparison: the fault transfer then completes)'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand run" -l json -d 'Print the summary as JSON'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand run" -s v -l verbose -d 'More logging (-v debug, -vv trace). RUST_LOG overrides'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand run" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand demo" -s n -l transfers -d 'Transfers to run (plus one deliberate fault)' -r
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand demo" -l max-size -d 'Largest transfer in bytes' -r
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand demo" -l eoi -d 'EOI policy; must match the backend\'s --eoi (decides whether a resamplefd is wired)' -r -f -a "clear-register\t'The backend unmasks after the guest\'s INTCLR write reached the device'
resample\t'KVM\'s resamplefd (guest EOI at the PIC) is the backend\'s unmask eventfd'
first-access\t'The backend unmasks on the first trapped access after the interrupt (a measured comparison: the line is still high, so it re-fires)'"
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand demo" -l seed -d 'Seed for transfer shapes and data' -r
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand demo" -l timeout -d 'Give up after this many seconds' -r
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand demo" -l backend -d 'Backend binary (default: `vfio-sidecar` next to this executable, else this executable\'s built-in copy of the backend)' -r -F
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand demo" -l device -d 'Device string for the backend' -r
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand demo" -l exec-all -d 'DMA-map all guest RAM executable (comparison: the fault transfer then completes)'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand demo" -l json -d 'Print the summary as JSON'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand demo" -l no-dmago-gate -d 'Let the backend start microcode from any address (no DMAGO check): the deliberate fault then shows as a channel fault (FSRC/FTR, instruction fetch) instead of a manager fault (FSRD/FTRD) at DMAGO'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand demo" -l compare -d 'Run once per EOI policy (each with a fresh backend) and print a comparison table after the summaries (--eoi is ignored)'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand demo" -s v -l verbose -d 'More logging (-v debug, -vv trace). RUST_LOG overrides'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand demo" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand dtb" -s s -l socket -d 'The backend\'s vfio-user socket' -r -F
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand dtb" -s o -l output -d 'Output file' -r -F
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand dtb" -l base -d 'Guest-physical base for the device when the tree is built from the description (the backend sent no DTB and suggests no base)' -r
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand dtb" -l irq-base -d 'First GIC SPI number for the device\'s interrupts (same case)' -r
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand dtb" -s v -l verbose -d 'More logging (-v debug, -vv trace). RUST_LOG overrides'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand dtb" -s h -l help -d 'Print help'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand linux" -s s -l socket -d 'The backend\'s vfio-user socket' -r -F
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand linux" -l kernel -d 'The arm64 kernel: a raw `Image` (Debian\'s arm64 /boot/vmlinuz-* is one)' -r -F
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand linux" -l initrd -d 'An initramfs (cpio, optionally compressed as the kernel supports)' -r -F
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand linux" -l append -d 'Kernel command line' -r
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand linux" -l mem -d 'Guest RAM in MiB (a multiple of 2)' -r
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand linux" -l eoi -d 'EOI policy; must match the backend\'s --eoi (with `resample` the resamplefds become the backend\'s unmask eventfds)' -r -f -a "clear-register\t'The backend unmasks after the guest\'s INTCLR write reached the device'
resample\t'KVM\'s resamplefd (guest EOI at the PIC) is the backend\'s unmask eventfd'
first-access\t'The backend unmasks on the first trapped access after the interrupt (a measured comparison: the line is still high, so it re-fires)'"
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand linux" -l json -d 'Also write the summary as JSON to this file (`-`: print JSON instead of the text summary)' -r -F
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand linux" -l timeout -d 'Give up after this many seconds' -r
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand linux" -l no-exec -d 'DMA-map guest RAM without EXEC even when the extension is negotiated: the device\'s instruction (microcode) fetches then fault'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand linux" -s v -l verbose -d 'More logging (-v debug, -vv trace). RUST_LOG overrides'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand linux" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand backend" -s s -l socket -d 'Unix socket path to listen on (created with --socket-mode, removed on exit). Under systemd socket activation (LISTEN_FDS/LISTEN_PID) the inherited socket is used instead and left in place' -r -F
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand backend" -s d -l device -d 'Device to serve: model:pl330[,opts], model:scratch, model:edu or vfio:/sys/bus/.../DEVICE' -r
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand backend" -l profile -d 'TOML file with extra device profiles (override built-in ones by name)' -r -F
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand backend" -l profile-name -d 'Use this profile (by name) instead of detecting it' -r
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand backend" -l eoi -d 'EOI policy for level IRQs (default: the profile\'s, clear-register for the PL330): clear-register, resample or first-access (legacy, comparison only)' -r
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand backend" -l iommu -d 'VFIO devices: IOMMU interface. auto = iommufd (/dev/iommu + the device\'s VFIO cdev) when the kernel has it, else the legacy type1v2 container' -r -f -a "auto\t'iommufd when `/dev/iommu` exists and the device has a vfio cdev (`<sysfs dev>/vfio-dev/vfioN`), else the legacy container. Also the legacy container when opening `/dev/iommu` or the cdev is denied (permissions set up for the legacy nodes only), with a warning'
container\t'Legacy VFIO container + group (`/dev/vfio/vfio`, `/dev/vfio/<group>`, type1v2)'
iommufd\t'`/dev/iommu` + the device cdev (`/dev/vfio/devices/vfioN`); an error when the kernel lacks it'"
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand backend" -l max-dma-maps -d 'Maximum number of DMA mappings a client may create' -r
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand backend" -l socket-mode -d 'Permission bits of the socket file we create (octal)' -r
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand backend" -l socket-owner -d 'Owner of the socket file we create (user name or uid), e.g. the VMM\'s user' -r
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand backend" -l socket-group -d 'Group of the socket file we create (group name or gid)' -r
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand backend" -l allow-uid -d 'Accept only peers with this uid (SO_PEERCRED; user name or uid; repeatable). With --allow-uid/--allow-gid, a peer passes if its uid or primary gid is listed; others are logged and disconnected at once' -r
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand backend" -l allow-gid -d 'Accept only peers with this primary gid (group name or gid; repeatable)' -r
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand backend" -l user -d 'Switch to this user (and group; default its primary group) after opening the device and the socket. Needs root' -r
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand backend" -l seccomp -d 'Seccomp allow-list of the serve loop: kill (default), trap (print the syscall number, then die), log (allow, kernel audit log) or off' -r -f -a "kill\t'Kill the process (SIGSYS) at the first forbidden syscall (default)'
trap\t'Print the forbidden syscall\'s number to stderr, then die by SIGSYS'
log\t'Allow it; the kernel logs it to the audit log (finding missing syscalls)'
off\t'No filter at all (debugging only)'"
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand backend" -l no-dmago-gate -d 'PL330 model: do not check DMAGO\'s microcode address against the DMA table'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand backend" -l no-mmap -d 'Never offer regions for mmap (models and VFIO alike): every access traps into the backend'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand backend" -s v -l verbose -d 'More logging (-v debug, -vv trace). RUST_LOG overrides'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand backend" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand help; and not __fish_seen_subcommand_from run demo dtb linux backend help" -f -a "run" -d 'Run the guest driver against a backend socket'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand help; and not __fish_seen_subcommand_from run demo dtb linux backend help" -f -a "demo" -d 'Start a private backend (built-in PL330 model), run the guest, clean up'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand help; and not __fish_seen_subcommand_from run demo dtb linux backend help" -f -a "dtb" -d 'Write a guest device tree (ARM) with the backend\'s device node'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand help; and not __fish_seen_subcommand_from run demo dtb linux backend help" -f -a "linux" -d 'Boot a stock arm64 Linux kernel with the backend\'s device (arm64 hosts only)'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand help; and not __fish_seen_subcommand_from run demo dtb linux backend help" -f -a "backend" -d '(internal) serve a device like `vfio-sidecar serve`; used by `demo`'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand help; and not __fish_seen_subcommand_from run demo dtb linux backend help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
