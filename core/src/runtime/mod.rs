//! The training-step runtime: a compiled strategy bound to a model's parameters.
//! A training loop hands a [`Stepper`] its gradients each step; the stepper unscales
//! and checks them, exchanges them with the other data-parallel workers (compressed
//! per the strategy, through a [`Communicator`](crate::comm::Communicator)), clips,
//! applies the per-parameter rules and the optimizer to its f32 master weights, writes
//! the parameters back in the model's dtype, and returns a [`StepReport`].

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::backend::BackendError;
use crate::batch::{BatchReport, SmallBatchNorms};
use crate::comm::CommError;
use crate::compress::{BuildError, CompressError};
use crate::strategy::DType;

mod binding;
mod checkpoint;
mod compression;
mod glob;
mod optimizer;
mod scaler;
mod stepper;

pub use binding::{Binding, BoundCompression, BoundParam, ErrorFeedback};
pub use checkpoint::{
    read_checkpoint, write_checkpoint, CheckpointData, CheckpointError, CHECKPOINT_FORMAT_VERSION,
};
pub use compression::{BuildCompressor, CompressorRegistry, MAX_ROUNDS};
pub use glob::{Glob, GlobError};
pub use scaler::{LossScaler, ScaleDecision};
pub use stepper::{Stepper, StepperOptions};

/// One parameter of the model, as the training loop declares it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamSpec {
    /// Framework-style name (`layers.0.weight`).
    pub name: String,
    /// Shape; the element count is its product.
    pub shape: Vec<usize>,
    /// Element type of the model's copy (f32, or the script's precision dtype).
    pub dtype: DType,
    /// Layer depth for layer-wise decay, if the model knows it.
    pub depth: Option<u32>,
}

impl ParamSpec {
    /// An f32 parameter without a declared depth.
    pub fn new(name: impl Into<String>, shape: &[usize]) -> Self {
        Self {
            name: name.into(),
            shape: shape.to_vec(),
            dtype: DType::F32,
            depth: None,
        }
    }

    /// The same parameter with another dtype.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// The same parameter with a layer depth.
    pub fn with_depth(mut self, depth: u32) -> Self {
        self.depth = Some(depth);
        self
    }

    /// Number of elements (saturating at `usize::MAX` for a shape whose product
    /// overflows; binding refuses such a shape).
    pub fn numel(&self) -> usize {
        self.checked_numel().unwrap_or(usize::MAX)
    }

    /// Number of elements, `None` when the product of the shape overflows.
    pub(crate) fn checked_numel(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, &dim| acc.checked_mul(dim))
    }
}

/// Measurements the training loop reports with a step (recorded in the trace; later
/// policies react to them).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Training loss of this step (unscaled), if known.
    pub loss: Option<f64>,
    /// Samples in this step's global batch (all workers together), when it differs
    /// from what batch control asked for (the shorter last batch of an epoch); `None`:
    /// the batch control's [`Stepper::next_batch`]. Ignored without batch control.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<u64>,
    /// This worker's gradient norms at its small batch size, for the gradient noise
    /// estimator (see [`SmallBatchNorms`]); `None` when not measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub small_batch: Option<SmallBatchNorms>,
}

impl Metrics {
    /// Only the training loss.
    pub fn from_loss(loss: f64) -> Self {
        Self {
            loss: Some(loss),
            ..Self::default()
        }
    }
}

/// What one step did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Step index (0-based) of the schedules that were in force.
    pub step: u64,
    /// Optimizer updates applied so far (skipped steps do not count).
    pub updates: u64,
    /// Whether the step was skipped (non-finite gradients).
    pub skipped: bool,
    /// The loss scale the gradients of this step were computed with.
    pub loss_scale: f64,
    /// The loss scale to use for the next step.
    pub next_loss_scale: f64,
    /// Global L2 norm of the unscaled gradients before clipping (NaN when skipped:
    /// loading stops at the first non-finite gradient). With compression or several
    /// workers it is the norm of the gradient the optimizer uses — the workers'
    /// decoded average — as PyTorch DDP users clip after the allreduce.
    pub grad_norm: f64,
    /// The same after clipping (NaN when skipped).
    pub clipped_grad_norm: f64,
    /// L2 norm of the change of all f32 master weights, `sqrt(Σ (w_new − w_old)²)`
    /// (0 when skipped).
    pub update_norm: f64,
    /// Global hyperparameter values of this step (`lr`, `momentum`, …) as the graph
    /// produced them, in graph output order.
    pub scalars: Vec<(String, f64)>,
    /// The effective lr of each parameter group bin (see [`Binding::lr_bins`]), after
    /// group overrides and layer decay: one entry per distinct rule set.
    pub group_lrs: Vec<(String, f64)>,
    /// Min / mean / max of the trust ratios applied this step (LARS/LAMB), if any.
    pub trust_ratio: Option<TrustSummary>,
    /// The training loop's loss, if reported.
    pub loss: Option<f64>,
    /// Gradient compression this step: one entry per distinct (rule, method) — see
    /// [`CompressionReport`]; empty when no gradient is compressed or exchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compression: Vec<CompressionReport>,
    /// Bytes this worker sent through its communicator during the step (every
    /// exchange, plus the one-element allreduce that agrees on skipping).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub wire_bytes_sent: u64,
    /// Bytes this worker received during the step.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub wire_bytes_received: u64,
    /// Batch control this step (`None` without a `batch` statement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchReport>,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// What one compression rule did in one step on this worker, summed over the
