//! A small DMA-330 microcode assembler, for tests, fuzzing and benchmarks.
//!
//! [`Asm`] emits single instructions; [`linux_mem_to_mem`] builds exactly the
//! program Linux's `drivers/dma/pl330.c` builds for a mem-to-mem request
//! (`_setup_req` → `_setup_xfer` → `_setup_loops` → `_loop`/`_bursts`/`_dregs`),
//! and [`linux_memcpy_burst`] picks the burst size and length the way
//! `pl330_prep_dma_memcpy` does.

use thiserror::Error;

use super::insn::{AddrReg, Cond, Insn, LoopCounter, MovReg, WfpKind};
use super::regs::Ccr;

/// Linux's `MCODE_BUFF_PER_REQ`: the microcode of one request must fit.
pub const MCODE_BUFF_PER_REQ: usize = 256;

/// Assembly errors.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AsmError {
    /// DMALP takes 1..=256 iterations.
    #[error("loop count {0} not in 1..=256")]
    LoopCount(u32),
    /// The program is larger than Linux's per-request buffer (Linux: -ENOMEM).
    #[error("program of {0} bytes exceeds the {MCODE_BUFF_PER_REQ}-byte request buffer")]
    TooLarge(usize),
    /// Burst settings out of range.
    #[error("invalid burst: size 2^{size_log2}, length {len}")]
    BadBurst {
        /// log2 of the beat size.
        size_log2: u32,
        /// Beats per burst.
        len: u32,
    },
}

/// A microcode buffer with one method per instruction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Asm {
    buf: Vec<u8>,
}

impl Asm {
    /// An empty program.
    pub fn new() -> Self {
        Asm::default()
    }
    /// The bytes so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
    /// Consumes the assembler, returning the bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
    /// Current offset (length so far).
    pub fn offset(&self) -> usize {
        self.buf.len()
    }
    /// Appends any instruction.
    pub fn insn(&mut self, i: Insn) -> &mut Self {
        let (b, n) = i.encode();
        self.buf.extend_from_slice(&b[..n]);
        self
    }
    /// Appends raw bytes (for invalid encodings in tests).
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    /// DMAEND.
    pub fn end(&mut self) -> &mut Self {
        self.insn(Insn::End)
    }
    /// DMAKILL.
    pub fn kill(&mut self) -> &mut Self {
        self.insn(Insn::Kill)
    }
    /// DMANOP.
    pub fn nop(&mut self) -> &mut Self {
        self.insn(Insn::Nop)
    }
    /// DMARMB.
    pub fn rmb(&mut self) -> &mut Self {
        self.insn(Insn::Rmb)
    }
    /// DMAWMB.
    pub fn wmb(&mut self) -> &mut Self {
        self.insn(Insn::Wmb)
    }
    /// DMALD\[S|B\].
    pub fn ld(&mut self, c: Cond) -> &mut Self {
        self.insn(Insn::Ld(c))
    }
    /// DMAST\[S|B\].
    pub fn st(&mut self, c: Cond) -> &mut Self {
        self.insn(Insn::St(c))
    }
    /// DMASTZ.
    pub fn stz(&mut self) -> &mut Self {
        self.insn(Insn::Stz)
    }
    /// DMALDP\<S|B\>.
    pub fn ldp(&mut self, burst: bool, periph: u8) -> &mut Self {
        self.insn(Insn::Ldp { burst, periph })
    }
    /// DMASTP\<S|B\>.
    pub fn stp(&mut self, burst: bool, periph: u8) -> &mut Self {
        self.insn(Insn::Stp { burst, periph })
    }
    /// DMAWFP.
    pub fn wfp(&mut self, kind: WfpKind, periph: u8) -> &mut Self {
        self.insn(Insn::Wfp { kind, periph })
    }
    /// DMAFLUSHP.
    pub fn flushp(&mut self, periph: u8) -> &mut Self {
        self.insn(Insn::FlushP { periph })
    }
    /// DMASEV.
    pub fn sev(&mut self, event: u8) -> &mut Self {
        self.insn(Insn::Sev { event })
    }
    /// DMAWFE.
    pub fn wfe(&mut self, event: u8) -> &mut Self {
        self.insn(Insn::Wfe {
            event,
            invalidate: false,
        })
    }
    /// DMAMOV.
    pub fn mov(&mut self, reg: MovReg, imm: u32) -> &mut Self {
        self.insn(Insn::Mov { reg, imm })
    }
    /// DMAADDH.
    pub fn addh(&mut self, reg: AddrReg, imm: u16) -> &mut Self {
        self.insn(Insn::AddH { reg, imm })
    }
    /// DMAADNH (adds `imm - 0x10000`).
    pub fn adnh(&mut self, reg: AddrReg, imm: u16) -> &mut Self {
        self.insn(Insn::AdnH { reg, imm })
    }
    /// DMAGO (only valid through the debug interface).
    pub fn go(&mut self, chan: u8, ns: bool, addr: u32) -> &mut Self {
        self.insn(Insn::Go { chan, ns, addr })
    }
    /// DMALP with `iterations` (1..=256); the counter holds `iterations - 1`.
    pub fn lp(&mut self, lc: LoopCounter, iterations: u32) -> Result<&mut Self, AsmError> {
        if !(1..=256).contains(&iterations) {
            return Err(AsmError::LoopCount(iterations));
        }
        Ok(self.insn(Insn::Lp {
            lc,
            count: (iterations - 1) as u8,
        }))
    }
    /// DMALPEND jumping back to `target` (an offset in this program, which
    /// must be within 255 bytes before this instruction).
    pub fn lpend(&mut self, lc: LoopCounter, cond: Cond, target: usize) -> &mut Self {
        let jump = self.offset().saturating_sub(target).min(255) as u8;
        self.insn(Insn::LpEnd {
            lc,
            cond,
            forever: false,
            jump,
        })
    }
    /// DMALPFE-style end of a loop forever, jumping back to `target`.
    pub fn lpfe(&mut self, target: usize) -> &mut Self {
        let jump = self.offset().saturating_sub(target).min(255) as u8;
        self.insn(Insn::LpEnd {
            lc: LoopCounter::Lc0,
            cond: Cond::Always,
            forever: true,
            jump,
        })
    }
}

