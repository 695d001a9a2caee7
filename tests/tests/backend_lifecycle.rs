//! Cross-process: the backend's client lifecycle — cleanup on disconnect (DMA
//! maps and fds released, next client served), one client at a time (EBUSY),
//! SIGTERM, socket-path errors, sparse mmap of the scratch model.
#![allow(clippy::unwrap_used)]

use std::os::fd::AsFd;
use std::process::Command;
use std::time::Duration;

use vfio_sidecar_protocol::client::{Client, ClientOptions};
use vfio_sidecar_protocol::error::ClientError;
use vfio_sidecar_protocol::message::IrqAction;
use vfio_sidecar_tests::{
    drain, eventfd, fd_count, maps_matching, scratch_dma, set_eventfd, wait_until, workspace_bin,
    GuestMem, Sidecar, TempDir, RW, WAIT,
};

fn use_client(srv: &Sidecar, mems: &[GuestMem]) -> Client {
    let mut c = srv.connect(true);
    for (i, m) in mems.iter().enumerate() {
        c.dma_map(0x10_0000 * (i as u64 + 1), 0x4000, m.fd(), 0, RW)
            .unwrap();
    }
    let (t, _r) = eventfd();
    let (u, _w) = eventfd();
    set_eventfd(&mut c, 0, IrqAction::Trigger, t.as_fd()).unwrap();
    set_eventfd(&mut c, 0, IrqAction::Unmask, u.as_fd()).unwrap();
    c
}

#[test]
fn disconnect_releases_maps_and_fds_and_next_client_works() {
    let srv = Sidecar::start("model:scratch", &[]);
    let pid = srv.pid();
    let base_fds = fd_count(pid);
    assert!(base_fds > 0);
    let mems: Vec<GuestMem> = (0..3).map(|_| GuestMem::new("guestmem", 0x4000)).collect();

    // A client that disconnects cleanly.
    let c = use_client(&srv, &mems);
    // Client socket + 2 eventfds (DMA fds are closed right after mmap).
    wait_until("fds held", WAIT, || fd_count(pid) >= base_fds + 3);
    assert_eq!(maps_matching(pid, "memfd:guestmem"), 3);
    drop(c);
    srv.wait_log("client disconnected");
    wait_until("fds released", WAIT, || fd_count(pid) == base_fds);
    wait_until("maps released", WAIT, || {
        maps_matching(pid, "memfd:guestmem") == 0
    });

    // A client that dies in the middle of a request (half a header on the wire,
    // then the socket closes, as when the process is killed): same cleanup.
    let mut c = use_client(&srv, &mems);
    let info = c.device_info().unwrap();
    assert_eq!(info.num_regions, 1);
    c.dma_unmap(0x10_0000, 0x4000).unwrap();
    // Again: nothing mapped there, success (as kernel type1); a range
    // that would split a mapping is refused.
    c.dma_unmap(0x10_0000, 0x4000).unwrap();
    assert!(c.dma_unmap(0x20_0000, 0x1000).is_err(), "no split unmap");
    c.send_raw(&[1, 0, 0, 0, 0x20]).unwrap();
    drop(c);
    wait_until("fds released again", WAIT, || fd_count(pid) == base_fds);
    wait_until("maps released again", WAIT, || {
        maps_matching(pid, "memfd:guestmem") == 0
    });
    // The next client can reuse the same IOVAs (nothing left behind).
    let mut c = use_client(&srv, &mems);
    c.device_info().unwrap();
    drop(c);
    let c = srv.connect(false);
    drop(c);
}

#[test]
fn second_client_gets_ebusy() {
    let srv = Sidecar::start("model:scratch", &[]);
    let mut first = srv.connect(true);
    let r = Client::connect(&srv.socket, ClientOptions::default());
    match r {
        Err(ClientError::Remote { errno, .. }) => assert_eq!(errno.raw(), libc::EBUSY),
        Err(e) => panic!("expected EBUSY, got {e}"),
        Ok(_) => panic!("second client accepted"),
    }
    srv.wait_log("second client refused");
    // The first client is unaffected.
    first.device_info().unwrap();
}

