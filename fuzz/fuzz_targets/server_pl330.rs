//! cargo-fuzz target: bytes and input-chosen fds into the backend's real
//! `ServerConnection` + `Backend` (PL330 model) over a socketpair. Input
//! format: see `src/server_pl330.rs`.
#![no_main]

#[path = "../src/server_pl330.rs"]
mod server_pl330;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    server_pl330::run(data);
});
