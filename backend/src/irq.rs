//! Interrupts: VFIO IRQ semantics for models ([`EmulatedIrqs`]) and the EOI policy
//! engine ([`EoiEngine`]).
//!
//! # `EmulatedIrqs`
//! One vector per IRQ index (as Linux vfio-platform/amba: `count` is always 1).
//! Each has a trigger eventfd, a mask bit and an optional unmask (resample)
//! eventfd. Level lines are AUTOMASKED: when the device line is high, unmasked and
//! a trigger is set, the trigger eventfd is signalled once and the vector masks
//! itself; it fires again only after an unmask finds the line still high (a
//! "refire"). Edge lines signal on every rising edge while unmasked.
//!
//! `SET_IRQS` follows `drivers/vfio/platform/vfio_platform_irq.c`:
//! * MASK / UNMASK accept `start == 0, count == 1` only. `DATA_NONE` acts, `DATA_BOOL`
//!   acts when the flag is true. UNMASK with `DATA_EVENTFD` installs (fd) or removes
//!   (-1) the unmask eventfd — every signal on it unmasks (the virqfd path); MASK with
//!   `DATA_EVENTFD` is `EINVAL` as in Linux.
//! * TRIGGER with `DATA_NONE` and `count == 0` disables the index (trigger dropped);
//!   otherwise `start == 0, count == 1`: `DATA_EVENTFD` sets/clears the trigger,
//!   `DATA_NONE`/`DATA_BOOL(true)` is the loopback test: the vector fires as if the
//!   device raised it (level vectors auto-mask).
//! * Eventfds are checked to really be eventfds (a pipe could block the server),
//!   and every read and write of one goes through [`peer_eventfd`], which never
//!   blocks whatever the client does to the eventfd's flags or counter.
//!
//! Counters per vector ([`IrqCounters`]): device events = rising edges of the
//! device line; host interrupts = signals on the trigger eventfd; unmasks =
//! effective unmasks (of a masked vector); refires = unmasks that fired again.
//!
//! # `EoiEngine`
//! Decides, per IRQ index, when the server unmasks it (see [`EoiPolicy`]):
//! * `ClearRegister`: after a client write to the IRQ's clear register reached the
//!   device and cleared that IRQ's bits (W1C: a written 1 in the IRQ's mask; write-any:
//!   any write) → unmask locally, no round trip;
//! * `Resample`: the client's unmask eventfd (SET_IRQS UNMASK|EVENTFD) does it; the
//!   engine does nothing;
//! * `FirstAccess`: QEMU's legacy heuristic, kept for comparison: every trapped
//!   access (read or write, any region, any offset) unmasks every such IRQ (the
//!   device makes an unmask of an unmasked vector a no-op).

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use serde::{Deserialize, Serialize};
use vfio_sidecar_protocol::ext;

use crate::device::{DeviceError, IrqAction, IrqCounters, IrqData, SetIrqs};
use crate::peer_eventfd::{self, PeerFdError, Signalled};

/// Checks that `fd` is an eventfd (by its `/proc/self/fd` link).
pub fn check_eventfd(fd: &impl AsRawFd) -> Result<(), DeviceError> {
    let link =
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(DeviceError::Io)?;
    if link.as_os_str() == "anon_inode:[eventfd]" {
        Ok(())
    } else {
        Err(DeviceError::Invalid(format!(
            "fd is not an eventfd ({})",
            link.display()
        )))
    }
}

/// Signals a client's eventfd ([`peer_eventfd::signal`]: never blocks, even
/// if the client made the eventfd blocking and saturated its counter). A
/// saturated counter is not an error — the reader already sees a pending
/// event, as with the kernel's saturating `eventfd_signal`.
fn signal(f: &File) -> Result<(), PeerFdError> {
    if peer_eventfd::signal(f)? == Signalled::Saturated {
        log::debug!("IRQ eventfd counter saturated; event already pending");
    }
    Ok(())
}

