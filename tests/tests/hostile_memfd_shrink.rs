//! A client shrinks a DMA-mapped memfd after DMA_MAP. Before the fix this
//! killed the backend with SIGBUS at the next device access to a page beyond
//! the new end (here: the DMAGO gate's fetch probe). Now the access is a DMA
//! fault the guest can see (manager/channel fault), and the backend serves on.
#![allow(clippy::unwrap_used)]

mod hostile_util;

use std::os::fd::AsRawFd;

use hostile_util::*;
use vfio_sidecar::model::pl330::asm::Asm;
use vfio_sidecar::model::pl330::insn::{Cond, Insn, MovReg};
use vfio_sidecar::model::pl330::regs::{FSRC, FSRD};
use vfio_sidecar_tests::GuestMem;

const IOVA: u32 = 0x4000_0000;

#[test]
fn shrinking_a_mapped_memfd_gives_dma_faults_not_a_dead_backend() {
    let (srv, mut r) = pl330_peer(&[], true);
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
    r.map("map", &mem, 1 | 2 | (1 << 16), u64::from(IOVA), 0x10000);
    // SAFETY: ftruncate on our own memfd.
    assert_eq!(unsafe { libc::ftruncate(mem.fd().as_raw_fd(), 0x1000) }, 0);

    // DMAGO at a page that is gone: the gate's fetch probe faults the manager.
    r.dmago(IOVA + 0x9000);
    assert_eq!(r.read32(FSRD) & 1, 1, "manager fault (dmago_err)");
    r.still_works();
    // Kill the manager fault; a program whose load hits a page that is gone:
    // the channel faults (data read error).
    r.debug_insn(Insn::Kill, None);
    assert_eq!(r.read32(FSRD) & 1, 0);
    r.dmago(IOVA);
    assert_eq!(r.read32(FSRC) & 1, 1, "channel 0 faulting");
    r.still_works();
    assert!(
        srv.log_text().contains("backing file shrunk"),
        "fault path logged"
    );
}
