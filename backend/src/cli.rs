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
             [,time-slice-us=N]
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
    #[command(after_help = DT_EXAMPLES)]
    Dt(DtArgs),
    /// Connect to any vfio-user server and describe its device, like lspci -vv
    /// (read-only unless --read is given).
    Probe(crate::probe::ProbeArgs),
    /// List VFIO-bound devices and candidates matching a profile; say how to get
    /// VFIO when the host has none (exit code 0 either way).
    #[command(after_help = HOST_EXAMPLES)]
    List(ListArgs),
    /// Bind a device to the VFIO driver of its bus (driver_override, unbind,
    /// drivers_probe); needs root unless --dry-run.
    #[command(after_help = HOST_EXAMPLES)]
    Bind(BindArgs),
}

const DT_EXAMPLES: &str = "\
Examples:
  # The PL330 model's node as DTS, placed at 0x9000000 with its first SPI at 40:
  vfio-sidecar dt --device model:pl330 --format dts --base 0x9000000 --irq-base 40

  # The same as a DTB, with one combined IRQ:
  vfio-sidecar dt --device model:pl330,combined-irq --format dtb -o pl330.dtb

  # A real device (its profile is matched by PrimeCell ID, DT compatible or PCI ID):
  vfio-sidecar dt --device vfio:/sys/bus/amba/devices/fe000000.dma --format dts

A VMM that uses the backend gets the same node over the socket
(SIDECAR_GET_DEVICE_DESC) and places it itself; see docs/backend.md.";

const HOST_EXAMPLES: &str = "\
Examples:
  # What can be served here, and is VFIO usable at all?
  vfio-sidecar list
  vfio-sidecar list --json

  # Show the sysfs writes that hand a device to vfio-amba, then do them (as root):
  vfio-sidecar bind ff240000.dma-controller --dry-run
  vfio-sidecar bind ff240000.dma-controller

  # DEVICE may also be a sysfs path, with or without serve's vfio: prefix:
  vfio-sidecar bind vfio:/sys/bus/pci/devices/0000:00:03.0";

/// `list` options.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Machine-readable output: {"vfio": host status, "devices": [...]}.
    #[arg(long)]
    pub json: bool,
    /// Root of sysfs (a fake tree for tests).
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    pub sysfs: PathBuf,
    /// Root of /dev, where /dev/vfio is looked for (tests).
    #[arg(long, value_name = "DIR", default_value = "/dev", hide = true)]
    pub dev: PathBuf,
    /// TOML file with extra device profiles (more candidates are recognised).
    #[arg(long)]
    pub profile: Option<PathBuf>,
}

/// `bind` options.
#[derive(Debug, Clone, Args)]
pub struct BindArgs {
    /// Device name (0000:00:03.0, ff240000.dma-controller) or sysfs path
    /// (optionally vfio:-prefixed, as for serve --device).
    pub device: String,
    /// Print the writes as shell commands; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Root of sysfs (a fake tree for tests).
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    pub sysfs: PathBuf,
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

/// Parses a number given on a command line or in a device string: decimal or
/// `0x`-hex, `_` separators allowed. The one parser of every CLI number
/// (`serve`/`dt`/`probe`, device options, `vmm-shim`).
pub fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(&h.replace('_', ""), 16),
        None => s.replace('_', "").parse(),
    };
    r.map_err(|_| format!("{s:?} is not a number (decimal or 0x-hex)"))
}

/// What `serve --seccomp` does on a syscall outside the allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum SeccompMode {
    /// Kill the process (SIGSYS) at the first forbidden syscall (default).
    #[default]
    Kill,
    /// Print the forbidden syscall's number to stderr, then die by SIGSYS.
    Trap,
    /// Allow it; the kernel logs it to the audit log (finding missing syscalls).
    Log,
    /// No filter at all (debugging only).
    Off,
}

impl SeccompMode {
    /// The sandbox action, `None` for [`SeccompMode::Off`].
    pub fn action(self) -> Option<crate::sandbox::SeccompAction> {
        use crate::sandbox::SeccompAction;
        match self {
            SeccompMode::Kill => Some(SeccompAction::Kill),
            SeccompMode::Trap => Some(SeccompAction::Trap),
            SeccompMode::Log => Some(SeccompAction::Log),
            SeccompMode::Off => None,
        }
    }
}

/// `--user USER[:GROUP]`: names or numeric ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserGroup {
    /// The user.
    pub user: String,
    /// The group (default: the user's primary group).
    pub group: Option<String>,
}

impl std::str::FromStr for UserGroup {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (u, g) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        if u.is_empty() || g.is_some_and(str::is_empty) {
            return Err(format!("bad --user {s:?}: expected USER or USER:GROUP"));
        }
        Ok(UserGroup {
            user: u.to_string(),
            group: g.map(str::to_string),
        })
    }
}

impl std::fmt::Display for UserGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.group {
            Some(g) => write!(f, "{}:{g}", self.user),
            None => f.write_str(&self.user),
        }
    }
}

