//! Real training runs under a script: an [`Mlp`] on a bundled or synthetic data set,
//! trained with data-parallel semantics (the global batch split into shards, one per
//! simulated worker, gradients exchanged and compressed as the script's `compress`
//! rules say), evaluated on the held-out split after every epoch, checkpointed, and
//! resumable bit for bit. [`run`] is what `regimen run` executes; [`compare`] runs
//! several scripts over several seeds for `regimen compare`.
//!
//! # Determinism
//!
//! The minibatch order of epoch `e` is a permutation drawn from a generator keyed by
//! `(seed, e)`, the initial weights come from `seed`, and the stepper keys every
//! random draw of a compressor by `(seed, step, tensor, rank)`. So the position in
//! the run (the stepper's step) is all the loop state there is: a checkpoint of the
//! stepper plus the rows already written to `trace.csv` continue a run exactly as if
//! it had never stopped.
//!
//! # Distributed runs
//!
//! [`run_distributed`] is the same loop with one worker per process and the caller's
//! communicator (MPI under `mpirun`): every rank computes its shard of the same
//! shuffled order, rank 0's initial weights are broadcast, only rank 0 writes
//! outputs and reports progress, every rank saves its own checkpoint (its
//! error-feedback memory), and every [`RunOptions::check_every`] steps the ranks
//! exchange a checksum of their parameters (with their interrupt flags), so a
//! divergence is an error, not a silent drift, and an interrupt stops every rank at
//! the same step.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use regimen_core::batch::{ControllerSpec, SmallBatchNorms};
use regimen_core::data::{DataError, Dataset, Split, TeacherSpec};
use regimen_core::nn::{Evaluation, Mlp, ModelError};
use regimen_core::problem::{Buffers, SplitMix64};
use serde::{Deserialize, Serialize};

use regimen_core::comm::ring_allreduce_traffic;

use crate::{
    Communicator, Error, NdArrayBackend, Script, SingleProcess, StepReport, StepperOptions,
    ThreadCluster, Trace, TraceRecord,
};

/// The UCI optical handwritten digits (8×8 images, pixel values 0–16, 1 797 rows;
/// CC BY 4.0, Alpaydin & Kaynak 1998), as scikit-learn ships them: gzipped CSV,
/// 64 pixel columns then the label. See `examples/data/README.md`.
pub const DIGITS_CSV_GZ: &[u8] = include_bytes!("../examples/data/digits.csv.gz");

/// The seed of the digits' fixed train/test split (never the run's seed: every run
/// is scored on the same test images).
pub const DIGITS_SPLIT_SEED: u64 = 1998;

/// The fraction of each class held out for testing.
pub const TEST_FRACTION: f64 = 0.2;

/// Samples per step when neither the script (`batch = N`) nor the caller sets one.
pub const DEFAULT_BATCH: usize = 64;

/// Random stream of the minibatch order (see [`SplitMix64::keyed`]).
const ORDER_STREAM: u64 = 31;

/// The most simulated workers a run accepts (one thread each).
pub const MAX_WORKERS: usize = 256;

/// Why a training run could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A data set could not be loaded.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The model does not fit the data or does not parse.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A setting is out of range or inconsistent.
    #[error("{0}")]
    Config(String),
    /// An output file could not be read or written.
    #[error("cannot {action} `{}`", path.display())]
    Io {
        /// `read`, `write`, `create`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `--resume` found outputs that do not belong to this run.
    #[error("cannot resume from `{}`: {reason}", dir.display())]
    Resume {
        /// The output directory.
        dir: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// Drawing the report failed.
    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),
    /// The ranks of a distributed run no longer hold the same parameters.
    #[error("the ranks diverged: after step {step} the parameters of rank(s) {ranks:?} differ from rank 0's (checksums {checksums:016x?})")]
    Diverged {
        /// Steps done when the check ran.
        step: u64,
        /// The ranks that differ from rank 0.
        ranks: Vec<usize>,
        /// Every rank's checksum, in rank order.
        checksums: Vec<u64>,
    },
    /// A [`Fault`] of kind [`FaultKind::Error`] fired.
    #[error("injected fault: rank {rank} fails at step {step}")]
    Fault {
        /// The rank.
        rank: usize,
        /// The step.
        step: u64,
    },
}

/// Which data set to train on.
#[derive(Clone, Debug, PartialEq)]
pub enum DataChoice {
    /// The bundled UCI digits with the fixed stratified 80/20 split.
    Digits,
    /// The synthetic teacher-network task, split 80/20 the same way.
    Teacher(TeacherSpec),
}

impl DataChoice {
    /// `digits`, `teacher` (the [`TeacherSpec`] defaults) or
    /// `teacher:SAMPLES,FEATURES,CLASSES`.
    pub fn parse(text: &str) -> Result<Self, TrainError> {
        let usage = "the data sets are `digits`, `teacher` and `teacher:SAMPLES,FEATURES,CLASSES`";
        match text.trim().split_once(':') {
            None if text.trim() == "digits" => Ok(Self::Digits),
            None if text.trim() == "teacher" => Ok(Self::Teacher(TeacherSpec::default())),
            Some(("teacher", sizes)) => {
                let sizes: Vec<usize> = sizes
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| TrainError::Config(format!("bad data `{text}`: {usage}")))?;
                match sizes.as_slice() {
                    &[samples, features, classes] => Ok(Self::Teacher(TeacherSpec {
                        samples,
                        features,
                        classes,
                        ..TeacherSpec::default()
                    })),
                    _ => Err(TrainError::Config(format!("bad data `{text}`: {usage}"))),
                }
            }
            _ => Err(TrainError::Config(format!(
                "unknown data set `{text}`: {usage}"
            ))),
        }
    }

    /// The name written in summaries.
    pub fn describe(&self) -> String {
        match self {
            Self::Digits => "digits".to_string(),
            Self::Teacher(spec) => {
                format!(
                    "teacher:{},{},{}",
                    spec.samples, spec.features, spec.classes
                )
            }
        }
    }

    /// The train/test split. Digits pixels are scaled from 0–16 to 0–1.
    pub fn load(&self) -> Result<Split, TrainError> {
        Ok(match self {
            Self::Digits => Dataset::from_csv_gz(DIGITS_CSV_GZ, 1.0 / 16.0)?
                .stratified_split(TEST_FRACTION, DIGITS_SPLIT_SEED)?,
            Self::Teacher(spec) => {
                Dataset::teacher(spec)?.stratified_split(TEST_FRACTION, spec.seed)?
            }
        })
    }
}

/// How [`run`] trains.
#[derive(Clone, Debug, PartialEq)]
pub struct RunOptions {
    /// The model; `None`: `mlp:IN,128,CLASSES` for the data.
    pub model: Option<Mlp>,
    /// The data set.
    pub data: DataChoice,
    /// Epochs to train; `None`: the script's horizon rounded up to whole epochs.
    pub epochs: Option<u64>,
    /// Seed of the initial weights, the minibatch order and the compressors.
    pub seed: u64,
    /// Simulated data-parallel workers, each with its shard of every batch.
    pub workers: usize,
    /// Rows per micro-batch: each worker computes its shard's gradient in pieces of
    /// at most this many rows and accumulates them (gradient accumulation); `None`:
    /// the whole shard at once.
    pub micro_batch: Option<usize>,
    /// Samples per step (the global batch); `None`: the script's `batch = N`, else
    /// [`DEFAULT_BATCH`].
    pub batch: Option<usize>,
    /// Where `trace.csv`, `epochs.csv`, `summary.json`, `report.svg` and the
    /// checkpoints go; `None` writes nothing.
    pub out: Option<PathBuf>,
    /// Continue from the checkpoint in `out`.
    pub resume: bool,
    /// Stop (cleanly, after a checkpoint) once this many steps are done in total: what
    /// Ctrl-C does, made reproducible for tests.
    pub stop_after: Option<u64>,
    /// Folders a relative `plugin "…"` path is looked up in after the script's own
    /// folder (`--plugin-path`).
    pub plugin_path: Vec<PathBuf>,
    /// In a distributed run, the ranks compare a checksum of their parameters (and
    /// agree on stopping) after every this many steps, at every epoch's end and at the
    /// last step.
    pub check_every: u64,
    /// Make one rank fail on purpose (tests of failure handling).
    pub fault: Option<Fault>,
}

