//! STUB — being written (CPU backend).
/// The CPU backend.
#[derive(Clone, Debug, Default)]
pub struct NdArrayBackend;
