//! Regimen core: the runtime side of a strategy. It knows nothing of the language:
//! it receives a compiled [`ScalarGraph`] (schedules and arithmetic over training
//! progress), evaluates it step by step, and records what it produced in a [`Trace`].

pub mod graph;
/// The argument vocabulary shared with plugins (the `regimen-plugin` SDK).
pub use regimen_plugin as plugin;
pub mod schedule;
pub mod trace;

pub use graph::{BinaryOp, Evaluator, GraphError, Node, NodeId, ScalarGraph, ScalarOutput};
pub use schedule::{Anneal, CyclicMode, DecayShape, Schedule, WarmupShape};
pub use trace::{format_value, round_significant, Trace, TraceRecord, SNAPSHOT_SIGNIFICANT_DIGITS};
