//! Compiled scripts produce the values of the reference formulas; units, `let`,
//! `then`, arithmetic and options behave as documented; every example compiles
//! cleanly and formats to itself.

use regimen_dsl::{compile, CompileOptions, SourceFile};

mod common;

use common::{close, compiled, compiled_with, value};

fn examples() -> Vec<(String, String)> {
    common::scripts_in("../examples")
}

#[test]
fn every_example_compiles_without_warnings() {
    let examples = examples();
    assert!(examples.len() >= 5);
    for (name, text) in examples {
        let result = compile(
            &SourceFile::new(name.clone(), text),
            &CompileOptions::default(),
        );
        match result {
            Ok(c) => assert!(c.warnings.is_empty(), "{name}: {:?}", c.warnings),
            Err(report) => panic!("{name} rejected:\n{report}"),
        }
    }
}

#[test]
fn formatting_every_example_is_a_fixed_point() {
    for (name, text) in examples() {
        let file = SourceFile::new(name.clone(), text.clone());
        let formatted = regimen_dsl::format(&file).unwrap_or_else(|r| panic!("{r}"));
        assert_eq!(formatted, text, "{name} is not in canonical form");
    }
}

#[test]
fn formatting_normalises_spacing_keeps_comments_and_is_idempotent() {
    let messy = "# head\n\n\n horizon   90 steps # h\nlet peak=0.1\nlr = linear(0->peak,over:\n   10 steps)\n  then cosine(peak->0) # tail\ngroup \"*.bias\",\"*norm*\" {\n weight_decay=0\n # inside\n}\n";
    let once =
        regimen_dsl::format(&SourceFile::new("m.regimen", messy)).unwrap_or_else(|r| panic!("{r}"));
    assert_eq!(
        once,
        "# head\n\nhorizon 90 steps  # h\nlet peak = 0.1\nlr = linear(0 -> peak, over: 10 steps) then cosine(peak -> 0)  # tail\ngroup \"*.bias\", \"*norm*\" {\n    weight_decay = 0\n    # inside\n}\n"
    );
    let twice = regimen_dsl::format(&SourceFile::new("m.regimen", once.clone()))
        .unwrap_or_else(|r| panic!("{r}"));
    assert_eq!(twice, once);
}

#[test]
fn step_decay_matches_steplr() {
    let c = compiled("lr = step(0.1, every: 30 steps, factor: 0.1)");
    close(value(&c, "lr", 0), 0.1);
    close(value(&c, "lr", 29), 0.1);
    // 0.1 * 0.1^floor(30/30) = 0.01
    close(value(&c, "lr", 30), 0.1 * 0.1);
    // 0.1 * 0.1^floor(65/30) = 0.1 * 0.01
    close(value(&c, "lr", 65), 0.1 * 0.1 * 0.1);
}

#[test]
fn exponential_and_inverse_time_match_their_closed_forms() {
    let c = compiled("lr = exponential(0.1, factor: 0.95, every: 1 step)\nmomentum = inverse_time(0.5, rate: 0.5, every: 2 steps)");
    // 0.1 * 0.95^3 = 0.0857375
    close(value(&c, "lr", 3), 0.085_737_5);
    // 0.5 / (1 + 0.5 * 6 / 2) = 0.5 / 2.5 = 0.2
    close(value(&c, "momentum", 6), 0.2);
}

#[test]
fn warmup_then_cosine_matches_hugging_face_cosine_with_warmup() {
    let c = compiled(
        "horizon 100 steps\nlr = linear(0.001 -> 0.1, over: 10 steps) then cosine(0.1 -> 0)",
    );
    close(value(&c, "lr", 0), 0.001);
    // 0.001 + (0.1 - 0.001) * 5 / 10 = 0.0505
    close(value(&c, "lr", 5), 0.0505);
    close(value(&c, "lr", 10), 0.1);
    // progress (55 - 10) / 90 = 0.5: 0.1 * (1 + cos(pi/2)) / 2 = 0.05
    close(value(&c, "lr", 55), 0.05);
    // progress 80/90: 0.05 * (1 + cos(8pi/9)) = 0.05 * (1 - 0.9396926207859084)
    close(value(&c, "lr", 90), 0.05 * (1.0 - 0.939_692_620_785_908_4));
    // at and after the horizon the cosine holds its end value
    assert_eq!(value(&c, "lr", 100), 0.0);
    assert_eq!(value(&c, "lr", 150), 0.0);
}

#[test]
fn units_convert_to_steps() {
    let c = compiled("epoch = 10 steps\nbatch = 32\nhorizon 5 epochs\nlr = linear(0 -> 1, over: 1 epoch) then linear(1 -> 0, over: 320 samples) then constant(0)\nmomentum = linear(0 -> 1, over: 50%)");
    assert_eq!(c.graph.horizon, Some(50.0));
    // 1 epoch = 10 steps
    close(value(&c, "lr", 5), 0.5);
    // 320 samples / 32 per step = 10 steps, starting at step 10
    close(value(&c, "lr", 15), 0.5);
    assert_eq!(value(&c, "lr", 25), 0.0);
    // 50% of 50 steps = 25 steps
    close(value(&c, "momentum", 5), 0.2);
}

