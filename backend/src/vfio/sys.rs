//! Thin wrapper over the VFIO ioctls (`vfio-bindings` structs, `vmm-sys-util`
//! ioctl helpers) for what `vfio-ioctls` 0.10 cannot do for us:
//!
//! * its `VfioGroup` is crate-private and `VfioDevice::new` rejects AMBA devices
//!   (`VfioDeviceGetInfoOther`), so the group and device fds are opened here;
//! * its `unmask_irq`/`set_irq_resample_fd` hard-code IRQ index 0 and count 1, so
//!   `VFIO_DEVICE_SET_IRQS` is built here for every action × data type;
//! * its `region_read`/`region_write` log and swallow errors, so regions are
//!   accessed with `pread`/`pwrite` here;
//! * its `vfio_dma_map` always maps READ|WRITE, so `VFIO_IOMMU_MAP_DMA` is issued
//!   here with the mapping's own READ/WRITE flags (never bit 2, which upstream
//!   reuses as `VFIO_DMA_MAP_FLAG_VADDR`).
//!
//! The byte-level builders and parsers (`irq_set_buffer`, `parse_region_caps`) are
//! pure functions so they are unit-tested without a kernel.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};

use vfio_bindings::bindings::vfio::{
    vfio_device_info, vfio_group_status, vfio_iommu_type1_dma_map, vfio_irq_info, vfio_region_info,
    VFIO_TYPE1v2_IOMMU, VFIO_BASE, VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE,
    VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, VFIO_REGION_INFO_CAP_SPARSE_MMAP,
    VFIO_REGION_INFO_CAP_TYPE, VFIO_TYPE,
};
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ptr, ioctl_with_ref, ioctl_with_val};
use vmm_sys_util::ioctl_io_nr;

use crate::device::{IrqAction, SparseArea};

ioctl_io_nr!(VFIO_SET_IOMMU, VFIO_TYPE as u32, VFIO_BASE + 2);
ioctl_io_nr!(VFIO_GROUP_GET_STATUS, VFIO_TYPE as u32, VFIO_BASE + 3);
ioctl_io_nr!(VFIO_GROUP_SET_CONTAINER, VFIO_TYPE as u32, VFIO_BASE + 4);
ioctl_io_nr!(VFIO_GROUP_GET_DEVICE_FD, VFIO_TYPE as u32, VFIO_BASE + 6);
ioctl_io_nr!(VFIO_DEVICE_GET_INFO, VFIO_TYPE as u32, VFIO_BASE + 7);
ioctl_io_nr!(VFIO_DEVICE_GET_REGION_INFO, VFIO_TYPE as u32, VFIO_BASE + 8);
ioctl_io_nr!(VFIO_DEVICE_GET_IRQ_INFO, VFIO_TYPE as u32, VFIO_BASE + 9);
ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO_TYPE as u32, VFIO_BASE + 10);
ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO_TYPE as u32, VFIO_BASE + 11);
ioctl_io_nr!(VFIO_IOMMU_MAP_DMA, VFIO_TYPE as u32, VFIO_BASE + 13);

/// Size of `struct vfio_irq_set` without its flexible `data[]`.
pub const IRQ_SET_HEADER: usize = 20;
/// Size of `struct vfio_region_info` (the part before the capability chain).
pub const REGION_INFO_SIZE: usize = std::mem::size_of::<vfio_region_info>();
/// Upper bound for a region-info buffer with capabilities (the kernel's chains
/// are a few hundred bytes; a bigger `argsz` request is treated as an error).
pub const MAX_REGION_INFO: u32 = 64 * 1024;
/// Upper bound on sparse areas taken from one capability.
pub const MAX_SPARSE_AREAS: u32 = 1024;

fn errno_result(ret: i32) -> std::io::Result<i32> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Data part of a `VFIO_DEVICE_SET_IRQS` request in raw form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawIrqData {
    /// `DATA_NONE`.
    None,
    /// `DATA_BOOL`: one byte per vector.
    Bool(Vec<bool>),
    /// `DATA_EVENTFD`: one `s32` per vector (-1 de-assigns).
    Eventfd(Vec<RawFd>),
}

/// `VFIO_IRQ_SET_ACTION_*` bit of an action.
pub fn action_flag(action: IrqAction) -> u32 {
    match action {
        IrqAction::Mask => VFIO_IRQ_SET_ACTION_MASK,
        IrqAction::Unmask => VFIO_IRQ_SET_ACTION_UNMASK,
        IrqAction::Trigger => VFIO_IRQ_SET_ACTION_TRIGGER,
    }
}

