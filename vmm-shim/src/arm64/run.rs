//! `vmm-shim linux` on an arm64 host: load the Image (and initrd), give the
//! backend the DMA table and the interrupt eventfds, place the device and
//! write its node into the guest's device tree, boot, and collect the numbers.

use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Instant;

use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

use super::fdt::{device_placement, guest_fdt, MachineSpec};
use super::image::{self, ImageError};
use super::irq::{Relay, RelayedLine};
use super::layout::*;
use super::summary::{IrqWiring, LinuxOptions, LinuxSummary};
use super::uart::Uart;
use super::vm::{ArmVm, ArmVmError};
use crate::backend::{place_and_map_sparse, Backend, EoiPolicy, NoSparseFd};
use crate::dtb::{self, DeviceNodes, DevicePlacement, DtbError};
use crate::link::ProtoBackend;
use crate::memory::{GuestRam, MemoryError};
use crate::mmio::{LinkError, MmioBus, PlacedRegion, PlacementError};
use vfio_sidecar_protocol::ext::DeviceDescription;

/// Errors of a Linux boot (each one line: the shim's exit reason).
#[derive(Debug, Error)]
pub enum LinuxError {
    /// The backend's EOI policy is not the one asked for.
    #[error(transparent)]
    Eoi(crate::backend::EoiMismatch),
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// kernel / initrd.
        what: &'static str,
        /// Its path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The kernel is not a usable Image.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Kernel, initrd and DTB do not fit.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Guest RAM.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// KVM.
    #[error(transparent)]
    Vm(#[from] ArmVmError),
    /// The backend.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// Device placement.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// The device tree.
    #[error(transparent)]
    Dtb(#[from] DtbError),
    /// eventfd creation.
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    /// The device cannot be wired.
    #[error("device: {0}")]
    Device(String),
}

impl From<NoSparseFd> for LinuxError {
    fn from(e: NoSparseFd) -> Self {
        LinuxError::Device(e.to_string())
    }
}

fn read_file(what: &'static str, p: &std::path::Path) -> Result<Vec<u8>, LinuxError> {
    std::fs::read(p).map_err(|source| LinuxError::Read {
        what,
        path: p.display().to_string(),
        source,
    })
}

fn borrowed(e: &EventFd) -> BorrowedFd<'_> {
    // SAFETY: the EventFd owns this fd and outlives the returned borrow.
    unsafe { BorrowedFd::borrow_raw(e.as_raw_fd()) }
}

fn rng_seed() -> Vec<u8> {
    let mut b = vec![0u8; 32];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    if n != b.len() as isize {
        return Vec::new(); // no seed then: the guest gathers entropy itself
    }
    b
}

/// Reads the kernel (and initrd), creates guest RAM and loads them where the
/// boot protocol wants them.
fn load_boot(opts: &LinuxOptions) -> Result<(GuestRam, BootLayout), LinuxError> {
    let kernel = read_file("kernel", &opts.kernel)?;
    let header = image::parse(&kernel)?;
    let initrd = match &opts.initrd {
        Some(p) => Some(read_file("initrd", p)?),
        None => None,
    };
    let ram_size = opts.mem_mib.saturating_mul(1 << 20);
    let boot = boot_layout(ram_size, &header, initrd.as_ref().map(|i| i.len() as u64))?;
    let ram = GuestRam::new(ram_size)?;
    ram.write(boot.kernel - RAM_BASE, &kernel)?;
    if let (Some(data), Some((start, _))) = (&initrd, boot.initrd) {
        ram.write(start - RAM_BASE, data)?;
    }
    Ok((ram, boot))
}

/// Places the device's regions in the device window and maps their sparse
/// areas as memory slots (the rest traps).
fn map_regions(
    backend: &mut ProtoBackend,
    vm: &mut ArmVm<'_>,
) -> Result<Vec<PlacedRegion>, LinuxError> {
    let regions = backend.regions()?;
    place_and_map_sparse(&regions, DEVICE_BASE, DEVICE_END, |slot, fd, off| {
        vm.map_sparse(slot, fd, off).map_err(LinuxError::from)
    })
}

/// The device's nodes from the backend's DTB, or from its description when it
/// sent none; and a word on which.
fn device_nodes(
    desc: &DeviceDescription,
    backend_dtb: &[u8],
) -> Result<(DeviceNodes, &'static str), LinuxError> {
    if backend_dtb.is_empty() {
        return Ok((
            DeviceNodes::from_description(desc),
            "built from the backend's description (it sent no DTB)",
        ));
    }
    Ok((
        DeviceNodes::from_dtb(&dtb::parse(backend_dtb)?, desc)?,
        "the backend's DTB node, placed by the shim",
    ))
}

/// The device's interrupts: every SPI is a level irqfd (the line drops at the
/// guest's EOI, as the vGIC needs for a level interrupt). With `--eoi
/// resample` the resamplefd is the backend's unmask eventfd and the backend
/// triggers KVM directly (those lines are returned, to be kept open);
/// otherwise the shim relays them (irq.rs) so that a signal arriving while the
/// line is raised is delivered after the EOI, not lost.
fn wire_irqs(
    backend: &mut ProtoBackend,
    vm: &ArmVm<'_>,
    desc: &DeviceDescription,
    at: &DevicePlacement,
    eoi: EoiPolicy,
) -> Result<(Vec<RelayedLine>, Option<Relay>), LinuxError> {
    let resample_policy = eoi == EoiPolicy::Resample;
    let mut direct = Vec::new();
    let mut relayed = Vec::new();
    for (irq, &spi) in desc.irqs.iter().zip(&at.spis) {
        let line = RelayedLine::new().map_err(LinuxError::EventFd)?;
        vm.register_level_irqfd(&line.to_kvm, &line.resample, spi)?;
        if resample_policy {
            backend.set_irq_trigger(irq.index, 0, borrowed(&line.to_kvm))?;
            backend.set_irq_unmask_fd(irq.index, 0, borrowed(&line.resample))?;
            direct.push(line);
        } else {
            backend.set_irq_trigger(irq.index, 0, borrowed(&line.from_backend))?;
            relayed.push(line);
        }
    }
    let relay = if relayed.is_empty() {
        None
    } else {
        Some(Relay::start(relayed).map_err(LinuxError::EventFd)?)
    };
    Ok((direct, relay))
}

/// Boots the kernel of `opts` against `backend`, the guest console going to
/// `console`.
pub fn run_linux<W: Write>(
    backend: &mut ProtoBackend,
    opts: &LinuxOptions,
    console: W,
) -> Result<LinuxSummary, LinuxError> {
    let t0 = Instant::now();
    let (ram, boot) = load_boot(opts)?;
    let mut vm = ArmVm::new(&ram, 1)?;

    let exec_negotiated = backend.exec_negotiated();
    let table = ram_dma_table(ram.size(), exec_negotiated, opts.no_exec);
    for e in &table {
        backend.dma_map(e, ram.fd())?;
    }

    let placed = map_regions(backend, &mut vm)?;

    // The device node, as the backend describes it, at the shim's addresses.
    let (desc, backend_dtb) = backend
        .client()
        .device_desc()
        .map_err(|e| LinuxError::Link(LinkError::Transport(e.to_string())))?;
    if let Some(m) = crate::backend::eoi_mismatch_in(&desc, opts.eoi) {
        return Err(LinuxError::Eoi(m));
    }
    let (nodes, how) = device_nodes(&desc, &backend_dtb)?;
    let at = device_placement(&desc, &placed).map_err(LinuxError::Device)?;

    let (direct, relay) = wire_irqs(backend, &vm, &desc, &at, opts.eoi)?;

    let spec = MachineSpec {
        ram_size: ram.size(),
        mpidrs: vm.mpidrs()?,
        bootargs: opts.append.clone(),
        initrd: boot.initrd,
        rng_seed: rng_seed(),
    };
    let blob = guest_fdt(&spec, Some((&nodes, &at)))?;
    ram.write(boot.dtb - RAM_BASE, &blob)?;
    vm.set_boot_regs(boot.kernel, boot.dtb)?;
    log::info!(
        "booting: kernel at {:#x} (+{:#x}), initrd {:?}, DTB at {:#x} ({} bytes), device at {:#x}, SPIs {:?}",
        boot.kernel,
        boot.kernel_end - boot.kernel,
        boot.initrd,
        boot.dtb,
        blob.len(),
        at.reg.first().map(|r| r.0).unwrap_or(0),
        at.spis
    );

    let mut bus = MmioBus::new(placed.clone());
    let mut uart = Uart::new(console);
    let t_guest = Instant::now();
    let stop = vm.run(&mut bus, backend, &mut uart, opts.timeout)?;
    let guest_time = t_guest.elapsed();

    let relayed = relay.map(Relay::stop).unwrap_or_default();
    let mut irqs = Vec::new();
    for (k, (irq, &spi)) in desc.irqs.iter().zip(&at.spis).enumerate() {
        let r = relayed.get(k);
        irqs.push(IrqWiring {
            index: irq.index,
            spi,
            stats: backend.irq_stats(irq.index, 0)?,
            delivered: r.map(|r| r.raises),
            guest_eois: r.map(|r| r.eois),
            deferred: r.map(|r| r.deferred),
        });
    }
    drop(direct);
    let c = vm.counters();
    Ok(LinuxSummary {
        stop,
        eoi: opts.eoi,
        exec_negotiated,
        ram_exec: table.iter().all(|e| e.prot.exec),
        dma_table: table,
        device_regions: placed.iter().map(|p| (p.index, p.gpa, p.size)).collect(),
        device_node: how.into(),
        irqs,
        mmio_per_region: bus.region_exits(),
        mmio_per_page: bus.page_exits(),
        mmio_stray: bus.stray(),
        mmio_refused: bus.refused(),
        sparse_slots: vm.sparse_slots(),
        uart_exits: c.uart_exits,
        console_bytes: uart.tx_bytes,
        vcpu_exits: c.exits,
        guest_time_ms: guest_time.as_millis() as u64,
        total_time_ms: t0.elapsed().as_millis() as u64,
    })
}
