//! The real KVM guest against the in-process fake device (skipped without /dev/kvm).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use crate::layout::*;
use crate::memory::GuestRam;
use crate::mmio::{place_regions, sparse_slots, MmioBus, RegionSpec};
use crate::plan::{ccr, Transfer};
use crate::runner::{run, run_in, EoiPolicy, RunOptions};
use crate::testing::FakePl330;
use crate::vm::{Mailbox, Vm, VmError};

fn kvm_present() -> bool {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        // CI machines have /dev/kvm: nothing may skip there.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "/dev/kvm is not usable under CI=true"
        );
        eprintln!("SKIPPED: /dev/kvm not available; the KVM path is not exercised here");
        return false;
    }
    true
}

fn opts(eoi: EoiPolicy, exec_all: bool) -> RunOptions {
    RunOptions {
        transfers: 6,
        max_size: 2048,
        eoi,
        exec_all,
        seed: 11,
        timeout: Duration::from_secs(20),
    }
}

#[test]
fn guest_runs_transfers_against_fake_device() {
    if !kvm_present() {
        return;
    }
    for eoi in [EoiPolicy::ClearRegister, EoiPolicy::Resample] {
        let mut dev = FakePl330::default();
        dev.exec_negotiated = true;
        let s = run(&mut dev, &opts(eoi, false)).unwrap();
        assert!(s.success(), "{s}");
        assert_eq!(s.transfers.len(), 7);
        assert!(s.fault_expected && s.fault_seen);
        assert_eq!(s.device.pcell_id, 0xb105_f00d);
        assert_eq!(s.device.periph_id & 0xfffff, 0x41330);
        let st = s.backend_irq.unwrap();
        assert_eq!(st.device_events, 6, "no event from the faulting program");
        assert_eq!(
            u64::from(s.guest_interrupts),
            st.host_interrupts,
            "one guest interrupt per signal"
        );
        assert_eq!(s.guest_spurious, 0);
        assert!(s.bytes_copied > 0);
        assert!(s.mmio_per_region[&0] > 8 * 7);
        assert_eq!(s.dma_table.iter().filter(|e| e.prot.exec).count(), 1);
    }
}

#[test]
fn fault_transfer_completes_when_everything_is_executable() {
    if !kvm_present() {
        return;
    }
    for negotiated in [true, false] {
        let mut dev = FakePl330::default();
        dev.exec_negotiated = negotiated;
        let s = run(&mut dev, &opts(EoiPolicy::ClearRegister, true)).unwrap();
        assert!(s.success(), "{s}");
        assert!(!s.fault_expected && !s.fault_seen);
        assert_eq!(s.guest_interrupts, 7);
    }
}

fn memfd(size: u64) -> OwnedFd {
    // SAFETY: test-only FFI on fds/mappings this test owns; sizes match the buffers.
    let raw = unsafe { libc::memfd_create(c"scratch".as_ptr(), 0) };
    assert!(raw >= 0);
    // SAFETY: fresh fd.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    assert_eq!(
        // SAFETY: test-only FFI on fds/mappings this test owns; sizes match the buffers.
        unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) },
        0
    );
    fd
}

