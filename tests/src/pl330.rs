//! Driving the PL330 model's register frame (region 0) from a test, over
//! any client that can read and write 32-bit registers ([`Regs`]): the debug
//! instruction interface (DBGINST0/1 + DBGCMD) and the copy programs' CCR.
//! Register offsets: `vfio_sidecar::model::pl330::regs`.

use vfio_sidecar::model::pl330::asm::dbginst;
use vfio_sidecar::model::pl330::insn::Insn;
use vfio_sidecar::model::pl330::regs::{DBGCMD, DBGINST0, DBGINST1};
use vfio_sidecar_protocol::client::Client;
use vfio_sidecar_protocol::error::ClientError;

/// CCR of the copy programs: 8-byte beats, 16-beat bursts, source and
/// destination incrementing.
pub const CCR_COPY: u32 = 1 | (3 << 1) | (15 << 4) | (1 << 14) | (3 << 15) | (15 << 18);

/// 32-bit access to region 0. The `try_` forms return the client's error;
/// the others panic on it, naming the register.
pub trait Regs {
    /// What a failed access reports.
    type Error: std::fmt::Debug;

    /// Writes `v` at `off`.
    fn try_write32(&mut self, off: u64, v: u32) -> Result<(), Self::Error>;

    /// Reads the register at `off`.
    fn try_read32(&mut self, off: u64) -> Result<u32, Self::Error>;

    /// Writes `v` at `off` (panics on failure).
    fn write32(&mut self, off: u64, v: u32) {
        if let Err(e) = self.try_write32(off, v) {
            panic!("register write {off:#x} = {v:#x}: {e:?}");
        }
    }

    /// Reads the register at `off` (panics on failure).
    fn read32(&mut self, off: u64) -> u32 {
        self.try_read32(off)
            .unwrap_or_else(|e| panic!("register read {off:#x}: {e:?}"))
    }

    /// Executes `insn` through the debug interface: on `channel`, or on the
    /// manager thread (`None`).
    fn try_debug_insn(&mut self, insn: Insn, channel: Option<u8>) -> Result<(), Self::Error> {
        let (d0, d1) = dbginst(insn, channel);
        self.try_write32(DBGINST0, d0)?;
        self.try_write32(DBGINST1, d1)?;
        self.try_write32(DBGCMD, 0)
    }

    /// [`Regs::try_debug_insn`], panicking on failure.
    fn debug_insn(&mut self, insn: Insn, channel: Option<u8>) {
        if let Err(e) = self.try_debug_insn(insn, channel) {
            panic!("debug instruction {insn:?}: {e:?}");
        }
    }

    /// DMAGO: starts channel 0 (secure) at `addr`, as Linux does.
    fn try_dmago(&mut self, addr: u32) -> Result<(), Self::Error> {
        let go = Insn::Go {
            chan: 0,
            ns: false,
            addr,
        };
        self.try_debug_insn(go, None)
    }

    /// [`Regs::try_dmago`], panicking on failure.
    fn dmago(&mut self, addr: u32) {
        if let Err(e) = self.try_dmago(addr) {
            panic!("DMAGO {addr:#x}: {e:?}");
        }
    }
}

impl Regs for Client {
    type Error = ClientError;

    fn try_write32(&mut self, off: u64, v: u32) -> Result<(), ClientError> {
        self.region_write(0, off, &v.to_le_bytes())
    }

    fn try_read32(&mut self, off: u64) -> Result<u32, ClientError> {
        let v = self.region_read(0, off, 4)?;
        let b: [u8; 4] = v
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .unwrap_or_else(|| panic!("4-byte read of {off:#x} returned {} bytes", v.len()));
        Ok(u32::from_le_bytes(b))
    }
}
