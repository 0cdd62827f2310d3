//! Tensor backends: the operations the runtime needs, behind one trait so that a
//! device-resident implementation (ArrayFire on CUDA/OpenCL) fits as well as the CPU
//! one. The runtime never reads elements on the hot path: reductions return scalars,
//! updates are fused kernels, and host data crosses only in `upload`/`download`/
//! `load_gradient`.
//!
//! Determinism: reductions are summed in a fixed order that does not depend on the
//! number of threads, so the same inputs give the same bits on any machine of the
//! same backend.
//!
//! The update kernels (`sgd_step`, `adam_step`, `axpy`) return the squared norm of
//! the change they made, `Σ (p_new − p_old)²`: each element's change is the f32
//! difference of the new and the old weight (the update itself is computed exactly
//! as the formulas below say, unaffected by the measurement), squared and summed in
//! f64 like every other reduction. The runtime's update norm is thus measured in the
//! update's own pass, at no extra memory traffic.

use half::{bf16, f16};
use thiserror::Error;

use crate::strategy::DType;

pub mod ndarray;
pub use self::ndarray::NdArrayBackend;

#[cfg(feature = "arrayfire")]
pub mod arrayfire;
#[cfg(feature = "arrayfire")]
pub use self::arrayfire::ArrayFireBackend;

/// A tensor in host memory, in one of the boundary dtypes (read side).
#[derive(Clone, Copy, Debug)]
pub enum HostTensor<'a> {
    /// f32 elements.
    F32(&'a [f32]),
    /// IEEE half elements.
    F16(&'a [f16]),
    /// bfloat16 elements.
    BF16(&'a [bf16]),
}

/// A tensor in host memory, in one of the boundary dtypes (write side).
#[derive(Debug)]
pub enum HostTensorMut<'a> {
    /// f32 elements.
    F32(&'a mut [f32]),
    /// IEEE half elements.
    F16(&'a mut [f16]),
    /// bfloat16 elements.
    BF16(&'a mut [bf16]),
}

impl HostTensor<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::F32(s) => s.len(),
            Self::F16(s) => s.len(),
            Self::BF16(s) => s.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            Self::F32(_) => DType::F32,
            Self::F16(_) => DType::F16,
            Self::BF16(_) => DType::BF16,
        }
    }
}

impl HostTensorMut<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.as_host().len()
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.as_host().dtype()
    }

    /// A read-only view of the same elements.
    pub fn as_host(&self) -> HostTensor<'_> {
        match self {
            Self::F32(s) => HostTensor::F32(s),
            Self::F16(s) => HostTensor::F16(s),
            Self::BF16(s) => HostTensor::BF16(s),
        }
    }
}

/// What a backend can fail with. The CPU backend fails only on length mismatches
/// (which the runtime rules out before calling); device backends can fail anywhere.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum BackendError {
    /// Two operands of one kernel differ in length.
    #[error("length mismatch in {kernel}: expected {expected} elements, got {actual}")]
    LengthMismatch {
        /// The kernel that was called.
        kernel: &'static str,
        /// The length of the first operand.
        expected: usize,
        /// The offending length.
        actual: usize,
    },
    /// An operand the kernel needs is missing or unusable (for example no momentum
    /// buffer for SGD with momentum ≠ 0).
    #[error("invalid operand `{operand}` of {kernel}: {reason}")]
    InvalidOperand {
        /// The kernel that was called.
        kernel: &'static str,
        /// The operand's name in the kernel's signature.
        operand: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The backend is not available in this build or on this machine.
    #[error("the {backend} backend is unavailable: {reason}")]
    Unavailable {
        /// Backend name.
        backend: &'static str,
        /// Why.
        reason: String,
    },
    /// The device library reported an error.
    #[error("{backend} error: {message}")]
    Device {
        /// Backend name.
        backend: &'static str,
        /// The library's message.
        message: String,
    },
}

/// [`BackendError::LengthMismatch`] unless `actual == expected`: the operand check
/// every kernel of every backend makes before touching memory.
pub(crate) fn check_len(
    kernel: &'static str,
    expected: usize,
    actual: usize,
) -> Result<(), BackendError> {
    if expected == actual {
        Ok(())
    } else {
        Err(BackendError::LengthMismatch {
            kernel,
            expected,
            actual,
        })
    }
}

