//! In-guest test client for the real-VFIO harness (tests/real-vfio). It runs inside the
//! nested QEMU guest, where QEMU's `edu` PCI device (1234:11e8) is bound to vfio-pci
//! behind an emulated Intel IOMMU.
//!
//! `real-vfio-client direct [SYSFS]`: drives `vfio_sidecar::vfio::open` and the
//! [`Device`] impl in-process: device/region/IRQ info, BAR0 by pread/pwrite and by
//! mmap, DMA through the real IOMMU (and blocked after unmap), INTx automask +
//! unmask (+ refire count) + kernel virqfd unmask, MSI, /proc/interrupts counters,
//! reset. Prints `PASS`/`FAIL` lines; exit status = number of failures (0 = all pass).
//!
//! `real-vfio-client e2e BACKEND [SYSFS]`: starts `BACKEND serve --socket
//! /tmp/real-vfio.sock --device vfio:SYSFS` and checks the same device end to end
//! through the vfio-user protocol `Client`: info, sparse mmap with the ack-register
//! page trapped, DMA from a memfd, INTx with the backend's clear-register EOI,
//! IRQ_STATS, MSI, and an abrupt disconnect after which a new client finds no
//! leftover mapping or interrupt trigger.
//!
//! `REAL_VFIO_IOMMU=auto|container|iommufd` (default `auto`) selects
//! `VfioOptions::iommu` for the direct phase; it checks which backend `open` chose
//! (`auto`: iommufd exactly when `/dev/iommu` and the device's vfio cdev exist) and,
//! on a kernel without `/dev/iommu`, that asking for iommufd fails with the clear error.
//!
//! Every wait has a timeout (3 s for an expected event); "nothing arrives" checks
//! wait 200-300 ms.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use vfio_sidecar::device::{
    device_flags, irq_flags, Device, DmaProt, IrqAction, IrqData, MappedRegion, NoDmaMemory,
    SetIrqs,
};
use vfio_sidecar::vfio::{self, IommuBackend, VfioOptions};
use vfio_sidecar_protocol::testing;
use vfio_sidecar_tests::wait_event;

const EDU_ID: u32 = 0x0100_00ed;
const IOVA: u64 = 0x10_0000;

struct Checks {
    failed: u32,
    passed: u32,
}

impl Checks {
    fn check(&mut self, ok: bool, what: &str) {
        if ok {
            self.passed += 1;
            println!("PASS {what}");
        } else {
            self.failed += 1;
            println!("FAIL {what}");
        }
    }
}

/// Finds edu's sysfs directory by vendor:device.
fn find_edu() -> Option<PathBuf> {
    let rd = std::fs::read_dir("/sys/bus/pci/devices").ok()?;
    for e in rd.flatten() {
        let p = e.path();
        let v = std::fs::read_to_string(p.join("vendor")).unwrap_or_default();
        let d = std::fs::read_to_string(p.join("device")).unwrap_or_default();
        if v.trim() == "0x1234" && d.trim() == "0x11e8" {
            return Some(PathBuf::from("/sys/bus/pci/devices").join(e.file_name()));
        }
    }
    None
}

