//! Gradients with the shapes of a network's parameters, and the common order in which
//! optimisers visit parameters and gradients.

use std::borrow::Cow;

use ndarray::{Array1, Array2};

use crate::model::NeuronModel;
use crate::network::Network;
use crate::real::{Float, Real};

/// Gradients of one layer's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerGradients<F> {
    /// `dE/dW^in` per port, `[size, n_pre]`.
    pub w_in: Vec<Array2<F>>,
    /// `dE/dW^rec` per port, `[size, size]`.
    pub w_rec: Option<Vec<Array2<F>>>,
    /// `dE/db` per port, `[size]`.
    pub bias: Option<Vec<Array1<F>>>,
    /// `dE/dθ` of the learnable parameters, `[q, size]`.
    pub learn: Array2<F>,
}

/// Gradients of every parameter of a network.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients<F> {
    /// Per layer.
    pub layers: Vec<LayerGradients<F>>,
    /// `dE/dW^out`, `[n_out, n_last]`.
    pub readout_w: Array2<F>,
    /// `dE/db^out`, `[n_out]`.
    pub readout_b: Option<Array1<F>>,
}

impl<F: Float> Gradients<F> {
    /// Zero gradients shaped like `net`'s parameters.
    pub fn zeros<M: NeuronModel>(net: &Network<M, F>) -> Self {
        Gradients {
            layers: net
                .layers
                .iter()
                .map(|l| LayerGradients {
                    w_in: l.w_in.iter().map(|w| Array2::zeros(w.raw_dim())).collect(),
                    w_rec: l
                        .w_rec
                        .as_ref()
                        .map(|w| w.iter().map(|w| Array2::zeros(w.raw_dim())).collect()),
                    bias: l
                        .bias
                        .as_ref()
                        .map(|b| b.iter().map(|b| Array1::zeros(b.raw_dim())).collect()),
                    learn: Array2::zeros(l.learn.raw_dim()),
                })
                .collect(),
            readout_w: Array2::zeros(net.readout.w.raw_dim()),
            readout_b: net.readout.b.as_ref().map(|b| Array1::zeros(b.raw_dim())),
        }
    }

    /// Every gradient array as a flat slice: per layer `w_in` (per port), `w_rec`, `bias`, `learn`; then the readout weights and bias.
    /// Arrays in standard layout are borrowed; any other is copied in logical order.
    pub fn slices(&self) -> Vec<Cow<'_, [F]>> {
        fn flat<F: Float, D: ndarray::Dimension>(a: &ndarray::Array<F, D>) -> Cow<'_, [F]> {
            match a.as_slice() {
                Some(s) => Cow::Borrowed(s),
                None => Cow::Owned(a.iter().copied().collect()),
            }
        }
        let mut out = Vec::new();
        for l in &self.layers {
            out.extend(l.w_in.iter().map(flat));
            out.extend(l.w_rec.iter().flatten().map(flat));
            out.extend(l.bias.iter().flatten().map(flat));
            out.push(flat(&l.learn));
        }
        out.push(flat(&self.readout_w));
        if let Some(b) = &self.readout_b {
            out.push(flat(b));
        }
        out
    }

    /// Calls `f` on every gradient array, in [`Gradients::slices`] order (without
    /// allocating, for arrays in standard layout).
    pub fn for_each(&self, mut f: impl FnMut(&[F])) {
        for s in self.slices() {
            f(&s);
        }
    }

    /// The `index`-th gradient array in [`Gradients::slices`] order. Gradients made by
    /// [`Gradients::zeros`] and filled by the runtime are always in standard layout.
    pub(crate) fn get(&self, index: usize) -> &[F] {
        let mut i = 0;
        let mut found: &[F] = &[];
        self.for_each_ref(&mut |s| {
            if i == index {
                found = s;
            }
            i += 1;
        });
        found
    }

    fn for_each_ref<'a>(&'a self, f: &mut dyn FnMut(&'a [F])) {
        for l in &self.layers {
            l.w_in.iter().for_each(|w| f(w.as_slice().expect("standard layout")));
            l.w_rec
                .iter()
                .flatten()
                .for_each(|w| f(w.as_slice().expect("standard layout")));
            l.bias
                .iter()
                .flatten()
                .for_each(|b| f(b.as_slice().expect("standard layout")));
            f(l.learn.as_slice().expect("standard layout"));
        }
        f(self.readout_w.as_slice().expect("standard layout"));
        if let Some(b) = &self.readout_b {
            f(b.as_slice().expect("standard layout"));
        }
    }

    /// Sets every gradient to zero.
    pub fn fill_zero(&mut self) {
        for l in &mut self.layers {
            l.w_in.iter_mut().for_each(|w| w.fill(<F as Real>::zero()));
            l.w_rec.iter_mut().flatten().for_each(|w| w.fill(<F as Real>::zero()));
            l.bias.iter_mut().flatten().for_each(|b| b.fill(<F as Real>::zero()));
            l.learn.fill(<F as Real>::zero());
        }
        self.readout_w.fill(<F as Real>::zero());
        if let Some(b) = &mut self.readout_b {
            b.fill(<F as Real>::zero());
        }
    }

    /// The global L2 norm (no allocation).
    pub fn norm(&self) -> f64 {
        fn sq<'a, F: Float + 'a>(it: impl Iterator<Item = &'a F>) -> f64 {
            it.map(|x| x.to_f64() * x.to_f64()).sum()
        }
        let mut sum = 0.0;
        for l in &self.layers {
            sum += l.w_in.iter().map(|w| sq(w.iter())).sum::<f64>();
            sum += l.w_rec.iter().flatten().map(|w| sq(w.iter())).sum::<f64>();
            sum += l.bias.iter().flatten().map(|b| sq(b.iter())).sum::<f64>();
            sum += sq(l.learn.iter());
        }
        sum += sq(self.readout_w.iter());
        sum += self.readout_b.iter().map(|b| sq(b.iter())).sum::<f64>();
        sum.sqrt()
    }

    /// The largest relative difference to `other` over every entry,
    /// `|a − b| / max(|a|, |b|, floor)`.
    pub fn max_rel_diff(&self, other: &Self, floor: f64) -> f64 {
        let (mine, theirs) = (self.slices(), other.slices());
        mine.iter()
            .zip(theirs.iter())
            .flat_map(|(a, b)| a.iter().zip(b.iter()))
            .map(|(a, b)| {
                let (a, b) = (a.to_f64(), b.to_f64());
                (a - b).abs() / a.abs().max(b.abs()).max(floor)
            })
            .fold(0.0, f64::max)
    }
}

