//! Linux's own `pl330.ko`, in an arm64 KVM guest, driving the PL330 of
//! vfio-sidecar (tests/arm64, issue 14): `tests/arm64/run.sh` prepares the
//! Debian arm64 kernel, its pl330.ko and the harness's dmaengine client module
//! (setup.sh), cross-builds the aarch64 `vfio-sidecar` and `vmm-shim`
//! (scripts/cross-aarch64.sh), boots qemu-system-aarch64 with EL2 and, inside
//! it, runs the backend and the shim's arm64 KVM guest once per configuration
//! (EOI clear-register, EOI first-access, RAM without EXEC). Before those, the
//! hostile suites that drive a backend process (hostile_protocol, _liveness,
//! _dma_irq, _memfd_shrink), cross-built for aarch64, run in the outer machine
//! against the aarch64 backend (seccomp on).
//!
//! Needs root (the Debian trixie root: debootstrap, chroot). Without root the
//! test says why and fails under CI=true; it never skips silently.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The harness's last line, parsed.
#[derive(Debug, PartialEq)]
struct Summary {
    verified: u64,
    planned: u64,
    clear_register: String,
    first_access: String,
    exec_off_fault: bool,
}

/// Parses `arm64 Linux pl330: V/T transfers verified, host interrupts per device
/// event C (clear-register), F (first-access), exec-off fault seen: yes|no`.
fn parse_summary(line: &str) -> Option<Summary> {
    let rest = line.strip_prefix("arm64 Linux pl330: ")?;
    let (counts, rest) =
        rest.split_once(" transfers verified, host interrupts per device event ")?;
    let (v, t) = counts.split_once('/')?;
    let (c, rest) = rest.split_once(" (clear-register), ")?;
    let (f, rest) = rest.split_once(" (first-access), exec-off fault seen: ")?;
    let exec_off_fault = match rest {
        "yes" => true,
        "no" => false,
        _ => return None,
    };
    Some(Summary {
        verified: v.parse().ok()?,
        planned: t.parse().ok()?,
        clear_register: c.to_string(),
        first_access: f.to_string(),
        exec_off_fault,
    })
}

/// Did pl330.ko report a channel fault in the exec-off run? (the harness
/// prefixes every inner line with its configuration).
fn exec_off_fault_reported(log: &str) -> bool {
    let exec_off = |l: &&str| l.starts_with("[exec-off] ");
    log.lines()
        .filter(exec_off)
        .any(|l| l.contains("dma-pl330") && l.contains("Reset Channel-"))
        && log
            .lines()
            .filter(exec_off)
            .any(|l| l.contains("INNER-PL330-FAULT-REPORT yes"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn harness() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("arm64/run.sh")
}

#[test]
fn summary_line_parses() {
    let s = parse_summary(
        "arm64 Linux pl330: 512/512 transfers verified, host interrupts per device event 1.00 \
         (clear-register), 2.31 (first-access), exec-off fault seen: yes",
    )
    .expect("parses");
    assert_eq!(
        s,
        Summary {
            verified: 512,
            planned: 512,
            clear_register: "1.00".into(),
            first_access: "2.31".into(),
            exec_off_fault: true,
        }
    );
    assert!(parse_summary("arm64 Linux pl330: 1/2 transfers verified").is_none());
    // The exec-off report must come from that run's inner machine.
    let ok = "[exec-off] INNER-DMESG [   12.3] dma-pl330 c000000.dma-controller: Reset Channel-0\t CS-f FTC-20\n\
              [exec-off] INNER-PL330-FAULT-REPORT yes\n";
    assert!(exec_off_fault_reported(ok));
    assert!(!exec_off_fault_reported(
        &ok.replace("[exec-off]", "[clear-register]")
    ));
    assert!(!exec_off_fault_reported(
        &ok.replace("FAULT-REPORT yes", "FAULT-REPORT no")
    ));
    assert!(parse_summary(
        "arm64 Linux pl330: 1/2 transfers verified, host interrupts per device event 1.00 \
         (clear-register), 2.00 (first-access), exec-off fault seen: maybe"
    )
    .is_none());
}

#[test]
fn linux_pl330_driver_in_arm64_kvm_guest() {
    if !is_root() {
        let why = "arm64_linux needs root (the Debian trixie root of scripts/trixie-root.sh: debootstrap, chroot)";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{why}; CI=true: failing"
        );
        eprintln!("arm64_linux: NOT RUN: {why}");
        return;
    }
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("arm64-harness");
    let out = Command::new(harness())
        .env("ARM64_ARTIFACTS", &artifacts)
        .output()
        .expect("cannot run tests/arm64/run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    let log_path = artifacts.join("console.log");
    eprintln!("arm64_linux: console log kept at {}", log_path.display());
    let last = stdout.lines().last().unwrap_or_default();
    let s = parse_summary(last).unwrap_or_else(|| {
        panic!(
            "tests/arm64/run.sh failed ({}) before its summary line; last line: {last:?}",
            out.status
        )
    });
    assert!(s.planned >= 200, "only {} transfers planned", s.planned);
    assert_eq!(s.verified, s.planned, "not every transfer verified: {last}");
    assert_eq!(s.clear_register, "1.00", "clear-register EOI: {last}");
    let f: f64 = s.first_access.parse().unwrap_or(0.0);
    assert!(
        f > 1.5,
        "first-access EOI should cost > 1.5 host interrupts per event: {last}"
    );
    assert!(s.exec_off_fault, "RAM without EXEC must fault: {last}");
    let log = std::fs::read_to_string(&log_path).expect("the console log");
    assert!(
        log.lines()
            .any(|l| l.contains("INNER-AMBA ") && l.trim_end().ends_with("driver=dma-pl330")),
        "the inner AMBA bus did not bind the PL330 to dma-pl330"
    );
    assert!(
        log.contains("Loaded driver for PL330 DMAC-"),
        "pl330.ko did not probe in the inner machine"
    );
    // exec-off: Linux's own driver reported the fetch fault (its ISR, run by
    // the PL330's irq_abort, prints "Reset Channel-N CS-.. FTC-..").
    assert!(
        exec_off_fault_reported(&log),
        "exec-off: no 'Reset Channel-' report of pl330.ko in the inner log"
    );
    assert!(
        out.status.success(),
        "tests/arm64/run.sh exited with {}",
        out.status
    );
}
