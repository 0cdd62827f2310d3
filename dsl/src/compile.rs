//! Checks and compilation: [`Script`] → [`ScalarGraph`] and [`Strategy`]. Units are
//! resolved here: every length of a schedule becomes steps (`epochs` × steps per
//! epoch, `samples` / batch size, `%` of the horizon), so the graph only sees steps;
//! the lengths of a `batch` controller become optimizer steps or samples
//! ([`regimen_core::batch::Interval`]; see `strategy/batch.rs`). Every call is checked
//! against its parameter list, and every problem found is reported, not only the
//! first.

use std::collections::HashMap;
use std::path::PathBuf;

use regimen_core::loader::PluginSet;
use regimen_core::runtime::CompressorRegistry;
use regimen_core::{BinaryOp, Node, NodeId, ScalarGraph, Schedule, Strategy};

use crate::ast::*;
use crate::diagnostic::{closest, Diagnostic, Span};

mod args;
mod calls;
mod plugins;
mod strategy;

pub use calls::FUNCTIONS;

/// Hyperparameters a script may assign at the top level.
pub const KNOWN_SCALARS: &[&str] = &[
    "lr",
    "momentum",
    "dampening",
    "weight_decay",
    "beta1",
    "beta2",
    "eps",
    "trust",
    "clip_norm",
];

/// Statement keywords that later parts of Regimen give meaning to.
const FUTURE_DIRECTIVES: &[&str] = &["on", "at"];

/// What a statement of [`FUTURE_DIRECTIVES`] is told.
const FUTURE_HELP: &str = "policies (`on …`, `at …`) come in a later version of Regimen";

