//! Client <-> ServerConnection over a real socketpair with a toy handler:
//! every command, fd passing, error replies, limits and desync recovery.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;
use vfio_sidecar_protocol::caps::{Capabilities, Limits, SidecarCaps};
use vfio_sidecar_protocol::client::{DmaRequest, IrqData};
use vfio_sidecar_protocol::header::{command as cmd, Header};
use vfio_sidecar_protocol::message::*;
use vfio_sidecar_protocol::transport::{send_message, wait_fd};
use vfio_sidecar_protocol::{Client, ClientError, ClientOptions, ConnStatus, DmaProt, Errno};

type ServerThread = std::thread::JoinHandle<(ToyHandler, Result<ConnStatus, String>)>;

fn setup(opts: ClientOptions, limits: Limits, h: ToyHandler) -> (Client, ServerThread) {
    let (a, b) = UnixStream::pair().unwrap();
    let server = spawn_server(b, limits, h);
    let client = Client::from_stream(a, opts).unwrap();
    (client, server)
}

fn remote_errno(e: ClientError) -> Errno {
    match e {
        ClientError::Remote { errno, .. } => errno,
        other => panic!("expected a remote error, got {other:?}"),
    }
}

const RW: DmaProt = DmaProt {
    read: true,
    write: true,
    exec: false,
};
const RX: DmaProt = DmaProt {
    read: true,
    write: false,
    exec: true,
};

#[test]
fn every_command_with_extension() {
    let (mut c, server) = setup(
        ClientOptions::default(),
        Limits::default(),
        ToyHandler::default(),
    );
    let n = c.negotiated().clone();
    assert!(n.extension() && n.dma_exec() && n.exec_enforced() && n.write_multiple());
    assert_eq!(n.server.max_msg_fds, 8);

    // DEVICE_GET_INFO.
    let info = c.device_info().unwrap();
    assert_eq!(
        (info.argsz, info.flags, info.num_regions, info.num_irqs),
        (16, 9, 3, 1)
    );

    // REGION_INFO: trapped region, sparse region with fd, argsz retry.
    let (r0, fd0) = c.region_info(0).unwrap();
    assert!(fd0.is_none());
    assert_eq!(r0.size, REG_SIZE as u64);
    assert_eq!(r0.sparse, None);
    let (r1, fd1) = c.region_info(1).unwrap();
    let fd1 = fd1.expect("mmap fd");
    assert_eq!(r1.sparse.as_ref().unwrap().len(), 2);
    assert_ne!(r1.flags & REGION_INFO_FLAG_MMAP, 0);
    assert_eq!(pread(fd1.as_raw_fd(), 0, 11), b"mmap-region");
    let (r2, fd2) = c.region_info(2).unwrap();
    assert!(fd2.is_some());
    assert_eq!(r2.sparse.unwrap().len(), NUM_SPARSE_BIG);
    assert_eq!(remote_errno(c.region_info(9).unwrap_err()), Errno::EINVAL);

    // REGION_IO_FDS.
    let (subs, fds) = c.region_io_fds(0).unwrap();
    assert_eq!(subs.len(), 1);
    assert_eq!(fds.len(), 1);
    eventfd_signal(fds[0].as_raw_fd());

    // IRQ info and SET_IRQS with eventfds (one de-assigned), trigger, mask.
    let ii = c.irq_info(0).unwrap();
    assert_eq!((ii.index, ii.count, ii.argsz), (0, 2, 16));
    let e0 = eventfd();
    c.set_irqs(
        0,
        IrqAction::Trigger,
        IrqData::Eventfds(&[Some(e0.as_fd()), None]),
        0,
        2,
    )
    .unwrap();
    c.set_irqs(0, IrqAction::Trigger, IrqData::None, 0, 1)
        .unwrap();
    assert_eq!(eventfd_read(e0.as_raw_fd()), 1);
    c.set_irqs(0, IrqAction::Trigger, IrqData::Bool(&[true, false]), 0, 2)
        .unwrap();
    assert_eq!(eventfd_read(e0.as_raw_fd()), 1);
    c.set_irqs(0, IrqAction::Mask, IrqData::Bool(&[false, true]), 0, 2)
        .unwrap();
    assert_eq!(
        remote_errno(
            c.set_irqs(0, IrqAction::Mask, IrqData::None, 1, 5)
                .unwrap_err()
        ),
        Errno::EINVAL
    );

    // REGION_READ/WRITE.
    let data = c.region_read(0, 0x10, 4).unwrap();
    assert_eq!(data, vec![0x10, 0x11, 0x12, 0x13]);
    c.region_write(0, 0x20, &[0xaa, 0xbb]).unwrap();
    let mut buf = [0u8; 3];
    c.region_read_into(0, 0x1f, &mut buf).unwrap();
    assert_eq!(buf, [0x1f, 0xaa, 0xbb]);
    assert_eq!(
        remote_errno(c.region_read(0, REG_SIZE as u64 - 2, 4).unwrap_err()),
        Errno::EINVAL
    );
    let big = c.region_read(0, 0, REG_SIZE).unwrap();
    assert_eq!(big.len(), REG_SIZE);

    // REGION_WRITE_MULTI.
    let done = c
        .region_write_multi(&[
            WriteOne {
                offset: 0x40,
                region: 0,
                count: 2,
                data: [1, 2, 0, 0, 0, 0, 0, 0],
            },
            WriteOne {
                offset: 0x48,
                region: 0,
                count: 8,
                data: [3; 8],
            },
        ])
        .unwrap();
    assert_eq!(done, 2);
    assert_eq!(c.region_read(0, 0x40, 2).unwrap(), vec![1, 2]);
    assert_eq!(c.region_read(0, 0x48, 8).unwrap(), vec![3; 8]);

    // DMA_MAP with a memfd, EXEC, duplicates, unmap, unmap all.
    let mem = memfd(0x4000);
    pwrite(mem.as_raw_fd(), 0x1000, b"guest-ram");
    c.dma_map(0x10_0000, 0x2000, mem.as_fd(), 0x1000, RW)
        .unwrap();
    c.dma_map(0x20_0000, 0x1000, mem.as_fd(), 0, RX).unwrap();
    assert_eq!(
        remote_errno(
            c.dma_map(0x10_1000, 0x1000, mem.as_fd(), 0, RW)
                .unwrap_err()
        ),
        Errno::EEXIST
    );
    c.dma_unmap(0x20_0000, 0x1000).unwrap();
    assert_eq!(
        remote_errno(c.dma_unmap(0x20_0000, 0x1000).unwrap_err()),
        Errno::ENOENT
    );
    c.dma_map_without_fd(0x30_0000, 0x1000, RW).unwrap();

    // Extension commands.
    let (desc, dtb) = c.device_desc().unwrap();
    assert_eq!(desc, toy_desc());
    assert_eq!(dtb, TOY_DTB);
    let st = c.irq_stats(0, 1, 1).unwrap();
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].device_events, 11);
    assert_eq!(st[0].refires, 40);
    assert_eq!(
        remote_errno(c.irq_stats(0, 0, 3).unwrap_err()),
        Errno::EINVAL
    );

    // RESET.
    c.reset().unwrap();
    c.reset().unwrap();

    // Check what the server saw before unmap-all.
    drop(c);
    let (h, status) = server.join().unwrap();
    assert_eq!(status, Ok(ConnStatus::Closed));
    assert_eq!(h.resets, 2);
    assert!(h.masked[1] && !h.masked[0]);
    assert_eq!(h.maps.len(), 2);
    let (size, flags, fd) = &h.maps[&0x10_0000];
    assert_eq!(*size, 0x2000);
    assert_eq!(*flags, DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE);
    // The server got the same memory through the passed fd.
    assert_eq!(
        pread(fd.as_ref().unwrap().as_raw_fd(), 0x1000, 9),
        b"guest-ram"
    );
    assert!(h.maps[&0x30_0000].2.is_none());
    assert!(h.irq_fds[0].is_some() && h.irq_fds[1].is_none());
    assert!(h.negotiated.unwrap().dma_exec());
    assert_eq!(h.writes.len(), 3);
}

