//! `qsgd(levels: s, norm: l2|max, bucket: B)`: QSGD (Alistarh et al. 2017,
//! "QSGD: Communication-Efficient SGD via Gradient Quantization and Encoding"),
//! unbiased stochastic rounding to `s` levels per bucket.
//!
//! The tensor is cut into buckets of `B` consecutive elements (default 512, as in the
//! paper's experiments; `bucket: 0` = the whole tensor as one bucket; the last bucket
//! may be shorter). For a bucket `v` with norm `‖v‖` (`l2`, the paper's, by default;
//! `max` = ‖v‖∞, which uses the levels more fully) and each element:
//!
//! ```text
//! x_i = |v_i| · (s / ‖v‖),  l = ⌊x_i⌋
//! level_i = l + 1 with probability x_i − l, else l          (capped at s)
//! Q(v)_i = (‖v‖ / s) · sign(v_i) · level_i
//! ```
//!
//! so `E[Q(v)] = v` and, for the ℓ2 norm, `E‖Q(v) − v‖² ≤ min(B/s², √B/s) · ‖v‖²`
//! (the paper's Lemma 3.1). Default `s = 8`; `s` may be 1..=[`MAX_LEVELS`], and may
//! be a schedule (each step's value is rounded to the nearest whole number).
//!
//! Randomness: 16-bit uniforms `u` from [`ChunkDraws`] (the xoshiro256++
//! [`StreamRng`](super::rng::StreamRng) with [`Stream::Qsgd`]) keyed by `(seed, step,
//! tensor, rank, chunk)`, so a payload does not depend on the thread count. The level is
//! computed as `round(x + u − ½)`, which is `⌊x⌋ + 1` with probability `x − ⌊x⌋` up to
//! 2⁻¹⁷ (the 16-bit grid) plus 2⁻²⁴·x (the f32 sum) — see
//! [`ChunkDraws::centered_uniforms`]; for `s ≤ 128` the bias is below 2⁻¹⁶ of one
//! level, far under the rounding noise. A bucket whose `s / ‖v‖` is not a finite f32
//! (a norm below ~1e-34, or zero) is sent as zeros with norm 0.
//!
//! # Payload data (after the common header)
//!
//! | bytes | field |
//! |---:|---|
//! | 4 | `s` (u32, 1..=[`MAX_LEVELS`]) |
//! | 4 | `B` (u32; 0 = one bucket) |
//! | 4·k | the `k = ⌈n/B⌉` bucket norms (f32 each; finite, ≥ 0) |
//! | ⌈n·w/8⌉ | one `w`-bit code per element, LSB-first ([`super::bits`]) |
//!
//! with `w = L + 1`, `L = ⌈log2(s+1)⌉` ([`level_width`]; `w` = [`code_width`] = 5 bits
//! for `s = 8`), and each code `level << 1 | sign`, sign = 1 for a negative element
//! (`v < 0`). A payload is `16 + 4·d + 8 + 4·⌈n/B⌉ + ⌈n·w/8⌉` bytes. The decoder
//! reads `s` and `B` from the payload and adds `(scale·‖v‖/s)·level` with the
//! element's sign; a level above `s` is corrupt (detected while decoding, so on that
//! error `out` may have been partly updated).
//!
//! # Speed
//!
//! When whole buckets fit in a [`CHUNK`] (any `B` up to 64 Ki whose multiples of 64
//! reach one), each chunk computes its buckets' norms and quantizes them while they are
//! still in cache: one pass over memory. Otherwise the norms are a first parallel pass
//! (f32 per chunk, f64 across). The quantization works in blocks of [`BLOCK`] = 64
//! elements: 16 generator outputs, a branch-free loop the compiler vectorises (the
//! sign joins the level there, which is cheaper than packing a separate sign bitmap),
//! and a packer specialised on `w`. Each chunk runs compiled for AVX2 when the CPU has
//! it ([`super::bits::dispatch`]); the bits are the same either way.

use pulp::Arch;
use rayon::prelude::*;
use regimen_plugin::{ArgError, Args};

use super::bits::{
    dispatch, extend_zeroed, integer_arg, integer_in_range, max_abs, pack_byte_block, pack_fixed,
    packed_len, sum_squares, unpack_fixed, write_header, ChunkDraws, Kernel, BLOCK, CHUNK,
};
use super::rng::Stream;
use super::{
    Aggregation, CompressError, Compressor, MethodId, PayloadHeader, StepContext, TensorView,
    WireError, ERROR_FEEDBACK_ARG,
};

