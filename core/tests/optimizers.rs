//! Optimizer trajectories through the [`Stepper`], against values computed by hand
//! from the published update rules (PyTorch's `SGD`, `Adam`, `AdamW`; LAMB, You et
//! al. 2019, Algorithm 2; LARS, You et al. 2017, Algorithm 1), to 1e-6 relative.
//! Every test spells out the equations and the arithmetic of each step.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod stepper_support;

use regimen_core::{BinaryOp, GroupRule, Hyper, Node, OptimizerKind, ScalarGraph, Schedule};
use stepper_support::{close, close_all, constant, constants, group, strategy, Model};

/// The gradients of the SGD tests: three steps on a 2-element parameter.
const G1: [f32; 2] = [0.5, 1.0];
const G2: [f32; 2] = [-1.0, 0.25];
const G3: [f32; 2] = [2.0, -0.5];
const P0: [f32; 2] = [1.0, -2.0];

// ---------------------------------------------------------------- SGD

#[test]
fn sgd_plain() {
    // p ← p − lr·g, lr = 0.1
    let mut model = Model::new(
        constants(&[("lr", 0.1)]),
        strategy(OptimizerKind::Sgd),
        &[("w", &P0)],
    );
    model.step(&[&G1]);
    // [1 − 0.05, −2 − 0.1] = [0.95, −2.1]
    close_all(&model.params[0], &[0.95, -2.1]);
    model.step(&[&G2]);
    // [0.95 + 0.1, −2.1 − 0.025] = [1.05, −2.125]
    close_all(&model.params[0], &[1.05, -2.125]);
    let report = model.step(&[&G3]);
    // [1.05 − 0.2, −2.125 + 0.05] = [0.85, −2.075]
    close_all(&model.params[0], &[0.85, -2.075]);
    assert_eq!(model.master(0), model.params[0]);
    assert_eq!(report.step, 2);
    assert_eq!(report.updates, 3);
    // ‖g3‖ = sqrt(4 + 0.25)
    close(report.grad_norm, 4.25f64.sqrt());
    assert_eq!(report.group_lrs, vec![("lr".to_owned(), 0.1)]);
}

#[test]
fn sgd_momentum_with_dampening() {
    // torch.optim.SGD: buf ← g on the first step, then buf ← μ·buf + (1 − τ)·g;
    // p ← p − lr·buf.  lr 0.1, μ 0.9, τ 0.5.
    let mut model = Model::new(
        constants(&[("lr", 0.1), ("momentum", 0.9), ("dampening", 0.5)]),
        strategy(OptimizerKind::Sgd),
        &[("w", &P0)],
    );
    model.step(&[&G1]);
    // buf = [0.5, 1.0] (no dampening on the first step); p = [0.95, −2.1]
    close_all(&model.params[0], &[0.95, -2.1]);
    model.step(&[&G2]);
    // buf = 0.9·[0.5, 1] + 0.5·[−1, 0.25] = [−0.05, 1.025]
    // p = [0.95 + 0.005, −2.1 − 0.1025] = [0.955, −2.2025]
    close_all(&model.params[0], &[0.955, -2.2025]);
    let report = model.step(&[&G3]);
    // buf = 0.9·[−0.05, 1.025] + 0.5·[2, −0.5] = [0.955, 0.6725]
    // p = [0.955 − 0.0955, −2.2025 − 0.06725] = [0.8595, −2.26975]
    close_all(&model.params[0], &[0.8595, -2.26975]);
    // Δp = −lr·buf: ‖Δp‖ = 0.1·sqrt(0.955² + 0.6725²) (exact arithmetic; the report
    // measures the f32 change, within 1e-6 of it here)
    close(
        report.update_norm,
        0.1 * (0.955f64.powi(2) + 0.6725f64.powi(2)).sqrt(),
    );
}

