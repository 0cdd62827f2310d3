//! The plugin side of the C ABI: the tables [`export_plugin!`](crate::export_plugin)
//! hands the host, and the `extern "C"` functions behind every export. This is the
//! only module of the SDK with `unsafe` code: it turns the raw pointers and lengths of
//! the ABI into slices and `&str`s, and every function runs the author's code inside
//! `catch_unwind`, so a panic becomes [`STATUS_PANIC`] with the panic's message
//! instead of unwinding into the host.
//!
//! The host's obligations (what every `// SAFETY:` below relies on) are those of
//! `ABI.md`: pointers are valid for their lengths for the duration of the call,
//! `inst` is a live instance `create` returned and is used by one thread at a time,
//! and sinks are callable.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use crate::abi::*;
use crate::args::{ArgError, ArgValue, Args};
use crate::batch::{BatchController, BatchMetrics, ControllerError};
use crate::compress::{
    Aggregation, CompressError, Compressor, FeedbackPolicy, ResidualSource, Round, StepContext,
    TensorView, WireElement,
};
use crate::export::{CompressorExport, ControllerExport, Param, PluginDef};

/// The tables one library hands the host: built once, on the first entry call, and
/// never changed or freed afterwards (the host keeps pointers into them).
#[derive(Debug)]
pub struct Tables {
    info: RgPluginInfo,
    _exports: Vec<RgExport>,
    _export_ptrs: Vec<*const RgExport>,
    _params: Vec<Vec<RgParam>>,
}

// SAFETY: the raw pointers in the tables point into `'static` strings of the
// `PluginDef`, into the two vectors owned by the same `Tables` (never mutated after
// `build`), and at `'static` vtables; nothing is ever written through them.
unsafe impl Send for Tables {}
// SAFETY: as for `Send`: the tables are immutable after construction.
unsafe impl Sync for Tables {}

fn params_table(params: &'static [Param]) -> Vec<RgParam> {
    params
        .iter()
        .map(|p| RgParam {
            name: RgStr::of(p.name),
            kind: p.kind.code(),
            required: u32::from(p.default.is_none()),
            default: RgStr::of(p.default.unwrap_or("")),
            doc: RgStr::of(p.doc),
        })
        .collect()
}

impl Tables {
    fn build(def: &'static PluginDef) -> Self {
        let mut params = Vec::new();
        let mut exports = Vec::new();
        let flags = |thread_safe: bool| if thread_safe { FLAG_THREAD_SAFE } else { 0 };
        for c in def.compressors {
            let table = params_table(c.params);
            exports.push(RgExport {
                size: std::mem::size_of::<RgExport>() as u32,
                kind: KIND_COMPRESSOR,
                flags: flags(c.thread_safe),
                reserved: 0,
                name: RgStr::of(c.name),
                description: RgStr::of(c.description),
                param_count: table.len(),
                params: table.as_ptr(),
                data: (c as *const CompressorExport).cast(),
                vtable: (&COMPRESSOR_VTABLE as *const RgCompressorVTable).cast(),
            });
            params.push(table);
        }
        for c in def.controllers {
            let table = params_table(c.params);
            exports.push(RgExport {
                size: std::mem::size_of::<RgExport>() as u32,
                kind: KIND_BATCH_CONTROLLER,
                flags: flags(c.thread_safe),
                reserved: 0,
                name: RgStr::of(c.name),
                description: RgStr::of(c.description),
                param_count: table.len(),
                params: table.as_ptr(),
                data: (c as *const ControllerExport).cast(),
                vtable: (&CONTROLLER_VTABLE as *const RgControllerVTable).cast(),
            });
            params.push(table);
        }
        let export_ptrs: Vec<*const RgExport> =
            exports.iter().map(|e| e as *const RgExport).collect();
        let info = RgPluginInfo {
            size: std::mem::size_of::<RgPluginInfo>() as u32,
            abi_major: ABI_MAJOR,
            abi_minor: ABI_MINOR,
            flags: 0,
            name: RgStr::of(def.name),
            version: RgStr::of(def.version),
            export_count: exports.len(),
            exports: export_ptrs.as_ptr(),
        };
        Self {
            info,
            _exports: exports,
            _export_ptrs: export_ptrs,
            _params: params,
        }
    }
}

