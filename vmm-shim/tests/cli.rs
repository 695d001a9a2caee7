//! The `vmm-shim` binary's command line (no KVM or backend needed).
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn shim() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmm-shim"));
    c.env("RUST_LOG", "off");
    c
}

#[test]
fn help_teaches_with_examples() {
    let out = shim().arg("--help").output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "vmm-shim demo",
        "vmm-shim run --socket",
        "--exec-all",
        "vmm-shim dtb",
        "0xfe000000",
    ] {
        assert!(s.contains(needle), "help lacks {needle:?}:\n{s}");
    }
    assert!(
        !s.contains("  backend"),
        "the internal subcommand stays hidden"
    );
    let out = shim().args(["run", "--help"]).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--transfers",
        "--max-size",
        "--eoi",
        "clear-register",
        "resample",
        "first-access",
        "--json",
    ] {
        assert!(s.contains(needle), "run --help lacks {needle:?}:\n{s}");
    }
}

#[test]
fn missing_kvm_is_said_plainly() {
    for args in [
        &["demo"][..],
        &["run", "--socket", "/nonexistent/s.sock"][..],
    ] {
        let out = shim()
            .args(args)
            .env("VMM_SHIM_KVM_DEVICE", "/nonexistent/kvm")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(
            e.contains("KVM is not available on this host"),
            "{args:?}: {e}"
        );
    }
}

#[test]
fn unreachable_backend_fails_with_the_socket_named() {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("SKIPPED: no /dev/kvm (the run command checks it first)");
        return;
    }
    let out = shim()
        .args(["run", "--socket", "/nonexistent/s.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("/nonexistent/s.sock"), "{e}");
    let out = shim()
        .args([
            "dtb",
            "--socket",
            "/nonexistent/s.sock",
            "-o",
            "/nonexistent/x.dtb",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
