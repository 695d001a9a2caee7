//! Blocking vfio-user client ([`Client`]).
//!
//! Every request waits for its reply up to `reply_timeout`; an error reply is
//! [`ClientError::Remote`], a dead server [`ClientError::Disconnected`] (never
//! a hang). Replies are matched by message id and command; stale replies (after
//! a timeout) are dropped. Server-to-client `DMA_READ`/`DMA_WRITE` commands that
//! arrive while waiting are served by the callback set with
//! [`Client::set_dma_handler`], or answered with `ENOTSUP`; a client that
//! waits for an interrupt rather than a reply serves them with
//! [`Client::serve_requests`].

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::caps::{Capabilities, Limits, Negotiated, SidecarCaps, VERSION_MAJOR, VERSION_MINOR};
use crate::error::{ClientError, DecodeError, Errno, TransportError};
use crate::ext::{DeviceDescription, IrqStats};
use crate::header::{command as cmd, Header, HEADER_SIZE};
use crate::message::*;
use crate::transport::{send_bytes, send_message, wait_fd, Incoming, Message, MessageReader};

pub use crate::message::DmaProt;

/// [`ClientOptions::reply_timeout`] value meaning "no timeout".
pub const NO_REPLY_TIMEOUT: Duration = Duration::MAX;

/// `t` as an optional bound (`None` for [`NO_REPLY_TIMEOUT`]).
fn bound(t: Duration) -> Option<Duration> {
    (t != NO_REPLY_TIMEOUT).then_some(t)
}

/// The deadline `t` from now (`None`: none, or too far to represent).
fn deadline_in(t: Duration) -> Option<Instant> {
    bound(t).and_then(|t| Instant::now().checked_add(t))
}

/// Options of [`Client::connect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    /// How long to wait for each reply (and for a full socket to drain).
    /// [`NO_REPLY_TIMEOUT`] (`Duration::MAX`): wait as long as it takes — a
    /// dead server still ends the wait (EOF), a hung one hangs the caller —
    /// and the kernel arms no timer for each wait (measurably cheaper for
    /// trapped MMIO on one core: `docs/benchmarks.md` §1).
    pub reply_timeout: Duration,
    /// Propose the `org.vfio-sidecar` extension in VERSION.
    pub propose_extension: bool,
    /// Propose `write_multiple`.
    pub write_multiple: bool,
    /// What this client accepts (fds per message, transfer size, maps).
    pub limits: Limits,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            reply_timeout: Duration::from_secs(5),
            propose_extension: true,
            write_multiple: true,
            limits: Limits::default(),
        }
    }
}

/// A server-to-client DMA access handed to the callback.
#[derive(Debug)]
pub enum DmaRequest<'a> {
    /// `DMA_READ`: fill `buf` from client memory at `address`.
    Read {
        /// Client DMA address.
        address: u64,
        /// Destination.
        buf: &'a mut [u8],
    },
    /// `DMA_WRITE`: store `data` at `address`.
    Write {
        /// Client DMA address.
        address: u64,
        /// The data.
        data: &'a [u8],
    },
}

/// Callback serving server-to-client DMA accesses.
pub type DmaHandler = Box<dyn FnMut(DmaRequest<'_>) -> Result<(), Errno> + Send>;

/// Data of a [`Client::set_irqs`] request.
#[derive(Debug, Clone, Copy)]
pub enum IrqData<'a> {
    /// `DATA_NONE`.
    None,
    /// `DATA_BOOL`: one flag per vector (`count` entries).
    Bool(&'a [bool]),
    /// `DATA_EVENTFD`: one entry per vector; `None` (-1) de-assigns that vector.
    /// An empty slice de-assigns the whole range.
    Eventfds(&'a [Option<BorrowedFd<'a>>]),
}

/// A blocking vfio-user client connection.
pub struct Client {
    sock: UnixStream,
    reader: MessageReader,
    next_id: u16,
    negotiated: Negotiated,
    opts: ClientOptions,
    dma_handler: Option<DmaHandler>,
    dma_maps: u32,
    /// The first receive of a reply may block (SO_RCVTIMEO = reply timeout).
    blocking_recv: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("fd", &self.sock.as_raw_fd())
            .field("negotiated", &self.negotiated)
            .field("dma_maps", &self.dma_maps)
            .finish_non_exhaustive()
    }
}

