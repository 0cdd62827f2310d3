//! The three dense products of a PowerSGD step, written for its shapes: a large matrix
//! `M` (n×m, row-major) times a skinny one (rank r of 1 to a few dozen columns).
//!
//! | kernel | product | passes over `M` |
//! |---|---|---|
//! | [`copy_and_project`] | `M ← input`, `P = M·Q` (n×r) | one (the copy) |
//! | [`project_transpose`] | `Q = Mᵀ·P̂` (m×r) | one |
//! | [`add_outer`] | `out += scale·P̂·Qᵀ` | one over `out` |
//!
//! # Why not a general GEMM
//!
//! These products do `2·r` flops per element of `M`, so they are bound by streaming
//! `M` from memory, not by arithmetic: a GEMM's packing of `M` into panels is one more
//! pass over it. The kernels read `M` once, keep the small operand (`Q` or the
//! accumulators of `Mᵀ·P̂`) in L1/L2, and hold `r` accumulators per 8 columns in
//! registers. On the project's 2-core machine the whole step runs faster than the
//! three products by the `gemm` crate (the GEMM behind faer and candle), which is
//! itself faster than ndarray's `matrixmultiply` for these shapes; see
//! [`reference_products`] for the comparison the benchmark makes.
//!
//! # SIMD without `unsafe`
//!
//! The crate forbids `unsafe`, and the default build targets baseline x86-64 (SSE2).
//! Each parallel task enters [`pulp::Arch::dispatch`], which runs the kernel body
//! compiled for AVX2+FMA when the CPU has it (detected at run time) and for the
//! baseline otherwise — no system library, no build flag. Inside, the kernels use
//! pulp's vector type when it has [`LANES`] lanes (AVX2) and the same arithmetic on
//! `[f32; LANES]` arrays otherwise.
//!
//! # Determinism
//!
//! Results do not depend on the thread count or on the instruction set:
//! - the accumulation pattern is fixed: every dot product of `P = M·Q` accumulates
//!   [`LANES`] interleaved partial sums (lane `l` takes the columns `j ≡ l mod 8`, in
//!   increasing `j`) folded by a fixed tree; `Mᵀ·P̂` and `P̂·Qᵀ` are elementwise, each
//!   output summed over rows (resp. over the rank) in increasing order;
//! - multiplications and additions are separate IEEE operations (never fused into
//!   FMA), so the vector and array paths round identically;
//! - `Mᵀ·P̂` sums fixed row blocks ([`transpose_block_rows`], a function of the shape
//!   only) into per-block partials that are added in block order.

use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;

/// Lanes of the fixed accumulation pattern (one AVX2 register of f32).
pub const LANES: usize = 8;

/// Most columns of `Q` (or `P̂`) one pass of [`copy_and_project`] or
/// [`project_transpose`] holds in registers; wider ranks run in groups of this size
/// (over a row already in cache for `P = M·Q`, over the same tile for `Mᵀ·P̂`).
pub const GROUP: usize = 8;

/// Elements of `M` (or `out`) per parallel task of the row-wise kernels.
const TASK_ELEMENTS: usize = 64 * 1024;

/// Chunks of [`LANES`] columns per tile of [`project_transpose`]: the tile's
/// accumulators (`TILE_CHUNKS · LANES · r` f32, 16 KiB at r = 8) stay in L1 while the
/// block's rows stream through.
const TILE_CHUNKS: usize = 64;

/// Which code the kernels run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InstructionSet {
    /// The best the CPU offers, detected at run time (AVX2+FMA on x86-64 when present).
    #[default]
    Detected,
    /// The `[f32; LANES]` array code compiled for the build's baseline target — the
    /// path a CPU without AVX2 takes; it gives the same bits as the vector path.
    Baseline,
}

impl InstructionSet {
    fn arch(self) -> Arch {
        match self {
            InstructionSet::Detected => Arch::new(),
            InstructionSet::Baseline => Arch::Scalar,
        }
    }
}

/// Number of [`LANES`]-wide column chunks of a row of `m` columns (the last one may be
/// partial).
pub fn chunk_count(m: usize) -> usize {
    m.div_ceil(LANES)
}

/// Length of the *blocked* layout of an m×r matrix: [`chunk_count`]`(m) · r · LANES`.
pub fn blocked_len(m: usize, r: usize) -> usize {
    chunk_count(m) * r * LANES
}

