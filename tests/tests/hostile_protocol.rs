//! Hostile peer, framing and per-command malformations, over a real socket to
//! `vfio-sidecar serve --device model:pl330`: every bad message gets the
//! documented errno (or the documented close), the connection carries on
//! (each bad message is followed by a valid one that must succeed), and the
//! backend's device state, fds and mappings are unchanged — read back, not
//! assumed.
#![allow(clippy::unwrap_used)]

mod hostile_util;

use std::os::fd::AsRawFd;
use std::time::Duration;

use hostile_util::*;
use vfio_sidecar::model::pl330::regs::INTEN;
use vfio_sidecar_protocol::header::{command as cmd, flags, HEADER_SIZE};
use vfio_sidecar_protocol::message::{
    DmaMap, DmaUnmap, IrqInfo, RegionInfoRequest, DMA_MAP_FLAG_READ, DMA_MAP_FLAG_WRITE,
};
use vfio_sidecar_tests::{fd_count, maps_matching, wait_until, GuestMem, Sidecar, WAIT};

const EINVAL: i32 = libc::EINVAL;
/// Largest message the server accepts: 16 + 32 + 1 MiB (default limits).
const MAX_MSG: usize = 16 + 32 + (1 << 20);

fn irq_stats_req(index: u32, start: u32, count: u32) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&(16 + 32 * count).to_ne_bytes());
    p.extend_from_slice(&index.to_ne_bytes());
    p.extend_from_slice(&start.to_ne_bytes());
    p.extend_from_slice(&count.to_ne_bytes());
    p
}

/// A backend, a negotiated raw client with INTEN set to a marker value, and
/// the backend's fd count with this one client connected.
fn setup(extension: bool) -> (Sidecar, Raw, usize) {
    let (srv, mut r) = pl330_peer(&[], extension);
    r.write32(INTEN, 0x5a);
    let fds = fd_count(srv.pid());
    (srv, r, fds)
}

/// The device and the backend's resources are as `setup` left them.
fn unchanged(srv: &Sidecar, r: &mut Raw, fds: usize) {
    r.still_works();
    assert_eq!(r.read32(INTEN), 0x5a, "device state changed");
    wait_until("fd count back to baseline", WAIT, || {
        fd_count(srv.pid()) == fds
    });
}

