//! `vfio-sidecar probe`: connect to any vfio-user server and print what it
//! offers, like `lspci -vv` — protocol version and negotiated capabilities
//! (the `org.vfio-sidecar` extension when offered), device flags, every region
//! (name, size, flags, sparse mmap areas, trapped pages), every IRQ index (count,
//! flags, trigger and EOI policy when the extension describes them), the
//! device-tree node of platform/AMBA devices (the server's DTB fragment decoded
//! by [`fdt`] when it sends one, else built from the device description), and
//! with `--json` all of it as one JSON object for scripts.
//!
//! The probe is read-only: it sends VERSION, DEVICE_GET_INFO,
//! DEVICE_GET_REGION_INFO, DEVICE_GET_IRQ_INFO and, when the extension was
//! negotiated, SIDECAR_GET_DEVICE_DESC and SIDECAR_GET_IRQ_STATS. For PCI
//! devices it also reads the first 256 bytes of config space (region 7; the
//! standard header and capability list), which has no side effects on PCI. Device registers are read only when
//! asked (`--read REGION:OFFSET:SIZE`, printed as a hex dump) because a read
//! can have side effects (read-to-clear registers). Note that the *server* may
//! act on the connection itself: vfio-sidecar resets the device (when it can)
//! after every client, the probe included, and serves one client at a time
//! (a busy server answers `EBUSY`, reported as such).

use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use thiserror::Error;
use vfio_sidecar_protocol::caps::SidecarCaps;
use vfio_sidecar_protocol::ext::{DeviceDescription, DeviceKind, EoiPolicy, IrqStats, IrqTrigger};
use vfio_sidecar_protocol::message::{
    REGION_INFO_FLAG_CAPS, REGION_INFO_FLAG_MMAP, REGION_INFO_FLAG_READ, REGION_INFO_FLAG_WRITE,
};
use vfio_sidecar_protocol::{Client, ClientError, ClientOptions, Errno, TransportError};

pub mod fdt;
pub mod stats;

use crate::device::{device_flags, irq_flags};
use crate::dt::{device_nodes, DtDevice, DtParams, Node};
use crate::profile::{Clock, IrqProfile, Profile, Trigger};

/// Largest `--read` size.
pub const MAX_READ: u64 = 64 * 1024;
/// Most vectors whose statistics are fetched per IRQ index.
const MAX_STATS_VECTORS: u32 = 64;

const PROBE_EXAMPLES: &str = "\
Examples:
  # Describe the device behind a socket (text, like lspci -vv):
  vfio-sidecar probe --socket /run/pl330.sock

  # The same as JSON, for scripts:
  vfio-sidecar probe -s /run/edu.sock --json | jq '.regions[] | {name, size, trapped}'

  # See the device as QEMU or cloud-hypervisor do (no vfio-sidecar extension):
  vfio-sidecar probe -s /run/edu.sock --plain

  # Hex-dump PCI config space and the first register of BAR0:
  vfio-sidecar probe -s /run/edu.sock --read config:0:64 --read BAR0:0:4

  # Live counters of the attached client (serve --stats-socket /run/pl330.stats):
  vfio-sidecar probe --stats -s /run/pl330.stats
  vfio-sidecar probe --stats -s /run/pl330.stats --prometheus

Only VERSION, DEVICE_GET_INFO, GET_REGION_INFO, GET_IRQ_INFO and the extension's
read-only queries are sent (plus a 256-byte config space read for PCI devices);
device memory is read only with --read. Exit status: 0 on success, 1 on any
error (no such socket, refused, busy, not a vfio-user server, timeout).";

/// `probe` options.
#[derive(Debug, Clone, Args)]
#[command(after_help = PROBE_EXAMPLES)]
pub struct ProbeArgs {
    /// vfio-user server socket to connect to.
    #[arg(short, long)]
    pub socket: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also read device memory and hex-dump it: REGION:OFFSET:SIZE, REGION an
    /// index or a name (BAR0, config, a described region name). Repeatable.
    /// Reads can have side effects on some registers.
    #[arg(short, long = "read", value_name = "REGION:OFFSET:SIZE")]
    pub read: Vec<ReadSpec>,
    /// Seconds to wait for each reply.
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
    /// Do not propose the vfio-sidecar extension (see the device as a plain
    /// vfio-user client like QEMU does).
    #[arg(long)]
    pub plain: bool,
    /// Read live statistics instead: --socket is then a `serve --stats-socket`
    /// (works while a VMM is attached); prints the connected client's session
    /// counters beside the process totals.
    #[arg(long, conflicts_with_all = ["read", "plain"])]
    pub stats: bool,
    /// With --stats: print them in the Prometheus text exposition format.
    #[arg(long, requires = "stats", conflicts_with = "json")]
    pub prometheus: bool,
}

impl ProbeArgs {
    /// Probe `socket` with default options.
    pub fn new(socket: PathBuf) -> Self {
        ProbeArgs {
            socket,
            json: false,
            read: Vec::new(),
            timeout: 5,
            plain: false,
            stats: false,
            prometheus: false,
        }
    }
}

/// Where a `--read` names its region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionRef {
    /// By index.
    Index(u32),
    /// By name (case-insensitive).
    Name(String),
}

/// A parsed `--read REGION:OFFSET:SIZE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadSpec {
    /// Region.
    pub region: RegionRef,
    /// Offset in the region.
    pub offset: u64,
    /// Bytes to read (1..=64 KiB).
    pub size: u64,
}

