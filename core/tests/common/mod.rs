//! Assertions shared by the core's integration tests.

// Each test file uses a different subset.
#![allow(dead_code)]

/// Relative tolerance 1e-12; an expected 0 must be exactly 0.
#[track_caller]
pub fn close(actual: f64, expected: f64) {
    close_within(actual, expected, 1e-12);
}

/// `actual` within `tolerance` relative of `expected`; an expected 0 must be exactly 0.
#[track_caller]
pub fn close_within(actual: f64, expected: f64, tolerance: f64) {
    if expected == 0.0 {
        assert_eq!(actual, 0.0, "expected exactly 0");
        return;
    }
    let rel = ((actual - expected) / expected).abs();
    assert!(
        rel <= tolerance,
        "actual {actual:e} != expected {expected:e} (relative error {rel:e})"
    );
}