/// Puts a client's eventfd in non-blocking mode. The flag lives on the open
/// file description, which the client shares and can change back at any time,
/// so this is no guarantee: what keeps the backend from blocking on a
/// client's eventfd is [`peer_eventfd`] (per-call `RWF_NOWAIT` reads and
/// deadline-bounded writes). Setting it still spares the common case the
/// deadline timer. The client's own reads and writes of this eventfd become
/// non-blocking too (VMMs create their eventfds non-blocking anyway).
pub fn set_nonblocking(fd: &impl AsRawFd) -> Result<(), DeviceError> {
    // SAFETY: F_GETFL/F_SETFL on an fd we own; no memory is passed.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(DeviceError::Io(std::io::Error::last_os_error()));
    }
    if flags & libc::O_NONBLOCK == 0 {
        // SAFETY: as above.
        let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
        if rc < 0 {
            return Err(DeviceError::Io(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[derive(Debug)]
struct Vector {
    level_triggered: bool,
    trigger: Option<File>,
    unmask_fd: Option<File>,
    masked: bool,
    line: bool,
    counters: IrqCounters,
}

impl Vector {
    fn fire(&mut self) {
        if let Some(t) = &self.trigger {
            if let Err(e) = signal(t) {
                log::warn!("IRQ trigger eventfd write failed: {e}");
            }
            self.counters.host_interrupts += 1;
            if self.level_triggered {
                self.masked = true;
            }
        }
    }

    /// A level vector fires when line high, unmasked and a trigger is set.
    fn evaluate_level(&mut self) {
        if self.level_triggered && self.line && !self.masked && self.trigger.is_some() {
            self.fire();
        }
    }
}

/// VFIO IRQ semantics for a model's interrupt lines (one vector per index).
#[derive(Debug)]
pub struct EmulatedIrqs {
    vectors: Vec<Vector>,
}

/// Token base for unmask eventfds in [`EmulatedIrqs::poll_fds`] (token = base + index).
pub const UNMASK_TOKEN_BASE: u64 = 0x1000;

impl EmulatedIrqs {
    /// `n` lines; `level_triggered` says whether they are level (automasked).
    pub fn new(n: usize, level_triggered: bool) -> Self {
        EmulatedIrqs {
            vectors: (0..n)
                .map(|_| Vector {
                    level_triggered,
                    trigger: None,
                    unmask_fd: None,
                    masked: false,
                    line: false,
                    counters: IrqCounters::default(),
                })
                .collect(),
        }
    }

    /// Number of IRQ indices.
    pub fn len(&self) -> usize {
        self.vectors.len()
    }

    /// True when there are no lines.
    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    fn vector(&mut self, index: u32) -> Result<&mut Vector, DeviceError> {
        self.vectors
            .get_mut(index as usize)
            .ok_or_else(|| DeviceError::Invalid(format!("IRQ index {index} out of range")))
    }

    /// Feeds the device's current line levels (after every device access).
    /// Missing entries count as low.
    pub fn update(&mut self, levels: &[bool]) {
        for (i, v) in self.vectors.iter_mut().enumerate() {
            let level = levels.get(i).copied().unwrap_or(false);
            let rising = level && !v.line;
            v.line = level;
            if rising {
                v.counters.device_events += 1;
                if !v.level_triggered && !v.masked {
                    v.fire();
                }
            }
            v.evaluate_level();
        }
    }

    /// Unmasks a vector (the EOI action). Re-fires if the line is still high.
    /// Unmasking an unmasked vector does nothing.
    pub fn unmask(&mut self, index: u32) -> Result<(), DeviceError> {
        let v = self.vector(index)?;
        if !v.masked {
            return Ok(());
        }
        v.masked = false;
        v.counters.unmasks += 1;
        if v.level_triggered && v.line && v.trigger.is_some() {
            v.counters.refires += 1;
            v.fire();
        }
        Ok(())
    }

    /// Masks a vector.
    pub fn mask(&mut self, index: u32) -> Result<(), DeviceError> {
        self.vector(index)?.masked = true;
        Ok(())
    }

    /// Is the vector masked?
    pub fn is_masked(&self, index: u32) -> bool {
        self.vectors
            .get(index as usize)
            .map(|v| v.masked)
            .unwrap_or(false)
    }

    /// Counters of a vector.
    pub fn counters(&self, index: u32) -> Option<IrqCounters> {
        self.vectors.get(index as usize).map(|v| v.counters)
    }

    /// Applies a `SET_IRQS` request (Linux vfio-platform semantics, see module docs).
    pub fn set_irqs(&mut self, req: SetIrqs) -> Result<(), DeviceError> {
        let SetIrqs {
            index,
            start,
            count,
            action,
            data,
        } = req;
        self.vector(index)?;
        if action == IrqAction::Trigger && count == 0 {
            return match data {
                IrqData::None => {
                    let v = self.vector(index)?;
                    v.trigger = None;
                    Ok(())
                }
                _ => Err(DeviceError::Invalid(
                    "TRIGGER with count 0 needs DATA_NONE".into(),
                )),
            };
        }
        if start != 0 || count != 1 {
            return Err(DeviceError::Invalid(format!(
                "start {start} count {count}: only start 0, count 1 is valid"
            )));
        }
        match (action, data) {
            (IrqAction::Mask, IrqData::Eventfd(_)) => Err(DeviceError::Invalid(
                "MASK with DATA_EVENTFD is not supported (as in Linux)".into(),
            )),
            (IrqAction::Unmask, IrqData::Eventfd(fds)) => {
                let file = Self::eventfd_file(fds)?;
                self.vector(index)?.unmask_fd = file;
                Ok(())
            }
            (IrqAction::Trigger, IrqData::Eventfd(fds)) => {
                let file = Self::eventfd_file(fds)?;
                let v = self.vector(index)?;
                v.trigger = file;
                // Like vfio_set_trigger enabling the line: a pending level fires.
                v.evaluate_level();
                Ok(())
            }
            // DATA_NONE acts; DATA_BOOL acts when its flag is true.
            (_, IrqData::Bool(b)) if !b.first().copied().unwrap_or(false) => Ok(()),
            (IrqAction::Mask, _) => self.mask(index),
            (IrqAction::Unmask, _) => self.unmask(index),
            (IrqAction::Trigger, _) => {
                // Loopback: as if the device raised the vector.
                let v = self.vector(index)?;
                if !v.masked {
                    v.fire();
                }
                Ok(())
            }
        }
    }

    /// The (single) fd of a `DATA_EVENTFD` payload as a checked, non-blocking
    /// eventfd; `None` (fd -1) de-assigns.
    fn eventfd_file(mut fds: Vec<Option<OwnedFd>>) -> Result<Option<File>, DeviceError> {
        match fds.pop().flatten() {
            None => Ok(None),
            Some(fd) => {
                check_eventfd(&fd)?;
                set_nonblocking(&fd)?;
                Ok(Some(File::from(fd)))
            }
        }
    }

    /// Unmask eventfds to watch, tagged `UNMASK_TOKEN_BASE + index`.
    pub fn poll_fds(&self) -> Vec<(RawFd, u64)> {
        self.vectors
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                v.unmask_fd
                    .as_ref()
                    .map(|f| (f.as_raw_fd(), UNMASK_TOKEN_BASE + i as u64))
            })
            .collect()
    }

    /// An unmask eventfd became readable: consume it and unmask. Returns false if
    /// the token is not one of ours.
    pub fn on_poll_fd(&mut self, token: u64) -> Result<bool, DeviceError> {
        let Some(index) = token.checked_sub(UNMASK_TOKEN_BASE) else {
            return Ok(false);
        };
        let Ok(index) = u32::try_from(index) else {
            return Ok(false);
        };
        let Some(v) = self.vectors.get_mut(index as usize) else {
            return Ok(false);
        };
        if let Some(f) = &v.unmask_fd {
            // Never blocks, even if the client made the eventfd blocking and
            // drained it between our poll and this read.
            match peer_eventfd::consume(f) {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(true),
                Err(e) => return Err(DeviceError::Io(std::io::Error::other(e))),
            }
        }
        self.unmask(index)?;
        Ok(true)
    }

    /// Drops every eventfd the client gave (disconnect) and unmasks all vectors.
    pub fn release_all(&mut self) {
        for v in &mut self.vectors {
            v.trigger = None;
            v.unmask_fd = None;
            v.masked = false;
        }
    }

    /// Number of eventfds held (triggers + unmask fds), for tests and logs.
    pub fn held_fds(&self) -> usize {
        self.vectors
            .iter()
            .map(|v| v.trigger.is_some() as usize + v.unmask_fd.is_some() as usize)
            .sum()
    }
}

/// When the server unmasks an IRQ: the policies a server can be told to use
/// (`--eoi`, a profile's `default-eoi`). The device description reports them
/// as the protocol's [`ext::EoiPolicy`] (which adds `none` for IRQs without a
/// rule), converted by `From`; the spelling is the same everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EoiPolicy {
    /// A write to the IRQ's known clear register unmasks it.
    ClearRegister,
    /// The client's resample (unmask) eventfd unmasks it.
    Resample,
    /// Any trapped access unmasks (QEMU's legacy heuristic; comparison only).
    FirstAccess,
}

impl EoiPolicy {
    /// Every policy, in the order the CLI lists them.
    pub const ALL: [EoiPolicy; 3] = [
        EoiPolicy::ClearRegister,
        EoiPolicy::Resample,
        EoiPolicy::FirstAccess,
    ];

    /// The name `--eoi`, profiles and the device description use.
    pub fn as_str(self) -> &'static str {
        match self {
            EoiPolicy::ClearRegister => "clear-register",
            EoiPolicy::Resample => "resample",
            EoiPolicy::FirstAccess => "first-access",
        }
    }
}

