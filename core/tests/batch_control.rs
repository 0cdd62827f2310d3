//! Batch-size control through the [`Stepper`] on the quadratic problem, whose gradient
//! noise is controlled: every sample's gradient is the exact gradient plus noise of
//! standard deviation `σ·√B₀` per element, so the true noise scale is known,
//! `B_simple = n σ² B₀ / |G|²` (n elements). With lr 0 the weights stay put and `G`
//! is the gradient at the initial weights.
//!
//! Checked: the estimator recovers `B_simple` within 10% from micro-batches and from
//! workers; AdaScale's gain is 1 without noise and `S` in the pure-noise limit, and its
//! clock advances by the gain; the schedules' clock is samples / base batch; the lr
//! coupling; checkpoint and resume are bit for bit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod stepper_support;

use regimen_core::batch::{BatchBounds, BatchSpec, ControllerSpec, Interval, LrScale};
use regimen_core::comm::{Communicator, SingleProcess, ThreadCluster};
use regimen_core::problem::{Problem, ProblemKind, ProblemModel};
use regimen_core::runtime::StepperOptions;
use regimen_core::{DType, NdArrayBackend, OptimizerKind, StepReport, Stepper};
use stepper_support::{constants, strategy};

fn spec(controller: ControllerSpec, base: u64, micro: Option<u64>) -> BatchSpec {
    BatchSpec {
        controller,
        bounds: BatchBounds::default(),
        micro_batch: micro,
        lr_scale: LrScale::None,
        base_batch: base,
    }
}

fn problem(noise: f64, rank: usize, world: usize) -> Problem {
    Problem::new(ProblemKind::Quadratic, 3)
        .with_gradient_noise(noise)
        .with_worker(rank, world)
        .unwrap()
}

/// `n σ² B₀ / |G|²` at the problem's initial weights.
fn true_noise_scale(noise: f64, base: u64) -> f64 {
    let exact = problem(0.0, 0, 1);
    let params = exact.init();
    let mut grads: Vec<Vec<f32>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
    exact.loss_and_grad(&params, &mut grads, 0).unwrap();
    let g_sq: f64 = grads.iter().flatten().map(|&g| f64::from(g).powi(2)).sum();
    let n = params.iter().map(Vec::len).sum::<usize>() as f64;
    n * noise * noise * base as f64 / g_sq
}

/// `steps` steps of `spec` at lr `lr` on `world` workers; worker 0's reports.
fn run(spec: &BatchSpec, lr: f64, noise: f64, world: usize, steps: u64) -> Vec<StepReport> {
    let one = |communicator: Box<dyn Communicator>| {
        let rank = communicator.rank();
        let mut model = ProblemModel::new(problem(noise, rank, world), DType::F32);
        let mut strategy = strategy(OptimizerKind::Sgd);
        strategy.batch = Some(spec.clone());
        let mut stepper = Stepper::new_with(
            NdArrayBackend::new(),
            constants(&[("lr", lr)]),
            strategy,
            &model.param_specs(),
            &model.params(),
            StepperOptions::new().with_communicator(communicator),
        )
        .unwrap();
        (0..steps)
            .map(|_| model.step(&mut stepper).unwrap())
            .collect::<Vec<_>>()
    };
    if world == 1 {
        return one(Box::new(SingleProcess));
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = ThreadCluster::new(world)
            .into_iter()
            .map(|c| scope.spawn(move || one(Box::new(c))))
            .collect();
        let mut results: Vec<Vec<StepReport>> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        results.swap_remove(0)
    })
}

fn gns(every: u64) -> ControllerSpec {
    ControllerSpec::Gns {
        from: 64,
        every: Interval::Steps(every),
        ema: 0.99,
        factor: 1.0,
    }
}

/// 1500 steps of `spec` at lr 0 on `workers` workers, gradient noise 1: the smoothed
/// `B_simple` of the last step is within 10% of the truth. Returns the reports.
fn assert_recovers_the_noise_scale(spec: &BatchSpec, workers: usize) -> Vec<StepReport> {
    let truth = true_noise_scale(1.0, 64);
    let reports = run(spec, 0.0, 1.0, workers, 1500);
    let estimate = reports.last().unwrap().batch.unwrap().noise_scale;
    let relative = (estimate - truth).abs() / truth;
    println!(
        "B_simple estimated {estimate:.6}, true {truth:.6} ({:.3}% off)",
        100.0 * relative
    );
    assert!(
        relative < 0.10,
        "B_simple {estimate} vs {truth} ({:.1}% off)",
        100.0 * relative
    );
    reports
}

