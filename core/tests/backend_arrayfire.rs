//! The ArrayFire backend against the ndarray backend (itself checked against hand
//! computations in `tests/backend.rs`): every kernel on the same pseudo-random data,
//! elementwise results to 1e-6 relative, reductions to 1e-6 relative. The update
//! kernels' returned `Σ (p_new − p_old)²` is checked against its definition computed
//! on the host from the device's weights before and after.
//!
//! Built only with `--features arrayfire`; needs `libaf` (and a device) to link and
//! run: `cargo test -p regimen-core --features arrayfire --test backend_arrayfire`.

#![cfg(feature = "arrayfire")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use half::{bf16, f16};
use ndarray::Array1;
use regimen_core::backend::{
    AdamStep, ArrayFireBackend, Backend, BackendError, LambDirection, NdArrayBackend, SgdStep,
};
use regimen_core::{HostTensor, HostTensorMut};

/// Elements per test tensor: enough for ArrayFire to use its multi-block kernels.
const LEN: usize = 10_007;
const TOLERANCE: f64 = 1e-6;

fn af() -> ArrayFireBackend {
    ArrayFireBackend::new().expect("ArrayFire device")
}

fn cpu() -> NdArrayBackend {
    NdArrayBackend::new()
}

/// Deterministic pseudo-random values in `[low, high)` (a 64-bit LCG).
fn random(len: usize, seed: u64, low: f32, high: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
            low + (high - low) * unit
        })
        .collect()
}

fn on_device(b: &ArrayFireBackend, values: &[f32]) -> arrayfire::Array<f32> {
    let mut tensor = b.zeros(values.len()).unwrap();
    b.upload(HostTensor::F32(values), &mut tensor).unwrap();
    tensor
}

fn on_host(b: &ArrayFireBackend, tensor: &arrayfire::Array<f32>) -> Vec<f32> {
    let mut values = vec![0.0; b.len(tensor)];
    b.download(tensor, HostTensorMut::F32(&mut values)).unwrap();
    values
}

/// Elementwise 1e-6 relative, with an absolute floor of 1e-6 × the largest magnitude
/// (an element that cancels to near zero has no meaningful relative error).
#[track_caller]
fn close_all(device: &[f32], reference: &Array1<f32>) {
    assert_eq!(device.len(), reference.len());
    let scale = reference
        .iter()
        .fold(0.0f64, |s, &x| s.max(f64::from(x).abs()));
    for (i, (&d, &r)) in device.iter().zip(reference).enumerate() {
        let (d, r) = (f64::from(d), f64::from(r));
        let allowed = TOLERANCE * r.abs().max(scale);
        assert!(
            (d - r).abs() <= allowed,
            "element {i}: device {d:e} vs ndarray {r:e}"
        );
    }
}

#[track_caller]
fn close(device: f64, reference: f64) {
    assert!(
        (device - reference).abs() <= TOLERANCE * reference.abs(),
        "device {device:e} vs ndarray {reference:e}"
    );
}

/// Checks an update kernel's returned `Σ (p_new − p_old)²` against the definition
/// (each change the f32 difference, squared and summed in f64) over the weights
/// downloaded before and after. Only the order of the additions differs: 1e-9
/// relative with f64 accumulation; a device without doubles sums in f32, whose
/// rounding over 10⁴ positive terms stays below 1e-4.
#[track_caller]
fn assert_change(b: &ArrayFireBackend, returned: f64, before: &[f32], after: &[f32]) {
    let expected: f64 = before
        .iter()
        .zip(after)
        .map(|(&old, &new)| {
            let change = f64::from(new - old);
            change * change
        })
        .sum();
    let tolerance = if b.accumulates_in_f64() { 1e-9 } else { 1e-4 };
    assert!(expected > 0.0);
    assert!(
        (returned - expected).abs() <= tolerance * expected,
        "returned {returned:e}, by definition {expected:e}"
    );
}

/// The same optimizer state on both backends.
struct Pair {
    host: Vec<Array1<f32>>,
    device: Vec<arrayfire::Array<f32>>,
}

impl Pair {
    /// p, g, m, v, v_max, momentum buffer, update.
    fn new(b: &ArrayFireBackend) -> Self {
        let host: Vec<Vec<f32>> = vec![
            random(LEN, 1, -1.0, 1.0),
            random(LEN, 2, -0.1, 0.1),
            random(LEN, 3, -0.01, 0.01),
            random(LEN, 4, 0.0, 1e-3),
            random(LEN, 5, 0.0, 1e-3),
            random(LEN, 6, -0.1, 0.1),
            vec![0.0; LEN],
        ];
        Self {
            device: host.iter().map(|values| on_device(b, values)).collect(),
            host: host.into_iter().map(Array1::from_vec).collect(),
        }
    }