impl AsRawFd for Client {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// Builds the capabilities a client with `opts` proposes.
pub fn proposal(opts: &ClientOptions) -> Capabilities {
    Capabilities {
        write_multiple: opts.write_multiple,
        sidecar: opts.propose_extension.then(SidecarCaps::client_proposal),
        ..Capabilities::from_limits(&opts.limits)
    }
}

/// SO_RCVTIMEO = `t` (at least 1 µs: zero would mean "forever").
fn set_rcvtimeo(sock: &UnixStream, t: Duration) -> Result<(), ClientError> {
    sock.set_read_timeout(bound(t).map(|t| t.max(Duration::from_micros(1))))
        .map_err(|e| ClientError::Transport(TransportError::Io(e)))
}

fn bad_reply(command: u16, source: DecodeError) -> ClientError {
    ClientError::BadReply {
        command: cmd::name(command),
        source,
    }
}

impl Client {
    /// Connects to the server socket at `path` and performs VERSION.
    pub fn connect(path: &Path, opts: ClientOptions) -> Result<Self, ClientError> {
        let sock =
            UnixStream::connect(path).map_err(|e| ClientError::Transport(TransportError::Io(e)))?;
        Self::from_stream(sock, opts)
    }

    /// Uses an already connected stream and performs VERSION.
    pub fn from_stream(sock: UnixStream, opts: ClientOptions) -> Result<Self, ClientError> {
        // Blocking socket: replies are received with one blocking `recvmsg`
        // bounded by SO_RCVTIMEO; every send uses MSG_DONTWAIT (and waits for
        // space with poll up to the timeout).
        sock.set_nonblocking(false)
            .map_err(|e| ClientError::Transport(TransportError::Io(e)))?;
        set_rcvtimeo(&sock, opts.reply_timeout)?;
        let ours = proposal(&opts);
        let mut c = Client {
            sock,
            reader: MessageReader::new(&opts.limits),
            next_id: 0,
            negotiated: Negotiated {
                major: VERSION_MAJOR,
                minor: VERSION_MINOR,
                client: ours.clone(),
                server: Capabilities::default(),
            },
            opts,
            dma_handler: None,
            dma_maps: 0,
            blocking_recv: true,
        };
        let req = Version {
            major: VERSION_MAJOR,
            minor: VERSION_MINOR,
            caps: ours.clone(),
        };
        let m = c.transact(cmd::VERSION, &[&req.encode()], &[])?;
        let v = Version::decode(&m.payload).map_err(|e| bad_reply(cmd::VERSION, e))?;
        if v.major != VERSION_MAJOR || v.minor > VERSION_MINOR {
            return Err(ClientError::Negotiation(format!(
                "server answered version {}.{} to {}.{}",
                v.major, v.minor, VERSION_MAJOR, VERSION_MINOR
            )));
        }
        if v.caps.write_multiple && !ours.write_multiple {
            return Err(ClientError::Negotiation(
                "server enabled write_multiple which was not proposed".into(),
            ));
        }
        match (&v.caps.sidecar, &ours.sidecar) {
            (None, _) => {}
            (Some(s), Some(p)) if s.is_subset_of(p) => {}
            (Some(_), _) => {
                return Err(ClientError::Negotiation(
                    "server's org.vfio-sidecar capability is not a subset of the proposal".into(),
                ))
            }
        }
        if v.caps.max_data_xfer_size == 0 {
            return Err(ClientError::Negotiation("max_data_xfer_size 0".into()));
        }
        c.negotiated = Negotiated {
            major: v.major,
            minor: v.minor,
            client: ours,
            server: v.caps,
        };
        log::debug!("negotiated {:?}", c.negotiated);
        Ok(c)
    }

    /// The negotiation result.
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// Sets the callback serving server-to-client DMA_READ/DMA_WRITE.
    pub fn set_dma_handler(&mut self, h: DmaHandler) {
        self.dma_handler = Some(h);
    }

    /// Changes the reply timeout.
    pub fn set_reply_timeout(&mut self, t: Duration) {
        self.opts.reply_timeout = t;
        // Should SO_RCVTIMEO not take the new value, wait with poll instead.
        self.blocking_recv = match set_rcvtimeo(&self.sock, t) {
            Ok(()) => true,
            Err(e) => {
                log::warn!("cannot set the reply timeout on the socket ({e}); using poll");
                false
            }
        };
    }

    fn server_limits(&self) -> Limits {
        Limits::from_caps(&self.negotiated.server)
    }

    /// Largest data transfer usable in both directions.
    pub fn max_xfer(&self) -> u32 {
        self.negotiated
            .server
            .max_data_xfer_size
            .min(self.opts.limits.max_data_xfer_size)
    }

