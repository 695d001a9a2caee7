//! ARM PrimeCell DMA-330 (PL330) DMA controller model.
//!
//! Layout, like the TRM (ARM DDI 0424):
//! * [`regs`]: register offsets, CCR fields, [`ThreadState`], [`FaultType`];
//! * [`insn`]: the instruction decoder (bytes → [`insn::Insn`]), separate from
//! * `exec`: the manager and channel threads and the microcode interpreter;
//! * [`asm`]: a small microcode assembler, including the exact program shape
//!   Linux's `drivers/dma/pl330.c` builds for mem-to-mem transfers.
//!
//! # Register interface
//! The frame is [`Pl330::FRAME_SIZE`] (4 KiB). Only aligned 32-bit accesses
//! inside the frame are accepted; any other width, an unaligned offset or an
//! offset beyond the frame is [`Pl330Error::BadAccess`] (the AXI/APB slave
//! interface of the DMA-330 is 32-bit only). As in QEMU, only INTEN, INTCLR,
//! DBGCMD, DBGINST0 and DBGINST1 are writable; writes elsewhere are ignored
//! (logged at debug level). INTCLR reads as 0 (Linux reads it). Reads of
//! unimplemented offsets, and of registers of channels beyond
//! [`Pl330Config::channels`], return 0.
//!
//! # Execution model
//! Threads run when a DBGCMD write issues DMAGO (or on [`Pl330::run_pending`]).
//! Each register write executes at most [`Pl330Config::step_budget`]
//! instructions (round-robin over channels) and stops early once a
//! wall-clock slice has passed; whatever is left continues in `run_pending`,
//! which is bounded the same way. The slice is [`Pl330Config::time_slice_us`]
//! (default 1 ms) for `run_pending` and a quarter of it (250 µs) for the run
//! inside a register write: a trapped access is served while a channel runs
//! away instead of waiting for a whole budget. The clock is first read after
//! [`MIN_STEPS_PER_RUN`] (4096) instructions of a run, then every
//! [`CLOCK_CHECK_STEPS`] (256), so the slice never cuts a run shorter than
//! that: a program of up to 4096 instructions (a Linux memcpy of up to about
//! 5 KiB with 4-byte bursts, 170 KiB with 128-byte bursts) always completes
//! inside the DBGCMD write, interrupt included, and a loaded host (the
//! backend descheduled mid-run) cannot shrink runs to a crawl.
//! `time_slice_us = 0` leaves only the step budget (deterministic). A run
//! stopped early resumes with the channel after the last one it served.
//!
//! Loads and stores complete at once, so DMARMB/DMAWMB never wait and
//! DBGSTATUS is never busy. Data moves through a byte MFIFO shared by all
//! channels (`data_buffer_lines × data_width_bits / 8` bytes): a DMALD
//! whose data cannot ever fit (the channel's own MFIFO data plus the burst
//! exceed the MFIFO) raises `mfifo_err`; one that only waits for other
//! channels stalls, and if no channel can make progress the stalled channels
//! fault with `lockup_err` (resource starvation). A DMAST with fewer bytes in
//! the MFIFO than it stores raises `st_data_unavailable`.
//!
//! Every access reaches guest memory through [`DmaMemory`]: instruction
//! fetches as [`DmaAccess::Fetch`], loads as `Read`, stores via `dma_write`.
//! Accesses are split at 4 KiB boundaries (AXI bursts never cross one). A
//! failed access faults the channel (`instr_fetch_err`, `data_read_err`,
//! `data_write_err`), which stops with CPC at the instruction, FSRC/FTR set,
//! and the abort line ([`Pl330::abort_level`]) asserted until DMAKILL.
//!
//! # Peripherals and security
//! No peripheral is wired: DMAWFP for a valid peripheral waits (CSR state
//! "waiting for peripheral") until [`Pl330::peripheral_request`] or DMAKILL;
//! a peripheral number ≥ `periph_reqs` is `operand_invalid`. DMALDP/DMASTP
//! behave as DMALDS/DMALDB (resp. ST) after the peripheral checks, DMAFLUSHP
//! drops a pending request. Security follows the TRM with the
//! [`Security`] settings (default: secure manager, all events and
//! peripherals non-secure, which is what Linux expects from CR3/CR4).
//!
//! # Debug interface
//! A DBGCMD write with `[1:0]` = 0 executes DBGINST0/1 (Linux's
//! `_execute_DBGINSN`); other DBGCMD values are reserved and ignored (logged),
//! as in QEMU. Only DMAGO (manager thread), DMAKILL and DMASEV may be issued;
//! any other instruction faults the addressed thread with `undef_instr`, and
//! every fault raised through the debug interface also sets `dbg_instr`.
//! DMAGO faults the manager with `operand_invalid` when the channel does not
//! exist or is not stopped (as QEMU), with `dmago_err` when a non-secure
//! manager starts a secure channel or (with [`Pl330Config::dmago_exec_gate`])
//! the start address is not fetchable. A debug instruction addressed to a
//! channel beyond the configuration is ignored (logged). DMAKILL is the only
//! way out of the faulting state (manager or channel).
//!
//! # Events and interrupts
//! DMASEV n with INTEN\[n\] set sets INT_EVENT_RIS\[n\] and so `irq[n]`
//! (level, see [`Pl330::irq_level`]) until INTCLR\[n\] is written. With
//! INTEN\[n\] clear it is an event: every channel waiting in DMAWFE n
//! resumes; if none waits, RIS\[n\] stays set until a DMAWFE n consumes it.
//! INTMIS = RIS & INTEN. `irq_abort` ([`Pl330::abort_level`]: some thread
//! is faulting) is one more line after the event lines
//! ([`Pl330::abort_line`]), or part of the combined line with
//! `combined_irq`; it stays high until DMAKILL of every faulting thread.
//!
//! Not modelled: the manager's own microcode (boot), the instruction cache,
//! `endian_swap_size` (data is stored unswapped), AXI cache/prot attributes
//! beyond the non-secure bit, the watchdog register.