#[test]
fn sgd_nesterov() {
    // buf as above (τ = 0); d = g + μ·buf; p ← p − lr·d.  lr 0.1, μ 0.9.
    let mut optimizer = strategy(OptimizerKind::Sgd);
    optimizer.optimizer.nesterov = true;
    let mut model = Model::new(
        constants(&[("lr", 0.1), ("momentum", 0.9)]),
        optimizer,
        &[("w", &P0)],
    );
    model.step(&[&G1]);
    // buf = [0.5, 1]; d = [0.5 + 0.45, 1 + 0.9] = [0.95, 1.9]; p = [0.905, −2.19]
    close_all(&model.params[0], &[0.905, -2.19]);
    model.step(&[&G2]);
    // buf = [0.45 − 1, 0.9 + 0.25] = [−0.55, 1.15]
    // d = [−1 − 0.495, 0.25 + 1.035] = [−1.495, 1.285]; p = [1.0545, −2.3185]
    close_all(&model.params[0], &[1.0545, -2.3185]);
    let report = model.step(&[&G3]);
    // buf = [−0.495 + 2, 1.035 − 0.5] = [1.505, 0.535]
    // d = [2 + 1.3545, −0.5 + 0.4815] = [3.3545, −0.0185]; p = [0.71905, −2.31665]
    close_all(&model.params[0], &[0.71905, -2.31665]);
    // ‖p3 − p2‖ = 0.1·‖d‖ (the report measures the change of the f32 weights).
    close(
        report.update_norm,
        (0.33545f64.powi(2) + 0.00185f64.powi(2)).sqrt(),
    );
}

#[test]
fn sgd_weight_decay_with_momentum() {
    // d = g + λ·p (L2), then momentum as above.  lr 0.1, μ 0.9, λ 0.01.
    let mut model = Model::new(
        constants(&[("lr", 0.1), ("momentum", 0.9), ("weight_decay", 0.01)]),
        strategy(OptimizerKind::Sgd),
        &[("w", &P0)],
    );
    model.step(&[&G1]);
    // d = [0.5 + 0.01, 1 − 0.02] = [0.51, 0.98] = buf; p = [0.949, −2.098]
    close_all(&model.params[0], &[0.949, -2.098]);
    model.step(&[&G2]);
    // d = [−1 + 0.00949, 0.25 − 0.02098] = [−0.99051, 0.22902]
    // buf = 0.9·[0.51, 0.98] + d = [−0.53151, 1.11102]
    // p = [0.949 + 0.053151, −2.098 − 0.111102] = [1.002151, −2.209102]
    close_all(&model.params[0], &[1.002151, -2.209102]);
    model.step(&[&G3]);
    // d = [2 + 0.01002151, −0.5 − 0.02209102] = [2.01002151, −0.52209102]
    // buf = 0.9·[−0.53151, 1.11102] + d = [1.53166251, 0.47782698]
    // p = [1.002151 − 0.153166251, −2.209102 − 0.047782698]
    //   = [0.848984749, −2.256884698]
    close_all(&model.params[0], &[0.848984749, -2.256884698]);
}

// ---------------------------------------------------------------- Adam family

/// Gradients of the Adam tests.
const A1: [f32; 2] = [0.5, -1.0];
const A2: [f32; 2] = [-0.25, 0.75];
const A3: [f32; 2] = [1.0, 0.5];
const AP0: [f32; 2] = [1.0, -0.5];

fn adam_graph(weight_decay: f64) -> ScalarGraph {
    constants(&[
        ("lr", 0.01),
        ("beta1", 0.9),
        ("beta2", 0.999),
        ("eps", 1e-8),
        ("weight_decay", weight_decay),
    ])
}