/// Most levels `s` (so a code is at most 16 bits).
pub const MAX_LEVELS: u32 = (1 << 15) - 1;

/// Levels when the script gives none.
pub const DEFAULT_LEVELS: u32 = 8;

/// Bucket size when the script gives none.
pub const DEFAULT_BUCKET: u32 = 512;

/// Bits of one level for `levels` = s: `⌈log2(s+1)⌉`.
pub fn level_width(levels: u32) -> u32 {
    u32::BITS - levels.leading_zeros()
}

/// Bits per element on the wire for `levels` = s: the level's [`level_width`] plus one
/// for the sign.
pub fn code_width(levels: u32) -> u32 {
    level_width(levels) + 1
}

/// Which norm scales a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QsgdNorm {
    /// ‖v‖₂ (the paper's).
    L2,
    /// ‖v‖∞.
    Max,
}

/// The `qsgd` compressor; it keeps no state.
#[derive(Clone, Debug)]
pub struct Qsgd {
    levels: u32,
    norm: QsgdNorm,
    bucket: u32,
}

impl Qsgd {
    /// From `levels` (1..=32767, default 8), `norm` (`l2` or `max`, default `l2`) and
    /// `bucket` (elements per bucket, default 512, 0 = whole tensor).
    pub fn new(args: &Args) -> Result<Self, ArgError> {
        args.only(&["levels", "norm", "bucket", ERROR_FEEDBACK_ARG])?;
        let levels = integer_arg(args, "levels", DEFAULT_LEVELS.into(), 1, MAX_LEVELS.into())?;
        let norm = match args.text("norm", "l2")? {
            "l2" => QsgdNorm::L2,
            "max" => QsgdNorm::Max,
            other => {
                return Err(ArgError {
                    argument: Some("norm".into()),
                    message: format!("expected `l2` or `max`, got `{other}`"),
                })
            }
        };
        let bucket = integer_arg(args, "bucket", DEFAULT_BUCKET.into(), 0, u32::MAX.into())?;
        Ok(Self {
            levels: levels as u32,
            norm,
            bucket: bucket as u32,
        })
    }

    /// The levels `s` (when not scheduled).
    pub fn levels(&self) -> u32 {
        self.levels
    }

    /// The bucket size (0 = whole tensor).
    pub fn bucket(&self) -> u32 {
        self.bucket
    }

    /// The norm.
    pub fn norm(&self) -> QsgdNorm {
        self.norm
    }
}

/// `qsgd`: stochastic quantization to `levels` levels per bucket.
pub fn build(args: &Args) -> Result<Box<dyn Compressor>, ArgError> {
    Ok(Box::new(Qsgd::new(args)?))
}

/// Run `$f::<W>($args…)` for the runtime code width `$width` (2..=16).
macro_rules! with_width {
    ($width:expr, $f:ident ( $($arg:expr),* )) => {
        match $width {
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            8 => $f::<8>($($arg),*),
            9 => $f::<9>($($arg),*),
            10 => $f::<10>($($arg),*),
            11 => $f::<11>($($arg),*),
            12 => $f::<12>($($arg),*),
            13 => $f::<13>($($arg),*),
            14 => $f::<14>($($arg),*),
            15 => $f::<15>($($arg),*),
            _ => $f::<16>($($arg),*),
        }
    };
}

/// One bucket's norm; Σv² falls back to f64 when it overflows f32.
#[inline(always)]
fn bucket_norm(values: &[f32], norm: QsgdNorm) -> f32 {
    match norm {
        QsgdNorm::Max => max_abs(values),
        QsgdNorm::L2 => {
            let squares = sum_squares(values);
            if squares.is_finite() {
                squares.sqrt()
            } else {
                let wide: f64 = values.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
                wide.sqrt() as f32
            }
        }
    }
}

/// The norm of a bucket larger than a chunk: chunk partials in parallel, combined in
/// order in f64.
fn large_bucket_norm(values: &[f32], norm: QsgdNorm) -> f32 {
    match norm {
        QsgdNorm::Max => super::bits::par_max_abs(values),
        QsgdNorm::L2 => {
            let partials: Vec<f64> = values
                .par_chunks(CHUNK)
                .map(|chunk| {
                    let squares = sum_squares(chunk);
                    if squares.is_finite() {
                        f64::from(squares)
                    } else {
                        chunk.iter().map(|&v| f64::from(v) * f64::from(v)).sum()
                    }
                })
                .collect();
            partials.iter().sum::<f64>().sqrt() as f32
        }
    }
}

