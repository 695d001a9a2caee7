//! The seccomp allow-list of the serve loop's steady state.
//!
//! Everything the backend needs to *set up* (opening `/dev/vfio`, sysfs, creating
//! the listener, privilege drop) happens before [`apply_seccomp`]. Afterwards the
//! process only: accepts on its listener, exchanges messages and fds on Unix
//! sockets (`recvmsg` with `MSG_CMSG_CLOEXEC`, `sendmsg` with `SCM_RIGHTS`), mmaps
//! received memfds and device regions (copying from/to its own mappings of
//! unsealed files with `process_vm_readv`/`process_vm_writev` on its own pid),
//! writes eventfds, issues VFIO ioctls and
//! region `pread`/`pwrite`, waits in epoll, reads a signalfd, logs to stderr,
//! removes its socket file and exits. No `open`, `socket`, `connect`, `execve`,
//! `fork`, `ptrace`, `PROT_EXEC` mappings, or ioctls other than VFIO/iommufd and a
//! few fd/tty queries.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompCmpArgLen as ArgLen, SeccompCmpOp as Op, SeccompCondition as Cond,
    SeccompFilter, SeccompRule, TargetArch,
};

use super::{Result, SandboxError};

/// What the kernel does when the backend makes a syscall outside the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompAction {
    /// `SECCOMP_RET_KILL_PROCESS`: the whole process dies by SIGSYS (production).
    #[default]
    Kill,
    /// `SECCOMP_RET_TRAP`: a SIGSYS handler prints the syscall number to stderr,
    /// then the process dies by SIGSYS (debugging: tells which syscall is missing).
    Trap,
    /// `SECCOMP_RET_LOG`: the syscall is allowed and logged by the kernel audit
    /// log (debugging: run the full workload, then collect every missing syscall).
    Log,
}

/// Which filter [`apply_seccomp`] installs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeccompProfile {
    /// Action on a forbidden syscall.
    pub action: SeccompAction,
    /// Also allow creating threads after the filter is installed (see
    /// [`thread_syscalls`]); `clone3` then fails with `ENOSYS` so that glibc falls
    /// back to `clone`, whose flags are checked to contain `CLONE_THREAD`.
    pub allow_threads: bool,
    /// Also allow opening files read-only (`openat` without write access, `O_CREAT`,
    /// `O_TRUNC` or `O_APPEND`). Off by default: prefer opening what the steady
    /// state reads (e.g. `/proc/interrupts`) before the filter and re-reading it
    /// with `pread` at offset 0. With it on, a compromised backend can read every
    /// file its user can read.
    pub allow_readonly_open: bool,
    /// Extra syscall numbers to allow unconditionally (escape hatch for
    /// integration; each addition must be documented in docs/threat-model.md).
    pub extra_syscalls: Vec<i64>,
}

/// `_IO(';', 100)`: the first VFIO ioctl (`VFIO_GET_API_VERSION`).
const VFIO_IOCTL_FIRST: u64 = 0x3b64;
/// Last ioctl number of the VFIO (`';'`, 100..) and iommufd (`';'`, 0x80..) ranges.
const VFIO_IOCTL_LAST: u64 = 0x3bff;

/// Non-VFIO ioctls the steady state may issue: std's `set_nonblocking`
/// (`FIONBIO`), `FIOCLEX`/`FIONCLEX`, `FIONREAD`, and the terminal queries behind
/// `isatty` (`TCGETS`, `TIOCGWINSZ`) used by the logger.
// The libc type of these constants differs between glibc and musl.
#[allow(clippy::unnecessary_cast)]
const OTHER_IOCTLS: &[(&str, u64)] = &[
    ("FIONBIO", libc::FIONBIO as u64),
    ("FIOCLEX", libc::FIOCLEX as u64),
    ("FIONCLEX", libc::FIONCLEX as u64),
    ("FIONREAD", libc::FIONREAD as u64),
    ("TCGETS", libc::TCGETS as u64),
    ("TIOCGWINSZ", libc::TIOCGWINSZ as u64),
];

