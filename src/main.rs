//! `regimen`: check, trace, plot and format `*.regimen` scripts, and run them on
//! built-in synthetic problems to see what the training-step runtime does.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod bench_compress;
mod plugin_cli;
// `run` and `compare` (issue 7).
mod run_cli;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use regimen::{
    output, plot, BackendChoice, Compiled, ProblemKind, ProblemOptions, Report, SourceFile, Trace,
    TraceOptions,
};

const EXAMPLES: &str = "\
Examples:
  regimen check examples/*.regimen
  regimen trace examples/warmup_cosine.regimen
  regimen trace examples/step_decay.regimen --steps 100 --every 10 --format csv
  regimen trace examples/mixed_precision_f16.regimen --problem quadratic --steps 300 --every 10
  regimen bind examples/lamb_bert.regimen --problem logistic
  regimen plot examples/onecycle.regimen -o onecycle.svg
  regimen fmt --check examples/*.regimen
  regimen bench-compress --elements 1M
  regimen run examples/digits.regimen
  regimen compare examples/digits.regimen examples/digits_topk_ef.regimen --seeds 3
  regimen plugin inspect target/release/libregimen_natural.so

Exit status: 0 on success, 1 when a script has errors or a command fails,
2 on a command-line usage error.";

/// Check, trace, plot and format Regimen scripts.
///
/// A `*.regimen` script describes how training is steered step by step: how
/// hyperparameters (learning rate, momentum, weight decay, …) evolve, the optimizer,
/// parameter groups, layer-wise rates, precision and loss scaling. `regimen`
/// validates scripts with precise diagnostics, evaluates every scalar they define,
/// runs them on built-in synthetic problems (`--problem`), draws them, and keeps them
/// in canonical form.
#[derive(Debug, Parser)]
#[command(name = "regimen", version, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate scripts and print their errors and warnings.
    ///
    /// Diagnostics go to stderr with `file:line:col`, the source line and a caret;
    /// each file without errors is reported as `FILE: ok` on stdout. Exits with 1 if
    /// any file has errors (warnings alone do not fail).
    #[command(after_help = "Examples:\n  regimen check examples/*.regimen\n  \
                            regimen check train.regimen --steps-per-epoch 390")]
    Check(CheckArgs),
    /// Evaluate every scalar of a script, step by step, or run its whole strategy on a
    /// built-in problem.
    ///
    /// Prints one record per step (steps counted from 0): the step and the value of
    /// every hyperparameter the script assigns, in declaration order.
    ///
    /// With `--problem`, the script's optimizer, groups, layer decay, precision and
    /// clipping train a built-in synthetic model, and each record is what the runtime
    /// did in that step: the hyperparameters, the effective lr of each layer-decayed
    /// bin, `loss_scale`, `skipped` (1 when non-finite gradients skipped the step),
    /// `grad_norm` and `clipped_grad_norm` (unscaled), `update_norm`, `trust_min`/
    /// `trust_mean`/`trust_max` (LARS, LAMB) and the model's `loss`. When gradients are
    /// compressed (or exchanged between `--workers`), each `compress` rule adds
    /// `RULE.bytes_dense`, `RULE.bytes_payload`, `RULE.bytes_wire`, `RULE.bytes_ratio`
    /// (dense / payload) and `RULE.rel_error` (‖x − r‖/‖x‖), with RULE `compress` or
    /// `groupN.compress`, and the step's `wire_bytes_sent`/`wire_bytes_received`.
    #[command(
        after_help = "Examples:\n  regimen trace examples/warmup_cosine.regimen\n  \
                            regimen trace examples/step_decay.regimen --steps 100 --every 10\n  \
                            regimen trace examples/multistep.regimen --format json > lr.json\n  \
                            regimen trace examples/mlp_adamw.regimen --problem logistic --every 10\n  \
                            regimen trace examples/mixed_precision_f16.regimen --problem quadratic --steps 300 --overflow-at 150\n  \
                            regimen trace train.regimen --problem logistic --workers 4 --every 10"
    )]
    Trace(TraceArgs),
    /// Draw every scalar of a script over the steps, as SVG or PNG.
    ///
    /// One panel per scalar, stacked vertically, each with its own y axis, so that
    /// scalars of very different magnitudes stay readable. The format follows the
    /// output file's extension. With `--problem`, draws the runtime trace (see
    /// `regimen trace --help`).
    #[command(
        after_help = "Examples:\n  regimen plot examples/onecycle.regimen -o onecycle.svg\n  \
                            regimen plot examples/step_decay.regimen --steps 100 -o step.png\n  \
                            regimen plot examples/mixed_precision_f16.regimen --problem quadratic --steps 500 -o f16.svg"
    )]
    Plot(PlotArgs),
    /// Bind a script to a built-in problem's parameters and show which rule applies to
    /// each tensor.
    ///
    /// One row per parameter: the groups that match it, where its learning rate comes
    /// from, its layer-wise lr factor and depth, and whether trust ratios apply;
    /// then the binding's warnings (a glob that matches no parameter, …).
    #[command(
        after_help = "Examples:\n  regimen bind examples/lamb_bert.regimen --problem logistic\n  \
                            regimen bind examples/lars_large_batch.regimen --problem quadratic"
    )]
    Bind(BindArgs),
    /// Rewrite scripts in canonical form (comments are kept).
    ///
    /// With `--check`, nothing is written: the files that are not in canonical form
    /// are named and the exit status is 1.
    #[command(after_help = "Examples:\n  regimen fmt train.regimen\n  \
                            regimen fmt --check examples/*.regimen")]
    Fmt(FmtArgs),
    /// Time every gradient-compression method against a memory copy of the same
    /// data, measured in the same run.
    ///
    /// For each method: compress and decompress time, throughput in GB/s of f32
    /// input, the ratio to the memcpy throughput, the payload size and compression
    /// ratio, and the relative error ‖g − ĝ‖/‖g‖ on a seeded fixture gradient.
    #[command(after_help = "Examples:\n  regimen bench-compress\n  \
                            regimen bench-compress --elements 1M --methods \"topk(ratio: 0.01),qsgd(levels: 4),sign\"")]
    BenchCompress(bench_compress::BenchCompressArgs),
    // ---- issue 7: real training runs ----
    /// Train a real model on real data under a script.
    ///
    /// An MLP (`--model`) learns the bundled UCI handwritten digits (or a synthetic
    /// teacher task, `--data`) with the script's whole strategy: lr and other
    /// schedules, optimizer, groups, layer decay, precision and loss scaling,
    /// clipping, and gradient compression — with data-parallel semantics: every
    /// batch is split between `--workers` simulated workers whose gradients are
    /// exchanged as the script's `compress` rules say (with one worker the
    /// compressors still encode what would be sent, and the bytes are counted).
    /// Prints a progress bar and one table row per epoch, and writes to `--out`:
    /// `trace.csv` (one row per step), `epochs.csv`, `summary.json`, `report.svg`,
    /// `run.json` and `checkpoints/`. Ctrl-C stops after the current step with a
    /// checkpoint (exit status 130); `--resume` continues bit for bit.
    #[command(after_help = "Examples:\n  regimen run examples/digits.regimen\n  \
                            regimen run examples/digits_cosine.regimen --model mlp:64,256,256,10:gelu --epochs 10\n  \
                            regimen run examples/digits_topk_ef.regimen --workers 4 --out runs/topk\n  \
                            regimen run examples/digits.regimen --out runs/digits --resume")]
    Run(run_cli::RunArgs),
    /// Run several scripts on the same data, model and seeds, side by side.
    ///
    /// Prints one row per script: final test accuracy (mean ± standard deviation
    /// over the seeds), mean wall time, gradient bytes sent and how many times less
    /// that is than dense f32, and skipped steps; writes an overlay plot of test
    /// accuracy, train loss and bytes per epoch.
    #[command(
        after_help = "Examples:\n  regimen compare examples/digits.regimen examples/digits_topk_ef.regimen\n  \
                            regimen compare examples/digits_*.regimen --seeds 2 --epochs 5 --plot runs/all.svg"
    )]
    Compare(run_cli::CompareArgs),
    /// Work with plugin libraries (compressors and batch controllers built against
    /// the `regimen-plugin` SDK).
    #[command(subcommand)]
    Plugin(plugin_cli::PluginCommand),
}

/// Settings a script may leave to the command line.
#[derive(Debug, Args)]
struct ScriptOptions {
    /// Steps per epoch (overrides the script's `epoch = N steps`); needed when the
    /// script counts in epochs and does not say how long an epoch is.
    #[arg(long, value_name = "E", value_parser = positive_number)]
    steps_per_epoch: Option<f64>,
    /// Samples per step (overrides the script's batch size); needed when the script
    /// counts in samples.
    #[arg(long, value_name = "B", value_parser = positive_number)]
    batch_size: Option<f64>,
    /// A folder to look up relative `plugin "…"` paths in, after the script's own
    /// folder (repeatable; searched in order).
    #[arg(long, value_name = "DIR")]
    plugin_path: Vec<PathBuf>,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// Scripts to check.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    #[command(flatten)]
    options: ScriptOptions,
}

#[derive(Debug, Args)]
struct TraceArgs {
    /// The script to evaluate.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Number of steps to evaluate (steps 0 to N-1) [default: the script's horizon].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    steps: Option<u64>,
    /// Print every K-th step only (the last step is always printed).
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    every: u64,
    #[command(flatten)]
    options: ScriptOptions,
    #[command(flatten)]
    run: ProblemArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// Running a script on a built-in problem.
#[derive(Debug, Args)]
struct ProblemArgs {
    /// Run the script's whole strategy on a built-in synthetic problem and trace the
    /// runtime: `quadratic` (a noisy ill-conditioned quadratic over 5 network-shaped
    /// tensors) or `logistic` (a tiny tanh network on 2-class data, minibatches of 32).
    #[arg(long, value_name = "NAME", value_parser = problem_kind)]
    problem: Option<ProblemKind>,
    /// Seed of the problem's data, initial parameters, gradient noise and minibatch
    /// order.
    #[arg(long, value_name = "S", default_value_t = 0, requires = "problem")]
    seed: u64,
    /// Tensor backend: `ndarray` (CPU, always built) or `arrayfire` (needs a build with
    /// the `arrayfire` feature).
    #[arg(long, value_name = "NAME", default_value = "ndarray", value_parser = backend_choice, requires = "problem")]
    backend: BackendChoice,
    /// Inject a gradient overflow (+inf) at these steps, e.g. `--overflow-at 10,11,50`.
    #[arg(
        long,
        value_name = "STEPS",
        value_delimiter = ',',
        requires = "problem"
    )]
    overflow_at: Vec<u64>,
    /// Simulated data-parallel workers, one thread each, each with its own data shard
    /// (logistic) or gradient noise (quadratic), exchanging gradients as the script's
    /// `compress` rules say; the trace is worker 0's.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=MAX_WORKERS), requires = "problem")]
    workers: u64,
}

/// The most simulated workers `--workers` accepts (one thread each).
const MAX_WORKERS: u64 = 256;

impl ProblemArgs {
    fn options(&self) -> Option<ProblemOptions> {
        self.problem.map(|kind| {
            ProblemOptions::new(kind)
                .with_seed(self.seed)
                .with_overflow_at(self.overflow_at.iter().copied())
                .with_backend(self.backend)
                .with_workers(usize::try_from(self.workers).unwrap_or(1))
        })
    }
}

#[derive(Debug, Args)]
struct BindArgs {
    /// The script to bind.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The built-in problem whose parameters to bind: `quadratic` or `logistic`.
    #[arg(long, value_name = "NAME", value_parser = problem_kind)]
    problem: ProblemKind,
    #[command(flatten)]
    options: ScriptOptions,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Aligned columns, values to 6 significant digits.
    Table,
    /// A `step,lr,…` header and one line per step, full precision.
    Csv,
    /// An array of records `[{"step": 0, "lr": …}, …]`, full precision.
    Json,
    /// A sequence of records (`- step: 0` / `  lr: …`), full precision.
    Yaml,
}

#[derive(Debug, Args)]
struct PlotArgs {
    /// The script to draw.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The image to write: `.svg` or `.png`.
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
    /// Number of steps to draw [default: the script's horizon].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    steps: Option<u64>,
    /// Chart title [default: the script's file name].
    #[arg(long)]
    title: Option<String>,
    #[command(flatten)]
    options: ScriptOptions,
    #[command(flatten)]
    run: ProblemArgs,
}

#[derive(Debug, Args)]
struct FmtArgs {
    /// Scripts to format in place.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Write nothing; name the files that would change and exit with 1 if any would.
    #[arg(long)]
    check: bool,
}

/// The most points a plotted line gets: longer runs are sampled evenly.
const PLOT_MAX_POINTS: u64 = 4000;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => check(&args),
        Command::Trace(args) => trace(&args),
        Command::Plot(args) => plot_command(&args),
        Command::Bind(args) => bind(&args),
        Command::Fmt(args) => fmt(&args),
        Command::BenchCompress(args) => bench_compress::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Run(args) => run_cli::run(&args),
        Command::Compare(args) => run_cli::compare(&args),
        Command::Plugin(command) => plugin_cli::run(&command),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            match error.downcast_ref::<regimen::Error>() {
                Some(error) => print_error(error),
                None => eprintln!("error: {error:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// A rendered report already says `error:` on each diagnostic; other errors get it here.
fn print_error(error: &regimen::Error) {
    match error {
        regimen::Error::Compile(report) => eprint!("{report}"),
        other => eprintln!("error: {}", other.to_string_with_causes()),
    }
}

fn positive_number(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 => Ok(value),
        Ok(_) => Err("must be a positive number".to_string()),
        Err(_) => Err(format!("`{text}` is not a number")),
    }
}

fn problem_kind(text: &str) -> Result<ProblemKind, String> {
    ProblemKind::from_name(text).map_err(|error| error.to_string())
}

fn backend_choice(text: &str) -> Result<BackendChoice, String> {
    BackendChoice::from_name(text).ok_or_else(|| {
        format!("unknown backend `{text}`; the backends are `ndarray` and `arrayfire`")
    })
}

fn trace_options(options: &ScriptOptions) -> TraceOptions {
    TraceOptions {
        steps: None,
        every: 1,
        steps_per_epoch: options.steps_per_epoch,
        batch_size: options.batch_size,
        plugin_path: options.plugin_path.clone(),
    }
}

/// Write to stdout; a closed pipe (`regimen trace … | head`) is not an error.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(error).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

/// Read and compile a script for `trace` and `plot`: warnings are printed, errors
/// are printed under one heading line and end the command (`Ok(Err(code))`).
fn load(
    path: &Path,
    options: &TraceOptions,
    verb: &str,
) -> anyhow::Result<Result<(SourceFile, Compiled), ExitCode>> {
    let file = regimen::read_source(path)?;
    match regimen::dsl::compile(&file, &options.compile_options()) {
        Ok(compiled) => {
            if !compiled.warnings.is_empty() {
                let warnings = Report {
                    file: file.clone(),
                    diagnostics: compiled.warnings.clone(),
                };
                eprint!("{warnings}");
            }
            Ok(Ok((file, compiled)))
        }
        Err(report) => {
            eprintln!(
                "error: cannot {verb} `{}`: the script has {}\n",
                file.name,
                plural(report.error_count(), "error")
            );
            eprint!("{report}");
            Ok(Err(ExitCode::FAILURE))
        }
    }
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `--steps`, else the horizon, else a clear error naming the flag.
fn resolve_steps(
    steps: Option<u64>,
    compiled: &Compiled,
    file: &SourceFile,
) -> anyhow::Result<u64> {
    match steps.or_else(|| compiled.horizon_steps()) {
        Some(steps) if steps > 0 => Ok(steps),
        Some(_) => anyhow::bail!("`{}` has an empty horizon: pass `--steps N`", file.name),
        None => anyhow::bail!(
            "`{}` sets no horizon, so the number of steps is unknown: pass `--steps N` \
             (or add e.g. `horizon 100 steps` to the script)",
            file.name
        ),
    }
}

fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let options = trace_options(&args.options).compile_options();
    let mut failed = 0usize;
    for path in &args.files {
        let file = match regimen::read_source(path) {
            Ok(file) => file,
            Err(error) => {
                print_error(&error);
                failed += 1;
                continue;
            }
        };
        let report = regimen::dsl::check(&file, &options);
        if !report.diagnostics.is_empty() {
            eprint!("{report}");
        }
        if report.has_errors() {
            failed += 1;
        } else {
            let warnings = report.diagnostics.len();
            let line = if warnings == 0 {
                format!("{}: ok\n", file.name)
            } else {
                format!("{}: ok ({})\n", file.name, plural(warnings, "warning"))
            };
            print_stdout(&line)?;
        }
    }
    if failed > 0 {
        if args.files.len() > 1 {
            eprintln!(
                "error: {} of {} files have errors",
                failed,
                args.files.len()
            );
        }
        Ok(ExitCode::FAILURE)
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

fn trace(args: &TraceArgs) -> anyhow::Result<ExitCode> {
    let options = trace_options(&args.options);
    let (file, compiled) = match load(&args.file, &options, "trace")? {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let options = TraceOptions {
        steps: Some(resolve_steps(args.steps, &compiled, &file)?),
        every: args.every,
        ..options
    };
    let trace = run_trace(&compiled, &file, &options, &args.run)?;
    let text = match args.format {
        Format::Table => output::to_table(&trace),
        Format::Csv => trace.to_csv(),
        Format::Json => output::to_json(&trace),
        Format::Yaml => output::to_yaml(&trace),
    };
    print_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

fn plot_command(args: &PlotArgs) -> anyhow::Result<ExitCode> {
    // Refuse a bad output name before doing any work.
    if plot::ImageFormat::from_path(&args.output).is_none() {
        anyhow::bail!(
            "cannot tell the image format of `{}`: the output file name must end in `.svg` or `.png`",
            args.output.display()
        );
    }
    if let Some(dir) = args.output.parent() {
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            anyhow::bail!(
                "cannot write `{}`: the directory `{}` does not exist",
                args.output.display(),
                dir.display()
            );
        }
    }
    let options = trace_options(&args.options);
    let (file, compiled) = match load(&args.file, &options, "plot")? {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let steps = resolve_steps(args.steps, &compiled, &file)?;
    let options = TraceOptions {
        steps: Some(steps),
        every: steps.div_ceil(PLOT_MAX_POINTS).max(1),
        ..options
    };
    let trace = run_trace(&compiled, &file, &options, &args.run)?;
    let title = match &args.title {
        Some(title) => title.clone(),
        None => {
            let name = args.file.file_name().map_or_else(
                || file.name.clone(),
                |name| name.to_string_lossy().into_owned(),
            );
            match args.run.problem {
                Some(problem) => format!("{name} on the {problem} problem"),
                None => name,
            }
        }
    };
    plot::plot_to_file(&trace, &title, &args.output)?;
    eprintln!("wrote {}", args.output.display());
    Ok(ExitCode::SUCCESS)
}

/// The schedules' trace, or the runtime trace on the problem `run` asks for.
fn run_trace(
    compiled: &Compiled,
    file: &SourceFile,
    options: &TraceOptions,
    run: &ProblemArgs,
) -> Result<Trace, regimen::Error> {
    match run.options() {
        None => regimen::trace_compiled(compiled, &file.name, options),
        Some(problem) => regimen::trace_problem_compiled(compiled, &file.name, options, &problem),
    }
}

fn bind(args: &BindArgs) -> anyhow::Result<ExitCode> {
    let options = trace_options(&args.options);
    let (_, compiled) = match load(&args.file, &options, "bind")? {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let model = regimen::ProblemModel::new(
        regimen::Problem::new(args.problem, 0),
        compiled.strategy.precision.dtype,
    );
    let options = regimen::with_script_plugins(&compiled, regimen::StepperOptions::new());
    let stepper = regimen::Stepper::new_with(
        regimen::NdArrayBackend::new(),
        compiled.graph,
        compiled.strategy,
        &model.param_specs(),
        &model.params(),
        options,
    )
    .map_err(regimen::Error::from)?;
    print_stdout(&stepper.binding().describe())?;
    Ok(ExitCode::SUCCESS)
}

fn fmt(args: &FmtArgs) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    let mut unformatted = Vec::new();
    for path in &args.files {
        let file = match regimen::read_source(path) {
            Ok(file) => file,
            Err(error) => {
                print_error(&error);
                failed = true;
                continue;
            }
        };
        let formatted = match regimen::dsl::format(&file) {
            Ok(formatted) => formatted,
            Err(report) => {
                eprintln!("error: cannot format `{}`: it does not parse\n", file.name);
                eprint!("{report}");
                failed = true;
                continue;
            }
        };
        if formatted == file.text {
            continue;
        }
        if args.check {
            unformatted.push(file.name);
        } else {
            std::fs::write(path, formatted)
                .with_context(|| format!("cannot write `{}`", path.display()))?;
            print_stdout(&format!("formatted {}\n", file.name))?;
        }
    }
    if !unformatted.is_empty() {
        let mut text = String::new();
        for name in &unformatted {
            text.push_str(&format!(
                "{name}: not in canonical form (run `regimen fmt {name}`)\n"
            ));
        }
        print_stdout(&text)?;
        failed = true;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn positive_numbers_only() {
        assert_eq!(positive_number("2.5"), Ok(2.5));
        assert!(positive_number("0").is_err());
        assert!(positive_number("-1").is_err());
        assert!(positive_number("inf").is_err());
        assert!(positive_number("x").is_err());
    }
}