    #[track_caller]
    fn assert_close(&self, b: &ArrayFireBackend) {
        for (device, host) in self.device.iter().zip(&self.host) {
            close_all(&on_host(b, device), host);
        }
    }
}

#[test]
fn name_zeros_and_len() {
    let b = af();
    assert_eq!(b.name(), "arrayfire");
    let zeros = b.zeros(7).unwrap();
    assert_eq!(b.len(&zeros), 7);
    assert_eq!(on_host(&b, &zeros), vec![0.0; 7]);
    assert!(!b.description().is_empty());
}

#[test]
fn missing_device_is_unavailable() {
    assert!(matches!(
        ArrayFireBackend::on_device(1_000_000),
        Err(BackendError::Unavailable { .. })
    ));
}

#[test]
fn upload_and_download_every_dtype_like_ndarray() {
    let (b, c) = (af(), cpu());
    let values = random(LEN, 9, -70_000.0, 70_000.0);
    let tensor = on_device(&b, &values);
    let reference = Array1::from_vec(values.clone());
    assert_eq!(on_host(&b, &tensor), values);

    let mut device_halves = vec![f16::ZERO; LEN];
    let mut host_halves = vec![f16::ZERO; LEN];
    b.download(&tensor, HostTensorMut::F16(&mut device_halves))
        .unwrap();
    c.download(&reference, HostTensorMut::F16(&mut host_halves))
        .unwrap();
    assert_eq!(
        device_halves
            .iter()
            .map(|h| h.to_bits())
            .collect::<Vec<_>>(),
        host_halves.iter().map(|h| h.to_bits()).collect::<Vec<_>>()
    );
    let mut device_bfloats = vec![bf16::ZERO; LEN];
    let mut host_bfloats = vec![bf16::ZERO; LEN];
    b.download(&tensor, HostTensorMut::BF16(&mut device_bfloats))
        .unwrap();
    c.download(&reference, HostTensorMut::BF16(&mut host_bfloats))
        .unwrap();
    assert_eq!(device_bfloats, host_bfloats);

    let mut widened = b.zeros(LEN).unwrap();
    b.upload(HostTensor::F16(&host_halves), &mut widened)
        .unwrap();
    let mut reference_widened = c.zeros(LEN).unwrap();
    c.upload(HostTensor::F16(&host_halves), &mut reference_widened)
        .unwrap();
    assert_eq!(on_host(&b, &widened), reference_widened.to_vec());
    b.upload(HostTensor::BF16(&host_bfloats), &mut widened)
        .unwrap();
    c.upload(HostTensor::BF16(&host_bfloats), &mut reference_widened)
        .unwrap();
    assert_eq!(on_host(&b, &widened), reference_widened.to_vec());
}

#[test]
fn load_gradient_like_ndarray() {
    let (b, c) = (af(), cpu());
    let values = random(LEN, 10, -1000.0, 1000.0);
    let halves: Vec<f16> = values.iter().map(|&x| f16::from_f32(x)).collect();
    let bfloats: Vec<bf16> = values.iter().map(|&x| bf16::from_f32(x)).collect();
    for src in [
        HostTensor::F32(&values),
        HostTensor::F16(&halves),
        HostTensor::BF16(&bfloats),
    ] {
        let mut device = b.zeros(LEN).unwrap();
        let mut host = c.zeros(LEN).unwrap();
        let device_stats = b.load_gradient(src, 1.0 / 1024.0, &mut device).unwrap();
        let host_stats = c.load_gradient(src, 1.0 / 1024.0, &mut host).unwrap();
        assert!(device_stats.finite);
        close(device_stats.sum_squares, host_stats.sum_squares);
        close_all(&on_host(&b, &device), &host);
    }
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut with_bad = values.clone();
        with_bad[LEN / 2] = bad;
        let mut device = b.zeros(LEN).unwrap();
        let stats = b
            .load_gradient(HostTensor::F32(&with_bad), 0.5, &mut device)
            .unwrap();
        assert!(!stats.finite, "{bad}");
        let halves: Vec<f16> = with_bad.iter().map(|&x| f16::from_f32(x)).collect();
        let stats = b
            .load_gradient(HostTensor::F16(&halves), 0.5, &mut device)
            .unwrap();
        assert!(!stats.finite, "f16 {bad}");
    }
}

#[test]
fn sum_squares_scale_and_axpy_like_ndarray() {
    let (b, c) = (af(), cpu());
    let mut pair = Pair::new(&b);
    close(
        b.sum_squares(&pair.device[0]).unwrap(),
        c.sum_squares(&pair.host[0]).unwrap(),
    );
    b.scale(&mut pair.device[0], -0.75).unwrap();
    c.scale(&mut pair.host[0], -0.75).unwrap();
    let (x_device, x_host) = (pair.device[1].clone(), pair.host[1].clone());
    let before = on_host(&b, &pair.device[0]);
    let change = b.axpy(&mut pair.device[0], 0.3, &x_device).unwrap();
    assert_change(&b, change, &before, &on_host(&b, &pair.device[0]));
    c.axpy(&mut pair.host[0], 0.3, &x_host).unwrap();
    pair.assert_close(&b);
}

