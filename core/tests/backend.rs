//! The ndarray backend's kernels against values computed by hand from the update
//! equations in `backend/mod.rs` (PyTorch's `SGD`/`Adam`/`AdamW`, LAMB per You et al.
//! 2019), its f16/bf16 boundary conversions, the parallel path against the serial
//! one, determinism of reductions across thread counts, and its errors.
//!
//! Expected values are exact decimal arithmetic of the published formulas, written
//! out in comments; the kernels compute in f32, hence the 1e-6 relative tolerance.
//!
//! The update kernels also return `Σ (p_new − p_old)²`. That sum is checked two ways:
//! bit for bit against its definition computed from the weights before and after
//! (each change the f32 difference, squared and summed in f64), and against the
//! exact decimal changes of the hand-worked steps, with [`CHANGE_TOLERANCE`].

#![allow(clippy::unwrap_used, clippy::expect_used)]

use half::{bf16, f16};
use ndarray::{array, Array1, Axis, Slice};
use regimen_core::backend::ndarray::{DEFAULT_PARALLEL_THRESHOLD, REDUCTION_CHUNK};
use regimen_core::backend::{
    AdamStep, Backend, BackendError, LambDirection, NdArrayBackend, SgdStep,
};
use regimen_core::{HostTensor, HostTensorMut};

/// Relative tolerance of f32 kernels against exact arithmetic.
const F32_TOLERANCE: f64 = 1e-6;

/// Relative tolerance of a returned `Σ (p_new − p_old)²` against exact arithmetic:
/// each change is the difference of two f32 weights of magnitude ≤ 2 (each off by up
/// to half an ulp, 2⁻²³ absolute, plus the kernel's own rounding), and the changes in
/// these tests are ≥ 0.06 in magnitude, so each change is within about 5e-6 relative
/// and its square within about 1e-5.
const CHANGE_TOLERANCE: f64 = 1e-5;

/// Elements of the "large" tensors: over 1Mi and not a multiple of any chunk size,
/// so the parallel path runs with a ragged last chunk.
const LARGE: usize = (1 << 20) + 12_345;

#[track_caller]
fn close(actual: f32, expected: f64) {
    let error = (f64::from(actual) - expected).abs();
    assert!(
        error <= F32_TOLERANCE * expected.abs(),
        "actual {actual:e} != expected {expected:e} (relative error {:e})",
        error / expected.abs()
    );
}

#[track_caller]
fn close_all(actual: &Array1<f32>, expected: &[f64]) {
    assert_eq!(actual.len(), expected.len());
    for (&a, &e) in actual.iter().zip(expected) {
        close(a, e);
    }
}

#[track_caller]
fn close_f64(actual: f64, expected: f64, tolerance: f64) {
    let error = (actual - expected).abs();
    assert!(
        error <= tolerance * expected.abs(),
        "actual {actual:e} != expected {expected:e} (relative error {:e})",
        error / expected.abs()
    );
}

#[track_caller]
fn same_bits(a: &Array1<f32>, b: &Array1<f32>) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.to_bits(), y.to_bits(), "element {i}: {x:e} != {y:e}");
    }
}

/// `Σ (after − before)²` by definition, for fewer than 8 elements: each change is the
/// f32 difference, squared in f64 and added from the first element to the last — the
/// kernels' order, since a tensor that short has all its elements in one accumulator
/// of one reduction chunk.
fn change_sum_squares(before: &Array1<f32>, after: &Array1<f32>) -> f64 {
    assert!(
        before.len() < 8,
        "the element-order sum is the kernels' only below 8"
    );
    before.iter().zip(after).fold(0.0, |sum, (&b, &a)| {
        let change = f64::from(a - b);
        sum + change * change
    })
}

/// `Σ (after − before)²` of a tensor of any length, in the backend's reduction order:
/// the f32 differences, then the serial `sum_squares` (fixed chunks and lanes).
fn chunked_change_sum_squares(before: &Array1<f32>, after: &Array1<f32>) -> f64 {
    serial().sum_squares(&(after - before)).unwrap()
}

fn backend() -> NdArrayBackend {
    NdArrayBackend::new()
}

/// A backend that never splits work: the reference for the parallel path.
fn serial() -> NdArrayBackend {
    NdArrayBackend::new().with_parallel_threshold(usize::MAX)
}

/// A backend that splits every tensor, however small.
fn always_parallel() -> NdArrayBackend {
    NdArrayBackend::new().with_parallel_threshold(0)
}

/// Deterministic pseudo-random values in `[low, high)` (a 64-bit LCG).
fn filled(len: usize, seed: u64, low: f32, high: f32) -> Array1<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    Array1::from_iter((0..len).map(|_| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
        low + (high - low) * unit
    }))
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

// ---------------------------------------------------------------- basics

#[test]
fn zeros_len_name_and_defaults() {
    let b = backend();
    assert_eq!(b.name(), "ndarray");
    let t = b.zeros(5).unwrap();
    assert_eq!(b.len(&t), 5);
    assert!(t.iter().all(|&x| x == 0.0));
    assert_eq!(b.len(&b.zeros(0).unwrap()), 0);
    assert_eq!(
        NdArrayBackend::default().parallel_threshold(),
        DEFAULT_PARALLEL_THRESHOLD
    );
    assert_eq!(serial().parallel_threshold(), usize::MAX);
}

#[test]
fn empty_tensors_are_fine() {
    for b in [backend(), always_parallel()] {
        let mut p = b.zeros(0).unwrap();
        assert_eq!(b.sum_squares(&p).unwrap(), 0.0);
        let stats = b.load_gradient(HostTensor::F32(&[]), 0.5, &mut p).unwrap();
        assert!(stats.finite);
        assert_eq!(stats.sum_squares, 0.0);
        b.download(&p, HostTensorMut::F16(&mut [])).unwrap();
    }
}

// ---------------------------------------------------------------- SGD

