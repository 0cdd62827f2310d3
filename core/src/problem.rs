//! Built-in deterministic synthetic training problems, so that a script's *runtime*
//! behaviour (optimizer updates, group rules, loss scaling, clipping) can be traced,
//! plotted and snapshot-tested without any user code: `regimen trace SCRIPT --problem
//! quadratic|logistic`.
//!
//! Each problem has named parameters like a small network (`layers.0.weight`,
//! `layers.0.bias`, `layers.1.weight`, `layers.1.bias`, `norm.weight`, with layer depths),
//! a seeded initialisation, and an exact loss with analytic gradients:
//!
//! - [`ProblemKind::Quadratic`]: `f(w) = ½ Σᵢ aᵢ (wᵢ − w*ᵢ)²` with curvatures `aᵢ`
//!   spread log-uniformly over `[0.1, 10]` (condition number 100), plus seeded
//!   gradient noise (standard deviation [`QUADRATIC_GRADIENT_NOISE`]);
//! - [`ProblemKind::Logistic`]: a one-hidden-layer network (tanh, a per-feature gain
//!   `norm.weight`, one logit) trained with binary cross-entropy on a seeded synthetic
//!   2-class data set, in minibatches drawn in a seeded order that is reshuffled every
//!   epoch.
//!
//! Everything random derives from one seed through [`SplitMix64`], and every draw that
//! depends on the step (gradient noise, minibatch order) is a pure function of
//! `(seed, step)`, so a problem has no state: a run resumed from a checkpoint sees the
//! same gradients as an uninterrupted one, bit for bit.
//!
//! The hidden width is [`HIDDEN`] by default; [`Problem::with_hidden`] makes the tensors
//! wider (e.g. for gradient compression, where 1% of 32 elements is not 1%).
//!
//! # Data-parallel workers
//!
//! [`Problem::with_worker`] makes the problem as worker `rank` of `world` sees it, so
//! that simulated data-parallel workers each compute their own gradient:
//!
//! - logistic: each epoch's permutation is split as PyTorch's `DistributedSampler`
//!   splits it — padded by wrapping around to a multiple of `world`, worker `rank`
//!   taking the elements `rank, rank + world, …` — and each worker draws its
//!   minibatches of the configured size from its shard, so an epoch is
//!   `⌈⌈256/world⌉/batch⌉` steps;
//! - quadratic: each worker draws its own gradient noise (stream `NOISE + rank·2³²`, so
//!   rank 0 draws what a single worker does).
//!
//! With `world = 1` everything is exactly as without workers.
//!
//! [`ProblemModel`] holds a problem's parameters in a script's precision (f32, f16 or
//! bf16) and performs one training step through a [`Stepper`]: the gradients are
//! computed in f64, multiplied by the stepper's loss scale in f32 and narrowed to the
//! precision, so with f16 a loss scale that is too large overflows to infinity for
//! real, as it does in mixed-precision training.

use half::{bf16, f16};
use thiserror::Error;

use crate::backend::{Backend, HostTensor, HostTensorMut};
use crate::batch::SmallBatchNorms;
use crate::runtime::{Metrics, ParamSpec, RuntimeError, StepReport, Stepper};
use crate::strategy::DType;

/// Standard deviation of the noise added to every gradient element of
/// [`ProblemKind::Quadratic`] (uniform noise, so every draw is bounded by √3 times it).
pub const QUADRATIC_GRADIENT_NOISE: f64 = 0.01;

/// Smallest and largest curvature of [`ProblemKind::Quadratic`].
pub const QUADRATIC_CURVATURE_RANGE: (f64, f64) = (0.1, 10.0);

/// Samples in the data set of [`ProblemKind::Logistic`].
pub const LOGISTIC_SAMPLES: usize = 256;

/// Default minibatch size of [`ProblemKind::Logistic`] (8 steps per epoch).
pub const LOGISTIC_BATCH_SIZE: usize = 32;

/// Input features of [`ProblemKind::Logistic`].
pub const LOGISTIC_FEATURES: usize = 4;

/// Hidden units of both problems by default (and width of `norm.weight`); see
/// [`Problem::with_hidden`].
pub const HIDDEN: usize = 8;

/// Fraction of [`ProblemKind::Logistic`] labels flipped at random, so that the data is
/// not perfectly separable and the loss has a floor.
pub const LOGISTIC_LABEL_NOISE: f64 = 0.05;

/// Outputs of the quadratic problem's last layer.
const QUADRATIC_OUTPUTS: usize = 2;

/// The built-in problems, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// A noisy ill-conditioned quadratic bowl over network-shaped tensors.
    Quadratic,
    /// Binary classification with a tiny tanh network and minibatches.
    Logistic,
}

impl ProblemKind {
    /// Every problem, in documentation order.
    pub const ALL: [ProblemKind; 2] = [Self::Quadratic, Self::Logistic];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Quadratic => "quadratic",
            Self::Logistic => "logistic",
        }
    }

    /// Look a problem up by name.
    pub fn from_name(name: &str) -> Result<Self, ProblemError> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| ProblemError::Unknown {
                name: name.to_string(),
            })
    }

    /// One line saying what the problem is.
    pub fn description(self) -> &'static str {
        match self {
            Self::Quadratic => {
                "½ Σ a·(w − w*)² over 5 network-shaped tensors, curvature 0.1..10, noisy gradients"
            }
            Self::Logistic => {
                "2-class data (256 samples, 4 features), tanh MLP with 8 hidden units, \
                 cross-entropy, minibatches of 32"
            }
        }
    }
}

impl std::fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ProblemKind {
    type Err = ProblemError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::from_name(name)
    }
}

/// What a problem can refuse.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ProblemError {
    /// No built-in problem has this name.
    #[error("unknown problem `{name}`; the built-in problems are `quadratic` and `logistic`")]
    Unknown {
        /// The name asked for.
        name: String,
    },
    /// The number of tensors passed is not the number of parameters.
    #[error("{what}: expected {expected} tensors (one per parameter), got {actual}")]
    TensorCount {
        /// `parameters` or `gradients`.
        what: &'static str,
        /// The problem's parameter count.
        expected: usize,
        /// Tensors passed.
        actual: usize,
    },
    /// A worker rank outside the world.
    #[error("worker {rank} of {world}: the rank must be below the number of workers")]
    Worker {
        /// The rank asked for.
        rank: usize,
        /// The number of workers.
        world: usize,
    },
    /// Batch-size control on a problem whose minibatches have a fixed size.
    #[error("the logistic problem draws minibatches of a fixed size: trace a `batch` statement on `--problem quadratic`")]
    FixedBatch,
    /// A tensor has the wrong number of elements.
    #[error("{what} for `{name}`: expected {expected} elements, got {actual}")]
    TensorLength {
        /// `parameter` or `gradient`.
        what: &'static str,
        /// The parameter's name.
        name: String,
        /// Its element count.
        expected: usize,
        /// Elements passed.
        actual: usize,
    },
}

