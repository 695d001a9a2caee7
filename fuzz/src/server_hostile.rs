//! Fuzz harness `server_hostile` (issue 13): an adversarial client against
//! the REAL serve loop — `vfio_sidecar::server::run_serve`, i.e. the event
//! loop and the connection thread, with the default seccomp filter in kill
//! mode — running in child processes (this executable re-executed with
//! [`SERVE_ENV`] set: the fuzz target's `init`, or a child test of the replay
//! test). Two servers: PL330 with the default clear-register EOI and with
//! `--eoi resample`, both with a small step budget so that DMA programs
//! finish on the event loop's thread.
//!
//! The input drives protocol messages interleaved with what a hostile client
//! does behind the server's back to the fds it shares: clear/set
//! `O_NONBLOCK` on its eventfds, saturate or drain their counters, signal
//! them; truncate, grow and seal its memfds (also racing a DMA_MAP in
//! flight); stop reading replies for a while; raise interrupts and run DMA.
//!
//! Found bugs are: the server process died (SIGSYS from the filter, SIGBUS,
//! a panic), a reply did not come within [`REPLY_WATCHDOG`] (the server
//! blocked, e.g. on an eventfd), the reply stream broke framing, or the
//! server was not serving a fresh client after the input. Each input is one
//! client connection; the server cleans up after it (as after a real VMM).
//!
//! Input format (every read past the end yields 0): byte 0 bit 0 picks the
//! server (resample EOI), bit 1 proposes the extension; then operations,
//! opcode `byte % 21` (see [`Op`]), with their operands.
#![allow(dead_code)]

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vfio_sidecar::cli::ServeArgs;
use vfio_sidecar::irq::EoiPolicy;
use vfio_sidecar::model::pl330::asm::{dbginst, Asm};
use vfio_sidecar::model::pl330::insn::{Cond, Insn, LoopCounter, MovReg};
use vfio_sidecar_protocol::header::{command as cmd, flags, Header, HEADER_SIZE};
use vfio_sidecar_protocol::testing;
use vfio_sidecar_protocol::transport::{recv_with_fds, wait_fd};

/// Set (to the socket path) in the server child processes.
pub const SERVE_ENV: &str = "VFIO_SIDECAR_FUZZ_SERVE";
/// Set to `resample` for the resample-EOI server.
const EOI_ENV: &str = "VFIO_SIDECAR_FUZZ_EOI";
/// How long a reply may take before the server counts as hung.
/// (Generous: a loaded CI machine must not look like a hang; a real hang is
/// for ever. Below libFuzzer's `-timeout=20` of scripts/fuzz-ci.sh.)
pub const REPLY_WATCHDOG: Duration = Duration::from_secs(10);
/// Guest memory per memfd (16 pages).
const MEM: u64 = 0x10000;
const IOVA: u64 = 0x4000_0000;
/// PL330 registers used.
use vfio_sidecar::model::pl330::regs::INTEN;
use vfio_sidecar::model::pl330::regs::{DBGCMD, DBGINST0, DBGINST1};

