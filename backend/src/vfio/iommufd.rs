//! The iommufd path: `/dev/iommu` plus the VFIO device cdev
//! (`/dev/vfio/devices/vfioN`), instead of the legacy container + group.
//!
//! Opening ([`open_device`]): open the cdev (found from `<sysfs dev>/vfio-dev/vfioN`),
//! `VFIO_DEVICE_BIND_IOMMUFD` it to a fresh `/dev/iommu` fd, `IOMMU_IOAS_ALLOC` an I/O
//! address space and `VFIO_DEVICE_ATTACH_IOMMUFD_PT` the device to it (the kernel then
//! allocates a paging domain for the device's IOMMU). DMA is
//! `IOMMU_IOAS_MAP(FIXED_IOVA | READABLE | WRITEABLE)` at the client's IOVA and
//! `IOMMU_IOAS_UNMAP`. Everything else (regions, IRQs, reset) is the same VFIO device
//! ioctls on the cdev fd, so the rest of the vfio module does not care which path
//! opened the device.
//!
//! Selection ([`choose`], [`IommuBackend`]): `Auto` takes iommufd when `/dev/iommu`
//! exists and the device has a vfio cdev, else the legacy container (kernels before
//! 6.6, or without `CONFIG_IOMMUFD` / `CONFIG_VFIO_DEVICE_CDEV`, e.g. every Debian
//! kernel up to 7.2 at the time of writing). `Auto` also falls back to the container
//! when opening `/dev/iommu` or the cdev is denied. The choice is logged at info level
//! (`vfio: IOMMU backend ...`), and `VfioDevice::iommu_backend` reports it.
//!
//! Structs: `iommufd-bindings` (`iommu_ioas_*`) and `vfio-bindings`
//! (`vfio_device_bind_iommufd`, `vfio_device_attach_iommufd_pt`). The VFIO structs in
//! vfio-bindings 0.7 carry fields newer kernels added (`token_uuid_ptr`, `pasid`); we
//! send `argsz` = the original size (up to `out_devid` / `pt_id`), which every kernel
//! with the cdev accepts, and leave the newer fields zero.

use std::fs::File;
use std::path::{Path, PathBuf};

use iommufd_bindings::{
    iommu_ioas_alloc, iommu_ioas_map, iommu_ioas_unmap,
    iommufd_ioas_map_flags_IOMMU_IOAS_MAP_FIXED_IOVA as MAP_FIXED_IOVA,
    iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE as MAP_READABLE,
    iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE as MAP_WRITEABLE, IOMMUFD_CMD_IOAS_ALLOC,
    IOMMUFD_CMD_IOAS_MAP, IOMMUFD_CMD_IOAS_UNMAP, IOMMUFD_TYPE,
};
use thiserror::Error;
use vfio_bindings::bindings::vfio::{
    vfio_device_attach_iommufd_pt, vfio_device_bind_iommufd, VFIO_BASE, VFIO_DMA_MAP_FLAG_READ,
    VFIO_DMA_MAP_FLAG_WRITE, VFIO_TYPE,
};
use vmm_sys_util::ioctl::ioctl_with_mut_ref;
use vmm_sys_util::ioctl_io_nr;

use super::{open_node, sysfs, VfioError};

ioctl_io_nr!(
    IOMMU_IOAS_ALLOC,
    IOMMUFD_TYPE as u32,
    IOMMUFD_CMD_IOAS_ALLOC
);
ioctl_io_nr!(IOMMU_IOAS_MAP, IOMMUFD_TYPE as u32, IOMMUFD_CMD_IOAS_MAP);
ioctl_io_nr!(
    IOMMU_IOAS_UNMAP,
    IOMMUFD_TYPE as u32,
    IOMMUFD_CMD_IOAS_UNMAP
);
ioctl_io_nr!(VFIO_DEVICE_BIND_IOMMUFD, VFIO_TYPE as u32, VFIO_BASE + 18);
ioctl_io_nr!(
    VFIO_DEVICE_ATTACH_IOMMUFD_PT,
    VFIO_TYPE as u32,
    VFIO_BASE + 19
);

