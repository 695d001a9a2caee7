//! Device regions in guest-physical space: placement, sparse-mmap areas that
//! become KVM memory slots, and forwarding of the remaining (trapped) accesses
//! to the backend as REGION_READ/REGION_WRITE.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::layout::PAGE_SIZE;

/// Errors of the device link (the backend connection) as the VMM sees them.
#[derive(Debug, Error)]
pub enum LinkError {
    /// The backend answered with an error.
    #[error("backend refused region {index} access at {offset:#x}: {msg}")]
    Refused {
        /// Region index.
        index: u32,
        /// Offset.
        offset: u64,
        /// Backend's error.
        msg: String,
    },
    /// The connection failed.
    #[error("backend connection: {0}")]
    Transport(String),
}

/// The part of a vfio-user client the MMIO path needs.
pub trait DeviceLink {
    /// REGION_READ of `data.len()` bytes at `offset` of region `index`.
    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), LinkError>;
    /// REGION_WRITE of `data` at `offset` of region `index`.
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), LinkError>;
}

/// Errors of region placement.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlacementError {
    /// Regions do not fit the device window.
    #[error("device regions need {need:#x} bytes but the window has {have:#x}")]
    NoSpace {
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        have: u64,
    },
    /// A sparse area is not page aligned or not inside its region.
    #[error("region {index}: sparse area {offset:#x}+{size:#x} is not page-aligned inside the region (size {region_size:#x})")]
    BadSparseArea {
        /// Region index.
        index: u32,
        /// Area offset.
        offset: u64,
        /// Area size.
        size: u64,
        /// Region size.
        region_size: u64,
    },
    /// Two sparse areas overlap.
    #[error("region {index}: sparse areas overlap at {offset:#x}")]
    Overlap {
        /// Region index.
        index: u32,
        /// Offset of the later area.
        offset: u64,
    },
}

/// A device region as reported by REGION_INFO (what placement needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionSpec {
    /// Region index.
    pub index: u32,
    /// Size in bytes (0 = absent, not placed).
    pub size: u64,
    /// Sparse-mmap areas (offset, size) within the region.
    pub sparse: Vec<(u64, u64)>,
}

/// A region placed in guest-physical space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedRegion {
    /// Region index.
    pub index: u32,
    /// Guest-physical base.
    pub gpa: u64,
    /// Size.
    pub size: u64,
    /// Sparse areas (offset, size): mapped as KVM slots, never trapped.
    pub sparse: Vec<(u64, u64)>,
}

impl PlacedRegion {
    /// Whether `offset` lies in a sparse (directly mapped) area.
    pub fn is_sparse(&self, offset: u64) -> bool {
        self.sparse
            .iter()
            .any(|&(o, s)| offset >= o && offset - o < s)
    }
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    v.checked_add(a - 1).map(|x| x & !(a - 1))
}

/// Places regions one after another (page aligned) in `[base, end)`, checking
/// their sparse areas.
pub fn place_regions(
    specs: &[RegionSpec],
    base: u64,
    end: u64,
) -> Result<Vec<PlacedRegion>, PlacementError> {
    let mut at = base;
    let mut out = Vec::new();
    for spec in specs.iter().filter(|s| s.size > 0) {
        let mut areas = spec.sparse.clone();
        areas.sort_unstable();
        let mut prev_end = 0;
        for &(o, s) in &areas {
            let ok = s > 0
                && o % PAGE_SIZE == 0
                && s % PAGE_SIZE == 0
                && o.checked_add(s).is_some_and(|e| e <= spec.size);
            if !ok {
                return Err(PlacementError::BadSparseArea {
                    index: spec.index,
                    offset: o,
                    size: s,
                    region_size: spec.size,
                });
            }
            if o < prev_end {
                return Err(PlacementError::Overlap {
                    index: spec.index,
                    offset: o,
                });
            }
            prev_end = o + s;
        }
        let size = align_up(spec.size, PAGE_SIZE).unwrap_or(u64::MAX);
        let next = at.checked_add(size).filter(|&n| n <= end);
        let Some(next) = next else {
            let need = specs
                .iter()
                .map(|s| align_up(s.size, PAGE_SIZE).unwrap_or(u64::MAX))
                .fold(0u64, u64::saturating_add);
            return Err(PlacementError::NoSpace {
                need,
                have: end - base,
            });
        };
        out.push(PlacedRegion {
            index: spec.index,
            gpa: at,
            size: spec.size,
            sparse: areas,
        });
        at = next;
    }
    Ok(out)
}

