//! `VFIO_USER_VERSION` capabilities (the JSON object), our limits, the
//! vfio-sidecar extension key and the negotiation rules.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{DecodeError, Errno};
use crate::header::HEADER_SIZE;

/// Protocol major version spoken (libvfio-user and QEMU send 0.1).
pub const VERSION_MAJOR: u16 = 0;
/// Highest protocol minor version spoken.
pub const VERSION_MINOR: u16 = 1;

/// The one namespaced capability key of the vfio-sidecar extension.
pub const SIDECAR_CAP_KEY: &str = "org.vfio-sidecar";
/// Version of the vfio-sidecar extension described here.
pub const SIDECAR_VERSION: u32 = 1;

/// Spec default of `max_msg_fds` when the peer does not state it.
pub const DEFAULT_PEER_MAX_MSG_FDS: u32 = 1;
/// Spec default of `max_data_xfer_size`.
pub const DEFAULT_MAX_DATA_XFER_SIZE: u32 = 1 << 20;
/// Spec default of `max_dma_maps`.
pub const DEFAULT_PEER_MAX_DMA_MAPS: u32 = 65535;
/// Spec default of `pgsizes` (4 KiB pages only).
pub const DEFAULT_PGSIZES: u64 = 4096;

/// Payload room every message size limit leaves for non-data messages
/// (VERSION JSON, region info with capabilities, device description, ...).
pub const MIN_CONTROL_PAYLOAD: usize = 64 * 1024;
/// Bytes of fixed fields that may precede `max_data_xfer_size` data bytes.
pub const DATA_MSG_OVERHEAD: usize = 32;

/// Local resource limits, enforced on whatever this end receives and
/// advertised to the peer in VERSION.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most file descriptors accepted in one message (default 16).
    pub max_msg_fds: u32,
    /// Largest `count` of a data transfer accepted (default 1 MiB).
    pub max_data_xfer_size: u32,
    /// Most DMA mappings valid at once (default 65535: QEMU's vfio-user client refuses more).
    pub max_dma_maps: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_msg_fds: 16,
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER_SIZE,
            max_dma_maps: 65535,
        }
    }
}

impl Limits {
    /// Largest whole message (header included) accepted:
    /// `16 + 32 + max(max_data_xfer_size, 64 KiB)`.
    pub fn max_msg_size(&self) -> usize {
        HEADER_SIZE
            + DATA_MSG_OVERHEAD
            + (self.max_data_xfer_size as usize).max(MIN_CONTROL_PAYLOAD)
    }

    /// Limits derived from a capability set (what that side accepts).
    pub fn from_caps(c: &Capabilities) -> Self {
        Limits {
            max_msg_fds: c.max_msg_fds,
            max_data_xfer_size: c.max_data_xfer_size,
            max_dma_maps: c.max_dma_maps,
        }
    }
}

/// The vfio-sidecar extension capability (value of the `"org.vfio-sidecar"` key).
///
/// The client proposes `{"version":1,"dma_exec":true,"platform":true,"eoi":true}`;
/// the server answers with the subset it accepts plus `exec_enforced`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarCaps {
    /// Extension version (1).
    pub version: u32,
    /// The DMA_MAP EXEC permission bit ([`crate::message::DMA_MAP_FLAG_EXEC`]).
    #[serde(default)]
    pub dma_exec: bool,
    /// Platform/AMBA device support: `SIDECAR_GET_DEVICE_DESC`.
    #[serde(default)]
    pub platform: bool,
    /// Per-IRQ EOI policy in the device description and `SIDECAR_GET_IRQ_STATS`.
    #[serde(default)]
    pub eoi: bool,
    /// Server reply only: whether a missing EXEC permission is enforced
    /// (false on real VFIO: "exec implied, no-exec not enforceable").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_enforced: Option<bool>,
}

impl SidecarCaps {
    /// What a client proposes: everything, version 1.
    pub fn client_proposal() -> Self {
        SidecarCaps {
            version: SIDECAR_VERSION,
            dma_exec: true,
            platform: true,
            eoi: true,
            exec_enforced: None,
        }
    }

    /// True if `self` (a reply) only contains features present in `proposal`.
    pub fn is_subset_of(&self, proposal: &SidecarCaps) -> bool {
        self.version >= 1
            && self.version <= proposal.version
            && (!self.dma_exec || proposal.dma_exec)
            && (!self.platform || proposal.platform)
            && (!self.eoi || proposal.eoi)
    }
}

