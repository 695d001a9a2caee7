//! Built-in device models and the wrapper that serves them as a [`Device`].
//!
//! A model implements the small [`Model`] trait (register reads/writes, line
//! levels, pending work, reset); [`ModelDevice`] adds VFIO IRQ semantics
//! ([`EmulatedIrqs`]: trigger eventfds, automask, unmask eventfds) and implements
//! [`Device`]. After every access, every `run_pending` step and every reset the
//! wrapper feeds the model's line levels to the IRQ state.
//!
//! Models (device string `model:NAME[,opt[=value]]...`):
//! * `pl330` — ARM PrimeCell DMA-330. One region (index 0, 4 KiB, READ|WRITE,
//!   "pl330-regs", trapped: INTCLR shares the frame), device flags
//!   `PLATFORM | AMBA | RESET` (AMBA: it is a PrimeCell, as vfio-amba reports it;
//!   PLATFORM too so clients that only know platform devices accept it), one IRQ
//!   index per model line (`EVENTFD | MASKABLE | AUTOMASKED`, count 1): one per
//!   event, then `irq_abort` (or one combined line for both). Options:
//!   `channels=N`, `events=N`, `periph-reqs=N`, `revision=N`, `data-width=BITS`,
//!   `buffer-lines=N`, `combined-irq`, `no-dmago-gate`, `step-budget=N`,
//!   `time-slice-us=N`.
//! * `scratch` — a tiny test device: region 0 is 8 KiB, page 0 trapped registers,
//!   page 1 a memfd-backed sparse mmap area (see [`scratch`]). One level IRQ.

pub mod edu;
pub mod pl330;
pub mod scratch;

use std::os::fd::RawFd;

use crate::device::{
    device_flags, irq_flags, Device, DeviceError, DeviceInfo, DmaMemory, IrqCounters, IrqInfo,
    MappedRegion, RegionInfo, SetIrqs,
};
use crate::irq::EmulatedIrqs;

/// What a built-in model provides.
pub trait Model: Send + std::fmt::Debug {
    /// Short name ("pl330").
    fn kind(&self) -> &'static str;
    /// `VFIO_DEVICE_FLAGS_*`.
    fn device_flags(&self) -> u32;
    /// Region descriptions, by index.
    fn regions(&self) -> Vec<RegionInfo>;
    /// Reads `data.len()` bytes at `offset` of `region` (bounds already checked).
    fn read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), DeviceError>;
    /// Writes `data` at `offset` of `region` (bounds already checked).
    fn write(
        &mut self,
        region: u32,
        offset: u64,
        data: &[u8],
        mem: &dyn DmaMemory,
    ) -> Result<(), DeviceError>;
    /// Number of interrupt lines (= IRQ indices).
    fn num_irqs(&self) -> u32;
    /// Current level of every line.
    fn irq_levels(&self) -> Vec<bool>;
    /// Current level of one line (false beyond `num_irqs`). Called after every
    /// access: models should override it without allocating (the default
    /// builds [`Model::irq_levels`]).
    fn irq_level(&self, line: u32) -> bool {
        self.irq_levels()
            .get(line as usize)
            .copied()
            .unwrap_or(false)
    }
    /// Writes the level of line `i` into `out[i]` for every `i < out.len()`
    /// (lines beyond `num_irqs` low). Called after every access; the default
    /// asks [`Model::irq_level`] line by line, models with many lines may do
    /// it in one pass.
    fn irq_levels_into(&self, out: &mut [bool]) {
        for (line, level) in (0u32..).zip(out.iter_mut()) {
            *level = self.irq_level(line);
        }
    }
    /// A value that changes whenever some interrupt level may have changed
    /// (a model whose levels are a function of a few register bits returns
    /// those bits). [`ModelDevice`] skips the line re-sync after an access
    /// that left it unchanged. Default `None`: re-sync after every access.
    fn irq_fingerprint(&self) -> Option<u64> {
        None
    }
    /// Continue bounded work; true while more is pending.
    fn run_pending(&mut self, mem: &dyn DmaMemory) -> bool;
    /// True when nothing is executing: [`Model::run_pending`] would do no
    /// work and change no interrupt level now, so [`ModelDevice`] skips it.
    /// The default (false) always runs it and re-syncs.
    fn idle(&self) -> bool {
        false
    }
    /// Device reset.
    fn reset(&mut self);
}

/// A model served as a [`Device`].
#[derive(Debug)]
pub struct ModelDevice {
    model: Box<dyn Model>,
    irqs: EmulatedIrqs,
    /// Line levels, refilled after every access (reused: no allocation).
    levels: Vec<bool>,
    /// [`Model::irq_fingerprint`] at the last full re-sync; `None` forces the
    /// next one (set by everything that can mask, unmask or rewire a vector).
    synced: Option<u64>,
}

