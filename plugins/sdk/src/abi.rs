//! The C ABI between the host and a plugin shared library, version
//! [`ABI_MAJOR`].[`ABI_MINOR`]: plain `#[repr(C)]` structs, integer codes and
//! `extern "C"` function pointers, so either side may be written in any language.
//! `ABI.md` beside this crate is the reference (with a C header); this module is its
//! Rust spelling.
//!
//! Rules every type here follows:
//! - a struct that may grow starts with `size: u32`, its size in bytes as the writer
//!   built it; fields are only ever appended, and a reader uses a field only when
//!   `size` covers it;
//! - kinds, element types, statuses and policies are `u32` codes, never Rust enums
//!   (an unknown code is an error, not undefined behaviour);
//! - every pointer travels with its length; strings are UTF-8, not NUL-terminated;
//! - memory is never freed across the boundary: output bytes go through a host
//!   [`RgSink`] (the host appends them to its own buffer), dense outputs into a
//!   host-sized buffer with an explicit length, and what the plugin returns at load
//!   time (the [`RgPluginInfo`] tables) stays alive and unchanged until the process
//!   exits;
//! - every call returns an [`RgStatus`] code and may report a message (and the
//!   argument at fault) through an [`RgErrorOut`].

use std::ffi::c_void;

/// The ABI major version: a host refuses a plugin of another major version.
pub const ABI_MAJOR: u32 = 1;
/// The ABI minor version: additions only (appended fields, new codes).
pub const ABI_MINOR: u32 = 0;

/// The one symbol a plugin exports:
/// `const RgPluginInfo *regimen_plugin_entry(uint32_t host_abi_major)`.
pub const ENTRY_SYMBOL: &str = "regimen_plugin_entry";

/// The entry point's type. It may return null when it cannot serve
/// `host_abi_major`; it must not unwind.
pub type RgEntry = unsafe extern "C" fn(host_abi_major: u32) -> *const RgPluginInfo;

/// Status codes every call returns.
pub type RgStatus = u32;
/// Success.
pub const STATUS_OK: RgStatus = 0;
/// Failure; the message says why.
pub const STATUS_ERROR: RgStatus = 1;
/// The arguments were refused; the message says why, the argument names the culprit.
pub const STATUS_BAD_ARGS: RgStatus = 2;
/// The plugin panicked (caught at the boundary); the message is the panic's.
pub const STATUS_PANIC: RgStatus = 3;
/// A payload or saved state did not decode.
pub const STATUS_BAD_INPUT: RgStatus = 4;

/// Export kinds.
pub const KIND_COMPRESSOR: u32 = 1;
/// A batch-size controller.
pub const KIND_BATCH_CONTROLLER: u32 = 2;

/// Export flag: instances may be called from several threads at once (each instance
/// from one thread at a time). Without it the host serializes every call into the
/// library.
pub const FLAG_THREAD_SAFE: u32 = 1;

/// Argument value kinds ([`RgArg::kind`], [`RgParam::kind`]).
pub const ARG_NUMBER: u32 = 0;
/// A string (or a bare word).
pub const ARG_TEXT: u32 = 1;
/// `true` / `false`.
pub const ARG_BOOL: u32 = 2;

/// Aggregation codes ([`RgCompressorInfo::aggregation`]).
pub const AGGREGATION_GATHER: u32 = 0;
/// Data sections are summed (allreduce); [`RgCompressorInfo::element`] says of what.
pub const AGGREGATION_SUM: u32 = 1;

/// Wire element codes ([`RgCompressorInfo::element`]).
pub const ELEMENT_F32: u32 = 0;
/// IEEE half precision.
pub const ELEMENT_F16: u32 = 1;
/// bfloat16.
pub const ELEMENT_BF16: u32 = 2;

