//! Test support, not part of the API: shared by this crate's tests, the
//! cross-process tests (`vfio-sidecar-tests`) and the fuzz harnesses (`fuzz/`,
//! its own workspace, which depends on this crate by path).
//!
//! * fds for tests: [`memfd`], [`eventfd`], [`pipe`], [`eventfd_read`],
//!   [`eventfd_signal`];
//! * [`sendmsg_fds`]: arbitrary bytes with `SCM_RIGHTS` fds in one
//!   `sendmsg`, for hostile peers (the [`crate::transport`] senders only send
//!   well-framed messages);
//! * [`watchdog`]: runs a peer that may hang in a thread, bounded;
//! * [`version_payload`], [`client_version_payload`]: VERSION payloads;
//! * [`ToyHandler`]: a small device behind a [`crate::ServerConnection`]
//!   (bounds-checked everywhere: the protocol fuzz target drives it too), and
//!   its description [`toy_desc`] / [`TOY_DTB`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::time::Duration;

use crate::caps::{Capabilities, Limits, SidecarCaps};
use crate::client::{proposal, ClientOptions};
use crate::ext::{
    ClearMode, ClearReg, ClockDesc, DeviceDescription, DeviceKind, EoiDesc, EoiPolicy, IrqDesc,
    IrqStats, IrqTrigger, RegionDesc,
};
use crate::message::{
    DeviceInfo, DmaMap, DmaUnmap, IrqAction, IrqDataType, IrqInfo, RegionInfo, SetIrqs, SparseArea,
    SubRegionIoFd, Version, IO_FD_TYPE_IOEVENTFD, REGION_INFO_FLAG_MMAP, REGION_INFO_FLAG_READ,
    REGION_INFO_FLAG_WRITE,
};
use crate::{Errno, Handler, Negotiated};

/// Owns the descriptor a system call just returned (negative: `errno`).
fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just created for us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A close-on-exec memfd named `name` (shows as `memfd:NAME` in
/// `/proc/PID/maps`) of `size` bytes.
pub fn memfd(name: &str, size: u64) -> io::Result<OwnedFd> {
    let name = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: memfd_create reads the NUL-terminated name; no other memory.
    let file = File::from(owned(unsafe {
        libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC)
    })?);
    file.set_len(size)?;
    Ok(file.into())
}

/// A close-on-exec eventfd (counter 0), non-blocking if `nonblocking`.
pub fn eventfd(nonblocking: bool) -> io::Result<OwnedFd> {
    let flags = libc::EFD_CLOEXEC | if nonblocking { libc::EFD_NONBLOCK } else { 0 };
    // SAFETY: eventfd(2) takes no pointers.
    owned(unsafe { libc::eventfd(0, flags) })
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut p = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((owned(p[0])?, owned(p[1])?))
}

/// Reads (and resets) a non-blocking eventfd's counter; 0 if not signalled.
pub fn eventfd_read(fd: RawFd) -> u64 {
    let mut v = 0u64;
    // SAFETY: reads at most 8 bytes into a live u64.
    let n = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
    if n == 8 {
        v
    } else {
        0
    }
}

/// Adds 1 to an eventfd's counter.
pub fn eventfd_signal(fd: RawFd) -> io::Result<()> {
    let v = 1u64;
    // SAFETY: writes 8 bytes from a live u64.
    match unsafe { libc::write(fd, (&v as *const u64).cast(), 8) } {
        8 => Ok(()),
        n if n < 0 => Err(io::Error::last_os_error()),
        _ => Err(io::ErrorKind::WriteZero.into()),
    }
}

/// A control buffer (8-byte aligned) holding one `SCM_RIGHTS` message with
/// `fds`, and its length in bytes.
fn rights(fds: &[RawFd]) -> io::Result<(Vec<u64>, usize)> {
    let len = u32::try_from(std::mem::size_of_val(fds)).map_err(io::Error::other)?;
    // SAFETY: CMSG_SPACE and CMSG_LEN are pure arithmetic.
    let (space, cmsg_len) = unsafe { (libc::CMSG_SPACE(len) as usize, libc::CMSG_LEN(len)) };
    let mut buf = vec![0u64; space.div_ceil(8)];
    let hdr = buf.as_mut_ptr().cast::<libc::cmsghdr>();
    // SAFETY: `buf` is CMSG_SPACE(len) bytes, 8-byte aligned: the header at
    // its start (where CMSG_FIRSTHDR puts it) and `len` bytes of data at
    // CMSG_DATA fit inside it.
    unsafe {
        (*hdr).cmsg_len = cmsg_len as _;
        (*hdr).cmsg_level = libc::SOL_SOCKET;
        (*hdr).cmsg_type = libc::SCM_RIGHTS;
        let data = libc::CMSG_DATA(hdr);
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), data, len as usize);
    }
    Ok((buf, space))
}

