//! What the quantizing compressors share: LSB-first bit packing of fixed-width codes,
//! the sign-bit and 2-bit packers, the fixed work chunk that makes parallel results
//! independent of the thread count, the 16-bit uniform draws of stochastic rounding
//! ([`ChunkDraws`]), and the chunked reductions (max |x|, Σx², Σ|x|) they start from.
//!
//! # Bit order
//!
//! Codes of `width` bits are packed *LSB-first*: code `i` occupies bits
//! `i·width .. (i+1)·width` of the byte stream, where bit `k` of the stream is bit
//! `k mod 8` (value `1 << (k mod 8)`) of byte `⌊k/8⌋`, and the code's least
//! significant bit comes first. `count` codes take `⌈count·width/8⌉` bytes; the unused
//! high bits of the last byte are zero. With `width` 1 this is the usual
//! little-endian bitmap: element `i` is bit `i mod 8` of byte `⌊i/8⌋`.
//!
//! # Speed
//!
//! Eight codes of `width` bits fill exactly `width` bytes, so the packers work on
//! groups of eight with the width a compile-time constant (one instantiation per
//! width, picked once per call): a handful of shifts and one store per group, no
//! per-bit loop and no branch on the data. Sign bits and 2-bit codes are gathered
//! from one byte per element with a single multiplication per output byte. Every loop
//! is safe Rust written for the auto-vectoriser: fixed-size blocks, no branches, no
//! float-to-int conversions (which the saturating `as` would scalarise).
//!
//! The default build targets baseline x86-64 (SSE2). The quantizers run each chunk's
//! loops through [`dispatch`] (pulp's run-time CPU detection), which compiles them a
//! second time with AVX2 enabled and takes that copy when the CPU has it; the random
//! generator's step is written with pulp's AVX2 vector operations ([`ChunkDraws`]).
//! Both copies do the same integer operations and separate (never fused) IEEE float
//! operations in the same order, so payloads are bit-identical on every CPU. On the
//! project's 2-core machine (25 M elements, medians of 11 runs) this took QSGD (s = 8)
//! from 16 to about 9 ms, TernGrad from 15 to about 8.5 ms and int8 from 11 to about
//! 7–8 ms, against a 4–6.5 ms two-thread memcpy.
//!
//! # Chunks and reductions
//!
//! Every quantizer cuts its tensor into chunks of [`CHUNK`] elements (a multiple of
//! 64, so any chunk's packed codes start on a byte boundary for every width) that
//! rayon processes in any order; random streams are keyed by the chunk index, and a
//! reduction computes one partial per chunk and combines the partials in chunk order,
//! so every result is the same on 1 thread or 64.
//!
//! # Payload helpers
//!
//! [`write_header`] and [`integer_arg`] hold the checks every built-in quantizer makes
//! on its input tensor and its integer arguments.

use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;
use regimen_plugin::{ArgError, Args};

use super::rng::{Stream, StreamRng};
use super::{CompressError, MethodId, PayloadHeader, TensorView};

/// Elements per work chunk of the quantizers (64 Ki). Fixed, so results never depend
/// on the number of threads.
pub const CHUNK: usize = 64 * 1024;

/// Widest code [`pack_codes`] and [`unpack_codes`] handle, in bits.
pub const MAX_CODE_WIDTH: u32 = 16;

/// Bytes that `count` codes of `width` bits take: `⌈count·width / 8⌉`, or `None` when
/// that overflows `usize`.
pub fn packed_len(count: usize, width: u32) -> Option<usize> {
    count
        .checked_mul(width as usize)
        .map(|bits| bits.div_ceil(8))
}

/// Pack the low `width` bits of each of `codes` LSB-first into `out` (higher bits of a
/// code are ignored). `out` should hold [`packed_len`]`(codes.len(), width)` bytes;
/// codes that do not fit a shorter `out` are dropped, never written out of bounds.
/// A `width` of 0 or above [`MAX_CODE_WIDTH`] writes nothing.
pub fn pack_codes(codes: &[u32], width: u32, out: &mut [u8]) {
    match width {
        1 => pack_fixed::<1>(codes, out),
        2 => pack_fixed::<2>(codes, out),
        3 => pack_fixed::<3>(codes, out),
        4 => pack_fixed::<4>(codes, out),
        5 => pack_fixed::<5>(codes, out),
        6 => pack_fixed::<6>(codes, out),
        7 => pack_fixed::<7>(codes, out),
        8 => pack_fixed::<8>(codes, out),
        9 => pack_fixed::<9>(codes, out),
        10 => pack_fixed::<10>(codes, out),
        11 => pack_fixed::<11>(codes, out),
        12 => pack_fixed::<12>(codes, out),
        13 => pack_fixed::<13>(codes, out),
        14 => pack_fixed::<14>(codes, out),
        15 => pack_fixed::<15>(codes, out),
        16 => pack_fixed::<16>(codes, out),
        _ => {}
    }
}

