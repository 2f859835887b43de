//! e-prop in chunks of K steps (`docs/how-it-works.md`, "e-prop in chunks").
//!
//! Equations (1)–(3) are linear in the per-synapse state with coefficients that belong to the
//! postsynaptic neuron, and the factorised traces are linear in the presynaptic activity with
//! constant coefficients, so K steps collapse into
//!
//! ```text
//! G     += a_G ē⁰ + q_G · ε⁰ + Σ_x c_G,x · u_x
//! ē^K    = a_E ē⁰ + q_E · ε⁰ + Σ_x c_E,x · u_x
//! ε^K    = Φ ε⁰   +           Σ_x D_x   · u_x
//! ```
//!
//! over `K + F` presynaptic rows `u`: the activity at each step of the chunk, then the `F`
//! factorised traces at its start. Every coefficient is per postsynaptic neuron and sample and
//! comes from one backward sweep over the chunk in neuron space, vectorised over neurons. The
//! per-synapse arrays are then read and written once per chunk instead of once per step,
//! and the sums over `x` are register-blocked products of [`MR`] neurons by [`NR`]
//! presynaptic neurons, fused with that one pass (a per-synapse loop for the last neurons of
//! a population whose size is no multiple of [`MR`]). Only dense sources are chunked: sparse
//! projections keep the step-by-step kernel.

use rayon::prelude::*;

use super::{Presynaptic, SourceTraces, for_neuron_blocks};
use crate::linalg::{MR, NR};
use crate::model::{EntryKind, Matrix, Pattern, RowLayout};
use crate::real::{Float, Real};

/// Steps per chunk of the per-synapse e-prop update ([`crate::TrainConfig::chunk`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Chunking {
    /// Chosen by the engine from the cache size, the batch and the population's sizes
    /// ([`Chunking::resolve`]).
    #[default]
    Auto,
    /// This many steps per chunk; 1 is step-by-step e-prop.
    Steps(usize),
}

/// Longest chunk the automatic choice makes: beyond it the products gain little.
const MAX_AUTO_STEPS: usize = 32;
/// Shortest chunk the automatic choice makes.
const MIN_AUTO_STEPS: usize = 8;
/// Last-level cache assumed when the system does not report one.
const DEFAULT_CACHE: usize = 8 << 20;

impl Chunking {
    /// Steps per chunk for a population whose chunk stores `per_step` values per sample and
    /// step (its dynamic partials and learning signal, `(ND + 1)·n`, plus the activity of each
    /// chunked source, `m`), for a batch of `batch` and floats of `float_bytes`, on a machine
    /// whose last-level cache holds `cache_bytes` ([`Chunking::cache_bytes`]). `Auto` takes the
    /// longest chunk of 32, 16 or 8 steps whose buffers (`K·B·per_step` values) fit in that
    /// cache, so that what a step stores is still cached when the chunk closes; 8 when none
    /// does.
    pub fn resolve(self, batch: usize, per_step: usize, float_bytes: usize, cache_bytes: usize) -> usize {
        match self {
            Chunking::Steps(k) => k.max(1),
            Chunking::Auto => {
                let mut k = MAX_AUTO_STEPS;
                while k > MIN_AUTO_STEPS && k * batch * per_step * float_bytes > cache_bytes {
                    k /= 2;
                }
                k
            }
        }
    }

    /// The size of this machine's last-level cache: the largest CPU cache Linux reports for
    /// cpu0 (sysfs), or 8 MiB when it reports none. A [`crate::Trainer`] over several ranks
    /// uses rank 0's, so that every rank chunks alike.
    pub fn cache_bytes() -> usize {
        last_level_cache()
    }
}

/// The largest CPU cache Linux reports for cpu0, or [`DEFAULT_CACHE`].
fn last_level_cache() -> usize {
    let size = |index: usize| -> Option<usize> {
        let text = std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu0/cache/index{index}/size")).ok()?;
        let text = text.trim();
        let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let value: usize = text[..digits].parse().ok()?;
        Some(match &text[digits..] {
            "K" => value << 10,
            "M" => value << 20,
            "G" => value << 30,
            _ => value,
        })
    };
    (0..8).filter_map(size).max().unwrap_or(DEFAULT_CACHE)
}

/// Neurons per task when a chunk is closed. The task first streams its neurons' traces
/// through [`advance`] (they then sit in the L2 cache), then runs the products panel by
/// panel of presynaptic neurons, so each panel of presynaptic rows is read once per task.
const CLOSE_BLOCK: usize = 8;
const _: () = assert!(CLOSE_BLOCK.is_multiple_of(MR));

/// Neurons per task of the backward sweep, one vector lane each.
const NB: usize = 16;
const _: () = assert!(NB.is_multiple_of(MR));

/// One value per neuron of a sweep block.
type Lanes<F> = [F; NB];