/// Syscalls allowed on every architecture (some with argument conditions, see
/// [`syscall_conditions`]).
const COMMON: &[(&str, i64)] = &[
    // Socket and fd I/O.
    ("read", libc::SYS_read),
    ("write", libc::SYS_write),
    ("readv", libc::SYS_readv),
    ("writev", libc::SYS_writev),
    ("pread64", libc::SYS_pread64),
    ("pwrite64", libc::SYS_pwrite64),
    ("preadv", libc::SYS_preadv),
    ("pwritev", libc::SYS_pwritev),
    // `peer_eventfd::consume`: RWF_NOWAIT reads of client eventfds.
    ("preadv2", libc::SYS_preadv2),
    ("lseek", libc::SYS_lseek),
    ("recvmsg", libc::SYS_recvmsg),
    ("sendmsg", libc::SYS_sendmsg),
    ("recvfrom", libc::SYS_recvfrom),
    ("sendto", libc::SYS_sendto),
    ("shutdown", libc::SYS_shutdown),
    ("accept4", libc::SYS_accept4),
    ("getsockopt", libc::SYS_getsockopt),
    ("setsockopt", libc::SYS_setsockopt),
    ("getsockname", libc::SYS_getsockname),
    ("getpeername", libc::SYS_getpeername),
    // Event loop.
    ("epoll_create1", libc::SYS_epoll_create1),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("epoll_pwait", libc::SYS_epoll_pwait),
    ("epoll_pwait2", libc::SYS_epoll_pwait2),
    ("ppoll", libc::SYS_ppoll),
    ("pselect6", libc::SYS_pselect6),
    ("eventfd2", libc::SYS_eventfd2),
    ("signalfd4", libc::SYS_signalfd4),
    ("timerfd_create", libc::SYS_timerfd_create),
    ("timerfd_settime", libc::SYS_timerfd_settime),
    ("timerfd_gettime", libc::SYS_timerfd_gettime),
    // `peer_eventfd`: the per-thread deadline timer bounding writes of client
    // eventfds (timer_create: CLOCK_MONOTONIC only).
    ("timer_create", libc::SYS_timer_create),
    ("timer_settime", libc::SYS_timer_settime),
    ("timer_delete", libc::SYS_timer_delete),
    // Memory: DMA table (client memfds), mmap-able regions, models' memfds, malloc.
    ("mmap", libc::SYS_mmap),
    ("munmap", libc::SYS_munmap),
    ("mprotect", libc::SYS_mprotect),
    ("madvise", libc::SYS_madvise),
    ("mremap", libc::SYS_mremap),
    ("brk", libc::SYS_brk),
    ("memfd_create", libc::SYS_memfd_create),
    ("ftruncate", libc::SYS_ftruncate),
    // Fd bookkeeping.
    ("close", libc::SYS_close),
    ("fcntl", libc::SYS_fcntl),
    ("dup", libc::SYS_dup),
    ("dup3", libc::SYS_dup3),
    ("fstat", libc::SYS_fstat),
    // The DMA table's filesystem check (sysfs/procfs files are not RAM).
    ("fstatfs", libc::SYS_fstatfs),
    ("newfstatat", libc::SYS_newfstatat),
    ("statx", libc::SYS_statx),
    ("ioctl", libc::SYS_ioctl),
    // Synchronisation, time, randomness (HashMap seeds).
    ("futex", libc::SYS_futex),
    ("sched_yield", libc::SYS_sched_yield),
    ("nanosleep", libc::SYS_nanosleep),
    ("clock_nanosleep", libc::SYS_clock_nanosleep),
    ("clock_gettime", libc::SYS_clock_gettime),
    ("clock_getres", libc::SYS_clock_getres),
    ("gettimeofday", libc::SYS_gettimeofday),
    ("getrandom", libc::SYS_getrandom),
    // Identity queries (logging, SO_PEERCRED comparisons).
    ("getpid", libc::SYS_getpid),
    ("gettid", libc::SYS_gettid),
    ("getuid", libc::SYS_getuid),
    ("geteuid", libc::SYS_geteuid),
    ("getgid", libc::SYS_getgid),
    ("getegid", libc::SYS_getegid),
    // Signals (signalfd setup, abort(), the Trap-mode handler).
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("rt_sigaction", libc::SYS_rt_sigaction),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("tgkill", libc::SYS_tgkill),
    // DMA copies of unsealed mappings (conditioned: own pid).
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("restart_syscall", libc::SYS_restart_syscall),
    // `irq::check_eventfd` identifies eventfds by their /proc/self/fd link.
    ("readlinkat", libc::SYS_readlinkat),
    // Exit: remove the socket file, leave.
    ("unlinkat", libc::SYS_unlinkat),
    ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
];

/// x86_64 legacy syscalls glibc and std still use there (aarch64 lacks them).
#[cfg(target_arch = "x86_64")]
const ARCH: &[(&str, i64)] = &[
    ("epoll_wait", libc::SYS_epoll_wait),
    ("poll", libc::SYS_poll),
    ("eventfd", libc::SYS_eventfd),
    ("signalfd", libc::SYS_signalfd),
    ("accept", libc::SYS_accept),
    ("dup2", libc::SYS_dup2),
    ("unlink", libc::SYS_unlink),
    ("time", libc::SYS_time),
    ("readlink", libc::SYS_readlink),
];

#[cfg(not(target_arch = "x86_64"))]
const ARCH: &[(&str, i64)] = &[("accept", libc::SYS_accept)];

/// Extra syscalls with [`SeccompProfile::allow_threads`].
const THREADS: &[(&str, i64)] = &[
    ("clone", libc::SYS_clone),
    ("clone3", libc::SYS_clone3),
    ("set_robust_list", libc::SYS_set_robust_list),
    ("rseq", libc::SYS_rseq),
    ("sched_getaffinity", libc::SYS_sched_getaffinity),
    ("prctl", libc::SYS_prctl),
    ("prlimit64", libc::SYS_prlimit64),
];

/// The syscalls the default profile allows (name, number on this architecture).
/// Several carry argument conditions: see [`syscall_conditions`].
pub fn allowed_syscalls() -> &'static [(&'static str, i64)] {
    static LIST: OnceLock<Vec<(&'static str, i64)>> = OnceLock::new();
    LIST.get_or_init(|| COMMON.iter().chain(ARCH).copied().collect())
}

/// The syscalls [`SeccompProfile::allow_threads`] adds.
pub fn thread_syscalls() -> &'static [(&'static str, i64)] {
    THREADS
}

