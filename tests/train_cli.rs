//! `regimen run` and `regimen compare` as a user runs them: the table, the output
//! files, Ctrl-C and `--resume`, usage errors.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{path_str, regimen, root, text};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
fn run_prints_epochs_and_writes_its_outputs() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("digits");
    let output = regimen(&[
        "run",
        "examples/digits.regimen",
        "--model",
        "mlp:64,32,10",
        "--epochs",
        "2",
        "--out",
        path_str(&out)?,
    ])?;
    assert!(output.status.success(), "stderr:\n{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("epoch  train loss  test loss  test acc"),
        "{stdout}"
    );
    assert!(stdout.contains("1438 train / 359 test rows"), "{stdout}");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.trim_start().starts_with("2 "))
            .count(),
        1
    );
    for file in [
        "trace.csv",
        "epochs.csv",
        "summary.json",
        "report.svg",
        "run.json",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json"))?)?;
    assert_eq!(summary["steps_done"], 90);
    assert!(
        summary["final_test_accuracy"].as_f64().unwrap_or(0.0) > 0.7,
        "{summary}"
    );
    let trace = std::fs::read_to_string(out.join("trace.csv"))?;
    assert_eq!(trace.lines().count(), 91);
    assert!(std::fs::read_to_string(out.join("report.svg"))?.contains("test accuracy"));
    Ok(())
}

#[test]
fn ctrl_c_stops_with_a_checkpoint_and_resume_finishes_the_run() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("run");
    let out_str = path_str(&out)?;
    let args = [
        "run",
        "examples/digits.regimen",
        "--epochs",
        "40",
        "--quiet",
        "--out",
        out_str,
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_regimen"))
        .args(args)
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    // Wait for the first epoch's row, then press Ctrl-C.
    for line in lines.by_ref() {
        if line?.trim_start().starts_with("1 ") {
            break;
        }
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    assert!(status.success());
    let rest: Vec<String> = lines.collect::<Result<_, _>>()?;
    let code = child.wait()?.code();
    assert_eq!(code, Some(130), "stdout after Ctrl-C:\n{}", rest.join("\n"));
    assert!(rest.iter().any(|l| l.contains("--resume")), "{rest:?}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json"))?)?;
    assert_eq!(summary["interrupted"], true);
    let stopped_at = summary["steps_done"].as_u64().ok_or("steps_done")?;
    assert!(stopped_at < 1800, "{summary}");
    assert!(out.join("checkpoints/rank0.ckpt").is_file());

    let mut resume_args = args.to_vec();
    resume_args.push("--resume");
    let resumed = regimen(&resume_args)?;
    assert!(
        resumed.status.success(),
        "stderr:\n{}",
        text(&resumed.stderr)
    );
    assert!(text(&resumed.stdout).contains(&format!("resuming at step {stopped_at}")));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json"))?)?;
    assert_eq!(summary["steps_done"], 1800);
    assert_eq!(summary["interrupted"], false);
    Ok(())
}

#[test]
fn compare_prints_a_side_by_side_table_and_an_overlay() -> TestResult {
    let dir = tempfile::tempdir()?;
    let plot = dir.path().join("overlay.svg");
    let output = regimen(&[
        "compare",
        "examples/digits.regimen",
        "examples/digits_topk_ef.regimen",
        "--model",
        "mlp:64,32,10",
        "--epochs",
        "2",
        "--seeds",
        "2",
        "--plot",
        path_str(&plot)?,
    ])?;
    assert!(output.status.success(), "stderr:\n{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("examples/"))
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(
        rows.iter().all(|r| r.contains('±') && r.contains("  2  ")),
        "{stdout}"
    );
    // Dense is 1.0× itself; top-k 5% with dense biases sends far less.
    assert!(rows[0].contains(" 1.0×"), "{stdout}");
    assert!(!rows[1].contains(" 1.0×"), "{stdout}");
    let svg = std::fs::read_to_string(&plot)?;
    assert!(svg.contains("digits_topk_ef") && svg.contains("test accuracy"));
    Ok(())
}

#[test]
fn bad_run_arguments_are_clear_errors() -> TestResult {
    let output = regimen(&["run", "examples/digits.regimen", "--model", "mlp:64,x"])?;
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("the widths must be positive integers"));
    let output = regimen(&["run", "examples/digits.regimen", "--data", "mnist"])?;
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("unknown data set `mnist`"));
    let dir = tempfile::tempdir()?;
    let output = regimen(&[
        "run",
        "examples/digits.regimen",
        "--model",
        "mlp:10,10",
        "--out",
        path_str(dir.path())?,
    ])?;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("64 features"),
        "{}",
        text(&output.stderr)
    );
    let output = regimen(&["run", "missing.regimen"])?;
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("cannot read `missing.regimen`"));
    let output = regimen(&["compare", "examples/digits.regimen", "--plot", "x.pdf"])?;
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("`.svg` or `.png`"));
    Ok(())
}

/// Without the `mpi` feature, `--dist mpi` says how to get it.
#[cfg(not(feature = "mpi"))]
#[test]
fn dist_mpi_without_the_feature_says_how_to_rebuild() -> Result<(), Box<dyn std::error::Error>> {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_regimen"))
        .args([
            "run",
            "examples/digits.regimen",
            "--dist",
            "mpi",
            "--epochs",
            "1",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("--features mpi"), "{stderr}");
    Ok(())
}
