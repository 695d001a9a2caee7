//! Sample statistics: percentiles of latency samples.

use serde::Serialize;

/// Summary of a set of latency samples, in nanoseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Median.
    pub p50_ns: f64,
    /// 99th percentile.
    pub p99_ns: f64,
    /// Mean.
    pub mean_ns: f64,
}

/// Nearest-rank percentile of sorted samples (`q` in 0..=1).
fn pct(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted.len()) - 1;
    sorted.get(i).copied().unwrap_or(0) as f64
}

impl Summary {
    /// Summarizes `samples` (nanoseconds). Empty input gives NaN figures.
    pub fn of(samples: &[u64]) -> Summary {
        let mut s = samples.to_vec();
        s.sort_unstable();
        let mean = if s.is_empty() {
            f64::NAN
        } else {
            s.iter().map(|&v| v as f64).sum::<f64>() / s.len() as f64
        };
        Summary {
            n: s.len(),
            p50_ns: pct(&s, 0.5),
            p99_ns: pct(&s, 0.99),
            mean_ns: mean,
        }
    }
}

/// Formats nanoseconds as µs with 1 decimal.
pub fn us(ns: f64) -> String {
    format!("{:.1}", ns / 1000.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).rev().collect();
        let s = Summary::of(&v);
        assert_eq!(s.n, 100);
        assert_eq!(s.p50_ns, 50.0);
        assert_eq!(s.p99_ns, 99.0);
        assert_eq!(s.mean_ns, 50.5);
        let one = Summary::of(&[7]);
        assert_eq!((one.p50_ns, one.p99_ns), (7.0, 7.0));
        assert!(Summary::of(&[]).p50_ns.is_nan());
    }
}
