//! `powersgd(rank:, start:, min_rate:, warm_start:)` — PowerSGD (Vogels, Karimireddy &
//! Jaggi 2019), as PyTorch's DDP hook `torch.distributed.algorithms.ddp_comm_hooks.
//! powerSGD_hook` does it: a rank-r approximation of each gradient matrix by one step
//! of subspace (power) iteration, warm-started from the previous step.
//!
//! # Arguments
//!
//! | argument | default | meaning (PyTorch `PowerSGDState` field) |
//! |---|---|---|
//! | `rank` | 1 | rank r of the approximation, an integer ≥ 1 (`matrix_approximation_rank`) |
//! | `start` | 10 | steps sent uncompressed before compression starts, ≥ 0 (`start_powerSGD_iter`) |
//! | `min_rate` | 2 | compress an n×m matrix only if `(n + m)·r·min_rate < n·m`, ≥ 0 (`min_compression_rate`) |
//! | `warm_start` | `true` | start each step's power iteration from the previous step's Q (`warm_start`) |
//!
//! Error feedback is on by default ([`FeedbackPolicy::OnByDefault`], PyTorch's
//! `use_error_feedback=True`) and subtracts the aggregate ([`ResidualSource::Aggregate`]):
//! like PyTorch's `error = input − P̂·Q_avgᵀ`, a worker has no local reconstruction.
//! The arguments are fixed for the run (a scheduled value in the step context is
//! ignored).
//!
//! # Algorithm (one step, one tensor, W workers)
//!
//! The tensor is viewed as a matrix `M` of `n = shape[0]` rows and `m = numel / n`
//! columns (PyTorch's `tensor.view(tensor.shape[0], -1)`), and `r = min(n, m, rank)`.
//! A tensor of fewer than two dimensions, without elements, or with
//! `(n + m)·r·min_rate ≥ n·m` is always sent uncompressed, as is every tensor at the
//! steps `< start` (the step counter of the [`StepContext`], from 0).
//!
//! 1. `Q` (m×r): the previous step's summed `Q` with `warm_start` (PyTorch keeps the
//!    all-reduced Q; it keeps it divided by W, which the next line makes irrelevant),
//!    otherwise — and at the first compressed step — standard normal draws from
//!    [`StreamRng`] keyed by `(seed, tensor, step)` under [`Stream::PowerSgd`]: the same
//!    on every worker, whatever its rank. `Q` is orthonormalised (as PyTorch does
//!    before every `P = M·Q`); a vanishing column is redrawn (key `(seed, tensor, step,
//!    column, attempt)`), so an all-zero gradient cannot leave the warm start stuck at 0.
//! 2. Round 0: `P = M·Q` (n×r) is sent and summed over the workers.
//! 3. `P̂` = the summed `P` orthonormalised by Gram–Schmidt in f64 (PyTorch uses
//!    Gram–Schmidt for rank ≤ 2 and a QR factorisation above, which give the same `P̂`
//!    up to column signs and rounding); a vanishing column becomes zero — see
//!    [`linalg::VANISHING_RATIO`] for the guard that replaces PyTorch's
//!    `orthogonalization_epsilon`.
//! 4. Round 1: `Q = Mᵀ·P̂` (m×r) is sent and summed: `Q_sum`.
//! 5. Decoding: `out += scale · P̂·Q_sumᵀ`; with the host's `scale = 1/W` that is
//!    PyTorch's `P̂·Q_avgᵀ = P̂·P̂ᵀ·M_avg`, the projection of the average gradient onto
//!    the span of `P̂`.
//!
//! Iterated on a fixed matrix, steps 1–4 are subspace iteration: `P̂` converges to the
//! top-r left singular vectors and the error to the SVD truncation error
//! `√(Σ_{i>r} σᵢ²)`.
//!
//! # Protocol and payloads
//!
//! The host drives the rounds as the [`Compressor`] documentation says:
//! [`Compressor::compress`] writes round 0 (or the dense tensor), each
//! [`Compressor::next_round`] receives the summed payload of the previous round, and
//! [`Compressor::decompress_add`] decodes the last one. The data sections are plain
//! little-endian f32 arrays (summed by the allreduce); since the allreduce sums
//! everything after the header, the payload kind is carried by the header's shape,
//! whose trailing unit dimensions are the round tag:
//!
//! | payload | header shape | data (f32, little-endian) | next |
//! |---|---|---|---|
//! | dense | `[numel]` | the tensor, row-major | `next_round` → `Done`; decoded |
//! | round 0 | `[n, m, 1]` | `P`, n×r row-major | `next_round` → round 1, `More` |
//! | round 1 | `[n, m, 1, 1]` | `Q`, m×r row-major | `next_round` → `Done`; decoded |
//!
//! so a compressed step puts `(16 + 12) + (16 + 16) + 4·r·(n + m)` bytes on the wire
//! per worker, and an uncompressed one `20 + 4·numel` (header dimensions are u32, so
//! `numel`, `n` and `m` must stay below 2³²; larger tensors are refused with an
//! error). The rank is not written: the data length must be exactly `4·n·r` (resp.
//! `4·m·r`) for this compressor's `r`. Decoding checks the header (method, element count), the round tag against the
//! exchange in progress, the matrix dimensions against the tensor's, the exact length,
//! and that every value is finite; a round-1 payload decodes only on the worker that
//! took part in the exchange (it holds `P̂`). Nothing is decoded from a round-0 payload.
//!
//! # State
//!
//! [`Compressor::save_state`] writes the warm-start `Q` (nothing without warm start or
//! before the first compressed step), little-endian:
//!
//! | bytes | field |
//! |---:|---|
//! | 4 | magic `PSGD` |
//! | 1 | version 1 |
//! | 8 | n (u64) |
//! | 8 | m (u64) |
//! | 4 | r (u32) |
//! | 4·m·r | `Q_sum`, m×r row-major f32 |
//!
//! That is everything a step reads from earlier steps (the random draws are keyed by
//! the step), so a compressor restored from it between two steps continues bit for bit.
//! An exchange in progress is not saved: checkpoints are taken between steps.
//!
//! # Speed and determinism
//!
//! `M` (a copy of the input, needed by round 1 after the input is gone), `P`, `Q` and
//! all scratch space are kept between steps: after the first, a step allocates nothing
//! that grows with the tensor (only the few bytes of each payload header).
//! The products are the skinny streaming kernels of [`kernels`] (why not a general
//! GEMM, and how they use AVX2 without `unsafe`, is explained there); their results do
//! not depend on the thread count or the instruction set, and the f64 Gram–Schmidt is
//! sequential, so every worker holds bit-identical `P̂` and decoded outputs.
//! [`kernels::reference_products`] runs the same three products with a general GEMM and
//! [`kernels::step_flops`] counts them, for the benchmark.

