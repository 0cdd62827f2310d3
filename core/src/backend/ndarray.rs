//! The CPU backend: flat `ndarray` f32 buffers, every kernel one fused pass over
//! contiguous slices, split over the rayon pool for large tensors.
//!
//! Why the kernels look the way they do:
//! - Streaming kernels are memory-bound, so each reads and writes every operand once,
//!   allocates nothing and iterates with `zip` over slices (no bounds checks), which
//!   LLVM vectorizes.
//! - Elementwise kernels compute each element with the same formula on the serial
//!   and the parallel path, so how the work is split never changes a result.
//! - Reductions are cut into fixed chunks of [`REDUCTION_CHUNK`] elements; each chunk
//!   is summed in f64 into a fixed set of lanes, and the chunk totals are added in
//!   chunk order. The order of every addition is therefore fixed by the length alone:
//!   the same inputs give the same bits with any number of threads.
//! - The update kernels (`sgd_step`, `adam_step`, `axpy`) measure the change they
//!   make while they make it: each element's `p_new − p_old` (in f32) goes into an
//!   L1-sized block next to the update and is squared and summed (a reduction like
//!   the others) before the block leaves the cache, so the update norm costs no
//!   extra pass over memory.
//! - f16/bf16 go through `half`'s slice conversions (SIMD where the CPU has it), a
//!   cache-sized block at a time when a conversion is fused with other work.

use half::slice::HalfFloatSliceExt;
use ndarray::{Array1, CowArray, Ix1};
use rayon::prelude::*;

use super::{
    check_len, missing_momentum_buffer, AdamStep, Backend, BackendError, DirectionNorms, GradStats,
    HostTensor, HostTensorMut, LambDirection, SgdStep,
};

/// Elements per reduction chunk. Every reduction is the in-order sum of per-chunk
/// f64 totals, on the serial and the parallel path alike; changing this constant
/// changes the low bits of reductions.
pub const REDUCTION_CHUNK: usize = 16 * 1024;

/// Tensors at least this long are processed in parallel by default.
pub const DEFAULT_PARALLEL_THRESHOLD: usize = 64 * 1024;

/// Independent f64 accumulators inside a chunk: one chain of dependent additions
/// would be latency-bound, several independent ones vectorize.
const SUM_LANES: usize = 8;

/// Elements handled at once when a kernel writes a block and then sums it (or widens
/// half floats into it): small enough to stay in L1 between the two steps. A multiple
/// of [`SUM_LANES`], so blocking never changes which lane an element is added to.
const CACHE_BLOCK: usize = 1024;

const NAME: &str = "ndarray";

/// The CPU backend (the default): tensors are contiguous `Array1<f32>` buffers in
/// host memory; kernels run on the current rayon pool.
#[derive(Clone, Debug)]
pub struct NdArrayBackend {
    parallel_threshold: usize,
}

impl NdArrayBackend {
    /// A backend that goes parallel from [`DEFAULT_PARALLEL_THRESHOLD`] elements.
    pub fn new() -> Self {
        Self {
            parallel_threshold: DEFAULT_PARALLEL_THRESHOLD,
        }
    }

    /// The same backend, parallel only for tensors of at least `elements` elements
    /// (`usize::MAX`: always serial; 0: always split). Results do not depend on it.
    pub fn with_parallel_threshold(mut self, elements: usize) -> Self {
        self.parallel_threshold = elements;
        self
    }

    /// Tensors at least this long are processed in parallel.
    pub fn parallel_threshold(&self) -> usize {
        self.parallel_threshold
    }

    fn parallel(&self, len: usize) -> bool {
        len >= self.parallel_threshold
    }

    /// `each` over matching chunks of `operands` (every operand `len` long), split
    /// over the rayon pool for long tensors.
    fn for_each_chunk<O: Chunked>(&self, len: usize, operands: O, each: impl Fn(O::Chunk) + Sync) {
        if self.parallel(len) {
            operands.parallel_chunks().for_each(&each);
        } else {
            operands.serial_chunks().for_each(each);
        }
    }