/// Human-readable argument conditions of the conditioned syscalls (for docs and
/// `--help`); every other listed syscall is allowed with any arguments.
pub fn syscall_conditions() -> &'static [(&'static str, &'static str)] {
    &[
        (
            "ioctl",
            "request in 0x3b64..=0x3bff (VFIO and iommufd) or one of FIONBIO, FIOCLEX, \
             FIONCLEX, FIONREAD, TCGETS, TIOCGWINSZ",
        ),
        ("mmap", "prot without PROT_EXEC"),
        (
            "timer_create",
            "clock CLOCK_MONOTONIC (peer_eventfd's per-thread deadline timer)",
        ),
        ("mprotect", "prot without PROT_EXEC"),
        (
            "tgkill",
            "tgid = the backend's own pid (abort, Trap-mode re-raise)",
        ),
        (
            "process_vm_readv",
            "pid = the backend's own pid (DMA copies of mappings of files not sealed \
             against shrinking: EFAULT instead of SIGBUS)",
        ),
        (
            "process_vm_writev",
            "pid = the backend's own pid (as process_vm_readv)",
        ),
        ("clone", "(allow_threads) flags contain CLONE_THREAD"),
        (
            "clone3",
            "(allow_threads) fails with ENOSYS so glibc falls back to clone",
        ),
        ("prctl", "(allow_threads) option PR_SET_NAME"),
        ("prlimit64", "(allow_threads) new_limit NULL (query only)"),
        (
            "openat",
            "(allow_readonly_open) flags without O_WRONLY/O_RDWR, O_CREAT, O_TRUNC, O_APPEND",
        ),
    ]
}

fn cond(arg: u8, len: ArgLen, op: Op, val: u64) -> Result<Cond> {
    Cond::new(arg, len, op, val).map_err(|e| SandboxError::Seccomp(e.to_string()))
}

fn rule(conds: Vec<Cond>) -> Result<SeccompRule> {
    SeccompRule::new(conds).map_err(|e| SandboxError::Seccomp(e.to_string()))
}

fn target_arch() -> Result<TargetArch> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| SandboxError::Seccomp(e.to_string()))
}

fn mismatch(action: SeccompAction) -> seccompiler::SeccompAction {
    match action {
        SeccompAction::Kill => seccompiler::SeccompAction::KillProcess,
        SeccompAction::Trap => seccompiler::SeccompAction::Trap,
        SeccompAction::Log => seccompiler::SeccompAction::Log,
    }
}

/// Builds the BPF programs for `profile`, in installation order: with
/// `allow_threads` first a filter turning `clone3` into `ENOSYS` (the main filter
/// forbids `seccomp(2)`, so it must come last), then the main allow-list.
pub fn seccomp_filters(profile: &SeccompProfile) -> Result<Vec<BpfProgram>> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &(_, nr) in allowed_syscalls() {
        rules.insert(nr, Vec::new());
    }
    for &nr in &profile.extra_syscalls {
        rules.insert(nr, Vec::new());
    }

    // ioctl: VFIO/iommufd range or a known fd/tty request.
    let mut ioctl = vec![rule(vec![
        cond(1, ArgLen::Dword, Op::Ge, VFIO_IOCTL_FIRST)?,
        cond(1, ArgLen::Dword, Op::Le, VFIO_IOCTL_LAST)?,
    ])?];
    for &(_, req) in OTHER_IOCTLS {
        ioctl.push(rule(vec![cond(1, ArgLen::Dword, Op::Eq, req)?])?);
    }
    rules.insert(libc::SYS_ioctl, ioctl);

    // No executable mappings.
    let no_exec = || -> Result<Vec<SeccompRule>> {
        Ok(vec![rule(vec![cond(
            2,
            ArgLen::Dword,
            Op::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?])?])
    };
    rules.insert(libc::SYS_mmap, no_exec()?);
    rules.insert(libc::SYS_mprotect, no_exec()?);

    // The deadline timers of peer_eventfd: CLOCK_MONOTONIC only.
    rules.insert(
        libc::SYS_timer_create,
        vec![rule(vec![cond(
            0,
            ArgLen::Dword,
            Op::Eq,
            libc::CLOCK_MONOTONIC as u64,
        )?])?],
    );

    // Signals only to ourselves.
    let pid = u64::from(std::process::id());
    rules.insert(
        libc::SYS_tgkill,
        vec![rule(vec![cond(0, ArgLen::Dword, Op::Eq, pid)?])?],
    );
    // DMA copies to/from mappings of files not sealed against shrinking go
    // through the kernel (a shrunk file gives EFAULT instead of SIGBUS, see
    // crate::dma), only on our own memory.
    for nr in [libc::SYS_process_vm_readv, libc::SYS_process_vm_writev] {
        rules.insert(nr, vec![rule(vec![cond(0, ArgLen::Dword, Op::Eq, pid)?])?]);
    }

    if profile.allow_threads {
        for &(_, nr) in THREADS {
            rules.insert(nr, Vec::new());
        }
        let thread = libc::CLONE_THREAD as u64;
        rules.insert(
            libc::SYS_clone,
            vec![rule(vec![cond(
                0,
                ArgLen::Qword,
                Op::MaskedEq(thread),
                thread,
            )?])?],
        );
        rules.insert(
            libc::SYS_prctl,
            vec![rule(vec![cond(
                0,
                ArgLen::Dword,
                Op::Eq,
                libc::PR_SET_NAME as u64,
            )?])?],
        );
        rules.insert(
            libc::SYS_prlimit64,
            vec![rule(vec![cond(2, ArgLen::Qword, Op::Eq, 0)?])?],
        );
    }

    if profile.allow_readonly_open {
        let mask = (libc::O_ACCMODE | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND) as u64;
        let ro = |arg| -> Result<Vec<SeccompRule>> {
            Ok(vec![rule(vec![cond(
                arg,
                ArgLen::Dword,
                Op::MaskedEq(mask),
                0,
            )?])?])
        };
        rules.insert(libc::SYS_openat, ro(2)?);
        #[cfg(target_arch = "x86_64")]
        rules.insert(libc::SYS_open, ro(1)?);
    }

    let arch = target_arch()?;
    let to_bpf = |f: SeccompFilter| -> Result<BpfProgram> {
        f.try_into()
            .map_err(|e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string()))
    };
    let main = SeccompFilter::new(
        rules,
        mismatch(profile.action),
        seccompiler::SeccompAction::Allow,
        arch,
    )
    .map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    let mut out = Vec::with_capacity(2);
    if profile.allow_threads {
        let clone3 = SeccompFilter::new(
            [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
            seccompiler::SeccompAction::Allow,
            seccompiler::SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )
        .map_err(|e| SandboxError::Seccomp(e.to_string()))?;
        out.push(to_bpf(clone3)?);
    }
    // Last: once it is installed, seccomp(2) itself is forbidden.
    out.push(to_bpf(main)?);
    Ok(out)
}