#[test]
fn command_line_options_override_the_script() {
    let options = CompileOptions {
        steps_per_epoch: Some(4.0),
        batch_size: None,
        ..CompileOptions::default()
    };
    let c = compiled_with(
        "epoch = 10 steps\nlr = step(1, every: 1 epoch, factor: 0.5)",
        &options,
    );
    // 4 steps per epoch: 1 * 0.5^floor(8/4) = 0.25
    close(value(&c, "lr", 8), 0.25);
}

#[test]
fn lets_arithmetic_and_min_max_clamp() {
    let c = compiled("let peak = 2^-3\nlet warm = 4 steps\nlr = min(linear(0 -> peak, over: warm) then constant(peak), 0.1)\nmomentum = clamp(0.5 + linear(0 -> 1, over: 10 steps), 0.6, 0.9)\nweight_decay = -(-1e-4) * 2");
    // 0.125 * 2/4 = 0.0625 (below the 0.1 cap)
    close(value(&c, "lr", 2), 0.0625);
    // later the 0.125 plateau is capped at 0.1
    close(value(&c, "lr", 7), 0.1);
    // 0.5 + 0 clamps up to 0.6; 0.5 + 0.5 = 1.0 clamps down to 0.9
    close(value(&c, "momentum", 0), 0.6);
    close(value(&c, "momentum", 5), 0.9);
    close(value(&c, "weight_decay", 0), 2e-4);
}

#[test]
fn onecycle_adds_the_inverse_momentum_cycle_like_pytorch() {
    let c = compiled("horizon 100 steps\nlr = onecycle(peak: 0.1, over: 100 steps)");
    // initial lr = 0.1 / 25
    close(value(&c, "lr", 0), 0.004);
    // phase 1 ends at 0.3 * 100 - 1 = 29
    close(value(&c, "lr", 29), 0.1);
    close(value(&c, "momentum", 0), 0.95);
    close(value(&c, "momentum", 29), 0.85);
    close(value(&c, "momentum", 99), 0.95);
    // an explicit momentum wins, and cycle_momentum: false turns the cycle off
    let explicit = compiled("lr = onecycle(peak: 0.1, over: 100 steps)\nmomentum = 0.9");
    close(value(&explicit, "momentum", 29), 0.9);
    let off = compiled("lr = onecycle(peak: 0.1, over: 100 steps, cycle_momentum: false)");
    assert!(off.graph.output("momentum").is_none());
}

#[test]
fn restarts_follow_sgdr_periods() {
    let c = compiled("lr = restarts(cosine(0.1 -> 0), period: 10 steps, mult: 2)");
    close(value(&c, "lr", 0), 0.1);
    // second period starts at 10 and lasts 20: T_cur = 10 of 20 → 0.05
    close(value(&c, "lr", 10), 0.1);
    close(value(&c, "lr", 20), 0.05);
    close(value(&c, "lr", 30), 0.1);
}

#[test]
fn a_schedule_may_drive_any_hyperparameter() {
    let c = compiled("horizon 10 steps\nmomentum = linear(0.85 -> 0.95, over: 10 steps)\nweight_decay = cosine(1e-4 -> 0)\nlr = 0.1");
    let names: Vec<&str> = c.graph.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["momentum", "weight_decay", "lr"]);
    close(value(&c, "momentum", 5), 0.9);
    close(value(&c, "weight_decay", 5), 5e-5);
}

#[test]
fn later_lets_are_evaluated_with_units_declared_anywhere() {
    // The epoch length is declared after its use in a let.
    let c = compiled(
        "let warm = 2 epochs\nlr = linear(0 -> 1, over: warm) then constant(1)\nepoch = 5 steps",
    );
    close(value(&c, "lr", 5), 0.5);
}

#[test]
fn unused_lets_warn_but_compile() {
    let c = compiled("let spare = 3\nlr = 0.1");
    assert_eq!(c.warnings.len(), 1);
    assert!(c.warnings[0].message.contains("never used"));
    let quiet = compiled("let _spare = 3\nlr = 0.1");
    assert!(quiet.warnings.is_empty());
}

#[test]
fn arithmetic_keeps_the_length_where_then_may_take_over() {
    // A constant factor keeps the schedule's length: the hand-over is at step 10.
    let c = compiled(
        "horizon 30 steps\nlr = 2 * linear(0 -> 0.05, over: 10 steps) then constant(0.01)",
    );
    close(value(&c, "lr", 5), 0.05);
    close(value(&c, "lr", 10), 0.01);
    // Two bounded schedules end when the longer one ends (step 20).
    let c = compiled("horizon 30 steps\nlr = linear(0 -> 1, over: 10 steps) * linear(1 -> 1, over: 20 steps) then constant(0.5)");
    close(value(&c, "lr", 15), 1.0);
    close(value(&c, "lr", 20), 0.5);
}

#[test]
fn then_after_an_unbounded_combination_is_an_error() {
    let text = "horizon 30 steps\nlr = linear(0 -> 1, over: 10 steps) * step(1, every: 5 steps) then constant(0.5)";
    let report = regimen_dsl::check(
        &SourceFile::new("t.regimen", text),
        &CompileOptions::default(),
    );
    assert!(report.to_string().contains("never ends"), "{report}");
}
