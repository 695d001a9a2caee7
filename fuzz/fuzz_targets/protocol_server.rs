//! cargo-fuzz target: bytes (and fds chosen by the input) into a
//! `ServerConnection` over a socketpair. Input format: see `src/harness.rs`.
#![no_main]

#[path = "../src/harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::run(data);
});
