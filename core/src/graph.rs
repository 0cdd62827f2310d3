//! The scalar strategy graph: named hyperparameters (lr, momentum, …) computed from
//! schedules, constants and arithmetic, evaluated once per step in O(nodes) with no
//! allocation. The language compiles into this; the runtime only evaluates it.

use serde::{Deserialize, Serialize};

use crate::schedule::Schedule;

/// Index of a node in [`ScalarGraph::nodes`].
pub type NodeId = u32;

/// Pointwise binary operation between two scalar nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
    /// `a ^ b`
    Pow,
    /// `min(a, b)`
    Min,
    /// `max(a, b)`
    Max,
}

impl BinaryOp {
    /// Apply the operation.
    pub fn apply(self, a: f64, b: f64) -> f64 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Pow => a.powf(b),
            BinaryOp::Min => a.min(b),
            BinaryOp::Max => a.max(b),
        }
    }
}

/// One node of the graph. Children always have smaller ids than their parent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Node {
    /// A schedule evaluated at the local step with the contextual length.
    Schedule(Schedule),
    /// `-x`
    Neg(NodeId),
    /// `op(lhs, rhs)`
    Binary {
        /// The operation.
        op: BinaryOp,
        /// Left operand.
        lhs: NodeId,
        /// Right operand.
        rhs: NodeId,
    },
    /// Fixes the contextual length of `inner` to `len` steps (a schedule's `over:`).
    Over {
        /// The node whose length is fixed.
        inner: NodeId,
        /// Length in steps.
        len: f64,
    },
    /// `first then second`: `first` for `t < first_len`, then `second` at local step
    /// `t - first_len` with the remaining contextual length.
    Then {
        /// The schedule running first.
        first: NodeId,
        /// Where the hand-over happens, in steps.
        first_len: f64,
        /// The schedule taking over.
        second: NodeId,
    },
    /// SGDR warm restarts (CosineAnnealingWarmRestarts): `inner` is evaluated at the
    /// position within the current period with the period as its length; periods
    /// are `period, period*mult, period*mult^2, …`.
    Restarts {
        /// The schedule restarted each period.
        inner: NodeId,
        /// First period in steps (`T_0`).
        period: f64,
        /// Period growth factor (`T_mult`), >= 1.
        mult: f64,
    },
}

/// A named output of the graph: one hyperparameter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScalarOutput {
    /// The hyperparameter's name (`lr`, `momentum`, …).
    pub name: String,
    /// The node computing it.
    pub node: NodeId,
}

/// A graph that fails validation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GraphError {
    /// A node refers to a node that does not precede it.
    #[error("node {node} refers to node {child}, which does not precede it")]
    BadChild {
        /// The referring node.
        node: NodeId,
        /// The bad reference.
        child: NodeId,
    },
    /// An output refers to a node that does not exist.
    #[error("output `{name}` refers to missing node {node}")]
    BadOutput {
        /// Output name.
        name: String,
        /// The bad reference.
        node: NodeId,
    },
    /// Two outputs share a name.
    #[error("output `{0}` is defined twice")]
    DuplicateOutput(String),
}

/// Named scalar hyperparameters as a DAG of nodes over training progress.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScalarGraph {
    /// Nodes, children before parents.
    pub nodes: Vec<Node>,
    /// Named outputs in declaration order.
    pub outputs: Vec<ScalarOutput>,
    /// Total length of the run in steps, if the script sets a horizon; it is the
    /// contextual length of every output.
    pub horizon: Option<f64>,
}

impl ScalarGraph {
    /// An empty graph with an optional horizon (in steps).
    pub fn new(horizon: Option<f64>) -> Self {
        Self {
            nodes: Vec::new(),
            outputs: Vec::new(),
            horizon,
        }
    }

    /// Append a node and return its id.
    pub fn push(&mut self, node: Node) -> NodeId {
        let id = self.nodes.len() as NodeId;
        self.nodes.push(node);
        id
    }

    /// Name a node as an output.
    pub fn add_output(&mut self, name: impl Into<String>, node: NodeId) {
        self.outputs.push(ScalarOutput {
            name: name.into(),
            node,
        });
    }

