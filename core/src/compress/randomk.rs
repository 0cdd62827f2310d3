//! `randomk(ratio: r, unbiased: true)`: send `k = max(1, ⌈r·n⌉)` elements chosen
//! uniformly at random without replacement (Stich et al. 2018, "Sparsified SGD with
//! memory"; Wangni et al. 2018), the *same* elements on every worker, so no indices
//! go on the wire and the payloads add up: aggregation is a sum of f32.
//!
//! The choice is a pure function of `(seed, step, tensor)` — [`StreamRng`] on
//! [`Stream::RandomK`], deliberately *not* keyed by the rank — so every worker draws
//! the same indices. With `unbiased: true` (default) the values are scaled by `n/k`:
//! each element is sent with probability `k/n`, so `E[decode] = g`. With
//! `unbiased: false` they are sent as they are (a biased estimate with a smaller
//! variance, the usual choice with error feedback).
//!
//! `ratio` may be a schedule (each step's value from [`StepContext::number`]); it
//! must lie in (0, 1]. Error feedback is off unless the script asks for it.
//!
//! # The sampler
//!
//! [`random_indices`] runs Floyd's algorithm (Bentley & Floyd 1987, "A sample of
//! brilliance"): for `j` in `n−k .. n`, draw `t` uniform in `0..=j` and take `t`, or
//! `j` when `t` was already taken. That is exactly `k` draws — no rejection, however
//! dense — and gives every `k`-subset the same probability. Membership lives in a
//! bitset of `n` bits, from which the indices are read back in increasing order:
//! O(k + n/64) in all.
//!
//! # Payload data (after the common header)
//!
//! | bytes | field |
//! |---:|---|
//! | `4·k` | the values at the chosen indices, in increasing index order (f32) |
//!
//! so a payload is `16 + 4·d + 4·k` bytes. The reduced payload (the sum over the
//! workers) is decoded by the instance that compressed this step's payload, with the
//! indices it drew; they are not part of the saved state, since a checkpoint falls
//! between steps.

use regimen_plugin::{ArgError, Args};

use super::bits::write_header;
use super::rng::{Stream, StreamRng};
use super::sparse::{check_sparse_len, element_count, ratio_arg, step_ratio};
use super::{
    Aggregation, CompressError, Compressor, FeedbackPolicy, MethodId, PayloadHeader, StepContext,
    TensorView, WireElement, ERROR_FEEDBACK_ARG,
};

/// `k` distinct indices uniformly at random from `0..n` (all when `k ≥ n`), in
/// increasing order, by Floyd's algorithm on the stream [`Stream::RandomK`] keyed by
/// `key` (`[seed, step, tensor]`). `n` must not exceed
/// [`MAX_SPARSE_ELEMENTS`](super::sparse::MAX_SPARSE_ELEMENTS).
pub fn random_indices(n: usize, k: usize, key: [u64; 3]) -> Vec<u32> {
    let k = k.min(n);
    let mut rng = StreamRng::new(Stream::RandomK, &key);
    let mut taken = vec![0u64; n.div_ceil(64)];
    for j in (n - k)..n {
        let draw = rng.below(j as u64 + 1) as usize;
        let (word, bit) = (draw / 64, draw % 64);
        let pick = match taken.get(word) {
            Some(bits) if bits & (1 << bit) != 0 => j,
            _ => draw,
        };
        if let Some(bits) = taken.get_mut(pick / 64) {
            *bits |= 1 << (pick % 64);
        }
    }
    let mut indices = Vec::with_capacity(k);
    for (w, &word) in taken.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            indices.push((w * 64) as u32 + bits.trailing_zeros());
            bits &= bits - 1;
        }
    }
    indices
}

/// The indices this instance drew for its last payload.
#[derive(Clone, Debug)]
struct Drawn {
    numel: usize,
    indices: Vec<u32>,
}

/// The `randomk` compressor. Between a compress and the decoding of the reduced
/// payload it holds the indices it drew.
#[derive(Clone, Debug)]
pub struct RandomK {
    ratio: f64,
    unbiased: bool,
    drawn: Option<Drawn>,
}

impl RandomK {
    /// From `ratio` (required, in (0, 1]) and `unbiased` (default `true`: values scaled
    /// by `n/k`).
    pub fn new(args: &Args) -> Result<Self, ArgError> {
        args.only(&["ratio", "unbiased", ERROR_FEEDBACK_ARG])?;
        Ok(Self {
            ratio: ratio_arg(args, "ratio", None)?,
            unbiased: args.bool("unbiased", true)?,
            drawn: None,
        })
    }

    /// The configured ratio (used on steps without a scheduled value).
    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    /// Whether the values are scaled by `n/k`.
    pub fn unbiased(&self) -> bool {
        self.unbiased
    }

    /// The indices drawn by the last compress, if any.
    pub fn last_indices(&self) -> Option<&[u32]> {
        self.drawn.as_ref().map(|d| d.indices.as_slice())
    }
}

/// `randomk`: shared random indices, summable values.
pub fn build(args: &Args) -> Result<Box<dyn Compressor>, ArgError> {
    Ok(Box::new(RandomK::new(args)?))
}

impl Compressor for RandomK {
    fn name(&self) -> &str {
        "randomk"
    }

    fn method_id(&self) -> MethodId {
        MethodId::RANDOMK
    }

    fn aggregation(&self) -> Aggregation {
        Aggregation::Sum(WireElement::F32)
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
        // A failed compress must not leave the previous step's indices to decode with.
        self.drawn = None;
        let data = input.data;
        let n = data.len();
        check_sparse_len(n)?;
        let ratio = step_ratio(self.ratio, ctx, "ratio")?;
        write_header(self.method_id(), &input, out)?;
        let k = element_count(ratio, n);
        let indices = random_indices(n, k, [ctx.seed, ctx.step, ctx.tensor as u64]);
        let factor = if self.unbiased && k > 0 {
            (n as f64 / k as f64) as f32
        } else {
            1.0
        };
        out.reserve(4 * k);
        for &index in &indices {
            let value = data.get(index as usize).copied().unwrap_or(0.0);
            out.extend_from_slice(&(value * factor).to_le_bytes());
        }
        self.drawn = Some(Drawn { numel: n, indices });
        Ok(())
    }

    fn decompress_add(
        &mut self,
        payload: &[u8],
        scale: f32,
        out: &mut [f32],
    ) -> Result<(), CompressError> {
        let (_, mut reader) = PayloadHeader::parse(payload, self.method_id(), out.len())?;
        let drawn = self.drawn.as_ref().ok_or_else(|| {
            CompressError::Failed(
                "randomk decodes only the reduced payload of its own last compress".into(),
            )
        })?;
        if drawn.numel != out.len() {
            return Err(CompressError::Length {
                what: "randomk output (the tensor of the last compress)",
                expected: drawn.numel,
                actual: out.len(),
            });
        }
        let values = reader.array(drawn.indices.len(), 4)?;
        reader.finish()?;
        for (&index, bytes) in drawn.indices.iter().zip(values.chunks_exact(4)) {
            if let Some(slot) = out.get_mut(index as usize) {
                *slot += scale * f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            }
        }
        Ok(())
    }
}
