//! PowerSGD: the kernels against plain products, reconstruction of low-rank matrices,
//! convergence to the SVD truncation error, which tensors go uncompressed, the bytes on
//! the wire, agreement between simulated workers, state save/load, and refusal of
//! malformed payloads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use regimen_core::compress::powersgd::kernels::{
    self, add_outer, block, copy_and_project, project_transpose, unblock, InstructionSet,
};
use regimen_core::compress::powersgd::{MatrixView, PowerSgd};
use regimen_core::compress::{
    CompressError, Compressor, MethodId, PayloadHeader, Round, StepContext, TensorView, WireReader,
};
use regimen_core::plugin::{ArgValue, Args};

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

/// Deterministic values in [-0.5, 0.5) from a 64-bit LCG.
fn pseudo_random(count: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32) / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn args(pairs: &[(&str, ArgValue)]) -> Args {
    pairs.iter().fold(Args::new(), |args, (name, value)| {
        args.with(*name, value.clone())
    })
}

fn num(value: f64) -> ArgValue {
    ArgValue::Number(value)
}

/// `powersgd(rank: rank, start: 0)` (other arguments at their defaults).
fn powersgd(rank: usize) -> PowerSgd {
    PowerSgd::new(&args(&[("rank", num(rank as f64)), ("start", num(0.0))])).unwrap()
}

fn ctx(step: u64, rank: usize, world: usize) -> StepContext<'static> {
    StepContext {
        step,
        rank,
        world,
        seed: 2024,
        tensor: 5,
        scheduled: &[],
    }
}

fn header_len(payload: &[u8]) -> usize {
    let mut reader = WireReader::new(payload);
    PayloadHeader::read(&mut reader).unwrap();
    reader.offset()
}

fn header_shape(payload: &[u8]) -> Vec<u32> {
    PayloadHeader::read(&mut WireReader::new(payload))
        .unwrap()
        .shape
}

/// The allreduce: the first payload's header, then the data sections summed as f32 in
/// rank order.
fn reduce(payloads: &[Vec<u8>]) -> Vec<u8> {
    let start = header_len(&payloads[0]);
    let mut out = payloads[0].clone();
    for payload in &payloads[1..] {
        assert_eq!(
            payload.len(),
            out.len(),
            "payload lengths differ across workers"
        );
        for (acc, add) in out[start..]
            .chunks_exact_mut(4)
            .zip(payload[start..].chunks_exact(4))
        {
            let sum = f32::from_le_bytes(acc.try_into().unwrap())
                + f32::from_le_bytes(add.try_into().unwrap());
            acc.copy_from_slice(&sum.to_le_bytes());
        }
    }
    out
}

/// What one simulated step produced.
struct Outcome {
    /// Each worker's decoded average.
    averages: Vec<Vec<f32>>,
    /// Every round's payloads, per worker (`rounds[round][rank]`).
    rounds: Vec<Vec<Vec<u8>>>,
    /// Every round's reduced payload.
    reduced: Vec<Vec<u8>>,
}

impl Outcome {
    /// Bytes one worker put on the wire, over all rounds.
    fn bytes_per_worker(&self) -> usize {
        self.rounds.iter().map(|round| round[0].len()).sum()
    }
}

/// One step of `workers` on their `inputs`, driven as the host does.
fn run_step(workers: &mut [PowerSgd], shape: &[usize], inputs: &[Vec<f32>], step: u64) -> Outcome {
    let world = workers.len();
    let mut payloads: Vec<Vec<u8>> = workers
        .iter_mut()
        .zip(inputs)
        .enumerate()
        .map(|(rank, (worker, input))| {
            let mut out = Vec::new();
            worker
                .compress(
                    TensorView {
                        name: "layer.weight",
                        shape,
                        data: input,
                    },
                    &ctx(step, rank, world),
                    &mut out,
                )
                .unwrap();
            out
        })
        .collect();
    let mut rounds = Vec::new();
    let mut reduced_all = Vec::new();
    loop {
        let reduced = reduce(&payloads);
        rounds.push(payloads);
        reduced_all.push(reduced.clone());
        let mut next = Vec::new();
        let mut done = 0;
        for (rank, worker) in workers.iter_mut().enumerate() {
            let mut out = Vec::new();
            match worker
                .next_round(&reduced, &ctx(step, rank, world), &mut out)
                .unwrap()
            {
                Round::Done => done += 1,
                Round::More => next.push(out),
            }
        }
        if done == world {
            let numel = inputs[0].len();
            let averages = workers
                .iter_mut()
                .map(|worker| {
                    let mut average = vec![0.0f32; numel];
                    worker
                        .decompress_add(&reduced, 1.0 / world as f32, &mut average)
                        .unwrap();
                    average
                })
                .collect();
            return Outcome {
                averages,
                rounds,
                reduced: reduced_all,
            };
        }
        assert_eq!(done, 0, "workers disagree on the number of rounds");
        assert!(rounds.len() < 4, "too many rounds");
        payloads = next;
    }
}

/// ‖a − b‖₂ in f64.
fn distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        .sqrt()
}

fn norm(a: &[f32]) -> f64 {
    a.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt()
}

