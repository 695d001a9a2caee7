//! The `vfio-sidecar` command line (shared with other binaries: the shim's demo
//! re-execs itself into [`crate::server::run_serve`]).

use std::path::{Path, PathBuf};

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use thiserror::Error;

use crate::device::{Device, DeviceError};
use crate::dt::{device_tree, DtDevice, DtError, DtParams};
use crate::irq::EoiPolicy;
use crate::model::{self, ModelSpec};
use crate::profile::{Profile, ProfileError, ProfileSet};

const EXAMPLES: &str = "\
Examples:
  # Serve the built-in PL330 model (8 channels, one IRQ per event) on a socket:
  vfio-sidecar serve --socket /run/pl330.sock --device model:pl330

  # Same, with one combined IRQ and QEMU's legacy EOI heuristic (for comparison):
  vfio-sidecar serve -s /tmp/s.sock -d model:pl330,combined-irq --eoi first-access

  # Serve a real device bound to vfio-amba / vfio-platform / vfio-pci:
  vfio-sidecar serve -s /tmp/s.sock -d vfio:/sys/bus/amba/devices/fe000000.dma

  # Print the guest DT node for the PL330 model:
  vfio-sidecar dt --device model:pl330 --format dts --base 0x9000000 --irq-base 40

Device strings:
  model:pl330[,channels=N][,events=N][,periph-reqs=N][,revision=N][,data-width=BITS]
             [,buffer-lines=N][,combined-irq][,no-dmago-gate][,step-budget=N]
  model:scratch[,irqs=N]          tiny test device (trapped registers + mmap-able page)
  model:edu[,dma-bits=N]          QEMU's edu PCI device (1234:11e8), for PCI clients
  vfio:SYSFS_PATH                  a device bound to a VFIO driver

Logging: -v (debug), -vv (trace); RUST_LOG overrides (e.g. RUST_LOG=vfio_sidecar=trace).
See docs/backend.md for profiles (TOML), EOI policies and the client lifecycle.";

/// vfio-sidecar: serve a VFIO device or a built-in model over vfio-user.
#[derive(Debug, Parser)]
#[command(name = "vfio-sidecar", version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// More logging (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a device over a vfio-user socket (one client at a time).
    #[command(after_help = EXAMPLES)]
    Serve(ServeArgs),
    /// Print the guest device-tree node of a platform/AMBA device.
    #[command(after_help = EXAMPLES)]
    Dt(DtArgs),
    /// Connect to any vfio-user server and describe its device, like lspci -vv
    /// (read-only unless --read is given).
    Probe(crate::probe::ProbeArgs),
}

/// A `--device` string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// `model:NAME[,options]`.
    Model(ModelSpec),
    /// `vfio:SYSFS_PATH`.
    Vfio(PathBuf),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(m) = s.strip_prefix("model:") {
            return Ok(DeviceSpec::Model(m.parse()?));
        }
        if let Some(p) = s.strip_prefix("vfio:") {
            if p.is_empty() {
                return Err(
                    "vfio: needs a sysfs path, e.g. vfio:/sys/bus/pci/devices/0000:00:03.0".into(),
                );
            }
            return Ok(DeviceSpec::Vfio(PathBuf::from(p)));
        }
        Err(format!(
            "bad device {s:?}: expected model:NAME[,opts] (models: {}) or vfio:/sys/bus/.../DEVICE",
            model::MODEL_NAMES.join(", ")
        ))
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Model(m) => {
                write!(f, "model:{}", m.name)?;
                for (k, v) in &m.options {
                    match v {
                        Some(v) => write!(f, ",{k}={v}")?,
                        None => write!(f, ",{k}")?,
                    }
                }
                Ok(())
            }
            DeviceSpec::Vfio(p) => write!(f, "vfio:{}", p.display()),
        }
    }
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(&h.replace('_', ""), 16),
        None => s.replace('_', "").parse(),
    };
    r.map_err(|_| format!("{s:?} is not a number (decimal or 0x-hex)"))
}

/// `serve` options.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Unix socket path to listen on (created; removed on exit).
    #[arg(short, long)]
    pub socket: PathBuf,
    /// Device to serve: model:pl330[,opts], model:scratch or vfio:/sys/bus/.../DEVICE.
    #[arg(short, long)]
    pub device: DeviceSpec,
    /// TOML file with extra device profiles (override built-in ones by name).
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Use this profile (by name) instead of detecting it.
    #[arg(long)]
    pub profile_name: Option<String>,
    /// EOI policy for level IRQs (default: the profile's, clear-register for the
    /// PL330): clear-register, resample or first-access (legacy, comparison only).
    #[arg(long)]
    pub eoi: Option<EoiPolicy>,
    /// PL330 model: do not check DMAGO's microcode address against the DMA table.
    #[arg(long)]
    pub no_dmago_gate: bool,
    /// VFIO: never offer regions for mmap (every access traps).
    #[arg(long)]
    pub no_mmap: bool,
    /// Maximum number of DMA mappings a client may create.
    #[arg(long, default_value_t = crate::dma::DEFAULT_DMA_LIMIT as u32)]
    pub max_dma_maps: u32,
}

