#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::ops::Range;

use proptest::prelude::*;

use super::asm::{self, dbginst, linux_mem_to_mem, linux_memcpy_burst, Asm, LinuxShape, LinuxXfer};
use super::insn::{self, AddrReg, Cond, DecodeError, Insn, LoopCounter, MovReg, WfpKind};
use super::regs::{self, Ccr, FaultType, ThreadState};
use super::*;
use crate::device::{DmaAccess, DmaFault, DmaMemory, DmaProt};

// ------------------------------------------------------------------ helpers

const RX: DmaProt = DmaProt {
    read: true,
    write: false,
    exec: true,
};
const R: DmaProt = DmaProt {
    read: true,
    write: false,
    exec: false,
};
const RW: DmaProt = DmaProt {
    read: true,
    write: true,
    exec: false,
};
const RWX: DmaProt = DmaProt {
    read: true,
    write: true,
    exec: true,
};
const X: DmaProt = DmaProt {
    read: false,
    write: false,
    exec: true,
};
const W: DmaProt = DmaProt {
    read: false,
    write: true,
    exec: false,
};

const CODE: u32 = 0x1000;
const CODE2: u32 = 0x1800;
const SRC: u32 = 0x10000;
const DST: u32 = 0x30000;
const MEM_SIZE: usize = 0x60000;
const GUARD: u8 = 0xa5;

/// Vec-backed guest memory with permission windows, like an SMMU.
struct TestMem {
    data: RefCell<Vec<u8>>,
    windows: Vec<(Range<u64>, DmaProt)>,
    writes: RefCell<Vec<(u64, usize)>>,
}

impl TestMem {
    fn new(windows: Vec<(Range<u64>, DmaProt)>) -> Self {
        TestMem {
            data: RefCell::new(vec![GUARD; MEM_SIZE]),
            windows,
            writes: RefCell::new(Vec::new()),
        }
    }
    /// Code RX, source R, destination RW.
    fn standard() -> Self {
        Self::new(vec![
            (u64::from(CODE)..0x2000, RX),
            (u64::from(SRC)..u64::from(DST), R),
            (u64::from(DST)..0x50000, RW),
        ])
    }
    fn poke(&self, addr: u32, bytes: &[u8]) {
        let a = addr as usize;
        self.data.borrow_mut()[a..a + bytes.len()].copy_from_slice(bytes);
    }
    fn peek(&self, addr: u32, len: usize) -> Vec<u8> {
        let a = addr as usize;
        self.data.borrow()[a..a + len].to_vec()
    }
    fn check(&self, iova: u64, len: usize, access: DmaAccess) -> Result<(), DmaFault> {
        let end = iova + len as u64;
        let w = self
            .windows
            .iter()
            .find(|(r, _)| r.start <= iova && end <= r.end && end as usize <= MEM_SIZE);
        match w {
            None => Err(DmaFault::Unmapped { access, iova, len }),
            Some((_, p)) => {
                let ok = match access {
                    DmaAccess::Fetch => p.exec,
                    DmaAccess::Read => p.read,
                    DmaAccess::Write => p.write,
                };
                if ok {
                    Ok(())
                } else {
                    Err(DmaFault::Permission { access, iova, len })
                }
            }
        }
    }
}

impl DmaMemory for TestMem {
    fn dma_read(&self, iova: u64, buf: &mut [u8], access: DmaAccess) -> Result<(), DmaFault> {
        self.check(iova, buf.len(), access)?;
        let a = iova as usize;
        buf.copy_from_slice(&self.data.borrow()[a..a + buf.len()]);
        Ok(())
    }
    fn dma_write(&self, iova: u64, data: &[u8]) -> Result<(), DmaFault> {
        self.check(iova, data.len(), DmaAccess::Write)?;
        let a = iova as usize;
        self.data.borrow_mut()[a..a + data.len()].copy_from_slice(data);
        self.writes.borrow_mut().push((iova, data.len()));
        Ok(())
    }
}

/// The default configuration without a time slice: runs are bounded by
/// `step_budget` only, so how far a run gets does not depend on the clock.
fn dev() -> Pl330 {
    dev_with(|_| {})
}

fn dev_with(f: impl FnOnce(&mut Pl330Config)) -> Pl330 {
    let mut c = Pl330Config {
        time_slice_us: 0,
        ..Pl330Config::default()
    };
    f(&mut c);
    Pl330::new(c).unwrap()
}

fn rd(p: &mut Pl330, off: u64) -> u32 {
    p.read(off, 4).unwrap()
}

fn wr(p: &mut Pl330, off: u64, v: u32, mem: &dyn DmaMemory) {
    p.write(off, 4, v, mem).unwrap()
}

/// Linux's `_execute_DBGINSN`.
fn dbg(p: &mut Pl330, mem: &dyn DmaMemory, i: Insn, channel: Option<u8>) {
    let (d0, d1) = dbginst(i, channel);
    wr(p, regs::DBGINST0, d0, mem);
    wr(p, regs::DBGINST1, d1, mem);
    assert_eq!(rd(p, regs::DBGSTATUS) & regs::DBGSTATUS_BUSY, 0);
    wr(p, regs::DBGCMD, 0, mem);
}

/// Linux's `_trigger`: enable the event's interrupt, then DMAGO as manager.
fn go(p: &mut Pl330, mem: &dyn DmaMemory, chan: u8, addr: u32, ev: u8) {
    let inten = rd(p, regs::INTEN);
    wr(p, regs::INTEN, inten | (1 << ev), mem);
    dbg(
        p,
        mem,
        Insn::Go {
            chan,
            ns: false,
            addr,
        },
        None,
    );
}

/// Linux's `pl330_update` register sequence; returns the events it cleared.
fn linux_isr(p: &mut Pl330, mem: &dyn DmaMemory) -> u32 {
    let _fsm = rd(p, regs::FSRD) & 1;
    let _fsc = rd(p, regs::FSRC);
    let es = rd(p, regs::INT_EVENT_RIS);
    let mut cleared = 0;
    for ev in 0..32 {
        if es & (1 << ev) != 0 {
            let inten = rd(p, regs::INTEN);
            if inten & (1 << ev) != 0 {
                wr(p, regs::INTCLR, 1 << ev, mem);
                cleared |= 1 << ev;
            }
        }
    }
    cleared
}

fn fill_pattern(mem: &TestMem, addr: u32, len: usize, seed: u8) {
    let v: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect();
    mem.poke(addr, &v);
}

fn csr_state(p: &mut Pl330, c: u64) -> u32 {
    rd(p, regs::csr(c)) & 0xf
}

/// Runs a hand-written program on channel 0 and returns the device.
fn run_prog(mem: &TestMem, prog: &[u8]) -> Pl330 {
    mem.poke(CODE, prog);
    let mut p = dev();
    go(&mut p, mem, 0, CODE, 0);
    p
}

fn assert_channel_fault(p: &mut Pl330, c: u64, fault: FaultType, pc: u32) {
    assert_eq!(rd(p, regs::FSRC) & (1 << c), 1 << c, "FSRC");
    assert_eq!(csr_state(p, c), ThreadState::Faulting.code());
    assert_eq!(
        rd(p, regs::ftr(c)) & fault.bit(),
        fault.bit(),
        "FTR {:#x}",
        rd(p, regs::ftr(c))
    );
    assert_eq!(rd(p, regs::cpc(c)), pc, "CPC");
    assert!(p.abort_level());
}

// -------------------------------------------------------------- decoder