impl std::str::FromStr for ReadSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut it = s.rsplitn(3, ':');
        let (Some(size), Some(offset), Some(region)) = (it.next(), it.next(), it.next()) else {
            return Err(format!(
                "bad --read {s:?}: expected REGION:OFFSET:SIZE, e.g. config:0:64 or 0:0x10:4"
            ));
        };
        let size = crate::cli::parse_u64(size)?;
        if size == 0 || size > MAX_READ {
            return Err(format!("--read size {size} must be 1..={MAX_READ}"));
        }
        let region = match region.parse::<u32>() {
            Ok(i) => RegionRef::Index(i),
            Err(_) if !region.is_empty() => RegionRef::Name(region.to_string()),
            Err(_) => return Err(format!("bad --read {s:?}: empty region")),
        };
        Ok(ReadSpec {
            region,
            offset: crate::cli::parse_u64(offset)?,
            size,
        })
    }
}

/// Why a probe failed. Each message says what to check.
#[derive(Debug, Error)]
pub enum ProbeError {
    /// Nothing at the path.
    #[error("no such socket: {0} (is the server running? check --socket)")]
    NoSuchSocket(PathBuf),
    /// The path is not a socket.
    #[error("{0} is not a socket")]
    NotASocket(PathBuf),
    /// Nobody listens.
    #[error("connection refused: nothing listens on {0} (stale socket file of a dead server?)")]
    Refused(PathBuf),
    /// Permission.
    #[error("permission denied connecting to {0}")]
    PermissionDenied(PathBuf),
    /// Another client is being served.
    #[error("server at {0} is busy (EBUSY): it serves one client at a time and one is connected (live counters while it is: serve --stats-socket, probe --stats)")]
    Busy(PathBuf),
    /// The peer does not speak vfio-user.
    #[error("{path} is not a vfio-user server: {detail}")]
    NotVfioUser {
        /// Socket.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The peer closed the connection before answering VERSION.
    #[error("{0} closed the connection without answering VERSION: a vfio-sidecar server does this to a peer its --allow-uid/--allow-gid policy refuses (its log says \"connection refused\"); otherwise it is not a vfio-user server")]
    ClosedBeforeVersion(PathBuf),
    /// No reply in time.
    #[error("timed out after {secs} s waiting for the reply to {command} from {path} (not a vfio-user server, or a stuck one)")]
    Timeout {
        /// Socket.
        path: PathBuf,
        /// Command that got no reply.
        command: &'static str,
        /// Timeout.
        secs: u64,
    },
    /// A later request failed.
    #[error("{0}")]
    Protocol(String),
    /// A `--read` could not be done.
    #[error("--read: {0}")]
    Read(String),
    /// Output failed.
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
    /// `--stats`: the statistics socket could not be read.
    #[error("cannot read statistics from {path}: {source}")]
    StatsRead {
        /// Socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `--stats`: what the socket sent is no statistics snapshot.
    #[error("{path} sent no statistics snapshot: {detail}; --stats reads the socket of serve --stats-socket, not the vfio-user --socket")]
    StatsFormat {
        /// Socket.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

/// Negotiated capabilities as reported.
#[derive(Debug, Clone, Serialize)]
pub struct CapsReport {
    /// Server's `max_msg_fds`.
    pub max_msg_fds: u32,
    /// Server's `max_data_xfer_size`.
    pub max_data_xfer_size: u32,
    /// Server's `max_dma_maps`.
    pub max_dma_maps: u32,
    /// DMA page sizes.
    pub pgsizes: u64,
    /// `write_multiple` agreed.
    pub write_multiple: bool,
    /// Server sent a `migration` capability.
    pub migration: bool,
    /// Server offered twin-socket.
    pub twin_socket: bool,
    /// The `org.vfio-sidecar` extension, when negotiated.
    pub sidecar: Option<SidecarCaps>,
}

/// Device info as reported.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    /// `VFIO_DEVICE_FLAGS_*`.
    pub flags: u32,
    /// Flag names.
    pub flag_names: Vec<&'static str>,
    /// "pci", "amba", "platform" or "unknown".
    pub kind: &'static str,
    /// Region count.
    pub num_regions: u32,
    /// IRQ index count.
    pub num_irqs: u32,
}

/// A byte range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Range {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// One region.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RegionReport {
    /// Index.
    pub index: u32,
    /// Name (PCI by index, else from the device description).
    pub name: Option<String>,
    /// Size (0: absent).
    pub size: u64,
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// Flag names.
    pub flag_names: Vec<&'static str>,
    /// mmap offset of the region in the server's fd (MMAP only).
    pub mmap_offset: Option<u64>,
    /// Sparse mmap areas (`None`: no sparse capability).
    pub sparse: Option<Vec<Range>>,
    /// Byte ranges that trap (every access is a message): the pages not
    /// covered by sparse areas, or the whole region without MMAP.
    pub trapped: Vec<Range>,
    /// The request failed (the server's error).
    pub error: Option<String>,
}

/// One IRQ index.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IrqReport {
    /// Index.
    pub index: u32,
    /// Name (PCI by index, else from the device description).
    pub name: Option<String>,
    /// Vector count.
    pub count: u32,
    /// `VFIO_IRQ_INFO_*`.
    pub flags: u32,
    /// Flag names.
    pub flag_names: Vec<&'static str>,
    /// Trigger type (extension).
    pub trigger: Option<IrqTrigger>,
    /// EOI policy (extension).
    pub eoi: Option<vfio_sidecar_protocol::ext::EoiDesc>,
    /// Per-vector counters (extension).
    pub stats: Option<Vec<StatsReport>>,
    /// The request failed.
    pub error: Option<String>,
}

/// Counters of one vector.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StatsReport {
    /// Device events.
    pub device_events: u64,
    /// Host interrupts.
    pub host_interrupts: u64,
    /// Unmasks.
    pub unmasks: u64,
    /// Refires.
    pub refires: u64,
}

impl From<IrqStats> for StatsReport {
    fn from(s: IrqStats) -> Self {
        StatsReport {
            device_events: s.device_events,
            host_interrupts: s.host_interrupts,
            unmasks: s.unmasks,
            refires: s.refires,
        }
    }
}

