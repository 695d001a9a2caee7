//! I/O on eventfds a peer shares, which never blocks the calling thread for
//! more than [`DEADLINE`] whatever the peer does (issue 13 #1).
//!
//! A client's IRQ trigger and unmask (resample) eventfds share one open file
//! description with the client: `O_NONBLOCK` set by the backend at SET_IRQS
//! ([`crate::irq::set_nonblocking`]) can be cleared by the client at any
//! moment, and the client controls the counter. An eventfd `write` sleeps
//! while the counter would overflow (the client wrote `0xffff_ffff_ffff_fffe`),
//! a `read` while it is 0 (the client drained it between our poll and our
//! read). Neither the flags nor the counter can be checked first without a
//! race (`poll(0)` + `write`, re-setting `O_NONBLOCK` before each call), and
//! `open("/proc/self/fd/N")` cannot give the backend a description of its
//! own (anon inodes: `ENXIO`). So the *call itself* is bounded:
//!
//! * [`consume`] (unmask eventfds) reads with `preadv2(..., RWF_NOWAIT)`,
//!   which never sleeps whatever the description's flags (eventfds support
//!   it since Linux 5.x); if the kernel refuses the flag, it falls back to a
//!   deadline-bounded `read` as below.
//! * [`signal`] (trigger eventfds) writes under a per-thread deadline timer:
//!   a POSIX timer (`timer_create`, `CLOCK_MONOTONIC`, `SIGEV_THREAD_ID` to
//!   the calling thread) armed *periodic* with [`DEADLINE`] around the
//!   `write`, its signal ([`deadline_signal`], a realtime signal with a
//!   no-op handler installed **without** `SA_RESTART`) unblocked only for
//!   the call. A write that sleeps is interrupted with `EINTR` within one
//!   period; because the timer keeps firing until it is disarmed, a signal
//!   that arrives before the thread has entered the `write` (preemption
//!   between arming and the call) does not leave it unbounded. Outside the
//!   window the signal is blocked in the thread, so a late expiry stays
//!   pending (delivered harmlessly at the next window) and never interrupts
//!   any other system call. A write that did not need to sleep never sees
//!   the signal (the kernel checks for signals only before sleeping).
//!
//! An interrupted or refused write means the counter is saturated: the
//! reader already sees a pending event (the kernel's `eventfd_signal` also
//! saturates), so it is reported as [`Signalled::Saturated`], not an error.
//!
//! Every thread that signals a peer's eventfd — the event loop (device work
//! in `run_pending`, unmask eventfds) and the connection thread (register
//! writes raising an IRQ), both holding the device lock — goes through this
//! module; the timer is created on a thread's first use. The seccomp list
//! allows what it needs: `timer_create` (`CLOCK_MONOTONIC` only),
//! `timer_settime`, `timer_delete`, `rt_sigprocmask`, `rt_sigaction`,
//! `rt_sigreturn`, `gettid` and `preadv2`.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use thiserror::Error;

/// The longest a call on a peer's eventfd can sleep before it is interrupted.
pub const DEADLINE: Duration = Duration::from_millis(2);

/// Offset of [`deadline_signal`] from `SIGRTMIN` (glibc reserves the two
/// realtime signals below its `SIGRTMIN`; SIGHUP/SIGQUIT/SIGUSR1/SIGTERM/SIGINT
/// are the backend's exit signals and are not used here).
const SIGNAL_OFFSET: libc::c_int = 6;

/// The realtime signal of the deadline timers (`SIGRTMIN + 6`).
pub fn deadline_signal() -> libc::c_int {
    libc::SIGRTMIN() + SIGNAL_OFFSET
}

/// Errors of peer eventfd I/O.
#[derive(Debug, Error)]
pub enum PeerFdError {
    /// The per-thread deadline timer could not be set up or armed: the call
    /// was not made (an unbounded call could hang the backend).
    #[error("eventfd deadline timer: {0}")]
    Timer(io::Error),
    /// The read or write failed (not because the counter was full or empty).
    #[error("eventfd I/O: {0}")]
    Io(io::Error),
}