/// Keeps the C allocator inside the allow-list (issue 13 #2). Call once,
/// before the first thread is spawned (the serve loop does so first thing).
///
/// glibc's malloc gives each thread beyond the first its own arena of mmapped
/// heaps; shrinking one of those (`heap_trim` → `shrink_heap`, e.g. when a
/// client's 20,000 DMA entries are freed on the connection thread) first
/// calls `check_may_shrink_heap`, which opens `/proc/sys/vm/overcommit_memory`
/// (glibc `sysdeps/unix/sysv/linux/malloc-sysdep.h`; the answer is cached in
/// a static afterwards, but the first time comes after the filter): `openat`,
/// which the filter must not allow (it cannot check the path), so the
/// backend died by SIGSYS. With `M_ARENA_MAX` = 1 every thread allocates from
/// the main arena, which grows and trims with `brk` (allowed) and returns
/// large blocks with `munmap`; `shrink_heap` is never reached. The backend has
/// two threads that serialise on the device lock anyway, so one arena costs
/// no parallelism. musl's allocator opens nothing; this is a no-op there.
pub fn prepare_allocator() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only changes allocator parameters; no memory passed.
        if unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) } != 1 {
            log::warn!("mallopt(M_ARENA_MAX, 1) failed: heap trimming may need openat");
        }
    }
}

/// Installs the filter on every thread of the process (TSYNC) and sets
/// `PR_SET_NO_NEW_PRIVS`. Irreversible. Call it after all setup (device open,
/// listener, privilege drop) and, unless `allow_threads`, before spawning threads
/// that are meant to live on (threads that already exist get the filter too).
pub fn apply_seccomp(profile: &SeccompProfile) -> Result<()> {
    let filters = seccomp_filters(profile)?;
    if profile.action == SeccompAction::Trap {
        install_sigsys_reporter()?;
    }
    for f in &filters {
        seccompiler::apply_filter_all_threads(f)
            .map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    }
    log::info!(
        "seccomp filter installed: {} syscalls allowed{}, violations {:?}",
        allowed_syscalls().len() + profile.extra_syscalls.len(),
        if profile.allow_threads {
            " (+ thread creation)"
        } else {
            ""
        },
        profile.action
    );
    Ok(())
}

/// SIGSYS handler of Trap mode: report, then die by SIGSYS.
extern "C" fn sigsys_handler(
    _sig: libc::c_int,
    info: *mut libc::siginfo_t,
    _ctx: *mut libc::c_void,
) {
    // Layout of siginfo_t for SIGSYS on 64-bit Linux: si_signo, si_errno, si_code
    // (3 x i32) + padding, then `_sigsys { void *_call_addr; int _syscall;
    // unsigned _arch; }` at offset 16.
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo_t (128 bytes) for SA_SIGINFO;
        // offset 24 is within it and 4-byte aligned.
        unsafe { info.cast::<u8>().add(24).cast::<i32>().read() }
    };
    let mut buf = [0u8; 96];
    let prefix = b"vfio-sidecar: seccomp: forbidden syscall ";
    let mut n = 0;
    for &b in prefix {
        buf[n] = b;
        n += 1;
    }
    let mut digits = [0u8; 12];
    let mut d = 0;
    let mut v = i64::from(nr).unsigned_abs();
    if nr < 0 {
        buf[n] = b'-';
        n += 1;
    }
    loop {
        digits[d] = b'0' + (v % 10) as u8;
        d += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while d > 0 {
        d -= 1;
        buf[n] = digits[d];
        n += 1;
    }
    for &b in b" (see docs/threat-model.md)\n" {
        buf[n] = b;
        n += 1;
    }
    // SAFETY: write(2) and raise(3) are async-signal-safe; `buf` is valid for `n`
    // bytes. SA_RESETHAND restored the default action and SA_NODEFER lets the
    // re-raised SIGSYS terminate the process at once.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), n);
        libc::raise(libc::SIGSYS);
    }
}

