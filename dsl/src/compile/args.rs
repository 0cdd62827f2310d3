//! Call arguments matched to a function's parameters, with typed getters that
//! check kinds and ranges and report problems on the argument's span.

use regimen_core::Anneal;

use super::{fmt_num, missing_unit_at, Compiler, Sched, Value};
use crate::diagnostic::{closest, Diagnostic, Span};

/// Call arguments matched to parameters; getters check kinds and ranges, report
/// problems through the compiler and mark the call as failed.
pub(super) struct Bound {
    pub(super) function: String,
    pub(super) call_span: Span,
    pub(super) params: Vec<&'static str>,
    /// Per parameter: value, value span, whole argument span.
    pub(super) slots: Vec<Option<(Value, Span, Span)>>,
    pub(super) ok: bool,
}

impl Bound {
    pub(super) fn index(&self, param: &str) -> usize {
        self.params
            .iter()
            .position(|p| *p == param)
            .unwrap_or(usize::MAX)
    }

    pub(super) fn span_of(&self, param: &str) -> Option<Span> {
        self.slots.get(self.index(param))?.as_ref().map(|s| s.1)
    }

    pub(super) fn get(&self, param: &str) -> Option<(Value, Span)> {
        self.slots
            .get(self.index(param))?
            .as_ref()
            .map(|(v, s, _)| (v.clone(), *s))
    }

    pub(super) fn fail(&mut self, c: &mut Compiler<'_>, diagnostic: Diagnostic) -> Option<f64> {
        c.error(diagnostic);
        self.ok = false;
        None
    }

    pub(super) fn missing(&mut self, c: &mut Compiler<'_>, param: &str, example: &str) {
        c.error(
            Diagnostic::error(
                self.call_span,
                format!("`{}` is missing its `{param}` argument", self.function),
            )
            .with_label(format!("needs `{param}`"))
            .with_help(format!("add `{param}: {example}`")),
        );
        self.ok = false;
    }

    pub(super) fn take(&mut self, c: &mut Compiler<'_>, param: &str) -> Option<(Value, Span)> {
        match self.get(param) {
            Some(v) => Some(v),
            None => {
                self.missing(c, param, "…");
                None
            }
        }
    }

    pub(super) fn number(
        &mut self,
        c: &mut Compiler<'_>,
        param: &str,
        default: Option<f64>,
    ) -> Option<f64> {
        match (self.get(param), default) {
            (None, Some(d)) => Some(d),
            (None, None) => {
                self.missing(c, param, "0.1");
                None
            }
            (Some((Value::Number(n), _)), _) => Some(n),
            (Some((Value::Symbol(name), span)), _) => {
                c.unknown_name(&name, span);
                self.ok = false;
                None
            }
            (Some((Value::Poison, _)), _) => {
                self.ok = false;
                None
            }
            (Some((Value::Duration(_), span)), _) => self.fail(
                c,
                Diagnostic::error(
                    span,
                    format!(
                        "`{param}` of `{}` is a plain number, not a length",
                        self.function
                    ),
                )
                .with_label("drop the unit"),
            ),
            (Some((other, span)), _) => self.fail(
                c,
                Diagnostic::error(
                    span,
                    format!(
                        "`{param}` of `{}` must be a constant number, found {}",
                        self.function,
                        other.kind()
                    ),
                )
                .with_label("not a constant number"),
            ),
        }
    }

    pub(super) fn checked(
        &mut self,
        c: &mut Compiler<'_>,
        param: &str,
        default: Option<f64>,
        ok: impl Fn(f64) -> bool,
        rule: &str,
    ) -> Option<f64> {
        let n = self.number(c, param, default)?;
        if ok(n) {
            return Some(n);
        }
        let span = self.span_of(param).unwrap_or(self.call_span);
        self.fail(
            c,
            Diagnostic::error(
                span,
                format!("`{param}` must be {rule}, not {}", fmt_num(n)),
            )
            .with_label("out of range"),
        )
    }