/// Builds the bytes of a `struct vfio_irq_set` (native endian): header
/// `argsz, flags, index, start, count` followed by `data[]` (nothing for
/// `DATA_NONE`, one `u8` per vector for `DATA_BOOL`, one `s32` per vector for
/// `DATA_EVENTFD`). `argsz` covers header and data.
pub fn irq_set_buffer(
    index: u32,
    start: u32,
    count: u32,
    action: IrqAction,
    data: &RawIrqData,
) -> Vec<u8> {
    let (dflag, payload): (u32, Vec<u8>) = match data {
        RawIrqData::None => (VFIO_IRQ_SET_DATA_NONE, Vec::new()),
        RawIrqData::Bool(v) => (VFIO_IRQ_SET_DATA_BOOL, v.iter().map(|&b| b as u8).collect()),
        RawIrqData::Eventfd(v) => (
            VFIO_IRQ_SET_DATA_EVENTFD,
            v.iter().flat_map(|fd| fd.to_ne_bytes()).collect(),
        ),
    };
    let argsz = (IRQ_SET_HEADER + payload.len()) as u32;
    let mut buf = Vec::with_capacity(argsz as usize);
    for word in [argsz, dflag | action_flag(action), index, start, count] {
        buf.extend_from_slice(&word.to_ne_bytes());
    }
    buf.extend_from_slice(&payload);
    buf
}

/// A region capability we understand (others are skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionCap {
    /// `VFIO_REGION_INFO_CAP_SPARSE_MMAP`: only these areas may be mmapped.
    SparseMmap(Vec<SparseArea>),
    /// `VFIO_REGION_INFO_CAP_TYPE`: device-specific region type.
    Type {
        /// Region type.
        type_: u32,
        /// Region subtype.
        subtype: u32,
    },
    /// `VFIO_REGION_INFO_CAP_MSIX_MAPPABLE`: the MSI-X table may be mmapped.
    MsixMappable,
}

/// Why a capability chain could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapParseError {
    /// A header or body reaches beyond the buffer.
    #[error("capability at offset {0:#x} extends beyond the {1}-byte region info")]
    OutOfBounds(u32, usize),
    /// `next` does not move forward (a loop).
    #[error("capability chain does not advance at offset {0:#x}")]
    Loop(u32),
    /// Too many sparse areas.
    #[error("sparse mmap capability claims {0} areas")]
    TooManyAreas(u32),
}

fn rd_u16(buf: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(off..off + 2)?.try_into().ok()?))
}
fn rd_u32(buf: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(off..off + 4)?.try_into().ok()?))
}
fn rd_u64(buf: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(buf.get(off..off + 8)?.try_into().ok()?))
}

/// Parses the capability chain of a `VFIO_DEVICE_GET_REGION_INFO` reply held in
/// `buf` (the whole `argsz` bytes, `struct vfio_region_info` first), starting at
/// `cap_offset`. Each capability starts with `vfio_info_cap_header { u16 id; u16
/// version; u32 next; }`; `next == 0` ends the chain. Offsets are relative to the
/// start of `buf`. Every access is bounds-checked (the kernel is trusted, but a
/// parser that cannot overrun is cheap).
pub fn parse_region_caps(buf: &[u8], cap_offset: u32) -> Result<Vec<RegionCap>, CapParseError> {
    let mut caps = Vec::new();
    let mut off = cap_offset;
    while off != 0 {
        let o = off as usize;
        let oob = || CapParseError::OutOfBounds(off, buf.len());
        let id = rd_u16(buf, o).ok_or_else(oob)?;
        let next = rd_u32(buf, o + 4).ok_or_else(oob)?;
        match u32::from(id) {
            VFIO_REGION_INFO_CAP_SPARSE_MMAP => {
                let nr = rd_u32(buf, o + 8).ok_or_else(oob)?;
                if nr > MAX_SPARSE_AREAS {
                    return Err(CapParseError::TooManyAreas(nr));
                }
                let mut areas = Vec::with_capacity(nr as usize);
                for i in 0..nr as usize {
                    let a = o + 16 + i * 16;
                    let offset = rd_u64(buf, a).ok_or_else(oob)?;
                    let size = rd_u64(buf, a + 8).ok_or_else(oob)?;
                    areas.push(SparseArea { offset, size });
                }
                caps.push(RegionCap::SparseMmap(areas));
            }
            VFIO_REGION_INFO_CAP_TYPE => {
                let type_ = rd_u32(buf, o + 8).ok_or_else(oob)?;
                let subtype = rd_u32(buf, o + 12).ok_or_else(oob)?;
                caps.push(RegionCap::Type { type_, subtype });
            }
            VFIO_REGION_INFO_CAP_MSIX_MAPPABLE => caps.push(RegionCap::MsixMappable),
            _ => {}
        }
        if next != 0 && next <= off {
            return Err(CapParseError::Loop(off));
        }
        off = next;
    }
    Ok(caps)
}

