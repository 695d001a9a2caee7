//! Host discovery and binding (in progress).
