//! Networks of several populations: different models side by side, projections onto a second
//! input port, sparse and masked connectivity, recurrence across populations, probes.
//!
//! - BPTT equals finite differences on such a network (smooth spikes, learnable parameters).
//! - e-prop equals BPTT where the maths says it is exact: LIF and ALIF populations without
//!   recurrence feeding the readout, through a sparse input projection and a second port.
//! - A sparse projection equals a dense one under the same mask: same losses, same gradients.
//! - Masked weights stay exactly zero through training.

use ndarray::{Array2, Array3};
use plasticity_runtime::models::{BellecAlif, BellecAlifDiffReset, BellecLif, BellecLifDiffReset};
use plasticity_runtime::{
    Algorithm, Connectivity, Error, Feedback, GradcheckOptions, GradcheckReport, Gradients, Init, Loss, Network,
    NetworkBuilder, Optimizer, PopulationSpec, Probe, ProjectionSpec, ReadoutSpec, Targets, TrainConfig, Trainer,
    Window, gradcheck, neuron_model,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

#[neuron_model(surrogate = sigmoid(4.0))]
mod smooth_models {
    /// LIF with a learnable decay bounded to [0.5, 0.95] and a smooth surrogate.
    pub struct SLif {
        #[param(default = 0.85, learnable, range = 0.5..=0.95)]
        pub alpha: f64,
        #[param(default = 0.6)]
        pub v_th: f64,
        #[state(init = 0.0)]
        v: f64,
        #[input]
        i: f64,
    }

    fn step() {
        let reset = detach(spike(v - v_th));
        let v = alpha * v + i - reset * v_th;
        Next {
            v,
            spike: spike(v - v_th),
        }
    }
}

#[neuron_model(surrogate = sigmoid(4.0))]
mod smooth_two_port {
    /// A soma and a dendrite, each with its own input port; learnable coupling.
    pub struct SDendrite {
        #[param(default = 0.9)]
        pub alpha: f64,
        #[param(default = 0.7)]
        pub alpha_d: f64,
        #[param(default = 0.6, learnable)]
        pub coupling: f64,
        #[param(default = 0.5)]
        pub v_th: f64,
        #[state(init = 0.0)]
        v: f64,
        #[state(init = 0.0)]
        d: f64,
        #[input]
        soma: f64,
        #[input]
        dend: f64,
    }

    fn step() {
        let reset = spike(v - v_th);
        let d = alpha_d * d + dend;
        let v = alpha * v + coupling * d + soma - reset * v_th;
        Next {
            v,
            d,
            spike: spike(v - v_th),
        }
    }
}

use smooth_models::SLif;
use smooth_two_port::SDendrite;

fn inputs(seed: u64, steps: usize, batch: usize, n_in: usize) -> Array3<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    Array3::from_shape_fn((steps, batch, n_in), |_| if rng.random_bool(0.3) { 1.0 } else { 0.0 })
}

fn config(algorithm: Algorithm, loss: Loss) -> TrainConfig {
    TrainConfig::new(algorithm, loss, Optimizer::adam(1e-2))
}

fn gradients(net: &Network<f64>, algorithm: Algorithm, x: &Array3<f64>, classes: &[usize]) -> (Gradients<f64>, f64) {
    let mut tr = Trainer::new(net.clone(), config(algorithm, Loss::CrossEntropy(Window::All))).unwrap();
    let (g, stats) = tr.compute_gradients(x.view(), Targets::Classes(classes)).unwrap();
    (g.clone(), stats.loss)
}

/// BPTT against finite differences over every entry of every tensor (smooth spikes, frozen
/// detached values): the worst relative error at most 1e-6.
fn assert_bptt_is_exact(net: &Network<f64>, loss: Loss, x: &Array3<f64>, targets: Targets<'_, f64>) -> GradcheckReport {
    let options = GradcheckOptions {
        max_per_tensor: usize::MAX,
        ..GradcheckOptions::default()
    };
    let report = gradcheck(net, loss, x.view(), targets, options).unwrap();
    assert!(report.worst <= 1e-6, "{loss:?}: {report:?}");
    report
}

