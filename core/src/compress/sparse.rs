//! What the sparsifying compressors (`topk`, `threshold`, `dgc`; `randomk` uses the
//! counting and argument rules only) share: how many elements a ratio sends, the
//! sparse payload with its size-chosen index encoding, and the three ways of choosing
//! the elements — exact top-k in O(n), DGC's sampled threshold, and a fixed threshold.
//!
//! # How many elements
//!
//! A ratio `r` (0 < r ≤ 1) over `n` elements sends `k = max(1, ⌈r·n⌉)` of them (0 when
//! `n` is 0), see [`element_count`]. The product is formed in f64, and one within a
//! relative 10⁻⁹ of a whole number counts as that number, so that `0.07 · 100` (which
//! is 7.000000000000001 in f64) sends 7 elements, not 8.
//!
//! # Ranking
//!
//! Elements are ranked by magnitude through [`magnitude_key`], the f32 bit pattern
//! with the sign cleared: for non-negative floats the bit patterns order exactly as the
//! values do, so ranking is integer comparison, `-0.0` ties with `+0.0`, and a NaN
//! ranks above +∞ (the host refuses non-finite gradients before compressing; this only
//! makes the order total). Ties are broken by the lower index, so a selection is one
//! well-defined set and does not depend on the thread count.
//!
//! # Sparse payload data (after the common header)
//!
//! | bytes | field |
//! |---:|---|
//! | 1 | index encoding tag ([`IndexEncoding`]: 0 list, 1 delta, 2 bitmap) |
//! | 4 | `k`, the number of elements sent (u32) |
//! | `I` | the `k` indices in the tagged encoding, strictly increasing, each `< n` |
//! | `4·k` | the values (f32), in increasing index order |
//!
//! so a payload is `16 + 4·d + 1 + 4 + I + 4·k` bytes, with `I` the size of the
//! encoding chosen for this payload — the smallest of
//!
//! | tag | encoding | `I` |
//! |---:|---|---|
//! | 0 | [`IndexEncoding::List`]: u32 per index | `4·k` |
//! | 1 | [`IndexEncoding::Delta`]: LEB128 varint per gap | `Σ varint_len(gap_j)` |
//! | 2 | [`IndexEncoding::Bitmap`]: bit `i` set when `i` is sent | `⌈n/8⌉` |
//!
//! (ties go to the lower tag). The delta encoding writes `gap_0 = i_0` and
//! `gap_j = i_j − i_{j−1} − 1` for `j > 0` (the `− 1` uses that indices are distinct),
//! each as an unsigned LEB128 varint: 7 bits per byte, least significant group first,
//! the high bit set on every byte but the last; `varint_len(g)` is 1 for `g < 2⁷`, 2
//! for `g < 2¹⁴`, … up to 5 bytes for a u32. The bitmap is LSB-first (index `i` is bit
//! `i mod 8` of byte `⌊i/8⌋`) with the unused high bits of the last byte zero.
//!
//! Decoding validates everything before writing anything: the tag, `k ≤ n`, indices
//! strictly increasing and `< n`, varints neither overlong (a final zero group after
//! the first byte) nor beyond 32 bits, bitmap padding zero and its population equal to
//! `k`, and no byte left over. Sparse payloads address at most
//! [`MAX_SPARSE_ELEMENTS`] elements; larger tensors are refused when compressing.
//!
//! # Exact top-k in O(n)
//!
//! [`top_k`] never sorts the tensor. It finds a key bound that at least `k` elements
//! reach, gathers those elements in one pass, and ranks only them:
//! 1. **Estimate**: a fixed sample — one element per [`ESTIMATE_STRIDE`] — gives two
//!    bounds around the `k`-th largest key: `low`, the sample's key of rank
//!    `e + m` (from the top), and `high`, of rank `e − m`, where `e = s·k/n` is the
//!    expected rank and `m = `[`ESTIMATE_SIGMAS`]`·√e + 2` a binomial margin.
//! 2. **Gather**: one parallel pass over fixed chunks collects the index and value of
//!    every element with key ≥ `low`, in index order (branch-free block masks, see
//!    `gather_chunk`), typically `k·(1 + m/e)` of them.
//! 3. **Verify**: if at least `k` were gathered, the `k`-th largest key is ≥ `low`, so
//!    the true top k — ties included — are all among them and the result is exact.
//!    Keys ≥ `high` are kept outright (when there are at most `k` of them); among the
//!    rest a selection (`select_nth_unstable`, O(m)) finds the cut `T` and how many
//!    keys equal to `T` are needed, and one pass keeps the keys above `T` and the
//!    first such ties by index.
//! 4. **Fallback**: when the sample misled (fewer than `k` gathered), or `k` is too
//!    large for a sample to narrow anything, a radix select: a parallel histogram of
//!    the top [`BUCKET_BITS`] bits of every key (exact integer counts, per thread,
//!    added up) finds the *boundary bucket* where the running count from the top
//!    reaches `k`; everything above it is kept outright, the boundary bucket's
//!    candidates are ranked as in 3.
//!
//! Each step is O(n) (the selection is O(candidates)); the usual cost is one streaming
//! pass plus a sample of `n/512` elements. The result is exactly `k` elements with
//! their values, in increasing index order, the same for any number of threads (the
//! bounds only decide how much work is done, never which elements win; candidates are
//! concatenated in chunk order; `T` is a value, not a position).
//!
//! # Sampled threshold (DGC)
//!
//! [`sampled_top_k`] follows Lin et al. 2018 (Deep Gradient Compression, §3 and the
//! authors' implementation): it samples `s = min(n, max(`[`MIN_SAMPLES`]`,
//! ⌈`[`SAMPLE_FRACTION`]`·n⌉))` magnitudes — stratified: sample `j` is drawn from the
//! `j`-th of `s` equal slices of the tensor, at offset `⌊u·len/2³²⌋` for a 32-bit
//! draw `u` (uniform up to a bias below `len/2³²`), with [`StreamRng`] on
//! [`Stream::Sample`] keyed by `(seed, step, tensor, rank, block of`
//! [`SAMPLE_BLOCK`]` samples)` — takes as threshold the `⌈r·s⌉`-th largest sampled
//! key, and selects every element at or above it. When that selects more than `k`
//! elements, the exact top-k among them is kept (the paper's hierarchical selection,
//! ranked as in step 3 above), so at most `k` elements are sent; it may be fewer.
//! Tensors of at most [`MIN_SAMPLES`] elements use the exact selection.
//!
//! On a CPU the exact selection costs about one pass, so sampling saves little there
//! (its scattered reads cost about as much as the pass it replaces); it is provided
//! because it is DGC's algorithm, and its result is what a GPU implementation of the
//! paper sends.
//!
//! # Threshold
//!
//! [`at_least`] selects every element with `|g_i| ≥ t`, in one parallel pass.

