//! e-prop in chunks of K steps (`docs/how-it-works.md`, "e-prop in chunks").
//!
//! Equations (1)–(3) are linear in the per-synapse state with coefficients that belong to the
//! postsynaptic neuron, so K steps of them collapse into
//!
//! ```text
//! G     += a_G ē⁰ + q_G · ε⁰ + Σ_s c_G^s · u^s
//! ē^K    = κ^K ē⁰ + q_E · ε⁰ + Σ_s c_E^s · u^s
//! ε^K    = Φ ε⁰   +           Σ_s D^s   · u^s
//! ```
//!
//! where `u^s` is what a synapse sees from its presynaptic neuron at step `s` (its factorised
//! traces before the step, then its activity) and every coefficient is per postsynaptic neuron
//! and sample, found by one backward sweep over the chunk in neuron space. The per-synapse
//! arrays are then read and written once per chunk instead of once per step (`advance`), and
//! the sums over `s` are matrix products with the chunk's presynaptic rows: the `gemm` crate
//! where a source's rows sit at one stride in the arena, a per-synapse loop otherwise (sparse
//! projections, populations with one).

use gemm::Parallelism;
use rayon::prelude::*;

use super::{Presynaptic, SPARSE_CHUNK, SourceTraces, for_neuron_blocks};
use crate::model::{EntryKind, Matrix, Pattern, RowLayout};
use crate::network::MAX_STATES;
use crate::real::{Float, Real};

/// Steps per chunk when the configuration leaves the choice to the engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Chunking {
    /// Chosen from the batch size and the cache size ([`Chunking::resolve`]).
    #[default]
    Auto,
    /// This many steps per chunk; 1 is step-by-step e-prop.
    Steps(usize),
}

/// Bytes of last-level cache assumed when the system does not say.
const DEFAULT_CACHE: usize = 8 << 20;

/// Longest chunk the automatic choice makes: beyond it the products gain little and the
/// chunk's buffers leave the cache.
const MAX_AUTO_STEPS: usize = 32;

impl Chunking {
    /// The number of steps per chunk for an engine of batch `batch` whose chunked sources
    /// have `pre_rows` presynaptic values per sample and step in all (`Σ W · n_pre`). `Auto`
    /// takes the longest power of two up to 32 whose presynaptic rows of one sample
    /// (`K · pre_rows` values of `float_bytes`) fit in an eighth of the last-level cache, and
    /// at least 8 rows per product (`K · B ≥ 8`) beyond that when the batch is 1.
    pub fn resolve(self, batch: usize, pre_rows: usize, float_bytes: usize) -> usize {
        match self {
            Chunking::Steps(k) => k.max(1),
            Chunking::Auto => {
                let budget = last_level_cache() / 8;
                let mut k = MAX_AUTO_STEPS;
                while k > 8 && k * pre_rows * float_bytes > budget {
                    k /= 2;
                }
                let _ = batch;
                k
            }
        }
    }
}

/// The size of the largest CPU cache the system reports (Linux sysfs), or 8 MiB.
fn last_level_cache() -> usize {
    let read = |index: usize| -> Option<usize> {
        let path = format!("/sys/devices/system/cpu/cpu0/cache/index{index}/size");
        let text = std::fs::read_to_string(path).ok()?;
        let text = text.trim();
        let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
        let value: usize = digits.parse().ok()?;
        Some(match unit {
            "K" => value << 10,
            "M" => value << 20,
            "G" => value << 30,
            _ => value,
        })
    };
    (0..8).filter_map(read).max().unwrap_or(DEFAULT_CACHE)
}

/// Where a partial's value comes from: a constant, a dynamic slot, or structurally zero.
type Slot = Option<EntryKind>;

