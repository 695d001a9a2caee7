//! Sysfs inspection of a device before it is opened: which bus, which driver it
//! is bound to, which IOMMU group, who else is in that group, and names for
//! platform regions. Every function takes the sysfs root implicitly through the
//! paths it is given, so the unit tests run against a fake tree in a tempdir.

use std::path::{Path, PathBuf};

/// What the host is using `dev` for that taking it away would break: a network
/// interface that is up (`net/<if>/flags` has IFF_UP) or a block device that is
/// mounted (`block/<disk>` named in `mounts`, the text of /proc/self/mounts).
/// Looks through the device's own subdirectories (virtio and similar put the
/// class device one level below), never following symlinks.
pub fn host_use(dev: &Path, mounts: &str) -> Option<String> {
    let mut dirs = vec![(dev.to_path_buf(), 0u32)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if !is_dir {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let found = match name.as_str() {
                "net" => interface_up(&path),
                "block" => mounted_disk(&path, mounts),
                _ => None,
            };
            if found.is_some() {
                return found;
            }
            if depth < 3 {
                dirs.push((path, depth + 1));
            }
        }
    }
    None
}

fn child_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn interface_up(net: &Path) -> Option<String> {
    child_names(net).into_iter().find_map(|iface| {
        let flags = std::fs::read_to_string(net.join(&iface).join("flags")).ok()?;
        let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).ok()?;
        (flags & 1 != 0).then(|| format!("network interface {iface} is up"))
    })
}

fn mounted_disk(block: &Path, mounts: &str) -> Option<String> {
    child_names(block).into_iter().find_map(|disk| {
        let dev = format!("/dev/{disk}");
        mounts
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .any(|src| src.starts_with(&dev))
            .then(|| format!("block device {disk} is mounted"))
    })
}

/// Drivers that hand a device to VFIO through the group interface.
pub const VFIO_DRIVERS: [&str; 3] = ["vfio-pci", "vfio-platform", "vfio-amba"];

/// Bus of a device, from its `subsystem` link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    /// `/sys/bus/pci`.
    Pci,
    /// `/sys/bus/platform`.
    Platform,
    /// `/sys/bus/amba`.
    Amba,
    /// Something else (named).
    Other,
}

impl Bus {
    /// The bus's name in sysfs (`pci`, `platform`, `amba`; `other`).
    pub fn name(self) -> &'static str {
        match self {
            Bus::Pci => "pci",
            Bus::Platform => "platform",
            Bus::Amba => "amba",
            Bus::Other => "other",
        }
    }

    /// The VFIO driver for devices on this bus.
    pub fn vfio_driver(self) -> &'static str {
        match self {
            Bus::Pci | Bus::Other => "vfio-pci",
            Bus::Platform => "vfio-platform",
            Bus::Amba => "vfio-amba",
        }
    }
}

