//! Operator documentation against the code: every `#[error]` message of the
//! backend's error types is in the troubleshooting table of
//! `docs/operator-guide.md`; every option of `serve`, `list` and `bind` is in
//! `docs/backend.md`; the systemd unit's `ExecStart` (and the example
//! configuration's arguments) parse with the real command line.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};
use vfio_sidecar::cli::{Cli, Command, SeccompMode};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The string literals of `#[error("...")]` attributes in Rust source, with
/// escapes and line continuations resolved (`transparent` skipped).
fn error_messages(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(i) = rest.find("#[error(") {
        rest = &rest[i + "#[error(".len()..];
        let t = rest.trim_start();
        let Some(body) = t.strip_prefix('"') else {
            continue;
        };
        let mut s = String::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => s.push('\n'),
                    Some('\n') => {
                        // Line continuation: skip the next line's indentation.
                        let mut peek = chars.clone();
                        while let Some(w) = peek.next() {
                            if !w.is_whitespace() {
                                break;
                            }
                            chars = peek.clone();
                        }
                    }
                    Some(o) => s.push(o),
                    None => break,
                },
                o => s.push(o),
            }
        }
        out.push(s);
    }
    out
}

/// The longest fixed part of a message (between `{…}` placeholders and newlines).
fn longest_fragment(msg: &str) -> String {
    let mut frags = Vec::new();
    let mut cur = String::new();
    let mut depth = 0;
    for c in msg.chars() {
        match c {
            '{' => {
                depth += 1;
                frags.push(std::mem::take(&mut cur));
            }
            '}' if depth > 0 => depth -= 1,
            '\n' if depth == 0 => frags.push(std::mem::take(&mut cur)),
            c if depth == 0 => cur.push(c),
            _ => {}
        }
    }
    frags.push(cur);
    frags
        .into_iter()
        .map(|f| f.trim().to_string())
        .max_by_key(String::len)
        .unwrap_or_default()
}

#[test]
fn every_error_message_is_in_the_troubleshooting_table() {
    let guide = read("docs/operator-guide.md");
    let table = &guide[guide.find("## 6. Troubleshooting").unwrap()..];
    let mut files = vec![
        "backend/src/cli.rs".to_string(),
        "backend/src/server.rs".to_string(),
        "backend/src/sandbox.rs".to_string(),
        "backend/src/host.rs".to_string(),
        "backend/src/dma.rs".to_string(),
        "backend/src/dma_msg.rs".to_string(),
        "backend/src/profile.rs".to_string(),
        "backend/src/dt.rs".to_string(),
        "backend/src/device.rs".to_string(),
        "backend/src/probe.rs".to_string(),
        "backend/src/stats.rs".to_string(),
        "backend/src/peer_eventfd.rs".to_string(),
    ];
    for dir in ["backend/src/vfio", "backend/src/sandbox"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "rs") {
                files.push(p.strip_prefix(root()).unwrap().display().to_string());
            }
        }
    }
    let mut checked = 0;
    let mut missing = Vec::new();
    for f in &files {
        for msg in error_messages(&read(f)) {
            let frag = longest_fragment(&msg);
            // Pure wrappers ("{op}: {source}", "{0}") have nothing to look for.
            if frag.chars().count() < 8 {
                continue;
            }
            checked += 1;
            if !table.contains(&frag) {
                missing.push(format!("{f}: {msg:?} (looked for {frag:?})"));
            }
        }
    }
    assert!(
        checked >= 60,
        "only {checked} messages found: parser broken?"
    );
    assert!(
        missing.is_empty(),
        "not in docs/operator-guide.md §6:\n{}",
        missing.join("\n")
    );
}

#[test]
fn fragment_extraction() {
    let src = r#"
    #[error(transparent)]
    A,
    #[error("{path}: bound to {}, not {wanted}; rebind it with:\n  echo {name}")]
    B,
    #[error(
        "cannot switch to uid {uid}: running as uid {euid}, not root; start as root \
         or drop the --user option"
    )]
    C,
    "#;
    let m = error_messages(src);
    assert_eq!(m.len(), 2);
    assert_eq!(longest_fragment(&m[0]), "; rebind it with:");
    assert_eq!(
        m[1],
        "cannot switch to uid {uid}: running as uid {euid}, not root; start as root or drop \
         the --user option"
    );
    assert_eq!(
        longest_fragment(&m[1]),
        ", not root; start as root or drop the --user option"
    );
}

#[test]
fn every_option_is_documented_in_backend_md() {
    let doc = read("docs/backend.md");
    let cmd = Cli::command();
    for sub in ["serve", "list", "bind"] {
        let sc = cmd.find_subcommand(sub).unwrap();
        for arg in sc.get_arguments() {
            let Some(long) = arg.get_long() else {
                continue;
            };
            if ["help", "verbose"].contains(&long) {
                continue;
            }
            assert!(
                doc.contains(&format!("--{long}")),
                "docs/backend.md lacks {sub} --{long}"
            );
        }
    }
    for mode in ["kill", "trap", "log", "off"] {
        assert!(doc.contains(mode));
    }
}

#[test]
fn systemd_exec_start_parses_with_the_real_cli() {
    let unit = read("contrib/systemd/vfio-sidecar@.service");
    let line = unit
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .unwrap()
        .trim_start_matches("ExecStart=");
    let conf = read("contrib/systemd/example.conf");
    // The example's extra arguments (commented and active lines).
    let mut extras: Vec<String> = vec![String::new()];
    for l in conf.lines() {
        let l = l.trim_start_matches('#');
        if let Some(v) = l.strip_prefix("VFIO_SIDECAR_ARGS=") {
            extras.push(v.to_string());
        }
    }
    assert!(extras.len() >= 3, "{extras:?}");
    for extra in &extras {
        let cmdline = line
            .replace("%i", "dma")
            .replace("${DEVICE}", "model:pl330")
            .replace("$VFIO_SIDECAR_ARGS", extra);
        let args: Vec<&str> = cmdline.split_whitespace().collect();
        assert_eq!(args[0], "/usr/bin/vfio-sidecar");
        let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{cmdline}: {e}"));
        let Command::Serve(a) = cli.command else {
            panic!("not serve: {cmdline}");
        };
        assert_eq!(a.socket, Path::new("/run/vfio-sidecar/dma.sock"));
        // The unit relies on the defaults: seccomp on (kill), no --user.
        assert_eq!(a.seccomp, SeccompMode::Kill);
        assert!(a.user.is_none());
        assert_eq!(a.socket_mode, 0o600);
    }
    // The socket unit listens where ExecStart's --socket points.
    let socket = read("contrib/systemd/vfio-sidecar@.socket");
    assert!(socket.contains("ListenStream=/run/vfio-sidecar/%i.sock"));
    assert!(socket.contains("Accept=no"));
}
