//! The codec machinery of the payloads: [`Wire`] values (host-endian
//! integers, byte arrays and fixed-layout structs), a bounds-checked
//! [`Reader`], [`Put`] for encoding, and the checks several messages share.
//!
//! vfio-user sends the structures of `<linux/vfio.h>` in host byte order, so
//! integers are `to_ne_bytes`/`from_ne_bytes`.

use crate::error::DecodeError;

/// A value with a fixed layout on the wire.
pub(super) trait Wire: Sized {
    /// Bytes on the wire.
    const SIZE: usize;
    /// Appends the wire bytes to `v`.
    fn put_into(&self, v: &mut Vec<u8>);
    /// Reads the value; too few bytes left is [`DecodeError::Truncated`].
    fn get_from(r: &mut Reader<'_>) -> Result<Self, DecodeError>;
}

macro_rules! wire_int {
    ($($t:ty),*) => {$(
        impl Wire for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn put_into(&self, v: &mut Vec<u8>) {
                v.extend_from_slice(&self.to_ne_bytes());
            }
            fn get_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                Ok(<$t>::from_ne_bytes(r.arr()?))
            }
        }
    )*};
}
wire_int!(u16, u32, u64);

impl<const N: usize> Wire for [u8; N] {
    const SIZE: usize = N;
    fn put_into(&self, v: &mut Vec<u8>) {
        v.extend_from_slice(self);
    }
    fn get_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.arr()
    }
}

