//! Bellec et al. (2020)'s evidence-accumulation task, trained online with e-prop.
//!
//! A sequence shows seven cues, each on the left or the right input population. After a
//! delay the recall population fires, and the network must answer which side had more
//! cues. Background channels fire throughout. Answering needs memory across the delay, which
//! the slow threshold adaptation of ALIF neurons provides. The loss is cross-entropy over the
//! recall window only.
//!
//! The network is Bellec's LSNN: one recurrent network of LIF and ALIF neurons, half of each
//! (`--network lsnn`, the default), built as two populations whose four recurrent blocks
//! together form one recurrent weight matrix; `--network alif` uses ALIF neurons only. The
//! run writes `membrane.png` (membrane potentials of a few neurons of each population over the
//! first test sample) to `--output`.
//!
//! Time is compressed to 10 ms steps: a cue lasts 10 steps and is followed by 5 quiet steps,
//! the delay is 50 steps and the recall 10 steps (165 steps in all).
//!
//! cargo run --release --example evidence_accumulation

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::Array3;
use plasticity_examples::flags;
use plasticity_examples::job::{self, Job};
use plasticity_examples::plots;
use plasticity_examples::resume::{Progress, Resume, Rng, stop_at};
use plasticity_examples::run_log::RunLog;
use plasticity_runtime::models::{BellecAlif, BellecLif};
use plasticity_runtime::{
    Algorithm, Feedback, Init, Loss, NetworkBuilder, Optimizer, PopulationSpec, ProjectionSpec, RateRegularization,
    ReadoutSpec, Schedule, Targets, TrainConfig, Trainer, Window,
};
use rand::{RngExt, SeedableRng};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    /// Half LIF, half ALIF neurons in one recurrent network (Bellec's LSNN).
    Lsnn,
    /// ALIF neurons only.
    Alif,
}

/// Trains a recurrent spiking network with e-prop on the cue-accumulation task.
#[derive(Parser, Debug, Serialize)]
struct Args {
    /// The recurrent network.
    #[arg(long, value_enum, default_value = "lsnn")]
    network: Kind,
    /// Training batches.
    #[arg(long, default_value_t = 600)]
    batches: usize,
    /// Batch size.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Recurrent neurons in all (LSNN: the first half LIF, the second half ALIF).
    #[arg(long, default_value_t = 100)]
    hidden: usize,
    /// Number of cues.
    #[arg(long, default_value_t = 7)]
    cues: usize,
    /// Learning rate (Adam).
    #[arg(long, default_value_t = 5e-3)]
    lr: f64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Test sequences.
    #[arg(long, default_value_t = 512)]
    test: usize,
    /// Output folder (`last.safetensors`, `metrics.csv`, `summary.json`, `membrane.png`).
    #[arg(long, default_value = "out/evidence_accumulation")]
    output: PathBuf,
    /// Continue from `OUTPUT/last.safetensors` up to `--batches` in total (the other flags
    /// must be those of the interrupted run).
    #[arg(long)]
    resume: bool,
    /// Stop after this many epochs (of 50 batches) of this invocation, leaving the checkpoint
    /// to continue from with `--resume` (for time-limited jobs).
    #[arg(long)]
    stop_after: Option<usize>,
    /// Shards of each batch, computed in parallel and spread over the MPI ranks. Their
    /// gradients are summed in one fixed order, so a run gives bit-identical results on 1, 2,
    /// 4 or 8 processes (at most this many ranks have work).
    #[arg(long, default_value_t = 8)]
    shards: usize,
}

const GROUP: usize = 10;
const N_IN: usize = 4 * GROUP; // left, right, recall, background
const CUE: usize = 10;
const GAP: usize = 5;
const DELAY: usize = 50;
const RECALL: usize = 10;
/// Batches per epoch in `metrics.csv` (each batch draws fresh sequences).
const EPOCH_BATCHES: usize = 50;

fn steps(cues: usize) -> usize {
    cues * (CUE + GAP) + DELAY + RECALL
}