    /// The in-order sum of `partial` over matching reduction chunks of `operands`
    /// (every operand `len` long): the partials of the parallel path are collected
    /// and added in chunk order, exactly as the serial path adds them.
    fn reduce<O: Chunked, P: Partial>(
        &self,
        len: usize,
        operands: O,
        partial: impl Fn(O::Chunk) -> P + Sync,
    ) -> P {
        if self.parallel(len) {
            let partials: Vec<P> = operands.parallel_chunks().map(&partial).collect();
            sum_in_order(partials)
        } else {
            sum_in_order(operands.serial_chunks().map(partial))
        }
    }
}

impl Default for NdArrayBackend {
    fn default() -> Self {
        Self::new()
    }
}

/// What one reduction chunk returns: one f64 sum, or several summed component-wise.
trait Partial: Send {
    /// +0 in every component.
    const ZERO: Self;
    fn add(self, other: Self) -> Self;
}

impl Partial for f64 {
    const ZERO: Self = 0.0;
    fn add(self, other: Self) -> Self {
        self + other
    }
}

impl Partial for (f64, f64) {
    const ZERO: Self = (0.0, 0.0);
    fn add(self, other: Self) -> Self {
        (self.0 + other.0, self.1 + other.1)
    }
}

/// Adds `values` from first to last, starting at +0.
fn sum_in_order<P: Partial>(values: impl IntoIterator<Item = P>) -> P {
    values.into_iter().fold(P::ZERO, P::add)
}

/// The operands of one kernel, cut into matching chunks of [`REDUCTION_CHUNK`] elements: a
/// slice, or a pair of operands (pairs nest, so `((p, g), m)` is three operands and
/// its chunks are `((p, g), m)` too). Serial and parallel iteration yield the same
/// chunks in the same order; the kernels' per-chunk functions see plain slices, so
/// how they vectorize does not depend on this.
trait Chunked: Send + Sized {
    type Chunk: Send;
    fn serial_chunks(self) -> impl Iterator<Item = Self::Chunk>;
    fn parallel_chunks(self) -> impl IndexedParallelIterator<Item = Self::Chunk>;
}

impl<'a, T: Sync> Chunked for &'a [T] {
    type Chunk = &'a [T];
    fn serial_chunks(self) -> impl Iterator<Item = Self::Chunk> {
        self.chunks(REDUCTION_CHUNK)
    }
    fn parallel_chunks(self) -> impl IndexedParallelIterator<Item = Self::Chunk> {
        self.par_chunks(REDUCTION_CHUNK)
    }
}

impl<'a, T: Send> Chunked for &'a mut [T] {
    type Chunk = &'a mut [T];
    fn serial_chunks(self) -> impl Iterator<Item = Self::Chunk> {
        self.chunks_mut(REDUCTION_CHUNK)
    }
    fn parallel_chunks(self) -> impl IndexedParallelIterator<Item = Self::Chunk> {
        self.par_chunks_mut(REDUCTION_CHUNK)
    }
}

impl<A: Chunked, B: Chunked> Chunked for (A, B) {
    type Chunk = (A::Chunk, B::Chunk);
    fn serial_chunks(self) -> impl Iterator<Item = Self::Chunk> {
        self.0.serial_chunks().zip(self.1.serial_chunks())
    }
    fn parallel_chunks(self) -> impl IndexedParallelIterator<Item = Self::Chunk> {
        self.0.parallel_chunks().zip(self.1.parallel_chunks())
    }
}

/// Σ x² of one reduction chunk in f64, in a fixed order: element `i` of the chunk
/// goes to lane `i % SUM_LANES` (the last `len % SUM_LANES` elements to a tail), and
/// the lanes are added in lane order. Feeding a chunk in blocks whose lengths are
/// multiples of `SUM_LANES` gives the same bits as feeding it at once.
#[derive(Clone, Copy, Debug, Default)]
struct SquareSum {
    lanes: [f64; SUM_LANES],
    tail: f64,
}

impl SquareSum {
    #[inline(always)]
    fn add(&mut self, values: &[f32]) {
        // Accumulating into a local copy lets LLVM keep the lanes in vector registers
        // (it otherwise stores them back on every group). Each lane is still its own
        // chain of additions, so the bits are those of the scalar loop.
        let mut lanes = self.lanes;
        let mut groups = values.chunks_exact(SUM_LANES);
        for group in &mut groups {
            for (lane, &x) in lanes.iter_mut().zip(group) {
                let x = f64::from(x);
                *lane += x * x;
            }
        }
        self.lanes = lanes;
        for &x in groups.remainder() {
            let x = f64::from(x);
            self.tail += x * x;
        }
    }

