//! DMA-330 register map, field layouts, thread states and fault types, as the
//! TRM (ARM DDI 0424) describes them.
//!
//! All registers are 32 bits wide and live in a 4 KiB frame. Per-channel
//! registers repeat with the strides below.

/// DMA Manager Status Register (DSR): `[3:0]` state, `[8:4]` wakeup event, `[9]` DNS.
pub const DSR: u64 = 0x000;
/// DMA Program Counter Register (DPC) of the manager thread.
pub const DPC: u64 = 0x004;
/// Interrupt Enable Register: bit n = 1, DMASEV n drives `irq[n]`; 0, it is an event.
pub const INTEN: u64 = 0x020;
/// Event-Interrupt Raw Status Register (Linux: ES).
pub const INT_EVENT_RIS: u64 = 0x024;
/// Interrupt Status Register (Linux: INTSTATUS) = RIS & INTEN.
pub const INTMIS: u64 = 0x028;
/// Interrupt Clear Register, write-only, W1C for events with INTEN set. Reads 0.
pub const INTCLR: u64 = 0x02c;
/// Fault Status DMA Manager Register (Linux: FSM). Bit 0: manager faulting.
pub const FSRD: u64 = 0x030;
/// Fault Status DMA Channel Register (Linux: FSC). Bit n: channel n faulting.
pub const FSRC: u64 = 0x034;
/// Fault Type DMA Manager Register (Linux: FTM). See [`FaultType`].
pub const FTRD: u64 = 0x038;
/// Fault Type DMA Channel Register of channel 0 (Linux: FTC). Stride [`FTR_STRIDE`].
pub const FTR0: u64 = 0x040;
/// Stride of the FTR registers.
pub const FTR_STRIDE: u64 = 0x4;
/// Channel Status Register of channel 0 (Linux: CS). Stride [`CSR_STRIDE`].
pub const CSR0: u64 = 0x100;
/// Channel Program Counter Register of channel 0. Stride [`CSR_STRIDE`].
pub const CPC0: u64 = 0x104;
/// Stride of the CSR/CPC pairs.
pub const CSR_STRIDE: u64 = 0x8;
/// Source Address Register of channel 0. Stride [`CHAN_STRIDE`].
pub const SAR0: u64 = 0x400;
/// Destination Address Register of channel 0.
pub const DAR0: u64 = 0x404;
/// Channel Control Register of channel 0.
pub const CCR0: u64 = 0x408;
/// Loop Counter 0 Register of channel 0.
pub const LC0_0: u64 = 0x40c;
/// Loop Counter 1 Register of channel 0.
pub const LC1_0: u64 = 0x410;
/// Stride of the SAR/DAR/CCR/LC0/LC1 blocks.
pub const CHAN_STRIDE: u64 = 0x20;
/// Debug Status Register: bit 0 busy.
pub const DBGSTATUS: u64 = 0xd00;
/// Debug Command Register: `[1:0]` = 0b00 executes DBGINST0/1; other values reserved.
pub const DBGCMD: u64 = 0xd04;
/// Debug Instruction-0: `[0]` channel thread, `[10:8]` channel, `[23:16]` byte 0, `[31:24]` byte 1.
pub const DBGINST0: u64 = 0xd08;
/// Debug Instruction-1: instruction bytes 2..5.
pub const DBGINST1: u64 = 0xd0c;
/// Configuration Register 0.
pub const CR0: u64 = 0xe00;
/// Configuration Register 1 (instruction cache).
pub const CR1: u64 = 0xe04;
/// Configuration Register 2 (boot address).
pub const CR2: u64 = 0xe08;
/// Configuration Register 3 (event/IRQ non-secure bits, `boot_irq_ns`).
pub const CR3: u64 = 0xe0c;
/// Configuration Register 4 (peripheral non-secure bits, `boot_periph_ns`).
pub const CR4: u64 = 0xe10;
/// DMA Configuration Register (data width, queues, MFIFO depth).
pub const CRD: u64 = 0xe14;
/// Peripheral Identification Register 0 (PeriphID0..3 at 0xFE0..0xFEC).
pub const PERIPH_ID0: u64 = 0xfe0;
/// PrimeCell Identification Register 0 (PCellID0..3 at 0xFF0..0xFFC).
pub const PCELL_ID0: u64 = 0xff0;

