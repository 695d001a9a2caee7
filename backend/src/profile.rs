//! Device profiles: what the backend knows about a device beyond what VFIO reports
//! — DT compatible strings, clocks, IRQ names/trigger types, the interrupt-clear
//! register per IRQ (for the clear-register EOI policy), region names, the default
//! EOI policy, and how to recognise the device.
//!
//! A built-in table ([`builtin`]) covers the PL330, SP804, PL031, PL061 and QEMU's
//! `edu` PCI device. Users add or override profiles with a TOML file
//! (`--profile FILE`) in the same schema (see docs/backend.md):
//!
//! ```toml
//! [[device]]
//! name = "pl330"
//! compatible = ["arm,pl330", "arm,primecell"]
//! regions = ["pl330-regs"]
//! default-eoi = "clear-register"
//! match = [{ primecell = { id = 0x00041330, mask = 0x000fffff } }]
//! clocks = [{ name = "apb_pclk", frequency = 24000000 }]
//! clear = { region = 0, offset = 0x2c, width = 4, mode = "w1c", bits = "per-irq" }
//! ```
//!
//! Bit mapping of a clear register (`bits`): `"per-irq"` = bit n clears IRQ n (with a
//! single IRQ index — a combined line — any set bit counts), `"all"` = any set bit
//! clears every IRQ using it, or `{ mask = 0x.. }` = these bits.

use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::irq::{ClearMode, ClearRegister, EoiEngine, EoiPolicy, IrqEoi};

/// Profile errors.
#[derive(Debug, Error)]
pub enum ProfileError {
    /// The file could not be read.
    #[error("cannot read profile file {path}: {source}")]
    Read {
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed or does not match the schema.
    #[error("bad profile file {path}: {message}")]
    Parse {
        /// Path.
        path: String,
        /// Parser message.
        message: String,
    },
    /// A profile is inconsistent.
    #[error("profile {name}: {message}")]
    Invalid {
        /// Profile name.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// How a device is recognised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MatchRule {
    /// PrimeCell PeriphID (bits compared under `mask`).
    Primecell {
        /// PeriphID value.
        id: u32,
        /// Mask.
        mask: u32,
    },
    /// PCI vendor:device.
    Pci {
        /// Vendor ID.
        vendor: u16,
        /// Device ID.
        device: u16,
    },
    /// A DT compatible string of the host node.
    Compatible(String),
}

/// A clock the DT node references.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clock {
    /// Clock name (`clock-names`).
    pub name: String,
    /// Frequency in Hz (fixed-clock).
    pub frequency: u32,
}

/// Interrupt trigger type (DT flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// Level, active high (DT 4).
    #[default]
    LevelHigh,
    /// Level, active low (DT 8).
    LevelLow,
    /// Rising edge (DT 1).
    EdgeRising,
    /// Falling edge (DT 2).
    EdgeFalling,
    /// Both edges (DT 3).
    EdgeBoth,
}

impl Trigger {
    /// The DT interrupt flags cell (`IRQ_TYPE_*`).
    pub fn dt_flags(self) -> u32 {
        match self {
            Trigger::EdgeRising => 1,
            Trigger::EdgeFalling => 2,
            Trigger::EdgeBoth => 3,
            Trigger::LevelHigh => 4,
            Trigger::LevelLow => 8,
        }
    }

    /// Level-triggered?
    pub fn is_level(self) -> bool {
        matches!(self, Trigger::LevelHigh | Trigger::LevelLow)
    }
}

impl From<Trigger> for vfio_sidecar_protocol::ext::IrqTrigger {
    fn from(t: Trigger) -> Self {
        use vfio_sidecar_protocol::ext::IrqTrigger as W;
        match t {
            Trigger::LevelHigh => W::LevelHigh,
            Trigger::LevelLow => W::LevelLow,
            Trigger::EdgeRising => W::EdgeRising,
            Trigger::EdgeFalling => W::EdgeFalling,
            Trigger::EdgeBoth => W::EdgeBoth,
        }
    }
}

