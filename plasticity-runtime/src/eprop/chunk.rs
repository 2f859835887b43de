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
//! over `F + K` presynaptic rows `u`: the `F` factorised traces at the chunk's start, then
//! the activity at each of its steps. Every coefficient is per postsynaptic neuron and sample
//! and comes from one backward sweep over the chunk in neuron space, vectorised over neurons.
//! The per-synapse arrays are then read and written once per chunk instead of once per step,
//! in one pass ([`close_block`]) that also adds the sums over `x`. A chunked source keeps its
//! traces by blocks of [`NB`] postsynaptic neurons, one vector lane each ([`SourceChunk`]),
//! and its activity as the nonzero entries of each presynaptic neuron, so a sum over `x`
//! costs one fused multiply-add per lane block and nonzero entry: spiking activity, mostly
//! zero, costs a fraction of a dense product. Only dense sources are chunked: sparse
//! projections keep the step-by-step kernel.

use rayon::prelude::*;

use super::{Presynaptic, SourceTraces};
use crate::model::{EntryKind, Matrix, Pattern, RowLayout};
use crate::network::MAX_STATES;
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

/// Longest chunk the automatic choice makes. 64 is faster still for models with two
/// per-synapse rows, but costs as much memory again (performance.md, "Chunked e-prop").
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

/// Presynaptic neurons per tile of [`close_block`]: a tile's traces for every sample stay in
/// the L1 or L2 cache between its two passes.
const CLOSE_TILE: usize = 32;

/// Lane vectors a step copies into its chunk below which the copies and the activity's record
/// run one after the other rather than on two threads.
const MIN_JOIN: usize = 1 << 10;

/// Work, in lane vectors, below which a block of neurons shares its parallel task with the next
/// ones: small populations, or shards that already run in parallel, close in few tasks.
const MIN_TASK: usize = 1 << 14;

/// Blocks of neurons per parallel task when each block has `per_block` lane vectors of work.
fn blocks_per_task(per_block: usize) -> usize {
    (MIN_TASK / per_block.max(1)).max(1)
}

/// Neurons per block of the backward sweep and of a chunked source's traces, one vector
/// lane each.
const NB: usize = 16;

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

    /// Coefficient rows of a chunk ([`coef_rows`]).
    fn rows(&self, filtered: bool) -> usize {
        coef_rows(self.s, filtered)
    }
}

/// Coefficient rows of a chunk for `s` per-synapse rows: `D` of each per-synapse row, then
/// ē's (when `filtered`), then the gradient's.
const fn coef_rows(s: usize, filtered: bool) -> usize {
    s + filtered as usize + 1
}

/// One port's chunk coefficients.
#[derive(Clone, Debug)]
struct PortChunk<F> {
    partials: PortPartials,
    /// Coefficient rows, `R = S + (1 if filtered) + 1` of them (`D` of each per-synapse row,
    /// then ē's, then the gradient's), for each sample's `P = F + K` presynaptic rows, by
    /// blocks of the sweep's neurons: `[n/NB blocks][B][P][R][NB]`, zero past the last neuron.
    coef: Vec<F>,
    /// Per block of neurons and sample, `[n/NB][B][2 + 2S + S²][NB]`: `a_G`, `a_E`, `q_G`,
    /// `q_E`, `Φ`, zero past the last neuron.
    scal: Vec<F>,
    /// The values of [`PortPartials::a_ff`] and [`PortPartials::b_f`] during the chunk.
    a_ff: Vec<F>,
    b_f: Vec<F>,
}

/// Lane vectors of one block's and sample's [`PortChunk::scal`] entry.
fn scal_len(s: usize) -> usize {
    2 + 2 * s + s * s
}

/// The open chunk of one population: K steps of per-neuron partials and learning signals, and
/// the sweep's coefficients; each chunked source keeps its own side of it ([`SourceChunk`]).
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
    /// Per block of [`NB`] neurons, sample and step, the `ND` dynamic partials then the
    /// learning signal, `[n/NB][B][K][ND + 1]` lanes: a sweep reads its block's and sample's
    /// steps from one contiguous run.
    steps_lanes: Vec<Lanes<F>>,
    /// Dynamic partials per neuron (ND).
    nd: usize,
    /// Per port, its coefficients when it has chunked sources.
    ports: Vec<Option<PortChunk<F>>>,
}

/// Presynaptic rows per sample of a chunk of `steps` steps for `f` factorised rows.
fn rows_per_sample(steps: usize, f: usize) -> usize {
    steps + f
}

