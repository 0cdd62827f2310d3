//! `regimen run` and `regimen compare`: train a real model on bundled data under a
//! script (progress bar, per-epoch table, outputs, Ctrl-C, `--resume`), and put
//! several scripts side by side over several seeds.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use regimen::core::nn::Mlp;
use regimen::train::{self, DataChoice, EpochSummary, RunEvent, RunOptions};

/// Options shared by `run` and `compare`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The model: `mlp:IN,HIDDEN…,CLASSES` with an optional `:gelu` (ReLU by
    /// default) [default: mlp:IN,128,CLASSES for the data].
    #[arg(long, value_name = "SPEC", value_parser = parse_model)]
    model: Option<Mlp>,
    /// The data: `digits` (bundled UCI handwritten digits, fixed 80/20 split) or
    /// `teacher[:SAMPLES,FEATURES,CLASSES]` (a seeded synthetic teacher network).
    #[arg(long, value_name = "NAME", default_value = "digits", value_parser = parse_data)]
    data: DataChoice,
    /// Epochs to train [default: the script's horizon].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    epochs: Option<u64>,
    /// Samples per step (the global batch) [default: the script's `batch = N`, else 64].
    #[arg(long, value_name = "B", value_parser = clap::value_parser!(u64).range(1..))]
    batch_size: Option<u64>,
    /// Simulated data-parallel workers: each computes the gradient of its shard of
    /// every batch; gradients are exchanged (compressed as the script says).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=train::MAX_WORKERS as u64))]
    workers: u64,
    /// Rows per micro-batch: each worker accumulates its shard's gradient over
    /// pieces of at most this many rows [default: the whole shard at once].
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u64).range(1..))]
    micro_batch: Option<u64>,
    /// A folder to look up relative `plugin "…"` paths in, after the script's own
    /// folder (repeatable; searched in order).
    #[arg(long, value_name = "DIR")]
    plugin_path: Vec<PathBuf>,
}

impl TrainArgs {
    fn options(&self, seed: u64) -> RunOptions {
        RunOptions {
            model: self.model.clone(),
            data: self.data.clone(),
            epochs: self.epochs,
            seed,
            workers: usize::try_from(self.workers).unwrap_or(1),
            micro_batch: self.micro_batch.and_then(|m| usize::try_from(m).ok()),
            batch: self.batch_size.and_then(|b| usize::try_from(b).ok()),
            plugin_path: self.plugin_path.clone(),
            ..RunOptions::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The script that steers training.
    #[arg(value_name = "SCRIPT")]
    script: PathBuf,
    #[command(flatten)]
    train: TrainArgs,
    /// Seed of the initial weights, minibatch order and compressors.
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// Output directory [default: runs/SCRIPT_NAME].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue the run in `--out` from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// No progress bar (the per-epoch table is still printed).
    #[arg(long)]
    quiet: bool,
    /// How the workers exchange gradients: `threads` (simulated workers in this
    /// process, `--workers N`) or `mpi` (one rank per process under `mpirun`; needs a
    /// build with `--features mpi`).
    #[arg(long, value_name = "KIND", default_value = "threads", value_parser = ["threads", "mpi"])]
    dist: String,
    /// Distributed runs: compare the ranks' parameter checksums every N steps.
    #[arg(long, value_name = "N", default_value_t = train::DEFAULT_CHECK_EVERY, value_parser = clap::value_parser!(u64).range(1..))]
    check_every: u64,
    /// Stop (with a checkpoint, as Ctrl-C does) after this many steps in total.
    #[arg(long, value_name = "N", hide = true)]
    stop_after: Option<u64>,
    /// Fault injection (tests): the step at which `--fail-rank` fails.
    #[arg(long, value_name = "K", hide = true)]
    fail_at_step: Option<u64>,
    /// Fault injection: the rank that fails.
    #[arg(long, value_name = "R", default_value_t = 0, hide = true)]
    fail_rank: usize,
    /// Fault injection: `error`, `die` or `diverge`.
    #[arg(long, value_name = "HOW", default_value = "error", hide = true)]
    fail_mode: String,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The scripts to compare (at least one).
    #[arg(required = true, value_name = "SCRIPT")]
    scripts: Vec<PathBuf>,
    #[command(flatten)]
    train: TrainArgs,
    /// Seeds per script: S, S+1, … (same seeds for every script).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    seeds: u64,
    /// The first seed.
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// The overlay plot to write (`.svg` or `.png`).
    #[arg(long, value_name = "FILE", default_value = "runs/compare.svg")]
    plot: PathBuf,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn parse_model(text: &str) -> Result<Mlp, String> {
    Mlp::parse(text).map_err(|e| e.to_string())
}

fn parse_data(text: &str) -> Result<DataChoice, String> {
    DataChoice::parse(text).map_err(|e| e.to_string())
}

/// The first Ctrl-C asks the run to stop after its current step; a second one ends
/// the process at once.
fn interrupt_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let handler_flag = Arc::clone(&flag);
    ctrlc::set_handler(move || {
        if handler_flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: stopping after the current step (Ctrl-C again to quit now)");
    })?;
    Ok(flag)
}

fn progress_bar(quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:30}] {pos}/{len} steps {elapsed_precise} {msg}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

const EPOCH_HEADER: &str =
    "epoch  train loss  test loss  test acc         lr  batch   bytes sent  skipped";

fn epoch_line(e: &EpochSummary) -> String {
    format!(
        "{:>5}  {:>10.4}  {:>9.4}  {:>7.2}%  {:>9.3e}  {:>5}  {:>11}  {:>7}",
        e.epoch,
        e.train_loss,
        e.test_loss,
        100.0 * e.test_accuracy,
        e.lr,
        e.batch,
        human_bytes(e.bytes_sent as f64),
        e.skipped
    )
}

/// `12.3 MB` (decimal units).
pub fn human_bytes(bytes: f64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    if args.dist == "mpi" {
        return run_mpi(args);
    }
    // Under `mpirun` without `--dist mpi`, every process would train the whole run
    // alone into the same directory.
    if std::env::var("OMPI_COMM_WORLD_SIZE").is_ok_and(|n| n != "1") {
        eprintln!(
            "warning: started by mpirun without `--dist mpi`: every process trains on its own"
        );
    }
    run_on(args, None)
}

#[cfg(not(feature = "mpi"))]
fn run_mpi(_args: &RunArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "`--dist mpi` needs a regimen built with MPI support: install OpenMPI and libclang \
         (Debian: `apt-get install libopenmpi-dev openmpi-bin libclang-dev`), rebuild with \
         `cargo build --release --features mpi`, and launch with `mpirun -np N regimen run … --dist mpi`"
    )
}