/// One `sendmsg(MSG_NOSIGNAL | flags)` of `bytes` with `fds` attached
/// (`SCM_RIGHTS`, none if empty); returns how many bytes went out. `flags`:
/// e.g. `MSG_DONTWAIT`; the socket's own blocking mode and timeouts apply.
pub fn sendmsg_fds(
    fd: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[RawFd],
    flags: libc::c_int,
) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: an all-zero msghdr is a valid value; the fields are set below.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    let mut control = rights(fds)?;
    if !fds.is_empty() {
        mh.msg_control = control.0.as_mut_ptr().cast();
        mh.msg_controllen = control.1 as _;
    }
    // SAFETY: mh points to live iovec and control buffers for the call.
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &mh, libc::MSG_NOSIGNAL | flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// A VERSION payload: version 0.1 offering `caps`.
pub fn version_payload(caps: Capabilities) -> Vec<u8> {
    Version {
        major: 0,
        minor: 1,
        caps,
    }
    .encode()
}

/// The VERSION payload a [`crate::Client`] sends: 0.1 with the default
/// proposal, the `org.vfio-sidecar` extension proposed if `extension`.
pub fn client_version_payload(extension: bool) -> Vec<u8> {
    let opts = ClientOptions {
        propose_extension: extension,
        ..ClientOptions::default()
    };
    version_payload(proposal(&opts))
}

/// Runs `f` in a thread and waits at most `timeout` for its result; panics
/// naming `what` if none comes (the peer hung, or panicked). For peers we
/// did not write that block forever on some errors.
pub fn watchdog<T: Send + 'static>(
    what: &str,
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(timeout) {
        Ok(v) => v,
        Err(_) => panic!("{what}: no result within {timeout:?} (peer hung or panicked)"),
    }
}

/// Size of [`ToyHandler`]'s region 0.
pub const REG_SIZE: usize = 0x1000;
/// Sparse areas of [`ToyHandler`]'s region 2 (forces an argsz retry).
pub const NUM_SPARSE_BIG: usize = 12;
/// The "DTB" [`ToyHandler`] returns with its description.
pub const TOY_DTB: &[u8] = &[0xd0, 0x0d, 0xfe, 0xed, 0, 0, 0, 0x28];

/// [`ToyHandler`]'s description: a PL330-like AMBA device (100 MHz
/// `apb_pclk`, region 0 at 0x0900_0000, one level-high IRQ cleared by a W1C
/// write of bit 0 at 0x2c).
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

/// `start..start + len` if it lies within `0..size`.
fn range(start: u64, len: usize, size: usize) -> Result<std::ops::Range<usize>, Errno> {
    let start = usize::try_from(start).map_err(|_| Errno::EINVAL)?;
    match start.checked_add(len) {
        Some(end) if end <= size => Ok(start..end),
        _ => Err(Errno::EINVAL),
    }
}

/// The bytes of [`ToyHandler`]'s region 0 an access of `len` at `offset`
/// of `region` touches (only region 0 is trapped).
fn regs_range(region: u32, offset: u64, len: usize) -> Result<std::ops::Range<usize>, Errno> {
    if region != 0 {
        return Err(Errno::EINVAL);
    }
    range(offset, len, REG_SIZE)
}

/// A toy device: region 0 = 4 KiB RAM (trapped), region 1 = 8 KiB memfd with
/// two sparse areas, region 2 = the same memfd with [`NUM_SPARSE_BIG`] sparse
/// areas; IRQ index 0 with 2 vectors; a DMA table; the extension offered.
/// Every field is public for tests to set up and inspect.
#[derive(Debug)]
pub struct ToyHandler {
    /// What VERSION offers (fds per message, transfer size, DMA maps).
    pub limits: Limits,
    /// Region 0's contents.
    pub regs: Vec<u8>,
    /// Regions 1 and 2 (starts with `mmap-region`).
    pub mmap_fd: OwnedFd,
    /// DMA table: IOVA → (size, flags, fd).
    pub maps: BTreeMap<u64, (u64, u32, Option<OwnedFd>)>,
    /// Trigger eventfds of IRQ index 0.
    pub irq_fds: Vec<Option<OwnedFd>>,
    /// Mask state of IRQ index 0's vectors.
    pub masked: Vec<bool>,
    /// DEVICE_RESETs seen.
    pub resets: u32,
    /// Offer the `org.vfio-sidecar` extension in VERSION.
    pub offer_extension: bool,
    /// What was negotiated.
    pub negotiated: Option<Negotiated>,
    /// The ioeventfd of region 0 (GET_REGION_IO_FDS).
    pub io_fd: OwnedFd,
    /// Answer GET_REGION_IO_FDS with no sub-regions.
    pub io_fds_empty: bool,
    /// Region writes seen: (region, offset, data).
    pub writes: Vec<(u32, u64, Vec<u8>)>,
    /// DEVICE_GET_INFO flags.
    pub device_flags: u32,
}