/// Settings the script may leave to the caller (command-line flags).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompileOptions {
    /// Steps per epoch; overrides the script's `epoch = N steps`.
    pub steps_per_epoch: Option<f64>,
    /// Samples per step; overrides the script's `batch = N`.
    pub batch_size: Option<f64>,
    /// The folder a relative `plugin "…"` path is relative to: the script's folder
    /// ([`crate::compile`] fills it from the file name when it is `None`).
    pub script_dir: Option<PathBuf>,
    /// Further folders a relative `plugin "…"` path is looked up in, in order
    /// (`--plugin-path`).
    pub plugin_path: Vec<PathBuf>,
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
    /// The tensor side: optimizer, parameter groups, layer decay, precision. Its
    /// numeric hyperparameters are outputs of [`Compiled::graph`].
    pub strategy: Strategy,
    /// The libraries the script's `plugin` statements loaded; the strategy's
    /// methods are looked up in [`PluginSet::registry`] (then the built-ins).
    pub plugins: PluginSet,
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
        batch_failed: false,
        onecycle_momenta: HashMap::new(),
        directives: strategy::Directives::default(),
        output_spans: Vec::new(),
        strategy: Strategy::default(),
        optimizer_named: false,
        script_dir: options.script_dir.clone(),
        plugin_path: options.plugin_path.clone(),
        plugins: PluginSet::new(),
        registry: CompressorRegistry::new(),
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
        strategy: compiler.strategy,
        plugins: compiler.plugins,
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
    /// A `batch = N` statement exists but was rejected: do not also complain that
    /// the batch size is unknown.
    batch_failed: bool,
    /// The statements that build [`Compiler::strategy`], collected in the first pass.
    directives: strategy::Directives<'a>,
    /// The span each graph output is reported at by the range check, in output order.
    output_spans: Vec<(String, Span)>,
    /// The tensor side being built.
    strategy: Strategy,
    /// The `optimizer` statement named a known optimizer.
    optimizer_named: bool,
    /// See [`CompileOptions::script_dir`].
    script_dir: Option<PathBuf>,
    /// See [`CompileOptions::plugin_path`].
    plugin_path: Vec<PathBuf>,
    /// The libraries `plugin` statements loaded.
    plugins: PluginSet,
    /// Where `compress` methods are built: the plugins' and the built-ins.
    registry: CompressorRegistry,
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
                        let near = closest(
                            &target.name,
                            KNOWN_SCALARS.iter().copied().chain(["epoch", "batch"]),
                        );
                        let help = match (strategy::misplaced(&target.name), near) {
                            (Some(elsewhere), _) => elsewhere,
                            (None, Some(near)) => format!("did you mean `{near}`?"),
                            (None, None) => format!(
                                "known hyperparameters: {}; use `let` for your own names",
                                KNOWN_SCALARS.join(", ")
                            ),
                        };
                        self.error(
                            Diagnostic::error(
                                target.span,
                                format!("unknown hyperparameter `{}`", target.name),
                            )
                            .with_label("not a hyperparameter")
                            .with_help(help),
                        );
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
                    } else if keyword == "plugin" {
                        self.plugin_statement(directive);
                    } else if strategy::DIRECTIVES.contains(&keyword) {
                        self.collect_directive(directive);
                    } else if FUTURE_DIRECTIVES.contains(&keyword) {
                        self.error(
                            Diagnostic::error(
                                directive.keyword.span,
                                format!("`{keyword}` statements are not supported yet"),
                            )
                            .with_label("not yet supported")
                            .with_help(FUTURE_HELP),
                        );
                    } else {
                        let d = Diagnostic::error(
                            directive.keyword.span,
                            format!("unknown statement `{keyword}`"),
                        )
                        .with_label("unknown");
                        let candidates = ["horizon", "let", "plugin"]
                            .into_iter()
                            .chain(strategy::DIRECTIVES.iter().copied())
                            .chain(FUTURE_DIRECTIVES.iter().copied())
                            .chain(KNOWN_SCALARS.iter().copied());
                        let d = match (strategy::misplaced(keyword), closest(keyword, candidates)) {
                            (Some(elsewhere), _) => d.with_help(elsewhere),
                            (None, Some(near)) => d.with_help(format!("did you mean `{near}`?")),
                            (None, None) => d.with_help("statements are `let`, `horizon`, `epoch = …`, or `NAME = …` for a hyperparameter"),
                        };
                        self.error(d);
                    }
                }
            }
        }

        self.registry = self.plugins.registry();
        if self.batch_size.is_none() {
            if let Some(setting) = &batch {
                self.batch_size = self.positive_count(setting.value, "batch size");
                self.batch_failed = self.batch_size.is_none();
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

        let mut implicit_momentum = None;
        for (name, _stmt, expr) in &assigned {
            let value = self.value(expr);
            if *name == "lr" {
                implicit_momentum = self.implicit_momentum(expr);
            }
            if let Some(node) = self.scalar_output(name, value, expr.span) {
                self.add_output(name, node, expr.span);
            }
        }
        for expr in rejected {
            self.value(expr);
        }
        self.compile_strategy(&assigned, implicit_momentum);
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
        self.check_ranges();
    }

    /// Name `node` as the graph output `name`, reported at `span` by the range check.
    fn add_output(&mut self, name: &str, node: NodeId, span: Span) {
        self.graph.add_output(name, node);
        self.output_spans.push((name.to_string(), span));
    }

    /// The inverse momentum cycle of `lr_expr` when it is a single `onecycle(…)` call
    /// with `cycle_momentum` on: PyTorch's OneCycleLR cycles momentum (or Adam's β₁)
    /// unless told not to. Returns the schedule, its `over:` and the span of `lr`.
    fn implicit_momentum(&mut self, lr_expr: &Expr) -> Option<(Schedule, Option<f64>, Span)> {
        if !matches!(lr_expr.kind, ExprKind::Call { .. }) {
            return None;
        }
        let (schedule, over) = self.onecycle_momenta.remove(&lr_expr.span.start)?;
        Some((schedule, over, lr_expr.span))
    }

    fn single_item(&mut self, directive: &'a Directive, example: &str) -> Option<&'a Expr> {
        let keyword = &directive.keyword;
        let named = directive.items.iter().any(|i| i.name.is_some());
        if directive.items.len() != 1
            || named
            || directive.block.is_some()
            || !directive.with.is_empty()
        {
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
        let value = self.value(expr);
        self.length_of(value, expr.span, &format!("the {what}"), allow_zero)
    }

    /// `value` as a length in steps: strictly positive (or zero with `allow_zero`).
    /// Anything else is reported at `span`, with `subject` ("the horizon", "`over`")
    /// as the sentence's subject; an already-reported value stays quiet.
    fn length_of(
        &mut self,
        value: Value,
        span: Span,
        subject: &str,
        allow_zero: bool,
    ) -> Option<f64> {
        match value {
            Value::Duration(steps) if steps > 0.0 || (allow_zero && steps == 0.0) => Some(steps),
            Value::Duration(steps) => {
                let rule = if allow_zero {
                    "zero or more"
                } else {
                    "greater than zero"
                };
                self.error(
                    Diagnostic::error(
                        span,
                        format!("{subject} must be {rule}, not {} steps", fmt_num(steps)),
                    )
                    .with_label("out of range"),
                );
                None
            }
            Value::Number(n) => {
                self.error(missing_unit_at(span, n, subject));
                None
            }
            Value::Symbol(name) => {
                self.unknown_name(&name, span);
                None
            }
            Value::Poison => None,
            other => {
                self.error(
                    Diagnostic::error(
                        span,
                        format!("{subject} must be a length, found {}", other.kind()),
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
        // The amount in steps, or what to say when the unit's size is unknown.
        let (steps, message, label, help) = match unit {
            Unit::Steps => return Some(amount),
            Unit::Epochs => (
                self.steps_per_epoch.map(|spe| amount * spe),
                "`epochs` used, but the epoch length is unknown",
                "needs the number of steps per epoch",
                "add `epoch = 390 steps` to the script, or pass `--steps-per-epoch`",
            ),
            Unit::Samples => (
                self.batch_size.map(|batch| amount / batch),
                "`samples` used, but the batch size is unknown",
                "needs the number of samples per step",
                "add `batch = 256` to the script, or pass `--batch-size`",
            ),
            Unit::Percent => (
                self.horizon.map(|h| amount / 100.0 * h),
                "`%` of the horizon used, but no horizon is set",
                "percent of what?",
                "add `horizon 90 epochs` (or steps) to the script",
            ),
        };
        if steps.is_none() {
            self.error(
                Diagnostic::error(span, message)
                    .with_label(label)
                    .with_help(help),
            );
        }
        steps
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
                // Where `then` may take over: when every operand has ended. An
                // unbounded constant never holds a hand-over back.
                let unbounded_constant = |s: &Sched| s.len.is_none() && self.is_const(s.node);
                let len = match (unbounded_constant(&a), unbounded_constant(&b)) {
                    (true, _) => b.len,
                    (_, true) => a.len,
                    (false, false) => a.len.zip(b.len).map(|(x, y)| x.max(y)),
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
                let (message, label) = if s.needs_len.is_some() {
                    (
                        "`then` follows a schedule without a length of its own",
                        "takes the rest of the run, so `then` is never reached",
                    )
                } else {
                    (
                        "`then` follows a schedule that never ends",
                        "runs forever, so `then` is never reached",
                    )
                };
                self.error(
                    Diagnostic::error(*part_span, message)
                        .with_label(label)
                        .with_help(
                        "give it a length with `over:`, e.g. `linear(0 -> 0.1, over: 10 steps)`",
                    ),
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

    fn check_ranges(&mut self) {
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
            let span = self
                .output_spans
                .iter()
                .find(|(n, _)| *n == output.name)
                .map(|(_, s)| *s)
                .unwrap_or_default();
            // A group's override (`group1.lr`) obeys the rule of its hyperparameter.
            let hyper = output
                .name
                .split_once('.')
                .map_or(output.name.as_str(), |(_, h)| h);
            let (low, high, high_open, rule) = match hyper {
                "momentum" | "dampening" => (0.0, 1.0, false, "between 0 and 1"),
                "beta1" | "beta2" => (0.0, 1.0, true, "in [0, 1)"),
                "clip_norm" => (f64::MIN_POSITIVE, f64::INFINITY, false, "greater than zero"),
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
}

fn duplicate(target: &Ident, first: Span) -> Diagnostic {
    Diagnostic::error(target.span, format!("`{}` is assigned twice", target.name))
        .with_label("assigned again here")
        .with_note(first, "first assigned here")
        .with_help("combine them into one expression, e.g. with `then`")
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
