//! Regimen core: the runtime side of a strategy. It knows nothing of the language:
//! it receives a compiled [`ScalarGraph`] (schedules and arithmetic over training
//! progress) and a [`Strategy`] (optimizer, groups, layer rules, precision), binds
//! them to a model's parameters, and executes training steps on a tensor
//! [`Backend`], recording what it did in a [`Trace`].

pub mod backend;
pub mod batch;
pub mod comm;
pub mod compress;
pub mod data;
pub mod graph;
pub mod loader;
pub mod nn;
/// The argument vocabulary shared with plugins (the `regimen-plugin` SDK).
pub use regimen_plugin as plugin;
pub mod problem;
pub mod runtime;
pub mod schedule;
pub mod strategy;
pub mod trace;

pub use backend::{
    Backend, BackendChoice, BackendError, HostTensor, HostTensorMut, NdArrayBackend,
};
pub use graph::{BinaryOp, Evaluator, GraphError, Node, NodeId, ScalarGraph, ScalarOutput};
pub use runtime::{Binding, Metrics, ParamSpec, RuntimeError, StepReport, Stepper};
pub use schedule::{Anneal, CyclicMode, DecayShape, Schedule, WarmupShape};
pub use strategy::{
    AtMinScale, CompressSpec, DType, DynamicLossScale, GroupRule, Hyper, LayerDecay, LossScaleSpec,
    OptimizerKind, OptimizerSpec, PrecisionSpec, Strategy,
};
pub use trace::{format_value, round_significant, Trace, TraceRecord, SNAPSHOT_SIGNIFICANT_DIGITS};
