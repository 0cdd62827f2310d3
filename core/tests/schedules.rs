//! Every schedule against values computed by hand from the reference libraries'
//! closed forms (PyTorch `lr_scheduler`, optax, Hugging Face `optimization`).
//!
//! Expected values are written as literals or as the arithmetic of the reference
//! formula with known constants (cos(pi/2) = 0, cos(pi/3) = 1/2, …); the code under
//! test is never used to compute an expectation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use regimen_core::{Anneal, CyclicMode, DecayShape, Schedule, WarmupShape};

const INF: f64 = f64::INFINITY;

mod common;
use common::close;

/// Bit-exact comparison (for values that are exact in binary floating point).
#[track_caller]
fn exact(actual: f64, expected: f64) {
    assert_eq!(
        actual.to_bits(),
        expected.to_bits(),
        "{actual:e} != {expected:e}"
    );
}

// ---------------------------------------------------------------- constant

#[test]
fn constant_ignores_step_and_length() {
    let s = Schedule::Constant { value: 0.3 };
    exact(s.value(0.0, INF), 0.3);
    exact(s.value(1e9, INF), 0.3);
    exact(s.value(5.0, 10.0), 0.3);
    exact(s.value(50.0, 10.0), 0.3);
    assert!(!s.needs_length());
}

// ---------------------------------------------------------------- StepLR

#[test]
fn step_matches_steplr() {
    // StepLR(lr=0.1, step_size=30, gamma=0.1): 0.1 * 0.1^floor(t/30)
    let s = Schedule::Step {
        init: 0.1,
        every: 30.0,
        factor: 0.1,
    };
    exact(s.value(0.0, INF), 0.1); // 0.1 * 0.1^0
    exact(s.value(29.0, INF), 0.1); // floor(29/30) = 0
    close(s.value(30.0, INF), 0.01); // 0.1 * 0.1^1, exactly at the decay
    close(s.value(45.0, INF), 0.01); // 0.1 * 0.1^floor(45/30) = 0.01
    close(s.value(59.0, INF), 0.01); // floor(59/30) = 1
    close(s.value(60.0, INF), 0.001); // 0.1 * 0.1^2
    close(s.value(90.0, INF), 1e-4); // 0.1 * 0.1^3
                                     // The length is irrelevant.
    close(s.value(45.0, 10.0), 0.01);
}

#[test]
fn step_with_half_factor_is_exact() {
    // 1 * 0.5^floor(t/10): powers of two are exact.
    let s = Schedule::Step {
        init: 1.0,
        every: 10.0,
        factor: 0.5,
    };
    exact(s.value(9.0, INF), 1.0);
    exact(s.value(10.0, INF), 0.5);
    exact(s.value(35.0, INF), 0.125); // 0.5^3
}

// ---------------------------------------------------------------- MultiStepLR

#[test]
fn multistep_counts_milestones_at_or_before_t() {
    // MultiStepLR(lr=0.1, milestones=[30, 80], gamma=0.1):
    // 0.1 * 0.1^bisect_right([30, 80], t)
    let s = Schedule::MultiStep {
        init: 0.1,
        milestones: vec![30.0, 80.0],
        factor: 0.1,
    };
    exact(s.value(0.0, INF), 0.1); // no milestone <= 0
    exact(s.value(29.0, INF), 0.1); // no milestone <= 29
    close(s.value(30.0, INF), 0.01); // 30 <= 30: one milestone
    close(s.value(79.0, INF), 0.01); // one milestone
    close(s.value(80.0, INF), 0.001); // both
    close(s.value(10_000.0, INF), 0.001); // both, forever
}

#[test]
fn multistep_without_milestones_is_constant() {
    let s = Schedule::MultiStep {
        init: 0.5,
        milestones: vec![],
        factor: 0.1,
    };
    exact(s.value(0.0, INF), 0.5);
    exact(s.value(1e6, INF), 0.5);
}

// ---------------------------------------------------------------- exponential