/// Which generation of Linux's program builder to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinuxShape {
    /// Older kernels: only whole bursts (`len` must be a multiple of the
    /// burst bytes; any remainder is not transferred, as in those kernels).
    Legacy,
    /// Kernels with `_dregs`: the remainder is moved by a second DMAMOV CCR
    /// with a shorter burst, then one more DMALD/DMAST.
    Dregs,
}

/// A mem-to-mem request as `pl330_submit_req` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinuxXfer {
    /// Source bus address.
    pub src: u32,
    /// Destination bus address.
    pub dst: u32,
    /// Bytes to copy.
    pub len: u32,
    /// log2 of the beat size (`brst_size`), 0..=7.
    pub burst_size_log2: u32,
    /// Beats per burst (`brst_len`), 1..=16.
    pub burst_len: u32,
    /// Extra CCR bits (prot/cache; Linux sets SRCNS|DSTNS for a non-secure manager).
    pub ccr_extra: u32,
    /// PeriphID revision: 0 (r0p0) adds DMARMB/DMAWMB around each load/store.
    pub revision: u8,
    /// Event the channel signals at the end (`thrd->ev`).
    pub event: u8,
    /// Builder generation.
    pub shape: LinuxShape,
}

impl LinuxXfer {
    /// The request Linux's `pl330_prep_dma_memcpy` makes for a copy of `len`
    /// bytes on a controller configured as `cfg`: the burst from
    /// [`linux_memcpy_burst`], the current (`Dregs`) builder, no extra CCR
    /// bits, the end signalled on `event`.
    pub fn memcpy(cfg: &super::Pl330Config, src: u32, dst: u32, len: u32, event: u8) -> Self {
        let (burst_size_log2, burst_len) = linux_memcpy_burst(
            src,
            dst,
            len,
            cfg.data_width_bits,
            cfg.data_buffer_lines,
            u32::from(cfg.channels),
        );
        LinuxXfer {
            src,
            dst,
            len,
            burst_size_log2,
            burst_len,
            ccr_extra: 0,
            revision: cfg.revision,
            event,
            shape: LinuxShape::Dregs,
        }
    }
}

/// `pl330_prep_dma_memcpy`: the largest beat size (up to the bus width) that
/// divides `src`, `dst` and `len`, and `get_burst_len` (bus bytes ×
/// `data_buf_dep / num_chan` beats of that size, at most 16; 1 when the beat
/// is narrower than the bus). Returns `(burst_size_log2, burst_len)`.
pub fn linux_memcpy_burst(
    src: u32,
    dst: u32,
    len: u32,
    data_width_bits: u32,
    data_buf_dep: u32,
    num_chan: u32,
) -> (u32, u32) {
    let bus = (data_width_bits / 8).max(1);
    let mut burst = bus;
    while burst > 1 && (src | dst | len) & (burst - 1) != 0 {
        burst /= 2;
    }
    let size_log2 = burst.trailing_zeros();
    let mut blen = bus * (data_buf_dep / num_chan.max(1));
    blen >>= size_log2;
    blen = blen.clamp(1, 16);
    if burst * 8 < data_width_bits {
        blen = 1;
    }
    (size_log2, blen)
}

