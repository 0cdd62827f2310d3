//! `plugin "path/to/libthing.so" [sha256 "…"]`: load a plugin library so that the
//! names it exports can be used like built-ins (`compress natural`).
//!
//! The path is used as written when absolute; a relative one is looked up in the
//! script's folder ([`CompileOptions::script_dir`](super::CompileOptions::script_dir)),
//! then in each `--plugin-path` folder, in order — never anywhere else. With a
//! `sha256` pin the file's digest must match before anything in it runs. Plugins are
//! loaded in the first pass, so `compress` statements anywhere in the script see
//! their names. Every loader error becomes a diagnostic on the path (or the pin).

use std::path::{Path, PathBuf};

use regimen_core::loader::{Plugin, PluginError};

use crate::ast::*;
use crate::compile::Compiler;
use crate::diagnostic::{Diagnostic, Span};

const EXAMPLE: &str = "plugin \"plugins/libnatural.so\" sha256 \"…\"";

impl<'a> Compiler<'a> {
    /// Load the library a `plugin` statement names; report any problem.
    pub(super) fn plugin_statement(&mut self, directive: &'a Directive) {
        let keyword_span = directive.keyword.span;
        if let Some(block) = &directive.block {
            self.error(
                Diagnostic::error(block.span, "`plugin` takes no `{ … }` block")
                    .with_label("not expected here")
                    .with_help(format!("write it as `{EXAMPLE}`")),
            );
            return;
        }
        if let Some(word) = directive.with.first() {
            self.error(
                Diagnostic::error(word.span, "`plugin` takes no `with` options")
                    .with_label("not expected here")
                    .with_help(format!("write it as `{EXAMPLE}`")),
            );
            return;
        }
        let mut items = directive.items.iter();
        let Some((path, path_span)) =
            items
                .next()
                .and_then(|item| match (&item.name, &item.expr.kind) {
                    (None, ExprKind::Str(path)) => Some((path.clone(), item.expr.span)),
                    _ => None,
                })
        else {
            let span = directive
                .items
                .first()
                .map_or(keyword_span, |i| i.expr.span);
            self.error(
                Diagnostic::error(span, "expected the path of a plugin library, in quotes")
                    .with_label("not a path")
                    .with_help(format!("e.g. `{EXAMPLE}`")),
            );
            return;
        };
        // `sha256 "…"` (two items) or `sha256: "…"` (one named item).
        let mut pin: Option<(String, Span)> = None;
        let rest: Vec<&Item> = items.collect();
        let pin_ok = match rest.as_slice() {
            [] => true,
            [item] => match (&item.name, &item.expr.kind) {
                (Some(name), ExprKind::Str(hex)) if name.name == "sha256" => {
                    pin = Some((hex.clone(), item.expr.span));
                    true
                }
                _ => false,
            },
            [word, value] => match (&word.name, &word.expr.kind, &value.name, &value.expr.kind) {
                (None, ExprKind::Ident(w), None, ExprKind::Str(hex)) if w == "sha256" => {
                    pin = Some((hex.clone(), value.expr.span));
                    true
                }
                _ => false,
            },
            _ => false,
        };
        if !pin_ok {
            let span = rest
                .first()
                .map_or(path_span, |i| i.expr.span)
                .join(rest.last().map_or(path_span, |i| i.expr.span));
            self.error(
                Diagnostic::error(span, "after the path, `plugin` takes only a checksum pin")
                    .with_label("not expected here")
                    .with_help(format!("write it as `{EXAMPLE}` (the pin is optional)")),
            );
            return;
        }
        let resolved = self.resolve_plugin(&path);
        let loaded = Plugin::load(&resolved, pin.as_ref().map(|(hex, _)| hex.as_str()))
            .and_then(|plugin| self.plugins.add(plugin));
        if let Err(error) = loaded {
            let span = match (&error, &pin) {
                (
                    PluginError::ChecksumMismatch { .. } | PluginError::BadPin { .. },
                    Some((_, s)),
                ) => *s,
                _ => path_span,
            };
            let d = Diagnostic::error(span, error.to_string()).with_label(match &error {
                PluginError::NotFound { .. } => "no such file",
                PluginError::ChecksumMismatch { .. } | PluginError::BadPin { .. } => {
                    "checksum refused"
                }
                PluginError::NameClash { .. } => "name clash",
                _ => "cannot load this plugin",
            });
            let d = match &error {
                PluginError::NotFound { .. } => d.with_help(self.searched(&path)),
                PluginError::ChecksumMismatch { actual, .. } => d.with_help(format!(
                    "if this build is the one you trust, pin it with `sha256 \"{actual}\"`"
                )),
                _ => d,
            };
            self.error(d);
        }
    }

    /// Where a relative plugin path is looked for, in order.
    fn plugin_candidates(&self, path: &str) -> Vec<PathBuf> {
        let path = Path::new(path);
        if path.is_absolute() {
            return vec![path.to_path_buf()];
        }
        let base = self.script_dir.clone().unwrap_or_default();
        std::iter::once(base.join(path))
            .chain(self.plugin_path.iter().map(|dir| dir.join(path)))
            .collect()
    }

    /// The first candidate that exists, else the script-relative one (whose "file
    /// not found" then names it).
    fn resolve_plugin(&self, path: &str) -> PathBuf {
        let candidates = self.plugin_candidates(path);
        candidates
            .iter()
            .find(|c| c.is_file())
            .or(candidates.first())
            .cloned()
            .unwrap_or_else(|| PathBuf::from(path))
    }

    fn searched(&self, path: &str) -> String {
        let places: Vec<String> = self
            .plugin_candidates(path)
            .iter()
            .map(|c| format!("`{}`", c.display()))
            .collect();
        format!(
            "looked for {}; a relative path is relative to the script's folder, then to each `--plugin-path` folder",
            places.join(", ")
        )
    }
}
