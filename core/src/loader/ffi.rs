//! The host side of the plugin C ABI: opening the library, reading the tables its
//! entry point returns, and calling its exports. The only module of `regimen-core`
//! with `unsafe` code. What the plugin hands back is checked before use (sizes,
//! codes, UTF-8, null pointers); what it *does* inside a call cannot be checked — a
//! plugin is native code running in this process, and the ABI's rules (`ABI.md`) are
//! the contract every `// SAFETY:` below relies on.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::path::Path;
use std::sync::{Arc, MutexGuard};

use libloading::Library;
use regimen_plugin::abi::*;
use regimen_plugin::export::ParamKind;
use regimen_plugin::wire::MAX_DIMS;
use regimen_plugin::{
    Aggregation, ArgError, ArgValue, Args, BatchController, BatchDecision, BatchMetrics,
    CompressError, Compressor, ControllerError, FeedbackPolicy, MethodId, PayloadHeader,
    ResidualSource, Round, StepContext, TensorView, WireElement, WireReader,
};

use super::{ParamInfo, Plugin, PluginError};

/// Most bytes a plugin may write into an error message.
const MESSAGE_LIMIT: usize = 64 * 1024;

/// One export as the library described it, checked for sizes and UTF-8.
#[derive(Clone, Debug)]
pub(super) struct RawExport {
    pub kind_code: u32,
    pub flags: u32,
    pub name: String,
    pub description: String,
    pub params: Vec<ParamInfo>,
    data: *const c_void,
    vtable: *const c_void,
}

// SAFETY: `data` and `vtable` point into a library that is never unloaded and are
// only passed back to it; the plugin promises they stay valid and unchanged.
unsafe impl Send for RawExport {}
// SAFETY: as for `Send`; nothing is written through them.
unsafe impl Sync for RawExport {}

/// The script's arguments against the export's declared schema, before the plugin
/// sees them: every name declared (a compressor also takes the host's
/// `error_feedback` switch), every value of the declared kind, every required one
/// given. Plugins still check values; names and kinds are the host's job, with the
/// same messages for every plugin.
fn check_args(raw: &RawExport, args: &Args, compressor: bool) -> Result<(), ArgError> {
    let export = &raw.name;
    for name in args.names() {
        if compressor && name == "error_feedback" {
            continue;
        }
        let Some(param) = raw.params.iter().find(|p| p.name == name) else {
            let known: Vec<String> = raw.params.iter().map(|p| format!("`{}`", p.name)).collect();
            let takes = if known.is_empty() {
                "it takes none".to_owned()
            } else {
                format!("it takes {}", known.join(", "))
            };
            return Err(ArgError::new(
                name,
                format!("`{export}` has no argument `{name}`; {takes}"),
            ));
        };
        let given = match args.get(name) {
            Some(ArgValue::Number(_)) => ParamKind::Number,
            Some(ArgValue::Text(_)) => ParamKind::Text,
            Some(ArgValue::Bool(_)) => ParamKind::Bool,
            None => continue,
        };
        if given != param.kind {
            return Err(ArgError::new(
                name,
                format!(
                    "`{export}` expects a {} for `{name}`, not a {}",
                    param.kind.name(),
                    given.name()
                ),
            ));
        }
    }
    if let Some(missing) = raw
        .params
        .iter()
        .find(|p| p.default.is_none() && args.get(&p.name).is_none())
    {
        return Err(ArgError {
            argument: None,
            message: format!("`{export}` needs the argument `{}`", missing.name),
        });
    }
    Ok(())
}

/// What a library's entry point returned.
pub(super) struct Tables {
    pub abi_major: u32,
    pub abi_minor: u32,
    pub name: String,
    pub version: String,
    pub exports: Vec<RawExport>,
}

/// An owned `String` from borrowed plugin bytes.
///
/// # Safety
/// `s.ptr` is valid for `s.len` bytes (or `s.len` is 0).
unsafe fn read_str(s: RgStr, what: &str) -> Result<String, String> {
    if s.len == 0 {
        return Ok(String::new());
    }
    if s.ptr.is_null() {
        return Err(format!("{what}: null pointer with length {}", s.len));
    }
    // SAFETY: non-null and valid for `len` bytes by the caller's guarantee.
    let bytes = unsafe { std::slice::from_raw_parts(s.ptr, s.len) };
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
}

