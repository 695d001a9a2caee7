//! Statistics of the served device: per client session and for the process.
//!
//! * **What is counted** ([`Tally`]): IRQ/EOI counters per vector (device
//!   events, host interrupts, unmasks, re-fires; read from the device and
//!   split into per-session deltas), trapped MMIO accesses per region and per
//!   4 KiB page (reads/writes, bytes), DMA by a model's engine (bytes and
//!   accesses read/written, faults), and the error replies the client got, by
//!   errno.
//! * **Sessions** ([`Stats`]): a session starts when a client is accepted and
//!   ends when it is gone; its counters start from zero. Process totals are
//!   the ended sessions' counters plus the current one's (`ended + current`),
//!   so they only grow. SIDECAR_GET_IRQ_STATS answers the session's counters.
//! * **The endpoint** ([`serve_peers`]): `serve --stats-socket PATH` listens on
//!   a second Unix socket; every accepted peer gets one JSON [`Snapshot`]
//!   written with `MSG_DONTWAIT` and is closed. Nothing is read from it, so a
//!   peer that never reads (or sends) cannot stall the event loop: a write
//!   that does not fit at once is abandoned (the peer sees a truncated
//!   document and `probe --stats` says so).
//! * **Bounds**: IRQ vectors sampled per IRQ index ([`MAX_VECTORS`]), pages
//!   tracked per tally ([`MAX_PAGES`], the rest summed as "other pages"), and
//!   MMIO counted only for accesses inside an existing region, so a hostile
//!   client cannot grow the tables or the snapshot.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::device::{Device, DmaAccess, DmaFault, DmaMemory, IrqCounters};
use crate::sandbox::{self, PeerCred, PeerPolicy};

/// Format version of [`Snapshot`] (its `version` field).
pub const SNAPSHOT_VERSION: u32 = 1;

/// Vectors per IRQ index whose counters are sampled for the snapshot (MSI-X
/// may have thousands; VFIO reads `/proc/interrupts` per vector).
pub const MAX_VECTORS: u32 = 32;

/// Pages tracked per tally; accesses to further pages count in `other_pages`.
pub const MAX_PAGES: usize = 64;

/// Statistics peers served per wake-up of the event loop (level-triggered
/// epoll brings the rest on the next turn, after the other events).
pub const PEERS_PER_WAKEUP: usize = 16;

/// Page size of the per-page MMIO counters.
const PAGE: u64 = 4096;

/// Reads and writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rw {
    /// Read accesses.
    pub reads: u64,
    /// Write accesses.
    pub writes: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
}

impl Rw {
    fn add(&mut self, o: &Rw) {
        self.reads += o.reads;
        self.writes += o.writes;
        self.read_bytes += o.read_bytes;
        self.write_bytes += o.write_bytes;
    }

    fn count(&mut self, write: bool, len: u64) {
        if write {
            self.writes += 1;
            self.write_bytes += len;
        } else {
            self.reads += 1;
            self.read_bytes += len;
        }
    }
}

/// DMA done by a model's engine through the client's mappings (live: the
/// device reaches it through `&dyn DmaMemory`, hence cells).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DmaTally {
    /// Bytes the device read (instruction fetches and data loads).
    pub read_bytes: Cell<u64>,
    /// Bytes the device wrote.
    pub write_bytes: Cell<u64>,
    /// Read accesses that completed.
    pub reads: Cell<u64>,
    /// Write accesses that completed.
    pub writes: Cell<u64>,
    /// Accesses that faulted (unmapped, not permitted, or not served by the
    /// client of an fd-less mapping). A stall waiting for DMA_READ/DMA_WRITE
    /// is not a fault; the retried access counts once.
    pub faults: Cell<u64>,
}

fn bump(c: &Cell<u64>, n: u64) {
    c.set(c.get().saturating_add(n));
}

impl DmaTally {
    fn add(&self, o: &DmaTally) {
        bump(&self.read_bytes, o.read_bytes.get());
        bump(&self.write_bytes, o.write_bytes.get());
        bump(&self.reads, o.reads.get());
        bump(&self.writes, o.writes.get());
        bump(&self.faults, o.faults.get());
    }