/// A batch of sequences `[T, B, 40]` and the side (0 left, 1 right) with more cues.
fn batch(rng: &mut Rng, size: usize, cues: usize) -> (Array3<f32>, Vec<usize>) {
    let t_len = steps(cues);
    let mut x = Array3::<f32>::zeros((t_len, size, N_IN));
    let mut labels = Vec::with_capacity(size);
    for b in 0..size {
        let sides: Vec<usize> = (0..cues).map(|_| rng.random_range(0..2)).collect();
        let right = sides.iter().filter(|&&s| s == 1).count();
        labels.push(usize::from(2 * right > cues));
        for t in 0..t_len {
            let cue = t / (CUE + GAP);
            let in_cue = cue < cues && t % (CUE + GAP) < CUE;
            let in_recall = t >= t_len - RECALL;
            for c in 0..N_IN {
                let group = c / GROUP;
                let p = match group {
                    0 | 1 if in_cue && sides[cue] == group => 0.4,
                    2 if in_recall => 0.4,
                    3 => 0.1,
                    _ => 0.0,
                };
                if p > 0.0 && rng.random_bool(p) {
                    x[[t, b, c]] = 1.0;
                }
            }
        }
    }
    (x, labels)
}

fn main() -> ExitCode {
    job::run(train)
}