/// Rows of `M` per block of [`project_transpose`] for a matrix of `n` rows: at least
/// 64, and enough that there are at most 64 blocks (so the partials take at most
/// `64·m·r` floats); a multiple of 4. A function of the shape only, so the sum order
/// never depends on the thread count.
pub fn transpose_block_rows(n: usize) -> usize {
    n.div_ceil(64).max(64).next_multiple_of(4)
}

/// Rewrite the row-major m×r matrix `rows` in the *blocked* layout the kernels read:
/// for each chunk `k` of [`LANES`] rows of it, its `r` columns one after the other,
/// each as `LANES` consecutive values: `blocked[(k·r + c)·LANES + l] = rows[(k·LANES +
/// l)·r + c]`, zero past row `m`.
pub fn block(rows: &[f32], m: usize, r: usize, blocked: &mut Vec<f32>) {
    blocked.clear();
    blocked.resize(blocked_len(m, r), 0.0);
    if r == 0 {
        return;
    }
    for (k, chunk) in blocked.chunks_exact_mut(r * LANES).enumerate() {
        for (l, row) in rows.chunks_exact(r).skip(k * LANES).take(LANES).enumerate() {
            for (c, &value) in row.iter().enumerate() {
                chunk[c * LANES + l] = value;
            }
        }
    }
}

/// The inverse of [`block`]: the row-major m×r matrix of a blocked one.
pub fn unblock(blocked: &[f32], m: usize, r: usize, rows: &mut Vec<f32>) {
    rows.clear();
    rows.resize(m * r, 0.0);
    if r == 0 {
        return;
    }
    for (k, chunk) in blocked.chunks_exact(r * LANES).enumerate() {
        for (l, row) in rows
            .chunks_exact_mut(r)
            .skip(k * LANES)
            .take(LANES)
            .enumerate()
        {
            for (c, value) in row.iter_mut().enumerate() {
                *value = chunk[c * LANES + l];
            }
        }
    }
}

/// Rows per task of the row-wise kernels for rows of `m` elements.
fn task_rows(m: usize) -> usize {
    (TASK_ELEMENTS / m.max(1)).max(1)
}

/// The fixed tree that folds a dot product's lanes.
#[inline(always)]
fn fold_lanes(lanes: &[f32; LANES]) -> f32 {
    ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6]))
        + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))
}

/// The lanes of a pulp vector that has [`LANES`] of them.
#[inline(always)]
fn to_lanes<S: Simd>(vector: S::f32s) -> [f32; LANES] {
    let mut lanes = [0.0f32; LANES];
    let (head, _) = S::as_mut_simd_f32s(&mut lanes);
    if let Some(slot) = head.first_mut() {
        *slot = vector;
    }
    lanes
}

/// `M ← input` (row-major n×m, `n = input.len() / m`) and `P = M·Q` (row-major n×r)
/// from `Q` in the [`block`]ed layout, in one pass over `input`: each row is copied,
/// then multiplied while it is in L1.
///
/// `matrix` must be as long as `input`, `p` hold `n·r` values and `q_blocked`
/// [`blocked_len`]`(m, r)`; anything shorter is left partly unwritten (never read out of
/// bounds).
pub fn copy_and_project(
    isa: InstructionSet,
    input: &[f32],
    matrix: &mut [f32],
    m: usize,
    q_blocked: &[f32],
    r: usize,
    p: &mut [f32],
) {
    if m == 0 || r == 0 {
        return;
    }
    let rows = task_rows(m);
    matrix
        .par_chunks_mut(rows * m)
        .zip(input.par_chunks(rows * m))
        .zip(p.par_chunks_mut(rows * r))
        .for_each(|((matrix, input), p)| {
            isa.arch().dispatch(ProjectRows {
                input,
                matrix,
                m,
                q_blocked,
                r,
                p,
            });
        });
}

/// One task of [`copy_and_project`].
struct ProjectRows<'a> {
    input: &'a [f32],
    matrix: &'a mut [f32],
    m: usize,
    q_blocked: &'a [f32],
    r: usize,
    p: &'a mut [f32],
}