    fn record(&self, write: bool, len: usize, r: &Result<(), DmaFault>) {
        match r {
            Ok(()) if write => {
                bump(&self.writes, 1);
                bump(&self.write_bytes, len as u64);
            }
            Ok(()) => {
                bump(&self.reads, 1);
                bump(&self.read_bytes, len as u64);
            }
            Err(f) if f.is_deferred() => {}
            Err(_) => bump(&self.faults, 1),
        }
    }
}

/// A [`DmaMemory`] that counts what passes through it into a [`DmaTally`].
pub struct Counting<'a> {
    inner: &'a dyn DmaMemory,
    tally: &'a DmaTally,
}

impl std::fmt::Debug for Counting<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counting")
            .field("tally", self.tally)
            .finish()
    }
}

impl<'a> Counting<'a> {
    /// Counts the accesses to `inner` in `tally`.
    pub fn new(inner: &'a dyn DmaMemory, tally: &'a DmaTally) -> Self {
        Counting { inner, tally }
    }
}

impl DmaMemory for Counting<'_> {
    fn dma_read(&self, iova: u64, buf: &mut [u8], access: DmaAccess) -> Result<(), DmaFault> {
        let r = self.inner.dma_read(iova, buf, access);
        self.tally.record(false, buf.len(), &r);
        r
    }

    fn dma_write(&self, iova: u64, data: &[u8]) -> Result<(), DmaFault> {
        let r = self.inner.dma_write(iova, data);
        self.tally.record(true, data.len(), &r);
        r
    }
}

/// Counters of one IRQ vector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IrqRow {
    /// IRQ index.
    pub index: u32,
    /// Vector in the index.
    pub vector: u32,
    /// Device events (rising edges of the line, or device-side events).
    pub device_events: u64,
    /// Host interrupts (trigger eventfd signals; VFIO: `/proc/interrupts`).
    pub host_interrupts: u64,
    /// Unmasks done (EOI).
    pub unmasks: u64,
    /// Unmasks that found the line still asserted and fired again.
    pub refires: u64,
}

/// MMIO counters of one region.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionRow {
    /// Region index.
    pub region: u32,
    /// Accesses and bytes.
    #[serde(flatten)]
    pub rw: Rw,
}

/// MMIO counters of one 4 KiB page of a region.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRow {
    /// Region index.
    pub region: u32,
    /// Offset of the page in the region.
    pub offset: u64,
    /// Accesses and bytes.
    #[serde(flatten)]
    pub rw: Rw,
}

/// Error replies of one errno.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorRow {
    /// The errno value.
    pub errno: i32,
    /// Its name (EINVAL, ...).
    pub name: String,
    /// Error replies sent with it.
    pub count: u64,
}

/// One set of counters as the snapshot carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Per IRQ vector.
    pub irqs: Vec<IrqRow>,
    /// Trapped MMIO accesses per region.
    pub mmio: Vec<RegionRow>,
    /// Trapped MMIO accesses per page (at most [`MAX_PAGES`] pages).
    pub mmio_pages: Vec<PageRow>,
    /// Accesses to pages beyond the first [`MAX_PAGES`] seen.
    pub mmio_other_pages: Rw,
    /// DMA by the device (models; a VFIO device's DMA bypasses the backend).
    pub dma: DmaTally,
    /// Error replies by errno.
    pub errors: Vec<ErrorRow>,
}

/// The counters of one session (or of ended sessions, summed).
#[derive(Debug, Clone, Default)]
pub struct Tally {
    irqs: BTreeMap<(u32, u32), IrqCounters>,
    mmio: BTreeMap<u32, Rw>,
    pages: BTreeMap<(u32, u64), Rw>,
    other_pages: Rw,
    dma: DmaTally,
    errors: BTreeMap<i32, u64>,
}

