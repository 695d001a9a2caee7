//! Process hardening for the serve loop: the listening socket, socket activation,
//! peer credentials, privilege drop and the seccomp allow-list.
//!
//! Intended order in `serve` (each step narrows what the next may do):
//!
//! 0. [`prepare_allocator`] before any thread exists (one malloc arena, so heap
//!    trimming never needs a syscall outside the filter);
//! 1. open the device (VFIO group/container or model) while still privileged;
//! 2. get the listener: [`open_listener`] = [`listen_fds_from_env`] (systemd socket
//!    activation) if systemd passed one, else [`create_listener`] (mode applied
//!    before the socket accepts connections); remove the socket file at exit only
//!    if [`Listener::remove_on_exit`];
//! 3. [`drop_privileges`] to the service user (optional; already-open fds stay usable);
//! 4. [`apply_seccomp`] before any thread is spawned (it also uses TSYNC, so threads
//!    that already exist get the same filter);
//! 5. serve; on every accepted connection call [`check_peer`].
//!
//! Every item is documented for operators in `docs/threat-model.md`.

mod notify;
mod privs;
mod seccomp;
mod socket;

use std::path::PathBuf;

use thiserror::Error;

pub use notify::Notifier;
pub use privs::{drop_privileges, resolve_group, resolve_user, Credentials, GroupSpec, UserSpec};
pub use seccomp::{
    allowed_syscalls, apply_seccomp, prepare_allocator, seccomp_filters, syscall_conditions,
    thread_syscalls, SeccompAction, SeccompProfile,
};
pub use socket::{
    check_peer, create_listener, listen_fds_from_env, open_listener, peer_cred, ListenFd, Listener,
    PeerCred, PeerPolicy, SocketOpts,
};

/// Errors of the sandbox layer. Messages name the path, id or syscall involved and,
/// where there is one, the fix.
#[derive(Debug, Error)]
pub enum SandboxError {
    /// The socket path cannot be used for a Unix socket.
    #[error("socket path {path:?} is invalid: {reason}")]
    InvalidPath {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// A mode with bits outside 0o777.
    #[error("socket mode {0:#o} is invalid (only permission bits 0o777 are allowed)")]
    InvalidMode(u32),
    /// Another server answers on the socket.
    #[error(
        "socket {} is in use by a running server; stop it or choose another --socket path",
        path.display()
    )]
    InUse {
        /// The path.
        path: PathBuf,
    },
    /// Something that is not a socket sits at the path; we never delete it.
    #[error("{} exists and is not a socket; remove it or choose another --socket path", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The bound socket file was replaced before its mode could be applied.
    #[error(
        "socket {} was replaced by another file before its mode was applied; make its \
         directory writable only by the service user",
        path.display()
    )]
    SocketReplaced {
        /// The path.
        path: PathBuf,
    },
    /// The socket's directory is missing and could not be created.
    #[error("socket directory {} does not exist and cannot be created ({source}); create it for the service user, e.g. `install -d -m 0750 {}`", path.display(), path.display())]
    NoSocketDir {
        /// The directory.
        path: PathBuf,
        /// Why creating it failed.
        #[source]
        source: std::io::Error,
    },
    /// A system call on a path failed.
    #[error("{op} {}: {source}", path.display())]
    PathIo {
        /// What we tried.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{op}: {source}")]
    Io {
        /// What we tried.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES` are malformed.
    #[error("invalid socket-activation environment: {0}")]
    InvalidListenEnv(String),
    /// An inherited fd is not a listening `AF_UNIX` stream socket.
    #[error("inherited fd {fd} is not a listening AF_UNIX stream socket: {reason}")]
    BadListenFd {
        /// The fd number.
        fd: i32,
        /// What is wrong with it.
        reason: String,
    },
    /// The peer is not allowed by the [`PeerPolicy`].
    #[error(
        "peer pid {} uid {} gid {} is not allowed (allowed uids {:?}, gids {:?})",
        cred.pid, cred.uid, cred.gid, allow_uids, allow_gids
    )]
    PeerRejected {
        /// Who connected.
        cred: PeerCred,
        /// The policy's uids.
        allow_uids: Vec<u32>,
        /// The policy's gids.
        allow_gids: Vec<u32>,
    },
    /// No such user/group.
    #[error("unknown {kind} {name:?} (not in the passwd/group database)")]
    UnknownId {
        /// "user" or "group".
        kind: &'static str,
        /// The name or number looked up.
        name: String,
    },
    /// A privilege change needs root.
    #[error(
        "cannot switch to uid {uid} gid {gid}: running as uid {euid}, not root; start as root \
         or drop the --user option"
    )]
    NotRoot {
        /// Target uid.
        uid: u32,
        /// Target gid.
        gid: u32,
        /// Our effective uid.
        euid: u32,
    },
    /// A step of the privilege drop failed, or its verification did.
    #[error("privilege drop failed at {step}: {detail}")]
    PrivDrop {
        /// Which step.
        step: &'static str,
        /// What happened.
        detail: String,
    },
    /// Building or installing the seccomp filter failed.
    #[error("seccomp: {0}")]
    Seccomp(String),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, SandboxError>;

fn last_os(op: &'static str) -> SandboxError {
    SandboxError::Io {
        op,
        source: std::io::Error::last_os_error(),
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Helpers for tests that need a child process (seccomp, setuid): the test binary
    //! re-runs itself with one ignored test selected and an env var naming the mode.
    #![allow(clippy::unwrap_used)]

    use std::path::PathBuf;
    use std::process::{Command, Output};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Env var naming the child mode.
    pub const CHILD_ENV: &str = "VFIO_SIDECAR_SANDBOX_CHILD";

    /// Runs `test` (full path of an `#[ignore]`d test) in a fresh test process with
    /// `CHILD_ENV=mode` and extra env.
    pub fn run_child(test: &str, mode: &str, env: &[(&str, &str)]) -> Output {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = Command::new(exe);
        cmd.args([
            "--ignored",
            "--exact",
            test,
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, mode)
        .env_remove("RUST_BACKTRACE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    /// A fresh directory under the system temp dir (mode 0755), removed by the caller.
    pub fn temp_dir(tag: &str) -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vs-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }
}