/// Every feature at once: two models, a dendritic port fed by another population, a sparse
/// projection, a backward projection (from a later population), recurrence, biases and
/// learnable parameters.
#[test]
fn bptt_equals_finite_differences_on_a_general_network() {
    let net: Network<f64> = NetworkBuilder::new(4)
        .population(PopulationSpec::new("lif", SLif::default(), 5).bias(true))
        .population(PopulationSpec::new("dend", SDendrite::default(), 4))
        .projection(ProjectionSpec::input("lif").init(Init::Gaussian { gain: 2.0 }))
        .projection(ProjectionSpec::new("lif", "lif").init(Init::Gaussian { gain: 0.8 }))
        .projection(
            ProjectionSpec::input("dend")
                .port("soma")
                .init(Init::Gaussian { gain: 2.0 })
                .connectivity(Connectivity::Probability { p: 0.6, seed: 2 }),
        )
        .projection(
            ProjectionSpec::new("lif", "dend")
                .port("dend")
                .init(Init::Gaussian { gain: 1.5 }),
        )
        .projection(
            ProjectionSpec::new("dend", "lif")
                .init(Init::Gaussian { gain: 0.8 })
                .connectivity(Connectivity::Indices(vec![(0, 1), (2, 3), (4, 0), (1, 2)])),
        )
        .readout(ReadoutSpec::new(3, 0.6).from(["lif", "dend"]))
        .seed(7)
        .build()
        .unwrap();
    assert!(net.projections[2].is_sparse() && net.projections[4].is_delayed());
    let x = inputs(3, 20, 2, 4);
    for loss in [Loss::CrossEntropy(Window::All), Loss::MeanSquared(Window::Last(5))] {
        let targets_values = Array3::from_shape_fn((20, 2, 3), |(t, b, o)| ((t + b + o) % 3) as f64 * 0.3);
        let targets = match loss {
            Loss::MeanSquared(_) => Targets::Series(targets_values.view()),
            _ => Targets::Classes(&[0, 2]),
        };
        let report = assert_bptt_is_exact(&net, loss, &x, targets);
        assert!(report.checked >= 100, "{report:?}");
    }
}

/// LIF and ALIF populations without recurrence, both read out: e-prop is exact, also with a
/// sparse input projection and an input on a second port.
#[test]
fn eprop_equals_bptt_for_heterogeneous_populations_without_recurrence() {
    for kappa in [0.0, 0.7] {
        for (lif_gain, seed) in [(3.0, 1u64), (4.0, 2)] {
            let net: Network<f64> = NetworkBuilder::new(6)
                .population(PopulationSpec::new("lif", BellecLifDiffReset::default(), 7).bias(true))
                .population(PopulationSpec::new("alif", BellecAlifDiffReset::default(), 6))
                .population(PopulationSpec::new("alif_detached", BellecAlif::default(), 5))
                .population(PopulationSpec::new("dend", SDendrite::default(), 4))
                .projection(ProjectionSpec::input("lif").init(Init::Gaussian { gain: lif_gain }))
                .projection(
                    ProjectionSpec::input("alif")
                        .init(Init::Gaussian { gain: 4.0 })
                        .connectivity(Connectivity::Probability { p: 0.5, seed }),
                )
                .projection(ProjectionSpec::input("alif_detached").init(Init::Gaussian { gain: 4.0 }))
                .projection(
                    ProjectionSpec::input("dend")
                        .port("soma")
                        .init(Init::Gaussian { gain: 2.0 }),
                )
                .projection(
                    ProjectionSpec::input("dend")
                        .port("dend")
                        .init(Init::Gaussian { gain: 2.0 })
                        .connectivity(Connectivity::Probability { p: 0.7, seed: seed + 5 }),
                )
                .readout(ReadoutSpec::new(3, kappa).from(["lif", "alif", "alif_detached", "dend"]))
                .seed(seed)
                .build()
                .unwrap();
            let x = inputs(seed + 20, 25, 3, 6);
            let spikes = net.run(x.view()).unwrap().spikes;
            assert!(spikes.iter().all(|s| s.sum() > 0.0), "a silent population");
            let classes = [0, 1, 2];
            let (e, le) = gradients(&net, Algorithm::Eprop(Feedback::Symmetric), &x, &classes);
            let (b, lb) = gradients(&net, Algorithm::Bptt, &x, &classes);
            assert!((le - lb).abs() <= 1e-13 * lb.abs(), "loss {le} vs {lb}");
            let diff = e.max_rel_diff(&b, 1e-12);
            assert!(diff <= 1e-9, "κ = {kappa}, seed {seed}: e-prop vs BPTT {diff:e}");
            assert!(e.norm() > 0.0);
        }
    }
}

/// The gradients of a sparse network written as dense matrices, for comparison with a masked
/// dense network.
fn densified(net: &Network<f64>, g: &Gradients<f64>) -> Gradients<f64> {
    let mut out = g.clone();
    for (i, proj) in net.projections.iter().enumerate() {
        out.projections[i] = proj.to_dense(&g.projections[i]).iter().copied().collect();
    }
    out
}