/// Parses a socket mode: octal, with or without a leading `0`/`0o`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let t = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(t, 8) {
        Ok(m) if m & !0o777 == 0 => Ok(m),
        _ => Err(format!(
            "{s:?} is not a socket mode: give octal permission bits, e.g. 0600 or 0660"
        )),
    }
}

/// `serve` options.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Unix socket path to listen on (created with --socket-mode, removed on exit).
    /// Under systemd socket activation (LISTEN_FDS/LISTEN_PID) the inherited
    /// socket is used instead and left in place.
    #[arg(short, long)]
    pub socket: PathBuf,
    /// Also serve live statistics on this Unix socket (off by default): each
    /// peer is written one JSON snapshot of the session's and the process's
    /// counters and closed; read it with `probe --stats`. Created like
    /// --socket (--socket-mode/-owner/-group), removed on exit; peers pass
    /// the --allow-uid/--allow-gid policy.
    #[arg(long, value_name = "PATH")]
    pub stats_socket: Option<PathBuf>,
    /// Device to serve: model:pl330[,opts], model:scratch, model:edu or vfio:/sys/bus/.../DEVICE.
    // The text is clap's help too: `[,opts]` stays unescaped there.
    #[allow(rustdoc::broken_intra_doc_links)]
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
    /// Never offer regions for mmap (models and VFIO alike): every access traps
    /// into the backend.
    #[arg(long)]
    pub no_mmap: bool,
    /// VFIO devices: IOMMU interface. auto = iommufd (/dev/iommu + the device's
    /// VFIO cdev) when the kernel has it, else the legacy type1v2 container.
    #[arg(long, value_enum, default_value_t = crate::vfio::IommuBackend::Auto, value_name = "IOMMU")]
    pub iommu: crate::vfio::IommuBackend,
    /// Maximum number of DMA mappings a client may create.
    #[arg(long, default_value_t = crate::dma::DEFAULT_DMA_LIMIT as u32)]
    pub max_dma_maps: u32,
    /// Permission bits of the socket file we create (octal).
    #[arg(long, value_parser = parse_mode, default_value = "0600", value_name = "MODE")]
    pub socket_mode: u32,
    /// Owner of the socket file we create (user name or uid), e.g. the VMM's user.
    #[arg(long, value_name = "USER")]
    pub socket_owner: Option<String>,
    /// Group of the socket file we create (group name or gid).
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Accept only peers with this uid (SO_PEERCRED; user name or uid; repeatable).
    /// With --allow-uid/--allow-gid, a peer passes if its uid or primary gid is
    /// listed; others are logged and disconnected at once.
    #[arg(long = "allow-uid", value_name = "UID")]
    pub allow_uid: Vec<String>,
    /// Accept only peers with this primary gid (group name or gid; repeatable).
    #[arg(long = "allow-gid", value_name = "GID")]
    pub allow_gid: Vec<String>,
    /// Switch to this user (and group; default its primary group) after opening
    /// the device and the socket. Needs root.
    #[arg(long, value_name = "USER[:GROUP]")]
    pub user: Option<UserGroup>,
    /// Seccomp allow-list of the serve loop: kill (default), trap (print the
    /// syscall number, then die), log (allow, kernel audit log) or off.
    #[arg(long, value_enum, default_value_t = SeccompMode::Kill, value_name = "MODE")]
    pub seccomp: SeccompMode,
}

impl ServeArgs {
    /// Minimal arguments: socket and device, everything else default (seccomp
    /// kill, socket mode 0600, no peer policy, no user switch).
    pub fn new(socket: PathBuf, device: DeviceSpec) -> Self {
        ServeArgs {
            socket,
            stats_socket: None,
            device,
            profile: None,
            profile_name: None,
            eoi: None,
            no_dmago_gate: false,
            no_mmap: false,
            iommu: crate::vfio::IommuBackend::Auto,
            max_dma_maps: crate::dma::DEFAULT_DMA_LIMIT as u32,
            socket_mode: 0o600,
            socket_owner: None,
            socket_group: None,
            allow_uid: Vec::new(),
            allow_gid: Vec::new(),
            user: None,
            seccomp: SeccompMode::Kill,
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
    /// Host discovery or binding (`list`, `bind`).
    #[error(transparent)]
    Host(#[from] crate::host::HostError),
    /// Output.
    #[error("cannot write {path}: {source}")]
    Write {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// The crates whose logs `vfio-sidecar` prints.
const OUR_CRATES: &[&str] = &["vfio_sidecar", "vfio_sidecar_protocol"];

/// Sets up `env_logger`: `RUST_LOG` wins; else info (0), debug (1), trace (2+).
pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let mut builder = match std::env::var("RUST_LOG") {
        Ok(spec) if !vfio_sidecar_protocol::peerlog::rust_log_enables(&spec, OUR_CRATES) => {
            eprintln!(
                "warning: RUST_LOG={spec:?} enables no log of this program (no level, no module \
                 of {}); ignoring it and logging at {level}",
                OUR_CRATES.join("/")
            );
            let mut b = env_logger::Builder::new();
            b.parse_filters(level);
            b
        }
        _ => env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)),
    };
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        // Under systemd the journal reads a `<N>` syslog priority prefix per
        // line (SyslogLevelPrefix=yes, the default) and adds its own time.
        builder.format(|buf, record| {
            use std::io::Write;
            writeln!(
                buf,
                "<{}>{}",
                journal_priority(record.level()),
                record.args()
            )
        });
    } else {
        builder.format_timestamp_micros();
    }
    let _ = builder.try_init();
}

/// The syslog priority (sd-daemon(3) `SD_ERR`..`SD_DEBUG`) of a log level.
fn journal_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Loads built-in profiles plus the optional file.
pub fn load_profiles(file: Option<&Path>) -> Result<ProfileSet, CliError> {
    let mut set = ProfileSet::default();
    if let Some(f) = file {
        set.add_file(f)?;
    }
    Ok(set)
}

/// Picks the profile for a device: `--profile-name`, else the model's name, else
/// by sysfs identity (DT compatible, PrimeCell ID, PCI ID; see
/// [`crate::host::match_profile`]).
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
        DeviceSpec::Vfio(path) => crate::host::match_profile(set, path)
            .cloned()
            .ok_or_else(|| CliError::NoProfile(path.display().to_string())),
    }
}

