//! Projections: weights from the input or a population onto one input port of a population,
//! dense, masked or sparse.

use std::sync::Arc;

use ndarray::{Array2, ArrayView2, ArrayViewMut2};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rayon::prelude::*;

use crate::error::{Result, invalid};
use crate::linalg::{gemm_nn, transpose_into};
use crate::real::{Float, Real};

/// Where a projection's presynaptic activity comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// The network's input channels.
    Input,
    /// The outputs of the population with this index.
    Population(usize),
}

/// Which synapses of a projection exist.
#[derive(Clone, Debug, PartialEq)]
pub enum Connectivity {
    /// Every pair of neurons: a dense `[n_post, n_pre]` matrix.
    Dense,
    /// Dense storage with a fixed boolean mask `[n_post, n_pre]`: masked weights stay exactly
    /// zero, and so do their gradients.
    Mask(Array2<bool>),
    /// Sparse: each synapse exists independently with probability `p` (drawn from `seed`).
    /// Only existing synapses are stored, traced and trained.
    Probability {
        /// Connection probability in `(0, 1]`.
        p: f64,
        /// Seed of the draw.
        seed: u64,
    },
    /// Sparse: exactly these `(post, pre)` synapses (duplicates are merged).
    Indices(Vec<(usize, usize)>),
}

impl Connectivity {
    /// The synapses this connectivity makes between `n_post` and `n_pre` neurons, as a mask
    /// `[n_post, n_pre]`. A `Mask` built from it and a sparse projection built from `self`
    /// hold the same synapses.
    pub fn to_mask(&self, n_post: usize, n_pre: usize) -> Result<Array2<bool>> {
        match self {
            Connectivity::Dense => Ok(Array2::from_elem((n_post, n_pre), true)),
            Connectivity::Mask(m) => {
                if m.dim() != (n_post, n_pre) {
                    return Err(crate::Error::Shape {
                        what: "connectivity mask".into(),
                        expected: format!("[{n_post}, {n_pre}]"),
                        found: m.shape().to_vec(),
                    });
                }
                Ok(m.clone())
            }
            &Connectivity::Probability { p, seed } => {
                if !(p > 0.0 && p <= 1.0) {
                    return Err(invalid("connection probability", p, "a probability in (0, 1]"));
                }
                let mut rng = StdRng::seed_from_u64(seed);
                Ok(Array2::from_shape_simple_fn((n_post, n_pre), || {
                    rng.random::<f64>() < p
                }))
            }
            Connectivity::Indices(pairs) => {
                let mut m = Array2::from_elem((n_post, n_pre), false);
                for &(post, pre) in pairs {
                    if post >= n_post || pre >= n_pre {
                        return Err(invalid(
                            "synapse index",
                            format!("({post}, {pre})"),
                            &format!("(post < {n_post}, pre < {n_pre})"),
                        ));
                    }
                    m[[post, pre]] = true;
                }
                Ok(m)
            }
        }
    }

    /// Whether only existing synapses are stored.
    pub fn is_sparse(&self) -> bool {
        matches!(self, Connectivity::Probability { .. } | Connectivity::Indices(_))
    }
}

/// The synapses of a sparse projection, in compressed sparse row order (by postsynaptic
/// neuron), with the transposed order for the forward pass.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Csr {
    /// `[n_post + 1]`: synapses of neuron `j` are `row_ptr[j]..row_ptr[j + 1]`.
    pub row_ptr: Vec<usize>,
    /// Presynaptic index of each synapse.
    pub col: Vec<u32>,
    /// `[n_pre + 1]`: the synapses leaving presynaptic neuron `i`, in `by_pre` order.
    pub col_ptr: Vec<usize>,
    /// For each synapse in presynaptic order: its postsynaptic neuron and its CSR index.
    pub by_pre: Vec<(u32, u32)>,
}