use rayon::prelude::*;
use regimen_plugin::{ArgError, Args};

use super::bits::CHUNK;
use super::rng::{Stream, StreamRng};
use super::{CompressError, MethodId, PayloadHeader, StepContext, WireError, WireReader};

/// Most elements a sparse payload can address (indices are u32, and so is `k`).
pub const MAX_SPARSE_ELEMENTS: usize = u32::MAX as usize;

/// Bytes of the sparse data before the index section: the tag and `k`.
pub const SPARSE_PREAMBLE_BYTES: usize = 1 + 4;

/// Fraction of the elements the sampled threshold looks at (DGC samples 0.1%–1%).
pub const SAMPLE_FRACTION: f64 = 0.01;

/// Fewest elements the sampled threshold looks at; smaller tensors are selected
/// exactly.
pub const MIN_SAMPLES: usize = 1024;

/// Samples drawn from one random stream (one rayon task), so the sample is the same
/// for any thread count.
pub const SAMPLE_BLOCK: usize = 4096;

/// Key bits per histogram bucket index in [`top_k`]: 8 exponent bits and 4 mantissa
/// bits, so one binade is 16 buckets and a boundary bucket holds a few per mille of a
/// smooth distribution.
pub const BUCKET_BITS: u32 = 12;

const BUCKETS: usize = 1 << BUCKET_BITS;
const BUCKET_SHIFT: u32 = 31 - BUCKET_BITS;

/// Up to this many elements [`top_k`] ranks all keys directly: estimating bounds or
/// building a histogram would cost more.
const SMALL: usize = 4 * BUCKETS;

/// Elements per block in the candidate-gathering loop (one comparison mask each).
const GATHER_BLOCK: usize = 16;

/// Stride of the fixed sample with which [`top_k`] estimates its bounds.
pub const ESTIMATE_STRIDE: usize = 512;

/// Margin of [`top_k`]'s estimated bounds, in binomial standard deviations of the
/// sample count.
pub const ESTIMATE_SIGMAS: f64 = 4.0;

/// The elements a ratio `ratio` of `n` sends: `max(1, ⌈ratio·n⌉)`, at most `n`, 0 when
/// `n` is 0. A product within a relative 10⁻⁹ of a whole number counts as that number.
pub fn element_count(ratio: f64, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let exact = ratio * n as f64;
    let nearest = exact.round();
    let count = if (exact - nearest).abs() <= 1e-9 * nearest.max(1.0) {
        nearest
    } else {
        exact.ceil()
    };
    // `as` saturates: a NaN ratio gives 0 and is lifted to 1.
    (count as usize).clamp(1, n)
}

fn ratio_error(name: &str, value: f64) -> ArgError {
    ArgError {
        argument: Some(name.to_owned()),
        message: format!("must be a ratio in (0, 1], got {value}"),
    }
}

/// The ratio argument `name` (`default` when absent, required when `None`), refused
/// unless `0 < ratio ≤ 1`.
pub fn ratio_arg(args: &Args, name: &str, default: Option<f64>) -> Result<f64, ArgError> {
    let value = args.number(name, default)?;
    if value > 0.0 && value <= 1.0 {
        Ok(value)
    } else {
        Err(ratio_error(name, value))
    }
}

/// This step's ratio `name`: the scheduled value when the script made it a schedule,
/// else `configured`. A scheduled value outside `(0, 1]` is an error naming it.
pub fn step_ratio(
    configured: f64,
    ctx: &StepContext<'_>,
    name: &str,
) -> Result<f64, CompressError> {
    match ctx.number(name) {
        None => Ok(configured),
        Some(value) if value > 0.0 && value <= 1.0 => Ok(value),
        Some(value) => Err(CompressError::Args(ratio_error(name, value))),
    }
}

