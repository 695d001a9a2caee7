//! Server-to-client DMA over a real socketpair: `ServerConnection::dma_read`
//! / `dma_write` against the protocol `Client` serving them from its
//! callback — pieces of the negotiated `max_data_xfer_size`, the client's own
//! requests handled while the server waits (interleaving), a bounded wait
//! when the client never answers, error replies surfaced.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vfio_sidecar_protocol::caps::Limits;
use vfio_sidecar_protocol::client::DmaRequest;
use vfio_sidecar_protocol::testing::ToyHandler;
use vfio_sidecar_protocol::transport::wait_fd;
use vfio_sidecar_protocol::{
    Client, ClientOptions, ConnStatus, DmaXferError, Errno, ServerConnection,
};

type Log = Arc<Mutex<Vec<(bool, u64, usize)>>>;

/// The server thread's outcome: the read, the write, the handler.
type Outcome = (Result<Vec<u8>, String>, Result<(), String>, ToyHandler);

/// Serves until the client's first REGION_WRITE, then reads 10 000 bytes at
/// 0x1000 and writes them back at 0x9000 by messages, then serves on until
/// the client goes; returns the two transfer results.
fn server(b: UnixStream, timeout: Duration) -> std::thread::JoinHandle<Outcome> {
    std::thread::spawn(move || {
        let mut h = ToyHandler::default();
        let mut conn = ServerConnection::new(b, Limits::default()).unwrap();
        conn.set_dma_timeout(timeout);
        let mut results = None;
        loop {
            if !wait_fd(conn.as_fd(), libc::POLLIN, Some(Duration::from_secs(20))).unwrap() {
                panic!("server idle too long");
            }
            if conn.handle_readable(&mut h).unwrap() == ConnStatus::Closed {
                let (r, w) = results.unwrap_or((Err("never ran".into()), Err("never ran".into())));
                return (r, w, h);
            }
            if results.is_none() && !h.writes.is_empty() {
                let mut buf = vec![0u8; 10_000];
                let r = conn
                    .dma_read(&mut h, 0x1000, &mut buf)
                    .map(|()| buf.clone());
                let w = match &r {
                    Ok(data) => conn
                        .dma_write(&mut h, 0x9000, data)
                        .map_err(|e| e.to_string()),
                    Err(_) => Err("skipped".into()),
                };
                results = Some((r.map_err(|e: DmaXferError| e.to_string()), w));
            }
        }
    })
}

fn client(a: UnixStream, mem: Arc<Mutex<Vec<u8>>>, log: Log) -> Client {
    let opts = ClientOptions {
        limits: Limits {
            max_data_xfer_size: 4096,
            ..Limits::default()
        },
        ..ClientOptions::default()
    };
    let mut c = Client::from_stream(a, opts).unwrap();
    c.set_dma_handler(Box::new(move |r| {
        let mut m = mem.lock().unwrap();
        match r {
            DmaRequest::Read { address, buf } => {
                log.lock().unwrap().push((false, address, buf.len()));
                let o = address as usize;
                buf.copy_from_slice(m.get(o..o + buf.len()).ok_or(Errno::EFAULT)?);
            }
            DmaRequest::Write { address, data } => {
                log.lock().unwrap().push((true, address, data.len()));
                let o = address as usize;
                m.get_mut(o..o + data.len())
                    .ok_or(Errno::EFAULT)?
                    .copy_from_slice(data);
            }
        }
        Ok(())
    }));
    c
}

