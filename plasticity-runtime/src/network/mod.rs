//! Networks: populations of any neuron models, projections between them onto named input
//! ports (dense, masked or sparse), and a leaky readout.
//!
//! Populations are stepped in the order they were added. A projection from the input or from
//! an earlier population delivers the source's output of the same step; a projection from the
//! target itself or from a later population (recurrent and backward projections) delivers the
//! source's output of the previous step.

mod builder;
mod population;
mod probe;
mod projection;

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, Axis};

pub use builder::{LayerSpec, NetworkBuilder, PopulationSpec, ProjectionSpec, ReadoutGain, ReadoutSpec};
pub use population::Population;
pub(crate) use population::{ForwardArgs, Frozen, PopMode, ReverseArgs, SpikeMode};
pub use probe::{Probe, Signal};
pub use projection::{Connectivity, Projection, Source};
pub(crate) use projection::{Csr, ForwardWeights};

use crate::error::{Error, Result, check_finite, check_shape, invalid};
use crate::params::Parameters;
use crate::real::{Float, Real};

/// Most state variables a model may have (kernels keep one neuron's state on the stack).
pub const MAX_STATES: usize = 16;
/// Most input ports a model may have.
pub const MAX_PORTS: usize = 8;
/// Most dynamic partials a model may have (one neuron's are gathered on the stack).
pub const MAX_DYNAMIC: usize = 256;

/// What the loss sees as the network's output `y`: either the built-in leaky readout
/// `y^t = κ y^{t-1} + Σ_s W_s z_s^t + b`, reading the outputs of one or more populations (its
/// weights and bias are in [`Network::params`]), or the outputs `z` of an output population
/// written in the neuron language (`population` set; no readout weights, κ = 0).
#[derive(Clone, Debug, PartialEq)]
pub struct Readout<F> {
    /// Number of outputs.
    pub size: usize,
    /// Indices of the populations the leaky readout reads, in the order of
    /// `params.readout_w` (empty for an output population).
    pub sources: Vec<usize>,
    /// Leak κ ∈ [0, 1) of the leaky readout (0 for an output population).
    pub kappa: F,
    /// Gain `g` of the drive, `y^t = κ y^{t-1} + g (Σ W z + b)`: 1 or `1 − κ`
    /// ([`crate::ReadoutGain`]); 1 for an output population.
    pub gain: F,
    /// The output population, whose outputs are `y`, if the readout is one.
    pub population: Option<usize>,
}

impl<F: Float> Readout<F> {
    /// The factor `c` on the previous value when the step is written
    /// `y^t = g (c y^{t-1} + Σ W z + b)`: `c = κ / g` (κ for a gain of 1). The network's step
    /// and BPTT's forward pass both compute the readout this way, so that they agree to the
    /// last bit.
    pub(crate) fn carry(&self) -> F {
        if self.gain == <F as Real>::one() {
            self.kappa
        } else {
            self.kappa / self.gain
        }
    }
}

/// Input → populations → leaky readout, computing in `F`.
#[derive(Clone, Debug, PartialEq)]
pub struct Network<F: Float> {
    /// Number of input channels.
    pub n_in: usize,
    /// The populations, in stepping order.
    pub populations: Vec<Population<F>>,
    /// The projections.
    pub projections: Vec<Projection>,
    /// The readout.
    pub readout: Readout<F>,
    /// Every trainable tensor.
    pub params: Parameters<F>,
}

/// What [`Network::run`] returns.
#[derive(Clone, Debug)]
pub struct RunOutput<F> {
    /// Readout `y`, `[T, B, n_out]`.
    pub readout: Array3<F>,
    /// Outputs `z` of each population, `[T, B, size]`.
    pub spikes: Vec<Array3<F>>,
    /// One recording per probe given to [`Network::run_with_probes`], `[T, B, neurons]`.
    pub probes: Vec<Array3<F>>,
}

/// Per-population buffers for stepping a batch through time. Allocated once.
#[derive(Clone, Debug)]
pub(crate) struct PopBuffers<F> {
    /// State, `[B, max(k·n, 1)]` (state-major within a sample).
    pub state: Vec<F>,
    /// Output at this step, `[B, n]`.
    pub z: Array2<F>,
    /// Output at the previous step, `[B, n]`.
    pub z_prev: Array2<F>,
    /// Synaptic currents, `[B, p, n]`.
    pub current: Array3<F>,
    /// Dynamic partials at this step, `[B, max(ND·n, 1)]`.
    pub dynv: Vec<F>,
}

