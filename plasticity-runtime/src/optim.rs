//! Optimisers, learning-rate schedules and gradient clipping.

use rayon::prelude::*;

use crate::error::{Result, invalid};
use crate::network::Network;
use crate::params::{Gradients, Parameters};
use crate::real::{Float, Real};

/// Parameters per parallel task in an optimiser update.
const UPDATE_CHUNK: usize = 16 * 1024;

/// An update rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    /// Stochastic gradient descent with (heavy-ball) momentum.
    Sgd {
        /// Learning rate.
        lr: f64,
        /// Momentum in `[0, 1)`; 0 is plain SGD.
        momentum: f64,
    },
    /// Adam (Kingma & Ba 2015).
    Adam {
        /// Learning rate.
        lr: f64,
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
        /// Denominator offset.
        eps: f64,
        /// Where `eps` enters (PyTorch's or TensorFlow's and NEST's convention).
        eps_at: EpsilonAt,
    },
    /// AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay.
    AdamW {
        /// Learning rate.
        lr: f64,
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
        /// Denominator offset.
        eps: f64,
        /// Where `eps` enters (PyTorch's or TensorFlow's and NEST's convention).
        eps_at: EpsilonAt,
        /// Decoupled weight decay per step (multiplied by the learning rate).
        weight_decay: f64,
    },
}

/// Where Adam's `ε` enters the update. The two conventions differ only while the bias
/// corrections are far from 1, i.e. in the first few thousand updates, and by an amount that
/// matters only for gradients near `ε`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EpsilonAt {
    /// `w -= lr · m̂ / (√v̂ + ε)` with `m̂ = m / (1 − β₁ᵗ)`, `v̂ = v / (1 − β₂ᵗ)`: the paper's
    /// algorithm as PyTorch (`torch.optim.Adam`) and optax write it.
    #[default]
    BiasCorrected,
    /// `w -= α_t · m / (√v + ε)` with `α_t = lr · √(1 − β₂ᵗ) / (1 − β₁ᵗ)`: the paper's
    /// "efficient" form, as TensorFlow 1 (`tf.train.AdamOptimizer`), Bellec's e-prop code and
    /// NEST's e-prop synapses compute it. Equivalent to `BiasCorrected` with `ε / √(1 − β₂ᵗ)`.
    Uncorrected,
}

impl Optimizer {
    /// Adam with the usual defaults (β₁ = 0.9, β₂ = 0.999, ε = 1e-8).
    pub fn adam(lr: f64) -> Self {
        Optimizer::Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            eps_at: EpsilonAt::BiasCorrected,
        }
    }
    /// AdamW with the usual defaults.
    pub fn adamw(lr: f64, weight_decay: f64) -> Self {
        Optimizer::AdamW {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            eps_at: EpsilonAt::BiasCorrected,
            weight_decay,
        }
    }

    /// The same optimiser with Adam's `ε` entering as `at` says (SGD is unchanged).
    pub fn eps_at(mut self, at: EpsilonAt) -> Self {
        if let Optimizer::Adam { eps_at, .. } | Optimizer::AdamW { eps_at, .. } = &mut self {
            *eps_at = at;
        }
        self
    }
    /// SGD with momentum.
    pub fn sgd(lr: f64, momentum: f64) -> Self {
        Optimizer::Sgd { lr, momentum }
    }

    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        match *self {
            Optimizer::Sgd { lr, .. } | Optimizer::Adam { lr, .. } | Optimizer::AdamW { lr, .. } => lr,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let lr = self.lr();
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(invalid("learning rate", lr, "a finite number >= 0"));
        }
        let unit = |name: &str, v: f64| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(invalid(name, v, "a number in [0, 1)"))
            }
        };
        match *self {
            Optimizer::Sgd { momentum, .. } => unit("momentum", momentum),
            Optimizer::Adam { beta1, beta2, eps, .. } | Optimizer::AdamW { beta1, beta2, eps, .. } => {
                unit("beta1", beta1)?;
                unit("beta2", beta2)?;
                if !(eps.is_finite() && eps > 0.0) {
                    return Err(invalid("eps", eps, "a finite number > 0"));
                }
                if let Optimizer::AdamW { weight_decay, .. } = *self
                    && !(weight_decay.is_finite() && weight_decay >= 0.0)
                {
                    return Err(invalid("weight decay", weight_decay, "a finite number >= 0"));
                }
                Ok(())
            }
        }
    }
}

