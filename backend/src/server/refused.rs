//! Peers refused because the single client slot is taken.
//!
//! Each is answered with an `EBUSY` error reply to its first message
//! (normally VERSION) and only then closed, however many connect at once: the
//! first message is read whole (its payload up to [`DISCARD_MAX`] bytes is
//! read and discarded, fds sent with it are closed by the kernel), so a
//! client that writes header and payload separately does not hit `EPIPE`. A
//! peer that sends no complete header within [`REFUSED_DEADLINE`] gets an
//! `EBUSY` error reply to a VERSION with message id 0, then is closed; so
//! does every waiting peer when the backend shuts down.
//!
//! At most [`MAX_REFUSED`] peers wait at a time; while the set is full the
//! event loop stops accepting (the rest wait in the listen backlog), so the
//! fds and memory refused peers hold are bounded and none is dropped
//! unanswered to make room. Nothing here blocks: every receive and the one
//! 16-byte send are non-blocking, on sockets nothing else has written to.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vfio_sidecar_protocol::header::{command as cmd, Header, HEADER_SIZE};
use vfio_sidecar_protocol::transport::{recv_with_fds, send_bytes};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Refused peers waiting for their answer at most; beyond, the listener is
/// not watched until one leaves.
pub const MAX_REFUSED: usize = 256;

/// Time a refused peer has to send its first message before it is answered
/// anyway (and closed).
pub const REFUSED_DEADLINE: Duration = Duration::from_secs(1);

/// Payload bytes of a refused peer's first message read (and discarded)
/// before the answer; the rest of a larger one stays unread.
pub const DISCARD_MAX: usize = 64 << 10;

/// Epoll token bit of a refused peer (the low bits are its fd).
pub const TOKEN_REFUSED: u64 = 1 << 62;

/// One refused peer.
#[derive(Debug)]
struct Peer {
    sock: UnixStream,
    deadline: Instant,
    header: [u8; HEADER_SIZE],
    got: usize,
    /// Payload bytes of the first message still to discard.
    skip: usize,
}

/// What a refused peer's socket gave.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// More to read; wait for it.
    Wait,
    /// The first message is in: answer it.
    Answer,
    /// The peer hung up (or its socket failed): nothing to answer.
    Gone,
}

impl Peer {
    /// Reads what is there of the first message (never blocks).
    fn progress(&mut self) -> Step {
        let mut discard = [0u8; 4096];
        loop {
            let buf: &mut [u8] = if self.got < HEADER_SIZE {
                self.header.get_mut(self.got..).unwrap_or_default()
            } else if self.skip > 0 {
                let n = self.skip.min(discard.len());
                discard.get_mut(..n).unwrap_or_default()
            } else {
                return Step::Answer;
            };
            // No room for fds: the kernel closes any the peer sent.
            match recv_with_fds(self.sock.as_fd(), buf, 0) {
                Ok((0, _, _)) => return Step::Gone,
                Ok((n, _, _)) if self.got < HEADER_SIZE => {
                    self.got += n;
                    if self.got == HEADER_SIZE {
                        let size = Header::decode(&self.header).size as usize;
                        self.skip = size.saturating_sub(HEADER_SIZE).min(DISCARD_MAX);
                    }
                }
                Ok((n, _, _)) => self.skip = self.skip.saturating_sub(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Step::Wait,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Step::Gone,
            }
        }
    }

    /// The EBUSY error reply: to the first message, or (no complete header
    /// yet) to a VERSION with id 0. Non-blocking; a failure only means the
    /// peer goes unanswered because it is gone.
    fn answer(&self) {
        let req = if self.got == HEADER_SIZE {
            Header::decode(&self.header)
        } else {
            Header::command(0, cmd::VERSION, 0)
        };
        let reply = Header::error_reply(&req, libc::EBUSY).encode();
        if let Err(e) = send_bytes(self.sock.as_fd(), &reply, Some(Duration::ZERO)) {
            log::debug!("refused peer: cannot send its EBUSY: {e}");
        }
    }
}

/// The refused peers waiting for their answer (see the module docs).
#[derive(Debug, Default)]
pub struct RefusedPeers {
    peers: BTreeMap<RawFd, Peer>,
}

impl RefusedPeers {
    /// No room for another one.
    pub fn is_full(&self) -> bool {
        self.peers.len() >= MAX_REFUSED
    }

    /// How many wait.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// None waits.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Takes a refused peer: answers it now if its first message is already
    /// there, else watches it with `epoll` until it is (or its deadline).
    pub fn add(&mut self, epoll: &Epoll, sock: UnixStream, now: Instant) {
        if let Err(e) = sock.set_nonblocking(true) {
            log::debug!("refused peer: {e}");
            return;
        }
        let mut peer = Peer {
            sock,
            deadline: now + REFUSED_DEADLINE,
            header: [0; HEADER_SIZE],
            got: 0,
            skip: 0,
        };
        match peer.progress() {
            Step::Answer => peer.answer(),
            Step::Gone => {}
            Step::Wait => {
                let fd = peer.sock.as_raw_fd();
                let ev = EpollEvent::new(EventSet::IN, TOKEN_REFUSED | fd as u64);
                match epoll.ctl(ControlOperation::Add, fd, ev) {
                    Ok(()) => {
                        self.peers.insert(fd, peer);
                    }
                    Err(e) => {
                        log::warn!("cannot watch a refused peer ({e}): answering it now");
                        peer.answer();
                    }
                }
            }
        }
    }