/// PyTorch SGD with momentum 0.9, dampening 0.1, nesterov, weight decay 0.01, lr 0.1.
#[test]
fn sgd_nesterov_with_dampening_and_weight_decay_two_steps() {
    let b = backend();
    let mut p = array![1.0f32, -2.0];
    let mut buf = b.zeros(2).unwrap();
    let mut step = SgdStep {
        lr: 0.1,
        momentum: 0.9,
        dampening: 0.1,
        weight_decay: 0.01,
        nesterov: true,
        first_step: true,
        grad_scale: 1.0,
    };

    // Step 1, g = [0.5, 0.25]:
    //   d   = g + 0.01·p = [0.5 + 0.01, 0.25 − 0.02] = [0.51, 0.23]
    //   buf = d (first step)                          = [0.51, 0.23]
    //   dir = d + 0.9·buf = [0.51 + 0.459, 0.23 + 0.207] = [0.969, 0.437]
    //   p   = p − 0.1·dir = [1 − 0.0969, −2 − 0.0437]    = [0.9031, −2.0437]
    //   Σ Δp² = 0.0969² + 0.0437² = 0.00938961 + 0.00190969 = 0.0112993
    let before = p.clone();
    let change = b
        .sgd_step(&mut p, &array![0.5, 0.25], Some(&mut buf), &step)
        .unwrap();
    close_all(&buf, &[0.51, 0.23]);
    close_all(&p, &[0.9031, -2.0437]);
    assert_eq!(change, change_sum_squares(&before, &p));
    close_f64(change, 0.011_299_3, CHANGE_TOLERANCE);

    // Step 2, g = [−1, 0.5]:
    //   d   = g + 0.01·p = [−1 + 0.009031, 0.5 − 0.020437] = [−0.990969, 0.479563]
    //   buf = 0.9·buf + (1 − 0.1)·d
    //       = [0.459 − 0.8918721, 0.207 + 0.4316067]      = [−0.4328721, 0.6386067]
    //   dir = d + 0.9·buf
    //       = [−0.990969 − 0.38958489, 0.479563 + 0.57474603] = [−1.38055389, 1.05430903]
    //   p   = p − 0.1·dir = [0.9031 + 0.138055389, −2.0437 − 0.105430903]
    //       = [1.041155389, −2.149130903]
    //   Σ Δp² = 0.138055389² + 0.105430903² = 0.019059290431941321 + 0.011115675307395409
    //         = 0.03017496573933673
    step.first_step = false;
    let before = p.clone();
    let change = b
        .sgd_step(&mut p, &array![-1.0, 0.5], Some(&mut buf), &step)
        .unwrap();
    close_all(&buf, &[-0.4328721, 0.6386067]);
    close_all(&p, &[1.041155389, -2.149130903]);
    assert_eq!(change, change_sum_squares(&before, &p));
    close_f64(change, 0.030_174_965_739_336_73, CHANGE_TOLERANCE);
}

/// Heavy-ball momentum without Nesterov, with LARS's `grad_scale` and dampening 0.5.
#[test]
fn sgd_momentum_with_grad_scale_two_steps() {
    let b = backend();
    let mut p = array![1.0f32, -2.0];
    let mut buf = b.zeros(2).unwrap();
    let mut step = SgdStep {
        lr: 0.5,
        momentum: 0.9,
        dampening: 0.5,
        weight_decay: 0.0,
        nesterov: false,
        first_step: true,
        grad_scale: 0.5,
    };
    // Step 1, g = [0.5, 0.25]: d = 0.5·g = [0.25, 0.125]; buf = d;
    //   p = p − 0.5·buf = [1 − 0.125, −2 − 0.0625] = [0.875, −2.0625]
    //   Σ Δp² = 0.125² + 0.0625² = 0.015625 + 0.00390625 = 0.01953125 (all exact in
    //   binary, so the f32 change is exact too)
    let change = b
        .sgd_step(&mut p, &array![0.5, 0.25], Some(&mut buf), &step)
        .unwrap();
    close_all(&buf, &[0.25, 0.125]);
    close_all(&p, &[0.875, -2.0625]);
    assert_eq!(change, 0.019_531_25);
    // Step 2, g = [−1, 0.5]: d = [−0.5, 0.25];
    //   buf = 0.9·buf + 0.5·d = [0.225 − 0.25, 0.1125 + 0.125] = [−0.025, 0.2375]
    //   p = p − 0.5·buf = [0.875 + 0.0125, −2.0625 − 0.11875] = [0.8875, −2.18125]
    //   Σ Δp² = 0.0125² + 0.11875² = 0.00015625 + 0.0141015625 = 0.0142578125
    step.first_step = false;
    let before = p.clone();
    let change = b
        .sgd_step(&mut p, &array![-1.0, 0.5], Some(&mut buf), &step)
        .unwrap();
    close_all(&buf, &[-0.025, 0.2375]);
    close_all(&p, &[0.8875, -2.18125]);
    assert_eq!(change, change_sum_squares(&before, &p));
    // 0.0125 is the smallest change here; at p ≈ 0.9 its f32 rounding is ~5e-6
    // relative, but it carries only 1% of the sum.
    close_f64(change, 0.014_257_812_5, CHANGE_TOLERANCE);
}

#[test]
fn sgd_without_momentum_ignores_the_buffer() {
    let b = backend();
    let mut p = array![1.0f32, -2.0];
    let step = SgdStep {
        lr: 0.1,
        momentum: 0.0,
        dampening: 0.0,
        weight_decay: 0.5,
        nesterov: false,
        first_step: false,
        grad_scale: 1.0,
    };
    // d = g + 0.5·p = [0.5 + 0.5, 0.25 − 1] = [1, −0.75];
    // p = p − 0.1·d = [0.9, −1.925]
    // Σ Δp² = 0.1² + 0.075² = 0.01 + 0.005625 = 0.015625
    let before = p.clone();
    let change = b.sgd_step(&mut p, &array![0.5, 0.25], None, &step).unwrap();
    close_all(&p, &[0.9, -1.925]);
    assert_eq!(change, change_sum_squares(&before, &p));
    close_f64(change, 0.015_625, CHANGE_TOLERANCE);
}

#[test]
fn sgd_with_momentum_needs_a_buffer() {
    let b = backend();
    let mut p = array![1.0f32];
    let step = SgdStep {
        lr: 0.1,
        momentum: 0.9,
        dampening: 0.0,
        weight_decay: 0.0,
        nesterov: false,
        first_step: true,
        grad_scale: 1.0,
    };
    let error = b.sgd_step(&mut p, &array![1.0], None, &step).unwrap_err();
    assert!(matches!(
        error,
        BackendError::InvalidOperand {
            kernel: "sgd_step",
            operand: "momentum_buffer",
            ..
        }
    ));
    assert_eq!(p[0], 1.0, "nothing written");
}