    fn total(&self) -> f64 {
        sum_in_order(self.lanes) + self.tail
    }
}

/// Σ (p_new − p_old)² of one reduction chunk of an update kernel. The kernel writes
/// each element's change `p_new − p_old` (an f32 subtraction, the same rounding as
/// measuring it afterwards) into [`ChangeSum::block`] as it updates a cache block,
/// then hands the block to [`ChangeSum::add_block`] while it is still in L1. Blocks
/// are [`CACHE_BLOCK`] long, so the sum has the bits of [`sum_squares_chunk`] over the
/// changes of the whole chunk.
struct ChangeSum {
    block: [f32; CACHE_BLOCK],
    sum: SquareSum,
}

impl ChangeSum {
    fn new() -> Self {
        Self {
            block: [0.0; CACHE_BLOCK],
            sum: SquareSum::default(),
        }
    }

    /// Room for the changes of one cache block (`len` ≤ [`CACHE_BLOCK`]).
    #[inline(always)]
    fn block(&mut self, len: usize) -> &mut [f32] {
        &mut self.block[..len]
    }

    /// Add the squares of the first `len` changes written into [`ChangeSum::block`].
    #[inline(always)]
    fn add_block(&mut self, len: usize) {
        self.sum.add(&self.block[..len]);
    }

    fn total(&self) -> f64 {
        self.sum.total()
    }
}

fn sum_squares_chunk(x: &[f32]) -> f64 {
    let mut sum = SquareSum::default();
    sum.add(x);
    sum.total()
}

/// `dst = src · scale` over one chunk, returning Σ dst².
fn load_f32_chunk(dst: &mut [f32], src: &[f32], scale: f32) -> f64 {
    let mut sum = SquareSum::default();
    for (dst, src) in dst.chunks_mut(CACHE_BLOCK).zip(src.chunks(CACHE_BLOCK)) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s * scale;
        }
        sum.add(dst);
    }
    sum.total()
}

/// `dst = widen(src) · scale` over one chunk, returning Σ dst². Widening a block into
/// `dst` first lets `half` use its SIMD conversion; the block is still in L1 when it
/// is scaled and summed, so memory is streamed once.
fn load_half_chunk<H>(dst: &mut [f32], src: &[H], scale: f32) -> f64
where
    [H]: HalfFloatSliceExt,
{
    let mut sum = SquareSum::default();
    for (dst, src) in dst.chunks_mut(CACHE_BLOCK).zip(src.chunks(CACHE_BLOCK)) {
        src.convert_to_f32_slice(dst);
        for d in dst.iter_mut() {
            *d *= scale;
        }
        sum.add(dst);
    }
    sum.total()
}

/// Per-call f32 constants of an SGD step.
#[derive(Clone, Copy, Debug)]
struct SgdConstants {
    lr: f32,
    momentum: f32,
    one_minus_dampening: f32,
    weight_decay: f32,
    grad_scale: f32,
}

impl SgdConstants {
    fn new(step: &SgdStep) -> Self {
        Self {
            lr: step.lr,
            momentum: step.momentum,
            // PyTorch passes `1 - dampening` as a Python float (f64) cast to f32.
            one_minus_dampening: (1.0 - f64::from(step.dampening)) as f32,
            weight_decay: step.weight_decay,
            grad_scale: step.grad_scale,
        }
    }

    /// `d = (g + weight_decay·p) · grad_scale`; the decay term is skipped when
    /// `weight_decay` is 0, as PyTorch does.
    #[inline(always)]
    fn direction<const DECAY: bool>(&self, p: f32, g: f32) -> f32 {
        let g = if DECAY { g + self.weight_decay * p } else { g };
        g * self.grad_scale
    }
}

/// One reduction chunk of a momentum-free SGD step; returns Σ (p_new − p_old)².
fn sgd_plain_chunk<const DECAY: bool>(p: &mut [f32], g: &[f32], c: &SgdConstants) -> f64 {
    let mut change = ChangeSum::new();
    for (p, g) in p.chunks_mut(CACHE_BLOCK).zip(g.chunks(CACHE_BLOCK)) {
        let delta = change.block(p.len());
        for ((p, &g), delta) in p.iter_mut().zip(g).zip(delta.iter_mut()) {
            let old = *p;
            let d = c.direction::<DECAY>(old, g);
            *p -= c.lr * d;
            *delta = *p - old;
        }
        change.add_block(p.len());
    }
    change.total()
}

