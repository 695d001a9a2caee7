//! Non-blocking server side: [`ServerConnection`] (one client connection, fits
//! an epoll loop) and the [`Handler`] trait the device layer implements.
//!
//! The connection does VERSION negotiation, framing, limit checks, `argsz`
//! handling, flag validation and error replies; the handler only sees valid
//! requests.
//!
//! Error behaviour (details in `docs/protocol.md`):
//! * continue after an error reply: malformed payloads, bad flags, wrong fd
//!   counts, unknown or not negotiated commands (ENOSYS), undersized headers
//!   (EINVAL, only the header is consumed), oversized messages up to
//!   [`crate::transport::SKIP_LIMIT`] (E2BIG, skipped), too many fds (EINVAL,
//!   fds closed), a non-VERSION first message (EINVAL);
//! * dropped silently (logged): reply-type messages from the client;
//! * close: EOF/socket errors, a declared size above `SKIP_LIMIT`, an
//!   unsupported major version or a failed negotiation (after an error reply),
//!   a client that does not take a batch of replies within the write timeout
//!   (a total deadline per batch, see [`ServerConnection::flush_replies`]).
//!
//! Replies are queued in an [`Outbox`] and written per batch: after the
//! batch ([`ServerConnection::handle_readable`]), or, with deferred replies
//! ([`ServerConnection::set_deferred_replies`]), when the caller calls
//! [`ServerConnection::flush_replies`] — e.g. after releasing a lock the
//! handler needed, so that a client that stops reading stalls nobody else.

use std::collections::BTreeMap;
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use crate::caps::{negotiate, Capabilities, Limits, Negotiated, VERSION_MAJOR, VERSION_MINOR};
use crate::error::{DecodeError, Errno, ServerError, TransportError};
use crate::ext::{DeviceDescription, IrqStats};
use crate::header::{command as cmd, flags, Header, MsgType, HEADER_SIZE};
use crate::message::*;
use crate::transport::{Filled, FrameError, Incoming, Message, MessageReader, Outbox};

/// State of a connection after [`ServerConnection::handle_readable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnStatus {
    /// Still usable; wait for the next readable event.
    Open,
    /// The client went away or the connection had to be closed; drop it. The
    /// device layer should then release the client's DMA mappings and IRQ fds
    /// and keep the device state (spec: "Client Disconnection").
    Closed,
}

/// The device side of a connection: one typed method per command.
///
/// Methods return `Err(Errno)` to send an error reply. Methods with a default
/// are optional in the spec (or our extension) and answer `ENOTSUP`.
pub trait Handler {
    /// VERSION: return the capabilities this server offers (limits it accepts,
    /// `pgsizes`, `write_multiple`, and the extension with `exec_enforced` if it
    /// supports it). The connection intersects the offer with the client's
    /// proposal and its own [`Limits`] and enforces the result. Default: a
    /// plain vfio-user server (no `write_multiple`, no extension, 4 KiB pages)
    /// whose numeric limits are the connection's [`Limits`].
    fn version(&mut self, client: &Capabilities) -> Result<Capabilities, Errno> {
        let _ = client;
        Ok(Capabilities {
            max_msg_fds: u32::MAX,
            max_data_xfer_size: u32::MAX,
            max_dma_maps: u32::MAX,
            ..Capabilities::default()
        })
    }

    /// Called once after a successful VERSION exchange.
    fn negotiated(&mut self, negotiated: &Negotiated) {
        let _ = negotiated;
    }

    /// DMA_MAP: validated request (flags allowed by the negotiation, aligned,
    /// no overflow, map count below `max_dma_maps`); `fd` if one was passed.
    /// Use [`DmaMap::prot`] for the effective permissions. Map over an existing
    /// mapping: return `EEXIST`.
    fn dma_map(&mut self, req: &DmaMap, fd: Option<OwnedFd>) -> Result<(), Errno>;

    /// DMA_UNMAP: validated request (a range, or all with `req.is_all()`).
    fn dma_unmap(&mut self, req: &DmaUnmap) -> Result<(), Errno>;

    /// The number of DMA mappings the handler holds, if it counts them: the
    /// connection then takes it as its count after every DMA_MAP/DMA_UNMAP
    /// (a range unmap may remove any number of mappings). Default `None`:
    /// the connection counts one per map and unmap.
    fn dma_map_count(&self) -> Option<u32> {
        None
    }

    /// DEVICE_GET_INFO (`argsz` of the result is set by the connection).
    fn device_info(&mut self) -> Result<DeviceInfo, Errno>;

    /// DEVICE_GET_REGION_INFO: the region's info (incl. sparse areas) and, for
    /// MMAP regions, a *borrowed* fd sent with the reply (with a full reply
    /// only: a reply truncated by a small `argsz` carries none).
    fn region_info(&mut self, index: u32) -> Result<(RegionInfo, Option<RawFd>), Errno>;

    /// DEVICE_GET_REGION_IO_FDS: sub-regions and the (borrowed) fds they index.
    /// May return no sub-regions. Default: `ENOTSUP`.
    fn region_io_fds(&mut self, index: u32) -> Result<(Vec<SubRegionIoFd>, Vec<RawFd>), Errno> {
        let _ = index;
        Err(Errno::ENOTSUP)
    }

    /// DEVICE_GET_IRQ_INFO (`argsz` and `index` set by the connection).
    fn irq_info(&mut self, index: u32) -> Result<IrqInfo, Errno>;

    /// DEVICE_SET_IRQS: validated (one action, one data type, `count` fds for
    /// EVENTFD or none to de-assign, `count` bools for BOOL). Range against the
    /// IRQ's vector count is the handler's to check.
    fn set_irqs(&mut self, req: &SetIrqs, fds: Vec<OwnedFd>) -> Result<(), Errno>;

