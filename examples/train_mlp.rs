//! Train a small MLP through Regimen's stepper API.
//!
//! ```text
//! cargo run --release --example train_mlp [-- SCRIPT]
//! ```
//!
//! The model classifies 2-D points of three interleaved spirals: the library's
//! [`Mlp`] with two hidden layers of 64 ReLU units and softmax cross-entropy
//! (`regimen run` trains the same model family on real data). The loop is written
//! out here — minibatches, forward and backward, loss scaling, `Stepper::step` — to
//! show the stepper API a training loop of your own would use; everything about
//! *how* the weights move — optimizer, learning-rate schedule,
//! weight-decay exclusions, layer-wise lr decay, precision — comes from the script
//! (default `examples/mlp_adamw.regimen`).

use std::process::ExitCode;

use regimen::core::data::Dataset;
use regimen::core::nn::{Activation, Mlp};
use regimen::core::problem::SplitMix64;
use regimen::{CompileOptions, HostTensor, HostTensorMut, Metrics, Script};

const CLASSES: usize = 3;
const POINTS_PER_CLASS: usize = 200;
const HIDDEN: usize = 64;
const BATCH: usize = 60;
const SEED: u64 = 2024;

/// Three spiral arms (the CS231n data set): class `c`'s point `i` sits at radius
/// `r = i / n` and angle `4c + 4r` plus Gaussian-ish noise.
fn spirals(rng: &mut SplitMix64) -> Dataset {
    let mut x = Vec::with_capacity(2 * CLASSES * POINTS_PER_CLASS);
    let mut labels = Vec::with_capacity(CLASSES * POINTS_PER_CLASS);
    for class in 0..CLASSES {
        for i in 0..POINTS_PER_CLASS {
            let r = i as f64 / POINTS_PER_CLASS as f64;
            let angle = 4.0 * class as f64 + 4.0 * r + 0.2 * rng.normal();
            x.extend([(r * angle.sin()) as f32, (r * angle.cos()) as f32]);
            labels.push(class as u32);
        }
    }
    Dataset {
        features: 2,
        classes: CLASSES,
        x,
        labels,
    }
}

fn run(script_path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = SplitMix64::new(SEED);
    let train = spirals(&mut rng);
    let test = spirals(&mut rng);
    let steps_per_epoch = train.len().div_ceil(BATCH);

    // The data loader decides how long an epoch is; the script counts in epochs.
    let options = CompileOptions {
        steps_per_epoch: Some(steps_per_epoch as f64),
        batch_size: Some(BATCH as f64),
        ..CompileOptions::default()
    };
    let script = Script::from_file_with(script_path, &options)?;
    if let Some(warnings) = script.warnings() {
        eprint!("{warnings}");
    }
    let steps = script.compiled().horizon_steps().unwrap_or(400);
    let epochs = steps.div_ceil(steps_per_epoch as u64);

    let mlp = Mlp::new(&[2, HIDDEN, HIDDEN, CLASSES], Activation::Relu)?;
    let specs = mlp.param_specs();
    let mut params = mlp.init(SEED);
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
        let (mut x, mut labels) = (Vec::new(), Vec::new());
        for batch in order.chunks(BATCH) {
            if step == steps {
                break 'training;
            }
            x.clear();
            labels.clear();
            train.gather(batch, &mut x, &mut labels);
            let loss = mlp.loss_and_grad(&params, &x, &labels, &mut grads)?;
            // Scaling the loss scales its gradient: 1 unless the script asks for
            // loss scaling.
            let loss_scale = stepper.loss_scale() as f32;
            grads.iter_mut().flatten().for_each(|g| *g *= loss_scale);
            let grad_views: Vec<HostTensor> = grads.iter().map(|g| HostTensor::F32(g)).collect();
            let mut param_views: Vec<HostTensorMut> =
                params.iter_mut().map(|p| HostTensorMut::F32(p)).collect();
            let report = stepper.step(&mut param_views, &grad_views, &Metrics::from_loss(loss))?;
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
        100.0 * mlp.evaluate(&params, &train.x, &train.labels)?.accuracy,
        100.0 * mlp.evaluate(&params, &test.x, &test.labels)?.accuracy,
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
        Err(error) => {
            match error.downcast_ref::<regimen::Error>() {
                Some(regimen::Error::Compile(report)) => eprint!("{report}"),
                Some(error) => eprintln!("error: {}", error.to_string_with_causes()),
                None => eprintln!("error: {error}"),
            }
            ExitCode::FAILURE
        }
    }
}
