//! The `vmm-shim` command line (clap), in the library so that the man pages and
//! shell completions can be generated from it (`cargo run -p vfio-sidecar-tests
//! --bin gen-docs`).

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand};

use crate::backend::{EoiName, EoiPolicy, EOI_POLICIES};
use crate::plan::RunOptions;

/// Examples shown after `--help`.
pub const EXAMPLES: &str = "\
Examples:
  # Everything in one go: start the backend on the built-in PL330 model on a
  # private socket, run the guest against it, print the summary, clean up:
  vmm-shim demo
  vmm-shim demo --eoi resample --transfers 12 --max-size 65536
  vmm-shim demo --compare        # all three EOI policies side by side

  # Against a backend you started yourself (its --eoi must match):
  vfio-sidecar serve --socket /tmp/pl330.sock --device model:pl330 --eoi resample &
  vmm-shim run --socket /tmp/pl330.sock --eoi resample

  # Map all guest RAM executable for the device (the deliberate fault then runs
  # like a normal transfer), machine-readable output:
  vmm-shim run --socket /tmp/pl330.sock --exec-all --json

  # Write an ARM guest device tree holding the node the backend describes:
  vmm-shim dtb --socket /tmp/pl330.sock -o guest.dtb

  # On an arm64 host: boot Linux with the device (Linux's own pl330 driver):
  vmm-shim linux --socket /tmp/pl330.sock --kernel Image --initrd initrd.cpio \\
      --append 'console=ttyS0 panic=-1' --json summary.json

What a run does: guest RAM is one memfd, DMA-mapped to the backend at IOVA =
guest-physical (microcode range READ|WRITE|EXEC, the rest READ|WRITE); device
region 0 sits at guest-physical 0xfe000000 and every access to it traps and is
forwarded as REGION_READ/REGION_WRITE; the device's IRQ 0 is a KVM irqfd on PIC
line 5 (plus a resamplefd with --eoi resample). The guest driver (x86, 32-bit,
assembled from vmm-shim/guest/pl330_guest.S at build time) probes the PL330,
writes microcode, starts it with DMAGO through the debug registers, sleeps
until the interrupt, handles it in Linux's order, and checks the copy.
The exit status is non-zero if any transfer failed. See docs/shim.md; for
`linux` (arm64 hosts) see docs/arm64.md.";

/// A minimal KVM VMM that runs a bare-metal PL330 driver against a vfio-sidecar backend.
#[derive(Debug, Parser)]
#[command(name = "vmm-shim", version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// More logging (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the guest driver against a backend socket.
    Run(RunArgs),
    /// Start a private backend (the sibling vfio-sidecar, built-in PL330 model), run the guest, clean up.
    Demo(DemoArgs),
    /// Write a guest device tree (ARM) with the backend's device node.
    Dtb(DtbArgs),
    /// Boot a stock arm64 Linux kernel with the backend's device (arm64 hosts only).
    Linux(LinuxArgs),
}

#[derive(Debug, Clone, Args)]
pub struct GuestArgs {
    /// Transfers to run (plus one deliberate fault).
    #[arg(short = 'n', long, default_value_t = 8)]
    pub transfers: usize,
    /// Largest transfer in bytes.
    #[arg(long, default_value_t = 16384)]
    pub max_size: u32,
    /// EOI policy; must match the backend's --eoi (decides whether a resamplefd is wired).
    #[arg(long, value_parser = eoi_parser(), default_value = "clear-register")]
    pub eoi: EoiPolicy,
    /// DMA-map all guest RAM executable (comparison: the fault transfer then completes).
    #[arg(long)]
    pub exec_all: bool,
    /// Seed for transfer shapes and data.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

impl GuestArgs {
    pub fn options(&self) -> RunOptions {
        RunOptions {
            transfers: self.transfers,
            max_size: self.max_size,
            eoi: self.eoi,
            exec_all: self.exec_all,
            seed: self.seed,
            timeout: Duration::from_secs(self.timeout.max(1)),
        }
    }
}

/// What each policy means for the shim (the help of `--eoi`'s values).
fn eoi_help(p: EoiPolicy) -> &'static str {
    match p {
        EoiPolicy::ClearRegister => {
            "The backend unmasks after the guest's INTCLR write reached the device"
        }
        EoiPolicy::Resample => {
            "KVM's resamplefd (guest EOI at the PIC) is the backend's unmask eventfd"
        }
        EoiPolicy::FirstAccess => {
            "The backend unmasks on the first trapped access after the interrupt \
             (a measured comparison: the line is still high, so it re-fires)"
        }
        EoiPolicy::None => "No EOI handling (edge interrupts)",
    }
}

