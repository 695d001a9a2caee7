//! Item 1: trapped MMIO round trip (REGION_READ / REGION_WRITE of 4 and 8
//! bytes through the backend process) against a raw Unix-socket ping-pong of
//! the same message sizes between two processes.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use vfio_sidecar_protocol::client::{Client, ClientOptions, NO_REPLY_TIMEOUT};

use crate::harness::{interleave, Placement, Sizes};
use crate::procs::{start_backend, EchoPeer, Pattern};
use crate::stats::{us, Summary};
use crate::{client_err, BenchError};

/// vfio-user header size.
pub const HDR: usize = 16;
/// REGION_READ/WRITE fixed part (offset, region, count).
pub const ACCESS: usize = 16;

/// One measured access kind in one placement.
#[derive(Debug, Clone, Serialize)]
pub struct MmioRow {
    /// Placement name.
    pub placement: &'static str,
    /// What was accessed.
    pub op: String,
    /// Request / reply message sizes (bytes, header included).
    pub req_bytes: usize,
    /// Reply size.
    pub reply_bytes: usize,
    /// Through the backend.
    pub sidecar: Summary,
    /// Raw ping-pong of the same sizes.
    pub raw: Summary,
    /// sidecar p50 / raw p50.
    pub ratio_p50: f64,
    /// sidecar p99 / raw p99.
    pub ratio_p99: f64,
    /// Raw ping-pong with vfio-sidecar's system calls (client `send` +
    /// blocking `recvmsg`; server blocking `recvmsg` + `send`), no protocol code.
    pub raw_pattern: Summary,
    /// raw_pattern p50 / raw p50: the share of the gap that is the kind of
    /// system calls (`recvmsg` with a control buffer, not `read`).
    pub pattern_ratio_p50: f64,
    /// Raw ping-pong with the leanest pattern an epoll server can use
    /// (client sendmsg + one blocking recvmsg; server epoll_wait + one
    /// recvmsg + sendmsg): what the transport could reach.
    pub raw_lean: Summary,
    /// raw_lean p50 / raw p50.
    pub lean_ratio_p50: f64,
    /// Through the backend with the client's reply timeout off
    /// (`NO_REPLY_TIMEOUT`: the kernel arms no timer per wait).
    pub sidecar_no_timeout: Summary,
    /// Raw ping-pong measured alongside `sidecar_no_timeout`.
    pub raw_no_timeout: Summary,
    /// sidecar_no_timeout p50 / raw_no_timeout p50.
    pub no_timeout_ratio_p50: f64,
}

#[derive(Clone, Copy)]
struct Op {
    name: &'static str,
    /// 0 = pl330 backend, 1 = scratch backend.
    dev: usize,
    write: bool,
    offset: u64,
    len: usize,
}

const OPS: &[Op] = &[
    Op {
        name: "PL330 REGION_READ 4 B (INTEN)",
        dev: 0,
        write: false,
        offset: 0x20,
        len: 4,
    },
    Op {
        name: "PL330 REGION_WRITE 4 B (INTEN)",
        dev: 0,
        write: true,
        offset: 0x20,
        len: 4,
    },
    Op {
        name: "scratch REGION_READ 4 B (register page)",
        dev: 1,
        write: false,
        offset: 0x04,
        len: 4,
    },
    Op {
        name: "scratch REGION_WRITE 4 B (register page)",
        dev: 1,
        write: true,
        offset: 0x04,
        len: 4,
    },
    Op {
        name: "scratch REGION_READ 8 B (memfd page)",
        dev: 1,
        write: false,
        offset: 0x1008,
        len: 8,
    },
    Op {
        name: "scratch REGION_WRITE 8 B (memfd page)",
        dev: 1,
        write: true,
        offset: 0x1008,
        len: 8,
    },
];

fn sizes_of(op: &Op) -> (usize, usize) {
    if op.write {
        (HDR + ACCESS + op.len, HDR + ACCESS)
    } else {
        (HDR + ACCESS, HDR + ACCESS + op.len)
    }
}

/// Connects a client with the extension proposed.
pub fn connect(socket: &Path) -> Result<Client, BenchError> {
    Client::connect(socket, ClientOptions::default()).map_err(|e| client_err("connect", e))
}

