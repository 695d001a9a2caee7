//! The KVM side: one VM with an in-kernel irqchip, guest RAM as slot 0, sparse
//! device areas as further slots, one vCPU in 32-bit protected mode, and the
//! run loop that forwards MMIO exits and reads the port-I/O mailbox.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

use crate::layout::*;
use crate::memory::{GuestRam, SharedMapping};
use crate::mmio::{DeviceLink, MmioBus, MmioError, SparseSlot};

/// Errors of the KVM layer.
#[derive(Debug, Error)]
pub enum VmError {
    /// /dev/kvm is missing or unusable.
    #[error(
        "KVM is not available on this host (/dev/kvm: {0}); the shim needs hardware virtualization"
    )]
    NoKvm(kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("KVM {what}: {source}")]
    Kvm {
        /// The failing step.
        what: &'static str,
        /// errno.
        source: kvm_ioctls::Error,
    },
    /// mmap or slot registration of a device area failed.
    #[error(transparent)]
    Slot(#[from] crate::kvm::SlotError),
    /// MMIO forwarding failed.
    #[error(transparent)]
    Mmio(#[from] MmioError),
    /// The guest took an exception or an unexpected interrupt.
    #[error("guest stopped on unexpected vector {vector:#x} (eip {eip:#x}, esp {esp:#x}, stack {stack:x?})")]
    GuestPanic {
        /// Vector the guest reported.
        vector: u32,
        /// Guest EIP at the report.
        eip: u64,
        /// Guest ESP.
        esp: u64,
        /// A few stack words (error code / EIP / CS / EFLAGS of the exception).
        stack: Vec<u32>,
    },
    /// The guest did not finish in time.
    #[error("guest did not finish within {0:?} (last eip {1:#x})")]
    Timeout(Duration, u64),
    /// The vCPU stopped in a way the shim does not handle.
    #[error("unexpected vCPU exit: {0}")]
    UnexpectedExit(String),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// A flat 4 GiB 32-bit segment (granularity 4 KiB, present, ring 0) at
/// `base`: type `0xb` is execute/read code, `0x3` read/write data.
pub fn flat_segment(base: u64, selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Counters of the run loop.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct RunCounters {
    /// KVM_RUN returns.
    pub exits: u64,
    /// MMIO exits.
    pub mmio_exits: u64,
    /// Port I/O exits.
    pub io_exits: u64,
}

/// What the mailbox reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mailbox {
    /// Transfer `i` finished (its record is in guest RAM).
    Result(u32),
    /// The guest finished with this code.
    Done(u32),
}

/// A VM with one vCPU. Field order = drop order: vCPU and VM before the mappings.
///
/// It borrows the guest RAM it registered as slot 0 for its whole life (`'ram`):
/// KVM keeps using that mapping until the VM fd is closed, so the compiler must
/// not let the `GuestRam` (and its munmap) go first:
///
/// ```compile_fail
/// # use vmm_shim::{memory::GuestRam, vm::Vm};
/// let ram = GuestRam::new(0x10000).unwrap();
/// let vm = Vm::new(&ram).unwrap();
/// drop(ram); // error: `ram` is still borrowed by `vm`
/// drop(vm);
/// ```
///
/// ```no_run
/// # use vmm_shim::{memory::GuestRam, vm::Vm};
/// let ram = GuestRam::new(0x10000).unwrap();
/// let vm = Vm::new(&ram).unwrap();
/// drop(vm);
/// drop(ram);
/// ```
#[derive(Debug)]
pub struct Vm<'ram> {
    vcpu: VcpuFd,
    vm: VmFd,
    _kvm: Kvm,
    /// The sparse areas mapped from the backend's fds (KVM slots): dropped
    /// (unmapped) after the VM that references them.
    maps: Vec<SharedMapping>,
    next_slot: u32,
    counters: RunCounters,
    _ram: std::marker::PhantomData<&'ram GuestRam>,
}

pub use crate::kvm::kvm_device;

impl<'ram> Vm<'ram> {
    /// Opens /dev/kvm, creates the VM, in-kernel PIC/IOAPIC/LAPIC, maps RAM as
    /// slot 0 and sets the vCPU up at `CODE_BASE` in 32-bit protected mode.
    pub fn new(ram: &'ram GuestRam) -> Result<Self, VmError> {
        let kvm = crate::kvm::open_kvm().map_err(VmError::NoKvm)?;
        let vm = kvm.create_vm().map_err(kvm_err("create_vm"))?;
        vm.set_tss_address(0xfffb_d000)
            .map_err(kvm_err("set_tss_address"))?;
        vm.create_irq_chip().map_err(kvm_err("create_irq_chip"))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: ram.size(),
            userspace_addr: ram.host_addr(),
        };
        // SAFETY: the region describes `ram`'s mapping, which outlives the VM:
        // the returned `Vm<'ram>` borrows `ram`, so it cannot be dropped (unmapped)
        // while KVM may still access it.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(kvm_err("set_user_memory_region(RAM)"))?;
        let vcpu = vm.create_vcpu(0).map_err(kvm_err("create_vcpu"))?;

        let mut sregs = vcpu.get_sregs().map_err(kvm_err("get_sregs"))?;
        let code = flat_segment(0, 0x08, 0xb);
        let data = flat_segment(0, 0x10, 0x3);
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.gdt.base = GDT_BASE;
        sregs.gdt.limit = 3 * 8 - 1;
        sregs.cr0 |= 1; // PE
        sregs.cr0 &= !(1 << 31); // no paging
        vcpu.set_sregs(&sregs).map_err(kvm_err("set_sregs"))?;
        let mut regs = vcpu.get_regs().map_err(kvm_err("get_regs"))?;
        regs.rip = CODE_BASE;
        regs.rsp = STACK_TOP;
        regs.rflags = 2;
        vcpu.set_regs(&regs).map_err(kvm_err("set_regs"))?;

        crate::kvm::install_kick_handler();
        Ok(Vm {
            vcpu,
            vm,
            _kvm: kvm,
            maps: Vec::new(),
            next_slot: 1,
            counters: RunCounters::default(),
            _ram: std::marker::PhantomData,
        })
    }

    /// mmaps a sparse area from the backend's region fd and makes it a KVM
    /// slot: guest accesses there never exit. `region_fd_offset` is the
    /// region's offset in `fd` (from REGION_INFO).
    pub fn map_sparse(
        &mut self,
        slot: &SparseSlot,
        fd: BorrowedFd<'_>,
        region_fd_offset: u64,
    ) -> Result<(), VmError> {
        // SAFETY: the mapping is kept in `self.maps`, dropped after the VM.
        let map = unsafe {
            crate::kvm::map_sparse_slot(&self.vm, self.next_slot, slot, fd, region_fd_offset)
        }?;
        self.maps.push(map);
        self.next_slot += 1;
        Ok(())
    }

    /// Number of sparse slots mapped.
    pub fn sparse_slots(&self) -> usize {
        self.maps.len()
    }

    /// Registers `trigger` as an irqfd for `gsi`; with `resample`, as a level
    /// irqfd whose line drops at guest EOI, signalling `resample`.
    pub fn register_irqfd(
        &self,
        trigger: &EventFd,
        gsi: u32,
        resample: Option<&EventFd>,
    ) -> Result<(), VmError> {
        match resample {
            Some(r) => self
                .vm
                .register_irqfd_with_resample(trigger, r, gsi)
                .map_err(kvm_err("KVM_IRQFD (resample)")),
            None => self
                .vm
                .register_irqfd(trigger, gsi)
                .map_err(kvm_err("KVM_IRQFD")),
        }
    }

    /// Counters so far.
    pub fn counters(&self) -> RunCounters {
        self.counters
    }

    /// Runs the guest until it reports done, forwarding MMIO to `link` through
    /// `bus` and mailbox results to `on_mailbox`. Fails after `timeout`.
    pub fn run(
        &mut self,
        bus: &mut MmioBus,
        link: &mut dyn DeviceLink,
        on_mailbox: &mut dyn FnMut(Mailbox),
        timeout: Duration,
    ) -> Result<u32, VmError> {
        let watchdog = crate::kvm::Watchdog::start(timeout);
        self.run_loop(bus, link, on_mailbox, &watchdog, timeout)
    }

    fn run_loop(
        &mut self,
        bus: &mut MmioBus,
        link: &mut dyn DeviceLink,
        on_mailbox: &mut dyn FnMut(Mailbox),
        watchdog: &crate::kvm::Watchdog,
        timeout: Duration,
    ) -> Result<u32, VmError> {
        loop {
            if watchdog.expired() {
                let eip = self.vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                return Err(VmError::Timeout(timeout, eip));
            }
            let exit = match self.vcpu.run() {
                Ok(e) => e,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => {
                    return Err(VmError::Kvm {
                        what: "KVM_RUN",
                        source: e,
                    })
                }
            };
            self.counters.exits += 1;
            let mut panic = None;
            match exit {
                VcpuExit::MmioRead(addr, data) => {
                    self.counters.mmio_exits += 1;
                    bus.read(link, addr, data)?;
                }
                VcpuExit::MmioWrite(addr, data) => {
                    self.counters.mmio_exits += 1;
                    bus.write(link, addr, data)?;
                }
                VcpuExit::IoOut(port, data) => {
                    self.counters.io_exits += 1;
                    let mut v = [0u8; 4];
                    let n = data.len().min(4);
                    v[..n].copy_from_slice(&data[..n]);
                    let v = u32::from_le_bytes(v);
                    match port {
                        PORT_RESULT => on_mailbox(Mailbox::Result(v)),
                        PORT_DONE => {
                            on_mailbox(Mailbox::Done(v));
                            return Ok(v);
                        }
                        PORT_PANIC => panic = Some(v),
                        _ => log::debug!("guest out {port:#x} <- {v:#x} ignored"),
                    }
                }
                VcpuExit::IoIn(port, data) => {
                    self.counters.io_exits += 1;
                    log::debug!("guest in {port:#x}: all-ones");
                    data.fill(0xff);
                }
                VcpuExit::Hlt => {
                    return Err(VmError::UnexpectedExit(
                        "HLT (no in-kernel irqchip?)".into(),
                    ))
                }
                VcpuExit::Shutdown => {
                    return Err(VmError::UnexpectedExit("shutdown (triple fault)".into()))
                }
                VcpuExit::FailEntry(reason, cpu) => {
                    return Err(VmError::UnexpectedExit(format!(
                        "entry failed: reason {reason:#x} cpu {cpu}"
                    )))
                }
                VcpuExit::InternalError => {
                    let eip = self.vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                    return Err(VmError::UnexpectedExit(format!(
                        "KVM internal error (emulation failure?) at eip {eip:#x}"
                    )));
                }
                other => return Err(VmError::UnexpectedExit(format!("{other:?}"))),
            }
            if let Some(vector) = panic {
                let regs = self.vcpu.get_regs().map_err(kvm_err("get_regs"))?;
                return Err(VmError::GuestPanic {
                    vector,
                    eip: regs.rip,
                    esp: regs.rsp,
                    stack: Vec::new(),
                });
            }
        }
    }
}