/// Where a partial's value comes from: a constant, a dynamic slot, or structurally zero.
type Slot = Option<EntryKind>;

/// The partials a port's chunk sweep reads, resolved from the pattern once: `S` per-synapse
/// rows and `F` factorised rows of the port's eligibility.
#[derive(Clone, Debug)]
struct PortPartials {
    s: usize,
    f: usize,
    /// `J` among the per-synapse rows, `[S·S]`.
    jpp: Vec<Slot>,
    /// What feeds the per-synapse rows at a step: `J` from each factorised row (its value
    /// before the step), then `B` of the port (the activity), `[S·(F+1)]`.
    bext: Vec<Slot>,
    /// `Jz` of the per-synapse rows, `[S]`.
    jz: Vec<Slot>,
    /// What the spike takes directly: `Jz` of each factorised row, then `Bz` of the port,
    /// `[F+1]`.
    bz: Vec<Slot>,
    /// The factorised rows' own recursion `f^t = A f^{t-1} + b p^t` (constant by the
    /// definition of a factorised row): `A`, `[F·F]`, and `b`, `[F]`.
    a_ff: Vec<Slot>,
    b_f: Vec<Slot>,
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
        let (s, f) = (per.len(), fact.len());
        let w = f + 1;
        // Column `c` of the presynaptic rows in `m` (`J` or `Jz`): a factorised state, or the
        // port (`B` or `Bz`).
        let pre_col = |m: Matrix, r: usize, c: usize| match fact.get(c) {
            Some(&state) => kind(m, r, state),
            None => kind(if m == Matrix::J { Matrix::B } else { Matrix::Bz }, r, port),
        };
        PortPartials {
            s,
            f,
            jpp: (0..s * s).map(|x| kind(Matrix::J, per[x / s], per[x % s])).collect(),
            bext: (0..s * w).map(|x| pre_col(Matrix::J, per[x / w], x % w)).collect(),
            jz: per.iter().map(|&r| kind(Matrix::Jz, 0, r)).collect(),
            bz: (0..w).map(|c| pre_col(Matrix::Jz, 0, c)).collect(),
            a_ff: (0..f * f).map(|x| kind(Matrix::J, fact[x / f], fact[x % f])).collect(),
            b_f: fact.iter().map(|&r| kind(Matrix::B, r, port)).collect(),
        }
    }

    /// Coefficient rows of a chunk: `D` of each per-synapse row, then ē's (when `filtered`),
    /// then the gradient's.
    fn rows(&self, filtered: bool) -> usize {
        self.s + usize::from(filtered) + 1
    }

    /// Lanes of sweep scratch one block needs.
    fn scratch(&self) -> usize {
        let (s, w) = (self.s, self.f + 1);
        2 + 2 * s + 3 * s * s + 2 * s * w + s + 3 * w + (3 + s) * self.f
    }
}

/// One port's chunk coefficients.
#[derive(Clone, Debug)]
struct PortChunk<F> {
    partials: PortPartials,
    /// Coefficient rows, `R = S + (1 if filtered) + 1` of them (`D` of each per-synapse row,
    /// then ē's, then the gradient's), each over the `B·P` presynaptic rows (`P = F + K`), by
    /// blocks of the sweep's neurons: `[n/NB blocks][R][B·P][NB]`, zero past the last neuron.
    coef: Vec<F>,
    /// Per neuron and sample, `[n][B][2 + 2S + S²]`: `a_G`, `a_E`, `q_G`, `q_E`, `Φ`.
    scal: Vec<F>,
    /// Sweep scratch, `[blocks of NB neurons][PortPartials::scratch]`.
    scratch: Vec<Lanes<F>>,
    /// The values of [`PortPartials::a_ff`] and [`PortPartials::b_f`] during the chunk.
    a_ff: Vec<F>,
    b_f: Vec<F>,
}

/// Length of one neuron's and sample's [`PortChunk::scal`] entry.
fn scal_len(s: usize) -> usize {
    2 + 2 * s + s * s
}

/// The open chunk of one population: K steps of per-neuron partials and learning signals, and,
/// in each chunked source ([`SourceTraces::rows`]), its presynaptic rows.
#[derive(Clone, Debug)]
pub(super) struct Chunk<F> {
    /// Steps a chunk holds (K).
    pub(super) steps: usize,
    /// Steps it holds now.
    pub(super) len: usize,
    /// Steps after which it closes (at most `steps`): the segments of a sequence between
    /// gradient reads are cut into chunks of equal length ([`Chunk::plan`]).
    pub(super) limit: usize,
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
}

/// Presynaptic rows per sample of a chunk of `steps` steps for `f` factorised rows.
fn rows_per_sample(steps: usize, f: usize) -> usize {
    steps + f
}

