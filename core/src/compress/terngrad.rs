//! `terngrad(clip: c)`: TernGrad (Wen et al. 2017, "TernGrad: Ternary Gradients to
//! Reduce Communication in Distributed Deep Learning"), stochastic ternarization with
//! the paper's gradient clipping.
//!
//! With `σ` the (population) standard deviation of the tensor's elements:
//!
//! ```text
//! ḡ_i = clamp(g_i, −c·σ, c·σ)                        (no clipping when c = 0 or σ = 0)
//! s   = max_i |ḡ_i|
//! ĝ_i = s · sign(g_i) · b_i,   b_i ~ Bernoulli(|ḡ_i| / s)
//! ```
//!
//! so `E[ĝ] = ḡ`: unbiased for the clipped gradient (clipping itself is the paper's
//! deliberate bias, which removes outliers so that `s` is small). Default `c = 2.5`;
//! `c` may be a schedule. `σ = 0` (all elements equal) skips clipping, which would
//! otherwise erase a constant tensor that ternarizes exactly. `s = 0` sends zeros.
//!
//! Randomness: 16-bit uniforms from [`ChunkDraws`] (xoshiro256++ with
//! [`Stream::TernGrad`]) keyed by `(seed, step, tensor, rank, chunk)`, so a payload does
//! not depend on the thread count; see [`ChunkDraws::uniforms`] (the Bernoulli
//! probabilities are exact to 2⁻¹⁷).
//!
//! # Payload data (after the common header)
//!
//! | bytes | field |
//! |---:|---|
//! | 4 | `s` (f32, little-endian; finite, ≥ 0) |
//! | ⌈n/4⌉ | one 2-bit code per element, LSB-first ([`super::bits`]): 0 → 0, 1 → +s, 2 → −s (3 is corrupt) |
//!
//! so a payload is `16 + 4·d + 4 + ⌈n/4⌉` bytes. A code 3 is detected after decoding,
//! so on that error `out` may have been partly updated.
//!
//! # Speed
//!
//! Two streaming passes over [`CHUNK`]s in parallel: Σg, Σg², max |g| together (f32
//! lanes per chunk, chunks combined in order in f64; the payload's zeroing runs
//! alongside), then the branch-free ternarization in blocks of [`BLOCK`] elements,
//! both compiled for AVX2 when the CPU has it ([`super::bits::dispatch`]).

use pulp::Arch;
use rayon::prelude::*;
use regimen_plugin::{ArgError, Args};

use super::bits::{
    dispatch, pack_byte_block, pack_two_bit_codes, unpack_fixed, write_header, ChunkDraws, Kernel,
    BLOCK, CHUNK,
};
use super::rng::Stream;
use super::{
    Aggregation, CompressError, Compressor, MethodId, PayloadHeader, StepContext, TensorView,
    WireError, ERROR_FEEDBACK_ARG,
};

/// The clipping factor `c` when the script gives none (the paper's).
pub const DEFAULT_CLIP: f64 = 2.5;

/// Bits per element on the wire.
pub const CODE_WIDTH: u32 = 2;

/// The `terngrad` compressor; it keeps no state.
#[derive(Clone, Debug)]
pub struct TernGrad {
    clip: f64,
}

impl TernGrad {
    /// From `clip` (`c` ≥ 0, default 2.5; 0 disables clipping).
    pub fn new(args: &Args) -> Result<Self, ArgError> {
        args.only(&["clip", ERROR_FEEDBACK_ARG])?;
        let clip = checked_clip(args.number("clip", Some(DEFAULT_CLIP))?)?;
        Ok(Self { clip })
    }

    /// The clipping factor `c`.
    pub fn clip(&self) -> f64 {
        self.clip
    }
}

fn checked_clip(clip: f64) -> Result<f64, ArgError> {
    if clip.is_finite() && clip >= 0.0 {
        Ok(clip)
    } else {
        Err(ArgError {
            argument: Some("clip".into()),
            message: format!("must be a finite number ≥ 0 (0 disables clipping), got {clip}"),
        })
    }
}

/// `terngrad`: stochastic ternarization with clipping at `clip`·σ.
pub fn build(args: &Args) -> Result<Box<dyn Compressor>, ArgError> {
    Ok(Box::new(TernGrad::new(args)?))
}

