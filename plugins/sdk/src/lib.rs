//! Regimen plugin SDK: what crosses the boundary between a script and a component
//! (built-in or third-party) that the script configures by name:
//! - [`args`]: the argument bag — the named numbers, strings and booleans a script
//!   passes, e.g. `topk(ratio: 0.01, approx: "sample")` — with typed access whose
//!   errors name the argument, so a host can show them on the right span;
//! - [`compress`]: the [`Compressor`] trait that built-in and plugin gradient
//!   compressors implement;
//! - [`wire`]: the versioned little-endian payload format compressors write, and a
//!   bounds-checked reader for decoding untrusted payloads;
//! - [`conformance`]: the checks every compressor and batch controller must pass, for
//!   authors' own tests.
//!
//! - [`batch`]: the [`BatchController`] trait batch-size controllers implement;
//! - [`export`] and [`export_plugin!`]: how a `cdylib` crate exports its compressors
//!   and controllers as a plugin, with no `unsafe` of its own;
//! - [`abi`]: the stable C ABI those exports speak (`ABI.md` documents it with a C
//!   header); [`ffi`] is the SDK's implementation of its plugin side.

pub mod abi;
pub mod args;
pub mod batch;
pub mod compress;
pub mod conformance;
pub mod export;
pub mod ffi;
pub mod wire;

pub use args::{ArgError, ArgValue, Args};
pub use batch::{BatchController, BatchDecision, BatchMetrics, ControllerError};
pub use compress::{
    Aggregation, CompressError, Compressor, FeedbackPolicy, ResidualSource, Round, StepContext,
    TensorView, WireElement,
};
pub use export::{CompressorExport, ControllerExport, Param, ParamKind, PluginDef};
pub use wire::{MethodId, PayloadHeader, WireError, WireReader, WIRE_MAGIC, WIRE_VERSION};
