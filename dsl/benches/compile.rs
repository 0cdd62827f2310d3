//! Parse + check + compile time of every example script and of the strategy scripts
//! under `tests/good/`, beside a memory-copy baseline of the same run (so numbers
//! compare as ratios across machines).
//! Run: `cargo bench -p regimen-dsl --bench compile`.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use regimen_dsl::{compile, CompileOptions, SourceFile};

/// Median time of `f` over `runs` runs.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn main() {
    let source: Vec<u8> = vec![1; 64 << 20];
    let mut target: Vec<u8> = vec![0; 64 << 20];
    let copy = median(9, || {
        target.copy_from_slice(black_box(&source));
        black_box(&target);
    });
    let copy_gbs = (2 * source.len()) as f64 / copy.as_secs_f64() / 1e9;
    println!("memory copy 64 MiB (read+write): {copy:?} = {copy_gbs:.1} GB/s");
    println!(
        "{:<28} {:>12} {:>14}",
        "example", "parse+compile", "vs 1 MiB copy"
    );
    let one_mib_copy = copy.as_secs_f64() / 64.0;

    // The examples, and the strategy scripts of the tests (optimizer, groups,
    // layer decay, precision).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths: Vec<_> = [root.join("../examples"), root.join("tests/good")]
        .iter()
        .flat_map(|dir| {
            std::fs::read_dir(dir)
                .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
                .unwrap_or_else(|_| Vec::new())
        })
        .collect();
    paths.retain(|p: &std::path::PathBuf| p.extension().is_some_and(|x| x == "regimen"));
    paths.sort();
    for path in paths {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string();
        let file = SourceFile::new(name.clone(), text);
        let options = CompileOptions::default();
        let time = median(201, || {
            let result = compile(black_box(&file), &options);
            assert!(result.is_ok(), "{name} does not compile");
            black_box(result.ok());
        });
        println!(
            "{name:<28} {:>10.1} µs {:>13.2}x",
            time.as_secs_f64() * 1e6,
            time.as_secs_f64() / one_mib_copy
        );
    }
}
