//! Level interrupt lines for events the backend signals one by one.
//!
//! The device's lines are level-high in the guest's device tree (as the
//! backend describes them), so each SPI is a level irqfd: KVM raises the line
//! on its trigger eventfd and lowers it at the guest's EOI, signalling the
//! resamplefd. With `--eoi clear-register` or `first-access` the backend
//! signals its trigger eventfd once per device event (re-fire included)
//! whenever it is unmasked; a signal that arrives while the guest's line is
//! still raised (after the ISR's INTCLR write, before its EOI — e.g. a queued
//! request the ISR starts that completes at once) would change nothing in
//! KVM, and the EOI would then drop the line with that event unseen: a lost
//! interrupt.
//!
//! So for those policies the shim relays: the backend's trigger eventfd is
//! the shim's, a relay thread raises the KVM line (writes the irqfd's
//! eventfd) when it is low and notes a signal that arrives while it is
//! raised; at the guest's EOI (resamplefd) it raises the line once more if
//! one did — the line is re-sampled at the EOI, as a level line is. One extra
//! interrupt covers any number of such signals: Linux's ISR (like any level
//! ISR) handles what the device shows, not a count; if it had already seen
//! the event, the extra interrupt finds nothing (`IRQ_NONE`). [`LevelRelay`]
//! is that state machine (one per line). With `--eoi resample` no relay is
//! needed: the backend itself unmasks (and re-fires) only after the EOI, so
//! its trigger is the irqfd's directly.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// The state of one relayed level line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LevelRelay {
    /// The guest's line is raised (not yet EOI'd).
    raised: bool,
    /// A signal arrived while the line was raised: raise again at the EOI.
    resample: bool,
    /// Times the line was raised (interrupts delivered).
    pub raises: u64,
    /// Guest EOIs (resamplefd signals).
    pub eois: u64,
    /// Signals that arrived while the line was raised.
    pub deferred: u64,
}

impl LevelRelay {
    /// `n` trigger signals from the backend; true: raise the line now.
    pub fn on_trigger(&mut self, n: u64) -> bool {
        if n == 0 {
            return false;
        }
        if self.raised {
            self.resample = true;
            self.deferred += n;
            return false;
        }
        self.raise()
    }

    /// The guest EOI'd `n` times (KVM lowered the line); true: raise it again
    /// because a signal came while it was raised.
    pub fn on_eoi(&mut self, n: u64) -> bool {
        if n == 0 {
            return false;
        }
        self.eois += n;
        self.raised = false;
        if !std::mem::take(&mut self.resample) {
            return false;
        }
        self.raise()
    }

    fn raise(&mut self) -> bool {
        self.raised = true;
        self.raises += 1;
        true
    }
}

/// The eventfds of one relayed line.
#[derive(Debug)]
pub struct RelayedLine {
    /// What the backend signals (its SET_IRQS trigger).
    pub from_backend: EventFd,
    /// The irqfd's trigger (KVM raises the line).
    pub to_kvm: EventFd,
    /// The irqfd's resamplefd (the guest's EOI).
    pub resample: EventFd,
}

impl RelayedLine {
    /// Fresh non-blocking eventfds.
    pub fn new() -> std::io::Result<Self> {
        let e = || EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC);
        Ok(RelayedLine {
            from_backend: e()?,
            to_kvm: e()?,
            resample: e()?,
        })
    }
}

/// The relay thread over several lines; stopped by [`Relay::stop`] (or on drop).
#[derive(Debug)]
pub struct Relay {
    stop: Arc<EventFd>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<LevelRelay>>>,
}

const STOP_TOKEN: u64 = u64::MAX;

/// Reads an eventfd's counter (0 when nothing is pending).
fn drain(e: &EventFd) -> u64 {
    e.read().unwrap_or(0)
}

