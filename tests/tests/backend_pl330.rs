//! Cross-process: the PL330 model behind `vfio-sidecar serve`, driven like
//! Linux's pl330 driver over vfio-user (DMA from memfd guest memory, EXEC
//! enforcement, interrupts with clear-register vs first-access EOI).
#![allow(clippy::unwrap_used)]

use std::os::fd::AsFd;
use std::time::Duration;

use vfio_sidecar::model::pl330::asm::{linux_mem_to_mem, LinuxXfer};
use vfio_sidecar::model::pl330::insn::Insn;
use vfio_sidecar::model::pl330::regs::{FSRC, FSRD, INTCLR, INTEN, INT_EVENT_RIS};
use vfio_sidecar::model::pl330::Pl330Config;
use vfio_sidecar_protocol::client::{Client, DmaProt};
use vfio_sidecar_protocol::message::IrqAction;
use vfio_sidecar_tests::pl330::Regs;
use vfio_sidecar_tests::{drain, eventfd, set_eventfd, wait_until, GuestMem, Sidecar};

const IOVA: u64 = 0x4000_0000;
const MEM: u64 = 0x10000;
const CODE: u64 = 0x0;
const SRC: u64 = 0x1000;
const DST: u64 = 0x4000;
const LEN: u32 = 0x1234;

/// Writes a Linux-shaped mem-to-mem program and the source pattern into guest
/// memory; returns the pattern.
fn prepare(mem: &GuestMem, event: u8) -> Vec<u8> {
    let src = (IOVA + SRC) as u32;
    let dst = (IOVA + DST) as u32;
    let x = LinuxXfer::memcpy(&Pl330Config::default(), src, dst, LEN, event);
    let code = linux_mem_to_mem(&x).unwrap();
    mem.write(CODE, &code);
    let pattern: Vec<u8> = (0..LEN).map(|i| (i * 7 + 3) as u8).collect();
    mem.write(SRC, &pattern);
    mem.write(DST, &vec![0u8; LEN as usize]);
    pattern
}

/// `_start` + `_execute_DBGINSN(DMAGO)` as Linux does it.
fn linux_dmago(c: &mut Client, event: u8) {
    let inten = c.read32(INTEN);
    c.write32(INTEN, inten | (1 << event));
    c.dmago((IOVA + CODE) as u32);
}

/// `pl330_update`: FSRD, FSRC, ES, INTEN reads, then INTCLR per event.
fn linux_isr(c: &mut Client) -> u32 {
    let _fsm = c.read32(FSRD) & 1;
    let _fsc = c.read32(FSRC);
    let es = c.read32(INT_EVENT_RIS);
    let mut handled = 0;
    for ev in 0..8 {
        if es & (1 << ev) != 0 {
            let inten = c.read32(INTEN);
            if inten & (1 << ev) != 0 {
                c.write32(INTCLR, 1 << ev);
                handled |= 1 << ev;
            }
        }
    }
    handled
}

fn map(c: &mut Client, mem: &GuestMem, exec: bool) {
    c.dma_map(
        IOVA,
        MEM,
        mem.fd(),
        0,
        DmaProt {
            read: true,
            write: true,
            exec,
        },
    )
    .unwrap();
}

#[test]
fn plain_client_dma_copy_runs_microcode_from_read_mapping() {
    let srv = Sidecar::start("model:pl330", &[]);
    let mut c = srv.connect(false);
    assert!(!c.negotiated().extension());
    let info = c.device_info().unwrap();
    // Eight event IRQs and irq_abort.
    assert_eq!((info.num_regions, info.num_irqs), (1, 9));
    let mem = GuestMem::new("guest", MEM);
    map(&mut c, &mem, false);
    let pattern = prepare(&mem, 0);
    linux_dmago(&mut c, 0);
    assert_eq!(mem.read(DST, LEN as usize), pattern, "DMA copy");
    assert_eq!(c.read32(FSRC), 0);
    assert_eq!(c.read32(INT_EVENT_RIS) & 1, 1, "DMASEV 0 raised event 0");
}

