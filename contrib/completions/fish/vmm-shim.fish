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
complete -c vmm-shim -n "__fish_vmm_shim_needs_command" -f -a "demo" -d 'Start a private backend (the sibling vfio-sidecar, built-in PL330 model), run the guest, clean up'
complete -c vmm-shim -n "__fish_vmm_shim_needs_command" -f -a "dtb" -d 'Write a guest device tree (ARM) with the backend\'s device node'
complete -c vmm-shim -n "__fish_vmm_shim_needs_command" -f -a "linux" -d 'Boot a stock arm64 Linux kernel with the backend\'s device (arm64 hosts only)'
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
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand demo" -l backend -d 'Backend binary (default: the `vfio-sidecar` next to this executable)' -r -F
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand demo" -l device -d 'Device string for the backend' -r
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand demo" -l stats-socket -d 'Give the backend a statistics socket (`vfio-sidecar serve --stats-socket`): `vfio-sidecar probe --stats --socket PATH` shows the guest\'s live counters while the demo runs' -r -F
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
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand help; and not __fish_seen_subcommand_from run demo dtb linux help" -f -a "run" -d 'Run the guest driver against a backend socket'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand help; and not __fish_seen_subcommand_from run demo dtb linux help" -f -a "demo" -d 'Start a private backend (the sibling vfio-sidecar, built-in PL330 model), run the guest, clean up'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand help; and not __fish_seen_subcommand_from run demo dtb linux help" -f -a "dtb" -d 'Write a guest device tree (ARM) with the backend\'s device node'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand help; and not __fish_seen_subcommand_from run demo dtb linux help" -f -a "linux" -d 'Boot a stock arm64 Linux kernel with the backend\'s device (arm64 hosts only)'
complete -c vmm-shim -n "__fish_vmm_shim_using_subcommand help; and not __fish_seen_subcommand_from run demo dtb linux help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
