//! An in-process PL330 stand-in for unit tests of the KVM path (the end-to-end
//! tests use the real backend). It behaves like a backend: it mmaps the DMA
//! table's fds, keeps the trigger eventfd, checks EXEC on instruction fetch
//! when the extension is "negotiated". Just enough of the device: IDs,
//! CR0/CRD, INTEN/ES/INTCLR, fault registers, the debug interface, and an
//! interpreter for the instructions the guest emits.
#![allow(clippy::unwrap_used)]

use std::os::fd::{BorrowedFd, OwnedFd};

use vmm_sys_util::eventfd::EventFd;

use crate::memory::{DmaEntry, Prot, SharedMapping};
use crate::mmio::{DeviceLink, LinkError, RegionSpec};
use crate::runner::{Backend, BackendRegion, IrqStats};

struct Map {
    iova: u64,
    size: u64,
    mem: SharedMapping,
    prot: Prot,
}

#[derive(Default)]
pub struct FakePl330 {
    maps: Vec<Map>,
    irq: Option<EventFd>,
    pub exec_negotiated: bool,
    /// An extra region 1 of 2 pages, the first one sparse (mmapped from this memfd).
    pub scratch: Option<OwnedFd>,
    inten: u32,
    es: u32,
    fsrc: u32,
    ftr0: u32,
    inst0: u32,
    inst1: u32,
    pub stats: IrqStats,
}

impl FakePl330 {
    fn find(&self, iova: u64, len: usize) -> Option<&Map> {
        self.maps
            .iter()
            .find(|m| iova >= m.iova && iova + len as u64 <= m.iova + m.size)
    }

    fn read(&self, iova: u64, buf: &mut [u8], exec: bool) -> Option<()> {
        let m = self.find(iova, buf.len())?;
        let allowed = if exec && self.exec_negotiated {
            m.prot.exec
        } else {
            m.prot.read
        };
        if !allowed {
            return None;
        }
        m.mem.read(iova - m.iova, buf).ok()
    }

    fn write(&self, iova: u64, data: &[u8]) {
        let m = self.find(iova, data.len()).unwrap();
        assert!(m.prot.write);
        m.mem.write(iova - m.iova, data).unwrap();
    }

    fn fetch(&self, pc: u32, n: usize) -> Option<Vec<u8>> {
        let mut b = vec![0; n];
        self.read(u64::from(pc), &mut b, true)?;
        Some(b)
    }

    fn execute(&mut self, mut pc: u32) {
        let (mut sar, mut dar, mut ccr) = (0u32, 0u32, 0u32);
        let mut lc = [0u32; 2];
        for _ in 0..1_000_000 {
            let Some(op) = self.fetch(pc, 1) else {
                self.fsrc |= 1;
                self.ftr0 = 1 << 16; // instruction fetch error
                return;
            };
            let op = op[0];
            match op {
                0x00 => return,
                0xbc => {
                    let b = self.fetch(pc, 6).unwrap();
                    let v = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                    match b[1] {
                        0 => sar = v,
                        1 => ccr = v,
                        _ => dar = v,
                    }
                    pc += 6;
                }
                0x20 | 0x22 => {
                    let b = self.fetch(pc, 2).unwrap();
                    lc[usize::from((op >> 1) & 1)] = u32::from(b[1]);
                    pc += 2;
                }
                0x38 | 0x3c => {
                    let b = self.fetch(pc, 2).unwrap();
                    let i = usize::from((op >> 2) & 1);
                    if lc[i] == 0 {
                        pc += 2;
                    } else {
                        lc[i] -= 1;
                        pc -= u32::from(b[1]);
                    }
                }
                0x04 => {
                    // LD + the following ST: one burst
                    let beat = 1u32 << ((ccr >> 1) & 7);
                    let len = beat * (((ccr >> 4) & 0xf) + 1);
                    let mut buf = vec![0; len as usize];
                    self.read(u64::from(sar), &mut buf, false).unwrap();
                    self.write(u64::from(dar), &buf);
                    sar += len;
                    dar += len;
                    pc += 1;
                }
                0x08 => pc += 1,
                0x34 => {
                    let b = self.fetch(pc, 2).unwrap();
                    let ev = u32::from(b[1] >> 3);
                    self.stats.device_events += 1;
                    if self.inten & (1 << ev) != 0 {
                        self.es |= 1 << ev;
                        if let Some(irq) = &self.irq {
                            self.stats.host_interrupts += 1;
                            irq.write(1).unwrap();
                        }
                    }
                    pc += 2;
                }
                _ => {
                    self.fsrc |= 1;
                    self.ftr0 = 1; // undefined instruction
                    return;
                }
            }
        }
    }
}