impl std::fmt::Display for EoiPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EoiPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.map(Self::as_str).into();
                format!("unknown EOI policy {s:?} ({})", known.join(", "))
            })
    }
}

impl From<EoiPolicy> for ext::EoiPolicy {
    fn from(p: EoiPolicy) -> Self {
        match p {
            EoiPolicy::ClearRegister => ext::EoiPolicy::ClearRegister,
            EoiPolicy::Resample => ext::EoiPolicy::Resample,
            EoiPolicy::FirstAccess => ext::EoiPolicy::FirstAccess,
        }
    }
}

/// How a clear register clears (W1C or write-any): the protocol's type, as
/// the device description reports it.
pub use vfio_sidecar_protocol::ext::ClearMode;

/// The clear register of one IRQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClearRegister {
    /// Region index.
    pub region: u32,
    /// Byte offset in the region.
    pub offset: u64,
    /// Register width in bytes (1, 2, 4 or 8).
    pub width: u32,
    /// W1C or write-any.
    pub mode: ClearMode,
    /// Bits of the register that belong to this IRQ (W1C).
    pub mask: u64,
}

impl ClearRegister {
    /// Did a write of `data` at `offset` in `region` clear this IRQ?
    pub fn cleared_by(&self, region: u32, offset: u64, data: &[u8]) -> bool {
        if region != self.region || data.is_empty() {
            return false;
        }
        let reg_end = self.offset.saturating_add(u64::from(self.width));
        let Some(wr_end) = offset.checked_add(data.len() as u64) else {
            return false;
        };
        if wr_end <= self.offset || offset >= reg_end {
            return false;
        }
        match self.mode {
            ClearMode::WriteAny => true,
            ClearMode::W1c => {
                // Assemble the written part of the register (little-endian),
                // unwritten bytes as 0.
                let mut value = 0u64;
                for b in 0..u64::from(self.width.min(8)) {
                    let addr = self.offset + b;
                    if addr >= offset && addr < wr_end {
                        let byte = data.get((addr - offset) as usize).copied().unwrap_or(0);
                        value |= u64::from(byte) << (8 * b);
                    }
                }
                value & self.mask != 0
            }
        }
    }
}