/// `--eoi`: the backend's policy names, listed with [`eoi_help`].
fn eoi_parser() -> impl TypedValueParser<Value = EoiPolicy> {
    let values = EOI_POLICIES.map(|p| PossibleValue::new(p.name()).help(eoi_help(p)));
    PossibleValuesParser::new(values).try_map(|s| EoiPolicy::from_name(&s))
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The backend's vfio-user socket.
    #[arg(short, long)]
    pub socket: PathBuf,
    #[command(flatten)]
    pub guest: GuestArgs,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub guest: GuestArgs,
    /// Backend binary (default: the `vfio-sidecar` next to this executable).
    #[arg(long)]
    pub backend: Option<PathBuf>,
    /// Device string for the backend.
    #[arg(long, default_value = "model:pl330")]
    pub device: String,
    /// Let the backend start microcode from any address (no DMAGO check): the
    /// deliberate fault then shows as a channel fault (FSRC/FTR, instruction
    /// fetch) instead of a manager fault (FSRD/FTRD) at DMAGO.
    #[arg(long)]
    pub no_dmago_gate: bool,
    /// Run once per EOI policy (each with a fresh backend) and print a
    /// comparison table after the summaries (--eoi is ignored).
    #[arg(long)]
    pub compare: bool,
    /// Give the backend a statistics socket (`vfio-sidecar serve
    /// --stats-socket`): `vfio-sidecar probe --stats --socket PATH` shows the
    /// guest's live counters while the demo runs.
    #[arg(long, value_name = "PATH")]
    pub stats_socket: Option<PathBuf>,
}

impl DemoArgs {
    /// The `vfio-sidecar serve` options these arguments add.
    pub fn backend_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.no_dmago_gate {
            v.push("--no-dmago-gate".into());
        }
        if let Some(p) = &self.stats_socket {
            v.push("--stats-socket".into());
            v.push(p.display().to_string());
        }
        v
    }
}

#[derive(Debug, Args)]
pub struct DtbArgs {
    /// The backend's vfio-user socket.
    #[arg(short, long)]
    pub socket: PathBuf,
    /// Output file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Guest-physical base for the device when the tree is built from the
    /// description (the backend sent no DTB and suggests no base).
    #[arg(long, value_parser = parse_u64, default_value = "0xc000000")]
    pub base: u64,
    /// First GIC SPI number for the device's interrupts (same case).
    #[arg(long, default_value_t = 32)]
    pub irq_base: u32,
}

