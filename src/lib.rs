//! Regimen: steer neural-network training with checked, traceable schedule scripts.
//!
//! A `*.regimen` script describes how hyperparameters (learning rate, momentum, …)
//! evolve step by step. This crate is the facade over the workspace:
//!
//! - [`dsl`] parses, checks, formats and compiles scripts (re-exported from
//!   `regimen-dsl`);
//! - [`core`] evaluates the compiled scalar graph and records [`Trace`]s
//!   (re-exported from `regimen-core`);
//! - [`trace_file`] and [`trace_source`] go from a script straight to a [`Trace`];
//! - [`output`] renders a trace as a table, JSON or YAML, and [`plot`] draws it (SVG
//!   or PNG);
//! - [`assert_trace_snapshot!`] pins a script's trace in an `insta` snapshot in *your*
//!   crate's tests (feature `snapshot`, on by default).
//!
//! ```
//! use regimen::{trace_source, TraceOptions};
//!
//! let script = "horizon 100 steps\nlr = linear(0.001 -> 0.1, over: 10 steps) then cosine(0.1 -> 0)\n";
//! let trace = trace_source("warmup.regimen", script, &TraceOptions::default())?;
//! let lr = trace.column("lr").unwrap_or_default();
//! assert_eq!(lr.len(), 100); // the horizon
//! assert!((lr[10] - 0.1).abs() < 1e-12); // warmup done: the peak
//! # Ok::<(), regimen::Error>(())
//! ```

use std::path::{Path, PathBuf};

pub mod output;
pub mod plot;

pub use regimen_core as core;
pub use regimen_dsl as dsl;

pub use regimen_core::{
    format_value, round_significant, GraphError, ScalarGraph, Trace, TraceRecord,
    SNAPSHOT_SIGNIFICANT_DIGITS,
};
pub use regimen_dsl::{CompileOptions, Compiled, Diagnostic, Report, Severity, SourceFile};

/// `insta`, re-exported so that [`assert_trace_snapshot!`] works in crates that do
/// not depend on it themselves. Not part of the public API.
#[cfg(feature = "snapshot")]
#[doc(hidden)]
pub use insta as __insta;

/// Everything that can go wrong between a script and its trace.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The script file could not be read.
    #[error("cannot read `{}`", path.display())]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The script has errors. The [`Report`]'s `Display` is the full rendering:
    /// `file:line:col`, the source line, a caret and a suggestion per problem.
    #[error("{0}")]
    Compile(Report),
    /// The script sets no `horizon` and no step count was given.
    #[error("`{name}` sets no horizon, so the number of steps to trace must be given")]
    MissingSteps {
        /// The script's name.
        name: String,
    },
    /// The compiled graph is malformed (a bug in the compiler, never the user's).
    #[error("internal error: the compiled graph of `{name}` is invalid")]
    Graph {
        /// The script's name.
        name: String,
        /// What is wrong with the graph.
        #[source]
        source: GraphError,
    },
}

