//! The facade's public API: script (file or string) → `Trace`, and its errors.

use regimen::{trace_file, trace_source, Error, TraceOptions, SNAPSHOT_SIGNIFICANT_DIGITS};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const WARMUP_COSINE: &str =
    "horizon 100 steps\nlr = linear(0.001 -> 0.1, over: 10 steps) then cosine(0.1 -> 0)\n";

#[test]
fn a_string_traces_to_its_horizon() -> TestResult {
    let trace = trace_source("warmup.regimen", WARMUP_COSINE, &TraceOptions::default())?;
    assert_eq!(trace.columns, ["lr"]);
    assert_eq!(trace.records.len(), 100);
    let lr = trace.column("lr").ok_or("no lr")?;
    assert_eq!(lr[0], 0.001);
    assert!((lr[10] - 0.1).abs() < 1e-15);
    assert!((lr[55] - 0.05).abs() < 1e-15);
    Ok(())
}

#[test]
fn a_file_traces_like_its_text() -> TestResult {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/warmup_cosine.regimen"
    );
    let options = TraceOptions::default().with_every(10);
    let from_file = trace_file(path, &options)?;
    let from_text = trace_source("x", &std::fs::read_to_string(path)?, &options)?;
    assert_eq!(from_file, from_text);
    let steps: Vec<u64> = from_file.records.iter().map(|r| r.step).collect();
    assert_eq!(steps, [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99]);
    Ok(())
}

#[test]
fn steps_override_the_horizon() -> TestResult {
    let trace = trace_source("w", WARMUP_COSINE, &TraceOptions::default().with_steps(5))?;
    assert_eq!(trace.records.len(), 5);
    Ok(())
}

#[test]
fn no_horizon_and_no_steps_is_a_typed_error() {
    let result = trace_source(
        "step.regimen",
        "lr = step(0.1, every: 30 steps, factor: 0.1)",
        &TraceOptions::default(),
    );
    match result {
        Err(Error::MissingSteps { name }) => assert_eq!(name, "step.regimen"),
        other => panic!("expected MissingSteps, got {other:?}"),
    }
}

#[test]
fn a_missing_file_names_its_path() {
    match trace_file("no/such/script.regimen", &TraceOptions::default()) {
        Err(error @ Error::Io { .. }) => {
            assert_eq!(error.to_string(), "cannot read `no/such/script.regimen`");
            let full = error.to_string_with_causes();
            assert!(
                full.starts_with("cannot read `no/such/script.regimen`: "),
                "{full}"
            );
        }
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn a_compile_error_carries_the_rendered_report() {
    match trace_source(
        "bad.regimen",
        "horizon 10 steps\nlr = cosin(0.1 -> 0)\n",
        &TraceOptions::default(),
    ) {
        Err(Error::Compile(report)) => {
            assert!(report.has_errors());
            let text = report.to_string();
            assert!(text.contains("bad.regimen:2:6"), "{text}");
            assert_eq!(Error::Compile(report).to_string(), text);
        }
        other => panic!("expected Compile, got {other:?}"),
    }
}

#[test]
fn epochs_come_from_the_options() -> TestResult {
    let script = "horizon 3 epochs\nlr = step(1, every: 1 epoch, factor: 0.5)\n";
    assert!(matches!(
        trace_source("e", script, &TraceOptions::default()),
        Err(Error::Compile(_))
    ));
    let trace = trace_source(
        "e",
        script,
        &TraceOptions::default().with_steps_per_epoch(2.0),
    )?;
    assert_eq!(
        trace.column("lr").ok_or("no lr")?,
        [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    );
    Ok(())
}

#[test]
fn traces_serialize_as_records_and_round_stably() -> TestResult {
    let trace = trace_source("w", WARMUP_COSINE, &TraceOptions::default().with_steps(12))?
        .rounded(SNAPSHOT_SIGNIFICANT_DIGITS);
    let json = serde_json::to_value(&trace)?;
    assert_eq!(json[0], serde_json::json!({"step": 0, "lr": 0.001}));
    assert_eq!(json[11]["step"], 11);
    // 0.1 * (1 + cos(pi / 90)) / 2 to 9 significant digits.
    assert_eq!(json[11]["lr"], 0.0999695414);
    Ok(())
}
