//! Placements (which CPU each side runs on) and interleaved sampling.

use serde::Serialize;

use crate::procs::{pin_process, pin_self};
use crate::BenchError;

/// Where the client (this process) and the server process run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// "1 core" or "2 cores".
    pub name: &'static str,
    /// CPU of this process (client, vCPU, ISR).
    pub client_cpu: usize,
    /// CPU of the server process (backend or echo peer).
    pub server_cpu: usize,
}

impl Placement {
    /// Pins this thread and every given server process (by pid).
    pub fn apply(&self, servers: &[u32]) -> Result<(), BenchError> {
        pin_self(self.client_cpu)?;
        for &pid in servers {
            pin_process(pid, self.server_cpu)?;
        }
        Ok(())
    }
}

/// The placements to run, from the allowed CPUs: both processes on the first
/// CPU, and client on the first / server on the second.
pub fn placements(cpus: &[usize], which: &str) -> Result<Vec<Placement>, BenchError> {
    let first = *cpus
        .first()
        .ok_or_else(|| BenchError::Config("no CPU available".into()))?;
    let mut out = Vec::new();
    for w in which.split(',') {
        match w.trim() {
            "same" => out.push(Placement {
                name: "1 core",
                client_cpu: first,
                server_cpu: first,
            }),
            "split" => {
                let second = *cpus.get(1).ok_or_else(|| {
                    BenchError::Config(
                        "the 2-core placement needs two CPUs; this process may use only one \
                         (run with --placements same)"
                            .into(),
                    )
                })?;
                out.push(Placement {
                    name: "2 cores",
                    client_cpu: first,
                    server_cpu: second,
                })
            }
            o => {
                return Err(BenchError::Config(format!(
                    "unknown placement {o:?} (same, split)"
                )))
            }
        }
    }
    Ok(out)
}

/// Sample counts.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Alternating blocks per side.
    pub blocks: usize,
    /// Samples per block.
    pub per_block: usize,
    /// Unrecorded iterations before each block.
    pub warmup: usize,
}

/// Runs `a` and `b` in alternating blocks (a, b, a, b, ...) so that drift of a
/// shared machine hits both alike; returns their samples (ns).
pub fn interleave(
    s: Sizes,
    mut a: impl FnMut() -> Result<u64, BenchError>,
    mut b: impl FnMut() -> Result<u64, BenchError>,
) -> Result<(Vec<u64>, Vec<u64>), BenchError> {
    let mut va = Vec::with_capacity(s.blocks * s.per_block);
    let mut vb = Vec::with_capacity(s.blocks * s.per_block);
    for _ in 0..s.blocks {
        for _ in 0..s.warmup {
            a()?;
        }
        for _ in 0..s.per_block {
            va.push(a()?);
        }
        for _ in 0..s.warmup {
            b()?;
        }
        for _ in 0..s.per_block {
            vb.push(b()?);
        }
    }
    Ok((va, vb))
}
