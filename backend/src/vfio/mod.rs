//! Real VFIO devices (PCI, platform, AMBA) behind the [`Device`] trait.
//!
//! [`open`] takes a sysfs path (`/sys/bus/pci/devices/0000:00:03.0`,
//! `/sys/bus/amba/devices/2c0a0000.dma`, ...), checks it from sysfs first so that
//! every failure comes with a fix (wrong driver and the `driver_override` lines to
//! rebind it, no IOMMU group, no permission on `/dev/vfio/N`, a group that is not
//! viable and which devices make it so), then opens the type1v2 container, the
//! group and the device — or, with iommufd ([`IommuBackend`], `VfioOptions::iommu`;
//! `Auto` takes it when `/dev/iommu` and the device's vfio cdev exist), `/dev/iommu`
//! and the device cdev (see `iommufd`). Regions, IRQs and reset are the same device
//! ioctls either way; only DMA mapping differs.
//!
//! What comes from where:
//! * `vfio-ioctls` ([`vfio_ioctls::VfioContainer`]): opening `/dev/vfio/vfio`, the
//!   API-version and TYPE1v2 checks, and `VFIO_IOMMU_UNMAP_DMA`;
//! * the thin wrapper in `sys` (over `vfio-bindings` structs): group and device
//!   fds, device/region/IRQ info with the capability chain, `SET_IRQS` for any
//!   index, action and data type, `RESET`, and `MAP_DMA` with the mapping's own
//!   READ/WRITE flags. `sys` explains why each of these could not use the crate.
//!
//! Behaviour a VMM relies on:
//! * **Regions**: `pread`/`pwrite` on the device fd at the region offset, errors
//!   reported (never swallowed). The PCI config region (index 7) is passed through
//!   as the kernel virtualises it. A region is offered for mmap when the kernel
//!   sets `MMAP`: its sparse-mmap capability areas when it has one, else the whole
//!   region; the fd is the device fd (design note 6; `VfioOptions::no_mmap` turns
//!   this off). Names: PCI `BAR0`..`BAR5`, `ROM`, `config`, `VGA`; platform/AMBA
//!   from `of_node/reg-names` in resource order, else `<compatible>-reg<i>`.
//! * **DMA**: [`Device::dma_map`] maps `host_addr` at `iova` into the IOMMU with
//!   READ and/or WRITE only. Upstream VFIO has no exec flag (bit 2 is
//!   `VFIO_DMA_MAP_FLAG_VADDR` and is never sent): **exec is implied by any
//!   mapping, no-exec is not enforceable**; an exec-only mapping is mapped READ.
//!   Through iommufd the same holds: `IOMMU_IOAS_MAP` with `FIXED_IOVA` and
//!   `READABLE`/`WRITEABLE` (iommufd has no exec flag either), `IOMMU_IOAS_UNMAP`.
//! * **Interrupts**: trigger eventfds from the client go straight to
//!   `VFIO_DEVICE_SET_IRQS`, so interrupts never pass through the backend. Unmask
//!   eventfds (`ACTION_UNMASK | DATA_EVENTFD`) go to the kernel too, which then
//!   unmasks on every signal (virqfd). [`Device::unmask_irq`] is
//!   `ACTION_UNMASK | DATA_NONE` for any index (not only INTx).
//! * **Counters**: the backend never sees an interrupt, so `host_interrupts` is read
//!   from `/proc/interrupts` (the vfio handler's line, see `procirq`), relative to
//!   when the trigger was set. The file is opened once by [`open`] and re-read with
//!   `pread` at offset 0 ([`read_whole_at`]): the serve loop's seccomp filter
//!   forbids opening files. Interrupts are not otherwise observable, so
//!   `device_events` equals `host_interrupts`. `unmasks` counts the unmasks the
//!   backend performs (`unmask_irq` and `SET_IRQS(UNMASK)` with NONE/BOOL data, not
//!   the kernel's virqfd unmasks). `refires` (PCI INTx only): after an unmask the
//!   backend reads the PCI status register's interrupt bit; if the line is still
//!   asserted, vfio-pci re-signals the trigger at once without a new host interrupt.
//! * **PCI bus master**: vfio-pci leaves the command register's bus-master bit off,
//!   and then DMA (and MSI, which is a DMA write) silently does nothing. The
//!   backend sets it when the client maps DMA or enables MSI/MSI-X
//!   ([`BusMaster::OnDma`], default), at open ([`BusMaster::OnOpen`]), or never.
//! * **Reset**: [`Device::reset`] first disables every IRQ trigger (as QEMU does
//!   before a reset), then issues `VFIO_DEVICE_RESET` if the device reports
//!   `VFIO_DEVICE_FLAGS_RESET` (a PCI device behind a root port gets a secondary
//!   bus reset); without the flag it returns `NotSupported`. IOMMU mappings are
//!   not touched by a reset: they are the memory table's (the server unmaps them on
//!   disconnect; [`VfioDevice::unmap_all`] is a backstop). `open` resets the
//!   device when it can (`VfioOptions::reset_on_open`).

pub mod iommufd;
pub mod procirq;
pub mod sys;
pub mod sysfs;

pub use iommufd::IommuBackend;

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use thiserror::Error;
use vfio_bindings::bindings::vfio::{VFIO_GROUP_FLAGS_VIABLE, VFIO_REGION_INFO_FLAG_MMAP};

use crate::device::{
    device_flags, region_flags, Device, DeviceError, DeviceInfo, DmaMemory, IrqAction, IrqCounters,
    IrqData, IrqInfo, MappedRegion, RegionInfo, RegionMmap, SetIrqs, SparseArea,
};
use sys::{RawIrqData, RawRegion, RegionCap};
use sysfs::Bus;

