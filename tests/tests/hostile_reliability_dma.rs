//! Issue 13 #2, #3 and the sysfs case: DMA_MAP attacks on the backend's memory.
//!
//! * #2: a client holding 20,000 DMA maps (a VMM with a vIOMMU maps thousands
//!   of pages) disconnects, sends unmap-all, or is SIGKILLed (this test binary
//!   re-executed with `REL_MAPS_CHILD_SOCKET` set, running
//!   `child_holds_20000_maps`). Before the fix glibc's heap trimming during
//!   the unmap of every mapping opened `/proc/sys/vm/overcommit_memory`, which
//!   the seccomp filter forbids: the backend died by SIGSYS. Default seccomp.
//! * #3: the client truncates its memfd and seals it against shrinking while
//!   the backend handles its DMA_MAP. Before the fix the backend checked the
//!   size, mmapped, then read the seals: a mapping of a shrunk file was
//!   treated as sealed (plain copies), and the next DMA touching it killed
//!   the backend with SIGBUS.
//! * sysfs/procfs files are not RAM: DMA_MAP of one is refused, with a reason
//!   that says so (a PCI `resourceN` file of another device would otherwise
//!   pass as a regular file and give the device MMIO of another device).
#![allow(clippy::unwrap_used)]

mod hostile_util;
mod reliability_util;

use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hostile_util::*;
use reliability_util::*;
use vfio_sidecar::model::pl330::insn::Insn;
use vfio_sidecar::model::pl330::regs::FSRD;
use vfio_sidecar_protocol::client::{Client, ClientOptions};
use vfio_sidecar_protocol::header::command as cmd;
use vfio_sidecar_tests::{maps_matching, wait_until, GuestMem, Sidecar, RW, WAIT};

const IOVA: u64 = 0x4000_0000;
const R: u32 = 1;
const W: u32 = 2;
const X: u32 = 1 << 16;

/// DMA maps a vIOMMU-sized client holds (issue 13: ≥ 20,000).
const MAPS: u64 = 20_000;

/// Maps [`MAPS`] pages of one memfd at consecutive IOVAs (one entry each).
fn map_many(c: &mut Client, mem: &GuestMem) {
    for i in 0..MAPS {
        c.dma_map(IOVA + i * 0x1000, 0x1000, mem.fd(), 0, RW)
            .unwrap_or_else(|e| panic!("map {i}: {e}"));
    }
}

/// The backend survived a 20,000-map client's end: it cleaned up every
/// mapping, serves a new client (a map, a request), and exits cleanly on
/// SIGTERM within 1 s.
fn survives(srv: &Sidecar, name: &str) {
    let pid = srv.pid();
    srv.wait_log("client disconnected");
    wait_until("every mapping released", WAIT, || {
        exited(pid) || maps_matching(pid, name) == 0
    });
    assert!(
        !exited(pid),
        "backend died after the client's end: {}",
        srv.log_text()
    );
    let mut r = Raw::negotiated(&srv.socket, true);
    let mem = GuestMem::new("after", 0x1000);
    r.map("map after", &mem, R | W, IOVA, 0x1000);
    r.still_works();
    sigterm_exits_within(srv, SIGTERM_LIMIT);
}

fn connect(srv: &Sidecar) -> Client {
    Client::connect(&srv.socket, ClientOptions::default()).unwrap()
}

#[test]
fn client_with_20000_maps_disconnects() {
    let srv = Sidecar::start("model:pl330", &[]);
    let mut c = connect(&srv);
    let mem = GuestMem::new("manymaps", 0x1000);
    map_many(&mut c, &mem);
    assert_eq!(maps_matching(srv.pid(), "memfd:manymaps"), MAPS as usize);
    drop(c);
    survives(&srv, "memfd:manymaps");
}

#[test]
fn client_with_20000_maps_unmaps_all() {
    let srv = Sidecar::start("model:pl330", &[]);
    let mut c = connect(&srv);
    let mem = GuestMem::new("manymaps", 0x1000);
    map_many(&mut c, &mem);
    c.dma_unmap_all().expect("unmap-all answered");
    assert_eq!(maps_matching(srv.pid(), "memfd:manymaps"), 0);
    // Twice: the second time the allocator trims what the first map-all grew.
    map_many(&mut c, &mem);
    c.dma_unmap_all().expect("second unmap-all answered");
    drop(c);
    survives(&srv, "memfd:manymaps");
}

/// The client process of `client_with_20000_maps_is_sigkilled`.
#[test]
fn child_holds_20000_maps() {
    let Ok(sock) = std::env::var("REL_MAPS_CHILD_SOCKET") else {
        return; // Only runs as the child of `client_with_20000_maps_is_sigkilled`.
    };
    let mut c = Client::connect(std::path::Path::new(&sock), ClientOptions::default()).unwrap();
    let mem = GuestMem::new("killedmaps", 0x1000);
    map_many(&mut c, &mem);
    println!("ready");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn client_with_20000_maps_is_sigkilled() {
    if std::env::var("REL_MAPS_CHILD_SOCKET").is_ok() {
        return;
    }
    let srv = Sidecar::start("model:pl330", &[]);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_holds_20000_maps",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("REL_MAPS_CHILD_SOCKET", &srv.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    while !line.contains("ready") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child died early");
    }
    assert_eq!(maps_matching(srv.pid(), "memfd:killedmaps"), MAPS as usize);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    assert!(!child.wait().unwrap().success());
    survives(&srv, "memfd:killedmaps");
}

