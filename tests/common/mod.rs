//! Helpers the test binaries share: run the built `regimen`, read its output; find an
//! example script and train it through the library on a small model.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// The repository root (the tests run the CLI from there, as the README does).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Run the built `regimen` with `args` from the repository root.
pub fn regimen(args: &[&str]) -> std::io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_regimen"))
        .args(args)
        .current_dir(root())
        .output()
}

/// Output bytes as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A path as `&str`, for command lines.
pub fn path_str(path: &Path) -> Result<&str, String> {
    path.to_str()
        .ok_or_else(|| format!("non-UTF-8 path {}", path.display()))
}

/// `examples/NAME`.
pub fn example(name: &str) -> std::path::PathBuf {
    root().join("examples").join(name)
}

/// Run options for a small MLP (`mlp:64,32,10`) trained for `epochs`.
pub fn small(epochs: u64) -> Result<regimen::train::RunOptions, Box<dyn std::error::Error>> {
    Ok(regimen::train::RunOptions {
        model: Some(regimen::core::nn::Mlp::parse("mlp:64,32,10")?),
        epochs: Some(epochs),
        ..regimen::train::RunOptions::default()
    })
}

/// Train `script` with `options`, never interrupted, observing nothing.
pub fn train(
    script: &Path,
    options: &regimen::train::RunOptions,
) -> Result<regimen::train::RunOutcome, regimen::Error> {
    regimen::train::run(
        script,
        options,
        &std::sync::atomic::AtomicBool::new(false),
        &mut |_| {},
    )
}

/// Train `script` with `base` straight through into `DIR/whole`, then stopped after
/// `stop_after` steps into `DIR/stopped` and resumed there: the resumed run must equal
/// the straight one bit for bit (trace, epochs, and the files). Returns the straight
/// run, the stopped one and the resumed one, for the caller's own checks.
pub fn assert_resume_is_bit_identical(
    script: &Path,
    base: &regimen::train::RunOptions,
    dir: &Path,
    stop_after: u64,
) -> Result<[regimen::train::RunOutcome; 3], Box<dyn std::error::Error>> {
    use regimen::train::RunOptions;
    let whole = dir.join("whole");
    let expected = train(
        script,
        &RunOptions {
            out: Some(whole.clone()),
            ..base.clone()
        },
    )?;
    let out = dir.join("stopped");
    let stopped = train(
        script,
        &RunOptions {
            out: Some(out.clone()),
            stop_after: Some(stop_after),
            ..base.clone()
        },
    )?;
    assert!(stopped.summary.interrupted);
    assert_eq!(stopped.summary.steps_done, stop_after);
    let resumed = train(
        script,
        &RunOptions {
            out: Some(out.clone()),
            resume: true,
            ..base.clone()
        },
    )?;
    assert!(!resumed.summary.interrupted);
    assert_eq!(resumed.trace.to_csv(), expected.trace.to_csv());
    assert_eq!(resumed.epochs, expected.epochs);
    for file in ["trace.csv", "epochs.csv"] {
        assert_eq!(
            std::fs::read(out.join(file))?,
            std::fs::read(whole.join(file))?,
            "{file}"
        );
    }
    Ok([expected, stopped, resumed])
}
