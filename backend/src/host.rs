//! Host discovery and binding for operators (`vfio-sidecar list`, `vfio-sidecar bind`).
//!
//! Everything works on a sysfs root given by the caller (`/sys` on a real host, a
//! fake tree in tests): devices on the platform, AMBA and PCI buses, their driver,
//! IOMMU group and group viability, which built-in profile matches them, and the
//! `driver_override` / `unbind` / `drivers_probe` writes that hand a device to its
//! VFIO driver.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use crate::profile::{Profile, ProfileSet};
use crate::vfio::sysfs;

/// Errors of host discovery and binding; each names the fix where there is one.
#[derive(Debug, Error)]
pub enum HostError {
    /// The sysfs root is not there.
    #[error("{} does not exist or is not a directory (is sysfs mounted?)", .0.display())]
    NoSysfs(PathBuf),
    /// No device of that name on the platform, AMBA or PCI bus.
    #[error(
        "no device {0:?} under bus/platform, bus/amba or bus/pci; run `vfio-sidecar list` to \
         see candidates"
    )]
    NoSuchDevice(String),
    /// The device is on a bus vfio-sidecar cannot bind.
    #[error("device {} is on bus {bus:?}; only platform, amba and pci devices can be bound", path.display())]
    UnsupportedBus {
        /// Device path.
        path: PathBuf,
        /// Its bus.
        bus: String,
    },
    /// The VFIO driver for the bus is not loaded.
    #[error("driver {driver} is not loaded: run `modprobe {module}`{extra}")]
    ModuleNotLoaded {
        /// Driver name.
        driver: &'static str,
        /// Module to load.
        module: &'static str,
        /// Extra advice.
        extra: &'static str,
    },
    /// Writing a sysfs file was refused for lack of privilege.
    #[error("writing {} was refused ({source}): run as root", path.display())]
    NotRoot {
        /// File.
        path: PathBuf,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// A sysfs write failed otherwise.
    #[error("writing {value:?} to {} failed: {source}; {hint}", path.display())]
    WriteFailed {
        /// File.
        path: PathBuf,
        /// Value.
        value: String,
        /// OS error.
        #[source]
        source: io::Error,
        /// What to check.
        hint: &'static str,
    },
    /// After the writes the device is not bound to the VFIO driver.
    #[error(
        "{name} is bound to {actual} after the writes, expected {expected}; check `dmesg` \
         (vfio-platform devices without a reset module need \
         `modprobe vfio-platform reset_required=0`; a device whose IOMMU group holds \
         other devices needs them bound too)"
    )]
    NotBound {
        /// Device name.
        name: String,
        /// Target driver.
        expected: &'static str,
        /// What it is bound to ("no driver" if none).
        actual: String,
    },
    /// Reading sysfs failed.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// What.
        path: PathBuf,
        /// OS error.
        #[source]
        source: io::Error,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, HostError>;

/// The buses vfio-sidecar handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bus {
    /// Platform devices (DT/ACPI), VFIO driver `vfio-platform`.
    Platform,
    /// AMBA PrimeCells, VFIO driver `vfio-amba`.
    Amba,
    /// PCI, VFIO driver `vfio-pci`.
    Pci,
}

impl Bus {
    /// All buses, in scan order.
    pub const ALL: [Bus; 3] = [Bus::Platform, Bus::Amba, Bus::Pci];

    /// Directory name under `<sysfs>/bus`.
    pub fn dir(self) -> &'static str {
        match self {
            Bus::Platform => "platform",
            Bus::Amba => "amba",
            Bus::Pci => "pci",
        }
    }

    /// The VFIO driver for this bus.
    pub fn vfio_driver(self) -> &'static str {
        match self {
            Bus::Platform => "vfio-platform",
            Bus::Amba => "vfio-amba",
            Bus::Pci => "vfio-pci",
        }
    }

    /// The module providing [`Bus::vfio_driver`].
    pub fn module(self) -> &'static str {
        self.vfio_driver()
    }

    fn from_dir(s: &str) -> Option<Bus> {
        Bus::ALL.into_iter().find(|b| b.dir() == s)
    }
}

impl fmt::Display for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dir())
    }
}

/// How a device identifies itself, for profile matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceIdent {
    /// PCI vendor and device id.
    Pci {
        /// Vendor id.
        vendor: u16,
        /// Device id.
        device: u16,
    },
    /// AMBA peripheral id (`<dev>/id`).
    Amba {
        /// PeriphID0-3 as one word.
        periphid: u32,
    },
    /// Device-tree `compatible` strings, most specific first.
    Compatible(Vec<String>),
}

impl fmt::Display for DeviceIdent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceIdent::Pci { vendor, device } => write!(f, "{vendor:04x}:{device:04x}"),
            DeviceIdent::Amba { periphid } => write!(f, "periphid {periphid:08x}"),
            DeviceIdent::Compatible(c) => write!(f, "{}", c.join(",")),
        }
    }
}

