//! Server-to-client `DMA_READ`/`DMA_WRITE` on a [`ServerConnection`]: how a
//! device reaches client memory that was mapped without an fd.
//!
//! One request is outstanding at a time; a transfer larger than the
//! negotiated `max_data_xfer_size` (the smaller of the two sides') is split
//! into pieces sent one after the other. While a reply is awaited, commands
//! the client sends meanwhile are **handled at once**, in order, with their
//! replies (the spec forbids stalling command processing while waiting on
//! the other direction; QEMU serves DMA_READ in its main loop, which a vCPU
//! waiting for a REGION_READ reply holds). Stray replies are dropped (logged
//! as peer misbehaviour). A reply that does not match (address, count, data
//! length), an error reply, no reply within the DMA timeout, or the client
//! going away ends the transfer with a [`DmaXferError`]; nothing the client
//! sends can make the wait unbounded.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use super::{Handler, ServerConnection};
use crate::error::{DmaXferError, Errno, TransportError};
use crate::header::{command as cmd, Header};
use crate::message::DmaAccess;
use crate::transport::{send_message, wait_fd, Filled, Incoming, Message};

/// Default bound on the wait for one DMA_READ/DMA_WRITE reply.
pub const DEFAULT_DMA_TIMEOUT: Duration = Duration::from_secs(2);

impl ServerConnection {
    /// Sets how long one DMA_READ/DMA_WRITE piece waits for its reply
    /// (default [`DEFAULT_DMA_TIMEOUT`]).
    pub fn set_dma_timeout(&mut self, t: Duration) {
        self.dma_timeout = t;
    }

    /// Largest `count` of one DMA_READ/DMA_WRITE: the smaller of both
    /// sides' `max_data_xfer_size` (QEMU refuses a larger one with E2BIG).
    pub fn dma_piece_size(&self) -> Option<usize> {
        let n = self.negotiated.as_ref()?;
        let max = n
            .client
            .max_data_xfer_size
            .min(n.server.max_data_xfer_size)
            .max(1);
        Some(max as usize)
    }

    /// Reads `buf.len()` bytes of client memory at `address` with
    /// DMA_READ requests, handling client commands that arrive meanwhile
    /// with `h`.
    pub fn dma_read(
        &mut self,
        h: &mut dyn Handler,
        address: u64,
        buf: &mut [u8],
    ) -> Result<(), DmaXferError> {
        let piece = self.dma_piece_size().ok_or(DmaXferError::NotNegotiated)?;
        let mut addr = address;
        for chunk in buf.chunks_mut(piece) {
            let req = DmaAccess {
                address: addr,
                count: chunk.len() as u64,
                data: Vec::new(),
            };
            let m = self.dma_request(h, cmd::DMA_READ, &req)?;
            let bad = |reason: String| DmaXferError::BadReply {
                command: "DMA_READ",
                reason,
            };
            let r = DmaAccess::decode("DMA_READ reply", &m.payload, true)
                .map_err(|e| bad(e.to_string()))?;
            if r.address != addr || r.count != chunk.len() as u64 {
                return Err(bad(format!(
                    "reply for {:#x}+{} to a request for {addr:#x}+{}",
                    r.address,
                    r.count,
                    chunk.len()
                )));
            }
            if !m.fds.is_empty() {
                return Err(bad("reply carries fds".into()));
            }
            chunk.copy_from_slice(&r.data);
            addr = addr.wrapping_add(chunk.len() as u64);
        }
        Ok(())
    }

    /// Writes `data` to client memory at `address` with DMA_WRITE requests
    /// (see [`Self::dma_read`]). The reply may be empty (QEMU), or carry
    /// the address and a 4- (spec table) or 8-byte (libvfio-user) count,
    /// which must match.
    pub fn dma_write(
        &mut self,
        h: &mut dyn Handler,
        address: u64,
        data: &[u8],
    ) -> Result<(), DmaXferError> {
        let piece = self.dma_piece_size().ok_or(DmaXferError::NotNegotiated)?;
        let mut addr = address;
        for chunk in data.chunks(piece) {
            let req = DmaAccess {
                address: addr,
                count: chunk.len() as u64,
                data: chunk.to_vec(),
            };
            let m = self.dma_request(h, cmd::DMA_WRITE, &req)?;
            check_write_reply(&m, addr, chunk.len() as u64)?;
            addr = addr.wrapping_add(chunk.len() as u64);
        }
        Ok(())
    }

