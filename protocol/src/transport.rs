//! Framing and `SCM_RIGHTS` fd passing over a `UnixStream`.
//!
//! * Sending: one `sendmsg` per message carries the fds with the first byte;
//!   partial writes are continued (without fds); `MSG_NOSIGNAL` (no SIGPIPE);
//!   the timeout is a total deadline for the whole message (not restarted when
//!   the peer drains a little): a peer that has not taken it by then is an error.
//!   [`Outbox`] queues several messages (with their fds) and writes them in as
//!   few system calls as the fd boundaries allow, under one total deadline.
//! * Receiving ([`MessageReader`]): resumable state machine over a receive
//!   buffer: one `recvmsg` usually brings a whole message (header and payload)
//!   and everything queued behind it; fds are attributed by the rule documented
//!   on [`MessageReader`] (the message holding the last byte of the receive
//!   that returned them). Fds arrive with
//!   `MSG_CMSG_CLOEXEC` and are owned as [`OwnedFd`] at once. The declared size
//!   is checked before any allocation; a message larger than the limit is
//!   skipped (consumed into a fixed scratch buffer) and reported, so the stream
//!   never desyncs; a declared size beyond [`SKIP_LIMIT`] closes the connection.

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::caps::Limits;
use crate::error::TransportError;
use crate::header::{Header, HEADER_SIZE};

/// Declared message sizes above the limit but at most this are skipped (the
/// bytes are read and discarded); larger ones close the connection.
pub const SKIP_LIMIT: usize = 64 << 20;

/// Most iovecs one message is sent from (header + up to 3 parts).
const MAX_PARTS: usize = 4;

/// Why a received message could not be taken as-is. The bytes were consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Declared size smaller than the header (only the header was consumed).
    Undersized,
    /// Declared size above the limit (the whole message was skipped).
    Oversized,
    /// More fds than allowed (they were closed; the payload was consumed).
    TooManyFds,
}

/// A complete message.
#[derive(Debug)]
pub struct Message {
    /// The header.
    pub header: Header,
    /// The payload (everything after the header).
    pub payload: Vec<u8>,
    /// File descriptors received with it (close-on-exec, owned).
    pub fds: Vec<OwnedFd>,
}

/// What [`MessageReader::read_message`] produced.
#[derive(Debug)]
pub enum Incoming {
    /// A well-framed message.
    Message(Message),
    /// A message that was consumed but cannot be used.
    Bad {
        /// Its header.
        header: Header,
        /// Why.
        error: FrameError,
    },
}

/// Size of the receive buffer (capped at the message size limit): messages up
/// to this size are received together with whatever follows them, usually in
/// one `recvmsg`.
pub const READ_BUF_SIZE: usize = 64 << 10;

#[derive(Debug)]
enum Phase {
    /// Messages are framed from the receive buffer.
    Buffered,
    /// A message larger than the buffer: the rest of its payload is received
    /// straight into `payload` (never past its end).
    Payload,
    /// An oversized message: the rest is received and discarded.
    Skip,
}

/// Fds received by one `recvmsg`, tagged with the stream offset of the last
/// byte that call returned (see [`MessageReader`] for the attribution rule).
#[derive(Debug)]
struct FdGroup {
    at: u64,
    fds: Vec<OwnedFd>,
    truncated: bool,
}

/// Resumable reader of messages from a (non-blocking) socket.
///
/// Bytes are received into a reusable buffer of up to [`READ_BUF_SIZE`]
/// bytes, and every complete message in it is framed before the socket is
/// read again: a small request or reply costs one `recvmsg`. A message larger
/// than the buffer has the rest of its payload received directly into its own
/// buffer, never past its end.
///
/// **Fd attribution.** The fds a `recvmsg` returns belong to the message that
/// contains the last byte that call returned. This relies on Linux's
/// `unix_stream_read_generic` (net/unix/af_unix.c): the fds of a sender's
/// `sendmsg` ride on the first skb of that write; a stream receive takes the
/// fds of an skb when it first copies from it and then stops (`if (scm.fp)
/// break;`, also when the skb is only partly consumed), so the fd-carrying
/// skb is always the last one a receive touches, and skbs are never shared
/// between writes. A sender that writes each message (or each part of it:
/// the `vfio_user` crate writes header and payload separately) with its own
/// `sendmsg`, fds attached to one of them, therefore has them attributed to
/// that message. Fds sent with bytes of two messages in one write go to the
/// message holding the last byte received with them. More fds per message than
/// allowed (or a truncated control message) make the message
/// [`FrameError::TooManyFds`]; fds received with skipped or undersized frames
/// are closed.
#[derive(Debug)]
pub struct MessageReader {
    max_msg_size: usize,
    max_fds: usize,
    phase: Phase,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Stream offset of `buf[start]` (Buffered) or of the next byte to receive
    /// (Payload/Skip).
    pos: u64,
    /// Stream offset one past the last byte received.
    received: u64,
    /// Current message (Payload/Skip phases).
    header: Header,
    /// Stream offset where the current message ends (Payload/Skip phases).
    msg_end: u64,
    payload: Vec<u8>,
    got: usize,
    fd_groups: Vec<FdGroup>,
    spare: Vec<u8>,
    /// Control buffer for `max_fds` fds, allocated once (not zeroed per receive).
    cbuf: Vec<u64>,
}

/// Outcome of one receive ([`MessageReader::fill`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// Nothing to read now (`EAGAIN`, or the blocking receive timed out).
    Empty,
    /// Bytes were received. `maybe_more`: the socket may hold more (the
    /// receive filled all the space offered, stopped at fds, or was
    /// interrupted); false means it was drained when the call returned.
    Data {
        /// The socket may hold more right now.
        maybe_more: bool,
    },
}