impl ToyHandler {
    /// A fresh device offering `limits`.
    pub fn with_limits(limits: Limits) -> io::Result<Self> {
        let mmap_fd = memfd("toy-mmap", 0x2000)?;
        let f = File::from(mmap_fd.try_clone()?);
        std::os::unix::fs::FileExt::write_all_at(&f, b"mmap-region", 0)?;
        Ok(ToyHandler {
            limits,
            regs: (0..REG_SIZE).map(|i| i as u8).collect(),
            mmap_fd,
            maps: BTreeMap::new(),
            irq_fds: vec![None, None],
            masked: vec![false, false],
            resets: 0,
            offer_extension: true,
            negotiated: None,
            io_fd: eventfd(true)?,
            io_fds_empty: false,
            writes: Vec::new(),
            device_flags: 1 | 8,
        })
    }
}

impl Default for ToyHandler {
    /// Offers 8 fds per message, otherwise [`Limits::default`].
    fn default() -> Self {
        let limits = Limits {
            max_msg_fds: 8,
            ..Limits::default()
        };
        ToyHandler::with_limits(limits).expect("toy device fds")
    }
}

impl Handler for ToyHandler {
    fn version(&mut self, _client: &Capabilities) -> Result<Capabilities, Errno> {
        Ok(Capabilities {
            write_multiple: true,
            sidecar: self.offer_extension.then_some(SidecarCaps {
                exec_enforced: Some(true),
                ..SidecarCaps::client_proposal()
            }),
            ..Capabilities::from_limits(&self.limits)
        })
    }

    fn negotiated(&mut self, n: &Negotiated) {
        self.negotiated = Some(n.clone());
    }

