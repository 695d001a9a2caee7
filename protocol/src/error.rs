//! Error types of the protocol layer.

use std::fmt;
use std::io;

use thiserror::Error;

/// A UNIX errno as carried in an error reply. A small newtype around `i32`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// Operation not permitted.
    pub const EPERM: Errno = Errno(libc::EPERM);
    /// No such entry.
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    /// I/O error.
    pub const EIO: Errno = Errno(libc::EIO);
    /// Argument list / message too long.
    pub const E2BIG: Errno = Errno(libc::E2BIG);
    /// Out of memory.
    pub const ENOMEM: Errno = Errno(libc::ENOMEM);
    /// Permission denied.
    pub const EACCES: Errno = Errno(libc::EACCES);
    /// Bad address.
    pub const EFAULT: Errno = Errno(libc::EFAULT);
    /// Device or resource busy.
    pub const EBUSY: Errno = Errno(libc::EBUSY);
    /// Already exists (DMA_MAP over an existing mapping).
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    /// Invalid argument.
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    /// No space left (too many DMA mappings).
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    /// Function not implemented (unknown or not negotiated command).
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
    /// Operation not supported.
    pub const ENOTSUP: Errno = Errno(libc::ENOTSUP);

    /// The raw errno value.
    pub fn raw(self) -> i32 {
        self.0
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Errno({}: {})",
            self.0,
            io::Error::from_raw_os_error(self.0)
        )
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (errno {})",
            io::Error::from_raw_os_error(self.0),
            self.0
        )
    }
}

impl std::error::Error for Errno {}

