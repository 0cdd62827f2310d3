//! Real training runs through `regimen::train`: learning happens on the bundled
//! digits, compression with error feedback stays close to the dense run, an
//! interrupted and resumed run is bit-identical to an uninterrupted one, and bad
//! settings are errors.

use std::sync::atomic::AtomicBool;

use regimen::core::nn::Mlp;
use regimen::train::{self, DataChoice, RunOptions, RunOutcome};

mod common;
use common::{example, small};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn run(script: &str, options: &RunOptions) -> Result<RunOutcome, regimen::Error> {
    common::train(&example(script), options)
}

#[test]
fn digits_are_learned_in_three_epochs() -> TestResult {
    let outcome = run("digits.regimen", &small(3)?)?;
    let s = &outcome.summary;
    assert_eq!((s.train_rows, s.test_rows), (1438, 359));
    assert_eq!((s.steps_per_epoch, s.steps_done), (45, 135));
    let epochs = &outcome.epochs;
    assert_eq!(epochs.len(), 3);
    assert!(
        epochs[2].train_loss < 0.5 * epochs[0].train_loss,
        "{epochs:?}"
    );
    // Chance is 10%; three epochs of a tiny MLP reach well above 80%.
    assert!(s.final_test_accuracy > 0.8, "{s:?}");
    // Nothing compressed, one worker: every step counts as 4 bytes per parameter.
    assert_eq!(s.bytes_sent, 135 * 4 * s.parameters as u64);
    assert_eq!(s.compression_ratio, 1.0);
    Ok(())
}

#[test]
fn same_seed_same_bits_other_seed_other_run() -> TestResult {
    let a = run("digits.regimen", &small(1)?)?;
    let b = run("digits.regimen", &small(1)?)?;
    assert_eq!(a.trace.to_csv(), b.trace.to_csv());
    let c = run(
        "digits.regimen",
        &RunOptions {
            seed: 1,
            ..small(1)?
        },
    )?;
    assert_ne!(a.trace.to_csv(), c.trace.to_csv());
    Ok(())
}

/// Top-k (5%) with error feedback, on 2 workers, against the dense run on the same
/// seed and data: within 3 points of test accuracy after 4 epochs, with at least 5×
/// fewer bytes.
#[test]
fn topk_with_error_feedback_stays_close_to_dense() -> TestResult {
    let options = RunOptions {
        workers: 2,
        ..small(4)?
    };
    let dense = run("digits.regimen", &options)?.summary;
    let topk = run("digits_topk_ef.regimen", &options)?.summary;
    assert!(
        (dense.final_test_accuracy - topk.final_test_accuracy).abs() <= 0.03,
        "dense {} vs topk {}",
        dense.final_test_accuracy,
        topk.final_test_accuracy
    );
    assert!(topk.compression_ratio > 5.0, "{topk:?}");
    assert!(topk.wire_bytes_sent > 0 && topk.wire_bytes_sent < dense.wire_bytes_sent);
    Ok(())
}

#[test]
fn f16_loss_scaling_skips_overflowing_steps_and_still_learns() -> TestResult {
    let outcome = run("digits_f16.regimen", &small(2)?)?;
    let s = &outcome.summary;
    let scales = outcome.trace.column("loss_scale").unwrap_or_default();
    // Starting at 2^24 the scaled gradients overflow f16: skipped, scale halved.
    assert!(s.skipped_steps >= 3, "{s:?}");
    assert_eq!(scales[0], 16_777_216.0);
    assert_eq!(scales[1], 8_388_608.0);
    assert!(s.final_test_accuracy > 0.7, "{s:?}");
    Ok(())
}

/// Stopping mid-epoch (what Ctrl-C does), then `--resume`, gives the same trace,
/// epochs and final weights as a run that never stopped — with compression state
/// (residuals) on 2 workers.
#[test]
fn interrupted_and_resumed_run_is_bit_identical() -> TestResult {
    let dir = tempfile::tempdir()?;
    let base = RunOptions {
        workers: 2,
        ..small(2)?
    };
    let [_, _, resumed] = common::assert_resume_is_bit_identical(
        &example("digits_topk_ef.regimen"),
        &base,
        dir.path(),
        60,
    )?;
    let out = dir.path().join("stopped");
    assert!(out.join("checkpoints/rank0.ckpt").is_file());
    assert!(out.join("checkpoints/rank1.ckpt").is_file());
    assert_eq!(resumed.summary.resumed_at_step, 60);
    assert!(out.join("report.svg").is_file() && out.join("summary.json").is_file());
    Ok(())
}