#[test]
fn decode_linux_encodings() {
    let cases: &[(&[u8], Insn)] = &[
        (&[0x00], Insn::End),
        (&[0x01], Insn::Kill),
        (&[0x04], Insn::Ld(Cond::Always)),
        (&[0x05], Insn::Ld(Cond::Single)),
        (&[0x07], Insn::Ld(Cond::Burst)),
        (&[0x08], Insn::St(Cond::Always)),
        (&[0x09], Insn::St(Cond::Single)),
        (&[0x0b], Insn::St(Cond::Burst)),
        (&[0x0c], Insn::Stz),
        (&[0x12], Insn::Rmb),
        (&[0x13], Insn::Wmb),
        (&[0x18], Insn::Nop),
        (
            &[0x20, 0xff],
            Insn::Lp {
                lc: LoopCounter::Lc0,
                count: 255,
            },
        ),
        (
            &[0x22, 0x03],
            Insn::Lp {
                lc: LoopCounter::Lc1,
                count: 3,
            },
        ),
        (
            &[0x25, 0x18],
            Insn::Ldp {
                burst: false,
                periph: 3,
            },
        ),
        (
            &[0x27, 0xf8],
            Insn::Ldp {
                burst: true,
                periph: 31,
            },
        ),
        (
            &[0x29, 0x08],
            Insn::Stp {
                burst: false,
                periph: 1,
            },
        ),
        (
            &[0x2b, 0x10],
            Insn::Stp {
                burst: true,
                periph: 2,
            },
        ),
        (
            &[0x38, 0x04],
            Insn::LpEnd {
                lc: LoopCounter::Lc0,
                cond: Cond::Always,
                forever: false,
                jump: 4,
            },
        ),
        (
            &[0x3c, 0x02],
            Insn::LpEnd {
                lc: LoopCounter::Lc1,
                cond: Cond::Always,
                forever: false,
                jump: 2,
            },
        ),
        (
            &[0x3d, 0x02],
            Insn::LpEnd {
                lc: LoopCounter::Lc1,
                cond: Cond::Single,
                forever: false,
                jump: 2,
            },
        ),
        (
            &[0x3f, 0x02],
            Insn::LpEnd {
                lc: LoopCounter::Lc1,
                cond: Cond::Burst,
                forever: false,
                jump: 2,
            },
        ),
        (
            &[0x28, 0x01],
            Insn::LpEnd {
                lc: LoopCounter::Lc0,
                cond: Cond::Always,
                forever: true,
                jump: 1,
            },
        ),
        (
            &[0x30, 0x08],
            Insn::Wfp {
                kind: WfpKind::Single,
                periph: 1,
            },
        ),
        (
            &[0x31, 0x08],
            Insn::Wfp {
                kind: WfpKind::Periph,
                periph: 1,
            },
        ),
        (
            &[0x32, 0x08],
            Insn::Wfp {
                kind: WfpKind::Burst,
                periph: 1,
            },
        ),
        (&[0x34, 0x38], Insn::Sev { event: 7 }),
        (&[0x35, 0x20], Insn::FlushP { periph: 4 }),
        (
            &[0x36, 0x2a],
            Insn::Wfe {
                event: 5,
                invalidate: true,
            },
        ),
        (
            &[0x54, 0x34, 0x12],
            Insn::AddH {
                reg: AddrReg::Sar,
                imm: 0x1234,
            },
        ),
        (
            &[0x56, 0x01, 0x00],
            Insn::AddH {
                reg: AddrReg::Dar,
                imm: 1,
            },
        ),
        (
            &[0x5c, 0xff, 0xff],
            Insn::AdnH {
                reg: AddrReg::Sar,
                imm: 0xffff,
            },
        ),
        (
            &[0x5e, 0x00, 0x80],
            Insn::AdnH {
                reg: AddrReg::Dar,
                imm: 0x8000,
            },
        ),
        (
            &[0xa0, 0x03, 0x78, 0x56, 0x34, 0x12],
            Insn::Go {
                chan: 3,
                ns: false,
                addr: 0x1234_5678,
            },
        ),
        (
            &[0xa2, 0x07, 0, 0x10, 0, 0],
            Insn::Go {
                chan: 7,
                ns: true,
                addr: 0x1000,
            },
        ),
        (
            &[0xbc, 0x00, 1, 2, 3, 4],
            Insn::Mov {
                reg: MovReg::Sar,
                imm: 0x0403_0201,
            },
        ),
        (
            &[0xbc, 0x01, 1, 2, 3, 4],
            Insn::Mov {
                reg: MovReg::Ccr,
                imm: 0x0403_0201,
            },
        ),
        (
            &[0xbc, 0x02, 1, 2, 3, 4],
            Insn::Mov {
                reg: MovReg::Dar,
                imm: 0x0403_0201,
            },
        ),
    ];
    for (bytes, want) in cases {
        let (got, len) = insn::decode(bytes).unwrap();
        assert_eq!(got, *want, "{bytes:02x?}");
        assert_eq!(len, bytes.len());
        let (enc, n) = want.encode();
        assert_eq!(&enc[..n], *bytes, "encode {want:?}");
        assert_eq!(want.len(), bytes.len());
    }
}

#[test]
fn decode_rejects_invalid_encodings() {
    for op in [
        0x02u8, 0x03, 0x06, 0x0a, 0x0d, 0x10, 0x14, 0x21, 0x23, 0x24, 0x26, 0x2a, 0x2e, 0x33, 0x37,
        0x3a, 0x3e, 0x40, 0x55, 0x58, 0xa1, 0xa4, 0xbd, 0xff,
    ] {
        assert_eq!(
            insn::decode(&[op, 0, 0, 0, 0, 0]),
            Err(DecodeError::Undefined(op)),
            "{op:#x}"
        );
    }
    // Reserved operand bits / no such DMAMOV register / DMAGO channel byte.
    for bytes in [
        &[0x34u8, 0x39][..],
        &[0x35, 0x01],
        &[0x30, 0x04],
        &[0x25, 0x02],
        &[0x29, 0x01],
        &[0x36, 0x01],
        &[0x36, 0x04],
        &[0xbc, 0x03, 0, 0, 0, 0],
        &[0xbc, 0x08, 0, 0, 0, 0],
        &[0xa0, 0x08, 0, 0, 0, 0],
    ] {
        assert!(
            matches!(insn::decode(bytes), Err(DecodeError::InvalidOperand(_))),
            "{bytes:02x?}"
        );
    }
    assert_eq!(
        insn::decode(&[0xbc, 0, 0]),
        Err(DecodeError::Truncated { need: 6, have: 3 })
    );
    assert_eq!(
        insn::decode(&[]),
        Err(DecodeError::Truncated { need: 1, have: 0 })
    );
}

#[test]
fn every_opcode_len_matches_decoder() {
    for op in 0..=255u8 {
        let r = insn::decode(&[op, 0, 0, 0, 0, 0]);
        match insn::insn_len(op) {
            None => assert_eq!(r, Err(DecodeError::Undefined(op))),
            Some(n) => {
                // Zero operands are always valid encodings.
                let (i, len) = r.unwrap();
                assert_eq!(len, n);
                let (b, m) = i.encode();
                assert_eq!(m, n);
                assert_eq!(b[0], op, "{i:?}");
            }
        }
    }
}

// ------------------------------------------------------------- registers

#[test]
fn identification_registers_match_linux() {
    let mut p = dev();
    let pid = (0..4).fold(0u32, |acc, i| {
        acc | (rd(&mut p, 0xfe0 + 4 * i) & 0xff) << (8 * i)
    });
    assert_eq!(pid, 0x0024_1330);
    assert_eq!(pid & 0xfffff, 0x41330);
    let cid: Vec<u32> = (0..4).map(|i| rd(&mut p, 0xff0 + 4 * i)).collect();
    assert_eq!(cid, vec![0x0d, 0xf0, 0x05, 0xb1]);
    let mut p0 = dev_with(|c| c.revision = 0);
    assert_eq!(rd(&mut p0, 0xfe8), 0x04);
}

#[test]
fn configuration_registers_describe_config() {
    let mut p = dev();
    let cr0 = rd(&mut p, regs::CR0);
    assert_eq!(cr0 & 1, 1);
    assert_eq!((cr0 >> 4) & 7, 7);
    assert_eq!((cr0 >> 12) & 0x1f, 3);
    assert_eq!((cr0 >> 17) & 0x1f, 7);
    assert_eq!(cr0 & regs::CR0_MGR_NS_AT_RST, 0);
    let crd = rd(&mut p, regs::CRD);
    assert_eq!(crd & 7, 3);
    assert_eq!((crd >> 20) & 0x3ff, 255);
    assert_eq!(rd(&mut p, regs::CR3), 0xff);
    assert_eq!(rd(&mut p, regs::CR4), 0xf);

    let mut q = dev_with(|c| {
        c.channels = 2;
        c.events = 32;
        c.periph_reqs = 0;
        c.data_width_bits = 128;
        c.data_buffer_lines = 1024;
    });
    let cr0 = rd(&mut q, regs::CR0);
    assert_eq!(cr0 & 1, 0);
    assert_eq!((cr0 >> 4) & 7, 1);
    assert_eq!((cr0 >> 17) & 0x1f, 31);
    let crd = rd(&mut q, regs::CRD);
    assert_eq!(crd & 7, 4);
    assert_eq!((crd >> 20) & 0x3ff, 1023);
    assert_eq!(rd(&mut q, regs::CR3), u32::MAX);
    // 32 event lines and irq_abort.
    assert_eq!((q.num_irq_lines(), q.abort_line()), (33, 32));
    // Registers of absent channels read 0.
    assert_eq!(rd(&mut q, regs::csr(5)), 0);
    assert_eq!(rd(&mut q, regs::sar(7)), 0);
}

#[test]
fn invalid_configs_rejected() {
    let bad: Vec<fn(&mut Pl330Config)> = vec![
        |c| c.channels = 0,
        |c| c.channels = 9,
        |c| c.events = 0,
        |c| c.events = 33,
        |c| c.periph_reqs = 33,
        |c| c.revision = 16,
        |c| c.data_width_bits = 48,
        |c| c.data_buffer_lines = 0,
        |c| c.data_buffer_lines = 1025,
        |c| c.step_budget = 0,
    ];
    for f in bad {
        let mut c = Pl330Config::default();
        f(&mut c);
        assert!(matches!(Pl330::new(c), Err(Pl330Error::InvalidConfig(_))));
    }
}

