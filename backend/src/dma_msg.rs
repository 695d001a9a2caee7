//! DMA to client memory mapped **without an fd** (vfio-user `DMA_MAP` with no
//! file descriptor: the client serves `DMA_READ`/`DMA_WRITE` messages for the
//! range, as QEMU does for guest RAM without `share=on` and for ROM/BIOS
//! sections).
//!
//! * [`MessageMaps`] records such ranges (IOVA, size, permissions); they never
//!   overlap each other or the fd mappings of [`DmaTable`] (`EEXIST`).
//! * [`ClientMemory`] is the [`DmaMemory`] devices see: an access inside the
//!   fd mappings goes to [`DmaTable`] as before; an access inside message
//!   ranges is checked (mapped, permission) and then served from the
//!   transfers already done, or recorded in [`Deferred`] and answered with
//!   [`DmaFault::Deferred`]: the device stalls, the connection thread sends
//!   the requests once the device step returned (so the client's other
//!   requests keep being answered meanwhile, see
//!   `vfio_sidecar_protocol::ServerConnection::dma_read`), and runs the
//!   device again, which now finds the data (or a [`DmaFault::Remote`] when
//!   the client did not serve it). An access spanning an fd mapping and a
//!   message range faults (`Unmapped`).
//! * Writes are posted to the client before the retried device step
//!   completes, so the device's later effects (its completion interrupt)
//!   follow the data, as on a bus.
//!
//! Data fetched for a retry is kept until a device step records no new
//! transfer (or, while steps keep deferring, as long as each step uses it):
//! a device that reads the same bytes twice within one chain of deferred
//! steps sees the first value both times.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::device::{DmaAccess, DmaFault, DmaMemory, DmaProt};
use crate::dma::{DmaTable, DMA_PAGE_SIZE};

/// Errors of [`MessageMaps::map`].
#[derive(Debug, Error)]
pub enum MessageMapError {
    /// IOVA or size not page aligned, size 0, or `iova + size` wraps.
    #[error("fd-less DMA map [{iova:#x}, +{size:#x}): must be a non-empty, 4 KiB aligned range")]
    BadRange {
        /// IOVA.
        iova: u64,
        /// Size.
        size: u64,
    },
    /// No permission at all.
    #[error("fd-less DMA map at {0:#x}: neither read nor write")]
    NoPermission(u64),
    /// Overlaps a mapping (with or without an fd).
    #[error("fd-less DMA map [{iova:#x}, +{size:#x}) overlaps the mapping at {existing:#x}")]
    Overlap {
        /// IOVA.
        iova: u64,
        /// Size.
        size: u64,
        /// Start of an overlapping mapping.
        existing: u64,
    },
}

impl MessageMapError {
    /// The errno of the error reply.
    pub fn errno(&self) -> i32 {
        match self {
            MessageMapError::Overlap { .. } => libc::EEXIST,
            _ => libc::EINVAL,
        }
    }
}

/// The fd-less ranges of one client: IOVA → (size, permissions).
#[derive(Debug, Default)]
pub struct MessageMaps {
    entries: BTreeMap<u64, (u64, DmaProt)>,
}

impl MessageMaps {
    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds `[iova, iova+size)`; `table` is checked for overlaps too.
    pub fn map(
        &mut self,
        iova: u64,
        size: u64,
        prot: DmaProt,
        table: &DmaTable,
    ) -> Result<(), MessageMapError> {
        let bad = MessageMapError::BadRange { iova, size };
        let end = iova.checked_add(size).ok_or(bad)?;
        if size == 0 || iova % DMA_PAGE_SIZE != 0 || size % DMA_PAGE_SIZE != 0 {
            return Err(MessageMapError::BadRange { iova, size });
        }
        if !(prot.read || prot.write || prot.exec) {
            return Err(MessageMapError::NoPermission(iova));
        }
        let existing = self
            .regions_in(iova, end)
            .first()
            .map(|r| r.0)
            .or_else(|| table.regions_in(iova, end).first().map(|r| r.iova));
        if let Some(existing) = existing {
            return Err(MessageMapError::Overlap {
                iova,
                size,
                existing,
            });
        }
        self.entries.insert(iova, (size, prot));
        Ok(())
    }

