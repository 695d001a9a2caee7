//! Item 2: shared vs trapped pages from a KVM guest. A tiny real-mode guest
//! runs `N × mov eax, [ds:0]` against one page; DS points at:
//! * guest RAM (baseline for a direct access);
//! * the backend's sparse-mmap page (`model:scratch` region 0, page 1, the
//!   memfd the backend hands out with REGION_INFO), installed as a KVM memory
//!   slot: a direct access, no exit;
//! * a page with no slot, answered by this VMM without the backend (the bare
//!   cost of a KVM MMIO exit);
//! * the scratch device's trapped register page: every load exits to this
//!   VMM, which forwards it as REGION_READ through the protocol Client.
//!
//! The guest's last load lands in EAX, which is checked after HLT (the shared
//! page must show what the host wrote into the backend's memfd; the trapped
//! page must show the scratch ID register).

use std::path::Path;
use std::time::Instant;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use serde::Serialize;
use vfio_sidecar_protocol::client::Client;

use vmm_shim::memory::SharedMapping;
use vmm_shim::vm::flat_segment;

use crate::harness::Placement;
use crate::mmio::{connect, ACCESS, HDR};
use crate::procs::{start_backend, EchoPeer};
use crate::stats::Summary;
use crate::{client_err, BenchError};

const RAM_SIZE: usize = 0x10000;
const CODE_GPA: u64 = 0x1000;
const RAM_DATA_GPA: u64 = 0x8000;
const SHARED_GPA: u64 = 0x10000;
const TRAPPED_GPA: u64 = 0x20000;
const LOCAL_GPA: u64 = 0x30000;
/// The scratch model's ID register (trapped page, offset 0).
const SCRATCH_ID: u32 = 0x5c2a_7c11;
const SHARED_MAGIC: u32 = 0x600d_f00d;

/// One page kind in one placement.
#[derive(Debug, Clone, Serialize)]
pub struct KvmRow {
    /// Placement name (vCPU thread on the client CPU, backend on the server CPU).
    pub placement: &'static str,
    /// Which page.
    pub page: &'static str,
    /// Loads per run.
    pub loads: u64,
    /// Median ns per load over the runs.
    pub ns_per_access: f64,
    /// VM exits per load (HLT excluded).
    pub exits_per_access: f64,
    /// ns per load / ns per load from guest RAM.
    pub ratio_to_ram: f64,
    /// For the trapped page: ns per load / raw AF_UNIX round trip p50 (32/36 B).
    pub ratio_to_raw_rtt: Option<f64>,
}

/// Copies `data` into `m` at `off` (a check failure if it does not fit).
fn put(m: &SharedMapping, off: u64, data: &[u8]) -> Result<(), BenchError> {
    m.write(off, data)
        .map_err(|_| BenchError::Check("write past mapping".into()))
}

fn kerr(what: &str, e: kvm_ioctls::Error) -> BenchError {
    BenchError::Io(
        what.to_string(),
        std::io::Error::from_raw_os_error(e.errno()),
    )
}

/// The guest: `l: mov eax,[ds:0]; dec ecx; jnz l; hlt` (32-bit protected
/// mode, flat segments, no paging; DS's base selects the page).
const CODE: [u8; 10] = [
    0x8b, 0x05, 0x00, 0x00, 0x00, 0x00, // mov eax, [0]
    0x49, // dec ecx
    0x75, 0xf7, // jnz -9
    0xf4, // hlt
];