/// The error of [`Backend::sgd_step`] called with momentum ≠ 0 but no buffer.
pub(crate) fn missing_momentum_buffer(kernel: &'static str) -> BackendError {
    BackendError::InvalidOperand {
        kernel,
        operand: "momentum_buffer",
        reason: "a momentum buffer is required when momentum ≠ 0",
    }
}

/// What loading a gradient learned about it, in one pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradStats {
    /// No NaN or ±inf anywhere (checked on the scaled input).
    pub finite: bool,
    /// Σ g² of the loaded (unscaled) gradient, accumulated in f64; meaningless when
    /// `finite` is false.
    pub sum_squares: f64,
}

/// One fused SGD-family update (PyTorch `SGD`, and LARS through `grad_scale`):
///
/// ```text
/// d = (g + weight_decay·p) · grad_scale
/// if momentum ≠ 0:
///     buf = d                                  on the first step (first_step)
///     buf = momentum·buf + (1 − dampening)·d   afterwards
///     d   = d + momentum·buf  if nesterov,  else buf
/// p = p − lr·d
/// ```
///
/// [`Backend::sgd_step`] returns `Σ (p_new − p_old)²` of this update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdStep {
    /// Learning rate applied to the final direction.
    pub lr: f32,
    /// Momentum factor; 0 means no momentum buffer is used.
    pub momentum: f32,
    /// Dampening of the gradient in the momentum sum.
    pub dampening: f32,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// The momentum buffer is uninitialised: set it to `d`.
    pub first_step: bool,
    /// Multiplies the decayed gradient before momentum (LARS's γ·local_lr; 1 for SGD).
    pub grad_scale: f32,
}

/// One fused Adam/AdamW update (PyTorch's `Adam`/`AdamW`, `capturable=False`):
///
/// ```text
/// if decoupled: p = p·(1 − lr·weight_decay)   else: g = g + weight_decay·p
/// m = beta1·m + (1 − beta1)·g
/// v = beta2·v + (1 − beta2)·g²
/// v̂ = max(v_max, v) → v_max   if amsgrad (a v_max buffer is passed), else v
/// p = p − (lr / bias_correction1) · m / (sqrt(v̂) / sqrt(bias_correction2) + eps)
/// ```
///
/// `p_old` is `p` before the decoupled decay. [`Backend::adam_step`] returns
/// `Σ (p_new − p_old)²` of the whole update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay (f64 so that 1 − β is formed before rounding to f32, as
    /// PyTorch does: 0.999 in f32 would weight g² by 0.000999987).
    pub beta1: f64,
    /// Second-moment decay (f64, as `beta1`).
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f32,
    /// Weight decay.
    pub weight_decay: f32,
    /// AdamW's decoupled decay instead of L2.
    pub decoupled: bool,
    /// 1 − beta1ᵗ (computed by the runtime in f64 with the step count t ≥ 1).
    pub bias_correction1: f64,
    /// 1 − beta2ᵗ.
    pub bias_correction2: f64,
}

/// The LAMB direction (You et al. 2019, Algorithm 2), written into `update`:
///
/// ```text
/// m = beta1·m + (1 − beta1)·g
/// v = beta2·v + (1 − beta2)·g²
/// update = (m / bias_correction1) / (sqrt(v / bias_correction2) + eps) + weight_decay·p
/// ```
/// The runtime then applies `p = p − lr·trust·update` with `axpy`, which returns the
/// squared norm of the change it made.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LambDirection {
    /// First-moment decay (f64 so that 1 − β is formed before rounding to f32, as
    /// PyTorch does: 0.999 in f32 would weight g² by 0.000999987).
    pub beta1: f64,
    /// Second-moment decay (f64, as `beta1`).
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f32,
    /// Decoupled weight decay added to the direction.
    pub weight_decay: f32,
    /// 1 − beta1ᵗ, or 1 without bias correction.
    pub bias_correction1: f64,
    /// 1 − beta2ᵗ, or 1 without bias correction.
    pub bias_correction2: f64,
}

/// Squared norms a LAMB direction pass returns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DirectionNorms {
    /// Σ p² (parameters before the update).
    pub param_sum_squares: f64,
    /// Σ update².
    pub update_sum_squares: f64,
}

/// The tensor operations of one training step. Every tensor is a flat f32 buffer
/// owned by the backend (host memory for ndarray, device memory for ArrayFire).
/// Kernels check operand lengths and return [`BackendError::LengthMismatch`] rather
/// than panic.
pub trait Backend: Send + Sync {
    /// A flat f32 buffer in the backend's memory.
    type Tensor: Send + Sync;

