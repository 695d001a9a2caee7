//! The DMA memory table: the client's memory, mmapped into this process.
//!
//! Each `DMA_MAP` carries an fd, an offset in it, an IOVA, a size and permission
//! flags. The table mmaps `fd[offset..offset+size]` `MAP_SHARED` (with
//! `PROT_READ`/`PROT_WRITE` as the permissions allow) through vm-memory's
//! [`MmapRegion`], and keeps the entry in a `BTreeMap` keyed by IOVA, so lookups
//! are O(log n).
//!
//! Rules (each violation is an error with the errno Linux VFIO type1 or the
//! vfio-user spec gives):
//! * IOVA, size and file offset are 4 KiB aligned, size > 0, `iova + size` does not
//!   wrap past 2^64 (`EINVAL`);
//! * no overlap with an existing entry (`EEXIST`, as the spec says);
//! * at most `limit` entries (default 65535 = type1's `dma_entry_limit`; QEMU refuses a larger `max_dma_maps`; `ENOSPC`);
//! * the fd must be mmap-able and, for a regular file or memfd, long enough
//!   (`EINVAL`); the fd of one of the device's own regions is refused (`EINVAL`):
//!   device MMIO is never DMA-mapped as RAM. The check compares `st_dev`/`st_ino`.
//!   Note: every anonymous-inode fd (a VFIO device fd, an eventfd) shares one inode,
//!   so once a VFIO device fd is registered no anon-inode fd can be DMA-mapped —
//!   none of them is RAM anyway;
//! * a regular file must live on a filesystem whose files are RAM or local disk
//!   pages (tmpfs — memfds and POSIX shm —, hugetlbfs, ramfs, ext2/3/4, xfs,
//!   btrfs, f2fs, overlayfs, bcachefs, zfs; by `fstatfs` `f_type`): sysfs,
//!   procfs, debugfs and the other kernel interfaces are refused (a PCI BAR's
//!   sysfs `resourceN` is another device's MMIO), and so are network and
//!   userspace filesystems (NFS, 9p, FUSE — a page fault could wait on a
//!   daemon the client runs) (`EINVAL`, [`DmaError::NotRam`]);
//! * at least one of read/write/exec;
//! * [`DmaTable::unmap`] removes exactly one entry (`EINVAL` otherwise); the
//!   server's range unmap (Linux type1 rules) finds the entries with
//!   [`DmaTable::regions_in`].
//!
//! EXEC ([`prot_from_flags`], design.md §3): a client that did not negotiate the
//! extension gets upstream semantics (a readable mapping is also executable); an
//! extension client gets EXEC only if it asked for it.
//!
//! Device accesses ([`DmaMemory`]) may span adjacent mappings; every piece must be
//! mapped and carry the needed permission, otherwise nothing is transferred and a
//! [`DmaFault`] is returned (checked before the first byte moves). Bytes are
//! copied with vm-memory's volatile slices: no Rust reference to guest memory is
//! ever created, since the client can change it at any time.
//!
//! Shrinking files: a client can shrink a mapped file after `DMA_MAP`; a plain
//! load or store to a page beyond the new end raises SIGBUS and would kill this
//! process (as with vhost-user). So only mappings of memfds sealed with
//! `F_SEAL_SHRINK` (QEMU's `memory-backend-memfd` seals by default) are copied
//! with plain volatile copies; every other mapping is accessed with
//! `process_vm_readv`/`process_vm_writev` on this process, where the kernel turns
//! the bus error into `EFAULT`, which becomes a [`DmaFault`] (the device sees a
//! bus error, as hardware would). A seccomp policy must allow those two
//! syscalls (on the own pid). The seals are read *before* the size (see
//! `Backing::probe`): a client that truncates and seals its file while the
//! backend handles the DMA_MAP gets either a refused map (size) or an
//! unsealed, checked mapping — never a shrunk file treated as sealed.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

use thiserror::Error;
use vm_memory::mmap::MmapRegion;
use vm_memory::VolatileMemory;

use crate::device::{DmaAccess, DmaFault, DmaMemory, DmaProt, MappedRegion};

/// Page size every mapping is aligned to.
pub const DMA_PAGE_SIZE: u64 = 4096;
/// Default maximum number of entries.
pub const DEFAULT_DMA_LIMIT: usize = 65535;

/// vfio-user `DMA_MAP` flag: readable.
pub const DMA_FLAG_READ: u32 = 1 << 0;
/// vfio-user `DMA_MAP` flag: writeable.
pub const DMA_FLAG_WRITE: u32 = 1 << 1;
/// vfio-sidecar extension flag: device may fetch instructions (only with the
/// extension negotiated; see the protocol crate's `ext` module).
pub const DMA_FLAG_EXEC: u32 = 1 << 16;

/// Errors of the memory table.
#[derive(Debug, Error)]
pub enum DmaError {
    /// IOVA, size or offset not 4 KiB aligned.
    #[error("DMA map: iova {iova:#x}, size {size:#x}, offset {offset:#x} must be 4 KiB aligned")]
    Misaligned {
        /// IOVA.
        iova: u64,
        /// Size.
        size: u64,
        /// Offset in the fd.
        offset: u64,
    },
    /// Zero-sized mapping.
    #[error("DMA map: size must be > 0")]
    ZeroSize,
    /// `iova + size` (or `offset + size`) wraps.
    #[error("DMA map: iova {iova:#x} + size {size:#x} wraps")]
    Wrap {
        /// IOVA.
        iova: u64,
        /// Size.
        size: u64,
    },
    /// Overlaps an existing entry.
    #[error("DMA map: [{iova:#x}, +{size:#x}) overlaps existing mapping at {existing:#x}")]
    Overlap {
        /// Requested IOVA.
        iova: u64,
        /// Requested size.
        size: u64,
        /// IOVA of an overlapping entry.
        existing: u64,
    },
    /// Too many entries.
    #[error("DMA map: entry limit {0} reached")]
    Limit(usize),
    /// Flags unknown or no permission at all.
    #[error("DMA map: bad flags {0:#x}")]
    BadFlags(u32),
    /// The fd cannot back a mapping.
    #[error("DMA map: fd not mappable: {0}")]
    NotMappable(String),
    /// A regular file on a filesystem whose files are not RAM (sysfs, procfs,
    /// debugfs, FUSE, ...): e.g. a PCI BAR's sysfs `resourceN` is device MMIO.
    #[error(
        "DMA map: the fd is a file on {fs} (f_type {magic:#x}), which is not RAM \
         (only memfd, tmpfs, hugetlbfs, ramfs or local disk filesystems back guest memory)"
    )]
    NotRam {
        /// Name of the filesystem (or "unknown filesystem").
        fs: &'static str,
        /// Its `statfs.f_type`.
        magic: u64,
    },
    /// The fd is one of the device's own region fds.
    #[error("DMA map: fd refers to a device region (device MMIO is never DMA-mapped as RAM)")]
    DeviceRegionFd,
    /// `DMA_UNMAP` matched no entry exactly.
    #[error("DMA unmap: no mapping exactly at [{iova:#x}, +{size:#x})")]
    NoSuchMapping {
        /// IOVA.
        iova: u64,
        /// Size.
        size: u64,
    },
    /// mmap failed.
    #[error("DMA map: mmap failed: {0}")]
    Mmap(std::io::Error),
}

