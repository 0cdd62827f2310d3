//! The gradient-exchange pipeline of the stepper: one [`Compressor`] per compressed
//! parameter, its error-feedback residual, and the exchange of every step through a
//! [`Communicator`], as the SDK's "How the host drives a compressor" describes.
//!
//! # One exchange
//!
//! For each parameter that has a compressor, in parameter order (the same order on
//! every worker, so the collectives match):
//!
//! 1. the unscaled gradient is copied from the backend into a host buffer `x`, and the
//!    residual `e` is added when error feedback is on (`x = g + e`);
//! 2. `compress(x)` writes the payload (header + data);
//! 3. the payloads are combined per [`Aggregation`]:
//!    - `Sum(element)`: the data section (after the header) is summed by
//!      [`Communicator::allreduce_wire`]; a multi-round method gets the reduced
//!      payload in [`Compressor::next_round`] until it answers [`Round::Done`] (at most
//!      [`MAX_ROUNDS`] rounds); the last reduced payload is decoded once with scale
//!      `1/W`;
//!    - `Gather`: the payloads are all-gathered and every rank's is decoded, in rank
//!      order, with `decompress_add(payload, 1/W, avg)`, so every worker computes the
//!      same bits;
//! 4. the reconstruction `r` is this worker's own payload decoded (scale 1; for a
//!    multi-round method, its own payload of the last round, copied before that
//!    round's reduction) or, for [`ResidualSource::Aggregate`] methods, the average
//!    itself (with one worker the two coincide and the average is reused, which saves
//!    a decode); the relative error `‖x − r‖/‖x‖` is
//!    measured and, with error feedback, the next residual `x − r` is written to a
//!    *pending* buffer;
//! 5. the average is uploaded back into the backend as the gradient the optimizer will
//!    use.
//!
//! Pending residuals replace the residuals only when the stepper commits the step
//! ([`Pipeline::commit`]), so an error anywhere in the exchange leaves every residual
//! as it was. A compressor's own state (PowerSGD's `Q`, DGC's accumulators) lives
//! inside the compressor and may have advanced when a later parameter fails.
//!
//! Host buffers (`x`, the reconstruction, the average, the payloads and the gathered
//! payloads) are allocated once, for the largest compressed tensor, and reused.
//!
//! # Error feedback
//!
//! The script's `with error_feedback` / `error_feedback: false` (from
//! [`CompressSpec::error_feedback`](crate::strategy::CompressSpec::error_feedback), or an
//! `error_feedback` boolean among the arguments) overrides the method's
//! [`FeedbackPolicy`]: `OffByDefault` methods keep a residual only when asked,
//! `OnByDefault` ones unless told not to. [`FeedbackPolicy::Internal`] methods (DGC)
//! never get a host residual: they accumulate what they did not send themselves, so
//! `with error_feedback` on them is allowed and changes nothing (the binding warns).
//!
//! # Checkpoints
//!
//! Residuals are saved as f32 tensors `residual/NAME`. A compressor's state
//! ([`Compressor::save_state`] bytes) is saved in the f32 tensor `compressor_state/NAME`
//! with three bytes per element, each element holding the exact integer
//! `b₀ + 256·b₁ + 65536·b₂ < 2²⁴` (the last element zero-padded); the byte count is
//! recorded in the stepper's header. Integers below 2²⁴ are exact in f32, so the bytes
//! come back unchanged whatever the platform does with NaN bit patterns.

use std::collections::HashSet;
use std::sync::Arc;

use super::binding::{Binding, BoundCompression, ErrorFeedback, Plan};
use super::optimizer::ParamState;
use super::{CompressionReport, ParamSpec, RuntimeError};
use crate::backend::{Backend, HostTensor, HostTensorMut};
use crate::comm::{CommError, Communicator};
use crate::compress::{
    self, Aggregation, BuildError, CompressError, Compressor, FeedbackPolicy, PayloadHeader,
    ResidualSource, Round, StepContext, TensorView, WireReader, ERROR_FEEDBACK_ARG,
};
use crate::plugin::{ArgError, ArgValue, Args};

/// Most exchange rounds one tensor may take in a step (PowerSGD takes two).
pub const MAX_ROUNDS: usize = 16;

