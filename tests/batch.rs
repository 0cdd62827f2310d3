//! Batch-size control in real training runs (`regimen::train` on the digits): epochs
//! end after the data's rows whatever the batch does, the schedules run on samples,
//! the loss rule doubles the batch at epoch ends, AdaScale trains until its clock
//! reaches the horizon, the noise estimator works from micro-batches and from workers,
//! a stopped and resumed run is bit-identical, and a batch-controller plugin runs
//! through the same path as the built-ins.

use std::path::Path;

use regimen::train::{RunOptions, RunOutcome};
use regimen::{Script, Trace};

mod common;
use common::{example, small};

#[path = "../core/tests/plugin_support/mod.rs"]
mod plugin_support;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Training rows of the bundled digits split.
const ROWS: u64 = 1438;

fn run(script: &Path, options: &RunOptions) -> Result<RunOutcome, regimen::Error> {
    common::train(script, options)
}

fn column(trace: &Trace, name: &str) -> Result<Vec<f64>, String> {
    trace
        .column(name)
        .ok_or_else(|| format!("no `{name}` column in {:?}", trace.columns))
}

#[test]
fn epochs_end_after_the_rows_and_schedules_run_on_samples() -> TestResult {
    let outcome = run(&example("digits_ramp.regimen"), &small(12)?)?;
    let trace = &outcome.trace;
    let (batch, samples, progress, epoch, lr) = (
        column(trace, "batch")?,
        column(trace, "samples")?,
        column(trace, "progress")?,
        column(trace, "epoch")?,
        column(trace, "lr")?,
    );
    // Every epoch ends exactly at a multiple of the rows: its last batch is cut short.
    let mut seen = 0u64;
    for k in 0..trace.records.len() {
        let before = seen;
        seen += batch[k] as u64;
        assert_eq!(samples[k] as u64, seen);
        assert_eq!(epoch[k] as u64, before / ROWS, "step {k}");
        assert!(
            before / ROWS == (seen - 1) / ROWS,
            "step {k} spans two epochs"
        );
        // The clock is samples / the base batch 32.
        assert_eq!(progress[k], before as f64 / 32.0);
    }
    assert_eq!(seen, 12 * ROWS);
    assert_eq!(outcome.epochs.len(), 12);
    // The ramp reached 256 by epoch 10 (the last batch of an epoch is what is left
    // of its rows), and fewer steps were needed than at 32.
    assert_eq!(batch.iter().copied().fold(0.0, f64::max), 256.0);
    assert!(outcome.summary.steps_done < 12 * 45);
    // The lr is the script's schedule at the clock: compile it as `run` does (an
    // epoch is 1438 / 32 reference steps) and evaluate.
    let script = Script::from_file_with(
        example("digits_ramp.regimen"),
        &regimen::CompileOptions {
            steps_per_epoch: Some(ROWS as f64 / 32.0),
            batch_size: Some(32.0),
            ..Default::default()
        },
    )?;
    let graph = &script.compiled().graph;
    let lr_output = graph
        .outputs
        .iter()
        .position(|o| o.name == "lr")
        .ok_or("no lr")?;
    for k in 0..trace.records.len() {
        assert_eq!(lr[k], graph.eval_output(lr_output, progress[k]), "step {k}");
    }
    // √(B/32) on top: the step's nominal batch, which the epoch's cut-short last
    // batch is below.
    let factor = column(trace, "lr_factor")?;
    for k in 0..trace.records.len() {
        let cut_short = (samples[k] as u64) % ROWS == 0;
        let rule = (batch[k] / 32.0).sqrt();
        if cut_short {
            assert!(factor[k] >= rule, "step {k}");
        } else {
            assert_eq!(factor[k], rule, "step {k}");
        }
    }
    Ok(())
}

#[test]
fn the_loss_rule_doubles_at_epoch_ends_and_the_first_check_only_records() -> TestResult {
    let outcome = run(&example("digits_loss_rule.regimen"), &small(8)?)?;
    let epochs = &outcome.epochs;
    let trace = &outcome.trace;
    let (batch, loss, samples) = (
        column(trace, "batch")?,
        column(trace, "loss")?,
        column(trace, "samples")?,
    );
    // Recompute the rule from the trace: the batch-weighted mean loss of each epoch.
    let mut expected = 32u64;
    let mut previous: Option<f64> = None;
    let mut start = 0;
    for e in 0..epochs.len() {
        let end = start
            + samples[start..]
                .iter()
                .position(|&s| s as u64 == (e as u64 + 1) * ROWS)
                .ok_or("no epoch end")?;
        for k in start..=end {
            assert_eq!(
                batch[k] as u64,
                expected.min(ROWS - (samples[k] as u64 - batch[k] as u64) % ROWS),
                "epoch {e} step {k}"
            );
        }
        let (weighted, count) = (start..=end).fold((0.0, 0.0), |(w, n), k| {
            (w + loss[k] * batch[k], n + batch[k])
        });
        let mean = weighted / count;
        if let Some(previous) = previous {
            if mean <= 0.8 * previous {
                expected = (expected * 2).min(512);
            }
        }
        previous = Some(mean);
        start = end + 1;
    }
    // The first epoch's check only recorded: epoch 2 still runs at 32.
    assert_eq!(epochs[1].batch, 32);
    assert!(epochs.iter().any(|e| e.batch > 32), "{epochs:?}");
    assert!(epochs.iter().all(|e| e.batch <= 512));
    Ok(())
}

