//! Fuzz harness: a byte stream (plus fds chosen by the input) fed into the
//! backend's real `ServerConnection` + `Backend` handler (PL330 model) over a
//! socketpair, with the event loop's duties (run pending work, device poll fds,
//! client disconnect cleanup) done in between.
//!
//! Shared by the cargo-fuzz target `server_pl330` and the corpus replay test
//! `tests/tests/hostile_fuzz_replay.rs` (which includes this file by path).
//!
//! Input format (every read past the end yields 0):
//! * byte 0: setup — bit 0 auto-VERSION (send a valid VERSION first), bit 1
//!   propose the vfio-sidecar extension, bit 2 `no-dmago-gate`, bits 3-4 EOI
//!   policy (default / clear-register / first-access / resample);
//! * then operations, one opcode byte each (`op % 8`):
//!   0. RAW: `len:u16 % 4096`, fd spec, `len` bytes sent as-is;
//!   1. MSG: `cmd` (table index or raw), `flags:u8`, fd spec, `len:u16 % 2048`,
//!      payload; header size field correct;
//!   2. BADSIZE: as MSG, then `delta:i8` added to the size field;
//!   3. GUEST: `mem:u8`, `off:u16`, `len:u8`, bytes written into guest memory;
//!   4. KICK: `n:u8` — signal the n-th eventfd passed so far (resample);
//!   5. RECONNECT: close the client socket, let the server clean up, connect a
//!      new client (auto-VERSION again if set);
//!   6. MAP: `mem:u8`, `page:u8`, `pages:u8`, `flags:u8`: a well-formed DMA_MAP
//!      of guest memory at IOVA `0x4000_0000 + page * 4 KiB`;
//!   7. REG: `write:u8`, `off:u16`, `val:u32`: a well-formed 4-byte
//!      REGION_READ/WRITE of region 0;
//!   8. RESIZE: `mem:u8`, `pages:u8`: the client shrinks (or regrows) guest
//!      memory under its mappings (`pages % 17` × 4 KiB).
//! * fd spec: `n:u8` → 0, 1, 2 or 17 fds (too many); each fd kind from the
//!   next byte: memfd 0/1 (guest memory), eventfd, pipe, socket, /dev/null,
//!   or a *blocking* eventfd whose counter is at its maximum − 1.
//!
//! Checked after every step: the reply stream is well-framed (whole messages,
//! size ≥ 16, reply type); after the client goes: no DMA mapping is left; at
//! the end: this process holds exactly the fds it held before.
#![allow(dead_code)]

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vfio_sidecar::cli::ServeArgs;
use vfio_sidecar::irq::EoiPolicy;
use vfio_sidecar::server::{build_backend, Backend};
use vfio_sidecar_protocol::caps::Limits;
use vfio_sidecar_protocol::header::{command as cmd, flags, Header, HEADER_SIZE};
use vfio_sidecar_protocol::server::{ConnStatus, ServerConnection};
use vfio_sidecar_protocol::testing;
use vfio_sidecar_protocol::transport::recv_with_fds;

/// Guest memory size per memfd.
pub const MEM_SIZE: u64 = 0x10000;
/// IOVA base of MAP operations.
pub const IOVA_BASE: u64 = 0x4000_0000;

const COMMANDS: [u16; 20] = [
    cmd::VERSION,
    cmd::DMA_MAP,
    cmd::DMA_UNMAP,
    cmd::DEVICE_GET_INFO,
    cmd::DEVICE_GET_REGION_INFO,
    cmd::DEVICE_GET_REGION_IO_FDS,
    cmd::DEVICE_GET_IRQ_INFO,
    cmd::DEVICE_SET_IRQS,
    cmd::REGION_READ,
    cmd::REGION_WRITE,
    cmd::DMA_READ,
    cmd::DMA_WRITE,
    cmd::DEVICE_RESET,
    cmd::REGION_WRITE_MULTI,
    cmd::DEVICE_FEATURE,
    cmd::MIG_DATA_READ,
    cmd::SIDECAR_GET_DEVICE_DESC,
    cmd::SIDECAR_GET_IRQ_STATS,
    14,
    0xffff,
];