/// Lanes of [`chunk_moments`]: lane `l` accumulates the elements `i ≡ l (mod 16)`.
const MOMENT_LANES: usize = 16;

/// Elements per piece of [`chunk_moments`] (a multiple of [`MOMENT_LANES`], 4 KiB):
/// small enough to stay in L1 while the three accumulating loops read it in turn.
const MOMENT_PIECE: usize = 1024;

/// Σg, Σg² and max |g| of one chunk, in f32 lanes. One loop per quantity over each
/// L1-sized piece, each in the simple form the compiler vectorises well (a single loop
/// updating all three was vectorised with shuffles and spills); every lane still
/// takes its elements in increasing order.
#[inline(always)]
fn chunk_moments(values: &[f32]) -> (f32, f32, f32) {
    let mut sum = [0.0f32; MOMENT_LANES];
    let mut squares = [0.0f32; MOMENT_LANES];
    let mut max = [0.0f32; MOMENT_LANES];
    for piece in values.chunks(MOMENT_PIECE) {
        let groups = piece.chunks_exact(MOMENT_LANES);
        for group in groups.clone() {
            for (lane, &v) in sum.iter_mut().zip(group) {
                *lane += v;
            }
        }
        for group in groups.clone() {
            for (lane, &v) in squares.iter_mut().zip(group) {
                *lane += v * v;
            }
        }
        for group in groups {
            for (lane, &v) in max.iter_mut().zip(group) {
                let a = v.abs();
                *lane = if a > *lane { a } else { *lane };
            }
        }
    }
    let mut total = (
        sum.iter().sum::<f32>(),
        squares.iter().sum::<f32>(),
        max.iter().fold(0.0f32, |m, &a| if a > m { a } else { m }),
    );
    // Only the chunk's last piece can be ragged, so this is the chunk's tail.
    for &v in values.chunks_exact(MOMENT_LANES).remainder() {
        total.0 += v;
        total.1 += v * v;
        let a = v.abs();
        total.2 = if a > total.2 { a } else { total.2 };
    }
    total
}

/// The clipping threshold `c·σ` (∞ when clipping is off) and `max |g|` of `data`.
fn threshold_and_max(data: &[f32], clip: f64) -> (f32, f32) {
    let partials: Vec<(f32, f32, f32)> = if data.len() <= CHUNK {
        vec![chunk_moments(data)]
    } else {
        let arch = Arch::new();
        data.par_chunks(CHUNK)
            .map(|chunk| dispatch(arch, Moments(chunk)))
            .collect()
    };
    let (mut sum, mut squares, mut max) = (0.0f64, 0.0f64, 0.0f32);
    for &(s, q, m) in &partials {
        sum += f64::from(s);
        squares += f64::from(q);
        max = if m > max { m } else { max };
    }
    let n = data.len().max(1) as f64;
    let mean = sum / n;
    let sigma = (squares / n - mean * mean).max(0.0).sqrt();
    let threshold = if clip > 0.0 && sigma > 0.0 {
        (clip * sigma) as f32
    } else {
        f32::INFINITY
    };
    (threshold, max)
}

#[inline(always)]
fn encode_chunk(
    values: &[f32],
    threshold: f32,
    inverse: f32,
    draws: &mut ChunkDraws,
    out: &mut [u8],
) {
    let mut uniforms = [0.0f32; BLOCK];
    let mut codes = [0u8; BLOCK];
    for (block, target) in values.chunks(BLOCK).zip(out.chunks_mut(BLOCK / 4)) {
        draws.uniforms(&mut uniforms);
        for ((code, &v), &u) in codes.iter_mut().zip(block).zip(&uniforms) {
            let a = v.abs();
            let clipped = if a < threshold { a } else { threshold };
            let send = u8::from(u < clipped * inverse);
            *code = send + (send & u8::from(v < 0.0));
        }
        if block.len() == BLOCK {
            pack_byte_block::<2>(&codes, target);
        } else {
            pack_two_bit_codes(&codes[..block.len()], target);
        }
    }
}

/// [`chunk_moments`] as a [`Kernel`].
struct Moments<'a>(&'a [f32]);