/// What [`signal`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signalled {
    /// 1 was added to the counter.
    Delivered,
    /// The counter was at its maximum (an event is pending already).
    Saturated,
}

/// Adds 1 to a peer's eventfd counter without sleeping for more than
/// [`DEADLINE`], whatever its flags and counter.
pub fn signal(fd: &impl AsRawFd) -> Result<Signalled, PeerFdError> {
    let fd = fd.as_raw_fd();
    let one = 1u64.to_ne_bytes();
    // SAFETY: write(2) reads 8 bytes from a live local array.
    let r = bounded(|| unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) })?;
    match r {
        Ok(8) => Ok(Signalled::Delivered),
        Ok(n) => Err(PeerFdError::Io(io::Error::other(format!(
            "short eventfd write ({n} bytes)"
        )))),
        // EAGAIN: non-blocking and full; EINTR: blocking, so it slept, which
        // a write of 1 does only when the counter is full.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) => {
            Ok(Signalled::Saturated)
        }
        Err(e) => Err(PeerFdError::Io(e)),
    }
}

/// Reads and resets a peer's eventfd counter without sleeping for more than
/// [`DEADLINE`] (normally not at all); `None` when it was 0.
pub fn consume(fd: &impl AsRawFd) -> Result<Option<u64>, PeerFdError> {
    let fd = fd.as_raw_fd();
    let mut v = 0u64;
    if !NOWAIT_UNSUPPORTED.load(Ordering::Relaxed) {
        match read_nowait(fd, &mut v) {
            Ok(8) => return Ok(Some(v)),
            Ok(n) => return Err(short_read(n)),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return Ok(None),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)) => {
                log::debug!("preadv2(RWF_NOWAIT) on an eventfd: {e}; deadline-bounded reads");
                NOWAIT_UNSUPPORTED.store(true, Ordering::Relaxed);
            }
            Err(e) => return Err(PeerFdError::Io(e)),
        }
    }
    let buf = (&mut v as *mut u64).cast::<libc::c_void>();
    // SAFETY: read(2) writes at most 8 bytes into the live u64 `v`.
    match bounded(|| unsafe { libc::read(fd, buf, 8) })? {
        Ok(8) => Ok(Some(v)),
        Ok(n) => Err(short_read(n)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) => Ok(None),
        Err(e) => Err(PeerFdError::Io(e)),
    }
}

fn short_read(n: usize) -> PeerFdError {
    PeerFdError::Io(io::Error::other(format!("short eventfd read ({n} bytes)")))
}

/// Set once the kernel refused `RWF_NOWAIT` on an eventfd.
static NOWAIT_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// `preadv2(fd, [v], -1, RWF_NOWAIT)`.
fn read_nowait(fd: RawFd, v: &mut u64) -> io::Result<usize> {
    let iov = libc::iovec {
        iov_base: (v as *mut u64).cast(),
        iov_len: 8,
    };
    // SAFETY: one iovec over the live u64 `v`; offset -1 = the file position
    // (eventfds have none).
    let n = unsafe { libc::preadv2(fd, &iov, 1, -1, libc::RWF_NOWAIT) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Runs `call` (one system call returning a byte count or -1 with errno)
/// with the calling thread's deadline timer armed and its signal unblocked;
/// see the module docs. The outer error: the call was not made.
fn bounded(call: impl FnOnce() -> isize) -> Result<io::Result<usize>, PeerFdError> {
    TIMER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let timer = match slot.as_ref() {
            Some(t) => t,
            None => slot.insert(DeadlineTimer::new().map_err(PeerFdError::Timer)?),
        };
        timer.arm(DEADLINE).map_err(PeerFdError::Timer)?;
        if let Err(e) = mask_signal(libc::SIG_UNBLOCK) {
            let _ = timer.arm(Duration::ZERO);
            return Err(PeerFdError::Timer(e));
        }
        let n = call();
        let r = usize::try_from(n).map_err(|_| io::Error::last_os_error());
        // Blocking a valid signal cannot fail (EINVAL/EFAULT only); if it
        // did, the signal's handler is a no-op without SA_RESTART: at worst
        // a later call of this thread sees one EINTR.
        let _ = mask_signal(libc::SIG_BLOCK);
        if let Err(e) = timer.arm(Duration::ZERO) {
            log::warn!("eventfd deadline timer not disarmed: {e}");
        }
        Ok(r)
    })
}

