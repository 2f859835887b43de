//! Data-parallel training: the same run on 1, 2, 3, 4 or 5 ranks (threads of one process
//! connected like MPI ranks) gives bit-identical weights and statistics, for e-prop, e-prop
//! with updates within a sequence, the per-sequence rate regulariser and BPTT, on a
//! recurrent network with a sparse projection and a batch that the shards do not divide.
//! Sharding itself is exact: the sharded gradient equals the whole batch's to rounding.

use std::sync::Arc;

use ndarray::Array3;
use plasticity_runtime::models::{BellecAlif, BellecLif};
use plasticity_runtime::{
    Algorithm, BatchStats, Collective, Connectivity, Feedback, Float, Init, Loss, Network, NetworkBuilder, Optimizer,
    PopulationSpec, ProjectionSpec, RateRegularization, ReadoutSpec, Schedule, Single, StepTargets, Targets, Threads,
    TrainConfig, Trainer, Window,
};

const BATCH: usize = 7;
const STEPS: usize = 24;

/// LIF and ALIF populations, recurrent within and between them, the ALIF input sparse.
fn network<F: Float>() -> Network<F> {
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
        .unwrap()
}

fn batch<F: Float>(k: usize) -> (Array3<F>, Vec<usize>) {
    let x = Array3::from_shape_fn((STEPS, BATCH, 5), |(t, b, i)| {
        if (t * 7 + b * 3 + i * 5 + k).is_multiple_of(3) {
            F::from_f64(1.0)
        } else {
            F::from_f64(0.0)
        }
    });
    (x, (0..BATCH).map(|b| (b + k) % 3).collect())
}

