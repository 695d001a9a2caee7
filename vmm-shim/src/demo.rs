//! `vmm-shim demo`: a private backend process on a temporary socket, one run,
//! clean-up. Also the /dev/kvm check shared by the commands.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::backend::EoiName;
use crate::link::ProtoBackend;
use crate::runner::{self, RunError, RunOptions, Summary};

/// Errors of the demo.
#[derive(Debug, Error)]
pub enum DemoError {
    /// No usable /dev/kvm.
    #[error(transparent)]
    NoKvm(#[from] crate::kvm::NoKvm),
    /// Temporary directory / process problems.
    #[error("{0}")]
    Setup(String),
    /// The backend process failed to come up.
    #[error("backend did not start: {0}")]
    Backend(String),
    /// The run failed.
    #[error(transparent)]
    Run(#[from] RunError),
}

/// Fails plainly when /dev/kvm cannot be opened read-write.
pub fn check_kvm() -> Result<(), DemoError> {
    Ok(crate::kvm::check_kvm()?)
}

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The guest run.
    pub run: RunOptions,
    /// Backend binary override.
    pub backend: Option<PathBuf>,
    /// Device string for the backend (`model:pl330`).
    pub device: String,
    /// Extra arguments for the backend's `serve` (e.g. `--no-dmago-gate`).
    pub backend_args: Vec<String>,
}

/// The backend program `demo` starts (`serve` is the subcommand): `--backend
/// PATH`, else the `vfio-sidecar` binary next to this executable (`cargo build
/// --release` puts them side by side). The shim embeds no backend: the two
/// halves meet only on the socket.
pub fn backend_command(explicit: Option<&Path>) -> Result<PathBuf, DemoError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe().map_err(|e| DemoError::Setup(format!("current_exe: {e}")))?;
    let sibling = exe
        .parent()
        .map(|d| d.join("vfio-sidecar"))
        .ok_or_else(|| DemoError::Setup(format!("{} has no directory", exe.display())))?;
    if sibling.is_file() {
        return Ok(sibling);
    }
    Err(DemoError::Backend(format!(
        "no vfio-sidecar binary next to {} (build both: `cargo build --release`), or pass --backend PATH",
        exe.display()
    )))
}

/// A private directory removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self, DemoError> {
        let base = std::env::temp_dir();
        for attempt in 0..100u32 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let p = base.join(format!(
                "vmm-shim-{}-{nanos:x}-{attempt}",
                std::process::id()
            ));
            let mut b = std::fs::DirBuilder::new();
            std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
            match b.create(&p) {
                Ok(()) => return Ok(TempDir(p)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(DemoError::Setup(format!(
                        "cannot create {}: {e}",
                        p.display()
                    )))
                }
            }
        }
        Err(DemoError::Setup(
            "cannot create a temporary directory".into(),
        ))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The backend child, stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
struct BackendProcess(Child);

impl Drop for BackendProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            if let Ok(pid) = libc::pid_t::try_from(self.0.id()) {
                // SAFETY: signalling our own child by its pid; it has not been reaped.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Starts the backend on a private socket, runs the guest, stops the backend.
pub fn demo(opts: &DemoOptions) -> Result<Summary, DemoError> {
    check_kvm()?;
    let r = &opts.run;
    crate::plan::plan(r.transfers, r.max_size, 8, true, r.seed).map_err(RunError::from)?;
    let dir = TempDir::new()?;
    let socket = dir.0.join("pl330.sock");
    let program = backend_command(opts.backend.as_deref())?;
    let mut cmd = Command::new(&program);
    cmd.arg("serve")
        .arg("--socket")
        .arg(&socket)
        .arg("--device")
        .arg(&opts.device)
        .arg("--eoi")
        .arg(opts.run.eoi.name())
        .args(&opts.backend_args);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "warn");
    }
    log::info!("starting backend: {cmd:?}");
    let child = cmd
        .spawn()
        .map_err(|e| DemoError::Backend(format!("{}: {e}", program.display())))?;
    let mut child = BackendProcess(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut backend = loop {
        if let Ok(Some(status)) = child.0.try_wait() {
            return Err(DemoError::Backend(format!(
                "{} exited with {status}",
                program.display()
            )));
        }
        if socket.exists() {
            match ProtoBackend::connect(&socket, Duration::from_secs(5)) {
                Ok(b) => break b,
                Err(e) if Instant::now() >= deadline => {
                    return Err(DemoError::Backend(e.to_string()))
                }
                Err(_) => {}
            }
        }
        if Instant::now() >= deadline {
            return Err(DemoError::Backend(format!(
                "no socket at {} after 10 s",
                socket.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let summary = runner::run(&mut backend, &opts.run)?;
    drop(backend);
    drop(child);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn backend_command_is_explicit_or_the_sibling_binary() {
        let p = backend_command(Some(Path::new("/opt/x/vfio-sidecar"))).unwrap();
        assert_eq!(p, Path::new("/opt/x/vfio-sidecar"));
        let exe = std::env::current_exe().unwrap();
        let sibling = exe.parent().unwrap().join("vfio-sidecar");
        match backend_command(None) {
            Ok(p) => assert_eq!(p, sibling),
            Err(e) => {
                assert!(!sibling.is_file());
                let m = e.to_string();
                assert!(
                    m.contains("no vfio-sidecar binary next to") && m.contains("--backend"),
                    "{m}"
                );
            }
        }
    }

    #[test]
    fn temp_dir_is_private_and_removed() {
        let d = TempDir::new().unwrap();
        let p = d.0.clone();
        let mode = std::fs::metadata(&p).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o700
        );
        drop(d);
        assert!(!p.exists());
    }
}
