//! vfio-user protocol (placeholder; see issue 2).