/// `argsz` of `VFIO_DEVICE_BIND_IOMMUFD`: `argsz, flags, iommufd, out_devid` (the
/// size the ioctl was introduced with in 6.6).
pub const BIND_ARGSZ: u32 = 16;
/// `argsz` of `VFIO_DEVICE_ATTACH_IOMMUFD_PT`: `argsz, flags, pt_id`.
pub const ATTACH_ARGSZ: u32 = 12;

/// Which IOMMU interface [`super::open`] uses (`VfioOptions::iommu`; the serve CLI's
/// `--iommu auto|container|iommufd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum IommuBackend {
    /// iommufd when `/dev/iommu` exists and the device has a vfio cdev
    /// (`<sysfs dev>/vfio-dev/vfioN`), else the legacy container. Also the legacy
    /// container when opening `/dev/iommu` or the cdev is denied (permissions set up
    /// for the legacy nodes only), with a warning.
    #[default]
    Auto,
    /// Legacy VFIO container + group (`/dev/vfio/vfio`, `/dev/vfio/<group>`, type1v2).
    Container,
    /// `/dev/iommu` + the device cdev (`/dev/vfio/devices/vfioN`); an error when the
    /// kernel lacks it.
    Iommufd,
}

impl std::fmt::Display for IommuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IommuBackend::Auto => "auto",
            IommuBackend::Container => "container",
            IommuBackend::Iommufd => "iommufd",
        })
    }
}

impl std::str::FromStr for IommuBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IommuBackend::Auto),
            "container" => Ok(IommuBackend::Container),
            "iommufd" => Ok(IommuBackend::Iommufd),
            _ => Err(format!(
                "unknown IOMMU backend {s:?} (expected auto, container or iommufd)"
            )),
        }
    }
}

/// Why the iommufd path cannot be used. Every message says what to do.
#[derive(Debug, Error)]
pub enum IommufdError {
    /// `--iommu iommufd` on a kernel without `/dev/iommu`.
    #[error("{0} does not exist: the kernel lacks CONFIG_IOMMUFD (or the iommufd module is not loaded: modprobe iommufd); use --iommu container")]
    NoIommufd(PathBuf),
    /// `/dev/iommu` exists but the device has no cdev.
    #[error("{iommu} exists but {dev} has no vfio cdev ({dev}/vfio-dev/vfioN): the kernel lacks CONFIG_VFIO_DEVICE_CDEV; use --iommu container")]
    NoCdev {
        /// `/dev/iommu`.
        iommu: PathBuf,
        /// The device's sysfs path.
        dev: PathBuf,
    },
    /// The cdev (or the device behind it) is in use.
    #[error("{node}: device busy ({source}): it is already open, through its group /dev/vfio/{group} (legacy container) or another cdev user; close that first")]
    Busy {
        /// The cdev node.
        node: PathBuf,
        /// The IOMMU group number.
        group: u32,
        /// The error.
        source: std::io::Error,
    },
}

/// The outcome of [`choose`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Use the legacy container + group.
    Container,
    /// Use iommufd with this cdev node (`<dev_root>/vfio/devices/vfioN`).
    Iommufd {
        /// The device cdev node.
        cdev: PathBuf,
        /// `<dev_root>/iommu`.
        iommu: PathBuf,
    },
}

/// The name of the device's VFIO cdev (`vfioN`) from `<dev>/vfio-dev/`, if the kernel
/// created one (`CONFIG_VFIO_DEVICE_CDEV`; the device is bound to a VFIO driver).
///
/// Since 6.1 every VFIO device has a `vfio-dev/vfioN` sysfs entry, with or without
/// the cdev; only with the cdev does it carry a device number (`vfioN/dev`,
/// `major:minor`), so that file is what decides (seen on Debian's 6.1 kernel:
/// `vfio-dev/vfio0` without `dev`, and no `/dev/vfio/devices`).
pub fn vfio_cdev(dev: &Path) -> Option<String> {
    let dir = dev.join("vfio-dev");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.strip_prefix("vfio")
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|n| dir.join(n).join("dev").is_file())
        .collect();
    names.sort();
    names.into_iter().next()
}

