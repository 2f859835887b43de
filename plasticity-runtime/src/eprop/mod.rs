//! Online e-prop (Bellec et al. 2020) driven by the generated kernels.
//!
//! Per step: the forward pass computes states, outputs and the dynamic partials of every
//! population; the readout error gives each population its learning signals `L = err · B`
//! (`B = W^out` of the population's readout weights, or a fixed random matrix); then, per
//! population, one call into the model's monomorphised trace pass advances, in parallel over
//! postsynaptic neurons, every per-synapse eligibility vector (eq. 1) of every incoming
//! projection, forms the eligibility trace (eq. 2), κ-filters it when the readout leaks, and
//! accumulates `L · ē` into the weight gradient. Sparse projections keep traces and gradients
//! for existing synapses only. Factorised traces are advanced once per presynaptic neuron.
//! Dense projections onto ports whose traces are all factorised, without κ-filtering, skip the
//! per-neuron kernel: their gradient is a sum of outer products, collected over a few steps
//! in a gradient window and added as one product. Nothing depends on the sequence length:
//! all buffers are allocated when the engine is built.

use std::sync::Arc;

mod chunk;
pub use chunk::Chunking;
#[doc(hidden)]
pub use chunk::chunk_close_bench;
use chunk::{Chunk, SourceChunk};

use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rayon::prelude::*;

use crate::init::Init;
use crate::linalg::{MR, NR, WindowProduct, gemm_nn, gemm_tn_acc, transpose_into, window_acc};
use crate::model::{EntryKind, Matrix, NeuronModel, Pattern, RowLayout};
use crate::network::{
    Buffers, Csr, MAX_DYNAMIC, MAX_STATES, Network, PopBuffers, Population, Projection, Source, gather_partials,
};
use crate::params::Gradients;
use crate::real::{Float, Real};

/// Postsynaptic neurons per parallel task in the trace update.
const NEURON_BLOCK: usize = 8;

/// Rows per term a gradient window aims for (steps · B): enough for the windowed product to
/// run from registers, few enough that the window stays in the L2 cache.
const WINDOW_ROWS: usize = 64;

/// Synapses of a sparse row gathered per call of the trace kernel: their presynaptic values
/// and factorised traces are copied to the stack, and their per-synapse traces are stored
/// in chunks of this many, one state row after the other.
const SPARSE_CHUNK: usize = 64;

/// Where the learning signals come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Feedback {
    /// `B = (W^out_p)^T` for every population `p` the readout reads (symmetric e-prop): exact
    /// without recurrence. With an output population instead of the leaky readout, the output
    /// population's signal is the error itself, and a population projecting onto it (same
    /// step) gets the error through those weights, each output neuron's error scaled by its
    /// `∂z/∂I` at the step. Other populations use a fixed random matrix (seed 0).
    Symmetric,
    /// A fixed random matrix for every population (random e-prop / broadcast alignment):
    /// `B` of shape `[n_out, n]` (`n` the population's size), entries `N(0, 1/n)`, drawn by
    /// `Init::Gaussian { gain: 1.0 }.draw(n_out, n, ..)` from a `StdRng` seeded with `seed`
    /// plus the population's index; the learning signal is `L = err · B`.
    Random {
        /// Seed of the feedback matrices.
        seed: u64,
    },
    /// Given fixed matrices, by population name: `B_p` of shape `[n_out, n_p]`, the learning
    /// signal `L = err · B_p` (NEST's `eprop_learning_signal_connection` weights, which are
    /// stored `[n, n_out]`: pass their transpose). Every population except an output
    /// population needs one; [`crate::Trainer::new`] checks names, shapes and finiteness.
    Matrices(Vec<(String, Array2<f64>)>),
}

/// What feeds one set of synapses of a population.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// Projection `i`.
    Projection(usize),
    /// The bias of a port (presynaptic activity 1).
    Bias,
}

/// The presynaptic activity of every source at one step.
struct Presynaptic<'a, F> {
    /// The network's input, `[B, n_in]`.
    input: ArrayView2<'a, F>,
    pops: &'a [PopBuffers<F>],
    projections: &'a [Projection],
    /// The constant input of a bias.
    one: [F; 1],
}

impl<F: Float> Presynaptic<'_, F> {
    /// Sample `b`'s activity from `origin`.
    fn row(&self, origin: Origin, b: usize) -> &[F] {
        match origin {
            Origin::Projection(i) => Network::<F>::presynaptic(&self.projections[i], self.input, self.pops)
                .index_axis_move(Axis(0), b)
                .to_slice()
                .expect("row-major activity"),
            Origin::Bias => &self.one,
        }
    }
}

/// One set of synapses of one port of a population, and its region inside each neuron's
/// part of the arena.
#[derive(Clone, Debug)]
struct SourceTraces<F> {
    port: usize,
    source: Origin,
    n_pre: usize,
    /// The synapses of a sparse projection (the projection's own, shared), `None` when dense.
    csr: Option<Arc<Csr>>,
    /// Factorised traces, `[B, F, n_pre]`.
    fact: Vec<F>,
    per_synapse: usize,
    factorised: usize,
    /// The synapses keep neither per-synapse nor κ-filtered traces and are dense: the
    /// gradient is accumulated through the port's [`PortWindow`] into `grad_t`, not by the
    /// per-neuron trace kernel, and the source has no region in the arena.
    windowed: bool,
    /// Transposed weight gradient `[n_pre, n]` of a windowed source (empty otherwise).
    grad_t: Vec<F>,
    /// When the per-synapse update runs in chunks of K steps ([`chunk`]) rather than step by
    /// step: the source's traces and gradient, kept there instead of in the arena, and its
    /// side of the open chunk.
    chunk: Option<SourceChunk<F>>,
}

impl<F> SourceTraces<F> {
    /// Synapses onto neuron `j`.
    fn synapses(&self, j: usize) -> usize {
        match &self.csr {
            None => self.n_pre,
            Some(c) => c.row_ptr[j + 1] - c.row_ptr[j],
        }
    }
    /// Neuron `j`'s part of this source's gradient in `out` (the source feeds population
    /// `p`): its synapses' entries of the projection's gradient, or its entry of the bias;
    /// `None` for a bias without a gradient.
    fn gradient_row<'o>(&self, out: &'o mut Gradients<F>, p: usize, j: usize) -> Option<&'o mut [F]> {
        match self.source {
            Origin::Projection(i) => {
                let at = self.csr.as_ref().map_or(j * self.n_pre, |c| c.row_ptr[j]);
                Some(&mut out.projections[i][at..at + self.synapses(j)])
            }
            Origin::Bias => (out.bias[p].as_mut()).map(|b| std::slice::from_mut(&mut b[[self.port, j]])),
        }
    }
    /// Whether the source's traces and gradient live in the arena: neither windowed nor
    /// chunked.
    fn in_arena(&self) -> bool {
        !self.windowed && self.chunk.is_none()
    }
    /// Length of neuron `j`'s region: `B·S·m + (B·m if κ>0) + m` for its `m` synapses, or 0
    /// when the source is not in the arena.
    fn region(&self, j: usize, batch: usize, filtered: bool) -> usize {
        if !self.in_arena() {
            0
        } else {
            self.synapses(j) * (batch * self.per_synapse + if filtered { batch } else { 0 } + 1)
        }
    }
}
/// One term of the eligibility trace of a port whose traces are all factorised:
/// `e_ji = Σ_r Jz_r,j · ε_r,i + Bz_j · x_i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Term {
    /// Factorised trace row `r`, read before the step advances it, times `Jz` of its state.
    Trace(usize),
    /// The presynaptic activity, times the port's `Bz`.
    Input,
}

