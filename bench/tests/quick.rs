//! CI smoke run: `vfio-sidecar-bench --quick` must exit 0 and print every
//! section (no timing assertions: figures are machine-dependent).

use std::process::Command;

#[test]
fn quick_run_prints_every_section() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vfio-sidecar-bench"));
    cmd.arg("--quick");
    let dir = std::env::temp_dir().join(format!("vfio-sidecar-bench-test-{}", std::process::id()));
    let json = dir.join("out.json");
    cmd.arg("--json").arg(&json).arg("--plot").arg(&dir);
    // Is KVM usable by this process?
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let mut sections = vec!["== 1.", "== 3.", "== 4.", "== 5.", "== 6."];
    if kvm {
        sections.insert(1, "== 2.");
    } else {
        eprintln!("skipping section 2: /dev/kvm is not usable here");
        cmd.args(["--sections", "1,3,4,5,6"]);
    }
    let one_cpu = std::thread::available_parallelism().map_or(true, |n| n.get() < 2);
    if one_cpu {
        eprintln!("only one CPU: running the 1-core placement only");
        cmd.args(["--placements", "same"]);
    }
    let out = cmd.output().expect("run vfio-sidecar-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    for s in sections {
        assert!(stdout.contains(s), "section {s} missing:\n{stdout}");
    }
    for table_word in [
        "x p50",
        "irq/ev",
        "exits/acc",
        "memcpy GB/s",
        "UNMAP p50",
        "msg/map",
    ] {
        if table_word == "exits/acc" && !kvm {
            continue;
        }
        assert!(
            stdout.contains(table_word),
            "{table_word} missing:\n{stdout}"
        );
    }
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written"))
            .expect("valid JSON");
    for key in ["mmio", "eoi", "dma_map", "pl330_throughput", "dma_messages"] {
        assert!(
            j.get(key)
                .and_then(|v| v.as_array())
                .is_some_and(|a| !a.is_empty()),
            "JSON {key} empty"
        );
    }
    for png in ["benchmarks-dma-map.png", "benchmarks-pl330-throughput.png"] {
        let b = std::fs::read(dir.join(png)).expect("plot written");
        assert!(b.starts_with(b"\x89PNG"), "{png} is not a PNG");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
