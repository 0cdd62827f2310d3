//! The facade's public API: script (file or string) → `Trace`, a `Script` bound to
//! parameters and stepped, runtime traces on built-in problems, and the typed errors.

use regimen::{
    trace_file, trace_problem_source, trace_source, BackendChoice, BackendError, Error, HostTensor,
    HostTensorMut, Metrics, ParamSpec, ProblemKind, ProblemOptions, RuntimeError, Script,
    TraceOptions, SNAPSHOT_SIGNIFICANT_DIGITS,
};

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

// ------------------------------------------------------------ scripts driving a loop

const SGD: &str = "lr = 0.1\noptimizer sgd(momentum: 0.9)\n";

#[test]
fn a_script_binds_and_steps_like_torch_sgd() -> TestResult {
    let script = Script::from_source("sgd.regimen", SGD, &Default::default())?;
    assert!(script.warnings().is_none());
    let specs = [ParamSpec::new("w", &[2])];
    let mut w = vec![1.0f32, -2.0];
    let mut stepper = script.bind(&specs, &[HostTensor::F32(&w)])?;
    let grad = [0.5f32, 0.25];
    for _ in 0..2 {
        stepper.step(
            &mut [HostTensorMut::F32(&mut w)],
            &[HostTensor::F32(&grad)],
            &Metrics::default(),
        )?;
    }
    // torch.optim.SGD(momentum=0.9), constant gradient g:
    //   step 1: buf = g,              w = w0 − 0.1·g
    //   step 2: buf = 0.9·g + g = 1.9g, w = w0 − 0.1·g − 0.19·g = w0 − 0.29·g
    // w0 = 1:  1 − 0.29·0.5  = 0.855;  w0 = −2: −2 − 0.29·0.25 = −2.0725
    assert!((w[0] - 0.855).abs() < 1e-6, "{w:?}");
    assert!((w[1] + 2.0725).abs() < 1e-6, "{w:?}");
    assert_eq!(stepper.updates(), 2);
    Ok(())
}

#[test]
fn a_parameter_list_that_does_not_fit_is_a_typed_error() -> TestResult {
    let script = Script::from_source("sgd.regimen", SGD, &Default::default())?;
    let values = [0.0f32; 3];
    match script.bind(&[ParamSpec::new("w", &[2])], &[HostTensor::F32(&values)]) {
        Err(Error::Runtime(RuntimeError::TensorMismatch { name, .. })) => assert_eq!(name, "w"),
        other => panic!("expected a tensor mismatch, got {:?}", other.err()),
    }
    Ok(())
}

#[test]
fn the_binding_warns_about_a_group_that_matches_nothing() -> TestResult {
    let text = "lr = 0.1\ngroup \"embed.*\" { lr *= 0.1 }\n";
    let script = Script::from_source("groups.regimen", text, &Default::default())?;
    let values = [0.0f32; 2];
    let stepper = script.bind(&[ParamSpec::new("w", &[2])], &[HostTensor::F32(&values)])?;
    let warnings = &stepper.binding().warnings;
    assert!(
        warnings.iter().any(|w| w.contains("embed.*")),
        "{warnings:?}"
    );
    Ok(())
}

#[test]
fn a_script_traces_like_the_free_functions() -> TestResult {
    let script = Script::from_source("w", WARMUP_COSINE, &Default::default())?;
    let options = TraceOptions::default().with_every(7);
    assert_eq!(
        script.trace(&options)?,
        trace_source("w", WARMUP_COSINE, &options)?
    );
    let problem = ProblemOptions::new(ProblemKind::Quadratic).with_seed(4);
    let options = TraceOptions::default().with_steps(20);
    let mut sgd = WARMUP_COSINE.to_string();
    sgd.push_str("optimizer sgd\n");
    let script = Script::from_source("w", &sgd, &Default::default())?;
    assert_eq!(
        script.trace_problem(&options, &problem)?.to_csv(),
        trace_problem_source("w", &sgd, &options, &problem)?.to_csv()
    );
    Ok(())
}

#[test]
fn the_arrayfire_backend_in_a_build_without_it_is_a_typed_error() {
    let problem = ProblemOptions::new(ProblemKind::Logistic).with_backend(BackendChoice::ArrayFire);
    match trace_problem_source("w", WARMUP_COSINE, &TraceOptions::default(), &problem) {
        Err(Error::Backend(BackendError::Unavailable { backend, .. })) => {
            assert_eq!(backend, "arrayfire")
        }
        other => panic!("expected Backend(Unavailable), got {other:?}"),
    }
}

#[test]
fn an_unknown_problem_in_a_snapshot_request_is_a_typed_error() {
    let mut request = regimen::SnapshotRequest::new("examples/mlp_adamw.regimen");
    request.problem = Some("rosenbrock".to_string());
    match request.render(env!("CARGO_MANIFEST_DIR")) {
        Err(Error::Problem(error)) => assert!(error.to_string().contains("rosenbrock")),
        other => panic!("expected Problem, got {other:?}"),
    }
}
