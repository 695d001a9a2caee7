//! The README's and the operator guide's commands, run where they can run here:
//! the `list` sample for a host without VFIO is what `list` prints (line for
//! line, except lines the guide marks as shortened with "..."), and the README's
//! "Running the backend" commands for the PL330 model work as written (with the
//! socket in a temporary directory).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use vfio_sidecar_tests::{run_ok, wait_until, workspace_bin, TempDir};

fn doc(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name)).unwrap()
}

/// The first fenced block of `text` that starts with `first_line`.
fn block_starting<'a>(text: &'a str, first_line: &str) -> Vec<&'a str> {
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if l.trim_start().starts_with("```") {
            let body: Vec<&str> = lines
                .by_ref()
                .take_while(|l| !l.trim_start().starts_with("```"))
                .collect();
            if body.first() == Some(&first_line) {
                return body;
            }
        }
    }
    panic!("no block starting with {first_line:?}");
}

#[test]
fn operator_guide_list_sample_is_what_list_prints_without_vfio() {
    if Path::new("/dev/vfio").exists() {
        assert!(
            std::env::var("CI").is_err(),
            "CI machines have no /dev/vfio"
        );
        return;
    }
    let guide = doc("docs/operator-guide.md");
    let sample = block_starting(&guide, "$ vfio-sidecar list");
    let out = run_ok(Command::new(workspace_bin("vfio-sidecar", "vfio-sidecar")).arg("list"));
    let printed = String::from_utf8(out.stdout).unwrap();
    let printed: Vec<&str> = printed.lines().collect();
    let shown = &sample[1..];
    assert_eq!(
        printed.len(),
        shown.len(),
        "line count:\n{printed:#?}\nvs\n{shown:#?}"
    );
    for (p, s) in printed.iter().zip(shown) {
        match s.strip_suffix(" ...") {
            Some(prefix) => assert!(
                p.starts_with(prefix),
                "{p:?} does not start with {prefix:?}"
            ),
            None => assert_eq!(p, s),
        }
    }
}

#[test]
fn readme_backend_commands_run_as_written() {
    let readme = doc("README.md");
    let cmds = block_starting(
        &readme,
        "vfio-sidecar serve --socket /run/pl330.sock --device model:pl330          # the built-in model",
    );
    let dir = TempDir::new("readme");
    let sock = dir.0.join("pl330.sock");
    let stats = dir.0.join("pl330.stats");
    let argv = |line: &str| -> Vec<String> {
        let code = line.split(" #").next().unwrap();
        code.split_whitespace()
            .skip(1)
            .map(|w| {
                w.replace("/run/pl330.sock", sock.to_str().unwrap())
                    .replace("/run/pl330.stats", stats.to_str().unwrap())
            })
            .collect()
    };
    let bin = workspace_bin("vfio-sidecar", "vfio-sidecar");
    // The fullest PL330 serve line (with the statistics socket, if the README has one).
    let serve = cmds
        .iter()
        .filter(|l| l.contains("model:pl330") && l.starts_with("vfio-sidecar serve"))
        .max_by_key(|l| l.contains("--stats-socket"))
        .unwrap();
    let mut child = Command::new(&bin)
        .args(argv(serve))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed if an assertion below fails (it would otherwise outlive the test).
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: kill(2) on our own child; harmless if it already exited.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
    let _guard = Kill(child.id());
    wait_until(
        "the README's serve to listen",
        std::time::Duration::from_secs(20),
        || sock.exists(),
    );
    for line in cmds
        .iter()
        .filter(|l| l.starts_with("vfio-sidecar probe") || l.starts_with("vfio-sidecar dt"))
    {
        let out = run_ok(Command::new(&bin).args(argv(line)));
        assert!(!out.stdout.is_empty(), "{line}: no output");
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    assert!(!sock.exists(), "socket removed at exit");
}