/// Picks the IOMMU interface for the device at sysfs path `dev` (resolved), looking for
/// `iommu` and `vfio/devices/` under `dev_root` (`/dev`; a tempdir in the tests).
pub fn choose(want: IommuBackend, dev: &Path, dev_root: &Path) -> Result<Choice, IommufdError> {
    let iommu = dev_root.join("iommu");
    let have_iommufd = iommu.exists();
    let cdev = vfio_cdev(dev);
    let iommufd = |c: String| Choice::Iommufd {
        cdev: dev_root.join("vfio").join("devices").join(c),
        iommu: iommu.clone(),
    };
    let choice = match (want, have_iommufd, cdev) {
        (IommuBackend::Container, ..) => Choice::Container,
        (IommuBackend::Iommufd, false, _) => return Err(IommufdError::NoIommufd(iommu)),
        (IommuBackend::Iommufd, true, None) => {
            return Err(IommufdError::NoCdev {
                iommu,
                dev: dev.to_path_buf(),
            })
        }
        (_, true, Some(c)) => iommufd(c),
        (IommuBackend::Auto, true, None) => {
            log::info!(
                "vfio: {} exists but {} has no vfio cdev (kernel without CONFIG_VFIO_DEVICE_CDEV): using the legacy container",
                iommu.display(),
                dev.display()
            );
            Choice::Container
        }
        (IommuBackend::Auto, false, _) => Choice::Container,
    };
    log::info!(
        "vfio: IOMMU backend {} (asked for {want}): {}",
        match &choice {
            Choice::Container => "container",
            Choice::Iommufd { .. } => "iommufd",
        },
        match &choice {
            Choice::Container => "legacy container + group, type1v2".to_string(),
            Choice::Iommufd { cdev, iommu } => format!("{} + {}", iommu.display(), cdev.display()),
        }
    );
    Ok(choice)
}

fn errno_result(ret: i32) -> std::io::Result<i32> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn ioctl_err(op: &'static str) -> impl FnOnce(std::io::Error) -> VfioError {
    move |source| VfioError::Ioctl { op, source }
}

/// An iommufd context with the one IOAS the device is attached to. Dropping it
/// closes `/dev/iommu`, which destroys the IOAS (the device fd must be closed
/// first: `VfioDevice` declares it first).
#[derive(Debug)]
pub struct Iommufd {
    fd: File,
    ioas: u32,
    devid: u32,
}

impl Iommufd {
    /// The IOAS id the device is attached to.
    pub fn ioas(&self) -> u32 {
        self.ioas
    }

    /// The device id iommufd assigned at bind.
    pub fn devid(&self) -> u32 {
        self.devid
    }

    /// `IOMMU_IOAS_MAP` with `FIXED_IOVA`: maps `[vaddr, vaddr + size)` at `iova`.
    /// `flags` are the IOAS map flags from [`ioas_map_flags`].
    ///
    /// # Safety
    /// `[vaddr, vaddr + size)` must stay mapped in this process until it is unmapped
    /// from the IOAS (the device reads/writes it at any time); no Rust reference to
    /// that memory may be relied upon for its contents meanwhile.
    pub unsafe fn map(&self, iova: u64, size: u64, vaddr: u64, flags: u32) -> std::io::Result<()> {
        let mut map = iommu_ioas_map {
            size: std::mem::size_of::<iommu_ioas_map>() as u32,
            flags,
            ioas_id: self.ioas,
            __reserved: 0,
            user_va: vaddr,
            length: size,
            iova,
        };
        // SAFETY: the kernel reads `map` and copies it back with `iova` filled in
        // (unchanged with FIXED_IOVA), within its `size`; `map` is ours and mutable.
        // Pinning the user range is covered by the caller's contract.
        errno_result(unsafe { ioctl_with_mut_ref(&self.fd, IOMMU_IOAS_MAP(), &mut map) })?;
        if map.iova != iova {
            // Cannot happen with FIXED_IOVA; do not leave a stray mapping if it does.
            let _ = self.unmap(map.iova, size);
            return Err(std::io::Error::other(format!(
                "the kernel placed the mapping at {:#x}, not {iova:#x}",
                map.iova
            )));
        }
        Ok(())
    }

