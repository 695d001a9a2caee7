//! Fuzz harness for `ServerConnection`: shared by the cargo-fuzz target
//! `protocol_server` and the corpus replay test in
//! `protocol/tests/fuzz_corpus_replay.rs` (included there with `#[path]`).
//!
//! Input format:
//! * byte 0, mode bits: bit 0 = start with a valid VERSION, bit 1 = propose
//!   the `org.vfio-sidecar` extension in it, bit 2 = propose write_multiple;
//! * then records `[len_lo, len_hi, nfds, bytes...]`: `len & 0x3fff` bytes (or
//!   what is left) sent in one `sendmsg` with `nfds % 20` fds attached
//!   (alternately a memfd and an eventfd; more than 16 exercises the limit).
//!
//! The device behind the connection is the protocol crate's bounds-checked
//! toy device (`vfio_sidecar_protocol::testing::ToyHandler`, also the one
//! the protocol tests use) offering [`LIMITS`].
//!
//! After each record the server handles everything readable; a drain thread
//! reads (and drops) the replies. The run ends when the input ends or the
//! server closes the connection. Panics are the bugs looked for.
#![allow(dead_code)]

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vfio_sidecar_protocol::caps::{Capabilities, Limits, SidecarCaps};
use vfio_sidecar_protocol::header::{command as cmd, Header};
use vfio_sidecar_protocol::message::*;
use vfio_sidecar_protocol::testing::{eventfd, memfd, sendmsg_fds, version_payload, ToyHandler};
use vfio_sidecar_protocol::transport::{recv_with_fds, wait_fd};
use vfio_sidecar_protocol::{ConnStatus, ServerConnection};

/// Limits of the fuzzed server (small transfers keep executions fast).
pub const LIMITS: Limits = Limits {
    max_msg_fds: 16,
    max_data_xfer_size: 4096,
    max_dma_maps: 8,
};

/// The fuzzed device: the protocol crate's bounds-checked toy device
/// offering [`LIMITS`].
pub type FuzzDevice = ToyHandler;

/// A fresh [`FuzzDevice`] (None when out of fds).
pub fn device() -> Option<FuzzDevice> {
    ToyHandler::with_limits(LIMITS).ok()
}

