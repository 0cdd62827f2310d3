//! Schedule evaluation throughput: ns per step for the warmup-cosine graph and for
//! every schedule variant, next to a memory-copy baseline measured in the same run
//! so results from different machines compare as ratios.
//!
//! Run with `cargo bench -p regimen-core --bench schedules`.

use std::error::Error;
use std::hint::black_box;
use std::time::Instant;

use regimen_core::{
    Anneal, CyclicMode, DecayShape, Evaluator, Node, ScalarGraph, Schedule, WarmupShape,
};

/// Horizon of every benchmarked graph, in steps.
const HORIZON: f64 = 100_000.0;
/// Steps evaluated per timed run (several passes over the horizon).
const STEPS: u64 = 1_000_000;
/// Timed runs per measurement; the fastest is reported.
const RUNS: usize = 7;
/// Size of the memory-copy baseline buffer.
const COPY_BYTES: usize = 64 << 20;

/// One of every schedule variant, with parameters sized for `HORIZON`.
fn every_schedule() -> Vec<(&'static str, Schedule)> {
    vec![
        ("constant", Schedule::Constant { value: 0.1 }),
        (
            "step",
            Schedule::Step {
                init: 0.1,
                every: 30_000.0,
                factor: 0.1,
            },
        ),
        (
            "multistep",
            Schedule::MultiStep {
                init: 0.1,
                milestones: vec![30_000.0, 60_000.0, 80_000.0, 90_000.0],
                factor: 0.1,
            },
        ),
        (
            "exponential",
            Schedule::Exponential {
                init: 0.1,
                factor: 0.96,
                every: 1_000.0,
                staircase: false,
            },
        ),
        (
            "inverse_time",
            Schedule::InverseTime {
                init: 0.1,
                rate: 0.5,
                every: 1_000.0,
                staircase: true,
            },
        ),
        ("linear", Schedule::Linear { from: 0.1, to: 0.0 }),
        ("cosine", Schedule::Cosine { from: 0.1, to: 0.0 }),
        (
            "polynomial",
            Schedule::Polynomial {
                from: 0.1,
                to: 1e-4,
                power: 2.0,
            },
        ),
        (
            "onecycle",
            Schedule::OneCycle {
                peak: 0.1,
                pct_start: 0.3,
                div_factor: 25.0,
                final_div_factor: 1e4,
                anneal: Anneal::Cos,
                three_phase: false,
            },
        ),
        (
            "onecycle_momentum",
            Schedule::OneCycleMomentum {
                base: 0.85,
                max: 0.95,
                pct_start: 0.3,
                anneal: Anneal::Cos,
                three_phase: true,
            },
        ),
        (
            "cyclic",
            Schedule::Cyclic {
                low: 0.001,
                high: 0.006,
                up: 2_000.0,
                down: 2_000.0,
                mode: CyclicMode::Triangular2,
            },
        ),
        (
            "inverse_sqrt",
            Schedule::InverseSqrt {
                peak: 0.1,
                warmup: 4_000.0,
                timescale: 4_000.0,
            },
        ),
        (
            "wsd",
            Schedule::WarmupStableDecay {
                peak: 0.1,
                warmup: 2_000.0,
                stable: None,
                decay: 20_000.0,
                min_ratio: 0.0,
                warmup_shape: WarmupShape::Linear,
                decay_shape: DecayShape::Cosine,
            },
        ),
        (
            "piecewise_constant",
            Schedule::PiecewiseConstant {
                boundaries: (1..16).map(|i| f64::from(i) * 6_000.0).collect(),
                values: (0..16).map(|i| 0.1 / f64::from(i + 1)).collect(),
            },
        ),
        (
            "piecewise_linear",
            Schedule::PiecewiseLinear {
                points: (0..16).map(|i| f64::from(i) * 6_000.0).collect(),
                values: (0..16).map(|i| 0.1 / f64::from(i + 1)).collect(),
            },
        ),
    ]
}

/// `linear(0.001 -> 0.1, 10 steps) then cosine(0.1 -> 0)` over `HORIZON`.
fn warmup_cosine() -> ScalarGraph {
    let mut g = ScalarGraph::new(Some(HORIZON));
    let lin = g.push(Node::Schedule(Schedule::Linear {
        from: 0.001,
        to: 0.1,
    }));
    let warm = g.push(Node::Over {
        inner: lin,
        len: 10.0,
    });
    let cos = g.push(Node::Schedule(Schedule::Cosine { from: 0.1, to: 0.0 }));
    let then = g.push(Node::Then {
        first: warm,
        first_len: 10.0,
        second: cos,
    });
    g.add_output("lr", then);
    g
}