fn install_sigsys_reporter() -> Result<()> {
    // SAFETY: sigaction is POD; zeroed then filled.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = sigsys_handler as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND | libc::SA_NODEFER;
    // SAFETY: `sa` is a valid sigaction whose handler only uses async-signal-safe calls.
    if unsafe { libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) } != 0 {
        return Err(super::last_os("sigaction(SIGSYS)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::sandbox::testutil::{run_child, temp_dir, CHILD_ENV};
    use std::io::{IoSlice, IoSliceMut, Read, Write};
    use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::os::unix::net::UnixStream;
    use std::os::unix::process::ExitStatusExt;

    const CHILD: &str = "sandbox::seccomp::tests::seccomp_child";
    const CHILD_SERVE: &str = "sandbox::seccomp::tests::serve_child";

    #[test]
    fn tables_are_consistent() {
        let list = allowed_syscalls();
        let mut nrs: Vec<i64> = list.iter().map(|&(_, n)| n).collect();
        nrs.sort_unstable();
        let before = nrs.len();
        nrs.dedup();
        assert_eq!(before, nrs.len(), "duplicate syscall numbers");
        for must in [
            "recvmsg",
            "sendmsg",
            "mmap",
            "ioctl",
            "pread64",
            "exit_group",
            "accept4",
        ] {
            assert!(list.iter().any(|&(n, _)| n == must), "{must} missing");
        }
        for never in [
            "socket", "connect", "execve", "openat", "ptrace", "fork", "clone",
        ] {
            assert!(!list.iter().any(|&(n, _)| n == never), "{never} allowed");
        }
        for (name, _) in syscall_conditions() {
            assert!(
                *name == "openat"
                    || list
                        .iter()
                        .chain(thread_syscalls())
                        .any(|&(n, _)| n == *name),
                "condition for unlisted {name}"
            );
        }
        // Both profiles compile to programs within the kernel's 4096-instruction limit.
        for threads in [false, true] {
            let f = seccomp_filters(&SeccompProfile {
                allow_threads: threads,
                ..Default::default()
            })
            .unwrap();
            assert_eq!(f.len(), if threads { 2 } else { 1 });
            assert!(f.iter().all(|p| !p.is_empty() && p.len() < 4096));
        }
    }

    /// The aarch64 list is correct by construction: aarch64 (asm-generic
    /// syscall table) lacks the x86_64 legacy calls of `ARCH`, and glibc/std
    /// there use their generic forms, which must all be in `COMMON`. Measured
    /// on x86_64 (strace -f of the serve loop under 20,000-map clients,
    /// saturated eventfds, resample races: docs/threat-model.md §10), the
    /// loop used `epoll_wait`, `poll`, `readlink` and `unlink` of these.
    #[test]
    fn every_x86_64_legacy_syscall_has_its_generic_form_listed() {
        let generic = [
            ("epoll_wait", "epoll_pwait"),
            ("poll", "ppoll"),
            ("eventfd", "eventfd2"),
            ("signalfd", "signalfd4"),
            ("accept", "accept4"),
            ("dup2", "dup3"),
            ("unlink", "unlinkat"),
            ("time", "clock_gettime"),
            ("readlink", "readlinkat"),
        ];
        let common = |n: &str| COMMON.iter().any(|&(c, _)| c == n);
        for &(legacy, _) in ARCH {
            if legacy == "accept" && !cfg!(target_arch = "x86_64") {
                continue; // aarch64 has accept (202) too.
            }
            let g = generic
                .iter()
                .find(|&&(l, _)| l == legacy)
                .unwrap_or_else(|| panic!("{legacy}: add its aarch64 (generic) form"));
            assert!(common(g.1), "{legacy} allowed but not {} (aarch64)", g.1);
        }
        // What issue 13 added, on both architectures.
        for n in [
            "preadv2",
            "timer_create",
            "timer_settime",
            "timer_delete",
            "fstatfs",
        ] {
            assert!(common(n), "{n} missing");
        }
    }

    fn sendfd(sock: &UnixStream, fd: RawFd) {
        let data = [7u8];
        let iov = [IoSlice::new(&data)];
        let mut cbuf = [0u64; 4];
        // SAFETY: msghdr is POD; fields filled below point into live buffers.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as _;
        // SAFETY: msg_control points to a buffer of at least CMSG_SPACE(4) bytes.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as _;
            libc::CMSG_DATA(c).cast::<i32>().write_unaligned(fd);
        }
        // SAFETY: `msg` is fully initialised and its buffers live across the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
        assert_eq!(n, 1);
    }

    fn recvfd(sock: &UnixStream) -> OwnedFd {
        let mut data = [0u8; 1];
        let mut iov = [IoSliceMut::new(&mut data)];
        let mut cbuf = [0u64; 4];
        // SAFETY: msghdr is POD; fields filled below point into live buffers.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr().cast();
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
        // SAFETY: `msg` points into live buffers of the stated sizes.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        assert_eq!(n, 1);
        // SAFETY: the kernel filled one SCM_RIGHTS cmsg (checked non-null).
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            assert!(!c.is_null());
            assert_eq!((*c).cmsg_type, libc::SCM_RIGHTS);
            OwnedFd::from_raw_fd(libc::CMSG_DATA(c).cast::<i32>().read_unaligned())
        }
    }

    fn memfd(len: i64) -> OwnedFd {
        // SAFETY: valid NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"vs-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: fresh fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: valid fd.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), len) }, 0);
        fd
    }

    /// The serve loop's steady state, performed under the filter.
    fn steady_state(pre: Pre) {
        // Logging to stderr.
        eprintln!("child: filter installed, running steady state");
        log::info!("log macro under seccomp");

        // Accept a connection that was made before the filter; peer credentials.
        let (conn, _) = pre.listener.accept().unwrap();
        conn.set_nonblocking(false).unwrap(); // FIONBIO
        let cred =
            crate::sandbox::check_peer(&conn, &crate::sandbox::PeerPolicy::default()).unwrap();
        assert_eq!(cred.pid, std::process::id() as i32);

        // Received memfd (DMA map): SCM_RIGHTS + MSG_CMSG_CLOEXEC, fstat, mmap shared.
        let mfd = memfd(8192);
        sendfd(&pre.pair.0, mfd.as_raw_fd());
        let got = recvfd(&pre.pair.1);
        // SAFETY: stat is POD; fstat fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and out pointer.
        assert_eq!(unsafe { libc::fstat(got.as_raw_fd(), &mut st) }, 0);
        assert_eq!(st.st_size, 8192);
        // SAFETY: mapping a fresh region of a valid fd; unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                got.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        // SAFETY: `p` maps 8192 writable bytes.
        unsafe { p.cast::<u8>().add(100).write_volatile(0xa5) };
        // Region access by pread/pwrite (VFIO region stand-in) sees the write.
        let mut b = [0u8; 1];
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::pread(mfd.as_raw_fd(), b.as_mut_ptr().cast(), 1, 100) };
        assert_eq!(n, 1);
        assert_eq!(b[0], 0xa5);
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::pwrite(mfd.as_raw_fd(), [0x5au8].as_ptr().cast(), 1, 101) };
        assert_eq!(n, 1);
        // SAFETY: `p` maps 8192 readable bytes.
        assert_eq!(unsafe { p.cast::<u8>().add(101).read_volatile() }, 0x5a);
        // SAFETY: unmapping what we mapped.
        assert_eq!(unsafe { libc::munmap(p, 8192) }, 0);

        // Eventfd created before and after the filter; epoll on it.
        let efd2 = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        pre.efd.write(3).unwrap();
        efd2.write(1).unwrap();
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 42,
        };
        // SAFETY: valid epoll fd, eventfd and event pointer.
        let rc = unsafe {
            libc::epoll_ctl(
                pre.epfd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                pre.efd.as_raw_fd(),
                &mut ev,
            )
        };
        assert_eq!(rc, 0);
        let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: `out` holds 4 events.
        let n = unsafe { libc::epoll_wait(pre.epfd.as_raw_fd(), out.as_mut_ptr(), 4, 1000) };
        assert_eq!(n, 1);
        let tok = out[0].u64;
        assert_eq!(tok, 42);
        assert_eq!(pre.efd.read().unwrap(), 3);
        assert_eq!(efd2.read().unwrap(), 1);

        // signalfd for SIGTERM/SIGINT.
        // SAFETY: sigset_t is POD and initialised by sigemptyset.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            assert_eq!(
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()),
                0
            );
            let sfd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
            assert!(sfd >= 0);
            libc::close(sfd);
        }

        // Messages over the accepted connection, fd dup (try_clone) and heap growth.
        let mut c2 = pre.client;
        c2.write_all(b"ping").unwrap();
        let mut conn_r = conn.try_clone().unwrap();
        let mut buf = [0u8; 4];
        conn_r.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        let big: Vec<u8> = vec![1u8; 4 << 20];
        assert_eq!(big.iter().map(|&x| u64::from(x)).sum::<u64>(), 4 << 20);
        let mut m = std::collections::HashMap::new();
        m.insert(1, 2);
        drop(conn);

        // Socket removal at exit.
        std::fs::remove_file(&pre.sock_path).unwrap();
    }

    struct Pre {
        listener: std::os::unix::net::UnixListener,
        client: UnixStream,
        pair: (UnixStream, UnixStream),
        efd: vmm_sys_util::eventfd::EventFd,
        epfd: OwnedFd,
        sock_path: std::path::PathBuf,
    }

    fn setup() -> Pre {
        let dir = temp_dir("seccomp");
        let sock_path = dir.join("s.sock");
        let listener =
            crate::sandbox::create_listener(&sock_path, &crate::sandbox::SocketOpts::default())
                .unwrap();
        let client = UnixStream::connect(&sock_path).unwrap();
        // SAFETY: plain syscall.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(ep >= 0);
        Pre {
            listener,
            client,
            pair: UnixStream::pair().unwrap(),
            efd: vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            // SAFETY: fresh fd.
            epfd: unsafe { OwnedFd::from_raw_fd(ep) },
            sock_path,
        }
    }

    /// Child side of the seccomp tests: installs the filter, then does what the
    /// mode says. Exits 0 on success; a forbidden syscall kills it by SIGSYS.
    #[test]
    #[ignore = "child-process helper for the seccomp tests"]
    fn seccomp_child() {
        let Ok(mode) = std::env::var(CHILD_ENV) else {
            return;
        };
        let mut profile = SeccompProfile::default();
        if mode.starts_with("trap-") {
            profile.action = SeccompAction::Trap;
        }
        if mode.starts_with("log-") {
            profile.action = SeccompAction::Log;
        }
        if mode.contains("threads") {
            profile.allow_threads = true;
        }
        if mode.contains("ro-open") {
            profile.allow_readonly_open = true;
        }
        let pre = if mode.contains("steady") {
            Some(setup())
        } else {
            None
        };
        apply_seccomp(&profile).unwrap();
        println!("FILTER-ON");
        std::io::stdout().flush().unwrap();
        if let Some(pre) = pre {
            steady_state(pre);
        }
        if mode.contains("threads") {
            let h = std::thread::Builder::new()
                .name("worker".into())
                .spawn(|| 6 * 7)
                .unwrap();
            assert_eq!(h.join().unwrap(), 42);
        }
        if mode.ends_with("socket") {
            // SAFETY: plain syscall; a forbidden one.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            println!("SOCKET-RETURNED {fd}");
        }
        if mode.ends_with("execve") {
            let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: NUL-terminated argv/envp arrays of valid C strings.
            unsafe { libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            println!("EXECVE-RETURNED");
        }
        if mode.ends_with("open") {
            let r = std::fs::File::open("/etc/hostname");
            println!("OPEN-RETURNED {}", r.is_ok());
        }
        if mode.contains("ro-open") {
            // Read-only opens work (what the VFIO device's /proc/interrupts read does).
            let text = std::fs::read_to_string("/proc/self/status").unwrap();
            assert!(text.contains("Seccomp:\t2"), "{text}");
            println!("RO-OPEN-OK");
            if mode.ends_with("write") {
                let dir = std::env::var("VS_TEST_DIR").unwrap();
                let r = std::fs::File::create(format!("{dir}/created"));
                println!("CREATE-RETURNED {}", r.is_ok());
            }
        }
        if mode.ends_with("ioctl") {
            // TIOCSTI is outside the ioctl list.
            // SAFETY: the call is rejected by the filter before the kernel reads args.
            unsafe { libc::ioctl(0, libc::TIOCSTI, c"x".as_ptr()) };
            println!("IOCTL-RETURNED");
        }
        if mode.ends_with("exec-mmap") {
            // SAFETY: anonymous mapping; forbidden by the PROT_EXEC rule.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            println!("MMAP-RETURNED {}", p != libc::MAP_FAILED);
        }
        if mode.ends_with("fork") {
            // A non-thread clone (fork) is forbidden even with allow_threads.
            // SAFETY: the child branch exits at once without touching state.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: _exit in the forked child.
                unsafe { libc::_exit(0) };
            }
            println!("FORK-RETURNED {pid}");
        }
        println!("CHILD-DONE");
        std::process::exit(0);
    }

    fn run(mode: &str) -> (std::process::ExitStatus, String, String) {
        let out = run_child(CHILD, mode, &[]);
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn forbidden_syscalls_kill_the_process() {
        for mode in [
            "kill-socket",
            "kill-execve",
            "kill-open",
            "kill-ioctl",
            "kill-exec-mmap",
            "kill-threads-fork",
        ] {
            let (status, stdout, stderr) = run(mode);
            assert!(
                stdout.contains("FILTER-ON"),
                "{mode}: filter not installed: {stdout}\n{stderr}"
            );
            assert_eq!(
                status.signal(),
                Some(libc::SIGSYS),
                "{mode}: expected death by SIGSYS, got {status:?}\n{stdout}\n{stderr}"
            );
            assert!(!stdout.contains("RETURNED"), "{mode}: {stdout}");
        }
    }

    #[test]
    fn steady_state_survives_the_filter() {
        for mode in ["kill-steady", "kill-steady-threads"] {
            let (status, stdout, stderr) = run(mode);
            assert!(
                status.success() && stdout.contains("CHILD-DONE"),
                "{mode}: {status:?} (signal {:?})\n{stdout}\n{stderr}",
                status.signal()
            );
        }
    }

    /// Child side of `real_server_code_under_seccomp`: the backend's own server
    /// glue (model device, DMA table, EOI engine, protocol connection) driven by a
    /// minimal epoll loop after the filter is on.
    #[test]
    #[ignore = "child-process helper for real_server_code_under_seccomp"]
    fn serve_child() {
        use vfio_sidecar_protocol::{ConnStatus, Limits, ServerConnection};
        use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
        if std::env::var(CHILD_ENV).as_deref() != Ok("serve") {
            return;
        }
        let sock = std::path::PathBuf::from(std::env::var("VS_TEST_SOCK").unwrap());
        let args =
            crate::cli::ServeArgs::new(sock.clone(), "model:scratch,irqs=1".parse().unwrap());
        let mut backend = crate::server::build_backend(&args).unwrap();
        let listener =
            crate::sandbox::create_listener(&sock, &crate::sandbox::SocketOpts::default()).unwrap();
        let epoll = Epoll::new().unwrap();
        // Trap: dies by SIGSYS like Kill, but names the missing syscall on stderr.
        apply_seccomp(&SeccompProfile {
            action: SeccompAction::Trap,
            ..Default::default()
        })
        .unwrap();
        println!("FILTER-ON");
        std::io::stdout().flush().unwrap();

        let (stream, _) = listener.accept().unwrap();
        crate::sandbox::check_peer(&stream, &crate::sandbox::PeerPolicy::default()).unwrap();
        let mut conn = ServerConnection::new(stream, Limits::default()).unwrap();
        epoll
            .ctl(
                ControlOperation::Add,
                conn.as_raw_fd(),
                EpollEvent::new(EventSet::IN, 1),
            )
            .unwrap();
        let mut events = vec![EpollEvent::default(); 8];
        loop {
            let mut watched = Vec::new();
            for (fd, tok) in backend.poll_fds() {
                if epoll
                    .ctl(
                        ControlOperation::Add,
                        fd,
                        EpollEvent::new(EventSet::IN, 100 + tok),
                    )
                    .is_ok()
                {
                    watched.push(fd);
                }
            }
            let n = epoll.wait(-1, &mut events).unwrap();
            for fd in watched {
                let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
            let mut closed = false;
            for ev in events.iter().take(n) {
                if ev.data() == 1 {
                    closed |= !matches!(conn.handle_readable(&mut backend), Ok(ConnStatus::Open));
                } else {
                    backend.on_poll_fd(ev.data() - 100);
                }
            }
            while backend.run_pending() {}
            if closed {
                break;
            }
        }
        backend.client_gone();
        drop(conn);
        std::fs::remove_file(&sock).unwrap();
        println!("SERVE-DONE");
        std::process::exit(0);
    }

    #[test]
    fn real_server_code_under_seccomp() {
        use vfio_sidecar_protocol::client::IrqData;
        use vfio_sidecar_protocol::message::IrqAction;
        use vfio_sidecar_protocol::{Client, ClientOptions, DmaProt};
        let dir = temp_dir("serve");
        let sock = dir.join("s.sock");
        let sock_s = sock.to_str().unwrap().to_string();
        let h = std::thread::spawn(move || {
            run_child(CHILD_SERVE, "serve", &[("VS_TEST_SOCK", &sock_s)])
        });
        // Wait for the child's socket (bounded number of attempts, no timing asserted).
        let mut client = None;
        for _ in 0..500 {
            if let Ok(c) = Client::connect(&sock, ClientOptions::default()) {
                client = Some(c);
                break;
            }
            if h.is_finished() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let Some(mut c) = client else {
            let out = h.join().unwrap();
            panic!(
                "no server: {:?}\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ram = memfd(0x4000);
        let efd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut session = || -> std::result::Result<(), vfio_sidecar_protocol::ClientError> {
            let info = c.device_info()?;
            assert!(info.num_regions >= 1);
            let id = c.region_read(0, 0, 4)?;
            assert_eq!(u32::from_le_bytes(id[..4].try_into().unwrap()), 0x5c2a_7c11);
            // Guest RAM as a memfd, DMA-mapped; the scratch device copies through it.
            // SAFETY: valid fd and buffer.
            let n =
                unsafe { libc::pwrite(ram.as_raw_fd(), b"sandboxed!".as_ptr().cast(), 10, 0x100) };
            assert_eq!(n, 10);
            let rw = DmaProt {
                read: true,
                write: true,
                exec: false,
            };
            c.dma_map(0x10_0000, 0x4000, ram.as_fd(), 0, rw)?;
            // SAFETY: `efd` outlives the call.
            let efd_b = unsafe { std::os::fd::BorrowedFd::borrow_raw(efd.as_raw_fd()) };
            c.set_irqs(
                0,
                IrqAction::Trigger,
                IrqData::Eventfds(&[Some(efd_b)]),
                0,
                1,
            )?;
            for (off, v) in [
                (0x20u64, 0x10_0100u32),
                (0x24, 0),
                (0x28, 0x10_2000),
                (0x2c, 0),
                (0x30, 10),
                (0x34, 1),
            ] {
                c.region_write(0, off, &v.to_le_bytes())?;
            }
            // RAISE line 0, then clear it (clear-register EOI path).
            c.region_write(0, 0x08, &1u32.to_le_bytes())?;
            c.region_write(0, 0x0c, &1u32.to_le_bytes())?;
            c.dma_unmap(0x10_0000, 0x4000)?;
            Ok(())
        };
        let res = session();
        drop(c);
        let out = h.join().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            res.is_ok(),
            "client: {res:?}; server {:?}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let mut buf = [0u8; 10];
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::pread(ram.as_raw_fd(), buf.as_mut_ptr().cast(), 10, 0x2000) };
        assert_eq!(n, 10);
        assert_eq!(&buf, b"sandboxed!");
        assert!(efd.read().unwrap() >= 1, "IRQ eventfd not signalled");
        assert!(
            out.status.success() && stdout.contains("SERVE-DONE"),
            "{:?} (signal {:?})\n{stdout}\n{}",
            out.status,
            out.status.signal(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!sock.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn readonly_open_option() {
        let (status, stdout, stderr) = run("kill-ro-open");
        assert!(
            status.success() && stdout.contains("RO-OPEN-OK"),
            "{status:?}\n{stdout}\n{stderr}"
        );
        let dir = temp_dir("ro");
        let out = run_child(
            CHILD,
            "kill-ro-open-write",
            &[("VS_TEST_DIR", dir.to_str().unwrap())],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("RO-OPEN-OK"), "{stdout}");
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGSYS),
            "{:?} {stdout}",
            out.status
        );
        assert!(!dir.join("created").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn trap_mode_reports_the_syscall() {
        let (status, stdout, stderr) = run("trap-socket");
        assert_eq!(
            status.signal(),
            Some(libc::SIGSYS),
            "{status:?}\n{stdout}\n{stderr}"
        );
        let want = format!("forbidden syscall {}", libc::SYS_socket);
        assert!(stderr.contains(&want), "stderr lacks {want:?}: {stderr}");
    }

    #[test]
    fn log_mode_allows_and_continues() {
        let (status, stdout, stderr) = run("log-socket");
        assert!(status.success(), "{status:?}\n{stdout}\n{stderr}");
        assert!(stdout.contains("SOCKET-RETURNED"), "{stdout}");
        assert!(stdout.contains("CHILD-DONE"), "{stdout}");
    }
}