// ---------------------------------------------------------------- Adam family

// The hand-worked trajectories use betas exact in binary (β1 = 0.875 = 1 − 2⁻³,
// β2 = 1 − 2⁻¹⁰) so the arithmetic stays short; `one_minus_beta_is_formed_in_f64`
// covers a beta f32 cannot hold.

/// β1 = 1 − 2⁻³.
const BETA1: f64 = 0.875;
/// β2 = 1 − 2⁻¹⁰.
const BETA2: f64 = 1.0 - 1.0 / 1024.0;

fn adam_step(t: i32, weight_decay: f32, decoupled: bool) -> AdamStep {
    AdamStep {
        lr: 0.1,
        beta1: BETA1,
        beta2: BETA2,
        eps: 1e-8,
        weight_decay,
        decoupled,
        bias_correction1: 1.0 - BETA1.powi(t),
        bias_correction2: 1.0 - BETA2.powi(t),
    }
}

// Bias corrections: bc1 = 1 − 0.875ᵗ → 0.125 (t = 1), 0.234375 (t = 2);
// bc2 = 1 − (1 − 2⁻¹⁰)ᵗ → 2⁻¹⁰ = 0.0009765625 (t = 1), 2047/2²⁰ = 0.00195217132568359375.

/// PyTorch Adam (lr 0.1, eps 1e-8), p = [1, −0.5], g₁ = [0.2, −0.1], g₂ = [0.1, 0.3].
#[test]
fn adam_two_steps() {
    let b = backend();
    let mut p = array![1.0f32, -0.5];
    let (mut m, mut v) = (b.zeros(2).unwrap(), b.zeros(2).unwrap());

    // t = 1: m = 0.125·g = [0.025, −0.0125];  v = 2⁻¹⁰·g² = [3.90625e-5, 9.765625e-6]
    //   step_size = 0.1/0.125 = 0.8;  sqrt(v)/sqrt(bc2) = |g|, so denom = |g| + 1e-8
    //   p = [1 − 0.8·0.025/0.20000001, −0.5 + 0.8·0.0125/0.10000001]
    //     = [0.90000000499999975, −0.40000000999999900]
    //   Σ Δp² = 0.09999999500000025² + 0.099999990000001² = 0.019999997000000375
    let before = p.clone();
    let change = b
        .adam_step(
            &mut p,
            &array![0.2, -0.1],
            &mut m,
            &mut v,
            None,
            &adam_step(1, 0.0, false),
        )
        .unwrap();
    close_all(&m, &[0.025, -0.0125]);
    close_all(&v, &[3.906_25e-5, 9.765_625e-6]);
    close_all(&p, &[0.900_000_005, -0.400_000_01]);
    assert_eq!(change, change_sum_squares(&before, &p));
    close_f64(change, 0.019_999_997_000_000_375, CHANGE_TOLERANCE);

    // t = 2: m = 0.875·m + 0.125·g = [0.021875 + 0.0125, −0.0109375 + 0.0375]
    //          = [0.034375, 0.0265625]
    //   v = (1 − 2⁻¹⁰)·v + 2⁻¹⁰·g² = [3.902435302734375e-5 + 9.765625e-6,
    //                                 9.756088256835938e-6 + 8.7890625e-5]
    //     = [4.878997802734375e-5, 9.76467132568359375e-5]
    //   denom = sqrt(v)/sqrt(0.00195217132568359375) + 1e-8
    //         = [0.15809071878209203, 0.22365049801959287]
    //   p = p − (0.1/0.234375)·m/denom
    //     = [0.9000000050 − 0.0927737364, −0.4000000100 − 0.0506743040]
    //     = [0.80722626863105577, −0.45067431403101653]
    //   Σ Δp² = 0.09277373636894398² + 0.05067430403101753² = 0.011174851248882318
    let before = p.clone();
    let change = b
        .adam_step(
            &mut p,
            &array![0.1, 0.3],
            &mut m,
            &mut v,
            None,
            &adam_step(2, 0.0, false),
        )
        .unwrap();
    close_all(&m, &[0.034_375, 0.026_562_5]);
    close_all(&v, &[4.878_997_802_734_375e-5, 9.764_671_325_683_594e-5]);
    close_all(&p, &[0.807_226_268_631_055_8, -0.450_674_314_031_016_5]);
    assert_eq!(change, change_sum_squares(&before, &p));
    close_f64(change, 0.011_174_851_248_882_318, CHANGE_TOLERANCE);
}

/// Adam with L2 weight decay 0.1: the decay joins the gradient before the moments.
#[test]
fn adam_l2_weight_decay_two_steps() {
    let b = backend();
    let mut p = array![1.0f32, -0.5];
    let (mut m, mut v) = (b.zeros(2).unwrap(), b.zeros(2).unwrap());
    // t = 1: g' = g + 0.1·p = [0.2 + 0.1, −0.1 − 0.05] = [0.3, −0.15]
    //   m = 0.125·g' = [0.0375, −0.01875]; v = 2⁻¹⁰·g'² = [8.7890625e-5, 2.197265625e-5]
    //   p = [1 − 0.8·0.0375/0.30000001, −0.5 + 0.8·0.01875/0.15000001]
    //     = [0.90000000333333322, −0.40000000666666622]
    //   Σ Δp² = 0.09999999666666678² + 0.09999999333333378² = 0.019999998000000168
    let before = p.clone();
    let change = b
        .adam_step(
            &mut p,
            &array![0.2, -0.1],
            &mut m,
            &mut v,
            None,
            &adam_step(1, 0.1, false),
        )
        .unwrap();
    assert_eq!(change, change_sum_squares(&before, &p));
    close_f64(change, 0.019_999_998_000_000_168, CHANGE_TOLERANCE);
    close_all(&m, &[0.0375, -0.01875]);
    close_all(&v, &[8.789_062_5e-5, 2.197_265_625e-5]);
    close_all(&p, &[0.900_000_003_333_333_2, -0.400_000_006_666_666_2]);
    // t = 2: g' = [0.1 + 0.0900000003333, 0.3 − 0.0400000006667]
    //          = [0.19000000033333332, 0.25999999933333338]
    //   m = 0.875·m + 0.125·g' = [0.0328125 + 0.0237500000417, −0.01640625 + 0.0324999999167]
    //     = [0.056562500041666665, 0.016093749916666672]
    //   v = (1 − 2⁻¹⁰)·v + 2⁻¹⁰·g'² = [1.2305870068522135e-4, 8.7966823239339216e-5]
    //   denom = sqrt(v)/sqrt(0.00195217132568359375) + 1e-8
    //         = [0.25107138322912212, 0.21227581160662427]
    //   p = p − (0.1/0.234375)·m/denom = [0.80387860136102015, −0.43234785910986391]
    b.adam_step(
        &mut p,
        &array![0.1, 0.3],
        &mut m,
        &mut v,
        None,
        &adam_step(2, 0.1, false),
    )
    .unwrap();
    close_all(&m, &[0.056_562_500_041_666_665, 0.016_093_749_916_666_67]);
    close_all(&v, &[1.230_587_006_852_213_5e-4, 8.796_682_323_933_922e-5]);
    close_all(&p, &[0.803_878_601_361_020_1, -0.432_347_859_109_863_9]);
}