/// Unpack `codes.len()` codes of `width` bits from `bytes` (the inverse of
/// [`pack_codes`]). Codes past the end of a short `bytes` are left untouched; a
/// `width` of 0 or above [`MAX_CODE_WIDTH`] reads nothing.
pub fn unpack_codes(bytes: &[u8], width: u32, codes: &mut [u32]) {
    match width {
        1 => unpack_fixed::<1>(bytes, codes),
        2 => unpack_fixed::<2>(bytes, codes),
        3 => unpack_fixed::<3>(bytes, codes),
        4 => unpack_fixed::<4>(bytes, codes),
        5 => unpack_fixed::<5>(bytes, codes),
        6 => unpack_fixed::<6>(bytes, codes),
        7 => unpack_fixed::<7>(bytes, codes),
        8 => unpack_fixed::<8>(bytes, codes),
        9 => unpack_fixed::<9>(bytes, codes),
        10 => unpack_fixed::<10>(bytes, codes),
        11 => unpack_fixed::<11>(bytes, codes),
        12 => unpack_fixed::<12>(bytes, codes),
        13 => unpack_fixed::<13>(bytes, codes),
        14 => unpack_fixed::<14>(bytes, codes),
        15 => unpack_fixed::<15>(bytes, codes),
        16 => unpack_fixed::<16>(bytes, codes),
        _ => {}
    }
}

/// The eight codes of one group, `W` bits each, as one little-endian integer.
#[inline(always)]
fn join_group<const W: usize>(group: &[u32]) -> u128 {
    let mask = (1u32 << W) - 1;
    if W <= 8 {
        // 8·W ≤ 64 bits: a u64 is enough and cheaper than u128 shifts.
        let mut acc = 0u64;
        for (j, &code) in group.iter().enumerate() {
            acc |= u64::from(code & mask) << (j * W);
        }
        u128::from(acc)
    } else {
        let mut acc = 0u128;
        for (j, &code) in group.iter().enumerate() {
            acc |= u128::from(code & mask) << (j * W);
        }
        acc
    }
}

/// [`pack_codes`] with the width `W` (1..=16) fixed at compile time, for callers
/// whose own loop is already specialised on it.
#[inline(always)]
pub fn pack_fixed<const W: usize>(codes: &[u32], out: &mut [u8]) {
    const { assert!(W >= 1 && W <= MAX_CODE_WIDTH as usize) };
    let mut groups = codes.chunks_exact(8);
    let mut targets = out.chunks_exact_mut(W);
    for (group, target) in (&mut groups).zip(&mut targets) {
        target.copy_from_slice(&join_group::<W>(group).to_le_bytes()[..W]);
    }
    let rest = groups.remainder();
    if !rest.is_empty() {
        let whole = codes.len() / 8;
        let tail_len = (rest.len() * W).div_ceil(8);
        if let Some(target) = out.get_mut(whole * W..) {
            let len = tail_len.min(target.len());
            target[..len].copy_from_slice(&join_group::<W>(rest).to_le_bytes()[..len]);
        }
    }
}

/// One [`BLOCK`] of 64 codes of `W` ≤ 8 bits held one per byte (higher bits ignored),
/// packed into its `8·W` bytes in the layout of [`pack_codes`]. Where
/// [`pack_fixed`] joins codes one at a time, this merges neighbouring fields in
/// place (bytes → 16-bit pairs → 32-bit quads → one `8·W`-bit group per u64), every
/// step the same masks and shifts on each u64, which the compiler runs on vectors;
/// the eight groups are then laid end to end in `W` whole words. `out` shorter than
/// `8·W` bytes gets what fits; a `W` of 0 or above 8 writes nothing.
#[inline(always)]
pub fn pack_byte_block<const W: usize>(codes: &[u8; BLOCK], out: &mut [u8]) {
    if W == 0 || W > 8 {
        return;
    }
    const EVEN_BYTES: u64 = 0x00FF_00FF_00FF_00FF;
    const EVEN_PAIRS: u64 = 0x0000_FFFF_0000_FFFF;
    let mask = ((1u64 << W) - 1) * 0x0101_0101_0101_0101;
    let octets: [[u8; 8]; BLOCK / 8] = pulp::cast(*codes);
    // A plain loop: `array::map` is an out-of-line call compiled without the
    // caller's target features.
    let mut groups = [0u64; BLOCK / 8];
    for (group, &octet) in groups.iter_mut().zip(&octets) {
        let x = u64::from_le_bytes(octet) & mask;
        let x = (x & EVEN_BYTES) | (((x >> 8) & EVEN_BYTES) << W);
        let x = (x & EVEN_PAIRS) | (((x >> 16) & EVEN_PAIRS) << (2 * W));
        *group = (x & 0xFFFF_FFFF) | ((x >> 32) << (4 * W));
    }
    let mut words = [0u64; 8];
    for (j, &group) in groups.iter().enumerate() {
        let bit = j * 8 * W;
        let (word, offset) = (bit / 64, bit % 64);
        words[word] |= group << offset;
        // A group straddles two words only when it does not start on a word.
        if offset + 8 * W > 64 {
            words[word + 1] |= group >> (64 - offset);
        }
    }
    if let Some(whole) = out.get_mut(..8 * W) {
        for (target, word) in whole.chunks_exact_mut(8).zip(&words) {
            target.copy_from_slice(&word.to_le_bytes());
        }
    } else {
        for (target, word) in out.chunks_mut(8).zip(&words) {
            let len = target.len();
            target.copy_from_slice(&word.to_le_bytes()[..len]);
        }
    }
}