impl DeviceLink for FakePl330 {
    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), LinkError> {
        assert_eq!((index, data.len()), (0, 4), "only 32-bit register reads");
        let ids = [0x30u32, 0x13, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1];
        let v = match offset {
            0x020 => self.inten,
            0x024 => self.es,
            0x034 => self.fsrc,
            0x040 => self.ftr0,
            0xe00 => (7 << 4) | (15 << 17),
            0xe14 => 3,
            0xfe0..=0xffc => ids[((offset - 0xfe0) / 4) as usize],
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
        Ok(())
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), LinkError> {
        assert_eq!((index, data.len()), (0, 4));
        let v = u32::from_le_bytes(data.try_into().unwrap());
        match offset {
            0x020 => self.inten = v,
            0x02c => self.es &= !v,
            0xd08 => self.inst0 = v,
            0xd0c => self.inst1 = v,
            0xd04 => match (self.inst0 >> 16) & 0xff {
                0xa0 | 0xa2 => self.execute(self.inst1),
                0x01 => {
                    self.fsrc = 0;
                    self.ftr0 = 0;
                }
                _ => {}
            },
            _ => {}
        }
        Ok(())
    }
}

impl Backend for FakePl330 {
    fn exec_negotiated(&self) -> bool {
        self.exec_negotiated
    }

    fn dma_map(&mut self, e: &DmaEntry, fd: BorrowedFd<'_>) -> Result<(), LinkError> {
        self.maps.push(Map {
            iova: e.iova,
            size: e.size,
            mem: SharedMapping::of_fd(fd, e.fd_offset, e.size as usize).unwrap(),
            prot: e.prot,
        });
        Ok(())
    }

    fn regions(&mut self) -> Result<Vec<BackendRegion>, LinkError> {
        let mut v = vec![BackendRegion {
            spec: RegionSpec {
                index: 0,
                size: 0x1000,
                sparse: vec![],
            },
            mmap: None,
        }];
        if let Some(fd) = &self.scratch {
            v.push(BackendRegion {
                spec: RegionSpec {
                    index: 1,
                    size: 0x2000,
                    sparse: vec![(0, 0x1000)],
                },
                mmap: Some((fd.try_clone().unwrap(), 0)),
            });
        }
        Ok(v)
    }

    fn set_irq_trigger(
        &mut self,
        index: u32,
        vector: u32,
        fd: BorrowedFd<'_>,
    ) -> Result<(), LinkError> {
        assert_eq!((index, vector), (0, 0));
        let owned = fd.try_clone_to_owned().unwrap();
        // SAFETY: a freshly duplicated eventfd.
        self.irq = Some(unsafe {
            <EventFd as std::os::fd::FromRawFd>::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(
                owned,
            ))
        });
        Ok(())
    }

    fn set_irq_unmask_fd(&mut self, _: u32, _: u32, _: BorrowedFd<'_>) -> Result<(), LinkError> {
        Ok(())
    }

    fn irq_stats(&mut self, _: u32, _: u32) -> Result<Option<IrqStats>, LinkError> {
        Ok(Some(self.stats))
    }
}