impl<F: Float> Chunk<F> {
    /// A chunk of `steps` steps for a population of `n` neurons with the given constants,
    /// whose chunked sources hold a [`SourceChunk`]. `kappa` is the readout's leak, used only
    /// when the traces are `filtered`.
    pub(super) fn new(
        pattern: &Pattern,
        consts: &[F],
        sources: &[SourceTraces<F>],
        (steps, batch, n, nd): (usize, usize, usize, usize),
        kappa: F,
        filtered: bool,
    ) -> Self {
        let zeros = |len: usize| vec![<F as Real>::zero(); len];
        let ports = (0..pattern.ports.len())
            .map(|port| {
                sources.iter().any(|s| s.chunk.is_some() && s.port == port).then(|| {
                    let partials = PortPartials::new(pattern, port);
                    let rows = partials.rows(filtered);
                    let p = rows_per_sample(steps, partials.f);
                    PortChunk {
                        coef: zeros(n.div_ceil(NB) * NB * rows * batch * p),
                        scal: zeros(n.div_ceil(NB) * NB * batch * scal_len(partials.s)),
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
            steps_lanes: vec![[<F as Real>::zero(); NB]; n.div_ceil(NB) * batch * steps * (nd + 1)],
            nd,
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
        let (slot, batch) = (self.len, self.batch);
        if slot == 0 {
            self.consts.copy_from_slice(consts);
        }
        let (n, nd, k) = (self.n, self.nd, self.steps);
        let dstride = (n * nd).max(1);
        // The copies and the activity's record touch different buffers: one thread each, when
        // there is enough to copy (shards that already run in parallel gain nothing from it).
        let per_step = self.steps_lanes.len() / k.max(1);
        let steps_lanes = &mut self.steps_lanes;
        let mut copy = move || {
            for (blk, lanes) in steps_lanes.chunks_exact_mut(batch * k * (nd + 1)).enumerate() {
                let (j0, width) = (blk * NB, NB.min(n - blk * NB));
                for b in 0..batch {
                    let dst = &mut lanes[(b * k + slot) * (nd + 1)..][..nd + 1];
                    // A whole block as one fixed-size copy; the last, narrower one lane by lane.
                    let put = |lane: &mut Lanes<F>, src: &[F]| match <&Lanes<F>>::try_from(&src[..width]) {
                        Ok(whole) => *lane = *whole,
                        Err(_) => lane[..width].copy_from_slice(&src[..width]),
                    };
                    for (d, lane) in dst[..nd].iter_mut().enumerate() {
                        put(lane, &dynv[b * dstride + d * n + j0..]);
                    }
                    put(&mut dst[nd], &signal[b * n + j0..]);
                }
            }
        };
        let mut record = || {
            for s in sources.iter_mut() {
                let Some(chunk) = &mut s.chunk else { continue };
                let fact_len = s.factorised * s.n_pre;
                for b in 0..batch {
                    chunk.record(slot, b, pre.row(s.source, b), &s.fact[b * fact_len..][..fact_len]);
                }
            }
        };
        if per_step >= MIN_JOIN {
            rayon::join(copy, record);
        } else {
            copy();
            record();
        }
        self.len += 1;
    }

    /// Closes the chunk: adds its gradient and advances every chunked source's traces to its
    /// end. Does nothing when the chunk is empty.
    pub(super) fn flush(&mut self, sources: &mut [SourceTraces<F>]) {
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
            let sl = scal_len(partials.s);
            let bp = batch * rows_per_sample(k, partials.f);
            let sweep = sweep_kernel::<F>(partials.s, partials.f, filtered);
            pc.coef
                .par_chunks_mut(NB * rows * bp)
                .zip(pc.scal.par_chunks_mut(NB * batch * sl))
                .enumerate()
                // A step of the sweep costs some 32 lane operations per sample.
                .with_min_len(blocks_per_task(32 * batch * len))
                .for_each(|(blk, (coef, scal))| {
                    for b in 0..batch {
                        sweep(this, partials, (a_ff, b_f), (len, blk * NB, b), coef, scal);
                    }
                });
        }
        for s in sources.iter_mut() {
            if let Some(chunk) = &mut s.chunk {
                chunk.close(ports[s.port].as_ref().expect("a chunked port"));
            }
        }
        self.ports = ports;
    }

    /// The backward sweep over the chunk's `len` steps for sample `b` and the block of
    /// neurons from `j0` (vectorised over them): writes the block's coefficients (`coef`) and
    /// `scal` entries. Its state lives in arrays of `S` per-synapse rows, `FF` factorised
    /// rows and `W = FF + 1` presynaptic columns; when `DYN`, those are capacities and the
    /// port's own counts bound the loops ([`sweep_kernel`]).
    fn sweep<const S: usize, const FF: usize, const W: usize, const DYN: bool, const FILTERED: bool>(
        &self,
        p: &PortPartials,
        (a_ff, b_f): (&[F], &[F]),
        (len, j0, b): (usize, usize, usize),
        coef: &mut [F],
        scal: &mut [F],
    ) {
        let zero = <F as Real>::zero();
        let z = [zero; NB];
        let (s_n, f_n) = if DYN { (p.s, p.f) } else { (S, FF) };
        let w = f_n + 1;
        let (k, n, kappa) = (self.steps, self.n, self.kappa);
        let width = NB.min(n - j0);
        let rows = coef_rows(s_n, FILTERED);
        let pp = rows_per_sample(k, f_n);
        // λ, λ_E, q_G, q_E, Φ, the step's J, B̃, Jz, B̃z, the factorised rows' ρ_G, ρ_E, ρ_D,
        // and the step's c_G, c_E, D.
        let (mut lam, mut lam_e) = (z, z);
        let (mut qg, mut qe) = ([z; S], [z; S]);
        let mut phi = [[z; S]; S];
        for (a, row) in phi.iter_mut().enumerate().take(s_n) {
            row[a] = [<F as Real>::one(); NB];
        }
        let (mut jpp, mut bext, mut jz, mut bz) = ([[z; S]; S], [[z; W]; S], [z; S], [z; W]);
        let (mut rho_g, mut rho_e, mut rho_d) = ([z; FF], [z; FF], [[z; FF]; S]);
        let (mut cg, mut ce, mut dd) = ([z; W], [z; W], [[z; W]; S]);
        // Coefficient (row, x) of the block's neurons: NB lanes, zero past the last neuron.
        let put = |coef: &mut [F], row: usize, x: usize, v: &Lanes<F>| {
            let dst: &mut Lanes<F> = (&mut coef[((b * pp + x) * rows + row) * NB..][..NB])
                .try_into()
                .expect("NB lanes");
            *dst = *v;
            if width < NB {
                dst[width..].fill(zero);
            }
        };
        let (g_row, e_row) = (rows - 1, s_n);
        let nd = self.nd;
        let block = &self.steps_lanes[((j0 / NB) * self.batch + b) * k * (nd + 1)..][..k * (nd + 1)];
        for s in (0..len).rev() {
            let dv = &block[s * (nd + 1)..][..nd + 1];
            let load = |slot: &Slot| -> Lanes<F> {
                match *slot {
                    None => z,
                    Some(EntryKind::Constant(i)) => [self.consts[i]; NB],
                    Some(EntryKind::Dynamic(i)) => dv[i],
                }
            };
            for a in 0..s_n {
                for c in 0..s_n {
                    jpp[a][c] = load(&p.jpp[a * s_n + c]);
                }
                for c in 0..w {
                    bext[a][c] = load(&p.bext[a * w + c]);
                }
                jz[a] = load(&p.jz[a]);
            }
            for c in 0..w {
                bz[c] = load(&p.bz[c]);
            }
            // Λ^s = L^s + κ Λ^{s+1}; ē's signal is a unit at the chunk's last step.
            let signal = dv[nd];
            let unit = if s + 1 == len { <F as Real>::one() } else { zero };
            for l in 0..NB {
                lam[l] = signal[l] + kappa * lam[l];
                lam_e[l] = unit + kappa * lam_e[l];
            }
            // Per presynaptic column c of the step: c_G = Λ B̃z + q_G B̃, c_E likewise (when
            // filtered), D = Φ(t0+len, s) B̃.
            let row_times = |out: &mut Lanes<F>, q: &[Lanes<F>; S], c: usize| {
                for (qa, ba) in q.iter().zip(&bext).take(s_n) {
                    for l in 0..NB {
                        out[l] += qa[l] * ba[c][l];
                    }
                }
            };
            for c in 0..w {
                for l in 0..NB {
                    cg[c][l] = lam[l] * bz[c][l];
                }
                row_times(&mut cg[c], &qg, c);
                if FILTERED {
                    for l in 0..NB {
                        ce[c][l] = lam_e[l] * bz[c][l];
                    }
                    row_times(&mut ce[c], &qe, c);
                }
                for a in 0..s_n {
                    dd[a][c] = z;
                    row_times(&mut dd[a][c], &phi[a], c);
                }
            }
            // Fold the factorised rows into the activity: a row's coefficient of p^s is its
            // own plus ρ·b, and ρ ← c_F + ρ A carries the rest back to the chunk's start.
            let fold = |c: &[Lanes<F>; W], rho: &mut [Lanes<F>; FF], row: usize, coef: &mut [F]| {
                let mut v = c[f_n];
                for f in 0..f_n {
                    let bf = b_f[f];
                    for l in 0..NB {
                        v[l] += rho[f][l] * bf;
                    }
                }
                put(coef, row, f_n + s, &v);
                let mut next = [z; FF];
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
                rho[..f_n].copy_from_slice(&next[..f_n]);
            };
            fold(&cg, &mut rho_g, g_row, coef);
            if FILTERED {
                fold(&ce, &mut rho_e, e_row, coef);
            }
            for a in 0..s_n {
                fold(&dd[a], &mut rho_d[a], a, coef);
            }
            // q^{s-1} = Λ^s Jz^s + q^s J^s; Φ(t0+len, s-1) = Φ(t0+len, s) J^s.
            let times_j = |out: &mut [Lanes<F>; S], q: &[Lanes<F>; S]| {
                for (c, o) in out.iter_mut().enumerate().take(s_n) {
                    for (qa, ja) in q.iter().zip(&jpp).take(s_n) {
                        for l in 0..NB {
                            o[l] += qa[l] * ja[c][l];
                        }
                    }
                }
            };
            let filtered_q = if FILTERED { Some((&mut qe, &lam_e)) } else { None };
            for (q, lm) in std::iter::once((&mut qg, &lam)).chain(filtered_q) {
                let mut next = [z; S];
                for (t, jza) in next.iter_mut().zip(&jz).take(s_n) {
                    for l in 0..NB {
                        t[l] = lm[l] * jza[l];
                    }
                }
                times_j(&mut next, q);
                *q = next;
            }
            let mut next = [[z; S]; S];
            for (o, row) in next.iter_mut().zip(&phi).take(s_n) {
                times_j(o, row);
            }
            phi = next;
        }
        // The factorised rows at the chunk's start.
        for f in 0..f_n {
            put(coef, g_row, f, &rho_g[f]);
            if FILTERED {
                put(coef, e_row, f, &rho_e[f]);
            }
            for a in 0..s_n {
                put(coef, a, f, &rho_d[a][f]);
            }
        }
        // The block's `a_G, a_E, q_G, q_E, Φ` for this sample, zero past the last neuron.
        let sl = scal_len(s_n);
        let scaled = |v: &Lanes<F>| -> Lanes<F> { std::array::from_fn(|l| kappa * v[l]) };
        let values = [scaled(&lam), scaled(&lam_e)].into_iter();
        let values = values.chain(qg.into_iter().take(s_n)).chain(qe.into_iter().take(s_n));
        let values = values.chain(phi.iter().take(s_n).flat_map(|row| row.iter().take(s_n).copied()));
        for (dst, v) in scal[b * sl * NB..][..sl * NB].chunks_exact_mut(NB).zip(values) {
            dst[..width].copy_from_slice(&v[..width]);
            dst[width..].fill(zero);
        }
    }

    /// Bytes this chunk keeps (its sources' traces and presynaptic sides are counted with
    /// them, [`SourceChunk::bytes`]).
    pub(super) fn bytes(&self) -> usize {
        let ports = (self.ports.iter().flatten()).map(|p| p.coef.len() + p.scal.len() + p.a_ff.len() + p.b_f.len());
        (self.consts.len() + self.steps_lanes.len() * NB + ports.sum::<usize>()) * size_of::<F>()
    }
}

/// The traces of one chunked source, by blocks of [`NB`] postsynaptic neurons (a lane each),
/// and its side of the open chunk: the factorised traces at the chunk's start and the nonzero
/// presynaptic activity of its steps.
#[derive(Clone, Debug)]
pub(super) struct SourceChunk<F> {
    /// Presynaptic neurons (m), per-synapse rows (S), factorised rows (F), samples, steps (K).
    m: usize,
    s: usize,
    f: usize,
    batch: usize,
    steps: usize,
    filtered: bool,
    /// `[n/NB blocks][m·B·S + (m·B if filtered) + m]` lanes: per presynaptic neuron and
    /// sample its `S` per-synapse traces (`[m][B][S]`), its κ-filtered traces (`[m][B]`), then
    /// the gradient (`[m]`). Lanes past the population's last neuron stay zero.
    lanes: Vec<Lanes<F>>,
    /// The factorised traces at the chunk's start, `[m][B][F]`.
    fact0: Vec<F>,
    /// Per presynaptic neuron `i` and sample `b`, its nonzero activity in the chunk as
    /// `(step, value)`: up to K entries from `(i·B + b)·K`, `count[i·B + b]` of them, while the
    /// chunk is open; packed in the same order when it closes, those of `(i, b)` from
    /// `offsets[i·B + b]` to `offsets[i·B + b + 1]`, so that every block of neurons reads
    /// them as one short stream.
    active: Vec<(u32, F)>,
    count: Vec<u32>,
    offsets: Vec<u32>,
    /// The traces are zero, as at a sequence's start, and their lanes hold stale values: the
    /// next close reads none of them, and so a new sequence costs no pass to zero them.
    fresh: bool,
}

impl<F: Float> SourceChunk<F> {
    /// Zeroed traces of a dense source of `m` presynaptic neurons onto `n` neurons, with `s`
    /// per-synapse and `f` factorised rows, for chunks of `steps` steps.
    pub(super) fn new(
        (n, m): (usize, usize),
        (s, f): (usize, usize),
        (batch, steps): (usize, usize),
        filtered: bool,
    ) -> Self {
        let zero = <F as Real>::zero();
        let mut chunk = SourceChunk {
            m,
            s,
            f,
            batch,
            steps,
            filtered,
            lanes: Vec::new(),
            fact0: vec![zero; m * batch * f],
            active: vec![(0, zero); m * batch * steps],
            count: vec![0; m * batch],
            offsets: vec![0; m * batch + 1],
            fresh: false,
        };
        chunk.lanes = vec![[zero; NB]; n.div_ceil(NB) * chunk.block_len()];
        chunk
    }

    /// Lanes per block of [`NB`] neurons.
    fn block_len(&self) -> usize {
        self.m * (self.batch * self.s + if self.filtered { self.batch } else { 0 } + 1)
    }

    /// Lanes of a block's traces (per-synapse and filtered); the gradient follows them.
    fn traces_len(&self) -> usize {
        self.m * self.batch * (self.s + usize::from(self.filtered))
    }

    /// Zeroes the traces (`traces`: marks them [`SourceChunk::fresh`]) or the gradients
    /// (`!traces`).
    pub(super) fn clear(&mut self, traces: bool) {
        if traces {
            self.fresh = true;
            return;
        }
        let (split, block) = (self.traces_len(), self.block_len());
        for blk in self.lanes.chunks_exact_mut(block) {
            blk[split..].fill([<F as Real>::zero(); NB]);
        }
    }

    /// Neuron `j`'s gradient, into `out` (`m` values).
    pub(super) fn gradient(&self, j: usize, out: &mut [F]) {
        let grad = &self.lanes[(j / NB) * self.block_len() + self.traces_len()..][..self.m];
        for (o, g) in out.iter_mut().zip(grad) {
            *o = g[j % NB];
        }
    }

    /// Bytes these traces and the chunk's presynaptic side keep.
    pub(super) fn bytes(&self) -> usize {
        (self.lanes.len() * NB + self.fact0.len()) * size_of::<F>()
            + self.active.len() * size_of::<(u32, F)>()
            + (self.count.len() + self.offsets.len()) * size_of::<u32>()
    }

    /// Records sample `b`'s activity `x` at step `slot` of the chunk, and at its first step the
    /// factorised traces `fact` (`[F][m]`, before the step advances them).
    fn record(&mut self, slot: usize, b: usize, x: &[F], fact: &[F]) {
        let (m, f_n, batch, k) = (self.m, self.f, self.batch, self.steps);
        if slot == 0 {
            for i in 0..m {
                for f in 0..f_n {
                    self.fact0[(i * batch + b) * f_n + f] = fact[f * m + i];
                }
            }
        }
        for (i, &v) in x.iter().enumerate() {
            if v != <F as Real>::zero() {
                let at = i * batch + b;
                let c = &mut self.count[at];
                self.active[at * k + *c as usize] = (slot as u32, v);
                *c += 1;
            }
        }
    }

    /// Closes the chunk for this source: [`close_block`] on every block of neurons with the
    /// port's coefficients `pc`. Empties the recorded activity.
    fn close(&mut self, pc: &PortChunk<F>) {
        let (m, batch, k, filtered) = (self.m, self.batch, self.steps, self.filtered);
        let (s_n, f_n) = (pc.partials.s, pc.partials.f);
        let (rows, pp, sl) = (pc.partials.rows(filtered), rows_per_sample(k, f_n), scal_len(s_n));
        let kernel = close_kernel::<F>(s_n, filtered);
        let (coef, _) = pc.coef.as_chunks::<NB>();
        let (scal, _) = pc.scal.as_chunks::<NB>();
        let block = self.block_len();
        // Pack the activity in place: a list moves only towards the front.
        let mut at = 0;
        for (list, (&c, offset)) in self.count.iter().zip(&mut self.offsets).enumerate() {
            *offset = at as u32;
            // Element by element (the lists are short): `at ≤ list·k`, so no entry is
            // overwritten before it is read.
            for x in 0..c as usize {
                self.active[at + x] = self.active[list * k + x];
            }
            at += c as usize;
        }
        self.offsets[m * batch] = at as u32;
        let act = Activity {
            fact0: &self.fact0,
            active: &self.active,
            offsets: &self.offsets,
            fresh: self.fresh,
        };
        self.lanes
            .par_chunks_mut(block)
            .zip(coef.par_chunks(batch * pp * rows))
            .zip(scal.par_chunks(batch * sl))
            .with_min_len(blocks_per_task(m * batch))
            .for_each(|((lanes, coef), scal)| kernel((s_n, f_n, batch), scal, coef, act, lanes));
        self.count.fill(0);
        self.fresh = false;
    }
}

/// One chunk of `steps` steps of a dense source of `m` presynaptic neurons onto `n` neurons
/// with one per-synapse and one factorised row, unfiltered, for `batch` samples, whose
/// activity at step `t` of sample `b` is 1 where `active(b, t, i)` and 0 elsewhere; returns
/// a closure that records that activity and closes the chunk on one thread, the same code
/// as a training step runs. For the benchmark against the `gemm` crate.
#[doc(hidden)]
pub fn chunk_close_bench(
    (n, m, steps, batch): (usize, usize, usize, usize),
    active: impl Fn(usize, usize, usize) -> bool,
) -> impl FnMut() {
    let partials = PortPartials {
        s: 1,
        f: 1,
        jpp: Vec::new(),
        bext: Vec::new(),
        jz: Vec::new(),
        bz: Vec::new(),
        a_ff: Vec::new(),
        b_f: Vec::new(),
    };
    let (rows, p) = (partials.rows(false), rows_per_sample(steps, 1));
    let value = |x: usize| ((x * 7) % 13) as f32 * 0.01;
    let pc = PortChunk {
        coef: (0..n.div_ceil(NB) * NB * batch * p * rows).map(value).collect(),
        scal: (0..n.div_ceil(NB) * NB * batch * scal_len(1)).map(value).collect(),
        a_ff: Vec::new(),
        b_f: Vec::new(),
        partials,
    };
    let mut chunk = SourceChunk::<f32>::new((n, m), (1, 1), (batch, steps), false);
    let rows_of: Vec<Vec<Vec<f32>>> = (0..steps)
        .map(|t| {
            (0..batch)
                .map(|b| (0..m).map(|i| if active(b, t, i) { 1.0 } else { 0.0 }).collect())
                .collect()
        })
        .collect();
    let fact: Vec<f32> = (0..m).map(value).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    move || {
        pool.install(|| {
            for (t, samples) in rows_of.iter().enumerate() {
                for (b, x) in samples.iter().enumerate() {
                    chunk.record(t, b, x, &fact);
                }
            }
            chunk.close(&pc);
        });
    }
}

/// A source's presynaptic side of a chunk ([`SourceChunk`]).
#[derive(Clone, Copy)]
struct Activity<'a, F> {
    /// The factorised traces at the chunk's start, `[m][B][F]`.
    fact0: &'a [F],
    /// Per presynaptic neuron `i` and sample `b`, the entries `(step, value)` from
    /// `offsets[i·B + b]` to `offsets[i·B + b + 1]`.
    active: &'a [(u32, F)],
    offsets: &'a [u32],
    /// The traces at the chunk's start are zero and not to be read ([`SourceChunk::fresh`]).
    fresh: bool,
}

/// A [`close_block`] specialised for a number of per-synapse rows and filtering.
type CloseKernel<F> = fn((usize, usize, usize), &[Lanes<F>], &[Lanes<F>], Activity<'_, F>, &mut [Lanes<F>]);

/// [`close_block`] for `s_n` per-synapse rows, specialised for the common counts.
fn close_kernel<F: Float>(s_n: usize, filtered: bool) -> CloseKernel<F> {
    match (s_n, filtered) {
        (0, false) => close_block::<F, 0, false>,
        (0, true) => close_block::<F, 0, true>,
        (1, false) => close_block::<F, 1, false>,
        (1, true) => close_block::<F, 1, true>,
        (2, false) => close_block::<F, 2, false>,
        (2, true) => close_block::<F, 2, true>,
        (3, false) => close_block::<F, 3, false>,
        (3, true) => close_block::<F, 3, true>,
        (_, false) => close_block::<F, MAX_STATES, false>,
        (_, true) => close_block::<F, MAX_STATES, true>,
    }
}

/// Closes the chunk for one block of [`NB`] neurons (a lane each) of one source, presynaptic
/// neuron by presynaptic neuron, in one pass over the block's traces (`lanes`, the layout of
/// [`SourceChunk::lanes`]): per sample `b`,
///
/// ```text
/// G  += q_G·ε⁰ + a_G ē⁰ + Σ_x c_G,x u_x
/// ē  ← a_E ē⁰ + q_E·ε⁰  + Σ_x c_E,x u_x
/// ε  ← Φ ε⁰             + Σ_x D_x u_x
/// ```
///
/// where `x` runs over the factorised rows at the chunk's start, then the steps at which the
/// presynaptic neuron was active: a zero entry adds nothing, so a chunk costs the one pass
/// over the traces plus one fused multiply-add per row and nonzero entry, not a dense product
/// over every step. The gradient takes every sample's first terms, then every sample's sums
/// over `x`. `sc` holds per sample the block's `a_G, a_E, q_G[S], q_E[S], Φ[S·S]`
/// (`[B][2 + 2S + S²]`) and `coef` per sample and presynaptic row its coefficients
/// (`[B][F + K][R]`: `D` of each per-synapse row, then ē's when filtered, then the
/// gradient's). `S` is the number of per-synapse rows, or [`MAX_STATES`] for any number up to
/// it (`s_n` of them).
fn close_block<F: Float, const S: usize, const FILTERED: bool>(
    (s_n, f_n, batch): (usize, usize, usize),
    sc: &[Lanes<F>],
    coef: &[Lanes<F>],
    act: Activity<'_, F>,
    lanes: &mut [Lanes<F>],
) {
    let s_n = if S == MAX_STATES { s_n } else { S };
    let zero = [<F as Real>::zero(); NB];
    let rows = coef_rows(s_n, FILTERED);
    let (sl, per_sample) = (scal_len(s_n), coef.len() / batch);
    let m = lanes.len() / (batch * (s_n + usize::from(FILTERED)) + 1);
    let (eps, rest) = lanes.split_at_mut(m * batch * s_n);
    let (ebar, grad) = rest.split_at_mut(if FILTERED { m * batch } else { 0 });
    // The first tile's lines are requested at once; each later tile's while the one before
    // it computes.
    for i in 0..m.min(CLOSE_TILE) {
        for x in i * batch * s_n..(i + 1) * batch * s_n {
            prefetch(eps, x);
        }
        for x in i * batch..(i + 1) * batch {
            prefetch(ebar, x);
        }
        prefetch(grad, i);
    }
    for i0 in (0..m).step_by(CLOSE_TILE) {
        let tile = i0..m.min(i0 + CLOSE_TILE);
        // Every sample's `q_G·ε⁰ + a_G ē⁰` into the gradient, first (in memory order, so the
        // tile's traces stream in once); nothing when the traces start at zero.
        for i in tile.clone().filter(|_| !act.fresh) {
            let mut g = grad[i];
            for b in 0..batch {
                let sc = &sc[b * sl..][..sl];
                let (ag, qg) = (&sc[0], &sc[2..2 + s_n]);
                let e0 = &eps[(i * batch + b) * s_n..][..s_n];
                for a in 0..s_n {
                    for l in 0..NB {
                        g[l] += qg[a][l] * e0[a][l];
                    }
                }
                if FILTERED {
                    let old = &ebar[i * batch + b];
                    for l in 0..NB {
                        g[l] += ag[l] * old[l];
                    }
                }
            }
            grad[i] = g;
        }
        // Then, sample by sample, the traces' first terms and every sum over the presynaptic
        // rows.
        for b in 0..batch {
            let sc = &sc[b * sl..][..sl];
            let ae = &sc[1];
            let (qe, phi) = (&sc[2 + s_n..2 + 2 * s_n], &sc[2 + 2 * s_n..]);
            let coef = &coef[b * per_sample..][..per_sample];
            for i in tile.clone() {
                let at = i * batch + b;
                // The next tile's traces stream in while this one computes: one sample's
                // lines per iteration cover them.
                let ahead = tile.end * batch + b * tile.len() + (i - tile.start);
                for a in 0..s_n {
                    prefetch(eps, ahead * s_n + a);
                }
                if FILTERED {
                    prefetch(ebar, ahead);
                }
                if b == 0 {
                    prefetch(grad, i + tile.len());
                }
                let mut e0 = [zero; S];
                if !act.fresh {
                    e0[..s_n].copy_from_slice(&eps[at * s_n..][..s_n]);
                }
                let mut e = zero;
                if FILTERED {
                    let old = if act.fresh { zero } else { ebar[at] };
                    for l in 0..NB {
                        e[l] = ae[l] * old[l];
                    }
                    for a in 0..s_n {
                        for l in 0..NB {
                            e[l] += qe[a][l] * e0[a][l];
                        }
                    }
                }
                let mut d = [zero; S];
                for a in 0..s_n {
                    for c in 0..s_n {
                        for l in 0..NB {
                            d[a][l] += phi[a * s_n + c][l] * e0[c][l];
                        }
                    }
                }
                let mut g = grad[i];
                for (f, &u) in act.fact0[at * f_n..][..f_n].iter().enumerate() {
                    if u != <F as Real>::zero() {
                        add_row::<F, S, FILTERED>(&coef[f * rows..][..rows], u, (&mut d[..s_n], &mut e, &mut g));
                    }
                }
                for &(slot, v) in &act.active[act.offsets[at] as usize..act.offsets[at + 1] as usize] {
                    let c = &coef[(f_n + slot as usize) * rows..][..rows];
                    add_row::<F, S, FILTERED>(c, v, (&mut d[..s_n], &mut e, &mut g));
                }
                eps[at * s_n..][..s_n].copy_from_slice(&d[..s_n]);
                if FILTERED {
                    ebar[at] = e;
                }
                grad[i] = g;
            }
        }
    }
}

/// Asks the processor to bring `slice[index]` into the cache (nothing when out of bounds or
/// not on x86-64).
#[inline(always)]
fn prefetch<T>(slice: &[T], index: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(x) = slice.get(index) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch reads nothing and writes nothing; the address is in bounds.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(x).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (slice, index);
}

/// Adds one presynaptic row's value `u` times its coefficients `c` (`D` of each per-synapse
/// row, ē's when filtered, the gradient's) to the accumulators of [`close_block`].
#[inline(always)]
fn add_row<F: Float, const S: usize, const FILTERED: bool>(
    c: &[Lanes<F>],
    u: F,
    (d, e, g): (&mut [Lanes<F>], &mut Lanes<F>, &mut Lanes<F>),
) {
    for (d, c) in d.iter_mut().zip(c) {
        fma_lanes(d, c, u);
    }
    if FILTERED {
        fma_lanes(e, &c[d.len()], u);
    }
    fma_lanes(g, &c[c.len() - 1], u);
}

/// `acc += c · u` lane by lane, each a fused multiply-add where the hardware has one.
#[inline(always)]
fn fma_lanes<F: Float>(acc: &mut Lanes<F>, c: &Lanes<F>, u: F) {
    for (a, &c) in acc.iter_mut().zip(c) {
        *a = c.mul_add_fast(u, *a);
    }
}

/// A [`Chunk::sweep`] compiled for a port's row counts and filtering.
type SweepKernel<F> = fn(&Chunk<F>, &PortPartials, (&[F], &[F]), (usize, usize, usize), &mut [F], &mut [F]);

/// [`Chunk::sweep`] for `s` per-synapse rows, `f` factorised rows and `filtered` traces: the
/// shipped models' counts compiled in, others with their state in arrays of the next power
/// of two (up to [`MAX_STATES`]).
fn sweep_kernel<F: Float>(s: usize, f: usize, filtered: bool) -> SweepKernel<F> {
    macro_rules! sweep {
        ($s:expr, $f:expr, $dyn:literal) => {
            if filtered {
                Chunk::<F>::sweep::<{ $s }, { $f }, { $f + 1 }, $dyn, true>
            } else {
                Chunk::<F>::sweep::<{ $s }, { $f }, { $f + 1 }, $dyn, false>
            }
        };
    }
    macro_rules! pick {
        ($(($s:literal, $f:literal)),* ; $($cap:literal),*) => {
            match (s, f) {
                $(($s, $f) => sweep!($s, $f, false),)*
                $(_ if s.max(f) <= $cap => sweep!($cap, $cap, true),)*
                // A population has at most MAX_STATES states (checked when it is built).
                _ => sweep!(MAX_STATES, MAX_STATES, true),
            }
        };
    }
    pick!((0, 1), (1, 0), (1, 1), (2, 0); 2, 4, 8)
}