/// The EOI rule of one IRQ index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrqEoi {
    /// IRQ index.
    pub index: u32,
    /// Policy in force.
    pub policy: EoiPolicy,
    /// The clear register (needed by `ClearRegister`).
    pub clear: Option<ClearRegister>,
}

/// Why an EOI configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EoiError {
    /// `clear-register` was chosen for an IRQ the profile gives no clear register.
    #[error("IRQ {index}: clear-register EOI needs a clear register in the profile")]
    NoClearRegister {
        /// The IRQ index.
        index: u32,
    },
}

/// Decides which IRQ indices to unmask after a trapped access.
#[derive(Debug, Clone, Default)]
pub struct EoiEngine {
    rules: Vec<IrqEoi>,
    /// Indices under `FirstAccess` (what any access unmasks), precomputed:
    /// trapped accesses ask for it on every access.
    first_access: Vec<u32>,
    /// Byte span `[lo, hi)` covering every clear register in force (any
    /// region): a write outside it clears nothing and skips the rules.
    clear_span: Option<(u64, u64)>,
}

impl EoiEngine {
    /// An engine with the given per-IRQ rules. A `ClearRegister` rule without a
    /// register is an error.
    pub fn new(rules: Vec<IrqEoi>) -> Result<Self, EoiError> {
        for r in &rules {
            if r.policy == EoiPolicy::ClearRegister && r.clear.is_none() {
                return Err(EoiError::NoClearRegister { index: r.index });
            }
        }
        let first_access = rules
            .iter()
            .filter(|r| r.policy == EoiPolicy::FirstAccess)
            .map(|r| r.index)
            .collect();
        let clear_span = rules
            .iter()
            .filter(|r| r.policy == EoiPolicy::ClearRegister)
            .filter_map(|r| r.clear)
            .map(|c| (c.offset, c.offset.saturating_add(u64::from(c.width))))
            .reduce(|(lo, hi), (l, h)| (lo.min(l), hi.max(h)));
        Ok(EoiEngine {
            rules,
            first_access,
            clear_span,
        })
    }