/// Builds a custom compressor from its arguments.
pub type BuildCompressor = dyn Fn(&Args) -> Result<Box<dyn Compressor>, ArgError> + Send + Sync;

/// Where the stepper finds a compressor by method name: methods registered here first,
/// then the built-in ones ([`compress::build`]). Cloning is cheap (the builders are
/// shared).
#[derive(Clone, Default)]
pub struct CompressorRegistry {
    custom: Vec<(String, Arc<BuildCompressor>)>,
}

impl std::fmt::Debug for CompressorRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompressorRegistry")
            .field("custom", &self.custom_methods().collect::<Vec<_>>())
            .finish()
    }
}

/// Two registries are equal when they register the same names to the very same
/// builders.
impl PartialEq for CompressorRegistry {
    fn eq(&self, other: &Self) -> bool {
        self.custom.len() == other.custom.len()
            && self
                .custom
                .iter()
                .zip(&other.custom)
                .all(|((a, f), (b, g))| a == b && Arc::ptr_eq(f, g))
    }
}

impl CompressorRegistry {
    /// The built-in methods only.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same registry with `method` built by `build`; it takes precedence over a
    /// built-in method and over an earlier registration of the same name.
    pub fn with_method(
        mut self,
        method: impl Into<String>,
        build: impl Fn(&Args) -> Result<Box<dyn Compressor>, ArgError> + Send + Sync + 'static,
    ) -> Self {
        let method = method.into();
        self.custom.retain(|(name, _)| *name != method);
        self.custom.push((method, Arc::new(build)));
        self
    }

    /// The same registry with every method of `other` registered on top (`other`'s
    /// take precedence).
    pub fn with_methods_of(mut self, other: &CompressorRegistry) -> Self {
        for (method, build) in &other.custom {
            self.custom.retain(|(name, _)| name != method);
            self.custom.push((method.clone(), Arc::clone(build)));
        }
        self
    }

    /// The names of the registered (non-built-in) methods.
    pub fn custom_methods(&self) -> impl Iterator<Item = &str> {
        self.custom.iter().map(|(name, _)| name.as_str())
    }

    /// Build `method` from `args`: a registered method, else a built-in one. This is
    /// the one place a method name is looked up.
    pub fn build(&self, method: &str, args: &Args) -> Result<Box<dyn Compressor>, BuildError> {
        match self.custom.iter().find(|(name, _)| name == method) {
            Some((_, build)) => build(args).map_err(|error| BuildError::Args {
                method: method.to_owned(),
                error,
            }),
            None => compress::build(method, args),
        }
    }
}

/// One compressed parameter on this worker.
struct ParamCompression {
    name: String,
    shape: Vec<usize>,
    numel: usize,
    method: String,
    compressor: Box<dyn Compressor>,
    aggregation: Aggregation,
    residual_source: ResidualSource,
    feedback: ErrorFeedback,
    /// The residual `e` (empty without error feedback).
    residual: Vec<f32>,
    /// The next residual, written during the exchange and swapped in on commit.
    pending: Vec<f32>,
    /// This step's values of the scheduled arguments, by name.
    scheduled: Vec<(String, f64)>,
    /// Value-table index of each scheduled argument (same order).
    scheduled_slots: Vec<usize>,
    /// Index into [`Pipeline::bins`].
    bin: usize,
}

/// One report entry: the parameters sharing a rule and a method.
struct Bin {
    label: String,
    method: String,
    tensors: usize,
    dense_bytes: u64,
}

/// What one bin did in a step.
#[derive(Clone, Copy, Default)]
struct BinTally {
    payload_bytes: u64,
    wire_bytes_sent: u64,
    input_sum_squares: f64,
    error_sum_squares: f64,
}

/// The compressors of a bound run and their reusable buffers.
pub(crate) struct Pipeline {
    /// Per bound parameter.
    params: Vec<Option<ParamCompression>>,
    bins: Vec<Bin>,
    tallies: Vec<BinTally>,
    seed: u64,
    /// `x = g + e`.
    input: Vec<f32>,
    /// This worker's own reconstruction (only with several workers).
    reconstruction: Vec<f32>,
    /// The averaged gradient.
    average: Vec<f32>,
    payload: Vec<u8>,
    next_payload: Vec<u8>,
    /// A copy of this worker's own payload before a summing round.
    own_payload: Vec<u8>,
    gathered: Vec<Vec<u8>>,
}

