//! Typed request/reply payloads (everything after the 16-byte header) with
//! `encode`/`decode` and `is_valid` checks.
//!
//! Decoding never panics and never allocates more than the payload it is given
//! (which the transport already bounded by the limits). Fixed-size payloads must
//! have exactly their size; variable parts must match their declared counts.

mod wire;

use crate::caps::Capabilities;
use crate::error::DecodeError;
use crate::ext::IrqStats;
pub(crate) use wire::expect_data;
use wire::{
    check_argsz, decode_exact, encode_wire, fixed_payload, len_u32, wire_struct, Put, Reader, Wire,
};

// ---------------------------------------------------------------- constants

/// `DMA_MAP` flag: the device may read the mapping.
pub const DMA_MAP_FLAG_READ: u32 = 1 << 0;
/// `DMA_MAP` flag: the device may write the mapping.
pub const DMA_MAP_FLAG_WRITE: u32 = 1 << 1;
/// `DMA_MAP` flag (vfio-sidecar extension, only with `dma_exec` negotiated): the
/// device may fetch instructions from the mapping. Bits 2 and 3 are never used
/// (libvfio-user and Linux VFIO give them other meanings).
pub const DMA_MAP_FLAG_EXEC: u32 = 1 << 16;

/// `DMA_UNMAP` flag: unmap everything (`VFIO_DMA_UNMAP_FLAG_ALL` of
/// `<linux/vfio.h>`, as used by QEMU and libvfio-user); address and size must be 0.
/// The 0.9.2 text calls `flags` "unused"; every other bit is rejected with EINVAL.
pub const DMA_UNMAP_FLAG_ALL: u32 = 1 << 1;

/// `VFIO_REGION_INFO_FLAG_READ`.
pub const REGION_INFO_FLAG_READ: u32 = 1 << 0;
/// `VFIO_REGION_INFO_FLAG_WRITE`.
pub const REGION_INFO_FLAG_WRITE: u32 = 1 << 1;
/// `VFIO_REGION_INFO_FLAG_MMAP`: an fd is sent with the reply.
pub const REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
/// `VFIO_REGION_INFO_FLAG_CAPS`: the reply has (or would have) capabilities.
pub const REGION_INFO_FLAG_CAPS: u32 = 1 << 3;
/// `VFIO_REGION_INFO_CAP_SPARSE_MMAP` capability id.
pub const REGION_INFO_CAP_SPARSE_MMAP: u16 = 1;
/// Version of the sparse mmap capability.
pub const REGION_INFO_CAP_SPARSE_MMAP_VERSION: u16 = 1;

/// `VFIO_IRQ_SET_DATA_NONE`.
pub const IRQ_SET_DATA_NONE: u32 = 1 << 0;
/// `VFIO_IRQ_SET_DATA_BOOL`.
pub const IRQ_SET_DATA_BOOL: u32 = 1 << 1;
/// `VFIO_IRQ_SET_DATA_EVENTFD`.
pub const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
/// `VFIO_IRQ_SET_ACTION_MASK`.
pub const IRQ_SET_ACTION_MASK: u32 = 1 << 3;
/// `VFIO_IRQ_SET_ACTION_UNMASK`.
pub const IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
/// `VFIO_IRQ_SET_ACTION_TRIGGER`.
pub const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
const IRQ_SET_DATA_MASK: u32 = IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL | IRQ_SET_DATA_EVENTFD;
const IRQ_SET_ACTION_MASK_ALL: u32 =
    IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK | IRQ_SET_ACTION_TRIGGER;

/// `VFIO_USER_IO_FD_TYPE_IOEVENTFD`.
pub const IO_FD_TYPE_IOEVENTFD: u32 = 0;
/// `VFIO_USER_IO_FD_TYPE_IOREGIONFD`.
pub const IO_FD_TYPE_IOREGIONFD: u32 = 1;

/// Most bytes one `REGION_WRITE_MULTI` entry can write.
pub const WRITE_MULTI_MAX_COUNT: u32 = 8;

/// Checks that a message with no payload (DEVICE_RESET, most replies) is empty.
pub fn decode_empty(what: &'static str, payload: &[u8]) -> Result<(), DecodeError> {
    if !payload.is_empty() {
        return Err(DecodeError::length(what, 0, payload.len()));
    }
    Ok(())
}

// ------------------------------------------------------------------ VERSION

/// `VFIO_USER_VERSION` request and reply payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// Capabilities (sent as NUL-terminated JSON).
    pub caps: Capabilities,
}

impl Version {
    /// Encodes major, minor and the NUL-terminated JSON.
    pub fn encode(&self) -> Vec<u8> {
        let json = self.caps.to_json();
        let mut v = Vec::with_capacity(4 + json.len() + 1);
        v.put(self.major);
        v.put(self.minor);
        v.extend_from_slice(json.as_bytes());
        v.push(0);
        v
    }

    /// Decodes; a missing NUL, bad UTF-8 or bad JSON is an error (EINVAL).
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new("VERSION", payload, 4)?;
        let major = r.get()?;
        let minor = r.get()?;
        let caps = Capabilities::from_version_data(r.rest())?;
        Ok(Version { major, minor, caps })
    }
}

// ------------------------------------------------------------------ DMA_MAP

/// Effective DMA permissions of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DmaProt {
    /// Device may read.
    pub read: bool,
    /// Device may write.
    pub write: bool,
    /// Device may fetch instructions.
    pub exec: bool,
}

