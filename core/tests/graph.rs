//! The scalar graph: `Over`, `Then`, `Restarts`, arithmetic and validation, against
//! values computed by hand from the reference libraries (Hugging Face
//! `get_cosine_schedule_with_warmup`, PyTorch `CosineAnnealingWarmRestarts`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use regimen_core::graph::restart_position;
use regimen_core::{BinaryOp, Evaluator, GraphError, Node, NodeId, ScalarGraph, Schedule};

mod common;
use common::close;

fn sched(g: &mut ScalarGraph, s: Schedule) -> NodeId {
    g.push(Node::Schedule(s))
}

fn constant(g: &mut ScalarGraph, value: f64) -> NodeId {
    sched(g, Schedule::Constant { value })
}

/// Value of the output named `name` at step `t`.
fn at(g: &ScalarGraph, name: &str, t: f64) -> f64 {
    let index = g.outputs.iter().position(|o| o.name == name).unwrap();
    g.eval_output(index, t)
}

// cos(18°) = sqrt(10 + 2 sqrt 5) / 4, so cos(0.9 pi) = -cos(18°).
fn cos_18_deg() -> f64 {
    (10.0 + 2.0 * 5f64.sqrt()).sqrt() / 4.0
}

// cos(9°) = cos(45° - 36°) = (sqrt 2 / 2) (cos 36° + sin 36°),
// cos 36° = (1 + sqrt 5) / 4, sin 36° = sqrt(10 - 2 sqrt 5) / 4.
fn cos_9_deg() -> f64 {
    2f64.sqrt() / 2.0 * ((1.0 + 5f64.sqrt()) / 4.0 + (10.0 - 2.0 * 5f64.sqrt()).sqrt() / 4.0)
}

// ---------------------------------------------------------------- Over

#[test]
fn over_fixes_the_contextual_length() {
    let mut g = ScalarGraph::new(None);
    let cos = sched(&mut g, Schedule::Cosine { from: 0.1, to: 0.0 });
    let over = g.push(Node::Over {
        inner: cos,
        len: 100.0,
    });
    g.add_output("lr", over);
    g.add_output("raw", cos);
    g.validate().unwrap();
    close(at(&g, "lr", 50.0), 0.05); // 0.1 * (1 + cos(pi/2)) / 2
    assert_eq!(at(&g, "lr", 100.0), 0.0);
    assert_eq!(at(&g, "lr", 250.0), 0.0);
    // Without a horizon the raw cosine has an infinite length: progress 0.
    assert_eq!(at(&g, "raw", 50.0), 0.1);

    // With a horizon the raw cosine spans it; Over still wins for its inner node.
    g.horizon = Some(200.0);
    close(at(&g, "raw", 50.0), 0.1 * (1.0 + 0.5f64.sqrt()) / 2.0); // cos(pi/4)
    close(at(&g, "lr", 50.0), 0.05);
    let mut out = [0.0; 2];
    g.eval_into(50.0, &mut out);
    close(out[0], 0.05);
    close(out[1], 0.1 * (1.0 + 0.5f64.sqrt()) / 2.0);
}

// ---------------------------------------------------------------- Then

/// `linear(from -> 0.1, 10) then cosine(0.1 -> 0)` with horizon 100.
fn warmup_cosine(from: f64, with_over: bool) -> ScalarGraph {
    let mut g = ScalarGraph::new(Some(100.0));
    let lin = sched(&mut g, Schedule::Linear { from, to: 0.1 });
    let first = if with_over {
        g.push(Node::Over {
            inner: lin,
            len: 10.0,
        })
    } else {
        lin
    };
    let cos = sched(&mut g, Schedule::Cosine { from: 0.1, to: 0.0 });
    let then = g.push(Node::Then {
        first,
        first_len: 10.0,
        second: cos,
    });
    g.add_output("lr", then);
    g.validate().unwrap();
    g
}

