//! The plugin C ABI from C: `plugins/sdk/include/regimen_plugin.h` is compiled with
//! the system C compiler and
//! - a small C program prints `sizeof`/alignment/`offsetof` of every struct and
//!   field and the value of every constant, which must equal the Rust `#[repr(C)]`
//!   definitions of `regimen_plugin::abi` (this is what proves the header right);
//! - a compressor written in C (`plugins/tests/c-plugin/identity.c`) is built into a
//!   shared library, loaded with the loader, and must describe itself, pass the SDK
//!   conformance suite, round-trip exactly, and report errors through the ABI.
//!
//! A missing C compiler fails these tests (with a message saying so): CI installs
//! gcc.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::mem::{align_of, offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use regimen_core::compress::Compressor;
use regimen_core::loader::{ExportKind, ParamInfo, Plugin, PluginError};
use regimen_core::plugin::abi::*;
use regimen_core::plugin::conformance::{check_compressor, fixture_gradient};
use regimen_core::plugin::export::ParamKind;
use regimen_core::plugin::wire::{FIXED_HEADER_BYTES, MAX_DIMS};
use regimen_core::plugin::{
    Aggregation, ArgValue, Args, CompressError, FeedbackPolicy, MethodId, PayloadHeader,
    ResidualSource, Round, StepContext, TensorView, WireElement, WIRE_MAGIC, WIRE_VERSION,
};

/// The method id `identity.c` writes.
const C_IDENTITY_METHOD: MethodId = MethodId(0x8C01);

/// The workspace root (`core/..`).
fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("core/ lies in the workspace")
}

/// Where the C artifacts go: `<target>/plugin-tests/c`.
fn build_dir() -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe()
            .expect("the test binary's path")
            .ancestors()
            .nth(3)
            .expect("the test binary lives in <target>/<profile>/deps")
            .to_path_buf(),
    };
    let dir = target.join("plugin-tests").join("c");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Compile `source` (relative to the workspace) to `output` with `cc` and the flags
