//! `batch CONTROLLER(args) [{ lr scale linear|sqrt|none }]`: batch-size control,
//! compiled into a [`BatchSpec`] (the strategy's `batch`).
//!
//! The built-in controllers are `fixed`, `ramp`, `loss_rule`, `gns` and `adascale`;
//! any other name must be a batch controller exported by one of the script's
//! plugins. Every controller also takes the common arguments `min:`, `max:`,
//! `multiple_of:` and `micro_batch:` ([`BatchBounds`] and [`BatchSpec::micro_batch`]),
//! which the host applies and a plugin never sees.
//!
//! Arguments are constants (a controller changes the batch by itself; a schedule as
//! an argument is refused). Lengths keep their kind instead of becoming steps: a
//! check interval (`every:`) written in `steps` counts optimizer steps
//! ([`Interval::Steps`]); in `epochs`, `samples` or `%` it is a number of samples
//! ([`Interval::Samples`]: epochs × steps per epoch × base batch, `%` of the horizon
//! × base batch, rounded to a whole sample). A ramp's `over:` is always samples
//! (`steps` × base batch), and so is every length handed to a plugin. The base batch
//! `B₀` is the script's `batch = N` (or `--batch-size`): the batch the learning rate
//! is tuned for, which a controller needs.
//!
//! The checks here mirror the controllers' own (`regimen_core::batch::controllers`)
//! so that each refusal points at its argument; a plugin controller is created once
//! at compile time and its refusals are shown on the argument it names.

use regimen_core::batch::{BatchBounds, BatchSpec, ControllerSpec, Interval, LrScale};
use regimen_core::loader::{ExportKind, PluginError};
use regimen_core::plugin::export::ParamKind;
use regimen_core::plugin::{ArgValue, Args};

use super::callee;
use crate::ast::*;
use crate::compile::args::Bound;
use crate::compile::{fmt_num, Compiler, Value};
use crate::diagnostic::{closest, Diagnostic, Span};

/// The built-in controllers, in documentation order.
pub(in crate::compile) const BUILTIN_CONTROLLERS: &[&str] =
    &["fixed", "ramp", "loss_rule", "gns", "adascale"];

/// Arguments every controller takes; the host applies them.
const COMMON: &[&str] = &["min", "max", "multiple_of", "micro_batch"];

/// A whole statement, for help texts.
pub(super) const EXAMPLE: &str =
    "batch gns(min: 32, max: 4096, every: 100 steps) { lr scale sqrt }";

/// The largest whole number an `f64` holds exactly.
const MAX_WHOLE: f64 = 9_007_199_254_740_992.0;

/// How deep [`Compiler::length_kind`] looks through expressions and `let` names.
const MAX_LENGTH_DEPTH: usize = 256;

/// The `lr scale` words, in documentation order.
const LR_SCALES: [LrScale; 3] = [LrScale::Linear, LrScale::Sqrt, LrScale::None];

/// The controller's own parameters, in positional order.
fn own_params(controller: &str) -> &'static [&'static str] {
    match controller {
        "fixed" => &["batch"],
        "ramp" => &["range", "over", "stages"],
        "loss_rule" => &["gamma", "every", "factor", "from"],
        "gns" => &["every", "ema", "factor", "from"],
        _ => &["scale", "ema"],
    }
}

/// An argument that was present but not accepted (already reported).
struct Rejected;

/// An argument: absent (`Ok(None)`), accepted, or rejected.
type Got<T> = Result<Option<T>, Rejected>;

/// Optimizer steps or samples: what a length written in a script counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LengthKind {
    Steps,
    Samples,
    /// Steps and samples added or compared.
    Mixed,
}

impl LengthKind {
    fn combine(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (None, x) | (x, None) => x,
            (Some(x), Some(y)) if x == y => Some(x),
            _ => Some(LengthKind::Mixed),
        }
    }
}

/// The expression of argument `param` as written: by name, or by position (as
/// [`Compiler::bind`] matched it).
fn arg_expr<'s>(args: &'s [Arg], params: &[&str], param: &str) -> Option<&'s Expr> {
    let mut position = 0usize;
    for arg in args {
        let name = match &arg.name {
            Some(name) => name.name.as_str(),
            None => {
                let name = params.get(position).copied().unwrap_or("");
                position += 1;
                name
            }
        };
        if name == param {
            return Some(&arg.value);
        }
    }
    None
}

/// What a controller call compiled to, besides the block.
struct CompiledController {
    controller: ControllerSpec,
    bounds: BatchBounds,
    micro_batch: Option<u64>,
}

