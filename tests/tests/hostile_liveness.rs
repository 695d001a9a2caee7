//! Hostile peers that attack liveness rather than parsing: a client that never
//! reads its replies, a flood of extra connections, huge `argsz` values, and
//! runaway microcode. The backend must stay responsive (every wait here is
//! under a watchdog, never a timing assertion), release what it held, and
//! stop burning CPU once the device is idle again.
#![allow(clippy::unwrap_used)]

mod hostile_util;

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use hostile_util::*;
use vfio_sidecar::model::pl330::asm::Asm;
use vfio_sidecar::model::pl330::insn::Insn;
use vfio_sidecar::model::pl330::regs::{CSR0, INTEN};
use vfio_sidecar_protocol::header::command as cmd;
use vfio_sidecar_tests::{fd_count, wait_until, GuestMem, Sidecar};

const IOVA: u64 = 0x4000_0000;

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn client_that_never_reads_replies_is_dropped_and_the_backend_recovers() {
    let srv = Sidecar::start("model:pl330", &[]);
    let pid = srv.pid();
    let idle = fd_count(pid);
    let r = Raw::negotiated(&srv.socket, true);
    r.sock.set_nonblocking(true).unwrap();
    // Pipeline REGION_READs of 4 bytes (36-byte replies) without reading:
    // the reply direction fills up, then the server's write times out.
    let msg = pipelined_reads(INTEN, 0, 64);
    let start = Instant::now();
    let mut sent = 0usize;
    while start.elapsed() < Duration::from_secs(30) {
        match sendmsg(&r.sock, &msg, &[]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => break, // EPIPE/ECONNRESET: the server closed us.
        }
        if srv.log_text().contains("client disconnected") {
            break;
        }
    }
    println!("sent {sent} bytes of requests before the server dropped the client");
    srv.wait_log("client disconnected");
    drop(r);
    wait_until("fds back to idle", Duration::from_secs(10), || {
        fd_count(pid) == idle
    });
    let mut r2 = Raw::negotiated(&srv.socket, true);
    r2.still_works();
}

#[test]
fn connection_flood_is_bounded_and_the_client_keeps_working() {
    let (srv, mut r) = pl330_peer(&[], true);
    let pid = srv.pid();
    let with_client = fd_count(pid);
    let mut extra = Vec::new();
    for i in 0..300 {
        let s = UnixStream::connect(&srv.socket).unwrap();
        if i % 3 == 0 {
            // Half a header: they never complete anything.
            let _ = s.set_nonblocking(true);
            let _ = sendmsg(&s, &[1, 0, 1, 0, 0x40], &[]);
        }
        extra.push(s);
        if i % 50 == 0 {
            r.still_works();
        }
    }
    r.still_works();
    // Refused connections are kept only until they are answered (EBUSY to
    // their first message, or after the 1 s a silent one is given).
    wait_until("flood not held", Duration::from_secs(10), || {
        fd_count(pid) <= with_client + 1
    });
    drop(extra);
    wait_until("flood released", Duration::from_secs(10), || {
        fd_count(pid) == with_client
    });
    r.still_works();
}

#[test]
fn huge_argsz_does_not_inflate_replies() {
    let (_srv, mut r) = pl330_peer(&[], true);
    let mut p = vec![0u8; 32];
    p[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
    let rep = r.expect(
        "region info argsz max",
        cmd::DEVICE_GET_REGION_INFO,
        &p,
        &[],
        0,
    );
    assert!(rep.payload.len() <= 4096, "{} bytes", rep.payload.len());
    let p = ne32(&[u32::MAX, 0, 0, 1]);
    let rep = r.expect(
        "irq stats argsz max",
        cmd::SIDECAR_GET_IRQ_STATS,
        &p,
        &[],
        0,
    );
    assert_eq!(rep.payload.len(), 16 + 32);
    let p = ne32(&[u32::MAX, 0]);
    let rep = r.expect("desc argsz max", cmd::SIDECAR_GET_DEVICE_DESC, &p, &[], 0);
    assert!(rep.payload.len() < 64 * 1024, "{} bytes", rep.payload.len());
    let p = ne32(&[u32::MAX, 0, 0, 0]);
    let rep = r.call(cmd::DEVICE_GET_REGION_IO_FDS, &p, &[]);
    assert!(rep.payload.len() < 4096, "{} bytes", rep.payload.len());
    r.still_works();
}

#[test]
fn runaway_microcode_does_not_starve_the_client_and_dmakill_stops_it() {
    let (srv, mut r) = pl330_peer(&[], true);
    let pid = srv.pid();
    let mem = GuestMem::new("runaway", 0x10000);
    r.map("map", &mem, 1 | 2 | (1 << 16), IOVA, 0x10000);
    // DMANOP; DMALPFE back to it: loops forever without touching memory.
    let mut a = Asm::new();
    let top = a.offset();
    a.nop().lpfe(top);
    mem.write(0, a.bytes());
    r.sock
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    r.dmago(IOVA as u32);
    // The channel keeps executing; the client is still served.
    let t = Instant::now();
    for _ in 0..3 {
        let csr = r.read32(CSR0);
        assert_eq!(csr & 0xf, 1, "channel 0 executing (CSR {csr:#x})");
    }
    println!(
        "3 register reads while the channel runs away: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    // DMAKILL channel 0.
    r.debug_insn(Insn::Kill, Some(0));
    assert_eq!(r.read32(CSR0) & 0xf, 0, "channel 0 stopped");
    // Once idle, the backend stops spinning (less than 0.2 s of CPU in 1 s).
    std::thread::sleep(Duration::from_millis(200));
    let c0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - c0;
    println!("backend CPU ticks in 1 s after DMAKILL: {used}");
    assert!(
        used < 20,
        "backend still busy after DMAKILL: {used} ticks/s"
    );
}

/// A client that keeps the socket full of requests (a writer thread that
/// never pauses, a reader thread draining the replies) must not starve the
/// rest of the event loop: SIGTERM still shuts the backend down.
#[test]
fn flooding_client_does_not_starve_sigterm() {
    let (srv, r) = pl330_peer(&[], true);
    let writer = r.sock.try_clone().unwrap();
    let reader = r.sock.try_clone().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_w = stop.clone();
    let w = std::thread::spawn(move || {
        let batch = pipelined_reads(INTEN, 0, 256);
        let mut sent = 0u64;
        while !stop_w.load(std::sync::atomic::Ordering::Relaxed) {
            match sendmsg(&writer, &batch, &[]) {
                Ok(n) => sent += n as u64,
                Err(_) => break,
            }
        }
        sent
    });
    let rd = std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0u64;
        let mut s = &reader;
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        got
    });
    // Let the flood build up, then ask the backend to stop (SIGTERM and wait
    // for the exit status, under a watchdog).
    std::thread::sleep(Duration::from_millis(500));
    let pid = srv.pid();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut srv = srv;
        let st = srv.terminate();
        let _ = tx.send(st);
    });
    let t = Instant::now();
    let st = rx.recv_timeout(Duration::from_secs(20));
    println!("SIGTERM to exit: {:.2} s", t.elapsed().as_secs_f64());
    if st.is_err() {
        // SAFETY: kill(2) on the stuck backend child before failing.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = r.sock.shutdown(std::net::Shutdown::Both);
    let sent = w.join().unwrap();
    let got = rd.join().unwrap();
    println!("flood: {sent} request bytes sent, {got} reply bytes read");
    let st = st.expect("backend did not exit on SIGTERM while flooded");
    assert!(st.success(), "{st}");
}
