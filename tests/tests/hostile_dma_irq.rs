//! Hostile peer, DMA_MAP/DMA_UNMAP and SET_IRQS: overlapping, unaligned,
//! zero-sized, wrapping and oversized maps, fds that cannot back memory,
//! exact-match unmap, the map limit; SET_IRQS with bad index/start/count and
//! every invalid action × data combination. After the bad requests the
//! backend's mappings (/proc/PID/maps), fds (/proc/PID/fd) and device
//! behaviour (a DMA copy through the PL330 model, an interrupt on the
//! originally assigned eventfd) are checked.
#![allow(clippy::unwrap_used)]

mod hostile_util;

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use hostile_util::*;
use vfio_sidecar::model::pl330::asm::{dbginst, Asm};
use vfio_sidecar::model::pl330::insn::{Cond, Insn, MovReg};
use vfio_sidecar::model::pl330::regs::{DBGCMD, DBGINST0, DBGINST1, FSRC, FSRD, INTCLR, INTEN};
use vfio_sidecar_protocol::header::command as cmd;
use vfio_sidecar_tests::pl330::CCR_COPY;
use vfio_sidecar_tests::{drain, eventfd, fd_count, maps_matching, wait_until, GuestMem, WAIT};

const EINVAL: i32 = libc::EINVAL;
const R: u32 = 1;
const W: u32 = 2;
const X: u32 = 1 << 16;

const IOVA: u64 = 0x4000_0000;
const MEM: u64 = 0x10000;

const DATA_NONE: u32 = 1;
const DATA_BOOL: u32 = 2;
const DATA_EVENTFD: u32 = 4;
const ACT_MASK: u32 = 8;
const ACT_UNMASK: u32 = 16;
const ACT_TRIGGER: u32 = 32;

/// Copies 256 bytes inside `mem` (mapped at IOVA) with a PL330 program run
/// from the mapping; asserts the copy happened and nothing faulted.
fn dma_copy_works(r: &mut Raw, mem: &GuestMem, seed: u8) {
    let src = IOVA as u32 + 0x1000;
    let dst = IOVA as u32 + 0x2000;
    let mut a = Asm::new();
    a.mov(MovReg::Sar, src)
        .mov(MovReg::Dar, dst)
        .mov(MovReg::Ccr, CCR_COPY);
    // 2 × 128 bytes.
    a.ld(Cond::Always)
        .st(Cond::Always)
        .ld(Cond::Always)
        .st(Cond::Always)
        .end();
    mem.write(0, a.bytes());
    let pattern: Vec<u8> = (0..256u32)
        .map(|i| (i as u8).wrapping_mul(3) ^ seed)
        .collect();
    mem.write(0x1000, &pattern);
    mem.write(0x2000, &[0u8; 256]);
    r.dmago(IOVA as u32);
    assert_eq!(r.read32(FSRD), 0, "manager fault");
    assert_eq!(r.read32(FSRC), 0, "channel fault");
    assert_eq!(mem.read(0x2000, 256), pattern, "DMA copy");
}

