//! Liveness of the serve loop against peers that stall it rather than feed
//! it bad bytes (issue 13, failures 4–7): a client that reads its replies
//! slowly or not at all, a full fd table with a connect pending, hundreds of
//! refused peers connecting at once, and every terminating signal an operator
//! or a supervisor sends.
//!
//! Every test ends the same way: a signal, then the process must exit with
//! status 0 and its socket file removed, under a watchdog
//! ([`SIGNAL_WATCHDOG`], well below the 5 s reply deadline a stalled write
//! would wait for). Timing is never asserted; where "promptly" matters the
//! tests assert an order of events instead (an answer arrives before the
//! served client's reply deadline has expired, as the backend's log shows).
#![allow(clippy::unwrap_used)]

mod hostile_util;

use std::io::{ErrorKind, Read};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hostile_util::*;
use vfio_sidecar_protocol::header::{command as cmd, Header, HEADER_SIZE};
use vfio_sidecar_protocol::testing;
use vfio_sidecar_tests::{cpu_ticks, set_nofile, wait_until, Sidecar};

/// How long a signalled backend may take to exit before the test fails. A
/// watchdog, not a measurement: the point is that nothing a peer does makes
/// the backend wait out its 5 s reply deadline (or forever) first.
const SIGNAL_WATCHDOG: Duration = Duration::from_secs(3);

/// What the backend logs when a served client's replies miss their deadline.
const DEADLINE_LOG: &str = "did not read its replies";

/// Has a reply write to the served client timed out (now, or as the backend
/// before the total deadline said it: "transport error: timed out")?
fn reply_deadline_hit(log: &str) -> bool {
    log.contains(DEADLINE_LOG) || log.contains("timed out")
}

/// True once `pid` has exited (a zombie waiting for us, or gone).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rfind(')')
            .and_then(|i| s.get(i + 2..i + 3))
            .is_none_or(|state| state == "Z"),
        Err(_) => true,
    }
}

/// Sends `sig` and asserts a clean exit under [`SIGNAL_WATCHDOG`]: status 0,
/// socket file removed, the shutdown logged. Returns the log.
fn signal_and_expect_clean_exit(mut srv: Sidecar, sig: i32) -> String {
    let pid = srv.pid();
    let t = Instant::now();
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
    let deadline = Instant::now() + SIGNAL_WATCHDOG;
    while !exited(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let in_time = exited(pid);
    println!(
        "signal {sig} to exit: {:.3} s{}",
        t.elapsed().as_secs_f64(),
        if in_time { "" } else { " (watchdog fired)" }
    );
    let log = srv.log_text();
    // Reaps the exited process (or SIGTERMs and waits for a stuck one).
    let socket = srv.socket.clone();
    let st = if in_time {
        srv.terminate()
    } else {
        // SAFETY: kill(2) on our own child, which did not exit.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let st = srv.terminate();
        panic!("backend did not exit within {SIGNAL_WATCHDOG:?} of signal {sig} ({st}): {log}");
    };
    assert!(st.success(), "signal {sig}: exit status {st}: {log}");
    assert!(
        !socket.exists(),
        "signal {sig}: socket file left behind: {log}"
    );
    assert!(log.contains("shutting down"), "signal {sig}: {log}");
    log
}

/// Stuffs `sock` (non-blocking) with pipelined requests until the backend
/// stops reading it (sends keep failing with EAGAIN for a while): the
/// backend is then stuck writing replies this client does not read.
fn stuff_until_backend_stalls(sock: &UnixStream, batch: &[u8]) {
    sock.set_nonblocking(true).unwrap();
    let start = Instant::now();
    let mut blocked_since: Option<Instant> = None;
    let mut sent = 0usize;
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the backend kept reading ({sent} bytes)"
        );
        match sendmsg(sock, batch, &[]) {
            Ok(n) => {
                sent += n;
                blocked_since = None;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(300) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("stuffing the socket: {e} after {sent} bytes"),
        }
    }
    sock.set_nonblocking(false).unwrap();
    println!("{sent} request bytes sent before the backend stalled on its replies");
}

