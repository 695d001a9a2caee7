//! DMA-330 instruction set: bytes → [`Insn`] and back.
//!
//! The decoder only knows encodings; whether an operand fits the configuration
//! (event < `num_events`, channel < `num_chnls`, peripheral < `num_periph_req`)
//! is checked by the executor, which raises `operand_invalid` like the TRM.
//!
//! | Instruction | Encoding (byte 0) | Size | Operands |
//! |---|---|---|---|
//! | DMAEND | `0x00` | 1 | |
//! | DMAKILL | `0x01` | 1 | |
//! | DMALD\[S\|B\] | `0x04` / `0x05` / `0x07` | 1 | `000001 bs x` |
//! | DMAST\[S\|B\] | `0x08` / `0x09` / `0x0B` | 1 | `000010 bs x` |
//! | DMASTZ | `0x0C` | 1 | |
//! | DMARMB / DMAWMB | `0x12` / `0x13` | 1 | |
//! | DMANOP | `0x18` | 1 | |
//! | DMALP | `0x20 \| lc<<1` | 2 | iterations − 1 |
//! | DMALDP\<S\|B\> | `0x25 \| bs<<1` | 2 | periph << 3 |
//! | DMALPEND\[S\|B\] / DMALPFE | `0x28 \| nf<<4 \| lc<<2 \| bs<<1 \| x` | 2 | backward jump |
//! | DMASTP\<S\|B\> | `0x29 \| bs<<1` | 2 | periph << 3 (overlays LPFE lc0 S/B) |
//! | DMAWFP\<S\|B\|P\> | `0x30` / `0x32` / `0x31` | 2 | periph << 3 |
//! | DMASEV | `0x34` | 2 | event << 3 |
//! | DMAFLUSHP | `0x35` | 2 | periph << 3 |
//! | DMAWFE | `0x36` | 2 | event << 3 \| invalid << 1 |
//! | DMAADDH / DMAADNH | `0x54 \| ra<<1` / `0x5C \| ra<<1` | 3 | imm16 LE |
//! | DMAGO | `0xA0 \| ns<<1` | 6 | channel, imm32 LE |
//! | DMAMOV | `0xBC` | 6 | rd (0 SAR, 1 CCR, 2 DAR), imm32 LE |
//!
//! Every other first byte, and the `bs=1, x=0` forms (`0x06`, `0x0A`, `0x2A`,
//! `0x2E`, `0x3A`, `0x3E`) and DMAWFP `0x33`, are undefined (`undef_instr`).
//! Reserved operand bits that are set give `operand_invalid`.

use thiserror::Error;

/// Longest instruction (DMAGO, DMAMOV).
pub const MAX_INSN_LEN: usize = 6;

/// The S/B condition suffix of DMALD, DMAST, DMALPEND.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    /// No suffix: always executes.
    Always,
    /// `S`: executes only when the request type is Single.
    Single,
    /// `B`: executes only when the request type is Burst.
    Burst,
}

impl Cond {
    /// `bs`/`x` bits (bit 1, bit 0) of the encoding.
    const fn bits(self) -> u8 {
        match self {
            Cond::Always => 0b00,
            Cond::Single => 0b01,
            Cond::Burst => 0b11,
        }
    }
    const fn from_bits(b: u8) -> Option<Cond> {
        match b & 3 {
            0b00 => Some(Cond::Always),
            0b01 => Some(Cond::Single),
            0b11 => Some(Cond::Burst),
            _ => None,
        }
    }
}

/// Loop counter selector of DMALP/DMALPEND.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopCounter {
    /// LC0.
    Lc0,
    /// LC1.
    Lc1,
}

impl LoopCounter {
    /// Index into the loop counter pair.
    pub const fn index(self) -> usize {
        match self {
            LoopCounter::Lc0 => 0,
            LoopCounter::Lc1 => 1,
        }
    }
    const fn bit(self) -> u8 {
        match self {
            LoopCounter::Lc0 => 0,
            LoopCounter::Lc1 => 1,
        }
    }
    const fn from_bit(b: u8) -> LoopCounter {
        if b & 1 == 0 {
            LoopCounter::Lc0
        } else {
            LoopCounter::Lc1
        }
    }
}