/// Sparse connectivity and a dense mask of the same synapses give the same network: same
/// weights, losses and gradients (e-prop with and without κ, where the dense LIF projection
/// takes the gradient window and the sparse one does not; and BPTT), with recurrence.
#[test]
fn sparse_equals_dense_with_mask() {
    let build = |sparse: bool, kappa: f64| -> Network<f64> {
        let conn = |p: f64, seed: u64, n_post: usize, n_pre: usize| {
            let c = Connectivity::Probability { p, seed };
            if sparse {
                c
            } else {
                Connectivity::Mask(c.to_mask(n_post, n_pre).unwrap())
            }
        };
        NetworkBuilder::new(30)
            .population(PopulationSpec::new("lif", BellecLif::default(), 20).bias(true))
            .population(PopulationSpec::new("alif", BellecAlif::default(), 15))
            .projection(
                ProjectionSpec::input("lif")
                    .init(Init::Gaussian { gain: 4.0 })
                    .connectivity(conn(0.3, 1, 20, 30)),
            )
            .projection(
                ProjectionSpec::input("alif")
                    .init(Init::Gaussian { gain: 4.0 })
                    .connectivity(conn(0.4, 2, 15, 30)),
            )
            .projection(ProjectionSpec::new("lif", "alif").connectivity(conn(0.5, 3, 15, 20)))
            .projection(ProjectionSpec::new("alif", "lif").connectivity(conn(0.5, 4, 20, 15)))
            .projection(ProjectionSpec::new("alif", "alif").connectivity(conn(0.5, 5, 15, 15)))
            .readout(ReadoutSpec::new(4, kappa).from(["lif", "alif"]))
            .seed(9)
            .build()
            .unwrap()
    };
    let x = inputs(11, 30, 16, 30);
    let classes: Vec<usize> = (0..16).map(|b| b % 4).collect();
    for kappa in [0.0, 0.8] {
        let (sparse, dense) = (build(true, kappa), build(false, kappa));
        assert!(sparse.projections.iter().all(|p| p.is_sparse()));
        for i in 0..sparse.projections.len() {
            assert_eq!(sparse.dense_weights(i), dense.dense_weights(i));
        }
        for algorithm in [Algorithm::Eprop(Feedback::Symmetric), Algorithm::Bptt] {
            let (gs, ls) = gradients(&sparse, algorithm.clone(), &x, &classes);
            let (gd, ld) = gradients(&dense, algorithm.clone(), &x, &classes);
            assert!(
                (ls - ld).abs() <= 1e-12 * ls.abs(),
                "{algorithm:?} κ = {kappa}: loss {ls} vs {ld}"
            );
            let diff = densified(&sparse, &gs).max_rel_diff(&gd, 1e-12);
            assert!(diff <= 1e-12, "{algorithm:?} κ = {kappa}: gradients differ by {diff:e}");
            assert!(gs.norm() > 0.0);
        }
    }
}

#[test]
fn masked_weights_stay_zero_through_training() {
    let mask = Connectivity::Probability { p: 0.3, seed: 8 }.to_mask(12, 10).unwrap();
    let net: Network<f32> = NetworkBuilder::new(10)
        .population(PopulationSpec::new("h", BellecAlif::default(), 12))
        .projection(
            ProjectionSpec::input("h")
                .init(Init::Gaussian { gain: 4.0 })
                .connectivity(Connectivity::Mask(mask.clone())),
        )
        .projection(ProjectionSpec::new("h", "h"))
        .readout(ReadoutSpec::new(2, 0.5))
        .build()
        .unwrap();
    for algorithm in [Algorithm::Eprop(Feedback::Symmetric), Algorithm::Bptt] {
        let mut tr = Trainer::new(net.clone(), config(algorithm, Loss::CrossEntropy(Window::All))).unwrap();
        let x = inputs(4, 20, 4, 10).mapv(|v| v as f32);
        for _ in 0..5 {
            tr.train_batch(x.view(), Targets::Classes(&[0, 1, 1, 0])).unwrap();
        }
        let w_in = tr.network().dense_weights(0);
        let w_rec = tr.network().dense_weights(1);
        let g_in = tr.network().projections[0].to_dense(&tr.gradients().projections[0]);
        for ((j, i), &m) in mask.indexed_iter() {
            if !m {
                assert_eq!((w_in[[j, i]], g_in[[j, i]]), (0.0, 0.0), "masked synapse ({j}, {i})");
            }
        }
        assert!(w_in.iter().filter(|w| **w != 0.0).count() > 10);
        assert!((0..12).all(|j| w_rec[[j, j]] == 0.0), "self-connections stay absent");
    }
}

