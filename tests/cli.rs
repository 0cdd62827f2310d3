//! The `regimen` binary, run as a user runs it: exit codes, stdout, stderr, files.

mod common;

use std::path::PathBuf;
use std::process::Output;

use common::{path_str, regimen, root};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn stdout(output: &Output) -> String {
    common::text(&output.stdout)
}

fn stderr(output: &Output) -> String {
    common::text(&output.stderr)
}

fn example_paths() -> Result<Vec<String>, std::io::Error> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(root().join("examples"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "regimen") {
            if let Some(name) = path.file_name() {
                paths.push(format!("examples/{}", name.to_string_lossy()));
            }
        }
    }
    paths.sort();
    Ok(paths)
}

/// A script in a fresh temporary directory.
fn script(dir: &tempfile::TempDir, name: &str, text: &str) -> Result<PathBuf, std::io::Error> {
    let path = dir.path().join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

// ---------------------------------------------------------------- check

#[test]
fn check_accepts_every_example() -> TestResult {
    let examples = example_paths()?;
    assert!(examples.len() >= 12, "examples: {examples:?}");
    let mut args = vec!["check"];
    args.extend(examples.iter().map(String::as_str));
    let output = regimen(&args)?;
    assert!(output.status.success(), "stderr:\n{}", stderr(&output));
    let out = stdout(&output);
    for example in &examples {
        assert!(
            out.contains(&format!("{example}: ok")),
            "{example} missing from:\n{out}"
        );
    }
    Ok(())
}

#[test]
fn check_rejects_a_bad_script_with_a_located_diagnostic() -> TestResult {
    let dir = tempfile::tempdir()?;
    let bad = script(
        &dir,
        "bad.regimen",
        "horizon 10 steps\nlr = cosin(0.1 -> 0)\n",
    )?;
    let output = regimen(&["check", path_str(&bad)?])?;
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("bad.regimen:2:6"),
        "no file:line:col in:\n{err}"
    );
    assert!(err.contains("^^^^^"), "no caret in:\n{err}");
    assert!(err.contains("cosine"), "no suggestion in:\n{err}");
    assert!(!stdout(&output).contains(": ok"));
    Ok(())
}

#[test]
fn check_reports_every_file_and_fails_if_one_fails() -> TestResult {
    let output = regimen(&[
        "check",
        "examples/warmup_cosine.regimen",
        "examples/does_not_exist.regimen",
    ])?;
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("examples/warmup_cosine.regimen: ok"));
    let err = stderr(&output);
    assert!(
        err.contains("cannot read `examples/does_not_exist.regimen`"),
        "stderr:\n{err}"
    );
    assert!(err.contains("1 of 2 files have errors"), "stderr:\n{err}");
    Ok(())
}

#[test]
fn check_needs_a_file() -> TestResult {
    let output = regimen(&["check"])?;
    assert_eq!(output.status.code(), Some(2));
    Ok(())
}

// ---------------------------------------------------------------- trace

#[test]
fn trace_json_is_an_array_of_records_with_step_and_lr() -> TestResult {
    let output = regimen(&["trace", "examples/polynomial.regimen", "--format", "json"])?;
    assert!(output.status.success(), "stderr:\n{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let records = json.as_array().ok_or("not an array")?;
    // `horizon 50 epochs` with `epoch = 4 steps`.
    assert_eq!(records.len(), 200);
    for (t, record) in records.iter().enumerate() {
        assert_eq!(record["step"].as_u64(), Some(t as u64));
        assert!(record["lr"].is_f64() || record["lr"].is_u64(), "{record}");
        assert!(record["momentum"].is_f64(), "{record}");
        assert!(record["weight_decay"].is_f64(), "{record}");
    }
    // End of the linear warmup: the peak, 2^-4.
    assert_eq!(records[20]["lr"].as_f64(), Some(0.0625));
    Ok(())
}

#[test]
fn trace_csv_has_a_header_and_defaults_to_the_horizon() -> TestResult {
    let output = regimen(&["trace", "examples/warmup_cosine.regimen", "--format", "csv"])?;
    assert!(output.status.success(), "stderr:\n{}", stderr(&output));
    let out = stdout(&output);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"step,lr"));
    // `horizon 100 steps`: steps 0..=99.
    assert_eq!(lines.len(), 101);
    assert_eq!(lines[1], "0,0.001");
    assert_eq!(lines[11], "10,0.1");
    assert!(lines[100].starts_with("99,"));
    Ok(())
}

