//! Training: one network, e-prop or BPTT, an optimiser.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, Axis, s};
use rayon::prelude::*;

use crate::bptt;
use crate::checkpoint::{get_le, put_le};
use crate::collective::{Collective, Sharding, Single, Summable, sum_shards};
use crate::eprop::{Chunking, Eprop, Feedback, RateForm, RateRegularization};
use crate::error::{Error, Result, check_finite, invalid};
use crate::input::SpikeEvents;
use crate::loss::{Loss, Reduction, StepTargets, Targets, softmax, step_error};
use crate::network::{Network, SpikeMode};
use crate::optim::{NonFinite, Optimizer, OptimizerState, Schedule};
use crate::params::{Gradients, Slot};
use crate::real::{Float, Real};

/// How gradients are computed.
#[derive(Clone, Debug, PartialEq)]
pub enum Algorithm {
    /// Online e-prop: memory independent of the sequence length; exact without recurrent
    /// weights and with symmetric feedback.
    Eprop(Feedback),
    /// Exact backpropagation through time: memory linear in the sequence length.
    Bptt,
}

/// Everything that configures training.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// e-prop or BPTT.
    pub algorithm: Algorithm,
    /// The loss.
    pub loss: Loss,
    /// The update rule.
    pub optimizer: Optimizer,
    /// The learning-rate schedule over updates.
    pub schedule: Schedule,
    /// Clip gradients to this global L2 norm before each update.
    pub clip_norm: Option<f64>,
    /// Firing-rate regularisation (applied to every layer).
    pub rate_regularization: Option<RateRegularization>,
    /// e-prop only: apply an update every this many steps within a sequence (truly online
    /// learning) instead of once per batch.
    pub update_every: Option<usize>,
    /// How a per-step loss is reduced over its window: the mean (default) or the sum.
    pub reduction: Reduction,
    /// Clip every projection and readout weight into `[lo, hi]` after each update (NEST's
    /// `Wmin`/`Wmax`). Biases and learnable neuron parameters keep their own ranges.
    pub weight_range: Option<(f64, f64)>,
    /// The global batch is cut into this many shards (at most one per sample), whose
    /// gradients are summed in one fixed order ([`crate::collective`]). The result depends
    /// on this number, never on how many ranks share the shards: the same value on 1, 2 or
    /// 4 ranks gives bit-identical weights. A process runs its shards in parallel (in order
    /// when a step hook is set), which for small networks is faster than one whole batch;
    /// 1 (the default) keeps the batch in one piece. A data-parallel job needs at least as
    /// many shards as ranks to keep every rank busy.
    pub shards: usize,
    /// e-prop only: steps per chunk of the per-synapse update (`docs/how-it-works.md`). The
    /// gradients equal step-by-step e-prop's up to summation order; a chunk ends at every
    /// weight update and at the end of a sequence. [`Chunking::Auto`] (the default) picks
    /// K from the cache size; `Chunking::Steps(1)` is step-by-step e-prop.
    pub chunk: Chunking,
}

impl TrainConfig {
    /// A configuration with a constant learning rate, no clipping, no regularisation,
    /// one update per batch.
    pub fn new(algorithm: Algorithm, loss: Loss, optimizer: Optimizer) -> Self {
        TrainConfig {
            algorithm,
            loss,
            optimizer,
            schedule: Schedule::Constant,
            clip_norm: None,
            rate_regularization: None,
            update_every: None,
            reduction: Reduction::MeanOverSteps,
            weight_range: None,
            shards: 1,
            chunk: Chunking::Auto,
        }
    }

    fn validate(&self) -> Result<()> {
        self.optimizer.validate()?;
        if self.shards == 0 {
            return Err(invalid("shards", 0, "at least 1"));
        }
        self.schedule.validate()?;
        if let Some(c) = self.clip_norm
            && !(c.is_finite() && c > 0.0)
        {
            return Err(invalid("clip_norm", c, "a finite number > 0"));
        }
        if let Some(r) = self.rate_regularization {
            if !(r.strength.is_finite() && r.strength >= 0.0) {
                return Err(invalid(
                    "rate regularization strength",
                    r.strength,
                    "a finite number >= 0",
                ));
            }
            if !(0.0..=1.0).contains(&r.target) {
                return Err(invalid(
                    "rate regularization target",
                    r.target,
                    "a rate per step in [0, 1]",
                ));
            }
        }
        if let Some((lo, hi)) = self.weight_range
            && !(lo.is_finite() && hi.is_finite() && lo <= 0.0 && 0.0 <= hi)
        {
            return Err(invalid(
                "weight_range",
                format!("[{lo}, {hi}]"),
                "finite bounds with lo <= 0 <= hi (absent synapses are held at 0)",
            ));
        }
        if let Some(r) = self.rate_regularization
            && r.form == RateForm::PerSequence
        {
            if matches!(self.algorithm, Algorithm::Bptt) {
                return Err(invalid(
                    "rate regularization",
                    "RateForm::PerSequence with BPTT",
                    "RateForm::Running (the per-sequence form is e-prop's)",
                ));
            }
            if let Some(k) = self.update_every {
                return Err(invalid(
                    "update_every",
                    k,
                    "None with RateForm::PerSequence (its terms are known at the end of a sequence)",
                ));
            }
        }
        match (&self.algorithm, self.update_every, self.loss) {
            (_, Some(0), _) => Err(invalid("update_every", 0, "at least 1 step")),
            (Algorithm::Bptt, Some(k), _) => Err(invalid(
                "update_every",
                k,
                "None with BPTT (updates within a sequence need e-prop)",
            )),
            (Algorithm::Eprop(_), _, Loss::CrossEntropySummed(_)) => Err(invalid(
                "loss",
                "CrossEntropySummed with e-prop",
                "a per-step loss (CrossEntropy or MeanSquared): the summed loss's error is known only at the end \
                 of the sequence; use BPTT for it",
            )),
            _ => Ok(()),
        }
    }
}

/// Loss and accuracy over a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BatchStats {
    /// Mean loss per sample.
    pub loss: f64,
    /// Correct predictions (classification): per sample, the arg-max of the readout summed
    /// over the loss window; per step and sample for per-step class targets.
    pub correct: usize,
    /// Number of predictions `correct` counts.
    pub predictions: usize,
    /// Global gradient norm before clipping (0 when no update was made).
    pub grad_norm: f64,
}

impl BatchStats {
    /// `correct / predictions`, or 0 without predictions.
    pub fn accuracy(&self) -> f64 {
        if self.predictions == 0 {
            0.0
        } else {
            self.correct as f64 / self.predictions as f64
        }
    }
}

/// What a step hook sees.
#[derive(Debug)]
pub struct StepInfo<'a, F> {
    /// Step index within the sequence.
    pub t: usize,
    /// Readout at this step, `[B, n_out]`.
    pub readout: ArrayView2<'a, F>,
    /// Loss contribution of this step.
    pub loss: f64,
}