/// `count` orthonormal columns of length `len` (column-major), by Gram–Schmidt (twice)
/// in f64 on pseudo-random columns.
fn orthonormal_columns(len: usize, count: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut columns: Vec<Vec<f64>> = Vec::new();
    for c in 0..count {
        let mut v: Vec<f64> = pseudo_random(len, seed * 1000 + c as u64)
            .into_iter()
            .map(f64::from)
            .collect();
        for _ in 0..2 {
            for u in &columns {
                let d: f64 = u.iter().zip(&v).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(u).for_each(|(x, &y)| *x -= d * y);
            }
        }
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
        columns.push(v);
    }
    columns
}

/// The row-major n×m matrix `U·diag(σ)·Vᵀ` for orthonormal `U` (n×k), `V` (m×k).
fn with_singular_values(n: usize, m: usize, sigma: &[f64], seed: u64) -> Vec<f32> {
    let u = orthonormal_columns(n, sigma.len(), seed);
    let v = orthonormal_columns(m, sigma.len(), seed + 1);
    let mut out = vec![0.0f32; n * m];
    for i in 0..n {
        for j in 0..m {
            let value: f64 = (0..sigma.len()).map(|k| u[k][i] * sigma[k] * v[k][j]).sum();
            out[i * m + j] = value as f32;
        }
    }
    out
}

/// Run `steps` warm-started steps of one worker on the fixed `matrix`; the last
/// step's reconstruction.
fn iterate(compressor: &mut PowerSgd, shape: &[usize], matrix: &[f32], steps: u64) -> Vec<f32> {
    let inputs = vec![matrix.to_vec()];
    let mut last = Vec::new();
    for step in 0..steps {
        last = run_step(std::slice::from_mut(compressor), shape, &inputs, step)
            .averages
            .remove(0);
    }
    last
}

// ---------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------

/// The three products in f64, plainly.
fn naive_products(
    matrix: &[f32],
    n: usize,
    m: usize,
    q: &[f32],
    r: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut p = vec![0.0f64; n * r];
    for i in 0..n {
        for c in 0..r {
            p[i * r + c] = (0..m)
                .map(|j| f64::from(matrix[i * m + j]) * f64::from(q[j * r + c]))
                .sum();
        }
    }
    let p32: Vec<f32> = p.iter().map(|&x| x as f32).collect();
    let mut qt = vec![0.0f64; m * r];
    for j in 0..m {
        for c in 0..r {
            qt[j * r + c] = (0..n)
                .map(|i| f64::from(matrix[i * m + j]) * f64::from(p32[i * r + c]))
                .sum();
        }
    }
    let mut outer = vec![0.0f64; n * m];
    for i in 0..n {
        for j in 0..m {
            outer[i * m + j] = (0..r)
                .map(|c| f64::from(p32[i * r + c]) * f64::from(q[j * r + c]))
                .sum();
        }
    }
    (p, qt, outer)
}

/// Every product element within `tolerance` of the naive one, relative to the scale
/// `Σ|terms|` (here bounded by `len · max|a| · max|b|`).
#[track_caller]
fn assert_close(actual: &[f32], expected: &[f64], scale: f64, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (k, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (f64::from(a) - e).abs() <= 1e-5 * scale,
            "{what}[{k}]: {a} vs {e} (scale {scale})"
        );
    }
}

/// Run the three kernels with `isa` on `threads` threads.
fn kernel_outputs(
    isa: InstructionSet,
    threads: usize,
    matrix: &[f32],
    n: usize,
    m: usize,
    q: &[f32],
    r: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let mut blocked = Vec::new();
        block(q, m, r, &mut blocked);
        let mut copy = vec![0.0f32; n * m];
        let mut p = vec![0.0f32; n * r];
        copy_and_project(isa, matrix, &mut copy, m, &blocked, r, &mut p);
        let mut partials = Vec::new();
        let mut qt_blocked = vec![0.0f32; kernels::blocked_len(m, r)];
        project_transpose(isa, &copy, m, &p, r, &mut partials, &mut qt_blocked);
        let mut qt = Vec::new();
        unblock(&qt_blocked, m, r, &mut qt);
        // out starts at 1 so that the test sees `+=`; scale 0.5.
        let mut out = vec![1.0f32; n * m];
        add_outer(isa, &mut out, m, &p, r, &blocked, 0.5);
        (copy, p, qt, out)
    })
}

