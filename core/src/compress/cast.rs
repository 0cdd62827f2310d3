//! STUB — being written.

use super::Compressor;
use regimen_plugin::{ArgError, Args};

/// STUB
pub fn build_none(_args: &Args) -> Result<Box<dyn Compressor>, ArgError> {
    Err(super::not_yet("build_none"))
}

/// STUB
pub fn build_fp16(_args: &Args) -> Result<Box<dyn Compressor>, ArgError> {
    Err(super::not_yet("build_fp16"))
}

/// STUB
pub fn build_bf16(_args: &Args) -> Result<Box<dyn Compressor>, ArgError> {
    Err(super::not_yet("build_bf16"))
}
