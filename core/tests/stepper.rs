//! The stepper around the optimizers: binding (groups, warnings, layer-wise decay),
//! mixed precision and loss scaling (skipped steps), gradient clipping, the report,
//! and bad input (every error leaves the state as it was).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod stepper_support;

use half::{bf16, f16};
use regimen_core::runtime::RuntimeError;
use regimen_core::{
    AtMinScale, BinaryOp, DType, DynamicLossScale, GroupRule, HostTensor, HostTensorMut, Hyper,
    LayerDecay, LossScaleSpec, Metrics, NdArrayBackend, Node, OptimizerKind, ParamSpec,
    PrecisionSpec, ScalarGraph, Schedule, StepReport, Stepper, Strategy,
};
use stepper_support::{close, close_all, constant, constants, group, report_bits, strategy, Model};

// ---------------------------------------------------------------- binding

#[test]
fn binding_lists_rules_and_warns_about_globs_matching_nothing() {
    let graph = constants(&[
        ("lr", 0.1),
        ("weight_decay", 0.01),
        ("group1.weight_decay", 0.0),
        ("group2.lr", 0.01),
        ("group2.momentum", 0.5),
    ]);
    let mut adam = strategy(OptimizerKind::Adam);
    adam.groups = vec![
        group(&["*.bias", "*.bais"], &[Hyper::WeightDecay]),
        group(&["embed.*"], &[Hyper::Lr, Hyper::Momentum]),
    ];
    let model = Model::new(
        graph,
        adam,
        &[
            ("embed.weight", &[0.0]),
            ("fc.weight", &[0.0]),
            ("fc.bias", &[0.0]),
        ],
    );
    let binding = model.stepper.binding();
    assert_eq!(
        binding.warnings,
        vec![
            "group 2 sets `momentum`, which adam does not use".to_owned(),
            "group 1 pattern \"*.bais\" matches no parameter".to_owned(),
        ]
    );
    let bias = binding.param("fc.bias").unwrap();
    assert_eq!(bias.groups, vec![0]);
    assert_eq!(
        bias.hypers,
        vec![
            (Hyper::Lr, "lr".to_owned()),
            (Hyper::Beta1, "default (0.9)".to_owned()),
            (Hyper::Beta2, "default (0.999)".to_owned()),
            (Hyper::Eps, "default (0.00000001)".to_owned()),
            (Hyper::WeightDecay, "group1.weight_decay".to_owned()),
        ]
    );
    assert_eq!(binding.lr_bins, vec!["group2.lr", "lr"]);
    assert_eq!(binding.params[0].bin, 0);
    assert_eq!(binding.params[2].bin, 1);
    assert_eq!(
        binding.describe(),
        "\
param         groups  lr         lr scale  depth  trust
embed.weight  2       group2.lr  1         -      on
fc.weight     -       lr         1         -      on
fc.bias       1       lr         1         -      on
warning: group 2 sets `momentum`, which adam does not use
warning: group 1 pattern \"*.bais\" matches no parameter
"
    );
}

#[test]
fn later_groups_override_earlier_ones_field_by_field() {
    // group 1 "*" sets lr 0.2 and weight decay 0.5; group 2 "b" sets only lr 0.3, so
    // `b` keeps group 1's weight decay. SGD: p ← p − lr·(g + λp), p = g = 1.
    let graph = constants(&[
        ("lr", 0.1),
        ("group1.lr", 0.2),
        ("group1.weight_decay", 0.5),
        ("group2.lr", 0.3),
    ]);
    let mut sgd = strategy(OptimizerKind::Sgd);
    sgd.groups = vec![
        group(&["*"], &[Hyper::Lr, Hyper::WeightDecay]),
        group(&["b"], &[Hyper::Lr]),
    ];
    let mut model = Model::new(graph, sgd, &[("a", &[1.0]), ("b", &[1.0])]);
    let report = model.step(&[&[1.0], &[1.0]]);
    // a: 1 − 0.2·1.5 = 0.7; b: 1 − 0.3·1.5 = 0.55
    close_all(&model.params[0], &[0.7]);
    close_all(&model.params[1], &[0.55]);
    assert_eq!(
        report.group_lrs,
        vec![("group1.lr".to_owned(), 0.2), ("group2.lr".to_owned(), 0.3)]
    );
}