#[test]
fn exponential_continuous() {
    // optax exponential_decay(1.0, transition_steps=10, decay_rate=0.5):
    // 1 * 0.5^(t/10)
    let s = Schedule::Exponential {
        init: 1.0,
        factor: 0.5,
        every: 10.0,
        staircase: false,
    };
    exact(s.value(0.0, INF), 1.0); // 0.5^0
    close(s.value(5.0, INF), 0.5f64.sqrt()); // 0.5^0.5 = 0.70710678…
    exact(s.value(10.0, INF), 0.5); // 0.5^1
    close(s.value(25.0, INF), 0.25 * 0.5f64.sqrt()); // 0.5^2.5 = 0.5^2 * 0.5^0.5
}

#[test]
fn exponential_staircase() {
    // staircase: 1 * 0.5^floor(t/10)
    let s = Schedule::Exponential {
        init: 1.0,
        factor: 0.5,
        every: 10.0,
        staircase: true,
    };
    exact(s.value(0.0, INF), 1.0);
    exact(s.value(5.0, INF), 1.0); // floor(0.5) = 0
    exact(s.value(9.0, INF), 1.0); // floor(0.9) = 0
    exact(s.value(10.0, INF), 0.5); // floor(1) = 1
    exact(s.value(25.0, INF), 0.25); // floor(2.5) = 2
}

#[test]
fn exponential_matches_exponentiallr() {
    // ExponentialLR(lr=0.1, gamma=0.9) is every = 1: 0.1 * 0.9^t
    let s = Schedule::Exponential {
        init: 0.1,
        factor: 0.9,
        every: 1.0,
        staircase: false,
    };
    close(s.value(3.0, INF), 0.1 * 0.729); // 0.9^3 = 0.729
}

// ---------------------------------------------------------------- inverse time

#[test]
fn inverse_time_continuous() {
    // 0.1 / (1 + 0.5 * t / 10)
    let s = Schedule::InverseTime {
        init: 0.1,
        rate: 0.5,
        every: 10.0,
        staircase: false,
    };
    exact(s.value(0.0, INF), 0.1); // 0.1 / 1
    close(s.value(5.0, INF), 0.08); // 0.1 / 1.25
    close(s.value(10.0, INF), 0.1 / 1.5); // 0.0666…
    close(s.value(30.0, INF), 0.04); // 0.1 / 2.5
}

#[test]
fn inverse_time_staircase() {
    // 0.1 / (1 + 0.5 * floor(t / 10))
    let s = Schedule::InverseTime {
        init: 0.1,
        rate: 0.5,
        every: 10.0,
        staircase: true,
    };
    exact(s.value(5.0, INF), 0.1); // floor(0.5) = 0
    close(s.value(10.0, INF), 0.1 / 1.5); // floor(1) = 1
    close(s.value(19.0, INF), 0.1 / 1.5); // floor(1.9) = 1
    close(s.value(20.0, INF), 0.05); // 0.1 / (1 + 0.5 * 2)
}

// ---------------------------------------------------------------- linear

#[test]
fn linear_clamps_at_length() {
    // optax linear_schedule(0.001, 0.1, 10): 0.001 + 0.099 * min(t, 10) / 10
    let s = Schedule::Linear {
        from: 0.001,
        to: 0.1,
    };
    exact(s.value(0.0, 10.0), 0.001);
    close(s.value(5.0, 10.0), 0.0505); // 0.001 + 0.099 * 0.5
    close(s.value(9.0, 10.0), 0.0901); // 0.001 + 0.099 * 0.9
    exact(s.value(10.0, 10.0), 0.1); // at len: exactly `to`
    exact(s.value(15.0, 10.0), 0.1); // held after len
    assert!(s.needs_length());
}

