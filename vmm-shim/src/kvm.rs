//! What every KVM back end of the shim shares, whatever the architecture: the
//! KVM device path, the "is KVM usable" check, and the watchdog that kicks the
//! vCPU thread out of `KVM_RUN` when a run's time is up.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;

/// /dev/kvm cannot be opened read-write.
#[derive(Debug, Error)]
#[error("KVM is not available on this host ({}: {source}). The shim runs its guest under KVM: use a Linux host, or a VM with nested virtualization, that exposes /dev/kvm to this user", .device.display())]
pub struct NoKvm {
    /// The device tried.
    pub device: PathBuf,
    /// Why it failed.
    pub source: std::io::Error,
}

/// The KVM device: `/dev/kvm`, or `$VMM_SHIM_KVM_DEVICE` (lets tests exercise
/// the "no KVM" path on a host that has it).
pub fn kvm_device() -> PathBuf {
    std::env::var_os("VMM_SHIM_KVM_DEVICE")
        .map(Into::into)
        .unwrap_or_else(|| "/dev/kvm".into())
}

/// Fails plainly when the KVM device cannot be opened read-write.
pub fn check_kvm() -> Result<(), NoKvm> {
    let device = kvm_device();
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&device)
        .map(|_| ())
        .map_err(|source| NoKvm { device, source })
}

/// Opens the KVM device of [`kvm_device`].
pub fn open_kvm() -> Result<kvm_ioctls::Kvm, kvm_ioctls::Error> {
    let path = std::ffi::CString::new(kvm_device().into_os_string().into_encoded_bytes())
        .map_err(|_| kvm_ioctls::Error::new(libc::EINVAL))?;
    kvm_ioctls::Kvm::new_with_path(&path)
}

static SIG: Once = Once::new();
/// Whether the no-op handler for [`kick_signal`] is installed (else sending it
/// would kill the process).
static KICK_READY: AtomicBool = AtomicBool::new(false);

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 2
}

/// Installs the no-op handler of the kick signal (once per process).
pub fn install_kick_handler() {
    SIG.call_once(|| {
        match vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler) {
            Ok(()) => KICK_READY.store(true, Ordering::Release),
            Err(e) => log::warn!("cannot install the vCPU kick handler ({e})"),
        }
    });
}

/// A thread that, once `timeout` has passed, sets [`Watchdog::expired`] and
/// keeps signalling the thread that started it (the vCPU thread) so that
/// `KVM_RUN` returns `EINTR`. Stopped and joined on drop.
#[derive(Debug)]
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    expired: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts the watchdog for the calling thread.
    pub fn start(timeout: Duration) -> Self {
        install_kick_handler();
        let stop = Arc::new(AtomicBool::new(false));
        let expired = Arc::new(AtomicBool::new(false));
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let thread = {
            let stop = stop.clone();
            let expired = expired.clone();
            let deadline = Instant::now() + timeout;
            let sig = kick_signal();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    if Instant::now() >= deadline {
                        expired.store(true, Ordering::Release);
                        if !KICK_READY.load(Ordering::Acquire) {
                            break;
                        }
                        // SAFETY: `me` is the thread that owns this watchdog, alive
                        // until it drops it (which sets `stop` and joins us first);
                        // the signal has a no-op handler.
                        unsafe { libc::pthread_kill(me, sig) };
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Watchdog {
            stop,
            expired,
            thread: Some(thread),
        }
    }

    /// Whether the time is up.
    pub fn expired(&self) -> bool {
        self.expired.load(Ordering::Acquire)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Errors of [`map_sparse_slot`].
#[derive(Debug, Error)]
pub enum SlotError {
    /// mmap of the area failed.
    #[error("mmap of device region {index} area at {offset:#x}: {source}")]
    Mmap {
        /// Region index.
        index: u32,
        /// fd offset.
        offset: u64,
        /// OS error.
        source: std::io::Error,
    },
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("KVM set_user_memory_region(sparse): {0}")]
    Kvm(kvm_ioctls::Error),
}

/// mmaps a sparse area from the backend's region fd (`region_fd_offset` is
/// the region's offset in `fd`, from REGION_INFO) and registers it as KVM
/// memory slot `slot_no`: guest accesses there never exit.
///
/// # Safety
///
/// The returned mapping backs guest memory: the caller must keep it alive
/// until the VM (`vm`) is closed.
pub unsafe fn map_sparse_slot(
    vm: &kvm_ioctls::VmFd,
    slot_no: u32,
    slot: &crate::mmio::SparseSlot,
    fd: std::os::fd::BorrowedFd<'_>,
    region_fd_offset: u64,
) -> Result<crate::memory::SharedMapping, SlotError> {
    let offset = region_fd_offset.saturating_add(slot.region_offset);
    let merr = |source| SlotError::Mmap {
        index: slot.index,
        offset,
        source,
    };
    let len = usize::try_from(slot.size).map_err(|_| merr(std::io::Error::other("size")))?;
    let map = crate::memory::SharedMapping::of_fd(fd, offset, len).map_err(merr)?;
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: slot_no,
        flags: 0,
        guest_phys_addr: slot.gpa,
        memory_size: slot.size,
        userspace_addr: map.host_addr(),
    };
    // SAFETY: the region describes `map`, which the caller keeps alive as
    // long as the VM (this function's contract).
    unsafe { vm.set_user_memory_region(region) }.map_err(SlotError::Kvm)?;
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_expires_and_interrupts_a_blocking_call() {
        let w = Watchdog::start(Duration::from_millis(50));
        assert!(!w.expired() || cfg!(miri));
        // A blocking read that only the kick signal can end (EINTR): the
        // handler is installed without SA_RESTART.
        let mut fds = [0; 2];
        // SAFETY: pipe() fills the two-element array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let mut b = [0u8; 1];
        // SAFETY: read into a local one-byte buffer from our pipe.
        let n = unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) };
        let err = std::io::Error::last_os_error();
        assert_eq!(n, -1);
        assert_eq!(err.raw_os_error(), Some(libc::EINTR));
        assert!(w.expired());
        drop(w);
        for fd in fds {
            // SAFETY: closing the pipe fds we created.
            unsafe { libc::close(fd) };
        }
    }

    #[test]
    fn missing_kvm_device_is_reported_with_its_path() {
        let e = NoKvm {
            device: "/nonexistent/kvm".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        };
        let s = e.to_string();
        assert!(s.contains("/nonexistent/kvm") && s.contains("KVM is not available"));
    }
}
