//! The in-process multi-worker communicator ([`ThreadCluster`]): ring allreduce of f32
//! and of f16/bf16 wire data (sums against a rank-order reference, identical bits on
//! every rank, the documented per-hop rounding), variable-length allgather, binomial
//! broadcast, exact traffic counts from the algorithms' formulas, and failures (a
//! dropped peer, a timeout, mismatched calls, bad arguments) that end in errors, never
//! in a hang.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use half::{bf16, f16};
use regimen_core::comm::{
    CommError, Communicator, SingleProcess, ThreadCluster, ThreadCommunicator, Traffic,
};
use regimen_core::compress::WireElement;

/// Long enough never to fire on a loaded machine, short enough that a hang would not
/// block the suite for the default 300 s.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Run `work(rank, communicator)` on one thread per rank; results in rank order.
fn run_cluster<T, F>(world: usize, timeout: Duration, work: F) -> Vec<T>
where
    T: Send,
    F: Fn(usize, ThreadCommunicator) -> T + Sync,
{
    let communicators = ThreadCluster::with_timeout(world, timeout);
    assert_eq!(communicators.len(), world);
    thread::scope(|scope| {
        let handles: Vec<_> = communicators
            .into_iter()
            .enumerate()
            .map(|(rank, comm)| {
                let work = &work;
                scope.spawn(move || {
                    assert_eq!(comm.rank(), rank);
                    assert_eq!(comm.world(), world);
                    work(rank, comm)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .collect()
    })
}

/// Values whose sums round in f32: a deterministic, non-trivial pattern per rank.
fn contribution(rank: usize, index: usize) -> f32 {
    let k = (rank * 7919 + index * 104_729 + 17) % 1999;
    (k as f32 / 1999.0 - 0.5) * (1.0 + 1e-3 * rank as f32) + 1e-7 * index as f32
}

/// Block `c` of `n` elements over `w` ranks, as the module documents:
/// `[⌊c·n/W⌋, ⌊(c+1)·n/W⌋)`.
fn block_len(n: usize, w: usize, c: usize) -> usize {
    (c + 1) * n / w - c * n / w
}

fn lengths_for(world: usize) -> Vec<usize> {
    let mut lengths = vec![0, 1, world.saturating_sub(1), world, 7, 1001];
    lengths.sort_unstable();
    lengths.dedup();
    lengths
}

#[test]
fn allreduce_f32_matches_rank_order_sum_and_is_identical_on_every_rank() {
    for world in 1..=5 {
        for n in lengths_for(world) {
            let results = run_cluster(world, TEST_TIMEOUT, |rank, mut comm| {
                let mut data: Vec<f32> = (0..n).map(|i| contribution(rank, i)).collect();
                comm.allreduce_f32(&mut data).unwrap();
                data
            });
            for (i, &sum) in results[0].iter().enumerate() {
                let reference: f64 = (0..world).map(|r| f64::from(contribution(r, i))).sum();
                let magnitude: f64 = (0..world)
                    .map(|r| f64::from(contribution(r, i)).abs())
                    .sum();
                // Recursive summation of W terms in f32: |error| ≤ (W−1)·u·Σ|x|, u = 2⁻²⁴.
                let bound = (world as f64 - 1.0) * 2f64.powi(-24) * magnitude + 1e-30;
                let got = f64::from(sum);
                assert!(
                    (got - reference).abs() <= bound,
                    "W={world} n={n} i={i}: {got} vs {reference} (bound {bound})"
                );
            }
            for (rank, result) in results.iter().enumerate() {
                let bits: Vec<u32> = result.iter().map(|x| x.to_bits()).collect();
                let first: Vec<u32> = results[0].iter().map(|x| x.to_bits()).collect();
                assert_eq!(
                    bits, first,
                    "W={world} n={n}: rank {rank} differs from rank 0"
                );
            }
        }
    }
}

#[test]
fn allreduce_f32_of_integers_is_exact() {
    // Rank r contributes r + 1 at every element: the sum is 1 + 2 + … + W = W(W+1)/2,
    // exact in f32. W = 4 → 10; W = 5 → 15.
    for (world, expected) in [(1, 1.0f32), (2, 3.0), (3, 6.0), (4, 10.0), (5, 15.0)] {
        let results = run_cluster(world, TEST_TIMEOUT, |rank, mut comm| {
            let mut data = vec![(rank + 1) as f32; 13];
            comm.allreduce_f32(&mut data).unwrap();
            data
        });
        for result in results {
            assert_eq!(result, vec![expected; 13], "W={world}");
        }
    }
}

#[test]
fn allreduce_wire_f32_gives_the_same_bits_as_allreduce_f32() {
    for world in 1..=5 {
        let n = 37;
        let results = run_cluster(world, TEST_TIMEOUT, |rank, mut comm| {
            let mut values: Vec<f32> = (0..n).map(|i| contribution(rank, i)).collect();
            let mut bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            comm.allreduce_f32(&mut values).unwrap();
            comm.allreduce_wire(WireElement::F32, &mut bytes).unwrap();
            (values, bytes)
        });
        for (values, bytes) in results {
            let from_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            assert_eq!(from_bytes, bytes, "W={world}");
        }
    }
}

fn f16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect()
}

fn bf16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
        .collect()
}

/// One-element allreduce over 3 ranks: `n = 1 < W`, so blocks 0 and 1 are empty and
/// block 2 = `[⌊2/3⌋, ⌊3/3⌋) = [0, 1)` holds the element; it is summed starting at
/// rank 2: `(x₂ + x₀) + x₁`, rounded to the wire type after each addition.
fn three_rank_wire_sum(element: WireElement, per_rank: [f32; 3]) -> Vec<Vec<u8>> {
    run_cluster(3, TEST_TIMEOUT, |rank, mut comm| {
        let mut data = match element {
            WireElement::F16 => f16_bytes(&[per_rank[rank]]),
            WireElement::Bf16 => bf16_bytes(&[per_rank[rank]]),
            WireElement::F32 => per_rank[rank].to_le_bytes().to_vec(),
        };
        comm.allreduce_wire(element, &mut data).unwrap();
        data
    })
}

#[test]
fn f16_wire_reduction_rounds_at_every_hop() {
    // Half an f16 ulp at 1.0 (ulp = 2⁻¹⁰), a normal f16.
    let tiny = 2f32.powi(-11);
    // 1.0 first in the fold: 1 + 2⁻¹¹ is a tie between 1 and 1 + 2⁻¹⁰, rounded to the
    // even significand, 1.0; adding the second 2⁻¹¹ ties again → 1.0. A single
    // rounding of the exact sum would give 1 + 2⁻¹⁰ (representable).
    for bytes in three_rank_wire_sum(WireElement::F16, [tiny, tiny, 1.0]) {
        assert_eq!(f16::from_le_bytes([bytes[0], bytes[1]]).to_f32(), 1.0);
    }
    // 1.0 last in the fold (rank 1): 2⁻¹¹ + 2⁻¹¹ = 2⁻¹⁰ exactly, then 1 + 2⁻¹⁰ exactly.
    for bytes in three_rank_wire_sum(WireElement::F16, [tiny, 1.0, tiny]) {
        assert_eq!(
            f16::from_le_bytes([bytes[0], bytes[1]]).to_f32(),
            1.0 + 2f32.powi(-10)
        );
    }
}

#[test]
fn bf16_wire_reduction_rounds_at_every_hop() {
    // Half a bf16 ulp at 1.0 (8 significant bits: ulp 2⁻⁷).
    let tiny = 2f32.powi(-8);
    // As for f16: 1 + 2⁻⁸ ties to 1.0 twice; 2⁻⁸ + 2⁻⁸ + 1 = 1 + 2⁻⁷ exactly.
    for bytes in three_rank_wire_sum(WireElement::Bf16, [tiny, tiny, 1.0]) {
        assert_eq!(bf16::from_le_bytes([bytes[0], bytes[1]]).to_f32(), 1.0);
    }
    for bytes in three_rank_wire_sum(WireElement::Bf16, [tiny, 1.0, tiny]) {
        assert_eq!(
            bf16::from_le_bytes([bytes[0], bytes[1]]).to_f32(),
            1.0 + 2f32.powi(-7)
        );
    }
}

/// The documented fold of element `i` (in block `c`): start at rank `c`, add the ranks
/// `c+1, …, c+W−1` (mod W), rounding after each addition.
fn folded(world: usize, n: usize, i: usize, values: &dyn Fn(usize) -> f32, round: Rounding) -> f32 {
    let block = (0..world)
        .find(|&c| c * n / world <= i && i < (c + 1) * n / world)
        .unwrap();
    let mut sum = values(block);
    for step in 1..world {
        sum = round(sum + values((block + step) % world));
    }
    sum
}

/// Values to wire bytes.
type Encoder = fn(&[f32]) -> Vec<u8>;
/// Rounding of an f32 to the wire type (as f32).
type Rounding = fn(f32) -> f32;

#[test]
fn half_precision_wire_sums_follow_the_ring_order_and_agree_across_ranks() {
    let round_f16 = |x: f32| f16::from_f32(x).to_f32();
    let round_bf16 = |x: f32| bf16::from_f32(x).to_f32();
    for world in 1..=5 {
        for n in lengths_for(world) {
            for element in [WireElement::F16, WireElement::Bf16] {
                let (encode, round): (Encoder, Rounding) = match element {
                    WireElement::F16 => (f16_bytes, round_f16),
                    _ => (bf16_bytes, round_bf16),
                };
                let decode = |b: &[u8]| -> f32 {
                    match element {
                        WireElement::F16 => f16::from_le_bytes([b[0], b[1]]).to_f32(),
                        _ => bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                    }
                };
                let results = run_cluster(world, TEST_TIMEOUT, |rank, mut comm| {
                    let values: Vec<f32> = (0..n).map(|i| contribution(rank, i)).collect();
                    let mut data = encode(&values);
                    comm.allreduce_wire(element, &mut data).unwrap();
                    data
                });
                for result in &results {
                    assert_eq!(result, &results[0], "W={world} n={n} {element:?}");
                }
                let unit = match element {
                    WireElement::F16 => 2f64.powi(-11),
                    _ => 2f64.powi(-8),
                };
                for i in 0..n {
                    let input = |r: usize| round(contribution(r, i));
                    let expected = folded(world, n, i, &input, round);
                    let got = decode(&results[0][2 * i..2 * i + 2]);
                    assert_eq!(got.to_bits(), expected.to_bits(), "W={world} n={n} i={i}");
                    // And close to the exact sum of the (rounded) inputs: W−1 roundings
                    // of at most u·|partial sum| each, u the unit roundoff.
                    let exact: f64 = (0..world).map(|r| f64::from(input(r))).sum();
                    let magnitude: f64 = (0..world).map(|r| f64::from(input(r)).abs()).sum();
                    let bound = (world as f64 - 1.0) * unit * magnitude * 1.01 + 1e-7;
                    assert!(
                        (f64::from(got) - exact).abs() <= bound,
                        "W={world} n={n} i={i}"
                    );
                }
            }
        }
    }
}

#[test]
fn allgather_returns_every_payload_in_rank_order() {
    for world in 1..=5 {
        // Rank r sends 3r bytes (rank 0 an empty payload); twice, with different sizes
        // the second time, into the same output buffers.
        let payload = |round: usize, rank: usize| -> Vec<u8> {
            (0..3 * rank + round * (world - rank))
                .map(|i| (rank * 31 + i * 7 + round) as u8)
                .collect()
        };
        let results = run_cluster(world, TEST_TIMEOUT, |rank, mut comm| {
            let mut out = vec![vec![0xAA; 50]; 7];
            comm.allgather(&payload(0, rank), &mut out).unwrap();
            let first = out.clone();
            comm.allgather(&payload(1, rank), &mut out).unwrap();
            (first, out)
        });
        for (rank, (first, second)) in results.iter().enumerate() {
            let expected: Vec<Vec<u8>> = (0..world).map(|r| payload(0, r)).collect();
            assert_eq!(first, &expected, "W={world} rank {rank}");
            let expected: Vec<Vec<u8>> = (0..world).map(|r| payload(1, r)).collect();
            assert_eq!(second, &expected, "W={world} rank {rank}");
        }
    }
}

#[test]
fn allgather_traffic_counts_the_sizes_and_every_forwarded_payload() {
    for world in 1..=5 {
        let sizes: Vec<usize> = (0..world).map(|r| [0, 5, 1, 12, 3][r]).collect();
        let traffic = run_cluster(world, TEST_TIMEOUT, |rank, mut comm| {
            let mut out = Vec::new();
            comm.allgather(&vec![1u8; sizes[rank]], &mut out).unwrap();
            comm.traffic()
        });
        for (rank, traffic) in traffic.iter().enumerate() {
            // Sizes: W−1 messages of 8 bytes each way. Data: rank r forwards every
            // payload except that of r+1 (the last one it receives) and receives every
            // payload except its own.
            let w = world;
            let total: usize = sizes.iter().sum();
            let sent = 8 * (w - 1)
                + if w > 1 {
                    total - sizes[(rank + 1) % w]
                } else {
                    0
                };
            let received = 8 * (w - 1) + if w > 1 { total - sizes[rank] } else { 0 };
            assert_eq!(
                *traffic,
                Traffic {
                    bytes_sent: sent as u64,
                    bytes_received: received as u64,
                    messages_sent: 2 * (w as u64 - 1),
                },
                "W={world} rank {rank}"
            );
        }
    }
}

#[test]
fn broadcast_replaces_every_rank_data_by_the_root_data() {
    for world in 1..=5 {
        for root in 0..world {
            let n = 5 + root;
            let root_data: Vec<u8> = (0..n).map(|i| (i * 13 + root) as u8).collect();
            let results = run_cluster(world, TEST_TIMEOUT, |rank, mut comm| {
                let mut data = if rank == root {
                    root_data.clone()
                } else {
                    vec![0xEE; rank * 4]
                };
                comm.broadcast(root, &mut data).unwrap();
                (data, comm.traffic())
            });
            let mut total_sent = 0;
            for (rank, (data, traffic)) in results.iter().enumerate() {
                assert_eq!(data, &root_data, "W={world} root {root} rank {rank}");
                // Binomial tree on ranks relative to the root: v sends to v + m for every
                // power of two m > v with v + m < W; every non-root receives once.
                // Each edge is a size message (8 bytes) and the data (n bytes).
                let v = (rank + world - root) % world;
                let children = (0..usize::BITS)
                    .map(|bit| 1usize << bit)
                    .filter(|&m| m > v && v + m < world)
                    .count();
                let edge = 8 + n as u64;
                assert_eq!(traffic.bytes_sent, children as u64 * edge);
                assert_eq!(traffic.messages_sent, 2 * children as u64);
                assert_eq!(traffic.bytes_received, if v == 0 { 0 } else { edge });
                total_sent += traffic.bytes_sent;
            }
            assert_eq!(total_sent, (world as u64 - 1) * (8 + n as u64));
        }
    }
}

#[test]
fn allreduce_traffic_equals_the_ring_formula() {
    for world in 1..=5 {
        for (element, element_bytes) in [
            (None, 4),
            (Some(WireElement::F16), 2),
            (Some(WireElement::Bf16), 2),
        ] {
            for n in [60, 61, 3, 0] {
                let traffic = run_cluster(world, TEST_TIMEOUT, |_, mut comm| {
                    match element {
                        None => comm.allreduce_f32(&mut vec![0.5f32; n]).unwrap(),
                        Some(element) => comm
                            .allreduce_wire(element, &mut vec![0u8; n * element_bytes])
                            .unwrap(),
                    }
                    comm.traffic()
                });
                let w = world;
                let bytes = n * element_bytes; // N
                let block = |c: usize| block_len(n, w, c % w) * element_bytes;
                let mut total_sent = 0;
                for (rank, traffic) in traffic.iter().enumerate() {
                    // Reduce-scatter sends every block but r+1, allgather every block but
                    // r+2; receives: every block but r, then every block but r+1.
                    let (sent, received) = if w == 1 {
                        (0, 0)
                    } else {
                        (
                            2 * bytes - block(rank + 1) - block(rank + 2),
                            2 * bytes - block(rank) - block(rank + 1),
                        )
                    };
                    assert_eq!(traffic.bytes_sent, sent as u64, "W={w} n={n} rank {rank}");
                    assert_eq!(traffic.bytes_received, received as u64);
                    assert_eq!(traffic.messages_sent, 2 * (w as u64 - 1));
                    if n % w == 0 {
                        // 2(W−1)/W · N when W divides n: 60 f32 over W = 4 → 2·3/4·240 = 360.
                        assert_eq!(traffic.bytes_sent as usize * w, 2 * (w - 1) * bytes);
                    }
                    total_sent += traffic.bytes_sent;
                }
                // Every block travels W−1 times in each phase.
                assert_eq!(total_sent as usize, 2 * (w - 1) * bytes, "W={w} n={n}");
            }
        }
    }
}

#[test]
fn sixty_f32_over_four_ranks_send_three_hundred_sixty_bytes_each() {
    // N = 60 · 4 = 240 bytes; 2(W−1)/W · N = 2 · 3 / 4 · 240 = 360 bytes per rank,
    // in 2(W−1) = 6 messages.
    let traffic = run_cluster(4, TEST_TIMEOUT, |_, mut comm| {
        comm.allreduce_f32(&mut [1.0f32; 60]).unwrap();
        comm.traffic()
    });
    for traffic in traffic {
        assert_eq!(
            traffic,
            Traffic {
                bytes_sent: 360,
                bytes_received: 360,
                messages_sent: 6
            }
        );
    }
}

#[test]
fn a_sequence_of_mixed_collectives_stays_in_step() {
    let results = run_cluster(3, TEST_TIMEOUT, |rank, mut comm| {
        let mut seen = Vec::new();
        for round in 0..4usize {
            let mut values = vec![(rank + round) as f32; 5];
            comm.allreduce_f32(&mut values).unwrap();
            let mut out = Vec::new();
            comm.allgather(&[rank as u8; 2], &mut out).unwrap();
            let mut data = vec![rank as u8; round];
            comm.broadcast(round % 3, &mut data).unwrap();
            seen.push((values[0], out, data));
        }
        seen
    });
    for seen in &results {
        for (round, (sum, gathered, broadcast)) in seen.iter().enumerate() {
            // Σ_r (r + round) over r = 0, 1, 2 = 3 + 3·round.
            assert_eq!(*sum, 3.0 + 3.0 * round as f32);
            assert_eq!(gathered, &vec![vec![0u8; 2], vec![1; 2], vec![2; 2]]);
            assert_eq!(broadcast, &vec![(round % 3) as u8; round]);
        }
    }
}

#[test]
fn world_of_one_is_the_identity_and_sends_nothing() {
    let mut comms = ThreadCluster::new(1);
    let mut comm = comms.pop().unwrap();
    let mut data = vec![1.5f32, -2.0];
    comm.allreduce_f32(&mut data).unwrap();
    assert_eq!(data, vec![1.5, -2.0]);
    let mut bytes = f16_bytes(&[0.25, 3.0]);
    comm.allreduce_wire(WireElement::F16, &mut bytes).unwrap();
    assert_eq!(bytes, f16_bytes(&[0.25, 3.0]));
    let mut out = Vec::new();
    comm.allgather(b"abc", &mut out).unwrap();
    assert_eq!(out, vec![b"abc".to_vec()]);
    let mut payload = b"xyz".to_vec();
    comm.broadcast(0, &mut payload).unwrap();
    assert_eq!(payload, b"xyz");
    assert_eq!(comm.traffic(), Traffic::default());
    assert!(ThreadCluster::new(0).is_empty());
}

#[test]
fn a_rank_that_drops_out_makes_the_others_fail_with_peer_gone() {
    let start = Instant::now();
    let results = run_cluster(3, TEST_TIMEOUT, |rank, mut comm| {
        if rank == 2 {
            drop(comm);
            return None;
        }
        let first = comm.allreduce_f32(&mut [1.0f32; 8]).unwrap_err();
        // A failed communicator keeps failing, immediately, with the same error.
        let again = comm.allgather(b"x", &mut Vec::new()).unwrap_err();
        assert_eq!(again, first);
        Some(first)
    });
    // Rank 0 receives from rank 2 in the ring and usually sees rank 2 gone; but when
    // rank 1 fails first (its send to rank 2) and closes its channels before rank 0's
    // send to it, rank 0 sees rank 1 gone instead. Rank 1 sees either rank 2 (a send
    // to it) or rank 0 (which closed its channels on failing). Either way each
    // survivor names a peer other than itself that really left the ring.
    assert!(
        matches!(
            results[0],
            Some(CommError::PeerGone {
                rank: 0,
                peer: 1 | 2
            })
        ),
        "{:?}",
        results[0]
    );
    assert!(
        matches!(
            results[1],
            Some(CommError::PeerGone {
                rank: 1,
                peer: 0 | 2
            })
        ),
        "{:?}",
        results[1]
    );
    assert!(
        start.elapsed() < TEST_TIMEOUT,
        "the failure must not wait for the timeout"
    );
}

#[test]
fn a_silent_peer_is_a_timeout() {
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let done_rx = std::sync::Mutex::new(done_rx);
    let results = run_cluster(2, Duration::from_millis(200), |rank, mut comm| {
        if rank == 1 {
            // Alive (its channels open) but never calling: wait until rank 0 gave up.
            let _ = done_rx.lock().unwrap().recv_timeout(TEST_TIMEOUT);
            return None;
        }
        let error = comm.allreduce_f32(&mut [1.0f32; 4]).unwrap_err();
        done_tx.send(()).unwrap();
        Some(error)
    });
    // 200 ms reported in whole seconds, rounded up.
    assert_eq!(
        results[0],
        Some(CommError::Timeout {
            rank: 0,
            peer: 1,
            seconds: 1
        })
    );
}

#[test]
fn mismatched_lengths_are_an_error_on_every_rank() {
    let results = run_cluster(3, TEST_TIMEOUT, |rank, mut comm| {
        let mut data = vec![1.0f32; if rank == 2 { 5 } else { 4 }];
        comm.allreduce_f32(&mut data).unwrap_err()
    });
    // Rank 0 receives from rank 2 (5 ≠ 4) and rank 2 from rank 1 (4 ≠ 5): mismatch;
    // rank 1 fails too, as soon as a failed neighbour closes its channels.
    for rank in [0, 2] {
        match &results[rank] {
            CommError::Mismatch { rank: r, message } => {
                assert_eq!(*r, rank);
                assert!(message.contains("length"), "{message}");
            }
            other => panic!("rank {rank}: {other:?}"),
        }
    }
    assert!(matches!(
        results[1],
        CommError::PeerGone { .. } | CommError::Mismatch { .. }
    ));
}

#[test]
fn mismatched_collectives_and_wire_types_are_errors() {
    let results = run_cluster(2, TEST_TIMEOUT, |rank, mut comm| {
        if rank == 0 {
            comm.allreduce_f32(&mut [1.0f32; 4]).unwrap_err()
        } else {
            comm.allgather(b"abcd", &mut Vec::new()).unwrap_err()
        }
    });
    assert!(
        results
            .iter()
            .all(|e| matches!(e, CommError::Mismatch { .. })),
        "{results:?}"
    );

    let results = run_cluster(2, TEST_TIMEOUT, |rank, mut comm| {
        let element = if rank == 0 {
            WireElement::F16
        } else {
            WireElement::Bf16
        };
        comm.allreduce_wire(element, &mut [0u8; 8]).unwrap_err()
    });
    for error in &results {
        match error {
            CommError::Mismatch { message, .. } => {
                assert!(
                    message.contains("f16") && message.contains("bf16"),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn bad_arguments_are_invalid_and_release_the_peers() {
    let results = run_cluster(2, TEST_TIMEOUT, |rank, mut comm| {
        if rank == 0 {
            comm.broadcast(2, &mut vec![1, 2]).unwrap_err()
        } else {
            comm.allreduce_wire(WireElement::F16, &mut [0u8; 3])
                .unwrap_err()
        }
    });
    assert!(
        matches!(&results[0], CommError::Invalid { rank: 0, message } if message.contains("root 2"))
    );
    assert!(
        matches!(&results[1], CommError::Invalid { rank: 1, message } if message.contains("3 bytes"))
    );

    // A peer waiting in a collective is released by the invalid call's failure.
    let results = run_cluster(2, TEST_TIMEOUT, |rank, mut comm| {
        if rank == 0 {
            comm.allreduce_wire(WireElement::Bf16, &mut [0u8; 5])
                .unwrap_err()
        } else {
            comm.allreduce_wire(WireElement::Bf16, &mut [0u8; 4])
                .unwrap_err()
        }
    });
    assert!(matches!(results[0], CommError::Invalid { .. }));
    assert_eq!(results[1], CommError::PeerGone { rank: 1, peer: 0 });
}

#[test]
fn single_process_and_a_world_of_one_agree() {
    let mut single = SingleProcess;
    let mut threads = ThreadCluster::new(1).pop().unwrap();
    for comm in [&mut single as &mut dyn Communicator, &mut threads] {
        let mut out = vec![vec![9u8; 3]; 4];
        comm.allgather(&[], &mut out).unwrap();
        assert_eq!(out, vec![Vec::<u8>::new()]);
        assert!(matches!(
            comm.broadcast(1, &mut Vec::new()),
            Err(CommError::Invalid { .. })
        ));
    }
}

/// The shared formulas (what the MPI communicator counts, since MPI reports nothing)
/// are what the thread cluster really moves, collective by collective.
#[test]
fn traffic_formulas_match_what_the_thread_cluster_moves() {
    use regimen_core::comm::{
        ring_allgather_traffic, ring_allreduce_traffic, tree_broadcast_traffic,
    };
    for world in [2usize, 3, 4, 5] {
        for n in [1usize, 3, 10, 257] {
            let measured = run_cluster(world, TEST_TIMEOUT, |_, mut comm| {
                let mut data = vec![1.0f32; n];
                comm.allreduce_f32(&mut data).unwrap();
                comm.traffic()
            });
            for (rank, traffic) in measured.iter().enumerate() {
                assert_eq!(*traffic, ring_allreduce_traffic(n as u64, 4, world, rank));
            }
            let sizes: Vec<u64> = (0..world).map(|r| (n + 5 * r) as u64).collect();
            let measured = run_cluster(world, TEST_TIMEOUT, |rank, mut comm| {
                let mut out = Vec::new();
                comm.allgather(&vec![7u8; n + 5 * rank], &mut out).unwrap();
                comm.traffic()
            });
            for (rank, traffic) in measured.iter().enumerate() {
                assert_eq!(*traffic, ring_allgather_traffic(&sizes, rank));
            }
            let root = world - 1;
            let measured = run_cluster(world, TEST_TIMEOUT, |_, mut comm| {
                let mut data = vec![3u8; n];
                comm.broadcast(root, &mut data).unwrap();
                comm.traffic()
            });
            for (rank, traffic) in measured.iter().enumerate() {
                assert_eq!(
                    *traffic,
                    tree_broadcast_traffic(n as u64, world, root, rank)
                );
            }
        }
    }
}
