//! Misconfigurations end in a clear error at start, never in a guest that hangs:
//! a profile that does not fit the device it is applied to is refused by `serve`
//! and `dt` with a one-line reason, and the process exits (watchdog-bounded).
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use vfio_sidecar_tests::{wait_until, workspace_bin, TempDir};

/// A profile named `bad` for the PL330 model, with `extra` TOML lines.
fn profile(dir: &TempDir, extra: &str) -> std::path::PathBuf {
    let p = dir.0.join("bad.toml");
    std::fs::write(
        &p,
        format!("[[device]]\nname = \"bad\"\ncompatible = [\"arm,pl330\", \"arm,primecell\"]\n{extra}\n"),
    )
    .unwrap();
    p
}

/// `vfio-sidecar SUB --device model:pl330 --profile-name bad --profile FILE`.
fn with_bad_profile(sub: &str, prof: &std::path::Path) -> Command {
    let mut c = Command::new(workspace_bin("vfio-sidecar", "vfio-sidecar"));
    c.args([
        sub,
        "--device",
        "model:pl330",
        "--profile-name",
        "bad",
        "--profile",
    ])
    .arg(prof);
    c
}

/// Runs `vfio-sidecar serve` with the profile; it must exit non-zero on its own
/// (within a watchdog) with `want` on stderr, and leave no socket behind.
fn serve_refuses(extra: &str, want: &str) {
    let dir = TempDir::new("misconfig");
    let prof = profile(&dir, extra);
    let sock = dir.0.join("s.sock");
    let mut child = with_bad_profile("serve", &prof)
        .arg("--socket")
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    wait_until(
        "serve to refuse the profile",
        Duration::from_secs(10),
        || {
            status = child.try_wait().unwrap();
            status.is_some()
        },
    );
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !status.unwrap().success(),
        "serve accepted a bad profile: {err}"
    );
    assert!(err.contains(want), "expected {want:?} in: {err}");
    assert!(!sock.exists(), "socket left behind");

    let dt = with_bad_profile("dt", &prof).output().unwrap();
    let err = String::from_utf8_lossy(&dt.stderr);
    assert!(!dt.status.success() && err.contains(want), "dt: {err}");
}

#[test]
fn clear_register_outside_its_region_is_refused() {
    serve_refuses(
        "clear = { region = 0, offset = 0x1000, width = 4, mode = \"w1c\" }",
        "outside region 0",
    );
}

#[test]
fn clear_register_in_a_missing_region_is_refused() {
    serve_refuses(
        "clear = { region = 2, offset = 0x2c, width = 4, mode = \"w1c\" }",
        "region 2, which the device does not have",
    );
}

#[test]
fn more_irqs_than_the_device_has_is_refused() {
    let irqs = "[[device.irqs]]\n".repeat(12);
    serve_refuses(
        &format!("clear = {{ region = 0, offset = 0x2c, width = 4, mode = \"w1c\" }}\n{irqs}"),
        "lists 12 IRQs, the device has",
    );
}

/// `serve --device vfio:` on a host without VFIO says so first and never prints
/// commands that would unbind the device from its driver (on a machine where
/// the device named is the network card, that would take the host off the net).
#[test]
fn serve_of_a_vfio_device_without_vfio_says_so_and_suggests_no_unbind() {
    if std::path::Path::new("/dev/vfio").exists() {
        // This host has VFIO: the check this test makes does not apply.
        assert!(
            std::env::var("CI").is_err(),
            "CI machines have no /dev/vfio"
        );
        return;
    }
    let dev = std::fs::read_dir("/sys/bus/pci/devices")
        .unwrap()
        .flatten()
        .find(|e| e.path().join("driver").exists())
        .expect("a PCI device bound to a driver");
    let dir = TempDir::new("novfio");
    let out = Command::new(workspace_bin("vfio-sidecar", "vfio-sidecar"))
        .args(["serve", "--device"])
        .arg(format!("vfio:{}", dev.path().display()))
        .arg("--socket")
        .arg(dir.0.join("s.sock"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("/dev/vfio does not exist"), "{err}");
    assert!(
        !err.contains("unbind") && !err.contains("driver_override"),
        "{err}"
    );
}

/// systemd `Type=notify`: with NOTIFY_SOCKET set, `serve` sends READY=1 once
/// its socket accepts clients (after the seccomp filter is on), and
/// STOPPING=1 when a signal ends it.
#[test]
fn serve_notifies_systemd_readiness() {
    use std::os::unix::net::{UnixDatagram, UnixStream};
    let dir = TempDir::new("notify");
    let notify = dir.0.join("notify.sock");
    let rx = UnixDatagram::bind(&notify).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let sock = dir.0.join("s.sock");
    let mut child = Command::new(workspace_bin("vfio-sidecar", "vfio-sidecar"))
        .args(["serve", "--device", "model:pl330", "--socket"])
        .arg(&sock)
        .env("NOTIFY_SOCKET", &notify)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let n = rx.recv(&mut buf).expect("READY=1 within the watchdog");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.starts_with("READY=1\nSTATUS=listening on "), "{msg}");
    // Ready means ready: the socket accepts a client now.
    UnixStream::connect(&sock).expect("connect after READY=1");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let n = rx.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(child.wait().unwrap().success());
}

/// A shim/backend EOI policy mismatch is refused before the guest starts, with
/// both policies named, instead of a guest that waits for an interrupt until
/// its timeout.
#[test]
fn shim_refuses_an_eoi_policy_the_backend_does_not_serve() {
    let srv = vfio_sidecar_tests::Sidecar::start("model:pl330", &["--eoi", "resample"]);
    let mut child = Command::new(workspace_bin("vmm-shim", "vmm-shim"))
        .args([
            "run",
            "--eoi",
            "clear-register",
            "--timeout",
            "60",
            "--socket",
        ])
        .arg(&srv.socket)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    wait_until("the shim to refuse", Duration::from_secs(20), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!status.unwrap().success(), "{err}");
    assert!(
        err.contains("EOI policy mismatch: the backend serves IRQ 0 with --eoi resample, this run was asked for --eoi clear-register"),
        "{err}"
    );
}

/// Under systemd (JOURNAL_STREAM set) log lines carry journal priorities
/// (`<6>` info, `<4>` warning) instead of timestamps.
#[test]
fn journal_priorities_under_systemd() {
    let dir = TempDir::new("journal");
    let sock = dir.0.join("s.sock");
    // A stale socket file: removed with a warning.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let child = Command::new(workspace_bin("vfio-sidecar", "vfio-sidecar"))
        .args(["serve", "--device", "model:pl330", "--socket"])
        .arg(&sock)
        .env("JOURNAL_STREAM", "8:12345")
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("serve to listen", Duration::from_secs(20), || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    });
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .any(|l| l.starts_with("<4>removing stale socket")),
        "{err}"
    );
    assert!(
        err.lines().any(|l| l.starts_with("<6>listening on ")),
        "{err}"
    );
    assert!(
        err.lines().all(|l| l.starts_with('<')),
        "every line prefixed: {err}"
    );
}
