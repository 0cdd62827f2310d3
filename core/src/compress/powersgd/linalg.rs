//! The small dense linear algebra of PowerSGD, in f64: Gram–Schmidt orthonormalisation
//! of the skinny factors `P` (n×r) and `Q` (m×r), and standard normal draws for the
//! initial `Q`. These cost `O((n+m)·r²)`, nothing next to the products with `M`, so
//! they favour accuracy and portability: plain sequential f64 arithmetic, the same
//! bits on every machine.

use crate::compress::rng::StreamRng;

/// A column whose norm after removing its components along the previous columns is at
/// most this fraction of its norm before (or whose norm is zero or not finite) is
/// *vanishing*: it carries no direction of its own. PyTorch's hook divides by the norm
/// regardless (its `orthogonalization_epsilon` defaults to 0), which turns an all-zero
/// column into NaNs; here a vanishing column of `P` becomes zero, and a vanishing column
/// of `Q` is redrawn. `1e-12` is far below the f32 rounding level (`6e-8`), so only
/// exact (or f64-level) dependence counts: columns that differ from the span of the
/// previous ones by f32 rounding noise are kept and normalised, as PyTorch does.
pub const VANISHING_RATIO: f64 = 1e-12;

/// Redraws of a vanishing column before it is set to zero.
pub const MAX_REDRAWS: usize = 4;

/// Orthonormalise the columns of the row-major `rows`×`cols` matrix `a` in place:
/// modified Gram–Schmidt, each column projected twice against the previous ones
/// ("twice is enough", Giraud et al. 2005) so the result is orthonormal to f64
/// precision before rounding to f32. Column `i` keeps the sign of its component along
/// its own direction (R has a positive diagonal), as PyTorch's Gram–Schmidt does.
///
/// A vanishing column (see [`VANISHING_RATIO`]) is handed to `redraw(column, attempt,
/// values)`, which may refill it (returning `true`) to be orthogonalised again, up to
/// [`MAX_REDRAWS`] times; otherwise it is set to zero. Returns the number of zero
/// columns left. `scratch` is reused between calls.
pub fn orthonormalize(
    a: &mut [f32],
    rows: usize,
    cols: usize,
    scratch: &mut Vec<f64>,
    mut redraw: impl FnMut(usize, usize, &mut [f64]) -> bool,
) -> usize {
    if rows == 0 || cols == 0 {
        return 0;
    }
    // Column-major f64 copy, so every dot product walks contiguous memory.
    scratch.clear();
    scratch.resize(rows * cols, 0.0);
    for (i, row) in a.chunks_exact(cols).enumerate().take(rows) {
        for (c, &value) in row.iter().enumerate() {
            scratch[c * rows + i] = f64::from(value);
        }
    }
    let mut zeroed = 0;
    for column in 0..cols {
        let (done, rest) = scratch.split_at_mut(column * rows);
        let Some(v) = rest.get_mut(..rows) else {
            break;
        };
        let mut attempt = 0;
        loop {
            let before = norm(v);
            for _pass in 0..2 {
                for previous in done.chunks_exact(rows) {
                    let coefficient = dot(previous, v);
                    for (x, &q) in v.iter_mut().zip(previous) {
                        *x -= coefficient * q;
                    }
                }
            }
            let after = norm(v);
            if before.is_finite() && before > 0.0 && after > VANISHING_RATIO * before {
                for x in v.iter_mut() {
                    *x /= after;
                }
                break;
            }
            if attempt < MAX_REDRAWS && redraw(column, attempt, v) {
                attempt += 1;
                continue;
            }
            v.fill(0.0);
            zeroed += 1;
            break;
        }
    }
    for (i, row) in a.chunks_exact_mut(cols).enumerate().take(rows) {
        for (c, value) in row.iter_mut().enumerate() {
            *value = scratch[c * rows + i] as f32;
        }
    }
    zeroed
}

/// `Σ aᵢbᵢ` in a fixed order: four interleaved partial sums (`i mod 4`), combined as
/// `(s₀ + s₁) + (s₂ + s₃)`, then the last `len mod 4` terms in index order. Four
/// chains instead of one keep the adder busy (the orthonormalisation costs `O(len·r²)`
/// dot products).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut partial = [0.0f64; 4];
    let split = a.len().min(b.len()) / 4 * 4;
    for (x, y) in a[..split].chunks_exact(4).zip(b[..split].chunks_exact(4)) {
        for k in 0..4 {
            partial[k] += x[k] * y[k];
        }
    }
    let head = (partial[0] + partial[1]) + (partial[2] + partial[3]);
    a[split..]
        .iter()
        .zip(&b[split..])
        .fold(head, |sum, (&x, &y)| sum + x * y)
}

/// The Euclidean norm (by [`dot`]).
fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// Independent standard normal draws from a [`StreamRng`], by the Box–Muller transform
/// in f64: each pair of 53-bit uniforms `u₁ ∈ (0, 1]`, `u₂ ∈ [0, 1)` gives
/// `√(−2 ln u₁)·cos 2πu₂` then `√(−2 ln u₁)·sin 2πu₂`, rounded to f32.
///
/// `ln`, `sin` and `cos` come from the platform's math library; they may differ in the
/// last f64 bit between libraries, which changes the f32 result only when the f64 value
/// lies within that bit of an f32 rounding boundary (a chance of about 2⁻²⁹ per draw).
#[derive(Clone, Debug)]
pub struct NormalDraws {
    rng: StreamRng,
    pending: Option<f32>,
}

impl NormalDraws {
    /// Draws from `rng`.
    pub fn new(rng: StreamRng) -> Self {
        Self { rng, pending: None }
    }
}

impl Iterator for NormalDraws {
    type Item = f32;

    fn next(&mut self) -> Option<f32> {
        if let Some(second) = self.pending.take() {
            return Some(second);
        }
        const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
        let u1 = ((self.rng.next_u64() >> 11) + 1) as f64 * SCALE;
        let u2 = (self.rng.next_u64() >> 11) as f64 * SCALE;
        let radius = (-2.0 * u1.ln()).sqrt();
        let (sin, cos) = (std::f64::consts::TAU * u2).sin_cos();
        self.pending = Some((radius * sin) as f32);
        Some((radius * cos) as f32)
    }
}