impl DmaProt {
    /// The DMA_MAP flags for these permissions. Without `dma_exec` negotiated
    /// the EXEC bit is never set (a plain vfio-user READ mapping is executable).
    pub fn to_flags(self, dma_exec: bool) -> u32 {
        let mut f = 0;
        if self.read {
            f |= DMA_MAP_FLAG_READ;
        }
        if self.write {
            f |= DMA_MAP_FLAG_WRITE;
        }
        if self.exec && dma_exec {
            f |= DMA_MAP_FLAG_EXEC;
        }
        f
    }
}

wire_struct! {
    /// `VFIO_USER_DMA_MAP` request (32 bytes; the fd travels as ancillary data).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct DmaMap {
        /// Size of this structure (32).
        pub argsz: u32,
        /// `DMA_MAP_FLAG_*`.
        pub flags: u32,
        /// Offset of the mapping in the passed fd.
        pub offset: u64,
        /// DMA (IOVA) address.
        pub address: u64,
        /// Size in bytes.
        pub size: u64,
    }
}
fixed_payload!(DmaMap, "DMA_MAP", 32);

impl DmaMap {
    /// A request with `argsz` set.
    pub fn new(flags: u32, offset: u64, address: u64, size: u64) -> Self {
        DmaMap {
            argsz: Self::SIZE as u32,
            flags,
            offset,
            address,
            size,
        }
    }

    /// Effective permissions: with `dma_exec` negotiated EXEC is what the flag
    /// says; without it (plain vfio-user) a READ mapping is also executable, as
    /// with upstream Linux VFIO.
    pub fn prot(&self, dma_exec: bool) -> DmaProt {
        let read = self.flags & DMA_MAP_FLAG_READ != 0;
        DmaProt {
            read,
            write: self.flags & DMA_MAP_FLAG_WRITE != 0,
            exec: if dma_exec {
                self.flags & DMA_MAP_FLAG_EXEC != 0
            } else {
                read
            },
        }
    }

    /// Validates: `argsz` >= 32; only READ/WRITE (and EXEC when `dma_exec` was
    /// negotiated) flags; non-zero size; no overflow of `address + size` and
    /// `offset + size`; address, size and offset aligned to `page_size`.
    pub fn is_valid(&self, dma_exec: bool, page_size: u64) -> Result<(), DecodeError> {
        let w = Self::NAME;
        check_argsz(w, self.argsz, Self::SIZE)?;
        let mut allowed = DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE;
        if dma_exec {
            allowed |= DMA_MAP_FLAG_EXEC;
        }
        if self.flags & !allowed != 0 {
            return Err(DecodeError::invalid(
                w,
                format!("unsupported flags {:#x}", self.flags & !allowed),
            ));
        }
        if self.size == 0 {
            return Err(DecodeError::invalid(w, "size 0"));
        }
        if self.address.checked_add(self.size).is_none()
            || self.offset.checked_add(self.size).is_none()
        {
            return Err(DecodeError::invalid(w, "address/offset + size overflows"));
        }
        let mask = page_size.max(1) - 1;
        if (self.address | self.size | self.offset) & mask != 0 {
            return Err(DecodeError::invalid(
                w,
                format!("address/size/offset not aligned to {page_size:#x}"),
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- DMA_UNMAP

wire_struct! {
    /// `VFIO_USER_DMA_UNMAP` request (24 bytes); the reply echoes it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct DmaUnmap {
        /// Maximum reply payload size (24).
        pub argsz: u32,
        /// 0 or [`DMA_UNMAP_FLAG_ALL`].
        pub flags: u32,
        /// DMA address of the mapping.
        pub address: u64,
        /// Size of the mapping.
        pub size: u64,
    }
}
fixed_payload!(DmaUnmap, "DMA_UNMAP", 24);

impl DmaUnmap {
    /// A request with `argsz` set.
    pub fn new(flags: u32, address: u64, size: u64) -> Self {
        DmaUnmap {
            argsz: Self::SIZE as u32,
            flags,
            address,
            size,
        }
    }

    /// True for an unmap-all request.
    pub fn is_all(&self) -> bool {
        self.flags & DMA_UNMAP_FLAG_ALL != 0
    }

    /// Validates: argsz >= 24; flags 0 or ALL; ALL needs address = size = 0;
    /// otherwise a non-zero range whose last byte does not wrap.
    pub fn is_valid(&self) -> Result<(), DecodeError> {
        let w = Self::NAME;
        check_argsz(w, self.argsz, Self::SIZE)?;
        if self.flags & !DMA_UNMAP_FLAG_ALL != 0 {
            return Err(DecodeError::invalid(
                w,
                format!("unsupported flags {:#x}", self.flags),
            ));
        }
        if self.is_all() {
            if self.address != 0 || self.size != 0 {
                return Err(DecodeError::invalid(w, "UNMAP_ALL with address/size"));
            }
            return Ok(());
        }
        // As Linux type1: the last byte must not wrap; a range may end at
        // the top of the 64-bit space (QEMU splits a 2^64 vIOMMU unmap into
        // two halves, the second ending there).
        if self.size == 0 || self.address.checked_add(self.size - 1).is_none() {
            return Err(DecodeError::invalid(w, "empty or overflowing range"));
        }
        Ok(())
    }
}

// ---------------------------------------------------------- DEVICE_GET_INFO

wire_struct! {
    /// `VFIO_USER_DEVICE_GET_INFO` payload (16 bytes; request only sets `argsz`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct DeviceInfo {
        /// Request: maximum reply size; reply: size needed (16).
        pub argsz: u32,
        /// `VFIO_DEVICE_FLAGS_*` (RESET 1, PCI 2, PLATFORM 4, AMBA 8).
        pub flags: u32,
        /// Number of regions.
        pub num_regions: u32,
        /// Number of IRQ indices.
        pub num_irqs: u32,
    }
}
fixed_payload!(DeviceInfo, "DEVICE_GET_INFO", 16);

impl DeviceInfo {
    /// A request.
    pub fn request() -> Self {
        DeviceInfo {
            argsz: Self::SIZE as u32,
            flags: 0,
            num_regions: 0,
            num_irqs: 0,
        }
    }

    /// Request validation: argsz must hold the 16-byte reply.
    pub fn is_valid_request(&self) -> Result<(), DecodeError> {
        check_argsz(Self::NAME, self.argsz, Self::SIZE)
    }
}

// --------------------------------------------------- DEVICE_GET_REGION_INFO

wire_struct! {
    /// One area of a sparse-mmap capability.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct SparseArea {
        /// Offset from the region's mmap offset.
        pub offset: u64,
        /// Size in bytes.
        pub size: u64,
    }
}

wire_struct! {
    /// The fixed `vfio_region_info` (32 bytes): a request uses `argsz` and
    /// `index` (the rest is zero), a reply all of it.
    #[derive(Default)]
    struct RegionInfoFixed {
        argsz: u32,
        flags: u32,
        index: u32,
        cap_offset: u32,
        size: u64,
        offset: u64,
    }
}

wire_struct! {
    /// The header of a region info capability (`vfio_info_cap_header`).
    struct CapHeader {
        id: u16,
        version: u16,
        next: u32,
    }
}

/// `VFIO_USER_DEVICE_GET_REGION_INFO` request (32 bytes; only `argsz` and `index` used).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionInfoRequest {
    /// Maximum reply payload size the client accepts.
    pub argsz: u32,
    /// Region index.
    pub index: u32,
}

impl RegionInfoRequest {
    /// Size of the fixed `vfio_region_info` structure.
    pub const SIZE: usize = <RegionInfoFixed as Wire>::SIZE;
    const NAME: &'static str = "DEVICE_GET_REGION_INFO";

