//! Regimen: steer neural-network training with checked, traceable schedule scripts.
//!
//! A `*.regimen` script describes how a run is steered step by step: how
//! hyperparameters (learning rate, momentum, …) evolve, which optimizer runs, how
//! parameter groups and layers are treated, and the numeric precision with its loss
//! scaling. This crate is the facade over the workspace:
//!
//! - [`Script`] loads and checks a script once, then [binds](Script::bind) it to a
//!   model's parameters: the resulting [`Stepper`] applies the whole strategy to the
//!   gradients a training loop hands it each step;
//! - [`trace_file`] and [`trace_source`] go from a script straight to the [`Trace`] of
//!   its schedules, and [`trace_problem`] runs its full strategy on a built-in
//!   synthetic problem ([`ProblemKind`]) and traces what the runtime did — on one
//!   worker, or on several simulated data-parallel workers
//!   ([`ProblemOptions::with_workers`]) that exchange their gradients, compressed as
//!   the script's `compress` rules say, with bytes counted on the wire;
//! - [`dsl`] parses, checks, formats and compiles scripts (re-exported from
//!   `regimen-dsl`), [`core`] holds the runtime (re-exported from `regimen-core`);
//! - [`output`] renders a trace as a table, JSON or YAML, and [`plot`] draws it (SVG
//!   or PNG);
//! - [`assert_trace_snapshot!`] pins a script's trace in an `insta` snapshot in *your*
//!   crate's tests (feature `snapshot`, on by default).
//!
//! A schedule, traced:
//!
//! ```
//! use regimen::{trace_source, TraceOptions};
//!
//! let script = "horizon 100 steps\nlr = linear(0.001 -> 0.1, over: 10 steps) then cosine(0.1 -> 0)\n";
//! let trace = trace_source("warmup.regimen", script, &TraceOptions::default())?;
//! let lr = trace.column("lr").unwrap_or_default();
//! assert_eq!(lr.len(), 100); // the horizon
//! assert!((lr[10] - 0.1).abs() < 1e-12); // warmup done: the peak
//! # Ok::<(), regimen::Error>(())
//! ```
//!
//! A training loop, driven by a script (see [`Script`] and `examples/train_mlp.rs`):
//!
//! ```
//! use regimen::{HostTensor, HostTensorMut, Metrics, ParamSpec, Script};
//!
//! let script = Script::from_source(
//!     "train.regimen",
//!     "lr = 0.1\noptimizer sgd(momentum: 0.9)\n",
//!     &Default::default(),
//! )?;
//! let params = [ParamSpec::new("w", &[2])];
//! let mut w = vec![1.0f32, -1.0];
//! let mut stepper = script.bind(&params, &[HostTensor::F32(&w)])?;
//! for _ in 0..3 {
//!     // Loss ½‖w‖², so the gradient is w itself.
//!     let grad = w.clone();
//!     let loss = 0.5 * w.iter().map(|x| f64::from(x * x)).sum::<f64>();
//!     let report = stepper.step(
//!         &mut [HostTensorMut::F32(&mut w)],
//!         &[HostTensor::F32(&grad)],
//!         &Metrics::from_loss(loss),
//!     )?;
//!     assert!(!report.skipped);
//! }
//! assert!(w[0] < 1.0 && w[1] > -1.0); // moved towards the minimum
//! # Ok::<(), regimen::Error>(())
//! ```

use std::path::{Path, PathBuf};

pub mod output;
pub mod plot;
pub mod train;

pub use regimen_core as core;
pub use regimen_dsl as dsl;

pub use regimen_core::batch::{BatchReport, SmallBatchNorms};
pub use regimen_core::comm::{Communicator, SingleProcess, ThreadCluster, Traffic};
pub use regimen_core::problem::{Problem, ProblemError, ProblemKind, ProblemModel};
pub use regimen_core::runtime::{CompressionReport, CompressorRegistry, StepperOptions};
pub use regimen_core::{
    format_value, round_significant, Backend, BackendChoice, BackendError, Binding, DType,
    GraphError, HostTensor, HostTensorMut, Metrics, NdArrayBackend, ParamSpec, RuntimeError,
    ScalarGraph, StepReport, Stepper, Strategy, Trace, TraceRecord, SNAPSHOT_SIGNIFICANT_DIGITS,
};
pub use regimen_dsl::{CompileOptions, Compiled, Diagnostic, Report, Severity, SourceFile};

/// `insta`, re-exported so that [`assert_trace_snapshot!`] works in crates that do
/// not depend on it themselves. Not part of the public API.
#[cfg(feature = "snapshot")]
#[doc(hidden)]
pub use insta as __insta;

