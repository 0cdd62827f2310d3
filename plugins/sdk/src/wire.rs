//! The compressed-payload wire format, version 1, and a bounds-checked reader for
//! decoding payloads that may be truncated or corrupted.
//!
//! Every payload a [`Compressor`](crate::Compressor) writes starts with this header,
//! all integers little-endian:
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 4 | magic `RGMC` |
//! | 4 | 1 | format version ([`WIRE_VERSION`]) |
//! | 5 | 1 | number of dimensions `d` (0..=[`MAX_DIMS`]) |
//! | 6 | 2 | method id ([`MethodId`]) |
//! | 8 | 8 | element count (u64, the product of the dimensions) |
//! | 16 | 4·d | dimensions (u32 each) |
//!
//! so the header takes `16 + 4·d` bytes; the method's data follows (its layout is
//! documented on each method). A summable method's data is a plain array of its
//! [`WireElement`](crate::WireElement)s: the host reduces that section only, since the
//! header is the same on every worker.
//!
//! Decoders read through [`WireReader`], whose every read is checked: a short or
//! malformed payload is a [`WireError`], never a panic or an out-of-bounds access.

use thiserror::Error;

/// The first four bytes of every payload.
pub const WIRE_MAGIC: [u8; 4] = *b"RGMC";
/// The format version this SDK writes and reads.
pub const WIRE_VERSION: u8 = 1;
/// Most dimensions a payload's shape may have.
pub const MAX_DIMS: usize = 8;
/// Header bytes before the dimensions.
pub const FIXED_HEADER_BYTES: usize = 16;

/// Identifies the method that wrote a payload. Built-in methods have fixed ids below
/// [`MethodId::FIRST_PLUGIN`]; plugins use ids from there on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MethodId(pub u16);

impl MethodId {
    /// Dense f32 (no compression).
    pub const NONE: MethodId = MethodId(0);
    /// IEEE half-precision cast.
    pub const FP16: MethodId = MethodId(1);
    /// bfloat16 cast.
    pub const BF16: MethodId = MethodId(2);
    /// 8-bit linear quantization with a per-tensor scale.
    pub const INT8: MethodId = MethodId(3);
    /// Top-k sparsification (exact or sampled threshold).
    pub const TOPK: MethodId = MethodId(4);
    /// Random-k sparsification with a seed shared by the workers.
    pub const RANDOMK: MethodId = MethodId(5);
    /// Fixed-threshold sparsification.
    pub const THRESHOLD: MethodId = MethodId(6);
    /// Deep Gradient Compression (Lin et al. 2018).
    pub const DGC: MethodId = MethodId(7);
    /// QSGD (Alistarh et al. 2017).
    pub const QSGD: MethodId = MethodId(8);
    /// TernGrad (Wen et al. 2017).
    pub const TERNGRAD: MethodId = MethodId(9);
    /// signSGD scaled by mean |g|.
    pub const SIGN: MethodId = MethodId(10);
    /// 1-bit SGD (Seide et al. 2014).
    pub const ONEBIT: MethodId = MethodId(11);
    /// PowerSGD (Vogels et al. 2019).
    pub const POWERSGD: MethodId = MethodId(12);
    /// The first id available to plugins.
    pub const FIRST_PLUGIN: MethodId = MethodId(0x8000);
}

/// Why a payload cannot be decoded.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum WireError {
    /// The payload ends before a field it must contain.
    #[error("payload truncated: {needed} more bytes needed at offset {offset}, {remaining} left")]
    Truncated {
        /// Where the read started.
        offset: usize,
        /// Bytes the read needed.
        needed: usize,
        /// Bytes that were left.
        remaining: usize,
    },
    /// The payload does not start with [`WIRE_MAGIC`].
    #[error("not a Regimen payload (bad magic)")]
    BadMagic,
    /// A format version this build does not read.
    #[error("payload format version {found}, this build reads version {WIRE_VERSION}")]
    Version {
        /// The version in the payload.
        found: u8,
    },
    /// The payload was written by another method.
    #[error("payload of method {found}, expected method {expected}")]
    Method {
        /// The decoder's method id.
        expected: u16,
        /// The payload's method id.
        found: u16,
    },
    /// The header's element count, shape or dimension count is inconsistent, or does
    /// not match what the decoder expects.
    #[error("payload shape mismatch: {0}")]
    Shape(String),
    /// The data section is malformed (an index out of range, a bad code, …).
    #[error("corrupt payload: {0}")]
    Corrupt(String),
    /// Bytes left over after the data the header announces.
    #[error("payload has {0} unexpected trailing bytes")]
    Trailing(usize),
}