    /// The output named `name`.
    pub fn output(&self, name: &str) -> Option<NodeId> {
        self.outputs.iter().find(|o| o.name == name).map(|o| o.node)
    }

    /// Check that every reference points backwards and output names are unique, so
    /// evaluation terminates and cannot index out of bounds. A deserialized graph
    /// must pass this before it is evaluated.
    pub fn validate(&self) -> Result<(), GraphError> {
        for (index, node) in self.nodes.iter().enumerate() {
            let id = index as NodeId;
            let children: [Option<NodeId>; 2] = match node {
                Node::Schedule(_) => [None, None],
                Node::Neg(x) | Node::Over { inner: x, .. } | Node::Restarts { inner: x, .. } => {
                    [Some(*x), None]
                }
                Node::Binary { lhs, rhs, .. } => [Some(*lhs), Some(*rhs)],
                Node::Then { first, second, .. } => [Some(*first), Some(*second)],
            };
            for child in children.into_iter().flatten() {
                if child >= id {
                    return Err(GraphError::BadChild { node: id, child });
                }
            }
        }
        for (i, output) in self.outputs.iter().enumerate() {
            if output.node as usize >= self.nodes.len() {
                return Err(GraphError::BadOutput {
                    name: output.name.clone(),
                    node: output.node,
                });
            }
            if self.outputs[..i].iter().any(|o| o.name == output.name) {
                return Err(GraphError::DuplicateOutput(output.name.clone()));
            }
        }
        Ok(())
    }

    /// The contextual length every output starts with.
    pub fn root_length(&self) -> f64 {
        self.horizon.unwrap_or(f64::INFINITY)
    }

    /// Value of `node` at local step `t` with contextual length `len`.
    ///
    /// Total on any graph, validated or not: a missing node, or a child that does not
    /// precede its parent (which could form a cycle), evaluates to NaN instead of
    /// panicking or recursing forever. [`ScalarGraph::validate`] reports such graphs.
    pub fn eval_node(&self, node: NodeId, t: f64, len: f64) -> f64 {
        let child = |id: NodeId, t: f64, len: f64| {
            if id < node {
                self.eval_node(id, t, len)
            } else {
                f64::NAN
            }
        };
        let Some(current) = self.nodes.get(node as usize) else {
            return f64::NAN;
        };
        match current {
            Node::Schedule(schedule) => schedule.value(t, len),
            Node::Neg(x) => -child(*x, t, len),
            Node::Binary { op, lhs, rhs } => op.apply(child(*lhs, t, len), child(*rhs, t, len)),
            Node::Over { inner, len: own } => child(*inner, t, *own),
            Node::Then {
                first,
                first_len,
                second,
            } => {
                if t < *first_len {
                    child(*first, t, *first_len)
                } else {
                    child(*second, t - first_len, len - first_len)
                }
            }
            Node::Restarts {
                inner,
                period,
                mult,
            } => {
                let (position, current) = restart_position(t, *period, *mult);
                child(*inner, position, current)
            }
        }
    }

    /// Value of output `index` at step `t` (NaN if there is no such output).
    pub fn eval_output(&self, index: usize, t: f64) -> f64 {
        match self.outputs.get(index) {
            Some(output) => self.eval_node(output.node, t, self.root_length()),
            None => f64::NAN,
        }
    }

    /// Evaluate every output at step `t` into `out` (one slot per output).
    pub fn eval_into(&self, t: f64, out: &mut [f64]) {
        let len = self.root_length();
        for (slot, output) in out.iter_mut().zip(&self.outputs) {
            *slot = self.eval_node(output.node, t, len);
        }
    }
}