    /// REGION_READ of `buf.len()` bytes (<= `max_data_xfer_size`, `offset +
    /// len` does not overflow; region bounds are the handler's to check).
    fn region_read(&mut self, region: u32, offset: u64, buf: &mut [u8]) -> Result<(), Errno>;

    /// REGION_WRITE (also each entry of REGION_WRITE_MULTI).
    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), Errno>;

    /// DEVICE_RESET.
    fn reset(&mut self) -> Result<(), Errno>;

    /// SIDECAR_GET_DEVICE_DESC (extension): the description and the DTB
    /// fragment (may be empty). Default: `ENOTSUP`.
    fn device_desc(&mut self) -> Result<(DeviceDescription, Vec<u8>), Errno> {
        Err(Errno::ENOTSUP)
    }

    /// SIDECAR_GET_IRQ_STATS (extension): exactly `count` entries from `start`.
    /// Default: `ENOTSUP`.
    fn irq_stats(&mut self, index: u32, start: u32, count: u32) -> Result<Vec<IrqStats>, Errno> {
        let _ = (index, start, count);
        Err(Errno::ENOTSUP)
    }
}

/// Default deadline for writing one batch of replies (counted from the first
/// time the socket is full; not restarted when the client reads a little).
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Queued reply bytes at which a batch ends (deferred replies: the caller
/// must flush before more is handled) or is written out within the batch
/// (immediate replies). Bounds the memory a client that does not read can
/// make the connection hold to this plus one reply.
pub const OUTBOX_HIGH: usize = 256 << 10;

mod dma;
pub use dma::DEFAULT_DMA_TIMEOUT;

/// Largest REGION_READ/REGION_WRITE served by the in-place fast path of
/// [`ServerConnection`] (trapped MMIO is 1–8 bytes); larger ones take the
/// general path, with the same result.
pub const FAST_ACCESS_MAX: usize = 64;

/// A reply to send: payload parts and borrowed fds.
struct Reply {
    /// A short fixed part sent before `payload` (no allocation per reply).
    fixed: Option<[u8; RegionAccess::SIZE]>,
    payload: Vec<u8>,
    data: Option<usize>,
    fds: Vec<RawFd>,
}

impl Reply {
    fn empty() -> Self {
        Reply {
            fixed: None,
            payload: Vec::new(),
            data: None,
            fds: Vec::new(),
        }
    }
    fn with(payload: Vec<u8>) -> Self {
        Reply {
            fixed: None,
            payload,
            data: None,
            fds: Vec::new(),
        }
    }
}

enum Outcome {
    Reply(Reply),
    Error(Errno),
    /// Send an error reply, then close.
    ErrorClose(Errno),
    /// Nothing to send.
    Silent,
}

impl From<DecodeError> for Outcome {
    fn from(e: DecodeError) -> Self {
        crate::peer_warn!("bad request: {e}");
        Outcome::Error(e.errno())
    }
}

impl From<Errno> for Outcome {
    fn from(e: Errno) -> Self {
        Outcome::Error(e)
    }
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Outcome::from(e),
        }
    };
}

/// Ends a [`ServerConnection`] served by another thread: [`Self::shutdown`]
/// wakes its [`ServerConnection::receive_blocking`], which then returns
/// `Closed`. The handle never reads or writes the socket.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(Arc<UnixStream>);

impl ShutdownHandle {
    /// `shutdown(2)` both directions (errors ignored: already shut down or
    /// the peer is gone, which is the goal).
    pub fn shutdown(&self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }

    /// Has the peer hung up (EOF pending or the connection reset)?
    pub fn peer_hung_up(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let r = unsafe { libc::poll(&mut p, 1, 0) };
        r > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }
}

/// One client connection on the server side.
#[derive(Debug)]
pub struct ServerConnection {
    /// Shared only with [`ShutdownHandle`]s (which never read or write it).
    sock: Arc<UnixStream>,
    reader: MessageReader,
    limits: Limits,
    negotiated: Option<Negotiated>,
    dma_maps: u32,
    write_timeout: Duration,
    scratch: Vec<u8>,
    batch: usize,
    /// Replies of the current batch, not yet written.
    out: Outbox,
    /// Replies wait for [`Self::flush_replies`] instead of being written
    /// at the end of each batch.
    deferred: bool,
    fast_path: bool,
    /// The fast path's reply (kept: no zeroing of the whole buffer per access).
    fast_reply: [u8; HEADER_SIZE + RegionAccess::SIZE + FAST_ACCESS_MAX],
    /// How long one server-to-client DMA_READ/DMA_WRITE waits for its reply.
    dma_timeout: Duration,
    /// Message id of the next server-to-client request.
    next_dma_id: u16,
    /// Error replies queued for this client, by errno (statistics).
    error_replies: BTreeMap<i32, u64>,
}

