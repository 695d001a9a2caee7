//! `vmm-shim dtb`: a guest device tree (for an ARM guest) holding the node the
//! backend describes. The backend's DTB is taken as-is when it is already a
//! complete tree (root `compatible`/`#address-cells` and an interrupt
//! controller); otherwise its nodes are wrapped in a minimal `virt`-like tree
//! (memory, chosen, GICv2, interrupt-parent). The shim itself runs x86 guests.

use thiserror::Error;
use vm_fdt::FdtWriter;

use vfio_sidecar_protocol::ext::{DeviceDescription, IrqTrigger};

use crate::link::ProtoBackend;

const FDT_MAGIC: u32 = 0xd00d_feed;
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;
const END: u32 = 9;
const MAX_DEPTH: usize = 32;

/// Errors of this module.
#[derive(Debug, Error)]
pub enum DtbError {
    /// The blob is not a valid flattened device tree.
    #[error("malformed DTB: {0}")]
    Malformed(String),
    /// Writing the tree failed.
    #[error("writing the tree: {0}")]
    Write(#[from] vm_fdt::Error),
    /// The backend could not describe the device.
    #[error("backend: {0}")]
    Backend(String),
}

/// A parsed node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// Name (`""` for the root).
    pub name: String,
    /// Properties in order.
    pub props: Vec<(String, Vec<u8>)>,
    /// Children in order.
    pub children: Vec<Node>,
}

impl Node {
    /// A property's value.
    pub fn prop(&self, name: &str) -> Option<&[u8]> {
        self.props
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The first child called `name`, with or without a unit address
    /// (`"memory"` finds `memory@40000000`).
    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| {
            c.name
                .strip_prefix(name)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('@'))
        })
    }

    fn any(&self, f: &dyn Fn(&Node) -> bool) -> bool {
        f(self) || self.children.iter().any(|c| c.any(f))
    }

    fn max_phandle(&self) -> u32 {
        let own = self
            .prop("phandle")
            .and_then(|v| v.try_into().ok())
            .map(u32::from_be_bytes)
            .unwrap_or(0);
        self.children
            .iter()
            .map(Node::max_phandle)
            .fold(own, u32::max)
    }
}

fn be32(b: &[u8], at: usize) -> Result<u32, DtbError> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| DtbError::Malformed(format!("read past the end at {at:#x}")))
}

fn cstr(b: &[u8], at: usize) -> Result<(String, usize), DtbError> {
    let rest = b
        .get(at..)
        .ok_or_else(|| DtbError::Malformed(format!("string offset {at:#x} out of range")))?;
    let n = rest
        .iter()
        .position(|&c| c == 0)
        .ok_or_else(|| DtbError::Malformed("unterminated string".into()))?;
    let s = std::str::from_utf8(&rest[..n])
        .map_err(|_| DtbError::Malformed("non-UTF-8 name".into()))?;
    Ok((s.to_string(), n + 1))
}