    pub(super) fn positive(
        &mut self,
        c: &mut Compiler<'_>,
        param: &str,
        default: Option<f64>,
    ) -> Option<f64> {
        self.checked(c, param, default, |n| n > 0.0, "greater than zero")
    }

    pub(super) fn non_negative(
        &mut self,
        c: &mut Compiler<'_>,
        param: &str,
        default: Option<f64>,
    ) -> Option<f64> {
        self.checked(c, param, default, |n| n >= 0.0, "zero or more")
    }

    pub(super) fn fraction(
        &mut self,
        c: &mut Compiler<'_>,
        param: &str,
        default: f64,
    ) -> Option<f64> {
        self.checked(
            c,
            param,
            Some(default),
            |n| n > 0.0 && n < 1.0,
            "strictly between 0 and 1",
        )
    }

    pub(super) fn fraction_number(
        &mut self,
        c: &mut Compiler<'_>,
        param: &str,
        default: f64,
    ) -> Option<f64> {
        self.checked(
            c,
            param,
            Some(default),
            |n| (0.0..=1.0).contains(&n),
            "between 0 and 1",
        )
    }

    pub(super) fn length_value(
        &mut self,
        c: &mut Compiler<'_>,
        param: &str,
        allow_zero: bool,
    ) -> Option<Option<f64>> {
        let Some((value, span)) = self.get(param) else {
            return Some(None);
        };
        match value {
            Value::Duration(steps) if steps > 0.0 || (allow_zero && steps == 0.0) => {
                Some(Some(steps))
            }
            Value::Duration(steps) => {
                let rule = if allow_zero {
                    "zero or more"
                } else {
                    "greater than zero"
                };
                self.fail(
                    c,
                    Diagnostic::error(
                        span,
                        format!("`{param}` must be {rule}, not {} steps", fmt_num(steps)),
                    )
                    .with_label("out of range"),
                );
                None
            }
            Value::Number(n) => {
                c.error(missing_unit_at(span, n, &format!("`{param}`")));
                self.ok = false;
                None
            }
            Value::Symbol(name) => {
                c.unknown_name(&name, span);
                self.ok = false;
                None
            }
            Value::Poison => {
                self.ok = false;
                None
            }
            other => {
                self.fail(
                    c,
                    Diagnostic::error(
                        span,
                        format!("`{param}` must be a length, found {}", other.kind()),
                    )
                    .with_label("not a length")
                    .with_help(
                        "lengths are written `30 steps`, `3 epochs`, `50000 samples` or `10%`",
                    ),
                );
                None
            }
        }
    }

    pub(super) fn opt_length(&mut self, c: &mut Compiler<'_>, param: &str) -> Option<f64> {
        self.length_value(c, param, false).flatten()
    }

    pub(super) fn opt_length_or_zero(&mut self, c: &mut Compiler<'_>, param: &str) -> Option<f64> {
        self.length_value(c, param, true).flatten()
    }

    pub(super) fn length(
        &mut self,
        c: &mut Compiler<'_>,
        param: &str,
        default: Option<f64>,
    ) -> Option<f64> {
        match self.length_value(c, param, false)? {
            Some(l) => Some(l),
            None => match default {
                Some(d) => Some(d),
                None => {
                    self.missing(c, param, "10 steps");
                    None
                }
            },
        }
    }

    pub(super) fn length_or_zero(&mut self, c: &mut Compiler<'_>, param: &str) -> Option<f64> {
        match self.length_value(c, param, true)? {
            Some(l) => Some(l),
            None => {
                self.missing(c, param, "10 steps");
                None
            }
        }
    }

    pub(super) fn bool(&mut self, c: &mut Compiler<'_>, param: &str, default: bool) -> bool {
        match self.get(param) {
            None => default,
            Some((Value::Symbol(s), _)) if s == "true" => true,
            Some((Value::Symbol(s), _)) if s == "false" => false,
            Some((Value::Poison, _)) => {
                self.ok = false;
                default
            }
            Some((other, span)) => {
                self.fail(
                    c,
                    Diagnostic::error(
                        span,
                        format!(
                            "`{param}` must be `true` or `false`, found {}",
                            other.kind()
                        ),
                    )
                    .with_label("not a boolean"),
                );
                default
            }
        }
    }

