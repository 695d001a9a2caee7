//! `model:scratch` — a tiny test device with a trapped register page and a
//! memfd-backed, mmap-able page in the same region (for sparse-mmap tests).
//!
//! Region 0 ("scratch", 8 KiB, READ|WRITE|MMAP): page 0 holds registers (4-byte
//! accesses only), page 1 is plain memory in a memfd, offered as the one sparse
//! mmap area (and also reachable by REGION_READ/WRITE).
//!
//! | offset | register | |
//! |---|---|---|
//! | 0x00 | ID | `0x5c2a_7c11`, read-only |
//! | 0x04 | SCRATCH | read/write |
//! | 0x08 | RAISE | write: STATUS \|= value |
//! | 0x0C | INTCLR | write-1-to-clear STATUS bits |
//! | 0x10 | STATUS | read-only; the IRQ line is `STATUS != 0` |
//! | 0x20/0x24 | SRC lo/hi | DMA source IOVA |
//! | 0x28/0x2C | DST lo/hi | DMA destination IOVA |
//! | 0x30 | LEN | DMA length (≤ 1 MiB) |
//! | 0x34 | GO | write: copy LEN bytes SRC→DST through the DMA table; STATUS bit 0 on success, bit 1 on a fault |
//!
//! Options: `irqs=N` (1..=8 lines; line n = STATUS bit n, line 0 also any other bit).

use std::fs::File;
use std::os::fd::AsRawFd;
use vm_memory::mmap::MmapRegion;
use vm_memory::FileOffset;
use vm_memory::{VolatileMemory, VolatileSlice};

use super::{parse_num, Model, ModelSpec};
use crate::device::{
    device_flags, region_flags, DeviceError, DmaAccess, DmaMemory, RegionInfo, RegionMmap,
    SparseArea,
};

/// ID register value.
pub const SCRATCH_ID: u32 = 0x5c2a_7c11;
/// Region size.
pub const SCRATCH_REGION_SIZE: u64 = 0x2000;
/// Register offsets.
pub mod regs {
    /// ID.
    pub const ID: u64 = 0x00;
    /// Scratch.
    pub const SCRATCH: u64 = 0x04;
    /// Raise status bits.
    pub const RAISE: u64 = 0x08;
    /// W1C interrupt clear.
    pub const INTCLR: u64 = 0x0c;
    /// Status.
    pub const STATUS: u64 = 0x10;
    /// Source IOVA low.
    pub const SRC_LO: u64 = 0x20;
    /// Source IOVA high.
    pub const SRC_HI: u64 = 0x24;
    /// Destination IOVA low.
    pub const DST_LO: u64 = 0x28;
    /// Destination IOVA high.
    pub const DST_HI: u64 = 0x2c;
    /// Length.
    pub const LEN: u64 = 0x30;
    /// Go.
    pub const GO: u64 = 0x34;
}
const MAX_LEN: u32 = 1 << 20;

/// A memfd of `size` bytes sealed against shrinking and growing (and further
/// sealing): whoever else gets the fd cannot truncate it under a mapping.
fn sealed_memfd(name: &str, size: u64) -> std::io::Result<File> {
    crate::dma::sealed_memfd(name, size).map(File::from)
}

/// The scratch model.
#[derive(Debug)]
pub struct Scratch {
    mem: File,
    /// The backend's own shared mapping of `mem` (the memfd is sealed against
    /// shrinking, so the client cannot turn an access into SIGBUS): memfd-page
    /// accesses are volatile copies, no `pread`/`pwrite` system call.
    map: MmapRegion,
    scratch: u32,
    status: u32,
    src: u64,
    dst: u64,
    len: u32,
    irqs: u32,
}

impl Scratch {
    /// From `model:scratch[,irqs=N]`.
    pub fn from_spec(spec: &ModelSpec) -> Result<Self, DeviceError> {
        let mut irqs = 1;
        for (k, v) in &spec.options {
            match k.as_str() {
                "irqs" => {
                    irqs = parse_num(k, v.as_deref())?;
                    if !(1..=8).contains(&irqs) {
                        return Err(DeviceError::Invalid("scratch: irqs must be 1..=8".into()));
                    }
                }
                o => {
                    return Err(DeviceError::Invalid(format!(
                        "scratch: unknown option {o:?}"
                    )))
                }
            }
        }
        let mem = sealed_memfd("vfio-sidecar-scratch", SCRATCH_REGION_SIZE)?;
        let map = MmapRegion::from_file(
            FileOffset::new(mem.try_clone()?, 0),
            SCRATCH_REGION_SIZE as usize,
        )
        .map_err(|e| DeviceError::Invalid(format!("scratch: mmap of its memfd: {e}")))?;
        Ok(Scratch {
            mem,
            map,
            scratch: 0,
            status: 0,
            src: 0,
            dst: 0,
            len: 0,
            irqs: irqs as u32,
        })
    }

