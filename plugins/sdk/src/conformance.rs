//! The conformance suites every compressor and every batch controller must pass,
//! built-in or plugin: an author calls [`check_compressor`] (or [`check_controller`])
//! from a test with a factory for their method.
//!
//! It drives the compressor exactly as the host does (see [`crate::compress`]) for
//! one and several simulated workers, and checks the rules of the interface:
//! - payloads start with a valid header of the method's id and the tensor's size;
//! - every worker ends a step with bit-identical averages, and they are finite;
//! - the same inputs give the same bytes (determinism);
//! - every truncation of a payload is an error, random corruption never panics, and a
//!   wrong-length output buffer is an error;
//! - saved state restored into a fresh instance continues with identical payloads.
//!
//! A panic anywhere is caught and reported as a failure naming the check.

use std::panic::{catch_unwind, AssertUnwindSafe};

use half::{bf16, f16};

use crate::batch::{BatchController, BatchDecision, BatchMetrics};
use crate::compress::{Aggregation, Compressor, Round, StepContext, TensorView, WireElement};
use crate::wire::{PayloadHeader, WireReader};

/// Tensor shapes the suite runs on (vectors, a matrix with odd sizes, a 3-D tensor).
pub const SHAPES: &[&[usize]] = &[&[1], &[7], &[100], &[33, 17], &[6, 4, 5], &[64, 64]];

/// Steps each scenario runs (enough for methods with warm-up or warm starts to move).
const STEPS: u64 = 4;

/// Most rounds a multi-round method may ask for before the suite calls it a loop.
const MAX_ROUNDS: usize = 8;

/// A failed check: which one, on what, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct ConformanceFailure {
    /// The check that failed.
    pub check: &'static str,
    /// The shape and worker count it ran on.
    pub case: String,
    /// What went wrong.
    pub message: String,
}

impl std::fmt::Display for ConformanceFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.check, self.case, self.message)
    }
}

impl std::error::Error for ConformanceFailure {}

/// Run the whole suite on compressors made by `make` (called once per simulated
/// worker and scenario; every instance must be configured identically).
pub fn check_compressor(
    mut make: impl FnMut() -> Box<dyn Compressor>,
) -> Result<(), ConformanceFailure> {
    for shape in SHAPES {
        for world in [1, 3] {
            let case = format!("shape {shape:?}, {world} workers");
            let fail = |check: &'static str, message: String| ConformanceFailure {
                check,
                case: case.clone(),
                message,
            };
            guarded(&fail, "protocol", || {
                check_protocol(&mut make, shape, world)
            })?;
        }
        let case = format!("shape {shape:?}");
        let fail = |check: &'static str, message: String| ConformanceFailure {
            check,
            case: case.clone(),
            message,
        };
        guarded(&fail, "determinism", || check_determinism(&mut make, shape))?;
        guarded(&fail, "hostile payloads", || {
            check_hostile_payloads(&mut make, shape)
        })?;
        guarded(&fail, "state", || check_state(&mut make, shape))?;
    }
    Ok(())
}

/// Run `check`, turning an error or a panic into a failure.
fn guarded(
    fail: &dyn Fn(&'static str, String) -> ConformanceFailure,
    name: &'static str,
    check: impl FnOnce() -> Result<(), String>,
) -> Result<(), ConformanceFailure> {
    match catch_unwind(AssertUnwindSafe(check)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(message)) => Err(fail(name, message)),
        Err(panic) => {
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string payload".to_owned());
            Err(fail(name, format!("panicked: {text}")))
        }
    }
}

/// Steps of the batch-controller scenario (several epochs at any sane batch).
const CONTROLLER_STEPS: u64 = 240;
/// The scenario's dataset size.
const CONTROLLER_EPOCH: u64 = 1_000;
/// Steps after which [`check_controller`] saves and restores state.
const CONTROLLER_SAVE_AT: [u64; 3] = [0, 37, 151];