    fn dma_map(&mut self, req: &DmaMap, fd: Option<OwnedFd>) -> Result<(), Errno> {
        let end = req.address.checked_add(req.size).ok_or(Errno::EINVAL)?;
        if self
            .maps
            .iter()
            .any(|(&a, &(s, _, _))| req.address < a.saturating_add(s) && a < end)
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
        let (flags, size, sparse) = match index {
            0 => (
                REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE,
                REG_SIZE,
                None,
            ),
            1 | 2 => {
                let n = if index == 1 { 2 } else { NUM_SPARSE_BIG };
                let sparse = (0..n)
                    .map(|i| SparseArea {
                        offset: i as u64 * 0x1000,
                        size: 0x800,
                    })
                    .collect();
                let rwm = REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE | REGION_INFO_FLAG_MMAP;
                (rwm, 0x2000, Some(sparse))
            }
            _ => return Err(Errno::EINVAL),
        };
        let fd = sparse.is_some().then(|| self.mmap_fd.as_raw_fd());
        let info = RegionInfo {
            index,
            flags,
            size: size as u64,
            offset: 0,
            sparse,
        };
        Ok((info, fd))
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
        if req.count == 0 {
            self.irq_fds.iter_mut().for_each(|f| *f = None);
            return Ok(());
        }
        let range = range(u64::from(req.start), req.count as usize, self.irq_fds.len())?;
        match (req.action(), req.data_type()) {
            (Some(IrqAction::Trigger), Some(IrqDataType::Eventfd)) => {
                let mut it = fds.into_iter();
                for slot in self.irq_fds.get_mut(range).into_iter().flatten() {
                    *slot = it.next();
                }
            }
            (Some(action), Some(dt)) => {
                for (k, i) in range.enumerate() {
                    let on = dt == IrqDataType::None || req.bools.get(k) == Some(&true);
                    if !on {
                        continue;
                    }
                    match action {
                        IrqAction::Mask | IrqAction::Unmask => {
                            if let Some(m) = self.masked.get_mut(i) {
                                *m = action == IrqAction::Mask;
                            }
                        }
                        IrqAction::Trigger => {
                            if let Some(Some(f)) = self.irq_fds.get(i) {
                                eventfd_signal(f.as_raw_fd()).map_err(|_| Errno::EIO)?;
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
        let src = self.regs.get(regs_range(region, offset, buf.len())?);
        buf.copy_from_slice(src.ok_or(Errno::EINVAL)?);
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let dst = self.regs.get_mut(regs_range(region, offset, data.len())?);
        dst.ok_or(Errno::EINVAL)?.copy_from_slice(data);
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
        if index != 0 {
            return Err(Errno::EINVAL);
        }
        range(u64::from(start), count as usize, 2)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::recv_with_fds;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn sendmsg_fds_passes_bytes_and_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, w) = pipe().unwrap();
        let e = eventfd(true).unwrap();
        let fds = [w.as_raw_fd(), e.as_raw_fd()];
        assert_eq!(sendmsg_fds(a.as_fd(), b"abc", &fds, 0).unwrap(), 3);
        assert_eq!(sendmsg_fds(a.as_fd(), b"de", &[], 0).unwrap(), 2);
        let mut buf = [0u8; 8];
        let (n, got, truncated) = recv_with_fds(b.as_fd(), &mut buf, 4).unwrap();
        assert_eq!((&buf[..n], got.len(), truncated), (&b"abc"[..], 2, false));
        // The received fds are the pipe's write end and the eventfd.
        let mut f = File::from(got.into_iter().next().unwrap());
        std::io::Write::write_all(&mut f, b"x").unwrap();
        let mut one = [0u8; 1];
        std::io::Read::read_exact(&mut File::from(r), &mut one).unwrap();
        assert_eq!(&one, b"x");
        let (n, got, _) = recv_with_fds(b.as_fd(), &mut buf, 4).unwrap();
        assert_eq!((&buf[..n], got.len()), (&b"de"[..], 0));
        // Signal/read round trip on the eventfd.
        eventfd_signal(e.as_raw_fd()).unwrap();
        assert_eq!(eventfd_read(e.as_raw_fd()), 1);
        assert_eq!(eventfd_read(e.as_raw_fd()), 0);
    }

    #[test]
    fn toy_handler_refuses_out_of_range_requests() {
        let mut h = ToyHandler::default();
        let mut b = [0u8; 4];
        assert_eq!(h.region_read(0, u64::MAX, &mut b), Err(Errno::EINVAL));
        assert_eq!(
            h.region_read(0, REG_SIZE as u64 - 2, &mut b),
            Err(Errno::EINVAL)
        );
        assert_eq!(h.region_write(1, 0, &b), Err(Errno::EINVAL));
        h.region_write(0, 4, &[1, 2, 3, 4]).unwrap();
        h.region_read(0, 4, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        assert_eq!(
            h.dma_map(&DmaMap::new(1, 0, u64::MAX - 0xfff, 0x2000), None),
            Err(Errno::EINVAL)
        );
        let wrap = SetIrqs::new(0, IrqAction::Mask, IrqDataType::None, u32::MAX, 2, vec![]);
        assert_eq!(h.set_irqs(&wrap, vec![]), Err(Errno::EINVAL));
        let mask = SetIrqs::new(0, IrqAction::Mask, IrqDataType::None, 1, 1, vec![]);
        h.set_irqs(&mask, vec![]).unwrap();
        assert_eq!(h.masked, [false, true]);
        assert!(h.irq_stats(0, u32::MAX, 2).is_err());
        assert_eq!(h.irq_stats(0, 1, 1).unwrap()[0].device_events, 11);
    }

    #[test]
    fn memfd_has_its_size_and_name() {
        let m = memfd("testing-memfd", 0x3000).unwrap();
        assert_eq!(
            File::from(m.try_clone().unwrap()).metadata().unwrap().len(),
            0x3000
        );
        let link = std::fs::read_link(format!("/proc/self/fd/{}", m.as_raw_fd())).unwrap();
        assert!(
            link.to_string_lossy().contains("memfd:testing-memfd"),
            "{link:?}"
        );
        assert!(memfd("nul\0inside", 1).is_err());
    }

    #[test]
    fn version_payloads() {
        let v = Version::decode(&client_version_payload(true)).unwrap();
        assert_eq!((v.major, v.minor), (0, 1));
        assert!(v.caps.sidecar.is_some());
        let v = Version::decode(&client_version_payload(false)).unwrap();
        assert!(v.caps.sidecar.is_none());
    }

    #[test]
    fn watchdog_returns_the_result() {
        assert_eq!(watchdog("adder", Duration::from_secs(10), || 2 + 2), 4);
    }
}