/// What went wrong in an exchange, before it is tied to a step.
enum Failure {
    Compress(CompressError),
    Comm(CommError),
    Backend(crate::backend::BackendError),
}

impl From<CompressError> for Failure {
    fn from(error: CompressError) -> Self {
        Failure::Compress(error)
    }
}

impl From<CommError> for Failure {
    fn from(error: CommError) -> Self {
        Failure::Comm(error)
    }
}

impl From<crate::backend::BackendError> for Failure {
    fn from(error: crate::backend::BackendError) -> Self {
        Failure::Backend(error)
    }
}

impl Pipeline {
    /// The compressors for `binding`'s parameters, or `None` when nothing is
    /// exchanged (one worker and no `compress` rule: the stepper's fast path). With
    /// several workers every parameter without a rule gets the dense `none` method,
    /// so that all gradients are averaged and every byte is counted the same way.
    /// Fills [`BoundParam::compression`](super::BoundParam::compression) and adds the
    /// binding's warnings about error feedback.
    pub fn build(
        binding: &mut Binding,
        plan: &Plan,
        specs: &[ParamSpec],
        registry: &CompressorRegistry,
        world: usize,
        seed: u64,
    ) -> Result<Option<Self>, RuntimeError> {
        let any_rule = plan.compress.iter().any(Option::is_some);
        if world <= 1 && !any_rule {
            return Ok(None);
        }
        let dense = super::binding::CompressRule {
            source: "compress".to_owned(),
            spec: crate::strategy::CompressSpec {
                method: "none".to_owned(),
                ..Default::default()
            },
            scheduled: Vec::new(),
        };
        let mut params = Vec::with_capacity(specs.len());
        let mut bins: Vec<Bin> = Vec::new();
        let mut warned: HashSet<String> = HashSet::new();
        let mut largest = 0usize;
        for ((bound, spec), rule) in binding.params.iter_mut().zip(specs).zip(&plan.compress) {
            let rule = match rule {
                Some(index) => &plan.compress_rules[*index],
                None if world > 1 => &dense,
                None => {
                    params.push(None);
                    continue;
                }
            };
            let method = rule.spec.method.clone();
            let compressor = registry.build(&method, &rule.spec.args).map_err(|error| {
                RuntimeError::CompressorBuild {
                    param: bound.name.clone(),
                    method: method.clone(),
                    error,
                }
            })?;
            let asked =
                requested_feedback(&rule.spec).map_err(|error| RuntimeError::CompressorBuild {
                    param: bound.name.clone(),
                    method: method.clone(),
                    error: BuildError::Args {
                        method: method.clone(),
                        error,
                    },
                })?;
            let feedback = match (compressor.feedback(), asked) {
                (FeedbackPolicy::Internal, asked) => {
                    if let Some(asked) = asked {
                        if warned.insert(rule.source.clone()) {
                            let said = if asked {
                                "`with error_feedback`"
                            } else {
                                "`error_feedback: false`"
                            };
                            binding.warnings.push(format!(
                                "`{} {method}`: {method} accumulates what it does not send \
                                 itself, so {said} changes nothing",
                                rule.source
                            ));
                        }
                    }
                    ErrorFeedback::Internal
                }
                (FeedbackPolicy::OffByDefault, asked) => on_off(asked.unwrap_or(false)),
                (FeedbackPolicy::OnByDefault, asked) => on_off(asked.unwrap_or(true)),
            };
            let numel = bound.numel;
            largest = largest.max(numel);
            let bin = match bins
                .iter()
                .position(|b| b.label == rule.source && b.method == method)
            {
                Some(bin) => bin,
                None => {
                    bins.push(Bin {
                        label: rule.source.clone(),
                        method: method.clone(),
                        tensors: 0,
                        dense_bytes: 0,
                    });
                    bins.len() - 1
                }
            };
            bins[bin].tensors += 1;
            bins[bin].dense_bytes += 4 * numel as u64;
            let residual = if feedback == ErrorFeedback::On {
                vec![0.0; numel]
            } else {
                Vec::new()
            };
            bound.compression = Some(BoundCompression {
                source: rule.source.clone(),
                method: method.clone(),
                error_feedback: feedback,
                scheduled: rule
                    .spec
                    .scheduled
                    .iter()
                    .map(|arg| (arg.arg.clone(), arg.output.clone()))
                    .collect(),
            });
            params.push(Some(ParamCompression {
                name: bound.name.clone(),
                shape: spec.shape.clone(),
                numel,
                aggregation: compressor.aggregation(),
                residual_source: compressor.residual_source(),
                compressor,
                method,
                feedback,
                pending: residual.clone(),
                residual,
                scheduled: rule
                    .scheduled
                    .iter()
                    .map(|(arg, _)| (arg.clone(), f64::NAN))
                    .collect(),
                scheduled_slots: rule.scheduled.iter().map(|&(_, slot)| slot).collect(),
                bin,
            }));
        }
        let tallies = vec![BinTally::default(); bins.len()];
        Ok(Some(Self {
            params,
            bins,
            tallies,
            seed,
            input: vec![0.0; largest],
            reconstruction: if world > 1 {
                vec![0.0; largest]
            } else {
                Vec::new()
            },
            average: vec![0.0; largest],
            payload: Vec::new(),
            next_payload: Vec::new(),
            own_payload: Vec::new(),
            gathered: Vec::new(),
        }))
    }

