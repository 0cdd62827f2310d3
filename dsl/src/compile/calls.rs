//! The functions a script can call — schedules and `min`/`max`/`clamp` — each
//! matched to its parameters, checked, and turned into graph nodes.

use regimen_core::{BinaryOp, CyclicMode, DecayShape, Node, Schedule, WarmupShape};

use super::args::Bound;
use super::{fmt_num, Compiler, Sched, Value};
use crate::ast::{Arg, Ident};
use crate::diagnostic::{closest, Diagnostic, Span};

/// Schedule and helper functions callable in expressions.
pub const FUNCTIONS: &[&str] = &[
    "constant",
    "step",
    "multistep",
    "exponential",
    "inverse_time",
    "linear",
    "cosine",
    "polynomial",
    "onecycle",
    "onecycle_momentum",
    "cyclic",
    "restarts",
    "inverse_sqrt",
    "wsd",
    "piecewise",
    "piecewise_linear",
    "min",
    "max",
    "clamp",
];

const ONECYCLE_PARAMS: &[&str] = &[
    "peak",
    "over",
    "pct_start",
    "div_factor",
    "final_div_factor",
    "anneal",
    "three_phase",
    "cycle_momentum",
    "base_momentum",
    "max_momentum",
];

impl Compiler<'_> {
    // ----- calls ---------------------------------------------------------------

    pub(super) fn call(&mut self, name: &Ident, args: &[Arg], span: Span) -> Value {
        let result = match name.name.as_str() {
            "constant" => self.call_constant(name, args, span),
            "step" => self.call_step(name, args, span),
            "multistep" => self.call_multistep(name, args, span),
            "exponential" => self.call_exponential(name, args, span, false),
            "inverse_time" => self.call_exponential(name, args, span, true),
            "linear" | "cosine" | "polynomial" => self.call_anneal(name, args, span),
            "onecycle" => self.call_onecycle(name, args, span),
            "onecycle_momentum" => self.call_onecycle_momentum(name, args, span),
            "cyclic" => self.call_cyclic(name, args, span),
            "restarts" => self.call_restarts(name, args, span),
            "inverse_sqrt" => self.call_inverse_sqrt(name, args, span),
            "wsd" => self.call_wsd(name, args, span),
            "piecewise" | "piecewise_linear" => self.call_piecewise(name, args, span),
            "min" | "max" => self.call_min_max(name, args, span),
            "clamp" => self.call_clamp(name, args, span),
            other => {
                let mut d = Diagnostic::error(name.span, format!("unknown function `{other}`"))
                    .with_label("not a schedule or function");
                if let Some(near) = closest(other, FUNCTIONS.iter().copied()) {
                    d = d.with_help(format!("did you mean `{near}`?"));
                } else {
                    d = d.with_help(format!("known functions: {}", FUNCTIONS.join(", ")));
                }
                self.error(d);
                // Still check the arguments so their errors are reported too.
                for arg in args {
                    self.value(&arg.value);
                }
                None
            }
        };
        result.unwrap_or(Value::Poison)
    }

    /// Match call arguments to `params` (positional in order, then by name).
    pub(super) fn bind(
        &mut self,
        function: &Ident,
        args: &[Arg],
        params: &[&'static str],
        span: Span,
    ) -> Option<Bound> {
        let mut slots: Vec<Option<(Value, Span, Span)>> = vec![None; params.len()];
        let mut ok = true;
        let mut positional = 0usize;
        let mut seen_named = false;
        for arg in args {
            let index = match &arg.name {
                None => {
                    if seen_named {
                        self.error(
                            Diagnostic::error(
                                arg.value.span,
                                "positional argument after a named one",
                            )
                            .with_label("give it a name")
                            .with_help(format!(
                                "`{}` takes: {}",
                                function.name,
                                params.join(", ")
                            )),
                        );
                        ok = false;
                        continue;
                    }
                    let Some(i) = (positional < params.len()).then_some(positional) else {
                        self.error(
                            Diagnostic::error(
                                arg.value.span,
                                format!(
                                    "`{}` takes at most {} arguments",
                                    function.name,
                                    params.len()
                                ),
                            )
                            .with_label("one too many")
                            .with_help(format!("its parameters are: {}", params.join(", "))),
                        );
                        ok = false;
                        continue;
                    };
                    positional += 1;
                    i
                }
                Some(name) => {
                    seen_named = true;
                    match params.iter().position(|p| *p == name.name) {
                        Some(i) => i,
                        None => {
                            let mut d = Diagnostic::error(
                                name.span,
                                format!("`{}` has no parameter `{}`", function.name, name.name),
                            )
                            .with_label("unknown argument");
                            d = match closest(&name.name, params.iter().copied()) {
                                Some(near) => d.with_help(format!("did you mean `{near}`?")),
                                None => d.with_help(format!(
                                    "its parameters are: {}",
                                    params.join(", ")
                                )),
                            };
                            self.error(d);
                            self.value(&arg.value);
                            ok = false;
                            continue;
                        }
                    }
                }
            };
            let arg_span = arg
                .name
                .as_ref()
                .map_or(arg.value.span, |n| n.span.join(arg.value.span));
            if let Some((_, _, first)) = &slots[index] {
                let first = *first;
                self.error(
                    Diagnostic::error(
                        arg_span,
                        format!("argument `{}` is given twice", params[index]),
                    )
                    .with_label("again here")
                    .with_note(first, "first given here"),
                );
                ok = false;
                continue;
            }
            let value = self.value(&arg.value);
            if value == Value::Poison {
                ok = false;
            }
            slots[index] = Some((value, arg.value.span, arg_span));
        }
        ok.then_some(Bound {
            function: function.name.clone(),
            call_span: span,
            params: params.to_vec(),
            slots,
            ok: true,
        })
    }

    fn finish(&mut self, bound: &Bound, schedule: Schedule, over: Option<f64>) -> Option<Value> {
        if !bound.ok {
            return None;
        }
        let needs = schedule.needs_length();
        let natural = schedule.natural_length();
        let node = self.graph.push(Node::Schedule(schedule));
        Some(Value::Schedule(match over {
            Some(len) => Sched {
                node: self.graph.push(Node::Over { inner: node, len }),
                len: Some(len),
                needs_len: None,
            },
            None => Sched {
                node,
                len: natural,
                needs_len: needs.then(|| (bound.call_span, bound.function.clone())),
            },
        }))
    }

    fn call_constant(&mut self, name: &Ident, args: &[Arg], span: Span) -> Option<Value> {
        let mut b = self.bind(name, args, &["value", "over"], span)?;
        let value = b.number(self, "value", None);
        let over = b.opt_length(self, "over");
        self.finish(&b, Schedule::Constant { value: value? }, over)
    }

    fn call_step(&mut self, name: &Ident, args: &[Arg], span: Span) -> Option<Value> {
        let mut b = self.bind(name, args, &["init", "every", "factor", "over"], span)?;
        let init = b.number(self, "init", None);
        let every = b.length(self, "every", None);
        let factor = b.positive(self, "factor", Some(0.1));
        let over = b.opt_length(self, "over");
        self.finish(
            &b,
            Schedule::Step {
                init: init?,
                every: every?,
                factor: factor?,
            },
            over,
        )
    }

    fn call_multistep(&mut self, name: &Ident, args: &[Arg], span: Span) -> Option<Value> {
        let mut b = self.bind(name, args, &["init", "at", "factor", "over"], span)?;
        let init = b.number(self, "init", None);
        let milestones = b.length_list(self, "at", false);
        let factor = b.positive(self, "factor", Some(0.1));
        let over = b.opt_length(self, "over");
        self.finish(
            &b,
            Schedule::MultiStep {
                init: init?,
                milestones: milestones?,
                factor: factor?,
            },
            over,
        )
    }

    fn call_exponential(
        &mut self,
        name: &Ident,
        args: &[Arg],
        span: Span,
        inverse: bool,
    ) -> Option<Value> {
        let params: &[&str] = if inverse {
            &["init", "rate", "every", "staircase", "over"]
        } else {
            &["init", "factor", "every", "staircase", "over"]
        };
        let mut b = self.bind(name, args, params, span)?;
        let init = b.number(self, "init", None);
        let rate = if inverse {
            b.non_negative(self, "rate", None)
        } else {
            b.positive(self, "factor", None)
        };
        let every = b.length(self, "every", Some(1.0));
        let staircase = b.bool(self, "staircase", false);
        let over = b.opt_length(self, "over");
        let (init, rate, every) = (init?, rate?, every?);
        let schedule = if inverse {
            Schedule::InverseTime {
                init,
                rate,
                every,
                staircase,
            }
        } else {
            Schedule::Exponential {
                init,
                factor: rate,
                every,
                staircase,
            }
        };
        self.finish(&b, schedule, over)
    }

    fn call_anneal(&mut self, name: &Ident, args: &[Arg], span: Span) -> Option<Value> {
        let polynomial = name.name == "polynomial";
        let params: &[&str] = if polynomial {
            &["range", "over", "power"]
        } else {
            &["range", "over"]
        };
        let mut b = self.bind(name, args, params, span)?;
        let (from, to) = b.range(self, "range", name.name == "cosine" || polynomial)?;
        let over = b.opt_length(self, "over");
        let schedule = match name.name.as_str() {
            "linear" => Schedule::Linear { from, to },
            "cosine" => Schedule::Cosine { from, to },
            _ => Schedule::Polynomial {
                from,
                to,
                power: b.non_negative(self, "power", Some(1.0))?,
            },
        };
        self.finish(&b, schedule, over)
    }

    fn call_onecycle(&mut self, name: &Ident, args: &[Arg], span: Span) -> Option<Value> {
        let mut b = self.bind(name, args, ONECYCLE_PARAMS, span)?;
        let peak = b.positive(self, "peak", None);
        let over = b.opt_length(self, "over");
        let pct_start = b.fraction(self, "pct_start", 0.3);
        let div_factor = b.positive(self, "div_factor", Some(25.0));
        let final_div_factor = b.positive(self, "final_div_factor", Some(1e4));
        let anneal = b.anneal(self);
        let three_phase = b.bool(self, "three_phase", false);
        let cycle_momentum = b.bool(self, "cycle_momentum", true);
        let base_momentum = b.fraction_number(self, "base_momentum", 0.85);
        let max_momentum = b.fraction_number(self, "max_momentum", 0.95);
        let (pct_start, anneal) = (pct_start?, anneal?);
        if cycle_momentum {
            let momentum = Schedule::OneCycleMomentum {
                base: base_momentum?,
                max: max_momentum?,
                pct_start,
                anneal,
                three_phase,
            };
            self.onecycle_momenta.insert(span.start, (momentum, over));
        }
        let schedule = Schedule::OneCycle {
            peak: peak?,
            pct_start,
            div_factor: div_factor?,
            final_div_factor: final_div_factor?,
            anneal,
            three_phase,
        };
        self.finish(&b, schedule, over)
    }

    fn call_onecycle_momentum(&mut self, name: &Ident, args: &[Arg], span: Span) -> Option<Value> {
        let mut b = self.bind(
            name,
            args,
            &["base", "max", "over", "pct_start", "anneal", "three_phase"],
            span,
        )?;
        let base = b.fraction_number(self, "base", 0.85);
        let max = b.fraction_number(self, "max", 0.95);
        let over = b.opt_length(self, "over");
        let pct_start = b.fraction(self, "pct_start", 0.3);
        let anneal = b.anneal(self);
        let three_phase = b.bool(self, "three_phase", false);
        let schedule = Schedule::OneCycleMomentum {
            base: base?,
            max: max?,
            pct_start: pct_start?,
            anneal: anneal?,
            three_phase,
        };
        self.finish(&b, schedule, over)
    }

    fn call_cyclic(&mut self, name: &Ident, args: &[Arg], span: Span) -> Option<Value> {
        let mut b = self.bind(
            name,
            args,
            &["range", "half", "down", "mode", "gamma", "over"],
            span,
        )?;
        let range = b.cycle_range(self, "range");
        let up = b.length(self, "half", None);
        let down = match b.opt_length(self, "down") {
            Some(d) => Some(d),
            None => up,
        };
        let mode = b.choice(
            self,
            "mode",
            &["triangular", "triangular2", "exp_range"],
            "triangular",
        );
        let gamma = b.positive(self, "gamma", Some(1.0));
        let over = b.opt_length(self, "over");
        let (low, high) = range?;
        let mode = match mode?.as_str() {
            "triangular2" => CyclicMode::Triangular2,
            "exp_range" => CyclicMode::ExpRange { gamma: gamma? },
            _ => CyclicMode::Triangular,
        };
        self.finish(
            &b,
            Schedule::Cyclic {
                low,
                high,
                up: up?,
                down: down?,
                mode,
            },
            over,
        )
    }

    fn call_restarts(&mut self, name: &Ident, args: &[Arg], span: Span) -> Option<Value> {
        let mut b = self.bind(name, args, &["schedule", "period", "mult"], span)?;
        let inner = b.schedule(self, "schedule");
        let period = b.length(self, "period", None);
        let mult = b.number(self, "mult", Some(1.0));
        if let (Some(m), Some(s)) = (mult, b.span_of("mult")) {
            if m < 1.0 {
                self.error(
                    Diagnostic::error(s, format!("`mult` must be at least 1, not {}", fmt_num(m)))
                        .with_label("out of range"),
                );
                return None;
            }
        }
        let (inner, inner_span) = inner?;
        if inner.len.is_some() {
            self.error(
                Diagnostic::error(inner_span, "the restarted schedule has its own length")
                    .with_label("remove `over:` here")
                    .with_help("inside `restarts`, each period sets the length"),
            );
            return None;
        }
        let node = self.graph.push(Node::Restarts {
            inner: inner.node,
            period: period?,
            mult: mult?,
        });
        Some(Value::Schedule(Sched {
            node,
            len: None,
            needs_len: None,
        }))
    }

    fn call_inverse_sqrt(&mut self, name: &Ident, args: &[Arg], span: Span) -> Option<Value> {
        let mut b = self.bind(name, args, &["peak", "warmup", "timescale", "over"], span)?;
        let peak = b.number(self, "peak", None);
        let warmup = b.length_or_zero(self, "warmup");
        let timescale = b.opt_length(self, "timescale");
        let over = b.opt_length(self, "over");
        let warmup = warmup?;
        let timescale = match timescale {
            Some(t) => t,
            None if warmup > 0.0 => warmup,
            None => {
                self.error(
                    Diagnostic::error(span, "`inverse_sqrt` without warmup needs a `timescale:`")
                        .with_help(
                            "e.g. `inverse_sqrt(0.001, warmup: 0 steps, timescale: 1000 steps)`",
                        ),
                );
                return None;
            }
        };
        self.finish(
            &b,
            Schedule::InverseSqrt {
                peak: peak?,
                warmup,
                timescale,
            },
            over,
        )
    }

    fn call_wsd(&mut self, name: &Ident, args: &[Arg], span: Span) -> Option<Value> {
        let mut b = self.bind(
            name,
            args,
            &[
                "peak",
                "warmup",
                "decay",
                "stable",
                "min_ratio",
                "warmup_type",
                "decay_type",
            ],
            span,
        )?;
        let peak = b.number(self, "peak", None);
        let warmup = b.length_or_zero(self, "warmup");
        let decay = b.length(self, "decay", None);
        let stable = b.opt_length_or_zero(self, "stable");
        let min_ratio = b.fraction_number(self, "min_ratio", 0.0);
        let warmup_type = b.choice(self, "warmup_type", &["linear", "cosine", "sqrt"], "linear");
        let decay_type = b.choice(self, "decay_type", &["cosine", "linear", "sqrt"], "cosine");
        let schedule = Schedule::WarmupStableDecay {
            peak: peak?,
            warmup: warmup?,
            stable,
            decay: decay?,
            min_ratio: min_ratio?,
            warmup_shape: match warmup_type?.as_str() {
                "cosine" => WarmupShape::Cosine,
                "sqrt" => WarmupShape::OneMinusSqrt,
                _ => WarmupShape::Linear,
            },
            decay_shape: match decay_type?.as_str() {
                "linear" => DecayShape::Linear,
                "sqrt" => DecayShape::OneMinusSqrt,
                _ => DecayShape::Cosine,
            },
        };
        self.finish(&b, schedule, None)
    }

    fn call_piecewise(&mut self, name: &Ident, args: &[Arg], span: Span) -> Option<Value> {
        let mut b = self.bind(name, args, &["values", "at"], span)?;
        let values = b.number_list(self, "values");
        let points = b.length_list(self, "at", name.name == "piecewise_linear");
        let (values, points) = (values?, points?);
        let expected = if name.name == "piecewise" {
            points.len() + 1
        } else {
            points.len()
        };
        if values.len() != expected {
            let rule = if name.name == "piecewise" {
                "one more value than boundaries"
            } else {
                "one value per point"
            };
            self.error(
                Diagnostic::error(
                    b.span_of("values").unwrap_or(span),
                    format!(
                        "`{}` needs {rule}: {} values for {} points",
                        name.name,
                        values.len(),
                        points.len()
                    ),
                )
                .with_label("wrong number of values"),
            );
            return None;
        }
        let schedule = if name.name == "piecewise" {
            Schedule::PiecewiseConstant {
                boundaries: points,
                values,
            }
        } else {
            Schedule::PiecewiseLinear { points, values }
        };
        self.finish(&b, schedule, None)
    }

    fn call_min_max(&mut self, name: &Ident, args: &[Arg], span: Span) -> Option<Value> {
        let op = if name.name == "min" {
            BinaryOp::Min
        } else {
            BinaryOp::Max
        };
        if let Some(named) = args.iter().find_map(|a| a.name.as_ref()) {
            self.error(
                Diagnostic::error(
                    named.span,
                    format!("`{}` takes positional arguments only", name.name),
                )
                .with_label("no names here"),
            );
            return None;
        }
        if args.len() < 2 {
            self.error(
                Diagnostic::error(
                    span,
                    format!("`{}` needs at least two arguments", name.name),
                )
                .with_help(format!("e.g. `{}(cosine(0.1 -> 0), 0.05)`", name.name)),
            );
            return None;
        }
        let mut acc: Option<(Value, Span)> = None;
        for arg in args {
            let v = self.value(&arg.value);
            acc = Some(match acc {
                None => (v, arg.value.span),
                Some((a, a_span)) => (
                    self.binary(op, (a, a_span), (v, arg.value.span), span),
                    a_span.join(arg.value.span),
                ),
            });
        }
        acc.map(|(v, _)| v)
    }

    fn call_clamp(&mut self, name: &Ident, args: &[Arg], span: Span) -> Option<Value> {
        let mut b = self.bind(name, args, &["value", "min", "max"], span)?;
        let value = b.take(self, "value");
        let low = b.number(self, "min", None);
        let high = b.number(self, "max", None);
        let ((value, value_span), low, high) = (value?, low?, high?);
        if low > high {
            self.error(
                Diagnostic::error(
                    span,
                    format!(
                        "`clamp` bounds are reversed: min {} > max {}",
                        fmt_num(low),
                        fmt_num(high)
                    ),
                )
                .with_label("empty range"),
            );
            return None;
        }
        let lower = self.binary(
            BinaryOp::Max,
            (value, value_span),
            (Value::Number(low), span),
            span,
        );
        Some(self.binary(
            BinaryOp::Min,
            (lower, span),
            (Value::Number(high), span),
            span,
        ))
    }
}