/// `VFIO_GROUP_GET_STATUS`: returns the flags (`VFIO_GROUP_FLAGS_*`).
pub fn group_status(group: &File) -> std::io::Result<u32> {
    let mut st = vfio_group_status {
        argsz: std::mem::size_of::<vfio_group_status>() as u32,
        flags: 0,
    };
    // SAFETY: the kernel writes at most `argsz` bytes into `st`, which we own.
    errno_result(unsafe { ioctl_with_mut_ref(group, VFIO_GROUP_GET_STATUS(), &mut st) })?;
    Ok(st.flags)
}

/// `VFIO_GROUP_SET_CONTAINER` (the argument is a pointer to the container fd).
pub fn group_set_container(group: &File, container: RawFd) -> std::io::Result<()> {
    // SAFETY: the kernel reads one `int` from the pointer; `container` lives on our stack.
    errno_result(unsafe { ioctl_with_ref(group, VFIO_GROUP_SET_CONTAINER(), &container) })?;
    Ok(())
}

/// `VFIO_SET_IOMMU(VFIO_TYPE1v2_IOMMU)` on the container.
pub fn set_iommu_type1v2(container: &impl AsRawFd) -> std::io::Result<()> {
    // SAFETY: the argument is a plain integer; no memory is passed.
    errno_result(unsafe {
        ioctl_with_val(container, VFIO_SET_IOMMU(), VFIO_TYPE1v2_IOMMU.into())
    })?;
    Ok(())
}

/// `VFIO_GROUP_GET_DEVICE_FD(name)`: returns the new device file.
pub fn group_get_device(group: &File, name: &str) -> std::io::Result<File> {
    let cname = std::ffi::CString::new(name)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the kernel reads a NUL-terminated string from `cname`, which outlives the call.
    let fd =
        errno_result(unsafe { ioctl_with_ptr(group, VFIO_GROUP_GET_DEVICE_FD(), cname.as_ptr()) })?;
    // SAFETY: the ioctl returned a new fd that nothing else owns.
    Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// `VFIO_DEVICE_GET_INFO`: `(flags, num_regions, num_irqs)`.
pub fn device_info(device: &File) -> std::io::Result<(u32, u32, u32)> {
    let mut info = vfio_device_info {
        argsz: std::mem::size_of::<vfio_device_info>() as u32,
        ..Default::default()
    };
    // SAFETY: the kernel writes at most `argsz` bytes into `info`, which we own.
    errno_result(unsafe { ioctl_with_mut_ref(device, VFIO_DEVICE_GET_INFO(), &mut info) })?;
    Ok((info.flags, info.num_regions, info.num_irqs))
}

/// Region info as the kernel reports it, with parsed capabilities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRegion {
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// Size in bytes.
    pub size: u64,
    /// Offset of the region within the device fd.
    pub offset: u64,
    /// Capabilities.
    pub caps: Vec<RegionCap>,
}

