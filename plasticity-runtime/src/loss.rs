//! Losses on the readout, and the error signal `∂E/∂y^t` they send back.

use ndarray::{Array2, ArrayView1, ArrayView2, ArrayView3};

use crate::error::{Error, Result, check_finite, check_shape, invalid};
use crate::real::{Float, Real};

/// Which steps of a sequence a loss is computed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// Every step.
    All,
    /// The last `n` steps.
    Last(usize),
    /// Steps `start..end`.
    Range(usize, usize),
}

impl Window {
    /// The steps `[start, end)` of a sequence of `t_len` steps.
    pub fn bounds(&self, t_len: usize) -> (usize, usize) {
        match *self {
            Window::All => (0, t_len),
            Window::Last(n) => (t_len.saturating_sub(n), t_len),
            Window::Range(a, b) => (a.min(t_len), b.min(t_len)),
        }
    }
}

/// How a per-step loss is reduced over the steps of its window (it is always averaged over
/// the batch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reduction {
    /// `E = 1/(B·W) Σ_b Σ_t E_b^t` over the `W` steps of the window.
    #[default]
    MeanOverSteps,
    /// `E = 1/B Σ_b Σ_t E_b^t`: the loss summed over steps, as Bellec's TensorFlow code and
    /// NEST's regression task define it. The gradient is `W` times the mean's.
    SumOverSteps,
}

impl Reduction {
    /// The factor of each step's per-sample loss for a batch of `batch` and a window of
    /// `steps` steps.
    pub(crate) fn scale(self, batch: usize, steps: usize) -> f64 {
        match self {
            Reduction::MeanOverSteps => 1.0 / (batch * steps).max(1) as f64,
            Reduction::SumOverSteps => 1.0 / batch.max(1) as f64,
        }
    }
}

/// The loss `E`, averaged over the batch and over the steps it is computed on (see
/// [`Reduction`] for the sum over steps instead).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loss {
    /// Softmax cross-entropy of the readout at each step of the window (class targets).
    CrossEntropy(Window),
    /// Softmax cross-entropy of the readout summed over the window (class targets).
    /// In e-prop its error signal is known only at the end of the sequence.
    CrossEntropySummed(Window),
    /// `½ ‖y − y*‖²` at each step of the window (regression targets).
    MeanSquared(Window),
}

impl Loss {
    /// The window.
    pub fn window(&self) -> Window {
        match *self {
            Loss::CrossEntropy(w) | Loss::CrossEntropySummed(w) | Loss::MeanSquared(w) => w,
        }
    }
    /// Whether targets are class labels.
    pub fn is_classification(&self) -> bool {
        !matches!(self, Loss::MeanSquared(_))
    }
}