/// The partials a port's chunk sweep reads, resolved from the pattern once. `S` per-synapse
/// rows; `W = F + 1` presynaptic rows (`F` factorised traces, then the activity).
#[derive(Clone, Debug)]
struct PortPartials {
    s: usize,
    w: usize,
    /// `J` among the per-synapse rows, `[S·S]`.
    jpp: Vec<Slot>,
    /// What feeds the per-synapse rows from the presynaptic rows: `J` from the factorised
    /// rows, then `B` of the port, `[S·W]`.
    bext: Vec<Slot>,
    /// `Jz` of the per-synapse rows, `[S]`.
    jz: Vec<Slot>,
    /// What the spike takes from the presynaptic rows: `Jz` of the factorised rows, then `Bz`
    /// of the port, `[W]`.
    bz: Vec<Slot>,
}

impl PortPartials {
    fn new(pattern: &Pattern, port: usize) -> Self {
        let layout = pattern.ports[port];
        let (mut per, mut fact) = (vec![0; layout.per_synapse], vec![0; layout.factorised]);
        for (r, row) in layout.rows.iter().enumerate() {
            match *row {
                RowLayout::PerSynapse(a) => per[a] = r,
                RowLayout::Factorised(f) => fact[f] = r,
                RowLayout::Absent => {}
            }
        }
        let kind = |m: Matrix, r: usize, c: usize| pattern.entry(m, r, c).map(|e| e.kind);
        let (s, w) = (per.len(), fact.len() + 1);
        // The presynaptic rows' column in `m`: the factorised state, or the port.
        let pre_col = |m: Matrix, r: usize, f: usize| match fact.get(f) {
            Some(&c) => kind(m, r, c),
            None => kind(if m == Matrix::J { Matrix::B } else { Matrix::Bz }, r, port),
        };
        PortPartials {
            s,
            w,
            jpp: (0..s * s).map(|x| kind(Matrix::J, per[x / s], per[x % s])).collect(),
            bext: (0..s * w).map(|x| pre_col(Matrix::J, per[x / w], x % w)).collect(),
            jz: per.iter().map(|&r| kind(Matrix::Jz, 0, r)).collect(),
            bz: (0..w).map(|f| pre_col(Matrix::Jz, 0, f)).collect(),
        }
    }
}

/// One port's chunk coefficients.
#[derive(Clone, Debug)]
struct PortChunk<F> {
    partials: PortPartials,
    /// Per neuron, `[R][B·K·W]` with `R = S + (1 if filtered) + 1`: the rows of `D^s`, then
    /// `c_E^s`, then `c_G^s`; column `(b·K + s)·W + f`.
    coef: Vec<F>,
    /// Per neuron and sample, `[2 + 2S + S²]`: `a_G = κ Λ^{t0+1}`, `a_E = κ^len`, `q_G`,
    /// `q_E`, `Φ` (row-major).
    scal: Vec<F>,
}

impl<F> PortChunk<F> {
    fn rows(&self, filtered: bool) -> usize {
        self.partials.s + usize::from(filtered) + 1
    }
}

/// Length of one neuron's and sample's [`PortChunk::scal`] entry.
fn scal_len(s: usize) -> usize {
    2 + 2 * s + s * s
}

/// The open chunk of one population: K steps of per-neuron partials, learning signals and
/// (in each chunked source, [`SourceTraces::rows`]) presynaptic rows.
#[derive(Clone, Debug)]
pub(super) struct Chunk<F> {
    /// Steps a chunk holds (K).
    pub(super) steps: usize,
    /// Steps it holds now.
    pub(super) len: usize,
    kappa: F,
    filtered: bool,
    batch: usize,
    n: usize,
    /// The population's constants during the chunk.
    consts: Vec<F>,
    /// Dynamic partials per step, `[K][B·dstride]`.
    dynv: Vec<F>,
    dstride: usize,
    /// Learning signals per step, `[K][B·n]`.
    signal: Vec<F>,
    /// Per port, its coefficients when it has chunked sources.
    ports: Vec<Option<PortChunk<F>>>,
    /// The stride between neurons' regions of the arena when it is the same for every neuron
    /// (dense sources only): the products then run through `gemm`.
    stride: Option<usize>,
}

