//! The PCI path against clients we did not write, with `vfio-sidecar serve
//! --device model:edu` (QEMU's edu device) as the server:
//!
//! * `their_client_drives_edu`: the crates.io `vfio_user` 0.1.7 `Client` (the
//!   one cloud-hypervisor uses) does what cloud-hypervisor does with it —
//!   fetch every region, BAR sizing through config space, INTx and MSI
//!   eventfds, UNMASK/disable as `VfioUserClientWrapper` sends them, DMA_MAP of
//!   a memfd and an edu DMA both ways, DEVICE_RESET. That crate blocks forever
//!   on some errors: it runs in a thread under a watchdog.
//! * `qemu_shaped_session`: raw messages shaped exactly like QEMU 10.1's
//!   `hw/vfio-user` client sends them (VERSION JSON with a migration object and
//!   minor 0, the reply checks QEMU applies, region info with argsz 32 for all
//!   9 indices, ERR/REQ IRQ info, a 256-byte config read, posted writes with
//!   NO_REPLY, WRITE_MULTI, DMA_MAP without an fd for ROM (accepted), SET_IRQS with the
//!   fds and argsz 20, the resample (UNMASK eventfd) path of INTx, reset;
//!   plus GET_REGION_IO_FDS, which QEMU does not send).
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use std::time::Duration;

use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE,
};
use vfio_sidecar_protocol::testing::watchdog;
use vfio_sidecar_tests::{drain, eventfd, GuestMem, Sidecar};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const WATCHDOG: Duration = Duration::from_secs(60);
const CONFIG: u32 = 7;
const BAR0: u32 = 0;

fn rd32(c: &mut vfio_user::Client, region: u32, off: u64) -> u32 {
    let mut b = [0u8; 4];
    c.region_read(region, off, &mut b).unwrap();
    u32::from_le_bytes(b)
}

fn wr32(c: &mut vfio_user::Client, region: u32, off: u64, v: u32) {
    c.region_write(region, off, &v.to_le_bytes()).unwrap();
}

fn wr64(c: &mut vfio_user::Client, off: u64, v: u64) {
    c.region_write(BAR0, off, &v.to_le_bytes()).unwrap();
}