#[test]
fn only_aligned_word_accesses() {
    let mut p = dev();
    let mem = TestMem::standard();
    for (off, size) in [
        (0x20u64, 1usize),
        (0x20, 2),
        (0x20, 8),
        (0x22, 4),
        (0x1000, 4),
        (u64::MAX - 3, 4),
    ] {
        assert_eq!(
            p.read(off, size),
            Err(Pl330Error::BadAccess { offset: off, size })
        );
        assert_eq!(
            p.write(off, size, 1, &mem),
            Err(Pl330Error::BadAccess { offset: off, size })
        );
    }
    assert!(p.read(0xffc, 4).is_ok());
}

#[test]
fn read_only_registers_ignore_writes() {
    let mut p = dev();
    let mem = TestMem::standard();
    let before: Vec<u32> = [
        regs::CR0,
        regs::CRD,
        regs::sar(0),
        regs::ccr(1),
        regs::csr(0),
        0xfe0,
        regs::FSRC,
    ]
    .iter()
    .map(|&o| rd(&mut p, o))
    .collect();
    for o in [
        regs::CR0,
        regs::CRD,
        regs::sar(0),
        regs::ccr(1),
        regs::csr(0),
        0xfe0,
        regs::FSRC,
    ] {
        wr(&mut p, o, 0xdead_beef, &mem);
    }
    let after: Vec<u32> = [
        regs::CR0,
        regs::CRD,
        regs::sar(0),
        regs::ccr(1),
        regs::csr(0),
        0xfe0,
        regs::FSRC,
    ]
    .iter()
    .map(|&o| rd(&mut p, o))
    .collect();
    assert_eq!(before, after);
    wr(&mut p, regs::INTEN, 0xffff_ffff, &mem);
    assert_eq!(rd(&mut p, regs::INTEN), 0xff, "INTEN limited to the events");
    assert_eq!(rd(&mut p, regs::INTCLR), 0);
}

// ------------------------------------------------------------- transfers

fn linux_copy(
    p: &mut Pl330,
    mem: &TestMem,
    chan: u8,
    code: u32,
    src: u32,
    dst: u32,
    len: u32,
) -> Vec<u8> {
    let prog = linux_mem_to_mem(&LinuxXfer::memcpy(p.config(), src, dst, len, chan)).unwrap();
    mem.poke(code, &prog);
    go(p, mem, chan, code, chan);
    prog
}

fn assert_copied(mem: &TestMem, src: u32, dst: u32, len: usize) {
    assert_eq!(
        mem.peek(src, len),
        mem.peek(dst, len),
        "copy of {len} bytes"
    );
    // Guards: everything else in the destination window is untouched.
    let whole = mem.peek(DST, 0x20000);
    let lo = (dst - DST) as usize;
    assert!(whole[..lo].iter().all(|&b| b == GUARD), "below destination");
    assert!(
        whole[lo + len..].iter().all(|&b| b == GUARD),
        "above destination"
    );
    for &(a, n) in mem.writes.borrow().iter() {
        assert!(a >= u64::from(dst) && a + n as u64 <= u64::from(dst) + len as u64);
    }
}

#[test]
fn linux_program_shape_matches_driver() {
    // 4 KiB, 8-byte beats x 16: 32 bursts, one loop.
    let x = LinuxXfer {
        src: 0x1000_0000,
        dst: 0x2000_0000,
        len: 4096,
        burst_size_log2: 3,
        burst_len: 16,
        ccr_extra: 0,
        revision: 2,
        event: 3,
        shape: LinuxShape::Dregs,
    };
    let p = linux_mem_to_mem(&x).unwrap();
    let ccr = Ccr::linux(3, 16, 0);
    assert_eq!(
        ccr,
        1 | (3 << 1) | (15 << 4) | (1 << 14) | (3 << 15) | (15 << 18)
    );
    let mut want = Asm::new();
    want.mov(MovReg::Ccr, ccr)
        .mov(MovReg::Sar, x.src)
        .mov(MovReg::Dar, x.dst);
    let _ = want.lp(LoopCounter::Lc1, 32).unwrap();
    want.ld(Cond::Always).st(Cond::Always);
    want.raw(&[0x3c, 0x02]);
    want.sev(3).end();
    assert_eq!(p, want.into_bytes());

    // r0p0 gets barriers; a remainder gets the second DMAMOV CCR.
    let x0 = LinuxXfer {
        revision: 0,
        len: 4096 + 24,
        ..x
    };
    let p0 = linux_mem_to_mem(&x0).unwrap();
    let tail_ccr = Ccr::linux(3, 3, 0);
    let mut want = Asm::new();
    want.mov(MovReg::Ccr, ccr)
        .mov(MovReg::Sar, x.src)
        .mov(MovReg::Dar, x.dst);
    let _ = want.lp(LoopCounter::Lc1, 32).unwrap();
    want.ld(Cond::Always).rmb().st(Cond::Always).wmb();
    want.raw(&[0x3c, 0x04]);
    want.mov(MovReg::Ccr, tail_ccr);
    want.ld(Cond::Always).rmb().st(Cond::Always).wmb();
    want.sev(3).end();
    assert_eq!(p0, want.into_bytes());

    // Nested loops: 1 MiB in 1-byte single beats = 2^20 bursts → LP0 256 / LP1 256 x 16.
    let xn = LinuxXfer {
        len: 1 << 20,
        burst_size_log2: 0,
        burst_len: 1,
        ..x
    };
    let pn = linux_mem_to_mem(&xn).unwrap();
    assert_eq!(&pn[18..22], &[0x20, 0xff, 0x22, 0xff]);
    // 16 LD/ST pairs, then LPEND lc1 (jump 32), LPEND lc0 (jump 36).
    assert_eq!(&pn[22 + 32..22 + 36], &[0x3c, 32, 0x38, 36]);

    // Too large for the request buffer, like Linux's -ENOMEM.
    let big = LinuxXfer {
        len: u32::MAX,
        burst_size_log2: 0,
        burst_len: 1,
        revision: 0,
        ..x
    };
    assert!(matches!(
        linux_mem_to_mem(&big),
        Err(asm::AsmError::TooLarge(_))
    ));
}

#[test]
fn linux_transfers_copy_exactly() {
    // (src offset, dst offset, len): several burst sizes, loops with
    // remainders (dregs), nested loops.
    let cases = [
        (0u32, 0u32, 1u32),
        (0, 0, 8),
        (0, 0, 128),
        (0, 0, 4096),
        (0, 0, 4096 + 24),
        (4, 8, 1000),
        (2, 6, 770),
        (1, 0, 333),
        (0, 0, 70_000),
        (8, 16, 0x1_0000),
        (3, 5, 0x1_0000 - 1),
    ];
    for (rev, data_width) in [(2u8, 64u32), (0, 32), (1, 128)] {
        for &(so, doff, len) in &cases {
            let mem = TestMem::new(vec![
                (u64::from(CODE)..0x2000, RX),
                (u64::from(SRC)..u64::from(DST), R),
                (u64::from(DST)..0x50000, RW),
            ]);
            let mut p = dev_with(|c| {
                c.revision = rev;
                c.data_width_bits = data_width;
            });
            fill_pattern(&mem, SRC + so, len as usize, len as u8);
            let prog = linux_copy(&mut p, &mem, 2, CODE, SRC + so, DST + doff, len);
            assert!(!p.pending());
            assert_eq!(csr_state(&mut p, 2), 0, "stopped after DMAEND");
            assert_eq!(rd(&mut p, regs::FSRC), 0);
            assert!(!p.abort_level());
            assert_copied(&mem, SRC + so, DST + doff, len as usize);
            assert_eq!(p.stats().bytes_loaded, u64::from(len));
            assert_eq!(p.stats().bytes_stored, u64::from(len));
            assert!(p.irq_level(2), "DMASEV 2 raised irq 2");
            assert_eq!(rd(&mut p, regs::INTMIS), 1 << 2);
            // CPC points at the DMAEND; SAR/DAR advanced by len.
            assert_eq!(rd(&mut p, regs::cpc(2)), CODE + prog.len() as u32 - 1);
            assert_eq!(rd(&mut p, regs::sar(2)), SRC + so + len);
            assert_eq!(rd(&mut p, regs::dar(2)), DST + doff + len);
        }
    }
}

#[test]
fn legacy_shape_moves_whole_bursts_only() {
    let mem = TestMem::standard();
    let mut p = dev();
    fill_pattern(&mem, SRC, 200, 9);
    // 8-byte beats x 16 = 128-byte bursts: 200 → 1 burst, remainder dropped.
    let prog = linux_mem_to_mem(&LinuxXfer {
        src: SRC,
        dst: DST,
        len: 200,
        burst_size_log2: 3,
        burst_len: 16,
        ccr_extra: 0,
        revision: 2,
        event: 0,
        shape: LinuxShape::Legacy,
    })
    .unwrap();
    mem.poke(CODE, &prog);
    go(&mut p, &mem, 0, CODE, 0);
    assert_eq!(mem.peek(DST, 128), mem.peek(SRC, 128));
    assert!(mem.peek(DST + 128, 72).iter().all(|&b| b == GUARD));
}