fn add_irq(a: &mut IrqCounters, b: &IrqCounters) {
    a.device_events += b.device_events;
    a.host_interrupts += b.host_interrupts;
    a.unmasks += b.unmasks;
    a.refires += b.refires;
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        for (k, v) in &o.irqs {
            add_irq(self.irqs.entry(*k).or_default(), v);
        }
        for (k, v) in &o.mmio {
            self.mmio.entry(*k).or_default().add(v);
        }
        for (k, v) in &o.pages {
            self.page(*k).add(v);
        }
        self.other_pages.add(&o.other_pages);
        self.dma.add(&o.dma);
        for (k, v) in &o.errors {
            *self.errors.entry(*k).or_default() += v;
        }
    }

    /// The counters of a page, or the "other pages" bucket when
    /// [`MAX_PAGES`] are tracked already.
    fn page(&mut self, key: (u32, u64)) -> &mut Rw {
        if self.pages.len() >= MAX_PAGES && !self.pages.contains_key(&key) {
            return &mut self.other_pages;
        }
        self.pages.entry(key).or_default()
    }

    fn mmio(&mut self, region: u32, offset: u64, len: usize, write: bool) {
        let len = len as u64;
        self.mmio.entry(region).or_default().count(write, len);
        self.page((region, offset & !(PAGE - 1))).count(write, len);
    }

    /// The snapshot form.
    pub fn counters(&self) -> Counters {
        Counters {
            irqs: self
                .irqs
                .iter()
                .map(|(&(index, vector), c)| IrqRow {
                    index,
                    vector,
                    device_events: c.device_events,
                    host_interrupts: c.host_interrupts,
                    unmasks: c.unmasks,
                    refires: c.refires,
                })
                .collect(),
            mmio: self
                .mmio
                .iter()
                .map(|(&region, &rw)| RegionRow { region, rw })
                .collect(),
            mmio_pages: self
                .pages
                .iter()
                .map(|(&(region, offset), &rw)| PageRow { region, offset, rw })
                .collect(),
            mmio_other_pages: self.other_pages,
            dma: self.dma.clone(),
            errors: self
                .errors
                .iter()
                .map(|(&errno, &count)| ErrorRow {
                    errno,
                    name: errno_name(errno),
                    count,
                })
                .collect(),
        }
    }
}

/// The symbolic name of an errno the backend replies with.
pub fn errno_name(e: i32) -> String {
    let known = [
        (libc::EPERM, "EPERM"),
        (libc::ENOENT, "ENOENT"),
        (libc::EINTR, "EINTR"),
        (libc::EIO, "EIO"),
        (libc::EBADF, "EBADF"),
        (libc::EAGAIN, "EAGAIN"),
        (libc::ENOMEM, "ENOMEM"),
        (libc::EACCES, "EACCES"),
        (libc::EFAULT, "EFAULT"),
        (libc::EBUSY, "EBUSY"),
        (libc::EEXIST, "EEXIST"),
        (libc::ENODEV, "ENODEV"),
        (libc::EINVAL, "EINVAL"),
        (libc::EMFILE, "EMFILE"),
        (libc::ENOSPC, "ENOSPC"),
        (libc::ERANGE, "ERANGE"),
        (libc::ENOSYS, "ENOSYS"),
        (libc::EOVERFLOW, "EOVERFLOW"),
        (libc::ENOTSUP, "ENOTSUP"),
        (libc::ETIMEDOUT, "ETIMEDOUT"),
    ];
    known
        .iter()
        .find(|(n, _)| *n == e)
        .map_or_else(|| format!("errno {e}"), |(_, s)| (*s).to_string())
}

/// The client of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Its pid (SO_PEERCRED).
    pub pid: i32,
    /// Its uid.
    pub uid: u32,
    /// Its gid.
    pub gid: u32,
    /// When it was accepted (Unix time, milliseconds).
    pub since_unix_ms: u64,
}

/// The current session in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    /// Session number (1 for the first client the process served).
    pub number: u64,
    /// Its client.
    pub client: ClientInfo,
    /// Milliseconds since it was accepted.
    pub duration_ms: u64,
    /// Its counters (from zero at connect).
    pub counters: Counters,
}