#[test]
fn linear_matches_linearlr() {
    // LinearLR(lr=0.05, start_factor=1/3, end_factor=1, total_iters=5) at t=2:
    // 0.05 * (1/3 + (1 - 1/3) * 2/5) = 0.05 * (5/15 + 4/15) = 0.05 * 9/15 = 0.03
    let s = Schedule::Linear {
        from: 0.05 / 3.0,
        to: 0.05,
    };
    close(s.value(2.0, 5.0), 0.03);
    close(s.value(5.0, 5.0), 0.05);
}

#[test]
fn linear_length_edge_cases() {
    let s = Schedule::Linear { from: 1.0, to: 2.0 };
    // Infinite length: 1 + 1 * t / inf = 1 forever.
    exact(s.value(1e9, INF), 1.0);
    // Zero length: already at the end (no 0/0).
    exact(s.value(0.0, 0.0), 2.0);
}

// ---------------------------------------------------------------- cosine

#[test]
fn cosine_matches_cosine_annealing() {
    // CosineAnnealingLR(lr=0.1, T_max=100, eta_min=0):
    // 0 + 0.1 * (1 + cos(pi * t / 100)) / 2
    let s = Schedule::Cosine { from: 0.1, to: 0.0 };
    close(s.value(0.0, 100.0), 0.1); // (1 + 1) / 2 = 1
    close(s.value(25.0, 100.0), 0.1 * (1.0 + 0.5f64.sqrt()) / 2.0); // cos(pi/4) = sqrt(1/2)
    close(s.value(50.0, 100.0), 0.05); // cos(pi/2) = 0
    close(s.value(75.0, 100.0), 0.1 * (1.0 - 0.5f64.sqrt()) / 2.0); // cos(3pi/4) = -sqrt(1/2)
    exact(s.value(100.0, 100.0), 0.0); // cos(pi) = -1
    exact(s.value(150.0, 100.0), 0.0); // held after len (optax)
}

#[test]
fn cosine_with_floor() {
    // eta_min = 0.01: 0.01 + 0.09 * (1 + cos(pi * t / 90)) / 2
    let s = Schedule::Cosine {
        from: 0.1,
        to: 0.01,
    };
    close(s.value(0.0, 90.0), 0.1);
    close(s.value(30.0, 90.0), 0.0775); // cos(pi/3) = 0.5: 0.01 + 0.09 * 0.75
    close(s.value(45.0, 90.0), 0.055); // cos(pi/2) = 0: 0.01 + 0.09 * 0.5
    close(s.value(60.0, 90.0), 0.0325); // cos(2pi/3) = -0.5: 0.01 + 0.09 * 0.25
    close(s.value(90.0, 90.0), 0.01);
    close(s.value(1000.0, 90.0), 0.01);
}

// ---------------------------------------------------------------- polynomial

#[test]
fn polynomial_matches_optax() {
    // optax polynomial_schedule(0.1, 0.001, power=2, transition_steps=100):
    // 0.099 * (1 - min(t, 100) / 100)^2 + 0.001
    let s = Schedule::Polynomial {
        from: 0.1,
        to: 0.001,
        power: 2.0,
    };
    close(s.value(0.0, 100.0), 0.1); // 0.099 * 1 + 0.001
    close(s.value(50.0, 100.0), 0.02575); // 0.099 * 0.25 + 0.001
    close(s.value(90.0, 100.0), 0.00199); // 0.099 * 0.01 + 0.001
    exact(s.value(100.0, 100.0), 0.001); // 0.099 * 0 + 0.001
    exact(s.value(200.0, 100.0), 0.001); // clamped
}

#[test]
fn polynomial_fractional_power_and_polynomiallr() {
    // power 0.5 at t=75 of 100: (1 - 0.75)^0.5 = 0.5 → 0.099 * 0.5 + 0.001 = 0.0505
    let s = Schedule::Polynomial {
        from: 0.1,
        to: 0.001,
        power: 0.5,
    };
    close(s.value(75.0, 100.0), 0.0505);
    // PolynomialLR(lr=0.1, total_iters=4, power=1): 0.1 * (1 - min(t, 4)/4)
    let s = Schedule::Polynomial {
        from: 0.1,
        to: 0.0,
        power: 1.0,
    };
    close(s.value(1.0, 4.0), 0.075); // 0.1 * 0.75
    exact(s.value(4.0, 4.0), 0.0);
    exact(s.value(9.0, 4.0), 0.0);
}