#[test]
fn refused_client_gets_one_reply_then_is_closed() {
    use std::io::{Read, Write};
    let srv = Sidecar::start("model:scratch", &[]);
    let mut first = srv.connect(true);
    // A second peer sends two DEVICE_GET_INFO requests (no VERSION). It is
    // refused: one error reply to its first message, then the backend closes it,
    // so a peer that never reads can hold the loop for one short write at most.
    let mut rogue = std::os::unix::net::UnixStream::connect(&srv.socket).unwrap();
    let mut msg = Vec::new();
    for id in 1u16..=2 {
        msg.extend_from_slice(&id.to_le_bytes());
        msg.extend_from_slice(&4u16.to_le_bytes()); // DEVICE_GET_INFO
        msg.extend_from_slice(&32u32.to_le_bytes()); // size incl. header
        msg.extend_from_slice(&0u32.to_le_bytes()); // flags: command
        msg.extend_from_slice(&0u32.to_le_bytes()); // errno
        msg.extend_from_slice(&16u32.to_le_bytes()); // argsz
        msg.extend_from_slice(&[0u8; 12]);
    }
    rogue.write_all(&msg).unwrap();
    rogue
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Closing with our second message unread makes the kernel report
    // ECONNRESET once (AF_UNIX); the reply queued before it is still there.
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match rogue.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => continue,
            Err(e) => panic!("reading the refused socket: {e}"),
        }
    }
    assert_eq!(
        got.len(),
        16,
        "exactly one error reply (header only), then EOF: {got:?}"
    );
    let flags = u32::from_le_bytes(got[8..12].try_into().unwrap());
    assert_ne!(flags & (1 << 5), 0, "the reply carries the error flag");
    srv.wait_log("second client refused");
    // The first client is served all along.
    first.device_info().unwrap();
}

#[test]
fn sigterm_removes_socket_and_exits_zero() {
    let mut srv = Sidecar::start("model:pl330", &[]);
    let _c = srv.connect(false);
    let sock = srv.socket.clone();
    let st = srv.terminate();
    assert!(st.success(), "{st}");
    assert!(!sock.exists(), "socket file removed");
    assert!(srv.log_text().contains("shutting down"));
}

#[test]
fn socket_path_errors_are_actionable() {
    let bin = workspace_bin("vfio-sidecar", "vfio-sidecar");
    // In use by a live server.
    let srv = Sidecar::start("model:scratch", &[]);
    let out = Command::new(&bin)
        .args(["serve", "--device", "model:scratch", "--socket"])
        .arg(&srv.socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use"), "{err}");

    // A stale socket file is removed and reused.
    let dir = TempDir::new("stale");
    let path = dir.0.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let mut child = Command::new(&bin)
        .args(["serve", "--device", "model:scratch", "--socket"])
        .arg(&path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("stale socket reused", WAIT, || {
        Client::connect(&path, ClientOptions::default()).is_ok()
    });
    child.kill().unwrap();
    child.wait().unwrap();

    // Bad device string, missing sysfs path.
    for (dev, want) in [
        ("pl330", "bad device"),
        ("model:nosuch", "unknown model"),
        (
            "vfio:/sys/bus/platform/devices/does-not-exist",
            "no such device in sysfs",
        ),
    ] {
        let out = Command::new(&bin)
            .args(["serve", "--socket"])
            .arg(dir.0.join("x.sock"))
            .args(["--device", dev])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{dev}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{dev}: {err}");
    }
}

#[test]
fn scratch_sparse_mmap_and_dma() {
    let srv = Sidecar::start("model:scratch", &[]);
    let mut c = srv.connect(true);
    let (info, fd) = c.region_info(0).unwrap();
    assert_eq!(info.size, 0x2000);
    let sparse = info.sparse.clone().unwrap();
    assert_eq!(sparse.len(), 1);
    assert_eq!((sparse[0].offset, sparse[0].size), (0x1000, 0x1000));
    let fd = fd.expect("mmap fd");
    // The device's own region fd is refused as DMA memory.
    let e = c.dma_map(0x20_0000, 0x1000, fd.as_fd(), 0, RW).unwrap_err();
    assert!(
        matches!(e, ClientError::Remote { errno, .. } if errno.raw() == libc::EINVAL),
        "{e}"
    );
    // Writes through REGION_WRITE to the mmap-able page are visible in the fd.
    c.region_write(0, 0x1010, b"sparse").unwrap();
    let f = std::fs::File::from(fd);
    let mut b = [0u8; 6];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, info.offset + 0x1010).unwrap();
    assert_eq!(&b, b"sparse");

    // Scratch DMA: copy 64 bytes inside a memfd mapping; IRQ via trigger.
    let mem = GuestMem::new("g", 0x2000);
    c.dma_map(0x8000_0000, 0x2000, mem.fd(), 0, RW).unwrap();
    mem.write(0x100, &[0xab; 64]);
    let (t, r) = eventfd();
    set_eventfd(&mut c, 0, IrqAction::Trigger, t.as_fd()).unwrap();
    scratch_dma(&mut c, 0x8000_0100, 0x8000_1000, 64);
    assert_eq!(mem.read(0x1000, 64), vec![0xab; 64]);
    assert_eq!(drain(&r), 1);
    // Clear-register EOI at INTCLR 0x0c.
    c.region_write(0, 0x0c, &1u32.to_le_bytes()).unwrap();
    let st = c.irq_stats(0, 0, 1).unwrap();
    assert_eq!(
        (st[0].device_events, st[0].host_interrupts, st[0].unmasks),
        (1, 1, 1)
    );
}
