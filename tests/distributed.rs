//! Data-parallel training: the same run on 1, 2, 3, 4 or 5 ranks (threads of one process
//! connected like MPI ranks) gives bit-identical weights and statistics, for e-prop, e-prop
//! with updates within a sequence, the per-sequence rate regulariser and BPTT, on a
//! recurrent network with a sparse projection and a batch that the shards do not divide.
//! Sharding itself is exact: the sharded gradient equals the whole batch's to rounding.

use std::sync::Arc;

use plasticity_runtime::{
    Algorithm, BatchStats, Collective, Feedback, Float, Loss, Optimizer, Single, StepTargets, Targets, Threads,
    TrainConfig, Trainer, Window,
};
use plasticity_tests::data_parallel::{BATCH, STEPS, batch, bits, cases, config, network, train};

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
fn training_is_bit_identical_on_any_rank_count() {
    for (name, config) in cases() {
        same_on_any_rank_count::<f64>(config.clone(), &format!("{name}, f64"));
        same_on_any_rank_count::<f32>(config, &format!("{name}, f32"));
    }
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

/// A rank's shards run in parallel (e-prop: each through every step up to the next update
/// in one task), or in order when a step hook is set (the hook sees each shard's readout):
/// the same bits either way, for every configuration the rank counts are checked on, and
/// for evaluation.
#[test]
fn shards_in_parallel_equal_shards_in_order() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    for (name, c) in cases() {
        let shards = c.shards;
        let parallel = train::<f64>(&c, Arc::new(Single));
        let calls = Arc::new(AtomicUsize::new(0));
        let rows = Arc::new(AtomicUsize::new(0));
        let mut t = Trainer::new(network::<f64>(), c).unwrap();
        let (calls_in, rows_in) = (calls.clone(), rows.clone());
        t.set_step_hook(move |info| {
            calls_in.fetch_add(1, Ordering::Relaxed);
            rows_in.fetch_add(info.readout.nrows(), Ordering::Relaxed);
        });
        let mut stats = Vec::new();
        for k in 0..3 {
            let (x, y) = batch::<f64>(k);
            stats.push(t.train_batch(x.view(), Targets::Classes(&y)).unwrap());
        }
        let (x, y) = batch::<f64>(3);
        stats.push(t.evaluate(x.view(), Targets::Classes(&y)).unwrap());
        assert_eq!((bits(t.network()), stats), parallel, "{name}");
        // 4 sequences of STEPS steps, every shard each step, BATCH rows per step in all.
        assert_eq!(calls.load(Ordering::Relaxed), 4 * STEPS * shards, "{name}");
        assert_eq!(rows.load(Ordering::Relaxed), 4 * STEPS * BATCH, "{name}");
    }
}

/// Spike events train like the same inputs made dense, bit for bit, over sequences longer
/// than the blocks of steps the events are expanded in, with updates inside and across
/// those blocks.
#[test]
fn spike_events_train_like_dense_inputs() {
    use plasticity_runtime::SpikeEvents;
    const T: usize = 75;
    for (name, c) in cases().into_iter().filter(|(_, c)| c.algorithm != Algorithm::Bptt) {
        let mut dense = Trainer::new(network::<f64>(), c.clone()).unwrap();
        let mut events = Trainer::new(network::<f64>(), c).unwrap();
        for k in 0..2 {
            let on = |t: usize, b: usize, i: usize| (t * 5 + b * 3 + i * 7 + k).is_multiple_of(4);
            let x = ndarray::Array3::from_shape_fn((T, BATCH, 5), |(t, b, i)| f64::from(u8::from(on(t, b, i))));
            let list = (0..T).flat_map(|t| (0..BATCH).flat_map(move |b| (0..5).map(move |i| (t, b, i))));
            let ev = SpikeEvents::new(T, BATCH, 5, list.filter(|&(t, b, i)| on(t, b, i))).unwrap();
            let y: Vec<usize> = (0..BATCH).map(|b| (b + k) % 3).collect();
            let a = dense.train_batch(x.view(), Targets::Classes(&y)).unwrap();
            let e = events.train_events(&ev, Targets::Classes(&y)).unwrap();
            assert_eq!(a, e, "{name}: statistics of batch {k}");
        }
        assert!(
            bits(dense.network()) == bits(events.network()),
            "{name}: weights differ"
        );
    }
}
