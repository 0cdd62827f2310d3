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
    //! The closed forms, one function per schedule. Every function is a handful of
    //! float operations: no allocation, and the only scans are binary searches
    //! (`partition_point`) over the milestone/knot vectors.
    use super::*;
    use std::f64::consts::PI;

    pub(super) fn value(s: &Schedule, t: f64, len: f64) -> f64 {
        match s {
            Schedule::Constant { value } => *value,
            Schedule::Step {
                init,
                every,
                factor,
            } => step(*init, *every, *factor, t),
            Schedule::MultiStep {
                init,
                milestones,
                factor,
            } => multi_step(*init, milestones, *factor, t),
            Schedule::Exponential {
                init,
                factor,
                every,
                staircase,
            } => exponential(*init, *factor, *every, *staircase, t),
            Schedule::InverseTime {
                init,
                rate,
                every,
                staircase,
            } => inverse_time(*init, *rate, *every, *staircase, t),
            Schedule::Linear { from, to } => linear(*from, *to, t, len),
            Schedule::Cosine { from, to } => cosine(*from, *to, t, len),
            Schedule::Polynomial { from, to, power } => polynomial(*from, *to, *power, t, len),
            Schedule::OneCycle {
                peak,
                pct_start,
                div_factor,
                final_div_factor,
                anneal,
                three_phase,
            } => {
                let initial = peak / div_factor;
                let min = initial / final_div_factor;
                // Values at the phase ends: two-phase initial → peak → min,
                // three-phase initial → peak → initial → min.
                let ends = if *three_phase {
                    [initial, *peak, initial, min]
                } else {
                    [initial, *peak, min, min]
                };
                one_cycle(ends, *pct_start, *anneal, *three_phase, t, len)
            }
            Schedule::OneCycleMomentum {
                base,
                max,
                pct_start,
                anneal,
                three_phase,
            } => {
                // Momentum mirrors the lr: two-phase max → base → max,
                // three-phase max → base → max → max.
                let ends = [*max, *base, *max, *max];
                one_cycle(ends, *pct_start, *anneal, *three_phase, t, len)
            }
            Schedule::Cyclic {
                low,
                high,
                up,
                down,
                mode,
            } => cyclic(*low, *high, *up, *down, *mode, t),
            Schedule::InverseSqrt {
                peak,
                warmup,
                timescale,
            } => inverse_sqrt(*peak, *warmup, *timescale, t),
            Schedule::WarmupStableDecay {
                peak,
                warmup,
                stable,
                decay,
                min_ratio,
                warmup_shape,
                decay_shape,
            } => {
                let stable = match stable {
                    Some(stable) => *stable,
                    None => (len - warmup - decay).max(0.0),
                };
                peak * wsd_factor(
                    *warmup,
                    stable,
                    *decay,
                    *min_ratio,
                    *warmup_shape,
                    *decay_shape,
                    t,
                )
            }
            Schedule::PiecewiseConstant { boundaries, values } => {
                piecewise_constant(boundaries, values, t)
            }
            Schedule::PiecewiseLinear { points, values } => piecewise_linear(points, values, t),
        }
    }

    /// Fraction of `len` elapsed at `t`, clamped to `[0, 1]`: `min(t, len) / len`.
    /// At and after the end it is exactly 1 (also for `len <= 0`, so an empty
    /// length means "already at the end" rather than `0 / 0`); an infinite length
    /// gives 0.
    fn progress(t: f64, len: f64) -> f64 {
        if t >= len {
            1.0
        } else if t <= 0.0 {
            0.0
        } else {
            t / len
        }
    }

    /// PyTorch `StepLR` closed form: `init * factor^floor(t / every)`.
    fn step(init: f64, every: f64, factor: f64, t: f64) -> f64 {
        // `powf` (C `pow`) rather than `powi`, like Python's `gamma ** n`.
        init * factor.powf((t / every).floor())
    }

    /// PyTorch `MultiStepLR` closed form: `init * factor^bisect_right(milestones, t)`.
    fn multi_step(init: f64, milestones: &[f64], factor: f64, t: f64) -> f64 {
        let passed = milestones.partition_point(|m| *m <= t);
        init * factor.powf(passed as f64)
    }

    /// optax `exponential_decay` (no `transition_begin`, no `end_value`).
    fn exponential(init: f64, factor: f64, every: f64, staircase: bool, t: f64) -> f64 {
        let mut p = t / every;
        if staircase {
            p = p.floor();
        }
        init * factor.powf(p)
    }

    /// Inverse time decay (TensorFlow `InverseTimeDecay`).
    fn inverse_time(init: f64, rate: f64, every: f64, staircase: bool, t: f64) -> f64 {
        let mut p = t / every;
        if staircase {
            p = p.floor();
        }
        init / (1.0 + rate * p)
    }

    /// `from + (to - from) * min(t, len) / len`.
    fn linear(from: f64, to: f64, t: f64, len: f64) -> f64 {
        let p = progress(t, len);
        if p >= 1.0 {
            // Exactly `to` at and after the end (`from + (to - from)` may be an ulp off).
            return to;
        }
        from + (to - from) * p
    }

    /// `to + (from - to) * (1 + cos(pi * min(t, len) / len)) / 2`.
    fn cosine(from: f64, to: f64, t: f64, len: f64) -> f64 {
        to + (from - to) * (1.0 + (PI * progress(t, len)).cos()) / 2.0
    }

    /// optax `polynomial_schedule`: `(from - to) * (1 - min(t, len) / len)^power + to`.
    fn polynomial(from: f64, to: f64, power: f64, t: f64, len: f64) -> f64 {
        (from - to) * (1.0 - progress(t, len)).powf(power) + to
    }

    /// PyTorch `_annealing_cos` / `_annealing_linear`.
    fn anneal(kind: Anneal, start: f64, end: f64, pct: f64) -> f64 {
        match kind {
            Anneal::Cos => end + (start - end) / 2.0 * ((PI * pct).cos() + 1.0),
            Anneal::Linear => (end - start) * pct + start,
        }
    }

    /// PyTorch `OneCycleLR.get_lr` with `total_steps = len`. `ends` holds the value
    /// at the start of phase 1 and at the end of phases 1, 2 and 3 (the last entry is
    /// unused for two phases).
    ///
    /// Phase ends (inclusive, in steps): two-phase `pct_start * total - 1` and
    /// `total - 1`; three-phase `pct_start * total - 1`, `2 * pct_start * total - 2`
    /// and `total - 1`. Within a phase `pct = (t - start) / (end - start)`, where
    /// `start` is the previous phase's end (0 for the first phase).
    ///
    /// Deviations from PyTorch, both for steps PyTorch does not define:
    /// - past `total - 1` PyTorch extrapolates the last phase (pct > 1) at
    ///   `t = total` and raises an error after it; here `pct` is clamped to 1 in the
    ///   last phase, so the schedule holds its final value (`min_lr`, or
    ///   `max_momentum`) forever after;
    /// - a phase of zero or negative span (e.g. `pct_start * total <= 1`) divides by
    ///   zero in PyTorch; here it counts as complete (`pct = 1`).
    fn one_cycle(
        ends: [f64; 4],
        pct_start: f64,
        kind: Anneal,
        three_phase: bool,
        t: f64,
        total: f64,
    ) -> f64 {
        let first_end = pct_start * total - 1.0;
        let (phase_ends, phases) = if three_phase {
            ([first_end, 2.0 * pct_start * total - 2.0, total - 1.0], 3)
        } else {
            ([first_end, total - 1.0, total - 1.0], 2)
        };
        let mut start_step = 0.0;
        for (i, end_step) in phase_ends.iter().copied().enumerate().take(phases) {
            let last = i + 1 == phases;
            if t <= end_step || last {
                let span = end_step - start_step;
                let mut pct = if span > 0.0 {
                    (t - start_step) / span
                } else {
                    1.0
                };
                if last {
                    pct = pct.min(1.0);
                }
                return anneal(kind, ends[i], ends[i + 1], pct);
            }
            start_step = end_step;
        }
        // Unreachable: the last phase always returns.
        ends[phases]
    }

    /// PyTorch `CyclicLR` (`scale_mode` "cycle" for triangular/triangular2,
    /// "iterations" for exp_range).
    fn cyclic(low: f64, high: f64, up: f64, down: f64, mode: CyclicMode, t: f64) -> f64 {
        let total = up + down;
        let step_ratio = up / total;
        let cycle = (1.0 + t / total).floor();
        let x = 1.0 + t / total - cycle;
        let scale = if x <= step_ratio {
            x / step_ratio
        } else {
            (x - 1.0) / (step_ratio - 1.0)
        };
        let height = (high - low) * scale;
        match mode {
            CyclicMode::Triangular => low + height,
            CyclicMode::Triangular2 => low + height * (1.0 / 2f64.powf(cycle - 1.0)),
            CyclicMode::ExpRange { gamma } => low + height * gamma.powf(t),
        }
    }

    /// Hugging Face `get_inverse_sqrt_schedule` times `peak`.
    fn inverse_sqrt(peak: f64, warmup: f64, timescale: f64, t: f64) -> f64 {
        if t < warmup {
            return peak * t / warmup.max(1.0);
        }
        let shift = timescale - warmup;
        peak / ((t + shift) / timescale).sqrt()
    }

    /// Hugging Face `_get_wsd_scheduler_lambda` (`num_cycles = 0.5`): the factor
    /// applied to `peak`.
    fn wsd_factor(
        warmup: f64,
        stable: f64,
        decay: f64,
        min_ratio: f64,
        warmup_shape: WarmupShape,
        decay_shape: DecayShape,
        t: f64,
    ) -> f64 {
        if t < warmup {
            let p = t / warmup.max(1.0);
            let factor = match warmup_shape {
                WarmupShape::Linear => p,
                WarmupShape::Cosine => 0.5 * (1.0 - (PI * p).cos()),
                WarmupShape::OneMinusSqrt => 1.0 - (1.0 - p).sqrt(),
            };
            return (factor * (1.0 - min_ratio) + min_ratio).max(0.0);
        }
        if t < warmup + stable {
            return 1.0;
        }
        if t < warmup + stable + decay {
            let p = (t - warmup - stable) / decay.max(1.0);
            let factor = match decay_shape {
                DecayShape::Linear => 1.0 - p,
                DecayShape::Cosine => 0.5 * (1.0 + (PI * p).cos()),
                DecayShape::OneMinusSqrt => 1.0 - p.sqrt(),
            };
            return (factor * (1.0 - min_ratio) + min_ratio).max(0.0);
        }
        min_ratio
    }

    /// `values[i]` where `i` is the number of boundaries `<= t`.
    fn piecewise_constant(boundaries: &[f64], values: &[f64], t: f64) -> f64 {
        let i = boundaries.partition_point(|b| *b <= t);
        // A malformed schedule (too few values) yields NaN rather than a panic.
        values.get(i).copied().unwrap_or(f64::NAN)
    }

    /// Linear interpolation through the knots, constant outside them.
    fn piecewise_linear(points: &[f64], values: &[f64], t: f64) -> f64 {
        let i = points.partition_point(|p| *p <= t);
        if i == 0 {
            return values.first().copied().unwrap_or(f64::NAN);
        }
        if i >= points.len() {
            return values.get(points.len() - 1).copied().unwrap_or(f64::NAN);
        }
        match (
            points.get(i - 1),
            points.get(i),
            values.get(i - 1),
            values.get(i),
        ) {
            (Some(p0), Some(p1), Some(v0), Some(v1)) => {
                let pct = (t - p0) / (p1 - p0);
                (v1 - v0) * pct + v0
            }
            _ => f64::NAN,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn progress_is_clamped() {
            assert_eq!(progress(0.0, 10.0), 0.0);
            assert_eq!(progress(5.0, 10.0), 0.5);
            assert_eq!(progress(10.0, 10.0), 1.0);
            assert_eq!(progress(11.0, 10.0), 1.0);
            // An empty length is already over; an infinite one never starts.
            assert_eq!(progress(0.0, 0.0), 1.0);
            assert_eq!(progress(1e12, f64::INFINITY), 0.0);
        }

        #[test]
        fn onecycle_empty_phase_counts_as_done() {
            // total 10, pct_start 0.1: phase 1 ends at 0.1 * 10 - 1 = 0, a zero
            // span (PyTorch divides by zero). Step 0 is the end of phase 1 (peak).
            let ends = [0.004, 0.1, 4e-7, 4e-7];
            assert_eq!(one_cycle(ends, 0.1, Anneal::Linear, false, 0.0, 10.0), 0.1);
            // Phase 2 from 0 to 9: pct 4.5/9 = 0.5
            let mid = one_cycle(ends, 0.1, Anneal::Linear, false, 4.5, 10.0);
            assert!((mid - (4e-7 - 0.1) * 0.5 - 0.1).abs() < 1e-15);
        }

        #[test]
        fn no_panic_on_degenerate_parameters() {
            let odd = [0.0, -1.0, f64::NAN, f64::INFINITY, -f64::INFINITY, 1e308];
            for &a in &odd {
                let schedules = [
                    Schedule::Constant { value: a },
                    Schedule::Step {
                        init: 1.0,
                        every: a,
                        factor: a,
                    },
                    Schedule::MultiStep {
                        init: a,
                        milestones: vec![a, 1.0],
                        factor: 0.5,
                    },
                    Schedule::Exponential {
                        init: 1.0,
                        factor: a,
                        every: a,
                        staircase: true,
                    },
                    Schedule::InverseTime {
                        init: 1.0,
                        rate: a,
                        every: a,
                        staircase: false,
                    },
                    Schedule::Linear { from: a, to: 1.0 },
                    Schedule::Cosine { from: 1.0, to: a },
                    Schedule::Polynomial {
                        from: 1.0,
                        to: 0.0,
                        power: a,
                    },
                    Schedule::OneCycle {
                        peak: 1.0,
                        pct_start: a,
                        div_factor: a,
                        final_div_factor: a,
                        anneal: Anneal::Cos,
                        three_phase: true,
                    },
                    Schedule::OneCycleMomentum {
                        base: 0.85,
                        max: 0.95,
                        pct_start: a,
                        anneal: Anneal::Linear,
                        three_phase: false,
                    },
                    Schedule::Cyclic {
                        low: 0.0,
                        high: 1.0,
                        up: a,
                        down: a,
                        mode: CyclicMode::ExpRange { gamma: a },
                    },
                    Schedule::InverseSqrt {
                        peak: 1.0,
                        warmup: a,
                        timescale: a,
                    },
                    Schedule::WarmupStableDecay {
                        peak: 1.0,
                        warmup: a,
                        stable: None,
                        decay: a,
                        min_ratio: a,
                        warmup_shape: WarmupShape::OneMinusSqrt,
                        decay_shape: DecayShape::OneMinusSqrt,
                    },
                    Schedule::PiecewiseConstant {
                        boundaries: vec![a, a],
                        values: vec![],
                    },
                    Schedule::PiecewiseLinear {
                        points: vec![a, 0.0, a],
                        values: vec![1.0],
                    },
                ];
                for s in &schedules {
                    for &t in &[0.0, 1.0, 1e9, f64::NAN] {
                        for &len in &[0.0, 10.0, f64::INFINITY, f64::NAN] {
                            let _ = value(s, t, len);
                        }
                    }
                }
            }
        }
    }
}
