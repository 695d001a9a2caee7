//! The one abstraction every served device implements.
//!
//! Two kinds live behind [`Device`]: real VFIO devices (platform, AMBA, PCI) opened
//! by sysfs path, and built-in models (the PL330 first). The server layer (socket
//! code) never knows which kind it talks to, and devices never see a socket.
//!
//! Ownership of the moving parts:
//! * the **DMA memory table** (client fds mmapped into this process, overlap and
//!   permission checks) belongs to the server layer (`crate::dma`); devices get
//!   [`Device::dma_map`]/[`Device::dma_unmap`] notifications to program an IOMMU,
//!   and models reach guest memory through the [`DmaMemory`] passed to
//!   [`Device::region_write`];
//! * **interrupt eventfds** are handed to the device by [`Device::set_irqs`]: a VFIO
//!   device passes them straight to `VFIO_DEVICE_SET_IRQS`, a model signals them
//!   itself with VFIO semantics (auto-mask on fire for level IRQs);
//! * **EOI policy** (clear register, resample, first access) is decided by the
//!   server layer from the device profile; it ends in [`Device::unmask_irq`].

use std::os::fd::{OwnedFd, RawFd};

use thiserror::Error;

/// `VFIO_DEVICE_FLAGS_*` values (linux/vfio.h).
pub mod device_flags {
    /// The device supports reset.
    pub const RESET: u32 = 1 << 0;
    /// A PCI device.
    pub const PCI: u32 = 1 << 1;
    /// A platform device.
    pub const PLATFORM: u32 = 1 << 2;
    /// An AMBA (PrimeCell) device.
    pub const AMBA: u32 = 1 << 3;
}

/// `VFIO_REGION_INFO_FLAG_*` values (linux/vfio.h).
pub mod region_flags {
    /// Region may be read.
    pub const READ: u32 = 1 << 0;
    /// Region may be written.
    pub const WRITE: u32 = 1 << 1;
    /// Region (or its sparse areas) may be mmapped.
    pub const MMAP: u32 = 1 << 2;
    /// Region info carries capabilities.
    pub const CAPS: u32 = 1 << 3;
}

/// `VFIO_IRQ_INFO_*` values (linux/vfio.h).
pub mod irq_flags {
    /// Interrupts are signalled through eventfds.
    pub const EVENTFD: u32 = 1 << 0;
    /// The IRQ can be masked.
    pub const MASKABLE: u32 = 1 << 1;
    /// The IRQ is masked automatically when it fires (level-triggered).
    pub const AUTOMASKED: u32 = 1 << 2;
    /// The vector count cannot be resized.
    pub const NORESIZE: u32 = 1 << 3;
}

/// What `DEVICE_GET_INFO` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `device_flags::*`.
    pub flags: u32,
    /// Number of regions (indices `0..num_regions`).
    pub num_regions: u32,
    /// Number of IRQ indices (`0..num_irqs`).
    pub num_irqs: u32,
}

/// A part of a region the device allows to be mapped directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseArea {
    /// Offset from the start of the region.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
}

/// How a region can be mapped by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionMmap {
    /// File to mmap. Borrowed: valid as long as the device lives. For a VFIO
    /// device this is the VFIO device fd; for a model, a memfd.
    pub fd: RawFd,
    /// Offset of the region's first byte within `fd`.
    pub fd_offset: u64,
    /// Areas that may be mapped (before the server subtracts trapped pages).
    pub areas: Vec<SparseArea>,
}

/// What `DEVICE_GET_REGION_INFO` reports for one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionInfo {
    /// Region index.
    pub index: u32,
    /// `region_flags::*` (READ/WRITE/MMAP).
    pub flags: u32,
    /// Size in bytes (0 = region absent).
    pub size: u64,
    /// A human name ("pl330-regs", "BAR0", "config"), for logs and the probe.
    pub name: String,
    /// Present when the region (or part of it) may be mmapped.
    pub mmap: Option<RegionMmap>,
}

/// What `DEVICE_GET_IRQ_INFO` reports for one IRQ index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqInfo {
    /// IRQ index.
    pub index: u32,
    /// `irq_flags::*`.
    pub flags: u32,
    /// Number of vectors in this index.
    pub count: u32,
}

