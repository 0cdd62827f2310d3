//! Parsing: source text → [`Script`]. Wraps the pest grammar in `grammar/regimen.pest`,
//! turns its errors into [`Diagnostic`]s and guards against input that would exhaust
//! the stack (deep nesting) before pest ever sees it.

use pest::iterators::Pair;
use pest::Parser;

use crate::ast::*;
use crate::diagnostic::{Diagnostic, Span};

mod grammar {
    #![allow(missing_docs)]
    //! The pest parser generated from `grammar/regimen.pest`.
    #[derive(pest_derive::Parser)]
    #[grammar = "../../grammar/regimen.pest"]
    pub struct RegimenParser;
}
use grammar::{RegimenParser, Rule};

/// Deepest nesting of `(`, `[` and `{` accepted; deeper input is rejected before
/// parsing so neither pest nor the tree walkers can overflow the stack.
pub const MAX_NESTING: usize = 48;

/// Deepest expression tree accepted (long operator chains nest too).
pub const MAX_EXPR_DEPTH: usize = 200;

/// Parse a whole script. Errors carry spans into `text`.
pub fn parse(text: &str) -> Result<Script, Vec<Diagnostic>> {
    check_nesting(text)?;
    // pest descends about ten rules per bracket level; give it a stack that fits
    // MAX_NESTING levels whatever thread we are called on.
    stacker::maybe_grow(PARSER_STACK_RED_ZONE, PARSER_STACK, || {
        parse_unguarded(text)
    })
}

/// Grow the stack when less than this is left …
const PARSER_STACK_RED_ZONE: usize = 4 << 20;
/// … to this many bytes.
const PARSER_STACK: usize = 64 << 20;

fn parse_unguarded(text: &str) -> Result<Script, Vec<Diagnostic>> {
    let mut pairs =
        RegimenParser::parse(Rule::script, text).map_err(|e| vec![from_pest(e, text)])?;
    let Some(script) = pairs.next() else {
        return Err(vec![Diagnostic::error(Span::new(0, 0), "empty parse")]);
    };
    let comments = script
        .clone()
        .into_inner()
        .flatten()
        .filter(|p| p.as_rule() == Rule::COMMENT)
        .map(|p| Comment {
            span: span_of(&p),
            text: p.as_str().trim_end().to_string(),
        })
        .collect();
    let mut builder = Builder::default();
    let stmts = builder.stmts(script);
    if builder.errors.is_empty() {
        Ok(Script { stmts, comments })
    } else {
        Err(builder.errors)
    }
}

/// Reject nesting deeper than [`MAX_NESTING`], skipping strings and comments.
fn check_nesting(text: &str) -> Result<(), Vec<Diagnostic>> {
    let mut depth = 0usize;
    let mut chars = text.char_indices();
    while let Some((offset, c)) = chars.next() {
        match c {
            '#' => {
                for (_, c) in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '"' => {
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' | '\n' => break,
                        _ => {}
                    }
                }
            }
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(vec![Diagnostic::error(
                        Span::new(offset, offset + 1),
                        format!("nesting is too deep (more than {MAX_NESTING} levels of brackets)"),
                    )
                    .with_label("too deep")
                    .with_help("split the expression with `let` bindings")]);
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// The span of a pair without the whitespace and comments pest lets trail it.
fn span_of(pair: &Pair<'_, Rule>) -> Span {
    let s = pair.as_span();
    let text = pair.get_input();
    let comments: Vec<(usize, usize)> = pair
        .clone()
        .into_inner()
        .flatten()
        .filter(|p| p.as_rule() == Rule::COMMENT)
        .map(|p| (p.as_span().start(), p.as_span().end()))
        .collect();
    let mut end = s.end();
    loop {
        let trimmed = text[s.start()..end].trim_end_matches([' ', '\t', '\r', '\n', '\\']);
        end = s.start() + trimmed.len();
        match comments.iter().find(|(_, e)| *e == end) {
            Some((start, _)) => end = *start,
            None => break,
        }
    }
    Span::new(s.start(), end)
}

/// Children of a pair without the comments pest interleaves.
fn children<'a>(pair: Pair<'a, Rule>) -> impl Iterator<Item = Pair<'a, Rule>> {
    pair.into_inner().filter(|p| p.as_rule() != Rule::COMMENT)
}

fn describe(rule: &Rule) -> &'static str {
    match rule {
        Rule::EOI => "end of line",
        Rule::nl | Rule::sep => "a new line",
        Rule::let_stmt | Rule::assign_stmt | Rule::directive | Rule::stmt => "a statement",
        Rule::assign_op => "`=`",
        Rule::range_op => "`->`",
        Rule::sum_op | Rule::product_op => "an operator",
        Rule::unit => "a unit (`steps`, `epochs`, `samples`, `%`)",
        Rule::ident => "a name",
        Rule::kw_then => "`then`",
        Rule::kw_with => "`with`",
        Rule::kw_let => "`let`",
        Rule::item_comma => "`,`",
        Rule::with_clause => "`with`",
        Rule::block => "`{`",
        Rule::arg => "an argument",
        Rule::string | Rule::string_body => "a string",
        _ => "an expression",
    }
}

