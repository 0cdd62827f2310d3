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
//! At small rank these products do `2·r` flops per element of `M`, so they are bound by
//! streaming `M` from memory, not by arithmetic, and a GEMM's packing of `M` into
//! panels is one more pass over it. The kernels read `M` once, keep the small operand
//! (`Q`, or the accumulators of `Mᵀ·P̂`) in L1/L2, and hold up to [`GROUP`] accumulators
//! per 8 columns in registers. Measured on the project's 2-core machine (4096×4096,
//! rank 4, medians of interleaved runs): copy + `M·Q` 6.2 ms, `Mᵀ·P̂` 3.0 ms,
//! `out += P̂·Qᵀ` 4.1–4.6 ms, the whole compressor step 14 ms; the same three products
//! take 13.8–15.5 ms with the `gemm` crate on two threads (the GEMM behind faer and
//! candle, whose API is `unsafe` and so not callable here) and 24–25 ms with ndarray's
//! matrixmultiply ([`reference_products`]); a 64 MiB copy takes 4.5–4.9 ms. The step
//! moves about 384 MiB (the copy of `M` with its write-allocate, one read of `M`, a
//! read and a write of `out`), so it runs at the memory bound. At higher ranks the
//! kernels become compute-bound and, without FMA (see below), fall behind the `gemm`
//! crate: about 88% of its rate at rank 8 and about half at rank 16.
//!
//! # SIMD without `unsafe`
//!
//! The crate forbids `unsafe`, and the default build targets baseline x86-64 (SSE2).
//! Each parallel task enters [`pulp::Arch::dispatch`], which runs the kernel body
//! compiled for x86-64-v3 (AVX2) when the CPU has it (detected at run time) and for the
//! baseline otherwise — no system library, no build flag. Inside, the kernels use
//! pulp's vector type when it has [`LANES`] lanes (AVX2) and the same arithmetic on
//! `[f32; LANES]` arrays otherwise ([`InstructionSet::Baseline`] forces the latter: on
//! the machine above the three rank-4 kernels then take about 25 ms instead of 13).
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

/// Chunks of [`LANES`] columns per tile of [`project_transpose`] (4096 columns): the
/// tile's accumulators (`TILE_CHUNKS · LANES · r` f32, 64 KiB at r = 4) stay in L2
/// while the block's rows stream through in runs of up to 16 KiB. Measured on the
/// 4096×4096 benchmark, these long runs beat L1-sized tiles of 512 columns (3.0 ms
/// against 3.5 ms per product): the loads of `M`, not the accumulators, set the pace.
const TILE_CHUNKS: usize = 512;

/// Which code the kernels run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InstructionSet {
    /// The best the CPU offers, detected at run time (AVX2 on x86-64 when present).
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

/// The column groups of a rank-`r` factor: `(first column, width)` for each run of up to
/// [`GROUP`] columns.
fn groups(r: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..r)
        .step_by(GROUP)
        .map(move |first| (first, (r - first).min(GROUP)))
}

/// Where column group `first..first + width` of the blocked m×r layout lives.
fn group_range(m: usize, first: usize, width: usize) -> std::ops::Range<usize> {
    let start = chunk_count(m) * LANES * first;
    start..start + chunk_count(m) * LANES * width
}

/// Rows of `M` per block of [`project_transpose`] for a matrix of `n` rows: at least
/// 64, and enough that there are at most 64 blocks (so the partials take at most
/// `64·m·r` floats); a multiple of 4. A function of the shape only, so the sum order
/// never depends on the thread count.
pub fn transpose_block_rows(n: usize) -> usize {
    n.div_ceil(64).max(64).next_multiple_of(4)
}