/// Opens the device behind a spec.
pub fn open_device(
    spec: &DeviceSpec,
    no_dmago_gate: bool,
    no_mmap: bool,
    iommu: crate::vfio::IommuBackend,
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
                iommu,
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
    let dev = open_device(&args.device, false, true, crate::vfio::IommuBackend::Auto)?;
    let profile = select_profile(&set, &args.device, args.profile_name.as_deref())?;
    let (region_sizes, num_irqs) = crate::device::shape(dev.as_ref());
    let profile = profile.for_irqs(num_irqs);
    profile.validate_for(&region_sizes, num_irqs)?;
    let tree = device_tree(
        &profile,
        &DtDevice {
            region_sizes,
            num_irqs,
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

fn write_stdout(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(|source| CliError::Write {
            path: "stdout".into(),
            source,
        })
}

/// The `list` subcommand's output. With no VFIO on the host this is still a
/// success: it says so and how to get it (and lists candidates, if any).
pub fn list_output(args: &ListArgs) -> Result<String, CliError> {
    use crate::host;
    let set = load_profiles(args.profile.as_deref())?;
    let status = host::vfio_host_status(&args.sysfs, &args.dev);
    let devices = host::list_devices(&args.sysfs, &set)?;
    if args.json {
        let v = serde_json::json!({ "vfio": status, "devices": devices });
        return Ok(serde_json::to_string_pretty(&v)
            .map(|mut s| {
                s.push('\n');
                s
            })
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}\n")));
    }
    let mut out = String::new();
    if !status.available() {
        out.push_str(
            "VFIO is not available on this host: only model: devices can be served \
             (e.g. vfio-sidecar serve -s /tmp/s.sock -d model:pl330).\n\n",
        );
    }
    out.push_str(&host::format_status(&status, false));
    out.push('\n');
    out.push_str(&host::format_list(&devices, false));
    Ok(out)
}

/// The `list` subcommand (prints [`list_output`]).
pub fn run_list(args: &ListArgs) -> Result<(), CliError> {
    write_stdout(&list_output(args)?)
}

/// The `bind` subcommand: [`crate::host::bind_plan`], then
/// [`crate::host::apply`] (printing the plan only with `--dry-run`).
pub fn run_bind(args: &BindArgs) -> Result<(), CliError> {
    let plan = crate::host::bind_plan(&args.device, &args.sysfs)?;
    let mut out = Vec::new();
    let r = crate::host::apply(&plan, args.dry_run, &mut out);
    write_stdout(&String::from_utf8_lossy(&out))?;
    r.map_err(CliError::from)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {

    use super::*;
    use clap::CommandFactory;

    #[test]
    fn one_number_parser_for_every_cli_number() {
        assert_eq!(parse_u64("4096"), Ok(4096));
        assert_eq!(parse_u64("0x1000"), Ok(4096));
        assert_eq!(parse_u64("0X1_000"), Ok(4096));
        assert_eq!(parse_u64("1_000"), Ok(1000));
        assert!(parse_u64("0x").is_err());
        assert!(parse_u64("-1").is_err());
        assert!(parse_u64("0x1_0000_0000_0000_0000").is_err());
        // Device options and probe --read use the same parser.
        assert_eq!(
            crate::model::parse_num("k", Some("0x1_0")).map_err(|e| e.to_string()),
            Ok(16)
        );
        let r: crate::probe::ReadSpec = "config:0x1_0:4".parse().unwrap();
        assert_eq!((r.offset, r.size), (16, 4));
    }

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