/// Parses a flattened device tree (bounds-checked; hostile input is an error).
pub fn parse(dtb: &[u8]) -> Result<Node, DtbError> {
    if be32(dtb, 0)? != FDT_MAGIC {
        return Err(DtbError::Malformed("bad magic".into()));
    }
    let total = be32(dtb, 4)? as usize;
    if total > dtb.len() {
        return Err(DtbError::Malformed(format!(
            "totalsize {total} > {} bytes",
            dtb.len()
        )));
    }
    let dtb = &dtb[..total];
    let off_struct = be32(dtb, 8)? as usize;
    let off_strings = be32(dtb, 12)? as usize;
    let strings = dtb
        .get(off_strings..)
        .ok_or_else(|| DtbError::Malformed("strings block out of range".into()))?;
    let mut at = off_struct;
    let mut stack: Vec<Node> = Vec::new();
    let mut root = None;
    loop {
        let tok = be32(dtb, at)?;
        at += 4;
        match tok {
            BEGIN_NODE => {
                let (name, n) = cstr(dtb, at)?;
                at += (n + 3) & !3;
                if stack.len() >= MAX_DEPTH {
                    return Err(DtbError::Malformed("nesting too deep".into()));
                }
                if root.is_some() {
                    return Err(DtbError::Malformed("more than one root".into()));
                }
                stack.push(Node {
                    name,
                    ..Node::default()
                });
            }
            END_NODE => {
                let node = stack
                    .pop()
                    .ok_or_else(|| DtbError::Malformed("unbalanced END_NODE".into()))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => root = Some(node),
                }
            }
            PROP => {
                let len = be32(dtb, at)? as usize;
                let nameoff = be32(dtb, at + 4)? as usize;
                at += 8;
                let val = dtb
                    .get(at..at.saturating_add(len))
                    .ok_or_else(|| DtbError::Malformed("property value out of range".into()))?
                    .to_vec();
                at += (len + 3) & !3;
                let (name, _) = cstr(strings, nameoff)?;
                stack
                    .last_mut()
                    .ok_or_else(|| DtbError::Malformed("property outside a node".into()))?
                    .props
                    .push((name, val));
            }
            NOP => {}
            END => break,
            t => {
                return Err(DtbError::Malformed(format!(
                    "unknown token {t:#x} at {:#x}",
                    at - 4
                )))
            }
        }
    }
    if !stack.is_empty() {
        return Err(DtbError::Malformed("unterminated node".into()));
    }
    root.ok_or_else(|| DtbError::Malformed("no root node".into()))
}

/// Whether `root` is already a complete guest tree.
pub fn is_complete(root: &Node) -> bool {
    root.prop("compatible").is_some()
        && root.prop("#address-cells").is_some()
        && root.any(&|n| n.prop("interrupt-controller").is_some())
}

fn write_node(w: &mut FdtWriter, n: &Node) -> Result<(), DtbError> {
    let h = w.begin_node(&n.name)?;
    for (k, v) in &n.props {
        w.property(k, v)?;
    }
    for c in &n.children {
        write_node(w, c)?;
    }
    w.end_node(h)?;
    Ok(())
}

/// Guest RAM of the wrapped tree.
pub const WRAP_MEMORY: (u64, u64) = (0x4000_0000, 0x800_0000);
/// GICv2 distributor and CPU interface of the wrapped tree (QEMU virt's).
pub const WRAP_GIC: [u64; 4] = [0x800_0000, 0x1_0000, 0x801_0000, 0x1_0000];

/// The guest's RAM node ([`WRAP_MEMORY`]).
fn memory_node(w: &mut FdtWriter) -> Result<(), DtbError> {
    let m = w.begin_node(&format!("memory@{:x}", WRAP_MEMORY.0))?;
    w.property_string("device_type", "memory")?;
    w.property_array_u64("reg", &[WRAP_MEMORY.0, WRAP_MEMORY.1])?;
    w.end_node(m)?;
    Ok(())
}

/// The guest's interrupt controller ([`WRAP_GIC`]) with `phandle`.
fn gic_node(w: &mut FdtWriter, phandle: u32) -> Result<(), DtbError> {
    let g = w.begin_node(&format!("interrupt-controller@{:x}", WRAP_GIC[0]))?;
    w.property_string_list("compatible", vec!["arm,cortex-a15-gic".into()])?;
    w.property_null("interrupt-controller")?;
    w.property_u32("#interrupt-cells", 3)?;
    w.property_u32("#address-cells", 0)?;
    w.property_array_u64("reg", &WRAP_GIC)?;
    w.property_u32("phandle", phandle)?;
    w.end_node(g)?;
    Ok(())
}

/// The root properties of a guest tree the shim builds whole: `compatible`
/// (`board`, then `linux,dummy-virt`), `model`, two address and size cells,
/// and the GIC (`gic_phandle`) as interrupt parent.
pub fn root_props(
    w: &mut FdtWriter,
    board: &str,
    model: &str,
    gic_phandle: u32,
) -> Result<(), DtbError> {
    w.property_string_list("compatible", vec![board.into(), "linux,dummy-virt".into()])?;
    w.property_string("model", model)?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_u32("interrupt-parent", gic_phandle)?;
    Ok(())
}

