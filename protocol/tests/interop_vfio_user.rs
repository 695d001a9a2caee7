//! Interop with the independent crates.io `vfio_user` 0.1.7 crate:
//! * its `Client` against our `ServerConnection` (toy handler);
//! * our `Client` against its `Server`.
//!
//! That crate blocks forever on some error paths, so every peer runs in a
//! thread under a watchdog (channel with a timeout): a hang fails the test
//! instead of hanging it.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/vfio_user_server.rs"]
mod vfio_user_server;

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_sidecar_protocol::caps::Limits;
use vfio_sidecar_protocol::client::IrqData;
use vfio_sidecar_protocol::message::{IrqAction, DMA_MAP_FLAG_READ, DMA_MAP_FLAG_WRITE};
use vfio_sidecar_protocol::{Client, ClientError, ClientOptions, ConnStatus, DmaProt, Errno};
use vfio_user_server::server_region;

const WATCHDOG: Duration = Duration::from_secs(20);

fn temp_sock(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("proto-interop-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("s.sock");
    let _ = std::fs::remove_file(&p);
    p
}

#[test]
fn their_client_against_our_server() {
    let path = temp_sock("ours");
    let listener = UnixListener::bind(&path).unwrap();
    let h = ToyHandler {
        // Their client only accepts PCI devices.
        device_flags: 1 | 2,
        ..ToyHandler::default()
    };
    let (srv_tx, srv_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let r = spawn_server(s, Limits::default(), h).join().unwrap();
        let _ = srv_tx.send(r);
    });

    let mem = memfd(0x4000);
    pwrite(mem.as_raw_fd(), 0, b"dma-window");
    let mem_raw = mem.as_raw_fd();
    let irq = eventfd();
    let irq_raw = irq.as_raw_fd();
    let p = path.clone();
    let result = watchdog("vfio_user::Client", WATCHDOG, move || {
        let mut c = vfio_user::Client::new(&p).unwrap();
        // Regions were fetched in new(): region 1 and 2 have sparse areas and
        // an fd (the argsz retry path), region 0 is trapped.
        let r0 = c.region(0).unwrap();
        assert_eq!(r0.size, REG_SIZE as u64);
        assert!(r0.file_offset.is_none());
        let r1 = c.region(1).unwrap();
        assert_ne!(r1.flags & VFIO_REGION_INFO_FLAG_MMAP, 0);
        assert_eq!(r1.sparse_areas.len(), 2);
        assert_eq!(r1.sparse_areas[1].offset, 0x1000);
        assert_eq!(r1.sparse_areas[1].size, 0x800);
        let fo = r1.file_offset.as_ref().expect("mmap fd");
        assert_eq!(pread(fo.file().as_raw_fd(), 0, 11), b"mmap-region");
        assert_eq!(c.region(2).unwrap().sparse_areas.len(), NUM_SPARSE_BIG);
        // IRQs.
        let ii = c.get_irq_info(0).unwrap();
        assert_eq!((ii.index, ii.count), (0, 2));
        c.set_irqs(
            0,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            1,
            &[irq_raw],
        )
        .unwrap();
        c.set_irqs(
            0,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            1,
            &[],
        )
        .unwrap();
        // Region I/O.
        c.region_write(0, 0x100, &[5, 6, 7, 8]).unwrap();
        let mut buf = [0u8; 6];
        c.region_read(0, 0xff, &mut buf).unwrap();
        assert_eq!(buf, [0xff, 5, 6, 7, 8, 0x04]);
        // DMA.
        c.dma_map(0, 0x10000, 0x4000, mem_raw).unwrap();
        c.dma_unmap(0x10000, 0x4000).unwrap();
        c.dma_map(0x1000, 0x20000, 0x1000, mem_raw).unwrap();
        c.reset().unwrap();
        c.shutdown().unwrap();
        drop(c);
        (mem, irq)
    });
    let (mem, irq) = result;
    assert_eq!(
        eventfd_read(irq.as_raw_fd()),
        1,
        "our server signalled their eventfd"
    );
    let (h, status) = srv_rx
        .recv_timeout(WATCHDOG)
        .expect("our server did not finish");
    assert_eq!(status, Ok(ConnStatus::Closed));
    assert_eq!(h.resets, 1);
    assert_eq!(h.maps.len(), 1);
    let (size, flags, fd) = &h.maps[&0x20000];
    assert_eq!(*size, 0x1000);
    assert_eq!(*flags, DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE);
    pwrite(mem.as_raw_fd(), 0x1000, b"shared");
    assert_eq!(
        pread(fd.as_ref().unwrap().as_raw_fd(), 0x1000, 6),
        b"shared"
    );
    // Their client proposed no extension: a plain device.
    let n = h.negotiated.unwrap();
    assert!(!n.extension());
    assert_eq!(n.client.max_msg_fds, 1);
    assert!(n.client.migration);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[derive(Default)]
struct TheirBackend {
    regs: Vec<u8>,
    maps: Vec<(u32, u64, u64, u64, bool)>,
    unmaps: Vec<(u64, u64)>,
    resets: u32,
    irq_fds: Vec<File>,
}

impl vfio_user::ServerBackend for TheirBackend {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        assert_eq!(region, 0);
        let o = offset as usize;
        data.copy_from_slice(&self.regs[o..o + data.len()]);
        Ok(())
    }
    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> std::io::Result<()> {
        assert_eq!(region, 0);
        let o = offset as usize;
        self.regs[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn dma_map(
        &mut self,
        flags: vfio_user::DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> std::io::Result<()> {
        if let Some(f) = &fd {
            assert_eq!(pread(f.as_raw_fd(), offset, 4), b"ram!");
        }
        self.maps
            .push((flags.bits(), offset, address, size, fd.is_some()));
        Ok(())
    }
    fn dma_unmap(
        &mut self,
        _flags: vfio_user::DmaUnmapFlags,
        address: u64,
        size: u64,
    ) -> std::io::Result<()> {
        self.unmaps.push((address, size));
        Ok(())
    }
    fn reset(&mut self) -> std::io::Result<()> {
        self.resets += 1;
        Ok(())
    }
    fn set_irqs(
        &mut self,
        _index: u32,
        _flags: u32,
        _start: u32,
        _count: u32,
        fds: Vec<File>,
    ) -> std::io::Result<()> {
        for f in &fds {
            eventfd_signal(f.as_raw_fd());
        }
        self.irq_fds.extend(fds);
        Ok(())
    }
}

#[test]
fn our_client_against_their_server() {
    let path = temp_sock("theirs");
    let mmap = memfd(0x2000);
    pwrite(mmap.as_raw_fd(), 0x10, b"their-bar");
    let mmap_raw = mmap.into_raw_fd();
    let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    let regions = vec![
        server_region(0, rw, 0x100, &[], None),
        server_region(
            1,
            rw | VFIO_REGION_INFO_FLAG_MMAP,
            0x2000,
            &[(0, 0x1000), (0x1000, 0x1000)],
            Some(mmap_raw),
        ),
    ];
    let irqs = vec![vfio_user::IrqInfo {
        index: 0,
        flags: 1,
        count: 2,
    }];
    let server = vfio_user::Server::new(&path, true, irqs, regions).unwrap();
    let backend = Arc::new(Mutex::new(TheirBackend {
        regs: vec![0; 0x100],
        ..TheirBackend::default()
    }));
    let b2 = backend.clone();
    let (srv_tx, srv_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut b = b2.lock().unwrap();
        let r = server.run(&mut *b).map_err(|e| e.to_string());
        let _ = srv_tx.send(r);
        drop(server);
    });

    let p = path.clone();
    let irq = eventfd();
    let irq2 = eventfd();
    let (irq, irq2) = watchdog("our Client", WATCHDOG, move || {
        let opts = ClientOptions {
            reply_timeout: Duration::from_secs(5),
            ..ClientOptions::default()
        };
        let mut c = Client::connect(&p, opts).unwrap();
        let n = c.negotiated().clone();
        assert!(!n.extension(), "their server does not know the extension");
        assert_eq!((n.major, n.minor), (0, 0));
        assert_eq!(n.server.max_msg_fds, 1);
        let info = c.device_info().unwrap();
        assert_eq!(info.num_regions, 2);
        assert_eq!(info.num_irqs, 1);
        assert_ne!(info.flags & 2, 0, "PCI");
        let (r0, fd0) = c.region_info(0).unwrap();
        assert!(fd0.is_none() && r0.sparse.is_none());
        assert_eq!(r0.size, 0x100);
        let (r1, fd1) = c.region_info(1).unwrap();
        assert_eq!(r1.sparse.as_ref().unwrap().len(), 2);
        assert_eq!(pread(fd1.unwrap().as_raw_fd(), 0x10, 9), b"their-bar");
        // Error reply from their server (bad index): a clean Remote error.
        match c.region_info(7) {
            Err(ClientError::Remote { errno, .. }) => assert_eq!(errno, Errno::EINVAL),
            other => panic!("unexpected {other:?}"),
        }
        let ii = c.irq_info(0).unwrap();
        assert_eq!(ii.count, 2);
        // Two eventfds, their max_msg_fds is 1: sent as two messages.
        c.set_irqs(
            0,
            IrqAction::Trigger,
            IrqData::Eventfds(&[Some(irq.as_fd()), Some(irq2.as_fd())]),
            0,
            2,
        )
        .unwrap();
        c.region_write(0, 0x10, &[1, 2, 3]).unwrap();
        assert_eq!(c.region_read(0, 0x0f, 5).unwrap(), vec![0, 1, 2, 3, 0]);
        let ram = memfd(0x3000);
        pwrite(ram.as_raw_fd(), 0x1000, b"ram!");
        c.dma_map(
            0x4000_0000,
            0x1000,
            ram.as_fd(),
            0x1000,
            DmaProt {
                read: true,
                write: true,
                exec: false,
            },
        )
        .unwrap();
        c.dma_unmap(0x4000_0000, 0x1000).unwrap();
        c.reset().unwrap();
        drop(c);
        (irq, irq2)
    });
    assert_eq!(eventfd_read(irq.as_raw_fd()), 1);
    assert_eq!(eventfd_read(irq2.as_raw_fd()), 1);
    let r = srv_rx
        .recv_timeout(WATCHDOG)
        .expect("their server did not finish");
    assert!(r.is_ok(), "{r:?}");
    let b = backend.lock().unwrap();
    assert_eq!(b.resets, 1);
    assert_eq!(b.maps, vec![(3, 0x1000, 0x4000_0000, 0x1000, true)]);
    assert_eq!(b.unmaps, vec![(0x4000_0000, 0x1000)]);
    assert_eq!(b.irq_fds.len(), 2);
    // SAFETY: we gave their server a raw copy; close it now that it is done.
    drop(unsafe { File::from_raw_fd(mmap_raw) });
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
