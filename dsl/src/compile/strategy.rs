//! The tensor side of a script — `optimizer`, `layerwise`, `group`, `layer_decay`,
//! `precision` (with `loss_scale`), `clip`, `compress` and `batch` — compiled into a
//! [`Strategy`].
//! Numeric hyperparameters become graph outputs (so any of them may be a schedule):
//! the global value of a hyperparameter is the output [`Hyper::name`], a group's
//! override the output [`GroupRule::output_name`]. The strategy keeps only the
//! non-numeric choices. Groups and layer decay are in `groups`, precision and loss
//! scaling in `precision`, gradient compression in `compress`, batch-size control in
//! `batch`.
//!
//! [`Strategy`]: regimen_core::Strategy
//! [`GroupRule::output_name`]: regimen_core::GroupRule::output_name

use regimen_core::strategy::CLIP_NORM_OUTPUT;
use regimen_core::{Hyper, Node, OptimizerKind, Schedule};

use super::args::Bound;
use super::{fmt_num, Compiler};
use crate::ast::*;
use crate::diagnostic::{closest, Diagnostic, Span};

mod batch;
mod compress;
mod groups;
mod precision;

use groups::GroupContext;

/// Statement keywords that build the strategy.
pub(super) const DIRECTIVES: &[&str] = &[
    "optimizer",
    "layerwise",
    "group",
    "layer_decay",
    "precision",
    "clip",
    "compress",
    "batch",
];

/// A typical use of each strategy statement, for help texts.
pub(super) fn example(keyword: &str) -> &'static str {
    match keyword {
        "optimizer" => "optimizer sgd(momentum: 0.9)",
        "layerwise" => "layerwise lars(trust: 0.001)",
        "group" => "group \"*.bias\" { weight_decay = 0 }",
        "layer_decay" => "layer_decay 0.75",
        "precision" => "precision bf16",
        "compress" => "compress topk(ratio: 0.01) with error_feedback",
        "batch" => batch::EXAMPLE,
        _ => "clip norm: 1.0",
    }
}

/// Where a word that is not a top-level statement or hyperparameter belongs, if it is
/// one of the strategy's settings: a help text for "unknown" diagnostics.
pub(super) fn misplaced(word: &str) -> Option<String> {
    if DIRECTIVES.contains(&word) {
        return Some(format!(
            "`{word}` is a statement without `=`, e.g. `{}`",
            example(word)
        ));
    }
    Some(match word {
        "loss_scale" => {
            "`loss_scale` goes in a precision block: `precision f16 { loss_scale dynamic }`"
                .to_string()
        }
        "trust_ratio" => {
            "`trust_ratio` is a group setting: `group \"*.bias\" { trust_ratio = off }`".to_string()
        }
        "nesterov" | "amsgrad" | "bias_correction" | "trust_clip" => {
            let (optimizer, value) = match word {
                "nesterov" => ("sgd", "true"),
                "amsgrad" => ("adam", "true"),
                "bias_correction" => ("lamb", "false"),
                _ => ("lamb", "10"),
            };
            format!(
                "`{word}` is an option of the optimizer: `optimizer {optimizer}({word}: {value})`"
            )
        }
        _ => return None,
    })
}

/// The strategy statements of a script, gathered in the first pass so that they
/// compile after every top-level hyperparameter (which groups are relative to).
#[derive(Default)]
pub(super) struct Directives<'a> {
    optimizer: Option<&'a Directive>,
    layerwise: Option<&'a Directive>,
    layer_decay: Option<&'a Directive>,
    precision: Option<&'a Directive>,
    clip: Option<&'a Directive>,
    compress: Option<&'a Directive>,
    batch: Option<&'a Directive>,
    groups: Vec<&'a Directive>,
}

/// A top-level `NAME = EXPR` as the first pass recorded it.
type Assigned<'a> = (&'a str, &'a Stmt, &'a Expr);

