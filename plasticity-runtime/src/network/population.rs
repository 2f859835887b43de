//! One population: neurons of one model, with the model's type erased once.
//!
//! The network holds populations of different models side by side. Each model's kernels stay
//! monomorphised: [`Kernels`] is implemented once per model type, and every method runs a
//! whole population (all neurons, all samples), except the factorised-trace advance (one
//! sample and source), so that the network never makes a dynamic call per neuron.

use std::any::Any;
use std::fmt;

use ndarray::Array2;
use rayon::prelude::*;

use super::MAX_STATES;
use crate::model::{NeuronModel, Pattern};
use crate::real::{Float, Real};
use crate::surrogate::{Mode, Plain, Surrogate};

/// How a forward step evaluates `spike(..)` and `detach(..)`.
#[derive(Debug)]
pub(crate) enum SpikeMode<'a, F> {
    /// The Heaviside step: what training and inference use.
    Plain,
    /// The surrogate's smooth counterpart, so that the model becomes differentiable, with
    /// every `detach(..)` value recorded (or replayed) per step, population and sample: finite
    /// differences then see detached subexpressions as the constants the gradient treats them
    /// as. For gradient checks.
    Frozen(&'a mut Frozen<F>),
}

/// Recorded values of `detach(..)`: `[step][population · B + sample]`, each in the order the
/// generated code evaluates them.
#[derive(Debug, Default)]
pub(crate) struct Frozen<F> {
    steps: Vec<Vec<Vec<F>>>,
    /// The step being written or read.
    t: usize,
    /// Replay recorded values instead of recording.
    pub replay: bool,
}

impl<F: Float> Frozen<F> {
    /// Back to the first step (to replay, or to record anew).
    pub fn rewind(&mut self) {
        self.t = 0;
        if !self.replay {
            self.steps.clear();
        }
    }

    /// The per-sample records of population `p` at the current step (`populations` of
    /// `batch` samples each).
    pub fn slots(&mut self, p: usize, populations: usize, batch: usize) -> &mut [Vec<F>] {
        if self.steps.len() <= self.t {
            self.steps
                .resize_with(self.t + 1, || vec![Vec::new(); populations * batch]);
        }
        &mut self.steps[self.t][p * batch..(p + 1) * batch]
    }

    /// Moves on to the next step.
    pub fn advance(&mut self) {
        self.t += 1;
    }
}

/// Smooth spikes (as [`crate::surrogate::Smooth`]) with recorded or replayed `detach(..)`
/// values.
struct Freeze<'a, F> {
    values: &'a mut Vec<F>,
    replay: bool,
    at: usize,
}

impl<F: Float> Mode<F> for Freeze<'_, F> {
    fn spike(&mut self, x: F, surrogate: Surrogate<F>) -> F {
        surrogate.smooth(x)
    }
    fn detach(&mut self, x: F) -> F {
        if self.replay {
            let v = self.values.get(self.at).copied().unwrap_or(x);
            self.at += 1;
            v
        } else {
            self.values.push(x);
            x
        }
    }
}

/// The spike mode of one population's forward step.
pub(crate) enum PopMode<'a, F> {
    Plain,
    /// Per sample, the detach records, and whether to replay them.
    Frozen(&'a mut [Vec<F>], bool),
}

/// One forward step of a population over a batch: per sample, the state `[k, n]`
/// (advanced in place) in blocks of `max(k·n, 1)`, the currents `[p, n]`, the outputs `[n]`
/// and, when `partials`, the dynamic partials `[ND, n]` in blocks of `dstride`.
pub(crate) struct ForwardArgs<'a, F> {
    pub n: usize,
    pub learn: &'a [F],
    pub state: &'a mut [F],
    pub current: &'a [F],
    pub z: &'a mut [F],
    pub dynv: &'a mut [F],
    pub dstride: usize,
    pub partials: bool,
    pub mode: PopMode<'a, F>,
}

/// One reverse step of BPTT over a batch: per sample `b`, neuron `j`, the adjoint of the
/// state `dh` `[B, n, k]` and of the output `dz` `[B, n]` give `dh_prev` (same layout), the
/// input adjoints `di` `[B, p, n]` (overwritten) and `dlearn` `[B, n, q]` (accumulated).
/// Per-sample blocks are at least one value long.
pub(crate) struct ReverseArgs<'a, F> {
    pub n: usize,
    pub consts: &'a [F],
    pub dynv: &'a [F],
    pub dstride: usize,
    pub dh: &'a [F],
    pub dz: &'a [F],
    pub dh_prev: &'a mut [F],
    pub di: &'a mut [F],
    pub dlearn: &'a mut [F],
}

