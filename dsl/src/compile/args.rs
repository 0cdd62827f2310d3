//! Call arguments matched to a function's parameters, with typed getters that
//! check kinds and ranges and report problems on the argument's span.
//!
//! Every getter goes through [`Bound::typed`]: absent, accepted, or rejected (the
//! call is then marked failed). A getter only says what it accepts and how it words
//! a rejection.

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

/// An argument that was present but not accepted (already reported).
struct Rejected;

/// Report `value` as an argument of the wrong kind: an unbound name as an unknown
/// name, anything else with the diagnostic `wrong` builds.
fn unknown_or(
    c: &mut Compiler<'_>,
    value: Value,
    span: Span,
    wrong: impl FnOnce(&Value) -> Diagnostic,
) {
    match &value {
        Value::Symbol(name) => c.unknown_name(name, span),
        other => c.error(wrong(other)),
    }
}

impl Bound {
    fn index(&self, param: &str) -> usize {
        self.params
            .iter()
            .position(|p| *p == param)
            .unwrap_or(usize::MAX)
    }

    pub(super) fn span_of(&self, param: &str) -> Option<Span> {
        self.slots.get(self.index(param))?.as_ref().map(|s| s.1)
    }

    /// The argument `param` as given (any kind), its value span and the span of the
    /// whole argument (`name: value`), if present.
    pub(super) fn given(&self, param: &str) -> Option<(Value, Span, Span)> {
        self.slots.get(self.index(param))?.clone()
    }

    fn get(&self, param: &str) -> Option<(Value, Span)> {
        self.slots
            .get(self.index(param))?
            .as_ref()
            .map(|(v, s, _)| (v.clone(), *s))
    }

    fn fail(&mut self, c: &mut Compiler<'_>, diagnostic: Diagnostic) {
        c.error(diagnostic);
        self.ok = false;
    }

