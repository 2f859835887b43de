//! e-prop equals BPTT where the math says it is exact: every shipped model, no recurrent
//! weights, symmetric feedback, any readout leak κ, per-step cross-entropy; for input
//! weights, biases, readout and learnable parameters.

use ndarray::Array3;
use plasticity_runtime::models::*;
use plasticity_runtime::{
    Algorithm, Feedback, Float, Init, LayerSpec, Loss, NetworkBuilder, NeuronModel, Optimizer, ReadoutSpec, Targets,
    TrainConfig, Trainer, Window,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

struct Case {
    n_in: usize,
    hidden: usize,
    n_out: usize,
    steps: usize,
    batch: usize,
}

const CASE: Case = Case {
    n_in: 5,
    hidden: 7,
    n_out: 3,
    steps: 30,
    batch: 2,
};

/// Gradients by e-prop and by BPTT on the same network and data; returns the largest
/// relative difference and the number of output spikes (to check the case is not trivial).
fn compare<M: NeuronModel, F: Float>(model: M, gain: f64, input_scale: f64, kappa: f64, seed: u64) -> (f64, f64) {
    let net = NetworkBuilder::<F>::new(CASE.n_in)
        .layer(
            LayerSpec::new(model, CASE.hidden)
                .bias(true)
                .init_in(Init::Gaussian { gain }),
        )
        .readout(ReadoutSpec::new(CASE.n_out, kappa))
        .seed(seed)
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(seed + 100);
    let x = Array3::from_shape_fn((CASE.steps, CASE.batch, CASE.n_in), |_| {
        F::from_f64(if rng.random_bool(0.3) { input_scale } else { 0.0 })
    });
    let classes: Vec<usize> = (0..CASE.batch).map(|b| b % CASE.n_out).collect();
    let loss = Loss::CrossEntropy(Window::All);
    let run = |algorithm| {
        let mut tr = Trainer::new(net.clone(), TrainConfig::new(algorithm, loss, Optimizer::adam(1e-3))).unwrap();
        let (g, _) = tr.compute_gradients(x.view(), Targets::Classes(&classes)).unwrap();
        g.clone()
    };
    let e = run(Algorithm::Eprop(Feedback::Symmetric));
    let b = run(Algorithm::Bptt);
    let spikes = net.run(x.view()).unwrap().spikes[0]
        .iter()
        .map(|v| v.to_f64().abs())
        .sum::<f64>();
    assert!(b.norm() > 0.0);
    (e.max_rel_diff(&b, 1e-12), spikes)
}

fn check<M: NeuronModel>(model: M, gain: f64, input_scale: f64) {
    for (i, kappa) in [0.0, 0.5, 0.8].into_iter().enumerate() {
        let (diff, spikes) = compare::<M, f64>(model.clone(), gain, input_scale, kappa, 7 + i as u64);
        assert!(
            spikes > 0.0,
            "{}: no output activity, the case proves nothing",
            M::PATTERN.model
        );
        assert!(
            diff <= 1e-9,
            "{} κ={kappa}: e-prop vs BPTT relative difference {diff:e} (f64)",
            M::PATTERN.model
        );
        let (diff32, _) = compare::<M, f32>(model.clone(), gain, input_scale, kappa, 7 + i as u64);
        assert!(
            diff32 <= 1e-4,
            "{} κ={kappa}: e-prop vs BPTT relative difference {diff32:e} (f32)",
            M::PATTERN.model
        );
    }
}

#[test]
fn bellec() {
    check(BellecLif::default(), 3.0, 1.0);
    check(
        BellecLif {
            n_ref: 2.0,
            ..BellecLif::default()
        },
        3.0,
        1.0,
    );
    check(BellecAlif::default(), 3.0, 1.0);
    check(BellecLifDiffReset::default(), 3.0, 1.0);
    check(BellecAlifDiffReset::default(), 3.0, 1.0);
}

#[test]
fn paper() {
    check(PaperLif::default(), 10.0, 1.0);
    check(PaperAlif::default(), 10.0, 1.0);
    check(SigmaDelta::default(), 1.0, 1.0);
}

#[test]
fn classic() {
    check(CubaLif::default(), 4.0, 1.0);
    check(Izhikevich::default(), 30.0, 1.0);
    check(AdEx::default(), 20000.0, 1.0);
    check(LeakyIntegrator::default(), 2.0, 1.0);
}

/// Sparse spike events give the same gradients as the same spikes as a dense array.
#[test]
fn events_equal_dense_input() {
    use plasticity_runtime::SpikeEvents;
    let net = NetworkBuilder::<f64>::new(6)
        .layer(
            LayerSpec::new(BellecAlif::default(), 5)
                .recurrent(true)
                .init_in(Init::Gaussian { gain: 3.0 }),
        )
        .readout(ReadoutSpec::new(2, 0.7))
        .seed(4)
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let mut events = Vec::new();
    for t in 0..40 {
        for b in 0..3 {
            for c in 0..6 {
                if rng.random_bool(0.2) {
                    events.push((t, b, c));
                }
            }
        }
    }
    let ev = SpikeEvents::new(40, 3, 6, events).unwrap();
    let x = ev.to_dense::<f64>();
    let classes = [0, 1, 1];
    for algorithm in [Algorithm::Eprop(Feedback::Symmetric), Algorithm::Bptt] {
        let config = TrainConfig::new(algorithm, Loss::CrossEntropy(Window::All), Optimizer::adam(1e-3));
        let mut a = Trainer::new(net.clone(), config.clone()).unwrap();
        let mut b = Trainer::new(net.clone(), config).unwrap();
        let (ga, sa) = a.compute_gradients_events(&ev, Targets::Classes(&classes)).unwrap();
        let (gb, sb) = b.compute_gradients(x.view(), Targets::Classes(&classes)).unwrap();
        assert_eq!(ga, gb);
        assert_eq!(sa.loss, sb.loss);
    }
}