/// Prefix of the caller's entries in a checkpoint's metadata.
const USER: &str = "user.";

/// Steps of spike events made dense at a time for e-prop ([`Trainer::train_events`]).
const EVENT_BLOCK: usize = 32;

type Hook<F> = Box<dyn FnMut(&StepInfo<'_, F>) + Send>;

struct Stream {
    t: usize,
    t_len: usize,
    /// The global batch.
    batch: usize,
    window: (usize, usize),
    scale: f64,
    since_update: usize,
    grad_norm: f64,
}

/// Loss and counts of a shard, summed over shards like the gradients.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Tally {
    loss: f64,
    correct: usize,
    predictions: usize,
}

impl Tally {
    const BYTES: usize = 24;

    fn of(stats: &BatchStats) -> Self {
        Tally {
            loss: stats.loss,
            correct: stats.correct,
            predictions: stats.predictions,
        }
    }

    fn stats(&self, grad_norm: f64) -> BatchStats {
        BatchStats {
            loss: self.loss,
            correct: self.correct,
            predictions: self.predictions,
            grad_norm,
        }
    }
}

impl Summable for Tally {
    fn add(&mut self, other: &Self) {
        self.loss += other.loss;
        self.correct += other.correct;
        self.predictions += other.predictions;
    }
    fn encoded_len(&self) -> usize {
        Self::BYTES
    }
    fn encode(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.loss.to_le_bytes());
        out[8..16].copy_from_slice(&(self.correct as u64).to_le_bytes());
        out[16..24].copy_from_slice(&(self.predictions as u64).to_le_bytes());
    }
    fn decode(&mut self, bytes: &[u8]) {
        let word = |i: usize| <[u8; 8]>::try_from(&bytes[8 * i..8 * i + 8]).expect("8 bytes");
        self.loss = f64::from_le_bytes(word(0));
        self.correct = u64::from_le_bytes(word(1)) as usize;
        self.predictions = u64::from_le_bytes(word(2)) as usize;
    }
}

/// A shard's (or a subtree's) gradients with its loss and counts.
#[derive(Clone, Debug)]
struct Partial<F> {
    grads: Gradients<F>,
    tally: Tally,
}

impl<F: Float> Summable for Partial<F> {
    fn add(&mut self, other: &Self) {
        for slot in other.grads.slots() {
            self.grads
                .get_mut(slot)
                .iter_mut()
                .zip(other.grads.get(slot))
                .for_each(|(a, &b)| *a += b);
        }
        self.tally.add(&other.tally);
    }
    fn encoded_len(&self) -> usize {
        Tally::BYTES + self.grads.len() * std::mem::size_of::<F>()
    }
    fn encode(&self, out: &mut [u8]) {
        self.tally.encode(&mut out[..Tally::BYTES]);
        let mut at = Tally::BYTES;
        let width = std::mem::size_of::<F>();
        self.grads.for_each(|_, values| {
            for (&v, dst) in values.iter().zip(out[at..].chunks_exact_mut(width)) {
                put_le(v.to_f64(), dst);
            }
            at += std::mem::size_of_val(values);
        });
    }
    fn decode(&mut self, bytes: &[u8]) {
        self.tally.decode(&bytes[..Tally::BYTES]);
        let mut at = Tally::BYTES;
        let width = std::mem::size_of::<F>();
        let slots: Vec<Slot> = self.grads.slots().collect();
        for slot in slots {
            let values = self.grads.get_mut(slot);
            for (v, src) in values.iter_mut().zip(bytes[at..].chunks_exact(width)) {
                *v = F::from_f64(get_le(src));
            }
            at += std::mem::size_of_val(values);
        }
    }
}

/// One shard of the global batch computed on this rank: its samples, its e-prop engine and
/// its scratch.
struct Shard<F: Float> {
    samples: Range<usize>,
    eprop: Option<Eprop<F>>,
    rate_pass: Option<RatePass<F>>,
    bptt: Option<bptt::Workspace<F>>,
    /// The shard's BPTT gradients, when this rank has several shards (they are all computed
    /// before the sum, in parallel).
    partial: Option<Partial<F>>,
    probs: Array2<F>,
    err: Array2<F>,
    ysum: Array2<F>,
    stats: BatchStats,
    /// The loss of the current step (for the step hook).
    step_loss: f64,
}

impl<F: Float> Shard<F> {
    fn new(samples: Range<usize>, n_out: usize) -> Self {
        let b = samples.len();
        Shard {
            samples,
            eprop: None,
            rate_pass: None,
            bptt: None,
            partial: None,
            probs: Array2::zeros((b, n_out)),
            err: Array2::zeros((b, n_out)),
            ysum: Array2::zeros((b, n_out)),
            stats: BatchStats::default(),
            step_loss: 0.0,
        }
    }

    /// One e-prop step of this shard's samples (`x` and `targets` are the global batch's):
    /// forward, error, traces and gradients, and the per-sequence rate pass.
    fn eprop_step(&mut self, net: &Network<F>, step: &EpropStep<'_, '_, F>) {
        let xs = step.x.slice(s![self.samples.clone(), ..]);
        let e = self.eprop.as_mut().expect("built");
        let y = e.forward(net, xs);
        self.step_loss = 0.0;
        match (step.in_window, step.targets) {
            (true, Some(tg)) => {
                let tg = tg.samples(self.samples.clone());
                let (l, correct) = step_error(step.loss, &y, tg, step.scale, &mut self.probs, &mut self.err);
                self.step_loss = l;
                self.stats.loss += l;
                self.ysum += &y;
                if let StepTargets::Classes(c) = tg {
                    // Per-step accuracy; replaced by the per-sample one when the targets are
                    // one class per sample.
                    self.stats.correct += correct;
                    self.stats.predictions += c.len();
                }
            }
            _ => self.err.fill(<F as Real>::zero()),
        }
        e.learn(net, xs, &self.err.view(), step.reg);
        if let Some(rp) = &mut self.rate_pass {
            for (b, (e, counts)) in rp.engines.iter_mut().zip(&mut rp.counts).enumerate() {
                let xb = xs.slice(s![b..b + 1, ..]);
                e.forward(net, xb);
                e.learn(net, xb, &rp.zero_err.view(), None);
                for (p, c) in counts.iter_mut().enumerate() {
                    c.iter_mut()
                        .zip(e.outputs(p).row(0))
                        .for_each(|(c, z)| *c += z.to_f64());
                }
            }
        }
    }