#[test]
fn the_noise_scale_is_recovered_from_micro_batches() {
    // One worker, batch 64 in 8 micro-batches of 8; the batch is held (every: huge).
    let reports = assert_recovers_the_noise_scale(&spec(gns(1 << 40), 64, Some(8)), 1);
    assert!(reports.iter().all(|r| r.batch.unwrap().batch == 64));
}

#[test]
fn the_noise_scale_is_recovered_from_workers() {
    // Two workers of 32 each, no micro-batches: the worker's and the averaged gradient.
    assert_recovers_the_noise_scale(&spec(gns(1 << 40), 64, None), 2);
}

#[test]
fn one_batch_size_gives_no_estimate() {
    // One worker, no micro-batches: nothing to compare, the controller holds.
    let reports = run(&spec(gns(1), 64, None), 0.0, 1.0, 1, 20);
    assert!(reports
        .iter()
        .all(|r| r.batch.unwrap().noise_scale.is_nan()));
    assert!(reports.iter().all(|r| r.batch.unwrap().next_batch == 64));
}

#[test]
fn gns_follows_the_estimate_at_its_checks() {
    let truth = true_noise_scale(1.0, 64);
    let mut spec = spec(gns(500), 64, Some(8));
    spec.bounds = BatchBounds {
        min: 8,
        max: Some(4096),
        multiple_of: 8,
    };
    let reports = run(&spec, 0.0, 1.0, 1, 501);
    // Held until the check after step 499, then the estimate rounded to a multiple of 8.
    assert!(reports[..499]
        .iter()
        .all(|r| r.batch.unwrap().next_batch == 64));
    let at_check = reports[499].batch.unwrap();
    let expected = ((at_check.noise_scale / 8.0).round() * 8.0).max(8.0) as u64;
    assert_eq!(at_check.next_batch, expected);
    assert!(
        (expected as f64 - truth).abs() < 0.15 * truth + 8.0,
        "{expected} vs {truth}"
    );
    assert_eq!(reports[500].batch.unwrap().batch, expected);
}

fn adascale(scale: f64) -> ControllerSpec {
    ControllerSpec::AdaScale { scale, ema: 0.9 }
}

#[test]
fn adascale_gain_is_one_without_noise() {
    // S = 4: batch 64 from 4 micro-batches of the base batch 16.
    // The norms are summed in different orders on the two sides, so "no noise" is
    // no noise up to f32 rounding.
    let reports = run(&spec(adascale(4.0), 16, Some(16)), 0.01, 0.0, 1, 30);
    for (k, report) in reports.iter().enumerate() {
        let b = report.batch.unwrap();
        assert_eq!(b.batch, 64);
        assert!((b.gain - 1.0).abs() < 1e-6, "step {k}: gain {}", b.gain);
        assert_eq!(b.lr_factor, b.gain);
        // The clock advances by the gain, 1 per step, not by the scale 4.
        assert!(
            (b.progress - k as f64).abs() < 1e-5,
            "step {k}: {}",
            b.progress
        );
    }
}

#[test]
fn adascale_gain_is_the_scale_in_the_pure_noise_limit() {
    // Noise far above the gradient: r → S = 4 (workers of the base batch each).
    let reports = run(&spec(adascale(4.0), 16, None), 0.0, 1e4, 4, 200);
    let last = reports.last().unwrap().batch.unwrap();
    assert!((last.gain - 4.0).abs() < 0.05, "gain {}", last.gain);
    assert_eq!(last.lr_factor, last.gain);
    let clock: f64 = reports[..199]
        .iter()
        .map(|r| r.batch.unwrap().lr_factor)
        .sum();
    assert_eq!(last.progress, clock);
}