pub mod kernels;
pub mod linalg;

use std::fmt;

use rayon::prelude::*;
use regimen_plugin::{ArgError, Args};

use self::kernels::{
    add_outer, block, copy_and_project, project_transpose, unblock, InstructionSet,
};
use self::linalg::{orthonormalize, NormalDraws};
use super::rng::{Stream, StreamRng};
use super::{
    Aggregation, CompressError, Compressor, FeedbackPolicy, MethodId, PayloadHeader,
    ResidualSource, Round, StepContext, TensorView, WireElement, WireError, WireReader,
    ERROR_FEEDBACK_ARG,
};

/// Default `rank` (PyTorch's `matrix_approximation_rank`).
pub const DEFAULT_RANK: usize = 1;
/// Default `start`, in steps.
pub const DEFAULT_START: f64 = 10.0;
/// Default `min_rate` (PyTorch's `min_compression_rate`).
pub const DEFAULT_MIN_RATE: f64 = 2.0;
/// Largest `rank` accepted (the effective rank is also capped by the matrix's sides).
pub const MAX_RANK: usize = 1 << 20;

/// Magic bytes of the saved state.
const STATE_MAGIC: [u8; 4] = *b"PSGD";
/// Version of the saved state's layout.
const STATE_VERSION: u8 = 1;

