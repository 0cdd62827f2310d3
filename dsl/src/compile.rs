//! Checks and compilation: [`Script`] → [`ScalarGraph`]. Units are resolved to steps
//! here (so the core only sees steps), every call is checked against its parameter
//! list, and every problem found is reported, not only the first.

use std::collections::HashMap;

use regimen_core::{
    Anneal, BinaryOp, CyclicMode, DecayShape, Node, NodeId, ScalarGraph, Schedule, WarmupShape,
};

use crate::ast::*;
use crate::diagnostic::{closest, Diagnostic, Span};

/// Hyperparameters a script may assign at the top level.
pub const KNOWN_SCALARS: &[&str] = &[
    "lr",
    "momentum",
    "dampening",
    "weight_decay",
    "beta1",
    "beta2",
    "eps",
    "clip_norm",
];

/// Statement keywords that later parts of Regimen give meaning to.
const FUTURE_DIRECTIVES: &[&str] = &[
    "optimizer",
    "group",
    "layerwise",
    "precision",
    "compress",
    "batch",
    "on",
    "at",
    "plugin",
];

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

/// Settings the script may leave to the caller (command-line flags).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompileOptions {
    /// Steps per epoch; overrides the script's `epoch = N steps`.
    pub steps_per_epoch: Option<f64>,
    /// Samples per step; overrides the script's `batch = N`.
    pub batch_size: Option<f64>,
}

/// A successfully compiled script.
#[derive(Clone, Debug, PartialEq)]
pub struct Compiled {
    /// The scalar graph: one output per hyperparameter.
    pub graph: ScalarGraph,
    /// Warnings found on the way.
    pub warnings: Vec<Diagnostic>,
    /// Steps per epoch in force, if known.
    pub steps_per_epoch: Option<f64>,
    /// Samples per step in force, if known.
    pub batch_size: Option<f64>,
}

impl Compiled {
    /// The horizon in whole steps (rounded up), if the script sets one.
    pub fn horizon_steps(&self) -> Option<u64> {
        self.graph.horizon.map(|h| h.ceil() as u64)
    }
}

/// How many steps the range check evaluates per hyperparameter: every step of
/// shorter runs, evenly spaced samples (plus the last step) of longer ones, the first
/// steps of runs without a horizon. Keeps compiling well under a millisecond.
const RANGE_CHECK_STEPS: u64 = 10_000;

/// Compile a parsed script. Errors are every problem found, in source order.
pub fn compile_script(
    script: &Script,
    options: &CompileOptions,
) -> Result<Compiled, Vec<Diagnostic>> {
    let mut compiler = Compiler {
        graph: ScalarGraph::new(None),
        diagnostics: Vec::new(),
        lets: HashMap::new(),
        let_order: Vec::new(),
        steps_per_epoch: options.steps_per_epoch,
        batch_size: options.batch_size,
        horizon: None,
        horizon_failed: false,
        onecycle_momenta: HashMap::new(),
    };
    compiler.run(script);
    let mut diagnostics = compiler.diagnostics;
    diagnostics.sort_by_key(|d| (d.span.start, d.span.end));
    if diagnostics.iter().any(|d| d.is_error()) {
        return Err(diagnostics);
    }
    Ok(Compiled {
        graph: compiler.graph,
        warnings: diagnostics,
        steps_per_epoch: compiler.steps_per_epoch,
        batch_size: compiler.batch_size,
    })
}

/// A compiled schedule subtree and what the checks need to know about it.
#[derive(Clone, Debug, PartialEq)]
struct Sched {
    node: NodeId,
    /// Where a following `then` takes over, if the schedule ends.
    len: Option<f64>,
    /// The span of a schedule inside that takes its length from context.
    needs_len: Option<(Span, String)>,
}

/// The value of an expression during compilation.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Number(f64),
    /// A length, already in steps.
    Duration(f64),
    Str(String),
    /// An unbound name, meaningful only where a parameter expects a choice.
    Symbol(String),
    List(Vec<(Value, Span)>),
    Range {
        from: f64,
        to: f64,
        both_ways: bool,
    },
    Schedule(Sched),
    /// An error was already reported for this value.
    Poison,
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Number(_) => "a number",
            Value::Duration(_) => "a length",
            Value::Str(_) => "a string",
            Value::Symbol(_) => "a name",
            Value::List(_) => "a list",
            Value::Range { .. } => "a range",
            Value::Schedule(_) => "a schedule",
            Value::Poison => "an invalid value",
        }
    }
}

/// A `let` binding, evaluated on first use so that unit settings written anywhere
/// in the script are known by then.
struct LetBinding<'a> {
    expr: &'a Expr,
    state: LetState,
    span: Span,
    used: bool,
}

#[derive(Clone)]
enum LetState {
    Pending,
    InProgress,
    Done(Value),
}