/// Pending gradient of a port whose traces are all factorised and unfiltered. Each term of
/// `e_ji` is a product of a postsynaptic coefficient and a presynaptic vector, so a step adds
/// `Σ_(b, term) (L_bj · coefficient_bj) · vector_bi` to the gradient: a sum of outer products.
/// The window keeps both factors of a few steps and adds them in one product
/// ([`window_acc`]) with `steps · B` rows per term: register-blocked for the dense trace
/// terms, and visiting only the nonzero presynaptic values for the input term.
#[derive(Clone, Debug)]
struct PortWindow<F> {
    terms: Vec<(Term, EntryKind)>,
    /// `(term index, factorised row)` of the trace terms, in order.
    dense: Vec<(usize, usize)>,
    /// Index of the input term, if `Bz` is structurally nonzero.
    input: Option<usize>,
    /// Rows per term: window steps · B.
    rows: usize,
    /// Learning signal times coefficient, row `term·rows + step·B + b`, packed in panels of
    /// [`NR`] postsynaptic neurons.
    coef: Vec<F>,
    sources: Vec<SourceWindow<F>>,
}

/// The presynaptic factors of one source in a [`PortWindow`].
#[derive(Clone, Debug)]
struct SourceWindow<F> {
    /// Index into the layer's sources.
    source: usize,
    /// Factorised traces of the trace terms, row `dense index·rows + step·B + b`, packed in
    /// panels of [`MR`] presynaptic neurons.
    fact: Vec<F>,
    /// Per presynaptic neuron `i`, its nonzero activity as `(step·B + b, value)`: up to
    /// `rows` entries from `i·rows`, `count[i]` of them in use.
    active: Vec<(u32, F)>,
    count: Vec<u32>,
}

/// How one population's learning signal `L` (`[B, n]`) is formed from the output error
/// `err` (`[B, n_out]`).
#[derive(Clone, Debug)]
enum SignalSource<F> {
    /// `L = err · W^out_r`: the population is the `r`-th source of the leaky readout
    /// (symmetric feedback).
    Readout(usize),
    /// `L = err`: the population is the output population, `∂E^t/∂z^t` itself.
    Output,
    /// `L = Σ_i (err ⊙ Bz_port) · W_i` over the same-step projections `i` into the output
    /// population (symmetric feedback through its input ports, `Bz` of the port at this
    /// step); `coef` is `[B, n_out]` scratch.
    ThroughOutput { projections: Vec<usize>, coef: Array2<F> },
    /// `L = err · B` with a fixed `B` (`[n_out, n]`), random or given.
    Random(Array2<F>),
    /// `L = 1`: the gradient accumulates `Σ_t e^t` (the per-sequence rate regulariser's pass).
    Unit,
}

/// Trace storage of one population. Per postsynaptic neuron, one contiguous region holds,
/// for every source that is not windowed, its per-synapse traces, κ-filtered traces and weight
/// gradients, then the learnable-parameter traces and gradients: parallel tasks own whole
/// neurons. Windowed sources keep their gradient in `grad_t` instead.
#[derive(Clone, Debug)]
struct PopTraces<F> {
    sources: Vec<SourceTraces<F>>,
    arena: Vec<F>,
    /// `[n + 1]`: neuron `j`'s region is `starts[j]..starts[j + 1]`.
    starts: Vec<usize>,
    /// Learning signal, `[B, n]`.
    signal: Array2<F>,
    /// Where the learning signal comes from.
    feedback: SignalSource<F>,
    /// Running spike count per neuron (firing-rate regularisation).
    spike_count: Vec<f64>,
    /// Number of learnable parameters: the last `q` entries of a region are their gradients.
    q: usize,
    /// Windows of the ports whose traces are all factorised and unfiltered.
    windows: Vec<PortWindow<F>>,
    /// Steps a window holds, and steps it holds now.
    window_steps: usize,
    window_len: usize,
    /// The open chunk, when some sources are chunked.
    chunk: Option<Chunk<F>>,
    /// Whether the step-by-step trace pass has work: sources that are neither windowed nor
    /// chunked, or learnable parameters.
    stepwise: bool,
}

impl<F: Float> PopTraces<F> {
    fn neurons(&self) -> usize {
        self.signal.ncols()
    }

    /// Closes the open chunk: its gradient is added and its traces reach the current step.
    fn close_chunk(&mut self) {
        if let Some(chunk) = &mut self.chunk {
            chunk.flush(&mut self.sources);
        }
    }

    /// Adds the pending window into the gradients and empties it.
    fn flush(&mut self) {
        if self.window_len == 0 {
            return;
        }
        let n = self.neurons();
        let used = self.window_len * self.signal.nrows();
        for w in &mut self.windows {
            for sw in &mut w.sources {
                let product = WindowProduct {
                    rows: w.rows,
                    used,
                    coef: &w.coef,
                    dense: &w.dense,
                    fact: &sw.fact,
                    input: w.input.map(|term| (term, &sw.active[..], &sw.count[..])),
                };
                window_acc(&mut self.sources[sw.source].grad_t, n, &product);
                sw.count.fill(0);
            }
        }
        self.window_len = 0;
    }

    /// Empties the window without adding it.
    fn discard_window(&mut self) {
        for w in &mut self.windows {
            for sw in &mut w.sources {
                sw.count.fill(0);
            }
        }
        self.window_len = 0;
    }

    /// Appends one step to the windows: the learning signal times each term's coefficient,
    /// each source's factorised traces (before this step advances them) and its nonzero
    /// presynaptic values. Flushes when the window is full.
    fn push_window(&mut self, consts: &[F], dynv: &[F], pre: &Presynaptic<'_, F>) {
        let (batch, n) = self.signal.dim();
        let dstride = dynv.len() / batch;
        let slot = self.window_len;
        let signal = self.signal.as_slice().expect("row-major signal");
        for w in &mut self.windows {
            let (rows, terms) = (w.rows, &w.terms[..]);
            // Coefficients: one panel of NR neurons per task.
            w.coef
                .par_chunks_mut(terms.len() * rows * NR)
                .with_min_len(8)
                .enumerate()
                .for_each(|(t, panel)| {
                    let j0 = t * NR;
                    let width = NR.min(n - j0);
                    for b in 0..batch {
                        let l = &signal[b * n + j0..][..width];
                        for (r, &(_, kind)) in terms.iter().enumerate() {
                            let out = &mut panel[(r * rows + slot * batch + b) * NR..][..width];
                            match kind {
                                EntryKind::Dynamic(i) => {
                                    let d = &dynv[b * dstride + i * n + j0..][..width];
                                    for ((o, &l), &d) in out.iter_mut().zip(l).zip(d) {
                                        *o = l * d;
                                    }
                                }
                                EntryKind::Constant(i) => {
                                    for (o, &l) in out.iter_mut().zip(l) {
                                        *o = l * consts[i];
                                    }
                                }
                            }
                        }
                    }
                });
            let (dense, has_input) = (&w.dense[..], w.input.is_some());
            for sw in &mut w.sources {
                let s = &self.sources[sw.source];
                let (n_pre, fact_len) = (s.n_pre, s.factorised * s.n_pre);
                // Trace rows: one panel of MR presynaptic neurons per task.
                if !dense.is_empty() {
                    sw.fact
                        .par_chunks_mut(dense.len() * rows * MR)
                        .with_min_len(32)
                        .enumerate()
                        .for_each(|(g, panel)| {
                            let i0 = g * MR;
                            let width = MR.min(n_pre - i0);
                            for b in 0..batch {
                                for (d, &(_, f)) in dense.iter().enumerate() {
                                    let src = &s.fact[b * fact_len + f * n_pre + i0..][..width];
                                    let dst = &mut panel[(d * rows + slot * batch + b) * MR..][..width];
                                    match (<&mut [F; MR]>::try_from(&mut *dst), <&[F; MR]>::try_from(src)) {
                                        (Ok(dst), Ok(src)) => *dst = *src,
                                        _ => dst.copy_from_slice(src),
                                    }
                                }
                            }
                        });
                }
                // Nonzero presynaptic values, appended to each presynaptic neuron's list; tasks
                // own blocks of presynaptic neurons.
                if has_input {
                    const CHUNK: usize = 64;
                    sw.active
                        .par_chunks_mut(CHUNK * rows)
                        .zip(sw.count.par_chunks_mut(CHUNK))
                        .enumerate()
                        .for_each(|(c, (active, count))| {
                            let i0 = c * CHUNK;
                            for b in 0..batch {
                                let k = (slot * batch + b) as u32;
                                let x_b = &pre.row(s.source, b)[i0..i0 + count.len()];
                                for (ii, &v) in x_b.iter().enumerate() {
                                    if v != <F as Real>::zero() {
                                        let n_i = &mut count[ii];
                                        active[ii * rows + *n_i as usize] = (k, v);
                                        *n_i += 1;
                                    }
                                }
                            }
                        });
                }
            }
        }
        self.window_len += 1;
        if self.window_len == self.window_steps {
            self.flush();
        }
    }