/// Destination register of DMAMOV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MovReg {
    /// Source Address Register (rd = 0).
    Sar,
    /// Channel Control Register (rd = 1).
    Ccr,
    /// Destination Address Register (rd = 2).
    Dar,
}

/// Address register of DMAADDH/DMAADNH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrReg {
    /// SAR (ra = 0).
    Sar,
    /// DAR (ra = 1).
    Dar,
}

/// Operand of DMAWFP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WfpKind {
    /// `S`: request type becomes Single.
    Single,
    /// `B`: request type becomes Burst.
    Burst,
    /// `P`: request type follows the peripheral's request.
    Periph,
}

/// One decoded DMA-330 instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insn {
    /// DMAEND.
    End,
    /// DMAKILL.
    Kill,
    /// DMANOP.
    Nop,
    /// DMARMB (read memory barrier).
    Rmb,
    /// DMAWMB (write memory barrier).
    Wmb,
    /// DMASTZ (store zeros).
    Stz,
    /// DMALD\[S|B\].
    Ld(Cond),
    /// DMAST\[S|B\].
    St(Cond),
    /// DMALDP\<S|B\>.
    Ldp {
        /// B (true) or S.
        burst: bool,
        /// Peripheral number (0..=31).
        periph: u8,
    },
    /// DMASTP\<S|B\>.
    Stp {
        /// B (true) or S.
        burst: bool,
        /// Peripheral number.
        periph: u8,
    },
    /// DMALP: loads `count` (iterations − 1) into LC0/LC1.
    Lp {
        /// Counter.
        lc: LoopCounter,
        /// Value loaded into the counter (iterations − 1).
        count: u8,
    },
    /// DMALPEND\[S|B\] (`forever` = false) or the DMALPFE form (`forever` = true).
    LpEnd {
        /// Counter tested and decremented (ignored for `forever`).
        lc: LoopCounter,
        /// Condition suffix.
        cond: Cond,
        /// `nf = 0`: loop forever.
        forever: bool,
        /// Backward jump from this instruction's address.
        jump: u8,
    },
    /// DMAWFP.
    Wfp {
        /// S/B/P operand.
        kind: WfpKind,
        /// Peripheral number.
        periph: u8,
    },
    /// DMASEV.
    Sev {
        /// Event number (0..=31).
        event: u8,
    },
    /// DMAFLUSHP.
    FlushP {
        /// Peripheral number.
        periph: u8,
    },
    /// DMAWFE.
    Wfe {
        /// Event number.
        event: u8,
        /// Invalidate the instruction cache.
        invalidate: bool,
    },
    /// DMAADDH: add an unsigned 16-bit immediate.
    AddH {
        /// SAR or DAR.
        reg: AddrReg,
        /// Immediate.
        imm: u16,
    },
    /// DMAADNH: add a negative 16-bit immediate (`0xFFFF_0000 | imm`).
    AdnH {
        /// SAR or DAR.
        reg: AddrReg,
        /// Immediate (low 16 bits of the two's complement value).
        imm: u16,
    },
    /// DMAGO (manager only).
    Go {
        /// Channel number (0..=7).
        chan: u8,
        /// Start the channel non-secure.
        ns: bool,
        /// Microcode start address.
        addr: u32,
    },
    /// DMAMOV.
    Mov {
        /// Destination register.
        reg: MovReg,
        /// Immediate.
        imm: u32,
    },
}

/// Why bytes are not a valid instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Byte 0 is not an instruction (`undef_instr`).
    #[error("undefined instruction {0:#04x}")]
    Undefined(u8),
    /// A reserved operand bit is set, or DMAMOV names no register (`operand_invalid`).
    #[error("invalid operand for instruction {0:#04x}")]
    InvalidOperand(u8),
    /// Fewer bytes than the instruction needs.
    #[error("truncated instruction: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes the instruction needs.
        need: usize,
        /// Bytes supplied.
        have: usize,
    },
}