/// The norm actually sent and the multiplier `s/‖v‖` (both 0 when the multiplier is
/// not a finite number).
#[inline(always)]
fn norm_and_multiplier(norm: f32, levels: f32) -> (f32, f32) {
    let multiplier = levels / norm;
    if norm > 0.0 && norm.is_finite() && multiplier.is_finite() {
        (norm, multiplier)
    } else {
        (0.0, 0.0)
    }
}

/// The geometry of one call.
#[derive(Clone, Copy)]
struct Layout {
    /// Elements per bucket (≥ 1).
    bucket: usize,
    /// The levels s, as f32.
    levels: f32,
}

impl Layout {
    /// `out[p] =` the value of the bucket of element `first + p`, from `per_bucket`
    /// (0 past its end).
    #[inline(always)]
    fn spread(&self, per_bucket: &[f32], first: usize, out: &mut [f32]) {
        let mut p = 0;
        while p < out.len() {
            let bucket = (first + p) / self.bucket;
            let end = ((bucket + 1) * self.bucket - first).min(out.len());
            let value = per_bucket.get(bucket).copied().unwrap_or(0.0);
            out[p..end].fill(value);
            p = end;
        }
    }
}

/// 1.5·2²³: `x + MAGIC` rounds `x` (|x| < 2²²) to an integer held in the low mantissa
/// bits.
const MAGIC: f32 = 12_582_912.0;

/// Quantize one chunk into its packed `W`-bit codes; `first` is the index of
/// `values[0]` counted from the start of bucket 0 of `multipliers`.
#[inline(always)]
fn encode_chunk<const W: usize>(
    layout: Layout,
    values: &[f32],
    first: usize,
    multipliers: &[f32],
    draws: &mut ChunkDraws,
    out: &mut [u8],
) {
    let levels = layout.levels;
    let mut scale = [0.0f32; BLOCK];
    let mut offsets = [0.0f32; BLOCK];
    let mut codes = [0u32; BLOCK];
    let mut byte_codes = [0u8; BLOCK];
    let blocks = values.chunks(BLOCK).zip(out.chunks_mut(BLOCK / 8 * W));
    for (b, (block, target)) in blocks.enumerate() {
        let len = block.len();
        let start = first + b * BLOCK;
        draws.centered_uniforms(&mut offsets);
        let bucket = start / layout.bucket;
        let one_bucket = bucket == (start + len - 1) / layout.bucket;
        if W <= 8 && one_bucket && len == BLOCK {
            // The usual case: a whole block in one bucket, codes of a byte or less.
            let m = multipliers.get(bucket).copied().unwrap_or(0.0);
            for ((code, &v), &offset) in byte_codes.iter_mut().zip(block).zip(&offsets) {
                *code = quantize(v, m, offset, levels) as u8;
            }
            pack_byte_block::<W>(&byte_codes, target);
            continue;
        }
        if one_bucket {
            let m = multipliers.get(bucket).copied().unwrap_or(0.0);
            for ((code, &v), &offset) in codes.iter_mut().zip(block).zip(&offsets) {
                *code = quantize(v, m, offset, levels);
            }
        } else {
            layout.spread(multipliers, start, &mut scale[..len]);
            for (((code, &v), &m), &offset) in codes.iter_mut().zip(block).zip(&scale).zip(&offsets)
            {
                *code = quantize(v, m, offset, levels);
            }
        }
        pack_fixed::<W>(&codes[..len], target);
    }
}

/// The code `level << 1 | sign` of `v` with multiplier `m = s/‖v‖` and the centred
/// draw `offset`: `⌊x + u⌋ = round(x + u − ½)` is `⌊x⌋ + 1` with probability
/// `x − ⌊x⌋`. `x` is capped at s first, so the level needs no cap (`x + offset < s +
/// ½`) and `x < 2²²`; adding 1.5·2²³ rounds to the nearest integer and leaves it in
/// the low mantissa bits, without a float-to-int conversion (which would not
/// vectorise).
#[inline(always)]
fn quantize(v: f32, m: f32, offset: f32, levels: f32) -> u32 {
    let x = v.abs() * m;
    let x = if x < levels { x } else { levels };
    let level = ((x + offset) + MAGIC)
        .to_bits()
        .wrapping_sub(MAGIC.to_bits());
    (level << 1) | u32::from(v < 0.0)
}