#[test]
fn unmap_all_and_max_dma_maps() {
    let limits = Limits {
        max_dma_maps: 2,
        ..Limits::default()
    };
    let (mut c, server) = setup(ClientOptions::default(), limits, ToyHandler::default());
    assert_eq!(c.negotiated().server.max_dma_maps, 2);
    let mem = memfd(0x4000);
    c.dma_map(0x1000, 0x1000, mem.as_fd(), 0, RW).unwrap();
    c.dma_map(0x2000, 0x1000, mem.as_fd(), 0x1000, RW).unwrap();
    // The client knows the limit.
    assert!(matches!(
        c.dma_map(0x3000, 0x1000, mem.as_fd(), 0x2000, RW),
        Err(ClientError::NotAllowed(_))
    ));
    c.dma_unmap_all().unwrap();
    c.dma_map(0x3000, 0x1000, mem.as_fd(), 0x2000, RW).unwrap();
    drop(c);
    let (h, _) = server.join().unwrap();
    assert_eq!(h.maps.len(), 1);
}

#[test]
fn plain_client_sees_plain_device() {
    let opts = ClientOptions {
        propose_extension: false,
        write_multiple: false,
        ..ClientOptions::default()
    };
    let (mut c, server) = setup(opts, Limits::default(), ToyHandler::default());
    let n = c.negotiated().clone();
    assert!(!n.extension() && !n.dma_exec() && !n.write_multiple());
    assert!(matches!(c.device_desc(), Err(ClientError::NotAllowed(_))));
    assert!(matches!(
        c.region_write_multi(&[]),
        Err(ClientError::NotAllowed(_))
    ));
    // EXEC is silently implied by READ for a plain client: no bit 16 on the wire.
    let mem = memfd(0x1000);
    c.dma_map(0x1000, 0x1000, mem.as_fd(), 0, RX).unwrap();
    drop(c);
    let (h, _) = server.join().unwrap();
    assert_eq!(h.maps[&0x1000].1, DMA_MAP_FLAG_READ);
}

