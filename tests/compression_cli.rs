//! Gradient compression from the command line and the facade: `regimen trace SCRIPT
//! --problem NAME [--workers N]` shows the compression columns (bytes before and after
//! per rule, ratio, relative error, bytes on the wire), and the library's
//! `ProblemOptions::with_workers` runs the same simulated workers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use regimen::{
    format_value, round_significant, trace_problem_source, ProblemKind, ProblemOptions,
    TraceOptions,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Top-k with error feedback whose ratio is a schedule, the biases dense, the norm
/// gain in sign.
const SCRIPT: &str = "\
horizon 6 steps
lr = 0.1
optimizer sgd(momentum: 0.9)
compress topk(ratio: linear(0.5 -> 0.1, over: 4 steps)) with error_feedback
group \"*.bias\" { compress none }
group \"norm.*\" { compress sign }
";

fn regimen(args: &[&str]) -> std::io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_regimen"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
}

fn script(dir: &tempfile::TempDir, text: &str) -> Result<PathBuf, std::io::Error> {
    let path = dir.path().join("compressed.regimen");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn path_str(path: &Path) -> Result<&str, String> {
    path.to_str()
        .ok_or_else(|| format!("non-UTF-8 path {}", path.display()))
}

/// A CSV trace with every value rounded to 6 significant digits (so that last-ulp
/// differences of `tanh`/`exp` between platforms never show).
fn rounded_csv(csv: &str) -> String {
    let mut out = String::new();
    for (index, line) in csv.lines().enumerate() {
        if index == 0 {
            out.push_str(line);
        } else {
            let cells: Vec<String> = line
                .split(',')
                .map(|cell| match cell.parse::<f64>() {
                    Ok(value) => format_value(round_significant(value, 6)),
                    Err(_) => cell.to_owned(),
                })
                .collect();
            out.push_str(&cells.join(","));
        }
        out.push('\n');
    }
    out
}

/// The columns of a CSV trace.
fn header(csv: &str) -> Vec<String> {
    csv.lines()
        .next()
        .unwrap_or_default()
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// One column of a CSV trace as numbers.
fn column(csv: &str, name: &str) -> Result<Vec<f64>, String> {
    let index = header(csv)
        .iter()
        .position(|c| c == name)
        .ok_or_else(|| format!("no column `{name}`"))?;
    csv.lines()
        .skip(1)
        .map(|line| {
            line.split(',')
                .nth(index)
                .and_then(|cell| cell.parse::<f64>().ok())
                .ok_or_else(|| format!("bad cell in `{line}`"))
        })
        .collect()
}

/// Two workers on the logistic problem (57 parameters: 32 + 8 + 8 + 1 + 8).
///
/// What the snapshot must show, by hand:
/// - `compress.*` is the top-level top-k on `layers.0.weight` (32) and
///   `layers.1.weight` (8): `bytes_dense` = 4·40 = 160; `group1.compress.*` is `none`
///   on the biases (8 + 1): `bytes_dense` = 36 and `bytes_payload` = 36 + two headers
///   of 16 + 4·1 = 76, relative error 0; `group2.compress.*` is `sign` on
///   `norm.weight` (8): 32 dense bytes;
/// - `compress.ratio` is the schedule 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, and top-k sends
///   `⌈ratio·n⌉` elements of each tensor, so its payload shrinks with it;
/// - a ring allreduce of `N` bytes between 2 workers sends `2N − |B₀| − |B₁| = N`
///   bytes per rank (the comm module's formula), so `none` puts exactly its 36 data
///   bytes on the wire (headers stay home), and the one-f32 non-finite flag 4 more,
///   which belong to no rule: `wire_bytes_sent` = the rules' `bytes_wire` + 4.
#[test]
fn trace_with_compression_shows_the_columns() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = script(&dir, SCRIPT)?;
    let output = regimen(&[
        "trace",
        path_str(&path)?,
        "--problem",
        "logistic",
        "--workers",
        "2",
        "--format",
        "csv",
    ])?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let csv = String::from_utf8(output.stdout)?;
    let columns = header(&csv);
    for rule in ["compress", "group1.compress", "group2.compress"] {
        for suffix in [
            "bytes_dense",
            "bytes_payload",
            "bytes_wire",
            "bytes_ratio",
            "rel_error",
        ] {
            let name = format!("{rule}.{suffix}");
            assert!(columns.contains(&name), "{name} missing from {columns:?}");
        }
    }
    assert_eq!(column(&csv, "compress.bytes_dense")?, vec![160.0; 6]);
    assert_eq!(column(&csv, "group1.compress.bytes_dense")?, vec![36.0; 6]);
    assert_eq!(
        column(&csv, "group1.compress.bytes_payload")?,
        vec![76.0; 6]
    );
    assert_eq!(column(&csv, "group2.compress.bytes_dense")?, vec![32.0; 6]);
    assert_eq!(column(&csv, "group1.compress.rel_error")?, vec![0.0; 6]);
    assert_eq!(column(&csv, "group1.compress.bytes_wire")?, vec![36.0; 6]);
    // Every byte sent belongs to a rule, except the non-finite flag's 4.
    let sent = column(&csv, "wire_bytes_sent")?;
    let rules: Vec<f64> = (0..6)
        .map(|step| {
            ["compress", "group1.compress", "group2.compress"]
                .iter()
                .map(|rule| column(&csv, &format!("{rule}.bytes_wire")).map(|c| c[step]))
                .sum::<Result<f64, String>>()
        })
        .collect::<Result<_, _>>()?;
    for (total, rules) in sent.iter().zip(&rules) {
        assert_eq!(total - rules, 4.0, "{total} vs {rules}");
    }
    insta::assert_snapshot!("logistic_two_workers", rounded_csv(&csv));
    Ok(())
}

/// One worker: the same columns, nothing on the wire.
#[test]
fn one_worker_compresses_without_sending_anything() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = script(&dir, SCRIPT)?;
    let output = regimen(&[
        "trace",
        path_str(&path)?,
        "--problem",
        "quadratic",
        "--format",
        "csv",
    ])?;
    assert!(output.status.success());
    let csv = String::from_utf8(output.stdout)?;
    assert_eq!(column(&csv, "wire_bytes_sent")?, vec![0.0; 6]);
    assert_eq!(column(&csv, "compress.bytes_wire")?, vec![0.0; 6]);
    let payload = column(&csv, "compress.bytes_payload")?;
    assert!(payload.windows(2).all(|w| w[1] <= w[0]), "{payload:?}");
    let table = regimen(&[
        "trace",
        path_str(&path)?,
        "--problem",
        "quadratic",
        "--steps",
        "2",
    ])?;
    let text = String::from_utf8(table.stdout)?;
    assert!(text.contains("compress.rel_error"), "{text}");
    assert!(text.contains("wire_bytes_sent"), "{text}");
    Ok(())
}