    /// `IOMMU_IOAS_UNMAP` of `[iova, iova + size)`; an error unless exactly `size`
    /// bytes were unmapped (iommufd cannot split a mapping, like type1v2).
    pub fn unmap(&self, iova: u64, size: u64) -> std::io::Result<()> {
        let mut un = iommu_ioas_unmap {
            size: std::mem::size_of::<iommu_ioas_unmap>() as u32,
            ioas_id: self.ioas,
            iova,
            length: size,
        };
        // SAFETY: the kernel reads and writes `un` (the unmapped length), which we own.
        errno_result(unsafe { ioctl_with_mut_ref(&self.fd, IOMMU_IOAS_UNMAP(), &mut un) })?;
        if un.length != size {
            return Err(std::io::Error::other(format!(
                "unmapped {:#x} bytes instead of {size:#x}",
                un.length
            )));
        }
        Ok(())
    }
}

/// IOAS map flags for type1 `VFIO_DMA_MAP_FLAG_*` flags (from `sys::dma_map_flags`,
/// which already folds exec into READ): always `FIXED_IOVA` (the client chose the
/// IOVA), plus `READABLE` / `WRITEABLE`. Note the bit values differ from type1
/// (`WRITEABLE` = 2, `READABLE` = 4).
pub fn ioas_map_flags(type1: u32) -> u32 {
    let mut f = MAP_FIXED_IOVA;
    if type1 & VFIO_DMA_MAP_FLAG_READ != 0 {
        f |= MAP_READABLE;
    }
    if type1 & VFIO_DMA_MAP_FLAG_WRITE != 0 {
        f |= MAP_WRITEABLE;
    }
    f
}

