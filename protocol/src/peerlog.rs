//! Rate-limited logging of problems a peer causes.
//!
//! Every malformed or refused message is worth a warning — until a hostile peer
//! sends millions of them and the log becomes the attack. [`crate::peer_warn!`] logs
//! at warn level for the first [`PER_SECOND`] peer problems in each second (for
//! the whole process) and at debug level beyond that; the next warning after a
//! suppressed stretch says how many were demoted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Peer problems logged at warn level per second; the rest go to debug.
pub const PER_SECOND: u64 = 20;

/// A one-second window counter (lock-free; a race at a window boundary can
/// only let a few more lines through).
#[derive(Debug, Default)]
pub struct RateLimit {
    window: AtomicU64,
    count: AtomicU64,
    suppressed: AtomicU64,
}

/// What to do with one peer problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log at warn level; `n` lines were demoted to debug since the last warning.
    Warn {
        /// Lines demoted since the last warning.
        demoted: u64,
    },
    /// Log at debug level.
    Demote,
}

impl RateLimit {
    /// The verdict for a problem at second `now`.
    pub fn check_at(&self, now: u64) -> Verdict {
        if self.window.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < PER_SECOND {
            Verdict::Warn {
                demoted: self.suppressed.swap(0, Ordering::Relaxed),
            }
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            Verdict::Demote
        }
    }
}

static LIMIT: RateLimit = RateLimit {
    window: AtomicU64::new(0),
    count: AtomicU64::new(0),
    suppressed: AtomicU64::new(0),
};

/// The process-wide verdict for a peer problem now.
pub fn check() -> Verdict {
    static START: OnceLock<Instant> = OnceLock::new();
    let now = START.get_or_init(Instant::now).elapsed().as_secs();
    LIMIT.check_at(now)
}

/// `log::warn!` for a problem a peer caused, rate-limited (see the module docs).
#[macro_export]
macro_rules! peer_warn {
    ($($arg:tt)+) => {
        match $crate::peerlog::check() {
            $crate::peerlog::Verdict::Warn { demoted: 0 } => log::warn!($($arg)+),
            $crate::peerlog::Verdict::Warn { demoted } => {
                log::warn!(
                    "({demoted} more peer protocol errors were logged at debug level)"
                );
                log::warn!($($arg)+)
            }
            $crate::peerlog::Verdict::Demote => log::debug!($($arg)+),
        }
    };
}

/// Does an env_logger spec (`RUST_LOG`) let any log of `crates` through? A
/// bare level other than `off` does; a `module[=level]` directive does when a
/// crate name starts with the module path (env_logger's prefix rule). A typo
/// such as `infox` is a module filter that matches nothing.
pub fn rust_log_enables(spec: &str, crates: &[&str]) -> bool {
    const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
    let filters = spec.split('/').next().unwrap_or("");
    filters.split(',').map(str::trim).any(|d| {
        let (module, level) = match d.split_once('=') {
            Some((m, l)) => (m.trim(), Some(l.trim())),
            None => (d, None),
        };
        let lower = module.to_ascii_lowercase();
        if level.is_none() && LEVELS.contains(&lower.as_str()) {
            return true;
        }
        let level_on = level.is_none_or(|l| !l.eq_ignore_ascii_case("off"));
        level_on
            && !module.is_empty()
            && crates
                .iter()
                .any(|c| c.starts_with(module) || module.starts_with(c))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn rust_log_typos_are_caught() {
        let ours = &["vfio_sidecar", "vfio_sidecar_protocol", "vmm_shim"];
        for ok in [
            "info",
            "DEBUG",
            "vfio_sidecar=trace",
            "vfio",
            "warn,foo=debug",
            "vmm_shim::vm",
            "x=info,trace",
        ] {
            assert!(rust_log_enables(ok, ours), "{ok}");
        }
        for bad in ["infox", "inf", "tokio=debug", "vfio_sidecar=off", "off", ""] {
            assert!(!rust_log_enables(bad, ours), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn warns_up_to_the_limit_then_demotes_then_reports() {
        let r = RateLimit::default();
        for _ in 0..PER_SECOND {
            assert_eq!(r.check_at(7), Verdict::Warn { demoted: 0 });
        }
        for _ in 0..5 {
            assert_eq!(r.check_at(7), Verdict::Demote);
        }
        // A new second: warnings again, and the first one reports the demoted lines.
        assert_eq!(r.check_at(8), Verdict::Warn { demoted: 5 });
        assert_eq!(r.check_at(8), Verdict::Warn { demoted: 0 });
    }
}