/// A payload's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayloadHeader {
    /// The method that wrote the payload.
    pub method: MethodId,
    /// Number of elements of the dense tensor.
    pub numel: u64,
    /// The dense tensor's shape (product = `numel`).
    pub shape: Vec<u32>,
}

impl PayloadHeader {
    /// A header for a tensor of `shape` written by `method`. Fails when the shape has
    /// more than [`MAX_DIMS`] dimensions or a dimension above `u32::MAX`.
    pub fn new(method: MethodId, shape: &[usize]) -> Result<Self, WireError> {
        if shape.len() > MAX_DIMS {
            return Err(WireError::Shape(format!(
                "{} dimensions, at most {MAX_DIMS} are supported",
                shape.len()
            )));
        }
        let mut dims = Vec::with_capacity(shape.len());
        let mut numel: u64 = 1;
        for &dim in shape {
            let dim32 = u32::try_from(dim)
                .map_err(|_| WireError::Shape(format!("dimension {dim} exceeds u32")))?;
            numel = numel
                .checked_mul(u64::from(dim32))
                .ok_or_else(|| WireError::Shape("element count overflows u64".into()))?;
            dims.push(dim32);
        }
        Ok(Self {
            method,
            numel,
            shape: dims,
        })
    }

    /// Bytes this header takes on the wire.
    pub fn encoded_len(&self) -> usize {
        FIXED_HEADER_BYTES + 4 * self.shape.len()
    }

    /// Append the encoded header to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&WIRE_MAGIC);
        out.push(WIRE_VERSION);
        // `new` and `read` both bound the dimension count by MAX_DIMS.
        out.push(self.shape.len().min(MAX_DIMS) as u8);
        out.extend_from_slice(&self.method.0.to_le_bytes());
        out.extend_from_slice(&self.numel.to_le_bytes());
        for dim in &self.shape {
            out.extend_from_slice(&dim.to_le_bytes());
        }
    }

    /// Read and validate a header from the start of `reader`.
    pub fn read(reader: &mut WireReader<'_>) -> Result<Self, WireError> {
        let magic = reader.bytes(4)?;
        if magic != WIRE_MAGIC {
            return Err(WireError::BadMagic);
        }
        let version = reader.u8()?;
        if version != WIRE_VERSION {
            return Err(WireError::Version { found: version });
        }
        let ndim = usize::from(reader.u8()?);
        if ndim > MAX_DIMS {
            return Err(WireError::Shape(format!(
                "{ndim} dimensions, at most {MAX_DIMS} are supported"
            )));
        }
        let method = MethodId(reader.u16()?);
        let numel = reader.u64()?;
        let mut shape = Vec::with_capacity(ndim);
        let mut product: u64 = 1;
        for _ in 0..ndim {
            let dim = reader.u32()?;
            product = product.saturating_mul(u64::from(dim));
            shape.push(dim);
        }
        if product != numel {
            return Err(WireError::Shape(format!(
                "element count {numel} differs from the product of the shape {shape:?}"
            )));
        }
        Ok(Self {
            method,
            numel,
            shape,
        })
    }

    /// Read the header of `payload` and check that it was written by `method` for a
    /// tensor of `numel` elements; returns the header and the data section.
    pub fn parse(
        payload: &[u8],
        method: MethodId,
        numel: usize,
    ) -> Result<(Self, WireReader<'_>), WireError> {
        let mut reader = WireReader::new(payload);
        let header = Self::read(&mut reader)?;
        if header.method != method {
            return Err(WireError::Method {
                expected: method.0,
                found: header.method.0,
            });
        }
        if header.numel != numel as u64 {
            return Err(WireError::Shape(format!(
                "payload holds {} elements, the tensor has {numel}",
                header.numel
            )));
        }
        Ok((header, reader))
    }
}