/// Wraps the nodes of `partial` (a tree without the guest's basics) in a
/// minimal ARM guest tree.
pub fn wrap(partial: &Node) -> Result<Vec<u8>, DtbError> {
    let mut w = FdtWriter::new()?;
    let root = w.begin_node("")?;
    let has = |name: &str| partial.prop(name).is_some();
    if !has("compatible") {
        w.property_string_list(
            "compatible",
            vec!["vfio-sidecar,virt".into(), "linux,dummy-virt".into()],
        )?;
    }
    if !has("model") {
        w.property_string("model", "vfio-sidecar guest")?;
    }
    if !has("#address-cells") {
        w.property_u32("#address-cells", 2)?;
    }
    if !has("#size-cells") {
        w.property_u32("#size-cells", 2)?;
    }
    let need_gic = !partial.any(&|n| n.prop("interrupt-controller").is_some());
    let gic_phandle = partial.max_phandle() + 1;
    if need_gic && !has("interrupt-parent") {
        w.property_u32("interrupt-parent", gic_phandle)?;
    }
    for (k, v) in &partial.props {
        w.property(k, v)?;
    }
    let child = |name: &str| partial.child(name).is_some();
    if !child("chosen") {
        let c = w.begin_node("chosen")?;
        w.end_node(c)?;
    }
    if !child("memory") {
        memory_node(&mut w)?;
    }
    if need_gic {
        gic_node(&mut w, gic_phandle)?;
    }
    for c in &partial.children {
        write_node(&mut w, c)?;
    }
    w.end_node(root)?;
    Ok(w.finish()?)
}

/// The guest tree for a backend DTB: as-is if complete, else wrapped. Returns
/// the blob and a word on which it was.
pub fn guest_dtb(backend_dtb: &[u8]) -> Result<(Vec<u8>, &'static str), DtbError> {
    let root = parse(backend_dtb)?;
    if is_complete(&root) {
        Ok((backend_dtb.to_vec(), "the backend's complete tree, as-is"))
    } else {
        Ok((
            wrap(&root)?,
            "the backend's nodes wrapped in a minimal ARM guest tree",
        ))
    }
}

/// Where the device goes in a tree built from the description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Guest-physical base of the first region (used unless the description
    /// suggests one); later regions follow, page aligned.
    pub base: u64,
    /// GIC SPI number of the first interrupt (`interrupts = <0 SPI flags>`).
    pub irq_base: u32,
}

impl Default for Placement {
    fn default() -> Self {
        Placement {
            base: 0x0c00_0000,
            irq_base: 32,
        }
    }
}

fn trigger_flags(t: IrqTrigger) -> u32 {
    match t {
        IrqTrigger::EdgeRising => 1,
        IrqTrigger::EdgeFalling => 2,
        IrqTrigger::EdgeBoth => 3,
        IrqTrigger::LevelHigh => 4,
        IrqTrigger::LevelLow => 8,
    }
}

/// Encodes a device tree string list (each string NUL-terminated).
pub fn string_list(v: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in v {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }
    out
}

fn cells_of(v: &[u8]) -> Vec<u32> {
    v.chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn cells_bytes(cells: &[u32]) -> Vec<u8> {
    cells.iter().flat_map(|c| c.to_be_bytes()).collect()
}

/// Most `clocks` references followed from one device node.
const MAX_CLOCK_REFS: usize = 16;
/// Largest `#clock-cells` accepted on a referenced clock.
const MAX_CLOCK_CELLS: u32 = 8;

/// Where the shim puts the device in a guest tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePlacement {
    /// (guest-physical base, size) of each region, in the description's order.
    pub reg: Vec<(u64, u64)>,
    /// GIC SPI number (`interrupts = <0 SPI flags>`) of each interrupt, in the
    /// description's order.
    pub spis: Vec<u32>,
}

/// The device's part of a guest tree, as the backend describes it: its node
/// and the nodes its `clocks` reference (the `apb_pclk` fixed clock). One
/// code path places it in every tree the shim writes ([`DeviceNodes::write`]):
/// `reg` and `interrupts` are rewritten with the shim's addresses and SPIs,
/// `interrupt-parent` becomes the guest's GIC, clock phandles are renumbered;
/// every other property is copied as the backend wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNodes {
    /// The device node (its `reg`/`interrupts` are replaced when placed).
    pub device: Node,
    /// Clock nodes the device references, in the order of first reference.
    pub clocks: Vec<Node>,
}

