//! NEST's e-prop tests (`test_eprop_bsshslm_2020_plasticity.py`), through plasticity's public
//! API only, with the conventions of NEST's `eprop_*_bsshslm_2020` models (and of Bellec et
//! al.'s TensorFlow code, which NEST's losses match):
//!
//! - **regression**: 100 recurrent LIF neurons learn a sum of sines from frozen Poisson input
//!   in 5 iterations; the loss `½ Σ_t (y − y*)²` summed over steps
//!   (`Reduction::SumOverSteps`), plain gradient descent;
//! - **classification**: evidence accumulation with 50 LIF and 50 ALIF neurons (refractory
//!   period 5 steps), 5 iterations of batch 1 or 2; softmax cross-entropy over the last 150
//!   steps, its gradient averaged over them (`Loss::CrossEntropy(Window::Last(150))`), Adam
//!   with TensorFlow's ε (`EpsilonAt::Uncorrected`).
//!
//! Both use:
//! - the neurons below, written in the neuron language: `v' = α v + g I − v_th z`, the reset
//!   detached, firing on `v ≥ v_th + β a` (`spike_at_zero`), Bellec's triangle surrogate, zero
//!   during the refractory period;
//! - the readout `y' = κ y + (1 − κ) W z` (`ReadoutGain::OneMinusKappa`, no bias);
//! - the learning signal through NEST's fixed feedback weights (`Feedback::Matrices`);
//! - NEST's per-sequence firing-rate regularisation (`RateRegularization::per_sequence`; in
//!   the classification task its strength is divided by the 150 steps NEST averages the whole
//!   gradient over);
//! - weights clipped to `[Wmin, Wmax]` after every update (`TrainConfig::weight_range`).
//!
//! The fixtures hold the weights, inputs and targets NEST's test draws with numpy's legacy
//! generator from seed 1; `examples/nest_reference/make_fixtures.py` draws them for any seed
//! (tensors, all f64: `w_in [n_rec, n_in]`, `w_rec [n_rec, n_rec]`, `w_out [n_out, n_rec]`,
//! `b_fb [n_rec, n_out]`, `x [n_iter, batch, T, n_in]`, and `y [n_iter, batch, T, n_out]` or
//! `labels [n_iter, batch]`). For the seed-1 fixtures the program prints each iteration's
//! relative difference from NEST's reference losses; `--check` makes a difference above 1e-9
//! an error.
//!
//! cargo run --release --example nest_reference -- --check
//! cargo run --release --example nest_reference -- --task classification --check \
//!     --fixtures examples/data/nest/classification_batch2_seed1.safetensors

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use ndarray::{Array2, Array4, ArrayD, Axis, IxDyn};
use plasticity_runtime::{
    Algorithm, EpsilonAt, Feedback, Loss, NetworkBuilder, Optimizer, PopulationSpec, ProjectionSpec,
    RateRegularization, ReadoutGain, ReadoutSpec, Reduction, Targets, TrainConfig, Trainer, Window, neuron_model,
};
use safetensors::{Dtype, SafeTensors};

#[neuron_model(spike_at_zero)]
mod nest_lif {
    /// NEST's `eprop_iaf_bsshslm_2020` without refractoriness: `v' = α v + g I − v_th z`,
    /// the reset detached, firing on `v ≥ v_th`; `g` is `1 − α` (NEST's
    /// `regular_spike_arrival: false`) or 1.
    pub struct NestLif {
        /// Membrane decay per step, `exp(−dt/τ_m)`.
        #[param(default = 0.9672)]
        pub alpha: f64,
        /// Input gain `g`.
        #[param(default = 0.0328)]
        pub gain: f64,
        /// Threshold.
        #[param(default = 0.03)]
        pub v_th: f64,
        /// Surrogate height factor `γ` (the peak is `γ / v_th`).
        #[param(default = 0.3)]
        pub gamma: f64,
        #[state(init = 0.0)]
        v: f64,
        /// Weighted input spikes.
        #[input]
        i: f64,
    }