    /// Encodes (the other fields are zero).
    pub fn encode(&self) -> Vec<u8> {
        encode_wire(&RegionInfoFixed {
            argsz: self.argsz,
            index: self.index,
            ..RegionInfoFixed::default()
        })
    }

    /// Decodes (ignores the fields that must be zero). Zero padding after
    /// the 32 bytes is accepted (see `decode_padded`): libvfio-user's client
    /// sends its second request with the payload as long as its argsz.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let f: RegionInfoFixed = wire::decode_padded(Self::NAME, payload)?;
        Ok(RegionInfoRequest {
            argsz: f.argsz,
            index: f.index,
        })
    }

    /// argsz must hold at least the fixed 32-byte reply.
    pub fn is_valid(&self) -> Result<(), DecodeError> {
        check_argsz(Self::NAME, self.argsz, Self::SIZE)
    }
}

/// Region information (the semantic content of a region info reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionInfo {
    /// Region index.
    pub index: u32,
    /// `REGION_INFO_FLAG_*` (READ/WRITE/MMAP; CAPS is managed by the codec).
    pub flags: u32,
    /// Region size.
    pub size: u64,
    /// Offset to give to mmap() (base of the sparse areas).
    pub offset: u64,
    /// Sparse mmap areas; `None` = no sparse capability (whole region mappable
    /// if MMAP is set).
    pub sparse: Option<Vec<SparseArea>>,
}

/// A decoded region info reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionInfoReply {
    /// Size the full reply needs. Larger than the payload received: the
    /// client's argsz was too small, `info.sparse` is `None`, ask again.
    pub argsz: u32,
    /// The information.
    pub info: RegionInfo,
}

impl RegionInfoReply {
    /// True when the server had to leave the capabilities out.
    pub fn is_truncated(&self) -> bool {
        self.info.flags & REGION_INFO_FLAG_CAPS != 0 && self.info.sparse.is_none()
    }
}

impl RegionInfo {
    /// The payload size of the full reply (region info + capabilities).
    pub fn full_size(&self) -> usize {
        match &self.sparse {
            None => RegionInfoRequest::SIZE,
            Some(a) => RegionInfoRequest::SIZE + 8 + 8 + 16 * a.len(),
        }
    }

    /// Encodes the reply for a client that allowed `client_argsz` bytes. With
    /// sparse areas and too small an argsz, the reply is the fixed 32 bytes with
    /// CAPS set, `cap_offset` 0 and `argsz` = the size needed (as Linux VFIO).
    pub fn encode_reply(&self, client_argsz: u32) -> Vec<u8> {
        let full = self.full_size();
        let include = self.sparse.is_some() && client_argsz as usize >= full;
        let mut flags = self.flags & !REGION_INFO_FLAG_CAPS;
        if self.sparse.is_some() {
            flags |= REGION_INFO_FLAG_CAPS;
        }
        let mut v = Vec::with_capacity(if include { full } else { 32 });
        v.put(RegionInfoFixed {
            argsz: len_u32(full),
            flags,
            index: self.index,
            // The capability follows the fixed part.
            cap_offset: if include { 32 } else { 0 },
            size: self.size,
            offset: self.offset,
        });
        if let (true, Some(areas)) = (include, &self.sparse) {
            v.put(CapHeader {
                id: REGION_INFO_CAP_SPARSE_MMAP,
                version: REGION_INFO_CAP_SPARSE_MMAP_VERSION,
                next: 0,
            });
            v.put(len_u32(areas.len()));
            v.put(0u32); // reserved
            v.put_all(areas);
        }
        v
    }