impl MessageReader {
    /// A reader enforcing `limits` (message size and fds per message).
    pub fn new(limits: &Limits) -> Self {
        let max_msg_size = limits.max_msg_size();
        MessageReader {
            max_msg_size,
            max_fds: limits.max_msg_fds as usize,
            phase: Phase::Buffered,
            buf: vec![0; READ_BUF_SIZE.min(max_msg_size).max(HEADER_SIZE)],
            start: 0,
            end: 0,
            pos: 0,
            received: 0,
            header: Header::default(),
            msg_end: 0,
            payload: Vec::new(),
            got: 0,
            fd_groups: Vec::new(),
            spare: Vec::new(),
            cbuf: vec![
                0;
                if limits.max_msg_fds > 0 {
                    cmsg_space_u64(limits.max_msg_fds as usize)
                } else {
                    0
                }
            ],
        }
    }

    /// Largest message accepted.
    pub fn max_msg_size(&self) -> usize {
        self.max_msg_size
    }

    /// True when nothing is buffered (no partial or complete message).
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Buffered) && self.start == self.end
    }

    /// True when [`MessageReader::take`] has something to return without
    /// receiving (a complete message or a frame to reject; at worst it moves
    /// on to skipping an oversized message and returns nothing).
    pub fn has_frame(&self) -> bool {
        match self.phase {
            Phase::Buffered => {
                let avail = self.end - self.start;
                let size = self
                    .buf
                    .get(self.start..self.start + HEADER_SIZE)
                    .and_then(|b| <&[u8; HEADER_SIZE]>::try_from(b).ok())
                    .map(|b| Header::decode(b).size as usize);
                match size {
                    Some(size) if avail >= HEADER_SIZE => {
                        size < HEADER_SIZE || size > self.max_msg_size || avail >= size
                    }
                    _ => false,
                }
            }
            Phase::Payload => self.got >= self.payload.len(),
            Phase::Skip => self.pos >= self.msg_end,
        }
    }

    /// Gives a payload buffer back so its capacity is reused (no allocation per
    /// message in steady state).
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() > self.spare.capacity() {
            buf.clear();
            self.spare = buf;
        }
    }

    /// Reads until one message is complete (`Ok(Some)`), the socket has no more
    /// data for now (`Ok(None)`, state kept), or the peer is gone
    /// (`Err(Disconnected)`, also mid-message). Messages already buffered are
    /// returned without receiving.
    pub fn read_message(&mut self, fd: BorrowedFd<'_>) -> Result<Option<Incoming>, TransportError> {
        loop {
            if let Some(m) = self.take()? {
                return Ok(Some(m));
            }
            if self.fill(fd, false)? == Filled::Empty {
                return Ok(None);
            }
        }
    }

    /// The next message, when it lies complete in the receive buffer and no
    /// fds were received with or before it: its header and payload, left in
    /// the buffer (drop it with [`MessageReader::consume_complete`]). `None`
    /// for anything else (incomplete, oversized or undersized frames, pending
    /// fds, a large message being received): [`MessageReader::take`] handles
    /// those. Lets a server serve small fd-less requests in place.
    pub fn peek_complete(&self) -> Option<(Header, &[u8])> {
        if !matches!(self.phase, Phase::Buffered) || !self.fd_groups.is_empty() {
            return None;
        }
        let msg = self.buf.get(self.start..self.end)?;
        let hb: &[u8; HEADER_SIZE] = msg.get(..HEADER_SIZE)?.try_into().ok()?;
        let header = Header::decode(hb);
        let size = header.size as usize;
        if size < HEADER_SIZE || size > self.max_msg_size {
            return None;
        }
        Some((header, msg.get(HEADER_SIZE..size)?))
    }

    /// Drops the message [`MessageReader::peek_complete`] returned (`size` is
    /// its header's `size`); does nothing if that is not what is buffered.
    pub fn consume_complete(&mut self, size: usize) {
        if matches!(self.phase, Phase::Buffered)
            && size >= HEADER_SIZE
            && size <= self.end - self.start
        {
            self.consume(size);
        }
    }

    /// Frames the next message from what was received, without receiving.
    /// `Ok(None)`: more bytes are needed ([`MessageReader::fill`]).
    pub fn take(&mut self) -> Result<Option<Incoming>, TransportError> {
        match self.phase {
            Phase::Buffered => self.take_buffered(),
            Phase::Payload => {
                if self.got < self.payload.len() {
                    return Ok(None);
                }
                self.phase = Phase::Buffered;
                self.pos = self.msg_end;
                let (fds, too_many) = self.fds_until(self.msg_end);
                let payload = mem::take(&mut self.payload);
                Ok(Some(self.finish(self.header, payload, fds, too_many)))
            }
            Phase::Skip => {
                if self.pos < self.msg_end {
                    return Ok(None);
                }
                self.phase = Phase::Buffered;
                self.fds_until(self.msg_end);
                Ok(Some(Incoming::Bad {
                    header: self.header,
                    error: FrameError::Oversized,
                }))
            }
        }
    }

    fn take_buffered(&mut self) -> Result<Option<Incoming>, TransportError> {
        let avail = self.end - self.start;
        if avail < HEADER_SIZE {
            return Ok(None);
        }
        let Some(hb) = self
            .buf
            .get(self.start..self.start + HEADER_SIZE)
            .and_then(|b| <&[u8; HEADER_SIZE]>::try_from(b).ok())
        else {
            return Ok(None);
        };
        let header = Header::decode(hb);
        let size = header.size as usize;
        let msg_start = self.pos;
        if size < HEADER_SIZE {
            self.consume(HEADER_SIZE);
            self.fds_until(self.pos);
            return Ok(Some(Incoming::Bad {
                header,
                error: FrameError::Undersized,
            }));
        }
        if size > self.max_msg_size {
            if size > SKIP_LIMIT {
                self.fd_groups.clear();
                return Err(TransportError::Unskippable(header.size));
            }
            crate::peer_warn!(
                "skipping oversized message ({} bytes, limit {})",
                size,
                self.max_msg_size
            );
            self.header = header;
            self.msg_end = msg_start + size as u64;
            self.consume(avail.min(size));
            self.fds_until(self.pos);
            self.phase = Phase::Skip;
            return self.take();
        }
        if avail >= size {
            let mut p = mem::take(&mut self.spare);
            p.clear();
            p.extend_from_slice(
                self.buf
                    .get(self.start + HEADER_SIZE..self.start + size)
                    .unwrap_or_default(),
            );
            self.consume(size);
            let (fds, too_many) = self.fds_until(self.pos);
            return Ok(Some(self.finish(header, p, fds, too_many)));
        }
        if size > self.buf.len() {
            // Too large for the buffer: receive the rest straight into the payload.
            let len = size - HEADER_SIZE;
            let mut p = mem::take(&mut self.spare);
            p.clear();
            p.resize(len, 0);
            let have = avail - HEADER_SIZE;
            if let (Some(dst), Some(src)) = (
                p.get_mut(..have),
                self.buf.get(self.start + HEADER_SIZE..self.end),
            ) {
                dst.copy_from_slice(src);
            }
            self.consume(avail);
            self.header = header;
            self.msg_end = msg_start + size as u64;
            self.payload = p;
            self.got = have;
            self.phase = Phase::Payload;
        }
        Ok(None)
    }

    fn finish(
        &mut self,
        header: Header,
        payload: Vec<u8>,
        fds: Vec<OwnedFd>,
        too_many: bool,
    ) -> Incoming {
        if too_many {
            drop(fds);
            self.recycle(payload);
            return Incoming::Bad {
                header,
                error: FrameError::TooManyFds,
            };
        }
        Incoming::Message(Message {
            header,
            payload,
            fds,
        })
    }

    /// Drops `n` buffered bytes.
    fn consume(&mut self, n: usize) {
        self.start += n;
        self.pos += n as u64;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Takes the fds received with bytes before stream offset `end` (those of
    /// the message ending there): (fds, too many or truncated).
    fn fds_until(&mut self, end: u64) -> (Vec<OwnedFd>, bool) {
        let n = self.fd_groups.iter().take_while(|g| g.at < end).count();
        if n == 0 {
            return (Vec::new(), false);
        }
        let mut fds = Vec::new();
        let mut too_many = false;
        for g in self.fd_groups.drain(..n) {
            too_many |= g.truncated;
            fds.extend(g.fds);
        }
        too_many |= fds.len() > self.max_fds;
        (fds, too_many)
    }

    /// One `recvmsg` into the space the current phase needs (`blocking`: wait
    /// as long as the socket's `SO_RCVTIMEO`, on a blocking socket).
    /// `Err(Disconnected)` on EOF.
    pub fn fill(&mut self, fd: BorrowedFd<'_>, blocking: bool) -> Result<Filled, TransportError> {
        let dst: &mut [u8] = match self.phase {
            Phase::Buffered => {
                if self.start > 0 {
                    self.buf.copy_within(self.start..self.end, 0);
                    self.end -= self.start;
                    self.start = 0;
                }
                self.buf.get_mut(self.end..).unwrap_or_default()
            }
            Phase::Payload => self.payload.get_mut(self.got..).unwrap_or_default(),
            Phase::Skip => {
                let left = usize::try_from(self.msg_end - self.pos).unwrap_or(usize::MAX);
                let n = left.min(self.buf.len());
                self.buf.get_mut(..n).unwrap_or_default()
            }
        };
        let want = dst.len();
        if want == 0 {
            // Cannot happen (a phase always needs bytes); do not spin.
            return Ok(Filled::Empty);
        }
        let (n, fds, truncated) = match recv_into(fd, dst, &mut self.cbuf, blocking) {
            Ok((0, _, _)) => return Err(TransportError::Disconnected),
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Filled::Empty),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                return Ok(Filled::Data { maybe_more: true })
            }
            Err(e) => return Err(map_io(e)),
        };
        self.received += n as u64;
        let got_fds = truncated || !fds.is_empty();
        match self.phase {
            Phase::Buffered => self.end += n,
            Phase::Payload => {
                self.got += n;
                self.pos += n as u64;
            }
            Phase::Skip => self.pos += n as u64,
        }
        if got_fds {
            if matches!(self.phase, Phase::Skip) {
                drop(fds);
            } else {
                self.fd_groups.push(FdGroup {
                    at: self.received - 1,
                    fds,
                    truncated,
                });
            }
        }
        Ok(Filled::Data {
            maybe_more: n == want || got_fds,
        })
    }
}

