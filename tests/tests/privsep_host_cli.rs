//! `vfio-sidecar list` and `vfio-sidecar bind` as processes, on fake sysfs trees:
//! a host with VFIO (bound devices, a candidate, a non-viable group), a host
//! without VFIO (information, exit code 0), `bind --dry-run` (prints the writes,
//! changes nothing), `bind` for real on the fake tree (writes exactly the plan;
//! no kernel rebinds, so it reports the device still on its old driver), and the
//! error exits.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vfio_sidecar::testing::FakeSysfs;
use vfio_sidecar_tests::workspace_bin;

/// A fake sysfs tree (and /dev) for the binary, with or without VFIO.
struct Tree(FakeSysfs);

impl std::ops::Deref for Tree {
    type Target = FakeSysfs;
    fn deref(&self) -> &FakeSysfs {
        &self.0
    }
}

impl Tree {
    fn new(with_vfio: bool) -> Tree {
        let t = FakeSysfs::new();
        if with_vfio {
            t.vfio_drivers();
            t.dev_vfio_container();
        }
        Tree(t)
    }

    fn run(&self, args: &[&str]) -> (Output, String, String) {
        let out = Command::new(workspace_bin("vfio-sidecar", "vfio-sidecar"))
            .args(args)
            .arg("--sysfs")
            .arg(&self.root)
            .output()
            .unwrap();
        let so = String::from_utf8_lossy(&out.stdout).into_owned();
        let se = String::from_utf8_lossy(&out.stderr).into_owned();
        (out, so, se)
    }

    fn list(&self, json: bool) -> (Output, String, String) {
        let dev = self.dev();
        let mut a = vec!["list", "--dev", dev.to_str().unwrap()];
        if json {
            a.push("--json");
        }
        self.run(&a)
    }
}

/// A host with VFIO: an edu on vfio-pci (viable group with a root port), a NIC
/// on vfio-pci whose group sibling is on e1000, a PL330 candidate on dma-pl330.
fn vfio_host() -> (Tree, PathBuf) {
    let t = Tree::new(true);
    let pl330 = t.typical_devices();
    (t, pl330)
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap()
}

#[test]
fn list_on_a_vfio_host() {
    let (t, _) = vfio_host();
    let (out, so, se) = t.list(false);
    assert!(out.status.success(), "{se}");
    assert!(so.contains("VFIO available: yes"), "{so}");
    assert!(!so.contains("not available"), "{so}");
    let row = |name: &str| {
        so.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no row {name}: {so}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        row("0000:00:03.0"),
        [
            "pci",
            "0000:00:03.0",
            "vfio-pci",
            "5",
            "edu",
            "1234:11e8",
            "ready"
        ]
    );
    assert_eq!(row("0000:00:04.0")[6..], ["group", "not", "viable"]);
    assert_eq!(row("ff240000.dma-controller")[4], "pl330");
    assert!(
        so.contains("vfio-sidecar bind ff240000.dma-controller"),
        "{so}"
    );
    assert!(
        so.contains("IOMMU group 7 not viable: 0000:00:04.1 (e1000)"),
        "{so}"
    );
    // The root port and the e1000 are not of interest.
    assert!(!so.contains("\npci   0000:00:1c.0"), "{so}");

    let (out, so, se) = t.list(true);
    assert!(out.status.success(), "{se}");
    let v: serde_json::Value = serde_json::from_str(&so).unwrap();
    assert_eq!(v["vfio"]["dev_vfio_container"], true);
    assert_eq!(v["vfio"]["iommu_groups"], 3);
    let devs = v["devices"].as_array().unwrap();
    let names: Vec<&str> = devs.iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["ff240000.dma-controller", "0000:00:03.0", "0000:00:04.0"]
    );
    assert_eq!(devs[0]["profile"], "pl330");
    assert_eq!(devs[0]["bound_to_vfio"], false);
    assert_eq!(devs[1]["profile"], "edu");
    assert_eq!(devs[2]["group_viable"], false);
}