impl<F: Float> Chunk<F> {
    /// A chunk of `steps` steps for a population of `n` neurons whose sources (already
    /// marked chunked, with their row buffers) are `sources`.
    pub(super) fn new(
        pattern: &Pattern,
        consts: &[F],
        sources: &[SourceTraces<F>],
        starts: &[usize],
        (steps, batch, n, dstride): (usize, usize, usize, usize),
        kappa: F,
        filtered: bool,
    ) -> Self {
        let zeros = |len: usize| vec![<F as Real>::zero(); len];
        let ports = (0..pattern.ports.len())
            .map(|port| {
                sources.iter().any(|s| s.chunked && s.port == port).then(|| {
                    let partials = PortPartials::new(pattern, port);
                    let rows = partials.s + usize::from(filtered) + 1;
                    PortChunk {
                        coef: zeros(n * rows * batch * steps * partials.w),
                        scal: zeros(n * batch * scal_len(partials.s)),
                        partials,
                    }
                })
            })
            .collect();
        let first = starts.get(1).map_or(0, |s| s - starts[0]);
        let uniform = starts.windows(2).all(|w| w[1] - w[0] == first);
        Chunk {
            steps,
            len: 0,
            kappa,
            filtered,
            batch,
            n,
            consts: consts.to_vec(),
            dynv: zeros(steps * batch * dstride),
            dstride,
            signal: zeros(steps * batch * n),
            ports,
            stride: (uniform && sources.iter().all(|s| s.csr.is_none() || !s.chunked)).then_some(first),
        }
    }

    /// Appends one step: the constants (at a chunk's first step), the dynamic partials, the
    /// learning signal, and each chunked source's factorised traces (before the step advances
    /// them) and activity.
    pub(super) fn push(
        &mut self,
        consts: &[F],
        dynv: &[F],
        signal: &[F],
        sources: &mut [SourceTraces<F>],
        pre: &Presynaptic<'_, F>,
    ) {
        let (slot, batch, k) = (self.len, self.batch, self.steps);
        if slot == 0 {
            self.consts.copy_from_slice(consts);
        }
        let step = batch * self.dstride;
        self.dynv[slot * step..(slot + 1) * step].copy_from_slice(&dynv[..step]);
        let step = batch * self.n;
        self.signal[slot * step..(slot + 1) * step].copy_from_slice(&signal[..step]);
        for s in sources.iter_mut().filter(|s| s.chunked) {
            let (m, w, f_rows) = (s.n_pre, s.factorised + 1, s.factorised);
            for b in 0..batch {
                let dst = &mut s.rows[((b * k + slot) * w) * m..][..w * m];
                dst[..f_rows * m].copy_from_slice(&s.fact[b * f_rows * m..(b + 1) * f_rows * m]);
                dst[f_rows * m..].copy_from_slice(pre.row(s.source, b));
            }
        }
        self.len += 1;
    }

    /// Closes the chunk: adds its gradient and advances every chunked source's traces to its
    /// end. Does nothing when the chunk is empty.
    pub(super) fn flush(&mut self, sources: &mut [SourceTraces<F>], arena: &mut [F], starts: &[usize]) {
        let len = self.len;
        if len == 0 {
            return;
        }
        self.len = 0;
        let (batch, k, filtered) = (self.batch, self.steps, self.filtered);
        // Slots past a short chunk's end must contribute nothing to the full-depth gradient
        // product: zero their presynaptic rows (their coefficients are zeroed by the sweep).
        if len < k {
            for s in sources.iter_mut().filter(|s| s.chunked) {
                let row = (s.factorised + 1) * s.n_pre;
                for b in 0..batch {
                    s.rows[(b * k + len) * row..(b + 1) * k * row].fill(<F as Real>::zero());
                }
            }
        }
        let mut ports = std::mem::take(&mut self.ports);
        let this = &*self;
        for pc in ports.iter_mut().flatten() {
            let (rows, sl) = (pc.rows(filtered), scal_len(pc.partials.s));
            let bkw = batch * k * pc.partials.w;
            let partials = &pc.partials;
            pc.coef
                .par_chunks_mut(rows * bkw)
                .zip(pc.scal.par_chunks_mut(batch * sl))
                .enumerate()
                .with_min_len(16)
                .for_each(|(j, (coef, scal))| {
                    for b in 0..batch {
                        this.sweep(partials, len, j, b, coef, &mut scal[b * sl..(b + 1) * sl]);
                    }
                });
        }
        let (coefs, sources) = (&ports, &*sources);
        let gemm = this.stride.is_some();
        for_neuron_blocks(arena, starts, (0, self.n), &|j0, j1, block| {
            let mut rest_all = block;
            for j in j0..j1 {
                let (region, tail) = rest_all.split_at_mut(starts[j + 1] - starts[j]);
                rest_all = tail;
                let mut rest = region;
                for s in sources.iter().filter(|s| !s.windowed) {
                    let (src, tail) = rest.split_at_mut(s.region(j, batch, filtered));
                    rest = tail;
                    if !s.chunked {
                        continue;
                    }
                    let pc = coefs[s.port].as_ref().expect("a chunked port");
                    this.advance_neuron(pc, s, j, src, len, !gemm);
                }
            }
        });
        if let Some(stride) = this.stride {
            let mut off = 0;
            for s in sources.iter().filter(|s| !s.windowed) {
                if s.chunked {
                    let pc = coefs[s.port].as_ref().expect("a chunked port");
                    this.products(pc, s, &mut arena[off..], stride, len);
                }
                off += s.region(0, batch, filtered);
            }
        }
        self.ports = ports;
    }

