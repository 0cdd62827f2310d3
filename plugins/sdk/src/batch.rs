//! The batch-size controller interface that the built-in controllers (`fixed`,
//! `ramp`, `loss_rule`, `gns`, `adascale` in `regimen-core`) and plugins both
//! implement.
//!
//! After every step the host hands the controller what it measured
//! ([`BatchMetrics`]: progress, the batch that ran, loss, gradient norm and noise
//! estimates) and the controller answers the next step's batch size and, optionally,
//! a factor on the scheduled learning rate ([`BatchDecision`]). A controller is
//! configured by named arguments ([`crate::Args`]) and keeps all its state
//! serializable through [`BatchController::save_state`] / `load_state`, so a
//! checkpointed run resumes bit for bit.

use thiserror::Error;

use crate::args::ArgError;

/// What the host measured in the step that just ran.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchMetrics {
    /// The step that just ran (0-based).
    pub step: u64,
    /// Samples seen so far, this step's included.
    pub samples: u64,
    /// Samples per epoch (the dataset size), when known.
    pub samples_per_epoch: Option<u64>,
    /// The batch size of the step that just ran.
    pub batch: u64,
    /// The step's training loss.
    pub loss: Option<f64>,
    /// ‖g‖ of the averaged (whole-batch) gradient.
    pub grad_norm: Option<f64>,
    /// An unbiased estimate of ‖G‖², the true gradient's squared norm (McCandlish et
    /// al. 2018, from the small- and large-batch norms).
    pub grad_sq_estimate: Option<f64>,
    /// An estimate of tr Σ, the per-sample gradient variance.
    pub grad_variance: Option<f64>,
    /// The learning rate the step used.
    pub lr: Option<f64>,
}

impl BatchMetrics {
    /// Metrics of step `step` with batch `batch` and `samples` seen; nothing measured.
    pub fn new(step: u64, samples: u64, batch: u64) -> Self {
        Self {
            step,
            samples,
            samples_per_epoch: None,
            batch,
            loss: None,
            grad_norm: None,
            grad_sq_estimate: None,
            grad_variance: None,
            lr: None,
        }
    }

    /// Training progress in epochs, when the dataset size is known.
    pub fn epoch(&self) -> Option<f64> {
        self.samples_per_epoch
            .filter(|&n| n > 0)
            .map(|n| self.samples as f64 / n as f64)
    }
}

/// A controller's answer for the next step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchDecision {
    /// The next step's batch size (≥ 1).
    pub batch: u64,
    /// A factor on the scheduled learning rate, if the controller scales it.
    pub lr_scale: Option<f64>,
}

/// Why a controller call failed.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum ControllerError {
    /// The arguments were refused.
    #[error(transparent)]
    Args(#[from] ArgError),
    /// Saved state that does not belong to this controller.
    #[error("controller state: {0}")]
    State(String),
    /// Anything else, in plain words.
    #[error("{0}")]
    Failed(String),
}

/// A batch-size controller: one instance per run (per worker; every worker sees the
/// same averaged metrics, so all decide the same).
pub trait BatchController: Send {
    /// The controller's script name (`adabatch`).
    fn name(&self) -> &str;

    /// Observe the step that just ran; decide the next step's batch size.
    fn observe(&mut self, metrics: &BatchMetrics) -> Result<BatchDecision, ControllerError>;

    /// Append the state needed to resume bit for bit.
    fn save_state(&self, out: &mut Vec<u8>) -> Result<(), ControllerError> {
        let _ = out;
        Ok(())
    }

    /// Restore what [`BatchController::save_state`] wrote.
    fn load_state(&mut self, state: &[u8]) -> Result<(), ControllerError> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(ControllerError::State(format!(
                "`{}` keeps no state, but {} bytes of state were given",
                self.name(),
                state.len()
            )))
        }
    }
}
