//! Checkpoints round-trip exactly, resume training exactly, and reject files that do not
//! match (wrong model, wrong sizes, corrupt, missing) with typed errors, changing nothing.

use ndarray::Array3;
use plasticity_runtime::models::{BellecAlif, BellecLif};
use plasticity_runtime::{
    Algorithm, Error, Feedback, LayerSpec, Loss, Network, NetworkBuilder, Optimizer, ReadoutSpec, Targets, TrainConfig,
    Trainer, Window,
};

fn alif(seed: u64, hidden: usize) -> Network<f32> {
    NetworkBuilder::new(6)
        .layer(LayerSpec::new(BellecAlif::default(), hidden).recurrent(true).bias(true))
        .readout(ReadoutSpec::new(3, 0.5))
        .seed(seed)
        .build()
        .unwrap()
}

fn config() -> TrainConfig {
    TrainConfig::new(
        Algorithm::Eprop(Feedback::Symmetric),
        Loss::CrossEntropy(Window::All),
        Optimizer::adam(1e-2),
    )
}

fn data(k: usize) -> (Array3<f32>, Vec<usize>) {
    let x = Array3::from_shape_fn((20, 4, 6), |(t, b, i)| {
        if (t * 3 + b * 5 + i + k).is_multiple_of(4) {
            1.0
        } else {
            0.0
        }
    });
    (x, vec![0, 1, 2, k % 3])
}

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("plasticity-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn network_round_trip() {
    let a = alif(1, 8);
    let path = temp("net.ckpt");
    a.save(&path).unwrap();
    let mut b = alif(2, 8);
    assert_ne!(a, b);
    b.load(&path).unwrap();
    assert_eq!(a, b);
}

#[test]
fn training_resumes_exactly() {
    let path = temp("trainer.ckpt");
    let mut first = Trainer::new(alif(1, 8), config()).unwrap();
    for k in 0..3 {
        let (x, y) = data(k);
        first.train_batch(x.view(), Targets::Classes(&y)).unwrap();
    }
    first.save_checkpoint(&path).unwrap();
    let mut resumed = Trainer::new(alif(9, 8), config()).unwrap();
    resumed.load_checkpoint(&path).unwrap();
    assert_eq!(resumed.updates(), 3);
    for k in 3..5 {
        let (x, y) = data(k);
        let a = first.train_batch(x.view(), Targets::Classes(&y)).unwrap();
        let b = resumed.train_batch(x.view(), Targets::Classes(&y)).unwrap();
        assert_eq!(a, b);
    }
    assert_eq!(first.network(), resumed.network());
}

#[test]
fn mismatches_are_errors_and_change_nothing() {
    let path = temp("mismatch.ckpt");
    alif(1, 8).save(&path).unwrap();

    let mut other_size = alif(2, 9);
    let before = other_size.clone();
    let e = other_size.load(&path).unwrap_err();
    assert!(
        matches!(e, Error::Format { .. }) && e.to_string().contains("BellecAlif[8]") && e.to_string().contains("[9]"),
        "{e}"
    );
    assert_eq!(other_size, before);

    let mut lif: Network<f32> = NetworkBuilder::new(6)
        .layer(LayerSpec::new(BellecLif::default(), 8).recurrent(true).bias(true))
        .readout(ReadoutSpec::new(3, 0.5))
        .build()
        .unwrap();
    let e = lif.load(&path).unwrap_err().to_string();
    assert!(e.contains("layer0:BellecAlif[8]"), "{e}");

    let bytes = std::fs::read(&path).unwrap();
    let cut = temp("cut.ckpt");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = alif(1, 8).load(&cut).unwrap_err().to_string();
    assert!(e.contains("corrupt") || e.contains("truncated"), "{e}");

    let e = alif(1, 8).load(temp("does-not-exist.ckpt")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");

    // A network without recurrent weights cannot take a checkpoint that has them.
    let mut feed_forward: Network<f32> = NetworkBuilder::new(6)
        .layer(LayerSpec::new(BellecAlif::default(), 8).bias(true))
        .readout(ReadoutSpec::new(3, 0.5))
        .build()
        .unwrap();
    let e = feed_forward.load(&path).unwrap_err().to_string();
    assert!(e.contains("unexpected tensor projections.layer0->layer0.i"), "{e}");

    // f32 checkpoints load into f64 networks (values are stored as f64).
    let mut wide: Network<f64> = NetworkBuilder::new(6)
        .layer(LayerSpec::new(BellecAlif::default(), 8).recurrent(true).bias(true))
        .readout(ReadoutSpec::new(3, 0.5))
        .build()
        .unwrap();
    wide.load(&path).unwrap();
    assert_eq!(
        wide.params.readout_w[0][[0, 0]] as f32,
        alif(1, 8).params.readout_w[0][[0, 0]]
    );
}
