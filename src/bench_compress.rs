//! `regimen bench-compress`: time every compression method (or the ones asked for) on a
//! deterministic fixture gradient and print, per method, compress and decompress time
//! and throughput (GB/s of f32 input), the ratio to a memory copy timed in the same
//! run, payload bytes, compression ratio and relative error. The measurement is
//! [`regimen_core::compress::bench`], shared with `cargo bench --bench compress`.

use std::io::Write;

use anyhow::Context;
use clap::Args;
use regimen_core::compress::bench::{
    self, default_methods, parse_methods, BenchOptions, MethodSpec, Outcome, DEFAULT_ELEMENTS,
    DEFAULT_REPEATS, DEFAULT_SEED, DEFAULT_WARMUP,
};

/// Options of `regimen bench-compress`.
#[derive(Debug, Args)]
pub struct BenchCompressArgs {
    /// Elements of the fixture gradient (f32): digits, `_` separators allowed, with an
    /// optional suffix `k`, `M`, `G` (10³, 10⁶, 10⁹) or `Ki`, `Mi`, `Gi` (2¹⁰, 2²⁰, 2³⁰).
    /// PowerSGD runs on the largest power-of-two square matrix that fits (4096×4096
    /// for 25M).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_ELEMENTS, value_parser = element_count)]
    pub elements: usize,
    /// Methods to run, comma-separated, written as in a script: `topk(ratio: 0.01),
    /// qsgd(levels: 4), sign` (arguments are named) [default: every built-in method].
    #[arg(long, value_name = "LIST", value_parser = method_list)]
    pub methods: Option<MethodList>,
    /// Timed runs per measurement; the median is reported.
    #[arg(long, value_name = "R", default_value_t = DEFAULT_REPEATS, value_parser = positive_count)]
    pub repeats: usize,
    /// Untimed runs before the timed ones (page faults, caches, thread start-up).
    #[arg(long, value_name = "W", default_value_t = DEFAULT_WARMUP)]
    pub warmup: usize,
    /// Seed of the fixture gradient and of the methods' randomness.
    #[arg(long, value_name = "S", default_value_t = DEFAULT_SEED)]
    pub seed: u64,
}

/// The methods of `--methods`, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct MethodList(pub Vec<MethodSpec>);

/// Run the benchmark and print its table. Methods that cannot run (not built in this
/// version, arguments refused, a failure) get a row that says why; when the user named
/// the methods, any such row also makes the command fail after printing.
pub fn run(args: &BenchCompressArgs) -> anyhow::Result<()> {
    run_to(args, &mut std::io::stdout().lock())
}

/// [`run`], printing the table to `out`.
fn run_to(args: &BenchCompressArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let methods = match &args.methods {
        Some(MethodList(methods)) => methods.clone(),
        None => default_methods(),
    };
    let options = BenchOptions {
        elements: args.elements,
        repeats: args.repeats,
        warmup: args.warmup,
        seed: args.seed,
        methods,
    };
    eprintln!(
        "benchmarking {} method(s) on {} f32 elements, {} timed run(s) each…",
        options.methods.len(),
        options.elements,
        options.repeats
    );
    let report = bench::run(&options)?;
    write_table(out, &report.to_string())?;
    let unavailable = report
        .rows
        .iter()
        .filter(|row| !matches!(row.outcome, Outcome::Measured(_)))
        .count();
    if args.methods.is_some() && unavailable > 0 {
        anyhow::bail!(
            "{unavailable} of the {} methods asked for could not be benchmarked (see above)",
            report.rows.len()
        );
    }
    Ok(())
}

/// Write the table; a closed pipe (`regimen bench-compress | head`) is not an error.
fn write_table(out: &mut dyn Write, text: &str) -> anyhow::Result<()> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(error).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

fn method_list(text: &str) -> Result<MethodList, String> {
    parse_methods(text)
        .map(MethodList)
        .map_err(|error| error.to_string())
}

fn positive_count(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(count) => Ok(count),
        Err(_) => Err(format!("`{text}` is not a whole number")),
    }
}

