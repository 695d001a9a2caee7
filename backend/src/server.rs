//! The server glue: the vfio-user [`Handler`] over a [`Device`], the DMA memory
//! table, the EOI engine and the device profile ([`Backend`]), and the epoll
//! event loop around the listening socket ([`run_serve`]).
//!
//! * **Regions**: accesses are bounds-checked (zero length, `offset + len` past the
//!   region → `EINVAL`). `DEVICE_GET_REGION_INFO` reports the device's sparse mmap
//!   areas *minus* the pages that hold a clear register while the clear-register
//!   policy is in force (they must trap); a region left without areas loses its
//!   MMAP flag (the PL330 model has none anyway: one trapped 4 KiB frame).
//! * **DMA**: `DMA_MAP` with an fd goes to [`crate::dma`]; without one the
//!   client serves the range by DMA_READ/DMA_WRITE ([`crate::dma_msg`]: the
//!   device stalls, `serve_transfers` exchanges the messages on the
//!   connection thread while answering the client, the device runs again).
//!   `DMA_UNMAP` follows Linux type1 (range; nothing mapped = success). EXEC: plain
//!   clients get READ ⇒ EXEC; extension clients state EXEC; the extension reply
//!   says `exec_enforced` = true for models, false for VFIO devices.
//! * **EOI**: after a trapped access reaches the device, [`EoiEngine`] says which
//!   IRQs to unmask (clear register written, or any access for first-access).
//! * **Lifecycle**: one client at a time. A second connection is answered with an
//!   `EBUSY` error reply to its first message (VERSION) and closed, however many
//!   connect at once (`server/refused.rs`). When the client goes (clean or
//!   killed): every DMA mapping is dropped (device notified, munmap, fd closed),
//!   every IRQ eventfd released (`SET_IRQS` trigger disable, unmask eventfd
//!   removed), the device reset when it supports reset, counters logged, and the
//!   next client accepted. SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2:
//!   clean shutdown, socket file removed (unless inherited through socket
//!   activation).
//! * **Liveness**: the connection thread writes a batch's replies after it has
//!   released the device lock, all within one total deadline; the event loop
//!   never writes to the served client and never blocks on a peer; `accept`
//!   failures pause the listener (growing back-off) instead of spinning. See
//!   `docs/threat-model.md` §10.
//! * **Sandbox** ([`run_serve`]): listener from [`crate::sandbox::open_listener`]
//!   (socket activation preferred), `--user` privilege drop, the seccomp filter
//!   (on by default, `--seccomp kill`) before the loop; every accepted peer is
//!   checked with `SO_PEERCRED` (`--allow-uid`/`--allow-gid`) and a refused one is
//!   closed unread. `--no-mmap` ([`Backend::set_no_mmap`]) offers no mmap area.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use thiserror::Error;
use vfio_sidecar_protocol::caps::{Capabilities, Limits, Negotiated, SidecarCaps, SIDECAR_VERSION};
use vfio_sidecar_protocol::error::Errno;
use vfio_sidecar_protocol::ext::{
    self, ClockDesc, DeviceDescription, DeviceKind, EoiDesc, IrqDesc, IrqStats, RegionDesc,
};
use vfio_sidecar_protocol::message::{
    self as msg, DeviceInfo as WireDeviceInfo, DmaMap, DmaUnmap, IrqDataType,
    IrqInfo as WireIrqInfo, RegionInfo as WireRegionInfo, SetIrqs as WireSetIrqs,
};
use vfio_sidecar_protocol::server::{ConnStatus, Handler, ServerConnection, ShutdownHandle};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::cli::{load_profiles, open_device, select_profile, CliError, DeviceSpec, ServeArgs};
use crate::device::{
    device_flags, irq_flags, region_flags, Device, DeviceError, DmaProt, IrqAction, IrqData,
    MappedRegion, SetIrqs, SparseArea,
};
use crate::dma::DmaTable;
use crate::dma_msg::{ClientMemory, Deferred, MessageMaps, Transfer};
use crate::irq::{EoiEngine, EoiPolicy};
use crate::profile::Profile;
use crate::sandbox::{
    self, GroupSpec, PeerPolicy, SandboxError, SeccompProfile, SocketOpts, UserSpec,
};
use crate::stats::{Counting, Stats};

mod refused;
use refused::{RefusedPeers, TOKEN_REFUSED};

/// Page size for trapping.
const PAGE: u64 = 4096;

fn errno_of(e: &DeviceError) -> Errno {
    Errno(e.errno())
}

/// Subtracts the pages in `trapped` ([start, end) byte ranges) from `areas`.
pub fn subtract_trapped(areas: &[SparseArea], trapped: &[(u64, u64)]) -> Vec<SparseArea> {
    let mut out: Vec<SparseArea> = areas.to_vec();
    for &(ts, te) in trapped {
        let mut next = Vec::new();
        for a in out {
            let (s, e) = (a.offset, a.offset.saturating_add(a.size));
            if te <= s || ts >= e {
                next.push(a);
                continue;
            }
            if ts > s {
                next.push(SparseArea {
                    offset: s,
                    size: ts - s,
                });
            }
            if te < e {
                next.push(SparseArea {
                    offset: te,
                    size: e - te,
                });
            }
        }
        out = next;
    }
    out
}

/// The device side of one vfio-user connection (persists across clients).
pub struct Backend {
    dev: Box<dyn Device>,
    dma: DmaTable,
    /// Mappings without an fd (served by DMA_READ/DMA_WRITE messages).
    msgs: MessageMaps,
    /// The message transfers device steps wait for, and their results.
    deferred: std::sync::Mutex<Deferred>,
    eoi: EoiEngine,
    profile: Profile,
    is_model: bool,
    dma_exec: bool,
    extension: bool,
    max_dma_maps: u32,
    /// Set after writes/resets: the device may have work left (`run_pending`).
    work_pending: bool,
    /// `--no-mmap`: offer no sparse-mmap area for any region (every access traps).
    no_mmap: bool,
    /// Size of every region, read once at construction (a device's regions do
    /// not change for its life), so a trapped access is bounds-checked without
    /// building the region description. `None`: `region_info` failed then; such
    /// an access asks the device again (and gets its error).
    region_sizes: Vec<Option<u64>>,
    /// The event loop's registration of the device's poll fds, if attached.
    poller: Option<Poller>,
    /// Session and process statistics ([`crate::stats`]).
    stats: Stats,
}

/// The device poll fds registered with the event loop's epoll (see
/// [`Backend::attach_poller`]).
struct Poller {
    epoll: Arc<Epoll>,
    watched: Vec<RawFd>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("profile", &self.profile.name)
            .field("dma", &self.dma)
            .field("eoi", &self.eoi)
            .finish()
    }
}

impl Backend {
    /// Wraps a device. `policy` overrides the profile's default EOI policy.
    pub fn new(
        dev: Box<dyn Device>,
        profile: Profile,
        policy: Option<EoiPolicy>,
        is_model: bool,
        max_dma_maps: u32,
    ) -> Result<Self, ServeError> {
        let info = dev.info();
        let profile = profile.for_irqs(info.num_irqs);
        let eoi = profile.eoi_engine(info.num_irqs, policy)?;
        let mut dma = DmaTable::new(max_dma_maps as usize);
        let mut region_sizes = Vec::new();
        for i in 0..info.num_regions {
            let r = dev.region_info(i);
            region_sizes.push(r.as_ref().ok().map(|r| r.size));
            if let Ok(r) = r {
                if let Some(m) = &r.mmap {
                    if let Err(e) = dma.forbid_file(&m.fd) {
                        log::warn!("cannot stat region {i} fd: {e}");
                    }
                }
            }
        }
        Ok(Backend {
            dev,
            dma,
            msgs: MessageMaps::default(),
            deferred: std::sync::Mutex::new(Deferred::default()),
            eoi,
            profile,
            is_model,
            dma_exec: false,
            extension: false,
            max_dma_maps,
            work_pending: false,
            no_mmap: false,
            region_sizes,
            poller: None,
            stats: Stats::default(),
        })
    }

    /// Registers the device's poll fds with `epoll` (token
    /// `TOKEN_DEVICE | the device's token`) and keeps the registration in step
    /// with the device: every operation that can replace or close one of them
    /// (SET_IRQS, reset, client cleanup) deregisters them first, while they
    /// are still open — an epoll entry outlives a closed fd whose file the
    /// client still holds — and registers the new set afterwards. The event
    /// loop then does nothing per message.
    pub fn attach_poller(&mut self, epoll: Arc<Epoll>) {
        self.unwatch_poll_fds();
        self.poller = Some(Poller {
            epoll,
            watched: Vec::new(),
        });
        self.watch_poll_fds();
    }