#[test]
fn then_matches_hf_cosine_with_warmup() {
    // get_cosine_schedule_with_warmup(lr=0.1, num_warmup_steps=10, num_training_steps=100):
    // t < 10: 0.1 * t / 10; else 0.1 * 0.5 * (1 + cos(pi * (t - 10) / 90))
    for with_over in [true, false] {
        let g = warmup_cosine(0.0, with_over);
        assert_eq!(at(&g, "lr", 0.0), 0.0);
        close(at(&g, "lr", 5.0), 0.05); // 0.1 * 5/10
        close(at(&g, "lr", 9.0), 0.09); // 0.1 * 9/10
        close(at(&g, "lr", 10.0), 0.1); // progress 0: 0.1 * 0.5 * 2
        close(at(&g, "lr", 40.0), 0.075); // progress 30/90 = 1/3: 0.1 * 0.5 * 1.5
        close(at(&g, "lr", 55.0), 0.05); // progress 1/2: 0.1 * 0.5 * 1
        close(at(&g, "lr", 70.0), 0.025); // progress 2/3: 0.1 * 0.5 * 0.5
        assert_eq!(at(&g, "lr", 100.0), 0.0); // progress 1: 0
                                              // Hugging Face keeps evaluating the cosine past the end (it rises again);
                                              // our cosine holds its end value.
        assert_eq!(at(&g, "lr", 150.0), 0.0);
    }
}

#[test]
fn then_warmup_from_nonzero() {
    // linear(0.001 -> 0.1, 10) then cosine(0.1 -> 0), horizon 100
    let g = warmup_cosine(0.001, true);
    assert_eq!(at(&g, "lr", 0.0), 0.001);
    close(at(&g, "lr", 5.0), 0.0505); // 0.001 + 0.099 * 0.5
    close(at(&g, "lr", 9.0), 0.0901); // 0.001 + 0.099 * 0.9
    close(at(&g, "lr", 10.0), 0.1); // hand-over: cosine at local step 0
    close(at(&g, "lr", 55.0), 0.05);
}

#[test]
fn nested_then_passes_the_remaining_length() {
    // linear(0 -> 0.1, 10) then constant 0.1 for 20 then cosine(0.1 -> 0) over the
    // rest: the cosine's length is 100 - 10 - 20 = 70.
    let mut g = ScalarGraph::new(Some(100.0));
    let lin = sched(&mut g, Schedule::Linear { from: 0.0, to: 0.1 });
    let hold = constant(&mut g, 0.1);
    let cos = sched(&mut g, Schedule::Cosine { from: 0.1, to: 0.0 });
    let rest = g.push(Node::Then {
        first: hold,
        first_len: 20.0,
        second: cos,
    });
    let all = g.push(Node::Then {
        first: lin,
        first_len: 10.0,
        second: rest,
    });
    g.add_output("lr", all);
    g.validate().unwrap();
    close(at(&g, "lr", 5.0), 0.05);
    close(at(&g, "lr", 10.0), 0.1);
    close(at(&g, "lr", 29.0), 0.1);
    close(at(&g, "lr", 30.0), 0.1); // cosine local step 0
    close(at(&g, "lr", 65.0), 0.05); // local 35 of 70: cos(pi/2)
    assert_eq!(at(&g, "lr", 100.0), 0.0);
}

#[test]
fn then_with_own_length_on_second() {
    // No horizon: linear(0 -> 0.1, 10) then cosine(0.1 -> 0, over 40).
    let mut g = ScalarGraph::new(None);
    let lin = sched(&mut g, Schedule::Linear { from: 0.0, to: 0.1 });
    let cos = sched(&mut g, Schedule::Cosine { from: 0.1, to: 0.0 });
    let cos40 = g.push(Node::Over {
        inner: cos,
        len: 40.0,
    });
    let then = g.push(Node::Then {
        first: lin,
        first_len: 10.0,
        second: cos40,
    });
    g.add_output("lr", then);
    close(at(&g, "lr", 5.0), 0.05);
    close(at(&g, "lr", 30.0), 0.05); // local 20 of 40
    assert_eq!(at(&g, "lr", 50.0), 0.0);
    assert_eq!(at(&g, "lr", 1e6), 0.0);
}

// ---------------------------------------------------------------- Restarts

/// restarts(cosine(0.1 -> 0.001), period 10, mult).
fn sgdr(mult: f64) -> ScalarGraph {
    let mut g = ScalarGraph::new(Some(1000.0));
    let cos = sched(
        &mut g,
        Schedule::Cosine {
            from: 0.1,
            to: 0.001,
        },
    );
    let r = g.push(Node::Restarts {
        inner: cos,
        period: 10.0,
        mult,
    });
    g.add_output("lr", r);
    g.validate().unwrap();
    g
}

// CosineAnnealingWarmRestarts(lr=0.1, T_0=10, eta_min=0.001):
// 0.001 + 0.099 * (1 + cos(pi * T_cur / T_i)) / 2
fn sgdr_value(cos_fraction: f64) -> f64 {
    0.001 + 0.099 * (1.0 + cos_fraction) / 2.0
}

