//! Exact backpropagation through time from the same generated partials (reference note §3).
//!
//! The forward pass stores, per step and population, the dynamic partials and the outputs;
//! the backward pass runs the adjoint recursion with the generated `vjp` kernel:
//! `δI^t = B^T δh^t + Bz^T δz^t`, `δh^{t-1} = J^T δh^t + Jz^T δz^t`, with `δz_s^t` gathered
//! from the readout and from every projection leaving population `s`:
//! `δz_s^t = W_s^outᵀ δy^t + Σ W^T δI_target^t` (projections delivering the same step's
//! output) `+ Σ W^T δI_target^{t+1}` (delayed ones). Populations are visited in reverse
//! order, so the targets of same-step projections are done first. Memory grows linearly with
//! the sequence length.

use ndarray::{Array2, Array3, Array4, ArrayView3, ArrayViewMut1, ArrayViewMut2, Axis, s};

use crate::eprop::RateRegularization;
use crate::linalg::{add_transposed, gemm_nn, gemm_nt, outer_acc_t};
use crate::network::{Buffers, MAX_STATES, Network, Recorder, ReverseArgs, Source, SpikeMode};
use crate::params::Gradients;
use crate::real::{Float, Real};

/// What the forward and backward passes keep for one population.
struct Tape<F> {
    /// Dynamic partials per step, `[T][B·max(n·ND, 1)]`.
    dynv: Vec<F>,
    /// Outputs per step, `[T+1, B, n]`, index 0 is the initial (zero) output.
    z: Array3<F>,
    /// Input adjoints `δI^t` of every step, `[T, B, p, n]`: the backward pass needs the next
    /// step's for delayed projections, and the weight gradients are formed from all of them
    /// at once after the recursion (one product over `T·B` rows instead of `T` thin ones).
    di: Array4<F>,
}

/// The tape slots of step `t`.
struct TapeStep<'a, F> {
    tapes: &'a mut [Tape<F>],
    t: usize,
}

impl<F: Float> Recorder<F> for TapeStep<'_, F> {
    fn slots(&mut self, p: usize) -> (&mut [F], &mut [F]) {
        let tape = &mut self.tapes[p];
        let len = tape.dynv.len() / tape.di.shape()[0];
        let z = tape
            .z
            .index_axis_mut(Axis(0), self.t + 1)
            .into_slice()
            .expect("a standard-layout tape");
        (&mut tape.dynv[self.t * len..(self.t + 1) * len], z)
    }
}

/// Everything BPTT stores and works in, kept from batch to batch: allocated for the first
/// batch of a given size and sequence length, then only overwritten, so later batches neither
/// allocate nor fault fresh pages in.
pub(crate) struct Workspace<F> {
    bufs: Buffers<F>,
    tapes: Vec<Tape<F>>,
    ys: Array3<F>,
    errs: Array3<F>,
    dh: Vec<Vec<F>>,
    /// `δh^{t-1}` being formed while `dh` holds `δh^t`; the two are swapped after each step.
    dh_prev: Vec<Vec<F>>,
    dlearn: Vec<Vec<F>>,
    dz: Vec<Array2<F>>,
    /// Scratch for one transposed weight gradient, sized for the largest dense projection.
    acc_t: Vec<F>,
}

impl<F: Float> Workspace<F> {
    /// Storage for `net` with batch size `batch` and `t_len` steps.
    pub(crate) fn new(net: &Network<F>, batch: usize, t_len: usize) -> Self {
        let zero = <F as Real>::zero();
        let largest = (net.projections.iter())
            .filter(|p| !p.is_sparse())
            .map(|p| p.num_weights())
            .max()
            .unwrap_or(0);
        let pops = &net.populations;
        Workspace {
            bufs: net.buffers(batch),
            tapes: pops
                .iter()
                .map(|p| Tape {
                    dynv: vec![zero; t_len * batch * (p.size * p.kernels.num_dynamic()).max(1)],
                    z: Array3::zeros((t_len + 1, batch, p.size)),
                    di: Array4::zeros((t_len, batch, p.num_ports(), p.size)),
                })
                .collect(),
            ys: Array3::zeros((t_len, batch, net.n_out())),
            errs: Array3::zeros((t_len, batch, net.n_out())),
            dh: pops
                .iter()
                .map(|p| vec![zero; batch * (p.size * p.num_states()).max(1)])
                .collect(),
            dh_prev: pops
                .iter()
                .map(|p| vec![zero; batch * (p.size * p.num_states()).max(1)])
                .collect(),
            dlearn: pops
                .iter()
                .map(|p| vec![zero; batch * (p.size * p.num_learnable()).max(1)])
                .collect(),
            dz: pops.iter().map(|p| Array2::zeros((batch, p.size))).collect(),
            acc_t: vec![zero; largest],
        }
    }