impl AsRawFd for ServerConnection {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl AsFd for ServerConnection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

fn check_fds(what: &'static str, fds: &[OwnedFd], max: usize) -> Result<(), DecodeError> {
    if fds.len() > max {
        return Err(DecodeError::FdCount {
            what,
            expected: format!("at most {max}"),
            got: fds.len(),
        });
    }
    Ok(())
}

fn xfer_check(what: &'static str, offset: u64, count: u32, max: u32) -> Result<(), DecodeError> {
    if count > max {
        return Err(DecodeError::Limit {
            what,
            reason: format!("count {count} > max_data_xfer_size {max}"),
        });
    }
    if offset.checked_add(u64::from(count)).is_none() {
        return Err(DecodeError::invalid(what, "offset + count overflows"));
    }
    Ok(())
}

impl ServerConnection {
    /// Wraps an accepted stream (switched to non-blocking) with `limits`.
    pub fn new(sock: UnixStream, limits: Limits) -> std::io::Result<Self> {
        sock.set_nonblocking(true)?;
        Ok(ServerConnection {
            sock: Arc::new(sock),
            reader: MessageReader::new(&limits),
            limits,
            negotiated: None,
            dma_maps: 0,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            scratch: Vec::new(),
            batch: usize::MAX,
            out: Outbox::default(),
            deferred: false,
            fast_path: true,
            fast_reply: [0; HEADER_SIZE + RegionAccess::SIZE + FAST_ACCESS_MAX],
            dma_timeout: DEFAULT_DMA_TIMEOUT,
            next_dma_id: 0,
            error_replies: BTreeMap::new(),
        })
    }

    /// Handles at most `n` (≥ 1) messages per [`Self::handle_readable`] call
    /// (default: unlimited). The rest stays in the socket or in the
    /// connection's receive buffer: a client that keeps its socket full cannot
    /// starve signals, device fds or other connections. With a limit, an event
    /// loop must call `handle_readable` again (without waiting for the socket)
    /// while [`Self::has_buffered_message`] is true: messages already received
    /// into user space do not make the socket readable.
    pub fn set_batch_limit(&mut self, n: usize) {
        self.batch = n.max(1);
    }

    /// Turns the in-place fast path for small REGION_READ/REGION_WRITE off
    /// (`false`) or on (the default). With it off the general path serves
    /// those too, with byte-identical replies: tests compare the two, and
    /// benchmarks measure what the fast path saves.
    pub fn set_fast_path(&mut self, on: bool) {
        self.fast_path = on;
    }

    /// True when a complete message (or a frame to reject) is already
    /// buffered: `handle_readable` would handle it without receiving.
    pub fn has_buffered_message(&self) -> bool {
        self.reader.has_frame()
    }

    /// Sets the deadline for writing one batch of replies (default 5 s):
    /// a client that has not taken the whole batch by then is dropped,
    /// however little it read meanwhile.
    pub fn set_write_timeout(&mut self, t: Duration) {
        self.write_timeout = t;
    }

    /// Deferred replies (`true`): [`Self::handle_buffered`] and
    /// [`Self::handle_readable`] only queue the replies of their batch (a
    /// batch also ends once [`OUTBOX_HIGH`] bytes are queued), and the caller
    /// writes them with [`Self::flush_replies`] before handling more — e.g.
    /// after releasing a lock, so that no lock is held while a client that
    /// does not read stalls the write. Default (`false`): each call writes
    /// its replies before it returns.
    pub fn set_deferred_replies(&mut self, on: bool) {
        self.deferred = on;
    }

    /// True when replies are queued, not yet written.
    pub fn has_pending_replies(&self) -> bool {
        !self.out.is_empty()
    }

    /// Writes the queued replies, all of them within the write timeout (a
    /// total deadline for the batch, see [`Outbox::flush`]). `Closed`: the
    /// client is gone.
    /// [`ServerError::ReplyDeadline`]: it did not take them in time (drop the
    /// connection).
    pub fn flush_replies(&mut self) -> Result<ConnStatus, ServerError> {
        if self.out.is_empty() {
            return Ok(ConnStatus::Open);
        }
        match self.out.flush(self.sock.as_fd(), Some(self.write_timeout)) {
            Ok(()) => Ok(ConnStatus::Open),
            Err(TransportError::Disconnected) => Ok(ConnStatus::Closed),
            Err(TransportError::Timeout) => Err(ServerError::ReplyDeadline {
                timeout: self.write_timeout,
                unsent: self.out.len(),
            }),
            Err(e) => Err(ServerError::Transport(e)),
        }
    }

    /// The negotiation result, once VERSION succeeded.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// The limits this connection enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Error replies queued for this client so far, by errno (the
    /// backend's per-session statistics).
    pub fn error_replies(&self) -> &BTreeMap<i32, u64> {
        &self.error_replies
    }

    fn count_error(&mut self, e: Errno) {
        *self.error_replies.entry(e.raw()).or_insert(0) += 1;
    }

    /// Number of DMA mappings currently counted against `max_dma_maps`.
    pub fn dma_map_count(&self) -> u32 {
        self.dma_maps
    }

    /// Receives what is available, handles every complete message (or up to
    /// the batch limit, see [`Self::set_batch_limit`]) and writes
    /// the replies. Partial messages are kept for the next call. `Err` or
    /// `Ok(Closed)`: drop the connection.
    ///
    /// The socket is not drained to `EAGAIN`: after a receive that returned
    /// less than the space offered and no fds (the socket was empty when it
    /// returned), the buffered messages are handled and the call returns; bytes
    /// that arrive later make a level-triggered poll report the socket again.
    /// Complete messages already buffered are always handled before returning.
    pub fn handle_readable(&mut self, h: &mut dyn Handler) -> Result<ConnStatus, ServerError> {
        self.handle(h, true)
    }

    /// Handles the complete messages already received (up to the batch
    /// limit) without receiving: the counterpart of
    /// [`Self::receive_blocking`] for a connection served by its own thread.
    pub fn handle_buffered(&mut self, h: &mut dyn Handler) -> Result<ConnStatus, ServerError> {
        self.handle(h, false)
    }