/// Run the batch-controller suite on controllers made by `make` (every instance
/// configured identically), starting from batch `initial`: over a 240-step scenario
/// (a falling loss, plausible gradient statistics, samples advancing by the batch the
/// controller chose) every answer is a batch of at least 1 with a finite, positive lr
/// scale if any; two fresh instances answer bit for bit alike; state saved after a
/// step and loaded into a fresh instance continues with the same answers; and garbage
/// state is refused or accepted, never a panic.
pub fn check_controller(
    mut make: impl FnMut() -> Box<dyn BatchController>,
    initial: u64,
) -> Result<(), ConformanceFailure> {
    let fail = |check: &'static str, message: String| ConformanceFailure {
        check,
        case: format!("batch controller from batch {initial}"),
        message,
    };
    let mut reference = Vec::new();
    guarded(&fail, "answers", || {
        reference = controller_run(make().as_mut(), initial, 0, 0, None)?.decisions;
        Ok(())
    })?;
    guarded(&fail, "determinism", || {
        let again = controller_run(make().as_mut(), initial, 0, 0, None)?;
        same_decisions(&reference, &again.decisions, 0)
    })?;
    for at in CONTROLLER_SAVE_AT {
        guarded(&fail, "state", || {
            let mut first = make();
            let head = controller_run(first.as_mut(), initial, 0, 0, Some(at + 1))?;
            let mut state = Vec::new();
            first
                .save_state(&mut state)
                .map_err(|e| format!("save_state: {e}"))?;
            let mut second = make();
            second
                .load_state(&state)
                .map_err(|e| format!("load_state of its own state: {e}"))?;
            let resume_batch = head.decisions.last().map_or(initial, |d| d.batch);
            let tail = controller_run(second.as_mut(), resume_batch, head.samples, at + 1, None)
                .map_err(|e| format!("after restoring the state of step {at}: {e}"))?;
            same_decisions(&reference, &head.decisions, 0)?;
            same_decisions(&reference, &tail.decisions, at as usize + 1)
        })?;
    }
    guarded(&fail, "garbage state", || {
        for garbage in [&[0xFFu8; 3][..], &[0u8; 1][..], &[7u8; 64][..]] {
            // Refusing is right, accepting is allowed; a panic fails the check.
            let _ = make().load_state(garbage);
        }
        Ok(())
    })?;
    Ok(())
}

/// Metrics the scenario reports after step `step` with batch `batch`, `samples` seen.
fn scenario_metrics(step: u64, samples: u64, batch: u64) -> BatchMetrics {
    let progress = samples as f64 / CONTROLLER_EPOCH as f64;
    let grad_sq = 4.0 * (-0.5 * progress).exp();
    BatchMetrics {
        samples_per_epoch: Some(CONTROLLER_EPOCH),
        loss: Some(2.3 * (-0.3 * progress).exp() + 0.05),
        grad_norm: Some((grad_sq + 50.0 / batch as f64).sqrt()),
        grad_sq_estimate: Some(grad_sq),
        grad_variance: Some(50.0),
        lr: Some(0.1),
        ..BatchMetrics::new(step, samples, batch)
    }
}

/// One stretch of the scenario.
struct Stretch {
    decisions: Vec<BatchDecision>,
    /// Samples seen after the stretch's last step.
    samples: u64,
}

/// Drive `controller` from step `from` (run with `batch`, `samples` seen before it)
/// up to `until` (exclusive; default the scenario's end).
fn controller_run(
    controller: &mut dyn BatchController,
    batch: u64,
    samples: u64,
    from: u64,
    until: Option<u64>,
) -> Result<Stretch, String> {
    let mut decisions = Vec::new();
    let (mut batch, mut samples) = (batch, samples);
    for step in from..until.unwrap_or(CONTROLLER_STEPS) {
        samples += batch;
        let decision = controller
            .observe(&scenario_metrics(step, samples, batch))
            .map_err(|e| format!("observe at step {step}: {e}"))?;
        if decision.batch == 0 {
            return Err(format!("step {step}: answered a batch of 0"));
        }
        if let Some(scale) = decision.lr_scale {
            if !(scale.is_finite() && scale > 0.0) {
                return Err(format!("step {step}: answered the lr scale {scale}"));
            }
        }
        batch = decision.batch;
        decisions.push(decision);
    }
    Ok(Stretch { decisions, samples })
}