/// A deliberate failure of one rank at one step, to test that a distributed job ends
/// with a clear message instead of hanging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The rank that fails.
    pub rank: usize,
    /// The step (0-based) at which it fails, before computing its gradient.
    pub step: u64,
    /// How.
    pub kind: FaultKind,
}

/// How a [`Fault`] fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The run returns an error on that rank.
    Error,
    /// The process dies at once (`abort`), as a crash would.
    Die,
    /// The rank's parameters are nudged after the step, so the ranks diverge (what the
    /// checksum must catch; the check runs after that step).
    Diverge,
}

impl FaultKind {
    /// `error`, `die` or `diverge`.
    pub fn parse(text: &str) -> Result<Self, TrainError> {
        match text {
            "error" => Ok(Self::Error),
            "die" => Ok(Self::Die),
            "diverge" => Ok(Self::Diverge),
            _ => Err(TrainError::Config(format!(
                "unknown fault `{text}`: the faults are `error`, `die` and `diverge`"
            ))),
        }
    }
}

/// Steps between parameter checksums of a distributed run by default.
pub const DEFAULT_CHECK_EVERY: u64 = 10;

impl Default for RunOptions {
    /// Digits, default model, the script's horizon and batch, seed 0, one worker, no
    /// outputs.
    fn default() -> Self {
        Self {
            model: None,
            data: DataChoice::Digits,
            epochs: None,
            seed: 0,
            workers: 1,
            micro_batch: None,
            batch: None,
            out: None,
            resume: false,
            stop_after: None,
            plugin_path: Vec::new(),
            check_every: DEFAULT_CHECK_EVERY,
            fault: None,
        }
    }
}

/// One finished epoch.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EpochSummary {
    /// Epoch number, from 1.
    pub epoch: u64,
    /// The last step of the epoch (0-based).
    pub step: u64,
    /// Mean minibatch loss over the epoch's steps (worker 0's shards).
    pub train_loss: f64,
    /// Loss on the test split after the epoch.
    pub test_loss: f64,
    /// Accuracy on the test split after the epoch.
    pub test_accuracy: f64,
    /// The lr of the epoch's last step.
    pub lr: f64,
    /// Samples per step (the last step of an epoch may have fewer).
    pub batch: u64,
    /// Gradient bytes worker 0 sent during the epoch (payloads as encoded).
    pub bytes_sent: u64,
    /// Steps skipped for non-finite gradients.
    pub skipped: u64,
}

/// What [`run`] reports to its observer while it trains.
#[derive(Debug)]
pub enum RunEvent<'a> {
    /// Training starts (or resumes) at `start_step` of `total_steps`.
    Started {
        /// The first step this call runs.
        start_step: u64,
        /// Steps of the whole run.
        total_steps: u64,
        /// Steps per epoch (with batch control: at the base batch).
        steps_per_epoch: u64,
        /// Samples per step (with batch control: the base batch).
        batch: u64,
        /// The run's length in progress units (steps with a fixed batch, samples with
        /// batch control), and where this call starts.
        progress_total: u64,
        /// See `progress_total`.
        progress_start: u64,
        /// Training rows.
        train_rows: usize,
        /// Test rows.
        test_rows: usize,
        /// The model.
        model: &'a Mlp,
        /// The script's compiler warnings, rendered (`file:line:col`, caret), if any.
        warnings: Option<&'a crate::Report>,
        /// Warnings of binding the script to the model (a glob matching no
        /// parameter, …).
        binding_warnings: &'a [String],
    },
    /// A step is done (worker 0's view).
    Step {
        /// The step (0-based).
        step: u64,
        /// Its minibatch loss.
        loss: f64,
        /// Its lr.
        lr: f64,
        /// Samples per step.
        batch: u64,
        /// Where the run stands after the step, in the units of `progress_total`.
        progress: u64,
    },
    /// An epoch is done and evaluated.
    Epoch(&'a EpochSummary),
}

/// The end of a run, as `summary.json` records it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunSummary {
    /// The script's path.
    pub script: String,
    /// The model description.
    pub model: String,
    /// Parameters (elements).
    pub parameters: usize,
    /// The data set.
    pub data: String,
    /// Training and test rows.
    pub train_rows: usize,
    /// Test rows.
    pub test_rows: usize,
    /// The seed.
    pub seed: u64,
    /// Simulated workers.
    pub workers: usize,
    /// Samples per step.
    pub batch: u64,
    /// Steps per epoch.
    pub steps_per_epoch: u64,
    /// Epochs of the run.
    pub epochs: u64,
    /// Steps done (all sessions).
    pub steps_done: u64,
    /// Steps of the whole run.
    pub total_steps: u64,
    /// Whether the run stopped before its end (Ctrl-C); `--resume` continues it.
    pub interrupted: bool,
    /// The step this session started at (0 unless resumed).
    pub resumed_at_step: u64,
    /// Test accuracy after the last finished epoch (NaN before the first).
    pub final_test_accuracy: f64,
    /// Test loss after the last finished epoch.
    pub final_test_loss: f64,
    /// The best test accuracy after any epoch.
    pub best_test_accuracy: f64,
    /// Mean minibatch loss of the last finished epoch.
    pub final_train_loss: f64,
    /// Gradient bytes worker 0 sent (encoded payloads; dense f32 where nothing is
    /// compressed).
    pub bytes_sent: u64,
    /// What the same steps would have sent as dense f32 gradients.
    pub bytes_dense: u64,
    /// `bytes_dense / bytes_sent`.
    pub compression_ratio: f64,
    /// Bytes worker 0's communicator moved during the steps (0 with one worker).
    pub wire_bytes_sent: u64,
    /// What worker 0 would have sent allreducing every gradient as dense f32 (one ring
    /// allreduce per parameter), over the same steps.
    pub wire_bytes_dense: u64,
    /// Skipped steps.
    pub skipped_steps: u64,
    /// Wall time of this session, seconds.
    pub seconds: f64,
}

/// A finished (or stopped) run: the summary, the per-step trace, the epochs.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// As in `summary.json`.
    pub summary: RunSummary,
    /// One record per step (as in `trace.csv`).
    pub trace: Trace,
    /// One record per epoch (as in `epochs.csv`).
    pub epochs: Vec<EpochSummary>,
    /// The rank that returned this outcome: in a distributed run only rank 0's holds
    /// the epochs and wrote the outputs.
    pub rank: usize,
}

/// Columns of `trace.csv` after `step`.
pub const TRACE_COLUMNS: [&str; 12] = [
    "epoch",
    "lr",
    "batch",
    "loss",
    "loss_scale",
    "skipped",
    "grad_norm",
    "update_norm",
    "bytes_sent",
    "bytes_dense",
    "wire_bytes_sent",
    "wire_bytes_dense",
];

/// Columns `trace.csv` has after [`TRACE_COLUMNS`] when the script controls the
/// batch: samples seen after the step, the schedules' clock the step ran at, its lr
/// factor, the smoothed gradient noise scale and AdaScale gain.
pub const BATCH_TRACE_COLUMNS: [&str; 5] =
    ["samples", "progress", "lr_factor", "noise_scale", "gain"];

/// Columns of `epochs.csv` after `step`.
pub const EPOCH_COLUMNS: [&str; 8] = [
    "epoch",
    "train_loss",
    "test_loss",
    "test_accuracy",
    "lr",
    "batch",
    "bytes_sent",
    "skipped",
];

/// Where a run keeps what it writes.
struct OutDir {
    dir: PathBuf,
}

impl OutDir {
    fn trace(&self) -> PathBuf {
        self.dir.join("trace.csv")
    }
    fn epochs(&self) -> PathBuf {
        self.dir.join("epochs.csv")
    }
    fn summary(&self) -> PathBuf {
        self.dir.join("summary.json")
    }
    fn report(&self) -> PathBuf {
        self.dir.join("report.svg")
    }
    fn config(&self) -> PathBuf {
        self.dir.join("run.json")
    }
    fn checkpoint(&self, rank: usize) -> PathBuf {
        self.dir
            .join("checkpoints")
            .join(format!("rank{rank}.ckpt"))
    }
}