fn link_name(p: &Path) -> Option<String> {
    let target = std::fs::read_link(p).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// The bus a device sits on (`<dev>/subsystem` → `.../bus/<name>`).
pub fn bus(dev: &Path) -> Bus {
    match link_name(&dev.join("subsystem")).as_deref() {
        Some("pci") => Bus::Pci,
        Some("platform") => Bus::Platform,
        Some("amba") => Bus::Amba,
        _ => Bus::Other,
    }
}

/// Name of the driver the device is bound to (`<dev>/driver` link), if any.
pub fn driver(dev: &Path) -> Option<String> {
    link_name(&dev.join("driver"))
}

/// Is `driver` one that exposes the device through VFIO groups? Besides the
/// three generic drivers, vendor variant drivers (`mlx5_vfio_pci`, ...) count.
pub fn is_vfio_driver(driver: &str) -> bool {
    VFIO_DRIVERS.contains(&driver) || driver.replace('_', "-").ends_with("vfio-pci")
}

/// The IOMMU group number (`<dev>/iommu_group` → `.../iommu_groups/<N>`).
pub fn iommu_group(dev: &Path) -> Option<u32> {
    link_name(&dev.join("iommu_group"))?.parse().ok()
}

/// The devices in the same IOMMU group (`<dev>/iommu_group/devices/*`) with the
/// driver each is bound to (`None` = unbound), sorted by name.
pub fn group_members(dev: &Path) -> Vec<(String, Option<String>)> {
    let dir = dev.join("iommu_group").join("devices");
    let mut v: Vec<(String, Option<String>)> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    (name, driver(&e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Group members that keep the group from being viable: bound to a driver that
/// is neither a VFIO driver nor `pcieport` (bridges are allowed by the kernel).
pub fn blocking_members(dev: &Path) -> Vec<(String, Option<String>)> {
    group_members(dev)
        .into_iter()
        .filter(|(_, drv)| match drv.as_deref() {
            None => false,
            Some(d) => !is_vfio_driver(d) && d != "pcieport",
        })
        .collect()
}

/// The device name VFIO knows it by (the last path component: `0000:00:03.0`,
/// `2c0a0000.dma`, ...).
pub fn device_name(dev: &Path) -> Option<String> {
    Some(dev.file_name()?.to_string_lossy().into_owned())
}

/// Resolves a user-given path: canonicalises symlinks (`/sys/bus/pci/devices/X`
/// is a link into `/sys/devices/...`).
pub fn resolve(dev: &Path) -> std::io::Result<PathBuf> {
    std::fs::canonicalize(dev)
}

/// Region names of a platform/AMBA device from its device-tree node
/// (`of_node/reg-names`, NUL-separated), in resource order; empty if absent.
pub fn of_reg_names(dev: &Path) -> Vec<String> {
    std::fs::read(dev.join("of_node").join("reg-names"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// First `compatible` string of the device-tree node, if any.
pub fn of_compatible(dev: &Path) -> Option<String> {
    let b = std::fs::read(dev.join("of_node").join("compatible")).ok()?;
    let first = b.split(|&c| c == 0).next()?;
    (!first.is_empty()).then(|| String::from_utf8_lossy(first).into_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A unique scratch directory, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);
    impl TempDir {
        pub(crate) fn new(tag: &str) -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "vfio-sidecar-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Builds a fake sysfs: /sys/devices/pci0000:00/<bdf> with subsystem, driver and
    /// iommu_group links, the group's devices/ listing, and the bus/pci/devices link.
    pub(crate) fn fake_pci(root: &Path, bdf: &str, drv: Option<&str>, group: u32) -> PathBuf {
        let dev = root.join("devices/pci0000:00").join(bdf);
        std::fs::create_dir_all(&dev).unwrap();
        for d in ["bus/pci/drivers/vfio-pci", "bus/pci/drivers/e1000e"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let _ = symlink(root.join("bus/pci"), dev.join("subsystem"));
        if let Some(d) = drv {
            std::fs::create_dir_all(root.join("bus/pci/drivers").join(d)).unwrap();
            symlink(root.join("bus/pci/drivers").join(d), dev.join("driver")).unwrap();
        }
        let g = root.join("kernel/iommu_groups").join(group.to_string());
        std::fs::create_dir_all(g.join("devices")).unwrap();
        symlink(&g, dev.join("iommu_group")).unwrap();
        symlink(&dev, g.join("devices").join(bdf)).unwrap();
        std::fs::create_dir_all(root.join("bus/pci/devices")).unwrap();
        symlink(&dev, root.join("bus/pci/devices").join(bdf)).unwrap();
        std::fs::write(dev.join("vendor"), "0x1234\n").unwrap();
        std::fs::write(dev.join("device"), "0x11e8\n").unwrap();
        dev
    }

    #[test]
    fn host_use_finds_an_up_interface_and_a_mounted_disk() {
        let t = TempDir::new("hostuse");
        let dev = fake_pci(&t.0, "0000:00:03.0", Some("virtio-pci"), 3);
        assert_eq!(host_use(&dev, ""), None);
        let net = dev.join("virtio0/net/eth0");
        std::fs::create_dir_all(&net).unwrap();
        std::fs::write(net.join("flags"), "0x1002\n").unwrap();
        assert_eq!(host_use(&dev, ""), None, "interface down");
        std::fs::write(net.join("flags"), "0x1003\n").unwrap();
        assert_eq!(
            host_use(&dev, "").as_deref(),
            Some("network interface eth0 is up")
        );
        let dev = fake_pci(&t.0, "0000:00:04.0", Some("virtio-pci"), 4);
        std::fs::create_dir_all(dev.join("virtio1/block/vda")).unwrap();
        assert_eq!(host_use(&dev, "/dev/sda1 / ext4 rw 0 0\n"), None);
        assert_eq!(
            host_use(&dev, "/dev/vda1 / ext4 rw 0 0\n").as_deref(),
            Some("block device vda is mounted")
        );
    }

    #[test]
    fn driver_group_and_bus_detection() {
        let t = TempDir::new("sysfs");
        let a = fake_pci(&t.0, "0000:00:03.0", Some("vfio-pci"), 7);
        let b = fake_pci(&t.0, "0000:00:04.0", Some("e1000e"), 7);
        let c = fake_pci(&t.0, "0000:00:05.0", None, 8);
        let via_bus = t.0.join("bus/pci/devices/0000:00:03.0");
        let r = resolve(&via_bus).unwrap();
        assert_eq!(r, resolve(&a).unwrap());
        assert_eq!(bus(&r), Bus::Pci);
        assert_eq!(driver(&a).as_deref(), Some("vfio-pci"));
        assert_eq!(driver(&b).as_deref(), Some("e1000e"));
        assert_eq!(driver(&c), None);
        assert_eq!(iommu_group(&a), Some(7));
        assert_eq!(iommu_group(&c), Some(8));
        assert_eq!(device_name(&r).as_deref(), Some("0000:00:03.0"));
        assert_eq!(
            group_members(&a),
            vec![
                ("0000:00:03.0".into(), Some("vfio-pci".into())),
                ("0000:00:04.0".into(), Some("e1000e".into()))
            ]
        );
        assert_eq!(
            blocking_members(&a),
            vec![("0000:00:04.0".into(), Some("e1000e".into()))]
        );
        assert!(blocking_members(&c).is_empty());
        // no iommu_group link at all (no IOMMU)
        std::fs::remove_file(c.join("iommu_group")).unwrap();
        assert_eq!(iommu_group(&c), None);
    }

    #[test]
    fn vfio_driver_names() {
        for d in ["vfio-pci", "vfio-platform", "vfio-amba", "mlx5_vfio_pci"] {
            assert!(is_vfio_driver(d), "{d}");
        }
        for d in ["e1000e", "pl330", "rtc-pl031", "pcieport"] {
            assert!(!is_vfio_driver(d), "{d}");
        }
        assert_eq!(Bus::Amba.vfio_driver(), "vfio-amba");
        assert_eq!(Bus::Platform.vfio_driver(), "vfio-platform");
    }

    #[test]
    fn platform_of_node_names() {
        let t = TempDir::new("of");
        let dev = t.0.join("devices/platform/2c0a0000.dma");
        std::fs::create_dir_all(dev.join("of_node")).unwrap();
        std::fs::create_dir_all(t.0.join("bus/amba")).unwrap();
        symlink(t.0.join("bus/amba"), dev.join("subsystem")).unwrap();
        assert_eq!(bus(&dev), Bus::Amba);
        assert!(of_reg_names(&dev).is_empty());
        std::fs::write(dev.join("of_node/reg-names"), b"regs\0irqctl\0").unwrap();
        std::fs::write(
            dev.join("of_node/compatible"),
            b"arm,pl330\0arm,primecell\0",
        )
        .unwrap();
        assert_eq!(of_reg_names(&dev), vec!["regs", "irqctl"]);
        assert_eq!(of_compatible(&dev).as_deref(), Some("arm,pl330"));
    }
}
