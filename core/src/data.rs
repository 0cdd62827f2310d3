//! Labelled data sets for real training runs: tabular classification data read from
//! CSV (optionally gzipped, as the bundled UCI digits are), a deterministic stratified
//! train/test split, and a seeded synthetic "teacher network" generator for scale
//! tests. Everything random is drawn from [`SplitMix64`] streams, so the same seed
//! gives the same bits on every platform.

use std::io::Read;

use thiserror::Error;

use crate::problem::SplitMix64;

/// Why a data set could not be built.
#[derive(Debug, Error, PartialEq)]
pub enum DataError {
    /// The gzip stream is corrupt or not gzip at all.
    #[error("cannot decompress the data: {0}")]
    Gzip(String),
    /// The text is not UTF-8.
    #[error("the data is not UTF-8 text")]
    NotUtf8,
    /// A field is not a number, or a label is not a non-negative integer.
    #[error("line {line}, column {column}: {message}")]
    Field {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A row has another number of columns than the first one.
    #[error("line {line} has {found} columns, but the first row has {expected}")]
    Ragged {
        /// 1-based line.
        line: usize,
        /// Columns on that line.
        found: usize,
        /// Columns of the first row.
        expected: usize,
    },
    /// No rows, or rows without a feature column.
    #[error("the data has no rows with features and a label")]
    Empty,
    /// A size argument is out of range.
    #[error("{0}")]
    BadSize(String),
}

/// A classification data set: `len()` rows of `features` f32 values (row-major in
/// `x`) and a label in `0..classes` each.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Features per row.
    pub features: usize,
    /// Number of classes (one more than the largest label).
    pub classes: usize,
    /// Row-major features, `len() * features` values.
    pub x: Vec<f32>,
    /// One label per row.
    pub labels: Vec<u32>,
}

/// A train/test split.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    /// Rows to train on.
    pub train: Dataset,
    /// Held-out rows.
    pub test: Dataset,
}

/// The largest number of classes a CSV label may imply (a guard against a stray huge
/// number in the label column allocating a giant output layer).
pub const MAX_CLASSES: u32 = 100_000;

/// Random streams of this module (see [`SplitMix64::keyed`]).
mod stream {
    pub const SPLIT: u64 = 10;
    pub const TEACHER_WEIGHTS: u64 = 11;
    pub const TEACHER_INPUTS: u64 = 12;
}

impl Dataset {
    /// Rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Parse CSV text without a header: every column but the last is a feature
    /// (multiplied by `scale`), the last is the integer class label. Empty lines are
    /// ignored.
    pub fn from_csv(text: &str, scale: f32) -> Result<Self, DataError> {
        let mut x = Vec::new();
        let mut labels = Vec::new();
        let mut columns = None;
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let expected = *columns.get_or_insert(fields.len());
            if fields.len() != expected {
                return Err(DataError::Ragged {
                    line: line_no,
                    found: fields.len(),
                    expected,
                });
            }
            let Some((label, features)) = fields.split_last() else {
                continue;
            };
            for (column, field) in features.iter().enumerate() {
                let value: f32 = field.parse().map_err(|_| DataError::Field {
                    line: line_no,
                    column: column + 1,
                    message: format!("`{field}` is not a number"),
                })?;
                if !value.is_finite() {
                    return Err(DataError::Field {
                        line: line_no,
                        column: column + 1,
                        message: format!("`{field}` is not finite"),
                    });
                }
                x.push(value * scale);
            }
            labels.push(parse_label(label, line_no, fields.len())?);
        }
        let features = columns.unwrap_or(0).saturating_sub(1);
        if labels.is_empty() || features == 0 {
            return Err(DataError::Empty);
        }
        let classes = labels.iter().copied().max().unwrap_or(0) as usize + 1;
        Ok(Self {
            features,
            classes,
            x,
            labels,
        })
    }

    /// [`Dataset::from_csv`] of gzipped CSV bytes.
    pub fn from_csv_gz(bytes: &[u8], scale: f32) -> Result<Self, DataError> {
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut text)
            .map_err(|error| DataError::Gzip(error.to_string()))?;
        let text = String::from_utf8(text).map_err(|_| DataError::NotUtf8)?;
        Self::from_csv(&text, scale)
    }

    /// The rows at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Self {
        let mut x = Vec::with_capacity(indices.len() * self.features);
        let mut labels = Vec::with_capacity(indices.len());
        self.gather(indices, &mut x, &mut labels);
        Self {
            features: self.features,
            classes: self.classes,
            x,
            labels,
        }
    }

    /// Append the features and labels of the rows at `indices` to `x` and `labels`
    /// (a minibatch, without allocating a new data set). Out-of-range indices are
    /// skipped.
    pub fn gather(&self, indices: &[usize], x: &mut Vec<f32>, labels: &mut Vec<u32>) {
        for &i in indices {
            if let (Some(row), Some(&label)) = (
                self.x.get(i * self.features..(i + 1) * self.features),
                self.labels.get(i),
            ) {
                x.extend_from_slice(row);
                labels.push(label);
            }
        }
    }

    /// A stratified split: within each class the rows are shuffled by a generator
    /// keyed by `(seed, class)` and the first `round(n_class · test_fraction)` go to
    /// the test set. Both sets keep the original row order, so the split depends on
    /// nothing but the data, the fraction and the seed.
    pub fn stratified_split(&self, test_fraction: f64, seed: u64) -> Result<Split, DataError> {
        if !(test_fraction > 0.0 && test_fraction < 1.0) {
            return Err(DataError::BadSize(format!(
                "the test fraction must be between 0 and 1, got {test_fraction}"
            )));
        }
        let mut is_test = vec![false; self.len()];
        for class in 0..self.classes {
            let mut rows: Vec<usize> = (0..self.len())
                .filter(|&i| self.labels[i] as usize == class)
                .collect();
            SplitMix64::keyed(seed, stream::SPLIT, class as u64).shuffle(&mut rows);
            let take = (rows.len() as f64 * test_fraction).round() as usize;
            for &row in &rows[..take.min(rows.len())] {
                is_test[row] = true;
            }
        }
        let (test, train): (Vec<usize>, Vec<usize>) = (0..self.len()).partition(|&i| is_test[i]);
        if train.is_empty() || test.is_empty() {
            return Err(DataError::BadSize(format!(
                "a split of {} rows with test fraction {test_fraction} leaves a set empty",
                self.len()
            )));
        }
        Ok(Split {
            train: self.subset(&train),
            test: self.subset(&test),
        })
    }

    /// Class counts, `classes` entries.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes];
        for &label in &self.labels {
            counts[label as usize] += 1;
        }
        counts
    }
}

