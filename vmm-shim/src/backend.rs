//! What the shim needs from a vfio-user backend, whatever the guest: the
//! [`Backend`] trait (implemented over a real connection by
//! [`crate::link::ProtoBackend`]), the device regions it reports and its
//! interrupt counters.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use thiserror::Error;

use crate::memory::DmaEntry;
use crate::mmio::{
    place_regions, sparse_slots, DeviceLink, LinkError, PlacedRegion, PlacementError, RegionSpec,
    SparseSlot,
};

/// How the guest's end of interrupt reaches the device: the protocol's policy
/// type (the device description's; the shim passes it as the backend's `--eoi`).
pub use vfio_sidecar_protocol::ext::EoiPolicy;

/// The policies a VMM can run a level IRQ with (the protocol's `none` is for
/// IRQs without EOI handling), in the order the command line lists them.
pub const EOI_POLICIES: [EoiPolicy; 3] = [
    EoiPolicy::ClearRegister,
    EoiPolicy::Resample,
    EoiPolicy::FirstAccess,
];

/// [`EoiPolicy`]'s names as `--eoi` (the shim's and the backend's) spells them.
pub trait EoiName: Sized {
    /// The name (`clear-register`, `resample`, `first-access`, `none`).
    fn name(self) -> &'static str;
    /// The policy of one of the [`EOI_POLICIES`] names.
    fn from_name(s: &str) -> Result<Self, String>;
}

impl EoiName for EoiPolicy {
    fn name(self) -> &'static str {
        match self {
            EoiPolicy::ClearRegister => "clear-register",
            EoiPolicy::Resample => "resample",
            EoiPolicy::FirstAccess => "first-access",
            EoiPolicy::None => "none",
        }
    }

    fn from_name(s: &str) -> Result<Self, String> {
        EOI_POLICIES
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = EOI_POLICIES.map(EoiName::name).into();
                format!("unknown EOI policy {s:?} ({})", known.join(", "))
            })
    }
}

/// Per-vector interrupt counters as the backend counted them (IRQ_STATS).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct IrqStats {
    /// Device events (rising edges of the device's line).
    pub device_events: u64,
    /// Host interrupts: times the trigger eventfd was signalled.
    pub host_interrupts: u64,
    /// Unmask operations.
    pub unmasks: u64,
    /// Unmasks that found the line still asserted and re-fired.
    pub refires: u64,
}

/// A device region as the backend describes it, with its mmap fd if any.
#[derive(Debug)]
pub struct BackendRegion {
    /// Index, size, sparse areas.
    pub spec: RegionSpec,
    /// fd to mmap sparse areas from, and the region's offset within it.
    pub mmap: Option<(OwnedFd, u64)>,
}

/// The backend reported sparse areas for a region without an fd to map them from.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("region {0} has sparse areas but no fd")]
pub struct NoSparseFd(pub u32);

/// Places `regions` one after another in the device window `[base, end)` and
/// hands every sparse area to `map` with the fd and region offset it maps from
/// (the VM makes it a memory slot); the rest of each region traps.
pub fn place_and_map_sparse<E>(
    regions: &[BackendRegion],
    base: u64,
    end: u64,
    mut map: impl FnMut(&SparseSlot, BorrowedFd<'_>, u64) -> Result<(), E>,
) -> Result<Vec<PlacedRegion>, E>
where
    E: From<PlacementError> + From<NoSparseFd>,
{
    let specs: Vec<RegionSpec> = regions.iter().map(|r| r.spec.clone()).collect();
    let placed = place_regions(&specs, base, end)?;
    for slot in sparse_slots(&placed) {
        let Some((fd, off)) = regions
            .iter()
            .find(|r| r.spec.index == slot.index)
            .and_then(|r| r.mmap.as_ref())
        else {
            return Err(NoSparseFd(slot.index).into());
        };
        map(&slot, fd.as_fd(), *off)?;
    }
    Ok(placed)
}

/// Everything the shim needs from a vfio-user connection.
pub trait Backend: DeviceLink {
    /// Whether the EXEC DMA flag was negotiated (the "org.vfio-sidecar" extension).
    fn exec_negotiated(&self) -> bool;
    /// DMA_MAP of `entry` from `fd` (the RAM memfd).
    fn dma_map(&mut self, entry: &DmaEntry, fd: BorrowedFd<'_>) -> Result<(), LinkError>;
    /// All device regions (REGION_INFO for each index).
    fn regions(&mut self) -> Result<Vec<BackendRegion>, LinkError>;
    /// SET_IRQS(TRIGGER, EVENTFD) for one vector.
    fn set_irq_trigger(
        &mut self,
        index: u32,
        vector: u32,
        fd: BorrowedFd<'_>,
    ) -> Result<(), LinkError>;
    /// SET_IRQS(UNMASK, EVENTFD) for one vector.
    fn set_irq_unmask_fd(
        &mut self,
        index: u32,
        vector: u32,
        fd: BorrowedFd<'_>,
    ) -> Result<(), LinkError>;
    /// IRQ_STATS for one vector, if the backend supports the query.
    fn irq_stats(&mut self, index: u32, vector: u32) -> Result<Option<IrqStats>, LinkError>;
    /// The first level IRQ the backend serves with another EOI policy than
    /// `wanted` ([`eoi_mismatch_in`] of its description); `None` when it
    /// agrees or does not say (a plain server).
    fn eoi_mismatch(&mut self, _wanted: EoiPolicy) -> Result<Option<EoiMismatch>, LinkError> {
        Ok(None)
    }
}

/// The first level IRQ of `desc` the backend serves with another EOI policy
/// than `wanted` (edge IRQs are not automasked: no EOI to agree on). The
/// shim's `--eoi` must be the backend's: the shim wires the interrupt for one
/// policy (a resamplefd, level or edge delivery) and the backend unmasks by its
/// own, so a mismatch would leave the guest waiting for an interrupt until the
/// run times out. Checked before the guest starts, with the fix in the message.
pub fn eoi_mismatch_in(
    desc: &vfio_sidecar_protocol::ext::DeviceDescription,
    wanted: EoiPolicy,
) -> Option<EoiMismatch> {
    use vfio_sidecar_protocol::ext::IrqTrigger;
    desc.irqs
        .iter()
        .filter(|i| matches!(i.trigger, IrqTrigger::LevelHigh | IrqTrigger::LevelLow))
        .find(|i| i.eoi.policy != wanted)
        .map(|i| EoiMismatch {
            index: i.index,
            served: i.eoi.policy,
            wanted,
        })
}

/// The backend serves an IRQ with another EOI policy than the shim was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "EOI policy mismatch: the backend serves IRQ {index} with --eoi {}, this run was asked for --eoi {}: \
     give both the same --eoi",
    .served.name(),
    .wanted.name()
)]
pub struct EoiMismatch {
    /// The IRQ index.
    pub index: u32,
    /// The backend's policy.
    pub served: EoiPolicy,
    /// The shim's `--eoi`.
    pub wanted: EoiPolicy,
}

