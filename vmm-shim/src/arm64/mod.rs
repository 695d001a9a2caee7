//! The arm64 back end: an inner arm64 machine that boots a stock Linux
//! `Image` under KVM with the vfio-sidecar device in its device tree
//! (`vmm-shim linux`).
//!
//! The machine ([`layout`]): one or more vCPUs (PSCI 0.2, in-kernel), an
//! in-kernel vGICv3, the architected timer, a 16550 console emulated in the
//! shim on trapped MMIO ([`uart`]), RAM as one sealed memfd that is also the
//! backend's DMA memory table, the device's regions trapped (REGION_READ/WRITE
//! through [`crate::mmio`]) or mapped (sparse areas), its interrupts as KVM
//! irqfds on SPIs (plus resamplefds with `--eoi resample`). The device tree
//! ([`fdt`]) holds the device node as the backend described it.
//!
//! Everything but the KVM calls (`vm`, `run`: aarch64 hosts only) is
//! plain data and builds and is tested on any host.

pub mod exit;
pub mod fdt;
pub mod image;
pub mod irq;
pub mod layout;
pub mod summary;
pub mod uart;

#[cfg(target_arch = "aarch64")]
pub mod run;
#[cfg(target_arch = "aarch64")]
pub mod vm;
