//! Transfers the guest runs: their shapes (beat size, burst length, loop
//! nesting, tail), the parameter block that tells the guest, and the checks on
//! what the guest reported.

use std::time::Duration;

use thiserror::Error;

use crate::backend::EoiPolicy;
use crate::layout::*;
use crate::memory::{GuestRam, MemoryError};

/// "PLSH": parameter block magic.
pub const PARAMS_MAGIC: u32 = 0x4853_4c50;
/// Parameter block field offsets (must match the guest).
mod p {
    pub const MAGIC: u64 = 0x00;
    pub const DEV: u64 = 0x04;
    pub const NUM: u64 = 0x08;
    pub const ELCR: u64 = 0x0c;
    pub const VEC: u64 = 0x10;
    pub const LINE: u64 = 0x14;
    pub const EVENT: u64 = 0x18;
    pub const CHAN: u64 = 0x1c;
    pub const SPIN: u64 = 0x20;
    pub const XFERS: u64 = 0x40;
    pub const XFER_SIZE: u64 = 0x40;
}
/// Results header / record offsets (must match the guest).
mod r {
    pub const PERIPH: u64 = 0;
    pub const PCELL: u64 = 4;
    pub const CR0: u64 = 8;
    pub const CRD: u64 = 12;
    pub const IRQS: u64 = 16;
    pub const SPUR: u64 = 20;
    pub const STATUS: u64 = 24;
    pub const RECS: u64 = 0x40;
    pub const REC_SIZE: u64 = 0x40;
}

/// Guest record status: completed, interrupt seen.
pub const ST_DONE: u32 = 1;
/// Guest record status: DBGSTATUS stayed busy.
pub const ST_BUSY_TIMEOUT: u32 = 2;
/// Guest record status: an expected fault did not show up.
pub const ST_NO_FAULT: u32 = 3;
/// Guest record status: fault seen in FSRD/FSRC.
pub const ST_FAULT: u32 = 4;
/// Byte the shim fills destination buffers with.
pub const POISON: u8 = 0x5a;
/// Mismatch value the guest reports when the buffers are equal.
pub const NO_MISMATCH: u32 = u32::MAX;

/// CCR fields for memory-to-memory copies (PL330 TRM; Linux `_prepare_ccr`).
pub fn ccr(beat_bytes: u32, burst_len: u32) -> u32 {
    let bs = beat_bytes.trailing_zeros() & 7;
    let bl = (burst_len.clamp(1, 16) - 1) & 0xf;
    1 | (bs << 1) | (bl << 4) | (1 << 14) | (bs << 15) | (bl << 18)
}

/// One transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Transfer {
    /// Source GPA.
    pub src: u32,
    /// Destination GPA.
    pub dst: u32,
    /// Bytes copied.
    pub len: u32,
    /// Microcode GPA.
    pub mcode: u32,
    /// Beat size in bytes (1, 2, 4, 8).
    pub beat: u32,
    /// Beats per burst (1..=16).
    pub burst_len: u32,
    /// Outer loop count (1 = no outer DMALP).
    pub outer: u32,
    /// Inner loop count (1 = no inner DMALP).
    pub inner: u32,
    /// LD/ST pairs per inner iteration.
    pub unroll: u32,
    /// Single-beat tail transfers (second DMAMOV CCR), 0..=256.
    pub tail: u32,
    /// Microcode placed in the no-exec page: the device must fault.
    pub expect_fault: bool,
    /// Runs from the no-exec page (fault transfer), whether or not a fault is expected.
    pub from_noexec: bool,
}

impl Transfer {
    /// Bytes moved by this shape.
    pub fn shape_bytes(
        beat: u32,
        burst_len: u32,
        outer: u32,
        inner: u32,
        unroll: u32,
        tail: u32,
    ) -> u64 {
        u64::from(beat)
            * (u64::from(outer) * u64::from(inner) * u64::from(unroll) * u64::from(burst_len)
                + u64::from(tail))
    }
}

