//! Adaptive batch size: what a script's `batch …` statement compiles to
//! ([`BatchSpec`]), the built-in controllers ([`controllers`]), the gradient noise
//! scale estimator ([`gns`]) and the runtime piece a [`Stepper`](crate::Stepper) owns
//! ([`control::BatchControl`]): the next batch, the learning-rate factor and the
//! progress clock the schedules run on.
//!
//! # Progress with an adaptive batch
//!
//! With a `batch` controller the schedules no longer run on the step count: they run
//! on **reference steps**, `samples seen / base batch`, where the base batch `B₀` is
//! the script's `batch = N` (the batch its learning rate was tuned for). A length in
//! `epochs` or `samples` therefore stays right whatever the batch does (an epoch is
//! the dataset's sample count), and a length in `steps` means that many steps at the
//! base batch. With a fixed batch equal to `B₀` reference steps are the steps.
//! AdaScale advances the clock by its gain instead (scale-invariant iterations).
//!
//! A controller's own check interval (`every: 100 steps`) counts optimizer steps when
//! written in steps and samples otherwise ([`Interval`]).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use regimen_plugin::{Args, ControllerError};

pub mod control;
pub mod controllers;
pub mod gns;

pub use control::{BatchControl, BatchReport, SmallBatchNorms};
pub use gns::{GnsEstimate, GnsEstimator, GnsSample};

/// How often a controller checks: every so many optimizer steps, or every so many
/// samples (epochs arrive as samples: the dataset's size per epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interval {
    /// Optimizer steps.
    Steps(u64),
    /// Samples.
    Samples(u64),
}

impl Interval {
    /// The number of interval boundaries crossed by a step that moved the counters
    /// from `(steps, samples)` before it to `(steps + 1, samples + batch)` after it:
    /// a check runs after a step that crosses (or lands on) a boundary.
    pub fn crossed(self, steps_before: u64, samples_before: u64, batch: u64) -> bool {
        let (before, after, every) = match self {
            Interval::Steps(n) => (steps_before, steps_before + 1, n),
            Interval::Samples(n) => (samples_before, samples_before + batch, n),
        };
        every > 0 && after / every > before / every
    }
}

/// How the learning rate follows the batch (the `{ lr scale … }` block).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrScale {
    /// The schedule's lr as it is.
    #[default]
    None,
    /// × `B / B₀` (Goyal et al. 2017, the linear scaling rule).
    Linear,
    /// × `√(B / B₀)` (the square-root rule, Krizhevsky 2014; Hoffer et al. 2017).
    Sqrt,
}

impl LrScale {
    /// The factor for batch `batch` against base batch `base`.
    pub fn factor(self, batch: u64, base: u64) -> f64 {
        let ratio = batch as f64 / base.max(1) as f64;
        match self {
            LrScale::None => 1.0,
            LrScale::Linear => ratio,
            LrScale::Sqrt => ratio.sqrt(),
        }
    }

    /// The name used in scripts.
    pub fn name(self) -> &'static str {
        match self {
            LrScale::None => "none",
            LrScale::Linear => "linear",
            LrScale::Sqrt => "sqrt",
        }
    }
}

/// Which controller decides the batch, with its own parameters. Batch sizes are
/// samples of the global batch (all workers together).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControllerSpec {
    /// `fixed(n)`: always `n`.
    Fixed {
        /// The batch.
        batch: u64,
    },
    /// `ramp(from -> to, over: N samples [, stages: K])`: GPT-3's linear batch ramp
    /// (Brown et al. 2020), or with `stages` a step ramp ("don't decay the learning
    /// rate, increase the batch size", Smith et al. 2018).
    ///
    /// With `s` the samples seen before a step: linear, `from + (to − from) ·
    /// min(s / over, 1)`; staged, `from + (to − from) · min(⌊K s / over⌋, K) / K`
    /// (the batch jumps at `over · i / K` and reaches `to` at `over`). The result is
    /// then bounded and rounded like every controller's ([`BatchBounds`]).
    Ramp {
        /// The batch at the start.
        from: u64,
        /// The batch from `over` on.
        to: u64,
        /// The ramp's length in samples.
        over: u64,
        /// `None`: linear; `Some(K)`: `K` equal jumps.
        stages: Option<u64>,
    },
    /// `loss_rule(gamma:, every:, factor:)`: the loss-based rule. At each check, with
    /// `m` the mean training loss of the steps since the previous check (weighted by
    /// their batch sizes, non-finite losses left out) and `m_prev` that of the window
    /// before: the first check only records `m`; later checks multiply the batch by
    /// `factor` when `m ≤ gamma · m_prev` (up to the bound), else hold; then
    /// `m_prev = m`. Training goes on with the next data: nothing is retrained.
    LossRule {
        /// The batch before the first increase.
        from: u64,
        /// The required ratio of the window's mean loss to the previous window's.
        gamma: f64,
        /// Checks at these boundaries.
        every: Interval,
        /// Batch multiplier at an increase (2: doubling).
        factor: f64,
    },
    /// `gns(every:, ema:, factor:)`: the batch follows the gradient noise scale
    /// `B_simple = tr Σ / |G|²` (McCandlish et al. 2018) estimated from two batch sizes
    /// (see [`gns`]): at each check with an estimate, `factor · B_simple`, bounded.
    Gns {
        /// The batch until the first estimate.
        from: u64,
        /// Checks at these boundaries.
        every: Interval,
        /// The estimator's EMA decay (`β`, in `[0, 1)`).
        ema: f64,
        /// The target batch as a multiple of `B_simple`.
        factor: f64,
    },
    /// `adascale(scale: S)`: AdaScale SGD (Johnson et al. 2020). The batch is `S · B₀`
    /// throughout; each step's lr is `r · lr(τ)` with the gain ratio
    /// `r = (σ² + μ²) / (σ²/S + μ²)` (σ² the variance of a base-batch gradient, μ² =
    /// |G|², both from the noise estimator) and the clock advances by `r`.
    AdaScale {
        /// `S`, the batch as a multiple of the base batch.
        scale: f64,
        /// The estimator's EMA decay.
        ema: f64,
    },
    /// A controller exported by one of the script's plugins. Lengths among its
    /// arguments arrive in samples.
    Plugin {
        /// The export's name.
        name: String,
        /// Its arguments.
        args: Args,
    },
}

