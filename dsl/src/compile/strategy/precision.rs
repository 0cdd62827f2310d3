//! `precision f32|f16|bf16 { loss_scale none | static(S) | dynamic(…) }`: the number
//! format and its loss scaling, with PyTorch `GradScaler` and DeepSpeed defaults.

use regimen_core::{AtMinScale, DType, DynamicLossScale, LossScaleSpec, PrecisionSpec};

use super::callee;
use crate::ast::*;
use crate::compile::{fmt_num, Compiler};
use crate::diagnostic::{closest, Diagnostic, Span};

impl<'a> Compiler<'a> {
    pub(super) fn precision_statement(
        &mut self,
        directive: &'a Directive,
    ) -> Option<PrecisionSpec> {
        self.no_extras(directive, true);
        let expr = self.sole_item(directive, "a number format")?;
        let dtypes = [DType::F32, DType::F16, DType::BF16];
        let dtype = match &expr.kind {
            ExprKind::Ident(name) => dtypes.into_iter().find(|d| d.name() == name),
            _ => None,
        };
        let Some(dtype) = dtype else {
            let written = match &expr.kind {
                ExprKind::Ident(name) | ExprKind::Str(name) => name.clone(),
                _ => crate::format::expr(expr),
            };
            let mut d = Diagnostic::error(expr.span, format!("unknown number format `{written}`"))
                .with_label("expected f32, f16 or bf16");
            let quoted = matches!(expr.kind, ExprKind::Str(_));
            if let Some(near) = closest(&written, dtypes.map(|d| d.name())) {
                d = d.with_help(if quoted && near == written {
                    format!("write it without quotes: `precision {near}`")
                } else {
                    format!("did you mean `{near}`?")
                });
            }
            self.error(d);
            return None;
        };
        let mut precision = PrecisionSpec::with_default_scaling(dtype);
        let Some(block) = &directive.block else {
            return Some(precision);
        };
        let mut first: Option<Span> = None;
        let mut ok = true;
        for stmt in &block.stmts {
            let inner = match &stmt.kind {
                StmtKind::Directive(inner) if inner.keyword.name == "loss_scale" => inner,
                _ => {
                    let span = match &stmt.kind {
                        StmtKind::Directive(d) => d.keyword.span,
                        StmtKind::Assign { target, .. } => target.span,
                        StmtKind::Let { name, .. } => name.span,
                    };
                    self.error(
                        Diagnostic::error(span, "a `precision` block holds `loss_scale` only")
                            .with_label("not a precision setting")
                            .with_help("e.g. `precision f16 { loss_scale dynamic(init: 65536) }`"),
                    );
                    ok = false;
                    continue;
                }
            };
            if let Some(first) = first {
                self.error(
                    Diagnostic::error(inner.keyword.span, "`loss_scale` is given twice")
                        .with_label("again here")
                        .with_note(first, "first given here"),
                );
                ok = false;
                continue;
            }
            first = Some(inner.keyword.span);
            match self.loss_scale(inner) {
                Some(scale) => precision.loss_scale = scale,
                None => ok = false,
            }
        }
        if ok && dtype != DType::F16 && precision.loss_scale != LossScaleSpec::None {
            if let Some(span) = first {
                self.diagnostics.push(
                    Diagnostic::warning(
                        span,
                        format!("loss scaling is rarely needed with {}", dtype.name()),
                    )
                    .with_label("unusual")
                    .with_help(format!(
                        "{} has the exponent range of f32, so small gradients do not underflow; `loss_scale none` is the default",
                        dtype.name()
                    )),
                );
            }
        }
        ok.then_some(precision)
    }