    /// Sets every neuron's learnable-parameter traces to `∂s0/∂θ` (its initial state's
    /// derivatives, the same for every sample), for a model whose initial values use
    /// learnable parameters.
    fn initial_param_traces(&mut self, pop: &Population<F>, learn: &Array2<F>, batch: usize, filtered: bool) {
        let (k, q) = (pop.num_states(), pop.num_learnable());
        let (mut values, mut partials) = (
            [<F as Real>::zero(); MAX_STATES],
            [<F as Real>::zero(); MAX_STATES * MAX_STATES],
        );
        for j in 0..self.neurons() {
            pop.kernels
                .initial_partials(pop.neuron_learnable(learn, j, &mut values), &mut partials[..q * k]);
            let at = self.starts[j] + self.sources.iter().map(|s| s.region(j, batch, filtered)).sum::<usize>();
            for eps in self.arena[at..at + batch * q * k].chunks_exact_mut(q * k) {
                eps.copy_from_slice(&partials[..q * k]);
            }
        }
    }

    /// Zeroes, in every neuron's region, the traces (`traces`) or the gradients (`!traces`).
    fn clear(&mut self, traces: bool, batch: usize, filtered: bool) {
        let q = self.q;
        for s in &mut self.sources {
            if !traces {
                s.grad_t.fill(<F as Real>::zero());
            }
            if let Some(chunk) = &mut s.chunk {
                chunk.clear(traces);
            }
        }
        for j in 0..self.neurons() {
            let region = &mut self.arena[self.starts[j]..self.starts[j + 1]];
            let mut off = 0;
            for s in self.sources.iter().filter(|s| s.in_arena()) {
                let len = s.region(j, batch, filtered);
                let grad_at = off + len - s.synapses(j);
                if traces {
                    region[off..grad_at].fill(<F as Real>::zero());
                } else {
                    region[grad_at..off + len].fill(<F as Real>::zero());
                }
                off += len;
            }
            let len = region.len();
            if traces {
                region[off..len - q].fill(<F as Real>::zero());
            } else {
                region[len - q..].fill(<F as Real>::zero());
            }
        }
    }
}

/// The terms of a port's eligibility trace when every row it reaches is factorised: one per
/// structurally nonzero `Jz` entry of a factorised row, then `Bz` of the port.
fn window_terms(pattern: &Pattern, port: usize, rows: &[RowLayout]) -> Vec<(Term, EntryKind)> {
    rows.iter()
        .enumerate()
        .filter_map(|(r, layout)| match *layout {
            RowLayout::Factorised(f) => pattern.entry(Matrix::Jz, 0, r).map(|e| (Term::Trace(f), e.kind)),
            _ => None,
        })
        .chain(pattern.entry(Matrix::Bz, 0, port).map(|e| (Term::Input, e.kind)))
        .collect()
}

/// Firing-rate regularisation with strength `c` and target rate `f*` per step, in one of two
/// forms ([`RateForm`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateRegularization {
    /// Strength `c`.
    pub strength: f64,
    /// Target rate `f*` per step (e.g. 0.01 for 10 Hz at 1 ms steps).
    pub target: f64,
    /// How the term enters the gradient.
    pub form: RateForm,
}

impl RateRegularization {
    /// The running form ([`RateForm::Running`]), the default.
    pub fn running(strength: f64, target: f64) -> Self {
        RateRegularization {
            strength,
            target,
            form: RateForm::Running,
        }
    }
    /// NEST's and Bellec's per-sequence form ([`RateForm::PerSequence`]).
    pub fn per_sequence(strength: f64, target: f64) -> Self {
        RateRegularization {
            strength,
            target,
            form: RateForm::PerSequence,
        }
    }
}

/// How firing-rate regularisation enters the gradient.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RateForm {
    /// The gradient of `c/2 Σ_j (f_j − f*)²`, `f_j` neuron `j`'s mean output over batch and
    /// steps. BPTT uses it exactly; e-prop, online, adds `c (f̂_j^t − f*) / (B T)` to the
    /// learning signal with `f̂_j^t` the running mean so far (so it meets the κ-filtered
    /// traces like the error does).
    #[default]
    Running,
    /// NEST's e-prop models and Bellec et al.'s code: per sequence and sample `b`,
    /// `r_jb = c (n_jb / T − f*) / T` from neuron `j`'s spike count `n_jb`, added to the weight
    /// and bias gradients as `Σ_b r_jb Σ_t e_jib^t` (not through the learning signal, not
    /// κ-filtered). e-prop only, one update per sequence; it runs a second, unfiltered trace
    /// pass per sample (twice the trace work and state, times the batch size).
    PerSequence,
}

/// One population's share of an e-prop step, handed to the model's monomorphised
/// [`trace_pass`] through [`crate::network::Population`]'s kernels.
pub(crate) struct TracePass<'a, 'p, F> {
    consts: &'a [F],
    /// Dynamic partials of the step, `[B, max(ND·n, 1)]`.
    dynv: &'a [F],
    signal: &'a Array2<F>,
    sources: &'a [SourceTraces<F>],
    pre: &'a Presynaptic<'p, F>,
    arena: &'a mut [F],
    starts: &'a [usize],
    batch: usize,
    filtered: bool,
    kappa: F,
}

