//! Test support, not part of the API: a fake sysfs tree for the host
//! discovery and binding code ([`crate::host`]), shared by this crate's unit
//! tests and the cross-process tests (`vfio-sidecar-tests`), which run
//! `vfio-sidecar list`/`bind --sysfs` against it.
//!
//! Everything here panics on failure (it only ever runs in tests).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A fake sysfs tree in a temporary directory (removed on drop): the
/// platform, AMBA and PCI buses (`devices/`, `drivers/`, `drivers_probe`),
/// `kernel/iommu_groups`, `module` and `devices`, plus an empty `/dev`
/// stand-in beside it ([`FakeSysfs::dev`]).
#[derive(Debug)]
pub struct FakeSysfs {
    /// The sysfs root (pass as `--sysfs`).
    pub root: PathBuf,
    base: PathBuf,
}

impl Drop for FakeSysfs {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.base);
    }
}

fn mkdir(p: &Path) {
    fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
}

fn touch(p: &Path, content: &[u8]) {
    fs::write(p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

fn link(target: &Path, at: &Path) {
    symlink(target, at).unwrap_or_else(|e| panic!("symlink {}: {e}", at.display()));
}

impl Default for FakeSysfs {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeSysfs {
    /// An empty host: no module, no driver, no device, no IOMMU group.
    pub fn new() -> FakeSysfs {
        static N: AtomicU32 = AtomicU32::new(0);
        let base = std::env::temp_dir().join(format!(
            "vfio-sidecar-sysfs-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&base);
        let root = base.join("sys");
        for bus in ["platform", "amba", "pci"] {
            let b = root.join("bus").join(bus);
            mkdir(&b.join("devices"));
            mkdir(&b.join("drivers"));
            touch(&b.join("drivers_probe"), b"");
        }
        for d in ["kernel/iommu_groups", "module", "devices"] {
            mkdir(&root.join(d));
        }
        mkdir(&base.join("dev"));
        FakeSysfs { root, base }
    }

    /// The `/dev` stand-in (pass as `--dev`); empty unless
    /// [`FakeSysfs::dev_vfio_container`] was called.
    pub fn dev(&self) -> PathBuf {
        self.base.join("dev")
    }

    /// Creates `/dev/vfio/vfio` (the legacy container node).
    pub fn dev_vfio_container(&self) {
        let d = self.dev().join("vfio");
        mkdir(&d);
        touch(&d.join("vfio"), b"");
    }

    /// A loaded module (`module/NAME`).
    pub fn module(&self, name: &str) {
        mkdir(&self.root.join("module").join(name));
    }

    /// A registered driver (`bus/BUS/drivers/DRV` with `bind` and `unbind`).
    pub fn driver(&self, bus: &str, drv: &str) {
        let d = self.root.join("bus").join(bus).join("drivers").join(drv);
        mkdir(&d);
        touch(&d.join("bind"), b"");
        touch(&d.join("unbind"), b"");
    }

    /// The `vfio` module and the three VFIO drivers (vfio-pci, vfio-amba,
    /// vfio-platform) registered.
    pub fn vfio_drivers(&self) {
        self.module("vfio");
        for (bus, drv) in [
            ("pci", "vfio-pci"),
            ("amba", "vfio-amba"),
            ("platform", "vfio-platform"),
        ] {
            self.driver(bus, drv);
        }
    }

    /// A device `NAME` on `BUS` (under `devices/BUS/NAME`, linked from
    /// `bus/BUS/devices`), bound to `driver` (registered if new), in IOMMU
    /// group `group`, with extra attribute `files` (path, content); returns
    /// its real path.
    pub fn device(
        &self,
        bus: &str,
        name: &str,
        driver: Option<&str>,
        group: Option<u32>,
        files: &[(&str, &[u8])],
    ) -> PathBuf {
        let real = self.root.join("devices").join(bus).join(name);
        mkdir(&real);
        touch(&real.join("driver_override"), b"");
        link(&self.root.join("bus").join(bus), &real.join("subsystem"));
        for (f, content) in files {
            let p = real.join(f);
            if let Some(parent) = p.parent() {
                mkdir(parent);
            }
            touch(&p, content);
        }
        if let Some(d) = driver {
            self.driver(bus, d);
            link(
                &self.root.join("bus").join(bus).join("drivers").join(d),
                &real.join("driver"),
            );
        }
        if let Some(g) = group {
            let gdir = self.root.join("kernel/iommu_groups").join(g.to_string());
            mkdir(&gdir.join("devices"));
            link(&gdir, &real.join("iommu_group"));
            link(&real, &gdir.join("devices").join(name));
        }
        link(
            &real,
            &self.root.join("bus").join(bus).join("devices").join(name),
        );
        real
    }

    /// What the kernel does after `drivers_probe`: the device at `real` is
    /// now bound to `drv`.
    pub fn rebind(&self, real: &Path, bus: &str, drv: &str) {
        let _ = fs::remove_file(real.join("driver"));
        link(
            &self.root.join("bus").join(bus).join("drivers").join(drv),
            &real.join("driver"),
        );
    }

    /// The usual test host's devices: an edu (1234:11e8) on vfio-pci in
    /// group 5 with a root port on pcieport (a viable group); a NIC on
    /// vfio-pci in group 7 whose sibling is on e1000 (not viable); a PL330
    /// candidate on dma-pl330 alone in group 12. Returns the PL330's path.
    pub fn typical_devices(&self) -> PathBuf {
        for (name, driver, group, vendor, device) in [
            ("0000:00:03.0", "vfio-pci", 5, "0x1234", "0x11e8"),
            ("0000:00:1c.0", "pcieport", 5, "0x8086", "0x2922"),
            ("0000:00:04.0", "vfio-pci", 7, "0x8086", "0x100e"),
            ("0000:00:04.1", "e1000", 7, "0x8086", "0x100f"),
        ] {
            self.device(
                "pci",
                name,
                Some(driver),
                Some(group),
                &[
                    ("vendor", format!("{vendor}\n").as_bytes()),
                    ("device", format!("{device}\n").as_bytes()),
                ],
            );
        }
        self.device(
            "amba",
            "ff240000.dma-controller",
            Some("dma-pl330"),
            Some(12),
            &[
                ("id", b"00241330\n"),
                ("of_node/compatible", b"arm,pl330\0arm,primecell\0"),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_links_and_cleanup() {
        let f = FakeSysfs::new();
        let base = f.root.parent().map(Path::to_path_buf).unwrap_or_default();
        f.vfio_drivers();
        f.dev_vfio_container();
        assert!(f.dev().join("vfio/vfio").is_file());
        assert!(f.root.join("module/vfio").is_dir());
        let pl330 = f.typical_devices();
        let group = fs::read_link(pl330.join("iommu_group")).unwrap_or_default();
        assert!(group.ends_with("kernel/iommu_groups/12"), "{group:?}");
        let by_bus = f.root.join("bus/amba/devices/ff240000.dma-controller");
        assert_eq!(
            fs::canonicalize(&by_bus).ok(),
            fs::canonicalize(&pl330).ok()
        );
        assert!(pl330.join("driver/unbind").is_file());
        f.rebind(&pl330, "amba", "vfio-amba");
        let drv = fs::read_link(pl330.join("driver")).unwrap_or_default();
        assert!(drv.ends_with("drivers/vfio-amba"), "{drv:?}");
        drop(f);
        assert!(!base.exists(), "tree removed on drop");
    }
}
