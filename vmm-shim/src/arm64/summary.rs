//! What `vmm-shim linux` is asked to do and what it reports at the end of a
//! run (text or JSON).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::backend::{EoiName, EoiPolicy, IrqStats};
use crate::memory::DmaEntry;
use crate::mmio::{write_mmio_exits, PageExits};

use super::exit::GuestStop;

/// Options of a Linux boot.
#[derive(Debug, Clone)]
pub struct LinuxOptions {
    /// The arm64 `Image`.
    pub kernel: PathBuf,
    /// An initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub append: String,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// EOI policy the backend was started with.
    pub eoi: EoiPolicy,
    /// Map guest RAM for DMA without EXEC even when the extension is negotiated.
    pub no_exec: bool,
    /// Give up after this long.
    pub timeout: Duration,
}

/// One device interrupt as wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IrqWiring {
    /// vfio-user IRQ index.
    pub index: u32,
    /// GIC SPI number (= KVM GSI).
    pub spi: u32,
    /// The backend's counters (None: IRQ_STATS not supported).
    pub stats: Option<IrqStats>,
    /// Interrupts the shim delivered (line raises; None: not relayed,
    /// `--eoi resample`, where the backend triggers KVM directly).
    pub delivered: Option<u64>,
    /// Guest EOIs seen on the resamplefd (None: the backend consumes it,
    /// `--eoi resample`).
    pub guest_eois: Option<u64>,
    /// Backend signals that arrived while the guest's line was still raised
    /// (each such period gets one more interrupt after the EOI; None: not
    /// relayed, `--eoi resample`).
    pub deferred: Option<u64>,
}

/// The result of a boot.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LinuxSummary {
    /// How the guest stopped.
    pub stop: GuestStop,
    /// EOI policy.
    pub eoi: EoiPolicy,
    /// The EXEC DMA flag was negotiated.
    pub exec_negotiated: bool,
    /// Guest RAM was DMA-mapped executable.
    pub ram_exec: bool,
    /// The DMA table sent.
    pub dma_table: Vec<DmaEntry>,
    /// Guest-physical base of each device region (index, base, size).
    pub device_regions: Vec<(u32, u64, u64)>,
    /// Where the device node came from.
    pub device_node: String,
    /// The device's interrupts.
    pub irqs: Vec<IrqWiring>,
    /// Trapped device accesses per region.
    pub mmio_per_region: BTreeMap<u32, u64>,
    /// Trapped device accesses per page.
    pub mmio_per_page: Vec<PageExits>,
    /// Device accesses outside every region (plus unknown MMIO).
    pub mmio_stray: u64,
    /// Device accesses the backend refused.
    pub mmio_refused: u64,
    /// Sparse areas mapped as memory slots.
    pub sparse_slots: usize,
    /// UART register accesses.
    pub uart_exits: u64,
    /// Bytes the guest wrote to its console.
    pub console_bytes: u64,
    /// KVM_RUN returns.
    pub vcpu_exits: u64,
    /// Wall time of the guest run.
    pub guest_time_ms: u64,
    /// Total wall time.
    pub total_time_ms: u64,
}

impl LinuxSummary {
    /// Sum of the backend's counters over all wired interrupts (None: the
    /// backend reports none).
    pub fn irq_totals(&self) -> Option<IrqStats> {
        let mut t = IrqStats::default();
        let mut any = false;
        for s in self.irqs.iter().filter_map(|i| i.stats) {
            any = true;
            t.device_events += s.device_events;
            t.host_interrupts += s.host_interrupts;
            t.unmasks += s.unmasks;
            t.refires += s.refires;
        }
        any.then_some(t)
    }

    /// Host interrupts per device event, over all interrupts.
    pub fn host_per_event(&self) -> Option<f64> {
        let t = self.irq_totals()?;
        (t.device_events > 0).then(|| t.host_interrupts as f64 / t.device_events as f64)
    }

    /// A clean poweroff.
    pub fn success(&self) -> bool {
        self.stop.is_clean()
    }

    /// The summary as a JSON object (with the derived figures).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        let mut v = serde_json::to_value(self)?;
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "irq_totals".into(),
                serde_json::to_value(self.irq_totals())?,
            );
            o.insert(
                "host_interrupts_per_device_event".into(),
                serde_json::to_value(self.host_per_event())?,
            );
        }
        serde_json::to_string_pretty(&v)
    }
}