#[test]
fn adascale_trains_until_its_clock_reaches_the_horizon() -> TestResult {
    let options = RunOptions {
        epochs: None,
        ..small(1)?
    };
    let outcome = run(&example("digits_adascale.regimen"), &options)?;
    let trace = &outcome.trace;
    let (gain, factor, progress, batch) = (
        column(trace, "gain")?,
        column(trace, "lr_factor")?,
        column(trace, "progress")?,
        column(trace, "batch")?,
    );
    // Micro-batches of 32 in batches of 128: a gain every step, in [1, 4].
    for k in 0..trace.records.len() {
        assert!((1.0..=4.0).contains(&gain[k]), "step {k}: {}", gain[k]);
        let scale = batch[k] / 32.0;
        assert!(gain[k] <= scale.max(1.0) + 1e-12);
        assert_eq!(factor[k], gain[k]);
        if k > 0 {
            assert_eq!(progress[k], progress[k - 1] + factor[k - 1], "step {k}");
        }
    }
    // 30 epochs of base-batch progress; the data ran more epochs than that, as the
    // gain is below the scale of 4.
    let horizon = 30.0 * ROWS as f64 / 32.0;
    let last = trace.records.len() - 1;
    assert!(progress[last] < horizon && progress[last] + factor[last] >= horizon);
    assert!(outcome.epochs.len() > 30, "{} epochs", outcome.epochs.len());
    assert!(!outcome.summary.interrupted);
    assert!(outcome.summary.final_test_accuracy > 0.9);
    Ok(())
}

/// The gns script estimates from its micro-batches; with two workers and no
/// micro-batches (`--micro-batch` 0 is not allowed, so the script without them) it
/// estimates from each worker's half.
#[test]
fn the_noise_scale_is_estimated_from_micro_batches_and_from_workers() -> TestResult {
    let outcome = run(&example("digits_gns.regimen"), &small(3)?)?;
    let noise = column(&outcome.trace, "noise_scale")?;
    assert!(noise.iter().all(|n| n.is_finite() && *n > 0.0), "{noise:?}");
    // The batch is re-decided at epoch ends only, within [32, 512] in multiples of 16.
    let batch = column(&outcome.trace, "batch")?;
    let samples = column(&outcome.trace, "samples")?;
    for k in 1..batch.len() {
        let before = samples[k] as u64 - batch[k] as u64;
        let epoch_start = before % ROWS == 0;
        if !epoch_start && batch[k] != batch[k - 1] {
            assert_eq!(
                before + batch[k] as u64,
                ROWS * (before / ROWS + 1),
                "step {k}"
            );
        }
        if epoch_start {
            let b = batch[k] as u64;
            assert!((32..=512).contains(&b) && b % 16 == 0, "step {k}: {b}");
        }
    }

    let dir = tempfile::tempdir()?;
    let script = dir.path().join("gns_workers.regimen");
    std::fs::write(
        &script,
        "horizon 2 epochs\nbatch = 64\nlr = 1e-3\noptimizer adamw\n\
         batch gns(min: 32, max: 512, multiple_of: 16, every: 1 epoch)\n",
    )?;
    let one = run(&script, &small(2)?)?;
    assert!(column(&one.trace, "noise_scale")?
        .iter()
        .all(|n| n.is_nan()));
    let two = run(
        &script,
        &RunOptions {
            workers: 2,
            ..small(2)?
        },
    )?;
    let noise = column(&two.trace, "noise_scale")?;
    assert!(noise.iter().all(|n| n.is_finite() && *n > 0.0), "{noise:?}");
    Ok(())
}

#[test]
fn a_stopped_and_resumed_controlled_run_is_bit_identical() -> TestResult {
    let dir = tempfile::tempdir()?;
    let base = RunOptions {
        workers: 2,
        ..small(4)?
    };
    let [expected, _, _] = common::assert_resume_is_bit_identical(
        &example("digits_gns.regimen"),
        &base,
        dir.path(),
        70,
    )?;
    // The batch moved, so the controller's and the estimator's state mattered.
    let batch = column(&expected.trace, "batch")?;
    assert!(batch.iter().any(|&b| b != batch[0]));
    Ok(())
}

#[test]
fn a_controller_plugin_runs_through_the_same_path() -> TestResult {
    let library = plugin_support::library("regimen-adabatch");
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("adabatch.regimen");
    std::fs::write(
        &script,
        format!(
            "plugin \"{}\"\nhorizon 3 epochs\nbatch = 32\nlr = 1e-3\noptimizer adamw\n\
             batch adabatch(every: 1, factor: 2, lr_scale: \"linear\", max: 100)\n",
            library.display()
        ),
    )?;
    let outcome = run(&script, &small(3)?)?;
    // AdaBatch doubles every epoch up to `max` (which the host bounds by too), and
    // its own lr scale (linear, relative to the batch it started at) is the step's lr
    // factor.
    let batches: Vec<u64> = outcome.epochs.iter().map(|e| e.batch).collect();
    assert_eq!(batches, [32, 64, 100]);
    let trace = &outcome.trace;
    let (batch, factor, samples) = (
        column(trace, "batch")?,
        column(trace, "lr_factor")?,
        column(trace, "samples")?,
    );
    for k in 0..trace.records.len() {
        let epoch = (samples[k] as u64 - batch[k] as u64) / ROWS;
        let expected = [1.0, 2.0, 100.0 / 32.0][epoch as usize];
        assert_eq!(factor[k], expected, "step {k}");
    }
    Ok(())
}
