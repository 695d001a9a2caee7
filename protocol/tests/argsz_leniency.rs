//! VFIO `argsz` rules against raw peers that behave like the three
//! independent clients (all over a real socketpair, ToyHandler region 1 has
//! two sparse mmap areas and an fd):
//!
//! * libvfio-user's `samples/client.c`: GET_REGION_INFO with argsz 32 and **no
//!   fd buffer**, then again with its whole zeroed `argsz`-sized buffer as
//!   the payload (64+ bytes);
//! * QEMU 10.1 `hw/vfio-user/device.c`: a 32-byte payload both times, the
//!   second with the larger argsz, room for one fd each time;
//! * the crates.io `vfio_user` 0.1.7 `Client`: like QEMU, and it keeps the fd
//!   of the reply it uses (the second when argsz grew);
//!
//! plus zero-padded fixed requests (DEVICE_GET_INFO, GET_IRQ_INFO, DMA_UNMAP)
//! accepted and non-zero padding refused.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::net::UnixStream;

use common::*;
use vfio_sidecar_protocol::caps::{Capabilities, Limits};
use vfio_sidecar_protocol::header::command as cmd;
use vfio_sidecar_protocol::message::*;
use vfio_sidecar_protocol::testing::ToyHandler;

type ServerThread = std::thread::JoinHandle<(
    ToyHandler,
    Result<vfio_sidecar_protocol::ConnStatus, String>,
)>;

fn session() -> (RawPeer, ServerThread) {
    let (a, b) = UnixStream::pair().unwrap();
    let server = spawn_server(b, Limits::default(), ToyHandler::default());
    let mut p = RawPeer::new(a);
    assert_eq!(errno_of(&p.version(&Capabilities::default())), None);
    (p, server)
}

fn region_req(argsz: u32, index: u32, payload_len: usize) -> Vec<u8> {
    let mut v = RegionInfoRequest { argsz, index }.encode();
    v.resize(payload_len.max(v.len()), 0);
    v
}

/// First request of every client: argsz 32 for region 1 (which has caps).
/// The reply is truncated and carries no fd.
fn first_request(p: &mut RawPeer) -> u32 {
    let m = p.call(cmd::DEVICE_GET_REGION_INFO, &region_req(32, 1, 32), &[]);
    assert_eq!(errno_of(&m), None);
    assert!(m.fds.is_empty(), "no fd on a truncated reply");
    let r = RegionInfo::decode_reply(&m.payload).unwrap();
    assert!(r.is_truncated());
    assert!(r.argsz > 32);
    assert_ne!(
        r.info.flags & REGION_INFO_FLAG_MMAP,
        0,
        "MMAP still announced"
    );
    r.argsz
}

fn full_reply_ok(m: &vfio_sidecar_protocol::transport::Message, need: u32) {
    assert_eq!(errno_of(m), None);
    assert_eq!(m.payload.len(), need as usize);
    assert_eq!(m.fds.len(), 1, "the fd comes with the full reply");
    let r = RegionInfo::decode_reply(&m.payload).unwrap();
    assert!(!r.is_truncated());
    assert_eq!(r.info.sparse.as_ref().unwrap().len(), 2);
    assert_eq!(
        pread(std::os::fd::AsRawFd::as_raw_fd(&m.fds[0]), 0, 11),
        b"mmap-region"
    );
}

#[test]
fn libvfio_user_client_shape() {
    let (mut p, server) = session();
    let need = first_request(&mut p);
    // Its second request: the payload is its whole argsz-sized zeroed buffer.
    let m = p.call(
        cmd::DEVICE_GET_REGION_INFO,
        &region_req(need, 1, need as usize),
        &[],
    );
    full_reply_ok(&m, need);
    // A padded request for a region without caps: answered, no fd needed.
    let m = p.call(cmd::DEVICE_GET_REGION_INFO, &region_req(64, 0, 64), &[]);
    assert_eq!(errno_of(&m), None);
    assert!(m.fds.is_empty());
    drop(p);
    server.join().unwrap().1.unwrap();
}

#[test]
fn qemu_and_vfio_user_crate_shape() {
    let (mut p, server) = session();
    let need = first_request(&mut p);
    // 32-byte payload, larger argsz: the full reply with its fd.
    let m = p.call(cmd::DEVICE_GET_REGION_INFO, &region_req(need, 1, 32), &[]);
    full_reply_ok(&m, need);
    // An argsz larger than needed: the full reply, argsz = what is needed.
    let m = p.call(cmd::DEVICE_GET_REGION_INFO, &region_req(4096, 1, 32), &[]);
    full_reply_ok(&m, need);
    drop(p);
    server.join().unwrap().1.unwrap();
}

#[test]
fn zero_padding_accepted_nonzero_refused() {
    let (mut p, server) = session();
    let mut req = DeviceInfo::request().encode();
    req.resize(48, 0);
    let m = p.call(cmd::DEVICE_GET_INFO, &req, &[]);
    assert_eq!(errno_of(&m), None);
    assert_eq!(DeviceInfo::decode(&m.payload).unwrap().num_regions, 3);
    let mut irq = IrqInfo {
        argsz: 16,
        flags: 0,
        index: 0,
        count: 0,
    }
    .encode();
    irq.resize(32, 0);
    let m = p.call(cmd::DEVICE_GET_IRQ_INFO, &irq, &[]);
    assert_eq!(errno_of(&m), None);
    // A field this side does not know, non-zero: refused (EINVAL), the
    // connection goes on.
    let mut bad = DeviceInfo::request().encode();
    bad.extend_from_slice(&[0, 0, 1, 0]);
    let m = p.call(cmd::DEVICE_GET_INFO, &bad, &[]);
    assert_eq!(errno_of(&m), Some(libc::EINVAL));
    let mut bad = region_req(64, 1, 64);
    bad[40] = 7;
    let m = p.call(cmd::DEVICE_GET_REGION_INFO, &bad, &[]);
    assert_eq!(errno_of(&m), Some(libc::EINVAL));
    assert!(m.fds.is_empty());
    // Short is still refused.
    let m = p.call(
        cmd::DEVICE_GET_REGION_INFO,
        &region_req(32, 1, 32)[..24],
        &[],
    );
    assert_eq!(errno_of(&m), Some(libc::EINVAL));
    let m = p.call(cmd::DEVICE_GET_INFO, &DeviceInfo::request().encode(), &[]);
    assert_eq!(errno_of(&m), None);
    drop(p);
    server.join().unwrap().1.unwrap();
}
