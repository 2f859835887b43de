//! The main job: a recurrent network of adaptive spiking neurons (ALIF) learns, online with
//! e-prop, to recognise spoken digits (English and German, 20 classes) from cochlea spikes.
//!
//! The default data is the bundled set `examples/data/spoken_digits.bin`: espeak-ng voices,
//! encoded by the cochlea model of `plasticity_examples::audio`, with test speakers whose
//! voices never appear in training (`make_spoken_digits` regenerates it). Spikes are binned
//! into 10 ms steps and neighbouring channels pooled. After each epoch the test accuracy is
//! printed and a checkpoint written; at the end a confusion matrix, plots of the training
//! curves, spike rasters and membrane potentials (`membrane.png`, recorded with probes).
//!
//! cargo run --release --example spoken_digits
//!
//! Real SHD or SSC files (HDF5, one per split) need the `hdf5` feature and the system HDF5
//! library:
//!
//! cargo run --release --features hdf5 --example spoken_digits -- --data shd_train.h5 --test-data shd_test.h5

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{Array3, Axis};
use plasticity_examples::job::{self, Job};
use plasticity_examples::resume::{Progress, Resume, Rng, stop_at};
use plasticity_examples::run_log::RunLog;
use plasticity_examples::spike_data::{SpikeSample, bin, load_splits};
use plasticity_examples::{flags, plots};
use plasticity_runtime::models::BellecAlif;
use plasticity_runtime::{
    Algorithm, Feedback, Init, LayerSpec, Loss, NetworkBuilder, Optimizer, ReadoutSpec, Schedule, Targets, TrainConfig,
    Trainer, Window,
};
use rand::RngExt;
use rand::seq::SliceRandom;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Algo {
    Eprop,
    Bptt,
}

/// Trains an ALIF network on spoken digits.
#[derive(Parser, Debug, Serialize)]
struct Args {
    /// Spike data: the bundled compact file, or an SHD/SSC training file (`.h5`, feature
    /// `hdf5`).
    #[arg(long, default_value = "examples/data/spoken_digits.bin")]
    data: PathBuf,
    /// Test split for an `.h5` training file (default: its name with `train` replaced by
    /// `test`).
    #[arg(long)]
    test_data: Option<PathBuf>,
    /// Input channels of `.h5` files (SHD and SSC have 700).
    #[arg(long, default_value_t = 700)]
    channels: usize,
    /// Training algorithm.
    #[arg(long, value_enum, default_value = "eprop")]
    algorithm: Algo,
    /// Epochs.
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    /// Hidden ALIF neurons.
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    /// Batch size.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Time steps (10 ms each by default).
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Seconds of each utterance to use.
    #[arg(long, default_value_t = 1.0)]
    duration: f64,
    /// Channels pooled into one input (default: about 70 inputs whatever the file's channel
    /// count, `max(1, round(channels / 70))`: 10 for the bundled set, SHD and SSC).
    #[arg(long)]
    pool: Option<usize>,
    /// Learning rate (Adam).
    #[arg(long, default_value_t = 5e-3)]
    lr: f64,
    /// Decoupled weight decay (AdamW); 0 is plain Adam.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Steps at the end of each sample that the loss and the prediction cover.
    #[arg(long, default_value_t = 80)]
    loss_steps: usize,
    /// Time constant of the leaky readout, ms.
    #[arg(long, default_value_t = 50.0)]
    readout_tau: f64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Folder for checkpoints and the summary.
    #[arg(long, default_value = "out/spoken_digits")]
    output: PathBuf,
    /// Use at most this many training and test samples (quick checks).
    #[arg(long)]
    limit: Option<usize>,
    /// Largest random time shift of a training sample, in steps (0 disables).
    #[arg(long, default_value_t = 5)]
    shift_steps: usize,
    /// Largest random shift of a training sample across input channels, i.e. along the
    /// frequency axis (0 disables).
    #[arg(long, default_value_t = 2)]
    shift_channels: usize,
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

/// The default pooling: about 70 inputs whatever the file's channel count.
fn default_pool(channels: usize) -> usize {
    ((channels as f64 / 70.0).round() as usize).max(1)
}

impl Args {
    /// Checks every numeric flag before any work starts, naming the flag.
    fn validate(&self) -> Result<()> {
        flags::count("--channels", self.channels, 1..=100_000)?;
        flags::count("--epochs", self.epochs, 1..=100_000)?;
        flags::count("--hidden", self.hidden, 1..=65_536)?;
        flags::count("--batch", self.batch, 1..=65_536)?;
        flags::count("--steps", self.steps, 1..=1_000_000)?;
        flags::count("--loss-steps", self.loss_steps, 1..=self.steps)?;
        flags::count("--shift-steps", self.shift_steps, 0..=self.steps)?;
        flags::count("--shift-channels", self.shift_channels, 0..=100_000)?;
        flags::optional("--pool", self.pool, 1..=100_000)?;
        flags::optional("--limit", self.limit, 1..=usize::MAX)?;
        flags::optional("--stop-after", self.stop_after, 1..=100_000)?;
        flags::count("--shards", self.shards, 1..=65_536)?;
        flags::positive("--duration", self.duration, 3600.0)?;
        flags::positive("--lr", self.lr, 10.0)?;
        flags::positive("--readout-tau", self.readout_tau, 1e9)?;
        flags::non_negative("--weight-decay", self.weight_decay, 10.0)?;
        // The per-step decays must stay below 1: a step far shorter than the time constants
        // would freeze the neurons and the readout.
        let dt = self.duration / self.steps as f64;
        if dt < 1e-6 {
            bail!(
                "--duration {} over --steps {}: steps of {dt:e} s, expected at least 1 µs",
                self.duration,
                self.steps
            );
        }
        if dt / (self.readout_tau * 1e-3) < 1e-9 {
            bail!(
                "--readout-tau {}: the readout would not decay in steps of {dt:e} s; expected at most {:e} ms",
                self.readout_tau,
                dt * 1e12
            );
        }
        Ok(())
    }

