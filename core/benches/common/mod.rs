//! Timing shared by the core's bench binaries (plain `main`s, no harness).

use std::error::Error;
use std::time::{Duration, Instant};

/// The median wall time of `timed` runs of `run`, after `warmup` untimed runs (page
/// faults, caches, the rayon pool's threads).
pub fn median_time(
    warmup: usize,
    timed: usize,
    mut run: impl FnMut() -> Result<(), Box<dyn Error>>,
) -> Result<Duration, Box<dyn Error>> {
    for _ in 0..warmup {
        run()?;
    }
    let mut times = Vec::with_capacity(timed.max(1));
    for _ in 0..timed.max(1) {
        let start = Instant::now();
        run()?;
        times.push(start.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}