pub mod asm;
mod exec;
pub mod insn;
pub mod regs;

#[cfg(test)]
mod tests;

use log::{debug, warn};
use thiserror::Error;

use crate::device::{DmaAccess, DmaMemory};
pub use exec::{Channel, Manager, RequestType};
pub use regs::{FaultType, ThreadState};

/// Configuration of the modelled controller (what CR0–CR4/CRD report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pl330Config {
    /// Number of channel threads (1..=8).
    pub channels: u8,
    /// Number of events / interrupt lines (1..=32).
    pub events: u8,
    /// Number of peripheral request interfaces (0..=32).
    pub periph_reqs: u8,
    /// PeriphID revision field `[23:20]` (0..=15); 0 = r0p0 (Linux then emits
    /// DMARMB/DMAWMB around each load/store), 2 = r1p1.
    pub revision: u8,
    /// AXI data width: 32, 64 or 128.
    pub data_width_bits: u32,
    /// MFIFO depth in lines of `data_width_bits` (1..=1024).
    pub data_buffer_lines: u32,
    /// One IRQ line = OR of all event IRQs (else one line per event).
    pub combined_irq: bool,
    /// Refuse a DMAGO whose start address is not fetchable (1-byte Fetch
    /// probe): manager fault `dmago_err`.
    pub dmago_exec_gate: bool,
    /// Max instructions executed per register write (and per `run_pending`).
    pub step_budget: u64,
    /// Wall-clock limit, in microseconds, of one [`Pl330::run_pending`] (or
    /// [`Pl330::peripheral_request`]) call; a register write that runs the
    /// threads gets a quarter of it ([`WRITE_SLICE_DIVISOR`]). 0 = no time
    /// limit (only `step_budget`: deterministic). A run is never cut by time
    /// before [`MIN_STEPS_PER_RUN`] instructions; after that the clock is
    /// read every [`CLOCK_CHECK_STEPS`].
    pub time_slice_us: u64,
}