/// A cursor over an untrusted byte slice; every read is bounds-checked.
#[derive(Clone, Debug)]
pub struct WireReader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> WireReader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, offset: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.offset
    }

    /// Offset of the next read from the start.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The next `len` bytes.
    pub fn bytes(&mut self, len: usize) -> Result<&'a [u8], WireError> {
        let remaining = self.remaining();
        if len > remaining {
            return Err(WireError::Truncated {
                offset: self.offset,
                needed: len,
                remaining,
            });
        }
        let slice = &self.bytes[self.offset..self.offset + len];
        self.offset += len;
        Ok(slice)
    }

    /// The next `count` items of `size` bytes each (overflow-checked).
    pub fn array(&mut self, count: usize, size: usize) -> Result<&'a [u8], WireError> {
        let len = count.checked_mul(size).ok_or(WireError::Truncated {
            offset: self.offset,
            needed: usize::MAX,
            remaining: self.remaining(),
        })?;
        self.bytes(len)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        let slice = &self.bytes[self.offset..];
        self.offset = self.bytes.len();
        slice
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.fixed::<1>()?[0])
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.fixed()?))
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.fixed()?))
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.fixed()?))
    }

    /// A little-endian f32.
    pub fn f32(&mut self) -> Result<f32, WireError> {
        Ok(f32::from_le_bytes(self.fixed()?))
    }

    /// Fail unless every byte has been read.
    pub fn finish(&self) -> Result<(), WireError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(WireError::Trailing(extra)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_has_the_documented_size() {
        let header = PayloadHeader::new(MethodId::TOPK, &[3, 4]).unwrap();
        let mut out = Vec::new();
        header.write(&mut out);
        assert_eq!(out.len(), 16 + 4 * 2);
        assert_eq!(out.len(), header.encoded_len());
        assert_eq!(&out[..4], b"RGMC");
        assert_eq!(out[4], 1);
        assert_eq!(out[5], 2);
        assert_eq!(u16::from_le_bytes([out[6], out[7]]), 4);
        let (back, reader) = PayloadHeader::parse(&out, MethodId::TOPK, 12).unwrap();
        assert_eq!(back, header);
        assert_eq!(reader.remaining(), 0);
    }

    #[test]
    fn every_truncation_of_a_header_is_an_error() {
        let mut out = Vec::new();
        PayloadHeader::new(MethodId::QSGD, &[5, 6, 7])
            .unwrap()
            .write(&mut out);
        for len in 0..out.len() {
            let result = PayloadHeader::parse(&out[..len], MethodId::QSGD, 210);
            assert!(
                matches!(result, Err(WireError::Truncated { .. })),
                "{len}: {result:?}"
            );
        }
    }

    #[test]
    fn corrupt_headers_are_refused() {
        let mut out = Vec::new();
        PayloadHeader::new(MethodId::SIGN, &[10])
            .unwrap()
            .write(&mut out);
        let mut bad_magic = out.clone();
        bad_magic[0] = b'X';
        assert_eq!(
            PayloadHeader::parse(&bad_magic, MethodId::SIGN, 10).unwrap_err(),
            WireError::BadMagic
        );
        let mut bad_version = out.clone();
        bad_version[4] = 9;
        assert_eq!(
            PayloadHeader::parse(&bad_version, MethodId::SIGN, 10).unwrap_err(),
            WireError::Version { found: 9 }
        );
        assert!(matches!(
            PayloadHeader::parse(&out, MethodId::ONEBIT, 10),
            Err(WireError::Method { .. })
        ));
        assert!(matches!(
            PayloadHeader::parse(&out, MethodId::SIGN, 11),
            Err(WireError::Shape(_))
        ));
        let mut bad_count = out.clone();
        bad_count[8] = 11;
        assert!(matches!(
            PayloadHeader::parse(&bad_count, MethodId::SIGN, 11),
            Err(WireError::Shape(_))
        ));
        let mut too_many_dims = out;
        too_many_dims[5] = 200;
        assert!(matches!(
            PayloadHeader::parse(&too_many_dims, MethodId::SIGN, 10),
            Err(WireError::Shape(_))
        ));
    }

    #[test]
    fn reader_reports_overflowing_array_lengths() {
        let mut reader = WireReader::new(&[1, 2, 3]);
        assert!(reader.array(usize::MAX, 4).is_err());
        assert_eq!(reader.u16().unwrap(), 0x0201);
        assert_eq!(reader.finish(), Err(WireError::Trailing(1)));
    }
}
