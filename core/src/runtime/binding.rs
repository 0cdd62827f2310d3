//! Binding: which rules of a [`Strategy`] apply to each parameter of a model.
//!
//! For every parameter and every hyperparameter its optimizer reads, the binding finds
//! the graph output in force: the global output named [`Hyper::name`] (or the
//! optimizer's default when the script does not set it), overridden by each matching
//! group in source order (later groups win field by field). It also resolves the
//! `trust_ratio` and `layer_decay` switches, the layer depth and the layer-wise lr
//! factor, and groups parameters into *lr bins* (same lr output, same factor) so that
//! a step report can list one effective lr per bin.
//!
//! Gradient compression is resolved per parameter too: the last matching group that
//! says `compress …` wins, else the top-level `compress …`, else the parameter is not
//! compressed. The graph outputs of the method's scheduled arguments are looked up
//! here (a missing one is an error); the compressor itself is built by the stepper,
//! which fills [`BoundParam::compression`] (method and error feedback).
//!
//! The public [`Binding`] is what a user reads (and [`Binding::describe`] prints); the
//! crate-private [`Plan`] is the same decisions in the form the stepper executes: for
//! each parameter, an index per hyperparameter into one flat value table (graph
//! outputs first, then the optimizer's defaults).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use super::{Glob, ParamSpec, RuntimeError};
use crate::graph::{Node, ScalarGraph};
use crate::schedule::Schedule;
use crate::strategy::{
    CompressSpec, DType, GroupRule, Hyper, OptimizerKind, Strategy, CLIP_NORM_OUTPUT,
};

/// Number of [`Hyper`] variants: the width of a parameter's slot table.
pub(crate) const HYPER_COUNT: usize = Hyper::ALL.len();

/// A strategy bound to a model's parameters: what applies to each of them.
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    /// One entry per parameter, in the order they were declared.
    pub params: Vec<BoundParam>,
    /// Things that are probably mistakes but not errors: group patterns that match no
    /// parameter, groups setting a hyperparameter the optimizer does not read, a
    /// layer decay with no known depth.
    pub warnings: Vec<String>,
    /// The largest known layer depth (parameters without one count as this deep, so
    /// their layer-wise factor is 1).
    pub depth_max: Option<u32>,
    /// Labels of the lr bins (`lr`, `group1.lr`, `lr×0.75^2`): parameters in one bin
    /// share their lr output and layer-wise factor. [`BoundParam::bin`] indexes this;
    /// [`StepReport::group_lrs`](super::StepReport::group_lrs) follows its order.
    pub lr_bins: Vec<String>,
}

/// The rules in force for one parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct BoundParam {
    /// Parameter name.
    pub name: String,
    /// Number of elements.
    pub numel: usize,
    /// The model's dtype for this parameter.
    pub dtype: DType,
    /// Indices (0-based, source order) of the groups whose patterns match it.
    pub groups: Vec<usize>,
    /// For each hyperparameter the optimizer reads, where its value comes from: a
    /// graph output name (`lr`, `group2.weight_decay`) or `default (0.9)`.
    pub hypers: Vec<(Hyper, String)>,
    /// Layer depth (declared, or captured by a `{depth}` pattern).
    pub depth: Option<u32>,
    /// Layer-wise lr factor `factor^(depth_max − depth)` (1 without layer decay).
    pub lr_scale: f64,
    /// Whether LARS/LAMB trust ratios apply.
    pub trust_ratio: bool,
    /// Whether layer-wise decay applies.
    pub layer_decay: bool,
    /// Index into [`Binding::lr_bins`].
    pub bin: usize,
    /// The gradient compressor of this parameter, `None` when its gradient is neither
    /// compressed nor exchanged (one worker and no `compress` rule applies).
    pub compression: Option<BoundCompression>,
}

