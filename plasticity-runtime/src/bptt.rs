//! Exact backpropagation through time from the same generated partials (reference note §3).
//!
//! The forward pass stores, per step, the dynamic partials and the outputs; the backward
//! pass runs the adjoint recursion with the generated `vjp` kernel:
//! `δI^t = B^T δh^t + Bz^T δz^t`, `δh^{t-1} = J^T δh^t + Jz^T δz^t`, with
//! `δz^t = ∂E/∂z^t + (W^rec)^T δI^{t+1} (+ (W^in_{l+1})^T δI_{l+1}^t)`. Memory grows
//! linearly with the sequence length.

use ndarray::{Array2, Array3, Array4, ArrayView3, ArrayViewMut1, ArrayViewMut2, Axis, s};
use rayon::prelude::*;

use crate::eprop::RateRegularization;
use crate::gradients::Gradients;
use crate::linalg::{add_transposed, gemm_nn, gemm_nt, outer_acc_t};
use crate::model::NeuronModel;
use crate::network::{LayerBuffers, MAX_DYNAMIC, MAX_PORTS, Network, Recorder, gather_partials, reset_state};
use crate::real::{Float, Real};

/// What the forward and backward passes keep for one layer.
struct Tape<F> {
    /// Dynamic partials per step, `[T][B·max(n·ND, 1)]`.
    dynv: Vec<F>,
    /// Outputs per step, `[T+1, B, n]`, index 0 is the initial (zero) output.
    z: Array3<F>,
    /// Input adjoints `δI^t` of every step, `[T, B, p, n]`: the backward pass needs the next
    /// step's for the recurrent term, and the weight gradients are formed from all of them at
    /// once after the recursion (one product over `T·B` rows instead of `T` thin ones).
    di: Array4<F>,
}

/// The tape slots of step `t`.
struct TapeStep<'a, F> {
    tapes: &'a mut [Tape<F>],
    t: usize,
}

impl<F: Float> Recorder<F> for TapeStep<'_, F> {
    fn slots(&mut self, l: usize) -> (&mut [F], &mut [F]) {
        let tape = &mut self.tapes[l];
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
    bufs: Vec<LayerBuffers<F>>,
    tapes: Vec<Tape<F>>,
    ys: Array3<F>,
    errs: Array3<F>,
    dh: Vec<Vec<F>>,
    /// `δh^{t-1}` being formed while `dh` holds `δh^t`; the two are swapped after each step.
    dh_prev: Vec<Vec<F>>,
    dlearn: Vec<Vec<F>>,
    dz: Vec<Array2<F>>,
    /// Scratch for one transposed weight gradient, sized for the largest input or recurrent
    /// weight matrix.
    acc_t: Vec<F>,
}

impl<F: Float> Workspace<F> {
    /// Storage for `net` with batch size `batch` and `t_len` steps.
    pub(crate) fn new<M: NeuronModel>(net: &Network<M, F>, batch: usize, t_len: usize) -> Self {
        let (k, p, q, nd) = (M::NUM_STATES, M::NUM_INPUTS, M::NUM_LEARNABLE, M::NUM_DYNAMIC);
        let n_out = net.n_out();
        let zero = <F as Real>::zero();
        let mut largest = 0;
        let mut n_pre = net.n_in;
        for layer in &net.layers {
            let n = layer.size();
            largest = largest.max(n * n_pre);
            if layer.w_rec.is_some() {
                largest = largest.max(n * n);
            }
            n_pre = n;
        }
        Workspace {
            bufs: net.buffers(batch),
            tapes: net
                .layers
                .iter()
                .map(|l| Tape {
                    dynv: vec![zero; t_len * batch * (l.size() * nd).max(1)],
                    z: Array3::zeros((t_len + 1, batch, l.size())),
                    di: Array4::zeros((t_len, batch, p, l.size())),
                })
                .collect(),
            ys: Array3::zeros((t_len, batch, n_out)),
            errs: Array3::zeros((t_len, batch, n_out)),
            dh: net.layers.iter().map(|l| vec![zero; batch * l.size() * k]).collect(),
            dh_prev: net.layers.iter().map(|l| vec![zero; batch * l.size() * k]).collect(),
            dlearn: net
                .layers
                .iter()
                .map(|l| vec![zero; batch * (l.size() * q).max(1)])
                .collect(),
            dz: net.layers.iter().map(|l| Array2::zeros((batch, l.size()))).collect(),
            acc_t: vec![zero; largest],
        }
    }