/// A capability set as sent in VERSION (missing keys take the spec defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Most fds the sender can receive in one message (spec default 1).
    pub max_msg_fds: u32,
    /// Largest data transfer `count` the sender accepts (default 1 MiB).
    pub max_data_xfer_size: u32,
    /// Most DMA mappings (default 65535).
    pub max_dma_maps: u32,
    /// Supported DMA page sizes, or'ed (default 4096).
    pub pgsizes: u64,
    /// `VFIO_USER_REGION_WRITE_MULTI` supported.
    pub write_multiple: bool,
    /// `twin_socket.supported` as proposed; this implementation never enables it.
    pub twin_socket: bool,
    /// The peer sent a `migration` object. Migration is not supported: the key
    /// is parsed, ignored and never sent.
    pub migration: bool,
    /// The vfio-sidecar extension, if present.
    pub sidecar: Option<SidecarCaps>,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            max_msg_fds: DEFAULT_PEER_MAX_MSG_FDS,
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER_SIZE,
            max_dma_maps: DEFAULT_PEER_MAX_DMA_MAPS,
            pgsizes: DEFAULT_PGSIZES,
            write_multiple: false,
            twin_socket: false,
            migration: false,
            sidecar: None,
        }
    }
}

/// A capability error: the VERSION payload is invalid (EINVAL).
fn bad_caps(reason: impl Into<String>) -> DecodeError {
    DecodeError::invalid("VERSION", reason)
}

type Object = Map<String, Value>;

fn get_object<'a>(obj: &'a Object, key: &'static str) -> Result<Option<&'a Object>, DecodeError> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(bad_caps(format!("{key} is not an object"))),
    }
}

/// `get`, where a value of 0 is an error.
fn get_nonzero<T: Default + PartialEq>(
    obj: &Object,
    key: &'static str,
    get: fn(&Object, &'static str) -> Result<Option<T>, DecodeError>,
) -> Result<Option<T>, DecodeError> {
    let v = get(obj, key)?;
    if v == Some(T::default()) {
        return Err(bad_caps(format!("{key} is 0")));
    }
    Ok(v)
}

fn get_u64(obj: &Object, key: &'static str) -> Result<Option<u64>, DecodeError> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad_caps(format!("{key} is not an unsigned integer"))),
    }
}

fn get_u32(obj: &Object, key: &'static str) -> Result<Option<u32>, DecodeError> {
    match get_u64(obj, key)? {
        None => Ok(None),
        Some(v) => u32::try_from(v)
            .map(Some)
            .map_err(|_| bad_caps(format!("{key} out of range"))),
    }
}

fn get_bool(obj: &Object, key: &'static str) -> Result<Option<bool>, DecodeError> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| bad_caps(format!("{key} is not a boolean"))),
    }
}

impl Capabilities {
    /// The capabilities a side with `limits` advertises (no optional features).
    pub fn from_limits(limits: &Limits) -> Self {
        Capabilities {
            max_msg_fds: limits.max_msg_fds,
            max_data_xfer_size: limits.max_data_xfer_size,
            max_dma_maps: limits.max_dma_maps,
            ..Capabilities::default()
        }
    }

    /// The JSON text `{"capabilities":{...}}` (without the terminating NUL).
    pub fn to_json(&self) -> String {
        let mut caps = Map::new();
        caps.insert("max_msg_fds".into(), Value::from(self.max_msg_fds));
        caps.insert(
            "max_data_xfer_size".into(),
            Value::from(self.max_data_xfer_size),
        );
        caps.insert("max_dma_maps".into(), Value::from(self.max_dma_maps));
        caps.insert("pgsizes".into(), Value::from(self.pgsizes));
        if self.write_multiple {
            caps.insert("write_multiple".into(), Value::Bool(true));
        }
        if let Some(s) = &self.sidecar {
            // Serializing a plain struct of integers and booleans cannot fail.
            if let Ok(v) = serde_json::to_value(s) {
                caps.insert(SIDECAR_CAP_KEY.into(), v);
            }
        }
        let mut top = Map::new();
        top.insert("capabilities".into(), Value::Object(caps));
        Value::Object(top).to_string()
    }