/// AdamW with decoupled decay 0.1: p shrinks by (1 − lr·wd) = 0.99 before the update.
#[test]
fn adamw_two_steps() {
    let b = backend();
    let mut p = array![1.0f32, -0.5];
    let (mut m, mut v) = (b.zeros(2).unwrap(), b.zeros(2).unwrap());
    // t = 1: p·0.99 = [0.99, −0.495]; moments and Adam step as without decay:
    //   p = [0.99 − 0.0999999950, −0.495 + 0.0999999900]
    //     = [0.89000000499999975, −0.39500000999999900]
    //   The change counts the decay too (p_old is p before it):
    //   Σ Δp² = 0.10999999500000025² + 0.104999990000001² = 0.02312499680000039
    let before = p.clone();
    let change = b
        .adam_step(
            &mut p,
            &array![0.2, -0.1],
            &mut m,
            &mut v,
            None,
            &adam_step(1, 0.1, true),
        )
        .unwrap();
    assert_eq!(change, change_sum_squares(&before, &p));
    close_f64(change, 0.023_124_996_800_000_39, CHANGE_TOLERANCE);
    close_all(&m, &[0.025, -0.0125]);
    close_all(&v, &[3.906_25e-5, 9.765_625e-6]);
    close_all(&p, &[0.890_000_005, -0.395_000_01]);
    // t = 2: p·0.99 = [0.88110000494999975, −0.39105000989999901]; m, v, denom as in
    //   plain Adam: p = 0.99·p − (0.1/0.234375)·m/denom
    //     = [0.88110000495 − 0.0927737364, −0.39105000990 − 0.0506743040]
    //     = [0.78832626858105577, −0.44172431393101654]
    b.adam_step(
        &mut p,
        &array![0.1, 0.3],
        &mut m,
        &mut v,
        None,
        &adam_step(2, 0.1, true),
    )
    .unwrap();
    close_all(&m, &[0.034_375, 0.026_562_5]);
    close_all(&v, &[4.878_997_802_734_375e-5, 9.764_671_325_683_594e-5]);
    close_all(&p, &[0.788_326_268_581_055_8, -0.441_724_313_931_016_5]);
}

/// AMSGrad with beta2 = 0.5, so that v shrinks on the second step and the running
/// maximum is what divides.
#[test]
fn amsgrad_two_steps_uses_the_running_maximum() {
    let b = backend();
    let mut p = array![1.0f32];
    let (mut m, mut v, mut v_max) = (
        b.zeros(1).unwrap(),
        b.zeros(1).unwrap(),
        b.zeros(1).unwrap(),
    );
    let step = |t: i32| AdamStep {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.5,
        eps: 1e-8,
        weight_decay: 0.0,
        decoupled: false,
        bias_correction1: 1.0 - 0.9f64.powi(t),
        bias_correction2: 1.0 - 0.5f64.powi(t),
    };
    // t = 1, g = 1: m = 0.1, v = 0.5·1 = 0.5, v_max = 0.5; bc1 = 0.1, bc2 = 0.5
    //   p = 1 − (0.1/0.1)·0.1/(sqrt(0.5)/sqrt(0.5) + 1e-8) = 1 − 0.1/1.00000001
    //     = 0.90000000099999999;  Σ Δp² = 0.099999999² = 0.009999999800000001
    let before = p.clone();
    let change = b
        .adam_step(
            &mut p,
            &array![1.0],
            &mut m,
            &mut v,
            Some(&mut v_max),
            &step(1),
        )
        .unwrap();
    close_all(&v_max, &[0.5]);
    close_all(&p, &[0.900_000_001]);
    assert_eq!(change, change_sum_squares(&before, &p));
    close_f64(change, 0.009_999_999_800_000_001, CHANGE_TOLERANCE);
    // t = 2, g = 0.1: m = 0.09 + 0.01 = 0.1, v = 0.25 + 0.005 = 0.255 < v_max = 0.5;
    //   bc1 = 0.19, bc2 = 0.75
    //   p = 0.900000001 − (0.1/0.19)·0.1/(sqrt(0.5)/sqrt(0.75) + 1e-8)
    //     = 0.83553974540044266;  Σ Δp² = 0.06446025559955734² = 0.0041551245519602634
    let before = p.clone();
    let change = b
        .adam_step(
            &mut p,
            &array![0.1],
            &mut m,
            &mut v,
            Some(&mut v_max),
            &step(2),
        )
        .unwrap();
    assert_eq!(change, change_sum_squares(&before, &p));
    close_f64(change, 0.004_155_124_551_960_263, CHANGE_TOLERANCE);
    close_all(&m, &[0.1]);
    close_all(&v, &[0.255]);
    close_all(&v_max, &[0.5]);
    close_all(&p, &[0.835_539_745_400_442_7]);
}

// ---------------------------------------------------------------- LAMB

