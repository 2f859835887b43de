//! The trainable parameters of a network, and the one walk over them.
//!
//! A network's weights, biases, learnable neuron parameters and readout are held in one
//! [`Parameters`]; gradients have the same type ([`Gradients`]). [`Parameters::slots`] fixes
//! which tensors exist and in which order; every consumer (optimiser moments, gradient norms,
//! clipping, zeroing, checkpoints) walks that order, so nothing can pair the moment of one
//! tensor with another tensor.

use ndarray::{Array1, Array2};

use crate::real::{Float, Real};

/// One trainable tensor, in walk order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    /// Learnable neuron parameters of population `p`, `[q, n]`.
    Learnable(usize),
    /// Bias of population `p`, `[ports, n]`.
    Bias(usize),
    /// Weights of projection `i`: `[n_post, n_pre]` (dense) or `[synapses]` (sparse, in the
    /// order of [`crate::network::Projection::synapses`]).
    Projection(usize),
    /// Readout weights from the `s`-th readout source, `[n_out, n]`.
    ReadoutWeights(usize),
    /// Readout bias, `[n_out]`.
    ReadoutBias,
}

/// Every trainable tensor of a network (or the gradient of each).
#[derive(Clone, Debug, PartialEq)]
pub struct Parameters<F> {
    /// Per population, its learnable neuron parameters `[q, n]` (one row per parameter).
    pub learnable: Vec<Array2<F>>,
    /// Per population, its bias `[ports, n]`, if it has one.
    pub bias: Vec<Option<Array2<F>>>,
    /// Per projection, its weights as a flat vector: row-major `[n_post, n_pre]` for a dense
    /// projection, one value per synapse for a sparse one.
    pub projections: Vec<Vec<F>>,
    /// Per readout source population, `W^out` `[n_out, n]`.
    pub readout_w: Vec<Array2<F>>,
    /// Readout bias `[n_out]`, if any.
    pub readout_b: Option<Array1<F>>,
}

/// Gradients have the shape of the parameters.
pub type Gradients<F> = Parameters<F>;