/// Rewrite the row-major m×r matrix `rows` in the *blocked* layout the kernels read.
/// The columns form groups of [`GROUP`] (the last may be narrower), stored one after
/// the other; inside the group of columns `g₀..g₀ + w`, for each chunk `k` of
/// [`LANES`] rows of the matrix, its `w` columns follow one another as `LANES`
/// consecutive values:
///
/// ```text
/// blocked[⌈m/8⌉·8·g₀ + (k·w + (c − g₀))·8 + l] = rows[(8k + l)·r + c]    (zero past row m)
/// ```
///
/// so a kernel walking the chunks of one group reads contiguous memory with a stride
/// known at compile time. For `r ≤ 8` there is one group and the formula is
/// `blocked[(k·r + c)·8 + l]`.
pub fn block(rows: &[f32], m: usize, r: usize, blocked: &mut Vec<f32>) {
    blocked.clear();
    blocked.resize(blocked_len(m, r), 0.0);
    for (first, width) in groups(r) {
        let Some(group) = blocked.get_mut(group_range(m, first, width)) else {
            return;
        };
        for (k, chunk) in group.chunks_exact_mut(width * LANES).enumerate() {
            for (l, row) in rows.chunks_exact(r).skip(k * LANES).take(LANES).enumerate() {
                for (c, &value) in row.iter().skip(first).take(width).enumerate() {
                    chunk[c * LANES + l] = value;
                }
            }
        }
    }
}

