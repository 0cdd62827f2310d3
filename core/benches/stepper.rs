//! A whole `Stepper::step` over 25Mi f32 parameters (three tensors of 16Mi, 8Mi and
//! 1Mi elements) for SGD-momentum, Adam and LAMB, next to a parallel memory copy
//! measured in the same run. Where `optimizer_step` times the kernels alone, this
//! adds what the runtime does around them: loading (unscaling, checking, norming) the
//! host gradients, the hyperparameter checks, and writing the parameters back.
//!
//! Run with `cargo bench -p regimen-core --bench stepper`.
//!
//! Bytes counted per element of a step: load_gradient 4 + 4 (host g → g), the
//! optimizer (SGD-momentum 5 × 4, Adam 7 × 4, LAMB 10 × 4 as in `optimizer_step`),
//! write-back 4 + 4 (master → host p). Every step reports its update norm: the
//! update kernels measure it in their own pass, so it adds no bytes.

use std::error::Error;
use std::hint::black_box;
use std::time::Duration;

mod common;

use rayon::prelude::*;
use regimen_core::{
    HostTensor, HostTensorMut, Metrics, NdArrayBackend, Node, OptimizerKind, OptimizerSpec,
    ParamSpec, ScalarGraph, Schedule, Stepper, Strategy,
};

/// Elements per tensor: 25Mi in total.
const SIZES: [usize; 3] = [16 << 20, 8 << 20, 1 << 20];
const WARMUP_RUNS: usize = 2;
const TIMED_RUNS: usize = 9;
/// Copy chunk per rayon task.
const CHUNK: usize = 1 << 16;

/// The median of `TIMED_RUNS` runs after `WARMUP_RUNS`.
fn median(run: impl FnMut() -> Result<(), Box<dyn Error>>) -> Result<Duration, Box<dyn Error>> {
    common::median_time(WARMUP_RUNS, TIMED_RUNS, run)
}

/// Deterministic values in [-0.5, 0.5) (an LCG; only variety matters).
fn filled(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn graph(kind: OptimizerKind) -> ScalarGraph {
    let mut graph = ScalarGraph::new(None);
    let mut output = |name: &str, value: f64| {
        let node = graph.push(Node::Schedule(Schedule::Constant { value }));
        graph.add_output(name, node);
    };
    output("lr", 1e-3);
    if kind == OptimizerKind::Sgd {
        output("momentum", 0.9);
    }
    output("weight_decay", 1e-4);
    graph
}

fn main() -> Result<(), Box<dyn Error>> {
    let elements: usize = SIZES.iter().sum();
    let specs: Vec<ParamSpec> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &n)| ParamSpec::new(format!("p{i}"), &[n]))
        .collect();
    let mut params: Vec<Vec<f32>> = SIZES.iter().zip(1..).map(|(&n, s)| filled(n, s)).collect();
    let grads: Vec<Vec<f32>> = SIZES.iter().zip(10..).map(|(&n, s)| filled(n, s)).collect();

    // Copy baseline: read + write of `elements` f32.
    let src = filled(elements, 99);
    let mut dst = vec![0.0f32; elements];
    let copy = median(|| {
        dst.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(d, s)| d.copy_from_slice(s));
        black_box(&dst);
        Ok(())
    })?;
    let copy_bytes = elements * 8;
    let copy_gbs = copy_bytes as f64 / copy.as_secs_f64() / 1e9;
    drop((src, dst));
    println!(
        "stepper bench: {elements} f32 parameters in {} tensors, {} rayon threads",
        SIZES.len(),
        rayon::current_num_threads()
    );
    println!("{:<28} {:>10} {:>10} {:>9}", "", "ms", "GB/s", "of copy");
    println!(
        "{:<28} {:>10.2} {:>10.2} {:>8.0}%",
        "copy (baseline)",
        copy.as_secs_f64() * 1e3,
        copy_gbs,
        100.0
    );

    for (kind, optimizer_bytes) in [
        (OptimizerKind::Sgd, 5 * 4),
        (OptimizerKind::Adam, 7 * 4),
        (OptimizerKind::Lamb, 10 * 4),
    ] {
        let strategy = Strategy {
            optimizer: OptimizerSpec {
                kind,
                bias_correction: true,
                ..OptimizerSpec::default()
            },
            ..Strategy::default()
        };
        let initial: Vec<HostTensor<'_>> = params.iter().map(|p| HostTensor::F32(p)).collect();
        let mut stepper = Stepper::new(
            NdArrayBackend::new(),
            graph(kind),
            strategy,
            &specs,
            &initial,
        )?;
        let time = median(|| {
            let mut host: Vec<HostTensorMut<'_>> =
                params.iter_mut().map(|p| HostTensorMut::F32(p)).collect();
            let g: Vec<HostTensor<'_>> = grads.iter().map(|g| HostTensor::F32(g)).collect();
            let report = stepper.step(&mut host, &g, &Metrics::default())?;
            black_box(report.update_norm);
            Ok(())
        })?;
        let bytes = elements * (8 + optimizer_bytes + 8);
        let gbs = bytes as f64 / time.as_secs_f64() / 1e9;
        let name = format!("{} step", kind.name());
        println!(
            "{name:<28} {:>10.2} {gbs:>10.2} {:>8.0}%",
            time.as_secs_f64() * 1e3,
            100.0 * gbs / copy_gbs
        );
    }
    Ok(())
}