/// One rank of an MPI job: any error ends the whole job through rank 0 (never a hang).
#[cfg(feature = "mpi")]
fn run_mpi(args: &RunArgs) -> anyhow::Result<ExitCode> {
    use regimen::core::comm::mpi::{MpiSession, FAILURE_EXIT_CODE};
    let session = MpiSession::init()?;
    let communicator = Box::new(session.communicator());
    match run_on(args, Some(communicator)) {
        Ok(code) => Ok(code),
        Err(error) => session.fail(&format!("{error:#}"), FAILURE_EXIT_CODE),
    }
}

fn run_on(
    args: &RunArgs,
    communicator: Option<Box<dyn regimen::Communicator>>,
) -> anyhow::Result<ExitCode> {
    let rank = communicator.as_ref().map_or(0, |c| c.rank());
    let fault = match args.fail_at_step {
        Some(step) => Some(train::Fault {
            rank: args.fail_rank,
            step,
            kind: train::FaultKind::parse(&args.fail_mode)?,
        }),
        None => None,
    };
    let interrupt = interrupt_flag()?;
    let out = match &args.out {
        Some(out) => out.clone(),
        None => {
            let stem = args
                .script
                .file_stem()
                .map_or_else(|| "run".into(), |s| s.to_string_lossy().into_owned());
            PathBuf::from("runs").join(stem)
        }
    };
    let options = RunOptions {
        out: Some(out.clone()),
        resume: args.resume,
        check_every: args.check_every,
        stop_after: args.stop_after,
        fault,
        ..args.train.options(args.seed)
    };
    // Only rank 0 of a distributed job reports.
    let bar = progress_bar(args.quiet || rank != 0);
    let mut observer = |event: RunEvent<'_>| match event {
        RunEvent::Started {
            start_step,
            total_steps,
            steps_per_epoch,
            batch,
            progress_total,
            progress_start,
            train_rows,
            test_rows,
            model,
            warnings,
            binding_warnings,
        } => {
            bar.suspend(|| {
                if let Some(warnings) = warnings {
                    eprint!("{warnings}");
                }
                for warning in binding_warnings {
                    eprintln!("warning: {warning}");
                }
                println!(
                    "{}: {} ({} parameters) on {} ({train_rows} train / {test_rows} test rows), \
                     batch {batch}, {steps_per_epoch} steps per epoch, {} epochs{}",
                    args.script.display(),
                    model.describe(),
                    model.numel(),
                    options.data.describe(),
                    total_steps.div_ceil(steps_per_epoch.max(1)),
                    if start_step > 0 {
                        format!(", resuming at step {start_step}")
                    } else {
                        String::new()
                    }
                );
                println!("{EPOCH_HEADER}");
            });
            bar.set_length(progress_total);
            bar.set_position(progress_start);
            bar.set_prefix("train");
        }
        RunEvent::Step {
            loss,
            lr,
            batch,
            progress,
            ..
        } => {
            bar.set_position(progress);
            bar.set_message(format!("loss {loss:.4} lr {lr:.3e} batch {batch}"));
        }
        RunEvent::Epoch(summary) => bar.suspend(|| println!("{}", epoch_line(summary))),
    };
    let outcome = match communicator {
        Some(communicator) => regimen::train::run_distributed(
            &args.script,
            &options,
            &interrupt,
            &mut observer,
            communicator,
        )?,
        None => regimen::train::run(&args.script, &options, &interrupt, &mut observer)?,
    };
    bar.finish_and_clear();
    let s = &outcome.summary;
    // Only rank 0 knows the whole run's rows (and so whether it was stopped); its
    // exit code is the job's.
    if outcome.rank != 0 {
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "\n{} steps in {:.1} s: test accuracy {:.2}% (best {:.2}%), {} of gradients sent (dense f32 / sent = {:.1}×), {} skipped steps",
        s.steps_done - s.resumed_at_step,
        s.seconds,
        100.0 * s.final_test_accuracy,
        100.0 * s.best_test_accuracy,
        human_bytes(s.bytes_sent as f64),
        s.compression_ratio,
        s.skipped_steps
    );
    if s.workers > 1 {
        println!(
            "on the wire (rank 0): {} sent, a dense f32 allreduce would send {}",
            human_bytes(s.wire_bytes_sent as f64),
            human_bytes(s.wire_bytes_dense as f64)
        );
    }
    if s.interrupted {
        println!(
            "stopped at step {} of {}: continue with `regimen run {} --out {} --resume`",
            s.steps_done,
            s.total_steps,
            args.script.display(),
            out.display()
        );
    }
    println!(
        "wrote {0}/trace.csv, {0}/epochs.csv, {0}/summary.json, {0}/report.svg",
        out.display()
    );
    Ok(if s.interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn compare(args: &CompareArgs) -> anyhow::Result<ExitCode> {
    if regimen::plot::ImageFormat::from_path(&args.plot).is_none() {
        anyhow::bail!(
            "cannot tell the image format of `{}`: the plot file name must end in `.svg` or `.png`",
            args.plot.display()
        );
    }
    let interrupt = interrupt_flag()?;
    let options = args.train.options(args.seed);
    let bar = progress_bar(args.quiet);
    let mut observer = |script: &std::path::Path, seed: u64, event: RunEvent<'_>| match event {
        RunEvent::Started {
            progress_total,
            progress_start,
            ..
        } => {
            bar.set_length(progress_total);
            bar.set_position(progress_start);
            let name = script
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            bar.set_prefix(format!("{name} seed {seed}"));
        }
        RunEvent::Step {
            loss, lr, progress, ..
        } => {
            bar.set_position(progress);
            bar.set_message(format!("loss {loss:.4} lr {lr:.3e}"));
        }
        RunEvent::Epoch(_) => {}
    };
    let results = regimen::train::compare(
        &args.scripts,
        &options,
        args.seeds,
        &interrupt,
        &mut observer,
    )?;
    bar.finish_and_clear();
    let text = compare_table(&results);
    print!("{text}");
    if let Some(dir) = args.plot.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    let title = format!(
        "{} on {}, mean of {} seeds",
        results
            .first()
            .and_then(|r| r.runs.first())
            .map_or_else(String::new, |r| r.summary.model.clone()),
        options.data.describe(),
        args.seeds
    );
    regimen::plot::panels_to_file(
        &regimen::train::compare_panels(&results),
        &title,
        "epoch",
        &args.plot,
    )?;
    println!("wrote {}", args.plot.display());
    Ok(if interrupt.load(Ordering::SeqCst) {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

/// The side-by-side table of `regimen compare`.
pub fn compare_table(results: &[regimen::train::Compared]) -> String {
    let names: Vec<String> = results
        .iter()
        .map(|r| r.script.display().to_string())
        .collect();
    let width = names.iter().map(String::len).max().unwrap_or(6).max(6);
    let mut text = format!(
        "{:<width$}  seeds  test accuracy      time    bytes sent  vs dense  skipped\n",
        "script"
    );
    for (name, compared) in names.iter().zip(results) {
        let (mean, std) = compared.accuracy();
        let (sent, dense) = compared.bytes();
        text.push_str(&format!(
            "{name:<width$}  {:>5}  {:>6.2}% ± {:>4.2}  {:>6.1} s  {:>12}  {:>7.1}×  {:>7.1}\n",
            compared.runs.len(),
            100.0 * mean,
            100.0 * std,
            compared.seconds(),
            human_bytes(sent),
            dense / sent,
            compared.skipped()
        ));
    }
    text
}