#[test]
fn adam_with_l2_weight_decay() {
    // torch.optim.Adam: g ← g + λp; m ← β1 m + (1−β1) g; v ← β2 v + (1−β2) g²;
    // p ← p − (lr / (1−β1ᵗ)) · m / (sqrt(v) / sqrt(1−β2ᵗ) + eps).
    // lr 0.01, β1 0.9, β2 0.999, eps 1e-8, λ 0.1.
    let mut model = Model::new(
        adam_graph(0.1),
        strategy(OptimizerKind::Adam),
        &[("w", &AP0)],
    );
    model.step(&[&A1]);
    // t = 1: g = [0.5 + 0.1, −1 − 0.05] = [0.6, −1.05]; m = [0.06, −0.105];
    // v = [0.00036, 0.0011025]; bc1 = 0.1, bc2 = 0.001
    // step = (0.01/0.1)·m/(sqrt(v)/sqrt(0.001) + 1e-8) = 0.1·m/(|g| + 1e-8)
    //      = [0.01·(1 − 1.6667e-8), −0.01·(1 − 9.524e-9)]
    // p = [0.9900000001666667, −0.4900000000952381]
    close_all(&model.params[0], &[0.9900000001666667, -0.4900000000952381]);
    model.step(&[&A2]);
    // t = 2: g = [−0.25 + 0.09900000001666667, 0.75 − 0.04900000000952381]
    //          = [−0.15099999998333333, 0.7009999999904761]
    // m = 0.9·m + 0.1·g = [0.03890000000166666, −0.024400000000952396]
    // v = 0.999·v + 0.001·g² = [0.000382440999994967, 0.0015927984999866492]
    // bc1 = 1 − 0.81 = 0.19, bc2 = 1 − 0.998001 = 0.001999
    // p = p − (0.01/0.19)·m/(sqrt(v/0.001999) + 1e-8)
    //   = [0.9853191993058599, −0.48856132674596403]
    close_all(
        &model.params[0],
        &[0.9853191993058599, -0.48856132674596403],
    );
    model.step(&[&A3]);
    // t = 3: g = [1 + 0.09853191993058599, 0.5 − 0.048856132674596403]
    // m = [0.14486319199455858, 0.02315438673168319]
    // v = [0.0015888309381013527, 0.001794736490511984]
    // bc1 = 1 − 0.729 = 0.271, bc2 = 1 − 0.997002999 = 0.002997001
    // p = [0.9779775547639225, −0.489665423374434]
    close_all(&model.params[0], &[0.9779775547639225, -0.489665423374434]);
}

#[test]
fn adamw_decouples_weight_decay() {
    // torch.optim.AdamW: p ← p·(1 − lr·λ) first, then the Adam step on the raw g.
    let mut model = Model::new(
        adam_graph(0.1),
        strategy(OptimizerKind::AdamW),
        &[("w", &AP0)],
    );
    model.step(&[&A1]);
    // t = 1: p·(1 − 0.001) = [0.999, −0.4995]; m = [0.05, −0.1]; v = [0.00025, 0.001]
    // step = 0.1·m/(|g| + 1e-8) = [0.01·(1 − 2e-8), −0.01·(1 − 1e-8)]
    // p = [0.9890000002, −0.4895000001]
    close_all(&model.params[0], &[0.9890000002, -0.4895000001]);
    model.step(&[&A2]);
    // t = 2: p·0.999 = [0.9880109998, −0.4890105000]; m = [0.02, −0.015];
    // v = [0.00031225, 0.0015615]; bc1 = 0.19, bc2 = 0.001999
    // p = [0.9853476298705847, −0.4881172500359536]
    close_all(&model.params[0], &[0.9853476298705847, -0.4881172500359536]);
    model.step(&[&A3]);
    // t = 3: m = [0.118, 0.0365]; v = [0.00131193775, 0.0018099385];
    // bc1 = 0.271, bc2 = 0.002997001
    // p = [0.9777811663376385, −0.48936227860095644]
    close_all(
        &model.params[0],
        &[0.9777811663376385, -0.48936227860095644],
    );
}