fn find_node<'a>(n: &'a Node, f: &dyn Fn(&Node) -> bool) -> Option<&'a Node> {
    if f(n) {
        return Some(n);
    }
    n.children.iter().find_map(|c| find_node(c, f))
}

fn phandle_of(n: &Node) -> Option<u32> {
    n.prop("phandle")
        .or_else(|| n.prop("linux,phandle"))
        .and_then(|v| v.try_into().ok())
        .map(u32::from_be_bytes)
}

impl DeviceNodes {
    /// The nodes built from the description alone (the backend sent no DTB):
    /// compatibles, `reg-names` for several regions, one interrupt per IRQ with
    /// its trigger, the fixed clocks, `#dma-cells` for a PL330.
    pub fn from_description(desc: &DeviceDescription) -> Self {
        let name = desc.dt_node_name.clone().unwrap_or_else(|| "device".into());
        let mut device = Node {
            name,
            ..Node::default()
        };
        let mut put = |k: &str, v: Vec<u8>| device.props.push((k.to_string(), v));
        put("compatible", string_list(&desc.compatible));
        put("reg", Vec::new());
        if desc.regions.len() > 1 {
            let names: Vec<String> = desc.regions.iter().map(|r| r.name.clone()).collect();
            put("reg-names", string_list(&names));
        }
        if !desc.irqs.is_empty() {
            let cells: Vec<u32> = desc
                .irqs
                .iter()
                .enumerate()
                .flat_map(|(k, irq)| [0, k as u32, trigger_flags(irq.trigger)])
                .collect();
            put("interrupts", cells_bytes(&cells));
        }
        let mut clocks = Vec::new();
        if !desc.clocks.is_empty() {
            let refs: Vec<u32> = (1..=desc.clocks.len() as u32).collect();
            put("clocks", cells_bytes(&refs));
            let names: Vec<String> = desc.clocks.iter().map(|c| c.name.clone()).collect();
            put("clock-names", string_list(&names));
            for (clk, ph) in desc.clocks.iter().zip(refs) {
                let hz = u32::try_from(clk.frequency_hz).unwrap_or(u32::MAX);
                clocks.push(Node {
                    name: format!("clk-{}", clk.name.replace('_', "-")),
                    props: vec![
                        ("compatible".into(), string_list(&["fixed-clock".into()])),
                        ("#clock-cells".into(), cells_bytes(&[0])),
                        ("clock-frequency".into(), cells_bytes(&[hz])),
                        (
                            "clock-output-names".into(),
                            string_list(std::slice::from_ref(&clk.name)),
                        ),
                        ("phandle".into(), cells_bytes(&[ph])),
                    ],
                    children: Vec::new(),
                });
            }
        }
        if desc.compatible.iter().any(|c| c == "arm,pl330") {
            put("#dma-cells", cells_bytes(&[1])); // dma-controller binding
        }
        DeviceNodes { device, clocks }
    }

    /// The device node of the backend's tree (the node whose `compatible` is
    /// the description's, else the first whose most specific compatible is)
    /// and the clock nodes it references.
    pub fn from_dtb(root: &Node, desc: &DeviceDescription) -> Result<Self, DtbError> {
        let want = string_list(&desc.compatible);
        let first = desc.compatible.first().map(|s| {
            let mut v = s.as_bytes().to_vec();
            v.push(0);
            v
        });
        let device = find_node(root, &|n| n.prop("compatible") == Some(want.as_slice()))
            .or_else(|| {
                let first = first.as_deref()?;
                find_node(root, &|n| {
                    n.prop("compatible").is_some_and(|c| c.starts_with(first))
                })
            })
            .ok_or_else(|| {
                DtbError::Malformed(format!(
                    "the backend's DTB has no node compatible with {:?}",
                    desc.compatible
                ))
            })?
            .clone();
        let mut clocks: Vec<Node> = Vec::new();
        let cells = cells_of(device.prop("clocks").unwrap_or(&[]));
        let mut at = 0;
        while at < cells.len() {
            if clocks.len() >= MAX_CLOCK_REFS {
                return Err(DtbError::Malformed("too many clock references".into()));
            }
            let ph = cells[at];
            let clk = find_node(root, &|n| phandle_of(n) == Some(ph))
                .ok_or_else(|| DtbError::Malformed(format!("clocks: no node with phandle {ph}")))?;
            let n = clock_cells(clk)?;
            at += 1 + n as usize;
            if !clocks.iter().any(|c| phandle_of(c) == Some(ph)) {
                clocks.push(Node {
                    children: Vec::new(),
                    ..clk.clone()
                });
            }
        }
        if at != cells.len() {
            return Err(DtbError::Malformed(
                "clocks: specifier runs past the end".into(),
            ));
        }
        Ok(DeviceNodes { device, clocks })
    }

