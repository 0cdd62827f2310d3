//! The compression benchmark shared by `cargo bench -p regimen-core --bench compress`
//! and `regimen bench-compress`: for each method, the time to compress and to decompress
//! a deterministic fixture gradient, as GB/s of f32 input and as a ratio to a memory
//! copy of the same data timed in the same run, with the payload size, the compression
//! ratio and the relative error.
//!
//! # What is measured
//!
//! - **Fixture**: `n` approximately normal values (Irwin–Hall, [`SplitMix64::normal`]) of
//!   standard deviation [`FIXTURE_STD`], generated in fixed chunks keyed by
//!   (seed, chunk), so the data does not depend on the thread count. Methods see the
//!   tensor as a vector of shape `[n]`, except PowerSGD, which needs a matrix: it gets
//!   the first `s²` values as an `s × s` matrix, `s` the largest power of two with
//!   `s² ≤ n` ([`matrix_side`]: 4096 × 4096 for the default 25M elements, the shape of
//!   the project's performance anchor). A random matrix is PowerSGD's worst case (no
//!   low-rank structure), so its error is close to 1: the row is about time.
//! - **Compress**: `compress` into a reused payload buffer; for summable methods, also
//!   every [`Compressor::next_round`] of the single-worker protocol (a single worker's
//!   reduced payload is its own), so a multi-round method such as PowerSGD is timed
//!   over all its rounds (P = MQ, orthogonalisation, Q = MᵀP).
//! - **Decompress**: `decompress_add(final payload, 1, out)` into a buffer zeroed
//!   (untimed) before each run — what a worker does with a reduced or gathered payload.
//! - **Rates**: GB/s of f32 input = `4·n / time`, the same unit for every column, and
//!   `× memcpy` = compress rate / memcpy rate, where the memcpy baseline copies the
//!   same `n` f32 into a preallocated buffer (`4·n / time` too, so the ratio is a ratio
//!   of times). The baseline is the fastest of a one-thread `copy_from_slice` and a
//!   rayon-parallel chunked copy, each timed before and after the methods (the machine
//!   is shared: the faster measurement is kept so a quiet spell cannot flatter a
//!   method).
//! - **Payload bytes**: every payload the worker produced, headers included, summed
//!   over rounds; **ratio** = `4·n / payload bytes`.
//! - **Relative error**: `‖g − ĝ‖ / ‖g‖` of the last decompression (for stateful
//!   methods — warm-started PowerSGD, DGC's accumulation — after the timed runs).
//!
//! Each time is the median of `repeats` runs after `warmup` untimed runs. Methods whose
//! compressor cannot be built (not implemented yet, or arguments refused) are reported
//! as "not available" rows, and methods that fail while running as "failed" rows: the
//! benchmark never stops for one method.
//!
//! Methods are written as in a script: `topk(ratio: 0.01, approx: sample)`;
//! [`parse_methods`] reads a comma-separated list of them.

use std::fmt;
use std::hint::black_box;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use regimen_plugin::{ArgValue, Args};
use thiserror::Error;

use super::BUILTIN_METHODS;
use super::{build, Aggregation, CompressError, Compressor, Round, StepContext, TensorView};
use crate::problem::SplitMix64;

/// Elements of the default benchmark (the 25M f32, 100 MB).
pub const DEFAULT_ELEMENTS: usize = 25_000_000;
/// Timed runs per measurement by default; the median is reported.
pub const DEFAULT_REPEATS: usize = 11;
/// Untimed runs before the timed ones by default (page faults, caches, rayon threads).
pub const DEFAULT_WARMUP: usize = 2;
/// Seed of the fixture gradient and of the methods' randomness by default.
pub const DEFAULT_SEED: u64 = 1;
/// Standard deviation of the fixture gradient's values.
pub const FIXTURE_STD: f64 = 0.01;
/// The `threshold` of the default list: ≈ 2.58 σ of the fixture, so about 1% of the
/// values pass (the two-sided 1% quantile of a normal is 2.576 σ).
pub const DEFAULT_THRESHOLD: f64 = 0.0258;
/// Most rounds a multi-round method may ask for before it is reported as failed.
pub const MAX_ROUNDS: usize = 64;

/// Elements per fixture chunk (each chunk has its own keyed generator).
const FIXTURE_CHUNK: usize = 1 << 16;
/// The fixture's random stream key.
const FIXTURE_STREAM: u64 = 0xB0C4;
/// Elements per chunk of the parallel copy baseline.
const COPY_CHUNK: usize = 1 << 16;
/// Bytes of one f32.
const F32_BYTES: usize = 4;
/// Methods that take a matrix (see [`matrix_side`]).
const MATRIX_METHODS: &[&str] = &["powersgd"];

/// The median of `timed` durations returned by `measure`, after `warmup` calls whose
/// durations are discarded. `measure` times what it wants (so it can prepare each run
/// untimed); at least one run is timed.
pub fn median_duration<E>(
    warmup: usize,
    timed: usize,
    mut measure: impl FnMut() -> Result<Duration, E>,
) -> Result<Duration, E> {
    for _ in 0..warmup {
        measure()?;
    }
    let mut times = Vec::with_capacity(timed.max(1));
    for _ in 0..timed.max(1) {
        times.push(measure()?);
    }
    times.sort_unstable();
    Ok(times[times.len() / 2])
}

/// The median wall time of `timed` runs of `run`, after `warmup` untimed runs.
pub fn median_time<E>(
    warmup: usize,
    timed: usize,
    mut run: impl FnMut() -> Result<(), E>,
) -> Result<Duration, E> {
    median_duration(warmup, timed, || {
        let start = Instant::now();
        run()?;
        Ok(start.elapsed())
    })
}

