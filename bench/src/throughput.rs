//! Item 5: PL330 model throughput, in process: copies of 4 KiB … 64 MiB run by
//! the model (Linux-shaped microcode, single-beat and burst CCR settings)
//! through the backend's own [`DmaTable`] over a memfd, against host `memcpy`
//! (`copy_from_slice`) of the same buffers.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use serde::Serialize;
use vfio_sidecar::device::DmaProt;
use vfio_sidecar::dma::{sealed_memfd, DmaTable};
use vfio_sidecar::model::pl330::asm::{
    dbginst, linux_mem_to_mem, linux_memcpy_burst, AsmError, LinuxShape, LinuxXfer,
};
use vfio_sidecar::model::pl330::insn::Insn;
use vfio_sidecar::model::pl330::{regs, Pl330, Pl330Config};

use vmm_shim::memory::SharedMapping;

use crate::BenchError;

const IOVA: u64 = 0x4000_0000;
const CODE_OFF: u64 = 0;
const SRC_OFF: u64 = 0x1_0000;

/// One copy size with one CCR setting.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputRow {
    /// "single" (1 beat of 8 B per DMALD/DMAST) or "burst" (Linux's choice).
    pub mode: &'static str,
    /// Bytes per copy.
    pub size: u64,
    /// Bytes per DMAGO (Linux's 256-byte microcode buffer limits one program).
    pub chunk: u64,
    /// Beat bytes × beats per burst.
    pub burst_bytes: u64,
    /// Copies timed.
    pub reps: usize,
    /// Median time of one copy through the model (ns).
    pub model_ns: f64,
    /// Median time of one host memcpy of the same size (ns).
    pub memcpy_ns: f64,
    /// Model GB/s (1e9 bytes/s).
    pub model_gbps: f64,
    /// memcpy GB/s.
    pub memcpy_gbps: f64,
    /// model throughput / memcpy throughput.
    pub ratio: f64,
}

struct Mem {
    map: SharedMapping,
    _file: File,
}

impl Mem {
    fn new(len: usize) -> Result<(Mem, OwnedFd), BenchError> {
        // Sealed, as QEMU's guest RAM is: the model reaches it through the
        // table's own mapping (unsealed memory takes checked copies, one
        // process_vm_readv/writev per access).
        let fd = sealed_memfd("vfio-sidecar-bench-pl330", len as u64)
            .map_err(|e| BenchError::Io("memfd".into(), e))?;
        let dup = fd
            .try_clone()
            .map_err(|e| BenchError::Io("dup memfd".into(), e))?;
        let map = SharedMapping::of_fd(fd.as_fd(), 0, len)
            .map_err(|e| BenchError::Io("mmap memfd".into(), e))?;
        Ok((
            Mem {
                map,
                _file: File::from(fd),
            },
            dup,
        ))
    }

    /// A mutable view of `[off, off+n)`. Callers never hold two overlapping
    /// views, and the model (the only other user of this memory, through its
    /// own mapping) does not run while a view is alive.
    fn view(&mut self, off: u64, n: usize) -> Result<&mut [u8], BenchError> {
        let end = (off as usize)
            .checked_add(n)
            .filter(|&e| e <= self.map.len())
            .ok_or_else(|| BenchError::Check(format!("view {off:#x}+{n} out of range")))?;
        let _ = end;
        // SAFETY: in bounds (checked above) of a live mapping we own; see the
        // method docs for aliasing.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.map.as_ptr().add(off as usize), n) })
    }

    /// `dst` ← `src` (disjoint ranges) with `copy_from_slice`.
    fn memcpy(&mut self, src: u64, dst: u64, n: usize) -> Result<(), BenchError> {
        let ok = |o: u64| {
            (o as usize)
                .checked_add(n)
                .is_some_and(|e| e <= self.map.len())
        };
        if !ok(src) || !ok(dst) || src.abs_diff(dst) < n as u64 {
            return Err(BenchError::Check("memcpy ranges".into()));
        }
        // SAFETY: both ranges are in bounds and disjoint (checked above).
        let (s, d) = unsafe {
            (
                std::slice::from_raw_parts(self.map.as_ptr().add(src as usize), n),
                std::slice::from_raw_parts_mut(self.map.as_ptr().add(dst as usize), n),
            )
        };
        d.copy_from_slice(s);
        Ok(())
    }
}