impl From<vfio_sidecar_protocol::ext::IrqTrigger> for Trigger {
    fn from(t: vfio_sidecar_protocol::ext::IrqTrigger) -> Self {
        use vfio_sidecar_protocol::ext::IrqTrigger as W;
        match t {
            W::LevelHigh => Trigger::LevelHigh,
            W::LevelLow => Trigger::LevelLow,
            W::EdgeRising => Trigger::EdgeRising,
            W::EdgeFalling => Trigger::EdgeFalling,
            W::EdgeBoth => Trigger::EdgeBoth,
        }
    }
}

/// Which bits of a clear register belong to an IRQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BitMapping {
    /// Bit n ↔ IRQ n (a single combined IRQ: any bit).
    PerIrq,
    /// Any bit.
    All,
    /// `{ mask = .. }`: exactly these bits.
    #[serde(untagged)]
    Mask {
        /// The bits.
        mask: u64,
    },
}

/// Largest clear-register offset a profile may name (the end of its page
/// must fit in a u64; no region is that large anyway).
pub const CLEAR_OFFSET_MAX: u64 = (1 << 48) - 8;

fn default_width() -> u32 {
    4
}

fn default_bits() -> BitMapping {
    BitMapping::All
}

/// A clear register in a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClearSpec {
    /// Region index.
    pub region: u32,
    /// Byte offset in the region.
    pub offset: u64,
    /// Width in bytes (default 4).
    #[serde(default = "default_width")]
    pub width: u32,
    /// `w1c` or `write-any`.
    pub mode: ClearMode,
    /// Bit mapping (default `all`).
    #[serde(default = "default_bits")]
    pub bits: BitMapping,
}

/// One IRQ of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct IrqProfile {
    /// Name (for `interrupt-names`, logs).
    #[serde(default)]
    pub name: Option<String>,
    /// Trigger type.
    #[serde(default)]
    pub trigger: Trigger,
    /// This IRQ's own clear register (else the profile-wide `clear`).
    #[serde(default)]
    pub clear: Option<ClearSpec>,
}

/// A device profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Profile {
    /// Profile name (`model:pl330` uses "pl330").
    pub name: String,
    /// DT compatible list, most specific first.
    #[serde(default)]
    pub compatible: Vec<String>,
    /// DT node name (generic name per the DT spec, e.g. "dma-controller"; default:
    /// the profile name).
    #[serde(default)]
    pub node_name: Option<String>,
    /// How the device is recognised.
    #[serde(default, rename = "match")]
    pub matches: Vec<MatchRule>,
    /// Clocks (DT `clocks`/`clock-names`; fixed-clock nodes).
    #[serde(default)]
    pub clocks: Vec<Clock>,
    /// Region names by index.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Default EOI policy for every IRQ.
    #[serde(default = "default_eoi")]
    pub default_eoi: EoiPolicy,
    /// The clear register shared by all IRQs without their own.
    #[serde(default)]
    pub clear: Option<ClearSpec>,
    /// Per-IRQ entries by index (IRQs beyond the list: level-high, shared clear).
    #[serde(default)]
    pub irqs: Vec<IrqProfile>,
    /// The entry of the device's last IRQ index when it has two or more (a
    /// separate error line after a configurable number of event lines, such
    /// as the PL330's `irq_abort`); replaces what `irqs` says for that index.
    /// Ignored for a device with a single IRQ index (a combined line). Applied
    /// by [`Profile::for_irqs`].
    #[serde(default)]
    pub last_irq: Option<IrqProfile>,
    /// Free-form note (shown by `--help`-level docs and logs).
    #[serde(default)]
    pub note: Option<String>,
}

fn default_eoi() -> EoiPolicy {
    EoiPolicy::Resample
}