/// Feedback policy codes ([`RgCompressorInfo::feedback`]).
pub const FEEDBACK_OFF_BY_DEFAULT: u32 = 0;
/// On unless the script turns it off.
pub const FEEDBACK_ON_BY_DEFAULT: u32 = 1;
/// The method accumulates itself; the host keeps no residual.
pub const FEEDBACK_INTERNAL: u32 = 2;

/// Residual source codes ([`RgCompressorInfo::residual`]).
pub const RESIDUAL_OWN_PAYLOAD: u32 = 0;
/// The averaged aggregate.
pub const RESIDUAL_AGGREGATE: u32 = 1;

/// Round codes written by `next_round`.
pub const ROUND_DONE: u32 = 0;
/// `out` holds the next round's payload.
pub const ROUND_MORE: u32 = 1;

/// Borrowed UTF-8 bytes (not NUL-terminated). `ptr` may be null when `len` is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RgStr {
    /// First byte.
    pub ptr: *const u8,
    /// Number of bytes.
    pub len: usize,
}

/// Borrowed bytes.
pub type RgBytes = RgStr;

/// A host-owned growable byte buffer: the plugin appends with `write(ctx, data, len)`,
/// which copies the bytes into host memory and returns [`STATUS_OK`] (or an error
/// status when the host refuses, e.g. past a size limit).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RgSink {
    /// The host's buffer; opaque to the plugin.
    pub ctx: *mut c_void,
    /// Append `len` bytes at `data`.
    pub write: unsafe extern "C" fn(ctx: *mut c_void, data: *const u8, len: usize) -> RgStatus,
}

/// Where a failing call reports why: a message (UTF-8) and, for
/// [`STATUS_BAD_ARGS`], the name of the argument at fault.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RgErrorOut {
    /// The message, in plain words.
    pub message: RgSink,
    /// The argument at fault (left empty for the call as a whole).
    pub argument: RgSink,
}

/// One named argument from the script.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RgArg {
    /// The argument's name.
    pub name: RgStr,
    /// [`ARG_NUMBER`], [`ARG_TEXT`] or [`ARG_BOOL`].
    pub kind: u32,
    /// The value when `kind` is [`ARG_BOOL`]: 0 or 1.
    pub boolean: u32,
    /// The value when `kind` is [`ARG_NUMBER`].
    pub number: f64,
    /// The value when `kind` is [`ARG_TEXT`].
    pub text: RgStr,
}

/// One parameter of an export's argument schema (for `regimen plugin inspect` and
/// the host's diagnostics).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RgParam {
    /// The parameter's name.
    pub name: RgStr,
    /// [`ARG_NUMBER`], [`ARG_TEXT`] or [`ARG_BOOL`].
    pub kind: u32,
    /// 1 when the script must give it.
    pub required: u32,
    /// The default, as the script would write it (empty when required).
    pub default: RgStr,
    /// One line of documentation.
    pub doc: RgStr,
}

/// What the plugin's entry point returns: the library's name and its exports.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RgPluginInfo {
    /// `size_of::<RgPluginInfo>()` as the plugin built it.
    pub size: u32,
    /// The plugin's [`ABI_MAJOR`]; a host of another major refuses it.
    pub abi_major: u32,
    /// The plugin's [`ABI_MINOR`].
    pub abi_minor: u32,
    /// Reserved, 0.
    pub flags: u32,
    /// The library's name (for messages and `inspect`).
    pub name: RgStr,
    /// The library's version string.
    pub version: RgStr,
    /// Number of exports.
    pub export_count: usize,
    /// The exports: an array of `export_count` pointers (pointers, so that
    /// [`RgExport`] can grow without changing the array's stride).
    pub exports: *const *const RgExport,
}

