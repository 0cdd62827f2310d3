//! Plugins as users meet them: a script's `plugin "…"` statement loads a shared
//! library built from the workspace's plugin crates, its compressor trains the
//! synthetic problem exactly as the same code compiled in does, and every bad plugin
//! is a diagnostic at the statement (file:line:col, caret) or a clear CLI error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../core/tests/plugin_support/mod.rs"]
mod plugin_support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{path_str, regimen, text};
use regimen::{
    trace_problem_source, CompressorRegistry, ProblemKind, ProblemOptions, TraceOptions,
};

/// A fresh folder holding a copy of the plugin crate `name`'s library as `file`.
fn folder_with(name: &str, file: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file);
    std::fs::copy(plugin_support::library(name), &path).unwrap();
    (dir, path)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const NATURAL_SCRIPT: &str = "\
plugin \"libnatural.so\"
lr = 0.5
horizon 40 steps
compress natural with error_feedback
";

#[test]
fn a_plugin_compressor_trains_exactly_like_the_same_code_in_process() {
    let (dir, _) = folder_with("regimen-natural", "libnatural.so");
    let script = write(dir.path(), "natural.regimen", NATURAL_SCRIPT);
    let text = std::fs::read_to_string(&script).unwrap();
    let name = path_str(&script).unwrap();
    let options = TraceOptions::default();
    let problem = ProblemOptions::new(ProblemKind::Logistic)
        .with_workers(2)
        .with_seed(7);

    let through_abi = trace_problem_source(name, &text, &options, &problem).unwrap();

    // The same algorithm compiled in, registered by the host: it takes precedence
    // over the plugin's export of the same name. The counter proves it ran.
    let built = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&built);
    let registry = CompressorRegistry::new().with_method("natural", move |args| {
        counter.fetch_add(1, Ordering::SeqCst);
        regimen_natural::build(args)
    });
    let in_process = trace_problem_source(
        name,
        &text,
        &options,
        &problem.clone().with_compressors(registry),
    )
    .unwrap();
    assert!(built.load(Ordering::SeqCst) >= 2, "one instance per worker");

    assert_eq!(through_abi.records.len(), 40);
    assert_eq!(through_abi.to_csv(), in_process.to_csv());
    // Natural compression sends 9 bits per f32, so the ratio stays under 32/9; the
    // problem's tensors are small, so each payload's header weighs and it is lower.
    let ratio = through_abi.column("compress.bytes_ratio").unwrap();
    assert!(
        ratio.iter().all(|&r| r > 1.2 && r < 32.0 / 9.0),
        "{ratio:?}"
    );
    let loss = through_abi.column("loss").unwrap();
    assert!(loss[39] < 0.8 * loss[0], "the problem is learned: {loss:?}");
}

#[test]
fn a_relative_path_is_found_in_the_script_folder_then_in_plugin_path() {
    let (libs, _) = folder_with("regimen-natural", "libnatural.so");
    let scripts = tempfile::tempdir().unwrap();
    let script = write(scripts.path(), "natural.regimen", NATURAL_SCRIPT);

    let output = regimen(&["check", path_str(&script).unwrap()]).unwrap();
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("file not found"), "{stderr}");
    assert!(stderr.contains("natural.regimen:1:8"), "{stderr}");
    assert!(
        stderr.contains("^^^^^^^^^^^^^^^"),
        "a caret under the path: {stderr}"
    );
    assert!(stderr.contains("--plugin-path"), "{stderr}");

    let output = regimen(&[
        "check",
        path_str(&script).unwrap(),
        "--plugin-path",
        path_str(libs.path()).unwrap(),
    ])
    .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("ok"));
}