/// The benchmark's gradient: `elements` approximately normal values of standard
/// deviation [`FIXTURE_STD`], a pure function of (`elements`, `seed`).
pub fn fixture_gradient(elements: usize, seed: u64) -> Vec<f32> {
    let mut values = vec![0.0f32; elements];
    values
        .par_chunks_mut(FIXTURE_CHUNK)
        .enumerate()
        .for_each(|(chunk, values)| {
            let mut rng = SplitMix64::keyed(seed, FIXTURE_STREAM, chunk as u64);
            for value in values {
                *value = (rng.normal() * FIXTURE_STD) as f32;
            }
        });
    values
}

/// Side of the square matrix a matrix method (PowerSGD) runs on for `elements`: the
/// largest power of two `s` with `s² ≤ elements` (0 for no elements).
pub fn matrix_side(elements: usize) -> usize {
    if elements == 0 {
        return 0;
    }
    let mut side = 1usize;
    while side
        .checked_mul(2)
        .and_then(|s| s.checked_mul(s))
        .is_some_and(|square| square <= elements)
    {
        side *= 2;
    }
    side
}

/// A method as a script writes it: a name and named arguments, in the order given.
#[derive(Clone, Debug, PartialEq)]
pub struct MethodSpec {
    /// The method's script name (`topk`).
    pub name: String,
    /// Its arguments, in the order written.
    pub arguments: Vec<(String, ArgValue)>,
}

impl MethodSpec {
    /// `name` with no arguments.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            arguments: Vec::new(),
        }
    }

    /// Add the argument `name: value`.
    pub fn with(mut self, name: impl Into<String>, value: ArgValue) -> Self {
        self.arguments.push((name.into(), value));
        self
    }

    /// The arguments as the registry takes them.
    pub fn args(&self) -> Args {
        self.arguments
            .iter()
            .fold(Args::new(), |args, (name, value)| {
                args.with(name.clone(), value.clone())
            })
    }
}

impl fmt::Display for MethodSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if self.arguments.is_empty() {
            return Ok(());
        }
        f.write_str("(")?;
        for (index, (name, value)) in self.arguments.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name}: ")?;
            match value {
                ArgValue::Text(text) if is_identifier(text) && !is_keyword(text) => {
                    f.write_str(text)?
                }
                other => write!(f, "{other}")?,
            }
        }
        f.write_str(")")
    }
}

/// The methods benchmarked when none are given: every built-in method, with the
/// settings the performance targets name.
pub fn default_methods() -> Vec<MethodSpec> {
    let number = ArgValue::Number;
    vec![
        MethodSpec::new("none"),
        MethodSpec::new("fp16"),
        MethodSpec::new("bf16"),
        MethodSpec::new("int8"),
        MethodSpec::new("topk").with("ratio", number(0.01)),
        MethodSpec::new("topk")
            .with("ratio", number(0.01))
            .with("approx", ArgValue::Text("sample".into())),
        MethodSpec::new("randomk").with("ratio", number(0.01)),
        MethodSpec::new("threshold").with("value", number(DEFAULT_THRESHOLD)),
        MethodSpec::new("dgc").with("ratio", number(0.001)),
        MethodSpec::new("qsgd").with("levels", number(8.0)),
        MethodSpec::new("terngrad"),
        MethodSpec::new("sign"),
        MethodSpec::new("onebit"),
        // `start: 0`: PyTorch's default (and this method's) sends the first 10 steps
        // uncompressed; the benchmark times the compressed protocol.
        MethodSpec::new("powersgd")
            .with("rank", number(4.0))
            .with("start", number(0.0)),
    ]
}

/// A method list that could not be read, with where.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{message} (at character {})\n  {text}\n  {caret}^", column + 1, caret = " ".repeat(*column))]
pub struct SpecError {
    /// The list as given.
    pub text: String,
    /// Character (not byte) offset of the problem in `text`.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// Read a comma-separated list of method calls — `topk(ratio: 0.01), qsgd(levels: 4),
/// sign` — as a script writes them: a method name, optionally followed by named
/// arguments in parentheses; values are numbers (`0.01`, `1e-3`, `-2`), `true`/`false`,
/// bare words (`sample`) or quoted strings. Unknown method names are refused here
/// (with a suggestion); each method checks its own arguments when it is built.
pub fn parse_methods(text: &str) -> Result<Vec<MethodSpec>, SpecError> {
    let mut parser = SpecParser { text, position: 0 };
    parser.skip_spaces();
    if parser.peek().is_none() {
        return Err(parser.error_at(0, "no methods given".into()));
    }
    let mut methods = Vec::new();
    loop {
        parser.skip_spaces();
        methods.push(parser.method()?);
        parser.skip_spaces();
        match parser.peek() {
            None => break,
            Some(',') => {
                parser.bump();
                parser.skip_spaces();
                // A trailing comma ends the list.
                if parser.peek().is_none() {
                    break;
                }
            }
            Some(other) => {
                return Err(parser.error(format!(
                    "expected `,` between methods or the end of the list, found `{other}`"
                )))
            }
        }
    }
    Ok(methods)
}

/// Recursive descent over the method list; `position` is a byte offset.
struct SpecParser<'a> {
    text: &'a str,
    position: usize,
}

