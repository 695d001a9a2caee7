//! Shared helpers of the protocol integration tests: a toy device handler,
//! a server thread and raw-socket peers.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::Duration;

use vfio_sidecar_protocol::caps::{Capabilities, Limits, SidecarCaps};
use vfio_sidecar_protocol::ext::*;
use vfio_sidecar_protocol::header::Header;
use vfio_sidecar_protocol::message::*;
use vfio_sidecar_protocol::transport::{send_message, wait_fd, Incoming, Message, MessageReader};
use vfio_sidecar_protocol::TransportError;
use vfio_sidecar_protocol::{ConnStatus, Errno, Handler, Negotiated, ServerConnection};

pub fn memfd(size: usize) -> OwnedFd {
    // SAFETY: memfd_create with a static NUL-terminated name; result checked.
    let fd = unsafe { libc::memfd_create(c"proto-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on a valid fd.
    assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), size as i64) }, 0);
    fd
}

pub fn eventfd() -> OwnedFd {
    // SAFETY: plain syscall; result checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0);
    // SAFETY: fresh fd owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Reads an eventfd counter (0 if not signalled).
pub fn eventfd_read(fd: RawFd) -> u64 {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a live u64.
    let n = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
    if n == 8 {
        v
    } else {
        0
    }
}

pub fn eventfd_signal(fd: RawFd) {
    let v = 1u64;
    // SAFETY: writes 8 bytes from a live u64.
    let n = unsafe { libc::write(fd, (&v as *const u64).cast(), 8) };
    assert_eq!(n, 8);
}

pub fn pwrite(fd: RawFd, off: u64, data: &[u8]) {
    // SAFETY: writes from a live slice.
    let n = unsafe { libc::pwrite(fd, data.as_ptr().cast(), data.len(), off as i64) };
    assert_eq!(n as usize, data.len());
}

pub fn pread(fd: RawFd, off: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    // SAFETY: reads into a live buffer of len bytes.
    let n = unsafe { libc::pread(fd, v.as_mut_ptr().cast(), len, off as i64) };
    assert_eq!(n as usize, len);
    v
}

pub const REG_SIZE: usize = 0x1000;
pub const NUM_SPARSE_BIG: usize = 12;

/// A toy device: region 0 = 4 KiB RAM (trapped), region 1 = 8 KiB memfd with
/// sparse areas, region 2 = memfd with many sparse areas (forces an argsz
/// retry); IRQ index 0 with 2 vectors; DMA table; extension support.
#[derive(Debug)]
pub struct ToyHandler {
    pub regs: Vec<u8>,
    pub mmap_fd: OwnedFd,
    pub maps: BTreeMap<u64, (u64, u32, Option<OwnedFd>)>,
    pub irq_fds: Vec<Option<OwnedFd>>,
    pub masked: Vec<bool>,
    pub resets: u32,
    pub offer_extension: bool,
    pub negotiated: Option<Negotiated>,
    pub io_fd: OwnedFd,
    pub io_fds_empty: bool,
    pub writes: Vec<(u32, u64, Vec<u8>)>,
    pub device_flags: u32,
}

impl Default for ToyHandler {
    fn default() -> Self {
        let mmap_fd = memfd(0x2000);
        pwrite(mmap_fd.as_raw_fd(), 0, b"mmap-region");
        ToyHandler {
            regs: (0..REG_SIZE).map(|i| i as u8).collect(),
            mmap_fd,
            maps: BTreeMap::new(),
            irq_fds: vec![None, None],
            masked: vec![false, false],
            resets: 0,
            offer_extension: true,
            negotiated: None,
            io_fd: eventfd(),
            io_fds_empty: false,
            writes: Vec::new(),
            device_flags: 1 | 8,
        }
    }
}

pub fn toy_desc() -> DeviceDescription {
    DeviceDescription {
        kind: DeviceKind::Amba,
        compatible: vec!["arm,pl330".into(), "arm,primecell".into()],
        clocks: vec![ClockDesc {
            name: "apb_pclk".into(),
            frequency_hz: 100_000_000,
        }],
        regions: vec![RegionDesc {
            index: 0,
            name: "regs".into(),
            guest_base: Some(0x0900_0000),
        }],
        irqs: vec![IrqDesc {
            index: 0,
            name: "irq0".into(),
            trigger: IrqTrigger::LevelHigh,
            eoi: EoiDesc {
                policy: EoiPolicy::ClearRegister,
                clear: Some(ClearReg {
                    region: 0,
                    offset: 0x2c,
                    width: 4,
                    mode: ClearMode::W1c,
                    bit: Some(0),
                }),
            },
        }],
        dt_node_name: Some("dma".into()),
    }
}

pub const TOY_DTB: &[u8] = &[0xd0, 0x0d, 0xfe, 0xed, 0, 0, 0, 0x28];

impl Handler for ToyHandler {
    fn version(&mut self, _client: &Capabilities) -> Result<Capabilities, Errno> {
        Ok(Capabilities {
            max_msg_fds: 8,
            write_multiple: true,
            sidecar: self.offer_extension.then_some(SidecarCaps {
                exec_enforced: Some(true),
                ..SidecarCaps::client_proposal()
            }),
            ..Capabilities::from_limits(&Limits::default())
        })
    }

    fn negotiated(&mut self, n: &Negotiated) {
        self.negotiated = Some(n.clone());
    }

    fn dma_map(&mut self, req: &DmaMap, fd: Option<OwnedFd>) -> Result<(), Errno> {
        let end = req.address + req.size;
        if self
            .maps
            .iter()
            .any(|(&a, &(s, _, _))| req.address < a + s && a < end)
        {
            return Err(Errno::EEXIST);
        }
        self.maps.insert(req.address, (req.size, req.flags, fd));
        Ok(())
    }

    fn dma_unmap(&mut self, req: &DmaUnmap) -> Result<(), Errno> {
        if req.is_all() {
            self.maps.clear();
            return Ok(());
        }
        match self.maps.get(&req.address) {
            Some(&(s, _, _)) if s == req.size => {
                self.maps.remove(&req.address);
                Ok(())
            }
            _ => Err(Errno::ENOENT),
        }
    }

    fn device_info(&mut self) -> Result<DeviceInfo, Errno> {
        Ok(DeviceInfo {
            argsz: 0,
            flags: self.device_flags,
            num_regions: 3,
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
            1 | 2 => {
                let n = if index == 1 { 2 } else { NUM_SPARSE_BIG };
                let sparse = (0..n)
                    .map(|i| SparseArea {
                        offset: i as u64 * 0x1000,
                        size: 0x800,
                    })
                    .collect();
                Ok((
                    RegionInfo {
                        index,
                        flags: REGION_INFO_FLAG_READ
                            | REGION_INFO_FLAG_WRITE
                            | REGION_INFO_FLAG_MMAP,
                        size: 0x2000,
                        offset: 0,
                        sparse: Some(sparse),
                    },
                    Some(self.mmap_fd.as_raw_fd()),
                ))
            }
            _ => Err(Errno::EINVAL),
        }
    }

    fn region_io_fds(&mut self, index: u32) -> Result<(Vec<SubRegionIoFd>, Vec<RawFd>), Errno> {
        if index != 0 {
            return Err(Errno::EINVAL);
        }
        if self.io_fds_empty {
            return Ok((vec![], vec![]));
        }
        Ok((
            vec![SubRegionIoFd {
                offset: 0x10,
                size: 4,
                fd_index: 0,
                kind: IO_FD_TYPE_IOEVENTFD,
                flags: 0,
                data: 0,
            }],
            vec![self.io_fd.as_raw_fd()],
        ))
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
        let n = self.irq_fds.len() as u32;
        if req.count == 0 {
            self.irq_fds.iter_mut().for_each(|f| *f = None);
            return Ok(());
        }
        if req.start + req.count > n {
            return Err(Errno::EINVAL);
        }
        let range = req.start as usize..(req.start + req.count) as usize;
        match (req.action(), req.data_type()) {
            (Some(IrqAction::Trigger), Some(IrqDataType::Eventfd)) => {
                let mut it = fds.into_iter();
                for i in range {
                    self.irq_fds[i] = it.next();
                }
            }
            (Some(action), Some(dt)) => {
                for (k, i) in range.enumerate() {
                    let on = dt == IrqDataType::None || req.bools.get(k) == Some(&true);
                    if !on {
                        continue;
                    }
                    match action {
                        IrqAction::Mask => self.masked[i] = true,
                        IrqAction::Unmask => self.masked[i] = false,
                        IrqAction::Trigger => {
                            if let Some(f) = &self.irq_fds[i] {
                                eventfd_signal(f.as_raw_fd());
                            }
                        }
                    }
                }
            }
            _ => return Err(Errno::EINVAL),
        }
        Ok(())
    }

    fn region_read(&mut self, region: u32, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        if region != 0 {
            return Err(Errno::EINVAL);
        }
        let o = offset as usize;
        let src = self.regs.get(o..o + buf.len()).ok_or(Errno::EINVAL)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        if region != 0 {
            return Err(Errno::EINVAL);
        }
        let o = offset as usize;
        let dst = self.regs.get_mut(o..o + data.len()).ok_or(Errno::EINVAL)?;
        dst.copy_from_slice(data);
        self.writes.push((region, offset, data.to_vec()));
        Ok(())
    }

    fn reset(&mut self) -> Result<(), Errno> {
        self.resets += 1;
        Ok(())
    }

    fn device_desc(&mut self) -> Result<(DeviceDescription, Vec<u8>), Errno> {
        Ok((toy_desc(), TOY_DTB.to_vec()))
    }

    fn irq_stats(&mut self, index: u32, start: u32, count: u32) -> Result<Vec<IrqStats>, Errno> {
        if index != 0 || start.checked_add(count).is_none_or(|e| e > 2) {
            return Err(Errno::EINVAL);
        }
        Ok((start..start + count)
            .map(|v| IrqStats {
                device_events: 10 + u64::from(v),
                host_interrupts: 20,
                unmasks: 30,
                refires: 40,
            })
            .collect())
    }
}

/// Runs a ServerConnection in a thread until the client goes away; returns
/// the handler and the final status.
pub fn spawn_server<H: Handler + Send + 'static>(
    sock: UnixStream,
    limits: Limits,
    h: H,
) -> JoinHandle<(H, Result<ConnStatus, String>)> {
    spawn_server_with(sock, limits, h, true)
}

/// [`spawn_server`] with the connection's REGION_READ/WRITE fast path on or off.
pub fn spawn_server_with<H: Handler + Send + 'static>(
    sock: UnixStream,
    limits: Limits,
    mut h: H,
    fast_path: bool,
) -> JoinHandle<(H, Result<ConnStatus, String>)> {
    std::thread::spawn(move || {
        let mut conn = ServerConnection::new(sock, limits).unwrap();
        conn.set_fast_path(fast_path);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if std::time::Instant::now() > deadline {
                return (h, Err("server thread deadline".into()));
            }
            if !wait_fd(conn.as_fd(), libc::POLLIN, Some(Duration::from_millis(200))).unwrap() {
                continue;
            }
            match conn.handle_readable(&mut h) {
                Ok(ConnStatus::Open) => {}
                Ok(ConnStatus::Closed) => return (h, Ok(ConnStatus::Closed)),
                Err(e) => return (h, Err(e.to_string())),
            }
        }
    })
}