/// Sends all of `bytes` (blocking), `fds` attached to the first sendmsg.
fn send_with_fds(sock: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> bool {
    let mut off = 0;
    let mut first = true;
    while off < bytes.len() || (first && !fds.is_empty()) {
        let rest = bytes.get(off..).unwrap_or_default();
        let attach = if first { fds } else { &[] };
        let Ok(n) = sendmsg_fds(sock.as_fd(), rest, attach, 0) else {
            return false;
        };
        first = false;
        off += n;
        if rest.is_empty() {
            break;
        }
    }
    true
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let Ok((client, server)) = UnixStream::pair() else {
        return;
    };
    let Some(mut dev) = device() else {
        return;
    };
    let (Ok(mem), Ok(efd)) = (memfd("fuzz", 0x4000), eventfd(true)) else {
        return;
    };
    let Ok(mut conn) = ServerConnection::new(server, LIMITS) else {
        return;
    };
    conn.set_write_timeout(Duration::from_secs(2));
    let Ok(drain_sock) = client.try_clone() else {
        return;
    };
    let drain = std::thread::spawn(move || loop {
        let mut buf = [0u8; 8192];
        match wait_fd(
            drain_sock.as_fd(),
            libc::POLLIN,
            Some(Duration::from_secs(10)),
        ) {
            Ok(true) => {}
            _ => return,
        }
        match recv_with_fds(drain_sock.as_fd(), &mut buf, 16) {
            Ok((0, _, _)) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    });

    let mut alive = true;
    if mode & 1 != 0 {
        let caps = Capabilities {
            write_multiple: mode & 4 != 0,
            sidecar: (mode & 2 != 0).then(SidecarCaps::client_proposal),
            ..Capabilities::from_limits(&LIMITS)
        };
        let version = msg(0, cmd::VERSION, &version_payload(caps));
        alive = send_with_fds(&client, &version, &[]) && pump(&mut conn, &mut dev);
    }
    while alive && rest.len() >= 3 {
        let len = (usize::from(rest[0]) | usize::from(rest[1]) << 8) & 0x3fff;
        let nfds = usize::from(rest[2]) % 20;
        rest = &rest[3..];
        let n = len.min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let fds: Vec<RawFd> = (0..nfds)
            .map(|i| {
                if i % 2 == 0 {
                    mem.as_raw_fd()
                } else {
                    efd.as_raw_fd()
                }
            })
            .collect();
        if chunk.is_empty() && fds.is_empty() {
            continue;
        }
        alive = send_with_fds(&client, chunk, &fds) && pump(&mut conn, &mut dev);
    }
    drop(conn);
    drop(client);
    let _ = drain.join();
}

fn pump(conn: &mut ServerConnection, dev: &mut FuzzDevice) -> bool {
    matches!(conn.handle_readable(dev), Ok(ConnStatus::Open))
}

/// Builds one record.
pub fn record(bytes: &[u8], nfds: u8) -> Vec<u8> {
    let len = bytes.len().min(0x3fff);
    let mut v = vec![(len & 0xff) as u8, (len >> 8) as u8, nfds];
    v.extend_from_slice(&bytes[..len]);
    v
}

/// A whole message (header + payload).
pub fn msg(id: u16, command: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Header::command(id, command, payload.len())
        .encode()
        .to_vec();
    v.extend_from_slice(payload);
    v
}

/// Seed inputs: valid sessions covering every command, and some bad ones.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut full = vec![0b111u8];
    let cmds: Vec<(u16, Vec<u8>, u8)> = vec![
        (cmd::DEVICE_GET_INFO, DeviceInfo::request().encode(), 0),
        (
            cmd::DEVICE_GET_REGION_INFO,
            RegionInfoRequest {
                argsz: 32,
                index: 1,
            }
            .encode(),
            0,
        ),
        (
            cmd::DEVICE_GET_REGION_INFO,
            RegionInfoRequest {
                argsz: 256,
                index: 1,
            }
            .encode(),
            0,
        ),
        (
            cmd::DEVICE_GET_REGION_IO_FDS,
            RegionIoFdsRequest {
                argsz: 256,
                flags: 0,
                index: 0,
                count: 0,
            }
            .encode(),
            0,
        ),
        (cmd::DEVICE_GET_IRQ_INFO, IrqInfo::request(0).encode(), 0),
        (
            cmd::DEVICE_SET_IRQS,
            SetIrqs::new(0, IrqAction::Trigger, IrqDataType::Eventfd, 0, 2, vec![]).encode(),
            2,
        ),
        (
            cmd::DEVICE_SET_IRQS,
            SetIrqs::new(
                0,
                IrqAction::Mask,
                IrqDataType::Bool,
                0,
                2,
                vec![true, false],
            )
            .encode(),
            0,
        ),
        (
            cmd::REGION_READ,
            RegionAccess::encode_fixed(0x10, 0, 8).to_vec(),
            0,
        ),
        (
            cmd::REGION_WRITE,
            RegionAccess {
                offset: 0x20,
                region: 0,
                count: 4,
                data: vec![1, 2, 3, 4],
            }
            .encode(),
            0,
        ),
        (
            cmd::DMA_MAP,
            DmaMap::new(DMA_MAP_FLAG_READ | DMA_MAP_FLAG_EXEC, 0, 0x10000, 0x4000).encode(),
            1,
        ),
        (
            cmd::DMA_UNMAP,
            DmaUnmap::new(0, 0x10000, 0x4000).encode(),
            0,
        ),
        (
            cmd::DMA_UNMAP,
            DmaUnmap::new(DMA_UNMAP_FLAG_ALL, 0, 0).encode(),
            0,
        ),
        (cmd::DEVICE_RESET, vec![], 0),
        (
            cmd::REGION_WRITE_MULTI,
            RegionWriteMulti {
                writes: vec![WriteOne {
                    offset: 0,
                    region: 0,
                    count: 4,
                    data: [1; 8],
                }],
            }
            .encode(),
            0,
        ),
        (
            cmd::SIDECAR_GET_DEVICE_DESC,
            DeviceDescRequest { argsz: 4096 }.encode(),
            0,
        ),
        (
            cmd::SIDECAR_GET_IRQ_STATS,
            IrqStatsRequest::new(0, 0, 2).encode(),
            0,
        ),
        (0x1234, vec![0; 8], 0),
    ];
    for (i, (c, p, nfds)) in cmds.iter().enumerate() {
        full.extend(record(&msg(i as u16, *c, p), *nfds));
    }
    let plain = {
        let mut v = vec![0b001u8];
        v.extend(record(
            &msg(1, cmd::DEVICE_GET_INFO, &DeviceInfo::request().encode()),
            0,
        ));
        v.extend(record(
            &msg(
                2,
                cmd::SIDECAR_GET_DEVICE_DESC,
                &DeviceDescRequest { argsz: 99 }.encode(),
            ),
            0,
        ));
        v.extend(record(
            &msg(3, cmd::DMA_MAP, &DmaMap::new(7, 0, 0x1000, 0x1000).encode()),
            3,
        ));
        v
    };
    let raw_version = {
        let mut v = vec![0u8];
        v.extend(record(
            &msg(
                0,
                cmd::VERSION,
                b"\0\0\x01\0{\"capabilities\":{\"max_msg_fds\":4}}\0",
            ),
            0,
        ));
        v.extend(record(&msg(1, cmd::VERSION, b"\0\0\x01\0{bad"), 0));
        v.extend(record(&msg(2, cmd::DEVICE_RESET, &[]), 0));
        v
    };
    let split = {
        // One message split over two records, with fds on the second part.
        let m = msg(5, cmd::REGION_READ, &RegionAccess::encode_fixed(0, 0, 4));
        let mut v = vec![0b011u8];
        v.extend(record(&m[..10], 0));
        v.extend(record(&m[10..], 2));
        v
    };
    let oversized = {
        let mut h = Header::command(9, cmd::REGION_WRITE, 0);
        h.size = 70_000;
        let mut v = vec![0b001u8];
        v.extend(record(&h.encode(), 0));
        v.extend(record(&[0u8; 0x3fff], 0));
        v
    };
    vec![
        ("full-session", full),
        ("plain-session", plain),
        ("raw-version", raw_version),
        ("split-message", split),
        ("oversized", oversized),
    ]
}