    /// Every range intersecting `[start, end)`: (iova, size).
    pub fn regions_in(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let before = self
            .entries
            .range(..start)
            .next_back()
            .filter(|(&s, (size, _))| s + size > start);
        before
            .into_iter()
            .chain(self.entries.range(start..end))
            .map(|(&s, &(size, _))| (s, size))
            .collect()
    }

    /// Removes the range exactly at `[iova, iova+size)`; false if none.
    pub fn unmap(&mut self, iova: u64, size: u64) -> bool {
        match self.entries.get(&iova) {
            Some(&(s, _)) if s == size => self.entries.remove(&iova).is_some(),
            _ => false,
        }
    }

    /// Removes every range.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// True if some range intersects `[iova, iova+len)`.
    fn intersects(&self, iova: u64, len: usize) -> bool {
        let end = iova.saturating_add(len.max(1) as u64);
        !self.regions_in(iova, end).is_empty()
    }

    /// Checks that `[iova, iova+len)` lies in (adjacent) ranges that all
    /// allow `access`.
    pub fn check(&self, iova: u64, len: usize, access: DmaAccess) -> Result<(), DmaFault> {
        let unmapped = DmaFault::Unmapped { access, iova, len };
        let end = iova.checked_add(len as u64).ok_or(unmapped)?;
        let mut cur = iova;
        while cur < end {
            let (&start, &(size, prot)) = self.entries.range(..=cur).next_back().ok_or(unmapped)?;
            if cur - start >= size {
                return Err(unmapped);
            }
            let ok = match access {
                DmaAccess::Fetch => prot.exec,
                DmaAccess::Read => prot.read,
                DmaAccess::Write => prot.write,
            };
            if !ok {
                return Err(DmaFault::Permission { access, iova, len });
            }
            cur = start + size;
        }
        Ok(())
    }
}

/// A transfer a device step is waiting for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transfer {
    /// Fetch `len` bytes at `iova` (DMA_READ).
    Read {
        /// Client DMA address.
        iova: u64,
        /// Length.
        len: usize,
        /// The device's access kind (for the fault it may get).
        access: DmaAccess,
    },
    /// Store `data` at `iova` (DMA_WRITE).
    Write {
        /// Client DMA address.
        iova: u64,
        /// The bytes.
        data: Vec<u8>,
    },
}

#[derive(Debug)]
struct Fetched {
    iova: u64,
    data: Option<Vec<u8>>,
    len: usize,
    used: bool,
}

/// Transfers waiting for the client, and the results of those done.
#[derive(Debug, Default)]
pub struct Deferred {
    needs: Vec<Transfer>,
    fetched: Vec<Fetched>,
    /// Writes done: (iova, data, ok).
    stored: Vec<(u64, Vec<u8>, bool)>,
    /// A transfer was recorded during the current device step.
    recorded: bool,
}

impl Deferred {
    /// True when transfers wait to be sent.
    pub fn has_needs(&self) -> bool {
        !self.needs.is_empty()
    }

    /// Takes the transfers to send, in the order the device made them.
    pub fn take_needs(&mut self) -> Vec<Transfer> {
        std::mem::take(&mut self.needs)
    }

    /// Records the result of a DMA_READ (`None`: the client did not serve it).
    pub fn fetched(&mut self, iova: u64, len: usize, data: Option<Vec<u8>>) {
        self.fetched.push(Fetched {
            iova,
            data,
            len,
            used: false,
        });
    }

    /// Records the result of a DMA_WRITE.
    pub fn stored(&mut self, iova: u64, data: Vec<u8>, ok: bool) {
        self.stored.push((iova, data, ok));
    }

    /// After a device step (`run_pending`): a step that recorded nothing
    /// has consumed what it needed, so everything is dropped; a step that
    /// deferred again keeps what it used (its retry will use it again).
    pub fn after_step(&mut self) {
        if self.recorded {
            self.fetched.retain(|f| f.used);
            for f in &mut self.fetched {
                f.used = false;
            }
        } else {
            self.fetched.clear();
            self.stored.clear();
        }
        self.recorded = false;
    }

    /// Forgets everything (reset, unmap, client gone).
    pub fn clear(&mut self) {
        *self = Deferred::default();
    }