/// How a sparsifier finds its largest elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Approx {
    /// The exact top-k ([`top_k`]).
    Exact,
    /// DGC's sampled threshold ([`sampled_top_k`]): at most k elements.
    Sample,
}

impl Approx {
    /// The `approx` argument: `exact` or `sample`, `default` when absent.
    pub fn from_args(args: &Args, default: Approx) -> Result<Self, ArgError> {
        let fallback = match default {
            Approx::Exact => "exact",
            Approx::Sample => "sample",
        };
        match args.text("approx", fallback)? {
            "exact" => Ok(Approx::Exact),
            "sample" => Ok(Approx::Sample),
            other => Err(ArgError {
                argument: Some("approx".into()),
                message: format!("expected `exact` or `sample`, got `{other}`"),
            }),
        }
    }
}

/// Refuse tensors too large for sparse payloads.
pub fn check_sparse_len(n: usize) -> Result<(), CompressError> {
    if n > MAX_SPARSE_ELEMENTS {
        return Err(CompressError::Failed(format!(
            "sparse payloads address at most {MAX_SPARSE_ELEMENTS} elements, the tensor has {n}"
        )));
    }
    Ok(())
}

/// The magnitude rank of `x`: its bit pattern with the sign cleared (see the module
/// doc; orders as `|x|` for non-NaN values).
#[inline(always)]
pub fn magnitude_key(x: f32) -> u32 {
    x.to_bits() & 0x7FFF_FFFF
}

// ---------------------------------------------------------------------------------
// Index encodings
// ---------------------------------------------------------------------------------

/// How a sparse payload writes its indices (the tag byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IndexEncoding {
    /// Tag 0: each index as a little-endian u32 (`4·k` bytes).
    List,
    /// Tag 1: LEB128 varints of the gaps between consecutive indices.
    Delta,
    /// Tag 2: one bit per element, set when sent (`⌈n/8⌉` bytes).
    Bitmap,
}

impl IndexEncoding {
    /// All encodings, in tag order.
    pub const ALL: [IndexEncoding; 3] = [
        IndexEncoding::List,
        IndexEncoding::Delta,
        IndexEncoding::Bitmap,
    ];

    /// The tag byte.
    pub fn tag(self) -> u8 {
        match self {
            IndexEncoding::List => 0,
            IndexEncoding::Delta => 1,
            IndexEncoding::Bitmap => 2,
        }
    }

    /// The encoding of a tag byte.
    pub fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            0 => Some(IndexEncoding::List),
            1 => Some(IndexEncoding::Delta),
            2 => Some(IndexEncoding::Bitmap),
            _ => None,
        }
    }

    /// Bytes this encoding takes for `indices` (strictly increasing, `< n`).
    pub fn encoded_len(self, indices: &[u32], n: usize) -> usize {
        match self {
            IndexEncoding::List => 4 * indices.len(),
            IndexEncoding::Delta => gaps(indices).map(varint_len).sum(),
            IndexEncoding::Bitmap => n.div_ceil(8),
        }
    }
}

/// The gaps the delta encoding writes: `i_0`, then `i_j − i_{j−1} − 1`.
fn gaps(indices: &[u32]) -> impl Iterator<Item = u32> + '_ {
    let mut previous: Option<u32> = None;
    indices.iter().map(move |&index| {
        let gap = match previous {
            None => index,
            Some(p) => index.wrapping_sub(p).wrapping_sub(1),
        };
        previous = Some(index);
        gap
    })
}

/// Bytes of the LEB128 varint of `value`: `⌈bits/7⌉`, at least 1.
#[inline]
pub fn varint_len(value: u32) -> usize {
    let bits = (u32::BITS - (value | 1).leading_zeros()) as usize;
    bits.div_ceil(7)
}

/// The LEB128 bytes of `value` packed in a little-endian u64 (7 bits per byte, the
/// continuation bit set on all but the last of its [`varint_len`] bytes).
#[inline(always)]
fn varint_word(value: u32) -> u64 {
    let v = u64::from(value);
    let spread = (v & 0x7F)
        | ((v << 1) & 0x7F00)
        | ((v << 2) & 0x7F_0000)
        | ((v << 3) & 0x7F00_0000)
        | ((v << 4) & 0x0F_0000_0000);
    let continued = varint_len(value) - 1;
    spread | (0x8080_8080_8080_8080u64 & ((1u64 << (8 * continued)) - 1))
}

/// Append the delta varints of `indices`: each varint is stored as a whole 8-byte
/// word and the write position advanced by its length, so lengths never branch.
fn write_delta(indices: &[u32], out: &mut Vec<u8>) {
    let len: usize = gaps(indices).map(varint_len).sum();
    let start = out.len();
    // Eight bytes of slack for the last word, cut off below.
    out.resize(start + len + 8, 0);
    let buffer = &mut out[start..];
    let mut position = 0;
    for gap in gaps(indices) {
        if let Some(slot) = buffer.get_mut(position..position + 8) {
            slot.copy_from_slice(&varint_word(gap).to_le_bytes());
        }
        position += varint_len(gap);
    }
    out.truncate(start + len);
}

