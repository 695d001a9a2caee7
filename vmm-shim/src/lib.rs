//! vmm-shim: a minimal KVM VMM that runs a bare-metal x86 PL330 driver against
//! a vfio-sidecar backend, doing for one device what a full VMM does with a
//! vfio-user device: DMA memory table, trapped and shared MMIO, irqfd/resamplefd.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod cli;
pub mod demo;
pub mod dtb;
pub mod guest;
pub mod layout;
pub mod link;
pub mod memory;
pub mod mmio;
pub mod plan;
pub mod runner;
pub mod vm;

#[cfg(test)]
mod kvm_tests;
#[cfg(test)]
mod testing;
