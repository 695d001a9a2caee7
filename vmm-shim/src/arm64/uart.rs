//! A 16550A UART (transmit side) for the guest console, on trapped MMIO with
//! byte registers (DT: `ns16550a`, `reg-shift = 0`, `reg-io-width = 1`).
//!
//! Transmitted bytes go to a line-buffered sink (the shim's stdout), carriage
//! returns dropped, so the guest log reads as plain lines. Nothing is ever
//! received (LSR.DR stays clear). The THR-empty interrupt is modelled so that
//! Linux's 8250 driver can run interrupt-driven: [`Uart::irq_level`] is the
//! line to the GIC after each access.

use std::io::Write;

/// Receive buffer / transmit holding register (DLAB = 0), divisor low (DLAB = 1).
const RBR_THR: u64 = 0;
/// Interrupt enable register (DLAB = 0), divisor high (DLAB = 1).
const IER: u64 = 1;
/// Interrupt identification (read) / FIFO control (write).
const IIR_FCR: u64 = 2;
/// Line control register.
const LCR: u64 = 3;
/// Modem control register.
const MCR: u64 = 4;
/// Line status register.
const LSR: u64 = 5;
/// Modem status register.
const MSR: u64 = 6;
/// Scratch register.
const SCR: u64 = 7;

const LCR_DLAB: u8 = 0x80;
const IER_THRI: u8 = 0x02;
const IIR_NO_INT: u8 = 0x01;
const IIR_THRI: u8 = 0x02;
const IIR_FIFO_ENABLED: u8 = 0xc0;
const FCR_FIFO_ENABLE: u8 = 0x01;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;
const MCR_LOOP: u8 = 0x10;
/// MSR with DCD, DSR and CTS asserted (a cable that is always there).
const MSR_CONNECTED: u8 = 0xb0;
/// A line longer than this is flushed anyway.
const MAX_LINE: usize = 4096;

/// The UART's registers and its output.
#[derive(Debug)]
pub struct Uart<W: Write> {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    fcr: u8,
    dll: u8,
    dlm: u8,
    /// A THR-empty interrupt is pending (set when the holding register
    /// empties, cleared by reading IIR while it is reported or writing THR).
    thre_pending: bool,
    line: Vec<u8>,
    out: W,
    /// Bytes the guest transmitted.
    pub tx_bytes: u64,
}

