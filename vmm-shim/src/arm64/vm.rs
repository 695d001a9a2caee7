//! The arm64 KVM VM: RAM as slot 0 at [`RAM_BASE`], an in-kernel vGICv3,
//! vCPUs initialised for the preferred target with PSCI 0.2 (secondaries
//! powered off until PSCI CPU_ON), the boot registers of the arm64 protocol,
//! and the run loop that forwards trapped MMIO to the UART model or the
//! backend and ends on PSCI SYSTEM_OFF/RESET.
//!
//! Only one vCPU runs in the loop (the shim's inner machine has one).

use std::io::Write;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
    kvm_userspace_memory_region, kvm_vcpu_init, KVM_ARM_IRQ_TYPE_SHIFT, KVM_ARM_IRQ_TYPE_SPI,
    KVM_ARM_VCPU_PSCI_0_2, KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR,
    KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_GRP_NR_IRQS, KVM_VGIC_V3_ADDR_TYPE_DIST,
    KVM_VGIC_V3_ADDR_TYPE_REDIST,
};
use kvm_ioctls::{DeviceFd, Kvm, VcpuExit, VcpuFd, VmFd};
use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

use super::exit::{self, GuestStop};
use super::layout::*;
use super::uart::Uart;
use crate::kvm::{SlotError, Watchdog};
use crate::memory::{GuestRam, SharedMapping};
use crate::mmio::{DeviceLink, MmioBus, MmioError, SparseSlot};

// The register ids of `exit` are the kernel's (checked against kvm-bindings).
const _: () = {
    assert!(kvm_bindings::KVM_REG_ARM_CORE as u64 == 0x0010 << 16);
    assert!(kvm_bindings::KVM_REG_ARM64_SYSREG as u64 == 0x0013 << 16);
    assert!(kvm_bindings::KVM_REG_ARM64 == 0x6000_0000_0000_0000);
    assert!(kvm_bindings::KVM_REG_SIZE_U64 == 0x0030_0000_0000_0000);
    assert!(std::mem::offset_of!(kvm_bindings::user_pt_regs, pc) == 32 * 8);
    assert!(std::mem::offset_of!(kvm_bindings::user_pt_regs, pstate) == 33 * 8);
};

