//! `model:edu` — a model of QEMU's `edu` educational PCI device (hw/misc/edu.c,
//! docs/specs/edu.rst), served as a VFIO **PCI** device. It exists so the PCI
//! path (config space region, BAR, INTx/MSI, DMA) can be exercised against
//! existing vfio-user clients (QEMU `vfio-user-pci`, cloud-hypervisor
//! `--user-device`, the crates.io `vfio_user` client) without real hardware.
//!
//! # Regions (the 9 vfio-pci region indices; all answer `GET_REGION_INFO`)
//! | index | name | size | flags |
//! |---|---|---|---|
//! | 0 | BAR0 | 1 MiB | READ\|WRITE (trapped: every register lives in page 0) |
//! | 1–5 | BAR1–BAR5 | 0 | — |
//! | 6 | ROM | 0 | — |
//! | 7 | config | 256 | READ\|WRITE (conventional PCI config space) |
//! | 8 | VGA | 0 | — |
//!
//! # Config space
//! Vendor `1234`, device `11e8`, revision `0x10`, class `00ff00` (other),
//! subsystem `1af4:1100` (QEMU's default), interrupt pin A, BAR0 a 32-bit
//! non-prefetchable memory BAR of 1 MiB (sizing by writing all-ones works as on
//! hardware), no ROM (the ROM BAR reads 0), capability list with one MSI
//! capability at 0x40 (64-bit address, 1 vector, no per-vector masking).
//! Writable: command (IO/MEM/MASTER/INTx-disable), cache line size, latency
//! timer, BAR0 address bits, interrupt line, MSI control (enable, MME), MSI
//! address and data. Everything else ignores writes.
//!
//! # BAR0 registers (as edu.rs documents them)
//! | offset | access | register |
//! |---|---|---|
//! | 0x00 | RO | identification `0x010000ed` |
//! | 0x04 | RW | liveness: reads the bitwise inverse of the last write |
//! | 0x08 | RW | factorial: a write computes n! (32-bit, wrapping); status bit 0x01 while computing |
//! | 0x20 | RW | status: bit 0x01 computing (RO), bit 0x80 raise IRQ 0x01 when the factorial is done |
//! | 0x24 | RO | interrupt status |
//! | 0x60 | WO | interrupt raise: status \|= value |
//! | 0x64 | WO | interrupt acknowledge: status &= ~value |
//! | 0x80 | RW | DMA source address (bus address = IOVA) |
//! | 0x88 | RW | DMA destination address |
//! | 0x90 | RW | DMA transfer count |
//! | 0x98 | RW | DMA command: 0x01 start, 0x02 direction (0: RAM → device, 1: device → RAM), 0x04 raise IRQ 0x100 when done |
//!
//! Accesses below 0x80 must be 4 bytes, from 0x80 4 or 8 bytes; others read
//! all-ones and writes are ignored (as edu.c). The device side of a DMA is the
//! 4 KiB buffer at device address `0x40000`; bus addresses are masked to
//! `dma-bits` (default 28, edu's `dma_mask`). Differences from QEMU, on
//! purpose: the factorial is computed synchronously; a DMA runs when the
//! server's event loop next runs pending device work, after the messages it
//! has already received (QEMU: after a 100 ms timer) — a driver polls `RUN` in
//! both cases; a buffer range outside
//! the 4 KiB window is logged and dropped (QEMU aborts with `hw_error`); a DMA
//! fault (unmapped IOVA, or memory mapped without an fd that the client did
//! not serve by DMA_READ/DMA_WRITE) is logged and the transfer skipped, the
//! completion interrupt still raised (as `pci_dma_read` errors are ignored by
//! edu.c); a transfer to memory mapped without an fd stalls (RUN stays set)
//! until the server has exchanged the messages, so the data is in place before
//! RUN clears and the interrupt is raised;
//! DEVICE_RESET resets the registers too (edu.c has no reset handler).
//!
//! # Interrupts (the 5 vfio-pci IRQ indices, flags as Linux vfio-pci reports them)
//! | index | name | count | flags |
//! |---|---|---|---|
//! | 0 | INTx | 1 | EVENTFD\|MASKABLE\|AUTOMASKED (level, EOI by unmask / resample / clear register 0x64) |
//! | 1 | MSI | 1 | EVENTFD\|NORESIZE (edge: one signal per raise) |
//! | 2 | MSI-X | 0 | EVENTFD\|NORESIZE |
//! | 3 | ERR | 0 | EVENTFD\|NORESIZE (conventional PCI: no AER) |
//! | 4 | REQ | 1 | EVENTFD\|NORESIZE (accepted, never signalled) |
//!
//! MSI is used instead of INTx while the MSI index has a trigger eventfd or the
//! MSI enable bit is set in config space (QEMU and cloud-hypervisor write MSI
//! control through to the device, and the kernel's vfio-pci enables MSI when
//! the trigger is set). INTx is *pending* while the interrupt status is
//! non-zero and MSI is not in use; PCI status bit 3 (Interrupt Status) shows
//! exactly that, whatever the command register's INTx-disable bit says (as the
//! PCI spec and edu.c's `pci_set_irq` do: Linux's `pci_check_and_mask_intx()`,
//! used by `uio_pci_generic` and `vfio-pci`'s INTx masking, relies on it). The
//! line is asserted while INTx is pending and the INTx-disable bit is clear.
//!
//! Options: `dma-bits=N` (12..=64, default 28).