fn config(algorithm: Algorithm, shards: usize) -> TrainConfig {
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
fn bits<F: Float>(net: &Network<F>) -> Vec<u64> {
    let p = &net.params;
    p.slots()
        .flat_map(|s| p.get(s).iter().map(|v| v.to_f64().to_bits()).collect::<Vec<_>>())
        .collect()
}

/// Three training batches and an evaluation on `comm`: the final weights and every
/// batch's statistics.
fn train<F: Float>(config: &TrainConfig, comm: Arc<dyn Collective>) -> (Vec<u64>, Vec<BatchStats>) {
    let mut trainer = Trainer::with_collective(network::<F>(), config.clone(), comm).unwrap();
    let mut stats = Vec::new();
    for k in 0..3 {
        let (x, y) = batch::<F>(k);
        stats.push(trainer.train_batch(x.view(), Targets::Classes(&y)).unwrap());
    }
    let (x, y) = batch::<F>(3);
    stats.push(trainer.evaluate(x.view(), Targets::Classes(&y)).unwrap());
    (bits(trainer.network()), stats)
}

/// `train` on every rank of an in-process job of `ranks`; every rank's result.
fn on_ranks<F: Float>(config: &TrainConfig, ranks: usize) -> Vec<(Vec<u64>, Vec<BatchStats>)> {
    let group: Vec<Arc<dyn Collective>> = Threads::group(ranks)
        .into_iter()
        .map(|c| Arc::new(c) as Arc<dyn Collective>)
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = group
            .into_iter()
            .map(|comm| s.spawn(move || train::<F>(config, comm)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn same_on_any_rank_count<F: Float>(config: TrainConfig, what: &str) {
    let alone = train::<F>(&config, Arc::new(Single));
    for ranks in [1, 2, 3, 4, 5] {
        for (rank, result) in on_ranks::<F>(&config, ranks).into_iter().enumerate() {
            assert_eq!(result.1, alone.1, "{what}: statistics of rank {rank} of {ranks}");
            assert!(result.0 == alone.0, "{what}: weights of rank {rank} of {ranks} differ");
        }
    }
}

#[test]
fn eprop_is_bit_identical_on_any_rank_count() {
    same_on_any_rank_count::<f64>(config(Algorithm::Eprop(Feedback::Symmetric), 4), "e-prop f64");
    same_on_any_rank_count::<f32>(config(Algorithm::Eprop(Feedback::Random { seed: 2 }), 4), "e-prop f32");
}

#[test]
fn online_updates_are_bit_identical_on_any_rank_count() {
    let mut c = config(Algorithm::Eprop(Feedback::Symmetric), 4);
    c.update_every = Some(5);
    same_on_any_rank_count::<f64>(c, "update_every");
}

#[test]
fn per_sequence_rate_terms_are_bit_identical_on_any_rank_count() {
    let mut c = config(Algorithm::Eprop(Feedback::Symmetric), 3);
    c.rate_regularization = Some(RateRegularization::per_sequence(0.5, 0.05));
    same_on_any_rank_count::<f64>(c, "per-sequence rate");
}

#[test]
fn bptt_is_bit_identical_on_any_rank_count() {
    same_on_any_rank_count::<f64>(config(Algorithm::Bptt, 4), "BPTT f64");
    same_on_any_rank_count::<f32>(config(Algorithm::Bptt, 7), "BPTT f32, one sample a shard");
}

/// More shards than samples: every sample its own shard.
#[test]
fn shards_beyond_the_batch_are_one_sample_each() {
    let mut a = config(Algorithm::Bptt, BATCH);
    let alone = train::<f64>(&a, Arc::new(Single));
    a.shards = 100;
    assert_eq!(train::<f64>(&a, Arc::new(Single)), alone);
}

/// Sharding changes the summation order only: the gradients of 1, 3 and 7 shards agree to
/// rounding, for e-prop and BPTT, and e-prop's loss too.
#[test]
fn sharded_gradients_equal_the_whole_batch() {
    for algorithm in [Algorithm::Eprop(Feedback::Symmetric), Algorithm::Bptt] {
        let (x, y) = batch::<f64>(0);
        let mut whole = Trainer::new(network::<f64>(), config(algorithm.clone(), 1)).unwrap();
        let (g1, s1) = whole.compute_gradients(x.view(), Targets::Classes(&y)).unwrap();
        let (g1, s1) = (g1.clone(), s1);
        for shards in [3, 7] {
            let mut sharded = Trainer::new(network::<f64>(), config(algorithm.clone(), shards)).unwrap();
            let (g, s) = sharded.compute_gradients(x.view(), Targets::Classes(&y)).unwrap();
            let diff = g.max_rel_diff(&g1, 1e-9);
            assert!(diff < 1e-12, "{algorithm:?}, {shards} shards: {diff:e}");
            assert!((s.loss - s1.loss).abs() < 1e-12 * s1.loss.abs());
            assert_eq!((s.correct, s.predictions), (s1.correct, s1.predictions));
        }
    }
}

/// The streamed API across ranks: each rank gets its own samples' readout, and the update
/// equals the batch API's.
#[test]
fn streamed_sequences_work_across_ranks() {
    let mut c = config(Algorithm::Eprop(Feedback::Symmetric), 4);
    c.update_every = Some(6);
    let (x, y) = batch::<f64>(0);
    let mut reference = Trainer::new(network::<f64>(), c.clone()).unwrap();
    reference.train_batch(x.view(), Targets::Classes(&y)).unwrap();
    let expected = bits(reference.network());
    let group = Threads::group(2);
    let results: Vec<(Vec<u64>, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = group
            .into_iter()
            .map(|comm| {
                let (c, x, y) = (&c, &x, &y);
                s.spawn(move || {
                    let mut t = Trainer::with_collective(network::<f64>(), c.clone(), Arc::new(comm)).unwrap();
                    let labels = ndarray::Array1::from_vec(y.clone());
                    t.begin_sequence(BATCH, STEPS).unwrap();
                    let mut rows = 0;
                    for step in 0..STEPS {
                        let target = (step >= STEPS - 16).then(|| StepTargets::Classes(labels.view()));
                        rows = t.step(x.index_axis(ndarray::Axis(0), step), target).unwrap().nrows();
                    }
                    t.end_sequence().unwrap();
                    (bits(t.network()), rows)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // 4 shards of 7 samples: 1, 2, 2, 2; rank 0 holds the first two (3 samples).
    assert_eq!(results[0], (expected.clone(), 3));
    assert_eq!(results[1], (expected, 4));
}

/// The per-rank training state shrinks with the rank count: each rank keeps traces for its
/// own shards only.
#[test]
fn each_rank_keeps_state_for_its_shards_only() {
    let c = config(Algorithm::Eprop(Feedback::Symmetric), 4);
    let mut alone = Trainer::new(network::<f64>(), c.clone()).unwrap();
    let whole = alone.state_bytes(8, STEPS);
    let group = Threads::group(2);
    let mut halves: Vec<usize> = group
        .into_iter()
        .map(|comm| {
            Trainer::with_collective(network::<f64>(), c.clone(), Arc::new(comm))
                .unwrap()
                .state_bytes(8, STEPS)
        })
        .collect();
    halves.sort();
    let tree = 2 * network::<f64>().params.len() * 8;
    assert_eq!(halves[0], halves[1]);
    assert_eq!(2 * (halves[0] - tree), whole - tree);
}

/// A diverging update is found after the sum, so every rank reports the same error at the
/// same update and none is left waiting for another.
#[test]
fn divergence_is_reported_by_every_rank() {
    let mut c = TrainConfig::new(
        Algorithm::Eprop(Feedback::Symmetric),
        Loss::CrossEntropy(Window::All),
        Optimizer::sgd(1e38, 0.0),
    );
    c.shards = 2;
    let group = Threads::group(2);
    let errors: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = group
            .into_iter()
            .map(|comm| {
                let c = c.clone();
                s.spawn(move || {
                    let mut t = Trainer::with_collective(network::<f32>(), c, Arc::new(comm)).unwrap();
                    (0..5)
                        .find_map(|k| {
                            let (x, y) = batch::<f32>(k);
                            t.train_batch(x.view(), Targets::Classes(&y)).err()
                        })
                        .map(|e| e.to_string())
                        .unwrap_or_default()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(errors[0].contains("training diverged"), "{errors:?}");
    assert_eq!(errors[0], errors[1]);
}