/// What must be the same for `--resume` to continue a run (`run.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct RunConfig {
    model: String,
    data: String,
    seed: u64,
    workers: usize,
    batch: u64,
    #[serde(default)]
    micro_batch: Option<u64>,
    steps_per_epoch: u64,
}

/// Everything the workers share.
struct Plan<'a> {
    script: &'a Script,
    mlp: &'a Mlp,
    split: &'a Split,
    batch: usize,
    steps_per_epoch: u64,
    /// Steps of the run with a fixed batch (with batch control: of the base batch).
    total_steps: u64,
    /// When the run ends.
    length: RunLength,
    seed: u64,
    workers: usize,
    micro_batch: Option<usize>,
    out: Option<&'a OutDir>,
    resume: bool,
    interrupt: &'a AtomicBool,
    warnings: Option<crate::Report>,
    /// The step count at which every worker stops (agreed through `fetch_min`, or in
    /// a distributed run through the checksum exchange).
    stop_at: AtomicU64,
    /// One worker per process, with the caller's communicator.
    distributed: bool,
    check_every: u64,
    fault: Option<Fault>,
}

/// When a run ends: after a number of steps (a fixed batch), of samples (batch
/// control), or when the schedules' clock reaches a point (AdaScale, whose clock
/// runs slower than the data).
#[derive(Clone, Copy, Debug, PartialEq)]
enum RunLength {
    Steps(u64),
    Samples(u64),
    Progress(f64),
}

impl Plan<'_> {
    fn controlled(&self) -> bool {
        !matches!(self.length, RunLength::Steps(_))
    }

    /// Whether the run is over after `steps` steps and `samples` samples, the
    /// schedules' clock standing at `progress`.
    fn done(&self, steps: u64, samples: u64, progress: f64) -> bool {
        match self.length {
            RunLength::Steps(total) => steps >= total,
            RunLength::Samples(total) => samples >= total,
            RunLength::Progress(total) => progress >= total,
        }
    }

    /// A position of the run as a progress bar counts it: steps with a fixed batch,
    /// samples with batch control (AdaScale: its clock in base-batch samples).
    fn progress_units(&self, steps: u64, samples: u64, progress: f64) -> u64 {
        match self.length {
            RunLength::Steps(total) => steps.min(total),
            RunLength::Samples(total) => samples.min(total),
            RunLength::Progress(total) => (progress.min(total) * self.batch as f64).round() as u64,
        }
    }

    /// The run's whole length in the units of [`Plan::progress_units`].
    fn progress_total(&self) -> u64 {
        match self.length {
            RunLength::Steps(total) | RunLength::Samples(total) => total,
            RunLength::Progress(total) => (total * self.batch as f64).round() as u64,
        }
    }

    /// The columns of `trace.csv`.
    fn trace_columns(&self) -> Vec<&'static str> {
        let mut columns = TRACE_COLUMNS.to_vec();
        if self.controlled() {
            columns.extend(BATCH_TRACE_COLUMNS);
        }
        columns
    }
}

