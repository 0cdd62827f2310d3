//! The gradient noise scale estimator of McCandlish et al. 2018 ("An Empirical Model
//! of Large-Batch Training", appendix A.1), which needs no extra backward pass: the
//! squared norms of gradients at two batch sizes, which data-parallel training
//! (each worker's gradient, and their average) or gradient accumulation (each
//! micro-batch's gradient, and their sum) computes anyway.
//!
//! For a batch of `B` samples `E|g_B|² = |G|² + tr Σ / B`, with `G` the true gradient
//! and `Σ` the per-sample gradient covariance. From a small batch `b` and a big batch
//! `B` of the same step, the unbiased estimates are
//!
//! ```text
//! |G|²  ≈ (B·|g_B|² − b·|g_b|²) / (B − b)
//! tr Σ  ≈ (|g_b|² − |g_B|²) / (1/b − 1/B)
//! ```
//!
//! Each is noisy, so both are smoothed with an exponential moving average (decay `β`,
//! bias-corrected as Adam's moments are, so the first estimate is not shrunk towards
//! 0) and only then divided: `B_simple = tr Σ / |G|²`, as the paper recommends.
//!
//! AdaScale (Johnson et al. 2020) reads the same two quantities: with `σ² = tr Σ / B₀`
//! the variance of a base-batch gradient and `S = B / B₀`, its gain ratio is
//! `r = (σ² + |G|²) / (σ²/S + |G|²)`, which lies in `[1, S]`: `S` when the gradient is
//! pure noise, 1 when it has none.

use serde::{Deserialize, Serialize};

/// One step's gradient norms at two batch sizes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GnsSample {
    /// Samples in each small batch (a worker's share, or a micro-batch).
    pub small_batch: f64,
    /// The mean over the small batches of their gradient's squared norm.
    pub small_sq: f64,
    /// Samples in the big batch (the whole step).
    pub big_batch: f64,
    /// The squared norm of the big batch's (averaged) gradient.
    pub big_sq: f64,
}

impl GnsSample {
    /// The unbiased estimates of this one step; `None` unless `0 < b < B` and every
    /// input is finite.
    pub fn unbiased(&self) -> Option<GnsEstimate> {
        let (b, big) = (self.small_batch, self.big_batch);
        let finite = [b, big, self.small_sq, self.big_sq]
            .iter()
            .all(|x| x.is_finite());
        if !finite || b <= 0.0 || big <= b {
            return None;
        }
        Some(GnsEstimate {
            grad_sq: (big * self.big_sq - b * self.small_sq) / (big - b),
            trace_sigma: (self.small_sq - self.big_sq) / (1.0 / b - 1.0 / big),
        })
    }
}

/// Estimates of `|G|²` and `tr Σ` (either may come out negative from noise).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GnsEstimate {
    /// `|G|²`, the true gradient's squared norm.
    pub grad_sq: f64,
    /// `tr Σ`, the trace of the per-sample gradient covariance.
    pub trace_sigma: f64,
}

impl GnsEstimate {
    /// `B_simple = tr Σ / |G|²`, with negative estimates taken as 0 (`+∞` when the
    /// gradient estimate is 0 and the noise is not, 0 when both are).
    pub fn noise_scale(&self) -> f64 {
        let (g, s) = (self.grad_sq.max(0.0), self.trace_sigma.max(0.0));
        if s == 0.0 {
            0.0
        } else {
            s / g
        }
    }

    /// AdaScale's gain ratio for a batch `batch` against the base batch `base`
    /// (clamped estimates, so the gain lies in `[1, batch / base]`; 1 when the batch
    /// is not larger than the base or nothing is known).
    pub fn adascale_gain(&self, batch: f64, base: f64) -> f64 {
        let scale = batch / base;
        if scale.is_nan() || scale <= 1.0 || base <= 0.0 {
            return 1.0;
        }
        let variance = self.trace_sigma.max(0.0) / base;
        let mean_sq = self.grad_sq.max(0.0);
        let denominator = variance / scale + mean_sq;
        if denominator.is_nan() || denominator <= 0.0 {
            return 1.0;
        }
        ((variance + mean_sq) / denominator).clamp(1.0, scale)
    }
}