impl DmaError {
    /// The errno for the vfio-user error reply.
    pub fn errno(&self) -> i32 {
        match self {
            DmaError::Overlap { .. } => libc::EEXIST,
            DmaError::Limit(_) => libc::ENOSPC,
            DmaError::Mmap(e) => match e.raw_os_error() {
                Some(libc::ENODEV) | None => libc::EINVAL,
                Some(n) => n,
            },
            _ => libc::EINVAL,
        }
    }
}

/// Converts vfio-user `DMA_MAP` flags into permissions (design.md §3).
///
/// Without the extension a readable mapping is also executable (upstream VFIO
/// semantics) and the EXEC bit is unknown (rejected). With it, EXEC is granted only
/// when asked for.
pub fn prot_from_flags(flags: u32, extension: bool) -> Result<DmaProt, DmaError> {
    let known = if extension {
        DMA_FLAG_READ | DMA_FLAG_WRITE | DMA_FLAG_EXEC
    } else {
        DMA_FLAG_READ | DMA_FLAG_WRITE
    };
    if flags & !known != 0 {
        return Err(DmaError::BadFlags(flags));
    }
    let read = flags & DMA_FLAG_READ != 0;
    let write = flags & DMA_FLAG_WRITE != 0;
    let exec = if extension {
        flags & DMA_FLAG_EXEC != 0
    } else {
        read
    };
    if !read && !write && !exec {
        return Err(DmaError::BadFlags(flags));
    }
    Ok(DmaProt { read, write, exec })
}

/// One mmap of a client file, unmapped on drop. Accessed only through the
/// vm-memory volatile view (`region`), never through Rust references.
struct HostMap {
    region: MmapRegion,
    addr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this struct; the raw pointer
// is only used to munmap it on drop, and `MmapRegion` (Send + Sync) handles access.
unsafe impl Send for HostMap {}
// SAFETY: as above; all shared access goes through volatile copies.
unsafe impl Sync for HostMap {}

impl HostMap {
    fn new(fd: &OwnedFd, offset: u64, len: usize, prot: i32) -> Result<Self, DmaError> {
        let off = libc::off_t::try_from(offset).map_err(|_| DmaError::Wrap {
            iova: offset,
            size: len as u64,
        })?;
        // SAFETY: a fresh mapping chosen by the kernel (no MAP_FIXED), so no existing
        // memory is affected; the fd is valid for the duration of the call.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                off,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(DmaError::Mmap(std::io::Error::last_os_error()));
        }
        // SAFETY: [addr, addr+len) is the mapping we just created and own until drop
        // (the region is declared non-owning, so only our Drop unmaps it).
        let region = unsafe { MmapRegion::build_raw(addr.cast(), len, prot, libc::MAP_SHARED) };
        match region {
            Ok(region) => Ok(HostMap { region, addr, len }),
            Err(e) => {
                // SAFETY: unmapping the mapping created above, referenced nowhere else.
                unsafe { libc::munmap(addr, len) };
                Err(DmaError::NotMappable(e.to_string()))
            }
        }
    }

    fn as_ptr(&self) -> *mut u8 {
        self.region.as_ptr()
    }

    fn get_slice(
        &self,
        off: usize,
        n: usize,
    ) -> Result<vm_memory::VolatileSlice<'_, ()>, vm_memory::volatile_memory::Error> {
        self.region.get_slice(off, n)
    }

    /// The `len` bytes at `off` of the mapping as the remote iovec of
    /// [`HostMap::read_checked`]/[`HostMap::write_checked`]; `None` if they do
    /// not lie inside it.
    fn remote_iovec(&self, off: usize, len: usize) -> Option<libc::iovec> {
        if off.checked_add(len).is_none_or(|e| e > self.len) {
            return None;
        }
        Some(libc::iovec {
            // Inside the mapping: checked above.
            iov_base: self.addr.cast::<u8>().wrapping_add(off).cast(),
            iov_len: len,
        })
    }

    /// Copies `dst.len()` bytes at `off` out of the mapping through the kernel
    /// (`process_vm_readv` on ourselves): a page the file no longer backs gives
    /// an error instead of SIGBUS.
    fn read_checked(&self, off: usize, dst: &mut [u8]) -> bool {
        let Some(remote) = self.remote_iovec(off, dst.len()) else {
            return false;
        };
        let local = libc::iovec {
            iov_base: dst.as_mut_ptr().cast(),
            iov_len: dst.len(),
        };
        // SAFETY: `local` is our writable buffer; `remote` is read by the kernel
        // with fault handling (never dereferenced in user mode here).
        let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
        n >= 0 && n as usize == dst.len()
    }

    /// Copies `src` into the mapping at `off` through the kernel
    /// (`process_vm_writev` on ourselves); see [`HostMap::read_checked`].
    fn write_checked(&self, off: usize, src: &[u8]) -> bool {
        let Some(remote) = self.remote_iovec(off, src.len()) else {
            return false;
        };
        let local = libc::iovec {
            iov_base: src.as_ptr() as *mut libc::c_void,
            iov_len: src.len(),
        };
        // SAFETY: `local` is only read; the kernel writes `remote` (our shared
        // mapping, mapped writable for write-permitted entries) with fault
        // handling.
        let n = unsafe { libc::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0) };
        n >= 0 && n as usize == src.len()
    }
}