impl Csr {
    fn from_mask(mask: &Array2<bool>) -> Self {
        let (n_post, n_pre) = mask.dim();
        let mut row_ptr = vec![0];
        let mut col = Vec::new();
        for row in mask.outer_iter() {
            col.extend(row.iter().enumerate().filter(|(_, m)| **m).map(|(i, _)| i as u32));
            row_ptr.push(col.len());
        }
        let mut counts = vec![0usize; n_pre + 1];
        for &i in &col {
            counts[i as usize + 1] += 1;
        }
        for i in 0..n_pre {
            counts[i + 1] += counts[i];
        }
        let col_ptr = counts.clone();
        let mut by_pre = vec![(0u32, 0u32); col.len()];
        let mut fill = counts;
        for j in 0..n_post {
            for k in row_ptr[j]..row_ptr[j + 1] {
                let i = col[k] as usize;
                by_pre[fill[i]] = (j as u32, k as u32);
                fill[i] += 1;
            }
        }
        Csr {
            row_ptr,
            col,
            col_ptr,
            by_pre,
        }
    }

    /// Number of synapses.
    pub fn len(&self) -> usize {
        self.col.len()
    }
}

/// How a projection's synapses are stored.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Synapses {
    /// Dense `[n_post, n_pre]`, with an optional mask (row-major, `true` where a synapse
    /// exists).
    Dense { mask: Option<Vec<bool>> },
    /// Only existing synapses. Shared (not copied) with e-prop's engines, which walk the
    /// same rows.
    Sparse(Arc<Csr>),
}

/// Weights from a source onto one input port of a population. Its structure is fixed when
/// the network is built (the weights themselves are in [`crate::Network::params`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Projection {
    pub(crate) name: String,
    pub(crate) source: Source,
    pub(crate) target: usize,
    pub(crate) port: usize,
    pub(crate) n_pre: usize,
    pub(crate) n_post: usize,
    pub(crate) delayed: bool,
    pub(crate) synapses: Synapses,
}

impl Projection {
    /// `dst[k] += factor[j] · src[k]` for every stored weight `k` of postsynaptic neuron `j`
    /// (dense rows or CSR rows).
    pub(crate) fn add_scaled_rows<F: Float>(&self, dst: &mut [F], src: &[F], factor: &[F]) {
        match &self.synapses {
            Synapses::Dense { .. } => {
                for ((d, s), &f) in dst.chunks_mut(self.n_pre).zip(src.chunks(self.n_pre)).zip(factor) {
                    d.iter_mut().zip(s).for_each(|(d, &s)| *d += f * s);
                }
            }
            Synapses::Sparse(csr) => {
                for (j, &f) in factor.iter().enumerate() {
                    for k in csr.row_ptr[j]..csr.row_ptr[j + 1] {
                        dst[k] += f * src[k];
                    }
                }
            }
        }
    }

    pub(crate) fn new(
        name: String,
        source: Source,
        target: usize,
        port: usize,
        (n_post, n_pre): (usize, usize),
        mask: Option<Array2<bool>>,
        sparse: bool,
        delay: bool,
    ) -> Self {
        let delayed = matches!(source, Source::Population(s) if s >= target || delay);
        let synapses = match (mask, sparse) {
            (Some(m), true) => Synapses::Sparse(Arc::new(Csr::from_mask(&m))),
            (Some(m), false) => Synapses::Dense {
                mask: Some(m.iter().copied().collect()),
            },
            (None, _) => Synapses::Dense { mask: None },
        };
        Projection {
            name,
            source,
            target,
            port,
            n_pre,
            n_post,
            delayed,
            synapses,
        }
    }

    /// Name, unique in the network: `source->target.port`.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Where the presynaptic activity comes from.
    pub fn source(&self) -> Source {
        self.source
    }
    /// The target population's index.
    pub fn target(&self) -> usize {
        self.target
    }
    /// The target model's input port.
    pub fn port(&self) -> usize {
        self.port
    }
    /// Number of presynaptic neurons (or input channels).
    pub fn n_pre(&self) -> usize {
        self.n_pre
    }
    /// Number of postsynaptic neurons.
    pub fn n_post(&self) -> usize {
        self.n_post
    }
    /// Whether the projection carries the source's output of the previous step: true when
    /// the source population is the target or comes after it (recurrent and backward
    /// projections), or when built with [`crate::ProjectionSpec::delayed`]; otherwise the
    /// input and earlier populations deliver the current step's output.
    pub fn is_delayed(&self) -> bool {
        self.delayed
    }

