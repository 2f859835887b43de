//! The data-parallel test case shared by `tests/distributed.rs` (ranks as threads) and the
//! `mpi_equality` program (ranks as MPI processes): a recurrent network of two models with a
//! sparse projection, a batch that shards do not divide, and training configurations that
//! put every part of the trainer in play.

use std::sync::Arc;

use ndarray::Array3;
use plasticity_runtime::models::{BellecAlif, BellecLif};
use plasticity_runtime::{
    Algorithm, BatchStats, Collective, Connectivity, Float, Init, Loss, Network, NetworkBuilder, Optimizer,
    PopulationSpec, ProjectionSpec, RateRegularization, ReadoutSpec, Schedule, Targets, TrainConfig, Trainer, Window,
};

/// Samples per batch.
pub const BATCH: usize = 7;
/// Steps per sequence.
pub const STEPS: usize = 24;

/// LIF and ALIF populations, recurrent within and between them (the LIF → ALIF block
/// delayed), the ALIF input sparse, one readout from both.
pub fn network<F: Float>() -> Network<F> {
    NetworkBuilder::new(5)
        .population(PopulationSpec::new("lif", BellecLif::default(), 6).bias(true))
        .population(PopulationSpec::new("alif", BellecAlif::default(), 5))
        .projection(ProjectionSpec::input("lif").init(Init::Gaussian { gain: 2.0 }))
        .projection(
            ProjectionSpec::input("alif")
                .init(Init::Gaussian { gain: 3.0 })
                .connectivity(Connectivity::Probability { p: 0.5, seed: 3 }),
        )
        .projection(ProjectionSpec::new("lif", "lif").init(Init::Gaussian { gain: 0.8 }))
        .projection(ProjectionSpec::new("lif", "alif").delayed(true))
        .projection(ProjectionSpec::new("alif", "lif").init(Init::Gaussian { gain: 0.5 }))
        .readout(ReadoutSpec::new(3, 0.6).from(["lif", "alif"]))
        .seed(4)
        .build()
        .expect("a valid network")
}

/// Batch `k`: binary inputs `[STEPS, BATCH, 5]` and one class per sample.
pub fn batch<F: Float>(k: usize) -> (Array3<F>, Vec<usize>) {
    let x = Array3::from_shape_fn((STEPS, BATCH, 5), |(t, b, i)| {
        if (t * 7 + b * 3 + i * 5 + k).is_multiple_of(3) {
            F::from_f64(1.0)
        } else {
            F::from_f64(0.0)
        }
    });
    (x, (0..BATCH).map(|b| (b + k) % 3).collect())
}

/// AdamW with a cosine schedule, clipping and the running rate regulariser, over `shards`.
pub fn config(algorithm: Algorithm, shards: usize) -> TrainConfig {
    let mut c = TrainConfig::new(
        algorithm,
        Loss::CrossEntropy(Window::Last(16)),
        Optimizer::adamw(2e-2, 1e-2),
    );
    c.schedule = Schedule::Cosine {
        warmup: 1,
        total: 3,
        min_factor: 0.2,
    };
    c.clip_norm = Some(2.0);
    c.rate_regularization = Some(RateRegularization::running(0.1, 0.05));
    c.shards = shards;
    c
}

/// Weights as bits, in the one walk order.
pub fn bits<F: Float>(net: &Network<F>) -> Vec<u64> {
    let p = &net.params;
    p.slots()
        .flat_map(|s| p.get(s).iter().map(|v| v.to_f64().to_bits()).collect::<Vec<_>>())
        .collect()
}

/// Three training batches and an evaluation on `comm`: the final weights (as bits) and
/// every batch's statistics.
pub fn train<F: Float>(config: &TrainConfig, comm: Arc<dyn Collective>) -> (Vec<u64>, Vec<BatchStats>) {
    let mut trainer = Trainer::with_collective(network::<F>(), config.clone(), comm).expect("a valid configuration");
    let mut stats = Vec::new();
    for k in 0..3 {
        let (x, y) = batch::<F>(k);
        stats.push(trainer.train_batch(x.view(), Targets::Classes(&y)).expect("training"));
    }
    let (x, y) = batch::<F>(3);
    stats.push(trainer.evaluate(x.view(), Targets::Classes(&y)).expect("evaluation"));
    (bits(trainer.network()), stats)
}

/// The configurations every rank count must agree on, by name.
pub fn cases() -> Vec<(&'static str, TrainConfig)> {
    use plasticity_runtime::Feedback;
    let mut online = config(Algorithm::Eprop(Feedback::Symmetric), 4);
    online.update_every = Some(5);
    let mut per_sequence = config(Algorithm::Eprop(Feedback::Symmetric), 3);
    per_sequence.rate_regularization = Some(RateRegularization::per_sequence(0.5, 0.05));
    vec![
        ("e-prop", config(Algorithm::Eprop(Feedback::Symmetric), 4)),
        (
            "e-prop, random feedback",
            config(Algorithm::Eprop(Feedback::Random { seed: 2 }), 4),
        ),
        ("e-prop, update every 5 steps", online),
        ("e-prop, per-sequence rate regulariser", per_sequence),
        ("BPTT", config(Algorithm::Bptt, 4)),
        ("BPTT, one sample a shard", config(Algorithm::Bptt, 7)),
    ]
}