/// PCI config region index.
pub const PCI_CONFIG_REGION: u32 = 7;
/// PCI INTx / MSI / MSI-X IRQ indices.
pub const PCI_INTX: u32 = 0;
/// PCI MSI IRQ index.
pub const PCI_MSI: u32 = 1;
/// PCI MSI-X IRQ index.
pub const PCI_MSIX: u32 = 2;
const PCI_COMMAND: u64 = 0x04;
const PCI_STATUS: u64 = 0x06;
const PCI_COMMAND_MASTER: u16 = 1 << 2;
const PCI_STATUS_INTERRUPT: u16 = 1 << 3;

/// When to set the PCI command register's bus-master bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BusMaster {
    /// On the first DMA map, or when MSI/MSI-X triggers are set (default).
    #[default]
    OnDma,
    /// Right after open.
    OnOpen,
    /// Never (the client does it through the config region).
    Never,
}

/// How to open a VFIO device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfioOptions {
    /// PCI bus-master policy.
    pub bus_master: BusMaster,
    /// Issue `VFIO_DEVICE_RESET` at open when the device supports it.
    pub reset_on_open: bool,
    /// Never offer regions for mmap: every access traps (narrower boundary, see
    /// design note 6).
    pub no_mmap: bool,
    /// Where to read host-interrupt counts from.
    pub proc_interrupts: PathBuf,
    /// Which IOMMU interface to open the device through (default `Auto`).
    pub iommu: IommuBackend,
}

impl Default for VfioOptions {
    fn default() -> Self {
        VfioOptions {
            bus_master: BusMaster::OnDma,
            reset_on_open: true,
            no_mmap: false,
            proc_interrupts: PathBuf::from("/proc/interrupts"),
            iommu: IommuBackend::Auto,
        }
    }
}

fn fmt_members(m: &[(String, Option<String>)]) -> String {
    if m.is_empty() {
        return "none found".into();
    }
    m.iter()
        .map(|(n, d)| format!("{n} (driver {})", d.as_deref().unwrap_or("none")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a VFIO device could not be opened. Every message says what to do.
#[derive(Debug, Error)]
pub enum VfioError {
    /// The sysfs path does not exist.
    #[error("{0}: no such device in sysfs (expected e.g. /sys/bus/pci/devices/0000:00:03.0 or /sys/bus/amba/devices/<name>)")]
    NotFound(PathBuf),
    /// Bound to another driver, or to none.
    #[error("{path}: bound to {}, not {wanted}; rebind it with:\n  {}echo {wanted} > {path}/driver_override\n  echo {name} > /sys/bus/{bus}/drivers_probe",
        .driver.as_deref().map_or("no driver".to_string(), |d| format!("driver {d}")),
        .driver.as_ref().map_or(String::new(), |_| format!("echo {name} > {}/driver/unbind\n  ", .path.display())),
        path = .path.display())]
    NotVfioBound {
        /// Device path.
        path: PathBuf,
        /// Device name.
        name: String,
        /// Bus name for `drivers_probe`.
        bus: &'static str,
        /// Current driver.
        driver: Option<String>,
        /// The VFIO driver for this bus.
        wanted: &'static str,
    },
    /// Bound to a host driver that is in use: no rebind commands are suggested.
    #[error("{path}: in use by the host ({what}, driver {driver}); vfio-sidecar will not suggest taking it away: pick a device that is free (`vfio-sidecar list` shows candidates), or stop using it first")]
    InUseByHost {
        /// Device path.
        path: PathBuf,
        /// What uses it.
        what: String,
        /// Its driver.
        driver: String,
    },
    /// The device has no IOMMU group.
    #[error("{0}: no iommu_group: the kernel has no IOMMU for this device (enable it: intel_iommu=on / amd_iommu=on / an SMMU in the DT); no-IOMMU mode is not supported (no DMA isolation)")]
    NoIommu(PathBuf),
    /// VFIO is not available.
    #[error(
        "{0} does not exist: load the VFIO modules (modprobe vfio-pci / vfio-platform / vfio-amba)"
    )]
    NoVfio(PathBuf),
    /// Permission denied on a VFIO node.
    #[error("no permission to open {path}: {source}; run the backend as root or give its user the node (chown <user> {path})")]
    Permission {
        /// The node.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The group has devices bound to host drivers.
    #[error("IOMMU group {group} is not viable: every device in it must be bound to a VFIO driver (or be unbound); group members: {}", fmt_members(.members))]
    GroupNotViable {
        /// Group number.
        group: u32,
        /// All members with their drivers.
        members: Vec<(String, Option<String>)>,
    },
    /// The iommufd path was asked for but cannot be used.
    #[error(transparent)]
    Iommufd(#[from] iommufd::IommufdError),
    /// Opening the container failed.
    #[error("VFIO container (/dev/vfio/vfio): {0}")]
    Container(#[source] vfio_ioctls::VfioError),
    /// An ioctl failed.
    #[error("{op} failed: {source}")]
    Ioctl {
        /// What was attempted.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// A device type we do not know.
    #[error("{path}: unsupported VFIO device type (flags {flags:#x}); PCI, platform and AMBA are supported")]
    UnsupportedType {
        /// Device path.
        path: PathBuf,
        /// `VFIO_DEVICE_FLAGS_*`.
        flags: u32,
    },
}

fn ioctl_err(op: &'static str) -> impl FnOnce(std::io::Error) -> VfioError {
    move |source| VfioError::Ioctl { op, source }
}

#[derive(Debug, Default, Clone, Copy)]
struct VectorState {
    /// `/proc/interrupts` count when the trigger was set.
    baseline: u64,
    /// Count frozen when the trigger was removed (the handler line disappears).
    frozen: Option<u64>,
    unmasks: u64,
    refires: u64,
    armed: bool,
}

#[derive(Debug)]
struct Region {
    raw: Option<RawRegion>,
    name: String,
}

/// An open VFIO device (device fd + container and group, or + iommufd).
#[derive(Debug)]
pub struct VfioDevice {
    // Field order is drop order: the device fd, then the IOMMU side.
    device: File,
    iommu: Iommu,
    sysfs: PathBuf,
    name: String,
    bus: Bus,
    info: DeviceInfo,
    regions: Vec<Region>,
    irqs: Vec<IrqInfo>,
    opts: VfioOptions,
    bus_master_set: bool,
    vectors: HashMap<(u32, u32), VectorState>,
    /// IOVA → size of what this device mapped into the IOMMU.
    mappings: BTreeMap<u64, u64>,
    /// `/proc/interrupts` opened once at open time and re-read with `pread` at
    /// offset 0: the serve loop's seccomp filter forbids opening files.
    proc_interrupts: Option<File>,
}

/// `vfio_ioctls::VfioContainer` does not implement `Debug`.
struct ContainerHandle(vfio_ioctls::VfioContainer);
impl std::fmt::Debug for ContainerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VfioContainer(fd {})", self.0.as_raw_fd())
    }
}

/// The IOMMU side of an open device.
#[derive(Debug)]
enum Iommu {
    /// Legacy: field order is drop order: the group (closing it detaches the
    /// container), then the container.
    Container {
        _group: File,
        container: ContainerHandle,
    },
    /// `/dev/iommu` with the IOAS the device is attached to.
    Iommufd(iommufd::Iommufd),
}

impl Iommu {
    fn backend(&self) -> IommuBackend {
        match self {
            Iommu::Container { .. } => IommuBackend::Container,
            Iommu::Iommufd(_) => IommuBackend::Iommufd,
        }
    }

    /// Maps with type1 `flags` (`sys::dma_map_flags`).
    ///
    /// # Safety
    /// As `sys::map_dma`.
    unsafe fn map(&self, iova: u64, size: u64, vaddr: u64, flags: u32) -> std::io::Result<()> {
        match self {
            // SAFETY: forwarded contract.
            Iommu::Container { container, .. } => unsafe {
                sys::map_dma(&container.0, iova, size, vaddr, flags)
            },
            // SAFETY: forwarded contract.
            Iommu::Iommufd(fd) => unsafe {
                fd.map(iova, size, vaddr, iommufd::ioas_map_flags(flags))
            },
        }
    }

    fn unmap(&self, iova: u64, size: u64) -> Result<(), String> {
        match self {
            Iommu::Container { container, .. } => {
                let len = usize::try_from(size).map_err(|_| format!("size {size:#x}"))?;
                container
                    .0
                    .vfio_dma_unmap(iova, len)
                    .map_err(|e| format!("VFIO_IOMMU_UNMAP_DMA iova {iova:#x}+{size:#x}: {e}"))
            }
            Iommu::Iommufd(fd) => fd
                .unmap(iova, size)
                .map_err(|e| format!("IOMMU_IOAS_UNMAP iova {iova:#x}+{size:#x}: {e}")),
        }
    }

    fn describe(&self, group: u32) -> String {
        match self {
            Iommu::Container { .. } => format!("container + group {group}, type1v2"),
            Iommu::Iommufd(fd) => format!("iommufd IOAS {}, devid {}", fd.ioas(), fd.devid()),
        }
    }
}

fn open_node(path: &Path) -> Result<File, VfioError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => VfioError::Permission {
                path: path.to_path_buf(),
                source: e,
            },
            std::io::ErrorKind::NotFound => VfioError::NoVfio(path.to_path_buf()),
            _ => VfioError::Ioctl {
                op: "open",
                source: e,
            },
        })
}