/// [`pack_codes`] for 2-bit codes held in bytes (each < 4; higher bits are ignored):
/// four codes per byte, the same LSB-first layout. `out` should hold
/// `⌈codes.len()/4⌉` bytes. One multiplication gathers four codes: with code `j` in
/// byte `j` of a u32, `× 0x41041` (shifts 0, 6, 12, 18) moves code `j` to bits
/// `18 + 2j`, and every other partial product lands on its own bits below 18 or at 26
/// and above, so nothing carries into bits 18..26.
#[inline(always)]
pub fn pack_two_bit_codes(codes: &[u8], out: &mut [u8]) {
    let mut groups = codes.chunks_exact(4);
    for (group, byte) in (&mut groups).zip(out.iter_mut()) {
        let word = u32::from_le_bytes([group[0], group[1], group[2], group[3]]) & 0x0303_0303;
        *byte = (word.wrapping_mul(0x41041) >> 18) as u8;
    }
    let rest = groups.remainder();
    if !rest.is_empty() {
        if let Some(byte) = out.get_mut(codes.len() / 4) {
            *byte = rest
                .iter()
                .enumerate()
                .fold(0u8, |bits, (j, &code)| bits | ((code & 3) << (2 * j)));
        }
    }
}

/// Split one little-endian group of eight `W`-bit codes.
#[inline(always)]
fn split_group<const W: usize>(acc: u128, group: &mut [u32]) {
    let mask = (1u32 << W) - 1;
    if W <= 8 {
        let acc = acc as u64;
        for (j, code) in group.iter_mut().enumerate() {
            *code = (acc >> (j * W)) as u32 & mask;
        }
    } else {
        for (j, code) in group.iter_mut().enumerate() {
            *code = (acc >> (j * W)) as u32 & mask;
        }
    }
}

/// [`unpack_codes`] with the width `W` (1..=16) fixed at compile time.
#[inline]
pub fn unpack_fixed<const W: usize>(bytes: &[u8], codes: &mut [u32]) {
    const { assert!(W >= 1 && W <= MAX_CODE_WIDTH as usize) };
    let whole = codes.len() / 8;
    let mut groups = codes.chunks_exact_mut(8);
    let mut sources = bytes.chunks_exact(W);
    for (group, source) in (&mut groups).zip(&mut sources) {
        let mut word = [0u8; 16];
        word[..W].copy_from_slice(source);
        split_group::<W>(u128::from_le_bytes(word), group);
    }
    let rest = groups.into_remainder();
    if !rest.is_empty() {
        if let Some(source) = bytes.get(whole * W..) {
            let len = ((rest.len() * W).div_ceil(8)).min(source.len()).min(16);
            let mut word = [0u8; 16];
            word[..len].copy_from_slice(&source[..len]);
            split_group::<W>(u128::from_le_bytes(word), rest);
        }
    }
}

/// Pack one bit per value, set when the value is negative (`v < 0`: `-0.0` and
/// `+0.0` give 0; a NaN gives its sign bit), LSB-first; `out` should hold
/// `⌈values.len()/8⌉` bytes (values beyond a shorter `out` are dropped).
pub fn pack_negative(values: &[f32], out: &mut [u8]) {
    let mut groups = values.chunks_exact(8);
    for (group, byte) in (&mut groups).zip(out.iter_mut()) {
        *byte = negative_byte(group);
    }
    let rest = groups.remainder();
    if !rest.is_empty() {
        if let Some(byte) = out.get_mut(values.len() / 8) {
            *byte = negative_byte(rest);
        }
    }
}

