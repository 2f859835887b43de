//! Bellec et al. (2020)'s pattern-generation task: a recurrent spiking network learns,
//! online with e-prop, to output a sum of sinusoids from a frozen random input pattern.
//!
//! The input is fixed Poisson noise on 100 channels. Each of three outputs must follow its
//! own sum of four sinusoids (1, 2, 3 and 5 Hz, random amplitudes and phases) over one
//! second of 1 ms steps. The loss is the mean squared error at every step, and the result is
//! reported as normalised MSE: MSE divided by the variance of the target. The run writes
//! `membrane.png` (membrane potentials of a few neurons over the sequence) to `--output`.
//!
//! `--output-population` replaces the built-in leaky readout with a population written in the
//! neuron language: linear leaky integrators whose time constants are learned per output.
//!
//! cargo run --release --example pattern_generation

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{Array3, Axis};
use plasticity_examples::flags;
use plasticity_examples::job::{self, Job};
use plasticity_examples::plots;
use plasticity_examples::resume::{Progress, Resume, Rng, stop_at};
use plasticity_examples::run_log::RunLog;
use plasticity_runtime::models::BellecLif;
use plasticity_runtime::{
    Algorithm, Feedback, Init, LayerSpec, Loss, NetworkBuilder, Optimizer, PopulationSpec, ProjectionSpec, ReadoutSpec,
    Targets, TrainConfig, Trainer, Window, neuron_model,
};
use rand::{RngExt, SeedableRng};
use serde::Serialize;

#[neuron_model]
mod leaky_output {
    /// A linear leaky integrator read out as the network's output, `y' = κ y + (1 − κ) I`,
    /// its time constant learned per output neuron (κ kept in [0, 0.999]).
    pub struct LeakyOutput {
        /// Leak per step (learnable).
        #[param(default = 0.967, learnable, range = 0.0..=0.999)]
        pub kappa: f64,
        #[state(init = 0.0)]
        y: f64,
        /// The weighted spikes of the recurrent population.
        #[input]
        i: f64,
    }

    fn step() {
        let y = kappa * y + (1.0 - kappa) * i;
        Next { y, out: y }
    }
}

use leaky_output::LeakyOutput;

/// Trains LIF neurons with e-prop to generate a pattern.
#[derive(Parser, Debug, Serialize)]
struct Args {
    /// Training iterations (one sequence each).
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Hidden LIF neurons.
    #[arg(long, default_value_t = 200)]
    hidden: usize,
    /// Steps (1 ms each).
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Learning rate (Adam).
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Train with exact BPTT instead of e-prop, for comparison.
    #[arg(long)]
    bptt: bool,
    /// Read out through a population of learnable leaky integrators (a model defined here)
    /// instead of the built-in leaky readout.
    #[arg(long)]
    output_population: bool,
    /// Output folder (`last.safetensors`, `metrics.csv`, `summary.json`, `membrane.png`).
    #[arg(long, default_value = "out/pattern_generation")]
    output: PathBuf,
    /// Continue from `OUTPUT/last.safetensors` up to `--iterations` in total (the other
    /// flags must be those of the interrupted run).
    #[arg(long)]
    resume: bool,
    /// Stop after this many iterations of this invocation, leaving the checkpoint to
    /// continue from with `--resume` (for time-limited jobs).
    #[arg(long)]
    stop_after: Option<usize>,
    /// Shards of each batch, computed in parallel and spread over the MPI ranks. Their
    /// gradients are summed in one fixed order, so a run gives bit-identical results on 1, 2,
    /// 4 or 8 processes (at most this many ranks have work).
    #[arg(long, default_value_t = 8)]
    shards: usize,
}

const N_IN: usize = 100;
const N_OUT: usize = 3;

fn main() -> ExitCode {
    job::run(train)
}

