//! The manager thread, the channel threads and the microcode interpreter.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use log::{debug, trace, warn};

use super::insn::{self, AddrReg, Cond, DecodeError, Insn, LoopCounter, MovReg, WfpKind};
use super::regs::{self, BurstSpec, Ccr, FaultType, ThreadState};
use super::{fetchable, Pl330, CLOCK_CHECK_STEPS, MIN_STEPS_PER_RUN};
use crate::device::{DmaAccess, DmaMemory};

/// AXI bursts never cross a 4 KiB boundary; memory accesses are split there.
const AXI_BOUNDARY: u32 = 0x1000;
/// Instructions a channel runs before the scheduler moves to the next one.
const QUANTUM: u64 = 64;
/// Largest burst: 16 beats of 128 bytes.
const MAX_BURST_BYTES: usize = 16 * 128;
/// Consecutive stalled attempts after which a channel faults with
/// `lockup_err` (the TRM's watchdog; QEMU uses the same limit).
const WATCHDOG_LIMIT: u32 = 1024;

/// Request type a channel's conditional instructions test (set by DMAWFP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// Single: DMALDS/DMASTS/DMALPENDS execute, the B forms are DMANOP.
    Single,
    /// Burst: the B forms execute, the S forms are DMANOP.
    Burst,
}

/// The DMA manager thread. It only executes instructions issued through the
/// debug interface (DMAGO, DMAKILL, DMASEV); the boot program is not modelled.
#[derive(Debug, Clone)]
pub struct Manager {
    /// Operating state (Stopped or Faulting).
    pub state: ThreadState,
    /// FTRD.
    pub fault: u32,
    /// DNS: the manager is non-secure.
    pub ns: bool,
    /// DPC (always 0: no manager program).
    pub pc: u32,
}

impl Manager {
    pub(super) fn new(ns: bool) -> Self {
        Manager {
            state: ThreadState::Stopped,
            fault: 0,
            ns,
            pc: 0,
        }
    }

    /// DSR value.
    pub(super) fn dsr(&self) -> u32 {
        self.state.code() | if self.ns { regs::DSR_DNS } else { 0 }
    }
}

/// One DMA channel thread.
#[derive(Debug, Clone)]
pub struct Channel {
    /// Channel number.
    pub id: u8,
    /// Operating state (CSR `[3:0]`).
    pub state: ThreadState,
    /// CPC.
    pub pc: u32,
    /// SAR.
    pub sar: u32,
    /// DAR.
    pub dar: u32,
    /// CCR.
    pub ccr: u32,
    /// LC0, LC1.
    pub lc: [u8; 2],
    /// CNS: the channel runs non-secure.
    pub ns: bool,
    /// FTR.
    pub fault: u32,
    /// CSR `wakeup_number`: event (WFE) or peripheral (WFP) waited for.
    pub wakeup: u8,
    /// CSR `dmawfp_b_ns` / `dmawfp_periph`: operand of the last DMAWFP.
    pub wfp_kind: Option<WfpKind>,
    /// Request type for the conditional instructions.
    pub request: RequestType,
    /// This channel's bytes in the MFIFO (loaded, not yet stored).
    pub mfifo: VecDeque<u8>,
    /// Consecutive stalled attempts (watchdog).
    stalls: u32,
}

impl Channel {
    pub(super) fn new(id: u8) -> Self {
        Channel {
            id,
            state: ThreadState::Stopped,
            pc: 0,
            sar: 0,
            dar: 0,
            ccr: 0,
            lc: [0; 2],
            ns: false,
            fault: 0,
            wakeup: 0,
            wfp_kind: None,
            request: RequestType::Single,
            mfifo: VecDeque::new(),
            stalls: 0,
        }
    }

    /// CSR value.
    pub(super) fn csr(&self) -> u32 {
        let mut v = self.state.code() | (u32::from(self.wakeup & 0x1f) << 4);
        match self.wfp_kind {
            Some(WfpKind::Burst) => v |= regs::CSR_DMAWFP_B_NS,
            Some(WfpKind::Periph) => v |= regs::CSR_DMAWFP_PERIPH,
            _ => {}
        }
        if self.ns {
            v |= regs::CSR_CNS;
        }
        v
    }
}