#[test]
fn dma_map_malformations_leave_the_table_unchanged() {
    let (srv, mut r) = pl330_peer(&[], true);
    let pid = srv.pid();
    let good = GuestMem::new("dmagood", MEM);
    r.map("valid map", &good, R | W | X, IOVA, MEM);
    dma_copy_works(&mut r, &good, 1);
    let base_fds = fd_count(pid);
    assert_eq!(maps_matching(pid, "memfd:dmagood"), 1);

    let evil = GuestMem::new("dmaevil", 2 * MEM);
    let efd = evil.fd().as_raw_fd();
    let (sock_a, _sock_b) = std::os::unix::net::UnixStream::pair().unwrap();
    let (pipe_r, _pipe_w) = pipe();
    let (evfd, _evr) = eventfd();
    let null = devnull();
    let top = !0xfffu64;
    // Bad maps with the evil memfd: overlapping the good one (EEXIST), or
    // malformed (EINVAL).
    let mut cases: Vec<(&str, Vec<u8>, Vec<RawFd>, i32)> = Vec::new();
    for (what, p) in [
        ("exact overlap", dma_map(R | W, 0, IOVA, MEM)),
        ("overlap start", dma_map(R, 0, IOVA - 0x1000, 0x2000)),
        ("overlap end", dma_map(R, 0, IOVA + MEM - 0x1000, 0x2000)),
        ("inside", dma_map(R, 0, IOVA + 0x1000, 0x1000)),
        ("covering", dma_map(R, 0, IOVA - 0x1000, MEM + 0x2000)),
    ] {
        cases.push((what, p, vec![efd], libc::EEXIST));
    }
    for (what, p) in [
        ("unaligned iova", dma_map(R, 0, 0x5000_0001, 0x1000)),
        ("unaligned size", dma_map(R, 0, 0x5000_0000, 0x1001)),
        ("unaligned offset", dma_map(R, 0x10, 0x5000_0000, 0x1000)),
        ("zero size", dma_map(R, 0, 0x5000_0000, 0)),
        ("iova + size = 2^64", dma_map(R, 0, top, 0x1000)),
        ("iova + size wraps", dma_map(R, 0, top, 0x2000)),
        ("size 2^64 - 4K", dma_map(R, 0, 0x1000, top)),
        ("offset + size wraps", dma_map(R, top, 0x5000_0000, 0x2000)),
        (
            "offset beyond the file",
            dma_map(R, 2 * MEM, 0x5000_0000, 0x1000),
        ),
        (
            "size beyond the file",
            dma_map(R, 0, 0x5000_0000, 2 * MEM + 0x1000),
        ),
        ("no permission", dma_map(0, 0, 0x5000_0000, 0x1000)),
        ("VADDR flag (bit 2)", dma_map(R | 4, 0, 0x5000_0000, 0x1000)),
        (
            "unknown flag bit 31",
            dma_map(R | (1 << 31), 0, 0x5000_0000, 0x1000),
        ),
    ] {
        cases.push((what, p, vec![efd], EINVAL));
    }
    // A valid map with fds that cannot back it: EINVAL. (No fd at all is
    // valid: DMA_READ/DMA_WRITE mode, below.)
    for (what, fds) in [
        ("two fds", vec![efd, efd]),
        ("socket fd", vec![sock_a.as_raw_fd()]),
        ("pipe fd", vec![pipe_r.as_raw_fd()]),
        ("eventfd", vec![evfd.as_raw_fd()]),
        ("/dev/null", vec![null.as_raw_fd()]),
    ] {
        cases.push((what, dma_map(R, 0, 0x5000_0000, 0x1000), fds, EINVAL));
    }
    for (what, p, fds, errno) in &cases {
        r.expect(what, cmd::DMA_MAP, p, fds, *errno);
        r.still_works();
    }
    // argsz below the structure.
    let mut p = dma_map(R, 0, 0x5000_0000, 0x1000);
    p[0..4].copy_from_slice(&16u32.to_ne_bytes());
    r.expect("argsz 16", cmd::DMA_MAP, &p, &[efd], EINVAL);

    // Without an fd: accepted (served by DMA_READ/DMA_WRITE), but not over
    // the good mapping (EEXIST); unmapped again.
    r.expect(
        "fd-less map over the good one",
        cmd::DMA_MAP,
        &dma_map(R, 0, IOVA, 0x1000),
        &[],
        libc::EEXIST,
    );
    r.expect(
        "fd-less map",
        cmd::DMA_MAP,
        &dma_map(R, 0, 0x5000_0000, 0x1000),
        &[],
        0,
    );
    r.expect(
        "fd-less unmap",
        cmd::DMA_UNMAP,
        &dma_unmap(0, 0x5000_0000, 0x1000),
        &[],
        0,
    );
    // Unmap as Linux type1: a range with nothing mapped succeeds (QEMU
    // sends those); one that would split a mapping, or is malformed, is
    // EINVAL and changes nothing.
    r.expect(
        "nothing there",
        cmd::DMA_UNMAP,
        &dma_unmap(0, 0x5000_0000, 0x1000),
        &[],
        0,
    );
    let ucases: Vec<(&str, Vec<u8>)> = vec![
        ("sub-range", dma_unmap(0, IOVA, 0x1000)),
        ("range ending inside", dma_unmap(0, IOVA - 0x1000, 0x2000)),
        ("range starting inside", dma_unmap(0, IOVA + 0x1000, MEM)),
        ("zero size", dma_unmap(0, IOVA, 0)),
        ("wraps", dma_unmap(0, top, 0x2000)),
        ("unknown flag", dma_unmap(1, IOVA, MEM)),
        ("ALL with a range", dma_unmap(2, IOVA, MEM)),
    ];
    for (what, p) in &ucases {
        r.expect(what, cmd::DMA_UNMAP, p, &[], EINVAL);
    }

    // Nothing of the evil memfd is mapped, every passed fd was closed, and
    // the good mapping still works.
    assert_eq!(maps_matching(pid, "memfd:dmaevil"), 0);
    assert_eq!(maps_matching(pid, "memfd:dmagood"), 1);
    wait_until("fds back to baseline", WAIT, || fd_count(pid) == base_fds);
    dma_copy_works(&mut r, &good, 2);

    // A map that exactly abuts the good one is fine, and so is its unmap.
    r.expect(
        "adjacent map",
        cmd::DMA_MAP,
        &dma_map(R, 0, IOVA + MEM, 0x1000),
        &[efd],
        0,
    );
    assert_eq!(maps_matching(pid, "memfd:dmaevil"), 1);
    r.expect(
        "exact unmap",
        cmd::DMA_UNMAP,
        &dma_unmap(0, IOVA + MEM, 0x1000),
        &[],
        0,
    );
    assert_eq!(maps_matching(pid, "memfd:dmaevil"), 0);
    drop(r);
    srv.wait_log("client disconnected");
    wait_until("maps released", WAIT, || {
        maps_matching(pid, "memfd:dmagood") == 0
    });
}

