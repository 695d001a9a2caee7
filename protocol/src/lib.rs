//! vfio-user 0.9.2 protocol for vfio-sidecar: wire format, fd passing, a
//! blocking client and a non-blocking server connection. No device logic.
//!
//! Modules: [`header`] (16-byte header), [`message`] (typed payloads),
//! [`caps`] (VERSION capabilities, limits, the `org.vfio-sidecar` extension
//! key), [`ext`] (extension data types), [`transport`] (framing + SCM_RIGHTS),
//! [`client`] (blocking [`Client`]), [`server`] ([`ServerConnection`] +
//! [`Handler`]), [`error`].
//!
//! See `docs/protocol.md` for the wire format and every extension byte.
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod caps;
pub mod client;
pub mod error;
pub mod ext;
pub mod header;
pub mod message;
pub mod peerlog;
pub mod server;
#[doc(hidden)]
pub mod testing;
pub mod transport;

pub use caps::{Capabilities, Limits, Negotiated, SidecarCaps};

pub use error::{ClientError, DecodeError, DmaXferError, Errno, ServerError, TransportError};

pub use client::{Client, ClientOptions, DmaProt};
pub use server::{ConnStatus, Handler, ServerConnection, ShutdownHandle};
