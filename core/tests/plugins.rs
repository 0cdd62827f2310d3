//! The plugin loader against real shared libraries built from the workspace's plugin
//! crates: the natural-compression plugin through the ABI is the same compressor as
//! in process (conformance suite, identical payloads and decodings), and every way a plugin can misbehave during a
//! call is a clear error naming the file — with the run's data untouched.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod plugin_support;
mod stepper_support;

use std::sync::Arc;

use regimen_core::compress::Compressor;
use regimen_core::loader::{ExportKind, Plugin, PluginError, PluginSet};
use regimen_core::plugin::conformance::{check_compressor, fixture_gradient};
use regimen_core::plugin::{
    ArgValue, Args, BatchController, BatchMetrics, StepContext, TensorView,
};
use regimen_core::runtime::{RuntimeError, StepperOptions};
use regimen_core::strategy::CompressSpec;
use regimen_core::{
    HostTensor, HostTensorMut, Metrics, NdArrayBackend, OptimizerKind, ParamSpec, Stepper,
};
use stepper_support::{constants, strategy};

fn natural() -> Arc<Plugin> {
    Plugin::load(&plugin_support::library("regimen-natural"), None).unwrap()
}

fn bad() -> Arc<Plugin> {
    Plugin::load(&plugin_support::library("regimen-bad-plugin"), None).unwrap()
}

fn ctx(step: u64, rank: usize) -> StepContext<'static> {
    StepContext {
        step,
        rank,
        world: 2,
        seed: 5,
        tensor: 1,
        scheduled: &[],
    }
}

#[test]
fn natural_through_the_abi_passes_the_conformance_suite() {
    let plugin = natural();
    check_compressor(|| Box::new(plugin.compressor("natural", &Args::new()).unwrap())).unwrap();
}

