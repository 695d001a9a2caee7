//! `probe` against a server we did not write: the crates.io `vfio_user` 0.1.7
//! crate's `Server` (a PCI device with a trapped BAR0, an mmap-able BAR2 with
//! two sparse areas and a gap, a config space region, two IRQ indices).
//!
//! That crate blocks forever on some errors, so the probe runs in a thread
//! under a watchdog: a hang fails the test instead of hanging it.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::sync::mpsc;
use std::time::Duration;

use vfio_bindings::bindings::vfio::{
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_sidecar::probe::{probe, render_text, ProbeArgs, Range, ReadSpec};
use vfio_sidecar_protocol::testing::{memfd, watchdog};
use vfio_sidecar_tests::TempDir;

#[path = "../../protocol/tests/common/vfio_user_server.rs"]
mod vfio_user_server;
use vfio_user_server::server_region;

const WATCHDOG: Duration = Duration::from_secs(30);

struct Backend {
    config: Vec<u8>,
    bar0: Vec<u8>,
}

impl vfio_user::ServerBackend for Backend {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        let src = match region {
            0 => &self.bar0,
            7 => &self.config,
            _ => return Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
        };
        let o = offset as usize;
        data.copy_from_slice(&src[o..o + data.len()]);
        Ok(())
    }
    fn region_write(&mut self, _r: u32, _o: u64, _d: &[u8]) -> std::io::Result<()> {
        panic!("the probe must not write");
    }
    fn dma_map(
        &mut self,
        _f: vfio_user::DmaMapFlags,
        _o: u64,
        _a: u64,
        _s: u64,
        _fd: Option<File>,
    ) -> std::io::Result<()> {
        panic!("the probe must not map");
    }
    fn dma_unmap(&mut self, _f: vfio_user::DmaUnmapFlags, _a: u64, _s: u64) -> std::io::Result<()> {
        panic!("the probe must not unmap");
    }
    fn reset(&mut self) -> std::io::Result<()> {
        panic!("the probe must not reset");
    }
    fn set_irqs(
        &mut self,
        _i: u32,
        _f: u32,
        _s: u32,
        _c: u32,
        _fds: Vec<File>,
    ) -> std::io::Result<()> {
        panic!("the probe must not touch IRQs");
    }
}

#[test]
fn probe_their_pci_server() {
    let dir = TempDir::new("probe-theirs");
    let path = dir.0.join("their.sock");
    let bar2 = memfd("probe-bar", 0x4000).unwrap().into_raw_fd();
    let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    let regions = (0..8u32)
        .map(|index| match index {
            0 => server_region(0, rw, 0x1000, &[], None),
            2 => server_region(
                2,
                rw | VFIO_REGION_INFO_FLAG_MMAP,
                0x4000,
                &[(0, 0x1000), (0x2000, 0x2000)],
                Some(bar2),
            ),
            7 => server_region(7, rw, 256, &[], None),
            i => server_region(i, 0, 0, &[], None),
        })
        .collect();
    let irqs = vec![
        vfio_user::IrqInfo {
            index: 0,
            flags: 0x7,
            count: 1,
        },
        vfio_user::IrqInfo {
            index: 1,
            flags: 0x9,
            count: 4,
        },
    ];
    let server = vfio_user::Server::new(&path, true, irqs, regions).unwrap();
    let mut config = vec![0u8; 256];
    config[0..4].copy_from_slice(&[0xcd, 0xab, 0x34, 0x12]);
    config[0x0b] = 0x02; // network controller
    let mut bar0 = vec![0u8; 0x1000];
    bar0[0x10..0x18].copy_from_slice(b"theirs!\n");
    let (srv_tx, srv_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut b = Backend { config, bar0 };
        let r = server.run(&mut b).map_err(|e| e.to_string());
        let _ = srv_tx.send(r);
    });

    let p = path.clone();
    let report = watchdog(
        "probe against the vfio_user crate's Server",
        WATCHDOG,
        move || {
            let mut args = ProbeArgs::new(p);
            args.read = vec!["BAR0:0x10:8".parse::<ReadSpec>().unwrap()];
            probe(&args).map_err(|e| e.to_string())
        },
    )
    .unwrap();

    assert_eq!(report.version, "0.0", "their server answers minor 0");
    assert!(report.capabilities.sidecar.is_none());
    assert_eq!(report.capabilities.max_msg_fds, 1);
    assert_eq!(report.device.kind, "pci");
    assert_eq!(report.device.num_regions, 8);
    assert_eq!(report.device.num_irqs, 2);
    let pci = report.pci.as_ref().expect("config space read");
    assert_eq!(
        (pci.vendor, pci.device, pci.class),
        (0xabcd, 0x1234, 0x020000)
    );
    let r0 = &report.regions[0];
    assert_eq!(r0.name.as_deref(), Some("BAR0"));
    assert_eq!(
        r0.trapped,
        vec![Range {
            start: 0,
            end: 0x1000
        }]
    );
    let r2 = &report.regions[2];
    assert_eq!(r2.name.as_deref(), Some("BAR2"));
    assert_eq!(
        r2.sparse.as_deref(),
        Some(
            &[
                Range {
                    start: 0,
                    end: 0x1000
                },
                Range {
                    start: 0x2000,
                    end: 0x4000
                }
            ][..]
        )
    );
    assert_eq!(
        r2.trapped,
        vec![Range {
            start: 0x1000,
            end: 0x2000
        }]
    );
    assert_eq!(report.regions[7].name.as_deref(), Some("config"));
    assert_eq!(report.irqs[1].name.as_deref(), Some("MSI"));
    assert_eq!(report.irqs[1].count, 4);
    assert_eq!(report.irqs[1].flag_names, vec!["EVENTFD", "NORESIZE"]);
    assert!(report.irqs[0].eoi.is_none());
    assert_eq!(report.reads[0].hex, "746865697273210a");
    let text = render_text(&report);
    assert!(text.contains("PCI: [abcd:1234]"), "{text}");
    assert!(text.contains("Trapped pages: 0x1000-0x2000"), "{text}");
    assert!(text.contains("not negotiated"), "{text}");

    let r = srv_rx
        .recv_timeout(WATCHDOG)
        .expect("their server did not finish after the probe disconnected");
    assert!(r.is_ok(), "{r:?}");
    // SAFETY: the raw fd was handed to their server, which is done with it.
    drop(unsafe { OwnedFd::from_raw_fd(bar2) });
}