/// Offset of FTR n.
pub const fn ftr(n: u64) -> u64 {
    FTR0 + n * FTR_STRIDE
}
/// Offset of CSR n.
pub const fn csr(n: u64) -> u64 {
    CSR0 + n * CSR_STRIDE
}
/// Offset of CPC n.
pub const fn cpc(n: u64) -> u64 {
    CPC0 + n * CSR_STRIDE
}
/// Offset of SAR n.
pub const fn sar(n: u64) -> u64 {
    SAR0 + n * CHAN_STRIDE
}
/// Offset of DAR n.
pub const fn dar(n: u64) -> u64 {
    DAR0 + n * CHAN_STRIDE
}
/// Offset of CCR n.
pub const fn ccr(n: u64) -> u64 {
    CCR0 + n * CHAN_STRIDE
}
/// Offset of LC0 n.
pub const fn lc0(n: u64) -> u64 {
    LC0_0 + n * CHAN_STRIDE
}
/// Offset of LC1 n.
pub const fn lc1(n: u64) -> u64 {
    LC1_0 + n * CHAN_STRIDE
}

/// DSR/CSR: non-secure bit of the manager (DNS).
pub const DSR_DNS: u32 = 1 << 9;
/// CSR: `dmawfp_b_ns` — DMAWFP executed with the B (burst) operand.
pub const CSR_DMAWFP_B_NS: u32 = 1 << 14;
/// CSR: `dmawfp_periph` — DMAWFP executed with the P (periph) operand.
pub const CSR_DMAWFP_PERIPH: u32 = 1 << 15;
/// CSR: CNS — channel operates in the non-secure state.
pub const CSR_CNS: u32 = 1 << 21;
/// DBGSTATUS: debug interface busy.
pub const DBGSTATUS_BUSY: u32 = 1 << 0;

/// CR0: peripheral request interface present.
pub const CR0_PERIPH_REQ: u32 = 1 << 0;
/// CR0: manager boots from `boot_addr` (never set by this model).
pub const CR0_BOOT_EN: u32 = 1 << 1;
/// CR0: manager is non-secure after reset.
pub const CR0_MGR_NS_AT_RST: u32 = 1 << 2;
/// CR0 shift of `num_chnls - 1`.
pub const CR0_NUM_CHNLS_SHIFT: u32 = 4;
/// CR0 shift of `num_periph_req - 1`.
pub const CR0_NUM_PERIPH_SHIFT: u32 = 12;
/// CR0 shift of `num_events - 1`.
pub const CR0_NUM_EVENTS_SHIFT: u32 = 17;
/// CRD shift of `wr_cap - 1`.
pub const CRD_WR_CAP_SHIFT: u32 = 4;
/// CRD shift of `wr_q_dep - 1`.
pub const CRD_WR_Q_DEP_SHIFT: u32 = 8;
/// CRD shift of `rd_cap - 1`.
pub const CRD_RD_CAP_SHIFT: u32 = 12;
/// CRD shift of `rd_q_dep - 1`.
pub const CRD_RD_Q_DEP_SHIFT: u32 = 16;
/// CRD shift of `data_buffer_dep - 1` (10 bits).
pub const CRD_DATA_BUF_DEP_SHIFT: u32 = 20;