#[test]
fn two_channels_at_once() {
    let mem = TestMem::standard();
    let mut p = dev_with(|c| c.step_budget = 50);
    fill_pattern(&mem, SRC, 0x8000, 1);
    fill_pattern(&mem, SRC + 0x8000, 0x8000, 2);
    linux_copy(&mut p, &mem, 0, CODE, SRC, DST, 0x8000);
    assert!(p.pending(), "budget of 50 cannot finish 32 KiB");
    linux_copy(&mut p, &mem, 1, CODE2, SRC + 0x8000, DST + 0x8000, 0x8000);
    assert_eq!(csr_state(&mut p, 0), 1);
    assert_eq!(csr_state(&mut p, 1), 1);
    let mut rounds = 0;
    while p.run_pending(&mem) {
        rounds += 1;
        assert!(rounds < 10_000);
        if rounds == 3 {
            // Both progressed: interleaved, not one after the other.
            assert!(rd(&mut p, regs::dar(0)) > DST);
            assert!(rd(&mut p, regs::dar(1)) > DST + 0x8000);
        }
    }
    assert_eq!(mem.peek(DST, 0x10000), mem.peek(SRC, 0x10000));
    assert!(p.irq_level(0) && p.irq_level(1));
    assert_eq!(linux_isr(&mut p, &mem), 0b11);
    assert!(!p.irq_level(0) && !p.irq_level(1));
}

#[test]
fn kill_mid_transfer() {
    let mem = TestMem::standard();
    let mut p = dev_with(|c| c.step_budget = 100);
    fill_pattern(&mem, SRC, 0x10000, 7);
    linux_copy(&mut p, &mem, 3, CODE, SRC, DST, 0x10000);
    assert!(p.pending());
    assert!(p.run_pending(&mem));
    assert_eq!(csr_state(&mut p, 3), ThreadState::Executing.code());
    let stored = p.stats().bytes_stored as usize;
    assert!(stored > 0 && stored < 0x10000);
    // Linux's _stop: DMAKILL on the channel thread, clear and mask the event.
    dbg(&mut p, &mem, Insn::Kill, Some(3));
    assert_eq!(csr_state(&mut p, 3), 0);
    assert!(!p.pending());
    assert!(!p.run_pending(&mem));
    assert_eq!(p.stats().bytes_stored as usize, stored);
    assert_eq!(mem.peek(DST, stored), mem.peek(SRC, stored));
    assert!(mem
        .peek(DST + stored as u32, 0x10000 - stored)
        .iter()
        .all(|&b| b == GUARD));
    assert!(!p.irq_level(3), "killed before DMASEV");
    // The channel can be started again.
    linux_copy(&mut p, &mem, 3, CODE, SRC, DST, 0x100);
    while p.run_pending(&mem) {}
    assert!(p.irq_level(3));
}

#[test]
fn linux_isr_clears_level_interrupt() {
    let mem = TestMem::standard();
    let mut p = dev();
    fill_pattern(&mem, SRC, 64, 3);
    linux_copy(&mut p, &mem, 5, CODE, SRC, DST, 64);
    // Level: stays asserted across reads until cleared.
    for _ in 0..3 {
        assert!(p.irq_level(5));
        assert_eq!(rd(&mut p, regs::INT_EVENT_RIS), 1 << 5);
    }
    assert!(!p.irq_level(4));
    // INTCLR for an event whose INTEN is clear does nothing.
    wr(&mut p, regs::INTCLR, 1 << 4, &mem);
    assert!(p.irq_level(5));
    assert_eq!(linux_isr(&mut p, &mem), 1 << 5);
    assert!(!p.irq_level(5));
    assert_eq!(rd(&mut p, regs::INTMIS), 0);
    assert_eq!(rd(&mut p, regs::INT_EVENT_RIS), 0);
}

#[test]
fn combined_irq_line() {
    let mem = TestMem::standard();
    let mut p = dev_with(|c| c.combined_irq = true);
    assert_eq!(p.num_irq_lines(), 1);
    fill_pattern(&mem, SRC, 64, 3);
    linux_copy(&mut p, &mem, 6, CODE, SRC, DST, 64);
    assert!(p.irq_level(0));
    assert!(!p.irq_level(6));
    linux_isr(&mut p, &mem);
    assert!(!p.irq_level(0));
}

// ------------------------------------------------------------- faults

#[test]
fn fault_undefined_instruction() {
    let mem = TestMem::standard();
    let mut p = run_prog(&mem, &[0x18, 0xff]);
    assert_channel_fault(&mut p, 0, FaultType::UndefInstr, CODE + 1);
    // DMAKILL clears the fault and the abort line.
    dbg(&mut p, &mem, Insn::Kill, Some(0));
    assert_eq!(rd(&mut p, regs::FSRC), 0);
    assert_eq!(rd(&mut p, regs::ftr(0)), 0);
    assert!(!p.abort_level());
    assert_eq!(p.stats().faults, 1);
}

#[test]
fn fault_operand_invalid() {
    let mem = TestMem::standard();
    // DMASEV 20 with 8 events.
    let mut a = Asm::new();
    a.sev(20).end();
    let mut p = run_prog(&mem, a.bytes());
    assert_channel_fault(&mut p, 0, FaultType::OperandInvalid, CODE);
    // DMAMOV with rd = 3, DMAWFP for a peripheral that does not exist.
    let mut p = run_prog(&mem, &[0xbc, 0x03, 0, 0, 0, 0]);
    assert_channel_fault(&mut p, 0, FaultType::OperandInvalid, CODE);
    let mut a = Asm::new();
    a.wfp(WfpKind::Single, 9);
    let mut p = run_prog(&mem, a.bytes());
    assert_channel_fault(&mut p, 0, FaultType::OperandInvalid, CODE);
}

#[test]
fn fault_instruction_fetch() {
    // Code readable but not executable: DMAGO gate refuses it...
    let mem = TestMem::new(vec![(u64::from(CODE)..0x2000, R), (0x2000..0x3000, X)]);
    mem.poke(CODE, &[0x00]);
    let mut p = dev();
    go(&mut p, &mem, 0, CODE, 0);
    assert_eq!(rd(&mut p, regs::FSRD), 1);
    let ftrd = rd(&mut p, regs::FTRD);
    assert_eq!(ftrd, FaultType::DmagoErr.bit() | FaultType::DbgInstr.bit());
    assert_eq!(rd(&mut p, regs::DSR) & 0xf, 0xf);
    assert!(p.abort_level());
    assert_eq!(csr_state(&mut p, 0), 0, "channel not started");
    dbg(&mut p, &mem, Insn::Kill, None);
    assert_eq!(rd(&mut p, regs::FSRD), 0);
    assert!(!p.abort_level());
    // ...without the gate the channel faults on the fetch.
    let mut p = dev_with(|c| c.dmago_exec_gate = false);
    go(&mut p, &mem, 0, CODE, 0);
    assert_channel_fault(&mut p, 0, FaultType::InstrFetchErr, CODE);
    // A program running off its executable page into a non-executable one
    // (a 6-byte DMAMOV straddling the boundary).
    let mem = TestMem::new(vec![(0x1000..0x1ffc, X), (0x1ffc..0x3000, RW)]);
    mem.poke(0x1ff8, &[0x18, 0x18, 0xbc, 0x00, 0, 0, 0, 0]);
    let mut p = dev();
    go(&mut p, &mem, 1, 0x1ff8, 1);
    assert_channel_fault(&mut p, 1, FaultType::InstrFetchErr, 0x1ffa);
}

#[test]
fn fault_data_read_and_write() {
    // Source not readable (write-only window).
    let mem = TestMem::new(vec![
        (u64::from(CODE)..0x2000, RX),
        (u64::from(SRC)..u64::from(DST), W),
        (u64::from(DST)..0x50000, RW),
    ]);
    let mut p = dev();
    linux_copy(&mut p, &mem, 0, CODE, SRC, DST, 256);
    // Fault at the first DMALD: after 3 DMAMOVs and the DMALP.
    assert_channel_fault(&mut p, 0, FaultType::DataReadErr, CODE + 20);
    assert!(mem.writes.borrow().is_empty());
    assert!(!p.irq_level(0));

    // Destination read-only.
    let mem = TestMem::new(vec![
        (u64::from(CODE)..0x2000, RX),
        (u64::from(SRC)..u64::from(DST), R),
        (u64::from(DST)..0x50000, R),
    ]);
    let mut p = dev();
    linux_copy(&mut p, &mem, 0, CODE, SRC, DST, 256);
    assert_channel_fault(&mut p, 0, FaultType::DataWriteErr, CODE + 21);
    assert!(mem.peek(DST, 256).iter().all(|&b| b == GUARD));

    // Destination partly unmapped: the transfer stops at the hole.
    let mem = TestMem::new(vec![
        (u64::from(CODE)..0x2000, RX),
        (u64::from(SRC)..u64::from(DST), R),
        (u64::from(DST)..u64::from(DST) + 0x1000, RW),
    ]);
    fill_pattern(&mem, SRC, 0x2000, 5);
    let mut p = dev();
    linux_copy(&mut p, &mem, 0, CODE, SRC, DST, 0x2000);
    assert_eq!(rd(&mut p, regs::FSRC), 1);
    assert_eq!(rd(&mut p, regs::ftr(0)), FaultType::DataWriteErr.bit());
    assert_eq!(mem.peek(DST, 0x1000), mem.peek(SRC, 0x1000));
    assert_eq!(p.stats().bytes_stored, 0x1000);
}