#[test]
fn framing_errors_get_errors_and_the_stream_stays_in_sync() {
    let (srv, mut r, fds) = setup(false);

    // Declared size smaller than a header: EINVAL, only the header consumed.
    for size in [0u32, 1, 8, 15] {
        let id = r.send_hdr(cmd::DEVICE_GET_INFO, 0, size, &[], &[]);
        let rep = r.reply();
        assert_eq!((rep.hdr.msg_id, rep.errno()), (id, EINVAL), "size {size}");
        r.still_works();
    }

    // A header delivered in pieces, then the rest later: the reader resumes.
    let p = di_payload();
    let mut m = vfio_sidecar_protocol::header::Header::command(77, cmd::DEVICE_GET_INFO, p.len())
        .encode()
        .to_vec();
    m.extend_from_slice(&p);
    r.send_raw(&m[..5], &[]);
    std::thread::sleep(Duration::from_millis(50));
    r.send_raw(&m[5..20], &[]);
    std::thread::sleep(Duration::from_millis(50));
    r.send_raw(&m[20..], &[]);
    let rep = r.reply();
    assert_eq!((rep.hdr.msg_id, rep.errno()), (77, 0));

    // Size beyond the negotiated maximum: E2BIG, the body is skipped.
    let big = vec![0xabu8; MAX_MSG + 1 - HEADER_SIZE];
    let id = r.send_hdr(cmd::REGION_WRITE, 0, (MAX_MSG + 1) as u32, &big, &[]);
    let rep = r.reply();
    assert_eq!((rep.hdr.msg_id, rep.errno()), (id, libc::E2BIG));
    unchanged(&srv, &mut r, fds);
    // Exactly the maximum is framed (and then refused by the command: the
    // 1 MiB + 32 write does not fit the 4 KiB region).
    let at_max = vec![0u8; MAX_MSG - HEADER_SIZE];
    let id = r.send_hdr(cmd::REGION_WRITE, 0, MAX_MSG as u32, &at_max, &[]);
    let rep = r.reply();
    assert_eq!((rep.hdr.msg_id, rep.errno()), (id, EINVAL));
    unchanged(&srv, &mut r, fds);

    // Unknown commands and commands we do not implement: ENOSYS.
    for c in [0u16, 14, 16, 17, 18, 19, 0x1234, 0x7eff, 0x7f02, 0xffff] {
        let rep = r.call(c, &[1, 2, 3, 4], &[]);
        assert_eq!(rep.errno(), libc::ENOSYS, "command {c:#x}");
        r.still_works();
    }
    // Server-to-client commands sent by the client: EINVAL.
    for c in [cmd::DMA_READ, cmd::DMA_WRITE] {
        r.expect("s2c command", c, &[0u8; 16], &[], EINVAL);
    }
    // A second VERSION: EINVAL, the negotiation stands.
    let rep = r.version(true);
    assert_eq!(rep.errno(), EINVAL);
    // Extension commands were not negotiated (plain client): ENOSYS.
    r.expect(
        "IRQ_STATS without extension",
        cmd::SIDECAR_GET_IRQ_STATS,
        &[0u8; 16],
        &[],
        libc::ENOSYS,
    );

    // Reply-type messages from the client are dropped without a reply: the
    // next reply must belong to the next request.
    let fake = r.send_hdr(
        cmd::DEVICE_GET_INFO,
        flags::TYPE_REPLY,
        (HEADER_SIZE + 16) as u32,
        &di_payload(),
        &[],
    );
    let fake_err = r.send_hdr(
        cmd::DEVICE_GET_INFO,
        flags::TYPE_REPLY | flags::ERROR,
        HEADER_SIZE as u32,
        &[],
        &[],
    );
    let id = r.send(cmd::DEVICE_GET_INFO, &di_payload(), &[]);
    let rep = r.reply();
    assert_eq!(rep.hdr.msg_id, id, "a reply-type message was answered");
    assert!(rep.hdr.msg_id != fake && rep.hdr.msg_id != fake_err);
    // Other message types (2..=15): EINVAL.
    for t in [2u32, 7, 15] {
        let id = r.send_hdr(
            cmd::DEVICE_GET_INFO,
            t,
            (HEADER_SIZE + 16) as u32,
            &di_payload(),
            &[],
        );
        let rep = r.reply();
        assert_eq!((rep.hdr.msg_id, rep.errno()), (id, EINVAL), "type {t}");
    }
    // NO_REPLY: a failing command sends nothing; the next request is answered.
    r.send_hdr(0x1234, flags::NO_REPLY, HEADER_SIZE as u32, &[], &[]);
    r.send_hdr(
        cmd::REGION_WRITE,
        flags::NO_REPLY,
        (HEADER_SIZE + 16 + 4) as u32,
        &region(0x2000, 0, 4, &[0; 4]),
        &[],
    );
    let id = r.send(cmd::DEVICE_GET_INFO, &di_payload(), &[]);
    assert_eq!(r.reply().hdr.msg_id, id);

    // Size larger than the real body, then silence: the server waits for the
    // rest without blocking anybody; when the client dies mid-message, the
    // backend cleans up and takes the next client.
    r.send_hdr(
        cmd::DEVICE_GET_INFO,
        0,
        (HEADER_SIZE + 64) as u32,
        &di_payload(),
        &[],
    );
    std::thread::sleep(Duration::from_millis(100));
    unchanged_fds_after_close(&srv, r, fds);
}

fn unchanged_fds_after_close(srv: &Sidecar, r: Raw, fds_with_client: usize) {
    drop(r);
    srv.wait_log("client disconnected");
    wait_until("client fds released", WAIT, || {
        fd_count(srv.pid()) == fds_with_client - 1
    });
    let mut r2 = Raw::negotiated(&srv.socket, false);
    r2.still_works();
}

