//! Privilege separation of `vfio-sidecar serve`, across processes: the socket's
//! mode, owner and group; SO_PEERCRED refusal (`--allow-uid`/`--allow-gid`) of a
//! client running as another uid; `--user` dropping to `nobody` with the device
//! still working; the seccomp filter on by default and killing the backend by
//! SIGSYS on a forbidden syscall (debug-build test hook); `--no-mmap`; systemd
//! socket activation (LISTEN_FDS/LISTEN_PID on a pre-bound fd 3).
//!
//! Tests that need root (chown, setuid) print why and return early otherwise.
#![allow(clippy::unwrap_used)]

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use vfio_sidecar_protocol::client::{Client, ClientOptions, IrqData};
use vfio_sidecar_protocol::message::IrqAction;
use vfio_sidecar_tests::{
    drain, eventfd, scratch_dma, set_eventfd, workspace_bin, GuestMem, Sidecar, TempDir, RW,
};

const NOBODY: u32 = 65534;
const SCRATCH_ID: u32 = 0x5c2a_7c11;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// True when running as root; otherwise prints that the test is skipped
/// (it needs root `why`) and the test returns early.
fn root_or_skip(why: &str) -> bool {
    if !is_root() {
        eprintln!("skipped: needs root {why}");
    }
    is_root()
}

fn backend() -> PathBuf {
    workspace_bin("vfio-sidecar", "vfio-sidecar")
}

/// A field of /proc/PID/status ("Uid", "Gid", "Seccomp") as its numbers.
fn status_field(pid: u32, field: &str) -> Vec<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {text}"));
    line.split_whitespace()
        .skip(1)
        .map(|w| w.parse().unwrap())
        .collect()
}

/// Uses the scratch model end to end: ID register, an IRQ through a trigger
/// eventfd (the backend identifies it by its /proc/self/fd link), a DMA copy
/// between two places of a DMA-mapped memfd, the status register, unmap.
fn exercise_scratch(c: &mut Client) {
    let info = c.device_info().unwrap();
    assert_eq!(info.num_regions, 1);
    let id = c.region_read(0, 0, 4).unwrap();
    assert_eq!(u32::from_le_bytes(id[..4].try_into().unwrap()), SCRATCH_ID);
    let (efd, reader) = eventfd();
    set_eventfd(c, 0, IrqAction::Trigger, efd.as_fd()).unwrap();
    c.region_write(0, 0x08, &1u32.to_le_bytes()).unwrap(); // RAISE
    c.region_write(0, 0x0c, &1u32.to_le_bytes()).unwrap(); // INTCLR (EOI)
    assert!(drain(&reader) >= 1, "IRQ eventfd not signalled");
    c.set_irqs(0, IrqAction::Trigger, IrqData::None, 0, 0)
        .unwrap();
    let mem = GuestMem::new("privsep", 0x4000);
    mem.write(0x100, b"privsep!");
    c.dma_map(0x10_0000, 0x4000, mem.fd(), 0, RW).unwrap();
    scratch_dma(c, 0x10_0100, 0x10_2000, 8);
    let st = c.region_read(0, 0x10, 4).unwrap();
    assert_eq!(u32::from_le_bytes(st[..4].try_into().unwrap()) & 3, 1);
    assert_eq!(mem.read(0x2000, 8), b"privsep!");
    c.dma_unmap(0x10_0000, 0x4000).unwrap();
}

