//! Per-parameter optimizer state and the update of one parameter, for every
//! [`OptimizerKind`]. The arithmetic lives in the backend's fused kernels (their doc
//! comments in [`crate::backend`] give the exact formulas); this module decides which
//! kernel runs with which scalars:
//!
//! - **sgd** — `torch.optim.SGD`: one [`SgdStep`] with the parameter's lr.
//! - **adam / adamw** — `torch.optim.Adam`/`AdamW`: one [`AdamStep`] with the bias
//!   corrections `1 − βᵗ` for this parameter's update count `t` (computed like
//!   Python's `beta ** step`, i.e. with `pow`).
//! - **lamb** — You et al. 2019, Algorithm 2: the direction `u` from
//!   [`Backend::lamb_direction`], the trust ratio `‖p‖/‖u‖` (1 when either norm is 0
//!   or the parameter's `trust_ratio` is off, capped at `trust_clip`), then
//!   `p = p − lr·trust·u`.
//! - **lars** — You et al. 2017, Algorithm 1, *in the paper's form*: the local rate
//!   `λˡ = η‖w‖/(‖g‖ + β‖w‖ + eps)` multiplies the decayed gradient *inside* the
//!   momentum, with the global lr: `v = m·v + γ·λˡ·(g + βw)`, `w = w − v` (an
//!   [`SgdStep`] with `lr = 1` and `grad_scale = γ·λˡ`). The momentum buffer thus
//!   holds lr-scaled velocity, unlike PyTorch-SGD's buffer; with a constant lr and
//!   trust off the two agree exactly in real arithmetic.
//!
//! Every update reports `‖Δp‖² = Σ (p_new − p_old)²`, the change of the f32 master
//! weights as the kernel that moved them measured it in the same pass (`sgd_step`,
//! `adam_step`, and LAMB's final `axpy`), so the update norm costs nothing extra.
//!
//! Scratch space (the LAMB direction) is one tensor per distinct parameter length,
//! shared by the parameters of that length, allocated when the stepper binds.

use super::RuntimeError;
use crate::backend::{AdamStep, Backend, BackendError, LambDirection, SgdStep};
use crate::strategy::{OptimizerKind, OptimizerSpec};

/// One parameter's tensors and counters.
pub(crate) struct ParamState<T> {
    /// f32 master weights.
    pub master: T,
    /// The loaded (unscaled, possibly clipped) gradient of the current step.
    pub grad: T,
    /// SGD/LARS momentum buffer, when the momentum can be non-zero.
    pub momentum: Option<T>,
    /// Adam/LAMB first moment.
    pub exp_avg: Option<T>,
    /// Adam/LAMB second moment.
    pub exp_avg_sq: Option<T>,
    /// AMSGrad's running maximum of the second moment.
    pub max_exp_avg_sq: Option<T>,
    /// Updates applied to this parameter (Adam's `t` before the next update).
    pub updates: u64,
    /// The momentum buffer has been written (PyTorch creates it on first use).
    pub momentum_initialised: bool,
    /// Index of this parameter's scratch tensor, if it has one.
    pub scratch: Option<usize>,
}

impl<T> ParamState<T> {
    /// The named optimizer tensors that exist, for checkpoints (the prefix is the
    /// tensor's role: `momentum`, `exp_avg`, `exp_avg_sq`, `max_exp_avg_sq`).
    pub fn moments(&self) -> impl Iterator<Item = (&'static str, &T)> {
        [
            ("momentum", self.momentum.as_ref()),
            ("exp_avg", self.exp_avg.as_ref()),
            ("exp_avg_sq", self.exp_avg_sq.as_ref()),
            ("max_exp_avg_sq", self.max_exp_avg_sq.as_ref()),
        ]
        .into_iter()
        .filter_map(|(role, tensor)| tensor.map(|t| (role, t)))
    }

    /// The optimizer tensor for `role` (see [`ParamState::moments`]).
    pub fn moment_mut(&mut self, role: &str) -> Option<&mut T> {
        match role {
            "momentum" => self.momentum.as_mut(),
            "exp_avg" => self.exp_avg.as_mut(),
            "exp_avg_sq" => self.exp_avg_sq.as_mut(),
            "max_exp_avg_sq" => self.max_exp_avg_sq.as_mut(),
            _ => None,
        }
    }
}