impl<F: Float> Parameters<F> {
    /// The tensors, in the one order every consumer uses: per population its learnable
    /// parameters (when it has any) and bias, then every projection, then the readout.
    /// Empty tensors are skipped.
    pub fn slots(&self) -> impl Iterator<Item = Slot> + '_ {
        let pops = (0..self.learnable.len()).flat_map(move |p| {
            let learn = (!self.learnable[p].is_empty()).then_some(Slot::Learnable(p));
            let bias = self.bias[p].is_some().then_some(Slot::Bias(p));
            learn.into_iter().chain(bias)
        });
        let projs = (0..self.projections.len())
            .filter(move |&i| !self.projections[i].is_empty())
            .map(Slot::Projection);
        let readout = (0..self.readout_w.len()).map(Slot::ReadoutWeights);
        pops.chain(projs)
            .chain(readout)
            .chain(self.readout_b.is_some().then_some(Slot::ReadoutBias))
    }

    /// The tensor in `slot`, flat. Every array the runtime creates is in standard layout, and
    /// [`crate::Network::validate`] rejects any other.
    pub fn get(&self, slot: Slot) -> &[F] {
        let flat = match slot {
            Slot::Learnable(p) => self.learnable[p].as_slice(),
            Slot::Bias(p) => self.bias[p].as_ref().and_then(|b| b.as_slice()),
            Slot::Projection(i) => Some(&self.projections[i][..]),
            Slot::ReadoutWeights(s) => self.readout_w[s].as_slice(),
            Slot::ReadoutBias => self.readout_b.as_ref().and_then(|b| b.as_slice()),
        };
        flat.expect("parameters in standard layout")
    }

    /// The tensor in `slot`, flat and mutable.
    pub fn get_mut(&mut self, slot: Slot) -> &mut [F] {
        let flat = match slot {
            Slot::Learnable(p) => self.learnable[p].as_slice_mut(),
            Slot::Bias(p) => self.bias[p].as_mut().and_then(|b| b.as_slice_mut()),
            Slot::Projection(i) => Some(&mut self.projections[i][..]),
            Slot::ReadoutWeights(s) => self.readout_w[s].as_slice_mut(),
            Slot::ReadoutBias => self.readout_b.as_mut().and_then(|b| b.as_slice_mut()),
        };
        flat.expect("parameters in standard layout")
    }

    /// Whether every tensor is in standard (row-major) layout, so that [`Parameters::get`]
    /// works.
    pub(crate) fn is_standard(&self) -> bool {
        self.learnable.iter().all(|a| a.is_standard_layout())
            && self.bias.iter().flatten().all(|a| a.is_standard_layout())
            && self.readout_w.iter().all(|a| a.is_standard_layout())
            && self.readout_b.as_ref().is_none_or(|a| a.is_standard_layout())
    }

    /// Zeros with the shape of `self`.
    pub fn zeros_like(&self) -> Self {
        Parameters {
            learnable: self.learnable.iter().map(|a| Array2::zeros(a.raw_dim())).collect(),
            bias: self
                .bias
                .iter()
                .map(|b| b.as_ref().map(|b| Array2::zeros(b.raw_dim())))
                .collect(),
            projections: self
                .projections
                .iter()
                .map(|w| vec![<F as Real>::zero(); w.len()])
                .collect(),
            readout_w: self.readout_w.iter().map(|a| Array2::zeros(a.raw_dim())).collect(),
            readout_b: self.readout_b.as_ref().map(|b| Array1::zeros(b.raw_dim())),
        }
    }

    /// Whether `other` has the same tensors with the same lengths.
    pub fn same_shape(&self, other: &Self) -> bool {
        self.slots().eq(other.slots()) && self.slots().all(|s| self.get(s).len() == other.get(s).len())
    }

    /// Calls `f` on every tensor, in [`Parameters::slots`] order.
    pub fn for_each(&self, mut f: impl FnMut(Slot, &[F])) {
        for slot in self.slots() {
            f(slot, self.get(slot));
        }
    }

    /// Sets every value to zero.
    pub fn fill_zero(&mut self) {
        let zero = <F as Real>::zero();
        self.learnable.iter_mut().for_each(|a| a.fill(zero));
        self.bias.iter_mut().flatten().for_each(|a| a.fill(zero));
        self.projections.iter_mut().for_each(|w| w.fill(zero));
        self.readout_w.iter_mut().for_each(|a| a.fill(zero));
        if let Some(b) = &mut self.readout_b {
            b.fill(zero);
        }
    }

    /// The global L2 norm over every tensor.
    pub fn norm(&self) -> f64 {
        let mut sum = 0.0;
        self.for_each(|_, s| sum += s.iter().map(|x| x.to_f64() * x.to_f64()).sum::<f64>());
        sum.sqrt()
    }

    /// The position and value of the first non-finite entry, if any.
    pub fn first_non_finite(&self) -> Option<(Slot, usize, f64)> {
        self.slots().find_map(|slot| {
            let s = self.get(slot);
            s.iter()
                .position(|v| !v.is_finite_value())
                .map(|i| (slot, i, s[i].to_f64()))
        })
    }

    /// The largest relative difference to `other` over every entry,
    /// `|a − b| / max(|a|, |b|, floor)`; infinite when the shapes differ.
    pub fn max_rel_diff(&self, other: &Self, floor: f64) -> f64 {
        if !self.same_shape(other) {
            return f64::INFINITY;
        }
        self.slots()
            .flat_map(|s| self.get(s).iter().zip(other.get(s)))
            .map(|(a, b)| {
                let (a, b) = (a.to_f64(), b.to_f64());
                (a - b).abs() / a.abs().max(b.abs()).max(floor)
            })
            .fold(0.0, f64::max)
    }

    /// Number of values over every tensor.
    pub fn len(&self) -> usize {
        self.slots().map(|s| self.get(s).len()).sum()
    }

    /// Whether there is no trainable value at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