impl ControllerSpec {
    /// The controller's script name.
    pub fn name(&self) -> &str {
        match self {
            ControllerSpec::Fixed { .. } => "fixed",
            ControllerSpec::Ramp { .. } => "ramp",
            ControllerSpec::LossRule { .. } => "loss_rule",
            ControllerSpec::Gns { .. } => "gns",
            ControllerSpec::AdaScale { .. } => "adascale",
            ControllerSpec::Plugin { name, .. } => name,
        }
    }

    /// Whether the controller reads the noise estimator (and so needs two batch
    /// sizes: several workers, or micro-batches).
    pub fn needs_noise_estimate(&self) -> bool {
        matches!(
            self,
            ControllerSpec::Gns { .. } | ControllerSpec::AdaScale { .. }
        )
    }
}

/// Bounds every controller's answer passes through: rounded to the nearest multiple
/// of `multiple_of` (ties up), then clamped to `[min, max]` (themselves rounded
/// inwards to multiples).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchBounds {
    /// Smallest batch.
    pub min: u64,
    /// Largest batch (`None`: unbounded).
    pub max: Option<u64>,
    /// Every batch is a multiple of this (e.g. the number of workers).
    pub multiple_of: u64,
}

impl Default for BatchBounds {
    fn default() -> Self {
        Self {
            min: 1,
            max: None,
            multiple_of: 1,
        }
    }
}

impl BatchBounds {
    /// The smallest and largest allowed batch, or why there is none.
    pub fn range(&self) -> Result<(u64, u64), BatchError> {
        let m = self.multiple_of.max(1);
        let lo = self.min.max(1).div_ceil(m) * m;
        let hi = match self.max {
            Some(max) => max / m * m,
            None => u64::MAX / m * m,
        };
        if hi < lo || hi == 0 {
            return Err(BatchError::EmptyBounds {
                min: self.min,
                max: self.max.unwrap_or(u64::MAX),
                multiple_of: m,
            });
        }
        Ok((lo, hi))
    }

    /// `batch` rounded and clamped (NaN or ≤ 0 gives the minimum, +∞ the maximum).
    pub fn apply(&self, batch: f64) -> Result<u64, BatchError> {
        let (lo, hi) = self.range()?;
        let m = self.multiple_of.max(1) as f64;
        let rounded = (batch / m + 0.5).floor() * m;
        Ok(if rounded.is_nan() || rounded <= lo as f64 {
            lo
        } else if rounded >= hi as f64 {
            hi
        } else {
            rounded as u64
        })
    }
}

/// A compiled `batch …` statement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchSpec {
    /// The controller.
    pub controller: ControllerSpec,
    /// `min:`, `max:`, `multiple_of:`.
    pub bounds: BatchBounds,
    /// `micro_batch: N`: the training loop forms each worker's share of a batch from
    /// micro-batches of at most `N` samples (gradient accumulation), which also gives
    /// the noise estimator its small batch.
    pub micro_batch: Option<u64>,
    /// The `{ lr scale … }` block (AdaScale scales by its gain instead).
    pub lr_scale: LrScale,
    /// `B₀`, the base batch: the script's `batch = N`.
    pub base_batch: u64,
}

/// Why batch control cannot start or go on.
#[derive(Debug, Error)]
pub enum BatchError {
    /// `min`/`max`/`multiple_of` leave no batch.
    #[error("no batch size lies in [{min}, {max}] and is a multiple of {multiple_of}")]
    EmptyBounds {
        /// `min:`.
        min: u64,
        /// `max:`.
        max: u64,
        /// `multiple_of:`.
        multiple_of: u64,
    },
    /// A controller's parameters are out of range.
    #[error("`{controller}`: {message}")]
    Invalid {
        /// The controller's name.
        controller: String,
        /// What is wrong.
        message: String,
    },
    /// The script names a controller no plugin of it exports.
    #[error("no plugin of the script exports a batch controller `{0}`")]
    UnknownController(String),
    /// A plugin controller failed to load or refused its arguments.
    #[error("batch controller `{name}`: {message}")]
    Plugin {
        /// The controller's name.
        name: String,
        /// The loader's message.
        message: String,
    },
    /// The controller failed while running.
    #[error("batch controller `{name}` at step {step}: {error}")]
    Controller {
        /// The controller's name.
        name: String,
        /// The step whose metrics it observed.
        step: u64,
        /// Its error.
        error: ControllerError,
    },
    /// A checkpoint's batch-control state does not fit.
    #[error("batch control state: {0}")]
    State(String),
}