    /// A handle another thread can use to end this connection (see
    /// [`ShutdownHandle`]). It keeps the socket open while it lives: the
    /// thread that serves the connection should [`Self::shutdown`] it when
    /// done, so the peer sees the end at once.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(Arc::clone(&self.sock))
    }

    /// Shuts the socket down in both directions: the peer sees EOF even
    /// while a [`ShutdownHandle`] keeps the socket itself open.
    pub fn shutdown(&self) {
        let _ = self.sock.shutdown(Shutdown::Both);
    }

    /// Puts the socket in blocking mode (`true`) for
    /// [`Self::receive_blocking`], or back (`false`, the default). Every other
    /// receive and every send of the connection passes `MSG_DONTWAIT`, so
    /// [`Self::handle_readable`] and the reply write timeout behave the same
    /// in both modes.
    pub fn set_blocking(&self, blocking: bool) -> std::io::Result<()> {
        self.sock.set_nonblocking(!blocking)
    }

    /// For a connection served by its own thread: unless a complete message
    /// is already buffered, waits in one blocking `recvmsg` (socket in
    /// blocking mode, see [`Self::set_blocking`]) for whatever arrives next;
    /// then call [`Self::handle_buffered`]. One system call per request and
    /// no poll. `Closed`: the peer is gone, or another thread shut the socket
    /// down (`shutdown(2)` wakes the wait).
    pub fn receive_blocking(&mut self) -> Result<ConnStatus, ServerError> {
        if self.reader.has_frame() {
            return Ok(ConnStatus::Open);
        }
        match self.reader.fill(self.sock.as_fd(), true) {
            Ok(_) => Ok(ConnStatus::Open),
            Err(TransportError::Disconnected) => Ok(ConnStatus::Closed),
            Err(e) => Err(ServerError::Transport(e)),
        }
    }

    /// One batch ([`Self::batch_of`]), then, unless replies are deferred,
    /// its replies written (also the error reply before a close).
    fn handle(
        &mut self,
        h: &mut dyn Handler,
        may_receive: bool,
    ) -> Result<ConnStatus, ServerError> {
        let status = self.batch_of(h, may_receive)?;
        if self.deferred {
            return Ok(status);
        }
        match self.flush_replies()? {
            ConnStatus::Open => Ok(status),
            ConnStatus::Closed => Ok(ConnStatus::Closed),
        }
    }

