//! The author's side of a plugin: describe each exported component (its script name,
//! argument schema, whether it is thread-safe, and the function that builds it from
//! the script's arguments) and hand the list to [`export_plugin!`](crate::export_plugin),
//! which generates the library's C entry point. The generated code is the SDK's
//! (`ffi`): an author writes no `unsafe` and no `extern "C"`.
//!
//! ```
//! use regimen_plugin::export::{CompressorExport, Param, PluginDef};
//! # use regimen_plugin::*;
//! # struct Mine;
//! # impl Compressor for Mine {
//! #     fn name(&self) -> &str { "mine" }
//! #     fn method_id(&self) -> MethodId { MethodId(0x8F00) }
//! #     fn aggregation(&self) -> Aggregation { Aggregation::Sum(WireElement::F32) }
//! #     fn compress(&mut self, input: TensorView<'_>, _: &StepContext<'_>, out: &mut Vec<u8>) -> Result<(), CompressError> {
//! #         PayloadHeader::new(self.method_id(), input.shape)?.write(out);
//! #         out.extend(input.data.iter().flat_map(|x| x.to_le_bytes()));
//! #         Ok(())
//! #     }
//! #     fn decompress_add(&mut self, payload: &[u8], scale: f32, out: &mut [f32]) -> Result<(), CompressError> {
//! #         let (_, mut data) = PayloadHeader::parse(payload, self.method_id(), out.len())?;
//! #         let values = data.bytes(4 * out.len())?.chunks_exact(4);
//! #         for (o, x) in out.iter_mut().zip(values) {
//! #             *o += scale * f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
//! #         }
//! #         Ok(())
//! #     }
//! # }
//! fn build(args: &Args) -> Result<Box<dyn Compressor>, ArgError> {
//!     let _ratio = args.number("ratio", Some(0.01))?;
//!     Ok(Box::new(Mine))
//! }
//! pub const PLUGIN: PluginDef = PluginDef {
//!     name: "my-compressors",
//!     version: "0.1.0",
//!     compressors: &[CompressorExport {
//!         name: "mine",
//!         description: "what it does, in one line",
//!         params: &[Param::number("ratio", "share of the elements kept").default("0.01")],
//!         thread_safe: true,
//!         build,
//!     }],
//!     controllers: &[],
//! };
//! // In the cdylib crate: regimen_plugin::export_plugin!(PLUGIN);
//! # let mine = (PLUGIN.compressors[0].build)(&Args::new()).unwrap();
//! # regimen_plugin::conformance::check_compressor(|| (PLUGIN.compressors[0].build)(&Args::new()).unwrap()).unwrap();
//! # assert_eq!(mine.name(), "mine");
//! ```

use crate::args::{ArgError, Args};
use crate::batch::BatchController;
use crate::compress::Compressor;

/// The kind of value a parameter takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// A number (a length arrives in steps for a compressor, in samples for a batch
    /// controller).
    Number,
    /// A string or bare word.
    Text,
    /// `true` / `false`.
    Bool,
}

impl ParamKind {
    /// The ABI code.
    pub const fn code(self) -> u32 {
        match self {
            ParamKind::Number => crate::abi::ARG_NUMBER,
            ParamKind::Text => crate::abi::ARG_TEXT,
            ParamKind::Bool => crate::abi::ARG_BOOL,
        }
    }

    /// The kind of an ABI code.
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            crate::abi::ARG_NUMBER => Some(ParamKind::Number),
            crate::abi::ARG_TEXT => Some(ParamKind::Text),
            crate::abi::ARG_BOOL => Some(ParamKind::Bool),
            _ => None,
        }
    }

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            ParamKind::Number => "number",
            ParamKind::Text => "string",
            ParamKind::Bool => "bool",
        }
    }
}

/// One entry of an export's argument schema. Required unless given a default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param {
    /// The argument's name.
    pub name: &'static str,
    /// Its kind.
    pub kind: ParamKind,
    /// Its default as a script would write it; `None` when required.
    pub default: Option<&'static str>,
    /// One line of documentation.
    pub doc: &'static str,
}

impl Param {
    /// A required number.
    pub const fn number(name: &'static str, doc: &'static str) -> Self {
        Self {
            name,
            kind: ParamKind::Number,
            default: None,
            doc,
        }
    }

    /// A required string.
    pub const fn text(name: &'static str, doc: &'static str) -> Self {
        Self {
            name,
            kind: ParamKind::Text,
            default: None,
            doc,
        }
    }

    /// A required boolean.
    pub const fn bool(name: &'static str, doc: &'static str) -> Self {
        Self {
            name,
            kind: ParamKind::Bool,
            default: None,
            doc,
        }
    }

    /// The same parameter, optional with `default`.
    pub const fn default(mut self, default: &'static str) -> Self {
        self.default = Some(default);
        self
    }
}

/// Builds a compressor from the script's arguments.
pub type BuildCompressorFn = fn(&Args) -> Result<Box<dyn Compressor>, ArgError>;
/// Builds a batch controller from the script's arguments.
pub type BuildControllerFn = fn(&Args) -> Result<Box<dyn BatchController>, ArgError>;

/// An exported compressor.
#[derive(Clone, Copy, Debug)]
pub struct CompressorExport {
    /// The script name (`compress NAME(…)`).
    pub name: &'static str,
    /// One line saying what it does.
    pub description: &'static str,
    /// The argument schema (shown by `regimen plugin inspect`).
    pub params: &'static [Param],
    /// Instances may run on several threads at once (each instance on one thread at
    /// a time); otherwise the host serializes every call into the library.
    pub thread_safe: bool,
    /// Builds one instance (one per tensor per worker).
    pub build: BuildCompressorFn,
}

/// An exported batch controller.
#[derive(Clone, Copy, Debug)]
pub struct ControllerExport {
    /// The script name (`batch NAME(…)`).
    pub name: &'static str,
    /// One line saying what it does.
    pub description: &'static str,
    /// The argument schema.
    pub params: &'static [Param],
    /// See [`CompressorExport::thread_safe`].
    pub thread_safe: bool,
    /// Builds one instance.
    pub build: BuildControllerFn,
}

/// Everything one library exports.
#[derive(Clone, Copy, Debug)]
pub struct PluginDef {
    /// The library's name (for messages and `inspect`).
    pub name: &'static str,
    /// Its version (`env!("CARGO_PKG_VERSION")`).
    pub version: &'static str,
    /// Its compressors.
    pub compressors: &'static [CompressorExport],
    /// Its batch controllers.
    pub controllers: &'static [ControllerExport],
}

/// Export a [`PluginDef`] as the library's C entry point
/// ([`ENTRY_SYMBOL`](crate::abi::ENTRY_SYMBOL)). Use once, at the root of a `cdylib`
/// crate; the argument must be a constant expression.
#[macro_export]
macro_rules! export_plugin {
    ($def:expr) => {
        /// The Regimen plugin entry point (generated by `regimen_plugin::export_plugin!`).
        #[no_mangle]
        pub extern "C" fn regimen_plugin_entry(
            host_abi_major: u32,
        ) -> *const $crate::abi::RgPluginInfo {
            static DEF: $crate::export::PluginDef = $def;
            static TABLES: ::std::sync::OnceLock<$crate::ffi::Tables> =
                ::std::sync::OnceLock::new();
            $crate::ffi::entry(&DEF, &TABLES, host_abi_major)
        }
    };
}