/// Open the library at `path` and read its tables. The library is leaked: it stays
/// loaded until the process exits.
pub(super) fn open(path: &Path) -> Result<Tables, PluginError> {
    let malformed = |reason: String| PluginError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    // SAFETY: loading a library runs its initialisers; that is what loading a plugin
    // means, and the path was chosen explicitly by the user (and optionally pinned).
    let library = unsafe { Library::new(path) }.map_err(|error| PluginError::NotALibrary {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })?;
    // Never unloaded: instances, tables and strings of the plugin stay valid.
    let library: &'static Library = Box::leak(Box::new(library));
    // SAFETY: the symbol's type is the ABI's `RgEntry`; a library exporting the name
    // with another type breaks the ABI contract.
    let entry: RgEntry = match unsafe { library.get::<RgEntry>(ENTRY_SYMBOL.as_bytes()) } {
        Ok(symbol) => *symbol,
        Err(_) => {
            return Err(PluginError::MissingEntry {
                path: path.to_path_buf(),
            })
        }
    };
    // SAFETY: `entry` is the plugin's entry point; it must not unwind (the SDK's
    // catches panics).
    let info = unsafe { entry(ABI_MAJOR) };
    if info.is_null() {
        return Err(malformed("the entry point returned no tables".into()));
    }
    // The first three fields are the same in every ABI version: read them alone
    // before trusting the size of the rest.
    // SAFETY: `info` is non-null and points at least at `size`, `abi_major`,
    // `abi_minor`, which every version of the struct starts with.
    let (size, abi_major, abi_minor) = unsafe {
        (
            std::ptr::addr_of!((*info).size).read(),
            std::ptr::addr_of!((*info).abi_major).read(),
            std::ptr::addr_of!((*info).abi_minor).read(),
        )
    };
    if abi_major != ABI_MAJOR {
        return Err(PluginError::AbiMismatch {
            path: path.to_path_buf(),
            found: abi_major,
        });
    }
    if (size as usize) < std::mem::size_of::<RgPluginInfo>() {
        return Err(malformed(format!(
            "plugin info of {size} bytes, ABI {ABI_MAJOR}.0 has {}",
            std::mem::size_of::<RgPluginInfo>()
        )));
    }
    // SAFETY: `size` covers the whole struct.
    let info = unsafe { *info };
    // SAFETY: the plugin's strings are valid for their lengths (ABI contract).
    let name = unsafe { read_str(info.name, "plugin name") }.map_err(malformed)?;
    let version = unsafe { read_str(info.version, "plugin version") }.map_err(malformed)?;
    if info.export_count > 0 && info.exports.is_null() {
        return Err(malformed("null export list".into()));
    }
    let pointers = if info.export_count == 0 {
        &[][..]
    } else {
        // SAFETY: non-null and valid for `export_count` pointers (ABI contract).
        unsafe { std::slice::from_raw_parts(info.exports, info.export_count) }
    };
    let mut exports = Vec::with_capacity(pointers.len());
    for (index, &export) in pointers.iter().enumerate() {
        // SAFETY: each entry is null or points at an export whose `size` field is
        // first (ABI contract).
        let Some(size) = (unsafe { export.as_ref() })
            .map(|_| unsafe { std::ptr::addr_of!((*export).size).read() })
        else {
            return Err(malformed(format!("export {index} is a null pointer")));
        };
        if (size as usize) < std::mem::size_of::<RgExport>() {
            return Err(malformed(format!(
                "export {index} has {size} bytes, ABI 1.0 needs {}",
                std::mem::size_of::<RgExport>()
            )));
        }
        // SAFETY: `size` covers the struct.
        let e = unsafe { *export };
        // SAFETY: the plugin's strings are valid for their lengths (ABI contract).
        let export_name = unsafe { read_str(e.name, "export name") }.map_err(malformed)?;
        let description =
            unsafe { read_str(e.description, "export description") }.map_err(malformed)?;
        let mut params = Vec::with_capacity(e.param_count);
        if e.param_count > 0 {
            if e.params.is_null() {
                return Err(malformed(format!("`{export_name}`: null argument schema")));
            }
            // SAFETY: non-null and valid for `param_count` entries (ABI contract).
            for p in unsafe { std::slice::from_raw_parts(e.params, e.param_count) } {
                // SAFETY: as above, for the entry's strings.
                let pname = unsafe { read_str(p.name, "parameter name") }.map_err(malformed)?;
                let kind = ParamKind::from_code(p.kind).ok_or_else(|| {
                    malformed(format!(
                        "`{export_name}`: parameter `{pname}` has unknown kind code {}",
                        p.kind
                    ))
                })?;
                let default =
                    unsafe { read_str(p.default, "parameter default") }.map_err(malformed)?;
                let doc = unsafe { read_str(p.doc, "parameter doc") }.map_err(malformed)?;
                params.push(ParamInfo {
                    name: pname,
                    kind,
                    default: (p.required == 0).then_some(default),
                    doc,
                });
            }
        }
        // (size of the table, offset of its first function pointer)
        let vtable_needed = match e.kind {
            KIND_COMPRESSOR => Some((
                std::mem::size_of::<RgCompressorVTable>(),
                std::mem::offset_of!(RgCompressorVTable, create),
            )),
            KIND_BATCH_CONTROLLER => Some((
                std::mem::size_of::<RgControllerVTable>(),
                std::mem::offset_of!(RgControllerVTable, create),
            )),
            _ => None, // refused by kind later, with its name
        };
        if let Some((needed, first_fn)) = vtable_needed {
            if e.vtable.is_null() {
                return Err(malformed(format!("`{export_name}`: null function table")));
            }
            // SAFETY: non-null; every function table starts with its `size`.
            let vsize = unsafe { e.vtable.cast::<u32>().read() };
            if (vsize as usize) < needed {
                return Err(malformed(format!(
                    "`{export_name}`: function table of {vsize} bytes, ABI 1.0 needs {needed}"
                )));
            }
            // The tables hold Rust fn pointers, which may not be null: a C plugin
            // that leaves a slot empty is refused here, before any copy of the table.
            let slots = (needed - first_fn) / std::mem::size_of::<usize>();
            for slot in 0..slots {
                // SAFETY: the table is at least `needed` bytes (checked above), and
                // from `first_fn` on it is pointer-aligned pointer slots.
                let word = unsafe {
                    e.vtable
                        .cast::<u8>()
                        .add(first_fn)
                        .cast::<usize>()
                        .add(slot)
                        .read()
                };
                if word == 0 {
                    return Err(malformed(format!(
                        "`{export_name}`: function {} of its table is null",
                        slot + 1
                    )));
                }
            }
        }
        exports.push(RawExport {
            kind_code: e.kind,
            flags: e.flags,
            name: export_name,
            description,
            params,
            data: e.data,
            vtable: e.vtable,
        });
    }
    Ok(Tables {
        abi_major,
        abi_minor,
        name,
        version,
        exports,
    })
}