impl Relay {
    /// Starts relaying `lines` (moved into the thread).
    pub fn start(lines: Vec<RelayedLine>) -> std::io::Result<Self> {
        let epoll = Epoll::new()?;
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?);
        let add = |fd: i32, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(stop.as_raw_fd(), STOP_TOKEN)?;
        for (i, l) in lines.iter().enumerate() {
            add(l.from_backend.as_raw_fd(), 2 * i as u64)?;
            add(l.resample.as_raw_fd(), 2 * i as u64 + 1)?;
        }
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let stopping = stopping.clone();
            std::thread::Builder::new()
                .name("irq-relay".into())
                .spawn(move || relay_loop(&epoll, &lines, &stopping))?
        };
        Ok(Relay {
            stop,
            stopping,
            thread: Some(thread),
        })
    }

    /// Stops the thread and returns each line's counters.
    pub fn stop(mut self) -> Vec<LevelRelay> {
        self.halt()
    }

    fn halt(&mut self) -> Vec<LevelRelay> {
        self.stopping.store(true, Ordering::Release);
        let _ = self.stop.write(1);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.halt();
        }
    }
}

fn relay_loop(epoll: &Epoll, lines: &[RelayedLine], stopping: &AtomicBool) -> Vec<LevelRelay> {
    let mut state = vec![LevelRelay::default(); lines.len()];
    let mut events = vec![EpollEvent::default(); 2 * lines.len() + 1];
    while !stopping.load(Ordering::Acquire) {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("interrupt relay: epoll_wait: {e}");
                break;
            }
        };
        for ev in &events[..n] {
            let token = ev.data();
            if token == STOP_TOKEN {
                continue;
            }
            let i = (token / 2) as usize;
            let (Some(line), Some(st)) = (lines.get(i), state.get_mut(i)) else {
                continue;
            };
            let raise = if token % 2 == 0 {
                st.on_trigger(drain(&line.from_backend))
            } else {
                st.on_eoi(drain(&line.resample))
            };
            if raise {
                if let Err(e) = line.to_kvm.write(1) {
                    log::error!("interrupt relay: raising line {i}: {e}");
                }
            }
        }
    }
    // What arrived with the stop request still counts (raising is harmless).
    for (line, st) in lines.iter().zip(state.iter_mut()) {
        st.on_trigger(drain(&line.from_backend));
        st.on_eoi(drain(&line.resample));
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_while_raised_is_delivered_after_the_eoi() {
        let mut r = LevelRelay::default();
        assert!(r.on_trigger(1), "line low: raise");
        assert!(!r.on_trigger(1), "raised: noted, not lost");
        assert!(r.on_eoi(1), "EOI: raise again (re-sampled)");
        assert!(!r.on_eoi(1), "EOI, nothing noted: stays low");
        assert!(r.on_trigger(1));
        assert_eq!((r.raises, r.eois, r.deferred), (3, 2, 1));
        assert!(
            !r.on_trigger(0) && !r.on_eoi(0),
            "spurious wakeups change nothing"
        );
    }

    #[test]
    fn many_signals_while_raised_cost_one_more_interrupt() {
        let mut r = LevelRelay::default();
        assert!(r.on_trigger(2), "coalesced signals: one raise");
        for _ in 0..5 {
            assert!(!r.on_trigger(1), "re-fires while raised");
        }
        assert!(r.on_eoi(1), "one re-raise for all of them");
        assert!(!r.on_eoi(1));
        assert_eq!((r.raises, r.eois, r.deferred), (2, 2, 5));
    }

    #[test]
    fn relay_thread_raises_resamples_and_stops() {
        let line = RelayedLine::new().unwrap();
        // clones of the fds the test plays KVM and the backend with
        let backend = line.from_backend.try_clone().unwrap();
        let kvm = line.to_kvm.try_clone().unwrap();
        let eoi = line.resample.try_clone().unwrap();
        let relay = Relay::start(vec![line]).unwrap();
        let wait_raise = |what: &str| {
            for _ in 0..500 {
                if let Ok(n) = kvm.read() {
                    return n;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            panic!("no raise: {what}");
        };
        backend.write(1).unwrap();
        assert_eq!(wait_raise("first signal"), 1);
        backend.write(1).unwrap(); // while raised
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(kvm.read().is_err(), "not raised again before the EOI");
        eoi.write(1).unwrap();
        assert_eq!(wait_raise("after the EOI"), 1);
        eoi.write(1).unwrap();
        let st = relay.stop();
        assert_eq!(st.len(), 1);
        assert_eq!((st[0].raises, st[0].eois, st[0].deferred), (2, 2, 1));
    }
}
