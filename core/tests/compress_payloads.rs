//! Snapshots of what each built-in method does to a deterministic fixture gradient:
//! payload size, ratio, relative error and rounded checksums of the decoded tensor
//! (see `regimen_core::compress::summary`). A change in any method's encoding or
//! arithmetic shows here; users can pin their own methods the same way.

use regimen_core::compress::summary::summarize;
use regimen_core::compress::{build, StepContext, TensorView};
use regimen_core::plugin::conformance::fixture_gradient;
use regimen_core::plugin::{ArgValue, Args};

/// A 64×48 weight matrix: big enough for every method to compress, small enough that
/// the snapshot is cheap.
const SHAPE: [usize; 2] = [64, 48];

fn summary(method: &str, args: &[(&str, ArgValue)]) -> String {
    let args = args.iter().fold(Args::new(), |args, (name, value)| {
        args.with(*name, value.clone())
    });
    let mut compressor = build(method, &args).unwrap_or_else(|e| panic!("{method}: {e}"));
    let numel = SHAPE.iter().product();
    let grad = fixture_gradient(numel, 0, 7);
    let ctx = StepContext {
        step: 7,
        rank: 0,
        world: 1,
        seed: 2024,
        tensor: 0,
        scheduled: &[],
    };
    let input = TensorView {
        name: "layers.0.weight",
        shape: &SHAPE,
        data: &grad,
    };
    summarize(compressor.as_mut(), input, &ctx)
        .unwrap_or_else(|e| panic!("{method}: {e}"))
        .to_string()
}

fn n(value: f64) -> ArgValue {
    ArgValue::Number(value)
}

fn t(value: &str) -> ArgValue {
    ArgValue::Text(value.to_owned())
}

#[test]
fn casts_and_int8() {
    insta::assert_snapshot!("none", summary("none", &[]));
    insta::assert_snapshot!("fp16", summary("fp16", &[]));
    insta::assert_snapshot!("bf16", summary("bf16", &[]));
    insta::assert_snapshot!("int8", summary("int8", &[]));
}

#[test]
fn sparsifiers() {
    insta::assert_snapshot!("topk", summary("topk", &[("ratio", n(0.01))]));
    insta::assert_snapshot!(
        "topk_sample",
        summary("topk", &[("ratio", n(0.01)), ("approx", t("sample"))])
    );
    insta::assert_snapshot!("randomk", summary("randomk", &[("ratio", n(0.01))]));
    insta::assert_snapshot!("threshold", summary("threshold", &[("value", n(3.0))]));
    insta::assert_snapshot!("dgc", summary("dgc", &[("ratio", n(0.01))]));
}

#[test]
fn quantizers() {
    insta::assert_snapshot!("qsgd", summary("qsgd", &[("levels", n(8.0))]));
    insta::assert_snapshot!("terngrad", summary("terngrad", &[]));
    insta::assert_snapshot!("sign", summary("sign", &[]));
    insta::assert_snapshot!("onebit", summary("onebit", &[]));
}

#[test]
fn powersgd() {
    insta::assert_snapshot!(
        "powersgd",
        summary("powersgd", &[("rank", n(4.0)), ("start", n(0.0))])
    );
}
