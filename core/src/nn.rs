//! A small model family with hand-written forward and backward passes, so that a
//! script can train a real network without any framework: the multi-layer perceptron
//! [`Mlp`] (linear layers with ReLU or GELU between them, softmax cross-entropy on
//! top). Parameters are named like PyTorch's `nn.Sequential` of `nn.Linear`s —
//! `layers.0.weight` (`[out, in]`), `layers.0.bias` — and carry their layer index as
//! depth, so a script's globs and `layer_decay` address them as they would a real
//! model's.
//!
//! The arithmetic is f32 through ndarray's matrix products, deterministic for given
//! shapes on a given machine (matrixmultiply picks its kernel by CPU features, so a
//! CPU without AVX2/FMA may round differently); losses are summed in f64.

use ndarray::{Array2, ArrayView2, Axis};
use thiserror::Error;

use crate::problem::SplitMix64;
use crate::runtime::ParamSpec;

/// Why a model could not be built or run.
#[derive(Debug, Error, PartialEq)]
pub enum ModelError {
    /// The model description does not parse or describes no valid network.
    #[error("bad model `{spec}`: {reason}")]
    BadSpec {
        /// The description as given.
        spec: String,
        /// What is wrong, and what would be right.
        reason: String,
    },
    /// Tensors or data that do not fit the model.
    #[error("{0}")]
    Shape(String),
}

/// The nonlinearity between layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `max(0, x)`.
    Relu,
    /// GELU in PyTorch's `approximate="tanh"` form:
    /// `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`.
    Gelu,
}

impl Activation {
    /// The name used in model descriptions.
    pub fn name(self) -> &'static str {
        match self {
            Self::Relu => "relu",
            Self::Gelu => "gelu",
        }
    }
}

/// The largest width of one layer an [`Mlp`] accepts.
pub const MAX_WIDTH: usize = 1 << 16;
/// The most layers an [`Mlp`] accepts.
pub const MAX_LAYERS: usize = 64;

/// √(2/π), GELU's tanh-approximation constant.
const GELU_C: f32 = 0.797_884_6;
const GELU_A: f32 = 0.044_715;

/// A multi-layer perceptron: `widths[0]` inputs, `widths.last()` classes, one linear
/// layer between consecutive widths, the activation after every layer but the last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mlp {
    widths: Vec<usize>,
    activation: Activation,
}

/// Loss and accuracy of a model on a data set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Fraction of rows whose largest logit is the label.
    pub accuracy: f64,
}

impl Mlp {
    /// An MLP with these widths (at least an input and an output, each 1 to
    /// [`MAX_WIDTH`]; the output at least 2 classes).
    pub fn new(widths: &[usize], activation: Activation) -> Result<Self, ModelError> {
        let spec = || Self::describe_widths(widths, activation);
        let bad = |reason: String| ModelError::BadSpec {
            spec: spec(),
            reason,
        };
        if widths.len() < 2 || widths.len() > MAX_LAYERS + 1 {
            return Err(bad(format!(
                "an MLP needs an input width and 1 to {MAX_LAYERS} layer widths"
            )));
        }
        if let Some(w) = widths.iter().find(|&&w| w == 0 || w > MAX_WIDTH) {
            return Err(bad(format!("width {w} is not in 1..={MAX_WIDTH}")));
        }
        if widths.last().is_some_and(|&classes| classes < 2) {
            return Err(bad(
                "the last width is the number of classes: at least 2".into()
            ));
        }
        Ok(Self {
            widths: widths.to_vec(),
            activation,
        })
    }

    /// Parse `mlp:64,128,10` (ReLU) or `mlp:64,128,10:gelu`.
    pub fn parse(spec: &str) -> Result<Self, ModelError> {
        let bad = |reason: &str| ModelError::BadSpec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let usage = "expected `mlp:IN,HIDDEN…,CLASSES` with an optional `:relu` or `:gelu`, e.g. `mlp:64,128,10`";
        let mut parts = spec.trim().split(':');
        if parts.next() != Some("mlp") {
            return Err(bad(&format!("the only model family is `mlp`; {usage}")));
        }
        let Some(widths) = parts.next() else {
            return Err(bad(usage));
        };
        let activation = match parts.next() {
            None | Some("relu") => Activation::Relu,
            Some("gelu") => Activation::Gelu,
            Some(other) => {
                return Err(bad(&format!(
                    "unknown activation `{other}`; the activations are `relu` and `gelu`"
                )))
            }
        };
        if parts.next().is_some() {
            return Err(bad(usage));
        }
        let widths = widths
            .split(',')
            .map(|w| w.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad(&format!("the widths must be positive integers; {usage}")))?;
        Self::new(&widths, activation).map_err(|error| match error {
            ModelError::BadSpec { reason, .. } => bad(&reason),
            other => other,
        })
    }