#[test]
fn layer_decay_from_declared_depths() {
    // BEiT-style LLRD: lr·0.75^(depth_max − depth), depth_max = 2; `head` has no depth
    // and counts as depth_max; the `norm` group turns layer decay off.
    let mut sgd = strategy(OptimizerKind::Sgd);
    sgd.layer_decay = Some(LayerDecay {
        factor: 0.75,
        depth_patterns: Vec::new(),
    });
    sgd.groups = vec![GroupRule {
        layer_decay: Some(false),
        ..group(&["*norm*"], &[])
    }];
    let specs = [
        ParamSpec::new("embed", &[1]).with_depth(0),
        ParamSpec::new("layers.0", &[1]).with_depth(1),
        ParamSpec::new("layers.1", &[1]).with_depth(2),
        ParamSpec::new("head", &[1]),
        ParamSpec::new("embed_norm", &[1]).with_depth(0),
    ];
    let one: &[f32] = &[1.0];
    let mut model = Model::with_specs(
        constants(&[("lr", 0.1)]),
        sgd,
        &specs,
        &[
            ("embed", one),
            ("layers.0", one),
            ("layers.1", one),
            ("head", one),
            ("embed_norm", one),
        ],
    );
    let binding = model.stepper.binding();
    assert_eq!(binding.depth_max, Some(2));
    let scales: Vec<f64> = binding.params.iter().map(|p| p.lr_scale).collect();
    // 0.75² = 0.5625, 0.75¹, 0.75⁰, no depth → 1, layer decay off → 1
    assert_eq!(scales, vec![0.5625, 0.75, 1.0, 1.0, 1.0]);
    assert_eq!(binding.lr_bins, vec!["lr×0.75^2", "lr×0.75^1", "lr"]);
    let report = model.step(&[one, one, one, one, one]);
    // p = 1 − 0.1·scale·1
    close_all(&model.params[0], &[1.0 - 0.05625]);
    close_all(&model.params[1], &[1.0 - 0.075]);
    close_all(&model.params[2], &[0.9]);
    close_all(&model.params[3], &[0.9]);
    close_all(&model.params[4], &[0.9]);
    let lrs: Vec<f64> = report.group_lrs.iter().map(|(_, lr)| *lr).collect();
    close(lrs[0], 0.05625);
    close(lrs[1], 0.075);
    close(lrs[2], 0.1);
}

#[test]
fn layer_decay_from_depth_captures() {
    // Depths from `blocks.{depth}.*` (a layer_decay pattern) and from a group pattern
    // `stem{depth}*`; depth_max = 3.
    let graph = constants(&[("lr", 1.0), ("group1.weight_decay", 0.0)]);
    let mut sgd = strategy(OptimizerKind::Sgd);
    sgd.layer_decay = Some(LayerDecay {
        factor: 0.5,
        depth_patterns: vec!["blocks.{depth}.*".into(), "unused.{depth}".into()],
    });
    sgd.groups = vec![group(&["stem{depth}*"], &[Hyper::WeightDecay])];
    let one: &[f32] = &[1.0];
    let model = Model::new(
        graph,
        sgd,
        &[
            ("stem0.conv", one),
            ("blocks.1.w", one),
            ("blocks.3.w", one),
            ("head.w", one),
        ],
    );
    let binding = model.stepper.binding();
    let depths: Vec<Option<u32>> = binding.params.iter().map(|p| p.depth).collect();
    assert_eq!(depths, vec![Some(0), Some(1), Some(3), None]);
    let scales: Vec<f64> = binding.params.iter().map(|p| p.lr_scale).collect();
    // 0.5³, 0.5², 1, 1
    assert_eq!(scales, vec![0.125, 0.25, 1.0, 1.0]);
    assert_eq!(
        binding.warnings,
        vec!["layer_decay pattern \"unused.{depth}\" matches no parameter".to_owned()]
    );
    assert!(binding
        .describe()
        .contains("note: parameters without a depth count as depth 3 (lr scale 1): head.w"));
}

fn bind_error(graph: ScalarGraph, strategy: Strategy, specs: &[ParamSpec]) -> RuntimeError {
    let data: Vec<Vec<f32>> = specs.iter().map(|s| vec![0.0; s.numel()]).collect();
    let initial: Vec<HostTensor<'_>> = data.iter().map(|d| HostTensor::F32(d)).collect();
    match Stepper::new(NdArrayBackend::new(), graph, strategy, specs, &initial) {
        Ok(_) => panic!("binding should fail"),
        Err(error) => error,
    }
}