/// Reads bytes of the input; past the end everything is 0.
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    /// Wraps the input.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }
    /// True when everything was consumed.
    pub fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
    /// One byte.
    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    /// Little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    /// Little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    /// Up to `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = self.pos.saturating_add(n);
        self.data.get(start..end).unwrap_or_default()
    }
}

/// Open fds of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn memfd(name: &str, size: u64) -> File {
    File::from(testing::memfd(name, size).expect("memfd"))
}

/// Sends `bytes` with `fds` attached to the first byte (one sendmsg per
/// chunk); returns how many bytes went out (0 on EAGAIN).
pub fn send_some(sock: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<usize> {
    match testing::sendmsg_fds(sock.as_fd(), bytes, fds, libc::MSG_DONTWAIT) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
        r => r,
    }
}

/// Receives what is available; received fds are closed at once. Returns the
/// bytes (empty on EAGAIN), how many fds came with them and whether the peer
/// closed.
pub fn recv_some(sock: &UnixStream) -> (Vec<u8>, usize, bool) {
    let mut buf = vec![0u8; 1 << 16];
    match recv_with_fds(sock.as_fd(), &mut buf, 64) {
        Ok((0, _, _)) => (Vec::new(), 0, true),
        Ok((n, fds, _)) => {
            buf.truncate(n);
            (buf, fds.len(), false)
        }
        Err(e) => (Vec::new(), 0, e.kind() != ErrorKind::WouldBlock),
    }
}

/// Checks the reply stream: whole frames, each a reply of size ≥ 16.
pub fn check_replies(stream: &mut Vec<u8>) -> usize {
    let mut n = 0;
    loop {
        if stream.len() < HEADER_SIZE {
            break;
        }
        let mut h = [0u8; HEADER_SIZE];
        h.copy_from_slice(&stream[..HEADER_SIZE]);
        let hdr = Header::decode(&h);
        assert!(hdr.size as usize >= HEADER_SIZE, "reply size {}", hdr.size);
        assert!(hdr.is_reply(), "server sent a non-reply {hdr:?}");
        if hdr.is_error() {
            assert_eq!(hdr.size as usize, HEADER_SIZE, "error reply with payload");
            assert_ne!(hdr.error, 0, "error reply without errno");
        }
        if stream.len() < hdr.size as usize {
            break;
        }
        stream.drain(..hdr.size as usize);
        n += 1;
    }
    n
}

/// One client connection of the harness: the server side plus our end.
struct Conn {
    server: Option<ServerConnection>,
    client: UnixStream,
    replies: Vec<u8>,
    closed: bool,
}

impl Conn {
    fn new(limits: Limits) -> Conn {
        let (a, b) = UnixStream::pair().expect("socketpair");
        b.set_nonblocking(true).expect("nonblocking");
        let mut server = ServerConnection::new(a, limits).expect("server connection");
        server.set_write_timeout(Duration::from_millis(200));
        Conn {
            server: Some(server),
            client: b,
            replies: Vec::new(),
            closed: false,
        }
    }
}

/// The harness state.
pub struct Harness {
    backend: Backend,
    conn: Conn,
    mems: [File; 2],
    eventfds: Vec<File>,
    setup: u8,
    limits: Limits,
    /// Complete reply frames seen (for tests).
    pub replies: usize,
    /// Times the server closed the connection (for tests).
    pub server_closes: usize,
}

impl Harness {
    /// A backend for the PL330 model configured by the setup byte.
    pub fn new(setup: u8) -> Harness {
        let mut dev = String::from("model:pl330,step-budget=4096");
        if setup & 4 != 0 {
            dev.push_str(",no-dmago-gate");
        }
        let spec = dev.parse().expect("device spec");
        let mut args = ServeArgs::new("/nonexistent/fuzz.sock".into(), spec);
        args.max_dma_maps = 64;
        args.eoi = match (setup >> 3) & 3 {
            1 => Some(EoiPolicy::ClearRegister),
            2 => Some(EoiPolicy::FirstAccess),
            3 => Some(EoiPolicy::Resample),
            _ => None,
        };
        let backend = build_backend(&args).expect("backend");
        let limits = Limits {
            max_dma_maps: args.max_dma_maps,
            ..Limits::default()
        };
        let mut h = Harness {
            backend,
            conn: Conn::new(limits),
            mems: [memfd("guest0", MEM_SIZE), memfd("guest1", MEM_SIZE)],
            eventfds: Vec::new(),
            setup,
            limits,
            replies: 0,
            server_closes: 0,
        };
        h.greet();
        h
    }

