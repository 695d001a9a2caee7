//! `vfio-sidecar-bench`: where vfio-sidecar stands against its transport limit
//! and against the legacy EOI heuristic. Every figure is printed beside a
//! baseline measured in the same run (see docs/benchmarks.md).
//!
//! Sections: 1. trapped MMIO round trip vs raw socket ping-pong; 2. shared vs
//! trapped pages from a KVM guest; 3. EOI policies; 4. DMA map table; 5. PL330
//! model throughput vs memcpy; 6. device DMA through DMA_READ/DMA_WRITE
//! messages vs through a mapped fd.

mod dmamap;
mod dmamsg;
mod eoi;
mod harness;
mod kvm;
mod mmio;
mod pattern;
mod plot;
mod procs;
mod stats;
mod throughput;

use std::path::PathBuf;

use clap::Parser;
use serde::Serialize;
use thiserror::Error;
use vfio_sidecar_protocol::ClientError;

use harness::Sizes;

/// Benchmark errors: any of them makes the run fail (exit 1).
#[derive(Debug, Error)]
pub enum BenchError {
    /// A system call or file operation failed.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// A protocol request failed.
    #[error("{0}: {1}")]
    Client(String, #[source] ClientError),
    /// A child process failed.
    #[error("{0}")]
    Child(String),
    /// The configuration cannot run here.
    #[error("cannot run: {0}")]
    Config(String),
    /// A result was wrong (the measurement is not trustworthy).
    #[error("check failed: {0}")]
    Check(String),
}

/// Wraps a client error with context.
pub fn client_err(what: &str, e: ClientError) -> BenchError {
    BenchError::Client(what.to_string(), e)
}

/// Benchmarks of vfio-sidecar against its transport limit and the legacy EOI.
#[derive(Debug, Parser)]
#[command(name = "vfio-sidecar-bench", version, about)]
struct Args {
    /// A few seconds, fewer samples and sizes (CI smoke run).
    #[arg(long)]
    quick: bool,
    /// Also write every figure as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the PNG plots (DMA map scaling, PL330 throughput) into this directory.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Placements: `same` (both processes on one core), `split` (two cores).
    #[arg(long, default_value = "same,split")]
    placements: String,
    /// Sections to run (1..6), comma separated.
    #[arg(long, default_value = "1,2,3,4,5,6")]
    sections: String,
    /// Use this `vfio-sidecar` binary as the backend instead of re-executing
    /// this one in backend mode (same code either way).
    #[arg(long)]
    backend_bin: Option<PathBuf>,
}

/// The machine the run was made on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs online.
    pub nproc: usize,
    /// CPUs this process may use.
    pub allowed_cpus: Vec<usize>,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
}

fn machine(allowed: &[usize]) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    // SAFETY: sysconf has no memory effects.
    let nproc = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    Machine {
        nproc,
        allowed_cpus: allowed.to_vec(),
        cpu_model,
        kernel,
    }
}

/// Everything a run measured.
#[derive(Debug, Default, Serialize)]
struct Report {
    machine: Option<Machine>,
    command: String,
    quick: bool,
    mmio: Vec<mmio::MmioRow>,
    kvm: Vec<kvm::KvmRow>,
    eoi: Vec<eoi::EoiRow>,
    dma_map: Vec<dmamap::DmaRow>,
    pl330_throughput: Vec<throughput::ThroughputRow>,
    dma_messages: Vec<dmamsg::DmaMsgRow>,
}

fn section(n: u32, title: &str) {
    println!();
    println!("== {n}. {title} ==");
}