#[test]
fn server_without_extension() {
    let h = ToyHandler {
        offer_extension: false,
        ..ToyHandler::default()
    };
    let (c, server) = setup(ClientOptions::default(), Limits::default(), h);
    assert!(!c.negotiated().extension());
    drop(c);
    assert_eq!(server.join().unwrap().1, Ok(ConnStatus::Closed));
}

#[test]
fn raw_protocol_errors_keep_the_connection() {
    let (a, b) = UnixStream::pair().unwrap();
    let server = spawn_server(b, Limits::default(), ToyHandler::default());
    let mut p = RawPeer::new(a);

    // Anything before VERSION: EINVAL; then a VERSION without NUL: EINVAL.
    let m = p.call(cmd::DEVICE_GET_INFO, &DeviceInfo::request().encode(), &[]);
    assert_eq!(errno_of(&m), Some(libc::EINVAL));
    assert_eq!(m.payload.len(), 0, "error reply is header only");
    let m = p.call(cmd::VERSION, b"\0\0\x01\0{}", &[]);
    assert_eq!(errno_of(&m), Some(libc::EINVAL));
    let m = p.call(cmd::VERSION, b"\0\0\x01\0{\0", &[]);
    assert_eq!(errno_of(&m), Some(libc::EINVAL));
    // Plain VERSION (no extension proposed).
    let m = p.version(&Capabilities::default());
    assert_eq!(errno_of(&m), None);
    let v = Version::decode(&m.payload).unwrap();
    assert!(v.caps.sidecar.is_none());
    assert_eq!((v.major, v.minor), (0, 1));
    // A second VERSION: EINVAL.
    let m = p.version(&Capabilities::default());
    assert_eq!(errno_of(&m), Some(libc::EINVAL));

    // Unknown command and extension commands without negotiation: ENOSYS.
    for c in [
        14u16,
        16,
        17,
        18,
        0x1234,
        cmd::SIDECAR_GET_DEVICE_DESC,
        cmd::SIDECAR_GET_IRQ_STATS,
        cmd::REGION_WRITE_MULTI,
    ] {
        let m = p.call(c, &[0u8; 16], &[]);
        assert_eq!(errno_of(&m), Some(libc::ENOSYS), "command {c:#x}");
    }
    // Server-to-client commands sent by the client: EINVAL.
    let m = p.call(cmd::DMA_READ, &[0u8; 16], &[]);
    assert_eq!(errno_of(&m), Some(libc::EINVAL));
    // EXEC bit without dma_exec: EINVAL; bits 2/3: EINVAL.
    let mem = memfd(0x1000);
    for flags in [
        DMA_MAP_FLAG_READ | DMA_MAP_FLAG_EXEC,
        DMA_MAP_FLAG_READ | 4,
        8,
    ] {
        let m = p.call(
            cmd::DMA_MAP,
            &DmaMap::new(flags, 0, 0x1000, 0x1000).encode(),
            &[mem.as_raw_fd()],
        );
        assert_eq!(errno_of(&m), Some(libc::EINVAL), "flags {flags:#x}");
    }
    // Truncated and over-long payloads: EINVAL.
    let m = p.call(cmd::DMA_MAP, &[0u8; 31], &[]);
    assert_eq!(errno_of(&m), Some(libc::EINVAL));
    let m = p.call(cmd::DEVICE_GET_IRQ_INFO, &[0u8; 17], &[]);
    assert_eq!(errno_of(&m), Some(libc::EINVAL));
    // Wrong fd counts: DMA_MAP with 2 fds, SET_IRQS eventfd count mismatch, fds on GET_INFO.
    let e1 = eventfd();
    let e2 = eventfd();
    let m = p.call(
        cmd::DMA_MAP,
        &DmaMap::new(1, 0, 0x1000, 0x1000).encode(),
        &[e1.as_raw_fd(), e2.as_raw_fd()],
    );
    assert_eq!(errno_of(&m), Some(libc::EINVAL));
    let s = SetIrqs::new(0, IrqAction::Trigger, IrqDataType::Eventfd, 0, 2, vec![]);
    let m = p.call(cmd::DEVICE_SET_IRQS, &s.encode(), &[e1.as_raw_fd()]);
    assert_eq!(errno_of(&m), Some(libc::EINVAL));
    let m = p.call(
        cmd::DEVICE_GET_INFO,
        &DeviceInfo::request().encode(),
        &[e1.as_raw_fd()],
    );
    assert_eq!(errno_of(&m), Some(libc::EINVAL));
    // Transfer larger than max_data_xfer_size: EINVAL (without reading anything).
    let rq = RegionAccess::encode_fixed(0, 0, (1 << 20) + 1);
    let m = p.call(cmd::REGION_READ, &rq, &[]);
    assert_eq!(errno_of(&m), Some(libc::EINVAL));
    // REGION_WRITE whose count does not match the data.
    let mut w = RegionAccess::encode_fixed(0, 0, 8).to_vec();
    w.extend_from_slice(&[1, 2]);
    let m = p.call(cmd::REGION_WRITE, &w, &[]);
    assert_eq!(errno_of(&m), Some(libc::EINVAL));
    // Region info with a too-small argsz: EINVAL; with room for the fixed part
    // only: argsz says what is needed and no caps are sent.
    let m = p.call(
        cmd::DEVICE_GET_REGION_INFO,
        &RegionInfoRequest {
            argsz: 16,
            index: 1,
        }
        .encode(),
        &[],
    );
    assert_eq!(errno_of(&m), Some(libc::EINVAL));
    let m = p.call(
        cmd::DEVICE_GET_REGION_INFO,
        &RegionInfoRequest {
            argsz: 32,
            index: 1,
        }
        .encode(),
        &[],
    );
    assert_eq!(m.payload.len(), 32);
    let r = RegionInfo::decode_reply(&m.payload).unwrap();
    assert!(r.is_truncated());
    assert_eq!(r.argsz, 32 + 16 + 32);
    // No_reply: no answer at all, then the next request is answered.
    let mut h = Header::command(7, cmd::DEVICE_RESET, 0);
    h.flags |= vfio_sidecar_protocol::header::flags::NO_REPLY;
    send_message(p.sock.as_fd(), &h, &[], &[], None).unwrap();
    let m = p.call(cmd::DEVICE_GET_INFO, &DeviceInfo::request().encode(), &[]);
    assert_eq!(errno_of(&m), None);
    drop(p);
    let (h, status) = server.join().unwrap();
    assert_eq!(status, Ok(ConnStatus::Closed));
    assert_eq!(h.resets, 1, "the no-reply reset was executed");
}