    fn greet(&mut self) {
        if self.setup & 1 == 0 {
            return;
        }
        let v = testing::client_version_payload(self.setup & 2 != 0);
        self.send_msg(cmd::VERSION, 0, &v, 0, &[]);
    }

    /// Lets the server handle what is readable, drains and checks the replies,
    /// and does what the event loop does after a client message.
    fn pump(&mut self) {
        if let Some(s) = self.conn.server.as_mut() {
            let st = s.handle_readable(&mut self.backend);
            if !matches!(st, Ok(ConnStatus::Open)) {
                self.conn.server = None;
                self.server_closes += 1;
                self.backend.client_gone();
                assert_eq!(self.backend.dma_len(), 0, "mappings left after client_gone");
            }
        }
        loop {
            let (b, _nfds, closed) = recv_some(&self.conn.client);
            if closed {
                self.conn.closed = true;
            }
            if b.is_empty() {
                break;
            }
            self.conn.replies.extend_from_slice(&b);
        }
        self.replies += check_replies(&mut self.conn.replies);
        self.run_device(4);
    }

    /// Runs pending device work and services readable device poll fds.
    fn run_device(&mut self, rounds: usize) {
        for _ in 0..rounds {
            let mut more = self.backend.run_pending();
            for (fd, tok) in self.backend.poll_fds() {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: poll on one pollfd we own, zero timeout.
                let r = unsafe { libc::poll(&mut p, 1, 0) };
                if r == 1 && p.revents & libc::POLLIN != 0 {
                    self.backend.on_poll_fd(tok);
                    more = true;
                }
            }
            if !more {
                break;
            }
        }
    }

    fn send_all(&mut self, bytes: &[u8], fds: &[OwnedFd]) {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let mut off = 0;
        let mut first = true;
        let mut stalls = 0;
        while off < bytes.len() || (first && !raw.is_empty()) {
            if self.conn.closed || self.conn.server.is_none() {
                return;
            }
            let chunk = bytes.get(off..).unwrap_or_default();
            let r = if first {
                send_some(&self.conn.client, chunk, &raw)
            } else {
                send_some(&self.conn.client, chunk, &[])
            };
            match r {
                Ok(0) if chunk.is_empty() => break,
                Ok(0) => {
                    stalls += 1;
                    assert!(stalls < 1000, "server stopped reading");
                    self.pump();
                }
                Ok(n) => {
                    off += n;
                    first = false;
                }
                Err(_) => {
                    self.conn.closed = true;
                    return;
                }
            }
        }
        self.pump();
    }

    fn send_msg(&mut self, command: u16, flg: u32, payload: &[u8], delta: i32, fds: &[OwnedFd]) {
        let size = (HEADER_SIZE + payload.len()) as i64 + i64::from(delta);
        let hdr = Header {
            msg_id: 0x5a5a,
            command,
            size: size.clamp(0, i64::from(u32::MAX)) as u32,
            flags: flg,
            error: 0,
        };
        let mut m = hdr.encode().to_vec();
        m.extend_from_slice(payload);
        self.send_all(&m, fds);
    }