/// The body of the generated entry point: the library's tables (built on first use),
/// or null if building them panicked. The host checks the major version itself, so
/// `host_abi_major` only documents what the host speaks.
pub fn entry(
    def: &'static PluginDef,
    tables: &'static OnceLock<Tables>,
    host_abi_major: u32,
) -> *const RgPluginInfo {
    let _ = host_abi_major;
    match catch_unwind(|| tables.get_or_init(|| Tables::build(def))) {
        Ok(tables) => &tables.info,
        Err(_) => std::ptr::null(),
    }
}

/// A failure on its way to the host: status, message, argument at fault.
struct Fail {
    status: RgStatus,
    message: String,
    argument: Option<String>,
}

impl Fail {
    fn new(status: RgStatus, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            argument: None,
        }
    }
}

impl From<ArgError> for Fail {
    fn from(error: ArgError) -> Self {
        Self {
            status: STATUS_BAD_ARGS,
            message: error.message,
            argument: error.argument,
        }
    }
}

impl From<CompressError> for Fail {
    fn from(error: CompressError) -> Self {
        match error {
            CompressError::Args(error) => error.into(),
            CompressError::Wire(_) | CompressError::State(_) => {
                Fail::new(STATUS_BAD_INPUT, error.to_string())
            }
            other => Fail::new(STATUS_ERROR, other.to_string()),
        }
    }
}

impl From<ControllerError> for Fail {
    fn from(error: ControllerError) -> Self {
        match error {
            ControllerError::Args(error) => error.into(),
            ControllerError::State(_) => Fail::new(STATUS_BAD_INPUT, error.to_string()),
            other => Fail::new(STATUS_ERROR, other.to_string()),
        }
    }
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-string payload".to_owned())
}

/// Append `bytes` to a host sink.
///
/// # Safety
/// `sink` is null or points at a valid [`RgSink`].
unsafe fn write_sink(sink: *const RgSink, bytes: &[u8]) -> Result<(), Fail> {
    // SAFETY: the caller guarantees `sink` is null or valid.
    let Some(sink) = (unsafe { sink.as_ref() }) else {
        return Err(Fail::new(STATUS_ERROR, "the host passed no output buffer"));
    };
    // SAFETY: `bytes` is valid for `bytes.len()` bytes; the host's `write` copies them.
    match unsafe { (sink.write)(sink.ctx, bytes.as_ptr(), bytes.len()) } {
        STATUS_OK => Ok(()),
        status => Err(Fail::new(
            status,
            format!("the host refused {} bytes of output", bytes.len()),
        )),
    }
}

/// Run `body`; report its failure or panic through `err` and return the status.
///
/// # Safety
/// `err` is null or points at a valid [`RgErrorOut`].
unsafe fn guard(err: *const RgErrorOut, body: impl FnOnce() -> Result<(), Fail>) -> RgStatus {
    let fail = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => return STATUS_OK,
        Ok(Err(fail)) => fail,
        Err(payload) => Fail::new(STATUS_PANIC, panic_message(payload.as_ref())),
    };
    // SAFETY: the caller guarantees `err` is null or valid; a failing write of the
    // message cannot be reported any better than by the status itself.
    if let Some(err) = unsafe { err.as_ref() } {
        let _ = unsafe { write_sink(&err.message, fail.message.as_bytes()) };
        if let Some(argument) = &fail.argument {
            let _ = unsafe { write_sink(&err.argument, argument.as_bytes()) };
        }
    }
    fail.status
}

/// A byte slice from the ABI.
///
/// # Safety
/// `ptr` is valid for `len` bytes (or `len` is 0) for `'a`.
unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> Result<&'a [u8], Fail> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Fail::new(
            STATUS_ERROR,
            "null pointer with a non-zero length",
        ));
    }
    // SAFETY: non-null and, by the caller's guarantee, valid for `len` bytes.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// A `&str` from the ABI.
///
/// # Safety
/// As for [`bytes`].
unsafe fn text<'a>(s: RgStr) -> Result<&'a str, Fail> {
    // SAFETY: forwarded from the caller.
    let raw = unsafe { bytes(s.ptr, s.len) }?;
    std::str::from_utf8(raw).map_err(|_| Fail::new(STATUS_ERROR, "a string that is not UTF-8"))
}