/// The compressor bound to one parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct BoundCompression {
    /// Which rule chose it, named like its graph outputs: `compress` for the top-level
    /// `compress …` (or, with several workers and no rule, the implicit dense
    /// exchange `none`), `group2.compress` for the second group's.
    pub source: String,
    /// The method's script name (`topk`).
    pub method: String,
    /// Whether the host keeps an error-feedback residual for it.
    pub error_feedback: ErrorFeedback,
    /// The method's scheduled arguments and the graph outputs they read each step
    /// (`ratio` ← `compress.ratio`).
    pub scheduled: Vec<(String, String)>,
}

/// Error feedback of a bound compressor, after the script's `with error_feedback` /
/// `error_feedback: false` and the method's default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorFeedback {
    /// The host keeps a residual `e ← x − r` and adds it to the next gradient.
    On,
    /// No residual.
    Off,
    /// The method accumulates what it did not send itself (DGC); the host keeps no
    /// residual whatever the script says.
    Internal,
}

impl ErrorFeedback {
    /// `on`, `off` or `internal`.
    pub fn name(self) -> &'static str {
        match self {
            Self::On => "on",
            Self::Off => "off",
            Self::Internal => "internal",
        }
    }
}

impl Binding {
    /// The bound parameter named `name`.
    pub fn param(&self, name: &str) -> Option<&BoundParam> {
        self.params.iter().find(|p| p.name == name)
    }