/// `n` pipelined REGION_READs of `len` bytes at `off` (scratch model page 1
/// takes any length).
fn pipelined_region_reads(off: u64, len: u32, n: u16) -> Vec<u8> {
    let p = region(off, 0, len, &[]);
    let mut msg = Vec::new();
    for id in 0..n {
        msg.extend_from_slice(&Header::command(id, cmd::REGION_READ, p.len()).encode());
        msg.extend_from_slice(&p);
    }
    msg
}

/// A refused peer: VERSION, then its answer must be an EBUSY error reply.
fn expect_ebusy(path: &std::path::Path, what: &str) {
    let mut b = Raw::connect(path);
    let rep = b.version(true);
    assert_eq!(rep.errno(), libc::EBUSY, "{what}: {rep:?}");
}

/// A client that never reads (failure 4): a second client's EBUSY does not
/// wait for the first one's reply deadline, and SIGTERM ends the backend at
/// once. Before the fix the device lock was held through the blocked reply
/// write, so the loop (EBUSY, signals) waited for the 5 s write timeout.
#[test]
fn non_reading_client_delays_neither_ebusy_nor_sigterm() {
    let srv = Sidecar::start("model:scratch", &[]);
    let a = Raw::negotiated(&srv.socket, true);
    stuff_until_backend_stalls(&a.sock, &pipelined_region_reads(0x1000, 4096, 64));
    expect_ebusy(&srv.socket, "second client while the first reads nothing");
    // Order of events: the EBUSY came while the first client was still
    // connected, i.e. before its reply deadline expired.
    let log = srv.log_text();
    assert!(
        !reply_deadline_hit(&log) && !log.contains("client disconnected"),
        "EBUSY only after the first client was dropped: {log}"
    );
    let log = signal_and_expect_clean_exit(srv, libc::SIGTERM);
    assert!(
        !reply_deadline_hit(&log),
        "SIGTERM waited for the reply deadline: {log}"
    );
    drop(a);
}

/// A client that stops reading and half-closes its socket (it has hung up,
/// as far as the slot is concerned): the next client is served without
/// waiting for the first one's reply deadline (failure 4: the loop used to
/// wait for the connection thread, stuck writing to it).
#[test]
fn half_closed_non_reader_frees_the_slot_without_its_deadline() {
    let srv = Sidecar::start("model:scratch", &[]);
    let a = Raw::negotiated(&srv.socket, true);
    stuff_until_backend_stalls(&a.sock, &pipelined_region_reads(0x1000, 4096, 64));
    a.sock.shutdown(std::net::Shutdown::Write).unwrap();
    let mut b = Raw::negotiated(&srv.socket, true);
    b.still_works();
    let log = srv.log_text();
    assert!(
        !reply_deadline_hit(&log),
        "the next client waited for the first one's deadline: {log}"
    );
    signal_and_expect_clean_exit(srv, libc::SIGTERM);
    drop(a);
}

/// Reads up to `chunk` bytes every 100 ms from `sock` until EOF/error or `stop`.
fn trickle(sock: UnixStream, chunk: usize, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; chunk];
        let mut got = 0u64;
        let mut s = &sock;
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        while !stop.load(Ordering::Relaxed) {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n as u64,
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
                Err(_) => break,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        got
    })
}

