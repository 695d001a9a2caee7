//! Guest RAM (one memfd, mmapped once) and the DMA memory table sent to the
//! backend (IOVA = guest-physical, fds + offsets into that memfd).

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use thiserror::Error;

use crate::layout::{Range, MCODE_RANGE, PAGE_SIZE};

/// Errors of this module.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// memfd_create/ftruncate/mmap failed.
    #[error("guest RAM: {what}: {source}")]
    Os {
        /// The failing step.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// An access outside guest RAM.
    #[error("guest RAM access at {gpa:#x} (+{len}) is outside RAM (size {size:#x})")]
    OutOfRange {
        /// Guest-physical address.
        gpa: u64,
        /// Length.
        len: usize,
        /// RAM size.
        size: u64,
    },
    /// Size not a non-zero page multiple.
    #[error("guest RAM size {0:#x} is not a non-zero multiple of the page size")]
    BadSize(u64),
}

/// A shared read/write mapping (of a file or anonymous memory) owned by this
/// process, unmapped on drop. Guest RAM, the backend's sparse areas and the
/// benchmark's pages are all one of these.
#[derive(Debug)]
pub struct SharedMapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this struct; all access
// goes through bounds-checked copies (`read`/`write`) or is handed to KVM/the
// backend, which access it concurrently by design (guest memory semantics).
unsafe impl Send for SharedMapping {}

impl SharedMapping {
    /// Maps `len` bytes of `fd` from `offset`, shared, read/write.
    pub fn of_fd(fd: BorrowedFd<'_>, offset: u64, len: usize) -> std::io::Result<Self> {
        let off = libc::off_t::try_from(offset).map_err(|_| std::io::Error::other("offset"))?;
        Self::map(len, libc::MAP_SHARED, fd.as_raw_fd(), off)
    }

    /// `len` bytes of shared anonymous memory (zero-filled; pages are only
    /// backed when touched).
    pub fn anon(len: usize) -> std::io::Result<Self> {
        Self::map(
            len,
            libc::MAP_ANONYMOUS | libc::MAP_SHARED | libc::MAP_NORESERVE,
            -1,
            0,
        )
    }

    fn map(len: usize, flags: libc::c_int, fd: RawFd, off: libc::off_t) -> std::io::Result<Self> {
        // SAFETY: a fresh mapping chosen by the kernel (no MAP_FIXED), so no
        // existing memory is affected; the result is checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| std::io::Error::other("null mapping"))?;
        Ok(SharedMapping { ptr, len })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: mmap refuses length 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first byte (for KVM slots and callers' own views).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The host address of the first byte (`userspace_addr` of a KVM slot).
    pub fn host_addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// The offset of `[at, at+len)` as a `usize`, if it lies inside.
    fn check(&self, at: u64, len: usize) -> Result<usize, MemoryError> {
        at.checked_add(len as u64)
            .filter(|&end| end <= self.len as u64)
            .and_then(|_| usize::try_from(at).ok())
            .ok_or(MemoryError::OutOfRange {
                gpa: at,
                len,
                size: self.len as u64,
            })
    }

    /// Copies the bytes at `at` into `buf`.
    pub fn read(&self, at: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let off = self.check(at, buf.len())?;
        // SAFETY: [off, off+len) is inside the mapping (checked); the guest or the
        // device may write concurrently, which only affects the values copied.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(off), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    /// Copies `data` into the mapping at `at`.
    pub fn write(&self, at: u64, data: &[u8]) -> Result<(), MemoryError> {
        let off = self.check(at, data.len())?;
        // SAFETY: [off, off+len) is inside the mapping (checked).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(off), data.len())
        };
        Ok(())
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe the mapping created in `map`, unmapped once;
        // owners that hand it to KVM drop the VM first.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Guest RAM: a memfd of `size` bytes, mapped shared into this process.
#[derive(Debug)]
pub struct GuestRam {
    fd: OwnedFd,
    map: SharedMapping,
}

impl GuestRam {
    /// Creates RAM of `size` bytes (page multiple), zero-filled.
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        if size == 0 || size % PAGE_SIZE != 0 {
            return Err(MemoryError::BadSize(size));
        }
        let os = |what| move |source| MemoryError::Os { what, source };
        let name = CString::new("vmm-shim-guest-ram").map_err(|e| os("name")(e.into()))?;
        // SAFETY: name is a valid NUL-terminated string; the flags are valid.
        let raw = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if raw < 0 {
            return Err(os("memfd_create")(std::io::Error::last_os_error()));
        }
        // SAFETY: memfd_create returned a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let len = libc::off_t::try_from(size).map_err(|_| MemoryError::BadSize(size))?;
        // SAFETY: fd is a valid memfd we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
            return Err(os("ftruncate")(std::io::Error::last_os_error()));
        }
        // Guest RAM never changes size: seal it (as QEMU's memory-backend-memfd
        // does), so the backend may access it through its own mapping instead
        // of checked copies (a sealed file cannot shrink under that mapping).
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
        // SAFETY: F_ADD_SEALS on our memfd; no memory is passed.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(os("F_ADD_SEALS")(std::io::Error::last_os_error()));
        }
        let ulen = usize::try_from(size).map_err(|_| MemoryError::BadSize(size))?;
        let map = SharedMapping::of_fd(fd.as_fd(), 0, ulen).map_err(os("mmap"))?;
        Ok(GuestRam { fd, map })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.map.len() as u64
    }

    /// The memfd backing RAM (offset 0 = GPA 0).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Host address of GPA 0 (for KVM_SET_USER_MEMORY_REGION).
    pub fn host_addr(&self) -> u64 {
        self.map.host_addr()
    }

    /// Copies guest memory at `gpa` into `buf`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.map.read(gpa, buf)
    }

