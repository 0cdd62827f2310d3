//! STUB — being written (loss scaler).
/// The loss scaler.
#[derive(Clone, Debug)]
pub struct LossScaler;
/// What the scaler decided for a step.
#[derive(Clone, Debug)]
pub struct ScaleDecision;
