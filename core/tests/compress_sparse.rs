//! The sparsifying built-ins (`topk`, `randomk`, `threshold`, `dgc`) against
//! hand-computed payloads and reference selections: exactly the k largest magnitudes
//! (against a sort), exact bytes of tiny payloads, every index encoding round-tripping
//! with the smallest chosen, bits on the wire equal to the layout's formula, corrupt
//! payloads refused, random-k's shared indices and unbiasedness, DGC's warm-up,
//! momentum correction, masking, clipping and state, and the sampled threshold's
//! guarantee.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use regimen_core::compress::dgc::{Dgc, WARMUP_DENSITIES};
use regimen_core::compress::randomk::{random_indices, RandomK};
use regimen_core::compress::sparse::{
    at_least, choose_encoding, element_count, magnitude_key, read_indices, read_sparse_payload,
    sampled_top_k, top_k, write_indices, IndexEncoding, SparsePayload,
};
use regimen_core::compress::threshold::Threshold;
use regimen_core::compress::topk::TopK;
use regimen_core::compress::{
    build, Aggregation, CompressError, Compressor, FeedbackPolicy, MethodId, StepContext,
    TensorView, WireElement, WireError, WireReader,
};
use regimen_core::plugin::{ArgValue, Args};

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

fn ctx(step: u64, rank: usize) -> StepContext<'static> {
    StepContext {
        step,
        rank,
        world: 1,
        seed: 11,
        tensor: 5,
        scheduled: &[],
    }
}

fn numbers(pairs: &[(&str, f64)]) -> Args {
    pairs.iter().fold(Args::new(), |args, &(name, value)| {
        args.with(name, ArgValue::Number(value))
    })
}

fn with_text(args: Args, name: &str, value: &str) -> Args {
    args.with(name, ArgValue::Text(value.to_owned()))
}

/// A deterministic pseudo-random vector: roughly normal (sum of four uniforms),
/// optionally rounded to multiples of `1/levels` so that many magnitudes tie.
fn random_vector(n: usize, seed: u64, levels: Option<f32>) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    (0..n)
        .map(|_| {
            let x = uniform() + uniform() + uniform() + uniform();
            match levels {
                Some(l) => (x * l).round() / l,
                None => x,
            }
        })
        .collect()
}

/// The reference top-k: sort all indices by |x| descending, ties by lower index, take
/// k, return them in increasing order.
fn sorted_top_k(values: &[f32], k: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..values.len() as u32).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (values[a as usize].abs(), values[b as usize].abs());
        y.partial_cmp(&x).unwrap().then(a.cmp(&b))
    });
    order.truncate(k);
    order.sort_unstable();
    order
}

fn compress(
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

fn decode(compressor: &mut dyn Compressor, payload: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0.0; n];
    compressor.decompress_add(payload, 1.0, &mut out).unwrap();
    out
}

/// Header bytes for a `d`-dimensional tensor: 16 + 4·d.
fn header_len(dims: usize) -> usize {
    16 + 4 * dims
}

// ---------------------------------------------------------------------------------
// Counting and arguments
// ---------------------------------------------------------------------------------

#[test]
fn k_is_the_ceiling_of_ratio_times_n_and_at_least_one() {
    // ⌈0.3·10⌉ = 3; ⌈0.25·10⌉ = ⌈2.5⌉ = 3; ⌈0.01·5⌉ = ⌈0.05⌉ = 1; ⌈1·7⌉ = 7.
    assert_eq!(element_count(0.3, 10), 3);
    assert_eq!(element_count(0.25, 10), 3);
    assert_eq!(element_count(0.01, 5), 1);
    assert_eq!(element_count(1.0, 7), 7);
    assert_eq!(element_count(0.5, 0), 0);
    // 0.07·100 is 7.000000000000001 in f64: a whole number within rounding, so 7.
    assert_eq!(element_count(0.07, 100), 7);
    // 1e-9·10 = 1e-8 → max(1, ⌈1e-8⌉) = 1.
    assert_eq!(element_count(1e-9, 10), 1);
}

#[test]
fn ratios_outside_zero_to_one_are_refused_by_name() {
    for method in ["topk", "randomk", "dgc"] {
        for bad in [0.0, -0.1, 1.5, f64::NAN, f64::INFINITY] {
            let error = build(method, &numbers(&[("ratio", bad)])).err().unwrap();
            let text = error.to_string();
            assert!(text.contains("`ratio`"), "{method} {bad}: {text}");
        }
    }
    assert!(build("topk", &Args::new()).is_err(), "topk needs a ratio");
    assert!(
        build("randomk", &Args::new()).is_err(),
        "randomk needs a ratio"
    );
    assert!(
        build("dgc", &Args::new()).is_ok(),
        "dgc has a default ratio"
    );
    let bad_approx = with_text(numbers(&[("ratio", 0.1)]), "approx", "fast");
    assert!(build("topk", &bad_approx)
        .err()
        .unwrap()
        .to_string()
        .contains("approx"));
    assert!(build("threshold", &numbers(&[("value", -1.0)])).is_err());
    assert!(build("threshold", &numbers(&[("value", f64::NAN)])).is_err());
    assert!(build("threshold", &Args::new()).is_err());
    assert!(build("dgc", &numbers(&[("momentum", 1.0)])).is_err());
    assert!(build("dgc", &numbers(&[("clip", -1.0)])).is_err());
    assert!(build("topk", &numbers(&[("ratio", 0.1), ("k", 3.0)])).is_err());
}