/// The PCI standard header summary (from the first 256 bytes of config space).
#[derive(Debug, Clone, Serialize)]
pub struct PciHeader {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Revision.
    pub revision: u8,
    /// Class code (base, sub, prog-if).
    pub class: u32,
    /// Header type.
    pub header_type: u8,
    /// Subsystem vendor.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
    /// Interrupt pin (0 none, 1 = INTA).
    pub interrupt_pin: u8,
    /// Capability IDs in list order.
    pub capabilities: Vec<u8>,
}

/// One `--read` result.
#[derive(Debug, Clone, Serialize)]
pub struct ReadReport {
    /// Region index.
    pub region: u32,
    /// Offset.
    pub offset: u64,
    /// Data as lowercase hex.
    pub hex: String,
}

/// Everything the probe found.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    /// Socket path.
    pub socket: String,
    /// Negotiated protocol version `major.minor`.
    pub version: String,
    /// Server capabilities.
    pub capabilities: CapsReport,
    /// Device info.
    pub device: DeviceReport,
    /// PCI header (PCI devices).
    pub pci: Option<PciHeader>,
    /// The extension's device description.
    pub description: Option<DeviceDescription>,
    /// Size of the DTB fragment the server sent with the description.
    pub dtb_bytes: Option<usize>,
    /// Regions.
    pub regions: Vec<RegionReport>,
    /// IRQ indices.
    pub irqs: Vec<IrqReport>,
    /// DTS text of the device node (platform/AMBA devices): decoded from the
    /// server's DTB fragment when it sent one, else built from the description.
    pub device_tree: Option<String>,
    /// `"server-dtb"` or `"description"`.
    pub device_tree_source: Option<&'static str>,
    /// `--read` results.
    pub reads: Vec<ReadReport>,
}

/// PCI region names by vfio-pci index.
pub fn pci_region_name(index: u32) -> Option<&'static str> {
    Some(match index {
        0 => "BAR0",
        1 => "BAR1",
        2 => "BAR2",
        3 => "BAR3",
        4 => "BAR4",
        5 => "BAR5",
        6 => "ROM",
        7 => "config",
        8 => "VGA",
        _ => return None,
    })
}

/// PCI IRQ index names.
pub fn pci_irq_name(index: u32) -> Option<&'static str> {
    Some(match index {
        0 => "INTx",
        1 => "MSI",
        2 => "MSI-X",
        3 => "ERR",
        4 => "REQ",
        _ => return None,
    })
}

fn names(flags: u32, table: &[(u32, &'static str)]) -> Vec<&'static str> {
    table
        .iter()
        .filter(|(b, _)| flags & b != 0)
        .map(|(_, n)| *n)
        .collect()
}

fn device_flag_names(f: u32) -> Vec<&'static str> {
    names(
        f,
        &[
            (device_flags::RESET, "RESET"),
            (device_flags::PCI, "PCI"),
            (device_flags::PLATFORM, "PLATFORM"),
            (device_flags::AMBA, "AMBA"),
            (1 << 4, "CCW"),
            (1 << 5, "AP"),
            (1 << 6, "FSL_MC"),
            (1 << 7, "CAPS"),
            (1 << 8, "CDX"),
        ],
    )
}

fn region_flag_names(f: u32) -> Vec<&'static str> {
    names(
        f,
        &[
            (REGION_INFO_FLAG_READ, "READ"),
            (REGION_INFO_FLAG_WRITE, "WRITE"),
            (REGION_INFO_FLAG_MMAP, "MMAP"),
            (REGION_INFO_FLAG_CAPS, "CAPS"),
        ],
    )
}

fn irq_flag_names(f: u32) -> Vec<&'static str> {
    names(
        f,
        &[
            (irq_flags::EVENTFD, "EVENTFD"),
            (irq_flags::MASKABLE, "MASKABLE"),
            (irq_flags::AUTOMASKED, "AUTOMASKED"),
            (irq_flags::NORESIZE, "NORESIZE"),
        ],
    )
}

/// The ranges of `[0, size)` not covered by `areas`, page-granular (4 KiB).
pub fn trapped_ranges(size: u64, areas: &[Range]) -> Vec<Range> {
    const PAGE: u64 = 4096;
    let mut covered: Vec<Range> = areas
        .iter()
        .map(|a| Range {
            start: a.start / PAGE * PAGE,
            end: a.end.min(size),
        })
        .filter(|a| a.end > a.start)
        .collect();
    covered.sort_by_key(|a| a.start);
    let mut out = Vec::new();
    let mut pos = 0u64;
    for a in covered {
        if a.start > pos {
            out.push(Range {
                start: pos,
                end: a.start.min(size),
            });
        }
        pos = pos.max(a.end);
    }
    if pos < size {
        out.push(Range {
            start: pos,
            end: size,
        });
    }
    out
}

fn map_connect_error(path: &Path, e: ClientError, secs: u64) -> ProbeError {
    match e {
        ClientError::Transport(TransportError::Io(io)) => match io.kind() {
            ErrorKind::NotFound => ProbeError::NoSuchSocket(path.into()),
            ErrorKind::ConnectionRefused => match std::fs::metadata(path) {
                Ok(m) if !m.file_type().is_socket() => ProbeError::NotASocket(path.into()),
                _ => ProbeError::Refused(path.into()),
            },
            ErrorKind::PermissionDenied => ProbeError::PermissionDenied(path.into()),
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => {
                ProbeError::ClosedBeforeVersion(path.into())
            }
            _ => ProbeError::NotVfioUser {
                path: path.into(),
                detail: io.to_string(),
            },
        },
        e @ ClientError::Timeout { .. } => later(path, secs, e),
        ClientError::Remote { errno, .. } if errno == Errno::EBUSY => ProbeError::Busy(path.into()),
        ClientError::Remote { errno, .. } => ProbeError::NotVfioUser {
            path: path.into(),
            detail: format!("VERSION refused: {errno}"),
        },
        ClientError::Disconnected => ProbeError::ClosedBeforeVersion(path.into()),
        e => ProbeError::NotVfioUser {
            path: path.into(),
            detail: e.to_string(),
        },
    }
}

