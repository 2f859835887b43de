//! Online e-prop (Bellec et al. 2020) driven by the generated kernels.
//!
//! Per step: the forward pass computes states, outputs and the dynamic partials; the
//! readout error gives learning signals `L = err · B` (`B = W^out` or a fixed random
//! matrix); then, in parallel over postsynaptic neurons, the generated `synapse_traces`
//! kernel advances every per-synapse eligibility vector (eq. 1), forms the eligibility trace
//! (eq. 2), κ-filters it when the readout leaks, and accumulates `L · ē` into the weight
//! gradient. Factorised traces are advanced once per presynaptic neuron. Nothing depends on
//! the sequence length: all buffers are allocated when the engine is built.

use ndarray::{Array2, ArrayView2};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rayon::prelude::*;

use crate::gradients::Gradients;
use crate::init::Init;
use crate::linalg::{gemm_nn, gemm_tn_acc};
use crate::model::{EntryKind, Matrix, NeuronModel, RowLayout};
use crate::network::{LayerBuffers, MAX_DYNAMIC, Network, gather_partials, reset_state};
use crate::real::{Float, Real};

/// Postsynaptic neurons per parallel task in the trace update.
const NEURON_BLOCK: usize = 8;

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
    /// Where the trace coefficients `Jz` (reachable rows) and `Bz` of this port live. When
    /// the source keeps no per-synapse or filtered trace, a step whose coefficients (times
    /// the learning signal) are all zero adds nothing and is skipped.
    coefficients: Vec<EntryKind>,
    /// Length of this source's region in the arena: `B·S·n_pre + (B·n_pre if κ>0) + n_pre`.
    len: usize,
}

/// Trace storage of one layer. Per postsynaptic neuron, one contiguous region holds, for
/// every source, its per-synapse traces, κ-filtered traces and weight gradients, then the
/// learnable-parameter traces and gradients: `par_chunks_mut` hands each thread whole
/// neurons.
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
}

impl<F: Float> LayerTraces<F> {
    fn neurons(&self) -> usize {
        self.signal.ncols()
    }

    /// Zeroes, in every neuron's region, the traces (`traces`) or the gradients (`!traces`).
    fn clear(&mut self, traces: bool) {
        let n = self.neurons();
        let q = self.q;
        for region in self.arena.chunks_exact_mut(self.stride).take(n) {
            let mut off = 0;
            for s in &self.sources {
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
                let mut sources = Vec::new();
                for (port, pl) in M::PATTERN.ports.iter().enumerate() {
                    let coefficients: Vec<EntryKind> = pl
                        .rows
                        .iter()
                        .enumerate()
                        .filter(|(_, layout)| **layout != RowLayout::Absent)
                        .filter_map(|(r, _)| M::PATTERN.entry(Matrix::Jz, 0, r).map(|e| e.kind))
                        .chain(M::PATTERN.entry(Matrix::Bz, 0, port).map(|e| e.kind))
                        .collect();
                    let mut add = |source: Source, n_pre: usize| {
                        let len = batch * pl.per_synapse * n_pre + if filtered { batch * n_pre } else { 0 } + n_pre;
                        sources.push(SourceTraces {
                            port,
                            source,
                            n_pre,
                            fact: vec![<F as Real>::zero(); batch * pl.factorised * n_pre],
                            per_synapse: pl.per_synapse,
                            factorised: pl.factorised,
                            coefficients: coefficients.clone(),
                            len,
                        });
                    };
                    add(Source::Input, layer.n_pre());
                    if layer.w_rec.is_some() {
                        add(Source::Recurrent, n);
                    }
                    if layer.bias.is_some() {
                        add(Source::Bias, 1);
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
                    arena: vec![<F as Real>::zero(); (stride * n).max(1)],
                    stride: stride.max(1),
                    signal: Array2::zeros((batch, n)),
                    feedback: fb,
                    spike_count: vec![0.0; n],
                    q,
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
            let pre_in: ArrayView2<F> = if l == 0 { x } else { self.bufs[l - 1].z.view() };
            let z_prev = buf.z_prev.view();
            let dynv = &buf.dynv;
            let nd = M::NUM_DYNAMIC;
            let n = layer.size();
            let dstride = (n * nd).max(1);
            let consts = &layer.consts[..];
            let (batch, filtered) = (self.batch, self.filtered);
            let (k, q) = (M::NUM_STATES, M::NUM_LEARNABLE);
            let signal = &lt.signal;
            let sources = &lt.sources;
            let one = [<F as Real>::one()];
            // Blocks of neurons per task; inside a block, samples outer and neurons inner, so
            // one sample's presynaptic activity and factorised traces stay in cache while
            // the block's gradient rows are updated.
            let stride = lt.stride;
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
                                let syn_len = s.per_synapse * s.n_pre;
                                let (syn_all, src) = src.split_at_mut(batch * syn_len);
                                let ebar_len = if filtered { s.n_pre } else { 0 };
                                let (ebar_all, grad) = src.split_at_mut(batch * ebar_len);
                                let fact_len = s.factorised * s.n_pre;
                                if s.per_synapse == 0 && !filtered {
                                    let zero = <F as Real>::zero();
                                    let coefficient = |kind: &EntryKind| match *kind {
                                        EntryKind::Constant(i) => consts[i],
                                        EntryKind::Dynamic(i) => dv[i],
                                    };
                                    if l_bj == zero || s.coefficients.iter().all(|c| coefficient(c) == zero) {
                                        continue;
                                    }
                                }
                                let pre: &[F] = match s.source {
                                    Source::Input => pre_in.row(b).to_slice().expect("row-major input"),
                                    Source::Recurrent => z_prev.row(b).to_slice().expect("row-major spikes"),
                                    Source::Bias => &one,
                                };
                                M::synapse_traces(
                                    s.port,
                                    consts,
                                    dv,
                                    pre,
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
                    let pre: &[F] = match s.source {
                        Source::Input => pre_in.row(b).to_slice().expect("row-major input"),
                        Source::Recurrent => z_prev.row(b).to_slice().expect("row-major spikes"),
                        Source::Bias => &one,
                    };
                    M::factorised_traces(s.port, consts, pre, fact);
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

    /// Copies the accumulated gradients into `out` (overwriting it).
    pub fn gradients<M: NeuronModel>(&self, net: &Network<M, F>, out: &mut Gradients<F>) {
        for ((layer, lt), lg) in net.layers.iter().zip(&self.layers).zip(&mut out.layers) {
            let n = layer.size();
            for j in 0..n {
                let region = &lt.arena[j * lt.stride..(j + 1) * lt.stride];
                let mut off = 0;
                for s in &lt.sources {
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
    /// learning signals), excluding the network's own state and parameters.
    pub fn state_bytes(&self) -> usize {
        let f = std::mem::size_of::<F>();
        self.layers
            .iter()
            .map(|lt| lt.arena.len() + lt.sources.iter().map(|s| s.fact.len()).sum::<usize>() + lt.signal.len())
            .sum::<usize>()
            * f
            + (self.zbar.len() + self.readout_w.len() + self.readout_b.len()) * f
    }
}