thread_local! {
    /// This thread's deadline timer (created on first use, deleted at exit).
    static TIMER: RefCell<Option<DeadlineTimer>> = const { RefCell::new(None) };
}

/// A POSIX timer signalling [`deadline_signal`] to one thread.
#[derive(Debug)]
struct DeadlineTimer {
    /// The kernel's timer id.
    id: libc::c_int,
}

impl DeadlineTimer {
    /// Installs the no-op handler (once per process), blocks the signal in
    /// this thread and creates a timer aimed at this thread.
    fn new() -> io::Result<Self> {
        install_handler()?;
        mask_signal(libc::SIG_BLOCK)?;
        // SAFETY: sigevent is plain data; all-zero is a valid starting value.
        let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = deadline_signal();
        // SAFETY: gettid(2) has no arguments.
        sev.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut id: libc::c_int = 0;
        // SAFETY: the kernel reads one sigevent and writes one timer id (an
        // int) into the live locals passed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_timer_create,
                libc::CLOCK_MONOTONIC,
                &mut sev as *mut libc::sigevent,
                &mut id as *mut libc::c_int,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(DeadlineTimer { id })
    }

    /// Arms the timer to fire every `period` from now (`ZERO` disarms).
    fn arm(&self, period: Duration) -> io::Result<()> {
        let ts = libc::timespec {
            tv_sec: period.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(period.subsec_nanos() as i32),
        };
        let spec = libc::itimerspec {
            it_interval: ts,
            it_value: ts,
        };
        // SAFETY: the kernel reads one itimerspec from a live local; no old
        // value is returned (NULL).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_timer_settime,
                self.id,
                0,
                &spec as *const libc::itimerspec,
                std::ptr::null_mut::<libc::itimerspec>(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for DeadlineTimer {
    fn drop(&mut self) {
        // SAFETY: deletes the timer this struct created; no memory passed.
        unsafe { libc::syscall(libc::SYS_timer_delete, self.id) };
    }
}

extern "C" fn on_deadline(_sig: libc::c_int) {}

/// Installs [`on_deadline`] for [`deadline_signal`] without `SA_RESTART`
/// (once per process; the result is remembered).
fn install_handler() -> io::Result<()> {
    static DONE: OnceLock<Result<(), i32>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        // SAFETY: sigaction is plain data; all-zero is a valid starting value.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_deadline as extern "C" fn(libc::c_int) as usize;
        // No SA_RESTART: an interrupted write returns EINTR.
        sa.sa_flags = 0;
        // SAFETY: sigemptyset on the mask we own; sigaction reads `sa` and
        // installs a handler that does nothing (async-signal-safe).
        let rc = unsafe {
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(deadline_signal(), &sa, std::ptr::null_mut())
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL))
        }
    });
    r.map_err(io::Error::from_raw_os_error)
}