/// Calls `f(j0, j1, block)` on blocks of at most `leaf` neurons (starting at multiples of
/// `leaf`) in parallel, where `block` is the part of the arena holding the regions of neurons
/// `j0..j1`.
fn for_neuron_blocks<F: Send>(
    arena: &mut [F],
    starts: &[usize],
    leaf: usize,
    (j0, j1): (usize, usize),
    f: &(impl Fn(usize, usize, &mut [F]) + Sync),
) {
    if j1 - j0 <= leaf {
        f(j0, j1, arena);
        return;
    }
    let mid = j0 + ((j1 - j0) / 2).div_ceil(leaf) * leaf;
    let (left, right) = arena.split_at_mut(starts[mid] - starts[j0]);
    rayon::join(
        || for_neuron_blocks(left, starts, leaf, (j0, mid), f),
        || for_neuron_blocks(right, starts, leaf, (mid, j1), f),
    );
}

/// The per-neuron part of an e-prop step for a population of model `M`: in parallel over
/// blocks of postsynaptic neurons, every non-windowed source's traces and gradients, then
/// the learnable parameters'. Within a block, samples are the outer loop and neurons the
/// inner one, so one sample's presynaptic activity and factorised traces stay in cache
/// while the block's gradient rows are updated.
pub(crate) fn trace_pass<M: NeuronModel, F: Float>(pass: TracePass<'_, '_, F>) {
    let TracePass {
        consts,
        dynv,
        signal,
        sources,
        pre,
        arena,
        starts,
        batch,
        filtered,
        kappa,
    } = pass;
    let (k, q, nd) = (M::NUM_STATES, M::NUM_LEARNABLE, M::NUM_DYNAMIC);
    let n = signal.ncols();
    let dstride = (n * nd).max(1);
    if arena.is_empty() {
        return;
    }
    for_neuron_blocks(arena, starts, NEURON_BLOCK, (0, n), &|j0, j1, block| {
        let mut dv_buf = [<F as Real>::zero(); MAX_DYNAMIC];
        let mut pre_buf = [<F as Real>::zero(); SPARSE_CHUNK];
        let mut fact_buf = [<F as Real>::zero(); MAX_STATES * SPARSE_CHUNK];
        for b in 0..batch {
            for j in j0..j1 {
                let region = &mut block[starts[j] - starts[j0]..starts[j + 1] - starts[j0]];
                gather_partials(&dynv[b * dstride..b * dstride + n * nd], j, n, &mut dv_buf[..nd]);
                let dv = &dv_buf[..nd];
                let l_bj = signal[[b, j]];
                let mut rest = region;
                for s in sources.iter().filter(|s| s.in_arena()) {
                    let m = s.synapses(j);
                    let (src, tail) = rest.split_at_mut(s.region(j, batch, filtered));
                    rest = tail;
                    let syn_len = s.per_synapse * m;
                    let (syn_all, src) = src.split_at_mut(batch * syn_len);
                    let ebar_len = if filtered { m } else { 0 };
                    let (ebar_all, grad) = src.split_at_mut(batch * ebar_len);
                    let syn = &mut syn_all[b * syn_len..(b + 1) * syn_len];
                    let ebar = &mut ebar_all[b * ebar_len..(b + 1) * ebar_len];
                    let fact_len = s.factorised * s.n_pre;
                    let fact = &s.fact[b * fact_len..(b + 1) * fact_len];
                    let x = pre.row(s.source, b);
                    let Some(csr) = &s.csr else {
                        M::synapse_traces(s.port, consts, dv, x, fact, syn, ebar, grad, l_bj, kappa);
                        continue;
                    };
                    // A sparse row: chunks of synapses, each with its presynaptic values and
                    // factorised traces gathered, and its per-synapse traces stored
                    // `[S, chunk]`.
                    let cols = &csr.col[csr.row_ptr[j]..csr.row_ptr[j + 1]];
                    for (c, idx) in cols.chunks(SPARSE_CHUNK).enumerate() {
                        let (c0, len) = (c * SPARSE_CHUNK, idx.len());
                        for (u, &i) in idx.iter().enumerate() {
                            pre_buf[u] = x[i as usize];
                            for f in 0..s.factorised {
                                fact_buf[f * len + u] = fact[f * s.n_pre + i as usize];
                            }
                        }
                        let ebar = if filtered { &mut ebar[c0..c0 + len] } else { &mut [] };
                        M::synapse_traces(
                            s.port,
                            consts,
                            dv,
                            &pre_buf[..len],
                            &fact_buf[..s.factorised * len],
                            &mut syn[s.per_synapse * c0..s.per_synapse * (c0 + len)],
                            ebar,
                            &mut grad[c0..c0 + len],
                            l_bj,
                            kappa,
                        );
                    }
                }
                if q > 0 {
                    let (eps_all, rest) = rest.split_at_mut(batch * q * k);
                    let ebar_len = if filtered { q } else { 0 };
                    let (ebar_all, grad) = rest.split_at_mut(batch * ebar_len);
                    M::param_traces(
                        consts,
                        dv,
                        &mut eps_all[b * q * k..(b + 1) * q * k],
                        &mut ebar_all[b * ebar_len..(b + 1) * ebar_len],
                        grad,
                        l_bj,
                        kappa,
                    );
                }
            }
        }
    });
}

/// The e-prop engine for one batch size.
#[derive(Clone, Debug)]
pub(crate) struct Eprop<F> {
    pub batch: usize,
    filtered: bool,
    pops: Vec<PopTraces<F>>,
    pub bufs: Buffers<F>,
    /// Readout state `[B, n_out]`.
    pub y: Array2<F>,
    /// κ-filtered output of each readout source, `[B, n]`.
    zbar: Vec<Array2<F>>,
    /// κ-filtered constant 1 (readout bias).
    bbar: F,
    /// The error times the readout's gain (used when the gain is not 1).
    err_gain: Array2<F>,
    readout_w: Vec<Array2<F>>,
    readout_b: Vec<F>,
    steps: usize,
}

impl<F: Float> Eprop<F> {
    pub fn new(net: &Network<F>, batch: usize, feedback: &Feedback, chunking: (Chunking, usize)) -> Self {
        Self::build(net, batch, feedback, false, chunking)
    }

    /// An engine whose learning signal is 1 and whose traces are not filtered: its gradients
    /// are `Σ_t e^t` over the batch (the per-sequence rate regulariser's sums).
    pub fn unit(net: &Network<F>, batch: usize, chunking: (Chunking, usize)) -> Self {
        Self::build(net, batch, &Feedback::Symmetric, true, chunking)
    }