/// Position within the current SGDR period and that period's length
/// (PyTorch `CosineAnnealingWarmRestarts` closed form: `T_cur`, `T_i`).
///
/// Periods are `period * mult^k` and start at `period * (mult^k - 1) / (mult - 1)`.
/// A step that lies on a period boundary up to float rounding (relative `1e-12`)
/// starts the new period at position exactly 0. PyTorch evaluates the same closed
/// form without that care, so at some exact boundaries (e.g. `T_0 = 1, T_mult = 3`,
/// step 121, where `log(243, 3)` rounds to 4.999…) it reports the *end* of the
/// previous period instead of a restart; here every boundary restarts.
pub fn restart_position(t: f64, period: f64, mult: f64) -> (f64, f64) {
    if t < period {
        return (t, period);
    }
    if mult == 1.0 {
        return (t % period, period);
    }
    let excess = mult - 1.0;
    // ln(mult), accurate for mult near 1.
    let growth = excess.ln_1p();
    // Start and length of period `k`. `powf` keeps "nice" values exact (mult 2,
    // integer periods); near mult = 1 `mult^k - 1` cancels, so use
    // expm1(k ln mult) there.
    let period_k = |k: f64| {
        let grown = if excess >= 0.01 {
            mult.powf(k) - 1.0
        } else {
            (k * growth).exp_m1()
        };
        (period * grown / excess, period * (grown + 1.0))
    };
    let tolerance = 1e-12 * t;
    let mut n = ((t / period * excess).ln_1p() / growth).floor();
    // The logarithm may round across a boundary: correct by one period either way,
    // treating a step within `tolerance` of a boundary as on it.
    let (mut start, mut current) = period_k(n);
    if t < start - tolerance {
        n -= 1.0;
        (start, current) = period_k(n);
    } else {
        let (next_start, next_current) = period_k(n + 1.0);
        if t >= next_start - tolerance {
            (start, current) = (next_start, next_current);
        }
    }
    let position = t - start;
    let position = if position <= tolerance { 0.0 } else { position };
    (position, current)
}

/// Steps through a graph: the serializable cursor of a run. Schedules are pure, so
/// the cursor is the step; stateful policy nodes will keep their state here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluator {
    graph: ScalarGraph,
    step: u64,
}

impl Evaluator {
    /// Start at step 0. Fails when the graph is malformed.
    pub fn new(graph: ScalarGraph) -> Result<Self, GraphError> {
        graph.validate()?;
        Ok(Self { graph, step: 0 })
    }

    /// Check a deserialized evaluator before use.
    pub fn validate(&self) -> Result<(), GraphError> {
        self.graph.validate()
    }

    /// The graph being evaluated.
    pub fn graph(&self) -> &ScalarGraph {
        &self.graph
    }

    /// The step the next call to [`Evaluator::next_into`] evaluates.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Evaluate every output at the current step into `out`, then advance.
    pub fn next_into(&mut self, out: &mut [f64]) -> u64 {
        self.graph.eval_into(self.step as f64, out);
        self.advance()
    }