    fn unwatch_poll_fds(&mut self) {
        if let Some(p) = self.poller.as_mut() {
            for fd in p.watched.drain(..) {
                let _ = p
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
        }
    }

    fn watch_poll_fds(&mut self) {
        let Some(p) = self.poller.as_mut() else {
            return;
        };
        for (fd, tok) in self.dev.poll_fds() {
            match ctl(&p.epoll, ControlOperation::Add, fd, TOKEN_DEVICE | tok) {
                Ok(()) => p.watched.push(fd),
                Err(e) => log::warn!("cannot watch device fd {fd}: {e}"),
            }
        }
    }

    /// True when the registered poll fds are the device's current ones (a
    /// debug check of the loop: no operation changed them behind its back).
    fn poll_fds_in_sync(&self) -> bool {
        self.poller.as_ref().is_none_or(|p| {
            let now: Vec<RawFd> = self.dev.poll_fds().into_iter().map(|(fd, _)| fd).collect();
            now == p.watched
        })
    }

    /// `--no-mmap`: never offer a region for mmap (models and VFIO alike), so
    /// every region access traps into the backend.
    pub fn set_no_mmap(&mut self, no_mmap: bool) {
        self.no_mmap = no_mmap;
    }

    /// The device.
    pub fn device(&self) -> &dyn Device {
        self.dev.as_ref()
    }

    /// Number of DMA mappings.
    pub fn dma_len(&self) -> usize {
        self.dma.len()
    }

    /// The EOI engine.
    pub fn eoi(&self) -> &EoiEngine {
        &self.eoi
    }

    /// Host interrupts so far of IRQ `index` (vector 0), if the device counts.
    fn host_interrupts(&self, index: u32) -> Option<u64> {
        self.dev.irq_counters(index, 0).map(|c| c.host_interrupts)
    }

    /// `(index, host interrupts)` of the IRQs among `indices` under the
    /// clear-register policy (usually none or one: only a write to a clear
    /// register names any).
    fn clear_register_fires(&self, indices: &[u32]) -> Vec<(u32, u64)> {
        indices
            .iter()
            .filter(|&&i| self.eoi.policy(i) == Some(EoiPolicy::ClearRegister))
            .filter_map(|&i| self.host_interrupts(i).map(|n| (i, n)))
            .collect()
    }

    fn unmask(dev: &mut dyn Device, indices: &[u32]) {
        for &i in indices {
            if let Err(e) = dev.unmask_irq(i, 0) {
                log::debug!("EOI unmask of IRQ {i} failed: {e}");
            }
        }
    }

    fn check_access(&self, region: u32, offset: u64, len: usize) -> Result<(), Errno> {
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let size = match self.region_sizes.get(region as usize).copied().flatten() {
            Some(size) => size,
            None => self.dev.region_info(region).map_err(|e| errno_of(&e))?.size,
        };
        let end = offset.checked_add(len as u64).ok_or(Errno::EINVAL)?;
        if end > size {
            log::debug!("region {region} access [{offset:#x}, +{len}) beyond size {size:#x}");
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    fn trapped_ranges(&self, region: u32) -> Vec<(u64, u64)> {
        self.eoi
            .trapped_registers()
            .into_iter()
            .filter(|c| c.region == region)
            .map(|c| {
                let s = c.offset & !(PAGE - 1);
                let e = (c.offset + u64::from(c.width)).div_ceil(PAGE) * PAGE;
                (s, e)
            })
            .collect()
    }

    /// Runs the device's pending work once; true while more is pending.
    /// The event loop's call: while the client has fd-less mappings the
    /// device's work runs on the connection thread only
    /// ([`Backend::run_pending_here`]), which can reach that memory.
    pub fn run_pending(&mut self) -> bool {
        if !self.msgs.is_empty() {
            return false;
        }
        self.run_pending_here()
    }

    /// Runs the device's pending work once on the thread that serves the
    /// connection; true while more is pending (or a message transfer is
    /// waiting).
    pub fn run_pending_here(&mut self) -> bool {
        if !self.work_pending {
            return false;
        }
        let mem = ClientMemory {
            table: &self.dma,
            msgs: &self.msgs,
            deferred: &self.deferred,
        };
        let mem = Counting::new(&mem, self.stats.dma());
        let more = self.dev.run_pending(&mem);
        let d = self.deferred_state();
        d.after_step();
        let waiting = d.has_needs();
        self.work_pending = more || waiting;
        self.work_pending
    }

    fn deferred_state(&mut self) -> &mut Deferred {
        self.deferred
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Device work the event loop runs (none while fd-less mappings exist:
    /// the connection thread runs it then).
    fn loop_has_work(&self) -> bool {
        self.work_pending && self.msgs.is_empty()
    }

    /// True when the client has mappings without an fd.
    pub fn has_message_maps(&self) -> bool {
        !self.msgs.is_empty()
    }

    /// The message transfers device steps are waiting for.
    pub fn take_transfers(&mut self) -> Vec<Transfer> {
        self.deferred_state().take_needs()
    }

    /// Checks a transfer against the fd-less mappings as they are now (the
    /// client may have unmapped the range meanwhile).
    pub fn transfer_still_mapped(&self, t: &Transfer) -> bool {
        match t {
            Transfer::Read { iova, len, access } => self.msgs.check(*iova, *len, *access).is_ok(),
            Transfer::Write { iova, data } => self
                .msgs
                .check(*iova, data.len(), crate::device::DmaAccess::Write)
                .is_ok(),
        }
    }

    /// Records the outcome of a transfer; the device's next step uses it.
    pub fn transfer_done(&mut self, t: Transfer, read: Option<Vec<u8>>, ok: bool) {
        let d = self.deferred_state();
        match t {
            Transfer::Read { iova, len, .. } => d.fetched(iova, len, read.filter(|_| ok)),
            Transfer::Write { iova, data } => d.stored(iova, data, ok),
        }
        self.work_pending = true;
    }

    /// Device poll fds (tokens as the device gave them).
    pub fn poll_fds(&self) -> Vec<(RawFd, u64)> {
        self.dev.poll_fds()
    }

    /// A device poll fd fired.
    pub fn on_poll_fd(&mut self, token: u64) {
        let mem = ClientMemory {
            table: &self.dma,
            msgs: &self.msgs,
            deferred: &self.deferred,
        };
        let mem = Counting::new(&mem, self.stats.dma());
        if let Err(e) = self.dev.on_poll_fd(token, &mem) {
            log::warn!("device poll fd {token:#x}: {e}");
        }
    }

    /// Logs the IRQ counters of every vector: the session's, and every
    /// session's in parentheses.
    pub fn log_counters(&mut self, when: &str) {
        self.stats.sample_irqs(self.dev.as_ref());
        for line in self.stats.irq_lines() {
            log::info!("{when}: {line}");
        }
    }

    /// Drops every DMA mapping: the device (IOMMU) first, then the memory
    /// table, so the host range stays mmapped until the device can no longer
    /// reach it (the contract `Device::dma_map` relies on; `DmaTable::clear`
    /// munmaps).
    fn unmap_all_dma(&mut self) {
        for r in self.dma.regions() {
            if let Err(e) = self.dev.dma_unmap(&r) {
                self.quarantine(&r, &e);
            }
        }
        self.dma.clear();
        self.msgs.clear();
        self.deferred_state().clear();
    }

    /// DMA_UNMAP of a range, as Linux VFIO type1 (`vfio_dma_do_unmap`)
    /// answers it: every mapping inside the range goes (fd mappings: the
    /// device first, as in [`Backend::unmap_all_dma`]); a range that would
    /// split a mapping is `EINVAL` and changes nothing; a range with no
    /// mapping at all succeeds (type1 reports 0 bytes unmapped). QEMU unmaps
    /// sections it never got mapped (docs/protocol.md, DMA_UNMAP).
    fn unmap_range(&mut self, start: u64, size: u64) -> Result<(), Errno> {
        let last = start
            .checked_add(size.checked_sub(1).ok_or(Errno::EINVAL)?)
            .ok_or(Errno::EINVAL)?;
        // Exclusive end; a range ending at 2^64 is bounded by u64::MAX,
        // which no mapping reaches (maps may not wrap).
        let end = last.saturating_add(1);
        let fd_maps = self.dma.regions_in(start, end);
        let msg_maps = self.msgs.regions_in(start, end);
        let splits = fd_maps
            .iter()
            .map(|r| (r.iova, r.size))
            .chain(msg_maps.iter().copied())
            .any(|(a, s)| a < start || a.saturating_add(s) > end);
        if splits {
            log::debug!("DMA unmap {start:#x}+{size:#x} would split a mapping: EINVAL");
            return Err(Errno::EINVAL);
        }
        if fd_maps.is_empty() && msg_maps.is_empty() {
            log::debug!("DMA unmap {start:#x}+{size:#x}: nothing mapped there (success)");
            return Ok(());
        }
        let mut result = Ok(());
        for r in fd_maps {
            if let Err(e) = self.dev.dma_unmap(&r) {
                // The IOMMU may still map it: never free it, and tell the client.
                self.quarantine(&r, &e);
                result = Err(errno_of(&e));
                continue;
            }
            if let Err(e) = self.dma.unmap(r.iova, r.size) {
                result = Err(Errno(e.errno()));
            }
        }
        if !msg_maps.is_empty() {
            for (a, s) in msg_maps {
                self.msgs.unmap(a, s);
            }
            // Nothing fetched from the range outlives it; a device step still
            // waiting for it runs again and now faults.
            self.deferred_state().clear();
            self.work_pending = true;
        }
        result
    }

    /// The device (IOMMU) failed to drop a mapping: it may still reach those
    /// pages, so they are never unmapped or reused in this process.
    fn quarantine(&mut self, r: &MappedRegion, e: &DeviceError) {
        log::error!(
            "device DMA unmap of {:#x}+{:#x} failed ({e}): keeping its memory mapped for \
             the life of the backend so the device cannot reach freed pages",
            r.iova,
            r.size
        );
        self.dma.quarantine(r.iova, r.size);
    }

    /// Cleanup after the client went away: DMA mappings, IRQ eventfds, reset.
    pub fn client_gone(&mut self) {
        self.unwatch_poll_fds();
        self.log_counters("client disconnected");
        self.stats.session_ended(self.dev.as_ref());
        self.unmap_all_dma();
        let info = self.dev.info();
        for index in 0..info.num_irqs {
            let Ok(ii) = self.dev.irq_info(index) else {
                continue;
            };
            if let Err(e) = self.dev.set_irqs(SetIrqs {
                index,
                start: 0,
                count: 0,
                action: IrqAction::Trigger,
                data: IrqData::None,
            }) {
                log::debug!("release IRQ {index} trigger: {e}");
            }
            if ii.flags & irq_flags::MASKABLE != 0 && ii.count >= 1 {
                if let Err(e) = self.dev.set_irqs(SetIrqs {
                    index,
                    start: 0,
                    count: 1,
                    action: IrqAction::Unmask,
                    data: IrqData::Eventfd(vec![None]),
                }) {
                    log::debug!("release IRQ {index} unmask eventfd: {e}");
                }
                // A level vector the dead client never EOI'd stays automasked;
                // the next client must start with every vector unmasked (as
                // Linux VFIO does on open), or it never sees that interrupt.
                if let Err(e) = self.dev.set_irqs(SetIrqs {
                    index,
                    start: 0,
                    count: ii.count,
                    action: IrqAction::Unmask,
                    data: IrqData::None,
                }) {
                    log::debug!("unmask IRQ {index} after disconnect: {e}");
                }
            }
        }
        if info.flags & device_flags::RESET != 0 {
            if let Err(e) = self.dev.reset() {
                log::warn!("device reset after disconnect failed: {e}");
            }
        }
        self.dma_exec = false;
        self.extension = false;
        self.dma.set_limit(self.max_dma_maps as usize);
        self.work_pending = false;
        self.watch_poll_fds();
    }

    /// The device-tree blob describing a platform/AMBA device (a minimal tree
    /// holding the device node, its clock and a GIC, at the default guest base
    /// of [`crate::dt::DtParams`]); empty for PCI devices, which need none.
    pub fn dtb(&self) -> Vec<u8> {
        let info = self.dev.info();
        if info.flags & device_flags::PCI != 0 || self.profile.compatible.is_empty() {
            return Vec::new();
        }
        let region_sizes = (0..info.num_regions)
            .map(|i| self.dev.region_info(i).map(|r| r.size).unwrap_or(0))
            .collect();
        let dev = crate::dt::DtDevice {
            region_sizes,
            num_irqs: info.num_irqs,
        };
        match crate::dt::device_tree(&self.profile, &dev, &crate::dt::DtParams::default())
            .and_then(|t| t.to_dtb())
        {
            Ok(b) => b,
            Err(e) => {
                log::warn!(
                    "cannot build the device tree for {}: {e}",
                    self.profile.name
                );
                Vec::new()
            }
        }
    }

    /// The extension's device description (compatibles, clocks, regions, IRQs, EOI).
    pub fn description(&self) -> DeviceDescription {
        let info = self.dev.info();
        let kind = if info.flags & device_flags::PCI != 0 {
            DeviceKind::Pci
        } else if info.flags & device_flags::AMBA != 0 {
            DeviceKind::Amba
        } else {
            DeviceKind::Platform
        };
        let regions = (0..info.num_regions)
            .map(|i| RegionDesc {
                index: i,
                name: self
                    .profile
                    .regions
                    .get(i as usize)
                    .cloned()
                    .or_else(|| self.dev.region_info(i).ok().map(|r| r.name))
                    .unwrap_or_else(|| format!("region{i}")),
                guest_base: None,
            })
            .collect();
        let irqs = (0..info.num_irqs)
            .map(|i| {
                let p = self.profile.irq(i);
                let rule = self.eoi.rules().iter().find(|r| r.index == i);
                let eoi = match rule {
                    None => EoiDesc {
                        policy: ext::EoiPolicy::None,
                        clear: None,
                    },
                    Some(r) => EoiDesc {
                        policy: r.policy.into(),
                        clear: r.clear.map(|c| ext::ClearReg {
                            region: c.region,
                            offset: c.offset,
                            width: c.width,
                            mode: c.mode,
                            bit: (c.mask.count_ones() == 1).then(|| c.mask.trailing_zeros()),
                        }),
                    },
                };
                IrqDesc {
                    index: i,
                    name: p.name.unwrap_or_else(|| format!("irq{i}")),
                    trigger: p.trigger.into(),
                    eoi,
                }
            })
            .collect();
        DeviceDescription {
            kind,
            compatible: self.profile.compatible.clone(),
            clocks: self
                .profile
                .clocks
                .iter()
                .map(|c| ClockDesc {
                    name: c.name.clone(),
                    frequency_hz: u64::from(c.frequency),
                })
                .collect(),
            regions,
            irqs,
            dt_node_name: self.profile.node_name.clone(),
        }
    }
}

/// Statistics hooks ([`crate::stats`]).
impl Backend {
    /// A client was accepted: its session's counters start from zero.
    pub fn session_started(&mut self, cred: &sandbox::PeerCred) {
        self.stats.session_started(self.dev.as_ref(), cred);
    }

    /// The session's error replies so far, as its connection counted them.
    pub fn record_errors(&mut self, errors: &std::collections::BTreeMap<i32, u64>) {
        self.stats.set_errors(errors);
    }

    /// Counts a refused connection (`busy`: EBUSY, else the peer policy).
    pub fn count_refused(&mut self, busy: bool) {
        if busy {
            self.stats.refused_busy();
        } else {
            self.stats.refused_policy();
        }
    }

    /// The statistics snapshot; `device` is `--device` as given.
    pub fn stats_snapshot(&mut self, device: &str) -> crate::stats::Snapshot {
        let about = crate::stats::SnapshotAbout {
            device: device.to_string(),
            profile: self.profile.name.clone(),
            regions: self
                .description()
                .regions
                .into_iter()
                .map(|r| r.name)
                .collect(),
        };
        self.stats.snapshot(self.dev.as_ref(), about)
    }
}

impl Backend {
    /// SET_IRQS proper (the poll fd registration is around it).
    fn set_irqs_inner(&mut self, req: &WireSetIrqs, fds: Vec<OwnedFd>) -> Result<(), Errno> {
        let info = self.dev.irq_info(req.index).map_err(|e| errno_of(&e))?;
        let action = match req.action().ok_or(Errno::EINVAL)? {
            msg::IrqAction::Mask => IrqAction::Mask,
            msg::IrqAction::Unmask => IrqAction::Unmask,
            msg::IrqAction::Trigger => IrqAction::Trigger,
        };
        let dtype = req.data_type().ok_or(Errno::EINVAL)?;
        let disable = action == IrqAction::Trigger && dtype == IrqDataType::None && req.count == 0;
        if !disable {
            let end = req.start.checked_add(req.count).ok_or(Errno::EINVAL)?;
            if req.count == 0 || end > info.count {
                return Err(Errno::EINVAL);
            }
        }
        if matches!(action, IrqAction::Mask | IrqAction::Unmask)
            && info.flags & irq_flags::MASKABLE == 0
        {
            return Err(Errno::EINVAL);
        }
        let data = match dtype {
            IrqDataType::None => IrqData::None,
            IrqDataType::Bool => {
                if req.bools.len() != req.count as usize {
                    return Err(Errno::EINVAL);
                }
                IrqData::Bool(req.bools.clone())
            }
            IrqDataType::Eventfd => {
                if fds.is_empty() {
                    IrqData::Eventfd((0..req.count).map(|_| None).collect())
                } else if fds.len() == req.count as usize {
                    IrqData::Eventfd(fds.into_iter().map(Some).collect())
                } else {
                    return Err(Errno::EINVAL);
                }
            }
        };
        self.dev
            .set_irqs(SetIrqs {
                index: req.index,
                start: req.start,
                count: req.count,
                action,
                data,
            })
            .map_err(|e| {
                log::debug!("SET_IRQS: {e}");
                errno_of(&e)
            })
    }
}

impl Handler for Backend {
    fn version(&mut self, _client: &Capabilities) -> Result<Capabilities, Errno> {
        let mut caps = Capabilities::from_limits(&Limits {
            max_dma_maps: self.max_dma_maps,
            ..Limits::default()
        });
        caps.write_multiple = true;
        caps.sidecar = Some(SidecarCaps {
            version: SIDECAR_VERSION,
            dma_exec: true,
            platform: true,
            eoi: true,
            exec_enforced: Some(self.is_model),
        });
        Ok(caps)
    }

    fn negotiated(&mut self, n: &Negotiated) {
        self.extension = n.extension();
        self.dma_exec = n.dma_exec();
        self.dma.set_limit(n.server.max_dma_maps as usize);
        log::info!(
            "client negotiated vfio-user {}.{}{}",
            n.major,
            n.minor,
            if self.extension {
                format!(
                    " with the vfio-sidecar extension (dma_exec {}, exec enforced {})",
                    n.dma_exec(),
                    n.exec_enforced()
                )
            } else {
                " (plain client: READ mappings are executable)".into()
            }
        );
    }

    fn dma_map(&mut self, req: &DmaMap, fd: Option<OwnedFd>) -> Result<(), Errno> {
        let p = req.prot(self.dma_exec);
        let prot = DmaProt {
            read: p.read,
            write: p.write,
            exec: p.exec,
        };
        if self.dma.len() + self.msgs.len() >= self.dma.limit() {
            return Err(Errno::ENOSPC);
        }
        let Some(fd) = fd else {
            // The client serves this range with DMA_READ/DMA_WRITE.
            self.msgs
                .map(req.address, req.size, prot, &self.dma)
                .map_err(|e| {
                    log::debug!("{e}");
                    Errno(e.errno())
                })?;
            log::debug!(
                "DMA map {:#x}+{:#x} without an fd (DMA_READ/DMA_WRITE) r{} w{} x{}",
                req.address,
                req.size,
                prot.read as u8,
                prot.write as u8,
                prot.exec as u8
            );
            return Ok(());
        };
        let end = req.address.saturating_add(req.size);
        if let Some(&(existing, _)) = self.msgs.regions_in(req.address, end).first() {
            log::debug!(
                "DMA map {:#x}+{:#x} overlaps the fd-less mapping at {existing:#x}",
                req.address,
                req.size
            );
            return Err(Errno::EEXIST);
        }
        let region = self
            .dma
            .map(req.address, req.size, fd, req.offset, prot)
            .map_err(|e| {
                log::debug!("{e}");
                Errno(e.errno())
            })?;
        if let Err(e) = self.dev.dma_map(&region) {
            log::warn!(
                "device refused DMA map {:#x}+{:#x}: {e}",
                region.iova,
                region.size
            );
            let _ = self.dma.unmap(region.iova, region.size);
            return Err(errno_of(&e));
        }
        log::debug!(
            "DMA map {:#x}+{:#x} r{} w{} x{}",
            region.iova,
            region.size,
            prot.read as u8,
            prot.write as u8,
            prot.exec as u8
        );
        Ok(())
    }

    fn dma_unmap(&mut self, req: &DmaUnmap) -> Result<(), Errno> {
        if req.is_all() {
            self.unmap_all_dma();
            return Ok(());
        }
        self.unmap_range(req.address, req.size)
    }

    fn dma_map_count(&self) -> Option<u32> {
        u32::try_from(self.dma.len() + self.msgs.len()).ok()
    }

    fn device_info(&mut self) -> Result<WireDeviceInfo, Errno> {
        let i = self.dev.info();
        Ok(WireDeviceInfo {
            argsz: WireDeviceInfo::SIZE as u32,
            flags: i.flags,
            num_regions: i.num_regions,
            num_irqs: i.num_irqs,
        })
    }

    fn region_info(&mut self, index: u32) -> Result<(WireRegionInfo, Option<RawFd>), Errno> {
        let r = self.dev.region_info(index).map_err(|e| errno_of(&e))?;
        let mut flags = r.flags & (region_flags::READ | region_flags::WRITE);
        let mut offset = 0;
        let mut sparse = None;
        let mut fd = None;
        if let Some(m) = r.mmap.as_ref().filter(|_| !self.no_mmap) {
            if r.flags & region_flags::MMAP != 0 {
                let areas = subtract_trapped(&m.areas, &self.trapped_ranges(index));
                if !areas.is_empty() {
                    flags |= region_flags::MMAP;
                    offset = m.fd_offset;
                    fd = Some(m.fd);
                    sparse = Some(
                        areas
                            .iter()
                            .map(|a| msg::SparseArea {
                                offset: a.offset,
                                size: a.size,
                            })
                            .collect(),
                    );
                }
            }
        }
        Ok((
            WireRegionInfo {
                index,
                flags,
                size: r.size,
                offset,
                sparse,
            },
            fd,
        ))
    }

    fn region_io_fds(
        &mut self,
        index: u32,
    ) -> Result<(Vec<msg::SubRegionIoFd>, Vec<RawFd>), Errno> {
        // A valid region has no ioeventfd/ioregionfd sub-regions here: an empty
        // list (as libvfio-user answers), so clients fall back to REGION_READ/
        // WRITE or mmap; an invalid index is EINVAL.
        self.dev.region_info(index).map_err(|e| errno_of(&e))?;
        Ok((Vec::new(), Vec::new()))
    }

    fn irq_info(&mut self, index: u32) -> Result<WireIrqInfo, Errno> {
        let i = self.dev.irq_info(index).map_err(|e| errno_of(&e))?;
        Ok(WireIrqInfo {
            argsz: WireIrqInfo::SIZE as u32,
            flags: i.flags,
            index,
            count: i.count,
        })
    }

    fn set_irqs(&mut self, req: &WireSetIrqs, fds: Vec<OwnedFd>) -> Result<(), Errno> {
        // May close or replace the device's poll fds (unmask eventfds).
        self.unwatch_poll_fds();
        // VFIO restarts a vector's counters when its trigger is set: sample
        // around it (crate::stats).
        self.stats.sample_index(self.dev.as_ref(), req.index);
        let r = self.set_irqs_inner(req, fds);
        self.stats.sample_index(self.dev.as_ref(), req.index);
        self.watch_poll_fds();
        r
    }

    fn region_read(&mut self, region: u32, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.check_access(region, offset, buf.len())?;
        self.stats.mmio(region, offset, buf.len(), false);
        let r = self.dev.region_read(region, offset, buf);
        Self::unmask(self.dev.as_mut(), self.eoi.after_read());
        r.map_err(|e| {
            log::debug!("region {region} read {offset:#x}: {e}");
            errno_of(&e)
        })
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        self.check_access(region, offset, data.len())?;
        self.stats.mmio(region, offset, data.len(), true);
        let mem = ClientMemory {
            table: &self.dma,
            msgs: &self.msgs,
            deferred: &self.deferred,
        };
        let mem = Counting::new(&mem, self.stats.dma());
        // What the write clears does not depend on the device's state: known
        // before it runs, with the clear-register IRQs' counts of the moment.
        let mut unmask = self.eoi.after_write(region, offset, data);
        let fired_before = self.clear_register_fires(&unmask);
        let r = self.dev.region_write(region, offset, data, &mem);
        self.work_pending = true;
        if r.is_ok() {
            // A clear-register IRQ that this very write raised (the PL330's
            // abort line when the DMAGO written to DBGCMD faults) has not been
            // seen by the guest: the write is no EOI of it.
            unmask.retain(|&i| {
                fired_before
                    .iter()
                    .find(|&&(j, _)| j == i)
                    .is_none_or(|&(_, n)| self.host_interrupts(i) == Some(n))
            });
            Self::unmask(self.dev.as_mut(), &unmask);
        } else {
            // A refused write still counts as an access for first-access.
            Self::unmask(self.dev.as_mut(), self.eoi.after_read());
        }
        r.map_err(|e| {
            log::debug!("region {region} write {offset:#x}: {e}");
            errno_of(&e)
        })
    }

    fn reset(&mut self) -> Result<(), Errno> {
        self.work_pending = false;
        self.deferred_state().clear();
        self.unwatch_poll_fds();
        // A reset may restart the device's counters: sample around it.
        self.stats.sample_irqs(self.dev.as_ref());
        let r = self.dev.reset().map_err(|e| errno_of(&e));
        self.stats.sample_irqs(self.dev.as_ref());
        self.watch_poll_fds();
        r
    }

    fn device_desc(&mut self) -> Result<(DeviceDescription, Vec<u8>), Errno> {
        Ok((self.description(), self.dtb()))
    }

    fn irq_stats(&mut self, index: u32, start: u32, count: u32) -> Result<Vec<IrqStats>, Errno> {
        let info = self.dev.irq_info(index).map_err(|e| errno_of(&e))?;
        let end = start.checked_add(count).ok_or(Errno::EINVAL)?;
        if end > info.count {
            return Err(Errno::EINVAL);
        }
        (start..end)
            .map(|v| {
                self.stats
                    .session_irq(self.dev.as_ref(), index, v)
                    .map(|c| IrqStats {
                        device_events: c.device_events,
                        host_interrupts: c.host_interrupts,
                        unmasks: c.unmasks,
                        refires: c.refires,
                    })
                    .ok_or(Errno::ENOTSUP)
            })
            .collect()
    }
}

/// Errors of `serve`. Each message names the fix.
#[derive(Debug, Error)]
pub enum ServeError {
    /// Profile/device/CLI level problem.
    #[error(transparent)]
    Cli(#[from] CliError),
    /// Profile inconsistency.
    #[error(transparent)]
    Profile(#[from] crate::profile::ProfileError),
    /// Socket, socket activation, peer policy, privilege drop or seccomp setup.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// `NOTIFY_SOCKET` (systemd Type=notify) cannot be used.
    #[error("systemd notification socket: {0}")]
    Notify(std::io::Error),
    /// `--stats-socket` names the main socket.
    #[error("--stats-socket {0} is the vfio-user socket: give the statistics socket its own path (e.g. the socket path plus .stats)")]
    StatsSocketSame(PathBuf),
    /// epoll/signalfd setup or wait failed.
    #[error("event loop: {0}")]
    EventLoop(std::io::Error),
}

/// Messages handled per epoll wake-up of a connection (the rest waits for
/// the next `epoll_wait`, level-triggered, after the other events).
const MESSAGES_PER_WAKEUP: usize = 64;

const TOKEN_LISTEN: u64 = 1;
const TOKEN_SIGNAL: u64 = 3;
const TOKEN_KICK: u64 = 5;
const TOKEN_DONE: u64 = 6;
const TOKEN_STATS: u64 = 7;
const TOKEN_DEVICE: u64 = 1 << 63;

/// How long SIGTERM (or a new client) waits for the connection thread to
/// finish cleaning up after the served client.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// The signals that shut the backend down cleanly (socket file removed):
/// SIGTERM and SIGINT as always, and the other signals an operator or a
/// supervisor sends whose default action would kill it without cleanup
/// (SIGHUP has no reload meaning).
const SHUTDOWN_SIGNALS: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// [`SHUTDOWN_SIGNALS`] as a signalfd (blocked in this thread and the
/// threads it starts afterwards).
struct SignalFd {
    fd: OwnedFd,
    old: libc::sigset_t,
}

impl SignalFd {
    fn new() -> std::io::Result<Self> {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        let mut old = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: the sigset functions initialise and modify the set we own; the
        // mask change only affects this thread; signalfd creates a new fd.
        unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            for sig in SHUTDOWN_SIGNALS {
                libc::sigaddset(set.as_mut_ptr(), sig);
            }
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), old.as_mut_ptr());
            if rc != 0 {
                return Err(std::io::Error::from_raw_os_error(rc));
            }
            let fd = libc::signalfd(-1, set.as_ptr(), libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
            if fd < 0 {
                let e = std::io::Error::last_os_error();
                libc::pthread_sigmask(libc::SIG_SETMASK, old.as_ptr(), std::ptr::null_mut());
                return Err(e);
            }
            Ok(SignalFd {
                fd: OwnedFd::from_raw_fd(fd),
                old: old.assume_init(),
            })
        }
    }

    fn read(&self) -> Option<u32> {
        let mut info = std::mem::MaybeUninit::<libc::signalfd_siginfo>::zeroed();
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading at most one siginfo into the buffer we own.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), info.as_mut_ptr().cast(), size) };
        if n as usize != size {
            return None;
        }
        // SAFETY: the kernel filled the whole structure.
        Some(unsafe { info.assume_init() }.ssi_signo)
    }
}

impl Drop for SignalFd {
    fn drop(&mut self) {
        // SAFETY: restores the thread's previous signal mask, saved in `old` by `SignalFd::new`.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut());
        }
    }
}

/// Removes the socket file we created when `serve` returns (not an inherited one).
struct SocketGuard(PathBuf);
impl Drop for SocketGuard {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => log::warn!(
                "cannot remove socket {}: {e} (after --user the service user needs write \
                 access to its directory; the next start removes it as stale)",
                self.0.display()
            ),
        }
    }
}

