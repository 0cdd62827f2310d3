//! STUB — being written.

use super::Compressor;
use regimen_plugin::{ArgError, Args};

/// STUB
pub fn build(_args: &Args) -> Result<Box<dyn Compressor>, ArgError> {
    Err(super::not_yet("build"))
}