#[test]
fn list_on_a_host_without_vfio_is_information() {
    let t = Tree::new(false);
    t.device(
        "amba",
        "ff240000.dma-controller",
        Some("dma-pl330"),
        None,
        &[("id", b"00041330\n")],
    );
    let (out, so, se) = t.list(false);
    assert_eq!(out.status.code(), Some(0), "{se}");
    assert!(so.starts_with("VFIO is not available on this host"), "{so}");
    for want in [
        "intel_iommu=on",
        "modprobe vfio-pci",
        "modprobe vfio-platform",
    ] {
        assert!(so.contains(want), "lacks {want:?}: {so}");
    }
    // The candidate is listed with the modprobe first.
    assert!(so.contains("modprobe vfio-amba"), "{so}");
    let (out, so, _) = t.list(true);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_str(&so).unwrap();
    assert_eq!(v["vfio"]["dev_vfio_container"], false);
    assert!(!v["vfio"]["hints"].as_array().unwrap().is_empty());

    // An extra profile file makes more devices candidates.
    let prof = t.root.parent().unwrap().join("extra.toml");
    fs::write(
        &prof,
        "[[device]]\nname = \"my-uart\"\ncompatible = [\"arm,pl011\"]\n\
         match = [{ compatible = \"arm,pl011\" }]\n",
    )
    .unwrap();
    t.device(
        "platform",
        "9000000.uart",
        Some("uart-pl011"),
        None,
        &[("of_node/compatible", b"arm,pl011\0arm,primecell\0")],
    );
    let (_, so, _) = t.list(false);
    assert!(!so.contains("9000000.uart"), "{so}");
    let (out, so, se) = t.run(&["list", "--profile", prof.to_str().unwrap()]);
    assert!(out.status.success(), "{se}");
    assert!(so.contains("9000000.uart"), "{so}");
    assert!(so.contains("my-uart"), "{so}");

    // A missing sysfs is an error (exit 1).
    let out = Command::new(workspace_bin("vfio-sidecar", "vfio-sidecar"))
        .args(["list", "--sysfs", "/nonexistent-sysfs"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is sysfs mounted?"));
}

#[test]
fn bind_dry_run_and_for_real() {
    let (t, pl330) = vfio_host();
    let r = t.root.display().to_string();
    let override_f = pl330.join("driver_override");
    let unbind_f = t.root.join("bus/amba/drivers/dma-pl330/unbind");
    let probe_f = t.root.join("bus/amba/drivers_probe");

    let (out, so, se) = t.run(&["bind", "ff240000.dma-controller", "--dry-run"]);
    assert!(out.status.success(), "{se}");
    assert_eq!(
        so.lines().collect::<Vec<_>>(),
        [
            format!(
                "echo vfio-amba > {r}/bus/amba/devices/ff240000.dma-controller/driver_override"
            ),
            format!("echo ff240000.dma-controller > {r}/bus/amba/drivers/dma-pl330/unbind"),
            format!("echo ff240000.dma-controller > {r}/bus/amba/drivers_probe"),
        ]
    );
    for f in [&override_f, &unbind_f, &probe_f] {
        assert_eq!(read(f), "", "{} written by --dry-run", f.display());
    }
    // The serve --device spelling gives the same plan.
    let dev = format!("vfio:{}", pl330.display());
    let (_, so2, _) = t.run(&["bind", &dev, "--dry-run"]);
    assert_eq!(so2, so);

    // For real: the writes happen; the fake kernel does not rebind: exit 1.
    let (out, so, se) = t.run(&["bind", "ff240000.dma-controller"]);
    assert_eq!(out.status.code(), Some(1), "{so}{se}");
    assert_eq!(read(&override_f), "vfio-amba");
    assert_eq!(read(&unbind_f), "ff240000.dma-controller");
    assert_eq!(read(&probe_f), "ff240000.dma-controller");
    assert!(
        se.contains("is bound to dma-pl330 after the writes, expected vfio-amba"),
        "{se}"
    );

    // Already bound: nothing to do.
    let (out, so, _) = t.run(&["bind", "0000:00:03.0", "--dry-run"]);
    assert!(out.status.success());
    assert!(so.contains("already bound to vfio-pci"), "{so}");
    // Group sibling on a host driver: warned.
    t.device(
        "pci",
        "0000:00:05.0",
        Some("ahci"),
        Some(7),
        &[("vendor", b"0x1234\n"), ("device", b"0x11e8\n")],
    );
    let (out, so, _) = t.run(&["bind", "0000:00:05.0", "--dry-run"]);
    assert!(out.status.success());
    assert!(
        so.starts_with("# warning: IOMMU group 7 also holds 0000:00:04.1 (e1000)"),
        "{so}"
    );

    // Errors: unknown device; VFIO driver not loaded.
    let (out, _, se) = t.run(&["bind", "nonexistent", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(se.contains("run `vfio-sidecar list`"), "{se}");
    fs::remove_dir_all(t.root.join("bus/pci/drivers/vfio-pci")).unwrap();
    let (out, _, se) = t.run(&["bind", "0000:00:04.1", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        se.contains("driver vfio-pci is not loaded: run `modprobe vfio-pci`"),
        "{se}"
    );
}
