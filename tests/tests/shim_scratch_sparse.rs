//! The sparse-mmap path against the real backend: `model:scratch` (served by a
//! separate `vfio-sidecar serve` process over its socket) offers page 1 of its
//! region as a sparse area. The shim maps it from the backend's fd as a KVM
//! slot; page 0 stays trapped. A tiny guest touches both.
#![allow(clippy::unwrap_used)]
// The x86 back end only (the aarch64 one boots Linux: `vmm-shim linux`).
#![cfg(target_arch = "x86_64")]

use std::time::Duration;

use vfio_sidecar_tests::Sidecar;
use vmm_shim::backend::place_and_map_sparse;
use vmm_shim::layout::*;
use vmm_shim::link::ProtoBackend;
use vmm_shim::memory::GuestRam;
use vmm_shim::mmio::{DeviceLink, MmioBus};
use vmm_shim::runner::{Backend, RunError};
use vmm_shim::vm::{Mailbox, Vm};

#[test]
fn scratch_sparse_page_is_shared_memory_and_page0_traps() {
    if !vfio_sidecar_tests::kvm_usable() {
        return;
    }
    let backend = Sidecar::start("model:scratch", &[]);
    let mut be = ProtoBackend::connect(&backend.socket, Duration::from_secs(5)).unwrap();

    let regions = be.regions().unwrap();
    assert_eq!(regions.len(), 1);
    assert_eq!(regions[0].spec.size, 0x2000);
    assert_eq!(
        regions[0].spec.sparse,
        vec![(0x1000, 0x1000)],
        "page 1 is the sparse area"
    );
    assert!(regions[0].mmap.is_some(), "an mmap fd");

    // the backend's page 1 content, written through the protocol
    be.region_write(0, 0x1010, &0x600d_f00du32.to_le_bytes())
        .unwrap();

    let ram = GuestRam::new(RAM_SIZE).unwrap();
    let gdt: [u64; 3] = [0, 0x00cf_9a00_0000_ffff, 0x00cf_9200_0000_ffff];
    for (i, d) in gdt.iter().enumerate() {
        ram.write(GDT_BASE + 8 * i as u64, &d.to_le_bytes())
            .unwrap();
    }
    let mut vm = Vm::new(&ram).unwrap();
    let placed = place_and_map_sparse(&regions, DEVICE_BASE, DEVICE_END, |s, fd, off| {
        vm.map_sparse(s, fd, off).map_err(RunError::from)
    })
    .unwrap();
    let base = placed[0].gpa as u32;
    assert_eq!(vm.sparse_slots(), 1);

    // mov eax,[base+0x1010]; out 0xf0,eax; mov dword [base+0x1020],0xabcdef01;
    // mov eax,[base+0]; out 0xf4,eax
    let mut code = vec![0xa1];
    code.extend_from_slice(&(base + 0x1010).to_le_bytes());
    code.extend_from_slice(&[0xe7, 0xf0, 0xc7, 0x05]);
    code.extend_from_slice(&(base + 0x1020).to_le_bytes());
    code.extend_from_slice(&0xabcd_ef01u32.to_le_bytes());
    code.push(0xa1);
    code.extend_from_slice(&base.to_le_bytes());
    code.extend_from_slice(&[0xe7, 0xf4]);
    ram.write(CODE_BASE, &code).unwrap();

    let mut bus = MmioBus::new(placed);
    let mut seen = Vec::new();
    let done = vm
        .run(
            &mut bus,
            &mut be,
            &mut |m| seen.push(m),
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(
        seen[0],
        Mailbox::Result(0x600d_f00d),
        "guest read the backend's page directly"
    );
    assert_eq!(done, 0x5c2a_7c11, "the trapped ID read went to the backend");
    let mut b = [0u8; 4];
    be.region_read(0, 0x1020, &mut b).unwrap();
    assert_eq!(
        u32::from_le_bytes(b),
        0xabcd_ef01,
        "the guest's store is in the backend's memory"
    );
    let pages = bus.page_counts();
    assert_eq!(pages.len(), 1, "only page 0 trapped: {pages:?}");
    assert_eq!(pages[&(0, 0)].reads, 1);
}