impl WithSimd for ProjectRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Self {
            input,
            matrix,
            m,
            q_blocked,
            r,
            p,
        } = self;
        for ((row, source), p_row) in matrix
            .chunks_exact_mut(m)
            .zip(input.chunks_exact(m))
            .zip(p.chunks_exact_mut(r))
        {
            row.copy_from_slice(source);
            for (group, out) in p_row.chunks_mut(GROUP).enumerate() {
                let first = group * GROUP;
                match out.len() {
                    1 => row_dots::<S, 1>(simd, row, q_blocked, r, first, out),
                    2 => row_dots::<S, 2>(simd, row, q_blocked, r, first, out),
                    3 => row_dots::<S, 3>(simd, row, q_blocked, r, first, out),
                    4 => row_dots::<S, 4>(simd, row, q_blocked, r, first, out),
                    5 => row_dots::<S, 5>(simd, row, q_blocked, r, first, out),
                    6 => row_dots::<S, 6>(simd, row, q_blocked, r, first, out),
                    7 => row_dots::<S, 7>(simd, row, q_blocked, r, first, out),
                    _ => row_dots::<S, 8>(simd, row, q_blocked, r, first, out),
                }
            }
        }
    }
}

/// `out[c] = row · Q[:, first + c]` for `c < R`, with the fixed lane pattern.
#[inline(always)]
fn row_dots<S: Simd, const R: usize>(
    simd: S,
    row: &[f32],
    q_blocked: &[f32],
    r: usize,
    first: usize,
    out: &mut [f32],
) {
    let full = row.len() / LANES;
    let (head, tail) = row.split_at(full * LANES);
    let mut lanes = [[0.0f32; LANES]; R];
    if S::F32_LANES == LANES {
        let (row_vectors, _) = S::as_simd_f32s(head);
        let (q_vectors, _) = S::as_simd_f32s(q_blocked);
        let mut acc = [simd.splat_f32s(0.0); R];
        for (&x, q_chunk) in row_vectors.iter().zip(q_vectors.chunks_exact(r)) {
            let Some(q_group) = q_chunk.get(first..first + R) else {
                break;
            };
            for (acc, &q) in acc.iter_mut().zip(q_group) {
                *acc = simd.add_f32s(*acc, simd.mul_f32s(x, q));
            }
        }
        for (lanes, &acc) in lanes.iter_mut().zip(&acc) {
            *lanes = to_lanes::<S>(acc);
        }
    } else {
        for (x, q_chunk) in head
            .chunks_exact(LANES)
            .zip(q_blocked.chunks_exact(r * LANES))
        {
            let Some(q_group) = q_chunk.get(first * LANES..(first + R) * LANES) else {
                break;
            };
            for (lanes, q) in lanes.iter_mut().zip(q_group.chunks_exact(LANES)) {
                for l in 0..LANES {
                    lanes[l] += x[l] * q[l];
                }
            }
        }
    }
    if let Some(q_chunk) = q_blocked.chunks_exact(r * LANES).nth(full) {
        for (l, &x) in tail.iter().enumerate() {
            for (c, lanes) in lanes.iter_mut().enumerate() {
                lanes[l] += x * q_chunk[(first + c) * LANES + l];
            }
        }
    }
    for (out, lanes) in out.iter_mut().zip(&lanes) {
        *out = fold_lanes(lanes);
    }
}

/// `Q = Mᵀ·P̂` into `q_blocked` (the [`block`]ed layout of the m×r result), for `M`
/// row-major n×m and `P̂` row-major n×r. `partials` is scratch space (one blocked m×r
/// partial per [`transpose_block_rows`] rows), kept by the caller so that steps
/// allocate nothing.
///
/// Each element is `Σ_i P̂[i, c]·M[i, j]` with rows added in increasing order inside a
/// block, four at a time as `(((acc + p₀x₀) + p₁x₁) + p₂x₂) + p₃x₃`, and the blocks'
/// partials added in block order.
pub fn project_transpose(
    isa: InstructionSet,
    matrix: &[f32],
    m: usize,
    p_hat: &[f32],
    r: usize,
    partials: &mut Vec<f32>,
    q_blocked: &mut [f32],
) {
    if m == 0 || r == 0 {
        q_blocked.fill(0.0);
        return;
    }
    let n = matrix.len() / m;
    let block_rows = transpose_block_rows(n);
    let blocks = n.div_ceil(block_rows);
    let len = blocked_len(m, r);
    partials.clear();
    partials.resize(blocks * len, 0.0);
    partials
        .par_chunks_mut(len)
        .zip(matrix.par_chunks(block_rows * m))
        .zip(p_hat.par_chunks(block_rows * r))
        .for_each(|((partial, rows), p)| {
            isa.arch().dispatch(TransposeBlock {
                rows,
                m,
                p,
                r,
                partial,
            });
        });
    // Sum the block partials in block order; each output element is independent, so
    // the output is split into fixed ranges for the threads.
    let partials = &partials[..];
    q_blocked
        .par_chunks_mut(TASK_ELEMENTS)
        .enumerate()
        .for_each(|(task, out)| {
            let offset = task * TASK_ELEMENTS;
            let mut blocks = partials.chunks_exact(len);
            match blocks.next().and_then(|first| first.get(offset..)) {
                Some(first) => out.iter_mut().zip(first).for_each(|(o, &v)| *o = v),
                None => out.fill(0.0),
            }
            for block in blocks {
                if let Some(values) = block.get(offset..) {
                    out.iter_mut().zip(values).for_each(|(o, &v)| *o += v);
                }
            }
        });
}

