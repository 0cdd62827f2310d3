//! Parser output pinned as snapshots: the tree of a script that uses every
//! statement shape and expression form, printed as compact S-expressions with
//! the line:col of each statement (so spans are checked too).

use regimen_dsl::ast::{Expr, ExprKind, Script, Stmt, StmtKind};
use regimen_dsl::{parse::parse, SourceFile};

fn expr(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Number { text, .. } => text.clone(),
        ExprKind::Str(s) => format!("{s:?}"),
        ExprKind::Ident(n) => n.clone(),
        ExprKind::Quantity { value, unit, .. } => format!("(qty {} {unit:?})", expr(value)),
        ExprKind::List(items) => format!(
            "(list {})",
            items.iter().map(expr).collect::<Vec<_>>().join(" ")
        ),
        ExprKind::Call { name, args } => {
            let args: Vec<String> = args
                .iter()
                .map(|a| match &a.name {
                    Some(n) => format!("{}={}", n.name, expr(&a.value)),
                    None => expr(&a.value),
                })
                .collect();
            format!("(call {} {})", name.name, args.join(" "))
        }
        ExprKind::Neg(inner) => format!("(neg {})", expr(inner)),
        ExprKind::Binary { op, lhs, rhs } => {
            format!("({} {} {})", op.as_str(), expr(lhs), expr(rhs))
        }
        ExprKind::Range {
            from,
            to,
            both_ways,
        } => {
            format!(
                "({} {} {})",
                if *both_ways { "<->" } else { "->" },
                expr(from),
                expr(to)
            )
        }
        ExprKind::Then(parts) => format!(
            "(then {})",
            parts.iter().map(expr).collect::<Vec<_>>().join(" ")
        ),
        ExprKind::Paren(inner) => format!("(paren {})", expr(inner)),
    }
}

fn stmt(s: &Stmt, file: &SourceFile, depth: usize, out: &mut String) {
    let (line, col) = file.line_col(s.span.start);
    let pad = "  ".repeat(depth);
    let text = match &s.kind {
        StmtKind::Let { name, value } => format!("let {} {}", name.name, expr(value)),
        StmtKind::Assign {
            target, op, value, ..
        } => format!("assign {} {} {}", target.name, op.as_str(), expr(value)),
        StmtKind::Directive(d) => {
            let items: Vec<String> = d
                .items
                .iter()
                .map(|i| match &i.name {
                    Some(n) => format!("{}={}", n.name, expr(&i.expr)),
                    None => expr(&i.expr),
                })
                .collect();
            let with: Vec<&str> = d.with.iter().map(|w| w.name.as_str()).collect();
            format!(
                "directive {} [{}] with [{}]",
                d.keyword.name,
                items.join(", "),
                with.join(", ")
            )
        }
    };
    out.push_str(&format!("{pad}{line}:{col} {text}\n"));
    if let StmtKind::Directive(d) = &s.kind {
        if let Some(block) = &d.block {
            for inner in &block.stmts {
                stmt(inner, file, depth + 1, out);
            }
        }
    }
}

fn dump(text: &str) -> String {
    let file = SourceFile::new("t.regimen", text);
    let script: Script = parse(text).unwrap_or_else(|d| panic!("{d:?}"));
    let mut out = String::new();
    for s in &script.stmts {
        stmt(s, &file, 0, &mut out);
    }
    for c in &script.comments {
        let (line, col) = file.line_col(c.span.start);
        out.push_str(&format!("comment {line}:{col} {}\n", c.text));
    }
    out
}

#[test]
fn the_design_sketch_parses_into_the_expected_tree() {
    let text = r#"# every hyperparameter can be a schedule of training progress
horizon 90 epochs
let peak = 0.1

lr = linear(0 -> peak, 5 epochs) then cosine(peak -> 0)     # `then` sequences
momentum = 0.9
optimizer sgd(momentum: momentum, nesterov: true, weight_decay: 5e-4)

group "embed.*"  { lr *= 0.1 }
group "*.bias", "*norm*" { weight_decay = 0 }
layerwise lars(trust: 0.001)

precision f16 { loss_scale dynamic(init: 65536, growth: 2, backoff: 0.5, every: 2000 steps) }
compress topk(ratio: exponential(0.25 -> 0.001, 4 epochs)) with error_feedback
group "*.bias" { compress none }

batch gns(min: 32, max: 4096, every: 100 steps) { lr scale sqrt }
on plateau(val_loss, patience: 3, cooldown: 1) { lr *= 0.5 }
at 30 epochs { compress powersgd(rank: 4) }
plugin "libs/libthing.so" sha256 "abc"
"#;
    insta::assert_snapshot!(dump(text));
}

#[test]
fn expressions_respect_precedence_and_associativity() {
    let text = "let a = 1 + 2 * 3 - 4 / 5\nlet b = -2^2^-1\nlet c = (1 + 2) * 3 steps\nlet d = 2^16\nlet e = 10%\nlet f = [1 step, 2 epochs, 3 samples]\nlet g = a -> b\nlet h = a <-> b\nlet i = x then y then\n  z\nlet j = f(\n  1,\n  k: 2,\n)\n";
    insta::assert_snapshot!(dump(text));
}

#[test]
fn directive_items_may_be_named() {
    assert_eq!(
        dump("clip norm: 1.0\nlayer_decay 0.75, \"layers.{depth}.*\"\nprecision f16 { loss_scale none }\n"),
        "1:1 directive clip [norm=1.0] with []\n\
         2:1 directive layer_decay [0.75, \"layers.{depth}.*\"] with []\n\
         3:1 directive precision [f16] with []\n  \
         3:17 directive loss_scale [none] with []\n"
    );
}
