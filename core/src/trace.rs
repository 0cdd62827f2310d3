//! Traces: one record per step of every scalar a strategy produces — the observable
//! output that feeds `regimen trace`, plots and snapshot tests.

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use crate::graph::{Evaluator, GraphError, ScalarGraph};

/// Significant digits kept by [`Trace::rounded`]: enough to see every schedule
/// detail, few enough that last-ulp differences between platforms' `cos`/`exp`
/// never show in a snapshot.
pub const SNAPSHOT_SIGNIFICANT_DIGITS: u32 = 9;

/// Round `x` to `digits` significant decimal digits (non-finite values unchanged).
pub fn round_significant(x: f64, digits: u32) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let text = format!("{:.*e}", digits.saturating_sub(1) as usize, x);
    text.parse().unwrap_or(x)
}

/// One step of a trace.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceRecord {
    /// Step index, counting from 0.
    pub step: u64,
    /// One value per [`Trace::columns`] entry.
    pub values: Vec<f64>,
}

/// Every scalar of a strategy, step by step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trace {
    /// Column names, in the script's declaration order.
    pub columns: Vec<String>,
    /// Records in step order.
    pub records: Vec<TraceRecord>,
}

impl Trace {
    /// Evaluate `graph` for steps `0..steps`, keeping every `every`-th step (and
    /// always the last).
    pub fn from_graph(graph: &ScalarGraph, steps: u64, every: u64) -> Result<Self, GraphError> {
        let mut evaluator = Evaluator::new(graph.clone())?;
        let columns: Vec<String> = graph.outputs.iter().map(|o| o.name.clone()).collect();
        let every = every.max(1);
        let mut scratch = vec![0.0; columns.len()];
        let mut records = Vec::new();
        for _ in 0..steps {
            let step = evaluator.next_into(&mut scratch);
            if step % every == 0 || step + 1 == steps {
                records.push(TraceRecord {
                    step,
                    values: scratch.clone(),
                });
            }
        }
        Ok(Self { columns, records })
    }

    /// The values of one column, in step order.
    pub fn column(&self, name: &str) -> Option<Vec<f64>> {
        let index = self.columns.iter().position(|c| c == name)?;
        Some(self.records.iter().map(|r| r.values[index]).collect())
    }

    /// A copy with every value rounded to `digits` significant digits.
    pub fn rounded(&self, digits: u32) -> Self {
        Self {
            columns: self.columns.clone(),
            records: self
                .records
                .iter()
                .map(|r| TraceRecord {
                    step: r.step,
                    values: r
                        .values
                        .iter()
                        .map(|v| round_significant(*v, digits))
                        .collect(),
                })
                .collect(),
        }
    }

    /// CSV with a header row (`step,lr,…`); floats in shortest round-trip form.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("step");
        for column in &self.columns {
            out.push(',');
            out.push_str(column);
        }
        out.push('\n');
        for record in &self.records {
            out.push_str(&record.step.to_string());
            for value in &record.values {
                out.push(',');
                out.push_str(&format_value(*value));
            }
            out.push('\n');
        }
        out
    }
}

/// Shortest text that reads back as the same `f64` (`NaN`, `inf`, `-inf` spelled out).
pub fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value.is_infinite() {
        if value > 0.0 { "inf" } else { "-inf" }.to_string()
    } else {
        // Scientific notation where plain would be long (Python's `repr` rule):
        // `1e-9`, not `0.000000001`.
        let magnitude = value.abs();
        if magnitude != 0.0 && !(1e-4..1e16).contains(&magnitude) {
            format!("{value:e}")
        } else {
            format!("{value}")
        }
    }
}

struct RecordView<'a> {
    columns: &'a [String],
    record: &'a TraceRecord,
}

impl Serialize for RecordView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.columns.len() + 1))?;
        map.serialize_entry("step", &self.record.step)?;
        for (name, value) in self.columns.iter().zip(&self.record.values) {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// Serialized as an array of records: `[{"step": 0, "lr": 0.1, …}, …]`.
impl Serialize for Trace {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.records.len()))?;
        for record in &self.records {
            seq.serialize_element(&RecordView {
                columns: &self.columns,
                record,
            })?;
        }
        seq.end()
    }
}
