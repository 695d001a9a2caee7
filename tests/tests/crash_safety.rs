//! Crash safety.
//!
//! * A client process (this test binary re-executed with `CRASH_CLIENT_SOCKET`
//!   set, running `child_client`) is SIGKILLed at pseudo-random points, 100
//!   times in a row: before connecting, during setup, and while DMA maps,
//!   trigger/unmask eventfds and PL330 transfers are live. After each kill
//!   the backend holds exactly its idle fds (/proc/PID/fd) and no mapping of
//!   the client's memfds (/proc/PID/maps), and the next client is served (each
//!   child checks one DMA copy and its interrupt before it reports ready); at
//!   the end a DMA copy and an interrupt work.
//! * The backend SIGKILLed while a client has requests in flight: the
//!   client's calls fail with `ClientError::Disconnected` within a watchdog
//!   timeout (no hang), and keep failing the same way.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use vfio_sidecar::model::pl330::asm::Asm;
use vfio_sidecar::model::pl330::insn::{Cond, LoopCounter, MovReg};
use vfio_sidecar::model::pl330::regs::{FSRC, INTCLR, INTEN};
use vfio_sidecar_protocol::client::{Client, ClientOptions};
use vfio_sidecar_protocol::error::ClientError;
use vfio_sidecar_protocol::message::IrqAction;
use vfio_sidecar_tests::pl330::{Regs, CCR_COPY};
use vfio_sidecar_tests::{
    drain, eventfd, fd_count, maps_matching, set_eventfd, wait_until, GuestMem, Sidecar, RWX, WAIT,
};

const IOVA: u64 = 0x4000_0000;
const MEM: u64 = 0x10000;

/// Writes a program copying `len` bytes (multiple of 128) from IOVA+0x1000 to
/// IOVA+0x8000 then raising event 0.
fn program(mem: &GuestMem, len: u32) {
    let mut a = Asm::new();
    a.mov(MovReg::Sar, IOVA as u32 + 0x1000)
        .mov(MovReg::Dar, IOVA as u32 + 0x8000)
        .mov(MovReg::Ccr, CCR_COPY);
    let start = a.offset();
    a.lp(LoopCounter::Lc0, len / 128).unwrap();
    let body = a.offset();
    a.ld(Cond::Always).st(Cond::Always);
    a.lpend(LoopCounter::Lc0, Cond::Always, body);
    let _ = start;
    a.sev(0).end();
    mem.write(0, a.bytes());
}

/// With `mem` mapped at IOVA and a trigger eventfd (`trigger`) on IRQ 0:
/// enables the interrupt, copies 4 KiB of the pattern `i * mul + add` with
/// [`program`] and asserts the copy and exactly one interrupt (`when` ends
/// the messages).
fn copy_and_interrupt(
    c: &mut Client,
    mem: &GuestMem,
    trigger: &std::fs::File,
    (mul, add): (u32, u32),
    when: &str,
) {
    c.write32(INTEN, 1);
    program(mem, 0x1000);
    let pattern: Vec<u8> = (0..0x1000u32).map(|i| (i * mul + add) as u8).collect();
    mem.write(0x1000, &pattern);
    c.dmago(IOVA as u32);
    assert_eq!(mem.read(0x8000, 0x1000), pattern, "DMA copy{when}");
    assert_eq!(drain(trigger), 1, "interrupt{when}");
}