/// SplitMix64 (Steele, Lea & Flood 2014): a tiny, fast, well-mixed 64-bit generator,
/// deterministic on every platform. Used to make the problems' data and noise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// An independent generator for `(seed, stream, index)`: a different stream for each
    /// purpose (data, initial values, noise) and index (e.g. the step), without any
    /// generator state to carry from step to step.
    pub fn keyed(seed: u64, stream: u64, index: u64) -> Self {
        let key = mix64(mix64(seed ^ mix64(stream)).wrapping_add(index));
        Self::new(key)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(Self::GAMMA);
        mix64(self.state)
    }

    /// A uniform draw in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
        (self.next_u64() >> 11) as f64 * SCALE
    }

    /// A uniform draw in `[-1, 1)`.
    pub fn symmetric(&mut self) -> f64 {
        2.0 * self.uniform() - 1.0
    }

    /// An approximately standard normal draw: the Irwin–Hall sum of 12 uniforms minus 6
    /// (mean 0, variance 1, bounded by ±6), which needs no transcendental function and
    /// so gives the same bits on every platform.
    pub fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.uniform()).sum::<f64>() - 6.0
    }

    /// A uniform integer in `0..n` (`n > 0`; 0 when `n` is 0), by Lemire's
    /// multiply-shift (bias below 2⁻⁶⁴·n, irrelevant here).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Shuffle `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// SplitMix64's output function (a bijective 64-bit mixer).
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Random streams, so that changing how one thing is drawn never shifts another.
mod stream {
    pub const PROBLEM: u64 = 1;
    pub const INIT: u64 = 2;
    pub const NOISE: u64 = 3;
    pub const ORDER: u64 = 4;
}

/// Index of each tensor in [`Problem::params`].
const W0: usize = 0;
const B0: usize = 1;
const W1: usize = 2;
const B1: usize = 3;
const NORM: usize = 4;

/// One built-in problem, seeded. Immutable: the loss and gradients at a step are a
/// pure function of the parameters, the seed and the step.
#[derive(Clone, Debug)]
pub struct Problem {
    kind: ProblemKind,
    seed: u64,
    specs: Vec<ParamSpec>,
    gradient_noise: f64,
    batch_size: usize,
    data: Data,
    /// This worker's rank.
    rank: usize,
    /// Number of data-parallel workers.
    world: usize,
}

#[derive(Clone, Debug)]
enum Data {
    Quadratic {
        /// Per tensor, per element.
        curvature: Vec<Vec<f64>>,
        /// Per tensor, per element.
        optimum: Vec<Vec<f64>>,
    },
    Logistic {
        /// `LOGISTIC_SAMPLES × LOGISTIC_FEATURES`, row-major.
        inputs: Vec<f64>,
        /// 0 or 1 per sample.
        labels: Vec<f64>,
    },
}

impl Problem {
    /// The problem `kind` with everything drawn from `seed`.
    pub fn new(kind: ProblemKind, seed: u64) -> Self {
        Self::build(kind, seed, HIDDEN)
    }

    /// The problem with `hidden` units (tensors `[hidden, 4]`, `[hidden]`,
    /// `[outputs, hidden]`, `[outputs]`, `[hidden]`), everything else as it was
    /// (a width of 0 counts as 1). The logistic data set does not depend on the width;
    /// the quadratic's curvatures and optimum are drawn for the new shapes.
    pub fn with_hidden(self, hidden: usize) -> Self {
        let mut wider = Self::build(self.kind, self.seed, hidden.max(1));
        wider.gradient_noise = self.gradient_noise;
        wider.batch_size = self.batch_size;
        wider.rank = self.rank;
        wider.world = self.world;
        wider
    }

    /// The problem as worker `rank` of `world` data-parallel workers sees it (see the
    /// module documentation). Fails unless `rank < world`.
    pub fn with_worker(mut self, rank: usize, world: usize) -> Result<Self, ProblemError> {
        if rank >= world {
            return Err(ProblemError::Worker { rank, world });
        }
        self.rank = rank;
        self.world = world;
        Ok(self)
    }

    /// This worker's rank and the number of workers (`(0, 1)` by default).
    pub fn worker(&self) -> (usize, usize) {
        (self.rank, self.world)
    }

    /// Hidden units.
    pub fn hidden(&self) -> usize {
        self.specs[B0].numel()
    }

    fn build(kind: ProblemKind, seed: u64, hidden: usize) -> Self {
        let (outputs, inputs) = match kind {
            ProblemKind::Quadratic => (QUADRATIC_OUTPUTS, 4),
            ProblemKind::Logistic => (1, LOGISTIC_FEATURES),
        };
        // Shapes follow PyTorch's `nn.Linear` ([out, in]); depth 0 is the first layer,
        // and the gain sits on top of the hidden layer with the last layer.
        let specs = vec![
            ParamSpec::new("layers.0.weight", &[hidden, inputs]).with_depth(0),
            ParamSpec::new("layers.0.bias", &[hidden]).with_depth(0),
            ParamSpec::new("layers.1.weight", &[outputs, hidden]).with_depth(1),
            ParamSpec::new("layers.1.bias", &[outputs]).with_depth(1),
            ParamSpec::new("norm.weight", &[hidden]).with_depth(1),
        ];
        let mut rng = SplitMix64::keyed(seed, stream::PROBLEM, 0);
        let data = match kind {
            ProblemKind::Quadratic => {
                let (low, high) = QUADRATIC_CURVATURE_RANGE;
                let curvature = specs
                    .iter()
                    .map(|s| {
                        (0..s.numel())
                            .map(|_| low * (high / low).powf(rng.uniform()))
                            .collect()
                    })
                    .collect();
                let optimum = specs
                    .iter()
                    .map(|s| (0..s.numel()).map(|_| rng.symmetric()).collect())
                    .collect();
                Data::Quadratic { curvature, optimum }
            }
            ProblemKind::Logistic => {
                let inputs: Vec<f64> = (0..LOGISTIC_SAMPLES * LOGISTIC_FEATURES)
                    .map(|_| rng.normal())
                    .collect();
                let labels = inputs
                    .chunks_exact(LOGISTIC_FEATURES)
                    .map(|x| {
                        // A teacher with an interaction term: not linearly separable,
                        // easy for the hidden layer.
                        let positive = x[0] + x[1] * x[2] - 0.5 * x[3] > 0.0;
                        let flipped = rng.uniform() < LOGISTIC_LABEL_NOISE;
                        if positive != flipped {
                            1.0
                        } else {
                            0.0
                        }
                    })
                    .collect();
                Data::Logistic { inputs, labels }
            }
        };
        Self {
            kind,
            seed,
            specs,
            gradient_noise: match kind {
                ProblemKind::Quadratic => QUADRATIC_GRADIENT_NOISE,
                ProblemKind::Logistic => 0.0,
            },
            batch_size: LOGISTIC_BATCH_SIZE,
            data,
            rank: 0,
            world: 1,
        }
    }