    /// The backward sweep of neuron `j`, sample `b`, over the chunk's `len` steps: writes the
    /// sample's columns of `coef` (zero past `len`) and its `scal` entry.
    fn sweep(&self, p: &PortPartials, len: usize, j: usize, b: usize, coef: &mut [F], scal: &mut [F]) {
        let zero = <F as Real>::zero();
        let (s_n, w, k, n, kappa) = (p.s, p.w, self.steps, self.n, self.kappa);
        let bkw = self.batch * k * w;
        let rows = s_n + usize::from(self.filtered) + 1;
        let (g_row, e_row) = (rows - 1, s_n);
        let mut lam = zero;
        let mut lam_e = zero;
        let mut qg = [zero; MAX_STATES];
        let mut qe = [zero; MAX_STATES];
        let mut phi = [zero; MAX_STATES * MAX_STATES];
        for a in 0..s_n {
            phi[a * s_n + a] = <F as Real>::one();
        }
        let mut jpp = [zero; MAX_STATES * MAX_STATES];
        let mut bext = [zero; MAX_STATES * (MAX_STATES + 1)];
        let mut jz = [zero; MAX_STATES];
        let mut bz = [zero; MAX_STATES + 1];
        let mut tmp = [zero; MAX_STATES * MAX_STATES];
        for r in 0..rows {
            coef[r * bkw + (b * k + len) * w..r * bkw + (b + 1) * k * w].fill(zero);
        }
        for s in (0..len).rev() {
            let dv = &self.dynv[(s * self.batch + b) * self.dstride..];
            let value = |slot: &Slot| match *slot {
                None => zero,
                Some(EntryKind::Constant(i)) => self.consts[i],
                Some(EntryKind::Dynamic(i)) => dv[i * n + j],
            };
            for (d, e) in jpp.iter_mut().zip(&p.jpp) {
                *d = value(e);
            }
            for (d, e) in bext.iter_mut().zip(&p.bext) {
                *d = value(e);
            }
            for (d, e) in jz.iter_mut().zip(&p.jz) {
                *d = value(e);
            }
            for (d, e) in bz.iter_mut().zip(&p.bz) {
                *d = value(e);
            }
            // Λ^s = L^s + κ Λ^{s+1}; the ē row's signal is a unit at the chunk's last step.
            lam = self.signal[(s * self.batch + b) * n + j] + kappa * lam;
            lam_e = if s + 1 == len { <F as Real>::one() } else { zero } + kappa * lam_e;
            let col = (b * k + s) * w;
            for f in 0..w {
                // c^s = Λ^s Bz^s + q^s B^s (per presynaptic row), D^s = Φ(t0+len, s) B^s.
                let mut cg = lam * bz[f];
                let mut ce = lam_e * bz[f];
                for a in 0..s_n {
                    cg += qg[a] * bext[a * w + f];
                    ce += qe[a] * bext[a * w + f];
                }
                coef[g_row * bkw + col + f] = cg;
                if self.filtered {
                    coef[e_row * bkw + col + f] = ce;
                }
                for a in 0..s_n {
                    let mut d = zero;
                    for a2 in 0..s_n {
                        d += phi[a * s_n + a2] * bext[a2 * w + f];
                    }
                    coef[a * bkw + col + f] = d;
                }
            }
            // q^{s-1} = Λ^s Jz^s + q^s J^s;  Φ(t0+len, s-1) = Φ(t0+len, s) J^s.
            for (q, l) in [(&mut qg, lam), (&mut qe, lam_e)] {
                let mut next = [zero; MAX_STATES];
                for a2 in 0..s_n {
                    let mut v = l * jz[a2];
                    for a in 0..s_n {
                        v += q[a] * jpp[a * s_n + a2];
                    }
                    next[a2] = v;
                }
                q[..s_n].copy_from_slice(&next[..s_n]);
            }
            for a in 0..s_n {
                for a2 in 0..s_n {
                    let mut v = zero;
                    for c in 0..s_n {
                        v += phi[a * s_n + c] * jpp[c * s_n + a2];
                    }
                    tmp[a * s_n + a2] = v;
                }
            }
            phi[..s_n * s_n].copy_from_slice(&tmp[..s_n * s_n]);
        }
        scal[0] = kappa * lam;
        scal[1] = kappa * lam_e;
        scal[2..2 + s_n].copy_from_slice(&qg[..s_n]);
        scal[2 + s_n..2 + 2 * s_n].copy_from_slice(&qe[..s_n]);
        scal[2 + 2 * s_n..].copy_from_slice(&phi[..s_n * s_n]);
    }