fn ctl(epoll: &Epoll, op: ControlOperation, fd: RawFd, token: u64) -> std::io::Result<()> {
    epoll.ctl(op, fd, EpollEvent::new(EventSet::IN, token))
}

/// `--stats-socket`: the statistics listener (non-blocking, same mode and
/// owner as the main socket) and the guard removing its file on exit.
fn open_stats_listener(
    args: &ServeArgs,
    main: &std::path::Path,
    opts: &SocketOpts,
) -> Result<Option<(std::os::unix::net::UnixListener, SocketGuard)>, ServeError> {
    let Some(path) = &args.stats_socket else {
        return Ok(None);
    };
    if path == main || path == &args.socket {
        return Err(ServeError::StatsSocketSame(path.clone()));
    }
    let l = sandbox::create_listener(path, opts)?;
    let guard = SocketGuard(path.clone());
    l.set_nonblocking(true).map_err(ServeError::EventLoop)?;
    log::info!("statistics on {}", path.display());
    Ok(Some((l, guard)))
}

/// Opens the device per `args` and builds the [`Backend`].
pub fn build_backend(args: &ServeArgs) -> Result<Backend, ServeError> {
    let set = load_profiles(args.profile.as_deref())?;
    let dev = open_device(&args.device, args.no_dmago_gate, args.no_mmap, args.iommu)?;
    let is_model = matches!(args.device, DeviceSpec::Model(_));
    let profile = match select_profile(&set, &args.device, args.profile_name.as_deref()) {
        Ok(p) => p,
        Err(CliError::NoProfile(what)) if !is_model && args.profile_name.is_none() => {
            log::warn!(
                "no device profile for {what}: serving it without DT data or clear \
                 registers (EOI by resample eventfd only); add one with --profile FILE"
            );
            Profile::generic()
        }
        Err(e) => return Err(e.into()),
    };
    let (region_sizes, num_irqs) = crate::device::shape(dev.as_ref());
    let profile = profile.for_irqs(num_irqs);
    profile
        .validate_for(&region_sizes, num_irqs)
        .map_err(CliError::from)?;
    let mut b = Backend::new(dev, profile, args.eoi, is_model, args.max_dma_maps)?;
    b.set_no_mmap(args.no_mmap);
    Ok(b)
}