/// Everything that can go wrong between a script and its trace.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The script file could not be read.
    #[error("cannot read `{}`", path.display())]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The script has errors. The [`Report`]'s `Display` is the full rendering:
    /// `file:line:col`, the source line, a caret and a suggestion per problem.
    #[error("{0}")]
    Compile(Report),
    /// The script sets no `horizon` and no step count was given.
    #[error("`{name}` sets no horizon, so the number of steps to trace must be given")]
    MissingSteps {
        /// The script's name.
        name: String,
    },
    /// The compiled graph is malformed (a bug in the compiler, never the user's).
    #[error("internal error: the compiled graph of `{name}` is invalid")]
    Graph {
        /// The script's name.
        name: String,
        /// What is wrong with the graph.
        #[source]
        source: GraphError,
    },
    /// Binding, stepping, saving or loading failed in the runtime (a parameter list
    /// that does not fit, a bad hyperparameter value, a refused checkpoint, …).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The backend asked for is not available in this build.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// An unknown built-in problem, or tensors that do not fit one.
    #[error(transparent)]
    Problem(#[from] ProblemError),
    /// A training run (`regimen run`, `compare`) could not load its data, build its
    /// model, or read or write its outputs.
    #[error(transparent)]
    Train(#[from] train::TrainError),
    /// A simulated worker's thread panicked (a bug, never the user's).
    #[error("internal error: simulated worker {rank} panicked")]
    WorkerPanicked {
        /// The worker's rank.
        rank: usize,
    },
}

impl Error {
    /// The message followed by its causes: `cannot read `a.regimen`: No such file or
    /// directory (os error 2)`. (`Display` shows the message alone, as the causes are
    /// reachable through [`std::error::Error::source`].)
    pub fn to_string_with_causes(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

impl From<Report> for Error {
    fn from(report: Report) -> Self {
        Error::Compile(report)
    }
}

/// How to turn a script into a [`Trace`].
#[derive(Clone, Debug, PartialEq)]
pub struct TraceOptions {
    /// Number of steps to evaluate (`0..steps`); `None` means the script's horizon.
    pub steps: Option<u64>,
    /// Keep every `every`-th step (and always the last one). `0` is treated as `1`.
    pub every: u64,
    /// Steps per epoch, overriding the script's `epoch = N steps`.
    pub steps_per_epoch: Option<f64>,
    /// Samples per step, overriding the script's batch size.
    pub batch_size: Option<f64>,
    /// Folders a relative `plugin "…"` path is looked up in after the script's own
    /// folder (`--plugin-path`).
    pub plugin_path: Vec<PathBuf>,
}

impl Default for TraceOptions {
    /// Every step up to the horizon, with the script's own epoch and batch settings.
    fn default() -> Self {
        Self {
            steps: None,
            every: 1,
            steps_per_epoch: None,
            batch_size: None,
            plugin_path: Vec::new(),
        }
    }
}

impl TraceOptions {
    /// Trace `steps` steps (instead of the horizon).
    pub fn with_steps(mut self, steps: u64) -> Self {
        self.steps = Some(steps);
        self
    }

    /// Keep every `every`-th step.
    pub fn with_every(mut self, every: u64) -> Self {
        self.every = every;
        self
    }

    /// Set the number of steps per epoch.
    pub fn with_steps_per_epoch(mut self, steps_per_epoch: f64) -> Self {
        self.steps_per_epoch = Some(steps_per_epoch);
        self
    }

    /// Set the number of samples per step.
    pub fn with_batch_size(mut self, batch_size: f64) -> Self {
        self.batch_size = Some(batch_size);
        self
    }

    /// Look up relative `plugin "…"` paths in `dir` too (after the script's folder
    /// and the folders added before).
    pub fn with_plugin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.plugin_path.push(dir.into());
        self
    }

    /// The compiler settings these options imply.
    pub fn compile_options(&self) -> CompileOptions {
        CompileOptions {
            steps_per_epoch: self.steps_per_epoch,
            batch_size: self.batch_size,
            script_dir: None,
            plugin_path: self.plugin_path.clone(),
        }
    }
}

/// Read a script from disk. The returned source is named by `path` as given, so
/// diagnostics point at the same path the user wrote.
pub fn read_source(path: impl AsRef<Path>) -> Result<SourceFile, Error> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let name = path.display().to_string();
    match String::from_utf8(bytes) {
        Ok(text) => Ok(SourceFile::new(name, text)),
        Err(error) => {
            // Point at the first bad byte; the bytes before it are valid, so the
            // lossy text has the same offsets up to there.
            let offset = error.utf8_error().valid_up_to();
            let bad = error.as_bytes().get(offset).copied().unwrap_or(0);
            let text = String::from_utf8_lossy(error.as_bytes()).into_owned();
            let diagnostic = regimen_dsl::Diagnostic::error(
                regimen_dsl::Span::new(offset, offset + 1),
                format!("the file is not UTF-8 text (byte {bad:#04x})"),
            )
            .with_label("not UTF-8")
            .with_help("save the script as UTF-8");
            Err(Error::Compile(Report {
                file: SourceFile::new(name, text),
                diagnostics: vec![diagnostic],
            }))
        }
    }
}

/// Compile a script with the epoch and batch settings of `options`. Warnings are in
/// [`Compiled::warnings`].
pub fn compile(file: &SourceFile, options: &TraceOptions) -> Result<Compiled, Error> {
    Ok(regimen_dsl::compile(file, &options.compile_options())?)
}

/// The number of steps `options` asks for: `options.steps`, else the horizon.
pub fn steps_to_trace(
    compiled: &Compiled,
    name: &str,
    options: &TraceOptions,
) -> Result<u64, Error> {
    options
        .steps
        .or_else(|| compiled.horizon_steps())
        .ok_or_else(|| Error::MissingSteps {
            name: name.to_string(),
        })
}

/// Evaluate an already compiled script. `name` is only used in error messages.
pub fn trace_compiled(
    compiled: &Compiled,
    name: &str,
    options: &TraceOptions,
) -> Result<Trace, Error> {
    let steps = steps_to_trace(compiled, name, options)?;
    Trace::from_graph(&compiled.graph, steps, options.every.max(1)).map_err(|source| Error::Graph {
        name: name.to_string(),
        source,
    })
}

/// Compile the script `text` (named `name` in diagnostics) and evaluate every scalar
/// it defines, step by step.
pub fn trace_source(name: &str, text: &str, options: &TraceOptions) -> Result<Trace, Error> {
    let file = SourceFile::new(name, text);
    let compiled = compile(&file, options)?;
    trace_compiled(&compiled, name, options)
}

/// Read, compile and evaluate the script at `path`.
pub fn trace_file(path: impl AsRef<Path>, options: &TraceOptions) -> Result<Trace, Error> {
    let file = read_source(path)?;
    let compiled = compile(&file, options)?;
    trace_compiled(&compiled, &file.name, options)
}

/// How [`trace_problem`] runs a script's strategy on a built-in problem.
#[derive(Clone, Debug, PartialEq)]
pub struct ProblemOptions {
    /// Which problem.
    pub problem: ProblemKind,
    /// The seed of its data, initial parameters, noise and minibatch order.
    pub seed: u64,
    /// Steps at which one gradient element is replaced by +inf (an injected overflow),
    /// on top of the real overflows an f16 loss scale causes.
    pub overflow_at: Vec<u64>,
    /// The tensor backend to run on.
    pub backend: BackendChoice,
    /// Simulated data-parallel workers (at least 1): each runs in its own thread with
    /// its own shard of the data (logistic) or its own gradient noise (quadratic), see
    /// [`Problem::with_worker`]; they exchange gradients through a [`ThreadCluster`]
    /// and the trace is worker 0's (its own minibatch loss, its bytes on the wire).
    pub workers: usize,
    /// Compressors the host program registers (see [`with_script_plugins`]).
    pub compressors: CompressorRegistry,
}

impl ProblemOptions {
    /// `problem` with seed 0, no injected overflow, on the CPU backend, one worker.
    pub fn new(problem: ProblemKind) -> Self {
        Self {
            problem,
            seed: 0,
            overflow_at: Vec::new(),
            backend: BackendChoice::NdArray,
            workers: 1,
            compressors: CompressorRegistry::new(),
        }
    }

    /// Run `workers` simulated data-parallel workers (0 counts as 1).
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// Use another seed (of the problem, and of the compressors' random draws).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Inject an overflow at each of these steps.
    pub fn with_overflow_at(mut self, steps: impl IntoIterator<Item = u64>) -> Self {
        self.overflow_at = steps.into_iter().collect();
        self
    }

    /// Build compressors with `registry` first (see [`with_script_plugins`]).
    pub fn with_compressors(mut self, registry: CompressorRegistry) -> Self {
        self.compressors = registry;
        self
    }

    /// Run on another backend.
    pub fn with_backend(mut self, backend: BackendChoice) -> Self {
        self.backend = backend;
        self
    }
}

/// Run the full strategy of an already compiled script (optimizer, groups, layer
/// decay, precision, clipping, gradient compression) on a built-in problem for the
/// steps `options` asks for (`options.steps`, else the horizon), and trace every
/// step's [`StepReport`] (see [`Trace::from_step_reports`] for the columns). `name`
/// is only used in error messages. Deterministic: the same script, options and seed
/// give the same bits.
///
/// With [`ProblemOptions::workers`] above 1, that many workers run in threads, each
/// with its own [`Stepper`] and its own gradients, exchanging them through a
/// [`ThreadCluster`]; the trace is worker 0's. A failure on any worker is returned
/// (the one that caused it rather than its peers' "disconnected" errors).
///
/// ```
/// use regimen::{trace_problem_source, ProblemKind, ProblemOptions, TraceOptions};
///
/// let script = "lr = 0.1\ncompress topk(ratio: 0.25) with error_feedback\n";
/// let options = TraceOptions::default().with_steps(3);
/// let problem = ProblemOptions::new(ProblemKind::Quadratic).with_workers(2);
/// let trace = trace_problem_source("dp.regimen", script, &options, &problem)?;
/// let sent = trace.column("wire_bytes_sent").unwrap_or_default();
/// assert!(sent.iter().all(|&bytes| bytes > 0.0)); // every step exchanged gradients
/// # Ok::<(), regimen::Error>(())
/// ```
pub fn trace_problem_compiled(
    compiled: &Compiled,
    name: &str,
    options: &TraceOptions,
    problem: &ProblemOptions,
) -> Result<Trace, Error> {
    let steps = steps_to_trace(compiled, name, options)?;
    match problem.backend {
        BackendChoice::NdArray => run_problem(
            &|| Ok(NdArrayBackend::new()),
            compiled,
            steps,
            options.every,
            problem,
        ),
        #[cfg(feature = "arrayfire")]
        BackendChoice::ArrayFire => run_problem(
            &|| Ok(regimen_core::backend::ArrayFireBackend::new()?),
            compiled,
            steps,
            options.every,
            problem,
        ),
        #[cfg(not(feature = "arrayfire"))]
        BackendChoice::ArrayFire => {
            problem.backend.ensure_built()?;
            Err(Error::Backend(BackendError::Unavailable {
                backend: "arrayfire",
                reason: "this build has no ArrayFire backend".to_string(),
            }))
        }
    }
}

/// `options` with the compressors of the script's `plugin` libraries registered
/// under those `options` already has: a method the host program registered itself
/// (e.g. the same algorithm compiled in, to compare with the plugin) takes
/// precedence over a plugin's of the same name. A plugin name that clashes with a
/// built-in was refused when the script was compiled.
pub fn with_script_plugins(compiled: &Compiled, options: StepperOptions) -> StepperOptions {
    let registry = compiled
        .plugins
        .registry()
        .with_methods_of(&options.compressors);
    let samples_per_epoch = options.samples_per_epoch.or_else(|| {
        let samples = compiled.steps_per_epoch? * compiled.batch_size?;
        (samples.is_finite() && samples >= 1.0).then(|| samples.round() as u64)
    });
    options
        .with_compressors(registry)
        .with_plugins(compiled.plugins.clone())
        .with_samples_per_epoch(samples_per_epoch)
}

/// One worker's run (worker 0's reports are kept, every `every`-th step and the last;
/// the other workers keep none).
struct WorkerRun<'a> {
    compiled: &'a Compiled,
    steps: u64,
    every: u64,
    options: &'a ProblemOptions,
}