impl<F: Float> Chunk<F> {
    /// A chunk of `steps` steps for a population of `n` neurons with the given constants,
    /// whose sources to chunk are marked `chunked`: gives them their row buffers. `kappa` is
    /// the readout's leak, used only when the traces are `filtered`.
    pub(super) fn new(
        pattern: &Pattern,
        consts: &[F],
        sources: &mut [SourceTraces<F>],
        (steps, batch, n, dstride): (usize, usize, usize, usize),
        kappa: F,
        filtered: bool,
    ) -> Self {
        let zeros = |len: usize| vec![<F as Real>::zero(); len];
        for s in sources.iter_mut().filter(|s| s.chunked) {
            s.rows = zeros(s.n_pre.div_ceil(NR) * batch * rows_per_sample(steps, s.factorised) * NR);
        }
        let ports = (0..pattern.ports.len())
            .map(|port| {
                sources.iter().any(|s| s.chunked && s.port == port).then(|| {
                    let partials = PortPartials::new(pattern, port);
                    let rows = partials.rows(filtered);
                    let p = rows_per_sample(steps, partials.f);
                    PortChunk {
                        coef: zeros(n.div_ceil(NB) * NB * rows * batch * p),
                        scal: zeros(n * batch * scal_len(partials.s)),
                        scratch: vec![[<F as Real>::zero(); NB]; n.div_ceil(NB) * partials.scratch()],
                        a_ff: zeros(partials.f * partials.f),
                        b_f: zeros(partials.f),
                        partials,
                    }
                })
            })
            .collect();
        Chunk {
            steps,
            len: 0,
            limit: steps,
            // Unfiltered traces (the unit-signal engines of the per-sequence regulariser, or
            // κ = 0) take no κ into their sweeps.
            kappa: if filtered { kappa } else { <F as Real>::zero() },
            filtered,
            batch,
            n,
            consts: consts.to_vec(),
            dynv: zeros(steps * batch * dstride),
            dstride,
            signal: zeros(steps * batch * n),
            ports,
        }
    }

    /// Chunks for segments of `segment` steps between gradient reads: the fewest chunks of
    /// at most K steps, of equal length (100 steps with K = 32 as four chunks of 25, not
    /// 32, 32, 32 and 4, whose last would cost a full pass over the traces for four steps).
    pub(super) fn plan(&mut self, segment: usize) {
        let segment = segment.max(1);
        self.limit = segment.div_ceil(segment.div_ceil(self.steps));
    }

    /// Appends one step: the constants and each chunked source's factorised traces (at a
    /// chunk's first step, before the step advances them), the dynamic partials, the learning
    /// signal, and each chunked source's activity.
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
            let (m, f_rows) = (s.n_pre, s.factorised);
            let p = rows_per_sample(k, f_rows);
            let span = batch * p * NR;
            let (rows, fact) = (&mut s.rows, &s.fact);
            for b in 0..batch {
                let x = pre.row(s.source, b);
                for (panel, xs) in rows.chunks_exact_mut(span).zip(x.chunks(NR)) {
                    panel[(b * p + f_rows + slot) * NR..][..xs.len()].copy_from_slice(xs);
                }
                if slot == 0 {
                    for f in 0..f_rows {
                        let trace = &fact[(b * f_rows + f) * m..][..m];
                        for (panel, xs) in rows.chunks_exact_mut(span).zip(trace.chunks(NR)) {
                            panel[(b * p + f) * NR..][..xs.len()].copy_from_slice(xs);
                        }
                    }
                }
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
        let mut ports = std::mem::take(&mut self.ports);
        let this = &*self;
        for pc in ports.iter_mut().flatten() {
            let constant = |slot: &Slot| match *slot {
                Some(EntryKind::Constant(i)) => this.consts[i],
                // Factorised rows have constant partials by construction.
                _ => <F as Real>::zero(),
            };
            for (v, slot) in pc.a_ff.iter_mut().zip(&pc.partials.a_ff) {
                *v = constant(slot);
            }
            for (v, slot) in pc.b_f.iter_mut().zip(&pc.partials.b_f) {
                *v = constant(slot);
            }
            let (partials, a_ff, b_f) = (&pc.partials, &pc.a_ff[..], &pc.b_f[..]);
            let rows = partials.rows(filtered);
            let (sl, lanes) = (scal_len(partials.s), partials.scratch());
            let bp = batch * rows_per_sample(k, partials.f);
            pc.coef
                .par_chunks_mut(NB * rows * bp)
                .zip(pc.scal.par_chunks_mut(NB * batch * sl))
                .zip(pc.scratch.par_chunks_mut(lanes))
                .enumerate()
                .for_each(|(blk, ((coef, scal), scratch))| {
                    for b in 0..batch {
                        this.sweep(partials, (a_ff, b_f), len, blk * NB, b, coef, scal, scratch);
                    }
                });
        }
        let (coefs, sources) = (&ports, &*sources);
        for_neuron_blocks(arena, starts, CLOSE_BLOCK, (0, this.n), &|j0, j1, block| {
            this.close_block(coefs, sources, starts, (j0, j1), block, len);
        });
        self.ports = ports;
    }