#[test]
fn amsgrad_uses_the_running_maximum() {
    // AMSGrad: v̂ ← max(v̂, v) and v̂ replaces v in the denominator. β2 = 0.5 and a
    // large first gradient make v shrink, so the maximum is what steps 2 and 3 use.
    let graph = constants(&[("lr", 0.01), ("beta1", 0.9), ("beta2", 0.5), ("eps", 1e-8)]);
    let mut with = strategy(OptimizerKind::Adam);
    with.optimizer.amsgrad = true;
    let mut model = Model::new(graph.clone(), with, &[("w", &AP0)]);
    let mut plain = Model::new(graph, strategy(OptimizerKind::Adam), &[("w", &AP0)]);
    let grads: [[f32; 2]; 3] = [[1.0, -2.0], [0.1, 0.5], [0.2, 0.1]];

    for model in [&mut model, &mut plain] {
        model.step(&[&grads[0]]);
    }
    // t = 1: m = [0.1, −0.2]; v = v̂ = [0.5, 2.0]; bc1 = 0.1, bc2 = 0.5
    // p = p − 0.1·m/(sqrt(v/0.5) + 1e-8) = [1 − 0.01·(1 − 1e-8), −0.5 + 0.01·(1 − 5e-9)]
    close_all(&model.params[0], &[0.9900000001, -0.49000000005]);
    assert_eq!(model.params, plain.params);

    for model in [&mut model, &mut plain] {
        model.step(&[&grads[1]]);
    }
    // t = 2: m = [0.1, −0.13]; v = 0.5·[0.5, 2] + 0.5·[0.01, 0.25] = [0.255, 1.125]
    // v̂ = max([0.5, 2], v) = [0.5, 2]; bc1 = 0.19, bc2 = 0.75
    // AMSGrad: p = p − (0.01/0.19)·m/(sqrt([0.5, 2]/0.75) + 1e-8)
    //            = [0.9835539745400442, −0.48581008341037085]
    // plain:   p = p − (0.01/0.19)·m/(sqrt([0.255, 1.125]/0.75) + 1e-8)
    //            = [0.9809737589315088, −0.484413444541898]
    close_all(
        &model.params[0],
        &[0.9835539745400442, -0.48581008341037085],
    );
    close_all(&plain.params[0], &[0.9809737589315088, -0.484413444541898]);

    for model in [&mut model, &mut plain] {
        model.step(&[&grads[2]]);
    }
    // t = 3: m = [0.11, −0.107]; v = [0.1475, 0.5675]; v̂ = [0.5, 2]; bc1 = 0.271,
    // bc2 = 0.875
    // AMSGrad: p = [0.978184368629212, −0.48319850233646483]
    // plain:   p = [0.9710875132222588, −0.4795107416547392]
    close_all(&model.params[0], &[0.978184368629212, -0.48319850233646483]);
    close_all(&plain.params[0], &[0.9710875132222588, -0.4795107416547392]);
}

// ---------------------------------------------------------------- LAMB

/// β2 = 1 − 2⁻⁹: a power-of-two complement keeps the hand arithmetic below short
/// (v = 2⁻⁹·g² on the first step). The Adam tests use the usual 0.999.
const LAMB_BETA2: f64 = 0.998046875;

fn lamb_graph() -> ScalarGraph {
    constants(&[
        ("lr", 0.1),
        ("beta1", 0.9),
        ("beta2", LAMB_BETA2),
        ("eps", 1e-6),
        ("weight_decay", 0.01),
    ])
}

fn lamb_strategy(trust_clip: Option<f64>) -> regimen_core::Strategy {
    let mut lamb = strategy(OptimizerKind::Lamb);
    lamb.optimizer.bias_correction = true;
    lamb.optimizer.trust_clip = trust_clip;
    // `b` gets `trust_ratio = off`.
    lamb.groups = vec![GroupRule {
        trust_ratio: Some(false),
        ..group(&["b"], &[])
    }];
    lamb
}