#[test]
fn exec_flag_needs_the_extension() {
    let (srv, mut r) = pl330_peer(&[], false);
    let mem = GuestMem::new("plainx", MEM);
    r.expect(
        "EXEC without extension",
        cmd::DMA_MAP,
        &dma_map(R | X, 0, IOVA, MEM),
        &[mem.fd().as_raw_fd()],
        EINVAL,
    );
    assert_eq!(maps_matching(srv.pid(), "memfd:plainx"), 0);
    // Plain READ mapping: executable (upstream semantics), the copy works.
    r.map("plain RW map", &mem, R | W, IOVA, MEM);
    dma_copy_works(&mut r, &mem, 3);
}

#[test]
fn dma_map_limit_gives_enospc() {
    let (srv, mut r) = pl330_peer(&["--max-dma-maps", "4"], true);
    let mem = GuestMem::new("limit", 0x8000);
    let fd = mem.fd().as_raw_fd();
    for i in 0..4u64 {
        r.expect(
            "map",
            cmd::DMA_MAP,
            &dma_map(R, 0, 0x1000_0000 + i * 0x10000, 0x1000),
            &[fd],
            0,
        );
    }
    r.expect(
        "5th map",
        cmd::DMA_MAP,
        &dma_map(R, 0, 0x2000_0000, 0x1000),
        &[fd],
        libc::ENOSPC,
    );
    assert_eq!(maps_matching(srv.pid(), "memfd:limit"), 4);
    r.expect(
        "unmap",
        cmd::DMA_UNMAP,
        &dma_unmap(0, 0x1000_0000, 0x1000),
        &[],
        0,
    );
    r.expect(
        "map again",
        cmd::DMA_MAP,
        &dma_map(R, 0, 0x2000_0000, 0x1000),
        &[fd],
        0,
    );
    // Unmaps that remove nothing free no slot: one of nothing (success,
    // as kernel type1) and one splitting a mapping (EINVAL).
    r.expect(
        "unmap of nothing",
        cmd::DMA_UNMAP,
        &dma_unmap(0, 0x3000_0000, 0x1000),
        &[],
        0,
    );
    r.expect(
        "split unmap",
        cmd::DMA_UNMAP,
        &dma_unmap(0, 0x1001_0800, 0x1000),
        &[],
        EINVAL,
    );
    r.expect(
        "still full",
        cmd::DMA_MAP,
        &dma_map(R, 0, 0x3000_0000, 0x1000),
        &[fd],
        libc::ENOSPC,
    );
    r.expect("unmap all", cmd::DMA_UNMAP, &dma_unmap(2, 0, 0), &[], 0);
    assert_eq!(maps_matching(srv.pid(), "memfd:limit"), 0);
    for i in 0..4u64 {
        r.expect(
            "map after all",
            cmd::DMA_MAP,
            &dma_map(R, 0, i * 0x10000, 0x1000),
            &[fd],
            0,
        );
    }
}

