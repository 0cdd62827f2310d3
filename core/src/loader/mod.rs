//! The plugin loader: opens a plugin shared library by explicit path, checks it
//! (optional SHA-256 pin, entry symbol, ABI major version, export kinds, names), and
//! makes its exports usable like built-ins — a [`PluginCompressor`] is a
//! [`Compressor`], a [`PluginController`] a [`BatchController`], and
//! [`Plugin::register`] adds the compressors to a [`CompressorRegistry`].
//!
//! Rules the host keeps (see `plugins/sdk/ABI.md`):
//! - only the path given is opened — no search of the working directory; the DSL
//!   resolves `plugin "…"` against the script's folder and `--plugin-path` first;
//! - a loaded library is never unloaded (it stays mapped until the process exits), so
//!   no instance, table or string it handed out can dangle; loading the same file
//!   again returns the same [`Plugin`];
//! - calls into an export that does not declare itself thread-safe are serialized
//!   through one lock per library;
//! - every failure is an error naming the file and the problem; nothing a plugin
//!   returns is trusted — payload headers, lengths, codes and sizes are checked.
//!
//! All `unsafe` code of the host side lives in [`ffi`](self) (the private module
//! `ffi.rs`); this module is safe Rust.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use regimen_plugin::abi::{self, ABI_MAJOR};
use regimen_plugin::export::ParamKind;
use regimen_plugin::{ArgError, Args, BatchController, Compressor};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::compress::BUILTIN_METHODS;
use crate::runtime::CompressorRegistry;

mod ffi;

pub use ffi::{PluginCompressor, PluginController};

/// Why a plugin could not be loaded or used. Every variant names the file.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PluginError {
    /// Nothing at the path.
    #[error("plugin {path}: file not found")]
    NotFound {
        /// The path tried.
        path: PathBuf,
    },
    /// The file could not be read (for its checksum).
    #[error("plugin {path}: cannot read the file: {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The system's reason.
        reason: String,
    },
    /// A `sha256` pin that is not 64 hex digits.
    #[error("plugin {path}: the sha256 pin `{pin}` is not 64 hexadecimal digits")]
    BadPin {
        /// The file.
        path: PathBuf,
        /// The pin as written.
        pin: String,
    },
    /// The file's SHA-256 differs from the pin (checked before loading anything).
    #[error(
        "plugin {path}: sha256 is {actual}, the script pins {expected}; the library was not loaded"
    )]
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// The pin.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// The dynamic loader refused the file.
    #[error("plugin {path}: not a loadable shared library: {reason}")]
    NotALibrary {
        /// The file.
        path: PathBuf,
        /// The loader's message.
        reason: String,
    },
    /// The library lacks the entry symbol.
    #[error("plugin {path}: not a Regimen plugin: it has no `{}` symbol (export one with `regimen_plugin::export_plugin!`)", abi::ENTRY_SYMBOL)]
    MissingEntry {
        /// The file.
        path: PathBuf,
    },
    /// The plugin speaks another ABI major version.
    #[error("plugin {path}: built for plugin ABI {found}, this Regimen speaks ABI {ABI_MAJOR}; rebuild it against regimen-plugin {ABI_MAJOR}.x")]
    AbiMismatch {
        /// The file.
        path: PathBuf,
        /// The plugin's major version.
        found: u32,
    },
    /// An export of a kind this host does not know.
    #[error("plugin {path}: export `{export}` has unknown kind code {code} (known: 1 compressor, 2 batch controller)")]
    UnknownKind {
        /// The file.
        path: PathBuf,
        /// The export's name.
        export: String,
        /// Its kind code.
        code: u32,
    },
    /// An export named like a built-in or like another plugin's export.
    #[error("plugin {path}: export `{name}` clashes with {other}; rename it in the plugin")]
    NameClash {
        /// The file.
        path: PathBuf,
        /// The name.
        name: String,
        /// What it clashes with ("the built-in compressor `topk`").
        other: String,
    },
    /// The tables the plugin returned are malformed.
    #[error("plugin {path}: malformed plugin tables: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The library has no export of that name and kind.
    #[error("plugin {path}: exports no {kind} named `{name}`")]
    NoSuchExport {
        /// The file.
        path: PathBuf,
        /// The kind asked for.
        kind: &'static str,
        /// The name asked for.
        name: String,
    },
    /// The export refused its arguments or failed to build.
    #[error("plugin {path}: `{name}`: {error}")]
    Args {
        /// The file.
        path: PathBuf,
        /// The export.
        name: String,
        /// The refusal (its `argument` names the culprit).
        error: ArgError,
    },
}