    /// Writes the clock nodes and the placed device node into `w` (inside the
    /// root of a tree with `#address-cells = #size-cells = 2`), the clocks
    /// getting phandles from `first_phandle` on. Returns the next free phandle.
    pub fn write(
        &self,
        w: &mut FdtWriter,
        at: &DevicePlacement,
        gic_phandle: u32,
        first_phandle: u32,
    ) -> Result<u32, DtbError> {
        let mut renumber = Vec::new();
        for (i, c) in self.clocks.iter().enumerate() {
            let new = first_phandle + i as u32;
            renumber.push((phandle_of(c).unwrap_or(0), new));
            let n = w.begin_node(&c.name)?;
            for (k, v) in &c.props {
                if k != "phandle" && k != "linux,phandle" {
                    w.property(k, v)?;
                }
            }
            w.property_u32("phandle", new)?;
            w.end_node(n)?;
        }
        let base = self.device.name.split('@').next().unwrap_or("device");
        let first = at.reg.first().map(|r| r.0).unwrap_or(0);
        let d = w.begin_node(&format!("{base}@{first:x}"))?;
        let reg: Vec<u64> = at.reg.iter().flat_map(|&(b, s)| [b, s]).collect();
        let (mut wrote_reg, mut wrote_irqs) = (false, false);
        for (k, v) in &self.device.props {
            match k.as_str() {
                "reg" => {
                    w.property_array_u64("reg", &reg)?;
                    wrote_reg = true;
                }
                "interrupts" => {
                    w.property_array_u32("interrupts", &self.interrupts(v, &at.spis)?)?;
                    wrote_irqs = true;
                }
                "clocks" => {
                    w.property_array_u32("clocks", &self.clocks_renumbered(v, &renumber)?)?
                }
                "interrupt-parent" | "interrupts-extended" | "phandle" | "linux,phandle" => {}
                _ => w.property(k, v)?,
            }
        }
        if !wrote_reg && !reg.is_empty() {
            w.property_array_u64("reg", &reg)?;
        }
        if !wrote_irqs && !at.spis.is_empty() {
            let level_high = trigger_flags(IrqTrigger::LevelHigh);
            let cells: Vec<u32> = at.spis.iter().flat_map(|&s| [0, s, level_high]).collect();
            w.property_array_u32("interrupts", &cells)?;
        }
        if !at.spis.is_empty() {
            w.property_u32("interrupt-parent", gic_phandle)?;
        }
        w.end_node(d)?;
        Ok(first_phandle + self.clocks.len() as u32)
    }

    /// The node's interrupt triples with the shim's SPI numbers (the
    /// backend's trigger flags kept).
    fn interrupts(&self, v: &[u8], spis: &[u32]) -> Result<Vec<u32>, DtbError> {
        let cells = cells_of(v);
        if cells.len() % 3 != 0 || cells.len() / 3 != spis.len() {
            return Err(DtbError::Malformed(format!(
                "the device node has {} interrupt cells; the shim wires {} interrupts (3 cells each)",
                cells.len(),
                spis.len()
            )));
        }
        Ok(cells
            .chunks_exact(3)
            .zip(spis)
            .flat_map(|(c, &spi)| [0, spi, c[2] & 0xf])
            .collect())
    }

