//! The quantizing built-ins against hand-computed payloads and the statistics their
//! papers promise: exact bytes for tiny tensors, lossless casts, bits on the wire equal
//! to each method's formula, unbiasedness and the QSGD variance bound, determinism
//! (also across thread counts), and corrupt fields refused.

// Test helpers outside #[test] functions unwrap too; a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use regimen_core::compress::cast::{Cast, CastKind};
use regimen_core::compress::int8::Int8;
use regimen_core::compress::qsgd::{code_width, level_width, Qsgd};
use regimen_core::compress::sign::{column_means, OneBit, Sign};
use regimen_core::compress::terngrad::TernGrad;
use regimen_core::compress::{
    build, Aggregation, CompressError, Compressor, FeedbackPolicy, StepContext, TensorView,
    WireElement, WireError,
};
use regimen_core::plugin::{ArgValue, Args};

fn ctx(step: u64, rank: usize) -> StepContext<'static> {
    StepContext {
        step,
        rank,
        world: 4,
        seed: 7,
        tensor: 2,
        scheduled: &[],
    }
}

fn args(pairs: &[(&str, f64)]) -> Args {
    pairs.iter().fold(Args::new(), |args, &(name, value)| {
        args.with(name, ArgValue::Number(value))
    })
}

fn encode_with(
    compressor: &mut dyn Compressor,
    shape: &[usize],
    data: &[f32],
    ctx: &StepContext<'_>,
) -> Vec<u8> {
    let mut out = Vec::new();
    compressor
        .compress(
            TensorView {
                name: "w",
                shape,
                data,
            },
            ctx,
            &mut out,
        )
        .unwrap();
    out
}

fn encode(compressor: &mut dyn Compressor, shape: &[usize], data: &[f32]) -> Vec<u8> {
    encode_with(compressor, shape, data, &ctx(0, 0))
}

fn decode(compressor: &mut dyn Compressor, payload: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0.0; n];
    compressor.decompress_add(payload, 1.0, &mut out).unwrap();
    out
}

/// Header bytes for a `dims`-dimensional tensor: 16 fixed + 4 per dimension.
fn header(dims: usize) -> usize {
    16 + 4 * dims
}

fn f32s(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A deterministic, smooth test gradient of mixed signs and magnitudes.
fn gradient(n: usize, salt: u64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = (i as u64).wrapping_mul(2_654_435_761).wrapping_add(salt) % 10_007;
            (x as f32 / 10_007.0 - 0.5) * (1.0 + (i % 5) as f32)
        })
        .collect()
}

// ----- casts -----

#[test]
fn none_is_the_f32_bytes_and_decodes_losslessly() {
    let mut none = Cast::new(CastKind::F32, &Args::new()).unwrap();
    assert_eq!(none.aggregation(), Aggregation::Sum(WireElement::F32));
    let data = [1.5f32, -0.0, 1e-40, f32::MAX, -3.25];
    let payload = encode(&mut none, &[5], &data);
    assert_eq!(&payload[header(1)..], &f32s(&data)[..]);
    let back = decode(&mut none, &payload, 5);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    // 0 + x is x for every x except −0.0 (0 + −0 = +0), so compare −0.0 by value.
    assert_eq!(bits(&back[2..]), bits(&data[2..]));
    assert_eq!(back[..2], data[..2]);
}

#[test]
fn fp16_and_bf16_round_to_nearest_even_and_are_lossless_when_representable() {
    let mut fp16 = Cast::new(CastKind::F16, &Args::new()).unwrap();
    // Exactly representable in binary16: 1 = 0x3C00, −2 = 0xC000, 65504 (the largest) =
    // 0x7BFF, 2⁻²⁴ (the smallest subnormal) = 0x0001, 0.5 = 0x3800.
    let exact = [1.0f32, -2.0, 65504.0, 2f32.powi(-24), 0.5];
    let payload = encode(&mut fp16, &[5], &exact);
    assert_eq!(
        &payload[header(1)..],
        &[0x00, 0x3C, 0x00, 0xC0, 0xFF, 0x7B, 0x01, 0x00, 0x00, 0x38]
    );
    assert_eq!(decode(&mut fp16, &payload, 5), exact);
    // Ties go to the even mantissa: 1 + 2⁻¹¹ is halfway between 1 and 1 + 2⁻¹⁰ → 1
    // (0x3C00); 1 + 3·2⁻¹¹ is halfway between 1 + 2⁻¹⁰ and 1 + 2⁻⁹ → 1 + 2⁻⁹ (0x3C02).
    let ties = [1.0 + 2f32.powi(-11), 1.0 + 3.0 * 2f32.powi(-11)];
    let payload = encode(&mut fp16, &[2], &ties);
    assert_eq!(&payload[header(1)..], &[0x00, 0x3C, 0x02, 0x3C]);

    let mut bf16 = Cast::new(CastKind::Bf16, &Args::new()).unwrap();
    assert_eq!(bf16.aggregation(), Aggregation::Sum(WireElement::Bf16));
    // bfloat16 is the top half of the f32: 1 = 0x3F80, −3.5 = 0xC060, 2¹⁰⁰ = 0x7180,
    // 2⁻¹²⁶ = 0x0080.
    let exact = [1.0f32, -3.5, 2f32.powi(100), 2f32.powi(-126)];
    let payload = encode(&mut bf16, &[2, 2], &exact);
    assert_eq!(
        &payload[header(2)..],
        &[0x80, 0x3F, 0x60, 0xC0, 0x80, 0x71, 0x80, 0x00]
    );
    assert_eq!(decode(&mut bf16, &payload, 4), exact);
    // 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷ → 1; 1 + 3·2⁻⁸ → 1 + 2⁻⁶ (0x3F82).
    let ties = [1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8)];
    let payload = encode(&mut bf16, &[2], &ties);
    assert_eq!(&payload[header(1)..], &[0x80, 0x3F, 0x82, 0x3F]);
}

