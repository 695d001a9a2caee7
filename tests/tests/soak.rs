//! Bounded soak against `vfio-sidecar serve --device model:pl330` (debug
//! build, as CI runs it):
//!
//! * trapped accesses: 1 000 000 single REGION_WRITE/REGION_READ round trips
//!   (every read checks the value written) plus 1 000 000 more through
//!   REGION_WRITE_MULTI (64 per message). Measured here on a loaded 2-core VM
//!   with debug builds: 30 000-40 000 round trips/s, 240 000-480 000 batched
//!   writes/s, so the whole soak takes ~40 s;
//! * 100 000 interrupts with EOI: each one a DMASEV through the debug
//!   interface, the trigger eventfd read, and the INTCLR write (the
//!   clear-register EOI) batched with the next DMASEV in one WRITE_MULTI; the
//!   IRQ statistics must count every one (no loss, no refire);
//! * 10 000 DMA_MAP/DMA_UNMAP cycles.
//!
//! `SOAK_SCALE=N` multiplies every count. The backend's VmRSS and fd count are
//! printed after a warm-up and at the end: the fd count must be equal and RSS
//! may grow by at most 2 MiB. The measured rates are printed (never asserted).
#![allow(clippy::unwrap_used)]

use std::os::fd::AsFd;
use std::time::Instant;

use vfio_sidecar::model::pl330::asm::dbginst;
use vfio_sidecar::model::pl330::insn::Insn;
use vfio_sidecar::model::pl330::regs::{DBGCMD, DBGINST0, DBGINST1, INTCLR, INTEN};
use vfio_sidecar_protocol::client::Client;
use vfio_sidecar_protocol::message::{IrqAction, WriteOne};
use vfio_sidecar_tests::{drain, eventfd, fd_count, set_eventfd, GuestMem, Sidecar, RW};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn w1(offset: u64, v: u32) -> WriteOne {
    let mut data = [0u8; 8];
    data[..4].copy_from_slice(&v.to_le_bytes());
    WriteOne {
        offset,
        region: 0,
        count: 4,
        data,
    }
}

struct Counts {
    multi_accesses: u64,
    single_accesses: u64,
    interrupts: u64,
    map_cycles: u64,
}

fn counts(warmup: bool) -> Counts {
    if warmup {
        return Counts {
            multi_accesses: 64 * 200,
            single_accesses: 2_000,
            interrupts: 2_000,
            map_cycles: 500,
        };
    }
    let scale = env_u64("SOAK_SCALE", 1).max(1);
    Counts {
        multi_accesses: 1_000_000 * scale,
        single_accesses: 1_000_000 * scale,
        interrupts: 100_000 * scale,
        map_cycles: 10_000 * scale,
    }
}

fn rate(n: u64, t: Instant) -> String {
    let s = t.elapsed().as_secs_f64();
    format!("{n} in {s:.1} s ({:.0}/s)", n as f64 / s.max(1e-9))
}

/// Runs one round of every workload; returns the interrupts signalled.
fn round(c: &mut Client, trig: &std::fs::File, mems: &[GuestMem], n: &Counts, verbose: bool) {
    // Trapped accesses, batched.
    let t = Instant::now();
    let batch: Vec<WriteOne> = (0..64u32).map(|i| w1(INTEN, i & 0xff)).collect();
    let mut done = 0;
    while done < n.multi_accesses {
        assert_eq!(c.region_write_multi(&batch).unwrap(), 64);
        done += 64;
    }
    if verbose {
        println!("soak: WRITE_MULTI trapped accesses: {}", rate(done, t));
    }
    // Trapped accesses, one round trip each (write then read back).
    let t = Instant::now();
    let mut i = 0u64;
    while i < n.single_accesses {
        let v = (i as u32) & 0xff;
        c.region_write(0, INTEN, &v.to_le_bytes()).unwrap();
        let r = c.region_read(0, INTEN, 4).unwrap();
        assert_eq!(r, v.to_le_bytes(), "INTEN read back");
        i += 2;
    }
    if verbose {
        println!("soak: single REGION_READ/WRITE round trips: {}", rate(i, t));
    }
    // Interrupts with EOI.
    c.region_write(0, INTEN, &1u32.to_le_bytes()).unwrap();
    let (d0, d1) = dbginst(Insn::Sev { event: 0 }, None);
    c.region_write(0, DBGINST0, &d0.to_le_bytes()).unwrap();
    c.region_write(0, DBGINST1, &d1.to_le_bytes()).unwrap();
    let before = c.irq_stats(0, 0, 1).unwrap()[0];
    let t = Instant::now();
    c.region_write(0, DBGCMD, &0u32.to_le_bytes()).unwrap();
    let eoi_and_next = [w1(INTCLR, 1), w1(DBGCMD, 0)];
    for k in 0..n.interrupts {
        assert_eq!(drain(trig), 1, "interrupt {k} not delivered exactly once");
        if k + 1 < n.interrupts {
            c.region_write_multi(&eoi_and_next).unwrap();
        } else {
            c.region_write(0, INTCLR, &1u32.to_le_bytes()).unwrap();
        }
    }
    let after = c.irq_stats(0, 0, 1).unwrap()[0];
    if verbose {
        println!("soak: interrupts with EOI: {}", rate(n.interrupts, t));
    }
    assert_eq!(after.device_events - before.device_events, n.interrupts);
    assert_eq!(after.host_interrupts - before.host_interrupts, n.interrupts);
    assert_eq!(after.unmasks - before.unmasks, n.interrupts);
    assert_eq!(
        after.refires, before.refires,
        "refires under clear-register EOI"
    );
    assert_eq!(drain(trig), 0, "spurious interrupt");
    // DMA map/unmap cycles over two memfds.
    let t = Instant::now();
    for k in 0..n.map_cycles {
        let m = &mems[(k % 2) as usize];
        let iova = 0x1_0000_0000 + (k % 7) * 0x10_0000;
        c.dma_map(iova, 0x10000, m.fd(), 0, RW).unwrap();
        c.dma_unmap(iova, 0x10000).unwrap();
    }
    if verbose {
        println!("soak: DMA map/unmap cycles: {}", rate(n.map_cycles, t));
    }
}

#[test]
fn soak_accesses_interrupts_maps_without_growth() {
    let srv = Sidecar::start("model:pl330", &["--eoi", "clear-register"]);
    let pid = srv.pid();
    let mut c = srv.connect(true);
    let mems = [
        GuestMem::new("soak0", 0x10000),
        GuestMem::new("soak1", 0x10000),
    ];
    let (t, trig) = eventfd();
    set_eventfd(&mut c, 0, IrqAction::Trigger, t.as_fd()).unwrap();

    round(&mut c, &trig, &mems, &counts(true), false);
    let (rss0, fds0) = (rss_kib(pid), fd_count(pid));
    println!("soak: after warm-up: backend VmRSS {rss0} KiB, {fds0} fds");
    let start = Instant::now();
    round(&mut c, &trig, &mems, &counts(false), true);
    let (rss1, fds1) = (rss_kib(pid), fd_count(pid));
    println!(
        "soak: at the end ({:.1} s): backend VmRSS {rss1} KiB ({:+} KiB), {fds1} fds",
        start.elapsed().as_secs_f64(),
        rss1 as i64 - rss0 as i64
    );
    assert_eq!(fds1, fds0, "backend fd count changed");
    assert!(
        rss1 <= rss0 + 2048,
        "backend RSS grew from {rss0} to {rss1} KiB"
    );
}
