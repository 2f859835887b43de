//! Checkpoints round-trip exactly, resume training exactly, and reject files that do not
//! match (wrong model, wrong sizes, corrupt, missing) with typed errors, changing nothing.

use std::collections::BTreeMap;

use ndarray::Array3;
use plasticity_runtime::models::{BellecAlif, BellecLif};
use plasticity_runtime::{
    Algorithm, Error, Feedback, Float, LayerSpec, Loss, Network, NetworkBuilder, Optimizer, RateRegularization,
    ReadoutSpec, Schedule, Targets, TrainConfig, Trainer, Window,
};

fn alif(seed: u64, hidden: usize) -> Network<f32> {
    alif_in(seed, hidden)
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
    let path = temp("net.safetensors");
    a.save(&path).unwrap();
    let mut b = alif(2, 8);
    assert_ne!(a, b);
    b.load(&path).unwrap();
    assert_eq!(a, b);
}

/// A recurrent ALIF network in float type `F`.
fn alif_in<F: Float>(seed: u64, hidden: usize) -> Network<F> {
    NetworkBuilder::new(6)
        .layer(LayerSpec::new(BellecAlif::default(), hidden).recurrent(true).bias(true))
        .readout(ReadoutSpec::new(3, 0.5))
        .seed(seed)
        .build()
        .unwrap()
}

/// 4 batches straight through against 2, a checkpoint, a fresh trainer (other weights)
/// restored from it, and 2 more: bit-identical weights, moments and statistics, with every
/// piece of optimiser state in play (AdamW moments, warm-up and cosine schedule, clipping,
/// rate regularisation, random feedback, updates within a sequence for e-prop).
fn resumes_exactly<F: Float>(algorithm: Algorithm, name: &str) {
    let eprop = matches!(algorithm, Algorithm::Eprop(_));
    let mut c = TrainConfig::new(algorithm, Loss::CrossEntropy(Window::All), Optimizer::adamw(1e-2, 1e-2));
    c.schedule = Schedule::Cosine {
        warmup: 2,
        total: 4,
        min_factor: 0.1,
    };
    c.clip_norm = Some(0.5);
    c.rate_regularization = Some(RateRegularization::running(0.1, 0.02));
    if eprop {
        c.update_every = Some(7);
    }
    let batch = |k: usize| {
        let (x, y) = data(k);
        (x.mapv(|v| F::from_f64(f64::from(v))), y)
    };
    let mut straight = Trainer::new(alif_in::<F>(1, 8), c.clone()).unwrap();
    let mut interrupted = Trainer::new(alif_in::<F>(1, 8), c.clone()).unwrap();
    let path = temp(name);
    for k in 0..2 {
        let (x, y) = batch(k);
        straight.train_batch(x.view(), Targets::Classes(&y)).unwrap();
        interrupted.train_batch(x.view(), Targets::Classes(&y)).unwrap();
    }
    let user = BTreeMap::from([("epoch".to_string(), "2".to_string())]);
    interrupted.save_checkpoint_with(&path, &user).unwrap();
    drop(interrupted);
    let mut resumed = Trainer::new(alif_in::<F>(9, 8), c).unwrap();
    assert_eq!(resumed.load_checkpoint(&path).unwrap(), user);
    assert_eq!(resumed.updates(), straight.updates());
    for k in 2..4 {
        let (x, y) = batch(k);
        let a = straight.train_batch(x.view(), Targets::Classes(&y)).unwrap();
        let b = resumed.train_batch(x.view(), Targets::Classes(&y)).unwrap();
        assert_eq!(a, b, "{name}: batch {k}");
    }
    // Bit-identical, not merely equal as numbers.
    let bits = |t: &Trainer<F>| -> Vec<u64> {
        let p = &t.network().params;
        p.slots()
            .flat_map(|s| p.get(s).iter().map(|v| v.to_f64().to_bits()).collect::<Vec<_>>())
            .collect()
    };
    assert_eq!(bits(&straight), bits(&resumed), "{name}");
    // The optimiser state too: one more identical step.
    let (x, y) = batch(4);
    assert_eq!(
        straight.train_batch(x.view(), Targets::Classes(&y)).unwrap(),
        resumed.train_batch(x.view(), Targets::Classes(&y)).unwrap()
    );
    assert_eq!(bits(&straight), bits(&resumed), "{name}");
}