impl Profile {
    /// A profile for a device nothing is known about: no DT data, level IRQs,
    /// resample EOI.
    pub fn generic() -> Profile {
        Profile {
            name: "generic".into(),
            compatible: Vec::new(),
            node_name: None,
            matches: Vec::new(),
            clocks: Vec::new(),
            regions: Vec::new(),
            default_eoi: EoiPolicy::Resample,
            clear: None,
            irqs: Vec::new(),
            last_irq: None,
            note: None,
        }
    }

    /// This profile applied to a device with `num_irqs` IRQ indices: with two
    /// or more, `last-irq` becomes the entry of index `num_irqs - 1` (`irqs`
    /// padded with defaults up to it). The result has no `last-irq` left, so
    /// applying it again changes nothing.
    pub fn for_irqs(&self, num_irqs: u32) -> Profile {
        let mut p = self.clone();
        if let Some(last) = p.last_irq.take() {
            if num_irqs >= 2 {
                let index = num_irqs as usize - 1;
                if p.irqs.len() <= index {
                    p.irqs.resize(index + 1, IrqProfile::default());
                }
                p.irqs[index] = last;
            }
        }
        p
    }

    /// Every clear register the profile names (profile-wide, per IRQ, last IRQ).
    fn clear_specs(&self) -> impl Iterator<Item = &ClearSpec> {
        self.clear.iter().chain(
            self.irqs
                .iter()
                .chain(self.last_irq.iter())
                .filter_map(|i| i.clear.as_ref()),
        )
    }

    /// The IRQ entry of an index (defaults past the list).
    pub fn irq(&self, index: u32) -> IrqProfile {
        self.irqs.get(index as usize).cloned().unwrap_or_default()
    }

    /// The clear register for IRQ `index` of `num_irqs`, resolved to a mask.
    pub fn clear_register(&self, index: u32, num_irqs: u32) -> Option<ClearRegister> {
        let spec = self.irq(index).clear.or(self.clear)?;
        let width_mask = if spec.width >= 8 {
            u64::MAX
        } else {
            (1u64 << (8 * spec.width)) - 1
        };
        let mask = match spec.bits {
            BitMapping::All => width_mask,
            BitMapping::PerIrq if num_irqs <= 1 => width_mask,
            BitMapping::PerIrq => 1u64.checked_shl(index).unwrap_or(0),
            BitMapping::Mask { mask } => mask,
        } & width_mask;
        Some(ClearRegister {
            region: spec.region,
            offset: spec.offset,
            width: spec.width,
            mode: spec.mode,
            mask,
        })
    }

    /// Per-IRQ EOI rules for a device with `num_irqs` IRQ indices, using `policy`
    /// (or the profile default). Edge IRQs get no EOI (they are not automasked).
    pub fn eoi_rules(&self, num_irqs: u32, policy: Option<EoiPolicy>) -> Vec<IrqEoi> {
        let policy = policy.unwrap_or(self.default_eoi);
        (0..num_irqs)
            .filter(|&i| self.irq(i).trigger.is_level())
            .map(|i| IrqEoi {
                index: i,
                policy,
                clear: self.clear_register(i, num_irqs),
            })
            .collect()
    }

    /// The EOI engine for a device with `num_irqs` IRQs.
    pub fn eoi_engine(
        &self,
        num_irqs: u32,
        policy: Option<EoiPolicy>,
    ) -> Result<EoiEngine, ProfileError> {
        EoiEngine::new(self.eoi_rules(num_irqs, policy)).map_err(|e| ProfileError::Invalid {
            name: self.name.clone(),
            message: e.to_string(),
        })
    }

    /// Checks internal consistency.
    pub fn validate(&self) -> Result<(), ProfileError> {
        let bad = |message: String| ProfileError::Invalid {
            name: self.name.clone(),
            message,
        };
        if self.name.is_empty() {
            return Err(bad("empty name".into()));
        }
        for c in self.clear_specs() {
            if ![1, 2, 4, 8].contains(&c.width) {
                return Err(bad(format!(
                    "clear register width {} (1, 2, 4 or 8)",
                    c.width
                )));
            }
            if c.offset % u64::from(c.width) != 0 {
                return Err(bad(format!(
                    "clear register offset {:#x} not aligned to its width",
                    c.offset
                )));
            }
            // The register's page is trapped: its end, rounded up to a page,
            // must be representable.
            if c.offset > CLEAR_OFFSET_MAX {
                return Err(bad(format!(
                    "clear register offset {:#x} beyond {CLEAR_OFFSET_MAX:#x}",
                    c.offset
                )));
            }
        }
        for c in &self.clocks {
            if c.name.is_empty() || c.frequency == 0 {
                return Err(bad(format!(
                    "clock {:?}: name and frequency > 0 needed",
                    c.name
                )));
            }
        }
        Ok(())
    }