    fn describe_widths(widths: &[usize], activation: Activation) -> String {
        let widths: Vec<String> = widths.iter().map(usize::to_string).collect();
        match activation {
            Activation::Relu => format!("mlp:{}", widths.join(",")),
            Activation::Gelu => format!("mlp:{}:gelu", widths.join(",")),
        }
    }

    /// The canonical description (`mlp:64,128,10`, `mlp:64,128,10:gelu`).
    pub fn describe(&self) -> String {
        Self::describe_widths(&self.widths, self.activation)
    }

    /// Input features.
    pub fn inputs(&self) -> usize {
        self.widths[0]
    }

    /// Output classes.
    pub fn classes(&self) -> usize {
        self.widths[self.widths.len() - 1]
    }

    /// Linear layers.
    pub fn layers(&self) -> usize {
        self.widths.len() - 1
    }

    /// The activation.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// `layers.N.weight` (`[out, in]`) and `layers.N.bias` (`[out]`) for each layer,
    /// depth `N`, in f32.
    pub fn param_specs(&self) -> Vec<ParamSpec> {
        let mut specs = Vec::with_capacity(2 * self.layers());
        for (layer, pair) in self.widths.windows(2).enumerate() {
            let depth = layer as u32;
            specs.push(
                ParamSpec::new(format!("layers.{layer}.weight"), &[pair[1], pair[0]])
                    .with_depth(depth),
            );
            specs
                .push(ParamSpec::new(format!("layers.{layer}.bias"), &[pair[1]]).with_depth(depth));
        }
        specs
    }

    /// Elements of all parameters.
    pub fn numel(&self) -> usize {
        self.widths.windows(2).map(|p| p[1] * (p[0] + 1)).sum()
    }

    /// PyTorch's `nn.Linear` initialisation: weights and biases uniform in
    /// `±1/√fan_in`, drawn from a generator keyed by `(seed, layer)`.
    pub fn init(&self, seed: u64) -> Vec<Vec<f32>> {
        let mut params = Vec::with_capacity(2 * self.layers());
        for (layer, pair) in self.widths.windows(2).enumerate() {
            let mut rng = SplitMix64::keyed(seed, INIT_STREAM, layer as u64);
            let bound = 1.0 / (pair[0] as f64).sqrt();
            let mut draw = |n: usize| -> Vec<f32> {
                (0..n).map(|_| (bound * rng.symmetric()) as f32).collect()
            };
            params.push(draw(pair[0] * pair[1]));
            params.push(draw(pair[1]));
        }
        params
    }

    fn check_params<P: AsRef<[f32]>>(&self, params: &[P]) -> Result<(), ModelError> {
        let specs = self.param_specs();
        if params.len() != specs.len() {
            return Err(ModelError::Shape(format!(
                "{} expects {} tensors, got {}",
                self.describe(),
                specs.len(),
                params.len()
            )));
        }
        for (spec, p) in specs.iter().zip(params) {
            if p.as_ref().len() != spec.numel() {
                return Err(ModelError::Shape(format!(
                    "`{}` needs {} elements, got {}",
                    spec.name,
                    spec.numel(),
                    p.as_ref().len()
                )));
            }
        }
        Ok(())
    }

    fn check_batch(&self, x: &[f32], labels: &[u32]) -> Result<(), ModelError> {
        if x.len() != labels.len() * self.inputs() {
            return Err(ModelError::Shape(format!(
                "{} rows of {} features need {} values, got {}",
                labels.len(),
                self.inputs(),
                labels.len() * self.inputs(),
                x.len()
            )));
        }
        if let Some(&label) = labels.iter().find(|&&l| l as usize >= self.classes()) {
            return Err(ModelError::Shape(format!(
                "label {label} is not one of the model's {} classes",
                self.classes()
            )));
        }
        Ok(())
    }