    fn record(&mut self, t: Transfer) {
        self.recorded = true;
        if !self.needs.contains(&t) {
            self.needs.push(t);
        }
    }

    fn read(&mut self, iova: u64, buf: &mut [u8], access: DmaAccess) -> Result<(), DmaFault> {
        let len = buf.len();
        let end = iova.saturating_add(len as u64);
        let hit = self
            .fetched
            .iter_mut()
            .find(|f| f.iova <= iova && end <= f.iova.saturating_add(f.len as u64));
        match hit {
            Some(f) => {
                f.used = true;
                let off = (iova - f.iova) as usize;
                match f.data.as_ref().and_then(|d| d.get(off..off + len)) {
                    Some(src) => {
                        buf.copy_from_slice(src);
                        Ok(())
                    }
                    None => Err(DmaFault::Remote { access, iova, len }),
                }
            }
            None => {
                self.record(Transfer::Read { iova, len, access });
                Err(DmaFault::Deferred { access, iova, len })
            }
        }
    }

    fn write(&mut self, iova: u64, data: &[u8]) -> Result<(), DmaFault> {
        let len = data.len();
        let access = DmaAccess::Write;
        match self
            .stored
            .iter()
            .position(|(a, d, _)| *a == iova && d.as_slice() == data)
        {
            Some(i) => {
                let (_, _, ok) = self.stored.remove(i);
                if ok {
                    Ok(())
                } else {
                    Err(DmaFault::Remote { access, iova, len })
                }
            }
            None => {
                self.record(Transfer::Write {
                    iova,
                    data: data.to_vec(),
                });
                Err(DmaFault::Deferred { access, iova, len })
            }
        }
    }
}

/// Client memory as devices see it: fd mappings and fd-less ranges.
#[derive(Debug)]
pub struct ClientMemory<'a> {
    /// The fd mappings.
    pub table: &'a DmaTable,
    /// The fd-less ranges.
    pub msgs: &'a MessageMaps,
    /// Transfers for the fd-less ranges.
    pub deferred: &'a std::sync::Mutex<Deferred>,
}