/// One named argument of a plugin controller as the script wrote it.
struct PluginArg<'s> {
    name: &'s Ident,
    /// `name: value`.
    span: Span,
}

impl<'a> Compiler<'a> {
    /// Compile the `batch` statement; `None` when it is rejected (reported).
    pub(super) fn batch_statement(&mut self, directive: &'a Directive) -> Option<BatchSpec> {
        self.no_extras(directive, true);
        let base = self.base_batch(&directive.keyword);
        let lr_scale = self.batch_block(directive);
        let expr = self.sole_item(directive, "a batch controller")?;
        let Some((name, args)) = callee(expr) else {
            let help = match &expr.kind {
                ExprKind::Number { text, .. } => format!(
                    "the base batch size is set with `batch = {text}`; a controller that keeps the batch at {text} is `batch fixed({text})`"
                ),
                _ => format!("e.g. `{EXAMPLE}`"),
            };
            self.error(
                Diagnostic::error(expr.span, "expected a batch controller")
                    .with_label("not a batch controller")
                    .with_help(help),
            );
            self.value(expr);
            return None;
        };
        let statement = directive.keyword.span.join(expr.span);
        let compiled = if BUILTIN_CONTROLLERS.contains(&name.name.as_str()) {
            self.builtin_controller(&name, args, expr.span, base, statement)
        } else if self
            .plugins
            .find(ExportKind::BatchController, &name.name)
            .is_some()
        {
            self.plugin_controller(&name, args, expr.span, base, statement)
        } else {
            self.unknown_controller(&name);
            self.check_args(args);
            return None;
        };
        if let Ok(Some((scale, span))) = lr_scale {
            if name.name == "adascale" && scale != LrScale::None {
                self.error(
                    Diagnostic::error(span, "adascale scales the learning rate by its gain")
                        .with_label(format!(
                            "`lr scale {}` cannot be combined with adascale",
                            scale.name()
                        ))
                        .with_help(
                            "remove the block: AdaScale multiplies each step's lr by its gain ratio r = (σ² + μ²)/(σ²/S + μ²)",
                        ),
                );
                return None;
            }
        }
        let (compiled, lr_scale, base) = (compiled?, lr_scale.ok()?, base?);
        let lr_scale = lr_scale.map_or(LrScale::None, |(scale, _)| scale);
        Some(BatchSpec {
            controller: compiled.controller,
            bounds: compiled.bounds,
            micro_batch: compiled.micro_batch,
            lr_scale,
            base_batch: base,
        })
    }

    /// `B₀`: the script's `batch = N` or `--batch-size`, as a whole number.
    fn base_batch(&mut self, keyword: &Ident) -> Option<u64> {
        match self.batch_size {
            Some(b) if (1.0..=MAX_WHOLE).contains(&b) && b.fract() == 0.0 => Some(b as u64),
            Some(b) => {
                self.error(
                    Diagnostic::error(
                        keyword.span,
                        format!(
                            "a batch controller needs a whole base batch size, not {}",
                            fmt_num(b)
                        ),
                    )
                    .with_label("the base batch is not a whole number")
                    .with_help("pass a whole number of samples with `--batch-size`"),
                );
                None
            }
            // `batch = …` was written but rejected: already reported.
            None if self.batch_failed => None,
            None => {
                self.error(
                    Diagnostic::error(keyword.span, "a batch controller needs the base batch size")
                        .with_label("the base batch is unknown")
                        .with_help(
                            "add `batch = 256` (the batch the learning rate is tuned for), or pass `--batch-size`",
                        ),
                );
                None
            }
        }
    }

    fn unknown_controller(&mut self, name: &Ident) {
        self.unknown_component(
            name,
            BUILTIN_CONTROLLERS,
            ExportKind::BatchController,
            "batch controller",
            "batch controllers",
        );
    }

    // ----- the block -----------------------------------------------------------