impl ModelDevice {
    /// Wraps a model (all lines level-triggered).
    pub fn new(model: Box<dyn Model>) -> Self {
        let n = model.num_irqs() as usize;
        let irqs = EmulatedIrqs::new(n, true);
        ModelDevice {
            model,
            irqs,
            levels: vec![false; n],
            synced: None,
        }
    }

    /// The model's short name.
    pub fn kind(&self) -> &'static str {
        self.model.kind()
    }

    /// Eventfds held for the client (tests, logs).
    pub fn held_irq_fds(&self) -> usize {
        self.irqs.held_fds()
    }

    /// Feeds the model's line levels to the vectors. Skipped when the model's
    /// fingerprint is the one of the last re-sync: the levels are then the
    /// same, and since every vector that could fire was fired (and masked)
    /// then, and nothing unmasked or rewired one since (those invalidate
    /// `synced`), a full update would change nothing.
    fn sync_irqs(&mut self) {
        let fp = self.model.irq_fingerprint();
        if fp.is_some() && fp == self.synced {
            return;
        }
        self.model.irq_levels_into(&mut self.levels);
        self.irqs.update(&self.levels);
        self.synced = fp;
    }
}

impl Device for ModelDevice {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: self.model.device_flags(),
            num_regions: self.model.regions().len() as u32,
            num_irqs: self.model.num_irqs(),
        }
    }

    fn region_info(&self, index: u32) -> Result<RegionInfo, DeviceError> {
        self.model
            .regions()
            .into_iter()
            .nth(index as usize)
            .ok_or_else(|| DeviceError::Invalid(format!("region index {index} out of range")))
    }

    fn irq_info(&self, index: u32) -> Result<IrqInfo, DeviceError> {
        if index >= self.model.num_irqs() {
            return Err(DeviceError::Invalid(format!(
                "IRQ index {index} out of range"
            )));
        }
        Ok(IrqInfo {
            index,
            flags: irq_flags::EVENTFD | irq_flags::MASKABLE | irq_flags::AUTOMASKED,
            count: 1,
        })
    }

    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        let r = self.model.read(index, offset, data);
        self.sync_irqs();
        r
    }

    fn region_write(
        &mut self,
        index: u32,
        offset: u64,
        data: &[u8],
        mem: &dyn DmaMemory,
    ) -> Result<(), DeviceError> {
        let r = self.model.write(index, offset, data, mem);
        self.sync_irqs();
        r
    }

    fn dma_map(&mut self, _region: &MappedRegion) -> Result<(), DeviceError> {
        Ok(())
    }

    fn dma_unmap(&mut self, _region: &MappedRegion) -> Result<(), DeviceError> {
        Ok(())
    }

    fn set_irqs(&mut self, req: SetIrqs) -> Result<(), DeviceError> {
        self.synced = None;
        self.irqs.set_irqs(req)
    }

    fn unmask_irq(&mut self, index: u32, vector: u32) -> Result<(), DeviceError> {
        if vector != 0 {
            return Err(DeviceError::Invalid(format!("IRQ {index} vector {vector}")));
        }
        self.synced = None;
        self.irqs.unmask(index)
    }

    fn reset(&mut self) -> Result<(), DeviceError> {
        self.synced = None;
        self.model.reset();
        self.sync_irqs();
        Ok(())
    }

    fn irq_counters(&self, index: u32, vector: u32) -> Option<IrqCounters> {
        if vector != 0 {
            return None;
        }
        self.irqs.counters(index)
    }

    fn poll_fds(&self) -> Vec<(RawFd, u64)> {
        self.irqs.poll_fds()
    }

    fn on_poll_fd(&mut self, token: u64, _mem: &dyn DmaMemory) -> Result<(), DeviceError> {
        self.synced = None;
        self.irqs.on_poll_fd(token)?;
        Ok(())
    }

    fn run_pending(&mut self, mem: &dyn DmaMemory) -> bool {
        // Called after every write: an idle model has no work and its lines
        // are as the access left them (synced then).
        if self.model.idle() {
            return false;
        }
        let more = self.model.run_pending(mem);
        self.sync_irqs();
        more
    }
}

/// A parsed `model:NAME,opt=val,flag` string (without the `model:` prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// Model name.
    pub name: String,
    /// Options in order: (key, value).
    pub options: Vec<(String, Option<String>)>,
}

impl std::str::FromStr for ModelSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',');
        let name = parts.next().unwrap_or("").trim().to_string();
        if name.is_empty() {
            return Err("empty model name (try model:pl330)".into());
        }
        let mut options = Vec::new();
        for p in parts {
            if p.is_empty() {
                return Err(format!("empty option in {s:?}"));
            }
            match p.split_once('=') {
                Some((k, v)) => options.push((k.to_string(), Some(v.to_string()))),
                None => options.push((p.to_string(), None)),
            }
        }
        Ok(ModelSpec { name, options })
    }
}

