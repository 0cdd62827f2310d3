//! Helpers shared by the language's integration tests (each test file uses some).
#![allow(dead_code)]

use std::path::Path;

use regimen_dsl::{compile, CompileOptions, Compiled, SourceFile};

/// Every `*.regimen` file in `dir` (relative to this crate), as (file name, text),
/// sorted by name.
pub fn scripts_in(dir: &str) -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut scripts: Vec<(String, String)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "regimen"))
                .filter_map(|p| {
                    let name = p.file_name()?.to_str()?.to_string();
                    Some((name, std::fs::read_to_string(&p).ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    scripts.sort();
    scripts
}

/// Compile `text` with default options; panic with the rendered report if rejected.
pub fn compiled(text: &str) -> Compiled {
    compiled_with(text, &CompileOptions::default())
}

/// Compile `text` with `options`; panic with the rendered report if rejected.
pub fn compiled_with(text: &str, options: &CompileOptions) -> Compiled {
    match compile(&SourceFile::new("test.regimen", text), options) {
        Ok(c) => c,
        Err(report) => panic!("rejected:\n{report}"),
    }
}

/// The rendered errors of a script that must be rejected.
pub fn rejected(text: &str) -> String {
    match compile(
        &SourceFile::new("test.regimen", text),
        &CompileOptions::default(),
    ) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(report) => report.to_string(),
    }
}

/// The value of graph output `name` at `step`.
pub fn value(c: &Compiled, name: &str, step: u64) -> f64 {
    let index = c
        .graph
        .outputs
        .iter()
        .position(|o| o.name == name)
        .unwrap_or_else(|| panic!("no output {name}"));
    c.graph.eval_output(index, step as f64)
}

/// The graph's output names, in order.
pub fn output_names(c: &Compiled) -> Vec<&str> {
    c.graph.outputs.iter().map(|o| o.name.as_str()).collect()
}

/// `actual` equals `expected` to a relative 1e-12.
pub fn close(actual: f64, expected: f64) {
    let tolerance = 1e-12 * expected.abs().max(1e-300);
    assert!(
        (actual - expected).abs() <= tolerance,
        "actual {actual} expected {expected}"
    );
}
