//! `batch CONTROLLER(args) [{ lr scale … }]`: the `BatchSpec` each controller compiles
//! to, with lengths resolved to optimizer steps or samples by hand-computed values;
//! the base batch; plugin controllers; formatting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../core/tests/plugin_support/mod.rs"]
mod plugin_support;

mod common;

use regimen_core::batch::{BatchBounds, BatchSpec, ControllerSpec, Interval, LrScale};
use regimen_core::plugin::{ArgValue, Args};
use regimen_dsl::{CompileOptions, Compiled, SourceFile};

use common::{compiled, compiled_with, rejected};

fn spec(c: &Compiled) -> &BatchSpec {
    c.strategy
        .batch
        .as_ref()
        .unwrap_or_else(|| panic!("no batch spec"))
}

fn controller(script: &str) -> ControllerSpec {
    spec(&compiled(script)).controller.clone()
}

/// `epoch = 100 steps`, `batch = 32`: one epoch is 3200 samples.
const UNITS: &str = "epoch = 100 steps\nbatch = 32\nlr = 0.1\n";

#[test]
fn a_script_without_batch_control_has_none() {
    let c = compiled("batch = 32\nlr = 0.1");
    assert_eq!(c.strategy.batch, None);
    // `batch = N` stays the base batch size of the units.
    assert_eq!(c.batch_size, Some(32.0));
}

