//! `model:edu` over a real socket, as QEMU's `vfio-user-pci` meets it:
//!
//! * `intx_status_bit_follows_pending_interrupt`: PCI status bit 3 (Interrupt
//!   Status) read through config-space REGION_READs before and after a raise,
//!   with INTx disabled by command bit 10 (Linux's PCI 2.3 masking, what
//!   `uio_pci_generic` and guest `vfio-pci` use) and after the ack.
//! * `dma_through_messages_both_ways`: guest memory mapped **without an fd**
//!   (QEMU without `share=on`); the protocol `Client` serves the backend's
//!   DMA_READ/DMA_WRITE from a callback while it polls the DMA command
//!   register; 4 KiB transfers split by a 1 KiB `max_data_xfer_size`; an fd
//!   mapping in the same session still works; unmaps of never-mapped ranges
//!   succeed (quiet, as kernel type1).
//! * `client_that_never_answers`: a raw client that never answers DMA_READ
//!   but keeps polling: its polls are answered while the backend waits, the
//!   wait ends (timeout), the device sees a fault, the backend serves on.
//! * `hostile_dma_replies`: wrong address, short data, wrong count, error
//!   replies, a DMA_WRITE reply naming another address, a reply with fds: every
//!   one a device fault, no panic, the connection and device stay usable.
#![allow(clippy::unwrap_used)]

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vfio_sidecar::model::edu::{dma_cmd, regs, EDU_DMA_START, PCI_STATUS_INTERRUPT};
use vfio_sidecar_protocol::caps::Limits;
use vfio_sidecar_protocol::client::{Client, ClientOptions, DmaRequest};
use vfio_sidecar_protocol::header::{command as cmd, Header};
use vfio_sidecar_protocol::message::{
    DmaAccess, DmaMap, RegionAccess, DMA_MAP_FLAG_READ, DMA_MAP_FLAG_WRITE,
};
use vfio_sidecar_protocol::transport::{send_message, wait_fd, Incoming, Message, MessageReader};
use vfio_sidecar_protocol::{DmaProt, Errno};
use vfio_sidecar_tests::{GuestMem, Sidecar};

const BAR0: u32 = 0;
const CONFIG: u32 = 7;

fn rd32(c: &mut Client, region: u32, off: u64) -> u32 {
    let b = c.region_read(region, off, 4).unwrap();
    u32::from_le_bytes(b.try_into().unwrap())
}

fn wr32(c: &mut Client, region: u32, off: u64, v: u32) {
    c.region_write(region, off, &v.to_le_bytes()).unwrap();
}

fn status(c: &mut Client) -> u16 {
    let b = c.region_read(CONFIG, 0x06, 2).unwrap();
    u16::from_le_bytes([b[0], b[1]])
}

#[test]
fn intx_status_bit_follows_pending_interrupt() {
    let srv = Sidecar::start("model:edu", &[]);
    let mut c = srv.connect(false);
    assert_eq!(status(&mut c) & PCI_STATUS_INTERRUPT, 0, "nothing pending");
    // What pci_check_and_mask_intx() does around an interrupt: the device
    // raises, the handler reads the status, sets INTx disable, the driver
    // acks, INTx is enabled again.
    wr32(&mut c, BAR0, regs::IRQ_RAISE, 0x8);
    assert_ne!(status(&mut c) & PCI_STATUS_INTERRUPT, 0, "raised: pending");
    let cmd = rd32(&mut c, CONFIG, 0x04) & 0xffff;
    c.region_write(CONFIG, 0x04, &((cmd | 1 << 10) as u16).to_le_bytes())
        .unwrap();
    assert_ne!(
        status(&mut c) & PCI_STATUS_INTERRUPT,
        0,
        "INTx disabled: still pending"
    );
    assert_eq!(rd32(&mut c, BAR0, regs::IRQ_STATUS), 0x8);
    wr32(&mut c, BAR0, regs::IRQ_ACK, 0x8);
    assert_eq!(status(&mut c) & PCI_STATUS_INTERRUPT, 0, "acked");
    c.region_write(CONFIG, 0x04, &(cmd as u16).to_le_bytes())
        .unwrap();
    assert_eq!(status(&mut c) & PCI_STATUS_INTERRUPT, 0);
    // The capability-list bit is untouched throughout.
    assert_eq!(status(&mut c) & 0x10, 0x10);
}

const RW: DmaProt = DmaProt {
    read: true,
    write: true,
    exec: false,
};

/// Guest RAM the client serves itself (no fd): IOVA `base`.
#[derive(Clone)]
struct Ram {
    base: u64,
    bytes: Arc<Mutex<Vec<u8>>>,
    requests: Arc<Mutex<Vec<(bool, u64, usize)>>>,
}