    /// Decodes a reply: walks the capability chain (bounded, forward only),
    /// keeps the sparse-mmap capability, ignores others.
    pub fn decode_reply(payload: &[u8]) -> Result<RegionInfoReply, DecodeError> {
        let w = "DEVICE_GET_REGION_INFO reply";
        let mut r = Reader::new(w, payload, RegionInfoRequest::SIZE)?;
        let f: RegionInfoFixed = r.get()?;
        let mut sparse = None;
        // A reply whose argsz exceeds what was sent is truncated: whatever
        // cap_offset says, the capabilities are not there (some servers keep
        // cap_offset set in that case).
        let complete = f.argsz as usize <= payload.len();
        if f.flags & REGION_INFO_FLAG_CAPS != 0 && f.cap_offset != 0 && complete {
            let mut at = f.cap_offset as usize;
            for _ in 0..16 {
                if at < RegionInfoRequest::SIZE {
                    return Err(DecodeError::invalid(
                        w,
                        "capability offset inside the header",
                    ));
                }
                let tail = payload
                    .get(at..)
                    .ok_or_else(|| DecodeError::invalid(w, "capability offset beyond payload"))?;
                let mut c = Reader::new(w, tail, <CapHeader as Wire>::SIZE)?;
                let cap: CapHeader = c.get()?;
                if cap.id == REGION_INFO_CAP_SPARSE_MMAP {
                    if cap.version != REGION_INFO_CAP_SPARSE_MMAP_VERSION {
                        return Err(DecodeError::invalid(w, "sparse mmap capability version"));
                    }
                    let nr = c.get::<u32>()? as usize;
                    let _reserved = c.get::<u32>()?;
                    if nr > c.remaining() / 16 {
                        return Err(DecodeError::truncated(
                            w,
                            at + 16 + nr.saturating_mul(16),
                            payload.len(),
                        ));
                    }
                    sparse = Some(c.list(nr)?);
                }
                let next = cap.next as usize;
                if next == 0 {
                    break;
                }
                if next <= at {
                    return Err(DecodeError::invalid(w, "capability chain goes backwards"));
                }
                at = next;
            }
        }
        Ok(RegionInfoReply {
            argsz: f.argsz,
            info: RegionInfo {
                index: f.index,
                // CAPS as received: the server had capabilities (also when
                // they were left out for a too small argsz).
                flags: f.flags,
                size: f.size,
                offset: f.offset,
                sparse,
            },
        })
    }
}

// ------------------------------------------------ DEVICE_GET_REGION_IO_FDS

wire_struct! {
    /// `VFIO_USER_DEVICE_GET_REGION_IO_FDS` request (16 bytes; also the fixed
    /// part of the reply).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct RegionIoFdsRequest {
        /// Maximum reply payload size.
        pub argsz: u32,
        /// Must be 0.
        pub flags: u32,
        /// Region index.
        pub index: u32,
        /// Must be 0.
        pub count: u32,
    }
}
fixed_payload!(RegionIoFdsRequest, "DEVICE_GET_REGION_IO_FDS", 16);

impl RegionIoFdsRequest {
    /// argsz >= 16 and flags = 0.
    pub fn is_valid(&self) -> Result<(), DecodeError> {
        check_argsz(Self::NAME, self.argsz, Self::SIZE)?;
        if self.flags != 0 {
            return Err(DecodeError::invalid(Self::NAME, "flags must be 0"));
        }
        Ok(())
    }
}

/// One sub-region of a region IO fds reply (40 bytes on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubRegionIoFd {
    /// Offset in the region.
    pub offset: u64,
    /// Size (0 = any access size).
    pub size: u64,
    /// Index of the fd in the reply's fd array.
    pub fd_index: u32,
    /// [`IO_FD_TYPE_IOEVENTFD`] or [`IO_FD_TYPE_IOREGIONFD`].
    pub kind: u32,
    /// KVM ioeventfd / ioregionfd flags.
    pub flags: u32,
    /// ioeventfd `datamatch` or ioregionfd `user_data`.
    pub data: u64,
}

/// Written by hand: a 4-byte pad sits between `flags` and `data`.
impl Wire for SubRegionIoFd {
    const SIZE: usize = 40;
    fn put_into(&self, v: &mut Vec<u8>) {
        v.put(self.offset);
        v.put(self.size);
        v.put(self.fd_index);
        v.put(self.kind);
        v.put(self.flags);
        v.put(0u32);
        v.put(self.data);
    }
    fn get_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let offset = r.get()?;
        let size = r.get()?;
        let fd_index = r.get()?;
        let kind = r.get()?;
        let flags = r.get()?;
        let _pad = r.get::<u32>()?;
        let data = r.get()?;
        Ok(SubRegionIoFd {
            offset,
            size,
            fd_index,
            kind,
            flags,
            data,
        })
    }
}

/// A decoded region IO fds reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionIoFdsReply {
    /// Size of the full reply (more than received: ask again with this argsz).
    pub argsz: u32,
    /// Region index.
    pub index: u32,
    /// The sub-regions (empty in a truncated reply).
    pub subregions: Vec<SubRegionIoFd>,
}

impl RegionIoFdsReply {
    /// Size of one sub-region entry.
    pub const ENTRY_SIZE: usize = <SubRegionIoFd as Wire>::SIZE;

