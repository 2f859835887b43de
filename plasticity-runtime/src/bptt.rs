//! Exact backpropagation through time from the same generated partials (reference note §3).
//!
//! The forward pass stores, per step, the dynamic partials and the outputs; the backward
//! pass runs the adjoint recursion with the generated `vjp` kernel:
//! `δI^t = B^T δh^t + Bz^T δz^t`, `δh^{t-1} = J^T δh^t + Jz^T δz^t`, with
//! `δz^t = ∂E/∂z^t + (W^rec)^T δI^{t+1} (+ (W^in_{l+1})^T δI_{l+1}^t)`. Memory grows
//! linearly with the sequence length.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, Axis, s};
use rayon::prelude::*;

use crate::eprop::RateRegularization;
use crate::gradients::Gradients;
use crate::linalg::{gemm_nn, gemm_tn_acc};
use crate::model::NeuronModel;
use crate::network::{MAX_DYNAMIC, MAX_PORTS, MAX_STATES, Network, gather_partials};
use crate::real::{Float, Real};

/// What the forward pass keeps for one layer.
struct Tape<F> {
    /// Dynamic partials per step, `[T][B·max(n·ND, 1)]`.
    dynv: Vec<F>,
    /// Outputs per step, `[T+1, B, n]`, index 0 is the initial (zero) output.
    z: Array3<F>,
}

