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
        if send_message(
            p.sock.as_fd(),
            &Header::reply_to(&v.header, payload.len()),
            &[&payload],
            &[],
            None,
        )
        .is_err()
        {
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
            send_message(
                p.sock.as_fd(),
                &Header::reply_to(&v.header, payload.len()),
                &[&payload],
                &[],
                None,
            )
            .unwrap();
            let mut off = 0;
            for len in lens {
                let Some(req) = p.try_recv(Duration::from_millis(500)) else {
                    break;
                };
                let body = &bytes[off..off + len];
                off += len;
                let _ = send_message(
                    p.sock.as_fd(),
                    &Header::reply_to(&req.header, len),
                    &[body],
                    &[],
                    None,
                );
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
