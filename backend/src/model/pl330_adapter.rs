//! Adapter from the PL330 model (`model/pl330`) to [`super::Model`].
//! (Placeholder until the PL330 model lands on this branch.)

use super::{Model, ModelSpec};
use crate::device::{DeviceError, DmaMemory, RegionInfo};

/// The PL330 model as a [`Model`].
#[derive(Debug)]
pub struct Pl330Model;

impl Pl330Model {
    /// From `model:pl330[,options]`.
    pub fn from_spec(_spec: &ModelSpec, _no_dmago_gate: bool) -> Result<Self, DeviceError> {
        Err(DeviceError::NotSupported(
            "the PL330 model is not built into this binary yet".into(),
        ))
    }
}

impl Model for Pl330Model {
    fn kind(&self) -> &'static str {
        "pl330"
    }
    fn device_flags(&self) -> u32 {
        super::PRIMECELL_FLAGS
    }
    fn regions(&self) -> Vec<RegionInfo> {
        Vec::new()
    }
    fn read(&mut self, _r: u32, _o: u64, _d: &mut [u8]) -> Result<(), DeviceError> {
        Err(DeviceError::NotSupported("pl330".into()))
    }
    fn write(
        &mut self,
        _r: u32,
        _o: u64,
        _d: &[u8],
        _m: &dyn DmaMemory,
    ) -> Result<(), DeviceError> {
        Err(DeviceError::NotSupported("pl330".into()))
    }
    fn num_irqs(&self) -> u32 {
        0
    }
    fn irq_levels(&self) -> Vec<bool> {
        Vec::new()
    }
    fn run_pending(&mut self, _m: &dyn DmaMemory) -> bool {
        false
    }
    fn reset(&mut self) {}
}
