//! Natural compression (Horváth et al. 2019, "Natural Compression for Distributed Deep
//! Learning") as a Regimen plugin: every value is rounded at random to one of the two
//! powers of two around it, so that the rounding is unbiased, and sent as a sign bit
//! and an 8-bit exponent — 9 bits per element instead of 32.
//!
//! # The rule
//!
//! For `x ≠ 0` with `2^e ≤ |x| < 2^(e+1)`:
//!
//! ```text
//! C(x) = sign(x) · 2^(e+1)   with probability p = (|x| − 2^e) / 2^e
//!        sign(x) · 2^e       with probability 1 − p
//! ```
//!
//! so `E[C(x)] = x` and `|C(x) − x| < |x|` (variance at most `|x|²/8`, the paper's
//! ω = 1/8). `p` is exactly the f32 mantissa `m / 2²³`, so the draw compares a
//! uniform 23-bit integer with `m`: no float arithmetic, no bias from rounding.
//! Subnormals round to 0 or to `2^-126` the same way (still unbiased). Values at or
//! above `2^127` round down (rounding up would overflow f32); inf and NaN are refused.
//!
//! Every draw is seeded: element `i` of tensor `t` at step `s` on rank `r` uses
//! SplitMix64 of a key mixed from (seed, s, t, r) plus `i`, so a run is reproducible
//! and the ranks draw independently.
//!
//! # Payload (method id [`NATURAL_ID`])
//!
//! After the common header (`16 + 4·d` bytes): `⌈n/8⌉` bytes of sign bits (element
//! `i` in bit `i mod 8` of byte `⌊i/8⌋`, 1 for negative), then `n` exponent bytes:
//! 0 for zero, `c ∈ 1..=254` for `±2^(c−127)` (exactly the f32 biased exponent). 255
//! and a negative zero are corrupt. A payload is `16 + 4·d + ⌈n/8⌉ + n` bytes: 9 bits
//! per element. Payloads are gathered (they do not add up); decoding is exact.

use regimen_plugin::export::{CompressorExport, Param, PluginDef};
use regimen_plugin::{
    Aggregation, ArgError, Args, CompressError, Compressor, MethodId, PayloadHeader, StepContext,
    TensorView, WireError,
};

/// The payload method id of `natural`.
pub const NATURAL_ID: MethodId = MethodId(0x8001);

/// The script name.
pub const NAME: &str = "natural";

/// The plugin this crate exports.
pub const PLUGIN: PluginDef = PluginDef {
    name: "regimen-natural",
    version: env!("CARGO_PKG_VERSION"),
    compressors: &[CompressorExport {
        name: NAME,
        description:
            "natural compression: unbiased stochastic rounding to powers of two, 9 bits per element",
        params: &[Param::bool(
            "error_feedback",
            "keep an error-feedback residual (the host's switch)",
        )
        .default("false")],
        thread_safe: true,
        build,
    }],
    controllers: &[],
};

regimen_plugin::export_plugin!(PLUGIN);

/// Build `natural` from the script's arguments (it takes none but the host's
/// `error_feedback`).
pub fn build(args: &Args) -> Result<Box<dyn Compressor>, ArgError> {
    args.only(&["error_feedback"])?;
    Ok(Box::new(Natural))
}

/// The natural-compression method; stateless.
#[derive(Clone, Copy, Debug, Default)]
pub struct Natural;

/// SplitMix64's output function (Steele et al. 2014).
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The key of one tensor's draws at one step on one rank.
fn stream_key(ctx: &StepContext<'_>) -> u64 {
    let mut key = splitmix(ctx.seed ^ 0x6E61_7475_7261_6C00); // "natural"
    for part in [ctx.step, ctx.tensor as u64, ctx.rank as u64] {
        key = splitmix(key ^ part);
    }
    key
}

/// Sign bit and exponent code of `x`, rounded with the 23-bit uniform `u`.
#[inline]
fn round(x: f32, u: u32) -> Result<(bool, u8), CompressError> {
    let bits = x.to_bits();
    let exponent = (bits >> 23) & 0xFF;
    let mantissa = bits & 0x7F_FFFF;
    let up = u < mantissa;
    let code = match exponent {
        255 => {
            return Err(CompressError::Failed(format!(
                "natural: cannot round the non-finite value {x}"
            )))
        }
        0 => u32::from(up),
        254 => 254,
        e => e + u32::from(up),
    };
    Ok((code != 0 && bits >> 31 == 1, code as u8))
}

impl Compressor for Natural {
    fn name(&self) -> &str {
        NAME
    }

    fn method_id(&self) -> MethodId {
        NATURAL_ID
    }

    fn aggregation(&self) -> Aggregation {
        Aggregation::Gather
    }

    fn compress(
        &mut self,
        input: TensorView<'_>,
        ctx: &StepContext<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), CompressError> {
        let n = input.data.len();
        PayloadHeader::new(NATURAL_ID, input.shape)?.write(out);
        let signs_at = out.len();
        let sign_bytes = n.div_ceil(8);
        out.resize(signs_at + sign_bytes + n, 0);
        let (signs, codes) = out[signs_at..].split_at_mut(sign_bytes);
        let key = stream_key(ctx);
        for (i, (&x, code)) in input.data.iter().zip(codes.iter_mut()).enumerate() {
            let u = (splitmix(key.wrapping_add(i as u64)) >> 41) as u32;
            let (negative, c) = round(x, u)?;
            *code = c;
            signs[i / 8] |= u8::from(negative) << (i % 8);
        }
        Ok(())
    }

