//! The tensor side of a compiled script: which optimizer runs, how parameters are
//! grouped and scaled layer by layer, and the numeric precision with its loss scaling.
//! Numeric hyperparameters are never stored here: they are outputs of the
//! [`ScalarGraph`](crate::ScalarGraph) (so any of them may be a schedule), referred to
//! by output name. This is the contract between the language (which builds it) and
//! the runtime (which executes it); both sides are serializable for checkpoints.

use serde::{Deserialize, Serialize};

/// Everything the runtime needs besides the scalar graph.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Strategy {
    /// The update rule.
    pub optimizer: OptimizerSpec,
    /// Parameter groups in source order; later groups override earlier ones field by
    /// field for the parameters both match.
    pub groups: Vec<GroupRule>,
    /// Layer-wise learning-rate decay, if any.
    pub layer_decay: Option<LayerDecay>,
    /// Numeric precision and loss scaling.
    pub precision: PrecisionSpec,
    /// Gradient compression of every parameter no group overrides (`compress …` at
    /// the top level); `None` is dense f32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<CompressSpec>,
    /// Batch-size control (`batch …`); `None`: the caller's fixed batch, and the
    /// schedules run on the step count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<crate::batch::BatchSpec>,
}

/// The optimizers Regimen implements, with PyTorch's update rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// `torch.optim.SGD` (momentum, dampening, nesterov, L2 weight decay).
    #[default]
    Sgd,
    /// `torch.optim.Adam` (L2 weight decay added to the gradient; optional AMSGrad).
    Adam,
    /// `torch.optim.AdamW` (decoupled weight decay; optional AMSGrad).
    AdamW,
    /// LAMB, You et al. 2019: Adam direction scaled per tensor by ‖w‖/‖update‖.
    Lamb,
    /// LARS, You et al. 2017: SGD-momentum with the per-tensor local rate
    /// η‖w‖/(‖g‖+λ‖w‖).
    Lars,
}

impl OptimizerKind {
    /// The name used in scripts.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sgd => "sgd",
            Self::Adam => "adam",
            Self::AdamW => "adamw",
            Self::Lamb => "lamb",
            Self::Lars => "lars",
        }
    }

    /// Every optimizer, in documentation order.
    pub const ALL: [OptimizerKind; 5] =
        [Self::Sgd, Self::Adam, Self::AdamW, Self::Lamb, Self::Lars];

    /// The hyperparameters this optimizer reads.
    pub fn hypers(self) -> &'static [Hyper] {
        use Hyper::*;
        match self {
            Self::Sgd => &[Lr, Momentum, Dampening, WeightDecay],
            Self::Adam | Self::AdamW => &[Lr, Beta1, Beta2, Eps, WeightDecay],
            Self::Lamb => &[Lr, Beta1, Beta2, Eps, WeightDecay],
            Self::Lars => &[Lr, Momentum, Dampening, WeightDecay, Trust, Eps],
        }
    }

    /// The value a hyperparameter takes when the script does not set it: PyTorch's
    /// defaults (`AdamW` decays by 1e-2; LAMB's eps is 1e-6 as in the paper's code;
    /// LARS's trust coefficient is 1e-3 and its eps 0, as in You et al. 2017).
    /// `lr` has no default: a script must set it.
    pub fn default_value(self, hyper: Hyper) -> Option<f64> {
        use Hyper::*;
        Some(match (self, hyper) {
            (_, Lr) => return None,
            (_, Momentum) | (_, Dampening) => 0.0,
            (Self::AdamW, WeightDecay) => 1e-2,
            (_, WeightDecay) => 0.0,
            (_, Beta1) => 0.9,
            (_, Beta2) => 0.999,
            (Self::Lamb, Eps) => 1e-6,
            (Self::Lars, Eps) => 0.0,
            (_, Eps) => 1e-8,
            (_, Trust) => 1e-3,
        })
    }
}

/// A numeric hyperparameter that groups may override. The graph output holding its
/// global value is named [`Hyper::name`]; a group's override is the output
/// [`GroupRule::output_name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hyper {
    /// Learning rate.
    Lr,
    /// Momentum factor (SGD, LARS).
    Momentum,
    /// Momentum dampening (SGD, LARS).
    Dampening,
    /// Weight decay (L2 for sgd/adam/lars, decoupled for adamw/lamb).
    WeightDecay,
    /// Adam's first-moment decay.
    Beta1,
    /// Adam's second-moment decay.
    Beta2,
    /// Denominator epsilon.
    Eps,
    /// LARS trust coefficient η.
    Trust,
}

impl Hyper {
    /// Every hyperparameter.
    pub const ALL: [Hyper; 8] = [
        Self::Lr,
        Self::Momentum,
        Self::Dampening,
        Self::WeightDecay,
        Self::Beta1,
        Self::Beta2,
        Self::Eps,
        Self::Trust,
    ];

    /// The name in scripts and of the global graph output.
    pub fn name(self) -> &'static str {
        match self {
            Self::Lr => "lr",
            Self::Momentum => "momentum",
            Self::Dampening => "dampening",
            Self::WeightDecay => "weight_decay",
            Self::Beta1 => "beta1",
            Self::Beta2 => "beta2",
            Self::Eps => "eps",
            Self::Trust => "trust",
        }
    }

    /// Looks a hyperparameter up by its script name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.name() == name)
    }
}

/// Name of the graph output holding the global gradient-norm clipping threshold.
pub const CLIP_NORM_OUTPUT: &str = "clip_norm";

