//! An in-process PL330 stand-in for unit tests of the KVM path (the end-to-end
//! tests use the real backend). Just enough of the device: IDs, CR0/CRD,
//! INTEN/ES/INTCLR, fault registers, the debug interface, and an interpreter
//! for the instructions the guest emits.
#![allow(clippy::unwrap_used)]

use vmm_sys_util::eventfd::EventFd;

use crate::layout::{MCODE_BASE, MCODE_SIZE};
use crate::memory::GuestRam;
use crate::mmio::{DeviceLink, LinkError};

pub struct FakePl330<'a> {
    pub ram: &'a GuestRam,
    pub irq: &'a EventFd,
    pub enforce_exec: bool,
    pub inten: u32,
    pub es: u32,
    pub fsrc: u32,
    pub ftr0: u32,
    pub inst0: u32,
    pub inst1: u32,
    pub events: u64,
}

impl<'a> FakePl330<'a> {
    pub fn new(ram: &'a GuestRam, irq: &'a EventFd) -> Self {
        FakePl330 {
            ram,
            irq,
            enforce_exec: true,
            inten: 0,
            es: 0,
            fsrc: 0,
            ftr0: 0,
            inst0: 0,
            inst1: 0,
            events: 0,
        }
    }

    fn fetch(&self, pc: u32, n: usize) -> Option<Vec<u8>> {
        let exec = (MCODE_BASE..MCODE_BASE + MCODE_SIZE).contains(&u64::from(pc));
        if self.enforce_exec && !exec {
            return None;
        }
        let mut b = vec![0; n];
        self.ram.read(u64::from(pc), &mut b).ok()?;
        Some(b)
    }

    fn run(&mut self, mut pc: u32) {
        let (mut sar, mut dar, mut ccr) = (0u32, 0u32, 0u32);
        let mut lc = [0u32; 2];
        for _ in 0..1_000_000 {
            let Some(op) = self.fetch(pc, 1) else {
                self.fsrc |= 1;
                self.ftr0 = 1 << 16; // instr fetch error
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
                    // LD + the following ST: move one burst
                    let beat = 1u32 << ((ccr >> 1) & 7);
                    let len = beat * (((ccr >> 4) & 0xf) + 1);
                    let mut buf = vec![0; len as usize];
                    self.ram.read(u64::from(sar), &mut buf).unwrap();
                    self.ram.write(u64::from(dar), &buf).unwrap();
                    sar += len;
                    dar += len;
                    pc += 1;
                }
                0x08 => pc += 1,
                0x34 => {
                    let b = self.fetch(pc, 2).unwrap();
                    let ev = u32::from(b[1] >> 3);
                    self.events += 1;
                    if self.inten & (1 << ev) != 0 {
                        self.es |= 1 << ev;
                        self.irq.write(1).unwrap();
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

impl DeviceLink for FakePl330<'_> {
    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), LinkError> {
        assert_eq!((index, data.len()), (0, 4));
        let ids = [0x30u32, 0x13, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1];
        let v = match offset {
            0x020 => self.inten,
            0x024 => self.es,
            0x030 => 0,
            0x034 => self.fsrc,
            0x040 => self.ftr0,
            0xd00 => 0,
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
                0xa0 | 0xa2 => self.run(self.inst1),
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
