//! `threshold(value: t)`: send every element with `|g_i| ≥ t`, with its index
//! (Strom 2015's fixed-threshold sparsification, without its quantization). How many
//! elements go on the wire depends on the gradient: from none to all of them.
//! Aggregation is gather.
//!
//! `value` must be finite and ≥ 0 (0 sends everything); it may be a schedule, read
//! each step from [`StepContext::number`]. Error feedback is off unless the script
//! says `with error_feedback`.
//!
//! # Payload data (after the common header)
//!
//! The sparse layout of [`sparse`](super::sparse): a tag byte, `k` (u32), the indices
//! in the smallest of three encodings, then `k` f32 values — `16 + 4·d + 5 + I + 4·k`
//! bytes, where `k` is the number of elements at or above the threshold.

use regimen_plugin::{ArgError, Args};

use super::bits::write_header;
use super::sparse::{at_least, check_sparse_len, decompress_sparse_add, write_sparse_data};
use super::{
    Aggregation, CompressError, Compressor, FeedbackPolicy, MethodId, StepContext, TensorView,
    ERROR_FEEDBACK_ARG,
};

/// The `threshold` compressor; it keeps no state.
#[derive(Clone, Debug)]
pub struct Threshold {
    value: f32,
}

fn value_error(value: f64) -> ArgError {
    ArgError {
        argument: Some("value".into()),
        message: format!("must be a finite magnitude ≥ 0, got {value}"),
    }
}

/// `value` as an f32 threshold, refused unless finite and non-negative.
fn checked_value(value: f64) -> Result<f32, ArgError> {
    let narrowed = value as f32;
    if value >= 0.0 && narrowed.is_finite() {
        Ok(narrowed)
    } else {
        Err(value_error(value))
    }
}

impl Threshold {
    /// From `value` (required): the magnitude at or above which an element is sent.
    pub fn new(args: &Args) -> Result<Self, ArgError> {
        args.only(&["value", ERROR_FEEDBACK_ARG])?;
        Ok(Self {
            value: checked_value(args.number("value", None)?)?,
        })
    }

    /// The configured threshold (used on steps without a scheduled value).
    pub fn value(&self) -> f32 {
        self.value
    }
}

/// `threshold`: every element with |g| at or above `value`.
pub fn build(args: &Args) -> Result<Box<dyn Compressor>, ArgError> {
    Ok(Box::new(Threshold::new(args)?))
}

impl Compressor for Threshold {
    fn name(&self) -> &str {
        "threshold"
    }

    fn method_id(&self) -> MethodId {
        MethodId::THRESHOLD
    }

    fn aggregation(&self) -> Aggregation {
        Aggregation::Gather
    }

    fn feedback(&self) -> FeedbackPolicy {
        FeedbackPolicy::OffByDefault
    }

    fn compress(
        &mut self,
        input: TensorView<'_>,
        ctx: &StepContext<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), CompressError> {
        check_sparse_len(input.data.len())?;
        let value = match ctx.number("value") {
            Some(scheduled) => checked_value(scheduled)?,
            None => self.value,
        };
        write_header(self.method_id(), &input, out)?;
        let selection = at_least(input.data, value)?;
        write_sparse_data(&selection, input.data.len(), out)
    }

    fn decompress_add(
        &mut self,
        payload: &[u8],
        scale: f32,
        out: &mut [f32],
    ) -> Result<(), CompressError> {
        decompress_sparse_add(self.method_id(), payload, scale, out)
    }
}