impl<W: Write> Uart<W> {
    /// A UART writing its output to `out`.
    pub fn new(out: W) -> Self {
        Uart {
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            fcr: 0,
            dll: 0,
            dlm: 0,
            thre_pending: false,
            line: Vec::new(),
            out,
            tx_bytes: 0,
        }
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    fn iir(&self) -> u8 {
        let fifo = if self.fcr & FCR_FIFO_ENABLE != 0 {
            IIR_FIFO_ENABLED
        } else {
            0
        };
        if self.thre_pending && self.ier & IER_THRI != 0 {
            fifo | IIR_THRI
        } else {
            fifo | IIR_NO_INT
        }
    }

    /// The interrupt line's level.
    pub fn irq_level(&self) -> bool {
        self.iir() & IIR_NO_INT == 0
    }

    /// A read of `data.len()` bytes at `offset` (only the first byte is a
    /// register; wider accesses read the register zero-extended).
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            RBR_THR if self.dlab() => self.dll,
            RBR_THR => 0, // nothing is ever received
            IER if self.dlab() => self.dlm,
            IER => self.ier,
            IIR_FCR => {
                let v = self.iir();
                if v & 0x0f == IIR_THRI {
                    self.thre_pending = false; // reading IIR acknowledges THRE
                }
                v
            }
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => LSR_THRE | LSR_TEMT,
            MSR if self.mcr & MCR_LOOP != 0 => (self.mcr & 0x0f) << 4,
            MSR => MSR_CONNECTED,
            SCR => self.scr,
            _ => 0,
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    /// A write of `data` at `offset` (the first byte is the value).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            RBR_THR if self.dlab() => self.dll = v,
            RBR_THR => {
                if self.mcr & MCR_LOOP == 0 {
                    self.transmit(v);
                }
                // the byte leaves at once: the holding register is empty again
                self.thre_pending = true;
            }
            IER if self.dlab() => self.dlm = v,
            IER => {
                let was = self.ier;
                self.ier = v & 0x0f;
                // enabling THRI while the holder is empty raises it (16550)
                if self.ier & IER_THRI != 0 && was & IER_THRI == 0 {
                    self.thre_pending = true;
                }
            }
            IIR_FCR => self.fcr = v,
            LCR => self.lcr = v,
            MCR => self.mcr = v & 0x1f,
            SCR => self.scr = v,
            _ => {} // LSR, MSR: read-only
        }
    }

    fn transmit(&mut self, b: u8) {
        self.tx_bytes += 1;
        match b {
            b'\r' => {}
            b'\n' => self.flush_line(),
            _ => {
                self.line.push(b);
                if self.line.len() >= MAX_LINE {
                    self.flush_line(); // broken into lines of MAX_LINE
                }
            }
        }
    }

    fn flush_line(&mut self) {
        self.line.push(b'\n');
        // the console is best effort: a closed stdout must not stop the guest
        let _ = self.out.write_all(&self.line);
        let _ = self.out.flush();
        self.line.clear();
    }

    /// Writes out a partial last line (at the end of a run).
    pub fn finish(&mut self) {
        if !self.line.is_empty() {
            self.flush_line();
        }
    }

    /// The output sink.
    pub fn output(&self) -> &W {
        &self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rd(u: &mut Uart<Vec<u8>>, off: u64) -> u8 {
        let mut b = [0xaa; 1];
        u.read(off, &mut b);
        b[0]
    }

    #[test]
    fn transmits_lines_without_carriage_returns() {
        let mut u = Uart::new(Vec::new());
        for &b in b"Booting Linux\r\nsecond" {
            u.write(RBR_THR, &[b]);
        }
        assert_eq!(u.output().as_slice(), b"Booting Linux\n", "line buffered");
        u.finish();
        assert_eq!(u.output().as_slice(), b"Booting Linux\nsecond\n");
        assert_eq!(u.tx_bytes, 21);
        // a line without end is still written once it is long
        let mut u = Uart::new(Vec::new());
        for _ in 0..MAX_LINE {
            u.write(RBR_THR, b"x");
        }
        assert_eq!(u.output().len(), MAX_LINE + 1);
    }

    #[test]
    fn status_registers_say_ready_and_connected() {
        let mut u = Uart::new(Vec::new());
        assert_eq!(rd(&mut u, LSR), LSR_THRE | LSR_TEMT, "TX empty, no RX data");
        assert_eq!(rd(&mut u, MSR), MSR_CONNECTED);
        assert_eq!(rd(&mut u, IIR_FCR), IIR_NO_INT);
        assert_eq!(rd(&mut u, RBR_THR), 0);
        u.write(SCR, &[0x5a]);
        assert_eq!(rd(&mut u, SCR), 0x5a, "scratch register (8250 probing)");
        // loopback: MSR mirrors MCR's outputs
        u.write(MCR, &[MCR_LOOP | 0x0a]);
        assert_eq!(rd(&mut u, MSR), 0xa0);
        let mut w = [0xffu8; 4];
        u.read(LSR, &mut w);
        assert_eq!(w, [LSR_THRE | LSR_TEMT, 0, 0, 0], "wide reads zero-extend");
    }

    #[test]
    fn divisor_latch_does_not_transmit() {
        let mut u = Uart::new(Vec::new());
        u.write(LCR, &[LCR_DLAB | 0x03]);
        u.write(RBR_THR, &[0x01]);
        u.write(IER, &[0x00]);
        assert_eq!(rd(&mut u, RBR_THR), 0x01);
        assert_eq!(rd(&mut u, IER), 0x00);
        u.write(LCR, &[0x03]);
        assert_eq!(u.tx_bytes, 0);
        assert_eq!(rd(&mut u, IER), 0, "IER untouched by the latch writes");
    }

    #[test]
    fn thre_interrupt_follows_the_16550() {
        let mut u = Uart::new(Vec::new());
        assert!(!u.irq_level());
        u.write(IER, &[IER_THRI]);
        assert!(
            u.irq_level(),
            "enabling THRI with an empty holder raises it"
        );
        u.write(IIR_FCR, &[FCR_FIFO_ENABLE]);
        assert_eq!(rd(&mut u, IIR_FCR), IIR_FIFO_ENABLED | IIR_THRI);
        assert!(!u.irq_level(), "reading IIR acknowledged it");
        assert_eq!(rd(&mut u, IIR_FCR), IIR_FIFO_ENABLED | IIR_NO_INT);
        u.write(RBR_THR, b"a");
        assert!(u.irq_level(), "the byte left: empty again");
        u.write(IER, &[0]);
        assert!(!u.irq_level(), "masked");
        u.write(IER, &[IER_THRI]);
        assert!(u.irq_level());
    }
}