    fn missing(&mut self, c: &mut Compiler<'_>, param: &str, example: &str) {
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

    /// The argument `param` converted by `accept`: `Ok(None)` when absent. A value
    /// `accept` hands back is rejected: quietly if it was already reported, else
    /// through `reject` (given the function name, the value and its span).
    fn typed<T>(
        &mut self,
        c: &mut Compiler<'_>,
        param: &str,
        accept: impl FnOnce(Value) -> Result<T, Value>,
        reject: impl FnOnce(&mut Compiler<'_>, &str, Value, Span),
    ) -> Result<Option<T>, Rejected> {
        let Some((value, span)) = self.get(param) else {
            return Ok(None);
        };
        match accept(value) {
            Ok(v) => Ok(Some(v)),
            Err(Value::Poison) => {
                self.ok = false;
                Err(Rejected)
            }
            Err(other) => {
                reject(c, &self.function, other, span);
                self.ok = false;
                Err(Rejected)
            }
        }
    }

    /// The accepted value, else `default`, else a "missing argument" error.
    fn or_default<T>(
        &mut self,
        c: &mut Compiler<'_>,
        param: &str,
        example: &str,
        got: Result<Option<T>, Rejected>,
        default: Option<T>,
    ) -> Option<T> {
        match got {
            Ok(Some(v)) => Some(v),
            Ok(None) if default.is_some() => default,
            Ok(None) => {
                self.missing(c, param, example);
                None
            }
            Err(Rejected) => None,
        }
    }

    /// Any value, required.
    pub(super) fn take(&mut self, c: &mut Compiler<'_>, param: &str) -> Option<(Value, Span)> {
        let span = self.span_of(param);
        let got = self.typed(c, param, Ok, |_, _, _, _| {});
        let value = self.or_default(c, param, "…", got, None)?;
        Some((value, span.unwrap_or(self.call_span)))
    }

    pub(super) fn number(
        &mut self,
        c: &mut Compiler<'_>,
        param: &str,
        default: Option<f64>,
    ) -> Option<f64> {
        let got = self.typed(
            c,
            param,
            |v| match v {
                Value::Number(n) => Ok(n),
                other => Err(other),
            },
            |c, function, value, span| {
                unknown_or(c, value, span, |value| match value {
                    Value::Duration(_) => Diagnostic::error(
                        span,
                        format!("`{param}` of `{function}` is a plain number, not a length"),
                    )
                    .with_label("drop the unit"),
                    other => Diagnostic::error(
                        span,
                        format!(
                            "`{param}` of `{function}` must be a constant number, found {}",
                            other.kind()
                        ),
                    )
                    .with_label("not a constant number"),
                })
            },
        );
        self.or_default(c, param, "0.1", got, default)
    }

    /// A constant number accepted by `ok`, else an error saying it must be `rule`.
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
        );
        None
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

    /// A length in steps, checked by [`Compiler::length_of`].
    fn length_value(
        &mut self,
        c: &mut Compiler<'_>,
        param: &str,
        allow_zero: bool,
    ) -> Result<Option<f64>, Rejected> {
        let Some((value, span)) = self.get(param) else {
            return Ok(None);
        };
        match c.length_of(value, span, &format!("`{param}`"), allow_zero) {
            Some(steps) => Ok(Some(steps)),
            None => {
                self.ok = false;
                Err(Rejected)
            }
        }
    }

    pub(super) fn opt_length(&mut self, c: &mut Compiler<'_>, param: &str) -> Option<f64> {
        self.length_value(c, param, false).ok().flatten()
    }

    pub(super) fn opt_length_or_zero(&mut self, c: &mut Compiler<'_>, param: &str) -> Option<f64> {
        self.length_value(c, param, true).ok().flatten()
    }

    pub(super) fn length(
        &mut self,
        c: &mut Compiler<'_>,
        param: &str,
        default: Option<f64>,
    ) -> Option<f64> {
        let got = self.length_value(c, param, false);
        self.or_default(c, param, "10 steps", got, default)
    }

    pub(super) fn length_or_zero(&mut self, c: &mut Compiler<'_>, param: &str) -> Option<f64> {
        let got = self.length_value(c, param, true);
        self.or_default(c, param, "10 steps", got, None)
    }

    pub(super) fn bool(&mut self, c: &mut Compiler<'_>, param: &str, default: bool) -> bool {
        let got = self.typed(
            c,
            param,
            |v| match v {
                Value::Symbol(s) if s == "true" => Ok(true),
                Value::Symbol(s) if s == "false" => Ok(false),
                other => Err(other),
            },
            |c, _, value, span| {
                c.error(
                    Diagnostic::error(
                        span,
                        format!(
                            "`{param}` must be `true` or `false`, found {}",
                            value.kind()
                        ),
                    )
                    .with_label("not a boolean"),
                )
            },
        );
        got.ok().flatten().unwrap_or(default)
    }

    pub(super) fn choice(
        &mut self,
        c: &mut Compiler<'_>,
        param: &str,
        choices: &[&'static str],
        default: &'static str,
    ) -> Option<String> {
        let got = self.typed(
            c,
            param,
            |v| match v {
                Value::Symbol(s) | Value::Str(s) => Ok(s),
                other => Err(other),
            },
            |c, _, value, span| {
                c.error(
                    Diagnostic::error(
                        span,
                        format!(
                            "`{param}` must be one of {}, found {}",
                            choices.join(", "),
                            value.kind()
                        ),
                    )
                    .with_label("not a choice"),
                )
            },
        );
        let word = self.or_default(c, param, default, got, Some(default.to_string()))?;
        if choices.contains(&word.as_str()) {
            return Some(word);
        }
        let span = self.span_of(param).unwrap_or(self.call_span);
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
        let got = self.typed(
            c,
            param,
            |v| match v {
                Value::Range {
                    from,
                    to,
                    both_ways: false,
                } => Ok((from, to)),
                Value::Number(n) if number_means_to_zero => Ok((n, 0.0)),
                other => Err(other),
            },
            |c, function, value, span| {
                unknown_or(c, value, span, |value| {
                    let found = match value {
                        Value::Range { .. } => "a cycle `<->`",
                        other => other.kind(),
                    };
                    Diagnostic::error(
                        span,
                        format!("`{function}` needs a range `from -> to`, found {found}"),
                    )
                    .with_label("expected `a -> b`")
                    .with_help(format!("e.g. `{function}(0.1 -> 0.001, over: 90 steps)`"))
                })
            },
        );
        self.or_default(c, param, "0.1 -> 0", got, None)
    }

    pub(super) fn cycle_range(&mut self, c: &mut Compiler<'_>, param: &str) -> Option<(f64, f64)> {
        let got = self.typed(
            c,
            param,
            |v| match v {
                Value::Range {
                    from,
                    to,
                    both_ways: true,
                } => Ok((from, to)),
                other => Err(other),
            },
            |c, _, value, span| {
                let found = match &value {
                    Value::Range { .. } => "a one-way range `->`",
                    other => other.kind(),
                };
                c.error(
                    Diagnostic::error(
                        span,
                        format!("`cyclic` needs a cycle `low <-> high`, found {found}"),
                    )
                    .with_label("expected `a <-> b`")
                    .with_help("e.g. `cyclic(0.001 <-> 0.1, half: 2000 steps)`"),
                )
            },
        );
        self.or_default(c, param, "0.001 <-> 0.1", got, None)
    }

    pub(super) fn schedule(&mut self, c: &mut Compiler<'_>, param: &str) -> Option<(Sched, Span)> {
        let span = self.span_of(param);
        let got = self.typed(
            c,
            param,
            |v| match v {
                Value::Schedule(s) => Ok(s),
                other => Err(other),
            },
            |c, _, value, span| {
                c.error(
                    Diagnostic::error(
                        span,
                        format!("`{param}` must be a schedule, found {}", value.kind()),
                    )
                    .with_label("not a schedule")
                    .with_help("e.g. `restarts(cosine(0.1 -> 0), period: 10 epochs)`"),
                )
            },
        );
        let schedule = self.or_default(c, param, "cosine(0.1 -> 0)", got, None)?;
        Some((schedule, span.unwrap_or(self.call_span)))
    }

    /// A list, with each item's value and span, and the span of the whole list.
    fn list(
        &mut self,
        c: &mut Compiler<'_>,
        param: &str,
        example: &str,
    ) -> Option<(Vec<(Value, Span)>, Span)> {
        let span = self.span_of(param);
        let got = self.typed(
            c,
            param,
            |v| match v {
                Value::List(items) => Ok(items),
                other => Err(other),
            },
            |c, _, value, span| {
                c.error(
                    Diagnostic::error(
                        span,
                        format!("`{param}` must be a list, found {}", value.kind()),
                    )
                    .with_label("not a list")
                    .with_help(format!("e.g. `{param}: {example}`")),
                )
            },
        );
        let items = self.or_default(c, param, example, got, None)?;
        Some((items, span.unwrap_or(self.call_span)))
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

    /// Strictly increasing lengths (`allow_zero`: the first may be 0, and the list
    /// may be empty).
    pub(super) fn length_list(
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
                    self.fail(c, missing_unit_at(span, n, "a point"));
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