/// One named component the library exports.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RgExport {
    /// `size_of::<RgExport>()` as the plugin built it.
    pub size: u32,
    /// [`KIND_COMPRESSOR`] or [`KIND_BATCH_CONTROLLER`].
    pub kind: u32,
    /// [`FLAG_THREAD_SAFE`] or 0.
    pub flags: u32,
    /// Reserved, 0.
    pub reserved: u32,
    /// The script name (`natural`).
    pub name: RgStr,
    /// One line saying what it does.
    pub description: RgStr,
    /// Number of schema entries.
    pub param_count: usize,
    /// The argument schema ([`RgParam`] is frozen for ABI 1: new schema fields
    /// would come as a new table appended to this struct).
    pub params: *const RgParam,
    /// Passed back unchanged to `create`.
    pub data: *const c_void,
    /// An [`RgCompressorVTable`] or an [`RgControllerVTable`], by `kind`.
    pub vtable: *const c_void,
}

/// What a compressor instance declares when it is created.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RgCompressorInfo {
    /// `size_of::<RgCompressorInfo>()` as the *host* built it (the plugin writes only
    /// the fields it covers).
    pub size: u32,
    /// The payload method id (`>= 0x8000` for plugins).
    pub method_id: u32,
    /// [`AGGREGATION_GATHER`] or [`AGGREGATION_SUM`].
    pub aggregation: u32,
    /// The summed element type: [`ELEMENT_F32`], [`ELEMENT_F16`], [`ELEMENT_BF16`].
    pub element: u32,
    /// [`FEEDBACK_OFF_BY_DEFAULT`], [`FEEDBACK_ON_BY_DEFAULT`], [`FEEDBACK_INTERNAL`].
    pub feedback: u32,
    /// [`RESIDUAL_OWN_PAYLOAD`] or [`RESIDUAL_AGGREGATE`].
    pub residual: u32,
}

/// One tensor handed to a compressor.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RgTensor {
    /// The parameter's name.
    pub name: RgStr,
    /// The dimensions.
    pub shape: *const u64,
    /// Number of dimensions.
    pub ndim: usize,
    /// The elements, row-major.
    pub data: *const f32,
    /// Number of elements (the product of the shape).
    pub len: usize,
}

/// The current value of a scheduled argument.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RgScheduled {
    /// The argument's name.
    pub name: RgStr,
    /// Its value at this step.
    pub value: f64,
}

/// Where and when a compressor is called (the SDK's `StepContext`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RgStepContext {
    /// `size_of::<RgStepContext>()` as the host built it.
    pub size: u32,
    /// Reserved, 0.
    pub reserved: u32,
    /// The step.
    pub step: u64,
    /// This worker's rank.
    pub rank: u64,
    /// Number of workers.
    pub world: u64,
    /// The run's seed.
    pub seed: u64,
    /// The tensor's index among the bound parameters.
    pub tensor: u64,
    /// Number of scheduled arguments.
    pub scheduled_len: usize,
    /// The scheduled arguments' values.
    pub scheduled: *const RgScheduled,
}

/// A compressor export's functions. `inst` is what `create` wrote.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RgCompressorVTable {
    /// `size_of::<RgCompressorVTable>()` as the plugin built it.
    pub size: u32,
    /// Build an instance from the arguments; writes it to `*inst` and its properties
    /// to `*info`.
    pub create: unsafe extern "C" fn(
        data: *const c_void,
        args: *const RgArg,
        arg_count: usize,
        inst: *mut *mut c_void,
        info: *mut RgCompressorInfo,
        err: *const RgErrorOut,
    ) -> RgStatus,
    /// Free an instance (the plugin frees what the plugin allocated).
    pub destroy: unsafe extern "C" fn(inst: *mut c_void),
    /// Append the payload of `input` to `out`.
    pub compress: unsafe extern "C" fn(
        inst: *mut c_void,
        input: *const RgTensor,
        ctx: *const RgStepContext,
        out: *const RgSink,
        err: *const RgErrorOut,
    ) -> RgStatus,
    /// Multi-round summable methods: read the reduced payload; append the next one
    /// and write [`ROUND_MORE`] to `*round`, or write [`ROUND_DONE`].
    pub next_round: unsafe extern "C" fn(
        inst: *mut c_void,
        reduced: *const u8,
        reduced_len: usize,
        ctx: *const RgStepContext,
        out: *const RgSink,
        round: *mut u32,
        err: *const RgErrorOut,
    ) -> RgStatus,
    /// `out[0..out_len] += scale · decode(payload)`; `out` is host memory of exactly
    /// `out_len` f32s.
    pub decompress_add: unsafe extern "C" fn(
        inst: *mut c_void,
        payload: *const u8,
        payload_len: usize,
        scale: f32,
        out: *mut f32,
        out_len: usize,
        err: *const RgErrorOut,
    ) -> RgStatus,
    /// Append the instance's state to `out`.
    pub save_state: unsafe extern "C" fn(
        inst: *mut c_void,
        out: *const RgSink,
        err: *const RgErrorOut,
    ) -> RgStatus,
    /// Restore what `save_state` wrote.
    pub load_state: unsafe extern "C" fn(
        inst: *mut c_void,
        state: *const u8,
        state_len: usize,
        err: *const RgErrorOut,
    ) -> RgStatus,
}

