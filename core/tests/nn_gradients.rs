//! The MLP's backward pass against central finite differences of its forward pass,
//! for every element of every parameter, with ReLU and GELU.

use regimen_core::data::{Dataset, TeacherSpec};
use regimen_core::nn::Mlp;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Checks `d loss / d p` for every parameter element. f32 arithmetic: with h = 1e-2
/// the loss (≈ 1) is resolved to ~1e-7, so the difference quotient carries ~1e-5 of
/// rounding noise plus O(h²) truncation error, well inside 5e-5 + 0.2%; a kink of
/// ReLU crossed by ±h would show as a single large outlier, which it does not forgive.
fn check(spec: &str, seed: u64, input_scale: f32) -> TestResult {
    let mlp = Mlp::parse(spec)?;
    let data = Dataset::teacher(&TeacherSpec {
        samples: 12,
        features: mlp.inputs(),
        classes: mlp.classes(),
        hidden: 8,
        seed,
    })?;
    // GELU runs on inputs × 3: pre-activations of order 1–3, where its curvature (and
    // a wrong derivative) shows. ReLU keeps unit inputs, so that ±h rarely crosses a
    // kink.
    let x: Vec<f32> = data.x.iter().map(|v| input_scale * v).collect();
    let data = regimen_core::data::Dataset { x, ..data };
    let params = mlp.init(seed);
    let mut grads: Vec<Vec<f32>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
    let loss = mlp.loss_and_grad(&params, &data.x, &data.labels, &mut grads)?;
    let eval = mlp.evaluate(&params, &data.x, &data.labels)?;
    assert!((loss - eval.loss).abs() < 1e-6, "{loss} vs {}", eval.loss);
    let h = 1e-2f32;
    let mut checked = 0;
    for (t, tensor) in params.iter().enumerate() {
        for i in 0..tensor.len() {
            let mut plus = params.clone();
            plus[t][i] += h;
            let mut minus = params.clone();
            minus[t][i] -= h;
            let fd = (mlp.evaluate(&plus, &data.x, &data.labels)?.loss
                - mlp.evaluate(&minus, &data.x, &data.labels)?.loss)
                / (2.0 * f64::from(h));
            let g = f64::from(grads[t][i]);
            assert!(
                (fd - g).abs() <= 5e-5 + 2e-3 * g.abs(),
                "{spec}: tensor {t} element {i}: backward {g}, finite difference {fd}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, mlp.numel());
    Ok(())
}

#[test]
fn gelu_gradients_match_finite_differences() -> TestResult {
    check("mlp:5,7,6,3:gelu", 1, 3.0)
}

#[test]
fn relu_gradients_match_finite_differences() -> TestResult {
    check("mlp:4,9,3", 2, 1.0)
}

#[test]
fn gradient_of_a_single_linear_layer_is_softmax_minus_onehot_times_x() -> TestResult {
    // One row, no hidden layer: dW = (p − e_y) xᵀ, db = p − e_y, by hand.
    let mlp = Mlp::parse("mlp:2,2")?;
    let params = vec![vec![0.0f32; 4], vec![0.0f32; 2]];
    let mut grads = vec![vec![0.0f32; 4], vec![0.0f32; 2]];
    let loss = mlp.loss_and_grad(&params, &[1.0, 2.0], &[1], &mut grads)?;
    assert!((loss - std::f64::consts::LN_2).abs() < 1e-7);
    assert_eq!(grads[1], vec![0.5, -0.5]);
    assert_eq!(grads[0], vec![0.5, 1.0, -0.5, -1.0]);
    Ok(())
}
