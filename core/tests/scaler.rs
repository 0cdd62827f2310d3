//! Loss scaling: scripted overflow sequences against scale sequences worked out by hand
//! from the PyTorch `GradScaler` / DeepSpeed `DynamicLossScaler` rules documented in
//! `core/src/runtime/scaler.rs`, spec validation, and checkpoint round trips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use regimen_core::runtime::{LossScaler, ScaleDecision};
use regimen_core::{AtMinScale, DynamicLossScale, LossScaleSpec, RuntimeError};

const OK: bool = true;
const OVERFLOW: bool = false;

fn dynamic(init: f64, interval: u64, hysteresis: u32) -> DynamicLossScale {
    DynamicLossScale {
        init,
        growth: 2.0,
        backoff: 0.5,
        interval,
        hysteresis,
        min_scale: 1.0,
        at_min: AtMinScale::Error,
    }
}

fn scaler(spec: DynamicLossScale) -> LossScaler {
    LossScaler::new(&LossScaleSpec::Dynamic(spec)).unwrap()
}

/// One expected step: whether the gradients were finite, then the decision.
struct Expect {
    finite: bool,
    skip: bool,
    used: f64,
    next: f64,
}

fn run(scaler: &mut LossScaler, script: &[Expect]) {
    for (step, expect) in script.iter().enumerate() {
        assert_eq!(scaler.scale(), expect.used, "scale before step {step}");
        let decision = scaler.update(expect.finite, step as u64).unwrap();
        assert_eq!(
            decision,
            ScaleDecision {
                skip: expect.skip,
                scale_used: expect.used,
                next_scale: expect.next,
                backed_off: expect.next < expect.used,
                grew: expect.next > expect.used,
            },
            "step {step}"
        );
        assert_eq!(scaler.scale(), expect.next, "scale after step {step}");
    }
}

fn e(finite: bool, used: f64, next: f64) -> Expect {
    Expect {
        finite,
        skip: !finite,
        used,
        next,
    }
}

#[test]
fn scripted_overflows_with_a_short_interval() {
    // init 1024, growth 2, backoff 0.5, interval 3, no hysteresis.
    let mut s = scaler(dynamic(1024.0, 3, 1));
    run(
        &mut s,
        &[
            e(OK, 1024.0, 1024.0),       // 0: tracker 1
            e(OK, 1024.0, 1024.0),       // 1: tracker 2
            e(OK, 1024.0, 2048.0),       // 2: tracker 3 = interval → 1024·2, tracker 0
            e(OVERFLOW, 2048.0, 1024.0), // 3: skip, 2048·0.5, tracker 0
            e(OK, 1024.0, 1024.0),       // 4: tracker 1
            e(OVERFLOW, 1024.0, 512.0),  // 5: skip, 1024·0.5, tracker 0
            e(OVERFLOW, 512.0, 256.0),   // 6: skip, 512·0.5
            e(OK, 256.0, 256.0),         // 7: tracker 1
            e(OK, 256.0, 256.0),         // 8: tracker 2
            e(OVERFLOW, 256.0, 128.0),   // 9: skip, 256·0.5; tracker back to 0, so…
            e(OK, 128.0, 128.0),         // 10: tracker 1 (not 3: no growth here)
            e(OK, 128.0, 128.0),         // 11: tracker 2
            e(OK, 128.0, 256.0),         // 12: tracker 3 → 128·2
            e(OK, 256.0, 256.0),         // 13: tracker 1
        ],
    );
    assert_eq!(s.growth_tracker(), 1);
}

