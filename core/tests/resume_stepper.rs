//! Checkpoint and resume of a whole [`Stepper`]: N steps straight must equal k steps,
//! `save`, `load` into a new stepper on a new backend, and N − k steps — bit for bit,
//! parameters and reports alike — for SGD with momentum, Adam with AMSGrad, LAMB and
//! half precision with dynamic loss scaling (with skipped steps on both sides of the
//! save). A checkpoint of another script or another parameter list, and a damaged
//! file, are refused with a clear error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod stepper_support;

use std::path::Path;

use half::f16;
use regimen_core::runtime::{write_checkpoint, CheckpointError, RuntimeError};
use regimen_core::{
    AtMinScale, DType, DynamicLossScale, GroupRule, HostTensor, HostTensorMut, Hyper,
    LossScaleSpec, Metrics, NdArrayBackend, Node, OptimizerKind, ParamSpec, PrecisionSpec,
    ScalarGraph, Schedule, StepReport, Stepper, Strategy,
};
use stepper_support::{constants, group, report_bits, strategy};

/// One parameter list with model copies in f32 or f16.
struct Run {
    specs: Vec<ParamSpec>,
    f32_params: Vec<Vec<f32>>,
    f16_params: Vec<Vec<f16>>,
}

impl Run {
    fn new(specs: Vec<ParamSpec>, initial: &[&[f32]]) -> Self {
        Self {
            f32_params: initial.iter().map(|p| p.to_vec()).collect(),
            f16_params: initial
                .iter()
                .map(|p| p.iter().map(|&x| f16::from_f32(x)).collect())
                .collect(),
            specs,
        }
    }

    fn initial(&self) -> Vec<HostTensor<'_>> {
        self.specs
            .iter()
            .enumerate()
            .map(|(i, spec)| match spec.dtype {
                DType::F16 => HostTensor::F16(&self.f16_params[i]),
                _ => HostTensor::F32(&self.f32_params[i]),
            })
            .collect()
    }

    /// One step with `grads · loss_scale` in each parameter's dtype.
    fn step(&mut self, stepper: &mut Stepper<NdArrayBackend>, grads: &[Vec<f32>]) -> StepReport {
        let scale = stepper.loss_scale() as f32;
        let f32_grads: Vec<Vec<f32>> = grads
            .iter()
            .map(|g| g.iter().map(|&x| x * scale).collect())
            .collect();
        let f16_grads: Vec<Vec<f16>> = f32_grads
            .iter()
            .map(|g| g.iter().map(|&x| f16::from_f32(x)).collect())
            .collect();
        let dtypes: Vec<DType> = self.specs.iter().map(|s| s.dtype).collect();
        let grads: Vec<HostTensor<'_>> = dtypes
            .iter()
            .enumerate()
            .map(|(i, dtype)| match dtype {
                DType::F16 => HostTensor::F16(&f16_grads[i]),
                _ => HostTensor::F32(&f32_grads[i]),
            })
            .collect();
        let mut params: Vec<HostTensorMut<'_>> = self
            .f32_params
            .iter_mut()
            .zip(self.f16_params.iter_mut())
            .zip(&dtypes)
            .map(|((p32, p16), dtype)| match dtype {
                DType::F16 => HostTensorMut::F16(p16),
                _ => HostTensorMut::F32(p32),
            })
            .collect();
        stepper
            .step(&mut params, &grads, &Metrics::from_loss(1.0))
            .unwrap()
    }

    fn masters(&self, stepper: &Stepper<NdArrayBackend>) -> Vec<Vec<u32>> {
        self.specs
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let mut out = vec![0.0; spec.numel()];
                stepper.read_master(i, &mut out).unwrap();
                out.iter().map(|x| x.to_bits()).collect()
            })
            .collect()
    }

    /// The model's copies as bits.
    fn params(&self) -> Vec<Vec<u32>> {
        self.specs
            .iter()
            .enumerate()
            .map(|(i, spec)| match spec.dtype {
                DType::F16 => self.f16_params[i]
                    .iter()
                    .map(|x| u32::from(x.to_bits()))
                    .collect(),
                _ => self.f32_params[i].iter().map(|x| x.to_bits()).collect(),
            })
            .collect()
    }

    /// Forget the model's copies, as a restarted process that did not restore them
    /// would: the stepper's master weights are the truth and overwrite them.
    fn clear(&mut self) {
        self.f32_params.iter_mut().for_each(|p| p.fill(0.0));
        self.f16_params.iter_mut().for_each(|p| p.fill(f16::ZERO));
    }
}