#[test]
fn kernels_match_plain_products_on_awkward_shapes() {
    // Shapes exercising: a single element, rows shorter than one 8-lane chunk, a
    // partial last chunk, ranks above the 8-column group, several parallel tasks and
    // transpose blocks (n = 300: blocks of 64 rows, the last with 44 = 4·11 rows; n =
    // 130: a last block of 2 rows, below a quad), a second column tile holding only
    // the partial chunk (m = 515 = 64·8 + 3).
    let cases = [
        (1, 1, 1),
        (5, 3, 2),
        (13, 29, 3),
        (70, 9, 5),
        (130, 67, 12),
        (64, 64, 8),
        (300, 515, 4),
        (9, 1030, 9),
        (40, 37, 16),
    ];
    for (case, &(n, m, r)) in cases.iter().enumerate() {
        let matrix = pseudo_random(n * m, 10 + case as u64);
        let q = pseudo_random(m * r, 100 + case as u64);
        let (p, qt, outer) = naive_products(&matrix, n, m, &q, r);
        let (copy, p_k, qt_k, out_k) =
            kernel_outputs(InstructionSet::Detected, 2, &matrix, n, m, &q, r);
        assert_eq!(copy, matrix, "copy ({n}×{m}, r {r})");
        // |entries| ≤ 0.5, so a dot product of length L has Σ|terms| ≤ L/4; P̂ entries
        // here are sums of m terms, so |p| ≤ m/4.
        assert_close(&p_k, &p, m as f64 / 4.0, "P");
        assert_close(&qt_k, &qt, n as f64 * m as f64 / 8.0, "MᵀP");
        let expected_out: Vec<f64> = outer.iter().map(|&x| 1.0 + 0.5 * x).collect();
        assert_close(&out_k, &expected_out, r as f64 * m as f64 / 8.0, "out");
        // The same bits on one thread or three, with the vector or the array code.
        for (isa, threads) in [
            (InstructionSet::Detected, 1),
            (InstructionSet::Detected, 3),
            (InstructionSet::Baseline, 1),
            (InstructionSet::Baseline, 3),
        ] {
            let other = kernel_outputs(isa, threads, &matrix, n, m, &q, r);
            assert_eq!(other.1, p_k, "P bits, {isa:?} on {threads} threads");
            assert_eq!(other.2, qt_k, "MᵀP bits, {isa:?} on {threads} threads");
            assert_eq!(other.3, out_k, "out bits, {isa:?} on {threads} threads");
        }
    }
}

#[test]
fn blocked_layout_round_trips_and_matches_its_formula() {
    // m = 10 rows of Q, r = 3: two chunks of 8 rows, the second padded with zeros.
    let q: Vec<f32> = (0..30).map(|v| v as f32 + 1.0).collect();
    let mut blocked = Vec::new();
    block(&q, 10, 3, &mut blocked);
    assert_eq!(blocked.len(), 2 * 3 * 8);
    // blocked[(k·r + c)·8 + l] = q[(k·8 + l)·r + c]: k = 1, c = 2, l = 1 → row 9,
    // column 2 → q[29] = 30.
    assert_eq!(blocked[(3 + 2) * 8 + 1], 30.0);
    // Row 10 does not exist: padding.
    assert_eq!(blocked[(3 + 2) * 8 + 2], 0.0);
    let mut back = Vec::new();
    unblock(&blocked, 10, 3, &mut back);
    assert_eq!(back, q);
    // r = 10: a group of 8 columns, then one of 2 starting at ⌈10/8⌉·8·8 = 128.
    // Row 9, column 9: group width w = 2, k = 1, l = 1, c − 8 = 1 →
    // 128 + (1·2 + 1)·8 + 1 = 153; the value is q[9·10 + 9] = q[99] = 100.
    let q: Vec<f32> = (0..100).map(|v| v as f32 + 1.0).collect();
    block(&q, 10, 10, &mut blocked);
    assert_eq!(blocked.len(), 2 * 10 * 8);
    assert_eq!(blocked[153], 100.0);
    // Row 9, column 7 is in the first group (width 8): (1·8 + 7)·8 + 1 = 121 → q[97].
    assert_eq!(blocked[121], 98.0);
    unblock(&blocked, 10, 10, &mut back);
    assert_eq!(back, q);
}

#[test]
fn reference_products_agree_with_the_kernels() {
    let (n, m, r) = (40, 24, 3);
    let matrix = pseudo_random(n * m, 1);
    let q = pseudo_random(m * r, 2);
    let (mut p, mut qt, mut out) = (vec![0.0; n * r], vec![0.0; m * r], vec![1.0; n * m]);
    assert!(kernels::reference_products(
        &matrix, n, m, &q, r, &mut p, &mut qt, &mut out
    ));
    let (_, p_k, qt_k, _) = kernel_outputs(InstructionSet::Detected, 2, &matrix, n, m, &q, r);
    for (a, b) in p.iter().zip(&p_k) {
        assert!((a - b).abs() <= 1e-5 * m as f32, "{a} vs {b}");
    }
    for (a, b) in qt.iter().zip(&qt_k) {
        assert!((a - b).abs() <= 1e-5 * (n * m) as f32, "{a} vs {b}");
    }
    // Buffers of the wrong length compute nothing.
    assert!(!kernels::reference_products(
        &matrix,
        n + 1,
        m,
        &q,
        r,
        &mut p,
        &mut qt,
        &mut out
    ));
    // 3 products × 2·n·m·r flops = 6 · 40 · 24 · 3 = 17 280.
    assert_eq!(kernels::step_flops(n, m, r), 17_280.0);
}

// ---------------------------------------------------------------------------------
// Approximation quality
// ---------------------------------------------------------------------------------

#[test]
fn an_exactly_low_rank_matrix_is_reconstructed() {
    // A 48×40 matrix of rank 3 (σ = 5, 3, 1): P = M·Q spans M's column space, so
    // P̂·P̂ᵀ·M = M up to f32 rounding — from the first step, and after warm starts.
    let (n, m) = (48, 40);
    let matrix = with_singular_values(n, m, &[5.0, 3.0, 1.0], 7);
    let mut compressor = powersgd(3);
    for steps in [1, 5] {
        let approx = iterate(&mut compressor, &[n, m], &matrix, steps);
        let relative = distance(&approx, &matrix) / norm(&matrix);
        assert!(
            relative < 1e-5,
            "after {steps} steps: relative error {relative:e}"
        );
    }
}

