//! Replays the `server_hostile` fuzz harness (`fuzz/src/server_hostile.rs`)
//! in every `cargo test`, also where libFuzzer cannot run: its hand-made
//! seeds (one per attack of issue 13 #1-#3) and every file of the committed
//! corpus `fuzz/corpus/server_hostile/`, against two real serve loops with
//! the default seccomp filter (this test binary re-executed with
//! `VFIO_SIDECAR_FUZZ_SERVE` set, running `hostile_server_child`). A dead
//! backend, a reply that does not come within 10 s, a broken reply stream or
//! a backend that does not serve the next client fails the test.
//!
//! `WRITE_SEEDS=1 cargo test -p vfio-sidecar-tests --test
//! hostile_reliability_fuzz_replay` (re)writes the seeds into the corpus
//! directory as `seed-<name>`.
#![allow(clippy::unwrap_used)]

#[path = "../../fuzz/src/server_hostile.rs"]
mod server_hostile;

use std::path::PathBuf;

const CHILD_ARGS: [&str; 4] = [
    "--exact",
    "hostile_server_child",
    "--nocapture",
    "--test-threads=1",
];

/// The server process (only when re-executed by the replay below).
#[test]
fn hostile_server_child() {
    // Serves until killed when VFIO_SIDECAR_FUZZ_SERVE is set; else returns.
    server_hostile::serve_if_child();
}

#[test]
fn server_hostile_seeds_and_corpus_replay() {
    if std::env::var_os(server_hostile::SERVE_ENV).is_some() {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/server_hostile");
    let seeds = server_hostile::seeds();
    if std::env::var("WRITE_SEEDS").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, data) in &seeds {
            std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
        }
    }
    let mut servers = server_hostile::Servers::start(&CHILD_ARGS);
    for (name, input) in &seeds {
        eprintln!("seed {name}");
        server_hostile::run(&mut servers, input);
    }
    let mut n = 0;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    for p in &files {
        server_hostile::run(&mut servers, &std::fs::read(p).unwrap());
        n += 1;
    }
    eprintln!(
        "server_hostile: {} seeds, {n} corpus inputs replayed",
        seeds.len()
    );
    assert!(n >= seeds.len(), "corpus missing: run with WRITE_SEEDS=1");
}