    /// Size of the full reply for `n` sub-regions.
    pub fn full_size(n: usize) -> usize {
        RegionIoFdsRequest::SIZE + n * Self::ENTRY_SIZE
    }

    /// Encodes for a client that allowed `client_argsz`; too small: argsz = size
    /// needed, count 0, no entries (and the caller sends no fds).
    pub fn encode(index: u32, subs: &[SubRegionIoFd], client_argsz: u32) -> (Vec<u8>, bool) {
        let full = Self::full_size(subs.len());
        let include = client_argsz as usize >= full;
        let subs: &[SubRegionIoFd] = if include { subs } else { &[] };
        let mut v = Vec::with_capacity(if include { full } else { 16 });
        v.put(RegionIoFdsRequest {
            argsz: len_u32(full),
            flags: 0,
            index,
            count: len_u32(subs.len()),
        });
        v.put_all(subs);
        (v, include)
    }

    /// Decodes.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let w = "DEVICE_GET_REGION_IO_FDS reply";
        let mut r = Reader::new(w, payload, RegionIoFdsRequest::SIZE)?;
        let fixed: RegionIoFdsRequest = r.get()?;
        let count = fixed.count as usize;
        if r.remaining() != count.saturating_mul(Self::ENTRY_SIZE) {
            return Err(DecodeError::length(
                w,
                Self::full_size(count.min(1 << 20)),
                payload.len(),
            ));
        }
        Ok(RegionIoFdsReply {
            argsz: fixed.argsz,
            index: fixed.index,
            subregions: r.list(count)?,
        })
    }
}

// ----------------------------------------------------- DEVICE_GET_IRQ_INFO

wire_struct! {
    /// `VFIO_USER_DEVICE_GET_IRQ_INFO` payload (16 bytes, request and reply).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct IrqInfo {
        /// Request: maximum reply size; reply: 16.
        pub argsz: u32,
        /// `VFIO_IRQ_INFO_*` (EVENTFD 1, MASKABLE 2, AUTOMASKED 4, NORESIZE 8).
        pub flags: u32,
        /// IRQ index.
        pub index: u32,
        /// Number of vectors.
        pub count: u32,
    }
}
fixed_payload!(IrqInfo, "DEVICE_GET_IRQ_INFO", 16);

impl IrqInfo {
    /// A request for `index`.
    pub fn request(index: u32) -> Self {
        IrqInfo {
            argsz: Self::SIZE as u32,
            flags: 0,
            index,
            count: 0,
        }
    }

    /// Request validation: argsz must hold the 16-byte reply.
    pub fn is_valid_request(&self) -> Result<(), DecodeError> {
        check_argsz(Self::NAME, self.argsz, Self::SIZE)
    }
}

// ---------------------------------------------------------- DEVICE_SET_IRQS

/// `VFIO_IRQ_SET_ACTION_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqAction {
    /// Mask.
    Mask,
    /// Unmask.
    Unmask,
    /// Trigger.
    Trigger,
}

impl IrqAction {
    /// The flag bit.
    pub fn flag(self) -> u32 {
        match self {
            IrqAction::Mask => IRQ_SET_ACTION_MASK,
            IrqAction::Unmask => IRQ_SET_ACTION_UNMASK,
            IrqAction::Trigger => IRQ_SET_ACTION_TRIGGER,
        }
    }
}

/// `VFIO_IRQ_SET_DATA_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqDataType {
    /// No data.
    None,
    /// One bool byte per vector.
    Bool,
    /// One eventfd per vector (ancillary data), or none to de-assign.
    Eventfd,
}

impl IrqDataType {
    /// The flag bit.
    pub fn flag(self) -> u32 {
        match self {
            IrqDataType::None => IRQ_SET_DATA_NONE,
            IrqDataType::Bool => IRQ_SET_DATA_BOOL,
            IrqDataType::Eventfd => IRQ_SET_DATA_EVENTFD,
        }
    }
}

/// `VFIO_USER_DEVICE_SET_IRQS` request (20 bytes + bool data; fds as ancillary data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetIrqs {
    /// Size of the request payload including data.
    pub argsz: u32,
    /// One `IRQ_SET_DATA_*` | one `IRQ_SET_ACTION_*`.
    pub flags: u32,
    /// IRQ index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Number of vectors.
    pub count: u32,
    /// `DATA_BOOL` values (empty otherwise).
    pub bools: Vec<bool>,
}

impl SetIrqs {
    /// Size of the fixed part.
    pub const SIZE: usize = 20;

    /// Builds a request (argsz computed).
    pub fn new(
        index: u32,
        action: IrqAction,
        data: IrqDataType,
        start: u32,
        count: u32,
        bools: Vec<bool>,
    ) -> Self {
        SetIrqs {
            argsz: len_u32(Self::SIZE + bools.len()),
            flags: action.flag() | data.flag(),
            index,
            start,
            count,
            bools,
        }
    }

    /// The action (None if the flags are invalid).
    pub fn action(&self) -> Option<IrqAction> {
        match self.flags & IRQ_SET_ACTION_MASK_ALL {
            IRQ_SET_ACTION_MASK => Some(IrqAction::Mask),
            IRQ_SET_ACTION_UNMASK => Some(IrqAction::Unmask),
            IRQ_SET_ACTION_TRIGGER => Some(IrqAction::Trigger),
            _ => None,
        }
    }