    fn step() {
        let psi = triangle(gamma / v_th, v_th);
        let z_prev = detach(spike(v - v_th, psi));
        let v_next = alpha * v + gain * i - z_prev * v_th;
        Next {
            v: v_next,
            spike: spike(v_next - v_th, psi),
        }
    }
}

#[neuron_model(spike_at_zero)]
mod nest_alif {
    /// NEST's `eprop_iaf_adapt_bsshslm_2020` (and, with `beta = 0`, `eprop_iaf_bsshslm_2020`)
    /// with a refractory period: `v' = α v + g I − v_th z`, `a' = ρ a + z`, firing on
    /// `v' ≥ v_th + β a'` unless refractory; `z` is kept as a state for the next step's reset
    /// (detached) and adaptation (differentiated).
    pub struct NestAlif {
        /// Membrane decay per step.
        #[param(default = 0.9512)]
        pub alpha: f64,
        /// Input gain `g` (1: NEST's `regular_spike_arrival: true`).
        #[param(default = 1.0)]
        pub gain: f64,
        /// Threshold.
        #[param(default = 0.6)]
        pub v_th: f64,
        /// Surrogate height factor `γ` (the peak is `γ / v_th`).
        #[param(default = 0.3)]
        pub gamma: f64,
        /// Adaptation strength `β` (0: LIF).
        #[param(default = 0.0)]
        pub beta: f64,
        /// Adaptation decay per step.
        #[param(default = 0.9995)]
        pub rho: f64,
        /// Refractory steps.
        #[param(default = 5.0)]
        pub n_ref: f64,
        #[state(init = 0.0)]
        v: f64,
        #[state(init = 0.0)]
        a: f64,
        #[state(init = 0.0)]
        z: f64,
        #[state(init = 0.0)]
        r: f64,
        /// Weighted input spikes.
        #[input]
        i: f64,
    }

    fn step() {
        let psi = triangle(gamma / v_th, v_th);
        let r_now = detach(max(r - 1.0, 0.0));
        let v_next = alpha * v + gain * i - detach(z) * v_th;
        let a_next = rho * a + z;
        let z_next = if r_now > 0.5 {
            0.0
        } else {
            spike(v_next - v_th - beta * a_next, psi)
        };
        let r_next = detach(if z_next > 0.5 { n_ref } else { r_now });
        Next {
            v: v_next,
            a: a_next,
            z: z_next,
            r: r_next,
            spike: z_next,
        }
    }
}

use nest_alif::NestAlif;
use nest_lif::NestLif;

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum Task {
    /// 100 LIF neurons learn a sum of sines (NEST's `test_eprop_regression`).
    Regression,
    /// 50 LIF + 50 ALIF neurons accumulate evidence (NEST's `test_eprop_classification`).
    Classification,
}

/// Trains NEST's e-prop reference task through the public API and compares the losses.
#[derive(Parser, Debug)]
struct Args {
    /// The task.
    #[arg(long, value_enum, default_value = "regression")]
    task: Task,
    /// Fixture file (see `examples/nest_reference/make_fixtures.py`); by default the task's
    /// seed-1 file in `examples/data/nest/` (batch 1 for classification).
    #[arg(long)]
    fixtures: Option<PathBuf>,
    /// Fail unless every loss is within 1e-9 (relative) of NEST's reference (seed-1
    /// fixtures only).
    #[arg(long)]
    check: bool,
}

/// NEST's reference losses for the seed-1 regression fixtures (NEST's test, checked there
/// against the original TensorFlow implementation).
const REGRESSION_REFERENCE: [f64; 5] = [
    101.964356999041,
    103.466731126205,
    103.340607074771,
    103.680244037686,
    104.412775748752,
];

/// NEST's reference losses for the seed-1 classification fixtures, batch 1 and batch 2.
const CLASSIFICATION_REFERENCE: [[f64; 5]; 2] = [
    [
        0.741152550006,
        0.740388187700,
        0.665785233177,
        0.663644193322,
        0.729428962844,
    ],
    [
        0.702163370672,
        0.735555303152,
        0.740354864111,
        0.683882815282,
        0.707841122268,
    ],
];

/// Tensors by name.
type Tensors = BTreeMap<String, ArrayD<f64>>;