#[test]
fn probes_record_what_they_name() {
    let net: Network<f64> = NetworkBuilder::new(5)
        .population(PopulationSpec::new("lif", BellecLif::default(), 6))
        .population(PopulationSpec::new("dend", SDendrite::default(), 3))
        .projection(ProjectionSpec::input("lif").init(Init::Gaussian { gain: 3.0 }))
        .projection(ProjectionSpec::new("lif", "dend").port("dend"))
        .projection(ProjectionSpec::input("dend").port("soma"))
        .readout(ReadoutSpec::new(2, 0.5).from(["lif", "dend"]))
        .seed(1)
        .build()
        .unwrap();
    let x = inputs(2, 15, 2, 5);
    let probes = [
        Probe::state("lif", "v").neurons([1, 4]),
        Probe::spikes("lif"),
        Probe::current("dend", "soma"),
        Probe::state("dend", "d"),
        Probe::readout().neurons([1]),
    ];
    let out = net.run_with_probes(x.view(), &probes).unwrap();
    let plain = net.run(x.view()).unwrap();
    assert_eq!(out.readout, plain.readout);
    assert!(plain.probes.is_empty());
    assert_eq!(out.probes[0].shape(), &[15, 2, 2]);
    assert!(out.probes[0].iter().any(|v| *v != 0.0));
    assert_eq!(out.probes[1], out.spikes[0]);
    assert_eq!(
        out.probes[4].index_axis(ndarray::Axis(2), 0),
        out.readout.index_axis(ndarray::Axis(2), 1)
    );
    // The soma current is the input through the input projection's weights.
    let w = net.dense_weights(2);
    for t in 0..15 {
        for b in 0..2 {
            for j in 0..3 {
                let want: f64 = (0..5).map(|i| w[[j, i]] * x[[t, b, i]]).sum();
                assert!((out.probes[2][[t, b, j]] - want).abs() < 1e-12);
            }
        }
    }
    // The dendrite integrates the LIF population's spikes: it moves only once they arrive.
    let first_spike = (0..15).find(|&t| out.spikes[0].index_axis(ndarray::Axis(0), t).sum() > 0.0);
    if let Some(t0) = first_spike {
        assert!((0..t0).all(|t| out.probes[3].index_axis(ndarray::Axis(0), t).iter().all(|v| *v == 0.0)));
    }
    for (probe, needle) in [
        (Probe::state("lif", "u"), "\"v\""),
        (Probe::spikes("nowhere"), "\"lif\""),
        (Probe::current("lif", "dend"), "\"i\""),
        (Probe::spikes("dend").neurons([3]), "< 3"),
    ] {
        let e = net.run_with_probes(x.view(), &[probe]).unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    }
}

#[test]
fn structure_errors_name_what_is_wrong() {
    let base = || {
        NetworkBuilder::<f32>::new(3)
            .population(PopulationSpec::new("a", BellecLif::default(), 4))
            .population(PopulationSpec::new("d", SDendrite::default(), 4))
            .readout(ReadoutSpec::new(2, 0.0))
    };
    let err = |b: NetworkBuilder<f32>| match b.build() {
        Err(e @ Error::Invalid { .. }) | Err(e @ Error::Shape { .. }) => e.to_string(),
        other => panic!("expected a typed error, got {other:?}"),
    };
    let e = err(base().projection(ProjectionSpec::input("x")));
    assert!(e.contains("projection target") && e.contains("[\"a\", \"d\"]"), "{e}");
    let e = err(base().projection(ProjectionSpec::input("d")));
    assert!(e.contains("[\"soma\", \"dend\"]") && e.contains(".port("), "{e}");
    let e = err(base().projection(ProjectionSpec::input("a").port("dend")));
    assert!(e.contains("dend") && e.contains("[\"i\"]"), "{e}");
    let e = err(base()
        .projection(ProjectionSpec::input("a"))
        .projection(ProjectionSpec::input("a")));
    assert!(e.contains("input->a.i") && e.contains("at most one"), "{e}");
    let e = err(base().population(PopulationSpec::new("a", BellecAlif::default(), 2)));
    assert!(e.contains("unique"), "{e}");
    let e =
        err(base().projection(ProjectionSpec::input("a").connectivity(Connectivity::Probability { p: 0.0, seed: 1 })));
    assert!(e.contains("(0, 1]"), "{e}");
    let e = err(base().projection(ProjectionSpec::input("a").connectivity(Connectivity::Indices(vec![(4, 0)]))));
    assert!(e.contains("(4, 0)") && e.contains("post < 4"), "{e}");
    let e = err(base().readout(ReadoutSpec::new(2, 0.0).from(["b"])));
    assert!(e.contains("readout source"), "{e}");
    let e = err(base().projection(
        ProjectionSpec::input("a").connectivity(Connectivity::Mask(ndarray::Array2::from_elem((3, 4), true))),
    ));
    assert!(e.contains("[4, 3]"), "{e}");
}