// ---------------------------------------------------------------- one cycle

fn onecycle(anneal: Anneal, three_phase: bool) -> Schedule {
    // PyTorch defaults: pct_start 0.3, div_factor 25, final_div_factor 1e4.
    Schedule::OneCycle {
        peak: 0.1,
        pct_start: 0.3,
        div_factor: 25.0,
        final_div_factor: 1e4,
        anneal,
        three_phase,
    }
}

fn onecycle_momentum(anneal: Anneal, three_phase: bool) -> Schedule {
    Schedule::OneCycleMomentum {
        base: 0.85,
        max: 0.95,
        pct_start: 0.3,
        anneal,
        three_phase,
    }
}

// total 100: initial = 0.1/25 = 0.004, min = 0.004/1e4 = 4e-7.
// Two phases end at 0.3*100 - 1 = 29 and 100 - 1 = 99.

#[test]
fn onecycle_cos_two_phase() {
    let s = onecycle(Anneal::Cos, false);
    let n = 100.0;
    // t=0: pct 0/29 = 0 → 0.1 + (0.004 - 0.1)/2 * (cos 0 + 1) = 0.004
    close(s.value(0.0, n), 0.004);
    // pct 14.5/29 = 0.5 → 0.1 + (0.004 - 0.1)/2 * (0 + 1) = 0.052
    close(s.value(14.5, n), 0.052);
    // t=29 is the end of phase 1 (t <= end_step): pct 1 → peak
    close(s.value(29.0, n), 0.1);
    // phase 2 from 29 to 99: t=64 → pct 35/70 = 0.5 → 4e-7 + (0.1 - 4e-7)/2
    close(s.value(64.0, n), 0.0500002);
    // t=99: pct 1 → min
    close(s.value(99.0, n), 4e-7);
    // Beyond total - 1 (PyTorch raises): held at min.
    close(s.value(100.0, n), 4e-7);
    close(s.value(1000.0, n), 4e-7);
    assert!(s.needs_length());
}

#[test]
fn onecycle_momentum_cos_two_phase() {
    let s = onecycle_momentum(Anneal::Cos, false);
    let n = 100.0;
    close(s.value(0.0, n), 0.95); // max_momentum
    close(s.value(14.5, n), 0.9); // 0.85 + (0.95 - 0.85)/2 * 1
    close(s.value(29.0, n), 0.85); // base_momentum at the peak lr
    close(s.value(64.0, n), 0.9); // halfway back: 0.95 + (0.85 - 0.95)/2
    close(s.value(99.0, n), 0.95);
    close(s.value(500.0, n), 0.95); // held
}

#[test]
fn onecycle_linear_two_phase() {
    let s = onecycle(Anneal::Linear, false);
    let n = 100.0;
    exact(s.value(0.0, n), 0.004); // (0.1 - 0.004) * 0 + 0.004
    close(s.value(14.5, n), 0.052); // 0.096 * 0.5 + 0.004
    close(s.value(10.0, n), 0.096 * 10.0 / 29.0 + 0.004);
    close(s.value(29.0, n), 0.1); // 0.096 * 1 + 0.004
                                  // First step of phase 2: pct (30 - 29)/70 → (4e-7 - 0.1) / 70 + 0.1
    close(s.value(30.0, n), (4e-7 - 0.1) / 70.0 + 0.1);
    close(s.value(64.0, n), 0.0500002); // (4e-7 - 0.1) * 0.5 + 0.1
                                        // (4e-7 - 0.1) * 1 + 0.1 cancels catastrophically in PyTorch's own formula
                                        // (3.99999999998e-7), so compare on the scale of the peak.
    let end = s.value(99.0, n);
    assert!((end - 4e-7).abs() <= 1e-12 * 0.1, "{end:e}");
    let held = s.value(200.0, n);
    assert_eq!(held.to_bits(), end.to_bits(), "held after the end");
}