    /// The data type (None if the flags are invalid).
    pub fn data_type(&self) -> Option<IrqDataType> {
        match self.flags & IRQ_SET_DATA_MASK {
            IRQ_SET_DATA_NONE => Some(IrqDataType::None),
            IRQ_SET_DATA_BOOL => Some(IrqDataType::Bool),
            IRQ_SET_DATA_EVENTFD => Some(IrqDataType::Eventfd),
            _ => None,
        }
    }

    /// Encodes (bools as 0/1 bytes).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::SIZE + self.bools.len());
        v.put(self.argsz);
        v.put(self.flags);
        v.put(self.index);
        v.put(self.start);
        v.put(self.count);
        v.extend(self.bools.iter().map(|&b| u8::from(b)));
        v
    }

    /// Decodes; bytes after the fixed part are bool data (non-zero = true).
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new("DEVICE_SET_IRQS", payload, Self::SIZE)?;
        Ok(SetIrqs {
            argsz: r.get()?,
            flags: r.get()?,
            index: r.get()?,
            start: r.get()?,
            count: r.get()?,
            bools: r.rest().iter().map(|&b| b != 0).collect(),
        })
    }

    /// Validates against the number of fds received: exactly one data and one
    /// action flag and no others; `start + count` does not overflow; count 0
    /// only as `DATA_NONE | ACTION_TRIGGER` (disable all); BOOL: `count` bytes
    /// and no fds; NONE: no data and no fds; EVENTFD: no data and `count` fds
    /// (or 0 fds to de-assign); argsz covers the payload.
    pub fn is_valid(&self, nfds: usize) -> Result<(), DecodeError> {
        let w = "DEVICE_SET_IRQS";
        if self.flags & !(IRQ_SET_DATA_MASK | IRQ_SET_ACTION_MASK_ALL) != 0 {
            return Err(DecodeError::invalid(
                w,
                format!("unknown flags {:#x}", self.flags),
            ));
        }
        let (Some(action), Some(data)) = (self.action(), self.data_type()) else {
            return Err(DecodeError::invalid(
                w,
                "need exactly one DATA_* and one ACTION_* flag",
            ));
        };
        if self.start.checked_add(self.count).is_none() {
            return Err(DecodeError::invalid(w, "start + count overflows"));
        }
        if (self.argsz as usize) < Self::SIZE + self.bools.len() {
            return Err(DecodeError::invalid(
                w,
                format!("argsz {} too small", self.argsz),
            ));
        }
        if self.count == 0 && !(data == IrqDataType::None && action == IrqAction::Trigger) {
            return Err(DecodeError::invalid(
                w,
                "count 0 is only valid with DATA_NONE | ACTION_TRIGGER",
            ));
        }
        match data {
            IrqDataType::None | IrqDataType::Bool => {
                if nfds != 0 {
                    return Err(DecodeError::FdCount {
                        what: w,
                        expected: "0".into(),
                        got: nfds,
                    });
                }
            }
            IrqDataType::Eventfd => {
                if nfds != 0 && nfds != self.count as usize {
                    return Err(DecodeError::FdCount {
                        what: w,
                        expected: format!("0 or {}", self.count),
                        got: nfds,
                    });
                }
            }
        }
        let want_bytes = if data == IrqDataType::Bool {
            self.count as usize
        } else {
            0
        };
        if self.bools.len() != want_bytes {
            return Err(DecodeError::length(
                w,
                Self::SIZE + want_bytes,
                Self::SIZE + self.bools.len(),
            ));
        }
        Ok(())
    }
}

// ------------------------------------------------- REGION_READ/REGION_WRITE

/// `VFIO_USER_REGION_READ`/`WRITE` payload: 16 fixed bytes + data.
///
/// READ request and WRITE reply carry no data; READ reply and WRITE request
/// carry exactly `count` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionAccess {
    /// Offset in the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Number of bytes.
    pub count: u32,
    /// Data (see above).
    pub data: Vec<u8>,
}

impl RegionAccess {
    /// Size of the fixed part.
    pub const SIZE: usize = 16;

    /// The fixed 16 bytes.
    pub fn encode_fixed(offset: u64, region: u32, count: u32) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&offset.to_ne_bytes());
        b[8..12].copy_from_slice(&region.to_ne_bytes());
        b[12..16].copy_from_slice(&count.to_ne_bytes());
        b
    }

    /// Encodes fixed part + data.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::SIZE + self.data.len());
        v.extend_from_slice(&Self::encode_fixed(self.offset, self.region, self.count));
        v.extend_from_slice(&self.data);
        v
    }

    /// Decodes the fixed 16 bytes: (offset, region, count).
    pub fn decode_fixed_array(b: &[u8; 16]) -> (u64, u32, u32) {
        let mut o = [0u8; 8];
        o.copy_from_slice(&b[0..8]);
        let mut r = [0u8; 4];
        r.copy_from_slice(&b[8..12]);
        let mut c = [0u8; 4];
        c.copy_from_slice(&b[12..16]);
        (
            u64::from_ne_bytes(o),
            u32::from_ne_bytes(r),
            u32::from_ne_bytes(c),
        )
    }

    /// Decodes the fixed part, returning the data slice that follows.
    pub fn decode_fixed<'a>(
        what: &'static str,
        payload: &'a [u8],
    ) -> Result<(u64, u32, u32, &'a [u8]), DecodeError> {
        let mut r = Reader::new(what, payload, Self::SIZE)?;
        let offset = r.get()?;
        let region = r.get()?;
        let count = r.get()?;
        Ok((offset, region, count, r.rest()))
    }

    /// Decodes; `with_data` says whether `count` data bytes must follow
    /// (otherwise none may).
    pub fn decode(
        what: &'static str,
        payload: &[u8],
        with_data: bool,
    ) -> Result<Self, DecodeError> {
        let (offset, region, count, data) = Self::decode_fixed(what, payload)?;
        let want = if with_data { count } else { 0 };
        expect_data(what, payload, Self::SIZE, data, want.into())?;
        Ok(RegionAccess {
            offset,
            region,
            count,
            data: data.to_vec(),
        })
    }
}

