//! `compress METHOD[(NAME: value, …)] [with error_feedback]`: gradient compression at
//! the top level (every parameter no group overrides) or inside a `group` block,
//! compiled into a [`CompressSpec`].
//!
//! Arguments are named. Numbers, lengths (converted to steps), bare words and strings
//! (`approx: sample`) and `true`/`false` go into the spec's [`Args`] as written. A
//! numeric argument that is a schedule of progress becomes the graph output
//! [`CompressSpec::output_name`] (listed in [`CompressSpec::scheduled`]) and its value
//! at step 0 goes into the arguments, so the method can validate it. The method
//! itself checks its arguments at compile time: the compiler builds it once with
//! [`regimen_core::compress::build`] and shows a refusal on the culprit argument.
//!
//! Error feedback is the host's business: `with error_feedback` or the argument
//! `error_feedback: true|false` sets [`CompressSpec::error_feedback`]; an
//! `error_feedback:` argument also stays in the arguments, where the methods accept
//! it.

use regimen_core::compress::{BuildError, FeedbackPolicy, BUILTIN_METHODS, ERROR_FEEDBACK_ARG};
use regimen_core::loader::ExportKind;
use regimen_core::plugin::{ArgError, ArgValue, Args};
use regimen_core::strategy::{CompressSpec, ScheduledArg};

use super::callee;
use crate::ast::*;
use crate::compile::{Compiler, Sched, Value};
use crate::diagnostic::{closest, Diagnostic, Span};

/// The one word `with` accepts after a compression method.
const WITH_ERROR_FEEDBACK: &str = "error_feedback";

/// A method's main argument, for help texts: `(name, typical value)`.
fn main_argument(method: &str) -> Option<(&'static str, &'static str)> {
    Some(match method {
        "topk" | "randomk" => ("ratio", "0.01"),
        "dgc" => ("ratio", "0.001"),
        "threshold" => ("value", "0.001"),
        "qsgd" => ("levels", "8"),
        "terngrad" => ("clip", "2.5"),
        "powersgd" => ("rank", "4"),
        _ => return None,
    })
}

/// A typical call of `method`, for help texts.
fn method_example(method: &str) -> String {
    match main_argument(method) {
        Some((name, value)) => format!("{method}({name}: {value})"),
        None => "topk(ratio: 0.01)".to_string(),
    }
}

/// The parameter names listed by [`Args::only`]'s refusal ("is not a parameter;
/// expected one of: a, b"), so the diagnostic can suggest the nearest one.
fn listed_parameters(message: &str) -> Option<Vec<&str>> {
    let list = message
        .strip_prefix("is not a parameter")?
        .split_once("expected one of:")?
        .1;
    Some(
        list.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect(),
    )
}

/// One named argument as the script wrote it.
struct WrittenArg<'s> {
    name: &'s Ident,
    /// `name: value`.
    span: Span,
    /// The value alone.
    value_span: Span,
    /// The bare word it was, if it was one (`sample`, or a misspelt `let` name).
    word: Option<String>,
    /// A schedule: the method sees its value at step 0.
    scheduled: bool,
    /// Written with `%`, which is a share of the horizon, not of 1.
    percent: bool,
}

/// The arguments of a compression call, compiled.
struct CompiledArgs<'s> {
    args: Args,
    scheduled: Vec<ScheduledArg>,
    written: Vec<WrittenArg<'s>>,
    /// `error_feedback: true|false` and where it was given.
    feedback: Option<(bool, Span)>,
    ok: bool,
}