    /// Neuron `j`'s part of closing the chunk for source `s` (its region `src`): the
    /// per-synapse terms of every sample (`G += a_G ē + q_G·ε`, `ē ← a_E ē + q_E·ε`,
    /// `ε ← Φ ε`), then, with `products`, the sums over the chunk's presynaptic rows.
    fn advance_neuron(&self, pc: &PortChunk<F>, s: &SourceTraces<F>, j: usize, src: &mut [F], len: usize, products: bool) {
        let (batch, filtered) = (self.batch, self.filtered);
        let (s_n, w, k) = (pc.partials.s, pc.partials.w, self.steps);
        let m = s.synapses(j);
        let (sl, rows, bkw) = (scal_len(s_n), pc.rows(filtered), batch * k * w);
        let scal = &pc.scal[j * batch * sl..(j + 1) * batch * sl];
        let coef = &pc.coef[j * rows * bkw..(j + 1) * rows * bkw];
        let (syn_all, rest) = src.split_at_mut(batch * s_n * m);
        let (ebar_all, grad) = rest.split_at_mut(if filtered { batch * m } else { 0 });
        let grad = &mut grad[..m];
        // Dense rows are one segment `[S, m]`; sparse rows are stored in segments of
        // SPARSE_CHUNK synapses, each `[S, len]`.
        let seg = if s.csr.is_some() { SPARSE_CHUNK } else { m.max(1) };
        for b in 0..batch {
            let syn = &mut syn_all[b * s_n * m..(b + 1) * s_n * m];
            let ebar: &mut [F] = if filtered { &mut ebar_all[b * m..(b + 1) * m] } else { &mut [] };
            let sc = &scal[b * sl..(b + 1) * sl];
            for c0 in (0..m).step_by(seg) {
                let sl_len = seg.min(m - c0);
                let syn_seg = &mut syn[s_n * c0..s_n * (c0 + sl_len)];
                let ebar_seg: &mut [F] = if filtered { &mut ebar[c0..c0 + sl_len] } else { &mut [] };
                let grad_seg = &mut grad[c0..c0 + sl_len];
                match s_n {
                    0 => advance::<F, 0>(sc, syn_seg, ebar_seg, grad_seg),
                    1 => advance::<F, 1>(sc, syn_seg, ebar_seg, grad_seg),
                    2 => advance::<F, 2>(sc, syn_seg, ebar_seg, grad_seg),
                    3 => advance::<F, 3>(sc, syn_seg, ebar_seg, grad_seg),
                    _ => advance_any(s_n, sc, syn_seg, ebar_seg, grad_seg),
                }
                if !products {
                    continue;
                }
                // Σ_s coefficient^s · u_i^s for every row, synapse by synapse.
                let u = &s.rows[b * k * w * s.n_pre..(b + 1) * k * w * s.n_pre];
                let cols = s.csr.as_ref().map(|c| &c.col[c.row_ptr[j] + c0..c.row_ptr[j] + c0 + sl_len]);
                for v in 0..sl_len {
                    let i = cols.map_or(c0 + v, |c| c[v] as usize);
                    let dot = |r: usize| {
                        let cr = &coef[r * bkw + b * k * w..][..len * w];
                        let mut acc = <F as Real>::zero();
                        for (x, &c) in cr.iter().enumerate() {
                            acc += c * u[x * s.n_pre + i];
                        }
                        acc
                    };
                    for a in 0..s_n {
                        syn_seg[a * sl_len + v] += dot(a);
                    }
                    if filtered {
                        ebar_seg[v] += dot(s_n);
                    }
                    grad_seg[v] += dot(rows - 1);
                }
            }
        }
    }

