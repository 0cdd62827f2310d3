//! Every script under `tests/bad/` is rejected (or warned about) with a rendered
//! diagnostic pinned as a snapshot; hostile input (deep nesting, random bytes) gives
//! an error, never a crash.

use regimen_dsl::{check, compile, CompileOptions, SourceFile};

mod common;

/// The bad scripts as (name without extension, text).
fn bad_scripts() -> Vec<(String, String)> {
    common::scripts_in("tests/bad")
        .into_iter()
        .map(|(name, text)| (name.trim_end_matches(".regimen").to_string(), text))
        .collect()
}

#[test]
fn there_are_at_least_25_bad_scripts() {
    assert!(bad_scripts().len() >= 25, "found {}", bad_scripts().len());
}

#[test]
fn every_bad_script_is_rejected_with_a_located_diagnostic() {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("snapshots/bad");
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| {
        for (name, text) in bad_scripts() {
            let file = SourceFile::new(format!("{name}.regimen"), text);
            let report = check(&file, &CompileOptions::default());
            assert!(report.has_errors(), "{name} was accepted");
            let rendered = report.to_string();
            assert!(
                rendered.contains(&format!("--> {name}.regimen:")),
                "{name}: no file:line:col in\n{rendered}"
            );
            insta::assert_snapshot!(name, rendered);
        }
    });
}

#[test]
fn all_semantic_errors_are_reported_not_only_the_first() {
    let file = SourceFile::new(
        "many.regimen",
        "lr = cosin(0.1)\nmomentum = 2\nweight_decay = step(0.1, every: 5)\nbeta1 = linear(0 -> q, over: 3 steps)\n",
    );
    let report = check(&file, &CompileOptions::default());
    assert_eq!(report.error_count(), 4, "{report}");
}

#[test]
fn ten_thousand_nested_parentheses_are_an_error_not_a_stack_overflow() {
    let text = format!("lr = {}0.1{}\n", "(".repeat(10_000), ")".repeat(10_000));
    let report = check(
        &SourceFile::new("deep.regimen", text),
        &CompileOptions::default(),
    );
    assert!(report.has_errors());
    assert!(
        report.to_string().contains("nesting is too deep"),
        "{report}"
    );
}

#[test]
fn long_operator_chains_and_negations_are_bounded() {
    for text in [
        format!("lr = {}1\n", "-".repeat(100_000)),
        format!("lr = 1{}\n", " + 1".repeat(100_000)),
        format!("lr = 2{}\n", "^1".repeat(100_000)),
        format!(
            "lr = constant(1){}\n",
            " then constant(1, over: 1 step)".repeat(5_000)
        ),
    ] {
        let report = check(
            &SourceFile::new("long.regimen", text),
            &CompileOptions::default(),
        );
        assert!(report.has_errors(), "{report}");
    }
}

#[test]
fn nesting_within_the_limit_still_compiles() {
    let text = format!("lr = {}0.1{}\n", "(".repeat(40), ")".repeat(40));
    let compiled = compile(
        &SourceFile::new("ok.regimen", text),
        &CompileOptions::default(),
    );
    assert!(compiled.is_ok());
}

/// xorshift64*: a fixed-seed generator so the fuzz inputs are the same every run.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

#[test]
fn random_bytes_and_mangled_examples_never_panic() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let alphabet: Vec<char> =
        "lr=cosine(0.1->0,over:10 steps)then[]{}#\"\\\n -+*/^%<>letwith.epochs,"
            .chars()
            .collect();
    for round in 0..3000 {
        let len = (next(&mut state) % 120) as usize;
        let text: String = if round % 2 == 0 {
            let bytes: Vec<u8> = (0..len).map(|_| next(&mut state) as u8).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            (0..len)
                .map(|_| alphabet[(next(&mut state) % alphabet.len() as u64) as usize])
                .collect()
        };
        let file = SourceFile::new("fuzz.regimen", text);
        let report = check(&file, &CompileOptions::default());
        // Rendering must not panic either, whatever the spans.
        let _ = report.to_string();
        let _ = regimen_dsl::format(&file);
    }
}
