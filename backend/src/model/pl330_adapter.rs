//! Adapter from the PL330 model ([`super::pl330::Pl330`]) to [`super::Model`].
//!
//! One region (index 0, 4 KiB, READ|WRITE, "pl330-regs", no mmap: INTCLR shares
//! the frame, so the whole frame is trapped), flags `PLATFORM | AMBA | RESET`,
//! IRQ index n = model line n (`num_irq_lines()`: one per event and then
//! `irq_abort` as the last index, or one combined line carrying both). Linux's
//! binding lists every interrupt of the node and `pl330.c` requests each AMBA
//! IRQ with the same handler, which reads FSRD/FSRC first: the abort index is
//! how a fault (an instruction fetch without EXEC, a bad data address) reaches
//! the driver, which then kills the thread with DMAKILL through DBGCMD (the
//! abort line's clear register in the built-in profile).

use super::pl330::{Pl330, Pl330Config};
use super::{parse_num, Model, ModelSpec};
use crate::device::{region_flags, DeviceError, DmaMemory, RegionInfo};

/// The PL330 model as a [`Model`].
#[derive(Debug)]
pub struct Pl330Model {
    dev: Pl330,
}

fn small(key: &str, v: Option<&str>) -> Result<u8, DeviceError> {
    let n = parse_num(key, v)?;
    u8::try_from(n).map_err(|_| DeviceError::Invalid(format!("option {key}={n}: too large")))
}

fn word(key: &str, v: Option<&str>) -> Result<u32, DeviceError> {
    let n = parse_num(key, v)?;
    u32::try_from(n).map_err(|_| DeviceError::Invalid(format!("option {key}={n}: too large")))
}

impl Pl330Model {
    /// The configuration a `model:pl330[,options]` string describes.
    pub fn config(spec: &ModelSpec, no_dmago_gate: bool) -> Result<Pl330Config, DeviceError> {
        let mut cfg = Pl330Config::default();
        for (k, v) in &spec.options {
            let v = v.as_deref();
            match k.as_str() {
                "channels" => cfg.channels = small(k, v)?,
                "events" => cfg.events = small(k, v)?,
                "periph-reqs" => cfg.periph_reqs = small(k, v)?,
                "revision" => cfg.revision = small(k, v)?,
                "data-width" => cfg.data_width_bits = word(k, v)?,
                "buffer-lines" => cfg.data_buffer_lines = word(k, v)?,
                "step-budget" => cfg.step_budget = parse_num(k, v)?,
                "time-slice-us" => cfg.time_slice_us = parse_num(k, v)?,
                "combined-irq" => cfg.combined_irq = true,
                "no-dmago-gate" => cfg.dmago_exec_gate = false,
                o => {
                    return Err(DeviceError::Invalid(format!(
                        "pl330: unknown option {o:?} (channels, events, periph-reqs, revision, \
                         data-width, buffer-lines, step-budget, time-slice-us, combined-irq, \
                         no-dmago-gate)"
                    )))
                }
            }
        }
        if no_dmago_gate {
            cfg.dmago_exec_gate = false;
        }
        Ok(cfg)
    }

    /// From `model:pl330[,options]`.
    pub fn from_spec(spec: &ModelSpec, no_dmago_gate: bool) -> Result<Self, DeviceError> {
        let cfg = Self::config(spec, no_dmago_gate)?;
        let dev = Pl330::new(cfg).map_err(|e| DeviceError::Invalid(e.to_string()))?;
        Ok(Pl330Model { dev })
    }
}

fn access(offset: u64, len: usize) -> Result<(), DeviceError> {
    if len != 4 || offset % 4 != 0 {
        return Err(DeviceError::Unsupported(format!(
            "PL330 registers take aligned 32-bit accesses only ({len} bytes at {offset:#x})"
        )));
    }
    Ok(())
}

