//! [`BatchControl`]: the batch-size controller of a run as the [`Stepper`] drives it.
//! It holds the controller (built-in or plugin), the noise estimator and the
//! progress counters, and answers three questions: which batch the next step runs
//! ([`BatchControl::next_batch`]), where the schedules stand
//! ([`BatchControl::progress`]) and which factor the step's learning rate gets.
//!
//! # One step
//!
//! 1. The stepper evaluates the schedules at [`BatchControl::progress`].
//! 2. After the gradient exchange it calls [`BatchControl::prepare`] with the step's
//!    batch and, when known, the gradient norms at two batch sizes ([`GnsSample`]).
//!    The estimator takes the sample in, the AdaScale gain follows from it, and the
//!    controller observes the step and decides the next batch. Nothing of this is kept
//!    yet: the result is a [`Prepared`] step.
//! 3. The update runs with the lr multiplied by [`Prepared::lr_factor`].
//! 4. [`BatchControl::commit`] keeps the prepared state: samples and progress move
//!    on, the next batch is the controller's answer (bounded).
//!
//! The lr factor of a step is, in order: AdaScale's gain of this step (computed from
//! this step's gradients, as in Johnson et al. 2020, Algorithm 1); the `lr_scale` a
//! plugin controller answered for this step; the `{ lr scale … }` rule applied to the
//! step's nominal batch (the controller's answer, not the shorter last batch of an
//! epoch).
//!
//! # Progress
//!
//! `samples` counts every sample a step consumed, skipped steps included (the data
//! was drawn). The schedules' clock is `samples / B₀` in reference steps, except
//! under AdaScale, where each step advances it by its gain `r ∈ [1, batch/B₀]`.
//!
//! [`Stepper`]: crate::Stepper

use serde::{Deserialize, Serialize};

use regimen_plugin::{BatchController, BatchMetrics};

use super::controllers;
use super::{BatchError, BatchSpec, ControllerSpec, GnsEstimate, GnsEstimator, GnsSample};
use crate::loader::PluginSet;

/// A worker's gradient norms at its small batch size, which the training loop
/// measures: the size of each small batch (the worker's share of the step, or one of
/// its micro-batches) and the mean of their gradients' squared norms (unscaled by any
/// loss scale). Only meaningful when every small batch of the step has that size.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SmallBatchNorms {
    /// Samples in each small batch.
    pub samples: u64,
    /// Mean over the small batches of `|g_small|²`.
    pub mean_sq_norm: f64,
}

/// What batch control did in one step (a part of the step's report).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchReport {
    /// Samples this step consumed.
    pub batch: u64,
    /// Samples seen after this step.
    pub samples: u64,
    /// The schedules' clock this step ran at (reference steps, see the module doc).
    pub progress: f64,
    /// The factor this step's learning rate got.
    pub lr_factor: f64,
    /// The smoothed gradient noise scale `B_simple` after this step (NaN until the
    /// first estimate).
    pub noise_scale: f64,
    /// AdaScale's gain ratio for this step's batch from the smoothed estimate (NaN
    /// until the first estimate; the lr factor only under `adascale`).
    pub gain: f64,
    /// The batch of the next step.
    pub next_batch: u64,
}

/// The counters and decisions that move from step to step (saved in checkpoints).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlState {
    /// Samples consumed so far.
    pub samples: u64,
    /// The schedules' clock for the next step.
    pub progress: f64,
    /// The next step's batch.
    pub next_batch: u64,
    /// A plugin controller's lr factor for the next step, if it answered one.
    pub next_lr_scale: Option<f64>,
    /// The noise estimator.
    pub estimator: GnsEstimator,
    /// The controller's own state ([`BatchController::save_state`]), filled only in
    /// what [`BatchControl::save`] returns.
    pub controller: Vec<u8>,
}

/// A step's batch control, computed but not yet kept (see the module doc).
pub struct Prepared {
    state: ControlState,
    report: BatchReport,
}

impl Prepared {
    /// The factor on this step's learning rate.
    pub fn lr_factor(&self) -> f64 {
        self.report.lr_factor
    }
}

/// The batch controller of a run (see the module doc).
pub struct BatchControl {
    spec: BatchSpec,
    controller: Box<dyn BatchController>,
    samples_per_epoch: Option<u64>,
    state: ControlState,
}

impl std::fmt::Debug for BatchControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchControl")
            .field("controller", &self.spec.controller.name())
            .field("state", &self.state)
            .finish()
    }
}

impl BatchControl {
    /// Start `spec`'s controller (a plugin's from `plugins`). `samples_per_epoch` is
    /// the dataset's size, when known (controllers may count epochs with it).
    pub fn new(
        spec: BatchSpec,
        plugins: &PluginSet,
        samples_per_epoch: Option<u64>,
    ) -> Result<Self, BatchError> {
        if spec.base_batch == 0 {
            return Err(BatchError::Invalid {
                controller: spec.controller.name().to_owned(),
                message: "the base batch must be at least 1".to_owned(),
            });
        }
        let controller = match controllers::build(&spec)? {
            Some(controller) => controller,
            None => {
                let ControllerSpec::Plugin { name, args } = &spec.controller else {
                    return Err(BatchError::UnknownController(
                        spec.controller.name().to_owned(),
                    ));
                };
                plugins
                    .controller(name, args)
                    .ok_or_else(|| BatchError::UnknownController(name.clone()))?
                    .map_err(|error| BatchError::Plugin {
                        name: name.clone(),
                        message: error.to_string(),
                    })?
            }
        };
        let ema = match spec.controller {
            ControllerSpec::Gns { ema, .. } | ControllerSpec::AdaScale { ema, .. } => ema,
            _ => DEFAULT_EMA,
        };
        let next_batch = controllers::initial_batch(&spec)?;
        Ok(Self {
            spec,
            controller,
            samples_per_epoch,
            state: ControlState {
                samples: 0,
                progress: 0.0,
                next_batch,
                next_lr_scale: None,
                estimator: GnsEstimator::new(ema),
                controller: Vec::new(),
            },
        })
    }