fn later(path: &Path, secs: u64, e: ClientError) -> ProbeError {
    match e {
        ClientError::Timeout { command } => ProbeError::Timeout {
            path: path.into(),
            command,
            secs,
        },
        e => ProbeError::Protocol(e.to_string()),
    }
}

/// A query about one region or IRQ index failed: a timeout ends the probe,
/// any other error is reported on that entry.
fn entry_error(path: &Path, secs: u64, e: ClientError) -> Result<String, ProbeError> {
    match e {
        ClientError::Timeout { .. } => Err(later(path, secs, e)),
        e => Ok(e.to_string()),
    }
}

fn parse_pci_header(cfg: &[u8]) -> Option<PciHeader> {
    let b = |i: usize| cfg.get(i).copied();
    let w = |i: usize| Some(u16::from_le_bytes([b(i)?, b(i + 1)?]));
    let mut caps = Vec::new();
    if w(6)? & 0x10 != 0 {
        let mut p = usize::from(b(0x34)? & 0xfc);
        let mut guard = 0;
        while p >= 0x40 && guard < 48 {
            let Some(id) = b(p) else { break };
            caps.push(id);
            p = usize::from(b(p + 1).unwrap_or(0) & 0xfc);
            guard += 1;
        }
    }
    Some(PciHeader {
        vendor: w(0)?,
        device: w(2)?,
        revision: b(8)?,
        class: u32::from(b(0x0b)?) << 16 | u32::from(b(0x0a)?) << 8 | u32::from(b(9)?),
        header_type: b(0x0e)?,
        subsystem_vendor: w(0x2c)?,
        subsystem: w(0x2e)?,
        interrupt_pin: b(0x3d)?,
        capabilities: caps,
    })
}

/// Largest IRQ count [`description_dts`] builds a node for (GIC SPIs: 988).
pub const MAX_DESC_IRQS: u32 = 1024;

/// Builds the DTS text of a described platform/AMBA device.
pub fn description_dts(desc: &DeviceDescription, region_sizes: &[u64]) -> Option<String> {
    if desc.kind == DeviceKind::Pci || desc.compatible.is_empty() {
        return None;
    }
    let mut profile = Profile::generic();
    profile.name = desc.dt_node_name.clone().unwrap_or_else(|| "device".into());
    profile.compatible = desc.compatible.clone();
    profile.clocks = desc
        .clocks
        .iter()
        .map(|c| Clock {
            name: c.name.clone(),
            frequency: u32::try_from(c.frequency_hz).unwrap_or(u32::MAX),
        })
        .collect();
    // The description comes from the server: an IRQ index is a count of
    // entries to build, so it is bounded (a GIC has at most 988 SPIs).
    let num_irqs = desc
        .irqs
        .iter()
        .map(|i| i.index.saturating_add(1))
        .max()
        .unwrap_or(0);
    if num_irqs > MAX_DESC_IRQS {
        log::warn!(
            "device description names IRQ index {}: too large for a DT node",
            num_irqs - 1
        );
        return None;
    }
    profile.irqs = (0..num_irqs)
        .map(|i| {
            let d = desc.irqs.iter().find(|d| d.index == i);
            IrqProfile {
                name: d.map(|d| d.name.clone()),
                trigger: d.map(|d| Trigger::from(d.trigger)).unwrap_or_default(),
                clear: None,
            }
        })
        .collect();
    let base = desc
        .regions
        .iter()
        .find(|r| r.index == 0)
        .and_then(|r| r.guest_base)
        .unwrap_or(DtParams::default().base);
    let params = DtParams {
        base,
        ..DtParams::default()
    };
    let nodes = device_nodes(
        &profile,
        &DtDevice {
            region_sizes: region_sizes.to_vec(),
            num_irqs,
        },
        &params,
    )
    .ok()?;
    let root = Node {
        name: String::new(),
        label: None,
        props: Vec::new(),
        children: nodes,
    };
    Some(root.to_dts())
}

fn resolve_region(spec: &RegionRef, regions: &[RegionReport]) -> Result<u32, ProbeError> {
    match spec {
        RegionRef::Index(i) => Ok(*i),
        RegionRef::Name(n) => regions
            .iter()
            .find(|r| r.name.as_deref().is_some_and(|x| x.eq_ignore_ascii_case(n)))
            .map(|r| r.index)
            .ok_or_else(|| {
                let known: Vec<String> = regions.iter().filter_map(|r| r.name.clone()).collect();
                ProbeError::Read(format!(
                    "no region named {n:?} (known: {})",
                    known.join(", ")
                ))
            }),
    }
}

