//! The gradient-compressor interface that built-in methods and plugins both implement.
//!
//! # How the host drives a compressor
//!
//! The host creates one compressor per parameter tensor (from the script's method name
//! and arguments) on every worker. Each step, for each tensor:
//!
//! 1. It forms the input `x` = gradient (+ the error-feedback residual when on) and
//!    calls [`Compressor::compress`], which appends one payload to `out`: a
//!    [`PayloadHeader`](crate::PayloadHeader) then the method's data.
//! 2. By [`Aggregation`]:
//!    - [`Aggregation::Sum`]: the data sections (arrays of [`WireElement`]) of all
//!      workers are summed elementwise by an allreduce; every worker then holds the
//!      same *reduced payload* (its own header + the summed data). A multi-round
//!      method (PowerSGD) receives it in [`Compressor::next_round`], which either
//!      writes the next round's payload ([`Round::More`], reduced the same way) or
//!      ends ([`Round::Done`]). The last reduced payload is decoded once with
//!      `decompress_add(reduced, 1/W, avg)`.
//!    - [`Aggregation::Gather`]: the whole payloads (header included) are
//!      all-gathered; every worker decodes each rank's payload in rank order with
//!      `decompress_add(payload_r, 1/W, avg)`, so all workers compute bit-identical
//!      averages.
//! 3. Error feedback, when on: `e ← x − r`, where `r` is this worker's reconstruction
//!    per [`Compressor::residual_source`] — the decoding of its own payload, or the
//!    averaged aggregate for methods that have no local reconstruction (PowerSGD).
//!
//! Methods whose algorithm carries its own accumulation (DGC's momentum correction)
//! declare [`FeedbackPolicy::Internal`] and the host never adds a residual.
//!
//! Everything random must be derived from the [`StepContext`] (seed, step, tensor,
//! rank), so that a run is reproducible and a checkpoint resumes bit for bit.
//! Implementations must not panic on any input: a malformed payload is a
//! [`CompressError`].

use thiserror::Error;

use crate::args::ArgError;
use crate::wire::{MethodId, WireError};

/// One tensor handed to a compressor: the f32 input and the model's shape for it.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    /// Parameter name (`layers.0.weight`).
    pub name: &'a str,
    /// The parameter's shape (its product is `data.len()`).
    pub shape: &'a [usize],
    /// The elements, row-major.
    pub data: &'a [f32],
}

/// Where and when a compressor is called.
#[derive(Clone, Copy, Debug)]
pub struct StepContext<'a> {
    /// Step index (0-based; the schedules' step).
    pub step: u64,
    /// This worker's rank in `0..world`.
    pub rank: usize,
    /// Number of workers.
    pub world: usize,
    /// The run's seed (the same on every worker).
    pub seed: u64,
    /// Index of the tensor among the bound parameters (the same on every worker).
    pub tensor: usize,
    /// Current values of the arguments the script gave as schedules (e.g. `ratio`
    /// when it is `exponential(0.25 -> 0.001, 4 epochs)`), by argument name.
    pub scheduled: &'a [(String, f64)],
}

impl StepContext<'_> {
    /// This step's value of a scheduled argument, if the script made it a schedule.
    pub fn number(&self, name: &str) -> Option<f64> {
        self.scheduled
            .iter()
            .find(|(arg, _)| arg == name)
            .map(|&(_, value)| value)
    }
}

/// Element type of a summable payload's data section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WireElement {
    /// Little-endian IEEE single precision.
    F32,
    /// Little-endian IEEE half precision (summed as f32, rounded to f16 at each hop).
    F16,
    /// Little-endian bfloat16 (summed as f32, rounded to bf16 at each hop).
    Bf16,
}

impl WireElement {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            WireElement::F32 => 4,
            WireElement::F16 | WireElement::Bf16 => 2,
        }
    }

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            WireElement::F32 => "f32",
            WireElement::F16 => "f16",
            WireElement::Bf16 => "bf16",
        }
    }
}

