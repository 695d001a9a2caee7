//! The guest driver binary, assembled from `guest/pl330_guest.S` by build.rs.

/// Flat binary loaded at [`crate::layout::CODE_BASE`].
pub static GUEST_BIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pl330_guest.bin"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_binary_is_built_and_fits() {
        assert!(
            GUEST_BIN.len() > 256,
            "assembled guest is {} bytes",
            GUEST_BIN.len()
        );
        assert!(GUEST_BIN.len() as u64 <= crate::layout::CODE_MAX);
        // first instruction: cli
        assert_eq!(GUEST_BIN[0], 0xfa);
    }
}
