//! Traces: one record per step — every scalar a script's graph produces
//! ([`Trace::from_graph`]), or what the training-step runtime did ([`Trace::from_step_reports`])
//! — the observable output that feeds `regimen trace`, plots and snapshot tests.

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use crate::graph::{Evaluator, GraphError, ScalarGraph};
use crate::runtime::StepReport;

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

    /// A runtime trace: one record per [`StepReport`] (in the order given), so that a
    /// run's optimizer side can be traced, plotted and snapshot-tested like its
    /// schedules. Columns, in order:
    ///
    /// - every global scalar of the step (`lr`, `momentum`, …, group overrides such as
    ///   `group1.lr`), in graph output order;
    /// - the effective learning rate of each lr bin of the binding (after group
    ///   overrides and layer decay), named like the bin (`lr×0.75^2`,
    ///   `group1.lr×0.75^1`); a bin without layer decay is named after the output it
    ///   reads (`lr`, `group1.lr`), which is already a column, and is not repeated;
    /// - [`RUNTIME_COLUMNS`]: `loss_scale` (the scale this step's gradients carried),
    ///   `skipped` (1 for a skipped step, else 0), `grad_norm`, `clipped_grad_norm`,
    ///   `update_norm`;
    /// - `trust_min`, `trust_mean`, `trust_max` when some step applied trust ratios
    ///   (NaN in steps that did not);
    /// - when gradients were compressed or exchanged, for each compression entry of the
    ///   reports (a rule and its method, labelled `compress` or `groupN.compress`, see
    ///   [`CompressionReport`](crate::runtime::CompressionReport)) the
    ///   [`COMPRESSION_COLUMNS`] prefixed by the label: `compress.bytes_dense`,
    ///   `compress.bytes_payload`, `compress.bytes_wire` (this worker's),
    ///   `compress.bytes_ratio` (dense / payload) and `compress.rel_error`
    ///   (`‖x − r‖/‖x‖`), then [`WIRE_COLUMNS`]: `wire_bytes_sent` and
    ///   `wire_bytes_received` over the whole step (skipped steps have 0 bytes and NaN
    ///   ratio and error). A rule's scheduled argument is a graph output named
    ///   `compress.ARG`, so the suffixes avoid the built-in methods' argument names;
    /// - `loss` when some step reported one (NaN in steps that did not).
    ///
    /// Scalar and bin columns come from the first report; a later report lacking one
    /// (which one stepper never produces) gets NaN there.
    pub fn from_step_reports(reports: &[StepReport]) -> Self {
        let Some(first) = reports.first() else {
            return Self::default();
        };
        let scalar_names: Vec<&str> = first.scalars.iter().map(|(n, _)| n.as_str()).collect();
        let bin_names: Vec<&str> = first
            .group_lrs
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !scalar_names.contains(n))
            .collect();
        let has_trust = reports.iter().any(|r| r.trust_ratio.is_some());
        let has_loss = reports.iter().any(|r| r.loss.is_some());
        let has_batch = reports.iter().any(|r| r.batch.is_some());
        // (label, method) of every compression entry, in order of first appearance.
        let mut compression: Vec<(&str, &str)> = Vec::new();
        for entry in reports.iter().flat_map(|r| &r.compression) {
            let key = (entry.label.as_str(), entry.method.as_str());
            if !compression.contains(&key) {
                compression.push(key);
            }
        }
        let has_compression = !compression.is_empty();
        // A label appears once per method; two methods under one label (which one
        // stepper never produces) are told apart by the method.
        let prefixes: Vec<String> = compression
            .iter()
            .map(|&(label, method)| {
                if compression.iter().filter(|(l, _)| *l == label).count() > 1 {
                    format!("{label}[{method}]")
                } else {
                    label.to_owned()
                }
            })
            .collect();

        let mut columns: Vec<String> = scalar_names.iter().map(|n| n.to_string()).collect();
        columns.extend(bin_names.iter().map(|n| n.to_string()));
        columns.extend(RUNTIME_COLUMNS.iter().map(|c| c.to_string()));
        if has_trust {
            columns.extend(TRUST_COLUMNS.iter().map(|c| c.to_string()));
        }
        if has_compression {
            for prefix in &prefixes {
                columns.extend(COMPRESSION_COLUMNS.iter().map(|c| format!("{prefix}.{c}")));
            }
            columns.extend(WIRE_COLUMNS.iter().map(|c| c.to_string()));
        }
        if has_batch {
            columns.extend(BATCH_COLUMNS.iter().map(|c| c.to_string()));
        }
        if has_loss {
            columns.push(LOSS_COLUMN.to_string());
        }

        let records = reports
            .iter()
            .map(|report| {
                let mut values = Vec::with_capacity(columns.len());
                values.extend(named_values(&scalar_names, &report.scalars));
                values.extend(named_values(&bin_names, &report.group_lrs));
                values.extend([
                    report.loss_scale,
                    if report.skipped { 1.0 } else { 0.0 },
                    report.grad_norm,
                    report.clipped_grad_norm,
                    report.update_norm,
                ]);
                if has_trust {
                    values.extend(match report.trust_ratio {
                        Some(t) => [t.min, t.mean, t.max],
                        None => [f64::NAN; 3],
                    });
                }
                if has_compression {
                    for &(label, method) in &compression {
                        let entry = report
                            .compression
                            .iter()
                            .find(|e| e.label == label && e.method == method);
                        values.extend(match entry {
                            Some(e) => [
                                e.dense_bytes as f64,
                                e.payload_bytes as f64,
                                e.wire_bytes_sent as f64,
                                e.ratio(),
                                e.relative_error,
                            ],
                            None => [f64::NAN; 5],
                        });
                    }
                    values.extend([
                        report.wire_bytes_sent as f64,
                        report.wire_bytes_received as f64,
                    ]);
                }
                if has_batch {
                    values.extend(match report.batch {
                        Some(b) => [
                            b.batch as f64,
                            b.samples as f64,
                            b.progress,
                            b.lr_factor,
                            b.noise_scale,
                            b.gain,
                        ],
                        None => [f64::NAN; 6],
                    });
                }
                if has_loss {
                    values.push(report.loss.unwrap_or(f64::NAN));
                }
                TraceRecord {
                    step: report.step,
                    values,
                }
            })
            .collect();
        Self { columns, records }
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

