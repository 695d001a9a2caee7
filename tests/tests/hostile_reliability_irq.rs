//! Issue 13 #1: a client that turns the eventfds it passed into traps.
//!
//! The open file description of an eventfd is shared between the client and
//! the backend, so `O_NONBLOCK` set by the backend at SET_IRQS can be cleared
//! by the client at any time, and the client can saturate the counter (a
//! write then sleeps) or drain it between the backend's poll and read (a read
//! then sleeps). Before the fix the backend slept in `write()`/`read()` while
//! holding the device lock: every later request and SIGTERM went unanswered.
//!
//! Each test attacks one path — the trigger signalled by the connection
//! thread (a register write raising the IRQ), by the event loop (DMA finishing
//! in `run_pending`), and the resample (unmask) eventfd read by the event
//! loop — then checks that the client is still served, that a new client is
//! served after it, and that SIGTERM is handled within 1 s with the socket
//! file removed. Default seccomp, as deployed.
#![allow(clippy::unwrap_used)]

mod hostile_util;
mod reliability_util;

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use hostile_util::*;
use reliability_util::*;
use vfio_sidecar::model::pl330::asm::Asm;
use vfio_sidecar::model::pl330::insn::{Cond, Insn, LoopCounter};
use vfio_sidecar::model::pl330::regs::{INTCLR, INTEN};
use vfio_sidecar_protocol::header::command as cmd;
use vfio_sidecar_tests::{eventfd, GuestMem, Sidecar};

const IOVA: u64 = 0x4000_0000;
const MEM: u64 = 0x10000;
const DATA_EVENTFD: u32 = 4;
const ACT_UNMASK: u32 = 16;
const ACT_TRIGGER: u32 = 32;

/// Replies must come within this (a watchdog: a hung backend fails the test
/// instead of hanging it).
const REPLY_WATCHDOG: Duration = Duration::from_secs(5);

fn set_eventfd_raw(r: &mut Raw, action: u32, index: u32, fd: i32) {
    r.expect(
        "SET_IRQS eventfd",
        cmd::DEVICE_SET_IRQS,
        &set_irqs(DATA_EVENTFD | action, index, 0, 1, &[]),
        &[fd],
        0,
    );
}

/// Host interrupts counted on IRQ `index` (SIDECAR_GET_IRQ_STATS).
fn host_interrupts(r: &mut Raw, index: u32) -> u64 {
    let p = ne32(&[48u32, index, 0, 1]);
    let rep = r.expect("irq stats", cmd::SIDECAR_GET_IRQ_STATS, &p, &[], 0);
    // argsz, index, start, count, then {device_events, host_interrupts, ...}.
    u64::from_ne_bytes(rep.payload[24..32].try_into().unwrap())
}

/// After an attack: this client still works, a new client is served after it,
/// and SIGTERM (with that new client connected) is handled within 1 s.
fn backend_still_lives(srv: &Sidecar, mut r: Raw) {
    r.sock.set_read_timeout(Some(REPLY_WATCHDOG)).unwrap();
    r.still_works();
    drop(r);
    srv.wait_log("client disconnected");
    let mut r2 = Raw::negotiated(&srv.socket, true);
    r2.still_works();
    sigterm_exits_within(srv, SIGTERM_LIMIT);
}

#[test]
fn saturated_blocking_trigger_signalled_by_the_connection_thread() {
    let (srv, mut r) = pl330_peer(&[], true);
    let (trig, reader) = eventfd();
    set_eventfd_raw(&mut r, ACT_TRIGGER, 0, trig.as_raw_fd());
    make_blocking_and_saturated(&reader);
    r.write32(INTEN, 1);
    // DMASEV 0 through the debug interface: the connection thread raises the
    // IRQ inside the DBGCMD write, holding the device lock.
    r.sock.set_read_timeout(Some(REPLY_WATCHDOG)).unwrap();
    r.try_debug_insn(Insn::Sev { event: 0 }, None)
        .expect("the DBGCMD write that raised the IRQ was answered");
    assert_eq!(host_interrupts(&mut r, 0), 1, "the interrupt was raised");
    // The eventfd is still blocking and saturated (the backend did not
    // change it behind the client's back either); EOI and raise it again.
    assert!(!is_nonblocking(reader.as_raw_fd()));
    r.write32(INTCLR, 1);
    r.try_debug_insn(Insn::Sev { event: 0 }, None)
        .expect("second saturated signal answered");
    assert_eq!(host_interrupts(&mut r, 0), 2);
    assert_eq!(nowait_read(reader.as_raw_fd()), Some(EVENTFD_MAX));
    backend_still_lives(&srv, r);
}

