//! Online e-prop (Bellec et al. 2020) driven by the generated kernels.
//!
//! Per step: the forward pass computes states, outputs and the dynamic partials; the
//! readout error gives learning signals `L = err · B` (`B = W^out` or a fixed random
//! matrix); then, in parallel over postsynaptic neurons, the generated `synapse_traces`
//! kernel advances every per-synapse eligibility vector (eq. 1), forms the eligibility trace
//! (eq. 2), κ-filters it when the readout leaks, and accumulates `L · ē` into the weight
//! gradient. Factorised traces are advanced once per presynaptic neuron. Ports whose traces
//! are all factorised, without κ-filtering, skip the per-neuron kernel: their gradient is a
//! sum of outer products, collected over a few steps in a gradient window and added as one
//! product. Nothing depends on the sequence length: all buffers are allocated when the engine
//! is built.

use ndarray::{Array2, ArrayView2};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rayon::prelude::*;

use crate::gradients::Gradients;
use crate::init::Init;
use crate::linalg::{MR, NR, WindowProduct, gemm_nn, gemm_tn_acc, transpose_into, window_acc};
use crate::model::{EntryKind, Matrix, NeuronModel, RowLayout};
use crate::network::{LayerBuffers, MAX_DYNAMIC, Network, gather_partials, reset_state};
use crate::real::{Float, Real};

/// Postsynaptic neurons per parallel task in the trace update.
const NEURON_BLOCK: usize = 8;

/// Rows per term a gradient window aims for (steps · B): enough for the windowed product to
/// run from registers, few enough that the window stays in the L2 cache.
const WINDOW_ROWS: usize = 64;

/// Where the learning signals come from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Feedback {
    /// `B = (W^out)^T` for the last layer (symmetric e-prop): exact without recurrence.
    /// Earlier layers use a fixed random matrix (seed 0).
    Symmetric,
    /// A fixed random matrix for every layer (random e-prop / broadcast alignment), drawn
    /// `N(0, 1/n_out)` from `seed`.
    Random {
        /// Seed of the feedback matrices.
        seed: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Input,
    Recurrent,
    Bias,
}

/// A layer's presynaptic activity at one step, per [`Source`].
struct Presynaptic<'a, F> {
    /// The layer's input, `[B, n_pre]`.
    input: ArrayView2<'a, F>,
    /// The layer's previous output, `[B, n]`.
    z_prev: ArrayView2<'a, F>,
    /// The constant input of a bias.
    one: [F; 1],
}

impl<F: Float> Presynaptic<'_, F> {
    /// Sample `b`'s activity from `source`.
    fn row(&self, source: Source, b: usize) -> &[F] {
        match source {
            Source::Input => self.input.row(b).to_slice().expect("row-major input"),
            Source::Recurrent => self.z_prev.row(b).to_slice().expect("row-major spikes"),
            Source::Bias => &self.one,
        }
    }
}

