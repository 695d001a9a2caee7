//! [`Backend`] over a real vfio-user connection ([`vfio_sidecar_protocol::Client`]).

use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::Duration;

use vfio_sidecar_protocol::client::IrqData;
use vfio_sidecar_protocol::message::{IrqAction, REGION_INFO_FLAG_MMAP};
use vfio_sidecar_protocol::{Client, ClientError, ClientOptions, DmaProt};

use crate::backend::{Backend, BackendRegion, EoiMismatch, EoiPolicy, IrqStats};
use crate::layout::PAGE_SIZE;
use crate::memory::DmaEntry;
use crate::mmio::{DeviceLink, LinkError, RegionSpec};

/// A connected vfio-user client.
#[derive(Debug)]
pub struct ProtoBackend {
    client: Client,
}

fn transport(e: ClientError) -> LinkError {
    LinkError::Transport(e.to_string())
}

/// The error of a region access: the device refusing it is not fatal.
fn access_error(index: u32, offset: u64) -> impl FnOnce(ClientError) -> LinkError {
    move |e| match e {
        ClientError::Remote { .. } => LinkError::Refused {
            index,
            offset,
            msg: e.to_string(),
        },
        e => transport(e),
    }
}

impl ProtoBackend {
    /// Connects to `socket`, proposing the org.vfio-sidecar extension.
    pub fn connect(socket: &Path, reply_timeout: Duration) -> Result<Self, LinkError> {
        let opts = ClientOptions {
            reply_timeout,
            ..ClientOptions::default()
        };
        let client = Client::connect(socket, opts)
            .map_err(|e| LinkError::Transport(format!("{}: {e}", socket.display())))?;
        let n = client.negotiated();
        log::info!(
            "connected to {}: vfio-user {}.{}, vfio-sidecar extension {}",
            socket.display(),
            n.major,
            n.minor,
            if n.extension() {
                format!(
                    "(dma_exec {}, exec enforced {})",
                    n.dma_exec(),
                    n.exec_enforced()
                )
            } else {
                "not negotiated".into()
            }
        );
        log::debug!("negotiated: {n:?}");
        Ok(ProtoBackend { client })
    }

    /// The underlying client (device description, DTB, ...).
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// SET_IRQS(`action`, EVENTFD) of one vector.
    fn set_irq_eventfd(
        &mut self,
        action: IrqAction,
        index: u32,
        vector: u32,
        fd: BorrowedFd<'_>,
    ) -> Result<(), LinkError> {
        self.client
            .set_irqs(index, action, IrqData::Eventfds(&[Some(fd)]), vector, 1)
            .map_err(transport)
    }
}

impl DeviceLink for ProtoBackend {
    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), LinkError> {
        self.client
            .region_read_into(index, offset, data)
            .map_err(access_error(index, offset))
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), LinkError> {
        self.client
            .region_write(index, offset, data)
            .map_err(access_error(index, offset))
    }
}

/// Turns a REGION_INFO reply into the areas the VMM maps directly: the sparse
/// areas if the capability is present, else the whole region when MMAP is set,
/// else nothing (all trapped).
pub fn mappable_areas(flags: u32, size: u64, sparse: Option<&[(u64, u64)]>) -> Vec<(u64, u64)> {
    if flags & REGION_INFO_FLAG_MMAP == 0 {
        return Vec::new();
    }
    match sparse {
        Some(a) => a.iter().copied().filter(|&(_, s)| s > 0).collect(),
        None if size >= PAGE_SIZE => vec![(0, size & !(PAGE_SIZE - 1))],
        None => Vec::new(),
    }
}

impl Backend for ProtoBackend {
    fn exec_negotiated(&self) -> bool {
        self.client.negotiated().dma_exec()
    }

    fn dma_map(&mut self, e: &DmaEntry, fd: BorrowedFd<'_>) -> Result<(), LinkError> {
        let prot = DmaProt {
            read: e.prot.read,
            write: e.prot.write,
            exec: e.prot.exec,
        };
        self.client
            .dma_map(e.iova, e.size, fd, e.fd_offset, prot)
            .map_err(transport)
    }

    fn regions(&mut self) -> Result<Vec<BackendRegion>, LinkError> {
        let info = self.client.device_info().map_err(transport)?;
        let mut out = Vec::new();
        for index in 0..info.num_regions.min(64) {
            let (ri, fd) = self.client.region_info(index).map_err(transport)?;
            let sparse: Option<Vec<(u64, u64)>> = ri
                .sparse
                .as_ref()
                .map(|v| v.iter().map(|a| (a.offset, a.size)).collect());
            let areas = mappable_areas(ri.flags, ri.size, sparse.as_deref());
            log::info!(
                "region {index}: {:#x} bytes, flags {:#x}, {} mappable area(s)",
                ri.size,
                ri.flags,
                areas.len()
            );
            out.push(BackendRegion {
                spec: RegionSpec {
                    index,
                    size: ri.size,
                    sparse: if fd.is_some() { areas } else { Vec::new() },
                },
                mmap: fd.map(|f| (f, ri.offset)),
            });
        }
        Ok(out)
    }

    fn set_irq_trigger(
        &mut self,
        index: u32,
        vector: u32,
        fd: BorrowedFd<'_>,
    ) -> Result<(), LinkError> {
        self.set_irq_eventfd(IrqAction::Trigger, index, vector, fd)
    }

    fn set_irq_unmask_fd(
        &mut self,
        index: u32,
        vector: u32,
        fd: BorrowedFd<'_>,
    ) -> Result<(), LinkError> {
        self.set_irq_eventfd(IrqAction::Unmask, index, vector, fd)
    }

    fn eoi_mismatch(&mut self, wanted: EoiPolicy) -> Result<Option<EoiMismatch>, LinkError> {
        if !self.client.negotiated().extension() {
            return Ok(None);
        }
        let (desc, _) = self.client.device_desc().map_err(transport)?;
        Ok(crate::backend::eoi_mismatch_in(&desc, wanted))
    }

    fn irq_stats(&mut self, index: u32, vector: u32) -> Result<Option<IrqStats>, LinkError> {
        if !self.client.negotiated().extension() {
            return Ok(None);
        }
        let v = self.client.irq_stats(index, vector, 1).map_err(transport)?;
        Ok(v.first().map(|s| IrqStats {
            device_events: s.device_events,
            host_interrupts: s.host_interrupts,
            unmasks: s.unmasks,
            refires: s.refires,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_sidecar_protocol::message::{REGION_INFO_FLAG_READ, REGION_INFO_FLAG_WRITE};

    #[test]
    fn mappable_areas_follow_flags_and_caps() {
        let rw = REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE;
        assert!(
            mappable_areas(rw, 0x1000, None).is_empty(),
            "no MMAP: all trapped"
        );
        assert!(mappable_areas(rw, 0x1000, Some(&[(0, 0x1000)])).is_empty());
        let m = rw | REGION_INFO_FLAG_MMAP;
        assert_eq!(mappable_areas(m, 0x3000, None), vec![(0, 0x3000)]);
        assert_eq!(
            mappable_areas(m, 0x3000, Some(&[(0x2000, 0x1000), (0, 0)])),
            vec![(0x2000, 0x1000)]
        );
        assert!(
            mappable_areas(m, 0x3000, Some(&[])).is_empty(),
            "empty sparse cap: all trapped"
        );
        assert!(mappable_areas(m, 0x800, None).is_empty());
    }
}
