//! The trainer's options against direct computations written out here, independently of the
//! engine: random feedback, weight updates within a sequence (`update_every`) and e-prop's
//! running-rate regularisation, all on Bellec's LIF (its equations and surrogate copied from
//! its documentation); and BPTT with rate regularisation against finite differences.

use ndarray::{Array1, Array2, Array3};
use plasticity_runtime::models::{BellecAlif, BellecLif};
use plasticity_runtime::{
    Algorithm, Connectivity, Feedback, GradcheckOptions, Init, LayerSpec, Loss, NetworkBuilder, Optimizer,
    PopulationSpec, ProjectionSpec, RateForm, RateRegularization, ReadoutGain, ReadoutSpec, Reduction, Targets,
    TrainConfig, Trainer, Window, gradcheck,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const N_IN: usize = 5;
const N: usize = 6;
const N_OUT: usize = 2;
const T: usize = 23;
const B: usize = 3;

/// The weights the reference updates: input, readout weights and readout bias.
#[derive(Clone, Debug)]
struct Weights {
    w_in: Array2<f64>,
    w_out: Array2<f64>,
    b_out: Array1<f64>,
}

/// e-prop on a feed-forward population of Bellec's LIF neurons (no refractory period) with a
/// leaky readout and the mean squared loss over every step, written out step by step: the
/// learning signal `err · fb` (`fb = None`: the current `W_out`, symmetric e-prop) plus the running-rate term, κ-filtered traces, and a plain
/// gradient step `w -= lr g` after every `every` steps and at the end.
#[allow(clippy::too_many_arguments)]
fn reference(
    lif: &BellecLif,
    mut w: Weights,
    kappa: f64,
    x: &Array3<f64>,
    y_target: &Array3<f64>,
    fb: Option<&Array2<f64>>,
    reg: Option<RateRegularization>,
    every: usize,
    lr: f64,
) -> Weights {
    let (alpha, v_th) = (lif.alpha, lif.v_th);
    let psi = |v: f64| lif.gamma / v_th * (1.0 - (v - v_th).abs() / v_th).max(0.0);
    let scale = 1.0 / (B * T) as f64;
    let mut v = Array2::<f64>::zeros((B, N));
    let mut z = Array2::<f64>::zeros((B, N));
    let mut y = Array2::<f64>::zeros((B, N_OUT));
    let mut eps = Array2::<f64>::zeros((B, N_IN)); // ε_i, shared by every postsynaptic neuron
    let mut ebar = Array3::<f64>::zeros((B, N, N_IN));
    let mut zbar = Array2::<f64>::zeros((B, N));
    let mut one_bar = 0.0;
    let mut count = Array1::<f64>::zeros(N);
    let mut sample_count = Array2::<f64>::zeros((B, N));
    let mut esum = Array3::<f64>::zeros((B, N, N_IN));
    let zeros = |w: &Weights| {
        (
            Array2::<f64>::zeros(w.w_in.raw_dim()),
            Array2::<f64>::zeros(w.w_out.raw_dim()),
            Array1::<f64>::zeros(w.b_out.raw_dim()),
        )
    };
    let (mut g_in, mut g_out, mut g_b) = zeros(&w);
    let mut since = 0;
    for t in 0..T {
        // Forward: the detached reset uses the previous step's spike.
        for b in 0..B {
            for j in 0..N {
                let input: f64 = (0..N_IN).map(|i| w.w_in[[j, i]] * x[[t, b, i]]).sum();
                v[[b, j]] = alpha * v[[b, j]] + input - z[[b, j]] * v_th;
                z[[b, j]] = f64::from(u8::from(v[[b, j]] - v_th > 0.0));
            }
            for i in 0..N_IN {
                eps[[b, i]] = alpha * eps[[b, i]] + x[[t, b, i]];
            }
            for k in 0..N_OUT {
                let drive: f64 = (0..N).map(|j| w.w_out[[k, j]] * z[[b, j]]).sum();
                y[[b, k]] = kappa * y[[b, k]] + drive + w.b_out[k];
            }
        }
        for j in 0..N {
            count[j] += (0..B).map(|b| z[[b, j]]).sum::<f64>();
        }
        one_bar = kappa * one_bar + 1.0;
        // Learning signals and gradient accumulation.
        for b in 0..B {
            let err: Vec<f64> = (0..N_OUT).map(|k| scale * (y[[b, k]] - y_target[[t, b, k]])).collect();
            for j in 0..N {
                zbar[[b, j]] = kappa * zbar[[b, j]] + z[[b, j]];
                // Symmetric feedback reads the readout weights as they are now.
                let feedback = |k: usize| fb.map_or(w.w_out[[k, j]], |f| f[[k, j]]);
                let mut l: f64 = (0..N_OUT).map(|k| err[k] * feedback(k)).sum();
                if let Some(r) = reg.filter(|r| r.form == RateForm::Running) {
                    let rate = count[j] / ((t + 1) * B) as f64;
                    l += r.strength * (rate - r.target) * scale;
                }
                let p = psi(v[[b, j]]);
                sample_count[[b, j]] += z[[b, j]];
                for i in 0..N_IN {
                    ebar[[b, j, i]] = kappa * ebar[[b, j, i]] + p * eps[[b, i]];
                    g_in[[j, i]] += l * ebar[[b, j, i]];
                    esum[[b, j, i]] += p * eps[[b, i]];
                }
                for k in 0..N_OUT {
                    g_out[[k, j]] += err[k] * zbar[[b, j]];
                }
            }
            for k in 0..N_OUT {
                g_b[k] += err[k] * one_bar;
            }
        }
        since += 1;
        // NEST's per-sequence form: (1/B) Σ_b r_jb Σ_t e_jib^t, r_jb = c (n_jb/T − f*)/T.
        if let Some(r) = reg.filter(|r| r.form == RateForm::PerSequence && t + 1 == T) {
            for b in 0..B {
                for j in 0..N {
                    let rj = r.strength * (sample_count[[b, j]] / T as f64 - r.target) / T as f64 / B as f64;
                    for i in 0..N_IN {
                        g_in[[j, i]] += rj * esum[[b, j, i]];
                    }
                }
            }
        }
        if since == every || t + 1 == T {
            w.w_in.scaled_add(-lr, &g_in);
            w.w_out.scaled_add(-lr, &g_out);
            w.b_out.scaled_add(-lr, &g_b);
            (g_in, g_out, g_b) = zeros(&w);
            since = 0;
        }
    }
    w
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / x.abs().max(y.abs()).max(1e-12))
        .fold(0.0, f64::max)
}

