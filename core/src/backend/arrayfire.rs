//! The ArrayFire backend (cargo feature `arrayfire`): tensors live on the device
//! (CUDA, OpenCL or ArrayFire's CPU backend, whichever `libaf` picks), updates are
//! array expressions that ArrayFire's JIT fuses into one kernel per step, and
//! reductions come back as scalars through `sum_all`.
//!
//! Errors. The `arrayfire` crate reports a failed library call by calling a global
//! error handler, whose default panics. [`ArrayFireBackend::new`] installs a handler
//! that panics with a typed payload, and every trait method runs inside
//! `catch_unwind`, so a device error (out of memory, driver failure, …) becomes
//! [`BackendError::Device`]. What this cannot cover:
//! - the panic still goes through the process's panic hook (a message on stderr);
//! - a build with `panic = "abort"` aborts instead;
//! - an error while an array is dropped during such an unwind aborts (double panic);
//! - the handler is process-wide and replaces one the application registered;
//! - a missing `libaf` shared library stops the program at load time, before any
//!   Rust code runs.
//!
//! f16/bf16 cross the boundary as f32 through a host staging buffer converted with
//! `half` (the `arrayfire` crate uses `half` 1.x and has no bf16), so rounding is the
//! same as the ndarray backend's. Reductions accumulate in f64 on devices that
//! support doubles, in f32 otherwise; their summation order is ArrayFire's, so they
//! are deterministic per device and library version, not bit-equal to the CPU
//! backend. The update kernels' `Σ (p_new − p_old)²` is one such reduction over the
//! f32 difference of the evaluated new weights and the old ones, which are still
//! alive until the kernel replaces them.

use std::any::Any;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, MutexGuard, Once};

use arrayfire::{Array, Dim4};
use half::slice::HalfFloatSliceExt;

use super::{
    check_len, missing_momentum_buffer, AdamStep, Backend, BackendError, DirectionNorms, GradStats,
    HostTensor, HostTensorMut, LambDirection, SgdStep,
};

const NAME: &str = "arrayfire";

/// The panic payload of [`raise_device_error`], told apart from other panics.
struct DeviceFailure {
    message: String,
}

/// ArrayFire error handler: unwinds with a [`DeviceFailure`] that the backend's
/// `catch_unwind` turns into [`BackendError::Device`].
fn raise_device_error(code: arrayfire::AfError) {
    if code == arrayfire::AfError::SUCCESS {
        return;
    }
    std::panic::panic_any(DeviceFailure {
        message: format!("{code} ({})", arrayfire::get_last_error()),
    });
}

static INSTALL_ERROR_HANDLER: Once = Once::new();

fn install_error_handler() {
    INSTALL_ERROR_HANDLER.call_once(|| {
        arrayfire::register_error_handler(arrayfire::Callback::new(raise_device_error));
    });
}

/// The message of a caught panic.
fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(failure) = payload.downcast_ref::<DeviceFailure>() {
        failure.message.clone()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_string()
    } else {
        "the ArrayFire wrapper panicked".to_string()
    }
}

/// Runs `work`, turning an ArrayFire error (a panic from the wrapper) into
/// [`BackendError::Device`].
fn catch_device_errors<T>(
    work: impl FnOnce() -> Result<T, BackendError>,
) -> Result<T, BackendError> {
    catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|payload| {
        Err(BackendError::Device {
            backend: NAME,
            message: panic_message(payload),
        })
    })
}

/// The shape of a flat tensor: a column of `len` elements.
fn column(len: usize) -> Dim4 {
    Dim4::new(&[len as u64, 1, 1, 1])
}

/// The device backend. Tensors are `arrayfire::Array<f32>` columns on the device the
/// backend was created for.
pub struct ArrayFireBackend {
    device: i32,
    double_support: bool,
    description: String,
    /// Host f32 buffer through which f16/bf16 data crosses, kept between calls so
    /// that conversions do not allocate (and page-fault) each step.
    staging: Mutex<Vec<f32>>,
}

impl fmt::Debug for ArrayFireBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArrayFireBackend")
            .field("device", &self.device)
            .field("double_support", &self.double_support)
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

impl ArrayFireBackend {
    /// The backend on ArrayFire's default device (0).
    pub fn new() -> Result<Self, BackendError> {
        Self::on_device(0)
    }