/// Runs item 1 for every placement.
pub fn run(
    backend_bin: Option<&Path>,
    placements: &[Placement],
    s: Sizes,
) -> Result<Vec<MmioRow>, BenchError> {
    let pl330 = start_backend(backend_bin, "model:pl330", &[])?;
    let scratch = start_backend(backend_bin, "model:scratch", &[])?;
    let mut clients = [connect(&pl330.socket)?, connect(&scratch.socket)?];
    let mut peers: Vec<((usize, usize), EchoPeer, EchoPeer, EchoPeer)> = Vec::new();
    for op in OPS {
        let sz = sizes_of(op);
        if !peers.iter().any(|(k, _, _, _)| *k == sz) {
            peers.push((
                sz,
                EchoPeer::start(sz.0, sz.1)?,
                EchoPeer::start_with(sz.0, sz.1, Pattern::Sidecar)?,
                EchoPeer::start_with(sz.0, sz.1, Pattern::Lean)?,
            ));
        }
    }
    let mut rows = Vec::new();
    for p in placements {
        let mut servers = vec![pl330.pid(), scratch.pid()];
        for (_, e, pe, le) in &peers {
            servers.push(e.process().pid());
            servers.push(pe.process().pid());
            servers.push(le.process().pid());
        }
        p.apply(&servers)?;
        for op in OPS {
            let sz = sizes_of(op);
            let (peer, ppeer, lpeer) = peers
                .iter_mut()
                .find(|(k, _, _, _)| *k == sz)
                .map(|(_, e, pe, le)| (e, pe, le))
                .ok_or_else(|| BenchError::Config("echo peer missing".into()))?;
            let c = clients
                .get_mut(op.dev)
                .ok_or_else(|| BenchError::Config("client missing".into()))?;
            let data = [0u8; 8];
            let mut buf = [0u8; 8];
            let wdata = data.get(..op.len).unwrap_or_default();
            let mut access = |c: &mut Client| {
                let t = Instant::now();
                if op.write {
                    c.region_write(0, op.offset, wdata)
                        .map_err(|e| client_err(op.name, e))?;
                } else {
                    let b = buf.get_mut(..op.len).unwrap_or_default();
                    c.region_read_into(0, op.offset, b)
                        .map_err(|e| client_err(op.name, e))?;
                }
                Ok(t.elapsed().as_nanos() as u64)
            };
            let (side, raw) = interleave(s, || access(c), || peer.round_trip())?;
            // The same client with its reply timeout off, then back on.
            c.set_reply_timeout(NO_REPLY_TIMEOUT);
            let nt = interleave(s, || access(c), || peer.round_trip());
            c.set_reply_timeout(ClientOptions::default().reply_timeout);
            let (side_nt, raw_nt) = nt?;
            let (lean, pat) = interleave(s, || lpeer.round_trip(), || ppeer.round_trip())?;
            let (a, b, pt) = (Summary::of(&side), Summary::of(&raw), Summary::of(&pat));
            let ln = Summary::of(&lean);
            let (snt, rnt) = (Summary::of(&side_nt), Summary::of(&raw_nt));
            rows.push(MmioRow {
                placement: p.name,
                op: op.name.to_string(),
                req_bytes: sz.0,
                reply_bytes: sz.1,
                sidecar: a,
                raw: b,
                ratio_p50: a.p50_ns / b.p50_ns,
                ratio_p99: a.p99_ns / b.p99_ns,
                raw_pattern: pt,
                pattern_ratio_p50: pt.p50_ns / b.p50_ns,
                raw_lean: ln,
                lean_ratio_p50: ln.p50_ns / b.p50_ns,
                sidecar_no_timeout: snt,
                raw_no_timeout: rnt,
                no_timeout_ratio_p50: snt.p50_ns / rnt.p50_ns,
            });
        }
    }
    Ok(rows)
}

/// Prints the table.
pub fn print(rows: &[MmioRow]) {
    println!(
        "{:<8} {:<46} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>9} {:>7} {:>7} {:>7}",
        "place",
        "access",
        "req/rep",
        "p50 µs",
        "p99 µs",
        "raw p50",
        "raw p99",
        "x p50",
        "x p99",
        "calls p50",
        "calls x",
        "lean x",
        "no-to x"
    );
    for r in rows {
        println!(
            "{:<8} {:<46} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7.2} {:>7.2} {:>9} {:>7.2} {:>7.2} {:>7.2}",
            r.placement,
            r.op,
            format!("{}/{}", r.req_bytes, r.reply_bytes),
            us(r.sidecar.p50_ns),
            us(r.sidecar.p99_ns),
            us(r.raw.p50_ns),
            us(r.raw.p99_ns),
            r.ratio_p50,
            r.ratio_p99,
            us(r.raw_pattern.p50_ns),
            r.pattern_ratio_p50,
            r.lean_ratio_p50,
            r.no_timeout_ratio_p50
        );
    }
    println!(
        "x = vfio-sidecar / raw blocking write+read ping-pong of the same sizes (same \
         placement, interleaved blocks). calls = raw ping-pong with the system calls \
         vfio-sidecar makes (client send + blocking recvmsg with a control buffer; server \
         connection thread: blocking recvmsg with a control buffer + send) and no protocol \
         code: the rest of the gap is not system calls. lean = client sendmsg + blocking \
         recvmsg, epoll server (epoll_wait + recvmsg + sendmsg): what vfio-sidecar made \
         before its connection thread. no-to = x with the client's reply timeout off \
         (NO_REPLY_TIMEOUT: no SO_RCVTIMEO, so no kernel timer armed per wait), against a \
         raw ping-pong measured alongside."
    );
}
