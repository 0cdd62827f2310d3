//! `mpirun -np N regimen run … --dist mpi` on the built binary (feature `mpi`): the run
//! completes, only rank 0 writes outputs, the ranks match the in-process workers, bytes
//! are counted by formula, resume continues, and a failing rank ends the job.
#![cfg(feature = "mpi")]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const BIN: &str = env!("CARGO_BIN_EXE_regimen");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/digits.regimen");
const MODEL: &str = "mlp:64,32,10";

/// Run a command, killing it after `limit` (a hang fails the test instead of the CI).
fn run_with_timeout(command: &mut Command, limit: Duration) -> Result<Output, String> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    let start = Instant::now();
    loop {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            return child.wait_with_output().map_err(|e| e.to_string());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            return Err(format!("still running after {limit:?}: a hang"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mpirun(ranks: usize, out: &Path, extra: &[&str]) -> Result<Output, String> {
    let mut command = Command::new("mpirun");
    command
        .args(["--allow-run-as-root", "--oversubscribe", "-np"])
        .arg(ranks.to_string())
        .arg(BIN)
        .args(["run", SCRIPT, "--dist", "mpi", "--quiet", "--model", MODEL])
        .args(["--epochs", "1", "--out"])
        .arg(out)
        .args(extra);
    run_with_timeout(&mut command, Duration::from_secs(120))
}

fn local(out: &Path, extra: &[&str]) -> Result<Output, String> {
    let mut command = Command::new(BIN);
    command
        .args([
            "run", SCRIPT, "--quiet", "--model", MODEL, "--epochs", "1", "--out",
        ])
        .arg(out)
        .args(extra);
    run_with_timeout(&mut command, Duration::from_secs(120))
}

fn column(csv: &str, name: &str) -> Vec<f64> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let Some(index) = header.iter().position(|h| *h == name) else {
        return Vec::new();
    };
    lines
        .filter_map(|l| l.split(',').nth(index).and_then(|v| v.parse().ok()))
        .collect()
}

fn summary_number(dir: &Path, key: &str) -> Result<f64, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(dir.join("summary.json"))?;
    let value: serde_json::Value = serde_json::from_str(&text)?;
    value[key]
        .as_f64()
        .ok_or_else(|| format!("no number `{key}` in summary.json").into())
}

/// The ring allreduce bytes rank `rank` sends for `n` f32 elements (the formula of the
/// communicators' module doc, written out independently).
fn ring_sent(n: u64, world: u64, rank: u64) -> u64 {
    let block = |c: u64| {
        let c = c % world;
        ((c + 1) * n / world - c * n / world) * 4
    };
    2 * 4 * n - block(rank + 1) - block(rank + 2)
}

fn check_ranks(ranks: usize) -> TestResult {
    let dir = tempfile::tempdir()?;
    let (mpi, threads) = (dir.path().join("mpi"), dir.path().join("threads"));
    let output = mpirun(ranks, &mpi, &[])?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Only rank 0 reports: one summary line, one epoch header.
    assert_eq!(stdout.matches("steps in").count(), 1, "{stdout}");
    assert_eq!(stdout.matches("epoch  train loss").count(), 1, "{stdout}");
    for rank in 0..ranks {
        assert!(mpi.join(format!("checkpoints/rank{rank}.ckpt")).is_file());
    }
    assert!(!mpi.join(format!("checkpoints/rank{ranks}.ckpt")).exists());
    let trace = std::fs::read_to_string(mpi.join("trace.csv"))?;
    assert_eq!(trace.lines().count(), 46, "45 steps of batch 32 + header");

    // Bytes: with `compress none` every parameter is allreduced dense, plus the
    // one-element non-finite flag; the dense column is the formula without the flag.
    let shapes = [64u64 * 32, 32, 32 * 10, 10];
    let dense: u64 = shapes.iter().map(|&n| ring_sent(n, ranks as u64, 0)).sum();
    let flag = ring_sent(1, ranks as u64, 0);
    for (sent, dense_col) in column(&trace, "wire_bytes_sent")
        .iter()
        .zip(column(&trace, "wire_bytes_dense"))
    {
        assert_eq!(dense_col as u64, dense);
        assert_eq!(*sent as u64, dense + flag);
    }
    assert_eq!(
        summary_number(&mpi, "wire_bytes_dense")? as u64,
        45 * dense,
        "summary"
    );

    // The same job as in-process workers: the same trajectory; with 2 ranks every sum
    // has two terms, so the bits are the same, with 4 MPI may add in another order.
    let output = local(&threads, &["--workers", &ranks.to_string()])?;
    assert!(output.status.success());
    let (a, b) = (
        summary_number(&mpi, "final_test_loss")?,
        summary_number(&threads, "final_test_loss")?,
    );
    if ranks == 2 {
        assert_eq!(
            std::fs::read(mpi.join("checkpoints/rank1.ckpt"))?,
            std::fs::read(threads.join("checkpoints/rank1.ckpt"))?
        );
        assert_eq!(a, b);
    } else {
        // f32 summation order: each gradient element differs by a few ulps (≈1e-7
        // relative); over 45 SGD steps that stays far below 1e-4 of the loss.
        assert!((a - b).abs() <= 1e-4 * b.abs(), "{a} vs {b}");
    }
    // And the single process with the same global batch.
    let single = dir.path().join("single");
    assert!(local(&single, &[])?.status.success());
    let c = summary_number(&single, "final_test_loss")?;
    assert!((a - c).abs() <= 1e-4 * c.abs(), "{a} vs single {c}");
    Ok(())
}

#[test]
fn two_ranks_train_like_two_workers() -> TestResult {
    check_ranks(2)
}

#[test]
fn four_ranks_train_like_four_workers() -> TestResult {
    check_ranks(4)
}

#[test]
fn a_stopped_distributed_run_resumes_to_the_same_weights() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (whole, parts) = (dir.path().join("whole"), dir.path().join("parts"));
    assert!(mpirun(2, &whole, &[])?.status.success());
    // Stop after 20 of the 45 steps (the checksum exchange agrees on it), then resume.
    let first = mpirun(2, &parts, &["--stop-after", "20"])?;
    let stopped = std::fs::read_to_string(parts.join("trace.csv"))?
        .lines()
        .count();
    assert!(
        first.status.code() == Some(130) && stopped == 21,
        "{:?}: {stopped} lines",
        first.status
    );
    assert!(mpirun(2, &parts, &["--resume"])?.status.success());
    for rank in 0..2 {
        let path = format!("checkpoints/rank{rank}.ckpt");
        assert_eq!(
            std::fs::read(whole.join(&path))?,
            std::fs::read(parts.join(&path))?
        );
    }
    assert_eq!(
        std::fs::read_to_string(whole.join("trace.csv"))?,
        std::fs::read_to_string(parts.join("trace.csv"))?
    );
    Ok(())
}