    fn fd_spec(&mut self, inp: &mut Input<'_>) -> Vec<OwnedFd> {
        let n = match inp.u8() % 8 {
            0..=3 => 0,
            4 | 5 => 1,
            6 => 2,
            _ => 17,
        };
        let mut out = Vec::new();
        for _ in 0..n {
            let kind = inp.u8() % 7;
            let fd = match kind {
                0 | 1 => self.mems[kind as usize]
                    .as_fd()
                    .try_clone_to_owned()
                    .expect("dup memfd"),
                2 => {
                    let e = testing::eventfd(true).expect("eventfd");
                    self.eventfds
                        .push(File::from(e.try_clone().expect("dup eventfd")));
                    e
                }
                3 => testing::pipe().expect("pipe").0,
                4 => {
                    let (a, _b) = UnixStream::pair().expect("socketpair");
                    OwnedFd::from(a)
                }
                6 => {
                    let e = testing::eventfd(false).expect("blocking eventfd");
                    let mut f = File::from(e.try_clone().expect("dup eventfd"));
                    f.write_all(&(u64::MAX - 1).to_ne_bytes())
                        .expect("fill eventfd");
                    e
                }
                _ => OwnedFd::from(File::open("/dev/null").expect("/dev/null")),
            };
            out.push(fd);
        }
        out
    }

    /// Runs one operation; false at the end of the input.
    pub fn step(&mut self, inp: &mut Input<'_>) -> bool {
        if inp.done() {
            return false;
        }
        if self.conn.server.is_none() || self.conn.closed {
            self.reconnect();
        }
        match inp.u8() % 9 {
            0 => {
                let len = usize::from(inp.u16() % 4096);
                let fds = self.fd_spec(inp);
                let b = inp.bytes(len);
                self.send_all(b, &fds);
            }
            op @ (1 | 2) => {
                let c = inp.u8();
                let command = COMMANDS
                    .get(usize::from(c))
                    .copied()
                    .unwrap_or(u16::from(c));
                let f = inp.u8();
                let mut flg = u32::from(f & 0x3f);
                if f & 0x40 == 0 {
                    flg &= flags::NO_REPLY; // mostly well-typed commands
                }
                let fds = self.fd_spec(inp);
                let len = usize::from(inp.u16() % 2048);
                let payload = inp.bytes(len).to_vec();
                let delta = if op == 2 {
                    i32::from(inp.u8() as i8)
                } else {
                    0
                };
                self.send_msg(command, flg, &payload, delta, &fds);
            }
            3 => {
                let m = usize::from(inp.u8() & 1);
                let off = u64::from(inp.u16());
                let len = usize::from(inp.u8());
                let b = inp.bytes(len);
                let room = (MEM_SIZE.saturating_sub(off) as usize).min(b.len());
                if let (Some(d), Some(f)) = (b.get(..room), self.mems.get(m)) {
                    let _ = f.write_all_at(d, off);
                }
            }
            4 => {
                let n = usize::from(inp.u8());
                if !self.eventfds.is_empty() {
                    let i = n % self.eventfds.len();
                    if let Some(mut f) = self.eventfds.get(i) {
                        let _ = f.write_all(&1u64.to_ne_bytes());
                        let mut b = [0u8; 8];
                        let _ = (&mut f).read(&mut b);
                    }
                    // Someone may have consumed it; a write keeps it readable.
                    if let Some(mut f) = self.eventfds.get(i) {
                        let _ = f.write_all(&1u64.to_ne_bytes());
                    }
                }
                self.run_device(4);
            }
            5 => self.reconnect(),
            8 => {
                let m = usize::from(inp.u8() & 1);
                let pages = u64::from(inp.u8() % 17);
                if let Some(f) = self.mems.get(m) {
                    let _ = f.set_len(pages * 4096);
                }
            }
            6 => {
                let m = usize::from(inp.u8() & 1);
                let page = u64::from(inp.u8());
                let pages = u64::from(inp.u8() % 17);
                let f = inp.u8();
                let flg = u32::from(f & 3) | if f & 4 != 0 { 1 << 16 } else { 0 };
                let mut p = Vec::with_capacity(32);
                p.extend_from_slice(&32u32.to_ne_bytes());
                p.extend_from_slice(&flg.to_ne_bytes());
                p.extend_from_slice(&0u64.to_ne_bytes());
                p.extend_from_slice(&(IOVA_BASE + page * 4096).to_ne_bytes());
                p.extend_from_slice(&(pages * 4096).to_ne_bytes());
                let fd = self.mems[m]
                    .as_fd()
                    .try_clone_to_owned()
                    .expect("dup memfd");
                self.send_msg(cmd::DMA_MAP, 0, &p, 0, &[fd]);
            }
            _ => {
                let write = inp.u8() & 1 != 0;
                let off = u64::from(inp.u16() & 0xffc);
                let val = inp.u32();
                let mut p = Vec::with_capacity(20);
                p.extend_from_slice(&off.to_ne_bytes());
                p.extend_from_slice(&0u32.to_ne_bytes());
                p.extend_from_slice(&4u32.to_ne_bytes());
                if write {
                    p.extend_from_slice(&val.to_le_bytes());
                    self.send_msg(cmd::REGION_WRITE, 0, &p, 0, &[]);
                } else {
                    self.send_msg(cmd::REGION_READ, 0, &p, 0, &[]);
                }
            }
        }
        true
    }