/// Operating state of a thread, as encoded in DSR/CSR `[3:0]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ThreadState {
    /// No valid PC, not fetching.
    Stopped = 0x0,
    /// Executing microcode.
    Executing = 0x1,
    /// Instruction cache miss (never visible in this model).
    CacheMiss = 0x2,
    /// Updating PC (never visible in this model).
    UpdatingPc = 0x3,
    /// DMAWFE: waiting for an event.
    WaitingForEvent = 0x4,
    /// DMARMB/DMAWMB barrier (never visible: loads and stores complete at once).
    AtBarrier = 0x5,
    /// Read/write queue busy (never visible).
    QueueBusy = 0x6,
    /// DMAWFP: waiting for a peripheral request.
    WaitingForPeripheral = 0x7,
    /// DMAKILL in progress (transient, never visible).
    Killing = 0x8,
    /// DMAEND in progress (transient, never visible).
    Completing = 0x9,
    /// Fault raised, outstanding transactions completing (never visible).
    FaultingCompleting = 0xe,
    /// Faulting: stopped until DMAKILL.
    Faulting = 0xf,
}

impl ThreadState {
    /// The 4-bit code of DSR/CSR.
    pub const fn code(self) -> u32 {
        self as u32
    }
    /// FSRC/FSRD count a thread in these states as faulting.
    pub const fn is_faulting(self) -> bool {
        matches!(
            self,
            ThreadState::Faulting | ThreadState::FaultingCompleting
        )
    }
}

/// Fault types of FTRD (manager) and FTR n (channel), with the TRM's bit
/// positions (`FaultType::X as u32` is the register bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum FaultType {
    /// `undef_instr`: undefined instruction.
    UndefInstr = 1 << 0,
    /// `operand_invalid`: operand not valid for this configuration.
    OperandInvalid = 1 << 1,
    /// `dmago_err` (manager only): DMAGO with inappropriate security.
    DmagoErr = 1 << 4,
    /// `mgr_evnt_err` / `ch_evnt_err`: DMAWFE/DMASEV on a secure event from non-secure state.
    EvntErr = 1 << 5,
    /// `ch_periph_err`: DMAWFP/LDP/STP/FLUSHP on a secure peripheral from non-secure state.
    ChPeriphErr = 1 << 6,
    /// `ch_rdwr_err`: non-secure channel attempted a secure read or write.
    ChRdwrErr = 1 << 7,
    /// `mfifo_err`: the MFIFO is too small to hold the DMALD data.
    MfifoErr = 1 << 12,
    /// `st_data_unavailable`: the MFIFO does not hold the data for the DMAST.
    StDataUnavailable = 1 << 13,
    /// `instr_fetch_err`: instruction fetch got an error response.
    InstrFetchErr = 1 << 16,
    /// `data_write_err`: data store got an error response.
    DataWriteErr = 1 << 17,
    /// `data_read_err`: data load got an error response.
    DataReadErr = 1 << 18,
    /// `dbg_instr`: the fault was caused by an instruction from the debug interface.
    DbgInstr = 1 << 30,
    /// `lockup_err`: channel locked up by resource starvation.
    LockupErr = 1 << 31,
}

impl FaultType {
    /// The register bit of this fault type.
    pub const fn bit(self) -> u32 {
        self as u32
    }
    /// All manager fault types (FTRD), in bit order.
    pub const MANAGER: [FaultType; 6] = [
        FaultType::UndefInstr,
        FaultType::OperandInvalid,
        FaultType::DmagoErr,
        FaultType::EvntErr,
        FaultType::InstrFetchErr,
        FaultType::DbgInstr,
    ];
    /// All channel fault types (FTR n), in bit order.
    pub const CHANNEL: [FaultType; 12] = [
        FaultType::UndefInstr,
        FaultType::OperandInvalid,
        FaultType::EvntErr,
        FaultType::ChPeriphErr,
        FaultType::ChRdwrErr,
        FaultType::MfifoErr,
        FaultType::StDataUnavailable,
        FaultType::InstrFetchErr,
        FaultType::DataWriteErr,
        FaultType::DataReadErr,
        FaultType::DbgInstr,
        FaultType::LockupErr,
    ];
}

