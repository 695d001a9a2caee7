//! The vfio-sidecar extension's data types: the device description
//! (`SIDECAR_GET_DEVICE_DESC` JSON, including the per-IRQ EOI policy) and the
//! interrupt statistics (`SIDECAR_GET_IRQ_STATS`).
//!
//! Plain pub structs: the backend fills them, the client reads them.

use serde::{Deserialize, Serialize};

/// The bus kind of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// A platform device (device tree node, MMIO + IRQ lines).
    Platform,
    /// An AMBA PrimeCell device.
    Amba,
    /// A PCI device.
    Pci,
}

/// A clock the device's driver expects (device tree `clocks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockDesc {
    /// Clock name (`clock-names` entry, e.g. `"apb_pclk"`).
    pub name: String,
    /// Frequency in Hz.
    pub frequency_hz: u64,
}

/// A device region as the guest should see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionDesc {
    /// vfio-user region index.
    pub index: u32,
    /// Name (`reg-names` entry or a human name).
    pub name: String,
    /// Suggested guest-physical base address, if the device has a preferred one.
    #[serde(default)]
    pub guest_base: Option<u64>,
}

/// How an interrupt line signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IrqTrigger {
    /// Level-sensitive, active high.
    LevelHigh,
    /// Level-sensitive, active low.
    LevelLow,
    /// Rising edge.
    EdgeRising,
    /// Falling edge.
    EdgeFalling,
    /// Both edges.
    EdgeBoth,
}

/// How the end of an interrupt (EOI) is detected for a level interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EoiPolicy {
    /// A write to the device's clear register (see [`ClearReg`]) ends the interrupt.
    ClearRegister,
    /// The VMM's resample eventfd (irqfd resample) ends the interrupt.
    Resample,
    /// The first trapped access after the interrupt (a measured comparison only).
    FirstAccess,
    /// No EOI handling (edge interrupts).
    None,
}

/// How a clear-register write is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClearMode {
    /// Write-one-to-clear: the written value's bit(s) clear the interrupt.
    W1c,
    /// Any write to the register clears the interrupt.
    WriteAny,
}

/// The device register whose write acknowledges an interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClearReg {
    /// Region index of the register.
    pub region: u32,
    /// Offset of the register in the region.
    pub offset: u64,
    /// Access width in bytes (1, 2, 4 or 8).
    pub width: u32,
    /// How a write clears.
    pub mode: ClearMode,
    /// For `w1c`: the bit that clears this interrupt (`None`: any set bit).
    #[serde(default)]
    pub bit: Option<u32>,
}

/// The EOI description of one interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EoiDesc {
    /// The policy.
    pub policy: EoiPolicy,
    /// The clear register (for `clear-register`).
    #[serde(default)]
    pub clear: Option<ClearReg>,
}

/// One interrupt of the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IrqDesc {
    /// vfio-user IRQ index (the vector is 0 unless the index has several).
    pub index: u32,
    /// Name (`interrupt-names` entry or a human name).
    pub name: String,
    /// Trigger type.
    pub trigger: IrqTrigger,
    /// EOI policy.
    pub eoi: EoiDesc,
}

/// The device description returned by `SIDECAR_GET_DEVICE_DESC` as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceDescription {
    /// Bus kind.
    pub kind: DeviceKind,
    /// Device tree `compatible` strings, most specific first.
    pub compatible: Vec<String>,
    /// Clocks.
    #[serde(default)]
    pub clocks: Vec<ClockDesc>,
    /// Regions.
    #[serde(default)]
    pub regions: Vec<RegionDesc>,
    /// Interrupts.
    #[serde(default)]
    pub irqs: Vec<IrqDesc>,
    /// Suggested device tree node name (e.g. `"dma"`).
    #[serde(default)]
    pub dt_node_name: Option<String>,
}

/// Per-vector interrupt counters (`SIDECAR_GET_IRQ_STATS` entry, 32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IrqStats {
    /// Device events (rising edges of the line / device-side events).
    pub device_events: u64,
    /// Times the trigger eventfd was signalled.
    pub host_interrupts: u64,
    /// Unmask operations performed.
    pub unmasks: u64,
    /// Times an unmask found the line still asserted and it fired again.
    pub refires: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn json_spelling() {
        let mut d = crate::testing::toy_desc();
        d.clocks[0].frequency_hz = 24_000_000;
        let j = serde_json::to_string(&d).unwrap();
        for s in [
            "\"kind\":\"amba\"",
            "\"trigger\":\"level-high\"",
            "\"policy\":\"clear-register\"",
            "\"mode\":\"w1c\"",
            "\"frequency_hz\":24000000",
        ] {
            assert!(j.contains(s), "{s} missing in {j}");
        }
        let back: DeviceDescription = serde_json::from_str(&j).unwrap();
        assert_eq!(back, d);
        let m: ClearMode = serde_json::from_str("\"write-any\"").unwrap();
        assert_eq!(m, ClearMode::WriteAny);
        let p: EoiPolicy = serde_json::from_str("\"first-access\"").unwrap();
        assert_eq!(p, EoiPolicy::FirstAccess);
        assert!(serde_json::from_str::<IrqTrigger>("\"level\"").is_err());
        // Minimal description: optional lists default to empty.
        let m: DeviceDescription =
            serde_json::from_str(r#"{"kind":"platform","compatible":[]}"#).unwrap();
        assert!(m.irqs.is_empty() && m.dt_node_name.is_none());
    }
}
