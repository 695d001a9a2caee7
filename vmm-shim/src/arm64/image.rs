//! The arm64 Linux `Image` header (Documentation/arch/arm64/booting.rst):
//!
//! ```text
//! 0x00 code0/code1   0x08 text_offset (LE64)   0x10 image_size (LE64)
//! 0x18 flags (LE64)  0x20..0x38 reserved       0x38 magic "ARM\x64"
//! ```
//!
//! An `image_size` of 0 marks a kernel older than 3.17: text_offset is then
//! 0x80000 and the footprint unknown (the file size plus a generous margin is
//! assumed).

use thiserror::Error;

/// The header's magic at offset 0x38.
pub const MAGIC: [u8; 4] = *b"ARM\x64";
/// Header length.
pub const HEADER_LEN: usize = 64;
/// Bytes assumed for a pre-3.17 kernel's footprint beyond its file size (bss).
const LEGACY_MARGIN: u64 = 16 << 20;
/// Largest text_offset accepted (the protocol's is below 2 MiB).
const MAX_TEXT_OFFSET: u64 = 0x20_0000;

/// Errors of header parsing.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ImageError {
    /// Shorter than a header.
    #[error("kernel image is {0} bytes, shorter than the 64-byte arm64 Image header")]
    Short(usize),
    /// Not an arm64 Image.
    #[error("not an arm64 Linux Image (no \"ARM\\x64\" magic at 0x38; compressed vmlinuz or an ELF vmlinux is not supported: use arch/arm64/boot/Image)")]
    BadMagic,
    /// A big-endian kernel.
    #[error("the kernel is big-endian (Image flags bit 0); the shim boots little-endian kernels")]
    BigEndian,
    /// Nonsense header values.
    #[error("bad Image header: {0}")]
    Bad(String),
}

/// What the loader needs from the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    /// Offset of the image from a 2 MiB-aligned base.
    pub text_offset: u64,
    /// Effective memory footprint, bss included (never smaller than the file).
    pub image_size: u64,
    /// Header flags (bit 0 endianness, bits 1-2 page size, bit 3 placement).
    pub flags: u64,
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Parses the header of the kernel file `image`.
pub fn parse(image: &[u8]) -> Result<ImageHeader, ImageError> {
    if image.len() < HEADER_LEN {
        return Err(ImageError::Short(image.len()));
    }
    if image[0x38..0x3c] != MAGIC {
        return Err(ImageError::BadMagic);
    }
    let (mut text_offset, image_size, flags) = (le64(image, 8), le64(image, 16), le64(image, 24));
    let file = image.len() as u64;
    let image_size = if image_size == 0 {
        text_offset = 0x8_0000;
        file + LEGACY_MARGIN
    } else {
        image_size.max(file)
    };
    if flags & 1 != 0 {
        return Err(ImageError::BigEndian);
    }
    if text_offset >= MAX_TEXT_OFFSET || text_offset % 0x1000 != 0 {
        return Err(ImageError::Bad(format!(
            "text_offset {text_offset:#x} is not a page multiple below 2 MiB"
        )));
    }
    Ok(ImageHeader {
        text_offset,
        image_size,
        flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(text_offset: u64, image_size: u64, flags: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[8..16].copy_from_slice(&text_offset.to_le_bytes());
        b[16..24].copy_from_slice(&image_size.to_le_bytes());
        b[24..32].copy_from_slice(&flags.to_le_bytes());
        b[0x38..0x3c].copy_from_slice(&MAGIC);
        b
    }

    #[test]
    fn debian_style_header() {
        // what Debian's 6.12 arm64 Image says: text_offset 0, image_size > file, flags 0xa
        let h = parse(&image(0, 0x2c0_0000, 0xa, 4096)).unwrap();
        assert_eq!(
            h,
            ImageHeader {
                text_offset: 0,
                image_size: 0x2c0_0000,
                flags: 0xa
            }
        );
        // the footprint is never below the file size
        assert_eq!(parse(&image(0, 16, 0, 4096)).unwrap().image_size, 4096);
    }

    #[test]
    fn legacy_header_gets_the_old_text_offset() {
        let h = parse(&image(0x1234, 0, 0, 1 << 20)).unwrap();
        assert_eq!(h.text_offset, 0x8_0000);
        assert!(h.image_size > 1 << 20);
    }

    #[test]
    fn bad_images_are_refused() {
        assert_eq!(parse(&[0; 10]), Err(ImageError::Short(10)));
        let mut b = image(0, 0x1000, 0, 4096);
        b[0x38] = b'E';
        assert_eq!(parse(&b), Err(ImageError::BadMagic));
        assert_eq!(
            parse(&image(0, 0x1000, 1, 4096)),
            Err(ImageError::BigEndian)
        );
        assert!(matches!(
            parse(&image(0x20_0000, 0x1000, 0, 4096)),
            Err(ImageError::Bad(_))
        ));
        assert!(matches!(
            parse(&image(0x123, 0x1000, 0, 4096)),
            Err(ImageError::Bad(_))
        ));
    }
}