fn run(args: &Args) -> Result<(), BenchError> {
    let cpus = procs::allowed_cpus()?;
    let placements = harness::placements(&cpus, &args.placements)?;
    let m = machine(&cpus);
    let want: Vec<&str> = args.sections.split(',').map(str::trim).collect();
    let mut rep = Report {
        machine: Some(m.clone()),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        quick: args.quick,
        ..Report::default()
    };
    println!(
        "vfio-sidecar-bench{}: {} CPUs ({}), kernel {}, placements: {}",
        if args.quick { " --quick" } else { "" },
        m.nproc,
        m.cpu_model,
        m.kernel,
        placements
            .iter()
            .map(|p| format!(
                "{} (client cpu {}, server cpu {})",
                p.name, p.client_cpu, p.server_cpu
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let lat = if args.quick {
        Sizes {
            blocks: 2,
            per_block: 200,
            warmup: 20,
        }
    } else {
        Sizes {
            blocks: 10,
            per_block: 1000,
            warmup: 100,
        }
    };
    let bin = args.backend_bin.as_deref();
    if want.contains(&"1") {
        section(
            1,
            "Trapped MMIO round trip vs raw AF_UNIX ping-pong of the same sizes",
        );
        rep.mmio = mmio::run(bin, &placements, lat)?;
        mmio::print(&rep.mmio);
    }
    if want.contains(&"2") {
        section(2, "Shared vs trapped pages from a KVM guest");
        let (fast, slow, reps) = if args.quick {
            (20, 200, 3)
        } else {
            (200, 3000, 7)
        };
        rep.kvm = kvm::run(bin, &placements, fast, slow, reps)?;
        kvm::print(&rep.kvm);
    }
    if want.contains(&"3") {
        section(3, "EOI policies on the Linux-order PL330 ISR");
        rep.eoi = eoi::run(bin, &placements, if args.quick { 40 } else { 1000 })?;
        eoi::print(&rep.eoi);
    }
    if want.contains(&"4") {
        section(
            4,
            "DMA map table: DMA_MAP / DMA_UNMAP per call vs raw round trip",
        );
        let counts: &[usize] = if args.quick {
            &[1, 1000]
        } else {
            &[1, 1000, 64000]
        };
        let s = if args.quick {
            Sizes {
                blocks: 2,
                per_block: 100,
                warmup: 10,
            }
        } else {
            Sizes {
                blocks: 5,
                per_block: 400,
                warmup: 20,
            }
        };
        rep.dma_map = dmamap::run(bin, &placements, counts, s)?;
        dmamap::print(&rep.dma_map);
    }
    if want.contains(&"5") {
        section(5, "PL330 model throughput (in process) vs host memcpy");
        let sizes: Vec<u64> = if args.quick {
            vec![4 << 10, 64 << 10, 256 << 10]
        } else {
            vec![4 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20]
        };
        let (reps, target) = if args.quick {
            (1, 8 << 20)
        } else {
            (5, 512 << 20)
        };
        rep.pl330_throughput = throughput::run(&sizes, reps, target)?;
        throughput::print(&rep.pl330_throughput);
    }
    if want.contains(&"6") {
        section(
            6,
            "Device DMA through DMA_READ/DMA_WRITE messages vs a mapped fd (edu, 4 KiB)",
        );
        rep.dma_messages = dmamsg::run(bin, &placements, if args.quick { 20 } else { 500 })?;
        dmamsg::print(&rep.dma_messages);
    }
    if let Some(dir) = &args.plot {
        std::fs::create_dir_all(dir).map_err(|e| BenchError::Io(dir.display().to_string(), e))?;
        println!();
        if !rep.dma_map.is_empty() {
            println!("plot: {}", plot::dma_map(dir, &rep.dma_map)?.display());
        }
        if !rep.pl330_throughput.is_empty() {
            println!(
                "plot: {}",
                plot::throughput(dir, &rep.pl330_throughput)?.display()
            );
        }
    }
    if let Some(j) = &args.json {
        let s = serde_json::to_string_pretty(&rep)
            .map_err(|e| BenchError::Check(format!("JSON: {e}")))?;
        std::fs::write(j, s).map_err(|e| BenchError::Io(j.display().to_string(), e))?;
        println!("\nJSON written to {}", j.display());
    }
    Ok(())
}

fn main() {
    let mut argv: Vec<String> = std::env::args().collect();
    match argv.get(1).map(String::as_str) {
        Some(procs::BACKEND_MODE) => std::process::exit(procs::backend_main(argv.split_off(2))),
        Some(procs::ECHO_MODE) => std::process::exit(procs::echo_main(argv.split_off(2))),
        _ => {}
    }
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = run(&args) {
        eprintln!("vfio-sidecar-bench: FAILED: {e}");
        std::process::exit(1);
    }
}