/// `got` equals `reference[offset..]` bit for bit.
fn same_decisions(
    reference: &[BatchDecision],
    got: &[BatchDecision],
    offset: usize,
) -> Result<(), String> {
    for (i, decision) in got.iter().enumerate() {
        let Some(expected) = reference.get(offset + i) else {
            return Err(format!("step {}: an answer past the scenario", offset + i));
        };
        let bits = |d: &BatchDecision| (d.batch, d.lr_scale.map(f64::to_bits));
        if bits(expected) != bits(decision) {
            return Err(format!(
                "step {}: answered {decision:?}, but {expected:?} the first time",
                offset + i
            ));
        }
    }
    Ok(())
}

/// A deterministic fixture gradient for `worker` at `step`: smooth values of mixed
/// sign and magnitude, a few exact zeros, never non-finite.
pub fn fixture_gradient(numel: usize, worker: usize, step: u64) -> Vec<f32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ ((worker as u64) << 32) ^ step;
    (0..numel)
        .map(|i| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let unit = ((state >> 40) as f32) / (1u64 << 24) as f32 - 0.5;
            if i % 11 == 5 {
                0.0
            } else {
                unit * (1.0 + (i % 7) as f32)
            }
        })
        .collect()
}

fn context(step: u64, rank: usize, world: usize) -> StepContext<'static> {
    StepContext {
        step,
        rank,
        world,
        seed: 42,
        tensor: 3,
        scheduled: &[],
    }
}

fn check_header(
    compressor: &dyn Compressor,
    payload: &[u8],
    numel: usize,
) -> Result<usize, String> {
    let mut reader = WireReader::new(payload);
    let header = PayloadHeader::read(&mut reader).map_err(|e| format!("bad header: {e}"))?;
    if header.method != compressor.method_id() {
        return Err(format!(
            "header method {} but method_id() is {}",
            header.method.0,
            compressor.method_id().0
        ));
    }
    if header.numel != numel as u64 {
        return Err(format!(
            "header numel {} for a tensor of {numel}",
            header.numel
        ));
    }
    Ok(reader.offset())
}

/// Sum the data sections of `payloads` (all with the same header length) as
/// `element`s, in rank order, rounding to the element type after each addition.
fn reduce(
    payloads: &[Vec<u8>],
    header_len: usize,
    element: WireElement,
) -> Result<Vec<u8>, String> {
    let first = payloads.first().ok_or("no payloads")?;
    let len = first.len();
    if payloads.iter().any(|p| p.len() != len) {
        return Err("summable payloads of different lengths across workers".into());
    }
    let data_len = len - header_len;
    if data_len % element.size() != 0 {
        return Err(format!(
            "data section of {data_len} bytes is not a whole number of {}",
            element.name()
        ));
    }
    let mut out = first.clone();
    for payload in &payloads[1..] {
        for (acc, add) in out[header_len..]
            .chunks_exact_mut(element.size())
            .zip(payload[header_len..].chunks_exact(element.size()))
        {
            match element {
                WireElement::F32 => {
                    let sum = f32::from_le_bytes([acc[0], acc[1], acc[2], acc[3]])
                        + f32::from_le_bytes([add[0], add[1], add[2], add[3]]);
                    acc.copy_from_slice(&sum.to_le_bytes());
                }
                WireElement::F16 => {
                    let sum = f16::from_le_bytes([acc[0], acc[1]]).to_f32()
                        + f16::from_le_bytes([add[0], add[1]]).to_f32();
                    acc.copy_from_slice(&f16::from_f32(sum).to_le_bytes());
                }
                WireElement::Bf16 => {
                    let sum = bf16::from_le_bytes([acc[0], acc[1]]).to_f32()
                        + bf16::from_le_bytes([add[0], add[1]]).to_f32();
                    acc.copy_from_slice(&bf16::from_f32(sum).to_le_bytes());
                }
            }
        }
    }
    Ok(out)
}

/// What one simulated step produced: each worker's average, and the payloads that
/// were decoded (each rank's for gather, the reduced one for sums).
struct StepOutcome {
    averages: Vec<Vec<f32>>,
    decoded: Vec<Vec<u8>>,
}