#[test]
fn onecycle_momentum_linear_two_phase() {
    let s = onecycle_momentum(Anneal::Linear, false);
    let n = 100.0;
    exact(s.value(0.0, n), 0.95);
    close(s.value(14.5, n), 0.9); // (0.85 - 0.95) * 0.5 + 0.95
    close(s.value(29.0, n), 0.85);
    close(s.value(30.0, n), 0.1 / 70.0 + 0.85); // (0.95 - 0.85) * 1/70 + 0.85
    close(s.value(99.0, n), 0.95);
}

// Three phases end at 0.3*100 - 1 = 29, 2*0.3*100 - 2 = 58 and 99.

#[test]
fn onecycle_cos_three_phase() {
    let s = onecycle(Anneal::Cos, true);
    let n = 100.0;
    close(s.value(0.0, n), 0.004);
    close(s.value(29.0, n), 0.1); // end of phase 1
    close(s.value(43.5, n), 0.052); // pct (43.5-29)/29 = 0.5: 0.004 + 0.096/2
    close(s.value(58.0, n), 0.004); // end of phase 2: back to initial
    close(s.value(78.5, n), 0.0020002); // pct (78.5-58)/41 = 0.5: 4e-7 + (0.004-4e-7)/2
    close(s.value(99.0, n), 4e-7);
    close(s.value(150.0, n), 4e-7);
}

#[test]
fn onecycle_momentum_cos_three_phase() {
    let s = onecycle_momentum(Anneal::Cos, true);
    let n = 100.0;
    close(s.value(0.0, n), 0.95);
    close(s.value(29.0, n), 0.85);
    close(s.value(43.5, n), 0.9);
    close(s.value(58.0, n), 0.95);
    close(s.value(78.5, n), 0.95); // phase 3 holds max_momentum
    close(s.value(99.0, n), 0.95);
}

#[test]
fn onecycle_linear_three_phase() {
    let s = onecycle(Anneal::Linear, true);
    let n = 100.0;
    close(s.value(43.5, n), 0.052); // (0.004 - 0.1) * 0.5 + 0.1
    close(s.value(58.0, n), 0.004); // (0.004 - 0.1) * 1 + 0.1
    close(s.value(78.5, n), 0.0020002); // (4e-7 - 0.004) * 0.5 + 0.004
}

#[test]
fn onecycle_other_total() {
    // total 1000, pct_start 0.25, div 10, final_div 100, cos:
    // initial 0.01, min 1e-4, phase ends 249 and 999.
    let s = Schedule::OneCycle {
        peak: 0.1,
        pct_start: 0.25,
        div_factor: 10.0,
        final_div_factor: 100.0,
        anneal: Anneal::Cos,
        three_phase: false,
    };
    close(s.value(0.0, 1000.0), 0.01);
    close(s.value(249.0, 1000.0), 0.1);
    close(s.value(624.0, 1000.0), 0.05005); // pct 375/750 = 0.5: 1e-4 + (0.1 - 1e-4)/2
    close(s.value(999.0, 1000.0), 1e-4);
}

// ---------------------------------------------------------------- cyclic

#[test]
fn cyclic_triangular() {
    // CyclicLR(base_lr=0.001, max_lr=0.006, step_size_up=10): total 20, ratio 0.5
    let s = Schedule::Cyclic {
        low: 0.001,
        high: 0.006,
        up: 10.0,
        down: 10.0,
        mode: CyclicMode::Triangular,
    };
    exact(s.value(0.0, INF), 0.001); // cycle 1, x 0 → scale 0
    close(s.value(5.0, INF), 0.0035); // x 0.25 → scale 0.5: 0.001 + 0.005 * 0.5
    close(s.value(10.0, INF), 0.006); // x 0.5 <= 0.5 → scale 1
    close(s.value(15.0, INF), 0.0035); // x 0.75 → (0.75-1)/(0.5-1) = 0.5
    close(s.value(20.0, INF), 0.001); // cycle 2, x 0
    close(s.value(30.0, INF), 0.006); // cycle 2 peak
}