/// One reduction chunk of an SGD step with momentum; returns Σ (p_new − p_old)².
fn sgd_momentum_chunk<const DECAY: bool, const FIRST: bool, const NESTEROV: bool>(
    p: &mut [f32],
    g: &[f32],
    buf: &mut [f32],
    c: &SgdConstants,
) -> f64 {
    let mut change = ChangeSum::new();
    let blocks = p
        .chunks_mut(CACHE_BLOCK)
        .zip(g.chunks(CACHE_BLOCK))
        .zip(buf.chunks_mut(CACHE_BLOCK));
    for ((p, g), buf) in blocks {
        let delta = change.block(p.len());
        for (((p, &g), b), delta) in p.iter_mut().zip(g).zip(buf.iter_mut()).zip(delta) {
            let old = *p;
            let d = c.direction::<DECAY>(old, g);
            *b = if FIRST {
                d
            } else {
                c.momentum * *b + c.one_minus_dampening * d
            };
            let step = if NESTEROV { d + c.momentum * *b } else { *b };
            *p -= c.lr * step;
            *delta = *p - old;
        }
        change.add_block(p.len());
    }
    change.total()
}

type SgdMomentumKernel = fn(&mut [f32], &[f32], &mut [f32], &SgdConstants) -> f64;

fn sgd_momentum_kernel(decay: bool, first: bool, nesterov: bool) -> SgdMomentumKernel {
    match (decay, first, nesterov) {
        (false, false, false) => sgd_momentum_chunk::<false, false, false>,
        (false, false, true) => sgd_momentum_chunk::<false, false, true>,
        (false, true, false) => sgd_momentum_chunk::<false, true, false>,
        (false, true, true) => sgd_momentum_chunk::<false, true, true>,
        (true, false, false) => sgd_momentum_chunk::<true, false, false>,
        (true, false, true) => sgd_momentum_chunk::<true, false, true>,
        (true, true, false) => sgd_momentum_chunk::<true, true, false>,
        (true, true, true) => sgd_momentum_chunk::<true, true, true>,
    }
}

// How an Adam step applies weight decay: the `DECAY` parameter of its chunk kernels
// (a const generic, so each variant compiles to its own loop without a branch).
/// No weight decay.
const NO_DECAY: u8 = 0;
/// L2: `g = g + weight_decay·p` (Adam).
const L2_DECAY: u8 = 1;
/// Decoupled: `p = p·(1 − lr·weight_decay)` (AdamW).
const DECOUPLED_DECAY: u8 = 2;

/// Adam's moment decays, with `1 − β` formed in f64 before rounding (as PyTorch).
#[derive(Clone, Copy, Debug)]
struct MomentDecay {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
}

impl MomentDecay {
    fn new(beta1: f64, beta2: f64) -> Self {
        Self {
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
        }
    }

    /// `m = β1·m + (1 − β1)·g`, `v = β2·v + (1 − β2)·g²`.
    #[inline(always)]
    fn update(&self, m: &mut f32, v: &mut f32, g: f32) {
        *m = self.beta1 * *m + self.one_minus_beta1 * g;
        *v = self.beta2 * *v + self.one_minus_beta2 * g * g;
    }
}

/// Per-call f32 constants of an Adam step, derived in f64 from the hyperparameters
/// and bias corrections as PyTorch's single-tensor Adam derives its Python floats.
#[derive(Clone, Copy, Debug)]
struct AdamConstants {
    decay: MomentDecay,
    eps: f32,
    weight_decay: f32,
    /// `1 − lr·weight_decay` (AdamW).
    decay_factor: f32,
    /// `lr / bias_correction1`.
    step_size: f32,
    /// `sqrt(bias_correction2)`.
    bias_correction2_sqrt: f32,
}

impl AdamConstants {
    fn new(step: &AdamStep) -> Self {
        Self {
            decay: MomentDecay::new(step.beta1, step.beta2),
            eps: step.eps,
            weight_decay: step.weight_decay,
            decay_factor: (1.0 - f64::from(step.lr) * f64::from(step.weight_decay)) as f32,
            step_size: (f64::from(step.lr) / step.bias_correction1) as f32,
            bias_correction2_sqrt: step.bias_correction2.sqrt() as f32,
        }
    }