/// Runs `vfio-sidecar probe --socket SOCK` as uid/gid `id` (a second process:
/// the client whose SO_PEERCRED the backend sees).
fn probe_as(id: u32, sock: &Path) -> Output {
    // The checkout may sit below a directory only root can enter (CI clones
    // into a private temp dir): run a copy of the binary from a 0755 dir.
    let dir = TempDir::new("nobody-bin");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.0.join("vfio-sidecar");
    std::fs::copy(backend(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Another test thread may fork while the copy is still open for writing
    // here; its child holds that fd until it execs, and exec of the copy then
    // fails with ETXTBSY for that moment. Retry briefly.
    for _ in 0..100 {
        match Command::new(&exe)
            .args(["probe", "--socket"])
            .arg(sock)
            .uid(id)
            .gid(id)
            .stdin(Stdio::null())
            .output()
        {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r.unwrap(),
        }
    }
    panic!("{} stayed busy (ETXTBSY) for 2 s", exe.display());
}

#[test]
fn socket_is_created_0600_by_default() {
    let mut srv = Sidecar::start("model:scratch", &[]);
    let meta = std::fs::symlink_metadata(&srv.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o7777, 0o600, "mode {:o}", meta.mode());
    // SAFETY: no preconditions.
    assert_eq!(meta.uid(), unsafe { libc::geteuid() });
    // The filter is on by default (mode 2 = filter).
    assert_eq!(status_field(srv.pid(), "Seccomp"), [2]);
    srv.wait_log("seccomp filter installed");
    let mut c = srv.connect(false);
    exercise_scratch(&mut c);
    drop(c);
    assert!(srv.terminate().success());
    // We created it: removed at exit.
    assert!(!srv.socket.exists());
}

#[test]
fn socket_mode_owner_group() {
    if !root_or_skip("to chown the socket") {
        return;
    }
    let srv = Sidecar::start(
        "model:scratch",
        &[
            "--socket-mode",
            "0660",
            "--socket-owner",
            "nobody",
            "--socket-group",
            "65533",
        ],
    );
    let meta = std::fs::symlink_metadata(&srv.socket).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o660, "mode {:o}", meta.mode());
    assert_eq!((meta.uid(), meta.gid()), (NOBODY, 65533));
    // The owner can connect now (probe as nobody succeeds).
    let out = probe_as(NOBODY, &srv.socket);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("scratch"));
}

#[test]
fn bad_socket_options_are_refused() {
    let dir = TempDir::new("badopt");
    let sock = dir.0.join("s.sock");
    for (args, want) in [
        (vec!["--socket-mode", "0999"], "not a socket mode"),
        (vec!["--socket-mode", "04700"], "not a socket mode"),
        (
            vec!["--socket-owner", "no-such-user-vs"],
            "unknown user \"no-such-user-vs\"",
        ),
        (
            vec!["--allow-gid", "no-such-group-vs"],
            "unknown group \"no-such-group-vs\"",
        ),
        (vec!["--seccomp", "sometimes"], "invalid value 'sometimes'"),
        (vec!["--user", "nobody:"], "expected USER or USER:GROUP"),
    ] {
        let out = Command::new(backend())
            .arg("serve")
            .arg("--socket")
            .arg(&sock)
            .args(["--device", "model:scratch"])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!sock.exists(), "{args:?} left a socket");
    }
}

#[test]
fn allow_uid_refuses_another_uid() {
    if !root_or_skip("to run a client as nobody") {
        return;
    }
    // Mode 0666: only the SO_PEERCRED policy keeps nobody out.
    let srv = Sidecar::start(
        "model:scratch",
        &["--socket-mode", "0666", "--allow-uid", "0"],
    );
    let out = probe_as(NOBODY, &srv.socket);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nobody was served: {err}");
    srv.wait_log("connection refused: peer pid");
    let log = srv.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("connection refused"))
        .unwrap();
    assert!(
        line.contains(&format!("uid {NOBODY} gid {NOBODY} is not allowed")),
        "{line}"
    );
    assert!(line.contains("allowed uids [0]"), "{line}");
    assert!(!log.contains("client connected"), "{log}");

    // Root (allowed) is served right after, by the same backend.
    let mut c = srv.connect(true);
    exercise_scratch(&mut c);
    drop(c);
    srv.wait_log("client connected (pid");

    // By group: nobody's primary gid allowed.
    let srv = Sidecar::start(
        "model:scratch",
        &[
            "--socket-mode",
            "0666",
            "--allow-uid",
            "0",
            "--allow-gid",
            &NOBODY.to_string(),
        ],
    );
    let out = probe_as(NOBODY, &srv.socket);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    srv.wait_log("client connected (pid");
    assert!(srv
        .log_text()
        .contains(&format!("uid {NOBODY} gid {NOBODY})")));

    // Without a policy the 0600 mode alone keeps nobody out (EACCES at connect).
    let srv = Sidecar::start("model:scratch", &[]);
    let out = probe_as(NOBODY, &srv.socket);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("ermission denied"), "{err}");
}