fn standard<F: Float, D: ndarray::Dimension>(a: &mut ndarray::Array<F, D>) {
    if !a.is_standard_layout() {
        *a = a.as_standard_layout().into_owned();
    }
}

impl<M: NeuronModel, F: Float> Network<M, F> {
    /// Puts every parameter array in standard (row-major) layout, so that flat views exist.
    fn standardize(&mut self) {
        for l in &mut self.layers {
            l.w_in.iter_mut().for_each(standard);
            l.w_rec.iter_mut().flatten().for_each(standard);
            l.bias.iter_mut().flatten().for_each(standard);
            standard(&mut l.learn);
        }
        standard(&mut self.readout.w);
        if let Some(b) = &mut self.readout.b {
            standard(b);
        }
    }

    /// Calls `f(index, params)` on every parameter array, in [`Gradients::slices`] order,
    /// without allocating.
    pub fn for_each_param_mut(&mut self, mut f: impl FnMut(usize, &mut [F])) {
        self.standardize();
        let mut i = 0;
        let mut call = |s: &mut [F]| {
            f(i, s);
            i += 1;
        };
        for l in &mut self.layers {
            l.w_in
                .iter_mut()
                .for_each(|w| call(w.as_slice_mut().expect("standard layout")));
            l.w_rec
                .iter_mut()
                .flatten()
                .for_each(|w| call(w.as_slice_mut().expect("standard layout")));
            l.bias
                .iter_mut()
                .flatten()
                .for_each(|b| call(b.as_slice_mut().expect("standard layout")));
            call(l.learn.as_slice_mut().expect("standard layout"));
        }
        call(self.readout.w.as_slice_mut().expect("standard layout"));
        if let Some(b) = &mut self.readout.b {
            call(b.as_slice_mut().expect("standard layout"));
        }
    }

    /// Every parameter array as a flat mutable slice, in the same order as
    /// [`Gradients::slices`].
    pub fn param_slices_mut(&mut self) -> Vec<&mut [F]> {
        self.standardize();
        let mut out: Vec<&mut [F]> = Vec::new();
        for l in &mut self.layers {
            out.extend(l.w_in.iter_mut().map(|w| w.as_slice_mut().expect("standard layout")));
            if let Some(w) = &mut l.w_rec {
                out.extend(w.iter_mut().map(|w| w.as_slice_mut().expect("standard layout")));
            }
            if let Some(b) = &mut l.bias {
                out.extend(b.iter_mut().map(|b| b.as_slice_mut().expect("standard layout")));
            }
            out.push(l.learn.as_slice_mut().expect("standard layout"));
        }
        out.push(self.readout.w.as_slice_mut().expect("standard layout"));
        if let Some(b) = &mut self.readout.b {
            out.push(b.as_slice_mut().expect("standard layout"));
        }
        out
    }
}
