//! Text renderings of a [`Trace`] (the formats of `regimen trace --format …`).
//!
//! - [`to_table`]: aligned columns for people, values to 6 significant digits;
//! - [`Trace::to_csv`]: a header row and one line per step, full precision;
//! - [`to_json`]: an array of records, `[{"step": 0, "lr": 0.001, …}, …]`, one record
//!   per line, full precision (non-finite values become `null`);
//! - [`to_yaml`]: the same records as a YAML sequence, full precision, with floats
//!   spelled so that YAML 1.1 and 1.2 readers alike parse them as floats.

use crate::{format_value, round_significant, Trace};

/// Significant digits shown by [`to_table`].
pub const TABLE_SIGNIFICANT_DIGITS: u32 = 6;

/// Aligned columns: a header (`step`, then one column per scalar) and one row per
/// record, numbers right-aligned, values rounded to [`TABLE_SIGNIFICANT_DIGITS`].
pub fn to_table(trace: &Trace) -> String {
    let mut rows: Vec<Vec<String>> = Vec::with_capacity(trace.records.len() + 1);
    let mut header = vec!["step".to_string()];
    header.extend(trace.columns.iter().cloned());
    rows.push(header);
    for record in &trace.records {
        let mut row = vec![record.step.to_string()];
        row.extend(record.values.iter().map(|v| table_value(*v)));
        rows.push(row);
    }
    let columns = trace.columns.len() + 1;
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|row| row.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let width = widths.get(c).copied().unwrap_or(0);
            line.push_str(&format!("{cell:>width$}"));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A value as shown in a table: 6 significant digits, scientific notation for very
/// small or very large magnitudes.
fn table_value(value: f64) -> String {
    let rounded = round_significant(value, TABLE_SIGNIFICANT_DIGITS);
    if rounded.is_finite() && rounded != 0.0 && !(1e-4..1e9).contains(&rounded.abs()) {
        format!("{rounded:e}")
    } else {
        format_value(rounded)
    }
}

/// An array of records, one per line: `[{"step": 0, "lr": 0.001}, …]`. Keys follow
/// the trace's column order; NaN and infinities (which JSON cannot express) are
/// written as `null`.
pub fn to_json(trace: &Trace) -> String {
    let names: Vec<String> = trace.columns.iter().map(|c| json_string(c)).collect();
    let mut out = String::from("[");
    for (i, record) in trace.records.iter().enumerate() {
        out.push_str(if i == 0 { "\n  {" } else { ",\n  {" });
        out.push_str(&format!("\"step\": {}", record.step));
        for (name, value) in names.iter().zip(&record.values) {
            out.push_str(&format!(", {name}: {}", json_number(*value)));
        }
        out.push('}');
    }
    if !trace.records.is_empty() {
        out.push('\n');
    }
    out.push_str("]\n");
    out
}

fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| format!("\"{}\"", text.escape_default()))
}

fn json_number(value: f64) -> String {
    if value.is_finite() {
        // serde_json's float form is the shortest that reads back exactly.
        serde_json::to_string(&value).unwrap_or_else(|_| format_value(value))
    } else {
        "null".to_string()
    }
}

/// A YAML sequence of records:
///
/// ```yaml
/// - step: 0
///   lr: 0.001
/// ```
pub fn to_yaml(trace: &Trace) -> String {
    if trace.records.is_empty() {
        return "[]\n".to_string();
    }
    let names: Vec<String> = trace.columns.iter().map(|c| yaml_key(c)).collect();
    let mut out = String::new();
    for record in &trace.records {
        out.push_str(&format!("- step: {}\n", record.step));
        for (name, value) in names.iter().zip(&record.values) {
            out.push_str(&format!("  {name}: {}\n", yaml_float(*value)));
        }
    }
    out
}

/// A mapping key: plain when it is an identifier that no YAML reader takes for a
/// boolean or null, double-quoted otherwise.
fn yaml_key(name: &str) -> String {
    const RESERVED: &[&str] = &[
        "y", "n", "yes", "no", "on", "off", "true", "false", "null", "step",
    ];
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !RESERVED.contains(&name.to_ascii_lowercase().as_str());
    if plain {
        name.to_string()
    } else {
        json_string(name)
    }
}

/// A float that YAML 1.1 (which needs a `.` and a signed exponent) and YAML 1.2 both
/// read back as the same `f64`.
fn yaml_float(value: f64) -> String {
    if value.is_nan() {
        return ".nan".to_string();
    }
    if value.is_infinite() {
        return if value > 0.0 { ".inf" } else { "-.inf" }.to_string();
    }
    let magnitude = value.abs();
    if value == 0.0 || (1e-5..1e15).contains(&magnitude) {
        let text = format!("{value}");
        if text.contains('.') {
            text
        } else {
            format!("{text}.0")
        }
    } else {
        // `{:e}` is the shortest round-trip form: `1e-9`, `1.5e20`.
        let text = format!("{value:e}");
        let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
        let mantissa = if mantissa.contains('.') {
            mantissa.to_string()
        } else {
            format!("{mantissa}.0")
        };
        let exponent = if exponent.starts_with('-') {
            exponent.to_string()
        } else {
            format!("+{exponent}")
        };
        format!("{mantissa}e{exponent}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TraceRecord;

    fn sample() -> Trace {
        Trace {
            columns: vec!["lr".to_string(), "momentum".to_string()],
            records: vec![
                TraceRecord {
                    step: 0,
                    values: vec![0.001, 0.9],
                },
                TraceRecord {
                    step: 10,
                    values: vec![1e-9, f64::NAN],
                },
            ],
        }
    }

    #[test]
    fn table_is_aligned() {
        assert_eq!(
            to_table(&sample()),
            "step     lr  momentum\n   0  0.001       0.9\n  10   1e-9       NaN\n"
        );
    }

    #[test]
    fn json_is_an_array_of_records() {
        assert_eq!(
            to_json(&sample()),
            "[\n  {\"step\": 0, \"lr\": 0.001, \"momentum\": 0.9},\n  {\"step\": 10, \"lr\": 1e-9, \"momentum\": null}\n]\n"
        );
        assert_eq!(to_json(&Trace::default()), "[]\n");
    }

    #[test]
    fn yaml_floats_are_unambiguous() {
        assert_eq!(yaml_float(0.0), "0.0");
        assert_eq!(yaml_float(1.0), "1.0");
        assert_eq!(yaml_float(0.001), "0.001");
        assert_eq!(yaml_float(1e-9), "1.0e-9");
        assert_eq!(yaml_float(-2.5e20), "-2.5e+20");
        assert_eq!(yaml_float(f64::NEG_INFINITY), "-.inf");
        for v in [0.1, 1e-9, 3e-4, 2.5e20, 123456.789, 1e-300] {
            let text = yaml_float(v);
            assert_eq!(text.parse::<f64>().ok(), Some(v), "{text}");
        }
    }

    #[test]
    fn yaml_is_a_sequence_of_mappings() {
        assert_eq!(
            to_yaml(&sample()),
            "- step: 0\n  lr: 0.001\n  momentum: 0.9\n- step: 10\n  lr: 1.0e-9\n  momentum: .nan\n"
        );
        assert_eq!(yaml_key("on"), "\"on\"");
        assert_eq!(yaml_key("beta1"), "beta1");
    }
}
