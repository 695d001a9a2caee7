//! The inner guest's device tree, written with `vm-fdt`: memory, cpus, psci
//! (0.2, method hvc), a GICv3, the architected timer, the 16550 console,
//! `chosen` (bootargs, initrd, stdout-path, rng-seed), and the vfio-sidecar
//! device's nodes as the backend described them, placed by
//! [`DeviceNodes::write`](crate::dtb::DeviceNodes::write).

use vm_fdt::FdtWriter;

use super::exit::mpidr_affinity;
use super::layout::*;
use crate::dtb::{root_props, DeviceNodes, DevicePlacement, DtbError};
use crate::mmio::PlacedRegion;
use vfio_sidecar_protocol::ext::DeviceDescription;

/// The GIC's phandle.
pub const GIC_PHANDLE: u32 = 1;
/// First phandle for the device's clock nodes.
const FIRST_FREE_PHANDLE: u32 = 2;
/// GIC interrupt flags: level high (GICv3: no CPU mask in PPI flags).
const IRQ_LEVEL_HIGH: u32 = 4;
/// DT interrupt type cells.
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;

/// What the tree describes.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    /// RAM size in bytes (at [`RAM_BASE`]).
    pub ram_size: u64,
    /// MPIDR of each vCPU.
    pub mpidrs: Vec<u64>,
    /// Kernel command line.
    pub bootargs: String,
    /// Initrd [start, end) in guest-physical memory.
    pub initrd: Option<(u64, u64)>,
    /// Seed for the guest's RNG (`chosen/rng-seed`).
    pub rng_seed: Vec<u8>,
}

/// Where the device goes: each described region at the address the MMIO bus
/// placed it (`placed`), the k-th interrupt on SPI `DEVICE_SPI_BASE + k`.
pub fn device_placement(
    desc: &DeviceDescription,
    placed: &[PlacedRegion],
) -> Result<DevicePlacement, String> {
    let mut reg = Vec::new();
    for r in &desc.regions {
        let p = placed.iter().find(|p| p.index == r.index).ok_or_else(|| {
            format!(
                "the description names region {} ({}), which the device does not have",
                r.index, r.name
            )
        })?;
        reg.push((p.gpa, p.size));
    }
    let room = GIC_NR_IRQS - 32 - DEVICE_SPI_BASE;
    if desc.irqs.len() > room as usize {
        return Err(format!(
            "{} interrupts described; the inner GIC has room for {room}",
            desc.irqs.len()
        ));
    }
    let spis = (0..desc.irqs.len() as u32)
        .map(|k| DEVICE_SPI_BASE + k)
        .collect();
    Ok(DevicePlacement { reg, spis })
}

/// The UART's node name (also `stdout-path`).
pub fn uart_path() -> String {
    format!("/uart@{UART_BASE:x}")
}