#[test]
fn pytorch_defaults_grow_after_exactly_2000_finite_steps() {
    let mut s = scaler(DynamicLossScale::default());
    assert_eq!(s.scale(), 65536.0);
    // 1/65536 = 2⁻¹⁶, exact in f32.
    assert_eq!(s.inverse_scale(), 1.0 / 65536.0);
    for step in 0..1999 {
        let decision = s.update(OK, step).unwrap();
        assert!(!decision.grew && !decision.skip, "step {step}");
    }
    assert_eq!(s.scale(), 65536.0, "1999 finite steps are not enough");
    assert_eq!(s.growth_tracker(), 1999);
    let decision = s.update(OK, 1999).unwrap();
    assert!(decision.grew);
    assert_eq!(decision.next_scale, 131072.0); // 65536 · 2
    assert_eq!(s.growth_tracker(), 0);
    // One overflow: 131072 · 0.5.
    let decision = s.update(OVERFLOW, 2000).unwrap();
    assert!(decision.skip && decision.backed_off);
    assert_eq!(s.scale(), 65536.0);
}

#[test]
fn hysteresis_delays_the_backoff_and_growth_refills_it() {
    // init 1024, interval 3, hysteresis 2.
    let mut s = scaler(dynamic(1024.0, 3, 2));
    assert_eq!(s.hysteresis_left(), 2);
    run(
        &mut s,
        &[
            e(OVERFLOW, 1024.0, 1024.0), // 0: skip, hysteresis 2 → 1, scale kept
            e(OVERFLOW, 1024.0, 512.0),  // 1: hysteresis spent: 1024·0.5
            e(OVERFLOW, 512.0, 256.0),   // 2: stays spent: 512·0.5
            e(OK, 256.0, 256.0),         // 3: tracker 1
            e(OK, 256.0, 256.0),         // 4: tracker 2
            e(OK, 256.0, 512.0),         // 5: tracker 3 → 256·2, hysteresis refilled to 2
            e(OVERFLOW, 512.0, 512.0),   // 6: hysteresis 2 → 1, kept
            e(OVERFLOW, 512.0, 256.0),   // 7: 512·0.5
        ],
    );
    assert_eq!(s.hysteresis_left(), 1);
}

#[test]
fn finite_steps_without_growth_do_not_refill_the_hysteresis() {
    // DeepSpeed's default `consecutive_hysteresis=False`.
    let mut s = scaler(dynamic(1024.0, 3, 2));
    run(
        &mut s,
        &[
            e(OVERFLOW, 1024.0, 1024.0), // hysteresis 2 → 1
            e(OK, 1024.0, 1024.0),       // tracker 1
            e(OK, 1024.0, 1024.0),       // tracker 2: no growth, no refill
            e(OVERFLOW, 1024.0, 512.0),  // spent: 1024·0.5
        ],
    );
}

#[test]
fn overflow_at_the_minimum_with_error_changes_nothing() {
    // init 3, backoff 0.5, min 1: 3 → 1.5 → max(0.75, 1) = 1 → error.
    let mut s = scaler(DynamicLossScale {
        init: 3.0,
        interval: 100,
        ..DynamicLossScale::default()
    });
    run(
        &mut s,
        &[
            e(OK, 3.0, 3.0),       // tracker 1
            e(OVERFLOW, 3.0, 1.5), // 3·0.5
            e(OK, 1.5, 1.5),       // tracker 1
            e(OVERFLOW, 1.5, 1.0), // 1.5·0.5 = 0.75, clamped to min 1
            e(OK, 1.0, 1.0),       // tracker 1
        ],
    );
    let before = s.clone();
    let err = s.update(OVERFLOW, 5).unwrap_err();
    assert!(
        matches!(err, RuntimeError::LossScaleAtMinimum { step: 5, scale } if scale == 1.0),
        "{err}"
    );
    assert_eq!(s, before, "an error leaves the state unchanged");
    assert_eq!(s.growth_tracker(), 1);
    // The run may still continue if the caller chooses to.
    assert_eq!(s.update(OK, 6).unwrap().next_scale, 1.0);
}