/// The script's arguments.
///
/// # Safety
/// `args` is valid for `count` [`RgArg`]s whose strings are valid.
unsafe fn read_args(args: *const RgArg, count: usize) -> Result<Args, Fail> {
    let mut out = Args::new();
    if count == 0 {
        return Ok(out);
    }
    if args.is_null() {
        return Err(Fail::new(STATUS_ERROR, "null argument list"));
    }
    // SAFETY: non-null and valid for `count` elements by the caller's guarantee.
    let list = unsafe { std::slice::from_raw_parts(args, count) };
    for arg in list {
        // SAFETY: the argument's strings are valid by the caller's guarantee.
        let name = unsafe { text(arg.name) }?;
        let value = match arg.kind {
            ARG_NUMBER => ArgValue::Number(arg.number),
            ARG_TEXT => ArgValue::Text(unsafe { text(arg.text) }?.to_owned()),
            ARG_BOOL => ArgValue::Bool(arg.boolean != 0),
            other => {
                return Err(Fail::new(
                    STATUS_ERROR,
                    format!("argument `{name}` has unknown kind code {other}"),
                ))
            }
        };
        out = out.with(name, value);
    }
    Ok(out)
}

/// What `inst` points at for a compressor.
struct CompressorInstance {
    compressor: Box<dyn Compressor>,
    /// The payload is built here, then copied into the host's sink once.
    scratch: Vec<u8>,
}

/// The instance behind `inst`.
///
/// # Safety
/// `inst` is null or a live pointer `create` returned for an instance of type `T`,
/// used by one thread at a time.
unsafe fn instance<'a, T>(inst: *mut c_void) -> Result<&'a mut T, Fail> {
    // SAFETY: forwarded from the caller.
    unsafe { inst.cast::<T>().as_mut() }
        .ok_or_else(|| Fail::new(STATUS_ERROR, "null instance pointer"))
}

/// An instance whose component keeps state: what the shared `save_state` and
/// `load_state` entry points need of a compressor's or a controller's instance.
trait Stateful {
    /// The component's state, written into the instance's scratch buffer.
    fn save(&mut self) -> Result<&[u8], Fail>;
    /// Restore the component from `state`.
    fn load(&mut self, state: &[u8]) -> Result<(), Fail>;
}

impl Stateful for CompressorInstance {
    fn save(&mut self) -> Result<&[u8], Fail> {
        self.scratch.clear();
        self.compressor.save_state(&mut self.scratch)?;
        Ok(&self.scratch)
    }
    fn load(&mut self, state: &[u8]) -> Result<(), Fail> {
        Ok(self.compressor.load_state(state)?)
    }
}

impl Stateful for ControllerInstance {
    fn save(&mut self) -> Result<&[u8], Fail> {
        self.scratch.clear();
        self.controller.save_state(&mut self.scratch)?;
        Ok(&self.scratch)
    }
    fn load(&mut self, state: &[u8]) -> Result<(), Fail> {
        Ok(self.controller.load_state(state)?)
    }
}

unsafe extern "C" fn save_state<I: Stateful>(
    inst: *mut c_void,
    out: *const RgSink,
    err: *const RgErrorOut,
) -> RgStatus {
    // SAFETY: the ABI's guarantees on every pointer (module doc).
    unsafe {
        guard(err, || {
            let me = instance::<I>(inst)?;
            write_sink(out, me.save()?)
        })
    }
}

unsafe extern "C" fn load_state<I: Stateful>(
    inst: *mut c_void,
    state: *const u8,
    state_len: usize,
    err: *const RgErrorOut,
) -> RgStatus {
    // SAFETY: the ABI's guarantees on every pointer (module doc).
    unsafe {
        guard(err, || {
            let me = instance::<I>(inst)?;
            me.load(bytes(state, state_len)?)
        })
    }
}