#[test]
fn random_feedback_updates_within_a_sequence_and_running_rate_regularisation() {
    let lif = BellecLif {
        alpha: 0.8,
        ..BellecLif::default()
    };
    let mut rng = StdRng::seed_from_u64(4);
    let x = Array3::from_shape_fn((T, B, N_IN), |_| f64::from(u8::from(rng.random_bool(0.4))));
    let y_target = Array3::from_shape_fn((T, B, N_OUT), |(t, b, k)| ((t + 2 * b + 5 * k) as f64 * 0.3).sin());
    let running = RateRegularization::running(3.0, 0.05);
    let per_sequence = RateRegularization::per_sequence(30.0, 0.05);
    let lr = 0.5;
    // A given feedback matrix `[n_out, n]` (NEST's `weights_out_rec`, transposed).
    let given = Array2::from_shape_fn((N_OUT, N), |(k, j)| ((k * N + j) as f64 * 0.7).cos());
    let mut checked = 0;
    for (kappa, feedback, every, reg) in [
        (0.0, Feedback::Symmetric, None, None),
        (0.6, Feedback::Random { seed: 9 }, None, None),
        (0.6, Feedback::Random { seed: 9 }, None, Some(running)),
        (0.0, Feedback::Symmetric, Some(5), Some(running)),
        (0.6, Feedback::Random { seed: 2 }, Some(4), Some(running)),
        (0.6, Feedback::Symmetric, Some(1), None),
        (
            0.6,
            Feedback::Matrices(vec![("layer0".into(), given.clone())]),
            Some(7),
            Some(running),
        ),
        (0.0, Feedback::Symmetric, None, Some(per_sequence)),
        (0.6, Feedback::Random { seed: 3 }, None, Some(per_sequence)),
    ] {
        let net = NetworkBuilder::<f64>::new(N_IN)
            .layer(LayerSpec::new(lif.clone(), N).init_in(Init::Gaussian { gain: 3.0 }))
            .readout(ReadoutSpec::new(N_OUT, kappa))
            .seed(21)
            .build()
            .unwrap();
        let start = Weights {
            w_in: Array2::from_shape_vec((N, N_IN), net.params.projections[0].clone()).unwrap(),
            w_out: net.params.readout_w[0].clone(),
            b_out: net.params.readout_b.clone().expect("readout bias"),
        };
        // Random feedback: `N(0, 1/n)` drawn `[n_out, n]` from the seed plus the population's
        // index (0 here), as `Feedback::Random` documents.
        let fb = match feedback {
            Feedback::Random { seed } => {
                Some(Init::Gaussian { gain: 1.0 }.draw::<f64>(N_OUT, N, &mut StdRng::seed_from_u64(seed)))
            }
            Feedback::Matrices(ref m) => Some(m[0].1.clone()),
            Feedback::Symmetric => None,
        };
        let want = reference(
            &lif,
            start.clone(),
            kappa,
            &x,
            &y_target,
            fb.as_ref(),
            reg,
            every.unwrap_or(T),
            lr,
        );
        let case = format!("κ {kappa}, {feedback:?}, every {every:?}, {reg:?}");
        let got = train(&net, feedback, every, reg, lr, &x, &y_target);
        let err = max_rel(&got.0, want.w_in.as_slice().unwrap());
        assert!(err < 1e-10, "{case}: w_in off by {err:e}");
        let err = max_rel(&got.1, want.w_out.as_slice().unwrap());
        assert!(err < 1e-10, "{case}: w_out off by {err:e}");
        let err = max_rel(&got.2, want.b_out.as_slice().unwrap());
        assert!(err < 1e-10, "{case}: b_out off by {err:e}");
        // Training moved the weights, or the comparison would be empty.
        assert!(
            max_rel(&got.0, start.w_in.as_slice().unwrap()) > 1e-6,
            "{case}: no change"
        );
        checked += 1;
    }
    assert_eq!(checked, 9);
}