#[test]
fn trace_every_keeps_every_kth_step_and_the_last() -> TestResult {
    let output = regimen(&[
        "trace",
        "examples/warmup_cosine.regimen",
        "--every",
        "10",
        "--format",
        "csv",
    ])?;
    assert!(output.status.success(), "stderr:\n{}", stderr(&output));
    let steps: Vec<String> = stdout(&output)
        .lines()
        .skip(1)
        .filter_map(|line| line.split(',').next().map(str::to_string))
        .collect();
    assert_eq!(
        steps,
        ["0", "10", "20", "30", "40", "50", "60", "70", "80", "90", "99"]
    );
    Ok(())
}

#[test]
fn trace_table_is_aligned() -> TestResult {
    let output = regimen(&[
        "trace",
        "examples/step_decay.regimen",
        "--steps",
        "61",
        "--every",
        "30",
    ])?;
    assert!(output.status.success(), "stderr:\n{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "step     lr\n   0    0.1\n  30   0.01\n  60  0.001\n"
    );
    Ok(())
}

#[test]
fn trace_yaml_lists_records() -> TestResult {
    let output = regimen(&[
        "trace",
        "examples/transformer.regimen",
        "--steps",
        "2",
        "--format",
        "yaml",
    ])?;
    assert!(output.status.success(), "stderr:\n{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "- step: 0\n  lr: 0.0\n  beta1: 0.9\n  beta2: 0.98\n  eps: 1.0e-9\n\
         - step: 1\n  lr: 0.00005\n  beta1: 0.9\n  beta2: 0.98\n  eps: 1.0e-9\n"
    );
    Ok(())
}

#[test]
fn trace_without_horizon_needs_steps() -> TestResult {
    let output = regimen(&["trace", "examples/step_decay.regimen"])?;
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(err.starts_with("error: "), "stderr:\n{err}");
    assert!(err.contains("--steps"), "stderr:\n{err}");
    assert_eq!(err.lines().count(), 1, "stderr:\n{err}");

    let output = regimen(&[
        "trace",
        "examples/step_decay.regimen",
        "--steps",
        "31",
        "--format",
        "csv",
    ])?;
    assert!(output.status.success(), "stderr:\n{}", stderr(&output));
    let out = stdout(&output);
    assert_eq!(out.lines().count(), 32);
    // 0.1 * 0.1 in full precision (`0.010000000000000002`).
    assert!(out.contains("\n29,0.1\n30,0.01"), "stdout:\n{out}");
    Ok(())
}

#[test]
fn trace_of_a_bad_script_prints_one_line_then_the_diagnostics() -> TestResult {
    let dir = tempfile::tempdir()?;
    let bad = script(
        &dir,
        "bad.regimen",
        "horizon 10 steps\nlr = cosine(0.1 -> 0, ovr: 5 steps)\n",
    )?;
    let output = regimen(&["trace", path_str(&bad)?])?;
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let err = stderr(&output);
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("error: cannot trace") && first.contains("bad.regimen"),
        "stderr:\n{err}"
    );
    assert!(err.contains("bad.regimen:2:"), "stderr:\n{err}");
    Ok(())
}

#[test]
fn trace_steps_per_epoch_overrides_the_script() -> TestResult {
    let output = regimen(&[
        "trace",
        "examples/multistep.regimen",
        "--steps-per-epoch",
        "2",
        "--format",
        "csv",
    ])?;
    assert!(output.status.success(), "stderr:\n{}", stderr(&output));
    let out = stdout(&output);
    // 90 epochs of 2 steps; the first drop at epoch 30 = step 60.
    assert_eq!(out.lines().count(), 181);
    assert!(
        out.contains("\n59,0.1,0.9,0.0001\n60,0.01"),
        "stdout:\n{out}"
    );
    Ok(())
}