/// Everything a forward pass works in.
#[derive(Clone, Debug)]
pub(crate) struct Buffers<F> {
    pub pops: Vec<PopBuffers<F>>,
    pub weights: Vec<ForwardWeights<F>>,
}

/// Where a recorded forward step writes what it keeps.
pub(crate) trait Recorder<F> {
    /// For population `p`: the slots for this step's dynamic partials (`[B·max(n·ND, 1)]`)
    /// and outputs (`[B·n]`).
    fn slots(&mut self, p: usize) -> (&mut [F], &mut [F]);
}

impl<F: Float> Network<F> {
    /// Number of readout outputs.
    pub fn n_out(&self) -> usize {
        self.readout.size
    }

    /// The index of the population called `name`.
    pub fn population_index(&self, name: &str) -> Option<usize> {
        self.populations.iter().position(|p| p.name == name)
    }

    /// Total number of neurons.
    pub fn num_neurons(&self) -> usize {
        self.populations.iter().map(|p| p.size).sum()
    }

    /// The weights of projection `i` as a dense `[n_post, n_pre]` matrix (zero where no
    /// synapse exists).
    pub fn dense_weights(&self, i: usize) -> Array2<F> {
        self.projections[i].to_dense(&self.params.projections[i])
    }

    /// Puts every learnable parameter back into its model's declared range (after an update).
    pub(crate) fn clamp_learnable(&mut self) {
        for (pop, learn) in self.populations.iter().zip(&mut self.params.learnable) {
            let ranges = pop.pattern().learnable_ranges;
            for (mut row, &(lo, hi)) in learn.outer_iter_mut().zip(ranges) {
                if lo > f64::NEG_INFINITY || hi < f64::INFINITY {
                    let (lo, hi) = (F::from_f64(lo), F::from_f64(hi));
                    row.mapv_inplace(|v| v.clamp(lo, hi));
                }
            }
        }
    }

    /// The projections onto population `p`, in the order they were added.
    pub(crate) fn incoming(&self, p: usize) -> impl Iterator<Item = (usize, &Projection)> {
        self.projections
            .iter()
            .enumerate()
            .filter(move |(_, pr)| pr.target == p)
    }

    pub(crate) fn buffers(&self, batch: usize) -> Buffers<F> {
        let zero = <F as Real>::zero();
        let pops = self
            .populations
            .iter()
            .enumerate()
            .map(|(p, pop)| {
                let n = pop.size;
                let mut buf = PopBuffers {
                    state: vec![zero; batch * (n * pop.num_states()).max(1)],
                    z: Array2::zeros((batch, n)),
                    z_prev: Array2::zeros((batch, n)),
                    current: Array3::zeros((batch, pop.num_ports(), n)),
                    dynv: vec![zero; batch * (n * pop.kernels.num_dynamic()).max(1)],
                };
                reset_state(pop, &self.params.learnable[p], &mut buf);
                buf
            })
            .collect();
        let mut bufs = Buffers {
            pops,
            weights: self.projections.iter().map(ForwardWeights::new).collect(),
        };
        self.refresh_weights(&mut bufs);
        bufs
    }

    /// Copies the current weights into the forward-pass caches (after any update).
    pub(crate) fn refresh_weights(&self, bufs: &mut Buffers<F>) {
        for ((w, proj), values) in bufs
            .weights
            .iter_mut()
            .zip(&self.projections)
            .zip(&self.params.projections)
        {
            w.refresh(proj, values);
        }
    }

    /// Puts every population in its initial state, with zero outputs.
    pub(crate) fn reset(&self, bufs: &mut Buffers<F>) {
        for ((pop, learn), buf) in self.populations.iter().zip(&self.params.learnable).zip(&mut bufs.pops) {
            reset_state(pop, learn, buf);
        }
    }