/// Length in bytes of the instruction starting with `op`, or `None` when `op`
/// is undefined.
pub const fn insn_len(op: u8) -> Option<usize> {
    match op {
        0x00 | 0x01 | 0x04 | 0x05 | 0x07 | 0x08 | 0x09 | 0x0b | 0x0c | 0x12 | 0x13 | 0x18 => {
            Some(1)
        }
        0x20 | 0x22 | 0x25 | 0x27 | 0x28 | 0x29 | 0x2b | 0x2c | 0x2d | 0x2f | 0x30 | 0x31
        | 0x32 | 0x34 | 0x35 | 0x36 | 0x38 | 0x39 | 0x3b | 0x3c | 0x3d | 0x3f => Some(2),
        0x54 | 0x56 | 0x5c | 0x5e => Some(3),
        0xa0 | 0xa2 | 0xbc => Some(6),
        _ => None,
    }
}

/// Operand byte of the form `n << 3` with `[2:0]` reserved.
const fn num_operand(op: u8, b: u8) -> Result<u8, DecodeError> {
    if b & 7 != 0 {
        Err(DecodeError::InvalidOperand(op))
    } else {
        Ok(b >> 3)
    }
}

/// Decodes the instruction at the start of `bytes`; returns it and its length.
pub fn decode(bytes: &[u8]) -> Result<(Insn, usize), DecodeError> {
    let Some(&op) = bytes.first() else {
        return Err(DecodeError::Truncated { need: 1, have: 0 });
    };
    let len = insn_len(op).ok_or(DecodeError::Undefined(op))?;
    let Some(b) = bytes.get(..len) else {
        return Err(DecodeError::Truncated {
            need: len,
            have: bytes.len(),
        });
    };
    let b1 = b.get(1).copied().unwrap_or(0);
    let imm16 = || u16::from_le_bytes([b1, b.get(2).copied().unwrap_or(0)]);
    let imm32 = || {
        let mut w = [0u8; 4];
        for (i, x) in w.iter_mut().enumerate() {
            *x = b.get(2 + i).copied().unwrap_or(0);
        }
        u32::from_le_bytes(w)
    };
    let cond = |o: u8| Cond::from_bits(o).ok_or(DecodeError::Undefined(o));
    let insn = match op {
        0x00 => Insn::End,
        0x01 => Insn::Kill,
        0x04..=0x07 => Insn::Ld(cond(op)?),
        0x08..=0x0b => Insn::St(cond(op)?),
        0x0c => Insn::Stz,
        0x12 => Insn::Rmb,
        0x13 => Insn::Wmb,
        0x18 => Insn::Nop,
        0x20 | 0x22 => Insn::Lp {
            lc: LoopCounter::from_bit(op >> 1),
            count: b1,
        },
        0x25 | 0x27 => Insn::Ldp {
            burst: op & 2 != 0,
            periph: num_operand(op, b1)?,
        },
        0x29 | 0x2b => Insn::Stp {
            burst: op & 2 != 0,
            periph: num_operand(op, b1)?,
        },
        0x28 | 0x2c | 0x2d | 0x2f | 0x38 | 0x39 | 0x3b | 0x3c | 0x3d | 0x3f => Insn::LpEnd {
            lc: LoopCounter::from_bit(op >> 2),
            cond: cond(op)?,
            forever: op & 0x10 == 0,
            jump: b1,
        },
        0x30 => Insn::Wfp {
            kind: WfpKind::Single,
            periph: num_operand(op, b1)?,
        },
        0x31 => Insn::Wfp {
            kind: WfpKind::Periph,
            periph: num_operand(op, b1)?,
        },
        0x32 => Insn::Wfp {
            kind: WfpKind::Burst,
            periph: num_operand(op, b1)?,
        },
        0x34 => Insn::Sev {
            event: num_operand(op, b1)?,
        },
        0x35 => Insn::FlushP {
            periph: num_operand(op, b1)?,
        },
        0x36 => {
            if b1 & 0b101 != 0 {
                return Err(DecodeError::InvalidOperand(op));
            }
            Insn::Wfe {
                event: b1 >> 3,
                invalidate: b1 & 0b010 != 0,
            }
        }
        0x54 | 0x56 => Insn::AddH {
            reg: if op & 2 == 0 {
                AddrReg::Sar
            } else {
                AddrReg::Dar
            },
            imm: imm16(),
        },
        0x5c | 0x5e => Insn::AdnH {
            reg: if op & 2 == 0 {
                AddrReg::Sar
            } else {
                AddrReg::Dar
            },
            imm: imm16(),
        },
        0xa0 | 0xa2 => {
            if b1 & !7 != 0 {
                return Err(DecodeError::InvalidOperand(op));
            }
            Insn::Go {
                chan: b1 & 7,
                ns: op & 2 != 0,
                addr: imm32(),
            }
        }
        0xbc => Insn::Mov {
            reg: match b1 {
                0 => MovReg::Sar,
                1 => MovReg::Ccr,
                2 => MovReg::Dar,
                _ => return Err(DecodeError::InvalidOperand(op)),
            },
            imm: imm32(),
        },
        _ => return Err(DecodeError::Undefined(op)),
    };
    Ok((insn, len))
}