    /// The `{ lr scale … }` block: the scaling and where it was given, `Ok(None)`
    /// without one, `Err` when the block is rejected (reported).
    fn batch_block(&mut self, directive: &Directive) -> Result<Option<(LrScale, Span)>, Rejected> {
        let Some(block) = &directive.block else {
            return Ok(None);
        };
        let mut found: Option<(LrScale, Span)> = None;
        let mut ok = true;
        for stmt in &block.stmts {
            let inner = match &stmt.kind {
                StmtKind::Directive(inner) if inner.keyword.name == "lr" => inner,
                other => {
                    let (span, help) = match other {
                        StmtKind::Assign { target, .. } if target.name == "lr" => (
                            target.span,
                            "the learning rate is set at the top level; here, `lr scale linear`, `sqrt` or `none` says how it follows the batch".to_string(),
                        ),
                        StmtKind::Directive(d) => (d.keyword.span, format!("e.g. `{EXAMPLE}`")),
                        StmtKind::Assign { target, .. } => {
                            (target.span, format!("e.g. `{EXAMPLE}`"))
                        }
                        StmtKind::Let { name, .. } => (name.span, format!("e.g. `{EXAMPLE}`")),
                    };
                    self.error(
                        Diagnostic::error(span, "a `batch` block holds `lr scale …` only")
                            .with_label("not a batch setting")
                            .with_help(help),
                    );
                    ok = false;
                    continue;
                }
            };
            let Some(scale) = self.lr_scale_statement(inner, stmt.span) else {
                ok = false;
                continue;
            };
            if let Some((_, first)) = found {
                self.error(
                    Diagnostic::error(stmt.span, "`lr scale` is given twice")
                        .with_label("again here")
                        .with_note(first, "first given here")
                        .with_help("keep one of them"),
                );
                ok = false;
                continue;
            }
            found = Some((scale, stmt.span));
        }
        if ok {
            Ok(found)
        } else {
            Err(Rejected)
        }
    }

    /// `lr scale linear|sqrt|none` (the statement spans `span`).
    fn lr_scale_statement(&mut self, inner: &Directive, span: Span) -> Option<LrScale> {
        let words: Vec<Option<(&str, Span)>> = inner
            .items
            .iter()
            .map(|item| match (&item.name, &item.expr.kind) {
                (None, ExprKind::Ident(word)) => Some((word.as_str(), item.expr.span)),
                _ => None,
            })
            .collect();
        let well_formed = inner.block.is_none() && inner.with.is_empty();
        let word = match words.as_slice() {
            [Some(("scale", _)), Some(word)] if well_formed => *word,
            _ => {
                self.error(
                    Diagnostic::error(
                        span,
                        "expected `lr scale linear`, `lr scale sqrt` or `lr scale none`",
                    )
                    .with_label("not an lr scaling")
                    .with_help(
                        "`lr scale linear` multiplies the lr by B/B₀, `lr scale sqrt` by √(B/B₀), `lr scale none` leaves it",
                    ),
                );
                return None;
            }
        };
        let (word, word_span) = word;
        if let Some(scale) = LR_SCALES.into_iter().find(|s| s.name() == word) {
            return Some(scale);
        }
        let names = LR_SCALES.map(LrScale::name);
        let d = Diagnostic::error(word_span, format!("unknown lr scaling `{word}`"))
            .with_label("expected linear, sqrt or none");
        self.error(match closest(word, names) {
            Some(near) => d.with_help(format!("did you mean `{near}`?")),
            None => d.with_help(
                "`linear` follows the batch (Goyal et al. 2017), `sqrt` its square root, `none` leaves the lr alone",
            ),
        });
        None
    }

    // ----- built-in controllers --------------------------------------------------