fn compressor_info(c: &dyn Compressor) -> RgCompressorInfo {
    let (aggregation, element) = match c.aggregation() {
        Aggregation::Gather => (AGGREGATION_GATHER, ELEMENT_F32),
        Aggregation::Sum(WireElement::F32) => (AGGREGATION_SUM, ELEMENT_F32),
        Aggregation::Sum(WireElement::F16) => (AGGREGATION_SUM, ELEMENT_F16),
        Aggregation::Sum(WireElement::Bf16) => (AGGREGATION_SUM, ELEMENT_BF16),
    };
    RgCompressorInfo {
        size: std::mem::size_of::<RgCompressorInfo>() as u32,
        method_id: u32::from(c.method_id().0),
        aggregation,
        element,
        feedback: match c.feedback() {
            FeedbackPolicy::OffByDefault => FEEDBACK_OFF_BY_DEFAULT,
            FeedbackPolicy::OnByDefault => FEEDBACK_ON_BY_DEFAULT,
            FeedbackPolicy::Internal => FEEDBACK_INTERNAL,
        },
        residual: match c.residual_source() {
            ResidualSource::OwnPayload => RESIDUAL_OWN_PAYLOAD,
            ResidualSource::Aggregate => RESIDUAL_AGGREGATE,
        },
    }
}

/// Check a host struct's leading `size` field: at least the ABI 1.0 size of `T` (the
/// struct may be longer, from a newer host; only the fields this SDK knows are used).
///
/// # Safety
/// `ptr` is valid for reading its `size` field.
unsafe fn host_struct_ok<T>(ptr: *const T, what: &str) -> Result<(), Fail> {
    if ptr.is_null() {
        return Err(Fail::new(STATUS_ERROR, format!("null {what}")));
    }
    // SAFETY: non-null; every sized ABI struct starts with its `size: u32`.
    let size = unsafe { ptr.cast::<u32>().read() } as usize;
    let needed = std::mem::size_of::<T>();
    if size < needed {
        return Err(Fail::new(
            STATUS_ERROR,
            format!("the host's {what} has {size} bytes, ABI 1.0 needs {needed}"),
        ));
    }
    Ok(())
}

/// Write `value` into the host struct at `ptr` (checked by [`host_struct_ok`]), all
/// but its `size` field, which stays the host's.
///
/// # Safety
/// `ptr` passed [`host_struct_ok`] and is valid for writing `size_of::<T>()` bytes.
unsafe fn write_host_struct<T: Copy>(ptr: *mut T, value: &T) {
    let skip = std::mem::size_of::<u32>();
    let len = std::mem::size_of::<T>() - skip;
    // SAFETY: both are valid for `size_of::<T>()` bytes and do not overlap (one is
    // a local).
    unsafe {
        std::ptr::copy_nonoverlapping(
            (value as *const T).cast::<u8>().add(skip),
            ptr.cast::<u8>().add(skip),
            len,
        );
    }
}

/// The step context, converted.
///
/// # Safety
/// `ctx` is valid, with valid scheduled entries.
unsafe fn read_context(
    ctx: *const RgStepContext,
) -> Result<(RgStepContext, Vec<(String, f64)>), Fail> {
    // SAFETY: forwarded from the caller.
    unsafe { host_struct_ok(ctx, "step context") }?;
    // SAFETY: checked non-null and large enough.
    let ctx = unsafe { *ctx };
    let mut scheduled = Vec::with_capacity(ctx.scheduled_len);
    if ctx.scheduled_len > 0 {
        if ctx.scheduled.is_null() {
            return Err(Fail::new(STATUS_ERROR, "null scheduled-argument list"));
        }
        // SAFETY: non-null and valid for `scheduled_len` entries.
        for entry in unsafe { std::slice::from_raw_parts(ctx.scheduled, ctx.scheduled_len) } {
            scheduled.push((unsafe { text(entry.name) }?.to_owned(), entry.value));
        }
    }
    Ok((ctx, scheduled))
}

fn step_context<'a>(ctx: &RgStepContext, scheduled: &'a [(String, f64)]) -> StepContext<'a> {
    StepContext {
        step: ctx.step,
        rank: ctx.rank as usize,
        world: ctx.world as usize,
        seed: ctx.seed,
        tensor: ctx.tensor as usize,
        scheduled,
    }
}