#[test]
fn fixed_keeps_the_batch_with_the_default_bounds() {
    let c = compiled(&format!("{UNITS}batch fixed(256)"));
    assert_eq!(
        spec(&c),
        &BatchSpec {
            controller: ControllerSpec::Fixed { batch: 256 },
            bounds: BatchBounds {
                min: 1,
                max: None,
                multiple_of: 1,
            },
            micro_batch: None,
            lr_scale: LrScale::None,
            base_batch: 32,
        }
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(
        controller(&format!("{UNITS}batch fixed(batch: 256)")),
        ControllerSpec::Fixed { batch: 256 }
    );
    // No graph output: batch control is not a hyperparameter.
    assert_eq!(c.graph.outputs.len(), 1);
}

#[test]
fn ramp_lengths_are_samples() {
    // 2 epochs × 100 steps × 32 = 6400 samples.
    assert_eq!(
        controller(&format!("{UNITS}batch ramp(32 -> 1024, over: 2 epochs)")),
        ControllerSpec::Ramp {
            from: 32,
            to: 1024,
            over: 6400,
            stages: None,
        }
    );
    assert_eq!(
        controller(&format!(
            "{UNITS}batch ramp(32 -> 1024, over: 50000 samples, stages: 4)"
        )),
        ControllerSpec::Ramp {
            from: 32,
            to: 1024,
            over: 50_000,
            stages: Some(4),
        }
    );
    // Steps are steps at the base batch: 10 × 32 = 320 samples.
    assert_eq!(
        controller(&format!("{UNITS}batch ramp(32 -> 1024, over: 10 steps)")),
        ControllerSpec::Ramp {
            from: 32,
            to: 1024,
            over: 320,
            stages: None,
        }
    );
    // Positional, as documented: range, over, stages.
    assert_eq!(
        controller(&format!("{UNITS}batch ramp(1024 -> 64, 1 epoch, 2)")),
        ControllerSpec::Ramp {
            from: 1024,
            to: 64,
            over: 3200,
            stages: Some(2),
        }
    );
}

#[test]
fn loss_rule_takes_gamma_and_every_with_defaults_for_the_rest() {
    assert_eq!(
        controller(&format!(
            "{UNITS}batch loss_rule(gamma: 0.9, every: 1 epoch, factor: 2, from: 64, max: 1024)"
        )),
        ControllerSpec::LossRule {
            from: 64,
            gamma: 0.9,
            every: Interval::Samples(3200),
            factor: 2.0,
        }
    );
    // factor 2; from = the base batch; 2 epochs × 100 × 32 = 6400 samples.
    let c = compiled(&format!(
        "{UNITS}batch loss_rule(gamma: 0.8, every: 2 epochs)"
    ));
    assert_eq!(
        spec(&c).controller,
        ControllerSpec::LossRule {
            from: 32,
            gamma: 0.8,
            every: Interval::Samples(6400),
            factor: 2.0,
        }
    );
    // `every` in steps counts optimizer steps.
    assert_eq!(
        controller(&format!(
            "{UNITS}batch loss_rule(gamma: 0.9, every: 50 steps, factor: 1.5)"
        )),
        ControllerSpec::LossRule {
            from: 32,
            gamma: 0.9,
            every: Interval::Steps(50),
            factor: 1.5,
        }
    );
}

#[test]
fn gns_defaults_and_units() {
    assert_eq!(
        controller(&format!("{UNITS}batch gns")),
        ControllerSpec::Gns {
            from: 32,
            every: Interval::Steps(100),
            ema: 0.95,
            factor: 1.0,
        }
    );
    let c = compiled(&format!(
        "{UNITS}batch gns(min: 32, max: 4096, every: 50 steps, ema: 0.9, factor: 0.5, from: 64)"
    ));
    assert_eq!(
        spec(&c),
        &BatchSpec {
            controller: ControllerSpec::Gns {
                from: 64,
                every: Interval::Steps(50),
                ema: 0.9,
                factor: 0.5,
            },
            bounds: BatchBounds {
                min: 32,
                max: Some(4096),
                multiple_of: 1,
            },
            micro_batch: None,
            lr_scale: LrScale::None,
            base_batch: 32,
        }
    );
    // 10% of a 1000-step horizon = 100 steps at the base batch = 3200 samples.
    assert_eq!(
        controller("horizon 1000 steps\nbatch = 32\nlr = 0.1\nbatch gns(every: 10%)"),
        ControllerSpec::Gns {
            from: 32,
            every: Interval::Samples(3200),
            ema: 0.95,
            factor: 1.0,
        }
    );
}

#[test]
fn an_epoch_given_in_samples_is_that_many_samples() {
    // 50000 / 256 = 195.3125 steps per epoch; back in samples it is 50000 again.
    assert_eq!(
        controller("epoch = 50000 samples\nbatch = 256\nlr = 0.1\nbatch loss_rule(gamma: 0.9, every: 1 epoch)"),
        ControllerSpec::LossRule {
            from: 256,
            gamma: 0.9,
            every: Interval::Samples(50_000),
            factor: 2.0,
        }
    );
}

#[test]
fn adascale_takes_its_scale() {
    let c = compiled(&format!(
        "{UNITS}batch adascale(scale: 4) {{ lr scale none }}"
    ));
    assert_eq!(
        spec(&c).controller,
        ControllerSpec::AdaScale {
            scale: 4.0,
            ema: 0.95,
        }
    );
    assert_eq!(spec(&c).lr_scale, LrScale::None);
    assert_eq!(
        controller(&format!("{UNITS}batch adascale(scale: 2.5, ema: 0.99)")),
        ControllerSpec::AdaScale {
            scale: 2.5,
            ema: 0.99,
        }
    );
}

#[test]
fn the_common_arguments_are_the_bounds_and_the_micro_batch() {
    let c = compiled(&format!(
        "{UNITS}batch fixed(256, min: 64, max: 512, multiple_of: 8, micro_batch: 16)"
    ));
    assert_eq!(
        spec(&c).bounds,
        BatchBounds {
            min: 64,
            max: Some(512),
            multiple_of: 8,
        }
    );
    assert_eq!(spec(&c).micro_batch, Some(16));
}

#[test]
fn the_block_sets_the_lr_scaling() {
    for (word, scale) in [
        ("linear", LrScale::Linear),
        ("sqrt", LrScale::Sqrt),
        ("none", LrScale::None),
    ] {
        let c = compiled(&format!(
            "{UNITS}batch gns(min: 32, max: 4096, every: 100 steps) {{ lr scale {word} }}"
        ));
        assert_eq!(spec(&c).lr_scale, scale, "{word}");
    }
    // On its own lines too.
    let c = compiled(&format!("{UNITS}batch fixed(64) {{\n    lr scale sqrt\n}}"));
    assert_eq!(spec(&c).lr_scale, LrScale::Sqrt);
}

#[test]
fn let_names_keep_the_kind_of_their_length() {
    let c = compiled(&format!(
        "{UNITS}let check = 2 epochs\nbatch loss_rule(gamma: 0.9, every: check)"
    ));
    assert_eq!(
        spec(&c).controller,
        ControllerSpec::LossRule {
            from: 32,
            gamma: 0.9,
            every: Interval::Samples(6400),
            factor: 2.0,
        }
    );
    let c = compiled(&format!(
        "{UNITS}let n = 25\nlet check = (n * 2) steps\nbatch gns(every: check)"
    ));
    assert!(matches!(
        spec(&c).controller,
        ControllerSpec::Gns {
            every: Interval::Steps(50),
            ..
        }
    ));
}

#[test]
fn the_base_batch_may_come_from_the_options() {
    let options = CompileOptions {
        batch_size: Some(64.0),
        steps_per_epoch: Some(10.0),
        ..CompileOptions::default()
    };
    let c = compiled_with(
        "lr = 0.1\nbatch loss_rule(gamma: 0.9, every: 1 epoch)",
        &options,
    );
    // 1 epoch × 10 steps × 64 = 640 samples; `from` is the base batch.
    assert_eq!(
        spec(&c).controller,
        ControllerSpec::LossRule {
            from: 64,
            gamma: 0.9,
            every: Interval::Samples(640),
            factor: 2.0,
        }
    );
    assert_eq!(spec(&c).base_batch, 64);
    // The option overrides the script's `batch = N`.
    let c = compiled_with("batch = 32\nlr = 0.1\nbatch fixed(256)", &options);
    assert_eq!(spec(&c).base_batch, 64);
}

#[test]
fn argument_problems_are_all_reported_on_their_arguments() {
    let text = rejected(&format!(
        "{UNITS}batch gns(every: 2.5 steps, ema: 1, factor: 0, from: 0, micro_batch: 3.5)"
    ));
    for expected in [
        "`every` must be a whole number of steps, not 2.5 steps",
        "`ema` must be in [0, 1), not 1",
        "`factor` must be greater than zero, not 0",
        "`from` must be a whole number of at least 1, not 0",
        "`micro_batch` must be a whole number of at least 1, not 3.5",
    ] {
        assert!(text.contains(expected), "{expected} missing in\n{text}");
    }
    let text = rejected(&format!(
        "{UNITS}batch loss_rule(gamma: 0, every: 1 epoch, factor: 1)"
    ));
    assert!(
        text.contains("`gamma` must be greater than zero, not 0"),
        "{text}"
    );
    assert!(
        text.contains("`factor` must be greater than 1, not 1"),
        "{text}"
    );
    let text = rejected(&format!("{UNITS}batch adascale(scale: 0.5, ema: -0.1)"));
    assert!(
        text.contains("`scale` must be at least 1, not 0.5"),
        "{text}"
    );
    assert!(text.contains("`ema` must be in [0, 1), not -0.1"), "{text}");
    let text = rejected(&format!(
        "{UNITS}batch ramp(32.5 -> 0, over: 10 steps, stages: 0)"
    ));
    assert!(
        text.contains("the ramp's start must be a whole number of at least 1, not 32.5"),
        "{text}"
    );
    assert!(
        text.contains("the ramp's end must be a whole number of at least 1, not 0"),
        "{text}"
    );
    assert!(
        text.contains("`stages` must be a whole number of at least 1, not 0"),
        "{text}"
    );
    let text = rejected(&format!("{UNITS}batch gns(every: 1 epoch + 5 steps)"));
    assert!(
        text.contains("`every` mixes optimizer steps with epochs or samples"),
        "{text}"
    );
    let text = rejected(&format!("{UNITS}batch fixed(256, 32)"));
    assert!(
        text.contains("`fixed` takes 1 positional argument (batch)"),
        "{text}"
    );
    let text = rejected(&format!("{UNITS}batch ramp(32 <-> 64, over: 1 epoch)"));
    assert!(text.contains("found a cycle `<->`"), "{text}");
}

#[test]
fn batch_statements_format_to_themselves() {
    let text = "epoch = 100 steps\nbatch = 32\nlr = 0.1\nbatch gns(min: 32, max: 4096, every: 100 steps) { lr scale sqrt }\n";
    let formatted = regimen_dsl::format(&SourceFile::new("f.regimen", text)).unwrap();
    assert_eq!(formatted, text);
    let messy = "batch = 32\nbatch   ramp(32->1024,over:2 epochs,stages:4){\nlr scale linear\n}\n";
    let once = regimen_dsl::format(&SourceFile::new("f.regimen", messy)).unwrap();
    assert_eq!(
        once,
        "batch = 32\nbatch ramp(32 -> 1024, over: 2 epochs, stages: 4) {\n    lr scale linear\n}\n"
    );
    let twice = regimen_dsl::format(&SourceFile::new("f.regimen", once.clone())).unwrap();
    assert_eq!(twice, once);
}

// ----- plugin controllers --------------------------------------------------------

/// A script that loads the AdaBatch plugin, then `rest`.
fn with_adabatch(rest: &str) -> String {
    let library = plugin_support::library("regimen-adabatch");
    format!("plugin \"{}\"\n{UNITS}{rest}", library.display())
}

fn compile_text(text: &str) -> Result<Compiled, String> {
    regimen_dsl::compile(
        &SourceFile::new("test.regimen", text),
        &CompileOptions::default(),
    )
    .map_err(|report| report.to_string())
}

#[test]
fn a_plugin_controller_gets_its_own_arguments_with_lengths_in_samples() {
    let c = compile_text(&with_adabatch(
        "batch adabatch(every: 2, factor: 3, lr_scale: sqrt, max: 1024, multiple_of: 8) { lr scale none }",
    ))
    .unwrap();
    assert_eq!(
        spec(&c),
        &BatchSpec {
            controller: ControllerSpec::Plugin {
                name: "adabatch".into(),
                // The common arguments are the host's; AdaBatch declares `max` too, so
                // it gets that one as well (its lr scale follows its own answer).
                args: Args::new()
                    .with("every", ArgValue::Number(2.0))
                    .with("factor", ArgValue::Number(3.0))
                    .with("lr_scale", ArgValue::Text("sqrt".into()))
                    .with("max", ArgValue::Number(1024.0)),
            },
            bounds: BatchBounds {
                min: 1,
                max: Some(1024),
                multiple_of: 8,
            },
            micro_batch: None,
            lr_scale: LrScale::None,
            base_batch: 32,
        }
    );
    // A length arrives in samples: 2 epochs × 100 steps × 32.
    let c = compile_text(&with_adabatch("batch adabatch(every: 2 epochs)")).unwrap();
    assert_eq!(
        spec(&c).controller,
        ControllerSpec::Plugin {
            name: "adabatch".into(),
            args: Args::new().with("every", ArgValue::Number(6400.0)),
        }
    );
}

#[test]
fn a_plugin_controller_refusal_points_at_the_argument() {
    let text = compile_text(&with_adabatch("batch adabatch(every: -1)")).unwrap_err();
    assert!(
        text.contains(
            "error: `adabatch` refuses `every`: must be a positive number of epochs, got -1"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "batch adabatch(every: -1)\n  |                ^^^^^^^^^ refused by `adabatch`"
        ),
        "{text}"
    );

    let text = compile_text(&with_adabatch("batch adabatch(evry: 2)")).unwrap_err();
    assert!(
        text.contains("`adabatch` has no parameter `evry`"),
        "{text}"
    );
    assert!(text.contains("did you mean `every`?"), "{text}");

    let text = compile_text(&with_adabatch("batch adabatch(factor: 2)")).unwrap_err();
    assert!(
        text.contains("`adabatch` is missing its `every` argument"),
        "{text}"
    );

    let text = compile_text(&with_adabatch(
        "horizon 10 steps\nbatch adabatch(every: linear(1 -> 2))",
    ))
    .unwrap_err();
    assert!(
        text.contains("`every` of `adabatch` must be a constant, not a schedule"),
        "{text}"
    );

    let text = compile_text(&with_adabatch("batch adabatch(every: 2, 3)")).unwrap_err();
    assert!(
        text.contains("plugin controller arguments must be named"),
        "{text}"
    );

    // The unknown-name help lists the plugin's controllers too.
    let text = compile_text(&with_adabatch("batch adabatc(every: 2)")).unwrap_err();
    assert!(text.contains("did you mean `adabatch`? batch controllers are: fixed, ramp, loss_rule, gns, adascale, adabatch"), "{text}");
}
