//! The synthetic exactness task: e-prop and BPTT on the same f64 network, compared.
//!
//! Bellec LIF or ALIF neurons with the reset kept in the gradient (no detach, no refractory
//! period), or both (`--model mixed`: the first half of the hidden neurons LIF, the second
//! half ALIF, two populations), 5 inputs, 7 hidden, 3 outputs, 30 steps of Bernoulli(0.3)
//! input, leaky readout κ = 0.8, loss `Σ_t CE(softmax(y_t), target)`. Without recurrent
//! weights e-prop is exact, so the printed difference is rounding; with `--recurrent` e-prop
//! is an approximation. `--connectivity P` makes the input (and recurrent) projections sparse,
//! each synapse present with probability P. `--dump` writes inputs, weights, hyper-parameters,
//! the loss and both gradients to a safetensors file, so the numbers can be checked in any
//! framework.
//!
//! cargo run --release --example exact_gradients -- --model alif --seed 1 --dump out/alif.safetensors

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, ValueEnum};
use ndarray::{Array2, Array3, s};
use plasticity_examples::TensorDump;
use plasticity_examples::flags;
use plasticity_runtime::models::{BellecAlifDiffReset, BellecLifDiffReset};
use plasticity_runtime::{
    Algorithm, Connectivity, Feedback, Gradients, Init, Loss, Network, NetworkBuilder, Optimizer, PopulationSpec,
    ProjectionSpec, ReadoutSpec, Targets, TrainConfig, Trainer, Window,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum Model {
    Lif,
    Alif,
    /// The first half of the hidden neurons LIF, the second half ALIF.
    Mixed,
}

/// Compares e-prop and BPTT gradients on Bellec neurons.
#[derive(Parser, Debug)]
struct Args {
    /// Neuron model.
    #[arg(long, value_enum, default_value = "alif")]
    model: Model,
    /// Add recurrent weights (e-prop is then approximate).
    #[arg(long)]
    recurrent: bool,
    /// Sparse input (and recurrent) projections: each synapse exists with this probability,
    /// in (0, 1].
    #[arg(long)]
    connectivity: Option<f64>,
    /// Seed of weights and inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write everything to this safetensors file.
    #[arg(long)]
    dump: Option<PathBuf>,
}

const N_IN: usize = 5;
const HIDDEN: usize = 7;
const N_OUT: usize = 3;
const STEPS: usize = 30;
const KAPPA: f64 = 0.8;
const GAMMA: f64 = 0.3;
const V_TH: f64 = 0.6;
const ALPHA: f64 = 0.9;
const RHO: f64 = 0.97;
const BETA: f64 = 1.7;
const TARGET: usize = 1;

/// The hidden populations: name, first neuron, size.
fn populations(model: Model) -> Vec<(&'static str, usize, usize)> {
    match model {
        Model::Lif | Model::Alif => vec![("hidden", 0, HIDDEN)],
        Model::Mixed => vec![("lif", 0, HIDDEN / 2), ("alif", HIDDEN / 2, HIDDEN - HIDDEN / 2)],
    }
}

fn build(args: &Args, seed: u64) -> Result<Network<f64>> {
    let lif = BellecLifDiffReset {
        alpha: ALPHA,
        v_th: V_TH,
        gamma: GAMMA,
    };
    let alif = BellecAlifDiffReset {
        alpha: ALPHA,
        rho: RHO,
        beta: BETA,
        v_th: V_TH,
        gamma: GAMMA,
    };
    let pops = populations(args.model);
    let mut b = NetworkBuilder::new(N_IN);
    for &(name, _, size) in &pops {
        b = match (args.model, name) {
            (Model::Lif, _) | (Model::Mixed, "lif") => b.population(PopulationSpec::new(name, lif.clone(), size)),
            _ => b.population(PopulationSpec::new(name, alif.clone(), size)),
        };
    }
    let connectivity = |salt: u64| match args.connectivity {
        None => Connectivity::Dense,
        Some(p) => Connectivity::Probability {
            p,
            seed: seed.wrapping_mul(31).wrapping_add(salt),
        },
    };
    // Input projections first, then recurrent ones, each population in turn: for one
    // population this is the order (and so the weight draw) of the layered shorthand.
    let mut salt = 0;
    for &(target, _, _) in &pops {
        salt += 1;
        b = b.projection(
            ProjectionSpec::input(target)
                .init(Init::Gaussian { gain: 3.0 })
                .connectivity(connectivity(salt)),
        );
        if args.recurrent {
            for &(source, _, _) in &pops {
                salt += 1;
                b = b.projection(
                    ProjectionSpec::new(source, target)
                        .init(Init::Gaussian { gain: 1.0 })
                        .connectivity(connectivity(salt)),
                );
            }
        }
    }
    let names: Vec<&str> = pops.iter().map(|p| p.0).collect();
    let readout = ReadoutSpec::new(N_OUT, KAPPA).bias(false).from(names);
    Ok(b.readout(readout).seed(seed).build()?)
}

/// A dense `[HIDDEN, n_pre]` matrix assembled from the blocks of every projection from
/// `input` (or from the hidden populations), with `values(i)` the stored values of
/// projection `i`; and the mask of existing synapses.
fn assemble(net: &Network<f64>, input: bool, values: impl Fn(usize) -> Vec<f64>) -> (Array2<f64>, Array2<f64>) {
    let pops = offsets(net);
    let n_pre = if input { N_IN } else { HIDDEN };
    let (mut w, mut mask) = (Array2::zeros((HIDDEN, n_pre)), Array2::zeros((HIDDEN, n_pre)));
    for (i, proj) in net.projections.iter().enumerate() {
        let col = match proj.source() {
            plasticity_runtime::Source::Input if input => 0,
            plasticity_runtime::Source::Population(s) if !input => pops[s],
            _ => continue,
        };
        let row = pops[proj.target()];
        let block = s![row..row + proj.n_post(), col..col + proj.n_pre()];
        w.slice_mut(block).assign(&proj.to_dense(&values(i)));
        for (j, i) in proj.synapses() {
            mask[[row + j, col + i]] = 1.0;
        }
    }
    (w, mask)
}

/// First hidden index of each population.
fn offsets(net: &Network<f64>) -> Vec<usize> {
    net.populations
        .iter()
        .scan(0, |at, p| {
            let first = *at;
            *at += p.size();
            Some(first)
        })
        .collect()
}

/// The readout weights `[N_OUT, HIDDEN]` from the per-population blocks.
fn readout_matrix(blocks: &[Array2<f64>]) -> Array2<f64> {
    let views: Vec<_> = blocks.iter().map(|b| b.view()).collect();
    ndarray::concatenate(ndarray::Axis(1), &views).expect("blocks of one readout")
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(p) = args.connectivity {
        flags::positive("--connectivity", p, 1.0)?;
    }
    // Draw until the hidden neurons spike (a silent network has trivial gradients).
    let mut attempt = 0;
    let (net, x) = loop {
        let seed = args.seed.wrapping_mul(1000).wrapping_add(attempt);
        let net = build(&args, seed)?;
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let x = Array3::from_shape_fn((STEPS, 1, N_IN), |_| if rng.random_bool(0.3) { 1.0 } else { 0.0 });
        let spikes: f64 = net.run(x.view())?.spikes.iter().map(|s| s.sum()).sum();
        if spikes >= 3.0 {
            break (net, x);
        }
        attempt += 1;
        if attempt > 100 {
            bail!("no weight draw made the network spike");
        }
    };
    let loss = Loss::CrossEntropy(Window::All);
    let targets = [TARGET];
    let gradients = |algorithm| -> Result<(Gradients<f64>, f64)> {
        let mut tr = Trainer::new(net.clone(), TrainConfig::new(algorithm, loss, Optimizer::sgd(0.0, 0.0)))?;
        let (g, stats) = tr.compute_gradients(x.view(), Targets::Classes(&targets))?;
        // The runtime averages the loss over steps; this task sums it.
        let mut g = g.clone();
        g.projections.iter_mut().flatten().for_each(|v| *v *= STEPS as f64);
        g.readout_w.iter_mut().for_each(|w| *w *= STEPS as f64);
        Ok((g, stats.loss * STEPS as f64))
    };
    let (eprop, loss_value) = gradients(Algorithm::Eprop(Feedback::Symmetric))?;
    let (bptt, _) = gradients(Algorithm::Bptt)?;
    let spikes: f64 = net.run(x.view())?.spikes.iter().map(|s| s.sum()).sum();
    let (w_in, mask_in) = assemble(&net, true, |i| net.params.projections[i].clone());
    let (w_rec, mask_rec) = assemble(&net, false, |i| net.params.projections[i].clone());
    let grad_in = |g: &Gradients<f64>| assemble(&net, true, |i| g.projections[i].clone()).0;
    let grad_rec = |g: &Gradients<f64>| assemble(&net, false, |i| g.projections[i].clone()).0;
    let diff_in = max_rel(grad_in(&eprop).iter(), grad_in(&bptt).iter());
    let diff_out = max_rel(
        readout_matrix(&eprop.readout_w).iter(),
        readout_matrix(&bptt.readout_w).iter(),
    );
    let models: Vec<String> = (net.populations.iter())
        .map(|p| format!("{} × {}", p.size(), p.pattern().model))
        .collect();
    println!(
        "model: {} ({} hidden, {} steps, κ = {KAPPA}), {} hidden spikes",
        models.join(" + "),
        HIDDEN,
        STEPS,
        spikes
    );
    if let Some(p) = args.connectivity {
        let synapses: usize = net.projections.iter().map(|pr| pr.synapses().len()).sum();
        println!("connectivity: p = {p}, {synapses} synapses");
    }
    println!("loss: {loss_value:.12}");
    println!("max relative difference e-prop vs BPTT, W_in:  {diff_in:.3e}");
    println!("max relative difference e-prop vs BPTT, W_out: {diff_out:.3e}");
    if args.recurrent {
        let d = max_rel(grad_rec(&eprop).iter(), grad_rec(&bptt).iter());
        println!("max relative difference e-prop vs BPTT, W_rec: {d:.3e} (e-prop is approximate with recurrence)");
    }
    if let Some(path) = &args.dump {
        let mut dump = TensorDump::default();
        dump.add("x", &[STEPS, N_IN], x.iter().copied());
        dump.add("w_in", &[HIDDEN, N_IN], w_in.iter().copied());
        dump.add(
            "w_out",
            &[N_OUT, HIDDEN],
            readout_matrix(&net.params.readout_w).iter().copied(),
        );
        if args.recurrent {
            dump.add("w_rec", &[HIDDEN, HIDDEN], w_rec.iter().copied());
        }
        if args.connectivity.is_some() {
            dump.add("mask_in", &[HIDDEN, N_IN], mask_in.iter().copied());
            if args.recurrent {
                dump.add("mask_rec", &[HIDDEN, HIDDEN], mask_rec.iter().copied());
            }
        }
        dump.add("target", &[1], [TARGET as f64]);
        let per_neuron = |lif: f64, alif: f64| -> Vec<f64> {
            let pops = populations(args.model);
            (0..HIDDEN)
                .map(|j| {
                    let pop = pops
                        .iter()
                        .find(|p| (p.1..p.1 + p.2).contains(&j))
                        .expect("a population");
                    if args.model == Model::Lif || pop.0 == "lif" {
                        lif
                    } else {
                        alif
                    }
                })
                .collect()
        };
        let scalars: &[(&str, f64)] = &[("alpha", ALPHA), ("v_th", V_TH), ("gamma", GAMMA), ("kappa", KAPPA)];
        for &(name, v) in scalars {
            dump.add(name, &[1], [v]);
        }
        match args.model {
            Model::Mixed => {
                dump.add("beta", &[HIDDEN], per_neuron(0.0, BETA));
                dump.add("rho", &[HIDDEN], per_neuron(RHO, RHO));
            }
            Model::Lif => {
                dump.add("beta", &[1], [0.0]);
                dump.add("rho", &[1], [RHO]);
            }
            Model::Alif => {
                dump.add("beta", &[1], [BETA]);
                dump.add("rho", &[1], [RHO]);
            }
        }
        dump.add("loss", &[], [loss_value]);
        for (tag, g) in [("eprop", &eprop), ("bptt", &bptt)] {
            dump.add(&format!("grad_w_in_{tag}"), &[HIDDEN, N_IN], grad_in(g).iter().copied());
            dump.add(
                &format!("grad_w_out_{tag}"),
                &[N_OUT, HIDDEN],
                readout_matrix(&g.readout_w).iter().copied(),
            );
            if args.recurrent {
                dump.add(
                    &format!("grad_w_rec_{tag}"),
                    &[HIDDEN, HIDDEN],
                    grad_rec(g).iter().copied(),
                );
            }
        }
        dump.write(path)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn max_rel<'a>(a: impl Iterator<Item = &'a f64>, b: impl Iterator<Item = &'a f64>) -> f64 {
    a.zip(b)
        .map(|(a, b)| (a - b).abs() / a.abs().max(b.abs()).max(1e-12))
        .fold(0.0, f64::max)
}