/// Errors of planning and result collection.
#[derive(Debug, Error)]
pub enum PlanError {
    /// Bad transfer count or size.
    #[error("{0}")]
    Invalid(String),
    /// Guest memory access failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// xorshift64*: deterministic pseudo-random shapes and data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator (seed 0 is replaced by a constant).
    pub fn new(seed: u64) -> Self {
        Rng(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u32, hi: u32) -> u32 {
        if hi <= lo {
            return lo;
        }
        lo + (self.next_u64() % u64::from(hi - lo + 1)) as u32
    }
}

/// Plans `n` transfers of at most `max_size` bytes each, beats up to
/// `max_beat` bytes, plus one fault transfer (from the no-exec page) in the
/// middle. `expect_fault` says whether that one must fault.
pub fn plan(
    n: usize,
    max_size: u32,
    max_beat: u32,
    expect_fault: bool,
    seed: u64,
) -> Result<Vec<Transfer>, PlanError> {
    if n == 0 || n + 1 > MAX_XFERS {
        return Err(PlanError::Invalid(format!(
            "--transfers must be 1..={} (got {n})",
            MAX_XFERS - 1
        )));
    }
    if max_size == 0 || (u64::from(max_size) + 64) * (n as u64 + 1) > BUF_AREA {
        return Err(PlanError::Invalid(format!(
            "--max-size must be 1..={} bytes for {n} transfers (got {max_size})",
            BUF_AREA / (n as u64 + 1) - 64
        )));
    }
    let max_beat = [8u32, 4, 2, 1]
        .into_iter()
        .find(|&b| b <= max_beat.max(1))
        .unwrap_or(1);
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(n + 1);
    let fault_at = n / 2;
    let mut src = SRC_BASE;
    let mut dst = DST_BASE;
    for i in 0..=n {
        let fault = i == fault_at;
        // beat sizes cycle through what the device supports, capped by max_size
        let mut beat = [1u32, 2, 4, 8][i % 4].min(max_beat);
        while beat > max_size {
            beat /= 2;
        }
        let budget = u64::from(max_size) / u64::from(beat); // beats allowed
        let (burst_len, unroll, outer, inner, tail);
        if fault {
            (burst_len, unroll, outer, inner) = (1, 1, 1, budget.min(16) as u32);
            tail = 0;
        } else {
            let bl = rng.range(1, 16).min(budget as u32).max(1);
            let un = rng.range(1, 4).min((budget / u64::from(bl)) as u32).max(1);
            let per_iter = u64::from(bl) * u64::from(un);
            let iters = (budget / per_iter).max(1);
            // shapes: 0 = single loop, 1 = nested loops, 2 = no loop + tail
            let (o, inn) = match i % 3 {
                0 => (1, rng.range(1, iters.min(256) as u32)),
                1 if iters >= 4 => {
                    let o = rng.range(2, (iters / 2).min(256) as u32);
                    let inn = rng.range(2, ((iters / u64::from(o)).min(256) as u32).max(2));
                    (o, inn)
                }
                _ => (1, 1),
            };
            let used = u64::from(o) * u64::from(inn) * per_iter;
            let left = budget.saturating_sub(used).min(256) as u32;
            (burst_len, unroll, outer, inner) = (bl, un, o, inn);
            tail = if i % 3 == 2 {
                rng.range(1.min(left), left)
            } else {
                rng.range(0, left.min(15))
            };
        }
        let len = Transfer::shape_bytes(beat, burst_len, outer, inner, unroll, tail);
        if len == 0 || len > u64::from(max_size) {
            return Err(PlanError::Invalid(format!(
                "internal: planned {len} bytes for transfer {i}"
            )));
        }
        let mcode = if fault {
            NOEXEC_PAGE
        } else {
            MCODE_BASE + i as u64 * MCODE_PER_XFER
        };
        out.push(Transfer {
            src: src as u32,
            dst: dst as u32,
            len: len as u32,
            mcode: mcode as u32,
            beat,
            burst_len,
            outer,
            inner,
            unroll,
            tail,
            expect_fault: fault && expect_fault,
            from_noexec: fault,
        });
        // next buffers, 64-byte aligned
        src += (len + 63) & !63;
        dst += (len + 63) & !63;
    }
    Ok(out)
}

/// Loads the guest: code, GDT, parameter block, source patterns, poisoned
/// destinations, cleared results.
pub fn load_guest(
    ram: &GuestRam,
    code: &[u8],
    xfers: &[Transfer],
    dev_base: u64,
    elcr_level: bool,
    seed: u64,
) -> Result<(), PlanError> {
    if code.len() as u64 > CODE_MAX {
        return Err(PlanError::Invalid(format!(
            "guest code is {} bytes",
            code.len()
        )));
    }
    ram.write(CODE_BASE, code)?;
    // flat GDT: null, code 0x08, data 0x10
    let gdt: [u64; 3] = [0, 0x00cf_9a00_0000_ffff, 0x00cf_9200_0000_ffff];
    for (i, d) in gdt.iter().enumerate() {
        ram.write(GDT_BASE + 8 * i as u64, &d.to_le_bytes())?;
    }
    ram.write(PARAMS_BASE, &[0; PAGE_SIZE as usize])?;
    ram.write(RESULTS_BASE, &[0; PAGE_SIZE as usize])?;
    let w = |off: u64, v: u32| ram.write_u32(PARAMS_BASE + off, v);
    w(p::MAGIC, PARAMS_MAGIC)?;
    w(p::DEV, dev_base as u32)?;
    w(p::NUM, xfers.len() as u32)?;
    w(p::ELCR, u32::from(elcr_level))?;
    w(p::VEC, PIC_VECTOR_BASE)?;
    w(p::LINE, DEVICE_GSI)?;
    w(p::EVENT, 0)?;
    w(p::CHAN, 0)?;
    w(p::SPIN, 20_000)?;
    let mut rng = Rng::new(seed ^ 0x5eed);
    for (i, x) in xfers.iter().enumerate() {
        let d = PARAMS_BASE + p::XFERS + i as u64 * p::XFER_SIZE;
        let fields = [
            x.src,
            x.dst,
            x.len,
            x.mcode,
            ccr(x.beat, x.burst_len),
            x.outer,
            x.inner,
            x.unroll,
            ccr(x.beat, 1),
            x.tail,
            u32::from(x.expect_fault),
        ];
        for (k, v) in fields.iter().enumerate() {
            ram.write_u32(d + 4 * k as u64, *v)?;
        }
        let mut data: Vec<u8> = (0..x.len).map(|_| rng.next_u64() as u8).collect();
        if let Some(b) = data.first_mut() {
            if *b == POISON {
                *b = !POISON;
            }
        }
        ram.write(u64::from(x.src), &data)?;
        ram.write(u64::from(x.dst), &vec![POISON; x.len as usize])?;
        ram.write(u64::from(x.mcode), &[0; MCODE_PER_XFER as usize])?;
    }
    Ok(())
}

/// What the guest reported for one transfer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Record {
    /// ST_* code.
    pub status: u32,
    /// FSRD (FSM) as read.
    pub fsrd: u32,
    /// FSRC (FSC).
    pub fsrc: u32,
    /// INT_EVENT_RIS (ES).
    pub es: u32,
    /// INTEN.
    pub inten: u32,
    /// Channel fault type (FTR n).
    pub ftr: u32,
    /// Manager fault type (FTRD).
    pub ftrd: u32,
    /// Channel status (CSR n).
    pub csr: u32,
    /// First differing byte, or NO_MISMATCH.
    pub mismatch: u32,
    /// Device interrupts taken while this transfer ran.
    pub irqs: u32,
    /// Microcode length written by the guest.
    pub mcode_len: u32,
    /// Bits written to INTCLR.
    pub cleared: u32,
}