/// One step of `workers` as the host runs it.
fn run_step(
    workers: &mut [Box<dyn Compressor>],
    shape: &[usize],
    step: u64,
) -> Result<StepOutcome, String> {
    let world = workers.len();
    let numel: usize = shape.iter().product();
    let mut payloads = Vec::with_capacity(world);
    for (rank, worker) in workers.iter_mut().enumerate() {
        let grad = fixture_gradient(numel, rank, step);
        let mut out = Vec::new();
        worker
            .compress(
                TensorView {
                    name: "conformance.weight",
                    shape,
                    data: &grad,
                },
                &context(step, rank, world),
                &mut out,
            )
            .map_err(|e| format!("compress failed: {e}"))?;
        check_header(worker.as_ref(), &out, numel)?;
        payloads.push(out);
    }
    let aggregation = workers[0].aggregation();
    if workers.iter().any(|w| w.aggregation() != aggregation) {
        return Err("workers disagree on the aggregation mode".into());
    }
    let scale = 1.0 / world as f32;
    let mut averages = vec![vec![0.0f32; numel]; world];
    match aggregation {
        Aggregation::Gather => {
            for (worker, average) in workers.iter_mut().zip(&mut averages) {
                for payload in &payloads {
                    worker
                        .decompress_add(payload, scale, average)
                        .map_err(|e| format!("decompress failed: {e}"))?;
                }
            }
            Ok(StepOutcome {
                averages,
                decoded: payloads,
            })
        }
        Aggregation::Sum(element) => {
            let mut rounds = 0;
            loop {
                let header_len = check_header(workers[0].as_ref(), &payloads[0], numel)?;
                let reduced = reduce(&payloads, header_len, element)?;
                let mut next = Vec::with_capacity(world);
                let mut done = 0;
                for (rank, worker) in workers.iter_mut().enumerate() {
                    let mut out = Vec::new();
                    match worker
                        .next_round(&reduced, &context(step, rank, world), &mut out)
                        .map_err(|e| format!("next_round failed: {e}"))?
                    {
                        Round::Done => done += 1,
                        Round::More => next.push(out),
                    }
                }
                if done == world {
                    for (worker, average) in workers.iter_mut().zip(&mut averages) {
                        worker
                            .decompress_add(&reduced, scale, average)
                            .map_err(|e| format!("decompress failed: {e}"))?;
                    }
                    return Ok(StepOutcome {
                        averages,
                        decoded: vec![reduced],
                    });
                }
                if done != 0 {
                    return Err("workers disagree on whether another round is needed".into());
                }
                rounds += 1;
                if rounds > MAX_ROUNDS {
                    return Err(format!("more than {MAX_ROUNDS} rounds"));
                }
                payloads = next;
            }
        }
    }
}

fn check_protocol(
    make: &mut impl FnMut() -> Box<dyn Compressor>,
    shape: &[usize],
    world: usize,
) -> Result<(), String> {
    let mut workers: Vec<_> = (0..world).map(|_| make()).collect();
    for step in 0..STEPS {
        let averages = run_step(&mut workers, shape, step)?.averages;
        for (rank, average) in averages.iter().enumerate() {
            if let Some(bad) = average.iter().position(|v| !v.is_finite()) {
                return Err(format!(
                    "step {step}: rank {rank}'s average[{bad}] is not finite"
                ));
            }
            if average
                .iter()
                .zip(&averages[0])
                .any(|(a, b)| a.to_bits() != b.to_bits())
            {
                return Err(format!(
                    "step {step}: rank {rank}'s average differs from rank 0's"
                ));
            }
        }
    }
    Ok(())
}

fn check_determinism(
    make: &mut impl FnMut() -> Box<dyn Compressor>,
    shape: &[usize],
) -> Result<(), String> {
    let mut first = vec![make()];
    let mut second = vec![make()];
    for step in 0..STEPS {
        let a = run_step(&mut first, shape, step)?;
        let b = run_step(&mut second, shape, step)?;
        if a.decoded != b.decoded || a.averages != b.averages {
            return Err(format!("step {step}: two identical instances disagree"));
        }
    }
    Ok(())
}