    /// The mapped bytes `[offset, offset + len)` of the memfd (EINVAL beyond it).
    fn page_slice(&self, offset: u64, len: usize) -> Result<VolatileSlice<'_, ()>, DeviceError> {
        usize::try_from(offset)
            .ok()
            .and_then(|o| self.map.get_slice(o, len).ok())
            .ok_or_else(|| {
                DeviceError::Invalid(format!("scratch: access {offset:#x}+{len} out of range"))
            })
    }

    fn reg_read(&self, off: u64) -> u32 {
        match off {
            regs::ID => SCRATCH_ID,
            regs::SCRATCH => self.scratch,
            regs::STATUS => self.status,
            regs::SRC_LO => self.src as u32,
            regs::SRC_HI => (self.src >> 32) as u32,
            regs::DST_LO => self.dst as u32,
            regs::DST_HI => (self.dst >> 32) as u32,
            regs::LEN => self.len,
            _ => 0,
        }
    }

    fn reg_write(&mut self, off: u64, v: u32, mem: &dyn DmaMemory) {
        match off {
            regs::SCRATCH => self.scratch = v,
            regs::RAISE => self.status |= v,
            regs::INTCLR => self.status &= !v,
            regs::SRC_LO => self.src = (self.src & !0xffff_ffff) | u64::from(v),
            regs::SRC_HI => self.src = (self.src & 0xffff_ffff) | (u64::from(v) << 32),
            regs::DST_LO => self.dst = (self.dst & !0xffff_ffff) | u64::from(v),
            regs::DST_HI => self.dst = (self.dst & 0xffff_ffff) | (u64::from(v) << 32),
            regs::LEN => self.len = v.min(MAX_LEN),
            regs::GO => {
                let mut buf = vec![0u8; self.len as usize];
                let r = mem
                    .dma_read(self.src, &mut buf, DmaAccess::Read)
                    .and_then(|_| mem.dma_write(self.dst, &buf));
                match r {
                    Ok(()) => self.status |= 1,
                    Err(e) => {
                        log::debug!("scratch DMA fault: {e}");
                        self.status |= 2;
                    }
                }
            }
            _ => {}
        }
    }
}