/// A `&mut dyn Backend` seen as the [`DeviceLink`] it extends (what trait
/// upcasting does since Rust 1.86; the workspace's MSRV is 1.85).
pub struct AsLink<'a>(pub &'a mut dyn Backend);

impl std::fmt::Debug for AsLink<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AsLink(dyn Backend)")
    }
}

impl DeviceLink for AsLink<'_> {
    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), LinkError> {
        self.0.region_read(index, offset, data)
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), LinkError> {
        self.0.region_write(index, offset, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eoi_names_round_trip_and_match_the_wire_spelling() {
        for p in EOI_POLICIES {
            assert_eq!(EoiPolicy::from_name(p.name()), Ok(p));
            // the description's JSON spells it the same
            assert_eq!(
                serde_json::to_string(&p).unwrap(),
                format!("\"{}\"", p.name())
            );
        }
        assert_eq!(EoiPolicy::None.name(), "none");
        let e = EoiPolicy::from_name("none").unwrap_err();
        assert!(e.contains("clear-register, resample, first-access"), "{e}");
    }

    #[derive(Debug, PartialEq)]
    enum MapErr {
        Placement,
        NoFd(u32),
    }
    impl From<PlacementError> for MapErr {
        fn from(_: PlacementError) -> Self {
            MapErr::Placement
        }
    }
    impl From<NoSparseFd> for MapErr {
        fn from(e: NoSparseFd) -> Self {
            MapErr::NoFd(e.0)
        }
    }

    fn region(index: u32, size: u64, sparse: &[(u64, u64)], fd_off: Option<u64>) -> BackendRegion {
        BackendRegion {
            spec: RegionSpec {
                index,
                size,
                sparse: sparse.to_vec(),
            },
            mmap: fd_off.map(|o| (OwnedFd::from(std::fs::File::open("/dev/null").unwrap()), o)),
        }
    }

    #[test]
    fn sparse_areas_are_mapped_from_their_region_fd() {
        let regions = [
            region(0, 0x1000, &[], None),
            region(1, 0x2000, &[(0x1000, 0x1000)], Some(0x10_0000)),
        ];
        let mut mapped = Vec::new();
        let placed = place_and_map_sparse(&regions, 0x4000, 0x8000, |slot, _fd, off| {
            mapped.push((*slot, off));
            Ok::<(), MapErr>(())
        })
        .unwrap();
        assert_eq!(
            placed.iter().map(|p| p.gpa).collect::<Vec<_>>(),
            [0x4000, 0x5000]
        );
        assert_eq!(
            mapped,
            [(
                SparseSlot {
                    index: 1,
                    gpa: 0x6000,
                    size: 0x1000,
                    region_offset: 0x1000
                },
                0x10_0000
            )]
        );
        // the map function's error stops the placement
        let e = place_and_map_sparse(&regions, 0x4000, 0x8000, |_, _, _| Err(MapErr::NoFd(99)));
        assert_eq!(e, Err(MapErr::NoFd(99)));
    }

    #[test]
    fn sparse_areas_without_an_fd_or_room_are_refused() {
        let no_fd = [region(2, 0x1000, &[(0, 0x1000)], None)];
        let e = place_and_map_sparse(&no_fd, 0, 0x1000, |_, _, _| Ok::<(), MapErr>(()));
        assert_eq!(e, Err(MapErr::NoFd(2)));
        assert_eq!(
            NoSparseFd(2).to_string(),
            "region 2 has sparse areas but no fd"
        );
        let too_big = [region(0, 0x2000, &[], None)];
        let e = place_and_map_sparse(&too_big, 0, 0x1000, |_, _, _| Ok::<(), MapErr>(()));
        assert_eq!(e, Err(MapErr::Placement));
    }
}
