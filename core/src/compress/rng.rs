//! The random numbers of the compressors: xoshiro256++ (Blackman & Vigna 2018), seeded
//! through SplitMix64 from a key — (seed, step, tensor, rank, chunk, …) — so every
//! draw is a pure function of the key: reproducible across runs, thread counts and
//! checkpoint/resume, and independent between keys. It is several times faster than
//! a ChaCha stream, which matters for stochastic rounding of every element (QSGD,
//! TernGrad) where the generator is the bottleneck.

use crate::problem::SplitMix64;

/// Key prefixes that keep the streams of different methods apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    /// QSGD's stochastic rounding.
    Qsgd = 0x5153_4744,
    /// TernGrad's stochastic rounding.
    TernGrad = 0x5445_524E,
    /// Random-k's index choice (shared by all workers).
    RandomK = 0x524E_444B,
    /// Sampled top-k threshold estimation (DGC-style).
    Sample = 0x5341_4D50,
    /// PowerSGD's initial Q.
    PowerSgd = 0x5053_4744,
}

/// A xoshiro256++ generator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamRng {
    s: [u64; 4],
}

impl StreamRng {
    /// The generator for `stream` and the key parts `key` (e.g. `[seed, step, tensor,
    /// rank, chunk]`).
    pub fn new(stream: Stream, key: &[u64]) -> Self {
        let mut mixer = SplitMix64::new(stream as u64);
        let mut state = mixer.next_u64();
        for &part in key {
            state = SplitMix64::new(state ^ part).next_u64();
            state = SplitMix64::new(state.rotate_left(17)).next_u64();
        }
        let mut seeder = SplitMix64::new(state);
        let mut s = [0u64; 4];
        for word in &mut s {
            *word = seeder.next_u64();
        }
        // The all-zero state is the generator's only fixed point.
        if s == [0; 4] {
            s[0] = 1;
        }
        Self { s }
    }

    /// The four state words `s[0..4]` (for stepping several generators side by side in
    /// vector registers; the next output is `rotl(s[0] + s[3], 23) + s[0]`).
    pub fn state(&self) -> [u64; 4] {
        self.s
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[0]
            .wrapping_add(self.s[3])
            .rotate_left(23)
            .wrapping_add(self.s[0]);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Two uniform draws in `[0, 1)` with 24 random bits each (exact in f32).
    #[inline]
    pub fn uniform_pair_f32(&mut self) -> (f32, f32) {
        const SCALE: f32 = 1.0 / (1u32 << 24) as f32;
        let bits = self.next_u64();
        (
            ((bits >> 40) as u32) as f32 * SCALE,
            (((bits >> 8) & 0xFF_FFFF) as u32) as f32 * SCALE,
        )
    }

    /// One uniform draw in `[0, 1)` with 24 random bits.
    #[inline]
    pub fn uniform_f32(&mut self) -> f32 {
        self.uniform_pair_f32().0
    }

    /// A uniform integer in `0..n` (0 when `n` is 0), by Lemire's multiply-shift
    /// with rejection, so it is exactly uniform.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let threshold = n.wrapping_neg() % n;
        loop {
            let product = u128::from(self.next_u64()) * u128::from(n);
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_stream_and_keys_are_independent() {
        let mut a = StreamRng::new(Stream::Qsgd, &[1, 2, 3]);
        let mut b = StreamRng::new(Stream::Qsgd, &[1, 2, 3]);
        let mut c = StreamRng::new(Stream::Qsgd, &[1, 2, 4]);
        let mut d = StreamRng::new(Stream::TernGrad, &[1, 2, 3]);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], c.next_u64());
        assert_ne!(xs[0], d.next_u64());
    }

    #[test]
    fn xoshiro_matches_the_reference_recurrence() {
        // Reference output of xoshiro256++ from state s = [1, 2, 3, 4] (the C code of
        // Blackman & Vigna): result = rotl(s0 + s3, 23) + s0 = rotl(5, 23) + 1.
        let mut rng = StreamRng { s: [1, 2, 3, 4] };
        assert_eq!(rng.next_u64(), (5u64 << 23) + 1);
        // Next state: t = 2<<17; s2 = 3^1 = 2; s3 = 4^2 = 6; s1 = 2^2 = 0; s0 = 1^6 = 7;
        // s2 = 2 ^ 262144 = 262146; s3 = rotl(6, 45). Output: rotl(7 + rotl(6,45), 23) + 7.
        let s3 = 6u64.rotate_left(45);
        assert_eq!(
            rng.next_u64(),
            7u64.wrapping_add(s3).rotate_left(23).wrapping_add(7)
        );
    }

    #[test]
    fn uniform_draws_are_in_range_with_the_right_mean() {
        let mut rng = StreamRng::new(Stream::Sample, &[9]);
        let n = 200_000;
        let mut sum = 0.0f64;
        for _ in 0..n {
            let u = rng.uniform_f32();
            assert!((0.0..1.0).contains(&u));
            sum += f64::from(u);
        }
        // Standard error of the mean of U(0,1): sqrt(1/12/n) ≈ 6.5e-4; allow 5σ.
        assert!((sum / n as f64 - 0.5).abs() < 5.0 * (1.0f64 / 12.0 / n as f64).sqrt());
        let counts = (0..60_000).fold([0u32; 3], |mut acc, _| {
            acc[rng.below(3) as usize] += 1;
            acc
        });
        // Each bucket expects 20 000 with σ = sqrt(60000·1/3·2/3) ≈ 115.
        assert!(
            counts.iter().all(|&c| (c as i64 - 20_000).abs() < 600),
            "{counts:?}"
        );
    }
}