    /// The rules.
    pub fn rules(&self) -> &[IrqEoi] {
        &self.rules
    }

    /// The policy of one IRQ.
    pub fn policy(&self, index: u32) -> Option<EoiPolicy> {
        self.rules
            .iter()
            .find(|r| r.index == index)
            .map(|r| r.policy)
    }

    /// Clear registers in force (their pages must stay trapped).
    pub fn trapped_registers(&self) -> Vec<ClearRegister> {
        self.rules
            .iter()
            .filter(|r| r.policy == EoiPolicy::ClearRegister)
            .filter_map(|r| r.clear)
            .collect()
    }

    /// IRQ indices to unmask after a client write reached the device.
    pub fn after_write(&self, region: u32, offset: u64, data: &[u8]) -> Vec<u32> {
        let end = offset.saturating_add(data.len() as u64);
        let may_clear = self
            .clear_span
            .is_some_and(|(lo, hi)| offset < hi && end > lo);
        if !may_clear {
            // Allocates nothing when no IRQ is under first-access either.
            return self.first_access.clone();
        }
        let mut out: Vec<u32> = self
            .rules
            .iter()
            .filter(|r| match (r.policy, &r.clear) {
                (EoiPolicy::ClearRegister, Some(c)) => c.cleared_by(region, offset, data),
                (EoiPolicy::FirstAccess, _) => true,
                _ => false,
            })
            .map(|r| r.index)
            .collect();
        out.dedup();
        out
    }