    /// `chunking` is the configured choice and the last-level cache size it is made for.
    fn build(
        net: &Network<F>,
        batch: usize,
        feedback: &Feedback,
        unit: bool,
        (chunking, cache): (Chunking, usize),
    ) -> Self {
        let filtered = !unit && net.readout.kappa != <F as Real>::zero();
        let n_out = net.n_out();
        let pops = net
            .populations
            .iter()
            .enumerate()
            .map(|(p, pop)| {
                let pattern = pop.pattern();
                let (n, k, q) = (pop.size, pop.num_states(), pop.num_learnable());
                let mut sources: Vec<SourceTraces<F>> = Vec::new();
                let mut windows = Vec::new();
                let window_steps = (WINDOW_ROWS / batch).max(1);
                let rows = window_steps * batch;
                for (port, pl) in pattern.ports.iter().enumerate() {
                    let first = sources.len();
                    let mut add = |source: Origin, n_pre: usize, csr: Option<&Arc<Csr>>| {
                        let windowed = pl.per_synapse == 0 && !filtered && csr.is_none();
                        sources.push(SourceTraces {
                            port,
                            source,
                            n_pre,
                            csr: csr.cloned(),
                            fact: vec![<F as Real>::zero(); batch * pl.factorised * n_pre],
                            per_synapse: pl.per_synapse,
                            factorised: pl.factorised,
                            windowed,
                            grad_t: if windowed {
                                vec![<F as Real>::zero(); n_pre * n]
                            } else {
                                Vec::new()
                            },
                            chunk: None,
                        });
                    };
                    for (i, proj) in net.incoming(p).filter(|(_, pr)| pr.port == port) {
                        add(Origin::Projection(i), proj.n_pre, proj.csr());
                    }
                    if net.params.bias[p].is_some() {
                        add(Origin::Bias, 1, None);
                    }
                    let terms = window_terms(pattern, port, pl.rows);
                    let windowed: Vec<usize> = (first..sources.len()).filter(|&si| sources[si].windowed).collect();
                    if !windowed.is_empty() && !terms.is_empty() {
                        let dense: Vec<(usize, usize)> = (terms.iter().enumerate())
                            .filter_map(|(r, (term, _))| match *term {
                                Term::Trace(f) => Some((r, f)),
                                Term::Input => None,
                            })
                            .collect();
                        let input = terms.iter().position(|(term, _)| *term == Term::Input);
                        let zeros = |len: usize| vec![<F as Real>::zero(); len];
                        let window_sources = windowed
                            .into_iter()
                            .map(|si| {
                                let m = sources[si].n_pre;
                                SourceWindow {
                                    source: si,
                                    fact: zeros(m.div_ceil(MR) * MR * dense.len() * rows),
                                    active: vec![(0, <F as Real>::zero()); if input.is_some() { m * rows } else { 0 }],
                                    count: vec![0; m],
                                }
                            })
                            .collect();
                        windows.push(PortWindow {
                            coef: zeros(n.div_ceil(NR) * NR * terms.len() * rows),
                            terms,
                            dense,
                            input,
                            rows,
                            sources: window_sources,
                        });
                    }
                }
                // Every dense source with per-synapse state (or a per-synapse gradient loop)
                // runs in chunks of K steps when K > 1. Sparse projections stay step by step:
                // their chunk products would gather presynaptic rows synapse by synapse, which
                // measured slower than the step-by-step kernel (performance.md).
                let chunkable = |s: &SourceTraces<F>| !s.windowed && s.csr.is_none();
                let pre = (sources.iter().filter(|s| chunkable(s)))
                    .map(|s| s.n_pre)
                    .sum::<usize>();
                let per_step = (pop.kernels.num_dynamic() + 1) * n + pre;
                let steps = chunking.resolve(batch, per_step, std::mem::size_of::<F>(), cache);
                let chunk = (steps > 1 && pre > 0).then(|| {
                    for s in sources.iter_mut().filter(|s| chunkable(s)) {
                        let rows = (s.per_synapse, s.factorised);
                        s.chunk = Some(SourceChunk::new((n, s.n_pre), rows, (batch, steps), filtered));
                    }
                    let sizes = (steps, batch, n, pop.kernels.num_dynamic());
                    Chunk::new(pattern, &pop.consts, &sources, sizes, net.readout.kappa, filtered)
                });
                let params = batch * q * k + if filtered { batch * q } else { 0 } + q;
                let mut starts = vec![0];
                for j in 0..n {
                    let len: usize = sources.iter().map(|s| s.region(j, batch, filtered)).sum::<usize>() + params;
                    starts.push(starts[j] + len);
                }
                let stepwise = q > 0 || sources.iter().any(|s| s.in_arena());
                let readout = net.readout.sources.iter().position(|&s| s == p);
                let into_output: Vec<usize> = match net.readout.population {
                    Some(o) => (net.projections.iter().enumerate())
                        .filter(|(_, pr)| pr.source == Source::Population(p) && pr.target == o && !pr.delayed)
                        .map(|(i, _)| i)
                        .collect(),
                    None => Vec::new(),
                };
                let random = |seed: u64| {
                    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(p as u64));
                    SignalSource::Random(Init::Gaussian { gain: 1.0 }.draw::<F>(n_out, n, &mut rng))
                };
                let fb = match (feedback, readout) {
                    _ if unit => SignalSource::Unit,
                    _ if net.readout.population == Some(p) => SignalSource::Output,
                    (Feedback::Random { seed }, _) => random(*seed),
                    (Feedback::Matrices(given), _) => {
                        let b = given
                            .iter()
                            .find(|(name, _)| *name == pop.name)
                            .map(|(_, b)| b)
                            .expect("feedback matrices checked by the trainer");
                        SignalSource::Random(b.mapv(F::from_f64))
                    }
                    (Feedback::Symmetric, Some(r)) => SignalSource::Readout(r),
                    (Feedback::Symmetric, None) if !into_output.is_empty() => SignalSource::ThroughOutput {
                        projections: into_output,
                        coef: Array2::zeros((batch, n_out)),
                    },
                    (Feedback::Symmetric, None) => random(0),
                };
                PopTraces {
                    sources,
                    // Empty when every source is windowed and nothing is learnable.
                    arena: vec![<F as Real>::zero(); starts[n]],
                    starts,
                    signal: Array2::zeros((batch, n)),
                    feedback: fb,
                    spike_count: vec![0.0; n],
                    q,
                    windows,
                    window_steps,
                    window_len: 0,
                    chunk,
                    stepwise,
                }
            })
            .collect();
        Eprop {
            batch,
            filtered,
            pops,
            bufs: net.buffers(batch),
            y: Array2::zeros((batch, n_out)),
            zbar: (net.readout.sources.iter())
                .map(|&s| Array2::zeros((batch, net.populations[s].size)))
                .collect(),
            bbar: <F as Real>::zero(),
            err_gain: Array2::zeros((batch, n_out)),
            readout_w: net
                .params
                .readout_w
                .iter()
                .map(|w| Array2::zeros(w.raw_dim()))
                .collect(),
            readout_b: vec![<F as Real>::zero(); net.params.readout_b.as_ref().map_or(0, |b| b.len())],
            steps: 0,
        }
    }

    /// Starts a new sequence: initial states, zero traces; gradients are kept.
    pub fn begin_sequence(&mut self, net: &Network<F>) {
        net.reset(&mut self.bufs);
        net.refresh_weights(&mut self.bufs);
        let (batch, filtered) = (self.batch, self.filtered);
        for ((pt, pop), learn) in self.pops.iter_mut().zip(&net.populations).zip(&net.params.learnable) {
            // The last chunk of the previous sequence still owes its gradient.
            pt.close_chunk();
            for s in &mut pt.sources {
                s.fact.fill(<F as Real>::zero());
            }
            pt.clear(true, batch, filtered);
            pt.spike_count.fill(0.0);
            if pop.pattern().learnable_init_state {
                pt.initial_param_traces(pop, learn, batch, filtered);
            }
        }
        self.y.fill(<F as Real>::zero());
        self.zbar.iter_mut().for_each(|z| z.fill(<F as Real>::zero()));
        self.bbar = <F as Real>::zero();
        self.steps = 0;
    }

    /// Cuts the chunks of every population for gradient reads every `segment` steps (the
    /// sequence's length, or `update_every`): equal chunks of at most K steps.
    pub fn plan_chunks(&mut self, segment: usize) {
        for chunk in self.pops.iter_mut().filter_map(|p| p.chunk.as_mut()) {
            chunk.plan(segment);
        }
    }

    /// Re-reads the network's weights after an update within a sequence.
    pub fn refresh_weights(&mut self, net: &Network<F>) {
        net.refresh_weights(&mut self.bufs);
    }

    /// Sets every accumulated gradient to zero.
    pub fn zero_gradients(&mut self) {
        let (batch, filtered) = (self.batch, self.filtered);
        for pt in &mut self.pops {
            // The open chunk's steps advance the traces; their gradient is dropped below.
            pt.close_chunk();
            pt.clear(false, batch, filtered);
            pt.discard_window();
        }
        self.readout_w.iter_mut().for_each(|w| w.fill(<F as Real>::zero()));
        self.readout_b.fill(<F as Real>::zero());
    }

    /// Forward part of a step: states, outputs, partials, readout. Returns the readout.
    /// Population `p`'s outputs `z` at the last step, `[B, n]`.
    pub(crate) fn outputs(&self, p: usize) -> &Array2<F> {
        &self.bufs.pops[p].z
    }

    pub fn forward(&mut self, net: &Network<F>, x: ArrayView2<F>) -> ArrayView2<'_, F> {
        net.step(x, &mut self.bufs, true, &mut crate::network::SpikeMode::Plain, None);
        net.readout_step(&self.bufs, &mut self.y);
        self.y.view()
    }

    /// Learning part of a step, after [`Eprop::forward`]: `err` is `∂E_t/∂y^t`, `[B, n_out]`.
    pub fn learn(
        &mut self,
        net: &Network<F>,
        x: ArrayView2<F>,
        err: &ArrayView2<F>,
        reg: Option<(RateRegularization, F)>,
    ) {
        // The readout's gain scales every path from y back; applied to the error, it is the
        // trace filter ē = κ ē + g e of the learning signal's part and of the readout's own
        // gradients.
        let gain = net.readout.gain;
        let mut scaled = std::mem::take(&mut self.err_gain);
        let err = if gain == <F as Real>::one() {
            err.view()
        } else {
            if scaled.dim() != err.dim() {
                scaled = Array2::zeros(err.dim());
            }
            scaled.zip_mut_with(err, |d, &e| *d = gain * e);
            scaled.view()
        };
        let err = &err;
        self.learn_scaled(net, x, err, reg);
        self.err_gain = scaled;
    }

    fn learn_scaled(
        &mut self,
        net: &Network<F>,
        x: ArrayView2<F>,
        err: &ArrayView2<F>,
        reg: Option<(RateRegularization, F)>,
    ) {
        let kappa = net.readout.kappa;
        self.steps += 1;
        let pre = Presynaptic {
            input: x,
            pops: &self.bufs.pops,
            projections: &net.projections,
            one: [<F as Real>::one()],
        };
        for (p, pop) in net.populations.iter().enumerate() {
            let pt = &mut self.pops[p];
            // Learning signal L = err · B.
            match &mut pt.feedback {
                SignalSource::Readout(r) => gemm_nn(
                    <F as Real>::zero(),
                    &mut pt.signal.view_mut(),
                    err,
                    &net.params.readout_w[*r].view(),
                ),
                SignalSource::Random(fb) => gemm_nn(<F as Real>::zero(), &mut pt.signal.view_mut(), err, &fb.view()),
                SignalSource::Output => pt.signal.assign(err),
                SignalSource::Unit => pt.signal.fill(<F as Real>::one()),
                SignalSource::ThroughOutput { projections, coef } => {
                    pt.signal.fill(<F as Real>::zero());
                    let o = net.readout.population.expect("an output population");
                    let (out, out_buf) = (&net.populations[o], &self.bufs.pops[o]);
                    let n_o = out.size;
                    let dstride = (n_o * out.kernels.num_dynamic()).max(1);
                    for &i in projections.iter() {
                        let proj = &net.projections[i];
                        let Some(bz) = out.pattern().entry(Matrix::Bz, 0, proj.port) else {
                            continue;
                        };
                        for ((b, k), c) in coef.indexed_iter_mut() {
                            let bz = match bz.kind {
                                EntryKind::Constant(ci) => out.consts[ci],
                                EntryKind::Dynamic(d) => out_buf.dynv[b * dstride + d * n_o + k],
                            };
                            *c = err[[b, k]] * bz;
                        }
                        proj.backprop(&net.params.projections[i], &coef.view(), &mut pt.signal.view_mut());
                    }
                }
            }
            let buf = &self.bufs.pops[p];
            if let Some((reg, scale)) = reg.filter(|(r, _)| r.form == RateForm::Running) {
                for (j, count) in pt.spike_count.iter_mut().enumerate() {
                    *count += buf.z.column(j).iter().map(|z| z.to_f64()).sum::<f64>();
                    let rate = *count / (self.steps * self.batch) as f64;
                    let s = F::from_f64(reg.strength * (rate - reg.target)) * scale;
                    pt.signal.column_mut(j).mapv_inplace(|v| v + s);
                }
            }
            let consts = &pop.consts[..];
            let dynv = &buf.dynv[..];
            // A step whose learning signal is zero everywhere adds nothing to the windows.
            if !pt.windows.is_empty() && pt.signal.iter().any(|&v| v != <F as Real>::zero()) {
                pt.push_window(consts, dynv, &pre);
            }
            if let Some(chunk) = &mut pt.chunk {
                let signal = pt.signal.as_slice().expect("row-major signal");
                chunk.push(consts, dynv, signal, &mut pt.sources, &pre);
            }
            if pt.stepwise {
                pop.kernels.trace_pass(TracePass {
                    consts,
                    dynv,
                    signal: &pt.signal,
                    sources: &pt.sources,
                    pre: &pre,
                    arena: &mut pt.arena,
                    starts: &pt.starts,
                    batch: self.batch,
                    filtered: self.filtered,
                    kappa,
                });
            }
            if pt.chunk.as_ref().is_some_and(|c| c.len == c.limit) {
                pt.close_chunk();
            }
            // Factorised traces read the values before the step above; advance them now.
            for s in &mut pt.sources {
                if s.factorised == 0 {
                    continue;
                }
                let fact_len = s.factorised * s.n_pre;
                let (kernels, source, port) = (&pop.kernels, s.source, s.port);
                s.fact.par_chunks_mut(fact_len).enumerate().for_each(|(b, fact)| {
                    kernels.factorised_traces(port, consts, pre.row(source, b), fact);
                });
            }
        }
        // Readout: dE/dW^out_s = Σ_t err^t (z̄_s^t)^T with z̄ the κ-filtered output.
        for ((zbar, &s), grad) in self.zbar.iter_mut().zip(&net.readout.sources).zip(&mut self.readout_w) {
            zbar.mapv_inplace(|v| v * kappa);
            *zbar += &self.bufs.pops[s].z;
            gemm_tn_acc(&mut grad.view_mut(), err, &zbar.view());
        }
        self.bbar = kappa * self.bbar + <F as Real>::one();
        for (o, g) in self.readout_b.iter_mut().enumerate() {
            *g += self.bbar * err.column(o).iter().copied().sum::<F>();
        }
    }

    /// Copies the accumulated gradients into `out` (overwriting it), after adding the
    /// pending windows.
    pub fn gradients(&mut self, net: &Network<F>, out: &mut Gradients<F>) {
        let (batch, filtered) = (self.batch, self.filtered);
        for pt in &mut self.pops {
            pt.flush();
            pt.close_chunk();
        }
        for (p, pt) in self.pops.iter().enumerate() {
            let n = pt.neurons();
            for s in pt.sources.iter().filter(|s| s.windowed) {
                let grad_t = ArrayView2::from_shape((s.n_pre, n), &s.grad_t).expect("[n_pre, n] gradient");
                match s.source {
                    Origin::Projection(i) => {
                        let mut dst = ArrayViewMut2::from_shape((n, s.n_pre), &mut out.projections[i][..])
                            .expect("dense gradient");
                        transpose_into(&mut dst, &grad_t);
                    }
                    Origin::Bias => {
                        if let Some(b) = &mut out.bias[p] {
                            b.row_mut(s.port).iter_mut().zip(&s.grad_t).for_each(|(d, g)| *d = *g);
                        }
                    }
                }
            }
            for s in &pt.sources {
                let Some(chunk) = &s.chunk else { continue };
                for j in 0..n {
                    if let Some(row) = s.gradient_row(out, p, j) {
                        chunk.gradient(j, row);
                    }
                }
            }
            for j in 0..n {
                let region = &pt.arena[pt.starts[j]..pt.starts[j + 1]];
                let mut off = 0;
                for s in pt.sources.iter().filter(|s| s.in_arena()) {
                    let (m, len) = (s.synapses(j), s.region(j, batch, filtered));
                    if let Some(row) = s.gradient_row(out, p, j) {
                        row.copy_from_slice(&region[off + len - m..off + len]);
                    }
                    off += len;
                }
                let len = region.len();
                out.learnable[p]
                    .column_mut(j)
                    .iter_mut()
                    .zip(&region[len - pt.q..])
                    .for_each(|(d, g)| *d = *g);
            }
        }
        for (proj, g) in net.projections.iter().zip(&mut out.projections) {
            proj.apply_mask(g);
        }
        for (dst, src) in out.readout_w.iter_mut().zip(&self.readout_w) {
            dst.assign(src);
        }
        if let Some(b) = &mut out.readout_b {
            b.iter_mut().zip(&self.readout_b).for_each(|(d, g)| *d = *g);
        }
    }

    /// Bytes of training state this engine keeps (traces, filtered traces, gradients,
    /// gradient windows, learning signals), excluding the network's own state and parameters.
    pub fn state_bytes(&self) -> usize {
        let f = std::mem::size_of::<F>();
        let window_bytes = |w: &PortWindow<F>| {
            let sources = w.sources.iter().map(|sw| {
                sw.fact.len() * f
                    + sw.active.len() * std::mem::size_of::<(u32, F)>()
                    + sw.count.len() * std::mem::size_of::<u32>()
            });
            w.coef.len() * f + sources.sum::<usize>()
        };
        let pop_bytes = |pt: &PopTraces<F>| {
            let sources = pt.sources.iter().map(|s| s.fact.len() + s.grad_t.len());
            let chunked = pt
                .sources
                .iter()
                .filter_map(|s| s.chunk.as_ref())
                .map(SourceChunk::bytes);
            (pt.arena.len() + sources.sum::<usize>() + pt.signal.len()) * f
                + chunked.sum::<usize>()
                + pt.windows.iter().map(window_bytes).sum::<usize>()
                + pt.chunk.as_ref().map_or(0, Chunk::bytes)
        };
        self.pops.iter().map(pop_bytes).sum::<usize>()
            + (self.zbar.iter().map(|z| z.len()).sum::<usize>()
                + self.readout_w.iter().map(|w| w.len()).sum::<usize>()
                + self.readout_b.len())
                * f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::BellecLif;
    use crate::{LayerSpec, NetworkBuilder, ReadoutSpec, neuron_model};
    use ndarray::Array3;
    use rand::RngExt;

    #[neuron_model]
    mod two_port {
        /// A test model whose eligibility is factorised with two trace terms and two ports:
        /// a synaptic current feeding a membrane with a detached reset.
        pub struct TwoPortLif {
            /// Synaptic decay.
            #[param(default = 0.8)]
            pub alpha: f64,
            /// Membrane decay.
            #[param(default = 0.9)]
            pub beta: f64,
            /// Threshold.
            #[param(default = 0.5)]
            pub v_th: f64,
            /// Synaptic current.
            #[state(init = 0.0)]
            syn: f64,
            /// Membrane potential.
            #[state(init = 0.0)]
            v: f64,
            /// Excitatory input.
            #[input]
            exc: f64,
            /// Inhibitory input.
            #[input]
            inh: f64,
        }

        fn step() {
            let psi = triangle(0.3 / v_th, v_th);
            let z_prev = detach(spike(v - v_th, psi));
            let syn_next = alpha * syn + exc - 0.5 * inh;
            let v_next = beta * v + syn + 0.2 * exc - z_prev * v_th;
            let z = spike(v_next - v_th, psi);
            Next {
                syn: syn_next,
                v: v_next,
                spike: z,
            }
        }
    }
    pub(super) use two_port::TwoPortLif;

    /// The gradient window only reorders the sums of the per-step update: an engine whose
    /// window is one step long gives the same gradients (to rounding), read in the middle of a window, after
    /// several full windows, and after gradients were zeroed with a window pending. The sizes
    /// give full and edge register blocks, and recurrent and bias sources.
    fn window_matches_single_steps<M: NeuronModel>(model: M) {
        let (n_in, hidden, batch, steps) = (37, 70, 16, 30);
        let net: Network<f64> = NetworkBuilder::new(n_in)
            .layer(
                LayerSpec::new(model.clone(), hidden)
                    .recurrent(true)
                    .bias(true)
                    .init_in(Init::Gaussian { gain: 3.0 })
                    .init_rec(Init::Gaussian { gain: 1.0 }),
            )
            // A second layer: spikes of the first as its sparse input, random feedback.
            .layer(LayerSpec::new(model, 40).init_in(Init::Gaussian { gain: 3.0 }))
            .readout(ReadoutSpec::new(3, 0.0))
            .seed(5)
            .build()
            .unwrap();
        let mut rng = StdRng::seed_from_u64(9);
        let x = Array3::from_shape_fn((steps, batch, n_in), |_| match rng.random_range(0..10) {
            0..2 => 1.0,
            2 => 0.25,
            _ => 0.0,
        });
        let errs = Array3::from_shape_fn((steps, batch, 3), |_| rng.random_range(-1.0..1.0));
        let mut windowed = Eprop::new(&net, batch, &Feedback::Symmetric, (Chunking::Steps(1), 0));
        assert!((windowed.pops.iter()).all(|lt| lt.windows.len() == M::NUM_INPUTS && lt.window_steps > 1));
        let mut single = windowed.clone();
        for lt in &mut single.pops {
            lt.window_steps = 1;
        }
        let (mut ga, mut gb) = (net.params.zeros_like(), net.params.zeros_like());
        for e in [&mut windowed, &mut single] {
            e.begin_sequence(&net);
            e.zero_gradients();
        }
        for t in 0..steps {
            for e in [&mut windowed, &mut single] {
                e.forward(&net, x.index_axis(ndarray::Axis(0), t));
                e.learn(
                    &net,
                    x.index_axis(ndarray::Axis(0), t),
                    &errs.index_axis(ndarray::Axis(0), t),
                    None,
                );
            }
            if t == 4 {
                // A pending window is discarded with the rest of the gradient.
                windowed.zero_gradients();
                single.zero_gradients();
            }
            if [12, 21, steps - 1].contains(&t) {
                windowed.gradients(&net, &mut ga);
                single.gradients(&net, &mut gb);
                assert!(ga.projections.iter().all(|w| w.iter().any(|&g| g != 0.0)));
                let diff = ga.max_rel_diff(&gb, 1e-12);
                assert!(diff <= 1e-10, "{} step {t}: {diff:e}", M::PATTERN.model);
            }
        }
    }

    #[test]
    fn window_only_reorders_sums() {
        window_matches_single_steps(BellecLif::default());
        // Two ports, each with two trace terms and the input term.
        assert!(
            TwoPortLif::PATTERN
                .ports
                .iter()
                .all(|p| p.per_synapse == 0 && p.factorised == 2)
        );
        window_matches_single_steps(TwoPortLif::default());
    }
}