    /// Look a problem up by name and seed it.
    pub fn from_name(name: &str, seed: u64) -> Result<Self, ProblemError> {
        Ok(Self::new(ProblemKind::from_name(name)?, seed))
    }

    /// The same problem with another standard deviation of the (uniform) noise added to
    /// every gradient element; 0 gives exact gradients.
    pub fn with_gradient_noise(mut self, std_dev: f64) -> Self {
        self.gradient_noise = std_dev;
        self
    }

    /// The same problem with another minibatch size (logistic only; 0 or anything at
    /// least [`LOGISTIC_SAMPLES`] means the full batch).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = if batch_size == 0 {
            LOGISTIC_SAMPLES
        } else {
            batch_size.min(LOGISTIC_SAMPLES)
        };
        self
    }

    /// Which problem this is.
    pub fn kind(&self) -> ProblemKind {
        self.kind
    }

    /// The seed everything is drawn from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The parameters, as a training loop declares them (f32, with depths).
    pub fn params(&self) -> Vec<ParamSpec> {
        self.specs.clone()
    }

    /// Minibatches per pass over the data (1 for the quadratic).
    pub fn steps_per_epoch(&self) -> u64 {
        match self.data {
            Data::Quadratic { .. } => 1,
            Data::Logistic { .. } => self.shard_len().div_ceil(self.batch_size) as u64,
        }
    }

    /// Seeded initial values, one vector per parameter: uniform in ±1/√fan_in for the
    /// layers (PyTorch's `nn.Linear` default), 1 for the gain.
    pub fn init(&self) -> Vec<Vec<f32>> {
        let mut rng = SplitMix64::keyed(self.seed, stream::INIT, 0);
        self.specs
            .iter()
            .enumerate()
            .map(|(index, spec)| {
                if index == NORM {
                    return vec![1.0; spec.numel()];
                }
                let fan_in = match index {
                    W0 | B0 => self.specs[W0].shape[1],
                    _ => self.hidden(),
                };
                let bound = 1.0 / (fan_in as f64).sqrt();
                (0..spec.numel())
                    .map(|_| (bound * rng.symmetric()) as f32)
                    .collect()
            })
            .collect()
    }

    /// The loss at `step` (the minibatch of that step for the logistic problem), and its
    /// gradient (plus the step's noise) written into `grads`. Checks the tensor count
    /// and lengths first; nothing is written on error.
    pub fn loss_and_grad<P: AsRef<[f32]>, G: AsMut<[f32]>>(
        &self,
        params: &[P],
        grads: &mut [G],
        step: u64,
    ) -> Result<f64, ProblemError> {
        self.check_call(params, grads)?;
        let params = widen(params);
        let mut wide: Vec<Vec<f64>> = self.specs.iter().map(|s| vec![0.0; s.numel()]).collect();
        let loss = self.evaluate(&params, step, Some(&mut wide));
        self.add_noise(&mut wide, step, 0, self.gradient_noise);
        narrow_into(&wide, grads);
        Ok(loss)
    }

    /// Add the seeded gradient noise of `step` (micro-batch `piece` of it) with
    /// standard deviation `std_dev` to every element.
    fn add_noise(&self, wide: &mut [Vec<f64>], step: u64, piece: u64, std_dev: f64) {
        if std_dev > 0.0 {
            // Uniform on ±√3·σ has standard deviation σ.
            let amplitude = std_dev * 3f64.sqrt();
            let noise_stream = stream::NOISE
                .wrapping_add((self.rank as u64) << 32)
                .wrapping_add(piece << 48);
            let mut rng = SplitMix64::keyed(self.seed, noise_stream, step);
            for value in wide.iter_mut().flatten() {
                *value += amplitude * rng.symmetric();
            }
        }
    }

    /// The quadratic with gradient noise that depends on the batch, for batch-size
    /// control: the noise is per sample, `gradient_noise · √base_batch` per element, so
    /// a batch of `base_batch` has the noise it always has and a batch of `b` has
    /// `gradient_noise · √(base_batch / b)`. This worker computes its share `b / world`
    /// in `pieces` micro-batches of equal size, each with its own draw (piece 0 is the
    /// draw [`Problem::loss_and_grad`] makes), and writes their mean into `grads`.
    /// Returns the loss and the mean of the pieces' squared gradient norms (the small
    /// batch of the noise estimator: `tr Σ = elements · gradient_noise² · base_batch`
    /// exactly). The logistic problem's minibatches have a fixed size: it is refused.
    pub fn loss_and_grad_at_batch<P: AsRef<[f32]>, G: AsMut<[f32]>>(
        &self,
        params: &[P],
        grads: &mut [G],
        step: u64,
        batch: BatchShape,
    ) -> Result<(f64, f64), ProblemError> {
        if !matches!(self.data, Data::Quadratic { .. }) {
            return Err(ProblemError::FixedBatch);
        }
        self.check_call(params, grads)?;
        let params = widen(params);
        let mut exact: Vec<Vec<f64>> = self.specs.iter().map(|s| vec![0.0; s.numel()]).collect();
        let loss = self.evaluate(&params, step, Some(&mut exact));
        let pieces = batch.pieces.max(1);
        let piece_samples = batch.global as f64 / (self.world.max(1) as f64 * pieces as f64);
        let std_dev = self.gradient_noise * (batch.base as f64 / piece_samples.max(1e-300)).sqrt();
        let mut mean: Vec<Vec<f64>> = self.specs.iter().map(|s| vec![0.0; s.numel()]).collect();
        let mut small_sq = 0.0;
        for piece in 0..pieces {
            let mut one = exact.clone();
            self.add_noise(&mut one, step, piece, std_dev);
            small_sq += one.iter().flatten().map(|v| v * v).sum::<f64>() / pieces as f64;
            for (m, g) in mean.iter_mut().flatten().zip(one.iter().flatten()) {
                *m += g / pieces as f64;
            }
        }
        narrow_into(&mean, grads);
        Ok((loss, small_sq))
    }

    /// The loss at `step` alone (the same value [`Problem::loss_and_grad`] returns).
    pub fn loss<P: AsRef<[f32]>>(&self, params: &[P], step: u64) -> Result<f64, ProblemError> {
        self.check(
            "parameters",
            "parameter",
            params.iter().map(|p| p.as_ref().len()),
        )?;
        Ok(self.evaluate(&widen(params), step, None))
    }

    /// The loss over the whole data set (equal to [`Problem::loss`] for the quadratic).
    pub fn full_loss<P: AsRef<[f32]>>(&self, params: &[P]) -> Result<f64, ProblemError> {
        self.check(
            "parameters",
            "parameter",
            params.iter().map(|p| p.as_ref().len()),
        )?;
        let params = widen(params);
        Ok(match &self.data {
            Data::Quadratic { .. } => self.evaluate(&params, 0, None),
            Data::Logistic { inputs, labels } => {
                let all: Vec<usize> = (0..LOGISTIC_SAMPLES).collect();
                logistic(&params, inputs, labels, &all, None)
            }
        })
    }

    /// Fraction of the data set classified correctly (logistic only; `None` for the
    /// quadratic).
    pub fn accuracy<P: AsRef<[f32]>>(&self, params: &[P]) -> Result<Option<f64>, ProblemError> {
        self.check(
            "parameters",
            "parameter",
            params.iter().map(|p| p.as_ref().len()),
        )?;
        let Data::Logistic { inputs, labels } = &self.data else {
            return Ok(None);
        };
        let params = widen(params);
        let mut hidden = vec![0.0; params[B0].len()];
        let correct = (0..LOGISTIC_SAMPLES)
            .filter(|&i| {
                let x = &inputs[i * LOGISTIC_FEATURES..][..LOGISTIC_FEATURES];
                let logit = forward(&params, x, &mut hidden);
                (logit > 0.0) == (labels[i] > 0.5)
            })
            .count();
        Ok(Some(correct as f64 / LOGISTIC_SAMPLES as f64))
    }

    /// The tensor count and lengths of a call's parameters and gradients.
    fn check_call<P: AsRef<[f32]>, G: AsMut<[f32]>>(
        &self,
        params: &[P],
        grads: &mut [G],
    ) -> Result<(), ProblemError> {
        self.check(
            "parameters",
            "parameter",
            params.iter().map(|p| p.as_ref().len()),
        )?;
        self.check(
            "gradients",
            "gradient",
            grads.iter_mut().map(|g| g.as_mut().len()),
        )
    }

    fn check(
        &self,
        what: &'static str,
        each: &'static str,
        lengths: impl ExactSizeIterator<Item = usize>,
    ) -> Result<(), ProblemError> {
        if lengths.len() != self.specs.len() {
            return Err(ProblemError::TensorCount {
                what,
                expected: self.specs.len(),
                actual: lengths.len(),
            });
        }
        for (spec, actual) in self.specs.iter().zip(lengths) {
            if spec.numel() != actual {
                return Err(ProblemError::TensorLength {
                    what: each,
                    name: spec.name.clone(),
                    expected: spec.numel(),
                    actual,
                });
            }
        }
        Ok(())
    }

    /// The exact loss, and its gradient into `grads` (zeroed, correctly sized) if given.
    fn evaluate(&self, params: &[Vec<f64>], step: u64, grads: Option<&mut [Vec<f64>]>) -> f64 {
        match &self.data {
            Data::Quadratic { curvature, optimum } => {
                let mut loss = 0.0;
                let mut grads = grads;
                for (index, w) in params.iter().enumerate() {
                    for (i, &value) in w.iter().enumerate() {
                        let a = curvature[index][i];
                        let delta = value - optimum[index][i];
                        loss += 0.5 * a * delta * delta;
                        if let Some(g) = grads.as_deref_mut() {
                            g[index][i] = a * delta;
                        }
                    }
                }
                loss
            }
            Data::Logistic { inputs, labels } => {
                let batch = self.minibatch(step);
                logistic(params, inputs, labels, &batch, grads)
            }
        }
    }

    /// Samples per epoch in this worker's shard: `⌈256/world⌉`.
    fn shard_len(&self) -> usize {
        LOGISTIC_SAMPLES.div_ceil(self.world.max(1))
    }

    /// The sample indices of `step`'s minibatch: epoch `e = step / steps_per_epoch`
    /// visits the samples in a permutation drawn from `(seed, e)`, of which this
    /// worker takes its shard (the whole permutation with one worker; see the module
    /// documentation); the last batch of an epoch may be shorter.
    fn minibatch(&self, step: u64) -> Vec<usize> {
        let per_epoch = self.steps_per_epoch();
        let epoch = step / per_epoch;
        let slot = (step % per_epoch) as usize;
        let mut order: Vec<usize> = (0..LOGISTIC_SAMPLES).collect();
        SplitMix64::keyed(self.seed, stream::ORDER, epoch).shuffle(&mut order);
        let world = self.world.max(1);
        let shard: Vec<usize> = if world == 1 {
            order
        } else {
            (self.rank..self.shard_len() * world)
                .step_by(world)
                .map(|i| order[i % LOGISTIC_SAMPLES])
                .collect()
        };
        let start = (slot * self.batch_size).min(shard.len());
        let end = (start + self.batch_size).min(shard.len());
        shard[start..end].to_vec()
    }
}

