//! Cross-process: `vfio-sidecar probe` against running `vfio-sidecar serve`
//! instances (edu PCI model, PL330 AMBA model, scratch model with a sparse
//! area), its JSON, `--read`, `--plain`, and every connection error it must
//! explain (no socket, not a socket, refused, busy, not vfio-user, timeout).
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use vfio_sidecar_tests::{workspace_bin, Sidecar, TempDir};

fn probe(args: &[&str]) -> Output {
    let bin = workspace_bin("vfio-sidecar", "vfio-sidecar");
    Command::new(bin)
        .arg("probe")
        .args(args)
        .output()
        .expect("run vfio-sidecar probe")
}

fn probe_json(sock: &std::path::Path, extra: &[&str]) -> Value {
    let mut args = vec!["--socket", sock.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let out = probe(&args);
    assert!(
        out.status.success(),
        "probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn probe_err(args: &[&str]) -> String {
    let out = probe(args);
    assert!(!out.status.success(), "probe should fail: {args:?}");
    assert!(out.stdout.is_empty());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn edu_pci_device() {
    let srv = Sidecar::start("model:edu", &[]);
    let j = probe_json(&srv.socket, &["--read", "config:0:4", "--read", "0:0:4"]);
    assert_eq!(j["version"], "0.1");
    assert_eq!(j["capabilities"]["max_dma_maps"], 65535);
    assert_eq!(j["capabilities"]["migration"], false);
    assert_eq!(j["capabilities"]["sidecar"]["exec_enforced"], true);
    assert_eq!(j["device"]["kind"], "pci");
    assert_eq!(j["device"]["num_regions"], 9);
    assert_eq!(j["device"]["num_irqs"], 5);
    assert_eq!(j["pci"]["vendor"], 0x1234);
    assert_eq!(j["pci"]["device"], 0x11e8);
    assert_eq!(j["pci"]["class"], 0x00ff00);
    assert_eq!(j["pci"]["capabilities"], serde_json::json!([5]));
    let regions = j["regions"].as_array().unwrap();
    let names: Vec<&str> = regions
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["BAR0", "BAR1", "BAR2", "BAR3", "BAR4", "BAR5", "ROM", "config", "VGA"]
    );
    assert_eq!(regions[0]["size"], 1 << 20);
    assert_eq!(
        regions[0]["trapped"],
        serde_json::json!([{"start": 0, "end": 1 << 20}])
    );
    assert_eq!(regions[7]["size"], 256);
    assert_eq!(regions[8]["size"], 0);
    let irqs = j["irqs"].as_array().unwrap();
    assert_eq!(irqs[0]["name"], "INTx");
    assert_eq!(irqs[0]["count"], 1);
    assert_eq!(irqs[0]["eoi"]["policy"], "clear-register");
    assert_eq!(irqs[0]["eoi"]["clear"]["offset"], 0x64);
    assert_eq!(irqs[1]["name"], "MSI");
    assert_eq!(irqs[1]["trigger"], "edge-rising");
    assert_eq!(irqs[1]["eoi"]["policy"], "none");
    assert_eq!(irqs[2]["count"], 0);
    assert_eq!(irqs[0]["stats"][0]["host_interrupts"], 0);
    assert!(j["device_tree"].is_null(), "no DT node for PCI");
    let reads = j["reads"].as_array().unwrap();
    assert_eq!(reads[0]["hex"], "3412e811");
    assert_eq!(reads[1]["hex"], "ed000001", "edu ID 0x010000ed");
}

#[test]
fn pl330_text_with_device_tree_and_plain_mode() {
    let srv = Sidecar::start("model:pl330", &[]);
    let sock = srv.socket.to_str().unwrap();
    let out = probe(&["--socket", sock]);
    assert!(out.status.success());
    let t = String::from_utf8(out.stdout).unwrap();
    for want in [
        "Protocol: vfio-user 0.1",
        "Extension org.vfio-sidecar: version 1 dma_exec+ platform+ eoi+ exec_enforced+",
        "Device: AMBA [flags 0xd: RESET PLATFORM AMBA], 1 regions, 9 IRQ indices",
        "compatible \"arm,pl330\", \"arm,primecell\"",
        "Region 0 (pl330-regs): size 0x1000 (4 KiB) [READ WRITE]",
        "Trapped: all (no MMAP)",
        "IRQ 3 (irq3): count 1 [EVENTFD MASKABLE AUTOMASKED]; level-high; EOI clear-register (region 0 offset 0x2c width 4 w1c bit 3)",
        // irq_abort: the index after the eight events, EOI by the DMAKILL written to DBGCMD.
        "IRQ 8 (abort): count 1 [EVENTFD MASKABLE AUTOMASKED]; level-high; EOI clear-register (region 0 offset 0xd04 width 4 write-any)",
        // The server sends a DTB fragment with the description: decoded.
        "Device tree (the server's DTB fragment):",
        "dma-controller@c000000 {",
        "compatible = \"arm,pl330\", \"arm,primecell\";",
        "clock-names = \"apb_pclk\";",
    ] {
        assert!(t.contains(want), "missing {want:?} in:\n{t}");
    }
    let j = probe_json(&srv.socket, &[]);
    assert_eq!(j["device_tree_source"], "server-dtb");
    assert!(j["dtb_bytes"].as_u64().unwrap() > 0);
    assert!(j["device_tree"]
        .as_str()
        .unwrap()
        .contains("reg = <0x0 0xc000000 0x0 0x1000>;"));
    // Plain: what QEMU would see — no extension, so no description.
    let j = probe_json(&srv.socket, &["--plain"]);
    assert!(j["capabilities"]["sidecar"].is_null());
    assert!(j["description"].is_null());
    assert!(j["device_tree"].is_null());
    assert_eq!(j["regions"][0]["size"], 4096);
    assert!(j["regions"][0]["name"].is_null());
    assert!(j["irqs"][0]["eoi"].is_null());
    // A read wider than the PL330's 32-bit registers: done as 32-bit reads
    // (the PrimeCell ID block); an unaligned one is refused with the reason.
    let j = probe_json(&srv.socket, &["--read", "0:0xfe0:32"]);
    assert_eq!(
        j["reads"][0]["hex"],
        "30000000130000002400000000000000\
         0d000000f000000005000000b1000000"
    );
    let e = probe_err(&["--socket", sock, "--read", "0:0xfe2:6"]);
    assert!(e.contains("aligned 4-byte reads"), "{e}");
}

#[test]
fn scratch_sparse_area_and_trapped_page() {
    let srv = Sidecar::start("model:scratch", &[]);
    let j = probe_json(&srv.socket, &[]);
    let r = &j["regions"][0];
    assert_eq!(r["size"], 0x2000);
    assert!(r["flag_names"]
        .as_array()
        .unwrap()
        .contains(&Value::from("MMAP")));
    assert_eq!(
        r["sparse"],
        serde_json::json!([{"start": 0x1000, "end": 0x2000}])
    );
    assert_eq!(
        r["trapped"],
        serde_json::json!([{"start": 0, "end": 0x1000}])
    );
    let out = probe(&["-s", srv.socket.to_str().unwrap()]);
    let t = String::from_utf8(out.stdout).unwrap();
    assert!(
        t.contains("Sparse mmap (fd offset 0x0): 0x1000-0x2000"),
        "{t}"
    );
    assert!(t.contains("Trapped pages: 0x0-0x1000"), "{t}");
    // A --read naming an unknown region is refused with the known names.
    let e = probe_err(&["-s", srv.socket.to_str().unwrap(), "--read", "nope:0:4"]);
    assert!(e.contains("no region named \"nope\""), "{e}");
    // Out of bounds: the server's error is reported.
    let e = probe_err(&["-s", srv.socket.to_str().unwrap(), "--read", "0:0x1ffe:4"]);
    assert!(e.contains("Invalid argument"), "{e}");
}

#[test]
fn busy_server_is_reported() {
    let srv = Sidecar::start("model:scratch", &[]);
    let _c = srv.connect(true);
    let e = probe_err(&["--socket", srv.socket.to_str().unwrap()]);
    assert!(e.contains("is busy (EBUSY)"), "{e}");
}

#[test]
fn connection_errors_are_explained() {
    let dir = TempDir::new("probe-err");
    let missing = dir.0.join("missing.sock");
    let e = probe_err(&["--socket", missing.to_str().unwrap()]);
    assert!(e.contains("no such socket"), "{e}");

    let file = dir.0.join("file");
    std::fs::write(&file, b"x").unwrap();
    let e = probe_err(&["--socket", file.to_str().unwrap()]);
    assert!(e.contains("is not a socket"), "{e}");

    // A stale socket file: bound, then the listener closed.
    let stale = dir.0.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let e = probe_err(&["--socket", stale.to_str().unwrap()]);
    assert!(e.contains("connection refused"), "{e}");

    // A server that answers with garbage (an HTTP-ish banner) and closes.
    let junk = dir.0.join("junk.sock");
    let l = UnixListener::bind(&junk).unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    });
    let e = probe_err(&["--socket", junk.to_str().unwrap()]);
    assert!(e.contains("is not a vfio-user server"), "{e}");
    t.join().unwrap();

    // A server that closes unanswered, as the backend does to a peer its
    // --allow-uid policy refuses: the message names that cause.
    let closing = dir.0.join("closing.sock");
    let l = UnixListener::bind(&closing).unwrap();
    let t = std::thread::spawn(move || drop(l.accept().unwrap()));
    let e = probe_err(&["--socket", closing.to_str().unwrap()]);
    assert!(
        e.contains("closed the connection without answering VERSION") && e.contains("--allow-uid"),
        "{e}"
    );
    t.join().unwrap();

    // A server that accepts and never answers.
    let silent = dir.0.join("silent.sock");
    let l = UnixListener::bind(&silent).unwrap();
    let t = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        std::thread::sleep(Duration::from_secs(3));
        drop(s);
    });
    let e = probe_err(&["--socket", silent.to_str().unwrap(), "--timeout", "1"]);
    assert!(
        e.contains("timed out after 1 s waiting for the reply to VERSION"),
        "{e}"
    );
    t.join().unwrap();
}