/// The socket options of `args` (owner/group resolved to ids).
pub fn socket_opts(args: &ServeArgs) -> Result<SocketOpts, ServeError> {
    let owner = match &args.socket_owner {
        Some(u) => Some(sandbox::resolve_user(&UserSpec::from(u.as_str()))?.0),
        None => None,
    };
    let group = match &args.socket_group {
        Some(g) => Some(sandbox::resolve_group(&GroupSpec::from(g.as_str()))?),
        None => None,
    };
    Ok(SocketOpts {
        mode: args.socket_mode,
        owner,
        group,
    })
}

/// The SO_PEERCRED policy of `args` (names resolved to ids).
pub fn peer_policy(args: &ServeArgs) -> Result<PeerPolicy, ServeError> {
    let mut p = PeerPolicy::default();
    for u in &args.allow_uid {
        p.allow_uids
            .push(sandbox::resolve_user(&UserSpec::from(u.as_str()))?.0);
    }
    for g in &args.allow_gid {
        p.allow_gids
            .push(sandbox::resolve_group(&GroupSpec::from(g.as_str()))?);
    }
    Ok(p)
}

/// Env var of the debug-build test hook: with `1`, the loop makes a forbidden
/// syscall (`socket(2)`) when it accepts a connection, after the filter is on.
#[cfg(debug_assertions)]
pub const TEST_FORBIDDEN_SYSCALL_ENV: &str = "VFIO_SIDECAR_TEST_FORBIDDEN_SYSCALL";