    /// The backward sweep over the chunk's `len` steps for sample `b` and the block of
    /// neurons from `j0` (vectorised over them): writes their coefficients (`coef`, the
    /// block's groups) and their `scal` entries.
    fn sweep(
        &self,
        p: &PortPartials,
        (a_ff, b_f): (&[F], &[F]),
        len: usize,
        j0: usize,
        b: usize,
        coef: &mut [F],
        scal: &mut [F],
        scratch: &mut [Lanes<F>],
    ) {
        let zero = <F as Real>::zero();
        let (s_n, f_n, k, n, kappa) = (p.s, p.f, self.steps, self.n, self.kappa);
        let w = f_n + 1;
        let width = NB.min(n - j0);
        let rows = p.rows(self.filtered);
        let pp = rows_per_sample(k, f_n);
        let bp = self.batch * pp;
        // Scratch layout (lanes): λ, λ_E, q_G[S], q_E[S], Φ[S²], tmp[S²], J[S²], B̃[S·W],
        // Jz[S], B̃z[W], ρ_G[F], ρ_E[F], ρ_D[S·F], c_G[W], c_E[W], D[S·W], next ρ[F].
        let (lam, rest) = scratch.split_at_mut(1);
        let (lam_e, rest) = rest.split_at_mut(1);
        let (qg, rest) = rest.split_at_mut(s_n);
        let (qe, rest) = rest.split_at_mut(s_n);
        let (phi, rest) = rest.split_at_mut(s_n * s_n);
        let (tmp, rest) = rest.split_at_mut(s_n * s_n);
        let (jpp, rest) = rest.split_at_mut(s_n * s_n);
        let (bext, rest) = rest.split_at_mut(s_n * w);
        let (jz, rest) = rest.split_at_mut(s_n);
        let (bz, rest) = rest.split_at_mut(w);
        let (rho_g, rest) = rest.split_at_mut(f_n);
        let (rho_e, rest) = rest.split_at_mut(f_n);
        let (rho_d, rest) = rest.split_at_mut(s_n * f_n);
        let (cg, rest) = rest.split_at_mut(w);
        let (ce, rest) = rest.split_at_mut(w);
        let (dd, rest) = rest.split_at_mut(s_n * w);
        let (next, _) = rest.split_at_mut(f_n);
        let (lam, lam_e) = (&mut lam[0], &mut lam_e[0]);
        for v in [&mut *qg, &mut *qe, &mut *phi, &mut *rho_g, &mut *rho_e, &mut *rho_d] {
            v.fill([zero; NB]);
        }
        *lam = [zero; NB];
        *lam_e = [zero; NB];
        for a in 0..s_n {
            phi[a * s_n + a] = [<F as Real>::one(); NB];
        }
        // Coefficient (row, x) of the block's neurons: NB lanes, zero past the last neuron.
        let put = |coef: &mut [F], row: usize, x: usize, v: &Lanes<F>| {
            let dst: &mut Lanes<F> = (&mut coef[((row * bp) + b * pp + x) * NB..][..NB])
                .try_into()
                .expect("NB lanes");
            *dst = *v;
            if width < NB {
                dst[width..].fill(zero);
            }
        };
        let lanes_of = |values: &[F]| -> Lanes<F> {
            if width == NB {
                return values[..NB].try_into().expect("NB values");
            }
            let mut out = [zero; NB];
            for (o, &v) in out.iter_mut().zip(&values[..width]) {
                *o = v;
            }
            out
        };
        let (g_row, e_row) = (rows - 1, s_n);
        for s in (0..len).rev() {
            let dv = &self.dynv[(s * self.batch + b) * self.dstride..];
            let load = |slot: &Slot| -> Lanes<F> {
                match *slot {
                    None => [zero; NB],
                    Some(EntryKind::Constant(i)) => [self.consts[i]; NB],
                    Some(EntryKind::Dynamic(i)) => lanes_of(&dv[i * n + j0..]),
                }
            };
            for (d, e) in jpp.iter_mut().zip(&p.jpp) {
                *d = load(e);
            }
            for (d, e) in bext.iter_mut().zip(&p.bext) {
                *d = load(e);
            }
            for (d, e) in jz.iter_mut().zip(&p.jz) {
                *d = load(e);
            }
            for (d, e) in bz.iter_mut().zip(&p.bz) {
                *d = load(e);
            }
            // Λ^s = L^s + κ Λ^{s+1}; ē's signal is a unit at the chunk's last step.
            let signal = lanes_of(&self.signal[(s * self.batch + b) * n + j0..]);
            let unit = if s + 1 == len { <F as Real>::one() } else { zero };
            for l in 0..NB {
                lam[l] = signal[l] + kappa * lam[l];
                lam_e[l] = unit + kappa * lam_e[l];
            }
            // Per presynaptic row c of the step: c_G = Λ B̃z + q_G B̃, c_E likewise,
            // D = Φ(t0+len, s) B̃.
            for (c, bzc) in bz.iter().enumerate() {
                for l in 0..NB {
                    cg[c][l] = lam[l] * bzc[l];
                    ce[c][l] = lam_e[l] * bzc[l];
                }
            }
            lanes_matmul_acc(cg, qg, bext, (1, s_n, w));
            lanes_matmul_acc(ce, qe, bext, (1, s_n, w));
            dd.fill([zero; NB]);
            lanes_matmul_acc(dd, phi, bext, (s_n, s_n, w));
            // Fold the factorised rows into the activity: a row's coefficient of p^s is its
            // own plus ρ·b, and ρ ← c_F + ρ A carries the rest back to the chunk's start.
            let fold = |c: &[Lanes<F>], rho: &mut [Lanes<F>], next: &mut [Lanes<F>], row: usize, coef: &mut [F]| {
                let mut v = c[f_n];
                for f in 0..f_n {
                    let bf = b_f[f];
                    for l in 0..NB {
                        v[l] += rho[f][l] * bf;
                    }
                }
                put(coef, row, f_n + s, &v);
                for f2 in 0..f_n {
                    let mut acc = c[f2];
                    for f in 0..f_n {
                        let a = a_ff[f * f_n + f2];
                        for l in 0..NB {
                            acc[l] += rho[f][l] * a;
                        }
                    }
                    next[f2] = acc;
                }
                for (r, x) in rho.iter_mut().zip(next.iter()) {
                    *r = *x;
                }
            };
            fold(cg, rho_g, next, g_row, coef);
            if self.filtered {
                fold(ce, rho_e, next, e_row, coef);
            }
            for a in 0..s_n {
                fold(
                    &dd[a * w..(a + 1) * w],
                    &mut rho_d[a * f_n..(a + 1) * f_n],
                    next,
                    a,
                    coef,
                );
            }
            // q^{s-1} = Λ^s Jz^s + q^s J^s; Φ(t0+len, s-1) = Φ(t0+len, s) J^s.
            let filtered_q = if self.filtered { Some((&mut *qe, &*lam_e)) } else { None };
            for (q, lm) in std::iter::once((&mut *qg, &*lam)).chain(filtered_q) {
                for (t, jza) in tmp.iter_mut().zip(jz.iter()) {
                    for l in 0..NB {
                        t[l] = lm[l] * jza[l];
                    }
                }
                lanes_matmul_acc(tmp, q, jpp, (1, s_n, s_n));
                for (x, t) in q.iter_mut().zip(tmp.iter()) {
                    *x = *t;
                }
            }
            tmp.fill([zero; NB]);
            lanes_matmul_acc(tmp, phi, jpp, (s_n, s_n, s_n));
            for (x, t) in phi.iter_mut().zip(tmp.iter()) {
                *x = *t;
            }
        }
        // The factorised rows at the chunk's start.
        for f in 0..f_n {
            put(coef, g_row, f, &rho_g[f]);
            if self.filtered {
                put(coef, e_row, f, &rho_e[f]);
            }
            for a in 0..s_n {
                put(coef, a, f, &rho_d[a * f_n + f]);
            }
        }
        let sl = scal_len(s_n);
        for l in 0..width {
            let e = &mut scal[(l * self.batch + b) * sl..][..sl];
            e[0] = kappa * lam[l];
            e[1] = kappa * lam_e[l];
            for a in 0..s_n {
                e[2 + a] = qg[a][l];
                e[2 + s_n + a] = qe[a][l];
            }
            for x in 0..s_n * s_n {
                e[2 + 2 * s_n + x] = phi[x][l];
            }
        }
    }