/// The profile for the device at `dev` (a sysfs device directory), in the order
/// `serve` uses: DT `compatible`, then the AMBA PeriphID (`<dev>/id`, matched
/// under each profile's mask), then the PCI vendor/device ids.
pub fn match_profile<'a>(set: &'a ProfileSet, dev: &Path) -> Option<&'a Profile> {
    if let Some(list) = of_compatible_list(dev) {
        if let Some(p) = set.by_compatible(&list) {
            return Some(p);
        }
    }
    if let Some(id) = read_trim(&dev.join("id")).and_then(|s| parse_hex(&s)) {
        if let Some(p) = set.by_primecell(id) {
            return Some(p);
        }
    }
    let vendor = read_trim(&dev.join("vendor")).and_then(|s| parse_hex(&s));
    let device = read_trim(&dev.join("device")).and_then(|s| parse_hex(&s));
    match (vendor, device) {
        (Some(v), Some(d)) => set.by_pci(u16::try_from(v).ok()?, u16::try_from(d).ok()?),
        _ => None,
    }
}

/// One device of interest on the host: bound to a VFIO driver, or matching a
/// built-in profile (a "candidate").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostDevice {
    /// Bus.
    pub bus: Bus,
    /// Device name (`0000:00:03.0`, `ff240000.dma-controller`).
    pub name: String,
    /// `<sysfs>/bus/<bus>/devices/<name>`.
    pub sysfs_path: PathBuf,
    /// Bound driver, if any.
    pub driver: Option<String>,
    /// Bound to the VFIO driver of its bus.
    pub bound_to_vfio: bool,
    /// IOMMU group number.
    pub iommu_group: Option<u32>,
    /// Every *other* device of the group is bound to a VFIO driver, `pci-stub`,
    /// `pcieport` or nothing, so `/dev/vfio/<group>` is usable once this device is
    /// bound to VFIO (false without a group).
    pub group_viable: bool,
    /// Devices that make the group non-viable, as "name (driver)".
    pub group_blockers: Vec<String>,
    /// Identity used for profile matching (`1234:11e8`, `periphid 00241330`,
    /// `arm,pl330,arm,primecell`).
    pub ident: Option<String>,
    /// Matching profile (built-in, or from a `--profile` file).
    pub profile: Option<String>,
    /// For devices not yet bound to VFIO: shell commands that bind them.
    pub bind_commands: Vec<String>,
}

impl HostDevice {
    /// Short status for the table.
    pub fn status(&self) -> &'static str {
        match (
            self.bound_to_vfio,
            self.iommu_group.is_some(),
            self.group_viable,
        ) {
            (true, true, true) => "ready",
            (true, false, _) => "no IOMMU group",
            (true, true, false) => "group not viable",
            (false, _, _) => "candidate",
        }
    }
}

