//! `dgc(ratio: 0.001, momentum: 0.9, clip: 0, warmup: 0, approx: sample|exact)`: Deep
//! Gradient Compression (Lin, Han, Mao, Wang & Dally, ICLR 2018). Each step, on each
//! worker, for the gradient `g` of one tensor:
//!
//! ```text
//! g ← g · min(1, c / (‖g‖₂ + 1e-6)),  c = clip / √N        local gradient clipping (clip > 0)
//! u ← m·u + g                                              momentum correction
//! v ← v + u                                                local accumulation
//! S = indices of the top-k of |v|                          k = max(1, ⌈ρ·n⌉)
//! send (S, v[S]);  u[S] ← 0;  v[S] ← 0                      momentum factor masking
//! ```
//!
//! - **Clipping** happens before accumulation, with the threshold scaled by `N^(−1/2)`
//!   (`N` = [`StepContext::world`]), as the paper does so that the sum of `N` clipped
//!   gradients keeps the global norm bound; the coefficient is PyTorch's
//!   `clip_grad_norm_` (`max_norm / (norm + 1e-6)`, applied when below 1), on this
//!   tensor's norm. `clip: 0` (default) turns it off.
//! - **Momentum correction**: the accumulated quantity is the momentum `u`, not the
//!   gradient, so the optimizer must then be **plain SGD without momentum** (the
//!   momentum already lives here), as in the paper.
//! - **Momentum factor masking** zeroes `u` and `v` where values were sent, so stale
//!   momentum does not push sent coordinates again.
//! - **Sparsity warm-up**: during the first `warmup` steps (counted from the first
//!   step this compressor compressed, so a method switched on mid-run warms up too)
//!   split into four equal stages, the density is `0.25^(s+1)` in stage `s` = 0…3 —
//!   25%, 6.25%, 1.5625%, 0.390625%, the paper's "75%, 93.75%, 98.4375%, 99.6%"
//!   sparsity (its exponential schedule; the last figure is rounded there) — never
//!   below the ratio: `ρ = max(stage density, ratio)`. Afterwards `ρ = ratio` (99.9%
//!   sparsity by default). Stage `s` covers elapsed steps `e` with
//!   `⌊4e / warmup⌋ = s`.
//! - **Selection**: `approx: sample` (default) is the paper's sampled threshold with
//!   its hierarchical re-selection ([`sampled_top_k`], at most k elements);
//!   `approx: exact` the exact top-k ([`top_k`]).
//!
//! `ratio` may be a schedule (each step's value from [`StepContext::number`], in
//! (0, 1]). The method carries its own accumulation ([`FeedbackPolicy::Internal`]): the
//! host adds no error-feedback residual. Aggregation is gather.
//!
//! # Payload data (after the common header)
//!
//! The sparse layout of [`sparse`](super::sparse) — a tag byte, `k` (u32), the
//! indices in the smallest of three encodings, then `k` f32 values of `v` —
//! `16 + 4·d + 5 + I + 4·k` bytes.
//!
//! # Saved state
//!
//! | bytes | field |
//! |---:|---|
//! | 4 | magic `DGC1` |
//! | 8 | `n` (u64; 0 before the first compress) |
//! | 1 | 1 when the warm-up origin is set, else 0 |
//! | 8 | the warm-up origin step (u64; 0 when unset) |
//! | `4·n` | `u` (f32) |
//! | `4·n` | `v` (f32) |
//!
//! all little-endian, restored bit for bit.

use rayon::prelude::*;
use regimen_plugin::{ArgError, Args};

use super::bits::{sum_squares, write_header, CHUNK};
use super::sparse::{
    check_sparse_len, decompress_sparse_add, element_count, ratio_arg, sample_key, sampled_top_k,
    step_ratio, top_k, write_sparse_data, Approx,
};
use super::{
    Aggregation, CompressError, Compressor, FeedbackPolicy, MethodId, StepContext, TensorView,
    WireReader, ERROR_FEEDBACK_ARG,
};

/// The ratio when the script gives none (99.9% sparsity, the paper's).
pub const DEFAULT_RATIO: f64 = 0.001;

/// The momentum when the script gives none.
pub const DEFAULT_MOMENTUM: f64 = 0.9;

/// Densities of the four warm-up stages: `0.25^(s+1)`.
pub const WARMUP_DENSITIES: [f64; 4] = [0.25, 0.0625, 0.015625, 0.00390625];

/// Added to the norm in the clipping coefficient, as PyTorch's `clip_grad_norm_`.
pub const CLIP_EPSILON: f64 = 1e-6;

const STATE_MAGIC: [u8; 4] = *b"DGC1";
const STATE_FIXED_BYTES: usize = 4 + 8 + 1 + 8;