/// The inverse of [`block`]: the row-major m×r matrix of a blocked one.
pub fn unblock(blocked: &[f32], m: usize, r: usize, rows: &mut Vec<f32>) {
    rows.clear();
    rows.resize(m * r, 0.0);
    for (first, width) in groups(r) {
        let Some(group) = blocked.get(group_range(m, first, width)) else {
            return;
        };
        for (k, chunk) in group.chunks_exact(width * LANES).enumerate() {
            for (l, row) in rows
                .chunks_exact_mut(r)
                .skip(k * LANES)
                .take(LANES)
                .enumerate()
            {
                for (c, value) in row.iter_mut().skip(first).take(width).enumerate() {
                    *value = chunk[c * LANES + l];
                }
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

/// Call `$kernel::<S, W>($args…)` for the group width `$width` (1 to [`GROUP`]).
macro_rules! by_width {
    ($width:expr, $kernel:ident, $simd:ty, ($($arg:expr),* $(,)?)) => {
        match $width {
            1 => $kernel::<$simd, 1>($($arg),*),
            2 => $kernel::<$simd, 2>($($arg),*),
            3 => $kernel::<$simd, 3>($($arg),*),
            4 => $kernel::<$simd, 4>($($arg),*),
            5 => $kernel::<$simd, 5>($($arg),*),
            6 => $kernel::<$simd, 6>($($arg),*),
            7 => $kernel::<$simd, 7>($($arg),*),
            _ => $kernel::<$simd, 8>($($arg),*),
        }
    };
}

/// `M ← input` (row-major n×m, `n = input.len() / m`) and `P = M·Q` (row-major n×r)
/// from `Q` in the [`block`]ed layout, in one pass over `input`: each row is copied as
/// it is multiplied by the first column group (the other groups read the copy while it
/// is in L1).
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
            for (first, width) in groups(r) {
                let (Some(q_group), Some(out)) = (
                    q_blocked.get(group_range(m, first, width)),
                    p_row.get_mut(first..first + width),
                ) else {
                    return;
                };
                let (x, copy) = if first == 0 {
                    (source, Some(&mut *row))
                } else {
                    (&*row, None)
                };
                by_width!(width, row_dots, S, (simd, x, copy, q_group, out));
            }
        }
    }
}

/// `out[c] = row · Q[:, c]` for the `W` columns of one group (`q_group`, blocked), with
/// the fixed lane pattern; with `copy`, the row is also written there (in the same pass
/// on the vector path).
#[inline(always)]
fn row_dots<S: Simd, const W: usize>(
    simd: S,
    row: &[f32],
    copy: Option<&mut [f32]>,
    q_group: &[f32],
    out: &mut [f32],
) {
    let full = row.len() / LANES;
    let (head, tail) = row.split_at(full * LANES);
    let mut lanes = [[0.0f32; LANES]; W];
    if S::F32_LANES == LANES {
        let (row_vectors, _) = S::as_simd_f32s(head);
        let (q_vectors, _) = S::as_simd_f32s(q_group);
        let mut acc = [simd.splat_f32s(0.0); W];
        let mut step = |x: S::f32s, q_chunk: &[S::f32s]| {
            for (acc, &q) in acc.iter_mut().zip(q_chunk) {
                *acc = simd.add_f32s(*acc, simd.mul_f32s(x, q));
            }
        };
        match copy {
            Some(copy) => {
                let (copy_head, copy_tail) = copy.split_at_mut(full * LANES);
                let (copy_vectors, _) = S::as_mut_simd_f32s(copy_head);
                for ((&x, c), q_chunk) in row_vectors
                    .iter()
                    .zip(copy_vectors)
                    .zip(q_vectors.chunks_exact(W))
                {
                    *c = x;
                    step(x, q_chunk);
                }
                copy_tail.copy_from_slice(tail);
            }
            None => {
                for (&x, q_chunk) in row_vectors.iter().zip(q_vectors.chunks_exact(W)) {
                    step(x, q_chunk);
                }
            }
        }
        for (lanes, &acc) in lanes.iter_mut().zip(&acc) {
            *lanes = to_lanes::<S>(acc);
        }
    } else {
        if let Some(copy) = copy {
            copy.copy_from_slice(row);
        }
        for (x, q_chunk) in head
            .chunks_exact(LANES)
            .zip(q_group.chunks_exact(W * LANES))
        {
            for (lanes, q) in lanes.iter_mut().zip(q_chunk.chunks_exact(LANES)) {
                for l in 0..LANES {
                    lanes[l] += x[l] * q[l];
                }
            }
        }
    }
    if let Some(q_chunk) = q_group.chunks_exact(W * LANES).nth(full) {
        for (l, &x) in tail.iter().enumerate() {
            for (lanes, q) in lanes.iter_mut().zip(q_chunk.chunks_exact(LANES)) {
                lanes[l] += x * q[l];
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
/// block, four at a time as `(((acc + p₀x₀) + p₁x₁) + p₂x₂) + p₃x₃` (one at a time for
/// the last rows of a block that are not a multiple of four), and the blocks' partials
/// added in block order.
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
            for (first, width) in groups(r) {
                let Some(acc_group) = partial.get_mut(group_range(m, first, width)) else {
                    return;
                };
                let Some(acc_tile) =
                    acc_group.get_mut(tile_start * width * LANES..tile_end * width * LANES)
                else {
                    return;
                };
                let tile = Tile {
                    rows,
                    m,
                    p,
                    r,
                    first,
                    first_chunk: tile_start,
                    last_chunk: tile_end,
                };
                by_width!(width, tile_accumulate, S, (simd, tile, acc_tile));
            }
            tile_start = tile_end;
        }
    }
}

/// The work of one call of [`tile_accumulate`]: the block's rows, its rows of `P̂`,
/// the group's first column, and the chunks `[first_chunk, last_chunk)` of the tile.
#[derive(Clone, Copy)]
struct Tile<'a> {
    rows: &'a [f32],
    m: usize,
    p: &'a [f32],
    r: usize,
    first: usize,
    first_chunk: usize,
    last_chunk: usize,
}

/// Add `Σ_i P̂[i, first + c]·M[i, j]` over the block's rows into `acc_tile` (the tile's
/// chunks of the group's blocked partial), for the columns `j` of the tile and `c < W`.
#[inline(always)]
fn tile_accumulate<S: Simd, const W: usize>(simd: S, tile: Tile<'_>, acc_tile: &mut [f32]) {
    let Tile {
        rows,
        m,
        p,
        r,
        first,
        first_chunk,
        last_chunk,
    } = tile;
    let full_chunks = m / LANES;
    let tail_start = full_chunks * LANES;
    // The tile's whole chunks go through vectors; the partial chunk that ends a row
    // (the last chunk, when `m` is not a multiple of LANES) element by element.
    let vector_end = last_chunk.min(full_chunks);
    let columns = first_chunk * LANES..vector_end * LANES;
    let has_tail = last_chunk > full_chunks;
    let whole = (vector_end.saturating_sub(first_chunk) * W * LANES).min(acc_tile.len());
    let (acc_whole, acc_tail) = acc_tile.split_at_mut(whole);
    let weights_of = |p_row: &[f32]| -> [f32; W] {
        core::array::from_fn(|c| p_row.get(first + c).copied().unwrap_or(0.0))
    };
    for (quad, p4) in rows.chunks_exact(4 * m).zip(p.chunks_exact(4 * r)) {
        let per_row: [[f32; W]; 4] = core::array::from_fn(|t| weights_of(&p4[t * r..]));
        let segment = |t: usize| {
            quad.get(t * m + columns.start..t * m + columns.end)
                .unwrap_or(&[])
        };
        let (x0, x1, x2, x3) = (segment(0), segment(1), segment(2), segment(3));
        if S::F32_LANES == LANES {
            let splat: [[S::f32s; W]; 4] =
                per_row.map(|weights| weights.map(|w| simd.splat_f32s(w)));
            let (v0, _) = S::as_simd_f32s(x0);
            let (v1, _) = S::as_simd_f32s(x1);
            let (v2, _) = S::as_simd_f32s(x2);
            let (v3, _) = S::as_simd_f32s(x3);
            let (acc, _) = S::as_mut_simd_f32s(acc_whole);
            for ((((acc_chunk, &a0), &a1), &a2), &a3) in
                acc.chunks_exact_mut(W).zip(v0).zip(v1).zip(v2).zip(v3)
            {
                for (c, acc) in acc_chunk.iter_mut().enumerate() {
                    let mut sum = simd.add_f32s(*acc, simd.mul_f32s(splat[0][c], a0));
                    sum = simd.add_f32s(sum, simd.mul_f32s(splat[1][c], a1));
                    sum = simd.add_f32s(sum, simd.mul_f32s(splat[2][c], a2));
                    *acc = simd.add_f32s(sum, simd.mul_f32s(splat[3][c], a3));
                }
            }
        } else {
            for ((((acc_chunk, a0), a1), a2), a3) in acc_whole
                .chunks_exact_mut(W * LANES)
                .zip(x0.chunks_exact(LANES))
                .zip(x1.chunks_exact(LANES))
                .zip(x2.chunks_exact(LANES))
                .zip(x3.chunks_exact(LANES))
            {
                for (c, acc) in acc_chunk.chunks_exact_mut(LANES).enumerate() {
                    let w = [per_row[0][c], per_row[1][c], per_row[2][c], per_row[3][c]];
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
                for (c, acc) in acc_tail.chunks_exact_mut(LANES).enumerate() {
                    let w = [per_row[0][c], per_row[1][c], per_row[2][c], per_row[3][c]];
                    acc[l] = (((acc[l] + w[0] * a0) + w[1] * a1) + w[2] * a2) + w[3] * a3;
                }
            }
        }
    }
    // The block's last rows when it does not hold a multiple of four.
    let done = rows.len() / (4 * m) * 4;
    for (row, p_row) in rows.chunks_exact(m).zip(p.chunks_exact(r)).skip(done) {
        let weights = weights_of(p_row);
        let x = row.get(columns.clone()).unwrap_or(&[]);
        for (acc_chunk, x) in acc_whole
            .chunks_exact_mut(W * LANES)
            .zip(x.chunks_exact(LANES))
        {
            for (acc, &w) in acc_chunk.chunks_exact_mut(LANES).zip(&weights) {
                for l in 0..LANES {
                    acc[l] += w * x[l];
                }
            }
        }
        if has_tail {
            for (l, &x) in row.iter().skip(tail_start).enumerate() {
                for (acc, &w) in acc_tail.chunks_exact_mut(LANES).zip(&weights) {
                    acc[l] += w * x;
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
        if r <= GROUP {
            for (row, p_row) in out.chunks_exact_mut(m).zip(p.chunks_exact(r)) {
                by_width!(r, outer_row, S, (simd, row, p_row, q_blocked, scale));
            }
        } else {
            let group_slices: Vec<&[f32]> = groups(r)
                .map(|(first, width)| q_blocked.get(group_range(m, first, width)).unwrap_or(&[]))
                .collect();
            let mut splat = vec![simd.splat_f32s(0.0); r];
            for (row, p_row) in out.chunks_exact_mut(m).zip(p.chunks_exact(r)) {
                outer_row_any(simd, row, p_row, &group_slices, scale, &mut splat);
            }
        }
    }
}

/// One row of [`add_outer`] for a rank of at most [`GROUP`] (one group).
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

/// One row of [`add_outer`] for a rank above [`GROUP`]: `groups` are the blocked
/// column groups (all of width [`GROUP`] but maybe the last), `splat` scratch for `r`
/// vectors.
#[inline(always)]
fn outer_row_any<S: Simd>(
    simd: S,
    row: &mut [f32],
    p_row: &[f32],
    groups: &[&[f32]],
    scale: f32,
    splat: &mut [S::f32s],
) {
    let chunks = chunk_count(row.len());
    let full = row.len() / LANES;
    let (head, tail) = row.split_at_mut(full * LANES);
    if S::F32_LANES == LANES {
        for (s, &w) in splat.iter_mut().zip(p_row) {
            *s = simd.splat_f32s(w);
        }
        let scale_v = simd.splat_f32s(scale);
        let (out_vectors, _) = S::as_mut_simd_f32s(head);
        let widths = groups
            .iter()
            .map(|group| group.len() / (chunks * LANES).max(1));
        for (k, o) in out_vectors.iter_mut().enumerate() {
            // Terms in increasing column order: group by group, the first term of the
            // first group not added to zero.
            let mut sum: Option<S::f32s> = None;
            for ((group, width), weights) in
                groups.iter().zip(widths.clone()).zip(splat.chunks(GROUP))
            {
                let chunk = group
                    .get(k * width * LANES..(k + 1) * width * LANES)
                    .unwrap_or(&[]);
                let (q, _) = S::as_simd_f32s(chunk);
                sum = by_width!(width, add_group_terms, S, (simd, sum, q, weights));
            }
            if let Some(sum) = sum {
                *o = simd.add_f32s(*o, simd.mul_f32s(scale_v, sum));
            }
        }
    } else {
        for (k, o) in head.chunks_exact_mut(LANES).enumerate() {
            for (l, o) in o.iter_mut().enumerate() {
                *o += scale * outer_sum(p_row, groups, chunks, k, l);
            }
        }
    }
    for (l, o) in tail.iter_mut().enumerate() {
        *o += scale * outer_sum(p_row, groups, chunks, full, l);
    }
}

/// `sum + w₀q₀ + … + w_{W−1}q_{W−1}` (left to right; without `sum`, the first product
/// starts the sum), for one chunk of one column group of [`outer_row_any`].
#[inline(always)]
fn add_group_terms<S: Simd, const W: usize>(
    simd: S,
    sum: Option<S::f32s>,
    q: &[S::f32s],
    weights: &[S::f32s],
) -> Option<S::f32s> {
    let (Some(q), Some(weights)) = (q.get(..W), weights.get(..W)) else {
        return sum;
    };
    let first = simd.mul_f32s(weights[0], q[0]);
    let mut acc = match sum {
        Some(sum) => simd.add_f32s(sum, first),
        None => first,
    };
    for c in 1..W {
        acc = simd.add_f32s(acc, simd.mul_f32s(weights[c], q[c]));
    }
    Some(acc)
}

/// `Σ_c p[c]·Q[8k + l, c]` over the blocked column groups in increasing `c`, the first
/// term not added to zero.
#[inline(always)]
fn outer_sum(p_row: &[f32], groups: &[&[f32]], chunks: usize, k: usize, l: usize) -> f32 {
    let mut terms = groups
        .iter()
        .zip(p_row.chunks(GROUP))
        .flat_map(|(group, weights)| {
            let width = group.len() / (chunks * LANES).max(1);
            let chunk = group
                .get(k * width * LANES..(k + 1) * width * LANES)
                .unwrap_or(&[]);
            chunk
                .chunks_exact(LANES)
                .zip(weights)
                .map(move |(q, &w)| w * q[l])
        });
    let first = terms.next().unwrap_or(0.0);
    terms.fold(first, |sum, term| sum + term)
}

/// The three products of one PowerSGD step computed by a general-purpose GEMM, for
/// comparing the kernels with "the machine's matrix-multiply rate for the same shapes":
/// `p = M·q` (n×r), `q_out = Mᵀ·p` (m×r), `out += p·q_outᵀ` (n×m), all row-major.
///
/// The GEMM is ndarray's `general_mat_mul` — matrixmultiply's packed BLIS-style
/// kernels with run-time AVX2/AVX-512 selection, the only BLAS-class GEMM callable
/// from this crate (the `gemm` crate's API is `unsafe`, which the workspace forbids).
/// matrixmultiply runs on one thread, so each product is split into one panel per
/// rayon thread (row panels of `M` for `M·q` and `p·q_outᵀ`, column panels for
/// `Mᵀ·p`) multiplied in parallel. On the project's 2-core machine, for 4096×4096 at
/// rank 4, this takes about 25 ms, against about 15 ms for the `gemm` crate on two
/// threads (the fastest GEMM measured there; it cannot be called from this crate).
///
/// Returns `false`, computing nothing, when a buffer's length does not fit `n`, `m`,
/// `r`. [`step_flops`] counts the flops.
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
    use ndarray::{ArrayView2, ArrayViewMut2, Axis, Slice};
    let fits = matrix.len() == n * m
        && q.len() == m * r
        && p.len() == n * r
        && q_out.len() == m * r
        && out.len() == n * m;
    let (Ok(a), Ok(q)) = (
        ArrayView2::from_shape((n, m), matrix),
        ArrayView2::from_shape((m, r), q),
    ) else {
        return false;
    };
    if !fits || n == 0 || m == 0 || r == 0 {
        return fits;
    }
    let threads = rayon::current_num_threads().max(1);
    let row_panel = n.div_ceil(threads);
    let column_panel = m.div_ceil(threads);
    // p = M·q, by row panels.
    p.par_chunks_mut(row_panel * r)
        .zip(matrix.par_chunks(row_panel * m))
        .for_each(|(p, rows)| {
            let k = rows.len() / m;
            if let (Ok(rows), Ok(mut p)) = (
                ArrayView2::from_shape((k, m), rows),
                ArrayViewMut2::from_shape((k, r), p),
            ) {
                general_mat_mul(1.0, &rows, &q, 0.0, &mut p);
            }
        });
    let Ok(p_view) = ArrayView2::from_shape((n, r), &*p) else {
        return false;
    };
    // q_out = Mᵀ·p, by column panels of M (row panels of q_out).
    q_out
        .par_chunks_mut(column_panel * r)
        .enumerate()
        .for_each(|(panel, q_out)| {
            let first = panel * column_panel;
            let k = q_out.len() / r;
            if let Ok(mut q_out) = ArrayViewMut2::from_shape((k, r), q_out) {
                let columns = a.slice_axis(Axis(1), Slice::from(first..first + k));
                general_mat_mul(1.0, &columns.t(), &p_view, 0.0, &mut q_out);
            }
        });
    let Ok(q_t) = ArrayView2::from_shape((m, r), &*q_out) else {
        return false;
    };
    let q_t = q_t.t();
    // out += p·q_outᵀ, by row panels.
    out.par_chunks_mut(row_panel * m)
        .zip(p_view.axis_chunks_iter(Axis(0), row_panel).into_par_iter())
        .for_each(|(out, p)| {
            let k = out.len() / m;
            if let Ok(mut out) = ArrayViewMut2::from_shape((k, m), out) {
                general_mat_mul(1.0, &p, &q_t, 1.0, &mut out);
            }
        });
    true
}

/// Flops of the three products of one step on an n×m matrix at rank r:
/// `3 · 2·n·m·r` (`M·Q`, `Mᵀ·P̂`, `P̂·Qᵀ`; the orthogonalisations are `O((n+m)·r²)`).
pub fn step_flops(n: usize, m: usize, r: usize) -> f64 {
    6.0 * n as f64 * m as f64 * r as f64
}