#[test]
fn binding_errors() {
    let lr = || constants(&[("lr", 0.1)]);
    let sgd = || strategy(OptimizerKind::Sgd);
    let w = || ParamSpec::new("w", &[2]);

    let error = bind_error(constants(&[("momentum", 0.9)]), sgd(), &[w()]);
    assert!(matches!(error, RuntimeError::MissingLr), "{error}");

    let error = bind_error(lr(), sgd(), &[w(), w()]);
    assert!(
        matches!(error, RuntimeError::DuplicateParam(ref n) if n == "w"),
        "{error}"
    );

    let mut half = sgd();
    half.precision = PrecisionSpec::with_default_scaling(DType::F16);
    let error = bind_error(lr(), half, &[w().with_dtype(DType::BF16)]);
    assert_eq!(
        error.to_string(),
        "parameter `w` is bf16, but the script's precision is f16 (parameters may be f32 or f16)"
    );

    let mut bad_glob = sgd();
    bad_glob.groups = vec![group(&[""], &[])];
    let error = bind_error(lr(), bad_glob, &[w()]);
    assert!(matches!(error, RuntimeError::Strategy(_)), "{error}");
    assert!(
        error.to_string().contains("group 1 pattern \"\""),
        "{error}"
    );

    let mut missing_output = sgd();
    missing_output.groups = vec![group(&["*"], &[Hyper::WeightDecay])];
    let error = bind_error(lr(), missing_output, &[w()]);
    assert_eq!(
        error.to_string(),
        "invalid strategy: group 1 sets `weight_decay`, but the graph has no output `group1.weight_decay`"
    );

    // Initial values: count, length, dtype.
    let data = [0.0f32; 3];
    let new = |initial: &[HostTensor<'_>]| {
        Stepper::new(NdArrayBackend::new(), lr(), sgd(), &[w()], initial).err()
    };
    assert!(matches!(
        new(&[]),
        Some(RuntimeError::TensorCount {
            what: "initial values",
            expected: 1,
            actual: 0
        })
    ));
    assert!(matches!(
        new(&[HostTensor::F32(&data)]),
        Some(RuntimeError::TensorMismatch {
            what: "initial value",
            expected_len: 2,
            actual_len: 3,
            ..
        })
    ));
    let half = [f16::ZERO; 2];
    assert!(matches!(
        new(&[HostTensor::F16(&half)]),
        Some(RuntimeError::TensorMismatch {
            actual_dtype: "f16",
            ..
        })
    ));
}

// ---------------------------------------------------------------- precision

/// A stepper over half-precision parameters with its model copies.
struct HalfModel {
    stepper: Stepper<NdArrayBackend>,
    params: Vec<Vec<f16>>,
}

impl HalfModel {
    fn new(graph: ScalarGraph, strategy: Strategy, initial: &[&[f32]]) -> Self {
        let params: Vec<Vec<f16>> = initial
            .iter()
            .map(|p| p.iter().map(|&x| f16::from_f32(x)).collect())
            .collect();
        let specs: Vec<ParamSpec> = params
            .iter()
            .enumerate()
            .map(|(i, p)| ParamSpec::new(format!("p{i}"), &[p.len()]).with_dtype(DType::F16))
            .collect();
        let tensors: Vec<HostTensor<'_>> = params.iter().map(|p| HostTensor::F16(p)).collect();
        let stepper =
            Stepper::new(NdArrayBackend::new(), graph, strategy, &specs, &tensors).unwrap();
        Self { stepper, params }
    }

    /// One step whose gradients are `true_grads · loss_scale` rounded to f16 (the
    /// backward pass of a scaled loss), or ±inf where the value is infinite.
    fn step(&mut self, true_grads: &[&[f32]]) -> Result<StepReport, RuntimeError> {
        let scale = self.stepper.loss_scale() as f32;
        let grads: Vec<Vec<f16>> = true_grads
            .iter()
            .map(|g| g.iter().map(|&x| f16::from_f32(x * scale)).collect())
            .collect();
        let grads: Vec<HostTensor<'_>> = grads.iter().map(|g| HostTensor::F16(g)).collect();
        let mut params: Vec<HostTensorMut<'_>> = self
            .params
            .iter_mut()
            .map(|p| HostTensorMut::F16(p))
            .collect();
        self.stepper.step(&mut params, &grads, &Metrics::default())
    }

    fn master(&self, index: usize) -> Vec<f32> {
        let mut out = vec![0.0; self.params[index].len()];
        self.stepper.read_master(index, &mut out).unwrap();
        out
    }
}