/// Sysfs checks before touching `/dev/vfio`: returns (resolved path, name, bus,
/// group). Split out so it runs against a fake sysfs in the unit tests.
fn inspect(sysfs_path: &Path) -> Result<(PathBuf, String, Bus, u32), VfioError> {
    let dev =
        sysfs::resolve(sysfs_path).map_err(|_| VfioError::NotFound(sysfs_path.to_path_buf()))?;
    let name = sysfs::device_name(&dev).ok_or_else(|| VfioError::NotFound(dev.clone()))?;
    let bus = sysfs::bus(&dev);
    let driver = sysfs::driver(&dev);
    if !driver.as_deref().is_some_and(sysfs::is_vfio_driver) {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        if let (Some(d), Some(what)) = (&driver, sysfs::host_use(&dev, &mounts)) {
            return Err(VfioError::InUseByHost {
                path: sysfs_path.to_path_buf(),
                what,
                driver: d.clone(),
            });
        }
        return Err(VfioError::NotVfioBound {
            path: sysfs_path.to_path_buf(),
            name,
            bus: match bus {
                Bus::Platform => "platform",
                Bus::Amba => "amba",
                Bus::Pci | Bus::Other => "pci",
            },
            driver,
            wanted: bus.vfio_driver(),
        });
    }
    let group = sysfs::iommu_group(&dev).ok_or_else(|| VfioError::NoIommu(dev.clone()))?;
    Ok((dev, name, bus, group))
}

/// Opens the VFIO device at `sysfs_path` (see the module documentation).
pub fn open(sysfs_path: &Path, opts: &VfioOptions) -> Result<VfioDevice, VfioError> {
    // VFIO first (for a device that exists): on a host without it, no sysfs
    // advice (rebinding a device to a driver that is not there) is useful.
    if !Path::new("/dev/vfio").is_dir() && sysfs_path.exists() {
        return Err(VfioError::NoVfio("/dev/vfio".into()));
    }
    let (dev, name, bus, group_id) = inspect(sysfs_path)?;
    let (device, iommu) = match iommufd::choose(opts.iommu, &dev, Path::new("/dev"))? {
        iommufd::Choice::Container => open_container(&dev, &name, group_id)?,
        iommufd::Choice::Iommufd { cdev, iommu } => {
            match iommufd::open_device(&cdev, &iommu, &dev, group_id) {
                Ok((device, fd)) => (device, Iommu::Iommufd(fd)),
                // Auto: a node set up for the legacy path only (chown of /dev/vfio/<group>
                // for an unprivileged backend) still works.
                Err(e @ VfioError::Permission { .. }) if opts.iommu == IommuBackend::Auto => {
                    log::warn!("vfio: {e}; falling back to the legacy container (--iommu container silences this)");
                    open_container(&dev, &name, group_id)?
                }
                Err(e) => return Err(e),
            }
        }
    };
    finish_open(dev, name, bus, group_id, device, iommu, opts)
}