    /// BPTT on this shard's samples, gradients and loss into `out`; the step hook, if given,
    /// sees the shard's readout.
    fn bptt(&mut self, net: &Network<F>, pass: &BpttPass<'_, '_, F>, out: &mut Partial<F>, hook: Option<&mut Hook<F>>) {
        let x = pass.inputs.slice(s![.., self.samples.clone(), ..]);
        let x = x.as_standard_layout();
        let targets = pass.targets.samples(self.samples.clone());
        let t_len = x.shape()[0];
        let mut stats = BatchStats::default();
        let (probs, ysum) = (&mut self.probs, &mut self.ysum);
        bptt::gradients(
            net,
            x.view(),
            pass.reg,
            &mut SpikeMode::Plain,
            &mut out.grads,
            &mut self.bptt,
            |ys, errs| {
                stats = loss_over(
                    pass.loss,
                    pass.reduction,
                    pass.batch,
                    ys,
                    &targets,
                    pass.window,
                    errs,
                    probs,
                    ysum,
                );
                if let Some(hook) = hook {
                    for t in 0..t_len {
                        hook(&StepInfo {
                            t,
                            readout: ys.index_axis(Axis(0), t),
                            loss: 0.0,
                        });
                    }
                }
            },
        );
        out.tally = Tally::of(&stats);
    }
}

/// What every shard's e-prop step shares.
struct EpropStep<'a, 't, F> {
    x: ArrayView2<'a, F>,
    targets: Option<StepTargets<'t, F>>,
    in_window: bool,
    loss: &'a Loss,
    scale: F,
    reg: Option<(RateRegularization, F)>,
}

/// What every shard's BPTT pass shares.
struct BpttPass<'a, 't, F> {
    inputs: ArrayView3<'a, F>,
    targets: &'a Targets<'t, F>,
    loss: &'a Loss,
    reduction: Reduction,
    /// The global batch.
    batch: usize,
    window: (usize, usize),
    reg: Option<(RateRegularization, F)>,
}

/// Trains a [`Network`].
///
/// The global batch is cut into [`TrainConfig::shards`] shards whose gradients are summed
/// in a fixed order ([`crate::collective`]); with a [`Collective`] of several ranks
/// ([`Trainer::with_collective`]) each rank computes its own shards and every rank applies
/// the same update.
pub struct Trainer<F: Float> {
    net: Network<F>,
    config: TrainConfig,
    opt: OptimizerState<F>,
    /// The summed gradients (and loss) of the last computation.
    sum: Partial<F>,
    scratch: Vec<Partial<F>>,
    tally_scratch: Vec<Tally>,
    buf: Vec<u8>,
    comm: Arc<dyn Collective>,
    /// The last-level cache size that `Chunking::Auto` chooses the chunk length for (rank 0's).
    cache: usize,
    /// The layout of the current global batch and this rank's shards of it.
    layout: Sharding,
    shards: Vec<Shard<F>>,
    /// This rank's readout of the current step ([`Trainer::step`]).
    readout: Array2<F>,
    hook: Option<Hook<F>>,
    stream: Option<Stream>,
}

/// The per-sequence rate regulariser's state ([`RateForm::PerSequence`]): per sample, an
/// unfiltered unit-signal engine (its gradients are `Σ_t e^t`) and every neuron's spike
/// count; and scratch for its gradients.
struct RatePass<F: Float> {
    engines: Vec<Eprop<F>>,
    /// `[sample][population][neuron]`.
    counts: Vec<Vec<Vec<f64>>>,
    zero_err: Array2<F>,
    sums: Gradients<F>,
}

impl<F: Float> Trainer<F> {
    /// A trainer for `net` with `config`, in one process.
    pub fn new(net: Network<F>, config: TrainConfig) -> Result<Self> {
        Self::with_collective(net, config, Arc::new(Single))
    }

    /// A trainer that is one rank of a data-parallel job: every rank builds the same
    /// network and configuration and passes every call the same global batch; each computes
    /// the gradients of its own shards only ([`TrainConfig::shards`]), and all apply the same
    /// summed update. The weights after any number of updates are bit-identical whatever
    /// the number of ranks.
    pub fn with_collective(net: Network<F>, config: TrainConfig, comm: Arc<dyn Collective>) -> Result<Self> {
        config.validate()?;
        net.validate()?;
        if let Algorithm::Eprop(Feedback::Matrices(given)) = &config.algorithm {
            check_feedback(&net, given)?;
        }
        let opt = OptimizerState::new(&net.params);
        let grads = net.params.zeros_like();
        // The cache size `Chunking::Auto` chooses K for: rank 0's, so that every rank cuts its
        // shards' sequences alike and the sums stay independent of the rank count.
        let mut cache = (Chunking::cache_bytes() as u64).to_le_bytes();
        if comm.size() > 1 && config.chunk == Chunking::Auto && matches!(config.algorithm, Algorithm::Eprop(_)) {
            comm.broadcast(0, &mut cache)?;
        }
        Ok(Trainer {
            cache: u64::from_le_bytes(cache) as usize,
            net,
            config,
            opt,
            sum: Partial {
                grads,
                tally: Tally::default(),
            },
            scratch: Vec::new(),
            tally_scratch: Vec::new(),
            buf: Vec::new(),
            comm,
            layout: Sharding::new(0, 1, 1),
            shards: Vec::new(),
            readout: Array2::zeros((0, 0)),
            hook: None,
            stream: None,
        })
    }