#[test]
fn hysteresis_is_spent_before_the_minimum_errors() {
    // At min already (init = min = 1), hysteresis 2: the first overflow only spends it.
    let mut s = scaler(DynamicLossScale {
        init: 1.0,
        hysteresis: 2,
        ..DynamicLossScale::default()
    });
    assert!(s.update(OVERFLOW, 0).unwrap().skip);
    assert_eq!(s.hysteresis_left(), 1);
    assert!(matches!(
        s.update(OVERFLOW, 1),
        Err(RuntimeError::LossScaleAtMinimum { step: 1, .. })
    ));
}

#[test]
fn overflow_at_the_minimum_with_skip_stays_there() {
    let mut s = scaler(DynamicLossScale {
        init: 2.0,
        min_scale: 1.0,
        interval: 2,
        at_min: AtMinScale::Skip,
        ..DynamicLossScale::default()
    });
    run(
        &mut s,
        &[
            e(OVERFLOW, 2.0, 1.0), // 2·0.5
            e(OVERFLOW, 1.0, 1.0), // at min: skip, stay
            e(OVERFLOW, 1.0, 1.0),
            e(OK, 1.0, 1.0), // tracker 1
            e(OK, 1.0, 2.0), // tracker 2 = interval → 1·2
        ],
    );
}

#[test]
fn no_scaling_and_static_scaling_still_skip_overflows() {
    let mut none = LossScaler::new(&LossScaleSpec::None).unwrap();
    assert_eq!(none.scale(), 1.0);
    assert_eq!(none.inverse_scale(), 1.0);
    run(
        &mut none,
        &[e(OK, 1.0, 1.0), e(OVERFLOW, 1.0, 1.0), e(OK, 1.0, 1.0)],
    );

    let mut fixed = LossScaler::new(&LossScaleSpec::Static(128.0)).unwrap();
    assert_eq!(fixed.inverse_scale(), 0.0078125); // 1/128 = 2⁻⁷
    let script: Vec<Expect> = (0..5000)
        .map(|step| e(step % 7 != 3, 128.0, 128.0))
        .collect();
    run(&mut fixed, &script);
}

#[test]
fn growth_that_would_overflow_f32_is_refused() {
    // 2¹²⁷ is finite in f32; 2¹²⁸ is not (f32::MAX ≈ 2¹²⁸ − 2¹⁰⁴), as in PyTorch's kernel.
    let top = 2f64.powi(127);
    let mut s = scaler(DynamicLossScale {
        init: top,
        interval: 1,
        hysteresis: 2,
        ..DynamicLossScale::default()
    });
    s.update(OVERFLOW, 0).unwrap(); // hysteresis 2 → 1
    let decision = s.update(OK, 1).unwrap();
    assert!(!decision.grew);
    assert_eq!(s.scale(), top);
    assert_eq!(s.growth_tracker(), 0);
    // The growth point was reached, so the hysteresis was still refilled.
    assert_eq!(s.hysteresis_left(), 2);
}

