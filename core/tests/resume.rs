//! Checkpoint and resume: an [`Evaluator`] serialized to JSON mid-run and restored
//! must continue bit for bit like an uninterrupted one, for every schedule variant
//! and for the combinators.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use regimen_core::{
    Anneal, BinaryOp, CyclicMode, DecayShape, Evaluator, Node, ScalarGraph, Schedule, WarmupShape,
};

/// One of every variant. Parameters include values that are not short decimals
/// (1/3, 0.1 * 3, pi / 1000, …) so the JSON float round trip is actually exercised.
fn every_schedule() -> Vec<(&'static str, Schedule)> {
    let third = 1.0 / 3.0;
    vec![
        (
            "constant",
            Schedule::Constant {
                value: 0.1 * 3.0, // 0.30000000000000004
            },
        ),
        (
            "step",
            Schedule::Step {
                init: third,
                every: 7.0,
                factor: 0.9,
            },
        ),
        (
            "multistep",
            Schedule::MultiStep {
                init: 0.1,
                milestones: vec![10.0, 37.0, 60.5],
                factor: third,
            },
        ),
        (
            "exponential",
            Schedule::Exponential {
                init: std::f64::consts::PI / 1000.0,
                factor: 0.97,
                every: 3.0,
                staircase: false,
            },
        ),
        (
            "exponential_staircase",
            Schedule::Exponential {
                init: 0.1,
                factor: 0.5,
                every: 9.0,
                staircase: true,
            },
        ),
        (
            "inverse_time",
            Schedule::InverseTime {
                init: 0.1,
                rate: third,
                every: 5.0,
                staircase: false,
            },
        ),
        (
            "inverse_time_staircase",
            Schedule::InverseTime {
                init: 0.1,
                rate: 0.5,
                every: 5.0,
                staircase: true,
            },
        ),
        (
            "linear",
            Schedule::Linear {
                from: 1e-7 / 3.0,
                to: 0.1,
            },
        ),
        (
            "cosine",
            Schedule::Cosine {
                from: 0.1,
                to: 1e-5,
            },
        ),
        (
            "polynomial",
            Schedule::Polynomial {
                from: 0.1,
                to: 0.0,
                power: 1.5,
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
            "onecycle_three_linear",
            Schedule::OneCycle {
                peak: 0.1,
                pct_start: 0.25,
                div_factor: 10.0,
                final_div_factor: 100.0,
                anneal: Anneal::Linear,
                three_phase: true,
            },
        ),
        (
            "onecycle_momentum",
            Schedule::OneCycleMomentum {
                base: 0.85,
                max: 0.95,
                pct_start: 0.3,
                anneal: Anneal::Cos,
                three_phase: false,
            },
        ),
        (
            "cyclic",
            Schedule::Cyclic {
                low: 0.001,
                high: 0.006,
                up: 8.0,
                down: 12.0,
                mode: CyclicMode::Triangular,
            },
        ),
        (
            "cyclic2",
            Schedule::Cyclic {
                low: 0.001,
                high: 0.006,
                up: 10.0,
                down: 10.0,
                mode: CyclicMode::Triangular2,
            },
        ),
        (
            "cyclic_exp",
            Schedule::Cyclic {
                low: 0.001,
                high: 0.006,
                up: 10.0,
                down: 10.0,
                mode: CyclicMode::ExpRange { gamma: 0.999 },
            },
        ),
        (
            "inverse_sqrt",
            Schedule::InverseSqrt {
                peak: 0.1,
                warmup: 20.0,
                timescale: 20.0,
            },
        ),
        (
            "wsd",
            Schedule::WarmupStableDecay {
                peak: 0.1,
                warmup: 10.0,
                stable: Some(30.0),
                decay: 20.0,
                min_ratio: 0.1,
                warmup_shape: WarmupShape::Cosine,
                decay_shape: DecayShape::OneMinusSqrt,
            },
        ),
        (
            "wsd_rest",
            Schedule::WarmupStableDecay {
                peak: 0.1,
                warmup: 10.0,
                stable: None,
                decay: 40.0,
                min_ratio: 0.0,
                warmup_shape: WarmupShape::OneMinusSqrt,
                decay_shape: DecayShape::Cosine,
            },
        ),
        (
            "piecewise_constant",
            Schedule::PiecewiseConstant {
                boundaries: vec![20.0, 40.0],
                values: vec![0.1, third, 0.001],
            },
        ),
        (
            "piecewise_linear",
            Schedule::PiecewiseLinear {
                points: vec![0.0, 30.0, 45.5, 80.0],
                values: vec![0.0, 0.1, third, 0.0],
            },
        ),
    ]
}

/// Step `before` times, checkpoint through JSON, step `after` more; compare with
/// an uninterrupted run bit for bit.
fn assert_resumes(name: &str, graph: ScalarGraph, before: u64, after: u64) {
    let outputs = graph.outputs.len();
    let mut straight = Evaluator::new(graph.clone()).unwrap();
    let mut expected = Vec::new();
    let mut out = vec![0.0; outputs];
    for _ in 0..before + after {
        straight.next_into(&mut out);
        expected.push(out.clone());
    }

    let mut first = Evaluator::new(graph).unwrap();
    for row in &expected[..before as usize] {
        first.next_into(&mut out);
        assert_eq!(bits(&out), bits(row), "{name}: before the checkpoint");
    }
    let json = serde_json::to_string(&first).unwrap();
    drop(first);
    let mut resumed: Evaluator = serde_json::from_str(&json).unwrap();
    resumed.validate().unwrap();
    assert_eq!(resumed.step(), before, "{name}: step restored");
    for (i, row) in expected[before as usize..].iter().enumerate() {
        let step = resumed.next_into(&mut out);
        assert_eq!(step, before + i as u64);
        assert_eq!(
            bits(&out),
            bits(row),
            "{name}: step {step} differs after resume ({out:?} vs {row:?})"
        );
    }
    // The restored graph is the same graph, parameter for parameter.
    assert_eq!(resumed.graph(), straight.graph(), "{name}: graph restored");
}

fn bits(values: &[f64]) -> Vec<u64> {
    values.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn every_schedule_resumes_bit_for_bit() {
    for (name, schedule) in every_schedule() {
        let mut g = ScalarGraph::new(Some(100.0));
        let node = g.push(Node::Schedule(schedule));
        g.add_output("lr", node);
        assert_resumes(name, g, 37, 50);
    }
}

#[test]
fn every_schedule_resumes_without_horizon() {
    // Schedules that need a length get it from `Over`.
    for (name, schedule) in every_schedule() {
        let mut g = ScalarGraph::new(None);
        let node = g.push(Node::Schedule(schedule));
        let over = g.push(Node::Over {
            inner: node,
            len: 64.0 + 1.0 / 7.0,
        });
        g.add_output("lr", over);
        assert_resumes(name, g, 37, 50);
    }
}

#[test]
fn combinators_resume_bit_for_bit() {
    // lr = (linear(0.001 -> 0.1, 10) then restarts(cosine(0.1 -> 1e-4), 7, 1.3)) * 0.5
    // momentum = max(-onecycle_momentum, -0.9) ; wd = min(constant, piecewise)
    let mut g = ScalarGraph::new(Some(90.0));
    let lin = g.push(Node::Schedule(Schedule::Linear {
        from: 0.001,
        to: 0.1,
    }));
    let warm = g.push(Node::Over {
        inner: lin,
        len: 10.0,
    });
    let cos = g.push(Node::Schedule(Schedule::Cosine {
        from: 0.1,
        to: 1e-4,
    }));
    let sgdr = g.push(Node::Restarts {
        inner: cos,
        period: 7.0,
        mult: 1.3,
    });
    let then = g.push(Node::Then {
        first: warm,
        first_len: 10.0,
        second: sgdr,
    });
    let half = g.push(Node::Schedule(Schedule::Constant { value: 0.5 }));
    let lr = g.push(Node::Binary {
        op: BinaryOp::Mul,
        lhs: then,
        rhs: half,
    });
    g.add_output("lr", lr);
    let mom = g.push(Node::Schedule(Schedule::OneCycleMomentum {
        base: 0.85,
        max: 0.95,
        pct_start: 0.3,
        anneal: Anneal::Cos,
        three_phase: true,
    }));
    let neg = g.push(Node::Neg(mom));
    let cap = g.push(Node::Schedule(Schedule::Constant { value: -0.9 }));
    let m = g.push(Node::Binary {
        op: BinaryOp::Max,
        lhs: neg,
        rhs: cap,
    });
    g.add_output("momentum", m);
    let a = g.push(Node::Schedule(Schedule::Constant { value: 5e-4 }));
    let b = g.push(Node::Schedule(Schedule::PiecewiseConstant {
        boundaries: vec![30.0],
        values: vec![1e-3, 1e-4],
    }));
    let wd = g.push(Node::Binary {
        op: BinaryOp::Min,
        lhs: a,
        rhs: b,
    });
    g.add_output("weight_decay", wd);
    assert_resumes("combinators", g, 37, 50);
}

#[test]
fn resume_at_every_step_of_a_short_run() {
    // Checkpointing at any step gives the same continuation.
    for before in 0..20 {
        let mut g = ScalarGraph::new(Some(20.0));
        let node = g.push(Node::Schedule(Schedule::OneCycle {
            peak: 0.1,
            pct_start: 0.3,
            div_factor: 25.0,
            final_div_factor: 1e4,
            anneal: Anneal::Cos,
            three_phase: false,
        }));
        g.add_output("lr", node);
        assert_resumes("onecycle", g, before, 25 - before);
    }
}

#[test]
fn json_checkpoint_keeps_every_bit_of_awkward_parameters() {
    // Without serde_json's `float_roundtrip` feature these parse back one ulp off
    // (e.g. "0.44586595470796037" → 0.4458659547079604), so a resumed run drifts
    // from the uninterrupted one.
    let awkward: [f64; 5] = [
        0.445_865_954_707_960_37,
        0.010_761_778_418_768_407,
        4.590_815_081_248_389e-8,
        217.352_557_818_778_34,
        1.923_809_068_909_500_7,
    ];
    for value in awkward {
        let json = serde_json::to_string(&value).unwrap();
        let back: f64 = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_bits(), value.to_bits(), "{json}");
    }
    let mut g = ScalarGraph::new(Some(100.0));
    let node = g.push(Node::Schedule(Schedule::Cosine {
        from: awkward[0],
        to: awkward[2],
    }));
    let over = g.push(Node::Over {
        inner: node,
        len: awkward[3],
    });
    let scale = g.push(Node::Schedule(Schedule::Constant { value: awkward[4] }));
    let lr = g.push(Node::Binary {
        op: BinaryOp::Mul,
        lhs: over,
        rhs: scale,
    });
    g.add_output("lr", lr);
    assert_resumes("awkward", g, 37, 50);
}