#[cfg(debug_assertions)]
fn test_forbidden_syscall() {
    log::warn!("test hook {TEST_FORBIDDEN_SYSCALL_ENV}: calling socket(2) under the filter");
    // SAFETY: plain syscall with constant arguments; the fd, if any, is closed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        log::warn!("test hook: socket(2) returned {fd} (no seccomp kill)");
        if fd >= 0 {
            libc::close(fd);
        }
    }
}

/// Runs the server until a shutdown signal (SIGTERM, SIGINT, SIGHUP, SIGQUIT,
/// SIGUSR1, SIGUSR2; see the module docs).
///
/// Setup order (each step narrows what the next may do; see `crate::sandbox`):
/// open the device ([`build_backend`]); resolve `--socket-owner/-group`,
/// `--allow-uid/-gid`; get the listener ([`sandbox::open_listener`]: the
/// socket-activated one if systemd passed `LISTEN_FDS`, else a new socket with
/// `--socket-mode`); signalfd and epoll; `--user` ([`sandbox::drop_privileges`]);
/// the seccomp filter ([`sandbox::apply_seccomp`], unless `--seccomp off`); then
/// "listening on ..." is logged and the loop runs. After the filter the loop opens
/// no file and no socket; it logs to stderr only. Every accepted connection is
/// checked against the peer policy ([`sandbox::check_peer`]): a refused peer is
/// logged and closed before a single byte is read from it.
pub fn run_serve(args: ServeArgs) -> Result<(), ServeError> {
    // systemd readiness (Type=notify): the datagram socket is made now, while
    // the process has one thread and no filter; READY=1 follows "listening".
    let notifier = sandbox::Notifier::from_env().map_err(ServeError::Notify)?;
    // Before any thread exists: one malloc arena, whose trimming stays
    // inside the seccomp allow-list (see `sandbox::prepare_allocator`).
    sandbox::prepare_allocator();
    let mut backend = build_backend(&args)?;
    let opts = socket_opts(&args)?;
    let policy = peer_policy(&args)?;
    #[cfg(debug_assertions)]
    let forbidden_hook =
        std::env::var_os(TEST_FORBIDDEN_SYSCALL_ENV).is_some_and(|v| v.as_encoded_bytes() == b"1");
    let listen = sandbox::open_listener(&args.socket, &opts)?;
    if listen.activated && opts != SocketOpts::default() {
        log::warn!(
            "--socket-mode/--socket-owner/--socket-group ignored: the socket is \
             socket-activated (set SocketMode=/SocketUser=/SocketGroup= in the socket unit){}",
            if args.stats_socket.is_some() {
                "; they still apply to --stats-socket"
            } else {
                ""
            }
        );
    }
    let _guard = listen
        .remove_on_exit()
        .then(|| SocketGuard(listen.path.clone()));
    let listener = listen.listener;
    listener
        .set_nonblocking(true)
        .map_err(ServeError::EventLoop)?;
    let stats_listener = open_stats_listener(&args, &listen.path, &opts)?;
    let sig = SignalFd::new().map_err(ServeError::EventLoop)?;
    let epoll = Arc::new(Epoll::new().map_err(ServeError::EventLoop)?);
    let watch = |fd: RawFd, token: u64| {
        ctl(&epoll, ControlOperation::Add, fd, token).map_err(ServeError::EventLoop)
    };
    watch(listener.as_raw_fd(), TOKEN_LISTEN)?;
    watch(sig.fd.as_raw_fd(), TOKEN_SIGNAL)?;
    if let Some((l, _)) = &stats_listener {
        watch(l.as_raw_fd(), TOKEN_STATS)?;
    }
    if let Some(ug) = &args.user {
        let group = ug.group.as_deref().map(GroupSpec::from);
        let c = sandbox::drop_privileges(&UserSpec::from(ug.user.as_str()), group.as_ref())?;
        log::info!("running as uid {} gid {} ({ug})", c.uid, c.gid);
    }
    backend.attach_poller(Arc::clone(&epoll));
    let policies: BTreeSet<String> = backend
        .eoi()
        .rules()
        .iter()
        .map(|r| r.policy.to_string())
        .collect();
    let profile_name = backend.profile.name.clone();
    let shared = Arc::new(Shared {
        backend: Mutex::new(backend),
        kick: EventFd::new(libc::EFD_NONBLOCK).map_err(ServeError::EventLoop)?,
        done: EventFd::new(libc::EFD_NONBLOCK).map_err(ServeError::EventLoop)?,
    });
    watch(shared.kick.as_raw_fd(), TOKEN_KICK)?;
    watch(shared.done.as_raw_fd(), TOKEN_DONE)?;
    // The connection thread exists before the filter (which covers every
    // thread: TSYNC), so the filter need not allow creating threads; it
    // inherits the dropped privileges and the blocked SIGTERM/SIGINT.
    // It must have started before the filter goes on: thread start-up
    // (rseq, robust list, signal stack, name) makes calls the filter denies.
    let (to_conn, conns) = mpsc::channel::<ServerConnection>();
    let (started_tx, started) = mpsc::channel::<()>();
    {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("vfio-sidecar-conn".into())
            .spawn(move || {
                let _ = started_tx.send(());
                connection_thread(&conns, &shared)
            })
            .map_err(ServeError::EventLoop)?;
    }
    started.recv().map_err(|_| {
        ServeError::EventLoop(std::io::Error::other("the connection thread did not start"))
    })?;
    match args.seccomp.action() {
        Some(action) => sandbox::apply_seccomp(&SeccompProfile {
            action,
            ..SeccompProfile::default()
        })?,
        None => log::warn!("--seccomp off: no syscall filter (debugging only)"),
    }
    log::info!(
        "listening on {}{} (device {}, profile {}, EOI {}{})",
        listen.path.display(),
        if listen.activated {
            " (socket-activated)"
        } else {
            ""
        },
        args.device,
        profile_name,
        if policies.is_empty() {
            "none".to_string()
        } else {
            policies.into_iter().collect::<Vec<_>>().join("/")
        },
        if args.no_mmap { ", no mmap" } else { "" }
    );
    if let Some(n) = &notifier {
        let status = format!("READY=1\nSTATUS=listening on {}", listen.path.display());
        if let Err(e) = n.send(&status) {
            log::warn!("sd_notify READY=1: {e}");
        }
    }
    let limits = Limits {
        max_dma_maps: args.max_dma_maps,
        ..Limits::default()
    };
    let result = EventLoop {
        epoll: &epoll,
        listener: &listener,
        shared: &shared,
        to_conn,
        limits,
        policy: &policy,
        client: None,
        refused: RefusedPeers::default(),
        accept: AcceptBackoff::default(),
        stats: stats_listener
            .as_ref()
            .map(|l| (&l.0, args.device.to_string())),
        stats_accept: AcceptBackoff::default(),
        #[cfg(debug_assertions)]
        forbidden_hook,
    }
    .run(&sig);
    if let Some(n) = &notifier {
        let _ = n.send("STOPPING=1");
    }
    result
}

/// Growing pause of the listener after a failed `accept` (the fd table is
/// full, or memory is short): the pending connection stays in the backlog,
/// and the loop neither spins on the still-readable listener nor floods the
/// log. Reset by the next successful accept.
#[derive(Debug, Default)]
struct AcceptBackoff {
    /// The current pause (zero: none yet).
    pause: Duration,
    /// While paused: when to watch the listener again.
    until: Option<Instant>,
}

/// Connections accepted per wake-up of the loop at most.
const ACCEPTS_PER_WAKEUP: usize = 64;

/// First and longest pause of [`AcceptBackoff`].
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(10);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

impl AcceptBackoff {
    /// Starts (or doubles) the pause at `now`; returns its length.
    fn fail(&mut self, now: Instant) -> Duration {
        self.pause = (self.pause * 2).clamp(ACCEPT_PAUSE_MIN, ACCEPT_PAUSE_MAX);
        self.until = Some(now + self.pause);
        self.pause
    }

    fn succeed(&mut self) {
        self.pause = Duration::ZERO;
        self.until = None;
    }
}