#[test]
fn invalid_specs_are_rejected() {
    let valid = DynamicLossScale::default();
    let cases = [
        (
            "init",
            DynamicLossScale {
                init: 0.0,
                ..valid.clone()
            },
        ),
        (
            "init",
            DynamicLossScale {
                init: -1.0,
                ..valid.clone()
            },
        ),
        (
            "init",
            DynamicLossScale {
                init: f64::NAN,
                ..valid.clone()
            },
        ),
        (
            "init",
            DynamicLossScale {
                init: f64::INFINITY,
                ..valid.clone()
            },
        ),
        (
            "init",
            DynamicLossScale {
                init: 1e39,
                ..valid.clone()
            },
        ), // beyond f32
        (
            "growth",
            DynamicLossScale {
                growth: 0.5,
                ..valid.clone()
            },
        ),
        (
            "growth",
            DynamicLossScale {
                growth: f64::INFINITY,
                ..valid.clone()
            },
        ),
        (
            "growth",
            DynamicLossScale {
                growth: f64::NAN,
                ..valid.clone()
            },
        ),
        (
            "backoff",
            DynamicLossScale {
                backoff: 0.0,
                ..valid.clone()
            },
        ),
        (
            "backoff",
            DynamicLossScale {
                backoff: 1.0,
                ..valid.clone()
            },
        ),
        (
            "backoff",
            DynamicLossScale {
                backoff: f64::NAN,
                ..valid.clone()
            },
        ),
        (
            "interval",
            DynamicLossScale {
                interval: 0,
                ..valid.clone()
            },
        ),
        (
            "hysteresis",
            DynamicLossScale {
                hysteresis: 0,
                ..valid.clone()
            },
        ),
        (
            "min_scale",
            DynamicLossScale {
                min_scale: 0.0,
                ..valid.clone()
            },
        ),
        (
            "min_scale",
            DynamicLossScale {
                min_scale: 131072.0,
                ..valid.clone()
            },
        ),
        (
            "min_scale",
            DynamicLossScale {
                min_scale: f64::NAN,
                ..valid.clone()
            },
        ),
    ];
    for (field, spec) in cases {
        let err = LossScaler::new(&LossScaleSpec::Dynamic(spec.clone())).unwrap_err();
        assert!(err.contains(field), "{spec:?}: {err}");
    }
    for bad in [0.0, -2.0, f64::NAN, f64::INFINITY, 1e39] {
        assert!(
            LossScaler::new(&LossScaleSpec::Static(bad)).is_err(),
            "{bad}"
        );
    }
    // Boundaries that are allowed: growth 1 (never grows), min_scale = init.
    LossScaler::new(&LossScaleSpec::Dynamic(DynamicLossScale {
        growth: 1.0,
        min_scale: 65536.0,
        ..valid
    }))
    .unwrap();
}

#[test]
fn serialized_state_continues_identically() {
    let flags: Vec<bool> = (0..60).map(|i| !(i % 11 == 4 || i % 13 == 9)).collect();
    let mut uninterrupted = scaler(dynamic(1024.0, 3, 2));
    let mut first_half = uninterrupted.clone();
    for (step, &finite) in flags[..25].iter().enumerate() {
        first_half.update(finite, step as u64).unwrap();
    }
    let json = serde_json::to_string(&first_half).unwrap();
    let mut resumed: LossScaler = serde_json::from_str(&json).unwrap();
    assert_eq!(resumed, first_half);

    let mut decisions = Vec::new();
    for (step, &finite) in flags.iter().enumerate() {
        decisions.push(uninterrupted.update(finite, step as u64).unwrap());
    }
    for (step, &finite) in flags.iter().enumerate().skip(25) {
        let decision = resumed.update(finite, step as u64).unwrap();
        assert_eq!(decision, decisions[step], "step {step}");
    }
    assert_eq!(resumed, uninterrupted);
}

#[test]
fn impossible_serialized_states_are_rejected() {
    let good = serde_json::to_value(scaler(dynamic(1024.0, 3, 2))).unwrap();
    let tamper = |field: &str, value: serde_json::Value| {
        let mut state = good.clone();
        state[field] = value;
        serde_json::from_value::<LossScaler>(state)
    };
    assert!(tamper("scale", 0.0.into()).is_err());
    assert!(tamper("scale", 0.5.into()).is_err(), "below min_scale");
    assert!(
        tamper("growth_tracker", 3.into()).is_err(),
        "tracker ≥ interval"
    );
    assert!(tamper("hysteresis_left", 0.into()).is_err());
    assert!(tamper("hysteresis_left", 3.into()).is_err());
    assert!(tamper("scale", 512.0.into()).is_ok());

    let fixed =
        serde_json::to_value(LossScaler::new(&LossScaleSpec::Static(8.0)).unwrap()).unwrap();
    let mut wrong = fixed.clone();
    wrong["scale"] = 16.0.into();
    assert!(serde_json::from_value::<LossScaler>(wrong).is_err());
    assert!(serde_json::from_value::<LossScaler>(fixed).is_ok());
}