/// Flip one pseudo-random byte position to a pseudo-random value, `trials` times.
fn corruptions(payload: &[u8], trials: usize) -> impl Iterator<Item = Vec<u8>> + '_ {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    (0..trials).map(move |_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut bad = payload.to_vec();
        if !bad.is_empty() {
            let at = (state % bad.len() as u64) as usize;
            bad[at] ^= ((state >> 32) as u8) | 1;
        }
        bad
    })
}

fn check_hostile_payloads(
    make: &mut impl FnMut() -> Box<dyn Compressor>,
    shape: &[usize],
) -> Result<(), String> {
    let numel: usize = shape.iter().product();
    let mut workers = vec![make()];
    let payloads = run_step(&mut workers, shape, 0)?.decoded;
    let mut decoder = make();
    // A decoder needs the sender's round state for multi-round methods; use the
    // worker that took part in the exchange.
    let worker = &mut workers[0];
    for payload in &payloads {
        let mut out = vec![0.0f32; numel];
        worker
            .decompress_add(payload, 1.0, &mut out)
            .map_err(|e| format!("the intact payload does not decode: {e}"))?;
        for len in 0..payload.len() {
            let mut out = vec![0.0f32; numel];
            if worker
                .decompress_add(&payload[..len], 1.0, &mut out)
                .is_ok()
            {
                return Err(format!(
                    "a payload truncated to {len} of {} bytes decoded without error",
                    payload.len()
                ));
            }
        }
        let mut short = vec![0.0f32; numel + 1];
        if worker.decompress_add(payload, 1.0, &mut short).is_ok() {
            return Err("decoding into an output of the wrong length succeeded".into());
        }
        for bad in corruptions(payload, 300) {
            let mut out = vec![0.0f32; numel];
            // Ok or Err are both acceptable; a panic is caught by the guard.
            let _ = worker.decompress_add(&bad, 1.0, &mut out);
            let _ = decoder.decompress_add(&bad, 1.0, &mut out);
        }
    }
    Ok(())
}