/// A memfd that allows sealing, `size` bytes.
fn sealable_memfd(size: u64) -> OwnedFd {
    // SAFETY: memfd_create reads the NUL-terminated name.
    let fd = unsafe {
        libc::memfd_create(
            c"sealrace".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    assert!(fd >= 0);
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let f = std::fs::File::from(fd);
    f.set_len(size).unwrap();
    f.into()
}

#[test]
fn truncate_and_seal_racing_dma_map_never_kills_the_backend() {
    let (srv, mut r) = pl330_peer(&[], true);
    let mut rng = Rng(0x853c_49e6_748f_ea9b);
    let (mut accepted, mut refused, mut rounds) = (0u32, 0u32, 0u32);
    let t0 = Instant::now();
    r.sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // The client's truncate must land just after the backend's size check:
    // the delay adapts towards that point (longer after a refusal, i.e. the
    // truncate came before the check; shorter after an accepted map), with
    // jitter around it.
    let mut delay: u64 = 20_000;
    while rounds < 6000 && t0.elapsed() < Duration::from_secs(12) {
        rounds += 1;
        let fd = sealable_memfd(0x10000);
        let id = r.send(
            cmd::DMA_MAP,
            &dma_map(R | W | X, 0, IOVA, 0x10000),
            &[fd.as_raw_fd()],
        );
        // Inside the backend's DMA_MAP (a few µs after its wake-up): shrink
        // to one page and seal against shrinking.
        spin((delay + rng.next() % 3000).saturating_sub(1500));
        // SAFETY: ftruncate/F_ADD_SEALS on our own memfd.
        unsafe {
            assert_eq!(libc::ftruncate(fd.as_raw_fd(), 0x1000), 0);
            assert_eq!(
                libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK),
                0
            );
        }
        let rep = r.try_reply().unwrap_or_else(|e| {
            panic!("round {rounds}: no DMA_MAP reply ({e}): {}", srv.log_text())
        });
        assert_eq!(rep.hdr.msg_id, id);
        if rep.errno() != 0 {
            refused += 1;
            delay = (delay + 400).min(200_000);
            continue;
        }
        accepted += 1;
        delay = delay.saturating_sub(400);
        // The mapping's pages 1.. are gone: the DMAGO gate's fetch probe at
        // page 9 must fault the manager, not kill the backend by SIGBUS.
        r.try_dmago(IOVA as u32 + 0x9000)
            .unwrap_or_else(|e| panic!("round {rounds}: DMAGO: {e}: {}", srv.log_text()));
        assert_eq!(r.read32(FSRD) & 1, 1, "round {rounds}: manager fault");
        r.debug_insn(Insn::Kill, None);
        r.expect(
            "unmap",
            cmd::DMA_UNMAP,
            &dma_unmap(0, IOVA, 0x10000),
            &[],
            0,
        );
    }
    println!("{rounds} rounds: {accepted} maps accepted (then faulted), {refused} refused");
    assert!(accepted > 0, "the race window was never reached");
    r.still_works();
    drop(r);
    srv.wait_log("client disconnected");
    sigterm_exits_within(&srv, SIGTERM_LIMIT);
}

/// Regular files that are not RAM (sysfs attributes, procfs files, and a PCI
/// BAR's `resourceN` if this machine has one) are refused, saying so; a
/// tmpfs file and a file on the disk filesystem of the temporary directory
/// are accepted.
#[test]
fn sysfs_and_procfs_files_are_not_ram() {
    let (srv, mut r) = pl330_peer(&[], true);
    let mut refused: Vec<String> = vec![
        "/sys/devices/system/cpu/online".into(),
        "/sys/kernel/btf/vmlinux".into(),
        "/proc/version".into(),
        "/proc/self/stat".into(),
    ];
    if let Ok(devs) = std::fs::read_dir("/sys/bus/pci/devices") {
        let bars = devs
            .flatten()
            .flat_map(|d| (0..6).map(move |i| d.path().join(format!("resource{i}"))))
            .find(|p| p.is_file());
        refused.extend(bars.map(|p| p.display().to_string()));
    }
    let mut tried = 0;
    for path in &refused {
        let Ok(f) = std::fs::File::open(path) else {
            continue;
        };
        tried += 1;
        r.expect(
            path,
            cmd::DMA_MAP,
            &dma_map(R, 0, IOVA, 0x1000),
            &[f.as_raw_fd()],
            libc::EINVAL,
        );
    }
    assert!(tried >= 3, "no sysfs/procfs file to try");
    let log = srv.log_text();
    for fs in ["sysfs", "proc"] {
        assert!(
            log.contains(&format!("on {fs} (")) && log.contains("is not RAM"),
            "refusal of a {fs} file does not say why: {log}"
        );
    }
    // RAM and disk files are fine.
    let shm = std::path::Path::new("/dev/shm").join(format!("rel-{}", std::process::id()));
    let disk = srv.dir().join("guest.mem");
    for (i, p) in [&shm, &disk].into_iter().enumerate() {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(p)
            .unwrap();
        f.set_len(0x1000).unwrap();
        r.expect(
            &p.display().to_string(),
            cmd::DMA_MAP,
            &dma_map(R | W, 0, IOVA + 0x10_0000 * (i as u64 + 1), 0x1000),
            &[f.as_fd().as_raw_fd()],
            0,
        );
    }
    let _ = std::fs::remove_file(&shm);
    r.still_works();
}