    /// Parses the VERSION `version data` bytes: NUL-terminated UTF-8 JSON, or
    /// empty (all defaults). Unknown keys are ignored; known keys with a wrong
    /// type, a missing NUL or bad JSON are `DecodeError` (EINVAL).
    pub fn from_version_data(data: &[u8]) -> Result<Self, DecodeError> {
        if data.is_empty() {
            return Ok(Capabilities::default());
        }
        let Some((&0, json)) = data.split_last() else {
            return Err(bad_caps("version data is not NUL-terminated"));
        };
        if json.contains(&0) {
            return Err(bad_caps("NUL inside version data"));
        }
        Self::from_json(json)
    }

    /// Parses the JSON text (without NUL).
    pub fn from_json(json: &[u8]) -> Result<Self, DecodeError> {
        let v: Value =
            serde_json::from_slice(json).map_err(|e| bad_caps(format!("bad JSON: {e}")))?;
        let Value::Object(top) = v else {
            return Err(bad_caps("JSON is not an object"));
        };
        let mut c = Capabilities::default();
        let Some(caps) = get_object(&top, "capabilities")? else {
            return Ok(c);
        };
        if let Some(v) = get_u32(caps, "max_msg_fds")? {
            c.max_msg_fds = v;
        }
        if let Some(v) = get_nonzero(caps, "max_data_xfer_size", get_u32)? {
            c.max_data_xfer_size = v;
        }
        if let Some(v) = get_u32(caps, "max_dma_maps")? {
            c.max_dma_maps = v;
        }
        if let Some(v) = get_nonzero(caps, "pgsizes", get_u64)? {
            c.pgsizes = v;
        }
        if let Some(v) = get_bool(caps, "write_multiple")? {
            c.write_multiple = v;
        }
        if let Some(t) = get_object(caps, "twin_socket")? {
            c.twin_socket = get_bool(t, "supported")?.unwrap_or(false);
        }
        c.migration = caps.contains_key("migration");
        if let Some(v) = caps.get(SIDECAR_CAP_KEY) {
            let s: SidecarCaps = serde_json::from_value(v.clone())
                .map_err(|e| bad_caps(format!("bad {SIDECAR_CAP_KEY} value: {e}")))?;
            if s.version == 0 {
                return Err(bad_caps(format!("{SIDECAR_CAP_KEY} version 0")));
            }
            c.sidecar = Some(s);
        }
        Ok(c)
    }
}

/// Server side: the capabilities to reply with, from the client's proposal,
/// the handler's offer and the connection's limits.
///
/// * numeric limits are the offer clamped to `limits`;
/// * `pgsizes` = offer & proposal (none in common: `ENOTSUP`);
/// * `write_multiple` only if both want it; twin-socket and migration never;
/// * the extension only if both sides have it, as the intersection of features,
///   version = the lower one, `exec_enforced` from the offer (false unless
///   `dma_exec` is kept).
pub fn negotiate(
    client: &Capabilities,
    offer: &Capabilities,
    limits: &Limits,
) -> Result<Capabilities, Errno> {
    let pgsizes = offer.pgsizes & client.pgsizes;
    if pgsizes == 0 {
        return Err(Errno::ENOTSUP);
    }
    let sidecar = match (&client.sidecar, &offer.sidecar) {
        (Some(c), Some(o)) if c.version >= 1 && o.version >= 1 => {
            let dma_exec = c.dma_exec && o.dma_exec;
            Some(SidecarCaps {
                version: c.version.min(o.version).min(SIDECAR_VERSION),
                dma_exec,
                platform: c.platform && o.platform,
                eoi: c.eoi && o.eoi,
                exec_enforced: Some(dma_exec && o.exec_enforced.unwrap_or(false)),
            })
        }
        _ => None,
    };
    Ok(Capabilities {
        max_msg_fds: offer.max_msg_fds.min(limits.max_msg_fds),
        max_data_xfer_size: offer
            .max_data_xfer_size
            .min(limits.max_data_xfer_size)
            .max(1),
        max_dma_maps: offer.max_dma_maps.min(limits.max_dma_maps),
        pgsizes,
        write_multiple: client.write_multiple && offer.write_multiple,
        twin_socket: false,
        migration: false,
        sidecar,
    })
}

/// The result of VERSION negotiation, kept by both ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Agreed major version.
    pub major: u16,
    /// Agreed minor version.
    pub minor: u16,
    /// The client's capabilities: what the *client* accepts (fds per message,
    /// transfer size) when the server sends to it.
    pub client: Capabilities,
    /// The server's reply: what the *server* accepts, plus the agreed optional
    /// features (`write_multiple`, the extension).
    pub server: Capabilities,
}