/// Runs the forward pass over `x` (`[T, B, n_in]`), then calls `error(ys, errs)` with the
/// readout of every step (`[T, B, n_out]`) to get `errs = ∂E/∂y` (same shape, zeroed), and
/// writes the exact gradients into `grads`. Returns the bytes of the tape it kept.
pub(crate) fn gradients<M: NeuronModel, F: Float>(
    net: &Network<M, F>,
    x: ArrayView3<F>,
    reg: Option<(RateRegularization, F)>,
    grads: &mut Gradients<F>,
    error: impl FnOnce(&ArrayView3<F>, &mut Array3<F>),
) -> usize {
    let (t_len, batch) = (x.shape()[0], x.shape()[1]);
    let (k, p, q, nd) = (M::NUM_STATES, M::NUM_INPUTS, M::NUM_LEARNABLE, M::NUM_DYNAMIC);
    let n_out = net.n_out();
    let mut bufs = net.buffers(batch);
    let mut tapes: Vec<Tape<F>> = net
        .layers
        .iter()
        .map(|l| Tape {
            dynv: Vec::with_capacity(t_len * batch * (l.size() * nd).max(1)),
            z: Array3::zeros((t_len + 1, batch, l.size())),
        })
        .collect();
    let mut y = Array2::<F>::zeros((batch, n_out));
    let mut ys = Array3::<F>::zeros((t_len, batch, n_out));
    let mut errs = Array3::<F>::zeros((t_len, batch, n_out));
    for t in 0..t_len {
        net.step_forward(x.index_axis(Axis(0), t), &mut bufs, true);
        for (tape, buf) in tapes.iter_mut().zip(&bufs) {
            tape.dynv.extend_from_slice(&buf.dynv);
            tape.z.index_axis_mut(Axis(0), t + 1).assign(&buf.z);
        }
        net.readout_step(&bufs.last().expect("a layer").z.view(), &mut y);
        ys.index_axis_mut(Axis(0), t).assign(&y);
    }
    error(&ys.view(), &mut errs);

    grads.fill_zero();
    let kappa = net.readout.kappa;
    let n_layers = net.layers.len();
    // Adjoint state per layer.
    let mut dh: Vec<Vec<F>> = net
        .layers
        .iter()
        .map(|l| vec![<F as Real>::zero(); batch * l.size() * k])
        .collect();
    let mut di: Vec<Array3<F>> = net.layers.iter().map(|l| Array3::zeros((p, batch, l.size()))).collect();
    let mut di_next: Vec<Array3<F>> = di.clone();
    let mut dlearn: Vec<Vec<F>> = net
        .layers
        .iter()
        .map(|l| vec![<F as Real>::zero(); batch * (l.size() * q).max(1)])
        .collect();
    let mut di_scratch: Vec<Vec<Vec<F>>> = net
        .layers
        .iter()
        .map(|l| vec![vec![<F as Real>::zero(); p * l.size()]; batch])
        .collect();
    let mut dz: Vec<Array2<F>> = net.layers.iter().map(|l| Array2::zeros((batch, l.size()))).collect();
    let mut dy = Array2::<F>::zeros((batch, n_out));
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
        // Readout adjoint δy^t = err^t + κ δy^{t+1}.
        dy.mapv_inplace(|v| v * kappa);
        dy += &errs.index_axis(Axis(0), t);
        let z_last = tapes[n_layers - 1].z.index_axis(Axis(0), t + 1);
        gemm_tn_acc(&mut grads.readout_w.view_mut(), &dy.view(), &z_last);
        if let Some(b) = &mut grads.readout_b {
            for row in dy.axis_iter(Axis(0)) {
                b.iter_mut().zip(row.iter()).for_each(|(g, &d)| *g += d);
            }
        }
        for l in (0..n_layers).rev() {
            let layer = &net.layers[l];
            let n = layer.size();
            let dzl = &mut dz[l];
            dzl.fill(<F as Real>::zero());
            if l + 1 == n_layers {
                gemm_nn(
                    <F as Real>::zero(),
                    &mut dzl.view_mut(),
                    &dy.view(),
                    &net.readout.w.view(),
                );
            } else {
                let above = &net.layers[l + 1];
                for port in 0..p {
                    gemm_nn(
                        <F as Real>::one(),
                        &mut dzl.view_mut(),
                        &di[l + 1].index_axis(Axis(0), port),
                        &above.w_in[port].view(),
                    );
                }
            }
            if let Some(w_rec) = &layer.w_rec {
                for (port, w) in w_rec.iter().enumerate() {
                    gemm_nn(
                        <F as Real>::one(),
                        &mut dzl.view_mut(),
                        &di_next[l].index_axis(Axis(0), port),
                        &w.view(),
                    );
                }
            }
            if !rate_signal[l].is_empty() {
                for (j, &s) in rate_signal[l].iter().enumerate() {
                    dzl.column_mut(j).mapv_inplace(|v| v + s);
                }
            }
            // Per neuron: the reverse step.
            let dstride = (n * nd).max(1);
            let dyn_t = &tapes[l].dynv[t * batch * dstride..(t + 1) * batch * dstride];
            let consts = &layer.consts[..];
            let dzl = &dz[l];
            let dil = &mut di[l];
            let di_b = &mut di_scratch[l];
            dh[l]
                .par_chunks_mut(n * k)
                .zip(dlearn[l].par_chunks_mut((n * q).max(1)))
                .zip(di_b.par_iter_mut())
                .enumerate()
                .for_each(|(b, ((dh_b, dl_b), di_out))| {
                    let mut prev = [<F as Real>::zero(); MAX_STATES];
                    let mut dinp = [<F as Real>::zero(); MAX_PORTS];
                    let mut dv_buf = [<F as Real>::zero(); MAX_DYNAMIC];
                    let block = &dyn_t[b * dstride..b * dstride + n * nd];
                    for j in 0..n {
                        gather_partials(block, j, n, &mut dv_buf[..nd]);
                        let dv = &dv_buf[..nd];
                        let dhj = &mut dh_b[j * k..(j + 1) * k];
                        M::vjp(
                            consts,
                            dv,
                            dhj,
                            dzl[[b, j]],
                            &mut prev[..k],
                            &mut dinp[..p],
                            &mut dl_b[j * q..(j + 1) * q],
                        );
                        dhj.copy_from_slice(&prev[..k]);
                        for port in 0..p {
                            di_out[port * n + j] = dinp[port];
                        }
                    }
                });
            for (b, v) in di_b.iter().enumerate() {
                for port in 0..p {
                    dil.slice_mut(s![port, b, ..])
                        .iter_mut()
                        .zip(&v[port * n..(port + 1) * n])
                        .for_each(|(d, s)| *d = *s);
                }
            }
            // Weight gradients from δI^t.
            let lg = &mut grads.layers[l];
            let pre: ArrayView2<F> = if l == 0 {
                x.index_axis(Axis(0), t)
            } else {
                tapes[l - 1].z.index_axis(Axis(0), t + 1)
            };
            let z_prev = tapes[l].z.index_axis(Axis(0), t);
            for port in 0..p {
                let d = dil.index_axis(Axis(0), port);
                gemm_tn_acc(&mut lg.w_in[port].view_mut(), &d, &pre);
                if let Some(w) = &mut lg.w_rec {
                    gemm_tn_acc(&mut w[port].view_mut(), &d, &z_prev);
                }
                if let Some(bias) = &mut lg.bias {
                    for row in d.axis_iter(Axis(0)) {
                        bias[port].iter_mut().zip(row.iter()).for_each(|(g, &v)| *g += v);
                    }
                }
            }
        }
        std::mem::swap(&mut di, &mut di_next);
    }
    for (l, layer) in net.layers.iter().enumerate() {
        let n = layer.size();
        let lg = &mut grads.layers[l];
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
    tapes.iter().map(|tp| tp.dynv.len() + tp.z.len()).sum::<usize>() * std::mem::size_of::<F>()
        + (errs.len() + ys.len()) * std::mem::size_of::<F>()
}