/// The thread an instruction runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Thread {
    Manager,
    Channel(usize),
}

/// What one channel step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// An instruction executed (or was NOP-ed); the channel may continue.
    Progress,
    /// The instruction must wait for MFIFO space other channels hold.
    Stalled,
    /// The instruction waits for memory the client serves by messages
    /// (`DmaFault::Deferred`); it runs again once the server fetched it.
    Waiting,
    /// The channel left the Executing state (end, kill, fault, wait).
    Left,
}

/// Result of executing one instruction on a channel.
enum Flow {
    /// Continue at the next instruction.
    Next,
    /// Continue at this address.
    Jump(u32),
    /// Retry the same instruction later (MFIFO space).
    Stall,
    /// Retry the same instruction once the server has exchanged the DMA
    /// messages it waits for (memory mapped without an fd).
    Wait,
    /// The channel stopped or waits; the PC stays at this instruction.
    Leave,
    /// Precise/imprecise abort: fault, PC stays at this instruction.
    Fault(FaultType),
}

/// Length of a load/store burst: bytes moved and the address afterwards.
///
/// An unaligned start makes the first beat shorter (it ends at the next
/// `size` boundary); with a fixed address every beat is that short.
fn burst_bytes(addr: u32, spec: &BurstSpec, beats: u32) -> u32 {
    let mis = addr & (spec.size - 1);
    if spec.inc {
        spec.size * beats - mis
    } else {
        (spec.size - mis) * beats
    }
}

/// Reads `buf.len()` bytes at `addr` (wrapping at 4 GiB), split at 4 KiB.
fn mem_read(
    mem: &dyn DmaMemory,
    addr: u32,
    buf: &mut [u8],
    access: DmaAccess,
) -> Result<(), crate::device::DmaFault> {
    let mut a = addr;
    let mut rest = buf;
    while !rest.is_empty() {
        let room = (AXI_BOUNDARY - (a % AXI_BOUNDARY)) as usize;
        let n = room.min(rest.len());
        let (head, tail) = rest.split_at_mut(n);
        mem.dma_read(u64::from(a), head, access)?;
        a = a.wrapping_add(n as u32);
        rest = tail;
    }
    Ok(())
}

/// Writes `data` at `addr` (wrapping at 4 GiB), split at 4 KiB.
fn mem_write(mem: &dyn DmaMemory, addr: u32, data: &[u8]) -> Result<(), crate::device::DmaFault> {
    let mut a = addr;
    let mut rest = data;
    while !rest.is_empty() {
        let room = (AXI_BOUNDARY - (a % AXI_BOUNDARY)) as usize;
        let n = room.min(rest.len());
        let (head, tail) = rest.split_at(n);
        mem.dma_write(u64::from(a), head)?;
        a = a.wrapping_add(n as u32);
        rest = tail;
    }
    Ok(())
}

impl Pl330 {
    // ---------------------------------------------------------------- faults

    fn fault_manager(&mut self, bits: u32) {
        if !self.manager.state.is_faulting() {
            self.stats.faults += 1;
        }
        debug!("pl330: manager fault {bits:#x}");
        self.manager.fault |= bits;
        self.manager.state = ThreadState::Faulting;
    }

    fn fault_channel(&mut self, c: usize, bits: u32) {
        let Some(ch) = self.channels.get_mut(c) else {
            return;
        };
        if !ch.state.is_faulting() {
            self.stats.faults += 1;
        }
        debug!("pl330: channel {c} fault {bits:#x} at pc {:#x}", ch.pc);
        ch.fault |= bits;
        ch.state = ThreadState::Faulting;
        ch.stalls = 0;
    }

    fn fault_thread(&mut self, t: Thread, bits: u32) {
        match t {
            Thread::Manager => self.fault_manager(bits),
            Thread::Channel(c) => self.fault_channel(c, bits),
        }
    }