/// The smoothed estimator: an EMA of each estimate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GnsEstimator {
    decay: f64,
    samples: u64,
    grad_sq: f64,
    trace_sigma: f64,
}

impl GnsEstimator {
    /// An estimator whose averages decay by `decay` (`β ∈ [0, 1)`; 0 keeps only the
    /// last step) per observed step.
    pub fn new(decay: f64) -> Self {
        Self {
            decay,
            samples: 0,
            grad_sq: 0.0,
            trace_sigma: 0.0,
        }
    }

    /// Take in one step's norms; false (and nothing changes) when they give no
    /// estimate.
    pub fn observe(&mut self, sample: &GnsSample) -> bool {
        let Some(raw) = sample.unbiased() else {
            return false;
        };
        let keep = self.decay;
        self.grad_sq = keep * self.grad_sq + (1.0 - keep) * raw.grad_sq;
        self.trace_sigma = keep * self.trace_sigma + (1.0 - keep) * raw.trace_sigma;
        self.samples += 1;
        true
    }

    /// The bias-corrected averages, once a step has been observed.
    pub fn estimate(&self) -> Option<GnsEstimate> {
        if self.samples == 0 {
            return None;
        }
        let correction = 1.0 - self.decay.powf(self.samples as f64);
        let correction = if correction > 0.0 { correction } else { 1.0 };
        Some(GnsEstimate {
            grad_sq: self.grad_sq / correction,
            trace_sigma: self.trace_sigma / correction,
        })
    }

