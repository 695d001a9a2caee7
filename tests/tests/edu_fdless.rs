//! `model:edu` over a real socket, as QEMU's `vfio-user-pci` meets it:
//!
//! * `intx_status_bit_follows_pending_interrupt`: PCI status bit 3 (Interrupt
//!   Status) read through config-space REGION_READs before and after a raise,
//!   with INTx disabled by command bit 10 (Linux's PCI 2.3 masking, what
//!   `uio_pci_generic` and guest `vfio-pci` use) and after the ack.
#![allow(clippy::unwrap_used)]

use vfio_sidecar::model::edu::{regs, PCI_STATUS_INTERRUPT};
use vfio_sidecar_protocol::client::Client;
use vfio_sidecar_tests::Sidecar;

const BAR0: u32 = 0;
const CONFIG: u32 = 7;

fn rd32(c: &mut Client, region: u32, off: u64) -> u32 {
    let b = c.region_read(region, off, 4).unwrap();
    u32::from_le_bytes(b.try_into().unwrap())
}

fn wr32(c: &mut Client, region: u32, off: u64, v: u32) {
    c.region_write(region, off, &v.to_le_bytes()).unwrap();
}

fn status(c: &mut Client) -> u16 {
    let b = c.region_read(CONFIG, 0x06, 2).unwrap();
    u16::from_le_bytes([b[0], b[1]])
}

#[test]
fn intx_status_bit_follows_pending_interrupt() {
    let srv = Sidecar::start("model:edu", &[]);
    let mut c = srv.connect(false);
    assert_eq!(status(&mut c) & PCI_STATUS_INTERRUPT, 0, "nothing pending");
    // What pci_check_and_mask_intx() does around an interrupt: the device
    // raises, the handler reads the status, sets INTx disable, the driver
    // acks, INTx is enabled again.
    wr32(&mut c, BAR0, regs::IRQ_RAISE, 0x8);
    assert_ne!(status(&mut c) & PCI_STATUS_INTERRUPT, 0, "raised: pending");
    let cmd = rd32(&mut c, CONFIG, 0x04) & 0xffff;
    c.region_write(CONFIG, 0x04, &((cmd | 1 << 10) as u16).to_le_bytes())
        .unwrap();
    assert_ne!(
        status(&mut c) & PCI_STATUS_INTERRUPT,
        0,
        "INTx disabled: still pending"
    );
    assert_eq!(rd32(&mut c, BAR0, regs::IRQ_STATUS), 0x8);
    wr32(&mut c, BAR0, regs::IRQ_ACK, 0x8);
    assert_eq!(status(&mut c) & PCI_STATUS_INTERRUPT, 0, "acked");
    c.region_write(CONFIG, 0x04, &(cmd as u16).to_le_bytes())
        .unwrap();
    assert_eq!(status(&mut c) & PCI_STATUS_INTERRUPT, 0);
    // The capability-list bit is untouched throughout.
    assert_eq!(status(&mut c) & 0x10, 0x10);
}
