//! The [`Stepper`]: a compiled strategy bound to a model's parameters, executing one
//! training step per call and saving/restoring its whole state.
//!
//! # One step
//!
//! The order follows the pipeline of the design (and PyTorch's AMP recipe:
//! `scaler.unscale_`, `clip_grad_norm_`, `scaler.step`, `scaler.update`,
//! `scheduler.step`; with several workers, PyTorch DDP's allreduce of the gradients
//! before clipping):
//!
//! 1. **Validate the call**: one parameter and one gradient per bound parameter, each
//!    of the bound length and of the parameter's dtype.
//! 2. **Evaluate the graph** at the current step and check every hyperparameter a
//!    parameter reads (finite; lr, momentum, weight decay, eps, trust ≥ 0; betas in
//!    [0, 1); `clip_norm` > 0; zero dampening with Nesterov) and every scheduled
//!    compressor argument (finite).
//! 3. **Load the gradients**, multiplied by `1/scale`. With several workers, a
//!    one-element allreduce of a "non-finite" flag makes every worker skip together.
//!    If any element (on any worker) is not finite the step is *skipped*: the scaler
//!    backs off (or spends hysteresis), weights, moments, update counters,
//!    error-feedback residuals and compressor state stay as they were, but the
//!    schedules still advance, as PyTorch's `scheduler.step()` runs even when
//!    `scaler.step(optimizer)` skipped the update. A skipped step reports `grad_norm`
//!    and `clipped_grad_norm` as NaN (loading stops at the first non-finite tensor, so
//!    there is no norm to report) and `update_norm` 0.
//! 4. **Exchange** (only when some parameter has a compressor, or with several
//!    workers): each compressed parameter's gradient, plus its error-feedback residual,
//!    is compressed, combined with the other workers' (allreduce of summable payloads,
//!    or allgather and decode in rank order), and replaced by the decoded average;
//!    with several workers every parameter is exchanged, those without a `compress`
//!    rule through the dense `none` method. The pipeline is described in the
//!    compression module. With one worker and no compression nothing of this runs,
//!    and the step is exactly what it was without compression support.
//! 5. **Clip** (when the graph has a `clip_norm` output), as
//!    `torch.nn.utils.clip_grad_norm_`: `coef = clip_norm / (‖g‖ + 1e-6)`, and every
//!    gradient is multiplied by `coef` when it is below 1. `‖g‖` is the norm of the
//!    gradient the optimizer will use: the averaged, decoded one after an exchange.
//! 6. **Update** each parameter's f32 master weights with its own hyperparameters (see
//!    the optimizer module for each rule).
//! 7. **Write back** the master weights into the caller's parameters, rounded to the
//!    parameter's dtype.
//! 8. **Commit**: the schedules advance, the counters, the loss scaler and the
//!    error-feedback residuals move on.
//!
//! # Errors leave everything as it was
//!
//! Everything that can be wrong with the input is checked before any state is
//! written: on an error the master weights, moments, counters, loss scale, schedule
//! position, residuals and the caller's parameters are unchanged, and the same call
//! can be retried. The exceptions: a failure of the backend itself *during* the
//! update, which a device backend could report halfway (the CPU backend cannot fail
//! there); and a compressor or communicator failure during the exchange, after which
//! the weights, moments, counters, scaler, schedules and residuals are still
//! unchanged but a stateful compressor (PowerSGD, DGC) may have advanced its own
//! state, and a communicator is unusable — restart the workers from a checkpoint. A
//! batch controller that fails likewise leaves everything but its own state as it
//! was.
//!
//! # Workers
//!
//! [`StepperOptions`] gives the stepper its [`Communicator`] (default:
//! [`SingleProcess`]), the run's seed for the compressors (the same on every worker;
//! with the rank, the step and the tensor index it keys every random draw) and the
//! [`CompressorRegistry`] methods are looked up in. Each worker runs its own stepper
//! with its own gradients; as every worker decodes the same average, all of them hold
//! bit-identical master weights after every step.
//!
//! # Update norm
//!
//! [`StepReport::update_norm`] is `‖Δw‖`, the L2 norm of the change of all f32 master
//! weights, every element's change being the f32 difference `w_new − w_old`. The
//! update kernels measure it in the pass that applies the update (see the backend
//! module), so it is always reported and costs no extra pass over the weights.
//!
//! # Checkpoints
//!
//! [`Stepper::save`] writes one checkpoint file (see the checkpoint module) whose
//! header holds the script's fingerprint, the schedule cursor, the loss scaler, the
//! update counters and the parameter list, and whose tensors are the master weights
//! (`master/NAME`) and optimizer moments (`momentum/NAME`, `exp_avg/NAME`,
//! `exp_avg_sq/NAME`, `max_exp_avg_sq/NAME`). With compression, the header also
//! records the seed, the rank and world size and each compressor (method, error
//! feedback, bytes of state), and the tensors include the residuals (`residual/NAME`)
//! and the compressors' state (`compressor_state/NAME`, bytes packed as the
//! compression module describes). Each worker saves its own file: residuals differ
//! between workers. [`Stepper::load`] refuses a checkpoint of another script or
//! another parameter list, compressor state of another rank, world size or seed, and
//! resumes bit for bit.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::binding::{bind, Binding, Plan};
use super::compression::{pack_state, unpack_state, CompressorRegistry, Pipeline};
use super::optimizer::{self, Hypers, ParamState};
use super::{
    read_checkpoint, write_checkpoint, CheckpointError, CompressionReport, LossScaler, Metrics,
    ParamSpec, RuntimeError, ScaleDecision, StepReport, TrustSummary,
};
use crate::backend::{Backend, HostTensor, HostTensorMut};
use crate::batch::control::{ControlState, Prepared};
use crate::batch::{BatchControl, BatchReport, SmallBatchNorms};
use crate::comm::{Communicator, SingleProcess, Traffic};
use crate::graph::{Evaluator, ScalarGraph};
use crate::loader::PluginSet;
use crate::strategy::{DType, Hyper, OptimizerKind, Strategy};