/// A model's kernels behind one vtable: what the network, e-prop and BPTT call per
/// population.
pub(crate) trait Kernels<F: Float>: Send + Sync {
    fn pattern(&self) -> &'static Pattern;
    fn num_constants(&self) -> usize;
    fn num_dynamic(&self) -> usize;
    fn initial_state(&self, learn: &[F], out: &mut [F]);
    fn initial_partials(&self, learn: &[F], out: &mut [F]);
    fn learnable_init(&self, out: &mut [F]);
    fn constants(&self, out: &mut [F]);
    fn forward(&self, args: ForwardArgs<'_, F>);
    fn reverse(&self, args: ReverseArgs<'_, F>);
    /// e-prop's per-neuron trace pass (see [`crate::eprop`]).
    fn trace_pass(&self, pass: crate::eprop::TracePass<'_, '_, F>);
    /// Advances one sample's factorised traces of `port` (`[F, n_pre]`) by one step.
    fn factorised_traces(&self, port: usize, consts: &[F], pre: &[F], fact: &mut [F]);
    fn clone_box(&self) -> Box<dyn Kernels<F>>;
    fn debug(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// [`Kernels`] of model `M`.
pub(crate) struct ModelKernels<M>(pub M);

impl<M: NeuronModel, F: Float> Kernels<F> for ModelKernels<M> {
    fn pattern(&self) -> &'static Pattern {
        &M::PATTERN
    }
    fn num_constants(&self) -> usize {
        M::NUM_CONSTS
    }
    fn num_dynamic(&self) -> usize {
        M::NUM_DYNAMIC
    }
    fn initial_state(&self, learn: &[F], out: &mut [F]) {
        self.0.initial_state(learn, out);
    }
    fn initial_partials(&self, learn: &[F], out: &mut [F]) {
        self.0.initial_partials(learn, out);
    }
    fn learnable_init(&self, out: &mut [F]) {
        self.0.learnable_init(out);
    }
    fn constants(&self, out: &mut [F]) {
        self.0.constants(out);
    }

    fn forward(&self, a: ForwardArgs<'_, F>) {
        let (k, p, nd) = (M::NUM_STATES, M::NUM_INPUTS, M::NUM_DYNAMIC);
        let n = a.n;
        let (learn, model, partials) = (a.learn, &self.0, a.partials);
        let samples = a
            .state
            .par_chunks_mut((n * k).max(1))
            .zip(a.z.par_chunks_mut(n.max(1)))
            .zip(a.dynv.par_chunks_mut(a.dstride))
            .zip(a.current.par_chunks((p * n).max(1)));
        // One sample's state `[k, n]` and, when partials are wanted, its partials `[ND, n]`.
        let (rs, rd) = (0..n * k, 0..if partials { n * nd } else { 0 });
        match a.mode {
            PopMode::Plain => samples.for_each(|(((state, z), dynv), input)| {
                model.eval_layer(
                    learn,
                    &mut state[rs.clone()],
                    input,
                    z,
                    &mut dynv[rd.clone()],
                    &mut Plain,
                );
            }),
            PopMode::Frozen(records, replay) => {
                samples
                    .zip(records.par_iter_mut())
                    .for_each(|((((state, z), dynv), input), values)| {
                        let (state, dynv) = (&mut state[rs.clone()], &mut dynv[rd.clone()]);
                        if !replay {
                            values.clear();
                        }
                        let mut mode = Freeze { values, replay, at: 0 };
                        model.eval_layer(learn, state, input, z, dynv, &mut mode);
                    })
            }
        }
    }

    fn reverse(&self, a: ReverseArgs<'_, F>) {
        let (k, p, q, nd) = (M::NUM_STATES, M::NUM_INPUTS, M::NUM_LEARNABLE, M::NUM_DYNAMIC);
        let n = a.n;
        let (consts, dynv, dstride, dz) = (a.consts, a.dynv, a.dstride, a.dz);
        a.dh_prev
            .par_chunks_mut((n * k).max(1))
            .zip(a.dh.par_chunks((n * k).max(1)))
            .zip(a.dlearn.par_chunks_mut((n * q).max(1)))
            .zip(a.di.par_chunks_mut((p * n).max(1)))
            .enumerate()
            .for_each(|(b, (((dh_prev, dh), dlearn), di))| {
                let mut dinp = [<F as Real>::zero(); super::MAX_PORTS];
                let mut dv = [<F as Real>::zero(); super::MAX_DYNAMIC];
                let block = &dynv[b * dstride..b * dstride + n * nd];
                for j in 0..n {
                    super::gather_partials(block, j, n, &mut dv[..nd]);
                    M::vjp(
                        consts,
                        &dv[..nd],
                        &dh[j * k..(j + 1) * k],
                        dz[b * n + j],
                        &mut dh_prev[j * k..(j + 1) * k],
                        &mut dinp[..p],
                        &mut dlearn[j * q..(j + 1) * q],
                    );
                    for port in 0..p {
                        di[port * n + j] = dinp[port];
                    }
                }
            });
    }

    fn trace_pass(&self, pass: crate::eprop::TracePass<'_, '_, F>) {
        crate::eprop::trace_pass::<M, F>(pass);
    }

    fn factorised_traces(&self, port: usize, consts: &[F], pre: &[F], fact: &mut [F]) {
        M::factorised_traces(port, consts, pre, fact);
    }

    fn clone_box(&self) -> Box<dyn Kernels<F>> {
        Box::new(ModelKernels(self.0.clone()))
    }
    fn debug(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
    fn as_any(&self) -> &dyn Any {
        &self.0
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        &mut self.0
    }
}

/// A group of neurons of one model with their own parameter values.
pub struct Population<F: Float> {
    pub(crate) name: String,
    pub(crate) size: usize,
    pub(crate) kernels: Box<dyn Kernels<F>>,
    pub(crate) consts: Vec<F>,
}

impl<F: Float> Population<F> {
    pub(crate) fn new<M: NeuronModel>(name: String, model: M, size: usize) -> Self {
        let mut consts = vec![<F as Real>::zero(); M::NUM_CONSTS];
        model.constants(&mut consts);
        Population {
            name,
            size,
            kernels: Box::new(ModelKernels(model)),
            consts,
        }
    }

    /// Name, unique in the network (used in projections, probes and checkpoints).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Number of neurons.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The model's sparsity pattern (names of states, ports and learnable parameters).
    pub fn pattern(&self) -> &'static Pattern {
        self.kernels.pattern()
    }

    /// The neuron model, if it is of type `M`.
    pub fn model<M: NeuronModel>(&self) -> Option<&M> {
        self.kernels.as_any().downcast_ref::<M>()
    }

    /// Changes the model's fixed parameters (if it is of type `M`) and recomputes the
    /// constant partials. Returns `false`, changing nothing, for a model of another type.
    pub fn update_model<M: NeuronModel>(&mut self, f: impl FnOnce(&mut M)) -> bool {
        let Some(model) = self.kernels.as_any_mut().downcast_mut::<M>() else {
            return false;
        };
        f(model);
        self.consts.resize(self.kernels.num_constants(), <F as Real>::zero());
        self.kernels.constants(&mut self.consts);
        true
    }

    /// Number of state variables of the model.
    pub fn num_states(&self) -> usize {
        self.pattern().states.len()
    }
    /// Number of input ports of the model.
    pub fn num_ports(&self) -> usize {
        self.pattern().inputs.len()
    }
    /// Number of learnable parameters of the model.
    pub fn num_learnable(&self) -> usize {
        self.pattern().learnable.len()
    }

    /// The index of input port `name`.
    pub fn port(&self, name: &str) -> Option<usize> {
        self.pattern().inputs.iter().position(|p| *p == name)
    }

    /// The learnable values of neuron `j` gathered from `learn` (`[q, n]`) into `out` (`[q]`).
    pub(crate) fn neuron_learnable<'b>(&self, learn: &Array2<F>, j: usize, out: &'b mut [F; MAX_STATES]) -> &'b [F] {
        let q = self.num_learnable();
        for (o, v) in out.iter_mut().zip(learn.column(j)) {
            *o = *v;
        }
        &out[..q]
    }

    pub(crate) fn learnable_start(&self) -> Array2<F> {
        let q = self.num_learnable();
        let mut init = vec![<F as Real>::zero(); q];
        self.kernels.learnable_init(&mut init);
        Array2::from_shape_fn((q, self.size), |(r, _)| init[r])
    }
}

impl<F: Float> Clone for Population<F> {
    fn clone(&self) -> Self {
        Population {
            name: self.name.clone(),
            size: self.size,
            kernels: self.kernels.clone_box(),
            consts: self.consts.clone(),
        }
    }
}

impl<F: Float> PartialEq for Population<F> {
    /// Same name, size, model type and parameter values.
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.size == other.size
            && self.kernels.as_any().type_id() == other.kernels.as_any().type_id()
            && format!("{self:?}") == format!("{other:?}")
    }
}

impl<F: Float> fmt::Debug for Population<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Population {{ name: {:?}, size: {}, model: ", self.name, self.size)?;
        self.kernels.debug(f)?;
        write!(f, " }}")
    }
}
