//! AdaBatch (Devarakonda, Naumov & Garland 2017, "AdaBatch: Adaptive Batch Sizes for
//! Training Deep Neural Networks") as a Regimen batch-controller plugin: the batch
//! size grows by a fixed factor every N epochs, and the learning rate is scaled with
//! it, which the paper shows behaves like decaying the learning rate while making
//! later epochs cheaper.
//!
//! # The rule
//!
//! With `b₀` the batch of the first observed step, `e = samples / samples_per_epoch`
//! the epochs done after the observed step, `every` and `factor` the arguments:
//!
//! ```text
//! k     = ⌊e / every⌋
//! b     = min(round(b₀ · factor^k), max)
//! scale = b / b₀ (lr_scale: linear, the paper's choice), √(b / b₀) (sqrt), or none
//! ```
//!
//! `every` is a number of epochs (a plain number: an epoch's length in steps changes
//! as the batch grows, so it cannot be converted to steps once). The controller needs
//! the dataset size; without it `observe` is an error.
//!
//! # State
//!
//! `b₀`, 8 bytes little-endian (0 before the first step), so a resumed run keeps
//! scaling from the same base.
//!
//! A script uses it as `batch adabatch(every: 2, factor: 2, max: 1024)` after its
//! `plugin` statement; the host's batch control asks it for the next batch after
//! every step, bounds the answer by the statement's `min`/`max`/`multiple_of` (this
//! plugin receives `max` too), and uses its `lr_scale` as the step's lr factor.

use regimen_plugin::export::{ControllerExport, Param, PluginDef};
use regimen_plugin::{
    ArgError, Args, BatchController, BatchDecision, BatchMetrics, ControllerError,
};

/// The script name.
pub const NAME: &str = "adabatch";

/// The plugin this crate exports.
pub const PLUGIN: PluginDef = PluginDef {
    name: "regimen-adabatch",
    version: env!("CARGO_PKG_VERSION"),
    compressors: &[],
    controllers: &[ControllerExport {
        name: NAME,
        description:
            "AdaBatch: multiply the batch by `factor` every `every` epochs, lr scaled with it",
        params: &[
            Param::number("every", "epochs between two increases"),
            Param::number("factor", "batch multiplier at each increase").default("2"),
            Param::number("max", "largest batch size").default("unbounded"),
            Param::text(
                "lr_scale",
                "how the lr follows the batch: linear, sqrt or none",
            )
            .default("linear"),
        ],
        thread_safe: true,
        build,
    }],
};

regimen_plugin::export_plugin!(PLUGIN);

/// How the learning rate follows the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LrScale {
    /// `b / b₀` (Goyal et al.'s linear scaling; the paper's choice).
    Linear,
    /// `√(b / b₀)`.
    Sqrt,
    /// The lr is left alone.
    None,
}

/// The controller.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaBatch {
    every: f64,
    factor: f64,
    max: Option<u64>,
    lr_scale: LrScale,
    /// The first observed batch, 0 before the first step.
    base: u64,
}

fn refuse(argument: &str, message: impl Into<String>) -> ArgError {
    ArgError {
        argument: Some(argument.to_owned()),
        message: message.into(),
    }
}

/// Build `adabatch` from the script's arguments.
pub fn build(args: &Args) -> Result<Box<dyn BatchController>, ArgError> {
    Ok(Box::new(AdaBatch::new(args)?))
}

impl AdaBatch {
    /// From the script's arguments.
    pub fn new(args: &Args) -> Result<Self, ArgError> {
        args.only(&["every", "factor", "max", "lr_scale"])?;
        let every = args.number("every", None)?;
        if !(every.is_finite() && every > 0.0) {
            return Err(refuse(
                "every",
                format!("must be a positive number of epochs, got {every}"),
            ));
        }
        let factor = args.number("factor", Some(2.0))?;
        if !(factor.is_finite() && factor >= 1.0) {
            return Err(refuse(
                "factor",
                format!("must be at least 1, got {factor}"),
            ));
        }
        let max = match args.get("max") {
            None => None,
            Some(_) => {
                let max = args.number("max", None)?;
                if !(max.is_finite() && max >= 1.0 && max.fract() == 0.0) {
                    return Err(refuse(
                        "max",
                        format!("must be a whole batch size ≥ 1, got {max}"),
                    ));
                }
                Some(max as u64)
            }
        };
        let lr_scale = match args.text("lr_scale", "linear")? {
            "linear" => LrScale::Linear,
            "sqrt" => LrScale::Sqrt,
            "none" => LrScale::None,
            other => {
                return Err(refuse(
                    "lr_scale",
                    format!("must be `linear`, `sqrt` or `none`, got `{other}`"),
                ))
            }
        };
        Ok(Self {
            every,
            factor,
            max,
            lr_scale,
            base: 0,
        })
    }
}