#[test]
fn desync_recovery() {
    let (a, b) = UnixStream::pair().unwrap();
    let server = spawn_server(b, Limits::default(), ToyHandler::default());
    let mut p = RawPeer::new(a);
    assert_eq!(errno_of(&p.version(&Capabilities::default())), None);

    // Oversized (declared > limit) with its bytes: skipped, E2BIG, stream in sync.
    let limit = Limits::default().max_msg_size();
    let h = Header::command(50, cmd::REGION_WRITE, limit + 10 - 16);
    let mut bytes = h.encode().to_vec();
    bytes.extend(std::iter::repeat_n(0x5a, limit + 10 - 16));
    let writer = {
        let s = p.sock.try_clone().unwrap();
        std::thread::spawn(move || {
            use std::io::Write;
            s.set_nonblocking(false).unwrap();
            (&s).write_all(&bytes).unwrap();
        })
    };
    let m = p.recv().unwrap();
    writer.join().unwrap();
    assert_eq!(m.header.msg_id, 50);
    assert_eq!(errno_of(&m), Some(libc::E2BIG));
    let m = p.call(cmd::DEVICE_GET_INFO, &DeviceInfo::request().encode(), &[]);
    assert_eq!(errno_of(&m), None);

    // Undersized header (size 4): EINVAL, only the header is consumed.
    let h = Header {
        size: 4,
        ..Header::command(51, cmd::DEVICE_RESET, 0)
    };
    p.send_bytes(&h.encode());
    let m = p.recv().unwrap();
    assert_eq!(m.header.msg_id, 51);
    assert_eq!(errno_of(&m), Some(libc::EINVAL));

    // Garbage payload of a known command, then a valid one.
    let m = p.call(cmd::DEVICE_SET_IRQS, &[0xff; 40], &[]);
    assert_eq!(errno_of(&m), Some(libc::EINVAL));
    // A reply-type message from the client is dropped silently.
    let rep = Header::reply_to(&Header::command(52, cmd::DEVICE_RESET, 0), 0);
    p.send_bytes(&rep.encode());
    // Invalid message type 3: EINVAL.
    let bad_type = Header {
        flags: 3,
        ..Header::command(53, cmd::DEVICE_RESET, 0)
    };
    p.send_bytes(&bad_type.encode());
    let m = p.recv().unwrap();
    assert_eq!(m.header.msg_id, 53);
    assert_eq!(errno_of(&m), Some(libc::EINVAL));
    // Too many fds (17 > 16): EINVAL, fds closed, continue.
    let many: Vec<_> = (0..17).map(|_| eventfd()).collect();
    let raw: Vec<_> = many.iter().map(|f| f.as_raw_fd()).collect();
    let s = SetIrqs::new(0, IrqAction::Trigger, IrqDataType::Eventfd, 0, 17, vec![]);
    let m = p.call(cmd::DEVICE_SET_IRQS, &s.encode(), &raw);
    assert_eq!(errno_of(&m), Some(libc::EINVAL));
    let m = p.call(cmd::DEVICE_GET_INFO, &DeviceInfo::request().encode(), &[]);
    assert_eq!(errno_of(&m), None);
    assert_eq!(DeviceInfo::decode(&m.payload).unwrap().num_regions, 3);
    // Nothing else arrived (the reply-type message got no answer).
    assert!(p.recv_timeout(Duration::from_millis(100)).is_none());

    // A declared size beyond the skip limit closes the connection.
    let h = Header {
        size: u32::MAX,
        ..Header::command(54, cmd::REGION_WRITE, 0)
    };
    p.send_bytes(&h.encode());
    let (_, status) = server.join().unwrap();
    assert!(status.is_err(), "connection must be closed with an error");
}