    /// Checks that every tensor has the shape the network's structure implies, standard
    /// (row-major) layout and finite values, and that masked weights are zero: what a network
    /// assembled or edited by hand must satisfy.
    pub fn validate(&self) -> Result<()> {
        let p = &self.params;
        let np = self.populations.len();
        if np == 0 {
            return Err(invalid("populations", 0, "at least one population"));
        }
        if p.learnable.len() != np || p.bias.len() != np {
            return Err(invalid(
                "parameters",
                format!("{} learnable / {} bias entries", p.learnable.len(), p.bias.len()),
                &format!("one per population ({np})"),
            ));
        }
        if !p.is_standard() {
            return Err(invalid(
                "parameters",
                "a non-contiguous array",
                "standard-layout (row-major) arrays",
            ));
        }
        for (i, pop) in self.populations.iter().enumerate() {
            if pop.size == 0 {
                return Err(invalid(
                    &format!("population {} size", pop.name),
                    0,
                    "at least 1 neuron",
                ));
            }
            let what = format!("population {} learnable parameters", pop.name);
            check_shape(&what, p.learnable[i].shape(), &[pop.num_learnable(), pop.size])?;
            check_finite(&what, p.learnable[i].iter().copied())?;
            let pattern = pop.pattern();
            for ((name, &(lo, hi)), row) in (pattern.learnable.iter())
                .zip(pattern.learnable_ranges)
                .zip(p.learnable[i].outer_iter())
            {
                if let Some((j, v)) = row
                    .iter()
                    .map(|v| v.to_f64())
                    .enumerate()
                    .find(|(_, v)| !(lo..=hi).contains(v))
                {
                    return Err(invalid(
                        &format!("population {} learnable parameter {name} of neuron {j}", pop.name),
                        v,
                        &format!(
                            "a value in the range [{lo}, {hi}] that model {} declares",
                            pattern.model
                        ),
                    ));
                }
            }
            if let Some(b) = &p.bias[i] {
                let what = format!("population {} bias", pop.name);
                check_shape(&what, b.shape(), &[pop.num_ports(), pop.size])?;
                check_finite(&what, b.iter().copied())?;
            }
            if pop.consts.len() != pop.kernels.num_constants() {
                return Err(invalid(
                    &format!("population {} constants", pop.name),
                    pop.consts.len(),
                    "the model's constant count",
                ));
            }
        }
        if p.projections.len() != self.projections.len() {
            return Err(invalid(
                "projection weights",
                p.projections.len(),
                &format!("one vector per projection ({})", self.projections.len()),
            ));
        }
        for proj in &self.projections {
            let n_pre = match proj.source {
                Source::Input => Some(self.n_in),
                Source::Population(s) => self.populations.get(s).map(|p| p.size),
            };
            let target = self.populations.get(proj.target);
            let fits = target.is_some_and(|t| t.size == proj.n_post && proj.port < t.num_ports());
            if n_pre != Some(proj.n_pre) || !fits {
                return Err(invalid(
                    &format!("projection {}", proj.name),
                    "a source, target or port that is not in this network",
                    "projections built for this network's populations",
                ));
            }
        }
        for (proj, w) in self.projections.iter().zip(&p.projections) {
            let what = format!("projection {} weights", proj.name);
            check_shape(&what, &[w.len()], &[proj.num_weights()])?;
            check_finite(&what, w.iter().copied())?;
            if !proj.respects_mask(w) {
                return Err(invalid(
                    &what,
                    "a nonzero weight where the mask has no synapse",
                    "zero there",
                ));
            }
        }
        let r = &self.readout;
        if let Some(o) = r.population {
            let pop = self
                .populations
                .get(o)
                .ok_or_else(|| invalid("output population", o, &format!("a population index < {np}")))?;
            if pop.size != r.size || !r.sources.is_empty() || p.readout_b.is_some() || r.kappa != <F as Real>::zero() {
                return Err(invalid(
                    "readout",
                    format!(
                        "output population {} with readout weights, bias, leak or another size",
                        pop.name
                    ),
                    "an output population alone: its size is the output size, no readout weights, bias or leak",
                ));
            }
        }
        if p.readout_w.len() != r.sources.len() {
            return Err(invalid(
                "readout weights",
                p.readout_w.len(),
                &format!("one matrix per readout source ({})", r.sources.len()),
            ));
        }
        for (&s, w) in r.sources.iter().zip(&p.readout_w) {
            let pop = self
                .populations
                .get(s)
                .ok_or_else(|| invalid("readout source", s, &format!("a population index < {np}")))?;
            let what = format!("readout weights from {}", pop.name);
            check_shape(&what, w.shape(), &[r.size, pop.size])?;
            check_finite(&what, w.iter().copied())?;
        }
        if let Some(b) = &p.readout_b {
            check_shape("readout bias", b.shape(), &[r.size])?;
            check_finite("readout bias", b.iter().copied())?;
        }
        let kappa = r.kappa.to_f64();
        if !(0.0..1.0).contains(&kappa) {
            return Err(invalid("readout kappa", kappa, "κ in [0, 1)"));
        }
        Ok(())
    }