#[test]
fn training_resumes_bit_identically() {
    let random = Algorithm::Eprop(Feedback::Random { seed: 5 });
    resumes_exactly::<f32>(Algorithm::Eprop(Feedback::Symmetric), "eprop32.safetensors");
    resumes_exactly::<f64>(Algorithm::Eprop(Feedback::Symmetric), "eprop64.safetensors");
    resumes_exactly::<f32>(random.clone(), "random32.safetensors");
    resumes_exactly::<f64>(random, "random64.safetensors");
    resumes_exactly::<f32>(Algorithm::Bptt, "bptt32.safetensors");
    resumes_exactly::<f64>(Algorithm::Bptt, "bptt64.safetensors");
}

#[test]
fn mismatches_are_errors_and_change_nothing() {
    let path = temp("mismatch.safetensors");
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
    let cut = temp("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = alif(1, 8).load(&cut).unwrap_err().to_string();
    assert!(e.contains("corrupt") || e.contains("truncated"), "{e}");

    let e = alif(1, 8).load(temp("does-not-exist.safetensors")).unwrap_err();
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

mod v1 {
    use plasticity_runtime::neuron_model;

    #[neuron_model(surrogate = fast_sigmoid(5.0))]
    pub mod lif {
        /// A LIF neuron.
        pub struct Lif {
            #[param(default = 0.9)]
            pub alpha: f64,
            #[state(init = 0.0)]
            v: f64,
            #[input]
            i: f64,
        }
        fn step() {
            let v = alpha * v + i;
            Next {
                v,
                spike: spike(v - 1.0),
            }
        }
    }
}

mod v2 {
    use plasticity_runtime::neuron_model;

    #[neuron_model(surrogate = fast_sigmoid(5.0))]
    pub mod lif {
        /// The same LIF neuron, its equations since changed (a reset).
        pub struct Lif {
            #[param(default = 0.9)]
            pub alpha: f64,
            #[state(init = 0.0)]
            v: f64,
            #[input]
            i: f64,
        }
        fn step() {
            let v = alpha * v + i - detach(spike(v - 1.0));
            Next {
                v,
                spike: spike(v - 1.0),
            }
        }
    }
}

/// A checkpoint of a model whose equations changed since (same name, same sizes) is refused:
/// the metadata fingerprints each model's generated derivatives.
#[test]
fn changed_models_are_refused() {
    let build = |first: bool| -> Network<f32> {
        let b = NetworkBuilder::new(3);
        let b = if first {
            b.layer(LayerSpec::new(v1::lif::Lif::default(), 4))
        } else {
            b.layer(LayerSpec::new(v2::lif::Lif::default(), 4))
        };
        b.readout(ReadoutSpec::new(2, 0.5)).build().unwrap()
    };
    let path = temp("changed.safetensors");
    build(true).save(&path).unwrap();
    assert_eq!(build(true).structure(), build(false).structure());
    let e = build(false).load(&path).unwrap_err().to_string();
    assert!(e.contains("equations changed") && e.contains("layer0:Lif:"), "{e}");
    build(true).load(&path).unwrap();
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(256))]
    /// A trainer's checkpoint with bytes changed (header, metadata or tensor data) loads or
    /// is refused with an error, never a panic; a refused file changes nothing, and a file
    /// that loads holds only finite values.
    #[test]
    fn edited_checkpoints_never_panic(
        edits in proptest::collection::vec((0usize..1 << 16, proptest::num::u8::ANY), 1..6),
        cut in proptest::option::of(0usize..1 << 16),
    ) {
        let path = temp("edited-source.safetensors");
        let trainer = Trainer::new(alif(1, 4), TrainConfig::new(
            Algorithm::Eprop(Feedback::Symmetric),
            Loss::CrossEntropy(Window::All),
            Optimizer::adam(1e-2),
        )).unwrap();
        trainer.save_checkpoint(&path).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        for (at, value) in edits {
            let n = bytes.len();
            bytes[at % n] = value;
        }
        if let Some(c) = cut {
            bytes.truncate(c % (bytes.len() + 1));
        }
        let edited = temp("edited.safetensors");
        std::fs::write(&edited, &bytes).unwrap();
        let mut other = Trainer::new(alif(2, 4), TrainConfig::new(
            Algorithm::Eprop(Feedback::Symmetric),
            Loss::CrossEntropy(Window::All),
            Optimizer::adam(1e-2),
        )).unwrap();
        let before = other.network().clone();
        match other.load_checkpoint(&edited) {
            Ok(_) => {
                let p = &other.network().params;
                for s in p.slots() {
                    proptest::prop_assert!(p.get(s).iter().all(|v| v.is_finite()));
                }
            }
            Err(_) => proptest::prop_assert_eq!(other.network(), &before),
        }
    }
}
