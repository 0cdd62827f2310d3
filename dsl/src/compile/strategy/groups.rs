//! `group "pattern", … { settings }` and `layer_decay FACTOR, "pattern", …`: glob
//! patterns checked at compile time, group hyperparameters compiled into the outputs
//! `group{N}.{hyper}` (relative ones on top of the global value), the switches, and
//! the group's `compress` statement.

use regimen_core::runtime::{Glob, GlobError};
use regimen_core::strategy::CLIP_NORM_OUTPUT;
use regimen_core::{BinaryOp, GroupRule, Hyper, LayerDecay, NodeId, OptimizerKind};

use super::readers;
use crate::ast::*;
use crate::compile::{fmt_num, Compiler, Sched, Value, FUTURE_DIRECTIVES, FUTURE_HELP};
use crate::diagnostic::{closest, Diagnostic, Span};

/// Group settings that are switches rather than hyperparameters.
const GROUP_SWITCHES: &[&str] = &["trust_ratio", "layer_decay"];

/// What every group of a script compiles against.
pub(super) struct GroupContext {
    /// The script names its optimizer (so unread settings are worth a warning).
    pub(super) explicit_optimizer: bool,
    /// The script has a `layer_decay` statement.
    pub(super) layer_decay_given: bool,
    /// The optimizer statement was rejected.
    pub(super) optimizer_failed: bool,
}

/// One hyperparameter setting in a group: `target op value`.
#[derive(Clone, Copy)]
struct GroupSetting<'s> {
    /// The group's position in the script (0-based).
    index: usize,
    hyper: Hyper,
    target: &'s Ident,
    op: AssignOp,
    /// The whole statement.
    span: Span,
}

/// The diagnostic for a refused glob written as the string literal at `span`. The
/// caret goes under the culprit when the literal has no escapes (so pattern offsets
/// are source offsets), else under the whole string.
fn glob_diagnostic(error: &GlobError, span: Span) -> Diagnostic {
    let (pattern, at, width) = match error {
        GlobError::Empty => {
            return Diagnostic::error(span, "empty pattern")
                .with_label("matches no parameter")
                .with_help("to match every parameter, write `\"*\"`");
        }
        GlobError::UnclosedBrace { pattern, at } | GlobError::TrailingEscape { pattern, at } => {
            (pattern, *at, 1)
        }
        GlobError::UnknownCapture { name, pattern, at } => (pattern, *at, name.len() + 2),
        GlobError::TwoDepthCaptures { pattern, at } => (pattern, *at, "{depth}".len()),
    };
    let literal = span.end.saturating_sub(span.start) == pattern.len() + 2;
    let culprit = if literal {
        Span::new(span.start + 1 + at, span.start + 1 + at + width)
    } else {
        span
    };
    // In a script a literal backslash is written `\\`, so the glob escape `\{` is `\\{`.
    match error {
        GlobError::UnclosedBrace { .. } => Diagnostic::error(culprit, "`{` is never closed")
            .with_label("unclosed `{`")
            .with_help(
                "a layer number is captured with `{depth}`; write `\\\\{` for a literal brace",
            ),
        GlobError::UnknownCapture { name, .. } => {
            Diagnostic::error(culprit, format!("unknown capture `{{{name}}}`"))
                .with_label("not a capture")
                .with_help(match closest(name, ["depth"]) {
                    Some(_) => "did you mean `{depth}`?",
                    None => "the only capture is `{depth}`; write `\\\\{` for a literal brace",
                })
        }
        GlobError::TwoDepthCaptures { .. } => {
            Diagnostic::error(culprit, "a pattern captures one `{depth}`")
                .with_label("second `{depth}`")
                .with_help("keep the `{depth}` that marks the layer number")
        }
        _ => Diagnostic::error(culprit, "the pattern ends with an escape")
            .with_label("escapes nothing")
            .with_help("write `\\\\\\\\` for a literal backslash"),
    }
}