/// One row block of [`project_transpose`].
struct TransposeBlock<'a> {
    rows: &'a [f32],
    m: usize,
    p: &'a [f32],
    r: usize,
    partial: &'a mut [f32],
}

impl WithSimd for TransposeBlock<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Self {
            rows,
            m,
            p,
            r,
            partial,
        } = self;
        partial.fill(0.0);
        let chunks = chunk_count(m);
        let mut tile_start = 0;
        while tile_start < chunks {
            let tile_end = (tile_start + TILE_CHUNKS).min(chunks);
            let tile = Tile {
                first_chunk: tile_start,
                last_chunk: tile_end,
            };
            for first in (0..r).step_by(GROUP) {
                match (r - first).min(GROUP) {
                    1 => tile_accumulate::<S, 1>(simd, rows, m, p, r, first, tile, partial),
                    2 => tile_accumulate::<S, 2>(simd, rows, m, p, r, first, tile, partial),
                    3 => tile_accumulate::<S, 3>(simd, rows, m, p, r, first, tile, partial),
                    4 => tile_accumulate::<S, 4>(simd, rows, m, p, r, first, tile, partial),
                    5 => tile_accumulate::<S, 5>(simd, rows, m, p, r, first, tile, partial),
                    6 => tile_accumulate::<S, 6>(simd, rows, m, p, r, first, tile, partial),
                    7 => tile_accumulate::<S, 7>(simd, rows, m, p, r, first, tile, partial),
                    _ => tile_accumulate::<S, 8>(simd, rows, m, p, r, first, tile, partial),
                }
            }
            tile_start = tile_end;
        }
    }
}

/// A range of column chunks `[first_chunk, last_chunk)`.
#[derive(Clone, Copy)]
struct Tile {
    first_chunk: usize,
    last_chunk: usize,
}