/// The legacy path: group (viable?), type1v2 container, device fd.
fn open_container(dev: &Path, name: &str, group_id: u32) -> Result<(File, Iommu), VfioError> {
    let group_path = PathBuf::from(format!("/dev/vfio/{group_id}"));
    if !Path::new("/dev/vfio/vfio").exists() {
        return Err(VfioError::NoVfio("/dev/vfio/vfio".into()));
    }
    let group = open_node(&group_path)?;
    let status = sys::group_status(&group).map_err(ioctl_err("VFIO_GROUP_GET_STATUS"))?;
    if status & VFIO_GROUP_FLAGS_VIABLE == 0 {
        return Err(VfioError::GroupNotViable {
            group: group_id,
            members: sysfs::group_members(dev),
        });
    }
    let container = vfio_ioctls::VfioContainer::new(None).map_err(|e| match e {
        vfio_ioctls::VfioError::OpenContainer(source)
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            VfioError::Permission {
                path: "/dev/vfio/vfio".into(),
                source,
            }
        }
        e => VfioError::Container(e),
    })?;
    sys::group_set_container(&group, container.as_raw_fd())
        .map_err(ioctl_err("VFIO_GROUP_SET_CONTAINER"))?;
    sys::set_iommu_type1v2(&container).map_err(ioctl_err("VFIO_SET_IOMMU(TYPE1v2)"))?;
    let device =
        sys::group_get_device(&group, name).map_err(ioctl_err("VFIO_GROUP_GET_DEVICE_FD"))?;
    let iommu = Iommu::Container {
        _group: group,
        container: ContainerHandle(container),
    };
    Ok((device, iommu))
}

/// Device info, regions and IRQs of a freshly opened device fd (either path).
fn finish_open(
    dev: PathBuf,
    name: String,
    bus: Bus,
    group_id: u32,
    device: File,
    iommu: Iommu,
    opts: &VfioOptions,
) -> Result<VfioDevice, VfioError> {
    let (flags, num_regions, num_irqs) =
        sys::device_info(&device).map_err(ioctl_err("VFIO_DEVICE_GET_INFO"))?;
    let kind = flags & (device_flags::PCI | device_flags::PLATFORM | device_flags::AMBA);
    if kind.count_ones() != 1 {
        return Err(VfioError::UnsupportedType { path: dev, flags });
    }
    let is_pci = kind == device_flags::PCI;
    let of_names = if is_pci {
        Vec::new()
    } else {
        sysfs::of_reg_names(&dev)
    };
    let stem = sysfs::of_compatible(&dev).unwrap_or_else(|| name.clone());
    let mut regions = Vec::new();
    for i in 0..num_regions {
        let raw = match sys::region_info(&device, i) {
            Ok(r) => Some(r),
            Err(e) => {
                // PCI devices without VGA report EINVAL for index 8: region absent.
                if !(is_pci && i == 8) {
                    log::warn!("{name}: region {i} info: {e}");
                }
                None
            }
        };
        regions.push(Region {
            raw,
            name: region_name(is_pci, i, &of_names, &stem),
        });
    }
    let mut irqs = Vec::new();
    for i in 0..num_irqs {
        // vfio-pci answers EINVAL for indices the device lacks (ERR on a
        // conventional PCI device): report them with count 0.
        let (flags, count) = match sys::irq_info(&device, i) {
            Ok(v) => v,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (0, 0),
            Err(e) => return Err(ioctl_err("VFIO_DEVICE_GET_IRQ_INFO")(e)),
        };
        irqs.push(IrqInfo {
            index: i,
            flags,
            count,
        });
    }
    let mut d = VfioDevice {
        device,
        iommu,
        sysfs: dev,
        name,
        bus,
        info: DeviceInfo {
            flags,
            num_regions,
            num_irqs,
        },
        regions,
        irqs,
        opts: opts.clone(),
        bus_master_set: false,
        vectors: HashMap::new(),
        mappings: BTreeMap::new(),
        proc_interrupts: match File::open(&opts.proc_interrupts) {
            Ok(f) => Some(f),
            Err(e) => {
                log::warn!(
                    "vfio: cannot open {}: {e}; host-interrupt counts unavailable",
                    opts.proc_interrupts.display()
                );
                None
            }
        },
    };
    if opts.reset_on_open && flags & device_flags::RESET != 0 {
        sys::device_reset(&d.device).map_err(ioctl_err("VFIO_DEVICE_RESET"))?;
    }
    if opts.bus_master == BusMaster::OnOpen {
        d.enable_bus_master()
            .map_err(|e| ioctl_err("enable bus master")(std::io::Error::other(e.to_string())))?;
    }
    log::info!(
        "vfio: opened {} ({}, {}): flags {flags:#x}, {num_regions} regions, {num_irqs} irqs",
        d.name,
        d.bus.name(),
        d.iommu.describe(group_id)
    );
    Ok(d)
}

/// Upper bound on what [`read_whole_at`] reads (`/proc/interrupts` of a large
/// machine is a few hundred KiB).
const PROC_READ_LIMIT: usize = 16 << 20;