#[test]
fn restarts_mult_1_matches_warm_restarts() {
    let g = sgdr(1.0);
    close(at(&g, "lr", 0.0), 0.1); // T_cur 0
    close(at(&g, "lr", 5.0), 0.0505); // T_cur 5 of 10: cos(pi/2) = 0
    close(at(&g, "lr", 9.0), sgdr_value(-cos_18_deg())); // cos(0.9 pi) = -cos 18°
    close(at(&g, "lr", 10.0), 0.1); // restart
    close(at(&g, "lr", 15.0), 0.0505);
    close(at(&g, "lr", 19.0), sgdr_value(-cos_18_deg()));
    close(at(&g, "lr", 20.0), 0.1);
    close(at(&g, "lr", 25.0), 0.0505);
    close(at(&g, "lr", 1000.0), 0.1);
}

#[test]
fn restarts_mult_2_matches_warm_restarts() {
    // T_mult 2: periods 10, 20, 40, 80 starting at 0, 10, 30, 70.
    let g = sgdr(2.0);
    close(at(&g, "lr", 9.0), sgdr_value(-cos_18_deg())); // T_cur 9, T_i 10
    close(at(&g, "lr", 10.0), 0.1); // T_cur 0, T_i 20
    close(at(&g, "lr", 20.0), 0.0505); // T_cur 10 of 20
    close(at(&g, "lr", 29.0), sgdr_value(-cos_9_deg())); // 19/20: cos(0.95 pi) = -cos 9°
    close(at(&g, "lr", 30.0), 0.1); // T_cur 0, T_i 40
    close(at(&g, "lr", 40.0), sgdr_value(0.5f64.sqrt())); // 10/40: cos(pi/4)
    close(at(&g, "lr", 50.0), 0.0505); // 20/40
    close(at(&g, "lr", 70.0), 0.1); // T_cur 0, T_i 80
    close(at(&g, "lr", 110.0), 0.0505); // 40/80
}

#[test]
fn restarts_fractional_mult_restart_on_the_boundary() {
    // T_0 7, T_mult 1.3: the second period starts at step 7 with lr back at 0.1.
    // (Regression: rounding used to put step 7 at the end of the first period,
    // giving eta_min 0.001.)
    let mut g = ScalarGraph::new(None);
    let cos = sched(
        &mut g,
        Schedule::Cosine {
            from: 0.1,
            to: 0.001,
        },
    );
    let r = g.push(Node::Restarts {
        inner: cos,
        period: 7.0,
        mult: 1.3,
    });
    g.add_output("lr", r);
    close(at(&g, "lr", 3.5), 0.0505); // T_cur 3.5 of 7: cos(pi/2)
    close(at(&g, "lr", 7.0), 0.1); // T_cur 0 of 9.1
    close(at(&g, "lr", 11.55), 0.0505); // T_cur 4.55 of 9.1
}

#[test]
fn restart_position_at_boundaries() {
    // mult 1, period 10
    assert_eq!(restart_position(0.0, 10.0, 1.0), (0.0, 10.0));
    assert_eq!(restart_position(9.0, 10.0, 1.0), (9.0, 10.0));
    assert_eq!(restart_position(10.0, 10.0, 1.0), (0.0, 10.0));
    assert_eq!(restart_position(29.0, 10.0, 1.0), (9.0, 10.0));
    assert_eq!(restart_position(30.0, 10.0, 1.0), (0.0, 10.0));
    // mult 2, period 10: restarts at 10, 30, 70, 150
    assert_eq!(restart_position(9.0, 10.0, 2.0), (9.0, 10.0));
    assert_eq!(restart_position(10.0, 10.0, 2.0), (0.0, 20.0));
    assert_eq!(restart_position(29.0, 10.0, 2.0), (19.0, 20.0));
    assert_eq!(restart_position(30.0, 10.0, 2.0), (0.0, 40.0));
    assert_eq!(restart_position(69.0, 10.0, 2.0), (39.0, 40.0));
    assert_eq!(restart_position(70.0, 10.0, 2.0), (0.0, 80.0));
    assert_eq!(restart_position(149.0, 10.0, 2.0), (79.0, 80.0));
    assert_eq!(restart_position(150.0, 10.0, 2.0), (0.0, 160.0));
}

