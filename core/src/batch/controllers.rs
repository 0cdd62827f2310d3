//! The built-in batch-size controllers (`fixed`, `ramp`, `loss_rule`, `gns`,
//! `adascale`), each implementing the SDK's [`BatchController`] exactly as a plugin's
//! would. (Being written: interface only.)

use regimen_plugin::BatchController;

use super::{BatchError, BatchSpec};

/// The batch the first step runs with (bounded).
pub fn initial_batch(spec: &BatchSpec) -> Result<u64, BatchError> {
    let _ = spec;
    todo!()
}

/// The built-in controller of `spec`; `None` when it names a plugin's.
pub fn build(spec: &BatchSpec) -> Result<Option<Box<dyn BatchController>>, BatchError> {
    let _ = spec;
    todo!()
}