/// Process-wide facts in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessView {
    /// The backend's pid.
    pub pid: u32,
    /// When the backend started serving (Unix time, milliseconds).
    pub since_unix_ms: u64,
    /// Milliseconds since then.
    pub uptime_ms: u64,
    /// Clients served (sessions started).
    pub sessions: u64,
    /// Connections refused with EBUSY while a client was served.
    pub refused_busy: u64,
    /// Connections refused by the --allow-uid/--allow-gid policy.
    pub refused_policy: u64,
    /// Counters of every session, the current one included.
    pub counters: Counters,
}

/// What the statistics socket writes: one JSON document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`SNAPSHOT_VERSION`].
    pub version: u32,
    /// Device served (`--device`).
    pub device: String,
    /// Device profile.
    pub profile: String,
    /// Region names by index.
    pub regions: Vec<String>,
    /// The connected client's session; `None` while no client is served.
    pub session: Option<SessionView>,
    /// Process totals.
    pub process: ProcessView,
}

/// Unix time in milliseconds (integers: a snapshot round-trips through
/// JSON exactly).
fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A session in progress.
#[derive(Debug, Clone, Copy)]
struct Session {
    number: u64,
    client: ClientInfo,
}

/// Session and process statistics of a backend (see the module docs).
#[derive(Debug)]
pub struct Stats {
    since_unix_ms: u64,
    session: Option<Session>,
    sessions: u64,
    refused_busy: u64,
    refused_policy: u64,
    /// The current session's counters (between sessions: activity of no
    /// client, folded into `ended` when the next one starts).
    current: Tally,
    /// The ended sessions' counters, summed.
    ended: Tally,
    /// The device's counters as last read, per (index, vector).
    last_irq: BTreeMap<(u32, u32), IrqCounters>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            since_unix_ms: unix_now_ms(),
            session: None,
            sessions: 0,
            refused_busy: 0,
            refused_policy: 0,
            current: Tally::default(),
            ended: Tally::default(),
            last_irq: BTreeMap::new(),
        }
    }
}

/// Growth of a device counter since `last`; a counter that went down was
/// restarted by the device (VFIO counts from each trigger setup), so all of
/// it is new.
fn delta(now: u64, last: u64) -> u64 {
    if now >= last {
        now - last
    } else {
        now
    }
}

impl Stats {
    /// The current session's DMA tally, for [`Counting`].
    pub fn dma(&self) -> &DmaTally {
        &self.current.dma
    }

    /// Reads one vector's device counters and adds their growth to the
    /// current session. `None`: the device does not count that vector.
    pub fn sample_vector(&mut self, dev: &dyn Device, index: u32, vector: u32) -> Option<()> {
        let now = dev.irq_counters(index, vector)?;
        let last = self
            .last_irq
            .insert((index, vector), now)
            .unwrap_or_default();
        let d = IrqCounters {
            device_events: delta(now.device_events, last.device_events),
            host_interrupts: delta(now.host_interrupts, last.host_interrupts),
            unmasks: delta(now.unmasks, last.unmasks),
            refires: delta(now.refires, last.refires),
        };
        add_irq(self.current.irqs.entry((index, vector)).or_default(), &d);
        Some(())
    }

    /// Samples the first [`MAX_VECTORS`] vectors of every IRQ index.
    pub fn sample_irqs(&mut self, dev: &dyn Device) {
        for index in 0..dev.info().num_irqs {
            self.sample_index(dev, index);
        }
    }

    /// Samples the first [`MAX_VECTORS`] vectors of one IRQ index. Called
    /// before and after anything that may restart the device's counters
    /// (SET_IRQS: VFIO counts from each trigger setup; reset), so growth
    /// before the restart is taken and the restart itself adds nothing.
    pub fn sample_index(&mut self, dev: &dyn Device, index: u32) {
        let count = dev.irq_info(index).map_or(0, |i| i.count);
        for v in 0..count.min(MAX_VECTORS) {
            self.sample_vector(dev, index, v);
        }
    }

