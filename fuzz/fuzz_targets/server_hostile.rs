//! cargo-fuzz target: an adversarial client (protocol messages interleaved
//! with fd-flag flips, eventfd saturation/draining, memfd truncation and
//! sealing, unread replies) against the real serve loop with seccomp on, in
//! child processes. Input format and bug conditions: `src/server_hostile.rs`.
#![no_main]

#[path = "../src/server_hostile.rs"]
mod server_hostile;

use std::sync::{Mutex, OnceLock};

fn servers() -> &'static Mutex<server_hostile::Servers> {
    static S: OnceLock<Mutex<server_hostile::Servers>> = OnceLock::new();
    S.get_or_init(|| Mutex::new(server_hostile::Servers::start(&[])))
}

libfuzzer_sys::fuzz_target!(
    init: {
        // In a server child this serves until killed and never returns.
        server_hostile::serve_if_child();
    },
    |data: &[u8]| {
        let mut s = servers().lock().unwrap_or_else(|e| e.into_inner());
        server_hostile::run(&mut s, data);
    }
);
