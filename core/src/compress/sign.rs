//! STUB — being written.

use super::Compressor;
use regimen_plugin::{ArgError, Args};

/// STUB
pub fn build_sign(_args: &Args) -> Result<Box<dyn Compressor>, ArgError> {
    Err(super::not_yet("build_sign"))
}

/// STUB
pub fn build_onebit(_args: &Args) -> Result<Box<dyn Compressor>, ArgError> {
    Err(super::not_yet("build_onebit"))
}