/// One batch through the trainer with SGD: the final input weights, readout weights and bias.
fn train(
    net: &plasticity_runtime::Network<f64>,
    feedback: Feedback,
    every: Option<usize>,
    reg: Option<RateRegularization>,
    lr: f64,
    x: &Array3<f64>,
    y_target: &Array3<f64>,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut c = TrainConfig::new(
        Algorithm::Eprop(feedback),
        Loss::MeanSquared(Window::All),
        Optimizer::sgd(lr, 0.0),
    );
    c.update_every = every;
    c.rate_regularization = reg;
    let mut trainer = Trainer::new(net.clone(), c).unwrap();
    trainer.train_batch(x.view(), Targets::Series(y_target.view())).unwrap();
    let p = &trainer.network().params;
    (
        p.projections[0].to_vec(),
        p.readout_w[0].iter().copied().collect(),
        p.readout_b.iter().flatten().copied().collect(),
    )
}

/// BPTT with rate regularisation on a recurrent LIF + ALIF network with a sparse projection:
/// the exact gradient of the regularised loss, against finite differences of it; and the
/// regulariser does change the gradient.
#[test]
fn bptt_rate_regularisation_matches_finite_differences() {
    let net = NetworkBuilder::<f64>::new(4)
        .population(PopulationSpec::new("lif", BellecLif::default(), 5))
        .population(PopulationSpec::new("alif", BellecAlif::default(), 4).bias(true))
        .projection(ProjectionSpec::input("lif").init(Init::Gaussian { gain: 3.0 }))
        .projection(ProjectionSpec::input("alif").init(Init::Gaussian { gain: 3.0 }))
        .projection(ProjectionSpec::new("lif", "lif").init(Init::Gaussian { gain: 1.0 }))
        .projection(
            ProjectionSpec::new("lif", "alif")
                .init(Init::Gaussian { gain: 1.0 })
                .connectivity(Connectivity::Probability { p: 0.5, seed: 3 }),
        )
        .readout(ReadoutSpec::new(3, 0.5).from(["lif", "alif"]))
        .seed(8)
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(6);
    let x = Array3::from_shape_fn((20, 2, 4), |_| f64::from(u8::from(rng.random_bool(0.4))));
    let loss = Loss::CrossEntropy(Window::All);
    let reg = RateRegularization::running(5.0, 0.02);
    let options = GradcheckOptions {
        max_per_tensor: usize::MAX,
        rate_regularization: Some(reg),
        ..GradcheckOptions::default()
    };
    let report = gradcheck(&net, loss, x.view(), Targets::Classes(&[0, 2]), options).unwrap();
    assert!(report.checked >= 60, "only {} entries checked", report.checked);
    assert!(report.worst <= 1e-6, "{report:?}");
    // Without the regulariser in the check, the regularised BPTT gradient is off: the term
    // is really there.
    let mut c = TrainConfig::new(Algorithm::Bptt, loss, Optimizer::sgd(0.0, 0.0));
    let plain = {
        let mut t = Trainer::new(net.clone(), c.clone()).unwrap();
        t.compute_gradients(x.view(), Targets::Classes(&[0, 2]))
            .unwrap()
            .0
            .clone()
    };
    c.rate_regularization = Some(reg);
    let mut t = Trainer::new(net, c).unwrap();
    let regularised = t
        .compute_gradients(x.view(), Targets::Classes(&[0, 2]))
        .unwrap()
        .0
        .clone();
    let moved: f64 = plain
        .slots()
        .flat_map(|s| {
            let (a, b) = (plain.get(s).to_vec(), regularised.get(s).to_vec());
            a.into_iter().zip(b).map(|(a, b)| (a - b).abs()).collect::<Vec<_>>()
        })
        .fold(0.0, f64::max);
    assert!(moved > 1e-4, "the regulariser changed the gradient by only {moved:e}");
}