/// Waits (bounded) for the edu DMA RUN bit (bit 0 of the DMA command
/// register, as `read_cmd` reads it) to clear.
fn wait_dma(mut read_cmd: impl FnMut() -> u32) {
    for _ in 0..1000 {
        if read_cmd() & 1 == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("edu DMA never finished");
}

#[test]
fn their_client_drives_edu() {
    let srv = Sidecar::start("model:edu", &[]);
    let mem = GuestMem::new("interop-ram", 0x10_0000);
    mem.write(0x1000, b"hello from guest RAM, via edu DMA");
    let mem_fd = mem.fd().as_raw_fd();
    let (intx, intx_r) = eventfd();
    let (msi, msi_r) = eventfd();
    let (intx_raw, msi_raw) = (intx.as_raw_fd(), msi.as_raw_fd());
    let sock = srv.socket.clone();
    let (intx_hits, msi_hits) = watchdog("vfio_user::Client", WATCHDOG, move || {
        // new(): VERSION, DEVICE_GET_INFO (PCI flag required), region info of
        // every region — an error reply for any index would hang it.
        let mut c = vfio_user::Client::new(&sock).unwrap();
        for (i, size) in [(0u32, 1u64 << 20), (6, 0), (7, 256), (8, 0)] {
            assert_eq!(c.region(i).unwrap().size, size, "region {i}");
        }
        assert!(c.region(0).unwrap().file_offset.is_none(), "BAR0 traps");
        for i in 0..5 {
            let ii = c.get_irq_info(i).unwrap();
            assert_eq!(ii.index, i);
        }
        assert_eq!(c.get_irq_info(0).unwrap().count, 1);
        assert_eq!(c.get_irq_info(1).unwrap().count, 1);
        // Config space, and BAR sizing the way cloud-hypervisor does it.
        assert_eq!(rd32(&mut c, CONFIG, 0), 0x11e8_1234);
        wr32(&mut c, CONFIG, 0x10, 0xffff_ffff);
        assert_eq!(rd32(&mut c, CONFIG, 0x10), 0xfff0_0000, "1 MiB, 32-bit mem");
        wr32(&mut c, CONFIG, 0x14, 0xffff_ffff);
        assert_eq!(rd32(&mut c, CONFIG, 0x14), 0, "BAR1 absent");
        wr32(&mut c, CONFIG, 0x30, 0xffff_ffff);
        assert_eq!(rd32(&mut c, CONFIG, 0x30), 0, "no ROM");
        wr32(&mut c, CONFIG, 0x10, 0xe000_0000);
        // BAR0 registers.
        assert_eq!(rd32(&mut c, BAR0, 0), 0x0100_00ed);
        wr32(&mut c, BAR0, 4, 0x5555_aaaa);
        assert_eq!(rd32(&mut c, BAR0, 4), 0xaaaa_5555);
        wr32(&mut c, BAR0, 8, 5);
        assert_eq!(rd32(&mut c, BAR0, 8), 120);

        // INTx, as initialize_legacy_interrupt + unmask_irq do it.
        c.set_irqs(
            0,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            1,
            &[intx_raw],
        )
        .unwrap();
        c.set_irqs(
            0,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK,
            0,
            1,
            &[],
        )
        .unwrap();
        let mut intx_hits = Vec::new();
        wr32(&mut c, BAR0, 0x60, 0x8);
        intx_hits.push(drain(&intx_r));
        assert_eq!(rd32(&mut c, BAR0, 0x24), 0x8);
        // Guest ISR: ack (the clear register ends the interrupt) ...
        wr32(&mut c, BAR0, 0x64, 0x8);
        // ... and the VMM's EOI unmask (a no-op now, harmless).
        c.set_irqs(
            0,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK,
            0,
            1,
            &[],
        )
        .unwrap();
        wr32(&mut c, BAR0, 0x60, 0x10);
        intx_hits.push(drain(&intx_r));
        wr32(&mut c, BAR0, 0x64, 0x10);

        // DMA: map guest RAM at IOVA 0x100000 (a memfd, as with shared=on).
        c.dma_map(0, 0x10_0000, 0x10_0000, mem_fd).unwrap();
        // RAM -> device buffer, raising DMA interrupt 0x100 on INTx.
        wr64(&mut c, 0x80, 0x10_1000);
        wr64(&mut c, 0x88, 0x4_0000);
        wr64(&mut c, 0x90, 33);
        wr64(&mut c, 0x98, 0x1 | 0x4);
        wait_dma(|| rd32(&mut c, BAR0, 0x98));
        assert_eq!(rd32(&mut c, BAR0, 0x24), 0x100);
        intx_hits.push(drain(&intx_r));
        wr32(&mut c, BAR0, 0x64, 0x100);

        // Switch to MSI as a VMM does: disable INTx, enable MSI.
        c.set_irqs(
            0,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            0,
            &[],
        )
        .unwrap();
        c.set_irqs(
            1,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            1,
            &[msi_raw],
        )
        .unwrap();
        // Device buffer -> RAM at another place, MSI on completion.
        wr64(&mut c, 0x80, 0x4_0000);
        wr64(&mut c, 0x88, 0x10_8000);
        wr64(&mut c, 0x98, 0x1 | 0x2 | 0x4);
        wait_dma(|| rd32(&mut c, BAR0, 0x98));
        let mut msi_hits = vec![drain(&msi_r)];
        wr32(&mut c, BAR0, 0x64, 0x100);
        wr32(&mut c, BAR0, 0x60, 0x1);
        wr32(&mut c, BAR0, 0x60, 0x2);
        msi_hits.push(drain(&msi_r));
        intx_hits.push(drain(&intx_r));

        // Reset: registers and config space back to power-on values.
        c.reset().unwrap();
        assert_eq!(rd32(&mut c, BAR0, 0x24), 0);
        assert_eq!(rd32(&mut c, CONFIG, 0x10), 0);
        c.dma_unmap(0x10_0000, 0x10_0000).unwrap();
        c.shutdown().unwrap();
        (intx_hits, msi_hits)
    });
    assert_eq!(
        intx_hits,
        vec![1, 1, 1, 0],
        "INTx: raise, raise after ack+EOI, DMA done; nothing once on MSI"
    );
    assert_eq!(msi_hits, vec![1, 2], "MSI: DMA done, then one per raise");
    assert_eq!(mem.read(0x8000, 33), b"hello from guest RAM, via edu DMA");
    drop((intx, msi));
    srv.wait_log("client disconnected");
}

// ----------------------------------------------------------- QEMU-shaped

const NO_REPLY: u32 = 0x10;
const ERROR: u32 = 0x20;

struct Raw {
    s: UnixStream,
    id: u16,
}

struct Reply {
    id: u16,
    cmd: u16,
    flags: u32,
    error: u32,
    payload: Vec<u8>,
    fds: usize,
}

impl Raw {
    fn send(&mut self, cmd: u16, flags: u32, payload: &[u8], fds: &[RawFd]) -> u16 {
        let id = self.id;
        self.id = self.id.wrapping_add(1);
        let mut m = Vec::new();
        m.extend_from_slice(&id.to_le_bytes());
        m.extend_from_slice(&cmd.to_le_bytes());
        m.extend_from_slice(&((16 + payload.len()) as u32).to_le_bytes());
        m.extend_from_slice(&flags.to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes());
        m.extend_from_slice(payload);
        if fds.is_empty() {
            self.s.write_all(&m).unwrap();
        } else {
            let n = self.s.send_with_fds(&[&m[..]], fds).unwrap();
            assert_eq!(n, m.len());
        }
        id
    }

    fn recv(&mut self) -> Reply {
        let mut h = [0u8; 16];
        // At most one fd comes with a reply (region info); dropping it closes it.
        let (n, fd) = self.s.recv_with_fd(&mut h).unwrap();
        assert_eq!(n, 16, "short header");
        let nfds = usize::from(fd.is_some());
        let size = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
        let mut payload = vec![0u8; size - 16];
        self.s.read_exact(&mut payload).unwrap();
        Reply {
            id: u16::from_le_bytes([h[0], h[1]]),
            cmd: u16::from_le_bytes([h[2], h[3]]),
            flags: u32::from_le_bytes(h[8..12].try_into().unwrap()),
            error: u32::from_le_bytes(h[12..16].try_into().unwrap()),
            payload,
            fds: nfds,
        }
    }

    fn call(&mut self, cmd: u16, payload: &[u8], fds: &[RawFd]) -> Reply {
        let id = self.send(cmd, 0, payload, fds);
        let r = self.recv();
        assert_eq!((r.id, r.cmd), (id, cmd), "reply matches the request");
        r
    }

    fn ok(&mut self, cmd: u16, payload: &[u8], fds: &[RawFd]) -> Vec<u8> {
        let r = self.call(cmd, payload, fds);
        assert_eq!(
            r.flags & ERROR,
            0,
            "command {cmd} failed: errno {}",
            r.error
        );
        r.payload
    }
}

fn le32(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn region_rw(offset: u64, region: u32, count: u32, data: &[u8]) -> Vec<u8> {
    let mut p = offset.to_le_bytes().to_vec();
    p.extend_from_slice(&region.to_le_bytes());
    p.extend_from_slice(&count.to_le_bytes());
    p.extend_from_slice(data);
    p
}

fn dma_map(flags: u32, offset: u64, iova: u64, size: u64) -> Vec<u8> {
    let mut p = le32(&[32, flags]);
    for v in [offset, iova, size] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    p
}

#[test]
fn qemu_shaped_session() {
    let srv = Sidecar::start("model:edu", &[]);
    let s = UnixStream::connect(&srv.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut q = Raw { s, id: 0 };

    // VERSION as vfio_user_validate_version builds it (caps_json()).
    let caps = r#"{"capabilities":{"migration":{"pgsize":4096,"max_bitmap_size":268435456},"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true}}"#;
    let mut v = vec![0, 0, 0, 0]; // major 0, minor 0
    v.extend_from_slice(caps.as_bytes());
    v.push(0);
    let r = q.ok(1, &v, &[]);
    let (major, minor) = (
        u16::from_le_bytes([r[0], r[1]]),
        u16::from_le_bytes([r[2], r[3]]),
    );
    assert!(
        major == 0 && minor == 0,
        "QEMU requires minor <= 0: {major}.{minor}"
    );
    assert_eq!(*r.last().unwrap(), 0, "NUL-terminated");
    let j: serde_json::Value = serde_json::from_slice(&r[4..r.len() - 1]).unwrap();
    let c = &j["capabilities"];
    // The checks of QEMU's caps_check()/check_*():
    assert!(c["max_msg_fds"].as_u64().unwrap() <= 16);
    let xfer = c["max_data_xfer_size"].as_u64().unwrap();
    assert!(xfer <= 64 << 20);
    assert_eq!(c["pgsizes"].as_u64().unwrap() & 4095, 0);
    assert!(
        c["max_dma_maps"].as_u64().unwrap() <= 65535,
        "QEMU: max_dma_maps too large"
    );
    assert!(c.get("migration").is_none(), "no migration support offered");
    assert!(
        c.get("org.vfio-sidecar").is_none(),
        "not proposed, not sent"
    );
    assert_eq!(c["write_multiple"], true);

    // DEVICE_GET_INFO: PCI | RESET, 9 regions, 5 IRQs (QEMU caps 100/50).
    let r = q.ok(4, &le32(&[16, 0, 0, 0]), &[]);
    assert_eq!(r, le32(&[16, 0x3, 9, 5]));
    // Region info of every index with argsz 32 (no error for absent ones).
    for i in 0..9u32 {
        let r = q.ok(5, &le32(&[32, 0, i, 0, 0, 0, 0, 0]), &[]);
        assert_eq!(u32::from_le_bytes(r[8..12].try_into().unwrap()), i);
    }
    // ERR and REQ IRQ info (vfio_pci_register_err/req_notifier).
    for (i, count) in [(3u32, 0u32), (4, 1)] {
        let r = q.ok(7, &le32(&[16, 0, i, 0]), &[]);
        assert_eq!(u32::from_le_bytes(r[12..16].try_into().unwrap()), count);
    }
    // vfio_pci_config_setup reads the whole config space.
    let r = q.ok(9, &region_rw(0, CONFIG, 256, &[]), &[]);
    assert_eq!(r.len(), 16 + 256);
    assert_eq!(&r[16..20], &[0x34, 0x12, 0xe8, 0x11]);

    // DMA_MAP for a ROM section: no fd (QEMU sends none for fd-less RAM):
    // accepted, served by DMA_READ/DMA_WRITE (tests/tests/edu_fdless.rs).
    q.ok(2, &dma_map(1, 0, 0xfffc_0000, 0x4_0000), &[]);
    // RAM with its memfd: accepted; the session goes on.
    let ram = GuestMem::new("qemu-ram", 0x20_0000);
    ram.write(0x3000, b"qemu-shaped DMA");
    q.ok(2, &dma_map(3, 0, 0, 0x20_0000), &[ram.fd().as_raw_fd()]);

    // Posted writes (NO_REPLY) and WRITE_MULTI, then a read: no reply for the
    // posted ones, and the read sees them (messages are handled in order).
    q.send(
        10,
        NO_REPLY,
        &region_rw(0x80, BAR0, 8, &0x3000u64.to_le_bytes()),
        &[],
    );
    q.send(
        10,
        NO_REPLY,
        &region_rw(0x88, BAR0, 8, &0x4_0000u64.to_le_bytes()),
        &[],
    );
    let mut wm = 2u64.to_le_bytes().to_vec();
    for (off, val) in [(0x90u64, 15u64), (0x04, 0x0f0f_0f0f)] {
        let count = if off == 0x04 { 4u32 } else { 8 };
        wm.extend_from_slice(&off.to_le_bytes());
        wm.extend_from_slice(&BAR0.to_le_bytes());
        wm.extend_from_slice(&count.to_le_bytes());
        wm.extend_from_slice(&val.to_le_bytes());
    }
    q.send(15, NO_REPLY, &wm, &[]);
    let r = q.ok(9, &region_rw(0x90, BAR0, 8, &[]), &[]);
    assert_eq!(u64::from_le_bytes(r[16..24].try_into().unwrap()), 15);
    let r = q.ok(9, &region_rw(0x04, BAR0, 4, &[]), &[]);
    assert_eq!(&r[16..20], &0xf0f0_f0f0u32.to_le_bytes());

    // INTx as QEMU with KVM: trigger eventfd, then the resample eventfd as the
    // UNMASK eventfd (argsz 20, fds as ancillary data).
    let (trig, trig_r) = eventfd();
    let (resample, resample_w) = eventfd();
    let set = |flags: u32, index: u32, count: u32| le32(&[20, flags, index, 0, count]);
    q.ok(
        8,
        &set(
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            1,
        ),
        &[trig.as_fd().as_raw_fd()],
    );
    q.ok(
        8,
        &set(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_UNMASK, 0, 1),
        &[resample.as_fd().as_raw_fd()],
    );
    // DMA RAM -> device, IRQ on completion. Like QEMU's edu (a timer), the
    // transfer completes after the command write: the guest polls RUN.
    q.ok(10, &region_rw(0x98, BAR0, 8, &5u64.to_le_bytes()), &[]);
    wait_dma(|| u32::from(q.ok(9, &region_rw(0x98, BAR0, 8, &[]), &[])[16]));
    let r = q.ok(9, &region_rw(0x24, BAR0, 4, &[]), &[]);
    assert_eq!(&r[16..20], &0x100u32.to_le_bytes());
    assert_eq!(drain(&trig_r), 1);
    // A guest that has not acked yet: KVM's resample (EOI) unmasks, the line is
    // still high, the interrupt fires again.
    (&resample_w).write_all(&1u64.to_ne_bytes()).unwrap();
    let mut refired = 0;
    for _ in 0..500 {
        refired = drain(&trig_r);
        if refired > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(refired, 1, "resample EOI with the line still high refires");
    // Check the device buffer got the data: device -> RAM at 0x5000.
    q.ok(10, &region_rw(0x64, BAR0, 4, &0x100u32.to_le_bytes()), &[]);
    q.ok(
        10,
        &region_rw(0x80, BAR0, 8, &0x4_0000u64.to_le_bytes()),
        &[],
    );
    q.ok(10, &region_rw(0x88, BAR0, 8, &0x5000u64.to_le_bytes()), &[]);
    q.ok(10, &region_rw(0x98, BAR0, 8, &3u64.to_le_bytes()), &[]);
    wait_dma(|| u32::from(q.ok(9, &region_rw(0x98, BAR0, 8, &[]), &[])[16]));
    assert_eq!(
        ram.read(0x5000, 15),
        b"qemu-shaped DMA",
        "{}",
        srv.log_text()
    );

    // GET_REGION_IO_FDS (QEMU does not send it; answered anyway): no
    // sub-regions for a valid index, EINVAL for an invalid one.
    let r = q.ok(6, &le32(&[32, 0, 0, 0]), &[]);
    assert_eq!(&r[8..16], &le32(&[0, 0])[..], "index 0, count 0");
    let r = q.call(6, &le32(&[32, 0, 99, 0]), &[]);
    assert_ne!(r.flags & ERROR, 0);
    assert_eq!(r.fds, 0);
    // vfio_user_pci_reset → DEVICE_RESET; DMA_UNMAP as the listener does.
    q.ok(13, &[], &[]);
    let mut un = le32(&[24, 0]);
    un.extend_from_slice(&0u64.to_le_bytes());
    un.extend_from_slice(&0x20_0000u64.to_le_bytes());
    q.ok(3, &un, &[]);
    // QEMU (with a vIOMMU) also unmaps ranges it never got mapped: success,
    // as kernel type1 answers it, and nothing logged above debug.
    let mut un = le32(&[24, 0]);
    un.extend_from_slice(&0x8000_0000u64.to_le_bytes());
    un.extend_from_slice(&0x10_0000u64.to_le_bytes());
    q.ok(3, &un, &[]);
    let mut un = le32(&[24, 0]);
    un.extend_from_slice(&0xfffc_0000u64.to_le_bytes());
    un.extend_from_slice(&0x4_0000u64.to_le_bytes());
    q.ok(3, &un, &[]);
    drop(q);
    srv.wait_log("client disconnected");
}