unsafe extern "C" fn compressor_create(
    data: *const c_void,
    args: *const RgArg,
    arg_count: usize,
    inst: *mut *mut c_void,
    info: *mut RgCompressorInfo,
    err: *const RgErrorOut,
) -> RgStatus {
    // SAFETY: `err` is valid per the ABI; so are the pointers used in the body.
    unsafe {
        guard(err, || {
            let export = data
                .cast::<CompressorExport>()
                .as_ref()
                .ok_or_else(|| Fail::new(STATUS_ERROR, "null export data"))?;
            let args = read_args(args, arg_count)?;
            let compressor = (export.build)(&args)?;
            host_struct_ok(info, "compressor info")?;
            let info_value = compressor_info(compressor.as_ref());
            install(
                inst,
                CompressorInstance {
                    compressor,
                    scratch: Vec::new(),
                },
            )?;
            write_host_struct(info, &info_value);
            Ok(())
        })
    }
}

/// Put a new instance into the host's slot `inst`.
///
/// # Safety
/// `inst` is null or valid for a write.
unsafe fn install<T>(inst: *mut *mut c_void, value: T) -> Result<(), Fail> {
    // SAFETY: forwarded from the caller.
    let slot =
        unsafe { inst.as_mut() }.ok_or_else(|| Fail::new(STATUS_ERROR, "null instance slot"))?;
    *slot = Box::into_raw(Box::new(value)).cast();
    Ok(())
}

/// The `destroy` entry of every table: drops what [`install`] put in the slot.
unsafe extern "C" fn destroy<T>(inst: *mut c_void) {
    if inst.is_null() {
        return;
    }
    // SAFETY: `inst` came from `Box::into_raw` in `install::<T>` and the host destroys
    // it once. Dropping the author's value may panic: caught.
    let boxed = unsafe { Box::from_raw(inst.cast::<T>()) };
    let _ = catch_unwind(AssertUnwindSafe(move || drop(boxed)));
}

unsafe extern "C" fn compressor_compress(
    inst: *mut c_void,
    input: *const RgTensor,
    ctx: *const RgStepContext,
    out: *const RgSink,
    err: *const RgErrorOut,
) -> RgStatus {
    // SAFETY: the ABI's guarantees on every pointer (module doc).
    unsafe {
        guard(err, || {
            let me = instance::<CompressorInstance>(inst)?;
            let input = input
                .as_ref()
                .ok_or_else(|| Fail::new(STATUS_ERROR, "null input tensor"))?;
            let name = text(input.name)?;
            let dims = if input.ndim == 0 {
                &[][..]
            } else if input.shape.is_null() {
                return Err(Fail::new(STATUS_ERROR, "null shape"));
            } else {
                std::slice::from_raw_parts(input.shape, input.ndim)
            };
            let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
            let data: &[f32] = if input.len == 0 {
                &[]
            } else if input.data.is_null() {
                return Err(Fail::new(STATUS_ERROR, "null tensor data"));
            } else {
                std::slice::from_raw_parts(input.data, input.len)
            };
            let (ctx, scheduled) = read_context(ctx)?;
            let view = TensorView {
                name,
                shape: &shape,
                data,
            };
            me.scratch.clear();
            me.compressor
                .compress(view, &step_context(&ctx, &scheduled), &mut me.scratch)?;
            write_sink(out, &me.scratch)
        })
    }
}

unsafe extern "C" fn compressor_next_round(
    inst: *mut c_void,
    reduced: *const u8,
    reduced_len: usize,
    ctx: *const RgStepContext,
    out: *const RgSink,
    round: *mut u32,
    err: *const RgErrorOut,
) -> RgStatus {
    // SAFETY: the ABI's guarantees on every pointer (module doc).
    unsafe {
        guard(err, || {
            let me = instance::<CompressorInstance>(inst)?;
            let reduced = bytes(reduced, reduced_len)?;
            let (ctx, scheduled) = read_context(ctx)?;
            let round = round
                .as_mut()
                .ok_or_else(|| Fail::new(STATUS_ERROR, "null round pointer"))?;
            me.scratch.clear();
            let next = me.compressor.next_round(
                reduced,
                &step_context(&ctx, &scheduled),
                &mut me.scratch,
            )?;
            *round = match next {
                Round::More => ROUND_MORE,
                Round::Done => ROUND_DONE,
            };
            if next == Round::More {
                write_sink(out, &me.scratch)?;
            }
            Ok(())
        })
    }
}

