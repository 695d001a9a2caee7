//! Helpers of the hostile_reliability_* tests: what an adversarial client does
//! to the fds it shares with the backend (clear `O_NONBLOCK` on the shared open
//! file description, saturate an eventfd counter, drain one without ever
//! blocking itself), and the liveness checks run after every attack (SIGTERM
//! handled within 1 s with the socket file removed; a new client served).
#![allow(dead_code, clippy::unwrap_used)]

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vfio_sidecar_tests::Sidecar;

/// The largest value an eventfd counter holds (`ULLONG_MAX - 1`): a write of
/// anything > 0 then sleeps (or fails with EAGAIN if non-blocking).
pub const EVENTFD_MAX: u64 = u64::MAX - 1;

/// Sets or clears `O_NONBLOCK` on the open file description behind `fd`
/// (shared with every process holding a dup of it).
pub fn set_nonblocking(fd: RawFd, on: bool) {
    // SAFETY: F_GETFL/F_SETFL on an fd we hold; no memory is passed.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        assert!(fl >= 0);
        let fl = if on {
            fl | libc::O_NONBLOCK
        } else {
            fl & !libc::O_NONBLOCK
        };
        assert_eq!(libc::fcntl(fd, libc::F_SETFL, fl), 0);
    }
}

/// Is `O_NONBLOCK` set on `fd`'s open file description?
pub fn is_nonblocking(fd: RawFd) -> bool {
    // SAFETY: F_GETFL on an fd we hold.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    fl >= 0 && fl & libc::O_NONBLOCK != 0
}

/// Reads an eventfd's counter with `RWF_NOWAIT` (never sleeps whatever the
/// description's flags); `None` when it was 0.
pub fn nowait_read(fd: RawFd) -> Option<u64> {
    let mut v = 0u64;
    let iov = libc::iovec {
        iov_base: (&mut v as *mut u64).cast(),
        iov_len: 8,
    };
    // SAFETY: one iovec over a live u64; offset -1 = the file position.
    let n = unsafe { libc::preadv2(fd, &iov, 1, -1, libc::RWF_NOWAIT) };
    if n == 8 {
        return Some(v);
    }
    let e = std::io::Error::last_os_error();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EAGAIN),
        "preadv2(RWF_NOWAIT) on an eventfd: {e}"
    );
    None
}

/// The attack of issue 13 #1: the eventfd becomes blocking (on the shared
/// description, so for the backend too) with its counter at the maximum, so
/// that a blocking write by the backend would sleep for ever.
pub fn make_blocking_and_saturated(f: &File) {
    let fd = f.as_raw_fd();
    let _ = nowait_read(fd);
    let mut w = f;
    w.write_all(&EVENTFD_MAX.to_ne_bytes()).unwrap();
    set_nonblocking(fd, false);
    assert!(!is_nonblocking(fd));
}

/// Is process `pid` gone (exited: a zombie waiting for us, or reaped)?
pub fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// Sends SIGTERM and requires the backend to have exited within `limit`
/// (a liveness bound, the threat model's promise, not a performance
/// measurement) and to have removed its socket file.
pub fn sigterm_exits_within(srv: &Sidecar, limit: Duration) {
    let pid = srv.pid();
    assert!(!exited(pid), "backend already dead: {}", srv.log_text());
    let t0 = Instant::now();
    // SAFETY: kill(2) on the backend child this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    while !exited(pid) {
        assert!(
            t0.elapsed() < limit,
            "SIGTERM not handled within {limit:?}: {}",
            srv.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        !srv.socket.exists(),
        "socket file left behind: {}",
        srv.log_text()
    );
    assert!(
        srv.log_text().contains("shutting down"),
        "not a clean shutdown: {}",
        srv.log_text()
    );
}

/// The bound of [`sigterm_exits_within`] the issue sets.
pub const SIGTERM_LIMIT: Duration = Duration::from_secs(1);

/// A small xorshift generator (reproducible attack schedules).
pub struct Rng(pub u64);

impl Rng {
    /// Next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Busy-waits about `ns` nanoseconds (sub-scheduler-tick delays that place an
/// action inside the backend's window).
pub fn spin(ns: u64) {
    let t0 = Instant::now();
    while (t0.elapsed().as_nanos() as u64) < ns {
        std::hint::spin_loop();
    }
}