    /// Whether this storage fits `net` with `batch` samples of `t_len` steps.
    pub(crate) fn fits(&self, net: &Network<F>, batch: usize, t_len: usize) -> bool {
        self.ys.shape() == [t_len, batch, net.n_out()]
            && self.tapes.len() == net.populations.len()
            && self.bufs.weights.len() == net.projections.len()
            && (self.tapes.iter().zip(&net.populations)).all(|(t, p)| t.di.shape()[2..] == [p.num_ports(), p.size])
    }
}

/// Bytes of what BPTT keeps for `net` with `batch` samples of `t_len` steps: per step and
/// population the dynamic partials `B·max(n·ND, 1)`, the outputs `B·n` and the input adjoints
/// `B·p·n`, plus the readout and its error `2·B·n_out` (the gradients are counted apart).
pub(crate) fn tape_bytes<F: Float>(net: &Network<F>, batch: usize, t_len: usize) -> usize {
    let per_step: usize = (net.populations.iter())
        .map(|p| batch * ((p.size * p.kernels.num_dynamic()).max(1) + p.size + p.num_ports() * p.size))
        .sum::<usize>()
        + 2 * batch * net.n_out();
    per_step * t_len * std::mem::size_of::<F>()
}

/// Runs the forward pass over `x` (`[T, B, n_in]`) with spikes (and detached values)
/// evaluated by `mode`, then
/// calls `error(ys, errs)` with the readout of every step (`[T, B, n_out]`) to get
/// `errs = ∂E/∂y` (same shape, zeroed), and writes the exact gradients into `grads`. `ws` is
/// (re)built when it does not fit.
pub(crate) fn gradients<F: Float>(
    net: &Network<F>,
    x: ArrayView3<F>,
    reg: Option<(RateRegularization, F)>,
    mode: &mut SpikeMode<'_, F>,
    grads: &mut Gradients<F>,
    ws: &mut Option<Workspace<F>>,
    error: impl FnOnce(&ArrayView3<F>, &mut Array3<F>),
) {
    let (t_len, batch) = (x.shape()[0], x.shape()[1]);
    if !ws.as_ref().is_some_and(|w| w.fits(net, batch, t_len)) {
        *ws = None;
    }
    let Workspace {
        bufs,
        tapes,
        ys,
        errs,
        dh,
        dh_prev,
        dlearn,
        dz,
        acc_t,
    } = ws.get_or_insert_with(|| Workspace::new(net, batch, t_len));
    let zero = <F as Real>::zero();
    net.refresh_weights(bufs);
    net.reset(bufs);
    for t in 0..t_len {
        net.step(
            x.index_axis(Axis(0), t),
            bufs,
            true,
            &mut *mode,
            Some(&mut TapeStep { tapes, t }),
        );
    }
    // The readout of every step at once (the forward pass does not need it): `W^out z^t` for
    // all `T·B` rows in one parallel product, then `y^t = κ y^{t-1} + W^out z^t + b` in step
    // order, the same operations in the same order as `Network::readout_step`. An output
    // population's outputs are the readout.
    if let Some(o) = net.readout.population {
        ys.assign(&tapes[o].z.slice(s![1.., .., ..]));
    } else {
        let mut flat = ys
            .view_mut()
            .into_shape_with_order((t_len * batch, net.n_out()))
            .expect("a contiguous readout");
        for (r, (&s, w)) in net.readout.sources.iter().zip(&net.params.readout_w).enumerate() {
            let z_all = tapes[s].z.slice(s![1.., .., ..]);
            let n = z_all.shape()[2];
            let z_all = z_all
                .into_shape_with_order((t_len * batch, n))
                .expect("a contiguous tape");
            let beta = if r == 0 { zero } else { <F as Real>::one() };
            gemm_nt(beta, &mut flat, &z_all, &w.view());
        }
        // y^t = g ((κ/g) y^{t-1} + Σ W z^t + b), as `Network::readout_step` computes it.
        let (kappa, gain, carry) = (net.readout.kappa, net.readout.gain, net.readout.carry());
        let one = <F as Real>::one();
        for t in 0..t_len {
            let (before, mut now) = ys.view_mut().split_at(Axis(0), t);
            let mut now = now.index_axis_mut(Axis(0), 0);
            if t > 0 && kappa != zero {
                now.zip_mut_with(&before.index_axis(Axis(0), t - 1), |y, &prev| *y = carry * prev + *y);
            }
            if let Some(b) = &net.params.readout_b {
                now += b;
            }
            if gain != one {
                now.mapv_inplace(|v| v * gain);
            }
        }
    }
    errs.fill(zero);
    error(&ys.view(), errs);
    // The readout's gain scales every path from y back: δy^t = g err^t + κ δy^{t+1}.
    let gain = net.readout.gain;
    if gain != <F as Real>::one() {
        errs.mapv_inplace(|v| v * gain);
    }
    for v in dh.iter_mut().chain(dlearn.iter_mut()) {
        v.fill(zero);
    }

    grads.fill_zero();
    let kappa = net.readout.kappa;
    // Exact rate regularisation: ∂E/∂z_j^t = c (f_j − f*) · scale, f_j over batch and time.
    let rate_signal: Vec<Vec<F>> = tapes
        .iter()
        .map(|tape| match reg {
            None => Vec::new(),
            Some((r, scale)) => {
                let n = tape.z.shape()[2];
                (0..n)
                    .map(|j| {
                        let total: f64 = tape.z.slice(s![1.., .., j]).iter().map(|v| v.to_f64()).sum();
                        let rate = total / (t_len * batch).max(1) as f64;
                        F::from_f64(r.strength * (rate - r.target)) * scale
                    })
                    .collect()
            }
        })
        .collect();

    for t in (0..t_len).rev() {
        // Readout adjoint δy^t = err^t + κ δy^{t+1}, formed in place: `errs` becomes δy.
        if t + 1 < t_len {
            let (mut now, next) = errs.view_mut().split_at(Axis(0), t + 1);
            now.index_axis_mut(Axis(0), t)
                .zip_mut_with(&next.index_axis(Axis(0), 0), |d, &nx| *d += kappa * nx);
        }
        let dy = errs.index_axis(Axis(0), t);
        for (p, pop) in net.populations.iter().enumerate().rev() {
            let dzp = &mut dz[p];
            dzp.fill(zero);
            if let Some(r) = net.readout.sources.iter().position(|&s| s == p) {
                gemm_nn(
                    <F as Real>::one(),
                    &mut dzp.view_mut(),
                    &dy,
                    &net.params.readout_w[r].view(),
                );
            }
            if net.readout.population == Some(p) {
                *dzp += &dy;
            }
            // Same-step projections first, then delayed ones (from the next step's adjoints).
            for delayed in [false, true] {
                let outgoing = (net.projections.iter().enumerate())
                    .filter(|(_, pr)| pr.source == Source::Population(p) && pr.delayed == delayed);
                for (i, proj) in outgoing {
                    let step = if delayed { t + 1 } else { t };
                    if step >= t_len {
                        continue;
                    }
                    let di = tapes[proj.target].di.index_axis(Axis(0), step);
                    let di = di.index_axis(Axis(1), proj.port);
                    proj.backprop(&net.params.projections[i], &di, &mut dzp.view_mut());
                }
            }
            if !rate_signal[p].is_empty() {
                for mut row in dzp.axis_iter_mut(Axis(0)) {
                    row.iter_mut().zip(&rate_signal[p]).for_each(|(v, &s)| *v += s);
                }
            }
            // Per neuron: the reverse step, writing δI^t straight into the tape.
            let n = pop.size;
            let dstride = (n * pop.kernels.num_dynamic()).max(1);
            let tape = &mut tapes[p];
            let mut di_t = tape.di.index_axis_mut(Axis(0), t);
            pop.kernels.reverse(ReverseArgs {
                n,
                consts: &pop.consts,
                dynv: &tape.dynv[t * batch * dstride..(t + 1) * batch * dstride],
                dstride,
                dh: &dh[p],
                dz: dz[p].as_slice().expect("a standard-layout adjoint"),
                dh_prev: &mut dh_prev[p],
                di: di_t.as_slice_mut().expect("a fresh standard-layout tape"),
                dlearn: &mut dlearn[p],
            });
            std::mem::swap(&mut dh[p], &mut dh_prev[p]);
        }
    }

    // Weight gradients from all δI at once: dE/dW = Σ_{t,b} δI^t_b ⊗ pre^t_b, touching only
    // the nonzero (spiking) presynaptic entries.
    for (r, &s) in net.readout.sources.iter().enumerate() {
        // The readout error is dense and `W^out` has few rows: dE/dW^out = δyᵀ z directly.
        outer_acc_t(
            &mut grads.readout_w[r].view_mut(),
            &tapes[s].z.slice(s![1.., .., ..]),
            &errs.view(),
        );
    }
    if let Some(b) = &mut grads.readout_b {
        column_sums(&mut b.view_mut(), &errs.view());
    }
    for (i, proj) in net.projections.iter().enumerate() {
        let d = tapes[proj.target].di.index_axis(Axis(2), proj.port);
        let pre: ArrayView3<F> = match proj.source {
            Source::Input => x.view(),
            Source::Population(s) if proj.delayed => tapes[s].z.slice(s![..t_len, .., ..]),
            Source::Population(s) => tapes[s].z.slice(s![1.., .., ..]),
        };
        let g = &mut grads.projections[i];
        match proj.csr() {
            None => {
                let mut g2 = ArrayViewMut2::from_shape((proj.n_post, proj.n_pre), &mut g[..]).expect("dense gradient");
                accumulate_outer(&mut g2, &d, &pre, acc_t);
                proj.apply_mask(g);
            }
            Some(csr) => {
                for (d_t, pre_t) in d.outer_iter().zip(pre.outer_iter()) {
                    for (d_b, pre_b) in d_t.outer_iter().zip(pre_t.outer_iter()) {
                        for (i_pre, &v) in pre_b.iter().enumerate() {
                            if v == zero {
                                continue;
                            }
                            for &(j, k) in &csr.by_pre[csr.col_ptr[i_pre]..csr.col_ptr[i_pre + 1]] {
                                g[k as usize] += v * d_b[j as usize];
                            }
                        }
                    }
                }
            }
        }
    }
    for (p, pop) in net.populations.iter().enumerate() {
        // Through the initial state: dE/dθ += (∂s0/∂θ)ᵀ dE/ds0, with `dh` now holding dE/ds0.
        if pop.pattern().learnable_init_state {
            let (n, k, q) = (pop.size, pop.num_states(), pop.num_learnable());
            let (mut values, mut partials) = ([zero; MAX_STATES], [zero; MAX_STATES * MAX_STATES]);
            for j in 0..n {
                let learn = pop.neuron_learnable(&net.params.learnable[p], j, &mut values);
                pop.kernels.initial_partials(learn, &mut partials[..q * k]);
                for dh_b in dh[p].chunks_exact((n * k).max(1)) {
                    for qi in 0..q {
                        let d: F = (0..k).map(|r| partials[qi * k + r] * dh_b[j * k + r]).sum();
                        grads.learnable[p][[qi, j]] += d;
                    }
                }
            }
        }
        if let Some(bias) = &mut grads.bias[p] {
            for port in 0..pop.num_ports() {
                column_sums(&mut bias.row_mut(port), &tapes[p].di.index_axis(Axis(2), port));
            }
        }
        let (n, q) = (pop.size, pop.num_learnable());
        let learn = &mut grads.learnable[p];
        for b in 0..batch {
            for j in 0..n {
                for qi in 0..q {
                    learn[[qi, j]] += dlearn[p][b * (n * q).max(1) + j * q + qi];
                }
            }
        }
    }
}

/// `grad[j, i] += Σ_{t,b} d[t, b, j] · pre[t, b, i]`, formed transposed (rows over the
/// presynaptic index, so only active inputs are visited) and added in place.
/// `scratch` holds at least `grad.len()` values.
fn accumulate_outer<F: Float>(grad: &mut ArrayViewMut2<F>, d: &ArrayView3<F>, pre: &ArrayView3<F>, scratch: &mut [F]) {
    let shape = (grad.ncols(), grad.nrows());
    let scratch = &mut scratch[..shape.0 * shape.1];
    scratch.fill(<F as Real>::zero());
    let mut acc_t = ArrayViewMut2::from_shape(shape, scratch).expect("scratch sized for the largest weight");
    outer_acc_t(&mut acc_t, d, pre);
    add_transposed(grad, &acc_t.view());
}

/// `out[j] += Σ_{t,b} d[t, b, j]`.
fn column_sums<F: Float>(out: &mut ArrayViewMut1<F>, d: &ArrayView3<F>) {
    for plane in d.outer_iter() {
        for row in plane.outer_iter() {
            out.zip_mut_with(&row, |o, &v| *o += v);
        }
    }
}