/// A host buffer a plugin appends to, with a size limit.
struct Sink<'a> {
    buf: &'a mut Vec<u8>,
    limit: usize,
    refused: bool,
}

unsafe extern "C" fn sink_write(ctx: *mut c_void, data: *const u8, len: usize) -> RgStatus {
    // SAFETY: `ctx` is the `Sink` this module passed with the call, alive and not
    // otherwise borrowed during it.
    let Some(sink) = (unsafe { ctx.cast::<Sink<'_>>().as_mut() }) else {
        return STATUS_ERROR;
    };
    if len == 0 {
        return STATUS_OK;
    }
    if data.is_null() || sink.buf.len().saturating_add(len) > sink.limit {
        sink.refused = true;
        return STATUS_ERROR;
    }
    // SAFETY: the plugin passes `len` readable bytes at `data` (ABI contract).
    sink.buf
        .extend_from_slice(unsafe { std::slice::from_raw_parts(data, len) });
    STATUS_OK
}

impl<'a> Sink<'a> {
    fn new(buf: &'a mut Vec<u8>, limit: usize) -> Self {
        Self {
            buf,
            limit,
            refused: false,
        }
    }

    fn raw(&mut self) -> RgSink {
        RgSink {
            ctx: (self as *mut Sink<'a>).cast(),
            write: sink_write,
        }
    }
}

/// The message and argument a failing call reports.
#[derive(Default)]
struct Captured {
    message: Vec<u8>,
    argument: Vec<u8>,
}

impl Captured {
    /// Run `call` with an error channel that fills `self`.
    fn call(&mut self, call: impl FnOnce(*const RgErrorOut) -> RgStatus) -> RgStatus {
        let mut message = Sink::new(&mut self.message, MESSAGE_LIMIT);
        let mut argument = Sink::new(&mut self.argument, MESSAGE_LIMIT);
        let out = RgErrorOut {
            message: message.raw(),
            argument: argument.raw(),
        };
        call(&out)
    }

    fn message(&self) -> String {
        let text = String::from_utf8_lossy(&self.message);
        if text.is_empty() {
            "no message".to_owned()
        } else {
            text.into_owned()
        }
    }

    fn argument(&self) -> Option<String> {
        (!self.argument.is_empty()).then(|| String::from_utf8_lossy(&self.argument).into_owned())
    }
}

/// The script's arguments as the ABI passes them (borrowing `args`' strings).
fn raw_args(args: &Args) -> Vec<RgArg> {
    args.names()
        .filter_map(|name| args.get(name).map(|value| (name, value)))
        .map(|(name, value)| {
            let mut arg = RgArg {
                name: RgStr::of(name),
                kind: ARG_NUMBER,
                boolean: 0,
                number: 0.0,
                text: RgStr::EMPTY,
            };
            match value {
                ArgValue::Number(n) => arg.number = *n,
                ArgValue::Text(t) => {
                    arg.kind = ARG_TEXT;
                    arg.text = RgStr::of(t);
                }
                ArgValue::Bool(b) => {
                    arg.kind = ARG_BOOL;
                    arg.boolean = u32::from(*b);
                }
            }
            arg
        })
        .collect()
}

/// A table's `save_state` entry (the same in compressor and controller tables).
type SaveStateFn = unsafe extern "C" fn(*mut c_void, *const RgSink, *const RgErrorOut) -> RgStatus;
/// A table's `load_state` entry.
type LoadStateFn =
    unsafe extern "C" fn(*mut c_void, *const u8, usize, *const RgErrorOut) -> RgStatus;
/// A table's `destroy` entry.
type DestroyFn = unsafe extern "C" fn(*mut c_void);

/// One live instance of a plugin export, whatever its kind: what the compressor and
/// the controller share — its name, its calls' serialization, its state entry
/// points, and its destruction (once, when dropped).
struct Instance {
    plugin: Arc<Plugin>,
    export: usize,
    name: String,
    inst: *mut c_void,
    destroy: DestroyFn,
    save: SaveStateFn,
    load: LoadStateFn,
}

// SAFETY: the instance pointer is owned by this value and only used through its owner's
// `&mut self` (one thread at a time); calls into exports that are not thread-safe also
// hold the library's lock.
unsafe impl Send for Instance {}

impl Instance {
    /// Create an instance of export `export` of `plugin` from `args` through `create`
    /// (which gets the function table, the export's data, the raw arguments, the
    /// instance slot and the error channel); a refusal keeps the argument the plugin
    /// named. `V` is the function table of the export's kind — a compressor's when
    /// `compressor`, else a controller's — and `entries` picks its shared entries.
    fn create<V: Copy>(
        plugin: Arc<Plugin>,
        export: usize,
        args: &Args,
        compressor: bool,
        entries: fn(&V) -> (DestroyFn, SaveStateFn, LoadStateFn),
        create: impl FnOnce(
            &V,
            *const c_void,
            &[RgArg],
            &mut *mut c_void,
            *const RgErrorOut,
        ) -> RgStatus,
    ) -> Result<(Self, V), ArgError> {
        let whole = |message: String| ArgError {
            argument: None,
            message,
        };
        let Some(raw) = plugin.exports.get(export).map(|e| &e.raw) else {
            return Err(whole("no such export".into()));
        };
        let name = raw.name.clone();
        check_args(raw, args, compressor)?;
        // SAFETY: checked at load: non-null, of the kind whose table `V` is, and its
        // size covers the table.
        let vtable = unsafe { *raw.vtable.cast::<V>() };
        let (destroy, save, load) = entries(&vtable);
        let list = raw_args(args);
        let mut inst: *mut c_void = std::ptr::null_mut();
        let mut captured = Captured::default();
        let status = {
            let _serial = plugin.serialize(export);
            captured.call(|err| create(&vtable, raw.data, &list, &mut inst, err))
        };
        if status == STATUS_BAD_ARGS {
            return Err(ArgError {
                argument: captured.argument(),
                message: captured.message(),
            });
        }
        if status != STATUS_OK {
            return Err(whole(failure(&plugin, &name, "create", status, &captured)));
        }
        if inst.is_null() {
            return Err(whole(format!(
                "plugin {}: `{name}` created no instance",
                plugin.path.display()
            )));
        }
        let instance = Self {
            plugin,
            export,
            name,
            inst,
            destroy,
            save,
            load,
        };
        Ok((instance, vtable))
    }

    /// The library's lock, held during a call unless the export is thread-safe.
    fn serialize(&self) -> Option<MutexGuard<'_, ()>> {
        self.plugin.serialize(self.export)
    }

    /// A failed call, in words that name the plugin file and the export.
    fn failure(&self, what: &str, status: RgStatus, captured: &Captured) -> String {
        failure(&self.plugin, &self.name, what, status, captured)
    }

    /// Append the instance's state to `out`; on failure `out` is as it was and the
    /// error is the failure's message.
    fn save_state(&self, out: &mut Vec<u8>) -> Result<(), String> {
        let start = out.len();
        let mut captured = Captured::default();
        let status = {
            let _serial = self.serialize();
            let mut sink = Sink::new(out, usize::MAX);
            let raw_sink = sink.raw();
            // SAFETY: `inst` is live; every pointer is valid for the call.
            captured.call(|err| unsafe { (self.save)(self.inst, &raw_sink, err) })
        };
        if status != STATUS_OK {
            out.truncate(start);
            return Err(self.failure("save_state", status, &captured));
        }
        Ok(())
    }

    /// Restore the instance from `state`.
    fn load_state(&self, state: &[u8]) -> Result<(), String> {
        let mut captured = Captured::default();
        let status = {
            let _serial = self.serialize();
            // SAFETY: `inst` is live; `state` is valid for its length.
            captured.call(|err| unsafe { (self.load)(self.inst, state.as_ptr(), state.len(), err) })
        };
        if status != STATUS_OK {
            return Err(self.failure("load_state", status, &captured));
        }
        Ok(())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _serial = self.serialize();
        // SAFETY: `inst` came from this export's `create` and is destroyed once.
        unsafe { (self.destroy)(self.inst) };
    }
}

/// A failed call, in words that name the plugin file and the export.
fn failure(
    plugin: &Plugin,
    export: &str,
    what: &str,
    status: RgStatus,
    captured: &Captured,
) -> String {
    let path = plugin.path.display();
    let message = captured.message();
    match status {
        STATUS_PANIC => format!("plugin {path}: `{export}` panicked in {what}: {message}"),
        STATUS_BAD_INPUT => {
            format!("plugin {path}: `{export}` could not decode its input in {what}: {message}")
        }
        STATUS_ERROR | STATUS_BAD_ARGS => format!("plugin {path}: `{export}` failed in {what}: {message}"),
        other => format!("plugin {path}: `{export}` returned the unknown status code {other} from {what}: {message}"),
    }
}

/// A compressor running in a plugin: the host's view of one plugin instance.
pub struct PluginCompressor {
    instance: Instance,
    vtable: RgCompressorVTable,
    method: MethodId,
    aggregation: Aggregation,
    feedback: FeedbackPolicy,
    residual: ResidualSource,
}

impl std::fmt::Debug for PluginCompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginCompressor")
            .field("plugin", &self.instance.plugin.path)
            .field("name", &self.instance.name)
            .finish()
    }
}