/// Defines a struct laid out on the wire as its fields in order (no padding)
/// and implements [`Wire`] for it. `wire_struct!(impl T { field: type, .. })`
/// does the same for a struct defined elsewhere.
macro_rules! wire_struct {
    (impl $t:ident { $($f:ident: $ft:ty),* $(,)? }) => {
        impl $crate::message::wire::Wire for $t {
            const SIZE: usize = 0 $(+ <$ft as $crate::message::wire::Wire>::SIZE)*;
            fn put_into(&self, v: &mut Vec<u8>) {
                $($crate::message::wire::Wire::put_into(&self.$f, v);)*
            }
            fn get_from(
                r: &mut $crate::message::wire::Reader<'_>,
            ) -> Result<Self, $crate::error::DecodeError> {
                // Struct fields are evaluated in the order written: wire order.
                Ok($t { $($f: r.get()?),* })
            }
        }
    };
    ($(#[$m:meta])* $vis:vis struct $t:ident {
        $($(#[$fm:meta])* $fvis:vis $f:ident: $ft:ty),* $(,)?
    }) => {
        $(#[$m])*
        $vis struct $t {
            $($(#[$fm])* $fvis $f: $ft),*
        }
        $crate::message::wire::wire_struct!(impl $t { $($f: $ft),* });
    };
}
pub(super) use wire_struct;

/// The public codec of a payload that is exactly one [`Wire`] struct of
/// `$size` bytes (checked at compile time): `SIZE`, `encode`, `decode`, and
/// the private `NAME` used in errors.
macro_rules! fixed_payload {
    ($t:ident, $name:literal, $size:literal) => {
        const _: () = assert!(<$t as $crate::message::wire::Wire>::SIZE == $size);

        impl $t {
            /// Payload size.
            pub const SIZE: usize = $size;
            const NAME: &'static str = $name;

            /// Encodes.
            pub fn encode(&self) -> Vec<u8> {
                $crate::message::wire::encode_wire(self)
            }

            /// Decodes (exactly [`Self::SIZE`] bytes; no validation).
            pub fn decode(payload: &[u8]) -> Result<Self, $crate::error::DecodeError> {
                $crate::message::wire::decode_exact(Self::NAME, payload)
            }

            /// Decodes a request: [`Self::SIZE`] bytes, or more when every
            /// extra byte is zero (see `wire::decode_padded`); no validation.
            pub fn decode_request(payload: &[u8]) -> Result<Self, $crate::error::DecodeError> {
                $crate::message::wire::decode_padded(Self::NAME, payload)
            }
        }
    };
}
pub(super) use fixed_payload;

/// Bounds-checked reading of a payload; errors name the message (`what`).
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`, which must have at least `min` bytes.
    pub(super) fn new(what: &'static str, buf: &'a [u8], min: usize) -> Result<Self, DecodeError> {
        if buf.len() < min {
            return Err(DecodeError::truncated(what, min, buf.len()));
        }
        Ok(Reader { buf, pos: 0, what })
    }

    /// A reader over `buf`, which must have exactly `len` bytes.
    pub(super) fn exact(
        what: &'static str,
        buf: &'a [u8],
        len: usize,
    ) -> Result<Self, DecodeError> {
        let r = Self::new(what, buf, len)?;
        if buf.len() > len {
            return Err(DecodeError::length(what, len, buf.len()));
        }
        Ok(r)
    }

    pub(super) fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = self.buf.get(self.pos..end).unwrap_or_default();
                self.pos = end;
                Ok(s)
            }
            None => Err(DecodeError::truncated(
                self.what,
                self.pos.saturating_add(n),
                self.buf.len(),
            )),
        }
    }

    fn arr<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self.bytes(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(super) fn get<T: Wire>(&mut self) -> Result<T, DecodeError> {
        T::get_from(self)
    }

    /// `n` values in a row (the allocation is bounded by the bytes left).
    pub(super) fn list<T: Wire>(&mut self, n: usize) -> Result<Vec<T>, DecodeError> {
        let mut v = Vec::with_capacity(n.min(self.remaining() / T::SIZE.max(1)));
        for _ in 0..n {
            v.push(self.get()?);
        }
        Ok(v)
    }

    pub(super) fn rest(&mut self) -> &'a [u8] {
        let s = self.buf.get(self.pos..).unwrap_or_default();
        self.pos = self.buf.len();
        s
    }

    pub(super) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
}

/// Appending [`Wire`] values to a payload.
pub(super) trait Put {
    fn put<T: Wire>(&mut self, x: T);
    fn put_all<T: Wire>(&mut self, xs: &[T]);
}

impl Put for Vec<u8> {
    fn put<T: Wire>(&mut self, x: T) {
        x.put_into(self);
    }
    fn put_all<T: Wire>(&mut self, xs: &[T]) {
        for x in xs {
            x.put_into(self);
        }
    }
}

pub(super) fn encode_wire<T: Wire>(x: &T) -> Vec<u8> {
    let mut v = Vec::with_capacity(T::SIZE);
    x.put_into(&mut v);
    v
}

pub(super) fn decode_exact<T: Wire>(what: &'static str, payload: &[u8]) -> Result<T, DecodeError> {
    Reader::exact(what, payload, T::SIZE)?.get()
}

/// Decodes a request structure that may be followed by zero padding: VFIO's
/// `argsz` rule lets a client send a larger buffer than the structure it
/// fills (libvfio-user's client sends its whole `argsz`-sized, zeroed buffer
/// with `GET_REGION_INFO`), and Linux's `copy_struct_from_user` accepts such
/// a larger structure when the bytes it does not know are zero. Non-zero
/// extra bytes (fields this side does not know) are refused.
pub(crate) fn decode_padded<T: Wire>(what: &'static str, payload: &[u8]) -> Result<T, DecodeError> {
    let (head, pad) = payload.split_at(payload.len().min(T::SIZE));
    if pad.iter().any(|&b| b != 0) {
        return Err(DecodeError::invalid(
            what,
            format!(
                "{} bytes after the {}-byte structure are not zero",
                pad.len(),
                T::SIZE
            ),
        ));
    }
    decode_exact(what, head)
}

pub(super) fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// `argsz` must cover the `min` bytes of the fixed structure.
pub(super) fn check_argsz(what: &'static str, argsz: u32, min: usize) -> Result<(), DecodeError> {
    if (argsz as usize) < min {
        return Err(DecodeError::invalid(what, format!("argsz {argsz} < {min}")));
    }
    Ok(())
}

/// The `data` that follows the `fixed` bytes of `payload` must be exactly
/// `want` bytes long.
pub(crate) fn expect_data(
    what: &'static str,
    payload: &[u8],
    fixed: usize,
    data: &[u8],
    want: u64,
) -> Result<(), DecodeError> {
    if data.len() as u64 != want {
        return Err(DecodeError::length(
            what,
            fixed.saturating_add(usize::try_from(want).unwrap_or(usize::MAX)),
            payload.len(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    wire_struct! {
        #[derive(Debug, Clone, Copy, PartialEq)]
        struct Pair {
            a: u16,
            b: u64,
        }
    }

    #[test]
    fn struct_layout_and_bounds() {
        assert_eq!(<Pair as Wire>::SIZE, 10);
        let p = Pair { a: 0x0102, b: 7 };
        let b = encode_wire(&p);
        let mut want = 0x0102u16.to_ne_bytes().to_vec();
        want.extend_from_slice(&7u64.to_ne_bytes());
        assert_eq!(b, want, "fields in order, host-endian, no padding");
        assert_eq!(decode_exact::<Pair>("P", &b).unwrap(), p);
        assert_eq!(
            decode_exact::<Pair>("P", &b[..9]),
            Err(DecodeError::truncated("P", 10, 9))
        );
        assert_eq!(
            decode_exact::<Pair>("P", &[b.as_slice(), &[0]].concat()),
            Err(DecodeError::length("P", 10, 11))
        );
        // Lists: values in a row; a huge count is neither allocated for nor
        // read past the end (the error names the first field that is missing).
        let mut two = Vec::new();
        two.put_all(&[p, p]);
        assert_eq!(Reader::new("L", &two, 0).unwrap().list(2), Ok(vec![p, p]));
        assert_eq!(
            Reader::new("L", &two, 0).unwrap().list::<Pair>(usize::MAX),
            Err(DecodeError::truncated("L", 22, 20))
        );
    }
}