#[test]
fn non_finite_halves_pass_through_the_decoder() {
    let mut fp16 = Cast::new(CastKind::F16, &Args::new()).unwrap();
    let mut payload = encode(&mut fp16, &[2], &[0.0, 0.0]);
    let data = header(1);
    // 0x7C00 = +∞, 0x7E00 = a quiet NaN.
    payload[data..].copy_from_slice(&[0x00, 0x7C, 0x00, 0x7E]);
    let out = decode(&mut fp16, &payload, 2);
    assert_eq!(out[0], f32::INFINITY);
    assert!(out[1].is_nan());
}

// ----- int8 -----

#[test]
fn int8_payload_is_hand_computable() {
    let mut int8 = Int8::new(&Args::new()).unwrap();
    assert_eq!(int8.aggregation(), Aggregation::Gather);
    let payload = encode(&mut int8, &[4], &[0.5, -1.0, 0.25, -0.5]);
    // m = 1, s = 1/127 = 2⁻⁷ · 1.0000001000000100000010… (binary, period 7) → mantissa
    // 0x010204, exponent 120 = 0x78 → 0x3C01_0204.
    assert_eq!((1.0f32 / 127.0).to_bits(), 0x3C01_0204);
    // q = round_half_away(g · 127): 63.5 → 64 = 0x40, −127 = 0x81, 31.75 → 32 = 0x20,
    // −63.5 → −64 = 0xC0.
    assert_eq!(
        &payload[header(1)..],
        &[0x04, 0x02, 0x01, 0x3C, 0x40, 0x81, 0x20, 0xC0]
    );
    let s = 1.0f32 / 127.0;
    assert_eq!(
        decode(&mut int8, &payload, 4),
        [s * 64.0, s * -127.0, s * 32.0, s * -64.0]
    );
    // All zeros: scale 0, codes 0.
    let payload = encode(&mut int8, &[3], &[0.0; 3]);
    assert_eq!(&payload[header(1)..], &[0, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn int8_rounds_exactly_half_away_from_zero() {
    let mut int8 = Int8::new(&Args::new()).unwrap();
    // m = 127 so the multiplier is 1: q = round_half_away(g) exactly. 0.49999997 must
    // give 0 (g + 0.5 would round up to 1.0 in f32); ±2.5 → ±3; 3.5 → 4; −0.5 → −1.
    let data = [127.0f32, 0.499_999_97, 2.5, -2.5, 3.5, -0.5, 1.4999999];
    let payload = encode(&mut int8, &[7], &data);
    let codes: Vec<i8> = payload[header(1) + 4..].iter().map(|&b| b as i8).collect();
    assert_eq!(codes, [127, 0, 3, -3, 4, -1, 1]);
}

// ----- bits on the wire -----

/// Shapes with element counts that are and are not multiples of 8, and one above the
/// 64 Ki work chunk so the parallel paths run.
const SHAPES: &[&[usize]] = &[
    &[1],
    &[7],
    &[8],
    &[9],
    &[3, 5],
    &[10, 10],
    &[2, 3, 7],
    &[1000],
    &[300, 350],
];

/// `⌈log2(s + 1)⌉`, counted the slow way.
fn level_bits(levels: u64) -> u64 {
    (0..).find(|&b| 1u64 << b > levels).unwrap()
}

#[test]
fn bits_on_the_wire_equal_each_formula() {
    for shape in SHAPES {
        let n: usize = shape.iter().product();
        let d = shape.len();
        let data = gradient(n, 3);
        let columns = n / shape[0];
        let cases: Vec<(&str, Args, usize)> = vec![
            ("none", Args::new(), header(d) + 4 * n),
            ("fp16", Args::new(), header(d) + 2 * n),
            ("bf16", Args::new(), header(d) + 2 * n),
            ("int8", Args::new(), header(d) + 4 + n),
            ("sign", Args::new(), header(d) + 4 + n.div_ceil(8)),
            (
                "onebit",
                Args::new(),
                header(d) + 8 * columns + n.div_ceil(8),
            ),
            // 2 bits per element.
            ("terngrad", Args::new(), header(d) + 4 + (2 * n).div_ceil(8)),
            // qsgd: s and B, the norms, then ⌈n·(L+1)/8⌉ bytes of codes.
            // s = 8: L = 4 → 5 bits, buckets of 512.
            (
                "qsgd",
                Args::new(),
                header(d) + 8 + 4 * n.div_ceil(512) + (5 * n).div_ceil(8),
            ),
            // s = 1: L = 1 → 2 bits, one bucket.
            (
                "qsgd",
                args(&[("levels", 1.0), ("bucket", 0.0)]),
                header(d) + 8 + 4 + (2 * n).div_ceil(8),
            ),
            // s = 255: L = 8 → 9 bits, buckets of 16.
            (
                "qsgd",
                args(&[("levels", 255.0), ("bucket", 16.0)]),
                header(d) + 8 + 4 * n.div_ceil(16) + (9 * n).div_ceil(8),
            ),
            // s = 7: L = 3 → 4 bits, buckets of 100 000 (more than a work chunk).
            (
                "qsgd",
                args(&[("levels", 7.0), ("bucket", 100_000.0)]),
                header(d) + 8 + 4 * n.div_ceil(100_000) + (4 * n).div_ceil(8),
            ),
        ];
        for (method, method_args, expected) in cases {
            let mut compressor = build(method, &method_args).unwrap();
            let payload = encode(compressor.as_mut(), shape, &data);
            assert_eq!(
                payload.len(),
                expected,
                "{method} {method_args:?} on {shape:?}"
            );
            // Every payload decodes into a tensor of the right size.
            decode(compressor.as_mut(), &payload, n);
        }
    }
    for levels in [1u64, 2, 3, 4, 7, 8, 15, 16, 255, 256, 32767] {
        assert_eq!(
            u64::from(level_width(levels as u32)),
            level_bits(levels),
            "s = {levels}"
        );
        assert_eq!(
            u64::from(code_width(levels as u32)),
            level_bits(levels) + 1,
            "s = {levels}"
        );
    }
}

// ----- qsgd -----

#[test]
fn qsgd_payload_is_exact_when_every_element_sits_on_a_level() {
    // v = [3, −4]: ‖v‖₂ = 5; with s = 5, x = |v|·5/5 = [3, 4] are whole levels, so the
    // rounding is certain whatever the random draws.
    let mut qsgd = Qsgd::new(&args(&[("levels", 5.0)])).unwrap();
    let payload = encode(&mut qsgd, &[2], &[3.0, -4.0]);
    // s = 5, B = 512, norm 5; w = ⌈log2 6⌉ + 1 = 4 bits; codes level<<1 | sign:
    // 3<<1|0 = 6, 4<<1|1 = 9 → byte 6 | 9<<4 = 0x96.
    let mut expected = Vec::new();
    expected.extend_from_slice(&5u32.to_le_bytes());
    expected.extend_from_slice(&512u32.to_le_bytes());
    expected.extend_from_slice(&5.0f32.to_le_bytes());
    expected.push(0x96);
    assert_eq!(&payload[header(1)..], &expected[..]);
    // Q = (‖v‖/s)·sign·level = 1·[3, −4].
    assert_eq!(decode(&mut qsgd, &payload, 2), [3.0, -4.0]);

    // Max norm: v = [2, −1, 0.5, 0], ‖v‖∞ = 2, s = 4 → x = [4, 2, 1, 0].
    let mut qsgd = Qsgd::new(
        &Args::new()
            .with("levels", ArgValue::Number(4.0))
            .with("norm", ArgValue::Text("max".into())),
    )
    .unwrap();
    let payload = encode(&mut qsgd, &[4], &[2.0, -1.0, 0.5, 0.0]);
    // Norm 2.0 = 0x4000_0000; w = ⌈log2 5⌉ + 1 = 4: codes 4<<1 = 8, 2<<1|1 = 5,
    // 1<<1 = 2, 0 → bytes 8 | 5<<4 = 0x58, 2 | 0<<4 = 0x02.
    assert_eq!(&payload[header(1) + 8..], &[0, 0, 0, 0x40, 0x58, 0x02]);
    assert_eq!(decode(&mut qsgd, &payload, 4), [2.0, -1.0, 0.5, 0.0]);
}

/// Exact per-element variance of QSGD's rounding: unit²·p(1−p), unit = ‖v‖/s,
/// p = frac(|v_i|·s/‖v‖).
fn qsgd_variances(v: &[f32], levels: f64) -> (f64, Vec<f64>) {
    let norm = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let unit = norm / levels;
    let variances = v
        .iter()
        .map(|&x| {
            let scaled = f64::from(x).abs() / unit;
            let p = scaled - scaled.floor();
            unit * unit * p * (1.0 - p)
        })
        .collect();
    (norm, variances)
}

#[test]
fn qsgd_is_unbiased() {
    let v: Vec<f32> = vec![
        0.3, -0.7, 1.1, 0.05, -0.25, 0.0, 0.9, -1.3, 0.42, -0.01, 0.6, 0.77,
    ];
    let n = v.len();
    let trials = 6000;
    for (norm_name, levels) in [("l2", 2.0), ("max", 3.0)] {
        let mut qsgd = Qsgd::new(
            &Args::new()
                .with("levels", ArgValue::Number(levels))
                .with("norm", ArgValue::Text(norm_name.into()))
                .with("bucket", ArgValue::Number(0.0)),
        )
        .unwrap();
        let mut mean = vec![0.0f64; n];
        for trial in 0..trials {
            let payload = encode_with(&mut qsgd, &[n], &v, &ctx(trial, 1));
            for (m, q) in mean.iter_mut().zip(decode(&mut qsgd, &payload, n)) {
                *m += f64::from(q) / trials as f64;
            }
        }
        let norm = if norm_name == "l2" {
            v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt()
        } else {
            v.iter().map(|&x| f64::from(x).abs()).fold(0.0, f64::max)
        };
        let unit = norm / levels;
        for (i, (&x, &m)) in v.iter().zip(&mean).enumerate() {
            let scaled = f64::from(x).abs() / unit;
            let p = scaled - scaled.floor();
            // Standard error of the mean of `trials` draws of a two-point variable with
            // spacing `unit`; 5σ, plus the 16-bit draws' bias bound (2⁻¹⁶ of a step).
            let sigma = unit * (p * (1.0 - p) / trials as f64).sqrt();
            let tolerance = 5.0 * sigma + unit * 2f64.powi(-16) + 1e-6;
            assert!(
                (m - f64::from(x)).abs() <= tolerance,
                "{norm_name}: element {i}: mean {m} vs {x} (±{tolerance})"
            );
        }
    }
}

#[test]
fn qsgd_error_meets_the_papers_variance_bound() {
    // Lemma 3.1 of Alistarh et al.: E‖Q(v) − v‖² ≤ min(n/s², √n/s)·‖v‖² (ℓ2 norm, one
    // bucket of n elements). The expectation is also known exactly: Σ unit²·p(1−p).
    let n = 64;
    let v = gradient(n, 11);
    for levels in [1.0f64, 4.0, 16.0] {
        let mut qsgd = Qsgd::new(&args(&[("levels", levels), ("bucket", 0.0)])).unwrap();
        let trials = 3000;
        let mut mean_error = 0.0f64;
        for trial in 0..trials {
            let payload = encode_with(&mut qsgd, &[n], &v, &ctx(trial, 0));
            let q = decode(&mut qsgd, &payload, n);
            let error: f64 = q
                .iter()
                .zip(&v)
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                .sum();
            mean_error += error / trials as f64;
        }
        let (norm, variances) = qsgd_variances(&v, levels);
        let exact: f64 = variances.iter().sum();
        let nf = n as f64;
        let bound = (nf / (levels * levels)).min(nf.sqrt() / levels) * norm * norm;
        assert!(
            exact <= bound,
            "s = {levels}: exact {exact} > bound {bound}"
        );
        assert!(mean_error <= bound, "s = {levels}: {mean_error} > {bound}");
        // The squared error is a sum of 64 independent bounded terms: over 3000 trials
        // its mean is within a few percent of the expectation.
        assert!(
            (mean_error - exact).abs() <= 0.05 * exact,
            "s = {levels}: measured {mean_error}, expected {exact}"
        );
    }
}

#[test]
fn qsgd_rounds_each_element_to_an_adjacent_level_on_every_path() {
    // Buckets of 512 (one pass per chunk), of 65 535 (lcm with 64 above a chunk: norms
    // first), of 100 000 (larger than a chunk) and the whole tensor.
    let n = 200_003;
    let v = gradient(n, 5);
    for bucket in [512usize, 65_535, 100_000, 0] {
        let levels = 8.0f64;
        let mut qsgd = Qsgd::new(&args(&[("bucket", bucket as f64)])).unwrap();
        let payload = encode(&mut qsgd, &[n], &v);
        let q = decode(&mut qsgd, &payload, n);
        let size = if bucket == 0 { n } else { bucket };
        for (b, (vb, qb)) in v.chunks(size).zip(q.chunks(size)).enumerate() {
            let norm = vb.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
            let unit = norm / levels;
            for (&x, &y) in vb.iter().zip(qb) {
                let scaled = f64::from(x).abs() / unit;
                let level = f64::from(y).abs() / unit;
                assert!(
                    (level - scaled.floor()).abs() < 1e-3 || (level - scaled.ceil()).abs() < 1e-3,
                    "bucket size {bucket}, bucket {b}: {x} decoded as {y}"
                );
                assert!(y == 0.0 || (y < 0.0) == (x < 0.0));
            }
        }
    }
}

#[test]
fn qsgd_follows_a_scheduled_level_count() {
    let mut qsgd = Qsgd::new(&Args::new()).unwrap();
    let scheduled = [("levels".to_owned(), 3.6)];
    let ctx = StepContext {
        scheduled: &scheduled,
        ..ctx(0, 0)
    };
    let payload = encode_with(&mut qsgd, &[10], &gradient(10, 1), &ctx);
    // 3.6 rounds to 4 levels: L = 3, so 4 bits per element.
    assert_eq!(&payload[header(1)..header(1) + 4], &4u32.to_le_bytes());
    assert_eq!(payload.len(), header(1) + 8 + 4 + (4 * 10usize).div_ceil(8));
}

// ----- terngrad -----

#[test]
fn terngrad_payload_is_exact_when_no_element_is_random() {
    let mut terngrad = TernGrad::new(&Args::new()).unwrap();
    // g = [2, −2, 0, 0]: mean 0, σ = √(8/4) = √2, 2.5σ ≈ 3.54 > 2: no clipping; s = 2;
    // p = |g|/s = [1, 1, 0, 0] → codes [1, 2, 0, 0] → 0b00_00_10_01 = 0x09.
    let payload = encode(&mut terngrad, &[4], &[2.0, -2.0, 0.0, 0.0]);
    assert_eq!(&payload[header(1)..], &[0, 0, 0, 0x40, 0x09]);
    assert_eq!(decode(&mut terngrad, &payload, 4), [2.0, -2.0, 0.0, 0.0]);

    // g = [10, 0 × 9]: mean 1, E[g²] = 10, σ = √(10 − 1) = 3. With c = 1 the threshold
    // is 3: ḡ = [3, 0, …], s = 3, p = 1 → ĝ = [3, 0, …].
    let mut g = [0.0f32; 10];
    g[0] = 10.0;
    let mut clipped = TernGrad::new(&args(&[("clip", 1.0)])).unwrap();
    let payload = encode(&mut clipped, &[10], &g);
    let mut expected = [0.0f32; 10];
    expected[0] = 3.0;
    assert_eq!(decode(&mut clipped, &payload, 10), expected);
    // c = 2.5: threshold 7.5 → ĝ = [7.5, 0, …]; c = 0: no clipping → ĝ = g.
    let payload = encode(&mut terngrad, &[10], &g);
    expected[0] = 7.5;
    assert_eq!(decode(&mut terngrad, &payload, 10), expected);
    let mut unclipped = TernGrad::new(&args(&[("clip", 0.0)])).unwrap();
    let payload = encode(&mut unclipped, &[10], &g);
    assert_eq!(decode(&mut unclipped, &payload, 10), g);
    // A constant tensor (σ = 0) is not clipped to zero.
    let payload = encode(&mut terngrad, &[3], &[0.5; 3]);
    assert_eq!(decode(&mut terngrad, &payload, 3), [0.5; 3]);
}

#[test]
fn terngrad_is_unbiased_for_the_clipped_gradient() {
    let g: Vec<f32> = vec![
        0.1, -0.2, 0.3, -0.05, 0.0, 0.25, -0.15, 0.12, -0.3, 0.07, 0.2, -0.1, 0.05, 0.18, 3.0,
        -0.22,
    ];
    let n = g.len();
    // Population σ, clip at 2.5σ (the outlier 3.0 is clipped), s = max |ḡ|.
    let mean = g.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
    let sigma =
        (g.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / n as f64 - mean * mean).sqrt();
    let threshold = 2.5 * sigma;
    assert!(threshold < 3.0, "the test needs clipping to be active");
    let clipped: Vec<f64> = g
        .iter()
        .map(|&x| f64::from(x).clamp(-threshold, threshold))
        .collect();
    let s = clipped.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let mut terngrad = TernGrad::new(&Args::new()).unwrap();
    let trials = 6000;
    let mut means = vec![0.0f64; n];
    for trial in 0..trials {
        let payload = encode_with(&mut terngrad, &[n], &g, &ctx(trial, 3));
        for (m, q) in means.iter_mut().zip(decode(&mut terngrad, &payload, n)) {
            *m += f64::from(q) / trials as f64;
        }
    }
    for (i, (&m, &c)) in means.iter().zip(&clipped).enumerate() {
        // ĝ_i ∈ {0, ±s} with P = |ḡ_i|/s: variance s²p(1−p); 5σ of the mean, plus the
        // 16-bit draws' bias (2⁻¹⁷ of s) and f32 rounding of s.
        let p = c.abs() / s;
        let tolerance = 5.0 * s * (p * (1.0 - p) / trials as f64).sqrt() + s * 1e-5;
        assert!(
            (m - c).abs() <= tolerance,
            "element {i}: mean {m} vs clipped {c} (±{tolerance})"
        );
    }
}

// ----- sign and onebit -----

#[test]
fn sign_scales_by_the_mean_magnitude() {
    let mut sign = Sign::new(&Args::new()).unwrap();
    assert_eq!(sign.feedback(), FeedbackPolicy::OnByDefault);
    let g = [1.0f32, -2.0, 0.0, 3.0, -0.5];
    // ‖g‖₁/n = 6.5/5 = 1.3; negative at 1 and 4 → 0b1_0010 = 0x12 (sign(0) = +).
    let payload = encode(&mut sign, &[5], &g);
    let mut expected = 1.3f32.to_le_bytes().to_vec();
    expected.push(0x12);
    assert_eq!(&payload[header(1)..], &expected[..]);
    assert_eq!(decode(&mut sign, &payload, 5), [1.3, -1.3, 1.3, 1.3, -1.3]);
    // On a large tensor the scale is still the mean |g| (f64 sum of chunk sums).
    let big = gradient(300_001, 9);
    let payload = encode(&mut sign, &[300_001], &big);
    let mean = big.iter().map(|&x| f64::from(x).abs()).sum::<f64>() / big.len() as f64;
    let sent = f32::from_le_bytes(payload[header(1)..header(1) + 4].try_into().unwrap());
    assert!(
        (f64::from(sent) - mean).abs() <= 1e-6 * mean,
        "{sent} vs {mean}"
    );
}

#[test]
fn onebit_sends_the_column_means() {
    let mut onebit = OneBit::new(&Args::new()).unwrap();
    assert_eq!(onebit.feedback(), FeedbackPolicy::OnByDefault);
    // [[1, −2], [3, 4], [−1, 6]]: column 0 = {1, 3, −1} → a⁺ = (1+3)/2 = 2, a⁻ = −1;
    // column 1 = {−2, 4, 6} → a⁺ = 5, a⁻ = −2. Negative elements 1 and 4 → 0x12.
    let g = [1.0f32, -2.0, 3.0, 4.0, -1.0, 6.0];
    let payload = encode(&mut onebit, &[3, 2], &g);
    let mut expected = f32s(&[2.0, -1.0, 5.0, -2.0]);
    expected.push(0x12);
    assert_eq!(&payload[header(2)..], &expected[..]);
    assert_eq!(
        decode(&mut onebit, &payload, 6),
        [2.0, -2.0, 2.0, 5.0, -1.0, 5.0]
    );
    // 1-D: one column. {1, 2, 0} → a⁺ = 1, {−1, −3} → a⁻ = −2.
    let payload = encode(&mut onebit, &[5], &[1.0, -1.0, 2.0, -3.0, 0.0]);
    let mut expected = f32s(&[1.0, -2.0]);
    expected.push(0b0000_1010);
    assert_eq!(&payload[header(1)..], &expected[..]);
    // A column without negatives has a⁻ = 0.
    assert_eq!(column_means(&[1.0, 2.0], 2, 1), [(1.5, 0.0)]);
}

#[test]
fn onebit_column_means_match_a_plain_computation_on_every_path() {
    // 1-D, narrow (37 columns), wide (1000 columns, several ranges), one row.
    for (rows, columns) in [(100_000usize, 1usize), (3000, 37), (300, 1000), (1, 70_000)] {
        let g = gradient(rows * columns, 17);
        let means = column_means(&g, rows, columns);
        assert_eq!(means.len(), columns);
        for (j, &(plus, minus)) in means.iter().enumerate() {
            let column = (0..rows).map(|i| f64::from(g[i * columns + j]));
            let (mut ps, mut pc, mut ns, mut nc) = (0.0, 0usize, 0.0, 0usize);
            for x in column {
                if x < 0.0 {
                    ns += x;
                    nc += 1;
                } else {
                    ps += x;
                    pc += 1;
                }
            }
            let want_plus = if pc == 0 { 0.0 } else { ps / pc as f64 };
            let want_minus = if nc == 0 { 0.0 } else { ns / nc as f64 };
            assert!(
                (f64::from(plus) - want_plus).abs() <= 1e-5 * want_plus.abs().max(1e-3),
                "{rows}×{columns} column {j}: a⁺ {plus} vs {want_plus}"
            );
            assert!(
                (f64::from(minus) - want_minus).abs() <= 1e-5 * want_minus.abs().max(1e-3),
                "{rows}×{columns} column {j}: a⁻ {minus} vs {want_minus}"
            );
        }
    }
}

// ----- decoding, determinism, arguments -----

#[test]
fn decompress_add_accumulates_with_its_scale() {
    let g = [1.0f32, -2.0, 0.0, 3.0, -0.5];
    let mut sign = Sign::new(&Args::new()).unwrap();
    let payload = encode(&mut sign, &[5], &g);
    let mut out = vec![1.0f32; 5];
    sign.decompress_add(&payload, 0.5, &mut out).unwrap();
    sign.decompress_add(&payload, 0.5, &mut out).unwrap();
    // 1 + 2·0.5·(±1.3) = 2.3 or −0.3 (each step rounded in f32).
    let plus = 1.0f32 + 0.5 * 1.3 + 0.5 * 1.3;
    let minus = 1.0f32 + 0.5 * -1.3 + 0.5 * -1.3;
    assert_eq!(out, [plus, minus, plus, plus, minus]);

    let mut int8 = Int8::new(&Args::new()).unwrap();
    let payload = encode(&mut int8, &[3], &[127.0, -1.0, 0.0]);
    let mut out = vec![10.0f32; 3];
    int8.decompress_add(&payload, 0.25, &mut out).unwrap();
    // s = 1, q = [127, −1, 0]: out = 10 + 0.25·q.
    assert_eq!(out, [41.75, 9.75, 10.0]);

    let mut none = Cast::new(CastKind::F32, &Args::new()).unwrap();
    let payload = encode(&mut none, &[2], &[4.0, -8.0]);
    let mut out = vec![1.0f32, 1.0];
    none.decompress_add(&payload, 0.25, &mut out).unwrap();
    assert_eq!(out, [2.0, -1.0]);
}

#[test]
fn random_methods_depend_only_on_the_context() {
    let g = gradient(5000, 2);
    for (method, method_args) in [
        ("qsgd", Args::new()),
        ("qsgd", args(&[("bucket", 0.0), ("levels", 3.0)])),
        ("terngrad", Args::new()),
    ] {
        let mut a = build(method, &method_args).unwrap();
        let mut b = build(method, &method_args).unwrap();
        let first = encode_with(a.as_mut(), &[5000], &g, &ctx(4, 1));
        assert_eq!(first, encode_with(b.as_mut(), &[5000], &g, &ctx(4, 1)));
        assert_ne!(
            first,
            encode_with(b.as_mut(), &[5000], &g, &ctx(4, 2)),
            "rank"
        );
        assert_ne!(
            first,
            encode_with(b.as_mut(), &[5000], &g, &ctx(5, 1)),
            "step"
        );
    }
}

#[test]
fn payloads_do_not_depend_on_the_thread_count() {
    // 331 × 907 = 300 217 elements: five work chunks, 907 columns (two column ranges).
    let n = 331 * 907;
    let g = gradient(n, 21);
    let single = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let many = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let shape = [331, 907];
    for (method, method_args) in [
        ("int8", Args::new()),
        ("sign", Args::new()),
        ("onebit", Args::new()),
        ("terngrad", Args::new()),
        ("qsgd", Args::new()),
        ("qsgd", args(&[("bucket", 0.0)])),
        ("qsgd", args(&[("bucket", 100_000.0)])),
    ] {
        let run = |pool: &rayon::ThreadPool| {
            pool.install(|| {
                let mut compressor = build(method, &method_args).unwrap();
                let payload = encode(compressor.as_mut(), &shape, &g);
                let decoded = decode(compressor.as_mut(), &payload, n);
                (payload, decoded)
            })
        };
        assert!(run(&single) == run(&many), "{method} {method_args:?}");
    }
}

#[test]
fn corrupt_fields_are_errors() {
    let corrupt = |result: Result<(), CompressError>| {
        matches!(result, Err(CompressError::Wire(WireError::Corrupt(_))))
    };
    // int8: code −128.
    let mut int8 = Int8::new(&Args::new()).unwrap();
    let mut payload = encode(&mut int8, &[2], &[1.0, -1.0]);
    let last = payload.len() - 1;
    payload[last] = 0x80;
    let mut out = [0.0f32; 2];
    assert!(corrupt(int8.decompress_add(&payload, 1.0, &mut out)));
    assert_eq!(out, [0.0, 0.0], "a refused int8 payload writes nothing");
    // qsgd: s = 5, codes of 4 bits; code 0b1110 is level 7, above s.
    let mut qsgd = Qsgd::new(&args(&[("levels", 5.0)])).unwrap();
    let mut payload = encode(&mut qsgd, &[2], &[3.0, -4.0]);
    let last = payload.len() - 1;
    payload[last] = 0x0E;
    assert!(corrupt(qsgd.decompress_add(&payload, 1.0, &mut out)));
    // qsgd: a negative norm.
    let mut payload = encode(&mut qsgd, &[2], &[3.0, -4.0]);
    let norm_at = header(1) + 8;
    payload[norm_at..norm_at + 4].copy_from_slice(&(-5.0f32).to_le_bytes());
    assert!(corrupt(qsgd.decompress_add(&payload, 1.0, &mut out)));
    // terngrad: code 3.
    let mut terngrad = TernGrad::new(&Args::new()).unwrap();
    let mut payload = encode(&mut terngrad, &[2], &[1.0, -1.0]);
    let last = payload.len() - 1;
    payload[last] = 0b11;
    assert!(corrupt(terngrad.decompress_add(&payload, 1.0, &mut out)));
    // onebit: a positive a⁻.
    let mut onebit = OneBit::new(&Args::new()).unwrap();
    let mut payload = encode(&mut onebit, &[2], &[1.0, -1.0]);
    let minus_at = header(1) + 4;
    payload[minus_at..minus_at + 4].copy_from_slice(&1.0f32.to_le_bytes());
    assert!(corrupt(onebit.decompress_add(&payload, 1.0, &mut out)));
    // sign: a NaN scale.
    let mut sign = Sign::new(&Args::new()).unwrap();
    let mut payload = encode(&mut sign, &[2], &[1.0, -1.0]);
    let scale_at = header(1);
    payload[scale_at..scale_at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    assert!(corrupt(sign.decompress_add(&payload, 1.0, &mut out)));
}

#[test]
fn bad_arguments_name_the_argument() {
    let refused = |method: &str, method_args: Args, argument: &str| {
        let error = match build(method, &method_args) {
            Err(regimen_core::compress::BuildError::Args { error, .. }) => error,
            Err(other) => panic!("{method}: {other}"),
            Ok(_) => panic!("{method} {method_args:?} was accepted"),
        };
        assert_eq!(error.argument.as_deref(), Some(argument), "{error}");
    };
    refused("qsgd", args(&[("levels", 0.0)]), "levels");
    refused("qsgd", args(&[("levels", 2.5)]), "levels");
    refused("qsgd", args(&[("levels", 40_000.0)]), "levels");
    refused("qsgd", args(&[("bucket", -1.0)]), "bucket");
    refused(
        "qsgd",
        Args::new().with("norm", ArgValue::Text("l1".into())),
        "norm",
    );
    refused("terngrad", args(&[("clip", -1.0)]), "clip");
    refused("int8", args(&[("bits", 4.0)]), "bits");
    refused("sign", args(&[("scale", 1.0)]), "scale");
    refused("fp16", args(&[("ratio", 0.5)]), "ratio");
}

#[test]
fn wrong_input_shapes_are_errors_not_panics() {
    for method in ["none", "fp16", "int8", "qsgd", "terngrad", "sign", "onebit"] {
        let mut compressor = build(method, &Args::new()).unwrap();
        let mut out = Vec::new();
        let result = compressor.compress(
            TensorView {
                name: "w",
                shape: &[3, usize::MAX / 2],
                data: &[1.0; 6],
            },
            &ctx(0, 0),
            &mut out,
        );
        assert!(result.is_err(), "{method}");
        let result = compressor.compress(
            TensorView {
                name: "w",
                shape: &[4],
                data: &[1.0; 6],
            },
            &ctx(0, 0),
            &mut out,
        );
        assert!(
            matches!(result, Err(CompressError::Length { .. })),
            "{method}: {result:?}"
        );
    }
}