#[test]
fn user_nobody_drops_and_device_works() {
    if !root_or_skip("to switch users") {
        return;
    }
    let mut srv = Sidecar::start("model:scratch", &["--user", "nobody"]);
    srv.wait_log("running as uid 65534");
    let pid = srv.pid();
    assert_eq!(status_field(pid, "Uid"), [65534; 4]);
    assert_eq!(status_field(pid, "Gid"), [65534; 4]);
    assert_eq!(status_field(pid, "Seccomp"), [2]);
    assert_eq!(status_field(pid, "NoNewPrivs"), [1]);
    assert_eq!(status_field(pid, "CapEff"), [0]);
    // The socket was created before the drop (owned by root, 0600): root connects.
    let mut c = srv.connect(true);
    exercise_scratch(&mut c);
    // mmap-able page of the scratch region still offered (fd passed after the drop).
    let (info, fd) = c.region_info(0).unwrap();
    assert!(fd.is_some() && info.sparse.is_some());
    drop(c);
    srv.wait_log("client disconnected");
    // A second client after cleanup.
    let mut c = srv.connect(false);
    exercise_scratch(&mut c);
    drop(c);
    let st = srv.terminate();
    assert!(st.success(), "{st:?}: {}", srv.log_text());

    // USER:GROUP form.
    let srv = Sidecar::start("model:scratch", &["--user", "nobody:65533"]);
    srv.wait_log("running as uid 65534 gid 65533");
    assert_eq!(status_field(srv.pid(), "Gid"), [65533; 4]);
}

#[test]
fn no_mmap_traps_every_access() {
    let srv = Sidecar::start("model:scratch", &["--no-mmap"]);
    let mut c = srv.connect(true);
    let (info, fd) = c.region_info(0).unwrap();
    assert!(fd.is_none(), "an mmap fd was offered");
    assert_eq!(info.flags & 4, 0, "MMAP flag set: {:#x}", info.flags);
    assert!(info.sparse.is_none());
    // The page that would have been mmap-able is reachable by trapped accesses.
    c.region_write(0, 0x1000, b"trapped!").unwrap();
    assert_eq!(c.region_read(0, 0x1000, 8).unwrap(), b"trapped!");
    exercise_scratch(&mut c);

    // Without the flag the same page is offered.
    let srv = Sidecar::start("model:scratch", &[]);
    let mut c = srv.connect(true);
    let (info, fd) = c.region_info(0).unwrap();
    assert!(fd.is_some() && info.flags & 4 != 0);
}

/// A `vfio-sidecar serve` started by hand, with extra env and an optional
/// listening socket handed over as fd 3 with LISTEN_PID set to the child's pid.
struct Spawned {
    child: Option<Child>,
    log: PathBuf,
}