/// True if `fd` is sealed against shrinking (`F_SEAL_SHRINK`): a mapping of
/// it can never lose its backing pages.
fn sealed_against_shrink(fd: &impl AsRawFd) -> bool {
    // SAFETY: F_GET_SEALS on a borrowed fd; no memory is passed. Files that do
    // not support seals return EINVAL.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & libc::F_SEAL_SHRINK != 0
}

/// What the table learns about a DMA_MAP fd before mapping it.
struct Backing {
    st: libc::stat,
    /// Sealed against shrinking when the seals were read.
    sealed: bool,
}

impl Backing {
    /// Reads the seals BEFORE the size (issue 13 #3). The client holds the
    /// file too and may truncate and seal it at any moment: with the size
    /// read first, a truncate+seal after the size check made a shrunk file
    /// look sealed, and plain copies into the lost pages raised SIGBUS. Seals
    /// are only ever added, so seals read first are still in force when the
    /// size is read: either the seal (and the size it froze) is seen by both,
    /// or the mapping counts as unsealed and gets checked copies.
    /// `between` runs between the two reads (tests put a racing client there).
    fn probe(fd: &OwnedFd, between: impl FnOnce()) -> Result<Backing, DmaError> {
        let sealed = sealed_against_shrink(fd);
        between();
        let st = fstat(fd).map_err(|e| DmaError::NotMappable(e.to_string()))?;
        Ok(Backing { st, sealed })
    }
}

/// `statfs.f_type` of filesystems whose regular files are RAM (shmem, page
/// cache of a local disk filesystem): a DMA_MAP of a regular file elsewhere
/// is refused ([`DmaError::NotRam`]). memfds live on tmpfs (hugetlbfs with
/// `MFD_HUGETLB`), POSIX shm on tmpfs.
const RAM_FILESYSTEMS: &[(u64, &str)] = &[
    (0x0102_1994, "tmpfs"),
    (0x9584_58f6, "hugetlbfs"),
    (0x8584_58f6, "ramfs"),
    (0xef53, "ext2/ext3/ext4"),
    (0x5846_5342, "xfs"),
    (0x9123_683e, "btrfs"),
    (0xf2f5_2010, "f2fs"),
    (0x794c_7630, "overlayfs"),
    (0xca45_1a4e, "bcachefs"),
    (0x2fc1_2fc1, "zfs"),
];

/// Names of filesystems that are refused, for the error message: kernel
/// interfaces (a sysfs `resourceN` is another device's MMIO), and network or
/// userspace filesystems (a page fault could wait on a peer, e.g. a FUSE
/// daemon run by the client).
const OTHER_FILESYSTEMS: &[(u64, &str)] = &[
    (0x6265_6572, "sysfs"),
    (0x9fa0, "proc"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x7363_6673, "securityfs"),
    (0x6265_6570, "configfs"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0xcafe_4a11, "bpf"),
    (0x6165_676c, "pstore"),
    (0xde5e_81e4, "efivarfs"),
    (0x6573_5546, "fuse"),
    (0x6969, "nfs"),
    (0xff53_4d42, "cifs"),
    (0x0102_1997, "9p"),
];