#[test]
fn lamb_trust_ratio_on_and_off() {
    // LAMB (You et al. 2019, Algorithm 2), with bias correction:
    // m ← β1 m + (1−β1) g; v ← β2 v + (1−β2) g²;
    // u = (m/(1−β1ᵗ)) / (sqrt(v/(1−β2ᵗ)) + eps) + λ p;
    // trust = ‖p‖/‖u‖ (1 when off); p ← p − lr·trust·u.
    // lr 0.1, β1 0.9, β2 1 − 2⁻⁹ = 0.998046875, eps 1e-6, λ 0.01.
    let mut model = Model::new(
        lamb_graph(),
        lamb_strategy(None),
        &[("w", &[3.0, 4.0]), ("b", &[0.5, -0.5])],
    );
    let report = model.step(&[&[0.6, 0.8], &[0.1, 0.2]]);
    // w, t = 1: m = 0.1·g, v = 2⁻⁹·g², so m̂ = g, v̂ = g²: u = g/(|g| + 1e-6) + 0.01·p
    //   = [0.6/0.600001 + 0.03, 0.8/0.800001 + 0.04] = [1.0299983333, 1.0399987500]
    //   ‖p‖ = 5, ‖u‖ = 1.4637260558861342, trust = 3.415939738104217
    //   p = p − 0.1·3.415939738104217·u = [2.648158776297606, 3.644742694229095]
    close_all(&model.params[0], &[2.648158776297606, 3.644742694229095]);
    // b (trust off), t = 1: u = [0.1/0.100001 + 0.005, 0.2/0.200001 − 0.005]
    //   = [1.00499000010, 0.99499500002]; p = p − 0.1·u = [0.39950099999, −0.5994995]
    close_all(&model.params[1], &[0.3995009999900001, -0.5994995000025]);
    let trust = report.trust_ratio.expect("w uses a trust ratio");
    // Only `w` uses a ratio: min = mean = max.
    close(trust.min, 3.415939738104217);
    close(trust.max, 3.415939738104217);
    close(trust.mean, 3.415939738104217);
    // ‖Δp‖² = (0.1·3.4159397·‖u_w‖)² + (0.1·‖u_b‖)², ‖u_b‖ = 1.4142206158784933
    // (exact arithmetic; the report measures the f32 change, within 1e-6 of it here)
    close(
        report.update_norm,
        ((0.1f64 * 5.0).powi(2) + (0.1f64 * 1.4142206158784933).powi(2)).sqrt(),
    );

    model.step(&[&[-0.3, 0.4], &[0.3, -0.1]]);
    // w, t = 2: m = 0.9·[0.06, 0.08] + 0.1·[−0.3, 0.4] = [0.024, 0.112];
    //   v = β2·[0.000703125, 0.00125] + 2⁻⁹·[0.09, 0.16]
    //     = [0.000877532958984375, 0.00156005859375];
    //   bc1 = 1 − 0.81 = 0.19, bc2 = 1 − β2² = 0.003902435302734375
    //   u = (m/0.19)/(sqrt(v/bc2) + 1e-6) + 0.01·p = [0.29285621950044854, 0.9687591295379803]
    //   ‖p‖ = 4.505207454892438, ‖u‖ = 1.0120568246710657, trust = 4.451536065039333
    //   p = p − 0.1·trust·u = [2.517792773999874, 3.213496073881652]
    close_all(&model.params[0], &[2.517792773999874, 3.213496073881652]);
    // b, t = 2: m = [0.039, 0.008]; v = [0.00019527435302734374, 9.750366210937502e-05]
    //   u = [0.9215969365020689, 0.2603785132809823]; p = p − 0.1·u
    close_all(
        &model.params[1],
        &[0.30734130633979323, -0.6255373513305982],
    );
}

#[test]
fn lamb_trust_clip_caps_the_ratio() {
    // As above with trust_clip 0.5: w's ratio 3.4159… is capped to 0.5.
    let mut model = Model::new(
        lamb_graph(),
        lamb_strategy(Some(0.5)),
        &[("w", &[3.0, 4.0]), ("b", &[0.5, -0.5])],
    );
    let report = model.step(&[&[0.6, 0.8], &[0.1, 0.2]]);
    // p = [3, 4] − 0.05·[1.0299983333361111, 1.0399987500015624]
    //   = [2.9485000833331942, 3.948000062499922]
    close_all(&model.params[0], &[2.9485000833331942, 3.948000062499922]);
    assert_eq!(report.trust_ratio.expect("w uses a ratio").max, 0.5);
    model.step(&[&[-0.3, 0.4], &[0.3, -0.1]]);
    // t = 2: u = [0.29585963257080444, 0.9717917032206885] (λp uses the new p),
    //   ratio 4.9275…/1.0158… = 4.85 capped to 0.5: p = p − 0.05·u
    close_all(&model.params[0], &[2.933707101704654, 3.8994104773388876]);
    // The untrusted parameter is unaffected by the clip (its ratio is 1).
    close_all(
        &model.params[1],
        &[0.30734130633979323, -0.6255373513305982],
    );
}

// ---------------------------------------------------------------- LARS

