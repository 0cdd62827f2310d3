//! Gradient compression: the built-in compressors, all implementing the SDK's
//! [`Compressor`] trait exactly as a plugin would, and the registry that builds one
//! from a script's method name and arguments.
//!
//! | method | aggregation | feedback | module |
//! |---|---|---|---|
//! | `none` | sum f32 | off | [`cast`] |
//! | `fp16`, `bf16` | sum f16 / bf16 | off | [`cast`] |
//! | `int8` | gather | off | [`int8`] |
//! | `topk` | gather | off | [`topk`] |
//! | `randomk` | sum f32 (shared indices) | off | [`randomk`] |
//! | `threshold` | gather | off | [`threshold`] |
//! | `dgc` | gather | internal | [`dgc`] |
//! | `qsgd` | gather | off | [`qsgd`] |
//! | `terngrad` | gather | off | [`terngrad`] |
//! | `sign`, `onebit` | gather | on | [`sign`] |
//! | `powersgd` | sum f32, two rounds | on (aggregate) | [`powersgd`] |
//!
//! Each module documents its payload layout after the common header of
//! [`regimen_plugin::wire`].

pub use regimen_plugin::compress::{
    Aggregation, CompressError, Compressor, FeedbackPolicy, ResidualSource, Round, StepContext,
    TensorView, WireElement,
};
pub use regimen_plugin::wire::{MethodId, PayloadHeader, WireError, WireReader};
use regimen_plugin::{ArgError, Args};
use thiserror::Error;

pub mod bench;
pub mod bits;
pub mod cast;
pub mod dgc;
pub mod int8;
pub mod powersgd;
pub mod qsgd;
pub mod randomk;
pub mod rng;
pub mod sign;
pub mod sparse;
pub mod summary;
pub mod terngrad;
pub mod threshold;
pub mod topk;

/// The built-in methods' script names, in documentation order.
pub const BUILTIN_METHODS: &[&str] = &[
    "none",
    "fp16",
    "bf16",
    "int8",
    "topk",
    "randomk",
    "threshold",
    "dgc",
    "qsgd",
    "terngrad",
    "sign",
    "onebit",
    "powersgd",
];

/// The argument that the host, not the method, interprets: `error_feedback: false`.
pub const ERROR_FEEDBACK_ARG: &str = "error_feedback";

/// Why a compressor could not be built.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum BuildError {
    /// No method of that name.
    #[error("unknown compression method `{0}`")]
    Unknown(String),
    /// The method refused its arguments.
    #[error("`{method}`: {error}")]
    Args {
        /// The method.
        method: String,
        /// What it refused.
        error: ArgError,
    },
}

/// Build the built-in compressor `method` from `args` (step-0 values of any scheduled
/// argument). One instance serves one tensor on one worker.
pub fn build(method: &str, args: &Args) -> Result<Box<dyn Compressor>, BuildError> {
    let built = match method {
        "none" => cast::build_none(args),
        "fp16" => cast::build_fp16(args),
        "bf16" => cast::build_bf16(args),
        "int8" => int8::build(args),
        "topk" => topk::build(args),
        "randomk" => randomk::build(args),
        "threshold" => threshold::build(args),
        "dgc" => dgc::build(args),
        "qsgd" => qsgd::build(args),
        "terngrad" => terngrad::build(args),
        "sign" => sign::build_sign(args),
        "onebit" => sign::build_onebit(args),
        "powersgd" => powersgd::build(args),
        _ => return Err(BuildError::Unknown(method.to_owned())),
    };
    built.map_err(|error| BuildError::Args {
        method: method.to_owned(),
        error,
    })
}

/// A stub's refusal, until its module lands.
#[allow(dead_code)]
pub(crate) fn not_yet(method: &str) -> ArgError {
    ArgError {
        argument: None,
        message: format!("`{method}` is being implemented"),
    }
}