#[test]
fn feedback_matrices_are_checked() {
    let net = NetworkBuilder::<f64>::new(2)
        .layer(LayerSpec::new(BellecLif::default(), 3))
        .readout(ReadoutSpec::new(2, 0.0))
        .build()
        .unwrap();
    let config = |m: Vec<(String, Array2<f64>)>| {
        TrainConfig::new(
            Algorithm::Eprop(Feedback::Matrices(m)),
            Loss::MeanSquared(Window::All),
            Optimizer::sgd(0.1, 0.0),
        )
    };
    let fails = |m: Vec<(String, Array2<f64>)>, expected: &str| {
        let e = Trainer::new(net.clone(), config(m)).err().expect("refused").to_string();
        assert!(e.contains(expected), "{e}");
    };
    fails(vec![], "none for population layer0");
    fails(
        vec![("other".into(), Array2::zeros((2, 3)))],
        "the name of a population",
    );
    fails(vec![("layer0".into(), Array2::zeros((3, 2)))], "[n_out, n] = [2, 3]");
    fails(vec![("layer0".into(), Array2::from_elem((2, 3), f64::NAN))], "finite");
    assert!(Trainer::new(net.clone(), config(vec![("layer0".into(), Array2::zeros((2, 3)))])).is_ok());
}

/// The loss summed over steps: BPTT against finite differences of the summed loss; its
/// gradients and loss are the mean's times the window for e-prop and BPTT alike; and e-prop
/// stays equal to BPTT without recurrence.
#[test]
fn summed_losses() {
    let mut rng = StdRng::seed_from_u64(12);
    let x = Array3::from_shape_fn((T, B, N_IN), |_| f64::from(u8::from(rng.random_bool(0.4))));
    let y_target = Array3::from_shape_fn((T, B, N_OUT), |(t, b, k)| ((t + b + 3 * k) as f64 * 0.2).cos());
    for (recurrent, loss, window) in [
        (true, Loss::CrossEntropy(Window::Last(7)), 7),
        (false, Loss::MeanSquared(Window::All), T),
        (false, Loss::CrossEntropy(Window::Range(3, 15)), 12),
    ] {
        let net = NetworkBuilder::<f64>::new(N_IN)
            .layer(
                LayerSpec::new(BellecLif::default(), N)
                    .recurrent(recurrent)
                    .init_in(Init::Gaussian { gain: 3.0 }),
            )
            .readout(ReadoutSpec::new(N_OUT, 0.5))
            .seed(3)
            .build()
            .unwrap();
        let classes = [0, 1, 1];
        let targets = || {
            if loss.is_classification() {
                Targets::Classes(&classes)
            } else {
                Targets::Series(y_target.view())
            }
        };
        if recurrent {
            let options = GradcheckOptions {
                max_per_tensor: usize::MAX,
                reduction: Reduction::SumOverSteps,
                ..GradcheckOptions::default()
            };
            let report = gradcheck(&net, loss, x.view(), targets(), options).unwrap();
            assert!(report.worst <= 1e-6, "{loss:?}: {report:?}");
        }
        let mut results = Vec::new();
        for algorithm in [Algorithm::Bptt, Algorithm::Eprop(Feedback::Symmetric)] {
            let run = |reduction| {
                let mut c = TrainConfig::new(algorithm.clone(), loss, Optimizer::sgd(0.0, 0.0));
                c.reduction = reduction;
                let mut t = Trainer::new(net.clone(), c).unwrap();
                let (g, stats) = t.compute_gradients(x.view(), targets()).unwrap();
                let flat: Vec<f64> = g.slots().flat_map(|s| g.get(s).to_vec()).collect();
                (flat, stats.loss)
            };
            let (mean, mean_loss) = run(Reduction::MeanOverSteps);
            let (sum, sum_loss) = run(Reduction::SumOverSteps);
            let scaled: Vec<f64> = mean.iter().map(|g| g * window as f64).collect();
            let err = max_rel(&sum, &scaled);
            assert!(err < 1e-12, "{loss:?} {algorithm:?}: gradient off by {err:e}");
            assert!((sum_loss - mean_loss * window as f64).abs() < 1e-12 * sum_loss.abs());
            results.push(sum);
        }
        if !recurrent {
            let err = max_rel(&results[0], &results[1]);
            assert!(err < 1e-9, "{loss:?}: e-prop vs BPTT off by {err:e}");
        }
    }
}