impl WorkerRun<'_> {
    fn run<B: Backend>(
        &self,
        backend: B,
        communicator: Box<dyn Communicator>,
    ) -> Result<Vec<StepReport>, Error> {
        let (rank, world) = (communicator.rank(), communicator.world());
        let problem =
            Problem::new(self.options.problem, self.options.seed).with_worker(rank, world)?;
        let mut model = ProblemModel::new(problem, self.compiled.strategy.precision.dtype)
            .with_overflow_at(&self.options.overflow_at);
        let stepper_options = with_script_plugins(
            self.compiled,
            StepperOptions::new()
                .with_communicator(communicator)
                .with_seed(self.options.seed)
                .with_compressors(self.options.compressors.clone()),
        );
        let mut stepper = Stepper::new_with(
            backend,
            self.compiled.graph.clone(),
            self.compiled.strategy.clone(),
            &model.param_specs(),
            &model.params(),
            stepper_options,
        )?;
        let every = self.every.max(1);
        let mut kept = Vec::new();
        // With batch control the run lasts until the schedules' clock reaches the
        // length (in reference steps), however many steps that takes.
        let done = |stepper: &Stepper<B>| match stepper.batch_control() {
            Some(control) => control.progress() >= self.steps as f64,
            None => stepper.step_index() >= self.steps,
        };
        while !done(&stepper) {
            let step = stepper.step_index();
            let report = model.step(&mut stepper)?;
            if rank == 0 && (step % every == 0 || done(&stepper)) {
                kept.push(report);
            }
        }
        Ok(kept)
    }
}