/// CCR: source address increments.
pub const CCR_SRC_INC: u32 = 1 << 0;
/// CCR shift of `src_burst_size` (log2 bytes per beat).
pub const CCR_SRC_BURST_SIZE_SHIFT: u32 = 1;
/// CCR shift of `src_burst_len` (beats - 1).
pub const CCR_SRC_BURST_LEN_SHIFT: u32 = 4;
/// CCR shift of `src_prot_ctrl` (AxPROT).
pub const CCR_SRC_PROT_SHIFT: u32 = 8;
/// CCR shift of `src_cache_ctrl`.
pub const CCR_SRC_CACHE_SHIFT: u32 = 11;
/// CCR: destination address increments.
pub const CCR_DST_INC: u32 = 1 << 14;
/// CCR shift of `dst_burst_size`.
pub const CCR_DST_BURST_SIZE_SHIFT: u32 = 15;
/// CCR shift of `dst_burst_len`.
pub const CCR_DST_BURST_LEN_SHIFT: u32 = 18;
/// CCR shift of `dst_prot_ctrl`.
pub const CCR_DST_PROT_SHIFT: u32 = 22;
/// CCR shift of `dst_cache_ctrl`.
pub const CCR_DST_CACHE_SHIFT: u32 = 25;
/// CCR shift of `endian_swap_size`.
pub const CCR_ENDIAN_SWAP_SHIFT: u32 = 28;
/// AxPROT bit 1: non-secure access (within `src_prot_ctrl`/`dst_prot_ctrl`).
pub const PROT_NS: u32 = 1 << 1;

/// One side (source or destination) of a decoded CCR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BurstSpec {
    /// Address increments after each beat.
    pub inc: bool,
    /// Bytes per beat (1 << burst_size: 1..=128).
    pub size: u32,
    /// Beats per burst (1..=16).
    pub len: u32,
    /// AxPROT (`[0]` privileged, `[1]` non-secure, `[2]` instruction).
    pub prot: u32,
    /// AxCACHE.
    pub cache: u32,
}

/// A decoded Channel Control Register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ccr {
    /// Source side (DMALD).
    pub src: BurstSpec,
    /// Destination side (DMAST/DMASTZ).
    pub dst: BurstSpec,
    /// `endian_swap_size` (0 = none; not applied by this model).
    pub endian_swap: u32,
}

impl Ccr {
    /// Decodes a CCR value.
    pub const fn decode(v: u32) -> Ccr {
        Ccr {
            src: BurstSpec {
                inc: v & CCR_SRC_INC != 0,
                size: 1 << ((v >> CCR_SRC_BURST_SIZE_SHIFT) & 7),
                len: ((v >> CCR_SRC_BURST_LEN_SHIFT) & 0xf) + 1,
                prot: (v >> CCR_SRC_PROT_SHIFT) & 7,
                cache: (v >> CCR_SRC_CACHE_SHIFT) & 7,
            },
            dst: BurstSpec {
                inc: v & CCR_DST_INC != 0,
                size: 1 << ((v >> CCR_DST_BURST_SIZE_SHIFT) & 7),
                len: ((v >> CCR_DST_BURST_LEN_SHIFT) & 0xf) + 1,
                prot: (v >> CCR_DST_PROT_SHIFT) & 7,
                cache: (v >> CCR_DST_CACHE_SHIFT) & 7,
            },
            endian_swap: (v >> CCR_ENDIAN_SWAP_SHIFT) & 7,
        }
    }

    /// Builds the CCR value Linux's `_prepare_ccr` produces for equal source
    /// and destination settings: incrementing addresses, `burst_size_log2`
    /// (0..=7), `burst_len` (1..=16), plus `extra` bits (prot/cache/swap).
    pub const fn linux(burst_size_log2: u32, burst_len: u32, extra: u32) -> u32 {
        let len = (burst_len.wrapping_sub(1)) & 0xf;
        let size = burst_size_log2 & 7;
        CCR_SRC_INC
            | CCR_DST_INC
            | (len << CCR_SRC_BURST_LEN_SHIFT)
            | (len << CCR_DST_BURST_LEN_SHIFT)
            | (size << CCR_SRC_BURST_SIZE_SHIFT)
            | (size << CCR_DST_BURST_SIZE_SHIFT)
            | extra
    }
}