impl BatchController for AdaBatch {
    fn name(&self) -> &str {
        NAME
    }

    fn observe(&mut self, metrics: &BatchMetrics) -> Result<BatchDecision, ControllerError> {
        let epoch = metrics.epoch().ok_or_else(|| {
            ControllerError::Failed("adabatch needs the dataset size (samples per epoch)".into())
        })?;
        if self.base == 0 {
            self.base = metrics.batch.max(1);
        }
        let k = (epoch / self.every).floor();
        let grown = (self.base as f64 * self.factor.powf(k)).round();
        let cap = self.max.map_or(f64::from(u32::MAX), |m| m as f64);
        let batch = grown.clamp(1.0, cap) as u64;
        let ratio = batch as f64 / self.base as f64;
        Ok(BatchDecision {
            batch,
            lr_scale: match self.lr_scale {
                LrScale::Linear => Some(ratio),
                LrScale::Sqrt => Some(ratio.sqrt()),
                LrScale::None => None,
            },
        })
    }

    fn save_state(&self, out: &mut Vec<u8>) -> Result<(), ControllerError> {
        out.extend_from_slice(&self.base.to_le_bytes());
        Ok(())
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), ControllerError> {
        let bytes: [u8; 8] = state.try_into().map_err(|_| {
            ControllerError::State(format!(
                "adabatch keeps 8 bytes of state, got {}",
                state.len()
            ))
        })?;
        self.base = u64::from_le_bytes(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regimen_plugin::ArgValue;

    fn args(pairs: &[(&str, ArgValue)]) -> Args {
        pairs
            .iter()
            .fold(Args::new(), |a, (k, v)| a.with(*k, v.clone()))
    }

    fn metrics(step: u64, samples: u64, batch: u64) -> BatchMetrics {
        BatchMetrics {
            samples_per_epoch: Some(1000),
            ..BatchMetrics::new(step, samples, batch)
        }
    }

    #[test]
    fn batch_doubles_every_n_epochs_with_linear_lr() {
        let mut c = AdaBatch::new(&args(&[("every", ArgValue::Number(2.0))])).unwrap();
        // Epoch 0.1: base 100; epoch 2.0: ×2; epoch 4.5: ×4.
        let d = c.observe(&metrics(0, 100, 100)).unwrap();
        assert_eq!((d.batch, d.lr_scale), (100, Some(1.0)));
        let d = c.observe(&metrics(9, 2000, 100)).unwrap();
        assert_eq!((d.batch, d.lr_scale), (200, Some(2.0)));
        let d = c.observe(&metrics(20, 4500, 200)).unwrap();
        assert_eq!((d.batch, d.lr_scale), (400, Some(4.0)));
    }

    #[test]
    fn max_caps_and_sqrt_scales() {
        let a = args(&[
            ("every", ArgValue::Number(1.0)),
            ("factor", ArgValue::Number(4.0)),
            ("max", ArgValue::Number(800.0)),
            ("lr_scale", ArgValue::Text("sqrt".into())),
        ]);
        let mut c = AdaBatch::new(&a).unwrap();
        c.observe(&metrics(0, 100, 100)).unwrap();
        let d = c.observe(&metrics(30, 3000, 400)).unwrap();
        assert_eq!(d.batch, 800);
        assert_eq!(d.lr_scale, Some(8f64.sqrt()));
    }

    #[test]
    fn state_round_trips_and_bad_arguments_name_themselves() {
        let mut c = AdaBatch::new(&args(&[("every", ArgValue::Number(1.0))])).unwrap();
        c.observe(&metrics(0, 64, 64)).unwrap();
        let mut state = Vec::new();
        c.save_state(&mut state).unwrap();
        let mut d = AdaBatch::new(&args(&[("every", ArgValue::Number(1.0))])).unwrap();
        d.load_state(&state).unwrap();
        assert_eq!(c, d);
        assert!(d.load_state(&[1, 2]).is_err());
        let err = AdaBatch::new(&args(&[("every", ArgValue::Number(-1.0))])).unwrap_err();
        assert_eq!(err.argument.as_deref(), Some("every"));
        let err = AdaBatch::new(&Args::new()).unwrap_err();
        assert_eq!(err.to_string(), "argument `every`: is required");
        let mut no_size = AdaBatch::new(&args(&[("every", ArgValue::Number(1.0))])).unwrap();
        assert!(no_size.observe(&BatchMetrics::new(0, 10, 10)).is_err());
    }
}
