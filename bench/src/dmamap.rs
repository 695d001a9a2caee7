//! Item 4: DMA_MAP / DMA_UNMAP per call with 1, 1 000 and 64 000 maps already
//! present (memfd, 4 KiB maps at distinct IOVAs, the fd sent with every map),
//! against a raw ping-pong of the same message sizes.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use vfio_sidecar_protocol::client::DmaProt;

use crate::harness::{Placement, Sizes};
use crate::mmio::{connect, HDR};
use crate::procs::{start_backend, EchoPeer};
use crate::stats::{us, Summary};
use crate::{client_err, BenchError};

const PAGE: u64 = 4096;
const BASE: u64 = 0x1_0000_0000;

/// One (placement, maps present) measurement.
#[derive(Debug, Clone, Serialize)]
pub struct DmaRow {
    /// Placement name.
    pub placement: &'static str,
    /// Maps present before each measured call.
    pub maps_present: usize,
    /// DMA_MAP (request 48 B + fd, reply 16 B).
    pub map: Summary,
    /// DMA_UNMAP (request 40 B, reply 40 B).
    pub unmap: Summary,
    /// Raw ping-pong 48/16.
    pub raw_map: Summary,
    /// Raw ping-pong 40/40.
    pub raw_unmap: Summary,
    /// map p50 / raw p50.
    pub map_ratio_p50: f64,
    /// unmap p50 / raw p50.
    pub unmap_ratio_p50: f64,
}

/// A memfd named `name` of `size` bytes, sealed against resizing as a VMM's
/// guest RAM is (QEMU's `memory-backend-memfd`, the shim): the backend then
/// reaches it through its own mapping. (Unsealed memory is served with
/// checked copies, one `process_vm_readv`/`writev` per access, which would
/// put that cost into every DMA the EOI rounds measure.)
pub fn memfd_named(name: &std::ffi::CStr, size: u64) -> Result<File, BenchError> {
    let name = name
        .to_str()
        .map_err(|_| BenchError::Config("memfd name".into()))?;
    vfio_sidecar::dma::sealed_memfd(name, size)
        .map(File::from)
        .map_err(|e| BenchError::Io("sealed memfd".into(), e))
}

/// Message sizes: DMA_MAP request (header + 32), reply header only.
pub const MAP_SIZES: (usize, usize) = (HDR + 32, HDR);
/// DMA_UNMAP request (header + 24), reply echoes it.
pub const UNMAP_SIZES: (usize, usize) = (HDR + 24, HDR + 24);

/// Runs item 4.
pub fn run(
    backend_bin: Option<&Path>,
    placements: &[Placement],
    counts: &[usize],
    s: Sizes,
) -> Result<Vec<DmaRow>, BenchError> {
    let max = counts.iter().copied().max().unwrap_or(1);
    let backend = start_backend(backend_bin, "model:pl330", &[])?;
    let mut c = connect(&backend.socket)?;
    let mut peer_map = EchoPeer::start(MAP_SIZES.0, MAP_SIZES.1)?;
    let mut peer_unmap = EchoPeer::start(UNMAP_SIZES.0, UNMAP_SIZES.1)?;
    // Pages 0..max for the resident maps, page `max` for the probe.
    let mem = memfd_named(c"vfio-sidecar-bench-dma", (max as u64 + 1) * PAGE)?;
    let prot = DmaProt {
        read: true,
        write: true,
        exec: false,
    };
    let servers = [
        backend.pid(),
        peer_map.process().pid(),
        peer_unmap.process().pid(),
    ];
    let mut present = 0usize;
    let mut rows = Vec::new();
    for &want in counts {
        // Populate (fast placement), resident map i at BASE + 2*i pages.
        if let Some(p) = placements.first() {
            p.apply(&servers)?;
        }
        while present < want {
            let iova = BASE + 2 * present as u64 * PAGE;
            c.dma_map(iova, PAGE, mem.as_fd(), present as u64 * PAGE, prot)
                .map_err(|e| client_err(&format!("populate DMA map {present}"), e))?;
            present += 1;
        }
        // The probe goes into a gap in the middle of the populated range.
        let probe = BASE + (2 * (present as u64 / 2) + 1) * PAGE;
        // The maps really are there: mapping over the last one must fail.
        if present > 0 {
            let last = BASE + 2 * (present as u64 - 1) * PAGE;
            if c.dma_map(last, PAGE, mem.as_fd(), 0, prot).is_ok() {
                return Err(BenchError::Check(format!(
                    "DMA_MAP over the resident map at {last:#x} succeeded"
                )));
            }
        }
        for p in placements {
            p.apply(&servers)?;
            let n = s.blocks * s.per_block;
            let (mut map_t, mut unmap_t) = (Vec::with_capacity(n), Vec::with_capacity(n));
            let (mut raw_map, mut raw_unmap) = (Vec::with_capacity(n), Vec::with_capacity(n));
            for _ in 0..s.blocks {
                for i in 0..s.warmup + s.per_block {
                    let t = Instant::now();
                    c.dma_map(probe, PAGE, mem.as_fd(), max as u64 * PAGE, prot)
                        .map_err(|e| client_err("DMA_MAP", e))?;
                    let t1 = Instant::now();
                    c.dma_unmap(probe, PAGE)
                        .map_err(|e| client_err("DMA_UNMAP", e))?;
                    let t2 = Instant::now();
                    let rm = peer_map.round_trip()?;
                    let ru = peer_unmap.round_trip()?;
                    if i >= s.warmup {
                        map_t.push((t1 - t).as_nanos() as u64);
                        unmap_t.push((t2 - t1).as_nanos() as u64);
                        raw_map.push(rm);
                        raw_unmap.push(ru);
                    }
                }
            }
            let (m, u) = (Summary::of(&map_t), Summary::of(&unmap_t));
            let (rm, ru) = (Summary::of(&raw_map), Summary::of(&raw_unmap));
            rows.push(DmaRow {
                placement: p.name,
                maps_present: present,
                map: m,
                unmap: u,
                raw_map: rm,
                raw_unmap: ru,
                map_ratio_p50: m.p50_ns / rm.p50_ns,
                unmap_ratio_p50: u.p50_ns / ru.p50_ns,
            });
        }
    }
    Ok(rows)
}

/// Prints the table.
pub fn print(rows: &[DmaRow]) {
    println!(
        "{:<8} {:>8} {:>9} {:>9} {:>9} {:>7} {:>9} {:>9} {:>9} {:>7}",
        "place",
        "maps",
        "MAP p50",
        "MAP p99",
        "raw p50",
        "x p50",
        "UNMAP p50",
        "UNMAP p99",
        "raw p50",
        "x p50"
    );
    for r in rows {
        println!(
            "{:<8} {:>8} {:>9} {:>9} {:>9} {:>7.2} {:>9} {:>9} {:>9} {:>7.2}",
            r.placement,
            r.maps_present,
            us(r.map.p50_ns),
            us(r.map.p99_ns),
            us(r.raw_map.p50_ns),
            r.map_ratio_p50,
            us(r.unmap.p50_ns),
            us(r.unmap.p99_ns),
            us(r.raw_unmap.p50_ns),
            r.unmap_ratio_p50
        );
    }
}
