//! Validates the generated PL330 DT node with dt-schema (`dt-validate`) against the
//! Linux kernel's binding schemas (`arm,pl330`, `arm,primecell`, dma-common,
//! dma-controller). Tools and schemas come from `scripts/dt-tools.sh` (a venv and
//! Debian's kernel source package, cached); without them this test fails and says why.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use vfio_sidecar::dt::{device_tree, DtDevice, DtParams, Value};
use vfio_sidecar::profile::ProfileSet;
use vfio_sidecar_tests::dt_schema::DtSchema;
use vfio_sidecar_tests::workspace_bin;

struct TmpDir(PathBuf);
impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn pl330_node_passes_dt_schema() {
    let dir =
        TmpDir(std::env::temp_dir().join(format!("vfio-sidecar-dtschema-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let schema = DtSchema::obtain(&dir.0);

    let set = ProfileSet::default();
    let p = set.by_name("pl330").unwrap();
    // Per-event IRQs (8) and irq_abort, and one combined IRQ.
    for n in [9u32, 1] {
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
        let errors = schema.errors(&dtb);
        assert!(errors.is_empty(), "dt-schema errors: {errors:#?}");
    }

    // The CLI path: `vfio-sidecar dt --device model:pl330... --format dtb`.
    for dev in [
        "model:pl330",
        "model:pl330,combined-irq",
        // 31 events and irq_abort: the binding's maximum of 32 interrupts.
        "model:pl330,events=31",
    ] {
        let dtb = dir.0.join("cli.dtb");
        let out = Command::new(workspace_bin("vfio-sidecar", "vfio-sidecar"))
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
        let errors = schema.errors(&dtb);
        assert!(errors.is_empty(), "{dev}: dt-schema errors: {errors:#?}");
    }
    let out = Command::new(workspace_bin("vfio-sidecar", "vfio-sidecar"))
        .args(["dt", "--device", "model:pl330,events=2", "--format", "dts"])
        .output()
        .unwrap();
    let dts = String::from_utf8(out.stdout).unwrap();
    assert!(
        dts.contains("interrupts = <0x0 0x20 0x4>, <0x0 0x21 0x4>, <0x0 0x22 0x4>;"),
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
    let errors = schema.errors(&bad);
    assert!(
        errors.iter().any(|e| e.to_string().contains("#dma-cells")),
        "validator did not flag #dma-cells = 2: {errors:#?}"
    );
}