/// A backend started with `extra`, an extension client, the copy program in
/// a mapping without EXEC and DMAGO: asserts bit 0 of `fault_reg` (`what`)
/// is set and nothing was copied.
fn dmago_from_noexec_mapping(extra: &[&str], fault_reg: u64, what: &str) -> (Sidecar, Client) {
    let srv = Sidecar::start("model:pl330", extra);
    let mut c = srv.connect(true);
    assert!(c.negotiated().exec_enforced(), "model enforces EXEC");
    let mem = GuestMem::new("guest", MEM);
    map(&mut c, &mem, false);
    prepare(&mem, 0);
    linux_dmago(&mut c, 0);
    assert_eq!(c.read32(fault_reg) & 1, 1, "{what}");
    assert!(
        mem.read(DST, LEN as usize).iter().all(|b| *b == 0),
        "no copy"
    );
    (srv, c)
}

#[test]
fn extension_mapping_without_exec_faults() {
    // With the DMAGO gate (default): the manager refuses the DMAGO.
    let (srv, c) = dmago_from_noexec_mapping(&[], FSRD, "manager fault (dmago gate)");
    drop(c);
    drop(srv);

    // Without the gate: the channel faults on the instruction fetch.
    let (_srv, mut c) = dmago_from_noexec_mapping(&["--no-dmago-gate"], FSRC, "channel 0 faulting");

    // The same program from an EXEC mapping works.
    c.dma_unmap(IOVA, MEM).unwrap();
    let mem2 = GuestMem::new("guest2", MEM);
    map(&mut c, &mem2, true);
    let pattern = prepare(&mem2, 1);
    // Kill the faulting channel first (DMAKILL on channel 0, as Linux does).
    c.debug_insn(Insn::Kill, Some(0));
    assert_eq!(c.read32(FSRC), 0);
    linux_dmago(&mut c, 1);
    assert_eq!(mem2.read(DST, LEN as usize), pattern);
}

/// Runs `rounds` transfers with Linux's ISR; returns (stats, eventfd total).
fn irq_rounds(eoi: &str, rounds: u32) -> (vfio_sidecar_protocol::ext::IrqStats, u64) {
    let srv = Sidecar::start("model:pl330", &["--eoi", eoi]);
    let mut c = srv.connect(true);
    let mem = GuestMem::new("guest", MEM);
    map(&mut c, &mem, true);
    let (fd, reader) = eventfd();
    set_eventfd(&mut c, 0, IrqAction::Trigger, fd.as_fd()).unwrap();
    let mut signalled = 0;
    for _ in 0..rounds {
        let pattern = prepare(&mem, 0);
        linux_dmago(&mut c, 0);
        assert_eq!(mem.read(DST, LEN as usize), pattern);
        // The guest sees the interrupt, then runs the ISR.
        let n = drain(&reader);
        assert!(n >= 1, "interrupt delivered");
        signalled += n;
        assert_eq!(linux_isr(&mut c), 1);
        signalled += drain(&reader);
    }
    let st = c.irq_stats(0, 0, 1).unwrap();
    (st[0], signalled)
}

#[test]
fn clear_register_eoi_one_host_interrupt_per_device_event() {
    let (st, signalled) = irq_rounds("clear-register", 3);
    assert_eq!(st.device_events, 3);
    assert_eq!(st.host_interrupts, 3, "{st:?}");
    assert_eq!(st.refires, 0);
    assert_eq!(st.unmasks, 3);
    assert_eq!(signalled, 3);
}

#[test]
fn first_access_eoi_causes_extra_host_interrupts() {
    let (st, signalled) = irq_rounds("first-access", 3);
    assert_eq!(st.device_events, 3);
    assert!(st.host_interrupts > 3, "{st:?}");
    assert!(st.refires > 0, "{st:?}");
    assert!(signalled > 3);
}

