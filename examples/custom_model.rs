//! Define your own neuron models with `#[neuron_model]` and train a network of them online
//! with e-prop.
//!
//! Two models, written here in a few lines each: a LIF neuron with a learnable per-neuron
//! threshold and an exponential synaptic current, and a two-compartment neuron whose input
//! arrives either at the soma or at a passive dendrite (two input ports). The macro
//! differentiates both and finds which traces they need. The network has one population of
//! each: the LIF population is recurrent and reads the input; the two-compartment population
//! gets the input on its soma and the LIF population's spikes on its dendrite. The readout
//! reads both. The task: tell two spike patterns apart (which of two input groups fires more
//! over the sequence), read out at the end. The run writes `membrane.png` (membrane potentials
//! of a few neurons of each population over the first test sample) to `--output`.
//!
//! cargo run --release --example custom_model -- --epochs 30

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use ndarray::Array3;
use plasticity_examples::flags;
use plasticity_examples::job::{self, Job};
use plasticity_examples::resume::{Progress, Resume, Rng, stop_at};
use plasticity_examples::run_log::RunLog;
use plasticity_runtime::{
    Algorithm, Feedback, Init, Loss, NetworkBuilder, Optimizer, PopulationSpec, ProjectionSpec, ReadoutSpec, Targets,
    TrainConfig, Trainer, Window, neuron_model,
};
use rand::{RngExt, SeedableRng};
use serde::Serialize;

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

#[neuron_model(surrogate = fast_sigmoid(5.0))]
pub mod two_compartment {
    /// A soma with a passive dendrite: current into the dendrite reaches the soma through a
    /// coupling, current into the soma drives it directly.
    pub struct TwoCompartment {
        /// Somatic membrane decay per step.
        #[param(default = 0.9)]
        pub alpha: f64,
        /// Dendritic decay per step.
        #[param(default = 0.8)]
        pub alpha_dend: f64,
        /// Dendrite-to-soma coupling.
        #[param(default = 0.5)]
        pub coupling: f64,
        /// Threshold.
        #[param(default = 1.0)]
        pub v_th: f64,
        #[state(init = 0.0)]
        v: f64,
        #[state(init = 0.0)]
        dend_v: f64,
        /// Input onto the soma.
        #[input]
        soma: f64,
        /// Input onto the dendrite.
        #[input]
        dend: f64,
    }

    fn step() {
        let reset = detach(spike(v - v_th));
        let dend_v = alpha_dend * dend_v + dend;
        let v = alpha * v + coupling * dend_v + soma - reset * v_th;
        Next {
            v,
            dend_v,
            spike: spike(v - v_th),
        }
    }
}

use my_neuron::MyNeuron;
use two_compartment::TwoCompartment;

/// Trains a user-defined neuron model on a two-pattern task.
#[derive(Parser, Debug, Serialize)]
struct Args {
    /// Training epochs (each 8 batches of 16).
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    /// Neurons per population.
    #[arg(long, default_value_t = 32)]
    hidden: usize,
    /// Seed.
    #[arg(long, default_value_t = 3)]
    seed: u64,
    /// Output folder (`last.safetensors`, `metrics.csv`, `summary.json`, `membrane.png`).
    #[arg(long, default_value = "out/custom_model")]
    output: PathBuf,
    /// Continue from `OUTPUT/last.safetensors` up to `--epochs` in total (the other flags
    /// must be those of the interrupted run).
    #[arg(long)]
    resume: bool,
    /// Stop after this many epochs of this invocation, leaving the checkpoint to continue
    /// from with `--resume` (for time-limited jobs).
    #[arg(long)]
    stop_after: Option<usize>,
    /// Shards of each batch, computed in parallel and spread over the MPI ranks. Their
    /// gradients are summed in one fixed order, so a run gives bit-identical results on 1, 2,
    /// 4 or 8 processes (at most this many ranks have work).
    #[arg(long, default_value_t = 8)]
    shards: usize,
}

const N_IN: usize = 20;
const STEPS: usize = 50;
/// The largest population this example accepts (its recurrent weights alone take
/// `4 MAX_HIDDEN²` bytes, its e-prop state many times more).
const MAX_HIDDEN: usize = 4096;

/// A batch: class 0 drives inputs 0..10 harder, class 1 inputs 10..20.
fn batch(rng: &mut Rng, size: usize) -> (Array3<f32>, Vec<usize>) {
    let classes: Vec<usize> = (0..size).map(|_| rng.random_range(0..2)).collect();
    let x = Array3::from_shape_fn((STEPS, size, N_IN), |(_, b, i)| {
        let favoured = (i < N_IN / 2) == (classes[b] == 0);
        let p = if favoured { 0.12 } else { 0.04 };
        if rng.random_bool(p) { 1.0 } else { 0.0 }
    });
    (x, classes)
}