fn read_varint(reader: &mut WireReader<'_>) -> Result<u32, WireError> {
    let mut value: u64 = 0;
    for position in 0..5 {
        let byte = reader.u8()?;
        value |= u64::from(byte & 0x7F) << (7 * position);
        if byte & 0x80 == 0 {
            if position > 0 && byte == 0 {
                return Err(WireError::Corrupt("overlong varint in index gaps".into()));
            }
            return u32::try_from(value)
                .map_err(|_| WireError::Corrupt("index gap varint exceeds 32 bits".into()));
        }
    }
    Err(WireError::Corrupt(
        "index gap varint longer than 5 bytes".into(),
    ))
}

/// The smallest encoding of `indices` over `n` elements (ties go to the lower tag).
pub fn choose_encoding(indices: &[u32], n: usize) -> IndexEncoding {
    let list = IndexEncoding::List.encoded_len(indices, n);
    let bitmap = IndexEncoding::Bitmap.encoded_len(indices, n);
    // The delta length needs a pass over the indices; skip it when it cannot win
    // (every varint is at least one byte).
    let delta = if indices.len() < list.min(bitmap) {
        IndexEncoding::Delta.encoded_len(indices, n)
    } else {
        usize::MAX
    };
    if list <= delta && list <= bitmap {
        IndexEncoding::List
    } else if delta <= bitmap {
        IndexEncoding::Delta
    } else {
        IndexEncoding::Bitmap
    }
}

/// Append `indices` (strictly increasing, `< n`) in `encoding`.
pub fn write_indices(encoding: IndexEncoding, indices: &[u32], n: usize, out: &mut Vec<u8>) {
    match encoding {
        IndexEncoding::List => {
            out.reserve(4 * indices.len());
            for index in indices {
                out.extend_from_slice(&index.to_le_bytes());
            }
        }
        IndexEncoding::Delta => write_delta(indices, out),
        IndexEncoding::Bitmap => {
            let start = out.len();
            out.resize(start + n.div_ceil(8), 0);
            let bitmap = &mut out[start..];
            for &index in indices {
                if let Some(byte) = bitmap.get_mut(index as usize / 8) {
                    *byte |= 1 << (index % 8);
                }
            }
        }
    }
}

/// Read `count` indices over `n` elements in `encoding`, validating them (strictly
/// increasing, `< n`, canonical varints, bitmap padding and population).
pub fn read_indices(
    encoding: IndexEncoding,
    reader: &mut WireReader<'_>,
    count: usize,
    n: usize,
) -> Result<Vec<u32>, WireError> {
    if count > n {
        return Err(WireError::Corrupt(format!(
            "{count} indices for a tensor of {n} elements"
        )));
    }
    let out_of_range =
        |index: u64| WireError::Corrupt(format!("index {index} out of range for {n} elements"));
    match encoding {
        IndexEncoding::List => {
            let bytes = reader.array(count, 4)?;
            let mut indices = Vec::with_capacity(count);
            let mut previous: Option<u32> = None;
            for word in bytes.chunks_exact(4) {
                let index = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
                if previous.is_some_and(|p| index <= p) {
                    return Err(WireError::Corrupt(
                        "indices are not strictly increasing".into(),
                    ));
                }
                if index as usize >= n {
                    return Err(out_of_range(index.into()));
                }
                previous = Some(index);
                indices.push(index);
            }
            Ok(indices)
        }
        IndexEncoding::Delta => {
            // Every varint takes at least one byte: refuse an impossible count before
            // allocating for it.
            if count > reader.remaining() {
                return Err(WireError::Truncated {
                    offset: reader.offset(),
                    needed: count,
                    remaining: reader.remaining(),
                });
            }
            let mut indices = Vec::with_capacity(count);
            let mut next: u64 = 0;
            for _ in 0..count {
                let index = next + u64::from(read_varint(reader)?);
                if index >= n as u64 {
                    return Err(out_of_range(index));
                }
                // `index < n ≤ u32::MAX + 1` was just checked.
                indices.push(index as u32);
                next = index + 1;
            }
            Ok(indices)
        }
        IndexEncoding::Bitmap => {
            let bytes = reader.bytes(n.div_ceil(8))?;
            let tail_bits = n % 8;
            if tail_bits != 0 {
                if let Some(&last) = bytes.last() {
                    if last >> tail_bits != 0 {
                        return Err(WireError::Corrupt("bitmap padding bits set".into()));
                    }
                }
            }
            let population: usize = bytes.iter().map(|b| b.count_ones() as usize).sum();
            if population != count {
                return Err(WireError::Corrupt(format!(
                    "bitmap has {population} bits set, the payload announces {count}"
                )));
            }
            let mut indices = Vec::with_capacity(count);
            for (byte_index, &byte) in bytes.iter().enumerate() {
                let mut bits = byte;
                while bits != 0 {
                    let bit = bits.trailing_zeros();
                    // The byte index is below ⌈n/8⌉ and n fits u32 plus one byte of bits.
                    indices.push((byte_index as u32) * 8 + bit);
                    bits &= bits - 1;
                }
            }
            Ok(indices)
        }
    }
}

