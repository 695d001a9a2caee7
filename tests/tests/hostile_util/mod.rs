//! Raw vfio-user peer for the hostile-input tests: a blocking `UnixStream` to
//! a running `vfio-sidecar`, arbitrary bytes and fds via `sendmsg`, replies
//! read frame by frame with a timeout (a missing reply is an error, not a hang).
#![allow(dead_code, clippy::unwrap_used)]

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vfio_sidecar_protocol::header::{command as cmd, flags, Header, HEADER_SIZE};
use vfio_sidecar_protocol::testing;
use vfio_sidecar_protocol::transport::{recv_with_fds, wait_fd};
pub use vfio_sidecar_tests::pl330::Regs;
use vfio_sidecar_tests::{GuestMem, Sidecar};

/// A reply as received.
#[derive(Debug)]
pub struct Reply {
    /// Header.
    pub hdr: Header,
    /// Payload.
    pub payload: Vec<u8>,
    /// Fds received with it (owned, closed on drop).
    pub fds: Vec<OwnedFd>,
}

impl Reply {
    /// The errno of an error reply, 0 for success.
    pub fn errno(&self) -> i32 {
        if self.hdr.is_error() {
            self.hdr.error as i32
        } else {
            0
        }
    }
}

/// A raw connection.
#[derive(Debug)]
pub struct Raw {
    /// The socket.
    pub sock: UnixStream,
    next_id: u16,
}

/// `vfio-sidecar serve --device model:pl330 EXTRA...` and a raw peer that
/// negotiated (proposing the extension if `extension`).
pub fn pl330_peer(extra: &[&str], extension: bool) -> (Sidecar, Raw) {
    let srv = Sidecar::start("model:pl330", extra);
    let r = Raw::negotiated(&srv.socket, extension);
    (srv, r)
}

/// `n` pipelined 4-byte REGION_READs of register `off` (36-byte replies) in
/// one buffer, ids `first_id..`.
pub fn pipelined_reads(off: u64, first_id: u16, n: u16) -> Vec<u8> {
    let p = region(off, 0, 4, &[]);
    let mut msg = Vec::new();
    for i in 0..n {
        let id = first_id.wrapping_add(i);
        msg.extend_from_slice(&Header::command(id, cmd::REGION_READ, p.len()).encode());
        msg.extend_from_slice(&p);
    }
    msg
}