    /// Checks the profile against the device it is applied to: every clear
    /// register lies inside an existing region, the profile names no more
    /// regions or IRQs than the device has. `region_sizes[i]` is region `i`'s
    /// size (0 = absent). A mismatch would otherwise show up only as a guest
    /// that hangs after its first interrupt, so `serve` and `dt` refuse it.
    pub fn validate_for(&self, region_sizes: &[u64], num_irqs: u32) -> Result<(), ProfileError> {
        let bad = |message: String| ProfileError::Invalid {
            name: self.name.clone(),
            message,
        };
        if self.irqs.len() > num_irqs as usize {
            return Err(bad(format!(
                "lists {} IRQs, the device has {num_irqs}",
                self.irqs.len()
            )));
        }
        if self.regions.len() > region_sizes.len() {
            return Err(bad(format!(
                "names {} regions, the device has {}",
                self.regions.len(),
                region_sizes.len()
            )));
        }
        for c in self.clear_specs() {
            let size = match region_sizes.get(c.region as usize) {
                Some(&size) if size > 0 => size,
                _ => {
                    return Err(bad(format!(
                        "clear register in region {}, which the device does not have",
                        c.region
                    )))
                }
            };
            let end = c.offset.checked_add(u64::from(c.width));
            if end.is_none_or(|end| end > size) {
                return Err(bad(format!(
                    "clear register at {:#x} (+{}) outside region {} ({size:#x} bytes)",
                    c.offset, c.width, c.region
                )));
            }
        }
        Ok(())
    }

    /// Does this profile match a PrimeCell PeriphID?
    pub fn matches_primecell(&self, periph_id: u32) -> bool {
        self.matches.iter().any(|m| match m {
            MatchRule::Primecell { id, mask } => periph_id & mask == id & mask,
            _ => false,
        })
    }

    /// Does this profile match a PCI ID?
    pub fn matches_pci(&self, v: u16, d: u16) -> bool {
        self.matches.iter().any(|m| match m {
            MatchRule::Pci { vendor, device } => *vendor == v && *device == d,
            _ => false,
        })
    }