#[test]
fn a_scheduled_ratio_is_read_each_step_and_checked() {
    let mut topk = TopK::new(&numbers(&[("ratio", 0.1)])).unwrap();
    let data = random_vector(10, 1, None);
    let scheduled = [("ratio".to_owned(), 0.5)];
    let step = StepContext {
        scheduled: &scheduled,
        ..ctx(0, 0)
    };
    // The schedule's 0.5 of 10 elements, not the configured 0.1: k = 5.
    let payload = compress(&mut topk, &[10], &data, &step);
    let decoded = read_sparse_payload(MethodId::TOPK, &payload, 10).unwrap();
    assert_eq!(decoded.indices, sorted_top_k(&data, 5));
    for bad in [0.0, 1.01, f64::NAN] {
        let scheduled = [("ratio".to_owned(), bad)];
        let step = StepContext {
            scheduled: &scheduled,
            ..ctx(0, 0)
        };
        let mut out = Vec::new();
        let error = topk
            .compress(
                TensorView {
                    name: "w",
                    shape: &[10],
                    data: &data,
                },
                &step,
                &mut out,
            )
            .unwrap_err();
        match error {
            CompressError::Args(arg) => assert_eq!(arg.argument.as_deref(), Some("ratio")),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn methods_declare_their_aggregation_and_feedback() {
    let topk = build("topk", &numbers(&[("ratio", 0.1)])).unwrap();
    assert_eq!(topk.aggregation(), Aggregation::Gather);
    assert_eq!(topk.feedback(), FeedbackPolicy::OffByDefault);
    let randomk = build("randomk", &numbers(&[("ratio", 0.1)])).unwrap();
    assert_eq!(randomk.aggregation(), Aggregation::Sum(WireElement::F32));
    let threshold = build("threshold", &numbers(&[("value", 0.1)])).unwrap();
    assert_eq!(threshold.aggregation(), Aggregation::Gather);
    let dgc = build("dgc", &Args::new()).unwrap();
    assert_eq!(dgc.aggregation(), Aggregation::Gather);
    assert_eq!(dgc.feedback(), FeedbackPolicy::Internal);
}

// ---------------------------------------------------------------------------------
// Exact top-k
// ---------------------------------------------------------------------------------

#[test]
fn top_k_keeps_exactly_the_k_largest_magnitudes() {
    // Sizes below and above the histogram cut-over (16 Ki) and the 64 Ki chunk.
    for (case, &n) in [1usize, 2, 7, 100, 1000, 16_385, 70_001, 300_000]
        .iter()
        .enumerate()
    {
        for levels in [None, Some(4.0), Some(64.0)] {
            let data = random_vector(n, case as u64 + 1, levels);
            for k in [1, n / 100, n / 3, n.saturating_sub(1), n] {
                let k = k.max(1);
                let got = top_k(&data, k).unwrap();
                assert_eq!(got.len(), k, "n {n}, k {k}, levels {levels:?}");
                assert_eq!(
                    got.indices,
                    sorted_top_k(&data, k),
                    "n {n}, k {k}, levels {levels:?}"
                );
                let at: Vec<f32> = got.indices.iter().map(|&i| data[i as usize]).collect();
                assert_eq!(got.values, at);
            }
        }
    }
}

#[test]
fn top_k_breaks_ties_by_the_lower_index_and_ignores_signs() {
    // |x| = [1, 2, 2, 0, 2, 1]: the top 2 are two of the three 2s (indices 1, 2, 4) —
    // the lowest indices 1 and 2; -2.0 ranks with 2.0, and -0.0 with 0.0.
    let data = [1.0, -2.0, 2.0, -0.0, 2.0, -1.0];
    assert_eq!(top_k(&data, 2).unwrap().indices, vec![1, 2]);
    assert_eq!(top_k(&data, 4).unwrap().indices, vec![0, 1, 2, 4]);
    assert_eq!(top_k(&data, 6).unwrap().indices, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(top_k(&data, 0).unwrap().indices, Vec::<u32>::new());
    // All equal over a large tensor: one boundary bucket holding everything.
    let flat = vec![0.25f32; 100_000];
    assert_eq!(
        top_k(&flat, 1000).unwrap().indices,
        (0..1000).collect::<Vec<u32>>()
    );
}

#[test]
fn top_k_is_exact_when_its_stride_sample_misleads_it() {
    // top_k first bounds the k-th largest key from a fixed sample (every 512th
    // element, at offset 256) and falls back to a histogram when fewer than k elements
    // reach the bound. Here the sampled elements are the only large ones (195 of
    // 100 000), so the bound admits too few for k = 1000 and the fallback must run; the
    // rest are distinct small values.
    let n = 100_000;
    let data: Vec<f32> = (0..n)
        .map(|i| {
            if i % 512 == 256 {
                1.0 + i as f32 * 1e-6
            } else {
                ((i * 7919) % 100_003) as f32 * 1e-6
            }
        })
        .collect();
    for k in [100, 195, 196, 1000, 50_000] {
        assert_eq!(
            top_k(&data, k).unwrap().indices,
            sorted_top_k(&data, k),
            "k {k}"
        );
    }
}

#[test]
fn top_k_does_not_depend_on_the_thread_count() {
    let data = random_vector(400_000, 99, Some(32.0));
    let k = element_count(0.01, data.len());
    let reference = top_k(&data, k).unwrap();
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        assert_eq!(pool.install(|| top_k(&data, k).unwrap()), reference);
        assert_eq!(
            pool.install(|| sampled_top_k(&data, k, 0.01, [1, 2, 3, 4]).unwrap()),
            sampled_top_k(&data, k, 0.01, [1, 2, 3, 4]).unwrap()
        );
    }
}

#[test]
fn the_payload_of_a_tiny_top_k_is_exact() {
    // g = [0.5, -3, 0, 2, -1], ratio 0.4: k = ⌈0.4·5⌉ = 2, the largest |g| are 3 (index
    // 1) and 2 (index 3). Index encodings: list 4·2 = 8 bytes, delta gaps [1, 3−1−1 = 1]
    // = 2 bytes, bitmap ⌈5/8⌉ = 1 byte → bitmap, bits 1 and 3 = 0b0000_1010.
    let mut topk = TopK::new(&numbers(&[("ratio", 0.4)])).unwrap();
    let data = [0.5, -3.0, 0.0, 2.0, -1.0];
    let payload = compress(&mut topk, &[5], &data, &ctx(0, 0));
    let mut expected = Vec::new();
    expected.extend_from_slice(b"RGMC"); // magic
    expected.push(1); // version
    expected.push(1); // one dimension
    expected.extend_from_slice(&4u16.to_le_bytes()); // MethodId::TOPK
    expected.extend_from_slice(&5u64.to_le_bytes()); // numel
    expected.extend_from_slice(&5u32.to_le_bytes()); // shape [5]
    expected.push(2); // tag: bitmap
    expected.extend_from_slice(&2u32.to_le_bytes()); // k
    expected.push(0b0000_1010); // indices 1 and 3
    expected.extend_from_slice(&[0x00, 0x00, 0x40, 0xC0]); // -3.0 = 0xC0400000
    expected.extend_from_slice(&[0x00, 0x00, 0x00, 0x40]); // 2.0 = 0x40000000
    assert_eq!(payload, expected);
    // 20 header + 1 tag + 4 count + 1 bitmap + 8 values.
    assert_eq!(payload.len(), 34);
    let mut out = vec![10.0; 5];
    topk.decompress_add(&payload, 0.5, &mut out).unwrap();
    // out += 0.5·decode: [10, 10 − 1.5, 10, 10 + 1, 10].
    assert_eq!(out, vec![10.0, 8.5, 10.0, 11.0, 10.0]);
}

#[test]
fn the_delta_encoding_writes_leb128_gaps() {
    // n = 1000, indices [3, 10, 500]: gaps 3, 10−3−1 = 6, 500−10−1 = 489 = 0b11_1101001
    // → bytes 0x03, 0x06, 0x69|0x80 = 0xE9, 0x03. Delta 4 bytes < list 12 < bitmap 125.
    let indices = [3u32, 10, 500];
    assert_eq!(choose_encoding(&indices, 1000), IndexEncoding::Delta);
    let mut out = Vec::new();
    write_indices(IndexEncoding::Delta, &indices, 1000, &mut out);
    assert_eq!(out, vec![0x03, 0x06, 0xE9, 0x03]);
    // Gaps of 2²¹ take 4 varint bytes each, like a u32: list ties delta and wins the
    // tie (lower tag); the bitmap would be ⌈4 194 306/8⌉ = 524 289 bytes.
    let far = [2_097_152u32, 4_194_305];
    assert_eq!(IndexEncoding::Delta.encoded_len(&far, 4_194_306), 8);
    assert_eq!(choose_encoding(&far, 4_194_306), IndexEncoding::List);
    // Nothing sent: list and delta are 0 bytes; list wins the tie.
    assert_eq!(choose_encoding(&[], 100), IndexEncoding::List);
    // Dense: 40 of 64 → bitmap 8 bytes < delta 40 < list 160.
    let dense: Vec<u32> = (0..40).collect();
    assert_eq!(choose_encoding(&dense, 64), IndexEncoding::Bitmap);
}

#[test]
fn every_index_encoding_round_trips_and_the_smallest_is_chosen() {
    for (case, &(n, density)) in [
        (1usize, 1.0),
        (10, 0.3),
        (1000, 0.01),
        (1000, 0.5),
        (100_000, 0.001),
        (100_000, 0.2),
        (3_000_000, 0.00001),
    ]
    .iter()
    .enumerate()
    {
        let k = element_count(density, n);
        let indices = random_indices(n, k, [case as u64, 0, 0]);
        let mut sizes = Vec::new();
        for encoding in IndexEncoding::ALL {
            let mut out = Vec::new();
            write_indices(encoding, &indices, n, &mut out);
            assert_eq!(out.len(), encoding.encoded_len(&indices, n), "{encoding:?}");
            let mut reader = WireReader::new(&out);
            let back = read_indices(encoding, &mut reader, indices.len(), n).unwrap();
            assert_eq!(back, indices, "{encoding:?}, n {n}, k {k}");
            assert_eq!(reader.remaining(), 0);
            sizes.push(out.len());
        }
        let chosen = choose_encoding(&indices, n);
        let smallest = *sizes.iter().min().unwrap();
        assert_eq!(chosen.encoded_len(&indices, n), smallest, "n {n}, k {k}");
    }
}

#[test]
fn bits_on_the_wire_equal_the_formula() {
    let shape = [33usize, 17];
    let n = 33 * 17;
    let data = random_vector(n, 5, None);
    for (method, args) in [
        ("topk", numbers(&[("ratio", 0.1)])),
        ("topk", numbers(&[("ratio", 1.0)])),
        ("threshold", numbers(&[("value", 0.7)])),
        ("dgc", numbers(&[("ratio", 0.05)])),
    ] {
        let mut compressor = build(method, &args).unwrap();
        let payload = compress(compressor.as_mut(), &shape, &data, &ctx(0, 0));
        let decoded = read_sparse_payload(compressor.method_id(), &payload, n).unwrap();
        let k = decoded.indices.len();
        let index_bytes = decoded.encoding.encoded_len(&decoded.indices, n);
        // header (16 + 4·2) + tag 1 + count 4 + indices + 4·k values.
        assert_eq!(
            payload.len(),
            header_len(2) + 1 + 4 + index_bytes + 4 * k,
            "{method} {args:?}"
        );
        let smallest = IndexEncoding::ALL
            .iter()
            .map(|e| e.encoded_len(&decoded.indices, n))
            .min()
            .unwrap();
        assert_eq!(index_bytes, smallest);
    }
    // topk at ratio 0.1: k = ⌈56.1⌉ = 57; at ratio 1: all 561 in a 71-byte bitmap.
    let mut all = TopK::new(&numbers(&[("ratio", 1.0)])).unwrap();
    let payload = compress(&mut all, &shape, &data, &ctx(0, 0));
    assert_eq!(payload.len(), 24 + 5 + 71 + 4 * 561);
    // randomk: no indices, k f32 values: 24 + 4·57.
    let mut randomk = RandomK::new(&numbers(&[("ratio", 0.1)])).unwrap();
    let payload = compress(&mut randomk, &shape, &data, &ctx(0, 0));
    assert_eq!(payload.len(), header_len(2) + 4 * 57);
}

#[test]
fn corrupt_sparse_payloads_are_refused_without_touching_the_output() {
    let mut topk = TopK::new(&numbers(&[("ratio", 0.5)])).unwrap();
    // The 20-byte header of an 8-element vector.
    let header = {
        let data = [0.0f32; 8];
        let payload = compress(&mut topk, &[8], &data, &ctx(0, 0));
        payload[..20].to_vec()
    };
    let payload = |tag: u8, count: u32, indices: &[u8], values: usize| {
        let mut p = header.clone();
        p.push(tag);
        p.extend_from_slice(&count.to_le_bytes());
        p.extend_from_slice(indices);
        for _ in 0..values {
            p.extend_from_slice(&1.0f32.to_le_bytes());
        }
        p
    };
    let list = |ix: &[u32]| ix.iter().flat_map(|i| i.to_le_bytes()).collect::<Vec<u8>>();
    let good = payload(0, 2, &list(&[1, 5]), 2);
    assert!(topk.decompress_add(&good, 1.0, &mut [0.0; 8]).is_ok());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown tag", payload(3, 2, &list(&[1, 5]), 2)),
        ("repeated index", payload(0, 2, &list(&[5, 5]), 2)),
        ("decreasing", payload(0, 2, &list(&[5, 1]), 2)),
        ("index ≥ n", payload(0, 2, &list(&[1, 8]), 2)),
        (
            "count > n",
            payload(0, 9, &list(&[0, 1, 2, 3, 4, 5, 6, 7, 8]), 9),
        ),
        ("overlong varint", payload(1, 1, &[0x81, 0x00], 1)),
        (
            "varint beyond 32 bits",
            payload(1, 1, &[0xFF, 0xFF, 0xFF, 0xFF, 0x1F], 1),
        ),
        (
            "varint of 6 bytes",
            payload(1, 1, &[0x80, 0x80, 0x80, 0x80, 0x80, 0x00], 1),
        ),
        // gaps 6, 1 → indices 6, 8: out of range.
        ("delta past the end", payload(1, 2, &[0x06, 0x01], 2)),
        ("bitmap count mismatch", payload(2, 3, &[0b0010_0010], 3)),
        ("too few values", payload(0, 2, &list(&[1, 5]), 1)),
        ("trailing bytes", {
            let mut p = good.clone();
            p.push(0);
            p
        }),
    ];
    for (what, bad) in cases {
        let mut out = [3.0f32; 8];
        assert!(
            topk.decompress_add(&bad, 1.0, &mut out).is_err(),
            "{what} decoded"
        );
        assert_eq!(out, [3.0; 8], "{what} wrote into the output");
    }
    // Bitmap padding: n = 5 has 3 unused bits in its one byte.
    let mut p = header.clone();
    p[8] = 5;
    p[16] = 5;
    p.push(2);
    p.extend_from_slice(&1u32.to_le_bytes());
    p.push(0b1000_0000);
    p.extend_from_slice(&1.0f32.to_le_bytes());
    let mut reader = WireReader::new(&p[20..]);
    reader.u8().unwrap();
    reader.u32().unwrap();
    assert!(matches!(
        read_indices(IndexEncoding::Bitmap, &mut reader, 1, 5),
        Err(WireError::Corrupt(_))
    ));
    // A payload of another method, and a wrong output length.
    assert!(topk.decompress_add(&good, 1.0, &mut [0.0; 9]).is_err());
    let mut other = Threshold::new(&numbers(&[("value", 0.5)])).unwrap();
    assert!(other.decompress_add(&good, 1.0, &mut [0.0; 8]).is_err());
}

// ---------------------------------------------------------------------------------
// Threshold
// ---------------------------------------------------------------------------------

#[test]
fn threshold_sends_exactly_the_magnitudes_at_or_above_the_value() {
    // |g| ≥ 0.5: indices 0 (0.5), 1 (−0.5), 3 (1.0), 4 (−2.0); 0.49999997 is the f32
    // just below 0.5 and stays.
    let data = [0.5, -0.5, 0.499_999_97, 1.0, -2.0, 0.0];
    let mut threshold = Threshold::new(&numbers(&[("value", 0.5)])).unwrap();
    let payload = compress(&mut threshold, &[6], &data, &ctx(0, 0));
    let SparsePayload {
        indices, values, ..
    } = read_sparse_payload(MethodId::THRESHOLD, &payload, 6).unwrap();
    assert_eq!(indices, vec![0, 1, 3, 4]);
    assert_eq!(values, vec![0.5, -0.5, 1.0, -2.0]);
    // On random data, against a plain filter.
    let data = random_vector(200_000, 3, Some(16.0));
    for value in [0.0f32, 0.25, 0.9, 5.0] {
        let expected: Vec<u32> = (0..data.len() as u32)
            .filter(|&i| data[i as usize].abs() >= value)
            .collect();
        assert_eq!(
            at_least(&data, value).unwrap().indices,
            expected,
            "value {value}"
        );
    }
    // Nothing at or above: an empty payload (list encoding of 0 bytes).
    let mut high = Threshold::new(&numbers(&[("value", 100.0)])).unwrap();
    let payload = compress(&mut high, &[6], &[1.0; 6], &ctx(0, 0));
    assert_eq!(payload.len(), header_len(1) + 5);
    assert_eq!(decode(&mut high, &payload, 6), vec![0.0; 6]);
}

// ---------------------------------------------------------------------------------
// Random-k
// ---------------------------------------------------------------------------------

#[test]
fn randomk_draws_k_distinct_sorted_indices_shared_by_all_ranks() {
    let n = 1000;
    let mut chosen = Vec::new();
    for rank in 0..3 {
        let mut randomk = RandomK::new(&numbers(&[("ratio", 0.05)])).unwrap();
        let data = random_vector(n, rank as u64 + 10, None);
        let step = StepContext {
            world: 3,
            ..ctx(4, rank)
        };
        compress(&mut randomk, &[n], &data, &step);
        chosen.push(randomk.last_indices().unwrap().to_vec());
    }
    // k = ⌈0.05·1000⌉ = 50, strictly increasing, the same on every rank.
    assert_eq!(chosen[0].len(), 50);
    assert!(chosen[0].windows(2).all(|w| w[0] < w[1]));
    assert!(chosen[0].iter().all(|&i| (i as usize) < n));
    assert_eq!(chosen[0], chosen[1]);
    assert_eq!(chosen[0], chosen[2]);
    // Another step or tensor draws other indices.
    assert_ne!(random_indices(n, 50, [11, 5, 5]), chosen[0]);
    assert_eq!(random_indices(n, 50, [11, 4, 5]), chosen[0]);
    // k = n takes everything.
    assert_eq!(
        random_indices(7, 7, [1, 2, 3]),
        (0..7).collect::<Vec<u32>>()
    );
}

#[test]
fn randomk_payloads_sum_across_workers_to_the_scaled_average() {
    // n = 10, ratio 0.2 → k = 2, scale n/k = 5. Three workers' data sections are summed
    // (the allreduce), then decoded with 1/3: at each chosen index, 5·mean(g).
    let n = 10;
    let grads: Vec<Vec<f32>> = (0..3).map(|w| random_vector(n, w + 20, None)).collect();
    let mut workers: Vec<RandomK> = (0..3)
        .map(|_| RandomK::new(&numbers(&[("ratio", 0.2)])).unwrap())
        .collect();
    let payloads: Vec<Vec<u8>> = workers
        .iter_mut()
        .zip(&grads)
        .enumerate()
        .map(|(rank, (w, g))| compress(w, &[n], g, &ctx(2, rank)))
        .collect();
    let header = header_len(1);
    assert!(payloads.iter().all(|p| p.len() == header + 8));
    let mut reduced = payloads[0].clone();
    for p in &payloads[1..] {
        for (acc, add) in reduced[header..]
            .chunks_exact_mut(4)
            .zip(p[header..].chunks_exact(4))
        {
            let sum = f32::from_le_bytes(acc.try_into().unwrap())
                + f32::from_le_bytes(add.try_into().unwrap());
            acc.copy_from_slice(&sum.to_le_bytes());
        }
    }
    let indices = workers[0].last_indices().unwrap().to_vec();
    let mut out = vec![0.0f32; n];
    workers[1]
        .decompress_add(&reduced, 1.0 / 3.0, &mut out)
        .unwrap();
    for i in 0..n {
        let expected = if indices.contains(&(i as u32)) {
            // The same operations the wire does: each 5·g_w in f32, summed in rank
            // order, scaled by 1/3.
            (1.0f32 / 3.0) * ((5.0 * grads[0][i] + 5.0 * grads[1][i]) + 5.0 * grads[2][i])
        } else {
            0.0
        };
        assert_eq!(out[i], expected, "element {i}");
    }
    // A fresh instance has no indices to decode with.
    let mut fresh = RandomK::new(&numbers(&[("ratio", 0.2)])).unwrap();
    assert!(fresh.decompress_add(&reduced, 1.0, &mut out).is_err());
}

#[test]
fn randomk_is_unbiased() {
    // n = 50, ratio 0.1 → k = 5, each element sent with p = 0.1 and scaled by n/k = 10.
    // Per element X = 10·g·B, B ~ Bernoulli(0.1): E[X] = g, Var[X] = g²·(100·0.1 − 1)
    // = 9·g². Over S = 4000 steps the mean has σ = 3·|g|/√4000 ≈ 0.047·|g|; allow 5σ.
    // Inclusion counts are Binomial(4000, 0.1): mean 400, σ = √(4000·0.09) ≈ 19; 5σ.
    let n = 50;
    let steps = 4000u64;
    let g = random_vector(n, 8, None);
    let mut randomk = RandomK::new(&numbers(&[("ratio", 0.1)])).unwrap();
    let mut sum = vec![0.0f64; n];
    let mut counts = vec![0u32; n];
    for step in 0..steps {
        let payload = compress(&mut randomk, &[n], &g, &ctx(step, 0));
        let decoded = decode(&mut randomk, &payload, n);
        for (i, &d) in decoded.iter().enumerate() {
            sum[i] += f64::from(d);
        }
        for &i in randomk.last_indices().unwrap() {
            counts[i as usize] += 1;
        }
    }
    for i in 0..n {
        let mean = sum[i] / steps as f64;
        let sigma = 3.0 * f64::from(g[i].abs()) / (steps as f64).sqrt();
        assert!(
            (mean - f64::from(g[i])).abs() <= 5.0 * sigma + 1e-6,
            "element {i}: mean {mean}, g {}",
            g[i]
        );
        assert!(
            (i64::from(counts[i]) - 400).abs() <= 95,
            "element {i} chosen {} times",
            counts[i]
        );
    }
    // Without the scaling the values are sent as they are.
    let mut biased =
        RandomK::new(&with_flag(numbers(&[("ratio", 0.1)]), "unbiased", false)).unwrap();
    let payload = compress(&mut biased, &[n], &g, &ctx(0, 0));
    let decoded = decode(&mut biased, &payload, n);
    for &i in biased.last_indices().unwrap() {
        assert_eq!(decoded[i as usize], g[i as usize]);
    }
}

fn with_flag(args: Args, name: &str, value: bool) -> Args {
    args.with(name, ArgValue::Bool(value))
}

// ---------------------------------------------------------------------------------
// Sampled threshold
// ---------------------------------------------------------------------------------

#[test]
fn sampled_top_k_sends_at_most_k_all_above_the_true_2k_th_value() {
    // n = 10⁶, ratio 1%: k = 10 000. The sample has s = 1% of n = 10 000 elements and
    // the threshold is its ⌈0.01·s⌉ = 100th largest. An element above the threshold
    // is below the true 2k-th value only if fewer than 100 of the sample fall in the
    // top 2% — Binomial(10 000, 0.02) has mean 200 and σ = 14, so that is a 7σ event.
    // Likewise it sends at least k/4: the top 0.25% holds Binomial(10⁴, 0.0025), mean
    // 25 and σ = 5, far from 100.
    let n = 1_000_000;
    let data = random_vector(n, 17, None);
    let k = element_count(0.01, n);
    let mut magnitudes: Vec<f32> = data.iter().map(|x| x.abs()).collect();
    magnitudes.sort_by(|a, b| b.partial_cmp(a).unwrap());
    let bound = magnitudes[2 * k - 1];
    for seed in 0..4 {
        let got = sampled_top_k(&data, k, 0.01, [seed, 0, 1, 0])
            .unwrap()
            .indices;
        assert!(got.len() <= k, "{} > {k}", got.len());
        assert!(got.len() >= k / 4, "only {}", got.len());
        assert!(got.windows(2).all(|w| w[0] < w[1]));
        assert!(got.iter().all(|&i| data[i as usize].abs() >= bound));
    }
    // When the threshold selects more than k (all equal), the exact top-k of the
    // selected is kept: the k lowest indices.
    let flat = vec![1.0f32; 5000];
    let k = element_count(0.01, 5000);
    assert_eq!(
        sampled_top_k(&flat, k, 0.01, [0; 4]).unwrap().indices,
        (0..k as u32).collect::<Vec<u32>>()
    );
    // Small tensors are selected exactly.
    let small = random_vector(1000, 4, None);
    assert_eq!(
        sampled_top_k(&small, 10, 0.01, [0; 4]).unwrap().indices,
        sorted_top_k(&small, 10)
    );
}

#[test]
fn topk_with_approx_sample_uses_the_sampled_selection() {
    let n = 50_000;
    let data = random_vector(n, 23, None);
    let args = with_text(numbers(&[("ratio", 0.02)]), "approx", "sample");
    let mut topk = TopK::new(&args).unwrap();
    let step = ctx(3, 1);
    let payload = compress(&mut topk, &[n], &data, &step);
    let decoded = read_sparse_payload(MethodId::TOPK, &payload, n).unwrap();
    // Keyed by [seed, step, tensor, rank] = [11, 3, 5, 1].
    assert_eq!(
        decoded.indices,
        sampled_top_k(&data, 1000, 0.02, [11, 3, 5, 1])
            .unwrap()
            .indices
    );
    for (&i, &v) in decoded.indices.iter().zip(&decoded.values) {
        assert_eq!(v, data[i as usize]);
    }
}

// ---------------------------------------------------------------------------------
// DGC
// ---------------------------------------------------------------------------------

fn dgc(pairs: &[(&str, f64)]) -> Dgc {
    Dgc::new(&with_text(numbers(pairs), "approx", "exact")).unwrap()
}

#[test]
fn dgc_warms_up_through_four_exponential_stages() {
    // The paper's 75% → 93.75% → 98.4375% → 99.6% sparsity: densities 0.25^(s+1).
    assert_eq!(WARMUP_DENSITIES, [0.25, 0.0625, 0.015625, 0.00390625]);
    let dgc_8 = dgc(&[("warmup", 8.0)]);
    // warmup 8: stage ⌊4e/8⌋ = ⌊e/2⌋; the default ratio 0.001 after step 8.
    let expected = [
        0.25, 0.25, 0.0625, 0.0625, 0.015625, 0.015625, 0.00390625, 0.00390625,
    ];
    for (elapsed, &density) in expected.iter().enumerate() {
        assert_eq!(
            dgc_8.density(elapsed as u64, 0.001),
            density,
            "step {elapsed}"
        );
    }
    assert_eq!(dgc_8.density(8, 0.001), 0.001);
    // Never below the ratio: max(stage density, 0.1).
    assert_eq!(dgc_8.density(0, 0.1), 0.25);
    assert_eq!(dgc_8.density(2, 0.1), 0.1);

    // Through compress, counted from the first step it compressed (step 10 here):
    // n = 1024 distinct magnitudes, k = ⌈density·1024⌉ = 256, 256, 64, 64, 16, 16,
    // 4, 4, then max(1, ⌈0.001·1024⌉) = ⌈1.024⌉ = 2.
    let n = 1024;
    let mut compressor = dgc(&[("warmup", 8.0), ("momentum", 0.0)]);
    let counts: Vec<usize> = (10..19)
        .map(|step| {
            let data: Vec<f32> = (0..n).map(|i| (i + 1) as f32).collect();
            let payload = compress(&mut compressor, &[n], &data, &ctx(step, 0));
            read_sparse_payload(MethodId::DGC, &payload, n)
                .unwrap()
                .indices
                .len()
        })
        .collect();
    assert_eq!(counts, vec![256, 256, 64, 64, 16, 16, 4, 4, 2]);
}

#[test]
fn dgc_momentum_correction_and_masking_by_hand() {
    // m = 0.5, n = 4, ratio 0.25 → k = 1, exact selection, no clipping.
    let mut compressor = dgc(&[("ratio", 0.25), ("momentum", 0.5)]);
    /// One step: the gradient, the (index, value) sent, and u, v afterwards.
    struct Step {
        g: [f32; 4],
        sent: (u32, f32),
        u: [f32; 4],
        v: [f32; 4],
    }
    let steps = [
        // Step 0: u = g = [1, 2, −4, 0.5]; v = u. Top |v| is index 2 (−4), sent;
        // masking zeroes u[2], v[2].
        Step {
            g: [1.0, 2.0, -4.0, 0.5],
            sent: (2, -4.0),
            u: [1.0, 2.0, 0.0, 0.5],
            v: [1.0, 2.0, 0.0, 0.5],
        },
        // Step 1: g = 1: u = 0.5·[1, 2, 0, 0.5] + 1 = [1.5, 2, 1, 1.25];
        // v = [1, 2, 0, 0.5] + u = [2.5, 4, 1, 1.75]. Index 1 (4) is sent and masked.
        Step {
            g: [1.0, 1.0, 1.0, 1.0],
            sent: (1, 4.0),
            u: [1.5, 0.0, 1.0, 1.25],
            v: [2.5, 0.0, 1.0, 1.75],
        },
        // Step 2: g = [0, 0, 0, −8]: u = 0.5·[1.5, 0, 1, 1.25] + g = [0.75, 0, 0.5,
        // −7.375]; v = [2.5 + 0.75, 0, 1 + 0.5, 1.75 − 7.375] = [3.25, 0, 1.5, −5.625].
        // Index 3 (|−5.625| > 3.25) is sent and masked.
        Step {
            g: [0.0, 0.0, 0.0, -8.0],
            sent: (3, -5.625),
            u: [0.75, 0.0, 0.5, 0.0],
            v: [3.25, 0.0, 1.5, 0.0],
        },
    ];
    for (step, expected) in steps.iter().enumerate() {
        let payload = compress(&mut compressor, &[4], &expected.g, &ctx(step as u64, 0));
        let decoded = read_sparse_payload(MethodId::DGC, &payload, 4).unwrap();
        assert_eq!(decoded.indices, vec![expected.sent.0], "step {step}");
        assert_eq!(decoded.values, vec![expected.sent.1], "step {step}");
        assert_eq!(
            compressor.momentum_buffer(),
            expected.u,
            "u after step {step}"
        );
        assert_eq!(compressor.accumulated(), expected.v, "v after step {step}");
    }
}

#[test]
fn dgc_clips_locally_to_the_norm_scaled_by_one_over_root_n() {
    // g = [3, 4], ‖g‖ = 5; momentum 0 and ratio 1 send v = the clipped g.
    let send = |clip: f64, world: usize| -> Vec<f32> {
        let mut compressor = dgc(&[("ratio", 1.0), ("momentum", 0.0), ("clip", clip)]);
        let step = StepContext { world, ..ctx(0, 0) };
        let payload = compress(&mut compressor, &[2], &[3.0, 4.0], &step);
        read_sparse_payload(MethodId::DGC, &payload, 2)
            .unwrap()
            .values
    };
    // clip 2 over N = 4 workers: bound 2/√4 = 1, coefficient 1/(5 + 1e-6).
    let c = (1.0f64 / (5.0 + 1e-6)) as f32;
    assert_eq!(send(2.0, 4), vec![c * 3.0, c * 4.0]);
    // The same clip on one worker: bound 2, coefficient 2/(5 + 1e-6) — twice as large
    // (√4 = 2).
    let c1 = (2.0f64 / (5.0 + 1e-6)) as f32;
    assert_eq!(send(2.0, 1), vec![c1 * 3.0, c1 * 4.0]);
    // clip 12 over 4 workers: bound 6, 6/(5 + 1e-6) > 1 leaves g alone.
    assert_eq!(send(12.0, 4), vec![3.0, 4.0]);
    // clip 0 is off.
    assert_eq!(send(0.0, 4), vec![3.0, 4.0]);
}

#[test]
fn dgc_state_round_trips_bit_for_bit() {
    let n = 5000;
    let make = || {
        Dgc::new(&numbers(&[
            ("ratio", 0.01),
            ("momentum", 0.9),
            ("warmup", 4.0),
        ]))
        .unwrap()
    };
    let mut original = make();
    for step in 0..3 {
        let g = random_vector(n, step + 40, None);
        compress(&mut original, &[n], &g, &ctx(step, 0));
    }
    let mut state = Vec::new();
    original.save_state(&mut state).unwrap();
    // magic 4 + n 8 + flag 1 + origin 8 + u and v 8·n.
    assert_eq!(state.len(), 21 + 8 * n);
    let mut restored = make();
    restored.load_state(&state).unwrap();
    for step in 3..7 {
        let g = random_vector(n, step + 40, None);
        let a = compress(&mut original, &[n], &g, &ctx(step, 0));
        let b = compress(&mut restored, &[n], &g, &ctx(step, 0));
        assert_eq!(a, b, "step {step}");
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        assert_eq!(bits(original.accumulated()), bits(restored.accumulated()));
        assert_eq!(
            bits(original.momentum_buffer()),
            bits(restored.momentum_buffer())
        );
    }
    // Refused: another magic, a truncated state, a wrong length.
    let mut fresh = make();
    let mut bad = state.clone();
    bad[0] = b'X';
    assert!(fresh.load_state(&bad).is_err());
    assert!(fresh.load_state(&state[..state.len() - 1]).is_err());
    assert!(fresh.load_state(&state[..10]).is_err());
    // An unused instance saves an empty accumulator that loads back.
    let mut empty = Vec::new();
    make().save_state(&mut empty).unwrap();
    assert_eq!(empty.len(), 21);
    assert!(fresh.load_state(&empty).is_ok());
    // A tensor of another size is refused once the accumulators exist.
    let mut out = Vec::new();
    let other = [1.0f32; 7];
    let result = original.compress(
        TensorView {
            name: "w",
            shape: &[7],
            data: &other,
        },
        &ctx(8, 0),
        &mut out,
    );
    assert!(matches!(result, Err(CompressError::Length { .. })));
}

#[test]
fn top_k_ranks_by_the_documented_key() {
    // The key is the bit pattern without the sign: ordered like |x|.
    let values = [0.0f32, 1e-40, 1e-30, 0.5, 1.0, 3.0e38, f32::INFINITY];
    for pair in values.windows(2) {
        assert!(magnitude_key(pair[0]) < magnitude_key(pair[1]));
        assert_eq!(magnitude_key(-pair[1]), magnitude_key(pair[1]));
    }
}
