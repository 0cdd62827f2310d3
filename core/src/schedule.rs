//! Schedules: pure functions of training progress, with the closed forms of the
//! reference libraries (PyTorch `torch.optim.lr_scheduler`, optax, Hugging Face
//! `transformers.optimization`). Every length here is already converted to steps
//! (f64); step counting starts at 0 and the value used at step `t` is `value(t, len)`.
//!
//! `len` is the *contextual length*: the `over:` of the schedule, the remainder of the
//! horizon after a `then`, or the current period inside `restarts`. Schedules that do
//! not need a length ignore it; it is `f64::INFINITY` when nothing defines it.

use serde::{Deserialize, Serialize};

/// How a one-cycle phase interpolates between its end points (PyTorch `anneal_strategy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Anneal {
    /// `end + (start - end) / 2 * (1 + cos(pi * pct))`.
    Cos,
    /// `start + (end - start) * pct`.
    Linear,
}

/// Amplitude policy of a cyclic schedule (PyTorch `CyclicLR` modes).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum CyclicMode {
    /// Constant amplitude.
    Triangular,
    /// Amplitude halves every cycle.
    Triangular2,
    /// Amplitude scaled by `gamma^t` (t = step).
    ExpRange {
        /// Per-step amplitude factor.
        gamma: f64,
    },
}

/// Shape of the warmup phase of warmup-stable-decay (Hugging Face `warmup_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WarmupShape {
    /// `p`
    Linear,
    /// `0.5 * (1 - cos(pi * p))`
    Cosine,
    /// `1 - sqrt(1 - p)`
    OneMinusSqrt,
}

/// Shape of the decay phase of warmup-stable-decay (Hugging Face `decay_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DecayShape {
    /// `1 - p`
    Linear,
    /// `0.5 * (1 + cos(pi * p))`
    Cosine,
    /// `1 - sqrt(p)`
    OneMinusSqrt,
}