    /// The session's counters of one vector (after sampling it).
    pub fn session_irq(
        &mut self,
        dev: &dyn Device,
        index: u32,
        vector: u32,
    ) -> Option<IrqCounters> {
        self.sample_vector(dev, index, vector)?;
        Some(
            self.current
                .irqs
                .get(&(index, vector))
                .copied()
                .unwrap_or_default(),
        )
    }

    fn fold(&mut self, dev: &dyn Device) {
        self.sample_irqs(dev);
        let t = std::mem::take(&mut self.current);
        self.ended.add(&t);
    }

    /// A client was accepted: its session's counters start from zero.
    pub fn session_started(&mut self, dev: &dyn Device, cred: &PeerCred) {
        self.fold(dev);
        self.sessions += 1;
        self.session = Some(Session {
            number: self.sessions,
            client: ClientInfo {
                pid: cred.pid,
                uid: cred.uid,
                gid: cred.gid,
                since_unix_ms: unix_now_ms(),
            },
        });
    }

    /// The client is gone (before its IRQs are released).
    pub fn session_ended(&mut self, dev: &dyn Device) {
        self.fold(dev);
        self.session = None;
    }

    /// A trapped MMIO access inside region `region` (bounds already checked).
    pub fn mmio(&mut self, region: u32, offset: u64, len: usize, write: bool) {
        self.current.mmio(region, offset, len, write);
    }

    /// The session's error replies so far (the connection counts them).
    pub fn set_errors(&mut self, errors: &BTreeMap<i32, u64>) {
        self.current.errors.clone_from(errors);
    }

    /// A connection refused with EBUSY (one client at a time).
    pub fn refused_busy(&mut self) {
        self.refused_busy += 1;
    }

    /// A connection refused by the peer policy.
    pub fn refused_policy(&mut self) {
        self.refused_policy += 1;
    }

    /// One log line per sampled vector: the current session's counters and,
    /// in parentheses, every session's (call after [`Stats::sample_irqs`]).
    pub fn irq_lines(&self) -> Vec<String> {
        self.current
            .irqs
            .iter()
            .map(|(&(i, v), c)| {
                let t = self.ended.irqs.get(&(i, v)).copied().unwrap_or_default();
                format!(
                    "IRQ {i}.{v}: device events {} ({} in all sessions), host interrupts {} ({}), \
                     unmasks {} ({}), refires {} ({})",
                    c.device_events,
                    c.device_events + t.device_events,
                    c.host_interrupts,
                    c.host_interrupts + t.host_interrupts,
                    c.unmasks,
                    c.unmasks + t.unmasks,
                    c.refires,
                    c.refires + t.refires
                )
            })
            .collect()
    }

    /// The snapshot (after sampling the IRQ counters).
    pub fn snapshot(&mut self, dev: &dyn Device, about: SnapshotAbout) -> Snapshot {
        self.sample_irqs(dev);
        let now = unix_now_ms();
        let mut total = self.ended.clone();
        total.add(&self.current);
        Snapshot {
            version: SNAPSHOT_VERSION,
            device: about.device,
            profile: about.profile,
            regions: about.regions,
            session: self.session.map(|s| SessionView {
                number: s.number,
                client: s.client,
                duration_ms: now.saturating_sub(s.client.since_unix_ms),
                counters: self.current.counters(),
            }),
            process: ProcessView {
                pid: std::process::id(),
                since_unix_ms: self.since_unix_ms,
                uptime_ms: now.saturating_sub(self.since_unix_ms),
                sessions: self.sessions,
                refused_busy: self.refused_busy,
                refused_policy: self.refused_policy,
                counters: total.counters(),
            },
        }
    }
}

/// What a [`Snapshot`] says about the device besides counters.
#[derive(Debug, Clone, Default)]
pub struct SnapshotAbout {
    /// `--device` as given.
    pub device: String,
    /// Profile name.
    pub profile: String,
    /// Region names by index.
    pub regions: Vec<String>,
}

/// Outcome of writing a snapshot to one statistics peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The whole document was written.
    Whole,
    /// The socket took only part of it (or none: EAGAIN); abandoned.
    Partial,
    /// The peer was refused by the peer policy (closed unwritten).
    Refused,
    /// `accept` failed with this errno (e.g. EMFILE): no peer; the caller
    /// pauses the listener (it stays readable) and retries later.
    AcceptFailed(i32),
}