    /// Closes the chunk for neurons `j0..j1` (`block` holds their regions): per chunked
    /// source, whole groups of [`MR`] neurons through the register kernel
    /// ([`Chunk::close_groups`]), the rest synapse by synapse ([`Chunk::close_neuron`]).
    fn close_block(
        &self,
        coefs: &[Option<PortChunk<F>>],
        sources: &[SourceTraces<F>],
        starts: &[usize],
        (j0, j1): (usize, usize),
        block: &mut [F],
        len: usize,
    ) {
        let (batch, filtered) = (self.batch, self.filtered);
        let base = starts[j0];
        // Offset of each non-windowed source inside neuron j's region.
        let offset = |j: usize, si: usize| {
            starts[j] - base
                + sources[..si]
                    .iter()
                    .filter(|s| !s.windowed)
                    .map(|s| s.region(j, batch, filtered))
                    .sum::<usize>()
        };
        for (si, s) in sources.iter().enumerate() {
            if !s.chunked {
                continue;
            }
            let pc = coefs[s.port].as_ref().expect("a chunked port");
            // Whole groups of MR neurons, then the rest one neuron at a time.
            let grouped = (j1 - j0) / MR * MR;
            let mut end = 0;
            let ranges: [(usize, usize); CLOSE_BLOCK] = std::array::from_fn(|l| {
                if l < grouped {
                    let j = j0 + l;
                    let range = (offset(j, si), s.region(j, batch, filtered));
                    end = range.0 + range.1;
                    range
                } else {
                    (end, 0)
                }
            });
            let mut regions = disjoint_mut(block, ranges);
            self.close_groups(pc, s, j0, &mut regions[..grouped], len);
            for j in j0 + grouped..j1 {
                let at = offset(j, si);
                let src = &mut block[at..at + s.region(j, batch, filtered)];
                self.close_neuron(pc, s, j, src, len);
            }
        }
    }