fn parse_label(field: &str, line: usize, column: usize) -> Result<u32, DataError> {
    // Labels are often written as floats ("3.0"): accept integral values.
    let value: f64 = field.parse().map_err(|_| DataError::Field {
        line,
        column,
        message: format!("the label `{field}` is not a number"),
    })?;
    if value.fract() != 0.0 || !(0.0..f64::from(MAX_CLASSES)).contains(&value) {
        return Err(DataError::Field {
            line,
            column,
            message: format!(
                "the label `{field}` is not a class index (an integer in 0..{MAX_CLASSES})"
            ),
        });
    }
    Ok(value as u32)
}

/// A synthetic classification task: inputs `x ~ N(0, I)` of `features` dimensions,
/// labelled by a fixed random teacher network `argmax(V · tanh(U·x))` with `hidden`
/// tanh units. Learnable by an MLP of similar width, of any size, seeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TeacherSpec {
    /// Rows to generate.
    pub samples: usize,
    /// Input dimensions.
    pub features: usize,
    /// Classes.
    pub classes: usize,
    /// Hidden units of the teacher.
    pub hidden: usize,
    /// Seed of the teacher's weights and of the inputs.
    pub seed: u64,
}

impl Default for TeacherSpec {
    /// 4 000 rows of 32 features in 10 classes, a teacher of 64 units, seed 0.
    fn default() -> Self {
        Self {
            samples: 4000,
            features: 32,
            classes: 10,
            hidden: 64,
            seed: 0,
        }
    }
}

/// The most rows × features [`Dataset::teacher`] generates (1 GiB of f32).
pub const MAX_TEACHER_VALUES: usize = 1 << 28;