fn check_state(
    make: &mut impl FnMut() -> Box<dyn Compressor>,
    shape: &[usize],
) -> Result<(), String> {
    let mut original = vec![make()];
    for step in 0..STEPS - 1 {
        run_step(&mut original, shape, step)?;
    }
    let mut state = Vec::new();
    original[0]
        .save_state(&mut state)
        .map_err(|e| format!("save_state failed: {e}"))?;
    let mut restored = vec![make()];
    restored[0]
        .load_state(&state)
        .map_err(|e| format!("load_state of its own state failed: {e}"))?;
    let a = run_step(&mut original, shape, STEPS - 1)?;
    let b = run_step(&mut restored, shape, STEPS - 1)?;
    if a.decoded != b.decoded || a.averages != b.averages {
        return Err("a restored instance continues differently from the original".into());
    }
    for bad in corruptions(&state, 50) {
        let _ = make().load_state(&bad);
    }
    let _ = make().load_state(&state[..state.len() / 2]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::ControllerError;
    use crate::compress::CompressError;
    use crate::wire::MethodId;

    /// Dense f32, written the careful way.
    struct Dense {
        sloppy: bool,
    }

    impl Compressor for Dense {
        fn name(&self) -> &str {
            "dense"
        }
        fn method_id(&self) -> MethodId {
            MethodId::FIRST_PLUGIN
        }
        fn aggregation(&self) -> Aggregation {
            Aggregation::Sum(WireElement::F32)
        }
        fn compress(
            &mut self,
            input: TensorView<'_>,
            _ctx: &StepContext<'_>,
            out: &mut Vec<u8>,
        ) -> Result<(), CompressError> {
            PayloadHeader::new(self.method_id(), input.shape)?.write(out);
            for value in input.data {
                out.extend_from_slice(&value.to_le_bytes());
            }
            Ok(())
        }
        fn decompress_add(
            &mut self,
            payload: &[u8],
            scale: f32,
            out: &mut [f32],
        ) -> Result<(), CompressError> {
            let (_, mut reader) = PayloadHeader::parse(payload, self.method_id(), out.len())?;
            if self.sloppy {
                // Trusts the payload's length: indexes past the end when truncated.
                let data = reader.rest();
                for (i, value) in out.iter_mut().enumerate() {
                    let bytes = [
                        data[4 * i],
                        data[4 * i + 1],
                        data[4 * i + 2],
                        data[4 * i + 3],
                    ];
                    *value += scale * f32::from_le_bytes(bytes);
                }
                return Ok(());
            }
            let data = reader.array(out.len(), 4)?;
            reader.finish()?;
            for (value, bytes) in out.iter_mut().zip(data.chunks_exact(4)) {
                *value += scale * f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            }
            Ok(())
        }
    }

    #[test]
    fn a_careful_compressor_passes() {
        check_compressor(|| Box::new(Dense { sloppy: false })).unwrap();
    }

    #[test]
    fn a_compressor_that_panics_on_a_short_payload_fails_by_name() {
        let failure = check_compressor(|| Box::new(Dense { sloppy: true })).unwrap_err();
        assert_eq!(failure.check, "hostile payloads");
        assert!(failure.message.contains("panicked"), "{failure}");
    }

    #[test]
    fn the_reduction_rounds_to_the_wire_type_after_each_addition() {
        // f16 spacing at 2048 is 2: 2048 + 1 rounds to 2048 (ties to even), twice.
        let header = 0;
        let payloads: Vec<Vec<u8>> = [2048.0f32, 1.0, 1.0]
            .iter()
            .map(|&v| f16::from_f32(v).to_le_bytes().to_vec())
            .collect();
        let sum = reduce(&payloads, header, WireElement::F16).unwrap();
        assert_eq!(f16::from_le_bytes([sum[0], sum[1]]).to_f32(), 2048.0);
    }

    /// Doubles the batch every `every` steps (counting the steps it observed); with
    /// `forget`, its state is empty, so a restored instance starts counting again.
    struct Doubling {
        seen: u64,
        every: u64,
        forget: bool,
    }

    impl BatchController for Doubling {
        fn name(&self) -> &str {
            "doubling"
        }
        fn observe(&mut self, m: &BatchMetrics) -> Result<BatchDecision, ControllerError> {
            self.seen += 1;
            let grow = self.seen % self.every == 0;
            Ok(BatchDecision {
                batch: if grow {
                    (m.batch * 2).min(4096)
                } else {
                    m.batch
                },
                lr_scale: Some(m.batch as f64 / 32.0),
            })
        }
        fn save_state(&self, out: &mut Vec<u8>) -> Result<(), ControllerError> {
            if !self.forget {
                out.extend_from_slice(&self.seen.to_le_bytes());
            }
            Ok(())
        }
        fn load_state(&mut self, state: &[u8]) -> Result<(), ControllerError> {
            match <[u8; 8]>::try_from(state) {
                Ok(bytes) => self.seen = u64::from_le_bytes(bytes),
                Err(_) if state.is_empty() => {}
                Err(_) => return Err(ControllerError::State("8 bytes expected".into())),
            }
            Ok(())
        }
    }

    #[test]
    fn a_careful_controller_passes() {
        let make = || {
            Box::new(Doubling {
                seen: 0,
                every: 10,
                forget: false,
            }) as Box<dyn BatchController>
        };
        check_controller(make, 32).unwrap();
    }

    #[test]
    fn a_controller_that_forgets_its_state_fails_the_state_check() {
        let make = || {
            Box::new(Doubling {
                seen: 0,
                every: 10,
                forget: true,
            }) as Box<dyn BatchController>
        };
        let failure = check_controller(make, 32).unwrap_err();
        assert_eq!(failure.check, "state");
        assert!(failure.message.contains("the first time"), "{failure}");
    }

    #[test]
    fn a_controller_answering_zero_fails() {
        let make = || {
            Box::new(Doubling {
                seen: 0,
                every: 10,
                forget: false,
            }) as Box<dyn BatchController>
        };
        let failure = check_controller(make, 0).unwrap_err();
        assert_eq!(failure.check, "answers");
        assert!(failure.message.contains("a batch of 0"), "{failure}");
    }
}