// ---------------------------------------------------------------------------------
// Payloads
// ---------------------------------------------------------------------------------

/// Bytes of the sparse data section (after the header) for `indices` over `n`
/// elements: `1 + 4 + I + 4·k` with the chosen encoding's `I`.
pub fn sparse_data_len(indices: &[u32], n: usize) -> usize {
    let encoding = choose_encoding(indices, n);
    SPARSE_PREAMBLE_BYTES + encoding.encoded_len(indices, n) + 4 * indices.len()
}

/// Append the sparse data section (after the header, which the caller wrote) of
/// `selection` over a tensor of `n` elements: the indices in their smallest encoding,
/// then the values. The indices must be strictly increasing and `< n`.
pub fn write_sparse_data(
    selection: &Selection,
    n: usize,
    out: &mut Vec<u8>,
) -> Result<(), CompressError> {
    check_sparse_len(n)?;
    let indices = &selection.indices;
    let count = u32::try_from(indices.len()).map_err(|_| CompressError::Length {
        what: "sparse selection",
        expected: MAX_SPARSE_ELEMENTS,
        actual: indices.len(),
    })?;
    if selection.values.len() != indices.len() {
        return Err(CompressError::Length {
            what: "sparse selection values",
            expected: indices.len(),
            actual: selection.values.len(),
        });
    }
    let encoding = choose_encoding(indices, n);
    out.reserve(SPARSE_PREAMBLE_BYTES + encoding.encoded_len(indices, n) + 4 * indices.len());
    out.push(encoding.tag());
    out.extend_from_slice(&count.to_le_bytes());
    write_indices(encoding, indices, n, out);
    let start = out.len();
    out.resize(start + 4 * indices.len(), 0);
    for (slot, value) in out[start..].chunks_exact_mut(4).zip(&selection.values) {
        slot.copy_from_slice(&value.to_le_bytes());
    }
    Ok(())
}

/// A decoded sparse payload.
#[derive(Clone, Debug, PartialEq)]
pub struct SparsePayload {
    /// The index encoding the payload used.
    pub encoding: IndexEncoding,
    /// The indices, strictly increasing.
    pub indices: Vec<u32>,
    /// The value at each index.
    pub values: Vec<f32>,
}

/// Read the sparse data section from `reader` (positioned after the header) for a
/// tensor of `n` elements, up to and including the check that nothing is left.
pub fn read_sparse_data(
    reader: &mut WireReader<'_>,
    n: usize,
) -> Result<(IndexEncoding, Vec<u32>, Vec<f32>), WireError> {
    let tag = reader.u8()?;
    let encoding = IndexEncoding::from_tag(tag)
        .ok_or_else(|| WireError::Corrupt(format!("unknown index encoding tag {tag}")))?;
    let count = reader.u32()? as usize;
    let indices = read_indices(encoding, reader, count, n)?;
    let bytes = reader.array(count, 4)?;
    reader.finish()?;
    let values = bytes
        .chunks_exact(4)
        .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect();
    Ok((encoding, indices, values))
}

/// Decode a whole sparse payload of `method` for a tensor of `n` elements.
pub fn read_sparse_payload(
    method: MethodId,
    payload: &[u8],
    n: usize,
) -> Result<SparsePayload, CompressError> {
    let (_, mut reader) = PayloadHeader::parse(payload, method, n)?;
    let (encoding, indices, values) = read_sparse_data(&mut reader, n)?;
    Ok(SparsePayload {
        encoding,
        indices,
        values,
    })
}