    /// Exchange every compressed parameter's gradient (`states[i].grad`, unscaled)
    /// and replace it by the workers' average; `sum_squares[i]` becomes Σ avg² for
    /// those parameters. `values` is the step's value table (for scheduled
    /// arguments). Residuals are only staged: see [`Pipeline::commit`].
    pub fn exchange<B: Backend>(
        &mut self,
        backend: &B,
        comm: &mut dyn Communicator,
        states: &mut [ParamState<B::Tensor>],
        values: &[f64],
        step: u64,
        sum_squares: &mut [f64],
    ) -> Result<Vec<CompressionReport>, RuntimeError> {
        self.tallies.fill(BinTally::default());
        let (rank, world) = (comm.rank(), comm.world().max(1));
        for index in 0..self.params.len() {
            let Some(param) = self.params[index].as_mut() else {
                continue;
            };
            for ((_, value), &slot) in param.scheduled.iter_mut().zip(&param.scheduled_slots) {
                *value = values.get(slot).copied().unwrap_or(f64::NAN);
            }
            let before = comm.traffic();
            let Some(state) = states.get_mut(index) else {
                continue;
            };
            // Lent to the context while the compressor is borrowed mutably.
            let scheduled = std::mem::take(&mut param.scheduled);
            let ctx = StepContext {
                step,
                rank,
                world,
                seed: self.seed,
                tensor: index,
                scheduled: &scheduled,
            };
            let exchanged = exchange_one(
                param,
                &ctx,
                backend,
                comm,
                &mut state.grad,
                Buffers {
                    input: &mut self.input,
                    reconstruction: &mut self.reconstruction,
                    average: &mut self.average,
                    payload: &mut self.payload,
                    next_payload: &mut self.next_payload,
                    own_payload: &mut self.own_payload,
                    gathered: &mut self.gathered,
                },
            );
            param.scheduled = scheduled;
            let tally = match exchanged {
                Ok(tally) => tally,
                Err(failure) => {
                    let param_name = param.name.clone();
                    let method = param.method.clone();
                    return Err(match failure {
                        Failure::Compress(error) => RuntimeError::Compress {
                            step,
                            param: param_name,
                            method,
                            error,
                        },
                        Failure::Comm(error) => RuntimeError::Communication {
                            step,
                            during: format!("the gradient of `{param_name}` (`{method}`)"),
                            error,
                        },
                        Failure::Backend(error) => RuntimeError::Backend(error),
                    });
                }
            };
            let bin = &mut self.tallies[param.bin];
            bin.payload_bytes += tally.payload_bytes;
            bin.input_sum_squares += tally.input_sum_squares;
            bin.error_sum_squares += tally.error_sum_squares;
            bin.wire_bytes_sent += comm.traffic().since(&before).bytes_sent;
            if let Some(out) = sum_squares.get_mut(index) {
                *out = backend.sum_squares(&state.grad)?;
            }
        }
        Ok(self
            .bins
            .iter()
            .zip(&self.tallies)
            .map(|(bin, tally)| CompressionReport {
                label: bin.label.clone(),
                method: bin.method.clone(),
                tensors: bin.tensors,
                dense_bytes: bin.dense_bytes,
                payload_bytes: tally.payload_bytes,
                wire_bytes_sent: tally.wire_bytes_sent,
                relative_error: relative_error(tally.error_sum_squares, tally.input_sum_squares),
            })
            .collect())
    }

