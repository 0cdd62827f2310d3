//! The tensor side of a script: `optimizer`, `layerwise`, `group`, `layer_decay`,
//! `precision` and `clip` compile into the expected `Strategy`, and their numeric
//! hyperparameters into graph outputs with the values of their formulas.

use regimen_core::strategy::CLIP_NORM_OUTPUT;
use regimen_core::{
    AtMinScale, DType, DynamicLossScale, GroupRule, Hyper, LayerDecay, LossScaleSpec,
    OptimizerKind, OptimizerSpec, PrecisionSpec, Strategy,
};
use regimen_dsl::{compile, CompileOptions, Compiled, Severity, SourceFile};

mod common;

use common::{close, compiled, output_names, rejected, value};

fn warnings(c: &Compiled) -> Vec<&str> {
    c.warnings
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .map(|d| d.message.as_str())
        .collect()
}

#[test]
fn a_script_without_strategy_statements_gets_the_default_strategy() {
    let c = compiled("lr = 0.1\nmomentum = 0.9");
    assert_eq!(c.strategy, Strategy::default());
    assert_eq!(c.strategy.optimizer.kind, OptimizerKind::Sgd);
    assert_eq!(c.strategy.precision, PrecisionSpec::default());
    assert_eq!(output_names(&c), ["lr", "momentum"]);
    // Hyperparameters the default optimizer does not read are not warned about:
    // the script may only be tracing schedules.
    let adam_like = compiled("lr = 0.1\nbeta1 = 0.9\nbeta2 = 0.98\neps = 1e-9");
    assert!(adam_like.warnings.is_empty());
}