/// The serve loop's state (see [`run_serve`]).
struct EventLoop<'a> {
    epoll: &'a Epoll,
    listener: &'a std::os::unix::net::UnixListener,
    shared: &'a Shared,
    to_conn: mpsc::Sender<ServerConnection>,
    limits: Limits,
    policy: &'a PeerPolicy,
    /// The served client: the slot is taken while it is `Some`; a signal
    /// shuts its socket down to end the connection thread's wait.
    client: Option<ShutdownHandle>,
    refused: RefusedPeers,
    accept: AcceptBackoff,
    /// `--stats-socket`: the statistics listener, and `--device` as given.
    stats: Option<(&'a std::os::unix::net::UnixListener, String)>,
    stats_accept: AcceptBackoff,
    #[cfg(debug_assertions)]
    forbidden_hook: bool,
}

impl EventLoop<'_> {
    fn run(&mut self, sig: &SignalFd) -> Result<(), ServeError> {
        let mut events = vec![EpollEvent::default(); 16];
        let mut listening = true;
        let mut stats_listening = self.stats.is_some();
        loop {
            let now = self.run_timers();
            let want = self.stats.is_some() && self.stats_accept.until.is_none();
            if want != stats_listening {
                self.watch_stats(want)?;
                stats_listening = want;
            }
            // Watch the listener unless accepting is paused (backoff) or
            // the refused peers' set is full.
            let want = self.accept.until.is_none() && !self.refused.is_full();
            if want != listening {
                self.watch_listener(want)?;
                listening = want;
            }
            let timeout = self.wait_timeout(now);
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(ServeError::EventLoop(e)),
            };
            // The slot-freed notification first: a client arriving in the
            // same wake-up as the previous one's cleanup is then accepted.
            let mut tokens: Vec<u64> = events.iter().take(n).map(|e| e.data()).collect();
            tokens.sort_by_key(|&t| t != TOKEN_DONE);
            for token in tokens {
                match token {
                    TOKEN_SIGNAL => {
                        self.shut_down(sig);
                        return Ok(());
                    }
                    TOKEN_LISTEN => self.accept_pending()?,
                    TOKEN_STATS => self.serve_stats(),
                    TOKEN_DONE => {
                        // The connection thread finished a client (cleaned up).
                        if self.shared.done.read().is_ok() {
                            self.client = None;
                        }
                    }
                    TOKEN_KICK => {
                        // Device work became pending: the loop's timeout sees it.
                        let _ = self.shared.kick.read();
                    }
                    t if t & TOKEN_DEVICE != 0 => {
                        lock(self.shared).on_poll_fd(t & !TOKEN_DEVICE);
                    }
                    t if t & TOKEN_REFUSED != 0 => self.refused.on_readable(self.epoll, t),
                    t => log::debug!("unexpected epoll token {t:#x}"),
                }
            }
            lock(self.shared).run_pending();
        }
    }

    /// Statistics peers: one snapshot each, written without blocking; a
    /// failing `accept` pauses the statistics listener (as
    /// [`AcceptBackoff`] does the main one).
    fn serve_stats(&mut self) {
        use crate::stats::Sent;
        let Some((listener, device)) = &self.stats else {
            return;
        };
        let mut doc = || crate::stats::encode(&lock(self.shared).stats_snapshot(device));
        for sent in crate::stats::serve_peers(listener, self.policy, &mut doc) {
            match sent {
                Sent::Refused => lock(self.shared).count_refused(false),
                Sent::AcceptFailed(errno) => {
                    let pause = self.stats_accept.fail(Instant::now());
                    vfio_sidecar_protocol::peer_warn!(
                        "statistics socket: accept: {}; not accepting statistics peers for {pause:?}",
                        std::io::Error::from_raw_os_error(errno)
                    );
                }
                Sent::Whole | Sent::Partial => self.stats_accept.succeed(),
            }
        }
    }

    fn watch_stats(&self, on: bool) -> Result<(), ServeError> {
        let Some((l, _)) = &self.stats else {
            return Ok(());
        };
        let fd = l.as_raw_fd();
        let r = if on {
            ctl(self.epoll, ControlOperation::Add, fd, TOKEN_STATS)
        } else {
            self.epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default())
        };
        r.map_err(ServeError::EventLoop)
    }

    /// Expires refused peers and ends an accept pause (main or statistics
    /// listener) that is due; the time it read (`None`: no timer runs, the
    /// clock was not read).
    fn run_timers(&mut self) -> Option<Instant> {
        if self.refused.is_empty()
            && self.accept.until.is_none()
            && self.stats_accept.until.is_none()
        {
            return None;
        }
        let now = Instant::now();
        self.refused.expire(self.epoll, now);
        for b in [&mut self.accept, &mut self.stats_accept] {
            if b.until.is_some_and(|t| t <= now) {
                b.until = None;
            }
        }
        Some(now)
    }

    /// The `epoll_wait` timeout (ms): 0 while device work is pending (it runs
    /// between events), else until the next timer, else forever (-1).
    fn wait_timeout(&self, now: Option<Instant>) -> i32 {
        if lock(self.shared).loop_has_work() {
            return 0;
        }
        let next = [
            self.refused.next_deadline(),
            self.accept.until,
            self.stats_accept.until,
        ]
        .into_iter()
        .flatten()
        .min();
        match (next, now) {
            (Some(t), Some(now)) => {
                let ms = t.saturating_duration_since(now).as_micros().div_ceil(1000);
                i32::try_from(ms).unwrap_or(i32::MAX)
            }
            _ => -1,
        }
    }

    fn watch_listener(&self, on: bool) -> Result<(), ServeError> {
        let fd = self.listener.as_raw_fd();
        let r = if on {
            ctl(self.epoll, ControlOperation::Add, fd, TOKEN_LISTEN)
        } else {
            self.epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default())
        };
        r.map_err(ServeError::EventLoop)
    }

    /// A terminating signal: the served client's socket is shut down (its
    /// cleanup awaited, bounded), refused peers get their EBUSY, and the
    /// loop ends (the socket file is removed by the caller's guard).
    fn shut_down(&mut self, sig: &SignalFd) {
        let signo = sig.read().unwrap_or(0);
        log::info!("signal {signo}: shutting down");
        self.refused.answer_all();
        match self.client.take() {
            Some(sock) => {
                // Ends the connection thread's wait (a receive, or a reply
                // write to a client that does not read); it cleans up
                // (client_gone) and reports on `done`.
                sock.shutdown();
                if !readable_within(&self.shared.done, SHUTDOWN_WAIT) {
                    log::warn!("client cleanup did not finish within {SHUTDOWN_WAIT:?}; exiting");
                }
            }
            None => lock(self.shared).log_counters("exit"),
        }
    }

    /// Accepts what the backlog holds, until it is empty, the refused set
    /// is full, `accept` fails (then backs off) or [`ACCEPTS_PER_WAKEUP`]
    /// were taken (a connect flood cannot starve signals and device fds:
    /// the listener stays readable for the next wake-up).
    fn accept_pending(&mut self) -> Result<(), ServeError> {
        let mut taken = 0;
        while taken < ACCEPTS_PER_WAKEUP && !self.refused.is_full() && self.accept.until.is_none() {
            taken += 1;
            match self.listener.accept() {
                Ok((stream, _)) => {
                    self.accept.succeed();
                    self.on_accepted(stream)?;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    let pause = self.accept.fail(Instant::now());
                    vfio_sidecar_protocol::peer_warn!(
                        "accept: {e}; not accepting connections for {pause:?}"
                    );
                }
            }
        }
        Ok(())
    }

    fn on_accepted(&mut self, stream: std::os::unix::net::UnixStream) -> Result<(), ServeError> {
        #[cfg(debug_assertions)]
        if self.forbidden_hook {
            test_forbidden_syscall();
        }
        let cred = match sandbox::check_peer(&stream, self.policy) {
            Ok(c) => c,
            Err(e) => {
                // Closed unread: the peer sees EOF (or ECONNRESET).
                vfio_sidecar_protocol::peer_warn!("connection refused: {e}");
                lock(self.shared).count_refused(false);
                return Ok(());
            }
        };
        // A served client that has hung up no longer holds the slot: end
        // its connection (the connection thread may be waiting to write
        // replies it will never read: that ends now, not at their
        // deadline), let its cleanup finish, then serve this one.
        if let Some(old) = self.client.as_ref().filter(|c| c.peer_hung_up()) {
            old.shutdown();
            if readable_within(&self.shared.done, SHUTDOWN_WAIT) {
                let _ = self.shared.done.read();
                self.client = None;
            }
        }
        if self.client.is_some() {
            vfio_sidecar_protocol::peer_warn!(
                "second client refused: one client at a time (it gets EBUSY)"
            );
            self.refused.add(self.epoll, stream, Instant::now());
            lock(self.shared).count_refused(true);
            return Ok(());
        }
        let mut conn = match ServerConnection::new(stream, self.limits) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("new connection: {e}");
                return Ok(());
            }
        };
        log::info!(
            "client connected (pid {} uid {} gid {})",
            cred.pid,
            cred.uid,
            cred.gid
        );
        // Served by the connection thread: one blocking receive per
        // request, no epoll in between. A batch limit bounds how long it
        // holds the backend for a client keeping its socket full; replies
        // are written after the lock is released.
        conn.set_batch_limit(MESSAGES_PER_WAKEUP);
        conn.set_deferred_replies(true);
        if let Err(e) = conn.set_blocking(true) {
            log::warn!("cannot serve client: {e}");
            return Ok(());
        }
        let sock = conn.shutdown_handle();
        lock(self.shared).session_started(&cred);
        if self.to_conn.send(conn).is_err() {
            return Err(ServeError::EventLoop(std::io::Error::other(
                "the connection thread is gone",
            )));
        }
        self.client = Some(sock);
        Ok(())
    }
}

/// What the event loop and the connection thread share.
struct Shared {
    backend: Mutex<Backend>,
    /// Written by the connection thread when device work becomes pending
    /// (wakes the loop, which then runs it between events).
    kick: EventFd,
    /// Written by the connection thread when its client is gone and cleaned up.
    done: EventFd,
}