fn wr(dev: &mut Pl330, t: &DmaTable, off: u64, v: u32) -> Result<(), BenchError> {
    dev.write(off, 4, v, t)
        .map_err(|e| BenchError::Check(format!("PL330 write {off:#x}: {e}")))
}

fn rd(dev: &mut Pl330, off: u64) -> Result<u32, BenchError> {
    dev.read(off, 4)
        .map_err(|e| BenchError::Check(format!("PL330 read {off:#x}: {e}")))
}

struct Job {
    programs: Vec<Vec<u8>>,
    chunk: u64,
    burst_bytes: u64,
}

/// The microcode of a `size`-byte copy, split in the largest power-of-two
/// chunks whose program fits Linux's 256-byte buffer.
fn job(size: u64, dst_off: u64, burst: bool) -> Result<Job, BenchError> {
    let (src, dst) = ((IOVA + SRC_OFF) as u32, (IOVA + dst_off) as u32);
    let (bs, bl) = if burst {
        linux_memcpy_burst(src, dst, size as u32, 64, 256, 8)
    } else {
        (3, 1)
    };
    let mut chunk = size;
    loop {
        let mut programs = Vec::new();
        let mut done = 0u64;
        let mut too_large = false;
        while done < size {
            let len = chunk.min(size - done);
            let x = LinuxXfer {
                src: src + done as u32,
                dst: dst + done as u32,
                len: len as u32,
                burst_size_log2: bs,
                burst_len: bl,
                ccr_extra: 0,
                revision: 2,
                event: 0,
                shape: LinuxShape::Dregs,
            };
            match linux_mem_to_mem(&x) {
                Ok(p) => programs.push(p),
                Err(AsmError::TooLarge(_)) => {
                    too_large = true;
                    break;
                }
                Err(e) => return Err(BenchError::Check(format!("microcode: {e}"))),
            }
            done += len;
        }
        if !too_large {
            return Ok(Job {
                programs,
                chunk,
                burst_bytes: (1u64 << bs) * u64::from(bl),
            });
        }
        if chunk <= 4096 {
            return Err(BenchError::Check(
                "microcode does not fit even for 4 KiB".into(),
            ));
        }
        chunk /= 2;
    }
}

/// DBGINST0/1 of a DMAGO of channel 0 (secure) at `addr`: how Linux's
/// driver starts a program through the debug registers.
pub fn dmago(addr: u32) -> (u32, u32) {
    dbginst(
        Insn::Go {
            chan: 0,
            ns: false,
            addr,
        },
        None,
    )
}

/// Runs one copy through the model (every chunk: microcode into memory,
/// DMAGO through the debug registers, run to completion, check, INTCLR).
fn model_copy(dev: &mut Pl330, t: &DmaTable, mem: &mut Mem, j: &Job) -> Result<(), BenchError> {
    for p in &j.programs {
        mem.view(CODE_OFF, p.len())?.copy_from_slice(p);
        let (d0, d1) = dmago((IOVA + CODE_OFF) as u32);
        wr(dev, t, regs::DBGINST0, d0)?;
        wr(dev, t, regs::DBGINST1, d1)?;
        wr(dev, t, regs::DBGCMD, 0)?;
        while dev.pending() {
            dev.run_pending(t);
        }
        if rd(dev, regs::FSRC)? != 0 || rd(dev, regs::FSRD)? != 0 {
            return Err(BenchError::Check(format!(
                "PL330 fault during the copy (FTR0 {:#x})",
                rd(dev, regs::FTR0)?
            )));
        }
        if rd(dev, regs::INT_EVENT_RIS)? & 1 == 0 {
            return Err(BenchError::Check("copy ended without its event".into()));
        }
        wr(dev, t, regs::INTCLR, 1)?;
    }
    Ok(())
}