    /// Copies `data` into guest memory at `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.map.write(gpa, data)
    }

    /// Reads a little-endian u32.
    pub fn read_u32(&self, gpa: u64) -> Result<u32, MemoryError> {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Writes a little-endian u32.
    pub fn write_u32(&self, gpa: u64, v: u32) -> Result<(), MemoryError> {
        self.write(gpa, &v.to_le_bytes())
    }
}

/// DMA permissions the shim asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Prot {
    /// Device may read.
    pub read: bool,
    /// Device may write.
    pub write: bool,
    /// Device may execute (only sent when the extension is negotiated).
    pub exec: bool,
}

/// One DMA_MAP the shim sends: `size` bytes of the RAM memfd at `fd_offset`,
/// visible to the device at `iova`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DmaEntry {
    /// I/O virtual address (= guest-physical address).
    pub iova: u64,
    /// Length in bytes.
    pub size: u64,
    /// Offset in the RAM memfd.
    pub fd_offset: u64,
    /// Permissions.
    pub prot: Prot,
}

/// Builds the DMA table for RAM of `ram_size` bytes at GPA 0.
///
/// Everything is READ|WRITE; `exec_range` additionally gets EXEC when
/// `exec_negotiated` (the extension was agreed). `exec_all` gives every entry
/// EXEC (still only when negotiated: without the extension the flag cannot be
/// sent and READ implies EXEC on the backend side anyway).
pub fn dma_table(
    ram_size: u64,
    exec_range: Range,
    exec_negotiated: bool,
    exec_all: bool,
) -> Vec<DmaEntry> {
    let rw = Prot {
        read: true,
        write: true,
        exec: exec_negotiated && exec_all,
    };
    let rwx = Prot {
        exec: exec_negotiated,
        ..rw
    };
    let mut out = Vec::new();
    let mut push = |start: u64, end: u64, prot: Prot| {
        if end > start {
            out.push(DmaEntry {
                iova: start,
                size: end - start,
                fd_offset: start,
                prot,
            });
        }
    };
    let xs = exec_range.start.min(ram_size);
    let xe = exec_range.end().min(ram_size);
    if rw == rwx {
        push(0, ram_size, rw);
    } else {
        push(0, xs, rw);
        push(xs, xe, rwx);
        push(xe, ram_size, rw);
    }
    out
}