#[test]
fn restarts_give_the_period_as_length_to_a_then() {
    // restarts(linear(0 -> 0.1, 2) then cosine(0.1 -> 0), period 10): inside each
    // period the cosine runs over 10 - 2 = 8 steps.
    let mut g = ScalarGraph::new(None);
    let lin = sched(&mut g, Schedule::Linear { from: 0.0, to: 0.1 });
    let cos = sched(&mut g, Schedule::Cosine { from: 0.1, to: 0.0 });
    let then = g.push(Node::Then {
        first: lin,
        first_len: 2.0,
        second: cos,
    });
    let r = g.push(Node::Restarts {
        inner: then,
        period: 10.0,
        mult: 1.0,
    });
    g.add_output("lr", r);
    assert_eq!(at(&g, "lr", 10.0), 0.0); // period start: warmup from 0
    close(at(&g, "lr", 11.0), 0.05); // warmup 1 of 2
    close(at(&g, "lr", 12.0), 0.1); // cosine local 0
    close(at(&g, "lr", 16.0), 0.05); // cosine local 4 of 8
    assert_eq!(at(&g, "lr", 20.0), 0.0); // next period
}

// ---------------------------------------------------------------- arithmetic

#[test]
fn binary_and_neg() {
    let mut g = ScalarGraph::new(None);
    let a = constant(&mut g, 3.0);
    let b = constant(&mut g, 2.0);
    let ops = [
        ("add", BinaryOp::Add, 5.0),
        ("sub", BinaryOp::Sub, 1.0),
        ("mul", BinaryOp::Mul, 6.0),
        ("div", BinaryOp::Div, 1.5),
        ("pow", BinaryOp::Pow, 9.0),
        ("min", BinaryOp::Min, 2.0),
        ("max", BinaryOp::Max, 3.0),
    ];
    for (name, op, _) in ops {
        let n = g.push(Node::Binary { op, lhs: a, rhs: b });
        g.add_output(name, n);
    }
    let neg = g.push(Node::Neg(a));
    g.add_output("neg", neg);
    let negneg = g.push(Node::Neg(neg));
    g.add_output("negneg", negneg);
    g.validate().unwrap();
    for (name, _, expected) in ops {
        assert_eq!(at(&g, name, 0.0), expected, "{name}");
    }
    assert_eq!(at(&g, "neg", 0.0), -3.0);
    assert_eq!(at(&g, "negneg", 0.0), 3.0);
}

#[test]
fn arithmetic_over_schedules_shares_the_length() {
    // horizon 100: lr = cosine(1 -> 0) * 0.1, capped = min(linear(0 -> 1), 0.5),
    // floored = max(cosine(0.1 -> 0), 0.01)
    let mut g = ScalarGraph::new(Some(100.0));
    let cos = sched(&mut g, Schedule::Cosine { from: 1.0, to: 0.0 });
    let tenth = constant(&mut g, 0.1);
    let lr = g.push(Node::Binary {
        op: BinaryOp::Mul,
        lhs: cos,
        rhs: tenth,
    });
    g.add_output("lr", lr);
    let lin = sched(&mut g, Schedule::Linear { from: 0.0, to: 1.0 });
    let half = constant(&mut g, 0.5);
    let capped = g.push(Node::Binary {
        op: BinaryOp::Min,
        lhs: lin,
        rhs: half,
    });
    g.add_output("capped", capped);
    let cos2 = sched(&mut g, Schedule::Cosine { from: 0.1, to: 0.0 });
    let floor = constant(&mut g, 0.01);
    let floored = g.push(Node::Binary {
        op: BinaryOp::Max,
        lhs: cos2,
        rhs: floor,
    });
    g.add_output("floored", floored);
    g.validate().unwrap();

    close(at(&g, "lr", 50.0), 0.05); // 0.5 * 0.1
    close(at(&g, "capped", 30.0), 0.3); // min(0.3, 0.5)
    assert_eq!(at(&g, "capped", 80.0), 0.5); // min(0.8, 0.5)
    close(at(&g, "floored", 50.0), 0.05); // max(0.05, 0.01)
    assert_eq!(at(&g, "floored", 100.0), 0.01); // max(0, 0.01)
}

// ---------------------------------------------------------------- validation

fn one_output(nodes: Vec<Node>, output: NodeId) -> ScalarGraph {
    let mut g = ScalarGraph::new(Some(100.0));
    g.nodes = nodes;
    g.add_output("lr", output);
    g
}