impl Kernel for Moments<'_> {
    type Output = (f32, f32, f32);

    #[inline(always)]
    fn run(self) -> (f32, f32, f32) {
        chunk_moments(self.0)
    }
}

/// [`encode_chunk`] as a [`Kernel`].
struct Encode<'a> {
    values: &'a [f32],
    threshold: f32,
    inverse: f32,
    draws: &'a mut ChunkDraws,
    out: &'a mut [u8],
}

impl Kernel for Encode<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        encode_chunk(
            self.values,
            self.threshold,
            self.inverse,
            self.draws,
            self.out,
        );
    }
}

/// `out += value[code]` over one chunk; returns whether a code 3 was found.
fn decode_chunk(bytes: &[u8], values: [f32; 4], out: &mut [f32]) -> bool {
    let mut codes = [0u32; BLOCK];
    let mut corrupt = false;
    for (block, source) in out.chunks_mut(BLOCK).zip(bytes.chunks(BLOCK / 4)) {
        unpack_fixed::<2>(source, &mut codes[..block.len()]);
        for (value, &code) in block.iter_mut().zip(&codes) {
            corrupt |= code == 3;
            *value += values[(code & 3) as usize];
        }
    }
    corrupt
}

impl Compressor for TernGrad {
    fn name(&self) -> &str {
        "terngrad"
    }

    fn method_id(&self) -> MethodId {
        MethodId::TERNGRAD
    }

    fn aggregation(&self) -> Aggregation {
        Aggregation::Gather
    }

    fn compress(
        &mut self,
        input: TensorView<'_>,
        ctx: &StepContext<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), CompressError> {
        let clip = match ctx.number("clip") {
            Some(value) => checked_clip(value)?,
            None => self.clip,
        };
        let data = input.data;
        out.reserve(16 + 4 * input.shape.len() + 4 + data.len().div_ceil(4));
        write_header(self.method_id(), &input, out)?;
        // The zeroing of the payload (one thread) overlaps the moments pass.
        let s_at = out.len();
        let ((threshold, max), ()) = rayon::join(
            || threshold_and_max(data, clip),
            || out.resize(s_at + 4 + data.len().div_ceil(4), 0),
        );
        let s = if max < threshold { max } else { threshold };
        let inverse = 1.0 / s;
        let (s, inverse) = if s > 0.0 && s.is_finite() && inverse.is_finite() {
            (s, inverse)
        } else {
            (0.0, 0.0)
        };
        out[s_at..s_at + 4].copy_from_slice(&s.to_le_bytes());
        let start = s_at + 4;
        let codes = &mut out[start..];
        let key = |chunk: usize| {
            ChunkDraws::new(
                Stream::TernGrad,
                &[
                    ctx.seed,
                    ctx.step,
                    ctx.tensor as u64,
                    ctx.rank as u64,
                    chunk as u64,
                ],
            )
        };
        let arch = Arch::new();
        if data.len() <= CHUNK {
            let mut draws = key(0);
            dispatch(
                arch,
                Encode {
                    values: data,
                    threshold,
                    inverse,
                    draws: &mut draws,
                    out: codes,
                },
            );
        } else {
            codes
                .par_chunks_mut(CHUNK / 4)
                .zip(data.par_chunks(CHUNK))
                .enumerate()
                .for_each(|(c, (codes, values))| {
                    let mut draws = key(c);
                    dispatch(
                        arch,
                        Encode {
                            values,
                            threshold,
                            inverse,
                            draws: &mut draws,
                            out: codes,
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
        let s = reader.f32()?;
        if !(s.is_finite() && s >= 0.0) {
            return Err(WireError::Corrupt(format!("terngrad scale {s}")).into());
        }
        let bytes = reader.bytes(out.len().div_ceil(4))?;
        reader.finish()?;
        let step = scale * s;
        let values = [0.0, step, -step, 0.0];
        let corrupt = if out.len() <= CHUNK {
            decode_chunk(bytes, values, out)
        } else {
            out.par_chunks_mut(CHUNK)
                .zip(bytes.par_chunks(CHUNK / 4))
                .map(|(out, bytes)| decode_chunk(bytes, values, out))
                .reduce(|| false, |a, b| a | b)
        };
        if corrupt {
            return Err(WireError::Corrupt("terngrad code 3".into()).into());
        }
        Ok(())
    }
}
