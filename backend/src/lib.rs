//! vfio-sidecar backend library: devices (VFIO and built-in models), the DMA
//! memory table, interrupts and EOI, device profiles, and the server glue that
//! connects them to the vfio-user protocol crate.

pub mod cli;
pub mod device;
pub mod dma;
pub mod dma_msg;
pub mod dt;
pub mod host;
pub mod irq;
pub mod model;
pub mod probe;
pub mod profile;
pub mod sandbox;
pub mod server;
#[doc(hidden)]
pub mod testing;
pub mod vfio;
