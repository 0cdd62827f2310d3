//! A purpose-built misbehaving plugin for the loader's error tests. Nothing here is
//! an example to follow.
//!
//! Call-level misbehaviour is chosen by arguments, so tests can run in parallel:
//! the compressor `bad(mode: "…", at_step: N)` copies its input densely (method id
//! 0x8100) until step `N`, then, by `mode`: `panic`, `error`, `wrong_length` (a
//! payload for one element too few), `undecodable` (its decoder refuses every
//! payload); `reject` makes `create` refuse the argument `mode`, `panic_create`
//! panics in `create`. The controller `bad_batch(mode: "zero" | "panic" | "ok")`
//! answers batch 0, panics, or keeps the batch. Neither declares thread-safety, so
//! the host serializes their calls.
//!
//! Library-level misbehaviour is chosen when the entry point runs, by the
//! environment variable `REGIMEN_BAD_PLUGIN`: `abi` (another ABI major), `kind` (an
//! export of unknown kind), `clash` (a compressor named like the built-in `topk`).
//! The tests copy the library to a fresh path for each, so each load runs the entry
//! point again.
#![allow(unsafe_code)]

use std::sync::OnceLock;

use regimen_plugin::abi::{RgExport, RgPluginInfo, ABI_MAJOR};
use regimen_plugin::export::{CompressorExport, ControllerExport, Param, PluginDef};
use regimen_plugin::ffi::Tables;
use regimen_plugin::{
    Aggregation, ArgError, Args, BatchController, BatchDecision, BatchMetrics, CompressError,
    Compressor, ControllerError, MethodId, PayloadHeader, StepContext, TensorView, WireError,
};

const BAD_ID: MethodId = MethodId(0x8100);

const PARAMS: &[Param] = &[
    Param::text("mode", "how to misbehave").default("ok"),
    Param::number("at_step", "first step that misbehaves").default("0"),
];

const COMPRESSOR: CompressorExport = CompressorExport {
    name: "bad",
    description: "misbehaves on purpose",
    params: PARAMS,
    thread_safe: false,
    build,
};

const PLUGIN: PluginDef = PluginDef {
    name: "regimen-bad-plugin",
    version: env!("CARGO_PKG_VERSION"),
    compressors: &[COMPRESSOR],
    controllers: &[ControllerExport {
        name: "bad_batch",
        description: "misbehaves on purpose",
        params: &[Param::text("mode", "how to misbehave").default("ok")],
        thread_safe: false,
        build: build_controller,
    }],
};

/// The same plugin, but its compressor is named like a built-in.
const CLASH: PluginDef = PluginDef {
    name: "regimen-bad-plugin",
    version: env!("CARGO_PKG_VERSION"),
    compressors: &[CompressorExport {
        name: "topk",
        ..COMPRESSOR
    }],
    controllers: &[],
};

fn leak<T>(value: T) -> *const T {
    Box::leak(Box::new(value))
}

/// The entry point, misbehaving as `REGIMEN_BAD_PLUGIN` says.
#[no_mangle]
pub extern "C" fn regimen_plugin_entry(host_abi_major: u32) -> *const RgPluginInfo {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    static CLASH_TABLES: OnceLock<Tables> = OnceLock::new();
    let mode = std::env::var("REGIMEN_BAD_PLUGIN").unwrap_or_default();
    if mode == "clash" {
        return regimen_plugin::ffi::entry(&CLASH, &CLASH_TABLES, host_abi_major);
    }
    let normal = regimen_plugin::ffi::entry(&PLUGIN, &TABLES, host_abi_major);
    // SAFETY: `entry` returned a pointer into `TABLES`, which lives forever.
    let Some(info) = (unsafe { normal.as_ref() }) else {
        return normal;
    };
    match mode.as_str() {
        "abi" => leak(RgPluginInfo {
            abi_major: ABI_MAJOR + 1,
            ..*info
        }),
        "kind" => {
            // SAFETY: the first export pointer of the SDK's tables is valid.
            let first = unsafe { **info.exports };
            let odd = leak(RgExport { kind: 7, ..first });
            let list: &'static [*const RgExport] = Box::leak(Box::new([odd]));
            leak(RgPluginInfo {
                export_count: 1,
                exports: list.as_ptr(),
                ..*info
            })
        }
        _ => normal,
    }
}

fn build(args: &Args) -> Result<Box<dyn Compressor>, ArgError> {
    args.only(&["mode", "at_step", "error_feedback"])?;
    let mode = args.text("mode", "ok")?.to_owned();
    let at_step = args.number("at_step", Some(0.0))? as u64;
    match mode.as_str() {
        "reject" => Err(ArgError {
            argument: Some("mode".into()),
            message: "`reject` is refused, as asked".into(),
        }),
        "panic_create" => panic!("bad plugin: deliberate panic while building"),
        "ok" | "panic" | "error" | "wrong_length" | "undecodable" => {
            Ok(Box::new(Bad { mode, at_step }))
        }
        other => Err(ArgError {
            argument: Some("mode".into()),
            message: format!("unknown mode `{other}`"),
        }),
    }
}

struct Bad {
    mode: String,
    at_step: u64,
}

impl Compressor for Bad {
    fn name(&self) -> &str {
        "bad"
    }

    fn method_id(&self) -> MethodId {
        BAD_ID
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
        let now = ctx.step >= self.at_step;
        let mut data = input.data;
        match self.mode.as_str() {
            "panic" if now => panic!("bad plugin: deliberate panic at step {}", ctx.step),
            "error" if now => {
                return Err(CompressError::Failed(format!(
                    "deliberate failure at step {}",
                    ctx.step
                )))
            }
            "wrong_length" if now => data = &data[..data.len().saturating_sub(1)],
            _ => {}
        }
        PayloadHeader::new(BAD_ID, &[data.len()])?.write(out);
        for x in data {
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
        if self.mode == "undecodable" {
            return Err(WireError::Corrupt("deliberately undecodable".into()).into());
        }
        let (_, mut reader) = PayloadHeader::parse(payload, BAD_ID, out.len())?;
        for o in out.iter_mut() {
            *o += scale * reader.f32()?;
        }
        reader.finish()?;
        Ok(())
    }
}

fn build_controller(args: &Args) -> Result<Box<dyn BatchController>, ArgError> {
    args.only(&["mode"])?;
    Ok(Box::new(BadBatch {
        mode: args.text("mode", "ok")?.to_owned(),
    }))
}

struct BadBatch {
    mode: String,
}

impl BatchController for BadBatch {
    fn name(&self) -> &str {
        "bad_batch"
    }

    fn observe(&mut self, metrics: &BatchMetrics) -> Result<BatchDecision, ControllerError> {
        match self.mode.as_str() {
            "panic" => panic!(
                "bad plugin: deliberate controller panic at step {}",
                metrics.step
            ),
            "zero" => Ok(BatchDecision {
                batch: 0,
                lr_scale: None,
            }),
            _ => Ok(BatchDecision {
                batch: metrics.batch,
                lr_scale: None,
            }),
        }
    }
}