use super::{parse_num, ModelSpec};
use crate::device::{
    device_flags, irq_flags, region_flags, Device, DeviceError, DeviceInfo, DmaAccess, DmaMemory,
    IrqAction, IrqCounters, IrqData, IrqInfo, MappedRegion, RegionInfo, SetIrqs,
};
use crate::irq::EmulatedIrqs;

use std::os::fd::RawFd;

/// PCI vendor ID.
pub const EDU_VENDOR: u16 = 0x1234;
/// PCI device ID.
pub const EDU_DEVICE: u16 = 0x11e8;
/// Value of the identification register.
pub const EDU_ID: u32 = 0x0100_00ed;
/// BAR0 size.
pub const EDU_BAR0_SIZE: u64 = 1 << 20;
/// Config space size (conventional PCI).
pub const EDU_CONFIG_SIZE: u64 = 256;
/// Device address of the DMA buffer.
pub const EDU_DMA_START: u64 = 0x40000;
/// Size of the DMA buffer.
pub const EDU_DMA_SIZE: u64 = 4096;
/// Offset of the MSI capability in config space.
pub const EDU_MSI_CAP: usize = 0x40;

/// vfio-pci region indices.
pub mod pci_region {
    /// First BAR.
    pub const BAR0: u32 = 0;
    /// Expansion ROM.
    pub const ROM: u32 = 6;
    /// Config space.
    pub const CONFIG: u32 = 7;
    /// Legacy VGA.
    pub const VGA: u32 = 8;
    /// Number of regions.
    pub const NUM: u32 = 9;
}

/// vfio-pci IRQ indices.
pub mod pci_irq {
    /// Legacy INTx.
    pub const INTX: u32 = 0;
    /// MSI.
    pub const MSI: u32 = 1;
    /// MSI-X.
    pub const MSIX: u32 = 2;
    /// AER error notification.
    pub const ERR: u32 = 3;
    /// Device release request.
    pub const REQ: u32 = 4;
    /// Number of IRQ indices.
    pub const NUM: u32 = 5;
}

/// BAR0 register offsets.
pub mod regs {
    /// Identification.
    pub const ID: u64 = 0x00;
    /// Liveness check.
    pub const LIVENESS: u64 = 0x04;
    /// Factorial.
    pub const FACTORIAL: u64 = 0x08;
    /// Status.
    pub const STATUS: u64 = 0x20;
    /// Interrupt status.
    pub const IRQ_STATUS: u64 = 0x24;
    /// Interrupt raise.
    pub const IRQ_RAISE: u64 = 0x60;
    /// Interrupt acknowledge.
    pub const IRQ_ACK: u64 = 0x64;
    /// DMA source.
    pub const DMA_SRC: u64 = 0x80;
    /// DMA destination.
    pub const DMA_DST: u64 = 0x88;
    /// DMA count.
    pub const DMA_CNT: u64 = 0x90;
    /// DMA command.
    pub const DMA_CMD: u64 = 0x98;
}

/// Status register bits.
pub mod status {
    /// Factorial computation running.
    pub const COMPUTING: u32 = 0x01;
    /// Raise an interrupt when the factorial is done.
    pub const IRQ_FACT: u32 = 0x80;
}

/// DMA command bits.
pub mod dma_cmd {
    /// Start / running.
    pub const RUN: u64 = 0x1;
    /// Direction: set = device buffer → RAM.
    pub const TO_RAM: u64 = 0x2;
    /// Raise interrupt 0x100 when done.
    pub const IRQ: u64 = 0x4;
}

/// Interrupt status bit of a finished factorial.
pub const FACT_IRQ: u32 = 0x1;
/// Interrupt status bit of a finished DMA.
pub const DMA_IRQ: u32 = 0x100;

const PCI_COMMAND: usize = 0x04;
const PCI_COMMAND_INTX_DISABLE: u16 = 1 << 10;
const PCI_STATUS: usize = 0x06;
/// PCI status bit 3, Interrupt Status: the function's INTx is pending
/// (whether or not command bit 10 keeps it off the pin).
pub const PCI_STATUS_INTERRUPT: u16 = 1 << 3;
const MSI_FLAGS_ENABLE: u16 = 0x0001;

/// PCI config space with a per-byte write mask.
#[derive(Debug, Clone)]
struct Config {
    bytes: [u8; EDU_CONFIG_SIZE as usize],
    wmask: [u8; EDU_CONFIG_SIZE as usize],
}

