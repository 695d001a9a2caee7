//! A client that pipelines many requests in one write: the backend receives
//! them into its connection buffer with one `recvmsg` and handles at most 64
//! per wake-up (its batch limit), so the rest sits in user space, not in the
//! socket. Every request must still be answered, in order, without the client
//! sending anything more (a regression would stall until the reply timeout).
#![allow(clippy::unwrap_used)]

mod hostile_util;

use std::time::Duration;

use hostile_util::*;
use vfio_sidecar::model::pl330::regs::INTEN;

#[test]
fn pipelined_requests_beyond_the_batch_limit_are_all_answered() {
    let (_srv, mut r) = pl330_peer(&[], true);
    r.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // INTEN = 0x5a, then 300 reads of it (32 bytes each) in one write.
    let v: u32 = 0x5a;
    r.write32(INTEN, v);
    let msg = pipelined_reads(INTEN, 1000, 300);
    assert!(msg.len() < 64 << 10, "fits one receive buffer");
    assert_eq!(sendmsg(&r.sock, &msg, &[]).unwrap(), msg.len());
    for i in 0..300u16 {
        let rep = r
            .try_reply()
            .unwrap_or_else(|e| panic!("reply {i} of 300 missing: {e}"));
        assert_eq!(rep.hdr.msg_id, 1000 + i);
        assert_eq!(rep.errno(), 0);
        assert_eq!(
            u32::from_le_bytes(rep.payload[16..20].try_into().unwrap()),
            v
        );
    }
    r.still_works();
}
