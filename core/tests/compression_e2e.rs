//! End to end: the built-in logistic problem (a tanh MLP on 2-class data) trained
//! through the stepper with gradient compression, against the same training
//! uncompressed.
//!
//! The problem is made 256 hidden units wide (1 793 parameters), so that "1%" means
//! something: top-k at 1% sends `⌈0.01·n⌉` elements per tensor — 11 of the 1 024
//! first-layer weights, 3 of each 256-element tensor and the single output bias — 21
//! values per step, 1.2% of the model.
//!
//! - **top-k 1% with error feedback** reaches the uncompressed loss within the
//!   tolerance stated on the test: with memory, sparsified SGD converges at the rate of
//!   SGD once the `d/k` delay of the residual has been paid (Stich, Cordonnier &
//!   Jaggi 2018, Theorem 2.4), so after enough steps the gap closes;
//! - **sign without error feedback** is worse than sign with it: scaled sign
//!   compression is biased, and without memory the bias is never corrected
//!   (Karimireddy et al. 2019, "Error feedback fixes SignSGD").

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod stepper_support;

use regimen_core::comm::{Communicator, ThreadCluster};
use regimen_core::plugin::{ArgValue, Args};
use regimen_core::problem::{Problem, ProblemKind, ProblemModel};
use regimen_core::runtime::StepperOptions;
use regimen_core::{CompressSpec, DType, NdArrayBackend, OptimizerKind, Stepper, Strategy};
use stepper_support::{constants, strategy};

/// Hidden units of the problem (see the module documentation).
const HIDDEN: usize = 256;

fn problem() -> Problem {
    Problem::new(ProblemKind::Logistic, 3).with_hidden(HIDDEN)
}

fn compressed(method: &str, args: &[(&str, f64)], error_feedback: Option<bool>) -> Strategy {
    let mut sgd = strategy(OptimizerKind::Sgd);
    let mut bag = Args::new();
    for &(name, value) in args {
        bag = bag.with(name, ArgValue::Number(value));
    }
    sgd.compress = Some(CompressSpec {
        method: method.to_owned(),
        args: bag,
        scheduled: Vec::new(),
        error_feedback,
    });
    sgd
}

/// Train `strategy` (plain SGD at lr 0.1, the setting of the error-feedback analyses)
/// for `steps` on `world` workers, each on its shard of the data (minibatches of 32),
/// and return the full-data loss of the final weights (the same on every worker) and
/// rank 0's mean relative compression error `‖x − r‖/‖x‖` over the run.
fn train(strategy: &Strategy, steps: u64, world: usize) -> (f64, f64) {
    let graph = constants(&[("lr", 0.1)]);
    let run = |comm: Box<dyn Communicator>| {
        let (rank, world) = (comm.rank(), comm.world());
        let problem = problem().with_worker(rank, world).unwrap();
        let mut model = ProblemModel::new(problem, DType::F32);
        let mut stepper = Stepper::new_with(
            NdArrayBackend::new(),
            graph.clone(),
            strategy.clone(),
            &model.param_specs(),
            &model.params(),
            StepperOptions::new().with_communicator(comm).with_seed(1),
        )
        .unwrap();
        let mut error_sum = 0.0;
        for _ in 0..steps {
            let report = model.step(&mut stepper).unwrap();
            if let Some(entry) = report.compression.first() {
                error_sum += entry.relative_error;
            }
        }
        let loss = model.problem().full_loss(&model.params_f32()).unwrap();
        (loss, error_sum / steps as f64)
    };
    let results: Vec<(f64, f64)> = std::thread::scope(|scope| {
        let run = &run;
        let handles: Vec<_> = ThreadCluster::new(world)
            .into_iter()
            .map(|comm| scope.spawn(move || run(Box::new(comm))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (loss, _) in &results[1..] {
        assert_eq!(loss.to_bits(), results[0].0.to_bits(), "workers disagree");
    }
    results[0]
}

/// The loss of the initial weights, for scale.
fn initial_loss() -> f64 {
    let problem = problem();
    problem.full_loss(&problem.init()).unwrap()
}

/// Top-k 1% with error feedback on 2 workers ends within 3% (relative) of the
/// uncompressed run's full-data loss after 2 000 steps (125 epochs of each worker's
/// 128-sample shard), while top-k without memory stays more than 10% above it.
///
/// Why 3%: the residual delays each coordinate's update until it is among the
/// largest (about `d/k ≈ 85` steps for the slowest ones), and with memory nothing is
/// lost, only late; after 2 000 steps at lr 0.1 the lateness is a small fraction of the
/// run, so the losses agree to well under 3% (0.2% on this machine: 0.1263 against
/// 0.1260, from 0.685 at the start), whereas a method that drops 97% of each input
/// for good lags by about 25% (0.159). The tolerance leaves room for other platforms'
/// `tanh`/`exp` roundings without letting the no-memory run pass.
#[test]
fn topk_one_percent_with_error_feedback_reaches_the_uncompressed_loss() {
    const STEPS: u64 = 2000;
    let start = initial_loss();
    let (dense, _) = train(&strategy(OptimizerKind::Sgd), STEPS, 2);
    let (topk, topk_error) = train(
        &compressed("topk", &[("ratio", 0.01)], Some(true)),
        STEPS,
        2,
    );
    let (no_memory, _) = train(
        &compressed("topk", &[("ratio", 0.01)], Some(false)),
        STEPS,
        2,
    );
    println!(
        "start {start:.4}, dense {dense:.4}, topk 1% + ef {topk:.4} (mean relative error \
         {topk_error:.3}), topk 1% without ef {no_memory:.4}"
    );
    assert!(
        dense < 0.5 * start,
        "dense training did not learn: {start} -> {dense}"
    );
    assert!(
        (topk - dense).abs() <= 0.03 * dense,
        "top-k 1% + error feedback: {topk}, uncompressed: {dense}"
    );
    assert!(
        no_memory > 1.1 * dense,
        "without memory {no_memory}, uncompressed {dense}"
    );
    // The compressor really dropped most of what it was given.
    assert!(topk_error > 0.9, "mean relative error {topk_error}");
}

/// Scaled sign (one bit per element, scaled by mean |g|; error feedback on by default)
/// against the same with `error_feedback: false`, 1 000 steps on 2 workers: without
/// memory the full-data loss ends clearly higher (0.242 against 0.168 on this machine,
/// where uncompressed SGD reaches 0.168 too), so the test asks for at least 10% more.
#[test]
fn sign_without_error_feedback_is_worse_than_with_it() {
    const STEPS: u64 = 1000;
    let (with, _) = train(&compressed("sign", &[], None), STEPS, 2);
    let (without, _) = train(&compressed("sign", &[], Some(false)), STEPS, 2);
    let (dense, _) = train(&strategy(OptimizerKind::Sgd), STEPS, 2);
    println!("uncompressed {dense:.4}, sign + ef {with:.4}, sign without ef {without:.4}");
    assert!(
        without > 1.1 * with,
        "with error feedback {with}, without {without}"
    );
}