impl<'a> Compiler<'a> {
    /// Compile one `compress` statement; `group` is the 0-based index of the group
    /// it is in, `None` at the top level. `None` when it is rejected (reported).
    pub(super) fn compress_statement(
        &mut self,
        directive: &'a Directive,
        group: Option<usize>,
    ) -> Option<CompressSpec> {
        let with_feedback = self.compress_with_words(directive);
        let mut ok = with_feedback.is_ok();
        if let Some(block) = &directive.block {
            self.error(
                Diagnostic::error(block.span, "`compress` takes no `{ … }` block")
                    .with_label("not expected here")
                    .with_help("write it as `compress topk(ratio: 0.01) with error_feedback`"),
            );
            ok = false;
        }
        let expr = self.sole_item(directive, "a compression method")?;
        let Some((method, call_args)) = callee(expr) else {
            self.not_a_method(expr);
            return None;
        };
        if !BUILTIN_METHODS.contains(&method.name.as_str())
            && self
                .plugins
                .find(ExportKind::Compressor, &method.name)
                .is_none()
        {
            self.unknown_method(&method);
            self.check_args(call_args);
            return None;
        }
        let compiled = self.compress_args(&method.name, call_args, group);
        let error_feedback = match (with_feedback, compiled.feedback) {
            (Ok(Some(with_span)), Some((_, arg_span))) => {
                self.error(
                    Diagnostic::error(with_span, "error feedback is set twice")
                        .with_label("set again here")
                        .with_note(arg_span, "first set here")
                        .with_help(
                            "keep one: `with error_feedback`, or `error_feedback: false` to turn it off",
                        ),
                );
                ok = false;
                None
            }
            (Ok(Some(_)), None) => Some(true),
            (_, Some((on, _))) => Some(on),
            _ => None,
        };
        // The method still judges well-formed arguments when only `with` failed.
        if !compiled.ok {
            return None;
        }
        let spec = CompressSpec {
            method: method.name.clone(),
            args: compiled.args,
            scheduled: compiled.scheduled,
            error_feedback,
        };
        match self.registry.build(&spec.method, &spec.args) {
            Ok(compressor) => {
                if compressor.feedback() == FeedbackPolicy::Internal {
                    if let Some(span) = with_feedback
                        .ok()
                        .flatten()
                        .or(compiled.feedback.map(|(_, span)| span))
                    {
                        self.diagnostics.push(
                            Diagnostic::warning(
                                span,
                                format!("error feedback changes nothing for `{}`", spec.method),
                            )
                            .with_label("ignored")
                            .with_help(format!(
                                "`{}` accumulates what it does not send itself",
                                spec.method
                            )),
                        );
                    }
                }
                ok.then_some(spec)
            }
            Err(BuildError::Unknown(_)) => {
                self.unknown_method(&method);
                None
            }
            Err(BuildError::Args { error, .. }) => {
                self.refused(&method, expr.span, &compiled.written, &error);
                None
            }
        }
    }

    /// The words after `with`: `Ok(Some(span))` for `with error_feedback`, `Err` when
    /// one is unknown or repeated (reported).
    fn compress_with_words(&mut self, directive: &Directive) -> Result<Option<Span>, ()> {
        let mut found: Option<Span> = None;
        let mut ok = true;
        for word in &directive.with {
            if word.name == WITH_ERROR_FEEDBACK {
                if let Some(first) = found {
                    self.error(
                        Diagnostic::error(word.span, "`error_feedback` is given twice")
                            .with_label("again here")
                            .with_note(first, "first given here"),
                    );
                    ok = false;
                } else {
                    found = Some(word.span);
                }
                continue;
            }
            let d = Diagnostic::error(word.span, format!("unknown `with` option `{}`", word.name))
                .with_label("not an option of `compress`");
            let d = match closest(&word.name, [WITH_ERROR_FEEDBACK]) {
                Some(near) => d.with_help(format!("did you mean `{near}`?")),
                None => d.with_help("the only option is `with error_feedback`"),
            };
            self.error(d);
            ok = false;
        }
        if ok {
            Ok(found)
        } else {
            Err(())
        }
    }

    /// `compress 0.01` or `compress "topk"`: not a method name.
    fn not_a_method(&mut self, expr: &Expr) {
        let help = match &expr.kind {
            ExprKind::Str(name) if BUILTIN_METHODS.contains(&name.as_str()) => {
                format!("write it without quotes: `compress {name}`")
            }
            _ => "e.g. `compress topk(ratio: 0.01)`".to_string(),
        };
        self.error(
            Diagnostic::error(expr.span, "expected a compression method")
                .with_label("not a compression method")
                .with_help(help),
        );
        self.value(expr);
    }

