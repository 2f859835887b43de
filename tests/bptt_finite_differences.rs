//! With recurrent weights, BPTT equals central finite differences of the loss on a model
//! whose spike is smooth (a sigmoid), to 1e-6 relative, checked with the public `gradcheck`.

use ndarray::Array3;
use plasticity_runtime::{
    Algorithm, GradcheckOptions, Init, LayerSpec, Loss, Network, NetworkBuilder, Optimizer, ReadoutSpec, Targets,
    TrainConfig, Trainer, Window, gradcheck, neuron_model,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

#[neuron_model]
mod smooth_alif {
    /// Bellec's ALIF with `H` replaced by its smooth counterpart `σ(β x)` and a learnable
    /// membrane decay.
    pub struct SmoothAlif {
        #[param(default = 0.9, learnable)]
        pub alpha: f64,
        #[param(default = 0.97)]
        pub rho: f64,
        #[param(default = 1.7)]
        pub beta: f64,
        #[param(default = 0.6)]
        pub v_th: f64,
        #[param(default = 5.0)]
        pub steepness: f64,
        #[state(init = 0.0)]
        v: f64,
        #[state(init = 0.0)]
        a: f64,
        #[input]
        i: f64,
    }

    fn step() {
        let z_prev = sigmoid(steepness * (v - v_th - beta * a));
        let v_next = alpha * v + i - z_prev * v_th;
        let a_next = rho * a + z_prev;
        Next {
            v: v_next,
            a: a_next,
            spike: sigmoid(steepness * (v_next - v_th - beta * a_next)),
        }
    }
}

use smooth_alif::SmoothAlif;

fn check(loss: Loss, kappa: f64, layers: usize) {
    let mut b = NetworkBuilder::new(4);
    for _ in 0..layers {
        b = b.layer(
            LayerSpec::new(SmoothAlif::default(), 6)
                .recurrent(true)
                .bias(true)
                .init_in(Init::Gaussian { gain: 2.0 }),
        );
    }
    let net: Network<f64> = b.readout(ReadoutSpec::new(3, kappa)).seed(11).build().unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let x = Array3::from_shape_fn((25, 2, 4), |_| if rng.random_bool(0.3) { 1.0 } else { 0.0 });
    let options = GradcheckOptions {
        max_per_tensor: usize::MAX,
        ..GradcheckOptions::default()
    };
    let report = gradcheck(&net, loss, x.view(), Targets::Classes(&[0, 2]), options).unwrap();
    assert!(report.checked >= 80, "only {} entries checked", report.checked);
    assert!(report.worst <= 1e-6, "{report:?}");
    eprintln!("{loss:?} κ={kappa} layers={layers}: {report:?}");
}

#[test]
fn recurrent_per_step_cross_entropy() {
    check(Loss::CrossEntropy(Window::All), 0.6, 1);
}

#[test]
fn recurrent_window_and_summed_losses() {
    check(Loss::CrossEntropy(Window::Last(5)), 0.0, 1);
    check(Loss::CrossEntropySummed(Window::Last(10)), 0.8, 1);
}

#[test]
fn two_recurrent_layers() {
    check(Loss::CrossEntropy(Window::All), 0.5, 2);
}

/// BPTT keeps its tape and scratch from batch to batch; reusing them (also after a batch of
/// another size and length) must give bit-identical gradients to a fresh trainer.
#[test]
fn reused_storage_gives_identical_gradients() {
    let net: Network<f64> = NetworkBuilder::new(4)
        .layer(LayerSpec::new(SmoothAlif::default(), 6).recurrent(true).bias(true))
        .layer(LayerSpec::new(SmoothAlif::default(), 5).recurrent(true))
        .readout(ReadoutSpec::new(3, 0.7))
        .seed(3)
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let mut draw =
        |t: usize, b: usize| Array3::from_shape_fn((t, b, 4), |_| if rng.random_bool(0.3) { 1.0 } else { 0.0 });
    let (x1, x2) = (draw(20, 3), draw(7, 5));
    let config = || TrainConfig::new(Algorithm::Bptt, Loss::CrossEntropy(Window::All), Optimizer::adam(1e-3));
    let fresh = |x: &Array3<f64>, classes: &[usize]| {
        let mut tr = Trainer::new(net.clone(), config()).unwrap();
        tr.compute_gradients(x.view(), Targets::Classes(classes))
            .unwrap()
            .0
            .clone()
    };
    let (c1, c2) = ([0, 2, 1], [1, 1, 0, 2, 0]);
    let (want1, want2) = (fresh(&x1, &c1), fresh(&x2, &c2));
    let mut tr = Trainer::new(net.clone(), config()).unwrap();
    for (x, c, want) in [
        (&x1, &c1[..], &want1),
        (&x1, &c1[..], &want1),
        (&x2, &c2[..], &want2),
        (&x1, &c1[..], &want1),
    ] {
        let (got, _) = tr.compute_gradients(x.view(), Targets::Classes(c)).unwrap();
        assert_eq!(got, want);
    }
}