    /// IRQ indices to unmask after a client read reached the device.
    pub fn after_read(&self) -> &[u32] {
        &self.first_access
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::FromRawFd;

    /// A non-blocking eventfd and a second handle to read it (test helper).
    pub(crate) fn eventfd() -> (OwnedFd, File) {
        // SAFETY: eventfd(2) returns a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0);
        // SAFETY: fresh fd, owned here.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let reader = File::from(owned.try_clone().unwrap());
        (owned, reader)
    }

    /// Reads (and resets) an eventfd's count; 0 if it was not signalled.
    pub(crate) fn drain(f: &File) -> u64 {
        let mut b = [0u8; 8];
        let mut f = f;
        match f.read(&mut b) {
            Ok(8) => u64::from_ne_bytes(b),
            _ => 0,
        }
    }

    /// A `SET_IRQS` of vector 0 of index 0.
    fn req(action: IrqAction, data: IrqData) -> SetIrqs {
        SetIrqs {
            index: 0,
            start: 0,
            count: 1,
            action,
            data,
        }
    }

    fn set_trigger(irqs: &mut EmulatedIrqs, index: u32, fd: OwnedFd) {
        let data = IrqData::Eventfd(vec![Some(fd)]);
        irqs.set_irqs(SetIrqs {
            index,
            ..req(IrqAction::Trigger, data)
        })
        .unwrap();
    }

    #[test]
    fn blocking_full_eventfd_never_blocks_the_server() {
        use std::io::Write;
        // SAFETY: eventfd(2) returns a new fd we own (blocking on purpose).
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fresh fd, owned here.
        let trig = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut w = File::from(trig.try_clone().unwrap());
        w.write_all(&(u64::MAX - 1).to_ne_bytes()).unwrap();
        // SAFETY: a second blocking eventfd, as the unmask fd.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fresh fd, owned here.
        let unmask = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut irqs = EmulatedIrqs::new(1, true);
        set_trigger(&mut irqs, 0, trig);
        irqs.set_irqs(req(IrqAction::Unmask, IrqData::Eventfd(vec![Some(unmask)])))
            .unwrap();
        // Would block forever on a blocking write of 1 to a counter at max-1.
        irqs.update(&[true]);
        assert_eq!(irqs.counters(0).unwrap().host_interrupts, 1);
        // Unmask fd "readable" but empty (the client drained it first): the
        // read must not block either.
        assert!(irqs.on_poll_fd(UNMASK_TOKEN_BASE).unwrap());
    }

    /// Issue 13 #1: O_NONBLOCK set at SET_IRQS proves nothing — the client
    /// clears it on the shared description afterwards and saturates the
    /// counter (or leaves the unmask eventfd empty): neither the signal nor
    /// the unmask read may block.
    #[test]
    fn client_clearing_o_nonblock_after_set_irqs_never_blocks_the_server() {
        use std::io::Write;
        let clear = |f: &File| {
            // SAFETY: F_GETFL/F_SETFL on a live fd; no memory passed.
            unsafe {
                let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
            }
        };
        let mut irqs = EmulatedIrqs::new(1, true);
        let (trig, client_trig) = eventfd();
        set_trigger(&mut irqs, 0, trig);
        let (unmask, client_unmask) = eventfd();
        irqs.set_irqs(req(IrqAction::Unmask, IrqData::Eventfd(vec![Some(unmask)])))
            .unwrap();
        clear(&client_trig);
        clear(&client_unmask);
        (&client_trig)
            .write_all(&(u64::MAX - 1).to_ne_bytes())
            .unwrap();
        irqs.update(&[true]);
        assert_eq!(irqs.counters(0).unwrap().host_interrupts, 1);
        assert!(irqs.on_poll_fd(UNMASK_TOKEN_BASE).unwrap());
        assert!(irqs.is_masked(0), "an empty unmask eventfd does not unmask");
    }

    #[test]
    fn level_automask_and_refire() {
        let mut irqs = EmulatedIrqs::new(2, true);
        let (fd, rd) = eventfd();
        set_trigger(&mut irqs, 0, fd);
        irqs.update(&[true, false]);
        assert_eq!(drain(&rd), 1);
        assert!(irqs.is_masked(0));
        irqs.update(&[true, false]);
        assert_eq!(drain(&rd), 0, "masked: no second signal");
        irqs.unmask(0).unwrap();
        assert_eq!(drain(&rd), 1, "still high after unmask: refire");
        let c = irqs.counters(0).unwrap();
        assert_eq!(
            (c.device_events, c.host_interrupts, c.unmasks, c.refires),
            (1, 2, 1, 1)
        );
        irqs.update(&[false, false]);
        irqs.unmask(0).unwrap();
        assert_eq!(drain(&rd), 0);
        assert!(!irqs.is_masked(0));
        irqs.unmask(0).unwrap();
        assert_eq!(
            irqs.counters(0).unwrap().unmasks,
            2,
            "no-op unmask not counted"
        );
    }

    #[test]
    fn pending_level_fires_when_trigger_set() {
        let mut irqs = EmulatedIrqs::new(1, true);
        irqs.update(&[true]);
        let (fd, rd) = eventfd();
        set_trigger(&mut irqs, 0, fd);
        assert_eq!(drain(&rd), 1);
        assert_eq!(irqs.counters(0).unwrap().device_events, 1);
    }

    #[test]
    fn edge_lines_signal_per_edge() {
        let mut irqs = EmulatedIrqs::new(1, false);
        let (fd, rd) = eventfd();
        set_trigger(&mut irqs, 0, fd);
        irqs.update(&[true]);
        irqs.update(&[true]);
        irqs.update(&[false]);
        irqs.update(&[true]);
        assert_eq!(drain(&rd), 2);
        assert!(!irqs.is_masked(0));
    }

    #[test]
    fn set_irqs_semantics() {
        let mut irqs = EmulatedIrqs::new(1, true);
        let (fd, rd) = eventfd();
        set_trigger(&mut irqs, 0, fd);
        // Loopback trigger.
        irqs.set_irqs(req(IrqAction::Trigger, IrqData::Bool(vec![true])))
            .unwrap();
        assert_eq!(drain(&rd), 1);
        assert!(irqs.is_masked(0));
        // Unmask via BOOL false: nothing; via NONE: unmasks.
        irqs.set_irqs(req(IrqAction::Unmask, IrqData::Bool(vec![false])))
            .unwrap();
        assert!(irqs.is_masked(0));
        irqs.set_irqs(req(IrqAction::Unmask, IrqData::None))
            .unwrap();
        assert!(!irqs.is_masked(0));
        // Bad ranges.
        for (start, count) in [(1, 1), (0, 2)] {
            assert!(irqs
                .set_irqs(SetIrqs {
                    start,
                    count,
                    ..req(IrqAction::Mask, IrqData::None)
                })
                .is_err());
        }
        // MASK + eventfd refused.
        let (fd2, _) = eventfd();
        assert!(irqs
            .set_irqs(req(IrqAction::Mask, IrqData::Eventfd(vec![Some(fd2)])))
            .is_err());
        // Non-eventfd refused.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(irqs
            .set_irqs(req(
                IrqAction::Trigger,
                IrqData::Eventfd(vec![Some(OwnedFd::from(a))])
            ))
            .is_err());
        // Disable: count 0 + NONE.
        assert_eq!(irqs.held_fds(), 1);
        irqs.set_irqs(SetIrqs {
            count: 0,
            ..req(IrqAction::Trigger, IrqData::None)
        })
        .unwrap();
        assert_eq!(irqs.held_fds(), 0);
        assert!(irqs
            .set_irqs(SetIrqs {
                index: 5,
                ..req(IrqAction::Mask, IrqData::None)
            })
            .is_err());
    }