struct Case {
    graph: ScalarGraph,
    strategy: Strategy,
    specs: Vec<ParamSpec>,
    initial: Vec<Vec<f32>>,
    /// One gradient list per step (values before loss scaling).
    grads: Vec<Vec<Vec<f32>>>,
}

impl Case {
    fn run(&self) -> Run {
        let initial: Vec<&[f32]> = self.initial.iter().map(Vec::as_slice).collect();
        Run::new(self.specs.clone(), &initial)
    }

    fn stepper(&self, run: &Run) -> Stepper<NdArrayBackend> {
        Stepper::new(
            NdArrayBackend::new(),
            self.graph.clone(),
            self.strategy.clone(),
            &self.specs,
            &run.initial(),
        )
        .unwrap()
    }

    /// All steps straight vs `k` steps, save, load into a new stepper, the rest.
    fn check_resume(&self, k: usize) -> Vec<StepReport> {
        let mut straight_run = self.run();
        let mut straight = self.stepper(&straight_run);
        let straight_reports: Vec<StepReport> = self
            .grads
            .iter()
            .map(|grads| straight_run.step(&mut straight, grads))
            .collect();

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.ckpt");
        let mut resumed_run = self.run();
        let mut first = self.stepper(&resumed_run);
        let mut reports: Vec<StepReport> = self.grads[..k]
            .iter()
            .map(|grads| resumed_run.step(&mut first, grads))
            .collect();
        first.save(&path).unwrap();
        let fingerprint = first.fingerprint();
        drop(first);
        resumed_run.clear();
        let mut second = Stepper::load(
            &path,
            NdArrayBackend::new(),
            self.graph.clone(),
            self.strategy.clone(),
            &self.specs,
        )
        .unwrap();
        assert_eq!(second.fingerprint(), fingerprint);
        assert_eq!(second.step_index(), k as u64);
        reports.extend(
            self.grads[k..]
                .iter()
                .map(|grads| resumed_run.step(&mut second, grads)),
        );

        assert_eq!(resumed_run.params(), straight_run.params());
        assert_eq!(
            resumed_run.masters(&second),
            straight_run.masters(&straight)
        );
        for (step, (a, b)) in reports.iter().zip(&straight_reports).enumerate() {
            assert_eq!(report_bits(a), report_bits(b), "report of step {step}");
        }
        assert_eq!(second.updates(), straight.updates());
        assert_eq!(second.loss_scale(), straight.loss_scale());
        straight_reports
    }
}

/// Changing gradients for `steps` steps over parameters of the given sizes.
fn gradients(sizes: &[usize], steps: usize) -> Vec<Vec<Vec<f32>>> {
    (0..steps)
        .map(|t| {
            sizes
                .iter()
                .enumerate()
                .map(|(p, &n)| {
                    (0..n)
                        .map(|i| {
                            let x = (t * 7 + p * 3 + i) as f32;
                            (x * 0.37).sin() * 0.5 + 0.01 * x
                        })
                        .collect()
                })
                .collect()
        })
        .collect()
}

fn cosine_lr(peak: f64, horizon: f64) -> ScalarGraph {
    let mut graph = ScalarGraph::new(Some(horizon));
    let lr = graph.push(Node::Schedule(Schedule::Cosine {
        from: peak,
        to: 0.0,
    }));
    graph.add_output("lr", lr);
    graph
}

fn two_params() -> (Vec<ParamSpec>, Vec<Vec<f32>>) {
    (
        vec![ParamSpec::new("w", &[2, 3]), ParamSpec::new("b", &[3])],
        vec![vec![0.5, -1.0, 0.25, 2.0, -0.75, 1.5], vec![0.1, -0.2, 0.3]],
    )
}

#[test]
fn sgd_momentum_resumes_bit_for_bit() {
    let mut graph = cosine_lr(0.1, 8.0);
    let momentum = graph.push(Node::Schedule(Schedule::Constant { value: 0.9 }));
    graph.add_output("momentum", momentum);
    let (specs, initial) = two_params();
    let mut sgd = strategy(OptimizerKind::Sgd);
    sgd.optimizer.nesterov = true;
    let case = Case {
        graph,
        strategy: sgd,
        specs,
        initial,
        grads: gradients(&[6, 3], 8),
    };
    case.check_resume(3);
    case.check_resume(1);
}

#[test]
fn adam_with_amsgrad_resumes_bit_for_bit() {
    let mut graph = ScalarGraph::new(None);
    let lr = graph.push(Node::Schedule(Schedule::Step {
        init: 0.01,
        every: 2.0,
        factor: 0.5,
    }));
    graph.add_output("lr", lr);
    let decay = graph.push(Node::Schedule(Schedule::Constant { value: 0.1 }));
    graph.add_output("weight_decay", decay);
    let (specs, initial) = two_params();
    let mut adam = strategy(OptimizerKind::AdamW);
    adam.optimizer.amsgrad = true;
    let case = Case {
        graph,
        strategy: adam,
        specs,
        initial,
        grads: gradients(&[6, 3], 7),
    };
    case.check_resume(4);
}