/// `VFIO_IRQ_SET_ACTION_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqAction {
    /// Mask the vectors.
    Mask,
    /// Unmask the vectors.
    Unmask,
    /// Set the trigger (signal) for the vectors.
    Trigger,
}

/// `VFIO_IRQ_SET_DATA_*` with its payload, already validated against `count`.
#[derive(Debug)]
pub enum IrqData {
    /// `DATA_NONE`: act on all `count` vectors (for TRIGGER with count 0: disable).
    None,
    /// `DATA_BOOL`: one flag per vector; act where true.
    Bool(Vec<bool>),
    /// `DATA_EVENTFD`: one fd per vector; `None` (fd -1) de-assigns.
    Eventfd(Vec<Option<OwnedFd>>),
}

/// A validated `SET_IRQS` request.
#[derive(Debug)]
pub struct SetIrqs {
    /// IRQ index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Number of vectors.
    pub count: u32,
    /// What to do.
    pub action: IrqAction,
    /// With what.
    pub data: IrqData,
}

/// DMA permissions of a mapping, after the server applied the negotiation rules
/// (a plain vfio-user client's READ mapping is also EXEC, as with upstream VFIO).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DmaProt {
    /// Device may read (data loads).
    pub read: bool,
    /// Device may write.
    pub write: bool,
    /// Device may fetch instructions (PL330 microcode).
    pub exec: bool,
}

/// One entry of the DMA memory table, already mmapped into this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedRegion {
    /// I/O virtual address (= guest-physical for our clients).
    pub iova: u64,
    /// Length in bytes (page multiple).
    pub size: u64,
    /// Host virtual address of the first byte in this process.
    pub host_addr: u64,
    /// Permissions.
    pub prot: DmaProt,
}

/// The kind of a device access to DMA memory, for permission checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaAccess {
    /// Instruction fetch (needs EXEC).
    Fetch,
    /// Data load (needs READ).
    Read,
    /// Data store (needs WRITE).
    Write,
}

/// Why a device-side DMA access failed (what an SMMU would report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DmaFault {
    /// No mapping covers the whole access.
    #[error("DMA {access:?} at IOVA {iova:#x} (+{len}) is not mapped")]
    Unmapped {
        /// Kind of access.
        access: DmaAccess,
        /// First byte.
        iova: u64,
        /// Length.
        len: usize,
    },
    /// Mapped, but without the permission this access needs.
    #[error("DMA {access:?} at IOVA {iova:#x} (+{len}) denied by mapping permissions")]
    Permission {
        /// Kind of access.
        access: DmaAccess,
        /// First byte.
        iova: u64,
        /// Length.
        len: usize,
    },
    /// The memory was mapped without an fd: the server fetches (or stores)
    /// it with DMA_READ/DMA_WRITE messages once the device step returns, then
    /// runs the device again. The device must leave its state as if the
    /// access had not been attempted (a bus stall) and retry it on its next
    /// `run_pending`; the retried access then completes or faults.
    #[error("DMA {access:?} at IOVA {iova:#x} (+{len}) waits for the client (fd-less mapping)")]
    Deferred {
        /// Kind of access.
        access: DmaAccess,
        /// First byte.
        iova: u64,
        /// Length.
        len: usize,
    },
    /// The client did not serve a DMA_READ/DMA_WRITE of an fd-less mapping
    /// (no answer in time, an error reply, or a reply that did not match).
    #[error("DMA {access:?} at IOVA {iova:#x} (+{len}) failed: the client did not serve it")]
    Remote {
        /// Kind of access.
        access: DmaAccess,
        /// First byte.
        iova: u64,
        /// Length.
        len: usize,
    },
}

impl DmaFault {
    /// True for [`DmaFault::Deferred`]: stall and retry, not a fault.
    pub fn is_deferred(&self) -> bool {
        matches!(self, DmaFault::Deferred { .. })
    }
}

/// Guest memory as a model's DMA engine sees it: through the client's mappings,
/// with SMMU-like permission checks. Implemented by the server's memory table.
pub trait DmaMemory {
    /// Reads `buf.len()` bytes at `iova`; `access` is `Fetch` or `Read`.
    fn dma_read(&self, iova: u64, buf: &mut [u8], access: DmaAccess) -> Result<(), DmaFault>;
    /// Writes `data` at `iova`.
    fn dma_write(&self, iova: u64, data: &[u8]) -> Result<(), DmaFault>;
}