fn map_io(e: io::Error) -> TransportError {
    match e.raw_os_error() {
        Some(libc::ECONNRESET) | Some(libc::EPIPE) | Some(libc::ENOTCONN) => {
            TransportError::Disconnected
        }
        _ => TransportError::Io(e),
    }
}

/// Space for the control message carrying `n` fds, in u64 units (aligned).
fn cmsg_space_u64(n: usize) -> usize {
    let bytes = n.saturating_mul(mem::size_of::<RawFd>());
    let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
    // SAFETY: CMSG_SPACE is a pure arithmetic helper.
    let space = unsafe { libc::CMSG_SPACE(bytes) } as usize;
    space.div_ceil(mem::size_of::<u64>())
}

/// One `recvmsg(MSG_DONTWAIT | MSG_CMSG_CLOEXEC)`: returns bytes read, the fds
/// received (owned) and whether the control data was truncated (the kernel
/// closed the fds that did not fit: more than `max_fds` were sent).
pub fn recv_with_fds(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>, bool)> {
    recv_with_fds_flags(fd, buf, max_fds, false)
}

/// [`recv_with_fds`], optionally without `MSG_DONTWAIT` (`blocking`: on a
/// blocking socket the call waits up to the socket's `SO_RCVTIMEO`).
fn recv_with_fds_flags(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
    blocking: bool,
) -> io::Result<(usize, Vec<OwnedFd>, bool)> {
    // Control buffer: on the stack for the usual fd limits (no allocation per
    // receive), on the heap for unusually large ones.
    let words = if max_fds > 0 {
        cmsg_space_u64(max_fds)
    } else {
        0
    };
    let mut stack = [0u64; 64];
    let mut heap = Vec::new();
    let cbuf: &mut [u64] = if words <= stack.len() {
        &mut stack[..words]
    } else {
        heap.resize(words, 0u64);
        &mut heap
    };
    recv_into(fd, buf, cbuf, blocking)
}

