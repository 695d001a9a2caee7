//! Shared helpers of the protocol integration tests: the toy device handler
//! (from `vfio_sidecar_protocol::testing`), a server thread and raw-socket peers.
#![allow(dead_code, unused_imports, clippy::unwrap_used)]

use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::Duration;

use vfio_sidecar_protocol::caps::{Capabilities, Limits};
use vfio_sidecar_protocol::header::Header;
use vfio_sidecar_protocol::message::*;
pub use vfio_sidecar_protocol::testing::{
    eventfd_read, toy_desc, watchdog, ToyHandler, NUM_SPARSE_BIG, REG_SIZE, TOY_DTB,
};
use vfio_sidecar_protocol::transport::{send_message, wait_fd, Incoming, Message, MessageReader};
use vfio_sidecar_protocol::{testing, ConnStatus, Handler, ServerConnection, TransportError};

pub fn memfd(size: usize) -> OwnedFd {
    testing::memfd("proto-test", size as u64).unwrap()
}

/// A non-blocking eventfd.
pub fn eventfd() -> OwnedFd {
    testing::eventfd(true).unwrap()
}

pub fn eventfd_signal(fd: RawFd) {
    testing::eventfd_signal(fd).unwrap();
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
        let payload = testing::version_payload(caps);
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
        self.call(1, &testing::version_payload(caps.clone()), &[])
    }
}

pub fn errno_of(m: &Message) -> Option<i32> {
    m.header.is_error().then_some(m.header.error as i32)
}