/// Locks the backend. A panic while it was held ends the process (see
/// [`connection_thread`]), so a poisoned lock is never seen in practice;
/// if it were, the state is still the one the other thread left.
fn lock(shared: &Shared) -> MutexGuard<'_, Backend> {
    shared
        .backend
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Waits until `fd` is readable, at most `t`; false on timeout or error.
fn readable_within(fd: &EventFd, t: Duration) -> bool {
    // SAFETY: `fd` is a live EventFd borrowed for the duration of the wait.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd.as_raw_fd()) };
    vfio_sidecar_protocol::transport::wait_fd(fd, libc::POLLIN, Some(t)).unwrap_or(false)
}

/// Serves one client at a time, handed over by the event loop: blocking
/// receive, then the buffered requests under the backend lock (the trapped
/// MMIO fast path costs one `recvmsg` and one `send`, as a bare socket
/// ping-pong does). When the client goes: `client_gone` (DMA unmapped, IRQ
/// fds released, device reset) and a word on `done`. A panic here ends the
/// process, as it did when one thread did everything.
fn connection_thread(conns: &mpsc::Receiver<ServerConnection>, shared: &Shared) {
    let run = std::panic::AssertUnwindSafe(|| {
        while let Ok(mut conn) = conns.recv() {
            if let Err(e) = serve_connection(&mut conn, shared) {
                log::warn!("client connection: {e}");
            }
            // The loop's handle keeps the socket open until `done`: the peer
            // sees the end now.
            conn.shutdown();
            let mut b = lock(shared);
            b.record_errors(conn.error_replies());
            drop(conn);
            b.client_gone();
            drop(b);
            if let Err(e) = shared.done.write(1) {
                log::error!("cannot report the client's end to the loop: {e}");
            }
        }
    });
    if std::panic::catch_unwind(run).is_err() {
        log::error!("connection thread panicked: exiting");
        std::process::exit(101);
    }
}

fn serve_connection(
    conn: &mut ServerConnection,
    shared: &Shared,
) -> Result<(), vfio_sidecar_protocol::ServerError> {
    // With fd-less mappings the device's pending work runs on this thread
    // (it may need DMA_READ/DMA_WRITE): no blocking wait while there is some
    // and the client is quiet. Only this thread changes that state, so it is
    // taken from the last time the backend was locked here.
    let mut busy = false;
    loop {
        if busy
            && !conn.has_buffered_message()
            && !vfio_sidecar_protocol::transport::wait_fd(
                std::os::fd::AsFd::as_fd(conn),
                libc::POLLIN,
                Some(std::time::Duration::ZERO),
            )
            .map_err(|e| {
                vfio_sidecar_protocol::ServerError::Transport(
                    vfio_sidecar_protocol::TransportError::Io(e),
                )
            })?
        {
            let mut b = lock(shared);
            b.run_pending_here();
            if serve_transfers(conn, &mut b) == ConnStatus::Closed {
                return Ok(());
            }
            busy = b.work_pending && b.has_message_maps();
            continue;
        }
        if conn.receive_blocking()? == ConnStatus::Closed {
            return Ok(());
        }
        let mut b = lock(shared);
        let was_pending = b.work_pending;
        let status = conn.handle_buffered(&mut *b)?;
        b.record_errors(conn.error_replies());
        debug_assert!(
            b.poll_fds_in_sync(),
            "device poll fds changed outside SET_IRQS/reset/cleanup"
        );
        // One budget of device work now, as after every batch; the loop
        // runs the rest between its events (this thread does while the
        // client has fd-less mappings).
        if status == ConnStatus::Open {
            b.run_pending_here();
        }
        drop(b);
        // The batch's replies (deferred) go out with the device lock
        // released, all of them within one deadline: a client that reads
        // slowly or not at all stalls only itself, and a signal's shutdown
        // of the socket ends the write at once.
        if conn.flush_replies()? == ConnStatus::Closed || status == ConnStatus::Closed {
            return Ok(());
        }
        // Then the DMA_READ/DMA_WRITE exchanges the device waits for (fd-less
        // mappings; none otherwise), each bounded by the DMA timeout.
        let mut b = lock(shared);
        if serve_transfers(conn, &mut b) == ConnStatus::Closed {
            return Ok(());
        }
        let pending = b.loop_has_work();
        busy = b.work_pending && b.has_message_maps();
        drop(b);
        if pending && !was_pending {
            if let Err(e) = shared.kick.write(1) {
                log::warn!("cannot wake the event loop for device work: {e}");
            }
        }
    }
}

/// Rounds of message transfers and device retries per call of
/// [`serve_transfers`]; more stays pending for the next.
const TRANSFER_ROUNDS: usize = 64;