fn main() -> ExitCode {
    job::run(train)
}

fn train(job: &Job) -> Result<()> {
    let args = Args::parse();
    flags::count("--hidden", args.hidden, 1..=MAX_HIDDEN)?;
    flags::count("--epochs", args.epochs, 1..=1_000_000)?;
    flags::optional("--stop-after", args.stop_after, 1..=1_000_000)?;
    flags::count("--shards", args.shards, 1..=65_536)?;
    println!("{}", MyNeuron::describe());
    println!("{}", TwoCompartment::describe());
    let net = NetworkBuilder::<f32>::new(N_IN)
        .population(PopulationSpec::new("lif", MyNeuron::default(), args.hidden))
        .population(PopulationSpec::new("two_comp", TwoCompartment::default(), args.hidden))
        .projection(ProjectionSpec::input("lif").init(Init::Gaussian { gain: 2.0 }))
        .projection(ProjectionSpec::new("lif", "lif"))
        .projection(
            ProjectionSpec::input("two_comp")
                .port("soma")
                .init(Init::Gaussian { gain: 2.0 }),
        )
        .projection(ProjectionSpec::new("lif", "two_comp").port("dend"))
        .readout(ReadoutSpec::new(2, 0.9).from(["lif", "two_comp"]))
        .seed(args.seed)
        .build()?;
    let config = TrainConfig::new(
        Algorithm::Eprop(Feedback::Symmetric),
        Loss::CrossEntropy(Window::Last(10)),
        Optimizer::adam(5e-3),
    );
    let config = TrainConfig {
        shards: args.shards,
        ..config
    };
    let mut trainer = Trainer::with_collective(net, config, job.comm())?;
    std::fs::create_dir_all(&args.output)?;
    let mut log = RunLog::new(&args.output, "custom_model", &[]);
    let resume = Resume::new(&args.output, &args, &["epochs", "stop_after"])?;
    let mut progress = resume.start(&mut trainer, args.resume, Progress::new(args.seed, 0), &mut log, |d| d)?;
    if args.resume {
        println!("resuming after epoch {} of {}", progress.done, args.epochs);
    }
    // The same held-out set at every epoch, from its own generator.
    let test_set = || batch(&mut Rng::seed_from_u64(args.seed.wrapping_add(1000)), 256);
    let end = stop_at(progress.done, args.epochs, args.stop_after, 1);
    while progress.done < end {
        let (mut loss, mut acc) = (0.0, 0.0);
        for _ in 0..8 {
            let (x, y) = batch(&mut progress.rng, 16);
            let s = trainer.train_batch(x.view(), Targets::Classes(&y))?;
            loss += s.loss / 8.0;
            acc += s.accuracy() / 8.0;
        }
        let (x, y) = test_set();
        let test = trainer.evaluate(x.view(), Targets::Classes(&y))?;
        progress.done += 1;
        log.epoch(
            progress.done,
            (loss, Some(acc)),
            (Some(test.loss), Some(test.accuracy())),
            &[],
        )?;
        resume.save(&trainer, &progress)?;
        if progress.done.is_multiple_of(5) || progress.done == args.epochs {
            println!(
                "epoch {:3}: loss {loss:.4}, train accuracy {:.1}%",
                progress.done,
                100.0 * acc
            );
        }
    }
    let (x, y) = test_set();
    let test = trainer.evaluate(x.view(), Targets::Classes(&y))?;
    let shown: [(&str, &[usize]); 2] = [("lif", &[0, 1, 2]), ("two_comp", &[0, 1, 2])];
    let first = x.slice(ndarray::s![.., 0..1, ..]);
    plasticity_examples::plots::membrane(
        &args.output.join("membrane.png"),
        trainer.network(),
        first,
        &shown,
        0.001,
    )?;
    let thresholds = &trainer.network().params.learnable[0];
    println!(
        "learned thresholds: mean {:.3}, min {:.3}, max {:.3}",
        thresholds.mean().unwrap_or(0.0),
        thresholds.iter().copied().fold(f32::INFINITY, f32::min),
        thresholds.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    );
    let thresholds_summary = serde_json::json!({
        "mean": thresholds.mean().unwrap_or(0.0),
        "min": thresholds.iter().copied().fold(f32::INFINITY, f32::min),
        "max": thresholds.iter().copied().fold(f32::NEG_INFINITY, f32::max),
    });
    log.summary(
        &args,
        serde_json::json!({ "test_accuracy": test.accuracy(), "test_loss": test.loss, "thresholds": thresholds_summary }),
    )?;
    println!("test accuracy: {:.1}%", 100.0 * test.accuracy());
    Ok(())
}
