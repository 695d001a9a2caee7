//! Guest-side checks of the QEMU interop harness (tests/qemu-interop). It runs inside a
//! Linux guest of QEMU >= 10.1 whose `-device vfio-user-pci` is `vfio-sidecar serve
//! --device model:edu` on the host, so the edu device (1234:11e8) the guest sees is the
//! backend's model, reached through QEMU's vfio-user client.
//!
//! Every check prints one line `QI-CHECK PASS|FAIL <id>: <detail>`; the host (run.sh)
//! holds the list of ids each boot must report, so a check that never ran counts as
//! failed. Exit status = number of failed checks.
//!
//! Modes:
//! * `pci PREFIX` — config-space IDs, BAR0 ID, liveness and factorial through the sysfs
//!   `resource0` mmap; edu DMA both ways between guest pages (physical addresses from
//!   `/proc/self/pagemap`: no IOMMU in that guest) — `PREFIX` names the boot;
//! * `uio` — INTx through the kernel's `uio_pci_generic` (PCI 2.3 INTx masking);
//! * `vfio` — through the guest kernel's `vfio-pci` behind QEMU's `intel-iommu`, with the
//!   project's own VFIO layer (`vfio_sidecar::vfio`): INTx in default mode (PCI 2.3
//!   masking), MSI, DMA both ways at an IOVA, DMA to an unmapped IOVA blocked;
//! * `dirty` — leaves recognisable state in the device (registers, interrupt status, DMA
//!   buffer) before a guest reboot; `clean` checks after the reboot that none of it
//!   survived (QEMU's machine reset sent DEVICE_RESET) and that the device still works;
//! * `stage [N]` — prints (or sets) a stage number kept in CMOS RAM through `/dev/nvram`,
//!   which survives a machine reset, so /init knows which side of the reboot it is on.
//!
//! Every wait is bounded (3 s for an expected event, 300 ms for "nothing arrives").

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vfio_sidecar::device::{
    Device, DmaProt, IrqAction, IrqData, MappedRegion, NoDmaMemory, SetIrqs,
};
use vfio_sidecar::vfio::{self, VfioOptions};
use vfio_sidecar_protocol::testing;
use vfio_sidecar_protocol::transport::wait_fd;
use vfio_sidecar_tests::wait_event;

const EDU_ID: u32 = 0x0100_00ed;
const PAGE: usize = 4096;
/// Offset in /dev/nvram (CMOS byte 14 + this) of the stage byte; SeaBIOS leaves it alone.
const NVRAM_STAGE: u64 = 100;
/// Values `dirty` leaves behind and `clean` must not find.
const DIRTY_LIVE: u32 = 0x5a5a_1234;
const DIRTY_SRC: u32 = 0x0012_3000;
const DIRTY_IRQ: u32 = 0x0040_0000;
const DIRTY_BYTE: u8 = 0xc3;

/// The checks of one run: prints a line per check, counts failures.
struct Checks {
    failed: u32,
}

impl Checks {
    fn check(&mut self, ok: bool, id: &str, detail: &str) {
        let word = if ok { "PASS" } else { "FAIL" };
        println!("QI-CHECK {word} {id}: {detail}");
        if !ok {
            self.failed += 1;
        }
    }
}

/// Finds edu's sysfs directory by vendor:device.
fn find_edu() -> Option<PathBuf> {
    for e in std::fs::read_dir("/sys/bus/pci/devices").ok()?.flatten() {
        let p = e.path();
        let id = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
        if id("vendor").trim() == "0x1234" && id("device").trim() == "0x11e8" {
            return Some(p);
        }
    }
    None
}

fn sysfs_write(path: &Path, what: &str) -> Result<(), String> {
    std::fs::write(path, what).map_err(|e| format!("write {what:?} to {}: {e}", path.display()))
}