    /// Decays `p` (AdamW) or `g` (L2) and updates both moments; returns nothing
    /// because every result is written in place.
    #[inline(always)]
    fn moments<const DECAY: u8>(&self, p: &mut f32, g: f32, m: &mut f32, v: &mut f32) {
        let g = if DECAY == L2_DECAY {
            g + self.weight_decay * *p
        } else {
            g
        };
        if DECAY == DECOUPLED_DECAY {
            *p *= self.decay_factor;
        }
        self.decay.update(m, v, g);
    }

    /// `p = p − step_size · m / (sqrt(v̂) / sqrt(bc2) + eps)`, in PyTorch's order of
    /// operations (`addcdiv`: `(value · m) / denom`).
    #[inline(always)]
    fn apply(&self, p: &mut f32, m: f32, v_hat: f32) {
        let denom = v_hat.sqrt() / self.bias_correction2_sqrt + self.eps;
        *p -= self.step_size * m / denom;
    }
}

/// One reduction chunk of an Adam/AdamW step; returns Σ (p_new − p_old)².
fn adam_chunk<const DECAY: u8>(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    c: &AdamConstants,
) -> f64 {
    let mut change = ChangeSum::new();
    let blocks = p
        .chunks_mut(CACHE_BLOCK)
        .zip(g.chunks(CACHE_BLOCK))
        .zip(m.chunks_mut(CACHE_BLOCK))
        .zip(v.chunks_mut(CACHE_BLOCK));
    for (((p, g), m), v) in blocks {
        let delta = change.block(p.len());
        for ((((p, &g), m), v), delta) in p
            .iter_mut()
            .zip(g)
            .zip(m.iter_mut())
            .zip(v.iter_mut())
            .zip(delta)
        {
            let old = *p;
            c.moments::<DECAY>(p, g, m, v);
            c.apply(p, *m, *v);
            *delta = *p - old;
        }
        change.add_block(p.len());
    }
    change.total()
}

/// One reduction chunk of an AMSGrad step; returns Σ (p_new − p_old)².
fn amsgrad_chunk<const DECAY: u8>(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    v_max: &mut [f32],
    c: &AdamConstants,
) -> f64 {
    let mut change = ChangeSum::new();
    let blocks = p
        .chunks_mut(CACHE_BLOCK)
        .zip(g.chunks(CACHE_BLOCK))
        .zip(m.chunks_mut(CACHE_BLOCK))
        .zip(v.chunks_mut(CACHE_BLOCK))
        .zip(v_max.chunks_mut(CACHE_BLOCK));
    for ((((p, g), m), v), v_max) in blocks {
        let delta = change.block(p.len());
        for (((((p, &g), m), v), v_max), delta) in p
            .iter_mut()
            .zip(g)
            .zip(m.iter_mut())
            .zip(v.iter_mut())
            .zip(v_max.iter_mut())
            .zip(delta)
        {
            let old = *p;
            c.moments::<DECAY>(p, g, m, v);
            // torch.maximum propagates a NaN from either side; f32::max would drop it.
            *v_max = if *v > *v_max || v.is_nan() {
                *v
            } else {
                *v_max
            };
            c.apply(p, *m, *v_max);
            *delta = *p - old;
        }
        change.add_block(p.len());
    }
    change.total()
}

/// One reduction chunk of `p = p + alpha·x`; returns Σ (p_new − p_old)².
fn axpy_chunk(p: &mut [f32], x: &[f32], alpha: f32) -> f64 {
    let mut change = ChangeSum::new();
    for (p, x) in p.chunks_mut(CACHE_BLOCK).zip(x.chunks(CACHE_BLOCK)) {
        let delta = change.block(p.len());
        for ((p, &x), delta) in p.iter_mut().zip(x).zip(delta.iter_mut()) {
            let old = *p;
            *p += alpha * x;
            *delta = *p - old;
        }
        change.add_block(p.len());
    }
    change.total()
}

/// Per-call f32 constants of a LAMB direction pass.
#[derive(Clone, Copy, Debug)]
struct LambConstants {
    decay: MomentDecay,
    eps: f32,
    weight_decay: f32,
    bias_correction1: f32,
    bias_correction2: f32,
}