    #[test]
    fn unmask_eventfd_resample_path() {
        let mut irqs = EmulatedIrqs::new(1, true);
        let (fd, rd) = eventfd();
        set_trigger(&mut irqs, 0, fd);
        let (ufd, uw) = eventfd();
        irqs.set_irqs(req(IrqAction::Unmask, IrqData::Eventfd(vec![Some(ufd)])))
            .unwrap();
        let fds = irqs.poll_fds();
        assert_eq!(fds.len(), 1);
        let token = fds[0].1;
        irqs.update(&[true]);
        assert_eq!(drain(&rd), 1);
        irqs.update(&[false]);
        signal(&uw).unwrap();
        assert!(irqs.on_poll_fd(token).unwrap());
        assert!(!irqs.is_masked(0));
        assert_eq!(drain(&uw), 0, "unmask eventfd consumed");
        assert!(!irqs.on_poll_fd(7).unwrap());
        irqs.release_all();
        assert_eq!(irqs.held_fds(), 0);
    }

    #[test]
    fn clear_register_matching() {
        let c = ClearRegister {
            region: 0,
            offset: 0x2c,
            width: 4,
            mode: ClearMode::W1c,
            mask: 1 << 9,
        };
        assert!(c.cleared_by(0, 0x2c, &(1u32 << 9).to_le_bytes()));
        assert!(!c.cleared_by(0, 0x2c, &1u32.to_le_bytes()));
        assert!(!c.cleared_by(1, 0x2c, &(1u32 << 9).to_le_bytes()));
        assert!(!c.cleared_by(0, 0x28, &(1u32 << 9).to_le_bytes()));
        // Byte write to byte 1 of the register with bit 1 = register bit 9.
        assert!(c.cleared_by(0, 0x2d, &[2]));
        assert!(!c.cleared_by(0, 0x2c, &[2]));
        let any = ClearRegister {
            mode: ClearMode::WriteAny,
            ..c
        };
        assert!(any.cleared_by(0, 0x2c, &0u32.to_le_bytes()));
        assert!(!any.cleared_by(0, 0x30, &0u32.to_le_bytes()));
    }

    /// A PL330-shaped register file: events latch into RIS; line n = RIS[n] & INTEN[n];
    /// INTCLR (0x2c) is W1C.
    struct FakePl330 {
        ris: u32,
        inten: u32,
    }
    impl FakePl330 {
        fn levels(&self) -> Vec<bool> {
            (0..4)
                .map(|n| self.ris & self.inten & (1 << n) != 0)
                .collect()
        }
        fn read(&self, off: u64) -> u32 {
            match off {
                0x20 => self.inten,
                0x24 => self.ris,
                _ => 0,
            }
        }
        fn write(&mut self, off: u64, v: u32) {
            if off == 0x2c {
                self.ris &= !v;
            }
        }
    }

