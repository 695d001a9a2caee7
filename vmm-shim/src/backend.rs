//! What the shim needs from a vfio-user backend, whatever the guest: the
//! [`Backend`] trait (implemented over a real connection by
//! [`crate::link::ProtoBackend`]), the device regions it reports and its
//! interrupt counters.

use std::os::fd::{BorrowedFd, OwnedFd};

use crate::memory::DmaEntry;
use crate::mmio::{DeviceLink, LinkError, RegionSpec};

/// How the guest's end of interrupt reaches the device: the backend's own
/// policy type (what the shim passes as the backend's `--eoi`).
pub use vfio_sidecar::irq::EoiPolicy;

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