/// The attack of `saturated_blocking_trigger_signalled_by_the_event_loop`,
/// up to the interrupt having been raised on the event loop's thread.
fn event_loop_attack() -> (Sidecar, Raw, std::fs::File, std::os::fd::OwnedFd) {
    // A tiny step budget without a time slice: the DBGCMD write and the
    // batch's run execute 64 instructions each, the event loop the rest
    // (about 4,700), so the DMASEV at the end runs on the event loop's thread.
    let srv = Sidecar::start("model:pl330,step-budget=64,time-slice-us=0", &[]);
    let mut r = Raw::negotiated(&srv.socket, true);
    let mem = GuestMem::new("evloop", MEM);
    r.map("map", &mem, 1 | 2 | (1 << 16), IOVA, MEM);
    let mut a = Asm::new();
    a.lp(LoopCounter::Lc0, 256).unwrap();
    let outer = a.offset();
    a.lp(LoopCounter::Lc1, 8).unwrap();
    let inner = a.offset();
    a.nop();
    a.lpend(LoopCounter::Lc1, Cond::Always, inner);
    a.lpend(LoopCounter::Lc0, Cond::Always, outer);
    a.sev(0).end();
    mem.write(0, a.bytes());
    let (trig, reader) = eventfd();
    set_eventfd_raw(&mut r, ACT_TRIGGER, 0, trig.as_raw_fd());
    r.write32(INTEN, 1);
    make_blocking_and_saturated(&reader);
    r.sock.set_read_timeout(Some(REPLY_WATCHDOG)).unwrap();
    r.try_dmago(IOVA as u32).expect("DMAGO answered");
    // Send nothing while the event loop finishes the program (a request
    // would make the connection thread run a budget too).
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    while host_interrupts(&mut r, 0) == 0 {
        assert!(
            t0.elapsed() < REPLY_WATCHDOG,
            "the program never raised IRQ 0"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (srv, r, reader, trig)
}

#[test]
fn saturated_blocking_trigger_signalled_by_the_event_loop() {
    let (srv, r, reader, _trig) = event_loop_attack();
    assert_eq!(nowait_read(reader.as_raw_fd()), Some(EVENTFD_MAX));
    backend_still_lives(&srv, r);
}

/// SIGTERM while the attacker is still connected, its trigger blocking and
/// saturated: handled within 1 s, socket file removed.
#[test]
fn sigterm_with_the_attacker_still_connected() {
    let (srv, mut r, reader, _trig) = event_loop_attack();
    assert!(!is_nonblocking(reader.as_raw_fd()));
    r.still_works();
    sigterm_exits_within(&srv, SIGTERM_LIMIT);
}

#[test]
fn resample_eventfd_drained_by_the_client_between_poll_and_read() {
    let (srv, mut r) = pl330_peer(&["--eoi", "resample"], true);
    let (unmask, client) = eventfd();
    set_eventfd_raw(&mut r, ACT_UNMASK, 0, unmask.as_raw_fd());
    set_nonblocking(client.as_raw_fd(), false);
    // Keep the connection thread busy with a batch of requests (holding the
    // device lock, so the event loop, woken by the unmask eventfd, waits for
    // it), signal the unmask eventfd, wait a little (0-60 µs), then drain it
    // ourselves without blocking: often the event loop has seen it readable
    // and not yet read it. A blocking read by the backend would then sleep
    // for ever, holding the device lock.
    let fd = client.as_raw_fd();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let t0 = Instant::now();
    let mut rounds = 0u32;
    let mut stolen = 0u32;
    let mut id = 0x100u16;
    const BATCH: u16 = 32;
    r.sock.set_read_timeout(Some(REPLY_WATCHDOG)).unwrap();
    while rounds < 20_000 && t0.elapsed() < Duration::from_secs(8) {
        r.send_raw(&pipelined_reads(INTEN, id, BATCH), &[]);
        vfio_sidecar_protocol::testing::eventfd_signal(fd).unwrap();
        spin(rng.next() % 60_000);
        if nowait_read(fd).is_some() {
            stolen += 1;
        }
        for _ in 0..BATCH {
            let rep = r
                .try_reply()
                .unwrap_or_else(|e| panic!("round {rounds}: no reply ({e}): the backend hangs"));
            assert_eq!(rep.hdr.msg_id, id);
            id = id.wrapping_add(1);
        }
        rounds += 1;
    }
    println!("{rounds} rounds, {stolen} signals drained by the client first");
    assert!(stolen > 0, "the race was never attempted");
    assert!(!is_nonblocking(fd), "the client's blocking flag stays");
    backend_still_lives(&srv, r);
}
