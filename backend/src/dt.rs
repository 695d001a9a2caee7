//! Device-tree nodes for platform/AMBA devices.
//!
//! [`device_tree`] builds a minimal, valid tree around the device node from a
//! profile and the device's regions/IRQs:
//!
//! ```dts
//! / {
//!     #address-cells = <2>; #size-cells = <2>;
//!     compatible = "vfio-sidecar,virt"; model = "vfio-sidecar";
//!     interrupt-parent = <&gic>;
//!     gic: interrupt-controller@8000000 { compatible = "arm,cortex-a15-gic";
//!         interrupt-controller; #interrupt-cells = <3>; reg = <...>; };
//!     apb_pclk: apb-pclk { compatible = "fixed-clock"; #clock-cells = <0>;
//!         clock-frequency = <24000000>; clock-output-names = "apb_pclk"; };
//!     dma-controller@c000000 { compatible = "arm,pl330", "arm,primecell";
//!         reg = <0x0 0xc000000 0x0 0x1000>;
//!         interrupts = <0 32 4>, <0 33 4>, ...;   // GIC SPI, level-high
//!         #dma-cells = <1>; clocks = <&apb_pclk>; clock-names = "apb_pclk"; };
//! };
//! ```
//!
//! The tree is described once ([`Node`]) and rendered both as a DTB (with
//! `vm-fdt`) and as DTS text (own printer; `dtc` is not needed at runtime).

use thiserror::Error;

use crate::profile::Profile;

/// DT generation errors.
#[derive(Debug, Error)]
pub enum DtError {
    /// vm-fdt refused something (bad name, ...).
    #[error("FDT writer: {0}")]
    Fdt(String),
    /// Bad parameters.
    #[error("{0}")]
    Invalid(String),
}

impl From<vm_fdt::Error> for DtError {
    fn from(e: vm_fdt::Error) -> Self {
        DtError::Fdt(e.to_string())
    }
}

/// One cell of a property value: a number or a reference to a labelled node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    /// A plain 32-bit cell.
    U32(u32),
    /// `&label` (rendered as the node's phandle in the DTB).
    Ref(String),
}

/// A property value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// No value (boolean property).
    Empty,
    /// Cells, printed in groups of `group` (for `interrupts`, `reg`).
    Cells(Vec<Cell>, usize),
    /// A string list.
    Strings(Vec<String>),
}

/// A DT node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// Node name with unit address.
    pub name: String,
    /// Label (gets a phandle).
    pub label: Option<String>,
    /// Properties, in order.
    pub props: Vec<(String, Value)>,
    /// Child nodes.
    pub children: Vec<Node>,
}

impl Node {
    fn new(name: impl Into<String>) -> Self {
        Node {
            name: name.into(),
            ..Default::default()
        }
    }
    fn prop(mut self, name: &str, v: Value) -> Self {
        self.props.push((name.to_string(), v));
        self
    }
    fn u32s(self, name: &str, cells: &[u32], group: usize) -> Self {
        self.prop(
            name,
            Value::Cells(cells.iter().map(|&c| Cell::U32(c)).collect(), group),
        )
    }
    fn strs(self, name: &str, v: &[&str]) -> Self {
        self.prop(
            name,
            Value::Strings(v.iter().map(|s| s.to_string()).collect()),
        )
    }

    fn collect_labels(&self, out: &mut Vec<String>) {
        if let Some(l) = &self.label {
            out.push(l.clone());
        }
        for c in &self.children {
            c.collect_labels(out);
        }
    }

    /// The DTB (flattened device tree blob).
    pub fn to_dtb(&self) -> Result<Vec<u8>, DtError> {
        let mut labels = Vec::new();
        self.collect_labels(&mut labels);
        let mut w = vm_fdt::FdtWriter::new()?;
        self.write(&mut w, &labels)?;
        Ok(w.finish()?)
    }

    fn write(&self, w: &mut vm_fdt::FdtWriter, labels: &[String]) -> Result<(), DtError> {
        let phandle = |l: &str| -> Result<u32, DtError> {
            labels
                .iter()
                .position(|x| x == l)
                .map(|p| p as u32 + 1)
                .ok_or_else(|| DtError::Invalid(format!("reference to unknown label &{l}")))
        };
        let n = w.begin_node(&self.name)?;
        for (name, v) in &self.props {
            match v {
                Value::Empty => w.property_null(name)?,
                Value::Strings(s) => w.property_string_list(name, s.clone())?,
                Value::Cells(cells, _) => {
                    let mut out = Vec::with_capacity(cells.len());
                    for c in cells {
                        out.push(match c {
                            Cell::U32(v) => *v,
                            Cell::Ref(l) => phandle(l)?,
                        });
                    }
                    w.property_array_u32(name, &out)?;
                }
            }
        }
        if let Some(l) = &self.label {
            w.property_phandle(phandle(l)?)?;
        }
        for c in &self.children {
            c.write(w, labels)?;
        }
        w.end_node(n)?;
        Ok(())
    }