/// The sign bits of up to 8 values. The comparisons fill one 0/1 byte each (which
/// vectorises); one multiplication then gathers byte `j` into bit `j`:
/// `flags · 0x0102040810204080` moves byte `j` (bit `8j`) to bit `56 + j`, and every
/// other partial product lands below bit 56 or above bit 63 on a distinct position,
/// so nothing carries into the top byte.
#[inline(always)]
fn negative_byte(group: &[f32]) -> u8 {
    let mut flags = [0u8; 8];
    for (flag, &v) in flags.iter_mut().zip(group) {
        // `v < 0` for every non-NaN `v` as an integer comparison (which vectorises
        // better): the bits of a negative number other than −0.0 exceed 0x8000_0000.
        *flag = u8::from(v.to_bits() > 0x8000_0000);
    }
    (u64::from_le_bytes(flags).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u8
}

/// `SPREAD[b]` holds bit `j` of `b` in byte `j` (a 0/1 flag per element).
static SPREAD: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let mut j = 0;
        while j < 8 {
            table[b] |= (((b >> j) & 1) as u64) << (8 * j);
            j += 1;
        }
        b += 1;
    }
    table
};

/// The 8 bits of `byte` as 0/1 flags, bit `j` in entry `j` (the inverse of the
/// packing above, through a 2 KiB table, because per-element variable shifts do not
/// vectorise).
#[inline(always)]
pub fn bit_flags(byte: u8) -> [u8; 8] {
    SPREAD[usize::from(byte)].to_le_bytes()
}

/// A loop body that [`dispatch`] runs compiled for the CPU's best instruction set.
/// Implementations mark `run` (and everything it calls in the hot loop)
/// `#[inline(always)]`, so it is compiled inside pulp's function with the target
/// features enabled and the auto-vectoriser uses 256-bit registers where the CPU has
/// them. (A closure would not do: the `FnOnce` shim rustc calls it through is a
/// separate function compiled for the baseline.)
pub trait Kernel {
    /// What the body returns.
    type Output;
    /// The body.
    fn run(self) -> Self::Output;
}

/// The [`WithSimd`] wrapper of a [`Kernel`].
struct Dispatched<K>(K);

impl<K: Kernel> WithSimd for Dispatched<K> {
    type Output = K::Output;

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) -> K::Output {
        self.0.run()
    }
}

/// Run `kernel` compiled for the instruction set `arch` (AVX2 on x86-64 when
/// [`Arch::new`] detects it, the build's baseline otherwise). Only integer and
/// separate IEEE float operations are used (never fused), so every path gives the same
/// bits.
#[inline(always)]
pub fn dispatch<K: Kernel>(arch: Arch, kernel: K) -> K::Output {
    arch.dispatch(Dispatched(kernel))
}

/// [`max_abs`] as a [`Kernel`].
struct MaxAbs<'a>(&'a [f32]);

impl Kernel for MaxAbs<'_> {
    type Output = f32;

    #[inline(always)]
    fn run(self) -> f32 {
        max_abs(self.0)
    }
}

/// Elements per block of the stochastic quantizers: one block draws 16 random words
/// and packs its codes into whole 64-bit words' worth of bytes.
pub const BLOCK: usize = 64;

/// Independent generators a [`ChunkDraws`] advances side by side.
pub const DRAW_LANES: usize = 4;

/// The random draws of one work chunk: [`DRAW_LANES`] [`StreamRng`]s, lane `l` keyed by
/// the chunk's key plus `l`, drawn round-robin. One xoshiro256++ alone is
/// latency-bound (each output waits for the previous state) and would cost more than
/// the quantization it feeds; independent lanes let the CPU overlap their steps. The
/// lanes' states are held word by word (`state[w][l]` = word `w` of lane `l`), so one
/// step of all lanes is a handful of operations on 4×u64 vectors.
#[derive(Clone, Debug)]
pub struct ChunkDraws {
    state: [[u64; DRAW_LANES]; 4],
    /// AVX2, when the CPU has it: the step in explicit 4×u64 vector operations
    /// (left to itself the compiler does the rotations in scalar registers, AVX2
    /// having no vector rotate, and moves every lane back and forth).
    #[cfg(target_arch = "x86_64")]
    avx2: Option<pulp::x86::V3>,
}

impl ChunkDraws {
    /// The draws of `stream` for the chunk `key` (e.g. `[seed, step, tensor, rank,
    /// chunk]`, at most 7 parts; more are ignored).
    pub fn new(stream: Stream, key: &[u64]) -> Self {
        let mut full = [0u64; 8];
        let used = key.len().min(7);
        full[..used].copy_from_slice(&key[..used]);
        let mut state = [[0u64; DRAW_LANES]; 4];
        for lane in 0..DRAW_LANES {
            full[used] = lane as u64;
            let words = StreamRng::new(stream, &full[..=used]).state();
            for (column, word) in state.iter_mut().zip(words) {
                column[lane] = word;
            }
        }
        Self {
            state,
            #[cfg(target_arch = "x86_64")]
            avx2: pulp::x86::V3::try_new(),
        }
    }