    fn batch_of(
        &mut self,
        h: &mut dyn Handler,
        may_receive: bool,
    ) -> Result<ConnStatus, ServerError> {
        let mut may_receive = may_receive;
        let mut handled = 0usize;
        loop {
            if handled >= self.batch {
                return Ok(ConnStatus::Open);
            }
            if self.out.len() >= OUTBOX_HIGH {
                if self.deferred {
                    return Ok(ConnStatus::Open);
                }
                if self.flush_replies()? == ConnStatus::Closed {
                    return Ok(ConnStatus::Closed);
                }
            }
            if let Some(r) = self.fast_path.then(|| self.fast_access(h)).flatten() {
                handled += 1;
                match r {
                    Ok(true) => continue,
                    Ok(false) => return Ok(ConnStatus::Closed),
                    Err(e) => return Err(e),
                }
            }
            let next = match self.reader.take() {
                Ok(Some(i)) => Ok(Some(i)),
                Ok(None) if !may_receive => return Ok(ConnStatus::Open),
                Ok(None) => match self.reader.fill(self.sock.as_fd(), false) {
                    Ok(Filled::Empty) => return Ok(ConnStatus::Open),
                    Ok(Filled::Data { maybe_more }) => {
                        may_receive = maybe_more;
                        continue;
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            handled += 1;
            let inc = match next {
                Ok(None) => return Ok(ConnStatus::Open),
                Ok(Some(i)) => i,
                Err(TransportError::Disconnected) => return Ok(ConnStatus::Closed),
                Err(e @ TransportError::Unskippable(_)) => {
                    log::error!("closing connection: {e}");
                    return Err(ServerError::Transport(e));
                }
                Err(e) => return Err(ServerError::Transport(e)),
            };
            if !self.serve_incoming(h, inc)? {
                return Ok(ConnStatus::Closed);
            }
        }
    }

    /// Handles one received frame and sends its reply; false when the
    /// connection must close.
    fn serve_incoming(&mut self, h: &mut dyn Handler, inc: Incoming) -> Result<bool, ServerError> {
        let (header, outcome) = match inc {
            Incoming::Bad { header, error } => {
                crate::peer_warn!(
                    "bad frame for {} (id {}): {:?}",
                    cmd::name(header.command),
                    header.msg_id,
                    error
                );
                let e = match error {
                    FrameError::Oversized => Errno::E2BIG,
                    FrameError::Undersized | FrameError::TooManyFds => Errno::EINVAL,
                };
                let o = if header.is_reply() {
                    Outcome::Silent
                } else {
                    Outcome::Error(e)
                };
                (header, o)
            }
            Incoming::Message(m) => {
                let header = m.header;
                let o = self.dispatch(m, h);
                (header, o)
            }
        };
        self.respond(&header, outcome)
    }

    /// The fast path of the one request that dominates at run time, a trapped
    /// MMIO access: serves the next buffered message in place if it is a
    /// plain, valid REGION_READ or REGION_WRITE of 1..=[`FAST_ACCESS_MAX`]
    /// bytes (after VERSION, a command wanting a reply, no fds, exact length,
    /// within `max_data_xfer_size`, no offset overflow) — what `dispatch` +
    /// `respond` do for it, without building a [`Message`] and with the reply
    /// sent by one `send` from the stack. `None`: not such a message (nothing
    /// consumed); the general path handles it, including every error case.
    /// `Some(Ok(false))`: the connection must close.
    fn fast_access(&mut self, h: &mut dyn Handler) -> Option<Result<bool, ServerError>> {
        const FIXED: usize = RegionAccess::SIZE;
        let xfer = self.negotiated.as_ref()?.server.max_data_xfer_size as usize;
        let (header, payload) = self.reader.peek_complete()?;
        // Exactly a command: no NO_REPLY, no ERROR bit, no reserved bits.
        if header.flags != flags::TYPE_COMMAND {
            return None;
        }
        let write = match header.command {
            cmd::REGION_READ => false,
            cmd::REGION_WRITE => true,
            _ => return None,
        };
        let fixed: [u8; FIXED] = payload.get(..FIXED)?.try_into().ok()?;
        let (offset, region, count) = RegionAccess::decode_fixed_array(&fixed);
        let n = count as usize;
        let data_len = if write { n } else { 0 };
        if n == 0
            || n > FAST_ACCESS_MAX
            || n > xfer
            || offset.checked_add(u64::from(count)).is_none()
            || payload.len() != FIXED + data_len
        {
            return None;
        }
        let reply = &mut self.fast_reply;
        if !write {
            // As in the general path, the handler reads into zeroed bytes
            // (the whole fixed-size area: no variable-length memset call).
            if let Some(area) = reply.get_mut(HEADER_SIZE + FIXED..) {
                area.fill(0);
            }
        }
        let r = match (
            write,
            payload.get(FIXED..),
            reply.get_mut(HEADER_SIZE + FIXED..HEADER_SIZE + FIXED + n),
        ) {
            (true, Some(data), _) => h.region_write(region, offset, data),
            (false, _, Some(out)) => h.region_read(region, offset, out),
            _ => return None,
        };
        self.reader.consume_complete(header.size as usize);
        if let Err(e) = r {
            return Some(self.respond(&header, Outcome::Error(e)));
        }
        let reply_data = if write { 0 } else { n };
        let len = HEADER_SIZE + FIXED + reply_data;
        let hdr = Header::reply_to(&header, FIXED + reply_data).encode();
        let reply = &mut self.fast_reply;
        reply[..HEADER_SIZE].copy_from_slice(&hdr);
        reply[HEADER_SIZE..HEADER_SIZE + FIXED].copy_from_slice(&fixed);
        self.out.push_bytes(reply.get(..len).unwrap_or_default());
        Some(Ok(true))
    }

    /// Queues the reply for the outcome; returns false when the connection
    /// must close (after that reply).
    fn respond(&mut self, req: &Header, outcome: Outcome) -> Result<bool, ServerError> {
        let (reply, close) = match outcome {
            Outcome::Silent => return Ok(true),
            Outcome::Reply(r) => (Ok(r), false),
            Outcome::Error(e) => (Err(e), false),
            Outcome::ErrorClose(e) => (Err(e), true),
        };
        if req.no_reply() {
            if let Err(e) = reply {
                crate::peer_warn!(
                    "{} (id {}) failed with {e}; no reply requested",
                    cmd::name(req.command),
                    req.msg_id
                );
            }
            return Ok(!close);
        }
        let r = match &reply {
            Ok(r) => {
                let data: &[u8] = match r.data {
                    Some(n) => self.scratch.get(..n).unwrap_or_default(),
                    None => &[],
                };
                let fixed: &[u8] = match &r.fixed {
                    Some(f) => f,
                    None => &[],
                };
                let hdr = Header::reply_to(req, fixed.len() + r.payload.len() + data.len());
                self.out.push(&hdr, &[fixed, &r.payload, data], &r.fds)
            }
            Err(e) => {
                log::debug!(
                    "error reply to {} (id {}): {e}",
                    cmd::name(req.command),
                    req.msg_id
                );
                self.count_error(*e);
                self.out.push(&Header::error_reply(req, e.raw()), &[], &[])
            }
        };
        if let Err(e) = r {
            // The reply could not be queued (its fds could not be
            // duplicated, e.g. EMFILE): the client gets that errno instead.
            log::warn!(
                "cannot queue the reply to {} (id {}): {e}",
                cmd::name(req.command),
                req.msg_id
            );
            let errno = Errno(e.raw_os_error().unwrap_or(libc::EIO));
            self.count_error(errno);
            self.out
                .push(&Header::error_reply(req, errno.raw()), &[], &[])
                .map_err(|e| ServerError::Transport(TransportError::Io(e)))?;
        }
        Ok(!close)
    }

    fn dispatch(&mut self, m: Message, h: &mut dyn Handler) -> Outcome {
        let hdr = m.header;
        match hdr.msg_type() {
            MsgType::Command => {}
            MsgType::Reply => {
                crate::peer_warn!(
                    "dropping unexpected reply-type message for {} (id {})",
                    cmd::name(hdr.command),
                    hdr.msg_id
                );
                return Outcome::Silent;
            }
            MsgType::Other(t) => {
                crate::peer_warn!("message type {t} is invalid");
                return Outcome::Error(Errno::EINVAL);
            }
        }
        let Some(neg) = self.negotiated.clone() else {
            if hdr.command != cmd::VERSION {
                crate::peer_warn!("{} before VERSION", cmd::name(hdr.command));
                return Outcome::Error(Errno::EINVAL);
            }
            return self.do_version(m, h);
        };
        let Message {
            header: _,
            payload,
            fds,
        } = m;
        let client_fds = neg.client.max_msg_fds as usize;
        let xfer = neg.server.max_data_xfer_size;
        let out = match hdr.command {
            cmd::VERSION => Outcome::Error(Errno::EINVAL),
            cmd::DMA_MAP => {
                let req = tri!(DmaMap::decode_request(&payload));
                let page = 1u64 << neg.server.pgsizes.trailing_zeros().min(63);
                tri!(req.is_valid(neg.dma_exec(), page));
                tri!(check_fds("DMA_MAP", &fds, 1));
                if self.dma_maps >= neg.server.max_dma_maps {
                    return Outcome::Error(Errno::ENOSPC);
                }
                let fd = fds.into_iter().next();
                tri!(h.dma_map(&req, fd));
                self.dma_maps = h.dma_map_count().unwrap_or(self.dma_maps + 1);
                Outcome::Reply(Reply::empty())
            }
            cmd::DMA_UNMAP => {
                let req = tri!(DmaUnmap::decode_request(&payload));
                tri!(req.is_valid());
                tri!(check_fds("DMA_UNMAP", &fds, 0));
                let r = h.dma_unmap(&req);
                self.dma_maps = match h.dma_map_count() {
                    Some(n) => n,
                    None if r.is_err() => self.dma_maps,
                    None if req.is_all() => 0,
                    None => self.dma_maps.saturating_sub(1),
                };
                tri!(r);
                Outcome::Reply(Reply::with(req.encode()))
            }
            cmd::DEVICE_GET_INFO => {
                let req = tri!(DeviceInfo::decode_request(&payload));
                tri!(req.is_valid_request());
                tri!(check_fds("DEVICE_GET_INFO", &fds, 0));
                let mut info = tri!(h.device_info());
                info.argsz = DeviceInfo::SIZE as u32;
                Outcome::Reply(Reply::with(info.encode()))
            }
            cmd::DEVICE_GET_REGION_INFO => {
                let req = tri!(RegionInfoRequest::decode(&payload));
                tri!(req.is_valid());
                tri!(check_fds("DEVICE_GET_REGION_INFO", &fds, 0));
                let (mut info, fd) = tri!(h.region_info(req.index));
                info.index = req.index;
                // A truncated reply (the capabilities do not fit the client's
                // argsz) carries no fd: the client asks again with a larger
                // argsz and gets it then. libvfio-user's client gives the first
                // request no fd buffer; QEMU and the `vfio_user` crate use the
                // fd of the full reply (docs/protocol.md).
                let truncated = info.sparse.is_some() && (req.argsz as usize) < info.full_size();
                let mut fds = Vec::new();
                match fd {
                    Some(_) if truncated && client_fds >= 1 => {}
                    Some(fd) if client_fds >= 1 => fds.push(fd),
                    Some(_) => {
                        // The client cannot receive fds: it must trap everything.
                        info.flags &= !REGION_INFO_FLAG_MMAP;
                    }
                    None => info.flags &= !REGION_INFO_FLAG_MMAP,
                }
                Outcome::Reply(Reply {
                    fixed: None,
                    payload: info.encode_reply(req.argsz),
                    data: None,
                    fds,
                })
            }
            cmd::DEVICE_GET_REGION_IO_FDS => {
                let req = tri!(RegionIoFdsRequest::decode_request(&payload));
                tri!(req.is_valid());
                tri!(check_fds("DEVICE_GET_REGION_IO_FDS", &fds, 0));
                let (subs, rfds) = tri!(h.region_io_fds(req.index));
                if subs.iter().any(|s| s.fd_index as usize >= rfds.len()) {
                    log::error!("handler returned a sub-region with a bad fd_index");
                    return Outcome::Error(Errno::EIO);
                }
                if rfds.len() > client_fds {
                    crate::peer_warn!("{} io fds exceed the client's max_msg_fds", rfds.len());
                    return Outcome::Error(Errno::E2BIG);
                }
                let (payload, complete) = RegionIoFdsReply::encode(req.index, &subs, req.argsz);
                Outcome::Reply(Reply {
                    fixed: None,
                    payload,
                    data: None,
                    fds: if complete { rfds } else { Vec::new() },
                })
            }
            cmd::DEVICE_GET_IRQ_INFO => {
                let req = tri!(IrqInfo::decode_request(&payload));
                tri!(req.is_valid_request());
                tri!(check_fds("DEVICE_GET_IRQ_INFO", &fds, 0));
                let mut info = tri!(h.irq_info(req.index));
                info.argsz = IrqInfo::SIZE as u32;
                info.index = req.index;
                Outcome::Reply(Reply::with(info.encode()))
            }
            cmd::DEVICE_SET_IRQS => {
                let req = tri!(SetIrqs::decode(&payload));
                tri!(req.is_valid(fds.len()));
                tri!(h.set_irqs(&req, fds));
                Outcome::Reply(Reply::empty())
            }
            cmd::REGION_READ => {
                let req = tri!(RegionAccess::decode("REGION_READ", &payload, false));
                tri!(xfer_check("REGION_READ", req.offset, req.count, xfer));
                tri!(check_fds("REGION_READ", &fds, 0));
                let n = req.count as usize;
                let mut buf = std::mem::take(&mut self.scratch);
                buf.clear();
                buf.resize(n, 0);
                let r = h.region_read(req.region, req.offset, &mut buf);
                self.scratch = buf;
                tri!(r);
                Outcome::Reply(Reply {
                    fixed: Some(RegionAccess::encode_fixed(
                        req.offset, req.region, req.count,
                    )),
                    payload: Vec::new(),
                    data: Some(n),
                    fds: Vec::new(),
                })
            }
            cmd::REGION_WRITE => {
                let (offset, region, count, data) =
                    tri!(RegionAccess::decode_fixed("REGION_WRITE", &payload));
                tri!(expect_data(
                    "REGION_WRITE",
                    &payload,
                    RegionAccess::SIZE,
                    data,
                    count.into()
                ));
                tri!(xfer_check("REGION_WRITE", offset, count, xfer));
                tri!(check_fds("REGION_WRITE", &fds, 0));
                tri!(h.region_write(region, offset, data));
                Outcome::Reply(Reply {
                    fixed: Some(RegionAccess::encode_fixed(offset, region, count)),
                    ..Reply::empty()
                })
            }
            cmd::DEVICE_RESET => {
                tri!(decode_empty("DEVICE_RESET", &payload));
                tri!(check_fds("DEVICE_RESET", &fds, 0));
                tri!(h.reset());
                Outcome::Reply(Reply::empty())
            }
            cmd::REGION_WRITE_MULTI if neg.write_multiple() => {
                let req = tri!(RegionWriteMulti::decode(&payload));
                tri!(check_fds("REGION_WRITE_MULTI", &fds, 0));
                for w in &req.writes {
                    tri!(xfer_check("REGION_WRITE_MULTI", w.offset, w.count, 8));
                    let data = w.data.get(..w.count as usize).unwrap_or_default();
                    tri!(h.region_write(w.region, w.offset, data));
                }
                Outcome::Reply(Reply::with(RegionWriteMulti::encode_reply(
                    req.writes.len() as u64,
                )))
            }
            cmd::SIDECAR_GET_DEVICE_DESC if neg.extension() => {
                let req = tri!(DeviceDescRequest::decode(&payload));
                tri!(req.is_valid());
                tri!(check_fds("SIDECAR_GET_DEVICE_DESC", &fds, 0));
                let (desc, dtb) = tri!(h.device_desc());
                let json = match serde_json::to_vec(&desc) {
                    Ok(j) => j,
                    Err(e) => {
                        log::error!("cannot serialize device description: {e}");
                        return Outcome::Error(Errno::EIO);
                    }
                };
                let max = Limits::from_caps(&neg.client).max_msg_size();
                if 16 + DeviceDescReply::FIXED + json.len() + dtb.len() > max {
                    log::error!("device description does not fit in one message");
                    return Outcome::Error(Errno::E2BIG);
                }
                Outcome::Reply(Reply::with(DeviceDescReply::encode(&json, &dtb, req.argsz)))
            }
            cmd::SIDECAR_GET_IRQ_STATS if neg.extension() => {
                let req = tri!(IrqStatsRequest::decode(&payload));
                let max = Limits::from_caps(&neg.client)
                    .max_msg_size()
                    .saturating_sub(16);
                tri!(req.is_valid(max));
                tri!(check_fds("SIDECAR_GET_IRQ_STATS", &fds, 0));
                let full = IrqStatsReply::full_size(req.count as usize);
                let stats = if (req.argsz as usize) < full {
                    Vec::new()
                } else {
                    let s = tri!(h.irq_stats(req.index, req.start, req.count));
                    if s.len() != req.count as usize {
                        log::error!("handler returned {} stats for {}", s.len(), req.count);
                        return Outcome::Error(Errno::EIO);
                    }
                    s
                };
                Outcome::Reply(Reply::with(
                    IrqStatsReply {
                        argsz: u32::try_from(full).unwrap_or(u32::MAX),
                        index: req.index,
                        start: req.start,
                        stats,
                    }
                    .encode(),
                ))
            }
            cmd::DMA_READ | cmd::DMA_WRITE => {
                crate::peer_warn!("client sent a server-to-client command");
                Outcome::Error(Errno::EINVAL)
            }
            other => {
                log::debug!("unsupported command {other} ({})", cmd::name(other));
                Outcome::Error(Errno::ENOSYS)
            }
        };
        self.reader.recycle(payload);
        out
    }

    fn do_version(&mut self, m: Message, h: &mut dyn Handler) -> Outcome {
        if !m.fds.is_empty() {
            return Outcome::Error(Errno::EINVAL);
        }
        let v = tri!(Version::decode(&m.payload));
        if v.major != VERSION_MAJOR {
            crate::peer_warn!("client proposed major version {}, closing", v.major);
            return Outcome::ErrorClose(Errno::ENOTSUP);
        }
        let offer = match h.version(&v.caps) {
            Ok(o) => o,
            Err(e) => return Outcome::ErrorClose(e),
        };
        let reply_caps = match negotiate(&v.caps, &offer, &self.limits) {
            Ok(c) => c,
            Err(e) => return Outcome::ErrorClose(e),
        };
        let minor = v.minor.min(VERSION_MINOR);
        let reply = Version {
            major: VERSION_MAJOR,
            minor,
            caps: reply_caps.clone(),
        };
        let n = Negotiated {
            major: VERSION_MAJOR,
            minor,
            client: v.caps,
            server: reply_caps,
        };
        log::debug!("negotiated {n:?}");
        h.negotiated(&n);
        self.negotiated = Some(n);
        Outcome::Reply(Reply::with(reply.encode()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::wait_fd;
    use std::io::{Read, Write};

    /// Answers DEVICE_GET_INFO; everything else is unsupported.
    struct Info;

    impl Handler for Info {
        fn dma_map(&mut self, _r: &DmaMap, _f: Option<OwnedFd>) -> Result<(), Errno> {
            Err(Errno::ENOTSUP)
        }
        fn dma_unmap(&mut self, _r: &DmaUnmap) -> Result<(), Errno> {
            Err(Errno::ENOTSUP)
        }
        fn device_info(&mut self) -> Result<DeviceInfo, Errno> {
            Ok(DeviceInfo {
                argsz: 16,
                flags: 0,
                num_regions: 0,
                num_irqs: 0,
            })
        }
        fn region_info(&mut self, _i: u32) -> Result<(RegionInfo, Option<RawFd>), Errno> {
            Err(Errno::EINVAL)
        }
        fn irq_info(&mut self, _i: u32) -> Result<IrqInfo, Errno> {
            Err(Errno::EINVAL)
        }
        fn set_irqs(&mut self, _r: &SetIrqs, _f: Vec<OwnedFd>) -> Result<(), Errno> {
            Err(Errno::EINVAL)
        }
        fn region_read(&mut self, _r: u32, _o: u64, _b: &mut [u8]) -> Result<(), Errno> {
            Err(Errno::EINVAL)
        }
        fn region_write(&mut self, _r: u32, _o: u64, _d: &[u8]) -> Result<(), Errno> {
            Err(Errno::EINVAL)
        }
        fn reset(&mut self) -> Result<(), Errno> {
            Ok(())
        }
    }

    fn replies_available(c: &UnixStream) -> usize {
        let mut buf = [0u8; 4096];
        let mut c = c;
        let mut n = 0;
        while let Ok(k) = c.read(&mut buf) {
            n += k;
        }
        n / HEADER_SIZE_FOR_TEST
    }

    /// Error replies are header-only (16 bytes).
    const HEADER_SIZE_FOR_TEST: usize = 16;

    #[test]
    fn deferred_replies_wait_for_flush_replies() {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut conn = ServerConnection::new(a, Limits::default()).unwrap();
        conn.set_deferred_replies(true);
        let mut bytes = Vec::new();
        for id in 0..3u16 {
            bytes.extend_from_slice(&Header::command(id, cmd::DEVICE_GET_INFO, 0).encode());
        }
        (&b).write_all(&bytes).unwrap();
        let mut h = Info;
        assert_eq!(conn.handle_readable(&mut h).unwrap(), ConnStatus::Open);
        assert_eq!(replies_available(&b), 0, "nothing written before the flush");
        assert!(conn.has_pending_replies());
        assert_eq!(conn.flush_replies().unwrap(), ConnStatus::Open);
        assert_eq!(replies_available(&b), 3);
        assert!(!conn.has_pending_replies());
        // A client that reads nothing: the flush fails at its deadline.
        conn.set_write_timeout(Duration::from_millis(50));
        let mut n = 0u16;
        while !conn.has_pending_replies() || conn.flush_replies().is_ok() {
            let h = Header::command(n, cmd::DEVICE_GET_INFO, 0).encode();
            (&b).write_all(&h).unwrap();
            conn.handle_readable(&mut Info).unwrap();
            n = n.wrapping_add(1);
            assert!(n < u16::MAX, "the socket never filled up");
        }
        assert!(matches!(
            conn.flush_replies(),
            Err(ServerError::ReplyDeadline { .. })
        ));
    }

    #[test]
    fn batch_limit_bounds_messages_per_call() {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut conn = ServerConnection::new(a, Limits::default()).unwrap();
        conn.set_batch_limit(2);
        // Five commands before VERSION: each gets a 16-byte EINVAL reply.
        let mut bytes = Vec::new();
        for id in 0..5u16 {
            bytes.extend_from_slice(&Header::command(id, cmd::DEVICE_GET_INFO, 0).encode());
        }
        (&b).write_all(&bytes).unwrap();
        let mut h = Info;
        assert_eq!(conn.handle_readable(&mut h).unwrap(), ConnStatus::Open);
        assert_eq!(replies_available(&b), 2, "first call: two messages");
        // One receive took all five: the rest is buffered, not in the socket,
        // and the connection says so (an event loop must not wait for POLLIN).
        assert!(conn.has_buffered_message());
        assert!(!wait_fd(conn.as_fd(), libc::POLLIN, Some(Duration::ZERO)).unwrap());
        assert_eq!(conn.handle_readable(&mut h).unwrap(), ConnStatus::Open);
        assert_eq!(replies_available(&b), 2);
        assert!(conn.has_buffered_message());
        assert_eq!(conn.handle_readable(&mut h).unwrap(), ConnStatus::Open);
        assert_eq!(replies_available(&b), 1, "the rest");
        assert!(!conn.has_buffered_message());
        // Unlimited (default): everything in one call.
        let (a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut conn = ServerConnection::new(a, Limits::default()).unwrap();
        (&b).write_all(&bytes).unwrap();
        assert_eq!(conn.handle_readable(&mut h).unwrap(), ConnStatus::Open);
        assert_eq!(replies_available(&b), 5);
    }

    #[test]
    fn error_replies_are_counted_by_errno() {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut conn = ServerConnection::new(a, Limits::default()).unwrap();
        assert!(conn.error_replies().is_empty());
        // Three commands before VERSION (EINVAL each), one of them asking
        // for no reply: two error replies counted.
        let mut bytes = Vec::new();
        for id in 0..2u16 {
            bytes.extend_from_slice(&Header::command(id, cmd::DEVICE_GET_INFO, 0).encode());
        }
        let mut quiet = Header::command(2, cmd::DEVICE_GET_INFO, 0);
        quiet.flags |= flags::NO_REPLY;
        bytes.extend_from_slice(&quiet.encode());
        (&b).write_all(&bytes).unwrap();
        assert_eq!(conn.handle_readable(&mut Info).unwrap(), ConnStatus::Open);
        assert_eq!(replies_available(&b), 2);
        assert_eq!(conn.error_replies(), &BTreeMap::from([(libc::EINVAL, 2)]));
    }
}