/// Is this SET_IRQS shape valid for a PL330 IRQ index (count 1, maskable)?
/// Linux VFIO rules: exactly one action and one data type; `start + count`
/// within the vector count; count 0 only for DATA_NONE|TRIGGER (disable);
/// BOOL carries `count` bytes, no fds; NONE carries nothing; EVENTFD carries
/// `count` fds (or none, to de-assign), and MASK with EVENTFD is refused.
fn valid_shape(action: u32, data: u32, start: u32, count: u32, bytes: usize, nfds: usize) -> bool {
    if count == 0 {
        return action == ACT_TRIGGER && data == DATA_NONE && start == 0 && bytes == 0 && nfds == 0;
    }
    if start.checked_add(count).is_none_or(|e| e > 1) {
        return false;
    }
    match data {
        DATA_NONE => bytes == 0 && nfds == 0,
        DATA_BOOL => bytes == count as usize && nfds == 0,
        _ => action != ACT_MASK && bytes == 0 && (nfds == 0 || nfds == count as usize),
    }
}

#[test]
fn set_irqs_every_invalid_combination_is_einval_and_the_eventfd_stays() {
    let (srv, mut r) = pl330_peer(&[], true);
    let pid = srv.pid();
    let mem = GuestMem::new("irqmem", MEM);
    r.map("map", &mem, R | W | X, IOVA, MEM);
    let (trig, trig_reader) = eventfd();
    r.expect(
        "trigger eventfd",
        cmd::DEVICE_SET_IRQS,
        &set_irqs(DATA_EVENTFD | ACT_TRIGGER, 0, 0, 1, &[]),
        &[trig.as_raw_fd()],
        0,
    );
    let base_fds = fd_count(pid);

    // Fds to attach: eventfds (valid kind) and things that are not eventfds.
    let evs: Vec<(OwnedFd, File)> = (0..3).map(|_| eventfd()).collect();
    let ev: Vec<RawFd> = evs.iter().map(|(f, _)| f.as_raw_fd()).collect();
    let actions = [ACT_MASK, ACT_UNMASK, ACT_TRIGGER];
    let datas = [DATA_NONE, DATA_BOOL, DATA_EVENTFD];
    let shapes: [(u32, u32, usize, usize); 10] = [
        (0, 0, 0, 0),
        (0, 0, 0, 1),
        (0, 1, 0, 2),
        (0, 1, 2, 0),
        (0, 1, 1, 1),
        (0, 2, 2, 0),
        (0, 2, 0, 2),
        (1, 1, 1, 0),
        (1, 1, 0, 1),
        (u32::MAX, 1, 0, 0),
    ];
    let mut tried = 0;
    for action in actions {
        for data in datas {
            for &(start, count, bytes, nfds) in &shapes {
                if valid_shape(action, data, start, count, bytes, nfds) {
                    continue;
                }
                let what = format!(
                    "action {action:#x} data {data:#x} start {start} count {count} bytes {bytes} fds {nfds}"
                );
                r.expect(
                    &what,
                    cmd::DEVICE_SET_IRQS,
                    &set_irqs(data | action, 0, start, count, &vec![1u8; bytes]),
                    &ev[..nfds],
                    EINVAL,
                );
                tried += 1;
            }
        }
    }
    assert!(tried > 60, "only {tried} invalid combinations");
    // Flag combinations that are not one action + one data type.
    for flags in [
        0,
        DATA_EVENTFD,
        ACT_TRIGGER,
        DATA_NONE | DATA_BOOL | ACT_TRIGGER,
        DATA_NONE | ACT_MASK | ACT_UNMASK,
        DATA_NONE | ACT_TRIGGER | (1 << 6),
        DATA_NONE | ACT_TRIGGER | (1 << 31),
    ] {
        r.expect(
            &format!("flags {flags:#x}"),
            cmd::DEVICE_SET_IRQS,
            &set_irqs(flags, 0, 0, 1, &[]),
            &[],
            EINVAL,
        );
    }
    // Bad IRQ indices (the PL330 has 9: eight events and irq_abort).
    for index in [9u32, 10, u32::MAX] {
        r.expect(
            &format!("index {index}"),
            cmd::DEVICE_SET_IRQS,
            &set_irqs(DATA_EVENTFD | ACT_TRIGGER, index, 0, 1, &[]),
            &ev[..1],
            EINVAL,
        );
    }
    // Fds that are not eventfds.
    let (pr, _pw) = pipe();
    let (sa, _sb) = std::os::unix::net::UnixStream::pair().unwrap();
    let null = devnull();
    for (what, fd) in [
        ("pipe", pr.as_raw_fd()),
        ("socket", sa.as_raw_fd()),
        ("memfd", mem.fd().as_raw_fd()),
        ("/dev/null", null.as_raw_fd()),
    ] {
        for action in [ACT_TRIGGER, ACT_UNMASK] {
            r.expect(
                &format!("{what} as eventfd, action {action:#x}"),
                cmd::DEVICE_SET_IRQS,
                &set_irqs(DATA_EVENTFD | action, 0, 0, 1, &[]),
                &[fd],
                EINVAL,
            );
        }
    }
    // argsz smaller than the payload.
    let mut p = set_irqs(DATA_BOOL | ACT_TRIGGER, 0, 0, 1, &[1]);
    p[0..4].copy_from_slice(&8u32.to_ne_bytes());
    r.expect("argsz 8", cmd::DEVICE_SET_IRQS, &p, &[], EINVAL);
    r.still_works();

    // Every rejected fd was closed; the original trigger eventfd still gets
    // exactly one interrupt for one DMASEV, and the clear register EOIs it.
    wait_until("fds back to baseline", WAIT, || fd_count(pid) == base_fds);
    for e in &evs {
        assert_eq!(drain(&e.1), 0, "a rejected eventfd was signalled");
    }
    let mut a = Asm::new();
    a.sev(0).end();
    mem.write(0, a.bytes());
    r.write32(INTEN, 1);
    r.dmago(IOVA as u32);
    assert_eq!(drain(&trig_reader), 1, "interrupt on the original eventfd");
    r.write32(INTCLR, 1);
    mem.write(0, a.bytes());
    r.dmago(IOVA as u32);
    assert_eq!(drain(&trig_reader), 1, "second interrupt after EOI");
    drop(trig);
}