/// `25000000`, `25_000_000`, `25M`, `16Mi`, … (see `--elements`).
fn element_count(text: &str) -> Result<usize, String> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '_'))
        .unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(digits_end);
    let multiplier: u64 = match suffix {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => {
            return Err(format!(
                "unknown suffix `{other}`; use k, M, G (powers of 1000) or Ki, Mi, Gi \
                 (powers of 1024)"
            ))
        }
    };
    let digits = digits.replace('_', "");
    if digits.is_empty() {
        return Err(format!("`{text}` is not a number of elements"));
    }
    let count = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("`{text}` is too large"))?;
    if count == 0 {
        return Err("must be at least 1".to_owned());
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use regimen_core::plugin::ArgValue;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchCompressArgs,
    }

    fn parse(argv: &[&str]) -> Result<BenchCompressArgs, String> {
        Cli::try_parse_from(std::iter::once("bench-compress").chain(argv.iter().copied()))
            .map(|cli| cli.args)
            .map_err(|error| error.to_string())
    }

    #[test]
    fn defaults_are_the_issue_benchmark() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.elements, 25_000_000);
        assert_eq!(args.repeats, DEFAULT_REPEATS);
        assert_eq!(args.methods, None);
    }

    #[test]
    fn elements_take_separators_and_suffixes() {
        assert_eq!(element_count("25_000_000"), Ok(25_000_000));
        assert_eq!(element_count("25M"), Ok(25_000_000));
        // 16 · 2²⁰ = 16 777 216 = 4096².
        assert_eq!(element_count("16Mi"), Ok(16_777_216));
        assert_eq!(element_count("3k"), Ok(3_000));
        assert!(element_count("0").unwrap_err().contains("at least 1"));
        assert!(element_count("12x")
            .unwrap_err()
            .contains("unknown suffix `x`"));
        assert!(element_count("M").unwrap_err().contains("not a number"));
        assert!(element_count("99999999999999999999")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn methods_are_parsed_as_script_calls() {
        let args = parse(&[
            "--methods",
            "topk(ratio: 0.01), qsgd(levels: 4)",
            "--elements",
            "1M",
            "--repeats",
            "3",
        ])
        .unwrap();
        let MethodList(methods) = args.methods.unwrap();
        assert_eq!(
            methods,
            vec![
                MethodSpec::new("topk").with("ratio", ArgValue::Number(0.01)),
                MethodSpec::new("qsgd").with("levels", ArgValue::Number(4.0)),
            ]
        );
        assert_eq!(args.elements, 1_000_000);
        assert_eq!(args.repeats, 3);
    }

    #[test]
    fn bad_options_are_usage_errors_that_point_at_the_problem() {
        let error = parse(&["--methods", "topk(ratio 0.01)"]).unwrap_err();
        assert!(
            error.contains("expected `:` after the argument name `ratio`"),
            "{error}"
        );
        assert!(
            error.contains("\n  topk(ratio 0.01)\n             ^"),
            "{error}"
        );
        let error = parse(&["--methods", "topp"]).unwrap_err();
        assert!(error.contains("did you mean `topk`?"), "{error}");
        let error = parse(&["--repeats", "0"]).unwrap_err();
        assert!(error.contains("at least 1"), "{error}");
    }

    #[test]
    fn a_small_run_prints_the_table() {
        let args = parse(&[
            "--elements",
            "2000",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--methods",
            "none, int8",
        ])
        .unwrap();
        let mut out = Vec::new();
        run_to(&args, &mut out).unwrap();
        let table = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("compression benchmark: 2000 f32 elements"));
        assert!(lines[1].starts_with("memcpy baseline: "));
        assert!(lines[2].starts_with("method "));
        assert!(lines[2].ends_with("payload bytes  ratio  rel. error"));
        assert!(lines[3].starts_with("memcpy (baseline) "));
        // `none`: 16 + 4 header bytes + 4 · 2000 data bytes, ratio 8000 / 8020 ≈ 1.0,
        // decoded exactly.
        assert!(lines[4].starts_with("none "), "{table}");
        assert!(lines[4].ends_with(" 8020    1.0           0"), "{table}");
        assert!(lines[5].starts_with("int8 "), "{table}");
        assert_eq!(lines.len(), 6);

        let args = parse(&[
            "--elements",
            "100",
            "--repeats",
            "1",
            "--methods",
            "int8(bad: 1)",
        ])
        .unwrap();
        let mut out = Vec::new();
        let error = run_to(&args, &mut out).unwrap_err().to_string();
        assert!(error.contains("1 of the 1 methods"), "{error}");
        let table = String::from_utf8(out).unwrap();
        assert!(table.contains("int8(bad: 1): not available: `int8`: argument `bad`"));
    }
}