    /// `clocks` with the phandles of the written clock nodes.
    fn clocks_renumbered(&self, v: &[u8], map: &[(u32, u32)]) -> Result<Vec<u32>, DtbError> {
        let mut cells = cells_of(v);
        let mut at = 0;
        while at < cells.len() {
            let old = cells[at];
            let (k, &(_, new)) = map
                .iter()
                .enumerate()
                .find(|(_, (o, _))| *o == old)
                .ok_or_else(|| DtbError::Malformed(format!("clocks: phandle {old} unknown")))?;
            cells[at] = new;
            at += 1 + clock_cells(&self.clocks[k])? as usize;
        }
        Ok(cells)
    }
}

fn clock_cells(clk: &Node) -> Result<u32, DtbError> {
    let n = clk
        .prop("#clock-cells")
        .and_then(|v| v.try_into().ok())
        .map(u32::from_be_bytes)
        .unwrap_or(0);
    if n > MAX_CLOCK_CELLS {
        return Err(DtbError::Malformed(format!("#clock-cells {n} too large")));
    }
    Ok(n)
}

/// The placement [`from_description`] uses: each region at its suggested base,
/// else packed (page aligned) from `at.base`; SPIs from `at.irq_base`.
fn placement_of(
    desc: &DeviceDescription,
    region_sizes: &[(u32, u64)],
    at: Placement,
) -> DevicePlacement {
    let mut reg = Vec::new();
    let mut next = at.base;
    for r in &desc.regions {
        let size = region_sizes
            .iter()
            .find(|(i, _)| *i == r.index)
            .map(|(_, s)| *s)
            .unwrap_or(0x1000);
        let base = r.guest_base.unwrap_or(next);
        next = base.saturating_add(size.saturating_add(0xfff) & !0xfff);
        reg.push((base, size));
    }
    DevicePlacement {
        reg,
        spis: (0..desc.irqs.len() as u32)
            .map(|k| at.irq_base + k)
            .collect(),
    }
}

/// Builds a complete ARM guest tree from the device description (used when
/// the backend sends no DTB). `region_sizes` are (index, size) from REGION_INFO.
pub fn from_description(
    desc: &DeviceDescription,
    region_sizes: &[(u32, u64)],
    at: Placement,
) -> Result<Vec<u8>, DtbError> {
    const GIC: u32 = 1;
    let mut w = FdtWriter::new()?;
    let root = w.begin_node("")?;
    root_props(&mut w, "vfio-sidecar,virt", "vfio-sidecar guest", GIC)?;
    let c = w.begin_node("chosen")?;
    w.end_node(c)?;
    memory_node(&mut w)?;
    gic_node(&mut w, GIC)?;
    DeviceNodes::from_description(desc).write(
        &mut w,
        &placement_of(desc, region_sizes, at),
        GIC,
        GIC + 1,
    )?;
    w.end_node(root)?;
    Ok(w.finish()?)
}

