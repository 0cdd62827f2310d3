//! STUB — being written (glob patterns over parameter names).
use thiserror::Error;
/// A compiled glob pattern.
#[derive(Clone, Debug)]
pub struct Glob;
/// A bad glob pattern.
#[derive(Debug, Error)]
#[error("bad glob")]
pub struct GlobError;