/// The batch of one step of [`Problem::loss_and_grad_at_batch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchShape {
    /// Samples of the step, all workers together.
    pub global: u64,
    /// The batch at which the problem has its configured gradient noise.
    pub base: u64,
    /// Micro-batches per worker.
    pub pieces: u64,
}

fn narrow_into<G: AsMut<[f32]>>(wide: &[Vec<f64>], grads: &mut [G]) {
    for (out, g) in grads.iter_mut().zip(wide) {
        for (o, v) in out.as_mut().iter_mut().zip(g) {
            *o = *v as f32;
        }
    }
}

fn widen<P: AsRef<[f32]>>(params: &[P]) -> Vec<Vec<f64>> {
    params
        .iter()
        .map(|p| p.as_ref().iter().map(|&v| f64::from(v)).collect())
        .collect()
}

/// `hidden = tanh(W0·x + b0)` (into `hidden`, one entry per hidden unit), and the
/// returned `logit = W1·(norm ⊙ hidden) + b1`.
fn forward(params: &[Vec<f64>], x: &[f64], hidden: &mut [f64]) -> f64 {
    let mut logit = params[B1][0];
    for (j, h) in hidden.iter_mut().enumerate() {
        let row = &params[W0][j * LOGISTIC_FEATURES..][..LOGISTIC_FEATURES];
        let pre = params[B0][j] + row.iter().zip(x).map(|(w, x)| w * x).sum::<f64>();
        *h = pre.tanh();
        logit += params[W1][j] * params[NORM][j] * *h;
    }
    logit
}