#[test]
fn reconstruction_error_decreases_with_rank() {
    // σ_k = 0.8^k for k < 30 on a 60×50 matrix: each added rank removes σ_r² from the
    // squared error.
    let (n, m) = (60, 50);
    let sigma: Vec<f64> = (0..30).map(|k| 0.8f64.powi(k)).collect();
    let matrix = with_singular_values(n, m, &sigma, 3);
    let mut errors = Vec::new();
    for rank in [1, 2, 4, 8] {
        let approx = iterate(&mut powersgd(rank), &[n, m], &matrix, 20);
        errors.push(distance(&approx, &matrix));
    }
    assert!(
        errors.windows(2).all(|pair| pair[1] < pair[0]),
        "errors by rank 1, 2, 4, 8: {errors:?}"
    );
}

#[test]
fn converged_error_equals_the_svd_truncation_error() {
    // M = U·diag(8, 4, 2, 1, 0.5)·Vᵀ (40×30). Warm-started PowerSGD is subspace
    // iteration, converging at the rate (σ_{r+1}/σ_r)^step = (1/2)^step, so after 60
    // steps P̂ spans the top-r left singular vectors and
    //   ‖M − P̂·P̂ᵀ·M‖ = √(Σ_{i>r} σᵢ²):
    //   r = 1: √(4² + 2² + 1² + 0.5²) = √(16 + 4 + 1 + 0.25) = √21.25 = 4.609772…
    //   r = 2: √(2² + 1² + 0.5²)      = √5.25                = 2.291288…
    //   r = 3: √(1² + 0.5²)           = √1.25                = 1.118034…
    let (n, m) = (40, 30);
    let matrix = with_singular_values(n, m, &[8.0, 4.0, 2.0, 1.0, 0.5], 11);
    for (rank, expected) in [
        (1, 21.25f64.sqrt()),
        (2, 5.25f64.sqrt()),
        (3, 1.25f64.sqrt()),
    ] {
        let approx = iterate(&mut powersgd(rank), &[n, m], &matrix, 60);
        let error = distance(&approx, &matrix);
        assert!(
            ((error - expected) / expected).abs() < 1e-4,
            "rank {rank}: error {error} vs truncation error {expected}"
        );
    }
}

#[test]
fn workers_agree_bit_for_bit_and_decode_the_projected_average() {
    let (n, m, world) = (36, 28, 3);
    let inputs: Vec<Vec<f32>> = (0..world)
        .map(|w| pseudo_random(n * m, 50 + w as u64))
        .collect();
    let mut workers: Vec<PowerSgd> = (0..world).map(|_| powersgd(2)).collect();
    for step in 0..3 {
        let outcome = run_step(&mut workers, &[n, m], &inputs, step);
        let p_hat = workers[0].p_hat().unwrap().to_vec();
        for (rank, worker) in workers.iter().enumerate() {
            assert_eq!(worker.p_hat().unwrap(), &p_hat[..], "P̂ of rank {rank}");
            assert_eq!(
                worker.warm_q().unwrap(),
                workers[0].warm_q().unwrap(),
                "warm Q of rank {rank}"
            );
            assert_eq!(
                outcome.averages[rank], outcome.averages[0],
                "output of rank {rank}"
            );
        }
        // P̂ has orthonormal columns.
        let r = 2;
        for a in 0..r {
            for b in 0..r {
                let dot: f64 = (0..n)
                    .map(|i| f64::from(p_hat[i * r + a]) * f64::from(p_hat[i * r + b]))
                    .sum();
                let expected = if a == b { 1.0 } else { 0.0 };
                assert!((dot - expected).abs() < 1e-6, "P̂ᵀP̂[{a},{b}] = {dot}");
            }
        }
        // The output is P̂·P̂ᵀ·M_avg, with M_avg the mean of the workers' matrices.
        let average: Vec<f64> = (0..n * m)
            .map(|k| inputs.iter().map(|x| f64::from(x[k])).sum::<f64>() / world as f64)
            .collect();
        for i in 0..n {
            for j in 0..m {
                let projected: f64 = (0..r)
                    .map(|c| {
                        let column_dot: f64 = (0..n)
                            .map(|t| f64::from(p_hat[t * r + c]) * average[t * m + j])
                            .sum();
                        f64::from(p_hat[i * r + c]) * column_dot
                    })
                    .sum();
                let got = f64::from(outcome.averages[0][i * m + j]);
                assert!(
                    (got - projected).abs() < 1e-5,
                    "({i},{j}): {got} vs {projected}"
                );
            }
        }
        // The warm-start Q is the summed round-1 Q.
        let reduced_q = &outcome.reduced[1];
        let data = &reduced_q[header_len(reduced_q)..];
        let q_sum: Vec<f32> = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(workers[0].warm_q().unwrap(), &q_sum[..]);
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let (n, m) = (300, 70);
    let inputs: Vec<Vec<f32>> = (0..2).map(|w| pseudo_random(n * m, 80 + w)).collect();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut workers = vec![powersgd(4), powersgd(4)];
            (0..3)
                .map(|step| {
                    let outcome = run_step(&mut workers, &[n, m], &inputs, step);
                    (outcome.reduced, outcome.averages)
                })
                .collect::<Vec<_>>()
        })
    };
    assert!(run(1) == run(3), "one thread and three disagree");
}