/// parameters it compresses with one method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompressionReport {
    /// The rule, named like its graph outputs: `compress` (top level, or the implicit
    /// dense exchange of a multi-worker run without one), `group2.compress`.
    pub label: String,
    /// The method (`topk`).
    pub method: String,
    /// Parameters compressed.
    pub tensors: usize,
    /// Their gradients as dense f32: 4 bytes per element (0 on a skipped step).
    pub dense_bytes: u64,
    /// Bytes of every payload this worker produced, headers and every round
    /// included (0 on a skipped step).
    pub payload_bytes: u64,
    /// Bytes this worker's communicator sent for these parameters (0 with one worker).
    pub wire_bytes_sent: u64,
    /// `‖x − r‖ / ‖x‖` over these parameters, where `x` is what was compressed
    /// (gradient plus residual) and `r` its reconstruction (this worker's own payload
    /// decoded, or the average for methods without one); 0 when nothing was lost, NaN
    /// on a skipped step.
    pub relative_error: f64,
}

impl CompressionReport {
    /// `dense_bytes / payload_bytes`: how many times smaller the payload is (NaN on a
    /// skipped step).
    pub fn ratio(&self) -> f64 {
        self.dense_bytes as f64 / self.payload_bytes as f64
    }
}

/// Summary of per-tensor trust ratios in one step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrustSummary {
    /// Smallest ratio.
    pub min: f64,
    /// Mean over tensors that use one.
    pub mean: f64,
    /// Largest ratio.
    pub max: f64,
}

/// Errors of binding and stepping. Every variant leaves parameters and state as they
/// were before the call, with two exceptions described in the stepper's
/// documentation: a backend failing halfway through an update, and a compressor or
/// communicator failing during the exchange (a stateful compressor's own state may
/// have advanced; the weights, moments, counters and residuals have not).
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// The strategy or graph is inconsistent (a missing output, a bad glob, …).
    #[error("invalid strategy: {0}")]
    Strategy(String),
    /// Batch-size control could not start or go on.
    #[error(transparent)]
    Batch(#[from] crate::batch::BatchError),
    /// `lr` is not set by the script.
    #[error("the script sets no learning rate (`lr = …`)")]
    MissingLr,
    /// Two parameters share a name.
    #[error("parameter `{0}` is declared twice")]
    DuplicateParam(String),
    /// A parameter's dtype is neither f32 nor the script's precision dtype.
    #[error("parameter `{name}` is {found}, but the script's precision is {precision} (parameters may be f32 or {precision})")]
    DTypeNotAllowed {
        /// Parameter name.
        name: String,
        /// Its dtype.
        found: &'static str,
        /// The script's precision.
        precision: &'static str,
    },
    /// The number of tensors passed does not match the binding.
    #[error("{what}: expected {expected} tensors (one per bound parameter), got {actual}")]
    TensorCount {
        /// `parameters` or `gradients`.
        what: &'static str,
        /// Bound parameters.
        expected: usize,
        /// Tensors passed.
        actual: usize,
    },
    /// A tensor does not match its parameter's shape or dtype.
    #[error("{what} for `{name}`: expected {expected_len} {expected_dtype} elements, got {actual_len} {actual_dtype}")]
    TensorMismatch {
        /// `parameter`, `gradient` or `initial value`.
        what: &'static str,
        /// Parameter name.
        name: String,
        /// Elements expected.
        expected_len: usize,
        /// Dtype expected.
        expected_dtype: &'static str,
        /// Elements passed.
        actual_len: usize,
        /// Dtype passed.
        actual_dtype: &'static str,
    },
    /// A schedule produced a value the optimizer cannot use (NaN, inf, negative lr…).
    #[error("at step {step}, `{name}` is {value}: {reason}")]
    BadHyperparameter {
        /// Step index.
        step: u64,
        /// The output (e.g. `lr`, `group2.weight_decay`).
        name: String,
        /// The offending value.
        value: f64,
        /// Why it is refused.
        reason: &'static str,
    },
    /// An overflow at the minimum loss scale with `at_min: error`.
    #[error("at step {step}, gradients overflowed with the loss scale already at its minimum {scale}; the run cannot make progress in this precision (set `at_min: skip` to keep skipping)")]
    LossScaleAtMinimum {
        /// Step index.
        step: u64,
        /// The minimum scale.
        scale: f64,
    },
    /// A parameter index beyond the bound parameters.
    #[error("no parameter {index}: {count} parameters are bound")]
    NoSuchParam {
        /// The index asked for.
        index: usize,
        /// Bound parameters.
        count: usize,
    },
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Saving or loading a checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A parameter's compressor could not be built (unknown method, refused
    /// arguments).
    #[error("parameter `{param}`: cannot build the `{method}` compressor: {error}")]
    CompressorBuild {
        /// Parameter name.
        param: String,
        /// The method.
        method: String,
        /// Why.
        error: BuildError,
    },
    /// A compressor failed while compressing or decoding a gradient.
    #[error("at step {step}, the `{method}` compressor of `{param}` failed: {error}")]
    Compress {
        /// Step index.
        step: u64,
        /// Parameter name.
        param: String,
        /// The method.
        method: String,
        /// What the compressor reported.
        error: CompressError,
    },
    /// A compressor could not save its state for a checkpoint.
    #[error("the `{method}` compressor of `{param}` cannot save its state: {error}")]
    CompressorState {
        /// Parameter name.
        param: String,
        /// The method.
        method: String,
        /// What the compressor reported.
        error: CompressError,
    },
    /// A collective with the other workers failed; the communicator is unusable
    /// afterwards (restart the workers from a checkpoint).
    #[error("at step {step}, exchanging {during} with the other workers failed: {error}")]
    Communication {
        /// Step index.
        step: u64,
        /// What was being exchanged: `the gradient of `w` (`topk`)`, or `the
        /// non-finite flag`.
        during: String,
        /// What the communicator reported.
        error: CommError,
    },
}
