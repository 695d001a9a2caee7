//! The listening socket: creation with its mode applied before it accepts anyone,
//! stale-socket handling, systemd socket activation and peer credentials.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::{last_os, Result, SandboxError};

/// Listen backlog of sockets we create.
const BACKLOG: libc::c_int = 16;

/// First fd passed by systemd socket activation (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Upper bound on `LISTEN_FDS` we accept (a unit file passing more is misconfigured).
const MAX_LISTEN_FDS: usize = 64;

/// How [`create_listener`] creates the socket file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOpts {
    /// Permission bits of the socket file (default 0o600: only its owner may connect).
    pub mode: u32,
    /// New owner of the socket file (the VMM's uid), if any.
    pub owner: Option<u32>,
    /// New group of the socket file, if any.
    pub group: Option<u32>,
}

impl Default for SocketOpts {
    fn default() -> Self {
        SocketOpts {
            mode: 0o600,
            owner: None,
            group: None,
        }
    }
}

fn path_err(op: &'static str, path: &Path, source: io::Error) -> SandboxError {
    SandboxError::PathIo {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Builds a `sockaddr_un` for a filesystem path.
fn sockaddr_un(path: &Path) -> Result<(libc::sockaddr_un, libc::socklen_t)> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let invalid = |reason| SandboxError::InvalidPath {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.is_empty() {
        return Err(invalid("empty"));
    }
    if bytes.contains(&0) {
        return Err(invalid("contains a NUL byte"));
    }
    // Keep room for the terminating NUL.
    if bytes.len() >= addr.sun_path.len() {
        return Err(invalid(
            "longer than the 107 bytes a Unix socket path may have",
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    // The length is bounded by size_of::<sockaddr_un>() (110), far below socklen_t::MAX.
    Ok((addr, len as libc::socklen_t))
}

/// Removes a stale socket left by a crashed server; refuses when a server answers
/// or when the path is not a socket.
fn clear_stale(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(path_err("stat", path, e)),
    };
    if !meta.file_type().is_socket() {
        return Err(SandboxError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match UnixStream::connect(path) {
        // A live server sees a connection that closes at once without a message.
        Ok(_) => Err(SandboxError::InUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            log::warn!(
                "removing stale socket {} (no server answers on it)",
                path.display()
            );
            match fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(path_err("remove stale socket", path, e)),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(path_err("probe existing socket", path, e)),
    }
}

/// Creates the socket's parent directory when it is missing (mode 0750, as the
/// operator guide's `/run/vfio-sidecar`), or says exactly what to create.
fn ensure_dir(path: &Path) -> Result<()> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.is_dir() {
        return Ok(());
    }
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(|source| SandboxError::NoSocketDir {
            path: dir.to_path_buf(),
            source,
        })?;
    log::info!("created socket directory {} (mode 0750)", dir.display());
    Ok(())
}

/// Creates a listening Unix stream socket at `path` with `opts` applied.
///
/// Race handling: the socket is `bind()`-ed (which creates the file with the
/// umask-derived mode), then `chmod`/`lchown`-ed, and only then `listen()`-ed. A
/// Unix stream socket that is bound but not listening refuses every `connect()`
/// with `ECONNREFUSED`, so there is no window in which a peer that the final mode
/// would exclude can connect. Between `bind()` and `chmod()` the file is checked to
/// still be a socket owned by us; the directory holding it should be writable only
/// by the service user (e.g. `/run/vfio-sidecar`, mode 0750), otherwise a warning
/// is logged.
///
/// An existing socket at `path` is probed by connecting to it: refused → stale,
/// removed and recreated; accepted → [`SandboxError::InUse`] ("socket PATH is in
/// use by a running server"). A non-socket file is never removed. The caller
/// removes the socket file when it exits.
pub fn create_listener(path: &Path, opts: &SocketOpts) -> Result<UnixListener> {
    if opts.mode & !0o777 != 0 {
        return Err(SandboxError::InvalidMode(opts.mode));
    }
    let (addr, len) = sockaddr_un(path)?;
    ensure_dir(path)?;
    warn_if_dir_unsafe(path);
    clear_stale(path)?;

    // SAFETY: plain syscall with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last_os("socket(AF_UNIX)"));
    }
    // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };

    // SAFETY: `addr` is a valid sockaddr_un and `len` does not exceed its size.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EADDRINUSE) {
            // Someone created the path between the stale check and bind.
            return Err(SandboxError::InUse {
                path: path.to_path_buf(),
            });
        }
        return Err(path_err("bind", path, e));
    }

    let finish = || -> Result<()> {
        let meta = fs::symlink_metadata(path).map_err(|e| path_err("stat", path, e))?;
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if !meta.file_type().is_socket() || meta.uid() != euid {
            return Err(SandboxError::SocketReplaced {
                path: path.to_path_buf(),
            });
        }
        fs::set_permissions(path, fs::Permissions::from_mode(opts.mode))
            .map_err(|e| path_err("chmod", path, e))?;
        if opts.owner.is_some() || opts.group.is_some() {
            std::os::unix::fs::lchown(path, opts.owner, opts.group)
                .map_err(|e| path_err("chown", path, e))?;
        }
        // SAFETY: `sock` is a valid bound socket fd.
        if unsafe { libc::listen(sock.as_raw_fd(), BACKLOG) } != 0 {
            return Err(path_err("listen", path, io::Error::last_os_error()));
        }
        Ok(())
    };
    if let Err(e) = finish() {
        if !matches!(e, SandboxError::SocketReplaced { .. }) {
            let _ = fs::remove_file(path);
        }
        return Err(e);
    }
    log::debug!(
        "socket {} created (mode {:o}, owner {:?}, group {:?})",
        path.display(),
        opts.mode,
        opts.owner,
        opts.group
    );
    Ok(UnixListener::from(sock))
}

fn warn_if_dir_unsafe(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(meta) = fs::metadata(dir) {
        let mode = meta.mode();
        if mode & 0o002 != 0 && mode & 0o1000 == 0 {
            log::warn!(
                "socket directory {} is world-writable without the sticky bit; \
                 anyone could replace the socket",
                dir.display()
            );
        }
    }
}

/// A listening socket inherited through systemd socket activation.
#[derive(Debug)]
pub struct ListenFd {
    /// The listener (close-on-exec set).
    pub listener: UnixListener,
    /// Its `LISTEN_FDNAMES` entry (`FileDescriptorName=`), if given.
    pub name: Option<String>,
    /// The filesystem path it is bound to (None for abstract/unnamed sockets).
    pub path: Option<PathBuf>,
}

/// What the `LISTEN_*` variables say: how many fds, and their names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ListenEnv {
    pub count: usize,
    pub names: Vec<Option<String>>,
}

/// Parses the socket-activation variables like `sd_listen_fds_with_names()`.
/// `Ok(None)`: not socket-activated (or the fds are meant for another process).
pub(crate) fn parse_listen_env(
    pid: Option<&OsStr>,
    fds: Option<&OsStr>,
    names: Option<&OsStr>,
    my_pid: u32,
) -> Result<Option<ListenEnv>> {
    let Some(fds) = fds else {
        return Ok(None);
    };
    let Some(pid) = pid else {
        log::warn!("LISTEN_FDS is set without LISTEN_PID; ignoring socket activation");
        return Ok(None);
    };
    let pid: u32 = pid
        .to_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| SandboxError::InvalidListenEnv(format!("LISTEN_PID={pid:?}")))?;
    if pid != my_pid {
        log::warn!("LISTEN_PID={pid} is not our pid {my_pid}; ignoring socket activation");
        return Ok(None);
    }
    let count: usize = fds
        .to_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| SandboxError::InvalidListenEnv(format!("LISTEN_FDS={fds:?}")))?;
    if count > MAX_LISTEN_FDS {
        return Err(SandboxError::InvalidListenEnv(format!(
            "LISTEN_FDS={count} exceeds the limit of {MAX_LISTEN_FDS}"
        )));
    }
    if count == 0 {
        return Ok(None);
    }
    let names = match names {
        None => vec![None; count],
        Some(n) => {
            let n = n.to_str().ok_or_else(|| {
                SandboxError::InvalidListenEnv("LISTEN_FDNAMES is not UTF-8".into())
            })?;
            let list: Vec<Option<String>> = n.split(':').map(|s| Some(s.to_string())).collect();
            if list.len() != count {
                return Err(SandboxError::InvalidListenEnv(format!(
                    "LISTEN_FDNAMES has {} names for LISTEN_FDS={count}",
                    list.len()
                )));
            }
            list
        }
    };
    Ok(Some(ListenEnv { count, names }))
}

