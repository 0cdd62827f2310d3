//! Runtime traces: scripts' full strategies (optimizer, groups, layer decay,
//! precision with loss scaling, clipping) run on the built-in synthetic problems, as
//! `regimen trace SCRIPT --problem NAME` prints them. Snapshots pin the traces
//! (values rounded to `regimen::SNAPSHOT_SIGNIFICANT_DIGITS`); the other tests check
//! what must hold whatever the numbers: the loss goes down, runs are deterministic,
//! the loss scale follows GradScaler's rules, and a run resumed from a checkpoint
//! continues bit for bit.
#![cfg(feature = "snapshot")]

use regimen::{
    assert_trace_snapshot, trace_problem, trace_problem_source, Error, ProblemKind, ProblemModel,
    ProblemOptions, Script, Trace, TraceOptions, SNAPSHOT_SIGNIFICANT_DIGITS,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn example(name: &str) -> String {
    format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn column(trace: &Trace, name: &str) -> Result<Vec<f64>, String> {
    trace
        .column(name)
        .ok_or_else(|| format!("no `{name}` column in {:?}", trace.columns))
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// The mean loss of the last tenth of the run is below that of the first tenth (the
/// logistic problem's minibatch losses are noisy, so single steps are not compared).
fn assert_loss_decreases(trace: &Trace, by_at_least: f64) -> TestResult {
    let loss = column(trace, "loss")?;
    let tenth = (loss.len() / 10).max(1);
    let first = mean(&loss[..tenth]);
    let last = mean(&loss[loss.len() - tenth..]);
    assert!(
        last < first * (1.0 - by_at_least),
        "loss {first} -> {last} (not down by {by_at_least})"
    );
    Ok(())
}

// ------------------------------------------------------------------ snapshots

#[test]
fn mlp_adamw_on_the_quadratic() {
    // AdamW, warmup + cosine, biases and the norm gain without decay, layer 0 at
    // 0.75 × lr (column `lr×0.75^1`).
    assert_trace_snapshot!(
        "examples/mlp_adamw.regimen",
        problem = "quadratic",
        every = 20,
        name = "mlp_adamw_quadratic",
    );
}

#[test]
fn mlp_adamw_on_the_logistic_problem() {
    assert_trace_snapshot!(
        "examples/mlp_adamw.regimen",
        problem = "logistic",
        every = 20,
        name = "mlp_adamw_logistic",
    );
}

#[test]
fn lamb_with_layer_decay_on_the_logistic_problem() {
    // LAMB's trust ratios (min/mean/max over tensors) and the depth-decayed lr.
    assert_trace_snapshot!(
        "examples/lamb_bert.regimen",
        problem = "logistic",
        every = 50,
        name = "lamb_bert_logistic",
    );
}

#[test]
fn lars_warmup_on_the_logistic_problem() {
    // The first 400 steps of the 5-epoch warmup; biases and the norm gain have no
    // trust ratio, the weights' ratios are η‖w‖/(‖g‖ + λ‖w‖) with η = 0.001.
    assert_trace_snapshot!(
        "examples/lars_large_batch.regimen",
        problem = "logistic",
        steps = 400,
        every = 20,
        name = "lars_large_batch_logistic",
    );
}

#[test]
fn f16_loss_scaling_on_the_quadratic_with_injected_overflows() {
    // Every step of the first 60: the scale starts at 2^16, which overflows f16
    // (the largest scaled gradient element is above 65504): the first overflow
    // spends the hysteresis (skip, scale kept), each next one halves the scale
    // until the gradients fit (4096, from step 5). The injected overflows at 30 and
    // 31 skip two more steps and halve the scale twice: the hysteresis spent at the
    // start is refilled only by a growth, which comes after 500 finite steps.
    assert_trace_snapshot!(
        "examples/mixed_precision_f16.regimen",
        problem = "quadratic",
        steps = 60,
        overflow_at = [30, 31],
        name = "mixed_precision_f16_quadratic",
    );
}

// ------------------------------------------------------------------ properties

const GROWING_SCALE: &str = "\
horizon 200 steps
lr = 0.01
optimizer adamw(weight_decay: 0)
precision f16 { loss_scale dynamic(init: 65536, growth: 2, backoff: 0.5, every: 20 steps, hysteresis: 2) }
clip norm: 1.0
";

/// The loss-scale sequence a GradScaler with DeepSpeed hysteresis must produce for a
/// given sequence of skipped (overflowing) steps, by the rules in the scaler's
/// documentation: after `interval` consecutive finite steps the scale doubles and
/// the hysteresis refills; an overflow spends a hysteresis count if more than one is
/// left, else halves the scale; every overflow resets the growth count.
fn expected_scales(skipped: &[bool], init: f64, interval: u64, hysteresis: u32) -> Vec<f64> {
    let (mut scale, mut tracker, mut left) = (init, 0, hysteresis);
    let mut scales = Vec::new();
    for &overflow in skipped {
        scales.push(scale);
        if overflow {
            tracker = 0;
            if left > 1 {
                left -= 1;
            } else {
                scale *= 0.5;
            }
        } else {
            tracker += 1;
            if tracker == interval {
                scale *= 2.0;
                tracker = 0;
                left = hysteresis;
            }
        }
    }
    scales
}

#[test]
fn the_f16_scale_follows_gradscaler_with_hysteresis_and_skips_leave_weights_alone() -> TestResult {
    let options = TraceOptions::default();
    let problem = ProblemOptions::new(ProblemKind::Quadratic).with_overflow_at([100, 101, 102]);
    let trace = trace_problem_source("growing.regimen", GROWING_SCALE, &options, &problem)?;
    assert_eq!(trace.records.len(), 200);
    let scale = column(&trace, "loss_scale")?;
    let skipped: Vec<bool> = column(&trace, "skipped")?
        .iter()
        .map(|&s| s == 1.0)
        .collect();
    let loss = column(&trace, "loss")?;

    assert_eq!(scale, expected_scales(&skipped, 65536.0, 20, 2));
    // Real overflows at the start (2^16 is too large for these gradients in f16),
    // growth attempts that overflow again later, and the injected ones.
    assert!(skipped[0] && skipped[1], "{skipped:?}");
    assert!(skipped[100] && skipped[101] && skipped[102]);
    assert!(scale.iter().any(|&s| s < 65536.0 / 4.0));
    let growths = scale.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(growths >= 2, "the scale never grew: {scale:?}");
    for t in 0..skipped.len() - 1 {
        if skipped[t] {
            // The quadratic's loss depends on the weights only, so an untouched
            // step leaves it bit for bit the same.
            assert_eq!(loss[t + 1].to_bits(), loss[t].to_bits(), "step {t}");
        }
    }
    // Clipped to norm 1 after unscaling, whenever the step was applied.
    let clipped = column(&trace, "clipped_grad_norm")?;
    for t in (0..skipped.len()).filter(|&t| !skipped[t]) {
        assert!(clipped[t] <= 1.0 + 1e-6, "step {t}: {}", clipped[t]);
    }
    assert_loss_decreases(&trace, 0.2)
}

#[test]
fn every_example_run_lowers_the_loss() -> TestResult {
    for (script, problem, steps, by) in [
        ("mlp_adamw.regimen", ProblemKind::Quadratic, None, 0.9),
        ("mlp_adamw.regimen", ProblemKind::Logistic, None, 0.2),
        ("lamb_bert.regimen", ProblemKind::Logistic, None, 0.2),
        (
            "lars_large_batch.regimen",
            ProblemKind::Logistic,
            Some(400),
            0.1,
        ),
        (
            "mixed_precision_f16.regimen",
            ProblemKind::Quadratic,
            Some(500),
            0.5,
        ),
    ] {
        let options = TraceOptions {
            steps,
            ..TraceOptions::default()
        };
        let trace = trace_problem(example(script), &options, &ProblemOptions::new(problem))?;
        assert_loss_decreases(&trace, by).map_err(|e| format!("{script} on {problem}: {e}"))?;
    }
    Ok(())
}

#[test]
fn runs_are_deterministic_and_seeds_matter() -> TestResult {
    let options = TraceOptions::default().with_steps(120);
    for (script, kind) in [
        ("mixed_precision_f16.regimen", ProblemKind::Quadratic),
        ("lamb_bert.regimen", ProblemKind::Logistic),
    ] {
        let problem = ProblemOptions::new(kind)
            .with_seed(7)
            .with_overflow_at([50]);
        // CSV holds every value in shortest round-trip form: equal text, equal bits
        // (and NaN compares equal to NaN, which `f64` does not).
        let first = trace_problem(example(script), &options, &problem)?.to_csv();
        let second = trace_problem(example(script), &options, &problem)?.to_csv();
        assert_eq!(first, second, "{script}");
        let other = trace_problem(example(script), &options, &problem.with_seed(8))?.to_csv();
        assert_ne!(first, other, "{script}: the seed changed nothing");
    }
    Ok(())
}

#[test]
fn every_keeps_the_same_records_as_the_full_run() -> TestResult {
    let problem = ProblemOptions::new(ProblemKind::Logistic);
    let path = example("mlp_adamw.regimen");
    let full = trace_problem(&path, &TraceOptions::default(), &problem)?;
    let sparse = trace_problem(&path, &TraceOptions::default().with_every(25), &problem)?;
    assert_eq!(sparse.columns, full.columns);
    let kept: Vec<u64> = sparse.records.iter().map(|r| r.step).collect();
    assert_eq!(kept.first(), Some(&0));
    assert_eq!(kept.last(), Some(&399));
    for record in &sparse.records {
        let same = &full.records[record.step as usize];
        assert_eq!(format!("{:?}", record), format!("{:?}", same));
    }
    Ok(())
}

/// Steps `model` `steps` times through `stepper`, returning the reports.
fn run(
    model: &mut ProblemModel,
    stepper: &mut regimen::Stepper<regimen::NdArrayBackend>,
    steps: u64,
) -> Result<Vec<regimen::StepReport>, Error> {
    (0..steps)
        .map(|_| model.step(stepper).map_err(Error::from))
        .collect()
}

#[test]
fn a_resumed_run_continues_bit_for_bit() -> TestResult {
    let script = Script::from_file(example("mixed_precision_f16.regimen"))?;
    let dtype = script.strategy().precision.dtype;
    let fresh = |seed| {
        ProblemModel::new(regimen::Problem::new(ProblemKind::Quadratic, seed), dtype)
            .with_overflow_at(&[25, 41])
    };

    // 60 steps straight.
    let mut straight = fresh(3);
    let specs = straight.param_specs();
    let mut stepper = script.bind(&specs, &straight.params())?;
    let straight_reports = run(&mut straight, &mut stepper, 60)?;

    // 30 steps, save, a fresh stepper and model from the checkpoint, 30 more.
    let dir = tempfile::tempdir()?;
    let checkpoint = dir.path().join("run.ckpt");
    let mut first_half = fresh(3);
    let mut stepper = script.bind(&specs, &first_half.params())?;
    let mut resumed_reports = run(&mut first_half, &mut stepper, 30)?;
    stepper.save(&checkpoint)?;
    drop(stepper);
    let mut second_half = fresh(3);
    let mut stepper = script.resume(&checkpoint, &specs)?;
    second_half.load_master(&stepper)?;
    resumed_reports.extend(run(&mut second_half, &mut stepper, 30)?);

    assert_eq!(
        Trace::from_step_reports(&resumed_reports).to_csv(),
        Trace::from_step_reports(&straight_reports).to_csv()
    );
    let bits = |model: &ProblemModel| -> Vec<Vec<u32>> {
        model
            .params_f32()
            .iter()
            .map(|t| t.iter().map(|x| x.to_bits()).collect())
            .collect()
    };
    assert_eq!(bits(&second_half), bits(&straight));
    Ok(())
}

#[test]
fn a_checkpoint_of_another_script_is_refused() -> TestResult {
    let f16 = Script::from_file(example("mixed_precision_f16.regimen"))?;
    let model = ProblemModel::new(
        regimen::Problem::new(ProblemKind::Quadratic, 0),
        f16.strategy().precision.dtype,
    );
    let dir = tempfile::tempdir()?;
    let checkpoint = dir.path().join("run.ckpt");
    f16.bind(&model.param_specs(), &model.params())?
        .save(&checkpoint)?;
    let other = Script::from_file(example("lamb_bert.regimen"))?;
    match other.resume(&checkpoint, &model.param_specs()) {
        Err(error @ Error::Runtime(_)) => {
            let message = error.to_string_with_causes();
            assert!(message.contains("does not match this run"), "{message}");
            assert!(message.contains("different script"), "{message}");
        }
        Err(other) => return Err(format!("expected a runtime error, got {other:?}").into()),
        Ok(_) => return Err("a checkpoint of another script was accepted".into()),
    }
    Ok(())
}

#[test]
fn rounded_runtime_traces_keep_non_finite_values() -> TestResult {
    let options = TraceOptions::default().with_steps(3);
    let problem = ProblemOptions::new(ProblemKind::Quadratic).with_overflow_at([1]);
    let trace = trace_problem(example("mlp_adamw.regimen"), &options, &problem)?
        .rounded(SNAPSHOT_SIGNIFICANT_DIGITS);
    let grad_norm = column(&trace, "grad_norm")?;
    assert!(grad_norm[0].is_finite());
    assert!(!grad_norm[1].is_finite(), "{grad_norm:?}");
    assert_eq!(column(&trace, "skipped")?, [0.0, 1.0, 0.0]);
    Ok(())
}

#[test]
fn layer_decayed_bins_are_the_global_lr_times_the_factor() -> TestResult {
    let options = TraceOptions::default().with_every(10);
    for (script, bin, factor) in [
        // layer_decay 0.75 with depth_max 1: layer 0 gets 0.75^(1 − 0).
        ("mlp_adamw.regimen", "lr×0.75^1", 0.75),
        ("lamb_bert.regimen", "lr×0.8^1", 0.8),
    ] {
        let trace = trace_problem(
            example(script),
            &options,
            &ProblemOptions::new(ProblemKind::Logistic),
        )?;
        let lr = column(&trace, "lr")?;
        let decayed = column(&trace, bin)?;
        for (global, local) in lr.iter().zip(&decayed) {
            assert!(
                (local - global * factor).abs() <= 1e-15,
                "{script}: {local} vs {global} × {factor}"
            );
        }
    }
    Ok(())
}