#[test]
fn an_all_zero_gradient_does_not_freeze_the_warm_start() {
    // Step 0: M = 0, so P = 0 and P̂ = 0 (the vanishing-column guard, not NaN); the
    // summed Q is 0. Step 1: the zero columns of the warm Q are redrawn, so a rank-1
    // matrix is reconstructed again.
    let (n, m) = (20, 16);
    let mut compressor = powersgd(1);
    let zero = vec![0.0f32; n * m];
    let out = run_step(std::slice::from_mut(&mut compressor), &[n, m], &[zero], 0);
    assert!(out.averages[0].iter().all(|&v| v == 0.0));
    assert!(compressor.warm_q().unwrap().iter().all(|&v| v == 0.0));
    let matrix = with_singular_values(n, m, &[2.0], 5);
    let out = run_step(
        std::slice::from_mut(&mut compressor),
        &[n, m],
        std::slice::from_ref(&matrix),
        1,
    );
    assert!(distance(&out.averages[0], &matrix) / norm(&matrix) < 1e-5);
}

// ---------------------------------------------------------------------------------
// What is compressed, and the bytes on the wire
// ---------------------------------------------------------------------------------

#[test]
fn vectors_small_matrices_and_empty_tensors_go_uncompressed() {
    let rank1 = powersgd(1);
    // 1-D and 0-D tensors never compress.
    assert_eq!(rank1.plan(&[100]), None);
    assert_eq!(rank1.plan(&[]), None);
    assert_eq!(rank1.plan(&[0, 5]), None);
    // min_rate 2, rank 1: 4×4 → (4 + 4)·1·2 = 16, not < 16: uncompressed;
    // 5×5 → (5 + 5)·1·2 = 20 < 25: compressed.
    assert_eq!(rank1.plan(&[4, 4]), None);
    assert_eq!(
        rank1.plan(&[5, 5]),
        Some(MatrixView {
            rows: 5,
            cols: 5,
            rank: 1
        })
    );
    // [3, 4, 5] is viewed as 3×20: rank 1 → 23·1·2 = 46 < 60: compressed; rank 2 →
    // 23·2·2 = 92 ≥ 60: uncompressed; rank 9 is capped at min(3, 20) = 3.
    assert_eq!(
        rank1.plan(&[3, 4, 5]),
        Some(MatrixView {
            rows: 3,
            cols: 20,
            rank: 1
        })
    );
    assert_eq!(powersgd(2).plan(&[3, 4, 5]), None);
    let no_floor = PowerSgd::new(&args(&[("rank", num(9.0)), ("min_rate", num(0.0))])).unwrap();
    assert_eq!(no_floor.plan(&[3, 4, 5]).map(|view| view.rank), Some(3));
    // min_rate 1 at rank 1: 4×4 → 8 < 16: compressed.
    let min_rate_one = PowerSgd::new(&args(&[("min_rate", num(1.0))])).unwrap();
    assert!(min_rate_one.plan(&[4, 4]).is_some());

    // An uncompressed tensor is one dense round, decoded exactly.
    for shape in [&[100][..], &[4, 4], &[2, 3, 1]] {
        let numel: usize = shape.iter().product();
        let input = pseudo_random(numel, 9);
        let mut compressor = powersgd(1);
        let outcome = run_step(
            std::slice::from_mut(&mut compressor),
            shape,
            std::slice::from_ref(&input),
            50,
        );
        assert_eq!(outcome.rounds.len(), 1, "{shape:?}");
        assert_eq!(header_shape(&outcome.rounds[0][0]), vec![numel as u32]);
        // Header 16 + 4·1 dimension, then 4 bytes per element.
        assert_eq!(outcome.bytes_per_worker(), 20 + 4 * numel, "{shape:?}");
        assert_eq!(outcome.averages[0], input, "{shape:?}");
        assert!(compressor.p_hat().is_none());
    }
}

#[test]
fn start_sends_the_tensor_dense_before_step_start() {
    let (n, m) = (16, 12);
    let input = pseudo_random(n * m, 4);
    let mut compressor = PowerSgd::new(&args(&[("rank", num(2.0)), ("start", num(3.0))])).unwrap();
    for step in 0..5u64 {
        let outcome = run_step(
            std::slice::from_mut(&mut compressor),
            &[n, m],
            std::slice::from_ref(&input),
            step,
        );
        if step < 3 {
            assert_eq!(outcome.rounds.len(), 1, "step {step}");
            assert_eq!(outcome.averages[0], input, "step {step}");
            assert!(compressor.warm_q().is_none(), "step {step}");
        } else {
            assert_eq!(outcome.rounds.len(), 2, "step {step}");
            assert!(compressor.warm_q().is_some(), "step {step}");
        }
    }
    // The default start is 10 steps (the doc's default): dense at 9, compressed at 10.
    let mut default = PowerSgd::new(&Args::new()).unwrap();
    let dense = run_step(
        std::slice::from_mut(&mut default),
        &[n, m],
        std::slice::from_ref(&input),
        9,
    );
    assert_eq!(dense.rounds.len(), 1);
    let compressed = run_step(std::slice::from_mut(&mut default), &[n, m], &[input], 10);
    assert_eq!(compressed.rounds.len(), 2);
}