    /// Does this profile match one of a node's compatible strings?
    pub fn matches_compatible(&self, list: &[String]) -> bool {
        self.matches.iter().any(|m| match m {
            MatchRule::Compatible(c) => list.iter().any(|l| l == c),
            _ => false,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    #[serde(default)]
    device: Vec<Profile>,
}

/// A set of profiles: user ones first, then built-in ones.
#[derive(Debug, Clone)]
pub struct ProfileSet {
    profiles: Vec<Profile>,
}

impl Default for ProfileSet {
    fn default() -> Self {
        ProfileSet {
            profiles: builtin(),
        }
    }
}

impl ProfileSet {
    /// Parses TOML text (`[[device]]` entries) and puts them before the built-ins.
    pub fn add_toml(&mut self, text: &str, path: &str) -> Result<(), ProfileError> {
        let file: ProfileFile = toml::from_str(text).map_err(|e| ProfileError::Parse {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        for p in &file.device {
            p.validate()?;
        }
        let mut new = file.device;
        new.append(&mut self.profiles);
        self.profiles = new;
        Ok(())
    }

    /// Loads a TOML profile file.
    pub fn add_file(&mut self, path: &Path) -> Result<(), ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.add_toml(&text, &path.display().to_string())
    }

    /// All profiles, in precedence order.
    pub fn all(&self) -> &[Profile] {
        &self.profiles
    }

    /// By name.
    pub fn by_name(&self, name: &str) -> Option<&Profile> {
        self.profiles.iter().find(|p| p.name == name)
    }

    /// By PrimeCell PeriphID.
    pub fn by_primecell(&self, id: u32) -> Option<&Profile> {
        self.profiles.iter().find(|p| p.matches_primecell(id))
    }

    /// By PCI ID.
    pub fn by_pci(&self, vendor: u16, device: u16) -> Option<&Profile> {
        self.profiles.iter().find(|p| p.matches_pci(vendor, device))
    }

    /// By DT compatible list.
    pub fn by_compatible(&self, list: &[String]) -> Option<&Profile> {
        self.profiles.iter().find(|p| p.matches_compatible(list))
    }
}

/// The built-in profiles, as TOML (also the documentation example).
pub const BUILTIN_TOML: &str = r#"
[[device]]
name = "pl330"
compatible = ["arm,pl330", "arm,primecell"]
node-name = "dma-controller"
regions = ["pl330-regs"]
default-eoi = "clear-register"
match = [{ primecell = { id = 0x00041330, mask = 0x000fffff } }, { compatible = "arm,pl330" }]
clocks = [{ name = "apb_pclk", frequency = 24000000 }]
note = "IRQ n = event n, then irq_abort (named abort); with combined-irq one IRQ carries both"
# INTCLR: W1C, bit n clears event/IRQ n (one combined IRQ: any bit).
clear = { region = 0, offset = 0x02c, width = 4, mode = "w1c", bits = "per-irq" }
# irq_abort, the index after the event IRQs: high while a thread faults; the driver kills the thread with
# DMAKILL through DBGCMD (0xD04), so any DBGCMD write is its clear register.
last-irq = { name = "abort", trigger = "level-high", clear = { region = 0, offset = 0xd04, width = 4, mode = "write-any" } }

[[device]]
name = "sp804"
node-name = "timer"
compatible = ["arm,sp804", "arm,primecell"]
regions = ["sp804-regs"]
default-eoi = "clear-register"
match = [{ primecell = { id = 0x00141804, mask = 0x000fffff } }, { compatible = "arm,sp804" }]
clocks = [{ name = "apb_pclk", frequency = 1000000 }]
note = "one combined IRQ; Timer1IntClr (0x0C) and Timer2IntClr (0x2C) clear on any write"
irqs = [{ name = "timer", trigger = "level-high", clear = { region = 0, offset = 0x0c, mode = "write-any" } }]

[[device]]
name = "sp804-timer2"
node-name = "timer"
compatible = ["arm,sp804", "arm,primecell"]
regions = ["sp804-regs"]
default-eoi = "clear-register"
note = "like sp804 but the combined IRQ's EOI is a write to Timer2IntClr (0x2C)"
clocks = [{ name = "apb_pclk", frequency = 1000000 }]
irqs = [{ name = "timer", trigger = "level-high", clear = { region = 0, offset = 0x2c, mode = "write-any" } }]

[[device]]
name = "pl031"
node-name = "rtc"
compatible = ["arm,pl031", "arm,primecell"]
regions = ["pl031-regs"]
default-eoi = "clear-register"
match = [{ primecell = { id = 0x00041031, mask = 0x000fffff } }, { compatible = "arm,pl031" }]
clocks = [{ name = "apb_pclk", frequency = 24000000 }]
clear = { region = 0, offset = 0x1c, width = 4, mode = "w1c", bits = "all" }

[[device]]
name = "pl061"
node-name = "gpio"
compatible = ["arm,pl061", "arm,primecell"]
regions = ["pl061-regs"]
default-eoi = "clear-register"
match = [{ primecell = { id = 0x00041061, mask = 0x000fffff } }, { compatible = "arm,pl061" }]
clocks = [{ name = "apb_pclk", frequency = 24000000 }]
note = "GPIOIC clears edge-detected interrupts only; a level-sensitive GPIO re-asserts while its level persists (the unmask re-fires then)"
clear = { region = 0, offset = 0x41c, width = 4, mode = "w1c", bits = "all" }

[[device]]
name = "scratch"
compatible = ["vfio-sidecar,scratch"]
node-name = "scratch"
regions = ["scratch"]
default-eoi = "clear-register"
note = "built-in test model (model:scratch); INTCLR 0x0C W1C"
clear = { region = 0, offset = 0x0c, width = 4, mode = "w1c", bits = "per-irq" }

[[device]]
name = "edu"
compatible = []
regions = ["BAR0"]
default-eoi = "clear-register"
match = [{ pci = { vendor = 0x1234, device = 0x11e8 } }]
note = "QEMU edu: INTx; 0x64 'interrupt acknowledge' clears the written bits from the status (W1C semantics)"
clear = { region = 0, offset = 0x64, width = 4, mode = "w1c", bits = "all" }
irqs = [{ name = "INTx" }, { name = "MSI", trigger = "edge-rising" }, { name = "MSI-X", trigger = "edge-rising" }, { name = "ERR", trigger = "edge-rising" }, { name = "REQ", trigger = "edge-rising" }]
"#;

/// The built-in profile table.
pub fn builtin() -> Vec<Profile> {
    match toml::from_str::<ProfileFile>(BUILTIN_TOML) {
        Ok(f) => f.device,
        Err(e) => {
            // Covered by a unit test; never happens in a released build.
            log::error!("built-in profile table does not parse: {e}");
            Vec::new()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn builtin_table_parses_and_validates() {
        let b: ProfileFile = toml::from_str(BUILTIN_TOML).unwrap();
        assert_eq!(b.device.len(), 7);
        for p in &b.device {
            p.validate().unwrap();
        }
    }

    #[test]
    fn pl330_profile() {
        let set = ProfileSet::default();
        let p = set.by_name("pl330").unwrap();
        assert_eq!(p.compatible, ["arm,pl330", "arm,primecell"]);
        assert_eq!(p.clocks[0].name, "apb_pclk");
        assert_eq!(p.default_eoi, EoiPolicy::ClearRegister);
        // Per-event IRQs: bit n ↔ irq n.
        let c = p.clear_register(3, 8).unwrap();
        assert_eq!((c.offset, c.mode, c.mask), (0x2c, ClearMode::W1c, 1 << 3));
        // Combined IRQ: any bit.
        assert_eq!(p.clear_register(0, 1).unwrap().mask, 0xffff_ffff);
        // Matching by QEMU's PeriphID (revision 2) and Linux's mask.
        assert_eq!(set.by_primecell(0x0024_1330).unwrap().name, "pl330");
        assert!(set.by_primecell(0x0024_1331).is_none());
        assert_eq!(
            set.by_compatible(&["arm,pl330".into(), "arm,primecell".into()])
                .unwrap()
                .name,
            "pl330"
        );
        let rules = p.eoi_rules(4, None);
        assert_eq!(rules.len(), 4);
        assert!(rules.iter().all(|r| r.policy == EoiPolicy::ClearRegister));
        let e = p.eoi_engine(4, None).unwrap();
        assert_eq!(e.after_write(0, 0x2c, &4u32.to_le_bytes()), vec![2]);
    }

    #[test]
    fn pl330_abort_irq_is_the_last_index() {
        let set = ProfileSet::default();
        let p = set.by_name("pl330").unwrap().for_irqs(9);
        assert!(p.last_irq.is_none());
        assert_eq!(p.irqs.len(), 9);
        assert_eq!(p.irq(8).name.as_deref(), Some("abort"));
        assert_eq!(p.irq(3).name, None);
        // Events keep INTCLR bit n; the abort line is cleared by any DBGCMD write.
        assert_eq!(p.clear_register(3, 9).unwrap().mask, 1 << 3);
        let c = p.clear_register(8, 9).unwrap();
        assert_eq!(
            (c.region, c.offset, c.width, c.mode),
            (0, 0xd04, 4, ClearMode::WriteAny)
        );
        p.validate_for(&[0x1000], 9).unwrap();
        let e = p.eoi_engine(9, None).unwrap();
        // DMAKILL through DBGCMD unmasks the abort line only; INTCLR bit 8 does not.
        assert_eq!(e.after_write(0, 0xd04, &0u32.to_le_bytes()), vec![8]);
        // DBGINST0/1 (written before DBGCMD, the instruction not yet run) do not.
        assert!(e.after_write(0, 0xd08, &0u32.to_le_bytes()).is_empty());
        assert!(e.after_write(0, 0xd0c, &0u32.to_le_bytes()).is_empty());
        assert!(e
            .after_write(0, 0x2c, &(1u32 << 8).to_le_bytes())
            .is_empty());
        assert_eq!(e.after_write(0, 0x2c, &1u32.to_le_bytes()), vec![0]);
        // first-access and resample cover it like the event lines.
        let fa = p.eoi_engine(9, Some(EoiPolicy::FirstAccess)).unwrap();
        assert_eq!(fa.after_read(), (0..9).collect::<Vec<u32>>());
        assert_eq!(p.eoi_rules(9, Some(EoiPolicy::Resample)).len(), 9);
        // Applying it twice changes nothing.
        assert_eq!(p.for_irqs(9), p);
        // A combined line (one index) keeps INTCLR: last-irq does not apply.
        let c = set.by_name("pl330").unwrap().for_irqs(1);
        assert_eq!(c.irq(0).name, None);
        assert_eq!(c.clear_register(0, 1).unwrap().offset, 0x2c);
        // Fewer events: the abort entry follows the last index.
        let p5 = set.by_name("pl330").unwrap().for_irqs(5);
        assert_eq!(p5.irq(4).name.as_deref(), Some("abort"));
        p5.validate_for(&[0x1000], 5).unwrap();
        // The abort clear register is checked like the others.
        let mut bad = set.by_name("pl330").unwrap().clone();
        bad.last_irq
            .as_mut()
            .unwrap()
            .clear
            .as_mut()
            .unwrap()
            .offset = 0xd06;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn other_builtins() {
        let set = ProfileSet::default();
        let sp = set.by_primecell(0x0014_1804).unwrap();
        let c = sp.clear_register(0, 1).unwrap();
        assert_eq!((c.offset, c.mode), (0x0c, ClearMode::WriteAny));
        let rtc = set.by_primecell(0x0004_1031).unwrap();
        assert_eq!(rtc.clear_register(0, 1).unwrap().offset, 0x1c);
        let gpio = set.by_primecell(0x0004_1061).unwrap();
        assert_eq!(gpio.clear_register(0, 1).unwrap().offset, 0x41c);
        let edu = set.by_pci(0x1234, 0x11e8).unwrap();
        let c = edu.clear_register(0, 1).unwrap();
        assert_eq!((c.region, c.offset, c.mode), (0, 0x64, ClearMode::W1c));
        assert!(set.by_pci(0x1234, 0x1111).is_none());
    }

    #[test]
    fn user_toml_overrides_and_validates() {
        let mut set = ProfileSet::default();
        set.add_toml(
            r#"
[[device]]
name = "pl330"
compatible = ["vendor,my-dma", "arm,pl330", "arm,primecell"]
default-eoi = "resample"
clocks = [{ name = "apb_pclk", frequency = 100000000 }]
irqs = [{ name = "ev0", trigger = "edge-rising" }, { name = "ev1", clear = { region = 0, offset = 0x2c, mode = "w1c", bits = { mask = 0x6 } } }]
"#,
            "user.toml",
        )
        .unwrap();
        let p = set.by_name("pl330").unwrap();
        assert_eq!(p.compatible[0], "vendor,my-dma");
        assert_eq!(p.default_eoi, EoiPolicy::Resample);
        assert_eq!(p.clear_register(1, 4).unwrap().mask, 0x6);
        assert!(p.clear_register(2, 4).is_none());
        // Edge IRQ 0 has no EOI rule.
        let rules = p.eoi_rules(2, None);
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].index, 1);
        // IRQ 2 has no clear register: clear-register policy is refused.
        assert!(p.eoi_engine(3, Some(EoiPolicy::ClearRegister)).is_err());

        let mut set = ProfileSet::default();
        let e = set
            .add_toml("[[device]]\nname = \"x\"\nbogus = 1\n", "bad.toml")
            .unwrap_err();
        assert!(e.to_string().contains("bad.toml"), "{e}");
        let e = set
            .add_toml(
                "[[device]]\nname = \"x\"\nclear = { region = 0, offset = 0x2, width = 4, mode = \"w1c\" }\n",
                "bad.toml",
            )
            .unwrap_err();
        assert!(matches!(e, ProfileError::Invalid { .. }), "{e}");
    }

    #[test]
    fn clear_register_near_u64_max_is_refused() {
        // TOML integers are i64, so a file cannot reach the u64 wrap; the bound
        // keeps the trapped-page arithmetic (offset + width, rounded up to a
        // page) far from it for profiles built in code as well.
        let mut set = ProfileSet::default();
        let e = set
            .add_toml(
                "[[device]]\nname = \"x\"\nclear = { region = 0, offset = 0x7ffffffffffffff8, width = 8, mode = \"w1c\" }\n",
                "far.toml",
            )
            .unwrap_err();
        assert!(matches!(e, ProfileError::Invalid { .. }), "{e}");
        assert!(e.to_string().contains("beyond"), "{e}");
        set.add_toml(
            &format!(
                "[[device]]\nname = \"y\"\nclear = {{ region = 0, offset = {CLEAR_OFFSET_MAX:#x}, width = 8, mode = \"w1c\" }}\n"
            ),
            "edge.toml",
        )
        .unwrap();
    }

    #[test]
    fn trigger_converts_to_the_wire_and_back() {
        use vfio_sidecar_protocol::ext::IrqTrigger;
        for t in [
            Trigger::LevelHigh,
            Trigger::LevelLow,
            Trigger::EdgeRising,
            Trigger::EdgeFalling,
            Trigger::EdgeBoth,
        ] {
            let w = IrqTrigger::from(t);
            // Same kebab-case spelling on both sides.
            assert_eq!(
                serde_json::to_string(&w).unwrap(),
                serde_json::to_string(&t).unwrap()
            );
            assert_eq!(Trigger::from(w), t);
        }
    }

    #[test]
    fn profile_checked_against_the_device() {
        let set = ProfileSet::default();
        let pl330 = set.by_name("pl330").unwrap();
        pl330.validate_for(&[0x1000], 8).unwrap();
        let mut p = pl330.clone();
        p.irqs = vec![IrqProfile::default(); 12];
        let e = p.validate_for(&[0x1000], 8).unwrap_err().to_string();
        assert!(e.contains("lists 12 IRQs, the device has 8"), "{e}");
        let mut p = pl330.clone();
        p.clear.as_mut().unwrap().offset = 0x1000;
        let e = p.validate_for(&[0x1000], 8).unwrap_err().to_string();
        assert!(e.contains("outside region 0"), "{e}");
        let mut p = pl330.clone();
        p.clear.as_mut().unwrap().offset = 0xffc;
        p.validate_for(&[0x1000], 8).unwrap();
        p.clear.as_mut().unwrap().region = 3;
        let e = p.validate_for(&[0x1000], 8).unwrap_err().to_string();
        assert!(
            e.contains("region 3, which the device does not have"),
            "{e}"
        );
        let mut p = pl330.clone();
        p.regions = vec!["a".into(), "b".into()];
        let e = p.validate_for(&[0x1000], 8).unwrap_err().to_string();
        assert!(e.contains("names 2 regions, the device has 1"), "{e}");
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let mut set = ProfileSet::default();
        let e = set
            .add_file(Path::new("/nonexistent/profile.toml"))
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/profile.toml"));
    }
}