    /// The sums over the chunk's presynaptic rows of dense source `s` as matrix products
    /// (every neuron's region `stride` apart, the source's part starting at `arena[0]`).
    fn products(&self, pc: &PortChunk<F>, s: &SourceTraces<F>, arena: &mut [F], stride: usize, len: usize) {
        let (batch, filtered, k, n) = (self.batch, self.filtered, self.steps, self.n);
        let (s_n, w, m) = (pc.partials.s, pc.partials.w, s.n_pre);
        let (rows, bkw) = (pc.rows(filtered), batch * k * w);
        let lhs_rs = rows * bkw;
        for b in 0..batch {
            let u = &s.rows[b * k * w * m..];
            for a in 0..s_n {
                let dst = &mut arena[b * s_n * m + a * m..];
                gemm_acc((n, m, len * w), dst, stride, &pc.coef[a * bkw + b * k * w..], lhs_rs, u, m);
            }
            if filtered {
                let dst = &mut arena[batch * s_n * m + b * m..];
                gemm_acc((n, m, len * w), dst, stride, &pc.coef[s_n * bkw + b * k * w..], lhs_rs, u, m);
            }
        }
        let grad_at = batch * s_n * m + if filtered { batch * m } else { 0 };
        let lhs = &pc.coef[(rows - 1) * bkw..];
        gemm_acc((n, m, bkw), &mut arena[grad_at..], stride, lhs, lhs_rs, &s.rows, m);
    }

    /// Bytes this chunk keeps (its sources' presynaptic rows are counted with them).
    pub(super) fn bytes(&self) -> usize {
        let ports = self.ports.iter().flatten().map(|p| p.coef.len() + p.scal.len());
        (self.consts.len() + self.dynv.len() + self.signal.len() + ports.sum::<usize>()) * size_of::<F>()
    }
}