/// every C plugin is built with, plus `extra`. The result is written beside `output`
/// and renamed over it, so a library another test process has mapped is never
/// rewritten in place.
fn cc(source: &str, output: &Path, extra: &[&str]) {
    let compiler = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let partial = output.with_extension(format!("partial-{}", std::process::id()));
    let result = Command::new(&compiler)
        .args(extra)
        .args(["-O2", "-std=c99", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(workspace().join("plugins/sdk/include"))
        .arg(workspace().join(source))
        .arg("-o")
        .arg(&partial)
        .output();
    let output_of = match result {
        Ok(out) => out,
        Err(error) => panic!(
            "cannot run the C compiler `{}` ({error}): these tests build a plugin written \
             in C against plugins/sdk/include/regimen_plugin.h; install a C compiler \
             (e.g. `apt-get install gcc`) or point CC at one",
            compiler.to_string_lossy()
        ),
    };
    assert!(
        output_of.status.success(),
        "`{}` failed on {source}:\n{}{}",
        compiler.to_string_lossy(),
        String::from_utf8_lossy(&output_of.stdout),
        String::from_utf8_lossy(&output_of.stderr)
    );
    std::fs::rename(&partial, output).unwrap();
}

/// The C plugin's shared library (built once per test binary).
fn library() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let path = build_dir().join(format!(
            "{}regimen_c_identity{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        ));
        cc(
            "plugins/tests/c-plugin/identity.c",
            &path,
            &["-shared", "-fPIC"],
        );
        path
    })
}

fn plugin() -> Arc<Plugin> {
    Plugin::load(library(), None).unwrap()
}

/// What `layout.c` prints, as `key → value`.
fn c_layout() -> BTreeMap<String, String> {
    let exe = build_dir().join(format!("layout{}", std::env::consts::EXE_SUFFIX));
    cc("plugins/tests/c-plugin/layout.c", &exe, &[]);
    let run = Command::new(&exe).output().unwrap();
    assert!(run.status.success(), "{} failed", exe.display());
    String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (key, value) = line
                .split_once(' ')
                .unwrap_or_else(|| panic!("a layout line without a value: {line:?}"));
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

/// The size of the field `get` borrows.
fn field_size<T, F>(_get: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

/// The same keys as `layout.c`, from the Rust definitions.
fn rust_layout() -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    macro_rules! structs {
        ($($t:ident { $($f:ident $(as $c:ident)?),* $(,)? })*) => {$(
            map.insert(format!("{}.size", stringify!($t)), size_of::<$t>().to_string());
            map.insert(format!("{}.align", stringify!($t)), align_of::<$t>().to_string());
            $(
                let c_name = [stringify!($f) $(, stringify!($c))?].last().copied().unwrap();
                map.insert(
                    format!("{}.{c_name}.offset", stringify!($t)),
                    offset_of!($t, $f).to_string(),
                );
                map.insert(
                    format!("{}.{c_name}.size", stringify!($t)),
                    field_size(|s: &$t| &s.$f).to_string(),
                );
            )*
        )*};
    }
    structs! {
        RgStr { ptr, len }
        RgSink { ctx, write }
        RgErrorOut { message, argument }
        RgArg { name, kind, boolean, number, text }
        RgParam { name, kind, required, default as default_value, doc }
        RgPluginInfo { size, abi_major, abi_minor, flags, name, version, export_count, exports }
        RgExport {
            size, kind, flags, reserved, name, description, param_count, params, data, vtable
        }
        RgCompressorInfo { size, method_id, aggregation, element, feedback, residual }
        RgTensor { name, shape, ndim, data, len }
        RgScheduled { name, value }
        RgStepContext {
            size, reserved, step, rank, world, seed, tensor, scheduled_len, scheduled
        }
        RgCompressorVTable {
            size, create, destroy, compress, next_round, decompress_add, save_state, load_state
        }
        RgBatchMetrics {
            size, reserved, step, samples, samples_per_epoch, batch, loss, grad_norm,
            grad_sq_estimate, grad_variance, lr
        }
        RgBatchDecision { size, reserved, batch, lr_scale }
        RgControllerVTable { size, create, destroy, observe, save_state, load_state }
    }
    let mut put = |key: &str, value: String| {
        map.insert(key.to_owned(), value);
    };
    put("RgStatus.size", size_of::<RgStatus>().to_string());
    put("RgEntryFn.size", size_of::<RgEntry>().to_string());
    put("RG_ABI_MAJOR", ABI_MAJOR.to_string());
    put("RG_ABI_MINOR", ABI_MINOR.to_string());
    put("RG_ENTRY_SYMBOL", ENTRY_SYMBOL.to_owned());
    for (key, value) in [
        ("RG_STATUS_OK", STATUS_OK),
        ("RG_STATUS_ERROR", STATUS_ERROR),
        ("RG_STATUS_BAD_ARGS", STATUS_BAD_ARGS),
        ("RG_STATUS_PANIC", STATUS_PANIC),
        ("RG_STATUS_BAD_INPUT", STATUS_BAD_INPUT),
        ("RG_KIND_COMPRESSOR", KIND_COMPRESSOR),
        ("RG_KIND_BATCH_CONTROLLER", KIND_BATCH_CONTROLLER),
        ("RG_FLAG_THREAD_SAFE", FLAG_THREAD_SAFE),
        ("RG_ARG_NUMBER", ARG_NUMBER),
        ("RG_ARG_TEXT", ARG_TEXT),
        ("RG_ARG_BOOL", ARG_BOOL),
        ("RG_AGGREGATION_GATHER", AGGREGATION_GATHER),
        ("RG_AGGREGATION_SUM", AGGREGATION_SUM),
        ("RG_ELEMENT_F32", ELEMENT_F32),
        ("RG_ELEMENT_F16", ELEMENT_F16),
        ("RG_ELEMENT_BF16", ELEMENT_BF16),
        ("RG_FEEDBACK_OFF_BY_DEFAULT", FEEDBACK_OFF_BY_DEFAULT),
        ("RG_FEEDBACK_ON_BY_DEFAULT", FEEDBACK_ON_BY_DEFAULT),
        ("RG_FEEDBACK_INTERNAL", FEEDBACK_INTERNAL),
        ("RG_RESIDUAL_OWN_PAYLOAD", RESIDUAL_OWN_PAYLOAD),
        ("RG_RESIDUAL_AGGREGATE", RESIDUAL_AGGREGATE),
        ("RG_ROUND_DONE", ROUND_DONE),
        ("RG_ROUND_MORE", ROUND_MORE),
    ] {
        put(key, value.to_string());
    }
    put(
        "RG_WIRE_MAGIC",
        String::from_utf8(WIRE_MAGIC.to_vec()).unwrap(),
    );
    put("RG_WIRE_VERSION", WIRE_VERSION.to_string());
    put("RG_WIRE_MAX_DIMS", MAX_DIMS.to_string());
    put("RG_WIRE_FIXED_HEADER_BYTES", FIXED_HEADER_BYTES.to_string());
    put(
        "RG_METHOD_FIRST_PLUGIN",
        MethodId::FIRST_PLUGIN.0.to_string(),
    );
    map
}

#[test]
fn the_c_header_matches_the_rust_abi() {
    let c = c_layout();
    let rust = rust_layout();
    let mut wrong = Vec::new();
    for (key, value) in &rust {
        match c.get(key) {
            Some(c_value) if c_value == value => {}
            Some(c_value) => wrong.push(format!("{key}: C {c_value}, Rust {value}")),
            None => wrong.push(format!("{key}: missing from the C program")),
        }
    }
    for key in c.keys().filter(|key| !rust.contains_key(*key)) {
        wrong.push(format!("{key}: printed by C, not compared with Rust"));
    }
    assert!(
        wrong.is_empty(),
        "regimen_plugin.h differs from abi.rs:\n{}",
        wrong.join("\n")
    );
    // Guard the comparison itself: every struct of abi.rs is in it.
    assert_eq!(c.keys().filter(|k| k.ends_with(".align")).count(), 15);
}

#[test]
fn the_c_plugin_loads_and_describes_itself() {
    let plugin = plugin();
    assert_eq!(plugin.name(), "regimen-c-identity");
    assert_eq!(plugin.version(), "0.1.0");
    assert_eq!(plugin.abi(), (ABI_MAJOR, ABI_MINOR));
    assert_eq!(plugin.exports().len(), 1);
    let export = plugin.export(ExportKind::Compressor, "c_identity").unwrap();
    assert_eq!(
        export.description,
        "dense f32, no compression (a plugin written in C)"
    );
    assert!(export.thread_safe);
    assert_eq!(
        export.params,
        [ParamInfo {
            name: "error_feedback".into(),
            kind: ParamKind::Bool,
            default: Some("false".into()),
            doc: "keep an error-feedback residual (the host's switch)".into(),
        }]
    );
    let text = plugin.describe();
    assert!(text.contains("name     regimen-c-identity 0.1.0"), "{text}");
    assert!(text.contains("abi      1.0"), "{text}");
    assert!(text.contains(plugin.sha256()), "{text}");
    assert!(text.contains("compressor `c_identity`\n"), "{text}");
    assert!(
        text.contains("error_feedback: bool (default false) — keep an error-feedback"),
        "{text}"
    );
    // A pin of the file's digest loads the same library; the plugin is the same
    // file loaded again.
    let pinned = Plugin::load(library(), Some(plugin.sha256())).unwrap();
    assert!(Arc::ptr_eq(&plugin, &pinned));
    assert!(matches!(
        plugin.compressor("natural", &Args::new()),
        Err(PluginError::NoSuchExport { .. })
    ));
}

#[test]
fn the_c_plugin_passes_the_conformance_suite() {
    let plugin = plugin();
    check_compressor(|| Box::new(plugin.compressor("c_identity", &Args::new()).unwrap())).unwrap();
}

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

/// The payload `identity.c` must write: the SDK's header, then the values as
/// little-endian f32.
fn expected_payload(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    PayloadHeader::new(C_IDENTITY_METHOD, shape)
        .unwrap()
        .write(&mut out);
    for value in data {
        out.extend_from_slice(&value.to_le_bytes());
    }
    out
}

#[test]
fn the_c_plugin_round_trips_exactly() {
    let plugin = plugin();
    let mut c = plugin
        .compressor(
            "c_identity",
            &Args::new().with("error_feedback", ArgValue::Bool(true)),
        )
        .unwrap();
    assert_eq!(c.name(), "c_identity");
    assert_eq!(c.method_id(), C_IDENTITY_METHOD);
    assert_eq!(c.aggregation(), Aggregation::Sum(WireElement::F32));
    assert_eq!(c.feedback(), FeedbackPolicy::OffByDefault);
    assert_eq!(c.residual_source(), ResidualSource::OwnPayload);

    let specials = [
        -0.0,
        f32::MIN_POSITIVE / 8.0,
        f32::MAX,
        -f32::MAX,
        f32::INFINITY,
        f32::from_bits(0x7FC0_1234),
        1.0e-30,
    ];
    let shapes: [&[usize]; 5] = [&[], &[1], &[7], &[3, 4, 5], &[2, 1, 2, 1, 2, 1, 2, 1]];
    for (step, shape) in shapes.iter().enumerate() {
        let numel: usize = shape.iter().product();
        let mut data = fixture_gradient(numel, 0, step as u64);
        for (value, special) in data.iter_mut().zip(specials) {
            *value = special;
        }
        let view = TensorView {
            name: "layer.weight",
            shape,
            data: &data,
        };
        let mut payload = b"kept".to_vec();
        c.compress(view, &ctx(step as u64), &mut payload).unwrap();
        assert_eq!(&payload[..4], b"kept", "compress appends");
        let payload = payload.split_off(4);
        assert_eq!(payload, expected_payload(shape, &data), "shape {shape:?}");
        let (header, _) = PayloadHeader::parse(&payload, C_IDENTITY_METHOD, numel).unwrap();
        assert_eq!(
            header.shape,
            shape.iter().map(|&d| d as u32).collect::<Vec<_>>()
        );

        // out += scale · decode, bit for bit as Rust computes it (finite values: the
        // sign and payload of a NaN sum are not specified).
        let finite: Vec<f32> = data
            .iter()
            .map(|v| if v.is_finite() { *v } else { 2.5 })
            .collect();
        let payload = expected_payload(shape, &finite);
        let scale = 0.3f32;
        let mut out: Vec<f32> = (0..numel).map(|i| 0.5 - i as f32 / 7.0).collect();
        let want: Vec<u32> = out
            .iter()
            .zip(&finite)
            .map(|(o, v)| (o + scale * v).to_bits())
            .collect();
        c.decompress_add(&payload, scale, &mut out).unwrap();
        assert_eq!(
            out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want,
            "shape {shape:?}"
        );
    }

    let mut reduced = expected_payload(&[2], &[1.0, 2.0]);
    let mut next = Vec::new();
    assert_eq!(
        c.next_round(&reduced, &ctx(0), &mut next).unwrap(),
        Round::Done
    );
    assert!(next.is_empty());
    let mut state = Vec::new();
    c.save_state(&mut state).unwrap();
    assert!(state.is_empty());
    c.load_state(&state).unwrap();

    // A payload one byte short is refused and leaves the output alone.
    reduced.pop();
    let mut out = [1.0f32, 1.0];
    assert!(c.decompress_add(&reduced, 1.0, &mut out).is_err());
    assert_eq!(out, [1.0, 1.0]);
}

#[test]
fn the_c_plugin_reports_errors_through_the_abi() {
    let plugin = plugin();
    let path = library().display().to_string();

    let error = plugin
        .compressor(
            "c_identity",
            &Args::new().with("bogus", ArgValue::Number(1.0)),
        )
        .unwrap_err();
    let PluginError::Args {
        name,
        error: refusal,
        ..
    } = &error
    else {
        panic!("{error:?}");
    };
    assert_eq!(name, "c_identity");
    assert_eq!(refusal.argument.as_deref(), Some("bogus"));
    // The host checks names against the declared schema before the plugin sees them.
    assert_eq!(
        refusal.message,
        "`c_identity` has no argument `bogus`; it takes `error_feedback`"
    );

    let error = plugin
        .compressor(
            "c_identity",
            &Args::new().with("error_feedback", ArgValue::Text("yes".into())),
        )
        .unwrap_err();
    let PluginError::Args { error: refusal, .. } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(refusal.argument.as_deref(), Some("error_feedback"));
    assert_eq!(refusal.message, "expected true or false");

    let mut c = plugin.compressor("c_identity", &Args::new()).unwrap();

    // RG_STATUS_BAD_INPUT from decompress_add, with the plugin's message.
    let mut other = Vec::new();
    PayloadHeader::new(MethodId(0x8C02), &[2])
        .unwrap()
        .write(&mut other);
    other.extend_from_slice(&[0; 8]);
    let error = c.decompress_add(&other, 1.0, &mut [0.0; 2]).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "plugin {path}: `c_identity` could not decode its input in decompress_add: payload of another method"
        )
    );

    // RG_STATUS_ERROR from compress: a shape whose product is not the length.
    let data = [1.0f32; 6];
    let mut out = b"x".to_vec();
    let error = c
        .compress(
            TensorView {
                name: "w",
                shape: &[2, 2],
                data: &data,
            },
            &ctx(0),
            &mut out,
        )
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "plugin {path}: `c_identity` failed in compress: the shape's product differs from len"
        )
    );
    assert_eq!(out, b"x", "a failed compress leaves the buffer as it was");

    // Nine dimensions do not fit the wire header.
    let error = c
        .compress(
            TensorView {
                name: "w",
                shape: &[1; 9],
                data: &data[..1],
            },
            &ctx(0),
            &mut Vec::new(),
        )
        .unwrap_err();
    assert!(
        error.to_string().ends_with("more than 8 dimensions"),
        "{error}"
    );

    // load_state of bytes a stateless method never wrote.
    let error = c.load_state(&[1, 2, 3]).unwrap_err();
    assert!(matches!(error, CompressError::State(_)), "{error:?}");
    assert!(error.to_string().contains("keeps no state"), "{error}");
}