#[test]
fn wrong_major_version_closes() {
    let (a, b) = UnixStream::pair().unwrap();
    let server = spawn_server(b, Limits::default(), ToyHandler::default());
    let mut p = RawPeer::new(a);
    let v = Version {
        major: 1,
        minor: 0,
        caps: Capabilities::default(),
    };
    let m = p.call(cmd::VERSION, &v.encode(), &[]);
    assert_eq!(errno_of(&m), Some(libc::ENOTSUP));
    let (_, status) = server.join().unwrap();
    assert_eq!(status, Ok(ConnStatus::Closed));
}

#[test]
fn extension_argsz_and_subset_rules() {
    let (a, b) = UnixStream::pair().unwrap();
    let server = spawn_server(b, Limits::default(), ToyHandler::default());
    let mut p = RawPeer::new(a);
    // Propose only dma_exec: the reply is a subset with exec_enforced.
    let caps = Capabilities {
        sidecar: Some(SidecarCaps {
            platform: false,
            eoi: false,
            ..SidecarCaps::client_proposal()
        }),
        ..Capabilities::default()
    };
    let m = p.version(&caps);
    let v = Version::decode(&m.payload).unwrap();
    let s = v.caps.sidecar.unwrap();
    assert!(s.dma_exec && !s.platform && !s.eoi);
    assert_eq!(s.exec_enforced, Some(true));
    // DEVICE_DESC with too small argsz: argsz = needed, no payload.
    let m = p.call(
        cmd::SIDECAR_GET_DEVICE_DESC,
        &DeviceDescRequest { argsz: 16 }.encode(),
        &[],
    );
    let r = DeviceDescReply::decode(&m.payload).unwrap();
    assert_eq!(m.payload.len(), 16);
    assert!(r.json.is_empty());
    let need = r.argsz;
    let m = p.call(
        cmd::SIDECAR_GET_DEVICE_DESC,
        &DeviceDescRequest { argsz: need }.encode(),
        &[],
    );
    let r = DeviceDescReply::decode(&m.payload).unwrap();
    assert_eq!(m.payload.len(), need as usize);
    assert_eq!(r.dtb, TOY_DTB);
    // IRQ_STATS with too small argsz: argsz = needed, count 0.
    let rq = IrqStatsRequest {
        argsz: 16,
        ..IrqStatsRequest::new(0, 0, 2)
    };
    let m = p.call(cmd::SIDECAR_GET_IRQ_STATS, &rq.encode(), &[]);
    let r = IrqStatsReply::decode(&m.payload).unwrap();
    assert_eq!(r.argsz, 16 + 64);
    assert!(r.stats.is_empty());
    // DMA_MAP with EXEC is valid now.
    let mem = memfd(0x1000);
    let m = p.call(
        cmd::DMA_MAP,
        &DmaMap::new(DMA_MAP_FLAG_READ | DMA_MAP_FLAG_EXEC, 0, 0x1000, 0x1000).encode(),
        &[mem.as_raw_fd()],
    );
    assert_eq!(errno_of(&m), None);
    // Region IO fds: zero sub-regions is a valid, fd-less reply.
    drop(p);
    let (h, _) = server.join().unwrap();
    assert_eq!(h.maps[&0x1000].1, DMA_MAP_FLAG_READ | DMA_MAP_FLAG_EXEC);
}