/// The client process: sets everything up, reports "ready", then transfers
/// until killed.
#[test]
fn child_client() {
    let Ok(sock) = std::env::var("CRASH_CLIENT_SOCKET") else {
        return; // Only runs as the child of `client_sigkill_100_times`.
    };
    let mut c = Client::connect(std::path::Path::new(&sock), ClientOptions::default()).unwrap();
    let m1 = GuestMem::new("crashmem", MEM);
    let m2 = GuestMem::new("crashmem", MEM);
    c.dma_map(IOVA, MEM, m1.fd(), 0, RWX).unwrap();
    c.dma_map(IOVA + MEM, MEM, m2.fd(), 0, RWX).unwrap();
    let (t, tr) = eventfd();
    let (u, _uw) = eventfd();
    set_eventfd(&mut c, 0, IrqAction::Trigger, t.as_fd()).unwrap();
    set_eventfd(&mut c, 1, IrqAction::Unmask, u.as_fd()).unwrap();
    // The device works for this client (i.e. after the previous one was
    // killed): one checked DMA copy and its interrupt before "ready".
    copy_and_interrupt(&mut c, &m1, &tr, (31, 7), "");
    c.write32(INTCLR, 1);
    println!("ready");
    loop {
        c.dmago(IOVA as u32);
        let _ = drain(&tr);
        c.write32(INTCLR, 1);
        let _ = c.read32(FSRC);
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn client_sigkill_100_times_leaves_nothing_behind() {
    if std::env::var("CRASH_CLIENT_SOCKET").is_ok() {
        return;
    }
    let srv = Sidecar::start("model:pl330", &[]);
    let pid = srv.pid();
    let idle_fds = fd_count(pid);
    let exe = std::env::current_exe().unwrap();
    let seed = 0x9e37_79b9_7f4a_7c15u64;
    println!("seed {seed:#x}");
    let mut rng = Rng(seed);
    let (mut killed_live, mut killed_early) = (0, 0);
    let mut held_max = 0;
    for i in 0..100 {
        let mut child = Command::new(&exe)
            .args(["--exact", "child_client", "--nocapture", "--test-threads=1"])
            .env("CRASH_CLIENT_SOCKET", &srv.socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let r = rng.next();
        if r % 4 != 0 {
            // Wait until maps and eventfds are live, then kill mid-transfer.
            let out = child.stdout.take().unwrap();
            let mut line = String::new();
            let mut br = BufReader::new(out);
            while !line.contains("ready") {
                line.clear();
                if br.read_line(&mut line).unwrap() == 0 {
                    panic!("iteration {i}: child exited before ready");
                }
            }
            let held = fd_count(pid);
            held_max = held_max.max(held);
            assert!(
                held >= idle_fds + 3,
                "iteration {i}: client resources not held"
            );
            assert_eq!(maps_matching(pid, "memfd:crashmem"), 2);
            std::thread::sleep(Duration::from_micros(r % 20_000));
            killed_live += 1;
        } else {
            // Anywhere from exec to the middle of setup.
            std::thread::sleep(Duration::from_micros(r % 30_000));
            killed_early += 1;
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let st = child.wait().unwrap();
        assert!(!st.success(), "iteration {i}: child was not killed");
        wait_until("backend back to idle fds", WAIT, || {
            fd_count(pid) == idle_fds
        });
        wait_until("memfd maps released", WAIT, || {
            maps_matching(pid, "memfd:crashmem") == 0
        });
    }
    println!("killed {killed_live} mid-transfer, {killed_early} early; max fds held {held_max}, idle {idle_fds}");
    assert!(killed_live >= 50);
    // The device still works for the next client.
    let mut c = srv.connect(true);
    let mem = GuestMem::new("after", MEM);
    c.dma_map(IOVA, MEM, mem.fd(), 0, RWX).unwrap();
    let (t, tr) = eventfd();
    set_eventfd(&mut c, 0, IrqAction::Trigger, t.as_fd()).unwrap();
    copy_and_interrupt(&mut c, &mem, &tr, (13, 5), " after 100 kills");
    assert!(srv.log_text().matches("client disconnected").count() >= 100);
}

#[test]
fn backend_sigkill_mid_transfer_gives_disconnected_not_a_hang() {
    if std::env::var("CRASH_CLIENT_SOCKET").is_ok() {
        return;
    }
    for round in 0..3 {
        let srv = Sidecar::start("model:pl330", &[]);
        let sock = srv.socket.clone();
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let worker = std::thread::spawn(move || {
            let mut c = Client::connect(&sock, ClientOptions::default()).unwrap();
            let mem = GuestMem::new("victim", MEM);
            c.dma_map(IOVA, MEM, mem.fd(), 0, RWX).unwrap();
            program(&mem, 0x4000);
            ready_tx.send(()).unwrap();
            let mut n = 0u64;
            let err = loop {
                let r = if n % 2 == 0 {
                    c.try_dmago(IOVA as u32)
                } else {
                    c.region_read(0, FSRC, 4).map(|_| ())
                };
                if let Err(e) = r {
                    break e;
                }
                n += 1;
            };
            // Later calls fail the same way, at once.
            let again = c.device_info().err();
            tx.send((n, err, again)).unwrap();
        });
        ready_rx.recv_timeout(Duration::from_secs(20)).unwrap();
        std::thread::sleep(Duration::from_millis(20 + 30 * round));
        // SAFETY: kill(2) on the backend child we started.
        unsafe { libc::kill(srv.pid() as i32, libc::SIGKILL) };
        let (n, err, again) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("client hung after the backend was killed");
        worker.join().unwrap();
        println!("round {round}: {n} requests before the kill, then {err}");
        assert!(n > 0, "no request completed before the kill");
        assert!(
            matches!(err, ClientError::Disconnected),
            "expected Disconnected, got {err:?}"
        );
        assert!(
            matches!(again, Some(ClientError::Disconnected)),
            "later call: {again:?}"
        );
    }
}