/// `out += scale · decode(payload)` for a sparse payload of `method`; `out` is left
/// untouched when the payload is refused.
pub fn decompress_sparse_add(
    method: MethodId,
    payload: &[u8],
    scale: f32,
    out: &mut [f32],
) -> Result<(), CompressError> {
    let decoded = read_sparse_payload(method, payload, out.len())?;
    for (&index, &value) in decoded.indices.iter().zip(&decoded.values) {
        if let Some(slot) = out.get_mut(index as usize) {
            *slot += scale * value;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Selection
// ---------------------------------------------------------------------------------

/// [`magnitude_key`] as an i32 (never negative): signed comparisons vectorise on
/// every x86-64 (SSE2), unsigned ones need SSE4.1.
#[inline(always)]
fn signed_key(x: f32) -> i32 {
    (x.to_bits() & 0x7FFF_FFFF) as i32
}

/// Selected elements: increasing indices and the values there, side by side (the
/// values are read while the tensor streams through the cache, so neither ranking
/// nor writing the payload goes back to it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selection {
    /// Indices, strictly increasing.
    pub indices: Vec<u32>,
    /// The value at each index.
    pub values: Vec<f32>,
}

impl Selection {
    /// Number of elements selected.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether nothing is selected.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    fn concat(parts: Vec<Selection>) -> Selection {
        let total = parts.iter().map(Selection::len).sum();
        let mut all = Selection {
            indices: Vec::with_capacity(total),
            values: Vec::with_capacity(total),
        };
        for part in parts {
            all.indices.extend_from_slice(&part.indices);
            all.values.extend_from_slice(&part.values);
        }
        all
    }
}

/// Blocks of [`GATHER_BLOCK`] elements per gathering step: the block flags of one step
/// fit a small stack array.
const GATHER_STEP: usize = 1024 * GATHER_BLOCK;

/// The elements of `chunk` whose key is at least `bound`, indices offset by `base`.
///
/// Two levels, both without data-dependent branches in their inner loops: the first
/// compares whole blocks (vectorised) and writes down, branch-free, the blocks holding
/// any candidate; the second visits only those blocks — still in cache — and extracts
/// their candidates from a bit mask, one step per candidate. A branch per block on
/// "any candidate?" would mispredict on a good share of the blocks at 1% density.
fn gather_chunk(chunk: &[f32], base: u32, bound: u32, out: &mut Selection) {
    // Keys are below 2³¹; a bound at or above it selects nothing.
    let Ok(bound) = i32::try_from(bound) else {
        return;
    };
    let mut flagged = [0u32; GATHER_STEP / GATHER_BLOCK];
    for (step, part) in chunk.chunks(GATHER_STEP).enumerate() {
        let part_base = base + (step * GATHER_STEP) as u32;
        let mut blocks = part.chunks_exact(GATHER_BLOCK);
        let mut count = 0usize;
        for (b, block) in (&mut blocks).enumerate() {
            let any = block
                .iter()
                .fold(0u32, |any, &x| any | u32::from(signed_key(x) >= bound));
            flagged[count % flagged.len()] = b as u32;
            count += any as usize;
        }
        for &b in &flagged[..count.min(flagged.len())] {
            let start = b as usize * GATHER_BLOCK;
            let Some(block) = part.get(start..start + GATHER_BLOCK) else {
                continue;
            };
            let mut mask = block.iter().enumerate().fold(0u32, |mask, (j, &x)| {
                mask | (u32::from(signed_key(x) >= bound) << j)
            });
            while mask != 0 {
                let j = mask.trailing_zeros();
                if let Some(&x) = block.get(j as usize) {
                    out.indices.push(part_base + start as u32 + j);
                    out.values.push(x);
                }
                mask &= mask - 1;
            }
        }
        let tail_base = part_base + (part.len() - blocks.remainder().len()) as u32;
        for (j, &x) in blocks.remainder().iter().enumerate() {
            if signed_key(x) >= bound {
                out.indices.push(tail_base + j as u32);
                out.values.push(x);
            }
        }
    }
}

/// Every element whose key is at least `bound`, in increasing index order; parallel
/// over fixed chunks concatenated in chunk order. `values.len()` must not exceed
/// [`MAX_SPARSE_ELEMENTS`].
///
/// `expected` is the fraction of elements expected to pass (0 when unknown): each
/// chunk reserves a little more than that, so that dense selections do not grow their
/// buffers step by step.
fn gather_at_least(values: &[f32], bound: u32, expected: f64) -> Selection {
    let reserve = |len: usize| -> Selection {
        let capacity = ((expected * 1.1).min(1.0) * len as f64) as usize + GATHER_BLOCK;
        Selection {
            indices: Vec::with_capacity(capacity),
            values: Vec::with_capacity(capacity),
        }
    };
    if values.len() <= CHUNK {
        let mut out = reserve(values.len());
        gather_chunk(values, 0, bound, &mut out);
        return out;
    }
    let parts: Vec<Selection> = values
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(c, chunk)| {
            let mut out = reserve(chunk.len());
            gather_chunk(chunk, (c * CHUNK) as u32, bound, &mut out);
            out
        })
        .collect();
    Selection::concat(parts)
}

/// Every element with `|x| ≥ threshold` (by [`magnitude_key`], so a NaN element
/// counts as above any threshold), in increasing index order. `threshold` should be
/// non-negative. Fails for tensors beyond [`MAX_SPARSE_ELEMENTS`].
pub fn at_least(values: &[f32], threshold: f32) -> Result<Selection, CompressError> {
    check_sparse_len(values.len())?;
    Ok(gather_at_least(values, magnitude_key(threshold), 0.0))
}

/// Keep exactly `k` of `candidates` (or all of them when there are at most `k`): every
/// one whose key is at least `sure` — when at most `k` are, else the bound is ignored —
/// then the largest of the rest, ties by lower index. The result stays in increasing
/// index order.
fn keep_largest(candidates: Selection, k: usize, sure: u32) -> Selection {
    if candidates.len() <= k {
        return candidates;
    }
    // The loops below are branch-free (write, then advance by the condition): which
    // side of a bound a candidate falls on is as good as random.
    let mut undecided = vec![0u32; candidates.len()];
    let mut count = 0usize;
    for &value in &candidates.values {
        let key = magnitude_key(value);
        if let Some(slot) = undecided.get_mut(count) {
            *slot = key;
        }
        count += usize::from(key < sure);
    }
    undecided.truncate(count);
    let decided = candidates.len() - undecided.len();
    if decided > k {
        return keep_largest(candidates, k, u32::MAX);
    }
    let need = k - decided;
    // The cut: every key above it is kept, and `ties` of the keys equal to it, by index.
    let (cut, mut ties) = if need == 0 {
        (sure, 0)
    } else {
        // need ≤ undecided.len(), since candidates.len() > k.
        let position = undecided.len() - need;
        let (_, &mut cut, _) = undecided.select_nth_unstable(position);
        let above = undecided.iter().filter(|&&key| key > cut).count();
        (cut, need - above)
    };
    // Compact in place: the write position never passes the read position, and no
    // second buffer of the output's size is allocated (and faulted in).
    let Selection {
        mut indices,
        mut values,
    } = candidates;
    let len = indices.len().min(values.len());
    let mut count = 0usize;
    for read in 0..len {
        let (index, value) = (indices[read], values[read]);
        let key = magnitude_key(value);
        let tie = key == cut && ties > 0;
        ties -= usize::from(tie);
        indices[count] = index;
        values[count] = value;
        count += usize::from(key > cut || tie);
    }
    indices.truncate(count);
    values.truncate(count);
    Selection { indices, values }
}

