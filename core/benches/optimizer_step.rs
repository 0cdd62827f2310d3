//! Optimizer-step throughput of the ndarray backend over 25Mi f32 parameters: time,
//! effective bandwidth (bytes each kernel must stream) and ratio to a plain memory
//! copy measured in the same run, so results compare across machines as ratios.
//!
//! Run with `cargo bench -p regimen-core --bench optimizer_step`. Targets (issue 3):
//! Adam ≥ 50% of copy bandwidth, f32→f16/bf16 casts ≥ 60%.
//!
//! Bytes counted per element: copy 4 + 4, SGD-momentum 5 × 4 (read p, g, buf; write
//! p, buf), Adam/AdamW 7 × 4 (read p, g, m, v; write p, m, v), LAMB 10 × 4 (direction:
//! read p, g, m, v, write m, v, update; axpy: read p, update, write p), load_gradient
//! source + 4, casts 4 + 2, sum_squares 4. Read-heavy kernels can beat the copy's
//! GB/s: each written byte also costs a read for ownership on the bus, and half of a
//! copy's counted bytes are writes. The update kernels (SGD, Adam, the LAMB axpy)
//! also return the squared norm of the change they made, measured in the same pass:
//! no bytes are added for it.

use std::error::Error;
use std::hint::black_box;
use std::time::Duration;

mod common;

use half::{bf16, f16};
use ndarray::Array1;
use rayon::prelude::*;
use regimen_core::backend::{AdamStep, Backend, LambDirection, NdArrayBackend, SgdStep};
use regimen_core::{HostTensor, HostTensorMut};

/// Parameters per step: 25Mi f32 (100 MiB per buffer).
const ELEMENTS: usize = 25 * 1024 * 1024;
/// Untimed runs first (page faults, caches, the rayon pool's threads).
const WARMUP_RUNS: usize = 3;
/// Timed runs per kernel; the median is reported.
const TIMED_RUNS: usize = 15;
/// Bytes per f32 element.
const F32_BYTES: usize = 4;
/// Bytes per f16/bf16 element.
const HALF_BYTES: usize = 2;

/// The median of `TIMED_RUNS` runs after `WARMUP_RUNS`.
fn median_time(
    run: impl FnMut() -> Result<(), Box<dyn Error>>,
) -> Result<Duration, Box<dyn Error>> {
    common::median_time(WARMUP_RUNS, TIMED_RUNS, run)
}

/// Deterministic pseudo-random values in `[low, high)` (a 64-bit LCG; quality does
/// not matter, only that the data is not all equal).
fn filled(len: usize, seed: u64, low: f32, high: f32) -> Array1<f32> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    Array1::from_iter((0..len).map(|_| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
        low + (high - low) * unit
    }))
}

/// One row of the report.
struct Row {
    name: &'static str,
    time: Duration,
    bytes: usize,
}

impl Row {
    fn gigabytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.time.as_secs_f64() / 1e9
    }
}

/// The three copy baselines (read + write of `src.len()` f32): `memcpy` on one
/// thread, `memcpy` per rayon chunk, and a store loop per rayon chunk (an opaque
/// factor keeps LLVM from turning it into `memcpy`, whose large-size non-temporal
/// stores behave differently from the kernels' ordinary stores).
fn measure_copies(src: &Array1<f32>, dst: &mut Array1<f32>) -> Result<Vec<Row>, Box<dyn Error>> {
    let src = src.as_slice().ok_or("not contiguous")?;
    let dst = dst.as_slice_mut().ok_or("not contiguous")?;
    let bytes = 2 * F32_BYTES * src.len();
    let serial = median_time(|| {
        dst.copy_from_slice(src);
        black_box(&dst);
        Ok(())
    })?;
    let parallel = median_time(|| {
        dst.par_chunks_mut(1 << 16)
            .zip(src.par_chunks(1 << 16))
            .for_each(|(d, s)| d.copy_from_slice(s));
        black_box(&dst);
        Ok(())
    })?;
    let one = black_box(1.0f32);
    let store_loop = median_time(|| {
        dst.par_chunks_mut(1 << 16)
            .zip(src.par_chunks(1 << 16))
            .for_each(|(d, s)| {
                for (d, &s) in d.iter_mut().zip(s) {
                    *d = s * one;
                }
            });
        black_box(&dst);
        Ok(())
    })?;
    Ok(vec![
        Row {
            name: "copy (memcpy, 1 thread)",
            time: serial,
            bytes,
        },
        Row {
            name: "copy (memcpy, rayon)",
            time: parallel,
            bytes,
        },
        Row {
            name: "copy (store loop, rayon)",
            time: store_loop,
            bytes,
        },
    ])
}