    /// The report of a skipped step: nothing compressed, nothing sent.
    pub fn skipped_report(&self) -> Vec<CompressionReport> {
        self.bins
            .iter()
            .map(|bin| CompressionReport {
                label: bin.label.clone(),
                method: bin.method.clone(),
                tensors: bin.tensors,
                dense_bytes: 0,
                payload_bytes: 0,
                wire_bytes_sent: 0,
                relative_error: f64::NAN,
            })
            .collect()
    }

    /// Make the residuals staged by the last [`Pipeline::exchange`] current.
    pub fn commit(&mut self) {
        for param in self.params.iter_mut().flatten() {
            std::mem::swap(&mut param.residual, &mut param.pending);
        }
    }

    /// Parameter `index`'s error-feedback residual, if it keeps one.
    pub fn residual(&self, index: usize) -> Option<&[f32]> {
        match self.params.get(index) {
            Some(Some(param)) if param.feedback == ErrorFeedback::On => {
                Some(param.residual.as_slice())
            }
            _ => None,
        }
    }

    /// What a checkpoint records for each compressed parameter: name, method, its
    /// residual (if any) and its compressor's saved state.
    pub fn save(&self) -> Result<Vec<SavedCompression<'_>>, RuntimeError> {
        let mut saved = Vec::new();
        for param in self.params.iter().flatten() {
            let mut state = Vec::new();
            param.compressor.save_state(&mut state).map_err(|error| {
                RuntimeError::CompressorState {
                    param: param.name.clone(),
                    method: param.method.clone(),
                    error,
                }
            })?;
            saved.push(SavedCompression {
                name: &param.name,
                method: &param.method,
                residual: (param.feedback == ErrorFeedback::On).then_some(&param.residual[..]),
                state,
            });
        }
        Ok(saved)
    }

    /// The compressed parameters' names and methods, in parameter order.
    pub fn methods(&self) -> impl Iterator<Item = (&str, &str, bool)> {
        self.params.iter().flatten().map(|p| {
            (
                p.name.as_str(),
                p.method.as_str(),
                p.feedback == ErrorFeedback::On,
            )
        })
    }

    /// Restore parameter `name`'s residual.
    pub fn restore_residual(&mut self, name: &str, values: &[f32]) -> Result<(), String> {
        let param = self.find_mut(name)?;
        if param.feedback != ErrorFeedback::On {
            return Err(format!("`{name}` keeps no error-feedback residual"));
        }
        if values.len() != param.numel {
            return Err(format!(
                "the residual of `{name}` has {} elements, expected {}",
                values.len(),
                param.numel
            ));
        }
        param.residual.copy_from_slice(values);
        Ok(())
    }

    /// Restore parameter `name`'s compressor state.
    pub fn restore_state(&mut self, name: &str, state: &[u8]) -> Result<(), String> {
        let param = self.find_mut(name)?;
        param.compressor.load_state(state).map_err(|error| {
            format!(
                "the `{}` compressor of `{name}` refused its saved state: {error}",
                param.method
            )
        })
    }

    fn find_mut(&mut self, name: &str) -> Result<&mut ParamCompression, String> {
        self.params
            .iter_mut()
            .flatten()
            .find(|p| p.name == name)
            .ok_or_else(|| format!("`{name}` has no compressor in this run"))
    }
}

/// One compressed parameter's part of a checkpoint.
pub(crate) struct SavedCompression<'a> {
    pub name: &'a str,
    pub method: &'a str,
    pub residual: Option<&'a [f32]>,
    pub state: Vec<u8>,
}

/// The pipeline's scratch space, borrowed for one tensor.
struct Buffers<'a> {
    input: &'a mut Vec<f32>,
    reconstruction: &'a mut Vec<f32>,
    average: &'a mut Vec<f32>,
    payload: &'a mut Vec<u8>,
    next_payload: &'a mut Vec<u8>,
    own_payload: &'a mut Vec<u8>,
    gathered: &'a mut Vec<Vec<u8>>,
}