/// The columns every runtime trace has after its scalar and lr-bin columns (see
/// [`Trace::from_step_reports`]).
pub const RUNTIME_COLUMNS: [&str; 5] = [
    "loss_scale",
    "skipped",
    "grad_norm",
    "clipped_grad_norm",
    "update_norm",
];

/// The trust-ratio summary columns of a runtime trace (LARS/LAMB).
pub const TRUST_COLUMNS: [&str; 3] = ["trust_min", "trust_mean", "trust_max"];

/// The loss column of a runtime trace.
pub const LOSS_COLUMN: &str = "loss";

/// The batch-control columns of a runtime trace (with a `batch` statement): the
/// step's batch, samples seen after it, the schedules' clock it ran at, its lr
/// factor, the smoothed noise scale `B_simple` and AdaScale gain (see
/// [`BatchReport`](crate::batch::BatchReport)).
pub const BATCH_COLUMNS: [&str; 6] = [
    "batch",
    "samples",
    "progress",
    "lr_factor",
    "noise_scale",
    "gain",
];

/// The columns of each compression entry of a runtime trace, after its label
/// (`compress.bytes_dense`, `group2.compress.rel_error`).
pub const COMPRESSION_COLUMNS: [&str; 5] = [
    "bytes_dense",
    "bytes_payload",
    "bytes_wire",
    "bytes_ratio",
    "rel_error",
];

/// A runtime trace's columns of the whole step's traffic, when gradients were
/// compressed or exchanged.
pub const WIRE_COLUMNS: [&str; 2] = ["wire_bytes_sent", "wire_bytes_received"];

