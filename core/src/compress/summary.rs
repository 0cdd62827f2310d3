//! A machine-independent summary of what a compressor does to one tensor — payload
//! size, compression ratio, relative error and rounded checksums of the decoded
//! tensor — for snapshot tests (`insta::assert_snapshot!(summary.to_string())`), so
//! users can pin their own methods' behaviour on their own fixture gradients.
//!
//! The payload bytes themselves are not summarised by a hash: they are deterministic,
//! but a checksum of floats rounded to a few significant digits stays stable across
//! compilers and CPUs where a byte hash might not.

use std::fmt;

use super::{Aggregation, CompressError, Compressor, Round, StepContext, TensorView};
use crate::trace::round_significant;

/// Significant digits kept in a summary's floats.
pub const SUMMARY_SIGNIFICANT_DIGITS: u32 = 6;

/// What one compression of one tensor by one worker produced.
#[derive(Clone, Debug, PartialEq)]
pub struct PayloadSummary {
    /// The method's name.
    pub method: String,
    /// Elements of the tensor.
    pub elements: usize,
    /// Bytes of a dense f32 exchange (4 per element).
    pub dense_bytes: usize,
    /// Bytes of every payload this worker produced, headers included (all rounds).
    pub payload_bytes: usize,
    /// Rounds of exchange (1 for single-round methods).
    pub rounds: usize,
    /// ‖g − ĝ‖ / ‖g‖ (0 for a zero tensor decoded exactly).
    pub relative_error: f64,
    /// Non-zero elements of the decoded tensor.
    pub nonzeros: usize,
    /// Σ ĝ.
    pub decoded_sum: f64,
    /// Σ |ĝ|.
    pub decoded_abs_sum: f64,
    /// ‖ĝ‖₂.
    pub decoded_norm: f64,
}

impl PayloadSummary {
    /// `dense_bytes / payload_bytes`.
    pub fn ratio(&self) -> f64 {
        self.dense_bytes as f64 / self.payload_bytes.max(1) as f64
    }
}

impl fmt::Display for PayloadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = |x: f64| round_significant(x, SUMMARY_SIGNIFICANT_DIGITS);
        writeln!(f, "method: {}", self.method)?;
        writeln!(f, "elements: {}", self.elements)?;
        writeln!(f, "dense_bytes: {}", self.dense_bytes)?;
        writeln!(f, "payload_bytes: {}", self.payload_bytes)?;
        writeln!(f, "rounds: {}", self.rounds)?;
        writeln!(f, "ratio: {}", r(self.ratio()))?;
        writeln!(f, "relative_error: {}", r(self.relative_error))?;
        writeln!(f, "nonzeros: {}", self.nonzeros)?;
        writeln!(f, "decoded_sum: {}", r(self.decoded_sum))?;
        writeln!(f, "decoded_abs_sum: {}", r(self.decoded_abs_sum))?;
        write!(f, "decoded_norm: {}", r(self.decoded_norm))
    }
}

/// Compress `input` with `compressor` as the only worker (`ctx.world` should be 1),
/// run every round, decode, and summarise.
pub fn summarize(
    compressor: &mut dyn Compressor,
    input: TensorView<'_>,
    ctx: &StepContext<'_>,
) -> Result<PayloadSummary, CompressError> {
    let mut payload = Vec::new();
    compressor.compress(input, ctx, &mut payload)?;
    let mut payload_bytes = payload.len();
    let mut rounds = 1;
    if let Aggregation::Sum(_) = compressor.aggregation() {
        // One worker: the reduced payload is the worker's own.
        loop {
            let mut next = Vec::new();
            match compressor.next_round(&payload, ctx, &mut next)? {
                Round::Done => break,
                Round::More => {
                    payload_bytes += next.len();
                    rounds += 1;
                    payload = next;
                }
            }
        }
    }
    let mut decoded = vec![0.0f32; input.data.len()];
    compressor.decompress_add(&payload, 1.0, &mut decoded)?;
    let (mut error, mut norm) = (0.0f64, 0.0f64);
    for (&g, &d) in input.data.iter().zip(&decoded) {
        error += (f64::from(g) - f64::from(d)).powi(2);
        norm += f64::from(g).powi(2);
    }
    let relative_error = if norm > 0.0 {
        (error / norm).sqrt()
    } else {
        error.sqrt()
    };
    Ok(PayloadSummary {
        method: compressor.name().to_owned(),
        elements: input.data.len(),
        dense_bytes: 4 * input.data.len(),
        payload_bytes,
        rounds,
        relative_error,
        nonzeros: decoded.iter().filter(|&&d| d != 0.0).count(),
        decoded_sum: decoded.iter().map(|&d| f64::from(d)).sum(),
        decoded_abs_sum: decoded.iter().map(|&d| f64::from(d).abs()).sum(),
        decoded_norm: decoded
            .iter()
            .map(|&d| f64::from(d).powi(2))
            .sum::<f64>()
            .sqrt(),
    })
}