    /// Steps observed so far.
    pub fn observed(&self) -> u64 {
        self.samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::SplitMix64;

    #[test]
    fn the_unbiased_estimates_invert_the_expected_norms() {
        // |G|² = 4, tr Σ = 64: E|g_8|² = 4 + 8 = 12, E|g_32|² = 4 + 2 = 6.
        let sample = GnsSample {
            small_batch: 8.0,
            small_sq: 12.0,
            big_batch: 32.0,
            big_sq: 6.0,
        };
        let estimate = sample.unbiased().unwrap();
        assert!((estimate.grad_sq - 4.0).abs() < 1e-12, "{estimate:?}");
        assert!((estimate.trace_sigma - 64.0).abs() < 1e-12, "{estimate:?}");
        assert!((estimate.noise_scale() - 16.0).abs() < 1e-12);
    }

    #[test]
    fn one_batch_size_gives_no_estimate() {
        let same = GnsSample {
            small_batch: 32.0,
            small_sq: 6.0,
            big_batch: 32.0,
            big_sq: 6.0,
        };
        assert_eq!(same.unbiased(), None);
        let nan = GnsSample {
            small_sq: f64::NAN,
            big_batch: 64.0,
            ..same
        };
        assert_eq!(nan.unbiased(), None);
        let mut estimator = GnsEstimator::new(0.9);
        assert!(!estimator.observe(&same));
        assert_eq!(estimator.estimate(), None);
    }

    #[test]
    fn the_ema_is_bias_corrected() {
        // Two steps of raw estimates (|G|², tr Σ) = (4, 64) then (2, 32) with β = 0.5:
        // m1 = 0.5·4 = 2, m2 = 0.5·2 + 0.5·2 = 2; correction 1 − 0.25 = 0.75 → 8/3.
        let mut estimator = GnsEstimator::new(0.5);
        let first = GnsSample {
            small_batch: 8.0,
            small_sq: 12.0,
            big_batch: 32.0,
            big_sq: 6.0,
        };
        assert!(estimator.observe(&first));
        let once = estimator.estimate().unwrap();
        assert!((once.grad_sq - 4.0).abs() < 1e-12 && (once.trace_sigma - 64.0).abs() < 1e-12);
        // (2, 32): E|g_8|² = 2 + 4 = 6, E|g_32|² = 2 + 1 = 3.
        let second = GnsSample {
            small_batch: 8.0,
            small_sq: 6.0,
            big_batch: 32.0,
            big_sq: 3.0,
        };
        assert!(estimator.observe(&second));
        let twice = estimator.estimate().unwrap();
        assert!((twice.grad_sq - 8.0 / 3.0).abs() < 1e-12, "{twice:?}");
        assert!((twice.trace_sigma - (0.25 * 64.0 + 0.5 * 32.0) / 0.75).abs() < 1e-9);
    }

    /// Per-sample gradients `G + ξ` with `ξ ~ N(0, σ² I)` in `d` dimensions, so that
    /// `tr Σ = d σ²` and `B_simple = d σ² / |G|²` exactly; 4 workers of 16 samples.
    #[test]
    fn recovers_a_known_noise_scale_from_worker_and_averaged_gradients() {
        let (d, sigma, workers, per_worker) = (64usize, 0.5f64, 4usize, 16usize);
        let g: Vec<f64> = (0..d).map(|i| 0.05 + 0.001 * i as f64).collect();
        let g_sq: f64 = g.iter().map(|x| x * x).sum();
        let truth = d as f64 * sigma * sigma / g_sq;
        let mut rng = SplitMix64::new(7);
        let mut estimator = GnsEstimator::new(0.99);
        for _ in 0..2000 {
            let mut average = vec![0.0; d];
            let mut small_sq = 0.0;
            for _ in 0..workers {
                let mut local = g.clone();
                for x in &mut local {
                    // The mean of `per_worker` samples' noise has variance σ²/b.
                    *x += sigma / (per_worker as f64).sqrt() * rng.normal();
                }
                small_sq += local.iter().map(|x| x * x).sum::<f64>() / workers as f64;
                for (a, x) in average.iter_mut().zip(&local) {
                    *a += x / workers as f64;
                }
            }
            let big_sq = average.iter().map(|x| x * x).sum();
            estimator.observe(&GnsSample {
                small_batch: per_worker as f64,
                small_sq,
                big_batch: (per_worker * workers) as f64,
                big_sq,
            });
        }
        let estimate = estimator.estimate().unwrap();
        let relative = (estimate.noise_scale() - truth).abs() / truth;
        assert!(
            relative < 0.10,
            "B_simple {} vs {truth} ({:.1}% off)",
            estimate.noise_scale(),
            100.0 * relative
        );
        assert!((estimate.trace_sigma - d as f64 * sigma * sigma).abs() < 0.1 * 16.0);
    }

    #[test]
    fn adascale_gain_limits() {
        // Pure noise: r = S; no noise: r = 1; in between it follows the formula.
        let noise_only = GnsEstimate {
            grad_sq: 0.0,
            trace_sigma: 10.0,
        };
        assert_eq!(noise_only.adascale_gain(128.0, 32.0), 4.0);
        let noise_free = GnsEstimate {
            grad_sq: 3.0,
            trace_sigma: 0.0,
        };
        assert_eq!(noise_free.adascale_gain(128.0, 32.0), 1.0);
        // σ² = 64/32 = 2, μ² = 2, S = 4: (2 + 2) / (0.5 + 2) = 1.6.
        let both = GnsEstimate {
            grad_sq: 2.0,
            trace_sigma: 64.0,
        };
        assert!((both.adascale_gain(128.0, 32.0) - 1.6).abs() < 1e-12);
        // A negative |G|² estimate counts as 0: the gain is capped at S.
        let negative = GnsEstimate {
            grad_sq: -1.0,
            trace_sigma: 64.0,
        };
        assert_eq!(negative.adascale_gain(128.0, 32.0), 4.0);
        assert_eq!(both.adascale_gain(32.0, 32.0), 1.0);
    }
}