/// A client that reads one byte every 100 ms (failure 4): a second client
/// is answered EBUSY while the first is still connected, and SIGTERM is
/// handled before the first client's reply deadline.
#[test]
fn trickle_reader_delays_neither_ebusy_nor_sigterm() {
    let srv = Sidecar::start("model:scratch", &[]);
    let a = Raw::negotiated(&srv.socket, true);
    stuff_until_backend_stalls(&a.sock, &pipelined_region_reads(0x1000, 4096, 64));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = trickle(a.sock.try_clone().unwrap(), 1, stop.clone());
    // Trickle for a while (a timeout restarted by every read would never fire).
    std::thread::sleep(Duration::from_secs(1));
    expect_ebusy(&srv.socket, "second client while the first trickles");
    let log = srv.log_text();
    assert!(
        !reply_deadline_hit(&log) && !log.contains("client disconnected"),
        "EBUSY only after the first client was dropped: {log}"
    );
    let log = signal_and_expect_clean_exit(srv, libc::SIGTERM);
    assert!(
        !reply_deadline_hit(&log),
        "SIGTERM waited for the reply deadline: {log}"
    );
    stop.store(true, Ordering::Relaxed);
    println!("trickle reader got {} bytes", reader.join().unwrap());
}

/// A reader slow enough that a reply batch takes longer than the deadline,
/// fast enough to let the socket drain now and then (failure 4): it is
/// dropped at the batch deadline (a timeout restarted at every drain never
/// fired), the backend serves the next client, and SIGTERM is clean.
#[test]
fn slow_reader_is_dropped_at_the_batch_deadline() {
    let srv = Sidecar::start("model:scratch", &[]);
    let a = Raw::negotiated(&srv.socket, true);
    let stop = Arc::new(AtomicBool::new(false));
    // A writer that keeps the request direction full, and a reader taking
    // 4 KiB every 100 ms (~40 KB/s): it drains a full socket (3/4 of the
    // send buffer, when the kernel reports it writable again) in about 4 s,
    // and a batch of 64 replies of 4 KiB in about 6.5 s.
    let writer = {
        let s = a.sock.try_clone().unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let batch = pipelined_region_reads(0x1000, 4096, 64);
            s.set_write_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                match sendmsg(&s, &batch, &[]) {
                    Ok(_) => {}
                    Err(e)
                        if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                    }
                    Err(_) => break,
                }
            }
        })
    };
    let reader = trickle(a.sock.try_clone().unwrap(), 4096, stop.clone());
    let t = Instant::now();
    wait_until("slow reader dropped", Duration::from_secs(60), || {
        srv.log_text().contains("client disconnected")
    });
    println!(
        "slow reader dropped after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert!(reply_deadline_hit(&srv.log_text()), "{}", srv.log_text());
    stop.store(true, Ordering::Relaxed);
    let _ = a.sock.shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
    println!("slow reader got {} bytes", reader.join().unwrap());
    let mut c = Raw::negotiated(&srv.socket, true);
    c.still_works();
    signal_and_expect_clean_exit(srv, libc::SIGTERM);
}

/// A full fd table with a connect pending (failure 5): `accept` fails with
/// EMFILE; the backend must back off (bounded CPU) and log a bounded number
/// of lines, then serve the pending client once fds are available again.
#[test]
fn accept_failing_with_emfile_backs_off_and_recovers() {
    let srv = Sidecar::start("model:pl330", &[]);
    let pid = srv.pid();
    // stdin, stdout and stderr hold fds 0-2: no new fd fits under a limit of 3.
    set_nofile(pid, 3);
    let mut c = Raw::connect(&srv.socket);
    let id = c.send(cmd::VERSION, &testing::client_version_payload(true), &[]);
    // Let the backend see the pending connection, then measure a window.
    std::thread::sleep(Duration::from_millis(300));
    let lines0 = srv.log_text().lines().count();
    let ticks0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let ticks = cpu_ticks(pid) - ticks0;
    let lines = srv.log_text().lines().count() - lines0;
    println!("with the fd table full for 2 s: {ticks} CPU ticks, {lines} log lines");
    assert!(
        srv.log_text().contains("Too many open files"),
        "accept never failed: {}",
        srv.log_text()
    );
    assert!(ticks < 40, "busy loop: {ticks} ticks of CPU in 2 s");
    assert!(lines < 60, "log flood: {lines} lines in 2 s");
    // Fds free again: the pending client is served.
    set_nofile(pid, 1024);
    let rep = c.reply();
    assert_eq!(rep.hdr.msg_id, id);
    assert_eq!(rep.errno(), 0, "VERSION after recovery: {rep:?}");
    c.still_works();
    signal_and_expect_clean_exit(srv, libc::SIGTERM);
}