/// Bucket counts of the top [`BUCKET_BITS`] bits of the keys: two interleaved
/// sub-histograms, so that runs of elements in the same bucket do not serialise on one
/// counter's store-to-load latency.
struct Histogram {
    counts: Box<[[u32; BUCKETS]; 2]>,
}

impl Histogram {
    fn new() -> Self {
        Self {
            counts: Box::new([[0; BUCKETS]; 2]),
        }
    }

    /// Count the keys of `values`.
    fn add(&mut self, values: &[f32]) {
        let [even, odd] = &mut *self.counts;
        let mut pairs = values.chunks_exact(2);
        for pair in &mut pairs {
            // A key has 31 bits, so the shifted key is below BUCKETS.
            even[(magnitude_key(pair[0]) >> BUCKET_SHIFT) as usize] += 1;
            odd[(magnitude_key(pair[1]) >> BUCKET_SHIFT) as usize] += 1;
        }
        for &x in pairs.remainder() {
            even[(magnitude_key(x) >> BUCKET_SHIFT) as usize] += 1;
        }
    }

    fn merge(mut self, other: Histogram) -> Self {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
        self
    }

    fn count(&self, bucket: usize) -> usize {
        self.counts[0][bucket] as usize + self.counts[1][bucket] as usize
    }
}

/// The `(low, high)` key bounds that the fixed stride sample of `values` (one element
/// per [`ESTIMATE_STRIDE`]) puts around the `k`-th largest key: `low` should have a
/// little more than `k` keys at or above it and `high` fewer — each by
/// [`ESTIMATE_SIGMAS`] binomial standard deviations of the sample count — and the
/// fraction of the tensor expected at or above `low`. `None` when the tensor is too
/// small or `k` too large for a sample to narrow anything.
fn estimate_bounds(values: &[f32], k: usize) -> Option<(u32, u32, f64)> {
    let n = values.len();
    let s = n / ESTIMATE_STRIDE;
    if s < 64 {
        return None;
    }
    let mut sample: Vec<u32> = (0..s)
        .into_par_iter()
        .with_min_len(SAMPLE_BLOCK)
        .map(|j| {
            values
                .get(j * ESTIMATE_STRIDE + ESTIMATE_STRIDE / 2)
                .map_or(0, |&x| magnitude_key(x))
        })
        .collect();
    let expected = s as f64 * (k as f64 / n as f64);
    let margin = ESTIMATE_SIGMAS * expected.sqrt() + 2.0;
    let low_rank = (expected + margin).ceil() as usize;
    if low_rank >= s {
        return None;
    }
    let high_rank = (expected - margin).floor().max(0.0) as usize;
    let (low, high) = ranked_pair(&mut sample, low_rank, high_rank)?;
    Some((low, high, low_rank as f64 / s as f64))
}

/// The `low_rank`-th and `high_rank`-th largest keys of `sample` (ranks from 1; a
/// `high_rank` of 0 gives `u32::MAX`, a bound nothing reaches). `None` unless
/// `1 ≤ low_rank ≤ sample.len()`; `high_rank` should be below `low_rank`.
fn ranked_pair(sample: &mut [u32], low_rank: usize, high_rank: usize) -> Option<(u32, u32)> {
    let len = sample.len();
    if low_rank == 0 || low_rank > len {
        return None;
    }
    let (_, &mut low, larger) = sample.select_nth_unstable(len - low_rank);
    // `larger` holds the low_rank − 1 keys ranked above `low`.
    let high = if high_rank == 0 || high_rank > larger.len() {
        u32::MAX
    } else {
        let position = larger.len() - high_rank;
        *larger.select_nth_unstable(position).1
    };
    Some((low, high))
}

