//! The built-in batch-size controllers (`fixed`, `ramp`, `loss_rule`, `gns`,
//! `adascale`), each implementing the SDK's [`BatchController`] exactly as a plugin's
//! would: the runtime ([`super::control::BatchControl`]) drives a built-in and a
//! plugin controller the same way, so both are held to the same interface and the
//! same conformance suite.
//!
//! [`initial_batch`] gives the batch of the first step (no controller has observed
//! anything yet); [`build`] checks a controller's parameters and makes it. Every
//! answer passes through the script's [`BatchBounds`]. Each controller keeps its
//! current batch (the nominal one: the runtime may run less at an epoch's end) in its
//! own state, which [`BatchController::save_state`] writes as JSON.
//!
//! Built-ins never answer an lr factor: the runtime applies the script's
//! `{ lr scale … }` coupling, and AdaScale's gain, itself.
//!
//! # The loss rule, exactly
//!
//! Over the steps since the previous check, the controller sums `loss · batch` and
//! `batch` over the steps whose loss is finite (`batch` being the samples the step
//! actually ran). A check runs after a step that crosses or lands on a boundary of
//! `every` ([`Interval::crossed`]). At a check, with `m` the window's weighted mean:
//!
//! - a window without a finite loss holds the batch and keeps the previous mean;
//! - the first check only records `m_prev = m` and holds;
//! - a later check multiplies the batch by `factor` (bounded: at the cap it stays
//!   at the maximum) when `m ≤ gamma · m_prev`, else holds; then `m_prev = m`;
//! - the window then starts afresh.
//!
//! Common write-ups read the previous loss before it is ever set, or retrain the same
//! epoch at each batch size; here the first check only records, and training always
//! moves on.

use serde::{Deserialize, Serialize};

use regimen_plugin::{BatchController, BatchDecision, BatchMetrics, ControllerError};

use super::{BatchBounds, BatchError, BatchSpec, ControllerSpec, GnsEstimate, Interval};

/// The batch the first step runs with (bounded).
pub fn initial_batch(spec: &BatchSpec) -> Result<u64, BatchError> {
    let batch = match &spec.controller {
        ControllerSpec::Fixed { batch } => *batch as f64,
        ControllerSpec::Ramp { from, .. }
        | ControllerSpec::LossRule { from, .. }
        | ControllerSpec::Gns { from, .. } => *from as f64,
        ControllerSpec::AdaScale { scale, .. } => adascale_batch(*scale, spec.base_batch),
        ControllerSpec::Plugin { .. } => spec.base_batch as f64,
    };
    spec.bounds.apply(batch)
}

/// The built-in controller of `spec`; `None` when it names a plugin's.
pub fn build(spec: &BatchSpec) -> Result<Option<Box<dyn BatchController>>, BatchError> {
    spec.bounds.range()?;
    validate(&spec.controller)?;
    let bounds = spec.bounds;
    let batch = initial_batch(spec)?;
    let controller: Box<dyn BatchController> = match &spec.controller {
        ControllerSpec::Fixed { .. } => Box::new(Fixed { batch }),
        ControllerSpec::Ramp {
            from,
            to,
            over,
            stages,
        } => Box::new(Ramp {
            from: *from,
            to: *to,
            over: *over,
            stages: *stages,
            bounds,
            batch,
        }),
        ControllerSpec::LossRule {
            gamma,
            every,
            factor,
            ..
        } => Box::new(LossRule {
            gamma: *gamma,
            every: *every,
            factor: *factor,
            bounds,
            batch,
            loss_sum: 0.0,
            weight: 0,
            previous: None,
        }),
        ControllerSpec::Gns { every, factor, .. } => Box::new(Gns {
            every: *every,
            factor: *factor,
            bounds,
            batch,
        }),
        ControllerSpec::AdaScale { .. } => Box::new(AdaScale { batch }),
        ControllerSpec::Plugin { .. } => return Ok(None),
    };
    Ok(Some(controller))
}

/// `round(S · B₀)`, before the bounds.
fn adascale_batch(scale: f64, base: u64) -> f64 {
    (scale * base as f64).round()
}

fn validate(spec: &ControllerSpec) -> Result<(), BatchError> {
    let invalid = |message: String| BatchError::Invalid {
        controller: spec.name().to_owned(),
        message,
    };
    let positive = |what: &str, value: u64| {
        if value == 0 {
            Err(invalid(format!("{what} must be at least 1")))
        } else {
            Ok(())
        }
    };
    let interval = |every: &Interval| match every {
        Interval::Steps(0) | Interval::Samples(0) => {
            Err(invalid("`every` must be at least 1".to_owned()))
        }
        _ => Ok(()),
    };
    let decay = |ema: f64| {
        if (0.0..1.0).contains(&ema) {
            Ok(())
        } else {
            Err(invalid(format!("`ema` must lie in [0, 1), not {ema}")))
        }
    };
    match spec {
        ControllerSpec::Fixed { batch } => positive("the batch", *batch),
        ControllerSpec::Ramp {
            from,
            to,
            over,
            stages,
        } => {
            positive("`from`", *from)?;
            positive("`to`", *to)?;
            positive("`over`", *over)?;
            match stages {
                Some(0) => Err(invalid("`stages` must be at least 1".to_owned())),
                _ => Ok(()),
            }
        }
        ControllerSpec::LossRule {
            from,
            gamma,
            every,
            factor,
        } => {
            positive("`from`", *from)?;
            if !(gamma.is_finite() && *gamma > 0.0) {
                return Err(invalid(format!("`gamma` must be positive, not {gamma}")));
            }
            interval(every)?;
            if !(factor.is_finite() && *factor > 1.0) {
                return Err(invalid(format!(
                    "`factor` must be greater than 1, not {factor}"
                )));
            }
            Ok(())
        }
        ControllerSpec::Gns {
            from,
            every,
            ema,
            factor,
        } => {
            positive("`from`", *from)?;
            interval(every)?;
            decay(*ema)?;
            if !(factor.is_finite() && *factor > 0.0) {
                return Err(invalid(format!("`factor` must be positive, not {factor}")));
            }
            Ok(())
        }
        ControllerSpec::AdaScale { scale, ema } => {
            if !(scale.is_finite() && *scale >= 1.0) {
                return Err(invalid(format!("`scale` must be at least 1, not {scale}")));
            }
            decay(*ema)
        }
        ControllerSpec::Plugin { .. } => Ok(()),
    }
}