/// Elements per parallel task when adding a dense payload.
const DENSE_TASK: usize = 64 * 1024;

/// How a tensor is compressed: its matrix view and the effective rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatrixView {
    /// `n = shape[0]`.
    pub rows: usize,
    /// `m = numel / n`.
    pub cols: usize,
    /// `r = min(n, m, rank)`.
    pub rank: usize,
}

/// What the exchange of the current step is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No exchange since construction or the last state load.
    Idle,
    /// A dense payload was written; its sum comes back to `next_round`.
    Dense,
    /// Round 0 was written; the summed `P` comes back.
    AwaitingP,
    /// Round 1 was written (`P̂` is held); the summed `Q` comes back.
    AwaitingQ,
    /// The exchange is over; `compressed` says whether `P̂` belongs to it.
    Finished {
        /// Whether the step was compressed.
        compressed: bool,
    },
}

/// The kind of a payload, from its header's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dense,
    RoundP { rows: u32, cols: u32 },
    RoundQ { rows: u32, cols: u32 },
}

impl Kind {
    fn of(header: &PayloadHeader) -> Result<Self, WireError> {
        match header.shape[..] {
            [_] => Ok(Kind::Dense),
            [rows, cols, 1] => Ok(Kind::RoundP { rows, cols }),
            [rows, cols, 1, 1] => Ok(Kind::RoundQ { rows, cols }),
            _ => Err(WireError::Shape(format!(
                "PowerSGD payloads have the shape [numel], [n, m, 1] or [n, m, 1, 1], not {:?}",
                header.shape
            ))),
        }
    }
}

/// The PowerSGD compressor of one tensor on one worker.
pub struct PowerSgd {
    rank: usize,
    start: f64,
    min_rate: f64,
    warm_start: bool,
    phase: Phase,
    /// The view of the last compressed step.
    view: Option<MatrixView>,
    /// `M`, row-major n×m.
    matrix: Vec<f32>,
    /// `P` (local), then `P̂` after round 0; row-major n×r.
    p: Vec<f32>,
    /// The step's `Q` (orthonormal), then `Mᵀ·P̂`; row-major m×r.
    q: Vec<f32>,
    /// `Q` in the kernels' blocked layout.
    q_blocked: Vec<f32>,
    /// Per-block partials of `Mᵀ·P̂`.
    partials: Vec<f32>,
    /// f64 scratch of the orthonormalisation.
    scratch: Vec<f64>,
    /// The summed `Q` of the last compressed step (warm start only); row-major m×r.
    warm: Option<(MatrixView, Vec<f32>)>,
    /// A decoded round-1 `Q`, row-major and blocked (decoding scratch).
    decoded: Vec<f32>,
    decoded_blocked: Vec<f32>,
}

impl fmt::Debug for PowerSgd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PowerSgd")
            .field("rank", &self.rank)
            .field("start", &self.start)
            .field("min_rate", &self.min_rate)
            .field("warm_start", &self.warm_start)
            .field("phase", &self.phase)
            .field("view", &self.view)
            .field("has_warm_q", &self.warm.is_some())
            .finish_non_exhaustive()
    }
}

/// `powersgd`: PowerSGD low-rank compression.
pub fn build(args: &Args) -> Result<Box<dyn Compressor>, ArgError> {
    Ok(Box::new(PowerSgd::new(args)?))
}

fn arg_error(name: &str, message: impl Into<String>) -> ArgError {
    ArgError {
        argument: Some(name.to_owned()),
        message: message.into(),
    }
}