/// Results header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Header {
    /// PeriphID as the guest assembled it.
    pub periph_id: u32,
    /// PCellID.
    pub pcell_id: u32,
    /// CR0.
    pub cr0: u32,
    /// CRD.
    pub crd: u32,
    /// Interrupt handler entries.
    pub irqs: u32,
    /// Entries that found no event (spurious from the driver's view).
    pub spurious: u32,
    /// Done code.
    pub status: u32,
}

/// Reads the results header.
pub fn read_header(ram: &GuestRam) -> Result<Header, PlanError> {
    let g = |o: u64| ram.read_u32(RESULTS_BASE + o);
    Ok(Header {
        periph_id: g(r::PERIPH)?,
        pcell_id: g(r::PCELL)?,
        cr0: g(r::CR0)?,
        crd: g(r::CRD)?,
        irqs: g(r::IRQS)?,
        spurious: g(r::SPUR)?,
        status: g(r::STATUS)?,
    })
}

/// Reads record `i`.
pub fn read_record(ram: &GuestRam, i: usize) -> Result<Record, PlanError> {
    if i >= MAX_XFERS {
        return Err(PlanError::Invalid(format!("guest reported transfer {i}")));
    }
    let base = RESULTS_BASE + r::RECS + i as u64 * r::REC_SIZE;
    let mut v = [0u32; 12];
    for (k, slot) in v.iter_mut().enumerate() {
        *slot = ram.read_u32(base + 4 * k as u64)?;
    }
    Ok(Record {
        status: v[0],
        fsrd: v[1],
        fsrc: v[2],
        es: v[3],
        inten: v[4],
        ftr: v[5],
        ftrd: v[6],
        csr: v[7],
        mismatch: v[8],
        irqs: v[9],
        mcode_len: v[10],
        cleared: v[11],
    })
}