/// One `--read`: a single REGION_READ; when the device refuses a read wider
/// than 4 bytes with EINVAL (register files such as the PL330 allow only
/// aligned 32-bit accesses) and the range is 4-byte aligned, the same range
/// as 32-bit reads.
fn read_region(c: &mut Client, region: u32, offset: u64, size: usize) -> Result<Vec<u8>, String> {
    match c.region_read(region, offset, size) {
        Ok(d) => Ok(d),
        Err(ClientError::Remote { errno, .. })
            if errno == Errno::EINVAL && size > 4 && offset % 4 == 0 && size % 4 == 0 =>
        {
            log::info!("the device refused a {size}-byte read: reading it as 32-bit accesses");
            let mut out = Vec::with_capacity(size);
            for off in (offset..offset + size as u64).step_by(4) {
                let word = c
                    .region_read(region, off, 4)
                    .map_err(|e| format!("{e} (also refused as a 32-bit read at {off:#x})"))?;
                out.extend_from_slice(&word);
            }
            Ok(out)
        }
        Err(ClientError::Remote { errno, .. }) if errno == Errno::EINVAL => Err(format!(
            "{errno}: the device refused this access (register files often allow only aligned \
             accesses of their register width, e.g. the PL330: aligned 4-byte reads)"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Connects, queries and returns the report (nothing printed).
pub fn probe(args: &ProbeArgs) -> Result<ProbeReport, ProbeError> {
    let path = args.socket.as_path();
    let secs = args.timeout.max(1);
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(ProbeError::NoSuchSocket(path.into()))
        }
        Ok(m) if !m.file_type().is_socket() && !m.file_type().is_symlink() => {
            return Err(ProbeError::NotASocket(path.into()))
        }
        _ => {}
    }
    let opts = ClientOptions {
        reply_timeout: Duration::from_secs(secs),
        propose_extension: !args.plain,
        ..ClientOptions::default()
    };
    let mut c = Client::connect(path, opts).map_err(|e| map_connect_error(path, e, secs))?;
    let neg = c.negotiated().clone();
    let s = &neg.server;
    let capabilities = CapsReport {
        max_msg_fds: s.max_msg_fds,
        max_data_xfer_size: s.max_data_xfer_size,
        max_dma_maps: s.max_dma_maps,
        pgsizes: s.pgsizes,
        write_multiple: s.write_multiple,
        migration: s.migration,
        twin_socket: s.twin_socket,
        sidecar: s.sidecar,
    };
    let info = c.device_info().map_err(|e| later(path, secs, e))?;
    let is_pci = info.flags & device_flags::PCI != 0;
    let kind = if is_pci {
        "pci"
    } else if info.flags & device_flags::AMBA != 0 {
        "amba"
    } else if info.flags & device_flags::PLATFORM != 0 {
        "platform"
    } else {
        "unknown"
    };
    let device = DeviceReport {
        flags: info.flags,
        flag_names: device_flag_names(info.flags),
        kind,
        num_regions: info.num_regions,
        num_irqs: info.num_irqs,
    };
    let (description, dtb) = if neg.extension() && neg.sidecar().is_some_and(|x| x.platform) {
        match c.device_desc() {
            Ok((d, dtb)) => (Some(d), Some(dtb)),
            Err(e) => {
                log::warn!("SIDECAR_GET_DEVICE_DESC failed: {e}");
                (None, None)
            }
        }
    } else {
        (None, None)
    };
    let dtb_bytes = dtb.as_ref().map(Vec::len);
    // Bounded: a hostile server's counts must not make us loop for ever.
    let num_regions = info.num_regions.min(256);
    let num_irqs = info.num_irqs.min(256);
    let mut regions = Vec::new();
    for index in 0..num_regions {
        let name = if is_pci {
            pci_region_name(index).map(String::from)
        } else {
            None
        }
        .or_else(|| {
            description.as_ref().and_then(|d| {
                d.regions
                    .iter()
                    .find(|r| r.index == index)
                    .map(|r| r.name.clone())
            })
        });
        match c.region_info(index) {
            Ok((r, _fd)) => {
                let mmap = r.flags & REGION_INFO_FLAG_MMAP != 0;
                let sparse: Option<Vec<Range>> = r.sparse.as_ref().map(|v| {
                    v.iter()
                        .map(|a| Range {
                            start: a.offset,
                            end: a.offset.saturating_add(a.size),
                        })
                        .collect()
                });
                let trapped = if r.size == 0 {
                    Vec::new()
                } else if !mmap {
                    vec![Range {
                        start: 0,
                        end: r.size,
                    }]
                } else {
                    match &sparse {
                        None => Vec::new(),
                        Some(a) => trapped_ranges(r.size, a),
                    }
                };
                regions.push(RegionReport {
                    index,
                    name,
                    size: r.size,
                    flags: r.flags,
                    flag_names: region_flag_names(r.flags),
                    mmap_offset: mmap.then_some(r.offset),
                    sparse,
                    trapped,
                    error: None,
                });
            }
            Err(e) => regions.push(RegionReport {
                index,
                name,
                error: Some(entry_error(path, secs, e)?),
                ..RegionReport::default()
            }),
        }
    }
    let mut irqs = Vec::new();
    for index in 0..num_irqs {
        let d = description
            .as_ref()
            .and_then(|d| d.irqs.iter().find(|i| i.index == index));
        let name = if is_pci {
            pci_irq_name(index).map(String::from)
        } else {
            None
        }
        .or_else(|| d.map(|d| d.name.clone()));
        match c.irq_info(index) {
            Ok(ii) => {
                let stats = if neg.sidecar().is_some_and(|x| x.eoi) && ii.count > 0 {
                    c.irq_stats(index, 0, ii.count.min(MAX_STATS_VECTORS))
                        .ok()
                        .map(|v| v.into_iter().map(StatsReport::from).collect())
                } else {
                    None
                };
                irqs.push(IrqReport {
                    index,
                    name,
                    count: ii.count,
                    flags: ii.flags,
                    flag_names: irq_flag_names(ii.flags),
                    trigger: d.map(|d| d.trigger),
                    eoi: d.map(|d| d.eoi),
                    stats,
                    error: None,
                });
            }
            Err(e) => irqs.push(IrqReport {
                index,
                name,
                error: Some(entry_error(path, secs, e)?),
                ..IrqReport::default()
            }),
        }
    }
    let pci = if is_pci
        && regions
            .iter()
            .any(|r| r.index == 7 && r.size >= 64 && r.flags & REGION_INFO_FLAG_READ != 0)
    {
        let n = regions
            .iter()
            .find(|r| r.index == 7)
            .map_or(64, |r| r.size.min(256) as usize);
        c.region_read(7, 0, n)
            .ok()
            .and_then(|cfg| parse_pci_header(&cfg))
    } else {
        None
    };
    // The server's own DTB fragment wins; else the node is built from the
    // description the way `vfio-sidecar dt` / vmm-shim would place it.
    let (device_tree, device_tree_source) = match dtb.as_deref() {
        Some(b) if !b.is_empty() => match fdt::dtb_to_dts(b) {
            Ok(t) => (Some(t), Some("server-dtb")),
            Err(e) => (
                Some(format!(
                    "/* the server's DTB fragment could not be decoded: {e} */\n"
                )),
                Some("server-dtb"),
            ),
        },
        _ => {
            let t = description.as_ref().and_then(|d| {
                let sizes: Vec<u64> = regions.iter().map(|r| r.size).collect();
                description_dts(d, &sizes)
            });
            let src = t.as_ref().map(|_| "description");
            (t, src)
        }
    };
    let mut reads = Vec::new();
    for r in &args.read {
        let region = resolve_region(&r.region, &regions)?;
        let data = read_region(&mut c, region, r.offset, r.size as usize).map_err(|e| {
            ProbeError::Read(format!(
                "region {region} offset {:#x} size {}: {e}",
                r.offset, r.size
            ))
        })?;
        reads.push(ReadReport {
            region,
            offset: r.offset,
            hex: data.iter().map(|b| format!("{b:02x}")).collect(),
        });
    }
    Ok(ProbeReport {
        socket: path.display().to_string(),
        version: format!("{}.{}", neg.major, neg.minor),
        capabilities,
        device,
        pci,
        description,
        dtb_bytes,
        regions,
        irqs,
        device_tree,
        device_tree_source,
        reads,
    })
}

fn human(size: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (u, n) in UNITS {
        if size >= u && size % u == 0 {
            return format!("{} {n}", size / u);
        }
    }
    format!("{size} B")
}

fn onoff(b: bool) -> char {
    if b {
        '+'
    } else {
        '-'
    }
}

fn eoi_text(e: &vfio_sidecar_protocol::ext::EoiDesc) -> String {
    let p = match e.policy {
        EoiPolicy::ClearRegister => "clear-register",
        EoiPolicy::Resample => "resample",
        EoiPolicy::FirstAccess => "first-access",
        EoiPolicy::None => "none",
    };
    match &e.clear {
        Some(c) => format!(
            "{p} (region {} offset {:#x} width {} {}{})",
            c.region,
            c.offset,
            c.width,
            match c.mode {
                vfio_sidecar_protocol::ext::ClearMode::W1c => "w1c",
                vfio_sidecar_protocol::ext::ClearMode::WriteAny => "write-any",
            },
            c.bit.map(|b| format!(" bit {b}")).unwrap_or_default()
        ),
        None => p.to_string(),
    }
}

fn trigger_text(t: IrqTrigger) -> &'static str {
    match t {
        IrqTrigger::LevelHigh => "level-high",
        IrqTrigger::LevelLow => "level-low",
        IrqTrigger::EdgeRising => "edge-rising",
        IrqTrigger::EdgeFalling => "edge-falling",
        IrqTrigger::EdgeBoth => "edge-both",
    }
}

/// Hex dump lines (`offset: 16 bytes |ascii|`).
pub fn hexdump(base: u64, data: &[u8]) -> String {
    let mut s = String::new();
    for (i, chunk) in data.chunks(16).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String = chunk
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        s.push_str(&format!(
            "\t\t{:08x}: {:<47}  |{ascii}|\n",
            base + 16 * i as u64,
            hex.join(" ")
        ));
    }
    s
}