    /// Runs one device event on line 1 and Linux's ISR order; returns host interrupts.
    fn isr_run(policy: EoiPolicy) -> IrqCounters {
        let rules = (0..4)
            .map(|n| IrqEoi {
                index: n,
                policy,
                clear: Some(ClearRegister {
                    region: 0,
                    offset: 0x2c,
                    width: 4,
                    mode: ClearMode::W1c,
                    mask: 1 << n,
                }),
            })
            .collect();
        let eoi = EoiEngine::new(rules).unwrap();
        let mut dev = FakePl330 { ris: 0, inten: 0xf };
        let mut irqs = EmulatedIrqs::new(4, true);
        let (fd, rd) = eventfd();
        set_trigger(&mut irqs, 1, fd);
        // Device event: DMASEV 1.
        dev.ris |= 1 << 1;
        irqs.update(&dev.levels());
        // Linux pl330_update: FSRD, FSRC, INT_EVENT_RIS, INTEN reads, INTCLR write.
        let read = |dev: &FakePl330, irqs: &mut EmulatedIrqs, off| {
            let v = dev.read(off);
            irqs.update(&dev.levels());
            for &i in eoi.after_read() {
                irqs.unmask(i).unwrap();
            }
            v
        };
        read(&dev, &mut irqs, 0x30);
        read(&dev, &mut irqs, 0x34);
        let es = read(&dev, &mut irqs, 0x24);
        let inten = read(&dev, &mut irqs, 0x20);
        for ev in 0..4 {
            if es & (1 << ev) != 0 && inten & (1 << ev) != 0 {
                let v = 1u32 << ev;
                dev.write(0x2c, v);
                irqs.update(&dev.levels());
                for i in eoi.after_write(0, 0x2c, &v.to_le_bytes()) {
                    irqs.unmask(i).unwrap();
                }
            }
        }
        let c = irqs.counters(1).unwrap();
        assert_eq!(drain(&rd), c.host_interrupts);
        assert!(!irqs.is_masked(1), "EOI completed: vector unmasked");
        c
    }

    #[test]
    fn clear_register_gives_one_host_interrupt_per_event() {
        let c = isr_run(EoiPolicy::ClearRegister);
        assert_eq!(c.device_events, 1);
        assert_eq!(c.host_interrupts, 1);
        assert_eq!(c.refires, 0);
    }

    #[test]
    fn first_access_gives_more() {
        let c = isr_run(EoiPolicy::FirstAccess);
        assert_eq!(c.device_events, 1);
        assert!(c.host_interrupts > 1, "{c:?}");
        assert!(c.refires > 0);
    }

    #[test]
    fn engine_rejects_clear_policy_without_register() {
        assert_eq!(
            EoiEngine::new(vec![IrqEoi {
                index: 0,
                policy: EoiPolicy::ClearRegister,
                clear: None
            }])
            .unwrap_err(),
            EoiError::NoClearRegister { index: 0 }
        );
        let e = EoiEngine::new(vec![IrqEoi {
            index: 0,
            policy: EoiPolicy::Resample,
            clear: None,
        }])
        .unwrap();
        assert!(e.after_write(0, 0x2c, &[1, 0, 0, 0]).is_empty());
        assert!(e.after_read().is_empty());
        assert_eq!(
            "first-access".parse::<EoiPolicy>(),
            Ok(EoiPolicy::FirstAccess)
        );
    }

    #[test]
    fn policy_names_are_one_spelling() {
        for p in EoiPolicy::ALL {
            let quoted = format!("\"{p}\"");
            assert_eq!(serde_json::to_string(&p).unwrap(), quoted);
            assert_eq!(
                serde_json::to_string(&ext::EoiPolicy::from(p)).unwrap(),
                quoted,
                "the description reports {p:?} under the same name"
            );
            assert_eq!(p.as_str().parse::<EoiPolicy>(), Ok(p));
        }
        assert_eq!(
            "none".parse::<EoiPolicy>(),
            Err("unknown EOI policy \"none\" (clear-register, resample, first-access)".into())
        );
    }
}
