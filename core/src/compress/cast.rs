//! The summable casts: `none` (dense f32), `fp16` (IEEE binary16) and `bf16`
//! (bfloat16). The workers' data sections are added elementwise by the allreduce, so
//! the decoded sum is the average once scaled by 1/W.
//!
//! # Payload data (after the common header)
//!
//! | method | data | bytes |
//! |---|---|---|
//! | `none` | `n` f32, little-endian | `4·n` |
//! | `fp16` | `n` binary16, little-endian | `2·n` |
//! | `bf16` | `n` bfloat16, little-endian | `2·n` |
//!
//! so a payload is `16 + 4·d + {4, 2, 2}·n` bytes for a `d`-dimensional tensor of `n`
//! elements.
//!
//! # Rounding and special values
//!
//! Narrowing rounds to nearest, ties to even, through the `half` crate's slice
//! conversions (hardware F16C on x86 when the CPU has it): values beyond the half
//! range become ±∞, as in PyTorch's `.half()`. Decoding passes non-finite halves
//! through unchanged — the host checks finiteness before compressing, and a sum that
//! overflows is the communication's answer, not the decoder's to hide.
//!
//! # Speed
//!
//! Encoding streams the tensor once through a stack block of [`BLOCK`] elements
//! (convert, write the little-endian bytes into a byte block, append it), which costs
//! the same memory traffic as a copy: the blocks stay in L1, and the output is written
//! once, without first zero-filling it. Writing straight into the output as `[f16]`
//! would need `unsafe` (which this crate forbids) or a casting dependency, and would
//! save only the in-cache block copy. Endianness is handled by `to_le_bytes`, a plain
//! copy on little-endian hosts and a byte swap on big-endian ones, so one code path is
//! correct on both. Decoding runs over [`CHUNK`]s in parallel.

use half::{bf16, f16, slice::HalfFloatSliceExt};
use rayon::prelude::*;
use regimen_plugin::{ArgError, Args};

use super::bits::{extend_zeroed, write_header, CHUNK};
use super::{
    Aggregation, CompressError, Compressor, MethodId, PayloadHeader, StepContext, TensorView,
    WireElement, ERROR_FEEDBACK_ARG,
};

/// Elements converted per stack block while encoding (16 KiB of f32 input).
pub const BLOCK: usize = 4096;

/// The element type a cast sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CastKind {
    /// f32, unchanged (`none`).
    F32,
    /// IEEE binary16 (`fp16`).
    F16,
    /// bfloat16 (`bf16`).
    Bf16,
}

impl CastKind {
    /// The wire element of the payload's data section.
    pub fn element(self) -> WireElement {
        match self {
            CastKind::F32 => WireElement::F32,
            CastKind::F16 => WireElement::F16,
            CastKind::Bf16 => WireElement::Bf16,
        }
    }
}

/// A cast compressor (`none`, `fp16` or `bf16`); it keeps no state.
#[derive(Clone, Debug)]
pub struct Cast {
    kind: CastKind,
}

impl Cast {
    /// A cast to `kind`; the methods take no arguments.
    pub fn new(kind: CastKind, args: &Args) -> Result<Self, ArgError> {
        args.only(&[ERROR_FEEDBACK_ARG])?;
        Ok(Self { kind })
    }

    /// The element type sent.
    pub fn kind(&self) -> CastKind {
        self.kind
    }
}

/// `none`: dense f32.
pub fn build_none(args: &Args) -> Result<Box<dyn Compressor>, ArgError> {
    Ok(Box::new(Cast::new(CastKind::F32, args)?))
}

/// `fp16`: IEEE half precision.
pub fn build_fp16(args: &Args) -> Result<Box<dyn Compressor>, ArgError> {
    Ok(Box::new(Cast::new(CastKind::F16, args)?))
}

/// `bf16`: bfloat16.
pub fn build_bf16(args: &Args) -> Result<Box<dyn Compressor>, ArgError> {
    Ok(Box::new(Cast::new(CastKind::Bf16, args)?))
}

impl Compressor for Cast {
    fn name(&self) -> &str {
        match self.kind {
            CastKind::F32 => "none",
            CastKind::F16 => "fp16",
            CastKind::Bf16 => "bf16",
        }
    }

    fn method_id(&self) -> MethodId {
        match self.kind {
            CastKind::F32 => MethodId::NONE,
            CastKind::F16 => MethodId::FP16,
            CastKind::Bf16 => MethodId::BF16,
        }
    }

    fn aggregation(&self) -> Aggregation {
        Aggregation::Sum(self.kind.element())
    }