    /// The backend on device `device` of ArrayFire's active backend; an error when
    /// there is no such device or the library cannot initialise it. Installs the
    /// process-wide ArrayFire error handler (see the module documentation).
    pub fn on_device(device: i32) -> Result<Self, BackendError> {
        install_error_handler();
        let probe = catch_device_errors(|| {
            let count = arrayfire::device_count();
            if device < 0 || device >= count {
                return Err(BackendError::Unavailable {
                    backend: NAME,
                    reason: format!("device {device} requested, ArrayFire sees {count} device(s)"),
                });
            }
            arrayfire::set_device(device);
            let description = arrayfire::info_string(false);
            let double_support = arrayfire::is_double_available(device);
            Ok((description, double_support))
        });
        let (description, double_support) = probe.map_err(|error| match error {
            BackendError::Device { message, .. } => BackendError::Unavailable {
                backend: NAME,
                reason: message,
            },
            other => other,
        })?;
        Ok(Self {
            device,
            double_support,
            description: description.trim().to_string(),
            staging: Mutex::new(Vec::new()),
        })
    }

    /// The device index this backend runs on.
    pub fn device(&self) -> i32 {
        self.device
    }

    /// ArrayFire's description of the library and device (`af::info_string`).
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Whether reductions accumulate in f64 (the device supports doubles).
    pub fn accumulates_in_f64(&self) -> bool {
        self.double_support
    }

    /// Runs `work` on this backend's device (ArrayFire's active device is per
    /// thread), with device errors turned into [`BackendError::Device`].
    fn run<T>(&self, work: impl FnOnce() -> Result<T, BackendError>) -> Result<T, BackendError> {
        catch_device_errors(|| {
            arrayfire::set_device(self.device);
            work()
        })
    }

    /// The staging buffer, `len` elements long. A panic while it was held (a device
    /// error mid-conversion) leaves only stale data in it, which is overwritten
    /// before use, so a poisoned lock is simply taken over.
    fn staging(&self, len: usize) -> MutexGuard<'_, Vec<f32>> {
        let mut staging = self
            .staging
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        staging.resize(len, 0.0);
        staging
    }

    /// A device array holding `src` widened to f32.
    fn to_device(&self, src: HostTensor<'_>) -> Array<f32> {
        let dims = column(src.len());
        match src {
            HostTensor::F32(src) => Array::new(src, dims),
            HostTensor::F16(src) => {
                let mut staging = self.staging(src.len());
                src.convert_to_f32_slice(&mut staging);
                Array::new(&staging, dims)
            }
            HostTensor::BF16(src) => {
                let mut staging = self.staging(src.len());
                src.convert_to_f32_slice(&mut staging);
                Array::new(&staging, dims)
            }
        }
    }

    /// Σ x² on the device, accumulated in f64 where the device has doubles.
    fn device_sum_squares(&self, x: &Array<f32>) -> f64 {
        if self.double_support {
            let wide = x.cast::<f64>();
            arrayfire::sum_all(&(&wide * &wide)).0
        } else {
            f64::from(arrayfire::sum_all(&(x * x)).0)
        }
    }

    /// Σ (new − old)² on the device: the f32 change, squared and summed as
    /// [`ArrayFireBackend::device_sum_squares`] does (the difference is fused into the
    /// reduction by the JIT).
    fn device_change_sum_squares(&self, new: &Array<f32>, old: &Array<f32>) -> f64 {
        self.device_sum_squares(&(new - old))
    }

    /// Whether every element of `x` is finite.
    fn device_all_finite(&self, x: &Array<f32>) -> bool {
        let bad = arrayfire::or(&arrayfire::isnan(x), &arrayfire::isinf(x), false);
        !arrayfire::any_true_all(&bad).0
    }
}

/// `(1 − x)` computed in f64 and rounded once, as PyTorch's Python floats are.
fn one_minus(x: f64) -> f32 {
    (1.0 - x) as f32
}

impl Backend for ArrayFireBackend {
    type Tensor = Array<f32>;