#[test]
fn bytes_on_the_wire_are_the_headers_plus_both_factors() {
    // 64×48 at rank 4, per worker:
    //   round 0: header 16 + 4·3 = 28, P = 4·64·4 = 1024 → 1052
    //   round 1: header 16 + 4·4 = 32, Q = 4·48·4 = 768  → 800
    //   total 1852 = 60 + 4·r·(n + m) = 60 + 4·4·112 = 60 + 1792.
    let (n, m) = (64, 48);
    let inputs: Vec<Vec<f32>> = (0..2).map(|w| pseudo_random(n * m, 30 + w)).collect();
    let mut workers = vec![powersgd(4), powersgd(4)];
    let outcome = run_step(&mut workers, &[n, m], &inputs, 0);
    assert_eq!(outcome.rounds.len(), 2);
    for round in &outcome.rounds {
        assert!(round.iter().all(|p| p.len() == round[0].len()));
    }
    assert_eq!(outcome.rounds[0][0].len(), 1052);
    assert_eq!(outcome.rounds[1][0].len(), 800);
    assert_eq!(outcome.bytes_per_worker(), 60 + 4 * 4 * (n + m));
    // The round tags: [n, m, 1] for P, [n, m, 1, 1] for Q.
    assert_eq!(header_shape(&outcome.rounds[0][0]), vec![64, 48, 1]);
    assert_eq!(header_shape(&outcome.rounds[1][0]), vec![64, 48, 1, 1]);
}

#[test]
fn without_warm_start_every_step_draws_a_fresh_q() {
    let (n, m) = (24, 20);
    let input = pseudo_random(n * m, 12);
    let mut cold = PowerSgd::new(&args(&[
        ("start", num(0.0)),
        ("warm_start", ArgValue::Bool(false)),
    ]))
    .unwrap();
    let first = run_step(
        std::slice::from_mut(&mut cold),
        &[n, m],
        std::slice::from_ref(&input),
        0,
    );
    let second = run_step(
        std::slice::from_mut(&mut cold),
        &[n, m],
        std::slice::from_ref(&input),
        1,
    );
    assert!(cold.warm_q().is_none());
    let mut state = Vec::new();
    cold.save_state(&mut state).unwrap();
    assert!(state.is_empty());
    // Same M, different Q each step: different P.
    assert_ne!(first.rounds[0][0], second.rounds[0][0]);
    // The draw is keyed by (seed, tensor, step), not by the instance: a new instance
    // at step 1 sends the same P.
    let mut again = PowerSgd::new(&args(&[
        ("start", num(0.0)),
        ("warm_start", ArgValue::Bool(false)),
    ]))
    .unwrap();
    let replay = run_step(std::slice::from_mut(&mut again), &[n, m], &[input], 1);
    assert_eq!(replay.rounds[0][0], second.rounds[0][0]);
}

// ---------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------

#[test]
fn saved_state_resumes_bit_for_bit() {
    let (n, m, world) = (30, 26, 2);
    let shape = [n, m];
    let inputs_at = |step: u64| -> Vec<Vec<f32>> {
        (0..world)
            .map(|w| pseudo_random(n * m, step * 10 + w as u64))
            .collect()
    };
    let mut original: Vec<PowerSgd> = (0..world).map(|_| powersgd(3)).collect();
    for step in 0..3 {
        run_step(&mut original, &shape, &inputs_at(step), step);
    }
    let mut restored: Vec<PowerSgd> = original
        .iter()
        .map(|worker| {
            let mut state = Vec::new();
            worker.save_state(&mut state).unwrap();
            // magic 4 + version 1 + n 8 + m 8 + r 4 = 25, then Q: 4·26·3 = 312.
            assert_eq!(state.len(), 25 + 4 * m * 3);
            let mut fresh = powersgd(3);
            fresh.load_state(&state).unwrap();
            fresh
        })
        .collect();
    for step in 3..5 {
        let a = run_step(&mut original, &shape, &inputs_at(step), step);
        let b = run_step(&mut restored, &shape, &inputs_at(step), step);
        assert_eq!(a.rounds, b.rounds, "step {step}: payloads");
        assert_eq!(a.averages, b.averages, "step {step}: outputs");
    }
    // An instance without state (before the first compressed step) saves nothing,
    // and loading nothing resets the warm start.
    let mut state = Vec::new();
    powersgd(3).save_state(&mut state).unwrap();
    assert!(state.is_empty());
    let mut worker = powersgd(3);
    run_step(
        std::slice::from_mut(&mut worker),
        &shape,
        &inputs_at(0)[..1],
        0,
    );
    worker.load_state(&[]).unwrap();
    assert!(worker.warm_q().is_none());
}