/// Compile `script_path` for the data's epoch length and train as `options` say.
/// `interrupt` is polled after every step (Ctrl-C sets it): the run then stops after
/// one more step at most (so that all workers stop at the same one), writes a
/// checkpoint and its outputs, and returns with [`RunSummary::interrupted`] set.
pub fn run(
    script_path: &Path,
    options: &RunOptions,
    interrupt: &AtomicBool,
    observer: &mut dyn FnMut(RunEvent<'_>),
) -> Result<RunOutcome, Error> {
    run_inner(script_path, options, interrupt, observer, None)
}

/// [`run`] as one rank of a distributed job: this process trains rank
/// `communicator.rank()` of `communicator.world()` (the `--workers` count must be 1
/// or the world), exchanging through `communicator` (see the module doc). Every rank
/// must call it with the same script and options. The global batch must be a
/// multiple of the world, so that every rank's shard has the same size (the last,
/// shorter batch of an epoch is split as evenly as it goes and weighted).
pub fn run_distributed(
    script_path: &Path,
    options: &RunOptions,
    interrupt: &AtomicBool,
    observer: &mut dyn FnMut(RunEvent<'_>),
    communicator: Box<dyn Communicator>,
) -> Result<RunOutcome, Error> {
    run_inner(
        script_path,
        options,
        interrupt,
        observer,
        Some(communicator),
    )
}

fn run_inner(
    script_path: &Path,
    options: &RunOptions,
    interrupt: &AtomicBool,
    observer: &mut dyn FnMut(RunEvent<'_>),
    communicator: Option<Box<dyn Communicator>>,
) -> Result<RunOutcome, Error> {
    let started = Instant::now();
    let (rank, workers) = match &communicator {
        Some(c) if options.workers != 1 && options.workers != c.world() => {
            return Err(TrainError::Config(format!(
                "--workers {} does not match the {} ranks of the job (leave it out with --dist mpi)",
                options.workers,
                c.world()
            ))
            .into())
        }
        Some(c) => (c.rank(), c.world()),
        None => (0, options.workers),
    };
    let split = options.data.load()?;
    let mlp = match &options.model {
        Some(mlp) => mlp.clone(),
        None => Mlp::new(
            &[split.train.features, 128, split.train.classes],
            regimen_core::nn::Activation::Relu,
        )
        .map_err(TrainError::from)?,
    };
    if mlp.inputs() != split.train.features || mlp.classes() < split.train.classes {
        return Err(TrainError::Config(format!(
            "the model {} takes {} inputs and {} classes, but `{}` has {} features and {} classes",
            mlp.describe(),
            mlp.inputs(),
            mlp.classes(),
            options.data.describe(),
            split.train.features,
            split.train.classes
        ))
        .into());
    }
    if communicator.is_none() && !(1..=MAX_WORKERS).contains(&workers) {
        return Err(TrainError::Config(format!("workers must be 1 to {MAX_WORKERS}")).into());
    }
    if options.check_every == 0 {
        return Err(TrainError::Config("--check-every must be at least 1".into()).into());
    }
    // The batch can come from the script, and the epoch length from the batch: read
    // the script's own batch first (its epoch length does not matter for that).
    let script_batch = Script::from_file_with(
        script_path,
        &crate::CompileOptions {
            steps_per_epoch: Some(1.0),
            batch_size: None,
            plugin_path: options.plugin_path.clone(),
            ..Default::default()
        },
    )
    .ok()
    .and_then(|s| s.compiled().batch_size);
    let batch = match options.batch {
        Some(batch) => batch as f64,
        None => script_batch.unwrap_or(DEFAULT_BATCH as f64),
    };
    if !(batch >= 1.0 && batch.fract() == 0.0 && batch <= split.train.len() as f64) {
        return Err(TrainError::Config(format!(
            "the batch size must be a whole number of samples from 1 to the {} training rows, got {batch}",
            split.train.len()
        ))
        .into());
    }
    let batch = batch as usize;
    if batch < workers {
        return Err(TrainError::Config(format!(
            "a batch of {batch} cannot be split between {workers} workers"
        ))
        .into());
    }
    // The hook of batch control across ranks: the global batch is what the script and
    // the controller see; each rank computes batch / world of it.
    if communicator.is_some() && batch % workers != 0 {
        return Err(TrainError::Config(format!(
            "the global batch of {batch} is not a multiple of the {workers} ranks: pick a \
             batch size divisible by {workers} (e.g. {})",
            batch.div_ceil(workers) * workers
        ))
        .into());
    }
    let rows = split.train.len();
    let steps_per_epoch = rows.div_ceil(batch) as u64;
    let compile = |steps_per_epoch: f64| {
        Script::from_file_with(
            script_path,
            &crate::CompileOptions {
                steps_per_epoch: Some(steps_per_epoch),
                batch_size: Some(batch as f64),
                plugin_path: options.plugin_path.clone(),
                ..Default::default()
            },
        )
    };
    let mut script = compile(steps_per_epoch as f64)?;
    // With batch control the schedules run on samples: an epoch is the data's rows,
    // `rows / batch` reference steps, whatever the batch of each step.
    let control = script.strategy().batch.clone();
    if control.is_some() {
        script = compile(rows as f64 / batch as f64)?;
    }
    if let Some(spec) = &control {
        if communicator.is_some() && spec.bounds.multiple_of % workers as u64 != 0 {
            return Err(TrainError::Config(format!(
                "the batch controller's batches must split evenly between the {workers} ranks:                  add `multiple_of: {workers}` to the `batch` statement"
            ))
            .into());
        }
    }
    let epochs = match options.epochs {
        Some(0) => return Err(TrainError::Config("--epochs must be at least 1".into()).into()),
        Some(epochs) => epochs,
        None => match (
            script.compiled().graph.horizon,
            script.compiled().horizon_steps(),
        ) {
            (Some(horizon), _) if control.is_some() && horizon > 0.0 => {
                // The horizon in reference steps, as whole epochs (a horizon of whole
                // epochs is exact up to rounding, not one epoch more).
                let epochs = horizon * batch as f64 / rows as f64;
                let nearest = epochs.round();
                if (epochs - nearest).abs() < 1e-9 * epochs.max(1.0) {
                    nearest.max(1.0) as u64
                } else {
                    epochs.ceil() as u64
                }
            }
            (_, Some(steps)) if steps > 0 => steps.div_ceil(steps_per_epoch),
            _ => {
                return Err(TrainError::Config(format!(
                    "`{}` sets no horizon: pass `--epochs N` (or add e.g. `horizon 20 epochs`)",
                    script.name()
                ))
                .into())
            }
        },
    };
    let total_steps = epochs.saturating_mul(steps_per_epoch);
    let length = match &control {
        None => RunLength::Steps(total_steps),
        Some(spec) if matches!(spec.controller, ControllerSpec::AdaScale { .. }) => {
            RunLength::Progress(epochs as f64 * rows as f64 / batch as f64)
        }
        Some(_) => RunLength::Samples(epochs.saturating_mul(rows as u64)),
    };
    let micro_batch = options.micro_batch.or_else(|| {
        control
            .as_ref()
            .and_then(|c| c.micro_batch)
            .map(|m| m as usize)
    });
    let out = options.out.as_ref().map(|dir| OutDir { dir: dir.clone() });
    let config = RunConfig {
        model: mlp.describe(),
        data: options.data.describe(),
        seed: options.seed,
        workers,
        batch: batch as u64,
        micro_batch: micro_batch.map(|m| m as u64),
        steps_per_epoch,
    };
    if let Some(out) = &out {
        prepare_out(out, &config, options.resume, rank == 0)?;
    } else if options.resume {
        return Err(TrainError::Config("--resume needs the run's output directory".into()).into());
    }
    let plan = Plan {
        script: &script,
        mlp: &mlp,
        split: &split,
        batch,
        steps_per_epoch,
        total_steps,
        length,
        seed: options.seed,
        workers,
        micro_batch,
        out: out.as_ref(),
        resume: options.resume,
        interrupt,
        warnings: script.warnings(),
        stop_at: AtomicU64::new(options.stop_after.unwrap_or(u64::MAX)),
        distributed: communicator.is_some(),
        check_every: options.check_every,
        fault: options.fault,
    };
    let (history, start_step) = match communicator {
        Some(communicator) => {
            let observer = (rank == 0).then_some(observer);
            Worker::new(&plan, rank, communicator)?
                .run(observer)?
                .ok_or(Error::WorkerPanicked { rank })?
        }
        None => run_workers(&plan, observer)?,
    };
    let summary = summarize(&plan, &options.data, &history, epochs, start_step, started);
    let History {
        trace,
        epochs: epoch_rows,
        ..
    } = history;
    if let Some(out) = out.as_ref().filter(|_| rank == 0) {
        write_atomic(&out.summary(), &serde_json_pretty(&summary))?;
        let title = format!(
            "{} · {} on {} · seed {}",
            script.name(),
            mlp.describe(),
            options.data.describe(),
            options.seed
        );
        if !trace.records.is_empty() {
            crate::plot::plot_to_file(&report_trace(&trace, &epoch_rows), &title, &out.report())
                .map_err(TrainError::from)?;
        }
    }
    Ok(RunOutcome {
        summary,
        trace,
        epochs: epoch_rows,
        rank,
    })
}

fn serde_json_pretty(value: &impl Serialize) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "{}".to_string());
    text.push('\n');
    text
}

/// Create the output directory (a fresh run must not overwrite an old run's
/// checkpoint by accident: it replaces its files; a resumed run must match it).
/// Only the rank that writes outputs (`write_config`) writes `run.json`.
fn prepare_out(
    out: &OutDir,
    config: &RunConfig,
    resume: bool,
    write_config: bool,
) -> Result<(), TrainError> {
    let checkpoints = out.checkpoint(0);
    let parent = checkpoints.parent().unwrap_or(&out.dir);
    std::fs::create_dir_all(parent).map_err(|source| TrainError::Io {
        action: "create",
        path: parent.to_path_buf(),
        source,
    })?;
    if resume {
        let text = std::fs::read_to_string(out.config()).map_err(|_| TrainError::Resume {
            dir: out.dir.clone(),
            reason: "it holds no `run.json` (no run was started there)".into(),
        })?;
        let theirs: RunConfig = serde_json::from_str(&text).map_err(|e| TrainError::Resume {
            dir: out.dir.clone(),
            reason: format!("its `run.json` is unreadable: {e}"),
        })?;
        if &theirs != config {
            return Err(TrainError::Resume {
                dir: out.dir.clone(),
                reason: format!(
                    "it was started with {}; this run asks for {}",
                    describe_config(&theirs),
                    describe_config(config)
                ),
            });
        }
        Ok(())
    } else if write_config {
        write_atomic(&out.config(), &serde_json_pretty(config))
    } else {
        Ok(())
    }
}

fn describe_config(c: &RunConfig) -> String {
    let micro = c
        .micro_batch
        .map_or_else(String::new, |m| format!(", micro-batches of {m}"));
    format!(
        "{} on {}, seed {}, {} workers, batch {}{micro} ({} steps per epoch)",
        c.model, c.data, c.seed, c.workers, c.batch, c.steps_per_epoch
    )
}

/// Write through a temporary file and a rename, so a reader (or a crash) never sees
/// half a file.
fn write_atomic(path: &Path, text: &str) -> Result<(), TrainError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| TrainError::Io {
            action: "write",
            path: path.to_path_buf(),
            source,
        })
}

/// The rows written so far.
#[derive(Clone, Debug, Default)]
struct History {
    trace: Trace,
    epochs: Vec<EpochSummary>,
    /// The run reached its end (not stopped early).
    finished: bool,
}

impl History {
    fn new(columns: &[&str]) -> Self {
        Self {
            trace: Trace {
                columns: columns.iter().map(|c| c.to_string()).collect(),
                records: Vec::new(),
            },
            epochs: Vec::new(),
            finished: false,
        }
    }

    fn epochs_trace(&self) -> Trace {
        epochs_trace(&self.epochs)
    }

    fn write(&self, out: &OutDir) -> Result<(), TrainError> {
        write_atomic(&out.trace(), &self.trace.to_csv())?;
        write_atomic(&out.epochs(), &self.epochs_trace().to_csv())
    }

    /// The rows of a stopped run, up to (not including) `step`.
    fn read(out: &OutDir, step: u64, columns: &[&str]) -> Result<Self, TrainError> {
        let resume_error = |reason: String| TrainError::Resume {
            dir: out.dir.clone(),
            reason,
        };
        let mut history = Self::new(columns);
        let trace = read_csv(&out.trace(), columns).map_err(resume_error)?;
        history.trace.records = trace
            .records
            .into_iter()
            .filter(|r| r.step < step)
            .collect();
        if history.trace.records.len() as u64 != step
            || history
                .trace
                .records
                .iter()
                .enumerate()
                .any(|(i, r)| r.step != i as u64)
        {
            return Err(resume_error(format!(
                "`trace.csv` does not hold every step before the checkpoint's step {step}"
            )));
        }
        let epochs = read_csv(&out.epochs(), &EPOCH_COLUMNS).map_err(resume_error)?;
        for record in epochs.records.into_iter().filter(|r| r.step < step) {
            let v = &record.values;
            history.epochs.push(EpochSummary {
                epoch: v[0] as u64,
                step: record.step,
                train_loss: v[1],
                test_loss: v[2],
                test_accuracy: v[3],
                lr: v[4],
                batch: v[5] as u64,
                bytes_sent: v[6] as u64,
                skipped: v[7] as u64,
            });
        }
        Ok(history)
    }
}