/// Instructions a run executes before it first reads the clock: the fewest a
/// run executes before [`Pl330Config::time_slice_us`] can stop it (forward
/// progress whatever the host's load; short programs finish inline).
pub const MIN_STEPS_PER_RUN: u64 = 4096;

/// Instructions executed between two later reads of the clock (a read costs
/// tens of ns, a step of the release build a few tens of ns or more).
pub const CLOCK_CHECK_STEPS: u64 = 256;

/// A register write runs the threads for `time_slice_us / WRITE_SLICE_DIVISOR`
/// (at least 1 µs): the guest vCPU waits for that whole run, while the
/// remainder continues from [`Pl330::run_pending`] after the reply.
pub const WRITE_SLICE_DIVISOR: u64 = 4;

impl Default for Pl330Config {
    fn default() -> Self {
        Pl330Config {
            channels: 8,
            events: 8,
            periph_reqs: 4,
            revision: 2,
            data_width_bits: 64,
            data_buffer_lines: 256,
            combined_irq: false,
            dmago_exec_gate: true,
            step_budget: 1 << 22,
            time_slice_us: 1000,
        }
    }
}

/// Security configuration (the `boot_manager_ns`, `boot_irq_ns`,
/// `boot_periph_ns` tie-offs of the TRM), reported in CR0/CR3/CR4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Security {
    /// Manager thread is non-secure after reset (CR0 `mgr_ns_at_rst`, DSR DNS).
    pub manager_ns: bool,
    /// Bit n: event/IRQ n is non-secure (CR3).
    pub irq_ns: u32,
    /// Bit n: peripheral n is non-secure (CR4).
    pub periph_ns: u32,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            manager_ns: false,
            irq_ns: u32::MAX,
            periph_ns: u32::MAX,
        }
    }
}

/// Errors of the register interface and construction.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Pl330Error {
    /// Not an aligned 32-bit access inside the 4 KiB frame.
    #[error("bad PL330 register access at {offset:#x} size {size}")]
    BadAccess {
        /// Offset of the access.
        offset: u64,
        /// Size in bytes.
        size: usize,
    },
    /// The configuration is outside what a DMA-330 can be built with.
    #[error("invalid PL330 configuration: {0}")]
    InvalidConfig(String),
}

/// Counters, for tests and benchmarks (they survive [`Pl330::reset`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pl330Stats {
    /// Bytes read from memory by DMALD/DMALDP.
    pub bytes_loaded: u64,
    /// Bytes written to memory by DMAST/DMASTP/DMASTZ.
    pub bytes_stored: u64,
    /// Channel and debug instructions executed (NOP-ed conditional forms included).
    pub instructions: u64,
    /// Channels started by DMAGO.
    pub dmagos: u64,
    /// Threads that entered the faulting state.
    pub faults: u64,
    /// DMASEV executed (events and interrupts).
    pub events_signalled: u64,
    /// Runs (register write, `run_pending`, peripheral request) stopped by
    /// [`Pl330Config::time_slice_us`] with work left.
    pub time_slices_expired: u64,
}

/// The DMA-330 model: register frame, manager thread, channel threads, MFIFO.
#[derive(Debug)]
pub struct Pl330 {
    cfg: Pl330Config,
    sec: Security,
    manager: Manager,
    channels: Vec<Channel>,
    /// INTEN.
    inten: u32,
    /// INT_EVENT_RIS: pending events and interrupts.
    ris: u32,
    /// DBGINST0/1.
    dbginst: [u32; 2],
    /// Pending peripheral requests (bit n: peripheral n requested; see `periph_burst`).
    periph_pending: u32,
    /// Bit n: the pending request of peripheral n is a burst request.
    periph_burst: u32,
    /// Channel that the next scheduling round starts with.
    rr_next: usize,
    /// False only when no channel is executing: set wherever a channel
    /// enters `Executing`, cleared after a register write or a run finds none.
    /// Lets [`Pl330::pending`] (asked after every trapped write) answer
    /// without visiting every channel while the controller is idle.
    maybe_executing: bool,
    stats: Pl330Stats,
}