/// Writes `doc` to `fd` once, without blocking and without SIGPIPE.
fn send_once(fd: &impl AsRawFd, doc: &[u8]) -> std::io::Result<usize> {
    // SAFETY: `doc` is a live buffer of `doc.len()` bytes; `fd` is an open
    // socket borrowed for the call.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            doc.as_ptr().cast(),
            doc.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Serves the statistics peers waiting on `listener` (non-blocking), at most
/// [`PEERS_PER_WAKEUP`]: each is checked against `policy`, written one
/// snapshot (`doc`, built at most once per call) and closed. Returns what
/// happened to each peer, for the log and the tests; a failed `accept` ends
/// the call with [`Sent::AcceptFailed`] last.
pub fn serve_peers(
    listener: &UnixListener,
    policy: &PeerPolicy,
    doc: &mut dyn FnMut() -> Vec<u8>,
) -> Vec<Sent> {
    let mut out = Vec::new();
    let mut built: Option<Vec<u8>> = None;
    while out.len() < PEERS_PER_WAKEUP {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                continue
            }
            Err(e) => {
                out.push(Sent::AcceptFailed(e.raw_os_error().unwrap_or(libc::EIO)));
                break;
            }
        };
        if let Err(e) = sandbox::check_peer(&stream, policy) {
            vfio_sidecar_protocol::peer_warn!("statistics peer refused: {e}");
            out.push(Sent::Refused);
            continue;
        }
        let doc = built.get_or_insert_with(&mut *doc);
        let sent = match send_once(&stream, doc) {
            Ok(n) if n == doc.len() => Sent::Whole,
            Ok(n) => {
                log::debug!("statistics peer took {n} of {} bytes: closed", doc.len());
                Sent::Partial
            }
            Err(e) => {
                log::debug!("statistics peer: {e}: closed");
                Sent::Partial
            }
        };
        out.push(sent);
    }
    out
}