    /// The next output of every lane: [`StreamRng::next_u64`] on each lane's state.
    #[inline(always)]
    pub fn next_words(&mut self) -> [u64; DRAW_LANES] {
        let mut words = [[0u64; DRAW_LANES]; 1];
        self.fill_words(&mut words);
        words[0]
    }

    /// `words[r]` = the outputs of round `r`, the state kept in locals (registers)
    /// throughout, so the four lanes step together as 4×u64 vector operations.
    #[inline(always)]
    fn fill_words<const ROUNDS: usize>(&mut self, words: &mut [[u64; DRAW_LANES]; ROUNDS]) {
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = self.avx2 {
            self.state = step_avx2(simd, self.state, words);
            return;
        }
        let [mut s0, mut s1, mut s2, mut s3] = self.state;
        for round in words.iter_mut() {
            for l in 0..DRAW_LANES {
                round[l] = s0[l]
                    .wrapping_add(s3[l])
                    .rotate_left(23)
                    .wrapping_add(s0[l]);
                let t = s1[l] << 17;
                s2[l] ^= s0[l];
                s3[l] ^= s1[l];
                s1[l] ^= s2[l];
                s0[l] ^= s3[l];
                s2[l] ^= t;
                s3[l] = s3[l].rotate_left(45);
            }
        }
        self.state = [s0, s1, s2, s3];
    }

    /// Fill `uniforms` with draws `(k + ½) / 2¹⁶`, `k` uniform in `0..2¹⁶`: four
    /// 16-bit draws per 64-bit output (low bits first; outputs taken lane by lane,
    /// round by round), so the generators cost a quarter of a step per element.
    /// `u < p` is then a Bernoulli(p) draw.
    ///
    /// Sixteen bits are enough for stochastic rounding: `P(u < p)` is `p` rounded to
    /// the nearest multiple of 2⁻¹⁶, so the rounding's bias is at most 2⁻¹⁷ of one
    /// quantization step per element — far below the rounding noise itself
    /// (`√(p(1−p))` steps) and below what any test of unbiasedness can resolve.
    #[inline(always)]
    pub fn uniforms(&mut self, uniforms: &mut [f32; BLOCK]) {
        // 1 + k/2¹⁶ built from the bits, minus (1 − 2⁻¹⁷): exact (Sterbenz).
        self.fill(1.0 - 1.0 / 131_072.0, uniforms);
    }

    /// Fill `offsets` with the draws of [`ChunkDraws::uniforms`] minus ½:
    /// `(k − 32767.5) / 2¹⁶`, uniform in (−½, ½) and exact in f32. Rounding `x +
    /// offset` to the nearest integer rounds `x` up with probability `x − ⌊x⌋` (to
    /// 2⁻¹⁷, plus the rounding of the f32 sum, at most 2⁻²⁴·x).
    #[inline(always)]
    pub fn centered_uniforms(&mut self, offsets: &mut [f32; BLOCK]) {
        self.fill(1.5 - 1.0 / 131_072.0, offsets);
    }

    #[inline(always)]
    fn fill(&mut self, shift: f32, out: &mut [f32; BLOCK]) {
        let mut words = [[0u64; DRAW_LANES]; BLOCK / (4 * DRAW_LANES)];
        self.fill_words(&mut words);
        // Plain loops, not `array::map` (an out-of-line call without the caller's
        // target features).
        for round in &mut words {
            for word in round.iter_mut() {
                *word = word.to_le();
            }
        }
        // Draw `4q + j` is bits 16j.. of output `q`: the outputs' 16-bit halves in
        // little-endian order, taken as one cast.
        let halves: [u16; BLOCK] = pulp::cast(words);
        for (u, half) in out.iter_mut().zip(halves) {
            let k = u32::from(u16::from_le(half));
            // 1 + k·2⁻¹⁶: exponent 0, k in the top 16 of the 23 mantissa bits.
            *u = f32::from_bits(0x3F80_0000 | (k << 7)) - shift;
        }
    }
}