/// `value` through the bounds, as a controller error (the bounds were checked by
/// [`build`], so this only fails if they were not).
fn bounded(bounds: &BatchBounds, value: f64) -> Result<u64, ControllerError> {
    bounds
        .apply(value)
        .map_err(|e| ControllerError::Failed(e.to_string()))
}

fn decision(batch: u64) -> BatchDecision {
    BatchDecision {
        batch,
        lr_scale: None,
    }
}

/// What every built-in saves. Tagged with the controller's name so that one
/// controller's state is never taken for another's. Floats are kept as their bit
/// patterns: JSON has no inf or NaN (serde_json writes them as `null`, which would
/// come back as an error, or, in an `Option`, silently as `None`), and a resumed run
/// must compare the very same bits.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "controller", rename_all = "snake_case", deny_unknown_fields)]
enum SavedState {
    Fixed {
        batch: u64,
    },
    Ramp {
        batch: u64,
    },
    LossRule {
        batch: u64,
        /// `Σ loss · batch` of the open window (`f64` bits).
        loss_sum: u64,
        /// `Σ batch` of the open window.
        weight: u64,
        /// The previous window's mean (`f64` bits), once a check has recorded one.
        previous: Option<u64>,
    },
    Gns {
        batch: u64,
    },
    AdaScale {
        batch: u64,
    },
}

impl SavedState {
    fn write(&self, out: &mut Vec<u8>) -> Result<(), ControllerError> {
        serde_json::to_writer(out, self).map_err(|e| ControllerError::State(e.to_string()))
    }

    /// Parse `bytes` as the state of the controller `name`.
    fn read(bytes: &[u8], name: &str) -> Result<Self, ControllerError> {
        let state: Self = serde_json::from_slice(bytes)
            .map_err(|e| ControllerError::State(format!("`{name}`: {e}")))?;
        if state.name() != name {
            return Err(ControllerError::State(format!(
                "the state of `{}` was given to `{name}`",
                state.name()
            )));
        }
        Ok(state)
    }

    fn name(&self) -> &'static str {
        match self {
            SavedState::Fixed { .. } => "fixed",
            SavedState::Ramp { .. } => "ramp",
            SavedState::LossRule { .. } => "loss_rule",
            SavedState::Gns { .. } => "gns",
            SavedState::AdaScale { .. } => "adascale",
        }
    }
}

/// A restored batch must be one the bounds allow: anything else did not come from
/// this configuration.
fn check_bounded(name: &str, bounds: &BatchBounds, batch: u64) -> Result<u64, ControllerError> {
    let (lo, hi) = bounds
        .range()
        .map_err(|e| ControllerError::Failed(e.to_string()))?;
    if batch < lo || batch > hi || batch % bounds.multiple_of.max(1) != 0 {
        return Err(ControllerError::State(format!(
            "`{name}`: the saved batch {batch} is not one the bounds allow"
        )));
    }
    Ok(batch)
}

/// A batch that follows from the parameters alone must come back as the same one.
fn check_same(name: &str, saved: u64, batch: u64) -> Result<(), ControllerError> {
    if saved == batch {
        Ok(())
    } else {
        Err(ControllerError::State(format!(
            "`{name}`: the saved batch {saved} is not this controller's {batch}"
        )))
    }
}

/// `fixed(n)`.
struct Fixed {
    batch: u64,
}

impl BatchController for Fixed {
    fn name(&self) -> &str {
        "fixed"
    }

    fn observe(&mut self, _metrics: &BatchMetrics) -> Result<BatchDecision, ControllerError> {
        Ok(decision(self.batch))
    }

    fn save_state(&self, out: &mut Vec<u8>) -> Result<(), ControllerError> {
        SavedState::Fixed { batch: self.batch }.write(out)
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), ControllerError> {
        match SavedState::read(state, self.name())? {
            SavedState::Fixed { batch } => check_same(self.name(), batch, self.batch),
            _ => Err(ControllerError::State("not a `fixed` state".to_owned())),
        }
    }
}

/// `ramp(from -> to, over:, stages:)`.
struct Ramp {
    from: u64,
    to: u64,
    over: u64,
    stages: Option<u64>,
    bounds: BatchBounds,
    batch: u64,
}

impl Ramp {
    /// The unbounded batch after `samples` samples.
    fn target(&self, samples: u64) -> f64 {
        let (from, span) = (self.from as f64, self.to as f64 - self.from as f64);
        let over = self.over.max(1);
        match self.stages {
            None => {
                // Multiplying before dividing rounds once, so that a ramp point that
                // is a tie of the rounding (272 = 8.5 · 32) stays an exact tie.
                from + span * samples.min(over) as f64 / over as f64
            }
            Some(stages) => {
                let stages = stages.max(1);
                // In integers (u128: K · s cannot overflow) so the jumps land exactly
                // at `over · i / K`.
                let done = (u128::from(stages) * u128::from(samples) / u128::from(over))
                    .min(u128::from(stages));
                from + span * done as f64 / stages as f64
            }
        }
    }
}