/// Reads a whole file from offset 0 with `pread` (no open, no seek: usable under
/// the serve loop's seccomp filter; procfs seq files restart at offset 0).
pub fn read_whole_at(f: &File) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match f.read_at(&mut chunk, buf.len() as u64) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if buf.len() > PROC_READ_LIMIT {
            return Err(std::io::Error::other("file too large"));
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Name of region `i` (see the module documentation).
pub fn region_name(is_pci: bool, i: u32, of_names: &[String], stem: &str) -> String {
    if is_pci {
        return match i {
            0..=5 => format!("BAR{i}"),
            6 => "ROM".into(),
            7 => "config".into(),
            8 => "VGA".into(),
            _ => format!("region{i}"),
        };
    }
    of_names
        .get(i as usize)
        .cloned()
        .unwrap_or_else(|| format!("{stem}-reg{i}"))
}

/// The areas a client may mmap: the sparse-mmap areas when the region has that
/// capability, else the whole region; only when the kernel sets `MMAP`. Areas are
/// clipped to the region and empty ones dropped.
pub fn mmap_areas(raw: &RawRegion) -> Vec<SparseArea> {
    if raw.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 || raw.size == 0 {
        return Vec::new();
    }
    let sparse = raw.caps.iter().find_map(|c| match c {
        RegionCap::SparseMmap(a) => Some(a.clone()),
        _ => None,
    });
    match sparse {
        None => vec![SparseArea {
            offset: 0,
            size: raw.size,
        }],
        Some(areas) => areas
            .into_iter()
            .filter(|a| a.size != 0 && a.offset < raw.size)
            .map(|a| SparseArea {
                offset: a.offset,
                size: a.size.min(raw.size - a.offset),
            })
            .collect(),
    }
}

impl VfioDevice {
    /// The sysfs path it was opened from (resolved).
    pub fn sysfs_path(&self) -> &Path {
        &self.sysfs
    }

    /// The VFIO device name (`0000:00:03.0`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn is_pci(&self) -> bool {
        self.info.flags & device_flags::PCI != 0
    }

    /// Is the PCI bus-master bit set by us (false for non-PCI devices)?
    pub fn bus_master_enabled(&self) -> bool {
        self.bus_master_set
    }

    /// The IOMMU interface the device was opened through (`Container` or
    /// `Iommufd`, never `Auto`).
    pub fn iommu_backend(&self) -> IommuBackend {
        self.iommu.backend()
    }

    /// Currently mapped IOVA ranges (iova, size).
    pub fn mappings(&self) -> Vec<(u64, u64)> {
        self.mappings.iter().map(|(&a, &s)| (a, s)).collect()
    }

    /// Removes every IOMMU mapping this device made (backstop for a server that
    /// lost track; normally the memory table unmaps one by one).
    pub fn unmap_all(&mut self) -> Result<(), DeviceError> {
        let all: Vec<(u64, u64)> = self.mappings();
        for (iova, size) in all {
            self.unmap(iova, size)?;
        }
        Ok(())
    }

    fn region(&self, index: u32) -> Result<&RawRegion, DeviceError> {
        self.regions
            .get(index as usize)
            .and_then(|r| r.raw.as_ref())
            .ok_or_else(|| DeviceError::Invalid(format!("no region {index}")))
    }

    fn check_range(&self, index: u32, offset: u64, len: usize) -> Result<u64, DeviceError> {
        let r = self.region(index)?;
        let end = offset
            .checked_add(len as u64)
            .filter(|&e| e <= r.size)
            .ok_or_else(|| {
                DeviceError::Invalid(format!(
                    "region {index}: {len} bytes at {offset:#x} beyond size {:#x}",
                    r.size
                ))
            })?;
        let _ = end;
        r.offset
            .checked_add(offset)
            .ok_or_else(|| DeviceError::Invalid("offset overflow".into()))
    }

    fn config_read16(&self, off: u64) -> Result<u16, DeviceError> {
        let base = self.check_range(PCI_CONFIG_REGION, off, 2)?;
        let mut b = [0u8; 2];
        self.device.read_exact_at(&mut b, base)?;
        Ok(u16::from_le_bytes(b))
    }

    fn enable_bus_master(&mut self) -> Result<(), DeviceError> {
        if !self.is_pci() || self.bus_master_set || self.opts.bus_master == BusMaster::Never {
            return Ok(());
        }
        let cmd = self.config_read16(PCI_COMMAND)?;
        if cmd & PCI_COMMAND_MASTER == 0 {
            let base = self.check_range(PCI_CONFIG_REGION, PCI_COMMAND, 2)?;
            self.device
                .write_all_at(&(cmd | PCI_COMMAND_MASTER).to_le_bytes(), base)?;
            log::info!(
                "vfio: {}: PCI bus master enabled (command {cmd:#06x} -> {:#06x})",
                self.name,
                cmd | PCI_COMMAND_MASTER
            );
        }
        self.bus_master_set = true;
        Ok(())
    }

    fn proc_count(&self, index: u32, vector: u32) -> Option<u64> {
        let text = read_whole_at(self.proc_interrupts.as_ref()?).ok()?;
        let lines = procirq::parse(&text);
        if self.is_pci() {
            procirq::count_for(
                &lines,
                &procirq::pci_handler_name(&self.name, index, vector)?,
            )
        } else {
            let dev_name = if self.info.flags & device_flags::AMBA != 0 {
                // vfio-amba names its handlers after "vfio-amba-<periphid>"; the
                // periphid is not in sysfs, so match any vfio-amba handler.
                lines.iter().flat_map(|l| l.actions.iter()).find_map(|a| {
                    let s = a.strip_prefix("vfio-irq[")?;
                    let (_, n) = s.split_once("](")?;
                    n.strip_suffix(')')
                        .filter(|n| n.starts_with("vfio-amba-"))
                        .map(str::to_string)
                })?
            } else {
                self.name.clone()
            };
            procirq::platform_count(&lines, &dev_name, index)
        }
    }

    fn unmap(&mut self, iova: u64, size: u64) -> Result<(), DeviceError> {
        self.iommu
            .unmap(iova, size)
            .map_err(|e| DeviceError::Io(std::io::Error::other(e)))?;
        self.mappings.remove(&iova);
        Ok(())
    }

    fn disable_all_triggers(&mut self) {
        for irq in self.irqs.clone() {
            if irq.count == 0 || irq.flags & crate::device::irq_flags::EVENTFD == 0 {
                continue;
            }
            // Read the counts first: a disabled MSI vector's line leaves /proc/interrupts.
            self.freeze(irq.index, 0, irq.count);
            let buf = sys::irq_set_buffer(irq.index, 0, 0, IrqAction::Trigger, &RawIrqData::None);
            if let Err(e) = sys::set_irqs(&self.device, &buf) {
                log::debug!(
                    "vfio: {}: disabling irq index {}: {e}",
                    self.name,
                    irq.index
                );
            }
        }
    }

    fn freeze(&mut self, index: u32, start: u32, count: u32) {
        for v in start..start.saturating_add(count) {
            let now = self.proc_count(index, v);
            if let Some(st) = self.vectors.get_mut(&(index, v)) {
                if st.armed {
                    st.frozen = Some(now.unwrap_or(st.baseline).saturating_sub(st.baseline));
                    st.armed = false;
                }
            }
        }
    }

    fn arm(&mut self, index: u32, vector: u32) {
        let base = self.proc_count(index, vector).unwrap_or(0);
        let st = self.vectors.entry((index, vector)).or_default();
        *st = VectorState {
            baseline: base,
            frozen: None,
            unmasks: 0,
            refires: 0,
            armed: true,
        };
    }

    fn after_unmask(&mut self, index: u32, start: u32, count: u32) {
        let refire = self.is_pci()
            && index == PCI_INTX
            && self
                .config_read16(PCI_STATUS)
                .is_ok_and(|s| s & PCI_STATUS_INTERRUPT != 0);
        for v in start..start.saturating_add(count) {
            let st = self.vectors.entry((index, v)).or_default();
            st.unmasks += 1;
            if refire {
                st.refires += 1;
            }
        }
    }
}