    fn builtin_controller(
        &mut self,
        name: &Ident,
        args: &[Arg],
        span: Span,
        base: Option<u64>,
        statement: Span,
    ) -> Option<CompiledController> {
        let controller = name.name.as_str();
        let params: Vec<&'static str> = own_params(controller)
            .iter()
            .chain(COMMON)
            .copied()
            .collect();
        // The common arguments are named only: `fixed(256, 32)` is not `min: 32`.
        let own = own_params(controller);
        let extra: Vec<&Arg> = args
            .iter()
            .filter(|a| a.name.is_none())
            .skip(own.len())
            .collect();
        if let (Some(first), Some(last)) = (extra.first(), extra.last()) {
            let s = if own.len() == 1 { "" } else { "s" };
            self.error(
                Diagnostic::error(
                    first.value.span.join(last.value.span),
                    format!(
                        "`{controller}` takes {} positional argument{s} ({})",
                        own.len(),
                        own.join(", ")
                    ),
                )
                .with_label("unexpected")
                .with_help(format!(
                    "name the others; every controller also takes `{}`",
                    COMMON
                        .iter()
                        .map(|c| format!("{c}:"))
                        .collect::<Vec<_>>()
                        .join("`, `")
                )),
            );
            self.check_args(args);
            return None;
        }
        let b = self.bind(name, args, &params, span)?;
        let bounds = self.bounds(&b, statement);
        let spec = match controller {
            "fixed" => {
                let batch = self.whole_arg(&b, "batch");
                let batch = self.required(&b, batch, "batch", "add the batch: `fixed(256)`");
                batch.map(|batch| ControllerSpec::Fixed { batch })
            }
            "ramp" => self.ramp(&b, args, base),
            "loss_rule" => {
                let gamma = self.checked_arg(&b, "gamma", |g| g > 0.0, "greater than zero");
                let gamma = self.required(
                    &b,
                    gamma,
                    "gamma",
                    "add `gamma: 0.9`: the batch grows when a window's mean loss is at most gamma × the previous window's",
                );
                let every = self.interval_arg(&b, args, "every", base);
                let every = self.required(
                    &b,
                    every,
                    "every",
                    "add how often it checks, e.g. `every: 1 epoch`",
                );
                let factor = self.checked_arg(&b, "factor", |f| f > 1.0, "greater than 1");
                let from = self.whole_arg(&b, "from");
                match (gamma, every, factor, from, base) {
                    (Some(gamma), Some(every), Ok(factor), Ok(from), Some(base)) => {
                        Some(ControllerSpec::LossRule {
                            from: from.unwrap_or(base),
                            gamma,
                            every,
                            factor: factor.unwrap_or(2.0),
                        })
                    }
                    _ => None,
                }
            }
            "gns" => {
                let every = self.interval_arg(&b, args, "every", base);
                let ema = self.ema_arg(&b);
                let factor = self.checked_arg(&b, "factor", |f| f > 0.0, "greater than zero");
                let from = self.whole_arg(&b, "from");
                match (every, ema, factor, from, base) {
                    (Ok(every), Ok(ema), Ok(factor), Ok(from), Some(base)) => {
                        Some(ControllerSpec::Gns {
                            from: from.unwrap_or(base),
                            every: every.unwrap_or(Interval::Steps(100)),
                            ema: ema.unwrap_or(0.95),
                            factor: factor.unwrap_or(1.0),
                        })
                    }
                    _ => None,
                }
            }
            _ => {
                let scale = self.checked_arg(&b, "scale", |s| s >= 1.0, "at least 1");
                let scale = self.required(
                    &b,
                    scale,
                    "scale",
                    "add `scale: 4`: the batch as a multiple of the base batch",
                );
                let ema = self.ema_arg(&b);
                match (scale, ema) {
                    (Some(scale), Ok(ema)) => Some(ControllerSpec::AdaScale {
                        scale,
                        ema: ema.unwrap_or(0.95),
                    }),
                    _ => None,
                }
            }
        };
        let (bounds, micro_batch) = bounds?;
        Some(CompiledController {
            controller: spec?,
            bounds,
            micro_batch,
        })
    }

    /// `ramp(from -> to, over: N, stages: K)`.
    fn ramp(&mut self, b: &Bound, args: &[Arg], base: Option<u64>) -> Option<ControllerSpec> {
        let range = self.ramp_range(b, args);
        let over = self.samples_arg(b, "over", base);
        let over = self.required(
            b,
            over,
            "over",
            "add the ramp's length, e.g. `over: 2 epochs` or `over: 50000 samples`",
        );
        let stages = self.whole_arg(b, "stages");
        let ((from, to), over, stages) = (range?, over?, stages.ok()?);
        Some(ControllerSpec::Ramp {
            from,
            to,
            over,
            stages,
        })
    }

    /// The `from -> to` of a ramp: two whole batch sizes.
    fn ramp_range(&mut self, b: &Bound, args: &[Arg]) -> Option<(u64, u64)> {
        let Some((value, span, _)) = b.given("range") else {
            self.error(
                Diagnostic::error(b.call_span, "`ramp` is missing its range")
                    .with_label("needs `from -> to`")
                    .with_help("e.g. `ramp(32 -> 1024, over: 2 epochs)`"),
            );
            return None;
        };
        let (from, to) = match value {
            Value::Range {
                from,
                to,
                both_ways: false,
            } => (from, to),
            Value::Poison => return None,
            Value::Symbol(name) => {
                self.unknown_name(&name, span);
                return None;
            }
            other => {
                let found = match other {
                    Value::Range { .. } => "a cycle `<->`",
                    other => other.kind(),
                };
                self.error(
                    Diagnostic::error(
                        span,
                        format!("`ramp` needs a range of batch sizes `from -> to`, found {found}"),
                    )
                    .with_label("expected `a -> b`")
                    .with_help("e.g. `ramp(32 -> 1024, over: 2 epochs)`"),
                );
                return None;
            }
        };
        // The ends' own spans when the range is written in the call.
        let (from_span, to_span) = match arg_expr(args, &b.params, "range").map(|e| &e.kind) {
            Some(ExprKind::Range { from, to, .. }) => (from.span, to.span),
            _ => (span, span),
        };
        let from = self.whole_value(from, from_span, "the ramp's start");
        let to = self.whole_value(to, to_span, "the ramp's end");
        Some((from?, to?))
    }