/// One `recvmsg` into `buf` with `cbuf` as the control buffer (its size sets
/// how many fds fit; empty: none). `cbuf` need not be zeroed: only the
/// `msg_controllen` bytes the kernel wrote are read back.
fn recv_into(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    cbuf: &mut [u64],
    blocking: bool,
) -> io::Result<(usize, Vec<OwnedFd>, bool)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid initial value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !cbuf.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = mem::size_of_val(cbuf);
    }
    // SAFETY: msg points to a valid iovec over `buf` and a valid control buffer
    // of msg_controllen bytes, both live for the call. The raw system call
    // (not libc's wrapper) skips the cancellation-point bookkeeping, as in
    // `send_bytes`.
    let n = unsafe {
        libc::syscall(
            libc::SYS_recvmsg,
            fd.as_raw_fd(),
            &mut msg as *mut libc::msghdr,
            if blocking { 0 } else { libc::MSG_DONTWAIT } | libc::MSG_CMSG_CLOEXEC,
        )
    } as isize;
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    if !cbuf.is_empty() {
        // SAFETY: msg was filled by recvmsg; CMSG_FIRSTHDR/NXTHDR only walk
        // within msg_control/msg_controllen.
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !cmsg.is_null() {
            // SAFETY: cmsg is non-null and points into cbuf (checked by the macros).
            let hdr = unsafe { &*cmsg };
            if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
                // SAFETY: CMSG_LEN is pure arithmetic.
                let base = unsafe { libc::CMSG_LEN(0) } as usize;
                let count = (hdr.cmsg_len as usize).saturating_sub(base) / mem::size_of::<RawFd>();
                // SAFETY: the data of this cmsg follows the header inside cbuf.
                let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
                for i in 0..count {
                    // SAFETY: i < count, so the read stays within the cmsg data;
                    // read_unaligned because the data need not be aligned.
                    let raw = unsafe { data.add(i).read_unaligned() };
                    if raw >= 0 {
                        // SAFETY: the kernel just installed this fd for us; nobody
                        // else owns it.
                        fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                    }
                }
            }
            // SAFETY: as above.
            cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
        }
    }
    let truncated = msg.msg_flags & libc::MSG_CTRUNC != 0;
    Ok((n as usize, fds, truncated))
}

/// Waits until `fd` is ready for `events` (POLLIN/POLLOUT), up to `timeout`
/// (`None` = forever). Returns false on timeout. Hang-up counts as ready (the
/// next read/write reports it).
pub fn wait_fd(fd: BorrowedFd<'_>, events: i16, timeout: Option<Duration>) -> io::Result<bool> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ms: i32 = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so a sub-millisecond rest does not spin.
                let ms = left.as_micros().div_ceil(1000);
                i32::try_from(ms).unwrap_or(i32::MAX)
            }
        };
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: p is a valid pollfd; nfds = 1.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r > 0 {
            return Ok(true);
        }
        if ms == 0 {
            return Ok(false);
        }
        if let Some(d) = deadline {
            if Instant::now() >= d {
                return Ok(false);
            }
        }
    }
}

/// Sends one message: `header` followed by `parts`, with `fds` attached to
/// the first byte. Handles partial writes and a full socket; `timeout` is a
/// total deadline for the whole message, counted from the first time the
/// socket is full (`None`: wait as long as it takes).
pub fn send_message(
    fd: BorrowedFd<'_>,
    header: &Header,
    parts: &[&[u8]],
    fds: &[RawFd],
    timeout: Option<Duration>,
) -> Result<(), TransportError> {
    if parts.len() + 1 > MAX_PARTS {
        return Err(TransportError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many message parts",
        )));
    }
    let hdr = header.encode();
    let mut bufs: [&[u8]; MAX_PARTS] = [&[]; MAX_PARTS];
    bufs[0] = &hdr;
    for (i, p) in parts.iter().enumerate() {
        bufs[i + 1] = p;
    }
    let nbufs = parts.len() + 1;
    let total: usize = bufs[..nbufs].iter().map(|b| b.len()).sum();
    if total != header.size as usize {
        return Err(TransportError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("header size {} != message length {}", header.size, total),
        )));
    }
    let mut sent = 0usize;
    let mut fds_sent = fds.is_empty();
    let mut deadline = Deadline::new(timeout);
    while sent < total {
        // Build the iovecs of what is left.
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_PARTS];
        let mut niov = 0;
        let mut skip = sent;
        for b in &bufs[..nbufs] {
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            let rest = &b[skip..];
            skip = 0;
            iov[niov] = libc::iovec {
                iov_base: rest.as_ptr() as *mut libc::c_void,
                iov_len: rest.len(),
            };
            niov += 1;
        }
        let r = sendmsg_once(fd, &iov[..niov], if fds_sent { &[] } else { fds });
        match r {
            Ok(n) => {
                sent += n;
                fds_sent = true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => deadline.wait_writable(fd)?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(map_io(e)),
        }
    }
    Ok(())
}

/// Sends `bytes` (one whole message, no fds) with `send`, handling partial
/// writes and a full socket like [`send_message`] (`timeout`: total deadline
/// from the first time the socket is full). One system call in the usual case.
pub fn send_bytes(
    fd: BorrowedFd<'_>,
    bytes: &[u8],
    timeout: Option<Duration>,
) -> Result<(), TransportError> {
    let mut sent = 0usize;
    let mut deadline = Deadline::new(timeout);
    while let Some(rest) = bytes.get(sent..).filter(|r| !r.is_empty()) {
        match send_once(fd, rest) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => deadline.wait_writable(fd)?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(map_io(e)),
        }
    }
    Ok(())
}