impl SpecParser<'_> {
    fn peek(&self) -> Option<char> {
        self.text.get(self.position..)?.chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.position += c.len_utf8();
        Some(c)
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn error(&self, message: String) -> SpecError {
        self.error_at(self.position, message)
    }

    fn error_at(&self, byte: usize, message: String) -> SpecError {
        let column = self
            .text
            .get(..byte)
            .map_or(0, |before| before.chars().count());
        SpecError {
            text: self.text.to_owned(),
            column,
            message,
        }
    }

    fn describe_next(&self) -> String {
        match self.peek() {
            Some(c) => format!("`{c}`"),
            None => "the end of the list".to_owned(),
        }
    }

    fn identifier(&mut self) -> Option<String> {
        let start = self.position;
        if !self
            .peek()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        {
            return None;
        }
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            self.bump();
        }
        self.text.get(start..self.position).map(str::to_owned)
    }

    fn method(&mut self) -> Result<MethodSpec, SpecError> {
        let start = self.position;
        let Some(name) = self.identifier() else {
            return Err(self.error(format!(
                "expected a method name, found {}",
                self.describe_next()
            )));
        };
        if !BUILTIN_METHODS.contains(&name.as_str()) {
            let mut message = format!("unknown compression method `{name}`");
            match suggestion(&name, BUILTIN_METHODS) {
                Some(close) => message.push_str(&format!("; did you mean `{close}`?")),
                None => message.push_str(&format!(
                    "; the methods are: {}",
                    BUILTIN_METHODS.join(", ")
                )),
            }
            return Err(self.error_at(start, message));
        }
        let mut spec = MethodSpec::new(name);
        self.skip_spaces();
        if self.peek() != Some('(') {
            return Ok(spec);
        }
        let open = self.position;
        self.bump();
        loop {
            self.skip_spaces();
            if self.peek() == Some(')') {
                self.bump();
                return Ok(spec);
            }
            let argument_start = self.position;
            let Some(argument) = self.identifier() else {
                if self.peek().is_none() {
                    return Err(self.unclosed(open, &spec.name));
                }
                return Err(self.error(format!(
                    "expected an argument name, found {}; arguments are named: \
                     `{}(name: value)`",
                    self.describe_next(),
                    spec.name
                )));
            };
            self.skip_spaces();
            if self.peek() != Some(':') {
                return Err(self.error(format!(
                    "expected `:` after the argument name `{argument}`, found {}; \
                     arguments are named: `{}({argument}: value)`",
                    self.describe_next(),
                    spec.name
                )));
            }
            self.bump();
            self.skip_spaces();
            let value = self.value(&argument)?;
            if spec.arguments.iter().any(|(name, _)| *name == argument) {
                return Err(
                    self.error_at(argument_start, format!("argument `{argument}` given twice"))
                );
            }
            spec.arguments.push((argument, value));
            self.skip_spaces();
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some(')') => {}
                None => return Err(self.unclosed(open, &spec.name)),
                Some(other) => {
                    return Err(self.error(format!(
                        "expected `,` or `)` after an argument, found `{other}`"
                    )))
                }
            }
        }
    }

    fn unclosed(&self, open: usize, method: &str) -> SpecError {
        self.error_at(open, format!("`(` of `{method}` is never closed"))
    }

    fn value(&mut self, argument: &str) -> Result<ArgValue, SpecError> {
        let start = self.position;
        match self.peek() {
            Some(quote @ ('"' | '\'')) => {
                self.bump();
                let content = self.position;
                while let Some(c) = self.peek() {
                    if c == quote {
                        let text = self.text.get(content..self.position).unwrap_or_default();
                        let text = text.to_owned();
                        self.bump();
                        return Ok(ArgValue::Text(text));
                    }
                    self.bump();
                }
                Err(self.error_at(start, "this string is never closed".into()))
            }
            Some(c) if c.is_ascii_digit() || matches!(c, '+' | '-' | '.') => {
                let mut previous = None;
                while let Some(c) = self.peek() {
                    let sign_allowed = previous.is_none() || matches!(previous, Some('e' | 'E'));
                    if c.is_ascii_alphanumeric()
                        || matches!(c, '.' | '_')
                        || (matches!(c, '+' | '-') && sign_allowed)
                    {
                        previous = Some(c);
                        self.bump();
                    } else {
                        break;
                    }
                }
                let written = self.text.get(start..self.position).unwrap_or_default();
                match written.replace('_', "").parse::<f64>() {
                    Ok(number) if number.is_finite() => Ok(ArgValue::Number(number)),
                    _ => Err(self.error_at(
                        start,
                        format!("`{written}` is not a number (argument `{argument}`)"),
                    )),
                }
            }
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let word = self.identifier().unwrap_or_default();
                Ok(match word.as_str() {
                    "true" => ArgValue::Bool(true),
                    "false" => ArgValue::Bool(false),
                    _ => ArgValue::Text(word),
                })
            }
            _ => Err(self.error(format!(
                "expected a value for `{argument}` (a number, `true`/`false`, a word or a \
                 quoted string), found {}",
                self.describe_next()
            ))),
        }
    }
}

fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_keyword(text: &str) -> bool {
    matches!(text, "true" | "false")
}

/// The candidate closest to `name` by edit distance, if it is close enough to be a
/// typo (at most 2 edits, and fewer than the name's length).
fn suggestion<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|&candidate| (edit_distance(name, candidate), candidate))
        .filter(|&(distance, _)| distance <= 2 && distance < name.chars().count())
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// What to benchmark.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchOptions {
    /// Elements of the fixture gradient.
    pub elements: usize,
    /// Timed runs per measurement (the median is reported).
    pub repeats: usize,
    /// Untimed runs before them.
    pub warmup: usize,
    /// Seed of the fixture and of the methods' step context.
    pub seed: u64,
    /// The methods, in report order.
    pub methods: Vec<MethodSpec>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            elements: DEFAULT_ELEMENTS,
            repeats: DEFAULT_REPEATS,
            warmup: DEFAULT_WARMUP,
            seed: DEFAULT_SEED,
            methods: default_methods(),
        }
    }
}