fn half_strategy(kind: OptimizerKind, loss_scale: LossScaleSpec) -> Strategy {
    let mut s = strategy(kind);
    s.precision = PrecisionSpec {
        dtype: DType::F16,
        loss_scale,
    };
    s
}

#[test]
fn half_parameters_keep_f32_master_weights() {
    // SGD lr 0.1, g = 0.001: each step moves the master by 1e-4, less than half the
    // f16 spacing below 1 (2⁻¹¹ ≈ 4.9e-4), so the f16 copy stays 1 for a while,
    // while the f32 master keeps every step.
    let mut model = HalfModel::new(
        constants(&[("lr", 0.1)]),
        half_strategy(OptimizerKind::Sgd, LossScaleSpec::None),
        &[&[1.0, 0.5]],
    );
    model.step(&[&[0.001, 0.001]]).unwrap();
    assert_eq!(model.params[0][0], f16::ONE);
    for _ in 0..9 {
        model.step(&[&[0.001, 0.001]]).unwrap();
    }
    let master = model.master(0);
    // 10 steps of 1e-4 (the f16 gradient 0.001 is 0.0010004044 exactly):
    // 1 − 10·0.1·0.0010004044 = 0.9989995956
    close_all(&master, &[0.998_999_595_6, 0.498_999_595_6]);
    // The model's copy is the master rounded to f16 (to nearest even).
    let expected: Vec<f16> = master.iter().map(|&x| f16::from_f32(x)).collect();
    assert_eq!(model.params[0], expected);
    assert_ne!(model.params[0][0], f16::ONE);
}

#[test]
fn bf16_parameters_round_trip_through_the_master() {
    let mut s = strategy(OptimizerKind::Sgd);
    s.precision = PrecisionSpec::with_default_scaling(DType::BF16);
    let mut params = vec![bf16::from_f32(1.0), bf16::from_f32(-2.0)];
    let specs = [ParamSpec::new("w", &[2]).with_dtype(DType::BF16)];
    let mut stepper = Stepper::new(
        NdArrayBackend::new(),
        constants(&[("lr", 0.5)]),
        s,
        &specs,
        &[HostTensor::BF16(&params)],
    )
    .unwrap();
    assert_eq!(stepper.loss_scale(), 1.0);
    let grads = [bf16::from_f32(0.25), bf16::from_f32(1.0)];
    stepper
        .step(
            &mut [HostTensorMut::BF16(&mut params)],
            &[HostTensor::BF16(&grads)],
            &Metrics::default(),
        )
        .unwrap();
    // [1 − 0.125, −2 − 0.5]: both exact in bf16.
    assert_eq!(params, [bf16::from_f32(0.875), bf16::from_f32(-2.5)]);
}

fn dynamic(init: f64) -> DynamicLossScale {
    DynamicLossScale {
        init,
        growth: 2.0,
        backoff: 0.5,
        interval: 2,
        hysteresis: 1,
        min_scale: 1.0,
        at_min: AtMinScale::Error,
    }
}

/// lr constant (so runs with and without the skipped steps are comparable) and a
/// `probe` output, linear over 100 steps, that shows where the schedules are.
fn adam_graph_with_probe() -> ScalarGraph {
    let mut graph = constants(&[("lr", 0.01)]);
    let linear = graph.push(Node::Schedule(Schedule::Linear { from: 0.0, to: 1.0 }));
    let probe = graph.push(Node::Over {
        inner: linear,
        len: 100.0,
    });
    graph.add_output("probe", probe);
    graph
}