#[test]
fn device_description_for_pl330() {
    let srv = Sidecar::start("model:pl330,events=4", &[]);
    let mut c = srv.connect(true);
    let (d, dtb) = c.device_desc().unwrap();
    assert_eq!(d.compatible, ["arm,pl330", "arm,primecell"]);
    // The DT blob comes with it: FDT magic, and the node's compatible strings inside.
    assert_eq!(
        dtb.get(..4),
        Some(&[0xd0, 0x0d, 0xfe, 0xed][..]),
        "not a DTB"
    );
    let has = |needle: &[u8]| dtb.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"arm,pl330\0arm,primecell\0"));
    assert!(has(b"apb_pclk"));
    assert_eq!(d.clocks[0].name, "apb_pclk");
    // Four event IRQs, then irq_abort, cleared by the DMAKILL written to DBGCMD.
    assert_eq!(d.irqs.len(), 5);
    let clear = d.irqs[2].eoi.clear.unwrap();
    assert_eq!((clear.offset, clear.bit), (0x2c, Some(2)));
    assert_eq!(d.irqs[4].name, "abort");
    let abort = d.irqs[4].eoi.clear.unwrap();
    assert_eq!(
        (abort.region, abort.offset, abort.width, abort.mode),
        (0, 0xd04, 4, vfio_sidecar_protocol::ext::ClearMode::WriteAny)
    );
    // Region accesses are bounds-checked.
    assert!(c.region_read(0, 0xffc, 8).is_err());
    assert!(c.region_read(1, 0, 4).is_err());
    assert!(c.region_read(0, 0x1000, 4).is_err());
    let (info, fd) = c.region_info(0).unwrap();
    assert_eq!(info.size, 0x1000);
    assert!(fd.is_none(), "PL330 frame is trapped, never mmapped");
}

#[test]
fn resample_eventfd_unmasks() {
    use std::io::Write;
    let srv = Sidecar::start("model:pl330", &["--eoi", "resample"]);
    let mut c = srv.connect(true);
    let mem = GuestMem::new("guest", MEM);
    map(&mut c, &mem, true);
    let (t, treader) = eventfd();
    let (u, uwriter) = eventfd();
    set_eventfd(&mut c, 0, IrqAction::Trigger, t.as_fd()).unwrap();
    set_eventfd(&mut c, 0, IrqAction::Unmask, u.as_fd()).unwrap();
    for round in 1..=2u64 {
        prepare(&mem, 0);
        linux_dmago(&mut c, 0);
        assert_eq!(drain(&treader), 1, "round {round}: interrupt");
        // ISR clears the event; the INTCLR write is NOT an EOI under resample.
        assert_eq!(linux_isr(&mut c), 1);
        let st = c.irq_stats(0, 0, 1).unwrap()[0];
        assert_eq!(
            st.unmasks,
            round - 1,
            "no unmask before the resample signal"
        );
        // The VMM's resample eventfd (guest EOI at the GIC) unmasks.
        (&uwriter).write_all(&1u64.to_ne_bytes()).unwrap();
        wait_until("the unmask", Duration::from_secs(10), || {
            c.irq_stats(0, 0, 1).unwrap()[0].unmasks == round
        });
        let st = c.irq_stats(0, 0, 1).unwrap()[0];
        assert_eq!(st.host_interrupts, round);
        assert_eq!(st.refires, 0);
    }
}