impl Error {
    /// The message followed by its causes: `cannot read `a.regimen`: No such file or
    /// directory (os error 2)`. (`Display` shows the message alone, as the causes are
    /// reachable through [`std::error::Error::source`].)
    pub fn to_string_with_causes(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

impl From<Report> for Error {
    fn from(report: Report) -> Self {
        Error::Compile(report)
    }
}

/// How to turn a script into a [`Trace`].
#[derive(Clone, Debug, PartialEq)]
pub struct TraceOptions {
    /// Number of steps to evaluate (`0..steps`); `None` means the script's horizon.
    pub steps: Option<u64>,
    /// Keep every `every`-th step (and always the last one). `0` is treated as `1`.
    pub every: u64,
    /// Steps per epoch, overriding the script's `epoch = N steps`.
    pub steps_per_epoch: Option<f64>,
    /// Samples per step, overriding the script's batch size.
    pub batch_size: Option<f64>,
}

impl Default for TraceOptions {
    /// Every step up to the horizon, with the script's own epoch and batch settings.
    fn default() -> Self {
        Self {
            steps: None,
            every: 1,
            steps_per_epoch: None,
            batch_size: None,
        }
    }
}

impl TraceOptions {
    /// Trace `steps` steps (instead of the horizon).
    pub fn with_steps(mut self, steps: u64) -> Self {
        self.steps = Some(steps);
        self
    }

    /// Keep every `every`-th step.
    pub fn with_every(mut self, every: u64) -> Self {
        self.every = every;
        self
    }

    /// Set the number of steps per epoch.
    pub fn with_steps_per_epoch(mut self, steps_per_epoch: f64) -> Self {
        self.steps_per_epoch = Some(steps_per_epoch);
        self
    }

    /// Set the number of samples per step.
    pub fn with_batch_size(mut self, batch_size: f64) -> Self {
        self.batch_size = Some(batch_size);
        self
    }

    /// The compiler settings these options imply.
    pub fn compile_options(&self) -> CompileOptions {
        CompileOptions {
            steps_per_epoch: self.steps_per_epoch,
            batch_size: self.batch_size,
        }
    }
}

/// Read a script from disk. The returned source is named by `path` as given, so
/// diagnostics point at the same path the user wrote.
pub fn read_source(path: impl AsRef<Path>) -> Result<SourceFile, Error> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let name = path.display().to_string();
    match String::from_utf8(bytes) {
        Ok(text) => Ok(SourceFile::new(name, text)),
        Err(error) => {
            // Point at the first bad byte; the bytes before it are valid, so the
            // lossy text has the same offsets up to there.
            let offset = error.utf8_error().valid_up_to();
            let bad = error.as_bytes().get(offset).copied().unwrap_or(0);
            let text = String::from_utf8_lossy(error.as_bytes()).into_owned();
            let diagnostic = regimen_dsl::Diagnostic::error(
                regimen_dsl::Span::new(offset, offset + 1),
                format!("the file is not UTF-8 text (byte {bad:#04x})"),
            )
            .with_label("not UTF-8")
            .with_help("save the script as UTF-8");
            Err(Error::Compile(Report {
                file: SourceFile::new(name, text),
                diagnostics: vec![diagnostic],
            }))
        }
    }
}

/// Compile a script with the epoch and batch settings of `options`. Warnings are in
/// [`Compiled::warnings`].
pub fn compile(file: &SourceFile, options: &TraceOptions) -> Result<Compiled, Error> {
    Ok(regimen_dsl::compile(file, &options.compile_options())?)
}

/// The number of steps `options` asks for: `options.steps`, else the horizon.
pub fn steps_to_trace(
    compiled: &Compiled,
    name: &str,
    options: &TraceOptions,
) -> Result<u64, Error> {
    options
        .steps
        .or_else(|| compiled.horizon_steps())
        .ok_or_else(|| Error::MissingSteps {
            name: name.to_string(),
        })
}

/// Evaluate an already compiled script. `name` is only used in error messages.
pub fn trace_compiled(
    compiled: &Compiled,
    name: &str,
    options: &TraceOptions,
) -> Result<Trace, Error> {
    let steps = steps_to_trace(compiled, name, options)?;
    Trace::from_graph(&compiled.graph, steps, options.every.max(1)).map_err(|source| Error::Graph {
        name: name.to_string(),
        source,
    })
}

/// Compile the script `text` (named `name` in diagnostics) and evaluate every scalar
/// it defines, step by step.
pub fn trace_source(name: &str, text: &str, options: &TraceOptions) -> Result<Trace, Error> {
    let file = SourceFile::new(name, text);
    let compiled = compile(&file, options)?;
    trace_compiled(&compiled, name, options)
}

/// Read, compile and evaluate the script at `path`.
pub fn trace_file(path: impl AsRef<Path>, options: &TraceOptions) -> Result<Trace, Error> {
    let file = read_source(path)?;
    let compiled = compile(&file, options)?;
    trace_compiled(&compiled, &file.name, options)
}

/// What [`assert_trace_snapshot!`] records. Built by the macro; public only so that
/// the macro can reach it from other crates.
#[doc(hidden)]
#[derive(Clone, Debug)]
pub struct SnapshotRequest {
    /// The script's path, as written in the macro call.
    pub path: String,
    /// Snapshot name; defaults to the script's file stem.
    pub name: Option<String>,
    /// Trace settings.
    pub options: TraceOptions,
}

#[doc(hidden)]
impl SnapshotRequest {
    /// A request for `path` with default options.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            name: None,
            options: TraceOptions::default(),
        }
    }

    /// The snapshot's name, its contents (the rounded trace as CSV), and a one-line
    /// description of how it was made. `manifest_dir` is the calling crate's
    /// `CARGO_MANIFEST_DIR`, against which a relative path is resolved.
    pub fn render(&self, manifest_dir: &str) -> Result<(String, String, String), Error> {
        let relative = Path::new(&self.path);
        let full = if relative.is_absolute() {
            relative.to_path_buf()
        } else {
            Path::new(manifest_dir).join(relative)
        };
        let text = std::fs::read_to_string(&full).map_err(|source| Error::Io {
            path: full.clone(),
            source,
        })?;
        let trace = trace_source(&self.path, &text, &self.options)?;
        let csv = trace.rounded(SNAPSHOT_SIGNIFICANT_DIGITS).to_csv();
        let name = match &self.name {
            Some(name) => name.clone(),
            None => relative
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .unwrap_or_else(|| "trace".to_string()),
        };
        let mut description = format!("regimen trace {} --format csv", self.path);
        if let Some(steps) = self.options.steps {
            description.push_str(&format!(" --steps {steps}"));
        }
        if self.options.every > 1 {
            description.push_str(&format!(" --every {}", self.options.every));
        }
        if let Some(e) = self.options.steps_per_epoch {
            description.push_str(&format!(" --steps-per-epoch {e}"));
        }
        if let Some(b) = self.options.batch_size {
            description.push_str(&format!(" --batch-size {b}"));
        }
        description.push_str(&format!(
            " (values rounded to {SNAPSHOT_SIGNIFICANT_DIGITS} significant digits)"
        ));
        Ok((name, csv, description))
    }
}