/// [`ChunkDraws::fill_words`] on 4×u64 AVX2 vectors: the same xoshiro256++ step
/// (integer operations, so the same bits), the rotations as two shifts and an or.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn step_avx2<const ROUNDS: usize>(
    simd: pulp::x86::V3,
    state: [[u64; DRAW_LANES]; 4],
    words: &mut [[u64; DRAW_LANES]; ROUNDS],
) -> [[u64; DRAW_LANES]; 4] {
    use pulp::u64x4;
    let [mut s0, mut s1, mut s2, mut s3]: [u64x4; 4] = pulp::cast(state);
    for round in words.iter_mut() {
        let sum = simd.wrapping_add_u64x4(s0, s3);
        let rotated = simd.or_u64x4(
            simd.shl_const_u64x4::<23>(sum),
            simd.shr_const_u64x4::<41>(sum),
        );
        *round = pulp::cast(simd.wrapping_add_u64x4(rotated, s0));
        let t = simd.shl_const_u64x4::<17>(s1);
        s2 = simd.xor_u64x4(s2, s0);
        s3 = simd.xor_u64x4(s3, s1);
        s1 = simd.xor_u64x4(s1, s2);
        s0 = simd.xor_u64x4(s0, s3);
        s2 = simd.xor_u64x4(s2, t);
        s3 = simd.or_u64x4(
            simd.shl_const_u64x4::<45>(s3),
            simd.shr_const_u64x4::<19>(s3),
        );
    }
    pulp::cast([s0, s1, s2, s3])
}

/// Lanes of the reductions: independent accumulators that the compiler keeps in
/// vector registers, so a reduction runs at memory speed instead of at the latency of
/// one floating-point add per element.
const LANES: usize = 16;

/// Largest |x| of `values` (0 for none); NaN elements are ignored.
#[inline(always)]
pub fn max_abs(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut groups = values.chunks_exact(LANES);
    for group in &mut groups {
        for (lane, &v) in lanes.iter_mut().zip(group) {
            let a = v.abs();
            // `if a > m` (not f32::max) compiles to one vector max instruction.
            *lane = if a > *lane { a } else { *lane };
        }
    }
    let mut max = lanes.iter().fold(0.0f32, |m, &a| if a > m { a } else { m });
    for &v in groups.remainder() {
        let a = v.abs();
        max = if a > max { a } else { max };
    }
    max
}

/// Σx² of `values`, accumulated in f32 lanes (for one chunk or one bucket; combine
/// chunks in f64).
#[inline(always)]
pub fn sum_squares(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut groups = values.chunks_exact(LANES);
    for group in &mut groups {
        for (lane, &v) in lanes.iter_mut().zip(group) {
            *lane += v * v;
        }
    }
    let tail: f32 = groups.remainder().iter().map(|v| v * v).sum();
    lanes.iter().sum::<f32>() + tail
}

/// Σ|x| of `values`, accumulated in f32 lanes (for one chunk; combine chunks in f64).
pub fn sum_abs(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut groups = values.chunks_exact(LANES);
    for group in &mut groups {
        for (lane, &v) in lanes.iter_mut().zip(group) {
            *lane += v.abs();
        }
    }
    let tail: f32 = groups.remainder().iter().map(|v| v.abs()).sum();
    lanes.iter().sum::<f32>() + tail
}

/// Largest |x| of `values`, over [`CHUNK`]s in parallel. Max is exact, so the result is
/// the same for any split.
pub fn par_max_abs(values: &[f32]) -> f32 {
    if values.len() <= CHUNK {
        return max_abs(values);
    }
    let arch = Arch::new();
    values
        .par_chunks(CHUNK)
        .map(|chunk| dispatch(arch, MaxAbs(chunk)))
        .reduce(|| 0.0, |a, b| if b > a { b } else { a })
}

/// Grow `out` by `len` zero bytes, written by all threads when `len` exceeds a
/// [`CHUNK`]: a payload's body is zeroed before the parallel encoders fill it (safe
/// Rust has no uninitialised buffers), and one thread alone would spend a good part
/// of a streaming encoder's time on that memset.
pub fn extend_zeroed(out: &mut Vec<u8>, len: usize) {
    if len <= CHUNK {
        out.resize(out.len() + len, 0);
    } else {
        out.par_extend(rayon::iter::repeat_n(0u8, len));
    }
}

/// Check that `input.shape` describes `input.data` and append the payload header of
/// `method` to `out`.
pub fn write_header(
    method: MethodId,
    input: &TensorView<'_>,
    out: &mut Vec<u8>,
) -> Result<(), CompressError> {
    let header = PayloadHeader::new(method, input.shape)?;
    if header.numel != input.data.len() as u64 {
        return Err(CompressError::Length {
            what: "input tensor (the product of its shape)",
            expected: usize::try_from(header.numel).unwrap_or(usize::MAX),
            actual: input.data.len(),
        });
    }
    header.write(out);
    Ok(())
}

