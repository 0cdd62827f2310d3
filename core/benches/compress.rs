//! Compression throughput of every built-in method on a 25M-element f32 fixture
//! gradient: compress and decompress time, GB/s of f32 input, ratio to a memory copy
//! timed in the same run, payload bytes, compression ratio and relative error. The
//! measurement itself is `regimen_core::compress::bench` (its module doc says exactly
//! what is timed), shared with `regimen bench-compress`.
//!
//! Run with `cargo bench -p regimen-core --bench compress`. `REGIMEN_BENCH_ELEMENTS`
//! and `REGIMEN_BENCH_REPEATS` override the size and the number of timed runs (for a
//! quick look). Targets (issue 4, 2 cores): casts, int8, sign/onebit, qsgd and
//! terngrad encode at ≥ 0.5× memcpy; exact top-k at 1% within 4× of one pass over the
//! data; PowerSGD rank 4 on 4096×4096 at ≥ 50% of the machine's matmul rate.

use std::error::Error;

use regimen_core::compress::bench::{self, BenchOptions, DEFAULT_ELEMENTS, DEFAULT_REPEATS};

/// A positive count from the environment, or `default` when the variable is unset.
fn count_from_env(name: &str, default: usize) -> Result<usize, Box<dyn Error>> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(text) => match text.trim().replace('_', "").parse::<usize>() {
            Ok(count) if count > 0 => Ok(count),
            _ => Err(format!("{name}={text:?} is not a positive whole number").into()),
        },
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let options = BenchOptions {
        elements: count_from_env("REGIMEN_BENCH_ELEMENTS", DEFAULT_ELEMENTS)?,
        repeats: count_from_env("REGIMEN_BENCH_REPEATS", DEFAULT_REPEATS)?,
        ..BenchOptions::default()
    };
    let report = bench::run(&options)?;
    print!("{report}");
    Ok(())
}