impl Device for VfioDevice {
    fn info(&self) -> DeviceInfo {
        self.info
    }

    fn region_info(&self, index: u32) -> Result<RegionInfo, DeviceError> {
        let r = self
            .regions
            .get(index as usize)
            .ok_or_else(|| DeviceError::Invalid(format!("no region {index}")))?;
        let Some(raw) = &r.raw else {
            return Ok(RegionInfo {
                index,
                flags: 0,
                size: 0,
                name: r.name.clone(),
                mmap: None,
            });
        };
        let areas = if self.opts.no_mmap {
            Vec::new()
        } else {
            mmap_areas(raw)
        };
        let mut flags = raw.flags & (region_flags::READ | region_flags::WRITE);
        let mmap = (!areas.is_empty()).then(|| {
            flags |= region_flags::MMAP;
            RegionMmap {
                fd: self.device.as_raw_fd(),
                fd_offset: raw.offset,
                areas,
            }
        });
        Ok(RegionInfo {
            index,
            flags,
            size: raw.size,
            name: r.name.clone(),
            mmap,
        })
    }

    fn irq_info(&self, index: u32) -> Result<IrqInfo, DeviceError> {
        self.irqs
            .get(index as usize)
            .copied()
            .ok_or_else(|| DeviceError::Invalid(format!("no IRQ index {index}")))
    }

    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        let at = self.check_range(index, offset, data.len())?;
        self.device.read_exact_at(data, at)?;
        Ok(())
    }

    fn region_write(
        &mut self,
        index: u32,
        offset: u64,
        data: &[u8],
        _mem: &dyn DmaMemory,
    ) -> Result<(), DeviceError> {
        let at = self.check_range(index, offset, data.len())?;
        self.device.write_all_at(data, at)?;
        Ok(())
    }

    fn dma_map(&mut self, region: &MappedRegion) -> Result<(), DeviceError> {
        let p = region.prot;
        let flags = sys::dma_map_flags(p.read, p.write, p.exec).ok_or_else(|| {
            DeviceError::Invalid(format!(
                "DMA map at {:#x} without any permission",
                region.iova
            ))
        })?;
        if p.exec && !p.read {
            log::warn!(
                "vfio: {}: exec-only mapping at {:#x} mapped READ (VFIO has no exec flag)",
                self.name,
                region.iova
            );
        }
        self.enable_bus_master()?;
        // SAFETY: the server's memory table keeps `[host_addr, host_addr + size)` mapped
        // until it calls `dma_unmap` for this region (the `Device::dma_map` contract), and
        // only ever accesses it with volatile/raw operations.
        unsafe {
            self.iommu
                .map(region.iova, region.size, region.host_addr, flags)
        }
        .map_err(|e| {
            DeviceError::Io(std::io::Error::new(
                e.kind(),
                format!(
                    "{} iova {:#x}+{:#x}: {e}",
                    match self.iommu.backend() {
                        IommuBackend::Iommufd => "IOMMU_IOAS_MAP",
                        _ => "VFIO_IOMMU_MAP_DMA",
                    },
                    region.iova,
                    region.size
                ),
            ))
        })?;
        self.mappings.insert(region.iova, region.size);
        Ok(())
    }

    fn dma_unmap(&mut self, region: &MappedRegion) -> Result<(), DeviceError> {
        self.unmap(region.iova, region.size)
    }

    fn set_irqs(&mut self, req: SetIrqs) -> Result<(), DeviceError> {
        let info = self.irq_info(req.index)?;
        if req
            .start
            .checked_add(req.count)
            .is_none_or(|e| e > info.count)
        {
            return Err(DeviceError::Invalid(format!(
                "IRQ index {}: vectors {}+{} beyond {}",
                req.index, req.start, req.count, info.count
            )));
        }
        let raw = match &req.data {
            IrqData::None => RawIrqData::None,
            IrqData::Bool(v) => RawIrqData::Bool(v.clone()),
            IrqData::Eventfd(v) => RawIrqData::Eventfd(
                v.iter()
                    .map(|f| f.as_ref().map_or(-1, |f| f.as_raw_fd()))
                    .collect(),
            ),
        };
        let arming = req.action == IrqAction::Trigger
            && matches!(&req.data, IrqData::Eventfd(v) if v.iter().any(Option::is_some));
        if arming && self.is_pci() && (req.index == PCI_MSI || req.index == PCI_MSIX) {
            // MSI is a DMA write: without bus master it is silently dropped.
            self.enable_bus_master()?;
        }
        // A trigger change ends the counting period of the vectors it touches. Their
        // counts are read before the ioctl: a disabled MSI vector's line leaves
        // /proc/interrupts. On failure the previous state is restored.
        let touched = match (req.action, &req.data) {
            (IrqAction::Trigger, IrqData::Eventfd(_)) => Some((req.start, req.count)),
            (IrqAction::Trigger, IrqData::None) if req.count == 0 => Some((0, info.count)),
            _ => None,
        };
        let saved: Vec<((u32, u32), Option<VectorState>)> = touched
            .map(|(s, n)| {
                (s..s.saturating_add(n))
                    .map(|v| ((req.index, v), self.vectors.get(&(req.index, v)).copied()))
                    .collect()
            })
            .unwrap_or_default();
        if let Some((s, n)) = touched {
            self.freeze(req.index, s, n);
        }
        let buf = sys::irq_set_buffer(req.index, req.start, req.count, req.action, &raw);
        if let Err(e) = sys::set_irqs(&self.device, &buf) {
            for (k, st) in saved {
                match st {
                    Some(st) => self.vectors.insert(k, st),
                    None => self.vectors.remove(&k),
                };
            }
            return Err(e.into());
        }
        // The kernel holds its own references to the eventfds; ours drop with `req`.
        match (req.action, &req.data) {
            (IrqAction::Trigger, IrqData::Eventfd(v)) => {
                for (i, fd) in v.iter().enumerate() {
                    if fd.is_some() {
                        self.arm(req.index, req.start + i as u32);
                    }
                }
            }
            (IrqAction::Unmask, IrqData::None) => {
                self.after_unmask(req.index, req.start, req.count)
            }
            (IrqAction::Unmask, IrqData::Bool(v)) => {
                for (i, &b) in v.iter().enumerate() {
                    if b {
                        self.after_unmask(req.index, req.start + i as u32, 1);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn unmask_irq(&mut self, index: u32, vector: u32) -> Result<(), DeviceError> {
        let info = self.irq_info(index)?;
        if vector >= info.count {
            return Err(DeviceError::Invalid(format!(
                "IRQ index {index} has no vector {vector}"
            )));
        }
        let buf = sys::irq_set_buffer(index, vector, 1, IrqAction::Unmask, &RawIrqData::None);
        sys::set_irqs(&self.device, &buf)?;
        self.after_unmask(index, vector, 1);
        Ok(())
    }

    fn reset(&mut self) -> Result<(), DeviceError> {
        self.disable_all_triggers();
        if self.info.flags & device_flags::RESET == 0 {
            return Err(DeviceError::NotSupported(format!(
                "{}: the device reports no reset (a PCI device needs FLR, PM reset or a bus it alone sits on, e.g. behind its own root port)",
                self.name
            )));
        }
        sys::device_reset(&self.device)?;
        // The kernel restores the saved config space around the reset; re-apply the
        // bus-master policy in case it did not.
        if self.bus_master_set {
            self.bus_master_set = false;
            if self.opts.bus_master == BusMaster::OnOpen || !self.mappings.is_empty() {
                self.enable_bus_master()?;
            }
        }
        Ok(())
    }

    fn irq_counters(&self, index: u32, vector: u32) -> Option<IrqCounters> {
        let info = self.irqs.get(index as usize)?;
        if vector >= info.count {
            return None;
        }
        let st = self
            .vectors
            .get(&(index, vector))
            .copied()
            .unwrap_or_default();
        let host = if st.armed {
            self.proc_count(index, vector)
                .unwrap_or(st.baseline)
                .saturating_sub(st.baseline)
        } else {
            st.frozen.unwrap_or(0)
        };
        Some(IrqCounters {
            device_events: host,
            host_interrupts: host,
            unmasks: st.unmasks,
            refires: st.refires,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::sysfs::tests::{fake_pci, TempDir};
    use super::*;

    #[test]
    fn proc_interrupts_reread_without_reopening() {
        // A file that changes between reads: the same fd sees the new contents.
        let t = TempDir::new("pread");
        let p = t.0.join("interrupts");
        let big: String = (0..5000)
            .map(|i| format!("{i:>4}: {i} x y vfio-intx(d)\n"))
            .collect();
        std::fs::write(&p, "CPU0\n 24: 1 x y vfio-intx(d)\n").unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(
            read_whole_at(&f).unwrap(),
            "CPU0\n 24: 1 x y vfio-intx(d)\n"
        );
        std::fs::write(&p, &big).unwrap();
        assert_eq!(read_whole_at(&f).unwrap(), big);
        // procfs seq files restart at offset 0 too.
        if let Ok(f) = File::open("/proc/interrupts") {
            let a = read_whole_at(&f).unwrap();
            let b = read_whole_at(&f).unwrap();
            assert!(
                a.starts_with(' ') || a.starts_with("CPU") || a.is_empty(),
                "{a}"
            );
            assert_eq!(a.lines().next(), b.lines().next());
        }
    }

    #[test]
    fn inspect_accepts_a_vfio_bound_device() {
        let t = TempDir::new("inspect");
        fake_pci(&t.0, "0000:00:03.0", Some("vfio-pci"), 5);
        let (_, name, bus, group) = inspect(&t.0.join("bus/pci/devices/0000:00:03.0")).unwrap();
        assert_eq!((name.as_str(), bus, group), ("0000:00:03.0", Bus::Pci, 5));
    }

    #[test]
    fn inspect_errors_say_what_to_do() {
        let t = TempDir::new("inspect-err");
        let e = inspect(&t.0.join("bus/pci/devices/0000:00:09.0")).unwrap_err();
        assert!(matches!(e, VfioError::NotFound(_)), "{e}");

        fake_pci(&t.0, "0000:00:04.0", Some("e1000e"), 6);
        let p = t.0.join("bus/pci/devices/0000:00:04.0");
        let e = inspect(&p).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, VfioError::NotVfioBound { .. }));
        assert!(
            msg.contains("bound to driver e1000e, not vfio-pci"),
            "{msg}"
        );
        assert!(msg.contains("driver/unbind"), "{msg}");
        assert!(msg.contains("echo vfio-pci > "), "{msg}");
        assert!(msg.contains("/driver_override"), "{msg}");
        assert!(
            msg.contains("echo 0000:00:04.0 > /sys/bus/pci/drivers_probe"),
            "{msg}"
        );

        let net = p.join("net/eth1");
        std::fs::create_dir_all(&net).unwrap();
        std::fs::write(net.join("flags"), "0x1003\n").unwrap();
        let msg = inspect(&p).unwrap_err().to_string();
        assert!(
            msg.contains("in use by the host (network interface eth1 is up"),
            "{msg}"
        );
        assert!(
            !msg.contains("unbind") && !msg.contains("driver_override"),
            "{msg}"
        );

        let d = fake_pci(&t.0, "0000:00:05.0", None, 7);
        let msg = inspect(&d).unwrap_err().to_string();
        assert!(msg.contains("bound to no driver"), "{msg}");
        assert!(!msg.contains("unbind"), "{msg}");

        let d = fake_pci(&t.0, "0000:00:06.0", Some("vfio-pci"), 8);
        std::fs::remove_file(d.join("iommu_group")).unwrap();
        let e = inspect(&d).unwrap_err();
        assert!(matches!(e, VfioError::NoIommu(_)), "{e}");
        assert!(e.to_string().contains("intel_iommu=on"));
    }

    #[test]
    fn amba_rebind_message_names_vfio_amba() {
        let t = TempDir::new("amba");
        let dev = t.0.join("devices/platform/9010000.pl031");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::create_dir_all(t.0.join("bus/amba/drivers/rtc-pl031")).unwrap();
        std::os::unix::fs::symlink(t.0.join("bus/amba"), dev.join("subsystem")).unwrap();
        std::os::unix::fs::symlink(t.0.join("bus/amba/drivers/rtc-pl031"), dev.join("driver"))
            .unwrap();
        let msg = inspect(&dev).unwrap_err().to_string();
        assert!(
            msg.contains("bound to driver rtc-pl031, not vfio-amba"),
            "{msg}"
        );
        assert!(msg.contains("/sys/bus/amba/drivers_probe"), "{msg}");
    }

    #[test]
    fn not_viable_lists_members() {
        let e = VfioError::GroupNotViable {
            group: 3,
            members: vec![
                ("0000:00:03.0".into(), Some("vfio-pci".into())),
                ("0000:00:04.0".into(), Some("e1000e".into())),
                ("0000:00:05.0".into(), None),
            ],
        };
        let m = e.to_string();
        assert!(m.contains("IOMMU group 3 is not viable"), "{m}");
        assert!(m.contains("0000:00:04.0 (driver e1000e)"), "{m}");
        assert!(m.contains("0000:00:05.0 (driver none)"), "{m}");
    }

    #[test]
    fn region_names() {
        let of = vec!["regs".to_string()];
        assert_eq!(region_name(true, 0, &[], "x"), "BAR0");
        assert_eq!(region_name(true, 5, &[], "x"), "BAR5");
        assert_eq!(region_name(true, 6, &[], "x"), "ROM");
        assert_eq!(region_name(true, 7, &[], "x"), "config");
        assert_eq!(region_name(true, 8, &[], "x"), "VGA");
        assert_eq!(region_name(true, 9, &[], "x"), "region9");
        assert_eq!(region_name(false, 0, &of, "arm,pl330"), "regs");
        assert_eq!(region_name(false, 1, &of, "arm,pl330"), "arm,pl330-reg1");
    }

    #[test]
    fn mmap_areas_honour_sparse_caps() {
        let mut r = RawRegion {
            flags: 0x7,
            size: 0x10_0000,
            offset: 0,
            caps: vec![],
        };
        assert_eq!(
            mmap_areas(&r),
            vec![SparseArea {
                offset: 0,
                size: 0x10_0000
            }]
        );
        r.caps = vec![
            RegionCap::MsixMappable,
            RegionCap::SparseMmap(vec![
                SparseArea {
                    offset: 0,
                    size: 0x1000,
                },
                SparseArea {
                    offset: 0x2000,
                    size: 0,
                },
                SparseArea {
                    offset: 0xf_f000,
                    size: 0x2000,
                },
                SparseArea {
                    offset: 0x20_0000,
                    size: 0x1000,
                },
            ]),
        ];
        assert_eq!(
            mmap_areas(&r),
            vec![
                SparseArea {
                    offset: 0,
                    size: 0x1000
                },
                SparseArea {
                    offset: 0xf_f000,
                    size: 0x1000
                }
            ]
        );
        r.flags = 0x3; // no MMAP flag: nothing, sparse cap or not
        assert!(mmap_areas(&r).is_empty());
    }

    #[test]
    fn open_without_vfio_fails_clearly() {
        // On a host without VFIO (this one) a bound-looking fake device fails at
        // /dev/vfio; with VFIO present the fake group number does not exist.
        let t = TempDir::new("open");
        let d = fake_pci(&t.0, "0000:00:03.0", Some("vfio-pci"), 4242);
        let e = open(&d, &VfioOptions::default()).unwrap_err();
        assert!(matches!(e, VfioError::NoVfio(_)), "{e}");
        assert!(e.to_string().contains("modprobe"), "{e}");
    }
}