/// Binds the device to `driver` (unbinding it first), as `driverctl` does.
fn bind(dev: &Path, driver: &str) -> Result<(), String> {
    if dev.join("driver").exists() {
        sysfs_write(&dev.join("driver/unbind"), &bdf(dev))?;
    }
    sysfs_write(&dev.join("driver_override"), driver)?;
    sysfs_write(Path::new("/sys/bus/pci/drivers_probe"), &bdf(dev))?;
    let now = std::fs::read_link(dev.join("driver"))
        .map_err(|e| format!("no driver after probe: {e}"))?;
    match now.file_name().and_then(|n| n.to_str()) {
        Some(n) if n == driver => Ok(()),
        other => Err(format!("bound to {other:?}, not {driver}")),
    }
}

/// Unbinds the device from whatever driver it has and clears the override.
fn unbind(dev: &Path) {
    if dev.join("driver").exists() {
        let _ = sysfs_write(&dev.join("driver/unbind"), &bdf(dev));
    }
    let _ = sysfs_write(&dev.join("driver_override"), "\n");
}

fn bdf(dev: &Path) -> String {
    dev.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string()
}

/// Config space through sysfs (`config`): the guest kernel's view, i.e. what QEMU's
/// vfio-user client emulates and passes through from the server.
struct ConfigSpace(File);

impl ConfigSpace {
    fn open(dev: &Path) -> Result<Self, String> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev.join("config"))
            .map(ConfigSpace)
            .map_err(|e| format!("open config: {e}"))
    }
    fn read16(&self, off: u64) -> u16 {
        let mut b = [0u8; 2];
        match self.0.read_exact_at(&mut b, off) {
            Ok(()) => u16::from_le_bytes(b),
            Err(_) => 0xffff,
        }
    }
    fn write16(&self, off: u64, v: u16) -> bool {
        self.0.write_all_at(&v.to_le_bytes(), off).is_ok()
    }
    /// Sets Memory Space + Bus Master in the command register.
    fn enable_mem_master(&self) -> bool {
        let cmd = self.read16(4);
        self.write16(4, cmd | 0x6) && self.read16(4) & 0x6 == 0x6
    }
}

/// A shared mapping of BAR0 (sysfs `resource0`), accessed with volatile 32-bit loads and
/// stores only (edu decodes only 4-byte accesses below 0x80).
struct Bar {
    ptr: *mut u8,
    len: usize,
}