fn ranges_text(r: &[Range]) -> String {
    r.iter()
        .map(|r| format!("{:#x}-{:#x}", r.start, r.end))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `lspci -vv`-like text of a report.
pub fn render_text(r: &ProbeReport) -> String {
    let mut s = String::new();
    let c = &r.capabilities;
    s.push_str(&format!("vfio-user server at {}\n", r.socket));
    s.push_str(&format!(
        "\tProtocol: vfio-user {} (the VERSION message's major.minor; spec document 0.9.2)\n",
        r.version
    ));
    s.push_str(&format!(
        "\tCapabilities: max_msg_fds={} max_data_xfer_size={} max_dma_maps={} pgsizes={:#x} write_multiple{} migration{} twin_socket{}\n",
        c.max_msg_fds,
        c.max_data_xfer_size,
        c.max_dma_maps,
        c.pgsizes,
        onoff(c.write_multiple),
        onoff(c.migration),
        onoff(c.twin_socket)
    ));
    match &c.sidecar {
        Some(x) => s.push_str(&format!(
            "\tExtension org.vfio-sidecar: version {} dma_exec{} platform{} eoi{} exec_enforced{}\n",
            x.version,
            onoff(x.dma_exec),
            onoff(x.platform),
            onoff(x.eoi),
            match x.exec_enforced {
                Some(b) => onoff(b).to_string(),
                None => "?".into(),
            }
        )),
        None => s.push_str("\tExtension org.vfio-sidecar: not negotiated (plain vfio-user server, or --plain)\n"),
    }
    let d = &r.device;
    s.push_str(&format!(
        "Device: {} [flags {:#x}: {}], {} regions, {} IRQ indices\n",
        d.kind.to_uppercase(),
        d.flags,
        d.flag_names.join(" "),
        d.num_regions,
        d.num_irqs
    ));
    if let Some(p) = &r.pci {
        s.push_str(&format!(
            "\tPCI: [{:04x}:{:04x}] rev {:02x} class {:06x} subsystem [{:04x}:{:04x}] header type {:#x} interrupt pin {}\n",
            p.vendor,
            p.device,
            p.revision,
            p.class,
            p.subsystem_vendor,
            p.subsystem,
            p.header_type,
            match p.interrupt_pin {
                0 => "none".to_string(),
                n @ 1..=4 => ((b'A' + n - 1) as char).to_string(),
                n => format!("{n}?"),
            }
        ));
        if !p.capabilities.is_empty() {
            let caps: Vec<String> = p
                .capabilities
                .iter()
                .map(|id| match id {
                    0x01 => "PM".to_string(),
                    0x05 => "MSI".to_string(),
                    0x09 => "vendor".to_string(),
                    0x10 => "PCIe".to_string(),
                    0x11 => "MSI-X".to_string(),
                    other => format!("{other:#04x}"),
                })
                .collect();
            s.push_str(&format!("\tPCI capabilities: {}\n", caps.join(", ")));
        }
    }
    if let Some(desc) = &r.description {
        let kind = match desc.kind {
            DeviceKind::Pci => "pci",
            DeviceKind::Amba => "amba",
            DeviceKind::Platform => "platform",
        };
        s.push_str(&format!(
            "\tDescription: kind {kind}; compatible {}\n",
            if desc.compatible.is_empty() {
                "(none)".into()
            } else {
                desc.compatible
                    .iter()
                    .map(|c| format!("{c:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
        for cl in &desc.clocks {
            s.push_str(&format!("\tClock: {} {} Hz\n", cl.name, cl.frequency_hz));
        }
        if let Some(n) = r.dtb_bytes.filter(|n| *n > 0) {
            s.push_str(&format!("\tDTB fragment from the server: {n} bytes\n"));
        }
    }
    s.push_str("Regions:\n");
    for g in &r.regions {
        let name = g
            .name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        if let Some(e) = &g.error {
            s.push_str(&format!("\tRegion {}{name}: error: {e}\n", g.index));
            continue;
        }
        if g.size == 0 {
            s.push_str(&format!("\tRegion {}{name}: absent (size 0)\n", g.index));
            continue;
        }
        s.push_str(&format!(
            "\tRegion {}{name}: size {:#x} ({}) [{}]\n",
            g.index,
            g.size,
            human(g.size),
            g.flag_names.join(" ")
        ));
        if let Some(o) = g.mmap_offset {
            match &g.sparse {
                Some(a) => s.push_str(&format!(
                    "\t\tSparse mmap (fd offset {o:#x}): {}\n",
                    ranges_text(a)
                )),
                None => s.push_str(&format!("\t\tMmap: whole region (fd offset {o:#x})\n")),
            }
        }
        if g.trapped.is_empty() {
            s.push_str("\t\tTrapped: none\n");
        } else if g.mmap_offset.is_none() {
            s.push_str("\t\tTrapped: all (no MMAP)\n");
        } else {
            s.push_str(&format!("\t\tTrapped pages: {}\n", ranges_text(&g.trapped)));
        }
    }
    s.push_str("IRQs:\n");
    for i in &r.irqs {
        let name = i
            .name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        if let Some(e) = &i.error {
            s.push_str(&format!("\tIRQ {}{name}: error: {e}\n", i.index));
            continue;
        }
        let mut line = format!(
            "\tIRQ {}{name}: count {} [{}]",
            i.index,
            i.count,
            i.flag_names.join(" ")
        );
        if let Some(t) = i.trigger {
            line.push_str(&format!("; {}", trigger_text(t)));
        }
        if let Some(e) = &i.eoi {
            line.push_str(&format!("; EOI {}", eoi_text(e)));
        }
        s.push_str(&line);
        s.push('\n');
        if let Some(st) = &i.stats {
            for (v, x) in st.iter().enumerate() {
                s.push_str(&format!(
                    "\t\tvector {v}: device events {}, host interrupts {}, unmasks {}, refires {}\n",
                    x.device_events, x.host_interrupts, x.unmasks, x.refires
                ));
            }
        }
    }
    if let Some(dts) = &r.device_tree {
        s.push_str(match r.device_tree_source {
            Some("server-dtb") => "Device tree (the server's DTB fragment):\n",
            _ => "Device tree node (built from the description; suggested placement):\n",
        });
        for l in dts.lines() {
            s.push('\t');
            s.push_str(l);
            s.push('\n');
        }
    }
    for rd in &r.reads {
        s.push_str(&format!(
            "Read region {} offset {:#x} ({} bytes):\n",
            rd.region,
            rd.offset,
            rd.hex.len() / 2
        ));
        let bytes: Vec<u8> = (0..rd.hex.len() / 2)
            .filter_map(|i| u8::from_str_radix(rd.hex.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        s.push_str(&hexdump(rd.offset, &bytes));
    }
    s
}

/// The `probe` subcommand: probe and print (text or JSON) to stdout.
pub fn run_probe(args: &ProbeArgs) -> Result<(), ProbeError> {
    if args.stats {
        let format = if args.prometheus {
            stats::Format::Prometheus
        } else if args.json {
            stats::Format::Json
        } else {
            stats::Format::Text
        };
        let out = stats::run(&args.socket, args.timeout, format)?;
        use std::io::Write;
        return std::io::stdout()
            .write_all(out.as_bytes())
            .map_err(ProbeError::Output);
    }
    let report = probe(args)?;
    let out = if args.json {
        let mut j = serde_json::to_string_pretty(&report)
            .map_err(|e| ProbeError::Protocol(format!("JSON: {e}")))?;
        j.push('\n');
        j
    } else {
        render_text(&report)
    };
    use std::io::Write;
    std::io::stdout()
        .write_all(out.as_bytes())
        .map_err(ProbeError::Output)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn read_spec_parsing() {
        let r: ReadSpec = "config:0:64".parse().unwrap();
        assert_eq!(r.region, RegionRef::Name("config".into()));
        assert_eq!((r.offset, r.size), (0, 64));
        let r: ReadSpec = "0:0x10:4".parse().unwrap();
        assert_eq!(r.region, RegionRef::Index(0));
        assert_eq!(r.offset, 0x10);
        assert!("0:0".parse::<ReadSpec>().is_err());
        assert!("0:0:0".parse::<ReadSpec>().is_err());
        assert!("0:0:65537".parse::<ReadSpec>().is_err());
        assert!(":0:4".parse::<ReadSpec>().is_err());
        assert!("0:zz:4".parse::<ReadSpec>().is_err());
    }

    #[test]
    fn trapped_is_the_complement() {
        let r = |start, end| Range { start, end };
        assert_eq!(trapped_ranges(0x4000, &[]), vec![r(0, 0x4000)]);
        assert_eq!(
            trapped_ranges(0x4000, &[r(0x1000, 0x2000), r(0x3000, 0x4000)]),
            vec![r(0, 0x1000), r(0x2000, 0x3000)]
        );
        assert!(trapped_ranges(0x2000, &[r(0, 0x2000)]).is_empty());
        // Overlapping and out-of-order areas, area past the end.
        assert_eq!(
            trapped_ranges(0x5000, &[r(0x2000, 0x9000), r(0x1000, 0x3000)]),
            vec![r(0, 0x1000)]
        );
    }

    #[test]
    fn pci_header_and_names() {
        let mut cfg = vec![0u8; 256];
        cfg[0..4].copy_from_slice(&[0x34, 0x12, 0xe8, 0x11]);
        cfg[6] = 0x10;
        cfg[8] = 0x10;
        cfg[0x0a] = 0xff;
        cfg[0x34] = 0x40;
        cfg[0x3d] = 1;
        let h = parse_pci_header(&cfg).unwrap();
        assert_eq!((h.vendor, h.device, h.class), (0x1234, 0x11e8, 0x00ff00));
        assert_eq!(h.capabilities, vec![0]);
        cfg[0x40] = 0x05;
        cfg[0x41] = 0x48;
        cfg[0x48] = 0x11;
        assert_eq!(parse_pci_header(&cfg).unwrap().capabilities, vec![5, 0x11]);
        cfg[0x49] = 0x40; // a loop ends at the guard
        assert_eq!(parse_pci_header(&cfg).unwrap().capabilities.len(), 48);
        assert_eq!(pci_region_name(7), Some("config"));
        assert_eq!(pci_region_name(9), None);
        assert_eq!(pci_irq_name(2), Some("MSI-X"));
        assert_eq!(
            device_flag_names(device_flags::PCI | device_flags::RESET),
            vec!["RESET", "PCI"]
        );
    }

    #[test]
    fn dts_from_a_description() {
        use vfio_sidecar_protocol::ext::{ClockDesc, EoiDesc, IrqDesc, RegionDesc};
        let irq = |index, name: &str, trigger| IrqDesc {
            index,
            name: name.into(),
            trigger,
            eoi: EoiDesc {
                policy: EoiPolicy::None,
                clear: None,
            },
        };
        let d = DeviceDescription {
            kind: DeviceKind::Amba,
            compatible: vec!["arm,pl330".into(), "arm,primecell".into()],
            clocks: vec![ClockDesc {
                name: "apb_pclk".into(),
                frequency_hz: 24_000_000,
            }],
            regions: vec![RegionDesc {
                index: 0,
                name: "regs".into(),
                guest_base: Some(0x0900_0000),
            }],
            irqs: vec![
                irq(0, "done", IrqTrigger::LevelHigh),
                irq(1, "abort", IrqTrigger::EdgeRising),
            ],
            dt_node_name: Some("dma-controller".into()),
        };
        let t = description_dts(&d, &[0x1000]).unwrap();
        for want in [
            "dma-controller@9000000 {",
            "reg = <0x0 0x9000000 0x0 0x1000>;",
            "interrupts = <0x0 0x20 0x4>, <0x0 0x21 0x1>;",
            "interrupt-names = \"done\", \"abort\";",
            "clocks = <&apb_pclk>;",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        // PCI devices and devices without compatible strings get no node.
        let pci = DeviceDescription {
            kind: DeviceKind::Pci,
            ..d.clone()
        };
        assert!(description_dts(&pci, &[0x1000]).is_none());
        let anon = DeviceDescription {
            compatible: vec![],
            ..d
        };
        assert!(description_dts(&anon, &[0x1000]).is_none());
    }

    #[test]
    fn dts_from_a_hostile_description_does_not_panic() {
        use vfio_sidecar_protocol::ext::{EoiDesc, IrqDesc};
        let d = DeviceDescription {
            kind: DeviceKind::Amba,
            compatible: vec!["x,y".into()],
            clocks: vec![],
            regions: vec![],
            irqs: vec![IrqDesc {
                index: u32::MAX,
                name: "far".into(),
                trigger: IrqTrigger::LevelHigh,
                eoi: EoiDesc {
                    policy: EoiPolicy::None,
                    clear: None,
                },
            }],
            dt_node_name: None,
        };
        // index + 1 overflowed, then 2^32 IRQ entries were to be built.
        assert!(description_dts(&d, &[0x1000]).is_none());
        // A region size near u64::MAX: its page-rounded size wrapped.
        let d = DeviceDescription { irqs: vec![], ..d };
        assert!(description_dts(&d, &[u64::MAX]).is_none());
        assert!(description_dts(&d, &[0x1000]).is_some());
    }

    #[test]
    fn hexdump_format() {
        let d = hexdump(0x10, b"edu-dma!\x00\x01");
        assert!(d.contains("00000010: 65 64 75 2d 64 6d 61 21 00 01"), "{d}");
        assert!(d.contains("|edu-dma!..|"), "{d}");
    }
}