unsafe extern "C" fn compressor_decompress_add(
    inst: *mut c_void,
    payload: *const u8,
    payload_len: usize,
    scale: f32,
    out: *mut f32,
    out_len: usize,
    err: *const RgErrorOut,
) -> RgStatus {
    // SAFETY: the ABI's guarantees on every pointer (module doc); `out` is host
    // memory of exactly `out_len` f32s, not aliased during the call.
    unsafe {
        guard(err, || {
            let me = instance::<CompressorInstance>(inst)?;
            let payload = bytes(payload, payload_len)?;
            let out: &mut [f32] = if out_len == 0 {
                &mut []
            } else if out.is_null() {
                return Err(Fail::new(STATUS_ERROR, "null output buffer"));
            } else {
                std::slice::from_raw_parts_mut(out, out_len)
            };
            me.compressor.decompress_add(payload, scale, out)?;
            Ok(())
        })
    }
}

/// The functions behind every compressor export.
static COMPRESSOR_VTABLE: RgCompressorVTable = RgCompressorVTable {
    size: std::mem::size_of::<RgCompressorVTable>() as u32,
    create: compressor_create,
    destroy: destroy::<CompressorInstance>,
    compress: compressor_compress,
    next_round: compressor_next_round,
    decompress_add: compressor_decompress_add,
    save_state: save_state::<CompressorInstance>,
    load_state: load_state::<CompressorInstance>,
};

/// What `inst` points at for a batch controller.
struct ControllerInstance {
    controller: Box<dyn BatchController>,
    scratch: Vec<u8>,
}

fn measured(value: f64) -> Option<f64> {
    (!value.is_nan()).then_some(value)
}

unsafe extern "C" fn controller_create(
    data: *const c_void,
    args: *const RgArg,
    arg_count: usize,
    inst: *mut *mut c_void,
    err: *const RgErrorOut,
) -> RgStatus {
    // SAFETY: the ABI's guarantees on every pointer (module doc).
    unsafe {
        guard(err, || {
            let export = data
                .cast::<ControllerExport>()
                .as_ref()
                .ok_or_else(|| Fail::new(STATUS_ERROR, "null export data"))?;
            let args = read_args(args, arg_count)?;
            let controller = (export.build)(&args)?;
            install(
                inst,
                ControllerInstance {
                    controller,
                    scratch: Vec::new(),
                },
            )
        })
    }
}

unsafe extern "C" fn controller_observe(
    inst: *mut c_void,
    metrics: *const RgBatchMetrics,
    decision: *mut RgBatchDecision,
    err: *const RgErrorOut,
) -> RgStatus {
    // SAFETY: the ABI's guarantees on every pointer (module doc).
    unsafe {
        guard(err, || {
            let me = instance::<ControllerInstance>(inst)?;
            host_struct_ok(metrics, "batch metrics")?;
            host_struct_ok(decision, "batch decision")?;
            let m = *metrics;
            let observed = BatchMetrics {
                step: m.step,
                samples: m.samples,
                samples_per_epoch: (m.samples_per_epoch > 0).then_some(m.samples_per_epoch),
                batch: m.batch,
                loss: measured(m.loss),
                grad_norm: measured(m.grad_norm),
                grad_sq_estimate: measured(m.grad_sq_estimate),
                grad_variance: measured(m.grad_variance),
                lr: measured(m.lr),
            };
            let next = me.controller.observe(&observed)?;
            let answer = RgBatchDecision {
                batch: next.batch,
                lr_scale: next.lr_scale.unwrap_or(f64::NAN),
                ..*decision
            };
            write_host_struct(decision, &answer);
            Ok(())
        })
    }
}

/// The functions behind every batch-controller export.
static CONTROLLER_VTABLE: RgControllerVTable = RgControllerVTable {
    size: std::mem::size_of::<RgControllerVTable>() as u32,
    create: controller_create,
    destroy: destroy::<ControllerInstance>,
    observe: controller_observe,
    save_state: save_state::<ControllerInstance>,
    load_state: load_state::<ControllerInstance>,
};