/// Per-step observations a batch controller receives. `NaN` means "not measured".
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RgBatchMetrics {
    /// `size_of::<RgBatchMetrics>()` as the host built it.
    pub size: u32,
    /// Reserved, 0.
    pub reserved: u32,
    /// The step that just ran.
    pub step: u64,
    /// Samples seen so far, this step's included.
    pub samples: u64,
    /// Samples per epoch (the dataset size), 0 when unknown.
    pub samples_per_epoch: u64,
    /// The batch size of the step that just ran.
    pub batch: u64,
    /// The step's training loss.
    pub loss: f64,
    /// ‖g‖ of the averaged (whole-batch) gradient.
    pub grad_norm: f64,
    /// An unbiased estimate of ‖G‖², the true gradient's squared norm.
    pub grad_sq_estimate: f64,
    /// An estimate of tr Σ, the per-sample gradient variance.
    pub grad_variance: f64,
    /// The learning rate the step used.
    pub lr: f64,
}

/// A batch controller's answer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RgBatchDecision {
    /// `size_of::<RgBatchDecision>()` as the host built it.
    pub size: u32,
    /// Reserved, 0.
    pub reserved: u32,
    /// The next step's batch size (≥ 1).
    pub batch: u64,
    /// The factor to multiply the scheduled lr by, or `NaN` for none.
    pub lr_scale: f64,
}

/// A batch-controller export's functions.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RgControllerVTable {
    /// `size_of::<RgControllerVTable>()` as the plugin built it.
    pub size: u32,
    /// Build an instance from the arguments.
    pub create: unsafe extern "C" fn(
        data: *const c_void,
        args: *const RgArg,
        arg_count: usize,
        inst: *mut *mut c_void,
        err: *const RgErrorOut,
    ) -> RgStatus,
    /// Free an instance.
    pub destroy: unsafe extern "C" fn(inst: *mut c_void),
    /// Observe one step and decide the next batch size.
    pub observe: unsafe extern "C" fn(
        inst: *mut c_void,
        metrics: *const RgBatchMetrics,
        decision: *mut RgBatchDecision,
        err: *const RgErrorOut,
    ) -> RgStatus,
    /// Append the instance's state to `out`.
    pub save_state: unsafe extern "C" fn(
        inst: *mut c_void,
        out: *const RgSink,
        err: *const RgErrorOut,
    ) -> RgStatus,
    /// Restore what `save_state` wrote.
    pub load_state: unsafe extern "C" fn(
        inst: *mut c_void,
        state: *const u8,
        state_len: usize,
        err: *const RgErrorOut,
    ) -> RgStatus,
}

impl RgStr {
    /// Borrow `s` (the pointer lives as long as `s`).
    pub fn of(s: &str) -> Self {
        Self {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// An empty string.
    pub const EMPTY: RgStr = RgStr {
        ptr: std::ptr::null(),
        len: 0,
    };
}