    /// DMAKILL: the thread stops, its faults and MFIFO data are discarded.
    fn kill_thread(&mut self, t: Thread) {
        match t {
            Thread::Manager => {
                self.manager.state = ThreadState::Stopped;
                self.manager.fault = 0;
            }
            Thread::Channel(c) => {
                if let Some(ch) = self.channels.get_mut(c) {
                    ch.state = ThreadState::Stopped;
                    ch.fault = 0;
                    ch.mfifo.clear();
                    ch.stalls = 0;
                }
            }
        }
    }

    // ---------------------------------------------------------------- events

    fn thread_ns(&self, t: Thread) -> bool {
        match t {
            Thread::Manager => self.manager.ns,
            Thread::Channel(c) => self.channels.get(c).is_some_and(|ch| ch.ns),
        }
    }

    /// Checks an event operand for DMASEV/DMAWFE on thread `t`.
    fn check_event(&self, t: Thread, event: u8) -> Result<(), FaultType> {
        if event >= self.cfg.events {
            return Err(FaultType::OperandInvalid);
        }
        if self.thread_ns(t) && self.sec.irq_ns & (1 << event) == 0 {
            return Err(FaultType::EvntErr);
        }
        Ok(())
    }

    /// Checks a peripheral operand for DMAWFP/LDP/STP/FLUSHP on channel `c`.
    fn check_periph(&self, c: usize, periph: u8) -> Result<(), FaultType> {
        if periph >= self.cfg.periph_reqs {
            return Err(FaultType::OperandInvalid);
        }
        if self.thread_ns(Thread::Channel(c)) && self.sec.periph_ns & (1 << periph) == 0 {
            return Err(FaultType::ChPeriphErr);
        }
        Ok(())
    }

    /// DMASEV `event` (already checked): with INTEN\[event\] set it raises
    /// `irq[event]`; otherwise it wakes every channel waiting in DMAWFE for
    /// it, or stays pending in INT_EVENT_RIS for a later DMAWFE.
    fn signal_event(&mut self, event: u8) {
        let bit = 1u32 << event;
        self.stats.events_signalled += 1;
        if self.inten & bit != 0 {
            trace!("pl330: irq {event} raised");
            self.ris |= bit;
            return;
        }
        let mut woke = false;
        for ch in &mut self.channels {
            if ch.state == ThreadState::WaitingForEvent && ch.wakeup == event {
                ch.state = ThreadState::Executing;
                self.maybe_executing = true;
                // Resume after the DMAWFE (2 bytes).
                ch.pc = ch.pc.wrapping_add(2);
                woke = true;
            }
        }
        if !woke {
            self.ris |= bit;
        }
    }

    /// Resumes channels in DMAWFP whose peripheral has a pending request.
    pub(super) fn wake_periph_waiters(&mut self) {
        for c in 0..self.channels.len() {
            let Some(ch) = self.channels.get(c) else {
                continue;
            };
            if ch.state != ThreadState::WaitingForPeripheral {
                continue;
            }
            let p = ch.wakeup;
            let bit = 1u32 << (p & 0x1f);
            if self.periph_pending & bit == 0 {
                continue;
            }
            let burst_req = self.periph_burst & bit != 0;
            self.periph_pending &= !bit;
            if let Some(ch) = self.channels.get_mut(c) {
                if ch.wfp_kind == Some(WfpKind::Periph) {
                    ch.request = if burst_req {
                        RequestType::Burst
                    } else {
                        RequestType::Single
                    };
                }
                ch.state = ThreadState::Executing;
                ch.pc = ch.pc.wrapping_add(2);
                self.maybe_executing = true;
            }
        }
    }

    // ------------------------------------------------------------ debug path

