//! One complete run: set up guest RAM and the VM, give the backend the DMA
//! table and the interrupt eventfds, place the device regions, run the guest
//! driver, verify, and collect the numbers for the summary.

use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;
use std::time::Instant;

use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

use crate::backend::{place_and_map_sparse, NoSparseFd};
use crate::guest::GUEST_BIN;
use crate::layout::*;
use crate::memory::{default_dma_table, DmaEntry, GuestRam, MemoryError};
pub use crate::mmio::PageExits;
use crate::mmio::{write_mmio_exits, LinkError, MmioBus, PlacementError};
use crate::plan::{self, PlanError, Transfer, Verdict};
use crate::vm::{Mailbox, RunCounters, Vm, VmError};

pub use crate::backend::{AsLink, Backend, BackendRegion, EoiName, EoiPolicy, IrqStats};
pub use crate::plan::RunOptions;

/// Errors of a run.
#[derive(Debug, Error)]
pub enum RunError {
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// KVM.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Backend.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// Region placement.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// Planning / results.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The backend's EOI policy is not the one asked for.
    #[error(transparent)]
    Eoi(#[from] crate::backend::EoiMismatch),
    /// eventfd creation.
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    /// The device has no region 0 or no IRQ.
    #[error("device: {0}")]
    Device(String),
    /// The guest stopped early.
    #[error("guest finished with code {0} ({1})")]
    Guest(u32, &'static str),
}

impl From<NoSparseFd> for RunError {
    fn from(e: NoSparseFd) -> Self {
        RunError::Device(e.to_string())
    }
}

/// One transfer in the summary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TransferReport {
    /// Index in the run.
    pub index: usize,
    /// The planned transfer.
    pub transfer: Transfer,
    /// What the guest reported.
    pub record: plan::Record,
    /// The shim's check.
    pub verdict: Verdict,
}

/// The result of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// EOI policy.
    pub eoi: EoiPolicy,
    /// EXEC negotiated.
    pub exec_negotiated: bool,
    /// --exec-all.
    pub exec_all: bool,
    /// Whether the fault transfer had to fault.
    pub fault_expected: bool,
    /// DMA table sent.
    pub dma_table: Vec<DmaEntry>,
    /// PrimeCell IDs and config as the guest read them.
    pub device: plan::Header,
    /// Per-transfer results.
    pub transfers: Vec<TransferReport>,
    /// Transfers that passed (including the fault, when it faulted as expected).
    pub verified: usize,
    /// Transfers that failed.
    pub failed: usize,
    /// Whether the deliberate fault was seen.
    pub fault_seen: bool,
    /// Bytes copied by successful transfers.
    pub bytes_copied: u64,
    /// MMIO exits per region.
    pub mmio_per_region: BTreeMap<u32, u64>,
    /// MMIO exits per page.
    pub mmio_per_page: Vec<PageExits>,
    /// Sparse areas mapped as KVM slots.
    pub sparse_slots: usize,
    /// Trapped accesses outside every region (reads returned all-ones).
    pub mmio_stray: u64,
    /// Trapped accesses the backend refused (reads returned all-ones).
    pub mmio_refused: u64,
    /// Guest interrupt handler entries.
    pub guest_interrupts: u32,
    /// Handler entries that found no event.
    pub guest_spurious: u32,
    /// Backend counters for IRQ index 0, vector 0 (None: not supported).
    pub backend_irq: Option<IrqStats>,
    /// KVM run counters.
    pub vcpu: RunCounters,
    /// Wall time of the guest run (setup excluded).
    pub guest_time_ms: u64,
    /// Total wall time.
    pub total_time_ms: u64,
}

impl Summary {
    /// All transfers verified.
    pub fn success(&self) -> bool {
        self.failed == 0 && self.verified == self.transfers.len()
    }

    /// Host interrupts per device event, as the backend counted them.
    pub fn host_per_event(&self) -> Option<f64> {
        let s = self.backend_irq?;
        (s.device_events > 0).then(|| s.host_interrupts as f64 / s.device_events as f64)
    }
}

/// Runs the guest driver against `backend`.
pub fn run(backend: &mut dyn Backend, opts: &RunOptions) -> Result<Summary, RunError> {
    let ram = GuestRam::new(RAM_SIZE)?;
    run_in(&ram, backend, opts)
}

