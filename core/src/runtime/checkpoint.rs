//! STUB — being written (checkpoint file format).
use thiserror::Error;
/// Checkpoint format version.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;
/// Checkpoint errors.
#[derive(Debug, Error)]
#[error("checkpoint error")]
pub struct CheckpointError;