    fn disconnect(&mut self) {
        if let Some(mut s) = self.conn.server.take() {
            // Close our end; the server sees EOF (after any buffered bytes).
            let (a, _b) = UnixStream::pair().expect("socketpair");
            let old = std::mem::replace(&mut self.conn.client, a);
            drop(old);
            for _ in 0..64 {
                match s.handle_readable(&mut self.backend) {
                    Ok(ConnStatus::Open) => continue,
                    _ => break,
                }
            }
            self.backend.client_gone();
            assert_eq!(self.backend.dma_len(), 0, "mappings left after disconnect");
        }
    }

    fn reconnect(&mut self) {
        self.disconnect();
        self.conn = Conn::new(self.limits);
        self.eventfds.clear();
        self.greet();
    }

    /// Ends the run: the client goes away, everything must be released.
    pub fn finish(mut self) {
        self.disconnect();
    }
}

/// What a run left behind (for tests).
#[derive(Debug)]
pub struct Outcome {
    /// Guest memory 0 at the end.
    pub mem0: Vec<u8>,
    /// Complete reply frames received.
    pub replies: usize,
    /// Times the server closed the connection.
    pub server_closes: usize,
    /// Interrupts seen on the eventfds passed (summed at the end).
    pub interrupts: u64,
}

/// Runs one input end to end.
pub fn run(data: &[u8]) {
    let _ = run_outcome(data);
}

/// Runs one input end to end and reports what happened.
pub fn run_outcome(data: &[u8]) -> Outcome {
    let before = fd_count();
    let out = {
        let mut inp = Input::new(data);
        let setup = inp.u8();
        let mut h = Harness::new(setup);
        let mut steps = 0;
        while steps < 512 && h.step(&mut inp) {
            steps += 1;
        }
        let _ = h.mems[0].set_len(MEM_SIZE);
        let mut mem0 = vec![0u8; MEM_SIZE as usize];
        h.mems[0]
            .read_exact_at(&mut mem0, 0)
            .expect("read guest memory");
        let mut interrupts = 0;
        for mut f in &h.eventfds {
            let mut b = [0u8; 8];
            if let Ok(8) = f.read(&mut b) {
                interrupts += u64::from_ne_bytes(b);
            }
        }
        let out = Outcome {
            mem0,
            replies: h.replies,
            server_closes: h.server_closes,
            interrupts,
        };
        h.finish();
        out
    };
    let after = fd_count();
    assert_eq!(before, after, "fd leak: {before} fds before, {after} after");
    out
}

fn reg_op(v: &mut Vec<u8>, write: bool, off: u16, val: u32) {
    v.extend_from_slice(&[7, u8::from(write), off as u8, (off >> 8) as u8]);
    v.extend_from_slice(&val.to_le_bytes());
}