#[test]
fn cyclic_triangular2_halves_each_cycle() {
    let s = Schedule::Cyclic {
        low: 0.001,
        high: 0.006,
        up: 10.0,
        down: 10.0,
        mode: CyclicMode::Triangular2,
    };
    close(s.value(10.0, INF), 0.006); // cycle 1: 0.001 + 0.005 * 1/2^0
    close(s.value(30.0, INF), 0.0035); // cycle 2: 0.001 + 0.005 * 1/2^1
    close(s.value(50.0, INF), 0.00225); // cycle 3: 0.001 + 0.005 * 1/2^2
    close(s.value(55.0, INF), 0.001625); // cycle 3, scale 0.5: 0.001 + 0.005 * 0.5 / 4
}

#[test]
fn cyclic_exp_range_scales_by_gamma_pow_t() {
    let s = Schedule::Cyclic {
        low: 0.001,
        high: 0.006,
        up: 10.0,
        down: 10.0,
        mode: CyclicMode::ExpRange { gamma: 0.5 },
    };
    // t=5: scale 0.5, 0.001 + 0.005 * 0.5 * 0.5^5 = 0.001 + 0.0025/32
    close(s.value(5.0, INF), 0.001 + 0.0025 / 32.0);
    // t=10: scale 1, 0.001 + 0.005 * 0.5^10 = 0.001 + 0.005/1024
    close(s.value(10.0, INF), 0.001 + 0.005 / 1024.0);
}

#[test]
fn cyclic_asymmetric() {
    // up 5, down 15: total 20, step_ratio 0.25
    let s = Schedule::Cyclic {
        low: 0.001,
        high: 0.006,
        up: 5.0,
        down: 15.0,
        mode: CyclicMode::Triangular,
    };
    close(s.value(2.0, INF), 0.003); // x 0.1 → 0.1/0.25 = 0.4: 0.001 + 0.002
    close(s.value(5.0, INF), 0.006); // x 0.25 → 1
    close(s.value(10.0, INF), 0.001 + 0.005 * 2.0 / 3.0); // x 0.5 → (0.5-1)/(0.25-1) = 2/3
    exact(s.value(20.0, INF), 0.001); // next cycle starts
}

// ---------------------------------------------------------------- inverse sqrt

#[test]
fn inverse_sqrt_default_timescale() {
    // get_inverse_sqrt_schedule(num_warmup_steps=100) with lr 0.1 (timescale = warmup):
    // t < 100: 0.1 * t/100; else 0.1 / sqrt((t + 0) / 100)
    let s = Schedule::InverseSqrt {
        peak: 0.1,
        warmup: 100.0,
        timescale: 100.0,
    };
    exact(s.value(0.0, INF), 0.0);
    close(s.value(50.0, INF), 0.05); // 0.1 * 50/100
    close(s.value(99.0, INF), 0.099);
    close(s.value(100.0, INF), 0.1); // 0.1 / sqrt(1)
    close(s.value(400.0, INF), 0.05); // 0.1 / sqrt(4)
    close(s.value(900.0, INF), 0.1 / 3.0); // 0.1 / sqrt(9)
    assert!(!s.needs_length());
}

#[test]
fn inverse_sqrt_custom_timescale_and_no_warmup() {
    // timescale 10000, warmup 100: shift 9900
    let s = Schedule::InverseSqrt {
        peak: 0.1,
        warmup: 100.0,
        timescale: 10_000.0,
    };
    close(s.value(100.0, INF), 0.1); // (100 + 9900)/10000 = 1
    close(s.value(30_100.0, INF), 0.05); // (30100 + 9900)/10000 = 4
                                         // No warmup: shift = timescale, t=0 → 0.1 / sqrt(1)
    let s = Schedule::InverseSqrt {
        peak: 0.1,
        warmup: 0.0,
        timescale: 10_000.0,
    };
    close(s.value(0.0, INF), 0.1);
    close(s.value(30_000.0, INF), 0.05); // (30000 + 10000)/10000 = 4
}