#[test]
fn lamb_resumes_bit_for_bit() {
    let mut graph = cosine_lr(0.05, 10.0);
    let decay = graph.push(Node::Schedule(Schedule::Constant { value: 0.01 }));
    graph.add_output("weight_decay", decay);
    let zero = graph.push(Node::Schedule(Schedule::Constant { value: 0.0 }));
    graph.add_output("group1.weight_decay", zero);
    let (specs, initial) = two_params();
    let mut lamb = strategy(OptimizerKind::Lamb);
    lamb.optimizer.bias_correction = true;
    lamb.optimizer.trust_clip = Some(10.0);
    lamb.groups = vec![GroupRule {
        trust_ratio: Some(false),
        ..group(&["b"], &[Hyper::WeightDecay])
    }];
    let case = Case {
        graph,
        strategy: lamb,
        specs,
        initial,
        grads: gradients(&[6, 3], 6),
    };
    case.check_resume(2);
}

#[test]
fn half_precision_with_loss_scaling_resumes_bit_for_bit() {
    // Overflows at steps 1 and 4, the save after step 3: a skipped step on each side,
    // and a growth (interval 2) in between, so the scaler's tracker must survive.
    let (specs, initial) = two_params();
    let specs: Vec<ParamSpec> = specs
        .into_iter()
        .map(|s| s.with_dtype(DType::F16))
        .collect();
    let mut adam = strategy(OptimizerKind::Adam);
    adam.precision = PrecisionSpec {
        dtype: DType::F16,
        loss_scale: LossScaleSpec::Dynamic(DynamicLossScale {
            init: 1024.0,
            growth: 2.0,
            backoff: 0.5,
            interval: 2,
            hysteresis: 1,
            min_scale: 1.0,
            at_min: AtMinScale::Error,
        }),
    };
    let mut grads = gradients(&[6, 3], 8);
    grads[1][0][2] = f32::INFINITY;
    grads[4][1][0] = f32::NAN;
    let case = Case {
        graph: cosine_lr(0.01, 8.0),
        strategy: adam,
        specs,
        initial,
        grads,
    };
    let reports = case.check_resume(3);
    let skipped: Vec<bool> = reports.iter().map(|r| r.skipped).collect();
    assert_eq!(
        skipped,
        vec![false, true, false, false, true, false, false, false]
    );
    let scales: Vec<f64> = reports.iter().map(|r| r.loss_scale).collect();
    // 1024; overflow → 512; 2 finite → 1024; overflow → 512; 2 finite → 1024; …
    assert_eq!(
        scales,
        vec![1024.0, 1024.0, 512.0, 512.0, 1024.0, 512.0, 512.0, 1024.0]
    );
}

// ---------------------------------------------------------------- refusals

fn saved_sgd(path: &Path) -> (ScalarGraph, Strategy, Vec<ParamSpec>) {
    let graph = constants(&[("lr", 0.1), ("momentum", 0.9)]);
    let sgd = strategy(OptimizerKind::Sgd);
    let (specs, initial) = two_params();
    let initial: Vec<&[f32]> = initial.iter().map(Vec::as_slice).collect();
    let mut run = Run::new(specs.clone(), &initial);
    let mut stepper = Stepper::new(
        NdArrayBackend::new(),
        graph.clone(),
        sgd.clone(),
        &specs,
        &run.initial(),
    )
    .unwrap();
    for grads in gradients(&[6, 3], 2) {
        run.step(&mut stepper, &grads);
    }
    stepper.save(path).unwrap();
    (graph, sgd, specs)
}

fn load(
    path: &Path,
    graph: ScalarGraph,
    strategy: Strategy,
    specs: &[ParamSpec],
) -> Result<Stepper<NdArrayBackend>, RuntimeError> {
    Stepper::load(path, NdArrayBackend::new(), graph, strategy, specs)
}

fn mismatch_reason(result: Result<Stepper<NdArrayBackend>, RuntimeError>) -> String {
    match result {
        Err(RuntimeError::Checkpoint(CheckpointError::Mismatch { reason, .. })) => reason,
        Err(other) => panic!("expected a mismatch, got {other}"),
        Ok(_) => panic!("expected a mismatch, the checkpoint loaded"),
    }
}