/// Bellec's LSNN as two populations: LIF and ALIF neurons sharing one recurrent weight matrix
/// (as four blocks), trained with e-prop and BPTT; the loss falls.
#[test]
fn lsnn_trains() {
    let names = ["lif", "alif"];
    let mut b = NetworkBuilder::<f32>::new(8)
        .population(PopulationSpec::new("lif", BellecLif::default(), 10))
        .population(PopulationSpec::new("alif", BellecAlif::default(), 10));
    for target in names {
        b = b.projection(ProjectionSpec::input(target).init(Init::Gaussian { gain: 3.0 }));
        for source in names {
            b = b.projection(ProjectionSpec::new(source, target).init(Init::Gaussian { gain: 0.5 }));
        }
    }
    let net = b.readout(ReadoutSpec::new(2, 0.8).from(names)).seed(2).build().unwrap();
    let x = inputs(6, 30, 8, 8).mapv(|v| v as f32);
    let classes = [0, 1, 0, 1, 1, 0, 1, 0];
    for algorithm in [Algorithm::Eprop(Feedback::Symmetric), Algorithm::Bptt] {
        let mut tr = Trainer::new(
            net.clone(),
            config(algorithm.clone(), Loss::CrossEntropy(Window::Last(10))),
        )
        .unwrap();
        let first = tr.train_batch(x.view(), Targets::Classes(&classes)).unwrap().loss;
        let mut last = first;
        for _ in 0..30 {
            last = tr.train_batch(x.view(), Targets::Classes(&classes)).unwrap().loss;
        }
        assert!(last < 0.7 * first, "{algorithm:?}: loss {first} → {last}");
    }
}

/// Declared ranges of learnable parameters hold after every update, and a network whose
/// values lie outside them is rejected.
#[test]
fn learnable_parameters_stay_in_their_declared_range() {
    let build = |alpha: f64| {
        NetworkBuilder::<f32>::new(6)
            .population(PopulationSpec::new(
                "h",
                SLif {
                    alpha,
                    ..Default::default()
                },
                12,
            ))
            .projection(ProjectionSpec::input("h").init(Init::Gaussian { gain: 3.0 }))
            .readout(ReadoutSpec::new(2, 0.5))
            .build()
    };
    let e = build(0.99).unwrap_err().to_string();
    assert!(e.contains("alpha") && e.contains("[0.5, 0.95]"), "{e}");
    let net = build(0.94).unwrap();
    let mut c = config(Algorithm::Eprop(Feedback::Symmetric), Loss::CrossEntropy(Window::All));
    c.optimizer = Optimizer::sgd(50.0, 0.0);
    let mut tr = Trainer::new(net.clone(), c).unwrap();
    let x = inputs(1, 20, 4, 6).mapv(|v| v as f32);
    for _ in 0..10 {
        tr.train_batch(x.view(), Targets::Classes(&[0, 1, 0, 1])).unwrap();
    }
    let alpha = &tr.network().params.learnable[0];
    assert!(alpha.iter().all(|a| (0.5..=0.95).contains(a)), "{alpha}");
    assert!(
        alpha.iter().any(|&a| a == 0.5 || a == 0.95),
        "the bounds were never reached: {alpha}"
    );
    let mut edited = net;
    edited.params.learnable[0][[0, 3]] = 0.2;
    let e = edited.run(x.view()).unwrap_err().to_string();
    assert!(e.contains("neuron 3") && e.contains("0.2"), "{e}");
}

#[neuron_model(surrogate = sigmoid(4.0))]
mod learned_start {
    /// LIF relaxing to a learnable resting potential, where it also starts; and a learnable
    /// initial adaptation that only the initial state uses.
    pub struct RestLif {
        #[param(default = 0.85)]
        pub alpha: f64,
        #[param(default = 0.2, learnable)]
        pub v_rest: f64,
        #[param(default = 0.3, learnable)]
        pub a0: f64,
        #[param(default = 0.6)]
        pub v_th: f64,
        #[state(init = v_rest)]
        v: f64,
        #[state(init = 2.0 * a0)]
        a: f64,
        #[input]
        i: f64,
    }

    fn step() {
        let reset = detach(spike(v - v_th - a));
        let v = alpha * (v - v_rest) + v_rest + i - reset * v_th;
        let a = 0.9 * a;
        Next {
            v,
            a,
            spike: spike(v - v_th - a),
        }
    }
}

