//! `compress METHOD(args) [with error_feedback]` at the top level and in groups: the
//! `CompressSpec` it compiles to, scheduled arguments as graph outputs with the
//! schedule's values, error feedback, and the diagnostics of argument refusals.

use regimen_core::compress::ERROR_FEEDBACK_ARG;
use regimen_core::plugin::{ArgValue, Args};
use regimen_core::strategy::{CompressSpec, ScheduledArg};
use regimen_dsl::{CompileOptions, Compiled, Severity, SourceFile};

mod common;

use common::{close, compiled, output_names, rejected, value};

fn number(n: f64) -> ArgValue {
    ArgValue::Number(n)
}

fn text(s: &str) -> ArgValue {
    ArgValue::Text(s.to_string())
}

fn top_level(c: &Compiled) -> &CompressSpec {
    c.strategy
        .compress
        .as_ref()
        .unwrap_or_else(|| panic!("no top-level compress"))
}

fn in_group(c: &Compiled, index: usize) -> &CompressSpec {
    c.strategy.groups[index]
        .compress
        .as_ref()
        .unwrap_or_else(|| panic!("group {index} has no compress"))
}

#[test]
fn a_script_without_compress_has_no_compression() {
    let c = compiled("lr = 0.1\ngroup \"*.bias\" { weight_decay = 0 }");
    assert_eq!(c.strategy.compress, None);
    assert_eq!(c.strategy.groups[0].compress, None);
}

