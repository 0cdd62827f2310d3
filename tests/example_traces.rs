//! Every script in `examples/` pinned as a snapshot of its trace, through the same
//! `regimen::assert_trace_snapshot!` macro users call in their own crates. The
//! snapshots (`tests/snapshots/example_traces__<name>.snap`) are CSV, one line per
//! step, values rounded to `regimen::SNAPSHOT_SIGNIFICANT_DIGITS` digits: review a
//! changed one line by line against the schedule's formula before accepting it.
#![cfg(feature = "snapshot")]

use regimen::assert_trace_snapshot;

#[test]
fn compress_powersgd() {
    // Every compression argument is a constant: the trace holds the lr schedule.
    assert_trace_snapshot!("examples/compress_powersgd.regimen", every = 100);
}

#[test]
fn compress_topk_ef() {
    // 10 epochs of 100 steps: every 50th step shows each epoch's top-k ratio.
    assert_trace_snapshot!("examples/compress_topk_ef.regimen", every = 50);
}

#[test]
fn cosine_annealing() {
    assert_trace_snapshot!("examples/cosine_annealing.regimen");
}

#[test]
fn cyclic() {
    assert_trace_snapshot!("examples/cyclic.regimen");
}

// ---- issue 7: the digits scripts of `regimen run` (45 steps per epoch, 30 epochs):
// one record per epoch shows each schedule's value at the epoch boundaries.

#[test]
fn digits() {
    assert_trace_snapshot!("examples/digits.regimen", every = 45);
}

#[test]
fn digits_cosine() {
    assert_trace_snapshot!("examples/digits_cosine.regimen", every = 45);
}

#[test]
fn digits_exponential() {
    assert_trace_snapshot!("examples/digits_exponential.regimen", every = 45);
}

#[test]
fn digits_f16() {
    assert_trace_snapshot!("examples/digits_f16.regimen", every = 45);
}

#[test]
fn digits_inverse_time() {
    assert_trace_snapshot!("examples/digits_inverse_time.regimen", every = 45);
}

#[test]
fn digits_layerwise() {
    assert_trace_snapshot!("examples/digits_layerwise.regimen", every = 45);
}

#[test]
fn digits_powersgd() {
    assert_trace_snapshot!("examples/digits_powersgd.regimen", every = 45);
}

#[test]
fn digits_qsgd() {
    assert_trace_snapshot!("examples/digits_qsgd.regimen", every = 45);
}

#[test]
fn digits_step() {
    assert_trace_snapshot!("examples/digits_step.regimen", every = 45);
}

#[test]
fn digits_topk_ef() {
    assert_trace_snapshot!("examples/digits_topk_ef.regimen", every = 45);
}

#[test]
fn exponential_decay() {
    // No horizon in the script: the step count comes from the test.
    assert_trace_snapshot!("examples/exponential_decay.regimen", steps = 60);
}

#[test]
fn inverse_time_decay() {
    assert_trace_snapshot!("examples/inverse_time_decay.regimen", steps = 60);
}

#[test]
fn lamb_bert() {
    assert_trace_snapshot!("examples/lamb_bert.regimen", every = 50);
}

#[test]
fn lars_large_batch() {
    // 90 epochs of 156 steps: one record per epoch.
    assert_trace_snapshot!("examples/lars_large_batch.regimen", every = 156);
}

#[test]
fn mixed_precision_f16() {
    assert_trace_snapshot!("examples/mixed_precision_f16.regimen", every = 100);
}

#[test]
fn mlp_adamw() {
    assert_trace_snapshot!("examples/mlp_adamw.regimen", every = 10);
}

#[test]
fn multistep() {
    // 90 epochs of 20 steps: every 10th step still shows each drop.
    assert_trace_snapshot!("examples/multistep.regimen", every = 10);
}

#[test]
fn onecycle() {
    assert_trace_snapshot!("examples/onecycle.regimen");
}

#[test]
fn polynomial() {
    assert_trace_snapshot!("examples/polynomial.regimen");
}

#[test]
fn sgdr() {
    assert_trace_snapshot!("examples/sgdr.regimen");
}

#[test]
fn step_decay() {
    assert_trace_snapshot!("examples/step_decay.regimen", steps = 100);
}

#[test]
fn transformer() {
    assert_trace_snapshot!("examples/transformer.regimen");
}

#[test]
fn warmup_cosine() {
    assert_trace_snapshot!("examples/warmup_cosine.regimen", steps = 100);
}

#[test]
fn wsd() {
    assert_trace_snapshot!("examples/wsd.regimen");
}

// ---- issue 6: batch-size control. The synthetic-problem scripts run on the quadratic
// problem (a snapshot per built-in controller: the batch, samples seen, the schedules'
// clock, the lr factor, the noise scale and the gain of each step); the digits ones
// are pinned as schedules, one record per epoch of the base batch.

#[test]
fn batch_fixed() {
    // lr_factor 4 (linear rule, 128 / 32); 200 base steps = 50 steps of 128.
    assert_trace_snapshot!(
        "examples/batch_fixed.regimen",
        problem = "quadratic",
        every = 5
    );
}

#[test]
fn batch_ramp() {
    assert_trace_snapshot!(
        "examples/batch_ramp.regimen",
        problem = "quadratic",
        every = 5
    );
}

#[test]
fn batch_step_ramp() {
    assert_trace_snapshot!(
        "examples/batch_step_ramp.regimen",
        problem = "quadratic",
        every = 10
    );
}

#[test]
fn batch_loss_rule() {
    assert_trace_snapshot!(
        "examples/batch_loss_rule.regimen",
        problem = "quadratic",
        every = 2
    );
}

#[test]
fn batch_gns() {
    assert_trace_snapshot!(
        "examples/batch_gns.regimen",
        problem = "quadratic",
        every = 5
    );
}

#[test]
fn batch_gns_two_workers() {
    // The small batch is each worker's half as well as its micro-batches.
    assert_trace_snapshot!(
        "examples/batch_gns.regimen",
        problem = "quadratic",
        workers = 2,
        every = 5,
        name = "batch_gns_two_workers",
    );
}

#[test]
fn batch_adascale() {
    assert_trace_snapshot!(
        "examples/batch_adascale.regimen",
        problem = "quadratic",
        every = 10
    );
}

#[test]
fn digits_ramp() {
    assert_trace_snapshot!("examples/digits_ramp.regimen", every = 45);
}

#[test]
fn digits_loss_rule() {
    assert_trace_snapshot!("examples/digits_loss_rule.regimen", every = 45);
}

#[test]
fn digits_gns() {
    assert_trace_snapshot!("examples/digits_gns.regimen", every = 45);
}

#[test]
fn digits_adascale() {
    assert_trace_snapshot!("examples/digits_adascale.regimen", every = 45);
}

/// The options of the macro: `steps_per_epoch` overrides the script's epoch length
/// and `name` the snapshot's name.
#[test]
fn multistep_with_shorter_epochs() {
    assert_trace_snapshot!(
        "examples/multistep.regimen",
        steps_per_epoch = 2,
        name = "multistep_2_steps_per_epoch",
    );
}

/// Every example has a test above: a new script in `examples/` must get one.
#[test]
fn every_example_is_snapshot_tested() -> Result<(), Box<dyn std::error::Error>> {
    let this_file = include_str!("example_traces.rs");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "regimen") {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !this_file.contains(&format!("\"examples/{name}\"")) {
                missing.push(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "examples without a snapshot test: {missing:?}"
    );
    Ok(())
}
