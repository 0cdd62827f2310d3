//! What calling a compressor through the plugin C ABI costs over calling the same
//! code in process: natural compression (`plugins/natural`) compiled into this
//! benchmark, against its optimized shared library loaded by the host loader, on
//! 1K, 1M and 25M f32 elements. Compress (into a reused payload buffer) and
//! decompress-add are timed separately, the two implementations alternating run by
//! run so that drift hits both alike; a one-thread memory copy of the same data is
//! timed in the same run as the yardstick.
//!
//! Run with `cargo bench -p regimen-core --bench plugin_overhead` (it first builds the
//! plugin crates in release mode into `<target>/plugin-tests`). Target (issue 5):
//! under 2% overhead at 1M elements. `REGIMEN_BENCH_SIZES=1000,1000000` picks sizes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/plugin_support/mod.rs"]
mod plugin_support;

use std::error::Error;
use std::hint::black_box;
use std::time::{Duration, Instant};

use regimen_core::compress::bench::fixture_gradient;
use regimen_core::compress::Compressor;
use regimen_core::loader::Plugin;
use regimen_core::plugin::{Args, StepContext, TensorView};

const DEFAULT_SIZES: &[usize] = &[1_000, 1_000_000, 25_000_000];

/// Timed runs per size: enough for a stable median at each scale.
fn repeats(elements: usize) -> usize {
    match elements {
        0..=10_000 => 4001,
        10_001..=2_000_000 => 101,
        _ => 11,
    }
}

fn sizes() -> Result<Vec<usize>, Box<dyn Error>> {
    match std::env::var("REGIMEN_BENCH_SIZES") {
        Err(_) => Ok(DEFAULT_SIZES.to_vec()),
        Ok(text) => text
            .split(',')
            .map(|s| {
                s.trim()
                    .replace('_', "")
                    .parse::<usize>()
                    .map_err(|_| format!("REGIMEN_BENCH_SIZES: `{s}` is not a count").into())
            })
            .collect(),
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

/// Median (compress, decompress) times of each of two compressors.
type Timings = [(Duration, Duration); 2];

/// Median compress and decompress times of `compressor` and `other`, alternating.
fn measure(
    compressors: [&mut dyn Compressor; 2],
    data: &[f32],
    repeats: usize,
) -> Result<(Timings, usize), Box<dyn Error>> {
    let shape = [data.len()];
    let view = TensorView {
        name: "w",
        shape: &shape,
        data,
    };
    let mut payloads = [Vec::new(), Vec::new()];
    let mut outs = [vec![0.0f32; data.len()], vec![0.0f32; data.len()]];
    let mut times: [[Vec<Duration>; 2]; 2] = Default::default();
    let [a, b] = compressors;
    let mut pair: [&mut dyn Compressor; 2] = [a, b];
    for run in 0..repeats + 2 {
        for (which, compressor) in pair.iter_mut().enumerate() {
            let ctx = StepContext {
                step: run as u64,
                rank: 0,
                world: 1,
                seed: 1,
                tensor: 0,
                scheduled: &[],
            };
            let payload = &mut payloads[which];
            payload.clear();
            let start = Instant::now();
            compressor.compress(view, &ctx, payload)?;
            let compress = start.elapsed();
            black_box(&payload);
            let start = Instant::now();
            compressor.decompress_add(payload, 1.0, &mut outs[which])?;
            let decompress = start.elapsed();
            black_box(&mut outs[which]);
            if run >= 2 {
                times[which][0].push(compress);
                times[which][1].push(decompress);
            }
        }
    }
    let [ta, tb] = times;
    let [ca, da] = ta;
    let [cb, db] = tb;
    let payload_len = payloads[0].len();
    Ok((
        [(median(ca), median(da)), (median(cb), median(db))],
        payload_len,
    ))
}

fn memcpy<T: Copy + Default>(data: &[T], repeats: usize) -> Duration {
    let mut target = vec![T::default(); data.len()];
    let times = (0..repeats)
        .map(|_| {
            let start = Instant::now();
            target.copy_from_slice(data);
            black_box(&mut target);
            start.elapsed()
        })
        .collect();
    median(times)
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() -> Result<(), Box<dyn Error>> {
    let library = plugin_support::library("regimen-natural");
    let plugin = Plugin::load(&library, None)?;
    println!("plugin overhead: natural compression in process vs through the C ABI");
    println!("library: {} (release)", library.display());
    println!("threads: {}", rayon::current_num_threads());
    println!(
        "{:>10}  {:>7}  {:>12} {:>12} {:>9}  {:>12} {:>12} {:>9}  {:>11} {:>13}",
        "elements",
        "repeats",
        "compress µs",
        "via ABI µs",
        "overhead",
        "decomp. µs",
        "via ABI µs",
        "overhead",
        "memcpy µs",
        "payload cp µs"
    );
    for elements in sizes()? {
        let data = fixture_gradient(elements, 1);
        let repeats = repeats(elements);
        let mut local = regimen_natural::build(&Args::new())?;
        let mut loaded = plugin.compressor("natural", &Args::new())?;
        let ([(lc, ld), (pc, pd)], payload_len) =
            measure([local.as_mut(), &mut loaded], &data, repeats)?;
        let copy = memcpy(&data, repeats);
        // Through the ABI the payload is copied once more (from the plugin's buffer
        // into the host's, as plugins never write host-allocated memory): the part
        // of the overhead that grows with the size.
        let payload_copy = memcpy(&vec![0u8; payload_len], repeats);
        let overhead = |abi: Duration, own: Duration| {
            100.0 * (abi.as_secs_f64() - own.as_secs_f64()) / own.as_secs_f64()
        };
        println!(
            "{:>10}  {:>7}  {:>12.2} {:>12.2} {:>+8.2}%  {:>12.2} {:>12.2} {:>+8.2}%  {:>11.2} {:>13.2}",
            elements,
            repeats,
            micros(lc),
            micros(pc),
            overhead(pc, lc),
            micros(ld),
            micros(pd),
            overhead(pd, ld),
            micros(copy),
            micros(payload_copy)
        );
    }
    Ok(())
}