impl PowerSgd {
    /// Configure from `rank`, `start`, `min_rate`, `warm_start` (and the host's
    /// `error_feedback`); see the module documentation for their meaning and defaults.
    pub fn new(args: &Args) -> Result<Self, ArgError> {
        args.only(&[
            "rank",
            "start",
            "min_rate",
            "warm_start",
            ERROR_FEEDBACK_ARG,
        ])?;
        let rank = args.number("rank", Some(DEFAULT_RANK as f64))?;
        if !(rank.is_finite() && rank.fract() == 0.0 && rank >= 1.0 && rank <= MAX_RANK as f64) {
            return Err(arg_error(
                "rank",
                format!("must be a whole number from 1 to {MAX_RANK}, got {rank}"),
            ));
        }
        let start = args.number("start", Some(DEFAULT_START))?;
        if !(start.is_finite() && start >= 0.0) {
            return Err(arg_error(
                "start",
                format!("must be a number of steps ≥ 0, got {start}"),
            ));
        }
        let min_rate = args.number("min_rate", Some(DEFAULT_MIN_RATE))?;
        if !(min_rate.is_finite() && min_rate >= 0.0) {
            return Err(arg_error(
                "min_rate",
                format!("must be a finite number ≥ 0, got {min_rate}"),
            ));
        }
        let warm_start = args.bool("warm_start", true)?;
        Ok(Self {
            rank: rank as usize,
            start,
            min_rate,
            warm_start,
            phase: Phase::Idle,
            view: None,
            matrix: Vec::new(),
            p: Vec::new(),
            q: Vec::new(),
            q_blocked: Vec::new(),
            partials: Vec::new(),
            scratch: Vec::new(),
            warm: None,
            decoded: Vec::new(),
            decoded_blocked: Vec::new(),
        })
    }

    /// How a tensor of `shape` is compressed once past `start`: its matrix view and
    /// rank, or `None` when it is always sent uncompressed (fewer than two dimensions,
    /// no elements, or `(n + m)·r·min_rate ≥ n·m`).
    pub fn plan(&self, shape: &[usize]) -> Option<MatrixView> {
        let (&rows, rest) = shape.split_first()?;
        if rest.is_empty() {
            return None;
        }
        let cols = rest
            .iter()
            .try_fold(1usize, |product, &dim| product.checked_mul(dim))?;
        if rows == 0 || cols == 0 {
            return None;
        }
        let rank = rows.min(cols).min(self.rank);
        let compressed = (rows as f64 + cols as f64) * rank as f64 * self.min_rate;
        (compressed < rows as f64 * cols as f64).then_some(MatrixView { rows, cols, rank })
    }

    /// `P̂` of the current step (row-major n×r, orthonormal columns), once the summed
    /// `P` has come back through [`Compressor::next_round`]; `None` before, and for an
    /// uncompressed step.
    pub fn p_hat(&self) -> Option<&[f32]> {
        matches!(
            self.phase,
            Phase::AwaitingQ | Phase::Finished { compressed: true }
        )
        .then_some(&self.p[..])
    }

    /// The warm-start `Q` the next compressed step starts from (the summed `Q` of the
    /// last one, row-major m×r), if any.
    pub fn warm_q(&self) -> Option<&[f32]> {
        self.warm.as_ref().map(|(_, q)| &q[..])
    }

    /// `Q` for this step, orthonormalised, in `self.q` and `self.q_blocked`.
    fn prepare_q(&mut self, view: MatrixView, ctx: &StepContext<'_>) -> Result<(), CompressError> {
        let MatrixView {
            rows: _,
            cols: m,
            rank: r,
        } = view;
        let (seed, tensor, step) = (ctx.seed, ctx.tensor as u64, ctx.step);
        match (&self.warm, self.warm_start) {
            (Some((warm_view, warm_q)), true) => {
                if *warm_view != view {
                    return Err(CompressError::State(format!(
                        "the warm-start Q is for a {}×{} matrix at rank {}, this tensor is \
                         {}×{} at rank {}",
                        warm_view.rows, warm_view.cols, warm_view.rank, view.rows, m, r
                    )));
                }
                self.q.clear();
                self.q.extend_from_slice(warm_q);
            }
            _ => {
                self.q.clear();
                self.q.extend(
                    NormalDraws::new(StreamRng::new(Stream::PowerSgd, &[seed, tensor, step]))
                        .take(m * r),
                );
            }
        }
        orthonormalize(
            &mut self.q,
            m,
            r,
            &mut self.scratch,
            |column, attempt, values| {
                let key = [seed, tensor, step, column as u64, attempt as u64];
                let draws = NormalDraws::new(StreamRng::new(Stream::PowerSgd, &key));
                for (value, draw) in values.iter_mut().zip(draws) {
                    *value = f64::from(draw);
                }
                true
            },
        );
        block(&self.q, m, r, &mut self.q_blocked);
        Ok(())
    }