impl BatchController for Ramp {
    fn name(&self) -> &str {
        "ramp"
    }

    fn observe(&mut self, metrics: &BatchMetrics) -> Result<BatchDecision, ControllerError> {
        self.batch = bounded(&self.bounds, self.target(metrics.samples))?;
        Ok(decision(self.batch))
    }

    fn save_state(&self, out: &mut Vec<u8>) -> Result<(), ControllerError> {
        SavedState::Ramp { batch: self.batch }.write(out)
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), ControllerError> {
        match SavedState::read(state, self.name())? {
            SavedState::Ramp { batch } => {
                self.batch = check_bounded(self.name(), &self.bounds, batch)?;
                Ok(())
            }
            _ => Err(ControllerError::State("not a `ramp` state".to_owned())),
        }
    }
}

/// `loss_rule(gamma:, every:, factor:)`; see the module's documentation.
struct LossRule {
    gamma: f64,
    every: Interval,
    factor: f64,
    bounds: BatchBounds,
    batch: u64,
    /// `Σ loss · batch` over the open window's finite losses.
    loss_sum: f64,
    /// `Σ batch` over the same steps.
    weight: u64,
    /// The mean of the last window that had a finite loss.
    previous: Option<f64>,
}

impl LossRule {
    /// The batch and the reference mean after a check of the open window.
    fn check(&self) -> Result<(u64, Option<f64>), ControllerError> {
        if self.weight == 0 {
            // Nothing to compare: hold, and keep the reference for the next window.
            return Ok((self.batch, self.previous));
        }
        let mean = self.loss_sum / self.weight as f64;
        let batch = match self.previous {
            Some(previous) if mean <= self.gamma * previous => {
                bounded(&self.bounds, self.batch as f64 * self.factor)?
            }
            _ => self.batch,
        };
        Ok((batch, Some(mean)))
    }
}

impl BatchController for LossRule {
    fn name(&self) -> &str {
        "loss_rule"
    }

    fn observe(&mut self, metrics: &BatchMetrics) -> Result<BatchDecision, ControllerError> {
        if let Some(loss) = metrics.loss.filter(|l| l.is_finite()) {
            self.loss_sum += loss * metrics.batch as f64;
            self.weight = self.weight.saturating_add(metrics.batch);
        }
        let before = metrics.samples.saturating_sub(metrics.batch);
        if self.every.crossed(metrics.step, before, metrics.batch) {
            (self.batch, self.previous) = self.check()?;
            self.loss_sum = 0.0;
            self.weight = 0;
        }
        Ok(decision(self.batch))
    }

    fn save_state(&self, out: &mut Vec<u8>) -> Result<(), ControllerError> {
        SavedState::LossRule {
            batch: self.batch,
            loss_sum: self.loss_sum.to_bits(),
            weight: self.weight,
            previous: self.previous.map(f64::to_bits),
        }
        .write(out)
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), ControllerError> {
        match SavedState::read(state, self.name())? {
            SavedState::LossRule {
                batch,
                loss_sum,
                weight,
                previous,
            } => {
                self.batch = check_bounded(self.name(), &self.bounds, batch)?;
                self.loss_sum = f64::from_bits(loss_sum);
                self.weight = weight;
                self.previous = previous.map(f64::from_bits);
                Ok(())
            }
            _ => Err(ControllerError::State("not a `loss_rule` state".to_owned())),
        }
    }
}

/// `gns(every:, ema:, factor:)`: the runtime's estimator does the smoothing (with
/// `ema`); the controller only reads its estimate at the checks.
struct Gns {
    every: Interval,
    factor: f64,
    bounds: BatchBounds,
    batch: u64,
}

impl BatchController for Gns {
    fn name(&self) -> &str {
        "gns"
    }

    fn observe(&mut self, metrics: &BatchMetrics) -> Result<BatchDecision, ControllerError> {
        let before = metrics.samples.saturating_sub(metrics.batch);
        if self.every.crossed(metrics.step, before, metrics.batch) {
            if let (Some(grad_sq), Some(trace_sigma)) =
                (metrics.grad_sq_estimate, metrics.grad_variance)
            {
                // A NaN would count as 0 in `noise_scale` and send the batch to a
                // bound; it is no estimate at all, so it holds like a missing one.
                if grad_sq.is_finite() && trace_sigma.is_finite() {
                    let estimate = GnsEstimate {
                        grad_sq,
                        trace_sigma,
                    };
                    self.batch = bounded(&self.bounds, self.factor * estimate.noise_scale())?;
                }
            }
        }
        Ok(decision(self.batch))
    }

    fn save_state(&self, out: &mut Vec<u8>) -> Result<(), ControllerError> {
        SavedState::Gns { batch: self.batch }.write(out)
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), ControllerError> {
        match SavedState::read(state, self.name())? {
            SavedState::Gns { batch } => {
                self.batch = check_bounded(self.name(), &self.bounds, batch)?;
                Ok(())
            }
            _ => Err(ControllerError::State("not a `gns` state".to_owned())),
        }
    }
}

/// `adascale(scale:)`: a constant batch; the gain is the runtime's.
struct AdaScale {
    batch: u64,
}

impl BatchController for AdaScale {
    fn name(&self) -> &str {
        "adascale"
    }

    fn observe(&mut self, _metrics: &BatchMetrics) -> Result<BatchDecision, ControllerError> {
        Ok(decision(self.batch))
    }