/// A KVM memory slot to create for a sparse area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseSlot {
    /// Region index.
    pub index: u32,
    /// Guest-physical address.
    pub gpa: u64,
    /// Size.
    pub size: u64,
    /// Offset of the area within its region (add the region's fd offset to mmap).
    pub region_offset: u64,
}

/// The KVM slots needed for all sparse areas.
pub fn sparse_slots(regions: &[PlacedRegion]) -> Vec<SparseSlot> {
    regions
        .iter()
        .flat_map(|r| {
            r.sparse.iter().map(move |&(o, s)| SparseSlot {
                index: r.index,
                gpa: r.gpa + o,
                size: s,
                region_offset: o,
            })
        })
        .collect()
}

/// Exit counters for one page of a region.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PageCount {
    /// Trapped reads.
    pub reads: u64,
    /// Trapped writes.
    pub writes: u64,
}

/// MMIO exits of one page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PageExits {
    /// Region index.
    pub region: u32,
    /// Page offset in the region.
    pub page: u64,
    /// Reads.
    pub reads: u64,
    /// Writes.
    pub writes: u64,
}

/// The MMIO lines of the run summaries (x86 `run`, arm64 `linux`): exits per
/// region with the sparse-slot, stray and refused counts, then one line per
/// trapped page.
pub fn write_mmio_exits(
    f: &mut impl std::fmt::Write,
    per_region: &BTreeMap<u32, u64>,
    per_page: &[PageExits],
    sparse_slots: usize,
    stray: u64,
    refused: u64,
) -> std::fmt::Result {
    write!(f, "  MMIO exits    ")?;
    for (r, n) in per_region {
        write!(f, "region {r}: {n}  ")?;
    }
    writeln!(
        f,
        "(sparse slots mapped: {sparse_slots}; stray {stray}, refused {refused})"
    )?;
    for p in per_page {
        writeln!(
            f,
            "    region {} page {:#06x}: {} reads, {} writes",
            p.region, p.page, p.reads, p.writes
        )?;
    }
    Ok(())
}

/// Errors of MMIO forwarding.
#[derive(Debug, Error)]
pub enum MmioError {
    /// The backend failed.
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// The guest's device window: routes trapped accesses to the backend and counts them.
#[derive(Debug)]
pub struct MmioBus {
    regions: Vec<PlacedRegion>,
    /// (region index, page offset) -> counts.
    counts: BTreeMap<(u32, u64), PageCount>,
    /// Accesses that hit no region.
    stray: u64,
    /// Accesses the backend refused (error reply).
    refused: u64,
}

impl MmioBus {
    /// A bus over placed regions.
    pub fn new(regions: Vec<PlacedRegion>) -> Self {
        MmioBus {
            regions,
            counts: BTreeMap::new(),
            stray: 0,
            refused: 0,
        }
    }

    /// The placed regions.
    pub fn regions(&self) -> &[PlacedRegion] {
        &self.regions
    }

    /// Which region and offset `gpa..gpa+len` hits (whole access inside one region).
    pub fn resolve(&self, gpa: u64, len: usize) -> Option<(u32, u64)> {
        self.regions.iter().find_map(|r| {
            let off = gpa.checked_sub(r.gpa)?;
            let end = off.checked_add(len as u64)?;
            (end <= r.size).then_some((r.index, off))
        })
    }

    fn count(&mut self, index: u32, offset: u64, write: bool) {
        let c = self
            .counts
            .entry((index, offset & !(PAGE_SIZE - 1)))
            .or_default();
        if write {
            c.writes += 1;
        } else {
            c.reads += 1;
        }
    }