fn c(value: f64) -> Node {
    Node::Schedule(Schedule::Constant { value })
}

#[test]
fn validate_rejects_forward_and_self_references() {
    let cases = [
        (vec![Node::Neg(1), c(1.0)], 0, 1),
        (vec![Node::Neg(0)], 0, 0),
        (
            vec![
                c(1.0),
                Node::Binary {
                    op: BinaryOp::Add,
                    lhs: 0,
                    rhs: 2,
                },
                c(2.0),
            ],
            1,
            2,
        ),
        (
            vec![
                c(1.0),
                Node::Binary {
                    op: BinaryOp::Add,
                    lhs: 1,
                    rhs: 0,
                },
            ],
            1,
            1,
        ),
        (vec![Node::Over { inner: 1, len: 5.0 }, c(1.0)], 0, 1),
        (
            vec![
                c(1.0),
                Node::Then {
                    first: 0,
                    first_len: 5.0,
                    second: 2,
                },
                c(2.0),
            ],
            1,
            2,
        ),
        (
            vec![
                c(1.0),
                Node::Then {
                    first: 7,
                    first_len: 5.0,
                    second: 0,
                },
            ],
            1,
            7,
        ),
        (
            vec![Node::Restarts {
                inner: 0,
                period: 10.0,
                mult: 1.0,
            }],
            0,
            0,
        ),
    ];
    for (nodes, node, child) in cases {
        let g = one_output(nodes, 0);
        let expected = GraphError::BadChild { node, child };
        assert_eq!(g.validate(), Err(expected.clone()));
        assert_eq!(Evaluator::new(g).err(), Some(expected));
    }
}

#[test]
fn validate_rejects_bad_and_duplicate_outputs() {
    let g = one_output(vec![c(1.0)], 1);
    assert_eq!(
        g.validate(),
        Err(GraphError::BadOutput {
            name: "lr".into(),
            node: 1
        })
    );

    let mut g = one_output(vec![c(1.0), c(2.0)], 0);
    g.add_output("momentum", 1);
    g.add_output("lr", 1);
    assert_eq!(g.validate(), Err(GraphError::DuplicateOutput("lr".into())));
    assert_eq!(
        GraphError::DuplicateOutput("lr".into()).to_string(),
        "output `lr` is defined twice"
    );
    assert!(Evaluator::new(g).is_err());

    let empty = ScalarGraph::new(None);
    assert_eq!(empty.validate(), Ok(()));
}

#[test]
fn deserialized_evaluator_is_validated() {
    let g = one_output(vec![c(1.0), Node::Neg(0)], 1);
    let ev = Evaluator::new(g).unwrap();
    let mut json: serde_json::Value = serde_json::to_value(&ev).unwrap();
    // Point the Neg node forward at itself.
    json["graph"]["nodes"][1] = serde_json::json!({ "Neg": 1 });
    let bad: Evaluator = serde_json::from_value(json).unwrap();
    assert_eq!(
        bad.validate(),
        Err(GraphError::BadChild { node: 1, child: 1 })
    );
}

#[test]
fn evaluator_steps_and_matches_eval_output() {
    let g = warmup_cosine(0.001, true);
    let mut ev = Evaluator::new(g.clone()).unwrap();
    let mut out = [0.0];
    for t in 0..120u64 {
        assert_eq!(ev.step(), t);
        assert_eq!(ev.next_into(&mut out), t);
        assert_eq!(out[0].to_bits(), g.eval_output(0, t as f64).to_bits());
    }
    assert_eq!(ev.step(), 120);
    assert_eq!(ev.graph(), &g);
}

#[test]
fn evaluating_an_unvalidated_malformed_graph_gives_nan_not_a_panic() {
    use regimen_core::{Node, ScalarGraph};
    // A self-reference and a dangling reference, as a corrupted file could hold.
    let mut graph = ScalarGraph::new(None);
    graph.nodes.push(Node::Neg(0));
    graph.nodes.push(Node::Neg(7));
    graph.add_output("lr", 0);
    graph.add_output("momentum", 1);
    graph.add_output("beta1", 9);
    assert!(graph.validate().is_err());
    assert!(graph.eval_output(0, 3.0).is_nan());
    assert!(graph.eval_output(1, 3.0).is_nan());
    assert!(graph.eval_output(2, 3.0).is_nan());
    assert!(graph.eval_output(99, 3.0).is_nan());
}