impl Spawned {
    fn start(
        sock: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        listen_fd: Option<&UnixListener>,
        listen_pid_is_child: bool,
    ) -> Spawned {
        let log = sock.with_extension("log");
        let mut cmd = Command::new(backend());
        cmd.arg("serve")
            .arg("--socket")
            .arg(sock)
            .args(["--device", "model:scratch"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap());
        let vars: Vec<(CString, CString)> = vec![("RUST_LOG", "debug")]
            .into_iter()
            .chain(env.iter().copied())
            .map(|(k, v)| (CString::new(k).unwrap(), CString::new(v).unwrap()))
            .collect();
        let Some(l) = listen_fd else {
            for (k, v) in &vars {
                cmd.env(k.to_str().unwrap(), v.to_str().unwrap());
            }
            return Spawned {
                child: Some(cmd.spawn().unwrap()),
                log,
            };
        };
        let lfd = l.as_raw_fd();
        // Room for LISTEN_PID, filled in the child.
        let pid_name = c"LISTEN_PID";
        // SAFETY: runs in the forked child before exec. dup2/fcntl/getpid are
        // async-signal-safe. setenv is not formally: std holds its env lock across
        // fork (no thread of ours was inside setenv), glibc resets its malloc locks
        // in the child, and every string was allocated before the fork. The
        // variables go through setenv, not Command::env, because std installs a
        // Command::env environment after the pre_exec closures run.
        unsafe {
            cmd.pre_exec(move || {
                if lfd == 3 {
                    if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(lfd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for (k, v) in &vars {
                    if libc::setenv(k.as_ptr(), v.as_ptr(), 1) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if listen_pid_is_child {
                    let mut buf = [0u8; 16];
                    let mut n = libc::getpid() as u32;
                    let mut i = buf.len() - 1; // NUL at the end
                    loop {
                        i -= 1;
                        buf[i] = b'0' + (n % 10) as u8;
                        n /= 10;
                        if n == 0 {
                            break;
                        }
                    }
                    if libc::setenv(pid_name.as_ptr(), buf[i..].as_ptr().cast(), 1) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Spawned {
            child: Some(cmd.spawn().unwrap()),
            log,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn wait_log(&mut self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log_text().contains(what) {
            if let Ok(Some(st)) = self.child.as_mut().unwrap().try_wait() {
                panic!("exited ({st:?}) before {what:?}: {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "never logged {what:?}: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the exit (SIGKILL after 20 s).
    fn wait(&mut self) -> ExitStatus {
        let mut c = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("backend did not exit: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn terminate(&mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        self.wait()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Connects and reads until the server closes (a backend killed by the filter).
fn connect_until_closed(sock: &Path) {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = Vec::new();
    // EOF or ECONNRESET: the process is gone.
    let r = s.read_to_end(&mut buf);
    assert!(
        r.is_ok()
            || r.as_ref().err().map(|e| e.kind()) == Some(std::io::ErrorKind::ConnectionReset),
        "{r:?}"
    );
}

#[test]
fn forbidden_syscall_kills_the_backend_by_sigsys() {
    if !cfg!(debug_assertions) {
        eprintln!("skipped: the test hook exists in debug builds only");
        return;
    }
    let hook = [("VFIO_SIDECAR_TEST_FORBIDDEN_SYSCALL", "1")];
    let dir = TempDir::new("sigsys");

    // Default (kill): the whole process dies by SIGSYS at the socket(2) call.
    let sock = dir.0.join("kill.sock");
    let mut p = Spawned::start(&sock, &[], &hook, None, false);
    p.wait_log("listening on");
    assert!(p.log_text().contains("violations Kill"));
    connect_until_closed(&sock);
    let st = p.wait();
    assert_eq!(st.signal(), Some(libc::SIGSYS), "{st:?}: {}", p.log_text());
    assert!(p.log_text().contains("calling socket(2) under the filter"));
    assert!(!p.log_text().contains("socket(2) returned"));

    // Trap: names the syscall on stderr, then dies by SIGSYS too.
    let sock = dir.0.join("trap.sock");
    let mut p = Spawned::start(&sock, &["--seccomp", "trap"], &hook, None, false);
    p.wait_log("listening on");
    connect_until_closed(&sock);
    let st = p.wait();
    assert_eq!(st.signal(), Some(libc::SIGSYS), "{st:?}");
    assert!(
        p.log_text()
            .contains(&format!("forbidden syscall {}", libc::SYS_socket)),
        "{}",
        p.log_text()
    );

    // Log and off: the call goes through and the backend keeps serving, so the
    // deaths above are the filter's doing.
    for mode in ["log", "off"] {
        let sock = dir.0.join(format!("{mode}.sock"));
        let mut p = Spawned::start(&sock, &["--seccomp", mode], &hook, None, false);
        p.wait_log("listening on");
        let mut c = Client::connect(&sock, ClientOptions::default()).unwrap();
        exercise_scratch(&mut c);
        drop(c);
        p.wait_log("socket(2) returned");
        assert_eq!(
            status_field(p.pid(), "Seccomp"),
            [if mode == "off" { 0 } else { 2 }]
        );
        assert!(p.terminate().success());
    }
}

fn bound_listener(path: &Path) -> UnixListener {
    UnixListener::bind(path).unwrap()
}

#[test]
fn socket_activation_with_listen_fds() {
    let dir = TempDir::new("activate");
    let path = dir.0.join("activated.sock");
    let l = bound_listener(&path);
    // systemd's SocketMode: the backend must leave the inherited socket as it is.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let env = [("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "vfio-user")];
    let mut p = Spawned::start(&path, &["--socket-mode", "0666"], &env, Some(&l), true);
    drop(l);
    p.wait_log("listening on");
    let log = p.log_text();
    assert!(log.contains("socket activation: fd 3"), "{log}");
    assert!(
        log.contains("ignored: the socket is socket-activated"),
        "{log}"
    );
    assert!(log.contains("(socket-activated)"), "{log}");
    assert!(!log.contains("created (mode"), "{log}");
    let mut c = Client::connect(&path, ClientOptions::default()).unwrap();
    exercise_scratch(&mut c);
    drop(c);
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o640);
    assert!(p.terminate().success());
    // systemd owns the socket file: still there after the backend exits.
    assert!(path.exists());

    // --socket naming another path: the inherited socket wins, nothing is created.
    let path2 = dir.0.join("inherited.sock");
    let other = dir.0.join("not-created.sock");
    let l = bound_listener(&path2);
    let mut p = Spawned::start(&other, &[], &env, Some(&l), true);
    drop(l);
    p.wait_log("listening on");
    assert!(!other.exists());
    let mut c = Client::connect(&path2, ClientOptions::default()).unwrap();
    exercise_scratch(&mut c);
    drop(c);
    assert!(p.terminate().success());

    // LISTEN_PID naming another process: activation ignored, the backend creates
    // its own socket at --socket (fd 3 stays unused).
    let path3 = dir.0.join("decoy.sock");
    let own = dir.0.join("own.sock");
    let l = bound_listener(&path3);
    let env = [
        ("LISTEN_FDS", "1"),
        ("LISTEN_PID", "1"),
        ("LISTEN_FDNAMES", "vfio-user"),
    ];
    let mut p = Spawned::start(&own, &[], &env, Some(&l), false);
    p.wait_log("listening on");
    assert!(p.log_text().contains("ignoring socket activation"));
    let mut c = Client::connect(&own, ClientOptions::default()).unwrap();
    exercise_scratch(&mut c);
    drop(c);
    assert!(p.terminate().success());
    assert!(!own.exists(), "own socket not removed at exit");
    let _keep: OwnedFd = l.into();
}

#[test]
fn stats_socket_beside_a_socket_activated_one() {
    let dir = TempDir::new("activate-stats");
    let path = dir.0.join("activated.sock");
    let stats = dir.0.join("stats.sock");
    let l = bound_listener(&path);
    let env = [("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "vfio-user")];
    let args = [
        "--socket-mode",
        "0640",
        "--stats-socket",
        stats.to_str().unwrap(),
    ];
    let mut p = Spawned::start(&path, &args, &env, Some(&l), true);
    drop(l);
    p.wait_log("listening on");
    let log = p.log_text();
    assert!(log.contains("they still apply to --stats-socket"), "{log}");
    // The backend made the statistics socket itself, with --socket-mode.
    let meta = std::fs::symlink_metadata(&stats).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o777, 0o640);
    let mut c = Client::connect(&path, ClientOptions::default()).unwrap();
    exercise_scratch(&mut c);
    let s = vfio_sidecar::probe::stats::read_snapshot(&stats, 5).unwrap();
    assert_eq!(s.session.unwrap().client.pid, std::process::id() as i32);
    drop(c);
    assert!(p.terminate().success());
    assert!(path.exists(), "systemd's socket stays");
    assert!(!stats.exists(), "the statistics socket is removed");
}