/// Allocate one parameter's state: master and gradient buffers plus the moments its
/// optimizer keeps.
pub(crate) fn allocate<B: Backend>(
    backend: &B,
    spec: &OptimizerSpec,
    numel: usize,
    needs_momentum: bool,
) -> Result<ParamState<B::Tensor>, BackendError> {
    let zeros = || backend.zeros(numel);
    let (momentum, exp_avg, exp_avg_sq, max_exp_avg_sq) = match spec.kind {
        OptimizerKind::Sgd | OptimizerKind::Lars => {
            let momentum = if needs_momentum { Some(zeros()?) } else { None };
            (momentum, None, None, None)
        }
        OptimizerKind::Adam | OptimizerKind::AdamW => {
            let max = if spec.amsgrad { Some(zeros()?) } else { None };
            (None, Some(zeros()?), Some(zeros()?), max)
        }
        OptimizerKind::Lamb => (None, Some(zeros()?), Some(zeros()?), None),
    };
    Ok(ParamState {
        master: zeros()?,
        grad: zeros()?,
        momentum,
        exp_avg,
        exp_avg_sq,
        max_exp_avg_sq,
        updates: 0,
        momentum_initialised: false,
        scratch: None,
    })
}

/// The hyperparameters of one parameter for one step, as the graph produced them
/// (lr already multiplied by the layer-wise factor).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Hypers {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub trust: f64,
}

/// What one parameter's update reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Outcome {
    /// The trust ratio applied (LARS/LAMB with `trust_ratio` on).
    pub trust: Option<f64>,
    /// `Σ (p_new − p_old)²` of the f32 master weights, as the update kernel measured it.
    pub update_sum_squares: f64,
}

/// Apply one update to `state.master` with the gradient in `state.grad`, and advance
/// the parameter's counters. `direction` is the parameter's scratch tensor, which
/// LAMB needs for its direction (the other optimizers need none).
///
/// The squared norm of the change comes back from the kernel that applied it: the
/// f32 difference `p_new − p_old` of every element, squared and summed in f64.
pub(crate) fn update<B: Backend>(
    backend: &B,
    spec: &OptimizerSpec,
    state: &mut ParamState<B::Tensor>,
    hypers: &Hypers,
    trust_enabled: bool,
    direction: Option<&mut B::Tensor>,
) -> Result<Outcome, RuntimeError> {
    let mut trust_applied = None;
    let update_sum_squares = match spec.kind {
        OptimizerKind::Sgd => sgd_family(backend, spec, state, hypers, hypers.lr, 1.0)?,
        OptimizerKind::Lars => {
            if trust_enabled {
                let w_norm = backend.sum_squares(&state.master)?.sqrt();
                let g_norm = backend.sum_squares(&state.grad)?.sqrt();
                trust_applied = Some(trust_ratio(w_norm, g_norm, spec.trust_clip, || {
                    hypers.trust * w_norm / (g_norm + hypers.weight_decay * w_norm + hypers.eps)
                }));
            }
            let local = trust_applied.unwrap_or(1.0);
            sgd_family(backend, spec, state, hypers, 1.0, hypers.lr * local)?
        }
        OptimizerKind::Adam | OptimizerKind::AdamW => {
            let t = state.updates + 1;
            let step = AdamStep {
                lr: hypers.lr as f32,
                beta1: hypers.beta1,
                beta2: hypers.beta2,
                eps: hypers.eps as f32,
                weight_decay: hypers.weight_decay as f32,
                decoupled: spec.kind == OptimizerKind::AdamW,
                bias_correction1: bias_correction(hypers.beta1, t),
                bias_correction2: bias_correction(hypers.beta2, t),
            };
            let (Some(m), Some(v)) = (state.exp_avg.as_mut(), state.exp_avg_sq.as_mut()) else {
                return Err(missing_state(spec.kind.name(), "moments"));
            };
            backend.adam_step(
                &mut state.master,
                &state.grad,
                m,
                v,
                state.max_exp_avg_sq.as_mut(),
                &step,
            )?
        }
        OptimizerKind::Lamb => {
            let Some(direction) = direction else {
                return Err(missing_state("lamb", "direction buffer"));
            };
            let t = state.updates + 1;
            let (bias_correction1, bias_correction2) = if spec.bias_correction {
                (
                    bias_correction(hypers.beta1, t),
                    bias_correction(hypers.beta2, t),
                )
            } else {
                (1.0, 1.0)
            };
            let (Some(m), Some(v)) = (state.exp_avg.as_mut(), state.exp_avg_sq.as_mut()) else {
                return Err(missing_state("lamb", "moments"));
            };
            let norms = backend.lamb_direction(
                &state.master,
                &state.grad,
                m,
                v,
                direction,
                &LambDirection {
                    beta1: hypers.beta1,
                    beta2: hypers.beta2,
                    eps: hypers.eps as f32,
                    weight_decay: hypers.weight_decay as f32,
                    bias_correction1,
                    bias_correction2,
                },
            )?;
            if trust_enabled {
                let p_norm = norms.param_sum_squares.sqrt();
                let u_norm = norms.update_sum_squares.sqrt();
                trust_applied = Some(trust_ratio(p_norm, u_norm, spec.trust_clip, || {
                    p_norm / u_norm
                }));
            }
            let step = hypers.lr * trust_applied.unwrap_or(1.0);
            backend.axpy(&mut state.master, -(step as f32), direction)?
        }
    };
    state.updates += 1;
    Ok(Outcome {
        trust: trust_applied,
        update_sum_squares,
    })
}