fn decode_info(
    info: &RgCompressorInfo,
) -> Result<(MethodId, Aggregation, FeedbackPolicy, ResidualSource), String> {
    let method = u16::try_from(info.method_id)
        .map(MethodId)
        .map_err(|_| format!("method id {} does not fit 16 bits", info.method_id))?;
    // Below 0x8000 the ids belong to the built-ins: a plugin claiming one would have
    // its payloads taken for a built-in's.
    if method.0 < 0x8000 {
        return Err(format!(
            "method id {:#06x} is a built-in's; plugin method ids are 0x8000 to 0xffff",
            method.0
        ));
    }
    let element = match info.element {
        ELEMENT_F32 => WireElement::F32,
        ELEMENT_F16 => WireElement::F16,
        ELEMENT_BF16 => WireElement::Bf16,
        code => return Err(format!("unknown element code {code}")),
    };
    let aggregation = match info.aggregation {
        AGGREGATION_GATHER => Aggregation::Gather,
        AGGREGATION_SUM => Aggregation::Sum(element),
        code => return Err(format!("unknown aggregation code {code}")),
    };
    let feedback = match info.feedback {
        FEEDBACK_OFF_BY_DEFAULT => FeedbackPolicy::OffByDefault,
        FEEDBACK_ON_BY_DEFAULT => FeedbackPolicy::OnByDefault,
        FEEDBACK_INTERNAL => FeedbackPolicy::Internal,
        code => return Err(format!("unknown feedback code {code}")),
    };
    let residual = match info.residual {
        RESIDUAL_OWN_PAYLOAD => ResidualSource::OwnPayload,
        RESIDUAL_AGGREGATE => ResidualSource::Aggregate,
        code => return Err(format!("unknown residual code {code}")),
    };
    Ok((method, aggregation, feedback, residual))
}