    /// Executes the instruction in DBGINST0/1 (a DBGCMD write of 0).
    ///
    /// Only DMAGO (manager), DMAKILL and DMASEV may be issued this way; any
    /// other instruction faults the addressed thread with `undef_instr` and
    /// every fault from here also sets `dbg_instr`. A channel number beyond
    /// the configuration is ignored (logged).
    pub(super) fn exec_debug(&mut self, mem: &dyn DmaMemory) {
        let [d0, d1] = self.dbginst;
        let bytes = [
            (d0 >> 16) as u8,
            (d0 >> 24) as u8,
            d1 as u8,
            (d1 >> 8) as u8,
            (d1 >> 16) as u8,
            (d1 >> 24) as u8,
        ];
        let thread = if d0 & 1 != 0 {
            let c = ((d0 >> 8) & 7) as usize;
            if c >= self.channels.len() {
                warn!("pl330: debug instruction for absent channel {c} ignored");
                return;
            }
            Thread::Channel(c)
        } else {
            Thread::Manager
        };
        self.stats.instructions += 1;
        let dbg = FaultType::DbgInstr.bit();
        match insn::decode(&bytes) {
            Ok((Insn::Go { chan, ns, addr }, _)) => {
                if thread != Thread::Manager {
                    self.fault_thread(thread, FaultType::UndefInstr.bit() | dbg);
                } else if let Err(f) = self.dmago(chan, ns, addr, mem) {
                    self.fault_manager(f.bit() | dbg);
                }
            }
            Ok((Insn::Kill, _)) => self.kill_thread(thread),
            Ok((Insn::Sev { event }, _)) => match self.check_event(thread, event) {
                Ok(()) => self.signal_event(event),
                Err(f) => self.fault_thread(thread, f.bit() | dbg),
            },
            Ok((other, _)) => {
                debug!("pl330: {other:?} not allowed through the debug interface");
                self.fault_thread(thread, FaultType::UndefInstr.bit() | dbg);
            }
            Err(DecodeError::InvalidOperand(_)) => {
                self.fault_thread(thread, FaultType::OperandInvalid.bit() | dbg)
            }
            Err(_) => self.fault_thread(thread, FaultType::UndefInstr.bit() | dbg),
        }
    }

    /// DMAGO on the manager: starts channel `chan` at `addr`.
    fn dmago(
        &mut self,
        chan: u8,
        ns: bool,
        addr: u32,
        mem: &dyn DmaMemory,
    ) -> Result<(), FaultType> {
        let c = usize::from(chan);
        if c >= self.channels.len() {
            return Err(FaultType::OperandInvalid);
        }
        // A non-secure manager cannot start a secure channel.
        if self.manager.ns && !ns {
            return Err(FaultType::DmagoErr);
        }
        if self.channels.get(c).map(|ch| ch.state) != Some(ThreadState::Stopped) {
            debug!("pl330: DMAGO for channel {c} which is not stopped");
            return Err(FaultType::OperandInvalid);
        }
        if self.cfg.dmago_exec_gate && !fetchable(mem, addr) {
            debug!("pl330: DMAGO channel {c} at {addr:#x}: not fetchable");
            return Err(FaultType::DmagoErr);
        }
        if let Some(ch) = self.channels.get_mut(c) {
            ch.pc = addr;
            ch.ns = ns;
            ch.state = ThreadState::Executing;
            self.maybe_executing = true;
            ch.request = RequestType::Single;
            ch.wfp_kind = None;
            ch.wakeup = 0;
            ch.fault = 0;
            ch.mfifo.clear();
            ch.stalls = 0;
        }
        self.stats.dmagos += 1;
        debug!("pl330: DMAGO channel {c} pc {addr:#x} ns {ns}");
        Ok(())
    }

    // ------------------------------------------------------------- scheduler