/// A raw peer speaking framed messages without the Client's checks.
#[derive(Debug)]
pub struct RawPeer {
    pub sock: UnixStream,
    pub reader: MessageReader,
    pub next_id: u16,
}

impl RawPeer {
    pub fn new(sock: UnixStream) -> Self {
        sock.set_nonblocking(true).unwrap();
        RawPeer {
            sock,
            reader: MessageReader::new(&Limits::default()),
            next_id: 100,
        }
    }

    pub fn send(&mut self, command: u16, payload: &[u8], fds: &[RawFd]) -> Header {
        let h = Header::command(self.next_id, command, payload.len());
        self.next_id = self.next_id.wrapping_add(1);
        send_message(self.sock.as_fd(), &h, &[payload], fds, None).unwrap();
        h
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.sock.set_nonblocking(false).unwrap();
        (&self.sock).write_all(bytes).unwrap();
        self.sock.set_nonblocking(true).unwrap();
    }

    /// Next message within 5 s (None on timeout).
    pub fn recv(&mut self) -> Option<Message> {
        self.recv_timeout(Duration::from_secs(5))
    }

    pub fn recv_timeout(&mut self, t: Duration) -> Option<Message> {
        let deadline = std::time::Instant::now() + t;
        loop {
            match self.reader.read_message(self.sock.as_fd()) {
                Ok(Some(Incoming::Message(m))) => return Some(m),
                Ok(Some(Incoming::Bad { header, error })) => {
                    panic!("bad frame {header:?} {error:?}")
                }
                Ok(None) => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    wait_fd(self.sock.as_fd(), libc::POLLIN, Some(left)).unwrap();
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
    }

    /// Next message within `t`; None on timeout, disconnect or a bad frame.
    pub fn try_recv(&mut self, t: Duration) -> Option<Message> {
        let deadline = std::time::Instant::now() + t;
        loop {
            match self.reader.read_message(self.sock.as_fd()) {
                Ok(Some(Incoming::Message(m))) => return Some(m),
                Ok(Some(Incoming::Bad { .. })) | Err(_) => return None,
                Ok(None) => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    wait_fd(self.sock.as_fd(), libc::POLLIN, Some(left)).ok()?;
                }
            }
        }
    }

    /// Writes raw bytes; false if the peer is gone.
    pub fn try_send_bytes(&mut self, bytes: &[u8]) -> bool {
        use std::io::Write;
        self.sock.set_nonblocking(false).is_ok()
            && (&self.sock).write_all(bytes).is_ok()
            && self.sock.set_nonblocking(true).is_ok()
    }

    /// Sends a request and returns its reply (asserting id and command).
    pub fn call(&mut self, command: u16, payload: &[u8], fds: &[RawFd]) -> Message {
        let h = self.send(command, payload, fds);
        let m = self.recv().expect("no reply");
        assert_eq!(m.header.msg_id, h.msg_id);
        assert_eq!(m.header.command, command);
        assert!(m.header.is_reply());
        m
    }

    /// VERSION with the given capabilities JSON.
    /// Server side: receives the client's VERSION and accepts it with `caps`
    /// (version 0.1); returns the request.
    pub fn answer_version(&mut self, caps: Capabilities) -> Message {
        let v = self.recv().expect("VERSION");
        let payload = Version {
            major: 0,
            minor: 1,
            caps,
        }
        .encode();
        self.reply(&v.header, &[&payload]).unwrap();
        v
    }

    /// Sends the reply to `req` made of `parts` (no fds).
    pub fn reply(&self, req: &Header, parts: &[&[u8]]) -> Result<(), TransportError> {
        let len = parts.iter().map(|p| p.len()).sum();
        send_message(
            self.sock.as_fd(),
            &Header::reply_to(req, len),
            parts,
            &[],
            None,
        )
    }

    pub fn version(&mut self, caps: &Capabilities) -> Message {
        let v = Version {
            major: 0,
            minor: 1,
            caps: caps.clone(),
        };
        self.call(1, &v.encode(), &[])
    }
}

pub fn errno_of(m: &Message) -> Option<i32> {
    m.header.is_error().then_some(m.header.error as i32)
}