fn run_problem<B: Backend>(
    make_backend: &(dyn Fn() -> Result<B, Error> + Sync),
    compiled: &Compiled,
    steps: u64,
    every: u64,
    options: &ProblemOptions,
) -> Result<Trace, Error> {
    let run = WorkerRun {
        compiled,
        steps,
        every,
        options,
    };
    let workers = options.workers.max(1);
    if workers == 1 {
        let reports = run.run(make_backend()?, Box::new(SingleProcess))?;
        return Ok(Trace::from_step_reports(&reports));
    }
    let run = &run;
    let results: Vec<Result<Vec<StepReport>, Error>> = std::thread::scope(|scope| {
        let handles: Vec<_> = ThreadCluster::new(workers)
            .into_iter()
            .map(|communicator| {
                scope.spawn(move || run.run(make_backend()?, Box::new(communicator)))
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(rank, handle)| handle.join().unwrap_or(Err(Error::WorkerPanicked { rank })))
            .collect()
    });
    let mut first_error = None;
    let mut reports = None;
    for result in results {
        match result {
            Ok(kept) => {
                reports.get_or_insert(kept);
            }
            // A peer's disconnection is the echo of another worker's failure: report
            // the cause when there is one.
            Err(error) => {
                let echo = matches!(
                    error,
                    Error::Runtime(RuntimeError::Communication {
                        error: regimen_core::comm::CommError::PeerGone { .. },
                        ..
                    })
                );
                match &first_error {
                    None => first_error = Some((echo, error)),
                    Some((true, _)) if !echo => first_error = Some((echo, error)),
                    Some(_) => {}
                }
            }
        }
    }
    match (first_error, reports) {
        (Some((_, error)), _) => Err(error),
        (None, Some(reports)) => Ok(Trace::from_step_reports(&reports)),
        (None, None) => Ok(Trace::default()),
    }
}

/// Compile the script `text` (named `name` in diagnostics) and trace its strategy on
/// a built-in problem (see [`trace_problem_compiled`]).
pub fn trace_problem_source(
    name: &str,
    text: &str,
    options: &TraceOptions,
    problem: &ProblemOptions,
) -> Result<Trace, Error> {
    let file = SourceFile::new(name, text);
    let compiled = compile(&file, options)?;
    trace_problem_compiled(&compiled, name, options, problem)
}

/// Read and compile the script at `path` and trace its strategy on a built-in problem
/// (what `regimen trace SCRIPT --problem NAME` prints).
///
/// ```
/// use regimen::{trace_problem, ProblemKind, ProblemOptions, TraceOptions};
///
/// let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/mlp_adamw.regimen");
/// let options = TraceOptions::default().with_steps(50);
/// let trace = trace_problem(path, &options, &ProblemOptions::new(ProblemKind::Logistic))?;
/// let loss = trace.column("loss").unwrap_or_default();
/// assert!(loss[49] < loss[0]);
/// # Ok::<(), regimen::Error>(())
/// ```
pub fn trace_problem(
    path: impl AsRef<Path>,
    options: &TraceOptions,
    problem: &ProblemOptions,
) -> Result<Trace, Error> {
    let file = read_source(path)?;
    let compiled = compile(&file, options)?;
    trace_problem_compiled(&compiled, &file.name, options, problem)
}

/// A checked, compiled script: the entry point of a training loop.
///
/// Load it once, [bind](Script::bind) it to the model's parameter list (names,
/// shapes, dtypes, optional layer depths) with their initial values, and hand the
/// resulting [`Stepper`] the gradients of every step. The stepper keeps f32 master
/// weights and all optimizer state, applies the script's learning rate and other
/// schedules, groups, layer decay, loss scaling and clipping, and writes the updated
/// parameters back into the model's buffers (in the model's dtype).
///
/// ```no_run
/// use regimen::{HostTensor, HostTensorMut, Metrics, ParamSpec, Script};
///
/// # fn forward_backward(_: &[Vec<f32>], _: &mut [Vec<f32>]) -> f64 { 0.0 }
/// let script = Script::from_file("train.regimen")?;
/// if let Some(warnings) = script.warnings() {
///     eprint!("{warnings}");
/// }
/// let specs = vec![
///     ParamSpec::new("layers.0.weight", &[64, 2]).with_depth(0),
///     ParamSpec::new("layers.0.bias", &[64]).with_depth(0),
/// ];
/// let mut params: Vec<Vec<f32>> = specs.iter().map(|s| vec![0.01; s.numel()]).collect();
/// let mut grads: Vec<Vec<f32>> = specs.iter().map(|s| vec![0.0; s.numel()]).collect();
///
/// let initial: Vec<HostTensor> = params.iter().map(|p| HostTensor::F32(p)).collect();
/// let mut stepper = script.bind(&specs, &initial)?;
/// eprint!("{}", stepper.binding().describe()); // which rule applies to which tensor
/// for _ in 0..1000 {
///     let loss = forward_backward(&params, &mut grads);
///     let grad_views: Vec<HostTensor> = grads.iter().map(|g| HostTensor::F32(g)).collect();
///     let mut param_views: Vec<HostTensorMut> =
///         params.iter_mut().map(|p| HostTensorMut::F32(p)).collect();
///     let report = stepper.step(&mut param_views, &grad_views, &Metrics::from_loss(loss))?;
///     if report.skipped {
///         eprintln!("step {} skipped: non-finite gradients", report.step);
///     }
/// }
/// stepper.save("run.ckpt".as_ref())?;
/// // Later, in a fresh process: the same script and parameter list.
/// let resumed = script.resume("run.ckpt", &specs)?;
/// # Ok::<(), regimen::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Script {
    file: SourceFile,
    compiled: Compiled,
}

