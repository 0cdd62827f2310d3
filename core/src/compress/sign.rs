//! The one-bit quantizers: `sign` (scaled signSGD) and `onebit` (1-bit SGD). Both send
//! one bit per element and need error feedback to converge, so the residual is on by
//! default ([`FeedbackPolicy::OnByDefault`]); both are gathered.
//!
//! # `sign` — signSGD scaled by the mean magnitude
//!
//! signSGD (Bernstein et al. 2018) with the scale of EF-signSGD (Karimireddy et al.
//! 2019, Algorithm 1), which keeps the step's ℓ1 mass:
//!
//! ```text
//! m = ‖g‖₁ / n,   ĝ_i = m · sign(g_i),   sign(x) = −1 if x < 0, else +1 (so sign(0) = +1)
//! ```
//!
//! Payload data (after the common header): `m` (f32, little-endian; finite, ≥ 0), then
//! `⌈n/8⌉` bytes of sign bits, element `i` in bit `i mod 8` of byte `⌊i/8⌋` (LSB-first,
//! see [`super::bits`]), 1 for negative. A payload is `16 + 4·d + 4 + ⌈n/8⌉` bytes.
//!
//! # `onebit` — 1-bit SGD (Seide et al. 2014)
//!
//! The sign pattern (threshold 0) with the reconstruction values of the paper: for each
//! column, the mean of the column's elements quantized to each bit, which minimises
//! the squared error for that sign pattern. The tensor is viewed as a matrix of
//! `shape[0]` rows and `n / shape[0]` columns (row-major; a weight `[out, in]` has one
//! column per input; a 1-D tensor — or a scalar — is a single column; a tensor with no
//! elements has no columns):
//!
//! ```text
//! P_j = { i : g_ij ≥ 0 },  N_j = { i : g_ij < 0 }
//! a⁺_j = mean_{i∈P_j} g_ij,  a⁻_j = mean_{i∈N_j} g_ij   (0 for an empty set)
//! ĝ_ij = a⁺_j if g_ij ≥ 0, else a⁻_j
//! ```
//!
//! Payload data: for each column `j` in order, `a⁺_j` then `a⁻_j` (f32 each,
//! little-endian; finite, `a⁺ ≥ 0`, `a⁻ ≤ 0`), then the `⌈n/8⌉` bytes of sign bits in
//! row-major element order as for `sign`. A payload is `16 + 4·d + 8·c + ⌈n/8⌉`
//! bytes for `c` columns — so matrices with many columns and few rows (`[1, n]`)
//! compress badly, which is the price of the paper's per-column values.
//!
//! # Speed
//!
//! `sign` makes one streaming pass: each [`CHUNK`] packs its bits and returns its
//! partial Σ|g|; the partials are summed in chunk order (f64), and the scale, which the
//! bits do not depend on, is written last. `onebit` makes two: the column sums, then
//! the bits. The column sums stream the matrix row by row into per-column
//! accumulators that stay in cache; the work is cut into tiles of at most
//! [`MAX_ROW_GROUPS`] row groups (of at least [`MIN_GROUP_ROWS`] rows) by column
//! ranges of [`COLUMN_RANGE`], fixed by the shape alone, whose partial sums (f32 over
//! at most [`FLUSH_ELEMENTS`] values per accumulator, then f64) are combined in group
//! order — deterministic for any thread count, and the partials take at most 3/8 of
//! a byte per element.

use rayon::prelude::*;
use regimen_plugin::{ArgError, Args};

use super::bits::{bit_flags, extend_zeroed, pack_negative, sum_abs, write_header, CHUNK};
use super::{
    Aggregation, CompressError, Compressor, FeedbackPolicy, MethodId, PayloadHeader, StepContext,
    TensorView, WireError, ERROR_FEEDBACK_ARG,
};

/// Most row groups the `onebit` column sums are split into.
pub const MAX_ROW_GROUPS: usize = 16;

/// Fewest rows in a row group (bounds the partial sums' memory).
pub const MIN_GROUP_ROWS: usize = 64;

/// Columns per tile of the `onebit` column sums (3 accumulators each: 192 KiB of f32).
pub const COLUMN_RANGE: usize = 16 * 1024;

/// Values an f32 accumulator takes before it is added into the f64 totals.
pub const FLUSH_ELEMENTS: usize = 1024;

/// The `sign` compressor (scaled signSGD); it keeps no state.
#[derive(Clone, Debug)]
pub struct Sign {
    _private: (),
}

impl Sign {
    /// `sign` takes no arguments.
    pub fn new(args: &Args) -> Result<Self, ArgError> {
        args.only(&[ERROR_FEEDBACK_ARG])?;
        Ok(Self { _private: () })
    }
}