#[test]
fn dynamic_loss_scaling_skips_overflowing_steps() {
    // GradScaler with init 8, growth 2, backoff 0.5, interval 2:
    //   step  grads     scale used  next  why
    //   0     finite    8           8     growth tracker 1
    //   1     finite    8           16    tracker 2 = interval: grow
    //   2     inf       16          8     overflow: back off, skip
    //   3     finite    8           8     tracker 1
    //   4     inf       8           4     back off, skip
    //   5     NaN       4           2     back off, skip
    //   6     finite    2           2     tracker 1
    //   7     finite    2           4     grow
    //   8     finite    4           4     tracker 1
    let good: [[f32; 2]; 6] = [
        [0.5, -0.25],
        [0.125, 0.75],
        [-1.0, 0.5],
        [0.25, 0.25],
        [-0.5, 1.0],
        [2.0, -0.125],
    ];
    let overflow = [f32::INFINITY, 0.5];
    let not_a_number = [0.5, f32::NAN];
    let sequence: [&[f32; 2]; 9] = [
        &good[0],
        &good[1],
        &overflow,
        &good[2],
        &overflow,
        &not_a_number,
        &good[3],
        &good[4],
        &good[5],
    ];
    let mut model = HalfModel::new(
        adam_graph_with_probe(),
        half_strategy(OptimizerKind::Adam, LossScaleSpec::Dynamic(dynamic(8.0))),
        &[&[1.0, -1.0]],
    );
    // The same model without loss scaling, fed only the finite steps: Adam's step
    // count must not advance on a skipped step, so the two runs agree bit for bit.
    let mut reference = HalfModel::new(
        adam_graph_with_probe(),
        half_strategy(OptimizerKind::Adam, LossScaleSpec::None),
        &[&[1.0, -1.0]],
    );

    let mut used = Vec::new();
    let mut next = Vec::new();
    let mut skipped = Vec::new();
    for (step, grads) in sequence.iter().enumerate() {
        let master_before = model.master(0);
        let params_before = model.params.clone();
        let report = model.step(&[&grads[..]]).unwrap();
        assert_eq!(report.step, step as u64);
        // The probe shows the schedules advancing on every step, skipped or not.
        close(report.scalars[1].1, step as f64 / 100.0);
        used.push(report.loss_scale);
        next.push(report.next_loss_scale);
        skipped.push(report.skipped);
        if report.skipped {
            assert_eq!(model.master(0), master_before);
            assert_eq!(model.params, params_before);
            assert!(report.grad_norm.is_nan());
            assert_eq!(report.update_norm, 0.0);
        } else {
            reference.step(&[&grads[..]]).unwrap();
            assert_eq!(model.master(0), reference.master(0));
            assert_eq!(model.params, reference.params);
            // The unscaled gradient: ‖g‖ exactly (every value is exact in f16).
            let norm = grads
                .iter()
                .map(|&g| f64::from(g).powi(2))
                .sum::<f64>()
                .sqrt();
            assert_eq!(report.grad_norm, norm);
        }
        assert_eq!(report.updates, reference.stepper.updates());
    }
    assert_eq!(used, vec![8.0, 8.0, 16.0, 8.0, 8.0, 4.0, 2.0, 2.0, 4.0]);
    assert_eq!(next, vec![8.0, 16.0, 8.0, 8.0, 4.0, 2.0, 2.0, 4.0, 4.0]);
    assert_eq!(
        skipped,
        vec![false, false, true, false, true, true, false, false, false]
    );
    assert_eq!(model.stepper.step_index(), 9);
    assert_eq!(model.stepper.updates(), 6);
    assert_eq!(model.stepper.loss_scale(), 4.0);
}

#[test]
fn overflow_at_the_minimum_scale() {
    // min_scale = init = 1: with `at_min: error` an overflow is an error that changes
    // nothing; with `at_min: skip` the step is skipped at the minimum.
    let mut at_min = dynamic(1.0);
    let mut model = HalfModel::new(
        constants(&[("lr", 0.1)]),
        half_strategy(OptimizerKind::Sgd, LossScaleSpec::Dynamic(at_min.clone())),
        &[&[1.0]],
    );
    model.step(&[&[0.5]]).unwrap();
    let error = model.step(&[&[f32::INFINITY]]).unwrap_err();
    assert!(
        matches!(error, RuntimeError::LossScaleAtMinimum { step: 1, scale } if scale == 1.0),
        "{error}"
    );
    assert_eq!(model.stepper.step_index(), 1);
    assert_eq!(model.stepper.scaler().growth_tracker(), 1);
    // 1 − 0.1·0.5
    close_all(&model.master(0), &[0.95]);
    // The run can go on with finite gradients: the growth tracker reaches 2 and the
    // scale grows.
    let report = model.step(&[&[0.5]]).unwrap();
    assert_eq!(report.next_loss_scale, 2.0);

    at_min.at_min = AtMinScale::Skip;
    let mut model = HalfModel::new(
        constants(&[("lr", 0.1)]),
        half_strategy(OptimizerKind::Sgd, LossScaleSpec::Dynamic(at_min)),
        &[&[1.0]],
    );
    let report = model.step(&[&[f32::INFINITY]]).unwrap();
    assert!(report.skipped);
    assert_eq!(report.next_loss_scale, 1.0);
    assert_eq!(model.master(0), vec![1.0]);
}

// ---------------------------------------------------------------- clipping