    /// Short name for messages and traces (`"ndarray"`, `"arrayfire"`).
    fn name(&self) -> &'static str;

    /// A new buffer of `len` zeros.
    fn zeros(&self, len: usize) -> Result<Self::Tensor, BackendError>;

    /// Number of elements.
    fn len(&self, tensor: &Self::Tensor) -> usize;

    /// Copy host data (any boundary dtype, widened to f32) into `dst`.
    fn upload(&self, src: HostTensor<'_>, dst: &mut Self::Tensor) -> Result<(), BackendError>;

    /// Copy `src` to host memory, narrowing to the destination's dtype (round to
    /// nearest even, as `half`'s slice conversions do).
    fn download(&self, src: &Self::Tensor, dst: HostTensorMut<'_>) -> Result<(), BackendError>;

    /// `dst = src · scale` (unscaling a loss-scaled gradient) in one pass, reporting
    /// whether `src` was finite and Σ dst².
    fn load_gradient(
        &self,
        src: HostTensor<'_>,
        scale: f32,
        dst: &mut Self::Tensor,
    ) -> Result<GradStats, BackendError>;

    /// Σ x², accumulated in f64.
    fn sum_squares(&self, tensor: &Self::Tensor) -> Result<f64, BackendError>;

    /// `x = x · factor`.
    fn scale(&self, tensor: &mut Self::Tensor, factor: f32) -> Result<(), BackendError>;

    /// `p = p + alpha · x`; returns `Σ (p_new − p_old)²`, the squared norm of the
    /// change as applied (in real arithmetic that is `Σ (alpha·x)²`; here each term
    /// is the f32 difference, so it also accounts for the rounding of `p_new`),
    /// accumulated in f64.
    fn axpy(&self, p: &mut Self::Tensor, alpha: f32, x: &Self::Tensor)
        -> Result<f64, BackendError>;

    /// One SGD-family update (see [`SgdStep`]); `momentum_buffer` is required when
    /// `step.momentum ≠ 0`. Returns `Σ (p_new − p_old)²`, accumulated in f64.
    fn sgd_step(
        &self,
        p: &mut Self::Tensor,
        g: &Self::Tensor,
        momentum_buffer: Option<&mut Self::Tensor>,
        step: &SgdStep,
    ) -> Result<f64, BackendError>;

    /// One Adam/AdamW update (see [`AdamStep`]); `v_max` is given exactly when
    /// AMSGrad is on. Returns `Σ (p_new − p_old)²`, accumulated in f64.
    fn adam_step(
        &self,
        p: &mut Self::Tensor,
        g: &Self::Tensor,
        m: &mut Self::Tensor,
        v: &mut Self::Tensor,
        v_max: Option<&mut Self::Tensor>,
        step: &AdamStep,
    ) -> Result<f64, BackendError>;

    /// Update LAMB's moments and write its direction into `update`.
    fn lamb_direction(
        &self,
        p: &Self::Tensor,
        g: &Self::Tensor,
        m: &mut Self::Tensor,
        v: &mut Self::Tensor,
        update: &mut Self::Tensor,
        direction: &LambDirection,
    ) -> Result<DirectionNorms, BackendError>;
}

/// Which backend a run asks for, by name (`--backend`), so that asking for one that
/// this build lacks is an error rather than a panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// The CPU backend, always built.
    NdArray,
    /// ArrayFire; available only with the `arrayfire` feature and `libaf`.
    ArrayFire,
}

impl BackendChoice {
    /// Parse a backend name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "ndarray" | "cpu" => Some(Self::NdArray),
            "arrayfire" | "af" => Some(Self::ArrayFire),
            _ => None,
        }
    }

    /// Whether this build includes the backend.
    pub fn is_built(self) -> bool {
        match self {
            Self::NdArray => true,
            Self::ArrayFire => cfg!(feature = "arrayfire"),
        }
    }

    /// An error for a backend this build lacks, `Ok` otherwise.
    pub fn ensure_built(self) -> Result<(), BackendError> {
        if self.is_built() {
            Ok(())
        } else {
            Err(BackendError::Unavailable {
                backend: "arrayfire",
                reason: "this build of Regimen was compiled without the `arrayfire` cargo \
                         feature; rebuild with `--features arrayfire` where libaf is installed"
                    .to_string(),
            })
        }
    }
}
