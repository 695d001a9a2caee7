//! A client shrinks a DMA-mapped memfd after DMA_MAP. Before the fix this
//! killed the backend with SIGBUS at the next device access to a page beyond
//! the new end (here: the DMAGO gate's fetch probe). Now the access is a DMA
//! fault the guest can see (manager/channel fault), and the backend serves on.
#![allow(clippy::unwrap_used)]

mod hostile_util;

use std::os::fd::AsRawFd;

use hostile_util::*;
use vfio_sidecar::model::pl330::asm::{dbginst, Asm};
use vfio_sidecar::model::pl330::insn::{Cond, Insn, MovReg};
use vfio_sidecar_protocol::header::command as cmd;
use vfio_sidecar_tests::{GuestMem, Sidecar};

const FSRD: u64 = 0x30;
const FSRC: u64 = 0x34;
const IOVA: u32 = 0x4000_0000;

fn wr(r: &mut Raw, off: u64, v: u32) {
    r.expect(
        "write",
        cmd::REGION_WRITE,
        &region(off, 0, 4, &v.to_le_bytes()),
        &[],
        0,
    );
}

fn rd(r: &mut Raw, off: u64) -> u32 {
    let rep = r.expect("read", cmd::REGION_READ, &region(off, 0, 4, &[]), &[], 0);
    u32::from_le_bytes(rep.payload[16..20].try_into().unwrap())
}

fn go(r: &mut Raw, addr: u32) {
    let (d0, d1) = dbginst(
        Insn::Go {
            chan: 0,
            ns: false,
            addr,
        },
        None,
    );
    wr(r, 0xd08, d0);
    wr(r, 0xd0c, d1);
    wr(r, 0xd04, 0);
}

#[test]
fn shrinking_a_mapped_memfd_gives_dma_faults_not_a_dead_backend() {
    let srv = Sidecar::start("model:pl330", &[]);
    let mut r = Raw::negotiated(&srv.socket, true);
    let mem = GuestMem::new("shrink", 0x10000);
    // Program at 0 (stays backed): load from 0x8000 (will not be), store at 0x100.
    let mut a = Asm::new();
    a.mov(MovReg::Sar, IOVA + 0x8000)
        .mov(MovReg::Dar, IOVA + 0x100)
        .mov(MovReg::Ccr, 0)
        .ld(Cond::Always)
        .st(Cond::Always)
        .end();
    mem.write(0, a.bytes());
    mem.write(0x9000, &[0u8; 16]);
    r.expect(
        "map",
        cmd::DMA_MAP,
        &dma_map(1 | 2 | (1 << 16), 0, u64::from(IOVA), 0x10000),
        &[mem.fd().as_raw_fd()],
        0,
    );
    // SAFETY: ftruncate on our own memfd.
    assert_eq!(unsafe { libc::ftruncate(mem.fd().as_raw_fd(), 0x1000) }, 0);

    // DMAGO at a page that is gone: the gate's fetch probe faults the manager.
    go(&mut r, IOVA + 0x9000);
    assert_eq!(rd(&mut r, FSRD) & 1, 1, "manager fault (dmago_err)");
    r.still_works();
    // Kill the manager fault; a program whose load hits a page that is gone:
    // the channel faults (data read error).
    let (k0, k1) = dbginst(Insn::Kill, None);
    wr(&mut r, 0xd08, k0);
    wr(&mut r, 0xd0c, k1);
    wr(&mut r, 0xd04, 0);
    assert_eq!(rd(&mut r, FSRD) & 1, 0);
    go(&mut r, IOVA);
    assert_eq!(rd(&mut r, FSRC) & 1, 1, "channel 0 faulting");
    r.still_works();
    assert!(
        srv.log_text().contains("backing file shrunk"),
        "fault path logged"
    );
}