/// Options the benchmark cannot run with.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum BenchError {
    /// No elements to compress.
    #[error("the benchmark needs at least one element")]
    NoElements,
    /// No timed run.
    #[error("the benchmark needs at least one timed repetition")]
    NoRepeats,
    /// More elements than a buffer can hold.
    #[error("{0} f32 elements do not fit in one buffer on this machine")]
    TooLarge(usize),
}

/// One memory-copy measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct Baseline {
    /// Which copy (`one-thread copy`: `copy_from_slice`; `rayon chunked copy`).
    pub name: &'static str,
    /// Its median time (the faster of the measurements before and after the methods).
    pub time: Duration,
}

/// The matrix-multiply baseline of a low-rank method: the same three products
/// (P = M·Q, Q = Mᵀ·P, M̂ = P·Qᵀ) on the same shapes through ndarray's general
/// `sgemm` (the `matrixmultiply` crate, the best GEMM safe code in this crate can
/// call), timed in the same run.
#[derive(Clone, Debug, PartialEq)]
pub struct MatmulBaseline {
    /// Rows of M.
    pub rows: usize,
    /// Columns of M.
    pub cols: usize,
    /// The rank r.
    pub rank: usize,
    /// Median time of the three products.
    pub time: Duration,
}

impl MatmulBaseline {
    /// Floating-point operations of the three products (6·n·m·r).
    pub fn flops(&self) -> f64 {
        super::powersgd::kernels::step_flops(self.rows, self.cols, self.rank)
    }

    /// GFLOP/s of the baseline.
    pub fn gigaflops(&self) -> f64 {
        self.flops() / self.time.as_secs_f64().max(f64::MIN_POSITIVE) / 1e9
    }
}

/// A method's timings and sizes.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    /// Median time of compress (plus every further round of a multi-round method).
    pub compress: Duration,
    /// Median time of decompress_add of the final payload.
    pub decompress: Duration,
    /// Rounds of exchange (1 except for multi-round methods).
    pub rounds: usize,
    /// Bytes of every payload, headers included, over all rounds.
    pub payload_bytes: usize,
    /// ‖g − ĝ‖ / ‖g‖ of the last decompression.
    pub relative_error: f64,
    /// For matrix methods (PowerSGD): the GEMM baseline of the same shapes.
    pub matmul: Option<MatmulBaseline>,
}

/// How a method's benchmark ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// It ran.
    Measured(Measurement),
    /// Its compressor could not be built (why).
    NotAvailable(String),
    /// It failed while running (why).
    Failed(String),
}

/// One method's row of the report.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchRow {
    /// The method as written (`topk(ratio: 0.01)`).
    pub method: MethodSpec,
    /// The tensor shape it ran on.
    pub shape: Vec<usize>,
    /// What happened.
    pub outcome: Outcome,
}

impl BenchRow {
    /// Elements of the tensor the method ran on.
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// The measurement, if the method ran.
    pub fn measurement(&self) -> Option<&Measurement> {
        match &self.outcome {
            Outcome::Measured(measurement) => Some(measurement),
            _ => None,
        }
    }

    /// Compress rate in GB/s of f32 input.
    pub fn compress_gigabytes_per_second(&self) -> Option<f64> {
        self.measurement()
            .map(|m| gigabytes_per_second(self.elements(), m.compress))
    }

    /// Decompress rate in GB/s of f32 input (of the dense tensor produced).
    pub fn decompress_gigabytes_per_second(&self) -> Option<f64> {
        self.measurement()
            .map(|m| gigabytes_per_second(self.elements(), m.decompress))
    }

    /// Dense bytes (4 per element) over payload bytes.
    pub fn compression_ratio(&self) -> Option<f64> {
        self.measurement()
            .map(|m| (F32_BYTES * self.elements()) as f64 / m.payload_bytes.max(1) as f64)
    }
}

/// The whole run: the baseline and one row per method.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchReport {
    /// Elements of the fixture gradient.
    pub elements: usize,
    /// Timed runs per measurement.
    pub repeats: usize,
    /// Untimed runs before them.
    pub warmup: usize,
    /// The fixture's seed.
    pub seed: u64,
    /// Threads of the rayon pool the methods ran on.
    pub threads: usize,
    /// The copies measured (see [`BenchReport::memcpy`]).
    pub baselines: Vec<Baseline>,
    /// One row per method, in the order asked.
    pub rows: Vec<BenchRow>,
}

impl BenchReport {
    /// The memcpy baseline: the fastest copy measured.
    pub fn memcpy(&self) -> Duration {
        self.baselines
            .iter()
            .map(|baseline| baseline.time)
            .min()
            .unwrap_or_default()
    }

    /// The baseline's rate in GB/s of f32 input (half the bytes a copy moves).
    pub fn memcpy_gigabytes_per_second(&self) -> f64 {
        gigabytes_per_second(self.elements, self.memcpy())
    }

    /// A row's compress rate over the memcpy rate.
    pub fn compress_vs_memcpy(&self, row: &BenchRow) -> Option<f64> {
        let baseline = self.memcpy_gigabytes_per_second();
        row.compress_gigabytes_per_second()
            .filter(|_| baseline > 0.0)
            .map(|rate| rate / baseline)
    }
}

fn gigabytes_per_second(elements: usize, time: Duration) -> f64 {
    let seconds = time.as_secs_f64();
    if seconds > 0.0 {
        (F32_BYTES * elements) as f64 / seconds / 1e9
    } else {
        f64::INFINITY
    }
}