#[test]
fn a_wrong_pin_is_refused_on_the_pin_and_the_help_gives_the_right_one() {
    let (dir, path) = folder_with("regimen-natural", "libnatural.so");
    let digest = regimen::core::loader::file_sha256(&path).unwrap();
    let wrong = "ab".repeat(32);
    let script = write(
        dir.path(),
        "pinned.regimen",
        &NATURAL_SCRIPT.replace(
            "\"libnatural.so\"",
            &format!("\"libnatural.so\" sha256 \"{wrong}\""),
        ),
    );
    let output = regimen(&["check", path_str(&script).unwrap()]).unwrap();
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("pinned.regimen:1:31"),
        "on the pin: {stderr}"
    );
    assert!(stderr.contains("the library was not loaded"), "{stderr}");
    assert!(stderr.contains(&format!("sha256 \"{digest}\"")), "{stderr}");

    let good = write(
        dir.path(),
        "good.regimen",
        &NATURAL_SCRIPT.replace(
            "\"libnatural.so\"",
            &format!("\"libnatural.so\" sha256 \"{digest}\""),
        ),
    );
    let output = regimen(&["check", path_str(&good).unwrap()]).unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
}

/// `regimen check` on a script that loads `library` and uses `compress`, with the bad
/// plugin's load-time mode `mode`; its stderr.
fn check_bad(library: &Path, compress: &str, mode: &str) -> String {
    let dir = library.parent().unwrap();
    let script = write(
        dir,
        "bad.regimen",
        &format!(
            "plugin \"{}\"\nlr = 0.1\n{compress}\n",
            library.file_name().unwrap().to_string_lossy()
        ),
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_regimen"))
        .args(["check", path_str(&script).unwrap()])
        .env("REGIMEN_BAD_PLUGIN", mode)
        .output()
        .unwrap();
    assert!(!output.status.success(), "refused");
    text(&output.stderr)
}

#[test]
fn every_bad_plugin_is_a_diagnostic_naming_the_file() {
    let (_dir, bad) = folder_with("regimen-bad-plugin", "libbad.so");
    let stderr = check_bad(&bad, "compress bad(mode: \"reject\")", "");
    assert!(
        stderr.contains("bad.regimen:3:14"),
        "on the argument: {stderr}"
    );
    assert!(stderr.contains("`reject` is refused, as asked"), "{stderr}");

    let stderr = check_bad(&bad, "compress topk(ratio: 0.1)", "clash");
    assert!(stderr.contains("bad.regimen:1:8"), "{stderr}");
    assert!(
        stderr.contains("clashes with the built-in compressor `topk`"),
        "{stderr}"
    );
    assert!(stderr.contains("libbad.so"), "{stderr}");

    let stderr = check_bad(&bad, "compress topk(ratio: 0.1)", "abi");
    assert!(stderr.contains("built for plugin ABI"), "{stderr}");

    let stderr = check_bad(&bad, "compress bad(mode: \"panic_create\")", "");
    assert!(
        stderr.contains("deliberate panic while building"),
        "{stderr}"
    );

    let (_dir, none) = folder_with("regimen-no-entry", "libnone.so");
    let stderr = check_bad(&none, "compress topk(ratio: 0.1)", "");
    assert!(stderr.contains("not a Regimen plugin"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let not_a_library = write(dir.path(), "libtext.so", "just text\n");
    let stderr = check_bad(&not_a_library, "compress topk(ratio: 0.1)", "");
    assert!(stderr.contains("not a loadable shared library"), "{stderr}");
}

#[test]
fn plugin_inspect_prints_exports_or_why_not() {
    let natural = plugin_support::library("regimen-natural");
    let output = regimen(&["plugin", "inspect", path_str(&natural).unwrap()]).unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("name     regimen-natural"), "{stdout}");
    assert!(stdout.contains("abi      1.0"), "{stdout}");
    assert!(stdout.contains("compressor `natural`"), "{stdout}");
    assert!(
        stdout.contains("error_feedback: bool (default false)"),
        "{stdout}"
    );

    let ada = plugin_support::library("regimen-adabatch");
    let output = regimen(&["plugin", "inspect", path_str(&ada).unwrap()]).unwrap();
    assert!(text(&output.stdout).contains("batch controller `adabatch`"));

    let output = regimen(&["plugin", "inspect", "Cargo.toml"]).unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("Cargo.toml: not a loadable shared library"),
        "{stderr}"
    );
}

#[test]
fn regimen_run_trains_the_digits_with_a_plugin_compressor() {
    let (dir, _) = folder_with("regimen-natural", "libnatural.so");
    let script = write(
        dir.path(),
        "digits_natural.regimen",
        "plugin \"libnatural.so\"\noptimizer sgd(momentum: 0.9)\nlr = 0.05\nbatch = 64\n\
         horizon 2 epochs\ncompress natural with error_feedback\n",
    );
    let out = dir.path().join("run");
    let output = regimen(&[
        "run",
        path_str(&script).unwrap(),
        "--model",
        "mlp:64,32,10",
        "--workers",
        "2",
        "--quiet",
        "--out",
        path_str(&out).unwrap(),
    ])
    .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let accuracy = summary["final_test_accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.7, "far above the 10% of chance: {accuracy}");
}

#[test]
fn the_readme_plugin_is_the_tested_crate_and_works_from_a_script() {
    let source =
        std::fs::read_to_string(common::root().join("plugins/tests/readme-plugin/src/lib.rs"))
            .unwrap();
    let readme = std::fs::read_to_string(common::root().join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("```rust\n{source}```")),
        "README shows the crate verbatim"
    );
    assert!(source.lines().count() <= 40);

    let library = plugin_support::library("regimen-readme-plugin");
    let plugin = regimen::core::loader::Plugin::load(&library, None).unwrap();
    regimen::core::plugin::conformance::check_compressor(|| {
        Box::new(
            plugin
                .compressor("clipped", &regimen::core::plugin::Args::new())
                .unwrap(),
        )
    })
    .unwrap();

    let (dir, _) = folder_with("regimen-readme-plugin", "libclipped.so");
    let script = write(
        dir.path(),
        "clipped.regimen",
        "plugin \"libclipped.so\"\nlr = 0.5\nhorizon 30 steps\ncompress clipped(max: 0.05)\n",
    );
    let text_of = std::fs::read_to_string(&script).unwrap();
    let problem = ProblemOptions::new(ProblemKind::Logistic).with_workers(2);
    let trace = trace_problem_source(
        path_str(&script).unwrap(),
        &text_of,
        &TraceOptions::default(),
        &problem,
    )
    .unwrap();
    let loss = trace.column("loss").unwrap();
    assert!(loss[29] < loss[0], "{loss:?}");
    // Dense f32 plus the header: a little more than the dense bytes.
    let ratio = trace.column("compress.bytes_ratio").unwrap();
    assert!(ratio.iter().all(|&r| r < 1.0 && r > 0.5), "{ratio:?}");

    let stderr = check_bad(
        &dir.path().join("libclipped.so"),
        "compress clipped(max: -1)",
        "",
    );
    assert!(
        stderr.contains("bad.regimen:3:18"),
        "on the argument: {stderr}"
    );
    assert!(stderr.contains("must be above 0"), "{stderr}");
    // Names and kinds are checked by the host against the declared schema.
    let stderr = check_bad(
        &dir.path().join("libclipped.so"),
        "compress clipped(maxx: 1)",
        "",
    );
    assert!(
        stderr.contains("`clipped` has no argument `maxx`; it takes `max`"),
        "{stderr}"
    );
    assert!(stderr.contains("bad.regimen:3:18"), "{stderr}");
    let stderr = check_bad(
        &dir.path().join("libclipped.so"),
        "compress clipped(max: \"big\")",
        "",
    );
    assert!(
        stderr.contains("`clipped` expects a number for `max`, not a string"),
        "{stderr}"
    );
}
