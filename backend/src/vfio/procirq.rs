//! Host-interrupt counts from `/proc/interrupts`.
//!
//! With VFIO the trigger eventfd goes straight to the kernel, so the backend never
//! sees an interrupt. The kernel names the handler it installs for each vector,
//! and `/proc/interrupts` counts how often that handler ran:
//!
//! | device | vector | handler name |
//! |---|---|---|
//! | PCI | INTx | `vfio-intx(0000:00:03.0)` |
//! | PCI | MSI n | `vfio-msi[n](0000:00:03.0)` |
//! | PCI | MSI-X n | `vfio-msix[n](0000:00:03.0)` |
//! | platform/AMBA | IRQ i | `vfio-irq[<linux irq>](<device name>)` |
//!
//! A shared INTx line (several handlers on one line, `a, b` in the last column)
//! counts the other devices' interrupts too: the count is per line, not per
//! handler. For platform devices the index→line mapping is by order of the Linux
//! IRQ number (best effort: DT order normally allocates ascending numbers).

/// One line of `/proc/interrupts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrqLine {
    /// The first column without the colon (`24`, `NMI`, ...).
    pub irq: String,
    /// Sum over all CPU columns.
    pub count: u64,
    /// Handler names (the comma-separated list at the end of the line).
    pub actions: Vec<String>,
}

/// Parses `/proc/interrupts` text. The header gives the number of CPU columns;
/// lines that do not fit the format are skipped.
pub fn parse(text: &str) -> Vec<IrqLine> {
    let mut lines = text.lines();
    let ncpu = match lines.next() {
        Some(h) => h
            .split_whitespace()
            .filter(|w| w.starts_with("CPU"))
            .count(),
        None => return Vec::new(),
    };
    let mut out = Vec::new();
    for l in lines {
        let Some((irq, rest)) = l.split_once(':') else {
            continue;
        };
        let mut rest = rest.trim_start();
        let mut count = 0u64;
        let mut ok = true;
        for _ in 0..ncpu {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            match rest[..end].parse::<u64>() {
                Ok(n) => count = count.saturating_add(n),
                Err(_) => {
                    ok = false;
                    break;
                }
            }
            rest = rest[end..].trim_start();
        }
        if !ok {
            continue;
        }
        // After the counts: "<chip> <hwirq-type> <actions...>". The handler names never
        // contain spaces; the action list is "a, b, c". Take every token containing
        // '(' or '[' or following a comma as actions: simplest robust rule is to split
        // the remainder at ", " and take the last word of the first chunk.
        let chunks: Vec<&str> = rest.split(", ").collect();
        let mut actions = Vec::new();
        if let Some(first) = chunks.first() {
            if let Some(w) = first.split_whitespace().last() {
                actions.push(w.to_string());
            }
        }
        actions.extend(chunks.iter().skip(1).map(|s| s.trim().to_string()));
        out.push(IrqLine {
            irq: irq.trim().to_string(),
            count,
            actions,
        });
    }
    out
}

/// Total count of the lines carrying handler `name` (0 if none).
pub fn count_for(lines: &[IrqLine], name: &str) -> Option<u64> {
    let mut found = None;
    for l in lines {
        if l.actions.iter().any(|a| a == name) {
            *found.get_or_insert(0u64) += l.count;
        }
    }
    found
}

/// Handler name vfio-pci uses for a vector of `index` (0 INTx, 1 MSI, 2 MSI-X).
pub fn pci_handler_name(bdf: &str, index: u32, vector: u32) -> Option<String> {
    match index {
        0 => Some(format!("vfio-intx({bdf})")),
        1 => Some(format!("vfio-msi[{vector}]({bdf})")),
        2 => Some(format!("vfio-msix[{vector}]({bdf})")),
        _ => None,
    }
}

/// Count for platform/AMBA IRQ `index` of device `name`: the `index`-th of the
/// lines whose handler is `vfio-irq[N](name)`, ordered by N.
pub fn platform_count(lines: &[IrqLine], name: &str, index: u32) -> Option<u64> {
    let suffix = format!("]({name})");
    let suffix = suffix.as_str();
    let mut found: Vec<(u64, u64)> = lines
        .iter()
        .flat_map(|l| {
            l.actions.iter().filter_map(move |a| {
                let n = a.strip_prefix("vfio-irq[")?.strip_suffix(suffix)?;
                Some((n.parse::<u64>().ok()?, l.count))
            })
        })
        .collect();
    found.sort();
    found.get(index as usize).map(|&(_, c)| c)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SAMPLE: &str = "           CPU0       CPU1       \n  0:         40          0   IO-APIC   2-edge      timer\n  4:        812          3   IO-APIC   4-edge      ttyS0\n 11:          5          2   IO-APIC  11-fasteoi   uhci_hcd:usb1, vfio-intx(0000:00:03.0)\n 24:          7          1  IR-PCI-MSI-0000:00:03.0   0-edge      vfio-msi[0](0000:00:03.0)\n 25:          0          0  IR-PCI-MSI-0000:00:04.0   0-edge      vfio-msix[3](0000:00:04.0)\n 40:          9          0     GICv3  45 Level     vfio-irq[40](2c0a0000.dma)\n 38:          4          0     GICv3  43 Level     vfio-irq[38](2c0a0000.dma)\nNMI:          0          0   Non-maskable interrupts\nERR:          0\n";

    #[test]
    fn parses_counts_and_actions() {
        let l = parse(SAMPLE);
        assert_eq!(l[0].irq, "0");
        assert_eq!(l[0].count, 40);
        assert_eq!(l[0].actions, vec!["timer"]);
        assert_eq!(
            l[2].actions,
            vec!["uhci_hcd:usb1", "vfio-intx(0000:00:03.0)"]
        );
        // ERR has fewer columns than CPUs and is skipped, NMI parses
        assert!(l.iter().all(|x| x.irq != "ERR"));
        assert!(l.iter().any(|x| x.irq == "NMI"));
    }

    #[test]
    fn pci_vectors() {
        let l = parse(SAMPLE);
        let bdf = "0000:00:03.0";
        let c = |i, v| count_for(&l, &pci_handler_name(bdf, i, v).unwrap());
        assert_eq!(c(0, 0), Some(7)); // shared line: the line's total
        assert_eq!(c(1, 0), Some(8));
        assert_eq!(c(1, 1), None);
        assert_eq!(c(2, 0), None);
        assert_eq!(
            count_for(&l, &pci_handler_name("0000:00:04.0", 2, 3).unwrap()),
            Some(0)
        );
        assert_eq!(pci_handler_name(bdf, 3, 0), None);
    }

    #[test]
    fn platform_vectors_by_linux_irq_order() {
        let l = parse(SAMPLE);
        assert_eq!(platform_count(&l, "2c0a0000.dma", 0), Some(4)); // irq 38
        assert_eq!(platform_count(&l, "2c0a0000.dma", 1), Some(9)); // irq 40
        assert_eq!(platform_count(&l, "2c0a0000.dma", 2), None);
        assert_eq!(platform_count(&l, "other", 0), None);
    }

    #[test]
    fn empty_and_garbage() {
        assert!(parse("").is_empty());
        assert!(parse("CPU0\nnot a line\n 5: x y\n").is_empty());
    }
}