impl PluginCompressor {
    /// Build an instance of export `export` of `plugin` from `args`; a refusal keeps
    /// the argument the plugin named.
    pub(super) fn create(
        plugin: Arc<Plugin>,
        export: usize,
        args: &Args,
    ) -> Result<Self, ArgError> {
        let mut info = RgCompressorInfo {
            size: std::mem::size_of::<RgCompressorInfo>() as u32,
            ..Default::default()
        };
        let (instance, vtable) = Instance::create(
            plugin,
            export,
            args,
            true,
            |t: &RgCompressorVTable| (t.destroy, t.save_state, t.load_state),
            |t, data, list, inst, err| {
                // SAFETY: every pointer is valid for the call; `data` is the export's.
                unsafe { (t.create)(data, list.as_ptr(), list.len(), inst, &mut info, err) }
            },
        )?;
        let decoded = decode_info(&info);
        let mut made = Self {
            instance,
            vtable,
            method: MethodId::NONE,
            aggregation: Aggregation::Gather,
            feedback: FeedbackPolicy::OffByDefault,
            residual: ResidualSource::OwnPayload,
        };
        match decoded {
            Ok((method, aggregation, feedback, residual)) => {
                made.method = method;
                made.aggregation = aggregation;
                made.feedback = feedback;
                made.residual = residual;
                Ok(made)
            }
            // `made` is dropped here, which destroys the instance.
            Err(reason) => Err(ArgError {
                argument: None,
                message: format!(
                    "plugin {}: `{}` described itself wrongly: {reason}",
                    made.instance.plugin.path.display(),
                    made.instance.name
                ),
            }),
        }
    }

