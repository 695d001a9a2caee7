//! `vmm-shim`: run the bare-metal PL330 guest driver in KVM against a
//! vfio-sidecar backend.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vmm_shim::cli::{Cli, Command};
use vmm_shim::link::ProtoBackend;
#[cfg(target_arch = "x86_64")]
use vmm_shim::{
    backend::{EoiName, EOI_POLICIES},
    demo::{self, DemoOptions},
    runner,
};

#[cfg(target_arch = "x86_64")]
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
    // One line on stderr (a log::error! as well would print it twice).
    eprintln!("vmm-shim: {msg}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    vmm_shim::cli::init_logging(cli.verbose);
    match cli.command {
        #[cfg(not(target_arch = "x86_64"))]
        Command::Run(_) | Command::Demo(_) => fail(
            "`run` and `demo` run the x86 guest driver: x86_64 hosts only; on arm64 use `vmm-shim linux` (docs/arm64.md)",
        ),
        #[cfg(target_arch = "x86_64")]
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
        #[cfg(target_arch = "x86_64")]
        Command::Demo(a) if a.compare => {
            let mut all = Vec::new();
            for eoi in EOI_POLICIES {
                let mut guest = a.guest.clone();
                guest.eoi = eoi;
                let opts = DemoOptions {
                    run: guest.options(),
                    backend: a.backend.clone(),
                    device: a.device.clone(),
                    backend_args: a.backend_args(),
                };
                match demo::demo(&opts) {
                    Ok(s) => all.push(s),
                    Err(e) => return fail(format!("{}: {e}", eoi.name())),
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
        #[cfg(target_arch = "x86_64")]
        Command::Demo(a) => {
            let opts = DemoOptions {
                run: a.guest.options(),
                backend_args: a.backend_args(),
                backend: a.backend,
                device: a.device,
            };
            match demo::demo(&opts) {
                Ok(s) => print_summary(&s, a.guest.json),
                Err(e) => fail(e),
            }
        }
        Command::Linux(a) => linux(&a),
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

#[cfg(target_arch = "aarch64")]
fn linux(a: &vmm_shim::cli::LinuxArgs) -> ExitCode {
    if let Err(e) = vmm_shim::kvm::check_kvm() {
        return fail(e);
    }
    let mut backend = match ProtoBackend::connect(&a.socket, Duration::from_secs(5)) {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let console = std::io::stdout();
    let s = match vmm_shim::arm64::run::run_linux(&mut backend, &a.options(), console) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let json = match s.to_json() {
        Ok(j) => j,
        Err(e) => return fail(format!("cannot encode the summary: {e}")),
    };
    match a.json.as_deref() {
        Some(p) if p == std::path::Path::new("-") => println!("{json}"),
        Some(p) => {
            println!("{s}");
            if let Err(e) = std::fs::write(p, json + "\n") {
                return fail(format!("cannot write {}: {e}", p.display()));
            }
        }
        None => println!("{s}"),
    }
    if s.success() {
        ExitCode::SUCCESS
    } else {
        fail(format!(
            "the guest stopped with a {} instead of powering off",
            s.stop.as_str()
        ))
    }
}

#[cfg(not(target_arch = "aarch64"))]
fn linux(_: &vmm_shim::cli::LinuxArgs) -> ExitCode {
    fail("`linux` boots an arm64 kernel under KVM: arm64 hosts only (see docs/arm64.md for running it inside an emulated arm64 machine)")
}