impl<'a> Compiler<'a> {
    /// The strings of a statement's items, each compiled as a glob.
    fn patterns(&mut self, items: &[Item]) -> Option<Vec<(Glob, Span)>> {
        let mut ok = true;
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match &item.expr.kind {
                ExprKind::Str(pattern) => match Glob::new(pattern) {
                    Ok(glob) => out.push((glob, item.expr.span)),
                    Err(error) => {
                        self.error(glob_diagnostic(&error, item.expr.span));
                        ok = false;
                    }
                },
                _ => {
                    self.error(
                        Diagnostic::error(item.expr.span, "expected a pattern string")
                            .with_label("not a string")
                            .with_help("patterns are quoted globs, e.g. `\"*.bias\"`"),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    pub(super) fn group_statement(
        &mut self,
        index: usize,
        directive: &'a Directive,
        context: &GroupContext,
    ) -> Option<GroupRule> {
        self.no_extras(directive, true);
        let named_ok = self.no_named_items(directive);
        let keyword = &directive.keyword;
        let patterns = self.patterns(&directive.items);
        if directive.items.is_empty() {
            self.error(
                Diagnostic::error(keyword.span, "`group` needs at least one pattern")
                    .with_label("which parameters?")
                    .with_help("e.g. `group \"*.bias\", \"*norm*\" { weight_decay = 0 }`"),
            );
        }
        let Some(block) = &directive.block else {
            self.error(
                Diagnostic::error(keyword.span, "`group` needs a `{ … }` block")
                    .with_label("sets nothing")
                    .with_help("e.g. `group \"embed.*\" { lr *= 0.1 }`"),
            );
            return None;
        };
        if block.stmts.is_empty() {
            self.diagnostics.push(
                Diagnostic::warning(block.span, "this group changes nothing")
                    .with_label("empty")
                    .with_help("set something, e.g. `{ weight_decay = 0 }`, or remove the group"),
            );
        }
        let mut rule = GroupRule::default();
        let mut ok = true;
        let mut seen: Vec<(&str, Span)> = Vec::new();
        let mut compress_at: Option<Span> = None;
        for stmt in &block.stmts {
            if let StmtKind::Directive(inner) = &stmt.kind {
                if inner.keyword.name == "compress" {
                    ok &= self.group_compress(index, inner, &mut compress_at, &mut rule);
                    continue;
                }
            }
            let StmtKind::Assign {
                target,
                op,
                op_span,
                value,
            } = &stmt.kind
            else {
                self.not_a_group_setting(stmt);
                ok = false;
                continue;
            };
            if let Some((_, first)) = seen.iter().find(|(n, _)| *n == target.name) {
                let first = *first;
                self.error(
                    Diagnostic::error(
                        target.span,
                        format!("`{}` is set twice in this group", target.name),
                    )
                    .with_label("set again here")
                    .with_note(first, "first set here")
                    .with_help("combine them into one setting"),
                );
                ok = false;
                self.value(value);
                continue;
            }
            seen.push((&target.name, stmt.span));
            if GROUP_SWITCHES.contains(&target.name.as_str()) {
                let Some(on) = self.switch(target, *op, *op_span, value) else {
                    ok = false;
                    continue;
                };
                if target.name == "trust_ratio" {
                    let kind = self.strategy.optimizer.kind;
                    if context.explicit_optimizer
                        && !matches!(kind, OptimizerKind::Lars | OptimizerKind::Lamb)
                    {
                        self.diagnostics.push(
                            Diagnostic::warning(
                                target.span,
                                format!("`trust_ratio` has no effect with {}", kind.name()),
                            )
                            .with_label("no trust ratio to switch")
                            .with_help("trust ratios belong to lars and lamb"),
                        );
                    }
                    rule.trust_ratio = Some(on);
                } else {
                    if !context.layer_decay_given {
                        self.diagnostics.push(
                            Diagnostic::warning(
                                target.span,
                                "`layer_decay` has no effect: the script sets no layer decay",
                            )
                            .with_label("nothing to switch")
                            .with_help("add e.g. `layer_decay 0.75` at the top level"),
                        );
                    }
                    rule.layer_decay = Some(on);
                }
                continue;
            }
            let Some(hyper) = Hyper::from_name(&target.name) else {
                let candidates = Hyper::ALL
                    .iter()
                    .map(|h| h.name())
                    .chain(GROUP_SWITCHES.iter().copied());
                let mut d = Diagnostic::error(
                    target.span,
                    format!("`{}` is not a group setting", target.name),
                )
                .with_label("unknown setting");
                d = match closest(&target.name, candidates) {
                    Some(near) => d.with_help(format!("did you mean `{near}`?")),
                    None if target.name == CLIP_NORM_OUTPUT => d.with_help(
                        "gradient clipping is global: set it at the top level with `clip norm: …`",
                    ),
                    None if target.name == "compress" => {
                        d.with_help("`compress` is a statement without `=`, e.g. `compress none`")
                    }
                    None => d.with_help(format!(
                        "a group sets {} or {}",
                        Hyper::ALL.map(|h| h.name()).join(", "),
                        GROUP_SWITCHES.join(", ")
                    )),
                };
                self.error(d);
                self.value(value);
                ok = false;
                continue;
            };
            let kind = self.strategy.optimizer.kind;
            if context.explicit_optimizer && !kind.hypers().contains(&hyper) {
                self.diagnostics.push(
                    Diagnostic::warning(
                        target.span,
                        format!("`{}` is not used by {}", target.name, kind.name()),
                    )
                    .with_label(format!("{} does not read it", kind.name()))
                    .with_help(format!(
                        "`{}` is read by: {}",
                        target.name,
                        readers(hyper)
                    )),
                );
            }
            let setting = GroupSetting {
                index,
                hyper,
                target,
                op: *op,
                span: stmt.span,
            };
            if self.group_hyper(&setting, value, context.optimizer_failed) {
                rule.hypers.push(hyper);
            } else {
                ok = false;
            }
        }
        let patterns = patterns?;
        rule.patterns = patterns
            .into_iter()
            .map(|(glob, _)| glob.as_str().to_string())
            .collect();
        (ok && named_ok && !rule.patterns.is_empty()).then_some(rule)
    }

    /// `compress …` inside group `index`: the group's compression, once per group.
    /// `first` is where the group's first `compress` is. False when rejected.
    fn group_compress(
        &mut self,
        index: usize,
        directive: &'a Directive,
        first: &mut Option<Span>,
        rule: &mut GroupRule,
    ) -> bool {
        if let Some(first) = *first {
            self.error(
                Diagnostic::error(
                    directive.keyword.span,
                    "`compress` is given twice in this group",
                )
                .with_label("again here")
                .with_note(first, "first given here")
                .with_help("a group compresses its parameters with one method; keep one"),
            );
            return false;
        }
        *first = Some(directive.keyword.span);
        rule.compress = self.compress_statement(directive, Some(index));
        rule.compress.is_some()
    }

    fn not_a_group_setting(&mut self, stmt: &Stmt) {
        match &stmt.kind {
            StmtKind::Let { name, value } => {
                self.error(
                    Diagnostic::error(name.span, "`let` is not allowed inside a group")
                        .with_label("bind it at the top level")
                        .with_help("move the `let` above the group"),
                );
                self.value(value);
            }
            StmtKind::Directive(inner) => {
                let keyword = inner.keyword.name.as_str();
                let d = if FUTURE_DIRECTIVES.contains(&keyword) {
                    Diagnostic::error(
                        inner.keyword.span,
                        format!("`{keyword}` statements are not supported yet"),
                    )
                    .with_label("not yet supported")
                    .with_help(FUTURE_HELP)
                } else if keyword == "batch" {
                    Diagnostic::error(inner.keyword.span, "batch size control is global")
                        .with_label("not a group setting")
                        .with_help("move `batch …` to the top level: one controller sets the batch for every parameter")
                } else {
                    Diagnostic::error(
                        inner.keyword.span,
                        format!("`{keyword}` cannot be used inside a group"),
                    )
                    .with_label("not a group setting")
                    .with_help("a group holds settings such as `lr *= 0.1`, `weight_decay = 0`, `trust_ratio = off` or `compress none`")
                };
                self.error(d);
            }
            StmtKind::Assign { .. } => {}
        }
    }

    /// `trust_ratio = on|off` (or `true|false`).
    fn switch(
        &mut self,
        target: &Ident,
        op: AssignOp,
        op_span: Span,
        value: &Expr,
    ) -> Option<bool> {
        if op != AssignOp::Set {
            self.error(
                Diagnostic::error(op_span, format!("`{}` is a switch", target.name))
                    .with_label(format!("`{}` cannot be used here", op.as_str()))
                    .with_help(format!(
                        "write `{} = on` or `{} = off`",
                        target.name, target.name
                    )),
            );
            return None;
        }
        match &value.kind {
            ExprKind::Ident(word) if word == "on" || word == "true" => Some(true),
            ExprKind::Ident(word) if word == "off" || word == "false" => Some(false),
            _ => {
                self.error(
                    Diagnostic::error(
                        value.span,
                        format!("`{}` must be `on` or `off`", target.name),
                    )
                    .with_label("not a switch value")
                    .with_help(format!("write `{} = off`", target.name)),
                );
                None
            }
        }
    }

    /// A group's hyperparameter: `=` replaces the global value (any schedule), the
    /// compound operators apply to it. Compiles to the output `group{N}.{hyper}`.
    /// `optimizer_failed`: the optimizer statement was rejected, so a missing global
    /// value is a consequence, not news.
    fn group_hyper(
        &mut self,
        setting: &GroupSetting<'_>,
        expr: &Expr,
        optimizer_failed: bool,
    ) -> bool {
        let GroupSetting {
            index,
            hyper,
            target,
            op,
            span,
        } = *setting;
        let value = self.value(expr);
        let value = match op {
            AssignOp::Set => value,
            _ => {
                let Some(global) = self.global_value(hyper) else {
                    if !matches!(value, Value::Poison) && !optimizer_failed {
                        self.error(
                            Diagnostic::error(
                                target.span,
                                format!(
                                    "`{} {}` is relative to the global `{}`, which is not set",
                                    hyper.name(),
                                    op.as_str(),
                                    hyper.name()
                                ),
                            )
                            .with_label("relative to nothing")
                            .with_help(format!(
                                "set `{name} = …` at the top level, or give the group its own `{name} = …`",
                                name = hyper.name()
                            )),
                        );
                    }
                    return false;
                };
                let op = match op {
                    AssignOp::Mul => BinaryOp::Mul,
                    AssignOp::Div => BinaryOp::Div,
                    AssignOp::Add => BinaryOp::Add,
                    _ => BinaryOp::Sub,
                };
                let global = Value::Schedule(Sched {
                    node: global,
                    len: None,
                    needs_len: None,
                });
                self.binary(op, (global, target.span), (value, expr.span), span)
            }
        };
        let Some(node) = self.scalar_output(hyper.name(), value, expr.span) else {
            return false;
        };
        self.add_output(&GroupRule::output_name(index, hyper), node, expr.span);
        true
    }

    /// The node of a hyperparameter's global value: its output, else the optimizer's
    /// default as a constant. `None` for a hyperparameter without a default (`lr`).
    fn global_value(&mut self, hyper: Hyper) -> Option<NodeId> {
        if let Some(node) = self.graph.output(hyper.name()) {
            return Some(node);
        }
        let default = self.strategy.optimizer.kind.default_value(hyper)?;
        Some(self.const_node(default).node)
    }

    // ----- layer decay ---------------------------------------------------------

    pub(super) fn layer_decay_statement(&mut self, directive: &'a Directive) -> Option<LayerDecay> {
        self.no_extras(directive, false);
        let keyword = &directive.keyword;
        if !self.no_named_items(directive) {
            return None;
        }
        let Some((first, rest)) = directive.items.split_first() else {
            self.error(
                Diagnostic::error(keyword.span, "`layer_decay` needs a factor")
                    .with_label("factor expected after this")
                    .with_help("e.g. `layer_decay 0.75`"),
            );
            return None;
        };
        let factor = match self.number(&first.expr, "the layer decay factor") {
            Some(f) if f > 0.0 && f <= 1.0 => Some(f),
            Some(f) => {
                self.error(
                    Diagnostic::error(
                        first.expr.span,
                        format!(
                            "the layer decay factor must be in (0, 1], not {}",
                            fmt_num(f)
                        ),
                    )
                    .with_label("out of range")
                    .with_help("each layer below the top multiplies its lr by this, e.g. 0.75"),
                );
                None
            }
            None => None,
        };
        let patterns = self.patterns(rest)?;
        let mut ok = true;
        for (glob, span) in &patterns {
            if !glob.has_depth_capture() {
                self.error(
                    Diagnostic::error(*span, "a layer-decay pattern needs a `{depth}`")
                        .with_label("no `{depth}` in this pattern")
                        .with_help("mark where the layer number is, e.g. `\"layers.{depth}.*\"`"),
                );
                ok = false;
            }
        }
        let factor = factor?;
        ok.then(|| LayerDecay {
            factor,
            depth_patterns: patterns
                .into_iter()
                .map(|(glob, _)| glob.as_str().to_string())
                .collect(),
        })
    }
}