    fn compress(
        &mut self,
        input: TensorView<'_>,
        _ctx: &StepContext<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), CompressError> {
        let data = input.data;
        out.reserve(16 + 4 * input.shape.len() + self.kind.element().size() * data.len());
        write_header(self.method_id(), &input, out)?;
        match self.kind {
            CastKind::F32 => encode_f32(data, out),
            CastKind::F16 => encode_half::<f16>(data, out),
            CastKind::Bf16 => encode_half::<bf16>(data, out),
        }
        Ok(())
    }

    fn decompress_add(
        &mut self,
        payload: &[u8],
        scale: f32,
        out: &mut [f32],
    ) -> Result<(), CompressError> {
        let (_, mut reader) = PayloadHeader::parse(payload, self.method_id(), out.len())?;
        let size = self.kind.element().size();
        let data = reader.array(out.len(), size)?;
        reader.finish()?;
        let decode_chunk = |(values, bytes): (&mut [f32], &[u8])| match self.kind {
            CastKind::F32 => {
                for (value, word) in values.iter_mut().zip(bytes.chunks_exact(4)) {
                    *value += scale * f32::from_le_bytes([word[0], word[1], word[2], word[3]]);
                }
            }
            CastKind::F16 => decode_half::<f16>(bytes, scale, values),
            CastKind::Bf16 => decode_half::<bf16>(bytes, scale, values),
        };
        if out.len() <= CHUNK {
            decode_chunk((out, data));
        } else {
            out.par_chunks_mut(CHUNK)
                .zip(data.par_chunks(CHUNK * size))
                .for_each(decode_chunk);
        }
        Ok(())
    }
}

fn encode_f32(data: &[f32], out: &mut Vec<u8>) {
    let start = out.len();
    extend_zeroed(out, 4 * data.len());
    out[start..]
        .par_chunks_mut(4 * CHUNK)
        .zip(data.par_chunks(CHUNK))
        .for_each(|(bytes, values)| {
            for (word, value) in bytes.chunks_exact_mut(4).zip(values) {
                word.copy_from_slice(&value.to_le_bytes());
            }
        });
}

/// The two half-precision types, behind one interface for the block loops.
trait Half: Copy + Default + Send + Sync {
    fn narrow(src: &[f32], dst: &mut [Self]);
    fn widen(src: &[Self], dst: &mut [f32]);
    fn to_le(self) -> [u8; 2];
    fn from_le(bytes: [u8; 2]) -> Self;
}

impl Half for f16 {
    fn narrow(src: &[f32], dst: &mut [Self]) {
        dst.convert_from_f32_slice(src);
    }
    fn widen(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
    fn to_le(self) -> [u8; 2] {
        self.to_le_bytes()
    }
    fn from_le(bytes: [u8; 2]) -> Self {
        f16::from_le_bytes(bytes)
    }
}

impl Half for bf16 {
    fn narrow(src: &[f32], dst: &mut [Self]) {
        dst.convert_from_f32_slice(src);
    }
    fn widen(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
    fn to_le(self) -> [u8; 2] {
        self.to_le_bytes()
    }
    fn from_le(bytes: [u8; 2]) -> Self {
        bf16::from_le_bytes(bytes)
    }
}

fn encode_half<H: Half>(data: &[f32], out: &mut Vec<u8>) {
    let start = out.len();
    extend_zeroed(out, 2 * data.len());
    out[start..]
        .par_chunks_mut(2 * CHUNK)
        .zip(data.par_chunks(CHUNK))
        .for_each(|(bytes, values)| {
            let mut halves = [H::default(); BLOCK];
            for (pairs, block) in bytes.chunks_mut(2 * BLOCK).zip(values.chunks(BLOCK)) {
                let halves = &mut halves[..block.len()];
                H::narrow(block, halves);
                for (pair, half) in pairs.chunks_exact_mut(2).zip(halves.iter()) {
                    pair.copy_from_slice(&half.to_le());
                }
            }
        });
}

fn decode_half<H: Half>(bytes: &[u8], scale: f32, out: &mut [f32]) {
    let mut halves = [H::default(); BLOCK];
    let mut wide = [0.0f32; BLOCK];
    for (values, block) in out.chunks_mut(BLOCK).zip(bytes.chunks(2 * BLOCK)) {
        let halves = &mut halves[..values.len()];
        for (half, pair) in halves.iter_mut().zip(block.chunks_exact(2)) {
            *half = H::from_le([pair[0], pair[1]]);
        }
        let wide = &mut wide[..values.len()];
        H::widen(halves, wide);
        for (value, &w) in values.iter_mut().zip(wide.iter()) {
            *value += scale * w;
        }
    }
}
