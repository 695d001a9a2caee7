//! Validates the generated PL330 DT node with dt-schema (`dt-validate`) against the
//! kernel bindings in `shared/dt-bindings`. CI installs the tool with
//! `pip install dtschema`; without it this test fails and says so.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use vfio_sidecar::dt::{device_tree, DtDevice, DtParams, Value};
use vfio_sidecar::profile::ProfileSet;

fn shared_dir() -> PathBuf {
    let ci = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared");
    if ci.join("dt-bindings").is_dir() {
        return ci;
    }
    PathBuf::from("/work/shared")
}

fn tool(name: &str) -> bool {
    Command::new(name)
        .arg("--help")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

struct TmpDir(PathBuf);
impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs dt-validate on `dtb`, returns the JSON diagnostics with level "error".
fn validate(dir: &Path, schema: &Path, dtb: &Path) -> Vec<serde_json::Value> {
    let json = dir.join(format!(
        "{}.json",
        dtb.file_name().unwrap().to_string_lossy()
    ));
    let out = Command::new("dt-validate")
        .arg("-s")
        .arg(schema)
        .arg(dtb)
        .arg("--json-output")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dt-validate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|d| d["level"] == "error")
        .cloned()
        .collect()
}

#[test]
fn pl330_node_passes_dt_schema() {
    assert!(
        tool("dt-validate") && tool("dt-mk-schema"),
        "dt-validate/dt-mk-schema not found: run `pip install dtschema`"
    );
    let dir =
        TmpDir(std::env::temp_dir().join(format!("vfio-sidecar-dtschema-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let schema = dir.0.join("schema.json");
    let out = Command::new("dt-mk-schema")
        .arg("-j")
        .arg(shared_dir().join("dt-bindings"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dt-mk-schema: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&schema, &out.stdout).unwrap();

    let set = ProfileSet::default();
    let p = set.by_name("pl330").unwrap();
    // Per-event IRQs (8) and one combined IRQ.
    for n in [8u32, 1] {
        let tree = device_tree(
            p,
            &DtDevice {
                region_sizes: vec![0x1000],
                num_irqs: n,
            },
            &DtParams::default(),
        )
        .unwrap();
        let dtb = dir.0.join(format!("pl330-{n}.dtb"));
        std::fs::write(&dtb, tree.to_dtb().unwrap()).unwrap();
        let errors = validate(&dir.0, &schema, &dtb);
        assert!(errors.is_empty(), "dt-schema errors: {errors:#?}");
    }

    // The CLI path: `vfio-sidecar dt --device model:pl330... --format dtb`.
    for dev in [
        "model:pl330",
        "model:pl330,combined-irq",
        "model:pl330,events=32",
    ] {
        let dtb = dir.0.join("cli.dtb");
        let out = Command::new(env!("CARGO_BIN_EXE_vfio-sidecar"))
            .args([
                "dt",
                "--device",
                dev,
                "--format",
                "dtb",
                "--base",
                "0x9000000",
                "--irq-base",
                "40",
                "-o",
            ])
            .arg(&dtb)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{dev}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let errors = validate(&dir.0, &schema, &dtb);
        assert!(errors.is_empty(), "{dev}: dt-schema errors: {errors:#?}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vfio-sidecar"))
        .args(["dt", "--device", "model:pl330,events=2", "--format", "dts"])
        .output()
        .unwrap();
    let dts = String::from_utf8(out.stdout).unwrap();
    assert!(
        dts.contains("interrupts = <0x0 0x20 0x4>, <0x0 0x21 0x4>;"),
        "{dts}"
    );

    // Negative control: the validator must catch a broken node (#dma-cells = 2),
    // so an empty report above means something.
    let mut tree = device_tree(
        p,
        &DtDevice {
            region_sizes: vec![0x1000],
            num_irqs: 1,
        },
        &DtParams::default(),
    )
    .unwrap();
    let dma = tree
        .children
        .iter_mut()
        .find(|c| c.name.starts_with("dma-controller@"))
        .unwrap();
    for (k, v) in dma.props.iter_mut() {
        if k == "#dma-cells" {
            *v = Value::Cells(vec![vfio_sidecar::dt::Cell::U32(2)], 1);
        }
    }
    let bad = dir.0.join("bad.dtb");
    std::fs::write(&bad, tree.to_dtb().unwrap()).unwrap();
    let errors = validate(&dir.0, &schema, &bad);
    assert!(
        errors.iter().any(|e| e.to_string().contains("#dma-cells")),
        "validator did not flag #dma-cells = 2: {errors:#?}"
    );
}