/// LAMB direction with β1 = 0.875, β2 = 1 − 2⁻¹⁰, eps 1e-6, weight decay 0.01 and
/// bias correction, p = [1, −2] (the direction pass leaves p alone).
#[test]
fn lamb_direction_and_norms_two_steps() {
    let b = backend();
    let p = array![1.0f32, -2.0];
    let (mut m, mut v, mut update) = (
        b.zeros(2).unwrap(),
        b.zeros(2).unwrap(),
        b.zeros(2).unwrap(),
    );
    let direction = |t: i32| LambDirection {
        beta1: BETA1,
        beta2: BETA2,
        eps: 1e-6,
        weight_decay: 0.01,
        bias_correction1: 1.0 - BETA1.powi(t),
        bias_correction2: 1.0 - BETA2.powi(t),
    };
    // t = 1, g = [0.5, −0.25]: m = 0.125·g = [0.0625, −0.03125],
    //   v = 2⁻¹⁰·g² = [2.44140625e-4, 6.103515625e-5]; m/bc1 = g, sqrt(v/bc2) = |g|:
    //   update = g/(|g| + 1e-6) + 0.01·p = [0.5/0.500001 + 0.01, −0.25/0.250001 − 0.02]
    //          = [1.0099980000040, −1.0199960000160]
    //   Σp² = 1 + 4 = 5;  Σupdate² = 1.0099980000040² + 1.0199960000160² = 2.0604878000607
    let norms = b
        .lamb_direction(
            &p,
            &array![0.5, -0.25],
            &mut m,
            &mut v,
            &mut update,
            &direction(1),
        )
        .unwrap();
    close_all(&m, &[0.0625, -0.03125]);
    close_all(&v, &[2.441_406_25e-4, 6.103_515_625e-5]);
    close_all(&update, &[1.009_998_000_004, -1.019_996_000_016]);
    assert_eq!(norms.param_sum_squares, 5.0);
    close_f64(norms.update_sum_squares, 2.060_487_800_060_719_7, 1e-6);
    // t = 2, g = [−0.5, 0.75]: m = 0.875·m + 0.125·g = [0.0546875 − 0.0625,
    //   −0.02734375 + 0.09375] = [−0.0078125, 0.06640625]
    //   v = (1 − 2⁻¹⁰)·v + 2⁻¹⁰·g² = [2.43902206420898e-4 + 2.44140625e-4,
    //       6.09755516052246e-5 + 5.4931640625e-4] = [4.880428314208984375e-4,
    //       6.10291957855224609375e-4]
    //   update = (m/0.234375)/(sqrt(v/0.00195217132568359375) + 1e-6) + 0.01·p
    //          = [−0.0333333333/0.500001 + 0.01, 0.2833333333/0.5591272200 − 0.02]
    //          = [−0.056666533333600, 0.48674215665714148]
    //   Σupdate² = 0.24012902306729325
    let norms = b
        .lamb_direction(
            &p,
            &array![-0.5, 0.75],
            &mut m,
            &mut v,
            &mut update,
            &direction(2),
        )
        .unwrap();
    close_all(&m, &[-0.007_812_5, 0.066_406_25]);
    close_all(&v, &[4.880_428_314_208_984_4e-4, 6.102_919_578_552_246e-4]);
    close_all(&update, &[-0.056_666_533_333_6, 0.486_742_156_657_141_5]);
    assert_eq!(norms.param_sum_squares, 5.0);
    close_f64(norms.update_sum_squares, 0.240_129_023_067_293_25, 1e-6);
    assert_eq!(p, array![1.0f32, -2.0]);
}

#[test]
fn axpy_and_scale() {
    let b = backend();
    let mut p = array![1.0f32, -2.0, 0.5];
    // p + (−0.5)·[2, 4, −1] = [1 − 1, −2 − 2, 0.5 + 0.5] = [0, −4, 1]
    // Σ Δp² = Σ (−0.5·x)² = 1 + 4 + 0.25 = 5.25 (exact)
    assert_eq!(b.axpy(&mut p, -0.5, &array![2.0, 4.0, -1.0]).unwrap(), 5.25);
    assert_eq!(p, array![0.0f32, -4.0, 1.0]);
    // [0, −4, 1]·0.25 = [0, −1, 0.25]
    b.scale(&mut p, 0.25).unwrap();
    assert_eq!(p, array![0.0f32, -1.0, 0.25]);
}

#[test]
fn sum_squares_small() {
    // 1 + 4 + 0.25 + 9 = 14.25 (exact in binary)
    assert_eq!(
        backend()
            .sum_squares(&array![1.0f32, -2.0, 0.5, 3.0])
            .unwrap(),
        14.25
    );
}

// ---------------------------------------------------------------- host boundary

#[test]
fn load_gradient_unscales_f16_and_sums() {
    let b = backend();
    let mut dst = b.zeros(3).unwrap();
    // f16 holds 1024, −2048 and 1536 exactly; ·1/1024 → [1, −2, 1.5]; Σ = 1 + 4 + 2.25
    let src = [1024.0f32, -2048.0, 1536.0].map(f16::from_f32);
    let stats = b
        .load_gradient(HostTensor::F16(&src), 1.0 / 1024.0, &mut dst)
        .unwrap();
    assert_eq!(dst, array![1.0f32, -2.0, 1.5]);
    assert!(stats.finite);
    assert_eq!(stats.sum_squares, 7.25);
}

#[test]
fn load_gradient_unscales_bf16_and_sums() {
    let b = backend();
    let mut dst = b.zeros(3).unwrap();
    // bf16 holds 1024, −3072 and 256 exactly; ·1/1024 → [1, −3, 0.25]; Σ = 1 + 9 + 0.0625
    let src = [1024.0f32, -3072.0, 256.0].map(bf16::from_f32);
    let stats = b
        .load_gradient(HostTensor::BF16(&src), 1.0 / 1024.0, &mut dst)
        .unwrap();
    assert_eq!(dst, array![1.0f32, -3.0, 0.25]);
    assert!(stats.finite);
    assert_eq!(stats.sum_squares, 10.0625);
}

#[test]
fn load_gradient_f32_and_its_sum_matches_sum_squares() {
    let b = backend();
    let mut dst = b.zeros(2).unwrap();
    // [3, −4]·0.5 = [1.5, −2]; Σ = 2.25 + 4 = 6.25
    let stats = b
        .load_gradient(HostTensor::F32(&[3.0, -4.0]), 0.5, &mut dst)
        .unwrap();
    assert_eq!(dst, array![1.5f32, -2.0]);
    assert!(stats.finite);
    assert_eq!(stats.sum_squares, 6.25);
    assert_eq!(b.sum_squares(&dst).unwrap(), stats.sum_squares);
}