#[test]
fn lars_local_learning_rate() {
    // LARS (You et al. 2017, Algorithm 1), the paper's form:
    // λˡ = η‖w‖/(‖g‖ + β‖w‖ + eps); v ← m·v + γ·λˡ·(g + βw); w ← w − v.
    // γ 0.1, m 0.9, η 0.02, β 0.01, eps 0.
    let mut model = Model::new(
        constants(&[
            ("lr", 0.1),
            ("momentum", 0.9),
            ("trust", 0.02),
            ("weight_decay", 0.01),
        ]),
        strategy(OptimizerKind::Lars),
        &[("w", &[3.0, 4.0])],
    );
    let report = model.step(&[&[0.6, 0.8]]);
    // ‖w‖ = 5, ‖g‖ = 1: λˡ = 0.02·5/(1 + 0.05) = 0.1/1.05 = 0.095238095
    // v = 0.1·0.095238095·[0.6 + 0.03, 0.8 + 0.04] = [0.63, 0.84]/105 = [0.006, 0.008]
    // w = [2.994, 3.992]
    close_all(&model.params[0], &[2.994, 3.992]);
    close(
        report.trust_ratio.expect("lars uses a ratio").mean,
        0.1 / 1.05,
    );
    // Δw = −v: ‖Δw‖ = 0.01 in exact arithmetic. The report measures the change of
    // the f32 weights, whose rounding (an ulp of 4 is 4.8e-7) is ~6e-5 of a change of
    // 0.008: compare with that change, and with 0.01 to within two ulps of 4.
    let w = &model.params[0];
    let f32_change = (f64::from(w[0] - 3.0).powi(2) + f64::from(w[1] - 4.0).powi(2)).sqrt();
    close(report.update_norm, f32_change);
    assert!((report.update_norm - 0.01).abs() <= 1e-6);

    let report = model.step(&[&[-0.3, 0.4]]);
    // ‖w‖ = 0.998·5 = 4.99, ‖g‖ = 0.5: λˡ = 0.0998/(0.5 + 0.0499) = 0.18148754318967084
    // v = 0.9·[0.006, 0.008] + 0.1·λˡ·[−0.3 + 0.02994, 0.4 + 0.03992]
    //   = [0.0004987474086197508, 0.015184]
    // w = [2.9935012525913804, 3.976816]
    close_all(&model.params[0], &[2.9935012525913804, 3.976816]);
    close(
        report.trust_ratio.expect("lars uses a ratio").mean,
        0.18148754318967084,
    );

    model.step(&[&[0.5, 0.5]]);
    // ‖w‖ = 4.97756117462379, ‖g‖ = sqrt(0.5) = 0.7071067811865476:
    // λˡ = 0.02·4.97756…/(0.70710678 + 0.0497756…) = 0.1315279948668543
    // v = 0.9·v + 0.1·λˡ·(g + 0.01·w) = [0.007419001628485251, 0.02076506237777714]
    // w = [2.986082250962895, 3.956050937622223]
    close_all(&model.params[0], &[2.986082250962895, 3.956050937622223]);
}

#[test]
fn lars_without_trust_is_sgd_with_momentum() {
    // With λˡ = 1, v = m·v + γ(g + βw) and w ← w − v, while SGD keeps
    // buf = m·buf + (g + βw) and w ← w − γ·buf: with a constant γ, v = γ·buf, so the
    // trajectories agree (up to f32 rounding).
    let graph = constants(&[("lr", 0.1), ("momentum", 0.9), ("weight_decay", 0.01)]);
    let mut lars = strategy(OptimizerKind::Lars);
    lars.groups = vec![GroupRule {
        trust_ratio: Some(false),
        ..group(&["*"], &[])
    }];
    let mut lars = Model::new(graph.clone(), lars, &[("w", &P0)]);
    let mut sgd = Model::new(graph, strategy(OptimizerKind::Sgd), &[("w", &P0)]);
    for grads in [G1, G2, G3, G1] {
        let report = lars.step(&[&grads]);
        assert_eq!(report.trust_ratio, None);
        sgd.step(&[&grads]);
        let expected: Vec<f64> = sgd.params[0].iter().map(|&x| f64::from(x)).collect();
        close_all(&lars.params[0], &expected);
    }
}

// ---------------------------------------------------------------- schedules