/// What an export is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportKind {
    /// A gradient compressor (`compress NAME(…)`).
    Compressor,
    /// A batch-size controller (`batch NAME(…)`).
    BatchController,
}

impl ExportKind {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            ExportKind::Compressor => "compressor",
            ExportKind::BatchController => "batch controller",
        }
    }
}

/// One entry of an export's argument schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamInfo {
    /// The argument's name.
    pub name: String,
    /// Its kind.
    pub kind: ParamKind,
    /// Its default as a script would write it; `None` when required.
    pub default: Option<String>,
    /// One line of documentation.
    pub doc: String,
}

/// One export of a loaded plugin.
#[derive(Clone, Debug)]
pub struct ExportInfo {
    /// Its kind.
    pub kind: ExportKind,
    /// Its script name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// Whether it may be called from several threads at once.
    pub thread_safe: bool,
    /// Its argument schema.
    pub params: Vec<ParamInfo>,
    raw: ffi::RawExport,
}

/// A loaded plugin library. Shared (`Arc`) by everything built from it; the library
/// itself is never unloaded.
pub struct Plugin {
    path: PathBuf,
    name: String,
    version: String,
    abi: (u32, u32),
    sha256: String,
    exports: Vec<ExportInfo>,
    /// Serializes calls into exports that are not thread-safe.
    calls: Mutex<()>,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field("name", &self.name)
            .field(
                "exports",
                &self.exports.iter().map(|e| &e.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Plugins are the same when they are the same file (loading it again returns the
/// same library).
impl PartialEq for Plugin {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.sha256 == other.sha256
    }
}

/// Libraries loaded so far, by canonical path (never unloaded).
fn loaded() -> MutexGuard<'static, HashMap<PathBuf, Arc<Plugin>>> {
    static LOADED: OnceLock<Mutex<HashMap<PathBuf, Arc<Plugin>>>> = OnceLock::new();
    LOADED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Lowercase hex of a digest.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of the file at `path`, in lowercase hex.
pub fn file_sha256(path: &Path) -> Result<String, PluginError> {
    let bytes = std::fs::read(path).map_err(|error| PluginError::Unreadable {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })?;
    Ok(hex(&Sha256::digest(&bytes)))
}

impl Plugin {
    /// Load the plugin at `path` (used as given: relative paths are relative to the
    /// working directory). With `sha256`, the file's digest must equal it (64 hex
    /// digits, any case) before anything is loaded.
    pub fn load(path: &Path, sha256: Option<&str>) -> Result<Arc<Plugin>, PluginError> {
        let err_path = path.to_path_buf();
        if !path.is_file() {
            return Err(PluginError::NotFound { path: err_path });
        }
        let digest = file_sha256(path)?;
        if let Some(pin) = sha256 {
            if pin.len() != 64 || !pin.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(PluginError::BadPin {
                    path: err_path,
                    pin: pin.to_owned(),
                });
            }
            if !pin.eq_ignore_ascii_case(&digest) {
                return Err(PluginError::ChecksumMismatch {
                    path: err_path,
                    expected: pin.to_ascii_lowercase(),
                    actual: digest,
                });
            }
        }
        let canonical = path
            .canonicalize()
            .map_err(|error| PluginError::Unreadable {
                path: err_path.clone(),
                reason: error.to_string(),
            })?;
        let mut cache = loaded();
        if let Some(plugin) = cache.get(&canonical) {
            return Ok(Arc::clone(plugin));
        }
        let tables = ffi::open(path)?;
        let plugin = Arc::new(Self::check(path, digest, tables)?);
        cache.insert(canonical, Arc::clone(&plugin));
        Ok(plugin)
    }

    /// The checks on the tables a library returned.
    fn check(path: &Path, sha256: String, tables: ffi::Tables) -> Result<Plugin, PluginError> {
        let err_path = || path.to_path_buf();
        if tables.abi_major != ABI_MAJOR {
            return Err(PluginError::AbiMismatch {
                path: err_path(),
                found: tables.abi_major,
            });
        }
        let mut exports: Vec<ExportInfo> = Vec::new();
        for raw in tables.exports {
            let kind = match raw.kind_code {
                abi::KIND_COMPRESSOR => ExportKind::Compressor,
                abi::KIND_BATCH_CONTROLLER => ExportKind::BatchController,
                code => {
                    return Err(PluginError::UnknownKind {
                        path: err_path(),
                        export: raw.name,
                        code,
                    })
                }
            };
            if kind == ExportKind::Compressor && BUILTIN_METHODS.contains(&raw.name.as_str()) {
                return Err(PluginError::NameClash {
                    path: err_path(),
                    other: format!("the built-in compressor `{}`", raw.name),
                    name: raw.name,
                });
            }
            if exports.iter().any(|e| e.name == raw.name) {
                return Err(PluginError::NameClash {
                    path: err_path(),
                    other: "another export of the same library".to_owned(),
                    name: raw.name,
                });
            }
            if raw.name.is_empty()
                || !raw
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                || raw.name.starts_with(|c: char| c.is_ascii_digit())
            {
                return Err(PluginError::Malformed {
                    path: err_path(),
                    reason: format!("export name `{}` is not a script identifier", raw.name),
                });
            }
            exports.push(ExportInfo {
                kind,
                name: raw.name.clone(),
                description: raw.description.clone(),
                thread_safe: raw.flags & abi::FLAG_THREAD_SAFE != 0,
                params: raw.params.clone(),
                raw,
            });
        }
        Ok(Plugin {
            path: path.to_path_buf(),
            name: tables.name,
            version: tables.version,
            abi: (tables.abi_major, tables.abi_minor),
            sha256,
            exports,
            calls: Mutex::new(()),
        })
    }

    /// The path it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The library's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The library's version string.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The ABI version the plugin was built for (major, minor).
    pub fn abi(&self) -> (u32, u32) {
        self.abi
    }

    /// The file's SHA-256 (lowercase hex), for pinning it in a script.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Everything the library exports.
    pub fn exports(&self) -> &[ExportInfo] {
        &self.exports
    }

    /// The export `name` of `kind`, if any.
    pub fn export(&self, kind: ExportKind, name: &str) -> Option<&ExportInfo> {
        self.exports
            .iter()
            .find(|e| e.kind == kind && e.name == name)
    }

    fn find(&self, kind: ExportKind, name: &str) -> Result<usize, PluginError> {
        self.exports
            .iter()
            .position(|e| e.kind == kind && e.name == name)
            .ok_or_else(|| PluginError::NoSuchExport {
                path: self.path.clone(),
                kind: kind.name(),
                name: name.to_owned(),
            })
    }

    /// The lock a call into `export` holds: the library's, unless the export is
    /// thread-safe.
    fn serialize(&self, export: usize) -> Option<MutexGuard<'_, ()>> {
        let thread_safe = self.exports.get(export).is_some_and(|e| e.thread_safe);
        (!thread_safe).then(|| {
            self.calls
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        })
    }

    /// A new instance of the compressor `name`, built from `args`.
    pub fn compressor(
        self: &Arc<Self>,
        name: &str,
        args: &Args,
    ) -> Result<PluginCompressor, PluginError> {
        let export = self.find(ExportKind::Compressor, name)?;
        PluginCompressor::create(Arc::clone(self), export, args).map_err(|error| {
            PluginError::Args {
                path: self.path.clone(),
                name: name.to_owned(),
                error,
            }
        })
    }

    /// A new instance of the batch controller `name`, built from `args`.
    pub fn controller(
        self: &Arc<Self>,
        name: &str,
        args: &Args,
    ) -> Result<PluginController, PluginError> {
        let export = self.find(ExportKind::BatchController, name)?;
        PluginController::create(Arc::clone(self), export, args).map_err(|error| {
            PluginError::Args {
                path: self.path.clone(),
                name: name.to_owned(),
                error,
            }
        })
    }

    /// `registry` with every compressor this plugin exports.
    pub fn register(self: &Arc<Self>, mut registry: CompressorRegistry) -> CompressorRegistry {
        for (index, export) in self.exports.iter().enumerate() {
            if export.kind != ExportKind::Compressor {
                continue;
            }
            let plugin = Arc::clone(self);
            registry = registry.with_method(export.name.clone(), move |args: &Args| {
                Ok(
                    Box::new(PluginCompressor::create(Arc::clone(&plugin), index, args)?)
                        as Box<dyn Compressor>,
                )
            });
        }
        registry
    }

    /// A human-readable listing: name, version, ABI, checksum, and every export with
    /// its argument schema (what `regimen plugin inspect` prints).
    pub fn describe(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(out, "plugin   {}", self.path.display());
        let _ = writeln!(out, "name     {} {}", self.name, self.version);
        let _ = writeln!(out, "abi      {}.{}", self.abi.0, self.abi.1);
        let _ = writeln!(out, "sha256   {}", self.sha256);
        for export in &self.exports {
            let _ = writeln!(
                out,
                "\n{} `{}`{}",
                export.kind.name(),
                export.name,
                if export.thread_safe {
                    ""
                } else {
                    " (calls serialized: not thread-safe)"
                }
            );
            if !export.description.is_empty() {
                let _ = writeln!(out, "  {}", export.description);
            }
            if export.params.is_empty() {
                let _ = writeln!(out, "  no arguments");
            }
            for p in &export.params {
                let default = match &p.default {
                    Some(d) => format!("default {d}"),
                    None => "required".to_owned(),
                };
                let _ = writeln!(
                    out,
                    "  {}: {} ({default}){}",
                    p.name,
                    p.kind.name(),
                    if p.doc.is_empty() {
                        String::new()
                    } else {
                        format!(" — {}", p.doc)
                    }
                );
            }
        }
        out
    }
}

/// Compressors and batch controllers made from a set of plugins (a script's `plugin`
/// statements), looked up by export name.
#[derive(Clone, Debug, Default)]
pub struct PluginSet {
    plugins: Vec<Arc<Plugin>>,
}

impl PartialEq for PluginSet {
    fn eq(&self, other: &Self) -> bool {
        self.plugins.len() == other.plugins.len()
            && self
                .plugins
                .iter()
                .zip(&other.plugins)
                .all(|(a, b)| **a == **b)
    }
}

impl PluginSet {
    /// No plugins.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `plugin`; refused when one of its exports has the name of an export of a
    /// plugin already in the set (adding the same library twice changes nothing).
    pub fn add(&mut self, plugin: Arc<Plugin>) -> Result<(), PluginError> {
        if self.plugins.iter().any(|p| Arc::ptr_eq(p, &plugin)) {
            return Ok(());
        }
        for export in plugin.exports() {
            if let Some(other) = self.owner(&export.name) {
                return Err(PluginError::NameClash {
                    path: plugin.path().to_path_buf(),
                    name: export.name.clone(),
                    other: format!("the export of plugin {}", other.path().display()),
                });
            }
        }
        self.plugins.push(plugin);
        Ok(())
    }

