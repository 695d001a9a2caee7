//! Helpers for cross-process tests: start the `vfio-sidecar` binary on a socket
//! in a temporary directory (killed on drop), guest memory in a memfd, eventfds,
//! counting a process's open fds, bounded waits, running a command that must
//! succeed; [`pl330`]: the PL330 model's registers over any client;
//! [`dt_schema`]: dt-schema validation against the kernel's binding schemas.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod dt_schema;
pub mod pl330;

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vfio_sidecar_protocol::client::{Client, ClientOptions, DmaProt, IrqData};
use vfio_sidecar_protocol::error::ClientError;
use vfio_sidecar_protocol::message::IrqAction;

/// DMA_MAP protection: read + write.
pub const RW: DmaProt = DmaProt {
    read: true,
    write: true,
    exec: false,
};

/// DMA_MAP protection: read + write + exec (the extension's EXEC bit).
pub const RWX: DmaProt = DmaProt {
    read: true,
    write: true,
    exec: true,
};

/// Path of a workspace binary, next to the test executable's `deps/` dir.
///
/// `cargo test --workspace` builds every bin, but `cargo test -p
/// vfio-sidecar-tests` does not; so when running under cargo (`CARGO` is set) the
/// binary is brought up to date once per process with `cargo build -p PACKAGE
/// --bin NAME` (a no-op when it is current). Without cargo, the existing binary
/// is used.
pub fn workspace_bin(package: &str, name: &str) -> PathBuf {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static BUILT: Mutex<Option<HashSet<String>>> = Mutex::new(None);

    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .expect("target dir")
        .to_path_buf();
    let bin = dir.join(name);
    if let Ok(cargo) = std::env::var("CARGO") {
        let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
        let set = built.get_or_insert_with(HashSet::new);
        if set.insert(format!("{package}/{name}")) {
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-q", "-p", package, "--bin", name]);
            if dir.ends_with("release") {
                cmd.arg("--release");
            }
            let st = cmd.status().expect("run cargo build");
            assert!(st.success(), "cargo build -p {package} --bin {name} failed");
        }
    }
    assert!(
        bin.exists(),
        "{} not found: build it with `cargo build -p {package}`",
        bin.display()
    );
    bin
}

/// A unique temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/vfio-sidecar-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("vfio-sidecar-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `vfio-sidecar serve` (SIGKILLed on drop).
#[derive(Debug)]
pub struct Sidecar {
    child: Option<Child>,
    /// Socket path.
    pub socket: PathBuf,
    /// Where its stderr goes.
    pub log: PathBuf,
    dir: TempDir,
}

impl Sidecar {
    /// Starts `vfio-sidecar serve --socket DIR/s.sock --device DEVICE EXTRA...`
    /// and waits until the socket accepts connections.
    pub fn start(device: &str, extra: &[&str]) -> Sidecar {
        let dir = TempDir::new("srv");
        let socket = dir.0.join("s.sock");
        let log = dir.0.join("stderr.log");
        let bin = workspace_bin("vfio-sidecar", "vfio-sidecar");
        let child = Command::new(bin)
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--device")
            .arg(device)
            .args(extra)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn vfio-sidecar");
        let mut s = Sidecar {
            child: Some(child),
            socket,
            log,
            dir,
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("vfio-sidecar exited early ({st}): {}", self.log_text());
                }
            }
            if self.log_text().contains("listening on") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "vfio-sidecar not ready: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Temporary directory of this instance.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// Connects a client (`extension`: propose the vfio-sidecar extension).
    pub fn connect(&self, extension: bool) -> Client {
        let opts = ClientOptions {
            propose_extension: extension,
            ..ClientOptions::default()
        };
        Client::connect(&self.socket, opts).expect("connect to vfio-sidecar")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().expect("wait")
    }

