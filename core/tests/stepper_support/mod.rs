//! Helpers shared by the stepper tests: scalar graphs built by hand, a small model of
//! f32 parameters driven through a [`Stepper`] on the ndarray backend, and the 1e-6
//! relative comparison the optimizer tests use.

// Each test file uses a different subset.
#![allow(dead_code)]

#[path = "../common/mod.rs"]
mod common;

use regimen_core::runtime::RuntimeError;
use regimen_core::{
    GroupRule, HostTensor, HostTensorMut, Hyper, Metrics, NdArrayBackend, Node, NodeId,
    OptimizerKind, OptimizerSpec, ParamSpec, ScalarGraph, Schedule, StepReport, Stepper, Strategy,
};

/// Relative tolerance of the trajectory tests (the 1e-6).
pub const TOLERANCE: f64 = 1e-6;

/// `actual` within 1e-6 relative of `expected` (exactly 0 when 0 is expected).
#[track_caller]
pub fn close(actual: f64, expected: f64) {
    common::close_within(actual, expected, TOLERANCE);
}

/// Every element within 1e-6 relative.
#[track_caller]
pub fn close_all(actual: &[f32], expected: &[f64]) {
    assert_eq!(actual.len(), expected.len(), "lengths differ");
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let rel = ((f64::from(a) - e) / e).abs();
        assert!(
            rel <= TOLERANCE,
            "element {i}: actual {a:e} != expected {e:e} (relative error {rel:e}); all: {actual:?}"
        );
    }
}

/// A constant schedule node.
pub fn constant(graph: &mut ScalarGraph, value: f64) -> NodeId {
    graph.push(Node::Schedule(Schedule::Constant { value }))
}

/// A graph whose outputs are constants.
pub fn constants(outputs: &[(&str, f64)]) -> ScalarGraph {
    let mut graph = ScalarGraph::new(None);
    for &(name, value) in outputs {
        let node = constant(&mut graph, value);
        graph.add_output(name, node);
    }
    graph
}

/// A strategy running `kind` with default options and no groups.
pub fn strategy(kind: OptimizerKind) -> Strategy {
    Strategy {
        optimizer: OptimizerSpec {
            kind,
            ..OptimizerSpec::default()
        },
        ..Strategy::default()
    }
}

/// A group over `patterns` setting `hypers` (outputs `groupN.NAME` must exist).
pub fn group(patterns: &[&str], hypers: &[Hyper]) -> GroupRule {
    GroupRule {
        patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
        hypers: hypers.to_vec(),
        trust_ratio: None,
        layer_decay: None,
        compress: None,
    }
}

/// A model of f32 parameters stepped through a [`Stepper`] on the ndarray backend.
pub struct Model {
    /// The stepper under test.
    pub stepper: Stepper<NdArrayBackend>,
    /// The model's copy of each parameter, as the stepper writes it back.
    pub params: Vec<Vec<f32>>,
}

impl Model {
    /// Bind `strategy` to f32 parameters with the given initial values.
    pub fn new(graph: ScalarGraph, strategy: Strategy, params: &[(&str, &[f32])]) -> Self {
        let specs: Vec<ParamSpec> = params
            .iter()
            .map(|(name, values)| ParamSpec::new(*name, &[values.len()]))
            .collect();
        Self::with_specs(graph, strategy, &specs, params)
    }

    /// Bind with explicit specs (depths); all f32.
    pub fn with_specs(
        graph: ScalarGraph,
        strategy: Strategy,
        specs: &[ParamSpec],
        params: &[(&str, &[f32])],
    ) -> Self {
        let initial: Vec<HostTensor<'_>> = params
            .iter()
            .map(|(_, values)| HostTensor::F32(values))
            .collect();
        let stepper = Stepper::new(NdArrayBackend::new(), graph, strategy, specs, &initial)
            .expect("binding succeeds");
        Self {
            stepper,
            params: params.iter().map(|(_, values)| values.to_vec()).collect(),
        }
    }

    /// One step with f32 gradients; panics on error.
    #[track_caller]
    pub fn step(&mut self, grads: &[&[f32]]) -> StepReport {
        self.try_step(grads).expect("step succeeds")
    }

    /// One step with f32 gradients.
    pub fn try_step(&mut self, grads: &[&[f32]]) -> Result<StepReport, RuntimeError> {
        let mut params: Vec<HostTensorMut<'_>> = self
            .params
            .iter_mut()
            .map(|p| HostTensorMut::F32(p.as_mut_slice()))
            .collect();
        let grads: Vec<HostTensor<'_>> = grads.iter().map(|g| HostTensor::F32(g)).collect();
        self.stepper.step(&mut params, &grads, &Metrics::default())
    }

    /// Parameter `index`'s master weights.
    pub fn master(&self, index: usize) -> Vec<f32> {
        let mut out = vec![0.0; self.params[index].len()];
        self.stepper
            .read_master(index, &mut out)
            .expect("index in range");
        out
    }

    /// Every parameter's master weights.
    pub fn masters(&self) -> Vec<Vec<f32>> {
        (0..self.params.len()).map(|i| self.master(i)).collect()
    }
}

/// The report as text: `Debug` spells every f64 so that it parses back to the same
/// bits, and NaN equals NaN, so equal strings mean bit-identical reports.
pub fn report_bits(report: &StepReport) -> String {
    format!("{report:?}")
}