#[test]
fn instances_of_the_thread_safe_export_run_at_once() {
    let plugin = plugin();
    std::thread::scope(|scope| {
        for worker in 0..4 {
            let plugin = &plugin;
            scope.spawn(move || {
                let mut c = plugin.compressor("c_identity", &Args::new()).unwrap();
                for step in 0..50 {
                    let data = fixture_gradient(257, worker, step);
                    let mut payload = Vec::new();
                    c.compress(
                        TensorView {
                            name: "w",
                            shape: &[257],
                            data: &data,
                        },
                        &ctx(step),
                        &mut payload,
                    )
                    .unwrap();
                    assert_eq!(payload, expected_payload(&[257], &data));
                    let mut out = vec![0.0f32; 257];
                    c.decompress_add(&payload, 1.0, &mut out).unwrap();
                    assert_eq!(out, data);
                }
            });
        }
    });
}

#[test]
fn abi_md_embeds_the_header_and_states_the_right_sizes() {
    let doc = std::fs::read_to_string(workspace().join("plugins/sdk/ABI.md")).unwrap();
    let header =
        std::fs::read_to_string(workspace().join("plugins/sdk/include/regimen_plugin.h")).unwrap();
    assert!(
        doc.contains(&format!("```c\n{header}```")),
        "ABI.md must reproduce include/regimen_plugin.h verbatim in its last ```c block"
    );
    // Every "**`RgX`** — N bytes" of the struct reference is the Rust size.
    let rust = rust_layout();
    let mut stated = 0;
    for line in doc.lines() {
        let Some(rest) = line.strip_prefix("**`") else {
            continue;
        };
        let Some((name, rest)) = rest.split_once("`**") else {
            continue;
        };
        let Some(bytes) = rest
            .split_once(" — ")
            .and_then(|(_, r)| r.split_once(" bytes"))
            .map(|(n, _)| n)
        else {
            continue;
        };
        let want = rust
            .get(&format!("{name}.size"))
            .unwrap_or_else(|| panic!("ABI.md sizes `{name}`, which abi.rs does not define"));
        assert_eq!(bytes, want, "ABI.md's size of {name}");
        stated += 1;
    }
    assert_eq!(stated, 15, "ABI.md states the size of every struct");
}

/// A variant of the C plugin built with `-D{define}` to `name`.
fn variant(define: &str, name: &str) -> PathBuf {
    let path = build_dir().join(format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    cc(
        "plugins/tests/c-plugin/identity.c",
        &path,
        &[
            "-shared",
            "-fPIC",
            "-Wno-unused-function",
            &format!("-D{define}"),
        ],
    );
    path
}

#[test]
fn a_function_table_with_a_null_slot_is_refused_at_load() {
    let path = variant("RG_TEST_NULL_SLOT", "regimen_c_null_slot");
    let error = Plugin::load(&path, None).unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, PluginError::Malformed { .. }), "{error:?}");
    assert!(text.contains("function 4 of its table is null"), "{text}");
    assert!(text.contains("regimen_c_null_slot"), "{text}");
}

#[test]
fn a_plugin_claiming_a_built_in_method_id_is_refused() {
    let path = variant("RG_TEST_BUILTIN_ID", "regimen_c_builtin_id");
    let plugin = Plugin::load(&path, None).unwrap();
    let error = plugin.compressor("c_identity", &Args::new()).unwrap_err();
    let text = error.to_string();
    assert!(text.contains("method id 0x0004 is a built-in's"), "{text}");
}