/// `VFIO_DEVICE_GET_REGION_INFO` including the capability chain: first with the
/// bare struct, then (if the kernel asks for a bigger `argsz`) again with a
/// buffer of that size.
pub fn region_info(device: &File, index: u32) -> std::io::Result<RawRegion> {
    let mut argsz = REGION_INFO_SIZE as u32;
    loop {
        // u64 storage keeps the buffer 8-byte aligned, as `vfio_region_info` needs.
        let mut storage = vec![0u64; (argsz as usize).div_ceil(8)];
        let info = storage.as_mut_ptr().cast::<vfio_region_info>();
        // SAFETY: `storage` is at least `size_of::<vfio_region_info>()` bytes, 8-byte
        // aligned and zeroed; writing the header fields through the pointer is in bounds.
        unsafe {
            (*info).argsz = argsz;
            (*info).index = index;
        }
        // SAFETY: the kernel writes at most `argsz` bytes, and `storage` holds at least that many.
        errno_result(unsafe {
            ioctl_with_mut_ptr_raw(device, VFIO_DEVICE_GET_REGION_INFO(), info)
        })?;
        // SAFETY: `storage` is initialised u64s; viewing it as bytes is always valid.
        let bytes =
            unsafe { std::slice::from_raw_parts(storage.as_ptr().cast::<u8>(), storage.len() * 8) };
        let want = rd_u32(bytes, 0).unwrap_or(argsz);
        let flags = rd_u32(bytes, 4).unwrap_or(0);
        let cap_offset = rd_u32(bytes, 12).unwrap_or(0);
        let size = rd_u64(bytes, 16).unwrap_or(0);
        let offset = rd_u64(bytes, 24).unwrap_or(0);
        let has_caps = flags & vfio_bindings::bindings::vfio::VFIO_REGION_INFO_FLAG_CAPS != 0;
        if has_caps && want > argsz {
            if want > MAX_REGION_INFO {
                return Err(std::io::Error::other(format!(
                    "region {index}: kernel wants a {want}-byte region info"
                )));
            }
            argsz = want;
            continue;
        }
        let caps = if has_caps && cap_offset != 0 {
            parse_region_caps(&bytes[..(argsz as usize).min(bytes.len())], cap_offset)
                .map_err(|e| std::io::Error::other(format!("region {index}: {e}")))?
        } else {
            Vec::new()
        };
        return Ok(RawRegion {
            flags,
            size,
            offset,
            caps,
        });
    }
}

/// `ioctl_with_mut_ptr` under another name (keeps the call site above readable).
///
/// # Safety
/// As for `ioctl_with_mut_ptr`: `arg` must be valid for what the ioctl writes.
unsafe fn ioctl_with_mut_ptr_raw<T>(fd: &File, req: libc::c_ulong, arg: *mut T) -> i32 {
    // SAFETY: forwarded contract.
    unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ptr(fd, req, arg) }
}

/// `VFIO_DEVICE_GET_IRQ_INFO`: `(flags, count)`.
pub fn irq_info(device: &File, index: u32) -> std::io::Result<(u32, u32)> {
    let mut info = vfio_irq_info {
        argsz: std::mem::size_of::<vfio_irq_info>() as u32,
        flags: 0,
        index,
        count: 0,
    };
    // SAFETY: the kernel writes at most `argsz` bytes into `info`, which we own.
    errno_result(unsafe { ioctl_with_mut_ref(device, VFIO_DEVICE_GET_IRQ_INFO(), &mut info) })?;
    Ok((info.flags, info.count))
}

/// `VFIO_DEVICE_SET_IRQS` with a buffer from [`irq_set_buffer`].
pub fn set_irqs(device: &File, buf: &[u8]) -> std::io::Result<()> {
    if buf.len() < IRQ_SET_HEADER || rd_u32(buf, 0) != Some(buf.len() as u32) {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    // Copy into u32 storage so the kernel sees a 4-byte aligned struct.
    let mut storage = vec![0u32; buf.len().div_ceil(4)];
    // SAFETY: `storage` has at least `buf.len()` bytes; the regions do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(buf.as_ptr(), storage.as_mut_ptr().cast::<u8>(), buf.len())
    };
    // SAFETY: the kernel reads `argsz` (= buf.len()) bytes from `storage`, which holds them.
    errno_result(unsafe { ioctl_with_ptr(device, VFIO_DEVICE_SET_IRQS(), storage.as_ptr()) })?;
    Ok(())
}

/// `VFIO_DEVICE_RESET`.
pub fn device_reset(device: &File) -> std::io::Result<()> {
    // SAFETY: no argument.
    errno_result(unsafe { vmm_sys_util::ioctl::ioctl(device, VFIO_DEVICE_RESET()) })?;
    Ok(())
}

/// The `flags` of a type1 DMA map: READ and/or WRITE only. Upstream VFIO has no
/// exec flag (bit 2 is `VFIO_DMA_MAP_FLAG_VADDR` and is never set here); type1
/// mappings are device-executable, so EXEC is implied and no-exec cannot be
/// enforced. An exec-only mapping becomes READ (an instruction fetch is a read
/// on the bus). Returns `None` for a mapping with no permission at all.
pub fn dma_map_flags(read: bool, write: bool, exec: bool) -> Option<u32> {
    let mut f = 0;
    if read || exec {
        f |= VFIO_DMA_MAP_FLAG_READ;
    }
    if write {
        f |= VFIO_DMA_MAP_FLAG_WRITE;
    }
    (f != 0).then_some(f)
}