    /// Runs executing channels round-robin for up to `step_budget` steps and,
    /// unless `slice_us` is 0, until `slice_us` microseconds have passed (the
    /// clock is read at the end of a channel's quantum, first after
    /// [`MIN_STEPS_PER_RUN`] steps, then every [`CLOCK_CHECK_STEPS`]). A run
    /// stopped early resumes with the channel after the last one served.
    pub(super) fn run_budget(&mut self, mem: &dyn DmaMemory, slice_us: u64) {
        let n = self.channels.len();
        if n == 0 || !self.pending() {
            return;
        }
        // An unrepresentable deadline (absurd slice) means no time limit.
        let deadline = if slice_us == 0 {
            None
        } else {
            Instant::now().checked_add(Duration::from_micros(slice_us))
        };
        let mut budget = self.cfg.step_budget;
        let mut executed = 0u64;
        let mut next_check = MIN_STEPS_PER_RUN;
        while budget > 0 {
            let mut active = false;
            let mut progressed = false;
            let mut waiting = false;
            // The channel after which this run stopped (budget or time).
            let mut cut = None;
            let start = self.rr_next % n;
            for i in 0..n {
                let c = (start + i) % n;
                if self.channels.get(c).map(|ch| ch.state) != Some(ThreadState::Executing) {
                    continue;
                }
                active = true;
                let mut q = QUANTUM.min(budget);
                while q > 0 {
                    q -= 1;
                    budget -= 1;
                    executed += 1;
                    match self.step(c, mem) {
                        Step::Progress => progressed = true,
                        Step::Left => {
                            progressed = true;
                            break;
                        }
                        Step::Stalled => break,
                        Step::Waiting => {
                            waiting = true;
                            break;
                        }
                    }
                }
                if budget == 0 {
                    cut = Some(c);
                    break;
                }
                if executed >= next_check {
                    next_check = executed.saturating_add(CLOCK_CHECK_STEPS);
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        if self.pending() {
                            self.stats.time_slices_expired += 1;
                        }
                        cut = Some(c);
                        break;
                    }
                }
            }
            if let Some(c) = cut {
                // Fairness: the next run starts after the last channel served.
                self.rr_next = (c + 1) % n;
                break;
            }
            self.rr_next = (start + 1) % n;
            if !active {
                break;
            }
            if !progressed && waiting {
                // Channels wait for the client's memory: the server runs
                // this again once it is here.
                break;
            }
            if !progressed {
                // Every executing channel waits for MFIFO space that only
                // another waiting channel could free: resource starvation.
                for c in 0..n {
                    if self.channels.get(c).map(|ch| ch.state) == Some(ThreadState::Executing) {
                        self.fault_channel(c, FaultType::LockupErr.bit());
                    }
                }
            }
        }
    }

    /// Fetches, decodes and executes one instruction of channel `c`.
    fn step(&mut self, c: usize, mem: &dyn DmaMemory) -> Step {
        let Some(pc) = self.channels.get(c).map(|ch| ch.pc) else {
            return Step::Left;
        };
        let mut buf = [0u8; insn::MAX_INSN_LEN];
        // Fast path: the longest instruction in one fetch when it stays in
        // the 4 KiB page. If that fails (the instruction may be shorter and
        // end before the unfetchable bytes) fall back to byte 0, then the rest.
        let in_page = (pc % AXI_BOUNDARY) as usize + insn::MAX_INSN_LEN <= AXI_BOUNDARY as usize;
        // Memory the client serves by messages (DmaFault::Deferred): the
        // channel stalls before anything changes and fetches again later.
        let whole = match in_page.then(|| mem.dma_read(u64::from(pc), &mut buf, DmaAccess::Fetch)) {
            Some(Ok(())) => true,
            Some(Err(e)) if e.is_deferred() => return Step::Waiting,
            _ => false,
        };
        if !whole {
            match mem_read(mem, pc, &mut buf[..1], DmaAccess::Fetch) {
                Ok(()) => {}
                Err(e) if e.is_deferred() => return Step::Waiting,
                Err(_) => {
                    self.fault_channel(c, FaultType::InstrFetchErr.bit());
                    return Step::Left;
                }
            }
        }
        let Some(len) = insn::insn_len(buf[0]) else {
            self.fault_channel(c, FaultType::UndefInstr.bit());
            return Step::Left;
        };
        if !whole && len > 1 {
            if let Some(rest) = buf.get_mut(1..len) {
                match mem_read(mem, pc.wrapping_add(1), rest, DmaAccess::Fetch) {
                    Ok(()) => {}
                    Err(e) if e.is_deferred() => return Step::Waiting,
                    Err(_) => {
                        self.fault_channel(c, FaultType::InstrFetchErr.bit());
                        return Step::Left;
                    }
                }
            }
        }
        let insn = match insn::decode(&buf[..len]) {
            Ok((i, _)) => i,
            Err(DecodeError::InvalidOperand(_)) => {
                self.fault_channel(c, FaultType::OperandInvalid.bit());
                return Step::Left;
            }
            Err(_) => {
                self.fault_channel(c, FaultType::UndefInstr.bit());
                return Step::Left;
            }
        };
        self.stats.instructions += 1;
        trace!("pl330: ch{c} {pc:#010x} {insn:?}");
        let flow = self.exec(c, insn, mem);
        let Some(ch) = self.channels.get_mut(c) else {
            return Step::Left;
        };
        match flow {
            Flow::Next => {
                ch.pc = pc.wrapping_add(len as u32);
                ch.stalls = 0;
                Step::Progress
            }
            Flow::Jump(t) => {
                ch.pc = t;
                ch.stalls = 0;
                Step::Progress
            }
            Flow::Stall => {
                ch.stalls += 1;
                if ch.stalls >= WATCHDOG_LIMIT {
                    self.fault_channel(c, FaultType::LockupErr.bit());
                    return Step::Left;
                }
                Step::Stalled
            }
            Flow::Wait => Step::Waiting,
            Flow::Leave => {
                ch.stalls = 0;
                Step::Left
            }
            Flow::Fault(f) => {
                self.fault_channel(c, f.bit());
                Step::Left
            }
        }
    }

    /// Whether a conditional form executes for the channel's request type.
    fn cond_holds(&self, c: usize, cond: Cond) -> bool {
        let req = self
            .channels
            .get(c)
            .map_or(RequestType::Single, |ch| ch.request);
        match cond {
            Cond::Always => true,
            Cond::Single => req == RequestType::Single,
            Cond::Burst => req == RequestType::Burst,
        }
    }

    fn mfifo_used(&self) -> usize {
        self.channels.iter().map(|ch| ch.mfifo.len()).sum()
    }

    /// Executes `insn` on channel `c`.
    fn exec(&mut self, c: usize, insn: Insn, mem: &dyn DmaMemory) -> Flow {
        match insn {
            Insn::End => {
                if let Some(ch) = self.channels.get_mut(c) {
                    if !ch.mfifo.is_empty() {
                        debug!(
                            "pl330: channel {c} DMAEND with {} bytes left in the MFIFO",
                            ch.mfifo.len()
                        );
                        ch.mfifo.clear();
                    }
                    ch.state = ThreadState::Stopped;
                }
                Flow::Leave
            }
            Insn::Kill => {
                self.kill_thread(Thread::Channel(c));
                Flow::Leave
            }
            // Loads and stores complete immediately: barriers never wait.
            Insn::Nop | Insn::Rmb | Insn::Wmb => Flow::Next,
            Insn::Go { .. } => Flow::Fault(FaultType::UndefInstr),
            Insn::Mov { reg, imm } => {
                if let Some(ch) = self.channels.get_mut(c) {
                    match reg {
                        MovReg::Sar => ch.sar = imm,
                        MovReg::Ccr => ch.ccr = imm,
                        MovReg::Dar => ch.dar = imm,
                    }
                }
                Flow::Next
            }
            Insn::AddH { reg, imm } => self.add_addr(c, reg, u32::from(imm)),
            Insn::AdnH { reg, imm } => self.add_addr(c, reg, 0xffff_0000 | u32::from(imm)),
            Insn::Lp { lc, count } => {
                if let Some(ch) = self.channels.get_mut(c) {
                    ch.lc[lc.index()] = count;
                }
                Flow::Next
            }
            Insn::LpEnd {
                lc,
                cond,
                forever,
                jump,
            } => self.lpend(c, lc, cond, forever, jump),
            Insn::Ld(cond) => {
                if !self.cond_holds(c, cond) {
                    return Flow::Next;
                }
                self.load(c, cond == Cond::Single, mem)
            }
            Insn::St(cond) => {
                if !self.cond_holds(c, cond) {
                    return Flow::Next;
                }
                self.store(c, cond == Cond::Single, false, mem)
            }
            Insn::Stz => self.store(c, false, true, mem),
            Insn::Ldp { burst, periph } => {
                if let Err(f) = self.check_periph(c, periph) {
                    return Flow::Fault(f);
                }
                let cond = if burst { Cond::Burst } else { Cond::Single };
                if !self.cond_holds(c, cond) {
                    return Flow::Next;
                }
                self.load(c, !burst, mem)
            }
            Insn::Stp { burst, periph } => {
                if let Err(f) = self.check_periph(c, periph) {
                    return Flow::Fault(f);
                }
                let cond = if burst { Cond::Burst } else { Cond::Single };
                if !self.cond_holds(c, cond) {
                    return Flow::Next;
                }
                self.store(c, !burst, false, mem)
            }
            Insn::FlushP { periph } => {
                if let Err(f) = self.check_periph(c, periph) {
                    return Flow::Fault(f);
                }
                self.periph_pending &= !(1u32 << periph);
                Flow::Next
            }
            Insn::Wfp { kind, periph } => {
                if let Err(f) = self.check_periph(c, periph) {
                    return Flow::Fault(f);
                }
                if let Some(ch) = self.channels.get_mut(c) {
                    ch.wfp_kind = Some(kind);
                    ch.wakeup = periph;
                    match kind {
                        WfpKind::Single => ch.request = RequestType::Single,
                        WfpKind::Burst => ch.request = RequestType::Burst,
                        WfpKind::Periph => {}
                    }
                    ch.state = ThreadState::WaitingForPeripheral;
                }
                // Resumes (PC past the DMAWFP) now if a request is pending.
                self.wake_periph_waiters();
                Flow::Leave
            }
            Insn::Sev { event } => match self.check_event(Thread::Channel(c), event) {
                Ok(()) => {
                    self.signal_event(event);
                    Flow::Next
                }
                Err(f) => Flow::Fault(f),
            },
            Insn::Wfe { event, .. } => {
                if let Err(f) = self.check_event(Thread::Channel(c), event) {
                    return Flow::Fault(f);
                }
                let bit = 1u32 << event;
                if self.ris & !self.inten & bit != 0 {
                    // The event is pending: consume it and continue.
                    self.ris &= !bit;
                    return Flow::Next;
                }
                if let Some(ch) = self.channels.get_mut(c) {
                    ch.wakeup = event;
                    ch.state = ThreadState::WaitingForEvent;
                }
                Flow::Leave
            }
        }
    }

    fn add_addr(&mut self, c: usize, reg: AddrReg, v: u32) -> Flow {
        if let Some(ch) = self.channels.get_mut(c) {
            match reg {
                AddrReg::Sar => ch.sar = ch.sar.wrapping_add(v),
                AddrReg::Dar => ch.dar = ch.dar.wrapping_add(v),
            }
        }
        Flow::Next
    }

    /// DMALPEND/DMALPFE: jumps back `jump` bytes from this instruction while
    /// the loop counter is non-zero (decrementing it), or always for LPFE.
    fn lpend(&mut self, c: usize, lc: LoopCounter, cond: Cond, forever: bool, jump: u8) -> Flow {
        if !self.cond_holds(c, cond) {
            return Flow::Next;
        }
        let Some(ch) = self.channels.get_mut(c) else {
            return Flow::Leave;
        };
        let target = ch.pc.wrapping_sub(u32::from(jump));
        if forever {
            return Flow::Jump(target);
        }
        let counter = &mut ch.lc[lc.index()];
        if *counter != 0 {
            *counter -= 1;
            Flow::Jump(target)
        } else {
            Flow::Next
        }
    }

    /// DMALD (`single`: one beat, for the S forms): reads one burst at SAR
    /// into the channel's MFIFO data and advances SAR.
    fn load(&mut self, c: usize, single: bool, mem: &dyn DmaMemory) -> Flow {
        let capacity = self.cfg.mfifo_bytes();
        let used = self.mfifo_used();
        let Some(ch) = self.channels.get(c) else {
            return Flow::Leave;
        };
        let spec = Ccr::decode(ch.ccr).src;
        if ch.ns && spec.prot & regs::PROT_NS == 0 {
            return Flow::Fault(FaultType::ChRdwrErr);
        }
        let beats = if single { 1 } else { spec.len };
        let total = burst_bytes(ch.sar, &spec, beats) as usize;
        if ch.mfifo.len() + total > capacity {
            return Flow::Fault(FaultType::MfifoErr);
        }
        if used + total > capacity {
            return Flow::Stall;
        }
        let sar = ch.sar;
        let mut buf = [0u8; MAX_BURST_BYTES];
        let Some(data) = buf.get_mut(..total) else {
            return Flow::Fault(FaultType::MfifoErr);
        };
        let r = if spec.inc {
            mem_read(mem, sar, data, DmaAccess::Read)
        } else {
            // Fixed address: every beat reads the same (shortened) beat.
            let beat = (spec.size - (sar & (spec.size - 1))) as usize;
            data.chunks_mut(beat.max(1))
                .try_for_each(|chunk| mem_read(mem, sar, chunk, DmaAccess::Read))
        };
        match r {
            Ok(()) => {}
            // Served by messages: retry the instruction once fetched.
            Err(e) if e.is_deferred() => return Flow::Wait,
            Err(_) => return Flow::Fault(FaultType::DataReadErr),
        }
        self.stats.bytes_loaded += total as u64;
        if let Some(ch) = self.channels.get_mut(c) {
            ch.mfifo.extend(data.iter().copied());
            if spec.inc {
                ch.sar = sar.wrapping_add(total as u32);
            }
        }
        Flow::Next
    }

    /// Removes the `total` bytes a DMAST took from channel `c`'s MFIFO.
    fn drain_mfifo(&mut self, c: usize, zero: bool, total: usize) {
        if zero {
            return;
        }
        if let Some(ch) = self.channels.get_mut(c) {
            let n = total.min(ch.mfifo.len());
            ch.mfifo.drain(..n);
        }
    }

    /// DMAST (`single`: one beat) or DMASTZ (`zero`): writes one burst at DAR
    /// from the channel's MFIFO data (zeros for DMASTZ) and advances DAR.
    fn store(&mut self, c: usize, single: bool, zero: bool, mem: &dyn DmaMemory) -> Flow {
        let Some(ch) = self.channels.get(c) else {
            return Flow::Leave;
        };
        let spec = Ccr::decode(ch.ccr).dst;
        if ch.ns && spec.prot & regs::PROT_NS == 0 {
            return Flow::Fault(FaultType::ChRdwrErr);
        }
        let beats = if single { 1 } else { spec.len };
        let total = burst_bytes(ch.dar, &spec, beats) as usize;
        if !zero && ch.mfifo.len() < total {
            return Flow::Fault(FaultType::StDataUnavailable);
        }
        let dar = ch.dar;
        let mut buf = [0u8; MAX_BURST_BYTES];
        let Some(data) = buf.get_mut(..total) else {
            return Flow::Fault(FaultType::MfifoErr);
        };
        if !zero {
            // Copied, not drained: a store to memory served by messages
            // retries with the same data.
            for (d, s) in data.iter_mut().zip(ch.mfifo.iter()) {
                *d = *s;
            }
        }
        let r = if spec.inc {
            mem_write(mem, dar, data)
        } else {
            let beat = (spec.size - (dar & (spec.size - 1))) as usize;
            data.chunks(beat.max(1))
                .try_for_each(|chunk| mem_write(mem, dar, chunk))
        };
        match r {
            Ok(()) => {}
            Err(e) if e.is_deferred() => return Flow::Wait,
            Err(_) => {
                self.drain_mfifo(c, zero, total);
                return Flow::Fault(FaultType::DataWriteErr);
            }
        }
        self.drain_mfifo(c, zero, total);
        self.stats.bytes_stored += total as u64;
        if spec.inc {
            if let Some(ch) = self.channels.get_mut(c) {
                ch.dar = dar.wrapping_add(total as u32);
            }
        }
        Flow::Next
    }
}
