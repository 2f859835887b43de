//! `Trainer::state_bytes` equals the formulas of docs/training.md (section "Memory"), computed
//! here from the model's published layout: e-prop with and without κ-filtering, with gradient
//! windows (factorised-only ports) and without, two layers, recurrent weights and biases,
//! batches below and above the window's row target, sparse projections counted by synapse;
//! BPTT linear in T.

use plasticity_runtime::models::*;
use plasticity_runtime::{
    Algorithm, Chunking, Connectivity, Feedback, LayerSpec, Loss, Matrix, NetworkBuilder, NeuronModel, Optimizer,
    PopulationSpec, ProjectionSpec, ReadoutSpec, RowLayout, StepTargets, TrainConfig, Trainer, Window,
};

const N_IN: usize = 37;
const HIDDEN: [usize; 2] = [70, 45];
const N_OUT: usize = 5;

/// The documented e-prop state, in bytes, for f32.
fn eprop_formula<M: NeuronModel>(batch: usize, kappa: f64) -> usize {
    let f = 4;
    let (k, q) = (M::NUM_STATES, M::NUM_LEARNABLE);
    let filtered = usize::from(kappa > 0.0);
    let w = batch * (64 / batch).max(1);
    let round = |x: usize, m: usize| x.div_ceil(m) * m;
    let mut values = 0;
    let mut bytes = 0;
    for (l, &n) in HIDDEN.iter().enumerate() {
        let sources = [if l == 0 { N_IN } else { HIDDEN[l - 1] }, n, 1];
        for (port, pl) in M::PATTERN.ports.iter().enumerate() {
            // A chunked source keeps its traces and gradient in blocks of 16 neurons
            // (`chunk_formula`); the others per neuron.
            let chunked = pl.per_synapse > 0 || filtered == 1;
            for m in sources {
                values += batch * pl.factorised * m;
                if !chunked {
                    values += batch * pl.per_synapse * n * m + filtered * batch * n * m + n * m;
                }
            }
            if pl.per_synapse == 0 && filtered == 0 {
                let d = (pl.rows.iter().enumerate())
                    .filter(|(r, layout)| {
                        matches!(layout, RowLayout::Factorised(_)) && M::PATTERN.entry(Matrix::Jz, 0, *r).is_some()
                    })
                    .count();
                let has_bz = usize::from(M::PATTERN.entry(Matrix::Bz, 0, port).is_some());
                if d + has_bz > 0 {
                    values += (d + has_bz) * w * round(n, 32);
                    for m in sources {
                        values += d * w * round(m, 4) + has_bz * 2 * w * m;
                        bytes += 4 * m;
                    }
                }
            }
        }
        values += batch * n * q * k + filtered * batch * n * q + n * q + batch * n;
        values += chunk_formula::<M>(batch, filtered == 1, n, &sources);
    }
    values += N_OUT * HIDDEN[1] + N_OUT + batch * HIDDEN[1];
    values * f + bytes
}

/// The documented state of the chunked e-prop update of a population of `n` neurons of `M`
/// whose every port is fed by dense `sources`, in values (f32; an activity entry, a `u32`
/// step and an f32 value, counts two, a `u32` count or offset one); adds nothing when no
/// source is chunked.
fn chunk_formula<M: NeuronModel>(batch: usize, filtered: bool, n: usize, sources: &[usize]) -> usize {
    let round = |x: usize, m: usize| x.div_ceil(m) * m;
    let chunked_ports: Vec<_> = (M::PATTERN.ports.iter())
        .filter(|pl| pl.per_synapse > 0 || filtered)
        .collect();
    if chunked_ports.is_empty() {
        return 0;
    }
    let nd = M::NUM_DYNAMIC;
    let pre: usize = chunked_ports.len() * sources.iter().sum::<usize>();
    let k = Chunking::Auto.resolve(batch, (nd + 1) * n + pre, 4, Chunking::cache_bytes());
    assert!((8..=32).contains(&k));
    let n16 = round(n, 16);
    let mut values = M::NUM_CONSTS + n16 * batch * k * (nd + 1);
    for pl in chunked_ports {
        let (s, f) = (pl.per_synapse, pl.factorised);
        let (r, p) = (s + usize::from(filtered) + 1, k + f);
        values += n16 * r * batch * p + n16 * batch * (2 + 2 * s + s * s) + f * f + f;
        for &m in sources {
            // Traces, filtered traces and gradient; the factorised traces at the chunk's
            // start; the activity entries, counts and offsets.
            values += n16 * m * (batch * s + usize::from(filtered) * batch + 1) + m * batch * f;
            values += 2 * m * batch * k + 2 * m * batch + 1;
        }
    }
    values
}

/// The documented BPTT state, in bytes, for f32: the tape plus the gradients.
fn bptt_formula<M: NeuronModel>(batch: usize, t_len: usize) -> usize {
    let nd = M::NUM_DYNAMIC;
    let per_step: usize = HIDDEN
        .iter()
        .map(|&n| batch * (n * nd).max(1) + batch * n + batch * M::NUM_INPUTS * n)
        .sum::<usize>()
        + 2 * batch * N_OUT;
    let p = M::NUM_INPUTS;
    let params: usize = (HIDDEN.iter().enumerate())
        .map(|(l, &n)| {
            let m = if l == 0 { N_IN } else { HIDDEN[l - 1] };
            p * (n * m + n * n + n) + n * M::NUM_LEARNABLE
        })
        .sum::<usize>()
        + N_OUT * HIDDEN[1]
        + N_OUT;
    (t_len * per_step + params) * 4
}

