//! dt-schema validation against the Linux kernel's own DT binding schemas.
//!
//! Both come from the project's cache, prepared by `scripts/dt-tools.sh`: dt-schema
//! in a venv (never the system Python) and the binding YAML files extracted from
//! Debian's kernel source package. Nothing is read from outside the repository or
//! that cache; a missing tool or download fails the test with the script's reason.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// A compiled schema set (`dt-mk-schema -j`) and the venv's `dt-validate`.
#[derive(Debug)]
pub struct DtSchema {
    bin: PathBuf,
    schema: PathBuf,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/dt-tools.sh")
}

/// The `KEY=value` line of `scripts/dt-tools.sh`'s output.
fn value_of(stdout: &str, key: &str) -> PathBuf {
    let prefix = format!("{key}=");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("scripts/dt-tools.sh printed no {key}= line:\n{stdout}"))
}

impl DtSchema {
    /// Runs `scripts/dt-tools.sh` (cached after the first run) and compiles the
    /// bindings into `dir/schema.json`. Panics with the reason when it cannot.
    pub fn obtain(dir: &Path) -> DtSchema {
        let out = Command::new("bash")
            .arg(script())
            .output()
            .expect("run scripts/dt-tools.sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "scripts/dt-tools.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bindings = value_of(&stdout, "DT_BINDINGS");
        let bin = value_of(&stdout, "DT_TOOLS_BIN");
        let mk = Command::new(bin.join("dt-mk-schema"))
            .arg("-j")
            .arg(&bindings)
            .output()
            .expect("run dt-mk-schema");
        assert!(
            mk.status.success(),
            "dt-mk-schema -j {}: {}",
            bindings.display(),
            String::from_utf8_lossy(&mk.stderr)
        );
        let schema = dir.join("schema.json");
        std::fs::write(&schema, &mk.stdout).expect("write schema.json");
        DtSchema { bin, schema }
    }

    /// The diagnostics of level "error" that `dt-validate` reports for `dtb`
    /// (dt-validate exits 0 even when it reports errors, so the JSON is read).
    pub fn errors(&self, dtb: &Path) -> Vec<Value> {
        let mut json = dtb.as_os_str().to_owned();
        json.push(".report.json");
        let json = PathBuf::from(json);
        let out = Command::new(self.bin.join("dt-validate"))
            .arg("-s")
            .arg(&self.schema)
            .arg(dtb)
            .arg("--json-output")
            .arg(&json)
            .output()
            .expect("run dt-validate");
        assert!(
            out.status.success(),
            "dt-validate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&json).expect("dt-validate wrote no report");
        let v: Value = serde_json::from_str(&text).expect("dt-validate report is JSON");
        v.as_array()
            .expect("dt-validate report is an array")
            .iter()
            .filter(|d| d["level"] == "error")
            .cloned()
            .collect()
    }
}
