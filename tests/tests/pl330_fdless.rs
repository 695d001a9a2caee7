//! Cross-process: the PL330 model reaching guest memory mapped **without an
//! fd**: microcode fetches, loads and stores all become DMA_READ/DMA_WRITE
//! requests the protocol `Client` serves from a callback (while it polls a
//! register, and with `Client::serve_requests` while it only waits); the copy
//! is byte-exact and the completion event follows the data.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vfio_sidecar::model::pl330::asm::{linux_mem_to_mem, LinuxXfer};
use vfio_sidecar::model::pl330::regs::{FSRC, INTEN, INT_EVENT_RIS};
use vfio_sidecar::model::pl330::Pl330Config;
use vfio_sidecar_protocol::client::{DmaProt, DmaRequest};
use vfio_sidecar_protocol::Errno;
use vfio_sidecar_tests::pl330::Regs;
use vfio_sidecar_tests::Sidecar;

const IOVA: u64 = 0x4000_0000;
const MEM: usize = 0x10000;
const SRC: u64 = 0x1000;
const DST: u64 = 0x4000;
const LEN: u32 = 0x1234;

type Ram = Arc<Mutex<(Vec<u8>, usize, usize)>>;

fn serve(ram: &Ram, r: DmaRequest<'_>) -> Result<(), Errno> {
    let mut g = ram.lock().unwrap();
    let (mem, reads, writes) = &mut *g;
    match r {
        DmaRequest::Read { address, buf } => {
            *reads += 1;
            let off = address.checked_sub(IOVA).ok_or(Errno::EFAULT)? as usize;
            buf.copy_from_slice(mem.get(off..off + buf.len()).ok_or(Errno::EFAULT)?);
        }
        DmaRequest::Write { address, data } => {
            *writes += 1;
            let off = address.checked_sub(IOVA).ok_or(Errno::EFAULT)? as usize;
            mem.get_mut(off..off + data.len())
                .ok_or(Errno::EFAULT)?
                .copy_from_slice(data);
        }
    }
    Ok(())
}

fn copy_through_messages(poll_registers: bool) {
    let srv = Sidecar::start("model:pl330", &[]);
    let mut c = srv.connect(true);
    let ram: Ram = Arc::new(Mutex::new((vec![0u8; MEM], 0, 0)));
    let x = LinuxXfer::memcpy(
        &Pl330Config::default(),
        (IOVA + SRC) as u32,
        (IOVA + DST) as u32,
        LEN,
        0,
    );
    let code = linux_mem_to_mem(&x).unwrap();
    let pattern: Vec<u8> = (0..LEN).map(|i| (i * 7 + 3) as u8).collect();
    {
        let mut g = ram.lock().unwrap();
        g.0[..code.len()].copy_from_slice(&code);
        g.0[SRC as usize..SRC as usize + LEN as usize].copy_from_slice(&pattern);
    }
    let r2 = Arc::clone(&ram);
    c.set_dma_handler(Box::new(move |r| serve(&r2, r)));
    c.dma_map_without_fd(
        IOVA,
        MEM as u64,
        DmaProt {
            read: true,
            write: true,
            exec: true,
        },
    )
    .unwrap();
    let inten = c.read32(INTEN);
    c.write32(INTEN, inten | 1);
    c.dmago((IOVA) as u32);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = if poll_registers {
            c.read32(INT_EVENT_RIS) & 1 != 0
        } else {
            c.serve_requests(Duration::from_millis(50)).unwrap();
            // Look (rarely) whether it finished.
            c.read32(INT_EVENT_RIS) & 1 != 0
        };
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "PL330 copy never finished: {}",
            srv.log_text()
        );
    }
    assert_eq!(c.read32(FSRC), 0, "no channel fault: {}", srv.log_text());
    let g = ram.lock().unwrap();
    assert_eq!(
        &g.0[DST as usize..DST as usize + LEN as usize],
        &pattern[..],
        "copied through DMA_READ/DMA_WRITE"
    );
    assert!(g.1 > 10 && g.2 > 10, "fetches/loads {} stores {}", g.1, g.2);
    assert!(!srv.log_text().contains("did not answer"));
}

#[test]
fn pl330_copy_through_messages_while_polling() {
    copy_through_messages(true);
}

#[test]
fn pl330_copy_through_messages_while_waiting() {
    copy_through_messages(false);
}