#[test]
fn load_gradient_reports_nan_and_inf_in_half_inputs() {
    let b = backend();
    let mut dst = b.zeros(3).unwrap();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let src = [1024.0, bad, 2048.0].map(f16::from_f32);
        let stats = b
            .load_gradient(HostTensor::F16(&src), 1.0 / 1024.0, &mut dst)
            .unwrap();
        assert!(!stats.finite, "f16 {bad}");
        let src = [1024.0, 2048.0, bad].map(bf16::from_f32);
        let stats = b
            .load_gradient(HostTensor::BF16(&src), 1.0 / 1024.0, &mut dst)
            .unwrap();
        assert!(!stats.finite, "bf16 {bad}");
        let stats = b
            .load_gradient(HostTensor::F32(&[bad, 1.0, 2.0]), 1.0 / 1024.0, &mut dst)
            .unwrap();
        assert!(!stats.finite, "f32 {bad}");
    }
}

#[test]
fn load_gradient_finds_one_bad_value_in_a_large_parallel_tensor() {
    for b in [backend(), serial()] {
        let mut src = vec![f16::from_f32(1.0); LARGE];
        src[LARGE - 3] = f16::INFINITY;
        let mut dst = b.zeros(LARGE).unwrap();
        let stats = b
            .load_gradient(HostTensor::F16(&src), 1.0 / 1024.0, &mut dst)
            .unwrap();
        assert!(!stats.finite);
    }
}

#[test]
fn upload_widens_every_dtype() {
    let b = backend();
    let mut dst = b.zeros(2).unwrap();
    b.upload(HostTensor::F32(&[0.25, -8.0]), &mut dst).unwrap();
    assert_eq!(dst, array![0.25f32, -8.0]);
    b.upload(HostTensor::F16(&[f16::from_f32(1.5), f16::MAX]), &mut dst)
        .unwrap();
    assert_eq!(dst, array![1.5f32, 65504.0]);
    b.upload(
        HostTensor::BF16(&[bf16::from_f32(-0.5), bf16::ONE]),
        &mut dst,
    )
    .unwrap();
    assert_eq!(dst, array![-0.5f32, 1.0]);
}

/// Narrowing rounds to nearest, ties to even, and overflows to infinity.
#[test]
fn download_rounds_to_nearest_even() {
    let b = backend();
    // f16 has 10 fraction bits: 1 + 2⁻¹¹ is halfway between 1 and 1 + 2⁻¹⁰ → 1 (even);
    // 1 + 3·2⁻¹¹ is halfway between 1 + 2⁻¹⁰ (odd) and 1 + 2⁻⁹ → 1 + 2⁻⁹;
    // 1 + 2⁻¹¹ + 2⁻²⁰ is above halfway → 1 + 2⁻¹⁰; 65520 is halfway between the
    // largest f16 65504 and 65536 (not representable) → +inf.
    let src = array![
        1.0 + 2f32.powi(-11),
        1.0 + 3.0 * 2f32.powi(-11),
        1.0 + 2f32.powi(-11) + 2f32.powi(-20),
        65520.0,
        -2.5,
    ];
    let mut halves = [f16::ZERO; 5];
    b.download(&src, HostTensorMut::F16(&mut halves)).unwrap();
    let expected = [
        1.0,
        1.0 + 2f32.powi(-9),
        1.0 + 2f32.powi(-10),
        f32::INFINITY,
        -2.5,
    ];
    for (h, e) in halves.iter().zip(expected) {
        assert_eq!(h.to_f32(), e);
    }
    // bf16 has 7 fraction bits: the same ties one level up (2⁻⁸, 3·2⁻⁸).
    let src = array![
        1.0 + 2f32.powi(-8),
        1.0 + 3.0 * 2f32.powi(-8),
        1.0 + 2f32.powi(-8) + 2f32.powi(-20),
        -2.5,
    ];
    let mut bfloats = [bf16::ZERO; 4];
    b.download(&src, HostTensorMut::BF16(&mut bfloats)).unwrap();
    let expected = [1.0, 1.0 + 2f32.powi(-6), 1.0 + 2f32.powi(-7), -2.5];
    for (h, e) in bfloats.iter().zip(expected) {
        assert_eq!(h.to_f32(), e);
    }
    let mut floats = [0.0f32; 4];
    b.download(&src, HostTensorMut::F32(&mut floats)).unwrap();
    assert_eq!(floats.as_slice(), src.as_slice().unwrap());
}

// ---------------------------------------------------------------- errors

#[test]
fn length_mismatches_are_errors_and_write_nothing() {
    let b = backend();
    let mut p = array![1.0f32, 2.0];
    let short = array![1.0f32];
    let mut m = b.zeros(2).unwrap();
    let mut v = b.zeros(2).unwrap();
    let mut v_short = b.zeros(1).unwrap();
    let mismatch = |kernel: &'static str, expected, actual| BackendError::LengthMismatch {
        kernel,
        expected,
        actual,
    };
    assert_eq!(
        b.upload(HostTensor::F32(&[1.0]), &mut p),
        Err(mismatch("upload", 1, 2))
    );
    assert_eq!(
        b.download(&p, HostTensorMut::F16(&mut [f16::ZERO; 3])),
        Err(mismatch("download", 2, 3))
    );
    assert_eq!(
        b.load_gradient(HostTensor::BF16(&[bf16::ONE; 3]), 1.0, &mut p),
        Err(mismatch("load_gradient", 3, 2))
    );
    assert_eq!(b.axpy(&mut p, 1.0, &short), Err(mismatch("axpy", 2, 1)));
    let sgd = SgdStep {
        lr: 0.1,
        momentum: 0.9,
        dampening: 0.0,
        weight_decay: 0.0,
        nesterov: false,
        first_step: false,
        grad_scale: 1.0,
    };
    assert_eq!(
        b.sgd_step(&mut p, &short, Some(&mut m), &sgd),
        Err(mismatch("sgd_step", 2, 1))
    );
    assert_eq!(
        b.sgd_step(&mut p, &array![1.0, 1.0], Some(&mut v_short), &sgd),
        Err(mismatch("sgd_step", 2, 1))
    );
    let adam = adam_step(1, 0.0, false);
    assert_eq!(
        b.adam_step(&mut p, &short, &mut m, &mut v, None, &adam),
        Err(mismatch("adam_step", 2, 1))
    );
    assert_eq!(
        b.adam_step(&mut p, &array![1.0, 1.0], &mut m, &mut v_short, None, &adam),
        Err(mismatch("adam_step", 2, 1))
    );
    let mut v_max_short = b.zeros(1).unwrap();
    assert_eq!(
        b.adam_step(
            &mut p,
            &array![1.0, 1.0],
            &mut m,
            &mut v,
            Some(&mut v_max_short),
            &adam
        ),
        Err(mismatch("adam_step", 2, 1))
    );
    let lamb = LambDirection {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-6,
        weight_decay: 0.0,
        bias_correction1: 1.0,
        bias_correction2: 1.0,
    };
    let mut update_short = b.zeros(1).unwrap();
    assert_eq!(
        b.lamb_direction(
            &p,
            &array![1.0, 1.0],
            &mut m,
            &mut v,
            &mut update_short,
            &lamb
        ),
        Err(mismatch("lamb_direction", 2, 1))
    );
    assert_eq!(p, array![1.0f32, 2.0]);
    assert!(m.iter().chain(&v).all(|&x| x == 0.0));
}

