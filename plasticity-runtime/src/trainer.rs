//! Training: one network, e-prop or BPTT, an optimiser.

use std::collections::BTreeMap;

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, Axis};

use crate::bptt;
use crate::eprop::{Eprop, Feedback, RateForm, RateRegularization};
use crate::error::{Error, Result, check_finite, invalid};
use crate::input::SpikeEvents;
use crate::loss::{Loss, Reduction, StepTargets, Targets, softmax, step_error};
use crate::network::{Network, SpikeMode};
use crate::optim::{NonFinite, Optimizer, OptimizerState, Schedule};
use crate::params::Gradients;
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
        }
    }

    fn validate(&self) -> Result<()> {
        self.optimizer.validate()?;
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

type Hook<F> = Box<dyn FnMut(&StepInfo<'_, F>) + Send>;

struct Stream {
    t: usize,
    t_len: usize,
    window: (usize, usize),
    scale: f64,
    stats: BatchStats,
    since_update: usize,
}

/// Trains a [`Network`].
pub struct Trainer<F: Float> {
    net: Network<F>,
    config: TrainConfig,
    opt: OptimizerState<F>,
    grads: Gradients<F>,
    eprop: Option<Eprop<F>>,
    bptt: Option<bptt::Workspace<F>>,
    probs: Array2<F>,
    err: Array2<F>,
    ysum: Array2<F>,
    hook: Option<Hook<F>>,
    stream: Option<Stream>,
    rate_pass: Option<RatePass<F>>,
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
    /// A trainer for `net` with `config`.
    pub fn new(net: Network<F>, config: TrainConfig) -> Result<Self> {
        config.validate()?;
        net.validate()?;
        if let Algorithm::Eprop(Feedback::Matrices(given)) = &config.algorithm {
            check_feedback(&net, given)?;
        }
        let opt = OptimizerState::new(&net.params);
        let grads = net.params.zeros_like();
        Ok(Trainer {
            net,
            config,
            opt,
            grads,
            eprop: None,
            bptt: None,
            probs: Array2::zeros((0, 0)),
            err: Array2::zeros((0, 0)),
            ysum: Array2::zeros((0, 0)),
            hook: None,
            stream: None,
            rate_pass: None,
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
    /// Number of optimiser updates applied so far.
    pub fn updates(&self) -> usize {
        self.opt.steps()
    }
    /// The gradients of the last computation.
    pub fn gradients(&self) -> &Gradients<F> {
        &self.grads
    }

    /// Writes the network and the optimiser state (moments, update count) to `path`,
    /// atomically, so that training can resume exactly where it stopped.
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
    /// matches.
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
        self.eprop = None;
        self.rate_pass = None;
        Ok(metadata
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix(USER).map(|k| (k.to_string(), v)))
            .collect())
    }

    /// Calls `hook` after every step of every sequence (training and evaluation).
    pub fn set_step_hook(&mut self, hook: impl FnMut(&StepInfo<'_, F>) + Send + 'static) {
        self.hook = Some(Box::new(hook));
    }

    /// Bytes of training state the algorithm keeps for batch size `batch` and sequence
    /// length `t_len`: e-prop's traces, filtered traces and gradient accumulators (independent
    /// of `t_len`), or BPTT's tape (linear in `t_len`) plus its gradients.
    pub fn state_bytes(&mut self, batch: usize, t_len: usize) -> usize {
        let f = std::mem::size_of::<F>();
        let grads = self.grads.len() * f;
        match &self.config.algorithm {
            Algorithm::Eprop(fb) => {
                let fb = fb.clone();
                self.ensure_eprop(batch, &fb);
                let pass = self.rate_pass.as_ref().map_or(0, |rp| {
                    rp.engines.iter().map(|e| e.state_bytes()).sum::<usize>() + rp.sums.len() * f
                });
                self.eprop.as_ref().map_or(0, |e| e.state_bytes()) + pass
            }
            Algorithm::Bptt => bptt::tape_bytes(&self.net, batch, t_len) + grads,
        }
    }

    fn ensure_eprop(&mut self, batch: usize, feedback: &Feedback) {
        if self.eprop.as_ref().is_none_or(|e| e.batch != batch) {
            self.eprop = Some(Eprop::new(&self.net, batch, feedback));
        }
        let per_sequence = self
            .config
            .rate_regularization
            .is_some_and(|r| r.form == RateForm::PerSequence);
        if per_sequence && self.rate_pass.as_ref().is_none_or(|r| r.engines.len() != batch) {
            let sizes: Vec<usize> = self.net.populations.iter().map(|p| p.size).collect();
            self.rate_pass = Some(RatePass {
                engines: (0..batch).map(|_| Eprop::unit(&self.net, 1)).collect(),
                counts: vec![sizes.iter().map(|&n| vec![0.0; n]).collect(); batch],
                zero_err: Array2::zeros((1, self.net.n_out())),
                sums: self.net.params.zeros_like(),
            });
        }
    }

    fn ensure_scratch(&mut self, batch: usize) {
        let n_out = self.net.n_out();
        if self.err.dim() != (batch, n_out) {
            self.probs = Array2::zeros((batch, n_out));
            self.err = Array2::zeros((batch, n_out));
            self.ysum = Array2::zeros((batch, n_out));
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
        Ok((&self.grads, stats))
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
        Ok((&self.grads, stats))
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
        self.ensure_scratch(batch);
        self.begin_inner(batch, t_len, update)?;
        let mut x = Array2::<F>::zeros((batch, self.net.n_in));
        for t in 0..t_len {
            events.fill_step(t, &mut x);
            self.step_inner(x.view(), Some(targets.at(t)), update)?;
        }
        self.end_inner(update, Some(&targets))
    }

    /// Loss and accuracy of the network on one batch, without gradients.
    pub fn evaluate(&mut self, inputs: ArrayView3<F>, targets: Targets<'_, F>) -> Result<BatchStats> {
        let inputs = inputs.as_standard_layout();
        let (t_len, batch) = self.check_batch(&inputs.view(), &targets)?;
        let out = self.net.run(inputs.view())?;
        self.ensure_scratch(batch);
        let (w0, w1) = self.config.loss.window().bounds(t_len);
        let mut errs = Array3::zeros((t_len, batch, self.net.n_out()));
        let stats = loss_over(
            &self.config.loss,
            self.config.reduction,
            &out.readout.view(),
            &targets,
            (w0, w1),
            &mut errs,
            &mut self.probs,
            &mut self.ysum,
        );
        if let Some(hook) = &mut self.hook {
            for t in 0..t_len {
                hook(&StepInfo {
                    t,
                    readout: out.readout.index_axis(Axis(0), t),
                    loss: 0.0,
                });
            }
        }
        Ok(stats)
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
        self.ensure_scratch(batch);
        match &self.config.algorithm {
            Algorithm::Bptt => {
                let window = self.config.loss.window().bounds(t_len);
                let reg = self.reg(batch, t_len);
                let mut stats = BatchStats::default();
                let (loss, probs, ysum, hook) = (&self.config.loss, &mut self.probs, &mut self.ysum, &mut self.hook);
                let reduction = self.config.reduction;
                let ws = &mut self.bptt;
                bptt::gradients(
                    &self.net,
                    inputs,
                    reg,
                    &mut SpikeMode::Plain,
                    &mut self.grads,
                    ws,
                    |ys, errs| {
                        stats = loss_over(loss, reduction, ys, &targets, window, errs, probs, ysum);
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
                stats.grad_norm = if update {
                    apply_update(&mut self.opt, &mut self.net, &self.grads, &self.config, stats.loss)?
                } else {
                    self.grads.norm()
                };
                Ok(stats)
            }
            Algorithm::Eprop(_) => {
                self.begin_inner(batch, t_len, update)?;
                for t in 0..t_len {
                    let step_targets = targets.at(t);
                    self.step_inner(inputs.index_axis(Axis(0), t), Some(step_targets), update)?;
                }
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
        self.ensure_scratch(batch);
        self.begin_inner(batch, t_len, true)
    }

    /// One streamed step: inputs `[B, n_in]`, targets for this step (required inside the
    /// loss window). Applies an update every `update_every` steps if configured. Returns
    /// this step's readout.
    pub fn step(&mut self, x: ArrayView2<F>, targets: Option<StepTargets<'_, F>>) -> Result<ArrayView2<'_, F>> {
        let s = self
            .stream
            .as_ref()
            .ok_or_else(|| Error::State("Trainer::step before begin_sequence".into()))?;
        let batch = self.err.nrows();
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
        Ok(self.eprop.as_ref().expect("begun").y.view())
    }

    /// Ends a streamed sequence: applies the update for the gradients accumulated since
    /// the last one, and returns the sequence's loss and accuracy.
    pub fn end_sequence(&mut self) -> Result<BatchStats> {
        if self.stream.is_none() {
            return Err(Error::State("Trainer::end_sequence before begin_sequence".into()));
        }
        self.end_inner(true, None)
    }

    fn begin_inner(&mut self, batch: usize, t_len: usize, _update: bool) -> Result<()> {
        let Algorithm::Eprop(fb) = &self.config.algorithm else {
            return Err(invalid("algorithm", "BPTT", "e-prop"));
        };
        let fb = fb.clone();
        self.ensure_eprop(batch, &fb);
        let e = self.eprop.as_mut().expect("built");
        e.begin_sequence(&self.net);
        e.zero_gradients();
        if let Some(rp) = &mut self.rate_pass {
            for e in &mut rp.engines {
                e.begin_sequence(&self.net);
                e.zero_gradients();
            }
            rp.counts.iter_mut().flatten().for_each(|c| c.fill(0.0));
        }
        let window = self.config.loss.window().bounds(t_len);
        self.ysum.fill(<F as Real>::zero());
        self.stream = Some(Stream {
            t: 0,
            t_len,
            window,
            scale: self.config.reduction.scale(batch, window.1 - window.0),
            stats: BatchStats::default(),
            since_update: 0,
        });
        Ok(())
    }

    fn step_inner(&mut self, x: ArrayView2<F>, targets: Option<StepTargets<'_, F>>, update: bool) -> Result<()> {
        let batch = self.err.nrows();
        let reg = self.reg(batch, self.stream.as_ref().map_or(1, |s| s.t_len));
        let s = self.stream.as_mut().expect("begun");
        let e = self.eprop.as_mut().expect("built");
        let y = e.forward(&self.net, x);
        let in_window = (s.window.0..s.window.1).contains(&s.t);
        let mut loss = 0.0;
        match (in_window, targets) {
            (true, Some(tg)) => {
                let (l, correct) = step_error(
                    &self.config.loss,
                    &y,
                    tg,
                    F::from_f64(s.scale),
                    &mut self.probs,
                    &mut self.err,
                );
                loss = l;
                s.stats.loss += l;
                self.ysum += &y;
                if let StepTargets::Classes(c) = tg {
                    // Per-step accuracy; replaced by the per-sample one when the targets are
                    // one class per sample.
                    s.stats.correct += correct;
                    s.stats.predictions += c.len();
                }
            }
            _ => self.err.fill(<F as Real>::zero()),
        }
        if let Some(hook) = &mut self.hook {
            hook(&StepInfo {
                t: s.t,
                readout: y,
                loss,
            });
        }
        e.learn(&self.net, x, &self.err.view(), reg);
        if let Some(rp) = &mut self.rate_pass {
            for (b, (e, counts)) in rp.engines.iter_mut().zip(&mut rp.counts).enumerate() {
                let xb = x.slice(ndarray::s![b..b + 1, ..]);
                e.forward(&self.net, xb);
                e.learn(&self.net, xb, &rp.zero_err.view(), None);
                for (p, c) in counts.iter_mut().enumerate() {
                    c.iter_mut()
                        .zip(e.outputs(p).row(0))
                        .for_each(|(c, z)| *c += z.to_f64());
                }
            }
        }
        s.t += 1;
        s.since_update += 1;
        if update
            && let Some(k) = self.config.update_every
            && s.since_update >= k
        {
            e.gradients(&self.net, &mut self.grads);
            s.stats.grad_norm = apply_update(&mut self.opt, &mut self.net, &self.grads, &self.config, s.stats.loss)?;
            e.zero_gradients();
            e.refresh_weights(&self.net);
            s.since_update = 0;
        }
        Ok(())
    }

    fn end_inner(&mut self, update: bool, targets: Option<&Targets<'_, F>>) -> Result<BatchStats> {
        let mut s = self.stream.take().expect("begun");
        let e = self.eprop.as_mut().expect("built");
        if let Some(Targets::Classes(c)) = targets {
            s.stats.correct = count_correct(&self.ysum, c, &mut self.probs);
            s.stats.predictions = c.len();
        }
        if s.since_update > 0 || !update {
            e.gradients(&self.net, &mut self.grads);
            if let (Some(rp), Some(reg)) = (&mut self.rate_pass, self.config.rate_regularization) {
                add_rate_terms(&self.net, rp, reg, s.t_len, &mut self.grads);
            }
            if update {
                s.stats.grad_norm =
                    apply_update(&mut self.opt, &mut self.net, &self.grads, &self.config, s.stats.loss)?;
                e.zero_gradients();
            } else {
                s.stats.grad_norm = self.grads.norm();
            }
        }
        Ok(s.stats)
    }
}

/// Adds the per-sequence rate regulariser's terms, averaged over the batch like the loss:
/// `(1/B) Σ_b r_jb Σ_t e_jib^t` with `r_jb = c (n_jb / T − f*) / T`, to every projection's
/// and bias's gradient.
fn add_rate_terms<F: Float>(
    net: &Network<F>,
    rp: &mut RatePass<F>,
    reg: RateRegularization,
    t_len: usize,
    grads: &mut Gradients<F>,
) {
    let (t, batch) = (t_len.max(1) as f64, rp.engines.len().max(1) as f64);
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

/// Loss, accuracy and `errs = ∂E/∂y` of a whole readout `[T, B, n_out]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn loss_over<F: Float>(
    loss_fn: &Loss,
    reduction: Reduction,
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
            let scale = F::from_f64(1.0 / batch as f64);
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
            let scale = F::from_f64(reduction.scale(batch, w1 - w0));
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