    /// Whole groups of [`MR`] neurons from `j0` of dense source `s`, `regions` their parts of
    /// the arena: [`advance`] for every neuron and sample, then, panel by panel of
    /// presynaptic neurons, the products for each sample's per-synapse rows and ē, and the
    /// gradient's product over every sample at once.
    fn close_groups(&self, pc: &PortChunk<F>, s: &SourceTraces<F>, j0: usize, regions: &mut [&mut [F]], len: usize) {
        let (batch, filtered, k) = (self.batch, self.filtered, self.steps);
        let (s_n, m) = (pc.partials.s, s.n_pre);
        let pp = rows_per_sample(k, pc.partials.f);
        let (rows, bp, sl) = (pc.partials.rows(filtered), batch * pp, scal_len(s_n));
        let span = bp * NR;
        let ebar_at = batch * s_n * m;
        let grad_at = ebar_at + if filtered { batch * m } else { 0 };
        for (l, region) in regions.iter_mut().enumerate() {
            for b in 0..batch {
                let sc = &pc.scal[((j0 + l) * batch + b) * sl..][..sl];
                let (syn, ebar, grad) = self.sample_parts(region, s_n, m, b);
                advance_rows(s_n, sc, (syn, m, 0), ebar, grad);
            }
        }
        // The rows in use: the factorised traces at the chunk's start, then `len` steps.
        let depth = pc.partials.f + len;
        for c in (0..m).step_by(NR) {
            let width = NR.min(m - c);
            let panel = &s.rows[(c / NR) * span..][..span];
            for (g, group) in regions.chunks_exact_mut(MR).enumerate() {
                let group: &mut [&mut [F]; MR] = group.try_into().expect("MR neurons");
                // The group's lanes in its sweep block's coefficient rows (stride NB).
                let j = j0 + g * MR;
                let coef = &pc.coef[(j / NB) * rows * bp * NB + j % NB..][..rows * bp * NB - j % NB];
                for b in 0..batch {
                    let u = &panel[b * pp * NR..][..depth * NR];
                    let mut product = |row: usize, at: usize| {
                        let a = &coef[(row * bp + b * pp) * NB..][..(depth - 1) * NB + MR];
                        with_rows(group, at + c, width, |block| F::register_block::<NB>(a, u, block));
                    };
                    for a in 0..s_n {
                        product(a, b * s_n * m + a * m);
                    }
                    if filtered {
                        product(s_n, ebar_at + b * m);
                    }
                    product(rows - 1, grad_at);
                }
            }
        }
    }

    /// One neuron `j` of source `s` (its region `src`), synapse by synapse: per sample,
    /// [`advance`] then every row's sum over the presynaptic rows.
    fn close_neuron(&self, pc: &PortChunk<F>, s: &SourceTraces<F>, j: usize, src: &mut [F], len: usize) {
        let (batch, filtered, k) = (self.batch, self.filtered, self.steps);
        let (s_n, m) = (pc.partials.s, s.n_pre);
        let pp = rows_per_sample(k, pc.partials.f);
        let (rows, bp, sl) = (pc.partials.rows(filtered), batch * pp, scal_len(s_n));
        let block = &pc.coef[(j / NB) * rows * bp * NB..][..rows * bp * NB];
        let (lane, depth) = (j % NB, pc.partials.f + len);
        let span = bp * NR;
        for b in 0..batch {
            let (syn, ebar, grad) = self.sample_parts(src, s_n, m, b);
            let sc = &pc.scal[(j * batch + b) * sl..][..sl];
            advance_rows(s_n, sc, (&mut *syn, m, 0), &mut *ebar, &mut *grad);
            for i in 0..m {
                let u = &s.rows[(i / NR) * span + b * pp * NR + i % NR..];
                let dot = |row: usize| {
                    let cr = &block[(row * bp + b * pp) * NB + lane..];
                    let mut acc = <F as Real>::zero();
                    for x in 0..depth {
                        acc += cr[x * NB] * u[x * NR];
                    }
                    acc
                };
                for a in 0..s_n {
                    syn[a * m + i] += dot(a);
                }
                if filtered {
                    ebar[i] += dot(s_n);
                }
                grad[i] += dot(rows - 1);
            }
        }
    }

