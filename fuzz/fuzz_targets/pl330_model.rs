//! cargo-fuzz target: the PL330 model alone (register traffic, microcode in
//! DMA-mapped memfd memory, DMAGO/KILL/SEV, peripheral requests, resets).
//! Input format: see `src/pl330_model.rs`.
#![no_main]

#[path = "../src/pl330_model.rs"]
mod pl330_model;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pl330_model::run(data);
});