impl Script {
    /// Read and compile the script at `path` with its own epoch and batch settings.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::from_file_with(path, &CompileOptions::default())
    }

    /// Read and compile the script at `path`; `options` override its steps per epoch
    /// and batch size (e.g. with the length of the training loop's data loader).
    pub fn from_file_with(path: impl AsRef<Path>, options: &CompileOptions) -> Result<Self, Error> {
        let file = read_source(path)?;
        Self::compile(file, options)
    }

    /// Compile the script `text`, named `name` in diagnostics.
    pub fn from_source(name: &str, text: &str, options: &CompileOptions) -> Result<Self, Error> {
        Self::compile(SourceFile::new(name, text), options)
    }

    fn compile(file: SourceFile, options: &CompileOptions) -> Result<Self, Error> {
        let compiled = regimen_dsl::compile(&file, options)?;
        Ok(Self { file, compiled })
    }

    /// The script's name (its path as given).
    pub fn name(&self) -> &str {
        &self.file.name
    }

    /// The script's text.
    pub fn source(&self) -> &SourceFile {
        &self.file
    }

    /// The compiled script: scalar graph, strategy, settings, warnings.
    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    /// The tensor side: optimizer, groups, layer decay, precision.
    pub fn strategy(&self) -> &Strategy {
        &self.compiled.strategy
    }

    /// The compiler's warnings as a report ready to print (`file:line:col`, source
    /// line, caret), or `None` when there are none.
    pub fn warnings(&self) -> Option<Report> {
        (!self.compiled.warnings.is_empty()).then(|| Report {
            file: self.file.clone(),
            diagnostics: self.compiled.warnings.clone(),
        })
    }

    /// Bind the script to a model's parameters on the CPU backend. `initial` holds one
    /// tensor per parameter (in its dtype): the starting master weights. Every shape
    /// and dtype is checked before anything is allocated; warnings about globs that
    /// match nothing are in [`Binding::warnings`] (`stepper.binding()`).
    pub fn bind(
        &self,
        params: &[ParamSpec],
        initial: &[HostTensor<'_>],
    ) -> Result<Stepper<NdArrayBackend>, Error> {
        self.bind_with(NdArrayBackend::new(), params, initial)
    }

    /// [`Script::bind`] on another backend.
    pub fn bind_with<B: Backend>(
        &self,
        backend: B,
        params: &[ParamSpec],
        initial: &[HostTensor<'_>],
    ) -> Result<Stepper<B>, Error> {
        self.bind_with_options(backend, params, initial, StepperOptions::new())
    }

    /// [`Script::bind`] as one worker of a data-parallel run: `options` gives the
    /// stepper its [`Communicator`] (a [`ThreadCluster`] member, or MPI later), the
    /// seed of the compressors' random draws and the compressors to look methods up
    /// in. Every worker binds the same script to the same parameters with the same
    /// initial values; the stepper exchanges gradients (compressed as the script's
    /// `compress` rules say) so all workers apply the same averaged update.
    ///
    /// ```
    /// use regimen::{
    ///     Communicator, HostTensor, HostTensorMut, Metrics, ParamSpec, Script, StepperOptions,
    ///     ThreadCluster,
    /// };
    ///
    /// let script = Script::from_source("dp.regimen", "lr = 0.5\n", &Default::default())?;
    /// let params = [ParamSpec::new("w", &[2])];
    /// let results = std::thread::scope(|scope| {
    ///     let workers: Vec<_> = ThreadCluster::new(2)
    ///         .into_iter()
    ///         .map(|communicator| {
    ///             let script = &script;
    ///             let params = &params;
    ///             scope.spawn(move || -> Result<Vec<f32>, regimen::Error> {
    ///                 let rank = communicator.rank() as f32;
    ///                 let mut w = vec![0.0f32, 0.0];
    ///                 let options = StepperOptions::new().with_communicator(Box::new(communicator));
    ///                 let mut stepper = script.bind_with_options(
    ///                     regimen::NdArrayBackend::new(), params, &[HostTensor::F32(&w)], options)?;
    ///                 // Worker 0's gradient is (1, 1), worker 1's (3, 3): the average is (2, 2).
    ///                 let grad = vec![1.0 + 2.0 * rank; 2];
    ///                 stepper.step(&mut [HostTensorMut::F32(&mut w)], &[HostTensor::F32(&grad)], &Metrics::default())?;
    ///                 Ok(w)
    ///             })
    ///         })
    ///         .collect();
    ///     workers.into_iter().map(|w| w.join().expect("worker")).collect::<Vec<_>>()
    /// });
    /// for w in results {
    ///     assert_eq!(w?, vec![-1.0, -1.0]); // 0 − 0.5 · 2 on every worker
    /// }
    /// # Ok::<(), regimen::Error>(())
    /// ```
    pub fn bind_with_options<B: Backend>(
        &self,
        backend: B,
        params: &[ParamSpec],
        initial: &[HostTensor<'_>],
        options: StepperOptions,
    ) -> Result<Stepper<B>, Error> {
        Ok(Stepper::new_with(
            backend,
            self.compiled.graph.clone(),
            self.compiled.strategy.clone(),
            params,
            initial,
            with_script_plugins(&self.compiled, options),
        )?)
    }

    /// Resume a run from a checkpoint written by [`Stepper::save`], on the CPU
    /// backend. The checkpoint must come from this script and this parameter list;
    /// anything else is refused with a clear error. The master weights are restored:
    /// copy them into the model with [`Stepper::read_master`].
    pub fn resume(
        &self,
        checkpoint: impl AsRef<Path>,
        params: &[ParamSpec],
    ) -> Result<Stepper<NdArrayBackend>, Error> {
        self.resume_with(NdArrayBackend::new(), checkpoint, params)
    }

    /// [`Script::resume`] on another backend.
    pub fn resume_with<B: Backend>(
        &self,
        backend: B,
        checkpoint: impl AsRef<Path>,
        params: &[ParamSpec],
    ) -> Result<Stepper<B>, Error> {
        self.resume_with_options(backend, checkpoint, params, StepperOptions::new())
    }

    /// [`Script::resume_with`] as one worker of a data-parallel run (see
    /// [`Script::bind_with_options`]): each worker resumes from the checkpoint it
    /// saved, with the same rank, number of workers and seed.
    pub fn resume_with_options<B: Backend>(
        &self,
        backend: B,
        checkpoint: impl AsRef<Path>,
        params: &[ParamSpec],
        options: StepperOptions,
    ) -> Result<Stepper<B>, Error> {
        Ok(Stepper::load_with(
            checkpoint.as_ref(),
            backend,
            self.compiled.graph.clone(),
            self.compiled.strategy.clone(),
            params,
            with_script_plugins(&self.compiled, options),
        )?)
    }

    /// The trace of the script's schedules for the steps `options` asks for (its
    /// epoch and batch settings are ignored: they were fixed at compile time).
    pub fn trace(&self, options: &TraceOptions) -> Result<Trace, Error> {
        trace_compiled(&self.compiled, self.name(), options)
    }

    /// The runtime trace of the script's strategy on a built-in problem (see
    /// [`trace_problem_compiled`]; the epoch and batch settings of `options` are
    /// ignored).
    pub fn trace_problem(
        &self,
        options: &TraceOptions,
        problem: &ProblemOptions,
    ) -> Result<Trace, Error> {
        trace_problem_compiled(&self.compiled, self.name(), options, problem)
    }
}

/// What [`assert_trace_snapshot!`] records. Built by the macro; public only so that
/// the macro can reach it from other crates.
#[doc(hidden)]
#[derive(Clone, Debug)]
pub struct SnapshotRequest {
    /// The script's path, as written in the macro call.
    pub path: String,
    /// Snapshot name; defaults to the script's file stem.
    pub name: Option<String>,
    /// Trace settings.
    pub options: TraceOptions,
    /// A built-in problem to run the script on (a runtime trace), by name.
    pub problem: Option<String>,
    /// The problem's seed.
    pub seed: u64,
    /// Steps with an injected overflow.
    pub overflow_at: Vec<u64>,
    /// Simulated data-parallel workers.
    pub workers: usize,
}

#[doc(hidden)]
impl SnapshotRequest {
    /// A request for `path` with default options.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            name: None,
            options: TraceOptions::default(),
            problem: None,
            seed: 0,
            overflow_at: Vec::new(),
            workers: 1,
        }
    }

    /// The snapshot's name, its contents (the rounded trace as CSV), and a one-line
    /// description of how it was made. `manifest_dir` is the calling crate's
    /// `CARGO_MANIFEST_DIR`, against which a relative path is resolved.
    pub fn render(&self, manifest_dir: &str) -> Result<(String, String, String), Error> {
        let relative = Path::new(&self.path);
        let full = if relative.is_absolute() {
            relative.to_path_buf()
        } else {
            Path::new(manifest_dir).join(relative)
        };
        let text = std::fs::read_to_string(&full).map_err(|source| Error::Io {
            path: full.clone(),
            source,
        })?;
        let trace = match &self.problem {
            None => trace_source(&self.path, &text, &self.options)?,
            Some(problem) => {
                let problem = ProblemOptions::new(ProblemKind::from_name(problem)?)
                    .with_seed(self.seed)
                    .with_overflow_at(self.overflow_at.iter().copied())
                    .with_workers(self.workers);
                trace_problem_source(&self.path, &text, &self.options, &problem)?
            }
        };
        let csv = trace.rounded(SNAPSHOT_SIGNIFICANT_DIGITS).to_csv();
        let name = match &self.name {
            Some(name) => name.clone(),
            None => relative
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .unwrap_or_else(|| "trace".to_string()),
        };
        let mut description = format!("regimen trace {} --format csv", self.path);
        if let Some(steps) = self.options.steps {
            description.push_str(&format!(" --steps {steps}"));
        }
        if self.options.every > 1 {
            description.push_str(&format!(" --every {}", self.options.every));
        }
        if let Some(e) = self.options.steps_per_epoch {
            description.push_str(&format!(" --steps-per-epoch {e}"));
        }
        if let Some(b) = self.options.batch_size {
            description.push_str(&format!(" --batch-size {b}"));
        }
        if let Some(problem) = &self.problem {
            description.push_str(&format!(" --problem {problem} --seed {}", self.seed));
            if !self.overflow_at.is_empty() {
                let steps: Vec<String> = self.overflow_at.iter().map(u64::to_string).collect();
                description.push_str(&format!(" --overflow-at {}", steps.join(",")));
            }
            if self.workers > 1 {
                description.push_str(&format!(" --workers {}", self.workers));
            }
        }
        description.push_str(&format!(
            " (values rounded to {SNAPSHOT_SIGNIFICANT_DIGITS} significant digits)"
        ));
        Ok((name, csv, description))
    }
}