    /// The statement this control runs.
    pub fn spec(&self) -> &BatchSpec {
        &self.spec
    }

    /// The batch the next step runs (the global batch, all workers together).
    pub fn next_batch(&self) -> u64 {
        self.state.next_batch
    }

    /// The schedules' clock for the next step, in reference steps.
    pub fn progress(&self) -> f64 {
        self.state.progress
    }

    /// Samples consumed so far.
    pub fn samples(&self) -> u64 {
        self.state.samples
    }

    /// The smoothed noise estimate, once there is one.
    pub fn estimate(&self) -> Option<GnsEstimate> {
        self.state.estimator.estimate()
    }

    /// Compute batch control for step `step` (see the module doc): `batch` samples
    /// ran (`None`: the batch it asked for), `small` are the workers' small-batch norms
    /// if they were measured, `big_sq` the averaged gradient's squared norm (None when
    /// the step is skipped), `loss` the training loop's, `lr` the scheduled learning
    /// rate. The controller observes the step here; on an error the counters and the estimator are unchanged, but the
    /// controller may have moved its own state (as a stateful compressor may: resume
    /// from a checkpoint).
    pub fn prepare(
        &mut self,
        step: u64,
        batch: Option<u64>,
        small: Option<SmallBatchNorms>,
        big_sq: Option<f64>,
        loss: Option<f64>,
        lr: Option<f64>,
    ) -> Result<Prepared, BatchError> {
        let batch = batch.unwrap_or(self.state.next_batch);
        let mut state = self.state.clone();
        if let (Some(norms), Some(big_sq)) = (small, big_sq) {
            state.estimator.observe(&GnsSample {
                small_batch: norms.samples as f64,
                small_sq: norms.mean_sq_norm,
                big_batch: batch as f64,
                big_sq,
            });
        }
        let grad_norm = big_sq.map(f64::sqrt);
        let estimate = state.estimator.estimate();
        let base = self.spec.base_batch as f64;
        let gain = estimate.map_or(f64::NAN, |e| e.adascale_gain(batch as f64, base));
        let lr_factor = match (&self.spec.controller, state.next_lr_scale) {
            (ControllerSpec::AdaScale { .. }, _) => {
                if gain.is_finite() {
                    gain
                } else {
                    1.0
                }
            }
            (_, Some(scale)) => scale,
            (_, None) => self
                .spec
                .lr_scale
                .factor(state.next_batch, self.spec.base_batch),
        };
        state.samples = state.samples.saturating_add(batch);
        state.progress = match self.spec.controller {
            ControllerSpec::AdaScale { .. } => state.progress + lr_factor,
            _ => state.samples as f64 / base,
        };
        let metrics = BatchMetrics {
            step,
            samples: state.samples,
            samples_per_epoch: self.samples_per_epoch,
            batch,
            loss,
            grad_norm,
            grad_sq_estimate: estimate.map(|e| e.grad_sq),
            grad_variance: estimate.map(|e| e.trace_sigma),
            lr: lr.map(|lr| lr * lr_factor),
        };
        let decision = self
            .controller
            .observe(&metrics)
            .map_err(|error| self.controller_error(step, error))?;
        let next_batch = self.spec.bounds.apply(decision.batch as f64)?;
        let next_lr_scale = match decision.lr_scale {
            Some(scale) if !(scale.is_finite() && scale > 0.0) => {
                return Err(self.controller_error(
                    step,
                    regimen_plugin::ControllerError::Failed(format!(
                        "answered the learning-rate factor {scale}, which is not positive"
                    )),
                ));
            }
            other => other,
        };
        let report = BatchReport {
            batch,
            samples: state.samples,
            progress: self.state.progress,
            lr_factor,
            noise_scale: estimate.map_or(f64::NAN, |e| e.noise_scale()),
            gain,
            next_batch,
        };
        state.next_batch = next_batch;
        state.next_lr_scale = next_lr_scale;
        Ok(Prepared { state, report })
    }

    /// Keep a prepared step; returns its report.
    pub fn commit(&mut self, prepared: Prepared) -> BatchReport {
        self.state = prepared.state;
        prepared.report
    }

    /// The whole state, for a checkpoint.
    pub fn save(&self) -> Result<ControlState, BatchError> {
        let mut state = self.state.clone();
        self.controller
            .save_state(&mut state.controller)
            .map_err(|error| BatchError::State(format!("saving the controller: {error}")))?;
        Ok(state)
    }

    /// Restore what [`BatchControl::save`] returned.
    pub fn load(&mut self, mut state: ControlState) -> Result<(), BatchError> {
        if state.next_batch == 0 || !state.progress.is_finite() {
            return Err(BatchError::State(format!(
                "next batch {} at progress {}",
                state.next_batch, state.progress
            )));
        }
        self.controller
            .load_state(&state.controller)
            .map_err(|error| BatchError::State(format!("the controller's: {error}")))?;
        state.controller.clear();
        self.state = state;
        Ok(())
    }

    fn controller_error(&self, step: u64, error: regimen_plugin::ControllerError) -> BatchError {
        BatchError::Controller {
            name: self.spec.controller.name().to_owned(),
            step,
            error,
        }
    }
}

/// The estimator's decay for controllers that do not set one (the estimate is then
/// only reported, in the trace).
const DEFAULT_EMA: f64 = 0.95;