    /// A readable table: one row per parameter with its groups, lr output, layer-wise
    /// factor, depth and trust-ratio switch — and, when some gradient is compressed or
    /// exchanged, its compressor (`topk, ef on`) — followed by the warnings.
    pub fn describe(&self) -> String {
        let compressed = self.params.iter().any(|p| p.compression.is_some());
        let mut header = vec!["param", "groups", "lr", "lr scale", "depth", "trust"];
        if compressed {
            header.push("compress");
        }
        let rows: Vec<Vec<String>> = self
            .params
            .iter()
            .map(|p| {
                let groups = if p.groups.is_empty() {
                    "-".to_owned()
                } else {
                    p.groups
                        .iter()
                        .map(|g| (g + 1).to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                };
                let lr = p
                    .hypers
                    .iter()
                    .find(|(h, _)| *h == Hyper::Lr)
                    .map_or_else(|| "-".to_owned(), |(_, source)| source.clone());
                let scale = if p.layer_decay {
                    short_number(p.lr_scale)
                } else {
                    format!("{} (layer decay off)", short_number(p.lr_scale))
                };
                let depth = p
                    .depth
                    .map_or_else(|| "-".to_owned(), |depth| depth.to_string());
                let trust = if p.trust_ratio { "on" } else { "off" }.to_owned();
                let mut row = vec![p.name.clone(), groups, lr, scale, depth, trust];
                if compressed {
                    row.push(p.compression.as_ref().map_or_else(
                        || "-".to_owned(),
                        |c| format!("{}, ef {}", c.method, c.error_feedback.name()),
                    ));
                }
                row
            })
            .collect();
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cells: &[&str]| {
            let mut text = String::new();
            for (i, (cell, &width)) in cells.iter().zip(&widths).enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                let pad = width.saturating_sub(cell.chars().count());
                text.push_str(cell);
                text.extend(std::iter::repeat(' ').take(pad));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(&header);
        for row in &rows {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            line(&cells);
        }
        if let Some(depth_max) = self.depth_max {
            let without: Vec<&str> = self
                .params
                .iter()
                .filter(|p| p.depth.is_none() && p.layer_decay)
                .map(|p| p.name.as_str())
                .collect();
            if !without.is_empty() && self.params.iter().any(|p| p.lr_scale != 1.0) {
                let _ = writeln!(
                    out,
                    "note: parameters without a depth count as depth {depth_max} (lr scale 1): {}",
                    without.join(", ")
                );
            }
        }
        for warning in &self.warnings {
            let _ = writeln!(out, "warning: {warning}");
        }
        out
    }
}

/// A factor with at most 6 decimals and no trailing zeros (`0.59049`, `1`).
fn short_number(value: f64) -> String {
    let text = format!("{value:.6}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    text.to_owned()
}

/// The binding in executable form.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Plan {
    /// Length of the value table: graph outputs, then one default per [`Hyper`].
    pub value_count: usize,
    /// The defaults region of the value table (index = output count + hyper index);
    /// NaN where the optimizer has no default (never referenced).
    pub defaults: [f64; HYPER_COUNT],
    /// Per parameter, the value-table index of each hyperparameter (by `Hyper as usize`).
    pub slots: Vec<[usize; HYPER_COUNT]>,
    /// Value-table entries read this run and what each holds, deduplicated, so a step
    /// checks each once.
    pub checks: Vec<(usize, Hyper)>,
    /// The global clipping threshold's output, if the script clips.
    pub clip_slot: Option<usize>,
    /// Per lr bin: the lr's value-table index and the layer-wise factor.
    pub bins: Vec<(usize, f64)>,
    /// Per parameter: whether its momentum can ever be non-zero (so it needs a buffer).
    pub needs_momentum: Vec<bool>,
    /// The `compress` rules that apply to some parameter, in order of first use.
    pub compress_rules: Vec<CompressRule>,
    /// Per parameter: index into `compress_rules`, `None` when no rule applies.
    pub compress: Vec<Option<usize>>,
}

/// One `compress …` rule in executable form.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct CompressRule {
    /// `compress` (top level) or `groupN.compress`.
    pub source: String,
    /// The method and its arguments.
    pub spec: CompressSpec,
    /// Each scheduled argument and the value-table index of its graph output.
    pub scheduled: Vec<(String, usize)>,
}

impl Plan {
    /// A value table with the defaults filled in (outputs are written each step).
    pub fn initial_values(&self) -> Vec<f64> {
        let outputs = self.value_count - HYPER_COUNT;
        let mut values = vec![0.0; self.value_count];
        values[outputs..].copy_from_slice(&self.defaults);
        values
    }
}

/// Bind `strategy` and `graph` to `params` (rules in the module documentation).
pub(crate) fn bind(
    graph: &ScalarGraph,
    strategy: &Strategy,
    params: &[ParamSpec],
) -> Result<(Binding, Plan), RuntimeError> {
    let kind = strategy.optimizer.kind;
    let output_index: HashMap<&str, usize> = graph
        .outputs
        .iter()
        .enumerate()
        .map(|(i, o)| (o.name.as_str(), i))
        .collect();
    let outputs = graph.outputs.len();
    let default_slot = |hyper: Hyper| outputs + hyper as usize;
    let mut defaults = [f64::NAN; HYPER_COUNT];
    for hyper in Hyper::ALL {
        if let Some(value) = kind.default_value(hyper) {
            defaults[hyper as usize] = value;
        }
    }

    check_optimizer_options(strategy)?;

    // Parameters: unique names, allowed dtypes, sizes that fit in memory.
    let mut numels = Vec::with_capacity(params.len());
    let mut seen = HashSet::with_capacity(params.len());
    for spec in params {
        if !seen.insert(spec.name.as_str()) {
            return Err(RuntimeError::DuplicateParam(spec.name.clone()));
        }
        if spec.dtype != DType::F32 && spec.dtype != strategy.precision.dtype {
            return Err(RuntimeError::DTypeNotAllowed {
                name: spec.name.clone(),
                found: spec.dtype.name(),
                precision: strategy.precision.dtype.name(),
            });
        }
        let numel = spec
            .checked_numel()
            .filter(|&n| n.checked_mul(4).is_some())
            .ok_or_else(|| {
                RuntimeError::Strategy(format!(
                    "parameter `{}` has shape {:?}, more elements than fit in memory",
                    spec.name, spec.shape
                ))
            })?;
        numels.push(numel);
    }

    let mut warnings = Vec::new();

    // Groups: compiled patterns, and the outputs their overrides name.
    let mut group_globs: Vec<Vec<Glob>> = Vec::with_capacity(strategy.groups.len());
    let mut group_slots: Vec<Vec<(Hyper, usize)>> = Vec::with_capacity(strategy.groups.len());
    for (index, group) in strategy.groups.iter().enumerate() {
        let globs = compile_patterns(&group.patterns, &format!("group {}", index + 1))?;
        let mut slots = Vec::with_capacity(group.hypers.len());
        for &hyper in &group.hypers {
            let name = GroupRule::output_name(index, hyper);
            let slot = output_index.get(name.as_str()).copied().ok_or_else(|| {
                RuntimeError::Strategy(format!(
                    "group {} sets `{}`, but the graph has no output `{name}`",
                    index + 1,
                    hyper.name()
                ))
            })?;
            if !kind.hypers().contains(&hyper) {
                warnings.push(format!(
                    "group {} sets `{}`, which {} does not use",
                    index + 1,
                    hyper.name(),
                    kind.name()
                ));
            }
            slots.push((hyper, slot));
        }
        group_globs.push(globs);
        group_slots.push(slots);
    }

    // Layer decay: factor and depth patterns.
    let (decay_factor, depth_globs) = match &strategy.layer_decay {
        Some(decay) => {
            if !(decay.factor > 0.0 && decay.factor <= 1.0) {
                return Err(RuntimeError::Strategy(format!(
                    "layer decay factor must be in (0, 1], got {}",
                    decay.factor
                )));
            }
            let globs = compile_patterns(&decay.depth_patterns, "layer_decay")?;
            if let Some(glob) = globs.iter().find(|g| !g.has_depth_capture()) {
                return Err(RuntimeError::Strategy(format!(
                    "layer_decay pattern \"{glob}\" has no `{{depth}}` capture"
                )));
            }
            (Some(decay.factor), globs)
        }
        None => (None, Vec::new()),
    };

    // Global sources.
    let mut global = [0usize; HYPER_COUNT];
    for hyper in Hyper::ALL {
        global[hyper as usize] = match output_index.get(hyper.name()) {
            Some(&slot) => slot,
            None => default_slot(hyper),
        };
    }

    // Compression rules: the top level, then each group's, with their scheduled
    // arguments' outputs.
    let compress_rule = |group: Option<usize>, spec: &CompressSpec| {
        let source = match group {
            None => "compress".to_owned(),
            Some(index) => format!("group{}.compress", index + 1),
        };
        let mut scheduled = Vec::with_capacity(spec.scheduled.len());
        for arg in &spec.scheduled {
            let slot = output_index
                .get(arg.output.as_str())
                .copied()
                .ok_or_else(|| {
                    RuntimeError::Strategy(format!(
                        "`{source} {}`: argument `{}` is a schedule read from the graph output \
                         `{}`, which the graph does not have",
                        spec.method, arg.arg, arg.output
                    ))
                })?;
            scheduled.push((arg.arg.clone(), slot));
        }
        Ok::<_, RuntimeError>(CompressRule {
            source,
            spec: spec.clone(),
            scheduled,
        })
    };
    let global_compress = match &strategy.compress {
        Some(spec) => Some(compress_rule(None, spec)?),
        None => None,
    };
    let mut group_compress = Vec::with_capacity(strategy.groups.len());
    for (index, group) in strategy.groups.iter().enumerate() {
        group_compress.push(match &group.compress {
            Some(spec) => Some(compress_rule(Some(index), spec)?),
            None => None,
        });
    }

    // Which patterns matched anything, for the warnings.
    let mut group_pattern_used: Vec<Vec<bool>> =
        group_globs.iter().map(|g| vec![false; g.len()]).collect();
    let mut depth_pattern_used = vec![false; depth_globs.len()];

    struct Resolved {
        groups: Vec<usize>,
        slots: [usize; HYPER_COUNT],
        depth: Option<u32>,
        trust_ratio: bool,
        layer_decay: bool,
        /// `None`: the top-level rule (if any); `Some(g)`: group `g`'s.
        compress_group: Option<usize>,
    }
    let mut resolved = Vec::with_capacity(params.len());
    for spec in params {
        let mut slots = global;
        let mut groups = Vec::new();
        let mut trust_ratio = true;
        let mut layer_decay = true;
        let mut compress_group = None;
        let mut captured: Option<(u32, String)> = None;
        let mut capture = |depth: Option<u32>, source: String, warnings: &mut Vec<String>| {
            let Some(depth) = depth else { return };
            match &captured {
                None => captured = Some((depth, source)),
                Some((first, first_source)) if *first != depth => warnings.push(format!(
                    "parameter `{}`: {first_source} captures depth {first} but {source} captures {depth}; using {first}",
                    spec.name
                )),
                Some(_) => {}
            }
        };
        for (i, glob) in depth_globs.iter().enumerate() {
            if let Some(depth) = glob.match_name(&spec.name) {
                depth_pattern_used[i] = true;
                capture(
                    depth,
                    format!("layer_decay pattern \"{glob}\""),
                    &mut warnings,
                );
            }
        }
        for (index, globs) in group_globs.iter().enumerate() {
            let mut matched = false;
            for (i, glob) in globs.iter().enumerate() {
                if let Some(depth) = glob.match_name(&spec.name) {
                    matched = true;
                    group_pattern_used[index][i] = true;
                    capture(
                        depth,
                        format!("group {} pattern \"{glob}\"", index + 1),
                        &mut warnings,
                    );
                }
            }
            if !matched {
                continue;
            }
            groups.push(index);
            for &(hyper, slot) in &group_slots[index] {
                slots[hyper as usize] = slot;
            }
            let group = &strategy.groups[index];
            if let Some(on) = group.trust_ratio {
                trust_ratio = on;
            }
            if let Some(on) = group.layer_decay {
                layer_decay = on;
            }
            if group.compress.is_some() {
                compress_group = Some(index);
            }
        }
        if slots[Hyper::Lr as usize] == default_slot(Hyper::Lr) {
            return Err(RuntimeError::MissingLr);
        }
        let depth = spec.depth.or(captured.map(|(depth, _)| depth));
        resolved.push(Resolved {
            groups,
            slots,
            depth,
            trust_ratio,
            layer_decay,
            compress_group,
        });
    }

    for (index, globs) in group_globs.iter().enumerate() {
        for (glob, used) in globs.iter().zip(&group_pattern_used[index]) {
            if !used {
                warnings.push(format!(
                    "group {} pattern \"{glob}\" matches no parameter",
                    index + 1
                ));
            }
        }
    }
    for (glob, used) in depth_globs.iter().zip(&depth_pattern_used) {
        if !used {
            warnings.push(format!(
                "layer_decay pattern \"{glob}\" matches no parameter"
            ));
        }
    }

    let depth_max = resolved.iter().filter_map(|r| r.depth).max();
    if decay_factor.is_some() && depth_max.is_none() && !params.is_empty() {
        warnings.push(
            "layer_decay is set but no parameter has a depth (declare one, or capture it with \
             a \"{depth}\" pattern): every lr scale is 1"
                .to_owned(),
        );
    }

    // Names of the value-table entries, for the binding's description.
    let source_name = |slot: usize| -> String {
        match graph.outputs.get(slot) {
            Some(output) => output.name.clone(),
            None => format!("default ({})", defaults[slot - outputs]),
        }
    };

    let mut bound = Vec::with_capacity(params.len());
    let mut slot_table = Vec::with_capacity(params.len());
    let mut needs_momentum = Vec::with_capacity(params.len());
    let mut bin_keys: Vec<(usize, u32)> = Vec::new();
    let mut bins = Vec::new();
    let mut lr_bins = Vec::new();
    let mut checks: Vec<(usize, Hyper)> = Vec::new();
    let mut compress_rules: Vec<CompressRule> = Vec::new();
    // Per rule (the top level first, then each group): its index in `compress_rules`.
    let mut rule_index: Vec<Option<usize>> = vec![None; strategy.groups.len() + 1];
    let mut compress = Vec::with_capacity(params.len());
    for ((spec, r), &numel) in params.iter().zip(resolved).zip(&numels) {
        let (key, rule) = match r.compress_group {
            Some(group) => (group + 1, group_compress[group].as_ref()),
            None => (0, global_compress.as_ref()),
        };
        compress.push(rule.map(|rule| {
            *rule_index[key].get_or_insert_with(|| {
                compress_rules.push(rule.clone());
                compress_rules.len() - 1
            })
        }));
        // Exponent of the layer-wise factor: depth_max − depth, 0 when it does not apply.
        let exponent = match (decay_factor, depth_max) {
            (Some(_), Some(max)) if r.layer_decay => max - r.depth.unwrap_or(max),
            _ => 0,
        };
        let lr_scale = match decay_factor {
            Some(factor) if exponent > 0 => factor.powf(f64::from(exponent)),
            _ => 1.0,
        };
        let lr_slot = r.slots[Hyper::Lr as usize];
        let bin = match bin_keys.iter().position(|&key| key == (lr_slot, exponent)) {
            Some(bin) => bin,
            None => {
                bin_keys.push((lr_slot, exponent));
                bins.push((lr_slot, lr_scale));
                let name = source_name(lr_slot);
                lr_bins.push(match decay_factor {
                    Some(factor) if exponent > 0 => format!("{name}×{factor}^{exponent}"),
                    _ => name,
                });
                bins.len() - 1
            }
        };
        for &hyper in kind.hypers() {
            let entry = (r.slots[hyper as usize], hyper);
            if !checks.contains(&entry) {
                checks.push(entry);
            }
        }
        let momentum_slot = r.slots[Hyper::Momentum as usize];
        needs_momentum.push(
            matches!(kind, OptimizerKind::Sgd | OptimizerKind::Lars)
                && !is_constant_zero(graph, momentum_slot, &defaults),
        );
        bound.push(BoundParam {
            name: spec.name.clone(),
            numel,
            dtype: spec.dtype,
            groups: r.groups,
            hypers: kind
                .hypers()
                .iter()
                .map(|&h| (h, source_name(r.slots[h as usize])))
                .collect(),
            depth: r.depth,
            lr_scale,
            trust_ratio: r.trust_ratio,
            layer_decay: r.layer_decay,
            bin,
            compression: None,
        });
        slot_table.push(r.slots);
    }

    let binding = Binding {
        params: bound,
        warnings,
        depth_max,
        lr_bins,
    };
    let plan = Plan {
        value_count: outputs + HYPER_COUNT,
        defaults,
        slots: slot_table,
        checks,
        clip_slot: output_index.get(CLIP_NORM_OUTPUT).copied(),
        bins,
        needs_momentum,
        compress_rules,
        compress,
    };
    Ok((binding, plan))
}

/// Options of the optimizer that are not schedules, checked once.
fn check_optimizer_options(strategy: &Strategy) -> Result<(), RuntimeError> {
    if let Some(clip) = strategy.optimizer.trust_clip {
        if !(clip > 0.0 && clip.is_finite()) {
            return Err(RuntimeError::Strategy(format!(
                "trust_clip must be positive and finite, got {clip}"
            )));
        }
    }
    Ok(())
}

fn compile_patterns(patterns: &[String], owner: &str) -> Result<Vec<Glob>, RuntimeError> {
    patterns
        .iter()
        .map(|pattern| {
            Glob::new(pattern).map_err(|error| {
                RuntimeError::Strategy(format!("{owner} pattern \"{pattern}\": {error}"))
            })
        })
        .collect()
}

/// Whether a value-table entry is 0 at every step: the default 0, or an output that is
/// a constant 0 schedule. Anything else might become non-zero.
fn is_constant_zero(graph: &ScalarGraph, slot: usize, defaults: &[f64; HYPER_COUNT]) -> bool {
    match graph.outputs.get(slot) {
        Some(output) => matches!(
            graph.nodes.get(output.node as usize),
            Some(Node::Schedule(Schedule::Constant { value })) if *value == 0.0
        ),
        None => defaults
            .get(slot - graph.outputs.len())
            .is_some_and(|&value| value == 0.0),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::strategy::LayerDecay;

    fn graph(outputs: &[(&str, f64)]) -> ScalarGraph {
        let mut g = ScalarGraph::new(None);
        for (name, value) in outputs {
            let id = g.push(Node::Schedule(Schedule::Constant { value: *value }));
            g.add_output(*name, id);
        }
        g
    }

    #[test]
    fn later_groups_override_field_by_field() {
        let g = graph(&[
            ("lr", 0.1),
            ("weight_decay", 0.01),
            ("group1.lr", 0.01),
            ("group1.weight_decay", 0.0),
            ("group2.lr", 0.5),
        ]);
        let strategy = Strategy {
            groups: vec![
                GroupRule {
                    patterns: vec!["*.bias".into()],
                    hypers: vec![Hyper::Lr, Hyper::WeightDecay],
                    trust_ratio: Some(false),
                    layer_decay: None,
                    compress: None,
                },
                GroupRule {
                    patterns: vec!["head.*".into()],
                    hypers: vec![Hyper::Lr],
                    trust_ratio: Some(true),
                    layer_decay: None,
                    compress: None,
                },
            ],
            ..Strategy::default()
        };
        let params = [
            ParamSpec::new("body.weight", &[2]),
            ParamSpec::new("body.bias", &[2]),
            ParamSpec::new("head.bias", &[2]),
        ];
        let (binding, plan) = bind(&g, &strategy, &params).unwrap();
        let source = |p: usize, h: Hyper| {
            binding.params[p]
                .hypers
                .iter()
                .find(|(x, _)| *x == h)
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(source(0, Hyper::Lr), "lr");
        assert_eq!(source(0, Hyper::Momentum), "default (0)");
        assert_eq!(source(1, Hyper::Lr), "group1.lr");
        assert_eq!(source(1, Hyper::WeightDecay), "group1.weight_decay");
        assert_eq!(source(2, Hyper::Lr), "group2.lr");
        // group 2 does not set weight decay: group 1's stays.
        assert_eq!(source(2, Hyper::WeightDecay), "group1.weight_decay");
        assert!(binding.params[0].trust_ratio);
        assert!(!binding.params[1].trust_ratio);
        assert!(binding.params[2].trust_ratio);
        assert_eq!(binding.params[2].groups, vec![0, 1]);
        assert_eq!(binding.lr_bins, vec!["lr", "group1.lr", "group2.lr"]);
        assert_eq!(plan.slots[2][Hyper::Lr as usize], 4);
        assert!(binding.warnings.is_empty(), "{:?}", binding.warnings);
    }

    #[test]
    fn depth_from_capture_and_decay_exponents() {
        let g = graph(&[("lr", 1.0)]);
        let strategy = Strategy {
            layer_decay: Some(LayerDecay {
                factor: 0.5,
                depth_patterns: vec!["layers.{depth}.*".into()],
            }),
            ..Strategy::default()
        };
        let params = [
            ParamSpec::new("layers.0.w", &[1]),
            ParamSpec::new("layers.2.w", &[1]),
            ParamSpec::new("head", &[1]),
        ];
        let (binding, _) = bind(&g, &strategy, &params).unwrap();
        assert_eq!(binding.depth_max, Some(2));
        assert_eq!(binding.params[0].lr_scale, 0.25);
        assert_eq!(binding.params[1].lr_scale, 1.0);
        assert_eq!(binding.params[2].lr_scale, 1.0);
        assert_eq!(binding.lr_bins, vec!["lr×0.5^2", "lr"]);
        assert!(binding
            .describe()
            .contains("note: parameters without a depth"));
    }
}
