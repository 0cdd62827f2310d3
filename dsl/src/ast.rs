//! The syntax tree of a script, with a span on every node so checks can point at
//! the exact culprit. Built by [`crate::parse`], read by the compiler and formatter.

use crate::diagnostic::Span;

/// A parsed script.
#[derive(Clone, Debug, PartialEq)]
pub struct Script {
    /// Top-level statements in order.
    pub stmts: Vec<Stmt>,
    /// Every `#` comment, in source order (kept for the formatter).
    pub comments: Vec<Comment>,
}

/// A `#` comment.
#[derive(Clone, Debug, PartialEq)]
pub struct Comment {
    /// Where it is.
    pub span: Span,
    /// Its text including the `#`, without trailing whitespace.
    pub text: String,
}

/// A name with its location.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    /// The name.
    pub name: String,
    /// Where it is.
    pub span: Span,
}

/// One statement.
#[derive(Clone, Debug, PartialEq)]
pub struct Stmt {
    /// What kind.
    pub kind: StmtKind,
    /// The whole statement.
    pub span: Span,
}

/// The three statement shapes.
#[derive(Clone, Debug, PartialEq)]
pub enum StmtKind {
    /// `let name = value`
    Let {
        /// The bound name.
        name: Ident,
        /// Its value.
        value: Expr,
    },
    /// `target op value`
    Assign {
        /// The assigned name.
        target: Ident,
        /// `=`, `*=`, …
        op: AssignOp,
        /// Where the operator is.
        op_span: Span,
        /// The value.
        value: Expr,
    },
    /// `keyword items… [with names] [{ block }]`
    Directive(Directive),
}

/// An assignment operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssignOp {
    /// `=`
    Set,
    /// `*=`
    Mul,
    /// `/=`
    Div,
    /// `+=`
    Add,
    /// `-=`
    Sub,
}

impl AssignOp {
    /// Source spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AssignOp::Set => "=",
            AssignOp::Mul => "*=",
            AssignOp::Div => "/=",
            AssignOp::Add => "+=",
            AssignOp::Sub => "-=",
        }
    }
}

/// A keyword statement such as `horizon 90 epochs` or `group "*.bias" { … }`.
#[derive(Clone, Debug, PartialEq)]
pub struct Directive {
    /// The leading word.
    pub keyword: Ident,
    /// The words after it.
    pub items: Vec<Item>,
    /// Names after `with`.
    pub with: Vec<Ident>,
    /// The `{ … }` part.
    pub block: Option<Block>,
}

/// One argument of a directive: `expr`, or `name: expr` (as in `clip norm: 1.0`).
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// `name:` if named.
    pub name: Option<Ident>,
    /// Its value.
    pub expr: Expr,
    /// Whether a comma separates it from the previous item.
    pub comma_before: bool,
}

/// `{ statements }`
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    /// The statements inside.
    pub stmts: Vec<Stmt>,
    /// From `{` to `}`.
    pub span: Span,
}

/// An expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    /// What kind.
    pub kind: ExprKind,
    /// The whole expression.
    pub span: Span,
}

/// Progress units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Optimizer steps.
    Steps,
    /// Passes over the data.
    Epochs,
    /// Training examples seen.
    Samples,
    /// Percent of the horizon.
    Percent,
}

impl Unit {
    /// Canonical spelling for `amount` (singular for exactly 1).
    pub fn spelling(self, singular: bool) -> &'static str {
        match (self, singular) {
            (Unit::Steps, true) => "step",
            (Unit::Steps, false) => "steps",
            (Unit::Epochs, true) => "epoch",
            (Unit::Epochs, false) => "epochs",
            (Unit::Samples, true) => "sample",
            (Unit::Samples, false) => "samples",
            (Unit::Percent, _) => "%",
        }
    }
}

/// Arithmetic operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `^`
    Pow,
}

impl BinOp {
    /// Source spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Pow => "^",
        }
    }
}

/// One call argument, positional or named.
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    /// `name:` if named.
    pub name: Option<Ident>,
    /// The value.
    pub value: Expr,
}

/// Expression kinds.
#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// A number literal with its source text (kept by the formatter).
    Number {
        /// The value (may be infinite if the literal overflows).
        value: f64,
        /// As written.
        text: String,
    },
    /// A string literal (escapes resolved).
    Str(String),
    /// A name.
    Ident(String),
    /// `value unit`, e.g. `30 steps`, `10%`.
    Quantity {
        /// The amount.
        value: Box<Expr>,
        /// The unit.
        unit: Unit,
        /// Where the unit is.
        unit_span: Span,
    },
    /// `[a, b, …]`
    List(Vec<Expr>),
    /// `name(args)`
    Call {
        /// Function name.
        name: Ident,
        /// Arguments in order.
        args: Vec<Arg>,
    },
    /// `-x`
    Neg(Box<Expr>),
    /// `lhs op rhs`
    Binary {
        /// Operator.
        op: BinOp,
        /// Left side.
        lhs: Box<Expr>,
        /// Right side.
        rhs: Box<Expr>,
    },
    /// `from -> to` or `from <-> to`
    Range {
        /// Start.
        from: Box<Expr>,
        /// End.
        to: Box<Expr>,
        /// `<->` (a cycle between two values) rather than `->`.
        both_ways: bool,
    },
    /// `a then b then c`
    Then(Vec<Expr>),
    /// `( inner )`
    Paren(Box<Expr>),
}
