//! The Regimen language: `*.regimen` scripts are parsed (pest, `grammar/regimen.pest`)
//! into an AST with spans, checked, and compiled into a [`regimen_core::ScalarGraph`]
//! (every hyperparameter, as a schedule) and a [`regimen_core::Strategy`] (optimizer,
//! parameter groups, layer decay, precision).
//! Every problem becomes a [`Diagnostic`] with a span; bad input never panics.

pub mod ast;
pub mod compile;
pub mod diagnostic;
pub mod format;
pub mod parse;

pub use compile::{CompileOptions, Compiled, KNOWN_SCALARS};
pub use diagnostic::{Diagnostic, Report, Severity, SourceFile, Span};

/// Parse, check and compile a script. On success the warnings are in
/// [`Compiled::warnings`]; on failure the [`Report`] holds every error found.
pub fn compile(file: &SourceFile, options: &CompileOptions) -> Result<Compiled, Report> {
    let script = parse::parse(&file.text).map_err(|diagnostics| Report {
        file: file.clone(),
        diagnostics,
    })?;
    let mut options = options.clone();
    if options.script_dir.is_none() {
        // `plugin "…"` paths are relative to the script's folder.
        options.script_dir = std::path::Path::new(&file.name).parent().map(Into::into);
    }
    compile::compile_script(&script, &options).map_err(|diagnostics| Report {
        file: file.clone(),
        diagnostics,
    })
}

/// Every diagnostic (errors and warnings) for a script, in source order.
pub fn check(file: &SourceFile, options: &CompileOptions) -> Report {
    let diagnostics = match compile(file, options) {
        Ok(compiled) => compiled.warnings,
        Err(report) => report.diagnostics,
    };
    Report {
        file: file.clone(),
        diagnostics,
    }
}

/// The canonical formatting of a script (comments kept). Fails only when the script
/// does not parse.
pub fn format(file: &SourceFile) -> Result<String, Report> {
    let script = parse::parse(&file.text).map_err(|diagnostics| Report {
        file: file.clone(),
        diagnostics,
    })?;
    Ok(format::format_script(&script, &file.text))
}