fn clipped_model(clip_norm: f64) -> Model {
    Model::new(
        constants(&[("lr", 1.0), ("clip_norm", clip_norm)]),
        strategy(OptimizerKind::Sgd),
        &[("a", &[0.0]), ("b", &[0.0])],
    )
}

#[test]
fn global_norm_clipping() {
    // clip_grad_norm_: total = ‖(3, 4)‖ = 5; coef = max/(total + 1e-6), applied when
    // below 1. max 1: coef = 1/5.000001 = 0.19999996; p = 0 − 1·g·coef.
    let mut model = clipped_model(1.0);
    let report = model.step(&[&[3.0], &[4.0]]);
    let coef = 1.0 / (5.0 + 1e-6);
    assert_eq!(report.grad_norm, 5.0);
    close(report.clipped_grad_norm, 5.0 * coef);
    close_all(&model.params[0], &[-3.0 * coef]);
    close_all(&model.params[1], &[-4.0 * coef]);

    // max 10: coef = 10/5.000001 > 1, the gradients pass unchanged.
    let mut model = clipped_model(10.0);
    let report = model.step(&[&[3.0], &[4.0]]);
    assert_eq!(report.clipped_grad_norm, 5.0);
    assert_eq!(model.params, vec![vec![-3.0], vec![-4.0]]);
}

// ---------------------------------------------------------------- report

/// `update_norm` is `sqrt(Σ (w_new − w_old)²)` over every master weight, each change
/// the f32 difference, for every optimizer, bit for bit: with tensors this short the
/// backend adds the squares element by element, and the stepper adds the tensors'
/// sums in parameter order — which is what the reference below does.
#[test]
fn update_norm_is_the_f32_change_of_the_master_weights_for_every_optimizer() {
    let variants = OptimizerKind::ALL
        .into_iter()
        .map(|kind| (kind, false))
        .chain([(OptimizerKind::Sgd, true)]);
    for (kind, nesterov) in variants {
        let mut outputs = vec![("lr", 0.1), ("weight_decay", 0.01)];
        if kind.hypers().contains(&Hyper::Momentum) {
            outputs.push(("momentum", 0.9));
        }
        let mut spec = strategy(kind);
        spec.optimizer.nesterov = nesterov;
        let mut model = Model::new(
            constants(&outputs),
            spec,
            &[
                ("w", &[1.0, -2.0, 0.5, 3.0, -0.25]),
                ("b", &[0.1, -0.3, 0.7]),
            ],
        );
        let grads: [[&[f32]; 2]; 3] = [
            [&[0.5, 1.0, -0.25, 2.0, 0.125], &[1.0, -0.5, 0.25]],
            [&[-1.0, 0.25, 0.75, -0.5, 1.5], &[0.3, 0.2, -0.1]],
            [&[2.0, -0.5, 0.1, 0.3, -0.7], &[-0.6, 0.9, 0.4]],
        ];
        for (step, grads) in grads.iter().enumerate() {
            let before = model.masters();
            let report = model.step(grads);
            let after = model.masters();
            let expected = before
                .iter()
                .zip(&after)
                .map(|(before, after)| {
                    before.iter().zip(after).fold(0.0, |sum, (&old, &new)| {
                        let change = f64::from(new - old);
                        sum + change * change
                    })
                })
                .fold(0.0, |total, tensor| total + tensor)
                .sqrt();
            assert!(expected > 0.0);
            assert_eq!(
                report.update_norm.to_bits(),
                expected.to_bits(),
                "{} (nesterov {nesterov}), step {step}: {} vs {expected}",
                kind.name(),
                report.update_norm
            );
        }
    }
}

#[test]
fn report_carries_scalars_loss_and_update_norm() {
    let graph = constants(&[("lr", 0.01), ("weight_decay", 0.1)]);
    let mut model = Model::new(
        graph,
        strategy(OptimizerKind::AdamW),
        &[("w", &[1.0, -0.5])],
    );
    let before = model.master(0);
    let mut params = model.params.clone();
    let report = model
        .stepper
        .step(
            &mut [HostTensorMut::F32(&mut params[0])],
            &[HostTensor::F32(&[0.5, -1.0])],
            &Metrics::from_loss(2.5),
        )
        .unwrap();
    assert_eq!(report.loss, Some(2.5));
    assert_eq!(
        report.scalars,
        vec![("lr".to_owned(), 0.01), ("weight_decay".to_owned(), 0.1)]
    );
    assert_eq!(report.trust_ratio, None);
    // Adam: the change of the f32 master weights, measured.
    let after = model.master(0);
    let change = before
        .iter()
        .zip(&after)
        .map(|(&b, &a)| f64::from(b - a).powi(2))
        .sum::<f64>()
        .sqrt();
    close(report.update_norm, change);

    let mut out = [0.0f32; 2];
    assert!(matches!(
        model.stepper.read_master(1, &mut out),
        Err(RuntimeError::NoSuchParam { index: 1, count: 1 })
    ));
    assert!(matches!(
        model.stepper.read_master(0, &mut [0.0; 3]),
        Err(RuntimeError::TensorMismatch { .. })
    ));
}