/// Reads every tensor of a fixture file as f64, with its metadata.
fn read_fixtures(path: &Path) -> Result<(Tensors, BTreeMap<String, String>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).with_context(|| format!("{}", path.display()))?;
    let metadata = header.metadata().clone().unwrap_or_default().into_iter().collect();
    let st = SafeTensors::deserialize(&bytes).with_context(|| format!("{}", path.display()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F64 {
            bail!("{}: tensor {name} is {:?}, expected F64", path.display(), view.dtype());
        }
        let values: Vec<f64> = view
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        out.insert(name, ArrayD::from_shape_vec(IxDyn(view.shape()), values)?);
    }
    Ok((out, metadata))
}

fn take<const D: usize>(
    tensors: &mut Tensors,
    name: &str,
    path: &Path,
) -> Result<ndarray::Array<f64, ndarray::Dim<[usize; D]>>>
where
    ndarray::Dim<[usize; D]>: ndarray::Dimension,
{
    let t = tensors
        .remove(name)
        .with_context(|| format!("{}: no tensor `{name}`", path.display()))?;
    let shape = t.shape().to_vec();
    t.into_dimensionality().with_context(|| {
        format!(
            "{}: `{name}` has shape {shape:?}, expected {D} dimensions",
            path.display()
        )
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let path = args.fixtures.clone().unwrap_or_else(|| {
        PathBuf::from(match args.task {
            Task::Regression => "examples/data/nest/regression_seed1.safetensors",
            Task::Classification => "examples/data/nest/classification_batch1_seed1.safetensors",
        })
    });
    let path = path.as_path();
    let (mut tensors, metadata) = read_fixtures(path)?;
    let task_name = match args.task {
        Task::Regression => "regression",
        Task::Classification => "classification",
    };
    if let Some(stored) = metadata.get("task")
        && stored != task_name
    {
        bail!(
            "{}: fixtures of the {stored} task, expected {task_name}",
            path.display()
        );
    }
    let w_in: Array2<f64> = take(&mut tensors, "w_in", path)?;
    let w_rec: Array2<f64> = take(&mut tensors, "w_rec", path)?;
    let w_out: Array2<f64> = take(&mut tensors, "w_out", path)?;
    let b_fb: Array2<f64> = take(&mut tensors, "b_fb", path)?;
    let x: Array4<f64> = take(&mut tensors, "x", path)?;
    let (n_rec, n_in) = w_in.dim();
    let n_out = w_out.nrows();
    let (n_iter, batch, steps) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    if w_rec.dim() != (n_rec, n_rec) || w_out.ncols() != n_rec || b_fb.dim() != (n_rec, n_out) || x.shape()[3] != n_in {
        bail!(
            "{}: inconsistent shapes (w_in {:?}, w_rec {:?}, w_out {:?}, b_fb {:?}, x {:?})",
            path.display(),
            w_in.shape(),
            w_rec.shape(),
            w_out.shape(),
            b_fb.shape(),
            x.shape()
        );
    }
    let seed1 = metadata.get("seed").map(String::as_str) == Some("1") && n_iter == 5;
    let (mut trainer, targets, reference) = match args.task {
        Task::Regression => {
            let y: Array4<f64> = take(&mut tensors, "y", path)?;
            if y.shape() != [n_iter, batch, steps, n_out] {
                bail!(
                    "{}: y has shape {:?}, expected {:?}",
                    path.display(),
                    y.shape(),
                    [n_iter, batch, steps, n_out]
                );
            }
            let trainer = regression(w_in, w_rec, w_out, &b_fb)?;
            (
                trainer,
                IterationTargets::Series(y),
                (seed1 && batch == 1).then_some(REGRESSION_REFERENCE),
            )
        }
        Task::Classification => {
            let labels: Array2<f64> = take(&mut tensors, "labels", path)?;
            if labels.dim() != (n_iter, batch) {
                bail!(
                    "{}: labels have shape {:?}, expected [{n_iter}, {batch}]",
                    path.display(),
                    labels.shape()
                );
            }
            let labels = labels
                .iter()
                .map(|&l| {
                    if l == 0.0 || l == 1.0 {
                        Ok(l as usize)
                    } else {
                        bail!("{}: label {l}, expected 0 or 1", path.display())
                    }
                })
                .collect::<Result<Vec<usize>>>()?;
            if n_rec % 2 != 0 {
                bail!(
                    "{}: {n_rec} recurrent neurons, expected an even number (LIF, then ALIF)",
                    path.display()
                );
            }
            let trainer = classification(w_in, w_rec, w_out, &b_fb)?;
            let reference = (seed1 && (batch == 1 || batch == 2)).then(|| CLASSIFICATION_REFERENCE[batch - 1]);
            (trainer, IterationTargets::Classes(labels, batch), reference)
        }
    };
    let mut worst: f64 = 0.0;
    for it in 0..n_iter {
        // `[T, B, n]`, as the trainer takes sequences.
        let xi = x.index_axis(Axis(0), it).permuted_axes([1, 0, 2]).to_owned();
        let loss = match &targets {
            IterationTargets::Series(y) => {
                let yi = y.index_axis(Axis(0), it).permuted_axes([1, 0, 2]).to_owned();
                let s = trainer.train_batch(xi.view(), Targets::Series(yi.view()))?;
                // NEST's loss: ½ Σ_t (y − y*)², averaged over outputs and samples.
                s.loss / n_out as f64
            }
            IterationTargets::Classes(labels, b) => {
                // NEST's loss: the cross-entropy averaged over the window's steps and samples.
                let l = &labels[it * b..(it + 1) * b];
                trainer.train_batch(xi.view(), Targets::Classes(l))?.loss
            }
        };
        match reference {
            Some(r) => {
                let rel = (loss - r[it]).abs() / r[it].abs();
                worst = worst.max(rel);
                println!(
                    "iteration {}: loss {loss:.12}  (NEST {:.12}, relative difference {rel:.1e})",
                    it + 1,
                    r[it]
                );
            }
            None => println!("iteration {}: loss {loss:.12}", it + 1),
        }
    }
    if reference.is_some() {
        println!("largest relative difference from NEST: {worst:.1e}");
        if args.check && worst > 1e-9 {
            bail!("--check: relative difference {worst:.1e} from NEST's reference, expected at most 1e-9");
        }
    } else if args.check {
        bail!(
            "--check needs seed-1 fixtures of 5 iterations (batch 1, or 1 or 2 for classification), whose reference losses NEST publishes"
        );
    }
    Ok(())
}

/// The targets of every iteration.
enum IterationTargets {
    /// Regression targets `[n_iter, batch, T, n_out]`.
    Series(Array4<f64>),
    /// Class labels, `batch` per iteration.
    Classes(Vec<usize>, usize),
}

/// NEST's regression test: dt = 1 ms, τ_m = 30 ms for the neurons and the readout, v_th =
/// 0.03, γ = 0.3, c_reg = 300, f_target = 10 Hz, gradient descent with η = 1e-4, W in
/// [−100, 100], `regular_spike_arrival: false` (input gain 1 − α).
fn regression(w_in: Array2<f64>, w_rec: Array2<f64>, w_out: Array2<f64>, b_fb: &Array2<f64>) -> Result<Trainer<f64>> {
    let (n_rec, n_in) = w_in.dim();
    let alpha = (-1.0f64 / 30.0).exp();
    let kappa = (-1.0f64 / 30.0).exp();
    let lif = NestLif {
        alpha,
        gain: 1.0 - alpha,
        v_th: 0.03,
        gamma: 0.3,
    };
    let mut net = NetworkBuilder::<f64>::new(n_in)
        .population(PopulationSpec::new("rec", lif, n_rec))
        .projection(ProjectionSpec::input("rec"))
        .projection(ProjectionSpec::new("rec", "rec"))
        .readout(
            ReadoutSpec::new(w_out.nrows(), kappa)
                .gain(ReadoutGain::OneMinusKappa)
                .bias(false),
        )
        .build()?;
    net.params.projections[0] = w_in.iter().copied().collect();
    net.params.projections[1] = w_rec.iter().copied().collect();
    net.params.readout_w[0] = w_out;
    let mut config = TrainConfig::new(
        Algorithm::Eprop(Feedback::Matrices(vec![("rec".into(), b_fb.t().to_owned())])),
        Loss::MeanSquared(Window::All),
        Optimizer::sgd(1e-4, 0.0),
    );
    config.reduction = Reduction::SumOverSteps;
    config.rate_regularization = Some(RateRegularization::per_sequence(300.0, 10.0 * 1e-3));
    config.weight_range = Some((-100.0, 100.0));
    Ok(Trainer::new(net, config)?)
}

/// NEST's classification test: the first half of the recurrent neurons LIF, the second half
/// ALIF (τ_a = 2000 ms, β = 1.7 (1 − ρ)/(1 − α)), dt = 1 ms, τ_m = 20 ms, v_th = 0.6, γ = 0.3,
/// refractory 5 ms, `regular_spike_arrival: true` (input gain 1); readout τ = 20 ms; c_reg =
/// 300 and f_target = 10 Hz; Adam with η = 5e-3, β₁ = 0.9, β₂ = 0.999, ε = 1e-8 (TensorFlow's
/// placement), W in [−100, 100]; the gradient averaged over the 150 recall steps.
fn classification(
    w_in: Array2<f64>,
    w_rec: Array2<f64>,
    w_out: Array2<f64>,
    b_fb: &Array2<f64>,
) -> Result<Trainer<f64>> {
    let (n_rec, n_in) = w_in.dim();
    let half = n_rec / 2;
    let alpha = (-1.0f64 / 20.0).exp();
    let kappa = (-1.0f64 / 20.0).exp();
    let rho = (-1.0f64 / 2000.0).exp();
    let lif = NestAlif {
        alpha,
        gain: 1.0,
        v_th: 0.6,
        gamma: 0.3,
        beta: 0.0,
        rho,
        n_ref: 5.0,
    };
    let alif = NestAlif {
        beta: 1.7 * (1.0 - rho) / (1.0 - alpha),
        ..lif.clone()
    };
    let names = ["reg", "ad"];
    let mut builder = NetworkBuilder::<f64>::new(n_in)
        .population(PopulationSpec::new("reg", lif, half))
        .population(PopulationSpec::new("ad", alif, n_rec - half));
    // One recurrent network: every recurrent block carries the previous step's spikes,
    // the LIF → ALIF one included.
    for target in names {
        builder = builder.projection(ProjectionSpec::input(target));
        for source in names {
            builder = builder.projection(ProjectionSpec::new(source, target).delayed(true));
        }
    }
    let mut net = builder
        .readout(
            ReadoutSpec::new(w_out.nrows(), kappa)
                .from(names)
                .gain(ReadoutGain::OneMinusKappa)
                .bias(false),
        )
        .build()?;
    // The blocks of NEST's matrices, in the order the projections were added.
    let rows = [0..half, half..n_rec];
    let mut k = 0;
    for post in &rows {
        net.params.projections[k] = w_in.slice(ndarray::s![post.clone(), ..]).iter().copied().collect();
        k += 1;
        for pre in &rows {
            net.params.projections[k] = w_rec
                .slice(ndarray::s![post.clone(), pre.clone()])
                .iter()
                .copied()
                .collect();
            k += 1;
        }
    }
    for (r, cols) in rows.iter().enumerate() {
        net.params.readout_w[r] = w_out.slice(ndarray::s![.., cols.clone()]).to_owned();
    }
    let feedback = rows
        .iter()
        .zip(names)
        .map(|(cols, name)| {
            (
                name.to_string(),
                b_fb.slice(ndarray::s![cols.clone(), ..]).t().to_owned(),
            )
        })
        .collect();
    let window = 150;
    let mut config = TrainConfig::new(
        Algorithm::Eprop(Feedback::Matrices(feedback)),
        Loss::CrossEntropy(Window::Last(window)),
        Optimizer::adam(5e-3).eps_at(EpsilonAt::Uncorrected),
    );
    config.rate_regularization = Some(RateRegularization::per_sequence(300.0 / window as f64, 10.0 * 1e-3));
    config.weight_range = Some((-100.0, 100.0));
    Ok(Trainer::new(net, config)?)
}
