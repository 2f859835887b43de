//! Define your own neuron model with `#[neuron_model]` and train it online with e-prop.
//!
//! The model is a LIF neuron with a learnable per-neuron threshold and an exponential
//! synaptic current, written here in a few lines; the macro differentiates it, finds which
//! traces are needed, and the runtime trains it. The task: tell two spike patterns apart
//! (which of two input groups fires more over the sequence), read out at the end.
//!
//! cargo run --release --example custom_model -- --epochs 30

use anyhow::Result;
use clap::Parser;
use ndarray::Array3;
use plasticity_runtime::{
    Algorithm, Feedback, Init, LayerSpec, Loss, NetworkBuilder, Optimizer, ReadoutSpec, Targets, TrainConfig, Trainer,
    Window, neuron_model,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

#[neuron_model(surrogate = fast_sigmoid(5.0))]
pub mod my_neuron {
    /// A LIF neuron driven by an exponentially decaying synaptic current, with a
    /// learnable threshold and reset by subtraction (detached, as in Bellec et al.).
    pub struct MyNeuron {
        /// Membrane decay per step.
        #[param(default = 0.95)]
        pub alpha: f64,
        /// Synaptic current decay per step.
        #[param(default = 0.8)]
        pub alpha_syn: f64,
        /// Threshold, learned per neuron.
        #[param(default = 1.0, learnable)]
        pub v_th: f64,
        #[state(init = 0.0)]
        v: f64,
        #[state(init = 0.0)]
        syn: f64,
        #[input]
        i: f64,
    }

    fn step() {
        let reset = detach(spike(v - v_th));
        let syn = alpha_syn * syn + i;
        let v = alpha * v + syn - reset * v_th;
        Next {
            v,
            syn,
            spike: spike(v - v_th),
        }
    }
}

use my_neuron::MyNeuron;

/// Trains a user-defined neuron model on a two-pattern task.
#[derive(Parser, Debug)]
struct Args {
    /// Training epochs (each 8 batches of 16).
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    /// Hidden neurons.
    #[arg(long, default_value_t = 32)]
    hidden: usize,
    /// Seed.
    #[arg(long, default_value_t = 3)]
    seed: u64,
}

const N_IN: usize = 20;
const STEPS: usize = 50;

/// A batch: class 0 drives inputs 0..10 harder, class 1 inputs 10..20.
fn batch(rng: &mut StdRng, size: usize) -> (Array3<f32>, Vec<usize>) {
    let classes: Vec<usize> = (0..size).map(|_| rng.random_range(0..2)).collect();
    let x = Array3::from_shape_fn((STEPS, size, N_IN), |(_, b, i)| {
        let favoured = (i < N_IN / 2) == (classes[b] == 0);
        let p = if favoured { 0.12 } else { 0.04 };
        if rng.random_bool(p) { 1.0 } else { 0.0 }
    });
    (x, classes)
}

fn main() -> Result<()> {
    let args = Args::parse();
    println!("{}", MyNeuron::describe());
    let net = NetworkBuilder::new(N_IN)
        .layer(
            LayerSpec::new(MyNeuron::default(), args.hidden)
                .recurrent(true)
                .init_in(Init::Gaussian { gain: 2.0 }),
        )
        .readout(ReadoutSpec::new(2, 0.9))
        .seed(args.seed)
        .build::<f32>()?;
    let config = TrainConfig::new(
        Algorithm::Eprop(Feedback::Symmetric),
        Loss::CrossEntropy(Window::Last(10)),
        Optimizer::adam(5e-3),
    );
    let mut trainer = Trainer::new(net, config)?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    for epoch in 0..args.epochs {
        let (mut loss, mut acc) = (0.0, 0.0);
        for _ in 0..8 {
            let (x, y) = batch(&mut rng, 16);
            let s = trainer.train_batch(x.view(), Targets::Classes(&y))?;
            loss += s.loss / 8.0;
            acc += s.accuracy() / 8.0;
        }
        if epoch % 5 == 4 || epoch + 1 == args.epochs {
            println!(
                "epoch {:3}: loss {loss:.4}, train accuracy {:.1}%",
                epoch + 1,
                100.0 * acc
            );
        }
    }
    let (x, y) = batch(&mut StdRng::seed_from_u64(args.seed + 1000), 256);
    let test = trainer.evaluate(x.view(), Targets::Classes(&y))?;
    let thresholds = &trainer.network().layers[0].learn;
    println!(
        "learned thresholds: mean {:.3}, min {:.3}, max {:.3}",
        thresholds.mean().unwrap_or(0.0),
        thresholds.iter().copied().fold(f32::INFINITY, f32::min),
        thresholds.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    );
    println!("test accuracy: {:.1}%", 100.0 * test.accuracy());
    Ok(())
}