/// One non-blocking `send` of `bytes` (no fds); `WouldBlock` when the socket
/// is full. A zero-byte result for a non-empty buffer is reported as
/// `WouldBlock` too, so no caller can spin on it.
fn send_once(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: `bytes` is a live buffer of `bytes.len()` bytes; sendto only
    // reads it; no address (NULL, 0) on a connected socket. The raw system
    // call skips libc's cancellation-point bookkeeping (nothing here uses
    // thread cancellation), which is most of a small send's user-space cost.
    let n = unsafe {
        libc::syscall(
            libc::SYS_sendto,
            fd.as_raw_fd(),
            bytes.as_ptr(),
            bytes.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            std::ptr::null::<libc::sockaddr>(),
            0 as libc::socklen_t,
        )
    } as isize;
    match n {
        n if n < 0 => Err(io::Error::last_os_error()),
        0 if !bytes.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
        n => Ok(n as usize),
    }
}

/// A total deadline for a write, started the first time the socket is full
/// (the common case never reads the clock).
#[derive(Debug, Clone, Copy)]
struct Deadline {
    timeout: Option<Duration>,
    at: Option<Instant>,
}

impl Deadline {
    fn new(timeout: Option<Duration>) -> Self {
        Deadline { timeout, at: None }
    }

    /// Waits until `fd` takes more bytes, at most until the deadline;
    /// `Timeout` once it has passed. Never restarts the deadline.
    fn wait_writable(&mut self, fd: BorrowedFd<'_>) -> Result<(), TransportError> {
        if self.at.is_none() {
            self.at = self.timeout.and_then(|t| Instant::now().checked_add(t));
        }
        // No deadline (or one too far to represent): wait as long as it takes.
        let left = self
            .at
            .map(|at| at.saturating_duration_since(Instant::now()));
        if wait_fd(fd, libc::POLLOUT, left).map_err(map_io)? {
            Ok(())
        } else {
            Err(TransportError::Timeout)
        }
    }
}

/// A message of an [`Outbox`] that carries fds: its byte range in the queue
/// and the fds (owned duplicates), sent with its first byte.
#[derive(Debug)]
struct FdMessage {
    start: usize,
    end: usize,
    fds: Vec<OwnedFd>,
}

/// Messages queued to be written later (e.g. after a lock is released), in
/// order, with their fds.
///
/// [`Outbox::flush`] writes the queue with as few `send`s as the fds allow:
/// runs of fd-less messages go out together; a message with fds is written
/// by a `sendmsg` that starts at its first byte (the fds ride on it) and ends
/// at its last, so a receiver attributing fds to the message that holds the
/// last byte of the receive that returned them (the rule of
/// [`MessageReader`]) sees them on the right message. The fds are duplicated
/// when queued (`F_DUPFD_CLOEXEC`): the caller's may be closed meanwhile.
#[derive(Debug, Default)]
pub struct Outbox {
    bytes: Vec<u8>,
    sent: usize,
    with_fds: VecDeque<FdMessage>,
}

/// Capacity an [`Outbox`] keeps after a flush; more is released.
const OUTBOX_KEEP: usize = 256 << 10;

impl Outbox {
    /// Bytes queued and not yet written.
    pub fn len(&self) -> usize {
        self.bytes.len() - self.sent
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues one message: `header` followed by `parts` (their total length
    /// must be `header.size`), with duplicates of `fds`. On error (the
    /// lengths disagree, or duplicating an fd failed, e.g. `EMFILE`) nothing
    /// is queued.
    pub fn push(&mut self, header: &Header, parts: &[&[u8]], fds: &[RawFd]) -> io::Result<()> {
        let total = HEADER_SIZE + parts.iter().map(|p| p.len()).sum::<usize>();
        if total != header.size as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("header size {} != message length {total}", header.size),
            ));
        }
        let owned = fds
            .iter()
            .map(|&f| dup_cloexec(f))
            .collect::<io::Result<Vec<_>>>()?;
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&header.encode());
        for p in parts {
            self.bytes.extend_from_slice(p);
        }
        if !owned.is_empty() {
            self.with_fds.push_back(FdMessage {
                start,
                end: self.bytes.len(),
                fds: owned,
            });
        }
        Ok(())
    }

    /// Queues the bytes of whole messages without fds.
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// Writes everything queued to `fd` (non-blocking sends, waiting for the
    /// socket to drain when it is full), all of it within `timeout` (`None`:
    /// no limit) counted from the first time the socket is full — one total
    /// deadline, however little the peer reads meanwhile: `Timeout` when it
    /// has not taken everything by then. (The sends before the socket is
    /// first full never wait, so only a write that has to wait reads the
    /// clock.) On success the queue is empty; on error it keeps what was not
    /// sent (the connection should be closed).
    pub fn flush(
        &mut self,
        fd: BorrowedFd<'_>,
        timeout: Option<Duration>,
    ) -> Result<(), TransportError> {
        let mut wait = Deadline::new(timeout);
        while self.sent < self.bytes.len() {
            let (end, with_fds) = match self.with_fds.front() {
                Some(m) if m.start == self.sent => (m.end, true),
                Some(m) => (m.start, false),
                None => (self.bytes.len(), false),
            };
            let chunk = self.bytes.get(self.sent..end).unwrap_or_default();
            let r = if with_fds {
                let raw: Vec<RawFd> = self
                    .with_fds
                    .front()
                    .map(|m| m.fds.iter().map(AsRawFd::as_raw_fd).collect())
                    .unwrap_or_default();
                let iov = [libc::iovec {
                    iov_base: chunk.as_ptr() as *mut libc::c_void,
                    iov_len: chunk.len(),
                }];
                sendmsg_once(fd, &iov, &raw)
            } else {
                send_once(fd, chunk)
            };
            match r {
                Ok(n) => {
                    if with_fds {
                        // Sent with this first part; the rest goes without.
                        self.with_fds.pop_front();
                    }
                    self.sent += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait.wait_writable(fd)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(map_io(e)),
            }
        }
        self.clear();
        Ok(())
    }

    /// Drops everything queued (fds closed).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.sent = 0;
        self.with_fds.clear();
        if self.bytes.capacity() > OUTBOX_KEEP {
            self.bytes.shrink_to(OUTBOX_KEEP);
        }
    }
}

