//! The shim and the backend meet only on the socket, and Cargo says so: the
//! shim's normal dependency tree holds the protocol crate, never the
//! `vfio-sidecar` daemon crate (nor what only the daemon needs: seccompiler,
//! vfio-ioctls).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

#[test]
fn vmm_shim_does_not_depend_on_the_backend_crate() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new(cargo)
        .current_dir(root)
        .args([
            "tree",
            "-p",
            "vmm-shim",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names.first(), Some(&"vmm-shim"), "{text}");
    assert!(
        names.contains(&"vfio-sidecar-protocol"),
        "the protocol crate is the shim's link to the backend: {text}"
    );
    for daemon_only in ["vfio-sidecar", "seccompiler", "vfio-ioctls"] {
        assert!(
            !names.contains(&daemon_only),
            "vmm-shim's normal dependencies include {daemon_only}:\n{text}"
        );
    }
}