#[cfg(test)]
mod chunk_tests {
    use super::*;
    use crate::models::*;
    use crate::{Connectivity, NetworkBuilder, PopulationSpec, ProjectionSpec, ReadoutSpec};
    use ndarray::Array3;
    use rand::RngExt;

    /// Two populations of `M`: "a" with a bias, dense input on every port and dense
    /// recurrence; "b" with input and a projection from "a" on the last port (sparse or
    /// dense) and dense recurrence on the first. Both feed the readout.
    fn network<M: NeuronModel>(model: M, kappa: f64, sparse_b: bool) -> Network<f64> {
        let (first, last) = (M::PATTERN.inputs[0], M::PATTERN.inputs[M::NUM_INPUTS - 1]);
        let mut builder = NetworkBuilder::new(29)
            .population(PopulationSpec::new("a", model.clone(), 23).bias(true))
            .population(PopulationSpec::new("b", model, 11));
        for &port in M::PATTERN.inputs {
            builder = builder
                .projection(ProjectionSpec::input("a").port(port).init(Init::Gaussian { gain: 3.0 }))
                .projection(
                    ProjectionSpec::new("a", "a")
                        .port(port)
                        .init(Init::Gaussian { gain: 1.0 }),
                );
        }
        let connectivity = |seed| match sparse_b {
            true => Connectivity::Probability { p: 0.4, seed },
            false => Connectivity::Dense,
        };
        builder
            .projection(
                ProjectionSpec::input("b")
                    .port(last)
                    .connectivity(connectivity(3))
                    .init(Init::Gaussian { gain: 3.0 }),
            )
            .projection(
                ProjectionSpec::new("a", "b")
                    .port(last)
                    .connectivity(connectivity(4))
                    .init(Init::Gaussian { gain: 2.0 }),
            )
            // Dense among sparse: "b"'s regions differ in length, so its dense recurrence
            // takes the per-synapse products too.
            .projection(
                ProjectionSpec::new("b", "b")
                    .port(first)
                    .init(Init::Gaussian { gain: 1.0 }),
            )
            .readout(ReadoutSpec::new(3, kappa).from(["a", "b"]))
            .seed(5)
            .build()
            .unwrap()
    }