/// MFIFO capacity and data-width helpers.
impl Pl330Config {
    fn validate(&self) -> Result<(), Pl330Error> {
        let bad = |m: String| Err(Pl330Error::InvalidConfig(m));
        if !(1..=8).contains(&self.channels) {
            return bad(format!("channels {} not in 1..=8", self.channels));
        }
        if !(1..=32).contains(&self.events) {
            return bad(format!("events {} not in 1..=32", self.events));
        }
        if self.periph_reqs > 32 {
            return bad(format!("periph_reqs {} not in 0..=32", self.periph_reqs));
        }
        if self.revision > 15 {
            return bad(format!("revision {} not in 0..=15", self.revision));
        }
        if !matches!(self.data_width_bits, 32 | 64 | 128) {
            return bad(format!(
                "data_width_bits {} not 32, 64 or 128",
                self.data_width_bits
            ));
        }
        if !(1..=1024).contains(&self.data_buffer_lines) {
            return bad(format!(
                "data_buffer_lines {} not in 1..=1024",
                self.data_buffer_lines
            ));
        }
        if self.step_budget == 0 {
            return bad("step_budget must be at least 1".into());
        }
        Ok(())
    }

    /// Time slice of the run inside a register write (0 = no limit).
    fn write_slice_us(&self) -> u64 {
        if self.time_slice_us == 0 {
            0
        } else {
            (self.time_slice_us / WRITE_SLICE_DIVISOR).max(1)
        }
    }

    /// MFIFO size in bytes.
    pub fn mfifo_bytes(&self) -> usize {
        // Bounded by validate(): at most 1024 * 16.
        (self.data_buffer_lines as usize) * (self.data_width_bits as usize / 8)
    }

    /// Mask of implemented events.
    fn event_mask(&self) -> u32 {
        if self.events >= 32 {
            u32::MAX
        } else {
            (1u32 << self.events) - 1
        }
    }
}

impl Pl330 {
    /// Size of the register frame.
    pub const FRAME_SIZE: u64 = 0x1000;
    /// DSR offset.
    pub const DSR: u64 = regs::DSR;
    /// DPC offset.
    pub const DPC: u64 = regs::DPC;
    /// INTEN offset.
    pub const INTEN: u64 = regs::INTEN;
    /// INT_EVENT_RIS offset.
    pub const INT_EVENT_RIS: u64 = regs::INT_EVENT_RIS;
    /// INTMIS offset.
    pub const INTMIS: u64 = regs::INTMIS;
    /// INTCLR offset (W1C).
    pub const INTCLR: u64 = regs::INTCLR;
    /// FSRD offset.
    pub const FSRD: u64 = regs::FSRD;
    /// FSRC offset.
    pub const FSRC: u64 = regs::FSRC;
    /// FTRD offset.
    pub const FTRD: u64 = regs::FTRD;
    /// DBGSTATUS offset.
    pub const DBGSTATUS: u64 = regs::DBGSTATUS;
    /// DBGCMD offset.
    pub const DBGCMD: u64 = regs::DBGCMD;
    /// DBGINST0 offset.
    pub const DBGINST0: u64 = regs::DBGINST0;
    /// DBGINST1 offset.
    pub const DBGINST1: u64 = regs::DBGINST1;
    /// CR0 offset.
    pub const CR0: u64 = regs::CR0;
    /// CRD offset.
    pub const CRD: u64 = regs::CRD;
    /// PeriphID0 offset.
    pub const PERIPH_ID0: u64 = regs::PERIPH_ID0;
    /// PCellID0 offset.
    pub const PCELL_ID0: u64 = regs::PCELL_ID0;

    /// Builds a controller in its reset state; an invalid configuration is an error.
    pub fn new(cfg: Pl330Config) -> Result<Self, Pl330Error> {
        cfg.validate()?;
        let channels = (0..cfg.channels).map(Channel::new).collect();
        let sec = Security::default();
        Ok(Pl330 {
            manager: Manager::new(sec.manager_ns),
            cfg,
            sec,
            channels,
            inten: 0,
            ris: 0,
            dbginst: [0; 2],
            periph_pending: 0,
            periph_burst: 0,
            rr_next: 0,
            maybe_executing: false,
            stats: Pl330Stats::default(),
        })
    }

