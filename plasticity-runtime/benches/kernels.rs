//! Benchmarks of each generated kernel and of a full training step: `cargo bench`.
//!
//! Sizes follow the scaling experiment: 1024 neurons, 700 presynaptic inputs, batch 16.

use divan::{Bencher, black_box};
use ndarray::{Array1, Array2};
use plasticity_runtime::models::{BellecAlif, BellecLif};
use plasticity_runtime::{
    Algorithm, Feedback, LayerSpec, Loss, NetworkBuilder, NeuronModel, Optimizer, Plain, ReadoutSpec, StepTargets,
    TrainConfig, Trainer, Window,
};

const N: usize = 1024;
const N_PRE: usize = 700;

fn main() {
    divan::main();
}

/// `(learn, state, input, z, dynv)` of a layer in structure-of-arrays layout.
type LayerBuffers = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

fn layer_buffers<M: NeuronModel>(m: &M) -> LayerBuffers {
    let mut learn = vec![0.0f32; M::NUM_LEARNABLE];
    m.learnable_init(&mut learn);
    let mut init = vec![0.0f32; M::NUM_STATES];
    m.initial_state(&learn, &mut init);
    let state: Vec<f32> = (0..M::NUM_STATES * N)
        .map(|i| init[i / N] + (i % 7) as f32 * 0.1)
        .collect();
    let input: Vec<f32> = (0..M::NUM_INPUTS * N).map(|i| ((i * 13) % 11) as f32 * 0.1).collect();
    let learn = vec![0.0f32; M::NUM_LEARNABLE * N];
    (learn, state, input, vec![0.0f32; N], vec![0.0f32; M::NUM_DYNAMIC * N])
}

#[divan::bench(types = [BellecLif, BellecAlif])]
fn forward_layer<M: NeuronModel + Default>(bencher: Bencher) {
    let m = M::default();
    let (learn, mut state, input, mut z, _) = layer_buffers(&m);
    bencher.bench_local(|| {
        m.eval_layer(&learn, &mut state, &input, &mut z, &mut [], &mut Plain);
        black_box(&z);
    });
}

#[divan::bench(types = [BellecLif, BellecAlif])]
fn forward_layer_with_partials<M: NeuronModel + Default>(bencher: Bencher) {
    let m = M::default();
    let (learn, mut state, input, mut z, mut dynv) = layer_buffers(&m);
    bencher.bench_local(|| {
        m.eval_layer(&learn, &mut state, &input, &mut z, &mut dynv, &mut Plain);
        black_box(&dynv);
    });
}

/// One postsynaptic neuron's synapses on port 0, one step (κ = 0 and κ > 0).
#[divan::bench(types = [BellecLif, BellecAlif], args = [false, true])]
fn synapse_traces<M: NeuronModel + Default>(bencher: Bencher, filtered: bool) {
    let m = M::default();
    let mut consts = vec![0.0f32; M::NUM_CONSTS];
    m.constants(&mut consts);
    let dynv = vec![0.3f32; M::NUM_DYNAMIC];
    let layout = M::PATTERN.ports[0];
    let pre: Vec<f32> = (0..N_PRE).map(|i| if i % 10 == 0 { 1.0 } else { 0.0 }).collect();
    let fact = vec![0.5f32; layout.factorised * N_PRE];
    let mut syn = vec![0.1f32; layout.per_synapse * N_PRE];
    let mut ebar = vec![0.0f32; if filtered { N_PRE } else { 0 }];
    let mut grad = vec![0.0f32; N_PRE];
    bencher.bench_local(|| {
        M::synapse_traces(
            0, &consts, &dynv, &pre, &fact, &mut syn, &mut ebar, &mut grad, 0.01, 0.8,
        );
        black_box(&grad);
    });
}

#[divan::bench(types = [BellecLif, BellecAlif])]
fn factorised_traces<M: NeuronModel + Default>(bencher: Bencher) {
    let m = M::default();
    let mut consts = vec![0.0f32; M::NUM_CONSTS];
    m.constants(&mut consts);
    let pre: Vec<f32> = (0..N_PRE).map(|i| if i % 10 == 0 { 1.0 } else { 0.0 }).collect();
    let mut fact = vec![0.5f32; M::PATTERN.ports[0].factorised * N_PRE];
    bencher.bench_local(|| {
        M::factorised_traces(0, &consts, &pre, &mut fact);
        black_box(&fact);
    });
}

