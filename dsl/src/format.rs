//! Canonical formatting (`regimen fmt`): one statement per line, four-space blocks,
//! single spaces around operators, at most one blank line in a row, every comment
//! kept. A block written on one line stays on one line (`{ a; b }`), so short rules
//! such as `group "*.bias" { weight_decay = 0; trust_ratio = off }` keep their shape.
//! Formatting a formatted script changes nothing.

use crate::ast::*;
use crate::diagnostic::Span;

/// Format a parsed script. `source` must be the text it was parsed from (comments and
/// blank lines are read from it).
pub fn format_script(script: &Script, source: &str) -> String {
    let mut printer = Printer {
        source,
        comments: &script.comments,
        next_comment: 0,
        out: String::new(),
        last_end: None,
    };
    printer.stmts(&script.stmts, 0);
    printer.flush_comments(usize::MAX, 0);
    if !printer.out.is_empty() && !printer.out.ends_with('\n') {
        printer.out.push('\n');
    }
    printer.out
}

struct Printer<'a> {
    source: &'a str,
    comments: &'a [Comment],
    next_comment: usize,
    out: String,
    /// End of the last thing printed at the current nesting, for blank-line keeping.
    last_end: Option<usize>,
}

impl Printer<'_> {
    fn indent(&mut self, level: usize) {
        for _ in 0..level {
            self.out.push_str("    ");
        }
    }

    /// Keep one blank line where the source had at least one between two items.
    fn blank_line_before(&mut self, start: usize) {
        if let Some(end) = self.last_end {
            let between = self.source.get(end..start).unwrap_or("");
            if between.matches('\n').count() >= 2 {
                self.out.push('\n');
            }
        }
    }

    /// Print, on their own lines, the comments that start before `limit`.
    fn flush_comments(&mut self, limit: usize, level: usize) {
        while let Some(comment) = self.comments.get(self.next_comment) {
            if comment.span.start >= limit {
                break;
            }
            self.blank_line_before(comment.span.start);
            self.indent(level);
            self.out.push_str(&comment.text);
            self.out.push('\n');
            self.last_end = Some(comment.span.end);
            self.next_comment += 1;
        }
    }

    /// Comments inside `span` but outside `except` (a nested block) move above the
    /// statement: they cannot stay inside a line that is rewritten.
    fn hoist_comments(&mut self, span: Span, except: Option<Span>, level: usize) {
        while let Some(comment) = self.comments.get(self.next_comment) {
            let start = comment.span.start;
            if start >= span.end {
                break;
            }
            if except.is_some_and(|b| start >= b.start) {
                break;
            }
            self.indent(level);
            self.out.push_str(&comment.text);
            self.out.push('\n');
            self.next_comment += 1;
        }
    }

    /// A comment on the same line after `end` stays at the end of that line.
    fn trailing_comment(&mut self, end: usize) {
        if let Some(comment) = self.comments.get(self.next_comment) {
            let between = self.source.get(end..comment.span.start).unwrap_or("\n");
            if !between.contains('\n') {
                self.out.push_str("  ");
                self.out.push_str(&comment.text);
                self.next_comment += 1;
            }
        }
    }

    /// Whether the next unprinted comment starts before `offset`.
    fn comment_before(&self, offset: usize) -> bool {
        self.comments
            .get(self.next_comment)
            .is_some_and(|c| c.span.start < offset)
    }

    fn stmts(&mut self, stmts: &[Stmt], level: usize) {
        for stmt in stmts {
            self.flush_comments(stmt.span.start, level);
            self.blank_line_before(stmt.span.start);
            let block = match &stmt.kind {
                StmtKind::Directive(d) => d.block.as_ref(),
                _ => None,
            };
            self.hoist_comments(stmt.span, block.map(|b| b.span), level);
            self.indent(level);
            let head = stmt_head(stmt);
            self.out.push_str(&head);
            match block {
                None => {
                    self.trailing_comment(stmt.span.end);
                    self.out.push('\n');
                }
                Some(block) => {
                    let empty = block.stmts.is_empty()
                        && !self
                            .comments
                            .get(self.next_comment)
                            .is_some_and(|c| c.span.start < block.span.end);
                    let one_line = !self
                        .source
                        .get(block.span.start..block.span.end)
                        .unwrap_or("\n")
                        .contains('\n');
                    if empty {
                        self.out.push_str(" {}");
                    } else if one_line && !self.comment_before(block.span.end) {
                        self.out.push_str(&inline_block(block));
                    } else {
                        self.out.push_str(" {");
                        self.trailing_comment(block.span.start + 1);
                        self.out.push('\n');
                        self.last_end = None;
                        self.stmts(&block.stmts, level + 1);
                        self.flush_comments(block.span.end, level + 1);
                        self.indent(level);
                        self.out.push('}');
                    }
                    self.trailing_comment(stmt.span.end);
                    self.out.push('\n');
                }
            }
            self.last_end = Some(stmt.span.end);
        }
    }
}