impl Dataset {
    /// The teacher-network task of `spec` (see [`TeacherSpec`]).
    pub fn teacher(spec: &TeacherSpec) -> Result<Self, DataError> {
        let TeacherSpec {
            samples,
            features,
            classes,
            hidden,
            seed,
        } = *spec;
        if samples < 2
            || features == 0
            || hidden == 0
            || !(2..=MAX_CLASSES as usize).contains(&classes)
        {
            return Err(DataError::BadSize(format!(
                "a teacher task needs at least 2 samples, 1 feature, 1 hidden unit and 2..{MAX_CLASSES} classes \
                 (got {samples} samples, {features} features, {hidden} hidden, {classes} classes)"
            )));
        }
        if samples.saturating_mul(features) > MAX_TEACHER_VALUES {
            return Err(DataError::BadSize(format!(
                "{samples} samples × {features} features is more than {MAX_TEACHER_VALUES} values"
            )));
        }
        let mut rng = SplitMix64::keyed(seed, stream::TEACHER_WEIGHTS, 0);
        // Weights scaled by 1/√fan_in keep the pre-activations of order 1, so the
        // tanh units are neither linear nor saturated.
        let u_scale = 1.0 / (features as f64).sqrt();
        let u: Vec<f64> = (0..hidden * features)
            .map(|_| u_scale * rng.normal())
            .collect();
        let v_scale = 1.0 / (hidden as f64).sqrt();
        let v: Vec<f64> = (0..classes * hidden)
            .map(|_| v_scale * rng.normal())
            .collect();
        let mut x = Vec::with_capacity(samples * features);
        let mut labels = Vec::with_capacity(samples);
        let mut h = vec![0.0f64; hidden];
        for row in 0..samples {
            let mut rng = SplitMix64::keyed(seed, stream::TEACHER_INPUTS, row as u64);
            let start = x.len();
            x.extend((0..features).map(|_| rng.normal() as f32));
            let input = &x[start..];
            for (j, h) in h.iter_mut().enumerate() {
                let w = &u[j * features..][..features];
                *h = w
                    .iter()
                    .zip(input)
                    .map(|(w, &x)| w * f64::from(x))
                    .sum::<f64>()
                    .tanh();
            }
            let mut best = (0usize, f64::NEG_INFINITY);
            for k in 0..classes {
                let logit: f64 = v[k * hidden..][..hidden]
                    .iter()
                    .zip(&h)
                    .map(|(v, h)| v * h)
                    .sum();
                if logit > best.1 {
                    best = (k, logit);
                }
            }
            labels.push(best.0 as u32);
        }
        Ok(Self {
            features,
            classes,
            x,
            labels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_and_errors() {
        let data = Dataset::from_csv("0,16,1\n8,4,0\n\n2,2,2.0\n", 1.0 / 16.0).unwrap();
        assert_eq!((data.features, data.classes, data.len()), (2, 3, 3));
        assert_eq!(data.x, vec![0.0, 1.0, 0.5, 0.25, 0.125, 0.125]);
        assert_eq!(data.labels, vec![1, 0, 2]);
        assert!(matches!(
            Dataset::from_csv("1,2,0\n1,0\n", 1.0),
            Err(DataError::Ragged { line: 2, .. })
        ));
        assert!(matches!(
            Dataset::from_csv("1,x,0\n", 1.0),
            Err(DataError::Field {
                line: 1,
                column: 2,
                ..
            })
        ));
        assert!(matches!(
            Dataset::from_csv("1,2,0.5\n", 1.0),
            Err(DataError::Field { column: 3, .. })
        ));
        assert!(matches!(
            Dataset::from_csv("1,2,-1\n", 1.0),
            Err(DataError::Field { .. })
        ));
        assert_eq!(Dataset::from_csv("\n", 1.0), Err(DataError::Empty));
        assert_eq!(Dataset::from_csv("3\n", 1.0), Err(DataError::Empty));
        assert!(matches!(
            Dataset::from_csv_gz(b"not gzip", 1.0),
            Err(DataError::Gzip(_))
        ));
    }

    #[test]
    fn stratified_split_is_deterministic_and_keeps_class_proportions() {
        let text: String = (0..100).map(|i| format!("{i},{}\n", i % 4)).collect();
        let data = Dataset::from_csv(&text, 1.0).unwrap();
        let split = data.stratified_split(0.2, 7).unwrap();
        assert_eq!((split.train.len(), split.test.len()), (80, 20));
        assert_eq!(split.test.class_counts(), vec![5; 4]);
        assert_eq!(split, data.stratified_split(0.2, 7).unwrap());
        assert_ne!(split.test, data.stratified_split(0.2, 8).unwrap().test);
        assert!(data.stratified_split(1.0, 0).is_err());
    }

    #[test]
    fn teacher_is_seeded_and_uses_every_class() {
        let spec = TeacherSpec {
            samples: 2000,
            features: 8,
            classes: 4,
            hidden: 16,
            seed: 3,
        };
        let a = Dataset::teacher(&spec).unwrap();
        assert_eq!(a, Dataset::teacher(&spec).unwrap());
        assert_ne!(
            a,
            Dataset::teacher(&TeacherSpec { seed: 4, ..spec }).unwrap()
        );
        assert_eq!((a.len(), a.features, a.classes), (2000, 8, 4));
        // No class is vanishingly rare (each gets at least 5% of the rows).
        assert!(
            a.class_counts().iter().all(|&n| n >= 100),
            "{:?}",
            a.class_counts()
        );
        assert!(Dataset::teacher(&TeacherSpec { classes: 1, ..spec }).is_err());
    }
}