    /// Round 0 of a compressed step.
    fn compress_matrix(
        &mut self,
        view: MatrixView,
        data: &[f32],
        ctx: &StepContext<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), CompressError> {
        let header = PayloadHeader::new(MethodId::POWERSGD, &[view.rows, view.cols, 1])?;
        self.prepare_q(view, ctx)?;
        let (n, m, r) = (view.rows, view.cols, view.rank);
        self.matrix.resize(n * m, 0.0);
        self.p.resize(n * r, 0.0);
        copy_and_project(
            InstructionSet::Detected,
            data,
            &mut self.matrix,
            m,
            &self.q_blocked,
            r,
            &mut self.p,
        );
        out.reserve(header.encoded_len() + 4 * n * r);
        header.write(out);
        append_f32s(&self.p, out);
        self.view = Some(view);
        self.phase = Phase::AwaitingP;
        Ok(())
    }

    /// The view of the exchange in progress, checked against a payload's dimensions.
    fn current_view(&self, rows: u32, cols: u32) -> Result<MatrixView, CompressError> {
        let view = self
            .view
            .ok_or_else(|| CompressError::State("no compressed step in progress".into()))?;
        if (view.rows as u64, view.cols as u64) != (u64::from(rows), u64::from(cols)) {
            return Err(WireError::Shape(format!(
                "payload for a {rows}×{cols} matrix, this tensor is {}×{}",
                view.rows, view.cols
            ))
            .into());
        }
        Ok(view)
    }

    /// Round 1: orthonormalise the summed `P`, send `Mᵀ·P̂`.
    fn round_q(&mut self, reduced: &[u8], out: &mut Vec<u8>) -> Result<Round, CompressError> {
        let numel = self.view.map_or(0, |v| v.rows * v.cols);
        let (header, mut reader) = PayloadHeader::parse(reduced, MethodId::POWERSGD, numel)?;
        let Kind::RoundP { rows, cols } = Kind::of(&header)? else {
            return Err(unexpected("a round-0 (P) payload", &header));
        };
        let view = self.current_view(rows, cols)?;
        let (n, m, r) = (view.rows, view.cols, view.rank);
        read_f32s(&mut reader, n * r, "P", &mut self.p)?;
        orthonormalize(&mut self.p, n, r, &mut self.scratch, |_, _, _| false);
        self.q_blocked.resize(kernels::blocked_len(m, r), 0.0);
        project_transpose(
            InstructionSet::Detected,
            &self.matrix,
            m,
            &self.p,
            r,
            &mut self.partials,
            &mut self.q_blocked,
        );
        unblock(&self.q_blocked, m, r, &mut self.q);
        let header = PayloadHeader::new(MethodId::POWERSGD, &[n, m, 1, 1])?;
        out.reserve(header.encoded_len() + 4 * m * r);
        header.write(out);
        append_f32s(&self.q, out);
        self.phase = Phase::AwaitingQ;
        Ok(Round::More)
    }

    /// The end of a compressed exchange: keep the summed `Q` for the warm start.
    fn finish_q(&mut self, reduced: &[u8]) -> Result<Round, CompressError> {
        let numel = self.view.map_or(0, |v| v.rows * v.cols);
        let (header, mut reader) = PayloadHeader::parse(reduced, MethodId::POWERSGD, numel)?;
        let Kind::RoundQ { rows, cols } = Kind::of(&header)? else {
            return Err(unexpected("a round-1 (Q) payload", &header));
        };
        let view = self.current_view(rows, cols)?;
        read_f32s(&mut reader, view.cols * view.rank, "Q", &mut self.decoded)?;
        if self.warm_start {
            // Swap buffers rather than allocate: the old warm Q becomes decoding scratch.
            match &mut self.warm {
                Some((warm_view, warm_q)) => {
                    *warm_view = view;
                    std::mem::swap(warm_q, &mut self.decoded);
                }
                None => self.warm = Some((view, std::mem::take(&mut self.decoded))),
            }
        }
        self.phase = Phase::Finished { compressed: true };
        Ok(Round::Done)
    }
}