    /// DTS source text.
    pub fn to_dts(&self) -> String {
        let mut s = String::from("/dts-v1/;\n\n");
        self.print(&mut s, 0);
        s
    }

    fn print(&self, s: &mut String, depth: usize) {
        let ind = "\t".repeat(depth);
        let name = if self.name.is_empty() {
            "/"
        } else {
            &self.name
        };
        match &self.label {
            Some(l) => s.push_str(&format!("{ind}{l}: {name} {{\n")),
            None => s.push_str(&format!("{ind}{name} {{\n")),
        }
        for (pname, v) in &self.props {
            match v {
                Value::Empty => s.push_str(&format!("{ind}\t{pname};\n")),
                Value::Strings(list) => {
                    let q: Vec<String> = list.iter().map(|x| format!("{x:?}")).collect();
                    s.push_str(&format!("{ind}\t{pname} = {};\n", q.join(", ")));
                }
                Value::Cells(cells, group) => {
                    let group = (*group).max(1);
                    let groups: Vec<String> = cells
                        .chunks(group)
                        .map(|g| {
                            let inner: Vec<String> = g
                                .iter()
                                .map(|c| match c {
                                    Cell::U32(v) => format!("{v:#x}"),
                                    Cell::Ref(l) => format!("&{l}"),
                                })
                                .collect();
                            format!("<{}>", inner.join(" "))
                        })
                        .collect();
                    s.push_str(&format!("{ind}\t{pname} = {};\n", groups.join(", ")));
                }
            }
        }
        for c in &self.children {
            s.push('\n');
            c.print(s, depth + 1);
        }
        s.push_str(&format!("{ind}}};\n"));
    }

    /// Finds a direct or nested child by name (for tests).
    pub fn find(&self, name: &str) -> Option<&Node> {
        if self.name == name {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(name))
    }
}

/// Where the device sits in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtParams {
    /// Guest-physical base of region 0 (further regions follow, page aligned).
    pub base: u64,
    /// First GIC SPI number.
    pub irq_base: u32,
    /// GIC distributor base (for the minimal tree).
    pub gic_base: u64,
}

impl Default for DtParams {
    fn default() -> Self {
        DtParams {
            base: 0x0c00_0000,
            irq_base: 32,
            gic_base: 0x0800_0000,
        }
    }
}

/// What the node needs from the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DtDevice {
    /// Sizes of the regions, by index (0-sized regions are skipped).
    pub region_sizes: Vec<u64>,
    /// Number of IRQ indices.
    pub num_irqs: u32,
}