#[test]
fn sgd_like_ndarray() {
    let (b, c) = (af(), cpu());
    let mut pair = Pair::new(&b);
    let cases = [
        (0.0, 0.0, false, true, 0.0),
        (0.9, 0.1, true, true, 0.01),
        (0.9, 0.1, true, false, 0.01),
        (0.9, 0.5, false, false, 0.0),
    ];
    for (momentum, dampening, nesterov, first_step, weight_decay) in cases {
        let step = SgdStep {
            lr: 0.1,
            momentum,
            dampening,
            weight_decay,
            nesterov,
            first_step,
            grad_scale: 0.7,
        };
        let before = on_host(&b, &pair.device[0]);
        let [p, g, _, _, _, buf, _] = &mut pair.device[..] else {
            unreachable!()
        };
        let change = b.sgd_step(p, g, Some(buf), &step).unwrap();
        assert_change(&b, change, &before, &on_host(&b, &pair.device[0]));
        let [p, g, _, _, _, buf, _] = &mut pair.host[..] else {
            unreachable!()
        };
        c.sgd_step(p, g, Some(buf), &step).unwrap();
        pair.assert_close(&b);
    }
}

#[test]
fn adam_family_like_ndarray() {
    let (b, c) = (af(), cpu());
    let mut pair = Pair::new(&b);
    for (t, (weight_decay, decoupled, amsgrad)) in [
        (0.0, false, false),
        (0.1, false, false),
        (0.1, true, false),
        (0.0, false, true),
        (0.1, true, true),
    ]
    .into_iter()
    .enumerate()
    {
        let t = t as i32 + 1;
        let step = AdamStep {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            decoupled,
            bias_correction1: 1.0 - 0.9f64.powi(t),
            bias_correction2: 1.0 - 0.999f64.powi(t),
        };
        let before = on_host(&b, &pair.device[0]);
        let [p, g, m, v, v_max, _, _] = &mut pair.device[..] else {
            unreachable!()
        };
        let change = b
            .adam_step(p, g, m, v, amsgrad.then_some(v_max), &step)
            .unwrap();
        assert_change(&b, change, &before, &on_host(&b, &pair.device[0]));
        let [p, g, m, v, v_max, _, _] = &mut pair.host[..] else {
            unreachable!()
        };
        c.adam_step(p, g, m, v, amsgrad.then_some(v_max), &step)
            .unwrap();
        pair.assert_close(&b);
    }
}

#[test]
fn lamb_direction_like_ndarray() {
    let (b, c) = (af(), cpu());
    let mut pair = Pair::new(&b);
    for t in 1..=2 {
        let direction = LambDirection {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            weight_decay: 0.01,
            bias_correction1: 1.0 - 0.9f64.powi(t),
            bias_correction2: 1.0 - 0.999f64.powi(t),
        };
        let [p, g, m, v, _, _, update] = &mut pair.device[..] else {
            unreachable!()
        };
        let device = b.lamb_direction(p, g, m, v, update, &direction).unwrap();
        let [p, g, m, v, _, _, update] = &mut pair.host[..] else {
            unreachable!()
        };
        let host = c.lamb_direction(p, g, m, v, update, &direction).unwrap();
        close(device.param_sum_squares, host.param_sum_squares);
        close(device.update_sum_squares, host.update_sum_squares);
        pair.assert_close(&b);
    }
}

#[test]
fn errors_like_ndarray() {
    let b = af();
    let mut p = on_device(&b, &[1.0, 2.0]);
    let short = on_device(&b, &[1.0]);
    assert_eq!(
        b.axpy(&mut p, 1.0, &short),
        Err(BackendError::LengthMismatch {
            kernel: "axpy",
            expected: 2,
            actual: 1
        })
    );
    assert!(matches!(
        b.upload(HostTensor::F32(&[1.0; 3]), &mut p),
        Err(BackendError::LengthMismatch { .. })
    ));
    let step = SgdStep {
        lr: 0.1,
        momentum: 0.9,
        dampening: 0.0,
        weight_decay: 0.0,
        nesterov: false,
        first_step: true,
        grad_scale: 1.0,
    };
    let g = on_device(&b, &[1.0, 1.0]);
    assert!(matches!(
        b.sgd_step(&mut p, &g, None, &step),
        Err(BackendError::InvalidOperand { .. })
    ));
    assert_eq!(on_host(&b, &p), vec![1.0, 2.0]);
}
