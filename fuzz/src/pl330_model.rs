//! Fuzz harness: the PL330 model on its own. The input chooses a configuration,
//! then becomes register reads/writes, microcode and data in guest memory,
//! DMAGO/DMAKILL/DMASEV through the debug interface, peripheral requests,
//! pending-work steps and resets. Guest memory is the backend's real
//! [`DmaTable`] over a memfd with windows of different permissions and a hole.
//!
//! Shared by the cargo-fuzz target `pl330_model` and
//! `tests/tests/hostile_fuzz_replay.rs` (included by path).
//!
//! Memory layout (IOVA = memfd offset, 64 KiB memfd):
//! `[0x0000, 0x4000)` R+W+X (code and data), `[0x4000, 0x8000)` R only,
//! `[0x8000, 0xc000)` W only, `[0xc000, 0xd000)` unmapped, `[0xd000, 0x10000)`
//! R+W (no X).
//!
//! Op 10 shrinks (and maybe regrows) the memfd under the mappings: device
//! accesses beyond the end must become DMA faults, never SIGBUS.
//!
//! Checked: no panic; aligned 32-bit accesses inside the frame never fail and
//! every other width/offset always fails; per-event IRQ lines equal INTMIS,
//! the abort line (after the events, or in the combined line) FSRD/FSRC;
//! the device never changes bytes it cannot write (R-only window and hole,
//! compared with a shadow copy that follows the harness's own writes).
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::{AsFd, FromRawFd};
use std::os::unix::fs::FileExt;

use vfio_sidecar::device::DmaProt;
use vfio_sidecar::dma::DmaTable;
use vfio_sidecar::model::pl330::asm::dbginst;
use vfio_sidecar::model::pl330::insn::Insn;
use vfio_sidecar::model::pl330::{Pl330, Pl330Config};

const MEM: u64 = 0x10000;
/// Windows the device must never write: (start, end).
const READ_ONLY: [(u64, u64); 2] = [(0x4000, 0x8000), (0xc000, 0xd000)];

const DBGCMD: u64 = 0xd04;
const DBGINST0: u64 = 0xd08;
const DBGINST1: u64 = 0xd0c;
const INTMIS: u64 = 0x28;
const FSRD: u64 = 0x30;
const FSRC: u64 = 0x34;

/// Byte reader; past the end everything is 0.
struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = self.pos.saturating_add(n);
        self.data.get(start..end).unwrap_or_default()
    }
}