#[test]
fn natural_through_the_abi_equals_natural_in_process() {
    let plugin = natural();
    let mut loaded = plugin.compressor("natural", &Args::new()).unwrap();
    let mut local = regimen_natural::build(&Args::new()).unwrap();
    assert_eq!(loaded.method_id(), local.method_id());
    assert_eq!(loaded.aggregation(), local.aggregation());
    let shape = [37, 29];
    for step in 0..3 {
        let data = fixture_gradient(37 * 29, 0, step);
        let view = TensorView {
            name: "w",
            shape: &shape,
            data: &data,
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        loaded.compress(view, &ctx(step, 1), &mut a).unwrap();
        local.compress(view, &ctx(step, 1), &mut b).unwrap();
        assert_eq!(a, b, "payload of step {step}");
        let (mut da, mut db) = (vec![0.5f32; data.len()], vec![0.5f32; data.len()]);
        loaded.decompress_add(&a, 0.25, &mut da).unwrap();
        local.decompress_add(&b, 0.25, &mut db).unwrap();
        assert_eq!(
            da.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            db.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }
}

#[test]
fn inspect_lists_exports_and_schema() {
    let plugin = natural();
    assert_eq!(plugin.abi().0, regimen_core::plugin::abi::ABI_MAJOR);
    assert_eq!(plugin.name(), "regimen-natural");
    let export = plugin.export(ExportKind::Compressor, "natural").unwrap();
    assert!(export.thread_safe);
    assert_eq!(export.params[0].name, "error_feedback");
    let text = plugin.describe();
    assert!(text.contains("compressor `natural`"), "{text}");
    assert!(text.contains(plugin.sha256()), "{text}");
    let ada = Plugin::load(&plugin_support::library("regimen-adabatch"), None).unwrap();
    let text = ada.describe();
    assert!(text.contains("batch controller `adabatch`"), "{text}");
    assert!(text.contains("every: number (required)"), "{text}");
}

#[test]
fn loading_twice_gives_the_same_library_and_a_set_refuses_clashes() {
    let a = natural();
    let b = natural();
    assert!(Arc::ptr_eq(&a, &b));
    let mut set = PluginSet::new();
    set.add(a).unwrap();
    set.add(b).unwrap(); // the same library again: nothing changes
    assert_eq!(set.plugins().len(), 1);
    assert_eq!(set.names(ExportKind::Compressor), ["natural"]);
    let registry = set.registry();
    assert!(registry.build("natural", &Args::new()).is_ok());
    assert!(registry
        .build("topk", &Args::new().with("ratio", ArgValue::Number(0.1)))
        .is_ok());
}

#[test]
fn a_sha256_pin_is_checked_before_loading() {
    let path = plugin_support::library("regimen-natural");
    let digest = regimen_core::loader::file_sha256(&path).unwrap();
    assert!(Plugin::load(&path, Some(&digest.to_uppercase())).is_ok());
    let wrong = "0".repeat(64);
    let error = Plugin::load(&path, Some(&wrong)).unwrap_err();
    assert!(
        matches!(error, PluginError::ChecksumMismatch { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains(&digest), "{error}");
    let error = Plugin::load(&path, Some("abc")).unwrap_err();
    assert!(matches!(error, PluginError::BadPin { .. }), "{error:?}");
}

#[test]
fn missing_file_and_not_a_library_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("libnothing.so");
    let error = Plugin::load(&missing, None).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("plugin {}: file not found", missing.display())
    );
    let text = dir.path().join("libtext.so");
    std::fs::write(&text, "this is not an ELF file").unwrap();
    let error = Plugin::load(&text, None).unwrap_err();
    assert!(
        matches!(error, PluginError::NotALibrary { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().starts_with(&format!(
            "plugin {}: not a loadable shared library",
            text.display()
        )),
        "{error}"
    );
}

#[test]
fn a_library_without_the_entry_symbol_is_refused() {
    let path = plugin_support::library("regimen-no-entry");
    let error = Plugin::load(&path, None).unwrap_err();
    assert!(
        matches!(error, PluginError::MissingEntry { .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("no `regimen_plugin_entry` symbol"),
        "{error}"
    );
}

#[test]
fn argument_refusals_keep_the_argument_name() {
    let plugin = bad();
    let args = Args::new().with("mode", ArgValue::Text("reject".into()));
    let error = plugin.compressor("bad", &args).unwrap_err();
    let PluginError::Args { error: arg, .. } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(arg.argument.as_deref(), Some("mode"));
    assert_eq!(arg.message, "`reject` is refused, as asked");
    let unknown = Args::new().with("strength", ArgValue::Number(1.0));
    let PluginError::Args { error: arg, .. } = plugin.compressor("bad", &unknown).unwrap_err()
    else {
        panic!()
    };
    // Names and kinds are the host's to check, against the declared schema.
    assert_eq!(arg.argument.as_deref(), Some("strength"));
    assert_eq!(
        arg.message,
        "`bad` has no argument `strength`; it takes `mode`, `at_step`"
    );
    let wrong_kind = Args::new().with("at_step", ArgValue::Text("soon".into()));
    let PluginError::Args { error: arg, .. } = plugin.compressor("bad", &wrong_kind).unwrap_err()
    else {
        panic!()
    };
    assert_eq!(arg.argument.as_deref(), Some("at_step"));
    assert_eq!(
        arg.message,
        "`bad` expects a number for `at_step`, not a string"
    );
    // A compressor always takes the host's `error_feedback` switch.
    let switch = Args::new().with("error_feedback", ArgValue::Bool(true));
    assert!(plugin.compressor("bad", &switch).is_ok());
}

#[test]
fn a_panic_while_building_is_an_error_with_the_panic_message() {
    let plugin = bad();
    let args = Args::new().with("mode", ArgValue::Text("panic_create".into()));
    let error = plugin.compressor("bad", &args).unwrap_err().to_string();
    assert!(
        error.contains("panicked in create: bad plugin: deliberate panic while building"),
        "{error}"
    );
    assert!(error.contains("libregimen_bad_plugin"), "{error}");
}

/// Two parameters, the second compressed by `bad(mode: …, at_step: 2)`.
fn bad_stepper(mode: &str) -> (Stepper<NdArrayBackend>, Vec<Vec<f32>>) {
    let plugin = bad();
    let mut sgd = strategy(OptimizerKind::Sgd);
    sgd.compress = Some(CompressSpec {
        method: "bad".into(),
        args: Args::new()
            .with("mode", ArgValue::Text(mode.into()))
            .with("at_step", ArgValue::Number(2.0)),
        ..Default::default()
    });
    let specs = [ParamSpec::new("a", &[6]), ParamSpec::new("b", &[5])];
    let params = vec![vec![0.5f32; 6], vec![-0.25f32; 5]];
    let views: Vec<HostTensor<'_>> = params.iter().map(|p| HostTensor::F32(p)).collect();
    let options = StepperOptions::new().with_compressors(plugin.register(Default::default()));
    let graph = constants(&[("lr", 0.1), ("momentum", 0.0)]);
    let stepper =
        Stepper::new_with(NdArrayBackend::new(), graph, sgd, &specs, &views, options).unwrap();
    (stepper, params)
}

fn step(
    stepper: &mut Stepper<NdArrayBackend>,
    params: &mut [Vec<f32>],
) -> Result<(), RuntimeError> {
    let grads: Vec<Vec<f32>> = params
        .iter()
        .map(|p| p.iter().map(|x| x * 0.5 + 0.1).collect())
        .collect();
    let grads: Vec<HostTensor<'_>> = grads.iter().map(|g| HostTensor::F32(g)).collect();
    let mut views: Vec<HostTensorMut<'_>> =
        params.iter_mut().map(|p| HostTensorMut::F32(p)).collect();
    stepper
        .step(&mut views, &grads, &Metrics::default())
        .map(|_| ())
}

/// Steps 0 and 1 run; step 2 fails with a message containing `expected`, and the
/// weights and step index are those after step 1.
fn fails_at_step_two_keeping_the_data(mode: &str, expected: &str) {
    let (mut stepper, mut params) = bad_stepper(mode);
    step(&mut stepper, &mut params).unwrap();
    step(&mut stepper, &mut params).unwrap();
    let before = params.clone();
    let error = step(&mut stepper, &mut params).unwrap_err();
    let text = error.to_string();
    assert!(text.contains(expected), "{mode}: {text}");
    assert!(
        text.contains("libregimen_bad_plugin"),
        "{mode}: the file is named: {text}"
    );
    assert!(
        matches!(error, RuntimeError::Compress { step: 2, .. }),
        "{error:?}"
    );
    assert_eq!(params, before, "{mode}: the weights did not move");
    assert_eq!(stepper.step_index(), 2, "{mode}");
    let mut master = vec![0.0; 6];
    stepper.read_master(0, &mut master).unwrap();
    assert_eq!(master, before[0], "{mode}: the master weights did not move");
}

#[test]
fn a_plugin_error_fails_the_step_and_keeps_the_data() {
    fails_at_step_two_keeping_the_data(
        "error",
        "`bad` failed in compress: deliberate failure at step 2",
    );
}

#[test]
fn a_plugin_panic_fails_the_step_and_keeps_the_data() {
    fails_at_step_two_keeping_the_data(
        "panic",
        "`bad` panicked in compress: bad plugin: deliberate panic at step 2",
    );
}

#[test]
fn a_wrong_length_payload_fails_the_step_and_keeps_the_data() {
    fails_at_step_two_keeping_the_data(
        "wrong_length",
        "wrote a wrong payload for `a`: payload shape mismatch: payload holds 5 elements, the tensor has 6",
    );
}

#[test]
fn an_undecodable_payload_fails_the_first_step() {
    let (mut stepper, mut params) = bad_stepper("undecodable");
    let error = step(&mut stepper, &mut params).unwrap_err().to_string();
    assert!(error.contains("`bad` could not decode its input in decompress_add: corrupt payload: deliberately undecodable"), "{error}");
    assert_eq!(params, vec![vec![0.5f32; 6], vec![-0.25f32; 5]]);
}

#[test]
fn a_corrupt_payload_is_refused_by_the_plugins_decoder() {
    let plugin = natural();
    let mut c = plugin.compressor("natural", &Args::new()).unwrap();
    let data = fixture_gradient(40, 0, 0);
    let mut payload = Vec::new();
    c.compress(
        TensorView {
            name: "w",
            shape: &[40],
            data: &data,
        },
        &ctx(0, 0),
        &mut payload,
    )
    .unwrap();
    let last = payload.len() - 1;
    payload[last] = 255;
    let mut out = vec![0.0; 40];
    let error = c
        .decompress_add(&payload, 1.0, &mut out)
        .unwrap_err()
        .to_string();
    assert!(error.contains("could not decode its input"), "{error}");
    assert!(error.contains("exponent code 255 at element 39"), "{error}");
    assert!(out.iter().all(|&x| x == 0.0), "nothing was written");
    let error = c
        .decompress_add(&payload[..10], 1.0, &mut out)
        .unwrap_err()
        .to_string();
    assert!(error.contains("payload truncated"), "{error}");
}

fn metrics(step: u64, samples: u64, batch: u64) -> BatchMetrics {
    BatchMetrics {
        samples_per_epoch: Some(500),
        ..BatchMetrics::new(step, samples, batch)
    }
}

#[test]
fn misbehaving_controllers_are_errors() {
    let plugin = bad();
    let mode = |m: &str| Args::new().with("mode", ArgValue::Text(m.into()));
    let mut zero = plugin.controller("bad_batch", &mode("zero")).unwrap();
    let error = zero.observe(&metrics(3, 96, 32)).unwrap_err().to_string();
    assert!(
        error.contains("answered a batch size of 0 at step 3"),
        "{error}"
    );
    let mut panics = plugin.controller("bad_batch", &mode("panic")).unwrap();
    let error = panics.observe(&metrics(4, 96, 32)).unwrap_err().to_string();
    assert!(
        error.contains("panicked in observe: bad plugin: deliberate controller panic at step 4"),
        "{error}"
    );
    let mut ok = plugin.controller("bad_batch", &mode("ok")).unwrap();
    assert_eq!(ok.observe(&metrics(5, 96, 32)).unwrap().batch, 32);
    let error = plugin
        .controller("nothing", &mode("ok"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("exports no batch controller named `nothing`"),
        "{error}"
    );
}

#[test]
fn serialized_plugins_work_from_several_threads() {
    // `bad` is not thread-safe: the host's lock serializes its calls.
    let plugin = bad();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let plugin = Arc::clone(&plugin);
            std::thread::spawn(move || {
                let mut c = plugin.compressor("bad", &Args::new()).unwrap();
                let data = fixture_gradient(1000, t, 0);
                for step in 0..20 {
                    let mut payload = Vec::new();
                    c.compress(
                        TensorView {
                            name: "w",
                            shape: &[1000],
                            data: &data,
                        },
                        &ctx(step, t),
                        &mut payload,
                    )
                    .unwrap();
                    let mut out = vec![0.0; 1000];
                    c.decompress_add(&payload, 1.0, &mut out).unwrap();
                    assert_eq!(out, data);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}