/// One schedule with its parameters. Lengths are in steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Schedule {
    /// `value` at every step.
    Constant {
        /// The value.
        value: f64,
    },
    /// StepLR: `init * factor^floor(t / every)`.
    Step {
        /// Value at step 0.
        init: f64,
        /// Steps between decays.
        every: f64,
        /// Multiplicative factor per decay (PyTorch `gamma`).
        factor: f64,
    },
    /// MultiStepLR: `init * factor^(number of milestones <= t)`.
    MultiStep {
        /// Value at step 0.
        init: f64,
        /// Sorted, strictly increasing milestones in steps.
        milestones: Vec<f64>,
        /// Multiplicative factor per milestone.
        factor: f64,
    },
    /// ExponentialLR / optax `exponential_decay`: `init * factor^(t / every)`, with
    /// `floor(t / every)` when `staircase`.
    Exponential {
        /// Value at step 0.
        init: f64,
        /// Decay factor per `every` steps.
        factor: f64,
        /// Transition length in steps.
        every: f64,
        /// Decay in discrete jumps.
        staircase: bool,
    },
    /// Inverse time decay (1/t): `init / (1 + rate * t / every)`, with
    /// `floor(t / every)` when `staircase`.
    InverseTime {
        /// Value at step 0.
        init: f64,
        /// Decay rate.
        rate: f64,
        /// Transition length in steps.
        every: f64,
        /// Decay in discrete jumps.
        staircase: bool,
    },
    /// LinearLR / optax `linear_schedule`: `from + (to - from) * min(t, len) / len`.
    Linear {
        /// Value at step 0.
        from: f64,
        /// Value at `len` and after.
        to: f64,
    },
    /// CosineAnnealingLR / optax `cosine_decay_schedule`:
    /// `to + (from - to) * (1 + cos(pi * min(t, len) / len)) / 2`; holds `to` after `len`.
    Cosine {
        /// Value at step 0.
        from: f64,
        /// Value at `len` and after.
        to: f64,
    },
    /// optax `polynomial_schedule` (PolynomialLR when `to` = 0):
    /// `(from - to) * (1 - min(t, len) / len)^power + to`.
    Polynomial {
        /// Value at step 0.
        from: f64,
        /// Value at `len` and after.
        to: f64,
        /// Exponent.
        power: f64,
    },
    /// OneCycleLR learning rate over `len` total steps.
    OneCycle {
        /// `max_lr`.
        peak: f64,
        /// Fraction of the cycle spent increasing (`pct_start`).
        pct_start: f64,
        /// `initial_lr = peak / div_factor`.
        div_factor: f64,
        /// `min_lr = initial_lr / final_div_factor`.
        final_div_factor: f64,
        /// Interpolation within a phase.
        anneal: Anneal,
        /// PyTorch `three_phase`.
        three_phase: bool,
    },
    /// OneCycleLR's inverse momentum cycle over `len` total steps
    /// (max → base while lr rises, base → max while it falls).
    OneCycleMomentum {
        /// `base_momentum`.
        base: f64,
        /// `max_momentum`.
        max: f64,
        /// Fraction of the cycle spent increasing the lr.
        pct_start: f64,
        /// Interpolation within a phase.
        anneal: Anneal,
        /// PyTorch `three_phase`.
        three_phase: bool,
    },
    /// CyclicLR between `low` and `high`, rising over `up` steps and falling over `down`.
    Cyclic {
        /// `base_lr`.
        low: f64,
        /// `max_lr`.
        high: f64,
        /// `step_size_up`.
        up: f64,
        /// `step_size_down`.
        down: f64,
        /// Amplitude policy.
        mode: CyclicMode,
    },
    /// Hugging Face inverse square root: linear warmup from 0 to `peak` over `warmup`
    /// steps, then `peak / sqrt((t + timescale - warmup) / timescale)`.
    InverseSqrt {
        /// Value reached at the end of warmup.
        peak: f64,
        /// Warmup steps.
        warmup: f64,
        /// Decay timescale (Hugging Face default: `warmup`).
        timescale: f64,
    },
    /// Hugging Face warmup-stable-decay. `stable = None` means: the rest of `len`
    /// after warmup and decay.
    WarmupStableDecay {
        /// Value during the stable phase.
        peak: f64,
        /// Warmup steps.
        warmup: f64,
        /// Stable steps, or `None` for `len - warmup - decay`.
        stable: Option<f64>,
        /// Decay steps.
        decay: f64,
        /// Floor as a fraction of `peak` (`min_lr_ratio`).
        min_ratio: f64,
        /// Warmup shape.
        warmup_shape: WarmupShape,
        /// Decay shape.
        decay_shape: DecayShape,
    },
    /// Piecewise constant (optax `piecewise_constant_schedule` in absolute values):
    /// `values[i]` from `boundaries[i-1]` (inclusive) on, `values[0]` before the first.
    PiecewiseConstant {
        /// Strictly increasing boundaries in steps; one fewer than `values`.
        boundaries: Vec<f64>,
        /// Values of each piece.
        values: Vec<f64>,
    },
    /// Piecewise linear interpolation through `(points[i], values[i])`, constant
    /// outside (optax `piecewise_interpolate_schedule` in absolute values).
    PiecewiseLinear {
        /// Strictly increasing knots in steps.
        points: Vec<f64>,
        /// Values at the knots.
        values: Vec<f64>,
    },
}

impl Schedule {
    /// Whether the value depends on the contextual length `len` (so a finite length
    /// must be known where the schedule is used).
    pub fn needs_length(&self) -> bool {
        matches!(
            self,
            Schedule::Linear { .. }
                | Schedule::Cosine { .. }
                | Schedule::Polynomial { .. }
                | Schedule::OneCycle { .. }
                | Schedule::OneCycleMomentum { .. }
                | Schedule::WarmupStableDecay { stable: None, .. }
        )
    }

    /// The schedule's own natural length in steps, if it defines one (where a
    /// following `then` may take over), independent of context.
    pub fn natural_length(&self) -> Option<f64> {
        match self {
            Schedule::WarmupStableDecay {
                warmup,
                stable: Some(stable),
                decay,
                ..
            } => Some(warmup + stable + decay),
            _ => None,
        }
    }

    /// The value at step `t` (t >= 0) with contextual length `len`.
    pub fn value(&self, t: f64, len: f64) -> f64 {
        crate::schedule::formulas::value(self, t, len)
    }
}

mod formulas {
    //! The closed forms, one function per schedule.
    use super::*;

    pub(super) fn value(_s: &Schedule, _t: f64, _len: f64) -> f64 {
        f64::NAN
    }
}
