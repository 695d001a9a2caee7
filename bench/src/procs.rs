//! Child processes (the backend and the raw echo peer, both re-executions of
//! this binary unless `--backend-bin` names a `vfio-sidecar` binary), CPU
//! affinity, temporary directories.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::BenchError;

/// Hidden first argument: run the backend (`vfio-sidecar` command line follows).
pub const BACKEND_MODE: &str = "__backend";
/// Hidden first argument: run the raw echo peer.
pub const ECHO_MODE: &str = "__echo";

/// CPUs this process may run on, ascending.
pub fn allowed_cpus() -> Result<Vec<usize>, BenchError> {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid cpu_set_t of the size passed.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Err(BenchError::Io(
            "sched_getaffinity".into(),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: CPU_ISSET only reads the set.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Pins one thread (`tid` 0 = the calling thread) to `cpu`.
pub fn pin_tid(tid: i32, cpu: usize) -> Result<(), BenchError> {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit of the set; cpu < CPU_SETSIZE is checked by the caller's
    // choice from allowed_cpus().
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: set is a valid cpu_set_t of the size passed.
    let r = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(BenchError::Io(
            format!("sched_setaffinity(tid {tid}, cpu {cpu})"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Pins the calling thread to `cpu`.
pub fn pin_self(cpu: usize) -> Result<(), BenchError> {
    pin_tid(0, cpu)
}

/// Pins every thread of process `pid` to `cpu` (what `taskset -a -p` does).
pub fn pin_process(pid: u32, cpu: usize) -> Result<(), BenchError> {
    let dir = format!("/proc/{pid}/task");
    let rd = std::fs::read_dir(&dir).map_err(|e| BenchError::Io(dir.clone(), e))?;
    for t in rd {
        let t = t.map_err(|e| BenchError::Io(dir.clone(), e))?;
        if let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
            pin_tid(tid, cpu)?;
        }
    }
    Ok(())
}

/// A unique temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/vfio-sidecar-bench-<pid>-<n>`.
    pub fn new() -> Result<Self, BenchError> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("vfio-sidecar-bench-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).map_err(|e| BenchError::Io(p.display().to_string(), e))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process (killed on drop) with a socket in its own temp dir.
#[derive(Debug)]
pub struct ChildProc {
    child: Child,
    /// Socket path it listens on.
    pub socket: PathBuf,
    /// Its stderr.
    pub log: PathBuf,
    what: String,
    _dir: TempDir,
}

impl ChildProc {
    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for(&mut self, ready: impl Fn(&ChildProc) -> bool) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(BenchError::Child(format!(
                    "{} exited early ({st}): {}",
                    self.what,
                    self.log_text()
                )));
            }
            if ready(self) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::Child(format!(
                    "{} not ready after 20 s: {}",
                    self.what,
                    self.log_text()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(
    mut cmd: Command,
    what: String,
    dir: TempDir,
    socket: PathBuf,
) -> Result<ChildProc, BenchError> {
    let log = dir.0.join("stderr.log");
    let f = File::create(&log).map_err(|e| BenchError::Io(log.display().to_string(), e))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(f)
        .spawn()
        .map_err(|e| BenchError::Io(format!("spawn {what}"), e))?;
    Ok(ChildProc {
        child,
        socket,
        log,
        what,
        _dir: dir,
    })
}

/// Starts the backend serving `device` (extra `vfio-sidecar serve` args in
/// `extra`) and waits until it listens. `bin`: a `vfio-sidecar` binary, or
/// `None` to re-execute this binary in backend mode (same code:
/// `vfio_sidecar::server::run_serve`).
pub fn start_backend(
    bin: Option<&Path>,
    device: &str,
    extra: &[&str],
) -> Result<ChildProc, BenchError> {
    let dir = TempDir::new()?;
    let socket = dir.0.join("backend.sock");
    let mut cmd = match bin {
        Some(b) => Command::new(b),
        None => {
            let me =
                std::env::current_exe().map_err(|e| BenchError::Io("current_exe".into(), e))?;
            let mut c = Command::new(me);
            c.arg(BACKEND_MODE);
            c
        }
    };
    cmd.arg("serve")
        .arg("--socket")
        .arg(&socket)
        .arg("--device")
        .arg(device)
        .args(extra)
        .env("RUST_LOG", "info");
    let what = format!("backend {device} {}", extra.join(" "));
    let mut p = spawn(cmd, what, dir, socket)?;
    p.wait_for(|p| p.log_text().contains("listening on"))?;
    Ok(p)
}

/// The backend mode: `vfio-sidecar serve`, exactly as the `vfio-sidecar` binary runs it.
pub fn backend_main(args: Vec<String>) -> i32 {
    use clap::Parser;
    use vfio_sidecar::cli::{init_logging, Cli, Command as C};
    let cli = Cli::parse_from(std::iter::once("vfio-sidecar".to_string()).chain(args));
    init_logging(cli.verbose);
    let r = match cli.command {
        C::Serve(a) => vfio_sidecar::server::run_serve(a).map_err(|e| e.to_string()),
        _ => Err("the benchmark's backend mode runs `serve` only".to_string()),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("vfio-sidecar: {e}");
            1
        }
    }
}

/// System-call pattern of an echo pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Blocking `write` + `read` (the baseline).
    Plain,
    /// vfio-sidecar's calls ([`crate::pattern::calls_serve`]): `send` +
    /// blocking `recvmsg` / blocking `recvmsg` + `send`.
    Sidecar,
    /// `sendmsg` + blocking `recvmsg` / an epoll server
    /// ([`crate::pattern::lean_serve`]): vfio-sidecar's former calls.
    Lean,
}

/// A raw echo peer: reads exactly `req` bytes, answers `reply` bytes, forever.
#[derive(Debug)]
pub struct EchoPeer {
    proc_: ChildProc,
    pattern: Pattern,
    stream: UnixStream,
    req: Vec<u8>,
    reply: Vec<u8>,
}

impl EchoPeer {
    /// Starts an echo process for requests of `req` and replies of `reply` bytes.
    pub fn start(req: usize, reply: usize) -> Result<EchoPeer, BenchError> {
        Self::start_with(req, reply, Pattern::Plain)
    }

    /// The same with another system-call pattern ([`crate::pattern`])
    /// instead of plain blocking `write`/`read`.
    pub fn start_with(req: usize, reply: usize, pattern: Pattern) -> Result<EchoPeer, BenchError> {
        let dir = TempDir::new()?;
        let socket = dir.0.join("echo.sock");
        let me = std::env::current_exe().map_err(|e| BenchError::Io("current_exe".into(), e))?;
        let mut cmd = Command::new(me);
        cmd.arg(ECHO_MODE)
            .arg(&socket)
            .arg(req.to_string())
            .arg(reply.to_string());
        match pattern {
            Pattern::Plain => {}
            Pattern::Sidecar => {
                cmd.arg("pattern");
            }
            Pattern::Lean => {
                cmd.arg("lean");
            }
        }
        let mut p = spawn(cmd, format!("echo peer {req}/{reply}"), dir, socket)?;
        p.wait_for(|p| p.log_text().contains("echo ready"))?;
        let stream = UnixStream::connect(&p.socket)
            .map_err(|e| BenchError::Io(format!("connect {}", p.socket.display()), e))?;
        let mut req_buf = vec![0u8; req];
        // A vfio-user-looking header: size field = message length.
        if let Some(s) = req_buf.get_mut(4..8) {
            s.copy_from_slice(&(req as u32).to_le_bytes());
        }
        Ok(EchoPeer {
            proc_: p,
            pattern,
            stream,
            req: req_buf,
            reply: vec![0u8; reply],
        })
    }

    /// The process, for pinning.
    pub fn process(&self) -> &ChildProc {
        &self.proc_
    }

    /// One round trip; returns its duration in ns.
    pub fn round_trip(&mut self) -> Result<u64, BenchError> {
        let t = Instant::now();
        if self.pattern != Pattern::Plain {
            use std::os::fd::AsRawFd;
            let fd = self.stream.as_raw_fd();
            let ok = if self.pattern == Pattern::Sidecar {
                crate::pattern::calls_client_round_trip(fd, &self.req, &mut self.reply)
            } else {
                crate::pattern::lean_client_round_trip(fd, &self.req, &mut self.reply)
            };
            if !ok {
                return Err(BenchError::Io(
                    "pattern round trip".into(),
                    std::io::Error::last_os_error(),
                ));
            }
            return Ok(t.elapsed().as_nanos() as u64);
        }
        self.stream
            .write_all(&self.req)
            .map_err(|e| BenchError::Io("echo write".into(), e))?;
        self.stream
            .read_exact(&mut self.reply)
            .map_err(|e| BenchError::Io("echo read".into(), e))?;
        Ok(t.elapsed().as_nanos() as u64)
    }
}

/// The echo mode: `__echo SOCKET REQ REPLY`.
pub fn echo_main(args: Vec<String>) -> i32 {
    let (Some(path), Some(req), Some(reply)) = (
        args.first(),
        args.get(1).and_then(|s| s.parse::<usize>().ok()),
        args.get(2).and_then(|s| s.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: {ECHO_MODE} SOCKET REQ_BYTES REPLY_BYTES");
        return 2;
    };
    let l = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("echo: bind {path}: {e}");
            return 1;
        }
    };
    eprintln!("echo ready");
    let (mut s, _) = match l.accept() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("echo: accept: {e}");
            return 1;
        }
    };
    let mode = args.get(3).map(String::as_str);
    if mode == Some("lean") {
        use std::os::fd::AsRawFd;
        if let Err(e) = s.set_nonblocking(true) {
            eprintln!("echo: {e}");
            return 1;
        }
        return crate::pattern::lean_serve(s.as_raw_fd(), req, reply);
    }
    if mode == Some("pattern") {
        use std::os::fd::AsRawFd;
        return crate::pattern::calls_serve(s.as_raw_fd(), req, reply);
    }
    let mut rq = vec![0u8; req];
    let rp = vec![0u8; reply];
    loop {
        if s.read_exact(&mut rq).is_err() {
            return 0;
        }
        if s.write_all(&rp).is_err() {
            return 0;
        }
    }
}