#[test]
fn trace_rejects_bad_flags() -> TestResult {
    for args in [
        &["trace", "examples/warmup_cosine.regimen", "--every", "0"][..],
        &["trace", "examples/warmup_cosine.regimen", "--steps", "-3"],
        &["trace", "examples/warmup_cosine.regimen", "--format", "xml"],
        &[
            "trace",
            "examples/warmup_cosine.regimen",
            "--steps-per-epoch",
            "0",
        ],
    ] {
        let output = regimen(args)?;
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
    Ok(())
}

// ---------------------------------------------------------------- trace --problem

/// The CSV of `regimen ARGS` split into a header and rows of cells.
fn csv_rows(output: &Output) -> (Vec<String>, Vec<Vec<String>>) {
    let text = stdout(output);
    let mut lines = text.lines();
    let header = lines
        .next()
        .unwrap_or_default()
        .split(',')
        .map(str::to_string)
        .collect();
    let rows = lines
        .map(|line| line.split(',').map(str::to_string).collect())
        .collect();
    (header, rows)
}

fn cell<'a>(header: &[String], row: &'a [String], name: &str) -> &'a str {
    let index = header
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no `{name}` in {header:?}"));
    &row[index]
}

#[test]
fn trace_problem_prints_what_the_runtime_did() -> TestResult {
    let output = regimen(&[
        "trace",
        "examples/mixed_precision_f16.regimen",
        "--problem",
        "quadratic",
        "--steps",
        "8",
        "--format",
        "csv",
    ])?;
    assert!(output.status.success(), "stderr:\n{}", stderr(&output));
    let (header, rows) = csv_rows(&output);
    for column in [
        "step",
        "lr",
        "loss_scale",
        "skipped",
        "grad_norm",
        "clipped_grad_norm",
        "update_norm",
        "loss",
    ] {
        assert!(
            header.iter().any(|h| h == column),
            "no {column} in {header:?}"
        );
    }
    assert_eq!(rows.len(), 8);
    // f16 with an initial scale of 2^16: the first step's gradients overflow.
    assert_eq!(cell(&header, &rows[0], "loss_scale"), "65536");
    assert_eq!(cell(&header, &rows[0], "skipped"), "1");
    assert_eq!(cell(&header, &rows[7], "skipped"), "0");
    Ok(())
}

#[test]
fn trace_problem_takes_a_seed_injected_overflows_and_every() -> TestResult {
    fn args(seed: &str) -> Vec<&str> {
        vec![
            "trace",
            "examples/mlp_adamw.regimen",
            "--problem",
            "logistic",
            "--seed",
            seed,
            "--overflow-at",
            "3,4",
            "--every",
            "2",
            "--steps",
            "9",
            "--format",
            "csv",
        ]
    }
    let first = regimen(&args("1"))?;
    assert!(first.status.success(), "stderr:\n{}", stderr(&first));
    let again = regimen(&args("1"))?;
    let other = regimen(&args("2"))?;
    assert_eq!(stdout(&first), stdout(&again), "not deterministic");
    assert_ne!(stdout(&first), stdout(&other), "the seed changed nothing");
    let (header, rows) = csv_rows(&first);
    let steps: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(steps, ["0", "2", "4", "6", "8"]);
    // Step 4 is an injected overflow: skipped, no update.
    assert_eq!(cell(&header, &rows[2], "skipped"), "1");
    assert_eq!(cell(&header, &rows[2], "update_norm"), "0");
    assert_eq!(cell(&header, &rows[3], "skipped"), "0");
    Ok(())
}

