//! Item 6: device DMA through `DMA_READ`/`DMA_WRITE` messages (memory mapped
//! without an fd, as QEMU without `share=on`) against DMA through a mapped
//! memfd, same run, same device: `model:edu` behind the backend process,
//! 4 KiB transfers (edu's buffer) alternating RAM → device and device → RAM,
//! the client polling the DMA command register until RUN clears (and serving
//! the backend's requests meanwhile, as QEMU's iothread would). Both kinds
//! are mapped at once and timed alternately; the figures include the
//! register writes and polls of each transfer (what a driver pays). The data
//! is checked.

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use vfio_sidecar::model::edu::{dma_cmd, regs, EDU_DMA_START};
use vfio_sidecar_protocol::client::{Client, DmaProt, DmaRequest};
use vfio_sidecar_protocol::{ClientOptions, Errno};

use crate::dmamap::memfd_named;
use crate::harness::Placement;
use crate::procs::start_backend;
use crate::{client_err, BenchError};

const RAM: u64 = 0x10_0000;
const SIZE: u64 = 0x1_0000;
const LEN: u64 = 4096;

/// One (placement, memory kind) measurement.
#[derive(Debug, Clone, Serialize)]
pub struct DmaMsgRow {
    /// Placement name.
    pub placement: &'static str,
    /// `max_data_xfer_size` the client proposed (message pieces).
    pub piece: u32,
    /// Transfers timed per kind.
    pub transfers: usize,
    /// Bytes/s through a mapped memfd (median round trip).
    pub mapped_bytes_per_s: f64,
    /// Bytes/s through DMA_READ/DMA_WRITE (median round trip).
    pub messages_bytes_per_s: f64,
    /// messages / mapped.
    pub ratio: f64,
}

fn wr64(c: &mut Client, off: u64, v: u64) -> Result<(), BenchError> {
    c.region_write(0, off, &v.to_le_bytes())
        .map_err(|e| client_err("edu register write", e))
}

fn edu_dma(c: &mut Client, src: u64, dst: u64, to_ram: bool) -> Result<(), BenchError> {
    wr64(c, regs::DMA_SRC, src)?;
    wr64(c, regs::DMA_DST, dst)?;
    wr64(c, regs::DMA_CNT, LEN)?;
    let dir = if to_ram { dma_cmd::TO_RAM } else { 0 };
    wr64(c, regs::DMA_CMD, dma_cmd::RUN | dir)?;
    for _ in 0..10_000_000u64 {
        let b = c
            .region_read(0, regs::DMA_CMD, 8)
            .map_err(|e| client_err("edu DMA_CMD read", e))?;
        if b.first().is_some_and(|v| v & 1 == 0) {
            return Ok(());
        }
    }
    Err(BenchError::Check("edu DMA never finished".into()))
}

/// One round trip (RAM → device → RAM 0x8000 further) with the RAM at
/// `base`: nanoseconds.
fn round_trip(c: &mut Client, base: u64) -> Result<u64, BenchError> {
    let t = Instant::now();
    edu_dma(c, base, EDU_DMA_START, false)?;
    edu_dma(c, EDU_DMA_START, base + 0x8000, true)?;
    Ok(t.elapsed().as_nanos() as u64)
}

/// Bytes/s of the median round trip (two 4 KiB transfers).
fn rate(samples: &mut [u64]) -> f64 {
    samples.sort_unstable();
    let med = samples.get(samples.len() / 2).copied().unwrap_or(1).max(1);
    2.0 * LEN as f64 / (med as f64 / 1e9)
}