    /// Refuses a run whose training state and binned data cannot fit in memory.
    fn check_memory(&self, inputs: usize, samples: usize) -> Result<()> {
        let eprop = self.algorithm == Algo::Eprop;
        let training = flags::training_bytes(eprop, self.hidden, inputs, self.batch, self.steps);
        let data = 4.0 * (samples * self.steps * inputs) as f64;
        flags::memory(
            training + data,
            &format!(
                "training with --hidden {} --batch {} --steps {} on {inputs} inputs",
                self.hidden, self.batch, self.steps
            ),
        )
    }
}

/// Random time and frequency shifts of each sample in a batch `[T, B, C]`, zero-filled:
/// a speaker's pitch and timing change without changing the word.
fn augment(x: &Array3<f32>, max_t: usize, max_c: usize, rng: &mut Rng) -> Array3<f32> {
    let (t_len, batch, c_len) = x.dim();
    let mut out = Array3::zeros(x.raw_dim());
    for b in 0..batch {
        let dt = rng.random_range(-(max_t as i64)..=max_t as i64) as isize;
        let dc = rng.random_range(-(max_c as i64)..=max_c as i64) as isize;
        for t in 0..t_len {
            let src_t = t as isize - dt;
            if !(0..t_len as isize).contains(&src_t) {
                continue;
            }
            for c in 0..c_len {
                let src_c = c as isize - dc;
                if (0..c_len as isize).contains(&src_c) {
                    out[[t, b, c]] = x[[src_t as usize, b, src_c as usize]];
                }
            }
        }
    }
    out
}

fn main() -> ExitCode {
    job::run(train)
}

fn train(job: &Job) -> Result<()> {
    let args = Args::parse();
    args.validate()?;
    let data = job.agree(load_splits(&args.data, args.test_data.as_deref(), args.channels))?;
    let mut train: Vec<&SpikeSample> = data.samples.iter().filter(|s| !s.test).collect();
    let mut test: Vec<&SpikeSample> = data.samples.iter().filter(|s| s.test).collect();
    if let Some(n) = args.limit {
        train.truncate(n);
        test.truncate(n);
    }
    if train.is_empty() || test.is_empty() {
        bail!("{}: needs training and test samples", args.data.display());
    }
    // 20 classes for SHD and the bundled set, 35 for SSC.
    let classes = data.samples.iter().map(|s| usize::from(s.label) + 1).max().unwrap_or(0);
    let pool = args.pool.unwrap_or_else(|| default_pool(data.channels));
    args.check_memory(data.channels.div_ceil(pool), train.len() + test.len())?;
    if args.pool.is_none() {
        println!(
            "pooling {pool} of {} channels into each input (set with --pool)",
            data.channels
        );
    }
    let train_x = bin(&train, data.channels, args.steps, args.duration, pool);
    let test_x = bin(&test, data.channels, args.steps, args.duration, pool);
    let train_y: Vec<usize> = train.iter().map(|s| usize::from(s.label)).collect();
    let test_y: Vec<usize> = test.iter().map(|s| usize::from(s.label)).collect();
    let n_in = train_x.shape()[2];
    let dt = args.duration / args.steps as f64;
    println!(
        "spoken digits: {} training and {} test utterances ({} held-out speakers), {} inputs, {} steps of {:.0} ms",
        train.len(),
        test.len(),
        test.iter()
            .map(|s| s.speaker)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        n_in,
        args.steps,
        dt * 1e3
    );
    // τ_m = 20 ms, τ_a = 500 ms.
    let model = BellecAlif {
        alpha: (-dt / 0.02).exp(),
        rho: (-dt / 0.5).exp(),
        beta: 1.0,
        ..BellecAlif::default()
    };
    let net = NetworkBuilder::<f32>::new(n_in)
        .layer(
            LayerSpec::new(model, args.hidden)
                .recurrent(true)
                .init_in(Init::Gaussian { gain: 1.0 })
                .init_rec(Init::Gaussian { gain: 0.5 }),
        )
        .readout(ReadoutSpec::new(classes, (-dt / (args.readout_tau * 1e-3)).exp()))
        .seed(args.seed)
        .build()?;
    let algorithm = match args.algorithm {
        Algo::Eprop => Algorithm::Eprop(Feedback::Symmetric),
        Algo::Bptt => Algorithm::Bptt,
    };
    let batches_per_epoch = train.len().div_ceil(args.batch);
    let optimizer = if args.weight_decay > 0.0 {
        Optimizer::adamw(args.lr, args.weight_decay)
    } else {
        Optimizer::adam(args.lr)
    };
    let mut config = TrainConfig::new(algorithm, Loss::CrossEntropy(Window::Last(args.loss_steps)), optimizer);
    let total = args.epochs * batches_per_epoch;
    config.schedule = Schedule::Cosine {
        warmup: (total / 20).min(50),
        total,
        min_factor: 0.05,
    };
    config.clip_norm = Some(1.0);
    config.shards = args.shards;
    let mut trainer = Trainer::with_collective(net, config, job.comm())?;
    std::fs::create_dir_all(&args.output)?;
    let mut log = RunLog::new(&args.output, "spoken_digits", &[]);
    let resume = Resume::new(&args.output, &args, &["epochs", "stop_after"])?;
    let fresh = Progress::new(args.seed, train.len());
    let mut progress = resume.start(&mut trainer, args.resume, fresh, &mut log, |d| d)?;
    if args.resume {
        if progress.order.len() != train.len() {
            bail!(
                "--resume: the checkpoint orders {} training samples, the data has {}",
                progress.order.len(),
                train.len()
            );
        }
        println!("resuming after epoch {} of {}", progress.done, args.epochs);
    }
    let start = std::time::Instant::now();
    let end = stop_at(progress.done, args.epochs, args.stop_after, 1);
    while progress.done < end {
        let epoch = progress.done;
        progress.order.shuffle(&mut progress.rng);
        let bar = ProgressBar::new(batches_per_epoch as u64);
        bar.set_style(ProgressStyle::with_template(&format!(
            "epoch {:>2}/{} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}}] {{msg}}",
            epoch + 1,
            args.epochs
        ))?);
        let (mut loss, mut correct, mut seen) = (0.0, 0, 0);
        for chunk in progress.order.chunks(args.batch) {
            let x = augment(
                &train_x.select(Axis(1), chunk),
                args.shift_steps,
                args.shift_channels,
                &mut progress.rng,
            );
            let y: Vec<usize> = chunk.iter().map(|&i| train_y[i]).collect();
            let s = trainer.train_batch(x.view(), Targets::Classes(&y))?;
            loss += s.loss * chunk.len() as f64;
            correct += s.correct;
            seen += chunk.len();
            bar.set_message(format!(
                "loss {:.3} accuracy {:.1}%",
                loss / seen as f64,
                100.0 * correct as f64 / seen as f64
            ));
            bar.inc(1);
        }
        bar.finish();
        let (test_acc, _) = evaluate(&mut trainer, &test_x, &test_y, classes, args.loss_steps)?;
        let test_loss = test_loss(&mut trainer, &test_x, &test_y)?;
        // The row first: a run killed between the two writes resumes from the previous
        // checkpoint, and the row of the epoch it repeats is dropped.
        log.epoch(
            epoch + 1,
            (loss / seen as f64, Some(correct as f64 / seen as f64)),
            (Some(test_loss), Some(test_acc)),
            &[],
        )?;
        progress.done += 1;
        resume.save(&trainer, &progress)?;
        println!(
            "epoch {:>2}: train loss {:.3}, train accuracy {:.1}%, test accuracy {:.1}%, {:.0} s",
            epoch + 1,
            loss / seen as f64,
            100.0 * correct as f64 / seen as f64,
            100.0 * test_acc,
            start.elapsed().as_secs_f64()
        );
    }
    let percent = |v: Vec<(f64, f64)>| v.into_iter().map(|(e, a)| (e, 100.0 * a)).collect::<Vec<_>>();
    let (loss_curve, train_curve, test_curve) = (
        log.series("train_loss"),
        percent(log.series("train_accuracy")),
        percent(log.series("test_accuracy")),
    );
    plots::line_chart(
        &args.output.join("loss.png"),
        "training loss",
        "epoch",
        &[("loss", loss_curve)],
    )?;
    plots::line_chart(
        &args.output.join("accuracy.png"),
        "accuracy (%)",
        "epoch",
        &[("train", train_curve), ("test (held-out speakers)", test_curve)],
    )?;
    // Input and hidden spikes of the first test utterance.
    let first = test_x.select(Axis(1), &[0]);
    let run = trainer.network().run(first.view())?;
    let hidden: Vec<(f64, usize)> = run.spikes[0]
        .indexed_iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|((t, _, j), _)| (t as f64 * dt, j))
        .collect();
    plots::raster(
        &args.output.join("raster_hidden.png"),
        "hidden spikes, first test utterance",
        &hidden,
        args.hidden,
        args.duration,
    )?;
    plots::membrane(
        &args.output.join("membrane.png"),
        trainer.network(),
        first.view(),
        &[("layer0", &[0, 1, 2])],
        dt,
    )?;
    let input: Vec<(f64, usize)> = test[0]
        .spikes
        .iter()
        .map(|s| (f64::from(s.time), usize::from(s.unit)))
        .collect();
    plots::raster(
        &args.output.join("raster_input.png"),
        "cochlea spikes, first test utterance",
        &input,
        data.channels,
        args.duration,
    )?;
    let (train_acc, _) = evaluate(&mut trainer, &train_x, &train_y, classes, args.loss_steps)?;
    let (test_acc, confusion) = evaluate(&mut trainer, &test_x, &test_y, classes, args.loss_steps)?;
    println!(
        "confusion matrix (rows: true class, columns: predicted; SHD and the bundled set: 0-9 English, 10-19 German):"
    );
    for (c, row) in confusion.iter().enumerate() {
        println!("{c:>3} {}", row.iter().map(|v| format!("{v:>3}")).collect::<String>());
    }
    log.summary(
        &args,
        serde_json::json!({
            "train_accuracy": train_acc,
            "test_accuracy": test_acc,
            "confusion": confusion,
            "inputs": n_in,
            "steps": args.steps,
        }),
    )?;
    println!("train accuracy: {:.1}%", 100.0 * train_acc);
    println!("test accuracy: {:.1}%", 100.0 * test_acc);
    Ok(())
}