/// Sends the DMA_READ/DMA_WRITE requests device steps wait for (serving the
/// client's own requests while each reply is awaited), records the results
/// and runs the device again, until a step waits for nothing more. A
/// transfer the client does not serve becomes a DMA fault of the retried
/// access. `Closed`: the client went away meanwhile.
fn serve_transfers(conn: &mut ServerConnection, b: &mut Backend) -> ConnStatus {
    for _ in 0..TRANSFER_ROUNDS {
        let transfers = b.take_transfers();
        if transfers.is_empty() {
            return ConnStatus::Open;
        }
        for t in transfers {
            if !b.transfer_still_mapped(&t) {
                b.transfer_done(t, None, false);
                continue;
            }
            let r = match &t {
                Transfer::Read { iova, len, .. } => {
                    let mut buf = vec![0u8; *len];
                    conn.dma_read(&mut *b, *iova, &mut buf).map(|()| Some(buf))
                }
                Transfer::Write { iova, data } => {
                    conn.dma_write(&mut *b, *iova, data).map(|()| None)
                }
            };
            match r {
                Ok(data) => b.transfer_done(t, data, true),
                Err(e) => {
                    log::warn!("device DMA to client memory mapped without an fd failed: {e}");
                    let fatal = e.is_fatal();
                    b.transfer_done(t, None, false);
                    if fatal {
                        return ConnStatus::Closed;
                    }
                }
            }
        }
        b.run_pending_here();
    }
    ConnStatus::Open
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn scratch_backend(toml: Option<&str>, policy: Option<EoiPolicy>) -> Backend {
        let mut set = crate::profile::ProfileSet::default();
        if let Some(t) = toml {
            set.add_toml(t, "test.toml").unwrap();
        }
        let profile = set.by_name("scratch").unwrap().clone();
        let dev = crate::model::create(&"scratch".parse().unwrap(), false).unwrap();
        Backend::new(Box::new(dev), profile, policy, true, 16).unwrap()
    }

    #[test]
    fn accept_backoff_grows_to_its_cap_and_resets() {
        let mut b = AcceptBackoff::default();
        let t = Instant::now();
        let pauses: Vec<Duration> = (0..10).map(|_| b.fail(t)).collect();
        assert_eq!(pauses[0], ACCEPT_PAUSE_MIN);
        assert_eq!(pauses[1], ACCEPT_PAUSE_MIN * 2);
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*pauses.last().unwrap(), ACCEPT_PAUSE_MAX);
        assert_eq!(b.until, Some(t + ACCEPT_PAUSE_MAX));
        b.succeed();
        assert_eq!(b.until, None);
        assert_eq!(b.fail(t), ACCEPT_PAUSE_MIN);
    }

    #[test]
    fn clear_register_page_is_never_mmappable() {
        // Default scratch profile: INTCLR in page 0, the mmap area is page 1.
        let mut b = scratch_backend(None, None);
        let (info, fd) = b.region_info(0).unwrap();
        assert!(fd.is_some() && info.flags & region_flags::MMAP != 0);
        // A profile whose clear register sits in page 1: nothing left to mmap.
        let toml = "[[device]]\nname = \"scratch\"\ncompatible = [\"x\"]\n\
                    default-eoi = \"clear-register\"\n\
                    clear = { region = 0, offset = 0x1010, mode = \"w1c\" }\n";
        let mut b = scratch_backend(Some(toml), None);
        let (info, fd) = b.region_info(0).unwrap();
        assert!(fd.is_none());
        assert_eq!(info.flags & region_flags::MMAP, 0);
        assert!(info.sparse.is_none());
        // Under resample the register needs no trap: the page is offered again.
        let mut b = scratch_backend(Some(toml), Some(EoiPolicy::Resample));
        let (_, fd) = b.region_info(0).unwrap();
        assert!(fd.is_some());
    }

    #[test]
    fn vector_left_masked_by_a_dead_client_is_unmasked_for_the_next() {
        use std::io::Read;
        use std::os::fd::FromRawFd;
        let set = crate::profile::ProfileSet::default();
        let profile = set.by_name("pl330").unwrap().clone();
        let dev = crate::model::create(&"pl330".parse().unwrap(), false).unwrap();
        let mut b = Backend::new(Box::new(dev), profile, None, true, 16).unwrap();
        let eventfd = || {
            // SAFETY: eventfd(2) returns a new fd, owned here.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            assert!(fd >= 0);
            // SAFETY: fresh fd.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let reader = std::fs::File::from(fd.try_clone().unwrap());
            (fd, reader)
        };
        let count = |mut f: &std::fs::File| {
            let mut v = [0u8; 8];
            match f.read(&mut v) {
                Ok(8) => u64::from_ne_bytes(v),
                _ => 0,
            }
        };
        let (d0, d1) = crate::model::pl330::asm::dbginst(
            crate::model::pl330::insn::Insn::Sev { event: 0 },
            None,
        );
        let raise = |b: &mut Backend| {
            b.region_write(0, 0x20, &1u32.to_le_bytes()).unwrap();
            b.region_write(0, 0xd08, &d0.to_le_bytes()).unwrap();
            b.region_write(0, 0xd0c, &d1.to_le_bytes()).unwrap();
            b.region_write(0, 0xd04, &0u32.to_le_bytes()).unwrap();
        };
        for client in 0..2 {
            let (t, r) = eventfd();
            let req = WireSetIrqs::new(
                0,
                msg::IrqAction::Trigger,
                IrqDataType::Eventfd,
                0,
                1,
                Vec::new(),
            );
            b.set_irqs(&req, vec![t]).unwrap();
            raise(&mut b);
            assert_eq!(count(&r), 1, "client {client}: interrupt");
            // The client dies without writing INTCLR: the vector is automasked.
            b.client_gone();
        }
    }

    #[test]
    fn request_validation() {
        let mut b = scratch_backend(None, None);
        let mut buf = [0u8; 4];
        assert_eq!(b.region_read(0, 0x2000, &mut buf), Err(Errno::EINVAL));
        assert_eq!(b.region_read(0, 0x1ffe, &mut buf), Err(Errno::EINVAL));
        assert_eq!(b.region_read(0, 0, &mut []), Err(Errno::EINVAL));
        assert_eq!(b.region_read(1, 0, &mut buf), Err(Errno::EINVAL));
        assert_eq!(b.region_read(0, u64::MAX - 1, &mut buf), Err(Errno::EINVAL));
        b.region_read(0, 0, &mut buf).unwrap();
        assert_eq!(u32::from_le_bytes(buf), crate::model::scratch::SCRATCH_ID);
        // SET_IRQS beyond the vector count, or on an unknown index.
        let req = WireSetIrqs::new(0, msg::IrqAction::Mask, IrqDataType::None, 0, 2, Vec::new());
        assert_eq!(b.set_irqs(&req, Vec::new()), Err(Errno::EINVAL));
        let req = WireSetIrqs::new(3, msg::IrqAction::Mask, IrqDataType::None, 0, 1, Vec::new());
        assert_eq!(b.set_irqs(&req, Vec::new()), Err(Errno::EINVAL));
        // Trigger disable (count 0, DATA_NONE) is valid.
        let req = WireSetIrqs::new(
            0,
            msg::IrqAction::Trigger,
            IrqDataType::None,
            0,
            0,
            Vec::new(),
        );
        b.set_irqs(&req, Vec::new()).unwrap();
        // DMA_MAP without an fd: a range served by messages; no overlap with
        // it (with or without an fd).
        let m = DmaMap::new(msg::DMA_MAP_FLAG_READ, 0, 0x1000, 0x2000);
        b.dma_map(&m, None).unwrap();
        assert!(b.has_message_maps());
        assert_eq!(b.dma_map_count(), Some(1));
        let m2 = DmaMap::new(msg::DMA_MAP_FLAG_READ, 0, 0x2000, 0x1000);
        assert_eq!(b.dma_map(&m2, None), Err(Errno::EEXIST));
        let fd = crate::dma::memfd("overlap", 0x1000).unwrap();
        assert_eq!(b.dma_map(&m2, Some(fd)), Err(Errno::EEXIST));
        // Unmap as Linux VFIO type1: a range splitting a mapping is EINVAL,
        // a range with nothing mapped succeeds, a covering range removes
        // every mapping inside it.
        assert_eq!(
            b.dma_unmap(&DmaUnmap::new(0, 0x1000, 0x1000)),
            Err(Errno::EINVAL)
        );
        b.dma_unmap(&DmaUnmap::new(0, 0x10_0000, 0x1000)).unwrap();
        assert_eq!(b.dma_map_count(), Some(1));
        let fd = crate::dma::memfd("second", 0x1000).unwrap();
        let m3 = DmaMap::new(msg::DMA_MAP_FLAG_READ, 0, 0x4000, 0x1000);
        b.dma_map(&m3, Some(fd)).unwrap();
        assert_eq!(b.dma_map_count(), Some(2));
        // A range ending at the top of the 64-bit space (QEMU's second half
        // of a 2^64 vIOMMU unmap) is valid.
        let top = DmaUnmap::new(0, 1 << 63, 1 << 63);
        top.is_valid().unwrap();
        b.dma_unmap(&top).unwrap();
        b.dma_unmap(&DmaUnmap::new(0, 0, 0x10_0000)).unwrap();
        assert_eq!(b.dma_map_count(), Some(0));
        assert!(!b.has_message_maps());
        // Stats need a valid range.
        assert!(b.irq_stats(0, 0, 1).is_ok());
        assert_eq!(b.irq_stats(0, 1, 1), Err(Errno::EINVAL));
        let d = b.description();
        assert_eq!(d.kind, DeviceKind::Platform);
        assert_eq!(d.irqs[0].eoi.policy, ext::EoiPolicy::ClearRegister);
    }

    #[test]
    fn trapped_pages_are_cut_out() {
        let areas = [SparseArea {
            offset: 0,
            size: 0x4000,
        }];
        let out = subtract_trapped(&areas, &[(0x1000, 0x2000)]);
        assert_eq!(
            out,
            vec![
                SparseArea {
                    offset: 0,
                    size: 0x1000
                },
                SparseArea {
                    offset: 0x2000,
                    size: 0x2000
                }
            ]
        );
        assert!(subtract_trapped(&areas, &[(0, 0x4000)]).is_empty());
        assert_eq!(
            subtract_trapped(&areas, &[(0x8000, 0x9000)]),
            areas.to_vec()
        );
    }

    use crate::device::{DeviceInfo, IrqInfo, RegionInfo};

    /// Is `[addr, addr + size)` inside one mapping of this process?
    fn is_mapped(addr: u64, size: u64) -> bool {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines().any(|l| {
            let range = l.split_whitespace().next().unwrap_or("");
            let Some((s, e)) = range.split_once('-') else {
                return false;
            };
            let (s, e) = (
                u64::from_str_radix(s, 16).unwrap(),
                u64::from_str_radix(e, 16).unwrap(),
            );
            s <= addr && addr + size <= e
        })
    }

    /// A device that records, at each `dma_unmap`, whether the host range was
    /// still mapped (the `Device::dma_unmap` contract: "about to be removed").
    struct UnmapProbe {
        inner: Box<dyn Device>,
        seen: Seen,
        /// Make every `dma_unmap` fail, as a refused IOMMU unmap would.
        fail_unmap: bool,
    }

    impl Device for UnmapProbe {
        fn info(&self) -> DeviceInfo {
            self.inner.info()
        }
        fn region_info(&self, i: u32) -> Result<RegionInfo, DeviceError> {
            self.inner.region_info(i)
        }
        fn irq_info(&self, i: u32) -> Result<IrqInfo, DeviceError> {
            self.inner.irq_info(i)
        }
        fn region_read(&mut self, i: u32, o: u64, d: &mut [u8]) -> Result<(), DeviceError> {
            self.inner.region_read(i, o, d)
        }
        fn region_write(
            &mut self,
            i: u32,
            o: u64,
            d: &[u8],
            m: &dyn crate::device::DmaMemory,
        ) -> Result<(), DeviceError> {
            self.inner.region_write(i, o, d, m)
        }
        fn dma_map(&mut self, r: &MappedRegion) -> Result<(), DeviceError> {
            self.inner.dma_map(r)
        }
        fn dma_unmap(&mut self, r: &MappedRegion) -> Result<(), DeviceError> {
            self.seen
                .lock()
                .unwrap()
                .push(is_mapped(r.host_addr, r.size));
            if self.fail_unmap {
                return Err(DeviceError::Io(std::io::Error::from_raw_os_error(
                    libc::EIO,
                )));
            }
            self.inner.dma_unmap(r)
        }
        fn set_irqs(&mut self, req: SetIrqs) -> Result<(), DeviceError> {
            self.inner.set_irqs(req)
        }
        fn unmask_irq(&mut self, i: u32, v: u32) -> Result<(), DeviceError> {
            self.inner.unmask_irq(i, v)
        }
        fn reset(&mut self) -> Result<(), DeviceError> {
            self.inner.reset()
        }
        fn irq_counters(&self, i: u32, v: u32) -> Option<crate::device::IrqCounters> {
            self.inner.irq_counters(i, v)
        }
    }

    type Seen = std::sync::Arc<std::sync::Mutex<Vec<bool>>>;

    /// A backend over the scratch model wrapped in an [`UnmapProbe`].
    fn probed_backend(fail_unmap: bool) -> (Backend, Seen) {
        let seen = Seen::default();
        let set = crate::profile::ProfileSet::default();
        let profile = set.by_name("scratch").unwrap().clone();
        let inner = crate::model::create(&"scratch".parse().unwrap(), false).unwrap();
        let dev = UnmapProbe {
            inner: Box::new(inner),
            seen: seen.clone(),
            fail_unmap,
        };
        let b = Backend::new(Box::new(dev), profile, None, true, 16).unwrap();
        (b, seen)
    }

    #[test]
    fn device_unmaps_before_the_host_range_goes() {
        let (mut b, seen) = probed_backend(false);
        let rw = msg::DMA_MAP_FLAG_READ | msg::DMA_MAP_FLAG_WRITE;
        let map = |b: &mut Backend, iova: u64| {
            let fd = crate::dma::memfd("unmap-order", 0x2000).unwrap();
            b.dma_map(&DmaMap::new(rw, 0, iova, 0x2000), Some(fd))
                .unwrap();
        };
        // Single unmap, unmap-all, and a client disconnect.
        map(&mut b, 0x10000);
        b.dma_unmap(&DmaUnmap::new(0, 0x10000, 0x2000)).unwrap();
        map(&mut b, 0x10000);
        map(&mut b, 0x20000);
        b.dma_unmap(&DmaUnmap::new(msg::DMA_UNMAP_FLAG_ALL, 0, 0))
            .unwrap();
        assert_eq!(b.dma_len(), 0);
        map(&mut b, 0x30000);
        b.client_gone();
        assert_eq!(b.dma_len(), 0);
        assert_eq!(*seen.lock().unwrap(), vec![true; 4]);
    }

    #[test]
    fn mapping_the_device_failed_to_drop_is_never_freed() {
        let (mut b, _seen) = probed_backend(true);
        let rw = msg::DMA_MAP_FLAG_READ | msg::DMA_MAP_FLAG_WRITE;
        let map = |b: &mut Backend, iova: u64| -> u64 {
            let fd = crate::dma::memfd("quarantine", 0x2000).unwrap();
            b.dma_map(&DmaMap::new(rw, 0, iova, 0x2000), Some(fd))
                .unwrap();
            b.dma.get_exact(iova, 0x2000).unwrap().host_addr
        };
        // A single unmap the device refuses: the client hears the errno, the
        // entry leaves the table, the host pages stay mapped.
        let h1 = map(&mut b, 0x10000);
        let e = b.dma_unmap(&DmaUnmap::new(0, 0x10000, 0x2000)).unwrap_err();
        assert_eq!(e, Errno(libc::EIO));
        assert_eq!(b.dma_len(), 0);
        assert!(is_mapped(h1, 0x2000), "quarantined pages were unmapped");
        // The same on disconnect.
        let h2 = map(&mut b, 0x20000);
        b.client_gone();
        assert_eq!(b.dma_len(), 0);
        assert!(is_mapped(h2, 0x2000), "quarantined pages were unmapped");
    }
}