/// [`run`] with caller-provided guest RAM (of [`RAM_SIZE`] bytes), which can be
/// inspected afterwards.
pub fn run_in(
    ram: &GuestRam,
    backend: &mut dyn Backend,
    opts: &RunOptions,
) -> Result<Summary, RunError> {
    let t0 = Instant::now();
    if ram.size() != RAM_SIZE {
        return Err(RunError::Device(format!(
            "guest RAM must be {RAM_SIZE:#x} bytes"
        )));
    }
    if let Some(m) = backend.eoi_mismatch(opts.eoi)? {
        return Err(m.into());
    }
    let exec_negotiated = backend.exec_negotiated();
    let fault_expected = exec_negotiated && !opts.exec_all;
    let xfers = plan::plan(opts.transfers, opts.max_size, 8, fault_expected, opts.seed)?;
    let elcr_level = opts.eoi == EoiPolicy::Resample;
    plan::load_guest(ram, GUEST_BIN, &xfers, DEVICE_BASE, elcr_level, opts.seed)?;

    let mut vm = Vm::new(ram)?;

    // DMA table: all RAM, IOVA = GPA, EXEC only for microcode (when negotiated).
    let table = default_dma_table(exec_negotiated, opts.exec_all);
    for e in &table {
        backend.dma_map(e, ram.fd())?;
    }

    // Device regions: sparse areas become KVM slots, the rest traps.
    let regions = backend.regions()?;
    if !regions.iter().any(|r| r.spec.index == 0 && r.spec.size > 0) {
        return Err(RunError::Device(
            "region 0 (the register frame) is missing".into(),
        ));
    }
    let placed = place_and_map_sparse(&regions, DEVICE_BASE, DEVICE_END, |slot, fd, off| {
        vm.map_sparse(slot, fd, off).map_err(RunError::from)
    })?;
    if let Some(r0) = placed.iter().find(|r| r.index == 0) {
        log::info!("device region 0 at GPA {:#x} (+{:#x})", r0.gpa, r0.size);
    }
    let mut bus = MmioBus::new(placed);

    // Interrupts: IRQ index 0 (event 0) -> irqfd on GSI 5; resamplefd as the
    // backend's unmask eventfd with the resample policy.
    let trigger =
        EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(RunError::EventFd)?;
    let resample =
        EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(RunError::EventFd)?;
    let use_resample = opts.eoi == EoiPolicy::Resample;
    vm.register_irqfd(&trigger, DEVICE_GSI, use_resample.then_some(&resample))?;
    // SAFETY (of the borrow): the eventfds live until the end of this function.
    backend.set_irq_trigger(0, 0, borrowed(&trigger))?;
    if use_resample {
        backend.set_irq_unmask_fd(0, 0, borrowed(&resample))?;
    }

    let t_guest = Instant::now();
    let mut reported = Vec::new();
    let done = vm.run(
        &mut bus,
        &mut AsLink(backend),
        &mut |m| {
            if let Mailbox::Result(i) = m {
                reported.push(i);
            }
        },
        opts.timeout,
    );
    let guest_time = t_guest.elapsed();
    let done = match done {
        Ok(code) => code,
        Err(VmError::GuestPanic {
            vector, eip, esp, ..
        }) => {
            let mut stack = vec![0u32; 4];
            for (k, w) in stack.iter_mut().enumerate() {
                *w = ram.read_u32(esp + 4 * k as u64).unwrap_or(0);
            }
            return Err(VmError::GuestPanic {
                vector,
                eip,
                esp,
                stack,
            }
            .into());
        }
        Err(e) => return Err(e.into()),
    };
    let header = plan::read_header(ram)?;
    match done {
        0 => {}
        1 => return Err(RunError::Guest(1, "bad parameter block")),
        2 => {
            return Err(RunError::Device(format!(
                "the guest driver rejected the device IDs: PeriphID {:#010x}, PCellID {:#010x}",
                header.periph_id, header.pcell_id
            )))
        }
        c => return Err(RunError::Guest(c, "unknown done code")),
    }

    let mut transfers = Vec::new();
    for (i, x) in xfers.iter().enumerate() {
        let record = plan::read_record(ram, i)?;
        let mut verdict = plan::verify(ram, x, &record, 0)?;
        if verdict.ok && !reported.contains(&(i as u32)) {
            verdict.ok = false;
            verdict.reason = Some("guest never reported this transfer on the mailbox".into());
        }
        transfers.push(TransferReport {
            index: i,
            transfer: *x,
            record,
            verdict,
        });
    }
    let backend_irq = backend.irq_stats(0, 0)?;
    let verified = transfers.iter().filter(|t| t.verdict.ok).count();
    let bytes_copied = transfers
        .iter()
        .filter(|t| t.verdict.ok && !t.verdict.fault_seen)
        .map(|t| u64::from(t.transfer.len))
        .sum();
    let mmio_per_region = bus.region_exits();
    let mmio_per_page = bus.page_exits();
    Ok(Summary {
        eoi: opts.eoi,
        exec_negotiated,
        exec_all: opts.exec_all,
        fault_expected,
        dma_table: table,
        device: header,
        verified,
        failed: transfers.len() - verified,
        fault_seen: transfers.iter().any(|t| t.verdict.fault_seen),
        transfers,
        bytes_copied,
        mmio_per_region,
        mmio_per_page,
        sparse_slots: vm.sparse_slots(),
        mmio_stray: bus.stray(),
        mmio_refused: bus.refused(),
        guest_interrupts: header.irqs,
        guest_spurious: header.spurious,
        backend_irq,
        vcpu: vm.counters(),
        guest_time_ms: guest_time.as_millis() as u64,
        total_time_ms: t0.elapsed().as_millis() as u64,
    })
}