    /// The pre-activations of every layer for the rows `x` (row-major, `inputs()`
    /// columns); the last entry is the logits.
    fn forward<P: AsRef<[f32]>>(
        &self,
        params: &[P],
        x: ArrayView2<f32>,
    ) -> Result<Vec<Array2<f32>>, ModelError> {
        let mut pre = Vec::with_capacity(self.layers());
        for layer in 0..self.layers() {
            let (w, b) = self.layer(params, layer)?;
            let z = {
                let input = match pre.last() {
                    None => x.dot(&w.t()),
                    Some(previous) => self.activate(previous).dot(&w.t()),
                };
                input + b
            };
            pre.push(z);
        }
        Ok(pre)
    }

    fn layer<'p, P: AsRef<[f32]>>(
        &self,
        params: &'p [P],
        layer: usize,
    ) -> Result<(ArrayView2<'p, f32>, ndarray::ArrayView1<'p, f32>), ModelError> {
        let (fan_in, fan_out) = (self.widths[layer], self.widths[layer + 1]);
        let shape_error = |e: ndarray::ShapeError| ModelError::Shape(e.to_string());
        let w = ArrayView2::from_shape((fan_out, fan_in), params[2 * layer].as_ref())
            .map_err(shape_error)?;
        let b = ndarray::ArrayView1::from_shape(fan_out, params[2 * layer + 1].as_ref())
            .map_err(shape_error)?;
        Ok((w, b))
    }

    fn activate(&self, z: &Array2<f32>) -> Array2<f32> {
        match self.activation {
            Activation::Relu => z.mapv(|v| v.max(0.0)),
            Activation::Gelu => {
                z.mapv(|v| 0.5 * v * (1.0 + (GELU_C * (v + GELU_A * v * v * v)).tanh()))
            }
        }
    }

    fn activation_grad(&self, z: f32) -> f32 {
        match self.activation {
            Activation::Relu => {
                if z > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::Gelu => {
                let t = (GELU_C * (z + GELU_A * z * z * z)).tanh();
                0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * z * z)
            }
        }
    }

    /// Softmax probabilities of `logits` (in place) and the summed cross-entropy.
    fn softmax_cross_entropy(logits: &mut Array2<f32>, labels: &[u32]) -> f64 {
        let mut loss = 0.0f64;
        for (mut row, &label) in logits.rows_mut().into_iter().zip(labels) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            row.mapv_inplace(|v| (v - max).exp());
            let total: f32 = row.sum();
            row.mapv_inplace(|v| v / total);
            loss -= f64::from(row[label as usize].max(1e-30)).ln();
        }
        loss
    }

    /// Mean softmax cross-entropy of the rows `x` (row-major) with `labels`, and its
    /// gradient with respect to every parameter written into `grads` (one buffer per
    /// parameter, overwritten).
    pub fn loss_and_grad<P: AsRef<[f32]>, G: AsMut<[f32]>>(
        &self,
        params: &[P],
        x: &[f32],
        labels: &[u32],
        grads: &mut [G],
    ) -> Result<f64, ModelError> {
        self.check_params(params)?;
        self.check_batch(x, labels)?;
        if grads.len() != params.len() {
            return Err(ModelError::Shape(format!(
                "{} gradient buffers for {} parameters",
                grads.len(),
                params.len()
            )));
        }
        let rows = labels.len();
        if rows == 0 {
            return Err(ModelError::Shape("an empty batch has no loss".into()));
        }
        let x = ArrayView2::from_shape((rows, self.inputs()), x)
            .map_err(|e| ModelError::Shape(e.to_string()))?;
        let mut pre = self.forward(params, x)?;
        let mut delta = pre.pop().unwrap_or_default();
        let loss = Self::softmax_cross_entropy(&mut delta, labels);
        // d(mean loss)/d logits = (softmax − one-hot) / rows.
        for (mut row, &label) in delta.rows_mut().into_iter().zip(labels) {
            row[label as usize] -= 1.0;
        }
        let inv_rows = 1.0 / rows as f32;
        delta.mapv_inplace(|v| v * inv_rows);
        for layer in (0..self.layers()).rev() {
            let input = match layer {
                0 => x.to_owned(),
                _ => self.activate(&pre[layer - 1]),
            };
            let d_w = delta.t().dot(&input);
            let d_b = delta.sum_axis(Axis(0));
            copy_into(grads[2 * layer].as_mut(), d_w.iter().copied())?;
            copy_into(grads[2 * layer + 1].as_mut(), d_b.iter().copied())?;
            if layer > 0 {
                let (w, _) = self.layer(params, layer)?;
                let mut d_input = delta.dot(&w);
                ndarray::Zip::from(&mut d_input)
                    .and(&pre[layer - 1])
                    .for_each(|d, &z| *d *= self.activation_grad(z));
                delta = d_input;
            }
        }
        Ok(loss / rows as f64)
    }

    /// Mean cross-entropy and accuracy on the rows `x` with `labels`, in chunks of
    /// 1024 rows so that memory stays bounded on large sets.
    pub fn evaluate<P: AsRef<[f32]>>(
        &self,
        params: &[P],
        x: &[f32],
        labels: &[u32],
    ) -> Result<Evaluation, ModelError> {
        self.check_params(params)?;
        self.check_batch(x, labels)?;
        if labels.is_empty() {
            return Err(ModelError::Shape("cannot evaluate on no rows".into()));
        }
        const CHUNK: usize = 1024;
        let (mut loss, mut correct) = (0.0f64, 0usize);
        for (xs, ys) in x.chunks(CHUNK * self.inputs()).zip(labels.chunks(CHUNK)) {
            let view = ArrayView2::from_shape((ys.len(), self.inputs()), xs)
                .map_err(|e| ModelError::Shape(e.to_string()))?;
            let mut logits = self.forward(params, view)?.pop().unwrap_or_default();
            for (row, &label) in logits.rows().into_iter().zip(ys) {
                let best = row
                    .iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (k, &v)| {
                        if v > best.1 {
                            (k, v)
                        } else {
                            best
                        }
                    });
                correct += usize::from(best.0 == label as usize);
            }
            loss += Self::softmax_cross_entropy(&mut logits, ys);
        }
        Ok(Evaluation {
            loss: loss / labels.len() as f64,
            accuracy: correct as f64 / labels.len() as f64,
        })
    }
}