#[test]
fn a_failing_rank_ends_the_job_with_a_message_on_rank_0() -> TestResult {
    let dir = tempfile::tempdir()?;
    let output = mpirun(4, dir.path(), &["--fail-at-step", "3", "--fail-rank", "2"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("error: rank 2 failed: injected fault: rank 2 fails at step 3"),
        "{stderr}"
    );
    // Rank 0 says it aborts, then calls MPI_Abort. OpenMPI's own notice of the abort
    // ("MPI_ABORT was invoked on rank 0 …") is not asserted: its help-text system
    // sometimes loses it as the job is torn down ("Data unpack would read past end of
    // buffer" in show_help.c, seen in CI), while the abort itself happens.
    assert!(stderr.contains("regimen: aborting the MPI job"), "{stderr}");
    Ok(())
}

#[test]
fn a_dying_rank_ends_the_job() -> TestResult {
    let dir = tempfile::tempdir()?;
    let output = mpirun(
        2,
        dir.path(),
        &[
            "--fail-at-step",
            "2",
            "--fail-rank",
            "1",
            "--fail-mode",
            "die",
        ],
    )?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("rank 1: injected fault: dying at step 2"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn diverged_ranks_are_an_error() -> TestResult {
    let dir = tempfile::tempdir()?;
    let output = mpirun(
        2,
        dir.path(),
        &[
            "--fail-at-step",
            "4",
            "--fail-rank",
            "1",
            "--fail-mode",
            "diverge",
        ],
    )?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("the ranks diverged: after step 5 the parameters of rank(s) [1]"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn a_global_batch_that_the_ranks_cannot_share_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let output = mpirun(4, dir.path(), &["--batch-size", "30"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("the global batch of 30 is not a multiple of the 4 ranks"),
        "{stderr}"
    );
    Ok(())
}

/// Batch control across ranks: the gradient noise scale from each rank's gradient
/// and the allreduced one (pooled in the non-finite flag's allreduce), the same
/// batches, noise estimates and losses as the in-process workers.
#[test]
fn two_ranks_control_the_batch_like_two_workers() -> TestResult {
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("gns.regimen");
    std::fs::write(
        &script,
        "horizon 3 epochs\nbatch = 64\nlr = 1e-3\noptimizer adamw\n\
         batch gns(min: 32, max: 512, multiple_of: 16, every: 1 epoch) { lr scale sqrt }\n",
    )?;
    let script = script.to_string_lossy().into_owned();
    let (mpi, threads) = (dir.path().join("mpi"), dir.path().join("threads"));
    let mut command = Command::new("mpirun");
    command
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
        .arg(BIN)
        .args([
            "run", &script, "--dist", "mpi", "--quiet", "--model", MODEL, "--out",
        ])
        .arg(&mpi);
    let output = run_with_timeout(&mut command, Duration::from_secs(120))?;
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let mut command = Command::new(BIN);
    command
        .args([
            "run",
            &script,
            "--quiet",
            "--model",
            MODEL,
            "--workers",
            "2",
            "--out",
        ])
        .arg(&threads);
    assert!(run_with_timeout(&mut command, Duration::from_secs(120))?
        .status
        .success());
    let (a, b) = (
        std::fs::read_to_string(mpi.join("trace.csv"))?,
        std::fs::read_to_string(threads.join("trace.csv"))?,
    );
    for name in [
        "batch",
        "samples",
        "progress",
        "lr_factor",
        "noise_scale",
        "loss",
    ] {
        assert_eq!(column(&a, name), column(&b, name), "{name}");
    }
    let noise = column(&a, "noise_scale");
    assert!(noise.iter().all(|n| n.is_finite() && *n > 0.0), "{noise:?}");
    let batch = column(&a, "batch");
    assert!(
        batch.iter().any(|&b| b != 64.0),
        "the batch never moved: {batch:?}"
    );
    Ok(())
}
