//! `vmm-shim`: run the bare-metal PL330 guest driver in KVM against a
//! vfio-sidecar backend.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};
use vmm_shim::demo::{self, DemoOptions};
use vmm_shim::link::ProtoBackend;
use vmm_shim::runner::{self, EoiPolicy, RunOptions};

const EXAMPLES: &str = "\
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

What a run does: guest RAM is one memfd, DMA-mapped to the backend at IOVA =
guest-physical (microcode range READ|WRITE|EXEC, the rest READ|WRITE); device
region 0 sits at guest-physical 0xfe000000 and every access to it traps and is
forwarded as REGION_READ/REGION_WRITE; the device's IRQ 0 is a KVM irqfd on PIC
line 5 (plus a resamplefd with --eoi resample). The guest driver (x86, 32-bit,
assembled from vmm-shim/guest/pl330_guest.S at build time) probes the PL330,
writes microcode, starts it with DMAGO through the debug registers, sleeps
until the interrupt, handles it in Linux's order, and checks the copy.
The exit status is non-zero if any transfer failed. See docs/shim.md.";

/// A minimal KVM VMM that runs a bare-metal PL330 driver against a vfio-sidecar backend.
#[derive(Debug, Parser)]
#[command(name = "vmm-shim", version, about, after_help = EXAMPLES)]
struct Cli {
    /// More logging (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the guest driver against a backend socket.
    Run(RunArgs),
    /// Start a private backend (built-in PL330 model), run the guest, clean up.
    Demo(DemoArgs),
    /// Write a guest device tree (ARM) with the backend's device node.
    Dtb(DtbArgs),
    /// (internal) serve a device like `vfio-sidecar serve`; used by `demo`.
    #[command(hide = true)]
    Backend(vfio_sidecar::cli::ServeArgs),
}

#[derive(Debug, Clone, Args)]
struct GuestArgs {
    /// Transfers to run (plus one deliberate fault).
    #[arg(short = 'n', long, default_value_t = 8)]
    transfers: usize,
    /// Largest transfer in bytes.
    #[arg(long, default_value_t = 16384)]
    max_size: u32,
    /// EOI policy; must match the backend's --eoi (decides whether a resamplefd is wired).
    #[arg(long, value_enum, default_value_t = EoiPolicy::ClearRegister)]
    eoi: EoiPolicy,
    /// DMA-map all guest RAM executable (comparison: the fault transfer then completes).
    #[arg(long)]
    exec_all: bool,
    /// Seed for transfer shapes and data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

impl GuestArgs {
    fn options(&self) -> RunOptions {
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

#[derive(Debug, Args)]
struct RunArgs {
    /// The backend's vfio-user socket.
    #[arg(short, long)]
    socket: PathBuf,
    #[command(flatten)]
    guest: GuestArgs,
}

#[derive(Debug, Args)]
struct DemoArgs {
    #[command(flatten)]
    guest: GuestArgs,
    /// Backend binary (default: `vfio-sidecar` next to this executable, else
    /// this executable's built-in copy of the backend).
    #[arg(long)]
    backend: Option<PathBuf>,
    /// Device string for the backend.
    #[arg(long, default_value = "model:pl330")]
    device: String,
    /// Let the backend start microcode from any address (no DMAGO check): the
    /// deliberate fault then shows as a channel fault (FSRC/FTR, instruction
    /// fetch) instead of a manager fault (FSRD/FTRD) at DMAGO.
    #[arg(long)]
    no_dmago_gate: bool,
    /// Run once per EOI policy (each with a fresh backend) and print a
    /// comparison table after the summaries (--eoi is ignored).
    #[arg(long)]
    compare: bool,
}

#[derive(Debug, Args)]
struct DtbArgs {
    /// The backend's vfio-user socket.
    #[arg(short, long)]
    socket: PathBuf,
    /// Output file.
    #[arg(short, long)]
    output: PathBuf,
    /// Guest-physical base for the device when the tree is built from the
    /// description (the backend sent no DTB and suggests no base).
    #[arg(long, value_parser = parse_u64, default_value = "0xc000000")]
    base: u64,
    /// First GIC SPI number for the device's interrupts (same case).
    #[arg(long, default_value_t = 32)]
    irq_base: u32,
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("{s:?} is not a number (decimal or 0x-hex)"))
}

fn print_summary(s: &runner::Summary, json: bool) -> ExitCode {
    if json {
        match serde_json::to_string_pretty(s) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("vmm-shim: cannot encode the summary: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        println!("{s}");
    }
    if s.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    log::error!("{msg}");
    eprintln!("vmm-shim: {msg}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    vfio_sidecar::cli::init_logging(cli.verbose);
    match cli.command {
        Command::Backend(args) => match vfio_sidecar::server::run_serve(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(format!("backend: {e}")),
        },
        Command::Run(a) => {
            if let Err(e) = demo::check_kvm() {
                return fail(e);
            }
            let opts = a.guest.options();
            // reject impossible sizes before talking to the backend
            if let Err(e) = vmm_shim::plan::plan(opts.transfers, opts.max_size, 8, true, opts.seed)
            {
                return fail(e);
            }
            let mut backend = match ProtoBackend::connect(&a.socket, Duration::from_secs(5)) {
                Ok(b) => b,
                Err(e) => return fail(e),
            };
            match runner::run(&mut backend, &opts) {
                Ok(s) => print_summary(&s, a.guest.json),
                Err(e) => fail(e),
            }
        }
        Command::Demo(a) if a.compare => {
            let mut all = Vec::new();
            for eoi in [
                EoiPolicy::ClearRegister,
                EoiPolicy::Resample,
                EoiPolicy::FirstAccess,
            ] {
                let mut guest = a.guest.clone();
                guest.eoi = eoi;
                let opts = DemoOptions {
                    run: guest.options(),
                    backend: a.backend.clone(),
                    device: a.device.clone(),
                    backend_args: if a.no_dmago_gate {
                        vec!["--no-dmago-gate".into()]
                    } else {
                        Vec::new()
                    },
                };
                match demo::demo(&opts) {
                    Ok(s) => all.push(s),
                    Err(e) => return fail(format!("{}: {e}", eoi.as_str())),
                }
            }
            if a.guest.json {
                match serde_json::to_string_pretty(&all) {
                    Ok(j) => println!("{j}"),
                    Err(e) => return fail(e),
                }
            } else {
                for s in &all {
                    println!("{s}\n");
                }
                println!("{}", runner::comparison_table(&all));
            }
            if all.iter().all(|s| s.success()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Demo(a) => {
            let opts = DemoOptions {
                run: a.guest.options(),
                backend: a.backend,
                device: a.device,
                backend_args: if a.no_dmago_gate {
                    vec!["--no-dmago-gate".into()]
                } else {
                    Vec::new()
                },
            };
            match demo::demo(&opts) {
                Ok(s) => print_summary(&s, a.guest.json),
                Err(e) => fail(e),
            }
        }
        Command::Dtb(a) => {
            let mut backend = match ProtoBackend::connect(&a.socket, Duration::from_secs(5)) {
                Ok(b) => b,
                Err(e) => return fail(e),
            };
            match vmm_shim::dtb::fetch_guest_dtb(
                &mut backend,
                vmm_shim::dtb::Placement {
                    base: a.base,
                    irq_base: a.irq_base,
                },
            ) {
                Ok((dtb, how)) => match std::fs::write(&a.output, &dtb) {
                    Ok(()) => {
                        println!("wrote {} ({} bytes, {how})", a.output.display(), dtb.len());
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(format!("cannot write {}: {e}", a.output.display())),
                },
                Err(e) => fail(e),
            }
        }
    }
}
