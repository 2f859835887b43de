//! Checking a model's derivatives yourself: BPTT against finite differences.
//!
//! Spiking models are not differentiable: `spike(x)` is a step. [`gradcheck`] therefore
//! runs the network with every `spike(..)` replaced by its surrogate's smooth counterpart
//! (the integral of the surrogate, so the generated partials are that function's exact
//! derivatives), computes BPTT's gradient of the loss, and compares every trainable value with
//! central finite differences of the same smooth network's loss. Values under `detach(..)`
//! (a detached reset, say) are recorded in the unperturbed run and replayed in the perturbed
//! ones: the gradient treats them as constants, and so do the differences. A relative error near 1e-6
//! or below means the generated derivatives, the network wiring and BPTT agree; a larger one
//! points at the tensor and entry that disagree.

use ndarray::{Array2, Array3, ArrayView3, Axis};

use crate::eprop::RateRegularization;
use crate::error::{Result, invalid};
use crate::loss::{Loss, Reduction, Targets};
use crate::network::{Frozen, Network, SpikeMode};
use crate::optim::Optimizer;
use crate::params::Slot;
use crate::trainer::{Algorithm, TrainConfig, Trainer, loss_over};

/// How [`gradcheck`] probes the loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradcheckOptions {
    /// Finite-difference step `h` (fourth-order central differences with `±h, ±2h`).
    pub step: f64,
    /// Check at most this many entries per tensor (evenly spaced), to bound the cost: each
    /// entry costs four forward runs.
    pub max_per_tensor: usize,
    /// Relative errors are `|a − b| / max(|a|, |b|, floor)`.
    pub floor: f64,
    /// Adds the firing-rate regularisation `c/2 Σ_j (f_j − f*)²` (every population, `f_j`
    /// the mean output of neuron `j` over batch and steps) to the loss, as
    /// [`TrainConfig::rate_regularization`] does for BPTT.
    pub rate_regularization: Option<RateRegularization>,
    /// How a per-step loss is reduced over its window, as [`TrainConfig::reduction`].
    pub reduction: Reduction,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        GradcheckOptions {
            step: 1e-5,
            max_per_tensor: 64,
            floor: 1e-3,
            rate_regularization: None,
            reduction: Reduction::MeanOverSteps,
        }
    }
}

/// What [`gradcheck`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct GradcheckReport {
    /// Number of entries compared.
    pub checked: usize,
    /// The largest relative error.
    pub worst: f64,
    /// Where it occurred: tensor name ([`Network::tensor_name`]) and flat index.
    pub worst_at: (String, usize),
    /// BPTT's and the finite-difference value there.
    pub worst_values: (f64, f64),
}

/// Compares BPTT's gradient of `loss` on `inputs` / `targets` with finite differences, on
/// `net` run with smooth spikes and frozen `detach(..)` values (see the module
/// documentation). Weights that a mask excludes are skipped (their gradient must be zero, and
/// is checked to be). With [`GradcheckOptions::rate_regularization`] the regularised loss is
/// checked.
pub fn gradcheck(
    net: &Network<f64>,
    loss: Loss,
    inputs: ArrayView3<f64>,
    targets: Targets<'_, f64>,
    options: GradcheckOptions,
) -> Result<GradcheckReport> {
    if !(options.step.is_finite() && options.step > 0.0) {
        return Err(invalid("gradcheck step", options.step, "a finite number > 0"));
    }
    if options.max_per_tensor == 0 {
        return Err(invalid("gradcheck max_per_tensor", 0, "at least 1"));
    }
    let config = TrainConfig::new(Algorithm::Bptt, loss, Optimizer::sgd(0.0, 0.0));
    let trainer = Trainer::new(net.clone(), config)?;
    let inputs = inputs.as_standard_layout();
    let inputs = inputs.view();
    let (t_len, batch) = trainer.check_batch(&inputs, &targets)?;
    let window = loss.window().bounds(t_len);
    let n_out = net.n_out();
    let (mut probs, mut ysum) = (Array2::zeros((batch, n_out)), Array2::zeros((batch, n_out)));
    let mut frozen = Frozen::default();
    let mut grads = net.params.zeros_like();
    let reg = options.rate_regularization;
    crate::bptt::gradients(
        net,
        inputs,
        reg.map(|r| (r, 1.0 / (batch * t_len).max(1) as f64)),
        &mut SpikeMode::Frozen(&mut frozen),
        &mut grads,
        &mut None,
        |ys, errs| {
            loss_over(
                &loss,
                options.reduction,
                batch,
                ys,
                &targets,
                window,
                errs,
                &mut probs,
                &mut ysum,
            );
        },
    );
    frozen.replay = true;
    let mut moved = net.clone();
    let mut errs = Array3::zeros((t_len, batch, n_out));
    let mut loss_at = |slot: Slot, i: usize, d: f64| -> Result<f64> {
        let original = moved.params.get(slot)[i];
        moved.params.get_mut(slot)[i] = original + d;
        frozen.rewind();
        let out = moved.run_mode(inputs, &[], &mut SpikeMode::Frozen(&mut frozen));
        moved.params.get_mut(slot)[i] = original;
        let out = out?;
        let penalty = reg.map_or(0.0, |r| {
            (out.spikes.iter())
                .flat_map(|z| z.mean_axis(Axis(0)).and_then(|m| m.mean_axis(Axis(0))))
                .flat_map(|rates| rates.into_iter())
                .map(|f| 0.5 * r.strength * (f - r.target).powi(2))
                .sum()
        });
        let stats = loss_over(
            &loss,
            options.reduction,
            batch,
            &out.readout.view(),
            &targets,
            window,
            &mut errs,
            &mut probs,
            &mut ysum,
        );
        Ok(stats.loss + penalty)
    };
    let mut report = GradcheckReport {
        checked: 0,
        worst: 0.0,
        worst_at: (String::new(), 0),
        worst_values: (0.0, 0.0),
    };
    let h = options.step;
    for slot in net.params.slots() {
        let g = grads.get(slot);
        let excluded = |i: usize| match slot {
            Slot::Projection(p) => !net.projections[p].has_weight(i),
            _ => false,
        };
        let stride = g.len().div_ceil(options.max_per_tensor).max(1);
        for i in (0..g.len()).step_by(stride) {
            if excluded(i) {
                if g[i] != 0.0 {
                    return Err(invalid(
                        &format!("gradient of {} at {i}", net.tensor_name(slot)),
                        g[i],
                        "zero where the mask has no synapse",
                    ));
                }
                continue;
            }
            let fd = (loss_at(slot, i, -2.0 * h)? - 8.0 * loss_at(slot, i, -h)? + 8.0 * loss_at(slot, i, h)?
                - loss_at(slot, i, 2.0 * h)?)
                / (12.0 * h);
            let err = (g[i] - fd).abs() / g[i].abs().max(fd.abs()).max(options.floor);
            report.checked += 1;
            if err >= report.worst {
                report.worst = err;
                report.worst_at = (net.tensor_name(slot), i);
                report.worst_values = (g[i], fd);
            }
        }
    }
    Ok(report)
}