    fn unknown_method(&mut self, method: &Ident) {
        self.unknown_component(
            method,
            BUILTIN_METHODS,
            ExportKind::Compressor,
            "compression method",
            "compression methods",
        );
    }

    /// The call's arguments as the method receives them; scheduled numbers become
    /// graph outputs.
    fn compress_args<'s>(
        &mut self,
        method: &str,
        call_args: &'s [Arg],
        group: Option<usize>,
    ) -> CompiledArgs<'s> {
        let mut out = CompiledArgs {
            args: Args::new(),
            scheduled: Vec::new(),
            written: Vec::new(),
            feedback: None,
            ok: true,
        };
        for (position, arg) in call_args.iter().enumerate() {
            let Some(name) = &arg.name else {
                self.positional_argument(method, arg, position);
                self.value(&arg.value);
                out.ok = false;
                continue;
            };
            let span = name.span.join(arg.value.span);
            if let Some(first) = out.written.iter().find(|w| w.name.name == name.name) {
                let first = first.span;
                self.error(
                    Diagnostic::error(span, format!("argument `{}` is given twice", name.name))
                        .with_label("again here")
                        .with_note(first, "first given here"),
                );
                self.value(&arg.value);
                out.ok = false;
                continue;
            }
            let value = self.value(&arg.value);
            out.written.push(WrittenArg {
                name,
                span,
                value_span: arg.value.span,
                word: match &value {
                    Value::Symbol(word) => Some(word.clone()),
                    _ => None,
                },
                scheduled: false,
                percent: matches!(
                    arg.value.kind,
                    ExprKind::Quantity {
                        unit: Unit::Percent,
                        ..
                    }
                ),
            });
            if name.name == ERROR_FEEDBACK_ARG {
                match value {
                    Value::Symbol(word) if word == "true" || word == "false" => {
                        let on = word == "true";
                        out.feedback = Some((on, span));
                        out.args = std::mem::take(&mut out.args)
                            .with(name.name.clone(), ArgValue::Bool(on));
                    }
                    Value::Poison => out.ok = false,
                    other => {
                        self.error(
                            Diagnostic::error(
                                arg.value.span,
                                format!(
                                    "`{ERROR_FEEDBACK_ARG}` must be `true` or `false`, found {}",
                                    other.kind()
                                ),
                            )
                            .with_label("not a boolean")
                            .with_help("write `with error_feedback`, or `error_feedback: false` to turn it off"),
                        );
                        out.ok = false;
                    }
                }
                continue;
            }
            let output = CompressSpec::output_name(group, &name.name);
            match self.compress_arg_value(method, &name.name, value, arg.value.span, &output) {
                Some((value, scheduled)) => {
                    out.args = std::mem::take(&mut out.args).with(name.name.clone(), value);
                    if scheduled {
                        if let Some(written) = out.written.last_mut() {
                            written.scheduled = true;
                        }
                        out.scheduled.push(ScheduledArg {
                            arg: name.name.clone(),
                            output,
                        });
                    }
                }
                None => out.ok = false,
            }
        }
        out
    }

    fn positional_argument(&mut self, method: &str, arg: &Arg, position: usize) {
        let help = match main_argument(method) {
            Some((name, _)) if position == 0 => format!(
                "did you mean `{name}: {}`?",
                crate::format::expr(&arg.value)
            ),
            _ => format!(
                "arguments of a compression method are named, e.g. `{}`",
                method_example(method)
            ),
        };
        self.error(
            Diagnostic::error(arg.value.span, "compression arguments must be named")
                .with_label("give it a name")
                .with_help(help),
        );
    }

    /// One argument's value: the argument as the method receives it, and whether it
    /// is a schedule (then compiled into the output `output`).
    fn compress_arg_value(
        &mut self,
        method: &str,
        name: &str,
        value: Value,
        span: Span,
        output: &str,
    ) -> Option<(ArgValue, bool)> {
        let sched = match value {
            Value::Number(n) | Value::Duration(n) => return Some((ArgValue::Number(n), false)),
            Value::Str(text) => return Some((ArgValue::Text(text), false)),
            Value::Symbol(word) => {
                return Some(match word.as_str() {
                    "true" => (ArgValue::Bool(true), false),
                    "false" => (ArgValue::Bool(false), false),
                    _ => (ArgValue::Text(word), false),
                })
            }
            Value::Schedule(sched) => sched,
            Value::Poison => return None,
            other => {
                self.error(
                    Diagnostic::error(
                        span,
                        format!(
                            "`{name}` of `{method}` must be a number, a schedule, a word or `true`/`false`, found {}",
                            other.kind()
                        ),
                    )
                    .with_label("not an argument value")
                    .with_help(format!("e.g. `{}`", method_example(method))),
                );
                return None;
            }
        };
        self.scheduled_compress_arg(name, sched, span, output)
    }

    /// A schedule argument: its graph output and its step-0 value. A constant
    /// schedule stays a plain number.
    fn scheduled_compress_arg(
        &mut self,
        name: &str,
        sched: Sched,
        span: Span,
        output: &str,
    ) -> Option<(ArgValue, bool)> {
        let node = self.scalar_output(name, Value::Schedule(sched), span)?;
        let at_start = self.graph.eval_node(node, 0.0, self.graph.root_length());
        if !at_start.is_finite() {
            self.error(
                Diagnostic::error(
                    span,
                    format!("`{name}` is not a finite number at step 0 (it is {at_start})"),
                )
                .with_label("not finite"),
            );
            return None;
        }
        if self.is_const(node) {
            return Some((ArgValue::Number(at_start), false));
        }
        self.add_output(output, node, span);
        Some((ArgValue::Number(at_start), true))
    }

    /// Show the method's refusal of its arguments on the culprit.
    fn refused(
        &mut self,
        method: &Ident,
        call_span: Span,
        written: &[WrittenArg<'_>],
        error: &ArgError,
    ) {
        let culprit = error
            .argument
            .as_deref()
            .and_then(|name| written.iter().find(|w| w.name.name == name));
        let Some(culprit) = culprit else {
            let d = match error.argument.as_deref() {
                Some(name) if error.message == "is required" => Diagnostic::error(
                    call_span,
                    format!("`{}` is missing its `{name}` argument", method.name),
                )
                .with_label(format!("needs `{name}`"))
                .with_help(match main_argument(&method.name) {
                    Some((main, example)) if main == name => format!("add `{name}: {example}`"),
                    _ => format!("add `{name}: …`"),
                }),
                _ => Diagnostic::error(
                    call_span,
                    BuildError::Args {
                        method: method.name.clone(),
                        error: error.clone(),
                    }
                    .to_string(),
                )
                .with_label(format!("refused by `{}`", method.name)),
            };
            self.error(d);
            return;
        };
        if let Some(parameters) = listed_parameters(&error.message) {
            let d = Diagnostic::error(
                culprit.name.span,
                format!("`{}` has no parameter `{}`", method.name, culprit.name.name),
            )
            .with_label("unknown argument");
            let d = match closest(&culprit.name.name, parameters.iter().copied()) {
                Some(near) => d.with_help(format!("did you mean `{near}`?")),
                None => d.with_help(format!("its parameters are: {}", parameters.join(", "))),
            };
            self.error(d);
            return;
        }
        // A bare word where a number is expected is most likely an undefined name.
        if let Some(word) = &culprit.word {
            if error.message.starts_with("expected a number") {
                self.unknown_name(word, culprit.value_span);
                return;
            }
        }
        let d = Diagnostic::error(
            culprit.span,
            format!(
                "`{}` refuses `{}`{}: {}",
                method.name,
                culprit.name.name,
                if culprit.scheduled { " at step 0" } else { "" },
                error.message
            ),
        )
        .with_label(format!("refused by `{}`", method.name));
        self.error(if culprit.percent {
            d.with_help("`%` is a share of the horizon, in steps; write a fraction as a plain number, e.g. `0.01`")
        } else {
            d
        });
    }
}