/// Emits `cyc` mem-to-mem bursts (`_ldst_memtomem`).
fn ldst_memtomem(a: &mut Asm, revision: u8, cyc: u32) {
    for _ in 0..cyc {
        if revision >= 1 {
            a.ld(Cond::Always).st(Cond::Always);
        } else {
            a.ld(Cond::Always).rmb().st(Cond::Always).wmb();
        }
    }
}

/// `_loop`: emits loops for up to `bursts` bursts; returns the bursts covered.
fn linux_loop(a: &mut Asm, x: &LinuxXfer, bursts: u64) -> u64 {
    if bursts == 1 {
        ldst_memtomem(a, x.revision, 1);
        return 1;
    }
    let (lcnt1, lcnt0, mut cyc): (u64, u64, u64) = if bursts >= 256 * 256 {
        (256, 256, bursts / 256 / 256)
    } else if bursts > 256 {
        (256, bursts / 256, 1)
    } else {
        (bursts, 0, 1)
    };
    let szbrst: u64 = if x.revision >= 1 { 2 } else { 4 };
    let (mut szlp, mut szlpend) = (2u64, 2u64);
    if lcnt0 != 0 {
        szlp *= 2;
        szlpend *= 2;
    }
    let cycmax = (255 - (szlp + szlpend)) / szbrst;
    cyc = cyc.min(cycmax);

    let mut ljmp0 = 0;
    if lcnt0 != 0 {
        // Counts are 1..=256 here, so lp() cannot fail.
        let _ = a.lp(LoopCounter::Lc0, lcnt0 as u32);
        ljmp0 = a.offset();
    }
    let _ = a.lp(LoopCounter::Lc1, lcnt1 as u32);
    let ljmp1 = a.offset();
    ldst_memtomem(a, x.revision, cyc as u32);
    a.lpend(LoopCounter::Lc1, Cond::Always, ljmp1);
    if lcnt0 != 0 {
        a.lpend(LoopCounter::Lc0, Cond::Always, ljmp0);
    }
    let mut covered = lcnt1 * cyc;
    if lcnt0 != 0 {
        covered *= lcnt0;
    }
    covered
}

/// Builds the microcode Linux's `_setup_req` builds for a mem-to-mem
/// request: `DMAMOV CCR; DMAMOV SAR; DMAMOV DAR;` loops of `DMALD; DMAST`
/// (with `DMARMB`/`DMAWMB` on r0p0), for [`LinuxShape::Dregs`] a tail
/// `DMAMOV CCR` (burst length = remaining beats) + one `DMALD; DMAST`, then
/// `DMASEV event; DMAEND`. Fails like Linux when the program exceeds
/// [`MCODE_BUFF_PER_REQ`].
pub fn linux_mem_to_mem(x: &LinuxXfer) -> Result<Vec<u8>, AsmError> {
    if x.burst_size_log2 > 7 || !(1..=16).contains(&x.burst_len) {
        return Err(AsmError::BadBurst {
            size_log2: x.burst_size_log2,
            len: x.burst_len,
        });
    }
    let ccr = Ccr::linux(x.burst_size_log2, x.burst_len, x.ccr_extra);
    let size = 1u64 << x.burst_size_log2;
    let burst_bytes = size * u64::from(x.burst_len);
    let mut a = Asm::new();
    a.mov(MovReg::Ccr, ccr);
    a.mov(MovReg::Sar, x.src);
    a.mov(MovReg::Dar, x.dst);
    let mut bursts = u64::from(x.len) / burst_bytes;
    let dregs = (u64::from(x.len) - bursts * burst_bytes) / size;
    while bursts > 0 {
        let covered = linux_loop(&mut a, x, bursts);
        bursts -= covered;
    }
    if x.shape == LinuxShape::Dregs && dregs > 0 {
        let len_bits = ((dregs as u32 - 1) & 0xf) << 4 | ((dregs as u32 - 1) & 0xf) << 18;
        let dregs_ccr = (ccr & !((0xf << 4) | (0xf << 18))) | len_bits;
        a.mov(MovReg::Ccr, dregs_ccr);
        ldst_memtomem(&mut a, x.revision, 1);
    }
    a.sev(x.event);
    a.end();
    let bytes = a.into_bytes();
    if bytes.len() > MCODE_BUFF_PER_REQ {
        return Err(AsmError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// The instruction bytes Linux's `_execute_DBGINSN` writes to DBGINST0 and
/// DBGINST1 for `insn`, on the manager (`channel = None`) or a channel thread.
pub fn dbginst(insn: Insn, channel: Option<u8>) -> (u32, u32) {
    let (b, _) = insn.encode();
    let mut d0 = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 24);
    if let Some(c) = channel {
        d0 |= 1 | (u32::from(c & 7) << 8);
    }
    let d1 = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    (d0, d1)
}