impl ServeArgs {
    /// Minimal arguments: socket and device, everything else default.
    pub fn new(socket: PathBuf, device: DeviceSpec) -> Self {
        ServeArgs {
            socket,
            device,
            profile: None,
            profile_name: None,
            eoi: None,
            no_dmago_gate: false,
            no_mmap: false,
            max_dma_maps: crate::dma::DEFAULT_DMA_LIMIT as u32,
        }
    }
}

/// DT output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtFormat {
    /// Source text.
    Dts,
    /// Flattened blob.
    Dtb,
}

/// `dt` options.
#[derive(Debug, Clone, Args)]
pub struct DtArgs {
    /// Device (as for serve).
    #[arg(short, long)]
    pub device: DeviceSpec,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = DtFormat::Dts)]
    pub format: DtFormat,
    /// Output file (default: stdout).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Guest-physical base address of the device.
    #[arg(long, value_parser = parse_u64, default_value = "0xc000000")]
    pub base: u64,
    /// First GIC SPI number.
    #[arg(long, default_value_t = 32)]
    pub irq_base: u32,
    /// TOML file with extra device profiles.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Use this profile (by name).
    #[arg(long)]
    pub profile_name: Option<String>,
}

/// Errors of the command line layer.
#[derive(Debug, Error)]
pub enum CliError {
    /// A profile problem.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// No profile fits.
    #[error("no device profile for {0}; give one with --profile FILE (see docs/backend.md) or --profile-name NAME")]
    NoProfile(String),
    /// The device could not be created/opened.
    #[error("{0}")]
    Device(String),
    /// DT generation.
    #[error("device tree: {0}")]
    Dt(#[from] DtError),
    /// Output.
    #[error("cannot write {path}: {source}")]
    Write {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// Sets up `env_logger`: `RUST_LOG` wins; else info (0), debug (1), trace (2+).
pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let env = env_logger::Env::default().default_filter_or(level);
    let _ = env_logger::Builder::from_env(env)
        .format_timestamp_micros()
        .try_init();
}

/// Loads built-in profiles plus the optional file.
pub fn load_profiles(file: Option<&Path>) -> Result<ProfileSet, CliError> {
    let mut set = ProfileSet::default();
    if let Some(f) = file {
        set.add_file(f)?;
    }
    Ok(set)
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn parse_hex_u32(s: &str) -> Option<u32> {
    u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// Picks the profile for a device: `--profile-name`, else the model's name, else
/// by sysfs identity (DT compatible, PrimeCell ID, PCI ID).
pub fn select_profile(
    set: &ProfileSet,
    spec: &DeviceSpec,
    name: Option<&str>,
) -> Result<Profile, CliError> {
    if let Some(n) = name {
        return set
            .by_name(n)
            .cloned()
            .ok_or_else(|| CliError::NoProfile(format!("profile name {n:?}")));
    }
    match spec {
        DeviceSpec::Model(m) => set
            .by_name(&m.name)
            .cloned()
            .ok_or_else(|| CliError::NoProfile(format!("model {}", m.name))),
        DeviceSpec::Vfio(path) => {
            if let Ok(raw) = std::fs::read(path.join("of_node/compatible")) {
                let list: Vec<String> = raw
                    .split(|b| *b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect();
                if let Some(p) = set.by_compatible(&list) {
                    return Ok(p.clone());
                }
            }
            if let Some(id) = read_trim(&path.join("id")).and_then(|s| parse_hex_u32(&s)) {
                if let Some(p) = set.by_primecell(id) {
                    return Ok(p.clone());
                }
            }
            let v = read_trim(&path.join("vendor")).and_then(|s| parse_hex_u32(&s));
            let d = read_trim(&path.join("device")).and_then(|s| parse_hex_u32(&s));
            if let (Some(v), Some(d)) = (v, d) {
                if let Some(p) = set.by_pci(v as u16, d as u16) {
                    return Ok(p.clone());
                }
            }
            Err(CliError::NoProfile(path.display().to_string()))
        }
    }
}

/// Opens the device behind a spec.
pub fn open_device(
    spec: &DeviceSpec,
    no_dmago_gate: bool,
    no_mmap: bool,
) -> Result<Box<dyn Device>, CliError> {
    match spec {
        DeviceSpec::Model(m) if m.name == "edu" => model::edu::Edu::from_spec(m)
            .map(|d| Box::new(d) as Box<dyn Device>)
            .map_err(|e| CliError::Device(format!("model:edu: {e}"))),
        DeviceSpec::Model(m) => model::create(m, no_dmago_gate)
            .map(|d| Box::new(d) as Box<dyn Device>)
            .map_err(|e: DeviceError| CliError::Device(format!("model:{}: {e}", m.name))),
        DeviceSpec::Vfio(path) => {
            let opts = crate::vfio::VfioOptions {
                no_mmap,
                ..Default::default()
            };
            crate::vfio::open(path, &opts)
                .map(|d| Box::new(d) as Box<dyn Device>)
                .map_err(|e| CliError::Device(e.to_string()))
        }
    }
}

/// The `dt` subcommand.
pub fn run_dt(args: &DtArgs) -> Result<(), CliError> {
    let set = load_profiles(args.profile.as_deref())?;
    let dev = open_device(&args.device, false, true)?;
    let profile = select_profile(&set, &args.device, args.profile_name.as_deref())?;
    let info = dev.info();
    let mut region_sizes = Vec::new();
    for i in 0..info.num_regions {
        region_sizes.push(dev.region_info(i).map(|r| r.size).unwrap_or(0));
    }
    let tree = device_tree(
        &profile,
        &DtDevice {
            region_sizes,
            num_irqs: info.num_irqs,
        },
        &DtParams {
            base: args.base,
            irq_base: args.irq_base,
            ..Default::default()
        },
    )?;
    let bytes = match args.format {
        DtFormat::Dts => tree.to_dts().into_bytes(),
        DtFormat::Dtb => tree.to_dtb()?,
    };
    match &args.output {
        Some(p) => std::fs::write(p, bytes).map_err(|source| CliError::Write {
            path: p.display().to_string(),
            source,
        }),
        None => {
            use std::io::Write;
            std::io::stdout()
                .write_all(&bytes)
                .map_err(|source| CliError::Write {
                    path: "stdout".into(),
                    source,
                })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn device_spec_parsing() {
        let d: DeviceSpec = "model:pl330,channels=4".parse().unwrap();
        assert_eq!(d.to_string(), "model:pl330,channels=4");
        let v: DeviceSpec = "vfio:/sys/bus/pci/devices/0000:00:03.0".parse().unwrap();
        assert!(matches!(v, DeviceSpec::Vfio(_)));
        let e = "pl330".parse::<DeviceSpec>().unwrap_err();
        assert!(e.contains("model:NAME"), "{e}");
        assert!("vfio:".parse::<DeviceSpec>().is_err());
        assert!("model:".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn serve_args_parse() {
        let cli = Cli::try_parse_from([
            "vfio-sidecar",
            "serve",
            "--socket",
            "/tmp/x",
            "--device",
            "model:scratch",
            "--eoi",
            "first-access",
            "-vv",
        ])
        .unwrap();
        assert_eq!(cli.verbose, 2);
        match cli.command {
            Command::Serve(a) => {
                assert_eq!(a.eoi, Some(EoiPolicy::FirstAccess));
                assert_eq!(a.max_dma_maps, 65535);
            }
            _ => panic!("not serve"),
        }
        assert!(Cli::try_parse_from(["vfio-sidecar", "serve", "-s", "/x", "-d", "bogus"]).is_err());
        assert!(Cli::try_parse_from([
            "vfio-sidecar",
            "serve",
            "-s",
            "/x",
            "-d",
            "model:pl330",
            "--eoi",
            "sometimes"
        ])
        .is_err());
    }

    #[test]
    fn profile_selection() {
        let set = ProfileSet::default();
        let p = select_profile(&set, &"model:scratch".parse().unwrap(), None).unwrap();
        assert_eq!(p.name, "scratch");
        let p = select_profile(&set, &"model:scratch".parse().unwrap(), Some("pl330")).unwrap();
        assert_eq!(p.name, "pl330");
        // A fake sysfs PCI device.
        let dir = std::env::temp_dir().join(format!("vfio-sidecar-sysfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vendor"), "0x1234\n").unwrap();
        std::fs::write(dir.join("device"), "0x11e8\n").unwrap();
        let p = select_profile(&set, &DeviceSpec::Vfio(dir.clone()), None).unwrap();
        assert_eq!(p.name, "edu");
        std::fs::write(dir.join("device"), "0x0001\n").unwrap();
        assert!(select_profile(&set, &DeviceSpec::Vfio(dir.clone()), None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dt_for_scratch_model() {
        let out = std::env::temp_dir().join(format!("vfio-sidecar-dt-{}.dts", std::process::id()));
        run_dt(&DtArgs {
            device: "model:scratch".parse().unwrap(),
            format: DtFormat::Dts,
            output: Some(out.clone()),
            base: 0x1000_0000,
            irq_base: 40,
            profile: None,
            profile_name: None,
        })
        .unwrap();
        let s = std::fs::read_to_string(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        assert!(s.contains("scratch@10000000"), "{s}");
        assert!(s.contains("interrupts = <0x0 0x28 0x4>;"), "{s}");
        assert!(s.contains("reg = <0x0 0x10000000 0x0 0x2000>;"), "{s}");
    }
}