/// `G += a_G ē + q_G·ε`, `ē ← a_E ē + q_E·ε`, `ε ← Φ ε` over one segment of synapses
/// (`syn` is `[S, len]`; `ebar` empty when unfiltered), `S` known at compile time.
fn advance<F: Float, const S: usize>(sc: &[F], syn: &mut [F], ebar: &mut [F], grad: &mut [F]) {
    let len = grad.len();
    if S == 0 && ebar.is_empty() {
        return;
    }
    let (ag, ae) = (sc[0], sc[1]);
    let qg: [F; S] = std::array::from_fn(|a| sc[2 + a]);
    let qe: [F; S] = std::array::from_fn(|a| sc[2 + S + a]);
    let phi: [[F; S]; S] = std::array::from_fn(|a| std::array::from_fn(|c| sc[2 + 2 * S + a * S + c]));
    let syn = &mut syn[..S * len];
    if ebar.is_empty() {
        for i in 0..len {
            let eps: [F; S] = std::array::from_fn(|a| syn[a * len + i]);
            let mut g = grad[i];
            for a in 0..S {
                g += qg[a] * eps[a];
            }
            grad[i] = g;
            for a in 0..S {
                let mut v = <F as Real>::zero();
                for c in 0..S {
                    v += phi[a][c] * eps[c];
                }
                syn[a * len + i] = v;
            }
        }
    } else {
        let ebar = &mut ebar[..len];
        for i in 0..len {
            let eps: [F; S] = std::array::from_fn(|a| syn[a * len + i]);
            let eb = ebar[i];
            let (mut g, mut e) = (grad[i] + ag * eb, ae * eb);
            for a in 0..S {
                g += qg[a] * eps[a];
                e += qe[a] * eps[a];
            }
            grad[i] = g;
            ebar[i] = e;
            for a in 0..S {
                let mut v = <F as Real>::zero();
                for c in 0..S {
                    v += phi[a][c] * eps[c];
                }
                syn[a * len + i] = v;
            }
        }
    }
}

/// [`advance`] for any number of per-synapse rows.
fn advance_any<F: Float>(s_n: usize, sc: &[F], syn: &mut [F], ebar: &mut [F], grad: &mut [F]) {
    let len = grad.len();
    let (ag, ae) = (sc[0], sc[1]);
    let (qg, qe, phi) = (&sc[2..2 + s_n], &sc[2 + s_n..2 + 2 * s_n], &sc[2 + 2 * s_n..]);
    let mut eps = [<F as Real>::zero(); MAX_STATES];
    for i in 0..len {
        for a in 0..s_n {
            eps[a] = syn[a * len + i];
        }
        let mut g = grad[i];
        for a in 0..s_n {
            g += qg[a] * eps[a];
        }
        if !ebar.is_empty() {
            let eb = ebar[i];
            g += ag * eb;
            let mut e = ae * eb;
            for a in 0..s_n {
                e += qe[a] * eps[a];
            }
            ebar[i] = e;
        }
        grad[i] = g;
        for a in 0..s_n {
            let mut v = <F as Real>::zero();
            for c in 0..s_n {
                v += phi[a * s_n + c] * eps[c];
            }
            syn[a * len + i] = v;
        }
    }
}

/// `dst[r·dst_rs + c] += Σ_x lhs[r·lhs_rs + x] · rhs[x·rhs_rs + c]` for `r < m`, `c < n`,
/// `x < depth`, through the `gemm` crate on the current rayon pool.
fn gemm_acc<F: Float>(
    (m, n, depth): (usize, usize, usize),
    dst: &mut [F],
    dst_rs: usize,
    lhs: &[F],
    lhs_rs: usize,
    rhs: &[F],
    rhs_rs: usize,
) {
    if m == 0 || n == 0 || depth == 0 {
        return;
    }
    // The bounds the raw call relies on: every row of each operand inside its slice, and the
    // destination's rows disjoint.
    assert!(
        dst_rs >= n && (m - 1) * dst_rs + n <= dst.len(),
        "gemm destination out of bounds"
    );
    assert!((m - 1) * lhs_rs + depth <= lhs.len(), "gemm lhs out of bounds");
    assert!((depth - 1) * rhs_rs + n <= rhs.len(), "gemm rhs out of bounds");
    let one = <F as Real>::one();
    // SAFETY: the asserts above keep every element the call reads or writes inside the
    // slices; `dst` is borrowed mutably and does not overlap `lhs` or `rhs`; `F` is f32 or
    // f64, both of which `gemm` implements.
    unsafe {
        gemm::gemm(
            m,
            n,
            depth,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            true,
            lhs.as_ptr(),
            1,
            lhs_rs as isize,
            rhs.as_ptr(),
            1,
            rhs_rs as isize,
            one,
            one,
            false,
            false,
            false,
            Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
}