/// The value of each of `names` in `pairs`: by position when the names line up (the
/// normal case: one stepper reports the same outputs every step), else by lookup,
/// NaN when absent.
fn named_values<'a>(
    names: &'a [&str],
    pairs: &'a [(String, f64)],
) -> impl Iterator<Item = f64> + 'a {
    names
        .iter()
        .enumerate()
        .map(move |(index, name)| match pairs.get(index) {
            Some((n, v)) if n == name => *v,
            _ => pairs
                .iter()
                .find(|(n, _)| n == name)
                .map_or(f64::NAN, |(_, v)| *v),
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{CompressionReport, TrustSummary};

    fn report(
        step: u64,
        skipped: bool,
        trust: Option<TrustSummary>,
        loss: Option<f64>,
    ) -> StepReport {
        StepReport {
            step,
            updates: step,
            skipped,
            loss_scale: 1024.0,
            next_loss_scale: 512.0,
            grad_norm: if skipped { f64::INFINITY } else { 2.0 },
            clipped_grad_norm: if skipped { f64::INFINITY } else { 1.0 },
            update_norm: if skipped { 0.0 } else { 0.25 },
            scalars: vec![("lr".to_string(), 0.1), ("momentum".to_string(), 0.9)],
            group_lrs: vec![
                ("lr".to_string(), 0.1),
                ("lr×0.75^1".to_string(), 0.075),
                ("group1.lr×0.75^1".to_string(), 0.0075),
            ],
            trust_ratio: trust,
            loss,
            compression: Vec::new(),
            wire_bytes_sent: 0,
            wire_bytes_received: 0,
            batch: None,
        }
    }

    #[test]
    fn step_reports_become_records_with_fixed_columns() {
        let trust = TrustSummary {
            min: 0.5,
            mean: 1.0,
            max: 2.0,
        };
        let trace = Trace::from_step_reports(&[
            report(0, false, Some(trust), Some(3.0)),
            report(1, true, None, Some(2.5)),
        ]);
        assert_eq!(
            trace.columns,
            [
                "lr",
                "momentum",
                "lr×0.75^1",
                "group1.lr×0.75^1",
                "loss_scale",
                "skipped",
                "grad_norm",
                "clipped_grad_norm",
                "update_norm",
                "trust_min",
                "trust_mean",
                "trust_max",
                "loss"
            ]
        );
        assert_eq!(
            trace.records[0].values,
            [0.1, 0.9, 0.075, 0.0075, 1024.0, 0.0, 2.0, 1.0, 0.25, 0.5, 1.0, 2.0, 3.0]
        );
        let skipped = &trace.records[1];
        assert_eq!(skipped.step, 1);
        assert_eq!(skipped.values[5], 1.0);
        assert!(skipped.values[6].is_infinite());
        assert!(skipped.values[9..12].iter().all(|v| v.is_nan()));
        assert_eq!(skipped.values[12], 2.5);
    }

    #[test]
    fn optional_columns_appear_only_when_used() {
        let trace = Trace::from_step_reports(&[report(0, false, None, None)]);
        assert_eq!(trace.columns.len(), 4 + RUNTIME_COLUMNS.len());
        assert!(Trace::from_step_reports(&[]).records.is_empty());
    }

    #[test]
    fn a_missing_name_is_looked_up_or_nan() {
        let mut second = report(1, false, None, None);
        second.scalars.reverse();
        second.group_lrs.truncate(2);
        let trace = Trace::from_step_reports(&[report(0, false, None, None), second]);
        assert_eq!(trace.records[1].values[..3], [0.1, 0.9, 0.075]);
        assert!(trace.records[1].values[3].is_nan());
    }

    #[test]
    fn compression_entries_become_prefixed_columns_before_the_loss() {
        let entry = |label: &str, method: &str, payload: u64, error: f64| CompressionReport {
            label: label.to_string(),
            method: method.to_string(),
            tensors: 2,
            dense_bytes: 400,
            payload_bytes: payload,
            wire_bytes_sent: 3 * payload,
            relative_error: error,
        };
        let mut first = report(0, false, None, Some(1.0));
        first.compression = vec![
            entry("compress", "topk", 40, 0.5),
            entry("group1.compress", "none", 400, 0.0),
        ];
        first.wire_bytes_sent = 1324;
        first.wire_bytes_received = 1328;
        let trace = Trace::from_step_reports(&[first]);
        let tail: Vec<&str> = trace.columns[9..].iter().map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "compress.bytes_dense",
                "compress.bytes_payload",
                "compress.bytes_wire",
                "compress.bytes_ratio",
                "compress.rel_error",
                "group1.compress.bytes_dense",
                "group1.compress.bytes_payload",
                "group1.compress.bytes_wire",
                "group1.compress.bytes_ratio",
                "group1.compress.rel_error",
                "wire_bytes_sent",
                "wire_bytes_received",
                "loss"
            ]
        );
        // Ratios: 400 / 40 = 10 and 400 / 400 = 1.
        assert_eq!(
            trace.records[0].values[9..],
            [400.0, 40.0, 120.0, 10.0, 0.5, 400.0, 400.0, 1200.0, 1.0, 0.0, 1324.0, 1328.0, 1.0]
        );
    }
}