#[test]
fn resume_refuses_another_run() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("run");
    let options = RunOptions {
        out: Some(out.clone()),
        stop_after: Some(5),
        ..small(1)?
    };
    run("digits.regimen", &options)?;
    let other_seed = RunOptions {
        seed: 9,
        resume: true,
        stop_after: None,
        ..options.clone()
    };
    let error = run("digits.regimen", &other_seed)
        .err()
        .ok_or("resumed with another seed")?;
    assert!(error.to_string().contains("seed 0"), "{error}");
    // Another script: the checkpoint's fingerprint does not match.
    let other_script = RunOptions {
        resume: true,
        stop_after: None,
        ..options
    };
    assert!(run("digits_cosine.regimen", &other_script).is_err());
    let nothing = RunOptions {
        out: Some(dir.path().join("empty")),
        resume: true,
        ..small(1)?
    };
    let error = run("digits.regimen", &nothing)
        .err()
        .ok_or("resumed nothing")?;
    assert!(error.to_string().contains("run.json"), "{error}");
    Ok(())
}

#[test]
fn bad_settings_are_errors() -> TestResult {
    let wrong_inputs = RunOptions {
        model: Some(Mlp::parse("mlp:32,10")?),
        ..small(1)?
    };
    let error = run("digits.regimen", &wrong_inputs)
        .err()
        .ok_or("a 32-input model on 64 features")?;
    assert!(error.to_string().contains("64 features"), "{error}");
    let huge_batch = RunOptions {
        batch: Some(100_000),
        ..small(1)?
    };
    assert!(run("digits.regimen", &huge_batch).is_err());
    assert!(DataChoice::parse("mnist").is_err());
    assert!(DataChoice::parse("teacher:10,x,2").is_err());
    Ok(())
}

#[test]
fn the_teacher_task_is_learnable() -> TestResult {
    let options = RunOptions {
        model: Some(Mlp::parse("mlp:16,64,4:gelu")?),
        data: DataChoice::parse("teacher:2000,16,4")?,
        epochs: Some(3),
        ..RunOptions::default()
    };
    let s = run("digits.regimen", &options)?.summary;
    assert_eq!(s.train_rows + s.test_rows, 2000);
    assert!(s.final_test_accuracy > 0.5, "{s:?}");
    Ok(())
}

#[test]
fn compare_runs_every_script_on_every_seed() -> TestResult {
    let scripts = [
        example("digits.regimen"),
        example("digits_powersgd.regimen"),
    ];
    let results = train::compare(
        &scripts,
        &small(2)?,
        2,
        &AtomicBool::new(false),
        &mut |_, _, _| {},
    )?;
    assert_eq!(results.len(), 2);
    for compared in &results {
        let seeds: Vec<u64> = compared.runs.iter().map(|r| r.summary.seed).collect();
        assert_eq!(seeds, [0, 1]);
        let (mean, std) = compared.accuracy();
        assert!(mean > 0.6 && std.is_finite(), "{mean} ± {std}");
    }
    let (sent, dense) = results[1].bytes();
    assert!(dense / sent > 1.5, "PowerSGD sent {sent} of {dense}");
    let panels = train::compare_panels(&results);
    assert_eq!(panels.len(), 3);
    assert!(panels.iter().all(|p| p.series.len() == 2));
    Ok(())
}

/// Gradient accumulation over micro-batches computes the same mean gradient up to
/// f32 rounding: the first step (before any update) has the same loss and gradient
/// norm to 1e-5, and the run ends at the same accuracy to within a point.
#[test]
fn micro_batches_accumulate_the_same_gradient() -> TestResult {
    let whole = run("digits.regimen", &small(2)?)?;
    let micro = run(
        "digits.regimen",
        &RunOptions {
            micro_batch: Some(5),
            ..small(2)?
        },
    )?;
    for column in ["loss", "grad_norm"] {
        let a = whole.trace.column(column).unwrap_or_default()[0];
        let b = micro.trace.column(column).unwrap_or_default()[0];
        assert!((a - b).abs() <= 1e-5 * a.abs(), "{column}: {a} vs {b}");
    }
    assert_ne!(whole.trace.to_csv(), micro.trace.to_csv());
    let (a, b) = (
        whole.summary.final_test_accuracy,
        micro.summary.final_test_accuracy,
    );
    assert!((a - b).abs() <= 0.01, "{a} vs {b}");
    Ok(())
}