/// Learning rate over update steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// The optimiser's learning rate throughout.
    Constant,
    /// Linear warm-up over `warmup` updates, then cosine decay to `min_factor · lr` at
    /// update `total` (and constant after).
    Cosine {
        /// Warm-up updates.
        warmup: usize,
        /// Updates until the end of the decay.
        total: usize,
        /// Final learning rate as a fraction of the base rate.
        min_factor: f64,
    },
}

impl Schedule {
    /// The factor applied to the base learning rate at update `step` (0-based).
    pub fn factor(&self, step: usize) -> f64 {
        match *self {
            Schedule::Constant => 1.0,
            Schedule::Cosine {
                warmup,
                total,
                min_factor,
            } => {
                if step < warmup {
                    (step + 1) as f64 / warmup as f64
                } else if step >= total {
                    min_factor
                } else {
                    let span = (total - warmup).max(1) as f64;
                    let progress = (step - warmup) as f64 / span;
                    min_factor + (1.0 - min_factor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
                }
            }
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if let Schedule::Cosine {
            warmup,
            total,
            min_factor,
        } = *self
        {
            if total < warmup {
                return Err(invalid("cosine schedule total", total, "total >= warmup"));
            }
            if !(0.0..=1.0).contains(&min_factor) {
                return Err(invalid("cosine schedule min_factor", min_factor, "a number in [0, 1]"));
            }
        }
        Ok(())
    }
}

/// What an update found non-finite: a gradient (found before anything changed) or a weight
/// (after the update).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NonFinite {
    Gradient,
    Weight,
}

/// Optimiser state (moments), shaped like the parameters. Owned by the [`crate::Trainer`].
#[derive(Clone, Debug)]
pub(crate) struct OptimizerState<F> {
    step: usize,
    m: Vec<Vec<F>>,
    v: Vec<Vec<F>>,
}

impl<F: Float> OptimizerState<F> {
    /// Fresh state for `net`.
    pub(crate) fn new(params: &Parameters<F>) -> Self {
        let shapes: Vec<usize> = params.slots().map(|s| params.get(s).len()).collect();
        OptimizerState {
            step: 0,
            m: shapes.iter().map(|&n| vec![<F as Real>::zero(); n]).collect(),
            v: shapes.iter().map(|&n| vec![<F as Real>::zero(); n]).collect(),
        }
    }

    /// Number of updates applied so far.
    pub(crate) fn steps(&self) -> usize {
        self.step
    }