#[test]
fn region_info_and_irq_info_bad_indices() {
    let (_srv, mut r) = pl330_peer(&[], true);
    for index in [1u32, 2, u32::MAX] {
        let mut p = vec![0u8; 32];
        p[0..4].copy_from_slice(&32u32.to_ne_bytes());
        p[8..12].copy_from_slice(&index.to_ne_bytes());
        r.expect("region index", cmd::DEVICE_GET_REGION_INFO, &p, &[], EINVAL);
    }
    // argsz below the fixed structure.
    let mut p = vec![0u8; 32];
    p[0..4].copy_from_slice(&16u32.to_ne_bytes());
    r.expect(
        "region argsz 16",
        cmd::DEVICE_GET_REGION_INFO,
        &p,
        &[],
        EINVAL,
    );
    // The PL330 has 9 IRQ indices: eight events and irq_abort.
    for index in [9u32, u32::MAX] {
        let mut p = vec![0u8; 16];
        p[0..4].copy_from_slice(&16u32.to_ne_bytes());
        p[8..12].copy_from_slice(&index.to_ne_bytes());
        r.expect("irq index", cmd::DEVICE_GET_IRQ_INFO, &p, &[], EINVAL);
    }
    // IRQ_STATS beyond the vectors, and start + count overflowing.
    for (index, start, count) in [(9u32, 0u32, 1u32), (0, 1, 1), (0, 0, 2), (0, u32::MAX, 2)] {
        let mut p = Vec::new();
        p.extend_from_slice(&(16 + 32 * count.min(4)).to_ne_bytes());
        p.extend_from_slice(&index.to_ne_bytes());
        p.extend_from_slice(&start.to_ne_bytes());
        p.extend_from_slice(&count.to_ne_bytes());
        r.expect(
            &format!("irq stats {index}/{start}/{count}"),
            cmd::SIDECAR_GET_IRQ_STATS,
            &p,
            &[],
            EINVAL,
        );
    }
    r.still_works();
}