/// The snapshot as the socket sends it: compact JSON and a newline.
pub fn encode(s: &Snapshot) -> Vec<u8> {
    let mut v = serde_json::to_vec(s).unwrap_or_default();
    v.push(b'\n');
    v
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::device::{DeviceError, NoDmaMemory};

    fn scratch() -> Box<dyn Device> {
        Box::new(crate::model::create(&"scratch".parse().unwrap(), false).unwrap())
    }

    fn cred(pid: i32) -> PeerCred {
        PeerCred {
            pid,
            uid: 1,
            gid: 2,
        }
    }

    #[test]
    fn sessions_start_from_zero_and_totals_keep_growing() {
        let dev = scratch();
        let mut s = Stats::default();
        for (n, pid) in [(1u64, 10), (2, 11)] {
            s.session_started(dev.as_ref(), &cred(pid));
            s.mmio(0, 0x10, 4, false);
            s.mmio(0, 0x1004, 4, true);
            s.set_errors(&BTreeMap::from([(libc::EINVAL, 2)]));
            bump(&s.dma().read_bytes, 100);
            let snap = s.snapshot(dev.as_ref(), SnapshotAbout::default());
            let sess = snap.session.unwrap();
            assert_eq!(sess.number, n);
            assert_eq!(sess.client.pid, pid);
            let c = &sess.counters;
            assert_eq!(c.mmio[0].rw.reads, 1);
            assert_eq!(c.mmio[0].rw.write_bytes, 4);
            assert_eq!(c.mmio_pages.len(), 2);
            assert_eq!(c.errors[0].name, "EINVAL");
            assert_eq!(c.errors[0].count, 2);
            assert_eq!(c.dma.read_bytes.get(), 100);
            let t = &snap.process.counters;
            assert_eq!(t.mmio[0].rw.reads, n);
            assert_eq!(t.errors[0].count, 2 * n);
            assert_eq!(t.dma.read_bytes.get(), 100 * n);
            s.session_ended(dev.as_ref());
            assert!(s
                .snapshot(dev.as_ref(), SnapshotAbout::default())
                .session
                .is_none());
        }
    }

    /// The scratch model with host-interrupt counts set by the test (as a
    /// VFIO device's: restarted when a trigger is set up).
    struct Counted {
        inner: Box<dyn Device>,
        host: std::sync::Arc<std::sync::atomic::AtomicU64>,
    }

    impl Device for Counted {
        fn info(&self) -> crate::device::DeviceInfo {
            self.inner.info()
        }
        fn region_info(&self, i: u32) -> Result<crate::device::RegionInfo, DeviceError> {
            self.inner.region_info(i)
        }
        fn irq_info(&self, i: u32) -> Result<crate::device::IrqInfo, DeviceError> {
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
            m: &dyn DmaMemory,
        ) -> Result<(), DeviceError> {
            self.inner.region_write(i, o, d, m)
        }
        fn dma_map(&mut self, r: &crate::device::MappedRegion) -> Result<(), DeviceError> {
            self.inner.dma_map(r)
        }
        fn dma_unmap(&mut self, r: &crate::device::MappedRegion) -> Result<(), DeviceError> {
            self.inner.dma_unmap(r)
        }
        fn set_irqs(&mut self, req: crate::device::SetIrqs) -> Result<(), DeviceError> {
            self.inner.set_irqs(req)
        }
        fn unmask_irq(&mut self, i: u32, v: u32) -> Result<(), DeviceError> {
            self.inner.unmask_irq(i, v)
        }
        fn reset(&mut self) -> Result<(), DeviceError> {
            self.inner.reset()
        }
        fn irq_counters(&self, i: u32, v: u32) -> Option<IrqCounters> {
            (i == 0 && v == 0).then(|| IrqCounters {
                host_interrupts: self.host.load(std::sync::atomic::Ordering::Relaxed),
                ..IrqCounters::default()
            })
        }
    }

    #[test]
    fn device_counter_growth_is_split_per_session() {
        use std::sync::atomic::Ordering::Relaxed;
        assert_eq!(delta(5, 3), 2);
        assert_eq!(delta(2, 7), 2, "a restarted counter counts from zero");
        let host = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let dev = Counted {
            inner: scratch(),
            host: host.clone(),
        };
        let mut s = Stats::default();
        s.session_started(&dev, &cred(1));
        host.store(5, Relaxed);
        assert_eq!(s.session_irq(&dev, 0, 0).unwrap().host_interrupts, 5);
        assert!(s.session_irq(&dev, 0, 1).is_none(), "not counted there");
        s.session_ended(&dev);
        // The next client: its trigger setup restarts the device's count
        // (sampled before and after, as the server does), then 7 more.
        s.session_started(&dev, &cred(2));
        s.sample_index(&dev, 0);
        host.store(0, Relaxed);
        s.sample_index(&dev, 0);
        host.store(7, Relaxed);
        assert_eq!(s.session_irq(&dev, 0, 0).unwrap().host_interrupts, 7);
        let snap = s.snapshot(&dev, SnapshotAbout::default());
        assert_eq!(snap.process.counters.irqs[0].host_interrupts, 12);
        // A monotonic device (models) across sessions: only the growth.
        s.session_ended(&dev);
        s.session_started(&dev, &cred(3));
        host.store(9, Relaxed);
        assert_eq!(s.session_irq(&dev, 0, 0).unwrap().host_interrupts, 2);
        let lines = s.irq_lines();
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("host interrupts 2 (14)"), "{}", lines[0]);
    }

    #[test]
    fn pages_beyond_the_limit_are_summed() {
        let mut t = Tally::default();
        for p in 0..(MAX_PAGES as u64 + 10) {
            t.mmio(0, p * PAGE, 4, p % 2 == 0);
        }
        let c = t.counters();
        assert_eq!(c.mmio_pages.len(), MAX_PAGES);
        assert_eq!(c.mmio_other_pages.reads + c.mmio_other_pages.writes, 10);
        assert_eq!(
            c.mmio[0].rw.reads + c.mmio[0].rw.writes,
            MAX_PAGES as u64 + 10
        );
        // Known pages still count after the limit.
        t.mmio(0, 0, 4, true);
        assert_eq!(t.counters().mmio_pages[0].rw.writes, 2);
    }

    #[test]
    fn counting_memory_counts_bytes_and_faults_not_stalls() {
        let tally = DmaTally::default();
        let m = Counting::new(&NoDmaMemory, &tally);
        let mut buf = [0u8; 8];
        assert!(m.dma_read(0, &mut buf, DmaAccess::Read).is_err());
        assert!(m.dma_write(0, &buf).is_err());
        assert_eq!(tally.faults.get(), 2);
        tally.record(false, 16, &Ok(()));
        tally.record(true, 8, &Ok(()));
        let stall = DmaFault::Deferred {
            access: DmaAccess::Read,
            iova: 0,
            len: 4,
        };
        tally.record(false, 4, &Err(stall));
        assert_eq!(
            (
                tally.reads.get(),
                tally.read_bytes.get(),
                tally.writes.get()
            ),
            (1, 16, 1)
        );
        assert_eq!(tally.faults.get(), 2);
    }

    #[test]
    fn a_peer_that_does_not_read_never_blocks_the_writer() {
        use std::io::Read;
        use std::os::unix::net::UnixStream;
        let dir = std::env::temp_dir().join(format!("vfio-sidecar-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.stats");
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).unwrap();
        l.set_nonblocking(true).unwrap();
        let open = PeerPolicy::default();
        // Nobody waiting: nothing done, the document is not even built.
        let built = Cell::new(0);
        let mut small = || {
            built.set(built.get() + 1);
            b"{}\n".to_vec()
        };
        assert!(serve_peers(&l, &open, &mut small).is_empty());
        assert_eq!(built.get(), 0);
        // Three peers: one document, built once, written whole to each.
        let peers: Vec<UnixStream> = (0..3)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        assert_eq!(serve_peers(&l, &open, &mut small), vec![Sent::Whole; 3]);
        assert_eq!(built.get(), 1);
        let mut got = String::new();
        (&peers[0]).read_to_string(&mut got).unwrap();
        assert_eq!(got, "{}\n", "written, then closed");
        // A document far larger than a socket buffer, to a peer that never
        // reads: one non-blocking write, abandoned, the peer closed.
        let idle = UnixStream::connect(&path).unwrap();
        let mut huge = || vec![b' '; 64 << 20];
        assert_eq!(serve_peers(&l, &open, &mut huge), vec![Sent::Partial]);
        let mut n = 0;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match (&idle).read(&mut buf).unwrap() {
                0 => break,
                k => n += k,
            }
        }
        assert!(n > 0 && n < 64 << 20, "a part, then EOF: {n}");
        // A peer the policy refuses gets nothing.
        let refused = UnixStream::connect(&path).unwrap();
        let only_other = PeerPolicy {
            allow_uids: vec![u32::MAX - 1],
            ..PeerPolicy::default()
        };
        assert_eq!(
            serve_peers(&l, &only_other, &mut small),
            vec![Sent::Refused]
        );
        got.clear();
        (&refused).read_to_string(&mut got).unwrap();
        assert!(got.is_empty());
        // At most PEERS_PER_WAKEUP per call; the rest on the next.
        let many: Vec<UnixStream> = (0..PEERS_PER_WAKEUP + 2)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        assert_eq!(serve_peers(&l, &open, &mut small).len(), PEERS_PER_WAKEUP);
        assert_eq!(serve_peers(&l, &open, &mut small).len(), 2);
        drop(many);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn snapshot_round_trips_through_json() {
        let dev = scratch();
        let mut s = Stats::default();
        s.session_started(dev.as_ref(), &cred(3));
        s.mmio(0, 0, 4, false);
        let snap = s.snapshot(dev.as_ref(), SnapshotAbout::default());
        let doc = encode(&snap);
        assert_eq!(doc.last(), Some(&b'\n'));
        let back: Snapshot = serde_json::from_slice(&doc).unwrap();
        assert_eq!(back, snap);
    }
}