impl From<&io::Error> for Errno {
    fn from(e: &io::Error) -> Self {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl From<io::Error> for Errno {
    fn from(e: io::Error) -> Self {
        Errno::from(&e)
    }
}

/// A payload (or capability JSON) could not be decoded or failed validation.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the fixed part of the message.
    #[error("{what}: payload too short (need {need} bytes, have {have})")]
    Truncated {
        /// Message or structure name.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The payload length does not match what the fields declare.
    #[error("{what}: payload length {have} does not match the expected {expected}")]
    Length {
        /// Message or structure name.
        what: &'static str,
        /// Bytes expected from the fields.
        expected: usize,
        /// Bytes present.
        have: usize,
    },
    /// A field has an invalid value.
    #[error("{what}: {reason}")]
    Invalid {
        /// Message or structure name.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// Wrong number of file descriptors for this message.
    #[error("{what}: expected {expected} file descriptors, got {got}")]
    FdCount {
        /// Message name.
        what: &'static str,
        /// Expected count (description).
        expected: String,
        /// Received count.
        got: usize,
    },
    /// A size or count exceeds the negotiated limits.
    #[error("{what}: {reason}")]
    Limit {
        /// Message name.
        what: &'static str,
        /// Which limit.
        reason: String,
    },
}

impl DecodeError {
    /// The errno to put in an error reply for this decode failure.
    pub fn errno(&self) -> Errno {
        Errno::EINVAL
    }

    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        DecodeError::Invalid {
            what,
            reason: reason.into(),
        }
    }

    pub(crate) fn truncated(what: &'static str, need: usize, have: usize) -> Self {
        DecodeError::Truncated { what, need, have }
    }

    pub(crate) fn length(what: &'static str, expected: usize, have: usize) -> Self {
        DecodeError::Length {
            what,
            expected,
            have,
        }
    }
}

/// Errors of the framing/fd-passing layer.
#[derive(Debug, Error)]
pub enum TransportError {
    /// The peer closed the connection (EOF, ECONNRESET, EPIPE).
    #[error("peer disconnected")]
    Disconnected,
    /// No (complete) message within the timeout.
    #[error("timed out")]
    Timeout,
    /// A message was too large to send under the limits.
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Size of the message.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Too many file descriptors to send under the limits.
    #[error("{count} file descriptors exceed the limit of {limit}")]
    TooManyFds {
        /// Number of fds.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The peer declared a message so large that skipping it is not reasonable.
    #[error("peer declared a message of {0} bytes; connection closed")]
    Unskippable(u32),
    /// Other socket error.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

/// Errors of the blocking [`crate::client::Client`].
#[derive(Debug, Error)]
pub enum ClientError {
    /// The server closed the connection or died.
    #[error("server disconnected")]
    Disconnected,
    /// No reply within the reply timeout.
    #[error("timed out waiting for the reply to {command}")]
    Timeout {
        /// Command name.
        command: &'static str,
    },
    /// The server answered with an error reply.
    #[error("server returned an error for {command}: {errno}")]
    Remote {
        /// Command name.
        command: &'static str,
        /// The errno from the reply.
        errno: Errno,
    },
    /// The server's reply could not be decoded.
    #[error("bad reply to {command}: {source}")]
    BadReply {
        /// Command name.
        command: &'static str,
        /// What was wrong.
        #[source]
        source: DecodeError,
    },
    /// VERSION negotiation failed.
    #[error("version negotiation failed: {0}")]
    Negotiation(String),
    /// The request is not allowed by the negotiated limits or capabilities.
    #[error("request not allowed: {0}")]
    NotAllowed(String),
    /// Socket error.
    #[error("transport error: {0}")]
    Transport(TransportError),
}

impl From<TransportError> for ClientError {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::Disconnected => ClientError::Disconnected,
            e => ClientError::Transport(e),
        }
    }
}

/// Errors of a [`crate::server::ServerConnection`] that end the connection.
#[derive(Debug, Error)]
pub enum ServerError {
    /// Socket error (other than a clean disconnect, which is `ConnStatus::Closed`).
    #[error("transport error: {0}")]
    Transport(#[from] TransportError),
    /// The client violated the protocol in a way that cannot be recovered.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// Why a server-to-client `DMA_READ`/`DMA_WRITE` did not complete (the
/// device layer turns every one into a DMA fault; the connection stays up
/// unless the error says the peer is gone).
#[derive(Debug, Error)]
pub enum DmaXferError {
    /// Called before VERSION was negotiated.
    #[error("DMA request before VERSION negotiation")]
    NotNegotiated,
    /// The client did not answer within the DMA reply timeout.
    #[error("client did not answer {command} at {address:#x} within {timeout_ms} ms")]
    Timeout {
        /// `DMA_READ` or `DMA_WRITE`.
        command: &'static str,
        /// Client DMA address of the piece.
        address: u64,
        /// The timeout.
        timeout_ms: u64,
    },
    /// The client answered with an error reply.
    #[error("client refused {command} at {address:#x}: {errno}")]
    Remote {
        /// `DMA_READ` or `DMA_WRITE`.
        command: &'static str,
        /// Client DMA address of the piece.
        address: u64,
        /// The errno of the reply.
        errno: Errno,
    },
    /// The reply did not match the request (address, count, data length).
    #[error("bad {command} reply from the client: {reason}")]
    BadReply {
        /// `DMA_READ` or `DMA_WRITE`.
        command: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The client went away (or the connection must close) while the
    /// request was outstanding.
    #[error("client disconnected during {command}")]
    Disconnected {
        /// `DMA_READ` or `DMA_WRITE`.
        command: &'static str,
    },
    /// Socket error.
    #[error("transport error during DMA request: {0}")]
    Transport(#[from] TransportError),
}

impl DmaXferError {
    /// True when the connection is unusable afterwards.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            DmaXferError::Disconnected { .. } | DmaXferError::Transport(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_conversions() {
        let e = io::Error::from_raw_os_error(libc::EEXIST);
        assert_eq!(Errno::from(&e), Errno::EEXIST);
        let e = io::Error::other("x");
        assert_eq!(Errno::from(e), Errno::EIO);
        assert_eq!(Errno::ENOSYS.raw(), libc::ENOSYS);
        assert!(format!("{}", Errno::EINVAL).contains("22"));
        assert_eq!(DecodeError::invalid("X", "bad").errno(), Errno::EINVAL);
        assert!(matches!(
            ClientError::from(TransportError::Disconnected),
            ClientError::Disconnected
        ));
    }
}