/// The `format` field of a stepper checkpoint's header.
const STATE_FORMAT: &str = "regimen-stepper";
/// Version of the header's content (the container has its own version). Compression
/// added optional fields only: older checkpoints still load.
const STATE_VERSION: u32 = 1;
/// Tensor-name prefix of the error-feedback residuals.
const RESIDUAL_ROLE: &str = "residual";
/// Tensor-name prefix of the compressors' packed state.
const STATE_ROLE: &str = "compressor_state";

/// A strategy bound to a model's parameters, with the state of a run: f32 master
/// weights, optimizer moments, the loss scaler and the schedules' position.
pub struct Stepper<B: Backend> {
    backend: B,
    strategy: Strategy,
    binding: Binding,
    plan: Plan,
    /// The parameters as declared.
    specs: Vec<ParamSpec>,
    evaluator: Evaluator,
    scaler: LossScaler,
    /// The value table of the current step: graph outputs, then defaults.
    values: Vec<f64>,
    states: Vec<ParamState<B::Tensor>>,
    /// LAMB's direction: one tensor per distinct parameter length, shared by the
    /// parameters of that length (empty for the other optimizers).
    scratch: Vec<B::Tensor>,
    fingerprint: String,
    /// Updates applied (steps not skipped).
    updates: u64,
    /// The other workers.
    comm: Box<dyn Communicator>,
    /// The compressors, `None` when nothing is exchanged.
    compression: Option<Pipeline>,
    /// The run's seed for the compressors.
    seed: u64,
    /// Per parameter, Σ g² of this step's gradient (used only with compression).
    grad_sum_squares: Vec<f64>,
    /// Batch-size control (`batch …`), which also moves the schedules' clock.
    batch: Option<BatchControl>,
    /// The position of the `lr` output among the graph's outputs.
    lr_output: Option<usize>,
}

/// How a [`Stepper`] talks to the other workers of a data-parallel run.
pub struct StepperOptions {
    /// The collectives (default [`SingleProcess`]: one worker).
    pub communicator: Box<dyn Communicator>,
    /// The run's seed for the compressors' random draws; the same on every worker
    /// (default 0).
    pub seed: u64,
    /// Where compressors are looked up by method name (default: the built-in ones).
    pub compressors: CompressorRegistry,
    /// Where a `batch` statement's plugin controller is looked up (the script's
    /// plugins; default none).
    pub plugins: PluginSet,
    /// The dataset's size, which batch controllers may count epochs with.
    pub samples_per_epoch: Option<u64>,
}

impl Default for StepperOptions {
    fn default() -> Self {
        Self {
            communicator: Box::new(SingleProcess),
            seed: 0,
            compressors: CompressorRegistry::new(),
            plugins: PluginSet::new(),
            samples_per_epoch: None,
        }
    }
}

impl std::fmt::Debug for StepperOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepperOptions")
            .field("rank", &self.communicator.rank())
            .field("world", &self.communicator.world())
            .field("seed", &self.seed)
            .field("compressors", &self.compressors)
            .finish()
    }
}

impl StepperOptions {
    /// One worker, seed 0, the built-in compressors.
    pub fn new() -> Self {
        Self::default()
    }

    /// Exchange gradients through `communicator` (e.g. one of
    /// [`ThreadCluster::new`](crate::comm::ThreadCluster::new)'s).
    pub fn with_communicator(mut self, communicator: Box<dyn Communicator>) -> Self {
        self.communicator = communicator;
        self
    }

    /// Use `seed` for the compressors' random draws.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Look compressors up in `registry`.
    pub fn with_compressors(mut self, registry: CompressorRegistry) -> Self {
        self.compressors = registry;
        self
    }

    /// Look a `batch` statement's plugin controller up in `plugins`.
    pub fn with_plugins(mut self, plugins: PluginSet) -> Self {
        self.plugins = plugins;
        self
    }

    /// Tell batch controllers the dataset's size.
    pub fn with_samples_per_epoch(mut self, samples: Option<u64>) -> Self {
        self.samples_per_epoch = samples;
        self
    }
}

/// What a checkpoint records for one parameter.
#[derive(Serialize, Deserialize)]
struct ParamRecord {
    name: String,
    shape: Vec<usize>,
    dtype: DType,
    depth: Option<u32>,
    updates: u64,
    momentum_initialised: bool,
}

/// A stepper checkpoint's header.
#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    fingerprint: String,
    backend: String,
    updates: u64,
    evaluator: Evaluator,
    scaler: LossScaler,
    params: Vec<ParamRecord>,
    /// Absent when nothing was exchanged (so such checkpoints are unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    compression: Option<CompressionRecord>,
    /// Absent without batch control.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    batch: Option<ControlState>,
}

/// What a checkpoint records about the compressors.
#[derive(Serialize, Deserialize)]
struct CompressionRecord {
    seed: u64,
    rank: usize,
    world: usize,
    params: Vec<CompressorRecord>,
}

/// One compressed parameter in a checkpoint.
#[derive(Serialize, Deserialize)]
struct CompressorRecord {
    name: String,
    method: String,
    /// A `residual/NAME` tensor is stored.
    error_feedback: bool,
    /// Bytes of compressor state in `compressor_state/NAME` (none stored when 0).
    state_bytes: u64,
}