    fn name(&self) -> &'static str {
        NAME
    }

    fn zeros(&self, len: usize) -> Result<Self::Tensor, BackendError> {
        self.run(|| {
            let zeros = arrayfire::constant(0.0f32, column(len));
            zeros.eval();
            Ok(zeros)
        })
    }

    fn len(&self, tensor: &Self::Tensor) -> usize {
        tensor.elements()
    }

    fn upload(&self, src: HostTensor<'_>, dst: &mut Self::Tensor) -> Result<(), BackendError> {
        check_len("upload", src.len(), dst.elements())?;
        self.run(|| {
            *dst = self.to_device(src);
            Ok(())
        })
    }

    fn download(&self, src: &Self::Tensor, dst: HostTensorMut<'_>) -> Result<(), BackendError> {
        check_len("download", src.elements(), dst.len())?;
        self.run(|| {
            match dst {
                HostTensorMut::F32(dst) => src.host(dst),
                HostTensorMut::F16(dst) => {
                    let mut staging = self.staging(dst.len());
                    src.host(&mut staging);
                    dst.convert_from_f32_slice(&staging);
                }
                HostTensorMut::BF16(dst) => {
                    let mut staging = self.staging(dst.len());
                    src.host(&mut staging);
                    dst.convert_from_f32_slice(&staging);
                }
            }
            Ok(())
        })
    }

    fn load_gradient(
        &self,
        src: HostTensor<'_>,
        scale: f32,
        dst: &mut Self::Tensor,
    ) -> Result<GradStats, BackendError> {
        check_len("load_gradient", src.len(), dst.elements())?;
        self.run(|| {
            let raw = self.to_device(src);
            let scaled = &raw * scale;
            scaled.eval();
            let sum_squares = self.device_sum_squares(&scaled);
            // With f64 accumulation a non-finite element is the only way to a
            // non-finite sum; an f32 sum can also overflow, so look explicitly.
            let finite = if self.double_support {
                sum_squares.is_finite()
            } else {
                self.device_all_finite(&scaled)
            };
            *dst = scaled;
            Ok(GradStats {
                finite,
                sum_squares,
            })
        })
    }

    fn sum_squares(&self, tensor: &Self::Tensor) -> Result<f64, BackendError> {
        self.run(|| Ok(self.device_sum_squares(tensor)))
    }

    fn scale(&self, tensor: &mut Self::Tensor, factor: f32) -> Result<(), BackendError> {
        self.run(|| {
            let scaled = &*tensor * factor;
            scaled.eval();
            *tensor = scaled;
            Ok(())
        })
    }

    fn axpy(
        &self,
        p: &mut Self::Tensor,
        alpha: f32,
        x: &Self::Tensor,
    ) -> Result<f64, BackendError> {
        check_len("axpy", p.elements(), x.elements())?;
        self.run(|| {
            let updated = &*p + &(x * alpha);
            updated.eval();
            let change = self.device_change_sum_squares(&updated, p);
            *p = updated;
            Ok(change)
        })
    }

    fn sgd_step(
        &self,
        p: &mut Self::Tensor,
        g: &Self::Tensor,
        momentum_buffer: Option<&mut Self::Tensor>,
        step: &SgdStep,
    ) -> Result<f64, BackendError> {
        const KERNEL: &str = "sgd_step";
        check_len(KERNEL, p.elements(), g.elements())?;
        if let Some(buffer) = &momentum_buffer {
            check_len(KERNEL, p.elements(), buffer.elements())?;
        }
        if step.momentum != 0.0 && momentum_buffer.is_none() {
            return Err(missing_momentum_buffer(KERNEL));
        }
        self.run(|| {
            // d = (g + weight_decay·p) · grad_scale, without the decay term at 0.
            let decayed = if step.weight_decay != 0.0 {
                g + &(&*p * step.weight_decay)
            } else {
                g.clone()
            };
            let d = &decayed * step.grad_scale;
            match momentum_buffer {
                Some(buffer) if step.momentum != 0.0 => {
                    let new_buffer = if step.first_step {
                        d.clone()
                    } else {
                        &(&*buffer * step.momentum) + &(&d * one_minus(f64::from(step.dampening)))
                    };
                    let direction = if step.nesterov {
                        &d + &(&new_buffer * step.momentum)
                    } else {
                        new_buffer.clone()
                    };
                    let new_p = &*p - &(&direction * step.lr);
                    arrayfire::eval_multiple(vec![&new_p, &new_buffer]);
                    let change = self.device_change_sum_squares(&new_p, p);
                    *p = new_p;
                    *buffer = new_buffer;
                    Ok(change)
                }
                _ => {
                    let new_p = &*p - &(&d * step.lr);
                    new_p.eval();
                    let change = self.device_change_sum_squares(&new_p, p);
                    *p = new_p;
                    Ok(change)
                }
            }
        })
    }

    fn adam_step(
        &self,
        p: &mut Self::Tensor,
        g: &Self::Tensor,
        m: &mut Self::Tensor,
        v: &mut Self::Tensor,
        v_max: Option<&mut Self::Tensor>,
        step: &AdamStep,
    ) -> Result<f64, BackendError> {
        const KERNEL: &str = "adam_step";
        check_len(KERNEL, p.elements(), g.elements())?;
        check_len(KERNEL, p.elements(), m.elements())?;
        check_len(KERNEL, p.elements(), v.elements())?;
        if let Some(v_max) = &v_max {
            check_len(KERNEL, p.elements(), v_max.elements())?;
        }
        // Per-call constants in f64, rounded once (PyTorch's Python floats).
        let step_size = (f64::from(step.lr) / step.bias_correction1) as f32;
        let bias_correction2_sqrt = step.bias_correction2.sqrt() as f32;
        let decay_factor = (1.0 - f64::from(step.lr) * f64::from(step.weight_decay)) as f32;
        self.run(|| {
            let decay = step.weight_decay != 0.0;
            let (decayed_p, g) = if decay && step.decoupled {
                (&*p * decay_factor, g.clone())
            } else if decay {
                (p.clone(), g + &(&*p * step.weight_decay))
            } else {
                (p.clone(), g.clone())
            };
            let new_m = &(&*m * step.beta1 as f32) + &(&g * one_minus(step.beta1));
            let new_v = &(&*v * step.beta2 as f32) + &(&(&g * one_minus(step.beta2)) * &g);
            let v_hat = match &v_max {
                Some(v_max) => arrayfire::maxof(&**v_max, &new_v, false),
                None => new_v.clone(),
            };
            let denom = &(&arrayfire::sqrt(&v_hat) / bias_correction2_sqrt) + step.eps;
            let new_p = &decayed_p - &(&(&new_m * step_size) / &denom);
            match v_max {
                Some(v_max) => {
                    arrayfire::eval_multiple(vec![&new_p, &new_m, &new_v, &v_hat]);
                    *v_max = v_hat;
                }
                None => arrayfire::eval_multiple(vec![&new_p, &new_m, &new_v]),
            }
            // Against `p` as it was before the decoupled decay.
            let change = self.device_change_sum_squares(&new_p, p);
            *p = new_p;
            *m = new_m;
            *v = new_v;
            Ok(change)
        })
    }

    fn lamb_direction(
        &self,
        p: &Self::Tensor,
        g: &Self::Tensor,
        m: &mut Self::Tensor,
        v: &mut Self::Tensor,
        update: &mut Self::Tensor,
        direction: &LambDirection,
    ) -> Result<DirectionNorms, BackendError> {
        const KERNEL: &str = "lamb_direction";
        check_len(KERNEL, p.elements(), g.elements())?;
        check_len(KERNEL, p.elements(), m.elements())?;
        check_len(KERNEL, p.elements(), v.elements())?;
        check_len(KERNEL, p.elements(), update.elements())?;
        let bias_correction1 = direction.bias_correction1 as f32;
        let bias_correction2 = direction.bias_correction2 as f32;
        self.run(|| {
            let new_m = &(&*m * direction.beta1 as f32) + &(g * one_minus(direction.beta1));
            let new_v = &(&*v * direction.beta2 as f32) + &(&(g * one_minus(direction.beta2)) * g);
            let denom = &arrayfire::sqrt(&(&new_v / bias_correction2)) + direction.eps;
            let new_update =
                &(&(&new_m / bias_correction1) / &denom) + &(p * direction.weight_decay);
            arrayfire::eval_multiple(vec![&new_m, &new_v, &new_update]);
            let norms = DirectionNorms {
                param_sum_squares: self.device_sum_squares(p),
                update_sum_squares: self.device_sum_squares(&new_update),
            };
            *m = new_m;
            *v = new_v;
            *update = new_update;
            Ok(norms)
        })
    }
}
