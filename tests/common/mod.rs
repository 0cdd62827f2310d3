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