/// Opens the device through iommufd: the cdev, `/dev/iommu`, bind, a new IOAS,
/// attach. `dev` and `group` are for error messages (who blocks the group).
pub fn open_device(
    cdev: &Path,
    iommu: &Path,
    dev: &Path,
    group: u32,
) -> Result<(File, Iommufd), VfioError> {
    let device = open_node(cdev).map_err(|e| match e {
        VfioError::Ioctl { source, .. } if source.raw_os_error() == Some(libc::EBUSY) => {
            IommufdError::Busy {
                node: cdev.to_path_buf(),
                group,
                source,
            }
            .into()
        }
        e => e,
    })?;
    let fd = open_node(iommu)?;
    let mut bind = vfio_device_bind_iommufd {
        argsz: BIND_ARGSZ,
        flags: 0,
        iommufd: std::os::fd::AsRawFd::as_raw_fd(&fd),
        ..Default::default()
    };
    // SAFETY: the kernel reads `argsz` (16) bytes of `bind` and writes `out_devid`
    // inside them; `bind` is ours and 24 bytes long.
    let bound = unsafe { ioctl_with_mut_ref(&device, VFIO_DEVICE_BIND_IOMMUFD(), &mut bind) };
    if let Err(source) = errno_result(bound) {
        if !sysfs::blocking_members(dev).is_empty() {
            return Err(VfioError::GroupNotViable {
                group,
                members: sysfs::group_members(dev),
            });
        }
        if source.raw_os_error() == Some(libc::EBUSY) {
            return Err(IommufdError::Busy {
                node: cdev.to_path_buf(),
                group,
                source,
            }
            .into());
        }
        return Err(ioctl_err("VFIO_DEVICE_BIND_IOMMUFD")(source));
    }
    let mut alloc = iommu_ioas_alloc {
        size: std::mem::size_of::<iommu_ioas_alloc>() as u32,
        ..Default::default()
    };
    // SAFETY: the kernel reads and writes `alloc` (`out_ioas_id`), which we own.
    errno_result(unsafe { ioctl_with_mut_ref(&fd, IOMMU_IOAS_ALLOC(), &mut alloc) })
        .map_err(ioctl_err("IOMMU_IOAS_ALLOC"))?;
    let mut attach = vfio_device_attach_iommufd_pt {
        argsz: ATTACH_ARGSZ,
        flags: 0,
        pt_id: alloc.out_ioas_id,
        ..Default::default()
    };
    // SAFETY: the kernel reads `argsz` (12) bytes of `attach` and writes `pt_id` (the
    // hardware page table it attached) inside them; `attach` is ours and 16 bytes long.
    errno_result(unsafe {
        ioctl_with_mut_ref(&device, VFIO_DEVICE_ATTACH_IOMMUFD_PT(), &mut attach)
    })
    .map_err(ioctl_err("VFIO_DEVICE_ATTACH_IOMMUFD_PT"))?;
    log::info!(
        "vfio: {} bound to iommufd (devid {}), attached to IOAS {} (hw page table {})",
        cdev.display(),
        bind.out_devid,
        alloc.out_ioas_id,
        attach.pt_id
    );
    Ok((
        device,
        Iommufd {
            fd,
            ioas: alloc.out_ioas_id,
            devid: bind.out_devid,
        },
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::sysfs::tests::{fake_pci, TempDir};
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn ioctl_numbers_match_linux() {
        // _IO(';', 0x80 + n) for iommufd, _IO(';', 100 + n) for VFIO
        assert_eq!(IOMMU_IOAS_ALLOC(), 0x3b81);
        assert_eq!(IOMMU_IOAS_MAP(), 0x3b85);
        assert_eq!(IOMMU_IOAS_UNMAP(), 0x3b86);
        assert_eq!(VFIO_DEVICE_BIND_IOMMUFD(), 0x3b76);
        assert_eq!(VFIO_DEVICE_ATTACH_IOMMUFD_PT(), 0x3b77);
        // inside the seccomp filter's VFIO/iommufd range
        for n in [
            IOMMU_IOAS_ALLOC(),
            IOMMU_IOAS_MAP(),
            IOMMU_IOAS_UNMAP(),
            VFIO_DEVICE_BIND_IOMMUFD(),
            VFIO_DEVICE_ATTACH_IOMMUFD_PT(),
        ] {
            assert!((0x3b64..=0x3bff).contains(&n), "{n:#x}");
        }
    }

    #[test]
    fn struct_layouts_match_linux() {
        // include/uapi/linux/iommufd.h
        assert_eq!(size_of::<iommu_ioas_alloc>(), 12);
        assert_eq!(offset_of!(iommu_ioas_alloc, out_ioas_id), 8);
        assert_eq!(size_of::<iommu_ioas_map>(), 40);
        assert_eq!(offset_of!(iommu_ioas_map, flags), 4);
        assert_eq!(offset_of!(iommu_ioas_map, ioas_id), 8);
        assert_eq!(offset_of!(iommu_ioas_map, user_va), 16);
        assert_eq!(offset_of!(iommu_ioas_map, length), 24);
        assert_eq!(offset_of!(iommu_ioas_map, iova), 32);
        assert_eq!(size_of::<iommu_ioas_unmap>(), 24);
        assert_eq!(offset_of!(iommu_ioas_unmap, ioas_id), 4);
        assert_eq!(offset_of!(iommu_ioas_unmap, iova), 8);
        assert_eq!(offset_of!(iommu_ioas_unmap, length), 16);
        // include/uapi/linux/vfio.h: the argsz we send covers exactly the original fields
        assert_eq!(offset_of!(vfio_device_bind_iommufd, iommufd), 8);
        assert_eq!(offset_of!(vfio_device_bind_iommufd, out_devid), 12);
        assert_eq!(
            offset_of!(vfio_device_bind_iommufd, out_devid) + 4,
            BIND_ARGSZ as usize
        );
        assert!(size_of::<vfio_device_bind_iommufd>() >= BIND_ARGSZ as usize);
        assert_eq!(offset_of!(vfio_device_attach_iommufd_pt, pt_id), 8);
        assert_eq!(
            offset_of!(vfio_device_attach_iommufd_pt, pt_id) + 4,
            ATTACH_ARGSZ as usize
        );
        assert!(size_of::<vfio_device_attach_iommufd_pt>() >= ATTACH_ARGSZ as usize);
    }

    #[test]
    fn map_flags_are_fixed_iova_and_iommufd_bits() {
        assert_eq!((MAP_FIXED_IOVA, MAP_WRITEABLE, MAP_READABLE), (1, 2, 4));
        assert_eq!(ioas_map_flags(VFIO_DMA_MAP_FLAG_READ), 1 | 4);
        assert_eq!(ioas_map_flags(VFIO_DMA_MAP_FLAG_WRITE), 1 | 2);
        assert_eq!(
            ioas_map_flags(VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE),
            1 | 2 | 4
        );
        // through the type1 flag builder: exec-only folds into READABLE
        let exec_only = super::super::sys::dma_map_flags(false, false, true).unwrap();
        assert_eq!(ioas_map_flags(exec_only), 1 | 4);
    }

    #[test]
    fn backend_names_round_trip() {
        for b in [
            IommuBackend::Auto,
            IommuBackend::Container,
            IommuBackend::Iommufd,
        ] {
            assert_eq!(b.to_string().parse::<IommuBackend>().unwrap(), b);
            let v = <IommuBackend as clap::ValueEnum>::to_possible_value(&b).unwrap();
            assert_eq!(v.get_name(), b.to_string());
        }
        assert_eq!(IommuBackend::default(), IommuBackend::Auto);
        assert!("type1".parse::<IommuBackend>().is_err());
    }

    /// A fake /dev with or without `iommu`, and a device with or without a cdev.
    fn setup(t: &TempDir, iommufd: bool, cdev: Option<&str>) -> (PathBuf, PathBuf) {
        let dev = fake_pci(&t.0, "0000:00:03.0", Some("vfio-pci"), 5);
        let root = t.0.join("dev");
        std::fs::create_dir_all(root.join("vfio/devices")).unwrap();
        if iommufd {
            std::fs::write(root.join("iommu"), b"").unwrap();
        }
        if let Some(c) = cdev {
            std::fs::create_dir_all(dev.join("vfio-dev").join(c)).unwrap();
            std::fs::write(dev.join("vfio-dev").join(c).join("dev"), b"511:0\n").unwrap();
            std::fs::write(root.join("vfio/devices").join(c), b"").unwrap();
        }
        (dev, root)
    }

    #[test]
    fn cdev_discovery_in_fake_sysfs() {
        let t = TempDir::new("cdev");
        let (dev, _) = setup(&t, true, Some("vfio3"));
        assert_eq!(vfio_cdev(&dev).as_deref(), Some("vfio3"));
        // only vfio<digits> entries count
        std::fs::create_dir_all(dev.join("vfio-dev/power")).unwrap();
        std::fs::create_dir_all(dev.join("vfio-dev/vfiox")).unwrap();
        assert_eq!(vfio_cdev(&dev).as_deref(), Some("vfio3"));
        let t2 = TempDir::new("nocdev");
        let (dev2, root2) = setup(&t2, true, None);
        assert_eq!(vfio_cdev(&dev2), None);
        std::fs::create_dir_all(dev2.join("vfio-dev")).unwrap();
        assert_eq!(vfio_cdev(&dev2), None);
        // 6.1 without CONFIG_VFIO_DEVICE_CDEV: vfio-dev/vfio0 exists but has no `dev`
        std::fs::create_dir_all(dev2.join("vfio-dev/vfio0/power")).unwrap();
        std::fs::write(dev2.join("vfio-dev/vfio0/uevent"), b"").unwrap();
        assert_eq!(vfio_cdev(&dev2), None);
        assert_eq!(
            choose(IommuBackend::Auto, &dev2, &root2).unwrap(),
            Choice::Container
        );
        assert!(matches!(
            choose(IommuBackend::Iommufd, &dev2, &root2),
            Err(IommufdError::NoCdev { .. })
        ));
        std::fs::write(dev2.join("vfio-dev/vfio0/dev"), b"511:0\n").unwrap();
        assert_eq!(vfio_cdev(&dev2).as_deref(), Some("vfio0"));
    }

    #[test]
    fn auto_prefers_iommufd_when_both_exist() {
        let t = TempDir::new("choose-both");
        let (dev, root) = setup(&t, true, Some("vfio0"));
        let want = Choice::Iommufd {
            cdev: root.join("vfio/devices/vfio0"),
            iommu: root.join("iommu"),
        };
        assert_eq!(choose(IommuBackend::Auto, &dev, &root).unwrap(), want);
        assert_eq!(choose(IommuBackend::Iommufd, &dev, &root).unwrap(), want);
        assert_eq!(
            choose(IommuBackend::Container, &dev, &root).unwrap(),
            Choice::Container
        );
    }

    #[test]
    fn auto_falls_back_to_the_container() {
        // no /dev/iommu (kernel without CONFIG_IOMMUFD)
        let t = TempDir::new("choose-none");
        let (dev, root) = setup(&t, false, None);
        assert_eq!(
            choose(IommuBackend::Auto, &dev, &root).unwrap(),
            Choice::Container
        );
        let e = choose(IommuBackend::Iommufd, &dev, &root).unwrap_err();
        assert!(matches!(e, IommufdError::NoIommufd(_)), "{e}");
        let m = e.to_string();
        assert!(m.contains("CONFIG_IOMMUFD"), "{m}");
        assert!(m.contains("use --iommu container"), "{m}");

        // /dev/iommu but no cdev (CONFIG_VFIO_DEVICE_CDEV off)
        let t = TempDir::new("choose-nocdev");
        let (dev, root) = setup(&t, true, None);
        assert_eq!(
            choose(IommuBackend::Auto, &dev, &root).unwrap(),
            Choice::Container
        );
        let e = choose(IommuBackend::Iommufd, &dev, &root).unwrap_err();
        let m = e.to_string();
        assert!(matches!(e, IommufdError::NoCdev { .. }), "{m}");
        assert!(m.contains("exists but"), "{m}");
        assert!(m.contains("has no vfio cdev"), "{m}");
        assert!(m.contains("CONFIG_VFIO_DEVICE_CDEV"), "{m}");
        assert!(m.contains("use --iommu container"), "{m}");
    }

    #[test]
    fn open_of_a_fake_cdev_fails_at_the_kernel_not_before() {
        // Plain files stand in for the nodes: opening works, BIND gets ENOTTY from a
        // regular file, and the error names the ioctl.
        let t = TempDir::new("open-cdev");
        let (dev, root) = setup(&t, true, Some("vfio0"));
        let e = open_device(
            &root.join("vfio/devices/vfio0"),
            &root.join("iommu"),
            &dev,
            5,
        )
        .unwrap_err();
        let m = e.to_string();
        assert!(m.contains("VFIO_DEVICE_BIND_IOMMUFD failed"), "{m}");
        // a missing node is reported as such
        let e = open_device(
            &root.join("vfio/devices/vfio9"),
            &root.join("iommu"),
            &dev,
            5,
        )
        .unwrap_err();
        assert!(matches!(e, VfioError::NoVfio(_)), "{e}");
    }

    #[test]
    fn bind_failure_with_a_blocking_group_member_says_not_viable() {
        let t = TempDir::new("open-blocked");
        let (dev, root) = setup(&t, true, Some("vfio0"));
        fake_pci(&t.0, "0000:00:04.0", Some("e1000e"), 5);
        let e = open_device(
            &root.join("vfio/devices/vfio0"),
            &root.join("iommu"),
            &dev,
            5,
        )
        .unwrap_err();
        let m = e.to_string();
        assert!(
            matches!(e, VfioError::GroupNotViable { group: 5, .. }),
            "{m}"
        );
        assert!(m.contains("0000:00:04.0 (driver e1000e)"), "{m}");
    }
}