fn from_pest(error: pest::error::Error<Rule>, text: &str) -> Diagnostic {
    let (start, end) = match error.location {
        pest::error::InputLocation::Pos(p) => (p, p),
        pest::error::InputLocation::Span((s, e)) => (s, e),
    };
    let mut found = found_at(text, start);
    // Point at the end of what was written, not at the start of the next line.
    let mut start = start;
    if found.1 == 0 {
        let written = text.get(..start).unwrap_or("").trim_end().len();
        if written < start {
            start = written;
            found.0 = "end of line".to_string();
            if text.get(written..).unwrap_or("").trim().is_empty() {
                found.0 = "end of input".to_string();
            }
        }
    }
    let end = end.max(start + found.1);
    let mut expected: Vec<&'static str> = Vec::new();
    if let pest::error::ErrorVariant::ParsingError { positives, .. } = &error.variant {
        for rule in positives
            .iter()
            .filter(|r| !matches!(r, Rule::COMMENT | Rule::WHITESPACE))
        {
            let d = describe(rule);
            if !expected.contains(&d) {
                expected.push(d);
            }
        }
    }
    let found_text = found.0;
    let hint = parse_hint(text, start);
    if hint.as_deref() == Some(UNCLOSED_PAREN) {
        expected = vec!["`)`"];
    }
    let message = match expected.as_slice() {
        [] => format!("unexpected {found_text}"),
        [one] => format!("expected {one}, found {found_text}"),
        many => {
            let (last, rest) = many.split_last().map_or((&"", &[][..]), |(l, r)| (l, r));
            format!("expected {} or {last}, found {found_text}", rest.join(", "))
        }
    };
    let mut diagnostic = Diagnostic::error(Span::new(start, end), message).with_label("here");
    if let Some(help) = hint {
        diagnostic = diagnostic.with_help(help);
    }
    diagnostic
}

/// What the parser stopped at, in words, and its length in bytes.
fn found_at(text: &str, offset: usize) -> (String, usize) {
    let rest = text.get(offset..).unwrap_or("");
    match rest.chars().next() {
        None => ("end of input".to_string(), 0),
        Some('\n') | Some('\r') => ("end of line".to_string(), 0),
        Some(c) if c.is_alphanumeric() || c == '_' => {
            let word: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
                .collect();
            let len = word.len();
            (format!("`{word}`"), len)
        }
        Some(c) if c.is_control() => (format!("byte {:#04x}", c as u32), c.len_utf8()),
        Some(c) => (format!("`{c}`"), c.len_utf8()),
    }
}

const UNCLOSED_PAREN: &str = "a `(` is never closed";

/// Hints for common slips at the point where parsing stopped.
fn parse_hint(text: &str, offset: usize) -> Option<String> {
    let rest = text.get(offset..).unwrap_or("");
    let before = text.get(..offset).unwrap_or("").trim_end();
    if rest.starts_with("=>") {
        return Some("ranges are written `a -> b`".to_string());
    }
    if rest.starts_with("==") || (rest.starts_with('=') && before.ends_with('=')) {
        return Some("assignments use a single `=`".to_string());
    }
    if rest.starts_with(':') {
        return Some("named arguments go inside a call: `name(arg: value)`".to_string());
    }
    if before.ends_with(',') && (rest.starts_with(')') || rest.is_empty()) {
        return None;
    }
    if rest.trim().is_empty()
        && before.chars().filter(|c| *c == '(').count()
            > before.chars().filter(|c| *c == ')').count()
    {
        return Some(UNCLOSED_PAREN.to_string());
    }
    None
}

#[derive(Default)]
struct Builder {
    errors: Vec<Diagnostic>,
}

impl Builder {
    fn error(&mut self, span: Span, message: impl Into<String>) {
        self.errors.push(Diagnostic::error(span, message));
    }

    fn stmts(&mut self, pair: Pair<'_, Rule>) -> Vec<Stmt> {
        children(pair)
            .filter(|p| p.as_rule() != Rule::EOI)
            .filter_map(|p| self.stmt(p))
            .collect()
    }

    fn ident(&self, pair: Pair<'_, Rule>) -> Ident {
        Ident {
            name: pair.as_str().to_string(),
            span: span_of(&pair),
        }
    }