    /// Polls `cond` on the log text until true (or panics after 10 s).
    pub fn wait_log(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log_text().contains(what) {
            assert!(
                Instant::now() < deadline,
                "log never showed {what:?}: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Number of open fds of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Number of memory mappings of a process whose path contains `needle`.
pub fn maps_matching(pid: u32, needle: &str) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|m| m.lines().filter(|l| l.contains(needle)).count())
        .unwrap_or(0)
}

/// Guest memory: a memfd of `size` bytes.
#[derive(Debug)]
pub struct GuestMem {
    file: File,
}

impl GuestMem {
    /// A memfd named `name` of `size` bytes.
    pub fn new(name: &str, size: u64) -> Self {
        let fd = vfio_sidecar_protocol::testing::memfd(name, size).expect("memfd");
        GuestMem { file: fd.into() }
    }

    /// The fd, for DMA_MAP.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Writes bytes at an offset.
    pub fn write(&self, off: u64, data: &[u8]) {
        self.file
            .write_all_at(data, off)
            .expect("write guest memory");
    }

    /// Reads bytes at an offset.
    pub fn read(&self, off: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.file
            .read_exact_at(&mut v, off)
            .expect("read guest memory");
        v
    }
}

/// A non-blocking eventfd: (fd to pass, reader).
pub fn eventfd() -> (OwnedFd, File) {
    let owned = vfio_sidecar_protocol::testing::eventfd(true).expect("eventfd");
    let reader = File::from(owned.try_clone().expect("dup"));
    (owned, reader)
}

/// Waits up to `ms` for a non-blocking eventfd; the counter it read (0 = timeout).
pub fn wait_event(fd: &OwnedFd, ms: u64) -> u64 {
    match vfio_sidecar_protocol::transport::wait_fd(
        fd.as_fd(),
        libc::POLLIN,
        Some(Duration::from_millis(ms)),
    ) {
        Ok(true) => vfio_sidecar_protocol::testing::eventfd_read(fd.as_raw_fd()),
        _ => 0,
    }
}

/// Reads (and resets) an eventfd counter; 0 if it was not signalled.
pub fn drain(f: &File) -> u64 {
    let mut b = [0u8; 8];
    let mut f = f;
    match f.read(&mut b) {
        Ok(8) => u64::from_ne_bytes(b),
        _ => 0,
    }
}

/// The usual bound of a [`wait_until`].
pub const WAIT: Duration = Duration::from_secs(10);

/// Polls `cond` every 5 ms until it holds; panics naming `what` after
/// `timeout`. (A watchdog, never a timing assertion.)
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SET_IRQS: `fd` as the `action` (trigger or unmask/resample) eventfd of
/// vector 0 of IRQ `index`.
pub fn set_eventfd(
    c: &mut Client,
    index: u32,
    action: IrqAction,
    fd: BorrowedFd<'_>,
) -> Result<(), ClientError> {
    c.set_irqs(index, action, IrqData::Eventfds(&[Some(fd)]), 0, 1)
}

/// The scratch model's DMA engine: copies `len` bytes from IOVA `src` to IOVA
/// `dst` (SRC, DST and LEN, then GO).
pub fn scratch_dma(c: &mut Client, src: u64, dst: u64, len: u32) {
    use pl330::Regs;
    use vfio_sidecar::model::scratch::regs::{DST_HI, DST_LO, GO, LEN, SRC_HI, SRC_LO};
    for (off, v) in [
        (SRC_LO, src as u32),
        (SRC_HI, (src >> 32) as u32),
        (DST_LO, dst as u32),
        (DST_HI, (dst >> 32) as u32),
        (LEN, len),
        (GO, 1),
    ] {
        c.write32(off, v);
    }
}

/// Runs `cmd` to completion; panics (showing its stdout and stderr) unless
/// it succeeded. Returns its output.
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({})\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    let rest = s
        .rfind(')')
        .and_then(|i| s.get(i + 2..))
        .expect("/proc/PID/stat has a comm field");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> u64 {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .expect("utime/stime in /proc/PID/stat")
    };
    tick(11) + tick(12)
}

/// Sets the soft RLIMIT_NOFILE of `pid` (hard limit kept).
pub fn set_nofile(pid: u32, soft: u64) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit(2) reading the current limits into `old`.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: prlimit(2) on our own child with a valid new limit.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

/// Whether `/dev/kvm` can be opened. Without it the KVM tests say SKIPPED and
/// return; under `CI=true` (CI machines have /dev/kvm) that is a failure.
pub fn kvm_usable() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "/dev/kvm is not usable under CI=true: {e}"
            );
            eprintln!("SKIPPED: /dev/kvm is not usable here ({e}); this test needs KVM");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_sidecar_protocol::testing;

    #[test]
    fn wait_event_reads_and_resets_a_signalled_eventfd() {
        let fd = testing::eventfd(true).unwrap();
        assert_eq!(wait_event(&fd, 10), 0, "nothing signalled");
        testing::eventfd_signal(fd.as_raw_fd()).unwrap();
        testing::eventfd_signal(fd.as_raw_fd()).unwrap();
        assert_eq!(wait_event(&fd, 1000), 2);
        assert_eq!(wait_event(&fd, 10), 0, "the read reset the counter");
    }
}