#[test]
fn optimizer_arguments_become_outputs_named_after_the_hyperparameter() {
    let c = compiled(
        "lr = 0.1\noptimizer sgd(momentum: 0.9, nesterov: true, weight_decay: 5e-4, dampening: 0)",
    );
    assert_eq!(
        c.strategy.optimizer,
        OptimizerSpec {
            kind: OptimizerKind::Sgd,
            nesterov: true,
            ..OptimizerSpec::default()
        }
    );
    assert_eq!(
        output_names(&c),
        ["lr", "momentum", "dampening", "weight_decay"]
    );
    close(value(&c, Hyper::Momentum.name(), 0), 0.9);
    close(value(&c, Hyper::WeightDecay.name(), 7), 5e-4);
    assert_eq!(value(&c, Hyper::Dampening.name(), 3), 0.0);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn any_optimizer_argument_may_be_a_schedule_and_lr_may_be_given_there() {
    let c = compiled(
        "horizon 100 steps\noptimizer adam(lr: cosine(1e-3 -> 0), beta1: linear(0.8 -> 0.9, over: 10 steps), beta2: 0.98, eps: 1e-6)",
    );
    assert_eq!(c.strategy.optimizer.kind, OptimizerKind::Adam);
    assert!(!c.strategy.optimizer.amsgrad);
    // cosine at half the horizon: 1e-3 * (1 + cos(pi/2)) / 2 = 5e-4
    close(value(&c, "lr", 50), 5e-4);
    // 0.8 + (0.9 - 0.8) * 5/10 = 0.85
    close(value(&c, "beta1", 5), 0.85);
    close(value(&c, "beta2", 99), 0.98);
    close(value(&c, "eps", 0), 1e-6);
}

#[test]
fn positional_optimizer_arguments_follow_the_hyperparameter_order() {
    // sgd reads lr, momentum, dampening, weight_decay in that order.
    let c = compiled("optimizer sgd(0.05, 0.9)");
    close(value(&c, "lr", 0), 0.05);
    close(value(&c, "momentum", 0), 0.9);
}

#[test]
fn each_optimizer_takes_its_own_options() {
    let adamw = compiled("lr = 1e-3\noptimizer adamw(amsgrad: true, weight_decay: 0.05)");
    assert_eq!(adamw.strategy.optimizer.kind, OptimizerKind::AdamW);
    assert!(adamw.strategy.optimizer.amsgrad);
    close(value(&adamw, "weight_decay", 0), 0.05);

    // LAMB corrects the moments' bias unless told not to.
    let lamb = compiled("lr = 1e-3\noptimizer lamb(trust_clip: 10)");
    assert_eq!(
        lamb.strategy.optimizer,
        OptimizerSpec {
            kind: OptimizerKind::Lamb,
            bias_correction: true,
            trust_clip: Some(10.0),
            ..OptimizerSpec::default()
        }
    );
    let no_correction = compiled("lr = 1e-3\noptimizer lamb(bias_correction: false)");
    assert!(!no_correction.strategy.optimizer.bias_correction);

    let lars = compiled("lr = 0.1\noptimizer lars(momentum: 0.9, trust: 0.02, eps: 1e-9)");
    assert_eq!(lars.strategy.optimizer.kind, OptimizerKind::Lars);
    assert_eq!(lars.strategy.optimizer.trust_clip, None);
    close(value(&lars, "trust", 0), 0.02);
    close(value(&lars, "eps", 0), 1e-9);

    // A bare name takes every default.
    let bare = compiled("lr = 0.1\noptimizer adam");
    assert_eq!(bare.strategy.optimizer.kind, OptimizerKind::Adam);
    assert_eq!(output_names(&bare), ["lr"]);
}

#[test]
fn a_top_level_hyperparameter_the_optimizer_does_not_read_is_a_warning() {
    let c = compiled("lr = 0.1\nbeta1 = 0.9\ntrust = 0.001\noptimizer sgd(momentum: 0.9)");
    assert_eq!(
        warnings(&c),
        ["`beta1` is not used by sgd", "`trust` is not used by sgd"]
    );
    assert_eq!(
        c.warnings[0].help.as_deref(),
        Some("`beta1` is read by: adam, adamw, lamb")
    );
    // The outputs are still there (a trace shows them).
    close(value(&c, "beta1", 0), 0.9);
}

#[test]
fn the_errors_of_optimizer_statements_name_the_culprit() {
    let twice = rejected("momentum = 0.9\noptimizer sgd(lr: 0.1, momentum: 0.8)");
    assert!(twice.contains("`momentum` is set twice"), "{twice}");
    assert!(twice.contains("first set here"), "{twice}");
    let no_lr = rejected("optimizer adam(beta1: 0.9)");
    assert!(no_lr.contains("`adam` needs a learning rate"), "{no_lr}");
    let nesterov =
        rejected("lr = 0.1\nmomentum = 0.9\ndampening = 0.1\noptimizer sgd(nesterov: true)");
    assert!(
        nesterov.contains("Nesterov momentum requires a momentum and zero dampening"),
        "{nesterov}"
    );
    let eps = rejected("optimizer adam(lr: 0.1, eps: -1e-8)");
    assert!(eps.contains("`eps` must be zero or more"), "{eps}");
    let clip = rejected("lr = 0.1\noptimizer lamb(trust_clip: 0)");
    assert!(
        clip.contains("`trust_clip` must be greater than zero"),
        "{clip}"
    );
    let flag = rejected("lr = 0.1\noptimizer adam(amsgrad: yes)");
    assert!(
        flag.contains("`amsgrad` must be `true` or `false`"),
        "{flag}"
    );
}

#[test]
fn nesterov_with_a_scheduled_momentum_is_left_to_the_schedule() {
    // Only constants are checked, as PyTorch checks the value it is constructed with.
    let c = compiled(
        "lr = 0.1\nmomentum = linear(0.5 -> 0.9, over: 10 steps)\noptimizer sgd(nesterov: true)",
    );
    assert!(c.strategy.optimizer.nesterov);
}

#[test]
fn onecycle_cycles_momentum_or_adams_beta1_like_pytorch() {
    // PyTorch's OneCycleLR cycles `betas[0]` when the optimizer has betas.
    let adam = compiled("lr = onecycle(peak: 0.1, over: 100 steps)\noptimizer adam");
    assert!(adam.graph.output("momentum").is_none());
    close(value(&adam, "beta1", 0), 0.95);
    // the first phase ends at 0.3 * 100 - 1 = 29 steps, where it reaches base 0.85
    close(value(&adam, "beta1", 29), 0.85);
    // lr given as the optimizer's argument cycles momentum too
    let sgd = compiled("optimizer sgd(lr: onecycle(peak: 0.1, over: 100 steps))");
    close(value(&sgd, "momentum", 29), 0.85);
    // an explicit momentum argument wins over the cycle
    let explicit =
        compiled("optimizer sgd(lr: onecycle(peak: 0.1, over: 100 steps), momentum: 0.9)");
    close(value(&explicit, "momentum", 29), 0.9);
}

#[test]
fn group_compound_assignments_are_relative_to_the_global_value() {
    let c = compiled(
        "horizon 20 steps\nlr = linear(0 -> 0.1, over: 10 steps) then constant(0.1)\nmomentum = 0.9\ngroup \"embed.*\" { lr *= 0.1; momentum -= 0.1 }\ngroup \"head.*\" { lr /= 4; momentum += 0.05 }",
    );
    assert_eq!(
        c.strategy.groups,
        [
            GroupRule {
                patterns: vec!["embed.*".into()],
                hypers: vec![Hyper::Lr, Hyper::Momentum],
                trust_ratio: None,
                layer_decay: None,
                compress: None,
            },
            GroupRule {
                patterns: vec!["head.*".into()],
                hypers: vec![Hyper::Lr, Hyper::Momentum],
                trust_ratio: None,
                layer_decay: None,
                compress: None,
            },
        ]
    );
    assert_eq!(GroupRule::output_name(0, Hyper::Lr), "group1.lr");
    for step in [0, 5, 10, 15] {
        // global lr: 0.1 * min(step, 10) / 10
        let global = 0.1 * (step.min(10) as f64) / 10.0;
        close(value(&c, "group1.lr", step), global * 0.1);
        close(value(&c, "group2.lr", step), global / 4.0);
    }
    // 0.9 - 0.1 = 0.8 and 0.9 + 0.05 = 0.95
    close(value(&c, "group1.momentum", 3), 0.8);
    close(value(&c, "group2.momentum", 3), 0.95);
}

#[test]
fn a_group_may_replace_a_hyperparameter_with_its_own_schedule() {
    let c = compiled("horizon 10 steps\nlr = 0.1\ngroup \"head.*\" { lr = cosine(0.01 -> 0) }");
    close(value(&c, "lr", 5), 0.1);
    // 0.01 * (1 + cos(pi * 5/10)) / 2 = 0.005
    close(value(&c, "group1.lr", 5), 0.005);
}

#[test]
fn compound_assignments_on_unset_hyperparameters_use_the_optimizers_default() {
    // AdamW's default weight decay is 1e-2 (PyTorch): 1e-2 * 0.5 = 5e-3.
    let c = compiled("lr = 1e-3\noptimizer adamw\ngroup \"*\" { weight_decay *= 0.5 }");
    close(value(&c, "group1.weight_decay", 0), 5e-3);
    assert!(c.graph.output("weight_decay").is_none());
    // Adam's default beta2 is 0.999: 0.999 - 0.009 = 0.99
    let c = compiled("lr = 1e-3\noptimizer adam\ngroup \"*\" { beta2 -= 0.009 }");
    close(value(&c, "group1.beta2", 0), 0.99);
    // lr has no default
    let message = rejected("momentum = 0.9\ngroup \"embed.*\" { lr *= 0.1 }");
    assert!(
        message.contains("relative to the global `lr`, which is not set"),
        "{message}"
    );
}

#[test]
fn the_exclusion_one_liner_turns_off_decay_and_trust_ratio_for_biases_and_norms() {
    let c = compiled(
        "lr = 0.1\noptimizer lars(momentum: 0.9, weight_decay: 5e-4)\ngroup \"*.bias\", \"*norm*\" { weight_decay = 0; trust_ratio = off }",
    );
    assert_eq!(
        c.strategy.groups,
        [GroupRule {
            patterns: vec!["*.bias".into(), "*norm*".into()],
            hypers: vec![Hyper::WeightDecay],
            trust_ratio: Some(false),
            layer_decay: None,
            compress: None,
        }]
    );
    assert_eq!(value(&c, "group1.weight_decay", 0), 0.0);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn group_switches_accept_on_off_true_false() {
    let c = compiled(
        "lr = 0.1\nlayer_decay 0.8\noptimizer lamb\ngroup \"head.*\" { layer_decay = off; trust_ratio = true }\ngroup \"head.bias\" { layer_decay = on; trust_ratio = false }",
    );
    assert_eq!(c.strategy.groups[0].layer_decay, Some(false));
    assert_eq!(c.strategy.groups[0].trust_ratio, Some(true));
    assert_eq!(c.strategy.groups[1].layer_decay, Some(true));
    assert_eq!(c.strategy.groups[1].trust_ratio, Some(false));
    assert!(c.strategy.groups[0].hypers.is_empty());
}

#[test]
fn group_settings_with_no_effect_are_warnings() {
    let c = compiled(
        "lr = 0.1\noptimizer sgd\ngroup \"a.*\" { trust_ratio = off; layer_decay = off; beta1 = 0.5 }\ngroup \"b.*\" {}",
    );
    assert_eq!(
        warnings(&c),
        [
            "`trust_ratio` has no effect with sgd",
            "`layer_decay` has no effect: the script sets no layer decay",
            "`beta1` is not used by sgd",
            "this group changes nothing",
        ]
    );
}

#[test]
fn group_patterns_are_checked_as_globs_at_compile_time() {
    let c = compiled("lr = 0.1\ngroup \"layers.{depth}.attn.*\", \"\\\\*literal?\" { lr *= 2 }");
    // The string escape `\\` is one backslash: the glob escape of `*`.
    assert_eq!(
        c.strategy.groups[0].patterns,
        ["layers.{depth}.attn.*", "\\*literal?"]
    );
    let bad = rejected("lr = 0.1\ngroup \"layers.{dept}.*\" { lr *= 2 }");
    assert!(bad.contains("unknown capture `{dept}`"), "{bad}");
    // the caret is under `{dept}`: column 15 of line 2
    assert!(bad.contains("test.regimen:2:15"), "{bad}");
}

#[test]
fn layer_decay_takes_a_factor_and_depth_patterns() {
    let plain = compiled("lr = 0.1\nlayer_decay 0.75");
    assert_eq!(
        plain.strategy.layer_decay,
        Some(LayerDecay {
            factor: 0.75,
            depth_patterns: vec![],
        })
    );
    let with_patterns =
        compiled("lr = 0.1\nlayer_decay 0.65, \"layers.{depth}.*\", \"blocks.{depth}.*\"");
    assert_eq!(
        with_patterns.strategy.layer_decay,
        Some(LayerDecay {
            factor: 0.65,
            depth_patterns: vec!["layers.{depth}.*".into(), "blocks.{depth}.*".into()],
        })
    );
    // 1 is allowed (no decay), 0 and above 1 are not
    assert!(compiled("layer_decay 1").strategy.layer_decay.is_some());
    assert!(rejected("layer_decay 0").contains("must be in (0, 1]"));
    assert!(rejected("layer_decay 0.75\nlayer_decay 0.8").contains("`layer_decay` is given twice"));
}

#[test]
fn layerwise_lars_turns_sgd_into_lars_keeping_its_hyperparameters() {
    let c = compiled(
        "lr = 0.1\noptimizer sgd(momentum: 0.9, nesterov: true, weight_decay: 1e-4)\nlayerwise lars(trust: 0.001, trust_clip: 1, eps: 1e-9)",
    );
    assert_eq!(
        c.strategy.optimizer,
        OptimizerSpec {
            kind: OptimizerKind::Lars,
            nesterov: true,
            trust_clip: Some(1.0),
            ..OptimizerSpec::default()
        }
    );
    close(value(&c, "momentum", 0), 0.9);
    close(value(&c, "weight_decay", 0), 1e-4);
    close(value(&c, "trust", 0), 0.001);
    close(value(&c, "eps", 0), 1e-9);
    // without an optimizer statement the default sgd is converted
    let default = compiled("lr = 0.1\nlayerwise lars");
    assert_eq!(default.strategy.optimizer.kind, OptimizerKind::Lars);
    // a hyperparameter the conversion adds may be set at the top level instead
    let top = compiled("lr = 0.1\ntrust = 0.01\nlayerwise lars");
    assert!(top.warnings.is_empty(), "{:?}", top.warnings);
    close(value(&top, "trust", 0), 0.01);
}

#[test]
fn layerwise_lamb_turns_adam_and_adamw_into_lamb() {
    let adam = compiled("lr = 1e-3\noptimizer adam(beta2: 0.98)\nlayerwise lamb(trust_clip: 10)");
    assert_eq!(
        adam.strategy.optimizer,
        OptimizerSpec {
            kind: OptimizerKind::Lamb,
            bias_correction: true,
            trust_clip: Some(10.0),
            ..OptimizerSpec::default()
        }
    );
    close(value(&adam, "beta2", 0), 0.98);
    assert!(adam.graph.output("weight_decay").is_none());
    // AdamW's decoupled decay is LAMB's; its default strength (1e-2) is kept.
    let adamw = compiled("lr = 1e-3\noptimizer adamw\nlayerwise lamb(bias_correction: false)");
    assert_eq!(adamw.strategy.optimizer.kind, OptimizerKind::Lamb);
    assert!(!adamw.strategy.optimizer.bias_correction);
    close(value(&adamw, "weight_decay", 0), 1e-2);
}

#[test]
fn layerwise_refuses_optimizers_it_does_not_convert() {
    let lars_on_adam = rejected("lr = 1e-3\noptimizer adam\nlayerwise lars(trust: 0.001)");
    assert!(lars_on_adam.contains("optimizer lamb(…)"), "{lars_on_adam}");
    let lamb_on_sgd = rejected("lr = 0.1\nlayerwise lamb");
    assert!(
        lamb_on_sgd.contains("applies to Adam or AdamW"),
        "{lamb_on_sgd}"
    );
    let twice = rejected("lr = 0.1\noptimizer lars\nlayerwise lars");
    assert!(twice.contains("already layer-wise"), "{twice}");
    let amsgrad = rejected("lr = 0.1\noptimizer adam(amsgrad: true)\nlayerwise lamb");
    assert!(amsgrad.contains("LAMB has no AMSGrad variant"), "{amsgrad}");
}

#[test]
fn precision_defaults_follow_the_number_format() {
    let f16 = compiled("precision f16");
    assert_eq!(
        f16.strategy.precision,
        PrecisionSpec {
            dtype: DType::F16,
            loss_scale: LossScaleSpec::Dynamic(DynamicLossScale::default()),
        }
    );
    // PyTorch GradScaler: 2^16, growth 2, backoff 0.5, every 2000 steps.
    assert_eq!(
        DynamicLossScale::default(),
        DynamicLossScale {
            init: 65536.0,
            growth: 2.0,
            backoff: 0.5,
            interval: 2000,
            hysteresis: 1,
            min_scale: 1.0,
            at_min: AtMinScale::Error,
        }
    );
    let bf16 = compiled("precision bf16");
    assert_eq!(bf16.strategy.precision.dtype, DType::BF16);
    assert_eq!(bf16.strategy.precision.loss_scale, LossScaleSpec::None);
    assert_eq!(
        compiled("precision f32").strategy.precision,
        PrecisionSpec::default()
    );
}

#[test]
fn loss_scale_settings_compile_with_units_and_defaults() {
    let c = compiled(
        "epoch = 100 steps\nprecision f16 { loss_scale dynamic(init: 1024, growth: 4, every: 2 epochs, hysteresis: 2, min_scale: 2^-4, at_min: skip) }",
    );
    assert_eq!(
        c.strategy.precision.loss_scale,
        LossScaleSpec::Dynamic(DynamicLossScale {
            init: 1024.0,
            growth: 4.0,
            // 2 epochs of 100 steps
            interval: 200,
            hysteresis: 2,
            min_scale: 0.0625,
            at_min: AtMinScale::Skip,
            // not given: GradScaler's backoff factor
            backoff: 0.5,
        })
    );
    let fixed = compiled("precision f16 {\n    loss_scale static(128)\n}");
    assert_eq!(
        fixed.strategy.precision.loss_scale,
        LossScaleSpec::Static(128.0)
    );
    let none = compiled("precision f16 { loss_scale none }");
    assert_eq!(none.strategy.precision.loss_scale, LossScaleSpec::None);
    let bare = compiled("precision f16 { loss_scale dynamic }");
    assert_eq!(
        bare.strategy.precision.loss_scale,
        LossScaleSpec::Dynamic(DynamicLossScale::default())
    );
}

#[test]
fn loss_scaling_with_bf16_is_allowed_with_a_warning() {
    let c = compiled("precision bf16 { loss_scale dynamic(init: 256) }");
    assert_eq!(warnings(&c), ["loss scaling is rarely needed with bf16"]);
    assert!(matches!(
        c.strategy.precision.loss_scale,
        LossScaleSpec::Dynamic(DynamicLossScale { init: 256.0, .. })
    ));
}

#[test]
fn clip_norm_has_two_spellings_and_one_output() {
    let directive = compiled("lr = 0.1\nclip norm: 1.0");
    assert_eq!(output_names(&directive), ["lr", CLIP_NORM_OUTPUT]);
    close(value(&directive, CLIP_NORM_OUTPUT, 0), 1.0);
    let assignment = compiled("horizon 10 steps\nclip_norm = linear(5 -> 1)");
    // 5 + (1 - 5) * 5/10 = 3
    close(value(&assignment, CLIP_NORM_OUTPUT, 5), 3.0);
    let both = rejected("clip_norm = 1\nclip norm: 2");
    assert!(both.contains("the clipping norm is set twice"), "{both}");
    let zero = rejected("clip norm: 0");
    assert!(
        zero.contains("`clip_norm` must be greater than zero"),
        "{zero}"
    );
}

#[test]
fn group_hyperparameters_are_range_checked_over_the_run() {
    // 0.1 - linear(0 -> 0.2, over: 10 steps) is negative from step 6 on:
    // 0.1 - 0.2 * 6/10 = -0.02.
    let message = rejected(
        "horizon 10 steps\nlr = 0.1\ngroup \"head.*\" { lr -= linear(0 -> 0.2, over: 10 steps) }",
    );
    assert!(
        message.contains("`group1.lr` must be zero or more, but it is -0.02 at step 6"),
        "{message}"
    );
}

#[test]
fn the_design_sketch_compiles_except_for_later_features() {
    let text = "horizon 90 epochs\nepoch = 100 steps\nlet peak = 0.1\nlr = linear(0 -> peak, over: 5 epochs) then cosine(peak -> 0)\nmomentum = 0.9\noptimizer sgd(nesterov: true, weight_decay: 5e-4)\ngroup \"embed.*\" { lr *= 0.1 }\ngroup \"*.bias\", \"*norm*\" { weight_decay = 0 }\nlayerwise lars(trust: 0.001)\nprecision f16 { loss_scale dynamic(init: 65536, growth: 2, backoff: 0.5, every: 2000 steps) }\nclip norm: 1.0\n";
    let c = compiled(text);
    assert_eq!(c.strategy.optimizer.kind, OptimizerKind::Lars);
    assert_eq!(c.strategy.groups.len(), 2);
    assert_eq!(
        output_names(&c),
        [
            "lr",
            "momentum",
            "weight_decay",
            "trust",
            "clip_norm",
            "group1.lr",
            "group2.weight_decay"
        ]
    );
    // warmup: 0.1 * 250 / 500 = 0.05, so the embedding group gets 0.005
    close(value(&c, "group1.lr", 250), 0.005);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn good_strategy_scripts_compile_cleanly_and_format_to_themselves() {
    let scripts = common::scripts_in("tests/good");
    assert!(scripts.len() >= 3, "found {}", scripts.len());
    for (name, text) in scripts {
        let file = SourceFile::new(name.clone(), text.clone());
        match compile(&file, &CompileOptions::default()) {
            Ok(c) => assert!(c.warnings.is_empty(), "{name}: {:?}", c.warnings),
            Err(report) => panic!("{name} rejected:\n{report}"),
        }
        let formatted = regimen_dsl::format(&file).unwrap_or_else(|r| panic!("{r}"));
        assert_eq!(formatted, text, "{name} is not in canonical form");
    }
}

#[test]
fn named_directive_items_format_canonically() {
    let messy = "clip   norm :1.0\nlayer_decay 0.75 ,\"layers.{depth}.*\"\n";
    let once =
        regimen_dsl::format(&SourceFile::new("m.regimen", messy)).unwrap_or_else(|r| panic!("{r}"));
    assert_eq!(
        once,
        "clip norm: 1.0\nlayer_decay 0.75, \"layers.{depth}.*\"\n"
    );
    let twice = regimen_dsl::format(&SourceFile::new("m.regimen", once.clone()))
        .unwrap_or_else(|r| panic!("{r}"));
    assert_eq!(twice, once);
}

/// The code blocks of the README section on these statements.
fn readme_strategy_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .unwrap_or_else(|e| panic!("README.md: {e}"));
    let start = readme
        .find("### Optimizer, groups, layer rules and precision")
        .unwrap_or_else(|| panic!("README has no strategy section"));
    let section = &readme[start..];
    let section = &section[..section.find("\n### Diagnostics").unwrap_or(section.len())];
    section
        .split("```")
        .skip(1)
        .step_by(2)
        .map(|block| block.trim_start_matches('\n').to_string())
        .collect()
}

#[test]
fn the_readme_examples_of_these_statements_compile_and_are_canonical() {
    let blocks = readme_strategy_blocks();
    assert!(blocks.len() >= 2, "found {}", blocks.len());
    for block in blocks {
        let file = SourceFile::new("README.regimen", block.clone());
        match compile(&file, &CompileOptions::default()) {
            Ok(c) => assert!(c.warnings.is_empty(), "{block}\n{:?}", c.warnings),
            Err(report) => panic!("README block rejected:\n{report}"),
        }
        let formatted = regimen_dsl::format(&file).unwrap_or_else(|r| panic!("{r}"));
        assert_eq!(formatted, block, "README block is not in canonical form");
    }
}