/// A non-empty block on one line: ` { a; b }`.
fn inline_block(block: &Block) -> String {
    let stmts: Vec<String> = block
        .stmts
        .iter()
        .map(|stmt| {
            let mut line = stmt_head(stmt);
            if let StmtKind::Directive(Directive {
                block: Some(inner), ..
            }) = &stmt.kind
            {
                if inner.stmts.is_empty() {
                    line.push_str(" {}");
                } else {
                    line.push_str(&inline_block(inner));
                }
            }
            line
        })
        .collect();
    format!(" {{ {} }}", stmts.join("; "))
}

/// A statement without its block.
fn stmt_head(stmt: &Stmt) -> String {
    match &stmt.kind {
        StmtKind::Let { name, value } => format!("let {} = {}", name.name, expr(value)),
        StmtKind::Assign {
            target, op, value, ..
        } => {
            format!("{} {} {}", target.name, op.as_str(), expr(value))
        }
        StmtKind::Directive(d) => {
            let mut out = d.keyword.name.clone();
            for (i, item) in d.items.iter().enumerate() {
                out.push_str(if i > 0 && item.comma_before {
                    ", "
                } else {
                    " "
                });
                if let Some(name) = &item.name {
                    out.push_str(&name.name);
                    out.push_str(": ");
                }
                out.push_str(&expr(&item.expr));
            }
            if !d.with.is_empty() {
                out.push_str(" with ");
                let names: Vec<&str> = d.with.iter().map(|w| w.name.as_str()).collect();
                out.push_str(&names.join(", "));
            }
            out
        }
    }
}

/// An expression in canonical form. Parentheses are the ones written in the source:
/// the tree already encodes precedence.
pub fn expr(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Number { text, .. } => text.clone(),
        ExprKind::Str(s) => {
            let escaped = s
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
                .replace('\t', "\\t");
            format!("\"{escaped}\"")
        }
        ExprKind::Ident(name) => name.clone(),
        ExprKind::Quantity { value, unit, .. } => {
            let amount = expr(value);
            let singular = amount == "1";
            match unit {
                Unit::Percent => format!("{amount}%"),
                _ => format!("{amount} {}", unit.spelling(singular)),
            }
        }
        ExprKind::List(items) => {
            let parts: Vec<String> = items.iter().map(expr).collect();
            format!("[{}]", parts.join(", "))
        }
        ExprKind::Call { name, args } => {
            let parts: Vec<String> = args
                .iter()
                .map(|a| match &a.name {
                    Some(n) => format!("{}: {}", n.name, expr(&a.value)),
                    None => expr(&a.value),
                })
                .collect();
            format!("{}({})", name.name, parts.join(", "))
        }
        ExprKind::Neg(inner) => format!("-{}", expr(inner)),
        ExprKind::Binary { op, lhs, rhs } => match op {
            BinOp::Pow => format!("{}^{}", expr(lhs), expr(rhs)),
            _ => format!("{} {} {}", expr(lhs), op.as_str(), expr(rhs)),
        },
        ExprKind::Range {
            from,
            to,
            both_ways,
        } => {
            format!(
                "{} {} {}",
                expr(from),
                if *both_ways { "<->" } else { "->" },
                expr(to)
            )
        }
        ExprKind::Then(parts) => {
            let parts: Vec<String> = parts.iter().map(expr).collect();
            parts.join(" then ")
        }
        ExprKind::Paren(inner) => format!("({})", expr(inner)),
    }
}