/// The `onebit` compressor (1-bit SGD); it keeps no state.
#[derive(Clone, Debug)]
pub struct OneBit {
    _private: (),
}

impl OneBit {
    /// `onebit` takes no arguments.
    pub fn new(args: &Args) -> Result<Self, ArgError> {
        args.only(&[ERROR_FEEDBACK_ARG])?;
        Ok(Self { _private: () })
    }
}

/// `sign`: signSGD scaled by mean |g|.
pub fn build_sign(args: &Args) -> Result<Box<dyn Compressor>, ArgError> {
    Ok(Box::new(Sign::new(args)?))
}

/// `onebit`: 1-bit SGD with per-column reconstruction values.
pub fn build_onebit(args: &Args) -> Result<Box<dyn Compressor>, ArgError> {
    Ok(Box::new(OneBit::new(args)?))
}

/// Append the sign bits of `data` (⌈n/8⌉ bytes) to `out`, chunks in parallel; returns
/// Σ|g| when `with_sum`, summed in chunk order.
fn append_sign_bits(data: &[f32], out: &mut Vec<u8>, with_sum: bool) -> f64 {
    let start = out.len();
    extend_zeroed(out, data.len().div_ceil(8));
    let bits = &mut out[start..];
    let chunk = |(bits, values): (&mut [u8], &[f32])| {
        pack_negative(values, bits);
        if with_sum {
            sum_abs(values)
        } else {
            0.0
        }
    };
    if data.len() <= CHUNK {
        return f64::from(chunk((bits, data)));
    }
    let partials: Vec<f32> = bits
        .par_chunks_mut(CHUNK / 8)
        .zip(data.par_chunks(CHUNK))
        .map(chunk)
        .collect();
    partials.iter().map(|&p| f64::from(p)).sum()
}

/// `out += value(bit)` over one chunk: `plus` where the bit is clear, `minus` where set.
fn add_signed(bits: &[u8], plus: f32, minus: f32, out: &mut [f32]) {
    for (group, &byte) in out.chunks_mut(8).zip(bits) {
        for (value, &negative) in group.iter_mut().zip(&bit_flags(byte)) {
            *value += if negative == 0 { plus } else { minus };
        }
    }
}

impl Compressor for Sign {
    fn name(&self) -> &str {
        "sign"
    }

    fn method_id(&self) -> MethodId {
        MethodId::SIGN
    }

    fn aggregation(&self) -> Aggregation {
        Aggregation::Gather
    }

    fn feedback(&self) -> FeedbackPolicy {
        FeedbackPolicy::OnByDefault
    }

    fn compress(
        &mut self,
        input: TensorView<'_>,
        _ctx: &StepContext<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), CompressError> {
        let data = input.data;
        out.reserve(16 + 4 * input.shape.len() + 4 + data.len().div_ceil(8));
        write_header(self.method_id(), &input, out)?;
        let scale_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let l1 = append_sign_bits(data, out, true);
        let mean = if data.is_empty() {
            0.0
        } else {
            (l1 / data.len() as f64) as f32
        };
        out[scale_at..scale_at + 4].copy_from_slice(&mean.to_le_bytes());
        Ok(())
    }

    fn decompress_add(
        &mut self,
        payload: &[u8],
        scale: f32,
        out: &mut [f32],
    ) -> Result<(), CompressError> {
        let (_, mut reader) = PayloadHeader::parse(payload, self.method_id(), out.len())?;
        let mean = reader.f32()?;
        if !mean.is_finite() || mean < 0.0 {
            return Err(WireError::Corrupt(format!("sign scale {mean}")).into());
        }
        let bits = reader.bytes(out.len().div_ceil(8))?;
        reader.finish()?;
        let plus = scale * mean;
        let minus = scale * -mean;
        if out.len() <= CHUNK {
            add_signed(bits, plus, minus, out);
        } else {
            out.par_chunks_mut(CHUNK)
                .zip(bits.par_chunks(CHUNK / 8))
                .for_each(|(values, bits)| add_signed(bits, plus, minus, values));
        }
        Ok(())
    }
}

/// The `[rows, columns]` matrix view of a tensor of `shape` and `numel` elements.
fn matrix_view(shape: &[usize], numel: usize) -> (usize, usize) {
    if numel == 0 {
        return (0, 0);
    }
    match shape.split_first() {
        Some((&rows, rest)) => (rows, rest.iter().product()),
        None => (1, 1),
    }
}

/// Per-column sums of one block of whole rows: non-negative sum, negative sum,
/// negative count.
#[derive(Clone, Debug, Default, PartialEq)]
struct ColumnSums {
    nonneg: Vec<f64>,
    neg: Vec<f64>,
    neg_count: Vec<u64>,
}