// ---------------------------------------------------------------- bad input

const W0: [f32; 2] = [1.0, -0.5];
const GA: [f32; 2] = [0.5, -1.0];
const GB: [f32; 2] = [-0.25, 0.75];

fn adam_model(graph: ScalarGraph) -> Model {
    let mut adam = strategy(OptimizerKind::Adam);
    adam.optimizer.amsgrad = true;
    Model::new(graph, adam, &[("w", &W0), ("b", &[0.25])])
}

#[test]
fn malformed_calls_change_nothing() {
    let graph = constants(&[("lr", 0.01), ("momentum", 0.9)]);
    let mut model = adam_model(graph.clone());
    let mut fresh = adam_model(graph);
    let first = model.step(&[&GA, &[1.0]]);
    fresh.step(&[&GA, &[1.0]]);
    let masters = model.masters();

    // Gradient count.
    let error = model.try_step(&[&GB]).unwrap_err();
    assert!(matches!(
        error,
        RuntimeError::TensorCount {
            what: "gradients",
            expected: 2,
            actual: 1
        }
    ));
    // Gradient length.
    let error = model.try_step(&[&GB, &[1.0, 2.0]]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "gradient for `b`: expected 1 f32 elements, got 2 f32"
    );
    // Gradient dtype.
    let half = [f16::ONE; 2];
    let mut params: Vec<Vec<f32>> = model.params.clone();
    let error = {
        let mut tensors: Vec<HostTensorMut<'_>> =
            params.iter_mut().map(|p| HostTensorMut::F32(p)).collect();
        model
            .stepper
            .step(
                &mut tensors,
                &[HostTensor::F16(&half), HostTensor::F32(&[1.0])],
                &Metrics::default(),
            )
            .unwrap_err()
    };
    assert!(matches!(
        error,
        RuntimeError::TensorMismatch {
            what: "gradient",
            expected_dtype: "f32",
            actual_dtype: "f16",
            ..
        }
    ));
    // Parameter count and length.
    let error = model
        .stepper
        .step(
            &mut [HostTensorMut::F32(&mut params[0])],
            &[HostTensor::F32(&GB), HostTensor::F32(&[1.0])],
            &Metrics::default(),
        )
        .unwrap_err();
    assert!(matches!(
        error,
        RuntimeError::TensorCount {
            what: "parameters",
            expected: 2,
            actual: 1
        }
    ));
    let mut short = [0.0f32; 1];
    let mut b = [0.0f32; 1];
    let error = model
        .stepper
        .step(
            &mut [HostTensorMut::F32(&mut short), HostTensorMut::F32(&mut b)],
            &[HostTensor::F32(&GB), HostTensor::F32(&[1.0])],
            &Metrics::default(),
        )
        .unwrap_err();
    assert!(matches!(
        error,
        RuntimeError::TensorMismatch {
            what: "parameter",
            expected_len: 2,
            actual_len: 1,
            ..
        }
    ));
    assert_eq!(short, [0.0], "nothing written on error");

    // Nothing moved: the next good step is the fresh run's second step.
    assert_eq!(model.masters(), masters);
    assert_eq!(model.stepper.step_index(), 1);
    let second = model.step(&[&GB, &[-1.0]]);
    let expected = fresh.step(&[&GB, &[-1.0]]);
    assert_eq!(report_bits(&second), report_bits(&expected));
    assert_eq!(model.masters(), fresh.masters());
    assert_eq!(model.params, fresh.params);
    assert_ne!(report_bits(&first), report_bits(&second));
}