/// Run the benchmark (see the module doc).
pub fn run(options: &BenchOptions) -> Result<BenchReport, BenchError> {
    if options.elements == 0 {
        return Err(BenchError::NoElements);
    }
    if options.repeats == 0 {
        return Err(BenchError::NoRepeats);
    }
    if options.elements > isize::MAX as usize / F32_BYTES {
        return Err(BenchError::TooLarge(options.elements));
    }
    let gradient = fixture_gradient(options.elements, options.seed);
    let mut copy = vec![0.0f32; options.elements];
    let mut baselines = measure_copies(options, &gradient, &mut copy);
    drop(copy);

    let mut decoded = vec![0.0f32; options.elements];
    let mut rows = Vec::with_capacity(options.methods.len());
    for method in &options.methods {
        let shape = if MATRIX_METHODS.contains(&method.name.as_str()) {
            let side = matrix_side(options.elements);
            vec![side, side]
        } else {
            vec![options.elements]
        };
        let elements = shape.iter().product::<usize>();
        let input = TensorView {
            name: "fixture",
            shape: &shape,
            data: gradient.get(..elements).unwrap_or_default(),
        };
        let out = decoded.get_mut(..elements).unwrap_or_default();
        let outcome = match build(&method.name, &method.args()) {
            Err(error) => Outcome::NotAvailable(error.to_string()),
            Ok(mut compressor) => match measure(options, compressor.as_mut(), input, out) {
                Ok(mut measurement) => {
                    if MATRIX_METHODS.contains(&method.name.as_str()) {
                        let rank = method.args().number("rank", Some(1.0)).unwrap_or(1.0);
                        measurement.matmul =
                            measure_matmul(options, input.data, shape[0], shape[1], rank as usize);
                    }
                    Outcome::Measured(measurement)
                }
                Err(error) => Outcome::Failed(error.to_string()),
            },
        };
        rows.push(BenchRow {
            method: method.clone(),
            shape,
            outcome,
        });
    }
    drop(decoded);

    let mut copy = vec![0.0f32; options.elements];
    for (baseline, again) in baselines
        .iter_mut()
        .zip(measure_copies(options, &gradient, &mut copy))
    {
        baseline.time = baseline.time.min(again.time);
    }
    Ok(BenchReport {
        elements: options.elements,
        repeats: options.repeats,
        warmup: options.warmup,
        seed: options.seed,
        threads: rayon::current_num_threads(),
        baselines,
        rows,
    })
}

fn measure_copies(options: &BenchOptions, source: &[f32], target: &mut [f32]) -> Vec<Baseline> {
    let (warmup, repeats) = (options.warmup, options.repeats);
    let serial = median_time::<()>(warmup, repeats, || {
        target.copy_from_slice(source);
        black_box(&mut *target);
        Ok(())
    })
    .unwrap_or_default();
    let parallel = median_time::<()>(warmup, repeats, || {
        target
            .par_chunks_mut(COPY_CHUNK)
            .zip(source.par_chunks(COPY_CHUNK))
            .for_each(|(to, from)| to.copy_from_slice(from));
        black_box(&mut *target);
        Ok(())
    })
    .unwrap_or_default();
    vec![
        Baseline {
            name: "one-thread copy",
            time: serial,
        },
        Baseline {
            name: "rayon chunked copy",
            time: parallel,
        },
    ]
}