    /// Sample `b`'s parts of one neuron's region of a source with `m` synapses and `s_n`
    /// per-synapse rows (`[B][S][m]` traces, `[B][m]` filtered traces when filtered, then the
    /// `[m]` gradient): its traces, its filtered traces (empty when unfiltered), the gradient.
    fn sample_parts<'r>(
        &self,
        region: &'r mut [F],
        s_n: usize,
        m: usize,
        b: usize,
    ) -> (&'r mut [F], &'r mut [F], &'r mut [F]) {
        let batch = self.batch;
        let (syn_all, rest) = region.split_at_mut(batch * s_n * m);
        let (ebar_all, grad) = rest.split_at_mut(if self.filtered { batch * m } else { 0 });
        let ebar: &mut [F] = if self.filtered {
            &mut ebar_all[b * m..(b + 1) * m]
        } else {
            &mut []
        };
        (&mut syn_all[b * s_n * m..(b + 1) * s_n * m], ebar, &mut grad[..m])
    }

    /// Bytes this chunk keeps (its sources' presynaptic rows are counted with them).
    pub(super) fn bytes(&self) -> usize {
        let ports = (self.ports.iter().flatten())
            .map(|p| p.coef.len() + p.scal.len() + p.scratch.len() * NB + p.a_ff.len() + p.b_f.len());
        (self.consts.len() + self.dynv.len() + self.signal.len() + ports.sum::<usize>()) * size_of::<F>()
    }
}

/// `out += a · b` for small matrices of lanes (`[rows, inner] · [inner, cols]`, row-major),
/// each lane its own product, the terms added to `out` in the order of `inner`.
fn lanes_matmul_acc<F: Float>(
    out: &mut [Lanes<F>],
    a: &[Lanes<F>],
    b: &[Lanes<F>],
    (rows, inner, cols): (usize, usize, usize),
) {
    for r in 0..rows {
        for c in 0..cols {
            let mut v = out[r * cols + c];
            for i in 0..inner {
                let (x, y) = (&a[r * inner + i], &b[i * cols + c]);
                for l in 0..NB {
                    v[l] += x[l] * y[l];
                }
            }
            out[r * cols + c] = v;
        }
    }
}

/// The products of a chunk close for one sample, as [`Chunk::close_groups`] runs them, on a
/// plain row-major `dst` (`[n, m]`, `n` a multiple of [`MR`]): `dst[j, i] += Σ_x
/// coef[x, j] · rows[x, i]` with `coef` in the sweep's layout (`[n/NB][depth][NB]`) and
/// `rows` in panels (`[m/NR][depth][NR]`). For the benchmark against the `gemm` crate on the
/// same shapes.
#[doc(hidden)]
pub fn chunk_product(dst: &mut [f32], (n, m, depth): (usize, usize, usize), coef: &[f32], rows: &[f32]) {
    assert!(
        n.is_multiple_of(MR) && dst.len() == n * m,
        "dst is [n, m] with n a multiple of 4"
    );
    assert!(coef.len() >= n.div_ceil(NB) * depth * NB && rows.len() >= m.div_ceil(NR) * depth * NR);
    for (g, group) in dst.chunks_exact_mut(MR * m).enumerate() {
        let mut it = group.chunks_exact_mut(m);
        let mut group: [&mut [f32]; MR] = std::array::from_fn(|_| it.next().expect("MR rows"));
        let j = g * MR;
        let a = &coef[(j / NB) * depth * NB + j % NB..][..(depth - 1) * NB + MR];
        for c in (0..m).step_by(NR) {
            let u = &rows[(c / NR) * depth * NR..][..depth * NR];
            with_rows(&mut group, c, NR.min(m - c), |block| {
                <f32 as crate::linalg::block::RegisterBlock>::register_block::<NB>(a, u, block)
            });
        }
    }
}

/// `N` disjoint mutable parts of `s`, given as `(start, len)` in increasing order.
fn disjoint_mut<F, const N: usize>(s: &mut [F], ranges: [(usize, usize); N]) -> [&mut [F]; N] {
    let mut rest = s;
    let mut consumed = 0;
    let mut parts = ranges.map(|(start, len)| {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(start - consumed);
        let (part, tail) = tail.split_at_mut(len);
        rest = tail;
        consumed = start + len;
        Some(part)
    });
    std::array::from_fn(|l| parts[l].take().expect("one part per range"))
}