    /// Whether this storage fits `net` with `batch` samples of `t_len` steps.
    pub(crate) fn fits<M: NeuronModel>(&self, net: &Network<M, F>, batch: usize, t_len: usize) -> bool {
        self.ys.shape() == [t_len, batch, net.n_out()]
            && self.tapes.len() == net.layers.len()
            && self
                .tapes
                .iter()
                .zip(&net.layers)
                .all(|(t, l)| t.z.shape()[2] == l.size())
    }
}

/// Bytes of what BPTT keeps for `net` with `batch` samples of `t_len` steps: per step and
/// layer the dynamic partials `B·max(n·ND, 1)`, the outputs `B·n` and the input adjoints
/// `B·p·n`, plus the readout and its error `2·B·n_out` (the gradients are counted apart).
pub(crate) fn tape_bytes<M: NeuronModel, F: Float>(net: &Network<M, F>, batch: usize, t_len: usize) -> usize {
    let per_step: usize = net
        .layers
        .iter()
        .map(|l| batch * ((l.size() * M::NUM_DYNAMIC).max(1) + l.size() + M::NUM_INPUTS * l.size()))
        .sum::<usize>()
        + 2 * batch * net.n_out();
    per_step * t_len * std::mem::size_of::<F>()
}

/// Runs the forward pass over `x` (`[T, B, n_in]`), then calls `error(ys, errs)` with the
/// readout of every step (`[T, B, n_out]`) to get `errs = ∂E/∂y` (same shape, zeroed), and
/// writes the exact gradients into `grads`. `ws` is (re)built when it does not fit.
pub(crate) fn gradients<M: NeuronModel, F: Float>(
    net: &Network<M, F>,
    x: ArrayView3<F>,
    reg: Option<(RateRegularization, F)>,
    grads: &mut Gradients<F>,
    ws: &mut Option<Workspace<F>>,
    error: impl FnOnce(&ArrayView3<F>, &mut Array3<F>),
) {
    let (t_len, batch) = (x.shape()[0], x.shape()[1]);
    let (k, p, q, nd) = (M::NUM_STATES, M::NUM_INPUTS, M::NUM_LEARNABLE, M::NUM_DYNAMIC);
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
        ..
    } = ws.get_or_insert_with(|| Workspace::new(net, batch, t_len));
    let zero = <F as Real>::zero();
    for ((layer, buf), tape) in net.layers.iter().zip(bufs.iter_mut()).zip(tapes.iter()) {
        buf.refresh_weights(layer);
        reset_state(layer, buf);
        debug_assert!(tape.z.index_axis(Axis(0), 0).iter().all(|&v| v == zero));
    }
    for t in 0..t_len {
        net.step_forward_recorded(x.index_axis(Axis(0), t), bufs, &mut TapeStep { tapes, t });
    }
    // The readout of every step at once (the forward pass does not need it): `W^out z^t` for
    // all `T·B` rows in one parallel product, then `y^t = κ y^{t-1} + W^out z^t + b` in step
    // order, the same operations in the same order as `Network::readout_step`.
    {
        let z_all = tapes.last().expect("a layer").z.slice(s![1.., .., ..]);
        let n = z_all.shape()[2];
        let z_all = z_all
            .into_shape_with_order((t_len * batch, n))
            .expect("a contiguous tape");
        let mut flat = ys
            .view_mut()
            .into_shape_with_order((t_len * batch, net.n_out()))
            .expect("a contiguous readout");
        gemm_nt(zero, &mut flat, &z_all, &net.readout.w.view());
        let kappa = net.readout.kappa;
        for t in 0..t_len {
            let (before, mut now) = ys.view_mut().split_at(Axis(0), t);
            let mut now = now.index_axis_mut(Axis(0), 0);
            if t > 0 && kappa != zero {
                now.zip_mut_with(&before.index_axis(Axis(0), t - 1), |y, &prev| *y = kappa * prev + *y);
            }
            if let Some(b) = &net.readout.b {
                now += b;
            }
        }
    }
    errs.fill(zero);
    error(&ys.view(), errs);
    for v in dh.iter_mut().chain(dlearn.iter_mut()) {
        v.fill(zero);
    }

    grads.fill_zero();
    let kappa = net.readout.kappa;
    let n_layers = net.layers.len();
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
        for l in (0..n_layers).rev() {
            let layer = &net.layers[l];
            let n = layer.size();
            let (below, above) = tapes.split_at_mut(l + 1);
            let tape = &mut below[l];
            let dzl = &mut dz[l];
            if l + 1 == n_layers {
                gemm_nn(<F as Real>::zero(), &mut dzl.view_mut(), &dy, &net.readout.w.view());
            } else {
                dzl.fill(<F as Real>::zero());
                let di_above = above[0].di.index_axis(Axis(0), t);
                for port in 0..p {
                    gemm_nn(
                        <F as Real>::one(),
                        &mut dzl.view_mut(),
                        &di_above.index_axis(Axis(1), port),
                        &net.layers[l + 1].w_in[port].view(),
                    );
                }
            }
            if let (Some(w_rec), true) = (&layer.w_rec, t + 1 < t_len) {
                let di_next = tape.di.index_axis(Axis(0), t + 1);
                for (port, w) in w_rec.iter().enumerate() {
                    gemm_nn(
                        <F as Real>::one(),
                        &mut dzl.view_mut(),
                        &di_next.index_axis(Axis(1), port),
                        &w.view(),
                    );
                }
            }
            if !rate_signal[l].is_empty() {
                for mut row in dzl.axis_iter_mut(Axis(0)) {
                    row.iter_mut().zip(&rate_signal[l]).for_each(|(v, &s)| *v += s);
                }
            }
            // Per neuron: the reverse step, writing δI^t straight into the tape.
            let dstride = (n * nd).max(1);
            let dyn_t = &tape.dynv[t * batch * dstride..(t + 1) * batch * dstride];
            let consts = &layer.consts[..];
            let dzl = &dz[l];
            let mut di_t = tape.di.index_axis_mut(Axis(0), t);
            let di_t = di_t.as_slice_mut().expect("a fresh standard-layout tape");
            dh_prev[l]
                .par_chunks_mut(n * k)
                .zip(dh[l].par_chunks(n * k))
                .zip(dlearn[l].par_chunks_mut((n * q).max(1)))
                .zip(di_t.par_chunks_mut(p * n))
                .enumerate()
                .for_each(|(b, (((dh_prev_b, dh_b), dl_b), di_out))| {
                    let mut dinp = [<F as Real>::zero(); MAX_PORTS];
                    let mut dv_buf = [<F as Real>::zero(); MAX_DYNAMIC];
                    let block = &dyn_t[b * dstride..b * dstride + n * nd];
                    for j in 0..n {
                        gather_partials(block, j, n, &mut dv_buf[..nd]);
                        M::vjp(
                            consts,
                            &dv_buf[..nd],
                            &dh_b[j * k..(j + 1) * k],
                            dzl[[b, j]],
                            &mut dh_prev_b[j * k..(j + 1) * k],
                            &mut dinp[..p],
                            &mut dl_b[j * q..(j + 1) * q],
                        );
                        for port in 0..p {
                            di_out[port * n + j] = dinp[port];
                        }
                    }
                });
            std::mem::swap(&mut dh[l], &mut dh_prev[l]);
        }
    }

    // Weight gradients from all δI at once: dE/dW = Σ_{t,b} δI^t_b ⊗ pre^t_b, touching only
    // the nonzero (spiking) presynaptic entries.
    let z_last = &tapes[n_layers - 1].z;
    // The readout error is dense and `W^out` has few rows: dE/dW^out = δyᵀ z directly.
    outer_acc_t(
        &mut grads.readout_w.view_mut(),
        &z_last.slice(s![1.., .., ..]),
        &errs.view(),
    );
    if let Some(b) = &mut grads.readout_b {
        column_sums(&mut b.view_mut(), &errs.view());
    }
    for (l, layer) in net.layers.iter().enumerate() {
        let n = layer.size();
        let lg = &mut grads.layers[l];
        let pre: ArrayView3<F> = if l == 0 {
            x.view()
        } else {
            tapes[l - 1].z.slice(s![1.., .., ..])
        };
        let tape = &tapes[l];
        for port in 0..p {
            let d = tape.di.index_axis(Axis(2), port);
            accumulate_outer(&mut lg.w_in[port].view_mut(), &d, &pre, acc_t);
            if let Some(w) = &mut lg.w_rec {
                accumulate_outer(&mut w[port].view_mut(), &d, &tape.z.slice(s![..t_len, .., ..]), acc_t);
            }
            if let Some(bias) = &mut lg.bias {
                column_sums(&mut bias[port].view_mut(), &d);
            }
        }
        for b in 0..batch {
            for j in 0..n {
                for qi in 0..q {
                    lg.learn[[qi, j]] += dlearn[l][b * (n * q).max(1) + j * q + qi];
                }
            }
        }
        if let (true, Some(w)) = (layer.mask_self, lg.w_rec.as_mut()) {
            for m in w {
                m.diag_mut().fill(<F as Real>::zero());
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