    /// Whether only existing synapses are stored.
    pub fn is_sparse(&self) -> bool {
        matches!(self.synapses, Synapses::Sparse(_))
    }

    /// Number of stored weights: `n_post · n_pre` when dense (masked or not), the synapse
    /// count when sparse.
    pub fn num_weights(&self) -> usize {
        match &self.synapses {
            Synapses::Dense { .. } => self.n_post * self.n_pre,
            Synapses::Sparse(c) => c.len(),
        }
    }

    /// The existing synapses as `(post, pre)` pairs, in the order of the stored weights.
    pub fn synapses(&self) -> Vec<(usize, usize)> {
        match &self.synapses {
            Synapses::Dense { mask } => (0..self.n_post)
                .flat_map(|j| (0..self.n_pre).map(move |i| (j, i)))
                .filter(|&(j, i)| mask.as_ref().is_none_or(|m| m[j * self.n_pre + i]))
                .collect(),
            Synapses::Sparse(c) => (0..self.n_post)
                .flat_map(|j| {
                    c.col[c.row_ptr[j]..c.row_ptr[j + 1]]
                        .iter()
                        .map(move |&i| (j, i as usize))
                })
                .collect(),
        }
    }

    /// The weights `w` (stored values) as a dense `[n_post, n_pre]` matrix, zero where no
    /// synapse exists.
    pub fn to_dense<F: Float>(&self, w: &[F]) -> Array2<F> {
        match &self.synapses {
            Synapses::Dense { .. } => {
                Array2::from_shape_vec((self.n_post, self.n_pre), w.to_vec()).expect("dense weights")
            }
            Synapses::Sparse(c) => {
                let mut out = Array2::zeros((self.n_post, self.n_pre));
                for j in 0..self.n_post {
                    for k in c.row_ptr[j]..c.row_ptr[j + 1] {
                        out[[j, c.col[k] as usize]] = w[k];
                    }
                }
                out
            }
        }
    }

    /// The stored weights of a dense `[n_post, n_pre]` matrix (entries without a synapse are
    /// dropped, or zeroed under a mask).
    pub(crate) fn values_of<F: Float>(&self, dense: &Array2<F>) -> Vec<F> {
        match &self.synapses {
            Synapses::Dense { mask } => {
                let mut w: Vec<F> = dense.iter().copied().collect();
                if let Some(m) = mask {
                    w.iter_mut()
                        .zip(m)
                        .filter(|(_, m)| !**m)
                        .for_each(|(w, _)| *w = <F as Real>::zero());
                }
                w
            }
            Synapses::Sparse(c) => (0..self.n_post)
                .flat_map(|j| (c.row_ptr[j]..c.row_ptr[j + 1]).map(move |k| dense[[j, c.col[k] as usize]]))
                .collect(),
        }
    }

    /// Zeroes what a mask excludes (weights after an update, or a gradient).
    pub(crate) fn apply_mask<F: Float>(&self, w: &mut [F]) {
        if let Synapses::Dense { mask: Some(m) } = &self.synapses {
            w.iter_mut()
                .zip(m)
                .filter(|(_, m)| !**m)
                .for_each(|(w, _)| *w = <F as Real>::zero());
        }
    }

    /// Whether stored weight `k` is a synapse (false only where a mask excludes it).
    pub fn has_weight(&self, k: usize) -> bool {
        match &self.synapses {
            Synapses::Dense { mask: Some(m) } => m[k],
            _ => k < self.num_weights(),
        }
    }

