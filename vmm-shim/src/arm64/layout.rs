//! The inner arm64 machine's guest-physical memory map (QEMU `virt`-like, so
//! Linux finds nothing unusual):
//!
//! ```text
//! 0x0800_0000  GICv3 distributor (64 KiB)
//! 0x080a_0000  GICv3 redistributors (128 KiB per vCPU)
//! 0x0900_0000  16550 UART ("ns16550a", trapped, emulated in the shim), SPI 1
//! 0x0c00_0000  the vfio-sidecar device's regions (page aligned), up to 0x0e00_0000;
//!              its interrupts are SPIs 16, 17, ... (KVM GSI = SPI number)
//! 0x4000_0000  RAM (one sealed memfd, KVM slot 0, DMA-mapped at IOVA = GPA):
//!              kernel Image at RAM + text_offset (2 MiB-aligned base),
//!              initrd below the DTB, DTB in the last 2 MiB
//! ```

use super::image::ImageHeader;
use crate::memory::{DmaEntry, Prot};

/// GICv3 distributor base.
pub const GIC_DIST_BASE: u64 = 0x0800_0000;
/// GICv3 distributor size.
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
/// First GICv3 redistributor.
pub const GIC_REDIST_BASE: u64 = 0x080a_0000;
/// Redistributor frames per vCPU (RD_base + SGI_base).
pub const GIC_REDIST_SIZE: u64 = 0x2_0000;
/// Interrupt IDs the vGIC gets (KVM_DEV_ARM_VGIC_GRP_NR_IRQS): 32 private +
/// 96 SPIs.
pub const GIC_NR_IRQS: u32 = 128;
/// The UART's register page.
pub const UART_BASE: u64 = 0x0900_0000;
/// Size of the UART's page.
pub const UART_SIZE: u64 = 0x1000;
/// The UART's SPI.
pub const UART_SPI: u32 = 1;
/// The UART's input clock (`clock-frequency`).
pub const UART_CLOCK_HZ: u32 = 1_843_200;
/// The device window for the backend's regions.
pub const DEVICE_BASE: u64 = 0x0c00_0000;
/// End of the device window.
pub const DEVICE_END: u64 = 0x0e00_0000;
/// SPI of the device's first interrupt (the k-th is `DEVICE_SPI_BASE + k`).
pub const DEVICE_SPI_BASE: u32 = 16;
/// Start of RAM.
pub const RAM_BASE: u64 = 0x4000_0000;
/// Most vCPUs the redistributor range has room for below the UART.
pub const MAX_VCPUS: u32 = ((UART_BASE - GIC_REDIST_BASE) / GIC_REDIST_SIZE) as u32;
/// Alignment of the kernel's base (arm64 boot protocol) and of the DTB slot.
pub const ALIGN_2M: u64 = 0x20_0000;
/// Largest DTB (boot protocol: at most 2 MiB, within one 2 MiB block).
pub const DTB_MAX: u64 = ALIGN_2M;
/// Page size of the layout.
pub const PAGE: u64 = 0x1000;

// The fixed windows do not overlap (checked at compile time).
const _: () = {
    assert!(GIC_DIST_BASE + GIC_DIST_SIZE <= GIC_REDIST_BASE);
    assert!(GIC_REDIST_BASE + GIC_REDIST_SIZE * MAX_VCPUS as u64 <= UART_BASE);
    assert!(UART_BASE + UART_SIZE <= DEVICE_BASE);
    assert!(DEVICE_END <= RAM_BASE);
    assert!(UART_SPI < DEVICE_SPI_BASE);
    assert!(RAM_BASE % ALIGN_2M == 0);
};

/// Errors of boot placement.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// RAM size not a 2 MiB multiple or too small.
    #[error("guest RAM of {0:#x} bytes: must be a multiple of 2 MiB and at least 16 MiB")]
    BadRamSize(u64),
    /// Kernel, initrd and DTB do not fit.
    #[error("kernel ({kernel:#x} bytes in memory) + initrd ({initrd:#x}) + DTB slot do not fit in {ram:#x} bytes of guest RAM; give the guest more with --mem")]
    NoRoom {
        /// Kernel footprint (image_size).
        kernel: u64,
        /// Initrd size.
        initrd: u64,
        /// RAM size.
        ram: u64,
    },
}

/// Where the boot pieces go in RAM (guest-physical addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootLayout {
    /// The kernel Image's first byte = the entry point.
    pub kernel: u64,
    /// End of the kernel's footprint (image_size from the header).
    pub kernel_end: u64,
    /// Initrd [start, end), if any.
    pub initrd: Option<(u64, u64)>,
    /// The DTB.
    pub dtb: u64,
}

