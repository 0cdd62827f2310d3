//! `topk(ratio: r, approx: exact|sample)`: send the `k = max(1, ⌈r·n⌉)` elements of
//! largest magnitude with their indices (Aji & Heafield 2017; Stich et al. 2018 with
//! error feedback). Aggregation is gather: each worker's payload is decoded and the
//! decodings averaged.
//!
//! - `approx: exact` (default): exactly the k largest |g_i|, ties broken by the lower
//!   index — an O(n) radix select, not a sort ([`top_k`]).
//! - `approx: sample`: DGC's sampled threshold ([`sampled_top_k`]), at most k
//!   elements, one pass over the data after sampling 1% of it.
//!
//! `ratio` may be a schedule: each step uses the scheduled value (from
//! [`StepContext::number`]) and otherwise the configured one; it must lie in (0, 1].
//!
//! Error feedback is off unless the script says `with error_feedback` (the usual way
//! to run top-k: the residual memory makes up for what was not sent).
//!
//! # Payload data (after the common header)
//!
//! The sparse layout of [`sparse`](super::sparse): a tag byte, `k` (u32), the indices
//! in the smallest of three encodings, then `k` f32 values — `16 + 4·d + 5 + I + 4·k`
//! bytes.

use regimen_plugin::{ArgError, Args};

use super::bits::write_header;
use super::sparse::{
    check_sparse_len, decompress_sparse_add, element_count, ratio_arg, sample_key, sampled_top_k,
    step_ratio, top_k, write_sparse_data, Approx,
};
use super::{
    Aggregation, CompressError, Compressor, FeedbackPolicy, MethodId, StepContext, TensorView,
    ERROR_FEEDBACK_ARG,
};

/// The `topk` compressor; it keeps no state.
#[derive(Clone, Debug)]
pub struct TopK {
    ratio: f64,
    approx: Approx,
}

impl TopK {
    /// From `ratio` (required, in (0, 1]) and `approx` (`exact` or `sample`, default
    /// `exact`).
    pub fn new(args: &Args) -> Result<Self, ArgError> {
        args.only(&["ratio", "approx", ERROR_FEEDBACK_ARG])?;
        Ok(Self {
            ratio: ratio_arg(args, "ratio", None)?,
            approx: Approx::from_args(args, Approx::Exact)?,
        })
    }

    /// The configured ratio (used on steps without a scheduled value).
    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    /// How the elements are selected.
    pub fn approx(&self) -> Approx {
        self.approx
    }
}

/// `topk`: the k largest magnitudes with their indices.
pub fn build(args: &Args) -> Result<Box<dyn Compressor>, ArgError> {
    Ok(Box::new(TopK::new(args)?))
}

impl Compressor for TopK {
    fn name(&self) -> &str {
        "topk"
    }

    fn method_id(&self) -> MethodId {
        MethodId::TOPK
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
        let data = input.data;
        check_sparse_len(data.len())?;
        let ratio = step_ratio(self.ratio, ctx, "ratio")?;
        write_header(self.method_id(), &input, out)?;
        let k = element_count(ratio, data.len());
        let selection = match self.approx {
            Approx::Exact => top_k(data, k)?,
            Approx::Sample => sampled_top_k(data, k, ratio, sample_key(ctx))?,
        };
        write_sparse_data(&selection, data.len(), out)
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
