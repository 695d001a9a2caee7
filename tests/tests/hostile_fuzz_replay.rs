//! Runs the two backend fuzz harnesses (`fuzz/src/server_pl330.rs`,
//! `fuzz/src/pl330_model.rs`) in every `cargo test`, also where libFuzzer
//! cannot run: their hand-made seeds (checked to reach the device: a DMA copy
//! happens, an interrupt arrives, faults do not write) and every file of the
//! committed corpora `fuzz/corpus/server_pl330/` and `fuzz/corpus/pl330_model/`
//! (which include the inputs of every crash found, as regression tests).
//!
//! `WRITE_SEEDS=1 cargo test -p vfio-sidecar-tests --test hostile_fuzz_replay`
//! (re)writes the seeds into the corpus directories as `seed-<name>`.
#![allow(clippy::unwrap_used)]

#[path = "../../fuzz/src/pl330_model.rs"]
mod pl330_model;
#[path = "../../fuzz/src/server_pl330.rs"]
mod server_pl330;

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

/// The harnesses count this process's fds before and after each input, so
/// the tests of this binary run one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn write_seeds(target: &str, seeds: &[(&str, Vec<u8>)]) {
    if std::env::var("WRITE_SEEDS").is_ok_and(|v| v == "1") {
        let dir = corpus(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, data) in seeds {
            std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
        }
    }
}

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = corpus(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("skipped: no corpus at {}", dir.display());
        return 0;
    };
    let mut n = 0;
    for e in entries {
        let p = e.unwrap().path();
        if p.is_file() {
            run(&std::fs::read(&p).unwrap());
            n += 1;
        }
    }
    eprintln!("{target}: replayed {n} corpus inputs");
    n
}

#[test]
fn server_pl330_seeds_reach_the_device() {
    let _serial = serial();
    let seeds = server_pl330::seeds();
    write_seeds("server_pl330", &seeds);
    let pattern: Vec<u8> = (0..128u32).map(|i| (i * 5 + 3) as u8).collect();
    for (name, input) in &seeds {
        let out = server_pl330::run_outcome(input);
        eprintln!(
            "seed {name}: {} replies, {} server closes, {} interrupts",
            out.replies, out.server_closes, out.interrupts
        );
        match *name {
            "copy" | "resample" | "plain-reconnect" => {
                assert_eq!(&out.mem0[0x2000..0x2080], &pattern[..], "{name}: DMA copy");
                assert!(out.replies >= 10, "{name}: replies");
            }
            "framing" => assert!(out.replies >= 2, "framing: error replies"),
            _ => {}
        }
        if *name == "copy" || *name == "resample" {
            assert!(out.interrupts >= 1, "{name}: interrupt delivered");
        }
    }
}

#[test]
fn pl330_model_seeds_reach_the_device() {
    let _serial = serial();
    let seeds = pl330_model::seeds();
    write_seeds("pl330_model", &seeds);
    let pattern: Vec<u8> = (0..128u32).map(|i| (i * 7 + 1) as u8).collect();
    for (name, input) in &seeds {
        let out = pl330_model::run_outcome(input);
        eprintln!("seed {name}: INTMIS {:#x} FSRC {:#x}", out.intmis, out.fsrc);
        match *name {
            "copy" => {
                assert_eq!(&out.mem[0x2000..0x2080], &pattern[..], "copy");
                assert_eq!(out.intmis, 1, "DMASEV 0 raised IRQ 0");
                assert_eq!(out.fsrc, 0);
            }
            "fault" => {
                assert!(
                    out.mem[0x4000..0x8000].iter().all(|b| *b == 0),
                    "R-only window written"
                );
            }
            _ => {}
        }
    }
}

#[test]
fn server_pl330_corpus_replays() {
    let _serial = serial();
    replay("server_pl330", server_pl330::run);
}

#[test]
fn pl330_model_corpus_replays() {
    let _serial = serial();
    replay("pl330_model", pl330_model::run);
}
