//! The stepper's gradient exchange: W simulated workers (a [`ThreadCluster`]) each with
//! their own gradients and error-feedback memory.
//!
//! - `none` over W workers gives the single-process average of their gradients;
//! - every worker holds bit-identical parameters after every step, whatever the methods;
//! - the error-feedback residual is exactly `x − decode(encode(x))`, checked against a
//!   compressor built on the side and fed the same inputs;
//! - a non-finite gradient on one worker skips the step on all of them and leaves the
//!   residuals alone;
//! - checkpoint and resume with error feedback and stateful compressors continue bit
//!   for bit;
//! - bytes on the wire are what the communicator's formulas say (0 with one worker);
//! - scheduled arguments reach the compressor each step;
//! - failing compressors and communicators give typed errors and change nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod stepper_support;

use std::path::Path;

use regimen_core::comm::{CommError, Communicator, SingleProcess, ThreadCluster, Traffic};
use regimen_core::compress::{
    self, Aggregation, CompressError, Compressor, FeedbackPolicy, MethodId, PayloadHeader,
    StepContext, TensorView, WireElement,
};
use regimen_core::plugin::{ArgValue, Args};
use regimen_core::problem::SplitMix64;
use regimen_core::runtime::{
    CompressionReport, CompressorRegistry, ErrorFeedback, RuntimeError, StepperOptions,
};
use regimen_core::strategy::ScheduledArg;
use regimen_core::{
    CompressSpec, HostTensor, HostTensorMut, Metrics, NdArrayBackend, Node, OptimizerKind,
    ParamSpec, ScalarGraph, Schedule, StepReport, Stepper, Strategy,
};
use stepper_support::{constants, group, report_bits, strategy};

// ------------------------------------------------------------------ helpers

/// `compress METHOD(args)` with error feedback `ef` (`None`: the method's default).
fn spec(method: &str, args: &[(&str, f64)], ef: Option<bool>) -> CompressSpec {
    let mut bag = Args::new();
    for &(name, value) in args {
        bag = bag.with(name, ArgValue::Number(value));
    }
    CompressSpec {
        method: method.to_owned(),
        args: bag,
        scheduled: Vec::new(),
        error_feedback: ef,
    }
}

/// The test model: three parameters of different shapes.
fn specs() -> Vec<ParamSpec> {
    vec![
        ParamSpec::new("layer.weight", &[4, 10]),
        ParamSpec::new("layer.bias", &[6]),
        ParamSpec::new("head.weight", &[3, 4]),
    ]
}

fn initial(specs: &[ParamSpec]) -> Vec<Vec<f32>> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut rng = SplitMix64::keyed(99, 1, i as u64);
            (0..s.numel()).map(|_| rng.symmetric() as f32).collect()
        })
        .collect()
}

/// Worker `rank`'s gradient of parameter `param` at `step`: uniform in [−1, 1), a pure
/// function of its key, plus a rank-independent part so the workers roughly agree.
fn gradient(rank: usize, step: u64, param: usize, len: usize) -> Vec<f32> {
    let mut shared = SplitMix64::keyed(7, 100 + param as u64, step);
    let mut own = SplitMix64::keyed(7, 1000 * (rank as u64 + 1) + param as u64, step);
    (0..len)
        .map(|_| (shared.symmetric() + 0.5 * own.symmetric()) as f32)
        .collect()
}

/// One worker: a stepper and the model's f32 copy of the parameters.
struct Worker {
    stepper: Stepper<NdArrayBackend>,
    params: Vec<Vec<f32>>,
}

impl Worker {
    fn new(graph: &ScalarGraph, strategy: &Strategy, options: StepperOptions) -> Self {
        let specs = specs();
        let params = initial(&specs);
        let views: Vec<HostTensor<'_>> = params.iter().map(|p| HostTensor::F32(p)).collect();
        let stepper = Stepper::new_with(
            NdArrayBackend::new(),
            graph.clone(),
            strategy.clone(),
            &specs,
            &views,
            options,
        )
        .expect("binding succeeds");
        Self { stepper, params }
    }

    fn try_step(&mut self, grads: &[Vec<f32>]) -> Result<StepReport, RuntimeError> {
        let mut params: Vec<HostTensorMut<'_>> = self
            .params
            .iter_mut()
            .map(|p| HostTensorMut::F32(p))
            .collect();
        let grads: Vec<HostTensor<'_>> = grads.iter().map(|g| HostTensor::F32(g)).collect();
        self.stepper.step(&mut params, &grads, &Metrics::default())
    }

    /// A step with this worker's own gradients.
    fn step(&mut self) -> StepReport {
        let grads = self.own_gradients();
        self.try_step(&grads).expect("step succeeds")
    }

    fn own_gradients(&self) -> Vec<Vec<f32>> {
        let step = self.stepper.step_index();
        let rank = self.stepper.rank();
        self.params
            .iter()
            .enumerate()
            .map(|(i, p)| gradient(rank, step, i, p.len()))
            .collect()
    }

    fn masters(&self) -> Vec<Vec<f32>> {
        (0..self.params.len())
            .map(|i| {
                let mut out = vec![0.0; self.params[i].len()];
                self.stepper.read_master(i, &mut out).unwrap();
                out
            })
            .collect()
    }