#[test]
fn size_beyond_skip_limit_closes_the_connection_and_next_client_works() {
    let (srv, mut r, fds) = setup(false);
    // 64 MiB + 1: not worth skipping; the server closes the connection.
    r.send_hdr(cmd::REGION_WRITE, 0, (64 << 20) + 1, &[0u8; 64], &[]);
    assert!(
        r.closed_by_server(),
        "server kept a connection declaring 64 MiB"
    );
    srv.wait_log("client disconnected");
    wait_until("fds released", WAIT, || fd_count(srv.pid()) == fds - 1);
    let mut r2 = Raw::negotiated(&srv.socket, false);
    r2.still_works();
    assert_eq!(r2.read32(INTEN), 0, "device reset after the client went");
}

#[test]
fn before_version_and_bad_versions() {
    let srv = Sidecar::start("model:pl330", &[]);
    // Any command before VERSION: EINVAL, the connection stays open.
    let mut r = Raw::connect(&srv.socket);
    r.expect(
        "GET_INFO before VERSION",
        cmd::DEVICE_GET_INFO,
        &di_payload(),
        &[],
        EINVAL,
    );
    // VERSION payloads that are not valid: EINVAL and the connection stays.
    for (what, p) in [
        ("empty", Vec::new()),
        ("no NUL", b"\0\0\x01\0{}".to_vec()),
        ("bad JSON", b"\0\0\x01\0{\0".to_vec()),
        ("not an object", b"\0\0\x01\0[1]\0".to_vec()),
        (
            "max_data_xfer_size 0",
            b"\0\0\x01\0{\"capabilities\":{\"max_data_xfer_size\":0}}\0".to_vec(),
        ),
    ] {
        r.expect(what, cmd::VERSION, &p, &[], EINVAL);
    }
    // An fd with VERSION: EINVAL.
    let (a, _b) = pipe();
    r.expect(
        "VERSION with fd",
        cmd::VERSION,
        b"\0\0\x01\0{}\0",
        &[a.as_raw_fd()],
        EINVAL,
    );
    // Then a valid VERSION works on the same connection. (A VERSION without
    // JSON is valid: the spec makes the version data optional.)
    assert_eq!(r.version(true).errno(), 0);
    r.still_works();
    drop(r);
    srv.wait_log("client disconnected");
    // Wrong major version: ENOTSUP, then the server closes.
    let mut r = Raw::connect(&srv.socket);
    r.expect(
        "major 1",
        cmd::VERSION,
        b"\x01\0\0\0{}\0",
        &[],
        libc::ENOTSUP,
    );
    assert!(r.closed_by_server());
}