/// Snapshot-test the trace of a script with [`insta`](https://insta.rs).
///
/// ```no_run
/// #[test]
/// fn warmup_cosine() {
///     regimen::assert_trace_snapshot!("schedules/warmup_cosine.regimen", steps = 100);
/// }
///
/// #[test]
/// fn mixed_precision_on_the_quadratic() {
///     // What the runtime does with the script: loss scale, skipped steps, norms, loss.
///     regimen::assert_trace_snapshot!("train.regimen", problem = "quadratic", steps = 200, every = 10);
/// }
/// ```
///
/// The path is resolved against the calling crate's `CARGO_MANIFEST_DIR`. The script
/// is compiled and evaluated, every value is rounded to
/// [`SNAPSHOT_SIGNIFICANT_DIGITS`] significant digits (so last-ulp differences between
/// platforms never show), and the trace is compared, as CSV with one line per step,
/// against `snapshots/<test file>__<name>.snap` next to the calling test — review new
/// or changed snapshots with `cargo insta review`.
///
/// Options, all optional, as `key = value` after the path:
/// - `steps = N` — steps to trace (default: the script's horizon);
/// - `every = K` — keep every K-th step (and the last);
/// - `steps_per_epoch = E`, `batch_size = B` — override the script's settings;
/// - `name = "…"` — the snapshot name (default: the script's file stem);
/// - `problem = "quadratic"` (or `"logistic"`) — run the script's full strategy on
///   that built-in problem and snapshot the runtime trace (lr per bin, loss scale,
///   skipped steps, gradient and update norms, trust ratios, loss) instead of the
///   schedules; `seed = S` (default 0) seeds it, `overflow_at = [s, …]` injects
///   gradient overflows at those steps, `workers = W` runs W simulated data-parallel
///   workers (worker 0's trace, with the compression and wire-byte columns).
///
/// Panics (failing the test) when the script cannot be read, does not compile, or
/// the trace differs from the accepted snapshot.
#[cfg(feature = "snapshot")]
#[macro_export]
macro_rules! assert_trace_snapshot {
    (@option $request:ident, steps, $value:expr) => {
        $request.options.steps = ::std::option::Option::Some(($value) as u64);
    };
    (@option $request:ident, every, $value:expr) => {
        $request.options.every = ($value) as u64;
    };
    (@option $request:ident, steps_per_epoch, $value:expr) => {
        $request.options.steps_per_epoch = ::std::option::Option::Some(($value) as f64);
    };
    (@option $request:ident, batch_size, $value:expr) => {
        $request.options.batch_size = ::std::option::Option::Some(($value) as f64);
    };
    (@option $request:ident, name, $value:expr) => {
        $request.name = ::std::option::Option::Some(::std::string::ToString::to_string(&$value));
    };
    (@option $request:ident, problem, $value:expr) => {
        $request.problem = ::std::option::Option::Some(::std::string::ToString::to_string(&$value));
    };
    (@option $request:ident, seed, $value:expr) => {
        $request.seed = ($value) as u64;
    };
    (@option $request:ident, workers, $value:expr) => {
        $request.workers = ($value) as usize;
    };
    (@option $request:ident, overflow_at, $value:expr) => {
        $request.overflow_at = ::std::iter::IntoIterator::into_iter($value)
            .map(|step| step as u64)
            .collect();
    };
    ($path:expr $(, $key:ident = $value:expr)* $(,)?) => {{
        #[allow(unused_mut)]
        let mut __request = $crate::SnapshotRequest::new($path);
        $( $crate::assert_trace_snapshot!(@option __request, $key, $value); )*
        let (__name, __csv, __description) =
            match __request.render(::std::env!("CARGO_MANIFEST_DIR")) {
                ::std::result::Result::Ok(rendered) => rendered,
                ::std::result::Result::Err(error) => ::std::panic!(
                    "assert_trace_snapshot!: cannot trace `{}`:\n{}",
                    __request.path,
                    error.to_string_with_causes()
                ),
            };
        let mut __settings = $crate::__insta::Settings::clone_current();
        __settings.set_description(__description);
        __settings.set_omit_expression(true);
        __settings.bind(|| {
            $crate::__insta::assert_snapshot!(__name, __csv);
        });
    }};
}