fn getsockopt_int(fd: BorrowedFd<'_>, level: libc::c_int, opt: libc::c_int) -> io::Result<i32> {
    let mut val: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `val`/`len` are valid for writes of a c_int; the kernel writes at most `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&mut val as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(val)
}

/// Checks that `fd` is a listening `AF_UNIX` stream socket; returns its path.
pub(crate) fn validate_listen_fd(fd: BorrowedFd<'_>) -> Result<Option<PathBuf>> {
    let raw = fd.as_raw_fd();
    let bad = |reason: String| SandboxError::BadListenFd { fd: raw, reason };
    let domain = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)
        .map_err(|e| bad(format!("SO_DOMAIN: {e}")))?;
    if domain != libc::AF_UNIX {
        return Err(bad(format!("address family {domain}, expected AF_UNIX")));
    }
    let ty = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)
        .map_err(|e| bad(format!("SO_TYPE: {e}")))?;
    if ty != libc::SOCK_STREAM {
        return Err(bad(format!(
            "socket type {ty}, expected SOCK_STREAM (ListenStream=)"
        )));
    }
    let acc = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)
        .map_err(|e| bad(format!("SO_ACCEPTCONN: {e}")))?;
    if acc == 0 {
        return Err(bad(
            "not listening (Accept=yes units are not supported)".into()
        ));
    }
    let mut addr = MaybeUninit::<libc::sockaddr_un>::zeroed();
    let mut len = size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is valid for `len` bytes; the kernel writes at most `len`.
    let rc = unsafe { libc::getsockname(raw, addr.as_mut_ptr().cast(), &mut len) };
    if rc != 0 {
        return Err(bad(format!("getsockname: {}", io::Error::last_os_error())));
    }
    // SAFETY: zero-initialised POD, partially filled by the kernel: fully initialised.
    let addr = unsafe { addr.assume_init() };
    let off = std::mem::offset_of!(libc::sockaddr_un, sun_path);
    let plen = (len as usize).saturating_sub(off).min(addr.sun_path.len());
    let raw_path: Vec<u8> = addr.sun_path[..plen].iter().map(|&c| c as u8).collect();
    if raw_path.first().is_none_or(|&b| b == 0) {
        // Unnamed or abstract socket.
        return Ok(None);
    }
    let end = raw_path
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(raw_path.len());
    Ok(Some(PathBuf::from(OsStr::from_bytes(&raw_path[..end]))))
}

static LISTEN_FDS_TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes the listening sockets passed by systemd socket activation.
///
/// Reads `LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES` (fds start at 3), unsets the
/// three variables (so children never see them), validates every fd as a listening
/// `AF_UNIX` stream socket (`SO_DOMAIN`, `SO_TYPE`, `SO_ACCEPTCONN`, `getsockname`)
/// and sets close-on-exec on it. Returns an empty list when the process was not
/// socket-activated (or `LISTEN_PID` names another process). Only the first call in
/// a process takes the fds; later calls return an empty list. Call it before
/// spawning threads (it modifies the environment).
pub fn listen_fds_from_env() -> Result<Vec<ListenFd>> {
    let pid = std::env::var_os("LISTEN_PID");
    let fds = std::env::var_os("LISTEN_FDS");
    let names = std::env::var_os("LISTEN_FDNAMES");
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // Only touch the environment when there is something to remove.
        if std::env::var_os(var).is_some() {
            std::env::remove_var(var);
        }
    }
    if LISTEN_FDS_TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    let Some(env) = parse_listen_env(
        pid.as_deref(),
        fds.as_deref(),
        names.as_deref(),
        std::process::id(),
    )?
    else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(env.count);
    for (i, name) in env.names.into_iter().enumerate() {
        // Bounded by MAX_LISTEN_FDS: no overflow.
        let fd = LISTEN_FDS_START + i as RawFd;
        // SAFETY: F_GETFD only queries the fd table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(SandboxError::BadListenFd {
                fd,
                reason: format!("not open ({})", io::Error::last_os_error()),
            });
        }
        // SAFETY: the fd is open (checked above) and, by the socket-activation
        // protocol, was passed to this process for it to own; LISTEN_FDS_TAKEN makes
        // sure it is taken at most once.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = validate_listen_fd(owned.as_fd())?;
        // SAFETY: plain fcntl on an fd we own.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(last_os("fcntl(F_SETFD, FD_CLOEXEC) on an inherited socket"));
        }
        log::info!(
            "socket activation: fd {fd} name {} path {}",
            name.as_deref().unwrap_or("-"),
            path.as_deref()
                .map_or_else(|| "(unnamed)".into(), |p| p.display().to_string())
        );
        out.push(ListenFd {
            listener: UnixListener::from(owned),
            name,
            path,
        });
    }
    Ok(out)
}

/// The listener `serve` uses: inherited from systemd or created by us.
#[derive(Debug)]
pub struct Listener {
    /// The listening socket.
    pub listener: UnixListener,
    /// Its path (the inherited socket's own path when activated).
    pub path: PathBuf,
    /// True when inherited through socket activation: systemd owns the socket
    /// file, so the backend must not remove it at exit.
    pub activated: bool,
}

impl Listener {
    /// Whether the backend should remove the socket file when it exits.
    pub fn remove_on_exit(&self) -> bool {
        !self.activated
    }
}

/// Picks the inherited socket for `path`: the one bound to `path`, else the only
/// one (with a warning when its path differs).
fn pick_listen_fd(mut fds: Vec<ListenFd>, path: &Path) -> Option<ListenFd> {
    if let Some(i) = fds.iter().position(|f| f.path.as_deref() == Some(path)) {
        return Some(fds.swap_remove(i));
    }
    if fds.len() > 1 {
        log::warn!(
            "{} inherited sockets and none is bound to {}; using the first",
            fds.len(),
            path.display()
        );
    }
    let first = fds.into_iter().next()?;
    log::warn!(
        "inherited socket is bound to {}, not {}; using it",
        first
            .path
            .as_deref()
            .map_or_else(|| "(unnamed)".into(), |p| p.display().to_string()),
        path.display()
    );
    Some(first)
}

/// The listener for `serve --socket PATH`: the socket-activated one when systemd
/// passed one ([`listen_fds_from_env`]; the one bound to `path` if several),
/// otherwise a new one from [`create_listener`].
pub fn open_listener(path: &Path, opts: &SocketOpts) -> Result<Listener> {
    if let Some(fd) = pick_listen_fd(listen_fds_from_env()?, path) {
        return Ok(Listener {
            path: fd.path.unwrap_or_else(|| path.to_path_buf()),
            listener: fd.listener,
            activated: true,
        });
    }
    Ok(Listener {
        listener: create_listener(path, opts)?,
        path: path.to_path_buf(),
        activated: false,
    })
}

/// Credentials of the process at the other end of a Unix socket, as the kernel
/// recorded them at `connect()` time (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

/// Who may talk to the backend beyond what the socket file's mode allows.
///
/// The default (both lists empty) adds no check: whoever can open the 0600 socket
/// (its owner, and root) is accepted, i.e. the file mode is the policy. When either
/// list is non-empty, a peer is accepted iff its uid is in `allow_uids` or its
/// primary gid is in `allow_gids`; root is not implicitly allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerPolicy {
    /// Allowed user ids.
    pub allow_uids: Vec<u32>,
    /// Allowed primary group ids.
    pub allow_gids: Vec<u32>,
}

impl PeerPolicy {
    /// True when the policy adds no check.
    pub fn is_open(&self) -> bool {
        self.allow_uids.is_empty() && self.allow_gids.is_empty()
    }

    /// Whether `cred` passes.
    pub fn allows(&self, cred: &PeerCred) -> bool {
        self.is_open() || self.allow_uids.contains(&cred.uid) || self.allow_gids.contains(&cred.gid)
    }
}

/// Reads `SO_PEERCRED` of a connected Unix socket.
pub fn peer_cred(stream: &impl AsFd) -> Result<PeerCred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred`/`len` are valid for writes of a ucred; the kernel writes at most `len`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(last_os("getsockopt(SO_PEERCRED)"));
    }
    Ok(PeerCred {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// Reads the peer's credentials and checks them against `policy`.
pub fn check_peer(stream: &impl AsFd, policy: &PeerPolicy) -> Result<PeerCred> {
    let cred = peer_cred(stream)?;
    if policy.allows(&cred) {
        log::debug!(
            "peer pid {} uid {} gid {} accepted",
            cred.pid,
            cred.uid,
            cred.gid
        );
        Ok(cred)
    } else {
        Err(SandboxError::PeerRejected {
            cred,
            allow_uids: policy.allow_uids.clone(),
            allow_gids: policy.allow_gids.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::sandbox::testutil::{run_child, temp_dir, CHILD_ENV};
    use std::ffi::OsString;
    use std::os::unix::process::ExitStatusExt;

    fn os(s: &str) -> OsString {
        OsString::from(s)
    }

    #[test]
    fn missing_socket_directory_is_created_or_named() {
        let dir = temp_dir("sockdir");
        let path = dir.join("run/vfio-sidecar/s.sock");
        let _l = create_listener(&path, &SocketOpts::default()).unwrap();
        let meta = fs::metadata(dir.join("run/vfio-sidecar")).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.mode() & 0o007, 0, "not world-accessible");
        // A parent that cannot be created (a file in the way): the error names it.
        fs::write(dir.join("file"), b"").unwrap();
        let e = create_listener(&dir.join("file/sub/s.sock"), &SocketOpts::default()).unwrap_err();
        assert!(matches!(e, SandboxError::NoSocketDir { .. }), "{e}");
        assert!(e.to_string().contains("install -d -m 0750"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn listener_has_mode_and_stale_socket_is_replaced() {
        let dir = temp_dir("sock");
        let path = dir.join("s.sock");
        let l = create_listener(&path, &SocketOpts::default()).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o600);
        // Connectable and accepted.
        let _c = UnixStream::connect(&path).unwrap();
        let (_s, _) = l.accept().unwrap();

        // A second server while the first listens: refused with the documented message.
        let err = create_listener(&path, &SocketOpts::default()).unwrap_err();
        assert!(matches!(err, SandboxError::InUse { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "socket {} is in use by a running server; stop it or choose another \
                 --socket path",
                path.display()
            )
        );

        // The first server dies without removing its socket: stale, recreated.
        drop(l);
        assert!(fs::symlink_metadata(&path).is_ok());
        let l2 = create_listener(
            &path,
            &SocketOpts {
                mode: 0o660,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(fs::symlink_metadata(&path).unwrap().mode() & 0o777, 0o660);
        let _c = UnixStream::connect(&path).unwrap();
        l2.accept().unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn listener_refuses_non_socket_and_bad_args() {
        let dir = temp_dir("sock");
        let path = dir.join("file");
        fs::write(&path, b"keep me").unwrap();
        let err = create_listener(&path, &SocketOpts::default()).unwrap_err();
        assert!(matches!(err, SandboxError::NotASocket { .. }), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"keep me");

        let err = create_listener(
            &dir.join("x"),
            &SocketOpts {
                mode: 0o4700,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, SandboxError::InvalidMode(0o4700)));

        let long = dir.join("a".repeat(120));
        let err = create_listener(&long, &SocketOpts::default()).unwrap_err();
        assert!(matches!(err, SandboxError::InvalidPath { .. }), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn listen_env_parsing() {
        let me = 4242;
        assert_eq!(parse_listen_env(None, None, None, me).unwrap(), None);
        // Meant for another process.
        assert_eq!(
            parse_listen_env(Some(&os("1")), Some(&os("1")), None, me).unwrap(),
            None
        );
        // No LISTEN_PID: ignored like sd_listen_fds.
        assert_eq!(
            parse_listen_env(None, Some(&os("1")), None, me).unwrap(),
            None
        );
        assert_eq!(
            parse_listen_env(Some(&os("4242")), Some(&os("2")), Some(&os("a:b")), me).unwrap(),
            Some(ListenEnv {
                count: 2,
                names: vec![Some("a".into()), Some("b".into())]
            })
        );
        assert_eq!(
            parse_listen_env(Some(&os("4242")), Some(&os("1")), None, me).unwrap(),
            Some(ListenEnv {
                count: 1,
                names: vec![None]
            })
        );
        assert_eq!(
            parse_listen_env(Some(&os("4242")), Some(&os("0")), None, me).unwrap(),
            None
        );
        for (pid, fds, names) in [
            ("x", "1", None),
            ("4242", "-1", None),
            ("4242", "one", None),
            ("4242", "65", None),
            ("4242", "2", Some("only-one")),
        ] {
            let n = names.map(os);
            let r = parse_listen_env(Some(&os(pid)), Some(&os(fds)), n.as_deref(), me);
            assert!(
                matches!(r, Err(SandboxError::InvalidListenEnv(_))),
                "{pid} {fds} {names:?}: {r:?}"
            );
        }
    }

    #[test]
    fn listen_fd_validation() {
        let dir = temp_dir("sock");
        let path = dir.join("v.sock");
        let l = create_listener(&path, &SocketOpts::default()).unwrap();
        assert_eq!(validate_listen_fd(l.as_fd()).unwrap(), Some(path.clone()));

        // Connected stream socket: not listening.
        let (a, _b) = UnixStream::pair().unwrap();
        let err = validate_listen_fd(a.as_fd()).unwrap_err();
        assert!(err.to_string().contains("not listening"), "{err}");

        // Datagram socket.
        let d = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let err = validate_listen_fd(d.as_fd()).unwrap_err();
        assert!(err.to_string().contains("SOCK_STREAM"), "{err}");

        // Not a socket at all.
        let f = fs::File::open("/dev/null").unwrap();
        let err = validate_listen_fd(f.as_fd()).unwrap_err();
        assert!(err.to_string().contains("SO_DOMAIN"), "{err}");

        // TCP listener.
        if let Ok(tcp) = std::net::TcpListener::bind("127.0.0.1:0") {
            let err = validate_listen_fd(tcp.as_fd()).unwrap_err();
            assert!(err.to_string().contains("AF_UNIX"), "{err}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn open_listener_without_activation_and_fd_choice() {
        let dir = temp_dir("open");
        let path = dir.join("o.sock");
        // Not socket-activated here (the test runner sets no LISTEN_* variables).
        let l = open_listener(&path, &SocketOpts::default()).unwrap();
        assert!(!l.activated && l.remove_on_exit());
        assert_eq!(l.path, path);
        let _c = UnixStream::connect(&path).unwrap();

        let mk = |name: &str| {
            let p = dir.join(name);
            ListenFd {
                listener: create_listener(&p, &SocketOpts::default()).unwrap(),
                name: None,
                path: Some(p),
            }
        };
        let picked = pick_listen_fd(vec![mk("a.sock"), mk("b.sock")], &dir.join("b.sock")).unwrap();
        assert_eq!(picked.path, Some(dir.join("b.sock")));
        let picked = pick_listen_fd(vec![mk("c.sock")], &dir.join("other.sock")).unwrap();
        assert_eq!(picked.path, Some(dir.join("c.sock")));
        assert!(pick_listen_fd(Vec::new(), &path).is_none());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn peer_policy() {
        let (a, b) = UnixStream::pair().unwrap();
        // SAFETY: no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let cred = check_peer(&a, &PeerPolicy::default()).unwrap();
        assert_eq!((cred.uid, cred.gid), (uid, gid));
        assert_eq!(cred.pid, std::process::id() as i32);

        let only_other = PeerPolicy {
            allow_uids: vec![uid.wrapping_add(12345)],
            allow_gids: vec![],
        };
        let err = check_peer(&b, &only_other).unwrap_err();
        assert!(matches!(err, SandboxError::PeerRejected { .. }), "{err}");

        let by_gid = PeerPolicy {
            allow_uids: vec![uid.wrapping_add(12345)],
            allow_gids: vec![gid],
        };
        assert!(check_peer(&b, &by_gid).is_ok());
    }

    /// Child side of `socket_activation_in_child`: pretends to be started by systemd
    /// with fd 3 inherited.
    #[test]
    #[ignore = "child-process helper for socket_activation_in_child"]
    fn listen_fds_child() {
        if std::env::var(CHILD_ENV).as_deref() != Ok("listen-fds") {
            return;
        }
        let path = PathBuf::from(std::env::var("VS_TEST_SOCK").unwrap());
        // The parent passed the listener as fd 3 (dup2 in pre_exec); LISTEN_PID must
        // be our pid, which only we know.
        std::env::set_var("LISTEN_PID", std::process::id().to_string());
        let fds = listen_fds_from_env().unwrap();
        assert_eq!(fds.len(), 1);
        assert_eq!(fds[0].name.as_deref(), Some("dev0"));
        assert_eq!(fds[0].path.as_deref(), Some(path.as_path()));
        assert_eq!(fds[0].listener.as_raw_fd(), 3);
        // SAFETY: F_GETFD only queries.
        let flags = unsafe { libc::fcntl(3, libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            assert!(std::env::var_os(v).is_none(), "{v} still set");
        }
        // Second call: nothing.
        assert!(listen_fds_from_env().unwrap().is_empty());
        let (mut s, _) = fds[0].listener.accept().unwrap();
        use std::io::Write;
        s.write_all(b"hello from activated child").unwrap();
        println!("LISTEN-FDS-OK");
        std::process::exit(0);
    }

    #[test]
    fn socket_activation_in_child() {
        use std::io::Read;
        use std::os::unix::process::CommandExt;
        let dir = temp_dir("act");
        let path = dir.join("a.sock");
        let l = create_listener(&path, &SocketOpts::default()).unwrap();
        let lfd = l.as_raw_fd();
        let exe = std::env::current_exe().unwrap();
        let mut cmd = std::process::Command::new(exe);
        cmd.args([
            "--ignored",
            "--exact",
            "sandbox::socket::tests::listen_fds_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "listen-fds")
        .env("VS_TEST_SOCK", &path)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "dev0")
        .stdout(std::process::Stdio::piped());
        // SAFETY: dup2 is async-signal-safe; the closure touches no other state.
        unsafe {
            cmd.pre_exec(move || {
                if lfd == 3 {
                    // dup2 onto itself keeps FD_CLOEXEC: clear it instead.
                    if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(lfd, 3) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        // The child holds the listener now; if it fails, its exit closes the last
        // reference and our pending connection is reset instead of hanging.
        drop(l);
        let conn = UnixStream::connect(&path);
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{:?} {stdout}", out.status);
        assert!(stdout.contains("LISTEN-FDS-OK"), "{stdout}");
        let mut got = String::new();
        conn.unwrap().read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello from activated child");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Child side of `socket_mode_and_peer_uid`: drops to a uid given in the env and
    /// connects.
    #[test]
    #[ignore = "child-process helper for socket_mode_and_peer_uid"]
    fn peer_child() {
        if std::env::var(CHILD_ENV).as_deref() != Ok("peer") {
            return;
        }
        let uid: u32 = std::env::var("VS_TEST_UID").unwrap().parse().unwrap();
        let path = PathBuf::from(std::env::var("VS_TEST_SOCK").unwrap());
        crate::sandbox::drop_privileges(
            &crate::sandbox::UserSpec::Id(uid),
            Some(&crate::sandbox::GroupSpec::Id(uid)),
        )
        .unwrap();
        match UnixStream::connect(&path) {
            Ok(mut s) => {
                use std::io::Read;
                let mut b = [0u8; 1];
                let _ = s.read(&mut b);
                std::process::exit(0)
            }
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => std::process::exit(13),
            Err(e) => {
                eprintln!("connect: {e}");
                std::process::exit(1)
            }
        }
    }

    #[test]
    fn socket_mode_and_peer_uid() {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to chown the socket and switch uid");
            return;
        }
        let dir = temp_dir("peer");
        let path = dir.join("p.sock");
        let owner = 65534u32;
        let l = create_listener(
            &path,
            &SocketOpts {
                mode: 0o600,
                owner: Some(owner),
                group: Some(owner),
            },
        )
        .unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (owner, owner));
        let sock = path.to_str().unwrap().to_string();

        // The owner can connect; SO_PEERCRED reports its uid; a policy can reject it.
        let test = "sandbox::socket::tests::peer_child";
        let h = std::thread::spawn(move || {
            run_child(
                test,
                "peer",
                &[("VS_TEST_UID", "65534"), ("VS_TEST_SOCK", &sock)],
            )
        });
        // Non-blocking accept so that a child that cannot connect fails the test
        // instead of hanging it.
        l.set_nonblocking(true).unwrap();
        let s = loop {
            match l.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if h.is_finished() {
                        let out = h.join().unwrap();
                        panic!(
                            "child never connected: {:?}\n{}",
                            out.status,
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        s.set_nonblocking(false).unwrap();
        let cred = peer_cred(&s).unwrap();
        assert_eq!((cred.uid, cred.gid), (owner, owner));
        let err = check_peer(
            &s,
            &PeerPolicy {
                allow_uids: vec![0],
                allow_gids: vec![],
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("uid 65534"), "{err}");
        drop(s);
        let out = h.join().unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");

        // Another uid is kept out by the 0600 mode alone.
        let sock = path.to_str().unwrap().to_string();
        let out = run_child(
            test,
            "peer",
            &[("VS_TEST_UID", "65533"), ("VS_TEST_SOCK", &sock)],
        );
        assert_eq!(
            out.status.code(),
            Some(13),
            "expected EACCES: {:?} {}",
            out.status.signal(),
            String::from_utf8_lossy(&out.stderr)
        );
        drop(l);
        fs::remove_dir_all(&dir).unwrap();
    }
}