    fn fail(&self, what: &str, status: RgStatus, captured: &Captured) -> CompressError {
        CompressError::Failed(self.instance.failure(what, status, captured))
    }

    /// Check a payload the plugin wrote for a tensor of `numel` elements.
    fn check_payload(
        &self,
        payload: &[u8],
        numel: usize,
        tensor: &str,
    ) -> Result<(), CompressError> {
        let wrong = |reason: String| {
            CompressError::Failed(format!(
                "plugin {}: `{}` wrote a wrong payload for `{tensor}`: {reason}",
                self.instance.plugin.path.display(),
                self.instance.name
            ))
        };
        let (_, mut reader): (PayloadHeader, WireReader<'_>) =
            PayloadHeader::parse(payload, self.method, numel).map_err(|e| wrong(e.to_string()))?;
        if let Aggregation::Sum(element) = self.aggregation {
            let data = reader.rest().len();
            if data % element.size() != 0 {
                return Err(wrong(format!(
                    "a summed data section of {data} bytes is not a whole number of {} elements",
                    element.name()
                )));
            }
        }
        Ok(())
    }

    /// Most bytes one payload of `numel` elements may take.
    fn payload_limit(numel: usize) -> usize {
        (16 + 4 * MAX_DIMS)
            .saturating_add(numel.saturating_mul(16))
            .saturating_add(1 << 20)
    }
}

/// The ABI's step context, borrowing `scheduled`.
fn raw_context(ctx: &StepContext<'_>, scheduled: &[RgScheduled]) -> RgStepContext {
    RgStepContext {
        size: std::mem::size_of::<RgStepContext>() as u32,
        reserved: 0,
        step: ctx.step,
        rank: ctx.rank as u64,
        world: ctx.world as u64,
        seed: ctx.seed,
        tensor: ctx.tensor as u64,
        scheduled_len: scheduled.len(),
        scheduled: scheduled.as_ptr(),
    }
}

fn raw_scheduled(ctx: &StepContext<'_>) -> Vec<RgScheduled> {
    ctx.scheduled
        .iter()
        .map(|(name, value)| RgScheduled {
            name: RgStr::of(name),
            value: *value,
        })
        .collect()
}

impl Compressor for PluginCompressor {
    fn name(&self) -> &str {
        &self.instance.name
    }