impl ColumnSums {
    fn zeros(columns: usize) -> Self {
        Self {
            nonneg: vec![0.0; columns],
            neg: vec![0.0; columns],
            neg_count: vec![0; columns],
        }
    }

    fn add(&mut self, other: &ColumnSums) {
        for (a, b) in self.nonneg.iter_mut().zip(&other.nonneg) {
            *a += b;
        }
        for (a, b) in self.neg.iter_mut().zip(&other.neg) {
            *a += b;
        }
        for (a, b) in self.neg_count.iter_mut().zip(&other.neg_count) {
            *a += b;
        }
    }
}

/// f32 accumulators over `width` lanes, folded into f64 column totals by [`Lanes::flush`].
struct Lanes {
    nonneg: Vec<f32>,
    neg: Vec<f32>,
    neg_count: Vec<u32>,
}

impl Lanes {
    fn new(width: usize) -> Self {
        Self {
            nonneg: vec![0.0; width],
            neg: vec![0.0; width],
            neg_count: vec![0; width],
        }
    }

    /// Add one segment elementwise (branch-free, so it vectorises).
    #[inline]
    fn add(&mut self, segment: &[f32]) {
        for (((p, n), c), &v) in self
            .nonneg
            .iter_mut()
            .zip(self.neg.iter_mut())
            .zip(self.neg_count.iter_mut())
            .zip(segment)
        {
            let negative = v < 0.0;
            *p += if negative { 0.0 } else { v };
            *n += if negative { v } else { 0.0 };
            *c += u32::from(negative);
        }
    }

    /// Add lane `l` into column `l mod columns` of `totals` and clear the lanes.
    fn flush(&mut self, columns: usize, totals: &mut ColumnSums) {
        for (l, ((p, n), c)) in self
            .nonneg
            .iter_mut()
            .zip(self.neg.iter_mut())
            .zip(self.neg_count.iter_mut())
            .enumerate()
        {
            let j = l % columns;
            totals.nonneg[j] += f64::from(*p);
            totals.neg[j] += f64::from(*n);
            totals.neg_count[j] += u64::from(*c);
            *p = 0.0;
            *n = 0.0;
            *c = 0;
        }
    }
}

/// Column sums of the tile `rows × (first..first + width)` of the row-major matrix
/// `data` with `columns` columns.
fn tile_sums(
    data: &[f32],
    columns: usize,
    rows: std::ops::Range<usize>,
    first: usize,
    width: usize,
) -> ColumnSums {
    let mut totals = ColumnSums::zeros(width);
    if width == columns {
        // Whole rows, contiguous: lanes span ⌈64/columns⌉ rows at once, so even a
        // single column is summed 64 lanes wide.
        let rows_per_segment = 64usize.div_ceil(columns);
        let lanes_width = rows_per_segment * columns;
        let mut lanes = Lanes::new(lanes_width);
        let block = data
            .get(rows.start * columns..rows.end * columns)
            .unwrap_or(&[]);
        for segments in block.chunks(FLUSH_ELEMENTS * lanes_width) {
            for segment in segments.chunks(lanes_width) {
                lanes.add(segment);
            }
            lanes.flush(columns, &mut totals);
        }
    } else {
        let mut lanes = Lanes::new(width);
        let block = data
            .get(rows.start * columns..rows.end * columns)
            .unwrap_or(&[]);
        for flush_rows in block.chunks(FLUSH_ELEMENTS * columns) {
            for row in flush_rows.chunks_exact(columns) {
                if let Some(segment) = row.get(first..first + width) {
                    lanes.add(segment);
                }
            }
            lanes.flush(width, &mut totals);
        }
    }
    totals
}

/// Per-column sums of the row-major `rows × columns` matrix `data`, deterministic for
/// any thread count.
fn column_sums(data: &[f32], rows: usize, columns: usize) -> ColumnSums {
    if columns == 0 || rows == 0 {
        return ColumnSums::zeros(columns);
    }
    let groups = (rows / MIN_GROUP_ROWS)
        .min(data.len() / CHUNK)
        .clamp(1, MAX_ROW_GROUPS);
    let group_rows = rows.div_ceil(groups);
    let ranges = columns.div_ceil(COLUMN_RANGE);
    // Tile t covers column range t / groups and row group t % groups.
    let tiles: Vec<ColumnSums> = (0..ranges * groups)
        .into_par_iter()
        .map(|t| {
            let (range, group) = (t / groups, t % groups);
            let first = range * COLUMN_RANGE;
            let row_range = (group * group_rows).min(rows)..((group + 1) * group_rows).min(rows);
            tile_sums(
                data,
                columns,
                row_range,
                first,
                COLUMN_RANGE.min(columns - first),
            )
        })
        .collect();
    let mut totals = ColumnSums::default();
    for range in tiles.chunks(groups) {
        let mut sums = range[0].clone();
        for group in &range[1..] {
            sums.add(group);
        }
        totals.nonneg.extend(sums.nonneg);
        totals.neg.extend(sums.neg);
        totals.neg_count.extend(sums.neg_count);
    }
    totals
}

