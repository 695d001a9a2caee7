//! A small, bounded flattened-device-tree (DTB) to DTS decoder for the probe:
//! the DTB fragment a server sends with its device description is untrusted
//! input, so every offset and length is checked and the walk is bounded.
//!
//! Property values print as strings when they are a list of printable
//! NUL-terminated strings, as `<cells>` when their length is a multiple of 4,
//! and as `[bytes]` otherwise (the usual dtc heuristics).

use thiserror::Error;

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;
/// Most tokens walked (a fragment is small; this bounds hostile input).
const MAX_TOKENS: usize = 100_000;
/// Deepest node nesting accepted.
const MAX_DEPTH: usize = 64;

/// Why a DTB could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FdtError {
    /// Shorter than its header or its declared blocks.
    #[error("DTB truncated: {0}")]
    Truncated(&'static str),
    /// Wrong magic number.
    #[error("not a DTB (magic {0:#x})")]
    BadMagic(u32),
    /// Structure block is malformed.
    #[error("malformed DTB structure: {0}")]
    Malformed(String),
}

fn be32(b: &[u8], off: usize) -> Result<u32, FdtError> {
    let s = b
        .get(off..off.checked_add(4).ok_or(FdtError::Truncated("offset"))?)
        .ok_or(FdtError::Truncated("u32 past the end"))?;
    Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn cstr(b: &[u8], off: usize) -> Result<(&str, usize), FdtError> {
    let rest = b.get(off..).ok_or(FdtError::Truncated("string offset"))?;
    let n = rest
        .iter()
        .position(|&c| c == 0)
        .ok_or(FdtError::Truncated("unterminated string"))?;
    let s = std::str::from_utf8(rest.get(..n).unwrap_or_default())
        .map_err(|_| FdtError::Malformed("name is not UTF-8".into()))?;
    Ok((s, n + 1))
}

fn align4(x: usize) -> usize {
    (x + 3) & !3
}

fn value_text(v: &[u8]) -> Option<String> {
    if v.is_empty() {
        return None;
    }
    let strings = v.last() == Some(&0)
        && v.split(|&c| c == 0)
            .take(v.split(|&c| c == 0).count() - 1)
            .all(|s| !s.is_empty() && s.iter().all(|c| c.is_ascii_graphic() || *c == b' '));
    if strings {
        let parts: Vec<String> = v
            .get(..v.len() - 1)
            .unwrap_or_default()
            .split(|&c| c == 0)
            .map(|s| format!("{:?}", String::from_utf8_lossy(s)))
            .collect();
        return Some(parts.join(", "));
    }
    if v.len() % 4 == 0 {
        let cells: Vec<String> = v
            .chunks(4)
            .map(|c| format!("{:#x}", u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        return Some(format!("<{}>", cells.join(" ")));
    }
    let bytes: Vec<String> = v.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("[{}]", bytes.join(" ")))
}

/// Decodes a DTB into DTS source text.
pub fn dtb_to_dts(dtb: &[u8]) -> Result<String, FdtError> {
    let magic = be32(dtb, 0).map_err(|_| FdtError::Truncated("header"))?;
    if magic != FDT_MAGIC {
        return Err(FdtError::BadMagic(magic));
    }
    let total = be32(dtb, 4)? as usize;
    let off_struct = be32(dtb, 8)? as usize;
    let off_strings = be32(dtb, 12)? as usize;
    let size_strings = be32(dtb, 32)? as usize;
    let size_struct = be32(dtb, 36)? as usize;
    if total > dtb.len() {
        return Err(FdtError::Truncated("totalsize"));
    }
    let blob = dtb.get(..total).unwrap_or_default();
    let structure = off_struct
        .checked_add(size_struct)
        .and_then(|e| blob.get(off_struct..e))
        .ok_or(FdtError::Truncated("structure block"))?;
    let strings = off_strings
        .checked_add(size_strings)
        .and_then(|e| blob.get(off_strings..e))
        .ok_or(FdtError::Truncated("strings block"))?;

    let mut out = String::from("/dts-v1/;\n\n");
    let mut pos = 0usize;
    let mut depth = 0usize;
    for _ in 0..MAX_TOKENS {
        let tok = be32(structure, pos)?;
        pos += 4;
        match tok {
            FDT_BEGIN_NODE => {
                let (name, n) = cstr(structure, pos)?;
                pos = align4(pos + n);
                let ind = "\t".repeat(depth);
                let name = if name.is_empty() && depth == 0 {
                    "/"
                } else {
                    name
                };
                out.push_str(&format!("{ind}{name} {{\n"));
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(FdtError::Malformed("nesting too deep".into()));
                }
            }
            FDT_END_NODE => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| FdtError::Malformed("END_NODE without a node".into()))?;
                out.push_str(&format!("{}}};\n", "\t".repeat(depth)));
            }
            FDT_PROP => {
                if depth == 0 {
                    return Err(FdtError::Malformed("property outside a node".into()));
                }
                let len = be32(structure, pos)? as usize;
                let nameoff = be32(structure, pos + 4)? as usize;
                pos += 8;
                let value = pos
                    .checked_add(len)
                    .and_then(|e| structure.get(pos..e))
                    .ok_or(FdtError::Truncated("property value"))?;
                pos = align4(pos + len);
                let (name, _) = cstr(strings, nameoff)?;
                let ind = "\t".repeat(depth);
                match value_text(value) {
                    None => out.push_str(&format!("{ind}{name};\n")),
                    Some(v) => out.push_str(&format!("{ind}{name} = {v};\n")),
                }
            }
            FDT_NOP => {}
            FDT_END => {
                if depth != 0 {
                    return Err(FdtError::Malformed("END inside a node".into()));
                }
                return Ok(out);
            }
            other => return Err(FdtError::Malformed(format!("unknown token {other:#x}"))),
        }
    }
    Err(FdtError::Malformed("too many tokens".into()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::dt::{device_tree, DtDevice, DtParams};
    use crate::profile::ProfileSet;

    fn pl330_dtb() -> Vec<u8> {
        let set = ProfileSet::default();
        let p = set.by_name("pl330").unwrap();
        let t = device_tree(
            p,
            &DtDevice {
                region_sizes: vec![0x1000],
                num_irqs: 2,
            },
            &DtParams::default(),
        )
        .unwrap();
        t.to_dtb().unwrap()
    }

    #[test]
    fn decodes_what_dt_rs_encodes() {
        let dts = dtb_to_dts(&pl330_dtb()).unwrap();
        for want in [
            "/dts-v1/;",
            "/ {",
            "compatible = \"arm,pl330\", \"arm,primecell\";",
            "reg = <0x0 0xc000000 0x0 0x1000>;",
            "interrupts = <0x0 0x20 0x4 0x0 0x21 0x4>;",
            "interrupt-controller;",
            "clock-names = \"apb_pclk\";",
        ] {
            assert!(dts.contains(want), "missing {want:?} in\n{dts}");
        }
        assert_eq!(dts.matches('{').count(), dts.matches("};").count());
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        let good = pl330_dtb();
        assert_eq!(dtb_to_dts(&[]), Err(FdtError::Truncated("header")));
        assert!(matches!(dtb_to_dts(&[0u8; 64]), Err(FdtError::BadMagic(0))));
        // Every truncation.
        for n in 0..good.len() {
            assert!(dtb_to_dts(&good[..n]).is_err(), "truncated at {n}");
        }
        // Every single-byte corruption: decodes or errors, never panics.
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0xff;
            let _ = dtb_to_dts(&b);
        }
        // A structure of only BEGIN_NODE tokens nests too deep.
        let mut b = good.clone();
        let off = u32::from_be_bytes(b[8..12].try_into().unwrap()) as usize;
        let size = u32::from_be_bytes(b[36..40].try_into().unwrap()) as usize;
        for w in b[off..off + size].chunks_mut(8) {
            if w.len() == 8 {
                w.copy_from_slice(&[0, 0, 0, 1, b'a', 0, 0, 0]);
            }
        }
        assert!(dtb_to_dts(&b).is_err());
    }

    #[test]
    fn value_heuristics() {
        assert_eq!(value_text(b""), None);
        assert_eq!(value_text(b"ab\0cd\0").unwrap(), "\"ab\", \"cd\"");
        assert_eq!(value_text(&[0, 0, 0, 1]).unwrap(), "<0x1>");
        assert_eq!(value_text(&[1, 2, 3]).unwrap(), "[01 02 03]");
        assert_eq!(value_text(b"\0\0\0\0").unwrap(), "<0x0>");
    }
}