    fn method_id(&self) -> MethodId {
        self.method
    }

    fn aggregation(&self) -> Aggregation {
        self.aggregation
    }

    fn feedback(&self) -> FeedbackPolicy {
        self.feedback
    }

    fn residual_source(&self) -> ResidualSource {
        self.residual
    }

    fn compress(
        &mut self,
        input: TensorView<'_>,
        ctx: &StepContext<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), CompressError> {
        let shape: Vec<u64> = input.shape.iter().map(|&d| d as u64).collect();
        let tensor = RgTensor {
            name: RgStr::of(input.name),
            shape: shape.as_ptr(),
            ndim: shape.len(),
            data: input.data.as_ptr(),
            len: input.data.len(),
        };
        let scheduled = raw_scheduled(ctx);
        let raw_ctx = raw_context(ctx, &scheduled);
        let start = out.len();
        let limit = start.saturating_add(Self::payload_limit(input.data.len()));
        let mut captured = Captured::default();
        let (status, refused) = {
            let _serial = self.instance.serialize();
            let mut sink = Sink::new(out, limit);
            let raw_sink = sink.raw();
            // SAFETY: `inst` is live; every pointer is valid for the call.
            let status = captured.call(|err| unsafe {
                (self.vtable.compress)(self.instance.inst, &tensor, &raw_ctx, &raw_sink, err)
            });
            (status, sink.refused)
        };
        if status != STATUS_OK {
            out.truncate(start);
            if refused {
                return Err(CompressError::Failed(format!(
                    "plugin {}: `{}` wrote more than {} bytes for `{}` ({} elements)",
                    self.instance.plugin.path.display(),
                    self.instance.name,
                    Self::payload_limit(input.data.len()),
                    input.name,
                    input.data.len()
                )));
            }
            return Err(self.fail("compress", status, &captured));
        }
        let checked = self.check_payload(&out[start..], input.data.len(), input.name);
        if checked.is_err() {
            out.truncate(start);
        }
        checked
    }

    fn next_round(
        &mut self,
        reduced: &[u8],
        ctx: &StepContext<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Round, CompressError> {
        let scheduled = raw_scheduled(ctx);
        let raw_ctx = raw_context(ctx, &scheduled);
        let start = out.len();
        // The next round is at most as large as a dense f32 tensor of the reduced
        // payload's element count allows (checked from its header below).
        let limit = start.saturating_add(reduced.len().saturating_mul(16).saturating_add(1 << 20));
        let mut round = ROUND_DONE;
        let mut captured = Captured::default();
        let status = {
            let _serial = self.instance.serialize();
            let mut sink = Sink::new(out, limit);
            let raw_sink = sink.raw();
            // SAFETY: `inst` is live; every pointer is valid for the call.
            captured.call(|err| unsafe {
                (self.vtable.next_round)(
                    self.instance.inst,
                    reduced.as_ptr(),
                    reduced.len(),
                    &raw_ctx,
                    &raw_sink,
                    &mut round,
                    err,
                )
            })
        };
        if status != STATUS_OK {
            out.truncate(start);
            return Err(self.fail("next_round", status, &captured));
        }
        match round {
            ROUND_DONE => {
                // "Done" sends nothing more: whatever the plugin appended is dropped.
                out.truncate(start);
                Ok(Round::Done)
            }
            ROUND_MORE => {
                let numel = PayloadHeader::read(&mut WireReader::new(reduced))
                    .map(|h| h.numel as usize)
                    .unwrap_or(0);
                let checked = self.check_payload(&out[start..], numel, "the next round");
                if checked.is_err() {
                    out.truncate(start);
                }
                checked.map(|()| Round::More)
            }
            code => Err(CompressError::Failed(format!(
                "plugin {}: `{}` answered the unknown round code {code}",
                self.instance.plugin.path.display(),
                self.instance.name
            ))),
        }
    }

    fn decompress_add(
        &mut self,
        payload: &[u8],
        scale: f32,
        out: &mut [f32],
    ) -> Result<(), CompressError> {
        let mut captured = Captured::default();
        let status = {
            let _serial = self.instance.serialize();
            // SAFETY: `inst` is live; `payload` and `out` are valid for their lengths
            // and `out` is not aliased during the call.
            captured.call(|err| unsafe {
                (self.vtable.decompress_add)(
                    self.instance.inst,
                    payload.as_ptr(),
                    payload.len(),
                    scale,
                    out.as_mut_ptr(),
                    out.len(),
                    err,
                )
            })
        };
        if status != STATUS_OK {
            return Err(self.fail("decompress_add", status, &captured));
        }
        Ok(())
    }

    fn save_state(&self, out: &mut Vec<u8>) -> Result<(), CompressError> {
        self.instance.save_state(out).map_err(CompressError::Failed)
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), CompressError> {
        self.instance
            .load_state(state)
            .map_err(CompressError::State)
    }
}

/// A batch controller running in a plugin.
pub struct PluginController {
    instance: Instance,
    vtable: RgControllerVTable,
}

impl std::fmt::Debug for PluginController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginController")
            .field("plugin", &self.instance.plugin.path)
            .field("name", &self.instance.name)
            .finish()
    }
}

