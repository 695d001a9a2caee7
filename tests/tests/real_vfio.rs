//! Real kernel VFIO in a nested QEMU guest (tests/real-vfio): boots the Debian cloud
//! kernel under TCG with an emulated Intel IOMMU and QEMU's `edu` device bound to
//! vfio-pci, runs `tests/real-vfio/guest-test.sh` there (the `real-vfio-client`
//! binary: the vfio module directly, then end to end through the `vfio-sidecar`
//! backend), and asserts every check passed.
//!
//! Needs QEMU, busybox-static and cpio (setup.sh installs them as root) and the
//! Debian kernel package (downloaded once into tests/real-vfio/cache). A missing
//! package or a failed download fails this test: it is never skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

fn harness_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("real-vfio")
}

#[test]
fn real_vfio_in_nested_qemu() {
    let client = PathBuf::from(env!("CARGO_BIN_EXE_real-vfio-client"));
    let dir = harness_dir();
    let mut cmd = Command::new(dir.join("run.sh"));
    cmd.arg("-f").arg(&client);
    // The backend binary sits beside the client when the workspace was built
    // (`cargo test --workspace` builds every bin).
    let backend = client.with_file_name("vfio-sidecar");
    assert!(
        backend.exists(),
        "{} missing: build it first (cargo build -p vfio-sidecar, or cargo test --workspace)",
        backend.display()
    );
    cmd.arg("-f").arg(&backend);
    cmd.arg(dir.join("guest-test.sh"));
    let out = cmd.output().expect("cannot run tests/real-vfio/run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "real-vfio harness failed ({}): see the FAIL lines and the serial log above",
        out.status
    );
    let fails: Vec<&str> = stdout.lines().filter(|l| l.contains("] FAIL ")).collect();
    assert!(fails.is_empty(), "failed checks: {fails:#?}");
    for phase in ["direct", "e2e"] {
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!("] {phase}: ")))
            .unwrap_or_else(|| panic!("the guest did not report the {phase} checks"));
        assert!(line.ends_with(" passed, 0 failed"), "{line}");
    }
    assert!(
        stdout.contains("REAL-VFIO-RESULT rc=0"),
        "no success marker from the guest"
    );
}