    /// `dz[b, i] += Σ_j w[j, i] · di[b, j]`: what the weights `w` send back from their
    /// targets' `di` (`[B, n_post]`) to their sources (`dz`, `[B, n_pre]`): BPTT's adjoint,
    /// and e-prop's symmetric learning signal through an output population.
    pub(crate) fn backprop<F: Float>(&self, w: &[F], di: &ArrayView2<F>, dz: &mut ArrayViewMut2<F>) {
        match &self.synapses {
            Synapses::Dense { .. } => {
                let w = ArrayView2::from_shape((self.n_post, self.n_pre), w).expect("dense weights");
                gemm_nn(<F as Real>::one(), dz, di, &w);
            }
            Synapses::Sparse(csr) => {
                dz.outer_iter_mut()
                    .into_par_iter()
                    .zip(di.outer_iter().into_par_iter())
                    .for_each(|(mut dz, di)| {
                        for (j, &d) in di.iter().enumerate() {
                            if d == <F as Real>::zero() {
                                continue;
                            }
                            for k in csr.row_ptr[j]..csr.row_ptr[j + 1] {
                                dz[csr.col[k] as usize] += w[k] * d;
                            }
                        }
                    });
            }
        }
    }

    /// Whether every weight the mask excludes is zero.
    pub(crate) fn respects_mask<F: Float>(&self, w: &[F]) -> bool {
        match &self.synapses {
            Synapses::Dense { mask: Some(m) } => w.iter().zip(m).all(|(w, m)| *m || *w == <F as Real>::zero()),
            _ => true,
        }
    }

    /// The CSR structure of a sparse projection.
    pub(crate) fn csr(&self) -> Option<&Arc<Csr>> {
        match &self.synapses {
            Synapses::Sparse(c) => Some(c),
            Synapses::Dense { .. } => None,
        }
    }
}

/// A projection's weights arranged for the forward pass: transposed `[n_pre, n_post]` when
/// dense (the current of an active presynaptic neuron is one contiguous row, and inactive
/// ones cost nothing), in presynaptic order when sparse.
#[derive(Clone, Debug)]
pub(crate) struct ForwardWeights<F> {
    pub t: Vec<F>,
}

impl<F: Float> ForwardWeights<F> {
    pub fn new(proj: &Projection) -> Self {
        ForwardWeights {
            t: vec![<F as Real>::zero(); proj.num_weights()],
        }
    }

    /// Copies the current weights `w` (call whenever they may have changed).
    pub fn refresh(&mut self, proj: &Projection, w: &[F]) {
        match &proj.synapses {
            Synapses::Dense { .. } => {
                let src = ArrayView2::from_shape((proj.n_post, proj.n_pre), w).expect("dense weights");
                let mut dst =
                    ArrayViewMut2::from_shape((proj.n_pre, proj.n_post), &mut self.t).expect("transposed weights");
                transpose_into(&mut dst, &src);
            }
            Synapses::Sparse(c) => {
                for (t, &(_, k)) in self.t.iter_mut().zip(&c.by_pre) {
                    *t = w[k as usize];
                }
            }
        }
    }

    /// `current[b, j] += Σ_i w[j, i] · pre[b, i]`, skipping inactive presynaptic neurons.
    pub fn accumulate(&self, proj: &Projection, current: &mut ArrayViewMut2<F>, pre: &ArrayView2<F>) {
        match &proj.synapses {
            Synapses::Dense { .. } => {
                let w_t = ArrayView2::from_shape((proj.n_pre, proj.n_post), &self.t).expect("transposed weights");
                gemm_nn(<F as Real>::one(), current, pre, &w_t);
            }
            Synapses::Sparse(c) => {
                current
                    .outer_iter_mut()
                    .into_par_iter()
                    .zip(pre.outer_iter().into_par_iter())
                    .for_each(|(mut cur, x)| {
                        for (i, &xi) in x.iter().enumerate() {
                            if xi == <F as Real>::zero() {
                                continue;
                            }
                            for k in c.col_ptr[i]..c.col_ptr[i + 1] {
                                let (j, _) = c.by_pre[k];
                                cur[j as usize] += xi * self.t[k];
                            }
                        }
                    });
            }
        }
    }
}