/// [`encode_chunk`] for the runtime code width, as a [`Kernel`].
struct EncodeChunk<'a> {
    layout: Layout,
    width: u32,
    values: &'a [f32],
    first: usize,
    multipliers: &'a [f32],
    draws: &'a mut ChunkDraws,
    out: &'a mut [u8],
}

impl Kernel for EncodeChunk<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Self {
            layout,
            width,
            values,
            first,
            multipliers,
            draws,
            out,
        } = self;
        with_width!(
            width,
            encode_chunk(layout, values, first, multipliers, draws, out)
        );
    }
}

/// A chunk of whole buckets: their norms (written to `norm_bytes`), then their codes,
/// while the chunk is still in cache.
struct EncodeBuckets<'a> {
    layout: Layout,
    width: u32,
    norm: QsgdNorm,
    values: &'a [f32],
    norm_bytes: &'a mut [u8],
    draws: &'a mut ChunkDraws,
    out: &'a mut [u8],
}

impl Kernel for EncodeBuckets<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Self {
            layout,
            width,
            norm,
            values,
            norm_bytes,
            draws,
            out,
        } = self;
        let mut multipliers = Vec::with_capacity(norm_bytes.len() / 4);
        for (bucket, bytes) in values
            .chunks(layout.bucket)
            .zip(norm_bytes.chunks_exact_mut(4))
        {
            let (sent, multiplier) = norm_and_multiplier(bucket_norm(bucket, norm), layout.levels);
            bytes.copy_from_slice(&sent.to_le_bytes());
            multipliers.push(multiplier);
        }
        with_width!(
            width,
            encode_chunk(layout, values, 0, &multipliers, draws, out)
        );
    }
}

/// `out += scale · Q` for one chunk; returns whether a level above s was found.
fn decode_chunk<const W: usize>(
    layout: Layout,
    code_bytes: &[u8],
    units: &[f32],
    first: usize,
    out: &mut [f32],
) -> bool {
    let max_level = layout.levels as u32;
    let mut unit = [0.0f32; BLOCK];
    let mut codes = [0u32; BLOCK];
    let mut corrupt = false;
    let blocks = out.chunks_mut(BLOCK).zip(code_bytes.chunks(BLOCK / 8 * W));
    for (b, (values, source)) in blocks.enumerate() {
        let len = values.len();
        layout.spread(units, first + b * BLOCK, &mut unit[..len]);
        unpack_fixed::<W>(source, &mut codes[..len]);
        for ((value, &code), &u) in values.iter_mut().zip(&codes).zip(&unit) {
            let level = code >> 1;
            corrupt |= level > max_level;
            let magnitude = u * level as f32;
            *value += if code & 1 == 0 { magnitude } else { -magnitude };
        }
    }
    corrupt
}

impl Compressor for Qsgd {
    fn name(&self) -> &str {
        "qsgd"
    }

