//! The real KVM guest against the in-process fake device (skipped without /dev/kvm).

use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use crate::guest::GUEST_BIN;
use crate::layout::*;
use crate::memory::GuestRam;
use crate::mmio::{place_regions, MmioBus, RegionSpec};
use crate::plan::{self, Transfer};
use crate::testing::FakePl330;
use crate::vm::{Mailbox, Vm, VmError};

fn kvm_present() -> bool {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("SKIPPED: /dev/kvm not available");
        return false;
    }
    true
}

fn run_fake(
    resample: bool,
    enforce_exec: bool,
) -> (Vec<Transfer>, Vec<plan::Verdict>, plan::Header, u64) {
    let ram = GuestRam::new(RAM_SIZE).unwrap();
    let xs = plan::plan(6, 2048, 8, enforce_exec, 11).unwrap();
    plan::load_guest(&ram, GUEST_BIN, &xs, DEVICE_BASE, resample, 11).unwrap();
    let mut vm = Vm::new(&ram).unwrap();
    let trigger = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let resamplefd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    vm.register_irqfd(&trigger, DEVICE_GSI, resample.then_some(&resamplefd))
        .unwrap();
    let placed = place_regions(
        &[RegionSpec {
            index: 0,
            size: 0x1000,
            sparse: vec![],
        }],
        DEVICE_BASE,
        DEVICE_END,
    )
    .unwrap();
    let mut bus = MmioBus::new(placed);
    let mut dev = FakePl330::new(&ram, &trigger);
    dev.enforce_exec = enforce_exec;
    let mut results = Vec::new();
    let done = vm
        .run(
            &mut bus,
            &mut dev,
            &mut |m| {
                if let Mailbox::Result(i) = m {
                    results.push(i)
                }
            },
            Duration::from_secs(20),
        )
        .unwrap();
    assert_eq!(done, 0);
    assert_eq!(results, (0..xs.len() as u32).collect::<Vec<_>>());
    let header = plan::read_header(&ram).unwrap();
    let verdicts = xs
        .iter()
        .enumerate()
        .map(|(i, x)| plan::verify(&ram, x, &plan::read_record(&ram, i).unwrap(), 0).unwrap())
        .collect();
    if resample {
        assert!(
            resamplefd.read().unwrap() >= 1,
            "guest EOI signalled the resamplefd"
        );
    }
    assert!(bus.region_totals()[&0].reads > 8);
    (xs, verdicts, header, dev.events)
}

#[test]
fn guest_runs_transfers_against_fake_device() {
    if !kvm_present() {
        return;
    }
    for resample in [false, true] {
        let (xs, verdicts, header, events) = run_fake(resample, true);
        for (x, v) in xs.iter().zip(&verdicts) {
            assert!(v.ok, "transfer {x:?}: {v:?}");
        }
        assert_eq!(verdicts.iter().filter(|v| v.fault_seen).count(), 1);
        assert_eq!(header.pcell_id, 0xb105_f00d);
        assert_eq!(header.periph_id & 0xfffff, 0x41330);
        assert_eq!(
            u64::from(header.irqs),
            events,
            "one guest interrupt per device event"
        );
        assert_eq!(events, xs.len() as u64 - 1);
    }
}

#[test]
fn fault_transfer_completes_when_exec_not_enforced() {
    if !kvm_present() {
        return;
    }
    let (_, verdicts, header, _) = run_fake(false, false);
    assert!(
        verdicts.iter().all(|v| v.ok && !v.fault_seen),
        "{verdicts:?}"
    );
    assert_eq!(header.irqs as usize, verdicts.len());
}

#[test]
fn guest_timeout_is_reported() {
    if !kvm_present() {
        return;
    }
    // a guest that halts with interrupts disabled never reports
    let ram = GuestRam::new(RAM_SIZE).unwrap();
    ram.write(CODE_BASE, &[0xfa, 0xf4, 0xeb, 0xfd]).unwrap(); // cli; hlt; jmp
    let mut vm = Vm::new(&ram).unwrap();
    let mut bus = MmioBus::new(vec![]);
    let trigger = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut dev = FakePl330::new(&ram, &trigger);
    let e = vm.run(&mut bus, &mut dev, &mut |_| {}, Duration::from_millis(200));
    assert!(matches!(e, Err(VmError::Timeout(..))), "{e:?}");
}