#[test]
fn learning_rate_schedule_changes_every_step() {
    // lr = StepLR(0.1, every 1, factor 0.5): 0.1, 0.05, 0.025 at steps 0, 1, 2.
    let mut graph = ScalarGraph::new(None);
    let lr = graph.push(Node::Schedule(Schedule::Step {
        init: 0.1,
        every: 1.0,
        factor: 0.5,
    }));
    graph.add_output("lr", lr);
    let mut model = Model::new(graph, strategy(OptimizerKind::Sgd), &[("w", &P0)]);
    let report = model.step(&[&G1]);
    assert_eq!(report.scalars, vec![("lr".to_owned(), 0.1)]);
    // p = [1 − 0.1·0.5, −2 − 0.1·1] = [0.95, −2.1]
    close_all(&model.params[0], &[0.95, -2.1]);
    let report = model.step(&[&G2]);
    assert_eq!(report.group_lrs, vec![("lr".to_owned(), 0.05)]);
    // p = [0.95 + 0.05, −2.1 − 0.0125] = [1.0, −2.1125]
    close_all(&model.params[0], &[1.0, -2.1125]);
    model.step(&[&G3]);
    // p = [1 − 0.05, −2.1125 + 0.0125] = [0.95, −2.1]
    close_all(&model.params[0], &[0.95, -2.1]);
}

#[test]
fn momentum_schedule_starts_the_buffer_when_it_becomes_non_zero() {
    // momentum = linear(0 → 0.9 over 2 steps): 0, 0.45, 0.9. PyTorch keeps no buffer
    // while the momentum is 0 and initialises it (buf = g) on the first step with a
    // non-zero momentum. lr 0.1.
    let mut graph = ScalarGraph::new(None);
    let lr = constant(&mut graph, 0.1);
    graph.add_output("lr", lr);
    let linear = graph.push(Node::Schedule(Schedule::Linear { from: 0.0, to: 0.9 }));
    let momentum = graph.push(Node::Over {
        inner: linear,
        len: 2.0,
    });
    graph.add_output("momentum", momentum);
    let mut model = Model::new(graph, strategy(OptimizerKind::Sgd), &[("w", &P0)]);
    let report = model.step(&[&G1]);
    assert_eq!(report.scalars[1], ("momentum".to_owned(), 0.0));
    // Plain SGD: p = [0.95, −2.1]
    close_all(&model.params[0], &[0.95, -2.1]);
    let report = model.step(&[&G2]);
    close(report.scalars[1].1, 0.45);
    // First momentum step: buf = g2 = [−1, 0.25]; p = [0.95 + 0.1, −2.1 − 0.025]
    close_all(&model.params[0], &[1.05, -2.125]);
    let report = model.step(&[&G3]);
    close(report.scalars[1].1, 0.9);
    // buf = 0.9·[−1, 0.25] + [2, −0.5] = [1.1, −0.275]; p = [1.05 − 0.11, −2.125 + 0.0275]
    close_all(&model.params[0], &[0.94, -2.0975]);
}

#[test]
fn group_lr_multiplier_from_the_graph() {
    // `group "*.bias" { lr *= 0.1 }` compiles to the output group1.lr = lr·0.1; with a
    // decaying global lr the group's lr decays with it.
    let mut graph = ScalarGraph::new(None);
    let lr = graph.push(Node::Schedule(Schedule::Step {
        init: 1.0,
        every: 1.0,
        factor: 0.5,
    }));
    graph.add_output("lr", lr);
    let tenth = constant(&mut graph, 0.1);
    let scaled = graph.push(Node::Binary {
        op: BinaryOp::Mul,
        lhs: lr,
        rhs: tenth,
    });
    graph.add_output("group1.lr", scaled);
    let mut sgd = strategy(OptimizerKind::Sgd);
    sgd.groups = vec![group(&["*.bias"], &[Hyper::Lr])];
    let mut model = Model::new(graph, sgd, &[("fc.weight", &[1.0]), ("fc.bias", &[1.0])]);
    let report = model.step(&[&[1.0], &[1.0]]);
    assert_eq!(
        report.group_lrs,
        vec![("lr".to_owned(), 1.0), ("group1.lr".to_owned(), 0.1)]
    );
    // weight: 1 − 1·1 = 0; bias: 1 − 0.1·1 = 0.9
    assert_eq!(model.params[0], [0.0]);
    close_all(&model.params[1], &[0.9]);
    let report = model.step(&[&[1.0], &[1.0]]);
    // lr 0.5, group1.lr 0.05: weight −0.5, bias 0.85
    close(report.group_lrs[1].1, 0.05);
    close_all(&model.params[0], &[-0.5]);
    close_all(&model.params[1], &[0.85]);
}