fn train(job: &Job) -> Result<()> {
    let args = Args::parse();
    flags::count("--iterations", args.iterations, 1..=10_000_000)?;
    flags::count("--hidden", args.hidden, 1..=65_536)?;
    flags::count("--steps", args.steps, 1..=1_000_000)?;
    flags::optional("--stop-after", args.stop_after, 1..=10_000_000)?;
    flags::count("--shards", args.shards, 1..=65_536)?;
    flags::positive("--lr", args.lr, 10.0)?;
    flags::memory(
        flags::training_bytes(!args.bptt, args.hidden, N_IN, 1, args.steps),
        &format!("training with --hidden {} --steps {}", args.hidden, args.steps),
    )?;
    let mut rng = Rng::seed_from_u64(args.seed);
    // Frozen input: 100 channels of 10 Hz Poisson noise at 1 ms steps.
    let x = Array3::from_shape_fn(
        (args.steps, 1, N_IN),
        |_| if rng.random_bool(0.01) { 1.0f32 } else { 0.0 },
    );
    let mut target = Array3::<f32>::zeros((args.steps, 1, N_OUT));
    for o in 0..N_OUT {
        let parts: Vec<(f64, f64, f64)> = [1.0, 2.0, 3.0, 5.0]
            .iter()
            .map(|&f| {
                (
                    f,
                    rng.random_range(0.5..2.0),
                    rng.random_range(0.0..std::f64::consts::TAU),
                )
            })
            .collect();
        for t in 0..args.steps {
            let s = t as f64 / 1000.0;
            let v: f64 = parts
                .iter()
                .map(|(f, a, p)| a * (2.0 * std::f64::consts::PI * f * s + p).sin())
                .sum();
            target[[t, 0, o]] = v as f32;
        }
    }
    let model = BellecLif {
        alpha: (-1.0f64 / 20.0).exp(),
        v_th: 0.6,
        gamma: 0.3,
        n_ref: 2.0,
    };
    let kappa = (-1.0f64 / 30.0).exp();
    let builder = NetworkBuilder::<f32>::new(N_IN).layer(
        LayerSpec::new(model, args.hidden)
            .recurrent(true)
            .init_in(Init::Gaussian { gain: 6.0 })
            .init_rec(Init::Gaussian { gain: 1.0 }),
    );
    let builder = if args.output_population {
        // The integrator's input gain is 1 − κ: larger weights give the readout's scale.
        builder
            .population(PopulationSpec::new("out", LeakyOutput { kappa }, N_OUT).bias(true))
            .projection(ProjectionSpec::new("layer0", "out").init(Init::Gaussian {
                gain: 1.0 / (1.0 - kappa),
            }))
            .readout(ReadoutSpec::population("out"))
    } else {
        builder.readout(ReadoutSpec::new(N_OUT, kappa))
    };
    let net = builder.seed(args.seed).build()?;
    let algorithm = if args.bptt {
        Algorithm::Bptt
    } else {
        Algorithm::Eprop(Feedback::Symmetric)
    };
    let config = TrainConfig::new(algorithm, Loss::MeanSquared(Window::All), Optimizer::adam(args.lr));
    let config = TrainConfig {
        shards: args.shards,
        ..config
    };
    let mut trainer = Trainer::with_collective(net, config, job.comm())?;
    println!(
        "pattern generation: {} LIF neurons, {} steps, {N_OUT} outputs, {}, {} iterations",
        args.hidden,
        args.steps,
        if args.bptt { "BPTT" } else { "e-prop" },
        args.iterations
    );
    let variance = {
        let mean = target.mean_axis(Axis(0)).expect("steps");
        let d = &target - &mean;
        (&d * &d).mean().unwrap_or(1.0) as f64
    };
    std::fs::create_dir_all(&args.output)?;
    // One epoch is one iteration over the frozen sequence; the task's metric is the
    // normalised MSE (no accuracy, no held-out set).
    let mut log = RunLog::new(&args.output, "pattern_generation", &["normalised_mse"]);
    let resume = Resume::new(&args.output, &args, &["iterations", "stop_after"])?;
    // The data comes from the seed alone: only the iterations done need restoring.
    let mut progress = resume.start(&mut trainer, args.resume, Progress::new(args.seed, 0), &mut log, |d| d)?;
    if args.resume {
        println!("resuming after iteration {} of {}", progress.done, args.iterations);
    }
    let bar = ProgressBar::new(args.iterations as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} [{elapsed_precise}] {msg}",
    )?);
    bar.set_position(progress.done.min(args.iterations) as u64);
    let end = stop_at(progress.done, args.iterations, args.stop_after, 1);
    while progress.done < end {
        let s = trainer.train_batch(x.view(), Targets::Series(target.view()))?;
        // The loss is ½ MSE summed over outputs, averaged over steps.
        let nmse = 2.0 * s.loss / N_OUT as f64 / variance;
        if progress.done.is_multiple_of(10) {
            bar.set_message(format!("normalised MSE {nmse:.3}"));
        }
        progress.done += 1;
        log.epoch(progress.done, (s.loss, None), (None, None), &[nmse])?;
        resume.save(&trainer, &progress)?;
        bar.inc(1);
    }
    bar.finish();
    let out = trainer.network().run(x.view())?;
    let rate = out.spikes[0].mean().unwrap_or(0.0) * 1000.0;
    println!("mean firing rate: {rate:.1} Hz");
    let err = &out.readout - &target;
    let mse = (&err * &err).mean().unwrap_or(f32::NAN) as f64;
    let shown = [("layer0", &[0usize, 1, 2][..])];
    plots::membrane(
        &args.output.join("membrane.png"),
        trainer.network(),
        x.view(),
        &shown,
        0.001,
    )?;
    if args.output_population {
        let kappas = &trainer.network().params.learnable[1];
        let taus: Vec<String> = kappas
            .iter()
            .map(|&k| format!("{:.1}", -1.0 / f64::from(k).ln()))
            .collect();
        println!("learned output time constants (steps): {}", taus.join(", "));
    }
    log.summary(
        &args,
        serde_json::json!({ "normalised_mse": mse / variance, "mean_rate_hz": rate }),
    )?;
    println!("normalised MSE: {:.3}", mse / variance);
    Ok(())
}