/// The normalised readout `y = κ y + (1 − κ)(W z + b)`: a constant drive settles at the drive
/// itself; BPTT is exact (finite differences) and e-prop equals BPTT without recurrence.
#[test]
fn normalised_readout() {
    let mut rng = StdRng::seed_from_u64(13);
    let x = Array3::from_shape_fn((T, B, N_IN), |_| f64::from(u8::from(rng.random_bool(0.4))));
    let classes = [1, 0, 1];
    // A readout of a silent population settles at its bias.
    let silent = NetworkBuilder::<f64>::new(N_IN)
        .layer(LayerSpec::new(BellecLif::default(), N).init_in(Init::Zeros))
        .readout(ReadoutSpec::new(N_OUT, 0.9).gain(ReadoutGain::OneMinusKappa))
        .build()
        .unwrap();
    let mut silent = silent;
    silent.params.readout_b = Some(Array1::from(vec![0.3, -2.0]));
    let long = Array3::zeros((400, 1, N_IN));
    let y = silent.run(long.view()).unwrap().readout;
    assert!((y[[399, 0, 0]] - 0.3).abs() < 1e-12 && (y[[399, 0, 1]] + 2.0).abs() < 1e-12);
    assert!((y[[0, 0, 0]] - 0.1 * 0.3).abs() < 1e-15, "first step: (1 − κ) b");
    for recurrent in [true, false] {
        let net = NetworkBuilder::<f64>::new(N_IN)
            .layer(
                LayerSpec::new(BellecLif::default(), N)
                    .recurrent(recurrent)
                    .init_in(Init::Gaussian { gain: 3.0 }),
            )
            .readout(ReadoutSpec::new(N_OUT, 0.7).gain(ReadoutGain::OneMinusKappa))
            .seed(5)
            .build()
            .unwrap();
        let loss = Loss::CrossEntropy(Window::Last(9));
        if recurrent {
            let options = GradcheckOptions {
                max_per_tensor: usize::MAX,
                ..GradcheckOptions::default()
            };
            let report = gradcheck(&net, loss, x.view(), Targets::Classes(&classes), options).unwrap();
            assert!(report.worst <= 1e-6, "{report:?}");
            continue;
        }
        let grads = |algorithm| {
            let mut t = Trainer::new(net.clone(), TrainConfig::new(algorithm, loss, Optimizer::sgd(0.0, 0.0))).unwrap();
            let (g, _) = t.compute_gradients(x.view(), Targets::Classes(&classes)).unwrap();
            g.slots().flat_map(|s| g.get(s).to_vec()).collect::<Vec<f64>>()
        };
        let (bptt, eprop) = (grads(Algorithm::Bptt), grads(Algorithm::Eprop(Feedback::Symmetric)));
        let err = max_rel(&bptt, &eprop);
        assert!(err < 1e-9, "e-prop vs BPTT off by {err:e}");
        // And the gain matters: the plain readout's gradients differ.
        let plain = NetworkBuilder::<f64>::new(N_IN)
            .layer(LayerSpec::new(BellecLif::default(), N).init_in(Init::Gaussian { gain: 3.0 }))
            .readout(ReadoutSpec::new(N_OUT, 0.7))
            .seed(5)
            .build()
            .unwrap();
        let mut t = Trainer::new(plain, TrainConfig::new(Algorithm::Bptt, loss, Optimizer::sgd(0.0, 0.0))).unwrap();
        let (g, _) = t.compute_gradients(x.view(), Targets::Classes(&classes)).unwrap();
        let other: Vec<f64> = g.slots().flat_map(|s| g.get(s).to_vec()).collect();
        assert!(max_rel(&bptt, &other) > 1e-3);
    }
}