#[test]
fn another_script_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sgd.ckpt");
    let (_, sgd, specs) = saved_sgd(&path);
    let other_lr = constants(&[("lr", 0.2), ("momentum", 0.9)]);
    let ours = Stepper::new(
        NdArrayBackend::new(),
        other_lr.clone(),
        sgd.clone(),
        &specs,
        &[HostTensor::F32(&[0.0; 6]), HostTensor::F32(&[0.0; 3])],
    )
    .unwrap()
    .fingerprint();
    let reason = mismatch_reason(load(&path, other_lr, sgd, &specs));
    assert!(
        reason.starts_with("checkpoint was written by a different script (fingerprint "),
        "{reason}"
    );
    assert!(
        reason.ends_with(&format!(", this script {ours})")),
        "{reason}"
    );

    // Another optimizer option changes the fingerprint too.
    let (graph, mut nesterov, specs) = saved_sgd(&path);
    nesterov.optimizer.nesterov = true;
    let reason = mismatch_reason(load(&path, graph, nesterov, &specs));
    assert!(reason.contains("different script"), "{reason}");
}

#[test]
fn another_parameter_list_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sgd.ckpt");
    let (graph, sgd, specs) = saved_sgd(&path);

    let renamed = vec![specs[0].clone(), ParamSpec::new("bias", &[3])];
    let reason = mismatch_reason(load(&path, graph.clone(), sgd.clone(), &renamed));
    assert_eq!(
        reason,
        "it holds parameters this run does not declare: `b`; this run declares parameters it does not hold: `bias`"
    );

    let reshaped = vec![ParamSpec::new("w", &[3, 2]), specs[1].clone()];
    let reason = mismatch_reason(load(&path, graph.clone(), sgd.clone(), &reshaped));
    assert_eq!(
        reason,
        "parameter `w` has shape [2, 3] in the checkpoint but [3, 2] in this run"
    );

    // The same parameters in another order are found by name.
    let swapped = vec![specs[1].clone(), specs[0].clone()];
    let reordered = load(&path, graph.clone(), sgd.clone(), &swapped).unwrap();
    let original = load(&path, graph, sgd, &specs).unwrap();
    let (mut a, mut b) = ([0.0f32; 3], [0.0f32; 3]);
    reordered.read_master(0, &mut a).unwrap();
    original.read_master(1, &mut b).unwrap();
    assert_eq!(a, b);
}

#[test]
fn damaged_or_foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sgd.ckpt");
    let (graph, sgd, specs) = saved_sgd(&path);
    let bytes = std::fs::read(&path).unwrap();

    // One flipped bit in the middle: the checksum catches it.
    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x10;
    let damaged = dir.path().join("flipped.ckpt");
    std::fs::write(&damaged, &flipped).unwrap();
    let error = load(&damaged, graph.clone(), sgd.clone(), &specs)
        .err()
        .unwrap();
    assert!(
        matches!(
            error,
            RuntimeError::Checkpoint(CheckpointError::Corrupted { .. })
        ),
        "{error}"
    );

    // Truncated.
    let truncated = dir.path().join("truncated.ckpt");
    std::fs::write(&truncated, &bytes[..bytes.len() - 40]).unwrap();
    let error = load(&truncated, graph.clone(), sgd.clone(), &specs)
        .err()
        .unwrap();
    assert!(matches!(error, RuntimeError::Checkpoint(_)), "{error}");

    // A valid container that is not a stepper's.
    let foreign = dir.path().join("foreign.ckpt");
    write_checkpoint(
        &foreign,
        &serde_json::json!({"format": "something-else"}),
        &[],
    )
    .unwrap();
    let reason = mismatch_reason(load(&foreign, graph.clone(), sgd.clone(), &specs));
    assert_eq!(
        reason,
        "it is not a stepper checkpoint (format \"something-else\", expected \"regimen-stepper\")"
    );

    // A missing file names it.
    let missing = dir.path().join("missing.ckpt");
    let error = load(&missing, graph.clone(), sgd.clone(), &specs)
        .err()
        .unwrap();
    assert!(error.to_string().contains("missing.ckpt"), "{error}");

    // The original still loads.
    load(&path, graph, sgd, &specs).unwrap();
}

#[test]
fn save_into_a_missing_directory_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("state.ckpt");
    let graph = constants(&[("lr", 0.1)]);
    let stepper = Stepper::new(
        NdArrayBackend::new(),
        graph,
        strategy(OptimizerKind::Sgd),
        &[ParamSpec::new("w", &[1])],
        &[HostTensor::F32(&[1.0])],
    )
    .unwrap();
    let error = stepper.save(&path).unwrap_err();
    assert!(
        matches!(error, RuntimeError::Checkpoint(CheckpointError::Io { .. })),
        "{error}"
    );
    assert!(!path.exists());
}
