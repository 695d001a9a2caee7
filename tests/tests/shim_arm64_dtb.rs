//! The arm64 guest's device tree against the real backend, on any host (no
//! KVM involved): `model:pl330` served by a separate `vfio-sidecar serve`
//! process over its socket; the shim fetches SIDECAR_GET_DEVICE_DESC and
//! REGION_INFO, places the device as `vmm-shim linux` does and writes the
//! whole tree. The device node must be the backend's node byte for byte but
//! for `reg` (the shim's address), `interrupts` (the shim's SPIs, the
//! backend's flags), `interrupt-parent` (the guest's GIC) and the clock
//! phandle; built from the description alone it must come out the same.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use vfio_sidecar_tests::Sidecar;
use vmm_shim::arm64::fdt::{device_placement, guest_fdt, MachineSpec, GIC_PHANDLE};
use vmm_shim::arm64::layout::{DEVICE_BASE, DEVICE_END, DEVICE_SPI_BASE};
use vmm_shim::backend::Backend;
use vmm_shim::dtb::{self, DeviceNodes, Node};
use vmm_shim::link::ProtoBackend;
use vmm_shim::mmio::{place_regions, RegionSpec};

fn cells(v: &[u8]) -> Vec<u32> {
    v.chunks(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
        .collect()
}

fn find<'a>(n: &'a Node, pred: &dyn Fn(&Node) -> bool) -> Option<&'a Node> {
    if pred(n) {
        return Some(n);
    }
    n.children.iter().find_map(|c| find(c, pred))
}

const REWRITTEN: [&str; 5] = ["reg", "interrupts", "interrupt-parent", "clocks", "phandle"];

fn spec() -> MachineSpec {
    MachineSpec {
        ram_size: 128 << 20,
        mpidrs: vec![0],
        bootargs: "console=ttyS0".into(),
        initrd: None,
        rng_seed: Vec::new(),
    }
}

#[test]
fn guest_tree_holds_the_backends_pl330_node_at_the_shims_place() {
    let backend = Sidecar::start("model:pl330", &[]);
    let mut b = ProtoBackend::connect(&backend.socket, Duration::from_secs(5)).unwrap();
    let (desc, backend_dtb) = b.client().device_desc().unwrap();
    assert!(!backend_dtb.is_empty(), "model:pl330 sends its DTB");
    let regions = b.regions().unwrap();
    let specs: Vec<RegionSpec> = regions.iter().map(|r| r.spec.clone()).collect();
    let placed = place_regions(&specs, DEVICE_BASE, DEVICE_END).unwrap();
    let at = device_placement(&desc, &placed).unwrap();
    assert_eq!(at.spis.len(), desc.irqs.len());
    assert_eq!(at.spis[0], DEVICE_SPI_BASE);

    let theirs = dtb::parse(&backend_dtb).unwrap();
    let their_dev = find(&theirs, &|n| {
        n.prop("compatible") == Some(b"arm,pl330\0arm,primecell\0")
    })
    .unwrap();
    let nodes = DeviceNodes::from_dtb(&theirs, &desc).unwrap();
    let ours = dtb::parse(&guest_fdt(&spec(), Some((&nodes, &at))).unwrap()).unwrap();
    let name = format!("dma-controller@{DEVICE_BASE:x}");
    let dev = ours.child(&name).unwrap_or_else(|| panic!("no {name}"));

    // every property the shim does not place is the backend's, unchanged
    for (k, v) in &their_dev.props {
        if !REWRITTEN.contains(&k.as_str()) {
            assert_eq!(dev.prop(k), Some(v.as_slice()), "property {k}");
        }
    }
    assert_eq!(
        dev.props.len(),
        their_dev.props.len() + usize::from(their_dev.prop("interrupt-parent").is_none()),
        "no property added but interrupt-parent"
    );
    // reg: the shim's placement (2 address + 2 size cells)
    let (base, size) = at.reg[0];
    assert_eq!(
        cells(dev.prop("reg").unwrap()),
        vec![
            (base >> 32) as u32,
            base as u32,
            (size >> 32) as u32,
            size as u32
        ]
    );
    assert_eq!((base, size), (DEVICE_BASE, 0x1000));
    // interrupts: the shim's SPIs with the backend's flags
    let theirs_irq = cells(their_dev.prop("interrupts").unwrap());
    let ours_irq = cells(dev.prop("interrupts").unwrap());
    assert_eq!(ours_irq.len(), theirs_irq.len());
    assert_eq!(ours_irq.len(), 3 * desc.irqs.len());
    for (k, (o, t)) in ours_irq.chunks(3).zip(theirs_irq.chunks(3)).enumerate() {
        assert_eq!(o, [0, DEVICE_SPI_BASE + k as u32, t[2]], "interrupt {k}");
    }
    assert_eq!(
        cells(dev.prop("interrupt-parent").unwrap()),
        vec![GIC_PHANDLE]
    );
    let gic = find(&ours, &|n| n.prop("compatible") == Some(b"arm,gic-v3\0")).unwrap();
    assert_eq!(cells(gic.prop("phandle").unwrap()), vec![GIC_PHANDLE]);
    // clocks: the backend's apb_pclk node, under a phandle of the guest's tree
    let ph = cells(dev.prop("clocks").unwrap());
    let clk = find(&ours, &|n| n.prop("phandle").map(cells) == Some(ph.clone())).unwrap();
    let their_ph = cells(their_dev.prop("clocks").unwrap());
    let their_clk = find(&theirs, &|n| {
        n.prop("phandle").map(cells) == Some(their_ph.clone())
    })
    .unwrap();
    for (k, v) in &their_clk.props {
        if k != "phandle" {
            assert_eq!(clk.prop(k), Some(v.as_slice()), "clock property {k}");
        }
    }
    assert_eq!(clk.prop("clock-output-names").unwrap(), b"apb_pclk\0");
    assert_eq!(
        cells(clk.prop("clock-frequency").unwrap()),
        vec![desc.clocks[0].frequency_hz as u32]
    );
    // only the guest's GIC: the backend's own (GICv2) is not copied
    assert!(find(&ours, &|n| n.prop("compatible")
        == Some(b"arm,cortex-a15-gic\0"))
    .is_none());

    // the same node from the description alone (a backend that sends no DTB)
    let from_desc = DeviceNodes::from_description(&desc);
    let again = dtb::parse(&guest_fdt(&spec(), Some((&from_desc, &at))).unwrap()).unwrap();
    let dev2 = again.child(&name).unwrap();
    let mut a: Vec<_> = dev.props.clone();
    let mut b2: Vec<_> = dev2.props.clone();
    a.sort();
    b2.sort();
    assert_eq!(a, b2, "description and DTB describe the same node");
}
