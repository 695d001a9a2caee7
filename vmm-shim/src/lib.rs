//! vmm-shim: a minimal KVM VMM for one vfio-sidecar device, doing what a full
//! VMM does with a vfio-user device: DMA memory table, trapped and shared MMIO,
//! irqfd/resamplefd. Two back ends, chosen by the target architecture:
//!
//! * x86_64 ([`vm`], [`runner`], [`demo`]): a bare-metal x86 imitation of
//!   Linux's PL330 driver (`guest/pl330_guest.S`), `vmm-shim run`/`demo`;
//! * aarch64 ([`arm64`]): boots a stock arm64 Linux kernel with the device in
//!   its device tree, `vmm-shim linux`.
//!
//! The parts that do not depend on the host architecture (the arm64 machine's
//! device tree, Image header, UART model and exit handling, the MMIO bus, the
//! backend link) build everywhere, so their unit tests run on any host.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod arm64;
pub mod backend;
pub mod cli;
pub mod dtb;
pub mod kvm;
pub mod layout;
pub mod link;
pub mod memory;
pub mod mmio;
pub mod plan;

#[cfg(target_arch = "x86_64")]
pub mod demo;
#[cfg(target_arch = "x86_64")]
pub mod guest;
#[cfg(target_arch = "x86_64")]
pub mod runner;
#[cfg(target_arch = "x86_64")]
pub mod vm;

#[cfg(all(test, target_arch = "x86_64"))]
mod kvm_tests;
#[cfg(all(test, target_arch = "x86_64"))]
mod testing;