/// SGDR: `restarts(cosine(0.1 -> 1e-4), period 1000, mult 2)`.
fn restarts() -> ScalarGraph {
    let mut g = ScalarGraph::new(Some(HORIZON));
    let cos = g.push(Node::Schedule(Schedule::Cosine {
        from: 0.1,
        to: 1e-4,
    }));
    let r = g.push(Node::Restarts {
        inner: cos,
        period: 1_000.0,
        mult: 2.0,
    });
    g.add_output("lr", r);
    g
}

fn single(schedule: Schedule) -> ScalarGraph {
    let mut g = ScalarGraph::new(Some(HORIZON));
    let node = g.push(Node::Schedule(schedule));
    g.add_output("lr", node);
    g
}

fn all_in_one() -> ScalarGraph {
    let mut g = ScalarGraph::new(Some(HORIZON));
    for (name, schedule) in every_schedule() {
        let node = g.push(Node::Schedule(schedule));
        g.add_output(name, node);
    }
    g
}

/// Fastest of `RUNS` timings of `f`, in nanoseconds.
fn best_ns(mut f: impl FnMut()) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..RUNS {
        let start = Instant::now();
        f();
        best = best.min(start.elapsed().as_secs_f64() * 1e9);
    }
    best
}

/// ns per step of `ScalarGraph::eval_into` over `STEPS` steps: repeated passes
/// through the horizon.
fn graph_ns_per_step(graph: &ScalarGraph) -> f64 {
    let mut out = vec![0.0; graph.outputs.len()];
    let horizon = HORIZON as u64;
    let passes = STEPS / horizon;
    best_ns(|| {
        for _ in 0..passes {
            for t in 0..horizon {
                black_box(graph).eval_into(black_box(t as f64), &mut out);
                black_box(&out);
            }
        }
    }) / (passes * horizon) as f64
}

/// ns per step of `Evaluator::next_into` (the runtime's path): fresh evaluators
/// each run through the horizon from step 0, `STEPS` steps in all.
fn evaluator_ns_per_step(graph: &ScalarGraph) -> Result<f64, Box<dyn Error>> {
    let mut out = vec![0.0; graph.outputs.len()];
    let horizon = HORIZON as u64;
    let passes = STEPS / horizon;
    let mut ns = f64::INFINITY;
    for _ in 0..RUNS {
        let mut evaluators = (0..passes)
            .map(|_| Evaluator::new(graph.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let start = Instant::now();
        for ev in &mut evaluators {
            for _ in 0..horizon {
                black_box(&mut *ev).next_into(&mut out);
                black_box(&out);
            }
        }
        ns = ns.min(start.elapsed().as_secs_f64() * 1e9);
    }
    Ok(ns / (passes * horizon) as f64)
}

/// Copy bandwidth in GB/s (bytes copied per second, each read once and written
/// once) for a `COPY_BYTES` f32 buffer.
fn copy_gb_per_s() -> f64 {
    let n = COPY_BYTES / std::mem::size_of::<f32>();
    let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut dst = vec![0.0f32; n];
    dst.copy_from_slice(&src); // fault the pages in before timing
    let ns = best_ns(|| {
        dst.copy_from_slice(black_box(&src));
        black_box(&mut dst);
    });
    COPY_BYTES as f64 / ns
}

fn row(name: &str, ns: f64, gb_per_s: f64) {
    // bytes the machine copies in the time of one step: ns * (bytes / ns)
    println!(
        "{name:<28} {ns:>10.2} {:>12.1} {:>14.0}",
        1e3 / ns,
        ns * gb_per_s
    );
}

fn main() -> Result<(), Box<dyn Error>> {
    let gb_per_s = copy_gb_per_s();
    println!(
        "memory copy baseline: {} MiB f32 buffer, {gb_per_s:.2} GB/s",
        COPY_BYTES >> 20
    );
    println!(
        "{} steps per run, best of {RUNS} runs, horizon {HORIZON} steps\n",
        STEPS
    );
    println!(
        "{:<28} {:>10} {:>12} {:>14}",
        "graph", "ns/step", "Msteps/s", "copy-equiv B"
    );
    println!("{}", "-".repeat(28 + 1 + 10 + 1 + 12 + 1 + 14));

    let wc = warmup_cosine();
    row(
        "warmup_cosine (eval_into)",
        graph_ns_per_step(&wc),
        gb_per_s,
    );
    row(
        "warmup_cosine (Evaluator)",
        evaluator_ns_per_step(&wc)?,
        gb_per_s,
    );
    row(
        "restarts(cosine) mult 2",
        graph_ns_per_step(&restarts()),
        gb_per_s,
    );
    let all = all_in_one();
    let all_ns = graph_ns_per_step(&all);
    row(
        &format!("all {} schedules (1 graph)", all.outputs.len()),
        all_ns,
        gb_per_s,
    );
    println!();
    for (name, schedule) in every_schedule() {
        row(name, graph_ns_per_step(&single(schedule)), gb_per_s);
    }
    println!("\ncopy-equiv B: bytes the memory-copy baseline moves in the time of one step");
    Ok(())
}