    fn transact(
        &mut self,
        command: u16,
        parts: &[&[u8]],
        fds: &[RawFd],
    ) -> Result<Message, ClientError> {
        let name = cmd::name(command);
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let max = self.server_limits().max_msg_size();
        if HEADER_SIZE + len > max {
            return Err(ClientError::NotAllowed(format!(
                "{name}: message of {} bytes exceeds the server's limit {max}",
                HEADER_SIZE + len
            )));
        }
        if fds.len() > self.negotiated.server.max_msg_fds as usize {
            return Err(ClientError::NotAllowed(format!(
                "{name}: {} fds exceed the server's max_msg_fds {}",
                fds.len(),
                self.negotiated.server.max_msg_fds
            )));
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let hdr = Header::command(id, command, len);
        let timeout = bound(self.opts.reply_timeout);
        send_message(self.sock.as_fd(), &hdr, parts, fds, timeout).map_err(|e| match e {
            TransportError::Timeout => ClientError::Timeout { command: name },
            e => ClientError::from(e),
        })?;
        let deadline = deadline_in(self.opts.reply_timeout);
        self.await_reply(id, command, deadline, self.blocking_recv)
    }

    /// Receives until the reply to request `id` (`command`) arrives, serving
    /// server requests and dropping stale replies meanwhile. `first_blocking`:
    /// the first receive blocks (the socket is blocking, with SO_RCVTIMEO =
    /// the reply timeout), so one `recvmsg` usually brings the whole reply;
    /// later ones (stale replies, server requests, partial messages) poll
    /// with what is left of `deadline` first.
    fn await_reply(
        &mut self,
        id: u16,
        command: u16,
        deadline: Option<Instant>,
        first_blocking: bool,
    ) -> Result<Message, ClientError> {
        let name = cmd::name(command);
        let mut first = first_blocking;
        loop {
            let next = match self.reader.take() {
                Ok(Some(i)) => Ok(Some(i)),
                Ok(None) => {
                    let filled = if first {
                        first = false;
                        self.reader.fill(self.sock.as_fd(), true)
                    } else {
                        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                        if left.is_some_and(|l| l.is_zero())
                            || !wait_fd(self.sock.as_fd(), libc::POLLIN, left)
                                .map_err(|e| ClientError::Transport(TransportError::Io(e)))?
                        {
                            return Err(ClientError::Timeout { command: name });
                        }
                        self.reader.fill(self.sock.as_fd(), false)
                    };
                    match filled {
                        Ok(_) => continue,
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            match next {
                Ok(Some(Incoming::Message(m))) => {
                    if m.header.is_reply() {
                        if m.header.msg_id == id && m.header.command == command {
                            if m.header.is_error() {
                                let errno = match m.header.error as i32 {
                                    0 => Errno::EIO,
                                    e => Errno(e),
                                };
                                return Err(ClientError::Remote {
                                    command: name,
                                    errno,
                                });
                            }
                            return Ok(m);
                        }
                        log::warn!(
                            "dropping stale reply id {} for {}",
                            m.header.msg_id,
                            cmd::name(m.header.command)
                        );
                        continue;
                    }
                    self.serve_server_request(m)?;
                }
                Ok(Some(Incoming::Bad { header, error })) => {
                    if header.is_reply() {
                        if header.msg_id == id {
                            return Err(bad_reply(
                                command,
                                DecodeError::Limit {
                                    what: name,
                                    reason: format!("reply frame rejected: {error:?}"),
                                },
                            ));
                        }
                        continue;
                    }
                    if !header.no_reply() {
                        self.send_error(&header, Errno::EINVAL)?;
                    }
                }
                Ok(None) => {}
                Err(e) => return Err(ClientError::from(e)),
            }
        }
    }

    /// Serves the server's DMA_READ/DMA_WRITE requests (with the callback
    /// of [`Client::set_dma_handler`]) for up to `timeout` without sending a
    /// request of its own: what a client does while it waits for an
    /// interrupt rather than a reply, so a device reaching memory mapped
    /// without an fd keeps going. Returns the number of requests served;
    /// replies that arrive meanwhile (stale ones, after a timeout) are
    /// dropped.
    pub fn serve_requests(&mut self, timeout: Duration) -> Result<usize, ClientError> {
        let deadline = Instant::now().checked_add(timeout);
        let mut served = 0;
        loop {
            match self.reader.take() {
                Ok(Some(Incoming::Message(m))) if m.header.is_reply() => {
                    log::warn!(
                        "dropping stale reply id {} for {}",
                        m.header.msg_id,
                        cmd::name(m.header.command)
                    );
                }
                Ok(Some(Incoming::Message(m))) => {
                    self.serve_server_request(m)?;
                    served += 1;
                }
                Ok(Some(Incoming::Bad { header, .. })) => {
                    if !header.is_reply() && !header.no_reply() {
                        self.send_error(&header, Errno::EINVAL)?;
                    }
                }
                Ok(None) => {
                    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    if left.is_some_and(|l| l.is_zero())
                        || !wait_fd(self.sock.as_fd(), libc::POLLIN, left)
                            .map_err(|e| ClientError::Transport(TransportError::Io(e)))?
                    {
                        return Ok(served);
                    }
                    self.reader.fill(self.sock.as_fd(), false)?;
                }
                Err(e) => return Err(ClientError::from(e)),
            }
        }
    }

    fn send_error(&mut self, req: &Header, e: Errno) -> Result<(), ClientError> {
        send_message(
            self.sock.as_fd(),
            &Header::error_reply(req, e.raw()),
            &[],
            &[],
            bound(self.opts.reply_timeout),
        )
        .map_err(ClientError::from)
    }

    fn serve_server_request(&mut self, m: Message) -> Result<(), ClientError> {
        let h = m.header;
        let max = self.opts.limits.max_data_xfer_size as u64;
        let result: Result<Vec<u8>, Errno> = match h.command {
            cmd::DMA_READ => match DmaAccess::decode("DMA_READ", &m.payload, false) {
                Err(e) => Err(e.errno()),
                Ok(req) if req.count > max => Err(Errno::EINVAL),
                Ok(req) => match self.dma_handler.as_mut() {
                    None => Err(Errno::ENOTSUP),
                    Some(cb) => {
                        let mut buf = vec![0u8; req.count as usize];
                        cb(DmaRequest::Read {
                            address: req.address,
                            buf: &mut buf,
                        })
                        .map(|()| {
                            DmaAccess {
                                address: req.address,
                                count: req.count,
                                data: buf,
                            }
                            .encode()
                        })
                    }
                },
            },
            cmd::DMA_WRITE => match DmaAccess::decode("DMA_WRITE", &m.payload, true) {
                Err(e) => Err(e.errno()),
                Ok(req) if req.count > max => Err(Errno::EINVAL),
                Ok(req) => match self.dma_handler.as_mut() {
                    None => Err(Errno::ENOTSUP),
                    Some(cb) => cb(DmaRequest::Write {
                        address: req.address,
                        data: &req.data,
                    })
                    .map(|()| {
                        DmaAccess {
                            address: req.address,
                            count: req.count,
                            data: Vec::new(),
                        }
                        .encode()
                    }),
                },
            },
            _ => Err(Errno::ENOSYS),
        };
        if h.no_reply() {
            return Ok(());
        }
        match result {
            Ok(payload) => send_message(
                self.sock.as_fd(),
                &Header::reply_to(&h, payload.len()),
                &[&payload],
                &[],
                bound(self.opts.reply_timeout),
            )
            .map_err(ClientError::from),
            Err(e) => self.send_error(&h, e),
        }
    }

    fn expect_empty(command: u16, m: &Message) -> Result<(), ClientError> {
        decode_empty(cmd::name(command), &m.payload).map_err(|e| bad_reply(command, e))
    }

    /// DMA_MAP of `size` bytes at `iova`, backed by `fd` at `fd_offset`.
    /// `prot.exec` is sent only when `dma_exec` was negotiated (otherwise READ
    /// implies EXEC, as with upstream VFIO).
    pub fn dma_map(
        &mut self,
        iova: u64,
        size: u64,
        fd: BorrowedFd<'_>,
        fd_offset: u64,
        prot: DmaProt,
    ) -> Result<(), ClientError> {
        self.dma_map_inner(iova, size, Some(fd), fd_offset, prot)
    }

    /// DMA_MAP without an fd (the server must use DMA_READ/DMA_WRITE).
    pub fn dma_map_without_fd(
        &mut self,
        iova: u64,
        size: u64,
        prot: DmaProt,
    ) -> Result<(), ClientError> {
        self.dma_map_inner(iova, size, None, 0, prot)
    }

    fn dma_map_inner(
        &mut self,
        iova: u64,
        size: u64,
        fd: Option<BorrowedFd<'_>>,
        fd_offset: u64,
        prot: DmaProt,
    ) -> Result<(), ClientError> {
        if self.dma_maps >= self.negotiated.server.max_dma_maps {
            return Err(ClientError::NotAllowed(format!(
                "server allows at most {} DMA maps",
                self.negotiated.server.max_dma_maps
            )));
        }
        let req = DmaMap::new(
            prot.to_flags(self.negotiated.dma_exec()),
            fd_offset,
            iova,
            size,
        );
        let raw: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
        let m = self.transact(cmd::DMA_MAP, &[&req.encode()], &raw)?;
        Self::expect_empty(cmd::DMA_MAP, &m)?;
        self.dma_maps += 1;
        Ok(())
    }

    /// DMA_UNMAP of exactly a previous mapping.
    pub fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<(), ClientError> {
        self.dma_unmap_inner(DmaUnmap::new(0, iova, size))?;
        self.dma_maps = self.dma_maps.saturating_sub(1);
        Ok(())
    }

    /// DMA_UNMAP with `VFIO_DMA_UNMAP_FLAG_ALL`.
    pub fn dma_unmap_all(&mut self) -> Result<(), ClientError> {
        self.dma_unmap_inner(DmaUnmap::new(DMA_UNMAP_FLAG_ALL, 0, 0))?;
        self.dma_maps = 0;
        Ok(())
    }

    fn dma_unmap_inner(&mut self, req: DmaUnmap) -> Result<(), ClientError> {
        let m = self.transact(cmd::DMA_UNMAP, &[&req.encode()], &[])?;
        // The spec says the reply echoes the request; accept an empty reply too.
        if !m.payload.is_empty() {
            DmaUnmap::decode(&m.payload).map_err(|e| bad_reply(cmd::DMA_UNMAP, e))?;
        }
        Ok(())
    }

    /// DEVICE_GET_INFO.
    pub fn device_info(&mut self) -> Result<DeviceInfo, ClientError> {
        let m = self.transact(
            cmd::DEVICE_GET_INFO,
            &[&DeviceInfo::request().encode()],
            &[],
        )?;
        DeviceInfo::decode(&m.payload).map_err(|e| bad_reply(cmd::DEVICE_GET_INFO, e))
    }

    /// DEVICE_GET_REGION_INFO, with the sparse areas and the mmap fd (if MMAP).
    /// Retries with a larger `argsz` when the server says the caps did not fit.
    pub fn region_info(
        &mut self,
        index: u32,
    ) -> Result<(RegionInfo, Option<OwnedFd>), ClientError> {
        let c = cmd::DEVICE_GET_REGION_INFO;
        let mut argsz: u32 = 32 + 16 + 16 * 8;
        for _ in 0..4 {
            let req = RegionInfoRequest { argsz, index };
            let m = self.transact(c, &[&req.encode()], &[])?;
            let r = RegionInfo::decode_reply(&m.payload).map_err(|e| bad_reply(c, e))?;
            if r.is_truncated() {
                if r.argsz <= argsz {
                    return Err(bad_reply(
                        c,
                        DecodeError::invalid(
                            "DEVICE_GET_REGION_INFO reply",
                            "capabilities missing although argsz was large enough",
                        ),
                    ));
                }
                if r.argsz as usize > self.reader.max_msg_size() {
                    return Err(bad_reply(
                        c,
                        DecodeError::Limit {
                            what: "DEVICE_GET_REGION_INFO",
                            reason: format!("server needs argsz {}", r.argsz),
                        },
                    ));
                }
                argsz = r.argsz;
                continue;
            }
            let fd = if r.info.flags & REGION_INFO_FLAG_MMAP != 0 {
                m.fds.into_iter().next()
            } else {
                None
            };
            if r.info.flags & REGION_INFO_FLAG_MMAP != 0 && fd.is_none() {
                return Err(bad_reply(
                    c,
                    DecodeError::FdCount {
                        what: "DEVICE_GET_REGION_INFO reply",
                        expected: "1 (MMAP set)".into(),
                        got: 0,
                    },
                ));
            }
            return Ok((r.info, fd));
        }
        Err(bad_reply(
            c,
            DecodeError::invalid("DEVICE_GET_REGION_INFO", "argsz keeps growing"),
        ))
    }

    /// DEVICE_GET_REGION_IO_FDS: sub-regions and the fds they index.
    pub fn region_io_fds(
        &mut self,
        index: u32,
    ) -> Result<(Vec<SubRegionIoFd>, Vec<OwnedFd>), ClientError> {
        let c = cmd::DEVICE_GET_REGION_IO_FDS;
        let mut argsz = RegionIoFdsReply::full_size(8) as u32;
        for _ in 0..4 {
            let req = RegionIoFdsRequest {
                argsz,
                flags: 0,
                index,
                count: 0,
            };
            let m = self.transact(c, &[&req.encode()], &[])?;
            let r = RegionIoFdsReply::decode(&m.payload).map_err(|e| bad_reply(c, e))?;
            if r.argsz > argsz && r.subregions.is_empty() {
                argsz = r.argsz;
                continue;
            }
            if r.subregions
                .iter()
                .any(|s| s.fd_index as usize >= m.fds.len())
            {
                return Err(bad_reply(
                    c,
                    DecodeError::FdCount {
                        what: "DEVICE_GET_REGION_IO_FDS reply",
                        expected: "more than the largest fd_index".into(),
                        got: m.fds.len(),
                    },
                ));
            }
            return Ok((r.subregions, m.fds));
        }
        Err(bad_reply(
            c,
            DecodeError::invalid("DEVICE_GET_REGION_IO_FDS", "argsz keeps growing"),
        ))
    }

    /// DEVICE_GET_IRQ_INFO.
    pub fn irq_info(&mut self, index: u32) -> Result<IrqInfo, ClientError> {
        let c = cmd::DEVICE_GET_IRQ_INFO;
        let m = self.transact(c, &[&IrqInfo::request(index).encode()], &[])?;
        IrqInfo::decode(&m.payload).map_err(|e| bad_reply(c, e))
    }

    /// DEVICE_SET_IRQS. For eventfds, runs of `Some` are sent in messages of at
    /// most the server's `max_msg_fds` fds and runs of `None` as de-assign
    /// messages (no fds) for their sub-range.
    pub fn set_irqs(
        &mut self,
        index: u32,
        action: IrqAction,
        data: IrqData<'_>,
        start: u32,
        count: u32,
    ) -> Result<(), ClientError> {
        match data {
            IrqData::None => self.set_irqs_one(
                SetIrqs::new(index, action, IrqDataType::None, start, count, Vec::new()),
                &[],
            ),
            IrqData::Bool(b) => {
                if b.len() != count as usize {
                    return Err(ClientError::NotAllowed(format!(
                        "{} bools for count {count}",
                        b.len()
                    )));
                }
                self.set_irqs_one(
                    SetIrqs::new(index, action, IrqDataType::Bool, start, count, b.to_vec()),
                    &[],
                )
            }
            IrqData::Eventfds(fds) => {
                if fds.is_empty() {
                    return self.set_irqs_one(
                        SetIrqs::new(
                            index,
                            action,
                            IrqDataType::Eventfd,
                            start,
                            count,
                            Vec::new(),
                        ),
                        &[],
                    );
                }
                if fds.len() != count as usize {
                    return Err(ClientError::NotAllowed(format!(
                        "{} eventfds for count {count}",
                        fds.len()
                    )));
                }
                let max = self.negotiated.server.max_msg_fds as usize;
                let mut i = 0usize;
                while i < fds.len() {
                    let assign = fds.get(i).is_some_and(|f| f.is_some());
                    let mut j = i;
                    while j < fds.len()
                        && fds.get(j).is_some_and(|f| f.is_some()) == assign
                        && (!assign || j - i < max)
                    {
                        j += 1;
                    }
                    if j == i {
                        return Err(ClientError::NotAllowed(
                            "server accepts no fds (max_msg_fds 0)".into(),
                        ));
                    }
                    let raw: Vec<RawFd> = fds
                        .get(i..j)
                        .unwrap_or_default()
                        .iter()
                        .flatten()
                        .map(|f| f.as_raw_fd())
                        .collect();
                    let sub_start = start
                        .checked_add(i as u32)
                        .ok_or_else(|| ClientError::NotAllowed("start + count overflows".into()))?;
                    self.set_irqs_one(
                        SetIrqs::new(
                            index,
                            action,
                            IrqDataType::Eventfd,
                            sub_start,
                            (j - i) as u32,
                            Vec::new(),
                        ),
                        &raw,
                    )?;
                    i = j;
                }
                Ok(())
            }
        }
    }

    fn set_irqs_one(&mut self, req: SetIrqs, fds: &[RawFd]) -> Result<(), ClientError> {
        let m = self.transact(cmd::DEVICE_SET_IRQS, &[&req.encode()], fds)?;
        Self::expect_empty(cmd::DEVICE_SET_IRQS, &m)
    }

    fn check_xfer(&self, len: usize) -> Result<u32, ClientError> {
        let max = self.max_xfer();
        match u32::try_from(len) {
            Ok(n) if n <= max => Ok(n),
            _ => Err(ClientError::NotAllowed(format!(
                "transfer of {len} bytes exceeds max_data_xfer_size {max}"
            ))),
        }
    }

    /// REGION_READ of `len` bytes.
    pub fn region_read(
        &mut self,
        region: u32,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, ClientError> {
        let mut v = vec![0u8; len];
        self.region_read_into(region, offset, &mut v)?;
        Ok(v)
    }

    /// REGION_READ into `buf` (no allocation in steady state).
    pub fn region_read_into(
        &mut self,
        region: u32,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), ClientError> {
        let c = cmd::REGION_READ;
        let count = self.check_xfer(buf.len())?;
        let fixed = RegionAccess::encode_fixed(offset, region, count);
        let m = match self.access_fast(c, &fixed, &[], buf) {
            Some(Ok(None)) => return Ok(()),
            Some(Ok(Some(m))) => m,
            Some(Err(e)) => return Err(e),
            None => self.transact(c, &[&fixed], &[])?,
        };
        let (o, r, n, data) = RegionAccess::decode_fixed("REGION_READ reply", &m.payload)
            .map_err(|e| bad_reply(c, e))?;
        if o != offset || r != region || n != count || data.len() != buf.len() {
            return Err(bad_reply(
                c,
                DecodeError::invalid(
                    "REGION_READ reply",
                    format!(
                        "reply ({o:#x}, {r}, {n}, {} bytes) does not match",
                        data.len()
                    ),
                ),
            ));
        }
        buf.copy_from_slice(data);
        self.reader.recycle(m.payload);
        Ok(())
    }

    /// The fast path of a small trapped access (REGION_READ into `out`, or
    /// REGION_WRITE of `data`): the request built on the stack and sent with
    /// one `send`, one blocking receive, and the reply checked in the receive
    /// buffer and copied out without building a [`Message`]. `Ok(None)`: done.
    /// `Ok(Some(m))`: the reply was not there as expected (another message
    /// first, a partial or odd reply, a timeout): `m` is the reply the general
    /// path then waited for, to be checked by the caller as usual. `None`
    /// from `fast` (nothing sent): the access does not qualify.
    fn access_fast(
        &mut self,
        command: u16,
        fixed: &[u8; RegionAccess::SIZE],
        data: &[u8],
        out: &mut [u8],
    ) -> Option<Result<Option<Message>, ClientError>> {
        const FIXED: usize = RegionAccess::SIZE;
        const MAX: usize = crate::server::FAST_ACCESS_MAX;
        if !self.blocking_recv || !self.reader.is_idle() || data.len() > MAX || out.len() > MAX {
            return None;
        }
        let name = cmd::name(command);
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let len = HEADER_SIZE + FIXED + data.len();
        let mut req = [0u8; HEADER_SIZE + FIXED + MAX];
        req[..HEADER_SIZE]
            .copy_from_slice(&Header::command(id, command, FIXED + data.len()).encode());
        req[HEADER_SIZE..HEADER_SIZE + FIXED].copy_from_slice(fixed);
        req[HEADER_SIZE + FIXED..len].copy_from_slice(data);
        let timeout = bound(self.opts.reply_timeout);
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        if let Err(e) = send_bytes(self.sock.as_fd(), &req[..len], timeout) {
            return Some(Err(match e {
                TransportError::Timeout => ClientError::Timeout { command: name },
                e => ClientError::from(e),
            }));
        }
        if let Err(e) = self.reader.fill(self.sock.as_fd(), true) {
            return Some(Err(ClientError::from(e)));
        }
        if let Some((h, payload)) = self.reader.peek_complete() {
            let ours = h.is_reply() && h.msg_id == id && h.command == command;
            if ours && h.is_error() {
                let errno = match h.error as i32 {
                    0 => Errno::EIO,
                    e => Errno(e),
                };
                self.reader.consume_complete(h.size as usize);
                return Some(Err(ClientError::Remote {
                    command: name,
                    errno,
                }));
            }
            let exact =
                payload.len() == FIXED + out.len() && payload.get(..FIXED) == Some(&fixed[..]);
            if ours && exact {
                if let Some(d) = payload.get(FIXED..) {
                    out.copy_from_slice(d);
                }
                self.reader.consume_complete(h.size as usize);
                return Some(Ok(None));
            }
        }
        Some(self.await_reply(id, command, deadline, false).map(Some))
    }

    /// REGION_WRITE.
    pub fn region_write(
        &mut self,
        region: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), ClientError> {
        let c = cmd::REGION_WRITE;
        let count = self.check_xfer(data.len())?;
        let fixed = RegionAccess::encode_fixed(offset, region, count);
        let m = match self.access_fast(c, &fixed, data, &mut []) {
            Some(Ok(None)) => return Ok(()),
            Some(Ok(Some(m))) => m,
            Some(Err(e)) => return Err(e),
            None => self.transact(c, &[&fixed, data], &[])?,
        };
        let (o, r, n, rest) = RegionAccess::decode_fixed("REGION_WRITE reply", &m.payload)
            .map_err(|e| bad_reply(c, e))?;
        if o != offset || r != region || n != count || !rest.is_empty() {
            return Err(bad_reply(
                c,
                DecodeError::invalid("REGION_WRITE reply", "does not match the request"),
            ));
        }
        self.reader.recycle(m.payload);
        Ok(())
    }

    /// REGION_WRITE_MULTI (only if `write_multiple` was negotiated); returns the
    /// number of writes the server completed.
    pub fn region_write_multi(&mut self, writes: &[WriteOne]) -> Result<u64, ClientError> {
        if !self.negotiated.write_multiple() {
            return Err(ClientError::NotAllowed(
                "write_multiple not negotiated".into(),
            ));
        }
        if writes
            .iter()
            .any(|w| w.count == 0 || w.count > WRITE_MULTI_MAX_COUNT)
        {
            return Err(ClientError::NotAllowed("write count must be 1..=8".into()));
        }
        let c = cmd::REGION_WRITE_MULTI;
        let req = RegionWriteMulti {
            writes: writes.to_vec(),
        };
        let m = self.transact(c, &[&req.encode()], &[])?;
        RegionWriteMulti::decode_reply(&m.payload).map_err(|e| bad_reply(c, e))
    }

    /// DEVICE_RESET.
    pub fn reset(&mut self) -> Result<(), ClientError> {
        let m = self.transact(cmd::DEVICE_RESET, &[], &[])?;
        Self::expect_empty(cmd::DEVICE_RESET, &m)
    }

    fn need_extension(&self) -> Result<(), ClientError> {
        if self.negotiated.extension() {
            Ok(())
        } else {
            Err(ClientError::NotAllowed(
                "the org.vfio-sidecar extension was not negotiated".into(),
            ))
        }
    }

    /// SIDECAR_GET_DEVICE_DESC (extension): the description and the DTB bytes.
    pub fn device_desc(&mut self) -> Result<(DeviceDescription, Vec<u8>), ClientError> {
        self.need_extension()?;
        let c = cmd::SIDECAR_GET_DEVICE_DESC;
        let mut argsz: u32 = 16 * 1024;
        for _ in 0..4 {
            let m = self.transact(c, &[&DeviceDescRequest { argsz }.encode()], &[])?;
            let r = DeviceDescReply::decode(&m.payload).map_err(|e| bad_reply(c, e))?;
            if r.argsz as usize > m.payload.len() && r.argsz > argsz {
                argsz = r.argsz;
                continue;
            }
            let desc: DeviceDescription = serde_json::from_slice(&r.json).map_err(|e| {
                bad_reply(
                    c,
                    DecodeError::invalid("device description JSON", e.to_string()),
                )
            })?;
            return Ok((desc, r.dtb));
        }
        Err(bad_reply(
            c,
            DecodeError::invalid("SIDECAR_GET_DEVICE_DESC", "argsz keeps growing"),
        ))
    }

    /// SIDECAR_GET_IRQ_STATS (extension): counters of vectors `start..start+count`.
    pub fn irq_stats(
        &mut self,
        index: u32,
        start: u32,
        count: u32,
    ) -> Result<Vec<IrqStats>, ClientError> {
        self.need_extension()?;
        let c = cmd::SIDECAR_GET_IRQ_STATS;
        let req = IrqStatsRequest::new(index, start, count);
        let m = self.transact(c, &[&req.encode()], &[])?;
        let r = IrqStatsReply::decode(&m.payload).map_err(|e| bad_reply(c, e))?;
        if r.index != index || r.start != start || r.stats.len() != count as usize {
            return Err(bad_reply(
                c,
                DecodeError::invalid("SIDECAR_GET_IRQ_STATS reply", "does not match the request"),
            ));
        }
        Ok(r.stats)
    }

    /// Sends raw bytes on the socket (tests and fuzzing of servers).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let deadline = deadline_in(self.opts.reply_timeout);
        let mut off = 0;
        while off < bytes.len() {
            let rest = bytes.get(off..).unwrap_or_default();
            // SAFETY: `rest` is a live slice of rest.len() bytes; the fd is ours.
            let r = unsafe {
                libc::send(
                    self.sock.as_raw_fd(),
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            let r = if r < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(r as usize)
            };
            match r {
                Ok(n) => off += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    if left.is_some_and(|l| l.is_zero()) {
                        return Err(ClientError::Timeout { command: "raw" });
                    }
                    wait_fd(self.sock.as_fd(), libc::POLLOUT, left)
                        .map_err(|e| ClientError::Transport(TransportError::Io(e)))?;
                }
                Err(e) => return Err(ClientError::from(TransportError::Io(e))),
            }
        }
        Ok(())
    }
}
