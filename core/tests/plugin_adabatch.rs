//! The AdaBatch plugin loaded through the ABI decides exactly like the same code in
//! process, on a sequence of metrics, and its state round-trips. (Its own test binary:
//! two plugin crates linked into one binary would both define the entry symbol.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod plugin_support;

use regimen_core::loader::Plugin;
use regimen_core::plugin::{ArgValue, Args, BatchController, BatchMetrics};

fn metrics(step: u64, samples: u64, batch: u64) -> BatchMetrics {
    BatchMetrics {
        samples_per_epoch: Some(500),
        loss: Some(1.0 / (step as f64 + 1.0)),
        ..BatchMetrics::new(step, samples, batch)
    }
}

#[test]
fn adabatch_through_the_abi_decides_like_in_process() {
    let plugin = Plugin::load(&plugin_support::library("regimen-adabatch"), None).unwrap();
    let args = Args::new()
        .with("every", ArgValue::Number(2.0))
        .with("factor", ArgValue::Number(2.0))
        .with("max", ArgValue::Number(256.0));
    let mut loaded = plugin.controller("adabatch", &args).unwrap();
    let mut local = regimen_adabatch::AdaBatch::new(&args).unwrap();
    let (mut batch, mut samples) = (32u64, 0u64);
    let mut seen = Vec::new();
    for step in 0..200 {
        samples += batch;
        let m = metrics(step, samples, batch);
        let a = loaded.observe(&m).unwrap();
        let b = local.observe(&m).unwrap();
        assert_eq!(a, b, "step {step}");
        batch = a.batch;
        seen.push(batch);
    }
    // It grew, in factors of 2, and stopped at the cap.
    assert_eq!(seen[0], 32);
    assert!(seen.contains(&64) && seen.contains(&128));
    assert_eq!(*seen.last().unwrap(), 256);
    let (mut sa, mut sb) = (Vec::new(), Vec::new());
    loaded.save_state(&mut sa).unwrap();
    local.save_state(&mut sb).unwrap();
    assert_eq!(sa, sb);
    let mut fresh = plugin.controller("adabatch", &args).unwrap();
    fresh.load_state(&sa).unwrap();
    assert_eq!(
        fresh.observe(&metrics(200, samples, batch)).unwrap(),
        local.observe(&metrics(200, samples, batch)).unwrap()
    );
    let error = fresh.load_state(&[1]).unwrap_err().to_string();
    assert!(
        error.contains("adabatch keeps 8 bytes of state, got 1"),
        "{error}"
    );
}

#[test]
fn adabatch_passes_the_controller_conformance_suite_in_process_and_through_the_abi() {
    use regimen_core::plugin::conformance::check_controller;
    let args = Args::new()
        .with("every", ArgValue::Number(1.0))
        .with("factor", ArgValue::Number(2.0))
        .with("max", ArgValue::Number(512.0));
    check_controller(
        || Box::new(regimen_adabatch::AdaBatch::new(&args).unwrap()),
        32,
    )
    .unwrap();
    let plugin = Plugin::load(&plugin_support::library("regimen-adabatch"), None).unwrap();
    check_controller(
        || Box::new(plugin.controller("adabatch", &args).unwrap()),
        32,
    )
    .unwrap();
}