fn label_of(clock: &str) -> String {
    clock
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The device node plus the fixed-clock nodes it references.
pub fn device_nodes(profile: &Profile, dev: &DtDevice, p: &DtParams) -> Result<Vec<Node>, DtError> {
    if profile.compatible.is_empty() {
        return Err(DtError::Invalid(format!(
            "profile {} has no compatible strings: cannot build a DT node",
            profile.name
        )));
    }
    let mut reg = Vec::new();
    let mut addr = p.base;
    for &size in dev.region_sizes.iter().filter(|s| **s > 0) {
        reg.extend([
            (addr >> 32) as u32,
            addr as u32,
            (size >> 32) as u32,
            size as u32,
        ]);
        addr = size
            .div_ceil(0x1000)
            .checked_mul(0x1000)
            .and_then(|pages| addr.checked_add(pages))
            .ok_or_else(|| DtError::Invalid("regions wrap the address space".into()))?;
    }
    let mut irqs = Vec::new();
    for i in 0..dev.num_irqs {
        let spi = p
            .irq_base
            .checked_add(i)
            .ok_or_else(|| DtError::Invalid("IRQ number overflow".into()))?;
        irqs.extend([0, spi, profile.irq(i).trigger.dt_flags()]);
    }
    let node_name = profile
        .node_name
        .clone()
        .unwrap_or_else(|| profile.name.clone());
    let mut node = Node::new(format!("{node_name}@{:x}", p.base))
        .prop("compatible", Value::Strings(profile.compatible.clone()))
        .u32s("reg", &reg, 4);
    if !irqs.is_empty() {
        node = node.u32s("interrupts", &irqs, 3);
        let names: Vec<String> = (0..dev.num_irqs)
            .filter_map(|i| profile.irq(i).name)
            .collect();
        if names.len() == dev.num_irqs as usize {
            node = node.prop("interrupt-names", Value::Strings(names));
        }
    }
    if profile.compatible.iter().any(|c| c == "arm,pl330") {
        node = node.u32s("#dma-cells", &[1], 1);
    }
    let mut out = Vec::new();
    if !profile.clocks.is_empty() {
        let refs = profile
            .clocks
            .iter()
            .map(|c| Cell::Ref(label_of(&c.name)))
            .collect();
        node = node.prop("clocks", Value::Cells(refs, 1)).prop(
            "clock-names",
            Value::Strings(profile.clocks.iter().map(|c| c.name.clone()).collect()),
        );
        for c in &profile.clocks {
            let mut clk = Node::new(c.name.replace('_', "-"))
                .strs("compatible", &["fixed-clock"])
                .u32s("#clock-cells", &[0], 1)
                .u32s("clock-frequency", &[c.frequency], 1)
                .prop("clock-output-names", Value::Strings(vec![c.name.clone()]));
            clk.label = Some(label_of(&c.name));
            out.push(clk);
        }
    }
    out.push(node);
    Ok(out)
}

/// A minimal valid tree: root, a GIC, the clocks and the device node.
pub fn device_tree(profile: &Profile, dev: &DtDevice, p: &DtParams) -> Result<Node, DtError> {
    let g = p.gic_base;
    let mut gic = Node::new(format!("interrupt-controller@{g:x}"))
        .strs("compatible", &["arm,cortex-a15-gic"])
        .prop("interrupt-controller", Value::Empty)
        .u32s("#interrupt-cells", &[3], 1)
        .u32s("#address-cells", &[0], 1)
        .u32s(
            "reg",
            &[
                (g >> 32) as u32,
                g as u32,
                0,
                0x1000,
                ((g + 0x10000) >> 32) as u32,
                (g + 0x10000) as u32,
                0,
                0x2000,
            ],
            4,
        );
    gic.label = Some("gic".into());
    let mut root = Node::new("")
        .u32s("#address-cells", &[2], 1)
        .u32s("#size-cells", &[2], 1)
        .strs("compatible", &["vfio-sidecar,virt"])
        .strs("model", &["vfio-sidecar"])
        .prop(
            "interrupt-parent",
            Value::Cells(vec![Cell::Ref("gic".into())], 1),
        );
    root.children.push(gic);
    root.children.extend(device_nodes(profile, dev, p)?);
    Ok(root)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::profile::ProfileSet;

    fn pl330_tree(n: u32) -> Node {
        let set = ProfileSet::default();
        let p = set.by_name("pl330").unwrap();
        device_tree(
            p,
            &DtDevice {
                region_sizes: vec![0x1000],
                num_irqs: n,
            },
            &DtParams::default(),
        )
        .unwrap()
    }

    #[test]
    fn pl330_node_shape() {
        let t = pl330_tree(2);
        let dma = t.find("dma-controller@c000000").unwrap();
        let get = |n: &str| {
            dma.props
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v)
                .unwrap()
        };
        assert_eq!(
            get("compatible"),
            &Value::Strings(vec!["arm,pl330".into(), "arm,primecell".into()])
        );
        assert_eq!(
            get("interrupts"),
            &Value::Cells(
                [0, 32, 4, 0, 33, 4].iter().map(|&c| Cell::U32(c)).collect(),
                3
            )
        );
        assert_eq!(
            get("reg"),
            &Value::Cells(
                [0, 0x0c00_0000, 0, 0x1000]
                    .iter()
                    .map(|&c| Cell::U32(c))
                    .collect(),
                4
            )
        );
        assert_eq!(get("clock-names"), &Value::Strings(vec!["apb_pclk".into()]));
        assert!(t.find("apb-pclk").is_some());
        let dts = t.to_dts();
        assert!(dts.contains("clocks = <&apb_pclk>;"), "{dts}");
        assert!(dts.contains("apb_pclk: apb-pclk {"), "{dts}");
        assert!(
            dts.contains("interrupts = <0x0 0x20 0x4>, <0x0 0x21 0x4>;"),
            "{dts}"
        );
        assert!(dts.contains("#dma-cells = <0x1>;"), "{dts}");
    }

    #[test]
    fn dtb_is_well_formed() {
        let dtb = pl330_tree(1).to_dtb().unwrap();
        // FDT magic and total size.
        assert_eq!(&dtb[0..4], &0xd00d_feedu32.to_be_bytes());
        let total = u32::from_be_bytes(dtb[4..8].try_into().unwrap()) as usize;
        assert_eq!(total, dtb.len());
        // Strings used in the tree are present.
        let hay = String::from_utf8_lossy(&dtb);
        for s in [
            "arm,pl330",
            "apb_pclk",
            "fixed-clock",
            "#dma-cells",
            "phandle",
        ] {
            assert!(hay.contains(s), "{s}");
        }
    }

    #[test]
    fn unknown_reference_is_an_error() {
        let mut t = pl330_tree(1);
        t.props
            .push(("x".into(), Value::Cells(vec![Cell::Ref("nope".into())], 1)));
        assert!(t.to_dtb().is_err());
    }

    #[test]
    fn profile_without_compatible_is_refused() {
        let set = ProfileSet::default();
        let edu = set.by_name("edu").unwrap();
        assert!(device_nodes(
            edu,
            &DtDevice {
                region_sizes: vec![0x1000],
                num_irqs: 1
            },
            &DtParams::default()
        )
        .is_err());
    }
}
