//! `int8`: symmetric 8-bit linear quantization with one scale per tensor (as in
//! the 8-bit gradient quantization of Dettmers 2016 without its dynamic exponent, and
//! as `torch.quantize_per_tensor` with qint8 and zero point 0).
//!
//! With `m = max |g|` and the scale `s = m / 127`:
//!
//! ```text
//! q_i = clamp(round_half_away(g_i · (127 / m)), −127, 127)      (all q_i = 0 when m = 0)
//! ĝ_i = s · q_i
//! ```
//!
//! The multiplier `127/m` is computed once (f32), so `q_i` is the f32 product rounded
//! half away from zero (exactly, not via `x + 0.5`, which rounds 0.49999997 up). −128 is never produced, which
//! keeps the code symmetric; a decoder refuses it as corrupt. Deterministic (no
//! randomness), so the error is biased; aggregation is gather (each worker's payload
//! has its own scale).
//!
//! # Payload data (after the common header)
//!
//! | bytes | field |
//! |---:|---|
//! | 4 | scale `s` (f32, little-endian; finite, ≥ 0) |
//! | n | `q_i` (i8 each, two's complement, −127..=127) |
//!
//! so a payload is `16 + 4·d + 4 + n` bytes.
//!
//! # Speed
//!
//! Two streaming passes over [`CHUNK`]s in parallel: `max |g|` (exact, so the same for
//! any split; the payload's zeroing runs alongside it), then the branch-free
//! quantization into the output bytes, both compiled for AVX2 when the CPU has it
//! ([`super::bits::dispatch`]).

use pulp::Arch;
use rayon::prelude::*;
use regimen_plugin::{ArgError, Args};

use super::bits::{dispatch, par_max_abs, write_header, Kernel, CHUNK};
use super::{
    Aggregation, CompressError, Compressor, MethodId, PayloadHeader, StepContext, TensorView,
    WireError, ERROR_FEEDBACK_ARG,
};

/// Largest code magnitude.
pub const MAX_CODE: i32 = 127;

/// The `int8` compressor; it keeps no state.
#[derive(Clone, Debug)]
pub struct Int8 {
    _private: (),
}

impl Int8 {
    /// `int8` takes no arguments.
    pub fn new(args: &Args) -> Result<Self, ArgError> {
        args.only(&[ERROR_FEEDBACK_ARG])?;
        Ok(Self { _private: () })
    }
}

/// `int8`: per-tensor-scale 8-bit quantization.
pub fn build(args: &Args) -> Result<Box<dyn Compressor>, ArgError> {
    Ok(Box::new(Int8::new(args)?))
}

/// `round_half_away(clamp(x, −127, 127))` in float and integer operations that
/// vectorise (a float-to-int conversion would be scalarised for its saturation
/// rules): adding 1.5·2²³ rounds to the nearest integer, ties to even, and leaves it
/// in the low mantissa bits; a tie that went towards zero is then moved away from it.
/// Exact for every |x| ≤ 127.
#[inline(always)]
fn quantize(x: f32) -> i8 {
    const MAGIC: f32 = 12_582_912.0;
    let x = if x > 127.0 { 127.0 } else { x };
    let x = if x < -127.0 { -127.0 } else { x };
    let shifted = x + MAGIC;
    let nearest = shifted - MAGIC;
    let below = x - nearest;
    let rounded = shifted.to_bits() as i32 - MAGIC.to_bits() as i32
        + i32::from(below == 0.5 && x > 0.0)
        - i32::from(below == -0.5 && x < 0.0);
    rounded as i8
}

#[inline(always)]
fn encode_chunk(values: &[f32], multiplier: f32, out: &mut [u8]) {
    for (byte, &g) in out.iter_mut().zip(values) {
        *byte = quantize(g * multiplier) as u8;
    }
}

/// [`encode_chunk`] as a [`Kernel`].
struct Encode<'a> {
    values: &'a [f32],
    multiplier: f32,
    codes: &'a mut [u8],
}

impl Kernel for Encode<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        encode_chunk(self.values, self.multiplier, self.codes);
    }
}

impl Compressor for Int8 {
    fn name(&self) -> &str {
        "int8"
    }

    fn method_id(&self) -> MethodId {
        MethodId::INT8
    }

    fn aggregation(&self) -> Aggregation {
        Aggregation::Gather
    }

    fn compress(
        &mut self,
        input: TensorView<'_>,
        _ctx: &StepContext<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), CompressError> {
        let data = input.data;
        out.reserve(16 + 4 * input.shape.len() + 4 + data.len());
        write_header(self.method_id(), &input, out)?;
        // The zeroing of the payload (one thread) overlaps the max pass.
        let scale_at = out.len();
        let (max, ()) = rayon::join(
            || par_max_abs(data),
            || out.resize(scale_at + 4 + data.len(), 0),
        );
        let (scale, multiplier) = if max > 0.0 && max.is_finite() {
            (max / MAX_CODE as f32, MAX_CODE as f32 / max)
        } else {
            (0.0, 0.0)
        };
        out[scale_at..scale_at + 4].copy_from_slice(&scale.to_le_bytes());
        let start = scale_at + 4;
        let codes = &mut out[start..];
        let arch = Arch::new();
        if data.len() <= CHUNK {
            dispatch(
                arch,
                Encode {
                    values: data,
                    multiplier,
                    codes,
                },
            );
        } else {
            codes
                .par_chunks_mut(CHUNK)
                .zip(data.par_chunks(CHUNK))
                .for_each(|(codes, values)| {
                    dispatch(
                        arch,
                        Encode {
                            values,
                            multiplier,
                            codes,
                        },
                    )
                });
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
        let step = reader.f32()?;
        if !step.is_finite() || step < 0.0 {
            return Err(WireError::Corrupt(format!("int8 scale {step}")).into());
        }
        let codes = reader.array(out.len(), 1)?;
        reader.finish()?;
        // Checked before anything is written, so a corrupt payload leaves `out` as it was.
        if codes.contains(&(i8::MIN as u8)) {
            return Err(WireError::Corrupt("int8 code −128 (codes are −127..=127)".into()).into());
        }
        let decode_chunk = |(values, codes): (&mut [f32], &[u8])| {
            for (value, &code) in values.iter_mut().zip(codes) {
                *value += scale * (step * f32::from(code as i8));
            }
        };
        if out.len() <= CHUNK {
            decode_chunk((out, codes));
        } else {
            out.par_chunks_mut(CHUNK)
                .zip(codes.par_chunks(CHUNK))
                .for_each(decode_chunk);
        }
        Ok(())
    }
}
