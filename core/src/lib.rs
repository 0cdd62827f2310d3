//! Regimen core: the runtime side of a strategy. It knows nothing of the language:
//! it receives a compiled [`ScalarGraph`] (schedules and arithmetic over training
//! progress), evaluates it step by step, and records what it produced in a [`Trace`].

pub mod graph;
pub mod schedule;
pub mod trace;

pub use graph::{BinaryOp, GraphError, Node, NodeId, ScalarGraph, ScalarOutput, Evaluator};
pub use schedule::{Anneal, CyclicMode, Schedule, WarmupShape, DecayShape};
pub use trace::{format_value, round_significant, Trace, TraceRecord, SNAPSHOT_SIGNIFICANT_DIGITS};