#[test]
fn fault_mfifo_and_store_data_unavailable() {
    let mem = TestMem::standard();
    // MFIFO of 4 lines x 8 bytes = 32 bytes; a 16 x 8-byte burst cannot fit.
    let mut p = dev_with(|c| c.data_buffer_lines = 4);
    let mut a = Asm::new();
    a.mov(MovReg::Ccr, Ccr::linux(3, 16, 0))
        .mov(MovReg::Sar, SRC)
        .mov(MovReg::Dar, DST)
        .ld(Cond::Always)
        .st(Cond::Always)
        .end();
    mem.poke(CODE, a.bytes());
    go(&mut p, &mem, 0, CODE, 0);
    assert_channel_fault(&mut p, 0, FaultType::MfifoErr, CODE + 18);
    // Two loads without a store overflow the default MFIFO (2 KiB).
    let mut a = Asm::new();
    a.mov(MovReg::Ccr, Ccr::linux(7, 16, 0))
        .mov(MovReg::Sar, SRC);
    a.ld(Cond::Always).ld(Cond::Always).end();
    let mut p = run_prog(&mem, a.bytes());
    assert_channel_fault(&mut p, 0, FaultType::MfifoErr, CODE + 13);
    // DMAST with nothing loaded.
    let mut a = Asm::new();
    a.mov(MovReg::Ccr, Ccr::linux(2, 4, 0))
        .mov(MovReg::Dar, DST)
        .st(Cond::Always)
        .end();
    let mut p = run_prog(&mem, a.bytes());
    assert_channel_fault(&mut p, 0, FaultType::StDataUnavailable, CODE + 12);
    assert!(mem.writes.borrow().is_empty());
}

#[test]
fn fault_lockup_on_mfifo_starvation() {
    let mem = TestMem::standard();
    // 64-byte MFIFO. Channel 0 loads 48 bytes and waits for an event that
    // never comes; channel 1 then needs 48 more bytes: it can never proceed.
    let mut p = dev_with(|c| c.data_buffer_lines = 8);
    let mut a = Asm::new();
    a.mov(MovReg::Ccr, Ccr::linux(3, 6, 0))
        .mov(MovReg::Sar, SRC)
        .ld(Cond::Always)
        .wfe(7)
        .end();
    mem.poke(CODE, a.bytes());
    go_code(&mut p, &mem, 0);
    assert_eq!(csr_state(&mut p, 0), ThreadState::WaitingForEvent.code());
    assert_eq!((rd(&mut p, regs::csr(0)) >> 4) & 0x1f, 7, "wakeup number");
    mem.poke(CODE2, a.bytes());
    dbg(
        &mut p,
        &mem,
        Insn::Go {
            chan: 1,
            ns: false,
            addr: CODE2,
        },
        None,
    );
    assert_channel_fault(&mut p, 1, FaultType::LockupErr, CODE2 + 12);
    assert_eq!(csr_state(&mut p, 0), ThreadState::WaitingForEvent.code());
}

#[test]
fn security_faults() {
    let mem = TestMem::standard();
    // A non-secure manager cannot start a secure channel.
    let mut p = dev().with_security(Security {
        manager_ns: true,
        ..Security::default()
    });
    assert_eq!(
        rd(&mut p, regs::CR0) & regs::CR0_MGR_NS_AT_RST,
        regs::CR0_MGR_NS_AT_RST
    );
    assert_eq!(rd(&mut p, regs::DSR) & regs::DSR_DNS, regs::DSR_DNS);
    mem.poke(CODE, &[0x00]);
    go_code(&mut p, &mem, 0);
    assert_eq!(
        rd(&mut p, regs::FTRD),
        FaultType::DmagoErr.bit() | FaultType::DbgInstr.bit()
    );
    assert_eq!(csr_state(&mut p, 0), 0);
    dbg(&mut p, &mem, Insn::Kill, None);
    // Non-secure DMAGO works and sets CNS.
    mem.poke(CODE, &[0x36, 0x08]);
    dbg(
        &mut p,
        &mem,
        Insn::Go {
            chan: 0,
            ns: true,
            addr: CODE,
        },
        None,
    );
    assert_eq!(rd(&mut p, regs::csr(0)) & regs::CSR_CNS, regs::CSR_CNS);

    // Secure events / peripherals from a non-secure channel or manager.
    let sec = Security {
        manager_ns: true,
        irq_ns: 0,
        periph_ns: 0,
    };
    let mut p = dev().with_security(sec);
    assert_eq!(rd(&mut p, regs::CR3), 0);
    dbg(&mut p, &mem, Insn::Sev { event: 1 }, None);
    assert_eq!(
        rd(&mut p, regs::FTRD),
        FaultType::EvntErr.bit() | FaultType::DbgInstr.bit()
    );
    dbg(&mut p, &mem, Insn::Kill, None);
    let mut a = Asm::new();
    a.sev(1).end();
    mem.poke(CODE, a.bytes());
    dbg(
        &mut p,
        &mem,
        Insn::Go {
            chan: 2,
            ns: true,
            addr: CODE,
        },
        None,
    );
    assert_channel_fault(&mut p, 2, FaultType::EvntErr, CODE);
    let mut a = Asm::new();
    a.flushp(0).end();
    mem.poke(CODE2, a.bytes());
    dbg(
        &mut p,
        &mem,
        Insn::Go {
            chan: 3,
            ns: true,
            addr: CODE2,
        },
        None,
    );
    assert_channel_fault(&mut p, 3, FaultType::ChPeriphErr, CODE2);

    // A non-secure channel cannot issue a secure data access (CCR prot NS = 0)...
    let mut p = dev().with_security(Security {
        manager_ns: true,
        ..Security::default()
    });
    let mut a = Asm::new();
    a.mov(MovReg::Ccr, Ccr::linux(2, 1, 0))
        .mov(MovReg::Sar, SRC)
        .ld(Cond::Always)
        .end();
    mem.poke(CODE, a.bytes());
    dbg(
        &mut p,
        &mem,
        Insn::Go {
            chan: 0,
            ns: true,
            addr: CODE,
        },
        None,
    );
    assert_channel_fault(&mut p, 0, FaultType::ChRdwrErr, CODE + 12);
    // ...but can with SRCNS|DSTNS, as Linux sets them for a non-secure manager.
    let ns_bits =
        (regs::PROT_NS << regs::CCR_SRC_PROT_SHIFT) | (regs::PROT_NS << regs::CCR_DST_PROT_SHIFT);
    fill_pattern(&mem, SRC, 64, 1);
    let prog = linux_mem_to_mem(&LinuxXfer {
        src: SRC,
        dst: DST,
        len: 64,
        burst_size_log2: 3,
        burst_len: 8,
        ccr_extra: ns_bits,
        revision: 2,
        event: 4,
        shape: LinuxShape::Dregs,
    })
    .unwrap();
    mem.poke(CODE2, &prog);
    wr(&mut p, regs::INTEN, 1 << 4, &mem);
    dbg(
        &mut p,
        &mem,
        Insn::Go {
            chan: 1,
            ns: true,
            addr: CODE2,
        },
        None,
    );
    assert_eq!(mem.peek(DST, 64), mem.peek(SRC, 64));
    assert!(p.irq_level(4));
}