/// Targets of a batch.
#[derive(Clone, Copy, Debug)]
pub enum Targets<'a, F> {
    /// One class per sample, `[B]`, the same at every step.
    Classes(&'a [usize]),
    /// A class per step and sample, `[T, B]`.
    ClassSeries(ArrayView2<'a, usize>),
    /// Regression targets per step, `[T, B, n_out]`.
    Series(ArrayView3<'a, F>),
}

/// Targets of one step.
#[derive(Clone, Copy, Debug)]
pub enum StepTargets<'a, F> {
    /// A class per sample, `[B]`.
    Classes(ArrayView1<'a, usize>),
    /// Regression targets, `[B, n_out]`.
    Values(ArrayView2<'a, F>),
}

impl<'a, F: Float> Targets<'a, F> {
    /// Checks the targets against the loss, sequence length, batch and readout size.
    pub fn validate(&self, loss: &Loss, t_len: usize, batch: usize, n_out: usize) -> Result<()> {
        match (self, loss.is_classification()) {
            (Targets::Classes(c), true) => {
                check_shape("targets", &[c.len()], &[batch])?;
                check_classes(c.iter().copied(), n_out)
            }
            (Targets::ClassSeries(c), true) => {
                check_shape("targets", c.shape(), &[t_len, batch])?;
                check_classes(c.iter().copied(), n_out)
            }
            (Targets::Series(y), false) => {
                check_shape("targets", y.shape(), &[t_len, batch, n_out])?;
                check_finite("targets", y.iter().copied())
            }
            (_, true) => Err(invalid(
                "targets",
                "regression values",
                "class labels for a cross-entropy loss",
            )),
            (_, false) => Err(invalid(
                "targets",
                "class labels",
                "regression values [T, B, n_out] for a mean-squared loss",
            )),
        }
    }

    /// The targets of step `t`.
    pub fn at(&self, t: usize) -> StepTargets<'a, F> {
        match *self {
            Targets::Classes(c) => StepTargets::Classes(ArrayView1::from(c)),
            Targets::ClassSeries(c) => StepTargets::Classes(c.index_axis_move(ndarray::Axis(0), t)),
            Targets::Series(y) => StepTargets::Values(y.index_axis_move(ndarray::Axis(0), t)),
        }
    }

    /// The targets of the samples `samples` of the batch.
    pub(crate) fn samples(&self, samples: std::ops::Range<usize>) -> Targets<'a, F> {
        match *self {
            Targets::Classes(c) => Targets::Classes(&c[samples]),
            Targets::ClassSeries(c) => Targets::ClassSeries(c.slice_move(ndarray::s![.., samples])),
            Targets::Series(y) => Targets::Series(y.slice_move(ndarray::s![.., samples, ..])),
        }
    }
}

impl<'a, F> StepTargets<'a, F> {
    /// The targets of the samples `samples` of the batch.
    pub(crate) fn samples(self, samples: std::ops::Range<usize>) -> StepTargets<'a, F> {
        match self {
            StepTargets::Classes(c) => StepTargets::Classes(c.slice_move(ndarray::s![samples])),
            StepTargets::Values(v) => StepTargets::Values(v.slice_move(ndarray::s![samples, ..])),
        }
    }
}

fn check_classes(classes: impl Iterator<Item = usize>, n_out: usize) -> Result<()> {
    for (sample, class) in classes.enumerate() {
        if class >= n_out {
            return Err(Error::Class {
                sample,
                class,
                classes: n_out,
            });
        }
    }
    Ok(())
}

/// Writes `softmax(y)` row-wise into `out`.
pub(crate) fn softmax<F: Float>(y: &ArrayView2<F>, out: &mut Array2<F>) {
    for (row, mut o) in y.outer_iter().zip(out.outer_iter_mut()) {
        let max = row
            .iter()
            .copied()
            .fold(F::from_f64(f64::NEG_INFINITY), |a, b| a.max(b));
        let mut sum = <F as Real>::zero();
        for (oi, &yi) in o.iter_mut().zip(row.iter()) {
            *oi = (yi - max).exp();
            sum += *oi;
        }
        for oi in o.iter_mut() {
            *oi = *oi / sum;
        }
    }
}

/// Loss value and error signal of one step for per-step losses: writes
/// `err = scale · ∂E_t/∂y` and returns `scale · E_t` (summed over the batch), plus the
/// number of correct predictions (classification).
pub(crate) fn step_error<F: Float>(
    loss: &Loss,
    y: &ArrayView2<F>,
    targets: StepTargets<'_, F>,
    scale: F,
    probs: &mut Array2<F>,
    err: &mut Array2<F>,
) -> (f64, usize) {
    let mut value = 0.0;
    let mut correct = 0;
    match (loss, targets) {
        (Loss::MeanSquared(_), StepTargets::Values(t)) => {
            for ((e, &yi), &ti) in err.iter_mut().zip(y.iter()).zip(t.iter()) {
                let d = yi - ti;
                *e = scale * d;
                value += 0.5 * (d * d).to_f64();
            }
        }
        (_, StepTargets::Classes(c)) => {
            softmax(y, probs);
            for (b, (mut e, p)) in err.outer_iter_mut().zip(probs.outer_iter()).enumerate() {
                let class = c[b];
                let mut best = 0;
                for (i, (ei, &pi)) in e.iter_mut().zip(p.iter()).enumerate() {
                    let target = if i == class {
                        <F as Real>::one()
                    } else {
                        <F as Real>::zero()
                    };
                    *ei = scale * (pi - target);
                    if pi > p[best] {
                        best = i;
                    }
                }
                correct += usize::from(best == class);
                value -= p[class].to_f64().max(1e-300).ln();
            }
        }
        _ => unreachable!("targets are validated against the loss before training"),
    }
    (value * scale.to_f64(), correct)
}