#[test]
fn top_level_compress_keeps_the_method_and_its_arguments() {
    let c = compiled("lr = 0.1\ncompress qsgd(levels: 4, norm: max, bucket: 0)");
    assert_eq!(
        top_level(&c),
        &CompressSpec {
            method: "qsgd".into(),
            args: Args::new()
                .with("levels", number(4.0))
                .with("norm", text("max"))
                .with("bucket", number(0.0)),
            scheduled: vec![],
            error_feedback: None,
        }
    );
    // Constant arguments stay in the arguments: no graph output.
    assert_eq!(output_names(&c), ["lr"]);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn a_method_without_arguments_may_be_written_bare_or_with_parentheses() {
    for script in ["compress sign", "compress sign()"] {
        let c = compiled(script);
        assert_eq!(top_level(&c).method, "sign");
        assert_eq!(top_level(&c).args, Args::new());
    }
}

#[test]
fn a_quoted_string_and_a_bare_word_are_the_same_text_argument() {
    let bare = compiled("compress qsgd(norm: max)");
    let quoted = compiled("compress qsgd(norm: \"max\")");
    assert_eq!(top_level(&bare), top_level(&quoted));
    assert_eq!(top_level(&bare).args.get("norm"), Some(&text("max")));
}

#[test]
fn a_let_binding_may_hold_an_argument() {
    let c = compiled("let levels = 16\nlet norm = max\ncompress qsgd(levels: levels, norm: norm)");
    let args = &top_level(&c).args;
    assert_eq!(args.get("levels"), Some(&number(16.0)));
    assert_eq!(args.get("norm"), Some(&text("max")));
}

#[test]
fn with_error_feedback_turns_the_residual_on() {
    let c = compiled("compress int8 with error_feedback");
    let spec = top_level(&c);
    assert_eq!(spec.error_feedback, Some(true));
    // `with` is the host's flag, not an argument of the method.
    assert_eq!(spec.args.get(ERROR_FEEDBACK_ARG), None);
}

#[test]
fn the_error_feedback_argument_sets_the_flag_and_stays_an_argument() {
    let off = compiled("compress sign(error_feedback: false)");
    assert_eq!(top_level(&off).error_feedback, Some(false));
    assert_eq!(
        top_level(&off).args.get(ERROR_FEEDBACK_ARG),
        Some(&ArgValue::Bool(false))
    );
    let on = compiled("compress int8(error_feedback: true)");
    assert_eq!(top_level(&on).error_feedback, Some(true));
    assert_eq!(
        top_level(&on).args.get(ERROR_FEEDBACK_ARG),
        Some(&ArgValue::Bool(true))
    );
    // Neither: the method's default.
    assert_eq!(top_level(&compiled("compress sign")).error_feedback, None);
}

#[test]
fn a_scheduled_argument_becomes_a_graph_output_with_its_step_0_value() {
    // ExponentialLR: 4 · 0.5^(t / 10)
    let c =
        compiled("lr = 0.1\ncompress terngrad(clip: exponential(4, factor: 0.5, every: 10 steps))");
    let spec = top_level(&c);
    assert_eq!(
        spec.scheduled,
        [ScheduledArg {
            arg: "clip".into(),
            output: "compress.clip".into(),
        }]
    );
    assert_eq!(CompressSpec::output_name(None, "clip"), "compress.clip");
    // The method validates the value at step 0: 4 · 0.5^0 = 4.
    assert_eq!(spec.args.get("clip"), Some(&number(4.0)));
    assert_eq!(output_names(&c), ["lr", "compress.clip"]);
    close(value(&c, "compress.clip", 0), 4.0);
    // 4 · 0.5^(10/10) = 2
    close(value(&c, "compress.clip", 10), 2.0);
    // 4 · 0.5^(30/10) = 0.5
    close(value(&c, "compress.clip", 30), 0.5);
    // 4 · 0.5^(5/10) = 4 / √2 = 2.8284271247461903
    close(value(&c, "compress.clip", 5), 2.828_427_124_746_190_3);
}

#[test]
fn a_scheduled_ratio_is_the_output_compress_ratio() {
    // DGC's sparsity warm-up: the kept fraction divides by 4 each epoch
    // (75%, 93.75%, 98.4375%, 99.6%, 99.9% sparsity), never below 0.1%.
    let c = compiled(
        "epoch = 10 steps\ncompress topk(ratio: max(exponential(0.25, factor: 0.25, every: 1 epoch, staircase: true), 0.001)) with error_feedback",
    );
    let spec = top_level(&c);
    assert_eq!(spec.method, "topk");
    assert_eq!(spec.error_feedback, Some(true));
    assert_eq!(
        spec.scheduled,
        [ScheduledArg {
            arg: "ratio".into(),
            output: "compress.ratio".into(),
        }]
    );
    assert_eq!(spec.args.get("ratio"), Some(&number(0.25)));
    // 0.25 · 0.25^floor(t / 10), floored at 0.001:
    close(value(&c, "compress.ratio", 0), 0.25);
    close(value(&c, "compress.ratio", 9), 0.25);
    close(value(&c, "compress.ratio", 10), 0.0625); // 0.25²
    close(value(&c, "compress.ratio", 25), 0.015625); // 0.25³
    close(value(&c, "compress.ratio", 30), 0.00390625); // 0.25⁴
    close(value(&c, "compress.ratio", 40), 0.001); // 0.25⁵ = 0.0009765625 < 0.001
}

#[test]
fn a_group_compresses_its_parameters_with_its_own_method() {
    let c = compiled(
        "horizon 100 steps\nlr = 0.1\ncompress qsgd(levels: 8)\ngroup \"*.bias\" { weight_decay = 0; compress none }\ngroup \"embed.*\" { compress topk(ratio: linear(0.1 -> 0.01), approx: sample) }",
    );
    assert_eq!(top_level(&c).method, "qsgd");
    assert_eq!(
        in_group(&c, 0),
        &CompressSpec {
            method: "none".into(),
            ..CompressSpec::default()
        }
    );
    let embed = in_group(&c, 1);
    assert_eq!(embed.method, "topk");
    assert_eq!(
        embed.args,
        Args::new()
            .with("ratio", number(0.1))
            .with("approx", text("sample"))
    );
    assert_eq!(
        embed.scheduled,
        [ScheduledArg {
            arg: "ratio".into(),
            output: "group2.compress.ratio".into(),
        }]
    );
    assert_eq!(
        CompressSpec::output_name(Some(1), "ratio"),
        "group2.compress.ratio"
    );
    // linear over the 100-step horizon: 0.1 + (0.01 − 0.1) · t / 100
    close(value(&c, "group2.compress.ratio", 0), 0.1);
    close(value(&c, "group2.compress.ratio", 50), 0.055); // 0.1 − 0.09 · 0.5
    close(value(&c, "group2.compress.ratio", 90), 0.019); // 0.1 − 0.09 · 0.9
    assert_eq!(c.strategy.groups[1].hypers, []);
}

#[test]
fn the_first_group_with_a_scheduled_argument_names_its_output_group1() {
    let c = compiled(
        "horizon 20 steps\ngroup \"head.*\" { compress terngrad(clip: linear(2.5 -> 1.5)) }",
    );
    assert_eq!(
        in_group(&c, 0).scheduled,
        [ScheduledArg {
            arg: "clip".into(),
            output: "group1.compress.clip".into(),
        }]
    );
    // 2.5 + (1.5 − 2.5) · 10 / 20 = 2
    close(value(&c, "group1.compress.clip", 10), 2.0);
}

#[test]
fn lengths_are_converted_to_steps() {
    let c = compiled(
        "epoch = 50 steps\ncompress powersgd(rank: 2, start: 2 epochs, warm_start: false)",
    );
    let spec = top_level(&c);
    // 2 epochs · 50 steps per epoch = 100 steps
    assert_eq!(spec.args.get("start"), Some(&number(100.0)));
    assert_eq!(spec.args.get("rank"), Some(&number(2.0)));
    assert_eq!(spec.args.get("warm_start"), Some(&ArgValue::Bool(false)));
    assert!(spec.scheduled.is_empty());
}

#[test]
fn a_constant_schedule_stays_a_plain_argument() {
    let c = compiled("compress terngrad(clip: constant(2))");
    assert_eq!(top_level(&c).args.get("clip"), Some(&number(2.0)));
    assert!(top_level(&c).scheduled.is_empty());
    assert!(output_names(&c).is_empty());
}

#[test]
fn compress_statements_format_to_themselves() {
    let text =
        "compress   topk( ratio:0.01 )  with  error_feedback\ngroup \"*.bias\" {compress none}\n";
    let once =
        regimen_dsl::format(&SourceFile::new("f.regimen", text)).unwrap_or_else(|r| panic!("{r}"));
    assert_eq!(
        once,
        "compress topk(ratio: 0.01) with error_feedback\ngroup \"*.bias\" { compress none }\n"
    );
    let twice = regimen_dsl::format(&SourceFile::new("f.regimen", once.clone()))
        .unwrap_or_else(|r| panic!("{r}"));
    assert_eq!(twice, once);
}

#[test]
fn the_method_refuses_a_bad_value_on_the_argument() {
    let out = rejected("compress qsgd(levels: 0)");
    assert!(out.contains("error: `qsgd` refuses `levels`"), "{out}");
    // The caret is under `levels: 0` (columns 15..24).
    assert!(out.contains("1:15"), "{out}");
    assert!(out.contains("^^^^^^^^^ refused by `qsgd`"), "{out}");
}

#[test]
fn a_scheduled_value_refused_at_step_0_says_so() {
    let out = rejected("horizon 10 steps\ncompress qsgd(levels: linear(0 -> 8))");
    assert!(out.contains("`qsgd` refuses `levels` at step 0"), "{out}");
}

#[test]
fn an_unknown_argument_suggests_the_nearest_parameter() {
    let out = rejected("compress qsgd(levls: 4)");
    assert!(out.contains("`qsgd` has no parameter `levls`"), "{out}");
    assert!(out.contains("did you mean `levels`?"), "{out}");
}

#[test]
fn an_undefined_name_where_a_number_is_expected_is_an_unknown_name() {
    let out = rejected("let clip_at = 2\ncompress terngrad(clip: clip_a)");
    assert!(out.contains("unknown name `clip_a`"), "{out}");
    assert!(out.contains("did you mean `clip_at`?"), "{out}");
}

#[test]
fn with_and_the_argument_together_are_an_error() {
    let out = rejected("compress sign(error_feedback: false) with error_feedback");
    assert!(out.contains("error feedback is set twice"), "{out}");
    assert!(out.contains("first set here"), "{out}");
}

#[test]
fn the_error_feedback_argument_must_be_a_boolean() {
    let out = rejected("compress sign(error_feedback: on)");
    assert!(
        out.contains("`error_feedback` must be `true` or `false`, found a name"),
        "{out}"
    );
}

#[test]
fn a_schedule_without_a_finite_start_is_refused() {
    // 1 / linear(0 -> 1) is 1/0 at step 0.
    let out = rejected("horizon 10 steps\ncompress terngrad(clip: 1 / linear(0 -> 1))");
    assert!(
        out.contains("`clip` is not a finite number at step 0"),
        "{out}"
    );
}

#[test]
fn later_values_of_a_schedule_are_range_checked() {
    // Finite at step 0 (1), negative from step 6: 1 − 2 · 6/10 = −0.2.
    let out = rejected("horizon 10 steps\ncompress terngrad(clip: linear(1 -> -1))");
    assert!(
        out.contains("`compress.clip` must be zero or more, but it is -0.2 at step 6"),
        "{out}"
    );
}

#[test]
fn a_misplaced_compress_is_explained() {
    let out = rejected("compress = topk(ratio: 0.01)");
    assert!(
        out.contains("`compress` is a statement without `=`"),
        "{out}"
    );
    let out = rejected("group \"*.bias\" { compress = none }");
    assert!(
        out.contains("`compress` is a statement without `=`"),
        "{out}"
    );
    let out = rejected("compress topk(ratio: 0.01) { lr = 1 }");
    assert!(out.contains("`compress` takes no `{ … }` block"), "{out}");
}

#[test]
fn compress_errors_are_errors_and_other_statements_still_compile() {
    let report = regimen_dsl::check(
        &SourceFile::new("t.regimen", "lr = cosin(0.1)\ncompress qsgd(levels: 0)\n"),
        &CompileOptions::default(),
    );
    let errors: Vec<_> = report
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    assert_eq!(errors.len(), 2, "{report}");
}

#[test]
fn a_missing_required_argument_is_reported_on_the_call() {
    let out = rejected("compress topk");
    assert!(
        out.contains("`topk` is missing its `ratio` argument"),
        "{out}"
    );
    assert!(out.contains("add `ratio: 0.01`"), "{out}");
}

#[test]
fn a_percent_ratio_is_explained() {
    // `1%` is 1% of the 1000-step horizon: 10 steps, not 0.01.
    let out = rejected("horizon 1000 steps\ncompress topk(ratio: 1%)");
    assert!(out.contains("must be a ratio in (0, 1], got 10"), "{out}");
    assert!(out.contains("`%` is a share of the horizon"), "{out}");
}

#[test]
fn error_feedback_on_a_method_with_its_own_accumulation_is_a_warning() {
    let c = compiled("compress dgc(ratio: 0.01) with error_feedback");
    assert_eq!(top_level(&c).error_feedback, Some(true));
    let warnings: Vec<&str> = c.warnings.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(warnings, ["error feedback changes nothing for `dgc`"]);
    // Without it, nothing to say.
    assert!(compiled("compress dgc(ratio: 0.01)").warnings.is_empty());
}