/// Snapshot-test the trace of a script with [`insta`](https://insta.rs).
///
/// ```no_run
/// #[test]
/// fn warmup_cosine() {
///     regimen::assert_trace_snapshot!("schedules/warmup_cosine.regimen", steps = 100);
/// }
/// ```
///
/// The path is resolved against the calling crate's `CARGO_MANIFEST_DIR`. The script
/// is compiled and evaluated, every value is rounded to
/// [`SNAPSHOT_SIGNIFICANT_DIGITS`] significant digits (so last-ulp differences between
/// platforms never show), and the trace is compared, as CSV with one line per step,
/// against `snapshots/<test file>__<name>.snap` next to the calling test — review new
/// or changed snapshots with `cargo insta review`.
///
/// Options, all optional, as `key = value` after the path:
/// - `steps = N` — steps to trace (default: the script's horizon);
/// - `every = K` — keep every K-th step (and the last);
/// - `steps_per_epoch = E`, `batch_size = B` — override the script's settings;
/// - `name = "…"` — the snapshot name (default: the script's file stem).
///
/// Panics (failing the test) when the script cannot be read, does not compile, or
/// the trace differs from the accepted snapshot.
#[cfg(feature = "snapshot")]
#[macro_export]
macro_rules! assert_trace_snapshot {
    (@option $request:ident, steps, $value:expr) => {
        $request.options.steps = ::std::option::Option::Some(($value) as u64);
    };
    (@option $request:ident, every, $value:expr) => {
        $request.options.every = ($value) as u64;
    };
    (@option $request:ident, steps_per_epoch, $value:expr) => {
        $request.options.steps_per_epoch = ::std::option::Option::Some(($value) as f64);
    };
    (@option $request:ident, batch_size, $value:expr) => {
        $request.options.batch_size = ::std::option::Option::Some(($value) as f64);
    };
    (@option $request:ident, name, $value:expr) => {
        $request.name = ::std::option::Option::Some(::std::string::ToString::to_string(&$value));
    };
    ($path:expr $(, $key:ident = $value:expr)* $(,)?) => {{
        #[allow(unused_mut)]
        let mut __request = $crate::SnapshotRequest::new($path);
        $( $crate::assert_trace_snapshot!(@option __request, $key, $value); )*
        let (__name, __csv, __description) =
            match __request.render(::std::env!("CARGO_MANIFEST_DIR")) {
                ::std::result::Result::Ok(rendered) => rendered,
                ::std::result::Result::Err(error) => ::std::panic!(
                    "assert_trace_snapshot!: cannot trace `{}`:\n{}",
                    __request.path,
                    error.to_string_with_causes()
                ),
            };
        let mut __settings = $crate::__insta::Settings::clone_current();
        __settings.set_description(__description);
        __settings.set_omit_expression(true);
        __settings.bind(|| {
            $crate::__insta::assert_snapshot!(__name, __csv);
        });
    }};
}