/// A shared read-write mapping of device memory (a region of a VFIO device
/// fd or an fd a vfio-user server sent), unmapped on drop; accessed with
/// volatile 32-bit reads and writes only.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes of `fd` at `offset`; None if mmap fails.
    fn shared(fd: RawFd, len: usize, offset: u64) -> Option<Mapping> {
        let offset = libc::off_t::try_from(offset).ok()?;
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: a new mapping chosen by the kernel; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd,
                offset,
            )
        };
        (p != libc::MAP_FAILED).then(|| Mapping { ptr: p.cast(), len })
    }

    /// The word at `off`, or None if it is outside the mapping.
    fn read32(&self, off: usize) -> Option<u32> {
        (off.checked_add(4)? <= self.len).then(|| {
            // SAFETY: off + 4 <= len: inside the mapping; device memory needs volatile.
            unsafe { self.ptr.add(off).cast::<u32>().read_volatile() }
        })
    }

    /// Writes the word at `off` (ignored outside the mapping).
    fn write32(&self, off: usize, v: u32) {
        if off.checked_add(4).is_some_and(|end| end <= self.len) {
            // SAFETY: off + 4 <= len: inside the mapping; device memory needs volatile.
            unsafe { self.ptr.add(off).cast::<u32>().write_volatile(v) }
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping `shared` made; nothing refers to it after drop.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn eventfd() -> OwnedFd {
    testing::eventfd(true).expect("eventfd")
}

fn signal(fd: &OwnedFd) {
    let _ = testing::eventfd_signal(fd.as_raw_fd());
}

fn rd32(d: &mut dyn Device, off: u64) -> u32 {
    let mut b = [0u8; 4];
    match d.region_read(0, off, &mut b) {
        Ok(()) => u32::from_le_bytes(b),
        Err(e) => {
            println!("  region_read BAR0+{off:#x}: {e}");
            0xdead_dead
        }
    }
}
fn wr32(d: &mut dyn Device, off: u64, v: u32) {
    if let Err(e) = d.region_write(0, off, &v.to_le_bytes(), &NoDmaMemory) {
        println!("  region_write BAR0+{off:#x}: {e}");
    }
}
fn wr64(d: &mut dyn Device, off: u64, v: u64) {
    if let Err(e) = d.region_write(0, off, &v.to_le_bytes(), &NoDmaMemory) {
        println!("  region_write BAR0+{off:#x}: {e}");
    }
}

/// edu DMA: src/dst/count/cmd; waits for completion (bit 0 of cmd clears, ~100 ms
/// of QEMU virtual time per DMA).
fn edu_dma(d: &mut dyn Device, src: u64, dst: u64, len: u64, to_ram: bool) -> bool {
    wr64(d, 0x80, src);
    wr64(d, 0x88, dst);
    wr64(d, 0x90, len);
    wr64(d, 0x98, if to_ram { 3 } else { 1 });
    for _ in 0..300 {
        if rd32(d, 0x98) & 1 == 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// SET_IRQS of a duplicate of `fd` as the `action` eventfd of vector 0.
fn set_eventfd(d: &mut dyn Device, index: u32, action: IrqAction, fd: &OwnedFd) -> bool {
    set_irqs(
        d,
        index,
        action,
        IrqData::Eventfd(vec![fd.try_clone().ok()]),
        1,
    )
}

fn set_irqs(d: &mut dyn Device, index: u32, action: IrqAction, data: IrqData, count: u32) -> bool {
    match d.set_irqs(SetIrqs {
        index,
        start: 0,
        count,
        action,
        data,
    }) {
        Ok(()) => true,
        Err(e) => {
            println!("  set_irqs index {index} {action:?}: {e}");
            false
        }
    }
}

/// `VfioOptions` with the IOMMU backend from `REAL_VFIO_IOMMU` (default auto).
fn opts_from_env() -> Result<VfioOptions, String> {
    let iommu = match std::env::var("REAL_VFIO_IOMMU") {
        Ok(v) if !v.is_empty() => v.parse::<IommuBackend>()?,
        _ => IommuBackend::Auto,
    };
    Ok(VfioOptions {
        iommu,
        ..VfioOptions::default()
    })
}

fn direct(path: &Path) -> u32 {
    let mut c = Checks {
        failed: 0,
        passed: 0,
    };
    let opts = match opts_from_env() {
        Ok(o) => o,
        Err(e) => {
            println!("FAIL REAL_VFIO_IOMMU: {e}");
            return 1;
        }
    };
    let have_iommufd = Path::new("/dev/iommu").exists();
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let cdev = vfio::iommufd::vfio_cdev(&real);
    println!(
        "  IOMMU: asked for {}; /dev/iommu {}; vfio cdev {}",
        opts.iommu,
        if have_iommufd { "present" } else { "absent" },
        cdev.as_deref().unwrap_or("none")
    );
    if !have_iommufd {
        // A kernel without iommufd: asking for it fails before touching the device.
        let e = vfio::open(
            path,
            &VfioOptions {
                iommu: IommuBackend::Iommufd,
                ..VfioOptions::default()
            },
        )
        .map(|_| ())
        .map_err(|e| e.to_string());
        println!("  --iommu iommufd here: {e:?}");
        c.check(
            e.as_ref().is_err_and(|m| {
                m.contains("/dev/iommu does not exist")
                    && m.contains("CONFIG_IOMMUFD")
                    && m.contains("use --iommu container")
            }),
            "iommufd asked for without /dev/iommu: clear error",
        );
    }
    let mut dev = match vfio::open(path, &opts) {
        Ok(d) => d,
        Err(e) => {
            println!("FAIL vfio::open({}): {e}", path.display());
            return c.failed + 1;
        }
    };
    let want = match opts.iommu {
        IommuBackend::Auto if have_iommufd && cdev.is_some() => IommuBackend::Iommufd,
        IommuBackend::Auto => IommuBackend::Container,
        b => b,
    };
    println!("  IOMMU backend in use: {}", dev.iommu_backend());
    c.check(
        dev.iommu_backend() == want,
        &format!("IOMMU backend is {want}"),
    );
    let d: &mut dyn Device = &mut dev;

    // ---- info
    let info = d.info();
    println!("  device info: {info:?}");
    c.check(info.flags & device_flags::PCI != 0, "device is PCI");
    c.check(
        info.flags & device_flags::RESET != 0,
        "device has RESET (behind a root port)",
    );
    c.check(
        info.num_regions >= 8 && info.num_irqs >= 2,
        "regions >= 8, irqs >= 2",
    );
    let bar0 = d.region_info(0);
    println!("  BAR0: {bar0:?}");
    let bar0 = match bar0 {
        Ok(r) => r,
        Err(e) => {
            println!("FAIL region_info(0): {e}");
            return c.failed + 1;
        }
    };
    c.check(
        bar0.name == "BAR0" && bar0.size == 0x10_0000,
        "BAR0 named, 1 MiB",
    );
    c.check(
        bar0.mmap.as_ref().is_some_and(|m| !m.areas.is_empty()),
        "BAR0 mmappable",
    );
    let cfg = d.region_info(7);
    c.check(
        cfg.as_ref()
            .is_ok_and(|r| r.name == "config" && r.mmap.is_none()),
        "region 7 = config, not mmappable",
    );
    let mut b = [0u8; 4];
    let ok = d.region_read(7, 0, &mut b).is_ok();
    c.check(
        ok && u32::from_le_bytes(b) == 0x11e8_1234,
        "config vendor/device = 1234:11e8",
    );
    let intx = d.irq_info(0);
    println!("  IRQ 0: {intx:?}, IRQ 1: {:?}", d.irq_info(1));
    c.check(
        intx.is_ok_and(|i| {
            i.count == 1
                && i.flags & (irq_flags::EVENTFD | irq_flags::MASKABLE | irq_flags::AUTOMASKED)
                    == (irq_flags::EVENTFD | irq_flags::MASKABLE | irq_flags::AUTOMASKED)
        }),
        "INTx: 1 vector, EVENTFD|MASKABLE|AUTOMASKED",
    );

    // ---- BAR0 by pread/pwrite
    c.check(rd32(d, 0) == EDU_ID, "edu ID via region_read");
    wr32(d, 4, 0x1234_5678);
    c.check(
        rd32(d, 4) == !0x1234_5678,
        "edu liveness (inverts) via region_write/read",
    );

    // ---- BAR0 by mmap
    if let Some(m) = &bar0.mmap {
        // The VFIO device fd at the region offset the kernel reported.
        match Mapping::shared(m.fd, bar0.size as usize, m.fd_offset) {
            None => c.check(false, "mmap BAR0"),
            Some(map) => {
                let id = map.read32(0);
                map.write32(4, 0x0f0f_0000);
                c.check(id == Some(EDU_ID), "edu ID via mmap");
                c.check(map.read32(4) == Some(!0x0f0f_0000), "edu liveness via mmap");
            }
        }
    }

    // ---- DMA through the IOMMU
    const LEN: usize = 0x3000;
    // SAFETY: anonymous private mapping; accessed only through raw pointers below.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert!(mem != libc::MAP_FAILED);
    let mem = mem.cast::<u8>();
    let region = MappedRegion {
        iova: IOVA,
        size: LEN as u64,
        host_addr: mem as u64,
        prot: DmaProt {
            read: true,
            write: true,
            exec: false,
        },
    };
    for i in 0..LEN {
        // SAFETY: i < LEN, inside the mapping; raw writes (the device may DMA here).
        unsafe {
            mem.add(i)
                .write_volatile(if i < 0x1000 { (i * 7 + 3) as u8 } else { 0 })
        };
    }
    let mapped = d.dma_map(&region);
    if let Err(e) = &mapped {
        println!("  dma_map: {e}");
    }
    c.check(mapped.is_ok(), "dma_map into the IOMMU");
    c.check(dev.bus_master_enabled(), "bus master enabled on DMA map");
    let d: &mut dyn Device = &mut dev;
    let dup = d.dma_map(&region);
    c.check(
        dup.is_err(),
        "second map of the same IOVA refused by the kernel",
    );
    let ok1 = edu_dma(d, IOVA, 0x40000, 0x100, false);
    let ok2 = edu_dma(d, 0x40000, IOVA + 0x1000, 0x100, true);
    // SAFETY: both ranges are inside the mapping; volatile reads of DMA'd memory.
    let same = (0..0x100)
        .all(|i| unsafe { mem.add(0x1000 + i).read_volatile() == mem.add(i).read_volatile() });
    c.check(
        ok1 && ok2 && same,
        "edu DMA RAM -> device -> RAM round-trips the bytes",
    );
    let unmapped = d.dma_unmap(&region);
    c.check(unmapped.is_ok(), "dma_unmap");
    for i in 0x2000..0x2100 {
        // SAFETY: inside the mapping.
        unsafe { mem.add(i).write_volatile(0x5a) };
    }
    let _ = edu_dma(d, 0x40000, IOVA + 0x2000, 0x100, true);
    // SAFETY: inside the mapping.
    let untouched = (0x2000..0x2100).all(|i| unsafe { mem.add(i).read_volatile() } == 0x5a);
    c.check(untouched, "DMA to the unmapped IOVA does not reach memory");
    c.check(dev.mappings().is_empty(), "no mappings left");
    let d: &mut dyn Device = &mut dev;

    // ---- INTx: automask, unmask, refire, counters
    let trig = eventfd();
    c.check(
        set_eventfd(d, 0, IrqAction::Trigger, &trig),
        "INTx trigger eventfd set",
    );
    c.check(wait_event(&trig, 100) == 0, "no spurious INTx");
    wr32(d, 0x60, 1);
    c.check(wait_event(&trig, 3000) != 0, "INTx delivered on raise");
    wr32(d, 0x60, 1);
    c.check(
        wait_event(&trig, 300) == 0,
        "second raise while auto-masked not delivered",
    );
    wr32(d, 0x64, 1);
    c.check(d.unmask_irq(0, 0).is_ok(), "unmask after ack");
    c.check(
        wait_event(&trig, 200) == 0,
        "nothing pending after ack + unmask",
    );
    let k = d.irq_counters(0, 0);
    println!("  INTx counters after 1 event: {k:?}");
    c.check(
        k.is_some_and(|k| k.host_interrupts == 1 && k.unmasks == 1 && k.refires == 0),
        "counters: 1 host interrupt, 1 unmask, 0 refires",
    );
    wr32(d, 0x60, 1);
    c.check(wait_event(&trig, 3000) != 0, "raise after unmask delivered");
    let _ = d.unmask_irq(0, 0); // line still asserted: vfio re-signals at once
    c.check(
        wait_event(&trig, 3000) != 0,
        "unmask with the line asserted re-fires",
    );
    wr32(d, 0x64, 1);
    let _ = d.unmask_irq(0, 0);
    c.check(wait_event(&trig, 200) == 0, "quiet after ack");
    let k = d.irq_counters(0, 0);
    println!("  INTx counters: {k:?}");
    c.check(
        k.is_some_and(|k| k.host_interrupts == 2 && k.unmasks == 3 && k.refires == 1),
        "counters: 2 host interrupts, 3 unmasks, 1 refire",
    );
    // kernel-side unmask (virqfd): signalling the resample eventfd unmasks
    let resample = eventfd();
    c.check(
        set_eventfd(d, 0, IrqAction::Unmask, &resample),
        "INTx unmask eventfd (virqfd) set",
    );
    wr32(d, 0x60, 1);
    c.check(wait_event(&trig, 3000) != 0, "INTx delivered (virqfd run)");
    wr32(d, 0x64, 1);
    signal(&resample);
    std::thread::sleep(Duration::from_millis(50));
    wr32(d, 0x60, 1);
    c.check(
        wait_event(&trig, 3000) != 0,
        "after ack + resample signal the kernel unmasked: next raise delivered",
    );
    wr32(d, 0x64, 1);
    signal(&resample);
    c.check(
        set_irqs(d, 0, IrqAction::Unmask, IrqData::Eventfd(vec![None]), 1),
        "virqfd removed",
    );
    c.check(
        set_irqs(d, 0, IrqAction::Trigger, IrqData::None, 0),
        "INTx disabled",
    );
    drop(trig);

    // ---- MSI (edu has one vector, no MSI-X)
    let msi_info = d.irq_info(1);
    if msi_info.is_ok_and(|i| i.count >= 1) {
        let msi = eventfd();
        c.check(
            set_eventfd(d, 1, IrqAction::Trigger, &msi),
            "MSI trigger set",
        );
        wr32(d, 0x60, 1);
        let e1 = wait_event(&msi, 3000);
        wr32(d, 0x64, 1);
        wr32(d, 0x60, 1);
        let e2 = wait_event(&msi, 3000);
        wr32(d, 0x64, 1);
        c.check(e1 != 0 && e2 != 0, "MSI delivered twice");
        let k = d.irq_counters(1, 0);
        println!("  MSI counters: {k:?}");
        c.check(
            k.is_some_and(|k| k.host_interrupts == 2),
            "MSI counters: 2 host interrupts",
        );
        c.check(
            set_irqs(d, 1, IrqAction::Trigger, IrqData::None, 0),
            "MSI disabled",
        );
        c.check(
            d.irq_counters(1, 0).is_some_and(|k| k.host_interrupts == 2),
            "MSI counters kept after the vector is disabled",
        );
    } else {
        println!("SKIP MSI: edu reports no MSI vector");
    }

    // ---- reset
    let r = d.reset();
    if let Err(e) = &r {
        println!("  reset: {e}");
    }
    c.check(r.is_ok(), "VFIO_DEVICE_RESET");
    c.check(rd32(d, 0) == EDU_ID, "edu ID readable after reset");
    // SAFETY: unmapping the anonymous buffer (no IOMMU mapping refers to it any more).
    unsafe { libc::munmap(mem.cast(), LEN) };
    drop(dev);

    // reopen: a clean device with no leftover mappings
    match vfio::open(path, &opts) {
        Ok(mut d2) => {
            c.check(d2.mappings().is_empty(), "reopen: no mappings");
            c.check(rd32(&mut d2, 0) == EDU_ID, "reopen: edu ID");
        }
        Err(e) => c.check(false, &format!("reopen: {e}")),
    }

    println!("direct: {} passed, {} failed", c.passed, c.failed);
    c.failed
}

// ---------------------------------------------------------------------------
// e2e: through the vfio-sidecar backend and the vfio-user protocol

mod e2e {
    use super::*;
    use std::os::fd::AsFd;
    use std::process::{Child, Command};
    use vfio_sidecar_protocol::client::IrqData as PIrqData;
    use vfio_sidecar_protocol::message::IrqAction as PAction;
    use vfio_sidecar_protocol::{Client, ClientOptions, DmaProt as PProt};
    use vfio_sidecar_tests::GuestMem;

    const SOCK: &str = "/tmp/real-vfio.sock";
    const IOVA2: u64 = 0x20_0000;
    const RW: PProt = PProt {
        read: true,
        write: true,
        exec: false,
    };

    struct Backend(Child);
    impl Drop for Backend {
        fn drop(&mut self) {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            for _ in 0..100 {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn start(backend: &Path, dev: &Path) -> Result<Backend, String> {
        let _ = std::fs::remove_file(SOCK);
        let child = Command::new(backend)
            .args(["serve", "--socket", SOCK, "--device"])
            .arg(format!("vfio:{}", dev.display()))
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", backend.display()))?;
        let mut b = Backend(child);
        for _ in 0..500 {
            if Path::new(SOCK).exists() {
                return Ok(b);
            }
            if let Ok(Some(st)) = b.0.try_wait() {
                return Err(format!("backend exited early: {st}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("backend socket did not appear within 10 s".into())
    }

    fn connect() -> Result<Client, String> {
        let mut last = String::new();
        for _ in 0..50 {
            match Client::connect(Path::new(SOCK), ClientOptions::default()) {
                Ok(c) => return Ok(c),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("connect {SOCK}: {last}"))
    }

    fn rd(c: &mut Client, off: u64) -> u32 {
        match c.region_read(0, off, 4) {
            Ok(v) if v.len() == 4 => u32::from_le_bytes([v[0], v[1], v[2], v[3]]),
            Ok(_) => 0xdead_dead,
            Err(e) => {
                println!("  REGION_READ BAR0+{off:#x}: {e}");
                0xdead_dead
            }
        }
    }
    fn wr(c: &mut Client, off: u64, data: &[u8]) {
        if let Err(e) = c.region_write(0, off, data) {
            println!("  REGION_WRITE BAR0+{off:#x}: {e}");
        }
    }
    fn wr32(c: &mut Client, off: u64, v: u32) {
        wr(c, off, &v.to_le_bytes());
    }
    fn dma(c: &mut Client, src: u64, dst: u64, len: u64, to_ram: bool) -> bool {
        wr(c, 0x80, &src.to_le_bytes());
        wr(c, 0x88, &dst.to_le_bytes());
        wr(c, 0x90, &len.to_le_bytes());
        wr(c, 0x98, &(if to_ram { 3u64 } else { 1 }).to_le_bytes());
        for _ in 0..300 {
            if rd(c, 0x98) & 1 == 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    pub fn run(backend: &Path, dev: &Path) -> u32 {
        let mut c = Checks {
            failed: 0,
            passed: 0,
        };
        let _b = match start(backend, dev) {
            Ok(b) => b,
            Err(e) => {
                println!("FAIL start backend: {e}");
                return 1;
            }
        };
        let mut cl = match connect() {
            Ok(cl) => cl,
            Err(e) => {
                println!("FAIL {e}");
                return 1;
            }
        };
        c.check(
            cl.negotiated().extension(),
            "VERSION: org.vfio-sidecar extension negotiated",
        );

        // ---- info
        let info = cl.device_info();
        println!("  DEVICE_GET_INFO: {info:?}");
        c.check(
            info.as_ref()
                .is_ok_and(|i| i.flags & 3 == 3 && i.num_regions >= 8 && i.num_irqs >= 2),
            "device info: PCI|RESET, >= 8 regions, >= 2 irqs",
        );
        let r0 = cl.region_info(0);
        println!(
            "  REGION_INFO 0: {:?}",
            r0.as_ref().map(|(i, fd)| (i, fd.is_some()))
        );
        let (r0, r0fd) = match r0 {
            Ok(v) => v,
            Err(e) => {
                println!("FAIL REGION_INFO 0: {e}");
                return c.failed + 1;
            }
        };
        c.check(
            r0.size == 0x10_0000 && r0.flags & 4 != 0 && r0fd.is_some(),
            "BAR0: 1 MiB, MMAP, fd sent",
        );
        let areas = r0.sparse.clone().unwrap_or_default();
        c.check(!areas.is_empty(), "BAR0 has sparse mmap areas");
        c.check(
            !areas
                .iter()
                .any(|a| a.offset <= 0x64 && 0x64 < a.offset + a.size),
            "the page of the 0x64 ack register is trapped (not in the sparse areas)",
        );
        let i0 = cl.irq_info(0);
        println!("  IRQ_INFO 0: {i0:?}");
        c.check(
            i0.is_ok_and(|i| i.count == 1 && i.flags & 7 == 7),
            "INTx: EVENTFD|MASKABLE|AUTOMASKED",
        );

        // ---- registers through REGION_READ/WRITE and the mmap of a sparse area
        c.check(rd(&mut cl, 0) == EDU_ID, "edu ID via REGION_READ");
        wr32(&mut cl, 4, 0x1357_9bdf);
        c.check(
            rd(&mut cl, 4) == !0x1357_9bdf,
            "edu liveness via REGION_WRITE/READ",
        );
        if let (Some(fd), Some(a)) = (&r0fd, areas.first()) {
            let len = a.size.min(0x1000) as usize;
            // The fd the server sent, at the region's mmap offset plus the sparse
            // area's offset.
            let map = Mapping::shared(fd.as_raw_fd(), len, r0.offset + a.offset);
            if let Some(map) = map {
                // edu decodes only its first 0x100 bytes; elsewhere it reads all-ones. The
                // mmap and REGION_READ must agree on every probed word.
                let mut agree = true;
                for off in [0u64, 4, 0x80, 0x800] {
                    let Some(m) = map.read32(off as usize) else {
                        continue;
                    };
                    let r = rd(&mut cl, a.offset + off);
                    if m != r {
                        println!(
                            "  BAR0+{:#x}: mmap {m:#x} != REGION_READ {r:#x}",
                            a.offset + off
                        );
                        agree = false;
                    }
                }
                c.check(agree, "sparse-area mmap reads agree with REGION_READ");
            } else {
                c.check(false, "mmap of the first sparse area");
            }
        }

        // ---- DMA through the real IOMMU, memfd from the client
        let mem = GuestMem::new("real-vfio-dma", 0x3000);
        let pattern: Vec<u8> = (0..0x1000usize).map(|i| (i * 13 + 1) as u8).collect();
        mem.write(0, &pattern);
        let m = cl.dma_map(IOVA, 0x3000, mem.fd(), 0, RW);
        if let Err(e) = &m {
            println!("  DMA_MAP: {e}");
        }
        c.check(
            m.is_ok(),
            "DMA_MAP of a memfd (backend maps it into the IOMMU)",
        );
        let ok = dma(&mut cl, IOVA, 0x40000, 0x200, false)
            && dma(&mut cl, 0x40000, IOVA + 0x1000, 0x200, true);
        c.check(
            ok && mem.read(0x1000, 0x200) == mem.read(0, 0x200),
            "edu DMA RAM -> device -> RAM through the backend",
        );
        c.check(cl.dma_unmap(IOVA, 0x3000).is_ok(), "DMA_UNMAP");
        mem.write(0x2000, &[0xa5; 0x200]);
        let _ = dma(&mut cl, 0x40000, IOVA + 0x2000, 0x200, true);
        c.check(
            mem.read(0x2000, 0x200).iter().all(|&b| b == 0xa5),
            "DMA to the unmapped IOVA does not reach memory",
        );

        // ---- INTx with the backend's clear-register EOI
        let trig = eventfd();
        let r = cl.set_irqs(
            0,
            PAction::Trigger,
            PIrqData::Eventfds(&[Some(trig.as_fd())]),
            0,
            1,
        );
        if let Err(e) = &r {
            println!("  SET_IRQS INTx: {e}");
        }
        c.check(r.is_ok(), "SET_IRQS index 0 trigger eventfd");
        c.check(wait_event(&trig, 100) == 0, "no spurious INTx");
        wr32(&mut cl, 0x60, 1);
        c.check(wait_event(&trig, 3000) != 0, "INTx raised (0x60) and seen");
        wr32(&mut cl, 0x60, 1);
        c.check(
            wait_event(&trig, 300) == 0,
            "second raise before the ack is not delivered",
        );
        wr32(&mut cl, 0x64, 1); // ack through the trapped page: the backend unmasks after it
        c.check(wait_event(&trig, 200) == 0, "nothing pending after the ack");
        wr32(&mut cl, 0x60, 1);
        c.check(
            wait_event(&trig, 3000) != 0,
            "after the ack the next raise is delivered (EOI unmasked)",
        );
        wr32(&mut cl, 0x64, 1);
        match cl.irq_stats(0, 0, 1) {
            Ok(s) => {
                println!("  IRQ_STATS INTx: {s:?}");
                let s = s.first().copied().unwrap_or_default();
                c.check(
                    s.device_events == 2 && s.host_interrupts == 2,
                    "IRQ_STATS: 2 events, 2 host interrupts (1 host interrupt per event)",
                );
                c.check(
                    s.unmasks >= 2 && s.refires == 0,
                    "IRQ_STATS: unmasked by the clear register, no refires",
                );
            }
            Err(e) => c.check(false, &format!("IRQ_STATS: {e}")),
        }

        // ---- MSI
        let msi_n = cl.irq_info(1).map(|i| i.count).unwrap_or(0);
        if msi_n >= 1 {
            c.check(
                cl.set_irqs(0, PAction::Trigger, PIrqData::None, 0, 0)
                    .is_ok(),
                "INTx trigger removed",
            );
            let msi = eventfd();
            let r = cl.set_irqs(
                1,
                PAction::Trigger,
                PIrqData::Eventfds(&[Some(msi.as_fd())]),
                0,
                1,
            );
            c.check(r.is_ok(), "SET_IRQS index 1 (MSI) trigger");
            wr32(&mut cl, 0x60, 1);
            let e1 = wait_event(&msi, 3000);
            wr32(&mut cl, 0x64, 1);
            wr32(&mut cl, 0x60, 1);
            let e2 = wait_event(&msi, 3000);
            wr32(&mut cl, 0x64, 1);
            c.check(e1 != 0 && e2 != 0, "MSI delivered twice");
            c.check(
                cl.set_irqs(1, PAction::Trigger, PIrqData::None, 0, 0)
                    .is_ok(),
                "MSI trigger removed",
            );
            let s = cl.irq_stats(1, 0, 1);
            println!("  IRQ_STATS MSI: {s:?}");
            c.check(
                s.is_ok_and(|s| s.first().is_some_and(|s| s.host_interrupts == 2)),
                "IRQ_STATS MSI: 2 host interrupts (kept after the trigger is removed)",
            );
        } else {
            println!("SKIP MSI: no MSI vector offered");
        }

        // ---- abrupt disconnect with a mapping and an INTx trigger in place
        let old = GuestMem::new("real-vfio-dma", 0x1000);
        old.write(0, &[0x3c; 0x100]);
        c.check(
            cl.dma_map(IOVA2, 0x1000, old.fd(), 0, RW).is_ok(),
            "DMA_MAP left in place",
        );
        let stale = eventfd();
        let _ = cl.set_irqs(
            0,
            PAction::Trigger,
            PIrqData::Eventfds(&[Some(stale.as_fd())]),
            0,
            1,
        );
        drop(cl); // no DMA_UNMAP, no SET_IRQS teardown: the socket just closes
        std::thread::sleep(Duration::from_millis(200));
        let mut cl = match connect() {
            Ok(cl) => cl,
            Err(e) => {
                c.check(
                    false,
                    &format!("reconnect after the abrupt disconnect: {e}"),
                );
                return c.failed;
            }
        };
        c.check(rd(&mut cl, 0) == EDU_ID, "new client: edu ID");
        let _ = dma(&mut cl, 0x40000, IOVA2, 0x100, true);
        c.check(
            old.read(0, 0x100).iter().all(|&b| b == 0x3c),
            "new client: the old client's mapping is gone (DMA does not reach it)",
        );
        let fresh = GuestMem::new("real-vfio-dma", 0x1000);
        c.check(
            cl.dma_map(IOVA2, 0x1000, fresh.fd(), 0, RW).is_ok(),
            "new client: the same IOVA maps again (no leftover IOMMU mapping)",
        );
        wr32(&mut cl, 0x60, 1);
        c.check(
            wait_event(&stale, 300) == 0,
            "new client: the old INTx trigger is not signalled",
        );
        wr32(&mut cl, 0x64, 1);
        let _ = cl.dma_unmap(IOVA2, 0x1000);
        drop(cl);
        println!("e2e: {} passed, {} failed", c.passed, c.failed);
        c.failed
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("direct");
    // direct [SYSFS] | e2e BACKEND [SYSFS]
    let path_arg = if mode == "e2e" { 3 } else { 2 };
    let path = args.get(path_arg).map(PathBuf::from).or_else(find_edu);
    let Some(path) = path else {
        println!("FAIL no edu (1234:11e8) device found");
        std::process::exit(1);
    };
    println!("real-vfio-client {mode} {}", path.display());
    let failed = match mode {
        "direct" => direct(&path),
        "e2e" => match args.get(2) {
            Some(b) => e2e::run(Path::new(b), &path),
            None => {
                println!("FAIL usage: real-vfio-client e2e BACKEND [SYSFS]");
                1
            }
        },
        other => {
            println!("FAIL unknown mode {other}");
            1
        }
    };
    std::process::exit(failed.min(100) as i32);
}