#[test]
fn foreign_or_corrupt_state_is_refused() {
    let (n, m) = (30, 26);
    let mut worker = powersgd(3);
    run_step(
        std::slice::from_mut(&mut worker),
        &[n, m],
        &[pseudo_random(n * m, 1)],
        0,
    );
    let mut state = Vec::new();
    worker.save_state(&mut state).unwrap();
    let refused = |compressor: &mut PowerSgd, bytes: &[u8]| {
        assert!(
            matches!(compressor.load_state(bytes), Err(CompressError::State(_))),
            "accepted {} bytes",
            bytes.len()
        );
    };
    // Every truncation.
    for len in 1..state.len() {
        refused(&mut powersgd(3), &state[..len]);
    }
    // Trailing bytes, bad magic, another version.
    let mut longer = state.clone();
    longer.push(0);
    refused(&mut powersgd(3), &longer);
    let mut bad_magic = state.clone();
    bad_magic[0] = b'X';
    refused(&mut powersgd(3), &bad_magic);
    let mut bad_version = state.clone();
    bad_version[4] = 2;
    refused(&mut powersgd(3), &bad_version);
    // A rank this instance would not use for the matrix, and no warm start.
    refused(&mut powersgd(2), &state);
    let mut cold = PowerSgd::new(&args(&[
        ("rank", num(3.0)),
        ("warm_start", ArgValue::Bool(false)),
    ]))
    .unwrap();
    refused(&mut cold, &state);
    // A non-finite Q value.
    let mut nan = state.clone();
    nan[25..29].copy_from_slice(&f32::NAN.to_le_bytes());
    refused(&mut powersgd(3), &nan);
    // A state for another tensor shape loads, but the next compress refuses it.
    let mut other = powersgd(3);
    other.load_state(&state).unwrap();
    let mut out = Vec::new();
    let input = pseudo_random(40 * 26, 2);
    let result = other.compress(
        TensorView {
            name: "x",
            shape: &[40, 26],
            data: &input,
        },
        &ctx(1, 0, 1),
        &mut out,
    );
    assert!(matches!(result, Err(CompressError::State(_))), "{result:?}");
}

// ---------------------------------------------------------------------------------
// Malformed payloads and misuse
// ---------------------------------------------------------------------------------

/// A worker that has compressed a 12×10 matrix at rank 2: its round-0 payload.
fn after_round_zero() -> (PowerSgd, Vec<u8>) {
    let mut worker = powersgd(2);
    let input = pseudo_random(120, 3);
    let mut payload = Vec::new();
    worker
        .compress(
            TensorView {
                name: "x",
                shape: &[12, 10],
                data: &input,
            },
            &ctx(0, 0, 1),
            &mut payload,
        )
        .unwrap();
    (worker, payload)
}