fn read_trim(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn link_name(path: &Path) -> Option<String> {
    fs::read_link(path)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// Every DT `compatible` string of the device's node, most specific first.
fn of_compatible_list(dev: &Path) -> Option<Vec<String>> {
    let raw = fs::read(dev.join("of_node/compatible")).ok()?;
    let list: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    (!list.is_empty()).then_some(list)
}

fn parse_hex(s: &str) -> Option<u32> {
    u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// Reads how a device identifies itself.
fn read_ident(bus: Bus, dev: &Path) -> Option<DeviceIdent> {
    let compatible = || of_compatible_list(dev).map(DeviceIdent::Compatible);
    match bus {
        Bus::Pci => {
            let vendor = parse_hex(&read_trim(&dev.join("vendor"))?)?;
            let device = parse_hex(&read_trim(&dev.join("device"))?)?;
            Some(DeviceIdent::Pci {
                vendor: u16::try_from(vendor).ok()?,
                device: u16::try_from(device).ok()?,
            })
        }
        Bus::Amba => read_trim(&dev.join("id"))
            .and_then(|s| parse_hex(&s))
            .map(|periphid| DeviceIdent::Amba { periphid })
            .or_else(compatible),
        Bus::Platform => compatible(),
    }
}

/// Drivers that may share an IOMMU group with a VFIO device (they do not use the
/// kernel DMA API on it: `driver_managed_dma`).
fn driver_ok_in_group(d: &str) -> bool {
    sysfs::is_vfio_driver(d) || d == "pci-stub" || d == "pcieport"
}

/// (viable, blockers) of the IOMMU group of `dev`, ignoring device `except` (the
/// one being looked at: it is, or is about to be, bound to VFIO).
fn group_viability(dev: &Path, except: &str) -> (bool, Vec<String>) {
    let members = sysfs::group_members(dev);
    if members.is_empty() {
        // The group lists at least the device itself: its directory is unreadable.
        return (
            false,
            vec![format!(
                "{} unreadable",
                dev.join("iommu_group/devices").display()
            )],
        );
    }
    let blockers: Vec<String> = members
        .into_iter()
        .filter(|(name, _)| name != except)
        .filter_map(|(name, drv)| match drv {
            Some(d) if !driver_ok_in_group(&d) => Some(format!("{name} ({d})")),
            _ => None,
        })
        .collect();
    (blockers.is_empty(), blockers)
}

/// The sysfs writes that hand `name` on `bus` to its VFIO driver (no checks).
fn plan_writes(sysfs: &Path, bus: Bus, name: &str, current: Option<&str>) -> Vec<SysfsWrite> {
    let busdir = sysfs.join("bus").join(bus.dir());
    let mut w = vec![SysfsWrite {
        path: busdir.join("devices").join(name).join("driver_override"),
        value: bus.vfio_driver().to_string(),
    }];
    if let Some(cur) = current {
        w.push(SysfsWrite {
            path: busdir.join("drivers").join(cur).join("unbind"),
            value: name.to_string(),
        });
    }
    w.push(SysfsWrite {
        path: busdir.join("drivers_probe"),
        value: name.to_string(),
    });
    w
}

fn driver_loaded(sysfs: &Path, bus: Bus) -> bool {
    sysfs
        .join("bus")
        .join(bus.dir())
        .join("drivers")
        .join(bus.vfio_driver())
        .is_dir()
}

fn describe(
    sysfs_root: &Path,
    profiles: &ProfileSet,
    bus: Bus,
    name: &str,
    dev: &Path,
) -> HostDevice {
    let driver = sysfs::driver(dev);
    let bound_to_vfio = driver.as_deref().is_some_and(sysfs::is_vfio_driver);
    let iommu_group = sysfs::iommu_group(dev);
    let (group_viable, group_blockers) = match iommu_group {
        Some(_) => group_viability(dev, name),
        None => (false, vec!["no IOMMU group".to_string()]),
    };
    let ident = read_ident(bus, dev);
    let profile = match_profile(profiles, dev).map(|p| p.name.clone());
    let bind_commands = if bound_to_vfio {
        Vec::new()
    } else {
        let mut c = Vec::new();
        if !driver_loaded(sysfs_root, bus) {
            c.push(format!("modprobe {}", bus.module()));
        }
        c.extend(
            plan_writes(sysfs_root, bus, name, driver.as_deref())
                .iter()
                .map(|w| w.to_string()),
        );
        c
    };
    HostDevice {
        bus,
        name: name.to_string(),
        sysfs_path: dev.to_path_buf(),
        driver,
        bound_to_vfio,
        iommu_group,
        group_viable,
        group_blockers,
        ident: ident.map(|i| i.to_string()),
        profile,
        bind_commands,
    }
}

/// Scans `<sysfs>/bus/{platform,amba,pci}/devices` and returns every device bound
/// to a VFIO driver plus every device matching a profile of `profiles` that is
/// not (a candidate, with the commands to bind it). Sorted by bus, then name.
pub fn list_devices(sysfs_root: &Path, profiles: &ProfileSet) -> Result<Vec<HostDevice>> {
    if !sysfs_root.is_dir() {
        return Err(HostError::NoSysfs(sysfs_root.to_path_buf()));
    }
    let mut out = Vec::new();
    for bus in Bus::ALL {
        let dir = sysfs_root.join("bus").join(bus.dir()).join("devices");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(HostError::Read { path: dir, source }),
        };
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            let dev = dir.join(&name);
            let d = describe(sysfs_root, profiles, bus, &name, &dev);
            if d.bound_to_vfio || d.profile.is_some() {
                out.push(d);
            }
        }
    }
    Ok(out)
}

/// Whether VFIO is usable on this host, and how to get it if not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VfioHostStatus {
    /// `/dev/vfio/vfio` (legacy container) exists.
    pub dev_vfio_container: bool,
    /// `/dev/vfio/devices` (iommufd cdevs) exists.
    pub dev_vfio_cdev: bool,
    /// The vfio core is loaded (`<sysfs>/module/vfio`).
    pub vfio_module: bool,
    /// Number of IOMMU groups (0: no IOMMU enabled).
    pub iommu_groups: usize,
    /// The unsafe no-IOMMU mode is enabled.
    pub noiommu: bool,
    /// Which VFIO bus drivers are registered: (driver, loaded).
    pub drivers: Vec<(&'static str, bool)>,
    /// What to do, in order (empty when everything is in place).
    pub hints: Vec<String>,
}

impl VfioHostStatus {
    /// VFIO is present at all (device nodes or the core module).
    pub fn available(&self) -> bool {
        self.dev_vfio_container || self.dev_vfio_cdev || self.vfio_module
    }
}

/// Checks the VFIO prerequisites of the host. `dev_root` is `/dev` on a real host.
pub fn vfio_host_status(sysfs_root: &Path, dev_root: &Path) -> VfioHostStatus {
    let dev_vfio_container = dev_root.join("vfio/vfio").exists();
    let dev_vfio_cdev = dev_root.join("vfio/devices").is_dir();
    let vfio_module = sysfs_root.join("module/vfio").is_dir();
    let iommu_groups = fs::read_dir(sysfs_root.join("kernel/iommu_groups"))
        .map(|d| d.flatten().count())
        .unwrap_or(0);
    let noiommu = read_trim(&sysfs_root.join("module/vfio/parameters/enable_unsafe_noiommu_mode"))
        .is_some_and(|v| v == "Y" || v == "1");
    let drivers: Vec<(&'static str, bool)> = Bus::ALL
        .into_iter()
        .map(|b| (b.vfio_driver(), driver_loaded(sysfs_root, b)))
        .collect();

    let mut hints = Vec::new();
    if iommu_groups == 0 {
        hints.push(
            "no IOMMU groups: enable the IOMMU and reboot: Intel `intel_iommu=on` (and \
             VT-d in the firmware), AMD: AMD-Vi/IOMMU in the firmware (the kernel enables it by \
             default; make sure `amd_iommu=off` is not set), Arm: an SMMU described in the device tree (`iommus`/`iommu-map`) or ACPI IORT with \
             arm-smmu/arm-smmu-v3 enabled"
                .to_string(),
        );
    }
    if !vfio_module && !dev_vfio_container && !dev_vfio_cdev {
        hints.push(
            "VFIO is not loaded: `modprobe vfio-pci` (PCI), `modprobe vfio-platform` \
             (platform devices; add `reset_required=0` when the device has no vfio reset \
             module, e.g. `modprobe vfio-platform reset_required=0`), `modprobe vfio-amba` \
             (AMBA PrimeCells; deprecated in recent kernels: prefer describing the device as \
             a platform device for vfio-platform)"
                .to_string(),
        );
    } else {
        for (drv, loaded) in &drivers {
            if !loaded {
                hints.push(format!(
                    "driver {drv} not registered: `modprobe {drv}` if you need it"
                ));
            }
        }
    }
    if noiommu {
        hints.push(
            "vfio enable_unsafe_noiommu_mode is on: devices are not isolated; the backend \
             offers no protection against DMA to host memory"
                .to_string(),
        );
    }
    VfioHostStatus {
        dev_vfio_container,
        dev_vfio_cdev,
        vfio_module,
        iommu_groups,
        noiommu,
        drivers,
        hints,
    }
}

/// One sysfs write of a bind plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SysfsWrite {
    /// File to write.
    pub path: PathBuf,
    /// Value (written without a trailing newline).
    pub value: String,
}

impl fmt::Display for SysfsWrite {
    /// As a shell command.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "echo {} > {}", self.value, self.path.display())
    }
}