/// Runs item 6: both kinds of memory mapped at once (memfd at `RAM`, the
/// client's own buffer without an fd at `RAM + SIZE`), round trips
/// alternating between them so load changes hit both alike; medians.
pub fn run(
    backend_bin: Option<&Path>,
    placements: &[Placement],
    n: usize,
) -> Result<Vec<DmaMsgRow>, BenchError> {
    let pattern: Vec<u8> = (0..LEN as u32).map(|i| (i * 13 + 5) as u8).collect();
    let mut rows = Vec::new();
    for p in placements {
        for piece in [4096u32, 1024] {
            let backend = start_backend(backend_bin, "model:edu,dma-bits=32", &[])?;
            let opts = ClientOptions {
                propose_extension: false,
                limits: vfio_sidecar_protocol::Limits {
                    max_data_xfer_size: piece,
                    ..vfio_sidecar_protocol::Limits::default()
                },
                ..ClientOptions::default()
            };
            let mut c =
                Client::connect(&backend.socket, opts).map_err(|e| client_err("connect", e))?;
            p.apply(&[backend.pid()])?;
            let prot = DmaProt {
                read: true,
                write: true,
                exec: false,
            };
            let mem = memfd_named(c"vfio-sidecar-bench-dmamsg", SIZE)?;
            std::os::unix::fs::FileExt::write_all_at(&mem, &pattern, 0)
                .map_err(|e| BenchError::Io("memfd write".into(), e))?;
            c.dma_map(RAM, SIZE, mem.as_fd(), 0, prot)
                .map_err(|e| client_err("DMA_MAP memfd", e))?;
            let msg_base = RAM + SIZE;
            let ram = Arc::new(Mutex::new(vec![0u8; SIZE as usize]));
            if let Ok(mut g) = ram.lock() {
                g[..LEN as usize].copy_from_slice(&pattern);
            }
            let served = Arc::clone(&ram);
            c.set_dma_handler(Box::new(move |r| {
                let mut g = served.lock().map_err(|_| Errno::EIO)?;
                match r {
                    DmaRequest::Read { address, buf } => {
                        let off = address.checked_sub(msg_base).ok_or(Errno::EFAULT)? as usize;
                        let src = g.get(off..off + buf.len()).ok_or(Errno::EFAULT)?;
                        buf.copy_from_slice(src);
                    }
                    DmaRequest::Write { address, data } => {
                        let off = address.checked_sub(msg_base).ok_or(Errno::EFAULT)? as usize;
                        let dst = g.get_mut(off..off + data.len()).ok_or(Errno::EFAULT)?;
                        dst.copy_from_slice(data);
                    }
                }
                Ok(())
            }));
            c.dma_map_without_fd(msg_base, SIZE, prot)
                .map_err(|e| client_err("DMA_MAP without fd", e))?;
            let (mut mapped, mut messages) = (Vec::with_capacity(n), Vec::with_capacity(n));
            let warm = (n / 10).max(1);
            for i in 0..warm + n {
                let a = round_trip(&mut c, RAM)?;
                let b = round_trip(&mut c, msg_base)?;
                if i >= warm {
                    mapped.push(a);
                    messages.push(b);
                }
            }
            let mut got = vec![0u8; LEN as usize];
            std::os::unix::fs::FileExt::read_exact_at(&mem, &mut got, 0x8000)
                .map_err(|e| BenchError::Io("memfd read".into(), e))?;
            let via_msgs = ram
                .lock()
                .map(|g| g[0x8000..0x8000 + LEN as usize].to_vec())
                .unwrap_or_default();
            if got != pattern || via_msgs != pattern {
                return Err(BenchError::Check("DMA data mismatch".into()));
            }
            let (m, g) = (rate(&mut mapped), rate(&mut messages));
            rows.push(DmaMsgRow {
                placement: p.name,
                piece,
                transfers: 2 * n,
                mapped_bytes_per_s: m,
                messages_bytes_per_s: g,
                ratio: g / m,
            });
        }
    }
    Ok(rows)
}

/// Prints item 6.
pub fn print(rows: &[DmaMsgRow]) {
    println!(
        "{:<8} {:>6} {:>6} {:>14} {:>14} {:>8}",
        "place", "piece", "xfers", "mapped MB/s", "messages MB/s", "msg/map"
    );
    for r in rows {
        println!(
            "{:<8} {:>6} {:>6} {:>14.1} {:>14.1} {:>8.3}",
            r.placement,
            r.piece,
            r.transfers,
            r.mapped_bytes_per_s / 1e6,
            r.messages_bytes_per_s / 1e6,
            r.ratio
        );
    }
}