    // ----- common arguments ------------------------------------------------------

    /// `min:`, `max:`, `multiple_of:` and `micro_batch:`, checked together.
    fn bounds(&mut self, b: &Bound, statement: Span) -> Option<(BatchBounds, Option<u64>)> {
        let min = self.whole_arg(b, "min");
        let max = self.whole_arg(b, "max");
        let multiple_of = self.whole_arg(b, "multiple_of");
        let micro_batch = self.whole_arg(b, "micro_batch");
        let bounds = BatchBounds {
            min: min.ok()?.unwrap_or(1),
            max: max.ok()?,
            multiple_of: multiple_of.ok()?.unwrap_or(1),
        };
        let micro_batch = micro_batch.ok()?;
        if let Some(max) = bounds.max.filter(|max| *max < bounds.min) {
            let at = b.span_of("max").unwrap_or(statement);
            self.error(
                Diagnostic::error(at, format!("`max` ({max}) is below `min` ({})", bounds.min))
                    .with_label("must be at least `min`")
                    .with_help("the batch stays between `min` and `max`"),
            );
            return None;
        }
        if let Err(error) = bounds.range() {
            self.error(
                Diagnostic::error(statement, error.to_string())
                    .with_label("no batch size fits these bounds")
                    .with_help(
                        "every batch is a multiple of `multiple_of` between `min` and `max`: widen the bounds or change `multiple_of`",
                    ),
            );
            return None;
        }
        Some((bounds, micro_batch))
    }

    // ----- typed arguments -------------------------------------------------------

    /// The accepted value, else a "missing argument" error with `help`.
    fn required<T>(&mut self, b: &Bound, got: Got<T>, param: &str, help: &str) -> Option<T> {
        match got {
            Ok(Some(v)) => Some(v),
            Ok(None) => {
                self.error(
                    Diagnostic::error(
                        b.call_span,
                        format!("`{}` is missing its `{param}` argument", b.function),
                    )
                    .with_label(format!("needs `{param}`"))
                    .with_help(help),
                );
                None
            }
            Err(Rejected) => None,
        }
    }

    /// A schedule where a controller needs a constant.
    fn not_constant(&mut self, function: &str, param: &str, span: Span) {
        self.error(
            Diagnostic::error(
                span,
                format!("`{param}` of `{function}` must be a constant, not a schedule"),
            )
            .with_label("a schedule")
            .with_help(
                "a batch controller's arguments are fixed for the run; the controller itself changes the batch",
            ),
        );
    }

    /// A constant number.
    fn number_arg(&mut self, b: &Bound, param: &str) -> Got<f64> {
        let Some((value, span, _)) = b.given(param) else {
            return Ok(None);
        };
        let function = b.function.as_str();
        match value {
            Value::Number(n) => return Ok(Some(n)),
            Value::Poison => {}
            Value::Symbol(name) => self.unknown_name(&name, span),
            Value::Schedule(_) => self.not_constant(function, param, span),
            Value::Duration(_) => self.error(
                Diagnostic::error(
                    span,
                    format!("`{param}` of `{function}` is a plain number, not a length"),
                )
                .with_label("drop the unit"),
            ),
            other => self.error(
                Diagnostic::error(
                    span,
                    format!(
                        "`{param}` of `{function}` must be a number, found {}",
                        other.kind()
                    ),
                )
                .with_label("not a number"),
            ),
        }
        Err(Rejected)
    }

    /// A constant number accepted by `ok`, else an error saying it must be `rule`.
    fn checked_arg(
        &mut self,
        b: &Bound,
        param: &str,
        ok: impl Fn(f64) -> bool,
        rule: &str,
    ) -> Got<f64> {
        let Some(n) = self.number_arg(b, param)? else {
            return Ok(None);
        };
        if ok(n) {
            return Ok(Some(n));
        }
        let span = b.span_of(param).unwrap_or(b.call_span);
        self.error(
            Diagnostic::error(
                span,
                format!("`{param}` must be {rule}, not {}", fmt_num(n)),
            )
            .with_label("out of range"),
        );
        Err(Rejected)
    }