/// Steps 1–5 of the module documentation for one tensor.
fn exchange_one<B: Backend>(
    param: &mut ParamCompression,
    ctx: &StepContext<'_>,
    backend: &B,
    comm: &mut dyn Communicator,
    grad: &mut B::Tensor,
    buffers: Buffers<'_>,
) -> Result<BinTally, Failure> {
    let numel = param.numel;
    let world = ctx.world;
    let scale = 1.0 / world as f32;
    let input = &mut buffers.input[..numel];
    let average = &mut buffers.average[..numel];

    // 1. x = g (+ e).
    backend.download(grad, HostTensorMut::F32(input))?;
    if param.feedback == ErrorFeedback::On {
        for (x, e) in input.iter_mut().zip(&param.residual) {
            *x += e;
        }
    }

    // 2. Compress.
    let payload = buffers.payload;
    payload.clear();
    param.compressor.compress(
        TensorView {
            name: &param.name,
            shape: &param.shape,
            data: input,
        },
        ctx,
        payload,
    )?;
    let mut payload_bytes = payload.len() as u64;

    // 3. Aggregate.
    let own_needed = world > 1 && param.residual_source == ResidualSource::OwnPayload;
    average.fill(0.0);
    match param.aggregation {
        Aggregation::Sum(element) => {
            let mut payload: &mut Vec<u8> = payload;
            let mut next: &mut Vec<u8> = buffers.next_payload;
            let mut rounds = 1;
            loop {
                if own_needed {
                    buffers.own_payload.clear();
                    buffers.own_payload.extend_from_slice(payload);
                }
                let offset = data_offset(payload)?;
                comm.allreduce_wire(element, &mut payload[offset..])?;
                next.clear();
                match param.compressor.next_round(payload, ctx, next)? {
                    Round::Done => break,
                    Round::More => {
                        rounds += 1;
                        if rounds > MAX_ROUNDS {
                            return Err(Failure::Compress(CompressError::Failed(format!(
                                "`{}` asked for more than {MAX_ROUNDS} exchange rounds",
                                param.method
                            ))));
                        }
                        payload_bytes += next.len() as u64;
                        std::mem::swap(&mut payload, &mut next);
                    }
                }
            }
            param.compressor.decompress_add(payload, scale, average)?;
            if own_needed {
                let own = &mut buffers.reconstruction[..numel];
                own.fill(0.0);
                param
                    .compressor
                    .decompress_add(buffers.own_payload, 1.0, own)?;
            }
        }
        Aggregation::Gather => {
            comm.allgather(payload, buffers.gathered)?;
            if buffers.gathered.len() != world {
                return Err(Failure::Comm(CommError::Mismatch {
                    rank: ctx.rank,
                    message: format!(
                        "allgather returned {} payloads in a world of {world}",
                        buffers.gathered.len()
                    ),
                }));
            }
            for received in buffers.gathered.iter() {
                param.compressor.decompress_add(received, scale, average)?;
            }
            if own_needed {
                let own = &mut buffers.reconstruction[..numel];
                own.fill(0.0);
                param.compressor.decompress_add(payload, 1.0, own)?;
            }
        }
    }

    // 4. Error and residual.
    let reconstruction: &[f32] = if own_needed {
        &buffers.reconstruction[..numel]
    } else {
        average
    };
    let mut input_sum_squares = 0.0f64;
    let mut error_sum_squares = 0.0f64;
    if param.feedback == ErrorFeedback::On {
        for ((pending, &x), &r) in param.pending.iter_mut().zip(&*input).zip(reconstruction) {
            let e = x - r;
            *pending = e;
            input_sum_squares += f64::from(x) * f64::from(x);
            error_sum_squares += f64::from(e) * f64::from(e);
        }
    } else {
        for (&x, &r) in input.iter().zip(reconstruction) {
            let e = x - r;
            input_sum_squares += f64::from(x) * f64::from(x);
            error_sum_squares += f64::from(e) * f64::from(e);
        }
    }

    // 5. The average is the gradient.
    backend.upload(HostTensor::F32(average), grad)?;
    Ok(BinTally {
        payload_bytes,
        wire_bytes_sent: 0,
        input_sum_squares,
        error_sum_squares,
    })
}