fn trainer<M: NeuronModel>(model: M, algorithm: Algorithm, kappa: f64) -> Trainer<f32> {
    let layer = |n| LayerSpec::new(model.clone(), n).recurrent(true).bias(true);
    let net = NetworkBuilder::<f32>::new(N_IN)
        .layer(layer(HIDDEN[0]))
        .layer(layer(HIDDEN[1]))
        .readout(ReadoutSpec::new(N_OUT, kappa))
        .seed(3)
        .build()
        .unwrap();
    Trainer::new(
        net,
        TrainConfig::new(algorithm, Loss::CrossEntropy(Window::All), Optimizer::adam(1e-3)),
    )
    .unwrap()
}

fn check<M: NeuronModel + Default>() {
    for kappa in [0.0, 0.6] {
        for batch in [1, 3, 16, 100] {
            let mut tr = trainer(M::default(), Algorithm::Eprop(Feedback::Symmetric), kappa);
            assert_eq!(
                tr.state_bytes(batch, 50),
                eprop_formula::<M>(batch, kappa),
                "{} e-prop, κ = {kappa}, B = {batch}",
                M::PATTERN.model
            );
        }
        // Independent of the sequence length: after streaming sequences of 5 and of 200 steps
        // the engine still holds exactly what the formula says (it never grows with T).
        let batch = 3;
        let mut tr = trainer(M::default(), Algorithm::Eprop(Feedback::Symmetric), kappa);
        for t_len in [5, 200] {
            tr.begin_sequence(batch, t_len).unwrap();
            let x = ndarray::Array2::<f32>::from_shape_fn((batch, N_IN), |(b, i)| ((b + i) % 3 == 0) as u8 as f32);
            let classes = ndarray::Array1::from(vec![0usize, 1, 2]);
            for _ in 0..t_len {
                tr.step(x.view(), Some(StepTargets::Classes(classes.view()))).unwrap();
            }
            tr.end_sequence().unwrap();
            assert_eq!(
                tr.state_bytes(batch, t_len),
                eprop_formula::<M>(batch, kappa),
                "after {t_len} steps"
            );
        }
    }
    let mut tr = trainer(M::default(), Algorithm::Bptt, 0.0);
    for (batch, t_len) in [(1, 10), (16, 100), (5, 1000)] {
        assert_eq!(
            tr.state_bytes(batch, t_len),
            bptt_formula::<M>(batch, t_len),
            "{} BPTT, B = {batch}, T = {t_len}",
            M::PATTERN.model
        );
    }
}

#[test]
fn state_bytes_follow_the_documented_formulas() {
    // Factorised-only (gradient window at κ = 0), per-synapse rows, two ports, learnable
    // parameters.
    check::<BellecLif>();
    check::<BellecAlif>();
    check::<CubaLif>();
    check::<SigmaDelta>();
}

/// A sparse projection keeps per-synapse traces, filtered traces and gradients for its
/// existing synapses only (factorised traces stay per presynaptic neuron), and never uses
/// the gradient window.
fn check_sparse<M: NeuronModel + Default>() {
    let (n, n_in, p) = (60, 80, 0.25);
    for kappa in [0.0, 0.6] {
        let net = NetworkBuilder::<f32>::new(n_in)
            .population(PopulationSpec::new("hidden", M::default(), n))
            .projection(ProjectionSpec::input("hidden").connectivity(Connectivity::Probability { p, seed: 4 }))
            .readout(ReadoutSpec::new(N_OUT, kappa))
            .build()
            .unwrap();
        let synapses = net.projections[0].num_weights();
        assert!(synapses < n * n_in / 2, "{synapses} synapses");
        let mut tr = Trainer::new(
            net,
            TrainConfig::new(
                Algorithm::Eprop(Feedback::Symmetric),
                Loss::CrossEntropy(Window::All),
                Optimizer::adam(1e-3),
            ),
        )
        .unwrap();
        let (k, q) = (M::NUM_STATES, M::NUM_LEARNABLE);
        let pl = M::PATTERN.ports[0];
        let filtered = usize::from(kappa > 0.0);
        for batch in [1, 16] {
            // Sparse projections are not chunked.
            let values = batch * pl.factorised * n_in
                + synapses * (batch * pl.per_synapse + filtered * batch + 1)
                + batch * n * q * k
                + filtered * batch * n * q
                + n * q
                + batch * n
                + N_OUT * n
                + N_OUT
                + batch * n;
            assert_eq!(
                tr.state_bytes(batch, 50),
                values * 4,
                "{} sparse, κ = {kappa}, B = {batch}",
                M::PATTERN.model
            );
        }
    }
}

#[test]
fn sparse_traces_are_counted_by_synapse() {
    check_sparse::<BellecLif>();
    check_sparse::<BellecAlif>();
}