/// What [`bind_plan`] found and will do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BindPlan {
    /// Bus.
    pub bus: Bus,
    /// Device name.
    pub name: String,
    /// `<sysfs>/bus/<bus>/devices/<name>`.
    pub device_path: PathBuf,
    /// Driver bound now.
    pub current_driver: Option<String>,
    /// Driver it will be bound to.
    pub target_driver: &'static str,
    /// The writes, in order (empty when already bound).
    pub writes: Vec<SysfsWrite>,
    /// Problems that do not stop the bind (e.g. other devices in the IOMMU group).
    pub warnings: Vec<String>,
}

impl fmt::Display for BindPlan {
    /// As a shell script fragment.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for w in &self.warnings {
            writeln!(f, "# warning: {w}")?;
        }
        if self.writes.is_empty() {
            writeln!(
                f,
                "# {} is already bound to {}",
                self.name, self.target_driver
            )?;
        }
        for w in &self.writes {
            writeln!(f, "{w}")?;
        }
        Ok(())
    }
}

/// Finds a device by name (searched on the platform, AMBA and PCI buses) or by
/// sysfs path; returns (bus, name, `<sysfs>/bus/<bus>/devices/<name>`).
fn locate(device: &str, sysfs: &Path) -> Result<(Bus, String, PathBuf)> {
    if device.contains('/') {
        let path = Path::new(device);
        if !path.exists() {
            return Err(HostError::NoSuchDevice(device.to_string()));
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| HostError::NoSuchDevice(device.to_string()))?;
        let bus_name = link_name(&path.join("subsystem")).or_else(|| {
            // <sysfs>/bus/<bus>/devices/<name>
            path.parent()
                .and_then(Path::parent)
                .and_then(Path::file_name)
                .map(|n| n.to_string_lossy().into_owned())
        });
        let bus_name = bus_name.unwrap_or_default();
        let bus = Bus::from_dir(&bus_name).ok_or_else(|| HostError::UnsupportedBus {
            path: path.to_path_buf(),
            bus: bus_name.clone(),
        })?;
        let dev = sysfs
            .join("bus")
            .join(bus.dir())
            .join("devices")
            .join(&name);
        return Ok((bus, name, dev));
    }
    for bus in Bus::ALL {
        let dev = sysfs
            .join("bus")
            .join(bus.dir())
            .join("devices")
            .join(device);
        if dev.exists() {
            return Ok((bus, device.to_string(), dev));
        }
    }
    Err(HostError::NoSuchDevice(device.to_string()))
}

/// Plans binding `device` (a name like `0000:00:03.0` / `ff240000.dma-controller`,
/// or a sysfs path, optionally prefixed `vfio:` as in `serve --device`) to the VFIO driver of its bus: `driver_override`, unbind from
/// the current driver, `drivers_probe`. Fails with the `modprobe` to run when the
/// VFIO driver is not loaded. Already bound: an empty plan.
pub fn bind_plan(device: &str, sysfs_root: &Path) -> Result<BindPlan> {
    // Accept the `serve --device vfio:PATH` spelling too.
    let device = device.strip_prefix("vfio:").unwrap_or(device);
    if !sysfs_root.is_dir() {
        return Err(HostError::NoSysfs(sysfs_root.to_path_buf()));
    }
    let (bus, name, dev) = locate(device, sysfs_root)?;
    let current = sysfs::driver(&dev);
    let target = bus.vfio_driver();
    let mut warnings = Vec::new();
    if current.as_deref() == Some(target) {
        return Ok(BindPlan {
            bus,
            name,
            device_path: dev,
            current_driver: current,
            target_driver: target,
            writes: Vec::new(),
            warnings,
        });
    }
    if !driver_loaded(sysfs_root, bus) {
        return Err(HostError::ModuleNotLoaded {
            driver: target,
            module: bus.module(),
            extra: match bus {
                Bus::Platform => {
                    " (add reset_required=0 if the device has no vfio-platform reset module)"
                }
                Bus::Amba => " (vfio-amba is deprecated in recent kernels)",
                Bus::Pci => "",
            },
        });
    }
    match sysfs::iommu_group(&dev) {
        None => warnings.push(format!(
            "{name} has no IOMMU group: VFIO will refuse it unless the IOMMU is enabled"
        )),
        Some(g) => {
            let (_, others) = group_viability(&dev, &name);
            if !others.is_empty() {
                warnings.push(format!(
                    "IOMMU group {g} also holds {}: bind them to a VFIO driver (or pci-stub) \
                     too, or /dev/vfio/{g} stays unusable",
                    others.join(", ")
                ));
            }
        }
    }
    let writes = plan_writes(sysfs_root, bus, &name, current.as_deref());
    Ok(BindPlan {
        bus,
        name,
        device_path: dev,
        current_driver: current,
        target_driver: target,
        writes,
        warnings,
    })
}