    /// Move to the next step without evaluating, returning the step left. For a
    /// caller that has already evaluated the current step (with
    /// [`ScalarGraph::eval_into`] at [`Evaluator::step`]) and commits it only once the
    /// work of the step has succeeded, as the training-step runtime does.
    pub fn advance(&mut self) -> u64 {
        let step = self.step;
        self.step += 1;
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: walk the periods one by one (`T_i` grows by `mult` at each restart).
    fn walk(t: f64, period: f64, mult: f64) -> (f64, f64) {
        let mut start = 0.0;
        let mut current = period;
        while t >= start + current {
            start += current;
            current *= mult;
        }
        (t - start, current)
    }

    #[test]
    fn before_the_first_restart() {
        assert_eq!(restart_position(0.0, 10.0, 2.0), (0.0, 10.0));
        assert_eq!(restart_position(9.5, 10.0, 2.0), (9.5, 10.0));
        assert_eq!(restart_position(9.0, 10.0, 1.0), (9.0, 10.0));
    }

    #[test]
    fn mult_one_is_modulo() {
        // T_cur = t % T_0
        assert_eq!(restart_position(10.0, 10.0, 1.0), (0.0, 10.0));
        assert_eq!(restart_position(37.0, 10.0, 1.0), (7.0, 10.0));
        assert_eq!(restart_position(1e6 + 3.0, 10.0, 1.0), (3.0, 10.0));
        assert_eq!(restart_position(7.5, 2.5, 1.0), (0.0, 2.5));
    }

    #[test]
    fn mult_two_boundaries() {
        // periods 10, 20, 40, 80 start at 0, 10, 30, 70
        assert_eq!(restart_position(9.0, 10.0, 2.0), (9.0, 10.0));
        assert_eq!(restart_position(10.0, 10.0, 2.0), (0.0, 20.0));
        assert_eq!(restart_position(29.0, 10.0, 2.0), (19.0, 20.0));
        assert_eq!(restart_position(30.0, 10.0, 2.0), (0.0, 40.0));
        assert_eq!(restart_position(69.0, 10.0, 2.0), (39.0, 40.0));
        assert_eq!(restart_position(70.0, 10.0, 2.0), (0.0, 80.0));
    }

    #[test]
    fn integer_periods_match_the_walk_exactly() {
        // With integer periods every start is an exact integer, so the closed form
        // must agree bit for bit with the walk at every step, boundaries included.
        for (period, mult) in [(10.0, 2.0), (1.0, 2.0), (3.0, 3.0), (7.0, 5.0), (1.0, 10.0)] {
            for t in 0..200_000u32 {
                let t = f64::from(t);
                assert_eq!(
                    restart_position(t, period, mult),
                    walk(t, period, mult),
                    "t {t}, period {period}, mult {mult}"
                );
            }
        }
    }

    #[test]
    fn fractional_boundaries_restart() {
        // period 7, mult 1.3: periods 7, 9.1, 11.83 start at 0, 7, 16.1. The old
        // guard put t = 7 at the *end* of period 0 (position ~7 of ~7), because
        // 7 * 0.3 / 0.3 rounds to 7.000000000000001.
        let (pos, current) = restart_position(7.0, 7.0, 1.3);
        assert_eq!(pos, 0.0);
        assert!((current - 9.1).abs() < 1e-12 * 9.1, "{current}");
        let (pos, current) = restart_position(16.1, 7.0, 1.3);
        assert_eq!(pos, 0.0);
        assert!((current - 11.83).abs() < 1e-12 * 11.83, "{current}");
        // period 10, mult 1.5: starts 0, 10, 25, 47.5 (all exact)
        assert_eq!(restart_position(24.0, 10.0, 1.5), (14.0, 15.0));
        assert_eq!(restart_position(25.0, 10.0, 1.5), (0.0, 22.5));
        assert_eq!(restart_position(47.0, 10.0, 1.5), (22.0, 22.5));
        assert_eq!(restart_position(47.5, 10.0, 1.5), (0.0, 33.75));
        assert_eq!(restart_position(48.0, 10.0, 1.5), (0.5, 33.75));
        // T_0 1, T_mult 3: step 121 starts the period of 243 (PyTorch's
        // int(log(243, 3)) = 4 reports T_cur = T_i = 81 there).
        assert_eq!(restart_position(120.0, 1.0, 3.0), (80.0, 81.0));
        assert_eq!(restart_position(121.0, 1.0, 3.0), (0.0, 243.0));
    }

    #[test]
    fn every_walked_boundary_is_a_restart() {
        for (period, mult) in [
            (7.0, 1.3),
            (0.37, 1.7),
            (3.3, 2.0),
            (10.0, 1.5),
            (10.0, 1.0 + 1e-9),
            (1000.0, 1.000_000_1),
        ] {
            let mut start = 0.0;
            let mut current = period;
            for k in 0..40 {
                let (pos, got) = restart_position(start, period, mult);
                assert_eq!(
                    pos, 0.0,
                    "period {period}, mult {mult}, restart {k} at {start}"
                );
                let rel = ((got - current) / current).abs();
                assert!(
                    rel < 1e-12,
                    "period {period}, mult {mult}: {got} vs {current}"
                );
                start += current;
                current *= mult;
            }
        }
    }

    #[test]
    fn fractional_mult_stays_inside_the_period() {
        // Period boundaries are inexact here; the position must still lie in
        // [0, current) and the period must be one of period * mult^n.
        for mult in [1.5, 1.1, 1.01, 1.001, 1.000_001] {
            for t in 0..100_000u32 {
                let t = f64::from(t);
                let (pos, current) = restart_position(t, 10.0, mult);
                assert!(
                    (0.0..current).contains(&pos),
                    "t {t}, mult {mult}: position {pos} outside [0, {current})"
                );
                let (_, walked) = walk(t, 10.0, mult);
                let rel = ((current - walked) / walked).abs();
                assert!(
                    rel < 1e-9,
                    "t {t}, mult {mult}: period {current} vs {walked}"
                );
            }
        }
    }
}