    fn decompress_add(
        &mut self,
        payload: &[u8],
        scale: f32,
        out: &mut [f32],
    ) -> Result<(), CompressError> {
        let n = out.len();
        let (_, mut reader) = PayloadHeader::parse(payload, NATURAL_ID, n)?;
        let signs = reader.bytes(n.div_ceil(8))?;
        let codes = reader.bytes(n)?;
        reader.finish()?;
        // Validate everything before writing, so a corrupt payload changes nothing.
        if let Some(i) = codes.iter().position(|&c| c == 255) {
            return Err(WireError::Corrupt(format!("exponent code 255 at element {i}")).into());
        }
        for (i, &c) in codes.iter().enumerate() {
            if c == 0 && signs[i / 8] >> (i % 8) & 1 == 1 {
                return Err(WireError::Corrupt(format!("negative zero at element {i}")).into());
            }
        }
        if n % 8 != 0 && signs[n / 8] >> (n % 8) != 0 {
            return Err(WireError::Corrupt("sign bits set past the last element".into()).into());
        }
        for (i, (&c, o)) in codes.iter().zip(out.iter_mut()).enumerate() {
            let magnitude = f32::from_bits(u32::from(c) << 23);
            let negative = signs[i / 8] >> (i % 8) & 1 == 1;
            *o += scale * if negative { -magnitude } else { magnitude };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(step: u64) -> StepContext<'static> {
        StepContext {
            step,
            rank: 0,
            world: 1,
            seed: 7,
            tensor: 0,
            scheduled: &[],
        }
    }

    fn roundtrip(data: &[f32], step: u64) -> (Vec<u8>, Vec<f32>) {
        let mut c = Natural;
        let mut payload = Vec::new();
        let shape = [data.len()];
        let view = TensorView {
            name: "w",
            shape: &shape,
            data,
        };
        c.compress(view, &ctx(step), &mut payload).unwrap();
        let mut out = vec![0.0; data.len()];
        c.decompress_add(&payload, 1.0, &mut out).unwrap();
        (payload, out)
    }

    #[test]
    fn values_become_one_of_the_two_neighbouring_powers_of_two() {
        let data = [0.0, 1.0, -1.0, 0.75, -3.0, 5.5, 1e-3, -2.0e30, 1e-40];
        let (_, out) = roundtrip(&data, 0);
        for (&x, &y) in data.iter().zip(&out) {
            if x == 0.0 {
                assert_eq!(y, 0.0);
                continue;
            }
            let e = x.abs().log2().floor();
            let (lo, hi) = (2f32.powf(e), 2f32.powf(e + 1.0));
            let ok = if x.abs() < f32::MIN_POSITIVE {
                y == 0.0 || y.abs() == f32::MIN_POSITIVE
            } else {
                y.abs() == lo || y.abs() == hi
            };
            assert!(ok, "{x} became {y}");
            assert!(
                y == 0.0 || y.signum() == x.signum(),
                "{x} changed sign: {y}"
            );
        }
        // Exact powers of two never move.
        assert_eq!(out[1], 1.0);
        assert_eq!(out[2], -1.0);
    }

    #[test]
    fn rounding_is_unbiased() {
        // 0.75 = 2^-1 · 1.5: up to 1 with p = 0.5. 1.25: up to 2 with p = 0.25.
        let data: Vec<f32> = (0..200_000)
            .map(|i| if i % 2 == 0 { 0.75 } else { -1.25 })
            .collect();
        let (_, out) = roundtrip(&data, 3);
        let mean = |parity: usize| {
            let picked: Vec<f64> = out
                .iter()
                .skip(parity)
                .step_by(2)
                .map(|&v| f64::from(v))
                .collect();
            picked.iter().sum::<f64>() / picked.len() as f64
        };
        // Standard error: 0.25/sqrt(1e5) ≈ 8e-4 and 0.43/sqrt(1e5) ≈ 1.4e-3.
        assert!((mean(0) - 0.75).abs() < 4e-3, "mean {}", mean(0));
        assert!((mean(1) + 1.25).abs() < 6e-3, "mean {}", mean(1));
    }

    #[test]
    fn payload_takes_nine_bits_per_element() {
        let data = vec![0.3f32; 1000];
        let (payload, _) = roundtrip(&data, 0);
        assert_eq!(payload.len(), 16 + 4 + 125 + 1000);
    }

    #[test]
    fn draws_are_seeded_and_vary_by_step() {
        let data: Vec<f32> = (0..512).map(|i| (i as f32 * 0.37).sin()).collect();
        assert_eq!(roundtrip(&data, 1).0, roundtrip(&data, 1).0);
        assert_ne!(roundtrip(&data, 1).0, roundtrip(&data, 2).0);
    }

    #[test]
    fn non_finite_input_and_corrupt_codes_are_errors() {
        let mut c = Natural;
        let view = TensorView {
            name: "w",
            shape: &[2],
            data: &[1.0, f32::NAN],
        };
        let err = c.compress(view, &ctx(0), &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("non-finite"), "{err}");
        let (mut payload, _) = roundtrip(&[1.0, 2.0], 0);
        let last = payload.len() - 1;
        payload[last] = 255;
        let err = c.decompress_add(&payload, 1.0, &mut [0.0; 2]).unwrap_err();
        assert!(err.to_string().contains("code 255"), "{err}");
    }

    #[test]
    fn passes_the_conformance_suite() {
        regimen_plugin::conformance::check_compressor(|| Box::new(Natural)).unwrap();
    }
}