/// A learnable parameter in `#[state(init = ..)]`: every neuron starts from its own value,
/// and BPTT (against finite differences) and e-prop (against BPTT, no recurrence) include the
/// initial state's derivative.
#[test]
fn learnable_initial_states_get_gradients() {
    use learned_start::RestLif;
    const { assert!(<RestLif as plasticity_runtime::NeuronModel>::PATTERN.learnable_init_state) };
    let mut net: Network<f64> = NetworkBuilder::new(4)
        .population(PopulationSpec::new("h", RestLif::default(), 5))
        .projection(ProjectionSpec::input("h").init(Init::Gaussian { gain: 2.0 }))
        .readout(ReadoutSpec::new(3, 0.6))
        .seed(4)
        .build()
        .unwrap();
    for j in 0..5 {
        net.params.learnable[0][[0, j]] = 0.1 * j as f64;
        net.params.learnable[0][[1, j]] = 0.05 * (5 - j) as f64;
    }
    let x = inputs(8, 15, 2, 4);
    let out = net.run_with_probes(x.view(), &[Probe::state("h", "a")]).unwrap();
    // a decays from 2·a0 of each neuron: its own starting value.
    for j in 0..5 {
        let want = 0.9 * 2.0 * 0.05 * (5 - j) as f64;
        assert!((out.probes[0][[0, 0, j]] - want).abs() < 1e-12, "neuron {j}");
    }
    assert_bptt_is_exact(&net, Loss::CrossEntropy(Window::All), &x, Targets::Classes(&[0, 2]));
    let (e, _) = gradients(&net, Algorithm::Eprop(Feedback::Symmetric), &x, &[0, 2]);
    let (b, _) = gradients(&net, Algorithm::Bptt, &x, &[0, 2]);
    assert!(
        b.learnable[0].row(1).iter().all(|g| *g != 0.0),
        "a0 reaches the loss only through the initial state"
    );
    let diff = e.max_rel_diff(&b, 1e-12);
    assert!(diff <= 1e-9, "e-prop vs BPTT {diff:e}");
}

/// A population written in the neuron language as the network's output instead of the leaky
/// readout: a leaky integrator with a learnable time constant (the shipped
/// `LeakyIntegrator`, `out = tanh(v)`). BPTT equals finite differences; e-prop is exact for
/// the output population's own weights and time constants, and its signal to the hidden
/// population (through the output's weights and `∂z/∂I`) points the same way as BPTT's.
#[test]
fn output_population_instead_of_the_leaky_readout() {
    use plasticity_runtime::models::LeakyIntegrator;
    let build = |recurrent: bool| -> Network<f64> {
        let mut b = NetworkBuilder::new(4)
            .population(PopulationSpec::new("hidden", SLif::default(), 6))
            .population(PopulationSpec::new("out", LeakyIntegrator::default(), 3).bias(true))
            .projection(ProjectionSpec::input("hidden").init(Init::Gaussian { gain: 2.0 }))
            .projection(ProjectionSpec::new("hidden", "out").init(Init::Gaussian { gain: 2.0 }))
            .projection(ProjectionSpec::input("out").init(Init::Gaussian { gain: 0.5 }));
        if recurrent {
            b = b.projection(ProjectionSpec::new("hidden", "hidden").init(Init::Gaussian { gain: 0.5 }));
        }
        b.readout(ReadoutSpec::population("out")).seed(3).build().unwrap()
    };
    let x = inputs(5, 20, 2, 4);
    let net = build(true);
    assert_eq!((net.n_out(), net.params.readout_w.len()), (3, 0));
    assert_bptt_is_exact(&net, Loss::CrossEntropy(Window::All), &x, Targets::Classes(&[0, 2]));

    let net = build(false);
    let (e, _) = gradients(&net, Algorithm::Eprop(Feedback::Symmetric), &x, &[0, 2]);
    let (b, _) = gradients(&net, Algorithm::Bptt, &x, &[0, 2]);
    let rel = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs() / a.abs().max(b.abs()).max(1e-12))
            .fold(0.0, f64::max)
    };
    // The output population's incoming weights, bias and time constants: exact.
    for (got, want) in [
        (&e.projections[1], &b.projections[1]),
        (&e.projections[2], &b.projections[2]),
    ] {
        assert!(rel(got, want) <= 1e-9, "{}", rel(got, want));
    }
    let bias = (e.bias[1].as_ref().unwrap(), b.bias[1].as_ref().unwrap());
    assert!(rel(bias.0.as_slice().unwrap(), bias.1.as_slice().unwrap()) <= 1e-9);
    assert!(rel(e.learnable[1].as_slice().unwrap(), b.learnable[1].as_slice().unwrap()) <= 1e-9);
    // The hidden population's input weights: an approximation that drops the output's memory.
    let (ge, gb) = (&e.projections[0], &b.projections[0]);
    let dot: f64 = ge.iter().zip(gb).map(|(a, b)| a * b).sum();
    let cosine = dot / (ge.iter().map(|v| v * v).sum::<f64>().sqrt() * gb.iter().map(|v| v * v).sum::<f64>().sqrt());
    eprintln!("hidden input weights: cosine(e-prop, BPTT) = {cosine:.3}");
    assert!(cosine > 0.9, "cosine {cosine}");
}