/// The optimizer and its non-numeric options.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OptimizerSpec {
    /// Which update rule.
    pub kind: OptimizerKind,
    /// Nesterov momentum (sgd, lars).
    pub nesterov: bool,
    /// AMSGrad's running maximum of the second moment (adam, adamw).
    pub amsgrad: bool,
    /// LAMB: divide the moments by 1−βᵗ (the paper's algorithm; on by default).
    pub bias_correction: bool,
    /// LAMB/LARS: upper bound on the trust ratio (LAMBC-style clipping), if any.
    pub trust_clip: Option<f64>,
}

/// `group "glob", … { field = value … }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupRule {
    /// Glob patterns over parameter names: `*` any run of characters (dots included),
    /// `?` one character, `{depth}` a run of digits captured as the layer depth.
    pub patterns: Vec<String>,
    /// Hyperparameters this group sets; each value is the graph output
    /// [`GroupRule::output_name`]`(index, hyper)`.
    pub hypers: Vec<Hyper>,
    /// `trust_ratio = on|off`: whether LARS/LAMB trust ratios apply.
    pub trust_ratio: Option<bool>,
    /// `layer_decay = off` exempts the group from layer-wise decay.
    pub layer_decay: Option<bool>,
    /// `compress …` inside the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<CompressSpec>,
}

impl GroupRule {
    /// Graph output name of group `index` (0-based, source order) for `hyper`:
    /// `group1.lr` for the first group's learning rate.
    pub fn output_name(index: usize, hyper: Hyper) -> String {
        format!("group{}.{}", index + 1, hyper.name())
    }
}

/// `layer_decay 0.75` (optionally with `"layers.{depth}.*"` patterns): each
/// parameter's lr is multiplied by `factor^(depth_max − depth)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerDecay {
    /// The per-layer factor, in (0, 1].
    pub factor: f64,
    /// Patterns with a `{depth}` capture that give a parameter's depth when the
    /// binding does not.
    pub depth_patterns: Vec<String>,
}

/// Element types of tensors crossing the runtime boundary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// IEEE single precision.
    #[default]
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
}

impl DType {
    /// The name used in scripts.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
        }
    }
}

/// `precision f32|bf16|f16 { loss_scale … }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PrecisionSpec {
    /// The model's compute type: gradients arrive in it, parameters are handed back in
    /// it; master weights are always f32.
    pub dtype: DType,
    /// Loss scaling.
    pub loss_scale: LossScaleSpec,
}

impl PrecisionSpec {
    /// The precision with its conventional loss scaling: dynamic for f16, none for
    /// bf16 and f32.
    pub fn with_default_scaling(dtype: DType) -> Self {
        let loss_scale = match dtype {
            DType::F16 => LossScaleSpec::Dynamic(DynamicLossScale::default()),
            DType::F32 | DType::BF16 => LossScaleSpec::None,
        };
        Self { dtype, loss_scale }
    }
}

/// How the loss is scaled before the backward pass.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossScaleSpec {
    /// No scaling (scale 1).
    #[default]
    None,
    /// A fixed scale; overflowing steps are still skipped.
    Static(f64),
    /// PyTorch `GradScaler` dynamics plus DeepSpeed's hysteresis and minimum.
    Dynamic(DynamicLossScale),
}

/// Dynamic loss scaling parameters. Defaults are PyTorch's `GradScaler` (init 2¹⁶,
/// growth 2, backoff 0.5, interval 2000) with DeepSpeed's hysteresis 1 (off) and
/// minimum scale 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DynamicLossScale {
    /// Initial scale.
    pub init: f64,
    /// Factor applied after `interval` consecutive finite steps.
    pub growth: f64,
    /// Factor applied on overflow (once hysteresis is spent).
    pub backoff: f64,
    /// Consecutive finite steps before growing.
    pub interval: u64,
    /// Overflows tolerated (skipped without shrinking) before the scale backs off;
    /// 1 means every overflow backs off. Refilled when the scale grows.
    pub hysteresis: u32,
    /// The scale never goes below this.
    pub min_scale: f64,
    /// What an overflow at the minimum scale does.
    pub at_min: AtMinScale,
}

impl Default for DynamicLossScale {
    fn default() -> Self {
        Self {
            init: 65536.0,
            growth: 2.0,
            backoff: 0.5,
            interval: 2000,
            hysteresis: 1,
            min_scale: 1.0,
            at_min: AtMinScale::Error,
        }
    }
}

/// The choice when an overflow happens while the scale is already at its minimum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AtMinScale {
    /// Stop with an error (DeepSpeed's `raise_error_at_min_scale`, its default).
    #[default]
    Error,
    /// Skip the step and keep going at the minimum.
    Skip,
}

/// `compress METHOD(args) [with error_feedback]`: a gradient compressor by name
/// (built-in or plugin) with its arguments.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CompressSpec {
    /// The method's script name (`topk`).
    pub method: String,
    /// The arguments; an argument the script gave as a schedule holds its value at
    /// step 0 here (so the method can validate it) and is listed in `scheduled`.
    pub args: regimen_plugin::Args,
    /// Arguments whose value is a schedule: the argument name and the graph output
    /// that holds its value each step ([`CompressSpec::output_name`]).
    pub scheduled: Vec<ScheduledArg>,
    /// `with error_feedback` (`Some(true)`), `error_feedback: false` (`Some(false)`),
    /// or the method's default (`None`).
    pub error_feedback: Option<bool>,
}

/// A compressor argument whose value is a schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduledArg {
    /// The argument name (`ratio`).
    pub arg: String,
    /// The graph output holding its value.
    pub output: String,
}

impl CompressSpec {
    /// Graph output name for a scheduled argument: `compress.ratio` at the top level,
    /// `group2.compress.ratio` in the second group (`group` is 0-based).
    pub fn output_name(group: Option<usize>, arg: &str) -> String {
        match group {
            None => format!("compress.{arg}"),
            Some(index) => format!("group{}.compress.{arg}", index + 1),
        }
    }
}