    /// The peer with epoll token `token` is readable.
    pub fn on_readable(&mut self, epoll: &Epoll, token: u64) {
        let Ok(fd) = RawFd::try_from(token & !TOKEN_REFUSED) else {
            return;
        };
        let step = match self.peers.get_mut(&fd) {
            Some(p) => p.progress(),
            None => return,
        };
        match step {
            Step::Wait => {}
            Step::Answer => self.finish(epoll, fd, true),
            Step::Gone => self.finish(epoll, fd, false),
        }
    }

    /// Answers and closes every peer whose deadline is at or before `now`.
    pub fn expire(&mut self, epoll: &Epoll, now: Instant) {
        let due: Vec<RawFd> = self
            .peers
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&fd, _)| fd)
            .collect();
        for fd in due {
            log::debug!("refused peer sent no complete message in time: answering EBUSY");
            self.finish(epoll, fd, true);
        }
    }

    /// The earliest deadline of a waiting peer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.peers.values().map(|p| p.deadline).min()
    }

    /// Answers every waiting peer and closes it (shutdown).
    pub fn answer_all(&mut self) {
        for p in std::mem::take(&mut self.peers).into_values() {
            p.answer();
        }
    }

    fn finish(&mut self, epoll: &Epoll, fd: RawFd, answer: bool) {
        if let Some(p) = self.peers.remove(&fd) {
            let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
            if answer {
                p.answer();
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn read_all(mut s: &UnixStream) -> Vec<u8> {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn busy_reply_to(got: &[u8]) -> Header {
        assert_eq!(got.len(), HEADER_SIZE, "{got:?}");
        let h = Header::decode(got.try_into().unwrap());
        assert!(h.is_reply() && h.is_error());
        assert_eq!(h.error as i32, libc::EBUSY);
        h
    }

    #[test]
    fn first_message_read_whole_then_answered() {
        let epoll = Epoll::new().unwrap();
        let mut set = RefusedPeers::default();
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        // Header first, payload later (as a client writing them separately).
        let payload = [7u8; 100];
        theirs
            .write_all(&Header::command(42, cmd::VERSION, payload.len()).encode())
            .unwrap();
        set.add(&epoll, ours, Instant::now());
        assert_eq!(set.len(), 1, "waits for the payload");
        theirs.write_all(&payload).unwrap();
        let token = TOKEN_REFUSED | set.peers.keys().next().copied().unwrap() as u64;
        set.on_readable(&epoll, token);
        assert!(set.is_empty());
        let h = busy_reply_to(&read_all(&theirs));
        assert_eq!((h.msg_id, h.command), (42, cmd::VERSION));
    }

    #[test]
    fn silent_peer_answered_at_its_deadline_and_at_shutdown() {
        let epoll = Epoll::new().unwrap();
        let mut set = RefusedPeers::default();
        let (ours, theirs) = UnixStream::pair().unwrap();
        let now = Instant::now();
        set.add(&epoll, ours, now);
        assert_eq!(set.next_deadline(), Some(now + REFUSED_DEADLINE));
        set.expire(&epoll, now);
        assert_eq!(set.len(), 1, "not due yet");
        set.expire(&epoll, now + REFUSED_DEADLINE);
        assert!(set.is_empty());
        let h = busy_reply_to(&read_all(&theirs));
        assert_eq!((h.msg_id, h.command), (0, cmd::VERSION));
        // Shutdown answers whoever still waits.
        let (ours, theirs) = UnixStream::pair().unwrap();
        set.add(&epoll, ours, now);
        set.answer_all();
        busy_reply_to(&read_all(&theirs));
    }

    #[test]
    fn set_is_bounded() {
        let epoll = Epoll::new().unwrap();
        let mut set = RefusedPeers::default();
        let mut theirs = Vec::new();
        while !set.is_full() {
            let (ours, t) = UnixStream::pair().unwrap();
            set.add(&epoll, ours, Instant::now());
            theirs.push(t);
        }
        assert_eq!(set.len(), MAX_REFUSED);
        set.answer_all();
        assert!(set.is_empty());
        for t in &theirs {
            busy_reply_to(&read_all(t));
        }
    }

    #[test]
    fn peer_that_hung_up_is_dropped_unanswered() {
        let epoll = Epoll::new().unwrap();
        let mut set = RefusedPeers::default();
        let (ours, theirs) = UnixStream::pair().unwrap();
        set.add(&epoll, ours, Instant::now());
        drop(theirs);
        let token = TOKEN_REFUSED | set.peers.keys().next().copied().unwrap() as u64;
        set.on_readable(&epoll, token);
        assert!(set.is_empty());
    }
}