/// The reverse step of one neuron.
#[divan::bench(types = [BellecLif, BellecAlif])]
fn vjp<M: NeuronModel + Default>(bencher: Bencher) {
    let m = M::default();
    let mut consts = vec![0.0f32; M::NUM_CONSTS];
    m.constants(&mut consts);
    let dynv = vec![0.3f32; M::NUM_DYNAMIC];
    let dh = vec![0.2f32; M::NUM_STATES];
    let mut dh_prev = vec![0.0f32; M::NUM_STATES];
    let mut d_in = vec![0.0f32; M::NUM_INPUTS];
    let mut d_learn = vec![0.0f32; M::NUM_LEARNABLE];
    bencher.bench_local(|| {
        M::vjp(&consts, &dynv, &dh, 0.1, &mut dh_prev, &mut d_in, &mut d_learn);
        black_box(&dh_prev);
    });
}

/// One full streamed e-prop step of a 1024-neuron layer, batch 16, 700 inputs.
#[divan::bench(types = [BellecLif, BellecAlif], sample_count = 200)]
fn eprop_step<M: NeuronModel + Default>(bencher: Bencher) {
    let net = NetworkBuilder::<f32>::new(N_PRE)
        .layer(LayerSpec::new(M::default(), N))
        .readout(ReadoutSpec::new(20, 0.0))
        .seed(1)
        .build()
        .unwrap();
    let config = TrainConfig::new(
        Algorithm::Eprop(Feedback::Symmetric),
        Loss::CrossEntropy(Window::All),
        Optimizer::adam(1e-3),
    );
    let mut trainer = Trainer::new(net, config).unwrap();
    let x = Array2::from_shape_fn((16, N_PRE), |(b, i)| if (b * 7 + i) % 10 == 0 { 1.0f32 } else { 0.0 });
    let classes = Array1::from_shape_fn(16, |b| b % 20);
    trainer.begin_sequence(16, usize::MAX / 2).unwrap();
    bencher.bench_local(|| {
        trainer
            .step(x.view(), Some(StepTargets::Classes(classes.view())))
            .unwrap();
    });
}

/// Closing one chunk of chunked e-prop at the paper's size (1024 neurons, 700 presynaptic
/// neurons at 10 % binary activity, 32 steps, one per-synapse and one factorised row, batch
/// 16), on one thread: the runtime's pass, which adds one fused multiply-add per nonzero
/// entry, records the activity and also advances the traces; the `gemm` crate runs only the
/// two dense products per sample the same close needs (`ε_b += D_b·U_b`, `G += C_b·U_b`,
/// `[1024, 33]·[33, 700]` each).
#[divan::bench(args = ["runtime", "gemm"], sample_count = 10)]
fn chunk_close(bencher: Bencher, with: &str) {
    const STEPS: usize = 32;
    const BATCH: usize = 16;
    let active = |b: usize, t: usize, i: usize| (b * 7 + t * 13 + i * 3).is_multiple_of(10);
    if with == "runtime" {
        let mut close = plasticity_runtime::__private::chunk_close_bench((N, N_PRE, STEPS, BATCH), active);
        bencher.bench_local(&mut close);
        return;
    }
    let depth = STEPS + 1;
    let lhs: Vec<f32> = (0..N * depth).map(|x| ((x * 7) % 13) as f32 * 0.01).collect();
    let rhs: Vec<Vec<f32>> = (0..BATCH)
        .map(|b| {
            (0..depth * N_PRE)
                .map(|x| {
                    let (t, i) = (x / N_PRE, x % N_PRE);
                    match t {
                        0 => 0.5,
                        _ if active(b, t - 1, i) => 1.0,
                        _ => 0.0,
                    }
                })
                .collect()
        })
        .collect();
    let mut traces = vec![0.0f32; BATCH * N * N_PRE];
    let mut grad = vec![0.0f32; N * N_PRE];
    bencher.bench_local(|| {
        for (b, rhs) in rhs.iter().enumerate() {
            for dst in [&mut traces[b * N * N_PRE..(b + 1) * N * N_PRE], &mut grad[..]] {
                // SAFETY: every operand is a dense row-major matrix of the stated shape.
                unsafe {
                    gemm::gemm(
                        N,
                        N_PRE,
                        depth,
                        dst.as_mut_ptr(),
                        1,
                        N_PRE as isize,
                        true,
                        lhs.as_ptr(),
                        1,
                        depth as isize,
                        rhs.as_ptr(),
                        1,
                        N_PRE as isize,
                        1.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
        }
        black_box(&grad);
    });
}