/// The `dgc` compressor: its configuration and the accumulators `u` (momentum) and
/// `v` (accumulated update) of one tensor on one worker.
#[derive(Clone, Debug)]
pub struct Dgc {
    ratio: f64,
    momentum: f32,
    clip: f64,
    warmup: f64,
    approx: Approx,
    momentum_buffer: Vec<f32>,
    accumulated: Vec<f32>,
    origin: Option<u64>,
}

fn non_negative(args: &Args, name: &str, default: f64) -> Result<f64, ArgError> {
    let value = args.number(name, Some(default))?;
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(ArgError {
            argument: Some(name.to_owned()),
            message: format!("must be a finite number ≥ 0, got {value}"),
        })
    }
}

impl Dgc {
    /// From `ratio` (in (0, 1], default 0.001), `momentum` (in [0, 1), default 0.9),
    /// `clip` (≥ 0, 0 = off, default 0), `warmup` (steps ≥ 0, default 0) and `approx`
    /// (`sample` or `exact`, default `sample`).
    pub fn new(args: &Args) -> Result<Self, ArgError> {
        args.only(&[
            "ratio",
            "momentum",
            "clip",
            "warmup",
            "approx",
            ERROR_FEEDBACK_ARG,
        ])?;
        let momentum = args.number("momentum", Some(DEFAULT_MOMENTUM))?;
        if !(0.0..1.0).contains(&momentum) {
            return Err(ArgError {
                argument: Some("momentum".into()),
                message: format!("must lie in [0, 1), got {momentum}"),
            });
        }
        Ok(Self {
            ratio: ratio_arg(args, "ratio", Some(DEFAULT_RATIO))?,
            momentum: momentum as f32,
            clip: non_negative(args, "clip", 0.0)?,
            warmup: non_negative(args, "warmup", 0.0)?,
            approx: Approx::from_args(args, Approx::Sample)?,
            momentum_buffer: Vec::new(),
            accumulated: Vec::new(),
            origin: None,
        })
    }

    /// The momentum buffer `u` (empty before the first compress).
    pub fn momentum_buffer(&self) -> &[f32] {
        &self.momentum_buffer
    }

    /// The accumulated update `v` (empty before the first compress).
    pub fn accumulated(&self) -> &[f32] {
        &self.accumulated
    }

    /// The density used `elapsed` steps after the first compress with the ratio
    /// `ratio`: the warm-up stage's density while warming up, never below `ratio`.
    pub fn density(&self, elapsed: u64, ratio: f64) -> f64 {
        if (elapsed as f64) < self.warmup {
            let stage = ((4.0 * elapsed as f64 / self.warmup).floor() as usize).min(3);
            WARMUP_DENSITIES[stage].max(ratio)
        } else {
            ratio
        }
    }

    /// The clipping coefficient for a gradient of norm `norm` among `world` workers:
    /// `min(1, (clip/√world) / (norm + 1e-6))`, 1 when clipping is off.
    pub fn clip_coefficient(&self, norm: f64, world: usize) -> f64 {
        if self.clip <= 0.0 {
            return 1.0;
        }
        let bound = self.clip / (world.max(1) as f64).sqrt();
        let coefficient = bound / (norm + CLIP_EPSILON);
        if coefficient < 1.0 {
            coefficient
        } else {
            1.0
        }
    }
}

/// `dgc`: Deep Gradient Compression.
pub fn build(args: &Args) -> Result<Box<dyn Compressor>, ArgError> {
    Ok(Box::new(Dgc::new(args)?))
}

/// ‖g‖₂: chunk partials (f32 lanes, redone in f64 for a chunk whose squares overflow
/// f32) in parallel, summed in chunk order in f64 — the same for any thread count.
fn l2_norm(g: &[f32]) -> f64 {
    let partial = |chunk: &[f32]| -> f64 {
        let squares = sum_squares(chunk);
        if squares.is_finite() {
            f64::from(squares)
        } else {
            chunk.iter().map(|&x| f64::from(x) * f64::from(x)).sum()
        }
    };
    let partials: Vec<f64> = g.par_chunks(CHUNK).map(partial).collect();
    partials.iter().sum::<f64>().sqrt()
}

/// `u ← m·u + c·g; v ← v + u` over one chunk.
fn accumulate(momentum: f32, coefficient: f32, g: &[f32], u: &mut [f32], v: &mut [f32]) {
    for ((u, v), &g) in u.iter_mut().zip(v.iter_mut()).zip(g) {
        *u = momentum * *u + coefficient * g;
        *v += *u;
    }
}

fn state_error(message: impl Into<String>) -> CompressError {
    CompressError::State(format!("dgc: {}", message.into()))
}

impl Compressor for Dgc {
    fn name(&self) -> &str {
        "dgc"
    }

    fn method_id(&self) -> MethodId {
        MethodId::DGC
    }