/// Several workers and no `compress` rule: the gradients are still averaged, through
/// the dense `none` method, and its bytes are shown under `compress`; a script traced
/// on one worker has no such columns (the existing traces are unchanged).
#[test]
fn workers_without_compression_exchange_dense_gradients() -> TestResult {
    let plain = "horizon 3 steps\nlr = 0.1\n";
    let options = TraceOptions::default();
    let one = trace_problem_source(
        "plain.regimen",
        plain,
        &options,
        &ProblemOptions::new(ProblemKind::Logistic),
    )?;
    assert!(
        one.columns
            .iter()
            .all(|c| !c.starts_with("compress.") && !c.starts_with("wire_")),
        "{:?}",
        one.columns
    );
    let four = trace_problem_source(
        "plain.regimen",
        plain,
        &options,
        &ProblemOptions::new(ProblemKind::Logistic).with_workers(4),
    )?;
    // 57 f32 parameters: 228 dense bytes; five headers (two 2-d, three 1-d): 16·5 + 4·7.
    assert_eq!(four.column("compress.bytes_dense"), Some(vec![228.0; 3]));
    assert_eq!(
        four.column("compress.bytes_payload"),
        Some(vec![228.0 + 108.0; 3])
    );
    assert_eq!(four.column("compress.rel_error"), Some(vec![0.0; 3]));
    let sent = four.column("wire_bytes_sent").unwrap_or_default();
    assert!(sent.iter().all(|&bytes| bytes > 0.0), "{sent:?}");
    // Four shards of the data: worker 0's minibatch loss is not the single worker's.
    assert_ne!(one.column("loss"), four.column("loss"));
    // Deterministic, threads or not.
    let again = trace_problem_source(
        "plain.regimen",
        plain,
        &options,
        &ProblemOptions::new(ProblemKind::Logistic).with_workers(4),
    )?;
    assert_eq!(
        format!("{:?}", four.records),
        format!("{:?}", again.records)
    );
    Ok(())
}

#[test]
fn workers_are_checked_on_the_command_line() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = script(&dir, SCRIPT)?;
    let zero = regimen(&[
        "trace",
        path_str(&path)?,
        "--problem",
        "logistic",
        "--workers",
        "0",
    ])?;
    assert_eq!(zero.status.code(), Some(2));
    let without_problem = regimen(&["trace", path_str(&path)?, "--workers", "2"])?;
    assert_eq!(without_problem.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&without_problem.stderr);
    assert!(stderr.contains("--problem"), "{stderr}");
    Ok(())
}