/// The `k` elements of largest magnitude (indices and values), in increasing index
/// order: exact, ties by lower index, in O(n) (see the module doc). Everything when
/// `k ≥ n`. Fails for tensors beyond [`MAX_SPARSE_ELEMENTS`].
pub fn top_k(values: &[f32], k: usize) -> Result<Selection, CompressError> {
    let n = values.len();
    check_sparse_len(n)?;
    if k >= n {
        return Ok(Selection {
            indices: (0..n as u32).collect(),
            values: values.to_vec(),
        });
    }
    if k == 0 {
        return Ok(Selection::default());
    }
    if n <= SMALL {
        return Ok(keep_largest(gather_at_least(values, 0, 1.0), k, u32::MAX));
    }
    if let Some((low, high, expected)) = estimate_bounds(values, k) {
        let candidates = gather_at_least(values, low, expected);
        // At least k keys ≥ low: the k-th largest key is ≥ low, so every element of
        // the top k (ties included) is a candidate and the selection below is exact.
        if candidates.len() >= k {
            return Ok(keep_largest(candidates, k, high));
        }
    }
    let histogram = values
        .par_chunks(CHUNK)
        .fold(Histogram::new, |mut histogram, chunk| {
            histogram.add(chunk);
            histogram
        })
        .reduce(Histogram::new, Histogram::merge);
    let mut above = 0usize;
    let mut boundary = 0usize;
    for bucket in (0..BUCKETS).rev() {
        let count = histogram.count(bucket);
        if above + count >= k {
            boundary = bucket;
            break;
        }
        above += count;
    }
    let lower = (boundary as u32) << BUCKET_SHIFT;
    let upper = ((boundary as u32) + 1) << BUCKET_SHIFT;
    let expected = (above + histogram.count(boundary)) as f64 / n as f64;
    Ok(keep_largest(
        gather_at_least(values, lower, expected),
        k,
        upper,
    ))
}

/// The sampled magnitudes of the stratified sample of `s` elements (see the module
/// doc), keyed by `key` = `[seed, step, tensor, rank]`.
fn sample_keys(values: &[f32], s: usize, key: [u64; 4]) -> Vec<u32> {
    let n = values.len();
    if s == 0 || s > n {
        return Vec::new();
    }
    // Slice j is [⌊j·n/s⌋, ⌊(j+1)·n/s⌋): q or q + 1 elements, walked without a
    // division per sample (Bresenham).
    let (q, r) = (n / s, n % s);
    let blocks = s.div_ceil(SAMPLE_BLOCK);
    let draw_block = |block: usize| -> Vec<u32> {
        let mut rng = StreamRng::new(
            Stream::Sample,
            &[key[0], key[1], key[2], key[3], block as u64],
        );
        let first = block * SAMPLE_BLOCK;
        let last = (first + SAMPLE_BLOCK).min(s);
        // j·n < 2⁶⁴ since both are below 2³².
        let scaled = first as u64 * n as u64;
        let mut start = (scaled / s as u64) as usize;
        let mut error = (scaled % s as u64) as usize;
        let mut keys = Vec::with_capacity(last - first);
        let mut bits = 0u64;
        for j in first..last {
            // Branch-free: a mispredicted branch here would cancel the overlapping
            // cache misses of the neighbouring samples.
            error += r;
            let carry = usize::from(error >= s);
            error -= carry * s;
            let len = q + carry;
            // Two 32-bit draws per generator call; the offset ⌊u·len/2³²⌋ is uniform
            // up to a bias below len/2³², immaterial for a threshold estimate.
            if (j - first) % 2 == 0 {
                bits = rng.next_u64();
            } else {
                bits >>= 32;
            }
            let offset = ((bits & 0xFFFF_FFFF) * len as u64) >> 32;
            keys.push(
                values
                    .get(start + offset as usize)
                    .map_or(0, |&x| magnitude_key(x)),
            );
            start += len;
        }
        keys
    };
    if blocks <= 1 {
        return draw_block(0);
    }
    let parts: Vec<Vec<u32>> = (0..blocks).into_par_iter().map(draw_block).collect();
    parts.concat()
}

/// At most `k` elements of large magnitude (indices and values), in increasing index
/// order, by DGC's sampled threshold for the density `ratio` (see the module doc);
/// `key` is `[seed, step, tensor, rank]`. Exact when `values` has at most
/// [`MIN_SAMPLES`] elements or `k ≥ n`.
pub fn sampled_top_k(
    values: &[f32],
    k: usize,
    ratio: f64,
    key: [u64; 4],
) -> Result<Selection, CompressError> {
    let n = values.len();
    check_sparse_len(n)?;
    if n <= MIN_SAMPLES || k >= n || k == 0 {
        return top_k(values, k);
    }
    let s = element_count(SAMPLE_FRACTION, n).clamp(MIN_SAMPLES, n);
    let mut sample = sample_keys(values, s, key);
    if sample.is_empty() {
        return top_k(values, k);
    }
    let sample_k = element_count(ratio, s);
    // Keys at or above the sample's `sample_k − 4σ − 2`-th largest are almost surely
    // fewer than k: they are kept without ranking, which leaves only the keys between
    // the two bounds to rank when the threshold selects more than k.
    let high_rank =
        (sample_k as f64 - ESTIMATE_SIGMAS * (sample_k as f64).sqrt() - 2.0).max(0.0) as usize;
    match ranked_pair(&mut sample, sample_k, high_rank) {
        Some((threshold, high)) => {
            let expected = sample_k as f64 / s as f64;
            Ok(keep_largest(
                gather_at_least(values, threshold, expected),
                k,
                high,
            ))
        }
        None => top_k(values, k),
    }
}

/// The key parts of the sampling stream for `ctx`: `[seed, step, tensor, rank]`.
pub fn sample_key(ctx: &StepContext<'_>) -> [u64; 4] {
    [ctx.seed, ctx.step, ctx.tensor as u64, ctx.rank as u64]
}