/// Runs the guest loop with DS at `gpa`; returns (ns, exits, eax).
fn guest_run(
    vcpu: &mut VcpuFd,
    gpa: u64,
    loads: u64,
    client: &mut Client,
) -> Result<(u64, u64, u32), BenchError> {
    let mut sregs = vcpu.get_sregs().map_err(|e| kerr("KVM_GET_SREGS", e))?;
    // Hidden segment state is set directly: the guest never reloads a
    // segment register, so no GDT is needed.
    sregs.cs = flat_segment(0, 0x8, 0xb);
    sregs.ds = flat_segment(gpa, 0x10, 0x3);
    sregs.es = flat_segment(0, 0x10, 0x3);
    sregs.ss = flat_segment(0, 0x10, 0x3);
    sregs.cr0 |= 1;
    sregs.cr0 &= !(1 << 31);
    vcpu.set_sregs(&sregs)
        .map_err(|e| kerr("KVM_SET_SREGS", e))?;
    let mut regs = vcpu.get_regs().map_err(|e| kerr("KVM_GET_REGS", e))?;
    regs.rip = CODE_GPA;
    regs.rflags = 2;
    regs.rcx = loads;
    regs.rax = 0;
    vcpu.set_regs(&regs).map_err(|e| kerr("KVM_SET_REGS", e))?;
    let mut exits = 0u64;
    let t = Instant::now();
    loop {
        match vcpu.run().map_err(|e| kerr("KVM_RUN", e))? {
            VcpuExit::Hlt => break,
            VcpuExit::MmioRead(addr, data) => {
                exits += 1;
                if (TRAPPED_GPA..TRAPPED_GPA + 0x1000).contains(&addr) {
                    client
                        .region_read_into(0, addr - TRAPPED_GPA, data)
                        .map_err(|e| client_err("REGION_READ (guest exit)", e))?;
                } else if (LOCAL_GPA..LOCAL_GPA + 0x1000).contains(&addr) {
                    data.copy_from_slice(&SCRATCH_ID.to_le_bytes()[..data.len().min(4)]);
                } else {
                    return Err(BenchError::Check(format!(
                        "unexpected MMIO read at {addr:#x}"
                    )));
                }
            }
            VcpuExit::Intr => exits += 1,
            other => return Err(BenchError::Check(format!("unexpected VM exit {other:?}"))),
        }
    }
    let ns = t.elapsed().as_nanos() as u64;
    let eax = vcpu.get_regs().map_err(|e| kerr("KVM_GET_REGS", e))?.rax as u32;
    Ok((ns, exits, eax))
}