fn median(v: &mut [u64]) -> f64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0) as f64
}

/// Runs item 5 for `sizes` (bytes); each size is copied at least `reps_min`
/// times and until about `bytes_target` bytes were moved.
pub fn run(
    sizes: &[u64],
    reps_min: usize,
    bytes_target: u64,
) -> Result<Vec<ThroughputRow>, BenchError> {
    let max = sizes.iter().copied().max().unwrap_or(4096);
    let dst_off = SRC_OFF + max;
    let total = (dst_off + max) as usize;
    let (mut mem, fd) = Mem::new(total)?;
    let mut table = DmaTable::default();
    table
        .map(
            IOVA,
            total as u64,
            fd,
            0,
            DmaProt {
                read: true,
                write: true,
                exec: true,
            },
        )
        .map_err(|e| BenchError::Check(format!("DMA table map: {e}")))?;
    let mut dev =
        Pl330::new(Pl330Config::default()).map_err(|e| BenchError::Check(format!("PL330: {e}")))?;
    wr(&mut dev, &table, regs::INTEN, 1)?;
    // Source pattern, destination touched once (no first-touch faults timed).
    for (i, b) in mem.view(SRC_OFF, max as usize)?.iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    mem.view(dst_off, max as usize)?.fill(0);
    let mut rows = Vec::new();
    for burst in [false, true] {
        for &size in sizes {
            let j = job(size, dst_off, burst)?;
            // Correctness first: a cleared destination must end equal to the source.
            mem.view(dst_off, size as usize)?.fill(0);
            model_copy(&mut dev, &table, &mut mem, &j)?;
            let ok = {
                let src = mem.view(SRC_OFF, size as usize)?.to_vec();
                src == mem.view(dst_off, size as usize)?
            };
            if !ok {
                return Err(BenchError::Check(format!(
                    "PL330 copy of {size} bytes produced wrong data"
                )));
            }
            let reps = reps_min.max((bytes_target / size) as usize);
            let (mut m, mut c) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
            for _ in 0..reps {
                let t = Instant::now();
                model_copy(&mut dev, &table, &mut mem, &j)?;
                m.push(t.elapsed().as_nanos() as u64);
                let t = Instant::now();
                mem.memcpy(SRC_OFF, dst_off, size as usize)?;
                c.push(t.elapsed().as_nanos() as u64);
            }
            let (mn, cn) = (median(&mut m), median(&mut c));
            let gb = |ns: f64| size as f64 / ns;
            rows.push(ThroughputRow {
                mode: if burst { "burst" } else { "single" },
                size,
                chunk: j.chunk,
                burst_bytes: j.burst_bytes,
                reps,
                model_ns: mn,
                memcpy_ns: cn,
                model_gbps: gb(mn),
                memcpy_gbps: gb(cn),
                ratio: gb(mn) / gb(cn),
            });
        }
    }
    Ok(rows)
}

/// Human size.
pub fn size_name(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{} MiB", n >> 20)
    } else {
        format!("{} KiB", n >> 10)
    }
}

/// Prints the table.
pub fn print(rows: &[ThroughputRow]) {
    println!(
        "{:<7} {:>8} {:>8} {:>6} {:>6} {:>10} {:>10} {:>9} {:>9} {:>7}",
        "CCR",
        "size",
        "chunk",
        "burst",
        "reps",
        "model µs",
        "memcpy µs",
        "model GB/s",
        "memcpy GB/s",
        "ratio"
    );
    for r in rows {
        println!(
            "{:<7} {:>8} {:>8} {:>6} {:>6} {:>10.1} {:>10.1} {:>9.2} {:>9.2} {:>7.3}",
            r.mode,
            size_name(r.size),
            size_name(r.chunk),
            r.burst_bytes,
            r.reps,
            r.model_ns / 1000.0,
            r.memcpy_ns / 1000.0,
            r.model_gbps,
            r.memcpy_gbps,
            r.ratio
        );
    }
}