#[test]
fn region_io_fds_empty() {
    let h = ToyHandler {
        io_fds_empty: true,
        ..ToyHandler::default()
    };
    let (mut c, server) = setup(ClientOptions::default(), Limits::default(), h);
    let (subs, fds) = c.region_io_fds(0).unwrap();
    assert!(subs.is_empty() && fds.is_empty());
    assert_eq!(remote_errno(c.region_io_fds(1).unwrap_err()), Errno::EINVAL);
    drop(c);
    assert_eq!(server.join().unwrap().1, Ok(ConnStatus::Closed));
}

#[test]
fn client_transfer_limits() {
    let limits = Limits {
        max_data_xfer_size: 64,
        ..Limits::default()
    };
    let (mut c, server) = setup(ClientOptions::default(), limits, ToyHandler::default());
    assert_eq!(c.negotiated().server.max_data_xfer_size, 64);
    c.region_read(0, 0, 64).unwrap();
    assert!(matches!(
        c.region_read(0, 0, 65),
        Err(ClientError::NotAllowed(_))
    ));
    assert!(matches!(
        c.region_write(0, 0, &[0; 65]),
        Err(ClientError::NotAllowed(_))
    ));
    drop(c);
    assert_eq!(server.join().unwrap().1, Ok(ConnStatus::Closed));
}

/// The client against a hand-written server: DMA_READ/DMA_WRITE served from
/// the callback while waiting for a reply; timeouts; disconnects.
#[test]
fn client_serves_dma_and_handles_timeout_and_disconnect() {
    let (a, b) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || {
        let mut p = RawPeer::new(b);
        p.answer_version(Capabilities::default());
        // RESET: before replying, ask the client for DMA.
        let reset = p.recv().unwrap();
        assert_eq!(reset.header.command, cmd::DEVICE_RESET);
        let w = DmaAccess {
            address: 0x1000,
            count: 4,
            data: vec![1, 2, 3, 4],
        };
        let r = p.call(cmd::DMA_WRITE, &w.encode(), &[]);
        assert_eq!(errno_of(&r), None);
        assert_eq!(
            DmaAccess::decode("DMA_WRITE reply", &r.payload, false)
                .unwrap()
                .count,
            4
        );
        let rd = DmaAccess {
            address: 0x1002,
            count: 2,
            data: vec![],
        };
        let r = p.call(cmd::DMA_READ, &rd.encode(), &[]);
        assert_eq!(
            DmaAccess::decode("DMA_READ reply", &r.payload, true)
                .unwrap()
                .data,
            vec![3, 4]
        );
        let r = p.call(
            cmd::DMA_READ,
            &DmaAccess {
                address: 0x9000,
                count: 1,
                data: vec![],
            }
            .encode(),
            &[],
        );
        assert_eq!(errno_of(&r), Some(libc::EFAULT));
        p.reply(&reset.header, &[]).unwrap();
        // Second RESET: never answered (client times out); then the late reply
        // is sent and must be ignored by the next request.
        let late = p.recv().unwrap();
        std::thread::sleep(Duration::from_millis(400));
        p.reply(&late.header, &[]).unwrap();
        let info = p.recv().unwrap();
        let d = DeviceInfo {
            argsz: 16,
            flags: 0,
            num_regions: 7,
            num_irqs: 0,
        }
        .encode();
        p.reply(&info.header, &[&d]).unwrap();
        // Third request: die without answering.
        let _ = p.recv().unwrap();
        drop(p);
    });
    let mut c = Client::from_stream(a, ClientOptions::default()).unwrap();
    let mem = std::sync::Arc::new(std::sync::Mutex::new(vec![0u8; 16]));
    let m2 = mem.clone();
    c.set_dma_handler(Box::new(move |req| {
        let mut m = m2.lock().unwrap();
        match req {
            DmaRequest::Write { address, data } => {
                let o = (address - 0x1000) as usize;
                m[o..o + data.len()].copy_from_slice(data);
                Ok(())
            }
            DmaRequest::Read { address, buf } => {
                let o = address.checked_sub(0x1000).ok_or(Errno::EFAULT)? as usize;
                let src = m.get(o..o + buf.len()).ok_or(Errno::EFAULT)?;
                buf.copy_from_slice(src);
                Ok(())
            }
        }
    }));
    c.reset().unwrap();
    assert_eq!(&mem.lock().unwrap()[..4], &[1, 2, 3, 4]);
    c.set_reply_timeout(Duration::from_millis(100));
    assert!(matches!(c.reset(), Err(ClientError::Timeout { .. })));
    c.set_reply_timeout(Duration::from_secs(5));
    assert_eq!(c.device_info().unwrap().num_regions, 7);
    assert!(matches!(c.reset(), Err(ClientError::Disconnected)));
    t.join().unwrap();
    assert!(matches!(c.reset(), Err(ClientError::Disconnected)));
}