/// A *blocking* eventfd (no EFD_NONBLOCK) whose counter is one below the
/// maximum: a blocking write of 1 by the server would sleep until someone
/// reads it, freezing the whole backend. The server must never block on a
/// client's eventfd. Likewise for an unmask (resample) eventfd that the
/// client drains itself between the server's poll and read.
#[test]
fn blocking_eventfd_at_the_limit_does_not_freeze_the_backend() {
    use std::io::Write;
    let (_srv, mut r) = pl330_peer(&[], true);
    let ev = vfio_sidecar_protocol::testing::eventfd(false).unwrap();
    let mut evf = File::from(ev.try_clone().unwrap());
    evf.write_all(&(u64::MAX - 1).to_ne_bytes()).unwrap();
    r.expect(
        "trigger = full blocking eventfd",
        cmd::DEVICE_SET_IRQS,
        &set_irqs(DATA_EVENTFD | ACT_TRIGGER, 0, 0, 1, &[]),
        &[ev.as_raw_fd()],
        0,
    );
    // Raise IRQ 0: DMASEV 0 through the debug interface.
    r.write32(INTEN, 1);
    let (d0, d1) = dbginst(Insn::Sev { event: 0 }, None);
    r.write32(DBGINST0, d0);
    r.write32(DBGINST1, d1);
    // The reply to the DBGCMD write (and to the next request) must come.
    r.sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let id = r.send(
        cmd::REGION_WRITE,
        &region(DBGCMD, 0, 4, &0u32.to_le_bytes()),
        &[],
    );
    let rep = r
        .try_reply()
        .expect("backend froze writing a full blocking eventfd");
    assert_eq!((rep.hdr.msg_id, rep.errno()), (id, 0));
    r.still_works();
    // The interrupt was counted as delivered (the eventfd was full: the
    // signal is lost, as with a saturated counter) and the backend goes on.
    let p = ne32(&[48u32, 0, 0, 1]);
    r.expect("irq stats", cmd::SIDECAR_GET_IRQ_STATS, &p, &[], 0);
}