#[test]
fn manager_faults_from_debug_interface() {
    let mem = TestMem::standard();
    let mut p = dev_with(|c| c.channels = 2);
    mem.poke(CODE, &[0x36, 0x00]);
    // DMAGO for a channel that does not exist.
    go_code(&mut p, &mem, 5);
    assert_eq!(
        rd(&mut p, regs::FTRD),
        FaultType::OperandInvalid.bit() | FaultType::DbgInstr.bit()
    );
    dbg(&mut p, &mem, Insn::Kill, None);
    // DMAGO for a channel that is not stopped (waiting in DMAWFE).
    go_code(&mut p, &mem, 0);
    assert_eq!(csr_state(&mut p, 0), ThreadState::WaitingForEvent.code());
    assert_eq!(rd(&mut p, regs::FSRD), 0);
    go_code(&mut p, &mem, 0);
    assert_eq!(rd(&mut p, regs::FSRD), 1);
    assert_eq!(
        rd(&mut p, regs::FTRD),
        FaultType::OperandInvalid.bit() | FaultType::DbgInstr.bit()
    );
    dbg(&mut p, &mem, Insn::Kill, None);
    // Instructions other than DMAGO/DMAKILL/DMASEV are not allowed.
    dbg(&mut p, &mem, Insn::Nop, None);
    assert_eq!(
        rd(&mut p, regs::FTRD),
        FaultType::UndefInstr.bit() | FaultType::DbgInstr.bit()
    );
    dbg(&mut p, &mem, Insn::Kill, None);
    // An undefined byte and a bad operand through the debug interface.
    wr(&mut p, regs::DBGINST0, 0xff << 16, &mem);
    wr(&mut p, regs::DBGCMD, 0, &mem);
    assert_eq!(
        rd(&mut p, regs::FTRD),
        FaultType::UndefInstr.bit() | FaultType::DbgInstr.bit()
    );
    dbg(&mut p, &mem, Insn::Kill, None);
    wr(&mut p, regs::DBGINST0, (0x34 << 16) | (0x01 << 24), &mem);
    wr(&mut p, regs::DBGCMD, 0, &mem);
    assert_eq!(
        rd(&mut p, regs::FTRD),
        FaultType::OperandInvalid.bit() | FaultType::DbgInstr.bit()
    );
    dbg(&mut p, &mem, Insn::Kill, None);
    // DMAGO issued on a channel thread faults that channel.
    dbg(
        &mut p,
        &mem,
        Insn::Go {
            chan: 1,
            ns: false,
            addr: CODE,
        },
        Some(1),
    );
    assert_eq!(
        rd(&mut p, regs::ftr(1)),
        FaultType::UndefInstr.bit() | FaultType::DbgInstr.bit()
    );
    assert_eq!(rd(&mut p, regs::FSRC), 0b10);
    assert_eq!(rd(&mut p, regs::FSRD), 0);
    // Reserved DBGCMD values do nothing.
    let before = p.stats().instructions;
    wr(&mut p, regs::DBGINST0, (0x34 << 16) | (0x08 << 24), &mem);
    wr(&mut p, regs::DBGCMD, 1, &mem);
    wr(&mut p, regs::DBGCMD, 3, &mem);
    assert_eq!(p.stats().instructions, before);
    assert_eq!(rd(&mut p, regs::INT_EVENT_RIS), 0);
    // A debug DMASEV on the manager signals the event.
    wr(&mut p, regs::DBGCMD, 0, &mem);
    assert_eq!(rd(&mut p, regs::INT_EVENT_RIS), 1 << 1);
}

// ------------------------------------------------------------- features

#[test]
fn events_wake_waiting_channels() {
    let mem = TestMem::standard();
    let mut p = dev();
    // Channel 0: DMAWFE 3, then signal event 5 as an interrupt.
    let mut a = Asm::new();
    a.wfe(3).sev(5).end();
    mem.poke(CODE, a.bytes());
    wr(&mut p, regs::INTEN, 1 << 5, &mem);
    go_code(&mut p, &mem, 0);
    assert_eq!(csr_state(&mut p, 0), ThreadState::WaitingForEvent.code());
    assert!(!p.pending());
    // Channel 1 signals event 3 (INTEN clear: an event, not an interrupt).
    let mut b = Asm::new();
    b.sev(3).end();
    mem.poke(CODE2, b.bytes());
    dbg(
        &mut p,
        &mem,
        Insn::Go {
            chan: 1,
            ns: false,
            addr: CODE2,
        },
        None,
    );
    assert_eq!(csr_state(&mut p, 0), 0);
    assert!(p.irq_level(5));
    assert_eq!(
        rd(&mut p, regs::INT_EVENT_RIS),
        1 << 5,
        "event 3 consumed by the waiter"
    );
    // An event nobody waits for stays pending, and a later DMAWFE consumes it.
    dbg(&mut p, &mem, Insn::Sev { event: 2 }, None);
    assert_eq!(rd(&mut p, regs::INT_EVENT_RIS) & (1 << 2), 1 << 2);
    assert!(!p.irq_level(2));
    let mut c = Asm::new();
    c.wfe(2).end();
    mem.poke(CODE + 0x100, c.bytes());
    dbg(
        &mut p,
        &mem,
        Insn::Go {
            chan: 2,
            ns: false,
            addr: CODE + 0x100,
        },
        None,
    );
    assert_eq!(csr_state(&mut p, 2), 0);
    assert_eq!(rd(&mut p, regs::INT_EVENT_RIS) & (1 << 2), 0);
}

#[test]
fn loop_forever_consumes_budget_and_is_killable() {
    let mem = TestMem::standard();
    let mut p = dev_with(|c| c.step_budget = 1000);
    poke_loop(&mem, |a| {
        a.nop();
    });
    go_code(&mut p, &mem, 4);
    // The debug instruction + at most one budget of channel instructions.
    assert_eq!(p.stats().instructions, 1 + 1000);
    assert!(p.pending());
    assert!(p.run_pending(&mem));
    assert_eq!(p.stats().instructions, 1 + 2000);
    dbg(&mut p, &mem, Insn::Kill, Some(4));
    assert!(!p.pending());
    assert!(!p.run_pending(&mem));
    assert_eq!(p.stats().instructions, 2 + 2000);
}

/// Channel instructions a run executes when only the clock can stop it:
/// never fewer than the minimum, and far fewer than the budget.
fn assert_time_cut(steps: u64) {
    assert!(
        (MIN_STEPS_PER_RUN..16 * MIN_STEPS_PER_RUN).contains(&steps),
        "{steps} steps"
    );
}

/// DMAGO of channel `chan` at CODE (secure) through the debug registers.
fn go_code(p: &mut Pl330, mem: &TestMem, chan: u8) {
    dbg(
        p,
        mem,
        Insn::Go {
            chan,
            ns: false,
            addr: CODE,
        },
        None,
    );
}

/// A controller whose runs only the clock cuts: 1 µs slices, a step budget
/// 16 times what a cut run may execute.
fn sliced_dev() -> Pl330 {
    dev_with(|c| {
        c.step_budget = 1 << 20;
        c.time_slice_us = 1;
    })
}

/// Writes a program at CODE that runs `body` forever (DMALPFE back to it).
fn poke_loop(mem: &TestMem, body: impl FnOnce(&mut Asm)) {
    let mut a = Asm::new();
    let top = a.offset();
    body(&mut a);
    a.lpfe(top);
    mem.poke(CODE, a.bytes());
}

#[test]
fn runaway_channel_is_stopped_by_the_time_slice() {
    let mem = TestMem::standard();
    // A budget 16 times what a cut run may execute: only the 1 µs slice ends a run.
    let mut p = sliced_dev();
    poke_loop(&mem, |a| {
        a.nop();
    });
    let before = p.stats().instructions;
    go_code(&mut p, &mem, 4);
    // The DBGCMD write returned: DMAGO + one slice of channel instructions.
    assert_time_cut(p.stats().instructions - before - 1);
    assert_eq!(p.stats().time_slices_expired, 1);
    assert!(p.pending());
    for round in 1..=3 {
        let before = p.stats().instructions;
        assert!(p.run_pending(&mem));
        assert_time_cut(p.stats().instructions - before);
        assert_eq!(p.stats().time_slices_expired, 1 + round);
    }
    assert_eq!(csr_state(&mut p, 4), ThreadState::Executing.code());
    dbg(&mut p, &mem, Insn::Kill, Some(4));
    assert!(!p.pending());
    let before = p.stats();
    assert!(!p.run_pending(&mem));
    assert_eq!(p.stats(), before, "nothing runs once killed");
}

#[test]
fn time_slice_rotates_over_runaway_channels() {
    // Eight channels loop forever, each bumping its SAR. Runs cut by the
    // clock stay short and still serve every channel.
    let mem = TestMem::standard();
    let mut p = sliced_dev();
    poke_loop(&mem, |a| {
        a.addh(AddrReg::Sar, 1);
    });
    for chan in 0..8 {
        go_code(&mut p, &mem, chan);
    }
    let sars = |p: &mut Pl330| (0..8).map(|c| rd(p, regs::sar(c))).collect::<Vec<_>>();
    for _ in 0..3 {
        let before = sars(&mut p);
        let steps = p.stats().instructions;
        for _ in 0..8 {
            assert!(p.run_pending(&mem));
        }
        assert!(p.stats().instructions - steps < 8 * 16 * MIN_STEPS_PER_RUN);
        let after = sars(&mut p);
        for c in 0..8 {
            assert_ne!(after[c], before[c], "channel {c} starved");
        }
    }
    for chan in 0..8 {
        dbg(&mut p, &mem, Insn::Kill, Some(chan));
    }
    assert!(!p.pending());
}