/// `Ok` if the filesystem holding `fd` keeps its regular files in RAM or on a
/// local disk ([`RAM_FILESYSTEMS`]).
fn check_ram_filesystem(fd: &impl AsRawFd) -> Result<(), DmaError> {
    let mut sfs = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: fstatfs writes at most one `struct statfs` into the buffer we
    // own; the fd is borrowed and open for the call.
    let rc = unsafe { libc::fstatfs(fd.as_raw_fd(), sfs.as_mut_ptr()) };
    if rc != 0 {
        return Err(DmaError::NotMappable(format!(
            "fstatfs: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: fstatfs returned 0, so it initialised the structure.
    // f_type's integer type differs between targets; it is a 32-bit magic.
    #[allow(clippy::unnecessary_cast)]
    let magic = unsafe { sfs.assume_init() }.f_type as u64 & 0xffff_ffff;
    if RAM_FILESYSTEMS.iter().any(|&(m, _)| m == magic) {
        return Ok(());
    }
    let fs = OTHER_FILESYSTEMS
        .iter()
        .find(|&&(m, _)| m == magic)
        .map_or("an unknown filesystem", |&(_, n)| n);
    Err(DmaError::NotRam { fs, magic })
}

impl Drop for HostMap {
    fn drop(&mut self) {
        // SAFETY: we created this mapping in `new`; the non-owning `region` view is
        // dropped with us and no slice into it outlives `&self`.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

struct DmaEntry {
    size: u64,
    prot: DmaProt,
    map: HostMap,
    /// The file cannot shrink: plain volatile copies are safe.
    sealed: bool,
}

impl std::fmt::Debug for DmaEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaEntry")
            .field("size", &self.size)
            .field("prot", &self.prot)
            .field("host", &self.map.as_ptr())
            .finish()
    }
}

/// Identity of a file (`st_dev`, `st_ino`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
}

fn fstat(fd: &impl AsRawFd) -> std::io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: fstat writes at most one `struct stat` into the buffer we own; the fd
    // is borrowed and stays open for the call.
    let rc = unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fstat returned 0, so it initialised the structure.
    Ok(unsafe { st.assume_init() })
}

impl FileId {
    /// Identity of an open fd.
    pub fn of(fd: &impl AsRawFd) -> std::io::Result<FileId> {
        let st = fstat(fd)?;
        Ok(FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }
}

/// The DMA memory table of one client.
#[derive(Debug)]
pub struct DmaTable {
    entries: BTreeMap<u64, DmaEntry>,
    limit: usize,
    forbidden: Vec<FileId>,
}

impl Default for DmaTable {
    fn default() -> Self {
        Self::new(DEFAULT_DMA_LIMIT)
    }
}

/// The kernel subsystem of a character device (`/sys/dev/char/M:m/subsystem`
/// points at e.g. `.../class/dax` or `.../class/mem`), if sysfs tells.
fn char_dev_subsystem(rdev: libc::dev_t) -> Option<String> {
    let link = std::fs::read_link(format!(
        "/sys/dev/char/{}:{}/subsystem",
        libc::major(rdev),
        libc::minor(rdev)
    ))
    .ok()?;
    link.file_name().map(|n| n.to_string_lossy().into_owned())
}

fn is_aligned(v: u64) -> bool {
    v % DMA_PAGE_SIZE == 0
}

impl DmaTable {
    /// An empty table allowing at most `limit` entries.
    pub fn new(limit: usize) -> Self {
        DmaTable {
            entries: BTreeMap::new(),
            limit,
            forbidden: Vec::new(),
        }
    }

    /// Changes the entry limit (after negotiation). Existing entries stay.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// The entry limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Refuses future maps of the file behind `fd` (a device region fd).
    pub fn forbid_file(&mut self, fd: &impl AsRawFd) -> std::io::Result<()> {
        let id = FileId::of(fd)?;
        if !self.forbidden.contains(&id) {
            self.forbidden.push(id);
        }
        Ok(())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn overlapping(&self, iova: u64, end: u64) -> Option<u64> {
        // The entry with the greatest start below `end` is the only candidate that
        // can overlap [iova, end): entries are disjoint and sorted.
        let (&start, e) = self.entries.range(..end).next_back()?;
        // `start + size` cannot wrap: checked when the entry was added.
        if start + e.size > iova {
            Some(start)
        } else {
            None
        }
    }

    /// Adds a mapping of `fd[offset..offset+size]` at `iova`. The fd is consumed
    /// (closed when the entry goes).
    pub fn map(
        &mut self,
        iova: u64,
        size: u64,
        fd: OwnedFd,
        offset: u64,
        prot: DmaProt,
    ) -> Result<MappedRegion, DmaError> {
        self.map_probed(iova, size, fd, offset, prot, || {})
    }

    /// [`DmaTable::map`], running `between` between reading the fd's seals
    /// and its size (see [`Backing::probe`]).
    fn map_probed(
        &mut self,
        iova: u64,
        size: u64,
        fd: OwnedFd,
        offset: u64,
        prot: DmaProt,
        between: impl FnOnce(),
    ) -> Result<MappedRegion, DmaError> {
        if size == 0 {
            return Err(DmaError::ZeroSize);
        }
        if !is_aligned(iova) || !is_aligned(size) || !is_aligned(offset) {
            return Err(DmaError::Misaligned { iova, size, offset });
        }
        let end = iova
            .checked_add(size)
            .ok_or(DmaError::Wrap { iova, size })?;
        let file_end = offset
            .checked_add(size)
            .filter(|e| *e <= i64::MAX as u64)
            .ok_or(DmaError::Wrap { iova, size })?;
        if !(prot.read || prot.write || prot.exec) {
            return Err(DmaError::BadFlags(0));
        }
        if let Some(existing) = self.overlapping(iova, end) {
            return Err(DmaError::Overlap {
                iova,
                size,
                existing,
            });
        }
        if self.entries.len() >= self.limit {
            return Err(DmaError::Limit(self.limit));
        }
        let len = usize::try_from(size).map_err(|_| DmaError::Wrap { iova, size })?;
        let Backing { st, sealed } = Backing::probe(&fd, between)?;
        let id = FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        };
        if self.forbidden.contains(&id) {
            return Err(DmaError::DeviceRegionFd);
        }
        let fmt = st.st_mode & libc::S_IFMT;
        if fmt != libc::S_IFREG && fmt != libc::S_IFCHR && fmt != libc::S_IFBLK {
            return Err(DmaError::NotMappable(format!(
                "file type {fmt:#o} cannot back guest memory"
            )));
        }
        if fmt == libc::S_IFREG {
            check_ram_filesystem(&fd)?;
            if st.st_size < 0 || (st.st_size as u64) < file_end {
                return Err(DmaError::NotMappable(format!(
                    "file is {} bytes, mapping needs {file_end}",
                    st.st_size
                )));
            }
        }
        // A character device may be device MMIO (a VFIO cdev or device fd of
        // another backend, /dev/mem, UIO): only device-DAX memory is RAM.
        if fmt == libc::S_IFCHR {
            let subsystem = char_dev_subsystem(st.st_rdev);
            if subsystem.as_deref() != Some("dax") {
                return Err(DmaError::NotMappable(format!(
                    "character device {}:{} ({}) is not RAM: only device-DAX may back guest memory",
                    libc::major(st.st_rdev),
                    libc::minor(st.st_rdev),
                    subsystem.as_deref().unwrap_or("unknown subsystem")
                )));
            }
        }
        let mut mprot = 0;
        if prot.read || prot.exec {
            mprot |= libc::PROT_READ;
        }
        if prot.write {
            mprot |= libc::PROT_WRITE;
        }
        let map = HostMap::new(&fd, offset, len, mprot)?;
        let sealed = fmt == libc::S_IFREG && sealed;
        if !sealed {
            log::debug!("DMA map {iova:#x}: file not sealed against shrinking, checked copies");
        }
        // The mapping keeps the file alive; the fd itself is closed here.
        drop(fd);
        let region = MappedRegion {
            iova,
            size,
            host_addr: map.as_ptr() as u64,
            prot,
        };
        self.entries.insert(
            iova,
            DmaEntry {
                size,
                prot,
                map,
                sealed,
            },
        );
        Ok(region)
    }

    /// Removes the entry exactly at `[iova, iova+size)`; the host mapping is
    /// unmapped and the fd closed.
    pub fn unmap(&mut self, iova: u64, size: u64) -> Result<MappedRegion, DmaError> {
        match self.entries.get(&iova) {
            Some(e) if e.size == size => {}
            _ => return Err(DmaError::NoSuchMapping { iova, size }),
        }
        let e = self
            .entries
            .remove(&iova)
            .ok_or(DmaError::NoSuchMapping { iova, size })?;
        Ok(MappedRegion {
            iova,
            size,
            host_addr: e.map.as_ptr() as u64,
            prot: e.prot,
        })
    }

    /// The entry exactly at `[iova, iova+size)`, if any (for the device
    /// notification before [`DmaTable::unmap`]).
    pub fn get_exact(&self, iova: u64, size: u64) -> Option<MappedRegion> {
        self.entries
            .get(&iova)
            .filter(|e| e.size == size)
            .map(|e| MappedRegion {
                iova,
                size,
                host_addr: e.map.as_ptr() as u64,
                prot: e.prot,
            })
    }

    /// All entries, in IOVA order.
    pub fn regions(&self) -> Vec<MappedRegion> {
        self.entries
            .iter()
            .map(|(&iova, e)| MappedRegion {
                iova,
                size: e.size,
                host_addr: e.map.as_ptr() as u64,
                prot: e.prot,
            })
            .collect()
    }

    /// Removes the entry at exactly `iova`/`size` from the table WITHOUT
    /// unmapping its host memory, which stays mapped (and its fd open) for the
    /// life of the process: for a mapping the device or IOMMU failed to drop,
    /// where freeing the pages could let the device write into reused memory.
    /// Returns the number of bytes kept mapped.
    pub fn quarantine(&mut self, iova: u64, size: u64) -> Option<u64> {
        match self.entries.get(&iova) {
            Some(e) if e.size == size => {}
            _ => return None,
        }
        let e = self.entries.remove(&iova)?;
        std::mem::forget(e);
        Some(size)
    }

    /// Removes every entry (unmap-all, disconnect).
    pub fn clear(&mut self) -> Vec<MappedRegion> {
        let all = self.regions();
        self.entries.clear();
        all
    }

    /// The entry containing `iova`, if any: (start, entry).
    fn lookup(&self, iova: u64) -> Option<(u64, &DmaEntry)> {
        let (&start, e) = self.entries.range(..=iova).next_back()?;
        if iova - start < e.size {
            Some((start, e))
        } else {
            None
        }
    }

    /// The mapping containing `iova` (for tests and diagnostics).
    pub fn find(&self, iova: u64) -> Option<MappedRegion> {
        self.lookup(iova).map(|(start, e)| MappedRegion {
            iova: start,
            size: e.size,
            host_addr: e.map.as_ptr() as u64,
            prot: e.prot,
        })
    }

    /// Every entry that intersects `[start, end)`, in IOVA order (for a
    /// range unmap).
    pub fn regions_in(&self, start: u64, end: u64) -> Vec<MappedRegion> {
        let before = self
            .entries
            .range(..start)
            .next_back()
            .filter(|(&s, e)| s + e.size > start);
        before
            .into_iter()
            .chain(self.entries.range(start..end))
            .map(|(&iova, e)| MappedRegion {
                iova,
                size: e.size,
                host_addr: e.map.as_ptr() as u64,
                prot: e.prot,
            })
            .collect()
    }

    /// The piece of `[cur, end)` that starts at `cur`: (entry, offset in entry,
    /// piece length), checking mapping and permission.
    fn piece(
        &self,
        cur: u64,
        end: u64,
        access: DmaAccess,
        unmapped: DmaFault,
        denied: DmaFault,
    ) -> Result<(&DmaEntry, usize, usize), DmaFault> {
        let (start, e) = self.lookup(cur).ok_or(unmapped)?;
        let ok = match access {
            DmaAccess::Fetch => e.prot.exec,
            DmaAccess::Read => e.prot.read,
            DmaAccess::Write => e.prot.write,
        };
        if !ok {
            return Err(denied);
        }
        let off = cur - start;
        let piece = (e.size - off).min(end - cur);
        // Both fit in usize: the entry's size was checked at map time.
        Ok((e, off as usize, piece as usize))
    }

    /// Resolves `[iova, iova+len)` piece by piece without allocating: every
    /// piece's mapping and permission is checked first (nothing is copied when
    /// any piece faults), then `copy(entry, offset, done, n)` runs per piece.
    /// The common case (the access lies in one mapping) takes one lookup.
    fn for_each_piece(
        &self,
        iova: u64,
        len: usize,
        access: DmaAccess,
        mut copy: impl FnMut(&DmaEntry, usize, usize, usize) -> Result<(), DmaFault>,
    ) -> Result<(), DmaFault> {
        let unmapped = DmaFault::Unmapped { access, iova, len };
        let denied = DmaFault::Permission { access, iova, len };
        if len == 0 {
            return Ok(());
        }
        let end = iova.checked_add(len as u64).ok_or(unmapped)?;
        let (e, off, n) = self.piece(iova, end, access, unmapped, denied)?;
        if n == len {
            return copy(e, off, 0, n);
        }
        // Spanning access: check every piece, then copy.
        let mut cur = iova + n as u64;
        while cur < end {
            let (_, _, n) = self.piece(cur, end, access, unmapped, denied)?;
            cur += n as u64;
        }
        let mut cur = iova;
        let mut done = 0usize;
        while cur < end {
            let (e, off, n) = self.piece(cur, end, access, unmapped, denied)?;
            copy(e, off, done, n)?;
            done += n;
            cur += n as u64;
        }
        Ok(())
    }
}

impl DmaMemory for DmaTable {
    fn dma_read(&self, iova: u64, buf: &mut [u8], access: DmaAccess) -> Result<(), DmaFault> {
        let len = buf.len();
        let fault = DmaFault::Unmapped { access, iova, len };
        let access = if access == DmaAccess::Write {
            DmaAccess::Read
        } else {
            access
        };
        self.for_each_piece(iova, len, access, |e, off, done, n| {
            let dst = buf.get_mut(done..done + n).ok_or(fault)?;
            if e.sealed {
                let slice = e.map.get_slice(off, n).map_err(|_| fault)?;
                slice.copy_to(dst);
            } else if !e.map.read_checked(off, dst) {
                log::debug!("DMA read at {iova:#x}: backing file shrunk");
                return Err(fault);
            }
            Ok(())
        })
    }

    fn dma_write(&self, iova: u64, data: &[u8]) -> Result<(), DmaFault> {
        let len = data.len();
        let fault = DmaFault::Unmapped {
            access: DmaAccess::Write,
            iova,
            len,
        };
        self.for_each_piece(iova, len, DmaAccess::Write, |e, off, done, n| {
            let src = data.get(done..done + n).ok_or(fault)?;
            if e.sealed {
                let slice = e.map.get_slice(off, n).map_err(|_| fault)?;
                slice.copy_from(src);
            } else if !e.map.write_checked(off, src) {
                log::debug!("DMA write at {iova:#x}: backing file shrunk");
                return Err(fault);
            }
            Ok(())
        })
    }
}

/// Sealing flags of [`sealed_memfd`]: the size can never change again.
pub const SIZE_SEALS: i32 = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// A memfd of `size` bytes sealed with [`SIZE_SEALS`]: a [`DmaTable`] (or a
/// model) may access it through its own mapping, since no holder of the fd
/// can shrink it under that mapping (QEMU's `memory-backend-memfd` seals
/// guest RAM the same way).
pub fn sealed_memfd(name: &str, size: u64) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    let cname = std::ffi::CString::new(name)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: memfd_create reads the NUL-terminated name we own and returns a new fd.
    let fd =
        unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a freshly created descriptor nobody else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(size)?;
    // SAFETY: F_ADD_SEALS on our own fd; no memory is passed.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, SIZE_SEALS) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}

/// Test/host helper: a memfd of `size` bytes, not sealed (a [`DmaTable`]
/// reaches it with checked copies; see [`sealed_memfd`]).
pub fn memfd(name: &str, size: u64) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    let cname = std::ffi::CString::new(name)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: memfd_create reads the NUL-terminated name we own and returns a new fd.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a freshly created descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = File::from(fd);
    file.set_len(size)?;
    Ok(OwnedFd::from(file))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    const RW: DmaProt = DmaProt {
        read: true,
        write: true,
        exec: false,
    };

    fn mfd(size: u64) -> OwnedFd {
        memfd("dma-test", size).unwrap()
    }

    #[test]
    fn character_devices_other_than_dax_are_refused() {
        // /dev/zero mmaps fine, but a character device may be device MMIO
        // (another backend's VFIO cdev, /dev/mem): only device-DAX is RAM.
        let zero = File::options()
            .read(true)
            .write(true)
            .open("/dev/zero")
            .unwrap();
        let mut t = DmaTable::default();
        let e = t.map(0x10000, 0x1000, zero.into(), 0, RW).unwrap_err();
        assert!(
            matches!(&e, DmaError::NotMappable(m) if m.contains("only device-DAX")),
            "{e}"
        );
        assert!(t.is_empty());
    }

    #[test]
    fn shrunk_unsealed_memfd_faults_instead_of_sigbus() {
        let fd = mfd(0x4000);
        let file = File::from(fd.try_clone().unwrap());
        file.write_all_at(b"early", 0x10).unwrap();
        let mut t = DmaTable::default();
        t.map(0x10000, 0x4000, fd, 0, RW).unwrap();
        // The client shrinks the file under the mapping.
        file.set_len(0x1000).unwrap();
        let mut buf = [0u8; 8];
        // Still backed: works.
        t.dma_read(0x10010, &mut buf[..5], DmaAccess::Read).unwrap();
        assert_eq!(&buf[..5], b"early");
        t.dma_write(0x10020, b"ok").unwrap();
        // Beyond the new end: a DMA fault, not SIGBUS (which kills the test).
        assert!(t.dma_read(0x12000, &mut buf, DmaAccess::Read).is_err());
        assert!(t.dma_read(0x10ffc, &mut buf, DmaAccess::Fetch).is_err());
        assert!(t.dma_write(0x13000, b"boom").is_err());
        // Growing it back makes the pages usable again.
        file.set_len(0x4000).unwrap();
        t.dma_write(0x13000, b"back").unwrap();
        t.dma_read(0x13000, &mut buf[..4], DmaAccess::Read).unwrap();
        assert_eq!(&buf[..4], b"back");
    }

    /// A memfd that allows sealing, `size` bytes, no seal yet.
    fn sealable(size: u64) -> OwnedFd {
        use std::os::fd::FromRawFd;
        // SAFETY: memfd_create with a static NUL-terminated name; new fd.
        let raw = unsafe {
            libc::memfd_create(
                c"sealable".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        assert!(raw >= 0);
        // SAFETY: fresh fd, owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        File::from(fd.try_clone().unwrap()).set_len(size).unwrap();
        fd
    }

    /// Issue 13 #3: the client truncates and seals between two of the
    /// table's reads. Seals are read first, so the shrunk file is refused by
    /// the size check that follows, and a file sealed (not shrunk) after the
    /// seal read counts as unsealed (checked copies) — never the reverse.
    #[test]
    fn seals_are_read_before_the_size() {
        let fd = sealable(0x10000);
        let client = fd.try_clone().unwrap();
        let mut t = DmaTable::default();
        let e = t
            .map_probed(0x10000, 0x10000, fd, 0, RW, || {
                // SAFETY: ftruncate/F_ADD_SEALS on our own memfd.
                unsafe {
                    assert_eq!(libc::ftruncate(client.as_raw_fd(), 0x1000), 0);
                    assert_eq!(
                        libc::fcntl(client.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK),
                        0
                    );
                }
            })
            .unwrap_err();
        assert!(
            e.to_string().contains("file is 4096 bytes"),
            "shrunk before the size check: refused ({e})"
        );
        let fd = sealable(0x2000);
        let client = fd.try_clone().unwrap();
        t.map_probed(0x10000, 0x2000, fd, 0, RW, || {
            // SAFETY: F_ADD_SEALS on our own memfd.
            let rc =
                unsafe { libc::fcntl(client.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
            assert_eq!(rc, 0);
        })
        .unwrap();
        assert!(
            !t.entries.get(&0x10000).unwrap().sealed,
            "sealed after the seal read: treated as unsealed"
        );
        // The seal holds from now on: the file cannot shrink any more.
        // SAFETY: ftruncate on our own memfd (refused by the seal).
        assert_ne!(unsafe { libc::ftruncate(client.as_raw_fd(), 0) }, 0);
    }

    #[test]
    fn regular_files_must_be_on_a_ram_or_disk_filesystem() {
        let mut t = DmaTable::default();
        for path in [
            "/proc/self/stat",
            "/proc/version",
            "/sys/devices/system/cpu/online",
        ] {
            let Ok(f) = File::open(path) else { continue };
            let e = t.map(0, 0x1000, OwnedFd::from(f), 0, RW).unwrap_err();
            assert!(matches!(e, DmaError::NotRam { .. }), "{path}: {e}");
            assert_eq!(e.errno(), libc::EINVAL);
        }
        let e = t
            .map(
                0,
                0x1000,
                OwnedFd::from(File::open("/proc/version").unwrap()),
                0,
                RW,
            )
            .unwrap_err();
        assert!(
            e.to_string().contains("file on proc (f_type 0x9fa0)"),
            "{e}"
        );
        // memfd (tmpfs) and a file in the temp directory are fine.
        t.map(0, 0x1000, mfd(0x1000), 0, RW).unwrap();
        let p = std::env::temp_dir().join(format!("dma-disk-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        f.set_len(0x1000).unwrap();
        let _ = std::fs::remove_file(&p);
        t.map(0x1000, 0x1000, OwnedFd::from(f), 0, RW).unwrap();
    }

    #[test]
    fn sealed_memfd_uses_plain_copies() {
        use std::os::fd::FromRawFd;
        // SAFETY: memfd_create with a static NUL-terminated name; new fd.
        let raw = unsafe {
            libc::memfd_create(
                c"sealed".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        assert!(raw >= 0);
        // SAFETY: fresh fd, owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        File::from(fd.try_clone().unwrap()).set_len(0x2000).unwrap();
        // SAFETY: F_ADD_SEALS on our memfd; no memory passed.
        let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
        assert_eq!(rc, 0);
        let mut t = DmaTable::default();
        t.map(0x10000, 0x2000, fd, 0, RW).unwrap();
        assert!(t.entries.get(&0x10000).unwrap().sealed);
        t.dma_write(0x10000, b"x").unwrap();
        let mut b = [0u8; 1];
        t.dma_read(0x10000, &mut b, DmaAccess::Read).unwrap();
        assert_eq!(&b, b"x");
        // An unsealed memfd takes the checked path.
        let mut t2 = DmaTable::default();
        t2.map(0x10000, 0x2000, mfd(0x2000), 0, RW).unwrap();
        assert!(!t2.entries.get(&0x10000).unwrap().sealed);
    }

    #[test]
    fn map_read_write_through_memfd() {
        let fd = mfd(0x2000);
        let file = File::from(fd.try_clone().unwrap());
        let mut t = DmaTable::default();
        let r = t.map(0x10000, 0x2000, fd, 0, RW).unwrap();
        assert_eq!(r.iova, 0x10000);
        file.write_all_at(b"hello", 0x1000).unwrap();
        let mut buf = [0u8; 5];
        t.dma_read(0x11000, &mut buf, DmaAccess::Read).unwrap();
        assert_eq!(&buf, b"hello");
        t.dma_write(0x10ffe, b"abcd").unwrap();
        let mut back = [0u8; 4];
        file.read_exact_at(&mut back, 0xffe).unwrap();
        assert_eq!(&back, b"abcd");
    }

    #[test]
    fn file_offset_is_honoured() {
        let fd = mfd(0x3000);
        let file = File::from(fd.try_clone().unwrap());
        file.write_all_at(b"X", 0x2000).unwrap();
        let mut t = DmaTable::default();
        t.map(0x0, 0x1000, fd, 0x2000, RW).unwrap();
        let mut b = [0u8; 1];
        t.dma_read(0, &mut b, DmaAccess::Read).unwrap();
        assert_eq!(b[0], b'X');
    }

    #[test]
    fn alignment_size_and_wrap() {
        let mut t = DmaTable::default();
        assert!(matches!(
            t.map(0x1001, 0x1000, mfd(0x1000), 0, RW),
            Err(DmaError::Misaligned { .. })
        ));
        assert!(matches!(
            t.map(0x1000, 0x800, mfd(0x1000), 0, RW),
            Err(DmaError::Misaligned { .. })
        ));
        assert!(matches!(
            t.map(0x1000, 0x1000, mfd(0x2000), 0x10, RW),
            Err(DmaError::Misaligned { .. })
        ));
        assert!(matches!(
            t.map(0x1000, 0, mfd(0x1000), 0, RW),
            Err(DmaError::ZeroSize)
        ));
        assert!(matches!(
            t.map(u64::MAX - 0xfff, 0x2000, mfd(0x2000), 0, RW),
            Err(DmaError::Wrap { .. })
        ));
        assert_eq!(
            t.map(0, 0x1000, mfd(0x1000), 0, DmaProt::default())
                .unwrap_err()
                .errno(),
            libc::EINVAL
        );
        assert!(t.is_empty());
    }

    #[test]
    fn overlap_is_eexist() {
        let mut t = DmaTable::default();
        t.map(0x10000, 0x4000, mfd(0x4000), 0, RW).unwrap();
        for (iova, size) in [
            (0x10000, 0x1000),
            (0xf000, 0x2000),
            (0x13000, 0x1000),
            (0x8000, 0x10000),
        ] {
            let e = t.map(iova, size, mfd(size), 0, RW).unwrap_err();
            assert_eq!(e.errno(), libc::EEXIST, "{iova:#x}+{size:#x}");
        }
        // Adjacent on both sides is fine.
        t.map(0xf000, 0x1000, mfd(0x1000), 0, RW).unwrap();
        t.map(0x14000, 0x1000, mfd(0x1000), 0, RW).unwrap();
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn limit_is_enforced() {
        let mut t = DmaTable::new(2);
        t.map(0, 0x1000, mfd(0x1000), 0, RW).unwrap();
        t.map(0x1000, 0x1000, mfd(0x1000), 0, RW).unwrap();
        let e = t.map(0x2000, 0x1000, mfd(0x1000), 0, RW).unwrap_err();
        assert_eq!(e.errno(), libc::ENOSPC);
        t.unmap(0, 0x1000).unwrap();
        t.map(0x2000, 0x1000, mfd(0x1000), 0, RW).unwrap();
    }

    #[test]
    fn short_file_and_unmappable_fd_rejected() {
        let mut t = DmaTable::default();
        let e = t.map(0, 0x2000, mfd(0x1000), 0, RW).unwrap_err();
        assert!(matches!(e, DmaError::NotMappable(_)), "{e}");
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = t.map(0, 0x1000, OwnedFd::from(a), 0, RW).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        // SAFETY: eventfd(2) creates a new fd that we own immediately.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(efd >= 0);
        // SAFETY: efd is a fresh descriptor owned by nobody else.
        let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(efd) };
        assert_eq!(
            t.map(0, 0x1000, owned, 0, RW).unwrap_err().errno(),
            libc::EINVAL
        );
    }

    #[test]
    fn device_region_fd_refused() {
        let region = mfd(0x1000);
        let mut t = DmaTable::default();
        t.forbid_file(&region).unwrap();
        let dup = region.try_clone().unwrap();
        let e = t.map(0, 0x1000, dup, 0, RW).unwrap_err();
        assert!(matches!(e, DmaError::DeviceRegionFd));
        // Another memfd is fine.
        t.map(0, 0x1000, mfd(0x1000), 0, RW).unwrap();
    }

    #[test]
    fn unmap_exact_or_all() {
        let mut t = DmaTable::default();
        t.map(0x10000, 0x2000, mfd(0x2000), 0, RW).unwrap();
        t.map(0x20000, 0x1000, mfd(0x1000), 0, RW).unwrap();
        assert_eq!(t.unmap(0x10000, 0x1000).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(t.unmap(0x11000, 0x1000).unwrap_err().errno(), libc::EINVAL);
        let r = t.unmap(0x10000, 0x2000).unwrap();
        assert_eq!(r.size, 0x2000);
        let mut b = [0u8; 1];
        assert!(matches!(
            t.dma_read(0x10000, &mut b, DmaAccess::Read),
            Err(DmaFault::Unmapped { .. })
        ));
        t.map(0x30000, 0x1000, mfd(0x1000), 0, RW).unwrap();
        assert_eq!(t.clear().len(), 2);
        assert!(t.is_empty());
    }

    #[test]
    fn permissions_checked_like_an_smmu() {
        let mut t = DmaTable::default();
        let ro = DmaProt {
            read: true,
            write: false,
            exec: false,
        };
        t.map(0x1000, 0x1000, mfd(0x1000), 0, ro).unwrap();
        let mut b = [0u8; 4];
        t.dma_read(0x1000, &mut b, DmaAccess::Read).unwrap();
        assert!(matches!(
            t.dma_read(0x1000, &mut b, DmaAccess::Fetch),
            Err(DmaFault::Permission { .. })
        ));
        assert!(matches!(
            t.dma_write(0x1000, &b),
            Err(DmaFault::Permission { .. })
        ));
        let x = DmaProt {
            read: false,
            write: false,
            exec: true,
        };
        t.map(0x2000, 0x1000, mfd(0x1000), 0, x).unwrap();
        t.dma_read(0x2000, &mut b, DmaAccess::Fetch).unwrap();
        assert!(t.dma_read(0x2000, &mut b, DmaAccess::Read).is_err());
    }

    #[test]
    fn spanning_access_needs_every_piece() {
        let a = mfd(0x1000);
        let b = mfd(0x1000);
        let fa = File::from(a.try_clone().unwrap());
        let fb = File::from(b.try_clone().unwrap());
        fa.write_all_at(&[1, 2], 0xffe).unwrap();
        fb.write_all_at(&[3, 4], 0).unwrap();
        let mut t = DmaTable::default();
        t.map(0x1000, 0x1000, a, 0, RW).unwrap();
        t.map(0x2000, 0x1000, b, 0, RW).unwrap();
        let mut buf = [0u8; 4];
        t.dma_read(0x1ffe, &mut buf, DmaAccess::Read).unwrap();
        assert_eq!(buf, [1, 2, 3, 4]);
        // Past the end of the second mapping: fault, nothing written.
        assert!(t.dma_write(0x2ffe, &[9, 9, 9, 9]).is_err());
        let mut back = [0u8; 2];
        fb.read_exact_at(&mut back, 0xffe).unwrap();
        assert_eq!(back, [0, 0]);
        // A hole between mappings faults.
        t.map(0x4000, 0x1000, mfd(0x1000), 0, RW).unwrap();
        assert!(t.dma_read(0x2ffe, &mut buf, DmaAccess::Read).is_err());
    }

    #[test]
    fn checked_copies_stay_inside_the_mapping() {
        let fd = mfd(0x2000);
        let map = HostMap::new(&fd, 0, 0x2000, libc::PROT_READ | libc::PROT_WRITE).unwrap();
        assert!(map.write_checked(0x1ffc, &[1, 2, 3, 4]));
        let mut b = [0u8; 4];
        assert!(map.read_checked(0x1ffc, &mut b));
        assert_eq!(b, [1, 2, 3, 4]);
        // one byte past the end, and an offset that wraps, are refused
        assert!(!map.write_checked(0x1ffd, &[0; 4]));
        assert!(!map.read_checked(0x1ffd, &mut b));
        assert!(!map.read_checked(usize::MAX, &mut b));
        assert!(map.remote_iovec(0x2000, 1).is_none());
        let r = map.remote_iovec(0x1000, 0x1000).unwrap();
        assert_eq!(r.iov_base as usize, map.as_ptr() as usize + 0x1000);
        assert_eq!(r.iov_len, 0x1000);
    }

    #[test]
    fn exec_rules() {
        let plain = prot_from_flags(DMA_FLAG_READ, false).unwrap();
        assert!(plain.exec && plain.read && !plain.write);
        assert!(prot_from_flags(DMA_FLAG_READ | DMA_FLAG_EXEC, false).is_err());
        let ext = prot_from_flags(DMA_FLAG_READ, true).unwrap();
        assert!(!ext.exec);
        let ext = prot_from_flags(DMA_FLAG_READ | DMA_FLAG_EXEC, true).unwrap();
        assert!(ext.exec);
        assert!(prot_from_flags(0, true).is_err());
        assert!(prot_from_flags(1 << 7, true).is_err());
    }

    #[test]
    fn many_maps_lookup() {
        // The default limit of one-page mappings at every other page, sharing one memfd.
        let n: u64 = DEFAULT_DMA_LIMIT as u64;
        let fd = mfd(n * 0x1000);
        let file = File::from(fd.try_clone().unwrap());
        let mut t = DmaTable::default();
        // Highest first: the kernel places each new mmap just below the previous
        // one, so the host VMAs (contiguous file offsets) merge and the test stays
        // below vm.max_map_count.
        for i in (0..n).rev() {
            let iova = i * 0x2000;
            t.map(iova, 0x1000, fd.try_clone().unwrap(), i * 0x1000, RW)
                .unwrap();
        }
        assert_eq!(t.len(), n as usize);
        assert_eq!(
            t.map(n * 0x2000, 0x1000, mfd(0x1000), 0, RW)
                .unwrap_err()
                .errno(),
            libc::ENOSPC
        );
        for i in (0..n).step_by(997) {
            file.write_all_at(&(i as u32).to_le_bytes(), i * 0x1000 + 8)
                .unwrap();
            let mut b = [0u8; 4];
            t.dma_read(i * 0x2000 + 8, &mut b, DmaAccess::Read).unwrap();
            assert_eq!(u32::from_le_bytes(b), i as u32);
            assert!(t.find(i * 0x2000 + 0x1000).is_none());
            assert_eq!(t.find(i * 0x2000 + 0xfff).unwrap().iova, i * 0x2000);
        }
        t.clear();
    }
}