fn epochs_trace(epochs: &[EpochSummary]) -> Trace {
    Trace {
        columns: EPOCH_COLUMNS.iter().map(|c| c.to_string()).collect(),
        records: epochs
            .iter()
            .map(|e| TraceRecord {
                step: e.step,
                values: vec![
                    e.epoch as f64,
                    e.train_loss,
                    e.test_loss,
                    e.test_accuracy,
                    e.lr,
                    e.batch as f64,
                    e.bytes_sent as f64,
                    e.skipped as f64,
                ],
            })
            .collect(),
    }
}

/// Read back a CSV that [`Trace::to_csv`] wrote (floats in shortest round-trip form,
/// so every value comes back with the same bits).
fn read_csv(path: &Path, columns: &[&str]) -> Result<Trace, String> {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read `{name}`: {e}"))?;
    let mut lines = text.lines();
    let expected: Vec<&str> = std::iter::once("step")
        .chain(columns.iter().copied())
        .collect();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    if header != expected {
        return Err(format!(
            "`{name}` does not have the columns of this version"
        ));
    }
    let mut trace = Trace {
        columns: columns.iter().map(|c| c.to_string()).collect(),
        records: Vec::new(),
    };
    for (index, line) in lines.enumerate() {
        let bad = || format!("`{name}` line {} is malformed", index + 2);
        let mut fields = line.split(',');
        let step = fields.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let values: Vec<f64> = fields
            .map(|f| f.parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| bad())?;
        if values.len() != columns.len() {
            return Err(bad());
        }
        trace.records.push(TraceRecord { step, values });
    }
    Ok(trace)
}

/// Run every worker (worker 0 on this thread, the others in scoped threads, joined
/// through a [`ThreadCluster`]); returns worker 0's history and the step it began at.
fn run_workers(
    plan: &Plan<'_>,
    observer: &mut dyn FnMut(RunEvent<'_>),
) -> Result<(History, u64), Error> {
    if plan.workers == 1 {
        let result = Worker::new(plan, 0, Box::new(SingleProcess))?.run(Some(observer))?;
        return result.ok_or(Error::WorkerPanicked { rank: 0 });
    }
    let mut communicators = ThreadCluster::new(plan.workers).into_iter();
    let first = communicators.next();
    std::thread::scope(|scope| {
        let handles: Vec<_> = communicators
            .map(|communicator| {
                scope.spawn(move || {
                    let rank = communicator.rank();
                    Worker::new(plan, rank, Box::new(communicator))?.run(None)
                })
            })
            .collect();
        let ours = match first {
            Some(communicator) => {
                Worker::new(plan, 0, Box::new(communicator)).and_then(|w| w.run(Some(observer)))
            }
            None => Err(Error::WorkerPanicked { rank: 0 }),
        };
        let mut peer_error = None;
        for (index, handle) in handles.into_iter().enumerate() {
            match handle.join() {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    peer_error.get_or_insert(error);
                }
                Err(_) => {
                    peer_error.get_or_insert(Error::WorkerPanicked { rank: index + 1 });
                }
            }
        }
        // Worker 0's own failure is the cause unless it only saw a peer go away.
        match (ours, peer_error) {
            (Ok(Some(result)), None) => Ok(result),
            (Ok(_), Some(error)) => Err(error),
            (Ok(None), None) => Err(Error::WorkerPanicked { rank: 0 }),
            (Err(error), Some(peer)) if is_peer_gone(&error) => Err(peer),
            (Err(error), _) => Err(error),
        }
    })
}

fn is_peer_gone(error: &Error) -> bool {
    matches!(
        error,
        Error::Runtime(crate::RuntimeError::Communication {
            error: regimen_core::comm::CommError::PeerGone { .. },
            ..
        })
    )
}

/// Every rank starts from rank 0's initial weights (they are drawn from the same
/// seed everywhere; the broadcast makes that a fact rather than an assumption).
fn broadcast_params(
    communicator: &mut dyn Communicator,
    params: &mut [Vec<f32>],
) -> Result<(), Error> {
    let mut bytes: Vec<u8> = params
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let expected = bytes.len();
    communicator
        .broadcast(0, &mut bytes)
        .map_err(|error| crate::RuntimeError::Communication {
            step: 0,
            during: "the initial parameters".to_owned(),
            error,
        })?;
    if bytes.len() != expected {
        return Err(TrainError::Config(format!(
            "rank 0 broadcast {} bytes of initial parameters, this rank expects {expected}",
            bytes.len()
        ))
        .into());
    }
    let mut words = bytes.chunks_exact(4);
    for value in params.iter_mut().flatten() {
        if let Some(w) = words.next() {
            *value = f32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        }
    }
    Ok(())
}

/// Every rank resumes at rank 0's checkpoint step (broadcast from rank 0): a rank
/// whose checkpoint is at another step (a crash between two ranks' saves) is refused.
fn agree_on_resume_step(
    stepper: &mut crate::Stepper<NdArrayBackend>,
    out: &OutDir,
) -> Result<(), Error> {
    let ours = stepper.step_index();
    let mut bytes = ours.to_le_bytes().to_vec();
    let rank = stepper.rank();
    stepper
        .communicator_mut()
        .broadcast(0, &mut bytes)
        .map_err(|error| crate::RuntimeError::Communication {
            step: ours,
            during: "the checkpoint step".to_owned(),
            error,
        })?;
    let mut word = [0u8; 8];
    word.copy_from_slice(bytes.get(..8).unwrap_or(&[0; 8]));
    let theirs = u64::from_le_bytes(word);
    if theirs != ours {
        return Err(TrainError::Resume {
            dir: out.dir.clone(),
            reason: format!(
                "rank {rank}'s checkpoint is at step {ours}, rank 0's at step {theirs}"
            ),
        }
        .into());
    }
    Ok(())
}

/// One simulated worker: its model buffers (in the script's precision) and stepper.
struct Worker<'a> {
    plan: &'a Plan<'a>,
    rank: usize,
    stepper: crate::Stepper<NdArrayBackend>,
    params: Buffers,
    grads: Buffers,
    numel: u64,
    /// What this rank would send per step allreducing every gradient as dense f32.
    wire_dense: u64,
}

impl<'a> Worker<'a> {
    fn new(
        plan: &'a Plan<'a>,
        rank: usize,
        mut communicator: Box<dyn Communicator>,
    ) -> Result<Self, Error> {
        let world = communicator.world();
        let wire_dense = plan
            .mlp
            .param_specs()
            .iter()
            .map(|s| ring_allreduce_traffic(s.numel() as u64, 4, world, rank).bytes_sent)
            .sum();
        let dtype = plan.script.strategy().precision.dtype;
        let specs: Vec<_> = plan
            .mlp
            .param_specs()
            .into_iter()
            .map(|s| s.with_dtype(dtype))
            .collect();
        let fresh_init = if plan.resume && plan.out.is_some() {
            None
        } else {
            let mut init = plan.mlp.init(plan.seed);
            if world > 1 {
                broadcast_params(communicator.as_mut(), &mut init)?;
            }
            Some(init)
        };
        let options = StepperOptions::new()
            .with_communicator(communicator)
            .with_seed(plan.seed);
        let (stepper, master) = match (plan.resume, plan.out) {
            (true, Some(out)) => {
                let path = out.checkpoint(rank);
                if !path.is_file() {
                    return Err(TrainError::Resume {
                        dir: out.dir.clone(),
                        reason: format!("there is no checkpoint `{}`", path.display()),
                    }
                    .into());
                }
                let mut stepper = plan.script.resume_with_options(
                    NdArrayBackend::new(),
                    &path,
                    &specs,
                    options,
                )?;
                if world > 1 {
                    agree_on_resume_step(&mut stepper, out)?;
                }
                let mut master: Vec<Vec<f32>> =
                    specs.iter().map(|s| vec![0.0; s.numel()]).collect();
                for (index, tensor) in master.iter_mut().enumerate() {
                    stepper.read_master(index, tensor)?;
                }
                (stepper, master)
            }
            _ => {
                let init = fresh_init.unwrap_or_else(|| plan.mlp.init(plan.seed));
                let buffers = Buffers::from_f32(dtype, &init);
                let stepper = plan.script.bind_with_options(
                    NdArrayBackend::new(),
                    &specs,
                    &buffers.views(),
                    options,
                )?;
                (stepper, init)
            }
        };
        let params = Buffers::from_f32(dtype, &master);
        Ok(Self {
            plan,
            rank,
            stepper,
            grads: params.clone(),
            params,
            numel: plan.mlp.numel() as u64,
            wire_dense,
        })
    }