/// Fixed-size commands: payload shorter or longer than the structure → EINVAL.
#[test]
fn every_fixed_size_command_rejects_short_and_long_payloads() {
    let (srv, mut r, fds) = setup(true);
    let mem = GuestMem::new("fixedsz", 0x4000);
    let valid: Vec<(u16, Vec<u8>, bool)> = vec![
        (
            cmd::DMA_MAP,
            DmaMap::new(DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE, 0, 0x10_0000, 0x4000).encode(),
            true,
        ),
        (
            cmd::DMA_UNMAP,
            DmaUnmap::new(0, 0x10_0000, 0x4000).encode(),
            false,
        ),
        (cmd::DEVICE_GET_INFO, di_payload(), false),
        (
            cmd::DEVICE_GET_REGION_INFO,
            RegionInfoRequest {
                argsz: 32,
                index: 0,
            }
            .encode(),
            false,
        ),
        (cmd::DEVICE_GET_REGION_IO_FDS, argsz_index(16, 0, 16), false),
        (
            cmd::DEVICE_GET_IRQ_INFO,
            IrqInfo {
                argsz: 16,
                flags: 0,
                index: 0,
                count: 0,
            }
            .encode(),
            false,
        ),
        (cmd::REGION_READ, region(INTEN, 0, 4, &[]), false),
        (cmd::DEVICE_RESET, Vec::new(), false),
        (
            cmd::SIDECAR_GET_DEVICE_DESC,
            argsz_index(4096, 0, 8)[..8].to_vec(),
            false,
        ),
        (cmd::SIDECAR_GET_IRQ_STATS, irq_stats_req(0, 0, 1), false),
    ];
    for (c, p, needs_fd) in &valid {
        let name = vfio_sidecar_protocol::header::command::name(*c);
        let fdv: Vec<i32> = if *needs_fd {
            vec![mem.fd().as_raw_fd()]
        } else {
            Vec::new()
        };
        // VFIO argsz structures may carry zero padding (docs/protocol.md §3):
        // for those a longer payload is bad only with a non-zero extra byte.
        let padded = [
            cmd::DMA_MAP,
            cmd::DMA_UNMAP,
            cmd::DEVICE_GET_INFO,
            cmd::DEVICE_GET_REGION_INFO,
            cmd::DEVICE_GET_REGION_IO_FDS,
            cmd::DEVICE_GET_IRQ_INFO,
        ]
        .contains(c);
        let pad = if padded { 0xa5u8 } else { 0 };
        let mut bad: Vec<Vec<u8>> = vec![p.iter().copied().chain([pad]).collect()];
        bad.push(
            p.iter()
                .copied()
                .chain([0, 0, 0, pad, 0, 0, 0, 0])
                .collect(),
        );
        if padded && !*needs_fd && *c != cmd::DMA_UNMAP {
            let ok: Vec<u8> = p.iter().copied().chain([0u8; 8]).collect();
            let m = r.call(*c, &ok, &[]);
            assert!(!m.hdr.is_error(), "{name} zero-padded: {m:?}");
        }
        if !p.is_empty() {
            bad.push(Vec::new());
            bad.push(p[..p.len() - 1].to_vec());
            bad.push(p[..p.len() / 2].to_vec());
        }
        for b in bad {
            r.expect(&format!("{name} len {}", b.len()), *c, &b, &fdv, EINVAL);
            r.still_works();
        }
        // An fd where none belongs: EINVAL, the fd is closed by the server.
        if !*needs_fd {
            let (a, _w) = pipe();
            r.expect(&format!("{name} + fd"), *c, p, &[a.as_raw_fd()], EINVAL);
        }
    }
    // None of the malformed DEVICE_RESETs reset the device (INTEN keeps its
    // marker, checked by `unchanged`), and no malformed DMA_MAP mapped memory.
    assert_eq!(maps_matching(srv.pid(), "memfd:fixedsz"), 0);
    unchanged(&srv, &mut r, fds);
}

#[test]
fn too_many_fds_are_refused_and_closed() {
    let (srv, mut r, fds) = setup(false);
    let mem = GuestMem::new("manyfds", 0x4000);
    // 17 fds (the server accepts at most 16 per message): EINVAL.
    let many: Vec<i32> = (0..17).map(|_| mem.fd().as_raw_fd()).collect();
    let p = DmaMap::new(DMA_MAP_FLAG_READ, 0, 0x10_0000, 0x4000).encode();
    r.expect("DMA_MAP + 17 fds", cmd::DMA_MAP, &p, &many, EINVAL);
    // 2 fds for DMA_MAP (needs one): EINVAL.
    r.expect("DMA_MAP + 2 fds", cmd::DMA_MAP, &p, &many[..2], EINVAL);
    // 16 fds on a command that takes none: EINVAL.
    r.expect(
        "GET_INFO + 16 fds",
        cmd::DEVICE_GET_INFO,
        &di_payload(),
        &many[..16],
        EINVAL,
    );
    // Unknown command with fds: ENOSYS, fds closed.
    r.expect("unknown + fds", 0x4242, &[], &many[..3], libc::ENOSYS);
    assert_eq!(maps_matching(srv.pid(), "memfd:manyfds"), 0);
    unchanged(&srv, &mut r, fds);
}