impl<B: Backend> Stepper<B> {
    /// Bind `strategy` and `graph` to `params`. `initial` holds each parameter's
    /// initial values (same order, the parameter's dtype, its element count); they
    /// become the f32 master weights.
    pub fn new(
        backend: B,
        graph: ScalarGraph,
        strategy: Strategy,
        params: &[ParamSpec],
        initial: &[HostTensor<'_>],
    ) -> Result<Self, RuntimeError> {
        Self::new_with(
            backend,
            graph,
            strategy,
            params,
            initial,
            StepperOptions::default(),
        )
    }

    /// [`Stepper::new`] as one worker of a data-parallel run (see
    /// [`StepperOptions`]). Every worker must bind the same script to the same
    /// parameters with the same initial values and seed.
    pub fn new_with(
        backend: B,
        graph: ScalarGraph,
        strategy: Strategy,
        params: &[ParamSpec],
        initial: &[HostTensor<'_>],
        options: StepperOptions,
    ) -> Result<Self, RuntimeError> {
        Self::build(backend, graph, strategy, params, initial, true, options)
    }

    /// Binding, then the initial values (their dtype must be the parameter's when
    /// `exact_dtype`; a checkpoint's masters are f32), then allocation.
    fn build(
        backend: B,
        graph: ScalarGraph,
        strategy: Strategy,
        params: &[ParamSpec],
        initial: &[HostTensor<'_>],
        exact_dtype: bool,
        options: StepperOptions,
    ) -> Result<Self, RuntimeError> {
        let fingerprint = fingerprint(&graph, &strategy)?;
        let evaluator = Evaluator::new(graph)
            .map_err(|error| RuntimeError::Strategy(format!("malformed scalar graph: {error}")))?;
        let (mut binding, plan) = bind(evaluator.graph(), &strategy, params)?;
        let StepperOptions {
            communicator: comm,
            seed,
            compressors,
            plugins,
            samples_per_epoch,
        } = options;
        let batch = match &strategy.batch {
            Some(spec) => Some(BatchControl::new(
                spec.clone(),
                &plugins,
                samples_per_epoch,
            )?),
            None => None,
        };
        let lr_output = evaluator
            .graph()
            .outputs
            .iter()
            .position(|o| o.name == Hyper::Lr.name());
        let compression = Pipeline::build(
            &mut binding,
            &plan,
            params,
            &compressors,
            comm.world(),
            seed,
        )?;
        let scaler = LossScaler::new(&strategy.precision.loss_scale)
            .map_err(|reason| RuntimeError::Strategy(format!("loss scaling: {reason}")))?;
        if initial.len() != params.len() {
            return Err(RuntimeError::TensorCount {
                what: "initial values",
                expected: params.len(),
                actual: initial.len(),
            });
        }
        for (bound, tensor) in binding.params.iter().zip(initial) {
            if tensor.len() != bound.numel || (exact_dtype && tensor.dtype() != bound.dtype) {
                return Err(RuntimeError::TensorMismatch {
                    what: "initial value",
                    name: bound.name.clone(),
                    expected_len: bound.numel,
                    expected_dtype: bound.dtype.name(),
                    actual_len: tensor.len(),
                    actual_dtype: tensor.dtype().name(),
                });
            }
        }
        let mut states = Vec::with_capacity(params.len());
        for ((tensor, bound), &needs_momentum) in initial
            .iter()
            .zip(&binding.params)
            .zip(&plan.needs_momentum)
        {
            let mut state =
                optimizer::allocate(&backend, &strategy.optimizer, bound.numel, needs_momentum)?;
            backend.upload(*tensor, &mut state.master)?;
            states.push(state);
        }
        let mut stepper = Self {
            backend,
            values: plan.initial_values(),
            strategy,
            binding,
            plan,
            specs: params.to_vec(),
            evaluator,
            scaler,
            states,
            scratch: Vec::new(),
            fingerprint,
            updates: 0,
            grad_sum_squares: if compression.is_some() {
                vec![0.0; params.len()]
            } else {
                Vec::new()
            },
            comm,
            compression,
            seed,
            batch,
            lr_output,
        };
        stepper.allocate_scratch()?;
        Ok(stepper)
    }

    /// What applies to each parameter, and the binding's warnings.
    pub fn binding(&self) -> &Binding {
        &self.binding
    }

    /// The strategy being executed.
    pub fn strategy(&self) -> &Strategy {
        &self.strategy
    }

    /// The backend the tensors live on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The factor to multiply the loss by before the backward pass of the next step.
    pub fn loss_scale(&self) -> f64 {
        self.scaler.scale()
    }

    /// The loss scaler and its state.
    pub fn scaler(&self) -> &LossScaler {
        &self.scaler
    }

    /// The batch the next step must run (all workers together) when the script has a
    /// `batch` statement; `None`: the caller's own fixed batch.
    pub fn next_batch(&self) -> Option<u64> {
        self.batch.as_ref().map(BatchControl::next_batch)
    }

    /// The batch control, if the script has a `batch` statement.
    pub fn batch_control(&self) -> Option<&BatchControl> {
        self.batch.as_ref()
    }

    /// Index of the next step (skipped steps count: the schedules advance).
    pub fn step_index(&self) -> u64 {
        self.evaluator.step()
    }

    /// Optimizer updates applied so far (skipped steps do not count).
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// This worker's rank in `0..world()`.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// Number of data-parallel workers.
    pub fn world(&self) -> usize {
        self.comm.world()
    }

    /// The run's seed for the compressors.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Everything this worker's communicator has sent and received so far.
    pub fn traffic(&self) -> Traffic {
        self.comm.traffic()
    }

    /// The communicator, for collectives of the caller's own between steps (a run's
    /// parameter checksum); every rank must make the same calls in the same order.
    pub fn communicator_mut(&mut self) -> &mut dyn Communicator {
        self.comm.as_mut()
    }

    /// Parameter `index`'s error-feedback residual (what compression has not yet
    /// delivered, added to the next gradient), `None` when it keeps none.
    pub fn residual(&self, index: usize) -> Option<&[f32]> {
        self.compression.as_ref()?.residual(index)
    }

    /// Hex SHA-256 of the canonical JSON of the graph and the strategy: what a
    /// checkpoint must match to be loaded.
    pub fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    /// Copy parameter `index`'s f32 master weights into `out`.
    pub fn read_master(&self, index: usize, out: &mut [f32]) -> Result<(), RuntimeError> {
        let (Some(state), Some(bound)) = (self.states.get(index), self.binding.params.get(index))
        else {
            return Err(RuntimeError::NoSuchParam {
                index,
                count: self.states.len(),
            });
        };
        if out.len() != bound.numel {
            return Err(RuntimeError::TensorMismatch {
                what: "master weights",
                name: bound.name.clone(),
                expected_len: bound.numel,
                expected_dtype: DType::F32.name(),
                actual_len: out.len(),
                actual_dtype: DType::F32.name(),
            });
        }
        self.backend
            .download(&state.master, HostTensorMut::F32(out))?;
        Ok(())
    }

    /// One training step (see the module documentation for the order of things).
    /// `params` receive the updated weights in their dtype; `grads` are the gradients
    /// of the loss multiplied by [`Stepper::loss_scale`]. The contents of `params` are
    /// not read: the master weights are the truth.
    pub fn step(
        &mut self,
        params: &mut [HostTensorMut<'_>],
        grads: &[HostTensor<'_>],
        metrics: &Metrics,
    ) -> Result<StepReport, RuntimeError> {
        // 1. The call.
        self.check_tensors(
            "parameters",
            "parameter",
            params.iter().map(|p| (p.len(), p.dtype())),
        )?;
        self.check_tensors(
            "gradients",
            "gradient",
            grads.iter().map(|g| (g.len(), g.dtype())),
        )?;

        // 2. Hyperparameters of this step, evaluated without moving the cursor so that
        // an error leaves it in place; the commit (or a skip) only advances it.
        // With batch control the schedules run on its clock (samples / base batch).
        let step = self.evaluator.step();
        let clock = self
            .batch
            .as_ref()
            .map_or(step as f64, BatchControl::progress);
        let outputs = self.evaluator.graph().outputs.len();
        self.evaluator
            .graph()
            .eval_into(clock, &mut self.values[..outputs]);
        self.check_hypers(step)?;
        let lr = self.lr_output.map(|index| self.values[index]);

        // 3. Gradients: unscale and check; with several workers, skip together.
        let traffic_before = self.comm.traffic();
        let inverse_scale = self.scaler.inverse_scale();
        let mut finite = true;
        let mut sum_squares = 0.0;
        for (index, (state, grad)) in self.states.iter_mut().zip(grads).enumerate() {
            let stats = self
                .backend
                .load_gradient(*grad, inverse_scale, &mut state.grad)?;
            if !stats.finite {
                finite = false;
                break;
            }
            sum_squares += stats.sum_squares;
            if let Some(slot) = self.grad_sum_squares.get_mut(index) {
                *slot = stats.sum_squares;
            }
        }
        // The workers agree on skipping and, with batch control, pool their
        // small-batch norms for the noise estimator in the same allreduce.
        let mut small = metrics.small_batch;
        if self.comm.world() > 1 {
            let world = self.comm.world() as f32;
            let mut flags = [if finite { 0.0f32 } else { 1.0 }, 0.0, 0.0, 0.0];
            if let Some(norms) = small.filter(|_| self.batch.is_some()) {
                flags[1..].copy_from_slice(&[1.0, norms.mean_sq_norm as f32, norms.samples as f32]);
            }
            let flags = if self.batch.is_some() {
                &mut flags[..]
            } else {
                &mut flags[..1]
            };
            self.comm
                .allreduce_f32(flags)
                .map_err(|error| RuntimeError::Communication {
                    step,
                    during: "the non-finite flag".to_owned(),
                    error,
                })?;
            finite = flags[0] == 0.0;
            small = (flags.len() == 4 && flags[1] == world).then(|| SmallBatchNorms {
                samples: (f64::from(flags[3]) / f64::from(world)).round() as u64,
                mean_sq_norm: f64::from(flags[2]) / f64::from(world),
            });
        }
        let mut scaler = self.scaler.clone();
        let decision = scaler.update(finite, step)?;
        if decision.skip {
            let batch_report = match self.batch.as_mut() {
                Some(control) => {
                    let prepared =
                        control.prepare(step, metrics.batch, None, None, metrics.loss, lr)?;
                    Some(control.commit(prepared))
                }
                None => None,
            };
            self.evaluator.advance();
            self.scaler = scaler;
            let exchange = Exchange {
                compression: self
                    .compression
                    .as_ref()
                    .map(Pipeline::skipped_report)
                    .unwrap_or_default(),
                traffic: self.comm.traffic().since(&traffic_before),
            };
            let report = self.report(
                step,
                &decision,
                StepNorms::skipped(),
                None,
                metrics,
                exchange,
            );
            return Ok(Self::with_batch(report, batch_report));
        }

        // 4. Exchange: compress, combine with the other workers, decode the average.
        let mut compression = Vec::new();
        if let Some(pipeline) = self.compression.as_mut() {
            compression = pipeline.exchange(
                &self.backend,
                self.comm.as_mut(),
                &mut self.states,
                &self.values,
                step,
                &mut self.grad_sum_squares,
            )?;
            sum_squares = self.grad_sum_squares.iter().sum();
        }

        // Batch control sees the averaged gradient before clipping, as the noise
        // estimator's big batch; the controller decides here, before any weight moves.
        let grad_norm = sum_squares.sqrt();
        let prepared = match self.batch.as_mut() {
            Some(control) => Some(control.prepare(
                step,
                metrics.batch,
                small,
                Some(sum_squares),
                metrics.loss,
                lr,
            )?),
            None => None,
        };
        let lr_factor = prepared.as_ref().map_or(1.0, Prepared::lr_factor);

        // 5. Clipping.
        let mut clipped_grad_norm = grad_norm;
        if let Some(slot) = self.plan.clip_slot {
            let coef = self.values[slot] / (grad_norm + 1e-6);
            if coef < 1.0 {
                for state in &mut self.states {
                    self.backend.scale(&mut state.grad, coef as f32)?;
                }
                clipped_grad_norm = grad_norm * coef;
            }
        }

        // 6. The optimizer.
        let mut trust = TrustAccumulator::default();
        let mut update_sum_squares = 0.0;
        for ((state, bound), slots) in self
            .states
            .iter_mut()
            .zip(&self.binding.params)
            .zip(&self.plan.slots)
        {
            let value = |hyper: Hyper| self.values[slots[hyper as usize]];
            let hypers = Hypers {
                lr: value(Hyper::Lr) * bound.lr_scale * lr_factor,
                momentum: value(Hyper::Momentum),
                dampening: value(Hyper::Dampening),
                weight_decay: value(Hyper::WeightDecay),
                beta1: value(Hyper::Beta1),
                beta2: value(Hyper::Beta2),
                eps: value(Hyper::Eps),
                trust: value(Hyper::Trust),
            };
            let scratch = match state.scratch {
                Some(index) => self.scratch.get_mut(index),
                None => None,
            };
            let outcome = optimizer::update(
                &self.backend,
                &self.strategy.optimizer,
                state,
                &hypers,
                bound.trust_ratio,
                scratch,
            )?;
            if let Some(ratio) = outcome.trust {
                trust.add(ratio);
            }
            update_sum_squares += outcome.update_sum_squares;
        }

        // 7. Write back.
        for (state, param) in self.states.iter().zip(params.iter_mut()) {
            self.backend.download(&state.master, reborrow(param))?;
        }

        // 8. Commit.
        self.evaluator.advance();
        self.scaler = scaler;
        self.updates += 1;
        if let Some(pipeline) = self.compression.as_mut() {
            pipeline.commit();
        }
        let batch_report = prepared.and_then(|p| self.batch.as_mut().map(|c| c.commit(p)));
        let norms = StepNorms {
            grad_norm,
            clipped_grad_norm,
            update_norm: update_sum_squares.sqrt(),
        };
        let exchange = Exchange {
            compression,
            traffic: self.comm.traffic().since(&traffic_before),
        };
        let report = self.report(step, &decision, norms, trust.summary(), metrics, exchange);
        Ok(Self::with_batch(report, batch_report))
    }

    /// Write the whole state to `path` atomically. Each worker of a data-parallel run
    /// saves its own file (the error-feedback residuals differ between workers).
    pub fn save(&self, path: &Path) -> Result<(), RuntimeError> {
        let saved = match &self.compression {
            Some(pipeline) => pipeline.save()?,
            None => Vec::new(),
        };
        let compression = self.compression.as_ref().map(|_| CompressionRecord {
            seed: self.seed,
            rank: self.comm.rank(),
            world: self.comm.world(),
            params: saved
                .iter()
                .map(|entry| CompressorRecord {
                    name: entry.name.to_owned(),
                    method: entry.method.to_owned(),
                    error_feedback: entry.residual.is_some(),
                    state_bytes: entry.state.len() as u64,
                })
                .collect(),
        });
        let header = Header {
            format: STATE_FORMAT.to_owned(),
            version: STATE_VERSION,
            fingerprint: self.fingerprint.clone(),
            backend: self.backend.name().to_owned(),
            updates: self.updates,
            evaluator: self.evaluator.clone(),
            scaler: self.scaler.clone(),
            params: self
                .specs
                .iter()
                .zip(&self.states)
                .map(|(spec, state)| ParamRecord {
                    name: spec.name.clone(),
                    shape: spec.shape.clone(),
                    dtype: spec.dtype,
                    depth: spec.depth,
                    updates: state.updates,
                    momentum_initialised: state.momentum_initialised,
                })
                .collect(),
            compression,
            batch: match &self.batch {
                Some(control) => Some(control.save()?),
                None => None,
            },
        };
        let header = serde_json::to_value(&header).map_err(|error| {
            RuntimeError::Checkpoint(CheckpointError::Header {
                path: path.to_owned(),
                message: error.to_string(),
            })
        })?;

        let mut names = Vec::new();
        let mut data = Vec::new();
        for (bound, state) in self.binding.params.iter().zip(&self.states) {
            let tensors = std::iter::once(("master", &state.master)).chain(state.moments());
            for (role, tensor) in tensors {
                let mut host = vec![0.0f32; bound.numel];
                self.backend
                    .download(tensor, HostTensorMut::F32(&mut host))?;
                names.push(format!("{role}/{}", bound.name));
                data.push(host);
            }
        }
        for entry in &saved {
            if let Some(residual) = entry.residual {
                names.push(format!("{RESIDUAL_ROLE}/{}", entry.name));
                data.push(residual.to_vec());
            }
            if !entry.state.is_empty() {
                names.push(format!("{STATE_ROLE}/{}", entry.name));
                data.push(pack_state(&entry.state));
            }
        }
        let tensors: Vec<(&str, &[f32])> = names
            .iter()
            .map(String::as_str)
            .zip(data.iter().map(Vec::as_slice))
            .collect();
        write_checkpoint(path, &header, &tensors)?;
        Ok(())
    }

    /// Resume from a checkpoint written by [`Stepper::save`] for the same script
    /// (graph and strategy) and the same parameters (names and shapes; their order
    /// may differ).
    pub fn load(
        path: &Path,
        backend: B,
        graph: ScalarGraph,
        strategy: Strategy,
        params: &[ParamSpec],
    ) -> Result<Self, RuntimeError> {
        Self::load_with(
            path,
            backend,
            graph,
            strategy,
            params,
            StepperOptions::default(),
        )
    }

    /// [`Stepper::load`] as one worker of a data-parallel run: each worker loads the
    /// checkpoint it saved. Compressor state (residuals, compressors' own state) is
    /// only accepted by the same rank of the same world size with the same seed.
    pub fn load_with(
        path: &Path,
        backend: B,
        graph: ScalarGraph,
        strategy: Strategy,
        params: &[ParamSpec],
        options: StepperOptions,
    ) -> Result<Self, RuntimeError> {
        let mismatch = |reason: String| {
            RuntimeError::Checkpoint(CheckpointError::Mismatch {
                path: path.to_owned(),
                reason,
            })
        };
        let header_error = |message: String| {
            RuntimeError::Checkpoint(CheckpointError::Header {
                path: path.to_owned(),
                message,
            })
        };
        let data = read_checkpoint(path)?;

        // What kind of file, then whose, before reading the rest.
        let format = data.header.get("format").and_then(|f| f.as_str());
        if format != Some(STATE_FORMAT) {
            return Err(mismatch(format!(
                "it is not a stepper checkpoint (format {}, expected \"{STATE_FORMAT}\")",
                format.map_or_else(|| "missing".to_owned(), |f| format!("\"{f}\""))
            )));
        }
        let version = data.header.get("version").and_then(|v| v.as_u64());
        if version != Some(u64::from(STATE_VERSION)) {
            return Err(mismatch(format!(
                "its stepper state has version {}, but this build reads version {STATE_VERSION}",
                version.map_or_else(|| "missing".to_owned(), |v| v.to_string())
            )));
        }
        let ours = fingerprint(&graph, &strategy)?;
        let theirs = data.header.get("fingerprint").and_then(|f| f.as_str());
        if theirs != Some(ours.as_str()) {
            return Err(mismatch(format!(
                "checkpoint was written by a different script (fingerprint {}, this script {ours})",
                theirs.unwrap_or("missing")
            )));
        }
        let header: Header =
            serde_json::from_value(data.header).map_err(|error| header_error(error.to_string()))?;

        // The same parameters, by name.
        let declared: HashSet<&str> = params.iter().map(|p| p.name.as_str()).collect();
        let recorded: HashMap<&str, &ParamRecord> =
            header.params.iter().map(|r| (r.name.as_str(), r)).collect();
        if recorded.len() != header.params.len() {
            return Err(header_error("a parameter is recorded twice".to_owned()));
        }
        let unknown: Vec<&str> = header
            .params
            .iter()
            .map(|r| r.name.as_str())
            .filter(|name| !declared.contains(name))
            .collect();
        let missing: Vec<&str> = params
            .iter()
            .map(|p| p.name.as_str())
            .filter(|name| !recorded.contains_key(name))
            .collect();
        if !unknown.is_empty() || !missing.is_empty() {
            let mut reasons = Vec::new();
            if !unknown.is_empty() {
                reasons.push(format!(
                    "it holds parameters this run does not declare: {}",
                    quoted(&unknown)
                ));
            }
            if !missing.is_empty() {
                reasons.push(format!(
                    "this run declares parameters it does not hold: {}",
                    quoted(&missing)
                ));
            }
            return Err(mismatch(reasons.join("; ")));
        }
        for spec in params {
            let record = recorded[spec.name.as_str()];
            if record.shape != spec.shape {
                return Err(mismatch(format!(
                    "parameter `{}` has shape {:?} in the checkpoint but {:?} in this run",
                    spec.name, record.shape, spec.shape
                )));
            }
        }

        // Tensors by name; every one must be used.
        let mut tensors: HashMap<&str, &[f32]> = HashMap::with_capacity(data.tensors.len());
        for (name, values) in &data.tensors {
            if tensors.insert(name.as_str(), values.as_slice()).is_some() {
                return Err(header_error(format!("tensor `{name}` is stored twice")));
            }
        }
        let mut take = |role: &str, name: &str, numel: usize| -> Result<&[f32], RuntimeError> {
            let key = format!("{role}/{name}");
            match tensors.remove(key.as_str()) {
                Some(values) if values.len() == numel => Ok(values),
                Some(values) => Err(mismatch(format!(
                    "tensor `{key}` has {} elements, expected {numel}",
                    values.len()
                ))),
                None => Err(mismatch(format!("tensor `{key}` is missing"))),
            }
        };
        let mut masters = Vec::with_capacity(params.len());
        for spec in params {
            // An impossible shape is reported by the binding in `build`.
            let numel = spec.checked_numel().unwrap_or(0);
            masters.push(HostTensor::F32(take("master", &spec.name, numel)?));
        }
        let mut stepper = Self::build(backend, graph, strategy, params, &masters, false, options)?;

        // Optimizer state.
        for (index, spec) in params.iter().enumerate() {
            let record = recorded[spec.name.as_str()];
            let numel = stepper.binding.params[index].numel;
            let state = &mut stepper.states[index];
            state.updates = record.updates;
            state.momentum_initialised = record.momentum_initialised;
            for role in ["momentum", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"] {
                if let Some(tensor) = state.moment_mut(role) {
                    let values = take(role, &spec.name, numel)?;
                    stepper.backend.upload(HostTensor::F32(values), tensor)?;
                }
            }
        }
        // Compression: residuals and the compressors' own state.
        if let Some(pipeline) = stepper.compression.as_mut() {
            let no_records = Vec::new();
            let records = header
                .compression
                .as_ref()
                .map_or(&no_records, |c| &c.params);
            if let Some(record) = &header.compression {
                let holds_state = record
                    .params
                    .iter()
                    .any(|p| p.error_feedback || p.state_bytes > 0);
                let (rank, world) = (stepper.comm.rank(), stepper.comm.world());
                if holds_state && (record.rank, record.world) != (rank, world) {
                    return Err(mismatch(format!(
                        "its compression state belongs to worker {} of {}, but this is worker \
                         {rank} of {world}",
                        record.rank, record.world
                    )));
                }
                if record.seed != stepper.seed && !record.params.is_empty() {
                    return Err(mismatch(format!(
                        "its compressors ran with seed {}, but this run uses seed {}",
                        record.seed, stepper.seed
                    )));
                }
            }
            let compressed: Vec<(String, String, bool)> = pipeline
                .methods()
                .map(|(name, method, ef)| (name.to_owned(), method.to_owned(), ef))
                .collect();
            for (name, method, error_feedback) in compressed {
                let record = records.iter().find(|r| r.name == name);
                if let Some(record) = record {
                    if record.method != method {
                        return Err(mismatch(format!(
                            "`{name}` was compressed with `{}`, but this run uses `{method}`",
                            record.method
                        )));
                    }
                }
                if error_feedback {
                    let numel = stepper.binding.param(&name).map_or(0, |p| p.numel);
                    let values = take(RESIDUAL_ROLE, &name, numel)?;
                    pipeline.restore_residual(&name, values).map_err(mismatch)?;
                }
                let state_bytes = record.map_or(0, |r| r.state_bytes);
                if state_bytes > 0 {
                    let count = usize::try_from(state_bytes.div_ceil(3)).unwrap_or(usize::MAX);
                    let values = take(STATE_ROLE, &name, count)?;
                    let bytes = unpack_state(values, state_bytes).map_err(|reason| {
                        header_error(format!("compressor state of `{name}`: {reason}"))
                    })?;
                    pipeline.restore_state(&name, &bytes).map_err(mismatch)?;
                }
            }
        }
        if !tensors.is_empty() {
            let mut extra: Vec<&str> = tensors.keys().copied().collect();
            extra.sort_unstable();
            return Err(mismatch(format!(
                "it holds tensors this run does not use: {}",
                quoted(&extra)
            )));
        }

        // Schedules and loss scaling.
        header
            .evaluator
            .validate()
            .map_err(|error| header_error(format!("schedule state: {error}")))?;
        if header.evaluator.graph() != stepper.evaluator.graph() {
            return Err(mismatch(
                "its schedule state holds a different scalar graph".to_owned(),
            ));
        }
        if header.scaler.spec() != &stepper.strategy.precision.loss_scale {
            return Err(mismatch(
                "its loss scaler runs a different loss-scaling spec".to_owned(),
            ));
        }
        match (stepper.batch.as_mut(), header.batch) {
            (Some(control), Some(state)) => control.load(state)?,
            (None, None) => {}
            (Some(_), None) => {
                return Err(mismatch(
                    "it holds no batch-control state, but this script has a `batch` statement"
                        .to_owned(),
                ))
            }
            (None, Some(_)) => {
                return Err(mismatch(
                    "it holds batch-control state, but this script has no `batch` statement"
                        .to_owned(),
                ))
            }
        }
        stepper.evaluator = header.evaluator;
        stepper.scaler = header.scaler;
        stepper.updates = header.updates;
        Ok(stepper)
    }

    /// Allocate LAMB's direction tensors (one per distinct parameter length).
    fn allocate_scratch(&mut self) -> Result<(), RuntimeError> {
        let needed = self.strategy.optimizer.kind == OptimizerKind::Lamb;
        if !needed || !self.scratch.is_empty() || self.states.is_empty() {
            return Ok(());
        }
        let mut lengths: Vec<usize> = Vec::new();
        let mut indices = Vec::with_capacity(self.states.len());
        for numel in self.binding.params.iter().map(|bound| bound.numel) {
            let index = match lengths.iter().position(|&n| n == numel) {
                Some(index) => index,
                None => {
                    lengths.push(numel);
                    lengths.len() - 1
                }
            };
            indices.push(index);
        }
        let mut scratch = Vec::with_capacity(lengths.len());
        for &numel in &lengths {
            scratch.push(self.backend.zeros(numel)?);
        }
        self.scratch = scratch;
        for (state, index) in self.states.iter_mut().zip(indices) {
            state.scratch = Some(index);
        }
        Ok(())
    }

    fn check_tensors(
        &self,
        what: &'static str,
        each: &'static str,
        tensors: impl ExactSizeIterator<Item = (usize, DType)>,
    ) -> Result<(), RuntimeError> {
        if tensors.len() != self.binding.params.len() {
            return Err(RuntimeError::TensorCount {
                what,
                expected: self.binding.params.len(),
                actual: tensors.len(),
            });
        }
        for (bound, (len, dtype)) in self.binding.params.iter().zip(tensors) {
            if len != bound.numel || dtype != bound.dtype {
                return Err(RuntimeError::TensorMismatch {
                    what: each,
                    name: bound.name.clone(),
                    expected_len: bound.numel,
                    expected_dtype: bound.dtype.name(),
                    actual_len: len,
                    actual_dtype: dtype.name(),
                });
            }
        }
        Ok(())
    }

    /// Every hyperparameter value this step reads must be usable.
    fn check_hypers(&self, step: u64) -> Result<(), RuntimeError> {
        let bad = |slot: usize, reason: &'static str| RuntimeError::BadHyperparameter {
            step,
            name: self.slot_name(slot),
            value: self.values[slot],
            reason,
        };
        for &(slot, hyper) in &self.plan.checks {
            let value = self.values[slot];
            if !value.is_finite() {
                return Err(bad(slot, "not a finite number"));
            }
            let problem = match hyper {
                Hyper::Lr if value < 0.0 => Some("a negative learning rate"),
                Hyper::Momentum if value < 0.0 => Some("a negative momentum"),
                Hyper::WeightDecay if value < 0.0 => Some("a negative weight decay"),
                Hyper::Eps if value < 0.0 => Some("a negative epsilon"),
                Hyper::Trust if value < 0.0 => Some("a negative trust coefficient"),
                Hyper::Beta1 | Hyper::Beta2 if !(0.0..1.0).contains(&value) => {
                    Some("a beta outside [0, 1)")
                }
                Hyper::Dampening if self.strategy.optimizer.nesterov && value != 0.0 => {
                    Some("Nesterov momentum requires zero dampening")
                }
                _ => None,
            };
            if let Some(reason) = problem {
                return Err(bad(slot, reason));
            }
        }
        if let Some(slot) = self.plan.clip_slot {
            let value = self.values[slot];
            if !value.is_finite() {
                return Err(bad(slot, "not a finite number"));
            }
            if value <= 0.0 {
                return Err(bad(slot, "a clipping threshold that is not positive"));
            }
        }
        for rule in &self.plan.compress_rules {
            for &(_, slot) in &rule.scheduled {
                if !self.values[slot].is_finite() {
                    return Err(bad(slot, "not a finite number"));
                }
            }
        }
        Ok(())
    }

    /// The graph output (or default) behind a value-table entry.
    fn slot_name(&self, slot: usize) -> String {
        let outputs = &self.evaluator.graph().outputs;
        match outputs.get(slot) {
            Some(output) => output.name.clone(),
            None => Hyper::ALL
                .get(slot - outputs.len())
                .map_or_else(|| "?".to_owned(), |h| format!("default {}", h.name())),
        }
    }

    fn report(
        &self,
        step: u64,
        decision: &ScaleDecision,
        norms: StepNorms,
        trust_ratio: Option<TrustSummary>,
        metrics: &Metrics,
        exchange: Exchange,
    ) -> StepReport {
        let graph = self.evaluator.graph();
        StepReport {
            step,
            updates: self.updates,
            skipped: decision.skip,
            loss_scale: decision.scale_used,
            next_loss_scale: decision.next_scale,
            grad_norm: norms.grad_norm,
            clipped_grad_norm: norms.clipped_grad_norm,
            update_norm: norms.update_norm,
            scalars: graph
                .outputs
                .iter()
                .zip(&self.values)
                .map(|(output, &value)| (output.name.clone(), value))
                .collect(),
            group_lrs: self
                .binding
                .lr_bins
                .iter()
                .zip(&self.plan.bins)
                .map(|(label, &(slot, scale))| (label.clone(), self.values[slot] * scale))
                .collect(),
            trust_ratio,
            loss: metrics.loss,
            compression: exchange.compression,
            wire_bytes_sent: exchange.traffic.bytes_sent,
            wire_bytes_received: exchange.traffic.bytes_received,
            batch: None,
        }
    }

    /// `report` with what batch control did; the bins' effective lr includes its factor.
    fn with_batch(mut report: StepReport, batch: Option<BatchReport>) -> StepReport {
        if let Some(batch) = &batch {
            for (_, lr) in &mut report.group_lrs {
                *lr *= batch.lr_factor;
            }
        }
        report.batch = batch;
        report
    }
}

/// What a step's exchange reports.
struct Exchange {
    compression: Vec<CompressionReport>,
    traffic: Traffic,
}

/// The norms a step reports.
struct StepNorms {
    grad_norm: f64,
    clipped_grad_norm: f64,
    update_norm: f64,
}

impl StepNorms {
    fn skipped() -> Self {
        Self {
            grad_norm: f64::NAN,
            clipped_grad_norm: f64::NAN,
            update_norm: 0.0,
        }
    }
}

/// Running min / sum / max of trust ratios.
#[derive(Default)]
struct TrustAccumulator {
    count: usize,
    min: f64,
    max: f64,
    sum: f64,
}

impl TrustAccumulator {
    fn add(&mut self, ratio: f64) {
        if self.count == 0 {
            self.min = ratio;
            self.max = ratio;
        } else {
            self.min = self.min.min(ratio);
            self.max = self.max.max(ratio);
        }
        self.sum += ratio;
        self.count += 1;
    }

    fn summary(&self) -> Option<TrustSummary> {
        (self.count > 0).then(|| TrustSummary {
            min: self.min,
            mean: self.sum / self.count as f64,
            max: self.max,
        })
    }
}

/// Hex SHA-256 of `serde_json::to_vec(&(graph, strategy))`.
fn fingerprint(graph: &ScalarGraph, strategy: &Strategy) -> Result<String, RuntimeError> {
    let bytes = serde_json::to_vec(&(graph, strategy))
        .map_err(|error| RuntimeError::Strategy(format!("cannot encode the script: {error}")))?;
    let digest = Sha256::digest(&bytes);
    Ok(digest.iter().map(|byte| format!("{byte:02x}")).collect())
}

fn reborrow<'a>(tensor: &'a mut HostTensorMut<'_>) -> HostTensorMut<'a> {
    match tensor {
        HostTensorMut::F32(s) => HostTensorMut::F32(s),
        HostTensorMut::F16(s) => HostTensorMut::F16(s),
        HostTensorMut::BF16(s) => HostTensorMut::BF16(s),
    }
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