/// Mean binary cross-entropy over `batch`, and its gradient into `grads` if given.
fn logistic(
    params: &[Vec<f64>],
    inputs: &[f64],
    labels: &[f64],
    batch: &[usize],
    mut grads: Option<&mut [Vec<f64>]>,
) -> f64 {
    let count = batch.len().max(1) as f64;
    let mut loss = 0.0;
    let mut hidden = vec![0.0; params[B0].len()];
    for &i in batch {
        let x = &inputs[i * LOGISTIC_FEATURES..][..LOGISTIC_FEATURES];
        let y = labels[i];
        let z = forward(params, x, &mut hidden);
        // softplus(z) − y·z, written so that exp never overflows.
        loss += z.max(0.0) - y * z + (-z.abs()).exp().ln_1p();
        let Some(g) = grads.as_deref_mut() else {
            continue;
        };
        let sigmoid = if z >= 0.0 {
            1.0 / (1.0 + (-z).exp())
        } else {
            let e = z.exp();
            e / (1.0 + e)
        };
        let d_logit = (sigmoid - y) / count;
        g[B1][0] += d_logit;
        for (j, &h) in hidden.iter().enumerate() {
            let gain = params[NORM][j];
            let w1 = params[W1][j];
            g[W1][j] += d_logit * gain * h;
            g[NORM][j] += d_logit * w1 * h;
            let d_pre = d_logit * w1 * gain * (1.0 - h * h);
            g[B0][j] += d_pre;
            for (k, xk) in x.iter().enumerate() {
                g[W0][j * LOGISTIC_FEATURES + k] += d_pre * xk;
            }
        }
    }
    loss / count
}

/// A training loop's host tensors (parameters or gradients) in one precision: what
/// a mixed-precision model holds, handed to [`Stepper::step`] through
/// [`Buffers::views`] and [`Buffers::views_mut`].
#[derive(Clone, Debug)]
pub enum Buffers {
    /// f32 tensors.
    F32(Vec<Vec<f32>>),
    /// f16 tensors.
    F16(Vec<Vec<f16>>),
    /// bf16 tensors.
    BF16(Vec<Vec<bf16>>),
}

impl Buffers {
    /// `values` rounded to `dtype`.
    pub fn from_f32(dtype: DType, values: &[Vec<f32>]) -> Self {
        match dtype {
            DType::F32 => Self::F32(values.to_vec()),
            DType::F16 => Self::F16(
                values
                    .iter()
                    .map(|v| v.iter().map(|&x| f16::from_f32(x)).collect())
                    .collect(),
            ),
            DType::BF16 => Self::BF16(
                values
                    .iter()
                    .map(|v| v.iter().map(|&x| bf16::from_f32(x)).collect())
                    .collect(),
            ),
        }
    }

    /// Narrow `values · scale` (computed in f32) into these buffers: with f16, products
    /// beyond ±65504 become ±inf, as a scaled backward pass in f16 would produce.
    pub fn store_scaled(&mut self, values: &[Vec<f32>], scale: f32) {
        match self {
            Self::F32(out) => {
                for (o, v) in out.iter_mut().zip(values) {
                    for (o, &x) in o.iter_mut().zip(v) {
                        *o = x * scale;
                    }
                }
            }
            Self::F16(out) => {
                for (o, v) in out.iter_mut().zip(values) {
                    for (o, &x) in o.iter_mut().zip(v) {
                        *o = f16::from_f32(x * scale);
                    }
                }
            }
            Self::BF16(out) => {
                for (o, v) in out.iter_mut().zip(values) {
                    for (o, &x) in o.iter_mut().zip(v) {
                        *o = bf16::from_f32(x * scale);
                    }
                }
            }
        }
    }

    /// The tensors widened to f32.
    pub fn to_f32(&self) -> Vec<Vec<f32>> {
        match self {
            Self::F32(v) => v.clone(),
            Self::F16(v) => v
                .iter()
                .map(|t| t.iter().map(|x| x.to_f32()).collect())
                .collect(),
            Self::BF16(v) => v
                .iter()
                .map(|t| t.iter().map(|x| x.to_f32()).collect())
                .collect(),
        }
    }

    /// Replace the first element of tensor `tensor` by +inf (an injected overflow);
    /// nothing happens for a tensor that does not exist or is empty.
    pub fn set_infinite(&mut self, tensor: usize) {
        match self {
            Self::F32(v) => {
                if let Some(x) = v.get_mut(tensor).and_then(|t| t.first_mut()) {
                    *x = f32::INFINITY;
                }
            }
            Self::F16(v) => {
                if let Some(x) = v.get_mut(tensor).and_then(|t| t.first_mut()) {
                    *x = f16::INFINITY;
                }
            }
            Self::BF16(v) => {
                if let Some(x) = v.get_mut(tensor).and_then(|t| t.first_mut()) {
                    *x = bf16::INFINITY;
                }
            }
        }
    }