/// `vmm-shim linux`: boot an arm64 Linux `Image` under KVM with the backend's
/// device in its device tree; the guest console is printed on stdout, then a
/// summary. Exit status 0 only when the guest powered off (PSCI SYSTEM_OFF).
#[derive(Debug, Clone, Args)]
pub struct LinuxArgs {
    /// The backend's vfio-user socket.
    #[arg(short, long)]
    pub socket: PathBuf,
    /// The arm64 kernel: a raw `Image` (Debian's arm64 /boot/vmlinuz-* is one).
    #[arg(long)]
    pub kernel: PathBuf,
    /// An initramfs (cpio, optionally compressed as the kernel supports).
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0 panic=-1")]
    pub append: String,
    /// Guest RAM in MiB (a multiple of 2).
    #[arg(long, default_value_t = 256)]
    pub mem: u64,
    /// EOI policy; must match the backend's --eoi (with `resample` the
    /// resamplefds become the backend's unmask eventfds).
    #[arg(long, value_parser = eoi_parser(), default_value = "clear-register")]
    pub eoi: EoiPolicy,
    /// DMA-map guest RAM without EXEC even when the extension is negotiated:
    /// the device's instruction (microcode) fetches then fault.
    #[arg(long)]
    pub no_exec: bool,
    /// Also write the summary as JSON to this file (`-`: print JSON instead of the text summary).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

impl LinuxArgs {
    /// The run's options.
    pub fn options(&self) -> crate::arm64::summary::LinuxOptions {
        crate::arm64::summary::LinuxOptions {
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            append: self.append.clone(),
            mem_mib: self.mem,
            eoi: self.eoi,
            no_exec: self.no_exec,
            timeout: Duration::from_secs(self.timeout.max(1)),
        }
    }
}

/// Numbers on the command line: decimal or `0x`/`0X`-hex, `_` separators
/// allowed (as the backend's command line reads them).
pub fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(&h.replace('_', ""), 16),
        None => s.replace('_', "").parse(),
    };
    r.map_err(|_| format!("{s:?} is not a number (decimal or 0x-hex)"))
}

/// Logging for the binary: info by default, -v debug, -vv trace; `RUST_LOG`
/// overrides (as the backend's).
pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    const OURS: &[&str] = &["vmm_shim", "vfio_sidecar_protocol"];
    let mut builder = match std::env::var("RUST_LOG") {
        Ok(spec) if !vfio_sidecar_protocol::peerlog::rust_log_enables(&spec, OURS) => {
            eprintln!(
                "warning: RUST_LOG={spec:?} enables no log of this program (no level, no module \
                 of {}); ignoring it and logging at {level}",
                OURS.join("/")
            );
            let mut b = env_logger::Builder::new();
            b.parse_filters(level);
            b
        }
        _ => env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)),
    };
    let _ = builder.format_timestamp_micros().try_init();
}

/// The clap command of `vmm-shim` (for generated docs).
pub fn command() -> clap::Command {
    Cli::command()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_decimal_hex_and_separators() {
        assert_eq!(parse_u64("4096"), Ok(4096));
        assert_eq!(parse_u64("0xc000000"), Ok(0xc00_0000));
        assert_eq!(parse_u64("0X1_0000"), Ok(0x1_0000));
        assert_eq!(parse_u64("1_000"), Ok(1000));
        assert!(parse_u64("0x").is_err());
        assert!(parse_u64("12k").unwrap_err().contains("not a number"));
        assert!(parse_u64("0x1_0000_0000_0000_0000").is_err(), "overflow");
    }

    #[test]
    fn eoi_values_are_the_three_policies() {
        let c = command();
        let linux = c.find_subcommand("linux").unwrap();
        let eoi = linux.get_arguments().find(|a| a.get_id() == "eoi").unwrap();
        let names: Vec<String> = eoi
            .get_possible_values()
            .iter()
            .map(|v| v.get_name().to_string())
            .collect();
        assert_eq!(names, ["clear-register", "resample", "first-access"]);
        let cli = Cli::try_parse_from([
            "vmm-shim",
            "linux",
            "-s",
            "s",
            "--kernel",
            "k",
            "--eoi",
            "first-access",
        ])
        .unwrap();
        let Command::Linux(a) = cli.command else {
            panic!("not linux")
        };
        assert_eq!(a.eoi, EoiPolicy::FirstAccess);
        assert!(Cli::try_parse_from([
            "vmm-shim", "linux", "-s", "s", "--kernel", "k", "--eoi", "none"
        ])
        .is_err());
    }
}