/// Parses a number option (decimal or 0x-hex).
pub fn parse_num(key: &str, v: Option<&str>) -> Result<u64, DeviceError> {
    let v = v.ok_or_else(|| DeviceError::Invalid(format!("option {key} needs a value")))?;
    crate::cli::parse_u64(v)
        .map_err(|_| DeviceError::Invalid(format!("option {key}={v}: not a number")))
}

/// Names of the built-in models.
pub const MODEL_NAMES: &[&str] = &["pl330", "scratch", "edu"];

/// Builds a model device from a spec. `no_dmago_gate` (CLI flag) overrides the
/// PL330 option of the same name.
pub fn create(spec: &ModelSpec, no_dmago_gate: bool) -> Result<ModelDevice, DeviceError> {
    let model: Box<dyn Model> = match spec.name.as_str() {
        "pl330" => Box::new(pl330_adapter::Pl330Model::from_spec(spec, no_dmago_gate)?),
        "scratch" => Box::new(scratch::Scratch::from_spec(spec)?),
        other => {
            return Err(DeviceError::Invalid(format!(
                "unknown model {other:?} (known: {})",
                MODEL_NAMES.join(", ")
            )))
        }
    };
    Ok(ModelDevice::new(model))
}

/// Flags of a PrimeCell model.
pub const PRIMECELL_FLAGS: u32 = device_flags::PLATFORM | device_flags::AMBA | device_flags::RESET;

/// The region check of a model with a single region (index 0).
fn only_region_0(region: u32) -> Result<(), DeviceError> {
    if region != 0 {
        return Err(DeviceError::Invalid(format!("region {region}")));
    }
    Ok(())
}

mod pl330_adapter;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn model_spec_parsing() {
        let s: ModelSpec = "pl330,channels=8,combined-irq".parse().unwrap();
        assert_eq!(s.name, "pl330");
        assert_eq!(
            s.options,
            vec![
                ("channels".to_string(), Some("8".to_string())),
                ("combined-irq".to_string(), None)
            ]
        );
        assert!("".parse::<ModelSpec>().is_err());
        assert!("pl330,,x".parse::<ModelSpec>().is_err());
        assert_eq!(parse_num("k", Some("0x10")).unwrap(), 16);
        assert!(parse_num("k", Some("zz")).is_err());
        assert!(parse_num("k", None).is_err());
        assert!(create(&"nosuch".parse().unwrap(), false).is_err());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod irq_sync_tests {
    use super::*;
    use crate::device::{IrqAction, IrqData, NoDmaMemory, SetIrqs};
    use crate::irq::tests::{drain as count, eventfd};

    fn w(d: &mut ModelDevice, off: u64, v: u32) {
        d.region_write(0, off, &v.to_le_bytes(), &NoDmaMemory)
            .unwrap();
    }

    /// DMASEV `ev` executed by the manager thread through the debug registers.
    fn sev(d: &mut ModelDevice, ev: u32) {
        w(d, 0xd08, (0x34 << 16) | ((ev << 3) << 24));
        w(d, 0xd0c, 0);
        w(d, 0xd04, 0);
    }

    /// The re-sync is skipped while the PL330's INTMIS is unchanged: it must
    /// still see every rising edge, never fire twice for one event, and fire
    /// again after the EOI while the line stays high.
    #[test]
    fn skipped_resync_keeps_one_interrupt_per_event() {
        let mut d = create(&"pl330,events=4".parse().unwrap(), false).unwrap();
        let (fd, trig) = eventfd();
        d.set_irqs(SetIrqs {
            index: 1,
            start: 0,
            count: 1,
            action: IrqAction::Trigger,
            data: IrqData::Eventfd(vec![Some(fd)]),
        })
        .unwrap();
        w(&mut d, 0x020, 0b10); // INTEN: event 1 is an interrupt
        let mut b = [0u8; 4];
        for _ in 0..3 {
            d.region_read(0, 0x020, &mut b).unwrap();
        }
        assert_eq!(count(&trig), 0, "no event yet");
        sev(&mut d, 1);
        assert_eq!(count(&trig), 1, "the event fired once");
        for _ in 0..5 {
            d.region_read(0, 0x028, &mut b).unwrap(); // INT_EVENT_RIS
        }
        assert_eq!(u32::from_le_bytes(b), 0b10);
        assert_eq!(count(&trig), 0, "reads of an unchanged state fire nothing");
        // EOI without clearing: the line is still high, so the unmask refires.
        d.unmask_irq(1, 0).unwrap();
        assert_eq!(count(&trig), 1, "unmask with the line high refires");
        // Clear, EOI, then a new event: one more interrupt.
        w(&mut d, 0x02c, 0b10); // INTCLR
        d.unmask_irq(1, 0).unwrap();
        assert_eq!(count(&trig), 0);
        sev(&mut d, 1);
        assert_eq!(count(&trig), 1, "the next event fired once");
        assert_eq!(d.irq_counters(1, 0).unwrap().device_events, 2);
    }
}