/// Writes the whole tree.
pub fn guest_fdt(
    m: &MachineSpec,
    device: Option<(&DeviceNodes, &DevicePlacement)>,
) -> Result<Vec<u8>, DtbError> {
    let mut w = FdtWriter::new()?;
    let root = w.begin_node("")?;
    root_props(
        &mut w,
        "vfio-sidecar,arm64-virt",
        "vfio-sidecar arm64 guest (vmm-shim)",
        GIC_PHANDLE,
    )?;

    let c = w.begin_node("chosen")?;
    w.property_string("bootargs", &m.bootargs)?;
    w.property_string("stdout-path", &uart_path())?;
    if let Some((s, e)) = m.initrd {
        w.property_u64("linux,initrd-start", s)?;
        w.property_u64("linux,initrd-end", e)?;
    }
    if !m.rng_seed.is_empty() {
        w.property("rng-seed", &m.rng_seed)?;
    }
    w.end_node(c)?;

    let mem = w.begin_node(&format!("memory@{RAM_BASE:x}"))?;
    w.property_string("device_type", "memory")?;
    w.property_array_u64("reg", &[RAM_BASE, m.ram_size])?;
    w.end_node(mem)?;

    let cpus = w.begin_node("cpus")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 0)?;
    for &mpidr in &m.mpidrs {
        let aff = mpidr_affinity(mpidr);
        let cpu = w.begin_node(&format!("cpu@{aff:x}"))?;
        w.property_string("device_type", "cpu")?;
        w.property_string("compatible", "arm,arm-v8")?;
        w.property_string("enable-method", "psci")?;
        w.property_u64("reg", aff)?;
        w.end_node(cpu)?;
    }
    w.end_node(cpus)?;

    let psci = w.begin_node("psci")?;
    w.property_string_list("compatible", vec!["arm,psci-0.2".into(), "arm,psci".into()])?;
    w.property_string("method", "hvc")?;
    w.end_node(psci)?;

    let gic = w.begin_node(&format!("interrupt-controller@{GIC_DIST_BASE:x}"))?;
    w.property_string("compatible", "arm,gic-v3")?;
    w.property_null("interrupt-controller")?;
    w.property_u32("#interrupt-cells", 3)?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    let redist = GIC_REDIST_SIZE * m.mpidrs.len() as u64;
    w.property_array_u64(
        "reg",
        &[GIC_DIST_BASE, GIC_DIST_SIZE, GIC_REDIST_BASE, redist],
    )?;
    w.property_u32("#redistributor-regions", 1)?;
    w.property_u32("phandle", GIC_PHANDLE)?;
    w.end_node(gic)?;

    // the architected timer: secure phys, non-secure phys, virtual, hyp PPIs
    let t = w.begin_node("timer")?;
    w.property_string("compatible", "arm,armv8-timer")?;
    let mut cells = Vec::new();
    for ppi in [13, 14, 11, 10] {
        cells.extend_from_slice(&[GIC_PPI, ppi, IRQ_LEVEL_HIGH]);
    }
    w.property_array_u32("interrupts", &cells)?;
    w.property_null("always-on")?;
    w.end_node(t)?;

    let u = w.begin_node(&uart_path()[1..])?;
    w.property_string("compatible", "ns16550a")?;
    w.property_array_u64("reg", &[UART_BASE, UART_SIZE])?;
    w.property_u32("clock-frequency", UART_CLOCK_HZ)?;
    w.property_u32("reg-shift", 0)?;
    w.property_u32("reg-io-width", 1)?;
    w.property_array_u32("interrupts", &[GIC_SPI, UART_SPI, IRQ_LEVEL_HIGH])?;
    w.end_node(u)?;

    if let Some((nodes, at)) = device {
        nodes.write(&mut w, at, GIC_PHANDLE, FIRST_FREE_PHANDLE)?;
    }
    w.end_node(root)?;
    let blob = w.finish()?;
    if blob.len() as u64 > DTB_MAX {
        return Err(DtbError::Malformed(format!(
            "the guest DTB is {} bytes, more than the boot protocol's 2 MiB",
            blob.len()
        )));
    }
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtb::{self, Node};

    fn u32s(v: &[u8]) -> Vec<u32> {
        v.chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn u64s(v: &[u8]) -> Vec<u64> {
        v.chunks(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn spec() -> MachineSpec {
        MachineSpec {
            ram_size: 256 << 20,
            mpidrs: vec![0x8000_0000],
            bootargs: "console=ttyS0 panic=-1".into(),
            initrd: Some((0x4f00_0000, 0x4f12_3456)),
            rng_seed: vec![7; 32],
        }
    }

    /// The description and DTB the backend sends for `model:pl330`: the
    /// backend's own tree (GICv2, its own addresses and SPIs, apb_pclk).
    fn backend_pl330() -> (DeviceDescription, Vec<u8>) {
        let json = r#"{"kind":"amba","compatible":["arm,pl330","arm,primecell"],
            "clocks":[{"name":"apb_pclk","frequency_hz":24000000}],
            "regions":[{"index":0,"name":"pl330-regs"}],
            "irqs":[{"index":0,"name":"irq0","trigger":"level-high","eoi":{"policy":"clear-register"}},
                    {"index":1,"name":"irq1","trigger":"level-high","eoi":{"policy":"clear-register"}}],
            "dt_node_name":"dma-controller"}"#;
        let desc: DeviceDescription = serde_json::from_str(json).unwrap();
        let mut w = FdtWriter::new().unwrap();
        let r = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        w.property_u32("interrupt-parent", 1).unwrap();
        let g = w.begin_node("interrupt-controller@8000000").unwrap();
        w.property_string("compatible", "arm,cortex-a15-gic")
            .unwrap();
        w.property_null("interrupt-controller").unwrap();
        w.property_u32("phandle", 1).unwrap();
        w.end_node(g).unwrap();
        let c = w.begin_node("apb-pclk").unwrap();
        w.property_string("compatible", "fixed-clock").unwrap();
        w.property_u32("#clock-cells", 0).unwrap();
        w.property_u32("clock-frequency", 24_000_000).unwrap();
        w.property_string("clock-output-names", "apb_pclk").unwrap();
        w.property_u32("phandle", 2).unwrap();
        w.end_node(c).unwrap();
        let d = w.begin_node("dma-controller@c000000").unwrap();
        w.property_string_list(
            "compatible",
            vec!["arm,pl330".into(), "arm,primecell".into()],
        )
        .unwrap();
        w.property_array_u64("reg", &[0xc00_0000, 0x1000]).unwrap();
        w.property_array_u32("interrupts", &[0, 32, 4, 0, 33, 4])
            .unwrap();
        w.property_u32("#dma-cells", 1).unwrap();
        w.property_u32("clocks", 2).unwrap();
        w.property_string("clock-names", "apb_pclk").unwrap();
        w.property_null("arm,pl330-broken-no-flushp").unwrap();
        w.end_node(d).unwrap();
        w.end_node(r).unwrap();
        (desc, w.finish().unwrap())
    }

    fn placement() -> DevicePlacement {
        DevicePlacement {
            reg: vec![(DEVICE_BASE + 0x3000, 0x1000)],
            spis: vec![DEVICE_SPI_BASE, DEVICE_SPI_BASE + 1],
        }
    }

    fn check_device(root: &Node, from_dtb: bool) {
        let name = format!("dma-controller@{:x}", DEVICE_BASE + 0x3000);
        let dev = root
            .child(&name)
            .unwrap_or_else(|| panic!("{name} missing: {root:?}"));
        assert_eq!(
            dev.prop("compatible").unwrap(),
            b"arm,pl330\0arm,primecell\0"
        );
        assert_eq!(
            u64s(dev.prop("reg").unwrap()),
            vec![DEVICE_BASE + 0x3000, 0x1000],
            "reg at the shim's address"
        );
        assert_eq!(
            u32s(dev.prop("interrupts").unwrap()),
            vec![0, DEVICE_SPI_BASE, 4, 0, DEVICE_SPI_BASE + 1, 4],
            "the shim's SPIs, the backend's trigger"
        );
        assert_eq!(
            u32s(dev.prop("interrupt-parent").unwrap()),
            vec![GIC_PHANDLE]
        );
        assert_eq!(dev.prop("clock-names").unwrap(), b"apb_pclk\0");
        assert_eq!(u32s(dev.prop("#dma-cells").unwrap()), vec![1]);
        let ph = u32s(dev.prop("clocks").unwrap());
        assert_eq!(ph.len(), 1);
        let clk = root
            .children
            .iter()
            .find(|c| c.prop("phandle").map(u32s) == Some(ph.clone()))
            .expect("the referenced clock node");
        assert_eq!(clk.prop("compatible").unwrap(), b"fixed-clock\0");
        assert_eq!(u32s(clk.prop("clock-frequency").unwrap()), vec![24_000_000]);
        assert_ne!(ph[0], GIC_PHANDLE);
        // a property the description does not know survives from the DTB
        assert_eq!(
            dev.prop("arm,pl330-broken-no-flushp").is_some(),
            from_dtb,
            "other properties are the backend's"
        );
        assert!(root
            .children
            .iter()
            .all(|c| c.prop("compatible") != Some(b"arm,cortex-a15-gic\0")));
    }

    #[test]
    fn placement_follows_the_bus_and_numbers_spis() {
        let (mut desc, _) = backend_pl330();
        let placed = vec![PlacedRegion {
            index: 0,
            gpa: DEVICE_BASE,
            size: 0x1000,
            sparse: Vec::new(),
        }];
        let at = device_placement(&desc, &placed).unwrap();
        assert_eq!(at.reg, vec![(DEVICE_BASE, 0x1000)]);
        assert_eq!(at.spis, vec![DEVICE_SPI_BASE, DEVICE_SPI_BASE + 1]);
        desc.regions[0].index = 3;
        assert!(device_placement(&desc, &placed)
            .unwrap_err()
            .contains("region 3"));
        desc.regions[0].index = 0;
        let irq = desc.irqs[0].clone();
        desc.irqs = vec![irq; 200];
        assert!(device_placement(&desc, &placed)
            .unwrap_err()
            .contains("room"));
    }

    #[test]
    fn machine_nodes() {
        let blob = guest_fdt(&spec(), None).unwrap();
        let root = dtb::parse(&blob).unwrap();
        assert!(dtb::is_complete(&root));
        assert_eq!(
            u32s(root.prop("interrupt-parent").unwrap()),
            vec![GIC_PHANDLE]
        );
        let chosen = root.child("chosen").unwrap();
        assert_eq!(
            chosen.prop("bootargs").unwrap(),
            b"console=ttyS0 panic=-1\0"
        );
        assert_eq!(chosen.prop("stdout-path").unwrap(), b"/uart@9000000\0");
        assert_eq!(
            u64s(chosen.prop("linux,initrd-start").unwrap()),
            vec![0x4f00_0000]
        );
        assert_eq!(
            u64s(chosen.prop("linux,initrd-end").unwrap()),
            vec![0x4f12_3456]
        );
        assert_eq!(chosen.prop("rng-seed").unwrap(), &[7; 32]);
        let mem = root.child("memory").unwrap();
        assert_eq!(mem.name, "memory@40000000");
        assert_eq!(u64s(mem.prop("reg").unwrap()), vec![RAM_BASE, 256 << 20]);
        let cpus = root.child("cpus").unwrap();
        let cpu = cpus.child("cpu").unwrap();
        assert_eq!(cpu.name, "cpu@0");
        assert_eq!(cpu.prop("enable-method").unwrap(), b"psci\0");
        assert_eq!(u64s(cpu.prop("reg").unwrap()), vec![0]);
        let psci = root.child("psci").unwrap();
        assert_eq!(psci.prop("method").unwrap(), b"hvc\0");
        assert!(psci
            .prop("compatible")
            .unwrap()
            .starts_with(b"arm,psci-0.2\0"));
        let gic = root.child("interrupt-controller").unwrap();
        assert_eq!(gic.prop("compatible").unwrap(), b"arm,gic-v3\0");
        assert_eq!(u32s(gic.prop("#interrupt-cells").unwrap()), vec![3]);
        assert_eq!(
            u64s(gic.prop("reg").unwrap()),
            vec![
                GIC_DIST_BASE,
                GIC_DIST_SIZE,
                GIC_REDIST_BASE,
                GIC_REDIST_SIZE
            ]
        );
        assert_eq!(u32s(gic.prop("phandle").unwrap()), vec![GIC_PHANDLE]);
        let timer = root.child("timer").unwrap();
        assert_eq!(
            u32s(timer.prop("interrupts").unwrap()),
            vec![1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]
        );
        let uart = root.child("uart").unwrap();
        assert_eq!(uart.prop("compatible").unwrap(), b"ns16550a\0");
        assert_eq!(u64s(uart.prop("reg").unwrap()), vec![UART_BASE, UART_SIZE]);
        assert_eq!(u32s(uart.prop("reg-shift").unwrap()), vec![0]);
        assert_eq!(
            u32s(uart.prop("clock-frequency").unwrap()),
            vec![UART_CLOCK_HZ]
        );
        assert_eq!(u32s(uart.prop("interrupts").unwrap()), vec![0, UART_SPI, 4]);
    }

    #[test]
    fn device_node_from_the_backends_dtb() {
        let (desc, dtb) = backend_pl330();
        let nodes = DeviceNodes::from_dtb(&dtb::parse(&dtb).unwrap(), &desc).unwrap();
        let blob = guest_fdt(&spec(), Some((&nodes, &placement()))).unwrap();
        check_device(&dtb::parse(&blob).unwrap(), true);
    }

    #[test]
    fn device_node_from_the_description_alone() {
        let (desc, _) = backend_pl330();
        let nodes = DeviceNodes::from_description(&desc);
        let blob = guest_fdt(&spec(), Some((&nodes, &placement()))).unwrap();
        check_device(&dtb::parse(&blob).unwrap(), false);
    }

    #[test]
    fn a_dtb_that_disagrees_with_the_description_is_an_error() {
        let (mut desc, dtb) = backend_pl330();
        let root = dtb::parse(&dtb).unwrap();
        let nodes = DeviceNodes::from_dtb(&root, &desc).unwrap();
        // three interrupts wired, two in the node
        let mut at = placement();
        at.spis.push(DEVICE_SPI_BASE + 2);
        assert!(guest_fdt(&spec(), Some((&nodes, &at))).is_err());
        desc.compatible = vec!["vendor,other".into()];
        assert!(DeviceNodes::from_dtb(&root, &desc).is_err());
        // a clock reference to a phandle nobody has
        let mut broken = root.clone();
        let dev = broken
            .children
            .iter_mut()
            .find(|c| c.name.starts_with("dma-controller"))
            .unwrap();
        for p in dev.props.iter_mut().filter(|p| p.0 == "clocks") {
            p.1 = 99u32.to_be_bytes().to_vec();
        }
        let (desc, _) = backend_pl330();
        assert!(DeviceNodes::from_dtb(&broken, &desc).is_err());
    }
}