/// Hand-made inputs reaching deep paths (also the committed seed corpus).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use vfio_sidecar::model::pl330::asm::{dbginst, Asm};
    use vfio_sidecar::model::pl330::insn::{Cond, Insn, MovReg};
    let base = IOVA_BASE as u32;
    let mut a = Asm::new();
    a.mov(MovReg::Sar, base + 0x1000)
        .mov(MovReg::Dar, base + 0x2000)
        .mov(
            MovReg::Ccr,
            1 | (3 << 1) | (15 << 4) | (1 << 14) | (3 << 15) | (15 << 18),
        )
        .ld(Cond::Always)
        .st(Cond::Always)
        .sev(0)
        .end();
    let prog = a.into_bytes();
    let pattern: Vec<u8> = (0..128u32).map(|i| (i * 5 + 3) as u8).collect();
    let (d0, d1) = dbginst(
        Insn::Go {
            chan: 0,
            ns: false,
            addr: base,
        },
        None,
    );
    let session = |setup: u8, map_flags: u8| {
        let mut v = vec![setup];
        // DMA_MAP guest memory 0, 16 pages at IOVA_BASE (R+W+X with the
        // extension; R+W, so executable, for a plain client).
        v.extend_from_slice(&[6, 0, 0, 16, map_flags]);
        // SET_IRQS index 0 TRIGGER|EVENTFD with one eventfd.
        let mut p = Vec::new();
        for x in [20u32, 4 | 32, 0, 0, 1] {
            p.extend_from_slice(&x.to_ne_bytes());
        }
        v.extend_from_slice(&[1, 7, 0, 4, 2, p.len() as u8, 0]);
        v.extend_from_slice(&p);
        // SET_IRQS index 0 UNMASK|EVENTFD (resample fd).
        let mut p = Vec::new();
        for x in [20u32, 4 | 16, 0, 0, 1] {
            p.extend_from_slice(&x.to_ne_bytes());
        }
        v.extend_from_slice(&[1, 7, 0, 4, 2, p.len() as u8, 0]);
        v.extend_from_slice(&p);
        // Program and data into guest memory.
        v.extend_from_slice(&[3, 0, 0, 0, prog.len() as u8]);
        v.extend_from_slice(&prog);
        v.extend_from_slice(&[3, 0, 0x00, 0x10, 128]);
        v.extend_from_slice(&pattern);
        // INTEN, DBGINST0/1, DBGCMD (DMAGO), then the ISR and EOI.
        reg_op(&mut v, true, 0x20, 1);
        reg_op(&mut v, true, 0xd08, d0);
        reg_op(&mut v, true, 0xd0c, d1);
        reg_op(&mut v, true, 0xd04, 0);
        reg_op(&mut v, false, 0x24, 0);
        reg_op(&mut v, true, 0x2c, 1);
        // Resample kick.
        v.extend_from_slice(&[4, 1]);
        v
    };
    let copy = session(0x03, 7);
    let resample = session(0x03 | (3 << 3), 7);
    let mut plain = session(0x01 | 4, 3);
    // Unmap, reconnect, map again.
    let mut p = Vec::new();
    p.extend_from_slice(&24u32.to_ne_bytes());
    p.extend_from_slice(&0u32.to_ne_bytes());
    p.extend_from_slice(&IOVA_BASE.to_ne_bytes());
    p.extend_from_slice(&0x10000u64.to_ne_bytes());
    plain.extend_from_slice(&[1, 2, 0, 0, p.len() as u8, 0]);
    plain.extend_from_slice(&p);
    plain.extend_from_slice(&[6, 1, 0, 4, 3, 5, 6, 0, 0, 16, 3]);
    // Framing garbage: undersized header, oversized declaration, reply type,
    // unknown command with 17 fds, then a half message left at the end.
    let mut framing = vec![0x01u8];
    let mut raw = |b: &[u8], fds: &[u8]| {
        framing.extend_from_slice(&[0, b.len() as u8, (b.len() >> 8) as u8]);
        framing.extend_from_slice(fds);
        framing.extend_from_slice(b);
    };
    let h = |cmd: u16, size: u32, flags: u32| {
        Header {
            msg_id: 1,
            command: cmd,
            size,
            flags,
            error: 0,
        }
        .encode()
    };
    raw(&h(4, 8, 0), &[0]);
    raw(&h(10, 2 << 20, 0), &[0]);
    raw(&h(4, 32, 1), &[0]);
    raw(
        &h(0x1234, 16, 0),
        &[7, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4],
    );
    raw(&h(4, 200, 0)[..10], &[4, 3]);
    vec![
        ("copy", copy),
        ("resample", resample),
        ("plain-reconnect", plain),
        ("framing", framing),
    ]
}