fn nan_if_none(value: Option<f64>) -> f64 {
    value.unwrap_or(f64::NAN)
}

impl PluginController {
    pub(super) fn create(
        plugin: Arc<Plugin>,
        export: usize,
        args: &Args,
    ) -> Result<Self, ArgError> {
        let (instance, vtable) = Instance::create(
            plugin,
            export,
            args,
            false,
            |t: &RgControllerVTable| (t.destroy, t.save_state, t.load_state),
            |t, data, list, inst, err| {
                // SAFETY: every pointer is valid for the call; `data` is the export's.
                unsafe { (t.create)(data, list.as_ptr(), list.len(), inst, err) }
            },
        )?;
        Ok(Self { instance, vtable })
    }

    fn fail(&self, what: &str, status: RgStatus, captured: &Captured) -> ControllerError {
        ControllerError::Failed(self.instance.failure(what, status, captured))
    }
}

impl BatchController for PluginController {
    fn name(&self) -> &str {
        &self.instance.name
    }

    fn observe(&mut self, metrics: &BatchMetrics) -> Result<BatchDecision, ControllerError> {
        let raw = RgBatchMetrics {
            size: std::mem::size_of::<RgBatchMetrics>() as u32,
            reserved: 0,
            step: metrics.step,
            samples: metrics.samples,
            samples_per_epoch: metrics.samples_per_epoch.unwrap_or(0),
            batch: metrics.batch,
            loss: nan_if_none(metrics.loss),
            grad_norm: nan_if_none(metrics.grad_norm),
            grad_sq_estimate: nan_if_none(metrics.grad_sq_estimate),
            grad_variance: nan_if_none(metrics.grad_variance),
            lr: nan_if_none(metrics.lr),
        };
        let mut decision = RgBatchDecision {
            size: std::mem::size_of::<RgBatchDecision>() as u32,
            reserved: 0,
            batch: 0,
            lr_scale: f64::NAN,
        };
        let mut captured = Captured::default();
        let status = {
            let _serial = self.instance.serialize();
            // SAFETY: `inst` is live; every pointer is valid for the call.
            captured.call(|err| unsafe {
                (self.vtable.observe)(self.instance.inst, &raw, &mut decision, err)
            })
        };
        if status != STATUS_OK {
            return Err(self.fail("observe", status, &captured));
        }
        let wrong = |what: String| {
            ControllerError::Failed(format!(
                "plugin {}: `{}` answered {what} at step {}",
                self.instance.plugin.path.display(),
                self.instance.name,
                metrics.step
            ))
        };
        if decision.batch == 0 {
            return Err(wrong("a batch size of 0".into()));
        }
        let lr_scale = if decision.lr_scale.is_nan() {
            None
        } else if decision.lr_scale.is_finite() && decision.lr_scale > 0.0 {
            Some(decision.lr_scale)
        } else {
            return Err(wrong(format!("an lr scale of {}", decision.lr_scale)));
        };
        Ok(BatchDecision {
            batch: decision.batch,
            lr_scale,
        })
    }

    fn save_state(&self, out: &mut Vec<u8>) -> Result<(), ControllerError> {
        self.instance
            .save_state(out)
            .map_err(ControllerError::Failed)
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), ControllerError> {
        self.instance
            .load_state(state)
            .map_err(ControllerError::State)
    }
}