    /// Checks an input sequence `[T, B, n_in]`.
    pub(crate) fn check_inputs(&self, x: &ArrayView3<F>) -> Result<()> {
        let s = x.shape();
        if s[2] != self.n_in || s[1] == 0 {
            return Err(Error::Shape {
                what: "inputs".into(),
                expected: format!("[T, B >= 1, {}]", self.n_in),
                found: s.to_vec(),
            });
        }
        check_finite("inputs", x.iter().copied())
    }

    /// Runs the network on inputs `[T, B, n_in]` from its initial state (inference only).
    pub fn run(&self, inputs: ArrayView3<F>) -> Result<RunOutput<F>> {
        self.run_with_probes(inputs, &[])
    }

    /// [`Network::run`], also recording what each probe names (`[T, B, neurons]` per probe,
    /// in [`RunOutput::probes`]).
    pub fn run_with_probes(&self, inputs: ArrayView3<F>, probes: &[Probe]) -> Result<RunOutput<F>> {
        self.run_mode(inputs, probes, &mut SpikeMode::Plain)
    }

    pub(crate) fn run_mode(
        &self,
        inputs: ArrayView3<F>,
        probes: &[Probe],
        mode: &mut SpikeMode<'_, F>,
    ) -> Result<RunOutput<F>> {
        self.validate()?;
        self.check_inputs(&inputs)?;
        let probes = probes.iter().map(|p| p.resolve(self)).collect::<Result<Vec<_>>>()?;
        let inputs = inputs.as_standard_layout();
        let (t_len, batch) = (inputs.shape()[0], inputs.shape()[1]);
        let mut bufs = self.buffers(batch);
        let mut y = Array2::<F>::zeros((batch, self.n_out()));
        let mut readout = Array3::zeros((t_len, batch, self.n_out()));
        let mut spikes: Vec<Array3<F>> = (self.populations.iter())
            .map(|p| Array3::zeros((t_len, batch, p.size)))
            .collect();
        let mut recorded: Vec<Array3<F>> = probes
            .iter()
            .map(|p| Array3::zeros((t_len, batch, p.width())))
            .collect();
        for t in 0..t_len {
            self.step(inputs.index_axis(Axis(0), t), &mut bufs, false, &mut *mode, None);
            self.readout_step(&bufs, &mut y);
            readout.index_axis_mut(Axis(0), t).assign(&y);
            for (s, b) in spikes.iter_mut().zip(&bufs.pops) {
                s.index_axis_mut(Axis(0), t).assign(&b.z);
            }
            for (probe, out) in probes.iter().zip(&mut recorded) {
                probe.record(self, &bufs, &y, &mut out.index_axis_mut(Axis(0), t));
            }
        }
        Ok(RunOutput {
            readout,
            spikes,
            probes: recorded,
        })
    }