#[test]
fn malformed_round_payloads_are_errors() {
    let (_, p_payload) = after_round_zero();
    // Every truncation of the reduced P.
    for len in 0..p_payload.len() {
        let (mut worker, _) = after_round_zero();
        let mut out = Vec::new();
        assert!(
            worker
                .next_round(&p_payload[..len], &ctx(0, 0, 1), &mut out)
                .is_err(),
            "P truncated to {len} bytes accepted"
        );
    }
    // A non-finite value in P.
    let (mut worker, mut bad) = after_round_zero();
    let at = header_len(&bad);
    bad[at..at + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    assert!(worker
        .next_round(&bad, &ctx(0, 0, 1), &mut Vec::new())
        .is_err());
    // The wrong round tag: a Q-tagged header where P is expected.
    let (mut worker, p) = after_round_zero();
    let mut q_tagged = Vec::new();
    PayloadHeader::new(MethodId::POWERSGD, &[12, 10, 1, 1])
        .unwrap()
        .write(&mut q_tagged);
    q_tagged.extend_from_slice(&p[header_len(&p)..]);
    assert!(worker
        .next_round(&q_tagged, &ctx(0, 0, 1), &mut Vec::new())
        .is_err());
    // Other matrix dimensions with the same element count.
    let (mut worker, p) = after_round_zero();
    let mut transposed = Vec::new();
    PayloadHeader::new(MethodId::POWERSGD, &[10, 12, 1])
        .unwrap()
        .write(&mut transposed);
    transposed.extend_from_slice(&p[header_len(&p)..]);
    assert!(worker
        .next_round(&transposed, &ctx(0, 0, 1), &mut Vec::new())
        .is_err());
    // Another method's payload.
    let (mut worker, p) = after_round_zero();
    let mut foreign = p.clone();
    foreign[6..8].copy_from_slice(&MethodId::TOPK.0.to_le_bytes());
    assert!(worker
        .next_round(&foreign, &ctx(0, 0, 1), &mut Vec::new())
        .is_err());
    // A round-0 payload is not decodable.
    let (mut worker, p) = after_round_zero();
    assert!(worker.decompress_add(&p, 1.0, &mut vec![0.0; 120]).is_err());

    // Round 1: every truncation of the reduced Q is refused by next_round and by
    // decompress_add, and an output of the wrong length too.
    let (mut worker, p) = after_round_zero();
    let mut q_payload = Vec::new();
    assert_eq!(
        worker
            .next_round(&p, &ctx(0, 0, 1), &mut q_payload)
            .unwrap(),
        Round::More
    );
    for len in 0..q_payload.len() {
        assert!(worker
            .decompress_add(&q_payload[..len], 1.0, &mut vec![0.0; 120])
            .is_err());
    }
    assert!(worker
        .decompress_add(&q_payload, 1.0, &mut vec![0.0; 121])
        .is_err());
    for len in 0..q_payload.len() {
        let (mut fresh, p) = after_round_zero();
        fresh
            .next_round(&p, &ctx(0, 0, 1), &mut Vec::new())
            .unwrap();
        assert!(fresh
            .next_round(&q_payload[..len], &ctx(0, 0, 1), &mut Vec::new())
            .is_err());
    }
    assert_eq!(
        worker
            .next_round(&q_payload, &ctx(0, 0, 1), &mut Vec::new())
            .unwrap(),
        Round::Done
    );
    let mut decoded = vec![0.0; 120];
    worker
        .decompress_add(&q_payload, 1.0, &mut decoded)
        .unwrap();
    // A worker that did not take part (no P̂) cannot decode round 1.
    assert!(powersgd(2)
        .decompress_add(&q_payload, 1.0, &mut vec![0.0; 120])
        .is_err());
    // next_round after the exchange, or before any compress, is an error.
    assert!(worker
        .next_round(&q_payload, &ctx(0, 0, 1), &mut Vec::new())
        .is_err());
    assert!(powersgd(2)
        .next_round(&q_payload, &ctx(0, 0, 1), &mut Vec::new())
        .is_err());
}

#[test]
fn decompress_adds_scaled_values_to_the_output() {
    // out starts at 1; decoding with scale 0.25 adds a quarter of the reconstruction.
    let (n, m) = (12, 10);
    let input = pseudo_random(n * m, 3);
    let mut worker = powersgd(2);
    let outcome = run_step(std::slice::from_mut(&mut worker), &[n, m], &[input], 0);
    let reconstruction = &outcome.averages[0];
    let mut out = vec![1.0f32; n * m];
    worker
        .decompress_add(&outcome.reduced[1], 0.25, &mut out)
        .unwrap();
    for (o, r) in out.iter().zip(reconstruction) {
        assert!((o - (1.0 + 0.25 * r)).abs() < 1e-6, "{o} vs 1 + {r}/4");
    }
    // A dense payload decodes on any instance.
    let dense_input = pseudo_random(7, 1);
    let mut payload = Vec::new();
    powersgd(1)
        .compress(
            TensorView {
                name: "bias",
                shape: &[7],
                data: &dense_input,
            },
            &ctx(0, 0, 1),
            &mut payload,
        )
        .unwrap();
    let mut out = vec![1.0f32; 7];
    powersgd(1).decompress_add(&payload, 2.0, &mut out).unwrap();
    for (o, x) in out.iter().zip(&dense_input) {
        assert_eq!(*o, 1.0 + 2.0 * x);
    }
}

#[test]
fn a_tensor_whose_data_does_not_fit_its_shape_is_refused() {
    let data = vec![0.0f32; 11];
    let result = powersgd(1).compress(
        TensorView {
            name: "x",
            shape: &[3, 4],
            data: &data,
        },
        &ctx(0, 0, 1),
        &mut Vec::new(),
    );
    assert!(
        matches!(result, Err(CompressError::Length { .. })),
        "{result:?}"
    );
}

// ---------------------------------------------------------------------------------
// Arguments and the interface
// ---------------------------------------------------------------------------------

#[test]
fn arguments_are_checked_by_name() {
    let refused = |pairs: &[(&str, ArgValue)], culprit: &str| {
        let error = PowerSgd::new(&args(pairs)).unwrap_err();
        assert_eq!(error.argument.as_deref(), Some(culprit), "{error}");
    };
    refused(&[("rank", num(0.0))], "rank");
    refused(&[("rank", num(1.5))], "rank");
    refused(&[("rank", num(f64::INFINITY))], "rank");
    refused(&[("start", num(-1.0))], "start");
    refused(&[("start", num(f64::NAN))], "start");
    refused(&[("min_rate", num(-0.5))], "min_rate");
    refused(&[("warm_start", num(1.0))], "warm_start");
    refused(&[("ratio", num(0.1))], "ratio");
    // The host's `error_feedback` is accepted.
    assert!(PowerSgd::new(&args(&[("error_feedback", ArgValue::Bool(false))])).is_ok());
    // Defaults: rank 1 (a 5×5 matrix compresses at rank 1).
    let default = PowerSgd::new(&Args::new()).unwrap();
    assert_eq!(default.plan(&[5, 5]).map(|view| view.rank), Some(1));
}

#[test]
fn the_method_declares_two_round_summed_f32_with_aggregate_feedback() {
    use regimen_core::compress::{Aggregation, FeedbackPolicy, ResidualSource, WireElement};
    let compressor = regimen_core::compress::build("powersgd", &Args::new()).unwrap();
    assert_eq!(compressor.name(), "powersgd");
    assert_eq!(compressor.method_id(), MethodId::POWERSGD);
    assert_eq!(compressor.aggregation(), Aggregation::Sum(WireElement::F32));
    assert_eq!(compressor.feedback(), FeedbackPolicy::OnByDefault);
    assert_eq!(compressor.residual_source(), ResidualSource::Aggregate);
}