    fn aggregation(&self) -> Aggregation {
        Aggregation::Gather
    }

    fn feedback(&self) -> FeedbackPolicy {
        FeedbackPolicy::Internal
    }

    fn compress(
        &mut self,
        input: TensorView<'_>,
        ctx: &StepContext<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), CompressError> {
        let g = input.data;
        let n = g.len();
        check_sparse_len(n)?;
        // Everything that can fail is checked before the accumulators change.
        let ratio = step_ratio(self.ratio, ctx, "ratio")?;
        if !self.accumulated.is_empty() && self.accumulated.len() != n {
            return Err(CompressError::Length {
                what: "dgc gradient (the tensor its accumulators belong to)",
                expected: self.accumulated.len(),
                actual: n,
            });
        }
        write_header(self.method_id(), &input, out)?;
        if self.accumulated.len() != n {
            self.momentum_buffer = vec![0.0; n];
            self.accumulated = vec![0.0; n];
        }
        let origin = *self.origin.get_or_insert(ctx.step);

        let coefficient = if self.clip > 0.0 {
            let norm = l2_norm(g);
            self.clip_coefficient(norm, ctx.world) as f32
        } else {
            1.0
        };
        let momentum = self.momentum;
        if n <= CHUNK {
            accumulate(
                momentum,
                coefficient,
                g,
                &mut self.momentum_buffer,
                &mut self.accumulated,
            );
        } else {
            self.momentum_buffer
                .par_chunks_mut(CHUNK)
                .zip(self.accumulated.par_chunks_mut(CHUNK))
                .zip(g.par_chunks(CHUNK))
                .for_each(|((u, v), g)| accumulate(momentum, coefficient, g, u, v));
        }

        let density = self.density(ctx.step.saturating_sub(origin), ratio);
        let k = element_count(density, n);
        let selection = match self.approx {
            Approx::Exact => top_k(&self.accumulated, k)?,
            Approx::Sample => sampled_top_k(&self.accumulated, k, density, sample_key(ctx))?,
        };
        write_sparse_data(&selection, n, out)?;
        for &index in &selection.indices {
            let index = index as usize;
            if let (Some(u), Some(v)) = (
                self.momentum_buffer.get_mut(index),
                self.accumulated.get_mut(index),
            ) {
                *u = 0.0;
                *v = 0.0;
            }
        }
        Ok(())
    }

    fn decompress_add(
        &mut self,
        payload: &[u8],
        scale: f32,
        out: &mut [f32],
    ) -> Result<(), CompressError> {
        decompress_sparse_add(self.method_id(), payload, scale, out)
    }

    fn save_state(&self, out: &mut Vec<u8>) -> Result<(), CompressError> {
        let n = self.accumulated.len();
        out.reserve(STATE_FIXED_BYTES + 8 * n);
        out.extend_from_slice(&STATE_MAGIC);
        out.extend_from_slice(&(n as u64).to_le_bytes());
        out.push(u8::from(self.origin.is_some()));
        out.extend_from_slice(&self.origin.unwrap_or(0).to_le_bytes());
        for buffer in [&self.momentum_buffer, &self.accumulated] {
            for value in buffer {
                out.extend_from_slice(&value.to_le_bytes());
            }
        }
        Ok(())
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), CompressError> {
        if state.is_empty() {
            // No saved state: start afresh, as a new instance would.
            self.momentum_buffer = Vec::new();
            self.accumulated = Vec::new();
            self.origin = None;
            return Ok(());
        }
        let mut reader = WireReader::new(state);
        if reader.bytes(4)? != STATE_MAGIC {
            return Err(state_error("not a dgc state (bad magic)"));
        }
        let n = usize::try_from(reader.u64()?)
            .map_err(|_| state_error("element count exceeds this platform"))?;
        let origin = match reader.u8()? {
            0 => None,
            1 => Some(reader.u64()?),
            flag => return Err(state_error(format!("bad origin flag {flag}"))),
        };
        if origin.is_none() && reader.u64()? != 0 {
            return Err(state_error("unset origin with a nonzero step"));
        }
        let expected = n
            .checked_mul(8)
            .ok_or_else(|| state_error("element count overflows"))?;
        if reader.remaining() != expected {
            return Err(state_error(format!(
                "{} bytes of accumulators for {n} elements (expected {expected})",
                reader.remaining()
            )));
        }
        let read = |bytes: &[u8]| -> Vec<f32> {
            bytes
                .chunks_exact(4)
                .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                .collect()
        };
        let momentum_buffer = read(reader.array(n, 4)?);
        let accumulated = read(reader.array(n, 4)?);
        reader.finish()?;
        self.momentum_buffer = momentum_buffer;
        self.accumulated = accumulated;
        self.origin = origin;
        Ok(())
    }
}