    fn stmt(&mut self, pair: Pair<'_, Rule>) -> Option<Stmt> {
        let span = span_of(&pair);
        let rule = pair.as_rule();
        let mut inner = children(pair);
        let kind = match rule {
            Rule::let_stmt => {
                let _kw = inner.next()?;
                let name = self.ident(inner.next()?);
                let value = self.expr(inner.next()?)?.0;
                StmtKind::Let { name, value }
            }
            Rule::assign_stmt => {
                let target = self.ident(inner.next()?);
                let op_pair = inner.next()?;
                let op = match op_pair.as_str() {
                    "*=" => AssignOp::Mul,
                    "/=" => AssignOp::Div,
                    "+=" => AssignOp::Add,
                    "-=" => AssignOp::Sub,
                    _ => AssignOp::Set,
                };
                let op_span = span_of(&op_pair);
                let value = self.expr(inner.next()?)?.0;
                StmtKind::Assign {
                    target,
                    op,
                    op_span,
                    value,
                }
            }
            Rule::directive => {
                let keyword = self.ident(inner.next()?);
                let mut directive = Directive {
                    keyword,
                    items: Vec::new(),
                    with: Vec::new(),
                    block: None,
                };
                for part in inner {
                    match part.as_rule() {
                        Rule::items => {
                            let mut comma_before = false;
                            for item in children(part) {
                                if item.as_rule() == Rule::item_comma {
                                    comma_before = true;
                                    continue;
                                }
                                let (name, expr) = if item.as_rule() == Rule::named_item {
                                    let mut parts = children(item);
                                    let name = self.ident(parts.next()?);
                                    (Some(name), self.expr(parts.next()?)?.0)
                                } else {
                                    (None, self.expr(item)?.0)
                                };
                                directive.items.push(Item {
                                    name,
                                    expr,
                                    comma_before,
                                });
                                comma_before = false;
                            }
                        }
                        Rule::with_clause => {
                            directive.with = children(part)
                                .filter(|p| p.as_rule() == Rule::ident)
                                .map(|p| self.ident(p))
                                .collect();
                        }
                        Rule::block => {
                            let block_span = span_of(&part);
                            directive.block = Some(Block {
                                stmts: self.stmts(part),
                                span: block_span,
                            });
                        }
                        _ => {}
                    }
                }
                StmtKind::Directive(directive)
            }
            _ => return None,
        };
        Some(Stmt { kind, span })
    }