/// Errors of the arm64 KVM layer.
#[derive(Debug, Error)]
pub enum ArmVmError {
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
    /// A sparse area could not be mapped.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// MMIO forwarding failed (the backend is gone).
    #[error(transparent)]
    Mmio(#[from] MmioError),
    /// The guest did not stop in time.
    #[error("the guest did not power off within {0:?} (last pc {1:#x})")]
    Timeout(Duration, u64),
    /// The vCPU stopped in a way the shim does not handle.
    #[error("unexpected vCPU exit: {0}")]
    UnexpectedExit(String),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> ArmVmError {
    move |source| ArmVmError::Kvm { what, source }
}

/// Counters of the run loop.
#[derive(Debug, Clone, Copy, Default)]
pub struct ArmCounters {
    /// KVM_RUN returns.
    pub exits: u64,
    /// UART register accesses.
    pub uart_exits: u64,
    /// Other MMIO exits (the device's trapped pages, stray accesses).
    pub mmio_exits: u64,
}

/// A VM with its vCPUs. Field order = drop order: vCPUs, GIC and VM before the
/// mappings; it borrows the RAM registered as slot 0 for its whole life.
#[derive(Debug)]
pub struct ArmVm<'ram> {
    vcpus: Vec<VcpuFd>,
    _gic: DeviceFd,
    vm: VmFd,
    _kvm: Kvm,
    maps: Vec<SharedMapping>,
    next_slot: u32,
    counters: ArmCounters,
    uart_level: bool,
    _ram: std::marker::PhantomData<&'ram GuestRam>,
}

fn gic_attr(
    gic: &DeviceFd,
    group: u32,
    attr: u64,
    addr: u64,
    what: &'static str,
) -> Result<(), ArmVmError> {
    let a = kvm_device_attr {
        flags: 0,
        group,
        attr,
        addr,
    };
    gic.set_device_attr(&a).map_err(kvm_err(what))
}

impl<'ram> ArmVm<'ram> {
    /// Creates the VM with RAM at [`RAM_BASE`], `ncpus` vCPUs (the first one
    /// running, the others powered off for PSCI CPU_ON) and the vGICv3.
    pub fn new(ram: &'ram GuestRam, ncpus: u32) -> Result<Self, ArmVmError> {
        let ncpus = ncpus.clamp(1, MAX_VCPUS);
        let kvm = crate::kvm::open_kvm().map_err(ArmVmError::NoKvm)?;
        let vm = kvm.create_vm().map_err(kvm_err("create_vm"))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: RAM_BASE,
            memory_size: ram.size(),
            userspace_addr: ram.host_addr(),
        };
        // SAFETY: the region describes `ram`'s mapping, which outlives the VM
        // (the returned `ArmVm<'ram>` borrows it).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(kvm_err("set_user_memory_region(RAM)"))?;
        let mut vcpus = Vec::new();
        for id in 0..ncpus {
            vcpus.push(
                vm.create_vcpu(u64::from(id))
                    .map_err(kvm_err("create_vcpu"))?,
            );
        }
        let mut dev = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
            fd: 0,
            flags: 0,
        };
        let gic = vm
            .create_device(&mut dev)
            .map_err(kvm_err("create_device(vGICv3)"))?;
        let dist = GIC_DIST_BASE;
        let redist = GIC_REDIST_BASE;
        let nr_irqs: u32 = GIC_NR_IRQS;
        gic_attr(
            &gic,
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            u64::from(KVM_VGIC_V3_ADDR_TYPE_DIST),
            &dist as *const u64 as u64,
            "vGIC distributor address",
        )?;
        gic_attr(
            &gic,
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            u64::from(KVM_VGIC_V3_ADDR_TYPE_REDIST),
            &redist as *const u64 as u64,
            "vGIC redistributor address",
        )?;
        gic_attr(
            &gic,
            KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
            0,
            &nr_irqs as *const u32 as u64,
            "vGIC number of IRQs",
        )?;
        let mut init = kvm_vcpu_init::default();
        vm.get_preferred_target(&mut init)
            .map_err(kvm_err("KVM_ARM_PREFERRED_TARGET"))?;
        init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
        for (i, vcpu) in vcpus.iter().enumerate() {
            let mut kvi = init;
            if i > 0 {
                kvi.features[0] |= 1 << kvm_bindings::KVM_ARM_VCPU_POWER_OFF;
            }
            vcpu.vcpu_init(&kvi).map_err(kvm_err("KVM_ARM_VCPU_INIT"))?;
        }
        gic_attr(
            &gic,
            KVM_DEV_ARM_VGIC_GRP_CTRL,
            u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
            0,
            "vGIC CTRL_INIT",
        )?;
        crate::kvm::install_kick_handler();
        Ok(ArmVm {
            vcpus,
            _gic: gic,
            vm,
            _kvm: kvm,
            maps: Vec::new(),
            next_slot: 1,
            counters: ArmCounters::default(),
            uart_level: false,
            _ram: std::marker::PhantomData,
        })
    }

    /// MPIDR_EL1 of every vCPU (the DT's cpu `reg`s).
    pub fn mpidrs(&self) -> Result<Vec<u64>, ArmVmError> {
        self.vcpus
            .iter()
            .map(|v| {
                let mut b = [0u8; 8];
                v.get_one_reg(exit::MPIDR_EL1, &mut b)
                    .map_err(kvm_err("get MPIDR_EL1"))?;
                Ok(u64::from_le_bytes(b))
            })
            .collect()
    }

    fn set_reg(&self, id: u64, v: u64, what: &'static str) -> Result<(), ArmVmError> {
        self.vcpus[0]
            .set_one_reg(id, &v.to_le_bytes())
            .map(|_| ())
            .map_err(kvm_err(what))
    }

    /// The boot protocol's entry state of the boot vCPU: PC = the Image's
    /// first byte, x0 = the DTB, x1..x3 = 0, EL1h with DAIF masked (the MMU
    /// and caches are off after KVM_ARM_VCPU_INIT).
    pub fn set_boot_regs(&self, entry: u64, dtb: u64) -> Result<(), ArmVmError> {
        self.set_reg(exit::PSTATE, exit::PSTATE_EL1H_DAIF, "set PSTATE")?;
        self.set_reg(exit::xreg(0), dtb, "set x0")?;
        for n in 1..4 {
            self.set_reg(exit::xreg(n), 0, "set x1-x3")?;
        }
        self.set_reg(exit::PC, entry, "set PC")
    }

    fn pc(&self) -> u64 {
        let mut b = [0u8; 8];
        match self.vcpus[0].get_one_reg(exit::PC, &mut b) {
            Ok(_) => u64::from_le_bytes(b),
            Err(_) => 0,
        }
    }

    /// Maps a sparse area of a device region as a memory slot.
    pub fn map_sparse(
        &mut self,
        slot: &SparseSlot,
        fd: BorrowedFd<'_>,
        region_fd_offset: u64,
    ) -> Result<(), ArmVmError> {
        // SAFETY: the mapping is kept in `self.maps`, dropped after the VM.
        let map = unsafe {
            crate::kvm::map_sparse_slot(&self.vm, self.next_slot, slot, fd, region_fd_offset)
        }?;
        self.maps.push(map);
        self.next_slot += 1;
        Ok(())
    }

    /// Sparse areas mapped.
    pub fn sparse_slots(&self) -> usize {
        self.maps.len()
    }

    /// A level irqfd on SPI `spi` (GSI = SPI number with the default arm64
    /// routing): `trigger` raises the line, the guest's EOI lowers it and
    /// signals `resample`.
    pub fn register_level_irqfd(
        &self,
        trigger: &EventFd,
        resample: &EventFd,
        spi: u32,
    ) -> Result<(), ArmVmError> {
        self.vm
            .register_irqfd_with_resample(trigger, resample, spi)
            .map_err(kvm_err("KVM_IRQFD (resample)"))
    }

    fn set_uart_line(&mut self, level: bool) -> Result<(), ArmVmError> {
        if level == self.uart_level {
            return Ok(());
        }
        self.uart_level = level;
        let irq = (KVM_ARM_IRQ_TYPE_SPI << KVM_ARM_IRQ_TYPE_SHIFT) | (32 + UART_SPI);
        self.vm
            .set_irq_line(irq, level)
            .map_err(kvm_err("KVM_IRQ_LINE (UART)"))
    }

    /// Counters so far.
    pub fn counters(&self) -> ArmCounters {
        self.counters
    }

    /// Runs the boot vCPU until the guest powers off, resets or crashes;
    /// fails after `timeout`, on a KVM error or when the backend is gone.
    pub fn run<W: Write>(
        &mut self,
        bus: &mut MmioBus,
        link: &mut dyn DeviceLink,
        uart: &mut Uart<W>,
        timeout: Duration,
    ) -> Result<GuestStop, ArmVmError> {
        let watchdog = Watchdog::start(timeout);
        let r = self.run_loop(bus, link, uart, &watchdog, timeout);
        uart.finish();
        r
    }

    fn run_loop<W: Write>(
        &mut self,
        bus: &mut MmioBus,
        link: &mut dyn DeviceLink,
        uart: &mut Uart<W>,
        watchdog: &Watchdog,
        timeout: Duration,
    ) -> Result<GuestStop, ArmVmError> {
        let in_uart = |a: u64| (UART_BASE..UART_BASE + UART_SIZE).contains(&a);
        loop {
            if watchdog.expired() {
                return Err(ArmVmError::Timeout(timeout, self.pc()));
            }
            let exit = match self.vcpus[0].run() {
                Ok(e) => e,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => {
                    return Err(ArmVmError::Kvm {
                        what: "KVM_RUN",
                        source: e,
                    })
                }
            };
            self.counters.exits += 1;
            let mut uart_touched = false;
            match exit {
                VcpuExit::MmioRead(addr, data) if in_uart(addr) => {
                    self.counters.uart_exits += 1;
                    uart.read(addr - UART_BASE, data);
                    uart_touched = true;
                }
                VcpuExit::MmioWrite(addr, data) if in_uart(addr) => {
                    self.counters.uart_exits += 1;
                    uart.write(addr - UART_BASE, data);
                    uart_touched = true;
                }
                VcpuExit::MmioRead(addr, data) => {
                    self.counters.mmio_exits += 1;
                    bus.read(link, addr, data)?;
                }
                VcpuExit::MmioWrite(addr, data) => {
                    self.counters.mmio_exits += 1;
                    bus.write(link, addr, data)?;
                }
                VcpuExit::SystemEvent(type_, _) => match GuestStop::from_system_event(type_) {
                    Some(stop) => return Ok(stop),
                    None => log::debug!("system event {type_} ignored"),
                },
                VcpuExit::Intr => {}
                VcpuExit::FailEntry(reason, cpu) => {
                    return Err(ArmVmError::UnexpectedExit(format!(
                        "entry failed: reason {reason:#x} cpu {cpu}"
                    )))
                }
                VcpuExit::InternalError => {
                    return Err(ArmVmError::UnexpectedExit(format!(
                        "KVM internal error at pc {:#x}",
                        self.pc()
                    )))
                }
                other => return Err(ArmVmError::UnexpectedExit(format!("{other:?}"))),
            }
            if uart_touched {
                self.set_uart_line(uart.irq_level())?;
            }
        }
    }
}