fn write_sysfs(w: &SysfsWrite) -> Result<()> {
    let res = fs::OpenOptions::new()
        .write(true)
        .open(&w.path)
        .and_then(|mut f| f.write_all(w.value.as_bytes()));
    match res {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)) => {
            Err(HostError::NotRoot {
                path: w.path.clone(),
                source: e,
            })
        }
        Err(e) => {
            let hint = if e.kind() == io::ErrorKind::NotFound {
                "the file is missing: is the VFIO driver loaded and does the kernel support \
                 driver_override?"
            } else {
                "see `dmesg` for the kernel's reason"
            };
            Err(HostError::WriteFailed {
                path: w.path.clone(),
                value: w.value.clone(),
                source: e,
                hint,
            })
        }
    }
}

/// Carries out `plan`. With `dry_run`, prints the writes (as shell commands) to
/// `out` and touches nothing. Otherwise performs them in order, reporting each to
/// `out`, then re-reads the device's driver and fails with
/// [`HostError::NotBound`] unless it is the VFIO driver.
pub fn apply(plan: &BindPlan, dry_run: bool, out: &mut dyn Write) -> Result<()> {
    let io_err = |source| HostError::Read {
        path: PathBuf::from("<output>"),
        source,
    };
    if dry_run {
        write!(out, "{plan}").map_err(io_err)?;
        return Ok(());
    }
    for w in &plan.warnings {
        writeln!(out, "warning: {w}").map_err(io_err)?;
    }
    for w in &plan.writes {
        write_sysfs(w)?;
        writeln!(out, "{w}").map_err(io_err)?;
        log::info!("sysfs: wrote {:?} to {}", w.value, w.path.display());
    }
    let now = sysfs::driver(&plan.device_path);
    if now.as_deref() != Some(plan.target_driver) {
        return Err(HostError::NotBound {
            name: plan.name.clone(),
            expected: plan.target_driver,
            actual: now.unwrap_or_else(|| "no driver".to_string()),
        });
    }
    writeln!(out, "{} is bound to {}", plan.name, plan.target_driver).map_err(io_err)?;
    Ok(())
}

/// Renders the device list for `vfio-sidecar list` (`json`: a JSON array of
/// [`HostDevice`]; otherwise a table followed by bind commands and group problems).
pub fn format_list(devices: &[HostDevice], json: bool) -> String {
    if json {
        return serde_json::to_string_pretty(devices)
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    }
    if devices.is_empty() {
        return "no VFIO-bound devices and no candidates matching a built-in profile\n".to_string();
    }
    let header = [
        "BUS", "DEVICE", "DRIVER", "GROUP", "PROFILE", "ID", "STATUS",
    ];
    let rows: Vec<[String; 7]> = devices
        .iter()
        .map(|d| {
            [
                d.bus.to_string(),
                d.name.clone(),
                d.driver.clone().unwrap_or_else(|| "-".into()),
                d.iommu_group.map_or_else(|| "-".into(), |g| g.to_string()),
                d.profile.clone().unwrap_or_else(|| "-".into()),
                d.ident.clone().unwrap_or_else(|| "-".into()),
                d.status().to_string(),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut s = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        s.push_str(l.trim_end());
        s.push('\n');
    };
    line(&header);
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&cells);
    }
    for d in devices.iter().filter(|d| !d.bound_to_vfio) {
        s.push_str(&format!(
            "\nto bind {} ({}): vfio-sidecar bind {}\n  or by hand:\n",
            d.name,
            d.profile.as_deref().unwrap_or("no profile"),
            d.name
        ));
        for c in &d.bind_commands {
            s.push_str(&format!("    {c}\n"));
        }
    }
    for d in devices.iter().filter(|d| !d.group_viable) {
        s.push_str(&format!(
            "\n{}: IOMMU group {} not viable: {}\n",
            d.name,
            d.iommu_group.map_or_else(|| "-".into(), |g| g.to_string()),
            d.group_blockers.join(", ")
        ));
    }
    s
}

