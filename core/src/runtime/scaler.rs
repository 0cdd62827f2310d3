//! Loss scaling: the factor the training loop multiplies its loss by before the
//! backward pass, and how that factor reacts to overflowing gradients.
//!
//! The training loop asks [`LossScaler::scale`] for the factor, computes scaled
//! gradients, and the stepper reports with [`LossScaler::update`] whether they were all
//! finite. A step with a non-finite gradient is always skipped, whatever the spec, so
//! NaN and infinity never reach the weights.
//!
//! - [`LossScaleSpec::None`]: the scale is 1; overflows skip the step.
//! - [`LossScaleSpec::Static`]: the scale is fixed; overflows skip the step.
//! - [`LossScaleSpec::Dynamic`]: PyTorch's `GradScaler` (`torch.amp.GradScaler.update`,
//!   whose arithmetic is the `_amp_update_scale_` kernel in
//!   `aten/src/ATen/native/cpu/AmpGradScalerKernels.cpp`) extended with DeepSpeed's
//!   hysteresis and minimum scale (`DynamicLossScaler.update_scale` in
//!   `deepspeed/runtime/fp16/loss_scaler.py`):
//!   - **finite step** (PyTorch): `growth_tracker += 1`; when it reaches `interval`,
//!     `scale *= growth` and `growth_tracker = 0`. So the scale grows after exactly
//!     `interval` consecutive finite steps (the 2000th with the defaults).
//!     DeepSpeed counts differently (its first growth comes one step later, at
//!     `(cur_iter - last_overflow_iter) - 1 == scale_window`); we follow PyTorch here.
//!     As in PyTorch, a growth that would make the scale infinite in f32 is not
//!     applied (the tracker still resets).
//!   - **growth refills the hysteresis** (DeepSpeed with its default
//!     `consecutive_hysteresis=False`: `cur_hysteresis = delayed_shift` only when the
//!     scale grows, not after every finite step).
//!   - **overflow**: `growth_tracker = 0` (PyTorch) and the step is skipped. Then, as
//!     DeepSpeed: if more than one hysteresis overflow is left, one is spent and the
//!     scale is kept; otherwise the scale backs off to `max(scale × backoff,
//!     min_scale)`. The hysteresis stays spent (1) until a growth refills it. If the
//!     scale is already at `min_scale`, `at_min: error` returns
//!     [`RuntimeError::LossScaleAtMinimum`] and changes nothing (DeepSpeed's
//!     `raise_error_at_min_scale=True`), and `at_min: skip` skips the step and stays
//!     at the minimum. PyTorch has no minimum; DeepSpeed backs off by `1/scale_factor`
//!     where we use PyTorch's separate `backoff`.
//!
//! The state is serializable for checkpoints; deserializing validates it, so a damaged
//! checkpoint cannot smuggle in a zero or NaN scale.

use serde::{Deserialize, Serialize};

use super::RuntimeError;
use crate::strategy::{AtMinScale, DynamicLossScale, LossScaleSpec};

/// The loss scaler: its spec and its state between steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "LossScalerFields")]
pub struct LossScaler {
    /// What the script asked for.
    spec: LossScaleSpec,
    /// The factor for the next step.
    scale: f64,
    /// Consecutive finite steps since the last overflow or growth.
    growth_tracker: u64,
    /// Overflows left before the scale backs off (DeepSpeed's `cur_hysteresis`).
    hysteresis_left: u32,
}

/// The serialized form of [`LossScaler`], checked before it becomes one.
#[derive(Deserialize)]
struct LossScalerFields {
    spec: LossScaleSpec,
    scale: f64,
    growth_tracker: u64,
    hysteresis_left: u32,
}

impl TryFrom<LossScalerFields> for LossScaler {
    type Error = String;

    fn try_from(fields: LossScalerFields) -> Result<Self, String> {
        let fresh = LossScaler::new(&fields.spec)?;
        let scaler = LossScaler {
            spec: fields.spec,
            scale: fields.scale,
            growth_tracker: fields.growth_tracker,
            hysteresis_left: fields.hysteresis_left,
        };
        let consistent = match &scaler.spec {
            LossScaleSpec::None | LossScaleSpec::Static(_) => {
                scaler.scale == fresh.scale
                    && scaler.growth_tracker == 0
                    && scaler.hysteresis_left == fresh.hysteresis_left
            }
            LossScaleSpec::Dynamic(dynamic) => {
                is_positive_f32_finite(scaler.scale)
                    && scaler.scale >= dynamic.min_scale
                    && scaler.growth_tracker < dynamic.interval
                    && (1..=dynamic.hysteresis).contains(&scaler.hysteresis_left)
            }
        };
        if consistent {
            Ok(scaler)
        } else {
            Err(format!(
                "loss scaler state (scale {}, growth tracker {}, hysteresis left {}) is impossible for its spec {:?}",
                scaler.scale, scaler.growth_tracker, scaler.hysteresis_left, scaler.spec
            ))
        }
    }
}

/// What the scaler decided for one step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScaleDecision {
    /// Skip the optimizer update: the gradients were not all finite.
    pub skip: bool,
    /// The scale this step's gradients were computed with.
    pub scale_used: f64,
    /// The scale for the next step.
    pub next_scale: f64,
    /// The scale shrank.
    pub backed_off: bool,
    /// The scale grew.
    pub grew: bool,
}

