//! Train a small MLP through Regimen's stepper API.
//!
//! ```text
//! cargo run --release --example train_mlp [-- SCRIPT]
//! ```
//!
//! The model classifies 2-D points of three interleaved spirals: a hidden layer of 64
//! ReLU units, an RMSNorm with a learned gain, and a linear output layer with softmax
//! cross-entropy. Forward and backward passes are written out by hand on `Vec<f32>`;
//! everything about *how* the weights move — optimizer, learning-rate schedule,
//! weight-decay exclusions, layer-wise lr decay, precision — comes from the script
//! (default `examples/mlp_adamw.regimen`).

use std::process::ExitCode;

use regimen::core::problem::SplitMix64;
use regimen::{CompileOptions, HostTensor, HostTensorMut, Metrics, ParamSpec, Script};

const CLASSES: usize = 3;
const POINTS_PER_CLASS: usize = 200;
const HIDDEN: usize = 64;
const BATCH: usize = 60;
const RMS_EPS: f32 = 1e-6;
const SEED: u64 = 2024;

/// Indices into the parameter list.
const W0: usize = 0;
const B0: usize = 1;
const GAIN: usize = 2;
const W1: usize = 3;
const B1: usize = 4;

fn param_specs() -> Vec<ParamSpec> {
    // PyTorch naming, so that the script's globs read like a real model's.
    vec![
        ParamSpec::new("layers.0.weight", &[HIDDEN, 2]).with_depth(0),
        ParamSpec::new("layers.0.bias", &[HIDDEN]).with_depth(0),
        ParamSpec::new("norm.weight", &[HIDDEN]).with_depth(1),
        ParamSpec::new("layers.1.weight", &[CLASSES, HIDDEN]).with_depth(1),
        ParamSpec::new("layers.1.bias", &[CLASSES]).with_depth(1),
    ]
}

/// Three spiral arms (the CS231n data set): class `c`'s point `i` sits at radius
/// `r = i / n` and angle `4c + 4r` plus Gaussian-ish noise.
fn spirals(rng: &mut SplitMix64) -> Vec<([f32; 2], usize)> {
    let mut data = Vec::with_capacity(CLASSES * POINTS_PER_CLASS);
    for class in 0..CLASSES {
        for i in 0..POINTS_PER_CLASS {
            let r = i as f64 / POINTS_PER_CLASS as f64;
            let angle = 4.0 * class as f64 + 4.0 * r + 0.2 * rng.normal();
            data.push(([(r * angle.sin()) as f32, (r * angle.cos()) as f32], class));
        }
    }
    data
}

/// Uniform in ±1/√fan_in (PyTorch's `nn.Linear` default); gain 1.
fn init(specs: &[ParamSpec], rng: &mut SplitMix64) -> Vec<Vec<f32>> {
    specs
        .iter()
        .enumerate()
        .map(|(index, spec)| match index {
            GAIN => vec![1.0; spec.numel()],
            _ => {
                let fan_in = if index <= B0 { 2.0 } else { HIDDEN as f64 };
                let bound = 1.0 / f64::sqrt(fan_in);
                (0..spec.numel())
                    .map(|_| (bound * rng.symmetric()) as f32)
                    .collect()
            }
        })
        .collect()
}

/// The activations of one sample that the backward pass needs.
struct Forward {
    pre: [f32; HIDDEN],
    normed: [f32; HIDDEN],
    rms: f32,
    probs: [f32; CLASSES],
}