impl Model for Scratch {
    fn kind(&self) -> &'static str {
        "scratch"
    }

    fn device_flags(&self) -> u32 {
        device_flags::PLATFORM | device_flags::RESET
    }

    fn regions(&self) -> Vec<RegionInfo> {
        vec![RegionInfo {
            index: 0,
            flags: region_flags::READ | region_flags::WRITE | region_flags::MMAP,
            size: SCRATCH_REGION_SIZE,
            name: "scratch".into(),
            mmap: Some(RegionMmap {
                fd: self.mem.as_raw_fd(),
                fd_offset: 0,
                areas: vec![SparseArea {
                    offset: 0x1000,
                    size: 0x1000,
                }],
            }),
        }]
    }

    fn read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        super::only_region_0(region)?;
        if offset >= 0x1000 {
            self.page_slice(offset, data.len())?.copy_to(data);
            return Ok(());
        }
        if data.len() != 4 || offset % 4 != 0 {
            return Err(DeviceError::Unsupported(
                "scratch registers: 4-byte aligned accesses only".into(),
            ));
        }
        data.copy_from_slice(&self.reg_read(offset).to_le_bytes());
        Ok(())
    }

    fn write(
        &mut self,
        region: u32,
        offset: u64,
        data: &[u8],
        mem: &dyn DmaMemory,
    ) -> Result<(), DeviceError> {
        super::only_region_0(region)?;
        if offset >= 0x1000 {
            self.page_slice(offset, data.len())?.copy_from(data);
            return Ok(());
        }
        let v: [u8; 4] = data.try_into().map_err(|_| {
            DeviceError::Unsupported("scratch registers: 4-byte aligned accesses only".into())
        })?;
        if offset % 4 != 0 {
            return Err(DeviceError::Unsupported(
                "scratch registers: 4-byte aligned accesses only".into(),
            ));
        }
        self.reg_write(offset, u32::from_le_bytes(v), mem);
        Ok(())
    }

    fn num_irqs(&self) -> u32 {
        self.irqs
    }

    fn irq_levels(&self) -> Vec<bool> {
        (0..self.irqs).map(|n| self.irq_level(n)).collect()
    }

    fn irq_level(&self, n: u32) -> bool {
        if n >= self.irqs {
            false
        } else if n == 0 {
            // Line 0 also carries the bits without a line of their own.
            self.status & (1 | !((1u32 << self.irqs) - 1)) != 0
        } else {
            self.status & (1 << n) != 0
        }
    }

    fn run_pending(&mut self, _mem: &dyn DmaMemory) -> bool {
        false
    }

    fn idle(&self) -> bool {
        true
    }

    fn reset(&mut self) {
        self.scratch = 0;
        self.status = 0;
        self.src = 0;
        self.dst = 0;
        self.len = 0;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::device::{Device, IrqAction, IrqData, NoDmaMemory, SetIrqs};
    use crate::model::ModelDevice;

    fn dev() -> ModelDevice {
        ModelDevice::new(Box::new(
            Scratch::from_spec(&"scratch".parse().unwrap()).unwrap(),
        ))
    }

    #[test]
    fn registers_and_memory_page() {
        let mut d = dev();
        let mut b = [0u8; 4];
        d.region_read(0, regs::ID, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), SCRATCH_ID);
        d.region_write(0, regs::SCRATCH, &7u32.to_le_bytes(), &NoDmaMemory)
            .unwrap();
        d.region_read(0, regs::SCRATCH, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 7);
        assert!(d.region_read(0, 1, &mut b).is_err());
        d.region_write(0, 0x1800, b"xyz", &NoDmaMemory).unwrap();
        let mut m = [0u8; 3];
        d.region_read(0, 0x1800, &mut m).unwrap();
        assert_eq!(&m, b"xyz");
        let info = d.region_info(0).unwrap();
        assert_eq!(info.mmap.unwrap().areas[0].offset, 0x1000);
        assert!(d.region_info(1).is_err());
        assert!(d.irq_info(1).is_err());
    }

    #[test]
    fn memory_page_is_the_sealed_memfd() {
        use std::os::fd::{FromRawFd, OwnedFd};
        use std::os::unix::fs::FileExt;
        let mut d = dev();
        let info = d.region_info(0).unwrap();
        let raw = info.mmap.unwrap().fd;
        // SAFETY: dup of the model's live memfd; the copy is ours.
        let f = File::from(unsafe { OwnedFd::from_raw_fd(libc::dup(raw)) });
        // What the client writes through the fd (or its mapping) is read back
        // through REGION_READ, and the other way round.
        f.write_all_at(&0x1122_3344_5566_7788u64.to_le_bytes(), 0x1008)
            .unwrap();
        let mut b = [0u8; 8];
        d.region_read(0, 0x1008, &mut b).unwrap();
        assert_eq!(u64::from_le_bytes(b), 0x1122_3344_5566_7788);
        d.region_write(0, 0x1ff8, b"12345678", &NoDmaMemory)
            .unwrap();
        let mut m = [0u8; 8];
        f.read_exact_at(&mut m, 0x1ff8).unwrap();
        assert_eq!(&m, b"12345678");
        // The peer cannot shrink (or grow) it under the backend's mapping.
        assert!(f.set_len(0x1000).is_err());
        assert!(f.set_len(2 * SCRATCH_REGION_SIZE).is_err());
        assert_eq!(f.metadata().unwrap().len(), SCRATCH_REGION_SIZE);
        // Beyond the region: an error, not a panic.
        assert!(d.region_read(0, SCRATCH_REGION_SIZE - 4, &mut b).is_err());
    }

    #[test]
    fn irq_line_and_dma_fault() {
        let mut d = dev();
        // SAFETY: eventfd(2) returns a fresh fd.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        // SAFETY: fresh fd owned here.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        d.set_irqs(SetIrqs {
            index: 0,
            start: 0,
            count: 1,
            action: IrqAction::Trigger,
            data: IrqData::Eventfd(vec![Some(fd)]),
        })
        .unwrap();
        d.region_write(0, regs::LEN, &16u32.to_le_bytes(), &NoDmaMemory)
            .unwrap();
        d.region_write(0, regs::GO, &1u32.to_le_bytes(), &NoDmaMemory)
            .unwrap();
        let mut b = [0u8; 4];
        d.region_read(0, regs::STATUS, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 2, "fault bit");
        let c = d.irq_counters(0, 0).unwrap();
        assert_eq!((c.device_events, c.host_interrupts), (1, 1));
        d.region_write(0, regs::INTCLR, &2u32.to_le_bytes(), &NoDmaMemory)
            .unwrap();
        d.unmask_irq(0, 0).unwrap();
        assert_eq!(d.irq_counters(0, 0).unwrap().refires, 0);
        d.reset().unwrap();
    }
}