/// irq_abort is IRQ index 8 (after the eight event IRQs). A channel's
/// instruction fetch from a mapping without EXEC faults it and raises the
/// line; under clear-register EOI the IRQ stays masked until a DBGCMD write
/// (Linux's DMAKILL through `_execute_DBGINSN`), which unmasks it locally and
/// re-fires while another thread still faults.
#[test]
fn abort_irq_fires_on_fetch_fault_and_dmakill_is_its_eoi() {
    const ABORT: u32 = 8;
    let srv = Sidecar::start("model:pl330", &["--no-dmago-gate"]);
    let mut c = srv.connect(true);
    let mem = GuestMem::new("guest", MEM);
    map(&mut c, &mem, false);
    prepare(&mem, 0);
    let (fd, reader) = eventfd();
    set_eventfd(&mut c, ABORT, IrqAction::Trigger, fd.as_fd()).unwrap();
    let (ev_fd, ev_reader) = eventfd();
    set_eventfd(&mut c, 0, IrqAction::Trigger, ev_fd.as_fd()).unwrap();
    let go = |c: &mut Client, chan: u8| {
        c.debug_insn(
            Insn::Go {
                chan,
                ns: false,
                addr: (IOVA + CODE) as u32,
            },
            None,
        )
    };
    // Channel 0 faults on its first fetch: one host interrupt on the abort IRQ
    // (the DBGCMD write whose DMAGO faulted is no EOI of what it raised).
    go(&mut c, 0);
    assert_eq!(c.read32(FSRC), 1);
    assert_eq!(drain(&reader), 1, "irq_abort fired");
    // Reads (Linux's ISR reads FSRD/FSRC/FTR first) do not unmask it.
    assert_eq!(c.read32(FSRD), 0);
    assert_eq!(c.read32(FSRC), 1);
    assert_eq!(drain(&reader), 0, "masked until the DBGCMD write");
    let st = c.irq_stats(ABORT, 0, 1).unwrap()[0];
    assert_eq!(
        (st.device_events, st.host_interrupts, st.unmasks),
        (1, 1, 0)
    );
    // Channel 1 faults too; its DMAGO is a DBGCMD write, so it counts as an
    // EOI of the (still high) abort line: it fires again.
    go(&mut c, 1);
    assert_eq!(c.read32(FSRC), 0b11);
    assert_eq!(drain(&reader), 1, "DBGCMD write unmasked a high line");
    // DMAKILL of channel 0: the line stays high (channel 1), fires again.
    c.debug_insn(Insn::Kill, Some(0));
    assert_eq!(c.read32(FSRC), 0b10);
    assert_eq!(drain(&reader), 1, "re-fired for channel 1");
    // DMAKILL of channel 1: low, no interrupt.
    c.debug_insn(Insn::Kill, Some(1));
    assert_eq!(c.read32(FSRC), 0);
    assert_eq!(drain(&reader), 0);
    let st = c.irq_stats(ABORT, 0, 1).unwrap()[0];
    assert_eq!(st.host_interrupts, 3, "{st:?}");
    assert_eq!((st.unmasks, st.refires), (3, 2), "{st:?}");
    // The event IRQ saw nothing: no DMASEV ran.
    assert_eq!(drain(&ev_reader), 0);
    assert_eq!(c.irq_stats(0, 0, 1).unwrap()[0].host_interrupts, 0);
}

/// With `combined-irq` the one IRQ carries irq_abort as well; its clear
/// register stays INTCLR, which Linux's `_stop` writes right after the
/// DMAKILL of a channel thread (for the thread's event): that write unmasks.
#[test]
fn combined_irq_carries_the_abort_and_intclr_ends_it() {
    let srv = Sidecar::start("model:pl330,combined-irq", &["--no-dmago-gate"]);
    let mut c = srv.connect(true);
    assert_eq!(c.device_info().unwrap().num_irqs, 1);
    let mem = GuestMem::new("guest", MEM);
    map(&mut c, &mem, false);
    prepare(&mem, 0);
    let (fd, reader) = eventfd();
    set_eventfd(&mut c, 0, IrqAction::Trigger, fd.as_fd()).unwrap();
    linux_dmago(&mut c, 0);
    assert_eq!(c.read32(FSRC), 1);
    assert_eq!(drain(&reader), 1, "the combined line fired for the fault");
    // DMAKILL lowers the line; the INTCLR write of `_stop` is the EOI.
    c.debug_insn(Insn::Kill, Some(0));
    assert_eq!(c.read32(FSRC), 0);
    let st = c.irq_stats(0, 0, 1).unwrap()[0];
    assert_eq!((st.host_interrupts, st.unmasks), (1, 0), "{st:?}");
    c.write32(INTCLR, 1);
    let st = c.irq_stats(0, 0, 1).unwrap()[0];
    assert_eq!(
        (st.host_interrupts, st.unmasks, st.refires),
        (1, 1, 0),
        "{st:?}"
    );
    assert_eq!(drain(&reader), 0);
}
