//! Diagnostics: errors and warnings with byte spans into the source, rendered as
//! `file:line:col`, the source line and a caret underline, plus a suggestion.

use std::fmt;

/// A byte range `start..end` into the source text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Span {
    /// The span `start..end`.
    pub fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }

    /// The smallest span covering both.
    pub fn join(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Severity {
    /// The script is rejected.
    Error,
    /// The script is accepted, but something looks wrong.
    Warning,
}

/// One message about the source, pointing at a span.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong, in plain words.
    pub message: String,
    /// Where.
    pub span: Span,
    /// Text under the caret, if any.
    pub label: Option<String>,
    /// A suggestion ("did you mean …?").
    pub help: Option<String>,
    /// Related places (e.g. "first assigned here").
    pub notes: Vec<(Span, String)>,
}

impl Diagnostic {
    /// An error at `span`.
    pub fn error(span: Span, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            message: message.into(),
            span,
            label: None,
            help: None,
            notes: Vec::new(),
        }
    }

    /// A warning at `span`.
    pub fn warning(span: Span, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(span, message)
        }
    }

    /// Add the text shown under the caret.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Add a suggestion.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Add a secondary location.
    pub fn with_note(mut self, span: Span, note: impl Into<String>) -> Self {
        self.notes.push((span, note.into()));
        self
    }

    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Render against the source it points into.
    pub fn render(&self, file: &SourceFile) -> String {
        let mut out = String::new();
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        out.push_str(&format!("{kind}: {}\n", self.message));
        render_snippet(&mut out, file, self.span, self.label.as_deref(), '^');
        for (span, note) in &self.notes {
            render_snippet(&mut out, file, *span, Some(note), '-');
        }
        if let Some(help) = &self.help {
            out.push_str(&format!("  = help: {help}\n"));
        }
        out
    }
}

/// A script's name (usually its path) and text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    /// Shown in diagnostics.
    pub name: String,
    /// The source text.
    pub text: String,
}

impl SourceFile {
    /// A source named `name`.
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            text: text.into(),
        }
    }

    /// 1-based line and column (in characters) of byte `offset`.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = clamp_to_char_boundary(&self.text, offset);
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = self.text[line_start..offset].chars().count() + 1;
        (line, col)
    }

    /// The text of 1-based line `line`, without its newline.
    pub fn line_text(&self, line: usize) -> &str {
        self.text
            .split('\n')
            .nth(line.saturating_sub(1))
            .unwrap_or("")
            .trim_end_matches('\r')
    }
}

fn clamp_to_char_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

fn render_snippet(
    out: &mut String,
    file: &SourceFile,
    span: Span,
    label: Option<&str>,
    mark: char,
) {
    let (line, col) = file.line_col(span.start);
    let text = file.line_text(line);
    let gutter = line.to_string().len();
    let pad = " ".repeat(gutter);
    out.push_str(&format!("{pad}--> {}:{line}:{col}\n", file.name));
    out.push_str(&format!("{pad} |\n"));
    out.push_str(&format!("{line} | {}\n", text.replace('\t', " ")));
    // Underline to the end of the span or of the line, whichever comes first.
    let line_chars = text.chars().count();
    let (end_line, end_col) = file.line_col(span.end);
    let width = if end_line == line {
        end_col.saturating_sub(col).max(1)
    } else {
        (line_chars + 1).saturating_sub(col).max(1)
    };
    let underline: String = std::iter::repeat(mark).take(width).collect();
    let indent = " ".repeat(col - 1);
    match label {
        Some(label) => out.push_str(&format!("{pad} | {indent}{underline} {label}\n")),
        None => out.push_str(&format!("{pad} | {indent}{underline}\n")),
    }
}

/// Every diagnostic produced for one source, rendered together. Returned as the error
/// of the compile and format entry points; its `Display` is the full rendering.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The source the diagnostics point into.
    pub file: SourceFile,
    /// Errors and warnings, in source order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    /// Number of errors.
    pub fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.error_count() > 0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", diagnostic.render(&self.file))?;
        }
        let errors = self.error_count();
        let warnings = self.diagnostics.len() - errors;
        if errors > 0 {
            writeln!(
                f,
                "\n{}: {errors} error{}{}",
                self.file.name,
                if errors == 1 { "" } else { "s" },
                if warnings > 0 {
                    format!(
                        ", {warnings} warning{}",
                        if warnings == 1 { "" } else { "s" }
                    )
                } else {
                    String::new()
                }
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for Report {}

/// Levenshtein distance between two short names.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// The closest of `candidates` to `name`, if it is close enough to be a likely typo.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1) + usize::from(name.len() > 5);
    candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("cosin", "cosine"), 1);
        assert_eq!(edit_distance("sgd", "sgd"), 0);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn closest_prefers_near_names_and_rejects_far_ones() {
        let names = ["cosine", "constant", "cyclic"];
        assert_eq!(closest("cosin", names), Some("cosine"));
        assert_eq!(closest("zzz", names), None);
    }

    #[test]
    fn line_col_counts_characters_from_one() {
        let file = SourceFile::new("a.regimen", "ab\ncé d");
        assert_eq!(file.line_col(0), (1, 1));
        assert_eq!(file.line_col(3), (2, 1));
        // 'é' is two bytes: byte 6 is the space after it, the third character.
        assert_eq!(file.line_col(6), (2, 3));
    }

    #[test]
    fn render_underlines_the_span() {
        let file = SourceFile::new("s.regimen", "lr = cosin(0.1)\n");
        let d = Diagnostic::error(Span::new(5, 10), "unknown schedule `cosin`")
            .with_label("not a schedule")
            .with_help("did you mean `cosine`?");
        assert_eq!(
            d.render(&file),
            "error: unknown schedule `cosin`\n --> s.regimen:1:6\n  |\n1 | lr = cosin(0.1)\n  |      ^^^^^ not a schedule\n  = help: did you mean `cosine`?\n"
        );
    }
}