struct Compiler<'a> {
    graph: ScalarGraph,
    diagnostics: Vec<Diagnostic>,
    lets: HashMap<String, LetBinding<'a>>,
    let_order: Vec<String>,
    steps_per_epoch: Option<f64>,
    batch_size: Option<f64>,
    horizon: Option<f64>,
    /// The inverse momentum cycle of each `onecycle(…)` call with `cycle_momentum`
    /// on, by the call's start offset; used when `lr` is that call.
    onecycle_momenta: HashMap<usize, (Schedule, Option<f64>)>,
    /// A horizon statement exists but was rejected: do not also complain that
    /// schedules lack a length.
    horizon_failed: bool,
}

/// Where a top-level setting was made.
struct Setting<'a> {
    stmt: &'a Stmt,
    value: &'a Expr,
}

impl<'a> Compiler<'a> {
    fn error(&mut self, diagnostic: Diagnostic) {
        self.diagnostics.push(diagnostic);
    }

    fn run(&mut self, script: &'a Script) {
        // Settings that define units come first: any statement may use epochs.
        let mut epoch: Option<Setting<'a>> = None;
        let mut batch: Option<Setting<'a>> = None;
        let mut horizon: Option<Setting<'a>> = None;
        let mut assigned: Vec<(&'a str, &'a Stmt, &'a Expr)> = Vec::new();
        // Values of rejected assignments: still checked, so their errors show too.
        let mut rejected: Vec<&'a Expr> = Vec::new();

        for stmt in &script.stmts {
            match &stmt.kind {
                StmtKind::Let { name, value } => {
                    if let Some(previous) = self.lets.get(&name.name) {
                        let first = previous.span;
                        self.error(
                            Diagnostic::error(name.span, format!("`{}` is bound twice", name.name))
                                .with_label("bound again here")
                                .with_note(first, "first bound here")
                                .with_help("choose another name"),
                        );
                        continue;
                    }
                    self.lets.insert(
                        name.name.clone(),
                        LetBinding {
                            expr: value,
                            state: LetState::Pending,
                            span: name.span,
                            used: false,
                        },
                    );
                    self.let_order.push(name.name.clone());
                }
                StmtKind::Assign {
                    target,
                    op,
                    op_span,
                    value,
                } => {
                    if *op != AssignOp::Set {
                        self.error(
                            Diagnostic::error(
                                *op_span,
                                format!("`{}` only modifies a value inside a block", op.as_str()),
                            )
                            .with_label("not at the top level")
                            .with_help(format!(
                                "at the top level, assign with `{} = …`",
                                target.name
                            )),
                        );
                        continue;
                    }
                    let slot = match target.name.as_str() {
                        "epoch" => Some(&mut epoch),
                        "batch" => Some(&mut batch),
                        _ => None,
                    };
                    if let Some(slot) = slot {
                        if let Some(first) = slot {
                            let first_span = first.stmt.span;
                            self.error(duplicate(target, first_span));
                        } else {
                            *slot = Some(Setting { stmt, value });
                        }
                        continue;
                    }
                    if !KNOWN_SCALARS.contains(&target.name.as_str()) {
                        let mut d = Diagnostic::error(
                            target.span,
                            format!("unknown hyperparameter `{}`", target.name),
                        )
                        .with_label("not a hyperparameter");
                        d = match closest(
                            &target.name,
                            KNOWN_SCALARS.iter().copied().chain(["epoch", "batch"]),
                        ) {
                            Some(near) => d.with_help(format!("did you mean `{near}`?")),
                            None => d.with_help(format!(
                                "known hyperparameters: {}; use `let` for your own names",
                                KNOWN_SCALARS.join(", ")
                            )),
                        };
                        self.error(d);
                        continue;
                    }
                    if let Some((_, first, _)) = assigned.iter().find(|(n, _, _)| *n == target.name)
                    {
                        let first_span = first.span;
                        self.error(duplicate(target, first_span));
                        rejected.push(value);
                        continue;
                    }
                    assigned.push((target.name.as_str(), stmt, value));
                }
                StmtKind::Directive(directive) => {
                    let keyword = directive.keyword.name.as_str();
                    if keyword == "horizon" {
                        if let Some(first) = &horizon {
                            let first_span = first.stmt.span;
                            self.error(
                                Diagnostic::error(
                                    directive.keyword.span,
                                    "the horizon is set twice",
                                )
                                .with_label("set again here")
                                .with_note(first_span, "first set here"),
                            );
                        } else if let Some(item) = self.single_item(directive, "horizon 90 epochs")
                        {
                            horizon = Some(Setting { stmt, value: item });
                        }
                    } else if FUTURE_DIRECTIVES.contains(&keyword) {
                        self.error(
                            Diagnostic::error(
                                directive.keyword.span,
                                format!("`{keyword}` statements are not supported yet"),
                            )
                            .with_label("not yet supported")
                            .with_help("this version of Regimen compiles schedules of scalar hyperparameters only"),
                        );
                    } else {
                        let d = Diagnostic::error(
                            directive.keyword.span,
                            format!("unknown statement `{keyword}`"),
                        )
                        .with_label("unknown");
                        let candidates = ["horizon", "let"]
                            .into_iter()
                            .chain(FUTURE_DIRECTIVES.iter().copied())
                            .chain(KNOWN_SCALARS.iter().copied());
                        let d = match closest(keyword, candidates) {
                            Some(near) => d.with_help(format!("did you mean `{near}`?")),
                            None => d.with_help("statements are `let`, `horizon`, `epoch = …`, or `NAME = …` for a hyperparameter"),
                        };
                        self.error(d);
                    }
                }
            }
        }

        if self.batch_size.is_none() {
            if let Some(setting) = &batch {
                self.batch_size = self.positive_count(setting.value, "batch size");
            }
        }
        if self.steps_per_epoch.is_none() {
            if let Some(setting) = &epoch {
                self.steps_per_epoch = self.epoch_length(setting.value);
            }
        }
        if let Some(setting) = &horizon {
            self.horizon = self.length(setting.value, "horizon", false);
            self.horizon_failed = self.horizon.is_none();
            self.graph.horizon = self.horizon;
        }
        // Check every binding, used or not, in source order.
        for name in self.let_order.clone() {
            self.let_value(&name);
        }

        let momentum_assigned = assigned.iter().any(|(n, _, _)| *n == "momentum");
        let mut implicit_momentum = None;
        for (name, _stmt, expr) in &assigned {
            let value = self.value(expr);
            if *name == "lr" && !momentum_assigned && matches!(expr.kind, ExprKind::Call { .. }) {
                // PyTorch's OneCycleLR cycles momentum inversely unless told not to.
                implicit_momentum = self.onecycle_momenta.remove(&expr.span.start);
            }
            if let Some(node) = self.scalar_output(name, value, expr.span) {
                self.graph.add_output(*name, node);
            }
        }
        for expr in rejected {
            self.value(expr);
        }
        if let Some((momentum, over)) = implicit_momentum {
            let mut node = self.graph.push(Node::Schedule(momentum));
            if let Some(len) = over {
                node = self.graph.push(Node::Over { inner: node, len });
            }
            self.graph.add_output("momentum", node);
        }
        for name in &self.let_order {
            if let Some(binding) = self.lets.get(name) {
                if !binding.used && !name.starts_with('_') {
                    self.diagnostics.push(
                        Diagnostic::warning(binding.span, format!("`{name}` is never used"))
                            .with_label("unused")
                            .with_help(format!("remove it, or name it `_{name}` to keep it")),
                    );
                }
            }
        }
        self.check_ranges(&assigned);
    }

    fn single_item(&mut self, directive: &'a Directive, example: &str) -> Option<&'a Expr> {
        let keyword = &directive.keyword;
        if directive.items.len() != 1 || directive.block.is_some() || !directive.with.is_empty() {
            let span = directive
                .items
                .iter()
                .fold(keyword.span, |s, i| s.join(i.expr.span));
            self.error(
                Diagnostic::error(span, format!("`{}` takes exactly one length", keyword.name))
                    .with_help(format!("write it as `{example}`")),
            );
            return None;
        }
        directive.items.first().map(|i| &i.expr)
    }

    fn positive_count(&mut self, expr: &Expr, what: &str) -> Option<f64> {
        match self.value(expr) {
            Value::Number(n) if n >= 1.0 && n.fract() == 0.0 => Some(n),
            Value::Number(n) => {
                self.error(
                    Diagnostic::error(
                        expr.span,
                        format!("the {what} must be a positive whole number, not {n}"),
                    )
                    .with_label("out of range"),
                );
                None
            }
            Value::Poison => None,
            other => {
                self.error(
                    Diagnostic::error(
                        expr.span,
                        format!("the {what} must be a number, found {}", other.kind()),
                    )
                    .with_label("not a number"),
                );
                None
            }
        }
    }

    fn epoch_length(&mut self, expr: &Expr) -> Option<f64> {
        if let ExprKind::Quantity {
            unit: Unit::Epochs | Unit::Percent,
            unit_span,
            ..
        } = &expr.kind
        {
            self.error(
                Diagnostic::error(
                    *unit_span,
                    "the epoch length must be given in steps or samples",
                )
                .with_help("write it as `epoch = 390 steps`"),
            );
            return None;
        }
        self.length(expr, "epoch length", false)
    }

    /// A strictly positive length in steps (`allow_zero` admits 0).
    fn length(&mut self, expr: &Expr, what: &str, allow_zero: bool) -> Option<f64> {
        match self.value(expr) {
            Value::Duration(steps) if steps > 0.0 || (allow_zero && steps == 0.0) => Some(steps),
            Value::Duration(steps) => {
                self.error(
                    Diagnostic::error(
                        expr.span,
                        format!(
                            "the {what} must be {}, not {}",
                            if allow_zero {
                                "zero or more"
                            } else {
                                "greater than zero"
                            },
                            fmt_num(steps)
                        ),
                    )
                    .with_label("out of range"),
                );
                None
            }
            Value::Number(n) => {
                self.error(missing_unit(expr, n, what));
                None
            }
            Value::Poison => None,
            other => {
                self.error(
                    Diagnostic::error(
                        expr.span,
                        format!("the {what} must be a length, found {}", other.kind()),
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

    // ----- expressions ---------------------------------------------------------

    fn value(&mut self, expr: &Expr) -> Value {
        match &expr.kind {
            ExprKind::Number { value, text } => {
                if value.is_finite() {
                    Value::Number(*value)
                } else {
                    self.error(
                        Diagnostic::error(
                            expr.span,
                            format!("the number `{text}` is out of range"),
                        )
                        .with_label("too large for a 64-bit float"),
                    );
                    Value::Poison
                }
            }
            ExprKind::Str(s) => Value::Str(s.clone()),
            ExprKind::Ident(name) => self.lookup(name, expr.span),
            ExprKind::Paren(inner) => self.value(inner),
            ExprKind::Quantity {
                value,
                unit,
                unit_span,
            } => {
                let amount = match self.value(value) {
                    Value::Number(n) => n,
                    Value::Poison => return Value::Poison,
                    Value::Symbol(name) => {
                        self.unknown_name(&name, value.span);
                        return Value::Poison;
                    }
                    other => {
                        self.error(
                            Diagnostic::error(
                                value.span,
                                format!(
                                    "a length needs a number before its unit, found {}",
                                    other.kind()
                                ),
                            )
                            .with_label("not a number"),
                        );
                        return Value::Poison;
                    }
                };
                match self.steps_of(amount, *unit, *unit_span) {
                    Some(steps) => Value::Duration(steps),
                    None => Value::Poison,
                }
            }
            ExprKind::List(items) => {
                Value::List(items.iter().map(|i| (self.value(i), i.span)).collect())
            }
            ExprKind::Range {
                from,
                to,
                both_ways,
            } => {
                let from_v = self.number(from, "the start of a range");
                let to_v = self.number(to, "the end of a range");
                match (from_v, to_v) {
                    (Some(from), Some(to)) => Value::Range {
                        from,
                        to,
                        both_ways: *both_ways,
                    },
                    _ => Value::Poison,
                }
            }
            ExprKind::Neg(inner) => match self.value(inner) {
                Value::Number(n) => Value::Number(-n),
                Value::Schedule(s) => {
                    let node = self.graph.push(Node::Neg(s.node));
                    Value::Schedule(Sched { node, ..s })
                }
                Value::Duration(_) => {
                    self.error(
                        Diagnostic::error(expr.span, "a length cannot be negative")
                            .with_label("negative length"),
                    );
                    Value::Poison
                }
                other => self.not_arithmetic(other, inner.span),
            },
            ExprKind::Binary { op, lhs, rhs } => {
                let l = self.value(lhs);
                let r = self.value(rhs);
                let op = match op {
                    BinOp::Add => BinaryOp::Add,
                    BinOp::Sub => BinaryOp::Sub,
                    BinOp::Mul => BinaryOp::Mul,
                    BinOp::Div => BinaryOp::Div,
                    BinOp::Pow => BinaryOp::Pow,
                };
                self.binary(op, (l, lhs.span), (r, rhs.span), expr.span)
            }
            ExprKind::Then(parts) => self.then(parts),
            ExprKind::Call { name, args } => self.call(name, args, expr.span),
        }
    }

    /// The value of name `name` referenced at `span`: a `let` declared earlier, or an
    /// unbound symbol (meaningful only as a choice such as `triangular`).
    fn lookup(&mut self, name: &str, span: Span) -> Value {
        let Some(binding) = self.lets.get_mut(name) else {
            return Value::Symbol(name.to_string());
        };
        binding.used = true;
        if binding.span.start > span.start {
            let declared = binding.span;
            self.error(
                Diagnostic::error(span, format!("`{name}` is used before its `let`"))
                    .with_label("not defined yet")
                    .with_note(declared, "defined here")
                    .with_help("move the `let` above its first use"),
            );
            return Value::Poison;
        }
        self.let_value(name)
    }

    /// Evaluate a binding once; later references reuse the value (and its nodes).
    fn let_value(&mut self, name: &str) -> Value {
        let Some(binding) = self.lets.get_mut(name) else {
            return Value::Poison;
        };
        match binding.state.clone() {
            LetState::Done(value) => value,
            LetState::InProgress => {
                let span = binding.span;
                self.error(
                    Diagnostic::error(span, format!("`{name}` is defined in terms of itself"))
                        .with_label("refers to itself"),
                );
                Value::Poison
            }
            LetState::Pending => {
                binding.state = LetState::InProgress;
                let expr = binding.expr;
                let value = self.value(expr);
                if let Some(binding) = self.lets.get_mut(name) {
                    binding.state = LetState::Done(value.clone());
                }
                value
            }
        }
    }

    fn unknown_name(&mut self, name: &str, span: Span) {
        let mut d =
            Diagnostic::error(span, format!("unknown name `{name}`")).with_label("not defined");
        let lets: Vec<&str> = self.lets.keys().map(|k| k.as_str()).collect();
        if let Some(near) = closest(name, lets.iter().copied()) {
            d = d.with_help(format!("did you mean `{near}`?"));
        } else if let Some(near) = closest(name, FUNCTIONS.iter().copied()) {
            d = d.with_help(format!("`{near}` is a function: call it as `{near}(…)`"));
        } else {
            d = d.with_help(format!("define it first with `let {name} = …`"));
        }
        self.error(d);
    }

    fn not_arithmetic(&mut self, value: Value, span: Span) -> Value {
        match value {
            Value::Poison => {}
            Value::Symbol(name) => self.unknown_name(&name, span),
            other => self.error(
                Diagnostic::error(
                    span,
                    format!("expected a number or a schedule, found {}", other.kind()),
                )
                .with_label("cannot be used in arithmetic"),
            ),
        }
        Value::Poison
    }

    fn steps_of(&mut self, amount: f64, unit: Unit, span: Span) -> Option<f64> {
        match unit {
            Unit::Steps => Some(amount),
            Unit::Epochs => match self.steps_per_epoch {
                Some(spe) => Some(amount * spe),
                None => {
                    self.error(
                        Diagnostic::error(span, "`epochs` used, but the epoch length is unknown")
                            .with_label("needs the number of steps per epoch")
                            .with_help("add `epoch = 390 steps` to the script, or pass `--steps-per-epoch`"),
                    );
                    None
                }
            },
            Unit::Samples => match self.batch_size {
                Some(batch) => Some(amount / batch),
                None => {
                    self.error(
                        Diagnostic::error(span, "`samples` used, but the batch size is unknown")
                            .with_label("needs the number of samples per step")
                            .with_help("add `batch = 256` to the script, or pass `--batch-size`"),
                    );
                    None
                }
            },
            Unit::Percent => match self.horizon {
                Some(h) => Some(amount / 100.0 * h),
                None => {
                    self.error(
                        Diagnostic::error(span, "`%` of the horizon used, but no horizon is set")
                            .with_label("percent of what?")
                            .with_help("add `horizon 90 epochs` (or steps) to the script"),
                    );
                    None
                }
            },
        }
    }

    fn number(&mut self, expr: &Expr, what: &str) -> Option<f64> {
        match self.value(expr) {
            Value::Number(n) => Some(n),
            Value::Poison => None,
            Value::Symbol(name) => {
                self.unknown_name(&name, expr.span);
                None
            }
            other => {
                self.error(
                    Diagnostic::error(
                        expr.span,
                        format!("{what} must be a number, found {}", other.kind()),
                    )
                    .with_label("not a number"),
                );
                None
            }
        }
    }

    fn const_node(&mut self, value: f64) -> Sched {
        Sched {
            node: self
                .graph
                .push(Node::Schedule(Schedule::Constant { value })),
            len: None,
            needs_len: None,
        }
    }

    fn as_sched(&mut self, value: Value, span: Span) -> Option<Sched> {
        match value {
            Value::Schedule(s) => Some(s),
            Value::Number(n) => Some(self.const_node(n)),
            other => {
                self.not_arithmetic(other, span);
                None
            }
        }
    }

    fn binary(
        &mut self,
        op: BinaryOp,
        (l, ls): (Value, Span),
        (r, rs): (Value, Span),
        span: Span,
    ) -> Value {
        match (l, r) {
            (Value::Poison, _) | (_, Value::Poison) => Value::Poison,
            (Value::Number(a), Value::Number(b)) => {
                let v = op.apply(a, b);
                if v.is_finite() {
                    Value::Number(v)
                } else {
                    let why = if op == BinaryOp::Div && b == 0.0 {
                        "division by zero"
                    } else {
                        "the result is not a finite number"
                    };
                    self.error(Diagnostic::error(span, why.to_string()).with_label("not finite"));
                    Value::Poison
                }
            }
            (Value::Duration(a), Value::Duration(b))
                if matches!(
                    op,
                    BinaryOp::Add | BinaryOp::Sub | BinaryOp::Min | BinaryOp::Max
                ) =>
            {
                Value::Duration(op.apply(a, b))
            }
            (Value::Duration(a), Value::Number(b))
                if matches!(op, BinaryOp::Mul | BinaryOp::Div) =>
            {
                let v = op.apply(a, b);
                if v.is_finite() {
                    Value::Duration(v)
                } else {
                    self.error(
                        Diagnostic::error(span, "division by zero").with_label("not finite"),
                    );
                    Value::Poison
                }
            }
            (Value::Number(a), Value::Duration(b)) if op == BinaryOp::Mul => Value::Duration(a * b),
            (
                l @ (Value::Schedule(_) | Value::Number(_)),
                r @ (Value::Schedule(_) | Value::Number(_)),
            ) => {
                let (Some(a), Some(b)) = (self.as_sched(l, ls), self.as_sched(r, rs)) else {
                    return Value::Poison;
                };
                let node = self.graph.push(Node::Binary {
                    op,
                    lhs: a.node,
                    rhs: b.node,
                });
                let len = match (a.len, b.len) {
                    (Some(x), Some(y)) => Some(x.max(y)),
                    (Some(x), None) | (None, Some(x)) => Some(x),
                    (None, None) => None,
                };
                // A constant operand never ends a schedule early.
                let len = if a.len.is_none() && self.is_const(a.node)
                    || b.len.is_none() && self.is_const(b.node)
                {
                    a.len.or(b.len)
                } else {
                    len.filter(|_| a.len.is_some() && b.len.is_some())
                };
                Value::Schedule(Sched {
                    node,
                    len,
                    needs_len: a.needs_len.or(b.needs_len),
                })
            }
            (l, r) => {
                let (bad, bad_span) = if matches!(l, Value::Number(_) | Value::Schedule(_)) {
                    (r, rs)
                } else {
                    (l, ls)
                };
                if let Value::Symbol(name) = &bad {
                    self.unknown_name(name, bad_span);
                } else {
                    self.error(
                        Diagnostic::error(
                            span,
                            format!("cannot apply `{}` to {}", op_symbol(op), bad.kind()),
                        )
                        .with_label("unsupported operands")
                        .with_note(bad_span, bad.kind()),
                    );
                }
                Value::Poison
            }
        }
    }

    fn is_const(&self, node: NodeId) -> bool {
        matches!(
            self.graph.nodes.get(node as usize),
            Some(Node::Schedule(Schedule::Constant { .. }))
        )
    }

    fn then(&mut self, parts: &[Expr]) -> Value {
        let mut compiled = Vec::with_capacity(parts.len());
        let mut poisoned = false;
        for part in parts {
            let value = self.value(part);
            match value {
                Value::Poison => poisoned = true,
                v => match self.as_sched(v, part.span) {
                    Some(s) => compiled.push((s, part.span)),
                    None => poisoned = true,
                },
            }
        }
        if poisoned {
            return Value::Poison;
        }
        let last = compiled.len().saturating_sub(1);
        for (i, (s, part_span)) in compiled.iter().enumerate() {
            if i < last && s.len.is_none() {
                self.error(
                    Diagnostic::error(*part_span, "`then` follows a schedule that never ends")
                        .with_label("runs forever, so `then` is never reached")
                        .with_help("give it a length with `over:`, e.g. `linear(0 -> 0.1, over: 10 steps)`"),
                );
                poisoned = true;
            }
        }
        if poisoned {
            return Value::Poison;
        }
        // Fold from the right so each hand-over is relative to its own start.
        let mut iter = compiled.into_iter().rev();
        let Some((mut acc, _)) = iter.next() else {
            return Value::Poison;
        };
        for (first, _) in iter {
            let first_len = first.len.unwrap_or(0.0);
            let node = self.graph.push(Node::Then {
                first: first.node,
                first_len,
                second: acc.node,
            });
            acc = Sched {
                node,
                len: acc.len.map(|l| l + first_len),
                needs_len: acc.needs_len,
            };
        }
        Value::Schedule(acc)
    }

    /// The output node for a hyperparameter, with the length checks of the root.
    fn scalar_output(&mut self, name: &str, value: Value, span: Span) -> Option<NodeId> {
        let sched = match value {
            Value::Poison => return None,
            Value::Symbol(s) => {
                self.unknown_name(&s, span);
                return None;
            }
            Value::Number(n) => self.const_node(n),
            Value::Schedule(s) => s,
            Value::Duration(_) => {
                self.error(
                    Diagnostic::error(
                        span,
                        format!("`{name}` must be a number or a schedule, found a length"),
                    )
                    .with_label("a length, not a value")
                    .with_help("drop the unit"),
                );
                return None;
            }
            other => {
                self.error(
                    Diagnostic::error(
                        span,
                        format!(
                            "`{name}` must be a number or a schedule, found {}",
                            other.kind()
                        ),
                    )
                    .with_label("not a value"),
                );
                return None;
            }
        };
        if let Some((needing, function)) = &sched.needs_len {
            match self.horizon {
                None if self.horizon_failed => return None,
                None => {
                    self.error(
                        Diagnostic::error(
                            *needing,
                            format!("`{function}` needs a length, but none is known here"),
                        )
                        .with_label("how long?")
                        .with_help("give it `over: …`, or set the run's length with `horizon …`"),
                    );
                    return None;
                }
                Some(h) => {
                    if let Some(remaining) = self.remaining_after_handover(sched.node, h) {
                        if remaining <= 0.0 {
                            self.error(
                                Diagnostic::error(*needing, format!(
                                    "`{function}` gets no time: the schedules before it use the whole {}-step horizon",
                                    fmt_num(h)
                                ))
                                .with_label("starts after the horizon")
                                .with_help("shorten the earlier parts or lengthen the horizon"),
                            );
                            return None;
                        }
                    }
                }
            }
        }
        Some(sched.node)
    }

    /// Contextual length left for the last part of a `then` chain rooted at `node`.
    fn remaining_after_handover(&self, node: NodeId, len: f64) -> Option<f64> {
        match self.graph.nodes.get(node as usize)? {
            Node::Then {
                first_len, second, ..
            } => {
                let rest = len - first_len;
                Some(self.remaining_after_handover(*second, rest).unwrap_or(rest))
            }
            _ => None,
        }
    }

    fn check_ranges(&mut self, assigned: &[(&'a str, &'a Stmt, &'a Expr)]) {
        let total = self
            .graph
            .horizon
            .map_or(RANGE_CHECK_STEPS, |h| h.ceil() as u64);
        let stride = total.div_ceil(RANGE_CHECK_STEPS).max(1);
        let probes: Vec<u64> = (0..total)
            .step_by(stride as usize)
            .chain(total.checked_sub(1))
            .collect();
        let len = self.graph.root_length();
        for output in self.graph.outputs.clone().iter() {
            let span = assigned
                .iter()
                .find(|(n, _, _)| *n == output.name)
                .map(|(_, _, e)| e.span)
                .or_else(|| {
                    assigned
                        .iter()
                        .find(|(n, _, _)| *n == "lr")
                        .map(|(_, _, e)| e.span)
                })
                .unwrap_or_default();
            let (low, high, high_open, rule) = match output.name.as_str() {
                "momentum" | "dampening" => (0.0, 1.0, false, "between 0 and 1"),
                "beta1" | "beta2" => (0.0, 1.0, true, "in [0, 1)"),
                "eps" => (f64::MIN_POSITIVE, f64::INFINITY, false, "greater than zero"),
                _ => (0.0, f64::INFINITY, false, "zero or more"),
            };
            for &t in &probes {
                let v = self.graph.eval_node(output.node, t as f64, len);
                let bad = !v.is_finite() || v < low || v > high || (high_open && v >= high);
                if bad {
                    self.error(
                        Diagnostic::error(
                            span,
                            format!(
                                "`{}` must be {rule}, but it is {} at step {t}",
                                output.name,
                                fmt_num(v)
                            ),
                        )
                        .with_label("out of range"),
                    );
                    break;
                }
            }
        }
    }

    // ----- calls ---------------------------------------------------------------

    fn call(&mut self, name: &Ident, args: &[Arg], span: Span) -> Value {
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
    fn bind(
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
        let milestones = b.length_list(self, "at");
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
        let points = b.length_list_allow_zero(self, "at", name.name == "piecewise_linear");
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

/// Call arguments matched to parameters; getters check kinds and ranges, report
/// problems through the compiler and mark the call as failed.
struct Bound {
    function: String,
    call_span: Span,
    params: Vec<&'static str>,
    /// Per parameter: value, value span, whole argument span.
    slots: Vec<Option<(Value, Span, Span)>>,
    ok: bool,
}

impl Bound {
    fn index(&self, param: &str) -> usize {
        self.params
            .iter()
            .position(|p| *p == param)
            .unwrap_or(usize::MAX)
    }

    fn span_of(&self, param: &str) -> Option<Span> {
        self.slots.get(self.index(param))?.as_ref().map(|s| s.1)
    }

    fn get(&self, param: &str) -> Option<(Value, Span)> {
        self.slots
            .get(self.index(param))?
            .as_ref()
            .map(|(v, s, _)| (v.clone(), *s))
    }

    fn fail(&mut self, c: &mut Compiler<'_>, diagnostic: Diagnostic) -> Option<f64> {
        c.error(diagnostic);
        self.ok = false;
        None
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

    fn take(&mut self, c: &mut Compiler<'_>, param: &str) -> Option<(Value, Span)> {
        match self.get(param) {
            Some(v) => Some(v),
            None => {
                self.missing(c, param, "…");
                None
            }
        }
    }

    fn number(&mut self, c: &mut Compiler<'_>, param: &str, default: Option<f64>) -> Option<f64> {
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

    fn checked(
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

    fn positive(&mut self, c: &mut Compiler<'_>, param: &str, default: Option<f64>) -> Option<f64> {
        self.checked(c, param, default, |n| n > 0.0, "greater than zero")
    }

    fn non_negative(
        &mut self,
        c: &mut Compiler<'_>,
        param: &str,
        default: Option<f64>,
    ) -> Option<f64> {
        self.checked(c, param, default, |n| n >= 0.0, "zero or more")
    }

    fn fraction(&mut self, c: &mut Compiler<'_>, param: &str, default: f64) -> Option<f64> {
        self.checked(
            c,
            param,
            Some(default),
            |n| n > 0.0 && n < 1.0,
            "strictly between 0 and 1",
        )
    }

    fn fraction_number(&mut self, c: &mut Compiler<'_>, param: &str, default: f64) -> Option<f64> {
        self.checked(
            c,
            param,
            Some(default),
            |n| (0.0..=1.0).contains(&n),
            "between 0 and 1",
        )
    }

    fn length_value(
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

    fn opt_length(&mut self, c: &mut Compiler<'_>, param: &str) -> Option<f64> {
        self.length_value(c, param, false).flatten()
    }

    fn opt_length_or_zero(&mut self, c: &mut Compiler<'_>, param: &str) -> Option<f64> {
        self.length_value(c, param, true).flatten()
    }

    fn length(&mut self, c: &mut Compiler<'_>, param: &str, default: Option<f64>) -> Option<f64> {
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

    fn length_or_zero(&mut self, c: &mut Compiler<'_>, param: &str) -> Option<f64> {
        match self.length_value(c, param, true)? {
            Some(l) => Some(l),
            None => {
                self.missing(c, param, "10 steps");
                None
            }
        }
    }

    fn bool(&mut self, c: &mut Compiler<'_>, param: &str, default: bool) -> bool {
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

    fn choice(
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
    fn anneal(&mut self, c: &mut Compiler<'_>) -> Option<Anneal> {
        let word = self.choice(c, "anneal", &["cos", "linear"], "cos")?;
        Some(if word == "linear" {
            Anneal::Linear
        } else {
            Anneal::Cos
        })
    }

    /// `a -> b`; with `number_means_to_zero`, a single number `a` means `a -> 0`.
    fn range(
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

    fn cycle_range(&mut self, c: &mut Compiler<'_>, param: &str) -> Option<(f64, f64)> {
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

    fn schedule(&mut self, c: &mut Compiler<'_>, param: &str) -> Option<(Sched, Span)> {
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

    fn list(
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

    fn number_list(&mut self, c: &mut Compiler<'_>, param: &str) -> Option<Vec<f64>> {
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

    fn length_list(&mut self, c: &mut Compiler<'_>, param: &str) -> Option<Vec<f64>> {
        self.length_list_allow_zero(c, param, false)
    }

    fn length_list_allow_zero(
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

fn duplicate(target: &Ident, first: Span) -> Diagnostic {
    Diagnostic::error(target.span, format!("`{}` is assigned twice", target.name))
        .with_label("assigned again here")
        .with_note(first, "first assigned here")
        .with_help("combine them into one expression, e.g. with `then`")
}

fn missing_unit(expr: &Expr, n: f64, what: &str) -> Diagnostic {
    missing_unit_at(expr.span, n, &format!("the {what}"))
}

/// `what` is the subject of the sentence, e.g. "the horizon" or "`every`".
fn missing_unit_at(span: Span, n: f64, what: &str) -> Diagnostic {
    Diagnostic::error(span, format!("{what} needs a unit"))
        .with_label("a bare number")
        .with_help(format!("did you mean `{} steps`?", fmt_num(n)))
}

fn op_symbol(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Add => "+",
        BinaryOp::Sub => "-",
        BinaryOp::Mul => "*",
        BinaryOp::Div => "/",
        BinaryOp::Pow => "^",
        BinaryOp::Min => "min",
        BinaryOp::Max => "max",
    }
}

/// A number as a person would write it (no trailing `.0`, short exponents, six
/// significant digits).
pub fn fmt_num(n: f64) -> String {
    let n = regimen_core::round_significant(n, 6);
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        let plain = format!("{n}");
        let sci = format!("{n:e}");
        if sci.len() < plain.len() {
            sci
        } else {
            plain
        }
    }
}