/// The non-numeric options of each optimizer, after its hyperparameters.
fn optimizer_flags(kind: OptimizerKind) -> &'static [&'static str] {
    match kind {
        OptimizerKind::Sgd => &["nesterov"],
        OptimizerKind::Adam | OptimizerKind::AdamW => &["amsgrad"],
        OptimizerKind::Lamb => &["bias_correction", "trust_clip"],
        OptimizerKind::Lars => &["nesterov", "trust_clip"],
    }
}

/// What `layerwise lars(…)` / `layerwise lamb(…)` may add to the optimizer it
/// converts: the options the plain optimizer lacks.
fn layerwise_params(kind: OptimizerKind) -> &'static [&'static str] {
    match kind {
        OptimizerKind::Lamb => &["bias_correction", "trust_clip"],
        _ => &["trust", "eps", "trust_clip"],
    }
}

/// The optimizers that read `hyper`, for help texts.
fn readers(hyper: Hyper) -> String {
    let names: Vec<&str> = OptimizerKind::ALL
        .into_iter()
        .filter(|k| k.hypers().contains(&hyper))
        .map(|k| k.name())
        .collect();
    names.join(", ")
}

/// `NAME` or `NAME(args)`: the name and the arguments (none for a bare name).
fn callee(expr: &Expr) -> Option<(Ident, &[Arg])> {
    match &expr.kind {
        ExprKind::Call { name, args } => Some((name.clone(), args.as_slice())),
        ExprKind::Ident(name) => Some((
            Ident {
                name: name.clone(),
                span: expr.span,
            },
            &[],
        )),
        _ => None,
    }
}

/// The AST of the `lr` argument of an optimizer call (named, or first positional).
fn lr_arg(args: &[Arg]) -> Option<&Expr> {
    args.iter()
        .enumerate()
        .find(|(i, a)| match &a.name {
            Some(n) => n.name == "lr",
            None => *i == 0,
        })
        .map(|(_, a)| &a.value)
}

impl<'a> Compiler<'a> {
    /// "unknown compression method `x`" / "unknown batch controller `x`": the name is
    /// neither a built-in nor one of the script's plugins' exports of `kind`.
    fn unknown_component(
        &mut self,
        name: &Ident,
        builtins: &[&str],
        kind: regimen_core::loader::ExportKind,
        what: &str,
        plural: &str,
    ) {
        let plugin_names = self.plugins.names(kind);
        let all: Vec<&str> = builtins
            .iter()
            .copied()
            .chain(plugin_names.iter().copied())
            .collect();
        let names = all.join(", ");
        let help = match closest(&name.name, all.iter().copied()) {
            Some(near) => format!("did you mean `{near}`? {plural} are: {names}"),
            None => format!("{plural} are: {names}"),
        };
        self.error(
            Diagnostic::error(name.span, format!("unknown {what} `{}`", name.name))
                .with_label(format!("not a {what}"))
                .with_help(help),
        );
    }

    /// First pass: remember a strategy statement; a repeated one is an error.
    pub(super) fn collect_directive(&mut self, directive: &'a Directive) {
        let keyword = directive.keyword.name.as_str();
        let slot = match keyword {
            "group" => {
                self.directives.groups.push(directive);
                return;
            }
            "optimizer" => &mut self.directives.optimizer,
            "layerwise" => &mut self.directives.layerwise,
            "layer_decay" => &mut self.directives.layer_decay,
            "precision" => &mut self.directives.precision,
            "compress" => &mut self.directives.compress,
            "batch" => &mut self.directives.batch,
            _ => &mut self.directives.clip,
        };
        match slot {
            None => *slot = Some(directive),
            Some(first) if keyword == "batch" => {
                let first = first.keyword.span;
                self.error(
                    Diagnostic::error(directive.keyword.span, "batch size control is set twice")
                        .with_label("again here")
                        .with_note(first, "first set here")
                        .with_help("a script has one batch controller; keep one of them"),
                );
            }
            Some(first) => {
                let first = first.keyword.span;
                let help = match keyword {
                    "optimizer" => {
                        "a script has one optimizer; use `group` to give parameters other hyperparameters"
                    }
                    "compress" => {
                        "a script has one global compression; use `group` to compress some parameters differently"
                    }
                    _ => "keep one of them",
                };
                self.error(
                    Diagnostic::error(
                        directive.keyword.span,
                        format!("`{keyword}` is given twice"),
                    )
                    .with_label("again here")
                    .with_note(first, "first given here")
                    .with_help(help),
                );
            }
        }
    }