    /// The plugins, in the order added.
    pub fn plugins(&self) -> &[Arc<Plugin>] {
        &self.plugins
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// The plugin exporting `name` (of any kind).
    pub fn owner(&self, name: &str) -> Option<&Arc<Plugin>> {
        self.plugins
            .iter()
            .find(|p| p.exports().iter().any(|e| e.name == name))
    }

    /// The export `name` of `kind` and its plugin.
    pub fn find(&self, kind: ExportKind, name: &str) -> Option<(&Arc<Plugin>, &ExportInfo)> {
        self.plugins
            .iter()
            .find_map(|p| p.export(kind, name).map(|e| (p, e)))
    }

    /// The names of every export of `kind`.
    pub fn names(&self, kind: ExportKind) -> Vec<&str> {
        self.plugins
            .iter()
            .flat_map(|p| p.exports().iter())
            .filter(|e| e.kind == kind)
            .map(|e| e.name.as_str())
            .collect()
    }

    /// `registry` with every plugin compressor.
    pub fn register(&self, registry: CompressorRegistry) -> CompressorRegistry {
        self.plugins
            .iter()
            .fold(registry, |registry, plugin| plugin.register(registry))
    }

    /// A registry of the built-ins and every plugin compressor.
    pub fn registry(&self) -> CompressorRegistry {
        self.register(CompressorRegistry::new())
    }

    /// A batch controller `name` from any plugin of the set.
    pub fn controller(
        &self,
        name: &str,
        args: &Args,
    ) -> Option<Result<Box<dyn BatchController>, PluginError>> {
        let (plugin, _) = self.find(ExportKind::BatchController, name)?;
        Some(
            plugin
                .controller(name, args)
                .map(|c| Box::new(c) as Box<dyn BatchController>),
        )
    }
}
