//! End to end: the `vmm-shim` binary runs its KVM guest (the bare-metal PL330
//! driver) against a real `vfio-sidecar serve` process over the real socket,
//! for each EOI policy. Skipped (with a message) where /dev/kvm is missing; the
//! same MMIO-forwarding and memory-table logic has unit tests in vmm-shim.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vfio_sidecar_tests::{run_ok, workspace_bin, Sidecar, TempDir};

/// Runs `vmm-shim run --json` against `socket`; returns (exit success, summary).
fn shim_run(socket: &std::path::Path, eoi: &str, extra: &[&str]) -> (bool, Value) {
    let shim = workspace_bin("vmm-shim", "vmm-shim");
    let out = Command::new(shim)
        .arg("run")
        .arg("--socket")
        .arg(socket)
        .args([
            "--eoi",
            eoi,
            "--json",
            "--transfers",
            "6",
            "--max-size",
            "4096",
            "--timeout",
            "30",
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no JSON summary ({e}); stdout: {stdout}\nstderr: {stderr}"));
    (out.status.success(), v)
}

fn all_verified(v: &Value) {
    let n = v["transfers"].as_array().unwrap().len();
    assert_eq!(n, 7, "6 transfers + the deliberate fault");
    assert_eq!(v["failed"], 0, "{v:#}");
    assert_eq!(v["verified"].as_u64().unwrap() as usize, n);
    assert!(v["bytes_copied"].as_u64().unwrap() > 0);
    for t in v["transfers"].as_array().unwrap() {
        assert_eq!(t["verdict"]["ok"], true, "{t:#}");
    }
    // PrimeCell identity as the guest read it through trapped MMIO
    assert_eq!(v["device"]["pcell_id"], 0xb105_f00du64);
    assert_eq!(
        v["device"]["periph_id"].as_u64().unwrap() & 0xfffff,
        0x41330
    );
    assert!(v["mmio_per_region"]["0"].as_u64().unwrap() > 7 * 8);
}

fn irq(v: &Value) -> (u64, u64) {
    let s = &v["backend_irq"];
    assert!(s.is_object(), "backend reported no IRQ_STATS: {v:#}");
    (
        s["device_events"].as_u64().unwrap(),
        s["host_interrupts"].as_u64().unwrap(),
    )
}

#[test]
fn guest_drives_pl330_for_each_eoi_policy() {
    if !vfio_sidecar_tests::kvm_usable() {
        return;
    }
    for eoi in ["clear-register", "resample", "first-access"] {
        let backend = Sidecar::start("model:pl330", &["--eoi", eoi]);
        let (ok, v) = shim_run(&backend.socket, eoi, &[]);
        assert!(ok, "vmm-shim failed for {eoi}: {v:#}");
        all_verified(&v);
        assert_eq!(v["exec_negotiated"], true);
        assert_eq!(v["fault_expected"], true);
        assert_eq!(
            v["fault_seen"], true,
            "the no-exec microcode page must fault"
        );
        let (events, host) = irq(&v);
        assert_eq!(events, 6, "one DMASEV per successful transfer ({eoi})");
        match eoi {
            "first-access" => assert!(
                host > events,
                "first-access re-fires: {host} host interrupts for {events} events"
            ),
            _ => assert_eq!(
                host, events,
                "{eoi}: exactly one host interrupt per device event"
            ),
        }
        let guest = v["guest_interrupts"].as_u64().unwrap();
        let spurious = v["guest_spurious"].as_u64().unwrap();
        assert_eq!(
            guest - spurious,
            events,
            "{eoi}: the guest handled each event once"
        );
        if eoi != "first-access" {
            assert_eq!(spurious, 0, "{eoi}: no interrupt without an event");
        }
    }
}

#[test]
fn fault_kinds_and_exec_all() {
    if !vfio_sidecar_tests::kvm_usable() {
        return;
    }
    // Without the DMAGO gate the channel starts and faults on instruction fetch.
    let backend = Sidecar::start("model:pl330", &["--no-dmago-gate"]);
    let (ok, v) = shim_run(&backend.socket, "clear-register", &[]);
    assert!(ok, "{v:#}");
    all_verified(&v);
    let f = v["transfers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["transfer"]["expect_fault"] == true)
        .unwrap();
    assert_ne!(
        f["record"]["fsrc"].as_u64().unwrap() & 1,
        0,
        "channel 0 faulted: {f:#}"
    );
    assert_ne!(
        f["record"]["ftr"].as_u64().unwrap(),
        0,
        "FTR0 says why: {f:#}"
    );
    drop(backend);

    // --exec-all: everything executable, the same program completes.
    let backend = Sidecar::start("model:pl330", &[]);
    let (ok, v) = shim_run(&backend.socket, "clear-register", &["--exec-all"]);
    assert!(ok, "{v:#}");
    all_verified(&v);
    assert_eq!(v["fault_expected"], false);
    assert_eq!(v["fault_seen"], false);
    assert!(v["dma_table"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["prot"]["exec"] == true));
    assert_eq!(
        irq(&v).0,
        7,
        "the former fault transfer signalled its event too"
    );
}

/// `vmm-shim demo --stats-socket`: while the demo's guest runs, the
/// statistics socket shows that client's live session (its pid, IRQ events
/// growing from zero); the demo passes as without it.
#[test]
fn demo_guest_is_live_on_the_statistics_socket() {
    if !vfio_sidecar_tests::kvm_usable() {
        return;
    }
    use vfio_sidecar::probe::stats::read_snapshot;
    let dir = TempDir::new("demo-stats");
    let stats = dir.0.join("demo.stats");
    let shim = workspace_bin("vmm-shim", "vmm-shim");
    let _ = workspace_bin("vfio-sidecar", "vfio-sidecar");
    let mut child = Command::new(&shim)
        .args([
            "demo",
            "--transfers",
            "47",
            "--max-size",
            "32768",
            "--stats-socket",
        ])
        .arg(&stats)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Poll until a snapshot shows the guest's session with events, or the demo ends.
    let mut live = None;
    while child.try_wait().unwrap().is_none() && live.is_none() {
        if let Ok(s) = read_snapshot(&stats, 5) {
            live = s
                .session
                .filter(|v| v.counters.irqs.iter().any(|r| r.device_events > 0));
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("result        PASS"),
        "{}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let live = live.expect("the statistics socket showed the running guest's session");
    assert_eq!(live.number, 1, "the demo's backend serves one session");
    assert!(
        !stats.exists(),
        "statistics socket removed with the backend"
    );
}

#[test]
fn demo_runs_end_to_end() {
    if !vfio_sidecar_tests::kvm_usable() {
        return;
    }
    let shim = workspace_bin("vmm-shim", "vmm-shim");
    let _ = workspace_bin("vfio-sidecar", "vfio-sidecar");
    let out = run_ok(
        Command::new(&shim)
            .args(["demo", "--transfers", "3", "--max-size", "1024"])
            .env("RUST_LOG", "warn"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("verified      4/4 transfers"), "{stdout}");
    assert!(stdout.contains("result        PASS"), "{stdout}");

    // --compare: one fresh backend per EOI policy, then the table
    let out = run_ok(
        Command::new(&shim)
            .args(["demo", "--compare", "--transfers", "3"])
            .args(["--max-size", "1024"])
            .env("RUST_LOG", "warn"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for p in ["clear-register", "resample", "first-access"] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(p) && l.contains("PASS"))
            .unwrap_or_else(|| panic!("no PASS row for {p}: {stdout}"));
        let per_event = row.split_whitespace().nth(5).unwrap();
        if p == "first-access" {
            assert!(per_event.parse::<f64>().unwrap() > 1.0, "{row}");
        } else {
            assert_eq!(per_event, "1.00", "{row}");
        }
    }
}

#[test]
fn dtb_holds_the_backend_device_node() {
    // No KVM needed: only the vfio-user conversation and the tree.
    let backend = Sidecar::start("model:pl330", &[]);
    let out_path = backend.dir().join("guest.dtb");
    let shim = workspace_bin("vmm-shim", "vmm-shim");
    run_ok(
        Command::new(shim)
            .arg("dtb")
            .arg("--socket")
            .arg(&backend.socket)
            .arg("-o")
            .arg(&out_path)
            .env("RUST_LOG", "warn"),
    );
    let dtb = std::fs::read(&out_path).unwrap();
    assert_eq!(&dtb[..4], &0xd00d_feedu32.to_be_bytes(), "FDT magic");
    let text = String::from_utf8_lossy(&dtb);
    assert!(text.contains("arm,pl330"), "device compatible present");
    assert!(
        text.contains("apb_pclk"),
        "the clock Linux's AMBA bus needs"
    );
    assert!(
        text.contains("interrupt-controller"),
        "a complete guest tree"
    );
    dt_schema_check(backend.dir(), &out_path);
}

/// Validates `dtb` with dt-schema against the kernel's binding schemas.
fn dt_schema_check(dir: &std::path::Path, dtb: &std::path::Path) {
    let errors = vfio_sidecar_tests::dt_schema::DtSchema::obtain(dir).errors(dtb);
    assert!(errors.is_empty(), "dt-schema errors: {errors:#?}");
}

/// Sum of (device events, host interrupts) over the IRQ rows of `c`.
/// Device events and host interrupts of IRQ index 0, the line the x86 guest
/// uses (its deliberate fault also raises the PL330's abort line, index 8,
/// which the x86 shim does not wire: an event without a host interrupt).
fn irq_sums(c: &vfio_sidecar::stats::Counters) -> (u64, u64) {
    c.irqs
        .iter()
        .filter(|r| r.index == 0)
        .fold((0, 0), |(e, h), r| {
            (e + r.device_events, h + r.host_interrupts)
        })
}

#[test]
fn repeated_shim_runs_report_per_session_counters() {
    if !vfio_sidecar_tests::kvm_usable() {
        return;
    }
    use vfio_sidecar::probe::stats::read_snapshot;
    let dir = TempDir::new("shim-stats");
    let stats = dir.0.join("s.stats");
    let backend = Sidecar::start(
        "model:pl330",
        &[
            "--eoi",
            "clear-register",
            "--stats-socket",
            stats.to_str().unwrap(),
        ],
    );
    // Two runs against one backend: each reports its own 6 events, one
    // host interrupt per device event (1.00), nothing carried over.
    for run in 1..=2u64 {
        let (ok, v) = shim_run(&backend.socket, "clear-register", &[]);
        assert!(ok, "run {run}: {v:#}");
        all_verified(&v);
        assert_eq!(irq(&v), (6, 6), "run {run}: per-session IRQ_STATS");
        let s = read_snapshot(&stats, 5).unwrap();
        assert_eq!(s.process.sessions, run);
        assert_eq!(irq_sums(&s.process.counters), (6 * run, 6 * run));
    }
    // While a longer guest runs, the statistics socket shows that client's
    // live session (its pid, counters growing from zero).
    let shim = workspace_bin("vmm-shim", "vmm-shim");
    let mut child = Command::new(shim)
        .args(["run", "--socket"])
        .arg(&backend.socket)
        .args([
            "--transfers",
            "47",
            "--max-size",
            "40000",
            "--timeout",
            "60",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(60);
    let live = loop {
        let s = read_snapshot(&stats, 5).unwrap();
        if let Some(sess) = s.session.filter(|v| v.client.pid == pid) {
            if irq_sums(&sess.counters).0 > 0 {
                break (sess, s.process);
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the guest ended before its session was seen live"
        );
        assert!(Instant::now() < deadline, "no live session");
        std::thread::sleep(Duration::from_millis(5));
    };
    let (sess, process) = live;
    assert_eq!(sess.number, 3);
    let (events, host) = irq_sums(&sess.counters);
    assert!(events <= 48, "session counts from zero: {events}");
    assert!(
        host <= events + 1,
        "{host} host interrupts for {events} events"
    );
    assert_eq!(irq_sums(&process.counters).0, 12 + events);
    assert!(sess.counters.dma.read_bytes.get() > 0);
    assert!(child.wait().unwrap().success());
}
