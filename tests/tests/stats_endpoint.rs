//! Cross-process: `serve --stats-socket` while a client drives the PL330
//! model (DMA from memfd guest memory, interrupts, trapped MMIO, an error
//! reply). The statistics socket shows the connected client's live counters;
//! the next client's session starts from zero while the process totals keep
//! growing; statistics peers that never read stall neither the served client
//! nor SIGTERM. Read both in-process and through `vfio-sidecar probe --stats`
//! (text, `--json`, `--prometheus`).
#![allow(clippy::unwrap_used)]

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use vfio_sidecar::model::pl330::asm::{linux_mem_to_mem, LinuxXfer};
use vfio_sidecar::model::pl330::regs::{INTCLR, INTEN, INT_EVENT_RIS};
use vfio_sidecar::model::pl330::Pl330Config;
use vfio_sidecar::probe::stats::read_snapshot;
use vfio_sidecar::stats::{Counters, Snapshot};
use vfio_sidecar_protocol::client::{Client, DmaProt};
use vfio_sidecar_protocol::message::IrqAction;
use vfio_sidecar_tests::pl330::Regs;
use vfio_sidecar_tests::{
    cpu_ticks, drain, eventfd, run_ok, set_eventfd, set_nofile, wait_until, workspace_bin,
    GuestMem, Sidecar, TempDir, WAIT,
};

const IOVA: u64 = 0x4000_0000;
const MEM: u64 = 0x10000;
const SRC: u64 = 0x1000;
const DST: u64 = 0x4000;
const LEN: u32 = 0x800;

/// A PL330 backend with a statistics socket in its own directory.
fn start(extra: &[&str]) -> (Sidecar, PathBuf, TempDir) {
    let dir = TempDir::new("stats");
    let stats = dir.0.join("s.stats");
    let mut args = vec!["--stats-socket", stats.to_str().unwrap()];
    args.extend_from_slice(extra);
    let srv = Sidecar::start("model:pl330", &args);
    (srv, stats, dir)
}

fn snapshot(stats: &Path) -> Snapshot {
    read_snapshot(stats, 5).unwrap()
}

/// An extension client with 64 KiB of executable guest memory mapped and an
/// eventfd on IRQ 0.
struct Guest {
    c: Client,
    mem: GuestMem,
    irq: std::fs::File,
    _fd: std::os::fd::OwnedFd,
}

fn guest(srv: &Sidecar) -> Guest {
    let mut c = srv.connect(true);
    let mem = GuestMem::new("guest", MEM);
    let prot = DmaProt {
        read: true,
        write: true,
        exec: true,
    };
    c.dma_map(IOVA, MEM, mem.fd(), 0, prot).unwrap();
    let (fd, irq) = eventfd();
    set_eventfd(&mut c, 0, IrqAction::Trigger, fd.as_fd()).unwrap();
    Guest {
        c,
        mem,
        irq,
        _fd: fd,
    }
}

impl Guest {
    /// One Linux-shaped copy that signals event 0, then the ISR's INTCLR.
    fn transfer(&mut self) {
        let x = LinuxXfer::memcpy(
            &Pl330Config::default(),
            (IOVA + SRC) as u32,
            (IOVA + DST) as u32,
            LEN,
            0,
        );
        self.mem.write(0, &linux_mem_to_mem(&x).unwrap());
        let pattern: Vec<u8> = (0..LEN).map(|i| (i * 5 + 1) as u8).collect();
        self.mem.write(SRC, &pattern);
        self.mem.write(DST, &vec![0; LEN as usize]);
        let inten = self.c.read32(INTEN);
        self.c.write32(INTEN, inten | 1);
        self.c.dmago(IOVA as u32);
        assert_eq!(self.mem.read(DST, LEN as usize), pattern, "DMA copy");
        wait_until("the interrupt", WAIT, || drain(&self.irq) > 0);
        assert_eq!(self.c.read32(INT_EVENT_RIS) & 1, 1);
        self.c.write32(INTCLR, 1);
    }
}

fn irq0(c: &Counters) -> (u64, u64, u64) {
    let r = c
        .irqs
        .iter()
        .find(|r| r.index == 0 && r.vector == 0)
        .copied()
        .unwrap_or_default();
    (r.device_events, r.host_interrupts, r.unmasks)
}

fn mmio0(c: &Counters) -> (u64, u64) {
    c.mmio
        .iter()
        .find(|r| r.region == 0)
        .map_or((0, 0), |r| (r.rw.reads, r.rw.writes))
}