fn forward(p: &[Vec<f32>], x: &[f32; 2]) -> Forward {
    let mut pre = [0.0; HIDDEN];
    for (j, pre) in pre.iter_mut().enumerate() {
        *pre = p[B0][j] + p[W0][2 * j] * x[0] + p[W0][2 * j + 1] * x[1];
    }
    let hidden = pre.map(|v| v.max(0.0));
    let rms = (hidden.iter().map(|h| h * h).sum::<f32>() / HIDDEN as f32 + RMS_EPS).sqrt();
    let normed = hidden.map(|h| h / rms);
    let mut logits = [0.0f32; CLASSES];
    for (k, logit) in logits.iter_mut().enumerate() {
        let row = &p[W1][k * HIDDEN..][..HIDDEN];
        *logit = p[B1][k]
            + (0..HIDDEN)
                .map(|j| row[j] * p[GAIN][j] * normed[j])
                .sum::<f32>();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps = logits.map(|l| (l - max).exp());
    let total: f32 = exps.iter().sum();
    Forward {
        pre,
        normed,
        rms,
        probs: exps.map(|e| e / total),
    }
}

/// Mean cross-entropy over `batch`, its gradient accumulated into `grads` (zeroed here).
fn loss_and_grad(
    p: &[Vec<f32>],
    data: &[([f32; 2], usize)],
    batch: &[usize],
    grads: &mut [Vec<f32>],
) -> f64 {
    grads.iter_mut().for_each(|g| g.fill(0.0));
    let scale = 1.0 / batch.len() as f32;
    let mut loss = 0.0f64;
    for &i in batch {
        let (x, label) = &data[i];
        let f = forward(p, x);
        loss -= f64::from(f.probs[*label].max(1e-12)).ln();
        // d loss / d logits = softmax − one-hot.
        let mut d_logits = f.probs;
        d_logits[*label] -= 1.0;
        let mut d_normed = [0.0f32; HIDDEN];
        for (k, &d) in d_logits.iter().enumerate() {
            let d = d * scale;
            grads[B1][k] += d;
            for j in 0..HIDDEN {
                grads[W1][k * HIDDEN + j] += d * p[GAIN][j] * f.normed[j];
                grads[GAIN][j] += d * p[W1][k * HIDDEN + j] * f.normed[j];
                d_normed[j] += d * p[W1][k * HIDDEN + j] * p[GAIN][j];
            }
        }
        // RMSNorm: dh = (dn − n·mean(dn ⊙ n)) / rms; then ReLU passes where pre > 0.
        let mean_dot = (0..HIDDEN).map(|j| d_normed[j] * f.normed[j]).sum::<f32>() / HIDDEN as f32;
        for j in 0..HIDDEN {
            if f.pre[j] > 0.0 {
                let d_pre = (d_normed[j] - f.normed[j] * mean_dot) / f.rms;
                grads[B0][j] += d_pre;
                grads[W0][2 * j] += d_pre * x[0];
                grads[W0][2 * j + 1] += d_pre * x[1];
            }
        }
    }
    loss / batch.len() as f64
}

fn accuracy(p: &[Vec<f32>], data: &[([f32; 2], usize)]) -> f64 {
    let correct = data
        .iter()
        .filter(|(x, label)| {
            let probs = forward(p, x).probs;
            let best = (0..CLASSES)
                .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
                .unwrap_or(0);
            best == *label
        })
        .count();
    correct as f64 / data.len() as f64
}

fn run(script_path: &str) -> Result<(), regimen::Error> {
    let mut rng = SplitMix64::new(SEED);
    let train = spirals(&mut rng);
    let test = spirals(&mut rng);
    let steps_per_epoch = train.len().div_ceil(BATCH);

    // The data loader decides how long an epoch is; the script counts in epochs.
    let options = CompileOptions {
        steps_per_epoch: Some(steps_per_epoch as f64),
        batch_size: Some(BATCH as f64),
    };
    let script = Script::from_file_with(script_path, &options)?;
    if let Some(warnings) = script.warnings() {
        eprint!("{warnings}");
    }
    let steps = script.compiled().horizon_steps().unwrap_or(400);
    let epochs = steps.div_ceil(steps_per_epoch as u64);

    let specs = param_specs();
    let mut params = init(&specs, &mut rng);
    let mut grads: Vec<Vec<f32>> = specs.iter().map(|s| vec![0.0; s.numel()]).collect();
    let initial: Vec<HostTensor> = params.iter().map(|p| HostTensor::F32(p)).collect();
    let mut stepper = script.bind(&specs, &initial)?;
    println!("{}", script.name());
    print!("{}", stepper.binding().describe());
    println!(
        "{} training points, batches of {BATCH}, {steps_per_epoch} steps per epoch, {epochs} epochs\n",
        train.len()
    );
    println!("epoch       lr  train loss  skipped");

    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut step = 0;
    'training: for epoch in 0..epochs {
        rng.shuffle(&mut order);
        let (mut loss_sum, mut batches, mut skipped, mut lr) = (0.0, 0, 0, 0.0);
        for batch in order.chunks(BATCH) {
            if step == steps {
                break 'training;
            }
            let loss = loss_and_grad(&params, &train, batch, &mut grads);
            // Scaling the loss scales its gradient: 1 unless the script asks for
            // loss scaling.
            let loss_scale = stepper.loss_scale() as f32;
            grads.iter_mut().flatten().for_each(|g| *g *= loss_scale);
            let grad_views: Vec<HostTensor> = grads.iter().map(|g| HostTensor::F32(g)).collect();
            let mut param_views: Vec<HostTensorMut> =
                params.iter_mut().map(|p| HostTensorMut::F32(p)).collect();
            let report =
                stepper.step(&mut param_views, &grad_views, &Metrics { loss: Some(loss) })?;
            lr = report
                .scalars
                .iter()
                .find(|(name, _)| name == "lr")
                .map_or(f64::NAN, |(_, value)| *value);
            skipped += usize::from(report.skipped);
            loss_sum += loss;
            batches += 1;
            step += 1;
        }
        println!(
            "{:>5}  {lr:>7.5}  {:>10.4}  {skipped:>7}",
            epoch + 1,
            loss_sum / f64::from(batches.max(1))
        );
    }
    println!(
        "\nfinal accuracy: train {:.1}%, test {:.1}% ({} updates)",
        100.0 * accuracy(&params, &train),
        100.0 * accuracy(&params, &test),
        stepper.updates()
    );
    Ok(())
}

fn main() -> ExitCode {
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/mlp_adamw.regimen");
    let script = std::env::args()
        .nth(1)
        .unwrap_or_else(|| default.to_string());
    match run(&script) {
        Ok(()) => ExitCode::SUCCESS,
        Err(regimen::Error::Compile(report)) => {
            eprint!("{report}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("error: {}", error.to_string_with_causes());
            ExitCode::FAILURE
        }
    }
}
