//! Regions of a crates.io `vfio_user` 0.1.7 `Server` (the peer "we did not
//! write" of the interop tests). Shared by `protocol/tests/interop_vfio_user.rs`
//! and `tests/tests/probe_vfio_user_crate.rs`, both including this file with
//! `#[path]` (both have `vfio_user` and `vfio-bindings` as dev-dependencies).

use std::os::fd::RawFd;

use vfio_bindings::bindings::vfio::{vfio_region_info, vfio_region_sparse_mmap_area};

/// Region `index` of `size` bytes with `flags` (VFIO_REGION_INFO_FLAG_*);
/// `sparse` lists its mmap-able (offset, size) areas, backed by `mmap_fd`.
pub fn server_region(
    index: u32,
    flags: u32,
    size: u64,
    sparse: &[(u64, u64)],
    mmap_fd: Option<RawFd>,
) -> vfio_user::ServerRegion {
    vfio_user::ServerRegion {
        region_info: vfio_region_info {
            argsz: 32,
            flags,
            index,
            cap_offset: 0,
            size,
            offset: 0,
        },
        sparse_areas: sparse
            .iter()
            .map(|&(offset, size)| vfio_user::SparseArea {
                area: vfio_region_sparse_mmap_area { offset, size },
            })
            .collect(),
        mmap_fd,
    }
}