/// Where a payload's data section starts (after a valid header).
fn data_offset(payload: &[u8]) -> Result<usize, CompressError> {
    let mut reader = WireReader::new(payload);
    PayloadHeader::read(&mut reader)?;
    Ok(reader.offset())
}

/// `sqrt(error / input)`; 0 when nothing was lost (in particular when the input is 0).
fn relative_error(error_sum_squares: f64, input_sum_squares: f64) -> f64 {
    if error_sum_squares == 0.0 {
        0.0
    } else {
        (error_sum_squares / input_sum_squares).sqrt()
    }
}

fn on_off(on: bool) -> ErrorFeedback {
    if on {
        ErrorFeedback::On
    } else {
        ErrorFeedback::Off
    }
}

/// The script's choice of error feedback: the spec's flag, else an `error_feedback`
/// boolean among the arguments, else `None` (the method's default).
fn requested_feedback(spec: &crate::strategy::CompressSpec) -> Result<Option<bool>, ArgError> {
    if let Some(on) = spec.error_feedback {
        return Ok(Some(on));
    }
    match spec.args.get(ERROR_FEEDBACK_ARG) {
        None => Ok(None),
        Some(ArgValue::Bool(on)) => Ok(Some(*on)),
        Some(other) => Err(ArgError {
            argument: Some(ERROR_FEEDBACK_ARG.to_owned()),
            message: format!("expected `true` or `false`, found {other}"),
        }),
    }
}

/// Bytes packed three per f32 element as exact integers (module documentation).
pub(crate) fn pack_state(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks(3)
        .map(|chunk| {
            let mut value = 0u32;
            for (shift, &byte) in chunk.iter().enumerate() {
                value |= u32::from(byte) << (8 * shift);
            }
            value as f32
        })
        .collect()
}

/// The inverse of [`pack_state`]: `len` bytes from `values`; anything that
/// [`pack_state`] cannot have written is an error.
pub(crate) fn unpack_state(values: &[f32], len: u64) -> Result<Vec<u8>, String> {
    let expected = len.div_ceil(3);
    if values.len() as u64 != expected {
        return Err(format!(
            "{} elements hold {len} bytes of state, expected {expected} elements",
            values.len()
        ));
    }
    let len = usize::try_from(len).map_err(|_| format!("{len} bytes of state do not fit"))?;
    let mut bytes = Vec::with_capacity(values.len() * 3);
    for &value in values {
        if !(0.0..16_777_216.0).contains(&value) || value.fract() != 0.0 {
            return Err(format!("{value} is not a packed group of three bytes"));
        }
        let word = value as u32;
        bytes.extend_from_slice(&word.to_le_bytes()[..3]);
    }
    if bytes[len..].iter().any(|&b| b != 0) {
        return Err("the padding after the state bytes is not zero".to_owned());
    }
    bytes.truncate(len);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn state_bytes_pack_three_per_element_and_round_trip() {
        for len in 0..10usize {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 97 + 255) as u8).collect();
            let packed = pack_state(&bytes);
            assert_eq!(packed.len(), len.div_ceil(3));
            assert_eq!(unpack_state(&packed, len as u64).unwrap(), bytes);
        }
        // [1, 2, 3] → 1 + 256·2 + 65536·3 = 197121.
        assert_eq!(pack_state(&[1, 2, 3]), vec![197_121.0]);
        assert_eq!(pack_state(&[255, 255, 255]), vec![16_777_215.0]);
    }

    #[test]
    fn impossible_packed_state_is_refused() {
        assert!(unpack_state(&[1.5], 3).is_err());
        assert!(unpack_state(&[-1.0], 3).is_err());
        assert!(unpack_state(&[16_777_216.0], 3).is_err());
        assert!(unpack_state(&[f32::NAN], 3).is_err());
        assert!(unpack_state(&[1.0, 2.0], 3).is_err());
        // One byte of state, but the padding bytes are not zero.
        assert!(unpack_state(&[65_536.0], 1).is_err());
        assert_eq!(unpack_state(&[7.0], 1).unwrap(), vec![7]);
    }

    #[test]
    fn relative_error_of_nothing_is_zero() {
        assert_eq!(relative_error(0.0, 0.0), 0.0);
        assert_eq!(relative_error(1.0, 4.0), 0.5);
        assert!(relative_error(1.0, 0.0).is_infinite());
    }
}