impl Bar {
    fn map(dev: &Path) -> Result<Bar, String> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev.join("resource0"))
            .map_err(|e| format!("open resource0: {e}"))?;
        let len = PAGE;
        // SAFETY: a new shared mapping of the BAR chosen by the kernel; no existing memory
        // is affected. The fd may be closed afterwards: the mapping keeps the file.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "mmap resource0: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Bar { ptr: p.cast(), len })
    }
    fn read32(&self, off: usize) -> u32 {
        if off % 4 != 0 || off + 4 > self.len {
            return 0xdead_dead;
        }
        // SAFETY: aligned and inside the mapping; device memory needs volatile.
        unsafe { self.ptr.add(off).cast::<u32>().read_volatile() }
    }
    fn write32(&self, off: usize, v: u32) {
        if off % 4 == 0 && off + 4 <= self.len {
            // SAFETY: aligned and inside the mapping; device memory needs volatile.
            unsafe { self.ptr.add(off).cast::<u32>().write_volatile(v) }
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping `map` made; nothing refers to it after drop.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// BAR0 access either through the sysfs mmap or through the project's VFIO layer.
trait Regs {
    fn rd(&mut self, off: u64) -> u32;
    fn wr(&mut self, off: u64, v: u32);
}

impl Regs for Bar {
    fn rd(&mut self, off: u64) -> u32 {
        self.read32(off as usize)
    }
    fn wr(&mut self, off: u64, v: u32) {
        self.write32(off as usize, v)
    }
}

impl Regs for vfio::VfioDevice {
    fn rd(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        match self.region_read(0, off, &mut b) {
            Ok(()) => u32::from_le_bytes(b),
            Err(_) => 0xdead_dead,
        }
    }
    fn wr(&mut self, off: u64, v: u32) {
        let _ = self.region_write(0, off, &v.to_le_bytes(), &NoDmaMemory);
    }
}

/// One edu DMA (4-byte register writes: a 4-byte write to 0x80..0x98 sets the whole
/// 64-bit register); waits up to 3 s for RUN to clear.
fn edu_dma(r: &mut dyn Regs, src: u64, dst: u64, len: u32, to_ram: bool) -> bool {
    r.wr(0x80, src as u32);
    r.wr(0x88, dst as u32);
    r.wr(0x90, len);
    r.wr(0x98, if to_ram { 3 } else { 1 });
    for _ in 0..300 {
        if r.rd(0x98) & 1 == 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Locked, populated anonymous pages with their guest-physical addresses.
struct PhysPages {
    ptr: *mut u8,
    len: usize,
}

impl PhysPages {
    fn new(pages: usize) -> Result<Self, String> {
        let len = pages * PAGE;
        // SAFETY: a new private anonymous mapping; accessed only through this struct.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE | libc::MAP_LOCKED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        Ok(PhysPages { ptr: p.cast(), len })
    }
    /// Guest-physical address of page `i` (pagemap: bit 63 present, bits 0-54 PFN).
    fn phys(&self, i: usize) -> Result<u64, String> {
        let va = self.ptr as u64 + (i * PAGE) as u64;
        let mut f = File::open("/proc/self/pagemap").map_err(|e| format!("pagemap: {e}"))?;
        let mut b = [0u8; 8];
        f.seek(SeekFrom::Start(va / PAGE as u64 * 8))
            .and_then(|_| f.read_exact(&mut b))
            .map_err(|e| format!("pagemap read: {e}"))?;
        let e = u64::from_le_bytes(b);
        let pfn = e & ((1 << 55) - 1);
        if e >> 63 == 0 || pfn == 0 {
            return Err(format!("page {i} not present or PFN hidden (entry {e:#x})"));
        }
        Ok(pfn * PAGE as u64)
    }
    fn fill(&self, i: usize, f: impl Fn(usize) -> u8) {
        for k in 0..PAGE.min(self.len - i * PAGE) {
            // SAFETY: inside page i of the mapping; volatile because the device DMAs here.
            unsafe { self.ptr.add(i * PAGE + k).write_volatile(f(k)) };
        }
    }
    fn get(&self, i: usize, n: usize) -> Vec<u8> {
        (0..n.min(PAGE))
            // SAFETY: inside page i of the mapping.
            .map(|k| unsafe { self.ptr.add(i * PAGE + k).read_volatile() })
            .collect()
    }
}

impl Drop for PhysPages {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn pattern(seed: usize) -> impl Fn(usize) -> u8 {
    move |k| (k.wrapping_mul(seed) ^ (k >> 8)).wrapping_add(seed) as u8
}

/// DMA page 0 -> edu buffer -> page 1 and compares; the bus address of page i is `bus(i)`.
fn dma_both_ways(
    r: &mut dyn Regs,
    pages: &PhysPages,
    bus: &dyn Fn(usize) -> u64,
    len: u32,
    seed: usize,
) -> Result<(), String> {
    pages.fill(0, pattern(seed));
    pages.fill(1, |_| 0);
    if !edu_dma(r, bus(0), 0x40000, len, false) {
        return Err("RAM -> device DMA did not complete".into());
    }
    if !edu_dma(r, 0x40000, bus(1), len, true) {
        return Err("device -> RAM DMA did not complete".into());
    }
    let (want, got) = (pages.get(0, len as usize), pages.get(1, len as usize));
    match want.iter().zip(&got).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(i) => Err(format!(
            "byte {i}: wrote {:#x}, read back {:#x}",
            want[i], got[i]
        )),
    }
}

/// `pci PREFIX`: IDs, registers, DMA by guest-physical address.
fn pci(c: &mut Checks, dev: &Path, prefix: &str, dma: bool) {
    unbind(dev);
    let cfg = match ConfigSpace::open(dev) {
        Ok(cfg) => cfg,
        Err(e) => return c.check(false, &format!("{prefix}-ids"), &e),
    };
    let (v, d) = (cfg.read16(0), cfg.read16(2));
    c.check(
        v == 0x1234 && d == 0x11e8,
        &format!("{prefix}-ids"),
        &format!("config vendor:device {v:04x}:{d:04x}"),
    );
    c.check(
        cfg.enable_mem_master(),
        &format!("{prefix}-enable"),
        &format!("command {:#06x} (memory + bus master)", cfg.read16(4)),
    );
    let mut bar = match Bar::map(dev) {
        Ok(b) => b,
        Err(e) => return c.check(false, &format!("{prefix}-bar0-id"), &e),
    };
    let id = bar.rd(0);
    c.check(
        id == EDU_ID,
        &format!("{prefix}-bar0-id"),
        &format!("BAR0[0] = {id:#010x}"),
    );
    bar.wr(4, 0x1234_5678);
    let l = bar.rd(4);
    c.check(
        l == !0x1234_5678,
        &format!("{prefix}-liveness"),
        &format!("wrote 0x12345678, read {l:#010x}"),
    );
    bar.wr(8, 10);
    let f = (0..100)
        .map(|_| bar.rd(0x20) & 1)
        .find(|&busy| busy == 0)
        .map(|_| bar.rd(8));
    c.check(
        f == Some(3_628_800),
        &format!("{prefix}-factorial"),
        &format!("10! = {f:?}"),
    );
    if !dma {
        return;
    }
    let r = PhysPages::new(2).and_then(|p| {
        let (a, b) = (p.phys(0)?, p.phys(1)?);
        let bus = move |i: usize| if i == 0 { a } else { b };
        dma_both_ways(&mut bar, &p, &bus, PAGE as u32, 7)
            .and_then(|()| dma_both_ways(&mut bar, &p, &bus, 0x100, 31))
            .map(|()| format!("4 KiB and 256 B round trips at GPA {a:#x} -> edu -> {b:#x}"))
    });
    c.check(
        r.is_ok(),
        &format!("{prefix}-dma"),
        &r.unwrap_or_else(|e| e),
    );
}

/// The count in /proc/interrupts for IRQ `irq` (sum over CPUs), None if absent.
fn irq_count(irq: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/interrupts").ok()?;
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{irq}:")))?;
    Some(
        line.split_whitespace()
            .skip(1)
            .map_while(|w| w.parse::<u64>().ok())
            .sum(),
    )
}

/// `uio`: INTx through uio_pci_generic (its handler is `pci_check_and_mask_intx`).
fn uio(c: &mut Checks, dev: &Path) {
    let r = bind(dev, "uio_pci_generic");
    c.check(
        r.is_ok(),
        "uio-bind",
        &r.clone()
            .err()
            .unwrap_or_else(|| "bound to uio_pci_generic (INTx masking supported)".into()),
    );
    if r.is_err() {
        return;
    }
    let uio = std::fs::read_dir(dev.join("uio"))
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok());
    let Some(uio) = uio.map(|e| PathBuf::from("/dev").join(e.file_name())) else {
        return c.check(false, "uio-intx", "no uio device under the PCI device");
    };
    let irq = std::fs::read_to_string(dev.join("irq"))
        .unwrap_or_default()
        .trim()
        .to_string();
    let f = match File::open(&uio) {
        Ok(f) => f,
        Err(e) => return c.check(false, "uio-intx", &format!("open {}: {e}", uio.display())),
    };
    let (mut bar, cfg) = match Bar::map(dev).and_then(|b| Ok((b, ConfigSpace::open(dev)?))) {
        Ok(v) => v,
        Err(e) => return c.check(false, "uio-intx", &e),
    };
    // uio_pci_generic has no irqcontrol: its handler masks with command bit 10 and user
    // space unmasks by clearing that bit in config space (Documentation/driver-api/uio-howto).
    let unmask = || cfg.write16(4, cfg.read16(4) & !0x400);
    let before = irq_count(&irq).unwrap_or(0);
    c.check(
        uio_wait(&f, 300).is_none(),
        "uio-no-spurious",
        "no interrupt before the device raises one",
    );
    bar.wr(0x60, 1);
    let n1 = uio_wait(&f, 3000);
    let masked = cfg.read16(4) & 0x400 != 0;
    c.check(
        n1.is_some() && masked,
        "uio-intx",
        &format!(
            "raise 0x60 -> /dev/uio event {n1:?} (IRQ {irq}); handler set INTx-disable: {masked}"
        ),
    );
    bar.wr(0x64, 1);
    unmask();
    c.check(
        uio_wait(&f, 300).is_none(),
        "uio-ack-quiet",
        "after ack + unmask (command bit 10 cleared) nothing pending",
    );
    bar.wr(0x60, 1);
    let n2 = uio_wait(&f, 3000);
    bar.wr(0x64, 1);
    unmask();
    std::thread::sleep(Duration::from_millis(100));
    let after = irq_count(&irq).unwrap_or(u64::MAX);
    let delta = after.saturating_sub(before);
    c.check(
        n2.is_some() && delta <= 10,
        "uio-intx-again",
        &format!(
            "second event {n2:?}; {delta} interrupts on IRQ {irq} for 2 device events (no storm)"
        ),
    );
    drop(bar);
    drop(f);
    unbind(dev);
}

/// Waits up to `ms` for a uio event; its total count, None on timeout.
fn uio_wait(f: &File, ms: u64) -> Option<u32> {
    match wait_fd(f.as_fd(), libc::POLLIN, Some(Duration::from_millis(ms))) {
        Ok(true) => {
            let mut b = [0u8; 4];
            (&*f)
                .read_exact(&mut b)
                .ok()
                .map(|()| u32::from_ne_bytes(b))
        }
        _ => None,
    }
}

fn eventfd() -> OwnedFd {
    testing::eventfd(true).expect("eventfd")
}

fn set_trigger(d: &mut vfio::VfioDevice, index: u32, fd: Option<&OwnedFd>) -> Result<(), String> {
    let (data, count) = match fd {
        Some(fd) => (IrqData::Eventfd(vec![fd.try_clone().ok()]), 1),
        None => (IrqData::None, 0),
    };
    d.set_irqs(SetIrqs {
        index,
        start: 0,
        count,
        action: IrqAction::Trigger,
        data,
    })
    .map_err(|e| format!("SET_IRQS index {index}: {e}"))
}

/// `vfio`: guest vfio-pci behind the vIOMMU, through the project's VFIO layer.
fn guest_vfio(c: &mut Checks, dev: &Path) {
    let r = bind(dev, "vfio-pci");
    let grp = std::fs::read_link(dev.join("iommu_group")).ok();
    c.check(
        r.is_ok() && grp.is_some(),
        "vfio-bind",
        &format!("{r:?}; IOMMU group {grp:?}"),
    );
    let mut d = match vfio::open(dev, &VfioOptions::default()) {
        Ok(d) => d,
        Err(e) => return c.check(false, "vfio-open", &format!("vfio::open: {e}")),
    };
    c.check(
        d.rd(0) == EDU_ID,
        "vfio-open",
        &format!(
            "opened ({} IOMMU), BAR0[0] = {:#x}",
            d.iommu_backend(),
            d.rd(0)
        ),
    );
    let irq = std::fs::read_to_string(dev.join("irq")).unwrap_or_default();
    vfio_intx(c, &mut d, dev, irq.trim());
    vfio_msi(c, &mut d);
    vfio_dma(c, &mut d);
}

fn vfio_intx(c: &mut Checks, d: &mut vfio::VfioDevice, dev: &Path, irq: &str) {
    let trig = eventfd();
    if let Err(e) = set_trigger(d, 0, Some(&trig)) {
        return c.check(false, "vfio-intx", &e);
    }
    let before = irq_count(irq).unwrap_or(0);
    d.wr(0x60, 1);
    let e1 = wait_event(&trig, 3000);
    // sysfs config reads the device's own command register (vfio-pci virtualizes bit 10
    // only in the user's view): its handler masked the line there.
    let masked = ConfigSpace::open(dev).is_ok_and(|cfg| cfg.read16(4) & 0x400 != 0);
    c.check(
        e1 != 0 && masked,
        "vfio-intx",
        &format!("raise 0x60 -> INTx eventfd {e1} (vfio-pci default mode: its handler set INTx-disable: {masked})"),
    );
    d.wr(0x64, 1);
    let _ = d.unmask_irq(0, 0);
    let quiet = wait_event(&trig, 300) == 0;
    d.wr(0x60, 1);
    let e2 = wait_event(&trig, 3000);
    d.wr(0x64, 1);
    let _ = d.unmask_irq(0, 0);
    std::thread::sleep(Duration::from_millis(100));
    let delta = irq_count(irq).unwrap_or(u64::MAX).saturating_sub(before);
    c.check(
        quiet && e2 != 0 && delta <= 10,
        "vfio-intx-unmask",
        &format!(
            "quiet after ack + unmask: {quiet}; next raise delivered: {}; {delta} interrupts on IRQ {irq} for 2 device events",
            e2 != 0
        ),
    );
    let _ = set_trigger(d, 0, None);
}

fn vfio_msi(c: &mut Checks, d: &mut vfio::VfioDevice) {
    let msi = eventfd();
    if let Err(e) = set_trigger(d, 1, Some(&msi)) {
        return c.check(false, "vfio-msi", &e);
    }
    d.wr(0x60, 1);
    let e1 = wait_event(&msi, 3000);
    d.wr(0x64, 1);
    d.wr(0x60, 1);
    let e2 = wait_event(&msi, 3000);
    d.wr(0x64, 1);
    c.check(
        e1 != 0 && e2 != 0,
        "vfio-msi",
        &format!("two raises -> MSI eventfd {e1}, {e2}"),
    );
    let _ = set_trigger(d, 1, None);
}

fn vfio_dma(c: &mut Checks, d: &mut vfio::VfioDevice) {
    const IOVA: u64 = 0x10_0000;
    let pages = match PhysPages::new(3) {
        Ok(p) => p,
        Err(e) => return c.check(false, "vfio-dma", &e),
    };
    let region = MappedRegion {
        iova: IOVA,
        size: (3 * PAGE) as u64,
        host_addr: pages.ptr as u64,
        prot: DmaProt {
            read: true,
            write: true,
            exec: false,
        },
    };
    if let Err(e) = d.dma_map(&region) {
        return c.check(
            false,
            "vfio-dma",
            &format!("MAP_DMA through the vIOMMU: {e}"),
        );
    }
    let bus = |i: usize| IOVA + (i * PAGE) as u64;
    let r = dma_both_ways(d, &pages, &bus, PAGE as u32, 11);
    c.check(
        r.is_ok(),
        "vfio-dma",
        &r.map(|()| format!("IOVA {IOVA:#x} -> edu -> IOVA {:#x}, 4 KiB", bus(1)))
            .unwrap_or_else(|e| e),
    );
    let unmapped = d.dma_unmap(&region);
    pages.fill(2, |_| 0x5a);
    let _ = edu_dma(d, 0x40000, bus(2), 0x100, true);
    let untouched = pages.get(2, 0x100).iter().all(|&b| b == 0x5a);
    c.check(
        unmapped.is_ok() && untouched,
        "vfio-dma-unmapped",
        &format!(
            "UNMAP_DMA {unmapped:?}; DMA to the unmapped IOVA left memory untouched: {untouched}"
        ),
    );
}

/// `dirty`: state a reset must clear.
fn dirty(c: &mut Checks, dev: &Path) {
    unbind(dev);
    let r = ConfigSpace::open(dev)
        .map(|cfg| cfg.enable_mem_master())
        .and_then(|_| Bar::map(dev));
    let mut bar = match r {
        Ok(b) => b,
        Err(e) => return c.check(false, "reboot-dirty", &e),
    };
    let pages = PhysPages::new(1);
    let loaded = pages.as_ref().map_err(String::clone).and_then(|p| {
        p.fill(0, |_| DIRTY_BYTE);
        let a = p.phys(0)?;
        edu_dma(&mut bar, a, 0x40000, PAGE as u32, false)
            .then_some(())
            .ok_or_else(|| "DMA did not complete".to_string())
    });
    // INTx disabled in the command register so the raised status does not storm an
    // unhandled line while nobody is bound.
    if let Ok(cfg) = ConfigSpace::open(dev) {
        cfg.write16(4, cfg.read16(4) | 0x400);
    }
    bar.wr(4, !DIRTY_LIVE);
    bar.wr(0x60, DIRTY_IRQ);
    bar.wr(0x80, DIRTY_SRC);
    let ok = loaded.is_ok()
        && bar.rd(4) == DIRTY_LIVE
        && bar.rd(0x24) & DIRTY_IRQ != 0
        && bar.rd(0x80) == DIRTY_SRC;
    c.check(
        ok,
        "reboot-dirty",
        &format!(
            "buffer {loaded:?}, liveness {:#x}, irq status {:#x}, DMA src {:#x}",
            bar.rd(4),
            bar.rd(0x24),
            bar.rd(0x80)
        ),
    );
}

/// `clean`: after the reboot none of `dirty`'s state is left, and the device works.
fn clean(c: &mut Checks, dev: &Path) {
    unbind(dev);
    let r = ConfigSpace::open(dev)
        .map(|cfg| (cfg.enable_mem_master(), cfg.read16(4)))
        .and_then(|cmd| Bar::map(dev).map(|b| (cmd, b)));
    let (cmd, mut bar) = match r {
        Ok(v) => v,
        Err(e) => return c.check(false, "reboot-clean", &e),
    };
    let (live, irq, src) = (bar.rd(4), bar.rd(0x24), bar.rd(0x80));
    let buf = PhysPages::new(1).and_then(|p| {
        p.fill(0, |_| 0);
        let a = p.phys(0)?;
        edu_dma(&mut bar, 0x40000, a, PAGE as u32, true)
            .then_some(())
            .ok_or("DMA did not complete")?;
        Ok(p.get(0, PAGE).iter().filter(|&&b| b == DIRTY_BYTE).count())
    });
    let ok = live != DIRTY_LIVE
        && irq & DIRTY_IRQ == 0
        && src != DIRTY_SRC
        && buf.as_ref().is_ok_and(|&n| n < 64);
    c.check(
        ok,
        "reboot-clean",
        &format!("after reboot: liveness {live:#x}, irq status {irq:#x}, DMA src {src:#x}, dirty bytes in the DMA buffer {buf:?}, command {:#x}", cmd.1),
    );
}

/// `NVRAM_SETCKS` (`_IO('p', 0x41)`): makes the CMOS checksum valid. The nvram driver refuses
/// every read and write (EIO) while it is not, and QEMU's CMOS starts without one.
const NVRAM_SETCKS: libc::c_ulong = 0x7041;

fn nvram(write: Option<u8>) -> Result<u8, String> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/nvram")
        .map_err(|e| format!("/dev/nvram: {e}"))?;
    let mut b = [0u8; 1];
    if f.read_exact_at(&mut b, NVRAM_STAGE).is_err() {
        // SAFETY: an ioctl without argument on the nvram fd we own.
        if unsafe { libc::ioctl(f.as_raw_fd(), NVRAM_SETCKS) } != 0 {
            return Err(format!("NVRAM_SETCKS: {}", std::io::Error::last_os_error()));
        }
    }
    if let Some(v) = write {
        f.write_all_at(&[v], NVRAM_STAGE)
            .map_err(|e| format!("/dev/nvram write: {e}"))?;
    }
    f.read_exact_at(&mut b, NVRAM_STAGE)
        .map_err(|e| format!("/dev/nvram read: {e}"))?;
    Ok(b[0])
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("");
    if mode == "stage" {
        let set = args.get(2).and_then(|s| s.parse::<u8>().ok());
        match nvram(set) {
            Ok(v) => println!("{v}"),
            Err(e) => {
                eprintln!("qemu-guest stage: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let mut c = Checks { failed: 0 };
    let Some(dev) = find_edu() else {
        c.check(
            false,
            &format!("{mode}-found"),
            "no 1234:11e8 device in the guest",
        );
        std::process::exit(1);
    };
    match mode {
        "pci" => pci(&mut c, &dev, args.get(2).map_or("pci", String::as_str), args.get(3).is_none_or(|a| a != "nodma")),
        "uio" => uio(&mut c, &dev),
        "vfio" => guest_vfio(&mut c, &dev),
        "dirty" => dirty(&mut c, &dev),
        "clean" => clean(&mut c, &dev),
        other => c.check(false, "usage", &format!("unknown mode {other:?}: pci PREFIX [nodma] | uio | vfio | dirty | clean | stage [N]")),
    }
    std::process::exit(c.failed.min(100) as i32);
}