fn train(job: &Job) -> Result<()> {
    let args = Args::parse();
    let min_hidden = if args.network == Kind::Lsnn { 2 } else { 1 };
    flags::count("--batches", args.batches, 1..=10_000_000)?;
    flags::count("--batch", args.batch, 1..=65_536)?;
    flags::count("--hidden", args.hidden, min_hidden..=65_536)?;
    flags::count("--cues", args.cues, 1..=1_000)?;
    flags::count("--test", args.test, 1..=1_000_000)?;
    flags::optional("--stop-after", args.stop_after, 1..=1_000_000)?;
    flags::count("--shards", args.shards, 1..=65_536)?;
    flags::positive("--lr", args.lr, 10.0)?;
    // LIF neurons' traces factorise, ALIF neurons' do not: counted as ALIF.
    flags::memory(
        flags::training_bytes(true, args.hidden, N_IN, args.batch, steps(args.cues)),
        &format!("e-prop with --hidden {} --batch {}", args.hidden, args.batch),
    )?;
    let t_len = steps(args.cues);
    // τ_m = 20 steps, τ_a = 200 steps (2 s at 10 ms per step).
    let alpha = (-1.0f64 / 20.0).exp();
    let alif = BellecAlif {
        alpha,
        rho: (-1.0f64 / 200.0).exp(),
        beta: 1.8,
        ..Default::default()
    };
    let lif = BellecLif {
        alpha,
        ..Default::default()
    };
    let pops: Vec<(&str, usize)> = match args.network {
        Kind::Lsnn => vec![("lif", args.hidden / 2), ("alif", args.hidden - args.hidden / 2)],
        Kind::Alif => vec![("alif", args.hidden)],
    };
    let mut builder = NetworkBuilder::<f32>::new(N_IN);
    for &(name, size) in &pops {
        builder = match name {
            "lif" => builder.population(PopulationSpec::new(name, lif.clone(), size)),
            _ => builder.population(PopulationSpec::new(name, alif.clone(), size)),
        };
    }
    for &(target, _) in &pops {
        builder = builder.projection(ProjectionSpec::input(target).init(Init::Gaussian { gain: 1.0 }));
        // The blocks of one recurrent matrix: each block's fan-in is its source's size, so
        // the gain is scaled to give every weight the variance of a 0.5 gain over all neurons.
        // All carry the previous step's spikes, the LIF → ALIF block included.
        for &(source, size) in &pops {
            let gain = 0.5 * (size as f64 / args.hidden as f64).sqrt();
            builder = builder.projection(
                ProjectionSpec::new(source, target)
                    .init(Init::Gaussian { gain })
                    .delayed(true),
            );
        }
    }
    let names: Vec<&str> = pops.iter().map(|p| p.0).collect();
    let net = builder
        .readout(ReadoutSpec::new(2, 0.0).from(&names))
        .seed(args.seed)
        .build()?;
    let mut config = TrainConfig::new(
        Algorithm::Eprop(Feedback::Symmetric),
        Loss::CrossEntropy(Window::Last(RECALL)),
        Optimizer::adam(args.lr),
    );
    config.schedule = Schedule::Cosine {
        warmup: 20.min(args.batches / 10),
        total: args.batches,
        min_factor: 0.1,
    };
    config.rate_regularization = Some(RateRegularization::running(1.0, 0.01));
    config.clip_norm = Some(1.0);
    let config = TrainConfig {
        shards: args.shards,
        ..config
    };
    let mut trainer = Trainer::with_collective(net, config, job.comm())?;
    let described: Vec<String> = pops
        .iter()
        .map(|(name, size)| format!("{size} {}", name.to_uppercase()))
        .collect();
    println!(
        "evidence accumulation: {} cues, {t_len} steps, {} neurons, e-prop, {} batches of {}",
        args.cues,
        described.join(" + "),
        args.batches,
        args.batch
    );
    std::fs::create_dir_all(&args.output)?;
    let mut log = RunLog::new(&args.output, "evidence_accumulation", &[]);
    let resume = Resume::new(&args.output, &args, &["batches", "stop_after", "test"])?;
    // `done` counts batches here; `carry` holds the running loss and accuracy.
    let fresh = Progress {
        carry: vec![0.0, 0.0],
        ..Progress::new(args.seed, 0)
    };
    let mut progress = resume.start(&mut trainer, args.resume, fresh, &mut log, |d| {
        d.div_ceil(EPOCH_BATCHES)
    })?;
    if args.resume {
        println!("resuming after batch {} of {}", progress.done, args.batches);
    }
    let bar = ProgressBar::new(args.batches as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} [{elapsed_precise}] {msg}",
    )?);
    bar.set_position(progress.done.min(args.batches) as u64);
    // The held-out sequences, the same at every evaluation: loss and accuracy.
    let test = |trainer: &mut Trainer<f32>| -> Result<(f64, f64)> {
        let mut test_rng = Rng::seed_from_u64(args.seed.wrapping_add(10_000));
        let (mut loss, mut correct, mut total) = (0.0, 0, 0);
        for _ in 0..args.test.div_ceil(64) {
            let (x, y) = batch(&mut test_rng, 64, args.cues);
            let s = trainer.evaluate(x.view(), Targets::Classes(&y))?;
            loss += s.loss * y.len() as f64;
            correct += s.correct;
            total += s.predictions;
        }
        Ok((loss / total.max(1) as f64, correct as f64 / total.max(1) as f64))
    };
    let (mut epoch_loss, mut epoch_acc, mut in_epoch) = (0.0, 0.0, 0);
    let end = stop_at(progress.done, args.batches, args.stop_after, EPOCH_BATCHES);
    while progress.done < end {
        let (x, y) = batch(&mut progress.rng, args.batch, args.cues);
        let s = trainer.train_batch(x.view(), Targets::Classes(&y))?;
        let [loss, acc] = &mut progress.carry[..] else {
            unreachable!("two running averages")
        };
        *loss = 0.95 * *loss + 0.05 * s.loss;
        *acc = 0.95 * *acc + 0.05 * s.accuracy();
        (epoch_loss, epoch_acc, in_epoch) = (epoch_loss + s.loss, epoch_acc + s.accuracy(), in_epoch + 1);
        if progress.done.is_multiple_of(10) {
            bar.set_message(format!("loss {:.3}  accuracy {:.1}%", *loss, 100.0 * *acc));
        }
        progress.done += 1;
        // An epoch here is EPOCH_BATCHES batches (fresh sequences every batch).
        if progress.done.is_multiple_of(EPOCH_BATCHES) || progress.done == args.batches {
            let n = in_epoch as f64;
            let (test_loss, test_acc) = test(&mut trainer)?;
            log.epoch(
                progress.done.div_ceil(EPOCH_BATCHES),
                (epoch_loss / n, Some(epoch_acc / n)),
                (Some(test_loss), Some(test_acc)),
                &[],
            )?;
            resume.save(&trainer, &progress)?;
            (epoch_loss, epoch_acc, in_epoch) = (0.0, 0.0, 0);
        }
        bar.inc(1);
    }
    bar.finish();
    let loss = progress.carry[0];
    let mut test_rng = Rng::seed_from_u64(args.seed.wrapping_add(10_000));
    let (mut correct, mut total) = (0, 0);
    for i in 0..args.test.div_ceil(64) {
        let (x, y) = batch(&mut test_rng, 64, args.cues);
        if i == 0 {
            let first = x.slice(ndarray::s![.., 0..1, ..]);
            let shown: Vec<(&str, &[usize])> = names.iter().map(|&n| (n, &[0usize, 1, 2][..])).collect();
            let path = args.output.join("membrane.png");
            plots::membrane(&path, trainer.network(), first, &shown, 0.01)?;
        }
        let s = trainer.evaluate(x.view(), Targets::Classes(&y))?;
        correct += s.correct;
        total += s.predictions;
    }
    println!("trained {} batches; final training loss {loss:.4}", trainer.updates());
    let accuracy = correct as f64 / total.max(1) as f64;
    log.summary(
        &args,
        serde_json::json!({ "test_accuracy": accuracy, "final_training_loss": loss, "steps": t_len }),
    )?;
    println!("test accuracy: {:.1}%", 100.0 * accuracy);
    Ok(())
}
