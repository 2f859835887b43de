//! Bad input gets a typed error naming what was wrong and what was expected, never a panic.

use ndarray::{Array2, Array3};
use plasticity_runtime::models::BellecLif;
use plasticity_runtime::{
    Algorithm, Error, Feedback, Init, LayerSpec, Loss, Network, NetworkBuilder, Optimizer, ReadoutSpec, Schedule,
    SpikeEvents, Targets, TrainConfig, Trainer, Window,
};

fn net() -> Network<f32> {
    NetworkBuilder::new(4)
        .layer(LayerSpec::new(BellecLif::default(), 5).recurrent(true))
        .readout(ReadoutSpec::new(3, 0.5))
        .build()
        .unwrap()
}

fn eprop() -> TrainConfig {
    TrainConfig::new(
        Algorithm::Eprop(Feedback::Symmetric),
        Loss::CrossEntropy(Window::All),
        Optimizer::adam(1e-3),
    )
}

fn message(e: Error) -> String {
    e.to_string()
}

#[test]
fn invalid_network_settings() {
    let e = NetworkBuilder::<f32>::new(4)
        .layer(LayerSpec::new(BellecLif::default(), 5))
        .readout(ReadoutSpec::new(3, 1.0))
        .build()
        .unwrap_err();
    assert!(message(e).contains("κ in [0, 1)"));
    let e = NetworkBuilder::<f32>::new(4)
        .readout(ReadoutSpec::new(3, 0.0))
        .build()
        .unwrap_err();
    assert!(message(e).contains("at least one population"));
    let e = NetworkBuilder::<f32>::new(0)
        .layer(LayerSpec::new(BellecLif::default(), 5))
        .readout(ReadoutSpec::new(3, 0.0))
        .build()
        .unwrap_err();
    assert!(message(e).contains("n_in"));
    let e = NetworkBuilder::<f32>::new(4)
        .layer(LayerSpec::new(BellecLif::default(), 5).init_in(Init::Gaussian { gain: f64::NAN }))
        .readout(ReadoutSpec::new(3, 0.0))
        .build()
        .unwrap_err();
    assert!(message(e).contains("gain"));
}

#[test]
fn invalid_training_settings() {
    let mut c = eprop();
    c.optimizer = Optimizer::adam(-0.1);
    assert!(message(Trainer::new(net(), c).err().unwrap()).contains("learning rate"));
    let mut c = eprop();
    c.clip_norm = Some(0.0);
    assert!(message(Trainer::new(net(), c).err().unwrap()).contains("clip_norm"));
    let mut c = eprop();
    c.schedule = Schedule::Cosine {
        warmup: 10,
        total: 5,
        min_factor: 0.1,
    };
    assert!(Trainer::new(net(), c).is_err());
    let mut c = TrainConfig::new(Algorithm::Bptt, Loss::CrossEntropy(Window::All), Optimizer::adam(1e-3));
    c.update_every = Some(5);
    assert!(message(Trainer::new(net(), c).err().unwrap()).contains("update_every"));
    let c = TrainConfig::new(
        Algorithm::Eprop(Feedback::Symmetric),
        Loss::CrossEntropySummed(Window::All),
        Optimizer::adam(1e-3),
    );
    assert!(message(Trainer::new(net(), c).err().unwrap()).contains("use BPTT"));
}

#[test]
fn invalid_data() {
    let mut tr = Trainer::new(net(), eprop()).unwrap();
    let x = Array3::<f32>::zeros((10, 2, 3));
    let e = tr.train_batch(x.view(), Targets::Classes(&[0, 1])).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    assert!(message(e).contains("[T, B >= 1, 4]"));
    let mut x = Array3::<f32>::zeros((10, 2, 4));
    x[[3, 1, 2]] = f32::NAN;
    assert!(matches!(
        tr.train_batch(x.view(), Targets::Classes(&[0, 1])),
        Err(Error::NonFinite { .. })
    ));
    let x = Array3::<f32>::zeros((10, 2, 4));
    let e = tr.train_batch(x.view(), Targets::Classes(&[0, 7])).unwrap_err();
    assert!(message(e).contains("target class 7 for sample 1"));
    assert!(matches!(
        tr.train_batch(x.view(), Targets::Classes(&[0])),
        Err(Error::Shape { .. })
    ));
    let y = Array3::<f32>::zeros((10, 2, 3));
    assert!(
        tr.train_batch(x.view(), Targets::Series(y.view())).is_err(),
        "regression targets for cross-entropy"
    );
    let empty = Array3::<f32>::zeros((0, 2, 4));
    assert!(tr.train_batch(empty.view(), Targets::Classes(&[0, 1])).is_err());
}