impl ClientMemory<'_> {
    fn deferred(&self) -> std::sync::MutexGuard<'_, Deferred> {
        self.deferred
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl DmaMemory for ClientMemory<'_> {
    fn dma_read(&self, iova: u64, buf: &mut [u8], access: DmaAccess) -> Result<(), DmaFault> {
        if buf.is_empty() || !self.msgs.intersects(iova, buf.len()) {
            return self.table.dma_read(iova, buf, access);
        }
        let access = if access == DmaAccess::Write {
            DmaAccess::Read
        } else {
            access
        };
        self.msgs.check(iova, buf.len(), access)?;
        self.deferred().read(iova, buf, access)
    }

    fn dma_write(&self, iova: u64, data: &[u8]) -> Result<(), DmaFault> {
        if data.is_empty() || !self.msgs.intersects(iova, data.len()) {
            return self.table.dma_write(iova, data);
        }
        self.msgs.check(iova, data.len(), DmaAccess::Write)?;
        self.deferred().write(iova, data)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    const RW: DmaProt = DmaProt {
        read: true,
        write: true,
        exec: false,
    };

    #[test]
    fn ranges_overlaps_and_checks() {
        let table = DmaTable::default();
        let mut m = MessageMaps::default();
        m.map(0x1000, 0x2000, RW, &table).unwrap();
        m.map(
            0x3000,
            0x1000,
            DmaProt {
                read: true,
                ..DmaProt::default()
            },
            &table,
        )
        .unwrap();
        assert_eq!(
            m.map(0x2000, 0x2000, RW, &table).unwrap_err().errno(),
            libc::EEXIST
        );
        assert!(m.map(0x5001, 0x1000, RW, &table).is_err());
        assert!(m.map(0x5000, 0, RW, &table).is_err());
        assert!(m.map(u64::MAX - 0xfff, 0x2000, RW, &table).is_err());
        assert!(m.map(0x9000, 0x1000, DmaProt::default(), &table).is_err());
        // Adjacent ranges combine; permissions per piece; holes fault.
        m.check(0x1800, 0x2000, DmaAccess::Read).unwrap();
        assert!(matches!(
            m.check(0x2800, 0x1000, DmaAccess::Write),
            Err(DmaFault::Permission { .. })
        ));
        assert!(matches!(
            m.check(0x3800, 0x1000, DmaAccess::Read),
            Err(DmaFault::Unmapped { .. })
        ));
        assert_eq!(
            m.regions_in(0x1800, 0x3001),
            vec![(0x1000, 0x2000), (0x3000, 0x1000)]
        );
        assert!(!m.unmap(0x1000, 0x1000));
        assert!(m.unmap(0x1000, 0x2000));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn deferred_read_then_retry_then_cleared() {
        let table = DmaTable::default();
        let mut m = MessageMaps::default();
        m.map(0x1000, 0x1000, RW, &table).unwrap();
        let d = Mutex::new(Deferred::default());
        let mem = ClientMemory {
            table: &table,
            msgs: &m,
            deferred: &d,
        };
        let mut b = [0u8; 4];
        assert!(mem
            .dma_read(0x1100, &mut b, DmaAccess::Read)
            .unwrap_err()
            .is_deferred());
        assert!(mem
            .dma_read(0x1100, &mut b, DmaAccess::Read)
            .unwrap_err()
            .is_deferred());
        d.lock().unwrap().after_step();
        let needs = d.lock().unwrap().take_needs();
        assert_eq!(needs.len(), 1, "one transfer for the same access");
        d.lock().unwrap().fetched(0x1100, 4, Some(b"abcd".to_vec()));
        mem.dma_read(0x1100, &mut b, DmaAccess::Read).unwrap();
        assert_eq!(&b, b"abcd");
        // A part of what was fetched is served too; fetches need EXEC.
        let mut one = [0u8; 1];
        mem.dma_read(0x1102, &mut one, DmaAccess::Read).unwrap();
        assert_eq!(&one, b"c");
        assert!(matches!(
            mem.dma_read(0x1102, &mut one, DmaAccess::Fetch),
            Err(DmaFault::Permission { .. })
        ));
        d.lock().unwrap().after_step();
        assert!(
            mem.dma_read(0x1100, &mut b, DmaAccess::Read)
                .unwrap_err()
                .is_deferred(),
            "a step that deferred nothing dropped the data"
        );
        d.lock().unwrap().clear();
        // Write: deferred, stored, retried once, then gone.
        assert!(mem.dma_write(0x1200, b"xy").unwrap_err().is_deferred());
        d.lock().unwrap().after_step();
        assert_eq!(
            d.lock().unwrap().take_needs(),
            vec![Transfer::Write {
                iova: 0x1200,
                data: b"xy".to_vec()
            }]
        );
        d.lock().unwrap().stored(0x1200, b"xy".to_vec(), true);
        mem.dma_write(0x1200, b"xy").unwrap();
        d.lock().unwrap().after_step();
        // A failed transfer is a fault on the retry.
        assert!(mem
            .dma_read(0x1300, &mut b, DmaAccess::Read)
            .unwrap_err()
            .is_deferred());
        d.lock().unwrap().after_step();
        d.lock().unwrap().take_needs();
        d.lock().unwrap().fetched(0x1300, 4, None);
        assert!(matches!(
            mem.dma_read(0x1300, &mut b, DmaAccess::Read),
            Err(DmaFault::Remote { .. })
        ));
        d.lock().unwrap().after_step();
        assert!(
            mem.dma_read(0x1300, &mut b, DmaAccess::Read)
                .unwrap_err()
                .is_deferred(),
            "results do not outlive the step that used them"
        );
        // Outside every mapping: the table answers (unmapped).
        assert!(matches!(
            mem.dma_read(0x8000, &mut b, DmaAccess::Read),
            Err(DmaFault::Unmapped { .. })
        ));
        // Spanning the end of the range: unmapped.
        assert!(matches!(
            mem.dma_read(0x1ffe, &mut b, DmaAccess::Read),
            Err(DmaFault::Unmapped { .. })
        ));
        // At the very top of the address space: a fault, no overflow.
        assert!(mem
            .dma_read(u64::MAX, &mut b[..1], DmaAccess::Read)
            .is_err());
        assert!(mem.dma_write(u64::MAX - 1, &[1, 2, 3]).is_err());
    }
}