    /// A trapped read (KVM_EXIT_MMIO, !is_write): fills `data` from the backend.
    /// Accesses outside every region read as all-ones and are counted as stray.
    pub fn read(
        &mut self,
        link: &mut dyn DeviceLink,
        gpa: u64,
        data: &mut [u8],
    ) -> Result<(), MmioError> {
        match self.resolve(gpa, data.len()) {
            Some((index, offset)) => {
                self.count(index, offset, false);
                match link.region_read(index, offset, data) {
                    Ok(()) => {}
                    // the device said no (bad offset/width): the guest reads
                    // all-ones, as from a bus error on real hardware
                    Err(e @ LinkError::Refused { .. }) => {
                        self.refused += 1;
                        log::warn!("{e}");
                        data.fill(0xff);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            None => {
                self.stray += 1;
                log::warn!("guest read of unmapped GPA {gpa:#x} (+{})", data.len());
                data.fill(0xff);
            }
        }
        Ok(())
    }

    /// A trapped write: forwarded to the backend (stray writes are dropped).
    pub fn write(
        &mut self,
        link: &mut dyn DeviceLink,
        gpa: u64,
        data: &[u8],
    ) -> Result<(), MmioError> {
        match self.resolve(gpa, data.len()) {
            Some((index, offset)) => {
                self.count(index, offset, true);
                match link.region_write(index, offset, data) {
                    Ok(()) => {}
                    Err(e @ LinkError::Refused { .. }) => {
                        self.refused += 1;
                        log::warn!("{e} (write dropped)");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            None => {
                self.stray += 1;
                log::warn!("guest write to unmapped GPA {gpa:#x} (+{})", data.len());
            }
        }
        Ok(())
    }

    /// Per-page counts: (region, page offset) -> counts.
    pub fn page_counts(&self) -> &BTreeMap<(u32, u64), PageCount> {
        &self.counts
    }

    /// Total per region.
    pub fn region_totals(&self) -> BTreeMap<u32, PageCount> {
        let mut m: BTreeMap<u32, PageCount> = BTreeMap::new();
        for (&(i, _), c) in &self.counts {
            let t = m.entry(i).or_default();
            t.reads += c.reads;
            t.writes += c.writes;
        }
        m
    }

    /// Exits (reads + writes) per region.
    pub fn region_exits(&self) -> BTreeMap<u32, u64> {
        self.region_totals()
            .into_iter()
            .map(|(k, c)| (k, c.reads + c.writes))
            .collect()
    }

    /// Exits per page, in (region, page) order.
    pub fn page_exits(&self) -> Vec<PageExits> {
        self.counts
            .iter()
            .map(|(&(region, page), c)| PageExits {
                region,
                page,
                reads: c.reads,
                writes: c.writes,
            })
            .collect()
    }

    /// Accesses outside every region.
    pub fn stray(&self) -> u64 {
        self.stray
    }

    /// Accesses the backend answered with an error (reads completed as all-ones).
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A fake device: region 0 is 0x1000 bytes of registers, logging every access.
    #[derive(Default)]
    struct Fake {
        regs: Vec<u8>,
        log: Vec<(bool, u32, u64, Vec<u8>)>,
        fail: bool,
    }

    impl DeviceLink for Fake {
        fn region_read(
            &mut self,
            index: u32,
            offset: u64,
            data: &mut [u8],
        ) -> Result<(), LinkError> {
            if self.fail {
                return Err(LinkError::Transport("gone".into()));
            }
            if offset == 0x800 {
                return Err(LinkError::Refused {
                    index,
                    offset,
                    msg: "EINVAL".into(),
                });
            }
            let o = offset as usize;
            data.copy_from_slice(&self.regs[o..o + data.len()]);
            self.log.push((false, index, offset, data.to_vec()));
            Ok(())
        }
        fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), LinkError> {
            let o = offset as usize;
            self.regs[o..o + data.len()].copy_from_slice(data);
            self.log.push((true, index, offset, data.to_vec()));
            Ok(())
        }
    }

    fn spec(index: u32, size: u64, sparse: &[(u64, u64)]) -> RegionSpec {
        RegionSpec {
            index,
            size,
            sparse: sparse.to_vec(),
        }
    }

    #[test]
    fn forwards_reads_and_writes_with_region_offsets() {
        let placed = place_regions(&[spec(0, 0x1000, &[])], 0xfe00_0000, 0xfec0_0000).unwrap();
        let mut bus = MmioBus::new(placed);
        let mut dev = Fake {
            regs: vec![0; 0x1000],
            ..Default::default()
        };
        bus.write(&mut dev, 0xfe00_0020, &1u32.to_le_bytes())
            .unwrap();
        let mut b = [0u8; 4];
        bus.read(&mut dev, 0xfe00_0020, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 1);
        assert_eq!(dev.log[0], (true, 0, 0x20, vec![1, 0, 0, 0]));
        assert_eq!(dev.log[1].2, 0x20);
        bus.read(&mut dev, 0xfe00_0ffc, &mut b).unwrap();
        // straddling the end of the region: not forwarded
        bus.read(&mut dev, 0xfe00_0ffe, &mut b).unwrap();
        assert_eq!(b, [0xff; 4]);
        assert_eq!(bus.stray(), 1);
        assert_eq!(dev.log.len(), 3);
        let t = bus.region_totals();
        assert_eq!(
            t[&0],
            PageCount {
                reads: 2,
                writes: 1
            }
        );
        assert_eq!(
            bus.page_counts()[&(0, 0)],
            PageCount {
                reads: 2,
                writes: 1
            }
        );
    }

    #[test]
    fn link_errors_propagate() {
        let placed = place_regions(&[spec(0, 0x1000, &[])], 0x1000_0000, 0x2000_0000).unwrap();
        let mut bus = MmioBus::new(placed);
        let mut dev = Fake {
            regs: vec![0; 0x1000],
            fail: true,
            ..Default::default()
        };
        assert!(bus.read(&mut dev, 0x1000_0000, &mut [0; 4]).is_err());
        // a refused access is not fatal: the guest reads all-ones
        dev.fail = false;
        let mut b = [0u8; 4];
        bus.read(&mut dev, 0x1000_0800, &mut b).unwrap();
        assert_eq!(b, [0xff; 4]);
        assert_eq!(bus.refused(), 1);
    }

    #[test]
    fn placement_and_sparse_slots() {
        // region 0: registers, fully trapped; region 1 ("scratch"): 3 pages,
        // middle one trapped, the others directly mapped.
        let specs = [
            spec(0, 0x1000, &[]),
            spec(1, 0x3000, &[(0x2000, 0x1000), (0, 0x1000)]),
            spec(2, 0, &[]),
        ];
        let placed = place_regions(&specs, 0xfe00_0000, 0xfec0_0000).unwrap();
        assert_eq!(placed.len(), 2, "empty regions are not placed");
        assert_eq!(placed[0].gpa, 0xfe00_0000);
        assert_eq!(placed[1].gpa, 0xfe00_1000);
        let slots = sparse_slots(&placed);
        assert_eq!(
            slots,
            vec![
                SparseSlot {
                    index: 1,
                    gpa: 0xfe00_1000,
                    size: 0x1000,
                    region_offset: 0
                },
                SparseSlot {
                    index: 1,
                    gpa: 0xfe00_3000,
                    size: 0x1000,
                    region_offset: 0x2000
                },
            ]
        );
        assert!(placed[1].is_sparse(0x0));
        assert!(!placed[1].is_sparse(0x1000));
        assert!(placed[1].is_sparse(0x2fff));
        assert!(!placed[0].is_sparse(0));
        // the trapped middle page is forwarded with its region offset
        let mut bus = MmioBus::new(placed);
        let mut dev = Fake {
            regs: vec![0; 0x3000],
            ..Default::default()
        };
        bus.write(&mut dev, 0xfe00_2010, &[7]).unwrap();
        assert_eq!(dev.log[0], (true, 1, 0x1010, vec![7]));
        assert_eq!(bus.page_counts()[&(1, 0x1000)].writes, 1);
    }

    #[test]
    fn bad_sparse_areas_and_no_space() {
        let e = place_regions(&[spec(0, 0x2000, &[(0x800, 0x1000)])], 0, 0x10_0000);
        assert!(matches!(e, Err(PlacementError::BadSparseArea { .. })));
        let e = place_regions(&[spec(0, 0x2000, &[(0x1000, 0x2000)])], 0, 0x10_0000);
        assert!(matches!(e, Err(PlacementError::BadSparseArea { .. })));
        let e = place_regions(
            &[spec(0, 0x3000, &[(0, 0x2000), (0x1000, 0x1000)])],
            0,
            0x10_0000,
        );
        assert!(matches!(e, Err(PlacementError::Overlap { .. })));
        let e = place_regions(
            &[spec(0, 0x2000, &[]), spec(1, u64::MAX, &[])],
            0,
            0x10_0000,
        );
        assert!(matches!(e, Err(PlacementError::NoSpace { .. })));
    }

    #[test]
    fn mmio_exit_lines() {
        let mut s = String::new();
        let pages = [PageExits {
            region: 0,
            page: 0x1000,
            reads: 3,
            writes: 4,
        }];
        write_mmio_exits(&mut s, &BTreeMap::from([(0, 7), (2, 1)]), &pages, 1, 2, 5).unwrap();
        assert_eq!(
            s,
            "  MMIO exits    region 0: 7  region 2: 1  (sparse slots mapped: 1; stray 2, refused 5)\n    \
             region 0 page 0x1000: 3 reads, 4 writes\n"
        );
        let mut s = String::new();
        write_mmio_exits(&mut s, &BTreeMap::new(), &[], 0, 0, 0).unwrap();
        assert_eq!(
            s,
            "  MMIO exits    (sparse slots mapped: 0; stray 0, refused 0)\n"
        );
    }
}