    /// Sends one request and waits for its (non-error) reply.
    fn dma_request(
        &mut self,
        h: &mut dyn Handler,
        command: u16,
        req: &DmaAccess,
    ) -> Result<Message, DmaXferError> {
        let name = cmd::name(command);
        let id = self.next_dma_id;
        self.next_dma_id = self.next_dma_id.wrapping_add(1);
        let payload = req.encode();
        let hdr = Header::command(id, command, payload.len());
        send_message(
            self.sock.as_fd(),
            &hdr,
            &[&payload],
            &[],
            Some(self.write_timeout),
        )
        .map_err(|e| match e {
            TransportError::Disconnected => DmaXferError::Disconnected { command: name },
            e => DmaXferError::Transport(e),
        })?;
        let deadline = Instant::now().checked_add(self.dma_timeout);
        let m = self.await_dma_reply(h, id, command, req.address, deadline)?;
        if m.header.is_error() {
            let errno = match m.header.error as i32 {
                0 => Errno::EIO,
                e => Errno(e),
            };
            return Err(DmaXferError::Remote {
                command: name,
                address: req.address,
                errno,
            });
        }
        Ok(m)
    }

    /// Receives until the reply to `id` arrives, serving client commands
    /// meanwhile.
    fn await_dma_reply(
        &mut self,
        h: &mut dyn Handler,
        id: u16,
        command: u16,
        address: u64,
        deadline: Option<Instant>,
    ) -> Result<Message, DmaXferError> {
        let name = cmd::name(command);
        let gone = DmaXferError::Disconnected { command: name };
        let timed_out = |t: Duration| DmaXferError::Timeout {
            command: name,
            address,
            timeout_ms: t.as_millis() as u64,
        };
        loop {
            // Also a client that keeps sending commands cannot stretch the
            // wait past its deadline.
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(timed_out(self.dma_timeout));
            }
            let inc = match self.reader.take() {
                Ok(Some(i)) => i,
                Ok(None) => {
                    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    let ready = !left.is_some_and(|l| l.is_zero())
                        && wait_fd(self.sock.as_fd(), libc::POLLIN, left)
                            .map_err(|e| DmaXferError::Transport(TransportError::Io(e)))?;
                    if !ready {
                        return Err(timed_out(self.dma_timeout));
                    }
                    match self.reader.fill(self.sock.as_fd(), false) {
                        Ok(Filled::Empty) | Ok(Filled::Data { .. }) => continue,
                        Err(TransportError::Disconnected) => return Err(gone),
                        Err(e) => return Err(DmaXferError::Transport(e)),
                    }
                }
                Err(TransportError::Disconnected) => return Err(gone),
                Err(e) => return Err(DmaXferError::Transport(e)),
            };
            match inc {
                Incoming::Message(m) if m.header.is_reply() => {
                    if m.header.msg_id == id && m.header.command == command {
                        return Ok(m);
                    }
                    crate::peer_warn!(
                        "dropping unexpected reply id {} for {} while waiting for {name}",
                        m.header.msg_id,
                        cmd::name(m.header.command)
                    );
                }
                Incoming::Bad { header, error } if header.is_reply() && header.msg_id == id => {
                    return Err(DmaXferError::BadReply {
                        command: name,
                        reason: format!("reply frame rejected: {error:?}"),
                    });
                }
                other => {
                    // A client command (or a bad frame): handled now, in order.
                    // Its reply goes out now even when replies are deferred:
                    // the client may wait for it before it answers ours.
                    match self.serve_incoming(h, other).and_then(|open| {
                        Ok(open && self.flush_replies()? == crate::server::ConnStatus::Open)
                    }) {
                        Ok(true) => {}
                        Ok(false) => return Err(gone),
                        Err(crate::error::ServerError::Transport(e)) => {
                            return Err(DmaXferError::Transport(e))
                        }
                        Err(_) => return Err(gone),
                    }
                }
            }
        }
    }
}

/// A DMA_WRITE reply: empty, or address (+ count as u32 or u64) matching.
fn check_write_reply(m: &Message, address: u64, count: u64) -> Result<(), DmaXferError> {
    let bad = |reason: String| DmaXferError::BadReply {
        command: "DMA_WRITE",
        reason,
    };
    let p = &m.payload;
    if !m.fds.is_empty() {
        return Err(bad("reply carries fds".into()));
    }
    let u64_at = |o: usize| {
        p.get(o..o + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_ne_bytes)
    };
    let (addr, cnt) = match p.len() {
        0 => return Ok(()),
        12 => (
            u64_at(0),
            p.get(8..12)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(|b| u64::from(u32::from_ne_bytes(b))),
        ),
        16 => (u64_at(0), u64_at(8)),
        n => {
            return Err(bad(format!(
                "reply payload of {n} bytes (0, 12 or 16 expected)"
            )))
        }
    };
    if addr != Some(address) || cnt != Some(count) {
        return Err(bad(format!(
            "reply for {addr:#x?}+{cnt:?} to a request for {address:#x}+{count}"
        )));
    }
    Ok(())
}