#[test]
fn region_accesses_out_of_range_straddling_zero_and_oversized() {
    let (srv, mut r, fds) = setup(false);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("offset = size", region(0x1000, 0, 4, &[])),
        ("far offset", region(0x10_0000, 0, 4, &[])),
        ("straddling the end", region(0xffc, 0, 8, &[])),
        ("zero length", region(INTEN, 0, 0, &[])),
        ("1-byte read (32-bit only)", region(INTEN, 0, 1, &[])),
        ("2-byte read", region(INTEN, 0, 2, &[])),
        ("unaligned", region(INTEN + 1, 0, 4, &[])),
        ("offset + count wraps", region(u64::MAX - 1, 0, 4, &[])),
        ("bad region index", region(0, 1, 4, &[])),
        ("region index u32::MAX", region(0, u32::MAX, 4, &[])),
        (
            "count > max_data_xfer_size",
            region(0, 0, (1 << 20) + 1, &[]),
        ),
        ("count u32::MAX", region(0, 0, u32::MAX, &[])),
        ("whole region as one read", region(0, 0, 0x1000, &[])),
    ];
    for (what, p) in &cases {
        r.expect(&format!("READ {what}"), cmd::REGION_READ, p, &[], EINVAL);
        r.still_works();
    }
    // Writes aimed at INTEN with every wrong shape; INTEN must stay 0x5a.
    let wcases: Vec<(&str, Vec<u8>)> = vec![
        ("1 byte", region(INTEN, 0, 1, &[0xff])),
        ("2 bytes", region(INTEN, 0, 2, &[0xff, 0xff])),
        ("8 bytes", region(INTEN, 0, 8, &[0xff; 8])),
        ("unaligned", region(INTEN + 2, 0, 4, &[0xff; 4])),
        ("zero length", region(INTEN, 0, 0, &[])),
        ("count > data", region(INTEN, 0, 4, &[0xff; 2])),
        ("count < data", region(INTEN, 0, 4, &[0xff; 6])),
        ("count 0 with data", region(INTEN, 0, 0, &[0xff; 4])),
        ("bad region", region(INTEN, 1, 4, &[0xff; 4])),
        ("beyond the frame", region(0x1000 + INTEN, 0, 4, &[0xff; 4])),
        ("straddling", region(0xffe, 0, 4, &[0xff; 4])),
        ("wraps", region(u64::MAX - 2, 0, 4, &[0xff; 4])),
    ];
    for (what, p) in &wcases {
        r.expect(&format!("WRITE {what}"), cmd::REGION_WRITE, p, &[], EINVAL);
        assert_eq!(r.read32(INTEN), 0x5a, "WRITE {what} changed INTEN");
    }
    // An oversized REGION_WRITE within the message limit: EINVAL.
    let big = region(0, 0, 0x2000, &vec![0xffu8; 0x2000]);
    r.expect("WRITE 8 KiB", cmd::REGION_WRITE, &big, &[], EINVAL);
    // REGION_WRITE_MULTI (negotiated): an entry of 9 bytes (max 8) → EINVAL
    // before anything is written.
    let mut multi = Vec::new();
    multi.extend_from_slice(&1u64.to_ne_bytes());
    multi.extend_from_slice(&region(INTEN, 0, 9, &[0xff; 8]));
    let rep = r.call(cmd::REGION_WRITE_MULTI, &multi, &[]);
    assert_eq!(rep.errno(), EINVAL, "bad WRITE_MULTI");
    // Count field not matching the entries: EINVAL.
    let mut multi = Vec::new();
    multi.extend_from_slice(&2u64.to_ne_bytes());
    multi.extend_from_slice(&region(INTEN, 0, 4, &[0xff; 8]));
    r.expect(
        "WRITE_MULTI count 2, 1 entry",
        cmd::REGION_WRITE_MULTI,
        &multi,
        &[],
        EINVAL,
    );
    assert_eq!(r.read32(INTEN), 0x5a);
    // Entries run in order: a valid first entry is applied even when a later
    // one fails (the error reply carries no count). Documented behaviour.
    let mut multi = Vec::new();
    multi.extend_from_slice(&2u64.to_ne_bytes());
    multi.extend_from_slice(&region(INTEN, 0, 4, &[0x77, 0, 0, 0, 0, 0, 0, 0]));
    multi.extend_from_slice(&region(0x1000, 0, 4, &[0xff; 8]));
    r.expect(
        "WRITE_MULTI 2nd entry bad",
        cmd::REGION_WRITE_MULTI,
        &multi,
        &[],
        EINVAL,
    );
    assert_eq!(r.read32(INTEN), 0x77, "first entry applied");
    r.write32(INTEN, 0x5a);
    unchanged(&srv, &mut r, fds);
}