/// The error for a payload of the wrong kind at this point of the exchange.
fn unexpected(expected: &str, header: &PayloadHeader) -> CompressError {
    WireError::Shape(format!(
        "expected {expected}, got a payload of shape {:?}",
        header.shape
    ))
    .into()
}

/// Append `values` as little-endian f32.
fn append_f32s(values: &[f32], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + 4 * values.len(), 0);
    for (bytes, value) in out[start..].chunks_exact_mut(4).zip(values) {
        bytes.copy_from_slice(&value.to_le_bytes());
    }
}

/// Read exactly `count` finite f32 (the rest of the payload) into `into`.
fn read_f32s(
    reader: &mut WireReader<'_>,
    count: usize,
    what: &str,
    into: &mut Vec<f32>,
) -> Result<(), CompressError> {
    let bytes = reader.array(count, 4)?;
    reader.finish()?;
    into.clear();
    into.extend(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
    );
    if let Some(bad) = into.iter().position(|v| !v.is_finite()) {
        return Err(WireError::Corrupt(format!("{what}[{bad}] is not finite")).into());
    }
    Ok(())
}

/// `out += scale · data` for a dense payload's data section.
fn add_dense(data: &[u8], scale: f32, out: &mut [f32]) {
    out.par_chunks_mut(DENSE_TASK)
        .zip(data.par_chunks(4 * DENSE_TASK))
        .for_each(|(out, data)| {
            for (value, b) in out.iter_mut().zip(data.chunks_exact(4)) {
                *value += scale * f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        });
}

impl Compressor for PowerSgd {
    fn name(&self) -> &str {
        "powersgd"
    }

    fn method_id(&self) -> MethodId {
        MethodId::POWERSGD
    }

    fn aggregation(&self) -> Aggregation {
        Aggregation::Sum(WireElement::F32)
    }

    fn feedback(&self) -> FeedbackPolicy {
        FeedbackPolicy::OnByDefault
    }

    fn residual_source(&self) -> ResidualSource {
        ResidualSource::Aggregate
    }

    fn compress(
        &mut self,
        input: TensorView<'_>,
        ctx: &StepContext<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), CompressError> {
        let numel = input.data.len();
        let expected = input
            .shape
            .iter()
            .try_fold(1usize, |product, &dim| product.checked_mul(dim));
        if expected != Some(numel) {
            return Err(CompressError::Length {
                what: "tensor data for its shape",
                expected: expected.unwrap_or(usize::MAX),
                actual: numel,
            });
        }
        self.phase = Phase::Idle;
        match self.plan(input.shape) {
            Some(view) if ctx.step as f64 >= self.start => {
                self.compress_matrix(view, input.data, ctx, out)
            }
            _ => {
                let header = PayloadHeader::new(MethodId::POWERSGD, &[numel])?;
                out.reserve(header.encoded_len() + 4 * numel);
                header.write(out);
                append_f32s(input.data, out);
                self.phase = Phase::Dense;
                Ok(())
            }
        }
    }

    fn next_round(
        &mut self,
        reduced: &[u8],
        _ctx: &StepContext<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Round, CompressError> {
        match self.phase {
            Phase::Dense => {
                let mut reader = WireReader::new(reduced);
                let header = PayloadHeader::read(&mut reader)?;
                if header.method != MethodId::POWERSGD {
                    return Err(WireError::Method {
                        expected: MethodId::POWERSGD.0,
                        found: header.method.0,
                    }
                    .into());
                }
                if Kind::of(&header)? != Kind::Dense {
                    return Err(unexpected("a dense payload", &header));
                }
                let numel = usize::try_from(header.numel)
                    .map_err(|_| WireError::Shape("element count exceeds usize".into()))?;
                reader.array(numel, 4)?;
                reader.finish()?;
                self.phase = Phase::Finished { compressed: false };
                Ok(Round::Done)
            }
            Phase::AwaitingP => self.round_q(reduced, out),
            Phase::AwaitingQ => self.finish_q(reduced),
            Phase::Idle | Phase::Finished { .. } => Err(CompressError::State(
                "next_round called with no exchange in progress (compress first)".into(),
            )),
        }
    }

    fn decompress_add(
        &mut self,
        payload: &[u8],
        scale: f32,
        out: &mut [f32],
    ) -> Result<(), CompressError> {
        let (header, mut reader) = PayloadHeader::parse(payload, MethodId::POWERSGD, out.len())?;
        match Kind::of(&header)? {
            Kind::Dense => {
                let data = reader.array(out.len(), 4)?;
                reader.finish()?;
                add_dense(data, scale, out);
                Ok(())
            }
            Kind::RoundP { .. } => Err(CompressError::Failed(
                "a round-0 (P) payload is not decodable: it goes to next_round".into(),
            )),
            Kind::RoundQ { rows, cols } => {
                if self.p_hat().is_none() {
                    return Err(CompressError::State(
                        "a round-1 (Q) payload decodes only after this worker's round 0 \
                         (it needs P̂)"
                            .into(),
                    ));
                }
                let view = self.current_view(rows, cols)?;
                let (m, r) = (view.cols, view.rank);
                read_f32s(&mut reader, m * r, "Q", &mut self.decoded)?;
                block(&self.decoded, m, r, &mut self.decoded_blocked);
                add_outer(
                    InstructionSet::Detected,
                    out,
                    m,
                    &self.p,
                    r,
                    &self.decoded_blocked,
                    scale,
                );
                Ok(())
            }
        }
    }

    fn save_state(&self, out: &mut Vec<u8>) -> Result<(), CompressError> {
        let Some((view, q)) = &self.warm else {
            return Ok(());
        };
        let rank = u32::try_from(view.rank)
            .map_err(|_| CompressError::State(format!("rank {} exceeds u32", view.rank)))?;
        out.reserve(25 + 4 * q.len());
        out.extend_from_slice(&STATE_MAGIC);
        out.push(STATE_VERSION);
        out.extend_from_slice(&(view.rows as u64).to_le_bytes());
        out.extend_from_slice(&(view.cols as u64).to_le_bytes());
        out.extend_from_slice(&rank.to_le_bytes());
        append_f32s(q, out);
        Ok(())
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), CompressError> {
        self.phase = Phase::Idle;
        if state.is_empty() {
            self.warm = None;
            return Ok(());
        }
        let bad = |message: String| CompressError::State(format!("powersgd: {message}"));
        let mut reader = WireReader::new(state);
        let wire = |e: WireError| bad(e.to_string());
        if reader.bytes(4).map_err(wire)? != STATE_MAGIC {
            return Err(bad("not a PowerSGD state (bad magic)".into()));
        }
        let version = reader.u8().map_err(wire)?;
        if version != STATE_VERSION {
            return Err(bad(format!(
                "state version {version}, this build reads version {STATE_VERSION}"
            )));
        }
        let rows = usize::try_from(reader.u64().map_err(wire)?);
        let cols = usize::try_from(reader.u64().map_err(wire)?);
        let rank = usize::try_from(reader.u32().map_err(wire)?);
        let (Ok(rows), Ok(cols), Ok(rank)) = (rows, cols, rank) else {
            return Err(bad("dimensions exceed usize".into()));
        };
        if !self.warm_start {
            return Err(bad(
                "the state holds a warm-start Q but `warm_start` is false".into(),
            ));
        }
        if rows == 0 || cols == 0 || rank != rows.min(cols).min(self.rank) {
            return Err(bad(format!(
                "a {rows}×{cols} matrix at rank {rank} does not fit `rank: {}`",
                self.rank
            )));
        }
        let count = cols
            .checked_mul(rank)
            .ok_or_else(|| bad("Q's size overflows".into()))?;
        let mut q = Vec::new();
        read_f32s(&mut reader, count, "Q", &mut q).map_err(|e| bad(e.to_string()))?;
        self.warm = Some((MatrixView { rows, cols, rank }, q));
        Ok(())
    }
}