#[test]
fn trace_problem_json_and_table_work_too() -> TestResult {
    let output = regimen(&[
        "trace",
        "examples/lamb_bert.regimen",
        "--problem",
        "logistic",
        "--steps",
        "3",
        "--format",
        "json",
    ])?;
    assert!(output.status.success(), "stderr:\n{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let records = json.as_array().ok_or("not an array")?;
    assert_eq!(records.len(), 3);
    assert!(records[1]["trust_mean"].is_f64(), "{}", records[1]);
    assert!(records[1]["lr×0.8^1"].is_f64(), "{}", records[1]);

    let output = regimen(&[
        "trace",
        "examples/lamb_bert.regimen",
        "--problem",
        "logistic",
        "--steps",
        "3",
    ])?;
    assert!(output.status.success(), "stderr:\n{}", stderr(&output));
    let table = stdout(&output);
    assert!(table.starts_with("step "), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");
    Ok(())
}

#[test]
fn asking_for_arrayfire_without_it_is_a_clear_error() -> TestResult {
    let output = regimen(&[
        "trace",
        "examples/mlp_adamw.regimen",
        "--problem",
        "quadratic",
        "--backend",
        "arrayfire",
    ])?;
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let err = stderr(&output);
    assert!(
        err.starts_with("error: the arrayfire backend is unavailable"),
        "stderr:\n{err}"
    );
    assert!(err.contains("--features arrayfire"), "stderr:\n{err}");
    assert!(!err.contains("panicked"), "stderr:\n{err}");
    Ok(())
}

#[test]
fn unknown_problems_and_backends_are_usage_errors() -> TestResult {
    let output = regimen(&[
        "trace",
        "examples/mlp_adamw.regimen",
        "--problem",
        "rosenbrock",
    ])?;
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(
        err.contains("unknown problem `rosenbrock`"),
        "stderr:\n{err}"
    );
    assert!(
        err.contains("`quadratic`") && err.contains("`logistic`"),
        "stderr:\n{err}"
    );

    let output = regimen(&[
        "trace",
        "examples/mlp_adamw.regimen",
        "--problem",
        "quadratic",
        "--backend",
        "tpu",
    ])?;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("unknown backend `tpu`"),
        "{}",
        stderr(&output)
    );

    // The problem options mean nothing without a problem.
    for flag in [
        &["--seed", "3"][..],
        &["--backend", "ndarray"],
        &["--overflow-at", "1"],
    ] {
        let mut args = vec!["trace", "examples/mlp_adamw.regimen"];
        args.extend_from_slice(flag);
        let output = regimen(&args)?;
        assert_eq!(output.status.code(), Some(2), "{flag:?}");
        assert!(stderr(&output).contains("--problem"), "{}", stderr(&output));
    }
    Ok(())
}

#[test]
fn a_runtime_error_ends_the_trace_with_a_message() -> TestResult {
    let dir = tempfile::tempdir()?;
    // Overflows at steps 0 and 1: the scale halves from 2 to its minimum 1, then an
    // overflow at the minimum stops the run (`at_min: error` is the default).
    let path = script(
        &dir,
        "min.regimen",
        "horizon 10 steps\nlr = 0.01\noptimizer adam\nprecision f16 { loss_scale dynamic(init: 2, min_scale: 1) }\n",
    )?;
    let output = regimen(&[
        "trace",
        path_str(&path)?,
        "--problem",
        "quadratic",
        "--overflow-at",
        "0,1",
    ])?;
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.starts_with(
            "error: at step 1, gradients overflowed with the loss scale already at its minimum"
        ),
        "stderr:\n{err}"
    );
    assert!(!err.contains("panicked"), "stderr:\n{err}");
    Ok(())
}

// ---------------------------------------------------------------- bind

#[test]
fn bind_shows_the_rules_of_every_parameter() -> TestResult {
    let output = regimen(&[
        "bind",
        "examples/lars_large_batch.regimen",
        "--problem",
        "quadratic",
    ])?;
    assert!(output.status.success(), "stderr:\n{}", stderr(&output));
    let out = stdout(&output);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("param"), "{out}");
    for (name, trust) in [
        ("layers.0.weight", "on"),
        ("layers.0.bias", "off"),
        ("layers.1.weight", "on"),
        ("layers.1.bias", "off"),
        ("norm.weight", "off"),
    ] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| format!("no {name} in:\n{out}"))?;
        assert!(line.trim_end().ends_with(trust), "{line}");
    }

    let output = regimen(&["bind", "examples/lamb_bert.regimen"])?;
    assert_eq!(output.status.code(), Some(2), "bind needs --problem");
    Ok(())
}