/// Compress (all rounds) into `payload`; returns (bytes over all rounds, rounds).
fn encode(
    compressor: &mut dyn Compressor,
    input: TensorView<'_>,
    ctx: &StepContext<'_>,
    payload: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<(usize, usize), CompressError> {
    payload.clear();
    compressor.compress(input, ctx, payload)?;
    let (mut bytes, mut rounds) = (payload.len(), 1);
    if let Aggregation::Sum(_) = compressor.aggregation() {
        // One worker: the reduced payload is the worker's own.
        loop {
            scratch.clear();
            match compressor.next_round(payload, ctx, scratch)? {
                Round::Done => break,
                Round::More => {
                    rounds += 1;
                    if rounds > MAX_ROUNDS {
                        return Err(CompressError::Failed(format!(
                            "asked for more than {MAX_ROUNDS} rounds"
                        )));
                    }
                    bytes += scratch.len();
                    std::mem::swap(payload, scratch);
                }
            }
        }
    }
    Ok((bytes, rounds))
}

fn measure(
    options: &BenchOptions,
    compressor: &mut dyn Compressor,
    input: TensorView<'_>,
    out: &mut [f32],
) -> Result<Measurement, CompressError> {
    let ctx = StepContext {
        step: 0,
        rank: 0,
        world: 1,
        seed: options.seed,
        tensor: 0,
        scheduled: &[],
    };
    let (mut payload, mut scratch) = (Vec::new(), Vec::new());
    let mut sizes = (0, 0);
    let compress = median_time(options.warmup, options.repeats, || {
        sizes = encode(compressor, input, &ctx, &mut payload, &mut scratch)?;
        black_box(&payload);
        Ok::<(), CompressError>(())
    })?;
    let (payload_bytes, rounds) = sizes;
    let decompress = median_duration(options.warmup, options.repeats, || {
        out.fill(0.0);
        let start = Instant::now();
        compressor.decompress_add(&payload, 1.0, out)?;
        let time = start.elapsed();
        black_box(&mut *out);
        Ok::<Duration, CompressError>(time)
    })?;
    Ok(Measurement {
        compress,
        decompress,
        rounds,
        payload_bytes,
        relative_error: relative_error(input.data, out),
        matmul: None,
    })
}

/// Time ndarray's GEMM on PowerSGD's three products for an n×m matrix at rank r.
fn measure_matmul(
    options: &BenchOptions,
    matrix: &[f32],
    rows: usize,
    cols: usize,
    rank: usize,
) -> Option<MatmulBaseline> {
    use super::powersgd::kernels::reference_products;
    let q: Vec<f32> = fixture_gradient(cols * rank, options.seed ^ 0x51);
    let mut p = vec![0.0f32; rows * rank];
    let mut q_out = vec![0.0f32; cols * rank];
    let mut out = vec![0.0f32; rows * cols];
    let time = median_time::<()>(options.warmup, options.repeats, || {
        let fits = reference_products(matrix, rows, cols, &q, rank, &mut p, &mut q_out, &mut out);
        black_box(&mut out);
        if fits {
            Ok(())
        } else {
            Err(())
        }
    })
    .ok()?;
    Some(MatmulBaseline {
        rows,
        cols,
        rank,
        time,
    })
}

/// ‖g − ĝ‖ / ‖g‖ in f64 (‖ĝ‖ itself when g is zero).
fn relative_error(original: &[f32], decoded: &[f32]) -> f64 {
    let (error, norm) = original
        .par_chunks(FIXTURE_CHUNK)
        .zip(decoded.par_chunks(FIXTURE_CHUNK))
        .map(|(g, d)| {
            g.iter().zip(d).fold((0.0f64, 0.0f64), |(e, n), (&g, &d)| {
                let (g, d) = (f64::from(g), f64::from(d));
                (e + (g - d) * (g - d), n + g * g)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold((0.0, 0.0), |(e, n), (ce, cn)| (e + ce, n + cn));
    if norm > 0.0 {
        (error / norm).sqrt()
    } else {
        error.sqrt()
    }
}

impl fmt::Display for BenchReport {
    /// The aligned table: a header line, the memcpy baseline, one row per method.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = F32_BYTES * self.elements;
        let size = if bytes >= 1_000_000 {
            format!("{:.1} MB", bytes as f64 / 1e6)
        } else {
            format!("{bytes} bytes")
        };
        writeln!(
            f,
            "compression benchmark: {} f32 elements ({size}), seed {}, median of {} \
             runs after {} warm-up, {} rayon threads",
            self.elements, self.seed, self.repeats, self.warmup, self.threads
        )?;
        let copies: Vec<String> = self
            .baselines
            .iter()
            .map(|b| format!("{} {:.3} ms", b.name, b.time.as_secs_f64() * 1e3))
            .collect();
        writeln!(
            f,
            "memcpy baseline: {:.3} ms = {:.2} GB/s of f32 input (the fastest of: {}; each \
             the faster of before and after the methods); every GB/s is 4·n bytes of f32 \
             input per second",
            self.memcpy().as_secs_f64() * 1e3,
            self.memcpy_gigabytes_per_second(),
            copies.join(", ")
        )?;
        let header = [
            "method",
            "compress ms",
            "GB/s",
            "× memcpy",
            "decompress ms",
            "GB/s",
            "payload bytes",
            "ratio",
            "rel. error",
        ];
        let mut lines: Vec<Vec<String>> = vec![header.iter().map(|s| (*s).to_owned()).collect()];
        let mut memcpy_line = vec![
            "memcpy (baseline)".to_owned(),
            format!("{:.3}", self.memcpy().as_secs_f64() * 1e3),
            format!("{:.2}", self.memcpy_gigabytes_per_second()),
            "1.00×".to_owned(),
        ];
        memcpy_line.resize(header.len(), String::new());
        lines.push(memcpy_line);
        let mut notes = Vec::new();
        for row in &self.rows {
            let mut label = row.method.to_string();
            if row.shape.len() > 1 {
                let dims: Vec<String> = row.shape.iter().map(usize::to_string).collect();
                label.push_str(&format!(" on {}", dims.join("×")));
            }
            let measurement = match &row.outcome {
                Outcome::Measured(measurement) => measurement,
                Outcome::NotAvailable(why) => {
                    notes.push(format!("{label}: not available: {why}"));
                    lines.push(vec![label, "not available".into()]);
                    continue;
                }
                Outcome::Failed(why) => {
                    notes.push(format!("{label}: failed: {why}"));
                    lines.push(vec![label, "failed".into()]);
                    continue;
                }
            };
            let rounds = if measurement.rounds > 1 {
                format!(" ({} rounds)", measurement.rounds)
            } else {
                String::new()
            };
            lines.push(vec![
                label,
                format!("{:.3}", measurement.compress.as_secs_f64() * 1e3),
                format!("{:.2}", row.compress_gigabytes_per_second().unwrap_or(0.0)),
                format!("{:.2}×", self.compress_vs_memcpy(row).unwrap_or(0.0)),
                format!("{:.3}", measurement.decompress.as_secs_f64() * 1e3),
                format!(
                    "{:.2}",
                    row.decompress_gigabytes_per_second().unwrap_or(0.0)
                ),
                format!("{}{rounds}", measurement.payload_bytes),
                format!("{:.1}", row.compression_ratio().unwrap_or(0.0)),
                format_error(measurement.relative_error),
            ]);
        }
        let mut widths = vec![0usize; header.len()];
        for line in &lines {
            // A short line (an unavailable method) does not widen the later columns.
            if line.len() == header.len() {
                for (width, cell) in widths.iter_mut().zip(line) {
                    *width = (*width).max(cell.chars().count());
                }
            } else if let Some(first) = line.first() {
                widths[0] = widths[0].max(first.chars().count());
            }
        }
        for line in &lines {
            let mut text = String::new();
            for (index, cell) in line.iter().enumerate() {
                let width = widths.get(index).copied().unwrap_or(0);
                let pad = width.saturating_sub(cell.chars().count());
                if index == 0 {
                    text.push_str(cell);
                    text.push_str(&" ".repeat(pad));
                } else if line.len() < header.len() {
                    // "not available" / "failed": left-aligned after the method.
                    text.push_str("  ");
                    text.push_str(cell);
                } else {
                    text.push_str("  ");
                    text.push_str(&" ".repeat(pad));
                    text.push_str(cell);
                }
            }
            writeln!(f, "{}", text.trim_end())?;
        }
        for row in &self.rows {
            if let Outcome::Measured(Measurement {
                compress,
                decompress,
                matmul: Some(matmul),
                ..
            }) = &row.outcome
            {
                let step = (*compress + *decompress).as_secs_f64();
                let rate = matmul.flops() / step.max(f64::MIN_POSITIVE) / 1e9;
                writeln!(
                    f,
                    "{}: full step (compress, rounds, decompress) {:.3} ms = {:.1} GFLOP/s; \
                     ndarray/matrixmultiply sgemm of the same products ({}×{}, rank {}) \
                     {:.3} ms = {:.1} GFLOP/s; ratio {:.2}",
                    row.method,
                    step * 1e3,
                    rate,
                    matmul.rows,
                    matmul.cols,
                    matmul.rank,
                    matmul.time.as_secs_f64() * 1e3,
                    matmul.gigaflops(),
                    rate / matmul.gigaflops().max(f64::MIN_POSITIVE)
                )?;
            }
        }
        for note in notes {
            writeln!(f, "{note}")?;
        }
        Ok(())
    }
}

/// A relative error for the table: `0` when exact, else three decimals in scientific
/// notation (`2.070e-4`).
fn format_error(error: f64) -> String {
    if error == 0.0 {
        "0".to_owned()
    } else {
        format!("{error:.3e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(value: f64) -> ArgValue {
        ArgValue::Number(value)
    }

    #[test]
    fn parses_names_named_arguments_and_values_of_every_kind() {
        let methods = parse_methods(
            " topk(ratio: 0.01, approx: sample) , qsgd( levels:4,norm:'max' ),sign,\
             dgc(ratio: 1e-3, warmup: 0), powersgd(rank: 4, warm_start: false), none(),",
        )
        .unwrap();
        assert_eq!(
            methods,
            vec![
                MethodSpec::new("topk")
                    .with("ratio", number(0.01))
                    .with("approx", ArgValue::Text("sample".into())),
                MethodSpec::new("qsgd")
                    .with("levels", number(4.0))
                    .with("norm", ArgValue::Text("max".into())),
                MethodSpec::new("sign"),
                MethodSpec::new("dgc")
                    .with("ratio", number(0.001))
                    .with("warmup", number(0.0)),
                MethodSpec::new("powersgd")
                    .with("rank", number(4.0))
                    .with("warm_start", ArgValue::Bool(false)),
                MethodSpec::new("none"),
            ]
        );
        assert_eq!(methods[0].to_string(), "topk(ratio: 0.01, approx: sample)");
        assert_eq!(methods[1].to_string(), "qsgd(levels: 4, norm: max)");
        assert_eq!(
            methods[4].to_string(),
            "powersgd(rank: 4, warm_start: false)"
        );
        let args = methods[0].args();
        assert_eq!(args.number("ratio", None), Ok(0.01));
        assert_eq!(args.text("approx", "exact"), Ok("sample"));
    }

    #[test]
    fn default_methods_print_as_they_parse() {
        let printed: Vec<String> = default_methods().iter().map(|m| m.to_string()).collect();
        let reparsed = parse_methods(&printed.join(", ")).unwrap();
        assert_eq!(reparsed, default_methods());
        assert_eq!(printed[5], "topk(ratio: 0.01, approx: sample)");
        assert_eq!(printed[13], "powersgd(rank: 4, start: 0)");
    }

    fn error(text: &str) -> SpecError {
        parse_methods(text).unwrap_err()
    }

    #[test]
    fn bad_lists_are_clear_errors_pointing_at_the_culprit() {
        let e = error("topk(ratio 0.01)");
        assert_eq!(e.column, 11);
        assert!(e
            .message
            .contains("expected `:` after the argument name `ratio`"));
        assert_eq!(
            e.to_string(),
            "expected `:` after the argument name `ratio`, found `0`; arguments are named: \
             `topk(ratio: value)` (at character 12)\n  topk(ratio 0.01)\n             ^"
        );
        let e = error("randomk(0.01)");
        assert_eq!(e.column, 8);
        assert!(e.message.contains("arguments are named"), "{}", e.message);
        let e = error("topk, qsdg(levels: 4)");
        assert_eq!(e.column, 6);
        assert_eq!(
            e.message,
            "unknown compression method `qsdg`; did you mean `qsgd`?"
        );
        let e = error("zzzzzz");
        assert!(
            e.message.contains("the methods are: none, fp16"),
            "{}",
            e.message
        );
        let e = error("topk(ratio: 0.01");
        assert_eq!(
            (e.column, e.message.as_str()),
            (4, "`(` of `topk` is never closed")
        );
        let e = error("topk(ratio: 0.01,");
        assert_eq!(e.column, 4);
        let e = error("qsgd(levels: 4 4)");
        assert!(e.message.contains("expected `,` or `)`"), "{}", e.message);
        let e = error("qsgd(levels: 1.2.3)");
        assert_eq!(e.message, "`1.2.3` is not a number (argument `levels`)");
        let e = error("qsgd(levels: 4, levels: 5)");
        assert_eq!(
            (e.column, e.message.as_str()),
            (16, "argument `levels` given twice")
        );
        let e = error("qsgd(norm: \"max)");
        assert_eq!(e.message, "this string is never closed");
        let e = error("sign sign");
        assert!(
            e.message.contains("expected `,` between methods"),
            "{}",
            e.message
        );
        assert_eq!(error("  ").message, "no methods given");
        assert!(error("sign,,int8")
            .message
            .contains("expected a method name"));
        assert!(error("qsgd(levels: )")
            .message
            .contains("expected a value for `levels`"));
        // Columns count characters, not bytes.
        assert_eq!(error("qsgd(levels: ä)").column, 13);
    }

    #[test]
    fn numbers_accept_signs_exponents_and_separators() {
        let methods = parse_methods("qsgd(a: -2, b: +1.5e-3, c: 1_000, d: .5)").unwrap();
        let values: Vec<&ArgValue> = methods[0].arguments.iter().map(|(_, v)| v).collect();
        assert_eq!(
            values,
            vec![
                &number(-2.0),
                &number(0.0015),
                &number(1000.0),
                &number(0.5)
            ]
        );
    }

    #[test]
    fn matrix_side_is_the_largest_power_of_two_square_within_the_elements() {
        // 4096² = 16 777 216 ≤ 25 000 000 < 8192² = 67 108 864.
        assert_eq!(matrix_side(25_000_000), 4096);
        assert_eq!(matrix_side(16_777_216), 4096);
        assert_eq!(matrix_side(16_777_215), 2048);
        assert_eq!(matrix_side(3), 1);
        assert_eq!(matrix_side(4), 2);
        assert_eq!(matrix_side(0), 0);
    }

    #[test]
    fn fixture_is_deterministic_and_has_the_stated_spread() {
        let a = fixture_gradient(200_000, 7);
        assert_eq!(a, fixture_gradient(200_000, 7));
        assert_ne!(a, fixture_gradient(200_000, 8));
        let mean = a.iter().map(|&x| f64::from(x)).sum::<f64>() / a.len() as f64;
        let variance = a
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / a.len() as f64;
        // Irwin–Hall(12) − 6 has variance 12 · 1/12 = 1; scaled by σ = 0.01. Standard
        // error of the variance estimate ≈ σ²·√(2/n) ≈ 3e-7 relative 0.3%.
        assert!(
            (variance.sqrt() / FIXTURE_STD - 1.0).abs() < 0.01,
            "{variance}"
        );
        assert!(mean.abs() < 1e-4, "{mean}");
    }

    #[test]
    fn median_of_durations_skips_warmup_and_takes_the_middle() {
        let mut calls = 0u64;
        let median = median_duration::<()>(2, 5, || {
            calls += 1;
            // Warm-up calls return 100 s (must be ignored); then 5, 1, 4, 2, 3 ms.
            let ms = [100_000, 100_000, 5, 1, 4, 2, 3][calls as usize - 1];
            Ok(Duration::from_millis(ms))
        })
        .unwrap();
        assert_eq!(calls, 7);
        assert_eq!(median, Duration::from_millis(3));
    }

    #[test]
    fn a_small_run_reports_every_method_with_consistent_numbers() {
        let options = BenchOptions {
            elements: 10_000,
            repeats: 1,
            warmup: 0,
            ..BenchOptions::default()
        };
        let report = run(&options).unwrap();
        assert_eq!(report.rows.len(), default_methods().len());
        assert_eq!(report.baselines.len(), 2);
        assert!(report.memcpy() > Duration::ZERO);
        for (row, spec) in report.rows.iter().zip(default_methods()) {
            assert_eq!(row.method, spec);
            let expected_shape = if spec.name == "powersgd" {
                // 64² = 4096 ≤ 10 000 < 128².
                vec![64, 64]
            } else {
                vec![10_000]
            };
            assert_eq!(row.shape, expected_shape);
            match &row.outcome {
                Outcome::Measured(m) => {
                    assert!(m.rounds >= 1);
                    assert!(m.payload_bytes > 0);
                    assert!(m.relative_error.is_finite() && m.relative_error >= 0.0);
                    let ratio = row.compression_ratio().unwrap();
                    assert_eq!(ratio, 4.0 * row.elements() as f64 / m.payload_bytes as f64);
                }
                Outcome::NotAvailable(why) | Outcome::Failed(why) => assert!(!why.is_empty()),
            }
        }
        // The lossless method: the payload is the header (16 bytes + 4 for the one
        // dimension) plus 4 bytes per element, and decoding is exact.
        let none = report.rows[0].measurement().expect("`none` runs");
        assert_eq!(none.payload_bytes, 20 + 4 * 10_000);
        assert_eq!(none.relative_error, 0.0);
        let table = report.to_string();
        assert!(table.contains("memcpy (baseline)"));
        assert!(table.contains("topk(ratio: 0.01, approx: sample)"));
        assert!(table.contains("powersgd(rank: 4, start: 0) on 64×64"));
    }

    #[test]
    fn unusable_options_are_errors() {
        let options = BenchOptions {
            elements: 0,
            ..BenchOptions::default()
        };
        assert_eq!(run(&options), Err(BenchError::NoElements));
        let options = BenchOptions {
            elements: 10,
            repeats: 0,
            ..BenchOptions::default()
        };
        assert_eq!(run(&options), Err(BenchError::NoRepeats));
    }

    #[test]
    fn unknown_arguments_make_a_not_available_row() {
        let options = BenchOptions {
            elements: 100,
            repeats: 1,
            warmup: 0,
            methods: vec![MethodSpec::new("int8").with("ratoi", number(0.5))],
            ..BenchOptions::default()
        };
        let report = run(&options).unwrap();
        match &report.rows[0].outcome {
            Outcome::NotAvailable(why) => assert!(why.contains("ratoi"), "{why}"),
            other => panic!("{other:?}"),
        }
        let table = report.to_string();
        let line = table
            .lines()
            .find(|l| l.starts_with("int8(ratoi: 0.5)"))
            .unwrap();
        assert!(line.ends_with("  not available"), "{line}");
    }
}
