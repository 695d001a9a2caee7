//! The fixed guest-physical memory layout (32-bit protected mode, no paging).
//!
//! ```text
//! 0x0000_0500  GDT (null, code 0x08, data 0x10), written by the shim
//! 0x0000_1000  guest driver code (flat binary from guest/pl330_guest.S)
//! 0x0000_8000  IDT (built by the guest), 0x8800 guest variables
//! 0x0000_9000  parameter block (shim -> guest)
//! 0x0000_A000  results (guest -> shim)
//! 0x0001_0000  stack (grows down from 0x2_0000)
//! 0x0010_0000  microcode, 256 bytes per transfer   DMA: READ|WRITE|EXEC
//! 0x0011_0000  no-exec microcode page (the fault)  DMA: READ|WRITE
//! 0x0020_0000  source buffers (2 MiB)              DMA: READ|WRITE
//! 0x0040_0000  destination buffers (2 MiB)         DMA: READ|WRITE
//! 0x0080_0000  end of RAM
//! 0xFE00_0000  device region 0 (then 1, 2, ... page aligned), up to 0xFEC0_0000
//! ```
//!
//! All of RAM is one memfd, one KVM slot, and is DMA-mapped at IOVA = GPA. The
//! guest assembly uses the same numbers (`guest/pl330_guest.S`).

/// Page size used for layout and sparse-mmap checks.
pub const PAGE_SIZE: u64 = 0x1000;
/// Size of guest RAM.
pub const RAM_SIZE: u64 = 0x80_0000;
/// GDT location.
pub const GDT_BASE: u64 = 0x500;
/// Where the guest code is loaded and started.
pub const CODE_BASE: u64 = 0x1000;
/// Maximum size of the guest code.
pub const CODE_MAX: u64 = 0x7000;
/// Parameter block.
pub const PARAMS_BASE: u64 = 0x9000;
/// Results area.
pub const RESULTS_BASE: u64 = 0xA000;
/// Initial stack pointer.
pub const STACK_TOP: u64 = 0x2_0000;
/// Microcode buffers (exec-mapped when the extension is negotiated).
pub const MCODE_BASE: u64 = 0x10_0000;
/// Size of the microcode range.
pub const MCODE_SIZE: u64 = 0x1_0000;
/// Microcode bytes reserved per transfer (Linux: MCODE_BUFF_PER_REQ).
pub const MCODE_PER_XFER: u64 = 256;
/// A RAM page mapped for DMA without EXEC: the deliberate fault runs from here.
pub const NOEXEC_PAGE: u64 = 0x11_0000;
/// Source buffers.
pub const SRC_BASE: u64 = 0x20_0000;
/// Destination buffers.
pub const DST_BASE: u64 = 0x40_0000;
/// Size of each buffer area.
pub const BUF_AREA: u64 = 0x20_0000;
/// First guest-physical address of device regions.
pub const DEVICE_BASE: u64 = 0xFE00_0000;
/// End of the device window (the in-kernel IOAPIC sits at 0xFEC0_0000).
pub const DEVICE_END: u64 = 0xFEC0_0000;
/// Mailbox port: "transfer i done" (value = i).
pub const PORT_RESULT: u16 = 0xf0;
/// Mailbox port: "all done" (value = done code).
pub const PORT_DONE: u16 = 0xf4;
/// Mailbox port: unexpected exception/interrupt (value = vector).
pub const PORT_PANIC: u16 = 0xf8;
/// Interrupt vector base the guest programs into the master PIC.
pub const PIC_VECTOR_BASE: u32 = 0x20;
/// The PIC line (= KVM GSI) the device's IRQ index 0 is wired to.
pub const DEVICE_GSI: u32 = 5;
/// Maximum number of transfer descriptors in the parameter block.
pub const MAX_XFERS: usize = 48;

/// A named address range of the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First byte.
    pub start: u64,
    /// Length.
    pub size: u64,
}

impl Range {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// The microcode range that gets DMA EXEC.
pub const MCODE_RANGE: Range = Range {
    start: MCODE_BASE,
    size: MCODE_SIZE,
};

// The layout is ordered, non-overlapping and page aligned (checked at compile time).
const _: () = {
    assert!(GDT_BASE + 24 <= CODE_BASE);
    assert!(CODE_BASE + CODE_MAX <= 0x8000);
    assert!(PARAMS_BASE + PAGE_SIZE <= RESULTS_BASE);
    assert!(RESULTS_BASE + PAGE_SIZE <= STACK_TOP - PAGE_SIZE);
    assert!(STACK_TOP <= MCODE_BASE);
    assert!(MCODE_BASE + MCODE_SIZE <= NOEXEC_PAGE);
    assert!(NOEXEC_PAGE + PAGE_SIZE <= SRC_BASE);
    assert!(SRC_BASE + BUF_AREA == DST_BASE);
    assert!(DST_BASE + BUF_AREA <= RAM_SIZE);
    assert!(RAM_SIZE <= DEVICE_BASE);
    assert!((MAX_XFERS as u64 + 1) * MCODE_PER_XFER <= MCODE_SIZE);
    assert!(MCODE_BASE % PAGE_SIZE == 0 && NOEXEC_PAGE % PAGE_SIZE == 0);
    assert!(SRC_BASE % PAGE_SIZE == 0 && DST_BASE % PAGE_SIZE == 0 && DEVICE_BASE % PAGE_SIZE == 0);
};

#[cfg(test)]
mod tests {
    use super::*;

    fn equ(src: &str, name: &str) -> u64 {
        let needle = format!(".equ {name},");
        let line = src
            .lines()
            .find(|l| l.trim_start().starts_with(&needle))
            .unwrap_or_else(|| panic!("{name} missing in guest source"));
        let v = line.split(',').nth(1).unwrap().trim();
        u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap()
    }

    #[test]
    fn guest_source_uses_the_same_addresses() {
        let src = include_str!("../guest/pl330_guest.S");
        assert_eq!(equ(src, "PARAMS"), PARAMS_BASE);
        assert_eq!(equ(src, "RESULTS"), RESULTS_BASE);
        assert_eq!(equ(src, "STACK_TOP"), STACK_TOP);
        assert_eq!(equ(src, "PORT_RESULT"), u64::from(PORT_RESULT));
        assert_eq!(equ(src, "PORT_DONE"), u64::from(PORT_DONE));
        assert_eq!(equ(src, "PORT_PANIC"), u64::from(PORT_PANIC));
    }
}