#[test]
fn bind_warns_about_a_glob_that_matches_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = script(
        &dir,
        "embed.regimen",
        "lr = 0.1\ngroup \"embed.*\" { lr *= 0.1 }\n",
    )?;
    let output = regimen(&["bind", path_str(&path)?, "--problem", "logistic"])?;
    assert!(output.status.success(), "stderr:\n{}", stderr(&output));
    let out = stdout(&output);
    assert!(out.contains("embed.*"), "{out}");
    Ok(())
}

// ---------------------------------------------------------------- plot

/// The contents of every `<text>` element of an SVG document.
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|element| {
            let (_, rest) = element.split_once('>')?;
            let (content, _) = rest.split_once("</text>")?;
            Some(content.trim().to_string())
        })
        .collect()
}

#[test]
fn plot_writes_an_svg_with_labelled_axes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("poly.svg");
    let output = regimen(&["plot", "examples/polynomial.regimen", "-o", path_str(&out)?])?;
    assert!(output.status.success(), "stderr:\n{}", stderr(&output));
    let svg = std::fs::read_to_string(&out)?;
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.contains("polynomial.regimen"), "no title");
    let texts = svg_texts(&svg);
    for label in ["step", "lr", "momentum", "weight_decay"] {
        assert!(
            texts.iter().any(|t| t == label),
            "no `{label}` in {texts:?}"
        );
    }
    Ok(())
}

#[test]
fn plot_writes_a_png() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("onecycle.png");
    let output = regimen(&[
        "plot",
        "examples/onecycle.regimen",
        "--output",
        path_str(&out)?,
    ])?;
    assert!(output.status.success(), "stderr:\n{}", stderr(&output));
    let png = std::fs::read(&out)?;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        png.len() > 10_000,
        "suspiciously small PNG: {} bytes",
        png.len()
    );
    Ok(())
}

#[test]
fn plot_with_a_problem_draws_the_runtime_trace() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("f16.svg");
    let output = regimen(&[
        "plot",
        "examples/mixed_precision_f16.regimen",
        "--problem",
        "quadratic",
        "--steps",
        "100",
        "-o",
        path_str(&out)?,
    ])?;
    assert!(output.status.success(), "stderr:\n{}", stderr(&output));
    let texts = svg_texts(&std::fs::read_to_string(&out)?);
    for label in ["lr", "loss_scale", "skipped", "grad_norm", "loss"] {
        assert!(
            texts.iter().any(|t| t == label),
            "no `{label}` in {texts:?}"
        );
    }
    Ok(())
}

#[test]
fn plot_needs_steps_without_horizon_and_a_known_format() -> TestResult {
    let dir = tempfile::tempdir()?;
    let svg = dir.path().join("step.svg");
    let output = regimen(&["plot", "examples/step_decay.regimen", "-o", path_str(&svg)?])?;
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("--steps"));
    assert!(!svg.exists());

    let output = regimen(&[
        "plot",
        "examples/step_decay.regimen",
        "--steps",
        "100",
        "-o",
        path_str(&svg)?,
    ])?;
    assert!(output.status.success(), "stderr:\n{}", stderr(&output));
    assert!(std::fs::metadata(&svg)?.len() > 0);

    let pdf = dir.path().join("step.pdf");
    let output = regimen(&[
        "plot",
        "examples/warmup_cosine.regimen",
        "-o",
        path_str(&pdf)?,
    ])?;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("`.svg` or `.png`"),
        "{}",
        stderr(&output)
    );
    Ok(())
}

// ---------------------------------------------------------------- fmt

#[test]
fn fmt_check_accepts_every_example() -> TestResult {
    let examples = example_paths()?;
    let mut args = vec!["fmt", "--check"];
    args.extend(examples.iter().map(String::as_str));
    let output = regimen(&args)?;
    assert!(
        output.status.success(),
        "examples not in canonical form:\n{}{}",
        stdout(&output),
        stderr(&output)
    );
    Ok(())
}