#[test]
fn connect_by_path_and_no_hang_on_dead_server() {
    let dir = std::env::temp_dir().join(format!("proto-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let t = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        // Accept, read the VERSION, and die.
        let mut p = RawPeer::new(s);
        let _ = p.recv();
    });
    let r = Client::connect(&path, ClientOptions::default());
    assert!(matches!(r, Err(ClientError::Disconnected)), "{r:?}");
    t.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    // Nobody listening at all.
    assert!(Client::connect(&dir.join("none"), ClientOptions::default()).is_err());
    let _ = wait_fd;
}

#[test]
fn client_and_connection_are_send() {
    fn is_send<T: Send>() {}
    is_send::<Client>();
    is_send::<vfio_sidecar_protocol::ServerConnection>();
}

/// A handler that only implements the required methods: plain vfio-user,
/// numeric limits from the connection, optional commands answer ENOTSUP.
struct Minimal;

impl vfio_sidecar_protocol::Handler for Minimal {
    fn dma_map(&mut self, _: &DmaMap, _: Option<std::os::fd::OwnedFd>) -> Result<(), Errno> {
        Ok(())
    }
    fn dma_unmap(&mut self, _: &DmaUnmap) -> Result<(), Errno> {
        Ok(())
    }
    fn device_info(&mut self) -> Result<DeviceInfo, Errno> {
        Ok(DeviceInfo {
            argsz: 0,
            flags: 0,
            num_regions: 0,
            num_irqs: 0,
        })
    }
    fn region_info(&mut self, _: u32) -> Result<(RegionInfo, Option<std::os::fd::RawFd>), Errno> {
        Err(Errno::EINVAL)
    }
    fn irq_info(&mut self, _: u32) -> Result<IrqInfo, Errno> {
        Err(Errno::EINVAL)
    }
    fn set_irqs(&mut self, _: &SetIrqs, _: Vec<std::os::fd::OwnedFd>) -> Result<(), Errno> {
        Ok(())
    }
    fn region_read(&mut self, _: u32, _: u64, _: &mut [u8]) -> Result<(), Errno> {
        Err(Errno::EINVAL)
    }
    fn region_write(&mut self, _: u32, _: u64, _: &[u8]) -> Result<(), Errno> {
        Err(Errno::EINVAL)
    }
    fn reset(&mut self) -> Result<(), Errno> {
        Ok(())
    }
}

#[test]
fn default_handler_methods() {
    let limits = Limits {
        max_msg_fds: 5,
        max_data_xfer_size: 8192,
        max_dma_maps: 7,
    };
    let (a, b) = UnixStream::pair().unwrap();
    let server = spawn_server(b, limits, Minimal);
    let mut c = Client::from_stream(a, ClientOptions::default()).unwrap();
    let n = c.negotiated().clone();
    assert_eq!(
        (
            n.server.max_msg_fds,
            n.server.max_data_xfer_size,
            n.server.max_dma_maps
        ),
        (5, 8192, 7)
    );
    assert!(!n.extension() && !n.write_multiple());
    assert_eq!(
        remote_errno(c.region_io_fds(0).unwrap_err()),
        Errno::ENOTSUP
    );
    c.reset().unwrap();
    drop(c);
    assert_eq!(server.join().unwrap().1, Ok(ConnStatus::Closed));
}

/// Replays one request sequence against a connection with the in-place
/// REGION_READ/WRITE fast path and one without, and returns every reply
/// (header, payload, fd count) and the handler's final state.
type Replies = Vec<(Header, Vec<u8>, usize)>;

fn replay(fast_path: bool, wire: &[(Vec<u8>, bool)]) -> (Replies, Vec<u8>, usize) {
    let (a, b) = UnixStream::pair().unwrap();
    let server = spawn_server_with(b, Limits::default(), ToyHandler::default(), fast_path);
    let mut p = RawPeer::new(a);
    assert_eq!(errno_of(&p.version(&Capabilities::default())), None);
    let extra = memfd(0x1000);
    for (bytes, with_fd) in wire {
        if *with_fd {
            // The bytes are one framed message: send it with an fd attached.
            send_raw_with_fd(&p.sock, bytes, extra.as_raw_fd());
        } else {
            p.send_bytes(bytes);
        }
    }
    // A sentinel: every reply before its reply belongs to the sequence.
    let sentinel = p.send(cmd::DEVICE_GET_INFO, &DeviceInfo::request().encode(), &[]);
    let mut replies = Vec::new();
    loop {
        let m = p.recv().expect("reply");
        if m.header.msg_id == sentinel.msg_id && m.header.command == cmd::DEVICE_GET_INFO {
            break;
        }
        replies.push((m.header, m.payload, m.fds.len()));
    }
    drop(p);
    let (h, status) = server.join().unwrap();
    assert_eq!(status, Ok(ConnStatus::Closed));
    (replies, h.regs, h.writes.len())
}