/// Runs `f` on the `MR`×`NR` block at `regions[l][at..at + width]`: on the rows themselves
/// when the block is whole, through a zero-padded copy at a row's last, narrower panel.
#[inline(always)]
fn with_rows<F: Float>(regions: &mut [&mut [F]; MR], at: usize, width: usize, f: impl FnOnce([&mut [F; NR]; MR])) {
    if width == NR {
        let mut it = regions.iter_mut();
        f(std::array::from_fn(|_| {
            let r = it.next().expect("MR rows");
            (&mut r[at..at + NR]).try_into().expect("NR columns")
        }));
    } else {
        let mut acc = [[<F as Real>::zero(); NR]; MR];
        for (acc_r, r) in acc.iter_mut().zip(regions.iter()) {
            for (a, &v) in acc_r.iter_mut().zip(&r[at..at + width]) {
                *a = v;
            }
        }
        f(acc.each_mut());
        for (acc_r, r) in acc.iter().zip(regions.iter_mut()) {
            for (v, &a) in r[at..at + width].iter_mut().zip(acc_r) {
                *v = a;
            }
        }
    }
}

/// [`advance`] for `s_n` per-synapse rows, specialised for the common counts. `syn` is
/// `(rows, stride, c0)`: row `a` of the segment is `rows[a·stride + c0..][..grad.len()]`.
fn advance_rows<F: Float>(s_n: usize, sc: &[F], syn: (&mut [F], usize, usize), ebar: &mut [F], grad: &mut [F]) {
    match s_n {
        0 => advance::<F, 0>(sc, syn, ebar, grad),
        1 => advance::<F, 1>(sc, syn, ebar, grad),
        2 => advance::<F, 2>(sc, syn, ebar, grad),
        3 => advance::<F, 3>(sc, syn, ebar, grad),
        _ => advance_any(s_n, sc, syn, ebar, grad),
    }
}

/// `G += a_G ē + q_G·ε`, `ē ← a_E ē + q_E·ε`, `ε ← Φ ε` over one segment of synapses
/// (`ebar` empty when unfiltered), `S` known at compile time.
fn advance<F: Float, const S: usize>(
    sc: &[F],
    (syn, stride, c0): (&mut [F], usize, usize),
    ebar: &mut [F],
    grad: &mut [F],
) {
    let len = grad.len();
    if S == 0 && ebar.is_empty() {
        return;
    }
    let (ag, ae) = (sc[0], sc[1]);
    let qg: [F; S] = std::array::from_fn(|a| sc[2 + a]);
    let qe: [F; S] = std::array::from_fn(|a| sc[2 + S + a]);
    let phi: [[F; S]; S] = std::array::from_fn(|a| std::array::from_fn(|c| sc[2 + 2 * S + a * S + c]));
    let mut rows = syn.chunks_mut(stride.max(1));
    let rows: [&mut [F]; S] = std::array::from_fn(|_| &mut rows.next().expect("S rows")[c0..c0 + len]);
    let step = |i: usize, rows: &mut [&mut [F]; S], g: &mut F, eb: Option<&mut F>| {
        let eps: [F; S] = std::array::from_fn(|a| rows[a][i]);
        for a in 0..S {
            *g += qg[a] * eps[a];
        }
        if let Some(eb) = eb {
            let old = *eb;
            *g += ag * old;
            let mut e = ae * old;
            for a in 0..S {
                e += qe[a] * eps[a];
            }
            *eb = e;
        }
        for a in 0..S {
            let mut v = <F as Real>::zero();
            for c in 0..S {
                v += phi[a][c] * eps[c];
            }
            rows[a][i] = v;
        }
    };
    let mut rows = rows;
    if ebar.is_empty() {
        for (i, g) in grad.iter_mut().enumerate() {
            step(i, &mut rows, g, None);
        }
    } else {
        for (i, (g, eb)) in grad.iter_mut().zip(&mut ebar[..len]).enumerate() {
            step(i, &mut rows, g, Some(eb));
        }
    }
}

/// [`advance`] for any number of per-synapse rows.
fn advance_any<F: Float>(
    s_n: usize,
    sc: &[F],
    (syn, stride, c0): (&mut [F], usize, usize),
    ebar: &mut [F],
    grad: &mut [F],
) {
    let (ag, ae) = (sc[0], sc[1]);
    let (qg, qe, phi) = (&sc[2..2 + s_n], &sc[2 + s_n..2 + 2 * s_n], &sc[2 + 2 * s_n..]);
    let mut eps = [<F as Real>::zero(); crate::network::MAX_STATES];
    for (i, g) in grad.iter_mut().enumerate() {
        for a in 0..s_n {
            eps[a] = syn[a * stride + c0 + i];
        }
        for a in 0..s_n {
            *g += qg[a] * eps[a];
        }
        if !ebar.is_empty() {
            let eb = ebar[i];
            *g += ag * eb;
            let mut e = ae * eb;
            for a in 0..s_n {
                e += qe[a] * eps[a];
            }
            ebar[i] = e;
        }
        for a in 0..s_n {
            let mut v = <F as Real>::zero();
            for c in 0..s_n {
                v += phi[a * s_n + c] * eps[c];
            }
            syn[a * stride + c0 + i] = v;
        }
    }
}