/// `fcntl(F_DUPFD_CLOEXEC)`: an owned duplicate of `fd`.
fn dup_cloexec(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on a caller-provided fd number; F_DUPFD_CLOEXEC creates a
    // new fd (or fails) and touches no memory.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `n` was just created by fcntl and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

fn sendmsg_once(fd: BorrowedFd<'_>, iov: &[libc::iovec], fds: &[RawFd]) -> io::Result<usize> {
    let mut cbuf = vec![
        0u64;
        if fds.is_empty() {
            0
        } else {
            cmsg_space_u64(fds.len())
        }
    ];
    // SAFETY: msghdr is plain data; all-zero is a valid initial value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len();
    if !fds.is_empty() {
        let data_len = u32::try_from(mem::size_of_val(fds)).unwrap_or(u32::MAX);
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = mem::size_of_val(cbuf.as_slice());
        // SAFETY: the control buffer is CMSG_SPACE(len) bytes, so the first
        // header and its data fit; we write within it only.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as _;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, f) in fds.iter().enumerate() {
                data.add(i).write_unaligned(*f);
            }
        }
    }
    // SAFETY: msg describes valid iovecs (borrowed from live buffers) and a
    // valid control buffer for the duration of the call.
    let n = unsafe {
        libc::sendmsg(
            fd.as_raw_fd(),
            &msg,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    fn read_one(r: &mut MessageReader, s: &UnixStream) -> Incoming {
        loop {
            if let Some(m) = r.read_message(s.as_fd()).unwrap() {
                return m;
            }
            assert!(wait_fd(s.as_fd(), libc::POLLIN, Some(Duration::from_secs(5))).unwrap());
        }
    }

    /// A reader that accepts at most one fd per message.
    fn one_fd_reader() -> MessageReader {
        MessageReader::new(&Limits {
            max_msg_fds: 1,
            ..Limits::default()
        })
    }

    fn eventfd() -> OwnedFd {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fresh fd owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    fn expect_message(r: &mut MessageReader, s: &UnixStream, id: u16, nfds: usize) {
        match read_one(r, s) {
            Incoming::Message(m) => {
                assert_eq!(m.header.msg_id, id);
                assert_eq!(m.fds.len(), nfds, "fds of message {id}");
            }
            Incoming::Bad { header, error } => panic!("{header:?}: {error:?}"),
        }
    }

    #[test]
    fn outbox_keeps_fds_on_their_message() {
        let (a, b) = pair();
        let mut out = Outbox::default();
        let ev = eventfd();
        out.push(&Header::command(1, 1, 3), &[&[1, 2, 3]], &[])
            .unwrap();
        out.push(&Header::command(2, 1, 0), &[], &[]).unwrap();
        out.push(&Header::command(3, 1, 5), &[&[9; 5]], &[ev.as_raw_fd()])
            .unwrap();
        // The caller's fd may go: the outbox holds its own duplicate.
        drop(ev);
        out.push(&Header::command(4, 1, 2), &[&[7, 7]], &[])
            .unwrap();
        out.push_bytes(&Header::command(5, 1, 0).encode());
        assert!(out.push(&Header::command(6, 1, 4), &[&[0]], &[]).is_err());
        assert_eq!(out.len(), 5 * HEADER_SIZE + 3 + 5 + 2);
        out.flush(a.as_fd(), Some(Duration::from_secs(5))).unwrap();
        assert!(out.is_empty());
        let mut r = one_fd_reader();
        for (id, nfds) in [(1, 0), (2, 0), (3, 1), (4, 0), (5, 0)] {
            expect_message(&mut r, &b, id, nfds);
        }
    }

    /// The deadline of a flush is total: a peer that reads a little now and
    /// then (enough to make the socket writable again well within the
    /// timeout) but not everything in time makes the flush time out.
    #[test]
    fn outbox_deadline_is_not_restarted_by_partial_reads() {
        let (a, b) = pair();
        let mut out = Outbox::default();
        let chunk = vec![0u8; 64 << 10];
        for id in 0..64u16 {
            out.push(&Header::command(id, 1, chunk.len()), &[&chunk], &[])
                .unwrap();
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                let mut got = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(n) = (&b).read(&mut buf) {
                        got += n;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                got
            })
        };
        let r = out.flush(a.as_fd(), Some(Duration::from_millis(500)));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let got = reader.join().unwrap();
        assert!(matches!(r, Err(TransportError::Timeout)), "{r:?}");
        assert!(got > 0, "the peer read nothing");
        assert!(!out.is_empty(), "{got} bytes read, yet everything was sent");
    }

    #[test]
    fn message_with_fds_and_cloexec() {
        let (a, b) = pair();
        let e1 = eventfd();
        let e2 = eventfd();
        let h = Header::command(1, 8, 4);
        send_message(
            a.as_fd(),
            &h,
            &[&[1, 2], &[3, 4]],
            &[e1.as_raw_fd(), e2.as_raw_fd()],
            None,
        )
        .unwrap();
        let mut r = MessageReader::new(&Limits::default());
        let Incoming::Message(m) = read_one(&mut r, &b) else {
            panic!("bad frame")
        };
        assert_eq!(m.header, h);
        assert_eq!(m.payload, vec![1, 2, 3, 4]);
        assert_eq!(m.fds.len(), 2);
        for f in &m.fds {
            // SAFETY: fcntl on a valid fd.
            let fl = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFD) };
            assert!(fl & libc::FD_CLOEXEC != 0);
        }
        assert!(r.is_idle());
    }

    /// Raw `sendmsg` of `bytes` with `fds` (one write).
    fn send_raw(s: &UnixStream, bytes: &[u8], fds: &[RawFd]) {
        let iov = [libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        }];
        assert_eq!(sendmsg_once(s.as_fd(), &iov, fds).unwrap(), bytes.len());
    }

    fn msg_bytes(id: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = Header::command(id, 8, payload.len()).encode().to_vec();
        b.extend_from_slice(payload);
        b
    }

    fn expect_msg(r: &mut MessageReader, s: &UnixStream, id: u16, nfds: usize) {
        let Incoming::Message(m) = read_one(r, s) else {
            panic!("bad frame for {id}")
        };
        assert_eq!(m.header.msg_id, id);
        assert_eq!(m.fds.len(), nfds, "fds of message {id}");
    }

    #[test]
    fn queued_messages_take_one_receive_and_keep_their_fds() {
        // Four messages queued before the first receive, fds on the 2nd and
        // 4th: the receive stops after each fd-carrying write, and each
        // message gets exactly its own fds.
        let (a, b) = pair();
        let e = eventfd();
        send_raw(&a, &msg_bytes(1, &[1; 8]), &[]);
        send_raw(&a, &msg_bytes(2, &[2; 8]), &[e.as_raw_fd()]);
        send_raw(&a, &msg_bytes(3, &[3; 8]), &[]);
        send_raw(&a, &msg_bytes(4, &[4; 8]), &[e.as_raw_fd(), e.as_raw_fd()]);
        let mut r = MessageReader::new(&Limits::default());
        // The first receive returns messages 1 and 2 (it stops at 2's fds).
        assert!(r.take().unwrap().is_none());
        assert_eq!(
            r.fill(b.as_fd(), false).unwrap(),
            Filled::Data { maybe_more: true }
        );
        let Some(Incoming::Message(m)) = r.take().unwrap() else {
            panic!("message 1 not buffered")
        };
        assert_eq!((m.header.msg_id, m.fds.len()), (1, 0));
        let Some(Incoming::Message(m)) = r.take().unwrap() else {
            panic!("message 2 not buffered")
        };
        assert_eq!((m.header.msg_id, m.fds.len()), (2, 1));
        assert!(r.take().unwrap().is_none());
        expect_msg(&mut r, &b, 3, 0);
        expect_msg(&mut r, &b, 4, 2);
        assert!(r.is_idle());
        // Nothing left: a short receive without fds says "drained".
        send_raw(&a, &msg_bytes(5, &[]), &[]);
        assert_eq!(
            r.fill(b.as_fd(), false).unwrap(),
            Filled::Data { maybe_more: false }
        );
        expect_msg(&mut r, &b, 5, 0);
    }

    #[test]
    fn header_and_payload_written_separately() {
        // As the vfio_user crate sends: header and payload in two writes, the
        // fds on either of them, messages queued back to back.
        let (a, b) = pair();
        let e = eventfd();
        let mut r = MessageReader::new(&Limits::default());
        for (fds_on_header, id) in [(true, 1u16), (false, 2), (true, 3), (false, 4)] {
            let m = msg_bytes(id, &[id as u8; 24]);
            let (h, p) = m.split_at(HEADER_SIZE);
            let (fh, fp): (&[RawFd], &[RawFd]) = if fds_on_header {
                (&[e.as_raw_fd()], &[])
            } else {
                (&[], &[e.as_raw_fd()])
            };
            send_raw(&a, h, fh);
            send_raw(&a, p, fp);
            // A message without fds in between.
            send_raw(&a, &msg_bytes(100 + id, &[0; 4]), &[]);
        }
        for id in 1..=4u16 {
            expect_msg(&mut r, &b, id, 1);
            expect_msg(&mut r, &b, 100 + id, 0);
        }
        assert!(r.is_idle());
    }

    #[test]
    fn fds_on_both_parts_of_one_message_count_together() {
        let (a, b) = pair();
        let e = eventfd();
        let m = msg_bytes(1, &[1; 8]);
        let (h, p) = m.split_at(HEADER_SIZE);
        send_raw(&a, h, &[e.as_raw_fd()]);
        send_raw(&a, p, &[e.as_raw_fd()]);
        send_raw(&a, &msg_bytes(2, &[]), &[e.as_raw_fd()]);
        let mut r = one_fd_reader();
        assert!(matches!(
            read_one(&mut r, &b),
            Incoming::Bad {
                error: FrameError::TooManyFds,
                header
            } if header.msg_id == 1
        ));
        expect_msg(&mut r, &b, 2, 1);
    }

    #[test]
    fn message_larger_than_the_buffer() {
        // Received into its own buffer, never past its end; the next message
        // and its fds stay separate.
        let (a, b) = pair();
        let limits = Limits::default();
        assert!(limits.max_msg_size() > READ_BUF_SIZE * 2);
        let len = READ_BUF_SIZE * 2;
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let e = eventfd();
        let raw = e.as_raw_fd();
        let t = std::thread::spawn(move || {
            let h = Header::command(1, 8, len);
            send_message(a.as_fd(), &h, &[&data], &[], Some(Duration::from_secs(10))).unwrap();
            let h = Header::command(2, 8, 3);
            send_message(a.as_fd(), &h, &[&[1, 2, 3]], &[raw], None).unwrap();
            (a, e)
        });
        let mut r = MessageReader::new(&limits);
        let Incoming::Message(m) = read_one(&mut r, &b) else {
            panic!("bad")
        };
        assert_eq!(m.header.msg_id, 1);
        assert_eq!(m.payload.len(), len);
        assert!(m
            .payload
            .iter()
            .enumerate()
            .all(|(i, &v)| v == (i % 251) as u8));
        assert!(m.fds.is_empty());
        expect_msg(&mut r, &b, 2, 1);
        drop(t.join().unwrap());
    }

    #[test]
    fn blocking_fill_waits_for_the_timeout() {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut r = MessageReader::new(&Limits::default());
        assert_eq!(r.fill(b.as_fd(), true).unwrap(), Filled::Empty);
        send_raw(&a, &msg_bytes(7, &[9; 4]), &[]);
        assert!(matches!(
            r.fill(b.as_fd(), true).unwrap(),
            Filled::Data { .. }
        ));
        let Some(Incoming::Message(m)) = r.take().unwrap() else {
            panic!("no message")
        };
        assert_eq!(m.payload, vec![9; 4]);
    }

    #[test]
    fn partial_reads_are_resumed() {
        let (mut a, b) = pair();
        let h = Header::command(9, 10, 3);
        let mut bytes = h.encode().to_vec();
        bytes.extend_from_slice(&[7, 8, 9]);
        let mut r = MessageReader::new(&Limits::default());
        for (i, byte) in bytes.iter().enumerate() {
            a.write_all(&[*byte]).unwrap();
            let got = r.read_message(b.as_fd()).unwrap();
            if i + 1 < bytes.len() {
                assert!(got.is_none(), "message complete too early at byte {i}");
            } else {
                let Some(Incoming::Message(m)) = got else {
                    panic!("no message")
                };
                assert_eq!(m.payload, vec![7, 8, 9]);
            }
        }
    }

    #[test]
    fn oversized_is_skipped_and_stream_stays_in_sync() {
        let (mut a, b) = pair();
        let limits = Limits {
            max_data_xfer_size: 16,
            ..Limits::default()
        };
        let mut r = MessageReader::new(&limits);
        let big = limits.max_msg_size() + 100;
        let h = Header::command(1, 10, big - HEADER_SIZE);
        let writer = std::thread::spawn(move || {
            a.set_nonblocking(false).unwrap();
            a.write_all(&h.encode()).unwrap();
            a.write_all(&vec![0xaa; big - HEADER_SIZE]).unwrap();
            let h2 = Header::command(2, 13, 0);
            a.write_all(&h2.encode()).unwrap();
            a
        });
        let first = read_one(&mut r, &b);
        assert!(matches!(
            first,
            Incoming::Bad {
                error: FrameError::Oversized,
                header
            } if header.msg_id == 1
        ));
        let Incoming::Message(m) = read_one(&mut r, &b) else {
            panic!("stream desynced")
        };
        assert_eq!(m.header.msg_id, 2);
        assert_eq!(m.header.command, 13);
        drop(writer.join().unwrap());
    }

    #[test]
    fn undersized_and_unskippable() {
        let (mut a, b) = pair();
        let mut r = MessageReader::new(&Limits::default());
        let h = Header {
            size: 8,
            ..Header::command(3, 4, 0)
        };
        a.write_all(&h.encode()).unwrap();
        assert!(matches!(
            read_one(&mut r, &b),
            Incoming::Bad {
                error: FrameError::Undersized,
                ..
            }
        ));
        let h = Header {
            size: u32::MAX,
            ..Header::command(3, 4, 0)
        };
        a.write_all(&h.encode()).unwrap();
        assert!(wait_fd(b.as_fd(), libc::POLLIN, Some(Duration::from_secs(5))).unwrap());
        assert!(matches!(
            r.read_message(b.as_fd()),
            Err(TransportError::Unskippable(u32::MAX))
        ));
    }

    #[test]
    fn too_many_fds_are_closed_and_reported() {
        let (a, b) = pair();
        let mut r = one_fd_reader();
        let e1 = eventfd();
        let e2 = eventfd();
        let h = Header::command(5, 8, 0);
        send_message(a.as_fd(), &h, &[], &[e1.as_raw_fd(), e2.as_raw_fd()], None).unwrap();
        assert!(matches!(
            read_one(&mut r, &b),
            Incoming::Bad {
                error: FrameError::TooManyFds,
                ..
            }
        ));
        // The next message is fine.
        send_message(
            a.as_fd(),
            &Header::command(6, 13, 0),
            &[],
            &[e1.as_raw_fd()],
            None,
        )
        .unwrap();
        let Incoming::Message(m) = read_one(&mut r, &b) else {
            panic!("bad")
        };
        assert_eq!(m.header.msg_id, 6);
        assert_eq!(m.fds.len(), 1);
    }

    #[test]
    fn disconnect_mid_message() {
        let (mut a, b) = pair();
        let mut r = MessageReader::new(&Limits::default());
        a.write_all(&Header::command(1, 1, 10).encode()).unwrap();
        a.write_all(&[1, 2]).unwrap();
        drop(a);
        let mut saw = false;
        for _ in 0..10 {
            match r.read_message(b.as_fd()) {
                Err(TransportError::Disconnected) => {
                    saw = true;
                    break;
                }
                Ok(None) => {
                    wait_fd(b.as_fd(), libc::POLLIN, Some(Duration::from_secs(1))).unwrap();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(saw);
        assert!(matches!(
            send_message(b.as_fd(), &Header::command(1, 1, 0), &[], &[], None),
            Err(TransportError::Disconnected)
        ));
    }

    #[test]
    fn send_rejects_inconsistent_size() {
        let (a, _b) = pair();
        let h = Header::command(1, 1, 5);
        assert!(send_message(a.as_fd(), &h, &[&[1]], &[], None).is_err());
    }

    #[test]
    fn large_message_partial_writes() {
        let (a, b) = pair();
        let limits = Limits::default();
        let len = limits.max_data_xfer_size as usize;
        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let h = Header::command(4, 10, len);
        let e = eventfd();
        let raw = e.as_raw_fd();
        let t = std::thread::spawn(move || {
            send_message(
                a.as_fd(),
                &h,
                &[&data],
                &[raw],
                Some(Duration::from_secs(10)),
            )
            .unwrap();
            drop(e);
            a
        });
        let mut r = MessageReader::new(&limits);
        let Incoming::Message(m) = read_one(&mut r, &b) else {
            panic!("bad")
        };
        assert_eq!(m.payload.len(), len);
        assert!(m.payload.iter().enumerate().all(|(i, &v)| v == i as u8));
        assert_eq!(m.fds.len(), 1);
        drop(t.join().unwrap());
    }
}