impl Ram {
    fn new(base: u64, size: usize) -> Self {
        Ram {
            base,
            bytes: Arc::new(Mutex::new(vec![0; size])),
            requests: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn serve(&self, r: DmaRequest<'_>) -> Result<(), Errno> {
        let mut m = self.bytes.lock().unwrap();
        let (write, addr, len) = match &r {
            DmaRequest::Read { address, buf } => (false, *address, buf.len()),
            DmaRequest::Write { address, data } => (true, *address, data.len()),
        };
        self.requests.lock().unwrap().push((write, addr, len));
        let off = addr.checked_sub(self.base).ok_or(Errno::EFAULT)? as usize;
        let range = m.get_mut(off..off + len).ok_or(Errno::EFAULT)?;
        match r {
            DmaRequest::Read { buf, .. } => buf.copy_from_slice(range),
            DmaRequest::Write { data, .. } => range.copy_from_slice(data),
        }
        Ok(())
    }
}

fn wr64(c: &mut Client, off: u64, v: u64) {
    c.region_write(BAR0, off, &v.to_le_bytes()).unwrap();
}

/// Starts an edu DMA and polls RUN (bounded); the client serves DMA
/// requests while it waits for the poll replies.
fn edu_dma(c: &mut Client, src: u64, dst: u64, len: u64, to_ram: bool) {
    wr64(c, regs::DMA_SRC, src);
    wr64(c, regs::DMA_DST, dst);
    wr64(c, regs::DMA_CNT, len);
    let dir = if to_ram { dma_cmd::TO_RAM } else { 0 };
    wr64(c, regs::DMA_CMD, dma_cmd::RUN | dir | dma_cmd::IRQ);
    let deadline = Instant::now() + Duration::from_secs(20);
    while rd32(c, BAR0, regs::DMA_CMD) & 1 != 0 {
        assert!(Instant::now() < deadline, "edu DMA never finished");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn dma_through_messages_both_ways() {
    let srv = Sidecar::start("model:edu,dma-bits=32", &[]);
    let opts = ClientOptions {
        propose_extension: false,
        limits: Limits {
            max_data_xfer_size: 1024,
            ..Limits::default()
        },
        ..ClientOptions::default()
    };
    let mut c = Client::connect(&srv.socket, opts).unwrap();
    let ram = Ram::new(0x10_0000, 0x1_0000);
    let served = ram.clone();
    c.set_dma_handler(Box::new(move |r| served.serve(r)));
    // ROM-like read-only section and RAM, both without an fd; RAM with an fd
    // elsewhere.
    c.dma_map_without_fd(
        0xfffc_0000,
        0x4_0000,
        DmaProt {
            read: true,
            ..DmaProt::default()
        },
    )
    .unwrap();
    c.dma_map_without_fd(0x10_0000, 0x1_0000, RW).unwrap();
    let shared = GuestMem::new("edu-fd", 0x1_0000);
    c.dma_map(0x20_0000, 0x1_0000, shared.fd(), 0, RW).unwrap();
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    ram.bytes.lock().unwrap()[0x1000..0x2000].copy_from_slice(&pattern);
    // RAM (messages) -> device, then device -> RAM (messages) elsewhere.
    edu_dma(&mut c, 0x10_1000, EDU_DMA_START, 4096, false);
    assert_eq!(
        rd32(&mut c, BAR0, regs::IRQ_STATUS),
        0x100,
        "completion raised"
    );
    edu_dma(&mut c, EDU_DMA_START, 0x10_8000, 4096, true);
    assert_eq!(&ram.bytes.lock().unwrap()[0x8000..0x9000], &pattern[..]);
    {
        let reqs = ram.requests.lock().unwrap();
        let reads: Vec<_> = reqs.iter().filter(|r| !r.0).collect();
        let writes: Vec<_> = reqs.iter().filter(|r| r.0).collect();
        assert_eq!(reads.len(), 4, "4 KiB in 1 KiB pieces: {reqs:?}");
        assert!(reads.iter().all(|r| r.2 == 1024));
        assert_eq!(writes.len(), 4, "{reqs:?}");
        assert_eq!(writes[0].1, 0x10_8000);
        assert_eq!(writes[3].1, 0x10_8c00);
    }
    // The fd mapping still works in the same session: device -> memfd.
    edu_dma(&mut c, EDU_DMA_START, 0x20_0100, 64, true);
    assert_eq!(shared.read(0x100, 64), &pattern[..64]);
    // Unmaps: a range with nothing mapped succeeds (kernel type1); one that
    // would split a mapping is EINVAL; exact ones succeed.
    c.dma_unmap(0x4000_0000, 0x1000).unwrap();
    match c.dma_unmap(0x10_0000, 0x1000) {
        Err(vfio_sidecar_protocol::ClientError::Remote { errno, .. }) => {
            assert_eq!(errno, Errno::EINVAL)
        }
        other => panic!("split unmap: {other:?}"),
    }
    c.dma_unmap(0x10_0000, 0x1_0000).unwrap();
    // Now unmapped: the DMA faults (device sees it, RUN clears), no request.
    let before = ram.requests.lock().unwrap().len();
    edu_dma(&mut c, 0x10_1000, EDU_DMA_START, 16, false);
    assert_eq!(ram.requests.lock().unwrap().len(), before);
    c.dma_unmap(0xfffc_0000, 0x4_0000).unwrap();
    c.dma_unmap(0x20_0000, 0x1_0000).unwrap();
    drop(c);
    srv.wait_log("client disconnected");
    let log = srv.log_text();
    assert!(log.contains("without an fd (DMA_READ/DMA_WRITE)"), "{log}");
}

/// The raw reply a test sends to a server request (header, payload, fds),
/// or `None`: never answered.
type Answer = Option<(Header, Vec<u8>, Vec<RawFd>)>;

/// How a raw client answers the server's requests.
type Serve<'a> = &'a mut dyn FnMut(&Message, &UnixStream) -> Answer;

/// A raw vfio-user client: exact control over what it answers.
struct Raw {
    s: UnixStream,
    reader: MessageReader,
    id: u16,
}

impl Raw {
    fn connect(srv: &Sidecar) -> Self {
        let s = UnixStream::connect(&srv.socket).unwrap();
        s.set_nonblocking(true).unwrap();
        let mut r = Raw {
            s,
            reader: MessageReader::new(&Limits::default()),
            id: 0,
        };
        let v = vfio_sidecar_protocol::testing::client_version_payload(false);
        let m = r.call(cmd::VERSION, &v, &[], &mut |_, _| None);
        assert!(!m.header.is_error());
        r
    }

    fn next(&mut self, t: Duration) -> Option<Message> {
        let deadline = Instant::now() + t;
        loop {
            match self.reader.take().unwrap() {
                Some(Incoming::Message(m)) => return Some(m),
                Some(Incoming::Bad { header, .. }) => panic!("bad frame {header:?}"),
                None => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !wait_fd(self.s.as_fd(), libc::POLLIN, Some(left)).unwrap() {
                return None;
            }
            self.reader.fill(self.s.as_fd(), false).unwrap();
        }
    }

    fn send(&mut self, command: u16, payload: &[u8], fds: &[RawFd]) -> u16 {
        let id = self.id;
        self.id = self.id.wrapping_add(1);
        let h = Header::command(id, command, payload.len());
        send_message(self.s.as_fd(), &h, &[payload], fds, None).unwrap();
        id
    }

    /// Sends a command and waits for its reply; server requests seen
    /// meanwhile go to `serve`, which returns the raw reply to send (header,
    /// payload, fds) or nothing (never answered).
    fn call(&mut self, command: u16, payload: &[u8], fds: &[RawFd], serve: Serve<'_>) -> Message {
        let id = self.send(command, payload, fds);
        loop {
            let m = self.next(Duration::from_secs(20)).expect("reply");
            if m.header.is_reply() {
                assert_eq!(m.header.msg_id, id);
                return m;
            }
            if let Some((h, p, f)) = serve(&m, &self.s) {
                send_message(self.s.as_fd(), &h, &[&p], &f, None).unwrap();
            }
        }
    }

    fn region(&mut self, off: u64, data: Option<u64>, serve: Serve<'_>) -> u64 {
        // edu: registers below 0x80 are 4 bytes wide, the DMA ones 8.
        let w: usize = if off < 0x80 { 4 } else { 8 };
        let (c, p) = match data {
            Some(v) => {
                let mut p = RegionAccess::encode_fixed(off, BAR0, w as u32).to_vec();
                p.extend_from_slice(&v.to_le_bytes()[..w]);
                (cmd::REGION_WRITE, p)
            }
            None => (
                cmd::REGION_READ,
                RegionAccess::encode_fixed(off, BAR0, w as u32).to_vec(),
            ),
        };
        let m = self.call(c, &p, &[], serve);
        assert!(!m.header.is_error(), "{m:?}");
        let mut b = [0u8; 8];
        if let Some(d) = m.payload.get(16..16 + w) {
            b[..w].copy_from_slice(d);
        }
        u64::from_le_bytes(b)
    }

    /// Starts an edu DMA and polls RUN, serving with `serve`; the number of
    /// polls answered while it ran.
    fn dma(&mut self, src: u64, dst: u64, len: u64, to_ram: bool, serve: Serve<'_>) -> usize {
        self.region(regs::DMA_SRC, Some(src), serve);
        self.region(regs::DMA_DST, Some(dst), serve);
        self.region(regs::DMA_CNT, Some(len), serve);
        let dir = if to_ram { dma_cmd::TO_RAM } else { 0 };
        self.region(regs::DMA_CMD, Some(dma_cmd::RUN | dir), serve);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut polls = 0;
        while self.region(regs::DMA_CMD, None, serve) & 1 != 0 {
            polls += 1;
            assert!(Instant::now() < deadline, "edu DMA never finished");
            std::thread::sleep(Duration::from_millis(5));
        }
        polls
    }
}

fn no_serve(_: &Message, _: &UnixStream) -> Answer {
    None
}

fn map_fdless(r: &mut Raw, iova: u64, size: u64) {
    let m = DmaMap::new(DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE, 0, iova, size);
    let rep = r.call(cmd::DMA_MAP, &m.encode(), &[], &mut no_serve);
    assert!(!rep.header.is_error(), "{rep:?}");
}

/// Device buffer -> fd-mapped memfd, to look at what the device holds.
fn device_buffer(r: &mut Raw, mem: &GuestMem, len: usize) -> Vec<u8> {
    r.dma(EDU_DMA_START, 0x80_0000, len as u64, true, &mut no_serve);
    mem.read(0, len)
}

fn with_memfd(r: &mut Raw) -> GuestMem {
    let mem = GuestMem::new("edu-look", 0x1000);
    let m = DmaMap::new(DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE, 0, 0x80_0000, 0x1000);
    let rep = r.call(
        cmd::DMA_MAP,
        &m.encode(),
        &[mem.fd().as_raw_fd()],
        &mut no_serve,
    );
    assert!(!rep.header.is_error());
    mem
}

#[test]
fn client_that_never_answers() {
    let srv = Sidecar::start("model:edu,dma-bits=32", &[]);
    let mut r = Raw::connect(&srv);
    let look = with_memfd(&mut r);
    map_fdless(&mut r, 0x10_0000, 0x1_0000);
    let mut ignored = 0;
    let polls = r.dma(0x10_0000, EDU_DMA_START, 64, false, &mut |m, _| {
        assert_eq!(m.header.command, cmd::DMA_READ);
        ignored += 1;
        None
    });
    assert_eq!(ignored, 1, "one DMA_READ, never answered");
    assert!(polls >= 1, "polls were answered while the backend waited");
    srv.wait_log("did not answer DMA_READ");
    srv.wait_log("edu: DMA fault");
    // Device buffer untouched (zeros); the backend serves on.
    assert_eq!(device_buffer(&mut r, &look, 64), vec![0u8; 64]);
    assert_eq!(r.region(regs::ID, None, &mut no_serve) as u32, 0x010000ed);
    // A late answer to the old request is dropped, not mistaken.
    drop(r);
    srv.wait_log("client disconnected");
    let mut c = srv.connect(false);
    assert_eq!(rd32(&mut c, BAR0, regs::ID), 0x010000ed);
}

#[test]
fn hostile_dma_replies() {
    let srv = Sidecar::start("model:edu,dma-bits=32", &[]);
    let mut r = Raw::connect(&srv);
    let look = with_memfd(&mut r);
    map_fdless(&mut r, 0x10_0000, 0x1_0000);
    let (pipe_r, _pipe_w) = {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) writes two fds into the array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: fresh fds we own.
        unsafe {
            use std::os::fd::FromRawFd;
            (
                std::os::fd::OwnedFd::from_raw_fd(fds[0]),
                std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            )
        }
    };
    let pipe_fd = pipe_r.as_raw_fd();
    type Mangle = Box<dyn Fn(&Header, &DmaAccess) -> (Header, Vec<u8>, Vec<RawFd>)>;
    let ok_data = |a: &DmaAccess| vec![0x5au8; a.count as usize];
    let cases: Vec<(&str, Mangle)> = vec![
        (
            "wrong address",
            Box::new(move |h, a| {
                let p = DmaAccess {
                    address: a.address + 0x1000,
                    count: a.count,
                    data: ok_data(a),
                }
                .encode();
                (Header::reply_to(h, p.len()), p, vec![])
            }),
        ),
        (
            "short data",
            Box::new(move |h, a| {
                let mut p = DmaAccess {
                    address: a.address,
                    count: a.count,
                    data: ok_data(a),
                }
                .encode();
                p.truncate(p.len() - 1);
                (Header::reply_to(h, p.len()), p, vec![])
            }),
        ),
        (
            "wrong count",
            Box::new(move |h, a| {
                let d = vec![0x5au8; a.count as usize / 2];
                let p = DmaAccess {
                    address: a.address,
                    count: a.count / 2,
                    data: d,
                }
                .encode();
                (Header::reply_to(h, p.len()), p, vec![])
            }),
        ),
        (
            "error reply",
            Box::new(|h, _| (Header::error_reply(h, libc::EFAULT), vec![], vec![])),
        ),
        (
            "error reply with errno 0",
            Box::new(|h, _| (Header::error_reply(h, 0), vec![], vec![])),
        ),
        (
            "reply with an fd",
            Box::new(move |h, a| {
                let p = DmaAccess {
                    address: a.address,
                    count: a.count,
                    data: ok_data(a),
                }
                .encode();
                (Header::reply_to(h, p.len()), p, vec![pipe_fd])
            }),
        ),
        (
            "empty reply",
            Box::new(|h, _| (Header::reply_to(h, 0), vec![], vec![])),
        ),
    ];
    for (name, mangle) in &cases {
        let mut seen = 0;
        r.dma(0x10_0000, EDU_DMA_START, 64, false, &mut |m, _| {
            assert_eq!(m.header.command, cmd::DMA_READ, "{name}");
            let a = DmaAccess::decode("t", &m.payload, false).unwrap();
            seen += 1;
            Some(mangle(&m.header, &a))
        });
        assert_eq!(seen, 1, "{name}: one request");
        assert_eq!(
            device_buffer(&mut r, &look, 64),
            vec![0u8; 64],
            "{name}: fault, no data"
        );
    }
    // DMA_WRITE replies: wrong address or an odd size: fault; the spec's
    // 12-byte and libvfio-user's 16-byte forms and QEMU's empty reply are fine.
    look.write(0, &[0x11u8; 64]);
    r.dma(0x80_0000, EDU_DMA_START, 64, false, &mut no_serve);
    let write_cases: Vec<(&str, bool, Mangle)> = vec![
        (
            "write reply naming another address",
            false,
            Box::new(|h, a| {
                let mut p = (a.address + 8).to_ne_bytes().to_vec();
                p.extend_from_slice(&a.count.to_ne_bytes());
                (Header::reply_to(h, p.len()), p, vec![])
            }),
        ),
        (
            "write reply of 5 bytes",
            false,
            Box::new(|h, _| (Header::reply_to(h, 5), vec![0; 5], vec![])),
        ),
        (
            "write reply, QEMU form (empty)",
            true,
            Box::new(|h, _| (Header::reply_to(h, 0), vec![], vec![])),
        ),
        (
            "write reply, spec form (12 bytes)",
            true,
            Box::new(|h, a| {
                let mut p = a.address.to_ne_bytes().to_vec();
                p.extend_from_slice(&(a.count as u32).to_ne_bytes());
                (Header::reply_to(h, p.len()), p, vec![])
            }),
        ),
        (
            "write reply, libvfio-user form (16 bytes)",
            true,
            Box::new(|h, a| {
                let mut p = a.address.to_ne_bytes().to_vec();
                p.extend_from_slice(&a.count.to_ne_bytes());
                (Header::reply_to(h, p.len()), p, vec![])
            }),
        ),
    ];
    for (name, good, mangle) in &write_cases {
        let mut got = Vec::new();
        r.dma(EDU_DMA_START, 0x10_0000, 64, true, &mut |m, _| {
            assert_eq!(m.header.command, cmd::DMA_WRITE, "{name}");
            let a = DmaAccess::decode("t", &m.payload, true).unwrap();
            got = a.data.clone();
            Some(mangle(&m.header, &a))
        });
        assert_eq!(got, vec![0x11u8; 64], "{name}: the device's data was sent");
        let faults = srv.log_text().matches("edu: DMA fault").count();
        let want = cases.len()
            + write_cases
                .iter()
                .take_while(|c| c.0 != *name)
                .filter(|c| !c.1)
                .count()
            + usize::from(!good);
        assert_eq!(faults, want, "{name}: fault iff the reply is bad");
    }
    let log = srv.log_text();
    let faults = log.matches("edu: DMA fault").count();
    assert_eq!(faults, cases.len() + 2, "one fault per bad reply: {log}");
    // The connection and the device still work.
    assert_eq!(r.region(regs::ID, None, &mut no_serve) as u32, 0x010000ed);
    assert!(!log.contains("panicked"), "{log}");
}