/// A table comparing runs (one line per run): the EOI policies side by side.
pub fn comparison_table(runs: &[Summary]) -> String {
    let mut t = String::from(
        "EOI policy      result  transfers  device events  host irqs  per event  guest irqs  without event  MMIO exits\n",
    );
    for s in runs {
        let (ev, host) = s
            .backend_irq
            .map(|b| (b.device_events.to_string(), b.host_interrupts.to_string()))
            .unwrap_or_else(|| ("-".into(), "-".into()));
        let per = s
            .host_per_event()
            .map(|p| format!("{p:.2}"))
            .unwrap_or_else(|| "-".into());
        t.push_str(&format!(
            "{:<15} {:<7} {:>4}/{:<4}  {:>13}  {:>9}  {:>9}  {:>10}  {:>13}  {:>10}\n",
            s.eoi.name(),
            if s.success() { "PASS" } else { "FAIL" },
            s.verified,
            s.transfers.len(),
            ev,
            host,
            per,
            s.guest_interrupts,
            s.guest_spurious,
            s.vcpu.mmio_exits,
        ));
    }
    t
}

fn borrowed(e: &EventFd) -> BorrowedFd<'_> {
    use std::os::fd::AsRawFd;
    // SAFETY: the EventFd owns this fd and outlives the returned borrow.
    unsafe { BorrowedFd::borrow_raw(e.as_raw_fd()) }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.device;
        writeln!(f, "vmm-shim: PL330 guest driver over vfio-user")?;
        writeln!(
            f,
            "  device        PeriphID {:#010x}  PCellID {:#010x}  CR0 {:#x}  CRD {:#x}",
            d.periph_id, d.pcell_id, d.cr0, d.crd
        )?;
        writeln!(
            f,
            "  DMA table     {} entries; EXEC extension {}{}",
            self.dma_table.len(),
            if self.exec_negotiated {
                "negotiated"
            } else {
                "NOT negotiated (READ implies EXEC)"
            },
            if self.exec_all {
                ", --exec-all: everything executable"
            } else {
                ""
            }
        )?;
        for e in &self.dma_table {
            writeln!(
                f,
                "    {:#010x}..{:#010x}  {}{}{}",
                e.iova,
                e.iova + e.size,
                if e.prot.read { "R" } else { "-" },
                if e.prot.write { "W" } else { "-" },
                if e.prot.exec { "X" } else { "-" }
            )?;
        }
        writeln!(f, "  transfers")?;
        for t in &self.transfers {
            let x = &t.transfer;
            let status = match (&t.verdict.ok, t.verdict.fault_seen) {
                (true, true) if t.record.fsrd & 1 != 0 => format!(
                    "FAULT as expected: manager (FSRD {:#x} FTRD {:#x})",
                    t.record.fsrd, t.record.ftrd
                ),
                (true, true) => format!(
                    "FAULT as expected: channel (FSRC {:#x} FTR {:#x})",
                    t.record.fsrc, t.record.ftr
                ),
                (true, false) => "ok".to_string(),
                (false, _) => format!("FAILED: {}", t.verdict.reason.as_deref().unwrap_or("?")),
            };
            writeln!(
                f,
                "    #{:<2} {:>6} B  beat {} x{:<2} loops {}x{} unroll {} tail {:<3} mcode {:>2} B @{:#x}  {}",
                t.index, x.len, x.beat, x.burst_len, x.outer, x.inner, x.unroll, x.tail, t.record.mcode_len, x.mcode, status
            )?;
        }
        writeln!(
            f,
            "  verified      {}/{} transfers, {} bytes copied; deliberate fault {}",
            self.verified,
            self.transfers.len(),
            self.bytes_copied,
            match (self.fault_expected, self.fault_seen) {
                (true, true) => "seen (no-exec page)",
                (true, false) => "NOT seen",
                (false, _) => "not expected (page executable) - ran as a normal transfer",
            }
        )?;
        write_mmio_exits(
            f,
            &self.mmio_per_region,
            &self.mmio_per_page,
            self.sparse_slots,
            self.mmio_stray,
            self.mmio_refused,
        )?;
        writeln!(
            f,
            "  interrupts    {} delivered to the guest ({} without an event), EOI policy {}",
            self.guest_interrupts,
            self.guest_spurious,
            self.eoi.name()
        )?;
        match self.backend_irq {
            Some(s) => writeln!(
                f,
                "  backend IRQ 0 {} device events, {} host interrupts ({:.2} per event), {} unmasks, {} re-fires",
                s.device_events,
                s.host_interrupts,
                self.host_per_event().unwrap_or(0.0),
                s.unmasks,
                s.refires
            )?,
            None => writeln!(f, "  backend IRQ 0 counters not available (IRQ_STATS not supported)")?,
        }
        writeln!(
            f,
            "  vCPU          {} exits ({} MMIO, {} port I/O)",
            self.vcpu.exits, self.vcpu.mmio_exits, self.vcpu.io_exits
        )?;
        writeln!(
            f,
            "  time          guest {} ms, total {} ms",
            self.guest_time_ms, self.total_time_ms
        )?;
        write!(
            f,
            "  result        {}",
            if self.success() { "PASS" } else { "FAIL" }
        )
    }
}