    /// Borrowed views, as [`Stepper::step`] takes gradients.
    pub fn views(&self) -> Vec<HostTensor<'_>> {
        match self {
            Self::F32(v) => v.iter().map(|t| HostTensor::F32(t)).collect(),
            Self::F16(v) => v.iter().map(|t| HostTensor::F16(t)).collect(),
            Self::BF16(v) => v.iter().map(|t| HostTensor::BF16(t)).collect(),
        }
    }

    /// Mutable views, as [`Stepper::step`] takes parameters.
    pub fn views_mut(&mut self) -> Vec<HostTensorMut<'_>> {
        match self {
            Self::F32(v) => v.iter_mut().map(|t| HostTensorMut::F32(t)).collect(),
            Self::F16(v) => v.iter_mut().map(|t| HostTensorMut::F16(t)).collect(),
            Self::BF16(v) => v.iter_mut().map(|t| HostTensorMut::BF16(t)).collect(),
        }
    }
}

/// A problem's model as a mixed-precision training loop holds it: parameters and
/// gradients in the script's precision, trained through a [`Stepper`].
///
/// Each [`ProblemModel::step`] does what a training loop does: forward and backward at
/// the current parameters (in f64, from the parameters widened to f32), multiply the
/// gradients by [`Stepper::loss_scale`] and narrow them to the precision, optionally
/// poison one gradient with +inf at chosen steps, and hand everything to
/// [`Stepper::step`], which writes the updated parameters back.
#[derive(Clone, Debug)]
pub struct ProblemModel {
    problem: Problem,
    dtype: DType,
    params: Buffers,
    grads: Buffers,
    overflow_at: Vec<u64>,
}

impl ProblemModel {
    /// The problem's seeded initial parameters, held in `dtype`.
    pub fn new(problem: Problem, dtype: DType) -> Self {
        let init = problem.init();
        let params = Buffers::from_f32(dtype, &init);
        let grads = params.clone();
        Self {
            problem,
            dtype,
            params,
            grads,
            overflow_at: Vec::new(),
        }
    }

    /// The same model with an injected overflow (+inf in the first gradient element)
    /// at each of these steps, whatever the precision.
    pub fn with_overflow_at(mut self, steps: &[u64]) -> Self {
        self.overflow_at = steps.to_vec();
        self
    }

    /// The problem.
    pub fn problem(&self) -> &Problem {
        &self.problem
    }

    /// The precision parameters and gradients are held in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The parameter list to bind: the problem's, in this model's dtype.
    pub fn param_specs(&self) -> Vec<ParamSpec> {
        self.problem
            .params()
            .into_iter()
            .map(|spec| spec.with_dtype(self.dtype))
            .collect()
    }

