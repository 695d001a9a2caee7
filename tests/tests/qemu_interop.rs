//! QEMU >= 10.1 as a real vfio-user client (tests/qemu-interop): `run.sh` starts
//! `vfio-sidecar serve --device model:edu` (seccomp on) and boots Linux guests in the
//! trixie root's QEMU (`scripts/trixie-root.sh`) with `-device vfio-user-pci` on its
//! socket; the `qemu-guest` binary checks the device from inside each guest (IDs,
//! registers, DMA both ways, INTx through uio_pci_generic and guest vfio-pci, MSI, DMA
//! through a vIOMMU, reboot, QEMU killed and a new one attached, plain RAM without
//! `share=on`, no DMA error lines on either side).
//!
//! Needs root (the trixie root is built by debootstrap and QEMU runs in it by chroot)
//! and the network on the first run (Debian's archive; everything is cached under
//! `${VFIO_SIDECAR_CACHE:-~/.cache/vfio-sidecar}`). A missing piece fails this test
//! with the reason: it is never skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `QEMU <version> vfio-user-pci: P/N checks passed[; failed: ...]` -> (P, N).
fn parse_summary(line: &str) -> Option<(u32, u32)> {
    let rest = line.strip_prefix("QEMU ")?;
    let (_, counts) = rest.split_once(" vfio-user-pci: ")?;
    let (pn, tail) = counts.split_once(" checks passed")?;
    if !(tail.is_empty() || tail.starts_with("; failed: ")) {
        return None;
    }
    let (p, n) = pn.split_once('/')?;
    Some((p.parse().ok()?, n.parse().ok()?))
}

#[test]
fn summary_line_parses() {
    assert_eq!(
        parse_summary("QEMU 11.1.3 vfio-user-pci: 45/45 checks passed"),
        Some((45, 45))
    );
    assert_eq!(
        parse_summary("QEMU 11.1.3 vfio-user-pci: 41/45 checks passed; failed: uio-intx vfio-intx"),
        Some((41, 45))
    );
    assert_eq!(
        parse_summary("QEMU 11.1.3 vfio-user-pci: 4x/45 checks passed"),
        None
    );
    assert_eq!(parse_summary("[host 1.0s] done"), None);
}

#[test]
fn qemu_vfio_user_pci_against_model_edu() {
    let guest = PathBuf::from(env!("CARGO_BIN_EXE_qemu-guest"));
    // The backend binary sits beside it when the workspace was built
    // (`cargo test --workspace` builds every bin).
    let backend = guest.with_file_name("vfio-sidecar");
    assert!(
        backend.exists(),
        "{} missing: build it first (cargo build -p vfio-sidecar, or cargo test --workspace)",
        backend.display()
    );
    let run = Path::new(env!("CARGO_MANIFEST_DIR")).join("qemu-interop/run.sh");
    let out = Command::new(&run)
        .arg(&backend)
        .arg(&guest)
        .output()
        .expect("cannot run tests/qemu-interop/run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let last = stdout.lines().last().unwrap_or_default();
    let (p, n) = parse_summary(last)
        .unwrap_or_else(|| panic!("no summary as the last line of run.sh's output: {last:?}"));
    assert!(n >= 20, "only {n} checks: {last}");
    assert_eq!(p, n, "{last}");
    assert!(
        out.status.success(),
        "run.sh exited with {}: {last}",
        out.status
    );
}