/// The per-sequence regulariser on a sparse projection and a bias equals it on the same
/// synapses stored densely under a mask, with the bias as a weight from a constant input: its
/// terms follow each synapse to its postsynaptic neuron in every storage. It is refused with
/// BPTT and with updates within a sequence.
#[test]
fn per_sequence_regularisation_on_sparse_projections_and_biases() {
    let sparse = Connectivity::Probability { p: 0.5, seed: 3 };
    let mask = sparse.to_mask(N, N_IN).unwrap();
    let mut wide = Array2::from_elem((N, N_IN + 1), true);
    wide.slice_mut(ndarray::s![.., ..N_IN]).assign(&mask);
    let build = |n_in: usize, connectivity: Connectivity, bias: bool| {
        NetworkBuilder::<f64>::new(n_in)
            .population(PopulationSpec::new("p", BellecLif::default(), N).bias(bias))
            .projection(
                ProjectionSpec::input("p")
                    .init(Init::Gaussian { gain: 3.0 })
                    .connectivity(connectivity),
            )
            .projection(ProjectionSpec::new("p", "p").init(Init::Gaussian { gain: 0.5 }))
            .readout(ReadoutSpec::new(N_OUT, 0.5))
            .seed(17)
            .build()
            .unwrap()
    };
    let mut test = build(N_IN, sparse, true);
    let mut reference = build(N_IN + 1, Connectivity::Mask(wide.clone()), false);
    // The same weights: the sparse list in row-major order of the mask, the bias as the
    // constant input's column.
    let bias: Vec<f64> = (0..N).map(|j| 0.1 * j as f64 - 0.2).collect();
    test.params.bias[0] = Some(Array2::from_shape_vec((1, N), bias.clone()).unwrap());
    let mut dense = Array2::<f64>::zeros((N, N_IN + 1));
    let mut stored = test.params.projections[0].iter();
    for ((j, i), &on) in mask.indexed_iter() {
        if on {
            dense[[j, i]] = *stored.next().unwrap();
        }
    }
    dense.column_mut(N_IN).assign(&Array1::from(bias));
    reference.params.projections[0] = dense.iter().copied().collect();
    reference.params.projections[1] = test.params.projections[1].clone();
    reference.params.readout_w = test.params.readout_w.clone();
    reference.params.readout_b = test.params.readout_b.clone();
    let mut rng = StdRng::seed_from_u64(8);
    let x = Array3::from_shape_fn((T, B, N_IN), |_| f64::from(u8::from(rng.random_bool(0.4))));
    let x_wide = Array3::from_shape_fn((T, B, N_IN + 1), |(t, b, i)| if i < N_IN { x[[t, b, i]] } else { 1.0 });
    let reg = RateRegularization::per_sequence(40.0, 0.02);
    let grads = |net: &plasticity_runtime::Network<f64>, x: &Array3<f64>| {
        let mut c = TrainConfig::new(
            Algorithm::Eprop(Feedback::Random { seed: 1 }),
            Loss::CrossEntropy(Window::Last(5)),
            Optimizer::sgd(0.0, 0.0),
        );
        c.rate_regularization = Some(reg);
        let mut t = Trainer::new(net.clone(), c).unwrap();
        t.compute_gradients(x.view(), Targets::Classes(&[0, 1, 0]))
            .unwrap()
            .0
            .clone()
    };
    let (g, r) = (grads(&test, &x), grads(&reference, &x_wide));
    let mut stored = g.projections[0].iter();
    let (mut want, mut got) = (Vec::new(), Vec::new());
    for ((j, i), &on) in mask.indexed_iter() {
        if on {
            got.push(*stored.next().unwrap());
            want.push(r.projections[0][j * (N_IN + 1) + i]);
        }
    }
    got.extend(g.bias[0].as_ref().unwrap().iter().copied());
    want.extend((0..N).map(|j| r.projections[0][j * (N_IN + 1) + N_IN]));
    got.extend(g.projections[1].iter().copied());
    want.extend(r.projections[1].iter().copied());
    let err = max_rel(&got, &want);
    assert!(err < 1e-12, "sparse + bias vs masked + constant input: {err:e}");
    // The regulariser is really there: without it the gradients differ.
    let mut c = TrainConfig::new(
        Algorithm::Eprop(Feedback::Random { seed: 1 }),
        Loss::CrossEntropy(Window::Last(5)),
        Optimizer::sgd(0.0, 0.0),
    );
    let mut t = Trainer::new(test.clone(), c.clone()).unwrap();
    let plain = t
        .compute_gradients(x.view(), Targets::Classes(&[0, 1, 0]))
        .unwrap()
        .0
        .clone();
    assert!(max_rel(&plain.projections[0], &g.projections[0]) > 1e-6);
    // Refused where it has no meaning.
    c.rate_regularization = Some(reg);
    c.update_every = Some(5);
    assert!(
        Trainer::new(test.clone(), c.clone())
            .err()
            .unwrap()
            .to_string()
            .contains("update_every")
    );
    c.update_every = None;
    c.algorithm = Algorithm::Bptt;
    assert!(Trainer::new(test, c).err().unwrap().to_string().contains("PerSequence"));
}