/// Add `Σ_i P̂[i, first + c]·M[i, j]` over the block's rows into the partial, for the
/// columns `j` of `tile` and `c < R`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile_accumulate<S: Simd, const R: usize>(
    simd: S,
    rows: &[f32],
    m: usize,
    p: &[f32],
    r: usize,
    first: usize,
    tile: Tile,
    partial: &mut [f32],
) {
    let full_chunks = m / LANES;
    let tail_start = full_chunks * LANES;
    let stride = r * LANES;
    // The tile's whole chunks go through vectors; the partial chunk that ends a row
    // (the last chunk, when `m` is not a multiple of LANES) element by element.
    let vector_end = tile.last_chunk.min(full_chunks);
    let columns = tile.first_chunk * LANES..vector_end * LANES;
    let has_tail = tile.last_chunk > full_chunks;
    let Some(acc_tile) = partial.get_mut(tile.first_chunk * stride..tile.last_chunk * stride)
    else {
        return;
    };
    let whole = (vector_end.saturating_sub(tile.first_chunk) * stride).min(acc_tile.len());
    let (acc_whole, acc_tail) = acc_tile.split_at_mut(whole);
    let quads = rows.chunks_exact(4 * m).zip(p.chunks_exact(4 * r));
    for (quad, p4) in quads {
        let weights: [[f32; 4]; R] = core::array::from_fn(|c| {
            core::array::from_fn(|t| p4.get(t * r + first + c).copied().unwrap_or(0.0))
        });
        let segment = |t: usize| {
            quad.get(t * m + columns.start..t * m + columns.end)
                .unwrap_or(&[])
        };
        let (x0, x1, x2, x3) = (segment(0), segment(1), segment(2), segment(3));
        if S::F32_LANES == LANES {
            let splat: [[S::f32s; 4]; R] =
                core::array::from_fn(|c| weights[c].map(|w| simd.splat_f32s(w)));
            let (v0, _) = S::as_simd_f32s(x0);
            let (v1, _) = S::as_simd_f32s(x1);
            let (v2, _) = S::as_simd_f32s(x2);
            let (v3, _) = S::as_simd_f32s(x3);
            let (acc, _) = S::as_mut_simd_f32s(acc_whole);
            for ((((acc_chunk, &a0), &a1), &a2), &a3) in
                acc.chunks_exact_mut(r).zip(v0).zip(v1).zip(v2).zip(v3)
            {
                let Some(acc_group) = acc_chunk.get_mut(first..first + R) else {
                    break;
                };
                for (acc, w) in acc_group.iter_mut().zip(&splat) {
                    let mut sum = simd.add_f32s(*acc, simd.mul_f32s(w[0], a0));
                    sum = simd.add_f32s(sum, simd.mul_f32s(w[1], a1));
                    sum = simd.add_f32s(sum, simd.mul_f32s(w[2], a2));
                    *acc = simd.add_f32s(sum, simd.mul_f32s(w[3], a3));
                }
            }
        } else {
            for ((((acc_chunk, a0), a1), a2), a3) in acc_whole
                .chunks_exact_mut(stride)
                .zip(x0.chunks_exact(LANES))
                .zip(x1.chunks_exact(LANES))
                .zip(x2.chunks_exact(LANES))
                .zip(x3.chunks_exact(LANES))
            {
                let Some(acc_group) = acc_chunk.get_mut(first * LANES..(first + R) * LANES) else {
                    break;
                };
                for (acc, w) in acc_group.chunks_exact_mut(LANES).zip(&weights) {
                    for l in 0..LANES {
                        acc[l] = (((acc[l] + w[0] * a0[l]) + w[1] * a1[l]) + w[2] * a2[l])
                            + w[3] * a3[l];
                    }
                }
            }
        }
        if has_tail {
            for l in 0..m - tail_start {
                let x = |t: usize| quad.get(t * m + tail_start + l).copied().unwrap_or(0.0);
                let (a0, a1, a2, a3) = (x(0), x(1), x(2), x(3));
                for (c, w) in weights.iter().enumerate() {
                    if let Some(acc) = acc_tail.get_mut((first + c) * LANES + l) {
                        *acc = (((*acc + w[0] * a0) + w[1] * a1) + w[2] * a2) + w[3] * a3;
                    }
                }
            }
        }
    }
    // The block's last rows when it does not hold a multiple of four.
    let done = rows.len() / (4 * m) * 4;
    for (row, p_row) in rows.chunks_exact(m).zip(p.chunks_exact(r)).skip(done) {
        let weights: [f32; R] =
            core::array::from_fn(|c| p_row.get(first + c).copied().unwrap_or(0.0));
        let x = row.get(columns.clone()).unwrap_or(&[]);
        for (acc_chunk, x) in acc_whole
            .chunks_exact_mut(stride)
            .zip(x.chunks_exact(LANES))
        {
            let Some(acc_group) = acc_chunk.get_mut(first * LANES..(first + R) * LANES) else {
                break;
            };
            for (acc, &w) in acc_group.chunks_exact_mut(LANES).zip(&weights) {
                for l in 0..LANES {
                    acc[l] += w * x[l];
                }
            }
        }
        if has_tail {
            for (l, &x) in row.iter().skip(tail_start).enumerate() {
                for (c, &w) in weights.iter().enumerate() {
                    if let Some(acc) = acc_tail.get_mut((first + c) * LANES + l) {
                        *acc += w * x;
                    }
                }
            }
        }
    }
}