    /// The presynaptic activity projection `proj` delivers, during or after the step.
    pub(crate) fn presynaptic<'a>(
        proj: &Projection,
        x: ArrayView2<'a, F>,
        pops: &'a [PopBuffers<F>],
    ) -> ArrayView2<'a, F> {
        match proj.source {
            Source::Input => x,
            Source::Population(s) if proj.delayed => pops[s].z_prev.view(),
            Source::Population(s) => pops[s].z.view(),
        }
    }

    /// One time step of every population: `z_prev ← z`, then, in order, currents, states
    /// and outputs (and dynamic partials when `partials`). With `rec`, partials and outputs
    /// are also written into its slots.
    pub(crate) fn step(
        &self,
        x: ArrayView2<F>,
        bufs: &mut Buffers<F>,
        partials: bool,
        mode: &mut SpikeMode<'_, F>,
        mut rec: Option<&mut dyn Recorder<F>>,
    ) {
        let (np, batch) = (self.populations.len(), x.nrows());
        for buf in &mut bufs.pops {
            std::mem::swap(&mut buf.z, &mut buf.z_prev);
        }
        for (p, pop) in self.populations.iter().enumerate() {
            let mut current = std::mem::take(&mut bufs.pops[p].current);
            current.fill(<F as Real>::zero());
            for (i, proj) in self.incoming(p) {
                let pre = Self::presynaptic(proj, x, &bufs.pops);
                bufs.weights[i].accumulate(proj, &mut current.index_axis_mut(Axis(1), proj.port), &pre);
            }
            if let Some(bias) = &self.params.bias[p] {
                for mut sample in current.outer_iter_mut() {
                    sample += bias;
                }
            }
            let buf = &mut bufs.pops[p];
            buf.current = current;
            let n = pop.size;
            let dstride = (n * pop.kernels.num_dynamic()).max(1);
            let slots = rec.as_mut().map(|r| r.slots(p));
            let (dynv, z_copy) = match slots {
                Some((d, z)) => (d, Some(z)),
                None => (&mut buf.dynv[..], None),
            };
            pop.kernels.forward(ForwardArgs {
                n,
                learn: self.params.learnable[p].as_slice().expect("validated standard layout"),
                state: &mut buf.state,
                current: buf.current.as_slice().expect("currents in standard layout"),
                z: buf.z.as_slice_mut().expect("outputs in standard layout"),
                dynv,
                dstride,
                partials,
                mode: match mode {
                    SpikeMode::Plain => PopMode::Plain,
                    SpikeMode::Frozen(f) => {
                        let replay = f.replay;
                        PopMode::Frozen(f.slots(p, np, batch), replay)
                    }
                },
            });
            if let Some(dst) = z_copy {
                dst.copy_from_slice(buf.z.as_slice().expect("outputs in standard layout"));
            }
        }
        if let SpikeMode::Frozen(f) = mode {
            f.advance();
        }
    }

    /// `y ← κ y + g (Σ_s W_s z_s + b)`, or `y ← z` of the output population.
    pub(crate) fn readout_step(&self, bufs: &Buffers<F>, y: &mut Array2<F>) {
        let r = &self.readout;
        if let Some(o) = r.population {
            y.assign(&bufs.pops[o].z);
            return;
        }
        // With a gain, `g ((κ/g) y + Σ W z + b)`: no scratch buffer needed.
        let one = <F as Real>::one();
        for (k, (&s, w)) in r.sources.iter().zip(&self.params.readout_w).enumerate() {
            let beta = if k == 0 { r.carry() } else { one };
            crate::linalg::gemm_nt(beta, &mut y.view_mut(), &bufs.pops[s].z.view(), &w.view());
        }
        if let Some(b) = &self.params.readout_b {
            *y += b;
        }
        if r.gain != one {
            y.mapv_inplace(|v| v * r.gain);
        }
    }
}

/// Puts every neuron of `buf` in the model's initial state (from its own learnable values
/// `learn`, `[q, n]`, when the model's initial values use them), with zero outputs.
pub(crate) fn reset_state<F: Float>(pop: &Population<F>, learn: &Array2<F>, buf: &mut PopBuffers<F>) {
    let (k, n) = (pop.num_states(), pop.size);
    let mut init = [<F as Real>::zero(); MAX_STATES];
    let mut values = [<F as Real>::zero(); MAX_STATES];
    if pop.pattern().learnable_init_state {
        for j in 0..n {
            pop.kernels
                .initial_state(pop.neuron_learnable(learn, j, &mut values), &mut init[..k]);
            for sample in buf.state.chunks_exact_mut((k * n).max(1)) {
                for (r, &v) in init[..k].iter().enumerate() {
                    sample[r * n + j] = v;
                }
            }
        }
    } else {
        // The same initial state for every neuron: computed once.
        pop.kernels
            .initial_state(pop.neuron_learnable(learn, 0, &mut values), &mut init[..k]);
        for sample in buf.state.chunks_exact_mut((k * n).max(1)) {
            for (row, &v) in sample.chunks_exact_mut(n.max(1)).zip(&init[..k]) {
                row.fill(v);
            }
        }
    }
    buf.z.fill(<F as Real>::zero());
    buf.z_prev.fill(<F as Real>::zero());
}

/// The dynamic partials of neuron `j` of one sample (`[ND, n]` block) gathered into `out`.
#[inline]
pub(crate) fn gather_partials<F: Float>(block: &[F], j: usize, n: usize, out: &mut [F]) {
    for (r, o) in out.iter_mut().enumerate() {
        *o = block[r * n + j];
    }
}