    /// Build an expression and its tree depth; `None` after recording an error.
    fn expr(&mut self, pair: Pair<'_, Rule>) -> Option<(Expr, usize)> {
        let span = span_of(&pair);
        let rule = pair.as_rule();
        let built = match rule {
            Rule::expr => {
                let parts: Vec<(Expr, usize)> = children(pair)
                    .filter(|p| p.as_rule() != Rule::kw_then)
                    .map(|p| self.expr(p))
                    .collect::<Option<_>>()?;
                if parts.len() == 1 {
                    parts.into_iter().next()?
                } else {
                    let depth = parts.iter().map(|p| p.1).max().unwrap_or(0) + 1;
                    let exprs = parts.into_iter().map(|p| p.0).collect();
                    (
                        Expr {
                            kind: ExprKind::Then(exprs),
                            span,
                        },
                        depth,
                    )
                }
            }
            Rule::range_expr => {
                let mut inner = children(pair);
                let from = self.expr(inner.next()?)?;
                match inner.next() {
                    None => from,
                    Some(op) => {
                        let both_ways = op.as_str() == "<->";
                        let to = self.expr(inner.next()?)?;
                        let depth = from.1.max(to.1) + 1;
                        (
                            Expr {
                                kind: ExprKind::Range {
                                    from: Box::new(from.0),
                                    to: Box::new(to.0),
                                    both_ways,
                                },
                                span,
                            },
                            depth,
                        )
                    }
                }
            }
            Rule::sum | Rule::product => {
                let mut inner = children(pair);
                let mut acc = self.expr(inner.next()?)?;
                while let Some(op) = inner.next() {
                    let op = match op.as_str() {
                        "+" => BinOp::Add,
                        "-" => BinOp::Sub,
                        "*" => BinOp::Mul,
                        _ => BinOp::Div,
                    };
                    let rhs = self.expr(inner.next()?)?;
                    let joined = acc.0.span.join(rhs.0.span);
                    let depth = acc.1.max(rhs.1) + 1;
                    acc = (
                        Expr {
                            kind: ExprKind::Binary {
                                op,
                                lhs: Box::new(acc.0),
                                rhs: Box::new(rhs.0),
                            },
                            span: joined,
                        },
                        depth,
                    );
                    self.check_depth(&acc)?;
                }
                acc
            }
            Rule::power => {
                // `^` is right-associative: fold from the right.
                let operands: Vec<(Expr, usize)> = children(pair)
                    .map(|p| self.expr(p))
                    .collect::<Option<_>>()?;
                let mut operands = operands.into_iter().rev();
                let mut acc = operands.next()?;
                for lhs in operands {
                    let joined = lhs.0.span.join(acc.0.span);
                    let depth = lhs.1.max(acc.1) + 1;
                    acc = (
                        Expr {
                            kind: ExprKind::Binary {
                                op: BinOp::Pow,
                                lhs: Box::new(lhs.0),
                                rhs: Box::new(acc.0),
                            },
                            span: joined,
                        },
                        depth,
                    );
                    self.check_depth(&acc)?;
                }
                acc
            }
            Rule::signed | Rule::exponent => {
                let parts: Vec<Pair<'_, Rule>> = children(pair).collect();
                let (negs, rest) = parts.split_at(parts.len().saturating_sub(1));
                let mut acc = self.expr(rest.first()?.clone())?;
                for neg in negs.iter().rev() {
                    let start = span_of(neg).start;
                    let inner_span = acc.0.span;
                    acc = (
                        Expr {
                            kind: ExprKind::Neg(Box::new(acc.0)),
                            span: Span::new(start, inner_span.end),
                        },
                        acc.1 + 1,
                    );
                    self.check_depth(&acc)?;
                }
                acc
            }
            Rule::postfix => {
                let mut inner = children(pair);
                let value = self.expr(inner.next()?)?;
                match inner.next() {
                    None => value,
                    Some(unit) => {
                        let unit_kind = match unit.as_str() {
                            "%" => Unit::Percent,
                            s if s.starts_with("step") => Unit::Steps,
                            s if s.starts_with("epoch") => Unit::Epochs,
                            _ => Unit::Samples,
                        };
                        (
                            Expr {
                                kind: ExprKind::Quantity {
                                    value: Box::new(value.0),
                                    unit: unit_kind,
                                    unit_span: span_of(&unit),
                                },
                                span,
                            },
                            value.1 + 1,
                        )
                    }
                }
            }
            Rule::number => {
                let text = pair.as_str().to_string();
                let value = text.parse::<f64>().unwrap_or(f64::NAN);
                (
                    Expr {
                        kind: ExprKind::Number { value, text },
                        span,
                    },
                    1,
                )
            }
            Rule::string => {
                let body = children(pair)
                    .next()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_default();
                let value = match unescape(&body) {
                    Ok(v) => v,
                    Err(bad) => {
                        self.error(span, format!("unknown escape `\\{bad}` in string"));
                        return None;
                    }
                };
                (
                    Expr {
                        kind: ExprKind::Str(value),
                        span,
                    },
                    1,
                )
            }
            Rule::ident => (
                Expr {
                    kind: ExprKind::Ident(pair.as_str().to_string()),
                    span,
                },
                1,
            ),
            Rule::list => {
                let items: Vec<(Expr, usize)> = children(pair)
                    .map(|p| self.expr(p))
                    .collect::<Option<_>>()?;
                let depth = items.iter().map(|i| i.1).max().unwrap_or(0) + 1;
                (
                    Expr {
                        kind: ExprKind::List(items.into_iter().map(|i| i.0).collect()),
                        span,
                    },
                    depth,
                )
            }
            Rule::paren => {
                let inner = self.expr(children(pair).next()?)?;
                let depth = inner.1 + 1;
                (
                    Expr {
                        kind: ExprKind::Paren(Box::new(inner.0)),
                        span,
                    },
                    depth,
                )
            }
            Rule::call => {
                let mut inner = children(pair);
                let name = self.ident(inner.next()?);
                let mut args = Vec::new();
                let mut depth = 1;
                for arg in inner {
                    let mut parts: Vec<Pair<'_, Rule>> = children(arg).collect();
                    let value_pair = parts.pop()?;
                    let arg_name = parts.pop().map(|p| self.ident(p));
                    let value = self.expr(value_pair)?;
                    depth = depth.max(value.1 + 1);
                    args.push(Arg {
                        name: arg_name,
                        value: value.0,
                    });
                }
                (
                    Expr {
                        kind: ExprKind::Call { name, args },
                        span,
                    },
                    depth,
                )
            }
            _ => {
                self.error(
                    span,
                    format!("internal: unexpected {rule:?} in an expression"),
                );
                return None;
            }
        };
        self.check_depth(&built)?;
        Some(built)
    }

    fn check_depth(&mut self, built: &(Expr, usize)) -> Option<()> {
        if built.1 > MAX_EXPR_DEPTH {
            self.errors.push(
                Diagnostic::error(
                    built.0.span,
                    format!("expression is too deeply nested (more than {MAX_EXPR_DEPTH} levels)"),
                )
                .with_help("split it with `let` bindings"),
            );
            return None;
        }
        Some(())
    }
}

fn unescape(body: &str) -> Result<String, char> {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some(other) => return Err(other),
            None => return Err(' '),
        }
    }
    Ok(out)
}