/// `out += scale · P̂·Qᵀ` for `out` row-major n×m, `P̂` row-major n×r and `Q` in the
/// [`block`]ed layout: element `(i, j)` gets `scale · s` with
/// `s = ((P̂[i,0]·Q[j,0] + P̂[i,1]·Q[j,1]) + …) + P̂[i,r−1]·Q[j,r−1]`.
pub fn add_outer(
    isa: InstructionSet,
    out: &mut [f32],
    m: usize,
    p_hat: &[f32],
    r: usize,
    q_blocked: &[f32],
    scale: f32,
) {
    if m == 0 || r == 0 {
        return;
    }
    let rows = task_rows(m);
    out.par_chunks_mut(rows * m)
        .zip(p_hat.par_chunks(rows * r))
        .for_each(|(out, p)| {
            isa.arch().dispatch(OuterRows {
                out,
                m,
                p,
                r,
                q_blocked,
                scale,
            });
        });
}

/// One task of [`add_outer`].
struct OuterRows<'a> {
    out: &'a mut [f32],
    m: usize,
    p: &'a [f32],
    r: usize,
    q_blocked: &'a [f32],
    scale: f32,
}

impl WithSimd for OuterRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Self {
            out,
            m,
            p,
            r,
            q_blocked,
            scale,
        } = self;
        // Only ranks above GROUP need a run-time-sized set of broadcast weights.
        let mut splat = if r > GROUP {
            vec![simd.splat_f32s(0.0); r]
        } else {
            Vec::new()
        };
        for (row, p_row) in out.chunks_exact_mut(m).zip(p.chunks_exact(r)) {
            match r {
                1 => outer_row::<S, 1>(simd, row, p_row, q_blocked, scale),
                2 => outer_row::<S, 2>(simd, row, p_row, q_blocked, scale),
                3 => outer_row::<S, 3>(simd, row, p_row, q_blocked, scale),
                4 => outer_row::<S, 4>(simd, row, p_row, q_blocked, scale),
                5 => outer_row::<S, 5>(simd, row, p_row, q_blocked, scale),
                6 => outer_row::<S, 6>(simd, row, p_row, q_blocked, scale),
                7 => outer_row::<S, 7>(simd, row, p_row, q_blocked, scale),
                8 => outer_row::<S, 8>(simd, row, p_row, q_blocked, scale),
                _ => outer_row_any(simd, row, p_row, q_blocked, scale, &mut splat),
            }
        }
    }
}

/// One row of [`add_outer`] for a rank known at compile time.
#[inline(always)]
fn outer_row<S: Simd, const R: usize>(
    simd: S,
    row: &mut [f32],
    p_row: &[f32],
    q_blocked: &[f32],
    scale: f32,
) {
    let weights: [f32; R] = core::array::from_fn(|c| p_row.get(c).copied().unwrap_or(0.0));
    let full = row.len() / LANES;
    let (head, tail) = row.split_at_mut(full * LANES);
    if S::F32_LANES == LANES {
        let splat = weights.map(|w| simd.splat_f32s(w));
        let scale_v = simd.splat_f32s(scale);
        let (out_vectors, _) = S::as_mut_simd_f32s(head);
        let (q_vectors, _) = S::as_simd_f32s(q_blocked);
        for (o, q) in out_vectors.iter_mut().zip(q_vectors.chunks_exact(R)) {
            let mut sum = simd.mul_f32s(splat[0], q[0]);
            for c in 1..R {
                sum = simd.add_f32s(sum, simd.mul_f32s(splat[c], q[c]));
            }
            *o = simd.add_f32s(*o, simd.mul_f32s(scale_v, sum));
        }
    } else {
        for (o, q) in head
            .chunks_exact_mut(LANES)
            .zip(q_blocked.chunks_exact(R * LANES))
        {
            for l in 0..LANES {
                let mut sum = weights[0] * q[l];
                for c in 1..R {
                    sum += weights[c] * q[c * LANES + l];
                }
                o[l] += scale * sum;
            }
        }
    }
    if let Some(q) = q_blocked.chunks_exact(R * LANES).nth(full) {
        for (l, o) in tail.iter_mut().enumerate() {
            let mut sum = weights[0] * q[l];
            for c in 1..R {
                sum += weights[c] * q[c * LANES + l];
            }
            *o += scale * sum;
        }
    }
}

