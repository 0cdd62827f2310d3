//! Every built-in compressor, under several argument sets, passes the SDK's
//! conformance suite — the same checks a plugin's author runs.

use regimen_core::compress::{build, BUILTIN_METHODS};
use regimen_core::plugin::conformance::check_compressor;
use regimen_core::plugin::{ArgValue, Args};

fn number(name: &str, value: f64) -> (String, ArgValue) {
    (name.to_owned(), ArgValue::Number(value))
}

fn text(name: &str, value: &str) -> (String, ArgValue) {
    (name.to_owned(), ArgValue::Text(value.to_owned()))
}

fn flag(name: &str, value: bool) -> (String, ArgValue) {
    (name.to_owned(), ArgValue::Bool(value))
}

/// The argument sets each method is checked with.
fn configurations() -> Vec<(&'static str, Vec<(String, ArgValue)>)> {
    vec![
        ("none", vec![]),
        ("fp16", vec![]),
        ("bf16", vec![]),
        ("int8", vec![]),
        ("topk", vec![number("ratio", 0.1)]),
        ("topk", vec![number("ratio", 1.0)]),
        (
            "topk",
            vec![number("ratio", 0.05), text("approx", "sample")],
        ),
        ("randomk", vec![number("ratio", 0.1)]),
        (
            "randomk",
            vec![number("ratio", 0.5), flag("unbiased", false)],
        ),
        ("threshold", vec![number("value", 0.5)]),
        ("threshold", vec![number("value", 100.0)]),
        ("dgc", vec![number("ratio", 0.01)]),
        (
            "dgc",
            vec![
                number("ratio", 0.1),
                number("momentum", 0.5),
                number("clip", 1.0),
                number("warmup", 2.0),
                text("approx", "exact"),
            ],
        ),
        ("qsgd", vec![]),
        (
            "qsgd",
            vec![
                number("levels", 1.0),
                text("norm", "max"),
                number("bucket", 0.0),
            ],
        ),
        (
            "qsgd",
            vec![number("levels", 255.0), number("bucket", 16.0)],
        ),
        ("terngrad", vec![]),
        ("terngrad", vec![number("clip", 0.0)]),
        ("sign", vec![]),
        ("onebit", vec![]),
        ("powersgd", vec![number("start", 0.0)]),
        (
            "powersgd",
            vec![
                number("rank", 2.0),
                number("start", 1.0),
                number("min_rate", 1.0),
                flag("warm_start", false),
            ],
        ),
    ]
}

#[test]
fn every_builtin_method_is_checked() {
    let configured = configurations();
    for method in BUILTIN_METHODS {
        assert!(
            configured.iter().any(|(m, _)| m == method),
            "`{method}` has no conformance configuration"
        );
    }
}

#[test]
fn every_builtin_passes_the_conformance_suite() {
    let mut failures = Vec::new();
    for (method, pairs) in configurations() {
        let args = pairs.iter().fold(Args::new(), |args, (name, value)| {
            args.with(name.clone(), value.clone())
        });
        if let Err(error) = build(method, &args) {
            failures.push(format!("{method} {args:?}: cannot build: {error}"));
            continue;
        }
        let result = check_compressor(|| match build(method, &args) {
            Ok(compressor) => compressor,
            Err(error) => panic!("{method}: {error}"),
        });
        if let Err(failure) = result {
            failures.push(format!("{method} {args:?}: {failure}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