/// Blocks or unblocks [`deadline_signal`] in the calling thread.
fn mask_signal(how: libc::c_int) -> io::Result<()> {
    // SAFETY: sigset operations on a set we own; pthread_sigmask changes
    // only this thread's mask and returns no old set (NULL).
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, deadline_signal());
        libc::pthread_sigmask(how, &set, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Is [`deadline_signal`] blocked in the calling thread (tests)?
pub fn deadline_signal_blocked() -> bool {
    // SAFETY: queries this thread's mask into a set we own.
    unsafe {
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut old) == 0
            && libc::sigismember(&old, deadline_signal()) == 1
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    fn efd(flags: libc::c_int) -> File {
        // SAFETY: eventfd(2) returns a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | flags) };
        assert!(fd >= 0);
        // SAFETY: fresh fd, owned here.
        File::from(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn set_nonblocking(fd: RawFd, on: bool) {
        // SAFETY: F_GETFL/F_SETFL on a live fd.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            let fl = if on {
                fl | libc::O_NONBLOCK
            } else {
                fl & !libc::O_NONBLOCK
            };
            libc::fcntl(fd, libc::F_SETFL, fl);
        }
    }

    #[test]
    fn signal_delivers_and_consume_reads() {
        let f = efd(0);
        assert_eq!(signal(&f).unwrap(), Signalled::Delivered);
        assert_eq!(signal(&f).unwrap(), Signalled::Delivered);
        assert_eq!(consume(&f).unwrap(), Some(2));
        // Blocking and empty: no sleep.
        assert_eq!(consume(&f).unwrap(), None);
        assert!(
            deadline_signal_blocked(),
            "signal blocked outside the window"
        );
    }

    #[test]
    fn saturated_blocking_eventfd_does_not_block_the_writer() {
        let f = efd(0);
        (&f).write_all(&(u64::MAX - 1).to_ne_bytes()).unwrap();
        for _ in 0..3 {
            assert_eq!(signal(&f).unwrap(), Signalled::Saturated);
            assert!(deadline_signal_blocked());
        }
        let mut b = [0u8; 8];
        (&f).read_exact(&mut b).unwrap();
        assert_eq!(u64::from_ne_bytes(b), u64::MAX - 1, "counter unchanged");
        assert_eq!(signal(&f).unwrap(), Signalled::Delivered);
    }

    /// The peer flips O_NONBLOCK in a loop and keeps the counter saturated
    /// while this thread signals: every call returns.
    #[test]
    fn peer_flipping_flags_in_a_loop_never_blocks_the_writer() {
        let f = efd(libc::EFD_NONBLOCK);
        (&f).write_all(&(u64::MAX - 1).to_ne_bytes()).unwrap();
        let peer = f.try_clone().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = Arc::clone(&stop);
        let h = std::thread::spawn(move || {
            let mut on = false;
            while !s2.load(Ordering::Relaxed) {
                set_nonblocking(peer.as_raw_fd(), on);
                on = !on;
            }
        });
        let mut saturated = 0;
        for _ in 0..500 {
            if signal(&f).unwrap() == Signalled::Saturated {
                saturated += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
        assert_eq!(saturated, 500);
    }

    /// A peer that drains the counter between our poll and our read: the
    /// read returns `None` at once, even with the description blocking —
    /// also through the deadline fallback used when RWF_NOWAIT is refused.
    #[test]
    fn drained_blocking_eventfd_does_not_block_the_reader() {
        let f = efd(0);
        assert_eq!(consume(&f).unwrap(), None);
        let mut v = [0u8; 8];
        let fd = f.as_raw_fd();
        // SAFETY: read(2) into a live local buffer.
        let r = bounded(|| unsafe { libc::read(fd, v.as_mut_ptr().cast(), 8) }).unwrap();
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EINTR));
        assert!(deadline_signal_blocked());
    }

    /// Outside the window the signal never interrupts other calls: a pending
    /// expiry waits (blocked) and a plain blocking read completes normally.
    #[test]
    fn no_stray_eintr_after_an_interrupted_call() {
        let f = efd(0);
        (&f).write_all(&(u64::MAX - 1).to_ne_bytes()).unwrap();
        assert_eq!(signal(&f).unwrap(), Signalled::Saturated);
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let h = std::thread::spawn(move || {
            std::thread::sleep(DEADLINE * 5);
            b.write_all(b"x").unwrap();
        });
        let mut got = [0u8; 1];
        // SAFETY: read(2) into a live local; blocks until the peer writes.
        let n = unsafe { libc::read(a.as_raw_fd(), got.as_mut_ptr().cast(), 1) };
        assert_eq!(n, 1, "{}", io::Error::last_os_error());
        h.join().unwrap();
    }
}