/// Runs item 2, each page `reps` times per placement. RAM/shared pages run as
/// many loads as take about `fast_ms` (calibrated on guest RAM, at most 20 M),
/// trapped pages `slow` loads.
pub fn run(
    backend_bin: Option<&Path>,
    placements: &[Placement],
    fast_ms: u64,
    slow: u64,
    reps: usize,
) -> Result<Vec<KvmRow>, BenchError> {
    let kvm = Kvm::new().map_err(|e| {
        BenchError::Config(format!(
            "KVM unavailable (/dev/kvm: {}); rerun with --sections 1,3,4,5 to skip item 2",
            std::io::Error::from_raw_os_error(e.errno())
        ))
    })?;
    let backend = start_backend(backend_bin, "model:scratch", &[])?;
    let mut client = connect(&backend.socket)?;
    let mut peer = EchoPeer::start(HDR + ACCESS, HDR + ACCESS + 4)?;
    let (info, fd) = client
        .region_info(0)
        .map_err(|e| client_err("REGION_INFO", e))?;
    let fd = fd.ok_or_else(|| BenchError::Check("scratch region 0 has no mmap fd".into()))?;
    let area = info
        .sparse
        .as_ref()
        .and_then(|a| a.first().copied())
        .ok_or_else(|| BenchError::Check("scratch region 0 has no sparse area".into()))?;
    let shared = {
        use std::os::fd::AsFd;
        SharedMapping::of_fd(fd.as_fd(), info.offset + area.offset, area.size as usize)
            .map_err(|e| BenchError::Io("mmap sparse area".into(), e))?
    };
    put(&shared, 0, &SHARED_MAGIC.to_le_bytes())?;
    let ram = SharedMapping::anon(RAM_SIZE).map_err(|e| BenchError::Io("mmap".into(), e))?;
    put(&ram, CODE_GPA, &CODE)?;
    put(&ram, RAM_DATA_GPA, &0x1111_2222u32.to_le_bytes())?;
    let vm = kvm.create_vm().map_err(|e| kerr("KVM_CREATE_VM", e))?;
    for (slot, gpa, m) in [(0u32, 0u64, &ram), (1, SHARED_GPA, &shared)] {
        let r = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: m.len() as u64,
            userspace_addr: m.host_addr(),
        };
        // SAFETY: the mappings outlive the VM (declared before it, dropped after).
        unsafe { vm.set_user_memory_region(r) }
            .map_err(|e| kerr("KVM_SET_USER_MEMORY_REGION", e))?;
    }
    let mut vcpu = vm.create_vcpu(0).map_err(|e| kerr("KVM_CREATE_VCPU", e))?;
    // Calibrate: loads from guest RAM that take about `fast_ms`.
    let (ns, _, _) = guest_run(&mut vcpu, RAM_DATA_GPA, 10_000, &mut client)?;
    let per_load = (ns as f64 / 10_000.0).max(0.1);
    let fast = ((fast_ms as f64 * 1e6 / per_load) as u64).clamp(10_000, 20_000_000);
    let pages: [(&'static str, u64, u64, u32); 4] = [
        ("guest RAM", RAM_DATA_GPA, fast, 0x1111_2222),
        ("shared (sparse mmap slot)", SHARED_GPA, fast, SHARED_MAGIC),
        ("trapped, answered in the VMM", LOCAL_GPA, slow, SCRATCH_ID),
        (
            "trapped → backend REGION_READ",
            TRAPPED_GPA,
            slow,
            SCRATCH_ID,
        ),
    ];
    let mut rows = Vec::new();
    for p in placements {
        p.apply(&[backend.pid(), peer.process().pid()])?;
        // Warm up (first-touch faults of the slots, caches).
        for (_, gpa, n, _) in pages {
            guest_run(&mut vcpu, gpa, n.min(1000), &mut client)?;
        }
        let mut per: Vec<Vec<f64>> = vec![Vec::new(); pages.len()];
        let mut exits: Vec<u64> = vec![0; pages.len()];
        for _ in 0..reps {
            for (i, (name, gpa, n, want)) in pages.iter().enumerate() {
                let (ns, ex, eax) = guest_run(&mut vcpu, *gpa, *n, &mut client)?;
                if eax != *want {
                    return Err(BenchError::Check(format!(
                        "{name}: guest loaded {eax:#x}, expected {want:#x}"
                    )));
                }
                if let Some(v) = per.get_mut(i) {
                    v.push(ns as f64 / *n as f64);
                }
                if let Some(e) = exits.get_mut(i) {
                    *e += ex;
                }
            }
        }
        let raw: Vec<u64> = (0..slow.max(200))
            .map(|_| peer.round_trip())
            .collect::<Result<_, _>>()?;
        let raw = Summary::of(&raw);
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        };
        let meds: Vec<f64> = per.iter_mut().map(med).collect();
        let ram_ns = meds.first().copied().unwrap_or(f64::NAN);
        for (i, (name, _, n, _)) in pages.iter().enumerate() {
            let ns = meds.get(i).copied().unwrap_or(f64::NAN);
            rows.push(KvmRow {
                placement: p.name,
                page: name,
                loads: *n,
                ns_per_access: ns,
                exits_per_access: exits.get(i).copied().unwrap_or(0) as f64
                    / (*n as f64 * reps as f64),
                ratio_to_ram: ns / ram_ns,
                ratio_to_raw_rtt: (i == 3).then(|| ns / raw.p50_ns),
            });
        }
    }
    drop(vcpu);
    drop(vm);
    Ok(rows)
}

/// Prints the table.
pub fn print(rows: &[KvmRow]) {
    println!(
        "{:<8} {:<32} {:>9} {:>12} {:>10} {:>10} {:>12}",
        "place", "page", "loads", "ns/access", "exits/acc", "x RAM", "x raw RTT"
    );
    for r in rows {
        println!(
            "{:<8} {:<32} {:>9} {:>12.1} {:>10.3} {:>10.1} {:>12}",
            r.placement,
            r.page,
            r.loads,
            r.ns_per_access,
            r.exits_per_access,
            r.ratio_to_ram,
            r.ratio_to_raw_rtt
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(|| "-".into())
        );
    }
}
