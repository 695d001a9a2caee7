//! systemd readiness notification (`sd_notify(3)` protocol, no libsystemd).
//!
//! With `Type=notify` systemd passes `NOTIFY_SOCKET` (a filesystem path, or an
//! abstract name written `@name`); the service sends datagrams such as
//! `READY=1` to it. [`Notifier::from_env`] makes the datagram socket early,
//! before the seccomp filter (which forbids `socket(2)`); sending later only
//! needs `sendto(2)`, which the allow-list has. The variable is removed from
//! the environment so nothing the backend might start inherits it.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where to send readiness and status messages, if systemd asked for them.
#[derive(Debug)]
pub struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// `Some` when `NOTIFY_SOCKET` names a socket; an unusable value is an
    /// error naming it (systemd would otherwise wait for READY until its timeout).
    pub fn from_env() -> io::Result<Option<Notifier>> {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        std::env::remove_var("NOTIFY_SOCKET");
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = match bytes.split_first() {
            Some((b'@', name)) => SocketAddr::from_abstract_name(name)?,
            Some((b'/', _)) => SocketAddr::from_pathname(&path)?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("NOTIFY_SOCKET={path:?} is neither an absolute path nor @abstract"),
                ))
            }
        };
        Ok(Some(Notifier {
            sock: UnixDatagram::unbound()?,
            addr,
        }))
    }

    /// Sends one notification (`READY=1`, `STATUS=...`, `STOPPING=1`).
    pub fn send(&self, state: &str) -> io::Result<()> {
        self.sock
            .send_to_addr(state.as_bytes(), &self.addr)
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn sends_to_a_path_and_to_an_abstract_name() {
        let dir = crate::sandbox::testutil::temp_dir("notify");
        let path = dir.join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            sock: UnixDatagram::unbound().unwrap(),
            addr: SocketAddr::from_pathname(&path).unwrap(),
        };
        n.send("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");

        let name = format!("vfio-sidecar-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        let n = Notifier {
            sock: UnixDatagram::unbound().unwrap(),
            addr: SocketAddr::from_abstract_name(&name).unwrap(),
        };
        n.send("STOPPING=1").unwrap();
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