#[test]
fn streaming_misuse() {
    let mut tr = Trainer::new(net(), eprop()).unwrap();
    let x = Array2::<f32>::zeros((2, 4));
    assert!(matches!(tr.step(x.view(), None), Err(Error::State(_))));
    assert!(matches!(tr.end_sequence(), Err(Error::State(_))));
    tr.begin_sequence(2, 1).unwrap();
    let bad = Array2::<f32>::zeros((3, 4));
    assert!(matches!(tr.step(bad.view(), None), Err(Error::Shape { .. })));
    assert!(
        tr.step(x.view(), None).is_err(),
        "targets are required inside the loss window"
    );
    let classes = ndarray::arr1(&[0usize, 2]);
    tr.step(x.view(), Some(plasticity_runtime::StepTargets::Classes(classes.view())))
        .unwrap();
    let e = tr
        .step(x.view(), Some(plasticity_runtime::StepTargets::Classes(classes.view())))
        .unwrap_err();
    assert!(message(e).contains("only 1 steps"));
    tr.end_sequence().unwrap();
    let bptt = TrainConfig::new(Algorithm::Bptt, Loss::CrossEntropy(Window::All), Optimizer::adam(1e-3));
    let mut tr = Trainer::new(net(), bptt).unwrap();
    assert!(tr.begin_sequence(2, 10).is_err(), "streaming needs e-prop");
    let e = SpikeEvents::new(5, 2, 4, [(5, 0, 0)]).unwrap_err();
    assert!(message(e).contains("step < 5"));
}

#[test]
fn edited_networks_are_checked() {
    let mut n = net();
    n.params.projections[0] = vec![0.0; 10];
    let x = Array3::<f32>::zeros((3, 1, 4));
    assert!(matches!(n.run(x.view()), Err(Error::Shape { .. })));
    assert!(Trainer::new(n, eprop()).is_err());
    let mut n = net();
    n.params.readout_w[0][[0, 0]] = f32::INFINITY;
    assert!(matches!(n.run(x.view()), Err(Error::NonFinite { .. })));
    // A column-major array is reported, not a panic.
    let mut n = net();
    let column_major = ndarray::Array2::from_shape_fn((5, 3), |(i, j)| (i * 3 + j) as f32).reversed_axes();
    assert!(!column_major.is_standard_layout());
    n.params.readout_w[0] = column_major.clone();
    let e = message(n.run(x.view()).unwrap_err());
    assert!(e.contains("standard-layout"), "{e}");
    n.params.readout_w[0] = column_major.as_standard_layout().into_owned();
    assert!(n.run(x.view()).is_ok());
}

/// A diverging run stops with an error naming the update, the tensor and the index of the
/// first non-finite value; the last checkpoint written stays loadable.
#[test]
fn divergence_names_the_update_and_the_tensor() {
    let x = Array3::<f32>::from_shape_fn((10, 2, 4), |(t, b, i)| if (t + b + i) % 2 == 0 { 1.0 } else { 0.0 });
    let dir = std::env::temp_dir().join(format!("plasticity-diverge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for algorithm in [Algorithm::Eprop(Feedback::Symmetric), Algorithm::Bptt] {
        let c = TrainConfig::new(
            algorithm.clone(),
            Loss::CrossEntropy(Window::All),
            Optimizer::sgd(1e38, 0.0),
        );
        let mut tr = Trainer::new(net(), c).unwrap();
        let path = dir.join("last.safetensors");
        tr.save_checkpoint(&path).unwrap();
        let e = (0..5)
            .find_map(|_| tr.train_batch(x.view(), Targets::Classes(&[0, 1])).err())
            .unwrap_or_else(|| panic!("{algorithm:?}: no divergence"));
        let text = e.to_string();
        match e {
            Error::Diverged { update, tensor, .. } => {
                assert!(update >= 1);
                assert!(
                    tensor.starts_with("projections.") || tensor.starts_with("readout."),
                    "{tensor}"
                );
                assert!(
                    text.contains("training diverged at update") && text.contains("clip"),
                    "{text}"
                );
            }
            other => panic!("{algorithm:?}: expected divergence, got {other:?}"),
        }
        let mut fresh = Trainer::new(
            net(),
            TrainConfig::new(algorithm, Loss::CrossEntropy(Window::All), Optimizer::adam(1e-3)),
        )
        .unwrap();
        fresh.load_checkpoint(&path).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