fn main() -> Result<(), Box<dyn Error>> {
    let backend = NdArrayBackend::new();
    let n = ELEMENTS;
    let mut p = filled(n, 1, -1.0, 1.0);
    let g = filled(n, 2, -1e-2, 1e-2);
    let mut m = filled(n, 3, -1e-3, 1e-3);
    let mut v = filled(n, 4, 0.0, 1e-4);
    let mut buffer = filled(n, 5, -1e-2, 1e-2);
    let mut update = backend.zeros(n)?;
    let mut copy_dst = filled(n, 6, 0.0, 1.0);
    let mut half_dst = vec![f16::ZERO; n];
    let mut bfloat_dst = vec![bf16::ZERO; n];
    let half_src: Vec<f16> = g.iter().map(|&x| f16::from_f32(x * 1024.0)).collect();
    let g_host = g.to_vec();

    let sgd = SgdStep {
        lr: 0.1,
        momentum: 0.9,
        dampening: 0.0,
        weight_decay: 1e-4,
        nesterov: false,
        first_step: false,
        grad_scale: 1.0,
    };
    let adam = AdamStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        decoupled: false,
        bias_correction1: 1.0 - 0.9f64.powi(10),
        bias_correction2: 1.0 - 0.999f64.powi(10),
    };
    let adamw = AdamStep {
        weight_decay: 1e-2,
        decoupled: true,
        ..adam
    };
    let lamb = LambDirection {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-6,
        weight_decay: 1e-2,
        bias_correction1: adam.bias_correction1,
        bias_correction2: adam.bias_correction2,
    };

    let mut copies = measure_copies(&g, &mut copy_dst)?;
    let mut rows = Vec::new();
    let time = median_time(|| {
        black_box(backend.sgd_step(&mut p, &g, Some(&mut buffer), &sgd)?);
        Ok(())
    })?;
    rows.push(Row {
        name: "sgd-momentum step",
        time,
        bytes: 5 * F32_BYTES * n,
    });
    let time = median_time(|| {
        black_box(backend.adam_step(&mut p, &g, &mut m, &mut v, None, &adam)?);
        Ok(())
    })?;
    rows.push(Row {
        name: "adam step",
        time,
        bytes: 7 * F32_BYTES * n,
    });
    let time = median_time(|| {
        black_box(backend.adam_step(&mut p, &g, &mut m, &mut v, None, &adamw)?);
        Ok(())
    })?;
    rows.push(Row {
        name: "adamw step",
        time,
        bytes: 7 * F32_BYTES * n,
    });
    let time = median_time(|| {
        let norms = backend.lamb_direction(&p, &g, &mut m, &mut v, &mut update, &lamb)?;
        let trust = (norms.param_sum_squares / norms.update_sum_squares).sqrt();
        black_box(backend.axpy(&mut p, -1e-3 * trust as f32, &update)?);
        Ok(())
    })?;
    // Direction: read p,g,m,v, write m,v,update; axpy: read p,update, write p.
    rows.push(Row {
        name: "lamb (direction + axpy)",
        time,
        bytes: (7 + 3) * F32_BYTES * n,
    });
    let time = median_time(|| {
        let stats = backend.load_gradient(HostTensor::F32(&g_host), 1.0 / 1024.0, &mut update)?;
        black_box(stats);
        Ok(())
    })?;
    rows.push(Row {
        name: "load_gradient f32",
        time,
        bytes: 2 * F32_BYTES * n,
    });
    let time = median_time(|| {
        let stats = backend.load_gradient(HostTensor::F16(&half_src), 1.0 / 1024.0, &mut update)?;
        black_box(stats);
        Ok(())
    })?;
    rows.push(Row {
        name: "load_gradient f16",
        time,
        bytes: (HALF_BYTES + F32_BYTES) * n,
    });
    let time = median_time(|| Ok(backend.download(&p, HostTensorMut::F16(&mut half_dst))?))?;
    rows.push(Row {
        name: "download f32→f16",
        time,
        bytes: (F32_BYTES + HALF_BYTES) * n,
    });
    let time = median_time(|| Ok(backend.download(&p, HostTensorMut::BF16(&mut bfloat_dst))?))?;
    rows.push(Row {
        name: "download f32→bf16",
        time,
        bytes: (F32_BYTES + HALF_BYTES) * n,
    });
    let time = median_time(|| {
        black_box(backend.sum_squares(&g)?);
        Ok(())
    })?;
    rows.push(Row {
        name: "sum_squares",
        time,
        bytes: F32_BYTES * n,
    });

    // The machine is shared: measure the copies again after the kernels and keep the
    // faster of the two measurements, so that a quiet spell cannot flatter a ratio.
    for (copy, again) in copies.iter_mut().zip(measure_copies(&g, &mut copy_dst)?) {
        copy.time = copy.time.min(again.time);
    }
    let baseline = copies
        .iter()
        .map(Row::gigabytes_per_second)
        .fold(0.0, f64::max);
    rows.splice(0..0, copies);

    println!(
        "optimizer_step: {n} f32 elements, {} rayon threads, median of {TIMED_RUNS} runs",
        rayon::current_num_threads()
    );
    println!("copy baseline: {baseline:.1} GB/s (fastest copy before/after, read + write bytes)");
    println!("| kernel | time (ms) | GB/s | vs copy |");
    println!("|---|---:|---:|---:|");
    for row in &rows {
        let rate = row.gigabytes_per_second();
        println!(
            "| {} | {:.2} | {:.1} | {:.0}% |",
            row.name,
            row.time.as_secs_f64() * 1e3,
            rate,
            100.0 * rate / baseline
        );
    }
    Ok(())
}