fn memfd(size: u64) -> File {
    // SAFETY: memfd_create reads the NUL-terminated name and returns a new fd.
    let fd = unsafe { libc::memfd_create(c"pl330-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fresh fd owned here.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).expect("memfd set_len");
    f
}

fn prot(read: bool, write: bool, exec: bool) -> DmaProt {
    DmaProt { read, write, exec }
}

/// Decodes the configuration from 6 input bytes (always a valid one).
fn config(inp: &mut Input<'_>) -> Pl330Config {
    let a = inp.u8();
    let b = inp.u8();
    let c = inp.u8();
    let d = inp.u8();
    let e = inp.u16();
    Pl330Config {
        channels: 1 + (a & 7),
        events: 1 + (b % 32),
        periph_reqs: c % 33,
        revision: d & 15,
        data_width_bits: [32, 64, 128, 64][usize::from((a >> 3) & 3)],
        data_buffer_lines: 1 + u32::from(e % 1024),
        combined_irq: a & 0x20 != 0,
        dmago_exec_gate: a & 0x40 != 0,
        step_budget: 1 + u64::from(d >> 4) * 256,
        // No wall-clock slice: a replayed input must run the same steps.
        time_slice_us: 0,
    }
}

/// What a run left behind (for tests).
#[derive(Debug)]
pub struct Outcome {
    /// Guest memory at the end.
    pub mem: Vec<u8>,
    /// INTMIS at the end.
    pub intmis: u32,
    /// FSRC at the end.
    pub fsrc: u32,
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let _ = run_outcome(data);
}

/// Runs one input and reports the end state.
pub fn run_outcome(data: &[u8]) -> Outcome {
    let mut inp = Input { data, pos: 0 };
    let cfg = config(&mut inp);
    let mut pl = match Pl330::new(cfg.clone()) {
        Ok(p) => p,
        Err(e) => panic!("valid config {cfg:?} refused: {e}"),
    };
    let mem = memfd(MEM);
    let mut table = DmaTable::new(16);
    let windows = [
        (0x0000, 0x4000, prot(true, true, true)),
        (0x4000, 0x4000, prot(true, false, false)),
        (0x8000, 0x4000, prot(false, true, false)),
        (0xd000, 0x3000, prot(true, true, false)),
    ];
    for (iova, size, p) in windows {
        let fd = mem.as_fd().try_clone_to_owned().expect("dup memfd");
        table.map(iova, size, fd, iova, p).expect("map window");
    }
    let mut shadow = vec![0u8; MEM as usize];
    let lines = pl.num_irq_lines();
    let mut steps = 0;
    while !inp.done() && steps < 1024 {
        steps += 1;
        match inp.u8() % 11 {
            0 => {
                // Register read, any offset/width.
                let off = u64::from(inp.u16() & 0x1fff);
                let size = [1usize, 2, 4, 8][usize::from(inp.u8() & 3)];
                let valid = off % 4 == 0 && size == 4 && off < 0x1000;
                assert_eq!(pl.read(off, size).is_ok(), valid, "read {off:#x}/{size}");
            }
            1 => {
                // Register write, any offset/width.
                let off = u64::from(inp.u16() & 0x1fff);
                let size = [1usize, 2, 4, 8][usize::from(inp.u8() & 3)];
                let v = inp.u32();
                let valid = off % 4 == 0 && size == 4 && off < 0x1000;
                assert_eq!(
                    pl.write(off, size, v, &table).is_ok(),
                    valid,
                    "write {off:#x}/{size}"
                );
            }
            2 => {
                // Register write at a 4-aligned offset in the frame (DBGINST,
                // INTEN, INTCLR are reachable quickly).
                let off = u64::from(inp.u16() & 0xffc);
                let v = inp.u32();
                pl.write(off, 4, v, &table).expect("aligned write");
            }
            3 => {
                // Microcode/data into guest memory.
                let off = u64::from(inp.u16()) % MEM;
                let len = usize::from(inp.u8());
                let b = inp.bytes(len);
                let n = (MEM - off).min(b.len() as u64) as usize;
                let b = b.get(..n).unwrap_or_default();
                mem.write_all_at(b, off).expect("guest write");
                if let Some(s) = shadow.get_mut(off as usize..off as usize + n) {
                    s.copy_from_slice(b);
                }
            }
            4 => {
                // DMAGO via the debug interface (as Linux's _execute_DBGINSN).
                let chan = inp.u8() & 7;
                let ns = inp.u8() & 1 != 0;
                let addr = u32::from(inp.u16());
                let (d0, d1) = dbginst(Insn::Go { chan, ns, addr }, None);
                pl.write(DBGINST0, 4, d0, &table).expect("dbginst0");
                pl.write(DBGINST1, 4, d1, &table).expect("dbginst1");
                pl.write(DBGCMD, 4, 0, &table).expect("dbgcmd");
            }
            5 => {
                // DMAKILL or DMASEV on a channel or the manager.
                let c = inp.u8();
                let target = if c & 8 != 0 { None } else { Some(c & 7) };
                let insn = if c & 16 != 0 {
                    Insn::Sev {
                        event: inp.u8() & 31,
                    }
                } else {
                    Insn::Kill
                };
                let (d0, d1) = dbginst(insn, target);
                pl.write(DBGINST0, 4, d0, &table).expect("dbginst0");
                pl.write(DBGINST1, 4, d1, &table).expect("dbginst1");
                pl.write(DBGCMD, 4, 0, &table).expect("dbgcmd");
            }
            6 => {
                let n = 1 + inp.u8() % 8;
                for _ in 0..n {
                    if !pl.run_pending(&table) {
                        break;
                    }
                }
            }
            7 => {
                let p = inp.u8();
                pl.peripheral_request(p & 63, p & 64 != 0, &table);
            }
            8 => pl.reset(),
            10 => {
                // The client shrinks (or regrows) the memory under the
                // mappings: accesses beyond the end must fault, not SIGBUS.
                let size = u64::from(inp.u8() % 17) * 0x1000;
                mem.set_len(size).expect("resize guest memory");
                if let Some(s) = shadow.get_mut(size as usize..) {
                    s.fill(0);
                }
                mem.set_len(MEM).expect("regrow");
                if inp.u8() & 1 == 0 {
                    mem.set_len(size).expect("resize guest memory");
                }
            }
            _ => {
                // Program: raw microcode at a code offset, then DMAGO on it.
                let off = u64::from(inp.u16() & 0x3fff);
                let len = usize::from(inp.u8() % 64);
                let b = inp.bytes(len);
                let n = (0x4000 - off).min(b.len() as u64) as usize;
                let b = b.get(..n).unwrap_or_default();
                mem.write_all_at(b, off).expect("guest write");
                if let Some(s) = shadow.get_mut(off as usize..off as usize + n) {
                    s.copy_from_slice(b);
                }
                let chan = inp.u8() & 7;
                let (d0, d1) = dbginst(
                    Insn::Go {
                        chan,
                        ns: true,
                        addr: off as u32,
                    },
                    None,
                );
                pl.write(DBGINST0, 4, d0, &table).expect("dbginst0");
                pl.write(DBGINST1, 4, d1, &table).expect("dbginst1");
                pl.write(DBGCMD, 4, 0, &table).expect("dbgcmd");
            }
        }
        // Line levels follow INTMIS.
        let mis = pl.read(INTMIS, 4).expect("INTMIS");
        assert_eq!(mis, pl.intmis());
        // irq_abort: some thread faulting (FSRD/FSRC), the line after the
        // events or part of the combined line.
        let abort = pl.read(FSRD, 4).expect("FSRD") != 0 || pl.read(FSRC, 4).expect("FSRC") != 0;
        assert_eq!(pl.abort_level(), abort);
        for l in 0..lines.max(1) + 1 {
            let events = u32::from(cfg.events);
            let want = if cfg.combined_irq {
                l == 0 && (mis != 0 || abort)
            } else if l < events {
                mis & (1 << l) != 0
            } else {
                l == events && abort
            };
            assert_eq!(pl.irq_level(l), want, "line {l}, INTMIS {mis:#x}");
        }
    }
    // Drain the remaining work a bounded number of times.
    for _ in 0..4 {
        if !pl.run_pending(&table) {
            break;
        }
    }
    // The device never wrote where it may not (regrow first: a shrunk file
    // reads back as zeros, as the shadow says).
    mem.set_len(MEM).expect("regrow");
    for (s, e) in READ_ONLY {
        let mut now = vec![0u8; (e - s) as usize];
        mem.read_exact_at(&mut now, s).expect("read back");
        assert!(
            now.as_slice() == shadow.get(s as usize..e as usize).unwrap_or_default(),
            "device wrote into non-writable window [{s:#x}, {e:#x})"
        );
    }
    let mut all = vec![0u8; MEM as usize];
    mem.read_exact_at(&mut all, 0).expect("read back");
    Outcome {
        mem: all,
        intmis: pl.intmis(),
        fsrc: pl.read(0x34, 4).expect("FSRC"),
    }
}

/// A microcode program copying 128 bytes from `src` to `dst` then DMASEV 0
/// (non-secure accesses: op 9 starts channels non-secure).
pub fn copy_program(src: u32, dst: u32) -> Vec<u8> {
    use vfio_sidecar::model::pl330::asm::Asm;
    use vfio_sidecar::model::pl330::insn::{Cond, MovReg};
    let mut a = Asm::new();
    a.mov(MovReg::Sar, src)
        .mov(MovReg::Dar, dst)
        .mov(
            MovReg::Ccr,
            1 | (3 << 1) | (15 << 4) | (1 << 9) | (1 << 14) | (3 << 15) | (15 << 18) | (1 << 23),
        )
        .ld(Cond::Always)
        .st(Cond::Always)
        .sev(0)
        .end();
    a.into_bytes()
}

/// Hand-made inputs reaching deep paths (also the committed seed corpus).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    // 8 channels, 64-bit, DMAGO gate, 8 events, 4 peripherals, r1p1,
    // budget 257, 256 MFIFO lines.
    let cfg = [0x4fu8, 7, 4, 0x12, 255, 0];
    let pattern: Vec<u8> = (0..128u32).map(|i| (i * 7 + 1) as u8).collect();
    let mut copy = cfg.to_vec();
    // INTEN = 1.
    copy.extend_from_slice(&[2, 0x20, 0, 1, 0, 0, 0]);
    // Source data at 0x1000.
    copy.extend_from_slice(&[3, 0x00, 0x10, 128]);
    copy.extend_from_slice(&pattern);
    // Program at 0x100, DMAGO channel 0.
    let prog = copy_program(0x1000, 0x2000);
    copy.extend_from_slice(&[9, 0x00, 0x01, prog.len() as u8]);
    copy.extend_from_slice(&prog);
    copy.push(0);
    copy.extend_from_slice(&[6, 8]);

    // A program storing into the read-only window: must fault, not write.
    let mut fault = cfg.to_vec();
    let prog = copy_program(0x1000, 0x4000);
    fault.extend_from_slice(&[9, 0x00, 0x02, prog.len() as u8]);
    fault.extend_from_slice(&prog);
    fault.push(1);
    // A DMAGO into the unmapped hole and one into the W-only window.
    fault.extend_from_slice(&[4, 2, 1, 0x00, 0xc0]);
    fault.extend_from_slice(&[4, 3, 1, 0x00, 0x80]);
    // Kill everything, reset, read every register.
    fault.extend_from_slice(&[5, 8, 5, 0, 8]);
    for off in (0..0x1000u16).step_by(0x100) {
        fault.extend_from_slice(&[0, off as u8, (off >> 8) as u8, 2]);
    }

    // Register traffic of every width.
    let mut regs = cfg.to_vec();
    for (i, off) in [0x20u16, 0x2c, 0xd04, 0xd08, 0xfe0, 0x1000, 0x1ffc]
        .iter()
        .enumerate()
    {
        regs.extend_from_slice(&[1, *off as u8, (*off >> 8) as u8, i as u8, 0xff, 0, 0, 0]);
        regs.extend_from_slice(&[0, *off as u8, (*off >> 8) as u8, i as u8]);
    }
    vec![("copy", copy), ("fault", fault), ("regs", regs)]
}