/// Asks the backend (SIDECAR_GET_DEVICE_DESC) and builds the guest tree: the
/// backend's DTB as-is or wrapped, or, if it sent none, a tree built from the
/// description.
pub fn fetch_guest_dtb(
    backend: &mut ProtoBackend,
    at: Placement,
) -> Result<(Vec<u8>, &'static str), DtbError> {
    let (desc, dtb) = backend
        .client()
        .device_desc()
        .map_err(|e| DtbError::Backend(e.to_string()))?;
    log::debug!("device description: {desc:?}");
    if !dtb.is_empty() {
        return guest_dtb(&dtb);
    }
    let mut sizes = Vec::new();
    for r in &desc.regions {
        let (info, _fd) = backend
            .client()
            .region_info(r.index)
            .map_err(|e| DtbError::Backend(e.to_string()))?;
        sizes.push((r.index, info.size));
    }
    Ok((
        from_description(&desc, &sizes, at)?,
        "built from the backend's device description (it sent no DTB)",
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn node_only() -> Vec<u8> {
        let mut w = FdtWriter::new().unwrap();
        let r = w.begin_node("").unwrap();
        let d = w.begin_node("dma-controller@c000000").unwrap();
        w.property_string_list(
            "compatible",
            vec!["arm,pl330".into(), "arm,primecell".into()],
        )
        .unwrap();
        w.property_array_u64("reg", &[0xc00_0000, 0x1000]).unwrap();
        w.property_array_u32("interrupts", &[0, 32, 4]).unwrap();
        w.property_u32("phandle", 7).unwrap();
        w.end_node(d).unwrap();
        w.end_node(r).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn node_only_tree_is_wrapped() {
        let (out, how) = guest_dtb(&node_only()).unwrap();
        assert!(how.contains("wrapped"));
        let root = parse(&out).unwrap();
        assert!(is_complete(&root));
        let dma = root.child("dma-controller@c000000").unwrap();
        assert_eq!(root.child("dma-controller"), Some(dma));
        assert!(
            root.child("dma").is_none(),
            "a prefix of the name is not the name"
        );
        assert_eq!(
            dma.prop("interrupts").unwrap(),
            &[0, 0, 0, 0, 0, 0, 0, 32, 0, 0, 0, 4]
        );
        let gic = root.child("interrupt-controller").unwrap();
        // phandle chosen above the existing ones, and the root points at it
        assert_eq!(gic.prop("phandle").unwrap(), &8u32.to_be_bytes());
        assert_eq!(root.prop("interrupt-parent").unwrap(), &8u32.to_be_bytes());
        assert!(root.children.iter().any(|c| c.name.starts_with("memory@")));
        assert!(root.children.iter().any(|c| c.name == "chosen"));
    }

    #[test]
    fn complete_tree_is_kept() {
        let wrapped = wrap(&parse(&node_only()).unwrap()).unwrap();
        let (again, how) = guest_dtb(&wrapped).unwrap();
        assert_eq!(again, wrapped);
        assert!(how.contains("as-is"));
    }

    #[test]
    fn tree_from_description() {
        let json = r#"{"kind":"amba","compatible":["arm,pl330","arm,primecell"],
            "clocks":[{"name":"apb_pclk","frequency_hz":24000000}],
            "regions":[{"index":0,"name":"pl330-regs"}],
            "irqs":[{"index":0,"name":"irq0","trigger":"level-high","eoi":{"policy":"clear-register"}},
                    {"index":1,"name":"irq1","trigger":"edge-rising","eoi":{"policy":"clear-register"}}],
            "dt_node_name":"dma-controller"}"#;
        let desc: DeviceDescription = serde_json::from_str(json).unwrap();
        let dtb = from_description(&desc, &[(0, 0x1000)], Placement::default()).unwrap();
        let root = parse(&dtb).unwrap();
        assert!(is_complete(&root));
        let dev = root.child("dma-controller@c000000").unwrap();
        assert_eq!(
            dev.prop("compatible").unwrap(),
            b"arm,pl330\0arm,primecell\0"
        );
        let cells: Vec<u32> = dev
            .prop("interrupts")
            .unwrap()
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(cells, vec![0, 32, 4, 0, 33, 1]);
        let reg: Vec<u8> = [0u64, 0xc00_0000, 0, 0x1000]
            .iter()
            .flat_map(|v| (*v as u32).to_be_bytes())
            .collect();
        assert_eq!(dev.prop("reg").unwrap(), reg.as_slice());
        assert_eq!(dev.prop("clock-names").unwrap(), b"apb_pclk\0");
        let clk = root.child("clk-apb-pclk").unwrap();
        assert_eq!(dev.prop("clocks").unwrap(), clk.prop("phandle").unwrap());
        assert_eq!(dev.prop("#dma-cells").unwrap(), &1u32.to_be_bytes());
    }

    #[test]
    fn hostile_blobs_are_rejected() {
        assert!(parse(&[]).is_err());
        assert!(parse(&[0xd0, 0x0d, 0xfe, 0xed, 0, 0, 0, 8]).is_err());
        let good = node_only();
        for cut in [8, 40, good.len() / 2] {
            let mut b = good.clone();
            b.truncate(cut);
            assert!(parse(&b).is_err(), "truncated at {cut}");
        }
        let mut b = good.clone();
        // corrupt the struct offset
        b[8..12].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        assert!(parse(&b).is_err());
    }
}