#[test]
fn cut_runs_resume_with_the_next_channel() {
    // Channels 0 and 5 loop forever (SAR += 1 per iteration, 2 instructions);
    // a budget of one quantum serves one channel per run. A cut run resumes
    // after the channel it served, so the two alternate exactly (resuming at
    // `start + 1` instead would serve channel 5 five runs out of eight).
    let mem = TestMem::standard();
    let mut p = dev_with(|c| c.step_budget = 64);
    poke_loop(&mem, |a| {
        a.addh(AddrReg::Sar, 1);
    });
    for chan in [0, 5] {
        go_code(&mut p, &mem, chan);
    }
    let base = (rd(&mut p, regs::sar(0)), rd(&mut p, regs::sar(5)));
    for _ in 0..16 {
        assert!(p.run_pending(&mem));
    }
    let done = (
        rd(&mut p, regs::sar(0)) - base.0,
        rd(&mut p, regs::sar(5)) - base.1,
    );
    assert_eq!(done, (8 * 32, 8 * 32), "32 iterations per quantum");
    dbg(&mut p, &mem, Insn::Kill, Some(0));
    dbg(&mut p, &mem, Insn::Kill, Some(5));
}

#[test]
fn memcpy_across_time_slices_is_exact() {
    let mem = TestMem::standard();
    let mut p = sliced_dev();
    // Not a multiple of 8: Linux copies with 4-byte bursts, some 24,600
    // instructions; a 1 µs slice leaves most of them for run_pending.
    let len = 0x8004;
    assert_eq!(linux_memcpy_burst(SRC, DST, len, 64, 256, 8), (2, 1));
    fill_pattern(&mem, SRC, len as usize, 9);
    linux_copy(&mut p, &mem, 1, CODE, SRC, DST, len);
    assert!(p.pending(), "the DMAGO write ran one slice only");
    assert!(!p.irq_level(1));
    let mut rounds = 0;
    while p.run_pending(&mem) {
        rounds += 1;
        assert!(rounds < 1000);
    }
    assert!(rounds >= 2, "{rounds} more runs");
    // Every call that returned with work left was cut by the clock.
    assert_eq!(p.stats().time_slices_expired, 1 + rounds);
    assert_eq!(rd(&mut p, regs::FSRC), 0);
    assert_copied(&mem, SRC, DST, len as usize);
    assert_eq!(p.stats().bytes_stored, u64::from(len));
    assert_eq!(p.stats().events_signalled, 1, "one DMASEV");
    assert!(p.irq_level(1));
    assert_eq!(linux_isr(&mut p, &mem), 1 << 1);
    assert!(!p.irq_level(1));
}

#[test]
fn time_slice_config() {
    let c = Pl330Config::default();
    assert_eq!((c.time_slice_us, c.write_slice_us()), (1000, 250));
    let c = Pl330Config {
        time_slice_us: 3,
        ..c
    };
    assert_eq!(c.write_slice_us(), 1, "never rounds down to no limit");
    let c = Pl330Config {
        time_slice_us: 0,
        ..c
    };
    assert_eq!(c.write_slice_us(), 0);
    // An absurd slice is no limit, not a panic.
    let mem = TestMem::standard();
    let mut p = dev_with(|c| {
        c.step_budget = 5000;
        c.time_slice_us = u64::MAX;
    });
    poke_loop(&mem, |a| {
        a.nop();
    });
    go(&mut p, &mem, 0, CODE, 0);
    assert_eq!(p.stats().instructions, 1 + 5000);
    assert_eq!(p.stats().time_slices_expired, 0);
}

#[test]
fn add_halfword_store_zero_and_fixed_addresses() {
    let mem = TestMem::standard();
    let mut a = Asm::new();
    a.mov(MovReg::Sar, SRC)
        .mov(MovReg::Dar, DST)
        .addh(AddrReg::Sar, 0x100)
        .adnh(AddrReg::Dar, 0xfff0) // DAR - 16
        .addh(AddrReg::Dar, 0x20) // DAR + 16 net
        // DMASTZ: 4 beats x 4 bytes of zeros at DAR.
        .mov(MovReg::Ccr, Ccr::linux(2, 4, 0))
        .stz()
        // Fixed-address source and destination: 4 beats of 2 bytes.
        .mov(MovReg::Ccr, (1 << 1) | (3 << 4) | (1 << 15) | (3 << 18))
        .ld(Cond::Always)
        .st(Cond::Always)
        .end();
    fill_pattern(&mem, SRC + 0x100, 8, 42);
    let mut p = run_prog(&mem, a.bytes());
    assert_eq!(rd(&mut p, regs::FSRC), 0);
    assert_eq!(rd(&mut p, regs::sar(0)), SRC + 0x100);
    assert_eq!(rd(&mut p, regs::dar(0)), DST + 16 + 16);
    assert_eq!(mem.peek(DST + 16, 16), vec![0u8; 16]);
    // The fixed destination receives each 2-byte beat in turn: the last wins.
    assert_eq!(mem.peek(DST + 32, 2), mem.peek(SRC + 0x100, 2));
    assert_eq!(mem.writes.borrow().len(), 1 + 4);
    assert_eq!(p.stats().bytes_loaded, 8);
    assert_eq!(p.stats().bytes_stored, 16 + 8);
}

#[test]
fn conditional_forms_follow_request_type() {
    let mem = TestMem::standard();
    fill_pattern(&mem, SRC, 64, 8);
    // No DMAWFP: request type Single. DMALDB/DMASTB are NOPs, DMALDS/DMASTS
    // move one beat, DMALPENDB does not loop.
    let mut a = Asm::new();
    a.mov(MovReg::Ccr, Ccr::linux(2, 4, 0))
        .mov(MovReg::Sar, SRC)
        .mov(MovReg::Dar, DST)
        .ld(Cond::Burst)
        .ld(Cond::Single)
        .st(Cond::Burst)
        .st(Cond::Single);
    let _ = a.lp(LoopCounter::Lc0, 3).unwrap();
    let top = a.offset();
    a.nop();
    a.lpend(LoopCounter::Lc0, Cond::Burst, top);
    a.end();
    let mut p = run_prog(&mem, a.bytes());
    assert_eq!(rd(&mut p, regs::FSRC), 0);
    assert_eq!(p.stats().bytes_loaded, 4);
    assert_eq!(p.stats().bytes_stored, 4);
    assert_eq!(mem.peek(DST, 4), mem.peek(SRC, 4));
    assert_eq!(
        rd(&mut p, regs::lc0(0)),
        2,
        "LPENDB skipped: counter untouched"
    );
}

#[test]
fn peripheral_wait_and_request() {
    let mem = TestMem::standard();
    fill_pattern(&mem, SRC, 64, 8);
    let mut a = Asm::new();
    a.mov(MovReg::Ccr, Ccr::linux(2, 4, 0))
        .mov(MovReg::Sar, SRC)
        .mov(MovReg::Dar, DST)
        .flushp(2)
        .wfp(WfpKind::Periph, 2)
        .ldp(true, 2)
        .ldp(false, 2)
        .st(Cond::Burst)
        .sev(0)
        .end();
    let mut p = run_prog(&mem, a.bytes());
    assert_eq!(
        csr_state(&mut p, 0),
        ThreadState::WaitingForPeripheral.code()
    );
    let csr = rd(&mut p, regs::csr(0));
    assert_eq!((csr >> 4) & 0x1f, 2);
    assert_eq!(csr & regs::CSR_DMAWFP_PERIPH, regs::CSR_DMAWFP_PERIPH);
    assert!(!p.pending());
    p.peripheral_request(2, true, &mem);
    assert_eq!(csr_state(&mut p, 0), 0);
    assert_eq!(
        p.stats().bytes_loaded,
        16,
        "burst request: LDPB moves, LDPS is a NOP"
    );
    assert_eq!(mem.peek(DST, 16), mem.peek(SRC, 16));
    assert!(p.irq_level(0));
}

#[test]
fn reset_restores_initial_state() {
    let mem = TestMem::standard();
    let mut p = run_prog(&mem, &[0xff]);
    wr(&mut p, regs::INTEN, 3, &mem);
    assert!(p.abort_level());
    p.reset();
    assert!(!p.abort_level());
    assert_eq!(rd(&mut p, regs::INTEN), 0);
    assert_eq!(rd(&mut p, regs::FSRC), 0);
    assert_eq!(rd(&mut p, regs::csr(0)), 0);
    assert_eq!(rd(&mut p, regs::cpc(0)), 0);
    assert_eq!(p.stats().faults, 1, "counters survive reset");
}

// ------------------------------------------------------------- proptests