/// The SGD kernel as SGD (`lr`, `grad_scale` 1) and LARS (`lr` 1, `grad_scale` γ·λˡ)
/// call it; returns the kernel's `Σ (p_new − p_old)²`.
fn sgd_family<B: Backend>(
    backend: &B,
    spec: &OptimizerSpec,
    state: &mut ParamState<B::Tensor>,
    hypers: &Hypers,
    lr: f64,
    grad_scale: f64,
) -> Result<f64, RuntimeError> {
    let uses_momentum = hypers.momentum != 0.0;
    let buffer = if uses_momentum {
        match state.momentum.as_mut() {
            Some(buffer) => Some(buffer),
            None => return Err(missing_state(spec.kind.name(), "momentum buffer")),
        }
    } else {
        None
    };
    let step = SgdStep {
        lr: lr as f32,
        momentum: hypers.momentum as f32,
        dampening: hypers.dampening as f32,
        weight_decay: hypers.weight_decay as f32,
        nesterov: spec.nesterov,
        first_step: !state.momentum_initialised,
        grad_scale: grad_scale as f32,
    };
    let change_sum_squares = backend.sgd_step(&mut state.master, &state.grad, buffer, &step)?;
    if uses_momentum {
        state.momentum_initialised = true;
    }
    Ok(change_sum_squares)
}

/// `1 − βᵗ` as Python's `1 - beta ** step` computes it (C `pow`).
fn bias_correction(beta: f64, t: u64) -> f64 {
    1.0 - beta.powf(t as f64)
}

/// A trust ratio: `ratio()` when both the weight norm and the other norm (LARS: the
/// gradient's, LAMB: the direction's) are positive, else 1 (both papers' guard
/// against a zero norm), capped at `clip`.
fn trust_ratio(
    weight_norm: f64,
    other_norm: f64,
    clip: Option<f64>,
    ratio: impl FnOnce() -> f64,
) -> f64 {
    let ratio = if weight_norm > 0.0 && other_norm > 0.0 {
        ratio()
    } else {
        1.0
    };
    match clip {
        Some(clip) => ratio.min(clip),
        None => ratio,
    }
}

/// A buffer the binding should have allocated is missing: a bug, reported rather
/// than panicked on.
fn missing_state(optimizer: &str, what: &str) -> RuntimeError {
    RuntimeError::Strategy(format!(
        "internal error: {optimizer} update without its {what}"
    ))
}