/// lr = 0.1·(l/l) with l = linear(1 → 0 over 2 steps): 0.1, 0.1, then 0/0 = NaN.
fn nan_lr_graph() -> ScalarGraph {
    let mut graph = ScalarGraph::new(None);
    let linear = graph.push(Node::Schedule(Schedule::Linear { from: 1.0, to: 0.0 }));
    let l = graph.push(Node::Over {
        inner: linear,
        len: 2.0,
    });
    let ratio = graph.push(Node::Binary {
        op: BinaryOp::Div,
        lhs: l,
        rhs: l,
    });
    let base = constant(&mut graph, 0.1);
    let lr = graph.push(Node::Binary {
        op: BinaryOp::Mul,
        lhs: base,
        rhs: ratio,
    });
    graph.add_output("lr", lr);
    graph
}

#[test]
fn nan_learning_rate_from_a_schedule_is_an_error() {
    let mut model = adam_model(nan_lr_graph());
    model.step(&[&GA, &[1.0]]);
    model.step(&[&GB, &[1.0]]);
    let masters = model.masters();
    let params = model.params.clone();
    let scale = model.stepper.loss_scale();
    for _ in 0..2 {
        let error = model.try_step(&[&GA, &[1.0]]).unwrap_err();
        match &error {
            RuntimeError::BadHyperparameter {
                step,
                name,
                value,
                reason,
            } => {
                assert_eq!((*step, name.as_str()), (2, "lr"));
                assert!(value.is_nan());
                assert_eq!(*reason, "not a finite number");
            }
            other => panic!("unexpected error {other}"),
        }
        assert_eq!(
            error.to_string(),
            "at step 2, `lr` is NaN: not a finite number"
        );
        // Retrying fails the same way: the cursor did not move.
        assert_eq!(model.stepper.step_index(), 2);
        assert_eq!(model.stepper.updates(), 2);
        assert_eq!(model.masters(), masters);
        assert_eq!(model.params, params);
        assert_eq!(model.stepper.loss_scale(), scale);
    }
}

#[test]
fn negative_learning_rate_is_an_error() {
    // lr = linear(0.1 → −0.1 over 2 steps): 0.1, 0, −0.1.
    let mut graph = ScalarGraph::new(None);
    let linear = graph.push(Node::Schedule(Schedule::Linear {
        from: 0.1,
        to: -0.1,
    }));
    let lr = graph.push(Node::Over {
        inner: linear,
        len: 2.0,
    });
    graph.add_output("lr", lr);
    let mut model = Model::new(graph, strategy(OptimizerKind::Sgd), &[("w", &W0)]);
    model.step(&[&GA]);
    model.step(&[&GA]);
    let masters = model.masters();
    let error = model.try_step(&[&GA]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "at step 2, `lr` is -0.1: a negative learning rate"
    );
    assert_eq!(model.masters(), masters);
    assert_eq!(model.stepper.step_index(), 2);
}

#[test]
fn other_bad_hyperparameters() {
    let check =
        |outputs: &[(&str, f64)], kind: OptimizerKind, groups: Vec<GroupRule>, message: &str| {
            let mut s = strategy(kind);
            s.groups = groups;
            let mut model = Model::new(constants(outputs), s, &[("w", &W0)]);
            let error = model.try_step(&[&GA]).unwrap_err();
            assert_eq!(error.to_string(), message);
            assert_eq!(model.masters(), vec![W0.to_vec()]);
        };
    check(
        &[("lr", 0.1), ("beta2", 1.0)],
        OptimizerKind::Adam,
        vec![],
        "at step 0, `beta2` is 1: a beta outside [0, 1)",
    );
    check(
        &[("lr", 0.1), ("group1.weight_decay", -0.5)],
        OptimizerKind::Sgd,
        vec![group(&["*"], &[Hyper::WeightDecay])],
        "at step 0, `group1.weight_decay` is -0.5: a negative weight decay",
    );
    check(
        &[("lr", 0.1), ("momentum", -0.9)],
        OptimizerKind::Sgd,
        vec![],
        "at step 0, `momentum` is -0.9: a negative momentum",
    );
    check(
        &[("lr", 0.1), ("clip_norm", 0.0)],
        OptimizerKind::Sgd,
        vec![],
        "at step 0, `clip_norm` is 0: a clipping threshold that is not positive",
    );
    check(
        &[("lr", 0.1), ("eps", -1e-8)],
        OptimizerKind::Lamb,
        vec![],
        "at step 0, `eps` is -0.00000001: a negative epsilon",
    );
    // A group's NaN is named by its output.
    check(
        &[("lr", 0.1), ("group1.lr", f64::NAN)],
        OptimizerKind::Sgd,
        vec![group(&["w"], &[Hyper::Lr])],
        "at step 0, `group1.lr` is NaN: not a finite number",
    );
}