    fn method_id(&self) -> MethodId {
        MethodId::QSGD
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
        let levels = match ctx.number("levels") {
            Some(value) => integer_in_range("levels", value.round(), 1, MAX_LEVELS.into())? as u32,
            None => self.levels,
        };
        let width = code_width(levels);
        let data = input.data;
        let n = data.len();
        let bucket = if self.bucket == 0 {
            n.max(1)
        } else {
            self.bucket as usize
        };
        let buckets = n.div_ceil(bucket);
        let code_bytes = packed_len(n, width).ok_or_else(|| {
            CompressError::Failed(format!("qsgd: {n} elements do not fit in memory"))
        })?;
        out.reserve(16 + 4 * input.shape.len() + 8 + 4 * buckets + code_bytes);
        write_header(self.method_id(), &input, out)?;
        out.extend_from_slice(&levels.to_le_bytes());
        out.extend_from_slice(&self.bucket.to_le_bytes());
        let norms_at = out.len();
        extend_zeroed(out, 4 * buckets + code_bytes);
        let (norm_bytes, code_out) = out[norms_at..].split_at_mut(4 * buckets);
        let layout = Layout {
            bucket,
            levels: levels as f32,
        };
        let key = |chunk: usize| {
            ChunkDraws::new(
                Stream::Qsgd,
                &[
                    ctx.seed,
                    ctx.step,
                    ctx.tensor as u64,
                    ctx.rank as u64,
                    chunk as u64,
                ],
            )
        };
        let norm = self.norm;
        let arch = Arch::new();
        // Whole buckets per chunk when a multiple of lcm(B, 64) fits in one.
        let aligned = bucket / gcd(bucket, BLOCK) * BLOCK;
        if aligned <= CHUNK {
            let chunk_len = CHUNK / aligned * aligned;
            let buckets_per_chunk = chunk_len / bucket;
            let encode = |c: usize, norm_bytes: &mut [u8], codes: &mut [u8], values: &[f32]| {
                let mut draws = key(c);
                dispatch(
                    arch,
                    EncodeBuckets {
                        layout,
                        width,
                        norm,
                        values,
                        norm_bytes,
                        draws: &mut draws,
                        out: codes,
                    },
                );
            };
            if n <= chunk_len {
                encode(0, norm_bytes, code_out, data);
            } else {
                let code_chunk = packed_len(chunk_len, width).unwrap_or(usize::MAX);
                norm_bytes
                    .par_chunks_mut(4 * buckets_per_chunk)
                    .zip(code_out.par_chunks_mut(code_chunk))
                    .zip(data.par_chunks(chunk_len))
                    .enumerate()
                    .for_each(|(c, ((norm_bytes, codes), values))| {
                        encode(c, norm_bytes, codes, values)
                    });
            }
        } else {
            let norms: Vec<f32> = if bucket <= CHUNK {
                data.par_chunks(bucket)
                    .map(|v| bucket_norm(v, norm))
                    .collect()
            } else {
                data.chunks(bucket)
                    .map(|v| large_bucket_norm(v, norm))
                    .collect()
            };
            let mut multipliers = Vec::with_capacity(buckets);
            for (&norm, bytes) in norms.iter().zip(norm_bytes.chunks_exact_mut(4)) {
                let (sent, multiplier) = norm_and_multiplier(norm, layout.levels);
                bytes.copy_from_slice(&sent.to_le_bytes());
                multipliers.push(multiplier);
            }
            let code_chunk = packed_len(CHUNK, width).unwrap_or(usize::MAX);
            code_out
                .par_chunks_mut(code_chunk)
                .zip(data.par_chunks(CHUNK))
                .enumerate()
                .for_each(|(c, (codes, values))| {
                    let mut draws = key(c);
                    let first = c * CHUNK;
                    dispatch(
                        arch,
                        EncodeChunk {
                            layout,
                            width,
                            values,
                            first,
                            multipliers: &multipliers,
                            draws: &mut draws,
                            out: codes,
                        },
                    );
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
        let levels = reader.u32()?;
        if !(1..=MAX_LEVELS).contains(&levels) {
            return Err(WireError::Corrupt(format!("qsgd levels {levels}")).into());
        }
        let width = code_width(levels);
        let n = out.len();
        let bucket = match reader.u32()? {
            0 => n.max(1),
            b => b as usize,
        };
        let buckets = n.div_ceil(bucket);
        let norm_bytes = reader.array(buckets, 4)?;
        let code_bytes = packed_len(n, width)
            .ok_or_else(|| WireError::Corrupt("qsgd code section overflows".into()))?;
        let codes = reader.bytes(code_bytes)?;
        reader.finish()?;
        let mut units = Vec::with_capacity(buckets);
        for bytes in norm_bytes.chunks_exact(4) {
            let norm = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            if !(norm.is_finite() && norm >= 0.0) {
                return Err(WireError::Corrupt(format!("qsgd bucket norm {norm}")).into());
            }
            units.push(scale * (norm / levels as f32));
        }
        let layout = Layout {
            bucket,
            levels: levels as f32,
        };
        let corrupt = if n <= CHUNK {
            with_width!(width, decode_chunk(layout, codes, &units, 0, out))
        } else {
            let code_chunk = packed_len(CHUNK, width).unwrap_or(usize::MAX);
            out.par_chunks_mut(CHUNK)
                .zip(codes.par_chunks(code_chunk))
                .enumerate()
                .map(|(c, (values, codes))| {
                    with_width!(
                        width,
                        decode_chunk(layout, codes, &units, c * CHUNK, values)
                    )
                })
                .reduce(|| false, |a, b| a | b)
        };
        if corrupt {
            return Err(WireError::Corrupt(format!("qsgd level above {levels}")).into());
        }
        Ok(())
    }
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}