    /// The current parameters, as [`Stepper::new`] takes initial values.
    pub fn params(&self) -> Vec<HostTensor<'_>> {
        self.params.views()
    }

    /// The current parameters widened to f32.
    pub fn params_f32(&self) -> Vec<Vec<f32>> {
        self.params.to_f32()
    }

    /// One training step at the stepper's current step index. Returns the stepper's
    /// report (the loss of this step's parameters is in [`StepReport::loss`]).
    pub fn step<B: Backend>(
        &mut self,
        stepper: &mut Stepper<B>,
    ) -> Result<StepReport, RuntimeError> {
        let step = stepper.step_index();
        let params = self.params.to_f32();
        let mut grads: Vec<Vec<f32>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
        let problem_error = |error: ProblemError| RuntimeError::Strategy(error.to_string());
        let metrics = match stepper.batch_control() {
            None => Metrics::from_loss(
                self.problem
                    .loss_and_grad(&params, &mut grads, step)
                    .map_err(problem_error)?,
            ),
            Some(control) => {
                // Each worker's share in micro-batches of at most `micro_batch`.
                let global = control.next_batch();
                let world = self.problem.world.max(1) as u64;
                let share = global.div_ceil(world);
                let pieces = control
                    .spec()
                    .micro_batch
                    .map_or(1, |micro| share.div_ceil(micro.max(1)));
                let shape = BatchShape {
                    global,
                    base: control.spec().base_batch,
                    pieces,
                };
                let (loss, small_sq) = self
                    .problem
                    .loss_and_grad_at_batch(&params, &mut grads, step, shape)
                    .map_err(problem_error)?;
                // Small batches of equal whole size only: else no estimate this step.
                let even = global % world == 0 && (global / world) % pieces == 0;
                let small = global / world / pieces;
                Metrics {
                    loss: Some(loss),
                    batch: Some(global),
                    small_batch: (even && small < global).then_some(SmallBatchNorms {
                        samples: small,
                        mean_sq_norm: small_sq,
                    }),
                }
            }
        };
        self.grads.store_scaled(&grads, stepper.loss_scale() as f32);
        if self.overflow_at.contains(&step) {
            self.grads.set_infinite(0);
        }
        let grads = self.grads.views();
        let mut params = self.params.views_mut();
        stepper.step(&mut params, &grads, &metrics)
    }

    /// Replace the parameters by the stepper's f32 master weights narrowed to this
    /// model's dtype: what a training loop does after resuming from a checkpoint.
    pub fn load_master<B: Backend>(&mut self, stepper: &Stepper<B>) -> Result<(), RuntimeError> {
        let mut master: Vec<Vec<f32>> = self
            .problem
            .specs
            .iter()
            .map(|s| vec![0.0; s.numel()])
            .collect();
        for (index, out) in master.iter_mut().enumerate() {
            stepper.read_master(index, out)?;
        }
        self.params = Buffers::from_f32(self.dtype, &master);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Central differences in f64 on the f32 parameters: with h = 1e-3 the truncation
    /// error is O(h²·f''') and f32 rounding of w ± h is exact enough for a 1e-3
    /// relative check.
    fn check_gradient(problem: &Problem, step: u64) {
        let params = problem.init();
        let mut grads: Vec<Vec<f32>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
        problem.loss_and_grad(&params, &mut grads, step).unwrap();
        let h = 1e-3f32;
        for (index, tensor) in params.iter().enumerate() {
            for i in 0..tensor.len() {
                let mut plus = params.clone();
                plus[index][i] += h;
                let mut minus = params.clone();
                minus[index][i] -= h;
                let actual_h = f64::from(plus[index][i]) - f64::from(minus[index][i]);
                let numeric = (problem.loss(&plus, step).unwrap()
                    - problem.loss(&minus, step).unwrap())
                    / actual_h;
                let analytic = f64::from(grads[index][i]);
                let tolerance = 1e-3 * analytic.abs().max(1e-2);
                assert!(
                    (numeric - analytic).abs() < tolerance,
                    "{} {}[{i}]: numeric {numeric} analytic {analytic}",
                    problem.kind(),
                    problem.params()[index].name
                );
            }
        }
    }

    #[test]
    fn quadratic_gradient_matches_finite_differences() {
        check_gradient(
            &Problem::new(ProblemKind::Quadratic, 7).with_gradient_noise(0.0),
            0,
        );
    }

    #[test]
    fn logistic_gradient_matches_finite_differences_on_minibatches_and_full_batch() {
        let problem = Problem::new(ProblemKind::Logistic, 11);
        check_gradient(&problem, 0);
        check_gradient(&problem, 13);
        check_gradient(&problem.clone().with_batch_size(0), 0);
    }

    #[test]
    fn quadratic_loss_is_half_the_curvature_weighted_squared_distance() {
        let problem = Problem::new(ProblemKind::Quadratic, 3).with_gradient_noise(0.0);
        let Data::Quadratic { curvature, optimum } = &problem.data else {
            panic!("not a quadratic");
        };
        // At the optimum the loss and gradient vanish.
        let at_optimum: Vec<Vec<f32>> = optimum
            .iter()
            .map(|t| t.iter().map(|&x| x as f32).collect())
            .collect();
        let mut moved = at_optimum.clone();
        // One element moved by 0.5: loss = ½·a·0.25, gradient a·0.5 there.
        moved[2][3] += 0.5;
        let delta = f64::from(moved[2][3]) - optimum[2][3];
        let mut grads: Vec<Vec<f32>> = moved.iter().map(|p| vec![0.0; p.len()]).collect();
        let loss = problem.loss_and_grad(&moved, &mut grads, 0).unwrap();
        let a = curvature[2][3];
        let rounding: f64 = at_optimum
            .iter()
            .zip(optimum)
            .zip(curvature)
            .map(|((w, o), c)| {
                w.iter()
                    .zip(o)
                    .zip(c)
                    .map(|((&w, &o), &c)| 0.5 * c * (f64::from(w) - o).powi(2))
                    .sum::<f64>()
            })
            .sum();
        assert!(rounding < 1e-12, "f32 rounding of the optimum: {rounding}");
        assert!((loss - 0.5 * a * delta * delta).abs() < 1e-9, "{loss}");
        assert!((f64::from(grads[2][3]) - a * delta).abs() < 1e-6);
        assert!(curvature
            .iter()
            .flatten()
            .all(|&a| (0.1..=10.0).contains(&a)));
    }

    #[test]
    fn noise_has_the_documented_size_and_depends_only_on_seed_and_step() {
        let noisy = Problem::new(ProblemKind::Quadratic, 5);
        let exact = noisy.clone().with_gradient_noise(0.0);
        let params = noisy.init();
        let zeros = || -> Vec<Vec<f32>> { params.iter().map(|p| vec![0.0; p.len()]).collect() };
        let (mut a, mut b, mut c, mut e) = (zeros(), zeros(), zeros(), zeros());
        noisy.loss_and_grad(&params, &mut a, 4).unwrap();
        noisy.loss_and_grad(&params, &mut b, 4).unwrap();
        noisy.loss_and_grad(&params, &mut c, 5).unwrap();
        exact.loss_and_grad(&params, &mut e, 4).unwrap();
        assert_eq!(a, b, "same step, same noise");
        assert_ne!(a, c, "another step, other noise");
        let bound = QUADRATIC_GRADIENT_NOISE * 3f64.sqrt() + 1e-6;
        let mut sum_squares = 0.0;
        let mut count = 0.0;
        for (x, y) in a.iter().flatten().zip(e.iter().flatten()) {
            let noise = f64::from(*x) - f64::from(*y);
            assert!(noise.abs() <= bound, "{noise}");
            sum_squares += noise * noise;
            count += 1.0;
        }
        let std_dev = (sum_squares / count).sqrt();
        assert!(
            (0.5 * QUADRATIC_GRADIENT_NOISE..1.5 * QUADRATIC_GRADIENT_NOISE).contains(&std_dev)
        );
    }

    #[test]
    fn problems_are_deterministic_and_seeds_differ() {
        for kind in ProblemKind::ALL {
            let a = Problem::new(kind, 1);
            let b = Problem::new(kind, 1);
            let c = Problem::new(kind, 2);
            assert_eq!(a.init(), b.init());
            assert_ne!(a.init(), c.init());
            let params = a.init();
            let mut ga: Vec<Vec<f32>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
            let mut gb = ga.clone();
            let la = a.loss_and_grad(&params, &mut ga, 9).unwrap();
            let lb = b.loss_and_grad(&params, &mut gb, 9).unwrap();
            assert_eq!(la.to_bits(), lb.to_bits());
            assert_eq!(ga, gb);
        }
    }

    #[test]
    fn minibatches_cover_each_epoch_once_and_reshuffle() {
        let problem = Problem::new(ProblemKind::Logistic, 0);
        assert_eq!(problem.steps_per_epoch(), 8);
        let mut epoch0: Vec<usize> = (0..8).flat_map(|s| problem.minibatch(s)).collect();
        let epoch1: Vec<usize> = (8..16).flat_map(|s| problem.minibatch(s)).collect();
        assert_ne!(epoch0, epoch1);
        epoch0.sort_unstable();
        assert_eq!(epoch0, (0..LOGISTIC_SAMPLES).collect::<Vec<_>>());
        let odd = problem.with_batch_size(100);
        assert_eq!(odd.steps_per_epoch(), 3);
        assert_eq!(odd.minibatch(2).len(), 56);
    }

    #[test]
    fn logistic_data_is_balanced_enough_and_learnable() {
        let problem = Problem::new(ProblemKind::Logistic, 0);
        let Data::Logistic { labels, .. } = &problem.data else {
            panic!("not logistic");
        };
        let positives = labels.iter().sum::<f64>() / labels.len() as f64;
        assert!((0.3..0.7).contains(&positives), "{positives}");
        // Plain full-batch gradient descent lowers the loss and beats chance.
        let problem = problem.with_batch_size(0);
        let mut params = problem.init();
        let start = problem.full_loss(&params).unwrap();
        let mut grads: Vec<Vec<f32>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
        for step in 0..300 {
            problem.loss_and_grad(&params, &mut grads, step).unwrap();
            for (p, g) in params.iter_mut().flatten().zip(grads.iter().flatten()) {
                *p -= 0.5 * g;
            }
        }
        let end = problem.full_loss(&params).unwrap();
        assert!(end < 0.8 * start, "{start} -> {end}");
        let accuracy = problem.accuracy(&params).unwrap().unwrap();
        assert!(accuracy > 0.75, "{accuracy}");
    }

    #[test]
    fn bad_tensors_are_refused_before_anything_is_written() {
        let problem = Problem::new(ProblemKind::Quadratic, 0);
        let params = problem.init();
        let mut grads: Vec<Vec<f32>> = params.iter().map(|p| vec![7.0; p.len()]).collect();
        let short = &params[..3];
        assert_eq!(
            problem.loss_and_grad(short, &mut grads, 0),
            Err(ProblemError::TensorCount {
                what: "parameters",
                expected: 5,
                actual: 3
            })
        );
        let mut wrong = params.clone();
        wrong[1].pop();
        assert_eq!(
            problem.loss_and_grad(&wrong, &mut grads, 0),
            Err(ProblemError::TensorLength {
                what: "parameter",
                name: "layers.0.bias".to_string(),
                expected: 8,
                actual: 7
            })
        );
        assert!(grads.iter().flatten().all(|&g| g == 7.0));
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_errors() {
        for kind in ProblemKind::ALL {
            assert_eq!(ProblemKind::from_name(kind.name()), Ok(kind));
        }
        let error = ProblemKind::from_name("rosenbrock").unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown problem `rosenbrock`; the built-in problems are `quadratic` and `logistic`"
        );
    }

    #[test]
    fn f16_buffers_overflow_when_the_scale_is_too_large() {
        let mut buffers = Buffers::from_f32(DType::F16, &[vec![0.0, 0.0]]);
        // 2.0 · 32768 = 65536 > 65504 (f16's largest finite value): inf. 1.0 · 32768
        // is exactly representable.
        buffers.store_scaled(&[vec![2.0, 1.0]], 32768.0);
        let Buffers::F16(values) = &buffers else {
            panic!("not f16");
        };
        assert!(values[0][0].is_infinite());
        assert_eq!(values[0][1].to_f32(), 32768.0);
    }

    #[test]
    fn splitmix_matches_the_reference_sequence() {
        // Reference outputs of SplitMix64 seeded with 1234567 (Vigna's splitmix64.c).
        let mut rng = SplitMix64::new(1_234_567);
        assert_eq!(rng.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(rng.next_u64(), 3_203_168_211_198_807_973);
        assert_eq!(rng.next_u64(), 9_817_491_932_198_370_423);
    }

    #[test]
    fn worker_shards_split_each_epoch_like_a_distributed_sampler() {
        let single = Problem::new(ProblemKind::Logistic, 4);
        // One worker of one is the problem itself.
        let alone = single.clone().with_worker(0, 1).unwrap();
        for step in 0..20 {
            assert_eq!(alone.minibatch(step), single.minibatch(step));
        }
        // Four workers: 64 samples each per epoch, 2 batches of 32; together they
        // visit every sample once per epoch, and worker r holds the permutation's
        // elements r, r + 4, r + 8, …
        let workers: Vec<Problem> = (0..4)
            .map(|rank| single.clone().with_worker(rank, 4).unwrap())
            .collect();
        assert!(workers.iter().all(|w| w.steps_per_epoch() == 2));
        let order: Vec<usize> = (0..8).flat_map(|s| single.minibatch(s)).collect();
        for epoch in 0..2u64 {
            let mut seen: Vec<usize> = workers
                .iter()
                .flat_map(|w| (0..2).flat_map(move |s| w.minibatch(2 * epoch + s)))
                .collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..LOGISTIC_SAMPLES).collect::<Vec<_>>());
        }
        let shard: Vec<usize> = (0..2).flat_map(|s| workers[1].minibatch(s)).collect();
        let strided: Vec<usize> = order.iter().skip(1).step_by(4).copied().collect();
        assert_eq!(shard, strided);
        // Three workers: ⌈256/3⌉ = 86 per shard, padded by wrapping around (256 + 2).
        let third = single.clone().with_worker(2, 3).unwrap();
        assert_eq!(third.steps_per_epoch(), 3);
        let last: Vec<usize> = third.minibatch(2);
        assert_eq!(last.len(), 86 - 64);
        assert_eq!(last.last(), Some(&order[(2 + 3 * 85) % 256]));
        assert_eq!(
            single.with_worker(3, 3).unwrap_err(),
            ProblemError::Worker { rank: 3, world: 3 }
        );
    }

    #[test]
    fn each_worker_draws_its_own_noise_and_rank_zero_the_single_one() {
        let single = Problem::new(ProblemKind::Quadratic, 8);
        let params = single.init();
        let zeros = || -> Vec<Vec<f32>> { params.iter().map(|p| vec![0.0; p.len()]).collect() };
        let (mut alone, mut first, mut second) = (zeros(), zeros(), zeros());
        single.loss_and_grad(&params, &mut alone, 3).unwrap();
        let rank = |r| single.clone().with_worker(r, 2).unwrap();
        rank(0).loss_and_grad(&params, &mut first, 3).unwrap();
        rank(1).loss_and_grad(&params, &mut second, 3).unwrap();
        assert_eq!(alone, first);
        assert_ne!(first, second);
    }

    #[test]
    fn the_default_width_is_the_problem_itself_and_wider_problems_are_consistent() {
        for kind in ProblemKind::ALL {
            let problem = Problem::new(kind, 2);
            let same = problem.clone().with_hidden(HIDDEN);
            assert_eq!(same.init(), problem.init());
            let wide = problem.with_hidden(32);
            assert_eq!(wide.hidden(), 32);
            let shapes: Vec<Vec<usize>> = wide.params().iter().map(|p| p.shape.clone()).collect();
            let outputs = if kind == ProblemKind::Logistic { 1 } else { 2 };
            assert_eq!(
                shapes,
                [
                    vec![32, 4],
                    vec![32],
                    vec![outputs, 32],
                    vec![outputs],
                    vec![32]
                ]
            );
            check_gradient(&wide.clone().with_gradient_noise(0.0), 5);
        }
    }
}