    /// Replaces the security tie-offs (then resets the controller, as they
    /// are sampled at reset).
    pub fn with_security(mut self, sec: Security) -> Self {
        self.sec = sec;
        self.reset();
        self
    }

    /// The configuration.
    pub fn config(&self) -> &Pl330Config {
        &self.cfg
    }

    /// The security tie-offs.
    pub fn security(&self) -> Security {
        self.sec
    }

    /// Counters.
    pub fn stats(&self) -> Pl330Stats {
        self.stats
    }

    /// Channel thread `n`, for inspection.
    pub fn channel(&self, n: usize) -> Option<&Channel> {
        self.channels.get(n)
    }

    /// The manager thread, for inspection.
    pub fn manager(&self) -> &Manager {
        &self.manager
    }

    /// Resets the controller (all threads stopped, registers cleared,
    /// interrupts deasserted). Counters are kept.
    pub fn reset(&mut self) {
        self.manager = Manager::new(self.sec.manager_ns);
        for c in &mut self.channels {
            *c = Channel::new(c.id);
        }
        self.inten = 0;
        self.ris = 0;
        self.dbginst = [0; 2];
        self.periph_pending = 0;
        self.periph_burst = 0;
        self.rr_next = 0;
    }

    fn check_access(offset: u64, size: usize) -> Result<(), Pl330Error> {
        if size != 4 || offset % 4 != 0 || offset >= Self::FRAME_SIZE {
            return Err(Pl330Error::BadAccess { offset, size });
        }
        Ok(())
    }

    fn peripheral_id(&self) -> u32 {
        0x0000_1330 | (0x4 << 16) | (u32::from(self.cfg.revision & 0xf) << 20)
    }

    /// CR0 as the TRM lays it out.
    fn cr0(&self) -> u32 {
        let mut v = 0;
        if self.cfg.periph_reqs > 0 {
            v |= regs::CR0_PERIPH_REQ;
            v |= (u32::from(self.cfg.periph_reqs - 1) & 0x1f) << regs::CR0_NUM_PERIPH_SHIFT;
        }
        if self.sec.manager_ns {
            v |= regs::CR0_MGR_NS_AT_RST;
        }
        v |= (u32::from(self.cfg.channels - 1) & 7) << regs::CR0_NUM_CHNLS_SHIFT;
        v |= (u32::from(self.cfg.events - 1) & 0x1f) << regs::CR0_NUM_EVENTS_SHIFT;
        v
    }

    /// CRD: data width, read/write issuing capability and queue depths
    /// (QEMU's defaults: cap 8, depth 16), MFIFO depth.
    fn crd(&self) -> u32 {
        let width = match self.cfg.data_width_bits {
            32 => 2,
            64 => 3,
            _ => 4,
        };
        width
            | (7 << regs::CRD_WR_CAP_SHIFT)
            | (15 << regs::CRD_WR_Q_DEP_SHIFT)
            | (7 << regs::CRD_RD_CAP_SHIFT)
            | (15 << regs::CRD_RD_Q_DEP_SHIFT)
            | (((self.cfg.data_buffer_lines - 1) & 0x3ff) << regs::CRD_DATA_BUF_DEP_SHIFT)
    }

    fn mask_to_channels(&self, v: u32) -> u32 {
        v & ((1u32 << self.cfg.channels) - 1)
    }

