//! Framing and `SCM_RIGHTS` fd passing over a `UnixStream`.
//!
//! * Sending: one `sendmsg` per message carries the fds with the first byte;
//!   partial writes are continued (without fds); `MSG_NOSIGNAL` (no SIGPIPE);
//!   a socket that stays full for the write timeout is an error.
//! * Receiving ([`MessageReader`]): non-blocking, resumable state machine that
//!   reads exactly one message at a time (header, then exactly the declared
//!   payload) so fds are never attributed to the wrong message. Fds arrive with
//!   `MSG_CMSG_CLOEXEC` and are owned as [`OwnedFd`] at once. The declared size
//!   is checked before any allocation; a message larger than the limit is
//!   skipped (consumed into a fixed scratch buffer) and reported, so the stream
//!   never desyncs; a declared size beyond [`SKIP_LIMIT`] closes the connection.

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

#[derive(Debug)]
enum Phase {
    Header,
    Payload,
    Skip,
}

/// Resumable reader of one message at a time from a (non-blocking) socket.
#[derive(Debug)]
pub struct MessageReader {
    max_msg_size: usize,
    max_fds: usize,
    phase: Phase,
    hdr_buf: [u8; HEADER_SIZE],
    got: usize,
    header: Header,
    payload: Vec<u8>,
    skip_left: usize,
    fds: Vec<OwnedFd>,
    too_many_fds: bool,
    spare: Vec<u8>,
}

impl MessageReader {
    /// A reader enforcing `limits` (message size and fds per message).
    pub fn new(limits: &Limits) -> Self {
        MessageReader {
            max_msg_size: limits.max_msg_size(),
            max_fds: limits.max_msg_fds as usize,
            phase: Phase::Header,
            hdr_buf: [0; HEADER_SIZE],
            got: 0,
            header: Header::default(),
            payload: Vec::new(),
            skip_left: 0,
            fds: Vec::new(),
            too_many_fds: false,
            spare: Vec::new(),
        }
    }

    /// Largest message accepted.
    pub fn max_msg_size(&self) -> usize {
        self.max_msg_size
    }

    /// True when no partial message is buffered.
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Header) && self.got == 0
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
    /// (`Err(Disconnected)`, also mid-message).
    pub fn read_message(&mut self, fd: BorrowedFd<'_>) -> Result<Option<Incoming>, TransportError> {
        loop {
            match self.phase {
                Phase::Header => {
                    let mut buf = [0u8; HEADER_SIZE];
                    let want = HEADER_SIZE - self.got;
                    let n = match self.recv(fd, &mut buf[..want])? {
                        None => return Ok(None),
                        Some(n) => n,
                    };
                    self.hdr_buf[self.got..self.got + n].copy_from_slice(&buf[..n]);
                    self.got += n;
                    if self.got < HEADER_SIZE {
                        continue;
                    }
                    self.header = Header::decode(&self.hdr_buf);
                    self.got = 0;
                    let size = self.header.size as usize;
                    if size < HEADER_SIZE {
                        self.fds.clear();
                        self.too_many_fds = false;
                        return Ok(Some(Incoming::Bad {
                            header: self.header,
                            error: FrameError::Undersized,
                        }));
                    }
                    if size > self.max_msg_size {
                        if size > SKIP_LIMIT {
                            self.fds.clear();
                            return Err(TransportError::Unskippable(self.header.size));
                        }
                        log::warn!(
                            "skipping oversized message ({} bytes, limit {})",
                            size,
                            self.max_msg_size
                        );
                        self.skip_left = size - HEADER_SIZE;
                        self.phase = Phase::Skip;
                        continue;
                    }
                    let len = size - HEADER_SIZE;
                    let mut p = mem::take(&mut self.spare);
                    p.clear();
                    p.resize(len, 0);
                    self.payload = p;
                    self.phase = Phase::Payload;
                }
                Phase::Payload => {
                    if self.got < self.payload.len() {
                        let mut payload = mem::take(&mut self.payload);
                        let r = self.recv(fd, &mut payload[self.got..]);
                        self.payload = payload;
                        match r? {
                            None => return Ok(None),
                            Some(n) => self.got += n,
                        }
                        continue;
                    }
                    self.phase = Phase::Header;
                    self.got = 0;
                    let header = self.header;
                    let fds = mem::take(&mut self.fds);
                    if mem::replace(&mut self.too_many_fds, false) {
                        let p = mem::take(&mut self.payload);
                        self.recycle(p);
                        return Ok(Some(Incoming::Bad {
                            header,
                            error: FrameError::TooManyFds,
                        }));
                    }
                    return Ok(Some(Incoming::Message(Message {
                        header,
                        payload: mem::take(&mut self.payload),
                        fds,
                    })));
                }
                Phase::Skip => {
                    if self.skip_left > 0 {
                        let mut scratch = [0u8; 4096];
                        let want = self.skip_left.min(scratch.len());
                        match self.recv(fd, &mut scratch[..want])? {
                            None => return Ok(None),
                            Some(n) => self.skip_left -= n,
                        }
                        self.fds.clear();
                        continue;
                    }
                    self.phase = Phase::Header;
                    self.fds.clear();
                    self.too_many_fds = false;
                    return Ok(Some(Incoming::Bad {
                        header: self.header,
                        error: FrameError::Oversized,
                    }));
                }
            }
        }
    }

    /// One non-blocking recvmsg into `buf`; fds are appended to `self.fds`.
    fn recv(
        &mut self,
        fd: BorrowedFd<'_>,
        buf: &mut [u8],
    ) -> Result<Option<usize>, TransportError> {
        match recv_with_fds(fd, buf, self.max_fds) {
            Ok((0, _, _)) => Err(TransportError::Disconnected),
            Ok((n, fds, truncated)) => {
                if truncated || self.fds.len() + fds.len() > self.max_fds {
                    self.too_many_fds = true;
                } else {
                    self.fds.extend(fds);
                }
                Ok(Some(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Some(0)),
            Err(e) => Err(map_io(e)),
        }
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
    // of msg_controllen bytes, both live for the call.
    let n = unsafe {
        libc::recvmsg(
            fd.as_raw_fd(),
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
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
/// the first byte. Handles partial writes and a full socket (waiting up to
/// `timeout` for it to drain each time it is full).
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
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !wait_fd(fd, libc::POLLOUT, timeout).map_err(map_io)? {
                    return Err(TransportError::Timeout);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(map_io(e)),
        }
    }
    Ok(())
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
    use std::io::Write;
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

    fn eventfd() -> OwnedFd {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fresh fd owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(fd) }
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
        let limits = Limits {
            max_msg_fds: 1,
            ..Limits::default()
        };
        let mut r = MessageReader::new(&limits);
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