#[test]
fn read_and_write_in_pieces_with_interleaved_requests() {
    let (a, b) = UnixStream::pair().unwrap();
    let srv = server(b, Duration::from_secs(10));
    let mem = Arc::new(Mutex::new(
        (0..0x10000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    ));
    let log: Log = Arc::default();
    let mut c = client(a, Arc::clone(&mem), Arc::clone(&log));
    c.region_write(0, 0x10, &[1, 2, 3, 4]).unwrap();
    // Requests while the server is in its transfers: each is answered (the
    // server handles them while it waits), and the client serves the
    // server's requests while waiting for those answers.
    let mut reads = 0;
    while log.lock().unwrap().iter().filter(|l| l.0).count() < 3 {
        assert_eq!(c.region_read(0, 0x10, 4).unwrap(), vec![1, 2, 3, 4]);
        reads += 1;
        assert!(reads < 100_000, "transfers never finished");
    }
    c.serve_requests(Duration::from_millis(100)).unwrap();
    drop(c);
    let (r, w, h) = srv.join().unwrap();
    let data = r.unwrap();
    w.unwrap();
    let m = mem.lock().unwrap();
    assert_eq!(&data[..], &m[0x1000..0x1000 + 10_000]);
    assert_eq!(&m[0x9000..0x9000 + 10_000], &data[..], "written back");
    let l = log.lock().unwrap();
    // min(client 4096, server 1 MiB) = 4096: 4096 + 4096 + 1808 each way.
    let sizes: Vec<usize> = l.iter().filter(|x| !x.0).map(|x| x.2).collect();
    assert_eq!(sizes, vec![4096, 4096, 1808]);
    let addrs: Vec<u64> = l.iter().filter(|x| x.0).map(|x| x.1).collect();
    assert_eq!(addrs, vec![0x9000, 0xa000, 0xb000]);
    assert!(h.writes.len() == 1, "one REGION_WRITE, then only reads");
}

#[test]
fn client_error_reply_is_surfaced() {
    let (a, b) = UnixStream::pair().unwrap();
    let srv = server(b, Duration::from_secs(10));
    // Guest memory too small: the client's callback answers EFAULT.
    let mem = Arc::new(Mutex::new(vec![0u8; 0x1100]));
    let log: Log = Arc::default();
    let mut c = client(a, mem, log);
    c.region_write(0, 0x10, &[9, 9, 9, 9]).unwrap();
    c.region_read(0, 0x10, 4).unwrap();
    c.serve_requests(Duration::from_millis(200)).unwrap();
    drop(c);
    let (r, w, _) = srv.join().unwrap();
    let e = r.unwrap_err();
    assert!(
        e.contains("refused DMA_READ") && e.contains("Bad address"),
        "{e}"
    );
    assert_eq!(w.unwrap_err(), "skipped");
}

#[test]
fn client_that_never_answers_times_out() {
    let (a, b) = UnixStream::pair().unwrap();
    let srv = server(b, Duration::from_millis(300));
    let mem = Arc::new(Mutex::new(vec![0u8; 0x10000]));
    let mut c = client(a, mem, Arc::default());
    c.region_write(0, 0x10, &[1, 1, 1, 1]).unwrap();
    // Sends nothing more and reads nothing for a while: the server's wait
    // ends by itself.
    std::thread::sleep(Duration::from_millis(800));
    // The late request is now answered (stale, or served) without confusion;
    // the connection still works.
    assert_eq!(c.region_read(0, 0x10, 4).unwrap(), vec![1, 1, 1, 1]);
    drop(c);
    let (r, _, _) = srv.join().unwrap();
    let e = r.unwrap_err();
    assert!(e.contains("did not answer DMA_READ"), "{e}");
}

/// A client that floods commands (each answered) but never answers the
/// server's DMA_READ: the server's wait still ends while the flood goes on
/// (its deadline holds whatever the client sends), with a timeout error.
#[test]
fn flooding_client_cannot_stretch_the_wait() {
    use common::RawPeer;
    use std::sync::atomic::{AtomicBool, Ordering};
    use vfio_sidecar_protocol::header::{command as cmd, Header};
    use vfio_sidecar_protocol::message::RegionAccess;
    let (a, b) = UnixStream::pair().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let srv = std::thread::spawn(move || {
        let mut h = ToyHandler::default();
        let mut conn = ServerConnection::new(b, Limits::default()).unwrap();
        conn.set_dma_timeout(Duration::from_millis(300));
        loop {
            if !wait_fd(conn.as_fd(), libc::POLLIN, Some(Duration::from_secs(20))).unwrap() {
                return;
            }
            if conn.handle_readable(&mut h).unwrap() == ConnStatus::Closed {
                return;
            }
            if !h.writes.is_empty() {
                let mut buf = vec![0u8; 64];
                let r = conn.dma_read(&mut h, 0x1000, &mut buf);
                let _ = tx.send(r.map_err(|e| e.to_string()));
                h.writes.clear();
            }
        }
    });
    let mut p = RawPeer::new(a);
    assert!(!p
        .version(&vfio_sidecar_protocol::Capabilities::default())
        .header
        .is_error());
    let mut w = RegionAccess::encode_fixed(0x10, 0, 4).to_vec();
    w.extend_from_slice(&[5, 5, 5, 5]);
    p.send(cmd::REGION_WRITE, &w, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let stop = Arc::clone(&stop);
        let mut q = RawPeer::new(p.sock.try_clone().unwrap());
        std::thread::spawn(move || {
            let mut msg = Header::command(7, cmd::REGION_READ, 16).encode().to_vec();
            msg.extend_from_slice(&RegionAccess::encode_fixed(0x10, 0, 4));
            while !stop.load(Ordering::Relaxed) && q.try_send_bytes(&msg) {}
        })
    };
    let reader = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if p.recv_timeout(Duration::from_millis(200)).is_some() {
                    n += 1;
                }
            }
            n
        })
    };
    // The wait ends while the flood is still going on.
    let r = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server's DMA wait never ended");
    assert!(!flood.is_finished(), "the flood was still running");
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    let replies = reader.join().unwrap();
    let e = r.unwrap_err();
    assert!(e.contains("did not answer DMA_READ"), "{e}");
    assert!(
        replies > 1,
        "the flood was answered while the server waited"
    );
    srv.join().unwrap();
}