    /// An EMA decay in `[0, 1)`.
    fn ema_arg(&mut self, b: &Bound) -> Got<f64> {
        self.checked_arg(b, "ema", |e| (0.0..1.0).contains(&e), "in [0, 1)")
    }

    /// A whole number of at least 1 (a batch size, a count).
    fn whole_arg(&mut self, b: &Bound, param: &str) -> Got<u64> {
        let Some(n) = self.number_arg(b, param)? else {
            return Ok(None);
        };
        let span = b.span_of(param).unwrap_or(b.call_span);
        match self.whole_value(n, span, &format!("`{param}`")) {
            Some(n) => Ok(Some(n)),
            None => Err(Rejected),
        }
    }

    /// `n` as a whole number of at least 1; `subject` names it in the error.
    fn whole_value(&mut self, n: f64, span: Span, subject: &str) -> Option<u64> {
        if (1.0..=MAX_WHOLE).contains(&n) && n.fract() == 0.0 {
            return Some(n as u64);
        }
        self.error(
            Diagnostic::error(
                span,
                format!(
                    "{subject} must be a whole number of at least 1, not {}",
                    fmt_num(n)
                ),
            )
            .with_label("out of range"),
        );
        None
    }

    /// A length, in steps (as the compiler resolved it).
    fn length_arg(&mut self, b: &Bound, param: &str) -> Got<f64> {
        let Some((value, span, _)) = b.given(param) else {
            return Ok(None);
        };
        let function = b.function.clone();
        match value {
            Value::Number(_) => {
                self.error(
                    Diagnostic::error(span, format!("`{param}` of `{function}` needs a unit"))
                        .with_label("a bare number")
                        .with_help("give it a unit: `100 steps`, `1 epoch` or `50000 samples`"),
                );
                Err(Rejected)
            }
            Value::Schedule(_) => {
                self.not_constant(&function, param, span);
                Err(Rejected)
            }
            other => match self.length_of(other, span, &format!("`{param}`"), false) {
                Some(steps) => Ok(Some(steps)),
                None => Err(Rejected),
            },
        }
    }

    /// A length in samples: steps at the base batch.
    fn samples_arg(&mut self, b: &Bound, param: &str, base: Option<u64>) -> Got<u64> {
        let Some(steps) = self.length_arg(b, param)? else {
            return Ok(None);
        };
        // Without a base batch (reported on the keyword) there is nothing to convert.
        let base = base.ok_or(Rejected)?;
        let span = b.span_of(param).unwrap_or(b.call_span);
        self.samples_of(steps, base, span, param).map(Some)
    }

    /// `steps` at base batch `base`, rounded to whole samples (at least 1).
    fn samples_of(
        &mut self,
        steps: f64,
        base: u64,
        span: Span,
        param: &str,
    ) -> Result<u64, Rejected> {
        let samples = (steps * base as f64).round();
        if (1.0..=MAX_WHOLE).contains(&samples) {
            return Ok(samples as u64);
        }
        self.error(
            Diagnostic::error(
                span,
                format!(
                    "`{param}` must be at least 1 sample, not {} samples",
                    fmt_num(steps * base as f64)
                ),
            )
            .with_label("out of range"),
        );
        Err(Rejected)
    }

    /// A check interval: optimizer steps when written in `steps`, else samples.
    fn interval_arg(
        &mut self,
        b: &Bound,
        args: &[Arg],
        param: &str,
        base: Option<u64>,
    ) -> Got<Interval> {
        let Some(steps) = self.length_arg(b, param)? else {
            return Ok(None);
        };
        let span = b.span_of(param).unwrap_or(b.call_span);
        let kind = arg_expr(args, &b.params, param).and_then(|e| self.length_kind(e, 0));
        match kind {
            Some(LengthKind::Steps) | None => {
                if (1.0..=MAX_WHOLE).contains(&steps) && steps.fract() == 0.0 {
                    return Ok(Some(Interval::Steps(steps as u64)));
                }
                self.error(
                    Diagnostic::error(
                        span,
                        format!(
                            "`{param}` must be a whole number of steps, not {} steps",
                            fmt_num(steps)
                        ),
                    )
                    .with_label("not a whole number of steps"),
                );
                Err(Rejected)
            }
            Some(LengthKind::Samples) => {
                let base = base.ok_or(Rejected)?;
                self.samples_of(steps, base, span, param)
                    .map(|n| Some(Interval::Samples(n)))
            }
            Some(LengthKind::Mixed) => {
                self.error(
                    Diagnostic::error(
                        span,
                        format!("`{param}` mixes optimizer steps with epochs or samples"),
                    )
                    .with_label("steps and samples together")
                    .with_help(
                        "a controller checks every N optimizer steps (`100 steps`) or every N samples (`1 epoch`, `50000 samples`); write one of them",
                    ),
                );
                Err(Rejected)
            }
        }
    }