    fn save_state(&self, out: &mut Vec<u8>) -> Result<(), ControllerError> {
        SavedState::AdaScale { batch: self.batch }.write(out)
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), ControllerError> {
        match SavedState::read(state, self.name())? {
            SavedState::AdaScale { batch } => check_same(self.name(), batch, self.batch),
            _ => Err(ControllerError::State("not an `adascale` state".to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::LrScale;
    use regimen_plugin::conformance::check_controller;
    use regimen_plugin::Args;

    fn spec(controller: ControllerSpec, bounds: BatchBounds) -> BatchSpec {
        BatchSpec {
            controller,
            bounds,
            micro_batch: None,
            lr_scale: LrScale::None,
            base_batch: 32,
        }
    }

    fn bounds(min: u64, max: Option<u64>, multiple_of: u64) -> BatchBounds {
        BatchBounds {
            min,
            max,
            multiple_of,
        }
    }

    fn make(spec: &BatchSpec) -> Box<dyn BatchController> {
        build(spec).unwrap().unwrap()
    }

    /// Metrics of a step that ran `batch` samples with `samples` seen after it.
    fn step(step: u64, samples: u64, batch: u64, loss: f64) -> BatchMetrics {
        BatchMetrics {
            loss: Some(loss),
            ..BatchMetrics::new(step, samples, batch)
        }
    }

    /// Drive `controller` through steps of the given `(batch, loss)`, counting steps
    /// and samples from 0; the answers.
    fn run(controller: &mut dyn BatchController, steps: &[(u64, f64)]) -> Vec<u64> {
        let mut samples = 0;
        steps
            .iter()
            .enumerate()
            .map(|(i, &(batch, loss))| {
                samples += batch;
                controller
                    .observe(&step(i as u64, samples, batch, loss))
                    .unwrap()
                    .batch
            })
            .collect()
    }

    fn ramp_at(controller: &mut dyn BatchController, samples: u64) -> u64 {
        let answer = controller
            .observe(&BatchMetrics::new(0, samples, 32))
            .unwrap();
        assert_eq!(answer.lr_scale, None);
        answer.batch
    }

    #[test]
    fn fixed_always_answers_its_batch() {
        let s = spec(ControllerSpec::Fixed { batch: 96 }, bounds(1, None, 64));
        // 96 / 64 = 1.5 ties up to 128, first step included.
        assert_eq!(initial_batch(&s).unwrap(), 128);
        let mut c = make(&s);
        assert_eq!(c.name(), "fixed");
        assert_eq!(
            run(c.as_mut(), &[(128, 1.0), (7, 0.5), (128, 0.1)]),
            [128; 3]
        );
    }

    #[test]
    fn linear_ramp_rounds_to_the_multiple() {
        let s = spec(
            ControllerSpec::Ramp {
                from: 32,
                to: 512,
                over: 1000,
                stages: None,
            },
            bounds(1, None, 32),
        );
        assert_eq!(initial_batch(&s).unwrap(), 32);
        let mut c = make(&s);
        assert_eq!(c.name(), "ramp");
        // 32 + 480 · s / 1000, then the nearest multiple of 32 (ties up):
        // s = 33: 47.84 = 1.495 · 32 → 32.
        assert_eq!(ramp_at(c.as_mut(), 33), 32);
        // s = 100: 80 = 2.5 · 32, a tie → 96.
        assert_eq!(ramp_at(c.as_mut(), 100), 96);
        // s = 250: 152 = 4.75 · 32 → 160.
        assert_eq!(ramp_at(c.as_mut(), 250), 160);
        // s = 500: 272 = 8.5 · 32, a tie → 288.
        assert_eq!(ramp_at(c.as_mut(), 500), 288);
        // s = 999: 511.52 → 512; from `over` on, `to`.
        assert_eq!(ramp_at(c.as_mut(), 999), 512);
        assert_eq!(ramp_at(c.as_mut(), 1000), 512);
        assert_eq!(ramp_at(c.as_mut(), 5000), 512);
    }

    #[test]
    fn staged_ramp_jumps_at_the_stage_boundaries() {
        let s = spec(
            ControllerSpec::Ramp {
                from: 32,
                to: 512,
                over: 1000,
                stages: Some(2),
            },
            BatchBounds::default(),
        );
        let mut c = make(&s);
        // ⌊2 s / 1000⌋ stages of 240: 0 until 500, 1 until 1000, then 2 for good.
        assert_eq!(ramp_at(c.as_mut(), 0), 32);
        assert_eq!(ramp_at(c.as_mut(), 499), 32);
        assert_eq!(ramp_at(c.as_mut(), 500), 272);
        assert_eq!(ramp_at(c.as_mut(), 999), 272);
        assert_eq!(ramp_at(c.as_mut(), 1000), 512);
        assert_eq!(ramp_at(c.as_mut(), 100_000), 512);
        // Three stages of 1000 / 3 samples: the first jump is at 334 (3 · 333 < 1000).
        let s = spec(
            ControllerSpec::Ramp {
                from: 100,
                to: 400,
                over: 1000,
                stages: Some(3),
            },
            BatchBounds::default(),
        );
        let mut c = make(&s);
        assert_eq!(ramp_at(c.as_mut(), 333), 100);
        assert_eq!(ramp_at(c.as_mut(), 334), 200);
        assert_eq!(ramp_at(c.as_mut(), 667), 300);
        assert_eq!(ramp_at(c.as_mut(), 1000), 400);
    }

    #[test]
    fn a_ramp_may_decrease() {
        let s = spec(
            ControllerSpec::Ramp {
                from: 512,
                to: 32,
                over: 1000,
                stages: None,
            },
            BatchBounds::default(),
        );
        assert_eq!(initial_batch(&s).unwrap(), 512);
        let mut c = make(&s);
        // 512 − 480 · s / 1000.
        assert_eq!(ramp_at(c.as_mut(), 250), 392);
        assert_eq!(ramp_at(c.as_mut(), 500), 272);
        assert_eq!(ramp_at(c.as_mut(), 2000), 32);
    }

    #[test]
    fn a_ramp_is_clamped_by_the_bounds() {
        let s = spec(
            ControllerSpec::Ramp {
                from: 8,
                to: 2048,
                over: 1000,
                stages: None,
            },
            bounds(32, Some(1024), 1),
        );
        // 8 is below the minimum, for the first step too.
        assert_eq!(initial_batch(&s).unwrap(), 32);
        let mut c = make(&s);
        assert_eq!(ramp_at(c.as_mut(), 0), 32);
        // 8 + 2040 · 0.1 = 212, inside.
        assert_eq!(ramp_at(c.as_mut(), 100), 212);
        // 8 + 1020 = 1028 > 1024.
        assert_eq!(ramp_at(c.as_mut(), 500), 1024);
        assert_eq!(ramp_at(c.as_mut(), 1000), 1024);
    }

    fn loss_rule(every: Interval, gamma: f64, max: Option<u64>) -> BatchSpec {
        spec(
            ControllerSpec::LossRule {
                from: 32,
                gamma,
                every,
                factor: 2.0,
            },
            bounds(1, max, 1),
        )
    }

    #[test]
    fn loss_rule_first_check_only_records() {
        let s = loss_rule(Interval::Steps(2), 0.9, None);
        assert_eq!(initial_batch(&s).unwrap(), 32);
        let mut c = make(&s);
        assert_eq!(c.name(), "loss_rule");
        // Checks after steps 1, 3 and 5. The first window's mean is 50.0005: nothing
        // came before it, so nothing doubles, however the loss fell (a reference
        // starting at +∞ would double here, one starting at 0 would never double).
        // Then 49 > 0.9 · 50.0005: hold; then 40 ≤ 0.9 · 49 = 44.1: 64.
        let answers = run(
            c.as_mut(),
            &[
                (32, 100.0),
                (32, 0.001),
                (32, 49.0),
                (32, 49.0),
                (32, 40.0),
                (32, 40.0),
            ],
        );
        assert_eq!(answers, [32, 32, 32, 32, 32, 64]);
    }

    #[test]
    fn loss_rule_doubles_when_the_loss_fell_enough_and_holds_otherwise() {
        let s = loss_rule(Interval::Steps(2), 0.9, None);
        let mut c = make(&s);
        let answers = run(
            c.as_mut(),
            &[
                // Check after step 1: records m = 2.
                (32, 2.0),
                (32, 2.0),
                // Check after step 3: m = 1.8 ≤ 0.9 · 2 (equality counts) → 64.
                (32, 1.8),
                (32, 1.8),
                // Check after step 5: m = 1.7 > 0.9 · 1.8 = 1.62 → hold, m_prev = 1.7.
                (64, 1.7),
                (64, 1.7),
                // Check after step 7: m = 1.6 > 1.53 → hold. (Against the first
                // reference 1.8 it would have doubled: the reference moved on.)
                (64, 1.6),
                (64, 1.6),
                // Check after step 9: m = 1.4 ≤ 1.44 → 128.
                (64, 1.4),
                (64, 1.4),
            ],
        );
        assert_eq!(answers, [32, 32, 32, 64, 64, 64, 64, 64, 64, 128]);
    }

    #[test]
    fn loss_rule_stops_at_the_cap() {
        let s = loss_rule(Interval::Steps(1), 1.0, Some(100));
        let mut c = make(&s);
        // Every step a check, the loss always falling: record, 64, then 128 capped
        // at 100, which stays (100 · 2 is bounded again to 100).
        let answers = run(
            c.as_mut(),
            &[(32, 5.0), (32, 4.0), (64, 3.0), (100, 2.0), (100, 1.0)],
        );
        assert_eq!(answers, [32, 64, 100, 100, 100]);
    }

    #[test]
    fn loss_rule_non_integer_factor_is_rounded_by_the_bounds() {
        let s = spec(
            ControllerSpec::LossRule {
                from: 32,
                gamma: 1.0,
                every: Interval::Steps(1),
                factor: 1.5,
            },
            bounds(1, None, 32),
        );
        let mut c = make(&s);
        // 32 · 1.5 = 48 = 1.5 · 32, a tie → 64; 64 · 1.5 = 96.
        assert_eq!(
            run(c.as_mut(), &[(32, 3.0), (32, 2.0), (64, 1.0)]),
            [32, 64, 96]
        );
    }

    #[test]
    fn loss_rule_skips_non_finite_losses_and_holds_on_an_empty_window() {
        let s = loss_rule(Interval::Steps(2), 0.8, None);
        let mut c = make(&s);
        let answers = run(
            c.as_mut(),
            &[
                // m = 2 (NaN and ∞ left out, so not NaN): recorded.
                (32, 2.0),
                (32, f64::NAN),
                // Only NaN: hold, and the reference stays 2.
                (32, f64::NAN),
                (32, f64::NAN),
                // m = 1.5 ≤ 0.8 · 2 = 1.6 → 64 (a NaN or 0 reference would hold).
                (32, 1.5),
                (32, f64::INFINITY),
            ],
        );
        assert_eq!(answers, [32, 32, 32, 32, 32, 64]);
        // A missing loss counts like a non-finite one: after m = 2 is recorded, a
        // window without losses holds (counted as a loss of 0 it would double), and
        // the next window compares with 2: 1.7 ≤ 0.9 · 2 → 64.
        let s = loss_rule(Interval::Steps(2), 0.9, None);
        let mut c = make(&s);
        assert_eq!(run(c.as_mut(), &[(32, 2.0), (32, 2.0)]), [32, 32]);
        for (i, samples) in [(2, 96), (3, 128)] {
            let answer = c.observe(&BatchMetrics::new(i, samples, 32)).unwrap();
            assert_eq!(answer.batch, 32);
        }
        assert_eq!(
            run_from(c.as_mut(), 4, 128, &[(32, 1.7), (32, 1.7)]),
            [32, 64]
        );
    }

    /// Like `run`, from step `step` with `samples` seen.
    fn run_from(
        controller: &mut dyn BatchController,
        first: u64,
        mut samples: u64,
        steps: &[(u64, f64)],
    ) -> Vec<u64> {
        (first..)
            .zip(steps)
            .map(|(i, &(batch, loss))| {
                samples += batch;
                controller
                    .observe(&step(i, samples, batch, loss))
                    .unwrap()
                    .batch
            })
            .collect()
    }

    #[test]
    fn loss_rule_checks_at_epoch_boundaries_with_a_short_last_batch() {
        // 100 samples per epoch: 32, 32, 32 and a last batch of 4 reach 100 exactly.
        let s = loss_rule(Interval::Samples(100), 0.9, None);
        let mut c = make(&s);
        let answers = run(
            c.as_mut(),
            &[
                // Epoch 1: m = 2, recorded after the 4th step.
                (32, 2.0),
                (32, 2.0),
                (32, 2.0),
                (4, 2.0),
                // Epoch 2: the mean weighted by the batches is (96 · 1 + 4 · 5) / 100
                // = 1.16 ≤ 1.8 → 64, after its 4th step and not before (the plain mean
                // of the four losses, 2, would hold).
                (32, 1.0),
                (32, 1.0),
                (32, 1.0),
                (4, 5.0),
            ],
        );
        assert_eq!(answers, [32, 32, 32, 32, 32, 32, 32, 64]);
    }

    #[test]
    fn loss_rule_counts_steps_with_a_steps_interval() {
        // Every 3 steps: checks after steps 2, 5, 8 whatever the batch sizes.
        let s = loss_rule(Interval::Steps(3), 1.0, None);
        let mut c = make(&s);
        let answers = run(
            c.as_mut(),
            &[
                (7, 3.0),
                (500, 3.0),
                (1, 3.0),
                (32, 2.0),
                (32, 2.0),
                (32, 2.0),
                (64, 1.0),
                (64, 1.0),
                (64, 1.0),
            ],
        );
        assert_eq!(answers, [32, 32, 32, 32, 32, 64, 64, 64, 128]);
    }

    fn gns_metrics(step: u64, estimate: Option<(f64, f64)>) -> BatchMetrics {
        BatchMetrics {
            grad_sq_estimate: estimate.map(|e| e.0),
            grad_variance: estimate.map(|e| e.1),
            ..BatchMetrics::new(step, 32 * (step + 1), 32)
        }
    }

    #[test]
    fn gns_follows_the_noise_scale_at_the_checks() {
        let s = spec(
            ControllerSpec::Gns {
                from: 32,
                every: Interval::Steps(2),
                ema: 0.9,
                factor: 2.0,
            },
            bounds(16, Some(1024), 16),
        );
        assert_eq!(initial_batch(&s).unwrap(), 32);
        let mut c = make(&s);
        assert_eq!(c.name(), "gns");
        let mut at = |step: u64, estimate: Option<(f64, f64)>| {
            c.observe(&gns_metrics(step, estimate)).unwrap().batch
        };
        // A check (after step 1) without an estimate holds.
        assert_eq!(at(0, None), 32);
        assert_eq!(at(1, None), 32);
        // An estimate between checks is not read: B_simple = 400 / 4 = 100.
        assert_eq!(at(2, Some((4.0, 400.0))), 32);
        // At the check: 2 · 100 = 200 = 12.5 · 16, a tie → 208.
        assert_eq!(at(3, Some((4.0, 400.0))), 208);
        // A check whose estimate is missing again holds.
        assert_eq!(at(5, None), 208);
        // |G|² estimated at 0 (or below) with noise: B_simple = +∞ → the maximum.
        assert_eq!(at(7, Some((0.0, 10.0))), 1024);
        assert_eq!(at(9, Some((-1.0, 10.0))), 1024);
        // No noise: B_simple = 0 → the minimum.
        assert_eq!(at(11, Some((3.0, 0.0))), 16);
        // NaN is no estimate: hold.
        assert_eq!(at(13, Some((f64::NAN, 10.0))), 16);
        // 2 · 10 / 4 = 5 → the minimum; 2 · 2000 / 4 = 1000 → 1008 (62.5 · 16 ties up).
        assert_eq!(at(15, Some((4.0, 10.0))), 16);
        assert_eq!(at(17, Some((4.0, 2000.0))), 1008);
    }

    #[test]
    fn adascale_runs_scale_times_the_base_batch() {
        let s = spec(
            ControllerSpec::AdaScale {
                scale: 4.0,
                ema: 0.9,
            },
            BatchBounds::default(),
        );
        assert_eq!(initial_batch(&s).unwrap(), 128);
        let mut c = make(&s);
        assert_eq!(c.name(), "adascale");
        assert_eq!(run(c.as_mut(), &[(128, 1.0), (128, 0.5)]), [128, 128]);
        // round(1.5 · 100) = 150, then the nearest multiple of 32: 4.6875 · 32 → 160.
        let s = BatchSpec {
            base_batch: 100,
            ..spec(
                ControllerSpec::AdaScale {
                    scale: 1.5,
                    ema: 0.0,
                },
                bounds(1, None, 32),
            )
        };
        assert_eq!(initial_batch(&s).unwrap(), 160);
        assert_eq!(run(make(&s).as_mut(), &[(160, 1.0)]), [160]);
    }

    #[test]
    fn a_plugin_starts_at_the_base_batch_and_is_not_built_here() {
        let s = spec(
            ControllerSpec::Plugin {
                name: "adabatch".to_owned(),
                args: Args::new(),
            },
            bounds(64, None, 1),
        );
        // The base batch 32 is below the minimum.
        assert_eq!(initial_batch(&s).unwrap(), 64);
        assert!(build(&s).unwrap().is_none());
    }

    #[test]
    fn a_restored_loss_rule_continues_identically() {
        let s = loss_rule(Interval::Steps(3), 0.95, None);
        let losses: Vec<(u64, f64)> = (0..30)
            .map(|i| (32, 3.0 * 0.97f64.powi(i) + 0.1 / 3.0))
            .collect();
        let reference = run(make(&s).as_mut(), &losses);
        // Mid-window (after step 4: one step into the second window) and at a check.
        for at in [4usize, 8] {
            let mut first = make(&s);
            let head = run(first.as_mut(), &losses[..=at]);
            let mut state = Vec::new();
            first.save_state(&mut state).unwrap();
            let mut second = make(&s);
            second.load_state(&state).unwrap();
            let samples = 32 * (at as u64 + 1);
            let tail = run_from(second.as_mut(), at as u64 + 1, samples, &losses[at + 1..]);
            let tail_first = run_from(first.as_mut(), at as u64 + 1, samples, &losses[at + 1..]);
            assert_eq!([head.clone(), tail.clone()].concat(), reference);
            assert_eq!(tail, tail_first);
        }
        // The scenario does double, so the state mattered.
        assert!(reference.last().copied().unwrap() > 32, "{reference:?}");
    }

    #[test]
    fn non_finite_floats_survive_the_state() {
        let s = loss_rule(Interval::Steps(2), 0.9, None);
        let mut c = make(&s);
        // A recorded mean of 1, then Σ loss · batch overflows to +∞ in the open window.
        assert_eq!(
            run(c.as_mut(), &[(32, 1.0), (32, 1.0), (32, f64::MAX)]),
            [32; 3]
        );
        let mut state = Vec::new();
        c.save_state(&mut state).unwrap();
        let mut d = make(&s);
        d.load_state(&state).unwrap();
        let mut again = Vec::new();
        d.save_state(&mut again).unwrap();
        assert_eq!(state, again);
        let text = String::from_utf8(state).unwrap();
        assert!(!text.contains("null"), "{text}");
    }

    fn all_builtins() -> Vec<BatchSpec> {
        let b = bounds(8, Some(4096), 8);
        vec![
            spec(ControllerSpec::Fixed { batch: 64 }, b),
            spec(
                ControllerSpec::Ramp {
                    from: 32,
                    to: 512,
                    over: 20_000,
                    stages: None,
                },
                b,
            ),
            spec(
                ControllerSpec::Ramp {
                    from: 512,
                    to: 64,
                    over: 20_000,
                    stages: Some(4),
                },
                b,
            ),
            spec(
                ControllerSpec::LossRule {
                    from: 32,
                    gamma: 0.97,
                    every: Interval::Samples(1000),
                    factor: 2.0,
                },
                b,
            ),
            spec(
                ControllerSpec::LossRule {
                    from: 32,
                    gamma: 0.99,
                    every: Interval::Steps(10),
                    factor: 1.5,
                },
                b,
            ),
            spec(
                ControllerSpec::Gns {
                    from: 32,
                    every: Interval::Steps(5),
                    ema: 0.9,
                    factor: 4.0,
                },
                b,
            ),
            spec(
                ControllerSpec::AdaScale {
                    scale: 4.0,
                    ema: 0.9,
                },
                b,
            ),
        ]
    }

    #[test]
    fn every_builtin_passes_the_conformance_suite() {
        for s in all_builtins() {
            let initial = initial_batch(&s).unwrap();
            check_controller(|| make(&s), initial)
                .unwrap_or_else(|failure| panic!("{}: {failure}", s.controller.name()));
        }
    }

    #[test]
    fn the_conformance_scenario_moves_the_adaptive_batches() {
        // The suite's comparisons would be empty tests if nothing ever changed: drive
        // the same kind of run (a falling loss, estimates present) and see it move.
        for s in &all_builtins()[3..6] {
            let mut c = make(s);
            let (mut batch, mut samples) = (initial_batch(s).unwrap(), 0);
            let first = batch;
            for i in 0..240 {
                samples += batch;
                let progress = samples as f64 / 1000.0;
                let metrics = BatchMetrics {
                    loss: Some(2.3 * (-0.3 * progress).exp() + 0.05),
                    grad_sq_estimate: Some(4.0 * (-0.5 * progress).exp()),
                    grad_variance: Some(50.0),
                    ..BatchMetrics::new(i, samples, batch)
                };
                batch = c.observe(&metrics).unwrap().batch;
            }
            assert_ne!(batch, first, "{}", s.controller.name());
        }
    }

    #[test]
    fn garbage_or_foreign_state_is_refused() {
        for s in all_builtins() {
            let name = s.controller.name();
            for garbage in [
                &b""[..],
                b"nonsense",
                b"{\"controller\":\"fixed\"}",
                b"\xff\x00",
            ] {
                let refused = make(&s).load_state(garbage);
                assert!(
                    matches!(refused, Err(ControllerError::State(_))),
                    "{name}: {refused:?}"
                );
            }
        }
        // Another controller's state.
        let mut ramp_state = Vec::new();
        make(&all_builtins()[1])
            .save_state(&mut ramp_state)
            .unwrap();
        let refused = make(&all_builtins()[3]).load_state(&ramp_state);
        assert!(matches!(refused, Err(ControllerError::State(m)) if m.contains("ramp")));
        // A batch the bounds (8 ≤ b ≤ 4096, multiples of 8) do not allow.
        for bad in ["0", "12", "8192"] {
            let text = format!(
                "{{\"controller\":\"loss_rule\",\"batch\":{bad},\"loss_sum\":0,\"weight\":0,\"previous\":null}}"
            );
            let refused = make(&all_builtins()[3]).load_state(text.as_bytes());
            assert!(matches!(refused, Err(ControllerError::State(_))), "{bad}");
        }
        // A fixed batch that is not this controller's.
        let refused =
            make(&all_builtins()[0]).load_state(b"{\"controller\":\"fixed\",\"batch\":128}");
        assert!(matches!(refused, Err(ControllerError::State(_))));
        // Unknown fields.
        let refused =
            make(&all_builtins()[5]).load_state(b"{\"controller\":\"gns\",\"batch\":64,\"x\":1}");
        assert!(matches!(refused, Err(ControllerError::State(_))));
        // A failed load leaves the controller as it was.
        let s = loss_rule(Interval::Steps(1), 1.0, None);
        let mut c = make(&s);
        assert_eq!(run(c.as_mut(), &[(32, 2.0), (32, 1.0)]), [32, 64]);
        assert!(c.load_state(b"{\"controller\":\"loss_rule\"}").is_err());
        assert_eq!(run_from(c.as_mut(), 2, 64, &[(64, 0.5)]), [128]);
    }

    #[test]
    fn invalid_parameters_name_the_controller() {
        let ok = BatchBounds::default();
        let steps = Interval::Steps(10);
        let cases = [
            ControllerSpec::Fixed { batch: 0 },
            ControllerSpec::Ramp {
                from: 0,
                to: 512,
                over: 1000,
                stages: None,
            },
            ControllerSpec::Ramp {
                from: 32,
                to: 0,
                over: 1000,
                stages: None,
            },
            ControllerSpec::Ramp {
                from: 32,
                to: 512,
                over: 0,
                stages: None,
            },
            ControllerSpec::Ramp {
                from: 32,
                to: 512,
                over: 1000,
                stages: Some(0),
            },
            ControllerSpec::LossRule {
                from: 0,
                gamma: 0.9,
                every: steps,
                factor: 2.0,
            },
            ControllerSpec::LossRule {
                from: 32,
                gamma: 0.0,
                every: steps,
                factor: 2.0,
            },
            ControllerSpec::LossRule {
                from: 32,
                gamma: f64::INFINITY,
                every: steps,
                factor: 2.0,
            },
            ControllerSpec::LossRule {
                from: 32,
                gamma: f64::NAN,
                every: steps,
                factor: 2.0,
            },
            ControllerSpec::LossRule {
                from: 32,
                gamma: 0.9,
                every: Interval::Steps(0),
                factor: 2.0,
            },
            ControllerSpec::LossRule {
                from: 32,
                gamma: 0.9,
                every: Interval::Samples(0),
                factor: 2.0,
            },
            ControllerSpec::LossRule {
                from: 32,
                gamma: 0.9,
                every: steps,
                factor: 1.0,
            },
            ControllerSpec::LossRule {
                from: 32,
                gamma: 0.9,
                every: steps,
                factor: f64::NAN,
            },
            ControllerSpec::Gns {
                from: 0,
                every: steps,
                ema: 0.9,
                factor: 1.0,
            },
            ControllerSpec::Gns {
                from: 32,
                every: Interval::Samples(0),
                ema: 0.9,
                factor: 1.0,
            },
            ControllerSpec::Gns {
                from: 32,
                every: steps,
                ema: 1.0,
                factor: 1.0,
            },
            ControllerSpec::Gns {
                from: 32,
                every: steps,
                ema: -0.1,
                factor: 1.0,
            },
            ControllerSpec::Gns {
                from: 32,
                every: steps,
                ema: f64::NAN,
                factor: 1.0,
            },
            ControllerSpec::Gns {
                from: 32,
                every: steps,
                ema: 0.9,
                factor: 0.0,
            },
            ControllerSpec::Gns {
                from: 32,
                every: steps,
                ema: 0.9,
                factor: f64::INFINITY,
            },
            ControllerSpec::AdaScale {
                scale: 0.5,
                ema: 0.9,
            },
            ControllerSpec::AdaScale {
                scale: f64::NAN,
                ema: 0.9,
            },
            ControllerSpec::AdaScale {
                scale: 2.0,
                ema: 1.0,
            },
        ];
        for controller in cases {
            let name = controller.name().to_owned();
            match build(&spec(controller.clone(), ok)) {
                Err(BatchError::Invalid {
                    controller: named,
                    message,
                }) => {
                    assert_eq!(named, name, "{message}");
                    assert!(!message.is_empty());
                }
                Err(other) => panic!("{controller:?}: {other}"),
                Ok(_) => panic!("{controller:?} was accepted"),
            }
        }
        // The edges that are allowed.
        for controller in [
            ControllerSpec::AdaScale {
                scale: 1.0,
                ema: 0.0,
            },
            ControllerSpec::LossRule {
                from: 32,
                gamma: 1.5,
                every: steps,
                factor: 1.01,
            },
            ControllerSpec::Ramp {
                from: 32,
                to: 32,
                over: 1,
                stages: Some(1),
            },
        ] {
            assert!(
                build(&spec(controller.clone(), ok)).unwrap().is_some(),
                "{controller:?}"
            );
        }
        // Bounds that leave no batch, for a plugin too.
        let empty = bounds(100, Some(120), 64);
        for controller in [
            ControllerSpec::Fixed { batch: 64 },
            ControllerSpec::Plugin {
                name: "adabatch".to_owned(),
                args: Args::new(),
            },
        ] {
            assert!(matches!(
                build(&spec(controller, empty)),
                Err(BatchError::EmptyBounds { .. })
            ));
        }
    }
}
