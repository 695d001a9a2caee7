//! The client against a hostile server: arbitrary bytes (after a valid or an
//! arbitrary VERSION reply) must give errors, never a panic or a hang.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use proptest::prelude::*;
use vfio_sidecar_protocol::caps::Capabilities;
use vfio_sidecar_protocol::header::Header;
use vfio_sidecar_protocol::message::Version;
use vfio_sidecar_protocol::transport::send_message;
use vfio_sidecar_protocol::{Client, ClientOptions};

fn opts() -> ClientOptions {
    ClientOptions {
        reply_timeout: Duration::from_millis(60),
        ..ClientOptions::default()
    }
}

/// Serves a valid VERSION reply, then answers every request with `garbage`
/// (raw bytes, possibly several messages or partial ones), then hangs up.
fn hostile(b: UnixStream, valid_version: bool, garbage: Vec<u8>, rounds: usize) {
    let mut p = common::RawPeer::new(b);
    let Some(v) = p.try_recv(Duration::from_secs(2)) else {
        return;
    };
    if valid_version {
        let payload = Version {
            major: 0,
            minor: 1,
            caps: Capabilities {
                write_multiple: true,
                sidecar: Some(vfio_sidecar_protocol::SidecarCaps::client_proposal()),
                ..Capabilities::default()
            },
        }
        .encode();
        if p.reply(&v.header, &[&payload]).is_err() {
            return;
        }
    } else {
        p.try_send_bytes(&garbage);
    }
    for _ in 0..rounds {
        match p.try_recv(Duration::from_millis(500)) {
            Some(_) => {
                if !p.try_send_bytes(&garbage) {
                    break;
                }
            }
            None => break,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn garbage_version_reply(garbage in proptest::collection::vec(any::<u8>(), 0..300)) {
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || hostile(b, false, garbage, 0));
        let _ = Client::from_stream(a, opts());
        t.join().unwrap();
    }

    #[test]
    fn garbage_replies(garbage in proptest::collection::vec(any::<u8>(), 0..300), id: u16, cmd in 0u16..20, flags in 0u32..64, err: u32) {
        // Half the time prefix a plausible header so the bytes reach the decoders.
        let mut bytes = Vec::new();
        if cmd % 2 == 0 {
            let h = Header { msg_id: id, command: cmd, size: (16 + garbage.len()) as u32, flags, error: err };
            bytes.extend_from_slice(&h.encode());
        }
        bytes.extend_from_slice(&garbage);
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || hostile(b, true, bytes, 12));
        let mut c = Client::from_stream(a, opts()).unwrap();
        let started = std::time::Instant::now();
        let _ = c.device_info();
        let _ = c.region_info(0);
        let _ = c.region_io_fds(0);
        let _ = c.irq_info(0);
        let _ = c.region_read(0, 0, 8);
        let _ = c.region_write(0, 0, &[1, 2]);
        let _ = c.dma_unmap_all();
        let _ = c.device_desc();
        let _ = c.irq_stats(0, 0, 2);
        let _ = c.reset();
        // Every call is bounded by the reply timeout (plus a retry or two).
        prop_assert!(started.elapsed() < Duration::from_secs(10));
        drop(c);
        t.join().unwrap();
    }
}

/// Replies whose msg_id matches the request (so they reach the decoders) with
/// random payloads.
#[test]
fn matching_replies_with_random_payloads() {
    use vfio_sidecar_protocol::header::command as cmd;
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..100 {
        let (a, b) = UnixStream::pair().unwrap();
        let lens: Vec<usize> = (0..12).map(|_| (rnd() % 120) as usize).collect();
        let bytes: Vec<u8> = (0..2000).map(|_| rnd() as u8).collect();
        let t = std::thread::spawn(move || {
            let mut p = common::RawPeer::new(b);
            let Some(v) = p.try_recv(Duration::from_secs(2)) else {
                return;
            };
            let payload = Version {
                major: 0,
                minor: 1,
                caps: Capabilities {
                    sidecar: Some(vfio_sidecar_protocol::SidecarCaps::client_proposal()),
                    ..Capabilities::default()
                },
            }
            .encode();
            p.reply(&v.header, &[&payload]).unwrap();
            let mut off = 0;
            for len in lens {
                let Some(req) = p.try_recv(Duration::from_millis(500)) else {
                    break;
                };
                let body = &bytes[off..off + len];
                off += len;
                let _ = p.reply(&req.header, &[body]);
            }
        });
        let mut c = Client::from_stream(a, opts()).unwrap();
        let _ = c.device_info();
        let _ = c.region_info(round % 3);
        let _ = c.region_io_fds(0);
        let _ = c.irq_info(0);
        let _ = c.region_read(0, 0, 8);
        let _ = c.device_desc();
        let _ = c.irq_stats(0, 0, 2);
        let _ = c.reset();
        drop(c);
        t.join().unwrap();
        let _ = cmd::VERSION;
    }
}