/// What a refused peer saw.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Errno(i32),
    Io(String),
}

/// Hundreds of peers connect at once while a client holds the slot
/// (failure 6): every one reads an EBUSY error reply to its VERSION, none
/// sees its connection reset or a broken pipe first.
#[test]
fn every_concurrently_refused_peer_reads_ebusy() {
    const PEERS: usize = 300;
    let srv = Sidecar::start("model:pl330", &[]);
    let mut a = Raw::negotiated(&srv.socket, true);
    let barrier = Arc::new(std::sync::Barrier::new(PEERS));
    let path = Arc::new(srv.socket.clone());
    let peers: Vec<_> = (0..PEERS)
        .map(|_| {
            let barrier = barrier.clone();
            let path = path.clone();
            std::thread::spawn(move || {
                barrier.wait();
                // Raw panics on a failed connect or send: counted below.
                let mut r = Raw::connect(&path);
                r.sock
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                r.send(cmd::VERSION, &testing::client_version_payload(true), &[]);
                match r.try_reply() {
                    Ok(rep) => Seen::Errno(rep.errno()),
                    Err(e) => Seen::Io(format!("reply: {e}")),
                }
            })
        })
        .collect();
    let seen: Vec<Seen> = peers
        .into_iter()
        .map(|p| {
            p.join()
                .unwrap_or_else(|_| Seen::Io("connect or send failed".into()))
        })
        .collect();
    let busy = seen
        .iter()
        .filter(|s| **s == Seen::Errno(libc::EBUSY))
        .count();
    let other: Vec<&Seen> = seen
        .iter()
        .filter(|s| **s != Seen::Errno(libc::EBUSY))
        .collect();
    println!("{busy} of {PEERS} refused peers read EBUSY");
    assert!(
        other.is_empty(),
        "{} peers without EBUSY: {other:?}",
        other.len()
    );
    a.still_works();
    signal_and_expect_clean_exit(srv, libc::SIGTERM);
}

/// A refused peer that sends nothing is still answered (an EBUSY error
/// reply), then closed (failure 6).
#[test]
fn silent_refused_peer_is_answered_before_it_is_closed() {
    let srv = Sidecar::start("model:pl330", &[]);
    let mut a = Raw::negotiated(&srv.socket, true);
    let mut s = UnixStream::connect(&srv.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("silent refused peer: {e} after {got:?}"),
        }
    }
    assert_eq!(got.len(), HEADER_SIZE, "one error reply, then EOF: {got:?}");
    let h = Header::decode(got[..HEADER_SIZE].try_into().unwrap());
    assert!(h.is_reply() && h.is_error(), "{h:?}");
    assert_eq!(h.error as i32, libc::EBUSY);
    a.still_works();
    signal_and_expect_clean_exit(srv, libc::SIGTERM);
}

/// Every terminating signal an operator or supervisor sends ends the
/// backend cleanly, with a client connected (failure 7).
#[test]
fn terminating_signals_exit_cleanly_and_remove_the_socket() {
    for sig in [
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGINT,
        libc::SIGTERM,
    ] {
        let srv = Sidecar::start("model:pl330", &[]);
        let mut a = Raw::negotiated(&srv.socket, true);
        a.still_works();
        let log = signal_and_expect_clean_exit(srv, sig);
        assert!(log.contains("client disconnected"), "signal {sig}: {log}");
        assert!(a.closed_by_server(), "signal {sig}: client not closed");
    }
}