impl Model for Pl330Model {
    fn kind(&self) -> &'static str {
        "pl330"
    }

    fn device_flags(&self) -> u32 {
        super::PRIMECELL_FLAGS
    }

    fn regions(&self) -> Vec<RegionInfo> {
        vec![RegionInfo {
            index: 0,
            flags: region_flags::READ | region_flags::WRITE,
            size: Pl330::FRAME_SIZE,
            name: "pl330-regs".into(),
            mmap: None,
        }]
    }

    fn read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        super::only_region_0(region)?;
        access(offset, data.len())?;
        let v = self
            .dev
            .read(offset, data.len())
            .map_err(|e| DeviceError::Unsupported(e.to_string()))?;
        data.copy_from_slice(&v.to_le_bytes());
        Ok(())
    }

    fn write(
        &mut self,
        region: u32,
        offset: u64,
        data: &[u8],
        mem: &dyn DmaMemory,
    ) -> Result<(), DeviceError> {
        super::only_region_0(region)?;
        access(offset, data.len())?;
        let v: [u8; 4] = data
            .try_into()
            .map_err(|_| DeviceError::Unsupported("32-bit accesses only".into()))?;
        self.dev
            .write(offset, 4, u32::from_le_bytes(v), mem)
            .map_err(|e| DeviceError::Unsupported(e.to_string()))
    }

    fn num_irqs(&self) -> u32 {
        self.dev.num_irq_lines()
    }

    fn irq_levels(&self) -> Vec<bool> {
        (0..self.dev.num_irq_lines())
            .map(|l| self.dev.irq_level(l))
            .collect()
    }

    fn irq_level(&self, line: u32) -> bool {
        line < self.dev.num_irq_lines() && self.dev.irq_level(line)
    }

    fn irq_levels_into(&self, out: &mut [bool]) {
        self.dev.irq_levels_into(out);
    }

    fn irq_fingerprint(&self) -> Option<u64> {
        // Every line is a function of INTMIS and the abort level (and
        // constant configuration).
        Some(self.dev.irq_fingerprint())
    }

    fn run_pending(&mut self, mem: &dyn DmaMemory) -> bool {
        self.dev.run_pending(mem)
    }

    fn idle(&self) -> bool {
        // Without an executing channel `run_budget` returns at once, changing
        // no state: no interrupt level can change.
        !self.dev.pending()
    }

    fn reset(&mut self) {
        self.dev.reset();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::device::{Device, NoDmaMemory};
    use crate::model::create;

    #[test]
    fn options_map_to_config() {
        let s: ModelSpec = "pl330,channels=4,events=16,combined-irq,no-dmago-gate,revision=0"
            .parse()
            .unwrap();
        let c = Pl330Model::config(&s, false).unwrap();
        assert_eq!((c.channels, c.events, c.revision), (4, 16, 0));
        assert!(c.combined_irq && !c.dmago_exec_gate);
        assert_eq!((c.step_budget, c.time_slice_us), (1 << 22, 1000));
        let s: ModelSpec = "pl330,step-budget=0x100,time-slice-us=0".parse().unwrap();
        let c = Pl330Model::config(&s, false).unwrap();
        assert_eq!((c.step_budget, c.time_slice_us), (0x100, 0));
        assert!(Pl330Model::config(&"pl330,time-slice-us=x".parse().unwrap(), false).is_err());
        assert!(Pl330Model::config(&"pl330,bogus".parse().unwrap(), false).is_err());
        assert!(Pl330Model::config(&"pl330,channels=999".parse().unwrap(), false).is_err());
        assert!(create(&"pl330,channels=9".parse().unwrap(), false).is_err());
        assert!(
            !Pl330Model::config(&"pl330".parse().unwrap(), true)
                .unwrap()
                .dmago_exec_gate
        );
    }

    #[test]
    fn device_view() {
        let mut d = create(&"pl330,events=4".parse().unwrap(), false).unwrap();
        let info = d.info();
        // Four event lines and irq_abort.
        assert_eq!((info.num_regions, info.num_irqs), (1, 5));
        assert_eq!(info.flags, super::super::PRIMECELL_FLAGS);
        let r = d.region_info(0).unwrap();
        assert_eq!(
            (r.size, r.name.as_str(), r.mmap.is_none()),
            (0x1000, "pl330-regs", true)
        );
        // PCellID reads through.
        let mut b = [0u8; 4];
        d.region_read(0, 0xff0, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0x0d);
        assert!(d.region_read(0, 0xff0, &mut [0u8; 2]).is_err());
        assert!(d.region_write(0, 0x21, &[0; 4], &NoDmaMemory).is_err());
        let combined = create(&"pl330,combined-irq".parse().unwrap(), false).unwrap();
        assert_eq!(combined.info().num_irqs, 1);
    }
}
