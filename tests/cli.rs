//! The `regimen` binary, run as a user runs it: exit codes, stdout, stderr, files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Run `regimen ARGS` from the workspace root.
fn regimen(args: &[&str]) -> std::io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_regimen"))
        .args(args)
        .current_dir(root())
        .output()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
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

fn path_str(path: &Path) -> Result<&str, String> {
    path.to_str()
        .ok_or_else(|| format!("non-UTF-8 path {}", path.display()))
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
    for word in ["check", "trace", "plot", "fmt", "Examples:"] {
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
            ],
        ),
        ("plot", &["--output", "--steps", "--title", ".svg", ".png"]),
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