/// The same network, data and seed give bit-identical gradients on 1 and 2 threads: every
/// parallel loop splits work by neurons, samples or rows and sums in a fixed order.
#[test]
fn gradients_do_not_depend_on_the_thread_count() {
    let net: Network<f32> = NetworkBuilder::new(12)
        .population(PopulationSpec::new("lif", BellecLif::default(), 40).bias(true))
        .population(PopulationSpec::new("alif", BellecAlif::default(), 30))
        .projection(ProjectionSpec::input("lif").init(Init::Gaussian { gain: 3.0 }))
        .projection(
            ProjectionSpec::input("alif")
                .init(Init::Gaussian { gain: 3.0 })
                .connectivity(Connectivity::Probability { p: 0.5, seed: 1 }),
        )
        .projection(ProjectionSpec::new("lif", "alif"))
        .projection(ProjectionSpec::new("alif", "lif").init(Init::Gaussian { gain: 0.5 }))
        .readout(ReadoutSpec::new(3, 0.8).from(["lif", "alif"]))
        .seed(4)
        .build()
        .unwrap();
    let x = inputs(2, 40, 16, 12).mapv(|v| v as f32);
    let classes: Vec<usize> = (0..16).map(|b| b % 3).collect();
    for algorithm in [Algorithm::Eprop(Feedback::Symmetric), Algorithm::Bptt] {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut tr =
                    Trainer::new(net.clone(), config(algorithm.clone(), Loss::CrossEntropy(Window::All))).unwrap();
                tr.train_batch(x.view(), Targets::Classes(&classes)).unwrap();
                let (g, _) = tr.compute_gradients(x.view(), Targets::Classes(&classes)).unwrap();
                (g.clone(), tr.into_network().params)
            })
        };
        let (one, two) = (run(1), run(2));
        assert!(one.0.norm() > 0.0);
        assert_eq!(one, two, "{algorithm:?}");
    }
}

/// Degenerate but legal structures train without trouble: a sparse projection with no
/// synapse at all, a population no projection reaches, a port left without input.
#[test]
fn empty_projections_and_unreached_populations_train() {
    let net: Network<f64> = NetworkBuilder::new(5)
        .population(PopulationSpec::new("h", BellecAlif::default(), 6))
        .population(PopulationSpec::new("island", SDendrite::default(), 3).bias(true))
        .projection(ProjectionSpec::input("h").init(Init::Gaussian { gain: 3.0 }))
        .projection(ProjectionSpec::new("h", "h").connectivity(Connectivity::Indices(Vec::new())))
        .readout(ReadoutSpec::new(2, 0.5).from(["h", "island"]))
        .build()
        .unwrap();
    assert_eq!(net.projections[1].num_weights(), 0);
    let x = inputs(3, 12, 2, 5);
    for algorithm in [Algorithm::Eprop(Feedback::Symmetric), Algorithm::Bptt] {
        let mut tr = Trainer::new(net.clone(), config(algorithm, Loss::CrossEntropy(Window::All))).unwrap();
        for _ in 0..3 {
            tr.train_batch(x.view(), Targets::Classes(&[0, 1])).unwrap();
        }
        assert!(tr.gradients().norm().is_finite());
    }
    let (e, _) = gradients(&net, Algorithm::Eprop(Feedback::Symmetric), &x, &[0, 1]);
    let (b, _) = gradients(&net, Algorithm::Bptt, &x, &[0, 1]);
    assert!(e.max_rel_diff(&b, 1e-12) <= 1e-9);
}

#[neuron_model(surrogate = triangle(1.0, 1.0), spike_at_zero)]
mod at_zero {
    /// Fires when its input reaches the threshold: `spike(0) = 1` (NEST's convention).
    pub struct Inclusive {
        #[param(default = 1.0)]
        pub v_th: f64,
        #[state(init = 0.0)]
        v: f64,
        #[input]
        i: f64,
    }

    fn step() {
        Next {
            v: i,
            spike: spike(i - v_th),
        }
    }
}

#[neuron_model(surrogate = triangle(1.0, 1.0))]
mod above_zero {
    /// The same neuron with the default `spike(0) = 0`.
    pub struct Strict {
        #[param(default = 1.0)]
        pub v_th: f64,
        #[state(init = 0.0)]
        v: f64,
        #[input]
        i: f64,
    }