/// Sends `bytes` in one sendmsg with `fds` attached (blocking unless the
/// socket is non-blocking).
pub fn sendmsg(sock: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<usize> {
    testing::sendmsg_fds(sock.as_fd(), bytes, fds, 0)
}

/// recvmsg into `buf`, waiting up to the socket's read timeout (then
/// `TimedOut`); received fds owned.
fn recvmsg(sock: &UnixStream, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    loop {
        match recv_with_fds(sock.as_fd(), buf, 64) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if !wait_fd(sock.as_fd(), libc::POLLIN, sock.read_timeout()?)? {
                    return Err(ErrorKind::TimedOut.into());
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            r => return r.map(|(n, fds, _)| (n, fds)),
        }
    }
}

impl Raw {
    /// Connects (no VERSION yet).
    pub fn connect(path: &Path) -> Raw {
        let sock = UnixStream::connect(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        sock.set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Raw { sock, next_id: 1 }
    }

    /// Connects and negotiates (optionally proposing the extension).
    pub fn negotiated(path: &Path, extension: bool) -> Raw {
        let mut r = Raw::connect(path);
        let rep = r.version(extension);
        assert_eq!(rep.errno(), 0, "VERSION failed");
        r
    }

    /// Sends a VERSION with the default proposal.
    pub fn version(&mut self, extension: bool) -> Reply {
        let v = testing::client_version_payload(extension);
        self.call(cmd::VERSION, &v, &[])
    }

    /// Sends raw bytes (with fds on the first byte).
    pub fn send_raw(&mut self, bytes: &[u8], fds: &[RawFd]) {
        let mut off = sendmsg(&self.sock, bytes, fds).unwrap();
        while off < bytes.len() {
            off += sendmsg(&self.sock, &bytes[off..], &[]).unwrap();
        }
    }

    /// A message with header fields as given; returns its id.
    pub fn send_hdr(
        &mut self,
        command: u16,
        flg: u32,
        size: u32,
        payload: &[u8],
        fds: &[RawFd],
    ) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let hdr = Header {
            msg_id: id,
            command,
            size,
            flags: flg,
            error: 0,
        };
        let mut m = hdr.encode().to_vec();
        m.extend_from_slice(payload);
        self.send_raw(&m, fds);
        id
    }

    /// A well-framed command; returns its id.
    pub fn send(&mut self, command: u16, payload: &[u8], fds: &[RawFd]) -> u16 {
        let size = (HEADER_SIZE + payload.len()) as u32;
        self.send_hdr(command, flags::TYPE_COMMAND, size, payload, fds)
    }

    fn read_exact(&mut self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> std::io::Result<()> {
        let mut got = 0;
        while got < buf.len() {
            let (n, f) = recvmsg(&self.sock, &mut buf[got..])?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            fds.extend(f);
            got += n;
        }
        Ok(())
    }

    /// Next reply (panics on timeout or EOF).
    pub fn reply(&mut self) -> Reply {
        self.try_reply().expect("reply")
    }

    /// Next reply, or the I/O error (EOF, timeout).
    pub fn try_reply(&mut self) -> std::io::Result<Reply> {
        let mut h = [0u8; HEADER_SIZE];
        let mut fds = Vec::new();
        self.read_exact(&mut h, &mut fds)?;
        let hdr = Header::decode(&h);
        assert!(hdr.size as usize >= HEADER_SIZE, "bad reply size {hdr:?}");
        assert!(hdr.is_reply(), "not a reply: {hdr:?}");
        let mut payload = vec![0u8; hdr.size as usize - HEADER_SIZE];
        self.read_exact(&mut payload, &mut fds)?;
        Ok(Reply { hdr, payload, fds })
    }

    /// Sends a command and returns its reply (checking id and command match).
    pub fn call(&mut self, command: u16, payload: &[u8], fds: &[RawFd]) -> Reply {
        let id = self.send(command, payload, fds);
        let r = self.reply();
        assert_eq!(r.hdr.msg_id, id, "reply to the wrong message: {r:?}");
        assert_eq!(r.hdr.command, command, "reply for the wrong command: {r:?}");
        r
    }

    /// Sends a command and asserts the errno of its reply (0 = success).
    pub fn expect(
        &mut self,
        what: &str,
        command: u16,
        payload: &[u8],
        fds: &[RawFd],
        errno: i32,
    ) -> Reply {
        let r = self.call(command, payload, fds);
        assert_eq!(
            r.errno(),
            errno,
            "{what}: expected errno {errno}, got {} ({:?})",
            r.errno(),
            r.hdr
        );
        if errno != 0 {
            assert_eq!(
                r.hdr.size as usize, HEADER_SIZE,
                "{what}: error reply with payload"
            );
        }
        r
    }

    /// DMA_MAP of `mem` from offset 0, `size` bytes at `iova` with `flags`;
    /// asserts success (`what` names it).
    pub fn map(&mut self, what: &str, mem: &GuestMem, flags: u32, iova: u64, size: u64) {
        let p = dma_map(flags, 0, iova, size);
        self.expect(what, cmd::DMA_MAP, &p, &[mem.fd().as_raw_fd()], 0);
    }

    /// True if the server closed the connection (EOF within the timeout).
    pub fn closed_by_server(&mut self) -> bool {
        self.sock
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 1];
        // EOF, or ECONNRESET when the server closed with our bytes unread.
        let r = match recvmsg(&self.sock, &mut b) {
            Ok((0, _)) => true,
            Ok(_) => false,
            Err(e) => e.raw_os_error() == Some(libc::ECONNRESET),
        };
        self.sock
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        r
    }

    /// A valid request that must succeed (the connection still works).
    pub fn still_works(&mut self) {
        let r = self.call(cmd::DEVICE_GET_INFO, &di_payload(), &[]);
        assert_eq!(r.errno(), 0, "connection no longer usable: {r:?}");
    }
}

/// Register access to region 0 (REGION_READ/WRITE of 4 bytes); the error
/// is the reply's errno.
impl Regs for Raw {
    type Error = i32;

    fn try_write32(&mut self, off: u64, v: u32) -> Result<(), i32> {
        let r = self.call(cmd::REGION_WRITE, &region(off, 0, 4, &v.to_le_bytes()), &[]);
        match r.errno() {
            0 => Ok(()),
            e => Err(e),
        }
    }

    fn try_read32(&mut self, off: u64) -> Result<u32, i32> {
        let r = self.call(cmd::REGION_READ, &region(off, 0, 4, &[]), &[]);
        if r.errno() != 0 {
            return Err(r.errno());
        }
        assert_eq!(r.payload.len(), 16 + 4, "REGION_READ reply of 4 bytes");
        Ok(u32::from_le_bytes(r.payload[16..20].try_into().unwrap()))
    }
}

/// `words` as native-endian bytes (a payload of u32 fields).
pub fn ne32(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

/// DEVICE_GET_INFO request payload.
pub fn di_payload() -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&16u32.to_ne_bytes());
    p.extend_from_slice(&[0u8; 12]);
    p
}

/// DMA_MAP payload.
pub fn dma_map(flags: u32, offset: u64, iova: u64, size: u64) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&32u32.to_ne_bytes());
    p.extend_from_slice(&flags.to_ne_bytes());
    p.extend_from_slice(&offset.to_ne_bytes());
    p.extend_from_slice(&iova.to_ne_bytes());
    p.extend_from_slice(&size.to_ne_bytes());
    p
}

/// DMA_UNMAP payload.
pub fn dma_unmap(flags: u32, iova: u64, size: u64) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&24u32.to_ne_bytes());
    p.extend_from_slice(&flags.to_ne_bytes());
    p.extend_from_slice(&iova.to_ne_bytes());
    p.extend_from_slice(&size.to_ne_bytes());
    p
}

/// REGION_READ payload (or REGION_WRITE's fixed part + `data`).
pub fn region(offset: u64, region: u32, count: u32, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&offset.to_ne_bytes());
    p.extend_from_slice(&region.to_ne_bytes());
    p.extend_from_slice(&count.to_ne_bytes());
    p.extend_from_slice(data);
    p
}

/// SET_IRQS payload.
pub fn set_irqs(flags: u32, index: u32, start: u32, count: u32, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&((20 + data.len()) as u32).to_ne_bytes());
    p.extend_from_slice(&flags.to_ne_bytes());
    p.extend_from_slice(&index.to_ne_bytes());
    p.extend_from_slice(&start.to_ne_bytes());
    p.extend_from_slice(&count.to_ne_bytes());
    p.extend_from_slice(data);
    p
}

/// A payload of (argsz, index) + zero padding to `len` (GET_REGION_INFO etc.).
pub fn argsz_index(argsz: u32, index: u32, len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&argsz.to_ne_bytes());
    p.extend_from_slice(&0u32.to_ne_bytes());
    p.extend_from_slice(&index.to_ne_bytes());
    p.resize(len.max(12), 0);
    p
}

/// A pipe: (read end, write end).
pub fn pipe() -> (OwnedFd, OwnedFd) {
    testing::pipe().unwrap()
}

/// /dev/null opened read-write.
pub fn devnull() -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .unwrap()
}