    /// `loss_scale none | static(S) | dynamic(…)`.
    fn loss_scale(&mut self, directive: &'a Directive) -> Option<LossScaleSpec> {
        if directive.block.is_some() || !directive.with.is_empty() {
            self.error(
                Diagnostic::error(directive.keyword.span, "`loss_scale` takes one setting")
                    .with_help("e.g. `loss_scale dynamic(init: 65536)`"),
            );
            return None;
        }
        let named = directive.items.iter().find_map(|i| i.name.as_ref());
        let expr = match (directive.items.as_slice(), named) {
            ([item], None) => &item.expr,
            _ => {
                let span = directive
                    .items
                    .iter()
                    .fold(directive.keyword.span, |s, i| s.join(i.expr.span));
                self.error(
                    Diagnostic::error(span, "`loss_scale` takes one setting")
                        .with_label("expected `none`, `static(…)` or `dynamic(…)`")
                        .with_help("e.g. `loss_scale dynamic(init: 65536)`"),
                );
                return None;
            }
        };
        let Some((name, args)) = callee(expr) else {
            self.error(
                Diagnostic::error(expr.span, "expected `none`, `static(…)` or `dynamic(…)`")
                    .with_label("not a loss scaling")
                    .with_help("a fixed scale is written `static(1024)`"),
            );
            self.value(expr);
            return None;
        };
        match name.name.as_str() {
            "none" if matches!(expr.kind, ExprKind::Ident(_)) => Some(LossScaleSpec::None),
            "none" => {
                self.error(
                    Diagnostic::error(expr.span, "`none` takes no arguments")
                        .with_label("drop the parentheses")
                        .with_help("write `loss_scale none`"),
                );
                self.check_args(args);
                None
            }
            "static" => {
                let mut b = self.bind(&name, args, &["scale"], expr.span)?;
                let scale = b.positive(self, "scale", None)?;
                b.ok.then_some(LossScaleSpec::Static(scale))
            }
            "dynamic" => self.dynamic_loss_scale(&name, args, expr.span),
            other => {
                let mut d = Diagnostic::error(name.span, format!("unknown loss scaling `{other}`"))
                    .with_label("expected `none`, `static` or `dynamic`");
                if let Some(near) = closest(other, ["none", "static", "dynamic"]) {
                    d = d.with_help(format!("did you mean `{near}`?"));
                }
                self.error(d);
                self.check_args(args);
                None
            }
        }
    }

    /// `dynamic(init:, growth:, backoff:, every:, hysteresis:, min_scale:, at_min:)`
    /// with PyTorch `GradScaler` and DeepSpeed defaults.
    fn dynamic_loss_scale(
        &mut self,
        name: &Ident,
        args: &[Arg],
        span: Span,
    ) -> Option<LossScaleSpec> {
        let params = [
            "init",
            "growth",
            "backoff",
            "every",
            "hysteresis",
            "min_scale",
            "at_min",
        ];
        let mut b = self.bind(name, args, &params, span)?;
        let defaults = DynamicLossScale::default();
        let init = b.positive(self, "init", Some(defaults.init));
        let growth = b.checked(
            self,
            "growth",
            Some(defaults.growth),
            |g| g > 1.0,
            "greater than 1",
        );
        let backoff = b.fraction(self, "backoff", defaults.backoff);
        let every = b.length(self, "every", Some(defaults.interval as f64));
        let interval = every.and_then(|steps| {
            if steps >= 1.0 && steps.fract() == 0.0 {
                return Some(steps as u64);
            }
            let at = b.span_of("every").unwrap_or(span);
            self.error(
                Diagnostic::error(
                    at,
                    format!(
                        "`every` must be a whole number of steps, not {} steps",
                        fmt_num(steps)
                    ),
                )
                .with_label("not a whole number of steps"),
            );
            None
        });
        let hysteresis = b.checked(
            self,
            "hysteresis",
            Some(f64::from(defaults.hysteresis)),
            |h| h >= 1.0 && h.fract() == 0.0 && h <= f64::from(u32::MAX),
            "a whole number of at least 1",
        );
        let min_scale = b.positive(self, "min_scale", Some(defaults.min_scale));
        let at_min = b.choice(self, "at_min", &["error", "skip"], "error");
        let (init, growth, backoff, interval, hysteresis, min_scale, at_min) = (
            init?,
            growth?,
            backoff?,
            interval?,
            hysteresis?,
            min_scale?,
            at_min?,
        );
        if min_scale > init {
            let at = b.span_of("min_scale").or(b.span_of("init")).unwrap_or(span);
            self.error(
                Diagnostic::error(
                    at,
                    format!(
                        "`min_scale` ({}) is above the initial scale ({})",
                        fmt_num(min_scale),
                        fmt_num(init)
                    ),
                )
                .with_label("must be at most `init`"),
            );
            return None;
        }
        b.ok.then(|| {
            LossScaleSpec::Dynamic(DynamicLossScale {
                init,
                growth,
                backoff,
                interval,
                hysteresis: hysteresis as u32,
                min_scale,
                at_min: if at_min == "skip" {
                    AtMinScale::Skip
                } else {
                    AtMinScale::Error
                },
            })
        })
    }
}
