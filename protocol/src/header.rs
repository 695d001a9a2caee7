//! The 16-byte vfio-user message header (spec section "Header").
//!
//! All integers are in host byte order (the spec: "all data is in the
//! endianness of the host system").

/// Size of the header in bytes.
pub const HEADER_SIZE: usize = 16;

/// Bits of the header `flags` field.
pub mod flags {
    /// Mask of the message type (bits 0-3).
    pub const TYPE_MASK: u32 = 0xf;
    /// Type value of a command (request) message.
    pub const TYPE_COMMAND: u32 = 0;
    /// Type value of a reply message.
    pub const TYPE_REPLY: u32 = 1;
    /// The sender does not want a reply (bit 4).
    pub const NO_REPLY: u32 = 1 << 4;
    /// The reply reports an error; the `error` field holds the errno (bit 5).
    pub const ERROR: u32 = 1 << 5;
}

/// Command numbers (spec "Commands" table plus the vfio-sidecar extension).
pub mod command {
    /// `VFIO_USER_VERSION`.
    pub const VERSION: u16 = 1;
    /// `VFIO_USER_DMA_MAP`.
    pub const DMA_MAP: u16 = 2;
    /// `VFIO_USER_DMA_UNMAP`.
    pub const DMA_UNMAP: u16 = 3;
    /// `VFIO_USER_DEVICE_GET_INFO`.
    pub const DEVICE_GET_INFO: u16 = 4;
    /// `VFIO_USER_DEVICE_GET_REGION_INFO`.
    pub const DEVICE_GET_REGION_INFO: u16 = 5;
    /// `VFIO_USER_DEVICE_GET_REGION_IO_FDS`.
    pub const DEVICE_GET_REGION_IO_FDS: u16 = 6;
    /// `VFIO_USER_DEVICE_GET_IRQ_INFO`.
    pub const DEVICE_GET_IRQ_INFO: u16 = 7;
    /// `VFIO_USER_DEVICE_SET_IRQS`.
    pub const DEVICE_SET_IRQS: u16 = 8;
    /// `VFIO_USER_REGION_READ`.
    pub const REGION_READ: u16 = 9;
    /// `VFIO_USER_REGION_WRITE`.
    pub const REGION_WRITE: u16 = 10;
    /// `VFIO_USER_DMA_READ` (server to client).
    pub const DMA_READ: u16 = 11;
    /// `VFIO_USER_DMA_WRITE` (server to client).
    pub const DMA_WRITE: u16 = 12;
    /// `VFIO_USER_DEVICE_RESET`.
    pub const DEVICE_RESET: u16 = 13;
    /// `VFIO_USER_REGION_WRITE_MULTI`.
    pub const REGION_WRITE_MULTI: u16 = 15;
    /// `VFIO_USER_DEVICE_FEATURE` (not implemented: answered with ENOSYS).
    pub const DEVICE_FEATURE: u16 = 16;
    /// `VFIO_USER_MIG_DATA_READ` (not implemented: answered with ENOSYS).
    pub const MIG_DATA_READ: u16 = 17;
    /// `VFIO_USER_MIG_DATA_WRITE` (not implemented: answered with ENOSYS).
    pub const MIG_DATA_WRITE: u16 = 18;
    /// vfio-sidecar extension: get the device description (JSON + DTB).
    pub const SIDECAR_GET_DEVICE_DESC: u16 = 0x7f00;
    /// vfio-sidecar extension: get per-vector interrupt statistics.
    pub const SIDECAR_GET_IRQ_STATS: u16 = 0x7f01;

    /// A short name for logs and errors.
    pub fn name(cmd: u16) -> &'static str {
        match cmd {
            VERSION => "VERSION",
            DMA_MAP => "DMA_MAP",
            DMA_UNMAP => "DMA_UNMAP",
            DEVICE_GET_INFO => "DEVICE_GET_INFO",
            DEVICE_GET_REGION_INFO => "DEVICE_GET_REGION_INFO",
            DEVICE_GET_REGION_IO_FDS => "DEVICE_GET_REGION_IO_FDS",
            DEVICE_GET_IRQ_INFO => "DEVICE_GET_IRQ_INFO",
            DEVICE_SET_IRQS => "DEVICE_SET_IRQS",
            REGION_READ => "REGION_READ",
            REGION_WRITE => "REGION_WRITE",
            DMA_READ => "DMA_READ",
            DMA_WRITE => "DMA_WRITE",
            DEVICE_RESET => "DEVICE_RESET",
            REGION_WRITE_MULTI => "REGION_WRITE_MULTI",
            DEVICE_FEATURE => "DEVICE_FEATURE",
            MIG_DATA_READ => "MIG_DATA_READ",
            MIG_DATA_WRITE => "MIG_DATA_WRITE",
            SIDECAR_GET_DEVICE_DESC => "SIDECAR_GET_DEVICE_DESC",
            SIDECAR_GET_IRQ_STATS => "SIDECAR_GET_IRQ_STATS",
            _ => "UNKNOWN",
        }
    }
}

/// The message type carried in bits 0-3 of `flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgType {
    /// A command (request).
    Command,
    /// A reply.
    Reply,
    /// Any other value (invalid in this protocol version).
    Other(u8),
}