    /// The largest difference between two gradients, per tensor relative to the tensor's
    /// largest magnitude.
    fn scaled_diff(a: &Gradients<f64>, b: &Gradients<f64>) -> f64 {
        a.slots()
            .map(|slot| {
                let (x, y) = (a.get(slot), b.get(slot));
                let scale = x.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
                x.iter().zip(y).fold(0.0f64, |m, (p, q)| m.max((p - q).abs() / scale))
            })
            .fold(0.0, f64::max)
    }

    /// Chunked e-prop gives step-by-step e-prop's gradients (to rounding) for chunks of
    /// several lengths: read inside a chunk, after gradients were zeroed inside a chunk,
    /// across two sequences whose length is no multiple of K, and with the chunk the
    /// step-by-step engine never has.
    fn chunks_match_single_steps<M: NeuronModel>(model: M) {
        let (batch, steps) = (3, 37);
        for kappa in [0.0, 0.9] {
            for sparse in [false, true] {
                let net = network(model.clone(), kappa, sparse);
                let mut rng = StdRng::seed_from_u64(11);
                let x = Array3::from_shape_fn((2 * steps, batch, net.n_in), |_| match rng.random_range(0..10) {
                    0..3 => 1.0,
                    3 => 0.5,
                    _ => 0.0,
                });
                let errs = Array3::from_shape_fn((2 * steps, batch, 3), |_| rng.random_range(-1.0..1.0));
                let (mut ga, mut gb) = (net.params.zeros_like(), net.params.zeros_like());
                // The learning engine, and the unfiltered unit-signal engine of the
                // per-sequence rate regulariser (whose readout κ must not enter its chunks).
                // `plan`: chunks cut evenly for gradient reads every 11 steps (at most 16 steps).
                let cases = [
                    (false, 2, false),
                    (false, 5, false),
                    (false, 16, false),
                    (false, 16, true),
                    (false, 64, false),
                    (true, 7, false),
                ];
                for (unit, k, plan) in cases {
                    let engine = |chunking| match unit {
                        false => Eprop::new(&net, batch, &Feedback::Symmetric, (chunking, 0)),
                        true => Eprop::unit(&net, batch, (chunking, 0)),
                    };
                    let (mut reference, mut chunked) = (engine(Chunking::Steps(1)), engine(Chunking::Steps(k)));
                    if plan {
                        chunked.plan_chunks(11);
                    }
                    // Sources without per-synapse state or filtering keep their gradient window.
                    let traced = |p: &PopTraces<f64>| p.sources.iter().any(|s| !s.windowed && s.csr.is_none());
                    assert!(chunked.pops.iter().all(|p| p.chunk.is_some() == traced(p)));
                    assert!(chunked.pops.iter().any(traced) || kappa == 0.0 || unit);
                    for t in 0..2 * steps {
                        for e in [&mut reference, &mut chunked] {
                            if t % steps == 0 {
                                e.begin_sequence(&net);
                            }
                            if t == 0 || t == 9 {
                                e.zero_gradients();
                            }
                            let xt = x.index_axis(Axis(0), t);
                            e.forward(&net, xt);
                            e.learn(&net, xt, &errs.index_axis(Axis(0), t), None);
                        }
                        if [6, 20, steps - 1, steps + 3, 2 * steps - 1].contains(&t) {
                            reference.gradients(&net, &mut ga);
                            chunked.gradients(&net, &mut gb);
                            assert!(ga.projections[0].iter().any(|&g| g != 0.0));
                            let diff = scaled_diff(&ga, &gb);
                            assert!(
                                diff <= 1e-12,
                                "{} κ={kappa} sparse={sparse} unit={unit} K={k} step {t}: {diff:e}",
                                M::PATTERN.model
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn chunks_equal_single_steps_bellec() {
        chunks_match_single_steps(BellecLif::default());
        chunks_match_single_steps(BellecAlif::default());
        chunks_match_single_steps(BellecLifDiffReset::default());
        chunks_match_single_steps(BellecAlifDiffReset::default());
    }

    #[test]
    fn chunks_equal_single_steps_paper() {
        chunks_match_single_steps(PaperLif::default());
        chunks_match_single_steps(PaperAlif::default());
        chunks_match_single_steps(SigmaDelta::default());
    }

    #[test]
    fn chunks_equal_single_steps_classic() {
        chunks_match_single_steps(CubaLif::default());
        chunks_match_single_steps(Izhikevich::default());
        chunks_match_single_steps(AdEx::default());
        chunks_match_single_steps(LeakyIntegrator::default());
        chunks_match_single_steps(super::tests::TwoPortLif::default());
    }
}