/// One presynaptic source of one port: offsets of its region inside a neuron's arena.
#[derive(Clone, Debug)]
struct SourceTraces<F> {
    port: usize,
    source: Source,
    n_pre: usize,
    /// Factorised traces, `[B, F, n_pre]`.
    fact: Vec<F>,
    per_synapse: usize,
    factorised: usize,
    /// The port keeps neither per-synapse nor κ-filtered traces: the gradient is accumulated
    /// through the port's [`PortWindow`] into `grad_t`, not by the per-neuron trace kernel,
    /// and the source has no region in the arena.
    windowed: bool,
    /// Length of this source's region in the arena: `B·S·n_pre + (B·n_pre if κ>0) + n_pre`,
    /// or 0 when windowed.
    len: usize,
    /// Transposed weight gradient `[n_pre, n]` of a windowed source (empty otherwise).
    grad_t: Vec<F>,
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

/// Trace storage of one layer. Per postsynaptic neuron, one contiguous region holds, for
/// every source that is not windowed, its per-synapse traces, κ-filtered traces and weight
/// gradients, then the learnable-parameter traces and gradients: `par_chunks_mut` hands each
/// thread whole neurons. Windowed sources keep their gradient in `grad_t` instead.
#[derive(Clone, Debug)]
struct LayerTraces<F> {
    sources: Vec<SourceTraces<F>>,
    arena: Vec<F>,
    stride: usize,
    /// Learning signal, `[B, n]`.
    signal: Array2<F>,
    /// Random feedback `[n_out, n]`, or `None` for symmetric.
    feedback: Option<Array2<F>>,
    /// Running spike count per neuron (firing-rate regularisation).
    spike_count: Vec<f64>,
    /// Number of learnable parameters: the last `q` entries of a region are their gradients.
    q: usize,
    /// Windows of the ports whose traces are all factorised and unfiltered.
    windows: Vec<PortWindow<F>>,
    /// Steps a window holds, and steps it holds now.
    window_steps: usize,
    window_len: usize,
}

impl<F: Float> LayerTraces<F> {
    fn neurons(&self) -> usize {
        self.signal.ncols()
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

    /// Zeroes, in every neuron's region, the traces (`traces`) or the gradients (`!traces`).
    fn clear(&mut self, traces: bool) {
        let n = self.neurons();
        let q = self.q;
        if !traces {
            for s in &mut self.sources {
                s.grad_t.fill(<F as Real>::zero());
            }
        }
        for region in self.arena.chunks_exact_mut(self.stride).take(n) {
            let mut off = 0;
            for s in self.sources.iter().filter(|s| !s.windowed) {
                let grad_at = off + s.len - s.n_pre;
                if traces {
                    region[off..grad_at].fill(<F as Real>::zero());
                } else {
                    region[grad_at..off + s.len].fill(<F as Real>::zero());
                }
                off += s.len;
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
fn window_terms<M: NeuronModel>(port: usize, rows: &[RowLayout]) -> Vec<(Term, EntryKind)> {
    rows.iter()
        .enumerate()
        .filter_map(|(r, layout)| match *layout {
            RowLayout::Factorised(f) => M::PATTERN.entry(Matrix::Jz, 0, r).map(|e| (Term::Trace(f), e.kind)),
            _ => None,
        })
        .chain(M::PATTERN.entry(Matrix::Bz, 0, port).map(|e| (Term::Input, e.kind)))
        .collect()
}

/// Firing-rate regularisation `c/2 Σ_j (f_j − f*)²`, `f_j` the mean output of neuron `j`
/// over batch and steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateRegularization {
    /// Strength `c`.
    pub strength: f64,
    /// Target rate `f*` per step (e.g. 0.01 for 10 Hz at 1 ms steps).
    pub target: f64,
}

/// The e-prop engine for one batch size.
#[derive(Clone, Debug)]
pub(crate) struct Eprop<F> {
    pub batch: usize,
    filtered: bool,
    layers: Vec<LayerTraces<F>>,
    pub bufs: Vec<LayerBuffers<F>>,
    /// Readout state `[B, n_out]`.
    pub y: Array2<F>,
    /// κ-filtered last-layer output, `[B, n_last]`.
    zbar: Array2<F>,
    /// κ-filtered constant 1 (readout bias).
    bbar: F,
    readout_w: Array2<F>,
    readout_b: Vec<F>,
    steps: usize,
}

impl<F: Float> Eprop<F> {
    pub fn new<M: NeuronModel>(net: &Network<M, F>, batch: usize, feedback: Feedback) -> Self {
        let filtered = net.readout.kappa != <F as Real>::zero();
        let (k, q) = (M::NUM_STATES, M::NUM_LEARNABLE);
        let n_out = net.n_out();
        let n_layers = net.layers.len();
        let layers = net
            .layers
            .iter()
            .enumerate()
            .map(|(l, layer)| {
                let n = layer.size();
                let mut sources: Vec<SourceTraces<F>> = Vec::new();
                let mut windows = Vec::new();
                let port_terms: Vec<Vec<(Term, EntryKind)>> = M::PATTERN
                    .ports
                    .iter()
                    .enumerate()
                    .map(|(port, pl)| window_terms::<M>(port, pl.rows))
                    .collect();
                let window_steps = (WINDOW_ROWS / batch).max(1);
                let rows = window_steps * batch;
                for (port, pl) in M::PATTERN.ports.iter().enumerate() {
                    let windowed = pl.per_synapse == 0 && !filtered;
                    let first = sources.len();
                    let mut add = |source: Source, n_pre: usize| {
                        let len = if windowed {
                            0
                        } else {
                            batch * pl.per_synapse * n_pre + if filtered { batch * n_pre } else { 0 } + n_pre
                        };
                        sources.push(SourceTraces {
                            port,
                            source,
                            n_pre,
                            fact: vec![<F as Real>::zero(); batch * pl.factorised * n_pre],
                            per_synapse: pl.per_synapse,
                            factorised: pl.factorised,
                            windowed,
                            len,
                            grad_t: if windowed {
                                vec![<F as Real>::zero(); n_pre * n]
                            } else {
                                Vec::new()
                            },
                        });
                    };
                    add(Source::Input, layer.n_pre());
                    if layer.w_rec.is_some() {
                        add(Source::Recurrent, n);
                    }
                    if layer.bias.is_some() {
                        add(Source::Bias, 1);
                    }
                    let terms = &port_terms[port];
                    if windowed && !terms.is_empty() {
                        let dense: Vec<(usize, usize)> = (terms.iter().enumerate())
                            .filter_map(|(r, (term, _))| match *term {
                                Term::Trace(f) => Some((r, f)),
                                Term::Input => None,
                            })
                            .collect();
                        let input = terms.iter().position(|(term, _)| *term == Term::Input);
                        let zeros = |len: usize| vec![<F as Real>::zero(); len];
                        let window_sources = (first..sources.len())
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
                            terms: terms.clone(),
                            dense,
                            input,
                            rows,
                            sources: window_sources,
                        });
                    }
                }
                let params = batch * q * k + if filtered { batch * q } else { 0 } + q;
                let stride = sources.iter().map(|s| s.len).sum::<usize>() + params;
                let seed = match feedback {
                    Feedback::Symmetric => 0,
                    Feedback::Random { seed } => seed,
                };
                let random = matches!(feedback, Feedback::Random { .. }) || l + 1 < n_layers;
                let fb = random.then(|| {
                    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(l as u64));
                    Init::Gaussian { gain: 1.0 }.draw::<F>(n_out, n, &mut rng)
                });
                LayerTraces {
                    sources,
                    // Empty when every source is windowed and nothing is learnable.
                    arena: vec![<F as Real>::zero(); stride * n],
                    stride: stride.max(1),
                    signal: Array2::zeros((batch, n)),
                    feedback: fb,
                    spike_count: vec![0.0; n],
                    q,
                    windows,
                    window_steps,
                    window_len: 0,
                }
            })
            .collect();
        Eprop {
            batch,
            filtered,
            layers,
            bufs: net.buffers(batch),
            y: Array2::zeros((batch, n_out)),
            zbar: Array2::zeros((batch, net.last_size())),
            bbar: <F as Real>::zero(),
            readout_w: Array2::zeros(net.readout.w.raw_dim()),
            readout_b: vec![<F as Real>::zero(); n_out],
            steps: 0,
        }
    }

    /// Starts a new sequence: initial states, zero traces; gradients are kept.
    pub fn begin_sequence<M: NeuronModel>(&mut self, net: &Network<M, F>) {
        for (layer, buf) in net.layers.iter().zip(&mut self.bufs) {
            reset_state(layer, buf);
            buf.refresh_weights(layer);
        }
        for lt in &mut self.layers {
            for s in &mut lt.sources {
                s.fact.fill(<F as Real>::zero());
            }
            lt.clear(true);
            lt.spike_count.fill(0.0);
        }
        self.y.fill(<F as Real>::zero());
        self.zbar.fill(<F as Real>::zero());
        self.bbar = <F as Real>::zero();
        self.steps = 0;
    }

    /// Re-reads the network's weights after an update within a sequence.
    pub fn refresh_weights<M: NeuronModel>(&mut self, net: &Network<M, F>) {
        for (layer, buf) in net.layers.iter().zip(&mut self.bufs) {
            buf.refresh_weights(layer);
        }
    }

    /// Sets every accumulated gradient to zero.
    pub fn zero_gradients(&mut self) {
        for lt in &mut self.layers {
            lt.clear(false);
            lt.discard_window();
        }
        self.readout_w.fill(<F as Real>::zero());
        self.readout_b.fill(<F as Real>::zero());
    }

    /// Forward part of a step: states, outputs, partials, readout. Returns the readout.
    pub fn forward<M: NeuronModel>(&mut self, net: &Network<M, F>, x: ArrayView2<F>) -> ArrayView2<'_, F> {
        net.step_forward(x, &mut self.bufs, true);
        net.readout_step(&self.bufs.last().expect("a layer").z.view(), &mut self.y);
        self.y.view()
    }