/// The default table for the fixed layout.
pub fn default_dma_table(exec_negotiated: bool, exec_all: bool) -> Vec<DmaEntry> {
    dma_table(
        crate::layout::RAM_SIZE,
        MCODE_RANGE,
        exec_negotiated,
        exec_all,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::layout::*;

    fn covers(t: &[DmaEntry], size: u64) {
        let mut at = 0;
        for e in t {
            assert_eq!(e.iova, at, "contiguous, no overlap");
            assert_eq!(e.fd_offset, e.iova, "IOVA = GPA = memfd offset");
            assert!(e.prot.read && e.prot.write);
            assert_eq!(e.size % PAGE_SIZE, 0);
            at += e.size;
        }
        assert_eq!(at, size);
        assert!(
            t.iter().all(|e| e.iova + e.size <= DEVICE_BASE),
            "no MMIO in the table"
        );
    }

    #[test]
    fn only_microcode_is_exec_when_negotiated() {
        let t = default_dma_table(true, false);
        covers(&t, RAM_SIZE);
        assert_eq!(t.len(), 3);
        let exec: Vec<_> = t.iter().filter(|e| e.prot.exec).collect();
        assert_eq!(exec.len(), 1);
        assert_eq!((exec[0].iova, exec[0].size), (MCODE_BASE, MCODE_SIZE));
        // the fault page is mapped, but not executable
        let np = t
            .iter()
            .find(|e| e.iova <= NOEXEC_PAGE && NOEXEC_PAGE < e.iova + e.size)
            .unwrap();
        assert!(!np.prot.exec && np.prot.read);
    }

    #[test]
    fn exec_all_and_not_negotiated() {
        let t = default_dma_table(true, true);
        covers(&t, RAM_SIZE);
        assert_eq!(t.len(), 1);
        assert!(t[0].prot.exec);
        let t = default_dma_table(false, false);
        covers(&t, RAM_SIZE);
        assert!(
            t.iter().all(|e| !e.prot.exec),
            "EXEC never sent unnegotiated"
        );
        let t = default_dma_table(false, true);
        assert!(t.iter().all(|e| !e.prot.exec));
    }

    #[test]
    fn exec_range_at_the_edges() {
        let t = dma_table(
            0x4000,
            Range {
                start: 0,
                size: 0x1000,
            },
            true,
            false,
        );
        covers(&t, 0x4000);
        assert_eq!(t.len(), 2);
        assert!(t[0].prot.exec && !t[1].prot.exec);
        let t = dma_table(
            0x4000,
            Range {
                start: 0x3000,
                size: 0x8000,
            },
            true,
            false,
        );
        covers(&t, 0x4000);
        assert!(t[1].prot.exec && t[1].iova == 0x3000 && t[1].size == 0x1000);
    }

    #[test]
    fn ram_read_write_and_bounds() {
        let ram = GuestRam::new(0x2000).unwrap();
        ram.write_u32(0x1ffc, 0xdead_beef).unwrap();
        assert_eq!(ram.read_u32(0x1ffc).unwrap(), 0xdead_beef);
        assert!(ram.write_u32(0x1ffd, 1).is_err());
        assert!(ram.read(u64::MAX - 1, &mut [0u8; 4]).is_err());
        assert!(GuestRam::new(0x1001).is_err());
        // the memfd shows what the mapping holds (what the backend will map)
        let mut b = [0u8; 4];
        // SAFETY: pread into a local buffer from a valid fd.
        let n = unsafe { libc::pread(ram.fd().as_raw_fd(), b.as_mut_ptr().cast(), 4, 0x1ffc) };
        assert_eq!(n, 4);
        assert_eq!(u32::from_le_bytes(b), 0xdead_beef);
    }

    #[test]
    fn shared_mappings_of_a_file_offset_and_anonymous() {
        let ram = GuestRam::new(0x3000).unwrap();
        ram.write_u32(0x1004, 0x1234_5678).unwrap();
        let m = SharedMapping::of_fd(ram.fd(), 0x1000, 0x1000).unwrap();
        assert_eq!(m.len(), 0x1000);
        let mut b = [0u8; 4];
        m.read(4, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0x1234_5678, "the file at the offset");
        m.write(0xffc, &[1, 2, 3, 4]).unwrap();
        assert_eq!(
            ram.read_u32(0x1ffc).unwrap(),
            0x0403_0201,
            "one shared file"
        );
        assert!(m.write(0xffd, &[0; 4]).is_err());
        assert!(m.read(u64::MAX, &mut b).is_err());
        let a = SharedMapping::anon(0x2000).unwrap();
        a.read(0x1ffc, &mut b).unwrap();
        assert_eq!(b, [0; 4], "anonymous memory starts zeroed");
        a.write(0, &[9]).unwrap();
        assert!(a.read(0x2000, &mut [0u8; 1]).is_err());
    }

    #[test]
    fn ram_memfd_is_sealed_against_resizing() {
        let ram = GuestRam::new(0x2000).unwrap();
        let fd = ram.fd().as_raw_fd();
        // SAFETY: F_GET_SEALS on a valid fd; no memory is passed.
        let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
        assert_eq!(
            seals & (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW),
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW
        );
        // SAFETY: ftruncate on a valid fd; expected to fail.
        assert_ne!(unsafe { libc::ftruncate(fd, 0x1000) }, 0, "cannot shrink");
    }
}