impl Insn {
    /// Encodes the instruction; returns the bytes and the length used.
    ///
    /// Operands are masked to their fields (event/peripheral to 5 bits,
    /// channel to 3 bits), as Linux's `_emit_*` functions do.
    pub fn encode(&self) -> ([u8; MAX_INSN_LEN], usize) {
        let mut b = [0u8; MAX_INSN_LEN];
        let len = match *self {
            Insn::End => {
                b[0] = 0x00;
                1
            }
            Insn::Kill => {
                b[0] = 0x01;
                1
            }
            Insn::Nop => {
                b[0] = 0x18;
                1
            }
            Insn::Rmb => {
                b[0] = 0x12;
                1
            }
            Insn::Wmb => {
                b[0] = 0x13;
                1
            }
            Insn::Stz => {
                b[0] = 0x0c;
                1
            }
            Insn::Ld(c) => {
                b[0] = 0x04 | c.bits();
                1
            }
            Insn::St(c) => {
                b[0] = 0x08 | c.bits();
                1
            }
            Insn::Ldp { burst, periph } => {
                b[0] = 0x25 | (u8::from(burst) << 1);
                b[1] = (periph & 0x1f) << 3;
                2
            }
            Insn::Stp { burst, periph } => {
                b[0] = 0x29 | (u8::from(burst) << 1);
                b[1] = (periph & 0x1f) << 3;
                2
            }
            Insn::Lp { lc, count } => {
                b[0] = 0x20 | (lc.bit() << 1);
                b[1] = count;
                2
            }
            Insn::LpEnd {
                lc,
                cond,
                forever,
                jump,
            } => {
                b[0] = 0x28 | (u8::from(!forever) << 4) | (lc.bit() << 2) | cond.bits();
                b[1] = jump;
                2
            }
            Insn::Wfp { kind, periph } => {
                b[0] = match kind {
                    WfpKind::Single => 0x30,
                    WfpKind::Periph => 0x31,
                    WfpKind::Burst => 0x32,
                };
                b[1] = (periph & 0x1f) << 3;
                2
            }
            Insn::Sev { event } => {
                b[0] = 0x34;
                b[1] = (event & 0x1f) << 3;
                2
            }
            Insn::FlushP { periph } => {
                b[0] = 0x35;
                b[1] = (periph & 0x1f) << 3;
                2
            }
            Insn::Wfe { event, invalidate } => {
                b[0] = 0x36;
                b[1] = ((event & 0x1f) << 3) | (u8::from(invalidate) << 1);
                2
            }
            Insn::AddH { reg, imm } | Insn::AdnH { reg, imm } => {
                let base = if matches!(self, Insn::AddH { .. }) {
                    0x54
                } else {
                    0x5c
                };
                b[0] = base | (u8::from(reg == AddrReg::Dar) << 1);
                b[1..3].copy_from_slice(&imm.to_le_bytes());
                3
            }
            Insn::Go { chan, ns, addr } => {
                b[0] = 0xa0 | (u8::from(ns) << 1);
                b[1] = chan & 7;
                b[2..6].copy_from_slice(&addr.to_le_bytes());
                6
            }
            Insn::Mov { reg, imm } => {
                b[0] = 0xbc;
                b[1] = match reg {
                    MovReg::Sar => 0,
                    MovReg::Ccr => 1,
                    MovReg::Dar => 2,
                };
                b[2..6].copy_from_slice(&imm.to_le_bytes());
                6
            }
        };
        (b, len)
    }

    /// Encoded length in bytes.
    pub fn len(&self) -> usize {
        self.encode().1
    }

    /// Always false (every instruction has at least one byte); for clippy.
    pub fn is_empty(&self) -> bool {
        false
    }
}