/// A decoded message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Message ID chosen by the sender of a command, echoed in the reply.
    pub msg_id: u16,
    /// Command number (see [`command`]).
    pub command: u16,
    /// Size of the whole message including this header.
    pub size: u32,
    /// Flags (see [`flags`]).
    pub flags: u32,
    /// Errno of an error reply (0 otherwise).
    pub error: u32,
}

impl Header {
    /// A command header for a payload of `payload_len` bytes.
    ///
    /// `payload_len` must be below `u32::MAX - 16`; callers bound it with the limits.
    pub fn command(msg_id: u16, command: u16, payload_len: usize) -> Self {
        Header {
            msg_id,
            command,
            size: size_for(payload_len),
            flags: flags::TYPE_COMMAND,
            error: 0,
        }
    }

    /// A success reply to `req` with a payload of `payload_len` bytes.
    pub fn reply_to(req: &Header, payload_len: usize) -> Self {
        Header {
            msg_id: req.msg_id,
            command: req.command,
            size: size_for(payload_len),
            flags: flags::TYPE_REPLY,
            error: 0,
        }
    }

    /// An error reply to `req` (header only) carrying `errno`.
    pub fn error_reply(req: &Header, errno: i32) -> Self {
        Header {
            msg_id: req.msg_id,
            command: req.command,
            size: HEADER_SIZE as u32,
            flags: flags::TYPE_REPLY | flags::ERROR,
            error: errno as u32,
        }
    }

    /// The message type.
    pub fn msg_type(&self) -> MsgType {
        match self.flags & flags::TYPE_MASK {
            flags::TYPE_COMMAND => MsgType::Command,
            flags::TYPE_REPLY => MsgType::Reply,
            t => MsgType::Other(t as u8),
        }
    }

    /// True for a reply.
    pub fn is_reply(&self) -> bool {
        self.msg_type() == MsgType::Reply
    }

    /// True if the No_reply bit is set.
    pub fn no_reply(&self) -> bool {
        self.flags & flags::NO_REPLY != 0
    }

    /// True if the Error bit is set.
    pub fn is_error(&self) -> bool {
        self.flags & flags::ERROR != 0
    }

    /// Payload length declared by `size` (0 when `size` is below the header size).
    pub fn payload_len(&self) -> usize {
        (self.size as usize).saturating_sub(HEADER_SIZE)
    }

    /// Encodes the header into 16 bytes.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..2].copy_from_slice(&self.msg_id.to_ne_bytes());
        b[2..4].copy_from_slice(&self.command.to_ne_bytes());
        b[4..8].copy_from_slice(&self.size.to_ne_bytes());
        b[8..12].copy_from_slice(&self.flags.to_ne_bytes());
        b[12..16].copy_from_slice(&self.error.to_ne_bytes());
        b
    }

    /// Decodes 16 bytes. Every bit pattern is a header; validation is the caller's.
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Self {
        Header {
            msg_id: u16::from_ne_bytes([b[0], b[1]]),
            command: u16::from_ne_bytes([b[2], b[3]]),
            size: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            flags: u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            error: u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
        }
    }
}

fn size_for(payload_len: usize) -> u32 {
    u32::try_from(payload_len.saturating_add(HEADER_SIZE)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_layout() {
        let h = Header {
            msg_id: 0x1234,
            command: command::DMA_MAP,
            size: 48,
            flags: flags::TYPE_REPLY | flags::ERROR,
            error: 22,
        };
        let b = h.encode();
        assert_eq!(&b[0..2], &0x1234u16.to_ne_bytes());
        assert_eq!(&b[2..4], &2u16.to_ne_bytes());
        assert_eq!(&b[4..8], &48u32.to_ne_bytes());
        assert_eq!(&b[8..12], &0x21u32.to_ne_bytes());
        assert_eq!(&b[12..16], &22u32.to_ne_bytes());
        let d = Header::decode(&b);
        assert_eq!(d, h);
        assert!(d.is_reply());
        assert!(d.is_error());
        assert!(!d.no_reply());
        assert_eq!(d.payload_len(), 32);
    }

    #[test]
    fn types_and_error_reply() {
        let req = Header::command(7, command::REGION_READ, 16);
        assert_eq!(req.size, 32);
        assert_eq!(req.msg_type(), MsgType::Command);
        let e = Header::error_reply(&req, libc::ENOSYS);
        assert_eq!(e.msg_id, 7);
        assert_eq!(e.command, command::REGION_READ);
        assert_eq!(e.size, 16);
        assert!(e.is_reply() && e.is_error());
        assert_eq!(e.error, libc::ENOSYS as u32);
        let odd = Header {
            flags: 5,
            ..Header::default()
        };
        assert_eq!(odd.msg_type(), MsgType::Other(5));
        let small = Header {
            size: 3,
            ..Header::default()
        };
        assert_eq!(small.payload_len(), 0);
        assert_eq!(command::name(0x7f00), "SIDECAR_GET_DEVICE_DESC");
        assert_eq!(command::name(999), "UNKNOWN");
    }
}