/// The whole-number argument `name` (`default` when absent), refused unless it lies in
/// `min..=max`.
pub fn integer_arg(
    args: &Args,
    name: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ArgError> {
    let value = args.number(name, Some(default as f64))?;
    integer_in_range(name, value, min, max)
}

/// `value` as a whole number in `min..=max`, or an error naming `name`.
pub fn integer_in_range(name: &str, value: f64, min: u64, max: u64) -> Result<u64, ArgError> {
    if value.fract() != 0.0 || !(min as f64..=max as f64).contains(&value) {
        return Err(ArgError {
            argument: Some(name.to_owned()),
            message: format!("must be a whole number from {min} to {max}, got {value}"),
        });
    }
    Ok(value as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_for_every_width_and_length() {
        for width in 1..=MAX_CODE_WIDTH {
            for count in [0usize, 1, 7, 8, 9, 63, 64, 65, 130] {
                let mask = (1u32 << width) - 1;
                let codes: Vec<u32> = (0..count)
                    .map(|i| (i as u32).wrapping_mul(2_654_435_761) >> 7 & mask)
                    .collect();
                let mut bytes = vec![0u8; packed_len(count, width).unwrap_or(0)];
                pack_codes(&codes, width, &mut bytes);
                let mut back = vec![0u32; count];
                unpack_codes(&bytes, width, &mut back);
                assert_eq!(back, codes, "width {width}, count {count}");
            }
        }
    }

    #[test]
    fn two_bit_codes_pack_like_the_generic_packer() {
        for count in [0usize, 1, 3, 4, 5, 63, 64, 67] {
            let codes: Vec<u8> = (0..count).map(|i| ((i * 7 + i / 3) % 4) as u8).collect();
            let wide: Vec<u32> = codes.iter().map(|&c| u32::from(c)).collect();
            let mut fast = vec![0u8; count.div_ceil(4)];
            let mut generic = vec![0u8; count.div_ceil(4)];
            pack_two_bit_codes(&codes, &mut fast);
            pack_codes(&wide, 2, &mut generic);
            assert_eq!(fast, generic, "{count} codes");
        }
        // All 256 combinations of one byte.
        for byte in 0..=255u8 {
            let codes = [byte & 3, (byte >> 2) & 3, (byte >> 4) & 3, byte >> 6];
            let mut out = [0u8; 1];
            pack_two_bit_codes(&codes, &mut out);
            assert_eq!(out[0], byte);
        }
    }

    #[test]
    fn packing_is_lsb_first() {
        // Codes 1, 2, 3 of 2 bits: bits 01 | 10 | 11 from the LSB → 0b11_10_01 = 0x39.
        let mut bytes = [0u8; 1];
        pack_codes(&[1, 2, 3], 2, &mut bytes);
        assert_eq!(bytes, [0x39]);
        // Codes 0x1F, 0x01 of 5 bits: bits 0..5 = 11111, bits 5..10 = 00001
        // → byte 0 = 0b0011_1111 = 0x3F, byte 1 = 0b0000_0000.
        let mut bytes = [0u8; 2];
        pack_codes(&[0x1F, 0x01], 5, &mut bytes);
        assert_eq!(bytes, [0x3F, 0x00]);
        let mut signs = [0u8; 2];
        pack_negative(
            &[-1.0, 2.0, -0.0, -3.0, 0.0, 1.0, 1.0, 1.0, -5.0],
            &mut signs,
        );
        // Negative at 0, 3 and 8 (−0.0 is not negative): 0b0000_1001, 0b0000_0001.
        assert_eq!(signs, [0x09, 0x01]);
    }

    #[test]
    fn chunk_draws_are_the_keyed_streams_round_robin() {
        let mut draws = ChunkDraws::new(Stream::Qsgd, &[1, 2, 3]);
        let mut lanes: Vec<StreamRng> = (0..DRAW_LANES as u64)
            .map(|lane| StreamRng::new(Stream::Qsgd, &[1, 2, 3, lane]))
            .collect();
        for _ in 0..3 {
            let expected: Vec<u64> = lanes.iter_mut().map(StreamRng::next_u64).collect();
            assert_eq!(draws.next_words().to_vec(), expected);
        }
    }

    fn byte_block_packs_like_pack_fixed<const W: usize>() {
        let mut rng = StreamRng::new(Stream::Qsgd, &[W as u64]);
        for _ in 0..20 {
            let mut codes = [0u8; BLOCK];
            for code in &mut codes {
                *code = rng.next_u64() as u8;
            }
            let wide: Vec<u32> = codes
                .iter()
                .map(|&c| u32::from(c) & ((1 << W) - 1))
                .collect();
            let mut expected = vec![0u8; 8 * W];
            pack_fixed::<W>(&wide, &mut expected);
            let mut packed = vec![0xAAu8; 8 * W];
            pack_byte_block::<W>(&codes, &mut packed);
            assert_eq!(packed, expected, "width {W}");
            let mut back = vec![0u32; BLOCK];
            unpack_fixed::<W>(&packed, &mut back);
            assert_eq!(back, wide, "width {W}");
        }
    }

    #[test]
    fn byte_block_packer_matches_the_reference_layout_for_every_width() {
        byte_block_packs_like_pack_fixed::<1>();
        byte_block_packs_like_pack_fixed::<2>();
        byte_block_packs_like_pack_fixed::<3>();
        byte_block_packs_like_pack_fixed::<4>();
        byte_block_packs_like_pack_fixed::<5>();
        byte_block_packs_like_pack_fixed::<6>();
        byte_block_packs_like_pack_fixed::<7>();
        byte_block_packs_like_pack_fixed::<8>();
    }

    #[test]
    fn chunk_draws_give_the_same_bits_with_and_without_avx2() {
        let mut detected = ChunkDraws::new(Stream::Qsgd, &[9, 8, 7]);
        let mut portable = detected.clone();
        #[cfg(target_arch = "x86_64")]
        {
            portable.avx2 = None;
        }
        let mut lanes: Vec<StreamRng> = (0..DRAW_LANES as u64)
            .map(|lane| StreamRng::new(Stream::Qsgd, &[9, 8, 7, lane]))
            .collect();
        for _ in 0..5 {
            let (mut a, mut b) = ([0.0f32; BLOCK], [0.0f32; BLOCK]);
            detected.centered_uniforms(&mut a);
            portable.centered_uniforms(&mut b);
            assert_eq!(a.map(f32::to_bits), b.map(f32::to_bits));
            // Each block takes 4 rounds; draw 4q + j is bits 16j.. of output q.
            for round in 0..4 {
                for (lane, rng) in lanes.iter_mut().enumerate() {
                    let word = rng.next_u64();
                    for j in 0..4 {
                        let k = (word >> (16 * j)) as u16;
                        let expected = (f32::from(k) - 32767.5) / 65536.0;
                        assert_eq!(a[16 * round + 4 * lane + j], expected);
                    }
                }
            }
        }
        assert_eq!(detected.next_words(), portable.next_words());
    }

    #[test]
    fn uniforms_are_on_the_half_grid() {
        let mut draws = ChunkDraws::new(Stream::TernGrad, &[5]);
        let mut uniforms = [0.0f32; BLOCK];
        let mut offsets = [0.0f32; BLOCK];
        draws.uniforms(&mut uniforms);
        draws.centered_uniforms(&mut offsets);
        for (&u, &o) in uniforms.iter().zip(&offsets) {
            // (k + ½)/2¹⁶ and (k + ½)/2¹⁶ − ½ for a whole k in 0..2¹⁶.
            let k = u * 65536.0 - 0.5;
            assert!((0.0..=65535.0).contains(&k) && k.fract() == 0.0, "{u}");
            let k = (o + 0.5) * 65536.0 - 0.5;
            assert!((0.0..=65535.0).contains(&k) && k.fract() == 0.0, "{o}");
        }
    }

    #[test]
    fn short_buffers_never_panic() {
        let codes = [3u32; 20];
        let mut short = [0u8; 3];
        pack_codes(&codes, 5, &mut short);
        let mut back = [0u32; 20];
        unpack_codes(&short, 5, &mut back);
        pack_codes(&codes, 0, &mut short);
        pack_codes(&codes, 17, &mut short);
        pack_negative(&[1.0; 20], &mut short[..1]);
    }

    #[test]
    fn bit_flags_invert_the_sign_packing() {
        for byte in 0..=255u8 {
            let values: Vec<f32> = (0..8)
                .map(|j| if (byte >> j) & 1 == 1 { -1.0 } else { 1.0 })
                .collect();
            let mut packed = [0u8; 1];
            pack_negative(&values, &mut packed);
            assert_eq!(packed[0], byte);
            let flags = bit_flags(byte);
            for (j, &flag) in flags.iter().enumerate() {
                assert_eq!(flag, (byte >> j) & 1);
            }
        }
    }

    #[test]
    fn reductions_match_plain_sums() {
        let values: Vec<f32> = (0..1000)
            .map(|i| ((i % 200) as f32 - 100.0) / 8.0)
            .collect();
        // k/8 with |k| ≤ 100: squares are multiples of 1/64 and Σk² = 5·676 700 < 2²⁴,
        // so every partial sum is exact in f32, in any order.
        let squares: f32 = values.iter().map(|v| v * v).sum();
        assert_eq!(sum_squares(&values), squares);
        assert_eq!(
            sum_abs(&values),
            values.iter().map(|v| v.abs()).sum::<f32>()
        );
        assert_eq!(max_abs(&values), 12.5);
        assert_eq!(par_max_abs(&values), 12.5);
    }
}