// ---------------------------------------------------------------- warmup-stable-decay

fn wsd(
    stable: Option<f64>,
    min_ratio: f64,
    warmup_shape: WarmupShape,
    decay_shape: DecayShape,
    warmup: f64,
    decay: f64,
) -> Schedule {
    Schedule::WarmupStableDecay {
        peak: 0.1,
        warmup,
        stable,
        decay,
        min_ratio,
        warmup_shape,
        decay_shape,
    }
}

#[test]
fn wsd_linear_linear_with_floor() {
    // warmup 10, stable 20, decay 10, min_lr_ratio 0.1, peak 0.1
    let s = wsd(
        Some(20.0),
        0.1,
        WarmupShape::Linear,
        DecayShape::Linear,
        10.0,
        10.0,
    );
    close(s.value(0.0, INF), 0.01); // (0 * 0.9 + 0.1) * 0.1
    close(s.value(5.0, INF), 0.055); // (0.5 * 0.9 + 0.1) * 0.1
    close(s.value(9.0, INF), 0.091); // (0.9 * 0.9 + 0.1) * 0.1
    exact(s.value(10.0, INF), 0.1); // stable: 1 * 0.1
    exact(s.value(29.0, INF), 0.1); // last stable step
    close(s.value(30.0, INF), 0.1); // decay p 0: (1 * 0.9 + 0.1) * 0.1
    close(s.value(35.0, INF), 0.055); // p 0.5: (0.5 * 0.9 + 0.1) * 0.1
    close(s.value(40.0, INF), 0.01); // after decay: min_lr_ratio * 0.1
    close(s.value(1000.0, INF), 0.01);
    assert_eq!(s.natural_length(), Some(40.0));
    assert!(!s.needs_length());
}

#[test]
fn wsd_cosine_shapes() {
    // warmup 12, stable 0, decay 12, min_lr_ratio 0
    let s = wsd(
        Some(0.0),
        0.0,
        WarmupShape::Cosine,
        DecayShape::Cosine,
        12.0,
        12.0,
    );
    exact(s.value(0.0, INF), 0.0); // 0.5 * (1 - cos 0) = 0
    close(s.value(4.0, INF), 0.025); // p 1/3: 0.5 * (1 - 0.5) = 0.25
    close(s.value(6.0, INF), 0.05); // p 1/2: 0.5 * (1 - 0) = 0.5
    close(s.value(12.0, INF), 0.1); // decay p 0: 0.5 * (1 + 1) = 1
    close(s.value(16.0, INF), 0.075); // p 1/3: 0.5 * (1 + 0.5) = 0.75
    close(s.value(18.0, INF), 0.05); // p 1/2: 0.5
    exact(s.value(24.0, INF), 0.0); // after: min_lr_ratio 0
}

#[test]
fn wsd_one_minus_sqrt_shapes() {
    // warmup 16, stable 4, decay 16, min_lr_ratio 0.2
    let s = wsd(
        Some(4.0),
        0.2,
        WarmupShape::OneMinusSqrt,
        DecayShape::OneMinusSqrt,
        16.0,
        16.0,
    );
    // warmup p 12/16 = 0.75: 1 - sqrt(0.25) = 0.5 → (0.5 * 0.8 + 0.2) * 0.1 = 0.06
    close(s.value(12.0, INF), 0.06);
    // decay p 4/16 = 0.25: 1 - sqrt(0.25) = 0.5 → 0.06
    close(s.value(24.0, INF), 0.06);
    // decay p 9/16: 1 - 0.75 = 0.25 → (0.25 * 0.8 + 0.2) * 0.1 = 0.04
    close(s.value(29.0, INF), 0.04);
    close(s.value(36.0, INF), 0.02); // after: 0.2 * 0.1
}