fn put16(b: &mut [u8], off: usize, v: u16) {
    if let Some(s) = b.get_mut(off..off + 2) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    if let Some(s) = b.get_mut(off..off + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

impl Config {
    fn new() -> Self {
        let mut b = [0u8; EDU_CONFIG_SIZE as usize];
        let mut w = [0u8; EDU_CONFIG_SIZE as usize];
        put16(&mut b, 0x00, EDU_VENDOR);
        put16(&mut b, 0x02, EDU_DEVICE);
        // Status: capability list present.
        put16(&mut b, 0x06, 0x0010);
        b[0x08] = 0x10; // revision
        b[0x09] = 0x00; // prog-if
        b[0x0a] = 0xff; // subclass
        b[0x0b] = 0x00; // class
        b[0x0e] = 0x00; // header type 0
        put16(&mut b, 0x2c, 0x1af4);
        put16(&mut b, 0x2e, 0x1100);
        b[0x34] = EDU_MSI_CAP as u8;
        b[0x3d] = 1; // interrupt pin A
                     // MSI capability: id 5, next 0, control: 64-bit capable, 1 vector.
        b[EDU_MSI_CAP] = 0x05;
        b[EDU_MSI_CAP + 1] = 0x00;
        put16(&mut b, EDU_MSI_CAP + 2, 0x0080);
        // Write masks.
        put16(&mut w, PCI_COMMAND, 0x0407);
        w[0x0c] = 0xff;
        w[0x0d] = 0xff;
        // BAR0: 1 MiB, bits 20..31 writable.
        put32(&mut w, 0x10, !((EDU_BAR0_SIZE as u32) - 1));
        w[0x3c] = 0xff;
        put16(&mut w, EDU_MSI_CAP + 2, 0x0071);
        put32(&mut w, EDU_MSI_CAP + 4, 0xffff_fffc);
        put32(&mut w, EDU_MSI_CAP + 8, 0xffff_ffff);
        put16(&mut w, EDU_MSI_CAP + 12, 0xffff);
        Config { bytes: b, wmask: w }
    }

    fn read(&self, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        let s = usize::try_from(offset)
            .ok()
            .and_then(|o| self.bytes.get(o..o.checked_add(data.len())?))
            .ok_or_else(|| DeviceError::Invalid(format!("config read at {offset:#x}")))?;
        data.copy_from_slice(s);
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let o = usize::try_from(offset)
            .ok()
            .filter(|o| {
                o.checked_add(data.len())
                    .is_some_and(|e| e <= self.bytes.len())
            })
            .ok_or_else(|| DeviceError::Invalid(format!("config write at {offset:#x}")))?;
        for (i, v) in data.iter().enumerate() {
            if let (Some(b), Some(m)) = (self.bytes.get_mut(o + i), self.wmask.get(o + i)) {
                *b = (*b & !m) | (v & m);
            }
        }
        Ok(())
    }

    fn u16_at(&self, off: usize) -> u16 {
        match self.bytes.get(off..off + 2) {
            Some(s) => u16::from_le_bytes([s[0], s[1]]),
            None => 0,
        }
    }

    fn msi_enabled(&self) -> bool {
        self.u16_at(EDU_MSI_CAP + 2) & MSI_FLAGS_ENABLE != 0
    }

    fn intx_disabled(&self) -> bool {
        self.u16_at(PCI_COMMAND) & PCI_COMMAND_INTX_DISABLE != 0
    }

    /// Sets or clears status bit 3 (read-only for the client: not in `wmask`).
    fn set_interrupt_status(&mut self, pending: bool) {
        let st = self.u16_at(PCI_STATUS);
        let st = if pending {
            st | PCI_STATUS_INTERRUPT
        } else {
            st & !PCI_STATUS_INTERRUPT
        };
        put16(&mut self.bytes, PCI_STATUS, st);
    }
}

/// The edu registers (BAR0 state).
#[derive(Debug, Clone)]
struct Regs {
    liveness: u32,
    fact: u32,
    status: u32,
    irq_status: u32,
    dma_src: u64,
    dma_dst: u64,
    dma_cnt: u64,
    dma_cmd: u64,
    buf: Vec<u8>,
}

impl Regs {
    fn new() -> Self {
        Regs {
            liveness: 0,
            fact: 0,
            status: 0,
            irq_status: 0,
            dma_src: 0,
            dma_dst: 0,
            dma_cnt: 0,
            dma_cmd: 0,
            buf: vec![0; EDU_DMA_SIZE as usize],
        }
    }
}

/// The edu device.
#[derive(Debug)]
pub struct Edu {
    config: Config,
    regs: Regs,
    dma_mask: u64,
    intx: EmulatedIrqs,
    msi: EmulatedIrqs,
    req: EmulatedIrqs,
    /// MSI messages to send at the next sync.
    msi_pending: u32,
}

/// `n!` modulo 2^32, as edu computes it. Bounded work for any `n` a client
/// writes: the product of k consecutive integers is divisible by k!, so it
/// reaches 0 mod 2^32 after at most 34 factors (34! holds 2^32) and stays 0.
fn factorial(mut n: u32) -> u32 {
    let mut r: u32 = 1;
    while n > 0 && r != 0 {
        r = r.wrapping_mul(n);
        n -= 1;
    }
    r
}

fn le_value(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    for (d, s) in b.iter_mut().zip(data) {
        *d = *s;
    }
    u64::from_le_bytes(b)
}

impl Edu {
    /// From `model:edu[,dma-bits=N]`.
    pub fn from_spec(spec: &ModelSpec) -> Result<Self, DeviceError> {
        let mut bits = 28u64;
        for (k, v) in &spec.options {
            match k.as_str() {
                "dma-bits" => {
                    bits = parse_num(k, v.as_deref())?;
                    if !(12..=64).contains(&bits) {
                        return Err(DeviceError::Invalid(format!(
                            "dma-bits={bits}: must be 12..=64"
                        )));
                    }
                }
                other => {
                    return Err(DeviceError::Invalid(format!(
                        "unknown edu option {other:?} (known: dma-bits=N)"
                    )))
                }
            }
        }
        Ok(Self::new(bits as u32))
    }

    /// A device with a `dma_bits`-bit DMA mask.
    pub fn new(dma_bits: u32) -> Self {
        let dma_mask = if dma_bits >= 64 {
            u64::MAX
        } else {
            (1u64 << dma_bits) - 1
        };
        Edu {
            config: Config::new(),
            regs: Regs::new(),
            dma_mask,
            intx: EmulatedIrqs::new(1, true),
            msi: EmulatedIrqs::new(1, false),
            req: EmulatedIrqs::new(1, false),
            msi_pending: 0,
        }
    }

    fn msi_in_use(&self) -> bool {
        self.config.msi_enabled() || self.msi.held_fds() > 0
    }

    /// INTx pending: an interrupt is raised and MSI is not in use (what
    /// edu.c's `pci_set_irq` asserts, and PCI status bit 3 reports).
    pub fn intx_pending(&self) -> bool {
        self.regs.irq_status != 0 && !self.msi_in_use()
    }

    /// The INTx line level: pending and not disabled by command bit 10.
    pub fn intx_level(&self) -> bool {
        self.intx_pending() && !self.config.intx_disabled()
    }

    fn raise(&mut self, bits: u32) {
        self.regs.irq_status |= bits;
        if self.regs.irq_status != 0 && self.msi_in_use() {
            self.msi_pending = self.msi_pending.saturating_add(1);
        }
    }

    fn lower(&mut self, bits: u32) {
        self.regs.irq_status &= !bits;
    }

    fn sync_irqs(&mut self) {
        self.config.set_interrupt_status(self.intx_pending());
        let level = self.intx_level();
        self.intx.update(&[level]);
        for _ in 0..std::mem::take(&mut self.msi_pending) {
            self.msi.update(&[true]);
            self.msi.update(&[false]);
        }
    }

    fn bar_read(&self, offset: u64, size: usize) -> u64 {
        let ok = if offset < 0x80 {
            size == 4
        } else {
            size == 4 || size == 8
        };
        if !ok {
            return u64::MAX;
        }
        let r = &self.regs;
        match offset {
            regs::ID => u64::from(EDU_ID),
            regs::LIVENESS => u64::from(r.liveness),
            regs::FACTORIAL => u64::from(r.fact),
            regs::STATUS => u64::from(r.status),
            regs::IRQ_STATUS => u64::from(r.irq_status),
            regs::DMA_SRC => r.dma_src,
            regs::DMA_DST => r.dma_dst,
            regs::DMA_CNT => r.dma_cnt,
            regs::DMA_CMD => r.dma_cmd,
            _ => u64::MAX,
        }
    }

    fn bar_write(&mut self, offset: u64, data: &[u8]) {
        let size = data.len();
        let ok = if offset < 0x80 {
            size == 4
        } else {
            size == 4 || size == 8
        };
        if !ok {
            log::debug!("edu: ignored {size}-byte write at {offset:#x}");
            return;
        }
        let val = le_value(data);
        let dma_busy = self.regs.dma_cmd & dma_cmd::RUN != 0;
        match offset {
            regs::LIVENESS => self.regs.liveness = !(val as u32),
            regs::FACTORIAL => {
                if self.regs.status & status::COMPUTING == 0 {
                    // Computed at once: COMPUTING is never observed.
                    self.regs.fact = factorial(val as u32);
                    if self.regs.status & status::IRQ_FACT != 0 {
                        self.raise(FACT_IRQ);
                    }
                }
            }
            regs::STATUS => {
                if val as u32 & status::IRQ_FACT != 0 {
                    self.regs.status |= status::IRQ_FACT;
                } else {
                    self.regs.status &= !status::IRQ_FACT;
                }
            }
            regs::IRQ_RAISE => self.raise(val as u32),
            regs::IRQ_ACK => self.lower(val as u32),
            regs::DMA_SRC if !dma_busy => self.regs.dma_src = val,
            regs::DMA_DST if !dma_busy => self.regs.dma_dst = val,
            regs::DMA_CNT if !dma_busy => self.regs.dma_cnt = val,
            regs::DMA_CMD if !dma_busy && val & dma_cmd::RUN != 0 => self.regs.dma_cmd = val,
            _ => log::debug!("edu: write {val:#x} at {offset:#x} ignored"),
        }
    }

    fn clamp(&self, addr: u64) -> u64 {
        if addr & !self.dma_mask != 0 {
            log::warn!(
                "edu: DMA address {addr:#x} outside the DMA mask {:#x}",
                self.dma_mask
            );
        }
        addr & self.dma_mask
    }

    /// Runs a started DMA transfer (called from `run_pending`).
    fn run_dma(&mut self, mem: &dyn DmaMemory) {
        let cmd = self.regs.dma_cmd;
        if cmd & dma_cmd::RUN == 0 {
            return;
        }
        let cnt = self.regs.dma_cnt;
        let (dev_addr, bus_addr) = if cmd & dma_cmd::TO_RAM != 0 {
            (self.regs.dma_src, self.regs.dma_dst)
        } else {
            (self.regs.dma_dst, self.regs.dma_src)
        };
        let in_window = dev_addr >= EDU_DMA_START
            && cnt > 0
            && dev_addr
                .checked_add(cnt)
                .is_some_and(|e| e <= EDU_DMA_START + EDU_DMA_SIZE);
        if !in_window {
            log::warn!(
                "edu: DMA buffer range {dev_addr:#x}+{cnt:#x} outside {EDU_DMA_START:#x}+{EDU_DMA_SIZE:#x}; transfer dropped"
            );
            self.regs.dma_cmd &= !dma_cmd::RUN;
            return;
        }
        let off = (dev_addr - EDU_DMA_START) as usize;
        let bus = self.clamp(bus_addr);
        let range = off..off + cnt as usize;
        let r = if cmd & dma_cmd::TO_RAM != 0 {
            match self.regs.buf.get(range) {
                Some(b) => mem.dma_write(bus, b),
                None => Ok(()),
            }
        } else {
            match self.regs.buf.get_mut(range) {
                Some(b) => mem.dma_read(bus, b, DmaAccess::Read),
                None => Ok(()),
            }
        };
        match r {
            // Memory the client serves by messages: stall, the server fetches
            // (or stores) it and runs this again; nothing has changed yet.
            Err(e) if e.is_deferred() => return,
            Err(e) => log::warn!("edu: DMA fault: {e}"),
            Ok(()) => {}
        }
        self.regs.dma_cmd &= !dma_cmd::RUN;
        if cmd & dma_cmd::IRQ != 0 {
            self.raise(DMA_IRQ);
        }
    }

    fn irqs_of(&mut self, index: u32) -> Option<&mut EmulatedIrqs> {
        match index {
            pci_irq::INTX => Some(&mut self.intx),
            pci_irq::MSI => Some(&mut self.msi),
            pci_irq::REQ => Some(&mut self.req),
            _ => None,
        }
    }

    fn region(index: u32, name: &str, size: u64, flags: u32) -> RegionInfo {
        RegionInfo {
            index,
            flags,
            size,
            name: name.into(),
            mmap: None,
        }
    }
}

impl Device for Edu {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: device_flags::PCI | device_flags::RESET,
            num_regions: pci_region::NUM,
            num_irqs: pci_irq::NUM,
        }
    }

    fn region_info(&self, index: u32) -> Result<RegionInfo, DeviceError> {
        let rw = region_flags::READ | region_flags::WRITE;
        Ok(match index {
            pci_region::BAR0 => Self::region(index, "BAR0", EDU_BAR0_SIZE, rw),
            1..=5 => Self::region(index, &format!("BAR{index}"), 0, 0),
            pci_region::ROM => Self::region(index, "ROM", 0, 0),
            pci_region::CONFIG => Self::region(index, "config", EDU_CONFIG_SIZE, rw),
            pci_region::VGA => Self::region(index, "VGA", 0, 0),
            _ => {
                return Err(DeviceError::Invalid(format!(
                    "region index {index} out of range"
                )))
            }
        })
    }

    fn irq_info(&self, index: u32) -> Result<IrqInfo, DeviceError> {
        let (flags, count) = match index {
            pci_irq::INTX => (
                irq_flags::EVENTFD | irq_flags::MASKABLE | irq_flags::AUTOMASKED,
                1,
            ),
            pci_irq::MSI | pci_irq::REQ => (irq_flags::EVENTFD | irq_flags::NORESIZE, 1),
            pci_irq::MSIX | pci_irq::ERR => (irq_flags::EVENTFD | irq_flags::NORESIZE, 0),
            _ => {
                return Err(DeviceError::Invalid(format!(
                    "IRQ index {index} out of range"
                )))
            }
        };
        Ok(IrqInfo {
            index,
            flags,
            count,
        })
    }

    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        match index {
            pci_region::BAR0 => {
                let v = self.bar_read(offset, data.len());
                let b = v.to_le_bytes();
                for (d, s) in data
                    .iter_mut()
                    .zip(b.iter().chain(std::iter::repeat(&0xff)))
                {
                    *d = *s;
                }
                Ok(())
            }
            pci_region::CONFIG => self.config.read(offset, data),
            _ => Err(DeviceError::Invalid(format!("region {index} is empty"))),
        }
    }

    fn region_write(
        &mut self,
        index: u32,
        offset: u64,
        data: &[u8],
        _mem: &dyn DmaMemory,
    ) -> Result<(), DeviceError> {
        let r = match index {
            pci_region::BAR0 => {
                self.bar_write(offset, data);
                Ok(())
            }
            pci_region::CONFIG => self.config.write(offset, data),
            _ => Err(DeviceError::Invalid(format!("region {index} is empty"))),
        };
        self.sync_irqs();
        r
    }

    fn dma_map(&mut self, _region: &MappedRegion) -> Result<(), DeviceError> {
        Ok(())
    }

    fn dma_unmap(&mut self, _region: &MappedRegion) -> Result<(), DeviceError> {
        Ok(())
    }

    fn set_irqs(&mut self, req: SetIrqs) -> Result<(), DeviceError> {
        let index = req.index;
        let r = match self.irqs_of(index) {
            Some(irqs) => irqs.set_irqs(SetIrqs { index: 0, ..req }),
            None => {
                if req.action == IrqAction::Trigger
                    && req.count == 0
                    && matches!(req.data, IrqData::None)
                {
                    Ok(())
                } else {
                    Err(DeviceError::Invalid(format!(
                        "IRQ index {index} has no vectors"
                    )))
                }
            }
        };
        // Switching between INTx and MSI changes where the status goes.
        self.sync_irqs();
        r
    }

    fn unmask_irq(&mut self, index: u32, vector: u32) -> Result<(), DeviceError> {
        if vector != 0 {
            return Err(DeviceError::Invalid(format!("IRQ {index} vector {vector}")));
        }
        match index {
            pci_irq::INTX => self.intx.unmask(0),
            // Edge vectors are never masked: nothing to do.
            pci_irq::MSI | pci_irq::REQ => Ok(()),
            _ => Err(DeviceError::Invalid(format!(
                "IRQ index {index} has no vectors"
            ))),
        }
    }

    fn reset(&mut self) -> Result<(), DeviceError> {
        self.config = Config::new();
        self.regs = Regs::new();
        self.msi_pending = 0;
        self.sync_irqs();
        Ok(())
    }

    fn irq_counters(&self, index: u32, vector: u32) -> Option<IrqCounters> {
        if vector != 0 {
            return None;
        }
        match index {
            pci_irq::INTX => self.intx.counters(0),
            pci_irq::MSI => self.msi.counters(0),
            pci_irq::REQ => self.req.counters(0),
            _ => None,
        }
    }

    fn poll_fds(&self) -> Vec<(RawFd, u64)> {
        self.intx.poll_fds()
    }

    fn on_poll_fd(&mut self, token: u64, _mem: &dyn DmaMemory) -> Result<(), DeviceError> {
        self.intx.on_poll_fd(token)?;
        Ok(())
    }

    fn run_pending(&mut self, mem: &dyn DmaMemory) -> bool {
        self.run_dma(mem);
        self.sync_irqs();
        false
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::device::NoDmaMemory;
    use std::cell::RefCell;
    use std::fs::File;
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};

    #[test]
    fn factorial_is_bounded_for_any_client_value() {
        // Same result as the plain wrapping loop for small n...
        let naive = |n: u32| (1..=n).fold(1u32, |r, k| r.wrapping_mul(k));
        for n in 0..200 {
            assert_eq!(factorial(n), naive(n), "{n}!");
        }
        assert_eq!(factorial(5), 120);
        assert_eq!(factorial(12), 479_001_600);
        // ...and a client writing u32::MAX no longer makes the backend
        // multiply four billion times inside one REGION_WRITE.
        assert_eq!(factorial(u32::MAX), 0);
        assert_eq!(factorial(33), naive(33));
        assert_ne!(factorial(33), 0);
        assert_eq!(factorial(34), 0);
    }

    fn rd32(d: &mut Edu, region: u32, off: u64) -> u32 {
        let mut b = [0u8; 4];
        d.region_read(region, off, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    fn wr32(d: &mut Edu, region: u32, off: u64, v: u32) {
        d.region_write(region, off, &v.to_le_bytes(), &NoDmaMemory)
            .unwrap();
    }

    fn eventfd() -> OwnedFd {
        // SAFETY: eventfd creates a new descriptor we take ownership of.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fd is a fresh, owned descriptor.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    fn count(fd: &OwnedFd) -> u64 {
        let mut f = File::from(fd.try_clone().unwrap());
        let mut b = [0u8; 8];
        match f.read(&mut b) {
            Ok(8) => u64::from_ne_bytes(b),
            _ => 0,
        }
    }

    fn set_trigger(d: &mut Edu, index: u32, fd: &OwnedFd) {
        d.set_irqs(SetIrqs {
            index,
            start: 0,
            count: 1,
            action: IrqAction::Trigger,
            data: IrqData::Eventfd(vec![Some(fd.try_clone().unwrap())]),
        })
        .unwrap();
    }

    #[test]
    fn config_space_identity_and_bar_sizing() {
        let mut d = Edu::new(28);
        assert_eq!(rd32(&mut d, 7, 0), 0x11e8_1234);
        assert_eq!(rd32(&mut d, 7, 0x08) >> 8, 0x00ff00);
        assert_eq!(rd32(&mut d, 7, 0x2c), 0x1100_1af4);
        // BAR sizing: write all-ones, read back the size mask.
        wr32(&mut d, 7, 0x10, 0xffff_ffff);
        assert_eq!(rd32(&mut d, 7, 0x10), 0xfff0_0000);
        wr32(&mut d, 7, 0x10, 0xfe01_2345);
        assert_eq!(rd32(&mut d, 7, 0x10), 0xfe00_0000);
        // Unused BARs and the ROM BAR stay 0.
        for off in [0x14, 0x18, 0x1c, 0x20, 0x24, 0x30] {
            wr32(&mut d, 7, off, 0xffff_ffff);
            assert_eq!(rd32(&mut d, 7, off), 0, "{off:#x}");
        }
        // Vendor ID is read-only.
        wr32(&mut d, 7, 0, 0);
        assert_eq!(rd32(&mut d, 7, 0), 0x11e8_1234);
        // Capability list: MSI at 0x40, 64-bit, 1 vector.
        assert_eq!(rd32(&mut d, 7, 0x04) >> 16 & 0x10, 0x10);
        let mut b = [0u8; 1];
        d.region_read(7, 0x34, &mut b).unwrap();
        assert_eq!(b[0], 0x40);
        assert_eq!(rd32(&mut d, 7, 0x40), 0x0080_0005);
        assert!(d.region_read(7, 0xff, &mut [0u8; 2]).is_err());
        // All 9 regions and 5 IRQ indices answer.
        for i in 0..9 {
            d.region_info(i).unwrap();
        }
        assert!(d.region_info(9).is_err());
        assert_eq!(d.irq_info(0).unwrap().count, 1);
        assert_eq!(d.irq_info(2).unwrap().count, 0);
        assert!(d.irq_info(5).is_err());
    }

    #[test]
    fn registers() {
        let mut d = Edu::new(28);
        assert_eq!(rd32(&mut d, 0, 0), EDU_ID);
        wr32(&mut d, 0, 4, 0x1234_5678);
        assert_eq!(rd32(&mut d, 0, 4), !0x1234_5678);
        wr32(&mut d, 0, 8, 10);
        assert_eq!(rd32(&mut d, 0, 8), 3_628_800);
        wr32(&mut d, 0, 8, 13);
        assert_eq!(rd32(&mut d, 0, 8), 6_227_020_800u64 as u32);
        // Wrong sizes: all-ones, writes ignored.
        let mut b = [0u8; 2];
        d.region_read(0, 0, &mut b).unwrap();
        assert_eq!(b, [0xff, 0xff]);
        d.region_write(0, 4, &[1, 2], &NoDmaMemory).unwrap();
        assert_eq!(rd32(&mut d, 0, 4), !0x1234_5678);
        // 8-byte DMA registers.
        d.region_write(0, 0x80, &0x1_2345_6789u64.to_le_bytes(), &NoDmaMemory)
            .unwrap();
        let mut b8 = [0u8; 8];
        d.region_read(0, 0x80, &mut b8).unwrap();
        assert_eq!(u64::from_le_bytes(b8), 0x1_2345_6789);
        assert_eq!(rd32(&mut d, 0, 0x84), u32::MAX);
        assert_eq!(rd32(&mut d, 0, 0x1000), u32::MAX);
    }

    #[test]
    fn intx_level_and_msi_edges() {
        let mut d = Edu::new(28);
        let intx = eventfd();
        set_trigger(&mut d, pci_irq::INTX, &intx);
        wr32(&mut d, 0, regs::IRQ_RAISE, 0x10);
        assert!(d.intx_level());
        assert_eq!(count(&intx), 1);
        // Automasked: a second raise does not signal again.
        wr32(&mut d, 0, regs::IRQ_RAISE, 0x20);
        assert_eq!(count(&intx), 0);
        wr32(&mut d, 0, regs::IRQ_ACK, 0x10);
        assert!(d.intx_level());
        d.unmask_irq(0, 0).unwrap();
        assert_eq!(count(&intx), 1, "still pending: refire");
        wr32(&mut d, 0, regs::IRQ_ACK, 0x20);
        assert!(!d.intx_level());
        assert_eq!(rd32(&mut d, 0, regs::IRQ_STATUS), 0);
        d.unmask_irq(0, 0).unwrap();
        assert_eq!(count(&intx), 0);
        // INTx disable in the command register drops the line.
        wr32(&mut d, 7, 0x04, 1 << 10);
        wr32(&mut d, 0, regs::IRQ_RAISE, 1);
        assert!(!d.intx_level());
        wr32(&mut d, 0, regs::IRQ_ACK, 1);
        wr32(&mut d, 7, 0x04, 0);
        // MSI: every raise is one message; INTx stays low.
        let msi = eventfd();
        set_trigger(&mut d, pci_irq::MSI, &msi);
        wr32(&mut d, 0, regs::IRQ_RAISE, 1);
        wr32(&mut d, 0, regs::IRQ_RAISE, 2);
        assert!(!d.intx_level());
        assert_eq!(count(&msi), 2);
        assert_eq!(d.irq_counters(1, 0).unwrap().host_interrupts, 2);
        // MSI-X/ERR: only "disable" is accepted.
        d.set_irqs(SetIrqs {
            index: 2,
            start: 0,
            count: 0,
            action: IrqAction::Trigger,
            data: IrqData::None,
        })
        .unwrap();
        assert!(d
            .set_irqs(SetIrqs {
                index: 3,
                start: 0,
                count: 1,
                action: IrqAction::Trigger,
                data: IrqData::None,
            })
            .is_err());
        // Reset clears everything.
        d.reset().unwrap();
        assert_eq!(rd32(&mut d, 0, regs::IRQ_STATUS), 0);
        assert_eq!(rd32(&mut d, 7, 0x10), 0);
    }

    fn status_reg(d: &mut Edu) -> u16 {
        (rd32(d, pci_region::CONFIG, 0x04) >> 16) as u16
    }

    /// PCI status bit 3 follows the pending INTx, whatever command bit 10
    /// says (what `pci_check_and_mask_intx()` reads), and never with MSI.
    #[test]
    fn status_interrupt_bit_follows_pending_intx() {
        let mut d = Edu::new(28);
        assert_eq!(status_reg(&mut d) & PCI_STATUS_INTERRUPT, 0);
        wr32(&mut d, 0, regs::IRQ_RAISE, 0x40);
        assert_ne!(status_reg(&mut d) & PCI_STATUS_INTERRUPT, 0);
        assert!(d.intx_level());
        // INTx disabled (Linux's PCI 2.3 masking): the pin drops, the status stays.
        wr32(
            &mut d,
            pci_region::CONFIG,
            0x04,
            u32::from(PCI_COMMAND_INTX_DISABLE),
        );
        assert!(!d.intx_level());
        assert_ne!(status_reg(&mut d) & PCI_STATUS_INTERRUPT, 0);
        // The status bit is read-only for the client.
        d.region_write(pci_region::CONFIG, 0x06, &[0, 0], &NoDmaMemory)
            .unwrap();
        assert_ne!(status_reg(&mut d) & PCI_STATUS_INTERRUPT, 0);
        // Acked: clear, while disabled too; the capability-list bit is kept.
        wr32(&mut d, 0, regs::IRQ_ACK, 0x40);
        let st = status_reg(&mut d);
        assert_eq!(st & PCI_STATUS_INTERRUPT, 0);
        assert_eq!(st & 0x10, 0x10);
        // Raised while disabled: pending, reported, not on the pin; enabling
        // INTx again puts it on the pin.
        wr32(&mut d, 0, regs::IRQ_RAISE, 1);
        assert_ne!(status_reg(&mut d) & PCI_STATUS_INTERRUPT, 0);
        assert!(!d.intx_level());
        wr32(&mut d, pci_region::CONFIG, 0x04, 0);
        assert!(d.intx_level());
        // Reset: clear.
        d.reset().unwrap();
        assert_eq!(status_reg(&mut d) & PCI_STATUS_INTERRUPT, 0);
        // MSI in use: interrupts are messages, no INTx status.
        let msi = eventfd();
        set_trigger(&mut d, pci_irq::MSI, &msi);
        wr32(&mut d, 0, regs::IRQ_RAISE, 1);
        assert_eq!(count(&msi), 1);
        assert_eq!(status_reg(&mut d) & PCI_STATUS_INTERRUPT, 0);
    }

    struct FakeMem(RefCell<Vec<u8>>);
    impl DmaMemory for FakeMem {
        fn dma_read(
            &self,
            iova: u64,
            buf: &mut [u8],
            _a: DmaAccess,
        ) -> Result<(), crate::device::DmaFault> {
            let m = self.0.borrow();
            buf.copy_from_slice(&m[iova as usize..iova as usize + buf.len()]);
            Ok(())
        }
        fn dma_write(&self, iova: u64, data: &[u8]) -> Result<(), crate::device::DmaFault> {
            self.0.borrow_mut()[iova as usize..iova as usize + data.len()].copy_from_slice(data);
            Ok(())
        }
    }

    #[test]
    fn dma_round_trip_and_window() {
        let mut d = Edu::new(28);
        let mem = FakeMem(RefCell::new(vec![0; 0x4000]));
        mem.0.borrow_mut()[0x100..0x108].copy_from_slice(b"edu-dma!");
        // RAM -> device buffer.
        wr32(&mut d, 0, regs::DMA_SRC, 0x100);
        wr32(&mut d, 0, regs::DMA_DST, 0x40000);
        wr32(&mut d, 0, regs::DMA_CNT, 8);
        wr32(&mut d, 0, regs::DMA_CMD, 0x1 | 0x4);
        assert_eq!(
            rd32(&mut d, 0, regs::DMA_CMD) & 1,
            1,
            "running until run_pending"
        );
        assert!(!d.run_pending(&mem));
        assert_eq!(rd32(&mut d, 0, regs::DMA_CMD) & 1, 0);
        assert_eq!(rd32(&mut d, 0, regs::IRQ_STATUS), DMA_IRQ);
        // Device buffer -> RAM elsewhere.
        wr32(&mut d, 0, regs::DMA_SRC, 0x40000);
        wr32(&mut d, 0, regs::DMA_DST, 0x2000);
        wr32(&mut d, 0, regs::DMA_CMD, 0x1 | 0x2);
        d.run_pending(&mem);
        assert_eq!(&mem.0.borrow()[0x2000..0x2008], b"edu-dma!");
        // Outside the 4 KiB window: dropped, RUN cleared.
        wr32(&mut d, 0, regs::DMA_SRC, 0x40ffc);
        wr32(&mut d, 0, regs::DMA_DST, 0x3000);
        wr32(&mut d, 0, regs::DMA_CMD, 0x3);
        d.run_pending(&mem);
        assert_eq!(rd32(&mut d, 0, regs::DMA_CMD) & 1, 0);
        assert_eq!(&mem.0.borrow()[0x3000..0x3008], &[0u8; 8]);
        // Faults on an unmapped IOVA are survived.
        wr32(&mut d, 0, regs::DMA_SRC, 0x40000);
        wr32(&mut d, 0, regs::DMA_CMD, 0x3);
        d.run_pending(&NoDmaMemory);
        assert_eq!(rd32(&mut d, 0, regs::DMA_CMD) & 1, 0);
    }

    #[test]
    fn options() {
        assert!(Edu::from_spec(&"edu,dma-bits=32".parse().unwrap()).is_ok());
        assert!(Edu::from_spec(&"edu,dma-bits=4".parse().unwrap()).is_err());
        assert!(Edu::from_spec(&"edu,bogus".parse().unwrap()).is_err());
    }
}