    /// Reads a register. Only aligned 32-bit reads inside the frame are valid.
    pub fn read(&mut self, offset: u64, size: usize) -> Result<u32, Pl330Error> {
        Self::check_access(offset, size)?;
        let v = match offset {
            regs::DSR => self.manager.dsr(),
            regs::DPC => self.manager.pc,
            regs::INTEN => self.inten,
            regs::INT_EVENT_RIS => self.ris,
            regs::INTMIS => self.ris & self.inten,
            regs::INTCLR => 0,
            regs::FSRD => u32::from(self.manager.state.is_faulting()),
            regs::FSRC => {
                let mut v = 0;
                for c in &self.channels {
                    if c.state.is_faulting() {
                        v |= 1 << c.id;
                    }
                }
                self.mask_to_channels(v)
            }
            regs::FTRD => self.manager.fault,
            o @ regs::FTR0..=0x0fc => {
                let n = (o - regs::FTR0) / regs::FTR_STRIDE;
                self.channels.get(n as usize).map_or(0, |c| c.fault)
            }
            o @ regs::CSR0..=0x3fc => {
                let n = (o - regs::CSR0) / regs::CSR_STRIDE;
                match self.channels.get(n as usize) {
                    Some(c) if o % regs::CSR_STRIDE == 0 => c.csr(),
                    Some(c) => c.pc,
                    None => 0,
                }
            }
            o @ regs::SAR0..=0xcfc => {
                let n = (o - regs::SAR0) / regs::CHAN_STRIDE;
                match (
                    self.channels.get(n as usize),
                    (o - regs::SAR0) % regs::CHAN_STRIDE,
                ) {
                    (Some(c), 0x00) => c.sar,
                    (Some(c), 0x04) => c.dar,
                    (Some(c), 0x08) => c.ccr,
                    (Some(c), 0x0c) => u32::from(c.lc[0]),
                    (Some(c), 0x10) => u32::from(c.lc[1]),
                    _ => 0,
                }
            }
            regs::DBGSTATUS => 0,
            regs::DBGCMD => 0,
            regs::DBGINST0 | regs::DBGINST1 => 0,
            regs::CR0 => self.cr0(),
            // i-cache: 16-byte lines (code 4), 8 lines.
            regs::CR1 => 4 | (7 << 4),
            regs::CR2 => 0,
            regs::CR3 => self.sec.irq_ns & self.cfg.event_mask(),
            regs::CR4 => {
                if self.cfg.periph_reqs >= 32 {
                    self.sec.periph_ns
                } else {
                    self.sec.periph_ns & ((1u32 << self.cfg.periph_reqs) - 1)
                }
            }
            regs::CRD => self.crd(),
            o @ regs::PERIPH_ID0..=0xfec => {
                (self.peripheral_id() >> (8 * ((o - 0xfe0) / 4))) & 0xff
            }
            o @ regs::PCELL_ID0..=0xffc => (0xb105_f00du32 >> (8 * ((o - 0xff0) / 4))) & 0xff,
            o => {
                debug!("pl330: read of unimplemented offset {o:#x}");
                0
            }
        };
        Ok(v)
    }

    /// Writes a register. Only aligned 32-bit writes inside the frame are
    /// valid. A DBGCMD write executes the debug instruction and then runs the
    /// threads for up to `step_budget` instructions and (unless 0) about
    /// `time_slice_us / WRITE_SLICE_DIVISOR` microseconds.
    pub fn write(
        &mut self,
        offset: u64,
        size: usize,
        value: u32,
        mem: &dyn DmaMemory,
    ) -> Result<(), Pl330Error> {
        Self::check_access(offset, size)?;
        match offset {
            regs::INTEN => self.inten = value & self.cfg.event_mask(),
            regs::INTCLR => {
                // W1C, only for events routed to an interrupt (INTEN set).
                self.ris &= !(value & self.inten);
            }
            regs::DBGINST0 => self.dbginst[0] = value,
            regs::DBGINST1 => self.dbginst[1] = value,
            regs::DBGCMD => {
                if value & 3 == 0 {
                    self.exec_debug(mem);
                    self.run_budget(mem, self.cfg.write_slice_us());
                } else {
                    warn!("pl330: reserved DBGCMD value {value:#x} ignored");
                }
            }
            o => debug!("pl330: write {value:#x} to read-only offset {o:#x} ignored"),
        }
        self.settle_executing();
        Ok(())
    }

    /// Clears the `maybe_executing` hint once no channel executes.
    pub(super) fn settle_executing(&mut self) {
        if self.maybe_executing {
            self.maybe_executing = self.any_executing();
        }
    }

    fn any_executing(&self) -> bool {
        self.channels
            .iter()
            .any(|c| c.state == ThreadState::Executing)
    }