    fn step() {
        Next {
            v: i,
            spike: spike(i - v_th),
        }
    }
}

/// `#[neuron_model(spike_at_zero)]` fires on `x ≥ 0`, the default on `x > 0`; the gradients
/// (the surrogate's) are the same, and `describe()` says which.
#[test]
fn spike_at_zero_is_selectable() {
    let input = Array3::from_shape_fn((3, 1, 1), |(t, _, _)| [0.5, 1.0, 1.5][t]);
    let net = |inclusive: bool| {
        let b = NetworkBuilder::<f64>::new(1);
        let b = if inclusive {
            b.population(PopulationSpec::new("p", at_zero::Inclusive::default(), 1))
        } else {
            b.population(PopulationSpec::new("p", above_zero::Strict::default(), 1))
        };
        b.projection(ProjectionSpec::input("p").init(Init::Zeros))
            .readout(ReadoutSpec::new(1, 0.0))
            .build()
            .unwrap()
    };
    let spikes = |inclusive: bool| {
        let mut n = net(inclusive);
        n.params.projections[0][0] = 1.0;
        n.run(input.view()).unwrap().spikes[0]
            .iter()
            .copied()
            .collect::<Vec<f64>>()
    };
    assert_eq!(spikes(true), vec![0.0, 1.0, 1.0]);
    assert_eq!(spikes(false), vec![0.0, 0.0, 1.0]);
    assert!(at_zero::Inclusive::describe().contains("fires on x >= 0"));
    assert!(!above_zero::Strict::describe().contains("fires on"));
}

/// A forward projection built `.delayed(true)` carries the source's previous-step output
/// (one recurrent network split into two populations): the target's input current at step t
/// is the weights times the source's spikes at t − 1, BPTT through it matches finite
/// differences, and a delayed projection from the input is refused.
#[test]
fn delayed_forward_projections() {
    let build = |delayed: bool| {
        NetworkBuilder::<f64>::new(3)
            .population(PopulationSpec::new("a", BellecLif::default(), 4))
            .population(PopulationSpec::new("b", BellecAlif::default(), 3))
            .projection(ProjectionSpec::input("a").init(Init::Gaussian { gain: 3.0 }))
            .projection(ProjectionSpec::input("b").init(Init::Gaussian { gain: 2.0 }))
            .projection(
                ProjectionSpec::new("a", "b")
                    .init(Init::Gaussian { gain: 2.0 })
                    .delayed(delayed),
            )
            .projection(ProjectionSpec::new("b", "a").init(Init::Gaussian { gain: 1.0 }))
            .readout(ReadoutSpec::new(2, 0.6).from(["a", "b"]))
            .seed(4)
            .build()
            .unwrap()
    };
    let net = build(true);
    assert!(net.projections[2].is_delayed() && !build(false).projections[2].is_delayed());
    let mut rng = StdRng::seed_from_u64(9);
    let x = Array3::from_shape_fn((30, 2, 3), |_| if rng.random_bool(0.5) { 1.0 } else { 0.0 });
    // Currents into b from a: W · z_a^{t−1}, read through probes (the input part removed by
    // running with the input projection of b zeroed).
    let mut quiet = net.clone();
    quiet.params.projections[1].iter_mut().for_each(|w| *w = 0.0);
    let out = quiet
        .run_with_probes(x.view(), &[Probe::spikes("a"), Probe::current("b", "i")])
        .unwrap();
    let (za, ib) = (&out.probes[0], &out.probes[1]);
    let w = Array2::from_shape_vec((3, 4), quiet.params.projections[2].clone()).unwrap();
    assert!(za.iter().any(|&z| z > 0.0), "the source spikes");
    for t in 0..30 {
        for b in 0..2 {
            for j in 0..3 {
                let want: f64 = if t == 0 {
                    0.0
                } else {
                    (0..4).map(|i| w[[j, i]] * za[[t - 1, b, i]]).sum()
                };
                assert!((ib[[t, b, j]] - want).abs() < 1e-12, "t {t} b {b} j {j}");
            }
        }
    }
    assert_bptt_is_exact(
        &net,
        Loss::CrossEntropy(Window::Last(10)),
        &x,
        Targets::Classes(&[0, 1]),
    );
    let e = NetworkBuilder::<f64>::new(3)
        .population(PopulationSpec::new("a", BellecLif::default(), 4))
        .projection(ProjectionSpec::input("a").delayed(true))
        .readout(ReadoutSpec::new(2, 0.0))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("the input is never delayed"), "{e}");
}