/// The training loss (cross-entropy over the loss window) on a whole set.
fn test_loss(trainer: &mut Trainer<f32>, x: &Array3<f32>, y: &[usize]) -> Result<f64> {
    let mut total = 0.0;
    for start in (0..y.len()).step_by(128) {
        let idx: Vec<usize> = (start..(start + 128).min(y.len())).collect();
        let labels: Vec<usize> = idx.iter().map(|&i| y[i]).collect();
        let stats = trainer.evaluate(x.select(Axis(1), &idx).view(), Targets::Classes(&labels))?;
        total += stats.loss * idx.len() as f64;
    }
    Ok(total / y.len().max(1) as f64)
}

/// Accuracy (arg-max of the readout summed over the loss window) and confusion matrix.
fn evaluate(
    trainer: &mut Trainer<f32>,
    x: &Array3<f32>,
    y: &[usize],
    classes: usize,
    window: usize,
) -> Result<(f64, Vec<Vec<usize>>)> {
    let mut confusion = vec![vec![0usize; classes]; classes];
    let steps = x.shape()[0];
    for start in (0..y.len()).step_by(128) {
        let idx: Vec<usize> = (start..(start + 128).min(y.len())).collect();
        let xb = x.select(Axis(1), &idx);
        let out = trainer.network().run(xb.view())?;
        let summed = out
            .readout
            .slice(ndarray::s![steps - window.min(steps).., .., ..])
            .sum_axis(Axis(0));
        for (k, &i) in idx.iter().enumerate() {
            let row = summed.row(k);
            let pred = (0..classes).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap_or(0);
            confusion[y[i]][pred] += 1;
        }
    }
    let correct: usize = (0..classes).map(|c| confusion[c][c]).sum();
    Ok((correct as f64 / y.len().max(1) as f64, confusion))
}