    fn residuals(&self) -> Vec<Option<Vec<f32>>> {
        (0..self.params.len())
            .map(|i| self.stepper.residual(i).map(<[f32]>::to_vec))
            .collect()
    }
}

/// Run `work` on each of `world` workers of a fresh [`ThreadCluster`], one thread each;
/// results in rank order.
fn on_workers<T: Send>(world: usize, work: impl Fn(Box<dyn Communicator>) -> T + Sync) -> Vec<T> {
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = ThreadCluster::new(world)
            .into_iter()
            .map(|comm| scope.spawn(move || work(Box::new(comm))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn options(comm: Box<dyn Communicator>) -> StepperOptions {
    StepperOptions::new().with_communicator(comm).with_seed(42)
}

fn sgd_graph() -> ScalarGraph {
    constants(&[("lr", 0.1), ("momentum", 0.9)])
}

fn bits(values: &[Vec<f32>]) -> Vec<Vec<u32>> {
    values
        .iter()
        .map(|v| v.iter().map(|x| x.to_bits()).collect())
        .collect()
}

// ------------------------------------------------------------------ averaging

/// W workers exchanging with `none` (explicitly, or implicitly because there is more
/// than one worker) end each step where a single process fed the mean of their
/// gradients ends. The ring allreduce sums in another order and scales the sum by
/// 1/W in f32, the reference takes the mean in f64: the difference is a few f32
/// roundings per step, so 10 SGD-momentum steps agree to 1e-5.
#[test]
fn none_over_workers_equals_the_single_process_average() {
    const WORLD: usize = 3;
    const STEPS: u64 = 10;
    for explicit in [false, true] {
        let mut sgd = strategy(OptimizerKind::Sgd);
        if explicit {
            sgd.compress = Some(spec("none", &[], None));
        }
        let graph = sgd_graph();
        let runs = on_workers(WORLD, |comm| {
            let mut worker = Worker::new(&graph, &sgd, options(comm));
            let mut trajectory = Vec::new();
            for _ in 0..STEPS {
                let report = worker.step();
                assert!(!report.skipped);
                assert_eq!(report.compression.len(), 1);
                assert_eq!(report.compression[0].method, "none");
                assert_eq!(report.compression[0].label, "compress");
                trajectory.push(worker.masters());
            }
            trajectory
        });

        let mut reference = Worker::new(&graph, &sgd, StepperOptions::new());
        for step in 0..STEPS {
            let mean: Vec<Vec<f32>> = reference
                .params
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let mut sum = vec![0.0f64; p.len()];
                    for rank in 0..WORLD {
                        for (s, g) in sum.iter_mut().zip(gradient(rank, step, i, p.len())) {
                            *s += f64::from(g);
                        }
                    }
                    sum.iter().map(|s| (s / WORLD as f64) as f32).collect()
                })
                .collect();
            reference.try_step(&mean).unwrap();
            let expected = reference.masters();
            for run in &runs {
                for (actual, expected) in run[step as usize].iter().zip(&expected) {
                    for (a, e) in actual.iter().zip(expected) {
                        assert!(
                            (a - e).abs() <= 1e-5,
                            "explicit {explicit}, step {step}: {a} vs {e}"
                        );
                    }
                }
            }
        }
    }
}

/// Top-k with error feedback, sign (gathered) and fp16 (summed) on different groups,
/// Adam on top: the workers' gradients and compression errors differ, the averaged
/// gradient — and so the weights and the gradient norm — do not, bit for bit.
#[test]
fn every_worker_holds_bit_identical_parameters_after_every_step() {
    let mut adam = strategy(OptimizerKind::Adam);
    adam.compress = Some(spec("topk", &[("ratio", 0.2)], Some(true)));
    let mut bias = group(&["*.bias"], &[]);
    bias.compress = Some(spec("sign", &[], None));
    let mut head = group(&["head.*"], &[]);
    head.compress = Some(spec("fp16", &[], None));
    adam.groups = vec![bias, head];
    let graph = constants(&[("lr", 0.01)]);
    let runs = on_workers(3, |comm| {
        let mut worker = Worker::new(&graph, &adam, options(comm));
        let binding = worker.stepper.binding().clone();
        let methods: Vec<(String, ErrorFeedback)> = binding
            .params
            .iter()
            .map(|p| {
                let c = p.compression.as_ref().unwrap();
                (c.method.clone(), c.error_feedback)
            })
            .collect();
        assert_eq!(
            methods,
            [
                ("topk".to_owned(), ErrorFeedback::On),
                ("sign".to_owned(), ErrorFeedback::On),
                ("fp16".to_owned(), ErrorFeedback::Off)
            ]
        );
        let mut states = Vec::new();
        for _ in 0..8 {
            let report = worker.step();
            states.push((bits(&worker.masters()), report.grad_norm.to_bits(), report));
        }
        states
    });
    for step in 0..8 {
        let (masters, norm, report) = &runs[0][step];
        let labels: Vec<&str> = report
            .compression
            .iter()
            .map(|c| c.label.as_str())
            .collect();
        assert_eq!(labels, ["compress", "group1.compress", "group2.compress"]);
        for other in &runs[1..] {
            assert_eq!(&other[step].0, masters, "step {step}");
            assert_eq!(other[step].1, *norm, "step {step}");
        }
        // The workers compressed different gradients.
        assert_ne!(
            runs[0][step].2.compression[0].relative_error,
            runs[1][step].2.compression[0].relative_error
        );
    }
}

// ------------------------------------------------------------------ error feedback

/// With one worker the average is the decoding of the worker's own payload, so after
/// each step the residual must be `x − decode(encode(x))` with `x = g + e`, and with
/// SGD at lr 1 the weights move by exactly `−decode(encode(x))`. A compressor built on
/// the side with the same arguments, fed the same `x` and context, gives the
/// reference bits.
#[test]
fn error_feedback_residual_is_input_minus_its_decoded_payload() {
    let mut sgd = strategy(OptimizerKind::Sgd);
    sgd.compress = Some(spec("topk", &[("ratio", 0.25)], Some(true)));
    let mut bias = group(&["*.bias"], &[]);
    bias.compress = Some(spec("sign", &[], None));
    sgd.groups = vec![bias];
    let graph = constants(&[("lr", 1.0)]);
    let mut worker = Worker::new(&graph, &sgd, StepperOptions::new().with_seed(5));
    let specs = specs();
    let mut side: Vec<Box<dyn Compressor>> = vec![
        compress::build("topk", &Args::new().with("ratio", ArgValue::Number(0.25))).unwrap(),
        compress::build("sign", &Args::new()).unwrap(),
        compress::build("topk", &Args::new().with("ratio", ArgValue::Number(0.25))).unwrap(),
    ];
    let mut residuals: Vec<Vec<f32>> = specs.iter().map(|s| vec![0.0; s.numel()]).collect();
    for step in 0..6u64 {
        let grads = worker.own_gradients();
        let before = worker.masters();
        let report = worker.try_step(&grads).unwrap();
        assert!(!report.skipped);
        let after = worker.masters();
        for (i, spec) in specs.iter().enumerate() {
            let x: Vec<f32> = grads[i]
                .iter()
                .zip(&residuals[i])
                .map(|(g, e)| g + e)
                .collect();
            let ctx = StepContext {
                step,
                rank: 0,
                world: 1,
                seed: 5,
                tensor: i,
                scheduled: &[],
            };
            let mut payload = Vec::new();
            side[i]
                .compress(
                    TensorView {
                        name: &spec.name,
                        shape: &spec.shape,
                        data: &x,
                    },
                    &ctx,
                    &mut payload,
                )
                .unwrap();
            let mut decoded = vec![0.0f32; x.len()];
            side[i].decompress_add(&payload, 1.0, &mut decoded).unwrap();
            residuals[i] = x.iter().zip(&decoded).map(|(x, r)| x - r).collect();
            let actual = worker.stepper.residual(i).expect("error feedback is on");
            assert_eq!(bits(&[actual.to_vec()]), bits(&[residuals[i].clone()]));
            let moved: Vec<f32> = before[i].iter().zip(&decoded).map(|(w, r)| w - r).collect();
            assert_eq!(bits(&[after[i].clone()]), bits(&[moved]), "step {step} {i}");
        }
    }
}

/// Worker 1's gradient overflows at step 2: both workers skip it (one flag allreduce
/// decides), their weights and residuals stay as they were, and they go on in step.
#[test]
fn a_non_finite_gradient_on_one_worker_skips_the_step_on_all() {
    let mut sgd = strategy(OptimizerKind::Sgd);
    sgd.compress = Some(spec("topk", &[("ratio", 0.3)], Some(true)));
    let graph = sgd_graph();
    let runs = on_workers(2, |comm| {
        let mut worker = Worker::new(&graph, &sgd, options(comm));
        let mut seen = Vec::new();
        for step in 0..5u64 {
            let mut grads = worker.own_gradients();
            if step == 2 && worker.stepper.rank() == 1 {
                grads[1][3] = f32::INFINITY;
            }
            let masters = bits(&worker.masters());
            let residuals = worker.residuals();
            let report = worker.try_step(&grads).unwrap();
            if report.skipped {
                assert_eq!(bits(&worker.masters()), masters);
                assert_eq!(worker.residuals(), residuals);
                assert!(report.compression.iter().all(|c| c.payload_bytes == 0
                    && c.wire_bytes_sent == 0
                    && c.relative_error.is_nan()));
            }
            seen.push((report, bits(&worker.masters())));
        }
        seen
    });
    for step in 0..5 {
        let skipped: Vec<bool> = runs.iter().map(|r| r[step].0.skipped).collect();
        assert_eq!(skipped, [step == 2, step == 2], "step {step}");
        assert_eq!(runs[0][step].1, runs[1][step].1, "step {step}");
    }
    // The skipped step moved only the flag: one f32 in a ring of 2, whose one
    // non-empty block (block 1) each rank sends once: 4 bytes each way.
    for run in &runs {
        assert_eq!(run[2].0.wire_bytes_sent, 4);
        assert_eq!(run[2].0.wire_bytes_received, 4);
    }
}

// ------------------------------------------------------------------ checkpoints

/// A stateful test method: sends `x + s` densely and keeps `s ← 0.5·s + 0.25·x`, so
/// every payload depends on the whole history — a resume that lost the state could
/// not continue bit for bit.
struct Drifting {
    drift: Vec<f32>,
}

const DRIFTING: MethodId = MethodId(0x8001);

impl Compressor for Drifting {
    fn name(&self) -> &str {
        "drifting"
    }
    fn method_id(&self) -> MethodId {
        DRIFTING
    }
    fn aggregation(&self) -> Aggregation {
        Aggregation::Gather
    }
    fn compress(
        &mut self,
        input: TensorView<'_>,
        _ctx: &StepContext<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), CompressError> {
        if self.drift.is_empty() {
            self.drift = vec![0.0; input.data.len()];
        }
        PayloadHeader::new(DRIFTING, input.shape)?.write(out);
        for (x, s) in input.data.iter().zip(self.drift.iter_mut()) {
            out.extend_from_slice(&(x + *s).to_le_bytes());
            *s = 0.5 * *s + 0.25 * x;
        }
        Ok(())
    }
    fn decompress_add(
        &mut self,
        payload: &[u8],
        scale: f32,
        out: &mut [f32],
    ) -> Result<(), CompressError> {
        let (_, mut reader) = PayloadHeader::parse(payload, DRIFTING, out.len())?;
        for o in out.iter_mut() {
            *o += scale * reader.f32()?;
        }
        reader.finish()?;
        Ok(())
    }
    fn save_state(&self, out: &mut Vec<u8>) -> Result<(), CompressError> {
        for s in &self.drift {
            out.extend_from_slice(&s.to_le_bytes());
        }
        Ok(())
    }
    fn load_state(&mut self, state: &[u8]) -> Result<(), CompressError> {
        if state.len() % 4 != 0 {
            return Err(CompressError::State("not whole f32s".into()));
        }
        self.drift = state
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(())
    }
}

fn registry() -> CompressorRegistry {
    CompressorRegistry::new().with_method("drifting", |args: &Args| {
        args.only(&["error_feedback"])?;
        Ok(Box::new(Drifting { drift: Vec::new() }) as Box<dyn Compressor>)
    })
}

/// N steps straight against k steps, save on every worker, load into new workers on
/// a new cluster, N − k steps: the same reports and weights, bit for bit. Step 3 is
/// skipped on both sides of the save (worker 1 overflows). The checkpoints must hold
/// compressor state for the parameters named in `stateful` and residuals for those in
/// `with_residual`.
fn resume_is_bit_identical(
    strategy: &Strategy,
    graph: &ScalarGraph,
    registry: &CompressorRegistry,
    stateful: &[&str],
    with_residual: &[&str],
) {
    const WORLD: usize = 2;
    const STEPS: u64 = 9;
    const SAVE_AT: u64 = 5;
    let dir = tempfile::tempdir().unwrap();
    let options = |comm: Box<dyn Communicator>| {
        StepperOptions::new()
            .with_communicator(comm)
            .with_seed(11)
            .with_compressors(registry.clone())
    };
    let grads_for = |worker: &Worker| {
        let mut grads = worker.own_gradients();
        if worker.stepper.step_index() == 3 && worker.stepper.rank() == 1 {
            grads[0][0] = f32::NAN;
        }
        grads
    };
    let straight = on_workers(WORLD, |comm| {
        let mut worker = Worker::new(graph, strategy, options(comm));
        let mut out = Vec::new();
        for _ in 0..STEPS {
            let grads = grads_for(&worker);
            let report = worker.try_step(&grads).unwrap();
            out.push((report_bits(&report), bits(&worker.masters())));
        }
        out
    });
    assert!(straight[0][3].0.contains("skipped: true"));
    let path = |rank: usize| dir.path().join(format!("rank{rank}.ckpt"));
    on_workers(WORLD, |comm| {
        let mut worker = Worker::new(graph, strategy, options(comm));
        for _ in 0..SAVE_AT {
            let grads = grads_for(&worker);
            worker.try_step(&grads).unwrap();
        }
        worker.stepper.save(&path(worker.stepper.rank())).unwrap();
    });
    for rank in 0..WORLD {
        let data = regimen_core::runtime::read_checkpoint(&path(rank)).unwrap();
        let has = |name: &str| {
            data.tensors
                .iter()
                .any(|(n, values)| n == name && !values.is_empty())
        };
        for param in stateful {
            assert!(
                has(&format!("compressor_state/{param}")),
                "rank {rank}: {param}"
            );
        }
        for param in with_residual {
            assert!(has(&format!("residual/{param}")), "rank {rank}: {param}");
        }
    }
    let resumed = on_workers(WORLD, |comm| {
        let rank = comm.rank();
        let stepper = Stepper::load_with(
            &path(rank),
            NdArrayBackend::new(),
            graph.clone(),
            strategy.clone(),
            &specs(),
            options(comm),
        )
        .unwrap();
        let mut worker = Worker {
            params: (0..3)
                .map(|i| {
                    let mut out = vec![0.0; specs()[i].numel()];
                    stepper.read_master(i, &mut out).unwrap();
                    out
                })
                .collect(),
            stepper,
        };
        let mut out = Vec::new();
        for _ in SAVE_AT..STEPS {
            let grads = grads_for(&worker);
            let report = worker.try_step(&grads).unwrap();
            out.push((report_bits(&report), bits(&worker.masters())));
        }
        out
    });
    for rank in 0..WORLD {
        for (offset, step) in (SAVE_AT..STEPS).enumerate() {
            assert_eq!(
                resumed[rank][offset], straight[rank][step as usize],
                "rank {rank}, step {step}"
            );
        }
    }
}

#[test]
fn resume_is_bit_identical_with_error_feedback_and_a_stateful_custom_method() {
    let mut adam = strategy(OptimizerKind::Adam);
    adam.compress = Some(spec("topk", &[("ratio", 0.2)], Some(true)));
    let mut bias = group(&["*.bias"], &[]);
    bias.compress = Some(spec("drifting", &[], Some(true)));
    adam.groups = vec![bias];
    resume_is_bit_identical(
        &adam,
        &constants(&[("lr", 0.01)]),
        &registry(),
        &["layer.bias"],
        &["layer.weight", "layer.bias", "head.weight"],
    );
}

/// The built-in stateful methods: PowerSGD (warm-started Q, error feedback on by
/// default) and DGC (momentum correction and accumulation inside the method). Rank 1
/// from step 0 compresses the 4×10 weight ((4 + 10)·1·2 < 40); the 3×4 head is too
/// small ((3 + 4)·2 ≥ 12) and goes dense, with its residual all the same.
#[test]
fn resume_is_bit_identical_with_powersgd_and_dgc() {
    let mut sgd = strategy(OptimizerKind::Sgd);
    sgd.compress = Some(spec("powersgd", &[("rank", 1.0), ("start", 0.0)], None));
    let mut bias = group(&["*.bias"], &[]);
    bias.compress = Some(spec("dgc", &[("ratio", 0.3)], None));
    sgd.groups = vec![bias];
    resume_is_bit_identical(
        &sgd,
        &sgd_graph(),
        &CompressorRegistry::new(),
        &["layer.weight", "layer.bias"],
        &["layer.weight", "head.weight"],
    );
}

/// Compressor state of one worker is refused by another, and by another seed.
#[test]
fn compressor_state_belongs_to_its_worker_and_seed() {
    let mut sgd = strategy(OptimizerKind::Sgd);
    sgd.compress = Some(spec("topk", &[("ratio", 0.2)], Some(true)));
    let graph = sgd_graph();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.ckpt");
    let mut worker = Worker::new(&graph, &sgd, StepperOptions::new().with_seed(3));
    worker.step();
    worker.stepper.save(&path).unwrap();
    let load = |options: StepperOptions| {
        Stepper::load_with(
            &path,
            NdArrayBackend::new(),
            graph.clone(),
            sgd.clone(),
            &specs(),
            options,
        )
    };
    let error = load(StepperOptions::new().with_seed(4)).err().unwrap();
    assert!(error.to_string().contains("seed 3"), "{error}");
    let errors = on_workers(2, |comm| {
        load(StepperOptions::new().with_seed(3).with_communicator(comm))
            .err()
            .map(|e| e.to_string())
    });
    assert!(
        errors[0]
            .as_deref()
            .unwrap()
            .contains("worker 0 of 1, but this is worker 0 of 2"),
        "{errors:?}"
    );
    let resumed = load(StepperOptions::new().with_seed(3)).unwrap();
    assert_eq!(resumed.residual(0), worker.stepper.residual(0));
}

// ------------------------------------------------------------------ bytes

/// With one worker nothing goes on the wire, but payloads are still counted: `none`
/// sends `16 + 4·d + 4·n` bytes per tensor.
#[test]
fn one_worker_puts_nothing_on_the_wire() {
    let mut sgd = strategy(OptimizerKind::Sgd);
    sgd.compress = Some(spec("none", &[], None));
    let mut worker = Worker::new(&sgd_graph(), &sgd, StepperOptions::new());
    let report = worker.step();
    assert_eq!(report.wire_bytes_sent, 0);
    assert_eq!(report.wire_bytes_received, 0);
    let entry = &report.compression[0];
    assert_eq!(entry.tensors, 3);
    // Elements 40 + 6 + 12 = 58: 232 dense bytes; headers 16 + 4·2, 16 + 4·1, 16 + 4·2.
    assert_eq!(entry.dense_bytes, 232);
    assert_eq!(entry.payload_bytes, 232 + 24 + 20 + 24);
    assert_eq!(entry.wire_bytes_sent, 0);
    assert_eq!(entry.relative_error, 0.0);
    assert_eq!(entry.ratio(), 232.0 / 300.0);
    assert_eq!(worker.stepper.traffic(), Traffic::default());
}

/// Ring allreduce of `n` elements of `size` bytes over W ranks (the comm module's
/// formula): block `c` is elements `[⌊c·n/W⌋, ⌊(c+1)·n/W⌋)`; rank `r` sends
/// `2N − |B_{r+1}| − |B_{r+2}|` and receives `2N − |B_r| − |B_{r+1}|`.
fn ring_allreduce_bytes(n: usize, size: usize, world: usize, rank: usize) -> (u64, u64) {
    let block = |c: usize| ((c + 1) * n / world - c * n / world) * size;
    let total = 2 * n * size;
    (
        (total - block((rank + 1) % world) - block((rank + 2) % world)) as u64,
        (total - block(rank) - block((rank + 1) % world)) as u64,
    )
}

/// Three workers: top-k (gathered: sizes then payloads, `8(W−1) + Σ_{j≠r+1}|p_j|`
/// sent) on the weights, `none` (ring allreduce of the data section) on the biases.
/// Every count is the formula applied to the payload sizes the workers reported.
#[test]
fn bytes_on_the_wire_follow_the_communicator_formulas() {
    const WORLD: usize = 3;
    let mut sgd = strategy(OptimizerKind::Sgd);
    sgd.compress = Some(spec("topk", &[("ratio", 0.1)], Some(true)));
    let mut bias = group(&["*.bias"], &[]);
    bias.compress = Some(spec("none", &[], None));
    sgd.groups = vec![bias];
    let graph = sgd_graph();
    let runs = on_workers(WORLD, |comm| {
        let mut worker = Worker::new(&graph, &sgd, options(comm));
        (0..3).map(|_| worker.step()).collect::<Vec<_>>()
    });
    for step in 0..3 {
        let topk: Vec<&CompressionReport> = runs.iter().map(|r| &r[step].compression[0]).collect();
        let none: Vec<&CompressionReport> = runs.iter().map(|r| &r[step].compression[1]).collect();
        // Two top-k tensors (layer.weight, head.weight): their payloads are gathered
        // one after the other; per tensor the formula is linear in the sizes, so the
        // sums add up. The sizes message is 8 bytes per peer per tensor.
        let payload: Vec<u64> = topk.iter().map(|c| c.payload_bytes).collect();
        let total: u64 = payload.iter().sum();
        for rank in 0..WORLD {
            let gather_sent = 2 * 8 * (WORLD as u64 - 1) + total - payload[(rank + 1) % WORLD];
            assert_eq!(topk[rank].wire_bytes_sent, gather_sent, "rank {rank}");
            assert_eq!(topk[rank].tensors, 2);
            // `none` on layer.bias: 6 f32 after the header, in blocks of 2.
            let (sum_sent, sum_received) = ring_allreduce_bytes(6, 4, WORLD, rank);
            assert_eq!(none[rank].wire_bytes_sent, sum_sent);
            assert_eq!(none[rank].payload_bytes, 16 + 4 + 24);
            let (flag_sent, flag_received) = ring_allreduce_bytes(1, 4, WORLD, rank);
            let report = &runs[rank][step];
            assert_eq!(report.wire_bytes_sent, flag_sent + gather_sent + sum_sent);
            let gather_received = 2 * 8 * (WORLD as u64 - 1) + total - payload[rank];
            assert_eq!(
                report.wire_bytes_received,
                flag_received + gather_received + sum_received
            );
        }
    }
}

// ------------------------------------------------------------------ scheduled args

/// `topk(ratio: step(0.5, every 1 step, ×0.5))`: each step's payload is what a
/// compressor given that step's ratio in its context writes.
#[test]
fn scheduled_arguments_reach_the_compressor_every_step() {
    let mut graph = constants(&[("lr", 0.1)]);
    let ratio = graph.push(Node::Schedule(Schedule::Step {
        init: 0.5,
        every: 1.0,
        factor: 0.5,
    }));
    graph.add_output(CompressSpec::output_name(None, "ratio"), ratio);
    let mut sgd = strategy(OptimizerKind::Sgd);
    let mut topk = spec("topk", &[("ratio", 0.5)], Some(false));
    topk.scheduled = vec![ScheduledArg {
        arg: "ratio".into(),
        output: "compress.ratio".into(),
    }];
    sgd.compress = Some(topk);
    let mut worker = Worker::new(&graph, &sgd, StepperOptions::new());
    assert_eq!(
        worker.stepper.binding().params[0]
            .compression
            .as_ref()
            .unwrap()
            .scheduled,
        vec![("ratio".to_owned(), "compress.ratio".to_owned())]
    );
    let specs = specs();
    let mut side =
        compress::build("topk", &Args::new().with("ratio", ArgValue::Number(0.5))).unwrap();
    for step in 0..4u64 {
        let grads = worker.own_gradients();
        let report = worker.try_step(&grads).unwrap();
        // 0.5, 0.25, 0.125, 0.0625.
        let value = 0.5 * 0.5f64.powi(step as i32);
        let scheduled = [("ratio".to_owned(), value)];
        let mut expected = 0;
        for (i, spec) in specs.iter().enumerate() {
            let ctx = StepContext {
                step,
                rank: 0,
                world: 1,
                seed: 0,
                tensor: i,
                scheduled: &scheduled,
            };
            let mut payload = Vec::new();
            side.compress(
                TensorView {
                    name: &spec.name,
                    shape: &spec.shape,
                    data: &grads[i],
                },
                &ctx,
                &mut payload,
            )
            .unwrap();
            expected += payload.len() as u64;
        }
        assert_eq!(report.compression[0].payload_bytes, expected, "step {step}");
    }
}

// ------------------------------------------------------------------ errors

/// A method that fails on purpose: in `compress` from step `fail_at` on.
struct Broken {
    fail_at: u64,
}

impl Compressor for Broken {
    fn name(&self) -> &str {
        "broken"
    }
    fn method_id(&self) -> MethodId {
        MethodId(0x8002)
    }
    fn aggregation(&self) -> Aggregation {
        Aggregation::Sum(WireElement::F32)
    }
    fn compress(
        &mut self,
        input: TensorView<'_>,
        ctx: &StepContext<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), CompressError> {
        if ctx.step >= self.fail_at {
            return Err(CompressError::Failed("out of order (injected)".into()));
        }
        PayloadHeader::new(self.method_id(), input.shape)?.write(out);
        for x in input.data {
            out.extend_from_slice(&x.to_le_bytes());
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
        for o in out.iter_mut() {
            *o += scale * reader.f32()?;
        }
        Ok(())
    }
}

/// A single-process communicator whose allgather fails.
struct DeadPeer;

impl Communicator for DeadPeer {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn allreduce_f32(&mut self, data: &mut [f32]) -> Result<(), CommError> {
        SingleProcess.allreduce_f32(data)
    }
    fn allreduce_wire(&mut self, element: WireElement, data: &mut [u8]) -> Result<(), CommError> {
        SingleProcess.allreduce_wire(element, data)
    }
    fn allgather(&mut self, _payload: &[u8], _out: &mut Vec<Vec<u8>>) -> Result<(), CommError> {
        Err(CommError::PeerGone { rank: 0, peer: 1 })
    }
    fn broadcast(&mut self, root: usize, data: &mut Vec<u8>) -> Result<(), CommError> {
        SingleProcess.broadcast(root, data)
    }
    fn traffic(&self) -> Traffic {
        Traffic::default()
    }
}

fn bind_error(strategy: Strategy, graph: ScalarGraph, options: StepperOptions) -> RuntimeError {
    let specs = specs();
    let params = initial(&specs);
    let views: Vec<HostTensor<'_>> = params.iter().map(|p| HostTensor::F32(p)).collect();
    Stepper::new_with(
        NdArrayBackend::new(),
        graph,
        strategy,
        &specs,
        &views,
        options,
    )
    .err()
    .expect("binding fails")
}

#[test]
fn binding_errors_name_the_parameter_and_the_method() {
    let mut unknown = strategy(OptimizerKind::Sgd);
    unknown.compress = Some(spec("topq", &[], None));
    let error = bind_error(unknown, sgd_graph(), StepperOptions::new());
    assert!(
        matches!(&error, RuntimeError::CompressorBuild { param, method, .. }
            if param == "layer.weight" && method == "topq"),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "parameter `layer.weight`: cannot build the `topq` compressor: unknown compression \
         method `topq`"
    );

    let mut bad_ratio = strategy(OptimizerKind::Sgd);
    bad_ratio.compress = Some(spec("topk", &[("ratio", 2.0)], None));
    let error = bind_error(bad_ratio, sgd_graph(), StepperOptions::new());
    assert!(
        matches!(&error, RuntimeError::CompressorBuild { method, error: compress::BuildError::Args { .. }, .. } if method == "topk"),
        "{error:?}"
    );

    let mut missing_output = strategy(OptimizerKind::Sgd);
    let mut scheduled = spec("topk", &[("ratio", 0.5)], None);
    scheduled.scheduled = vec![ScheduledArg {
        arg: "ratio".into(),
        output: "compress.ratio".into(),
    }];
    missing_output.compress = Some(scheduled);
    let error = bind_error(missing_output, sgd_graph(), StepperOptions::new());
    assert!(matches!(error, RuntimeError::Strategy(_)), "{error:?}");
    assert!(error.to_string().contains("`compress.ratio`"), "{error}");

    let mut bad_flag = strategy(OptimizerKind::Sgd);
    let mut flagged = spec("topk", &[("ratio", 0.5)], None);
    flagged.args = flagged
        .args
        .with("error_feedback", ArgValue::Text("yes".into()));
    bad_flag.compress = Some(flagged);
    let error = bind_error(bad_flag, sgd_graph(), StepperOptions::new());
    assert!(
        matches!(error, RuntimeError::CompressorBuild { .. }),
        "{error:?}"
    );
}

/// A compressor failing at step 2 on the second parameter: a typed error naming both,
/// and nothing of the run moved — weights, residuals, step index.
#[test]
fn a_failing_compressor_is_a_typed_error_and_changes_nothing() {
    let registry = CompressorRegistry::new().with_method("broken", |_: &Args| {
        Ok(Box::new(Broken { fail_at: 2 }) as Box<dyn Compressor>)
    });
    let mut sgd = strategy(OptimizerKind::Sgd);
    sgd.compress = Some(spec("topk", &[("ratio", 0.2)], Some(true)));
    let mut bias = group(&["*.bias"], &[]);
    bias.compress = Some(spec("broken", &[], None));
    sgd.groups = vec![bias];
    let mut worker = Worker::new(
        &sgd_graph(),
        &sgd,
        StepperOptions::new().with_compressors(registry),
    );
    worker.step();
    worker.step();
    let masters = bits(&worker.masters());
    let residuals = worker.residuals();
    let grads = worker.own_gradients();
    let error = worker.try_step(&grads).unwrap_err();
    assert!(
        matches!(&error, RuntimeError::Compress { step: 2, param, method, error: CompressError::Failed(_) }
            if param == "layer.bias" && method == "broken"),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "at step 2, the `broken` compressor of `layer.bias` failed: out of order (injected)"
    );
    assert_eq!(bits(&worker.masters()), masters);
    assert_eq!(worker.residuals(), residuals);
    assert_eq!(worker.stepper.step_index(), 2);
}

#[test]
fn a_failing_communicator_is_a_typed_error() {
    let mut sgd = strategy(OptimizerKind::Sgd);
    sgd.compress = Some(spec("topk", &[("ratio", 0.2)], Some(true)));
    let mut worker = Worker::new(
        &sgd_graph(),
        &sgd,
        StepperOptions::new().with_communicator(Box::new(DeadPeer)),
    );
    let masters = bits(&worker.masters());
    let grads = worker.own_gradients();
    let error = worker.try_step(&grads).unwrap_err();
    assert!(
        matches!(
            &error,
            RuntimeError::Communication {
                step: 0,
                error: CommError::PeerGone { .. },
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("the gradient of `layer.weight` (`topk`)"),
        "{error}"
    );
    assert_eq!(bits(&worker.masters()), masters);
}

/// A method that accumulates what it does not send itself gets no host residual,
/// whatever the script says, and the binding says so.
#[test]
fn internal_error_feedback_keeps_no_host_residual() {
    struct Accumulating(Drifting);
    impl Compressor for Accumulating {
        fn name(&self) -> &str {
            "accumulating"
        }
        fn method_id(&self) -> MethodId {
            DRIFTING
        }
        fn aggregation(&self) -> Aggregation {
            Aggregation::Gather
        }
        fn feedback(&self) -> FeedbackPolicy {
            FeedbackPolicy::Internal
        }
        fn compress(
            &mut self,
            input: TensorView<'_>,
            ctx: &StepContext<'_>,
            out: &mut Vec<u8>,
        ) -> Result<(), CompressError> {
            self.0.compress(input, ctx, out)
        }
        fn decompress_add(
            &mut self,
            payload: &[u8],
            scale: f32,
            out: &mut [f32],
        ) -> Result<(), CompressError> {
            self.0.decompress_add(payload, scale, out)
        }
    }
    let registry = CompressorRegistry::new().with_method("accumulating", |_: &Args| {
        Ok(Box::new(Accumulating(Drifting { drift: Vec::new() })) as Box<dyn Compressor>)
    });
    let mut sgd = strategy(OptimizerKind::Sgd);
    sgd.compress = Some(spec("accumulating", &[], Some(true)));
    let mut worker = Worker::new(
        &sgd_graph(),
        &sgd,
        StepperOptions::new().with_compressors(registry),
    );
    let binding = worker.stepper.binding().clone();
    assert!(binding
        .params
        .iter()
        .all(|p| p.compression.as_ref().unwrap().error_feedback == ErrorFeedback::Internal));
    assert_eq!(
        binding.warnings,
        [
            "`compress accumulating`: accumulating accumulates what it does not send itself, \
          so `with error_feedback` changes nothing"
        ]
    );
    assert!(binding.describe().contains("accumulating, ef internal"));
    worker.step();
    assert!(worker.residuals().iter().all(Option::is_none));
}

#[test]
fn describe_shows_each_compressor() {
    let mut sgd = strategy(OptimizerKind::Sgd);
    sgd.compress = Some(spec("topk", &[("ratio", 0.2)], Some(true)));
    let mut bias = group(&["*.bias"], &[]);
    bias.compress = Some(spec("none", &[], None));
    sgd.groups = vec![bias];
    let worker = Worker::new(&sgd_graph(), &sgd, StepperOptions::new());
    assert_eq!(
        worker.stepper.binding().describe(),
        "\
param         groups  lr  lr scale  depth  trust  compress
layer.weight  -       lr  1         -      on     topk, ef on
layer.bias    1       lr  1         -      on     none, ef off
head.weight   -       lr  1         -      on     topk, ef on
"
    );
}

/// The checkpoint of a run with a stateful custom method records its state, which a
/// checkpoint reader can see under `compressor_state/NAME` (three bytes per element).
#[test]
fn compressor_state_is_saved_as_packed_bytes() {
    let mut sgd = strategy(OptimizerKind::Sgd);
    sgd.compress = Some(spec("drifting", &[], None));
    let mut worker = Worker::new(
        &sgd_graph(),
        &sgd,
        StepperOptions::new().with_compressors(registry()),
    );
    worker.step();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.ckpt");
    worker.stepper.save(&path).unwrap();
    let data = regimen_core::runtime::read_checkpoint(Path::new(&path)).unwrap();
    let state = data
        .tensors
        .iter()
        .find(|(name, _)| name == "compressor_state/layer.bias")
        .expect("state saved");
    // 6 f32 of drift: 24 bytes, 8 elements.
    assert_eq!(state.1.len(), 8);
    let record = &data.header["compression"]["params"][1];
    assert_eq!(record["name"], "layer.bias");
    assert_eq!(record["state_bytes"], 24);
    assert_eq!(record["error_feedback"], false);
    assert!(data
        .tensors
        .iter()
        .all(|(name, _)| !name.starts_with("residual/")));
}