    /// Whether the lengths in `expr` (through `let` names) are written in steps or in
    /// epochs, samples and `%`; `None` when it holds none.
    fn length_kind(&self, expr: &Expr, depth: usize) -> Option<LengthKind> {
        if depth > MAX_LENGTH_DEPTH {
            return None;
        }
        match &expr.kind {
            ExprKind::Quantity { unit, .. } => Some(match unit {
                Unit::Steps => LengthKind::Steps,
                _ => LengthKind::Samples,
            }),
            ExprKind::Paren(inner) | ExprKind::Neg(inner) => self.length_kind(inner, depth + 1),
            ExprKind::Ident(name) => self
                .lets
                .get(name)
                .and_then(|binding| self.length_kind(binding.expr, depth + 1)),
            ExprKind::Binary { lhs, rhs, .. } => LengthKind::combine(
                self.length_kind(lhs, depth + 1),
                self.length_kind(rhs, depth + 1),
            ),
            ExprKind::Call { args, .. } => args
                .iter()
                .map(|a| self.length_kind(&a.value, depth + 1))
                .fold(None, LengthKind::combine),
            _ => None,
        }
    }

    // ----- plugin controllers ----------------------------------------------------

    /// A controller exported by one of the script's plugins: the common arguments
    /// are the host's (and also the plugin's when it declares one of them, as
    /// AdaBatch declares `max`), the rest go to the plugin (lengths in samples), which is
    /// created once here so that it judges them.
    fn plugin_controller(
        &mut self,
        name: &Ident,
        args: &[Arg],
        span: Span,
        base: Option<u64>,
        statement: Span,
    ) -> Option<CompiledController> {
        let schema: Vec<(String, ParamKind, bool)> = self
            .plugins
            .find(ExportKind::BatchController, &name.name)
            .map(|(_, export)| {
                export
                    .params
                    .iter()
                    .map(|p| (p.name.clone(), p.kind, p.default.is_none()))
                    .collect()
            })
            .unwrap_or_default();
        let mut ok = true;
        let mut common = Bound {
            function: name.name.clone(),
            call_span: span,
            params: COMMON.to_vec(),
            slots: vec![None; COMMON.len()],
            ok: true,
        };
        let mut plugin_args = Args::new();
        let mut written: Vec<PluginArg<'_>> = Vec::new();
        for arg in args {
            let Some(arg_name) = &arg.name else {
                self.error(
                    Diagnostic::error(arg.value.span, "plugin controller arguments must be named")
                        .with_label("give it a name")
                        .with_help(format!(
                            "`{}` takes: {}",
                            name.name,
                            schema
                                .iter()
                                .map(|(p, _, _)| p.as_str())
                                .chain(COMMON.iter().copied())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )),
                );
                self.value(&arg.value);
                ok = false;
                continue;
            };
            let arg_span = arg_name.span.join(arg.value.span);
            let first = written
                .iter()
                .find(|w| w.name.name == arg_name.name)
                .map(|w| w.span)
                .or_else(|| {
                    let slot = COMMON.iter().position(|c| *c == arg_name.name)?;
                    common.slots.get(slot)?.as_ref().map(|s| s.2)
                });
            if let Some(first) = first {
                self.error(
                    Diagnostic::error(
                        arg_span,
                        format!("argument `{}` is given twice", arg_name.name),
                    )
                    .with_label("again here")
                    .with_note(first, "first given here"),
                );
                self.value(&arg.value);
                ok = false;
                continue;
            }
            let value = self.value(&arg.value);
            if let Some(slot) = COMMON.iter().position(|c| *c == arg_name.name) {
                if value == Value::Poison {
                    ok = false;
                }
                if let Some(s) = common.slots.get_mut(slot) {
                    *s = Some((value.clone(), arg.value.span, arg_span));
                }
                // A plugin that declares the same name (AdaBatch's `max`) gets it too,
                // so that its own decisions (e.g. its lr scale) agree with the bound.
                if schema.iter().any(|(p, _, _)| *p == arg_name.name) {
                    written.push(PluginArg {
                        name: arg_name,
                        span: arg_span,
                    });
                    match self.plugin_arg_value(
                        &name.name,
                        &arg_name.name,
                        value,
                        arg.value.span,
                        base,
                    ) {
                        Some(v) => plugin_args = plugin_args.with(arg_name.name.clone(), v),
                        None => ok = false,
                    }
                }
                continue;
            }
            let Some((_, kind, _)) = schema.iter().find(|(p, _, _)| *p == arg_name.name) else {
                let known: Vec<&str> = schema
                    .iter()
                    .map(|(p, _, _)| p.as_str())
                    .chain(COMMON.iter().copied())
                    .collect();
                let d = Diagnostic::error(
                    arg_name.span,
                    format!("`{}` has no parameter `{}`", name.name, arg_name.name),
                )
                .with_label("unknown argument");
                self.error(match closest(&arg_name.name, known.iter().copied()) {
                    Some(near) => d.with_help(format!("did you mean `{near}`?")),
                    None => d.with_help(format!("its parameters are: {}", known.join(", "))),
                });
                ok = false;
                continue;
            };
            written.push(PluginArg {
                name: arg_name,
                span: arg_span,
            });
            // A bare word where a number is expected is most likely an undefined name.
            if let (Value::Symbol(word), ParamKind::Number) = (&value, kind) {
                if word != "true" && word != "false" {
                    self.unknown_name(word, arg.value.span);
                    ok = false;
                    continue;
                }
            }
            match self.plugin_arg_value(&name.name, &arg_name.name, value, arg.value.span, base) {
                Some(v) => plugin_args = plugin_args.with(arg_name.name.clone(), v),
                None => ok = false,
            }
        }
        for (param, _, required) in &schema {
            if *required && !written.iter().any(|w| w.name.name == *param) {
                self.error(
                    Diagnostic::error(
                        span,
                        format!("`{}` is missing its `{param}` argument", name.name),
                    )
                    .with_label(format!("needs `{param}`"))
                    .with_help(format!("add `{param}: …`")),
                );
                ok = false;
            }
        }
        let (bounds, micro_batch) = self.bounds(&common, statement)?;
        if !ok || base.is_none() {
            return None;
        }
        match self.plugins.controller(&name.name, &plugin_args)? {
            Ok(_) => {}
            Err(PluginError::Args { error, .. }) => {
                let culprit = error
                    .argument
                    .as_deref()
                    .and_then(|arg| written.iter().find(|w| w.name.name == arg));
                let d = match culprit {
                    Some(culprit) => Diagnostic::error(
                        culprit.span,
                        format!(
                            "`{}` refuses `{}`: {}",
                            name.name, culprit.name.name, error.message
                        ),
                    ),
                    None => Diagnostic::error(span, format!("`{}`: {error}", name.name)),
                };
                self.error(d.with_label(format!("refused by `{}`", name.name)));
                return None;
            }
            Err(error) => {
                self.error(
                    Diagnostic::error(span, error.to_string())
                        .with_label(format!("`{}` cannot be created", name.name)),
                );
                return None;
            }
        }
        Some(CompiledController {
            controller: ControllerSpec::Plugin {
                name: name.name.clone(),
                args: plugin_args,
            },
            bounds,
            micro_batch,
        })
    }

    /// One plugin argument as the plugin receives it: numbers as written, lengths in
    /// samples, words and strings as text, `true`/`false` as booleans.
    fn plugin_arg_value(
        &mut self,
        controller: &str,
        param: &str,
        value: Value,
        span: Span,
        base: Option<u64>,
    ) -> Option<ArgValue> {
        Some(match value {
            Value::Number(n) => ArgValue::Number(n),
            Value::Duration(steps) => {
                let base = base?;
                ArgValue::Number(self.samples_of(steps, base, span, param).ok()? as f64)
            }
            Value::Str(text) => ArgValue::Text(text),
            Value::Symbol(word) => match word.as_str() {
                "true" => ArgValue::Bool(true),
                "false" => ArgValue::Bool(false),
                _ => ArgValue::Text(word),
            },
            Value::Schedule(_) => {
                self.not_constant(controller, param, span);
                return None;
            }
            Value::Poison => return None,
            other => {
                self.error(
                    Diagnostic::error(
                        span,
                        format!(
                            "`{param}` of `{controller}` must be a number, a length, a word or `true`/`false`, found {}",
                            other.kind()
                        ),
                    )
                    .with_label("not an argument value"),
                );
                return None;
            }
        })
    }
}