/// Random stream of the initial weights (see [`SplitMix64::keyed`]).
const INIT_STREAM: u64 = 21;

fn copy_into(
    out: &mut [f32],
    values: impl ExactSizeIterator<Item = f32>,
) -> Result<(), ModelError> {
    if out.len() != values.len() {
        return Err(ModelError::Shape(format!(
            "a gradient buffer of {} elements for {} values",
            out.len(),
            values.len()
        )));
    }
    for (o, v) in out.iter_mut().zip(values) {
        *o = v;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_describe() {
        let mlp = Mlp::parse("mlp:64,128,10").unwrap();
        assert_eq!((mlp.inputs(), mlp.classes(), mlp.layers()), (64, 10, 2));
        assert_eq!(mlp.describe(), "mlp:64,128,10");
        assert_eq!(mlp.numel(), 64 * 128 + 128 + 128 * 10 + 10);
        assert_eq!(
            Mlp::parse("mlp:4,3:gelu").unwrap().activation(),
            Activation::Gelu
        );
        for bad in [
            "mlp",
            "cnn:1,2",
            "mlp:64",
            "mlp:64,0,10",
            "mlp:64,x",
            "mlp:4,1",
            "mlp:4,3:tanh",
            "mlp:4,3:relu:x",
        ] {
            assert!(Mlp::parse(bad).is_err(), "{bad}");
        }
        let names: Vec<String> = mlp.param_specs().into_iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "layers.0.weight",
                "layers.0.bias",
                "layers.1.weight",
                "layers.1.bias"
            ]
        );
    }

    #[test]
    fn bad_tensors_are_errors_not_panics() {
        let mlp = Mlp::parse("mlp:3,4,2").unwrap();
        let params = mlp.init(0);
        let mut grads: Vec<Vec<f32>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
        assert!(mlp
            .loss_and_grad(&params, &[0.0; 5], &[0, 1], &mut grads)
            .is_err());
        assert!(mlp
            .loss_and_grad(&params, &[0.0; 3], &[2], &mut grads)
            .is_err());
        assert!(mlp
            .loss_and_grad(&params[..3], &[0.0; 3], &[1], &mut grads)
            .is_err());
        assert!(mlp.evaluate(&params, &[], &[]).is_err());
    }
}