impl LambConstants {
    fn new(direction: &LambDirection) -> Self {
        Self {
            decay: MomentDecay::new(direction.beta1, direction.beta2),
            eps: direction.eps,
            weight_decay: direction.weight_decay,
            bias_correction1: direction.bias_correction1 as f32,
            bias_correction2: direction.bias_correction2 as f32,
        }
    }
}

/// One reduction chunk of the LAMB direction; returns (Σ p², Σ update²).
fn lamb_chunk(
    p: &[f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    update: &mut [f32],
    c: &LambConstants,
) -> (f64, f64) {
    let mut param_sum = SquareSum::default();
    let mut update_sum = SquareSum::default();
    let blocks = p
        .chunks(CACHE_BLOCK)
        .zip(g.chunks(CACHE_BLOCK))
        .zip(m.chunks_mut(CACHE_BLOCK))
        .zip(v.chunks_mut(CACHE_BLOCK))
        .zip(update.chunks_mut(CACHE_BLOCK));
    for ((((p, g), m), v), update) in blocks {
        for ((((&p, &g), m), v), u) in p
            .iter()
            .zip(g)
            .zip(m.iter_mut())
            .zip(v.iter_mut())
            .zip(update.iter_mut())
        {
            c.decay.update(m, v, g);
            *u = (*m / c.bias_correction1) / ((*v / c.bias_correction2).sqrt() + c.eps)
                + c.weight_decay * p;
        }
        param_sum.add(p);
        update_sum.add(update);
    }
    (param_sum.total(), update_sum.total())
}

fn not_contiguous(kernel: &'static str, operand: &'static str) -> BackendError {
    BackendError::InvalidOperand {
        kernel,
        operand,
        reason: "the array is not contiguous",
    }
}

/// A contiguous view of a read operand; copies only an array someone re-strided.
fn contiguous(tensor: &Array1<f32>) -> CowArray<'_, f32, Ix1> {
    tensor.as_standard_layout()
}

fn as_slice<'a>(
    view: &'a CowArray<'_, f32, Ix1>,
    kernel: &'static str,
    operand: &'static str,
) -> Result<&'a [f32], BackendError> {
    view.as_slice()
        .ok_or_else(|| not_contiguous(kernel, operand))
}

/// The elements of a written operand as one slice, re-laying out in place an array
/// someone re-strided (same elements, same order).
fn as_slice_mut<'a>(
    tensor: &'a mut Array1<f32>,
    kernel: &'static str,
    operand: &'static str,
) -> Result<&'a mut [f32], BackendError> {
    if !tensor.is_standard_layout() {
        *tensor = tensor.as_standard_layout().into_owned();
    }
    tensor
        .as_slice_mut()
        .ok_or_else(|| not_contiguous(kernel, operand))
}

impl Backend for NdArrayBackend {
    type Tensor = Array1<f32>;