/// The reconstruction values `(a⁺_j, a⁻_j)` of every column of the row-major
/// `rows × columns` matrix `data` (0 for an empty set).
pub fn column_means(data: &[f32], rows: usize, columns: usize) -> Vec<(f32, f32)> {
    let sums = column_sums(data, rows, columns);
    sums.nonneg
        .iter()
        .zip(&sums.neg)
        .zip(&sums.neg_count)
        .map(|((&nonneg, &neg), &neg_count)| {
            let nonneg_count = (rows as u64).saturating_sub(neg_count);
            let plus = if nonneg_count == 0 {
                0.0
            } else {
                (nonneg / nonneg_count as f64) as f32
            };
            let minus = if neg_count == 0 {
                0.0
            } else {
                (neg / neg_count as f64) as f32
            };
            (plus, minus)
        })
        .collect()
}

/// `out += scale · ĝ` for the chunk of `out` starting at element `first`.
fn add_columns(bits: &[u8], values: &[(f32, f32)], first: usize, out: &mut [f32]) {
    let columns = values.len();
    if columns == 0 {
        return;
    }
    if columns == 1 {
        let (plus, minus) = values[0];
        add_signed(bits, plus, minus, out);
        return;
    }
    let mut column = first % columns;
    for (group, &byte) in out.chunks_mut(8).zip(bits) {
        for (value, &negative) in group.iter_mut().zip(&bit_flags(byte)) {
            let (plus, minus) = values[column];
            *value += if negative == 0 { plus } else { minus };
            column += 1;
            if column == columns {
                column = 0;
            }
        }
    }
}

impl Compressor for OneBit {
    fn name(&self) -> &str {
        "onebit"
    }

    fn method_id(&self) -> MethodId {
        MethodId::ONEBIT
    }

    fn aggregation(&self) -> Aggregation {
        Aggregation::Gather
    }

    fn feedback(&self) -> FeedbackPolicy {
        FeedbackPolicy::OnByDefault
    }

    fn compress(
        &mut self,
        input: TensorView<'_>,
        _ctx: &StepContext<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), CompressError> {
        let data = input.data;
        write_header(self.method_id(), &input, out)?;
        // After the header check, so the shape's product is known to be `data.len()`.
        let (rows, columns) = matrix_view(input.shape, data.len());
        out.reserve(8 * columns + data.len().div_ceil(8));
        for (plus, minus) in column_means(data, rows, columns) {
            out.extend_from_slice(&plus.to_le_bytes());
            out.extend_from_slice(&minus.to_le_bytes());
        }
        append_sign_bits(data, out, false);
        Ok(())
    }

    fn decompress_add(
        &mut self,
        payload: &[u8],
        scale: f32,
        out: &mut [f32],
    ) -> Result<(), CompressError> {
        let (header, mut reader) = PayloadHeader::parse(payload, self.method_id(), out.len())?;
        let shape: Vec<usize> = header.shape.iter().map(|&d| d as usize).collect();
        let (_, columns) = matrix_view(&shape, out.len());
        let means = reader.array(columns, 8)?;
        let bits = reader.bytes(out.len().div_ceil(8))?;
        reader.finish()?;
        let mut values = Vec::with_capacity(columns);
        for pair in means.chunks_exact(8) {
            let plus = f32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]);
            let minus = f32::from_le_bytes([pair[4], pair[5], pair[6], pair[7]]);
            // `!(x >= 0)` also refuses NaN.
            if !(plus.is_finite() && minus.is_finite() && plus >= 0.0 && minus <= 0.0) {
                return Err(
                    WireError::Corrupt(format!("onebit column values {plus}, {minus}")).into(),
                );
            }
            values.push((scale * plus, scale * minus));
        }
        if out.len() <= CHUNK {
            add_columns(bits, &values, 0, out);
        } else {
            out.par_chunks_mut(CHUNK)
                .zip(bits.par_chunks(CHUNK / 8))
                .enumerate()
                .for_each(|(c, (chunk, bits))| add_columns(bits, &values, c * CHUNK, chunk));
        }
        Ok(())
    }
}