#[test]
fn the_clock_is_samples_over_the_base_batch_and_lr_follows_the_batch() {
    let ramp = ControllerSpec::Ramp {
        from: 32,
        to: 128,
        over: 256,
        stages: None,
    };
    let mut spec = spec(ramp, 32, None);
    spec.lr_scale = LrScale::Linear;
    spec.bounds.multiple_of = 32;
    let reports = run(&spec, 0.1, 0.01, 1, 8);
    let mut samples = 0u64;
    for report in &reports {
        let b = report.batch.unwrap();
        assert_eq!(b.progress, samples as f64 / 32.0);
        // Goyal's rule: lr × B/B₀, in the effective lr of the bins.
        assert_eq!(b.lr_factor, b.batch as f64 / 32.0);
        let (_, effective) = &report.group_lrs[0];
        assert!((effective - 0.1 * b.lr_factor).abs() < 1e-15);
        samples += b.batch;
        assert_eq!(b.samples, samples);
    }
    // 32 + 96·s/256, nearest multiple of 32: s = 0 → 32, 32 → 44 → 32, 64 → 56 → 64,
    // 128 → 80 → 96 (2.5 rounds up), 224 → 116 → 128, then 128.
    let batches: Vec<u64> = reports.iter().map(|r| r.batch.unwrap().batch).collect();
    assert_eq!(batches, [32, 32, 64, 96, 128, 128, 128, 128]);
}

#[test]
fn resume_is_bit_for_bit_with_batch_control() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gns.ckpt");
    let mut spec = spec(gns(7), 64, Some(16));
    spec.bounds = BatchBounds {
        min: 16,
        max: Some(512),
        multiple_of: 16,
    };
    let make = || {
        let model = ProblemModel::new(problem(0.3, 0, 1), DType::F32);
        let mut strategy = strategy(OptimizerKind::Sgd);
        strategy.batch = Some(spec.clone());
        (model, strategy)
    };
    let (mut model, strategy) = make();
    let graph = constants(&[("lr", 0.05)]);
    let mut straight = Stepper::new(
        NdArrayBackend::new(),
        graph.clone(),
        strategy.clone(),
        &model.param_specs(),
        &model.params(),
    )
    .unwrap();
    let expected: Vec<String> = (0..40)
        .map(|_| format!("{:?}", model.step(&mut straight).unwrap()))
        .collect();

    let (mut model, strategy) = make();
    let mut first = Stepper::new(
        NdArrayBackend::new(),
        graph.clone(),
        strategy.clone(),
        &model.param_specs(),
        &model.params(),
    )
    .unwrap();
    let mut got: Vec<String> = (0..17)
        .map(|_| format!("{:?}", model.step(&mut first).unwrap()))
        .collect();
    first.save(&path).unwrap();
    let mut resumed = Stepper::load(
        &path,
        NdArrayBackend::new(),
        graph,
        strategy,
        &model.param_specs(),
    )
    .unwrap();
    model.load_master(&resumed).unwrap();
    assert_eq!(resumed.next_batch(), first.next_batch());
    got.extend((17..40).map(|_| format!("{:?}", model.step(&mut resumed).unwrap())));
    assert_eq!(got, expected);
    // The batch did move, so the state that was saved mattered.
    assert!(expected.iter().any(|r| !r.contains("batch: 64,")));
}

#[test]
fn a_checkpoint_without_batch_state_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.ckpt");
    let model = ProblemModel::new(problem(0.0, 0, 1), DType::F32);
    let graph = constants(&[("lr", 0.05)]);
    let plain = Stepper::new(
        NdArrayBackend::new(),
        graph.clone(),
        strategy(OptimizerKind::Sgd),
        &model.param_specs(),
        &model.params(),
    )
    .unwrap();
    plain.save(&path).unwrap();
    let mut controlled = strategy(OptimizerKind::Sgd);
    controlled.batch = Some(spec(gns(5), 64, None));
    let error = Stepper::<NdArrayBackend>::load(
        &path,
        NdArrayBackend::new(),
        graph,
        controlled,
        &model.param_specs(),
    )
    .err()
    .unwrap();
    // Another strategy: refused by its fingerprint before any state is read.
    assert!(error.to_string().contains("different script"), "{error}");
}