#[test]
fn sparse_area_is_a_memory_slot_and_the_rest_traps() {
    if !kvm_present() {
        return;
    }
    // region 1: page 0 sparse (backend memfd), page 1 trapped
    let scratch = memfd(0x2000);
    let magic = 0x1234_5678u32.to_le_bytes();
    assert_eq!(
        // SAFETY: test-only FFI on fds/mappings this test owns; sizes match the buffers.
        unsafe { libc::pwrite(scratch.as_raw_fd(), magic.as_ptr().cast(), 4, 0x10) },
        4
    );
    let ram = GuestRam::new(RAM_SIZE).unwrap();
    let placed = place_regions(
        &[
            RegionSpec {
                index: 0,
                size: 0x1000,
                sparse: vec![],
            },
            RegionSpec {
                index: 1,
                size: 0x2000,
                sparse: vec![(0, 0x1000)],
            },
        ],
        DEVICE_BASE,
        DEVICE_END,
    )
    .unwrap();
    let r1 = placed[1].gpa;
    let mut vm = Vm::new(&ram).unwrap();
    for s in sparse_slots(&placed) {
        vm.map_sparse(&s, std::os::fd::AsFd::as_fd(&scratch), 0)
            .unwrap();
    }
    // mov eax,[r1+0x10]; mov [r1+0x20],eax; mov ebx,[0xfe000fe0]; out 0xf0,eax; mov eax,ebx; out 0xf4,eax
    let mut code = vec![0xa1];
    code.extend_from_slice(&((r1 + 0x10) as u32).to_le_bytes());
    code.push(0xa3);
    code.extend_from_slice(&((r1 + 0x20) as u32).to_le_bytes());
    code.extend_from_slice(&[0x8b, 0x1d]);
    code.extend_from_slice(&((DEVICE_BASE + 0xfe0) as u32).to_le_bytes());
    code.extend_from_slice(&[0xe7, 0xf0, 0x89, 0xd8, 0xe7, 0xf4]);
    ram.write(CODE_BASE, &code).unwrap();
    let gdt: [u64; 3] = [0, 0x00cf_9a00_0000_ffff, 0x00cf_9200_0000_ffff];
    for (i, d) in gdt.iter().enumerate() {
        ram.write(GDT_BASE + 8 * i as u64, &d.to_le_bytes())
            .unwrap();
    }
    let mut bus = MmioBus::new(placed);
    let mut dev = FakePl330::default();
    let mut seen = Vec::new();
    let done = vm
        .run(
            &mut bus,
            &mut dev,
            &mut |m| seen.push(m),
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(
        seen[0],
        Mailbox::Result(0x1234_5678),
        "guest read the backend's page directly"
    );
    assert_eq!(done, 0x30, "trapped read of PeriphID0 went to the device");
    let mut b = [0u8; 4];
    assert_eq!(
        // SAFETY: test-only FFI on fds/mappings this test owns; sizes match the buffers.
        unsafe { libc::pread(scratch.as_raw_fd(), b.as_mut_ptr().cast(), 4, 0x20) },
        4
    );
    assert_eq!(
        u32::from_le_bytes(b),
        0x1234_5678,
        "guest store landed in the backend's memfd"
    );
    assert!(
        !bus.region_totals().contains_key(&1),
        "no exits for the sparse page"
    );
    assert_eq!(bus.region_totals()[&0].reads, 1);
}

#[test]
fn guest_timeout_is_reported() {
    if !kvm_present() {
        return;
    }
    let ram = GuestRam::new(RAM_SIZE).unwrap();
    ram.write(CODE_BASE, &[0xfa, 0xf4, 0xeb, 0xfd]).unwrap(); // cli; hlt; jmp
    let mut vm = Vm::new(&ram).unwrap();
    let mut bus = MmioBus::new(vec![]);
    let mut dev = FakePl330::default();
    let _unused = EventFd::new(0).unwrap();
    let e = vm.run(&mut bus, &mut dev, &mut |_| {}, Duration::from_millis(200));
    assert!(matches!(e, Err(VmError::Timeout(..))), "{e:?}");
}

/// Walks a PL330 program (decoded by the backend's decoder, an independent
/// implementation) and returns the bytes its DMALD/DMAST pairs move, checking
/// the Linux program shape on the way.
fn bytes_moved(code: &[u8], x: &Transfer) -> u64 {
    use vfio_sidecar::model::pl330::insn::{decode, Insn, MovReg};
    let mut insns = Vec::new(); // (offset, insn, len)
    let mut at = 0;
    while at < code.len() {
        let (i, n) = decode(&code[at..]).unwrap();
        insns.push((at, i, n));
        at += n;
    }
    // shape: MOV CCR, MOV SAR, MOV DAR first; SEV 0, END last
    let head: Vec<Insn> = insns.iter().take(3).map(|t| t.1).collect();
    assert_eq!(
        head,
        vec![
            Insn::Mov {
                reg: MovReg::Ccr,
                imm: ccr(x.beat, x.burst_len)
            },
            Insn::Mov {
                reg: MovReg::Sar,
                imm: x.src
            },
            Insn::Mov {
                reg: MovReg::Dar,
                imm: x.dst
            },
        ]
    );
    let n = insns.len();
    assert_eq!(insns[n - 2].1, Insn::Sev { event: 0 });
    assert_eq!(insns[n - 1].1, Insn::End);
    // execute the control flow
    let mut ccr_now = 0u32;
    let mut lc = [0u32; 2];
    let mut moved = 0u64;
    let mut pc = 0usize; // index into insns
    let mut steps = 0;
    while pc < n {
        steps += 1;
        assert!(steps < 10_000_000, "runaway program");
        let (off, insn, _) = insns[pc];
        match insn {
            Insn::Mov {
                reg: MovReg::Ccr,
                imm,
            } => ccr_now = imm,
            Insn::Lp { lc: c, count } => lc[c.index()] = u32::from(count),
            Insn::LpEnd { lc: c, jump, .. } if lc[c.index()] > 0 => {
                lc[c.index()] -= 1;
                let target = off - usize::from(jump);
                pc = insns.iter().position(|t| t.0 == target).unwrap();
                continue;
            }
            Insn::Ld(_) => {
                let beat = 1u64 << ((ccr_now >> 1) & 7);
                moved += beat * u64::from(((ccr_now >> 4) & 0xf) + 1);
                assert!(matches!(insns[pc + 1].1, Insn::St(_)), "LD followed by ST");
            }
            Insn::End => break,
            _ => {}
        }
        pc += 1;
    }
    moved
}

#[test]
fn guest_microcode_has_linux_shape_and_moves_the_planned_bytes() {
    if !kvm_present() {
        return;
    }
    let ram = GuestRam::new(RAM_SIZE).unwrap();
    let mut dev = FakePl330::default();
    dev.exec_negotiated = true;
    let mut o = opts(EoiPolicy::ClearRegister, false);
    o.transfers = 12;
    o.max_size = 65536;
    let s = run_in(&ram, &mut dev, &o).unwrap();
    assert!(s.success(), "{s}");
    for t in &s.transfers {
        let mut code = vec![0u8; t.record.mcode_len as usize];
        assert!(code.len() >= 3 * 6 + 3 && code.len() <= MCODE_PER_XFER as usize);
        ram.read(u64::from(t.transfer.mcode), &mut code).unwrap();
        assert_eq!(
            bytes_moved(&code, &t.transfer),
            u64::from(t.transfer.len),
            "{:?}",
            t.transfer
        );
    }
    assert!(
        s.transfers.iter().any(|t| t.transfer.outer > 1),
        "nested loops covered"
    );
}