    pub(super) fn choice(
        &mut self,
        c: &mut Compiler<'_>,
        param: &str,
        choices: &[&'static str],
        default: &'static str,
    ) -> Option<String> {
        let (value, span) = match self.get(param) {
            None => return Some(default.to_string()),
            Some(v) => v,
        };
        let word = match value {
            Value::Symbol(s) | Value::Str(s) => s,
            Value::Poison => {
                self.ok = false;
                return None;
            }
            other => {
                self.fail(
                    c,
                    Diagnostic::error(
                        span,
                        format!(
                            "`{param}` must be one of {}, found {}",
                            choices.join(", "),
                            other.kind()
                        ),
                    )
                    .with_label("not a choice"),
                );
                return None;
            }
        };
        if choices.contains(&word.as_str()) {
            return Some(word);
        }
        let mut d = Diagnostic::error(span, format!("`{word}` is not a valid `{param}`"))
            .with_label(format!("expected one of: {}", choices.join(", ")));
        if let Some(near) = closest(&word, choices.iter().copied()) {
            d = d.with_help(format!("did you mean `{near}`?"));
        }
        self.fail(c, d);
        None
    }

    /// One-cycle interpolation: `anneal: cos` (default) or `anneal: linear`.
    pub(super) fn anneal(&mut self, c: &mut Compiler<'_>) -> Option<Anneal> {
        let word = self.choice(c, "anneal", &["cos", "linear"], "cos")?;
        Some(if word == "linear" {
            Anneal::Linear
        } else {
            Anneal::Cos
        })
    }

    /// `a -> b`; with `number_means_to_zero`, a single number `a` means `a -> 0`.
    pub(super) fn range(
        &mut self,
        c: &mut Compiler<'_>,
        param: &str,
        number_means_to_zero: bool,
    ) -> Option<(f64, f64)> {
        match self.get(param) {
            None => {
                self.missing(c, param, "0.1 -> 0");
                None
            }
            Some((
                Value::Range {
                    from,
                    to,
                    both_ways: false,
                },
                _,
            )) => Some((from, to)),
            Some((Value::Number(n), _)) if number_means_to_zero => Some((n, 0.0)),
            Some((Value::Poison, _)) => {
                self.ok = false;
                None
            }
            Some((Value::Symbol(name), span)) => {
                c.unknown_name(&name, span);
                self.ok = false;
                None
            }
            Some((other, span)) => {
                let found = if matches!(
                    other,
                    Value::Range {
                        both_ways: true,
                        ..
                    }
                ) {
                    "a cycle `<->`"
                } else {
                    other.kind()
                };
                self.fail(
                    c,
                    Diagnostic::error(
                        span,
                        format!(
                            "`{}` needs a range `from -> to`, found {found}",
                            self.function
                        ),
                    )
                    .with_label("expected `a -> b`")
                    .with_help(format!(
                        "e.g. `{}(0.1 -> 0.001, over: 90 steps)`",
                        self.function
                    )),
                );
                None
            }
        }
    }

    pub(super) fn cycle_range(&mut self, c: &mut Compiler<'_>, param: &str) -> Option<(f64, f64)> {
        match self.get(param) {
            None => {
                self.missing(c, param, "0.001 <-> 0.1");
                None
            }
            Some((
                Value::Range {
                    from,
                    to,
                    both_ways: true,
                },
                _,
            )) => Some((from, to)),
            Some((Value::Poison, _)) => {
                self.ok = false;
                None
            }
            Some((other, span)) => {
                let found = if matches!(
                    other,
                    Value::Range {
                        both_ways: false,
                        ..
                    }
                ) {
                    "a one-way range `->`"
                } else {
                    other.kind()
                };
                self.fail(
                    c,
                    Diagnostic::error(
                        span,
                        format!("`cyclic` needs a cycle `low <-> high`, found {found}"),
                    )
                    .with_label("expected `a <-> b`")
                    .with_help("e.g. `cyclic(0.001 <-> 0.1, half: 2000 steps)`"),
                );
                None
            }
        }
    }

    pub(super) fn schedule(&mut self, c: &mut Compiler<'_>, param: &str) -> Option<(Sched, Span)> {
        match self.get(param) {
            None => {
                self.missing(c, param, "cosine(0.1 -> 0)");
                None
            }
            Some((Value::Schedule(s), span)) => Some((s, span)),
            Some((Value::Poison, _)) => {
                self.ok = false;
                None
            }
            Some((other, span)) => {
                self.fail(
                    c,
                    Diagnostic::error(
                        span,
                        format!("`{param}` must be a schedule, found {}", other.kind()),
                    )
                    .with_label("not a schedule")
                    .with_help("e.g. `restarts(cosine(0.1 -> 0), period: 10 epochs)`"),
                );
                None
            }
        }
    }

    pub(super) fn list(
        &mut self,
        c: &mut Compiler<'_>,
        param: &str,
        example: &str,
    ) -> Option<(Vec<(Value, Span)>, Span)> {
        match self.get(param) {
            None => {
                self.missing(c, param, example);
                None
            }
            Some((Value::List(items), span)) => Some((items, span)),
            Some((Value::Poison, _)) => {
                self.ok = false;
                None
            }
            Some((other, span)) => {
                self.fail(
                    c,
                    Diagnostic::error(
                        span,
                        format!("`{param}` must be a list, found {}", other.kind()),
                    )
                    .with_label("not a list")
                    .with_help(format!("e.g. `{param}: {example}`")),
                );
                None
            }
        }
    }

    pub(super) fn number_list(&mut self, c: &mut Compiler<'_>, param: &str) -> Option<Vec<f64>> {
        let (items, _) = self.list(c, param, "[0.1, 0.01]")?;
        let mut out = Vec::with_capacity(items.len());
        for (value, span) in items {
            match value {
                Value::Number(n) => out.push(n),
                Value::Poison => self.ok = false,
                other => {
                    self.fail(
                        c,
                        Diagnostic::error(
                            span,
                            format!("expected a number, found {}", other.kind()),
                        )
                        .with_label("not a number"),
                    );
                }
            }
        }
        self.ok.then_some(out)
    }

    pub(super) fn length_list(&mut self, c: &mut Compiler<'_>, param: &str) -> Option<Vec<f64>> {
        self.length_list_allow_zero(c, param, false)
    }

    pub(super) fn length_list_allow_zero(
        &mut self,
        c: &mut Compiler<'_>,
        param: &str,
        allow_zero: bool,
    ) -> Option<Vec<f64>> {
        let (items, list_span) = self.list(c, param, "[30 steps, 60 steps]")?;
        let mut out: Vec<f64> = Vec::with_capacity(items.len());
        for (value, span) in items {
            match value {
                Value::Duration(steps) if steps > 0.0 || (allow_zero && steps == 0.0) => {
                    if let Some(previous) = out.last() {
                        if steps <= *previous {
                            self.fail(
                                c,
                                Diagnostic::error(span, "points must be strictly increasing")
                                    .with_label(format!("not after {} steps", fmt_num(*previous))),
                            );
                        }
                    }
                    out.push(steps);
                }
                Value::Duration(steps) => {
                    self.fail(
                        c,
                        Diagnostic::error(
                            span,
                            format!(
                                "a point must be greater than zero, not {} steps",
                                fmt_num(steps)
                            ),
                        )
                        .with_label("out of range"),
                    );
                }
                Value::Number(n) => {
                    c.error(missing_unit_at(span, n, "a point"));
                    self.ok = false;
                }
                Value::Poison => self.ok = false,
                other => {
                    self.fail(
                        c,
                        Diagnostic::error(
                            span,
                            format!("expected a length, found {}", other.kind()),
                        )
                        .with_label("not a length"),
                    );
                }
            }
        }
        if out.is_empty() && self.ok && !allow_zero {
            self.fail(
                c,
                Diagnostic::error(list_span, format!("`{param}` needs at least one point"))
                    .with_label("empty"),
            );
        }
        self.ok.then_some(out)
    }
}