fn einval(c: &Counters) -> u64 {
    c.errors
        .iter()
        .find(|e| e.name == "EINVAL")
        .map_or(0, |e| e.count)
}

fn probe(stats: &Path, extra: &[&str]) -> String {
    let bin = workspace_bin("vfio-sidecar", "vfio-sidecar");
    let out = run_ok(
        Command::new(bin)
            .args(["probe", "--stats", "--socket"])
            .arg(stats)
            .args(extra),
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn live_session_counters_and_process_totals() {
    let (srv, stats, _dir) = start(&[]);
    let s = snapshot(&stats);
    assert!(s.session.is_none());
    assert_eq!(s.process.sessions, 0);
    assert_eq!(s.device, "model:pl330");
    assert_eq!(s.profile, "pl330");

    // First client: two transfers and one refused access.
    let mut g = guest(&srv);
    g.transfer();
    g.transfer();
    assert!(g.c.region_read(1, 0, 4).is_err(), "no region 1");
    let s = snapshot(&stats);
    let sess = s.session.as_ref().expect("a client is connected");
    assert_eq!(sess.number, 1);
    assert_eq!(sess.client.pid, std::process::id() as i32);
    let c = &sess.counters;
    assert_eq!(irq0(c), (2, 2, 2), "events, host interrupts, unmasks");
    let (reads, writes) = mmio0(c);
    // Per transfer: INTEN and INT_EVENT_RIS reads; INTEN, DBGINST0/1,
    // DBGCMD and INTCLR writes.
    assert!(reads >= 4 && writes >= 10, "{reads} reads {writes} writes");
    assert_eq!(c.mmio_pages.len(), 1, "one 4 KiB frame");
    assert!(c.dma.read_bytes.get() >= 2 * u64::from(LEN), "{:?}", c.dma);
    assert_eq!(c.dma.write_bytes.get(), 2 * u64::from(LEN), "{:?}", c.dma);
    assert_eq!(c.dma.faults.get(), 0);
    assert_eq!(einval(c), 1);
    // SIDECAR_GET_IRQ_STATS: the same session counters.
    let st = g.c.irq_stats(0, 0, 1).unwrap()[0];
    assert_eq!((st.device_events, st.host_interrupts), (2, 2));
    // The probe binary reads the same, while this client stays attached.
    let j: Value = serde_json::from_str(&probe(&stats, &["--json"])).unwrap();
    assert_eq!(j["session"]["number"], 1);
    assert_eq!(j["session"]["client"]["pid"], std::process::id());
    let text = probe(&stats, &[]);
    assert!(text.contains("session   #1: client pid"), "{text}");
    drop(g);
    wait_until("the session's end", WAIT, || {
        snapshot(&stats).session.is_none()
    });

    // Second client: one transfer. Its session starts from zero; the
    // process totals hold both.
    let mut g = guest(&srv);
    let s = snapshot(&stats);
    let c = &s.session.as_ref().unwrap().counters;
    assert_eq!(irq0(c), (0, 0, 0));
    assert_eq!(c.dma.write_bytes.get(), 0);
    g.transfer();
    let s = snapshot(&stats);
    let sess = s.session.as_ref().unwrap();
    assert_eq!(sess.number, 2);
    assert_eq!(irq0(&sess.counters), (1, 1, 1));
    assert_eq!(einval(&sess.counters), 0);
    let t = &s.process.counters;
    assert_eq!(irq0(t), (3, 3, 3));
    assert_eq!(einval(t), 1);
    assert_eq!(t.dma.write_bytes.get(), 3 * u64::from(LEN));
    assert!(mmio0(t).0 > mmio0(&sess.counters).0);
    assert_eq!(s.process.sessions, 2);
    let st = g.c.irq_stats(0, 0, 1).unwrap()[0];
    assert_eq!(st.device_events, 1, "IRQ_STATS is per session");
    let prom = probe(&stats, &["--prometheus"]);
    for want in [
        "vfio_sidecar_irq_device_events_total{scope=\"session\",index=\"0\",vector=\"0\"} 1",
        "vfio_sidecar_irq_device_events_total{scope=\"process\",index=\"0\",vector=\"0\"} 3",
        "vfio_sidecar_errors_total{scope=\"process\",errno=\"EINVAL\"} 1",
        "vfio_sidecar_sessions_total 2",
        "vfio_sidecar_client_connected 1",
    ] {
        assert!(prom.contains(want), "no {want:?} in\n{prom}");
    }
    // A second VMM is refused (EBUSY) and counted; the session goes on.
    let busy = Client::connect(&srv.socket, Default::default());
    assert!(busy.is_err());
    wait_until("the refusal counted", WAIT, || {
        snapshot(&stats).process.refused_busy == 1
    });
    g.transfer();
    assert_eq!(irq0(&snapshot(&stats).session.unwrap().counters).0, 2);
}

#[test]
fn stats_peers_that_never_read_stall_nothing() {
    let (mut srv, stats, _dir) = start(&[]);
    // Peers that connect and never read, and one that sends and never reads.
    let mut idle: Vec<UnixStream> = (0..32)
        .map(|_| UnixStream::connect(&stats).unwrap())
        .collect();
    {
        use std::io::Write;
        let mut chatty = UnixStream::connect(&stats).unwrap();
        let _ = chatty.write_all(&[0x55; 4096]);
        idle.push(chatty);
    }
    let mut g = guest(&srv);
    for _ in 0..3 {
        g.transfer();
    }
    let s = snapshot(&stats);
    assert_eq!(irq0(&s.session.unwrap().counters).0, 3);
    // More idle peers while the client is attached, then SIGTERM: a clean
    // exit, both socket files removed.
    idle.extend((0..8).map(|_| UnixStream::connect(&stats).unwrap()));
    g.transfer();
    let st = srv.terminate();
    assert!(st.success(), "exit status {st}: {}", srv.log_text());
    assert!(!stats.exists(), "statistics socket left behind");
    assert!(!srv.socket.exists(), "socket left behind");
    drop(idle);
}

#[test]
fn stats_socket_same_as_main_socket_is_refused() {
    let dir = TempDir::new("stats-same");
    let sock = dir.0.join("s.sock");
    let bin = workspace_bin("vfio-sidecar", "vfio-sidecar");
    let out = Command::new(bin)
        .args(["serve", "--device", "model:pl330", "--socket"])
        .arg(&sock)
        .arg("--stats-socket")
        .arg(&sock)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is the vfio-user socket"), "{err}");
}

#[test]
fn probe_stats_on_the_vfio_user_socket_says_what_to_use() {
    let (srv, _stats, _dir) = start(&[]);
    let bin = workspace_bin("vfio-sidecar", "vfio-sidecar");
    let out = Command::new(bin)
        .args(["probe", "--stats", "--timeout", "1", "--socket"])
        .arg(&srv.socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sent no statistics snapshot"), "{err}");
    assert!(err.contains("--stats-socket"), "{err}");
}

#[test]
fn stats_socket_follows_the_socket_mode() {
    use std::os::unix::fs::PermissionsExt;
    let (_srv, stats, _dir) = start(&["--socket-mode", "0660"]);
    let mode = std::fs::metadata(&stats).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let (_srv, stats, _dir) = start(&[]);
    let mode = std::fs::metadata(&stats).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "default 0600");
}

/// A statistics peer pending while the fd table is full: `accept` fails
/// with EMFILE; the statistics listener backs off (bounded CPU and log
/// lines, the main socket unaffected) and the peer gets its snapshot once
/// fds are available again.
#[test]
fn stats_accept_failing_with_emfile_backs_off_and_recovers() {
    use std::io::Read;
    let (mut srv, stats, _dir) = start(&[]);
    let pid = srv.pid();
    set_nofile(pid, 3);
    let mut peer = UnixStream::connect(&stats).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let lines0 = srv.log_text().lines().count();
    let ticks0 = cpu_ticks(pid);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let ticks = cpu_ticks(pid) - ticks0;
    let lines = srv.log_text().lines().count() - lines0;
    println!("with the fd table full for 2 s: {ticks} CPU ticks, {lines} log lines");
    assert!(
        srv.log_text()
            .contains("not accepting statistics peers for"),
        "accept never failed: {}",
        srv.log_text()
    );
    assert!(ticks < 40, "busy loop: {ticks} ticks of CPU in 2 s");
    assert!(lines < 60, "log flood: {lines} lines in 2 s");
    set_nofile(pid, 1024);
    peer.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut doc = Vec::new();
    peer.read_to_end(&mut doc).unwrap();
    let s: Snapshot = serde_json::from_slice(&doc).unwrap();
    assert_eq!(s.process.sessions, 0);
    // The vfio-user socket still serves.
    let mut g = guest(&srv);
    g.transfer();
    drop(g);
    assert!(srv.terminate().success());
}