proptest! {
    // Regression seeds go next to this file (`tests.proptest-regressions`),
    // inside the module's directory.
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn linux_copy_is_exact(len in 1u32..=0x1_0000, so in 0u32..64, doff in 0u32..64, rev in 0u8..3) {
        let mem = TestMem::standard();
        let mut p = dev_with(|c| { c.revision = rev; c.step_budget = 1 << 16; });
        fill_pattern(&mem, SRC + so, len as usize, so as u8);
        let src_before = mem.peek(SRC, 0x1_0000 + 64);
        linux_copy(&mut p, &mem, 0, CODE, SRC + so, DST + doff, len);
        let mut rounds = 0;
        while p.run_pending(&mem) {
            rounds += 1;
            prop_assert!(rounds < 1000);
        }
        prop_assert_eq!(rd(&mut p, regs::FSRC), 0);
        assert_copied(&mem, SRC + so, DST + doff, len as usize);
        prop_assert_eq!(mem.peek(SRC, 0x1_0000 + 64), src_before);
        prop_assert!(p.irq_level(0));
    }

    #[test]
    fn random_microcode_never_panics(code in proptest::collection::vec(any::<u8>(), 1..256),
                                     budget in 1u64..5000,
                                     ch in 0u8..8) {
        let mem = TestMem::new(vec![
            (u64::from(CODE)..0x2000, RWX),
            (u64::from(SRC)..u64::from(DST), R),
            (u64::from(DST)..0x50000, RW),
        ]);
        mem.poke(CODE, &code);
        let mut p = dev_with(|c| c.step_budget = budget);
        dbg(&mut p, &mem, Insn::Go { chan: ch, ns: false, addr: CODE }, None);
        let mut last = p.stats().instructions;
        prop_assert!(last <= budget + 1);
        for _ in 0..4 {
            p.run_pending(&mem);
            let now = p.stats().instructions;
            prop_assert!(now - last <= budget);
            last = now;
        }
        // All register reads stay well-defined; a kill always stops it.
        for off in (0..0x1000u64).step_by(4) {
            let _ = p.read(off, 4).unwrap();
        }
        dbg(&mut p, &mem, Insn::Kill, Some(ch));
        prop_assert!(!p.pending());
        prop_assert_eq!(csr_state(&mut p, u64::from(ch)), 0);
        for &(a, n) in mem.writes.borrow().iter() {
            prop_assert!(a >= u64::from(CODE) && a + n as u64 <= 0x50000);
        }
    }

    #[test]
    fn hostile_register_traffic_never_panics(
        ops in proptest::collection::vec((0u64..0x1000, any::<u32>(), 0usize..6), 1..200),
        code in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mem = TestMem::new(vec![
            (u64::from(CODE)..0x2000, RWX),
            (u64::from(DST)..0x50000, RW),
        ]);
        mem.poke(CODE, &code);
        let mut p = dev_with(|c| { c.step_budget = 2000; c.channels = 4; c.events = 5; });
        let budget = p.config().step_budget;
        for (off, val, sz) in ops {
            // Steer a third of the writes at the debug registers with a
            // DMAGO-ish DBGINST1 pointing into the code window.
            if off % 3 == 0 {
                // A whole debug instruction: DMAGO/DMAKILL/DMASEV or random.
                let chan = (val >> 8) & 3;
                let d0 = match val % 4 {
                    0 => (0xa0 << 16) | (chan << 24),
                    1 => (0x01 << 16) | 1 | (chan << 8),
                    2 => (0x34 << 16) | (((val >> 8) & 0x1f) << 27),
                    _ => val,
                };
                let before = p.stats().instructions;
                wr(&mut p, regs::DBGINST0, d0, &mem);
                wr(&mut p, regs::DBGINST1, CODE + ((val >> 16) & 0x3f), &mem);
                wr(&mut p, regs::DBGCMD, 0, &mem);
                prop_assert!(p.stats().instructions - before <= budget + 1);
                continue;
            }
            let before = p.stats().instructions;
            let aligned = sz == 4 && off % 4 == 0;
            prop_assert_eq!(p.write(off, sz, val, &mem).is_ok(), aligned);
            prop_assert_eq!(p.read(off, sz).is_ok(), aligned);
            prop_assert!(p.stats().instructions - before <= budget + 1);
            p.run_pending(&mem);
            prop_assert_eq!(p.abort_level(), rd(&mut p, regs::FSRD) != 0 || rd(&mut p, regs::FSRC) != 0);
            prop_assert_eq!(p.intmis(), rd(&mut p, regs::INTMIS));
            let events = u32::from(p.config().events);
            for line in 0..events {
                prop_assert_eq!(p.irq_level(line), p.intmis() & (1 << line) != 0);
            }
            prop_assert_eq!(p.num_irq_lines(), events + 1);
            prop_assert_eq!(p.irq_level(events), p.abort_level());
            prop_assert!(!p.irq_level(events + 1));
        }
    }
}

#[test]
fn irq_levels_into_matches_irq_level() {
    for combined in [false, true] {
        for (ris, inten) in [
            (0, 0),
            (0b1010, 0b0110),
            (u32::MAX, 1 << 31),
            (0xff, 0xffff_ffff),
        ] {
            for abort in [false, true] {
                let mem = TestMem::standard();
                let mut p = dev_with(|c| c.combined_irq = combined);
                if abort {
                    // An undefined instruction faults channel 0: irq_abort.
                    mem.poke(CODE, &[0x18, 0xff]);
                    go(&mut p, &mem, 0, CODE, 0);
                    assert!(p.abort_level());
                }
                p.ris = ris;
                p.inten = inten;
                // One slot more than the device has lines: it must read low.
                let n = p.num_irq_lines() as usize + 1;
                let mut out = vec![true; n];
                p.irq_levels_into(&mut out);
                let want: Vec<bool> = (0..n as u32).map(|l| p.irq_level(l)).collect();
                assert_eq!(
                    out, want,
                    "combined {combined} abort {abort} ris {ris:#x} inten {inten:#x}"
                );
                assert!(!out[n - 1]);
                assert_eq!(
                    out[p.abort_line() as usize],
                    abort || (combined && ris & inten != 0)
                );
            }
        }
    }
}

#[test]
fn abort_line_follows_faults_until_dmakill() {
    // Per-event lines: the abort line is the one after the events.
    let mem = TestMem::standard();
    let mut p = dev();
    assert_eq!((p.num_irq_lines(), p.abort_line()), (9, 8));
    let fp0 = p.irq_fingerprint();
    assert!(!p.irq_level(8));
    // Two channels fault (undefined instruction).
    mem.poke(CODE, &[0x18, 0xff]);
    go(&mut p, &mem, 0, CODE, 0);
    go(&mut p, &mem, 1, CODE, 0);
    assert!(p.irq_level(8));
    assert!((0..8).all(|l| !p.irq_level(l)), "no event line rises");
    assert_ne!(p.irq_fingerprint(), fp0, "the fingerprint sees the abort");
    // Killing one leaves the line high (the other still faults)...
    dbg(&mut p, &mem, Insn::Kill, Some(0));
    assert!(p.irq_level(8));
    // ...killing both lowers it.
    dbg(&mut p, &mem, Insn::Kill, Some(1));
    assert!(!p.irq_level(8));
    assert_eq!(p.irq_fingerprint(), fp0);
    // A manager fault (DMAGO of a channel that does not exist) raises it too.
    let mut q = dev_with(|c| c.channels = 2);
    go(&mut q, &mem, 5, CODE, 0);
    assert_eq!(rd(&mut q, regs::FSRD), 1);
    assert!(q.irq_level(q.abort_line()));
    dbg(&mut q, &mem, Insn::Kill, None);
    assert!(!q.irq_level(q.abort_line()));

    // Combined: the single line carries the abort as well.
    let mut p = dev_with(|c| c.combined_irq = true);
    assert_eq!((p.num_irq_lines(), p.abort_line()), (1, 0));
    go(&mut p, &mem, 2, CODE, 0);
    assert!(p.irq_level(0) && p.intmis() == 0);
    dbg(&mut p, &mem, Insn::Kill, Some(2));
    assert!(!p.irq_level(0));
}

#[test]
fn run_pending_without_executing_channel_changes_no_irq_level() {
    // What `Pl330Model::idle` relies on: with nothing executing, run_pending
    // leaves every interrupt level (and the events behind them) as it was.
    let mem = TestMem::standard();
    let mut p = dev_with(|c| c.step_budget = 50);
    fill_pattern(&mem, SRC, 0x1000, 4);
    linux_copy(&mut p, &mem, 2, CODE, SRC, DST, 0x1000);
    assert!(p.pending(), "budget of 50 cannot finish 4 KiB");
    let mut rounds = 0;
    while p.run_pending(&mem) {
        rounds += 1;
        assert!(rounds < 10_000);
    }
    assert!(!p.pending());
    let n = p.num_irq_lines() as usize;
    let mut before = vec![false; n];
    p.irq_levels_into(&mut before);
    assert!(before[2], "the copy raised its event");
    let (ris, inten) = (p.ris, p.inten);
    for _ in 0..3 {
        assert!(!p.run_pending(&mem));
    }
    let mut after = vec![false; n];
    p.irq_levels_into(&mut after);
    assert_eq!(after, before);
    assert_eq!((p.ris, p.inten), (ris, inten));
}