    /// Learning part of a step, after [`Eprop::forward`]: `err` is `∂E_t/∂y^t`, `[B, n_out]`.
    pub fn learn<M: NeuronModel>(
        &mut self,
        net: &Network<M, F>,
        x: ArrayView2<F>,
        err: &ArrayView2<F>,
        reg: Option<(RateRegularization, F)>,
    ) {
        let kappa = net.readout.kappa;
        self.steps += 1;
        let n_layers = net.layers.len();
        for l in 0..n_layers {
            let layer = &net.layers[l];
            let lt = &mut self.layers[l];
            // Learning signal L = err · B.
            match &lt.feedback {
                None => gemm_nn(
                    <F as Real>::zero(),
                    &mut lt.signal.view_mut(),
                    err,
                    &net.readout.w.view(),
                ),
                Some(fb) => gemm_nn(<F as Real>::zero(), &mut lt.signal.view_mut(), err, &fb.view()),
            }
            let buf = &self.bufs[l];
            if let Some((reg, scale)) = reg {
                for (j, count) in lt.spike_count.iter_mut().enumerate() {
                    *count += buf.z.column(j).iter().map(|z| z.to_f64()).sum::<f64>();
                    let rate = *count / (self.steps * self.batch) as f64;
                    let s = F::from_f64(reg.strength * (rate - reg.target)) * scale;
                    lt.signal.column_mut(j).mapv_inplace(|v| v + s);
                }
            }
            let pre = Presynaptic {
                input: if l == 0 { x } else { self.bufs[l - 1].z.view() },
                z_prev: buf.z_prev.view(),
                one: [<F as Real>::one()],
            };
            let dynv = &buf.dynv;
            let nd = M::NUM_DYNAMIC;
            let n = layer.size();
            let dstride = (n * nd).max(1);
            let consts = &layer.consts[..];
            // A step whose learning signal is zero everywhere adds nothing to the windows.
            if !lt.windows.is_empty() && lt.signal.iter().any(|&v| v != <F as Real>::zero()) {
                lt.push_window(consts, dynv, &pre);
            }
            let (batch, filtered) = (self.batch, self.filtered);
            let (k, q) = (M::NUM_STATES, M::NUM_LEARNABLE);
            let signal = &lt.signal;
            let sources = &lt.sources;
            // Blocks of neurons per task; inside a block, samples outer and neurons inner, so
            // one sample's presynaptic activity and factorised traces stay in cache while
            // the block's gradient rows are updated.
            let stride = lt.stride;
            // An empty arena (every source windowed, nothing learnable) has no blocks.
            lt.arena
                .par_chunks_mut(stride * NEURON_BLOCK)
                .enumerate()
                .for_each(|(blk, block)| {
                    let mut dv_buf = [<F as Real>::zero(); MAX_DYNAMIC];
                    for b in 0..batch {
                        for (jj, region) in block.chunks_mut(stride).enumerate() {
                            let j = blk * NEURON_BLOCK + jj;
                            if j >= n {
                                break;
                            }
                            gather_partials(&dynv[b * dstride..b * dstride + n * nd], j, n, &mut dv_buf[..nd]);
                            let dv = &dv_buf[..nd];
                            let l_bj = signal[[b, j]];
                            let mut rest = region;
                            for s in sources {
                                let (src, tail) = rest.split_at_mut(s.len);
                                rest = tail;
                                if s.windowed {
                                    continue;
                                }
                                let syn_len = s.per_synapse * s.n_pre;
                                let (syn_all, src) = src.split_at_mut(batch * syn_len);
                                let ebar_len = if filtered { s.n_pre } else { 0 };
                                let (ebar_all, grad) = src.split_at_mut(batch * ebar_len);
                                let fact_len = s.factorised * s.n_pre;
                                M::synapse_traces(
                                    s.port,
                                    consts,
                                    dv,
                                    pre.row(s.source, b),
                                    &s.fact[b * fact_len..(b + 1) * fact_len],
                                    &mut syn_all[b * syn_len..(b + 1) * syn_len],
                                    &mut ebar_all[b * ebar_len..(b + 1) * ebar_len],
                                    grad,
                                    l_bj,
                                    kappa,
                                );
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
            // Factorised traces read the values before the step above; advance them now.
            for s in &mut lt.sources {
                if s.factorised == 0 {
                    continue;
                }
                let fact_len = s.factorised * s.n_pre;
                s.fact.par_chunks_mut(fact_len).enumerate().for_each(|(b, fact)| {
                    M::factorised_traces(s.port, consts, pre.row(s.source, b), fact);
                });
            }
        }
        // Readout: dE/dW^out = Σ_t err^t (z̄^t)^T with z̄ the κ-filtered output.
        let z = &self.bufs.last().expect("a layer").z;
        self.zbar.mapv_inplace(|v| v * kappa);
        self.zbar += z;
        gemm_tn_acc(&mut self.readout_w.view_mut(), err, &self.zbar.view());
        self.bbar = kappa * self.bbar + <F as Real>::one();
        for (o, g) in self.readout_b.iter_mut().enumerate() {
            *g += self.bbar * err.column(o).iter().copied().sum::<F>();
        }
    }

    /// Copies the accumulated gradients into `out` (overwriting it), after adding the
    /// pending windows.
    pub fn gradients<M: NeuronModel>(&mut self, net: &Network<M, F>, out: &mut Gradients<F>) {
        for lt in &mut self.layers {
            lt.flush();
        }
        for ((layer, lt), lg) in net.layers.iter().zip(&self.layers).zip(&mut out.layers) {
            let n = layer.size();
            for s in lt.sources.iter().filter(|s| s.windowed) {
                let grad_t = ArrayView2::from_shape((s.n_pre, n), &s.grad_t).expect("[n_pre, n] gradient");
                match s.source {
                    Source::Input => transpose_into(&mut lg.w_in[s.port].view_mut(), &grad_t),
                    Source::Recurrent => {
                        if let Some(w) = &mut lg.w_rec {
                            transpose_into(&mut w[s.port].view_mut(), &grad_t);
                        }
                    }
                    Source::Bias => {
                        if let Some(b) = &mut lg.bias {
                            b[s.port].iter_mut().zip(&s.grad_t).for_each(|(d, g)| *d = *g);
                        }
                    }
                }
            }
            for (j, region) in lt.arena.chunks_exact(lt.stride).enumerate() {
                let mut off = 0;
                for s in lt.sources.iter().filter(|s| !s.windowed) {
                    let grad = &region[off + s.len - s.n_pre..off + s.len];
                    match s.source {
                        Source::Input => {
                            lg.w_in[s.port]
                                .row_mut(j)
                                .iter_mut()
                                .zip(grad)
                                .for_each(|(d, g)| *d = *g);
                        }
                        Source::Recurrent => {
                            if let Some(w) = &mut lg.w_rec {
                                w[s.port].row_mut(j).iter_mut().zip(grad).for_each(|(d, g)| *d = *g);
                            }
                        }
                        Source::Bias => {
                            if let Some(b) = &mut lg.bias {
                                b[s.port][j] = grad[0];
                            }
                        }
                    }
                    off += s.len;
                }
                let q = M::NUM_LEARNABLE;
                let len = region.len();
                lg.learn
                    .column_mut(j)
                    .iter_mut()
                    .zip(&region[len - q..])
                    .for_each(|(d, g)| *d = *g);
            }
            if let (true, Some(w)) = (layer.mask_self, lg.w_rec.as_mut()) {
                for m in w {
                    m.diag_mut().fill(<F as Real>::zero());
                }
            }
        }
        out.readout_w.assign(&self.readout_w);
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
        let layer_bytes = |lt: &LayerTraces<F>| {
            let sources = lt.sources.iter().map(|s| s.fact.len() + s.grad_t.len());
            (lt.arena.len() + sources.sum::<usize>() + lt.signal.len()) * f
                + lt.windows.iter().map(window_bytes).sum::<usize>()
        };
        self.layers.iter().map(layer_bytes).sum::<usize>()
            + (self.zbar.len() + self.readout_w.len() + self.readout_b.len()) * f
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
    use two_port::TwoPortLif;

    /// The gradient window only reorders the sums of the per-step update: an engine whose
    /// window is one step long gives the same gradients (to rounding), read in the middle of a window, after
    /// several full windows, and after gradients were zeroed with a window pending. The sizes
    /// give full and edge register blocks, and recurrent and bias sources.
    fn window_matches_single_steps<M: NeuronModel>(model: M) {
        let (n_in, hidden, batch, steps) = (37, 70, 16, 30);
        let net: Network<M, f64> = NetworkBuilder::new(n_in)
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
        let mut windowed = Eprop::new(&net, batch, Feedback::Symmetric);
        assert!((windowed.layers.iter()).all(|lt| lt.windows.len() == M::NUM_INPUTS && lt.window_steps > 1));
        let mut single = windowed.clone();
        for lt in &mut single.layers {
            lt.window_steps = 1;
        }
        let (mut ga, mut gb) = (Gradients::zeros(&net), Gradients::zeros(&net));
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
                assert!(ga.layers.iter().all(|l| l.w_in[0].iter().any(|&g| g != 0.0)));
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