// ------------------------------------------------------ DMA_READ/DMA_WRITE

/// `VFIO_USER_DMA_READ`/`WRITE` payload (server to client): address u64,
/// count u64, data. DMA_READ request and DMA_WRITE reply carry no data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmaAccess {
    /// Client DMA address.
    pub address: u64,
    /// Number of bytes.
    pub count: u64,
    /// Data (DMA_READ reply, DMA_WRITE request).
    pub data: Vec<u8>,
}

impl DmaAccess {
    /// Size of the fixed part.
    pub const SIZE: usize = 16;

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::SIZE + self.data.len());
        v.put(self.address);
        v.put(self.count);
        v.extend_from_slice(&self.data);
        v
    }

    /// Decodes; `with_data` as for [`RegionAccess::decode`].
    pub fn decode(
        what: &'static str,
        payload: &[u8],
        with_data: bool,
    ) -> Result<Self, DecodeError> {
        let mut r = Reader::new(what, payload, Self::SIZE)?;
        let address = r.get()?;
        let count = r.get()?;
        let data = r.rest();
        expect_data(
            what,
            payload,
            Self::SIZE,
            data,
            if with_data { count } else { 0 },
        )?;
        Ok(DmaAccess {
            address,
            count,
            data: data.to_vec(),
        })
    }
}

// ------------------------------------------------------- REGION_WRITE_MULTI

wire_struct! {
    /// One write of a `REGION_WRITE_MULTI` request (24 bytes on the wire).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct WriteOne {
        /// Offset in the region.
        pub offset: u64,
        /// Region index.
        pub region: u32,
        /// Bytes to write (1..=8).
        pub count: u32,
        /// The data (first `count` bytes used).
        pub data: [u8; 8],
    }
}

/// `VFIO_USER_REGION_WRITE_MULTI` request: wr_cnt u64 + wr_cnt × 24 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionWriteMulti {
    /// The writes.
    pub writes: Vec<WriteOne>,
}

impl RegionWriteMulti {
    /// Size of one entry.
    pub const ENTRY_SIZE: usize = <WriteOne as Wire>::SIZE;

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + self.writes.len() * Self::ENTRY_SIZE);
        v.put(self.writes.len() as u64);
        v.put_all(&self.writes);
        v
    }

    /// Decodes: the payload must hold exactly `wr_cnt` entries, each with
    /// `1 <= count <= 8`.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let w = "REGION_WRITE_MULTI";
        let mut r = Reader::new(w, payload, 8)?;
        let n = usize::try_from(r.get::<u64>()?).unwrap_or(usize::MAX);
        let entries = n.saturating_mul(Self::ENTRY_SIZE);
        if r.remaining() != entries {
            return Err(DecodeError::length(
                w,
                8usize.saturating_add(entries),
                payload.len(),
            ));
        }
        let writes: Vec<WriteOne> = r.list(n)?;
        if let Some(bad) = writes
            .iter()
            .find(|x| x.count == 0 || x.count > WRITE_MULTI_MAX_COUNT)
        {
            return Err(DecodeError::invalid(
                w,
                format!("write count {}", bad.count),
            ));
        }
        Ok(RegionWriteMulti { writes })
    }

    /// Encodes the reply (`wr_cnt` completed).
    pub fn encode_reply(done: u64) -> Vec<u8> {
        encode_wire(&done)
    }

    /// Decodes the reply.
    pub fn decode_reply(payload: &[u8]) -> Result<u64, DecodeError> {
        decode_exact("REGION_WRITE_MULTI reply", payload)
    }
}

// -------------------------------------------- SIDECAR_GET_DEVICE_DESC (ext)

/// `SIDECAR_GET_DEVICE_DESC` request: argsz u32 + 4 reserved bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceDescRequest {
    /// Maximum reply payload size.
    pub argsz: u32,
}

impl DeviceDescRequest {
    /// Payload size.
    pub const SIZE: usize = 8;
    const NAME: &'static str = "SIDECAR_GET_DEVICE_DESC";

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::SIZE);
        v.put(self.argsz);
        v.put(0u32);
        v
    }

    /// Decodes (the pad is ignored).
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::exact(Self::NAME, payload, Self::SIZE)?;
        Ok(DeviceDescRequest { argsz: r.get()? })
    }

    /// argsz must hold at least the 16-byte fixed reply.
    pub fn is_valid(&self) -> Result<(), DecodeError> {
        check_argsz(Self::NAME, self.argsz, DeviceDescReply::FIXED)
    }
}

/// `SIDECAR_GET_DEVICE_DESC` reply: argsz, json_len, dtb_len, reserved (u32
/// each), then `json_len` bytes of JSON and `dtb_len` bytes of DTB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceDescReply {
    /// Size of the full reply; larger than received = truncated (no payload).
    pub argsz: u32,
    /// The JSON ([`crate::ext::DeviceDescription`]).
    pub json: Vec<u8>,
    /// The device tree blob (may be empty).
    pub dtb: Vec<u8>,
}

impl DeviceDescReply {
    /// Size of the fixed part.
    pub const FIXED: usize = 16;

