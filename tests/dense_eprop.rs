//! The sparse, pattern-specialised e-prop of the runtime equals a dense reference e-prop
//! that uses the full k×k Jacobians and a k-vector trace per synapse for everything,
//! to 1e-12 relative (f64), with recurrent weights, biases, several ports and learnable
//! parameters.

use ndarray::{Array2, Array3};
use plasticity_runtime::models::*;
use plasticity_runtime::{
    Algorithm, Feedback, Gradients, Init, LayerSpec, Loss, Network, NetworkBuilder, NeuronModel, Optimizer, Plain,
    ReadoutSpec, Targets, TrainConfig, Trainer, Window,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Dense e-prop for a one-layer network, written from eq. (1)–(3) of the reference note.
fn dense_eprop<M: NeuronModel>(net: &Network<f64>, x: &Array3<f64>, classes: &[usize]) -> Gradients<f64> {
    let (k, p, q) = (M::NUM_STATES, M::NUM_INPUTS, M::NUM_LEARNABLE);
    let model = net.populations[0].model::<M>().expect("a one-layer network of model M");
    let n = net.populations[0].size();
    let n_in = net.n_in;
    // The layered shorthand adds the input projections (one per port), then the recurrent
    // ones.
    let w_in: Vec<Array2<f64>> = (0..p).map(|port| net.dense_weights(port)).collect();
    let w_rec: Option<Vec<Array2<f64>>> =
        (net.projections.len() > p).then(|| (0..p).map(|port| net.dense_weights(p + port)).collect());
    let (bias, learnable) = (&net.params.bias[0], &net.params.learnable[0]);
    let (w_out, b_out) = (&net.params.readout_w[0], &net.params.readout_b);
    let (t_len, batch) = (x.shape()[0], x.shape()[1]);
    let n_out = net.n_out();
    let kappa = net.readout.kappa;
    let scale = 1.0 / (batch * t_len) as f64;
    let mut g = net.params.zeros_like();
    let mut consts = vec![0.0; M::NUM_CONSTS];
    model.constants(&mut consts);
    // Sources: (port, presynaptic count, kind) with kind 0 input, 1 recurrent, 2 bias.
    let mut sources = Vec::new();
    for port in 0..p {
        sources.push((port, n_in, 0));
        if w_rec.is_some() {
            sources.push((port, n, 1));
        }
        if bias.is_some() {
            sources.push((port, 1, 2));
        }
    }
    for b in 0..batch {
        let mut state = vec![0.0; n * k];
        for j in 0..n {
            let learn: Vec<f64> = (0..q).map(|qi| learnable[[qi, j]]).collect();
            model.initial_state(&learn, &mut state[j * k..(j + 1) * k]);
        }
        let mut z_prev = vec![0.0; n];
        let mut y = vec![0.0; n_out];
        let mut zbar = vec![0.0; n];
        let mut bbar = 0.0;
        // eps[source][j][i][k], ebar[source][j][i]
        let mut eps: Vec<Vec<f64>> = sources.iter().map(|&(_, m, _)| vec![0.0; n * m * k]).collect();
        let mut ebar: Vec<Vec<f64>> = sources.iter().map(|&(_, m, _)| vec![0.0; n * m]).collect();
        // Parameter traces start at the initial state's derivatives ∂s0/∂θ.
        let mut eps_p = vec![0.0; n * q * k];
        for j in 0..n {
            let learn: Vec<f64> = (0..q).map(|qi| learnable[[qi, j]]).collect();
            model.initial_partials(&learn, &mut eps_p[j * q * k..(j + 1) * q * k]);
        }
        let mut ebar_p = vec![0.0; n * q];
        for t in 0..t_len {
            let xt: Vec<f64> = (0..n_in).map(|i| x[[t, b, i]]).collect();
            let mut z = vec![0.0; n];
            let mut jac = vec![
                (
                    vec![0.0; k * k],
                    vec![0.0; k],
                    vec![0.0; k * p],
                    vec![0.0; p],
                    vec![0.0; k * q],
                    vec![0.0; q]
                );
                n
            ];
            for j in 0..n {
                let mut input = vec![0.0; p];
                for (port, v) in input.iter_mut().enumerate() {
                    *v = (0..n_in).map(|i| w_in[port][[j, i]] * xt[i]).sum::<f64>();
                    if let Some(w) = &w_rec {
                        *v += (0..n).map(|i| w[port][[j, i]] * z_prev[i]).sum::<f64>();
                    }
                    if let Some(bias) = bias {
                        *v += bias[[port, j]];
                    }
                }
                let learn: Vec<f64> = (0..q).map(|qi| learnable[[qi, j]]).collect();
                let mut next = vec![0.0; k];
                let mut dynv = vec![0.0; M::NUM_DYNAMIC];
                z[j] = model.eval_partials(
                    &learn,
                    &state[j * k..(j + 1) * k],
                    &input,
                    &mut next,
                    &mut dynv,
                    &mut Plain,
                );
                state[j * k..(j + 1) * k].copy_from_slice(&next);
                let jj = &mut jac[j];
                M::dense_partials(
                    &consts, &dynv, &mut jj.0, &mut jj.1, &mut jj.2, &mut jj.3, &mut jj.4, &mut jj.5,
                );
            }
            for o in 0..n_out {
                y[o] = kappa * y[o]
                    + (0..n).map(|j| w_out[[o, j]] * z[j]).sum::<f64>()
                    + b_out.as_ref().map_or(0.0, |b| b[o]);
            }
            let max = y.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = y.iter().map(|v| (v - max).exp()).sum();
            let err: Vec<f64> = (0..n_out)
                .map(|o| scale * ((y[o] - max).exp() / sum - if o == classes[b] { 1.0 } else { 0.0 }))
                .collect();
            let signal: Vec<f64> = (0..n)
                .map(|j| (0..n_out).map(|o| err[o] * w_out[[o, j]]).sum())
                .collect();
            for (s, &(port, m, kind)) in sources.iter().enumerate() {
                for j in 0..n {
                    let (jm, jz, bm, bz, _, _) = &jac[j];
                    for i in 0..m {
                        let pre = match kind {
                            0 => xt[i],
                            1 => z_prev[i],
                            _ => 1.0,
                        };
                        let e_old = &eps[s][(j * m + i) * k..(j * m + i + 1) * k];
                        let e: f64 = (0..k).map(|c| jz[c] * e_old[c]).sum::<f64>() + bz[port] * pre;
                        let new: Vec<f64> = (0..k)
                            .map(|r| (0..k).map(|c| jm[r * k + c] * e_old[c]).sum::<f64>() + bm[r * p + port] * pre)
                            .collect();
                        eps[s][(j * m + i) * k..(j * m + i + 1) * k].copy_from_slice(&new);
                        let eb = kappa * ebar[s][j * m + i] + e;
                        ebar[s][j * m + i] = eb;
                        match kind {
                            0 => g.projections[port][j * m + i] += signal[j] * eb,
                            1 => g.projections[p + port][j * m + i] += signal[j] * eb,
                            _ => g.bias[0].as_mut().unwrap()[[port, j]] += signal[j] * eb,
                        }
                    }
                }
            }
            for j in 0..n {
                let (jm, jz, _, _, pm, pz) = &jac[j];
                for qi in 0..q {
                    let e_old = eps_p[(j * q + qi) * k..(j * q + qi + 1) * k].to_vec();
                    let e: f64 = (0..k).map(|c| jz[c] * e_old[c]).sum::<f64>() + pz[qi];
                    for r in 0..k {
                        eps_p[(j * q + qi) * k + r] =
                            (0..k).map(|c| jm[r * k + c] * e_old[c]).sum::<f64>() + pm[r * q + qi];
                    }
                    let eb = kappa * ebar_p[j * q + qi] + e;
                    ebar_p[j * q + qi] = eb;
                    g.learnable[0][[qi, j]] += signal[j] * eb;
                }
            }
            bbar = kappa * bbar + 1.0;
            for j in 0..n {
                zbar[j] = kappa * zbar[j] + z[j];
            }
            for o in 0..n_out {
                for j in 0..n {
                    g.readout_w[0][[o, j]] += err[o] * zbar[j];
                }
                if let Some(rb) = &mut g.readout_b {
                    rb[o] += err[o] * bbar;
                }
            }
            z_prev = z;
        }
    }
    // Self-connections are masked.
    if w_rec.is_some() {
        for port in 0..p {
            for j in 0..n {
                g.projections[p + port][j * n + j] = 0.0;
            }
        }
    }
    g
}

fn check<M: NeuronModel>(model: M, gain: f64) {
    for (seed, kappa) in [(1u64, 0.0), (2, 0.7)] {
        let net: Network<f64> = NetworkBuilder::new(4)
            .layer(
                LayerSpec::new(model.clone(), 6)
                    .recurrent(true)
                    .bias(true)
                    .init_in(Init::Gaussian { gain })
                    .init_rec(Init::Gaussian { gain: gain / 2.0 }),
            )
            .readout(ReadoutSpec::new(3, kappa))
            .seed(seed)
            .build()
            .unwrap();
        let mut rng = StdRng::seed_from_u64(seed + 10);
        let x = Array3::from_shape_fn((20, 3, 4), |_| if rng.random_bool(0.3) { 1.0 } else { 0.0 });
        let classes = [0, 1, 2];
        let mut tr = Trainer::new(
            net.clone(),
            TrainConfig::new(
                Algorithm::Eprop(Feedback::Symmetric),
                Loss::CrossEntropy(Window::All),
                Optimizer::adam(1e-3),
            ),
        )
        .unwrap();
        let (sparse, _) = tr.compute_gradients(x.view(), Targets::Classes(&classes)).unwrap();
        let dense = dense_eprop::<M>(&net, &x, &classes);
        assert!(dense.norm() > 0.0);
        let diff = sparse.max_rel_diff(&dense, 1e-12);
        assert!(
            diff <= 1e-12,
            "{} κ={kappa}: sparse vs dense e-prop {diff:e}",
            M::PATTERN.model
        );
        let spikes: f64 = net.run(x.view()).unwrap().spikes[0].iter().sum();
        assert!(spikes != 0.0, "{}: no activity", M::PATTERN.model);
    }
}

#[test]
fn sparse_equals_dense() {
    check(BellecLif::default(), 3.0);
    check(BellecAlif::default(), 3.0);
    check(BellecAlifDiffReset::default(), 3.0);
    check(CubaLif::default(), 4.0);
    check(SigmaDelta::default(), 1.0);
    check(PaperAlif::default(), 10.0);
    check(LeakyIntegrator::default(), 2.0);
    check(Izhikevich::default(), 30.0);
}