impl LossScaler {
    /// A scaler in its initial state, after checking the spec: scales positive and
    /// finite in f32, `growth ≥ 1` (1 never grows), `0 < backoff < 1`, `interval ≥ 1`,
    /// `hysteresis ≥ 1`, `0 < min_scale ≤ init`.
    pub fn new(spec: &LossScaleSpec) -> Result<Self, String> {
        let (scale, hysteresis_left) = match spec {
            LossScaleSpec::None => (1.0, 1),
            LossScaleSpec::Static(scale) => {
                if !is_positive_f32_finite(*scale) {
                    return Err(format!(
                        "static loss scale must be positive and finite in f32, got {scale}"
                    ));
                }
                (*scale, 1)
            }
            LossScaleSpec::Dynamic(dynamic) => {
                validate_dynamic(dynamic)?;
                (dynamic.init, dynamic.hysteresis)
            }
        };
        Ok(Self {
            spec: spec.clone(),
            scale,
            growth_tracker: 0,
            hysteresis_left,
        })
    }

    /// The spec this scaler runs.
    pub fn spec(&self) -> &LossScaleSpec {
        &self.spec
    }

    /// The factor the loss must be multiplied by this step (1 without scaling).
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// `1 / scale` as f32, the factor that unscales this step's gradients (computed in
    /// f64 and rounded once, as PyTorch's `scale.double().reciprocal().float()`).
    pub fn inverse_scale(&self) -> f32 {
        (1.0 / self.scale) as f32
    }

    /// Consecutive finite steps since the last overflow or growth.
    pub fn growth_tracker(&self) -> u64 {
        self.growth_tracker
    }

    /// Overflows left before the scale backs off (1: the next one backs off).
    pub fn hysteresis_left(&self) -> u32 {
        self.hysteresis_left
    }

    /// Records whether step `step`'s gradients were all finite and moves to the next
    /// step's scale (rules in the module documentation). On
    /// [`RuntimeError::LossScaleAtMinimum`] the state is unchanged.
    pub fn update(&mut self, finite: bool, step: u64) -> Result<ScaleDecision, RuntimeError> {
        let scale_used = self.scale;
        let LossScaleSpec::Dynamic(dynamic) = &self.spec else {
            return Ok(ScaleDecision {
                skip: !finite,
                scale_used,
                next_scale: scale_used,
                backed_off: false,
                grew: false,
            });
        };

        let mut next = self.clone();
        if finite {
            next.growth_tracker += 1;
            if next.growth_tracker >= dynamic.interval {
                let grown = next.scale * dynamic.growth;
                // PyTorch keeps its scale in f32 and refuses to grow it to infinity.
                if (grown as f32).is_finite() {
                    next.scale = grown;
                }
                next.growth_tracker = 0;
                next.hysteresis_left = dynamic.hysteresis;
            }
        } else {
            next.growth_tracker = 0;
            if next.hysteresis_left > 1 {
                next.hysteresis_left -= 1;
            } else if next.scale <= dynamic.min_scale {
                match dynamic.at_min {
                    AtMinScale::Error => {
                        return Err(RuntimeError::LossScaleAtMinimum {
                            step,
                            scale: self.scale,
                        })
                    }
                    AtMinScale::Skip => next.scale = dynamic.min_scale,
                }
            } else {
                next.scale = (next.scale * dynamic.backoff).max(dynamic.min_scale);
            }
        }
        *self = next;
        Ok(ScaleDecision {
            skip: !finite,
            scale_used,
            next_scale: self.scale,
            backed_off: self.scale < scale_used,
            grew: self.scale > scale_used,
        })
    }
}

/// Positive, and finite once rounded to f32 (the loss is scaled in the model's
/// precision; PyTorch keeps the scale as an f32 tensor).
fn is_positive_f32_finite(value: f64) -> bool {
    value > 0.0 && (value as f32).is_finite()
}

fn validate_dynamic(dynamic: &DynamicLossScale) -> Result<(), String> {
    let DynamicLossScale {
        init,
        growth,
        backoff,
        interval,
        hysteresis,
        min_scale,
        at_min: _,
    } = *dynamic;
    if !is_positive_f32_finite(init) {
        return Err(format!(
            "dynamic loss scale: `init` must be positive and finite in f32, got {init}"
        ));
    }
    if !(growth >= 1.0 && growth.is_finite()) {
        return Err(format!(
            "dynamic loss scale: `growth` must be finite and at least 1, got {growth}"
        ));
    }
    if !(backoff > 0.0 && backoff < 1.0) {
        return Err(format!(
            "dynamic loss scale: `backoff` must be strictly between 0 and 1, got {backoff}"
        ));
    }
    if interval == 0 {
        return Err("dynamic loss scale: `interval` must be at least 1 step".to_owned());
    }
    if hysteresis == 0 {
        return Err(
            "dynamic loss scale: `hysteresis` must be at least 1 (1 disables it)".to_owned(),
        );
    }
    if !(min_scale > 0.0 && min_scale <= init) {
        return Err(format!(
            "dynamic loss scale: `min_scale` must be positive and at most `init` ({init}), got {min_scale}"
        ));
    }
    Ok(())
}