/// A re-strided array (someone called `invert_axis` or sliced with a step) is used in
/// its logical order, not its memory order.
#[test]
fn non_contiguous_operands_are_read_in_logical_order() {
    let b = backend();
    let mut p = array![1.0f32, -2.0];
    let mut stepped = array![3.0f32, 99.0, 4.0];
    stepped.slice_axis_inplace(Axis(0), Slice::new(0, None, 2));
    assert!(!stepped.is_standard_layout());
    assert_eq!(stepped, array![3.0f32, 4.0]);
    // p + 1·[3, 4] = [4, 2]
    b.axpy(&mut p, 1.0, &stepped).unwrap();
    assert_eq!(p, array![4.0f32, 2.0]);
    // Σ [3, 4]² = 25
    assert_eq!(b.sum_squares(&stepped).unwrap(), 25.0);
    // A reversed destination is re-laid out: logical [3, 4]·2 = [6, 8].
    let mut reversed = array![4.0f32, 3.0];
    reversed.invert_axis(Axis(0));
    assert!(!reversed.is_standard_layout());
    b.scale(&mut reversed, 2.0).unwrap();
    assert_eq!(reversed, array![6.0f32, 8.0]);
    assert!(reversed.is_standard_layout());
}

// ---------------------------------------------------------------- parallel path

/// Everything one kernel sequence touches, for comparing two backends bit for bit.
#[derive(Clone)]
struct State {
    p: Array1<f32>,
    g: Array1<f32>,
    m: Array1<f32>,
    v: Array1<f32>,
    v_max: Array1<f32>,
    buf: Array1<f32>,
    update: Array1<f32>,
}

impl State {
    fn new(len: usize) -> Self {
        Self {
            p: filled(len, 1, -1.0, 1.0),
            g: filled(len, 2, -0.1, 0.1),
            m: filled(len, 3, -0.01, 0.01),
            v: filled(len, 4, 0.0, 1e-3),
            v_max: filled(len, 5, 0.0, 1e-3),
            buf: filled(len, 6, -0.1, 0.1),
            update: Array1::zeros(len),
        }
    }

    fn arrays(&self) -> [&Array1<f32>; 7] {
        [
            &self.p,
            &self.g,
            &self.m,
            &self.v,
            &self.v_max,
            &self.buf,
            &self.update,
        ]
    }
}

/// Runs the update kernel `update` on `p`, checks the `Σ (p_new − p_old)²` it returns
/// against the definition (f32 differences, summed in the backend's reduction order)
/// bit for bit, and records it.
fn record_change(
    scalars: &mut Vec<u64>,
    p: &mut Array1<f32>,
    update: impl FnOnce(&mut Array1<f32>) -> f64,
) {
    let before = p.clone();
    let change = update(p);
    assert_eq!(
        change.to_bits(),
        chunked_change_sum_squares(&before, p).to_bits(),
        "returned {change:e}"
    );
    assert!(change > 0.0);
    scalars.push(change.to_bits());
}

/// Runs every kernel once and returns the scalars they produced (as bits), the
/// update kernels' change sums included.
fn run_every_kernel(b: &NdArrayBackend, s: &mut State) -> Vec<u64> {
    let mut scalars = Vec::new();
    let half_grad: Vec<f16> = s.g.iter().map(|&x| f16::from_f32(x * 1024.0)).collect();
    let bf_grad: Vec<bf16> = s.g.iter().map(|&x| bf16::from_f32(x * 1024.0)).collect();
    let host_grad = s.g.to_vec();
    for src in [
        HostTensor::F32(&host_grad),
        HostTensor::F16(&half_grad),
        HostTensor::BF16(&bf_grad),
    ] {
        let stats = b.load_gradient(src, 1.0 / 1024.0, &mut s.update).unwrap();
        assert!(stats.finite);
        scalars.push(stats.sum_squares.to_bits());
        assert_eq!(b.sum_squares(&s.update).unwrap(), stats.sum_squares);
    }
    b.upload(HostTensor::F16(&half_grad), &mut s.update)
        .unwrap();
    b.upload(HostTensor::BF16(&bf_grad), &mut s.update).unwrap();
    b.upload(HostTensor::F32(&host_grad), &mut s.update)
        .unwrap();
    for (first_step, nesterov, weight_decay) in [(true, true, 0.01), (false, false, 0.0)] {
        let sgd = SgdStep {
            lr: 0.1,
            momentum: 0.9,
            dampening: 0.1,
            weight_decay,
            nesterov,
            first_step,
            grad_scale: 0.7,
        };
        record_change(&mut scalars, &mut s.p, |p| {
            b.sgd_step(p, &s.g, Some(&mut s.buf), &sgd).unwrap()
        });
        let plain = SgdStep {
            momentum: 0.0,
            ..sgd
        };
        record_change(&mut scalars, &mut s.p, |p| {
            b.sgd_step(p, &s.g, None, &plain).unwrap()
        });
    }
    for (weight_decay, decoupled) in [(0.0, false), (0.01, false), (0.01, true)] {
        let adam = AdamStep {
            weight_decay,
            decoupled,
            ..adam_step(3, 0.0, false)
        };
        record_change(&mut scalars, &mut s.p, |p| {
            b.adam_step(p, &s.g, &mut s.m, &mut s.v, None, &adam)
                .unwrap()
        });
        record_change(&mut scalars, &mut s.p, |p| {
            b.adam_step(p, &s.g, &mut s.m, &mut s.v, Some(&mut s.v_max), &adam)
                .unwrap()
        });
    }
    let lamb = LambDirection {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-6,
        weight_decay: 0.01,
        bias_correction1: 0.271,
        bias_correction2: 0.002_997,
    };
    let norms = b
        .lamb_direction(&s.p, &s.g, &mut s.m, &mut s.v, &mut s.update, &lamb)
        .unwrap();
    scalars.push(norms.param_sum_squares.to_bits());
    scalars.push(norms.update_sum_squares.to_bits());
    record_change(&mut scalars, &mut s.p, |p| {
        b.axpy(p, -1e-3, &s.update).unwrap()
    });
    b.scale(&mut s.buf, 0.5).unwrap();
    scalars.push(b.sum_squares(&s.p).unwrap().to_bits());
    let mut halves = vec![f16::ZERO; s.p.len()];
    b.download(&s.p, HostTensorMut::F16(&mut halves)).unwrap();
    let mut bfloats = vec![bf16::ZERO; s.p.len()];
    b.download(&s.p, HostTensorMut::BF16(&mut bfloats)).unwrap();
    // Fold the narrowed copies into the comparison through their bits.
    scalars.push(halves.iter().map(|h| u64::from(h.to_bits())).sum());
    scalars.push(bfloats.iter().map(|h| u64::from(h.to_bits())).sum());
    scalars
}

