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
//! After each record the server handles everything readable; a drain thread
//! reads (and drops) the replies. The run ends when the input ends or the
//! server closes the connection. Panics are the bugs looked for.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vfio_sidecar_protocol::caps::{Capabilities, Limits, SidecarCaps};
use vfio_sidecar_protocol::ext::*;
use vfio_sidecar_protocol::header::{command as cmd, Header};
use vfio_sidecar_protocol::message::*;
use vfio_sidecar_protocol::transport::{recv_with_fds, wait_fd};
use vfio_sidecar_protocol::{ConnStatus, Errno, Handler, ServerConnection};

/// Limits of the fuzzed server (small transfers keep executions fast).
pub const LIMITS: Limits = Limits {
    max_msg_fds: 16,
    max_data_xfer_size: 4096,
    max_dma_maps: 8,
};

const REG_SIZE: usize = 0x1000;

/// A small device with checked bounds everywhere.
#[derive(Debug)]
pub struct FuzzDevice {
    regs: Vec<u8>,
    mmap_fd: OwnedFd,
    io_fd: OwnedFd,
    maps: BTreeMap<u64, u64>,
    irq_fds: [Option<OwnedFd>; 2],
}

fn memfd(size: i64) -> Option<OwnedFd> {
    // SAFETY: memfd_create with a static NUL-terminated name; result checked.
    let fd = unsafe { libc::memfd_create(c"fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on a valid fd.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
        return None;
    }
    Some(fd)
}

fn eventfd() -> Option<OwnedFd> {
    // SAFETY: plain syscall; result checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh fd owned by nobody else.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl FuzzDevice {
    /// A fresh device.
    pub fn new() -> Option<Self> {
        Some(FuzzDevice {
            regs: vec![0; REG_SIZE],
            mmap_fd: memfd(0x2000)?,
            io_fd: eventfd()?,
            maps: BTreeMap::new(),
            irq_fds: [None, None],
        })
    }
}

fn range(offset: u64, len: usize, size: usize) -> Result<std::ops::Range<usize>, Errno> {
    let start = usize::try_from(offset).map_err(|_| Errno::EINVAL)?;
    let end = start.checked_add(len).ok_or(Errno::EINVAL)?;
    if end > size {
        return Err(Errno::EINVAL);
    }
    Ok(start..end)
}

impl Handler for FuzzDevice {
    fn version(&mut self, _client: &Capabilities) -> Result<Capabilities, Errno> {
        Ok(Capabilities {
            write_multiple: true,
            sidecar: Some(SidecarCaps {
                exec_enforced: Some(true),
                ..SidecarCaps::client_proposal()
            }),
            ..Capabilities::from_limits(&LIMITS)
        })
    }

    fn dma_map(&mut self, req: &DmaMap, _fd: Option<OwnedFd>) -> Result<(), Errno> {
        let end = req.address.checked_add(req.size).ok_or(Errno::EINVAL)?;
        if self
            .maps
            .iter()
            .any(|(&a, &s)| req.address < a.saturating_add(s) && a < end)
        {
            return Err(Errno::EEXIST);
        }
        self.maps.insert(req.address, req.size);
        Ok(())
    }

    fn dma_unmap(&mut self, req: &DmaUnmap) -> Result<(), Errno> {
        if req.is_all() {
            self.maps.clear();
            return Ok(());
        }
        match self.maps.get(&req.address) {
            Some(&s) if s == req.size => {
                self.maps.remove(&req.address);
                Ok(())
            }
            _ => Err(Errno::ENOENT),
        }
    }

    fn device_info(&mut self) -> Result<DeviceInfo, Errno> {
        Ok(DeviceInfo {
            argsz: 0,
            flags: 1 | 4,
            num_regions: 2,
            num_irqs: 1,
        })
    }

    fn region_info(&mut self, index: u32) -> Result<(RegionInfo, Option<RawFd>), Errno> {
        match index {
            0 => Ok((
                RegionInfo {
                    index,
                    flags: REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE,
                    size: REG_SIZE as u64,
                    offset: 0,
                    sparse: None,
                },
                None,
            )),
            1 => Ok((
                RegionInfo {
                    index,
                    flags: REGION_INFO_FLAG_READ | REGION_INFO_FLAG_MMAP,
                    size: 0x2000,
                    offset: 0,
                    sparse: Some(vec![SparseArea {
                        offset: 0x1000,
                        size: 0x1000,
                    }]),
                },
                Some(self.mmap_fd.as_raw_fd()),
            )),
            _ => Err(Errno::EINVAL),
        }
    }

    fn region_io_fds(&mut self, index: u32) -> Result<(Vec<SubRegionIoFd>, Vec<RawFd>), Errno> {
        match index {
            0 => Ok((
                vec![SubRegionIoFd {
                    offset: 0x10,
                    size: 4,
                    fd_index: 0,
                    kind: IO_FD_TYPE_IOEVENTFD,
                    flags: 0,
                    data: 0,
                }],
                vec![self.io_fd.as_raw_fd()],
            )),
            1 => Ok((vec![], vec![])),
            _ => Err(Errno::EINVAL),
        }
    }

    fn irq_info(&mut self, index: u32) -> Result<IrqInfo, Errno> {
        if index != 0 {
            return Err(Errno::EINVAL);
        }
        Ok(IrqInfo {
            argsz: 0,
            flags: 1 | 2 | 4,
            index,
            count: 2,
        })
    }

    fn set_irqs(&mut self, req: &SetIrqs, fds: Vec<OwnedFd>) -> Result<(), Errno> {
        if req.index != 0 {
            return Err(Errno::EINVAL);
        }
        if req.count == 0 {
            self.irq_fds = [None, None];
            return Ok(());
        }
        let r = range(u64::from(req.start), req.count as usize, 2)?;
        let mut it = fds.into_iter();
        for i in r {
            if req.data_type() == Some(IrqDataType::Eventfd) {
                if let Some(slot) = self.irq_fds.get_mut(i) {
                    *slot = it.next();
                }
            }
        }
        Ok(())
    }

    fn region_read(&mut self, region: u32, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        if region != 0 {
            return Err(Errno::EINVAL);
        }
        let r = range(offset, buf.len(), REG_SIZE)?;
        buf.copy_from_slice(self.regs.get(r).ok_or(Errno::EINVAL)?);
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        if region != 0 {
            return Err(Errno::EINVAL);
        }
        let r = range(offset, data.len(), REG_SIZE)?;
        self.regs
            .get_mut(r)
            .ok_or(Errno::EINVAL)?
            .copy_from_slice(data);
        Ok(())
    }

    fn reset(&mut self) -> Result<(), Errno> {
        self.regs.iter_mut().for_each(|b| *b = 0);
        Ok(())
    }

    fn device_desc(&mut self) -> Result<(DeviceDescription, Vec<u8>), Errno> {
        Ok((
            DeviceDescription {
                kind: DeviceKind::Platform,
                compatible: vec!["fuzz,dev".into()],
                clocks: vec![],
                regions: vec![RegionDesc {
                    index: 0,
                    name: "regs".into(),
                    guest_base: None,
                }],
                irqs: vec![IrqDesc {
                    index: 0,
                    name: "irq".into(),
                    trigger: IrqTrigger::LevelHigh,
                    eoi: EoiDesc {
                        policy: EoiPolicy::Resample,
                        clear: None,
                    },
                }],
                dt_node_name: None,
            },
            vec![0xd0, 0x0d, 0xfe, 0xed],
        ))
    }

    fn irq_stats(&mut self, index: u32, start: u32, count: u32) -> Result<Vec<IrqStats>, Errno> {
        if index != 0 {
            return Err(Errno::EINVAL);
        }
        range(u64::from(start), count as usize, 2)?;
        Ok(vec![IrqStats::default(); count as usize])
    }
}

fn send_with_fds(sock: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> bool {
    let mut off = 0;
    let mut first = true;
    while off < bytes.len() || (first && !fds.is_empty()) {
        let rest = bytes.get(off..).unwrap_or_default();
        let mut iov = libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        };
        let space = if first && !fds.is_empty() {
            // SAFETY: pure arithmetic.
            unsafe { libc::CMSG_SPACE((fds.len() * 4) as u32) as usize }
        } else {
            0
        };
        let mut cbuf = vec![0u64; space.div_ceil(8)];
        // SAFETY: msghdr is plain data; all-zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if space > 0 {
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = space;
            // SAFETY: the control buffer holds CMSG_SPACE(n * 4) bytes.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN((fds.len() * 4) as u32) as _;
                let d = libc::CMSG_DATA(c).cast::<RawFd>();
                for (i, f) in fds.iter().enumerate() {
                    d.add(i).write_unaligned(*f);
                }
            }
        }
        // SAFETY: msg points to live iovec and control buffers.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            return false;
        }
        first = false;
        off += n as usize;
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
    let Some(mut dev) = FuzzDevice::new() else {
        return;
    };
    let (Some(mem), Some(efd)) = (memfd(0x4000), eventfd()) else {
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
        let payload = Version {
            major: 0,
            minor: 1,
            caps,
        }
        .encode();
        let mut msg = Header::command(0, cmd::VERSION, payload.len())
            .encode()
            .to_vec();
        msg.extend_from_slice(&payload);
        alive = send_with_fds(&client, &msg, &[]) && pump(&mut conn, &mut dev);
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