/// How the payloads of the workers are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Aggregation {
    /// Payload data sections add up before decoding (allreduce): casts, random-k with
    /// a shared seed, PowerSGD factors.
    Sum(WireElement),
    /// Each worker's payload is decoded, then averaged (allgather): top-k, sign, QSGD…
    Gather,
}

/// Whether a multi-round summable method needs another exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Round {
    /// `out` holds the next round's payload.
    More,
    /// The last reduced payload is final; decode it.
    Done,
}

/// What error feedback subtracts from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResidualSource {
    /// This worker's own payload, decoded.
    OwnPayload,
    /// The averaged aggregate (methods without a local reconstruction).
    Aggregate,
}

/// Whether the host keeps an error-feedback residual for the method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedbackPolicy {
    /// Off unless the script says `with error_feedback`.
    OffByDefault,
    /// On unless the script says `error_feedback: false` (the method's paper requires
    /// it: sign, 1-bit, PowerSGD).
    OnByDefault,
    /// The method accumulates what it did not send itself (DGC); the host adds
    /// nothing.
    Internal,
}

/// Why a compressor call failed.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum CompressError {
    /// A payload could not be decoded.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The arguments were refused.
    #[error(transparent)]
    Args(#[from] ArgError),
    /// An output buffer or input tensor of the wrong length.
    #[error("{what}: expected {expected} elements, got {actual}")]
    Length {
        /// Which buffer.
        what: &'static str,
        /// Elements expected.
        expected: usize,
        /// Elements given.
        actual: usize,
    },
    /// Saved state that does not belong to this compressor or tensor.
    #[error("compressor state: {0}")]
    State(String),
    /// Anything else, in plain words.
    #[error("{0}")]
    Failed(String),
}

/// A gradient compressor: one instance per tensor per worker.
pub trait Compressor: Send {
    /// The method's script name (`topk`).
    fn name(&self) -> &str;

    /// The id written in this method's payload headers.
    fn method_id(&self) -> MethodId;

    /// How the workers' payloads combine.
    fn aggregation(&self) -> Aggregation;

    /// Whether the host keeps an error-feedback residual by default.
    fn feedback(&self) -> FeedbackPolicy {
        FeedbackPolicy::OffByDefault
    }

    /// What the error-feedback residual subtracts.
    fn residual_source(&self) -> ResidualSource {
        ResidualSource::OwnPayload
    }

    /// Encode `input` (the first round, for multi-round methods) and append the
    /// payload to `out`.
    fn compress(
        &mut self,
        input: TensorView<'_>,
        ctx: &StepContext<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), CompressError>;

    /// Summable multi-round methods only: receive the reduced payload of the previous
    /// round; append the next round's payload to `out` and return [`Round::More`], or
    /// return [`Round::Done`] when `reduced` is final.
    fn next_round(
        &mut self,
        reduced: &[u8],
        ctx: &StepContext<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Round, CompressError> {
        let _ = (reduced, ctx, out);
        Ok(Round::Done)
    }

    /// `out += scale · decode(payload)`. For a gather method `payload` is one
    /// worker's; for a summable method it is the final reduced payload (the sum).
    fn decompress_add(
        &mut self,
        payload: &[u8],
        scale: f32,
        out: &mut [f32],
    ) -> Result<(), CompressError>;

    /// Append the state needed to resume bit for bit (PowerSGD's Q, DGC's
    /// accumulators, …); stateless methods write nothing.
    fn save_state(&self, out: &mut Vec<u8>) -> Result<(), CompressError> {
        let _ = out;
        Ok(())
    }

    /// Restore what [`Compressor::save_state`] wrote.
    fn load_state(&mut self, state: &[u8]) -> Result<(), CompressError> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(CompressError::State(format!(
                "`{}` keeps no state, but {} bytes of state were given",
                self.name(),
                state.len()
            )))
        }
    }
}