impl Negotiated {
    /// The agreed extension, if it was negotiated.
    pub fn sidecar(&self) -> Option<&SidecarCaps> {
        self.server.sidecar.as_ref()
    }

    /// True when the vfio-sidecar extension was negotiated.
    pub fn extension(&self) -> bool {
        self.server.sidecar.is_some()
    }

    /// True when DMA_MAP may carry the EXEC bit.
    pub fn dma_exec(&self) -> bool {
        self.sidecar().is_some_and(|s| s.dma_exec)
    }

    /// True when a missing EXEC permission is enforced by the server.
    pub fn exec_enforced(&self) -> bool {
        self.dma_exec() && self.sidecar().and_then(|s| s.exec_enforced) == Some(true)
    }

    /// True when `REGION_WRITE_MULTI` may be used.
    pub fn write_multiple(&self) -> bool {
        self.server.write_multiple
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn nul(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }

    #[test]
    fn defaults_and_empty() {
        let c = Capabilities::from_version_data(&[]).unwrap();
        assert_eq!(c, Capabilities::default());
        assert_eq!(c.max_msg_fds, 1);
        assert_eq!(c.max_dma_maps, 65535);
        let c = Capabilities::from_version_data(&nul("{}")).unwrap();
        assert_eq!(c, Capabilities::default());
    }

    #[test]
    fn parse_full() {
        let j = r#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":4096,"max_dma_maps":10,
            "pgsizes":12288,"write_multiple":true,"migration":{"pgsize":4096},
            "twin_socket":{"supported":true},"unknown":[1,2],
            "org.vfio-sidecar":{"version":1,"dma_exec":true,"platform":false,"eoi":true}}}"#;
        let c = Capabilities::from_version_data(&nul(j)).unwrap();
        assert_eq!(c.max_msg_fds, 8);
        assert_eq!(c.max_data_xfer_size, 4096);
        assert_eq!(c.max_dma_maps, 10);
        assert_eq!(c.pgsizes, 12288);
        assert!(c.write_multiple && c.migration && c.twin_socket);
        let s = c.sidecar.unwrap();
        assert!(s.dma_exec && !s.platform && s.eoi);
        assert_eq!(s.exec_enforced, None);
    }

    #[test]
    fn json_round_trip_and_no_migration_key() {
        let c = Capabilities {
            write_multiple: true,
            migration: true,
            sidecar: Some(SidecarCaps {
                exec_enforced: Some(false),
                ..SidecarCaps::client_proposal()
            }),
            ..Capabilities::from_limits(&Limits::default())
        };
        let j = c.to_json();
        assert!(!j.contains("migration"));
        assert!(j.contains("\"org.vfio-sidecar\""));
        assert!(j.contains("\"exec_enforced\":false"));
        let back = Capabilities::from_json(j.as_bytes()).unwrap();
        assert_eq!(
            back,
            Capabilities {
                migration: false,
                ..c
            }
        );
        let plain = Capabilities::default().to_json();
        assert!(!plain.contains("org.vfio-sidecar"));
        assert!(!plain.contains("write_multiple"));
    }

    #[test]
    fn rejects_bad_input() {
        // No NUL.
        assert!(Capabilities::from_version_data(b"{}").is_err());
        // NUL inside.
        assert!(Capabilities::from_version_data(b"{}\0{}\0").is_err());
        // Bad JSON / not an object.
        assert!(Capabilities::from_version_data(&nul("{")).is_err());
        assert!(Capabilities::from_version_data(&nul("[1]")).is_err());
        assert!(Capabilities::from_version_data(&nul(r#"{"capabilities":3}"#)).is_err());
        // Bad UTF-8.
        assert!(Capabilities::from_version_data(&[0xff, 0xfe, 0]).is_err());
        // Wrong types / ranges.
        for j in [
            r#"{"capabilities":{"max_msg_fds":-1}}"#,
            r#"{"capabilities":{"max_msg_fds":"1"}}"#,
            r#"{"capabilities":{"max_data_xfer_size":4294967296}}"#,
            r#"{"capabilities":{"max_data_xfer_size":0}}"#,
            r#"{"capabilities":{"pgsizes":0}}"#,
            r#"{"capabilities":{"write_multiple":1}}"#,
            r#"{"capabilities":{"twin_socket":true}}"#,
            r#"{"capabilities":{"org.vfio-sidecar":true}}"#,
            r#"{"capabilities":{"org.vfio-sidecar":{"version":0}}}"#,
            r#"{"capabilities":{"org.vfio-sidecar":{"version":1,"x":1}}}"#,
        ] {
            let e = Capabilities::from_version_data(&nul(j)).unwrap_err();
            assert_eq!(e.errno(), Errno::EINVAL, "{j}");
        }
    }

    #[test]
    fn error_texts() {
        for (j, text) in [
            ("[1]", "VERSION: JSON is not an object"),
            (
                r#"{"capabilities":3}"#,
                "VERSION: capabilities is not an object",
            ),
            (
                r#"{"capabilities":{"max_msg_fds":"1"}}"#,
                "VERSION: max_msg_fds is not an unsigned integer",
            ),
            (
                r#"{"capabilities":{"max_dma_maps":4294967296}}"#,
                "VERSION: max_dma_maps out of range",
            ),
            (
                r#"{"capabilities":{"max_data_xfer_size":0}}"#,
                "VERSION: max_data_xfer_size is 0",
            ),
            (r#"{"capabilities":{"pgsizes":0}}"#, "VERSION: pgsizes is 0"),
            (
                r#"{"capabilities":{"write_multiple":1}}"#,
                "VERSION: write_multiple is not a boolean",
            ),
            (
                r#"{"capabilities":{"twin_socket":true}}"#,
                "VERSION: twin_socket is not an object",
            ),
            (
                r#"{"capabilities":{"twin_socket":{"supported":2}}}"#,
                "VERSION: supported is not a boolean",
            ),
            (
                r#"{"capabilities":{"org.vfio-sidecar":{"version":0}}}"#,
                "VERSION: org.vfio-sidecar version 0",
            ),
        ] {
            let e = Capabilities::from_version_data(&nul(j)).unwrap_err();
            assert_eq!(e.to_string(), text, "{j}");
        }
        let e = Capabilities::from_version_data(b"{}").unwrap_err();
        assert_eq!(e.to_string(), "VERSION: version data is not NUL-terminated");
        let e = Capabilities::from_version_data(b"{}\0{}\0").unwrap_err();
        assert_eq!(e.to_string(), "VERSION: NUL inside version data");
    }

    #[test]
    fn negotiation_rules() {
        let limits = Limits {
            max_msg_fds: 4,
            max_data_xfer_size: 8192,
            max_dma_maps: 100,
        };
        let client = Capabilities {
            write_multiple: true,
            sidecar: Some(SidecarCaps {
                platform: false,
                ..SidecarCaps::client_proposal()
            }),
            ..Capabilities::default()
        };
        let offer = Capabilities {
            max_msg_fds: 64,
            max_data_xfer_size: 1 << 20,
            max_dma_maps: 50,
            pgsizes: 4096 | (2 << 20),
            write_multiple: false,
            sidecar: Some(SidecarCaps {
                exec_enforced: Some(true),
                ..SidecarCaps::client_proposal()
            }),
            ..Capabilities::default()
        };
        let r = negotiate(&client, &offer, &limits).unwrap();
        assert_eq!(r.max_msg_fds, 4);
        assert_eq!(r.max_data_xfer_size, 8192);
        assert_eq!(r.max_dma_maps, 50);
        assert_eq!(r.pgsizes, 4096);
        assert!(!r.write_multiple);
        let s = r.sidecar.unwrap();
        assert!(s.dma_exec && !s.platform && s.eoi);
        assert_eq!(s.exec_enforced, Some(true));
        assert!(s.is_subset_of(client.sidecar.as_ref().unwrap()));

        // Plain client: no extension in the reply.
        let r = negotiate(&Capabilities::default(), &offer, &limits).unwrap();
        assert!(r.sidecar.is_none());
        // No common page size.
        let c2 = Capabilities {
            pgsizes: 1 << 16,
            ..Capabilities::default()
        };
        assert_eq!(negotiate(&c2, &offer, &limits), Err(Errno::ENOTSUP));
        let n = Negotiated {
            major: 0,
            minor: 1,
            client: client.clone(),
            server: negotiate(&client, &offer, &limits).unwrap(),
        };
        assert!(n.extension() && n.dma_exec() && n.exec_enforced() && !n.write_multiple());
    }

    #[test]
    fn max_msg_size_derivation() {
        let l = Limits::default();
        assert_eq!(l.max_msg_size(), 16 + 32 + (1 << 20));
        let small = Limits {
            max_data_xfer_size: 16,
            ..l
        };
        assert_eq!(small.max_msg_size(), 16 + 32 + 65536);
    }
}