/// Renders [`VfioHostStatus`] (`json` or text).
pub fn format_status(status: &VfioHostStatus, json: bool) -> String {
    if json {
        return serde_json::to_string_pretty(status)
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    }
    let yn = |b: bool| if b { "yes" } else { "no" };
    let mut s = format!(
        "VFIO available: {}\n  /dev/vfio/vfio: {}  /dev/vfio/devices: {}  vfio module: {}  IOMMU groups: {}\n",
        yn(status.available()),
        yn(status.dev_vfio_container),
        yn(status.dev_vfio_cdev),
        yn(status.vfio_module),
        status.iommu_groups
    );
    for (d, l) in &status.drivers {
        s.push_str(&format!(
            "  {d}: {}\n",
            if *l { "loaded" } else { "not loaded" }
        ));
    }
    for h in &status.hints {
        s.push_str(&format!("hint: {h}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::testing::FakeSysfs as Fake;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// The scenario from the brief: an edu bound to vfio-pci in a viable group; a
    /// group spoilt by a sibling on a host driver; a PL330 candidate bound to
    /// dma-pl330; a PL061 on vfio-platform; an unrelated PCI NIC (not listed).
    fn host() -> (Fake, PathBuf) {
        let f = Fake::new();
        f.vfio_drivers();
        let pl330 = f.typical_devices();
        f.device(
            "platform",
            "9030000.gpio",
            Some("vfio-platform"),
            Some(3),
            &[("of_node/compatible", b"arm,pl061\0arm,primecell\0")],
        );
        f.device(
            "platform",
            "9000000.uart",
            Some("uart-pl011"),
            None,
            &[("of_node/compatible", b"arm,pl011\0arm,primecell\0")],
        );
        (f, pl330)
    }

    #[test]
    fn profiles_come_from_the_profile_set() {
        let f = Fake::new();
        let set = ProfileSet::default();
        let name = |files: &[(&str, &[u8])]| {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = format!("d{}", N.fetch_add(1, Ordering::Relaxed));
            let dev = f.device("platform", &n, None, None, files);
            match_profile(&set, &dev).map(|p| p.name.clone())
        };
        assert_eq!(
            name(&[("vendor", b"0x1234\n"), ("device", b"0x11e8\n")]).as_deref(),
            Some("edu")
        );
        assert_eq!(
            name(&[("vendor", b"0x1234\n"), ("device", b"0x11e9\n")]),
            None
        );
        // QEMU's PL330 reports revision 2; profiles match revisions away.
        for (id, want) in [
            (&b"00241330\n"[..], Some("pl330")),
            (b"00141804\n", Some("sp804")),
            (b"00141031\n", Some("pl031")),
            (b"00041061\n", Some("pl061")),
            (b"00041011\n", None),
        ] {
            assert_eq!(name(&[("id", id)]).as_deref(), want, "{id:?}");
        }
        for (compat, want) in [
            (&b"arm,pl330\0arm,primecell\0"[..], Some("pl330")),
            (b"vendor,foo\0arm,sp804\0", Some("sp804")),
            (b"arm,pl011\0arm,primecell\0", None),
        ] {
            assert_eq!(
                name(&[("of_node/compatible", compat)]).as_deref(),
                want,
                "{compat:?}"
            );
        }
        // A user profile file takes precedence and adds devices.
        let mut user = ProfileSet::default();
        user.add_toml(
            "[[device]]\nname = \"my-uart\"\ncompatible = [\"arm,pl011\"]\n\
             match = [{ compatible = \"arm,pl011\" }]\n",
            "test.toml",
        )
        .unwrap();
        let dev = f.device(
            "platform",
            "uart",
            None,
            None,
            &[("of_node/compatible", b"arm,pl011\0arm,primecell\0")],
        );
        assert_eq!(match_profile(&user, &dev).unwrap().name, "my-uart");
    }

    #[test]
    fn lists_bound_devices_and_candidates() {
        let (f, _) = host();
        let list = list_devices(&f.root, &ProfileSet::default()).unwrap();
        let names: Vec<&str> = list.iter().map(|d| d.name.as_str()).collect();
        // Sorted by bus (platform, amba, pci); unrelated devices are not listed.
        assert_eq!(
            names,
            [
                "9030000.gpio",
                "ff240000.dma-controller",
                "0000:00:03.0",
                "0000:00:04.0"
            ]
        );

        let edu = &list[2];
        assert_eq!(edu.bus, Bus::Pci);
        assert_eq!(edu.driver.as_deref(), Some("vfio-pci"));
        assert!(edu.bound_to_vfio);
        assert_eq!(edu.iommu_group, Some(5));
        // The root port sharing the group is fine.
        assert!(edu.group_viable, "{:?}", edu.group_blockers);
        assert_eq!(edu.profile.as_deref(), Some("edu"));
        assert_eq!(edu.ident.as_deref(), Some("1234:11e8"));
        assert_eq!(edu.status(), "ready");
        assert!(edu.bind_commands.is_empty());

        let nic = &list[3];
        assert!(nic.bound_to_vfio);
        assert_eq!(nic.iommu_group, Some(7));
        assert!(!nic.group_viable);
        assert_eq!(nic.group_blockers, ["0000:00:04.1 (e1000)"]);
        assert_eq!(nic.profile, None);
        assert_eq!(nic.status(), "group not viable");

        let pl330 = &list[1];
        assert_eq!(pl330.bus, Bus::Amba);
        assert_eq!(pl330.driver.as_deref(), Some("dma-pl330"));
        assert!(!pl330.bound_to_vfio);
        assert_eq!(pl330.profile.as_deref(), Some("pl330"));
        assert_eq!(pl330.ident.as_deref(), Some("periphid 00241330"));
        assert_eq!(pl330.iommu_group, Some(12));
        // Alone in its group: viable once it is bound.
        assert!(pl330.group_viable);
        assert!(pl330.group_blockers.is_empty());
        assert_eq!(pl330.status(), "candidate");
        let r = f.root.display();
        assert_eq!(
            pl330.bind_commands,
            [
                format!(
                    "echo vfio-amba > {r}/bus/amba/devices/ff240000.dma-controller/driver_override"
                ),
                format!("echo ff240000.dma-controller > {r}/bus/amba/drivers/dma-pl330/unbind"),
                format!("echo ff240000.dma-controller > {r}/bus/amba/drivers_probe"),
            ]
        );

        let gpio = &list[0];
        assert_eq!(gpio.bus, Bus::Platform);
        assert_eq!(gpio.driver.as_deref(), Some("vfio-platform"));
        assert_eq!(gpio.profile.as_deref(), Some("pl061"));
        assert_eq!(gpio.ident.as_deref(), Some("arm,pl061,arm,primecell"));
        assert_eq!(gpio.iommu_group, Some(3));
        assert_eq!(gpio.status(), "ready");

        let table = format_list(&list, false);
        assert!(table.starts_with("BUS"), "{table}");
        assert!(
            table.contains("vfio-sidecar bind ff240000.dma-controller"),
            "{table}"
        );
        assert!(
            table.contains("IOMMU group 7 not viable: 0000:00:04.1 (e1000)"),
            "{table}"
        );
        let edu_line = table.lines().find(|l| l.contains("0000:00:03.0")).unwrap();
        for col in ["pci", "vfio-pci", "5", "edu", "1234:11e8", "ready"] {
            assert!(
                edu_line.split_whitespace().any(|c| c == col),
                "{col} in {edu_line}"
            );
        }

        let json: serde_json::Value = serde_json::from_str(&format_list(&list, true)).unwrap();
        assert_eq!(json.as_array().unwrap().len(), 4);
        assert_eq!(json[2]["bus"], "pci");
        assert_eq!(json[2]["profile"], "edu");
        assert_eq!(json[2]["iommu_group"], 5);
        assert_eq!(json[1]["bound_to_vfio"], false);

        let status = vfio_host_status(&f.root, &f.dev());
        assert!(status.available());
        assert_eq!(status.iommu_groups, 4);
        assert!(status.hints.is_empty(), "{:?}", status.hints);
    }

    #[test]
    fn bind_plan_dry_run_and_apply() {
        let (f, pl330) = host();
        let plan = bind_plan("ff240000.dma-controller", &f.root).unwrap();
        let r = &f.root;
        let want = vec![
            SysfsWrite {
                path: r.join("bus/amba/devices/ff240000.dma-controller/driver_override"),
                value: "vfio-amba".into(),
            },
            SysfsWrite {
                path: r.join("bus/amba/drivers/dma-pl330/unbind"),
                value: "ff240000.dma-controller".into(),
            },
            SysfsWrite {
                path: r.join("bus/amba/drivers_probe"),
                value: "ff240000.dma-controller".into(),
            },
        ];
        assert_eq!(plan.writes, want);
        assert_eq!(plan.bus, Bus::Amba);
        assert_eq!(plan.current_driver.as_deref(), Some("dma-pl330"));
        assert_eq!(plan.target_driver, "vfio-amba");
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        // The same plan from a sysfs path.
        let by_path = bind_plan(pl330.to_str().unwrap(), &f.root).unwrap();
        assert_eq!(by_path.writes, want);
        let as_serve_arg = format!("vfio:{}", pl330.display());
        assert_eq!(bind_plan(&as_serve_arg, &f.root).unwrap().writes, want);

        let contents =
            || -> Vec<Vec<u8>> { want.iter().map(|w| fs::read(&w.path).unwrap()).collect() };

        // Dry run: prints, writes nothing.
        let mut out = Vec::new();
        apply(&plan, true, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        for w in &want {
            assert!(text.contains(&w.to_string()), "{text}");
        }
        assert!(contents().iter().all(Vec::is_empty));

        // Real run on the fake tree: writes exactly the plan; no kernel rebinds it.
        let mut out = Vec::new();
        let err = apply(&plan, false, &mut out).unwrap_err();
        assert!(
            matches!(&err, HostError::NotBound { actual, expected: "vfio-amba", .. } if actual == "dma-pl330"),
            "{err}"
        );
        assert_eq!(
            contents(),
            [
                &b"vfio-amba"[..],
                b"ff240000.dma-controller",
                b"ff240000.dma-controller"
            ]
        );
        // Files outside the plan are untouched.
        assert!(fs::read(r.join("bus/pci/drivers_probe"))
            .unwrap()
            .is_empty());
        assert!(fs::read(r.join("bus/amba/drivers/dma-pl330/bind"))
            .unwrap()
            .is_empty());

        // With the "kernel" having rebound it, apply succeeds and says so.
        f.rebind(&pl330, "amba", "vfio-amba");
        let mut out = Vec::new();
        apply(&plan, false, &mut out).unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("ff240000.dma-controller is bound to vfio-amba"));
        // Now bound: nothing to do.
        assert!(bind_plan("ff240000.dma-controller", &f.root)
            .unwrap()
            .writes
            .is_empty());
    }

    #[test]
    fn bind_plan_pci_platform_and_errors() {
        let (f, _) = host();
        let r = &f.root;
        // PCI sibling bound to a host driver: plan for vfio-pci.
        let plan = bind_plan("0000:00:04.1", r).unwrap();
        assert_eq!(
            plan.writes,
            vec![
                SysfsWrite {
                    path: r.join("bus/pci/devices/0000:00:04.1/driver_override"),
                    value: "vfio-pci".into()
                },
                SysfsWrite {
                    path: r.join("bus/pci/drivers/e1000/unbind"),
                    value: "0000:00:04.1".into()
                },
                SysfsWrite {
                    path: r.join("bus/pci/drivers_probe"),
                    value: "0000:00:04.1".into()
                },
            ]
        );
        // A driverless platform device: no unbind.
        f.device(
            "platform",
            "9040000.timer",
            None,
            Some(9),
            &[("of_node/compatible", b"arm,sp804\0arm,primecell\0")],
        );
        let plan = bind_plan("9040000.timer", r).unwrap();
        assert_eq!(
            plan.writes,
            vec![
                SysfsWrite {
                    path: r.join("bus/platform/devices/9040000.timer/driver_override"),
                    value: "vfio-platform".into()
                },
                SysfsWrite {
                    path: r.join("bus/platform/drivers_probe"),
                    value: "9040000.timer".into()
                },
            ]
        );
        // A device whose group holds another device on a host driver: warned.
        f.device(
            "pci",
            "0000:00:05.0",
            Some("ahci"),
            Some(7),
            &[("vendor", b"0x1234\n"), ("device", b"0x11e8\n")],
        );
        let plan = bind_plan("0000:00:05.0", r).unwrap();
        assert_eq!(plan.warnings.len(), 1);
        assert!(
            plan.warnings[0].contains("0000:00:04.1 (e1000)"),
            "{:?}",
            plan.warnings
        );
        assert!(
            !plan.warnings[0].contains("0000:00:05.0"),
            "{:?}",
            plan.warnings
        );
        assert!(plan.to_string().starts_with("# warning: IOMMU group 7"));

        let err = bind_plan("nonexistent", r).unwrap_err();
        assert!(matches!(err, HostError::NoSuchDevice(_)), "{err}");

        // vfio-pci not loaded: the error says which modprobe to run.
        fs::remove_dir_all(r.join("bus/pci/drivers/vfio-pci")).unwrap();
        let err = bind_plan("0000:00:04.1", r).unwrap_err();
        assert!(err.to_string().contains("modprobe vfio-pci"), "{err}");
        // Candidates then show the modprobe first.
        let list = list_devices(r, &ProfileSet::default()).unwrap();
        let edu2 = list.iter().find(|d| d.name == "0000:00:05.0").unwrap();
        assert_eq!(edu2.bind_commands[0], "modprobe vfio-pci");
    }

    #[test]
    fn apply_reports_missing_files() {
        let (f, _) = host();
        let plan = BindPlan {
            bus: Bus::Pci,
            name: "x".into(),
            device_path: f.root.join("bus/pci/devices/x"),
            current_driver: None,
            target_driver: "vfio-pci",
            writes: vec![SysfsWrite {
                path: f.root.join("bus/pci/devices/x/driver_override"),
                value: "vfio-pci".into(),
            }],
            warnings: vec![],
        };
        let err = apply(&plan, false, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, HostError::WriteFailed { .. }), "{err}");
        assert!(err.to_string().contains("driver_override"), "{err}");
        // apply never creates sysfs files.
        assert!(!f.root.join("bus/pci/devices/x").exists());
    }

    #[test]
    fn no_vfio_host() {
        let f = Fake::new();
        f.device(
            "amba",
            "ff240000.dma-controller",
            Some("dma-pl330"),
            None,
            &[("id", b"00041330\n")],
        );
        let status = vfio_host_status(&f.root, &f.dev());
        assert!(!status.available());
        assert_eq!(status.iommu_groups, 0);
        assert_eq!(
            status.drivers,
            [
                ("vfio-platform", false),
                ("vfio-amba", false),
                ("vfio-pci", false)
            ]
        );
        let all = status.hints.join("\n");
        for want in [
            "intel_iommu=on",
            "amd_iommu=off",
            "SMMU",
            "modprobe vfio-pci",
            "modprobe vfio-platform",
            "reset_required=0",
            "vfio-amba",
            "deprecated",
        ] {
            assert!(all.contains(want), "hints lack {want:?}: {all}");
        }
        let text = format_status(&status, false);
        assert!(text.starts_with("VFIO available: no"), "{text}");
        // The candidate is still listed, without a group, with the modprobe first.
        let list = list_devices(&f.root, &ProfileSet::default()).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].iommu_group, None);
        assert!(!list[0].group_viable);
        assert_eq!(list[0].bind_commands[0], "modprobe vfio-amba");
        let err = bind_plan("ff240000.dma-controller", &f.root).unwrap_err();
        assert!(err.to_string().contains("modprobe vfio-amba"), "{err}");

        // A host with the IOMMU and VFIO: no hints.
        f.dev_vfio_container();
        assert!(vfio_host_status(&f.root, &f.dev()).available());

        assert!(matches!(
            list_devices(&f.root.join("missing"), &ProfileSet::default()),
            Err(HostError::NoSysfs(_))
        ));
    }

    #[test]
    fn real_sysfs_does_not_fail() {
        // Whatever this machine has, scanning it must work (and list only devices
        // of interest).
        let sys = Path::new("/sys");
        if !sys.join("bus").is_dir() {
            eprintln!("skipped: no /sys/bus here");
            return;
        }
        let list = list_devices(sys, &ProfileSet::default()).unwrap();
        assert!(list.iter().all(|d| d.bound_to_vfio || d.profile.is_some()));
        let _ = vfio_host_status(sys, Path::new("/dev"));
    }
}