#[test]
fn fmt_rewrites_a_file_into_a_fixed_point() -> TestResult {
    let dir = tempfile::tempdir()?;
    let messy =
        "horizon   100 steps\nlr=linear(0.001->0.1,over:10 steps)   then cosine( 0.1 -> 0 )\n";
    let path = script(&dir, "messy.regimen", messy)?;
    let path = path_str(&path)?;

    let output = regimen(&["fmt", "--check", path])?;
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("messy.regimen"));
    assert_eq!(
        std::fs::read_to_string(path)?,
        messy,
        "--check wrote the file"
    );

    let output = regimen(&["fmt", path])?;
    assert!(output.status.success(), "stderr:\n{}", stderr(&output));
    let formatted = std::fs::read_to_string(path)?;
    assert_ne!(formatted, messy);

    let output = regimen(&["fmt", "--check", path])?;
    assert!(output.status.success(), "not a fixed point:\n{formatted}");
    // Formatting does not change what the script means.
    let before = regimen(&["trace", "examples/warmup_cosine.regimen", "--format", "csv"])?;
    let after = regimen(&["trace", path, "--format", "csv"])?;
    assert_eq!(stdout(&before), stdout(&after));
    Ok(())
}

#[test]
fn fmt_refuses_a_script_that_does_not_parse() -> TestResult {
    let dir = tempfile::tempdir()?;
    let text = "lr = cosine(0.1 -> \n";
    let path = script(&dir, "broken.regimen", text)?;
    let output = regimen(&["fmt", path_str(&path)?])?;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("broken.regimen:"),
        "{}",
        stderr(&output)
    );
    assert_eq!(std::fs::read_to_string(&path)?, text);
    Ok(())
}

// ---------------------------------------------------------------- help

#[test]
fn help_documents_every_command_and_flag() -> TestResult {
    let output = regimen(&["--help"])?;
    assert!(output.status.success());
    let help = stdout(&output);
    for word in [
        "check",
        "trace",
        "plot",
        "bind",
        "fmt",
        "--problem",
        "Examples:",
    ] {
        assert!(help.contains(word), "`{word}` missing from --help:\n{help}");
    }
    for (command, flags) in [
        ("check", &["--steps-per-epoch", "--batch-size"][..]),
        (
            "trace",
            &[
                "--steps",
                "--every",
                "--format",
                "--steps-per-epoch",
                "--batch-size",
                "json",
                "yaml",
                "--problem",
                "quadratic",
                "logistic",
                "--seed",
                "--backend",
                "arrayfire",
                "--overflow-at",
            ],
        ),
        (
            "plot",
            &[
                "--output",
                "--steps",
                "--title",
                ".svg",
                ".png",
                "--problem",
            ],
        ),
        ("bind", &["--problem", "quadratic", "logistic"]),
        ("fmt", &["--check"]),
    ] {
        let output = regimen(&[command, "--help"])?;
        assert!(output.status.success());
        let help = stdout(&output);
        for flag in flags {
            assert!(
                help.contains(flag),
                "`{flag}` missing from `{command} --help`:\n{help}"
            );
        }
        assert!(
            help.contains("Examples:"),
            "no examples in `{command} --help`"
        );
    }
    Ok(())
}

#[test]
fn a_file_that_is_not_utf8_gets_a_located_diagnostic_and_is_not_rewritten() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("latin1.regimen");
    let bytes = b"lr = 0.1 # caf\xe9\n";
    std::fs::write(&path, bytes)?;
    for command in ["check", "trace", "fmt"] {
        let output = regimen(&[command, path_str(&path)?])?;
        assert_eq!(output.status.code(), Some(1), "{command}");
        let err = stderr(&output);
        assert!(
            err.contains("not UTF-8 text (byte 0xe9)"),
            "{command}: {err}"
        );
        assert!(err.contains("latin1.regimen:1:15"), "{command}: {err}");
        assert!(!err.contains("error: error:"), "{command}: {err}");
    }
    assert_eq!(std::fs::read(&path)?, bytes);
    Ok(())
}