    /// The moments as named tensors (`optimizer.m.I`, `optimizer.v.I`, in the order of
    /// [`Parameters::slots`]); the update count goes into the checkpoint's metadata.
    pub(crate) fn tensors(&self) -> crate::checkpoint::Tensors {
        let mut t = crate::checkpoint::Tensors::new();
        let flat = |v: &Vec<F>| {
            ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[v.len()]), v.iter().map(|x| x.to_f64()).collect())
                .expect("a vector")
        };
        for (i, (m, v)) in self.m.iter().zip(&self.v).enumerate() {
            t.insert(format!("optimizer.m.{i}"), flat(m));
            t.insert(format!("optimizer.v.{i}"), flat(v));
        }
        t
    }

    /// Takes this state's tensors out of `tensors` and the update count from `step` (the
    /// metadata's text), checking every length.
    pub(crate) fn assign(
        &mut self,
        path: &std::path::Path,
        tensors: &mut crate::checkpoint::Tensors,
        step: &str,
    ) -> crate::Result<()> {
        let fail = |message: String| crate::Error::Format {
            path: path.to_path_buf(),
            message,
        };
        let mut next = self.clone();
        for (i, (m, v)) in next.m.iter_mut().zip(next.v.iter_mut()).enumerate() {
            for (name, dst) in [(format!("optimizer.m.{i}"), m), (format!("optimizer.v.{i}"), v)] {
                let t = tensors
                    .remove(&name)
                    .ok_or_else(|| fail(format!("missing tensor {name}")))?;
                if t.shape() != [dst.len()] {
                    return Err(fail(format!(
                        "tensor {name}: shape {:?}, expected [{}]",
                        t.shape(),
                        dst.len()
                    )));
                }
                if t.iter().any(|x| !x.is_finite()) {
                    return Err(fail(format!("tensor {name}: non-finite value")));
                }
                dst.iter_mut().zip(t.iter()).for_each(|(d, &s)| *d = F::from_f64(s));
            }
        }
        next.step = step
            .parse()
            .map_err(|_| fail(format!("optimizer_step {step:?}: expected a whole number >= 0")))?;
        *self = next;
        Ok(())
    }

    /// Applies one update to `net` with `grads` (clipped to global norm `clip` first), then
    /// clips every projection and readout weight into `range`.
    /// Returns the gradient norm before clipping, or what was non-finite: a gradient (nothing
    /// was changed) or a weight after the update (checked in the same pass).
    pub(crate) fn update(
        &mut self,
        net: &mut Network<F>,
        grads: &Gradients<F>,
        opt: &Optimizer,
        schedule: &Schedule,
        clip: Option<f64>,
        range: Option<(f64, f64)>,
    ) -> std::result::Result<f64, NonFinite> {
        let norm = grads.norm();
        if !norm.is_finite() {
            return Err(NonFinite::Gradient);
        }
        let mut finite = true;
        let scale = match clip {
            Some(c) if norm > c && norm > 0.0 => c / norm,
            _ => 1.0,
        };
        let lr = opt.lr() * schedule.factor(self.step);
        self.step += 1;
        let t = self.step as i32;
        let (ms, vs) = (&mut self.m, &mut self.v);
        let params = &mut net.params;
        debug_assert!(params.same_shape(grads));
        // The gradients have the parameters' slots; walking theirs leaves `params` free to
        // be borrowed mutably.
        for (index, slot) in grads.slots().enumerate() {
            let (p, g, m, v) = (params.get_mut(slot), grads.get(slot), &mut ms[index], &mut vs[index]);
            match *opt {
                Optimizer::Sgd { momentum, .. } => {
                    let (mu, lr) = (F::from_f64(momentum), F::from_f64(lr));
                    for ((p, &g), m) in p.iter_mut().zip(g).zip(m.iter_mut()) {
                        *m = mu * *m + g * F::from_f64(scale);
                        *p -= lr * *m;
                        finite &= p.is_finite_value();
                    }
                }
                Optimizer::Adam {
                    beta1,
                    beta2,
                    eps,
                    eps_at,
                    ..
                }
                | Optimizer::AdamW {
                    beta1,
                    beta2,
                    eps,
                    eps_at,
                    ..
                } => {
                    let wd = match *opt {
                        Optimizer::AdamW { weight_decay, .. } => weight_decay,
                        _ => 0.0,
                    };
                    let c1 = 1.0 - beta1.powi(t);
                    let c2 = 1.0 - beta2.powi(t);
                    // `(m / c1) / (√(v / c2) + ε')` with ε' = ε / √c2 is `(√c2 / c1) m / (√v + ε)`.
                    let eps = match eps_at {
                        EpsilonAt::BiasCorrected => eps,
                        EpsilonAt::Uncorrected => eps / c2.sqrt(),
                    };
                    let (b1, b2) = (F::from_f64(beta1), F::from_f64(beta2));
                    let (lr_f, eps_f, s) = (F::from_f64(lr), F::from_f64(eps), F::from_f64(scale));
                    let (c1, c2) = (F::from_f64(c1), F::from_f64(c2));
                    let decay = F::from_f64(1.0 - lr * wd);
                    // Element-wise and independent: large tensors are split over threads.
                    finite &= p
                        .par_chunks_mut(UPDATE_CHUNK)
                        .zip(g.par_chunks(UPDATE_CHUNK))
                        .zip(m.par_chunks_mut(UPDATE_CHUNK))
                        .zip(v.par_chunks_mut(UPDATE_CHUNK))
                        .map(|(((p, g), m), v)| {
                            let mut finite = true;
                            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                                let g = g * s;
                                *m = b1 * *m + (<F as Real>::one() - b1) * g;
                                *v = b2 * *v + (<F as Real>::one() - b2) * g * g;
                                let mhat = *m / c1;
                                let vhat = *v / c2;
                                *p = *p * decay - lr_f * mhat / (vhat.sqrt() + eps_f);
                                finite &= p.is_finite_value();
                            }
                            finite
                        })
                        .reduce(|| true, |a, b| a && b);
                }
            }
        }
        if let Some((lo, hi)) = range {
            let (lo, hi) = (F::from_f64(lo), F::from_f64(hi));
            let clamp = |w: &mut F| {
                // NaN stays NaN, for the finiteness check above to have seen it.
                if *w < lo {
                    *w = lo;
                } else if *w > hi {
                    *w = hi;
                }
            };
            net.params.projections.iter_mut().flatten().for_each(clamp);
            net.params.readout_w.iter_mut().flatten().for_each(clamp);
        }
        for (proj, w) in net.projections.iter().zip(&mut net.params.projections) {
            proj.apply_mask(w);
        }
        net.clamp_learnable();
        if finite { Ok(norm) } else { Err(NonFinite::Weight) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::BellecLif;
    use crate::{LayerSpec, NetworkBuilder, ReadoutSpec};

    /// A network with two input weights `[1.0, -2.0]` and one readout weight `0.5`, and
    /// gradients `[3.0, -4.0]`, `[0.0]` (global norm 5).
    fn tiny() -> (Network<f64>, Gradients<f64>) {
        let mut net = NetworkBuilder::<f64>::new(2)
            .layer(LayerSpec::new(BellecLif::default(), 1))
            .readout(ReadoutSpec::new(1, 0.0).bias(false))
            .build()
            .unwrap();
        net.params.projections[0] = vec![1.0, -2.0];
        net.params.readout_w[0][[0, 0]] = 0.5;
        let mut g = net.params.zeros_like();
        g.projections[0] = vec![3.0, -4.0];
        (net, g)
    }

    fn step(opt: Optimizer, clip: Option<f64>, steps: usize) -> Vec<f64> {
        step_in(opt, clip, None, steps)
    }

    fn step_in(opt: Optimizer, clip: Option<f64>, range: Option<(f64, f64)>, steps: usize) -> Vec<f64> {
        let (mut net, g) = tiny();
        let mut state = OptimizerState::new(&net.params);
        for _ in 0..steps {
            state
                .update(&mut net, &g, &opt, &Schedule::Constant, clip, range)
                .unwrap();
        }
        let mut out = net.params.projections[0].clone();
        out.push(net.params.readout_w[0][[0, 0]]);
        out
    }

    fn close(got: &[f64], want: &[f64]) {
        assert!(
            got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12),
            "got {got:?}, want {want:?}"
        );
    }

    /// Every rule against the update written out by hand.
    #[test]
    fn updates_match_hand_computation() {
        // SGD, no momentum: p − lr·g.
        close(&step(Optimizer::sgd(0.1, 0.0), None, 1), &[0.7, -1.6, 0.5]);
        // Momentum 0.9, two steps: m₁ = g, m₂ = 1.9 g; p₂ = p₀ − lr·2.9 g.
        close(
            &step(Optimizer::sgd(0.1, 0.9), None, 2),
            &[1.0 - 0.87, -2.0 + 1.16, 0.5],
        );
        // Clipping to norm 1 scales g by 1/5.
        close(
            &step(Optimizer::sgd(0.1, 0.0), Some(1.0), 1),
            &[1.0 - 0.06, -2.0 + 0.08, 0.5],
        );
        // Adam, one step: the bias-corrected m̂ = g, v̂ = g², so p₁ = p₀ − lr·g/(|g| + ε).
        let eps = 1e-8;
        let adam1 = |p: f64, g: f64| p - 0.01 * g / (g.abs() + eps);
        close(
            &step(Optimizer::adam(0.01), None, 1),
            &[adam1(1.0, 3.0), adam1(-2.0, -4.0), 0.5],
        );
        // Adam, two steps of the same gradient: m̂ and v̂ are again g and g².
        close(
            &step(Optimizer::adam(0.01), None, 2),
            &[adam1(adam1(1.0, 3.0), 3.0), adam1(adam1(-2.0, -4.0), -4.0), 0.5],
        );
        // AdamW: the decay multiplies the weight before the Adam step, readout included.
        let decay = 1.0 - 0.01 * 0.5;
        close(
            &step(Optimizer::adamw(0.01, 0.5), None, 1),
            &[
                1.0 * decay - 0.01 * 3.0 / (3.0 + eps),
                -2.0 * decay + 0.01 * 4.0 / (4.0 + eps),
                0.5 * decay,
            ],
        );
    }

    #[test]
    fn tensorflow_epsilon_and_weight_clipping() {
        // TF / NEST Adam, ε = 1 to make it visible, one step: m = 0.1 g, v = 0.001 g²,
        // α₁ = lr √0.001 / 0.1, p₁ = p₀ − α₁ m / (√v + ε).
        let tf1 = |p: f64, g: f64| {
            let (m, v) = (0.1 * g, 0.001 * g * g);
            p - 0.01 * 0.001f64.sqrt() / 0.1 * m / (v.sqrt() + 1.0)
        };
        let mut opt = Optimizer::adam(0.01).eps_at(EpsilonAt::Uncorrected);
        if let Optimizer::Adam { eps, .. } = &mut opt {
            *eps = 1.0;
        }
        close(&step(opt, None, 1), &[tf1(1.0, 3.0), tf1(-2.0, -4.0), 0.5]);
        // Two steps of the same gradient: m = 0.19 g, v = 0.001999 g², α₂ with t = 2.
        let tf2 = |p: f64, g: f64| {
            let (m, v) = (0.19 * g, 0.001999 * g * g);
            tf1(p, g) - 0.01 * (1.0 - 0.999f64.powi(2)).sqrt() / (1.0 - 0.81) * m / (v.sqrt() + 1.0)
        };
        close(&step(opt, None, 2), &[tf2(1.0, 3.0), tf2(-2.0, -4.0), 0.5]);
        // PyTorch's placement differs with ε = 1.
        let mut torch = Optimizer::adam(0.01);
        if let Optimizer::Adam { eps, .. } = &mut torch {
            *eps = 1.0;
        }
        assert!((step(torch, None, 1)[0] - tf1(1.0, 3.0)).abs() > 1e-4);
        // The SGD step gives [0.7, −1.6] and the readout's 0.5; clipped into [−1, 0.4], the
        // readout weight too.
        close(
            &step_in(Optimizer::sgd(0.1, 0.0), None, Some((-1.0, 0.4)), 1),
            &[0.4, -1.0, 0.4],
        );
    }

    #[test]
    fn cosine_schedule_warms_up_and_decays() {
        let s = Schedule::Cosine {
            warmup: 10,
            total: 110,
            min_factor: 0.1,
        };
        assert!((s.factor(0) - 0.1).abs() < 1e-12);
        assert!((s.factor(9) - 1.0).abs() < 1e-12);
        assert!((s.factor(10) - 1.0).abs() < 1e-12);
        assert!((s.factor(60) - 0.55).abs() < 1e-12);
        assert!((s.factor(500) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn invalid_settings_are_rejected() {
        assert!(Optimizer::adam(-1.0).validate().is_err());
        assert!(Optimizer::sgd(0.1, 1.0).validate().is_err());
        assert!(Optimizer::adamw(0.1, f64::NAN).validate().is_err());
        assert!(
            Schedule::Cosine {
                warmup: 5,
                total: 2,
                min_factor: 0.0
            }
            .validate()
            .is_err()
        );
    }
}
