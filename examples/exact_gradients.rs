//! The synthetic exactness task: e-prop and BPTT on the same f64 network, compared.
//!
//! Bellec LIF or ALIF neurons with the reset kept in the gradient (no detach, no refractory
//! period), 5 inputs, 7 hidden, 3 outputs, 30 steps of Bernoulli(0.3) input, leaky readout
//! κ = 0.8, loss `Σ_t CE(softmax(y_t), target)`. Without recurrent weights e-prop is exact,
//! so the printed difference is rounding; with `--recurrent` e-prop is an approximation.
//! `--dump` writes inputs, weights, hyper-parameters, the loss and both gradients to a
//! safetensors file, so the numbers can be checked in any framework.
//!
//! cargo run --release --example exact_gradients -- --model alif --seed 1 --dump out/alif.safetensors

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, ValueEnum};
use ndarray::Array3;
use plasticity_examples::TensorDump;
use plasticity_runtime::models::{BellecAlifDiffReset, BellecLifDiffReset};
use plasticity_runtime::{
    Algorithm, Feedback, Gradients, Init, LayerSpec, Loss, Network, NetworkBuilder, NeuronModel, Optimizer,
    ReadoutSpec, Targets, TrainConfig, Trainer, Window,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Model {
    Lif,
    Alif,
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

fn main() -> Result<()> {
    let args = Args::parse();
    match args.model {
        Model::Lif => run(
            BellecLifDiffReset {
                alpha: ALPHA,
                v_th: V_TH,
                gamma: GAMMA,
            },
            &args,
            0.0,
        ),
        Model::Alif => run(
            BellecAlifDiffReset {
                alpha: ALPHA,
                rho: RHO,
                beta: BETA,
                v_th: V_TH,
                gamma: GAMMA,
            },
            &args,
            BETA,
        ),
    }
}

fn run<M: NeuronModel>(model: M, args: &Args, beta: f64) -> Result<()> {
    // Draw until the hidden neurons spike (a silent network has trivial gradients).
    let mut attempt = 0;
    let (net, x) = loop {
        let seed = args.seed.wrapping_mul(1000).wrapping_add(attempt);
        let mut layer = LayerSpec::new(model.clone(), HIDDEN).init_in(Init::Gaussian { gain: 3.0 });
        if args.recurrent {
            layer = layer.recurrent(true).init_rec(Init::Gaussian { gain: 1.0 });
        }
        let mut readout = ReadoutSpec::new(N_OUT, KAPPA);
        readout.bias = false;
        let net: Network<M, f64> = NetworkBuilder::new(N_IN)
            .layer(layer)
            .readout(readout)
            .seed(seed)
            .build()?;
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let x = Array3::from_shape_fn((STEPS, 1, N_IN), |_| if rng.random_bool(0.3) { 1.0 } else { 0.0 });
        let spikes: f64 = net.run(x.view())?.spikes[0].sum();
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
        for l in &mut g.layers {
            l.w_in
                .iter_mut()
                .chain(l.w_rec.iter_mut().flatten())
                .for_each(|w| *w *= STEPS as f64);
        }
        g.readout_w *= STEPS as f64;
        Ok((g, stats.loss * STEPS as f64))
    };
    let (eprop, loss_value) = gradients(Algorithm::Eprop(Feedback::Symmetric))?;
    let (bptt, _) = gradients(Algorithm::Bptt)?;
    let spikes: f64 = net.run(x.view())?.spikes[0].sum();
    let diff_in = max_rel(eprop.layers[0].w_in[0].iter(), bptt.layers[0].w_in[0].iter());
    let diff_out = max_rel(eprop.readout_w.iter(), bptt.readout_w.iter());
    println!(
        "model: {} ({} hidden, {} steps, κ = {KAPPA}), {} hidden spikes",
        M::PATTERN.model,
        HIDDEN,
        STEPS,
        spikes
    );
    println!("loss: {loss_value:.12}");
    println!("max relative difference e-prop vs BPTT, W_in:  {diff_in:.3e}");
    println!("max relative difference e-prop vs BPTT, W_out: {diff_out:.3e}");
    if let (Some(e), Some(b)) = (&eprop.layers[0].w_rec, &bptt.layers[0].w_rec) {
        let d = max_rel(e[0].iter(), b[0].iter());
        println!("max relative difference e-prop vs BPTT, W_rec: {d:.3e} (e-prop is approximate with recurrence)");
    }
    if let Some(path) = &args.dump {
        let mut dump = TensorDump::default();
        dump.add("x", &[STEPS, N_IN], x.iter().copied());
        let layer = &net.layers[0];
        dump.add("w_in", &[HIDDEN, N_IN], layer.w_in[0].iter().copied());
        dump.add("w_out", &[N_OUT, HIDDEN], net.readout.w.iter().copied());
        if let Some(w) = &layer.w_rec {
            dump.add("w_rec", &[HIDDEN, HIDDEN], w[0].iter().copied());
        }
        dump.add("target", &[1], [TARGET as f64]);
        for (name, v) in [
            ("alpha", ALPHA),
            ("rho", RHO),
            ("beta", beta),
            ("v_th", V_TH),
            ("gamma", GAMMA),
            ("kappa", KAPPA),
        ] {
            dump.add(name, &[1], [v]);
        }
        dump.add("loss", &[], [loss_value]);
        for (tag, g) in [("eprop", &eprop), ("bptt", &bptt)] {
            dump.add(
                &format!("grad_w_in_{tag}"),
                &[HIDDEN, N_IN],
                g.layers[0].w_in[0].iter().copied(),
            );
            dump.add(
                &format!("grad_w_out_{tag}"),
                &[N_OUT, HIDDEN],
                g.readout_w.iter().copied(),
            );
            if let Some(w) = &g.layers[0].w_rec {
                dump.add(&format!("grad_w_rec_{tag}"), &[HIDDEN, HIDDEN], w[0].iter().copied());
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