/// One row of [`add_outer`] for any rank (above [`GROUP`]); `splat` is scratch of `r`
/// vectors.
#[inline(always)]
fn outer_row_any<S: Simd>(
    simd: S,
    row: &mut [f32],
    p_row: &[f32],
    q_blocked: &[f32],
    scale: f32,
    splat: &mut [S::f32s],
) {
    let r = p_row.len();
    let full = row.len() / LANES;
    let (head, tail) = row.split_at_mut(full * LANES);
    if S::F32_LANES == LANES {
        for (s, &w) in splat.iter_mut().zip(p_row) {
            *s = simd.splat_f32s(w);
        }
        let scale_v = simd.splat_f32s(scale);
        let (out_vectors, _) = S::as_mut_simd_f32s(head);
        let (q_vectors, _) = S::as_simd_f32s(q_blocked);
        for (o, q) in out_vectors.iter_mut().zip(q_vectors.chunks_exact(r)) {
            let mut terms = splat.iter().zip(q);
            let Some((&w0, &q0)) = terms.next() else {
                break;
            };
            let mut sum = simd.mul_f32s(w0, q0);
            for (&w, &q) in terms {
                sum = simd.add_f32s(sum, simd.mul_f32s(w, q));
            }
            *o = simd.add_f32s(*o, simd.mul_f32s(scale_v, sum));
        }
    } else {
        for (o, q) in head
            .chunks_exact_mut(LANES)
            .zip(q_blocked.chunks_exact(r * LANES))
        {
            for (l, o) in o.iter_mut().enumerate() {
                *o += scale * outer_sum(p_row, q, l);
            }
        }
    }
    if let Some(q) = q_blocked.chunks_exact(r * LANES).nth(full) {
        for (l, o) in tail.iter_mut().enumerate() {
            *o += scale * outer_sum(p_row, q, l);
        }
    }
}

/// `Σ_c p[c]·q[c·LANES + l]` in increasing `c`, the first term not added to zero.
#[inline(always)]
fn outer_sum(p_row: &[f32], q_chunk: &[f32], l: usize) -> f32 {
    let mut terms = p_row
        .iter()
        .zip(q_chunk.chunks_exact(LANES))
        .map(|(&w, q)| w * q[l]);
    let first = terms.next().unwrap_or(0.0);
    terms.fold(first, |sum, term| sum + term)
}

/// The three products of one PowerSGD step computed by a general-purpose GEMM, for
/// comparing the kernels with "the machine's matrix-multiply rate for the same shapes":
/// `p = M·q` (n×r), `q_out = Mᵀ·p` (m×r), `out += p·q_outᵀ` (n×m), all row-major, by
/// ndarray's `general_mat_mul` — matrixmultiply's packed BLIS-style kernels with run-time
/// AVX2/AVX-512 selection, the only BLAS-class GEMM callable from this crate (the `gemm`
/// crate's API is `unsafe`, which the workspace forbids). Returns `false`, computing
/// nothing, when a buffer's length does not fit `n`, `m`, `r`.
///
/// These products do `2·n·m·r` flops each ([`step_flops`] counts the three).
#[allow(clippy::too_many_arguments)]
pub fn reference_products(
    matrix: &[f32],
    n: usize,
    m: usize,
    q: &[f32],
    r: usize,
    p: &mut [f32],
    q_out: &mut [f32],
    out: &mut [f32],
) -> bool {
    use ndarray::linalg::general_mat_mul;
    use ndarray::{ArrayView2, ArrayViewMut2};
    let (Ok(a), Ok(q), Ok(mut p), Ok(mut q_out), Ok(mut out)) = (
        ArrayView2::from_shape((n, m), matrix),
        ArrayView2::from_shape((m, r), q),
        ArrayViewMut2::from_shape((n, r), p),
        ArrayViewMut2::from_shape((m, r), q_out),
        ArrayViewMut2::from_shape((n, m), out),
    ) else {
        return false;
    };
    general_mat_mul(1.0, &a, &q, 0.0, &mut p);
    general_mat_mul(1.0, &a.t(), &p, 0.0, &mut q_out);
    general_mat_mul(1.0, &p, &q_out.t(), 1.0, &mut out);
    true
}

/// Flops of the three products of one step on an n×m matrix at rank r:
/// `3 · 2·n·m·r` (`M·Q`, `Mᵀ·P̂`, `P̂·Qᵀ`; the orthogonalisations are `O((n+m)·r²)`).
pub fn step_flops(n: usize, m: usize, r: usize) -> f64 {
    6.0 * n as f64 * m as f64 * r as f64
}