#[test]
fn parallel_path_equals_serial_path_bit_for_bit() {
    let mut parallel_state = State::new(LARGE);
    let mut serial_state = parallel_state.clone();
    let parallel_scalars = pool(2).install(|| run_every_kernel(&backend(), &mut parallel_state));
    let serial_scalars = run_every_kernel(&serial(), &mut serial_state);
    assert_eq!(parallel_scalars, serial_scalars);
    for (a, b) in parallel_state
        .arrays()
        .into_iter()
        .zip(serial_state.arrays())
    {
        same_bits(a, b);
    }
}

#[test]
fn small_tensors_split_anyway_give_the_same_bits() {
    let mut split = State::new(1000);
    let mut whole = split.clone();
    let split_scalars = pool(2).install(|| run_every_kernel(&always_parallel(), &mut split));
    let whole_scalars = run_every_kernel(&serial(), &mut whole);
    assert_eq!(split_scalars, whole_scalars);
    for (a, b) in split.arrays().into_iter().zip(whole.arrays()) {
        same_bits(a, b);
    }
}

/// Every kernel, the update kernels' change sums included, on one and on two threads
/// of the default (parallel above the threshold) backend.
#[test]
fn every_kernel_gives_the_same_bits_with_one_or_two_threads() {
    let mut one_state = State::new(LARGE);
    let mut two_state = one_state.clone();
    let one = pool(1).install(|| run_every_kernel(&backend(), &mut one_state));
    let two = pool(2).install(|| run_every_kernel(&backend(), &mut two_state));
    assert_eq!(one, two);
    for (a, b) in one_state.arrays().into_iter().zip(two_state.arrays()) {
        same_bits(a, b);
    }
}

#[test]
fn reductions_are_the_same_bits_with_one_or_two_threads() {
    let x = filled(LARGE, 7, -3.0, 3.0);
    let b = backend();
    let one = pool(1).install(|| b.sum_squares(&x).unwrap());
    let two = pool(2).install(|| b.sum_squares(&x).unwrap());
    assert_eq!(one.to_bits(), two.to_bits());
    assert_eq!(one.to_bits(), serial().sum_squares(&x).unwrap().to_bits());

    let host = x.to_vec();
    let mut dst = b.zeros(LARGE).unwrap();
    let one = pool(1).install(|| {
        b.load_gradient(HostTensor::F32(&host), 0.5, &mut dst)
            .unwrap()
    });
    let two = pool(2).install(|| {
        b.load_gradient(HostTensor::F32(&host), 0.5, &mut dst)
            .unwrap()
    });
    assert_eq!(one.sum_squares.to_bits(), two.sum_squares.to_bits());

    let run_lamb = |threads: usize| {
        let mut state = State::new(LARGE);
        let lamb = LambDirection {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            weight_decay: 0.01,
            bias_correction1: 0.1,
            bias_correction2: 0.001,
        };
        pool(threads).install(|| {
            b.lamb_direction(
                &state.p,
                &state.g,
                &mut state.m,
                &mut state.v,
                &mut state.update,
                &lamb,
            )
            .unwrap()
        })
    };
    let (one, two) = (run_lamb(1), run_lamb(2));
    assert_eq!(
        one.param_sum_squares.to_bits(),
        two.param_sum_squares.to_bits()
    );
    assert_eq!(
        one.update_sum_squares.to_bits(),
        two.update_sum_squares.to_bits()
    );
}

/// The chunked f64 sum is accurate: against a naive f64 sum (whose own error over
/// 1Mi terms is far below 1e-12 relative for same-sign terms).
#[test]
fn sum_squares_is_accurate() {
    let x = filled(LARGE, 8, -2.0, 2.0);
    let naive: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    close_f64(backend().sum_squares(&x).unwrap(), naive, 1e-12);
    const { assert!(LARGE > 2 * REDUCTION_CHUNK, "several chunks") };
}

/// Betas arrive as f64 and 1 − β is formed before rounding, as PyTorch does: with
/// β2 = 0.999 and g = 1 the first second moment is f32(0.001) exactly. Forming it from
/// f32(0.999) = 0.99900001287 would give 0.000999987 instead.
#[test]
fn one_minus_beta_is_formed_in_f64() {
    let backend = NdArrayBackend::new();
    let mut p = backend.zeros(1).unwrap();
    let mut g = backend.zeros(1).unwrap();
    backend.upload(HostTensor::F32(&[1.0]), &mut g).unwrap();
    let mut m = backend.zeros(1).unwrap();
    let mut v = backend.zeros(1).unwrap();
    let step = AdamStep {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        decoupled: false,
        bias_correction1: 1.0 - 0.9,
        bias_correction2: 1.0 - 0.999,
    };
    backend
        .adam_step(&mut p, &g, &mut m, &mut v, None, &step)
        .unwrap();
    assert_eq!(v[0], 0.001f32);
    assert_eq!(m[0], 0.1f32);
}