    /// Encodes for a client that allowed `client_argsz` bytes; too small: the
    /// fixed part only, with argsz = size needed and both lengths 0.
    pub fn encode(json: &[u8], dtb: &[u8], client_argsz: u32) -> Vec<u8> {
        let full = Self::FIXED + json.len() + dtb.len();
        let include = client_argsz as usize >= full;
        let (json, dtb): (&[u8], &[u8]) = if include { (json, dtb) } else { (&[], &[]) };
        let mut v = Vec::with_capacity(if include { full } else { Self::FIXED });
        v.put(len_u32(full));
        v.put(len_u32(json.len()));
        v.put(len_u32(dtb.len()));
        v.put(0u32); // reserved
        v.extend_from_slice(json);
        v.extend_from_slice(dtb);
        v
    }

    /// Decodes; the lengths must add up to the payload exactly.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let w = "SIDECAR_GET_DEVICE_DESC reply";
        let mut r = Reader::new(w, payload, Self::FIXED)?;
        let argsz = r.get()?;
        let json_len = r.get::<u32>()? as usize;
        let dtb_len = r.get::<u32>()? as usize;
        let _reserved = r.get::<u32>()?;
        if json_len.saturating_add(dtb_len) != r.remaining() {
            return Err(DecodeError::length(
                w,
                Self::FIXED.saturating_add(json_len).saturating_add(dtb_len),
                payload.len(),
            ));
        }
        let json = r.bytes(json_len)?.to_vec();
        let dtb = r.bytes(dtb_len)?.to_vec();
        Ok(DeviceDescReply { argsz, json, dtb })
    }
}

// ---------------------------------------------- SIDECAR_GET_IRQ_STATS (ext)

wire_struct! {
    /// `SIDECAR_GET_IRQ_STATS` request: argsz, index, start, count (u32 each;
    /// also the fixed part of the reply).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct IrqStatsRequest {
        /// Maximum reply payload size.
        pub argsz: u32,
        /// IRQ index.
        pub index: u32,
        /// First vector.
        pub start: u32,
        /// Number of vectors.
        pub count: u32,
    }
}
fixed_payload!(IrqStatsRequest, "SIDECAR_GET_IRQ_STATS", 16);

impl IrqStatsRequest {
    /// A request with argsz sized for the full reply.
    pub fn new(index: u32, start: u32, count: u32) -> Self {
        IrqStatsRequest {
            argsz: len_u32(IrqStatsReply::full_size(count as usize)),
            index,
            start,
            count,
        }
    }

    /// argsz >= 16, `start + count` does not overflow, and the full reply
    /// fits in `max_payload` bytes.
    pub fn is_valid(&self, max_payload: usize) -> Result<(), DecodeError> {
        let w = Self::NAME;
        check_argsz(w, self.argsz, Self::SIZE)?;
        if self.start.checked_add(self.count).is_none() {
            return Err(DecodeError::invalid(w, "start + count overflows"));
        }
        if IrqStatsReply::full_size(self.count as usize) > max_payload {
            return Err(DecodeError::Limit {
                what: w,
                reason: format!("count {} too large for one message", self.count),
            });
        }
        Ok(())
    }
}

wire_struct!(impl IrqStats {
    device_events: u64,
    host_interrupts: u64,
    unmasks: u64,
    refires: u64,
});

/// `SIDECAR_GET_IRQ_STATS` reply: argsz, index, start, count, then count × 32
/// bytes (device_events, host_interrupts, unmasks, refires: u64 each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrqStatsReply {
    /// Size of the full reply; larger than received = truncated (count 0).
    pub argsz: u32,
    /// IRQ index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// The counters, one per vector from `start`.
    pub stats: Vec<IrqStats>,
}

impl IrqStatsReply {
    /// Size of one entry.
    pub const ENTRY_SIZE: usize = <IrqStats as Wire>::SIZE;

    /// Size of the full reply for `n` vectors.
    pub fn full_size(n: usize) -> usize {
        IrqStatsRequest::SIZE.saturating_add(n.saturating_mul(Self::ENTRY_SIZE))
    }

    /// Encodes (the caller handles a too-small argsz by passing no stats and
    /// setting `argsz` to the size needed).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::full_size(self.stats.len()));
        v.put(IrqStatsRequest {
            argsz: self.argsz,
            index: self.index,
            start: self.start,
            count: len_u32(self.stats.len()),
        });
        v.put_all(&self.stats);
        v
    }

    /// Decodes.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let w = "SIDECAR_GET_IRQ_STATS reply";
        let mut r = Reader::new(w, payload, IrqStatsRequest::SIZE)?;
        let fixed: IrqStatsRequest = r.get()?;
        let count = fixed.count as usize;
        if r.remaining() != count.saturating_mul(Self::ENTRY_SIZE) {
            return Err(DecodeError::length(
                w,
                Self::full_size(count),
                payload.len(),
            ));
        }
        Ok(IrqStatsReply {
            argsz: fixed.argsz,
            index: fixed.index,
            start: fixed.start,
            stats: r.list(count)?,
        })
    }
}

// Entry sizes of the spec and of the extension.
const _: () = assert!(
    <SparseArea as Wire>::SIZE == 16
        && RegionInfoRequest::SIZE == 32
        && <CapHeader as Wire>::SIZE == 8
        && RegionWriteMulti::ENTRY_SIZE == 24
        && IrqStatsReply::ENTRY_SIZE == 32
);

#[cfg(test)]
mod tests;