/// A [`DmaMemory`] with nothing mapped.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoDmaMemory;

impl DmaMemory for NoDmaMemory {
    fn dma_read(&self, iova: u64, buf: &mut [u8], access: DmaAccess) -> Result<(), DmaFault> {
        Err(DmaFault::Unmapped {
            access,
            iova,
            len: buf.len(),
        })
    }
    fn dma_write(&self, iova: u64, data: &[u8]) -> Result<(), DmaFault> {
        Err(DmaFault::Unmapped {
            access: DmaAccess::Write,
            iova,
            len: data.len(),
        })
    }
}

/// Per-IRQ-vector counters, reported on exit and through the extension query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IrqCounters {
    /// Device events (rising edges of the device's line, or device-side events).
    pub device_events: u64,
    /// Host interrupts: times the trigger eventfd was signalled.
    pub host_interrupts: u64,
    /// Unmask operations performed.
    pub unmasks: u64,
    /// Times an unmask found the line still asserted and it fired again.
    pub refires: u64,
}

/// Errors a device reports; each maps to the errno the spec or Linux VFIO gives.
#[derive(Debug, Error)]
pub enum DeviceError {
    /// Bad index, offset, size, flags, ... (EINVAL).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// Access not supported here (e.g. wrong width) (EINVAL unless stated).
    #[error("unsupported access: {0}")]
    Unsupported(String),
    /// Operation not supported by this device (ENOTSUP).
    #[error("operation not supported: {0}")]
    NotSupported(String),
    /// Host I/O error (errno from the kernel).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl DeviceError {
    /// The errno to put in a vfio-user error reply.
    pub fn errno(&self) -> i32 {
        match self {
            DeviceError::Invalid(_) | DeviceError::Unsupported(_) => libc::EINVAL,
            DeviceError::NotSupported(_) => libc::ENOTSUP,
            DeviceError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// A device served by the backend.
pub trait Device: Send {
    /// `DEVICE_GET_INFO`.
    fn info(&self) -> DeviceInfo;
    /// `DEVICE_GET_REGION_INFO` (an index beyond `num_regions` is `Invalid`).
    fn region_info(&self, index: u32) -> Result<RegionInfo, DeviceError>;
    /// `DEVICE_GET_IRQ_INFO`.
    fn irq_info(&self, index: u32) -> Result<IrqInfo, DeviceError>;
    /// `REGION_READ`: `offset + data.len()` is already checked against the region size.
    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), DeviceError>;
    /// `REGION_WRITE`: bounds already checked. Models reach guest memory through `mem`.
    fn region_write(
        &mut self,
        index: u32,
        offset: u64,
        data: &[u8],
        mem: &dyn DmaMemory,
    ) -> Result<(), DeviceError>;
    /// A mapping was added to the memory table (program the IOMMU; models: no-op).
    fn dma_map(&mut self, region: &MappedRegion) -> Result<(), DeviceError>;
    /// A mapping is about to be removed from the memory table.
    fn dma_unmap(&mut self, region: &MappedRegion) -> Result<(), DeviceError>;
    /// `SET_IRQS`, validated against `irq_info` by the server.
    fn set_irqs(&mut self, req: SetIrqs) -> Result<(), DeviceError>;
    /// Unmask one vector (the EOI action; `ACTION_UNMASK | DATA_NONE` on VFIO).
    fn unmask_irq(&mut self, index: u32, vector: u32) -> Result<(), DeviceError>;
    /// `DEVICE_RESET` (also used on client disconnect where the device can).
    fn reset(&mut self) -> Result<(), DeviceError>;
    /// Counters of one vector, if the device can count them.
    fn irq_counters(&self, index: u32, vector: u32) -> Option<IrqCounters>;
    /// Fds the event loop must watch for this device (models: resample/unmask
    /// eventfds they hold; VFIO: none). Each is tagged with a token.
    fn poll_fds(&self) -> Vec<(RawFd, u64)> {
        Vec::new()
    }
    /// One of [`Device::poll_fds`] became readable.
    fn on_poll_fd(&mut self, _token: u64, _mem: &dyn DmaMemory) -> Result<(), DeviceError> {
        Ok(())
    }
    /// Models with work left after a bounded step (a long DMA) continue here;
    /// returns true while more work is pending.
    fn run_pending(&mut self, _mem: &dyn DmaMemory) -> bool {
        false
    }
}