    /// FNV-1a over the bits of the parameters as the model uses them.
    fn checksum(&self) -> u64 {
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for value in self.params.to_f32().iter().flatten() {
            for byte in value.to_bits().to_le_bytes() {
                hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        hash
    }

    /// The distributed run's check after `step` steps: every rank's parameter checksum
    /// and interrupt flag to every rank (an allgather of 9 bytes a rank). Different
    /// checksums are an error; the result says whether any rank was interrupted.
    fn agree(&mut self, step: u64) -> Result<bool, Error> {
        let mut status = self.checksum().to_le_bytes().to_vec();
        status.push(u8::from(self.plan.interrupt.load(Ordering::SeqCst)));
        let mut all = Vec::new();
        self.stepper
            .communicator_mut()
            .allgather(&status, &mut all)
            .map_err(|error| crate::RuntimeError::Communication {
                step,
                during: "the parameter checksum".to_owned(),
                error,
            })?;
        let mut checksums = Vec::with_capacity(all.len());
        let mut interrupted = false;
        for entry in &all {
            let mut word = [0u8; 8];
            word.copy_from_slice(entry.get(..8).unwrap_or(&[0; 8]));
            checksums.push(u64::from_le_bytes(word));
            interrupted |= entry.get(8).is_some_and(|&flag| flag != 0);
        }
        let ranks: Vec<usize> = (1..checksums.len())
            .filter(|&r| checksums[r] != checksums[0])
            .collect();
        if !ranks.is_empty() {
            return Err(TrainError::Diverged {
                step,
                ranks,
                checksums,
            }
            .into());
        }
        Ok(interrupted)
    }

    /// Whether the distributed check runs after `step` steps (`epoch_done`: the step
    /// ended an epoch; `last`: the run is over).
    fn checks_after(&self, step: u64, epoch_done: bool, last: bool) -> bool {
        let plan = self.plan;
        let fault = plan
            .fault
            .is_some_and(|f| f.kind == FaultKind::Diverge && f.step + 1 == step);
        plan.distributed
            && (step % plan.check_every == 0
                || epoch_done
                || last
                || step == plan.stop_at.load(Ordering::SeqCst)
                || fault)
    }

    /// The schedules' clock after `steps` steps: the step count, or batch control's.
    fn clock(&self, steps: u64) -> f64 {
        self.stepper
            .batch_control()
            .map_or(steps as f64, |c| c.progress())
    }

    /// Where the run stands after `steps` steps and `samples` samples, in the units
    /// of [`Plan::progress_units`].
    fn progress_units(&self, steps: u64, samples: u64) -> u64 {
        self.plan.progress_units(steps, samples, self.clock(steps))
    }

    /// Whether the run is over after `steps` steps and `samples` samples.
    fn done(&self, steps: u64, samples: u64) -> bool {
        self.plan.done(steps, samples, self.clock(steps))
    }

    /// The rows of the batch of `len` rows starting at `start` of the epoch's order
    /// that this worker computes: the batch's rows are split into contiguous shards,
    /// the first `len % W` one row longer.
    fn shard(&self, start: usize, len: usize) -> (std::ops::Range<usize>, usize) {
        let (w, r) = (self.plan.workers, self.rank);
        let (base, extra) = (len / w, len % w);
        let begin = start + r * base + r.min(extra);
        let size = base + usize::from(r < extra);
        (begin..begin + size, len)
    }

    /// Train to the end (or the agreed stop). Worker 0 returns its history.
    fn run(
        mut self,
        mut observer: Option<&mut dyn FnMut(RunEvent<'_>)>,
    ) -> Result<Option<(History, u64)>, Error> {
        let plan = self.plan;
        let start_step = self.stepper.step_index();
        let columns = plan.trace_columns();
        let mut history = match (plan.resume, plan.out, self.rank) {
            (true, Some(out), 0) => History::read(out, start_step, &columns)?,
            _ => History::new(&columns),
        };
        let rows = plan.split.train.len();
        // An epoch is the data's rows: with a fixed batch `steps_per_epoch` steps, the
        // last one shorter; with batch control as many steps as the batches take.
        let mut samples = match self.stepper.batch_control() {
            Some(control) => control.samples(),
            None => {
                let (epoch, index) = (
                    start_step / plan.steps_per_epoch,
                    start_step % plan.steps_per_epoch,
                );
                epoch * rows as u64 + (index as usize * plan.batch).min(rows) as u64
            }
        };
        if let Some(observer) = observer.as_deref_mut() {
            observer(RunEvent::Started {
                start_step,
                total_steps: plan.total_steps,
                steps_per_epoch: plan.steps_per_epoch,
                batch: plan.batch as u64,
                progress_total: plan.progress_total(),
                progress_start: self.progress_units(start_step, samples),
                train_rows: plan.split.train.len(),
                test_rows: plan.split.test.len(),
                model: plan.mlp,
                warnings: plan.warnings.as_ref(),
                binding_warnings: &self.stepper.binding().warnings,
            });
        }
        let mut order: Vec<usize> = Vec::new();
        let mut order_epoch = None;
        let mut x = Vec::new();
        let mut labels = Vec::new();
        let mut grads: Vec<Vec<f32>> = plan
            .mlp
            .param_specs()
            .iter()
            .map(|s| vec![0.0; s.numel()])
            .collect();
        let mut micro_grads = grads.clone();
        let mut step = start_step;
        while !self.done(step, samples) {
            // Every worker stops at the same step: whoever sees the interrupt first
            // moves the stop to the step after the next one, which no peer can have
            // passed (each step waits for everyone's gradients).
            // (A distributed run agrees on it in the checksum exchange instead.)
            if !plan.distributed && plan.interrupt.load(Ordering::SeqCst) {
                plan.stop_at.fetch_min(step + 1, Ordering::SeqCst);
            }
            if step >= plan.stop_at.load(Ordering::SeqCst) {
                break;
            }
            if let Some(fault) = plan.fault.filter(|f| f.rank == self.rank && f.step == step) {
                match fault.kind {
                    FaultKind::Error => {
                        return Err(TrainError::Fault {
                            rank: self.rank,
                            step,
                        }
                        .into())
                    }
                    FaultKind::Die => {
                        eprintln!("rank {}: injected fault: dying at step {step}", self.rank);
                        std::process::abort();
                    }
                    FaultKind::Diverge => {}
                }
            }
            let epoch = samples / rows as u64;
            if order_epoch != Some(epoch) {
                order = (0..rows).collect();
                SplitMix64::keyed(plan.seed, ORDER_STREAM, epoch).shuffle(&mut order);
                order_epoch = Some(epoch);
            }
            let position = (samples % rows as u64) as usize;
            let nominal = self.stepper.next_batch().map_or(plan.batch, |b| b as usize);
            let (shard, batch_len) = self.shard(position, nominal.min(rows - position));
            x.clear();
            labels.clear();
            plan.split.train.gather(&order[shard], &mut x, &mut labels);
            let master = self.params.to_f32();
            let (loss, small_batch) =
                self.shard_loss_and_grad(&master, &x, &labels, &mut grads, &mut micro_grads)?;
            // The noise estimator needs small batches of one size on every worker.
            let small_batch = small_batch
                .filter(|s| batch_len % plan.workers == 0 && (s.samples as usize) < batch_len);
            // The workers' mean gradient is the batch's mean gradient: each shard's
            // mean is weighted by W·|shard|/|batch| (1 for equal shards).
            let weight = (plan.workers * labels.len()) as f32 / batch_len as f32;
            let scale = self.stepper.loss_scale() as f32;
            if weight != 1.0 {
                grads.iter_mut().flatten().for_each(|g| *g *= weight);
            }
            self.grads.store_scaled(&grads, scale);
            let report = {
                let views = self.grads.views();
                let mut params = self.params.views_mut();
                let metrics = crate::Metrics {
                    loss: Some(loss),
                    batch: plan.controlled().then_some(batch_len as u64),
                    small_batch,
                };
                self.stepper.step(&mut params, &views, &metrics)?
            };
            if plan.fault.is_some_and(|f| {
                f.kind == FaultKind::Diverge && f.rank == self.rank && f.step == step
            }) {
                let mut nudged = self.params.to_f32();
                if let Some(first) = nudged.first_mut().and_then(|t| t.first_mut()) {
                    *first += 1e-3;
                }
                self.params = Buffers::from_f32(plan.script.strategy().precision.dtype, &nudged);
            }
            if self.rank == 0 || plan.distributed {
                let record = step_record(&report, epoch, batch_len, self.numel, self.wire_dense);
                let lr = record.values[1];
                history.trace.records.push(record);
                if let Some(observer) = observer.as_deref_mut() {
                    observer(RunEvent::Step {
                        step,
                        loss,
                        lr: lr * report.batch.map_or(1.0, |b| b.lr_factor),
                        batch: batch_len as u64,
                        progress: self.progress_units(step + 1, samples + batch_len as u64),
                    });
                }
            }
            step += 1;
            samples += batch_len as u64;
            let epoch_done = samples % rows as u64 == 0;
            let last = self.done(step, samples);
            if epoch_done && self.rank == 0 {
                let summary = self.epoch_summary(&history, epoch)?;
                if let Some(observer) = observer.as_deref_mut() {
                    observer(RunEvent::Epoch(&summary));
                }
                history.epochs.push(summary);
            }
            if self.checks_after(step, epoch_done, last) && self.agree(step)? {
                plan.stop_at.fetch_min(step, Ordering::SeqCst);
            }
            let stopping = step >= plan.stop_at.load(Ordering::SeqCst) && !last;
            if epoch_done || stopping || last {
                self.checkpoint(&history)?;
            }
        }
        history.finished = self.done(step, samples);
        Ok((self.rank == 0 || plan.distributed).then_some((history, start_step)))
    }

    /// Mean loss and gradient of this worker's shard, in micro-batches of at most
    /// `plan.micro_batch` rows whose gradients are accumulated (weighted by their
    /// share of the shard), as gradient accumulation does. An empty shard (a last
    /// batch smaller than the number of workers) contributes zeros and a NaN loss.
    ///
    /// With batch control it also returns the small batch of the noise estimator:
    /// the micro-batches' size and mean squared gradient norm when they all have the
    /// same size, else the whole shard's.
    fn shard_loss_and_grad(
        &self,
        params: &[Vec<f32>],
        x: &[f32],
        labels: &[u32],
        grads: &mut [Vec<f32>],
        micro_grads: &mut [Vec<f32>],
    ) -> Result<(f64, Option<SmallBatchNorms>), Error> {
        let mlp = self.plan.mlp;
        let rows = labels.len();
        let micro = self.plan.micro_batch.unwrap_or(rows).max(1);
        let measure = self.plan.controlled();
        let squared_norm =
            |g: &[Vec<f32>]| -> f64 { g.iter().flatten().map(|&v| f64::from(v).powi(2)).sum() };
        if rows == 0 {
            grads.iter_mut().for_each(|g| g.fill(0.0));
            return Ok((f64::NAN, None));
        }
        if micro >= rows {
            let loss = mlp
                .loss_and_grad(params, x, labels, grads)
                .map_err(TrainError::from)?;
            let small = measure.then(|| SmallBatchNorms {
                samples: rows as u64,
                mean_sq_norm: squared_norm(grads),
            });
            return Ok((loss, small));
        }
        grads.iter_mut().for_each(|g| g.fill(0.0));
        let mut loss = 0.0;
        let mut micro_sq = 0.0;
        for (xs, ys) in x.chunks(micro * mlp.inputs()).zip(labels.chunks(micro)) {
            let share = ys.len() as f64 / rows as f64;
            loss += share
                * mlp
                    .loss_and_grad(params, xs, ys, micro_grads)
                    .map_err(TrainError::from)?;
            if measure {
                micro_sq += squared_norm(micro_grads);
            }
            for (g, m) in grads.iter_mut().zip(micro_grads.iter()) {
                for (g, m) in g.iter_mut().zip(m) {
                    *g += share as f32 * m;
                }
            }
        }
        let small = (measure && rows % micro == 0).then(|| SmallBatchNorms {
            samples: micro as u64,
            mean_sq_norm: micro_sq / rows.div_ceil(micro) as f64,
        });
        Ok((loss, small))
    }

    fn epoch_summary(&self, history: &History, epoch: u64) -> Result<EpochSummary, Error> {
        let rows: Vec<&TraceRecord> = history
            .trace
            .records
            .iter()
            .filter(|r| r.values[0] as u64 == epoch)
            .collect();
        let columns = self.plan.trace_columns();
        let column = |name: &str| {
            columns
                .iter()
                .position(|c| *c == name)
                .unwrap_or(usize::MAX)
        };
        let (loss, skipped, bytes, lr) = (
            column("loss"),
            column("skipped"),
            column("bytes_sent"),
            column("lr"),
        );
        let finite: Vec<f64> = rows
            .iter()
            .map(|r| r.values[loss])
            .filter(|l| l.is_finite())
            .collect();
        let train_loss = finite.iter().sum::<f64>() / finite.len().max(1) as f64;
        let test = self.evaluate()?;
        let last = rows.last();
        // With batch control: the lr as the last step used it (× its factor), and the
        // epoch's largest batch.
        let lr_factor = column("lr_factor");
        let batch = if self.plan.controlled() {
            let batch = column("batch");
            rows.iter()
                .map(|r| r.values[batch] as u64)
                .max()
                .unwrap_or(0)
        } else {
            self.plan.batch as u64
        };
        Ok(EpochSummary {
            epoch: epoch + 1,
            step: last.map_or(0, |r| r.step),
            train_loss,
            test_loss: test.loss,
            test_accuracy: test.accuracy,
            lr: last.map_or(f64::NAN, |r| {
                r.values[lr] * r.values.get(lr_factor).copied().unwrap_or(1.0)
            }),
            batch,
            bytes_sent: rows.iter().map(|r| r.values[bytes] as u64).sum(),
            skipped: rows.iter().map(|r| r.values[skipped] as u64).sum(),
        })
    }

    /// The model as it is held (in the script's precision) on the test split.
    fn evaluate(&self) -> Result<Evaluation, Error> {
        let test = &self.plan.split.test;
        Ok(self
            .plan
            .mlp
            .evaluate(&self.params.to_f32(), &test.x, &test.labels)
            .map_err(TrainError::from)?)
    }

    /// Outputs first, then the checkpoint: a crash between the two leaves rows past
    /// the checkpoint, which `--resume` drops, never a checkpoint without its rows.
    fn checkpoint(&self, history: &History) -> Result<(), Error> {
        let Some(out) = self.plan.out else {
            return Ok(());
        };
        if self.rank == 0 {
            history.write(out)?;
        }
        self.stepper.save(&out.checkpoint(self.rank))?;
        Ok(())
    }
}

/// One `trace.csv` record of worker 0's step report.
fn step_record(
    report: &StepReport,
    epoch: u64,
    batch: usize,
    numel: u64,
    wire_dense: u64,
) -> TraceRecord {
    let lr = report
        .scalars
        .iter()
        .find(|(name, _)| name == "lr")
        .map_or(f64::NAN, |(_, v)| *v);
    // What this worker puts on the wire for its gradients: the encoded payloads of
    // the compressed parameters plus dense f32 for the rest (with one worker and no
    // `compress` rule the pipeline does not run, and everything counts as dense);
    // nothing on a skipped step.
    let (dense, sent) = if report.skipped {
        (0, 0)
    } else {
        let covered: u64 = report.compression.iter().map(|c| c.dense_bytes).sum();
        let payload: u64 = report.compression.iter().map(|c| c.payload_bytes).sum();
        let total = 4 * numel;
        (total, payload + total.saturating_sub(covered))
    };
    TraceRecord {
        step: report.step,
        values: vec![
            epoch as f64,
            lr,
            batch as f64,
            report.loss.unwrap_or(f64::NAN),
            report.loss_scale,
            f64::from(u8::from(report.skipped)),
            report.grad_norm,
            report.update_norm,
            sent as f64,
            dense as f64,
            report.wire_bytes_sent as f64,
            if report.skipped {
                0.0
            } else {
                wire_dense as f64
            },
        ]
        .into_iter()
        .chain(report.batch.iter().flat_map(|b| {
            [
                b.samples as f64,
                b.progress,
                b.lr_factor,
                b.noise_scale,
                b.gain,
            ]
        }))
        .collect(),
    }
}

fn column_sum(trace: &Trace, name: &str) -> u64 {
    trace
        .column(name)
        .unwrap_or_default()
        .iter()
        .map(|&v| v as u64)
        .sum()
}

fn summarize(
    plan: &Plan<'_>,
    data: &DataChoice,
    history: &History,
    epoch_count: u64,
    start_step: u64,
    started: Instant,
) -> RunSummary {
    let (trace, epochs, finished) = (&history.trace, &history.epochs, history.finished);
    let last = epochs.last();
    let bytes_sent = column_sum(trace, "bytes_sent");
    let bytes_dense = column_sum(trace, "bytes_dense");
    let steps_done = trace.records.len() as u64;
    RunSummary {
        script: plan.script.name().to_string(),
        model: plan.mlp.describe(),
        parameters: plan.mlp.numel(),
        data: data.describe(),
        train_rows: plan.split.train.len(),
        test_rows: plan.split.test.len(),
        seed: plan.seed,
        workers: plan.workers,
        batch: plan.batch as u64,
        steps_per_epoch: plan.steps_per_epoch,
        epochs: epoch_count,
        steps_done,
        total_steps: if plan.controlled() && finished {
            steps_done
        } else {
            plan.total_steps
        },
        interrupted: !finished,
        resumed_at_step: start_step,
        final_test_accuracy: last.map_or(f64::NAN, |e| e.test_accuracy),
        final_test_loss: last.map_or(f64::NAN, |e| e.test_loss),
        best_test_accuracy: epochs
            .iter()
            .map(|e| e.test_accuracy)
            .fold(f64::NAN, f64::max),
        final_train_loss: last.map_or(f64::NAN, |e| e.train_loss),
        bytes_sent,
        bytes_dense,
        compression_ratio: bytes_dense as f64 / bytes_sent as f64,
        wire_bytes_sent: column_sum(trace, "wire_bytes_sent"),
        wire_bytes_dense: column_sum(trace, "wire_bytes_dense"),
        skipped_steps: column_sum(trace, "skipped"),
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// The panels of `report.svg`: the step's loss, the test accuracy after the last
/// finished epoch (a step line), lr, batch size and bytes sent per step.
fn report_trace(trace: &Trace, epochs: &[EpochSummary]) -> Trace {
    let pick = |name: &str| TRACE_COLUMNS.iter().position(|c| *c == name).unwrap_or(0);
    let columns = [pick("loss"), pick("lr"), pick("batch"), pick("bytes_sent")];
    let mut next_epoch = epochs.iter().peekable();
    let mut accuracy = f64::NAN;
    // At most REPORT_MAX_POINTS points a line (and always the last step), so the SVG
    // of a long run stays small.
    let every = trace.records.len().div_ceil(REPORT_MAX_POINTS).max(1);
    let last = trace.records.len().saturating_sub(1);
    let records = trace
        .records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            while let Some(e) = next_epoch.next_if(|e| e.step <= r.step) {
                accuracy = e.test_accuracy;
            }
            let values = vec![
                r.values[columns[0]],
                accuracy,
                r.values[columns[1]],
                r.values[columns[2]],
                r.values[columns[3]],
            ];
            (i % every == 0 || i == last).then_some(TraceRecord {
                step: r.step,
                values,
            })
        })
        .collect();
    Trace {
        columns: [
            "train loss",
            "test accuracy",
            "lr",
            "batch size",
            "bytes sent",
        ]
        .iter()
        .map(|c| c.to_string())
        .collect(),
        records,
    }
}

/// The most points a line of `report.svg` gets.
const REPORT_MAX_POINTS: usize = 4000;

/// One script's runs in [`compare`]: one outcome per seed.
#[derive(Clone, Debug)]
pub struct Compared {
    /// The script.
    pub script: PathBuf,
    /// One run per seed, in seed order.
    pub runs: Vec<RunOutcome>,
}

impl Compared {
    /// Mean and (sample) standard deviation of the final test accuracy over seeds.
    pub fn accuracy(&self) -> (f64, f64) {
        mean_std(self.runs.iter().map(|r| r.summary.final_test_accuracy))
    }

    /// Mean wall time of a run, seconds.
    pub fn seconds(&self) -> f64 {
        mean_std(self.runs.iter().map(|r| r.summary.seconds)).0
    }

    /// Mean bytes sent per run, and the mean dense bytes.
    pub fn bytes(&self) -> (f64, f64) {
        (
            mean_std(self.runs.iter().map(|r| r.summary.bytes_sent as f64)).0,
            mean_std(self.runs.iter().map(|r| r.summary.bytes_dense as f64)).0,
        )
    }

    /// Mean skipped steps per run.
    pub fn skipped(&self) -> f64 {
        mean_std(self.runs.iter().map(|r| r.summary.skipped_steps as f64)).0
    }
}

/// Mean and sample standard deviation (0 for one value).
pub fn mean_std(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let values: Vec<f64> = values.collect();
    let n = values.len() as f64;
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Run every script with seeds `base.seed .. base.seed + seeds` (same data, model,
/// batch override and epochs), without writing outputs. Stops early, with what is
/// done, when `interrupt` is set.
pub fn compare(
    scripts: &[PathBuf],
    base: &RunOptions,
    seeds: u64,
    interrupt: &AtomicBool,
    observer: &mut dyn FnMut(&Path, u64, RunEvent<'_>),
) -> Result<Vec<Compared>, Error> {
    let mut results = Vec::with_capacity(scripts.len());
    for script in scripts {
        let mut runs = Vec::new();
        for seed in base.seed..base.seed.saturating_add(seeds.max(1)) {
            if interrupt.load(Ordering::SeqCst) {
                break;
            }
            let options = RunOptions {
                seed,
                out: None,
                resume: false,
                ..base.clone()
            };
            let outcome = run(script, &options, interrupt, &mut |event| {
                observer(script, seed, event)
            })?;
            // A run cut short by Ctrl-C would compare an unfinished run with finished
            // ones: it is left out (the table shows how many seeds each row has).
            if !outcome.summary.interrupted {
                runs.push(outcome);
            }
        }
        results.push(Compared {
            script: script.clone(),
            runs,
        });
    }
    Ok(results)
}

/// The overlay chart of a comparison: one panel per measure (test accuracy per epoch,
/// train loss per epoch, bytes sent per epoch), one line per script (the mean over
/// seeds), x in epochs.
pub fn compare_panels(results: &[Compared]) -> Vec<crate::plot::Panel> {
    type Measure = fn(&EpochSummary) -> f64;
    let measures: [(&str, Measure); 3] = [
        ("test accuracy", |e| e.test_accuracy),
        ("train loss", |e| e.train_loss),
        ("bytes sent per epoch", |e| e.bytes_sent as f64),
    ];
    measures
        .iter()
        .map(|(name, measure)| crate::plot::Panel {
            name: name.to_string(),
            series: results
                .iter()
                .map(|compared| {
                    let epochs = compared
                        .runs
                        .iter()
                        .map(|r| r.epochs.len())
                        .min()
                        .unwrap_or(0);
                    let points = (0..epochs)
                        .map(|e| {
                            let mean =
                                mean_std(compared.runs.iter().map(|r| measure(&r.epochs[e]))).0;
                            ((e + 1) as f64, mean)
                        })
                        .collect();
                    let label = compared.script.file_stem().map_or_else(
                        || compared.script.display().to_string(),
                        |s| s.to_string_lossy().into_owned(),
                    );
                    (label, points)
                })
                .collect(),
        })
        .collect()
}