#[test]
fn wsd_stable_from_length() {
    // stable = None: len 100 - warmup 10 - decay 20 = 70, linear decay to 0.1 * peak
    let s = wsd(
        None,
        0.1,
        WarmupShape::Linear,
        DecayShape::Linear,
        10.0,
        20.0,
    );
    assert!(s.needs_length());
    assert_eq!(s.natural_length(), None);
    exact(s.value(79.0, 100.0), 0.1); // last stable step (10 + 70 - 1)
    close(s.value(80.0, 100.0), 0.1); // decay p 0
    close(s.value(90.0, 100.0), 0.055); // p 0.5: (0.5 * 0.9 + 0.1) * 0.1
    close(s.value(100.0, 100.0), 0.01); // after the end
                                        // Length shorter than warmup + decay: stable = max(0, 20 - 30) = 0
    close(s.value(10.0, 20.0), 0.1); // decay starts right after warmup
    close(s.value(20.0, 20.0), 0.055); // p 10/20
                                       // Infinite length: stable forever after warmup.
    exact(s.value(1e12, INF), 0.1);
}

// ---------------------------------------------------------------- piecewise

#[test]
fn piecewise_constant_boundaries_are_inclusive() {
    let s = Schedule::PiecewiseConstant {
        boundaries: vec![10.0, 20.0],
        values: vec![1.0, 0.5, 0.25],
    };
    exact(s.value(0.0, INF), 1.0);
    exact(s.value(9.999, INF), 1.0);
    exact(s.value(10.0, INF), 0.5); // from boundaries[0] inclusive
    exact(s.value(19.0, INF), 0.5);
    exact(s.value(20.0, INF), 0.25);
    exact(s.value(1e6, INF), 0.25);
}

#[test]
fn piecewise_constant_degenerate() {
    let s = Schedule::PiecewiseConstant {
        boundaries: vec![],
        values: vec![3.0],
    };
    exact(s.value(0.0, INF), 3.0);
    exact(s.value(1e9, INF), 3.0);
    // Malformed (too few values): NaN, never a panic.
    let s = Schedule::PiecewiseConstant {
        boundaries: vec![10.0],
        values: vec![1.0],
    };
    exact(s.value(0.0, INF), 1.0);
    assert!(s.value(10.0, INF).is_nan());
}

#[test]
fn piecewise_linear_interpolates_and_holds() {
    let s = Schedule::PiecewiseLinear {
        points: vec![0.0, 10.0, 30.0],
        values: vec![0.0, 1.0, 0.5],
    };
    exact(s.value(0.0, INF), 0.0);
    exact(s.value(5.0, INF), 0.5); // (1 - 0) * 0.5 + 0
    exact(s.value(10.0, INF), 1.0); // exactly at a knot
    exact(s.value(20.0, INF), 0.75); // (0.5 - 1) * 0.5 + 1
    exact(s.value(30.0, INF), 0.5); // last knot
    exact(s.value(100.0, INF), 0.5); // held after
                                     // Constant before the first knot.
    let s = Schedule::PiecewiseLinear {
        points: vec![10.0, 20.0],
        values: vec![1.0, 2.0],
    };
    exact(s.value(0.0, INF), 1.0);
    exact(s.value(15.0, INF), 1.5);
    exact(s.value(25.0, INF), 2.0);
}

#[test]
fn piecewise_linear_degenerate() {
    let single = Schedule::PiecewiseLinear {
        points: vec![5.0],
        values: vec![0.7],
    };
    exact(single.value(0.0, INF), 0.7);
    exact(single.value(50.0, INF), 0.7);
    let empty = Schedule::PiecewiseLinear {
        points: vec![],
        values: vec![],
    };
    assert!(empty.value(0.0, INF).is_nan());
    let short = Schedule::PiecewiseLinear {
        points: vec![0.0, 10.0],
        values: vec![1.0],
    };
    assert!(short.value(5.0, INF).is_nan());
    assert!(short.value(50.0, INF).is_nan());
}