impl std::fmt::Display for LinuxSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "vmm-shim linux: summary")?;
        writeln!(f, "  guest stop    {}", self.stop.as_str())?;
        writeln!(
            f,
            "  DMA table     {} entr{}; EXEC extension {}; guest RAM {}",
            self.dma_table.len(),
            if self.dma_table.len() == 1 {
                "y"
            } else {
                "ies"
            },
            if self.exec_negotiated {
                "negotiated"
            } else {
                "NOT negotiated"
            },
            if self.ram_exec {
                "READ|WRITE|EXEC"
            } else {
                "READ|WRITE (no EXEC)"
            }
        )?;
        for (i, b, s) in &self.device_regions {
            writeln!(f, "  region {i}      GPA {b:#x} (+{s:#x})")?;
        }
        writeln!(f, "  device node   {}", self.device_node)?;
        write_mmio_exits(
            f,
            &self.mmio_per_region,
            &self.mmio_per_page,
            self.sparse_slots,
            self.mmio_stray,
            self.mmio_refused,
        )?;
        writeln!(f, "  interrupts    EOI policy {}", self.eoi.name())?;
        for i in &self.irqs {
            let mut eois = String::new();
            if let Some(n) = i.delivered {
                eois.push_str(&format!(", {n} delivered"));
            }
            if let Some(n) = i.guest_eois {
                eois.push_str(&format!(", {n} guest EOIs"));
            }
            if let Some(d) = i.deferred.filter(|&d| d > 0) {
                eois.push_str(&format!(" ({d} signals while raised)"));
            }
            match i.stats {
                Some(s) => writeln!(
                    f,
                    "    IRQ {} SPI {:<3} {} device events, {} host interrupts, {} unmasks, {} re-fires{eois}",
                    i.index, i.spi, s.device_events, s.host_interrupts, s.unmasks, s.refires
                )?,
                None => writeln!(f, "    IRQ {} SPI {:<3} (no IRQ_STATS){eois}", i.index, i.spi)?,
            }
        }
        match (self.irq_totals(), self.host_per_event()) {
            (Some(t), per) => writeln!(
                f,
                "  backend IRQs  {} device events, {} host interrupts ({} per event), {} unmasks",
                t.device_events,
                t.host_interrupts,
                per.map(|p| format!("{p:.2}")).unwrap_or_else(|| "-".into()),
                t.unmasks
            )?,
            (None, _) => writeln!(
                f,
                "  backend IRQs  counters not available (IRQ_STATS not supported)"
            )?,
        }
        writeln!(
            f,
            "  console       {} bytes, {} UART exits",
            self.console_bytes, self.uart_exits
        )?;
        writeln!(f, "  vCPU          {} exits", self.vcpu_exits)?;
        writeln!(
            f,
            "  time          guest {} ms, total {} ms",
            self.guest_time_ms, self.total_time_ms
        )?;
        write!(
            f,
            "  result        {}",
            if self.success() {
                "PASS (guest powered off)"
            } else {
                "FAIL"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> LinuxSummary {
        LinuxSummary {
            stop: GuestStop::Poweroff,
            eoi: EoiPolicy::FirstAccess,
            exec_negotiated: true,
            ram_exec: true,
            dma_table: Vec::new(),
            device_regions: vec![(0, 0xc00_0000, 0x1000)],
            device_node: "the backend's DTB node".into(),
            irqs: vec![
                IrqWiring {
                    index: 0,
                    spi: 16,
                    stats: Some(IrqStats {
                        device_events: 10,
                        host_interrupts: 19,
                        unmasks: 19,
                        refires: 9,
                    }),
                    delivered: Some(10),
                    guest_eois: Some(10),
                    deferred: Some(0),
                },
                IrqWiring {
                    index: 1,
                    spi: 17,
                    stats: Some(IrqStats {
                        device_events: 10,
                        host_interrupts: 21,
                        unmasks: 21,
                        refires: 11,
                    }),
                    delivered: Some(10),
                    guest_eois: Some(10),
                    deferred: Some(0),
                },
            ],
            mmio_per_region: BTreeMap::from([(0, 400)]),
            mmio_per_page: Vec::new(),
            mmio_stray: 0,
            mmio_refused: 0,
            sparse_slots: 0,
            uart_exits: 1000,
            console_bytes: 900,
            vcpu_exits: 1500,
            guest_time_ms: 1,
            total_time_ms: 2,
        }
    }

    #[test]
    fn totals_and_ratio_over_all_interrupts() {
        let s = summary();
        let t = s.irq_totals().unwrap();
        assert_eq!(
            (t.device_events, t.host_interrupts, t.unmasks),
            (20, 40, 40)
        );
        assert_eq!(s.host_per_event(), Some(2.0));
        let text = s.to_string();
        assert!(
            text.contains("20 device events, 40 host interrupts (2.00 per event)"),
            "{text}"
        );
        assert!(text.contains("PASS"));
        let j: serde_json::Value = serde_json::from_str(&s.to_json().unwrap()).unwrap();
        assert_eq!(j["host_interrupts_per_device_event"], 2.0);
        assert_eq!(j["irq_totals"]["device_events"], 20);
        assert_eq!(j["stop"], "poweroff");
    }

    #[test]
    fn no_stats_and_unclean_stop() {
        let mut s = summary();
        for i in &mut s.irqs {
            i.stats = None;
        }
        s.stop = GuestStop::Reset;
        assert_eq!(s.irq_totals(), None);
        assert_eq!(s.host_per_event(), None);
        assert!(!s.success());
        assert!(s.to_string().contains("FAIL"));
        // no events: no ratio
        let mut s = summary();
        for i in &mut s.irqs {
            i.stats = Some(IrqStats::default());
        }
        assert_eq!(s.host_per_event(), None);
    }
}