/// `VFIO_IOMMU_MAP_DMA`.
///
/// # Safety
/// `[vaddr, vaddr + size)` must stay mapped in this process until it is unmapped
/// from the IOMMU (the device reads/writes it at any time); no Rust reference to
/// that memory may be relied upon for its contents meanwhile.
pub unsafe fn map_dma(
    container: &impl AsRawFd,
    iova: u64,
    size: u64,
    vaddr: u64,
    flags: u32,
) -> std::io::Result<()> {
    let map = vfio_iommu_type1_dma_map {
        argsz: std::mem::size_of::<vfio_iommu_type1_dma_map>() as u32,
        flags,
        vaddr,
        iova,
        size,
    };
    // SAFETY: the kernel reads `map`; pinning the user range is covered by the caller's contract.
    errno_result(unsafe { ioctl_with_ref(container, VFIO_IOMMU_MAP_DMA(), &map) })?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn words(buf: &[u8]) -> Vec<u32> {
        buf[..IRQ_SET_HEADER]
            .chunks(4)
            .map(|c| u32::from_ne_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn irq_set_layout_every_action_and_data_type() {
        let actions = [
            (IrqAction::Mask, VFIO_IRQ_SET_ACTION_MASK),
            (IrqAction::Unmask, VFIO_IRQ_SET_ACTION_UNMASK),
            (IrqAction::Trigger, VFIO_IRQ_SET_ACTION_TRIGGER),
        ];
        for (action, aflag) in actions {
            // DATA_NONE: header only
            let b = irq_set_buffer(2, 1, 3, action, &RawIrqData::None);
            assert_eq!(b.len(), 20);
            assert_eq!(words(&b), [20, VFIO_IRQ_SET_DATA_NONE | aflag, 2, 1, 3]);
            // DATA_BOOL: one byte per vector
            let b = irq_set_buffer(0, 0, 3, action, &RawIrqData::Bool(vec![true, false, true]));
            assert_eq!(b.len(), 23);
            assert_eq!(words(&b), [23, VFIO_IRQ_SET_DATA_BOOL | aflag, 0, 0, 3]);
            assert_eq!(&b[20..], &[1, 0, 1]);
            // DATA_EVENTFD: one s32 per vector, -1 de-assigns
            let b = irq_set_buffer(1, 0, 2, action, &RawIrqData::Eventfd(vec![7, -1]));
            assert_eq!(b.len(), 28);
            assert_eq!(words(&b), [28, VFIO_IRQ_SET_DATA_EVENTFD | aflag, 1, 0, 2]);
            assert_eq!(i32::from_ne_bytes(b[20..24].try_into().unwrap()), 7);
            assert_eq!(i32::from_ne_bytes(b[24..28].try_into().unwrap()), -1);
        }
        // the ABI values themselves (linux/vfio.h)
        assert_eq!(
            irq_set_buffer(0, 0, 0, IrqAction::Trigger, &RawIrqData::None)[4..8],
            (1u32 | 32).to_ne_bytes()
        );
        assert_eq!(
            irq_set_buffer(0, 0, 1, IrqAction::Unmask, &RawIrqData::Eventfd(vec![3]))[4..8],
            (4u32 | 16).to_ne_bytes()
        );
    }

    #[test]
    fn set_irqs_rejects_inconsistent_buffers_before_the_kernel() {
        let f = File::open("/dev/null").unwrap();
        let mut b = irq_set_buffer(0, 0, 1, IrqAction::Unmask, &RawIrqData::None);
        b.push(0); // argsz no longer matches
        assert_eq!(
            set_irqs(&f, &b).unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
        assert!(set_irqs(&f, &[0; 8]).is_err());
    }

    fn push_u16(b: &mut Vec<u8>, v: u16) {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    fn push_u32(b: &mut Vec<u8>, v: u32) {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    fn push_u64(b: &mut Vec<u8>, v: u64) {
        b.extend_from_slice(&v.to_ne_bytes());
    }

    /// A region info as the kernel lays it out for a BAR with an MSI-X hole:
    /// header (32 bytes), sparse-mmap cap at 32 (2 areas), type cap, MSI-X cap.
    fn sample() -> Vec<u8> {
        let mut b = Vec::new();
        push_u32(&mut b, 0); // argsz (patched below)
        push_u32(&mut b, 0xf); // flags R|W|MMAP|CAPS
        push_u32(&mut b, 0); // index
        push_u32(&mut b, 32); // cap_offset
        push_u64(&mut b, 0x10_0000);
        push_u64(&mut b, 0);
        // sparse mmap @32: header(8) nr_areas reserved, 2 areas
        push_u16(&mut b, 1);
        push_u16(&mut b, 1);
        push_u32(&mut b, 80);
        push_u32(&mut b, 2);
        push_u32(&mut b, 0);
        push_u64(&mut b, 0);
        push_u64(&mut b, 0x1000);
        push_u64(&mut b, 0x2000);
        push_u64(&mut b, 0xe000);
        // type @80
        push_u16(&mut b, 2);
        push_u16(&mut b, 1);
        push_u32(&mut b, 96);
        push_u32(&mut b, 0x8000_0000);
        push_u32(&mut b, 3);
        // msix mappable @96, end of chain
        push_u16(&mut b, 3);
        push_u16(&mut b, 1);
        push_u32(&mut b, 0);
        let len = b.len() as u32;
        b[..4].copy_from_slice(&len.to_ne_bytes());
        b
    }

    #[test]
    fn cap_chain_with_sparse_areas() {
        let b = sample();
        let caps = parse_region_caps(&b, 32).unwrap();
        assert_eq!(
            caps,
            vec![
                RegionCap::SparseMmap(vec![
                    SparseArea {
                        offset: 0,
                        size: 0x1000
                    },
                    SparseArea {
                        offset: 0x2000,
                        size: 0xe000
                    }
                ]),
                RegionCap::Type {
                    type_: 0x8000_0000,
                    subtype: 3
                },
                RegionCap::MsixMappable,
            ]
        );
        // starting at the second cap skips the first
        assert_eq!(parse_region_caps(&b, 80).unwrap().len(), 2);
        assert!(parse_region_caps(&b, 0).unwrap().is_empty());
    }

    #[test]
    fn cap_chain_is_bounds_checked() {
        let b = sample();
        // truncated inside the second sparse area
        assert!(matches!(
            parse_region_caps(&b[..70], 32),
            Err(CapParseError::OutOfBounds(32, 70))
        ));
        // offset beyond the buffer
        assert!(matches!(
            parse_region_caps(&b, 4000),
            Err(CapParseError::OutOfBounds(..))
        ));
        // a chain that points backwards is a loop
        let mut l = b.clone();
        l[100..104].copy_from_slice(&32u32.to_ne_bytes());
        assert_eq!(parse_region_caps(&l, 32), Err(CapParseError::Loop(96)));
        // absurd area count
        let mut n = b.clone();
        n[40..44].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(
            parse_region_caps(&n, 32),
            Err(CapParseError::TooManyAreas(u32::MAX))
        );
        // unknown capability ids are skipped, the chain continues
        let mut u = b.clone();
        u[80..82].copy_from_slice(&0x7777u16.to_ne_bytes());
        assert_eq!(parse_region_caps(&u, 32).unwrap().len(), 2);
    }

    #[test]
    fn dma_flags_never_use_bit_2() {
        assert_eq!(dma_map_flags(true, false, false), Some(1));
        assert_eq!(dma_map_flags(false, true, false), Some(2));
        assert_eq!(dma_map_flags(true, true, true), Some(3));
        assert_eq!(dma_map_flags(false, false, true), Some(1)); // exec-only => READ
        assert_eq!(dma_map_flags(false, false, false), None);
        for r in [false, true] {
            for w in [false, true] {
                for x in [false, true] {
                    assert_eq!(dma_map_flags(r, w, x).unwrap_or(0) & 4, 0);
                }
            }
        }
    }

    #[test]
    fn ioctl_numbers_match_linux() {
        // _IO(';', 100 + n)
        assert_eq!(VFIO_GROUP_GET_STATUS(), 0x3b67);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD(), 0x3b6a);
        assert_eq!(VFIO_DEVICE_SET_IRQS(), 0x3b6e);
        assert_eq!(VFIO_DEVICE_RESET(), 0x3b6f);
        assert_eq!(VFIO_IOMMU_MAP_DMA(), 0x3b71);
    }
}