/// In a server child ([`SERVE_ENV`] set): serves until killed, never
/// returns. Otherwise returns at once. Call it first thing.
pub fn serve_if_child() {
    let Some(sock) = std::env::var_os(SERVE_ENV) else {
        return;
    };
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes no pointers: die with the fuzzer.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let spec = "model:pl330,step-budget=256,time-slice-us=0"
        .parse()
        .expect("device spec");
    let mut args = ServeArgs::new(PathBuf::from(sock), spec);
    if std::env::var(EOI_ENV).is_ok_and(|v| v == "resample") {
        args.eoi = Some(EoiPolicy::Resample);
    }
    let code = match vfio_sidecar::server::run_serve(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("fuzz server: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// One server child.
struct Server {
    child: Child,
    socket: PathBuf,
}

/// The two server children (killed on drop) and their temporary directory.
pub struct Servers {
    servers: Vec<Server>,
    dir: PathBuf,
}

impl Servers {
    /// Starts both servers: this executable with `args` (how to make it run
    /// [`serve_if_child`]: nothing for a fuzz target, `--exact CHILD_TEST`
    /// for a test binary) and [`SERVE_ENV`] set; waits until they serve.
    pub fn start(args: &[&str]) -> Servers {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vfio-sidecar-fuzz-hostile-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let exe = std::env::current_exe().expect("current_exe");
        let servers = ["clear-register", "resample"]
            .into_iter()
            .map(|eoi| {
                let socket = dir.join(format!("{eoi}.sock"));
                let stderr = if std::env::var_os("FUZZ_SERVER_STDERR").is_some() {
                    Stdio::inherit()
                } else {
                    Stdio::null()
                };
                let child = Command::new(&exe)
                    .args(args)
                    .env(SERVE_ENV, &socket)
                    .env(EOI_ENV, eoi)
                    .env_remove("RUST_LOG")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(stderr)
                    .spawn()
                    .expect("spawn the fuzz server");
                Server { child, socket }
            })
            .collect();
        let mut s = Servers { servers, dir };
        for i in 0..s.servers.len() {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                s.alive(i);
                if let Some(mut c) = Client::connect(&s.servers[i].socket, false) {
                    if c.negotiate() {
                        break;
                    }
                }
                assert!(Instant::now() < deadline, "fuzz server {i} never served");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        s
    }

    /// Panics (the bug report) if server `i` has exited.
    fn alive(&mut self, i: usize) {
        if let Ok(Some(st)) = self.servers[i].child.try_wait() {
            panic!("the backend died: {st} (signal {:?})", {
                use std::os::unix::process::ExitStatusExt;
                st.signal()
            });
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The client side: a raw connection that frames replies.
struct Client {
    sock: UnixStream,
    next_id: u16,
    /// Requests sent whose replies were not read yet.
    outstanding: usize,
    extension: bool,
    /// The server closed the connection (a protocol error it refused).
    closed: bool,
}

impl Client {
    fn connect(path: &Path, extension: bool) -> Option<Client> {
        let sock = UnixStream::connect(path).ok()?;
        sock.set_nonblocking(true).ok()?;
        Some(Client {
            sock,
            next_id: 1,
            outstanding: 0,
            extension,
            closed: false,
        })
    }

    /// VERSION; true if accepted.
    fn negotiate(&mut self) -> bool {
        let v = testing::client_version_payload(self.extension);
        self.send(cmd::VERSION, &v, &[]);
        matches!(self.read_replies(), Ok(errs) if errs == 0)
    }

    /// Sends a command (fds on its first byte).
    fn send(&mut self, command: u16, payload: &[u8], fds: &[RawFd]) {
        let hdr = Header {
            msg_id: self.next_id,
            command,
            size: (HEADER_SIZE + payload.len()) as u32,
            flags: flags::TYPE_COMMAND,
            error: 0,
        };
        self.next_id = self.next_id.wrapping_add(1);
        let mut m = hdr.encode().to_vec();
        m.extend_from_slice(payload);
        self.send_raw(&m, fds);
        self.outstanding += 1;
    }

    /// Sends bytes; a closed connection sets `closed`. Never blocks for
    /// long: the harness keeps what it has not read far below the buffers.
    fn send_raw(&mut self, bytes: &[u8], fds: &[RawFd]) {
        let mut off = 0;
        let mut first = true;
        let t0 = Instant::now();
        while !self.closed && (off < bytes.len() || first) {
            let attach = if first { fds } else { &[] };
            match testing::sendmsg_fds(self.sock.as_fd(), &bytes[off..], attach, 0) {
                Ok(n) => {
                    off += n;
                    first = false;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    assert!(
                        t0.elapsed() < REPLY_WATCHDOG,
                        "the backend stopped reading its socket (hung)"
                    );
                    let _ = wait_fd(self.sock.as_fd(), libc::POLLOUT, Some(REPLY_WATCHDOG));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.closed = true,
            }
        }
    }

    /// Reads exactly `buf.len()` bytes (received fds are closed); `Err` if
    /// the server closed the connection. Panics if nothing comes within the
    /// watchdog: the server hangs.
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ()> {
        let mut got = 0;
        while got < buf.len() {
            match recv_with_fds(self.sock.as_fd(), &mut buf[got..], 64) {
                Ok((0, _, _)) => return Err(()),
                Ok((n, _fds, _)) => got += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let ready = wait_fd(self.sock.as_fd(), libc::POLLIN, Some(REPLY_WATCHDOG))
                        .unwrap_or(false);
                    assert!(
                        ready,
                        "no reply within {REPLY_WATCHDOG:?}: the backend hangs"
                    );
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(()),
            }
        }
        Ok(())
    }

    /// Reads every outstanding reply, checking framing; returns how many
    /// were errors. `Err` (and `closed`) if the server closed the connection.
    fn read_replies(&mut self) -> Result<usize, ()> {
        let mut errors = 0;
        while self.outstanding > 0 && !self.closed {
            let mut h = [0u8; HEADER_SIZE];
            if self.read_exact(&mut h).is_err() {
                self.closed = true;
                return Err(());
            }
            let hdr = Header::decode(&h);
            assert!(hdr.is_reply(), "server sent a non-reply {hdr:?}");
            assert!(hdr.size as usize >= HEADER_SIZE, "reply size {}", hdr.size);
            assert!(hdr.size <= 1 << 20, "reply size {}", hdr.size);
            let mut p = vec![0u8; hdr.size as usize - HEADER_SIZE];
            if self.read_exact(&mut p).is_err() {
                self.closed = true;
                return Err(());
            }
            if hdr.is_error() {
                errors += 1;
            }
            self.outstanding -= 1;
        }
        Ok(errors)
    }

    fn reg_write(&mut self, off: u64, v: u32) {
        let mut p = region(off, 4);
        p.extend_from_slice(&v.to_le_bytes());
        self.send(cmd::REGION_WRITE, &p, &[]);
    }
}

/// REGION_READ payload (offset, region 0, count).
fn region(off: u64, count: u32) -> Vec<u8> {
    let mut p = off.to_ne_bytes().to_vec();
    p.extend_from_slice(&0u32.to_ne_bytes());
    p.extend_from_slice(&count.to_ne_bytes());
    p
}

fn dma_map(flags: u32, offset: u64, iova: u64, size: u64) -> Vec<u8> {
    let mut p = 32u32.to_ne_bytes().to_vec();
    p.extend_from_slice(&flags.to_ne_bytes());
    p.extend_from_slice(&offset.to_ne_bytes());
    p.extend_from_slice(&iova.to_ne_bytes());
    p.extend_from_slice(&size.to_ne_bytes());
    p
}

fn dma_unmap(flags: u32, iova: u64, size: u64) -> Vec<u8> {
    let mut p = 24u32.to_ne_bytes().to_vec();
    p.extend_from_slice(&flags.to_ne_bytes());
    p.extend_from_slice(&iova.to_ne_bytes());
    p.extend_from_slice(&size.to_ne_bytes());
    p
}

fn set_irqs(flags: u32, index: u32, count: u32) -> Vec<u8> {
    let mut p = 20u32.to_ne_bytes().to_vec();
    for v in [flags, index, 0, count] {
        p.extend_from_slice(&v.to_ne_bytes());
    }
    p
}

/// Reads bytes of the input; past the end everything is 0.
struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
}

/// The operations (opcode `byte % 21`).
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
pub enum Op {
    /// `mem, page, pages, flags`: DMA_MAP of memfd `mem % 2` pages at IOVA.
    Map = 0,
    /// `page, pages`: DMA_UNMAP.
    Unmap,
    /// DMA_UNMAP all.
    UnmapAll,
    /// `index, efd`: trigger eventfd `efd % 4` (3 = none: de-assign) of IRQ `index % 8`.
    Trigger,
    /// `index, efd`: unmask (resample) eventfd of IRQ `index % 8`.
    Unmask,
    /// `efd, on`: set/clear O_NONBLOCK on eventfd `efd % 3` (shared description).
    Flags,
    /// `efd`: counter to its maximum (a write by the server would sleep).
    Saturate,
    /// `efd`: drain the counter without blocking.
    Drain,
    /// `efd`: add 1 (an unmask/resample signal).
    Kick,
    /// `mem, pages`: ftruncate memfd to `pages % 17` pages.
    Truncate,
    /// `mem`: add F_SEAL_SHRINK.
    Seal,
    /// `off:u16, val:u32`: 4-byte register write.
    RegWrite,
    /// `off:u16`: 4-byte register read.
    RegRead,
    /// `event`: DMASEV through the debug interface (INTEN all first).
    Sev,
    /// `page, prog`: DMAGO of program `prog % 2` written at page `page % 16`
    /// of memfd 0 (a copy + SEV, or a long loop + SEV).
    DmaGo,
    /// `n`: do not read replies for the next `n % 16` operations.
    StopReading,
    /// `delay`: DMA_MAP of a fresh memfd, then truncate + seal after
    /// `delay × 100 ns` while the server handles it.
    MapRace,
    /// `us`: let the server run for `us % 256` µs.
    Pause,
    /// `mem, off:u16, len, bytes`: write guest memory.
    Guest,
    /// `len, bytes`: raw bytes as a message body of an arbitrary command.
    Raw,
    /// `n`: `(n % 32) × 64` one-page DMA_MAPs (a vIOMMU-sized client: the
    /// unmap of them all at disconnect trims the heap), replies read in
    /// batches of 64.
    MapMany,
}

const OPS: u8 = 21;

/// Eventfds and memfds of one input.
struct Fds {
    efds: Vec<File>,
    mems: Vec<File>,
}

fn sealable_memfd() -> File {
    // SAFETY: memfd_create reads the NUL-terminated name; new fd.
    let fd = unsafe {
        libc::memfd_create(
            c"fuzzmem".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: a fresh fd we own.
    let f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    f.set_len(MEM).expect("memfd size");
    f
}

fn fcntl_flags(fd: RawFd, nonblock: bool) {
    // SAFETY: F_GETFL/F_SETFL on a live fd; no memory passed.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 {
            let fl = if nonblock {
                fl | libc::O_NONBLOCK
            } else {
                fl & !libc::O_NONBLOCK
            };
            libc::fcntl(fd, libc::F_SETFL, fl);
        }
    }
}

/// `RWF_NOWAIT` read of an eventfd (never sleeps).
fn nowait_drain(fd: RawFd) {
    let mut v = 0u64;
    let iov = libc::iovec {
        iov_base: (&mut v as *mut u64).cast(),
        iov_len: 8,
    };
    // SAFETY: one iovec over a live u64.
    unsafe { libc::preadv2(fd, &iov, 1, -1, libc::RWF_NOWAIT) };
}

/// Writes `v` to an eventfd without the harness itself sleeping: the
/// description is made non-blocking for the write and restored after (the
/// flag flip is itself part of the attack on the server).
fn eventfd_add(fd: RawFd, v: u64) {
    // SAFETY: F_GETFL on a live fd.
    let was = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    fcntl_flags(fd, true);
    // SAFETY: write(2) of 8 bytes from a live u64.
    unsafe { libc::write(fd, (&v as *const u64).cast(), 8) };
    if was >= 0 && was & libc::O_NONBLOCK == 0 {
        fcntl_flags(fd, false);
    }
}

fn spin(ns: u64) {
    let t0 = Instant::now();
    while (t0.elapsed().as_nanos() as u64) < ns {
        std::hint::spin_loop();
    }
}

/// PL330 debug instruction words for DMASEV `event`.
fn dbg_sev(event: u8) -> (u32, u32) {
    dbginst(Insn::Sev { event }, None)
}

/// PL330 debug instruction words for DMAGO of channel 0 (secure) at `addr`.
fn dbg_go(addr: u32) -> (u32, u32) {
    dbginst(
        Insn::Go {
            chan: 0,
            ns: false,
            addr,
        },
        None,
    )
}

/// Runs one input against `servers`.
pub fn run(servers: &mut Servers, data: &[u8]) {
    let mut input = Input { data, pos: 0 };
    let setup = input.u8();
    let which = usize::from(setup & 1);
    let extension = setup & 2 != 0;
    servers.alive(which);
    let path = servers.servers[which].socket.clone();
    let Some(mut c) = connect_negotiated(&path, extension) else {
        // A backend that just died may not be reaped yet: say how it died.
        std::thread::sleep(Duration::from_millis(200));
        servers.alive(which);
        panic!("the backend does not serve a new client");
    };
    let mut fds = Fds {
        efds: (0..3)
            .map(|_| File::from(testing::eventfd(true).expect("eventfd")))
            .collect(),
        mems: vec![sealable_memfd(), sealable_memfd()],
    };
    let mut hold = 0u8;
    while !input.done() && !c.closed {
        let op = input.u8() % OPS;
        step(&mut c, &mut fds, &mut input, op);
        if hold > 0 {
            hold -= 1;
        } else if c.read_replies().is_err() {
            break;
        }
        if op == Op::StopReading as u8 {
            hold = input.u8() % 16;
        }
        servers.alive(which);
    }
    // Still serving this client (unless it closed us for a protocol error)?
    if !c.closed && c.read_replies().is_ok() {
        let mut p = 16u32.to_ne_bytes().to_vec();
        p.extend_from_slice(&[0u8; 12]);
        c.send(cmd::DEVICE_GET_INFO, &p, &[]);
        let _ = c.read_replies();
    }
    drop(c);
    drop(fds);
    servers.alive(which);
}

/// A negotiated connection; retried for a while, since the server may still
/// be cleaning up after the previous input's client (a busy slot gets EBUSY).
fn connect_negotiated(path: &Path, extension: bool) -> Option<Client> {
    let deadline = Instant::now() + REPLY_WATCHDOG;
    loop {
        if let Some(mut c) = Client::connect(path, extension) {
            if c.negotiate() {
                return Some(c);
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn step(c: &mut Client, fds: &mut Fds, input: &mut Input<'_>, op: u8) {
    let efd = |fds: &Fds, i: u8| fds.efds[usize::from(i % 3)].as_raw_fd();
    match op {
        x if x == Op::Map as u8 => {
            let mem = usize::from(input.u8() % 2);
            let page = u64::from(input.u8() % 32);
            let pages = u64::from(input.u8() % 16) + 1;
            let flags = u32::from(input.u8() & 3).max(1) | if c.extension { 1 << 16 } else { 0 };
            let off = (page % 16) * 0x1000;
            let p = dma_map(flags, off, IOVA + page * 0x1000, pages * 0x1000);
            c.send(cmd::DMA_MAP, &p, &[fds.mems[mem].as_raw_fd()]);
        }
        x if x == Op::Unmap as u8 => {
            let page = u64::from(input.u8() % 32);
            let pages = u64::from(input.u8() % 16) + 1;
            c.send(
                cmd::DMA_UNMAP,
                &dma_unmap(0, IOVA + page * 0x1000, pages * 0x1000),
                &[],
            );
        }
        x if x == Op::UnmapAll as u8 => c.send(cmd::DMA_UNMAP, &dma_unmap(2, 0, 0), &[]),
        x if x == Op::Trigger as u8 || x == Op::Unmask as u8 => {
            let index = u32::from(input.u8() % 8);
            let which = input.u8() % 4;
            let action = if x == Op::Trigger as u8 { 32 } else { 16 };
            let p = set_irqs(4 | action, index, 1);
            if which == 3 {
                // No fd: de-assign.
                c.send(cmd::DEVICE_SET_IRQS, &p, &[]);
            } else {
                c.send(cmd::DEVICE_SET_IRQS, &p, &[efd(fds, which)]);
            }
        }
        x if x == Op::Flags as u8 => {
            let fd = efd(fds, input.u8());
            fcntl_flags(fd, input.u8() & 1 != 0);
        }
        x if x == Op::Saturate as u8 => {
            let fd = efd(fds, input.u8());
            nowait_drain(fd);
            eventfd_add(fd, u64::MAX - 1);
        }
        x if x == Op::Drain as u8 => nowait_drain(efd(fds, input.u8())),
        x if x == Op::Kick as u8 => eventfd_add(efd(fds, input.u8()), 1),
        x if x == Op::Truncate as u8 => {
            let mem = usize::from(input.u8() % 2);
            let pages = u64::from(input.u8() % 17);
            let _ = fds.mems[mem].set_len(pages * 0x1000);
        }
        x if x == Op::Seal as u8 => {
            let mem = usize::from(input.u8() % 2);
            // SAFETY: F_ADD_SEALS on our own memfd.
            unsafe {
                libc::fcntl(
                    fds.mems[mem].as_raw_fd(),
                    libc::F_ADD_SEALS,
                    libc::F_SEAL_SHRINK,
                )
            };
        }
        x if x == Op::RegWrite as u8 => {
            let off = u64::from(input.u16() & 0xffc);
            let v = input.u32();
            c.reg_write(off, v);
        }
        x if x == Op::RegRead as u8 => {
            let off = u64::from(input.u16() & 0xffc);
            c.send(cmd::REGION_READ, &region(off, 4), &[]);
        }
        x if x == Op::Sev as u8 => {
            let event = input.u8() % 8;
            c.reg_write(INTEN, 0xff);
            let (i0, i1) = dbg_sev(event);
            c.reg_write(DBGINST0, i0);
            c.reg_write(DBGINST1, i1);
            c.reg_write(DBGCMD, 0);
        }
        x if x == Op::DmaGo as u8 => {
            let page = u64::from(input.u8() % 16);
            let prog = input.u8() % 2;
            let addr = IOVA + page * 0x1000;
            let _ = fds.mems[0].write_all_at(&program(prog, addr as u32), page * 0x1000);
            c.reg_write(INTEN, 0xff);
            let (i0, i1) = dbg_go(addr as u32);
            c.reg_write(DBGINST0, i0);
            c.reg_write(DBGINST1, i1);
            c.reg_write(DBGCMD, 0);
        }
        x if x == Op::StopReading as u8 => {}
        x if x == Op::MapRace as u8 => {
            let delay = u64::from(input.u8()) * 100;
            let f = sealable_memfd();
            c.send(
                cmd::DMA_MAP,
                &dma_map(3, 0, IOVA + 0x40_0000, MEM),
                &[f.as_raw_fd()],
            );
            spin(delay);
            let _ = f.set_len(0x1000);
            // SAFETY: F_ADD_SEALS on our own memfd.
            unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
            // Touch the mapping (DMAGO gate probe of a page that is gone).
            let (i0, i1) = dbg_go(IOVA as u32 + 0x40_9000);
            c.reg_write(DBGINST0, i0);
            c.reg_write(DBGINST1, i1);
            c.reg_write(DBGCMD, 0);
            c.send(cmd::DMA_UNMAP, &dma_unmap(0, IOVA + 0x40_0000, MEM), &[]);
        }
        x if x == Op::MapMany as u8 => {
            let n = u64::from(input.u8() % 32) * 64;
            let fd = fds.mems[1].as_raw_fd();
            for i in 0..n {
                let iova = 0x1_0000_0000 + i * 0x1000;
                c.send(cmd::DMA_MAP, &dma_map(1, 0, iova, 0x1000), &[fd]);
                if i % 64 == 63 && c.read_replies().is_err() {
                    return;
                }
            }
        }
        x if x == Op::Pause as u8 => spin(u64::from(input.u8()) * 1000),
        x if x == Op::Guest as u8 => {
            let mem = usize::from(input.u8() % 2);
            let off = u64::from(input.u16());
            let len = usize::from(input.u8());
            let bytes: Vec<u8> = (0..len).map(|_| input.u8()).collect();
            let _ = fds.mems[mem].write_all_at(&bytes, off);
        }
        _ => {
            // Raw: an arbitrary command with arbitrary payload.
            let command = input.u16() % 0x20;
            let len = usize::from(input.u8() % 64);
            let bytes: Vec<u8> = (0..len).map(|_| input.u8()).collect();
            c.send(command, &bytes, &[]);
        }
    }
}

/// PL330 programs at `addr`: 0 = copy 256 bytes (page +0x100 → +0x800) then
/// DMASEV 0; 1 = 64 × 16 iterations of DMANOP then DMASEV 1 (finishes on the
/// event loop with the servers' step budget).
fn program(prog: u8, addr: u32) -> Vec<u8> {
    let mut a = Asm::new();
    if prog == 0 {
        a.mov(MovReg::Sar, addr + 0x100)
            .mov(MovReg::Dar, addr + 0x800)
            .mov(MovReg::Ccr, CCR_COPY)
            .ld(Cond::Always)
            .st(Cond::Always)
            .ld(Cond::Always)
            .st(Cond::Always)
            .sev(0);
    } else {
        let _ = a.lp(LoopCounter::Lc0, 64);
        let outer = a.offset();
        let _ = a.lp(LoopCounter::Lc1, 16);
        let inner = a.offset();
        a.nop();
        a.lpend(LoopCounter::Lc1, Cond::Always, inner);
        a.lpend(LoopCounter::Lc0, Cond::Always, outer);
        a.sev(1);
    }
    a.end();
    a.into_bytes()
}

/// CCR of the copy program: 8-byte beats, 16-beat bursts, incrementing.
const CCR_COPY: u32 = 1 | (3 << 1) | (15 << 4) | (1 << 14) | (3 << 15) | (15 << 18);

/// Hand-made seeds: each attack of issue 13 #1-#3 once.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let m = |op: Op| op as u8;
    vec![
        // Trigger eventfd made blocking + saturated, IRQ raised by a
        // register write (connection thread).
        (
            "saturated-trigger-conn",
            vec![
                2,
                m(Op::Trigger),
                0,
                0,
                m(Op::Flags),
                0,
                0,
                m(Op::Saturate),
                0,
                m(Op::Sev),
                0,
                m(Op::RegRead),
                0x24,
                0,
            ],
        ),
        // The same with the IRQ raised by DMA finishing on the event loop.
        (
            "saturated-trigger-loop",
            vec![
                2,
                m(Op::Map),
                0,
                0,
                15,
                3,
                m(Op::Trigger),
                1,
                1,
                m(Op::Saturate),
                1,
                m(Op::Flags),
                1,
                0,
                m(Op::DmaGo),
                0,
                1,
                m(Op::Pause),
                200,
                m(Op::RegRead),
                0x24,
                0,
            ],
        ),
        // Resample: unmask eventfd blocking, kicked and drained by the client.
        (
            "resample-drain",
            vec![
                3,
                m(Op::Unmask),
                0,
                2,
                m(Op::Trigger),
                0,
                0,
                m(Op::Flags),
                2,
                0,
                m(Op::Sev),
                0,
                m(Op::StopReading),
                8,
                m(Op::RegRead),
                0,
                0,
                m(Op::Kick),
                2,
                m(Op::Drain),
                2,
                m(Op::Kick),
                2,
                m(Op::Pause),
                1,
                m(Op::Drain),
                2,
                m(Op::RegRead),
                0,
                0,
            ],
        ),
        // Truncate + seal racing DMA_MAP.
        (
            "map-race",
            vec![
                2,
                m(Op::MapRace),
                10,
                m(Op::MapRace),
                40,
                m(Op::MapRace),
                80,
                m(Op::MapRace),
                160,
            ],
        ),
        // Map, shrink, seal, DMA into the lost pages.
        (
            "shrink-seal-dma",
            vec![
                2,
                m(Op::Map),
                0,
                0,
                15,
                3,
                m(Op::Truncate),
                0,
                2,
                m(Op::Seal),
                0,
                m(Op::DmaGo),
                8,
                0,
            ],
        ),
        // 1,984 maps, then disconnect (heap trimming under seccomp).
        ("many-maps-disconnect", vec![0, m(Op::MapMany), 31]),
        // Many maps, then unmap-all (heap trimming under seccomp).
        (
            "maps-unmap-all",
            std::iter::once(0u8)
                .chain((0..32u8).flat_map(|i| [m(Op::Map), i % 2, i, 0, 1]))
                .chain([m(Op::MapMany), 31, m(Op::UnmapAll)])
                .collect(),
        ),
    ]
}