/// The client's fast path for small REGION_READ/WRITE takes the reply in
/// place only when it is exactly the expected one; everything else must end
/// as the general path ends it. A scripted server answers each access in a
/// different way.
#[test]
fn region_access_fast_path_falls_back_to_the_general_path() {
    use std::os::fd::AsRawFd;
    use vfio_sidecar_protocol::header::command as cmd;
    use vfio_sidecar_protocol::message::{DmaAccess, RegionAccess};
    use vfio_sidecar_protocol::{ClientError, Errno};

    fn reply(p: &common::RawPeer, req: &Header, fixed: [u8; 16], data: &[u8], fds: &[i32]) {
        let h = Header::reply_to(req, 16 + data.len());
        send_message(p.sock.as_fd(), &h, &[&fixed, data], fds, None).unwrap();
    }
    fn fixed_of(m: &vfio_sidecar_protocol::transport::Message) -> [u8; 16] {
        m.payload[..16].try_into().unwrap()
    }

    let (a, b) = UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || {
        let mut p = common::RawPeer::new(b);
        p.answer_version(Capabilities::default());
        // 1: a stale reply first, then the right one.
        let m = p.recv().unwrap();
        let mut stale = m.header;
        stale.msg_id = stale.msg_id.wrapping_sub(7);
        reply(&p, &stale, fixed_of(&m), &[9; 4], &[]);
        reply(&p, &m.header, fixed_of(&m), &[1, 2, 3, 4], &[]);
        // 2: a DMA_READ from the server first (the client serves it), then the reply.
        let m = p.recv().unwrap();
        let dma = DmaAccess {
            address: 0x1000,
            count: 4,
            data: Vec::new(),
        }
        .encode();
        send_message(
            p.sock.as_fd(),
            &Header::command(500, cmd::DMA_READ, dma.len()),
            &[&dma],
            &[],
            None,
        )
        .unwrap();
        let dma_reply = p.recv().unwrap();
        assert_eq!(dma_reply.header.command, cmd::DMA_READ);
        assert_eq!(&dma_reply.payload[16..], &[0xd0, 0xd1, 0xd2, 0xd3]);
        reply(&p, &m.header, fixed_of(&m), &[5, 6, 7, 8], &[]);
        // 3: an error reply to a write.
        let m = p.recv().unwrap();
        assert_eq!(m.header.command, cmd::REGION_WRITE);
        let h = Header::error_reply(&m.header, libc::EPERM);
        send_message(p.sock.as_fd(), &h, &[], &[], None).unwrap();
        // 4: a reply for another offset: a bad reply.
        let m = p.recv().unwrap();
        reply(
            &p,
            &m.header,
            RegionAccess::encode_fixed(0x40, 0, 4),
            &[0; 4],
            &[],
        );
        // 5: the reply in two pieces.
        let m = p.recv().unwrap();
        let mut bytes = Header::reply_to(&m.header, 20).encode().to_vec();
        bytes.extend_from_slice(&fixed_of(&m));
        bytes.extend_from_slice(&[0xa, 0xb, 0xc, 0xd]);
        p.send_bytes(&bytes[..10]);
        std::thread::sleep(Duration::from_millis(20));
        p.send_bytes(&bytes[10..]);
        // 6: a reply carrying an fd nobody asked for.
        let m = p.recv().unwrap();
        let junk = common::eventfd();
        reply(&p, &m.header, fixed_of(&m), &[0xe; 4], &[junk.as_raw_fd()]);
        // 7: a plain reply to a write.
        let m = p.recv().unwrap();
        assert_eq!(&m.payload[16..], &[0x77; 2]);
        reply(&p, &m.header, fixed_of(&m), &[], &[]);
        let _ = p.try_recv(Duration::from_secs(2));
    });
    let mut c = Client::from_stream(
        a,
        ClientOptions {
            reply_timeout: Duration::from_secs(2),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    c.set_dma_handler(Box::new(|r| match r {
        vfio_sidecar_protocol::client::DmaRequest::Read { buf, .. } => {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = 0xd0 + i as u8;
            }
            Ok(())
        }
        _ => Err(Errno::EINVAL),
    }));
    assert_eq!(
        c.region_read(0, 0x10, 4).unwrap(),
        [1, 2, 3, 4],
        "after a stale reply"
    );
    assert_eq!(
        c.region_read(0, 0x10, 4).unwrap(),
        [5, 6, 7, 8],
        "after a DMA_READ"
    );
    match c.region_write(0, 0x10, &[1; 4]) {
        Err(ClientError::Remote { errno, .. }) => assert_eq!(errno, Errno::EPERM),
        r => panic!("error reply: {r:?}"),
    }
    assert!(
        matches!(c.region_read(0, 0x10, 4), Err(ClientError::BadReply { .. })),
        "a reply for another offset is refused"
    );
    assert_eq!(
        c.region_read(0, 0x10, 4).unwrap(),
        [0xa, 0xb, 0xc, 0xd],
        "split reply"
    );
    assert_eq!(
        c.region_read(0, 0x10, 4).unwrap(),
        [0xe; 4],
        "reply with an fd"
    );
    c.region_write(0, 0x10, &[0x77; 2]).unwrap();
    drop(c);
    server.join().unwrap();
    // The server closed its eventfd: if the client had kept the copy it
    // received, it would still be open (no other test here uses eventfds).
    let eventfds = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().contains("eventfd"))
        .count();
    assert_eq!(eventfds, 0, "the unasked-for fd was closed");
}