    /// The network being trained.
    pub fn network(&self) -> &Network<F> {
        &self.net
    }
    /// Gives the network back.
    pub fn into_network(self) -> Network<F> {
        self.net
    }
    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }
    /// The ranks this trainer shares its work with ([`Single`] unless built with
    /// [`Trainer::with_collective`]).
    pub fn collective(&self) -> &dyn Collective {
        &*self.comm
    }
    /// Number of optimiser updates applied so far.
    pub fn updates(&self) -> usize {
        self.opt.steps()
    }
    /// The gradients of the last computation (summed over every shard, on every rank).
    pub fn gradients(&self) -> &Gradients<F> {
        &self.sum.grads
    }

    /// Writes the network and the optimiser state (moments, update count) to `path`,
    /// atomically, so that training can resume exactly where it stopped. In a
    /// data-parallel job every rank holds the same state; let one rank (rank 0) write it.
    pub fn save_checkpoint(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        self.save_checkpoint_with(path, &BTreeMap::new())
    }

    /// [`Trainer::save_checkpoint`] with the caller's own entries in the file's metadata
    /// (stored under `user.KEY`): what a training loop needs to continue exactly, such as
    /// its epoch, the position of its random generator and its data order.
    /// [`Trainer::load_checkpoint`] gives them back.
    pub fn save_checkpoint_with(
        &self,
        path: impl AsRef<std::path::Path>,
        user: &BTreeMap<String, String>,
    ) -> Result<()> {
        let mut tensors = self.net.tensors();
        tensors.extend(self.opt.tensors());
        let mut metadata = self.net.metadata();
        metadata.insert("optimizer_step".into(), self.opt.steps().to_string());
        metadata.insert("config".into(), format!("{:?}", self.config));
        for (k, v) in user {
            metadata.insert(format!("{USER}{k}"), v.clone());
        }
        let bytes = crate::checkpoint::encode(metadata, &tensors, Network::<F>::dtype())?;
        crate::checkpoint::write_atomic(path.as_ref(), &bytes)
    }

    /// Restores a checkpoint written by [`Trainer::save_checkpoint`] (or a network saved by
    /// [`Network::save`], keeping the current optimiser state) and returns the caller's
    /// entries saved with [`Trainer::save_checkpoint_with`] (empty for other files). The
    /// network must have the same model and sizes; nothing changes unless the whole file
    /// matches. A checkpoint holds no trace of the rank count: a job may resume on any
    /// number of ranks.
    pub fn load_checkpoint(&mut self, path: impl AsRef<std::path::Path>) -> Result<BTreeMap<String, String>> {
        let path = path.as_ref();
        let (metadata, mut tensors) = crate::checkpoint::read(path)?;
        let mut net = self.net.clone();
        net.assign(path, &metadata, &mut tensors)?;
        let mut opt = self.opt.clone();
        if let Some(step) = metadata.get("optimizer_step") {
            opt.assign(path, &mut tensors, step)?;
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(Error::Format {
                path: path.to_path_buf(),
                message: format!("unexpected tensor {extra}: the checkpoint is of a different network"),
            });
        }
        net.validate()?;
        self.net = net;
        self.opt = opt;
        self.shards.clear();
        self.stream = None;
        Ok(metadata
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix(USER).map(|k| (k.to_string(), v)))
            .collect())
    }

    /// Calls `hook` after every step of every sequence (training and evaluation), once per
    /// shard of this rank with that shard's readout (the whole batch's with one shard).
    pub fn set_step_hook(&mut self, hook: impl FnMut(&StepInfo<'_, F>) + Send + 'static) {
        self.hook = Some(Box::new(hook));
    }

    /// Bytes of training state the algorithm keeps on this rank for a global batch of
    /// `batch` samples and sequence length `t_len`: e-prop's traces, filtered traces and
    /// gradient accumulators for this rank's shards (independent of `t_len`), or BPTT's tapes
    /// of this rank's shards (linear in `t_len`) plus the gradients, one more per shard when
    /// the rank has several; with several shards in all, one more gradient-sized buffer per
    /// level of the summation tree.
    pub fn state_bytes(&mut self, batch: usize, t_len: usize) -> usize {
        let f = std::mem::size_of::<F>();
        let grads = self.sum.grads.len() * f;
        let layout = Sharding::new(batch, self.config.shards, self.comm.size());
        let tree = layout.depth() * grads;
        match &self.config.algorithm {
            Algorithm::Eprop(_) => {
                self.ensure_shards(batch);
                self.ensure_engines();
                let engines: usize = (self.shards.iter())
                    .map(|s| {
                        let pass = s.rate_pass.as_ref().map_or(0, |rp| {
                            rp.engines.iter().map(|e| e.state_bytes()).sum::<usize>() + rp.sums.len() * f
                        });
                        s.eprop.as_ref().map_or(0, |e| e.state_bytes()) + pass
                    })
                    .sum();
                engines + tree
            }
            Algorithm::Bptt => {
                let mine = layout.owned(self.comm.rank());
                let partials = if mine.len() > 1 { mine.len() * grads } else { 0 };
                let tapes: usize = mine
                    .map(|k| bptt::tape_bytes(&self.net, layout.samples(k).len(), t_len))
                    .sum();
                tapes + grads + partials + tree
            }
        }
    }

    /// Lays out a global batch of `batch` samples over the shards and ranks, keeping the
    /// shards (and their engines) when the layout is unchanged.
    fn ensure_shards(&mut self, batch: usize) {
        let layout = Sharding::new(batch, self.config.shards, self.comm.size());
        if layout == self.layout && !self.shards.is_empty() {
            return;
        }
        let n_out = self.net.n_out();
        let mine = layout.owned(self.comm.rank());
        let mut old: Vec<Shard<F>> = std::mem::take(&mut self.shards);
        self.shards = mine
            .map(|k| {
                let samples = layout.samples(k);
                // An engine of the same size is reused (its state is reset at every sequence).
                match old.iter().position(|s| s.samples.len() == samples.len()) {
                    Some(i) => {
                        let mut s = old.swap_remove(i);
                        s.samples = samples;
                        s
                    }
                    None => Shard::new(samples, n_out),
                }
            })
            .collect();
        self.readout = Array2::zeros((layout.samples_of(self.comm.rank()).len(), n_out));
        self.layout = layout;
    }

    /// Builds the e-prop engines of this rank's shards.
    fn ensure_engines(&mut self) {
        let Algorithm::Eprop(feedback) = &self.config.algorithm else {
            return;
        };
        let per_sequence = self
            .config
            .rate_regularization
            .is_some_and(|r| r.form == RateForm::PerSequence);
        let sizes: Vec<usize> = self.net.populations.iter().map(|p| p.size).collect();
        for shard in &mut self.shards {
            let b = shard.samples.len();
            if shard.eprop.is_none() {
                shard.eprop = Some(Eprop::new(&self.net, b, feedback, (self.config.chunk, self.cache)));
            }
            if per_sequence && shard.rate_pass.is_none() {
                shard.rate_pass = Some(RatePass {
                    engines: (0..b)
                        .map(|_| Eprop::unit(&self.net, 1, (self.config.chunk, self.cache)))
                        .collect(),
                    counts: vec![sizes.iter().map(|&n| vec![0.0; n]).collect(); b],
                    zero_err: Array2::zeros((1, self.net.n_out())),
                    sums: self.net.params.zeros_like(),
                });
            }
        }
    }

    fn reg(&self, batch: usize, t_len: usize) -> Option<(RateRegularization, F)> {
        self.config
            .rate_regularization
            .map(|r| (r, F::from_f64(1.0 / (batch * t_len.max(1)) as f64)))
    }

    /// Computes the gradients of the loss on one batch (`inputs` `[T, B, n_in]`) without
    /// updating the network; returns them with the batch's loss and accuracy.
    pub fn compute_gradients(
        &mut self,
        inputs: ArrayView3<F>,
        targets: Targets<'_, F>,
    ) -> Result<(&Gradients<F>, BatchStats)> {
        let stats = self.gradients_inner(inputs, targets, false)?;
        Ok((&self.sum.grads, stats))
    }

    /// Computes the gradients on one batch and applies the optimiser (with e-prop and
    /// `update_every`, several times within the sequence).
    pub fn train_batch(&mut self, inputs: ArrayView3<F>, targets: Targets<'_, F>) -> Result<BatchStats> {
        self.gradients_inner(inputs, targets, true)
    }

    /// [`Trainer::train_batch`] on sparse spike events. e-prop streams the events step by
    /// step (no dense copy of the sequence); BPTT, which stores the sequence anyway, expands
    /// them.
    pub fn train_events(&mut self, events: &SpikeEvents, targets: Targets<'_, F>) -> Result<BatchStats> {
        self.events_inner(events, targets, true)
    }

    /// [`Trainer::compute_gradients`] on sparse spike events.
    pub fn compute_gradients_events(
        &mut self,
        events: &SpikeEvents,
        targets: Targets<'_, F>,
    ) -> Result<(&Gradients<F>, BatchStats)> {
        let stats = self.events_inner(events, targets, false)?;
        Ok((&self.sum.grads, stats))
    }

    fn events_inner(&mut self, events: &SpikeEvents, targets: Targets<'_, F>, update: bool) -> Result<BatchStats> {
        if events.channels() != self.net.n_in {
            return Err(Error::Shape {
                what: "spike events".into(),
                expected: format!("{} channels", self.net.n_in),
                found: vec![events.steps(), events.batch(), events.channels()],
            });
        }
        let (t_len, batch) = (events.steps(), events.batch());
        if !matches!(self.config.algorithm, Algorithm::Eprop(_)) {
            let x = events.to_dense::<F>();
            return self.gradients_inner(x.view(), targets, update);
        }
        targets.validate(&self.config.loss, t_len, batch, self.net.n_out())?;
        self.check_window(t_len)?;
        self.begin_inner(batch, t_len)?;
        // Blocks of steps made dense, so that the shards run a block at a time; the memory
        // stays independent of the sequence's length.
        let block_len = t_len.min(EVENT_BLOCK);
        let (mut x, mut block) = (
            Array2::<F>::zeros((batch, self.net.n_in)),
            Array3::<F>::zeros((block_len, batch, self.net.n_in)),
        );
        for t0 in (0..t_len).step_by(block_len) {
            let len = block_len.min(t_len - t0);
            for i in 0..len {
                events.fill_step(t0 + i, &mut x);
                block.index_axis_mut(Axis(0), i).assign(&x);
            }
            self.run_steps(block.slice(s![..len, .., ..]), &targets, update)?;
        }
        self.end_inner(update, Some(&targets))
    }

    /// Loss and accuracy of the network on one batch, without gradients. In a data-parallel
    /// job each rank evaluates its own shards and every rank gets the totals.
    pub fn evaluate(&mut self, inputs: ArrayView3<F>, targets: Targets<'_, F>) -> Result<BatchStats> {
        let inputs = inputs.as_standard_layout();
        let (t_len, batch) = self.check_batch(&inputs.view(), &targets)?;
        let layout = Sharding::new(batch, self.config.shards, self.comm.size());
        let window = self.config.loss.window().bounds(t_len);
        let n_out = self.net.n_out();
        let mut total = Tally::default();
        let Trainer {
            net,
            config,
            comm,
            hook,
            tally_scratch,
            buf,
            ..
        } = self;
        let evaluate_shard = |k: usize, hook: Option<&mut Hook<F>>| -> Result<Tally> {
            let samples = layout.samples(k);
            let b = samples.len();
            let out_run = net.run(inputs.slice(s![.., samples.clone(), ..]))?;
            let (mut probs, mut ysum) = (Array2::zeros((b, n_out)), Array2::zeros((b, n_out)));
            let mut errs = Array3::zeros((t_len, b, n_out));
            let stats = loss_over(
                &config.loss,
                config.reduction,
                batch,
                &out_run.readout.view(),
                &targets.samples(samples),
                window,
                &mut errs,
                &mut probs,
                &mut ysum,
            );
            if let Some(hook) = hook {
                for t in 0..t_len {
                    hook(&StepInfo {
                        t,
                        readout: out_run.readout.index_axis(Axis(0), t),
                        loss: 0.0,
                    });
                }
            }
            Ok(Tally::of(&stats))
        };
        // This rank's shards in parallel unless a step hook (called in order) is set.
        let mine = layout.owned(comm.rank());
        let tallies: Vec<Tally> = match hook {
            None if mine.len() > 1 => mine
                .clone()
                .into_par_iter()
                .map(|k| evaluate_shard(k, None))
                .collect::<Result<_>>()?,
            _ => Vec::new(),
        };
        sum_shards(&**comm, &layout, &mut total, tally_scratch, buf, &mut |k, out| {
            *out = match tallies.get(k - mine.start) {
                Some(t) => *t,
                None => evaluate_shard(k, hook.as_mut())?,
            };
            Ok(())
        })?;
        Ok(total.stats(0.0))
    }

    /// The loss window must hold at least one of the `t_len` steps.
    fn check_window(&self, t_len: usize) -> Result<()> {
        let (w0, w1) = self.config.loss.window().bounds(t_len);
        if w1 <= w0 {
            return Err(invalid(
                "loss window",
                format!("{:?}", self.config.loss.window()),
                &format!("a non-empty window within {t_len} steps"),
            ));
        }
        Ok(())
    }

    pub(crate) fn check_batch(&self, inputs: &ArrayView3<F>, targets: &Targets<'_, F>) -> Result<(usize, usize)> {
        self.net.check_inputs(inputs)?;
        let (t_len, batch) = (inputs.shape()[0], inputs.shape()[1]);
        if t_len == 0 {
            return Err(invalid("sequence length", 0, "at least 1 step"));
        }
        targets.validate(&self.config.loss, t_len, batch, self.net.n_out())?;
        self.check_window(t_len)?;
        Ok((t_len, batch))
    }

    fn gradients_inner(&mut self, inputs: ArrayView3<F>, targets: Targets<'_, F>, update: bool) -> Result<BatchStats> {
        let inputs = inputs.as_standard_layout();
        let inputs = inputs.view();
        let (t_len, batch) = self.check_batch(&inputs, &targets)?;
        match &self.config.algorithm {
            Algorithm::Bptt => {
                self.ensure_shards(batch);
                let pass = BpttPass {
                    inputs,
                    targets: &targets,
                    loss: &self.config.loss,
                    reduction: self.config.reduction,
                    batch,
                    window: self.config.loss.window().bounds(t_len),
                    reg: self.reg(batch, t_len),
                };
                let Trainer {
                    net,
                    comm,
                    hook,
                    scratch,
                    buf,
                    sum,
                    layout,
                    shards,
                    ..
                } = self;
                let several = shards.len() > 1;
                if several {
                    // Every shard of this rank first, each into its own buffer: in parallel
                    // unless a step hook (called in order) is set.
                    let run = |shard: &mut Shard<F>, hook: Option<&mut Hook<F>>| {
                        let mut out = shard.partial.take().unwrap_or_else(|| sum.clone());
                        shard.bptt(net, &pass, &mut out, hook);
                        shard.partial = Some(out);
                    };
                    match hook {
                        None => shards.par_iter_mut().for_each(|shard| run(shard, None)),
                        Some(h) => shards.iter_mut().for_each(|shard| run(shard, Some(&mut *h))),
                    }
                }
                let first = layout.owned(comm.rank()).start;
                sum_shards(&**comm, layout, sum, scratch, buf, &mut |k, out| {
                    let shard = &mut shards[k - first];
                    match &shard.partial {
                        Some(p) if several => out.clone_from(p),
                        _ => shard.bptt(net, &pass, out, hook.as_mut()),
                    }
                    Ok(())
                })?;
                let grad_norm = if update {
                    apply_update(
                        &mut self.opt,
                        &mut self.net,
                        &self.sum.grads,
                        &self.config,
                        self.sum.tally.loss,
                    )?
                } else {
                    self.sum.grads.norm()
                };
                Ok(self.sum.tally.stats(grad_norm))
            }
            Algorithm::Eprop(_) => {
                self.begin_inner(batch, t_len)?;
                self.run_steps(inputs, &targets, update)?;
                self.end_inner(update, Some(&targets))
            }
        }
    }

    /// Starts a streamed e-prop sequence of `t_len` steps for a batch of `batch` samples:
    /// feed it with [`Trainer::step`] and finish with [`Trainer::end_sequence`]. Nothing per
    /// step is kept, so `t_len` can be arbitrarily long; it fixes the loss window and scale.
    pub fn begin_sequence(&mut self, batch: usize, t_len: usize) -> Result<()> {
        if !matches!(self.config.algorithm, Algorithm::Eprop(_)) {
            return Err(invalid(
                "algorithm",
                "BPTT",
                "e-prop for streamed sequences (BPTT needs the whole sequence)",
            ));
        }
        if batch == 0 || t_len == 0 {
            return Err(invalid(
                "batch / sequence length",
                format!("{batch} / {t_len}"),
                "both at least 1",
            ));
        }
        self.check_window(t_len)?;
        self.begin_inner(batch, t_len)
    }

    /// One streamed step: inputs `[B, n_in]`, targets for this step (required inside the
    /// loss window). Applies an update every `update_every` steps if configured. Returns
    /// this step's readout of this rank's samples (`[B, n_out]` in one process; in a
    /// data-parallel job the rows of this rank's shards, in order).
    pub fn step(&mut self, x: ArrayView2<F>, targets: Option<StepTargets<'_, F>>) -> Result<ArrayView2<'_, F>> {
        let s = self
            .stream
            .as_ref()
            .ok_or_else(|| Error::State("Trainer::step before begin_sequence".into()))?;
        let batch = s.batch;
        if x.shape() != [batch, self.net.n_in] {
            return Err(Error::Shape {
                what: "step inputs".into(),
                expected: format!("[{batch}, {}]", self.net.n_in),
                found: x.shape().to_vec(),
            });
        }
        check_finite("step inputs", x.iter().copied())?;
        if s.t >= s.t_len {
            return Err(Error::State(format!(
                "Trainer::step: the sequence has only {} steps",
                s.t_len
            )));
        }
        if let Some(t) = &targets {
            match (t, self.config.loss.is_classification()) {
                (StepTargets::Classes(c), true) => {
                    if c.len() != batch {
                        return Err(Error::Shape {
                            what: "step targets".into(),
                            expected: format!("[{batch}]"),
                            found: vec![c.len()],
                        });
                    }
                    for (sample, &class) in c.iter().enumerate() {
                        if class >= self.net.n_out() {
                            return Err(Error::Class {
                                sample,
                                class,
                                classes: self.net.n_out(),
                            });
                        }
                    }
                }
                (StepTargets::Values(v), false) => {
                    if v.shape() != [batch, self.net.n_out()] {
                        return Err(Error::Shape {
                            what: "step targets".into(),
                            expected: format!("[{batch}, {}]", self.net.n_out()),
                            found: v.shape().to_vec(),
                        });
                    }
                    check_finite("step targets", v.iter().copied())?;
                }
                _ => {
                    return Err(invalid(
                        "step targets",
                        "the wrong kind",
                        "class labels for cross-entropy, values for mean squared error",
                    ));
                }
            }
        } else if (s.window.0..s.window.1).contains(&s.t) {
            return Err(invalid(
                "step targets",
                "None",
                &format!("targets at step {} (inside the loss window)", s.t),
            ));
        }
        let x = x.as_standard_layout();
        self.step_inner(x.view(), targets, true)?;
        let base = self.shards.first().map_or(0, |s| s.samples.start);
        for shard in &self.shards {
            let y = &shard.eprop.as_ref().expect("begun").y;
            self.readout
                .slice_mut(s![shard.samples.start - base..shard.samples.end - base, ..])
                .assign(y);
        }
        Ok(self.readout.view())
    }

    /// Ends a streamed sequence: applies the update for the gradients accumulated since
    /// the last one, and returns the sequence's loss and accuracy.
    pub fn end_sequence(&mut self) -> Result<BatchStats> {
        if self.stream.is_none() {
            return Err(Error::State("Trainer::end_sequence before begin_sequence".into()));
        }
        self.end_inner(true, None)
    }

    fn begin_inner(&mut self, batch: usize, t_len: usize) -> Result<()> {
        if !matches!(self.config.algorithm, Algorithm::Eprop(_)) {
            return Err(invalid("algorithm", "BPTT", "e-prop"));
        }
        self.ensure_shards(batch);
        self.ensure_engines();
        // Gradients are read every `update_every` steps, or at the end of the sequence.
        let segment = self.config.update_every.map_or(t_len, |u| u.min(t_len));
        for shard in &mut self.shards {
            let e = shard.eprop.as_mut().expect("built");
            e.begin_sequence(&self.net);
            e.zero_gradients();
            e.plan_chunks(segment);
            if let Some(rp) = &mut shard.rate_pass {
                for e in &mut rp.engines {
                    e.begin_sequence(&self.net);
                    e.zero_gradients();
                    e.plan_chunks(t_len);
                }
                rp.counts.iter_mut().flatten().for_each(|c| c.fill(0.0));
            }
            shard.ysum.fill(<F as Real>::zero());
            shard.stats = BatchStats::default();
        }
        let window = self.config.loss.window().bounds(t_len);
        self.stream = Some(Stream {
            t: 0,
            t_len,
            batch,
            window,
            scale: self.config.reduction.scale(batch, window.1 - window.0),
            since_update: 0,
            grad_norm: 0.0,
        });
        Ok(())
    }

    fn step_inner(&mut self, x: ArrayView2<F>, targets: Option<StepTargets<'_, F>>, update: bool) -> Result<()> {
        let (batch, t_len) = self.stream.as_ref().map_or((1, 1), |s| (s.batch, s.t_len));
        let reg = self.reg(batch, t_len);
        let s = self.stream.as_ref().expect("begun");
        let step = EpropStep {
            x,
            targets,
            in_window: (s.window.0..s.window.1).contains(&s.t),
            loss: &self.config.loss,
            scale: F::from_f64(s.scale),
            reg,
        };
        let (net, t) = (&self.net, s.t);
        // Shards are independent: in parallel, each with its own engine, unless a step hook
        // (called in shard order) is set.
        match &mut self.hook {
            None if self.shards.len() > 1 => self.shards.par_iter_mut().for_each(|sh| sh.eprop_step(net, &step)),
            hook => {
                for shard in &mut self.shards {
                    shard.eprop_step(net, &step);
                    if let Some(hook) = hook {
                        hook(&StepInfo {
                            t,
                            readout: shard.eprop.as_ref().expect("built").y.view(),
                            loss: shard.step_loss,
                        });
                    }
                }
            }
        }
        self.advance(1, update)
    }

    /// e-prop over the steps of `x` (`[len, B, n_in]`, from the stream's current step on)
    /// with the sequence's `targets`. Without a step hook and with several shards, each shard
    /// runs every step up to the next update in one parallel task, so the shards meet once
    /// per update rather than once per step; the results are the same, bit for bit, since
    /// the shards share nothing between updates.
    fn run_steps(&mut self, x: ArrayView3<F>, targets: &Targets<'_, F>, update: bool) -> Result<()> {
        let len = x.shape()[0];
        if self.hook.is_some() || self.shards.len() <= 1 {
            for i in 0..len {
                let t = self.stream.as_ref().expect("begun").t;
                self.step_inner(x.index_axis(Axis(0), i), Some(targets.at(t)), update)?;
            }
            return Ok(());
        }
        let (batch, t_len) = self.stream.as_ref().map_or((1, 1), |s| (s.batch, s.t_len));
        let reg = self.reg(batch, t_len);
        let mut i0 = 0;
        while i0 < len {
            let s = self.stream.as_ref().expect("begun");
            let to_update = match (update, self.config.update_every) {
                (true, Some(k)) => k - s.since_update,
                _ => len,
            };
            let i1 = len.min(i0 + to_update);
            let (t0, window, scale) = (s.t, s.window, F::from_f64(s.scale));
            let (net, loss) = (&self.net, &self.config.loss);
            self.shards.par_iter_mut().for_each(|sh| {
                for i in i0..i1 {
                    let t = t0 + i - i0;
                    let step = EpropStep {
                        x: x.index_axis(Axis(0), i),
                        targets: Some(targets.at(t)),
                        in_window: (window.0..window.1).contains(&t),
                        loss,
                        scale,
                        reg,
                    };
                    sh.eprop_step(net, &step);
                }
            });
            self.advance(i1 - i0, update)?;
            i0 = i1;
        }
        Ok(())
    }

    /// Moves the stream on by `steps` steps, applying the update when `update_every` of them
    /// have passed since the last one.
    fn advance(&mut self, steps: usize, update: bool) -> Result<()> {
        let s = self.stream.as_mut().expect("begun");
        s.t += steps;
        s.since_update += steps;
        if update
            && let Some(k) = self.config.update_every
            && s.since_update >= k
        {
            let grad_norm = self.sum_and_update(None)?;
            let s = self.stream.as_mut().expect("begun");
            s.grad_norm = grad_norm;
            s.since_update = 0;
        }
        Ok(())
    }

    /// Sums every shard's gradients ([`Trainer::sum_gradients`]), applies the update and
    /// restarts the engines' accumulators; within a sequence (`rate` is `None`) the engines
    /// also take the new weights. Returns the gradient norm.
    fn sum_and_update(&mut self, rate: Option<usize>) -> Result<f64> {
        self.sum_gradients(rate)?;
        let norm = apply_update(
            &mut self.opt,
            &mut self.net,
            &self.sum.grads,
            &self.config,
            self.sum.tally.loss,
        )?;
        for shard in &mut self.shards {
            let e = shard.eprop.as_mut().expect("built");
            e.zero_gradients();
            if rate.is_none() {
                e.refresh_weights(&self.net);
            }
        }
        Ok(norm)
    }

    /// Sums this rank's shards' e-prop gradients, losses and counts with every other rank's
    /// into `self.sum`; with `rate` (the sequence's length), the per-sequence rate
    /// regulariser's terms too.
    fn sum_gradients(&mut self, rate: Option<usize>) -> Result<()> {
        let batch = self.stream.as_ref().map_or(1, |s| s.batch);
        let Trainer {
            net,
            config,
            comm,
            scratch,
            buf,
            sum,
            layout,
            shards,
            ..
        } = self;
        let first = layout.owned(comm.rank()).start;
        sum_shards(&**comm, layout, sum, scratch, buf, &mut |k, out| {
            let shard = &mut shards[k - first];
            shard.eprop.as_mut().expect("built").gradients(net, &mut out.grads);
            if let (Some(t_len), Some(rp), Some(reg)) = (rate, &mut shard.rate_pass, config.rate_regularization) {
                add_rate_terms(net, rp, reg, t_len, batch, &mut out.grads);
            }
            out.tally = Tally::of(&shard.stats);
            Ok(())
        })
    }

    fn end_inner(&mut self, update: bool, targets: Option<&Targets<'_, F>>) -> Result<BatchStats> {
        let (since_update, t_len, grad_norm) = {
            let s = self.stream.as_ref().expect("begun");
            (s.since_update, s.t_len, s.grad_norm)
        };
        if let Some(Targets::Classes(c)) = targets {
            for shard in &mut self.shards {
                shard.stats.correct = count_correct(&shard.ysum, &c[shard.samples.clone()], &mut shard.probs);
                shard.stats.predictions = shard.samples.len();
            }
        }
        let result = if since_update > 0 && update {
            self.sum_and_update(Some(t_len))
        } else if !update {
            self.sum_gradients(Some(t_len)).map(|()| self.sum.grads.norm())
        } else {
            // Every step's gradient is applied already; only the loss and counts are summed.
            let Trainer {
                comm,
                tally_scratch,
                buf,
                layout,
                shards,
                sum,
                ..
            } = self;
            let first = layout.owned(comm.rank()).start;
            sum_shards(&**comm, layout, &mut sum.tally, tally_scratch, buf, &mut |k, out| {
                *out = Tally::of(&shards[k - first].stats);
                Ok(())
            })
            .map(|()| grad_norm)
        };
        self.stream = None;
        Ok(self.sum.tally.stats(result?))
    }
}

/// Adds the per-sequence rate regulariser's terms, averaged over the global batch of `batch`
/// samples like the loss: `(1/B) Σ_b r_jb Σ_t e_jib^t` with `r_jb = c (n_jb / T − f*) / T`,
/// to every projection's and bias's gradient.
fn add_rate_terms<F: Float>(
    net: &Network<F>,
    rp: &mut RatePass<F>,
    reg: RateRegularization,
    t_len: usize,
    batch: usize,
    grads: &mut Gradients<F>,
) {
    let (t, batch) = (t_len.max(1) as f64, batch.max(1) as f64);
    for (e, counts) in rp.engines.iter_mut().zip(&rp.counts) {
        e.gradients(net, &mut rp.sums);
        for (p, c) in counts.iter().enumerate() {
            let factor: Vec<F> = c
                .iter()
                .map(|&n| F::from_f64(reg.strength * (n / t - reg.target) / t / batch))
                .collect();
            for (i, proj) in net.projections.iter().enumerate().filter(|(_, pr)| pr.target == p) {
                proj.add_scaled_rows(&mut grads.projections[i], &rp.sums.projections[i], &factor);
            }
            if let (Some(g), Some(sums)) = (&mut grads.bias[p], &rp.sums.bias[p]) {
                for (mut row, srow) in g.outer_iter_mut().zip(sums.outer_iter()) {
                    row.iter_mut()
                        .zip(srow)
                        .zip(&factor)
                        .for_each(|((g, &s), &f)| *g += f * s);
                }
            }
        }
    }
}

/// Every non-output population has one finite feedback matrix `[n_out, n]`, and every matrix
/// names a population.
fn check_feedback<F: Float>(net: &Network<F>, given: &[(String, Array2<f64>)]) -> Result<()> {
    for (name, b) in given {
        let Some(pop) = net.populations.iter().find(|p| p.name == *name) else {
            return Err(invalid(
                "feedback matrix",
                name,
                "the name of a population of the network",
            ));
        };
        if b.dim() != (net.n_out(), pop.size) {
            return Err(invalid(
                &format!("feedback matrix of {name}"),
                format!("shape {:?}", b.shape()),
                &format!("[n_out, n] = [{}, {}]", net.n_out(), pop.size),
            ));
        }
        if let Some(v) = b.iter().find(|v| !v.is_finite()) {
            return Err(invalid(&format!("feedback matrix of {name}"), v, "finite values"));
        }
        if given.iter().filter(|(n, _)| n == name).count() > 1 {
            return Err(invalid("feedback matrix", name, "one matrix per population"));
        }
    }
    for (p, pop) in net.populations.iter().enumerate() {
        if net.readout.population != Some(p) && !given.iter().any(|(n, _)| *n == pop.name) {
            return Err(invalid(
                "feedback matrices",
                format!("none for population {}", pop.name),
                "a matrix for every population except an output population",
            ));
        }
    }
    Ok(())
}

/// Loss, accuracy and `errs = ∂E/∂y` of a whole readout `[T, B, n_out]`, part of a global
/// batch of `batch_total` samples (the loss is averaged over that batch).
#[allow(clippy::too_many_arguments)]
pub(crate) fn loss_over<F: Float>(
    loss_fn: &Loss,
    reduction: Reduction,
    batch_total: usize,
    ys: &ArrayView3<F>,
    targets: &Targets<'_, F>,
    window: (usize, usize),
    errs: &mut Array3<F>,
    probs: &mut Array2<F>,
    ysum: &mut Array2<F>,
) -> BatchStats {
    let (t_len, batch) = (ys.shape()[0], ys.shape()[1]);
    let (w0, w1) = window;
    let mut stats = BatchStats::default();
    match *loss_fn {
        Loss::CrossEntropySummed(_) => {
            let mut sum = Array2::<F>::zeros((batch, ys.shape()[2]));
            for t in w0..w1 {
                sum += &ys.index_axis(Axis(0), t);
            }
            let scale = F::from_f64(1.0 / batch_total as f64);
            let mut err = Array2::zeros(sum.raw_dim());
            let classes = match targets {
                Targets::Classes(c) => StepTargets::Classes(ndarray::ArrayView1::from(*c)),
                other => other.at(t_len - 1),
            };
            let (loss, correct) = step_error(loss_fn, &sum.view(), classes, scale, probs, &mut err);
            stats.loss = loss;
            stats.correct = correct;
            stats.predictions = batch;
            for t in w0..w1 {
                errs.index_axis_mut(Axis(0), t).assign(&err);
            }
        }
        _ => {
            let scale = F::from_f64(reduction.scale(batch_total, w1 - w0));
            ysum.fill(<F as Real>::zero());
            for t in w0..w1 {
                let y = ys.index_axis(Axis(0), t);
                let mut err = errs.index_axis_mut(Axis(0), t);
                let mut e = Array2::zeros((batch, ys.shape()[2]));
                let (loss, correct) = step_error(loss_fn, &y, targets.at(t), scale, probs, &mut e);
                err.assign(&e);
                stats.loss += loss;
                *ysum += &y;
                if matches!(targets, Targets::ClassSeries(_)) {
                    stats.correct += correct;
                    stats.predictions += batch;
                }
            }
            if let Targets::Classes(c) = targets {
                stats.correct = count_correct(ysum, c, probs);
                stats.predictions = batch;
            }
        }
    }
    stats
}

/// One optimiser step with the configured rule, schedule and clipping; the gradient norm.
/// A non-finite loss or gradient stops it before anything changes; a non-finite weight after
/// it is reported too (the trainer's network is then unusable: reload the last checkpoint).
fn apply_update<F: Float>(
    opt: &mut OptimizerState<F>,
    net: &mut Network<F>,
    grads: &Gradients<F>,
    config: &TrainConfig,
    loss: f64,
) -> Result<f64> {
    let update = opt.steps() + 1;
    if !loss.is_finite() {
        return Err(Error::Diverged {
            update,
            what: "loss".into(),
            tensor: "the loss so far".into(),
            index: 0,
            value: loss,
        });
    }
    let diverged = |what: &str, net: &Network<F>, (slot, index, value)| Error::Diverged {
        update,
        what: what.into(),
        tensor: net.tensor_name(slot),
        index,
        value,
    };
    // The scans for the first bad value run only once something is known to be bad.
    match opt.update(
        net,
        grads,
        &config.optimizer,
        &config.schedule,
        config.clip_norm,
        config.weight_range,
    ) {
        Ok(norm) => Ok(norm),
        Err(NonFinite::Gradient) => Err(match grads.first_non_finite() {
            Some(bad) => diverged("gradient", net, bad),
            // Every entry finite, their squares' sum not.
            None => Error::Diverged {
                update,
                what: "gradient norm".into(),
                tensor: "all gradients".into(),
                index: 0,
                value: f64::INFINITY,
            },
        }),
        // A weight that left the finite range and was brought back (a declared parameter
        // range clamps it) is fine.
        Err(NonFinite::Weight) => match net.params.first_non_finite() {
            Some(bad) => Err(diverged("weight", net, bad)),
            None => Ok(grads.norm()),
        },
    }
}

fn count_correct<F: Float>(ysum: &Array2<F>, classes: &[usize], probs: &mut Array2<F>) -> usize {
    softmax(&ysum.view(), probs);
    probs
        .outer_iter()
        .zip(classes)
        .filter(|(p, c)| {
            let mut best = 0;
            for (i, &v) in p.iter().enumerate() {
                if v > p[best] {
                    best = i;
                }
            }
            best == **c
        })
        .count()
}