    /// Number of interrupt lines: one per event plus `irq_abort` (the last
    /// line, [`Pl330::abort_line`]), or one combined line (events and abort).
    pub fn num_irq_lines(&self) -> u32 {
        if self.cfg.combined_irq {
            1
        } else {
            u32::from(self.cfg.events) + 1
        }
    }

    /// The line that carries `irq_abort`: the one after the event lines, or
    /// the combined line (0).
    pub fn abort_line(&self) -> u32 {
        if self.cfg.combined_irq {
            0
        } else {
            u32::from(self.cfg.events)
        }
    }

    /// Level of interrupt line `line`: per event, INTEN\[n\] && event n
    /// pending; the abort line, [`Self::abort_level`]; the combined line, any
    /// of them. Out-of-range lines are low.
    pub fn irq_level(&self, line: u32) -> bool {
        self.level_of(line, self.ris & self.inten, self.abort_level())
    }

    fn level_of(&self, line: u32, mis: u32, abort: bool) -> bool {
        let events = u32::from(self.cfg.events);
        if self.cfg.combined_irq {
            line == 0 && (mis != 0 || abort)
        } else if line < events {
            mis & (1 << line) != 0
        } else {
            line == events && abort
        }
    }

    /// [`Self::irq_level`] of every line `i < out.len()` into `out[i]`, in
    /// one pass (called after every access).
    pub fn irq_levels_into(&self, out: &mut [bool]) {
        let mis = self.ris & self.inten;
        let abort = self.abort_level();
        for (line, level) in (0u32..).zip(out.iter_mut()) {
            *level = self.level_of(line, mis, abort);
        }
    }

    /// INTMIS: bit n = interrupt n asserted (per-event lines), whatever
    /// `combined_irq` says.
    pub fn intmis(&self) -> u32 {
        self.ris & self.inten
    }

    /// Level of `irq_abort`: some thread is faulting.
    pub fn abort_level(&self) -> bool {
        self.manager.state.is_faulting() || self.channels.iter().any(|c| c.state.is_faulting())
    }

    /// A value that changes whenever some line level may have changed: INTMIS
    /// in bits 0–31, the abort level in bit 32.
    pub fn irq_fingerprint(&self) -> u64 {
        u64::from(self.intmis()) | (u64::from(self.abort_level()) << 32)
    }

    /// Channels still executing (after a budget ran out).
    pub fn pending(&self) -> bool {
        self.maybe_executing && self.any_executing()
    }

    /// Continues executing for up to `step_budget` instructions and (unless
    /// 0) about `time_slice_us` microseconds; returns [`Pl330::pending`].
    pub fn run_pending(&mut self, mem: &dyn DmaMemory) -> bool {
        self.run_budget(mem, self.cfg.time_slice_us);
        self.pending()
    }

    /// A peripheral asserts its DMA request (`burst`: a burst request, else
    /// single). A channel waiting in DMAWFP for it resumes; otherwise the
    /// request stays pending until DMAWFP or DMAFLUSHP. Peripherals beyond
    /// `periph_reqs` are ignored.
    pub fn peripheral_request(&mut self, periph: u8, burst: bool, mem: &dyn DmaMemory) {
        if periph >= self.cfg.periph_reqs {
            return;
        }
        let bit = 1u32 << periph;
        self.periph_pending |= bit;
        if burst {
            self.periph_burst |= bit;
        } else {
            self.periph_burst &= !bit;
        }
        self.wake_periph_waiters();
        self.run_budget(mem, self.cfg.time_slice_us);
    }
}

/// Probes a 1-byte instruction fetch (the DMAGO execute gate).
fn fetchable(mem: &dyn DmaMemory, addr: u32) -> bool {
    let mut b = [0u8; 1];
    // Deferred: mapped without an fd and executable (the permission was
    // checked); the channel's first fetch gets the bytes.
    match mem.dma_read(u64::from(addr), &mut b, DmaAccess::Fetch) {
        Ok(()) => true,
        Err(e) => e.is_deferred(),
    }
}