/// Places kernel, initrd and DTB in `ram_size` bytes at [`RAM_BASE`]: the
/// kernel at the first 2 MiB boundary + text_offset, the DTB in the last 2 MiB
/// block, the initrd page aligned just below the DTB.
pub fn boot_layout(
    ram_size: u64,
    header: &ImageHeader,
    initrd_len: Option<u64>,
) -> Result<BootLayout, LayoutError> {
    if ram_size % ALIGN_2M != 0 || ram_size < 8 * ALIGN_2M {
        return Err(LayoutError::BadRamSize(ram_size));
    }
    let no_room = || LayoutError::NoRoom {
        kernel: header.image_size,
        initrd: initrd_len.unwrap_or(0),
        ram: ram_size,
    };
    let kernel = RAM_BASE + header.text_offset;
    let kernel_end = kernel.checked_add(header.image_size).ok_or_else(no_room)?;
    let ram_end = RAM_BASE + ram_size;
    let dtb = ram_end - DTB_MAX;
    let initrd = match initrd_len {
        Some(len) => {
            let start = dtb.checked_sub(len).ok_or_else(no_room)? & !(PAGE - 1);
            Some((start, start + len))
        }
        None => None,
    };
    let lowest = initrd.map(|(s, _)| s).unwrap_or(dtb);
    if kernel_end > lowest {
        return Err(no_room());
    }
    Ok(BootLayout {
        kernel,
        kernel_end,
        initrd,
        dtb,
    })
}

/// The DMA table of the arm64 guest: all RAM as one entry at IOVA = GPA
/// (memfd offset 0), READ|WRITE, and EXEC when the extension is negotiated
/// unless `no_exec` (then the PL330's microcode fetch faults).
pub fn ram_dma_table(ram_size: u64, exec_negotiated: bool, no_exec: bool) -> Vec<DmaEntry> {
    vec![DmaEntry {
        iova: RAM_BASE,
        size: ram_size,
        fd_offset: 0,
        prot: Prot {
            read: true,
            write: true,
            exec: exec_negotiated && !no_exec,
        },
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(text_offset: u64, image_size: u64) -> ImageHeader {
        ImageHeader {
            text_offset,
            image_size,
            flags: 0,
        }
    }

    #[test]
    fn pieces_are_aligned_ordered_and_inside_ram() {
        let ram = 256 << 20;
        let l = boot_layout(ram, &hdr(0, 0x300_0000), Some(0x12_3456)).unwrap();
        assert_eq!(l.kernel, RAM_BASE);
        assert_eq!(l.kernel % ALIGN_2M, 0);
        assert_eq!(l.dtb, RAM_BASE + ram - ALIGN_2M);
        assert_eq!(l.dtb % ALIGN_2M, 0);
        let (s, e) = l.initrd.unwrap();
        assert_eq!(s % PAGE, 0);
        assert_eq!(e - s, 0x12_3456);
        assert!(l.kernel_end <= s && e <= l.dtb);
        let l = boot_layout(ram, &hdr(0x8_0000, 0x100_0000), None).unwrap();
        assert_eq!(l.kernel, RAM_BASE + 0x8_0000, "text_offset honoured");
        assert_eq!(l.initrd, None);
    }

    #[test]
    fn all_ram_is_one_dma_entry_exec_unless_refused() {
        let t = ram_dma_table(64 << 20, true, false);
        assert_eq!(t.len(), 1);
        assert_eq!(
            (t[0].iova, t[0].size, t[0].fd_offset),
            (RAM_BASE, 64 << 20, 0)
        );
        assert!(t[0].prot.read && t[0].prot.write && t[0].prot.exec);
        assert!(
            !ram_dma_table(64 << 20, true, true)[0].prot.exec,
            "--no-exec"
        );
        assert!(
            !ram_dma_table(64 << 20, false, false)[0].prot.exec,
            "EXEC is never sent unnegotiated"
        );
    }

    #[test]
    fn too_small_or_odd_ram_is_refused() {
        assert_eq!(
            boot_layout(0x100_0001, &hdr(0, 0x1000), None),
            Err(LayoutError::BadRamSize(0x100_0001))
        );
        assert!(matches!(
            boot_layout(32 << 20, &hdr(0, 0x180_0000), Some(0x80_0000)),
            Err(LayoutError::NoRoom { .. })
        ));
        assert!(matches!(
            boot_layout(32 << 20, &hdr(0, 0x10_0000), Some(u64::MAX)),
            Err(LayoutError::NoRoom { .. })
        ));
        assert!(matches!(
            boot_layout(32 << 20, &hdr(0, u64::MAX), None),
            Err(LayoutError::NoRoom { .. })
        ));
    }
}