fn send_raw_with_fd(sock: &UnixStream, bytes: &[u8], fd: i32) {
    let hdr: &[u8; 16] = bytes[..16].try_into().unwrap();
    let h = Header::decode(hdr);
    send_message(sock.as_fd(), &h, &[&bytes[16..]], &[fd], None).unwrap();
}

#[test]
fn fast_path_replies_match_the_general_path() {
    use vfio_sidecar_protocol::header::flags;
    // Deterministic pseudo-random requests around every fast-path condition:
    // counts 0 / 1..=64 / 65+ / over max_data_xfer_size, offsets in and out of
    // the toy region and at the u64 edge, both regions, flag variants,
    // mismatched write lengths, fds attached, several messages per send.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let counts = [0u32, 1, 2, 4, 8, 63, 64, 65, 200, (1 << 20) + 1];
    let offsets = [0u64, 4, 8, 0x40, 0xff0, 0xffc, 0x1000, u64::MAX - 2];
    let mut wire: Vec<(Vec<u8>, bool)> = Vec::new();
    let mut batch = Vec::new();
    for i in 0..400u16 {
        let write = next(2) == 1;
        let count = counts[next(counts.len() as u64) as usize];
        let offset = offsets[next(offsets.len() as u64) as usize];
        let region = u32::from(next(8) == 0);
        let flag = match next(12) {
            0 => flags::NO_REPLY,
            1 => flags::ERROR,
            2 => flags::TYPE_REPLY,
            _ => flags::TYPE_COMMAND,
        };
        let mut payload = RegionAccess::encode_fixed(offset, region, count).to_vec();
        if write {
            let n = if count <= 256 { count as usize } else { 3 };
            // Now and then a length that does not match `count`.
            let n = if next(10) == 0 { n + 1 } else { n };
            payload.extend((0..n).map(|b| (b as u8) ^ (i as u8)));
        } else if next(20) == 0 {
            payload.push(0xaa);
        }
        let command = if write {
            cmd::REGION_WRITE
        } else {
            cmd::REGION_READ
        };
        let mut h = Header::command(1000 + i, command, payload.len());
        h.flags = flag;
        let mut bytes = h.encode().to_vec();
        bytes.extend_from_slice(&payload);
        if next(15) == 0 {
            if !batch.is_empty() {
                wire.push((std::mem::take(&mut batch), false));
            }
            wire.push((bytes, true));
        } else {
            batch.extend_from_slice(&bytes);
            if next(4) == 0 {
                wire.push((std::mem::take(&mut batch), false));
            }
        }
    }
    if !batch.is_empty() {
        wire.push((batch, false));
    }
    let fast = replay(true, &wire);
    let general = replay(false, &wire);
    assert!(fast.0.len() > 200, "most requests were answered");
    assert!(
        fast.0.iter().any(|(h, _, _)| !h.is_error()) && fast.0.iter().any(|(h, _, _)| h.is_error()),
        "both successes and errors were exercised"
    );
    assert_eq!(fast.0.len(), general.0.len(), "same number of replies");
    for (n, (f, g)) in fast.0.iter().zip(&general.0).enumerate() {
        assert_eq!(f, g, "reply {n} differs (fast, general)");
    }
    assert_eq!(fast.1, general.1, "same register contents");
    assert!(fast.2 > 0);
    assert_eq!(fast.2, general.2, "same writes reached the handler");
}

/// `NO_REPLY_TIMEOUT`: a slow reply is waited for (no Timeout), and a server
/// that dies mid-request still ends the wait (Disconnected), never a hang.
#[test]
fn no_reply_timeout_waits_for_slow_replies_and_ends_on_eof() {
    use vfio_sidecar_protocol::client::NO_REPLY_TIMEOUT;
    let (a, b) = UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || {
        let mut p = RawPeer::new(b);
        p.answer_version(Capabilities::default());
        // A read answered after 300 ms (longer than a short timeout would wait).
        let m = p.recv().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let fixed: [u8; 16] = m.payload[..16].try_into().unwrap();
        p.reply(&m.header, &[&fixed, &[7, 7, 7, 7]]).unwrap();
        // The next request: no answer, the server goes away.
        let _ = p.recv();
    });
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let client = std::thread::spawn(move || {
        let mut c = Client::from_stream(
            a,
            ClientOptions {
                reply_timeout: NO_REPLY_TIMEOUT,
                ..ClientOptions::default()
            },
        )
        .unwrap();
        let slow = c.region_read(0, 0, 4);
        let dead = c.region_read(0, 0, 4);
        done_tx.send((slow, dead)).unwrap();
    });
    let (slow, dead) = done_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the client returned (no hang)");
    assert_eq!(slow.unwrap(), [7, 7, 7, 7], "the slow reply was waited for");
    assert!(matches!(dead, Err(ClientError::Disconnected)), "{dead:?}");
    client.join().unwrap();
    server.join().unwrap();
}