/// The shim's verdict on one transfer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// Passed.
    pub ok: bool,
    /// Whether it was the deliberate fault and the fault was seen.
    pub fault_seen: bool,
    /// Why not, if not.
    pub reason: Option<String>,
}

/// Checks one transfer against the guest's record and RAM (independently of
/// the guest's own comparison).
pub fn verify(
    ram: &GuestRam,
    x: &Transfer,
    rec: &Record,
    event: u32,
) -> Result<Verdict, PlanError> {
    let mut src = vec![0; x.len as usize];
    let mut dst = vec![0; x.len as usize];
    ram.read(u64::from(x.src), &mut src)?;
    ram.read(u64::from(x.dst), &mut dst)?;
    let fail = |r: String| Verdict {
        ok: false,
        fault_seen: false,
        reason: Some(r),
    };
    if x.expect_fault {
        if rec.status != ST_FAULT {
            return Ok(fail(format!(
                "expected a fault, guest status {}",
                rec.status
            )));
        }
        if rec.fsrc == 0 && rec.fsrd & 1 == 0 {
            return Ok(fail("fault status registers read zero".into()));
        }
        if dst.iter().any(|&b| b != POISON) {
            return Ok(fail(
                "destination changed although the microcode faulted".into(),
            ));
        }
        return Ok(Verdict {
            ok: true,
            fault_seen: true,
            reason: None,
        });
    }
    if rec.status != ST_DONE {
        return Ok(fail(format!(
            "guest status {} (expected completion)",
            rec.status
        )));
    }
    if rec.es & (1 << event) == 0 || rec.cleared & (1 << event) == 0 {
        return Ok(fail(format!(
            "event {event} not seen/cleared (ES {:#x}, INTCLR {:#x})",
            rec.es, rec.cleared
        )));
    }
    if rec.fsrc != 0 || rec.fsrd & 1 != 0 {
        return Ok(fail(format!(
            "fault registers set (FSRD {:#x} FSRC {:#x} FTR {:#x})",
            rec.fsrd, rec.fsrc, rec.ftr
        )));
    }
    if let Some(off) = src.iter().zip(&dst).position(|(a, b)| a != b) {
        return Ok(fail(format!(
            "copy differs at byte {off} (guest says {:#x})",
            rec.mismatch
        )));
    }
    if rec.mismatch != NO_MISMATCH {
        return Ok(fail(format!(
            "guest compare reports mismatch at {:#x}",
            rec.mismatch
        )));
    }
    Ok(Verdict {
        ok: true,
        fault_seen: false,
        reason: None,
    })
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Transfers besides the deliberate fault.
    pub transfers: usize,
    /// Largest transfer in bytes.
    pub max_size: u32,
    /// EOI policy the backend was started with (decides irqfd wiring).
    pub eoi: EoiPolicy,
    /// Map all RAM executable (comparison run).
    pub exec_all: bool,
    /// Seed for shapes and data.
    pub seed: u64,
    /// Give up after this long.
    pub timeout: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            transfers: 8,
            max_size: 16384,
            eoi: EoiPolicy::ClearRegister,
            exec_all: false,
            seed: 1,
            timeout: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ccr_matches_linux_fields() {
        // 4-byte beats, burst 16, incrementing src and dst
        let c = ccr(4, 16);
        assert_eq!(c & 1, 1);
        assert_eq!((c >> 1) & 7, 2);
        assert_eq!((c >> 4) & 0xf, 15);
        assert_eq!((c >> 14) & 1, 1);
        assert_eq!((c >> 15) & 7, 2);
        assert_eq!((c >> 18) & 0xf, 15);
        assert_eq!(ccr(1, 1), 1 | (1 << 14));
    }

    #[test]
    fn plans_fit_limits_and_vary() {
        for seed in 1..40 {
            for n in [1usize, 2, 5, 8, 20] {
                let xs = plan(n, 4096, 8, true, seed).unwrap();
                assert_eq!(xs.len(), n + 1);
                assert_eq!(xs.iter().filter(|x| x.expect_fault).count(), 1);
                for x in &xs {
                    assert!(x.len >= 1 && x.len <= 4096);
                    assert_eq!(
                        u64::from(x.len),
                        Transfer::shape_bytes(
                            x.beat,
                            x.burst_len,
                            x.outer,
                            x.inner,
                            x.unroll,
                            x.tail
                        )
                    );
                    assert!((1..=256).contains(&x.outer) && (1..=256).contains(&x.inner));
                    assert!(x.tail <= 256 && (1..=16).contains(&x.burst_len));
                    assert!(u64::from(x.src) + u64::from(x.len) <= SRC_BASE + BUF_AREA);
                    assert!(u64::from(x.dst) + u64::from(x.len) <= DST_BASE + BUF_AREA);
                    // body of the outer loop must fit a DMALPEND jump (<= 255 bytes)
                    assert!(2 + 2 * x.unroll + 2 <= 255);
                }
            }
        }
        let xs = plan(8, 65536, 8, false, 7).unwrap();
        assert!(xs.iter().any(|x| x.outer > 1), "some nested loops");
        assert!(
            xs.iter().any(|x| x.outer == 1 && x.inner == 1),
            "some loop-free"
        );
        assert!(xs.iter().any(|x| x.tail > 0), "some tails");
        assert!(!xs.iter().any(|x| x.expect_fault));
        assert!(xs.iter().any(|x| x.from_noexec));
        let beats: std::collections::BTreeSet<_> = xs.iter().map(|x| x.beat).collect();
        assert!(beats.len() >= 3);
    }

    #[test]
    fn plan_rejects_bad_arguments() {
        assert!(plan(0, 100, 4, true, 1).is_err());
        assert!(plan(MAX_XFERS, 100, 4, true, 1).is_err());
        assert!(plan(4, 0, 4, true, 1).is_err());
        assert!(plan(4, u32::MAX, 4, true, 1).is_err());
        // tiny sizes still plan (beats shrink)
        let xs = plan(4, 1, 8, true, 1).unwrap();
        assert!(xs.iter().all(|x| x.len == 1 && x.beat == 1));
    }

    #[test]
    fn load_and_verify_round_trip() {
        let ram = GuestRam::new(RAM_SIZE).unwrap();
        let xs = plan(3, 512, 4, true, 3).unwrap();
        load_guest(&ram, &[0x90; 16], &xs, DEVICE_BASE, true, 3).unwrap();
        assert_eq!(ram.read_u32(PARAMS_BASE).unwrap(), PARAMS_MAGIC);
        assert_eq!(ram.read_u32(PARAMS_BASE + p::NUM).unwrap(), 4);
        let x = xs[0];
        let mut rec = Record {
            status: ST_DONE,
            es: 1,
            cleared: 1,
            mismatch: NO_MISMATCH,
            ..Default::default()
        };
        // nothing copied yet: must fail
        assert!(!verify(&ram, &x, &rec, 0).unwrap().ok);
        let mut buf = vec![0; x.len as usize];
        ram.read(u64::from(x.src), &mut buf).unwrap();
        ram.write(u64::from(x.dst), &buf).unwrap();
        assert!(verify(&ram, &x, &rec, 0).unwrap().ok);
        rec.cleared = 0;
        assert!(!verify(&ram, &x, &rec, 0).unwrap().ok);
        // the fault transfer: passes only with fault status, untouched destination
        let f = *xs.iter().find(|x| x.expect_fault).unwrap();
        let mut frec = Record {
            status: ST_FAULT,
            fsrc: 1,
            ..Default::default()
        };
        assert!(verify(&ram, &f, &frec, 0).unwrap().fault_seen);
        ram.write(u64::from(f.dst), &[1]).unwrap();
        assert!(!verify(&ram, &f, &frec, 0).unwrap().ok);
        frec.status = ST_DONE;
        assert!(!verify(&ram, &f, &frec, 0).unwrap().ok);
    }
}