    fn name(&self) -> &'static str {
        NAME
    }

    fn zeros(&self, len: usize) -> Result<Self::Tensor, BackendError> {
        let mut data: Vec<f32> = Vec::new();
        data.try_reserve_exact(len)
            .map_err(|error| BackendError::Device {
                backend: NAME,
                message: format!("cannot allocate a tensor of {len} f32 elements: {error}"),
            })?;
        data.resize(len, 0.0);
        Ok(Array1::from_vec(data))
    }

    fn len(&self, tensor: &Self::Tensor) -> usize {
        tensor.len()
    }

    fn upload(&self, src: HostTensor<'_>, dst: &mut Self::Tensor) -> Result<(), BackendError> {
        const KERNEL: &str = "upload";
        check_len(KERNEL, src.len(), dst.len())?;
        let dst = as_slice_mut(dst, KERNEL, "dst")?;
        match src {
            HostTensor::F32(src) => {
                self.for_each_chunk(dst.len(), (dst, src), |(d, s)| d.copy_from_slice(s))
            }
            HostTensor::F16(src) => {
                self.for_each_chunk(dst.len(), (dst, src), |(d, s)| s.convert_to_f32_slice(d))
            }
            HostTensor::BF16(src) => {
                self.for_each_chunk(dst.len(), (dst, src), |(d, s)| s.convert_to_f32_slice(d))
            }
        }
        Ok(())
    }

    fn download(&self, src: &Self::Tensor, dst: HostTensorMut<'_>) -> Result<(), BackendError> {
        const KERNEL: &str = "download";
        check_len(KERNEL, src.len(), dst.len())?;
        let src = contiguous(src);
        let src = as_slice(&src, KERNEL, "src")?;
        match dst {
            HostTensorMut::F32(dst) => {
                self.for_each_chunk(src.len(), (dst, src), |(d, s)| d.copy_from_slice(s))
            }
            HostTensorMut::F16(dst) => {
                self.for_each_chunk(src.len(), (dst, src), |(d, s)| d.convert_from_f32_slice(s))
            }
            HostTensorMut::BF16(dst) => {
                self.for_each_chunk(src.len(), (dst, src), |(d, s)| d.convert_from_f32_slice(s))
            }
        }
        Ok(())
    }

    /// `finite` is read off the f64 Σ dst² itself: a NaN or ±inf anywhere in `src`
    /// makes it NaN or +inf, while squares of finite f32 values cannot overflow f64.
    /// A finite `src` that overflows when multiplied by `scale` also counts as
    /// non-finite.
    fn load_gradient(
        &self,
        src: HostTensor<'_>,
        scale: f32,
        dst: &mut Self::Tensor,
    ) -> Result<GradStats, BackendError> {
        const KERNEL: &str = "load_gradient";
        check_len(KERNEL, src.len(), dst.len())?;
        let dst = as_slice_mut(dst, KERNEL, "dst")?;
        let sum_squares = match src {
            HostTensor::F32(src) => {
                self.reduce(src.len(), (dst, src), |(d, s)| load_f32_chunk(d, s, scale))
            }
            HostTensor::F16(src) => {
                self.reduce(src.len(), (dst, src), |(d, s)| load_half_chunk(d, s, scale))
            }
            HostTensor::BF16(src) => {
                self.reduce(src.len(), (dst, src), |(d, s)| load_half_chunk(d, s, scale))
            }
        };
        Ok(GradStats {
            finite: sum_squares.is_finite(),
            sum_squares,
        })
    }

    fn sum_squares(&self, tensor: &Self::Tensor) -> Result<f64, BackendError> {
        let x = contiguous(tensor);
        let x = as_slice(&x, "sum_squares", "tensor")?;
        Ok(self.reduce(x.len(), x, sum_squares_chunk))
    }

    fn scale(&self, tensor: &mut Self::Tensor, factor: f32) -> Result<(), BackendError> {
        let x = as_slice_mut(tensor, "scale", "tensor")?;
        self.for_each_chunk(x.len(), x, |x| scale_chunk(x, factor));
        Ok(())
    }

    fn axpy(
        &self,
        p: &mut Self::Tensor,
        alpha: f32,
        x: &Self::Tensor,
    ) -> Result<f64, BackendError> {
        const KERNEL: &str = "axpy";
        check_len(KERNEL, p.len(), x.len())?;
        let x = contiguous(x);
        let x = as_slice(&x, KERNEL, "x")?;
        let p = as_slice_mut(p, KERNEL, "p")?;
        Ok(self.reduce(x.len(), (p, x), |(p, x)| axpy_chunk(p, x, alpha)))
    }

    fn sgd_step(
        &self,
        p: &mut Self::Tensor,
        g: &Self::Tensor,
        momentum_buffer: Option<&mut Self::Tensor>,
        step: &SgdStep,
    ) -> Result<f64, BackendError> {
        const KERNEL: &str = "sgd_step";
        check_len(KERNEL, p.len(), g.len())?;
        if let Some(buffer) = &momentum_buffer {
            check_len(KERNEL, p.len(), buffer.len())?;
        }
        let constants = SgdConstants::new(step);
        let decay = step.weight_decay != 0.0;
        let g = contiguous(g);
        let g = as_slice(&g, KERNEL, "g")?;
        if step.momentum == 0.0 {
            let p = as_slice_mut(p, KERNEL, "p")?;
            let kernel = if decay {
                sgd_plain_chunk::<true>
            } else {
                sgd_plain_chunk::<false>
            };
            return Ok(self.reduce(g.len(), (p, g), |(p, g)| kernel(p, g, &constants)));
        }
        let buffer = momentum_buffer.ok_or_else(|| missing_momentum_buffer(KERNEL))?;
        let buffer = as_slice_mut(buffer, KERNEL, "momentum_buffer")?;
        let p = as_slice_mut(p, KERNEL, "p")?;
        let kernel = sgd_momentum_kernel(decay, step.first_step, step.nesterov);
        Ok(self.reduce(g.len(), ((p, g), buffer), |((p, g), b)| {
            kernel(p, g, b, &constants)
        }))
    }

    fn adam_step(
        &self,
        p: &mut Self::Tensor,
        g: &Self::Tensor,
        m: &mut Self::Tensor,
        v: &mut Self::Tensor,
        v_max: Option<&mut Self::Tensor>,
        step: &AdamStep,
    ) -> Result<f64, BackendError> {
        const KERNEL: &str = "adam_step";
        check_len(KERNEL, p.len(), g.len())?;
        check_len(KERNEL, p.len(), m.len())?;
        check_len(KERNEL, p.len(), v.len())?;
        if let Some(v_max) = &v_max {
            check_len(KERNEL, p.len(), v_max.len())?;
        }
        let constants = AdamConstants::new(step);
        let decay = match (step.weight_decay != 0.0, step.decoupled) {
            (false, _) => NO_DECAY,
            (true, false) => L2_DECAY,
            (true, true) => DECOUPLED_DECAY,
        };
        let g = contiguous(g);
        let g = as_slice(&g, KERNEL, "g")?;
        let p = as_slice_mut(p, KERNEL, "p")?;
        let m = as_slice_mut(m, KERNEL, "m")?;
        let v = as_slice_mut(v, KERNEL, "v")?;
        let change_sum_squares = match v_max {
            None => {
                let kernel = match decay {
                    L2_DECAY => adam_chunk::<L2_DECAY>,
                    DECOUPLED_DECAY => adam_chunk::<DECOUPLED_DECAY>,
                    _ => adam_chunk::<NO_DECAY>,
                };
                self.reduce(g.len(), (((p, g), m), v), |(((p, g), m), v)| {
                    kernel(p, g, m, v, &constants)
                })
            }
            Some(v_max) => {
                let v_max = as_slice_mut(v_max, KERNEL, "v_max")?;
                let kernel = match decay {
                    L2_DECAY => amsgrad_chunk::<L2_DECAY>,
                    DECOUPLED_DECAY => amsgrad_chunk::<DECOUPLED_DECAY>,
                    _ => amsgrad_chunk::<NO_DECAY>,
                };
                let operands = ((((p, g), m), v), v_max);
                self.reduce(g.len(), operands, |((((p, g), m), v), v_max)| {
                    kernel(p, g, m, v, v_max, &constants)
                })
            }
        };
        Ok(change_sum_squares)
    }

    fn lamb_direction(
        &self,
        p: &Self::Tensor,
        g: &Self::Tensor,
        m: &mut Self::Tensor,
        v: &mut Self::Tensor,
        update: &mut Self::Tensor,
        direction: &LambDirection,
    ) -> Result<DirectionNorms, BackendError> {
        const KERNEL: &str = "lamb_direction";
        check_len(KERNEL, p.len(), g.len())?;
        check_len(KERNEL, p.len(), m.len())?;
        check_len(KERNEL, p.len(), v.len())?;
        check_len(KERNEL, p.len(), update.len())?;
        let constants = LambConstants::new(direction);
        let p = contiguous(p);
        let p = as_slice(&p, KERNEL, "p")?;
        let g = contiguous(g);
        let g = as_slice(&g, KERNEL, "g")?;
        let m = as_slice_mut(m, KERNEL, "m")?;
        let v = as_slice_mut(v, KERNEL, "v")?;
        let update = as_slice_mut(update, KERNEL, "update")?;
        let operands = ((((p, g), m), v), update);
        let (param_sum_squares, update_sum_squares) =
            self.reduce(p.len(), operands, |((((p, g), m), v), update)| {
                lamb_chunk(p, g, m, v, update, &constants)
            });
        Ok(DirectionNorms {
            param_sum_squares,
            update_sum_squares,
        })
    }
}

fn scale_chunk(x: &mut [f32], factor: f32) {
    for x in x.iter_mut() {
        *x *= factor;
    }
}