    /// Compile the strategy statements, after the top-level hyperparameters.
    /// `implicit_momentum` is the momentum cycle of a top-level `lr = onecycle(…)`.
    pub(super) fn compile_strategy(
        &mut self,
        assigned: &[Assigned<'a>],
        implicit_momentum: Option<(Schedule, Option<f64>, Span)>,
    ) {
        let directives = std::mem::take(&mut self.directives);
        // A statement that failed may leave hyperparameters unset: do not follow it
        // with complaints about what is missing.
        let mut failed = false;
        let mut implicit_momentum = implicit_momentum;
        // The optimizer name as written, for messages.
        let mut named_at: Option<Span> = None;
        let mut nesterov_span = None;

        if let Some(directive) = directives.optimizer {
            named_at = Some(directive.keyword.span);
            match self.optimizer_statement(directive, assigned) {
                Some(found) => {
                    nesterov_span = found.nesterov_span;
                    if found.implicit_momentum.is_some() {
                        implicit_momentum = found.implicit_momentum;
                    }
                }
                None => failed = true,
            }
        }
        if let Some(directive) = directives.layerwise {
            named_at = named_at.or(Some(directive.keyword.span));
            // After a rejected optimizer name there is nothing to convert: only the
            // arguments are checked.
            let base = match directives.optimizer {
                None => Some(LayerwiseBase::Default),
                Some(_) if failed && !self.optimizer_named => None,
                Some(_) => Some(LayerwiseBase::Written),
            };
            let converted = self.layerwise_statement(directive, assigned, base);
            failed |= !converted;
        }
        let kind = self.strategy.optimizer.kind;
        let explicit = directives.optimizer.is_some() || directives.layerwise.is_some();

        if let Some((schedule, over, span)) = implicit_momentum {
            // PyTorch's OneCycleLR cycles `momentum`, or β₁ of an Adam-style optimizer.
            let target = if kind.hypers().contains(&Hyper::Momentum) {
                "momentum"
            } else {
                "beta1"
            };
            let set = self.graph.output(target).is_some()
                || assigned.iter().any(|(name, _, _)| *name == target);
            if !set {
                let mut node = self.graph.push(Node::Schedule(schedule));
                if let Some(len) = over {
                    node = self.graph.push(Node::Over { inner: node, len });
                }
                self.add_output(target, node, span);
            }
        }
        if let Some(directive) = directives.clip {
            self.clip_statement(directive, assigned);
        }
        if let Some(directive) = directives.compress {
            self.strategy.compress = self.compress_statement(directive, None);
        }
        if explicit {
            self.unused_hypers(assigned);
            let lr_set = self.graph.output("lr").is_some()
                || assigned.iter().any(|(name, _, _)| *name == "lr");
            if !lr_set && !failed {
                let span = named_at.unwrap_or_default();
                self.error(
                    Diagnostic::error(span, format!("`{}` needs a learning rate", kind.name()))
                        .with_label("no `lr` is set")
                        .with_help(format!(
                            "add `lr = 0.1` (any schedule), or `lr: 0.1` in `{}(…)`",
                            kind.name()
                        )),
                );
            }
        }
        if let Some(span) = nesterov_span.filter(|_| self.strategy.optimizer.nesterov) {
            self.check_nesterov(span);
        }
        let context = GroupContext {
            explicit_optimizer: explicit,
            layer_decay_given: directives.layer_decay.is_some(),
            optimizer_failed: failed,
        };
        for (index, directive) in directives.groups.iter().enumerate() {
            if let Some(rule) = self.group_statement(index, directive, &context) {
                self.strategy.groups.push(rule);
            }
        }
        if let Some(directive) = directives.layer_decay {
            self.strategy.layer_decay = self.layer_decay_statement(directive);
        }
        if let Some(directive) = directives.precision {
            if let Some(precision) = self.precision_statement(directive) {
                self.strategy.precision = precision;
            }
        }
        if let Some(directive) = directives.batch {
            self.strategy.batch = self.batch_statement(directive);
        }
    }

    /// Report `with` and (unless `block_allowed`) a block on a statement that takes
    /// neither.
    fn no_extras(&mut self, directive: &Directive, block_allowed: bool) {
        let keyword = &directive.keyword.name;
        if let (Some(first), Some(last)) = (directive.with.first(), directive.with.last()) {
            self.error(
                Diagnostic::error(
                    first.span.join(last.span),
                    format!("`{keyword}` takes no `with`"),
                )
                .with_label("not expected here")
                .with_help(format!("write it as `{}`", example(keyword))),
            );
        }
        if let Some(block) = directive.block.as_ref().filter(|_| !block_allowed) {
            self.error(
                Diagnostic::error(block.span, format!("`{keyword}` takes no `{{ … }}` block"))
                    .with_label("not expected here")
                    .with_help(format!("write it as `{}`", example(keyword))),
            );
        }
    }

    /// Report a named item on a statement whose items are plain; true if none is.
    fn no_named_items(&mut self, directive: &Directive) -> bool {
        let mut ok = true;
        for item in &directive.items {
            if let Some(name) = &item.name {
                self.error(
                    Diagnostic::error(
                        name.span.join(item.expr.span),
                        format!("`{}` takes no named items", directive.keyword.name),
                    )
                    .with_label("drop the `name:`")
                    .with_help(format!(
                        "write it as `{}`",
                        example(&directive.keyword.name)
                    )),
                );
                ok = false;
            }
        }
        ok
    }

    /// The one plain item of a statement such as `optimizer sgd(…)`.
    fn sole_item(&mut self, directive: &'a Directive, what: &str) -> Option<&'a Expr> {
        let keyword = &directive.keyword;
        if !self.no_named_items(directive) {
            return None;
        }
        match directive.items.as_slice() {
            [item] => Some(&item.expr),
            [] => {
                self.error(
                    Diagnostic::error(keyword.span, format!("`{}` needs {what}", keyword.name))
                        .with_label(format!("{what} expected after this"))
                        .with_help(format!("e.g. `{}`", example(&keyword.name))),
                );
                None
            }
            [_, extra @ ..] => {
                let span = extra
                    .iter()
                    .map(|i| i.expr.span)
                    .reduce(Span::join)
                    .unwrap_or(keyword.span);
                self.error(
                    Diagnostic::error(span, format!("`{}` takes one item, {what}", keyword.name))
                        .with_label("unexpected")
                        .with_help(format!("e.g. `{}`", example(&keyword.name))),
                );
                None
            }
        }
    }

    /// Check the arguments of a call that will not be compiled (its name is
    /// unknown), so their own errors are reported too.
    fn check_args(&mut self, args: &[Arg]) {
        for arg in args {
            self.value(&arg.value);
        }
    }

    // ----- optimizer -----------------------------------------------------------

    fn optimizer_statement(
        &mut self,
        directive: &'a Directive,
        assigned: &[Assigned<'a>],
    ) -> Option<OptimizerFound> {
        self.no_extras(directive, false);
        let expr = self.sole_item(directive, "an optimizer")?;
        let Some((name, args)) = callee(expr) else {
            self.error(
                Diagnostic::error(expr.span, "expected an optimizer")
                    .with_label("not an optimizer")
                    .with_help("e.g. `optimizer sgd(momentum: 0.9)`"),
            );
            self.value(expr);
            return None;
        };
        let Some(kind) = OptimizerKind::ALL
            .into_iter()
            .find(|k| k.name() == name.name)
        else {
            let names: Vec<&str> = OptimizerKind::ALL.iter().map(|k| k.name()).collect();
            let mut d = Diagnostic::error(name.span, format!("unknown optimizer `{}`", name.name))
                .with_label("not an optimizer");
            d = match closest(&name.name, names.iter().copied()) {
                Some(near) => d.with_help(format!("did you mean `{near}`?")),
                None => d.with_help(format!("optimizers: {}", names.join(", "))),
            };
            self.error(d);
            self.check_args(args);
            return None;
        };
        self.optimizer_named = true;
        self.strategy.optimizer.kind = kind;
        self.strategy.optimizer.bias_correction = kind == OptimizerKind::Lamb;
        let params: Vec<&'static str> = kind
            .hypers()
            .iter()
            .map(|h| h.name())
            .chain(optimizer_flags(kind).iter().copied())
            .collect();
        let mut bound = self.bind(&name, args, &params, expr.span)?;
        let mut ok = self.hyper_args(&bound, kind.hypers(), &name, assigned);
        let nesterov_span = bound.given("nesterov").map(|(_, span, _)| span);
        self.option_args(&mut bound, optimizer_flags(kind));
        ok &= bound.ok;
        let implicit_momentum = lr_arg(args).and_then(|e| self.implicit_momentum(e));
        ok.then_some(OptimizerFound {
            nesterov_span,
            implicit_momentum,
        })
    }

    /// Compile the hyperparameter arguments among `hypers` into graph outputs; false
    /// if one is also set elsewhere or fails to compile.
    fn hyper_args(
        &mut self,
        bound: &Bound,
        hypers: &[Hyper],
        function: &Ident,
        assigned: &[Assigned<'a>],
    ) -> bool {
        let mut ok = true;
        for hyper in hypers {
            let name = hyper.name();
            let Some((value, value_span, arg_span)) = bound.given(name) else {
                continue;
            };
            let elsewhere = assigned
                .iter()
                .find(|(n, _, _)| *n == name)
                .map(|(_, stmt, _)| stmt.span)
                .or_else(|| {
                    self.output_spans
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, span)| *span)
                });
            if let Some(first) = elsewhere {
                self.error(
                    Diagnostic::error(arg_span, format!("`{name}` is set twice"))
                        .with_label(format!("set again in `{}(…)`", function.name))
                        .with_note(first, "first set here")
                        .with_help(format!("keep one: `{name} = …` or `{name}:`")),
                );
                ok = false;
                continue;
            }
            match self.scalar_output(name, value, value_span) {
                Some(node) => self.add_output(name, node, value_span),
                None => ok = false,
            }
        }
        ok
    }

    /// Read the non-numeric options among `options` into the optimizer spec.
    fn option_args(&mut self, bound: &mut Bound, options: &[&str]) {
        let spec_default = self.strategy.optimizer.clone();
        for option in options {
            if bound.given(option).is_none() {
                continue;
            }
            match *option {
                "nesterov" => {
                    self.strategy.optimizer.nesterov =
                        bound.bool(self, option, spec_default.nesterov)
                }
                "amsgrad" => {
                    self.strategy.optimizer.amsgrad = bound.bool(self, option, spec_default.amsgrad)
                }
                "bias_correction" => {
                    self.strategy.optimizer.bias_correction =
                        bound.bool(self, option, spec_default.bias_correction)
                }
                _ => {
                    self.strategy.optimizer.trust_clip = bound.positive(self, option, None);
                }
            }
        }
    }

    /// `layerwise lars(…)` on SGD, `layerwise lamb(…)` on Adam/AdamW. False when the
    /// statement is rejected.
    fn layerwise_statement(
        &mut self,
        directive: &'a Directive,
        assigned: &[Assigned<'a>],
        base: Option<LayerwiseBase>,
    ) -> bool {
        self.no_extras(directive, false);
        let Some(expr) = self.sole_item(directive, "`lars(…)` or `lamb(…)`") else {
            return false;
        };
        let target = match callee(expr) {
            Some((name, args)) if name.name == "lars" || name.name == "lamb" => {
                let kind = if name.name == "lars" {
                    OptimizerKind::Lars
                } else {
                    OptimizerKind::Lamb
                };
                (name, args, kind)
            }
            Some((name, args)) => {
                let mut d = Diagnostic::error(
                    name.span,
                    format!("unknown layer-wise rule `{}`", name.name),
                )
                .with_label("expected `lars` or `lamb`");
                d = match closest(&name.name, ["lars", "lamb"]) {
                    Some(near) => d.with_help(format!("did you mean `{near}`?")),
                    None => d.with_help(
                        "`layerwise lars(…)` turns SGD into LARS, `layerwise lamb(…)` turns Adam into LAMB",
                    ),
                };
                self.error(d);
                self.check_args(args);
                return false;
            }
            None => {
                self.error(
                    Diagnostic::error(expr.span, "expected `lars(…)` or `lamb(…)`")
                        .with_label("not a layer-wise rule")
                        .with_help("e.g. `layerwise lars(trust: 0.001)`"),
                );
                self.value(expr);
                return false;
            }
        };
        let (name, args, target) = target;
        let Some(written) = base else {
            self.check_args(args);
            return false;
        };
        let base = self.strategy.optimizer.kind;
        let base_name = match written {
            LayerwiseBase::Written => format!("`optimizer {}`", base.name()),
            LayerwiseBase::Default => "the default optimizer (sgd)".to_string(),
        };
        let problem = match (target, base) {
            (OptimizerKind::Lars, OptimizerKind::Sgd)
            | (OptimizerKind::Lamb, OptimizerKind::Adam | OptimizerKind::AdamW) => None,
            (_, OptimizerKind::Lars | OptimizerKind::Lamb) => Some((
                format!("{base_name} is already layer-wise"),
                format!(
                    "remove `layerwise` and give its options in `{}(…)`",
                    base.name()
                ),
            )),
            (OptimizerKind::Lars, _) => Some((
                format!("`layerwise lars` applies to SGD, not to {base_name}"),
                format!(
                    "for Adam with per-layer trust ratios use `optimizer lamb(…)` (or `layerwise lamb(…)` after `optimizer {}`)",
                    base.name()
                ),
            )),
            _ => Some((
                format!("`layerwise lamb` applies to Adam or AdamW, not to {base_name}"),
                "for SGD with per-layer trust ratios use `layerwise lars(…)`".to_string(),
            )),
        };
        if let Some((message, help)) = problem {
            self.error(
                Diagnostic::error(name.span, message)
                    .with_label("does not apply here")
                    .with_help(help),
            );
            self.check_args(args);
            return false;
        }
        if target == OptimizerKind::Lamb && self.strategy.optimizer.amsgrad {
            self.error(
                Diagnostic::error(name.span, "LAMB has no AMSGrad variant")
                    .with_label("`amsgrad: true` cannot carry over")
                    .with_help("drop `amsgrad: true` from the optimizer"),
            );
            return false;
        }
        if base == OptimizerKind::AdamW && self.graph.output("weight_decay").is_none() {
            // AdamW's decoupled decay is LAMB's: keep AdamW's default strength too.
            if let Some(decay) = OptimizerKind::AdamW.default_value(Hyper::WeightDecay) {
                let node = self.const_node(decay).node;
                self.add_output("weight_decay", node, name.span);
            }
        }
        self.strategy.optimizer.kind = target;
        if target == OptimizerKind::Lamb {
            self.strategy.optimizer.bias_correction = true;
        }
        let Some(mut bound) = self.bind(&name, args, layerwise_params(target), expr.span) else {
            return false;
        };
        let hypers: Vec<Hyper> = layerwise_params(target)
            .iter()
            .filter_map(|p| Hyper::from_name(p))
            .collect();
        let ok = self.hyper_args(&bound, &hypers, &name, assigned);
        let options: Vec<&str> = layerwise_params(target)
            .iter()
            .copied()
            .filter(|p| Hyper::from_name(p).is_none())
            .collect();
        self.option_args(&mut bound, &options);
        ok && bound.ok
    }

    /// Warn about top-level hyperparameters the optimizer never reads.
    fn unused_hypers(&mut self, assigned: &[Assigned<'a>]) {
        let kind = self.strategy.optimizer.kind;
        for (name, stmt, _) in assigned {
            let Some(hyper) = Hyper::from_name(name) else {
                continue;
            };
            if kind.hypers().contains(&hyper) {
                continue;
            }
            let span = match &stmt.kind {
                StmtKind::Assign { target, .. } => target.span,
                _ => stmt.span,
            };
            self.diagnostics.push(
                Diagnostic::warning(span, format!("`{name}` is not used by {}", kind.name()))
                    .with_label(format!("{} does not read it", kind.name()))
                    .with_help(format!("`{name}` is read by: {}", readers(hyper))),
            );
        }
    }

    /// The value of output `name` when it is a constant: `Some(None)` for a schedule,
    /// `None` when the output does not exist.
    fn constant_output(&self, name: &str) -> Option<Option<f64>> {
        let node = self.graph.output(name)?;
        Some(match self.graph.nodes.get(node as usize) {
            Some(Node::Schedule(Schedule::Constant { value })) => Some(*value),
            _ => None,
        })
    }

    /// PyTorch's `SGD` refuses Nesterov without momentum or with dampening.
    fn check_nesterov(&mut self, nesterov: Span) {
        let momentum = self.constant_output("momentum").unwrap_or(Some(0.0));
        let dampening = self.constant_output("dampening").unwrap_or(Some(0.0));
        let why = match (momentum, dampening) {
            (Some(m), _) if m <= 0.0 => format!("momentum is {}", fmt_num(m)),
            (_, Some(d)) if d != 0.0 => format!("dampening is {}", fmt_num(d)),
            _ => return,
        };
        self.error(
            Diagnostic::error(
                nesterov,
                "Nesterov momentum requires a momentum and zero dampening",
            )
            .with_label(format!("but {why}"))
            .with_help("set a momentum (e.g. `momentum: 0.9`) and leave `dampening` at 0"),
        );
    }

    // ----- clip ----------------------------------------------------------------

    fn clip_statement(&mut self, directive: &'a Directive, assigned: &[Assigned<'a>]) {
        self.no_extras(directive, false);
        let keyword = &directive.keyword;
        let [item] = directive.items.as_slice() else {
            let span = directive
                .items
                .iter()
                .fold(keyword.span, |s, i| s.join(i.expr.span));
            self.error(
                Diagnostic::error(span, "`clip` takes one setting")
                    .with_label("expected `norm: …` only")
                    .with_help("write it as `clip norm: 1.0`"),
            );
            return;
        };
        let Some(name) = &item.name else {
            self.error(
                Diagnostic::error(item.expr.span, "say what to clip")
                    .with_label("a bare value")
                    .with_help(format!(
                        "write `clip norm: {}` to clip the global gradient norm",
                        crate::format::expr(&item.expr)
                    )),
            );
            self.value(&item.expr);
            return;
        };
        if name.name != "norm" {
            let mut d = Diagnostic::error(name.span, format!("unknown clipping `{}`", name.name))
                .with_label("not a clipping rule");
            d = match closest(&name.name, ["norm"]) {
                Some(near) => d.with_help(format!("did you mean `{near}`?")),
                None => d.with_help("Regimen clips the global gradient norm: `clip norm: 1.0`"),
            };
            self.error(d);
            self.value(&item.expr);
            return;
        }
        let value = self.value(&item.expr);
        if let Some((_, stmt, _)) = assigned.iter().find(|(n, _, _)| *n == CLIP_NORM_OUTPUT) {
            let first = stmt.span;
            self.error(
                Diagnostic::error(
                    name.span.join(item.expr.span),
                    "the clipping norm is set twice",
                )
                .with_label("set again here")
                .with_note(first, "first set here")
                .with_help("keep one: `clip norm: …` or `clip_norm = …`"),
            );
            return;
        }
        if let Some(node) = self.scalar_output(CLIP_NORM_OUTPUT, value, item.expr.span) {
            self.add_output(CLIP_NORM_OUTPUT, node, item.expr.span);
        }
    }
}

/// The optimizer a `layerwise` statement converts.
#[derive(Clone, Copy)]
enum LayerwiseBase {
    /// The one of the `optimizer` statement.
    Written,
    /// The default (sgd): the script has no `optimizer` statement.
    Default,
}

/// What a compiled `optimizer` statement leaves for later checks.
struct OptimizerFound {
    /// Where `nesterov:` was given.
    nesterov_span: Option<Span>,
    /// The momentum cycle of `lr: onecycle(…)`.
    implicit_momentum: Option<(Schedule, Option<f64>, Span)>,
}
