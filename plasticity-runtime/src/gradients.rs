//! Gradients with the shapes of a network's parameters, and the common order in which
//! optimisers visit parameters and gradients.

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
    /// `dE/dθ` of the learnable parameters, `[size, q]`.
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
                    w_rec: l.w_rec.as_ref().map(|w| w.iter().map(|w| Array2::zeros(w.raw_dim())).collect()),
                    bias: l.bias.as_ref().map(|b| b.iter().map(|b| Array1::zeros(b.raw_dim())).collect()),
                    learn: Array2::zeros(l.learn.raw_dim()),
                })
                .collect(),
            readout_w: Array2::zeros(net.readout.w.raw_dim()),
            readout_b: net.readout.b.as_ref().map(|b| Array1::zeros(b.raw_dim())),
        }
    }

    /// Every gradient array as a flat slice, in [`Gradients::slices_mut`] order.
    pub fn slices(&self) -> Vec<&[F]> {
        let mut out: Vec<&[F]> = Vec::new();
        for l in &self.layers {
            out.extend(l.w_in.iter().map(|w| w.as_slice().expect("standard layout")));
            if let Some(w) = &l.w_rec {
                out.extend(w.iter().map(|w| w.as_slice().expect("standard layout")));
            }
            if let Some(b) = &l.bias {
                out.extend(b.iter().map(|b| b.as_slice().expect("standard layout")));
            }
            out.push(l.learn.as_slice().expect("standard layout"));
        }
        out.push(self.readout_w.as_slice().expect("standard layout"));
        if let Some(b) = &self.readout_b {
            out.push(b.as_slice().expect("standard layout"));
        }
        out
    }

    /// Every gradient array as a flat mutable slice, in the order of
    /// [`Network::param_slices_mut`].
    pub fn slices_mut(&mut self) -> Vec<&mut [F]> {
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
        out.push(self.readout_w.as_slice_mut().expect("standard layout"));
        if let Some(b) = &mut self.readout_b {
            out.push(b.as_slice_mut().expect("standard layout"));
        }
        out
    }

    /// Sets every gradient to zero.
    pub fn fill_zero(&mut self) {
        for s in self.slices_mut() {
            s.fill(<F as Real>::zero());
        }
    }

    /// The global L2 norm.
    pub fn norm(&self) -> f64 {
        self.slices().iter().flat_map(|s| s.iter()).map(|x| x.to_f64() * x.to_f64()).sum::<f64>().sqrt()
    }

    /// The largest relative difference to `other` over every entry,
    /// `|a − b| / max(|a|, |b|, floor)`.
    pub fn max_rel_diff(&self, other: &Self, floor: f64) -> f64 {
        self.slices()
            .iter()
            .zip(other.slices())
            .flat_map(|(a, b)| a.iter().zip(b.iter()))
            .map(|(a, b)| {
                let (a, b) = (a.to_f64(), b.to_f64());
                (a - b).abs() / a.abs().max(b.abs()).max(floor)
            })
            .fold(0.0, f64::max)
    }
}

impl<M: NeuronModel, F: Float> Network<M, F> {
    /// Every parameter array as a flat mutable slice, in the same order as
    /// [`Gradients::slices`].
    pub fn param_slices_mut(&mut self) -> Vec<&mut [F]> {
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
