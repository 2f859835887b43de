//! Time and memory of e-prop and BPTT training as the network and the sequence grow.
//!
//! One layer of Bellec neurons (reset detached, as in Bellec's code) with a leaky readout to
//! 20 classes and per-step cross-entropy, on random binary inputs (probability 0.1 per
//! channel and step). `--model paper-lif|paper-alif|sigma-delta` times the models of Lohoff
//! et al. (2025) instead, with their own surrogate σ(10x) and, like their code, AdamW with
//! gradient clipping (norm 1) inside the step; the readout is ours at κ = 0 (non-leaky, like
//! theirs) with a bias. For e-prop the inputs are generated step by step and streamed, never
//! stored. Each iteration is one training step: forward over T steps, gradients, one Adam
//! update. `--connectivity P` makes the projections sparse. The last line printed is one JSON
//! object.
//!
//! cargo run --release --example scaling -- --model alif --algorithm eprop --hidden 1024 --inputs 700 --batch 16 --steps 100
//! cargo run --release --example scaling -- --sweep out/scaling.csv
//!
//! Built with `--features mpi` it also runs as a data-parallel job, `mpirun -n 2
//! target/release/examples/scaling ...`, and reports the bytes rank 0 exchanged per update.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use ndarray::{Array1, Array2, Array3};
use plasticity_examples::job::{self, Job};
use plasticity_examples::{flags, plots, write_atomic};
use plasticity_runtime::models::{BellecAlif, BellecLif, PaperAlif, PaperLif, SigmaDelta};
use plasticity_runtime::{
    Algorithm, Chunking, Collective, Connectivity, Feedback, LayerSpec, Loss, NetworkBuilder, NeuronModel, Optimizer,
    PopulationSpec, ProjectionSpec, ReadoutSpec, StepTargets, Targets, TrainConfig, Trainer, Window,
};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum Model {
    /// Bellec's LIF, reset detached (its traces factorise).
    Lif,
    /// Bellec's ALIF, reset detached.
    Alif,
    /// The LIF of Lohoff et al. (2025), reset differentiated, surrogate σ(10x).
    PaperLif,
    /// The ALIF (adaptation current) of Lohoff et al. (2025).
    PaperAlif,
    /// The Sigma-Delta neuron of Lohoff et al. (2025).
    SigmaDelta,
}

impl Model {
    /// The name `--model` takes.
    fn name(self) -> &'static str {
        match self {
            Model::Lif => "lif",
            Model::Alif => "alif",
            Model::PaperLif => "paper-lif",
            Model::PaperAlif => "paper-alif",
            Model::SigmaDelta => "sigma-delta",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum Algo {
    Eprop,
    Bptt,
}

/// Measures training time per step and memory.
#[derive(Parser, Debug, Clone)]
struct Args {
    /// Neuron model.
    #[arg(long, value_enum, default_value = "alif")]
    model: Model,
    /// Training algorithm.
    #[arg(long, value_enum, default_value = "eprop")]
    algorithm: Algo,
    /// Hidden neurons.
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    /// Input channels.
    #[arg(long, default_value_t = 140)]
    inputs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Sequence length.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// With recurrent weights.
    #[arg(long)]
    recurrent: bool,
    /// Readout leak κ.
    #[arg(long, default_value_t = 0.0)]
    kappa: f64,
    /// Sparse input (and recurrent) projections: each synapse exists with this probability,
    /// in (0, 1]; only existing synapses are stored, traced and trained.
    #[arg(long)]
    connectivity: Option<f64>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Timed training iterations (after one warm-up).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Skip the memory-bandwidth probe (it allocates 384 MiB).
    #[arg(long)]
    no_triad: bool,
    /// Instead of one measurement, sweep hidden sizes and sequence lengths for both
    /// algorithms and write a CSV here (each point runs in a fresh process).
    #[arg(long)]
    sweep: Option<PathBuf>,
    /// Shards of each batch (default: one per MPI rank; see `TrainConfig::shards`).
    #[arg(long)]
    shards: Option<usize>,
    /// e-prop: steps per chunk of the per-synapse update (default: chosen by the runtime;
    /// 1 is step-by-step e-prop; see `TrainConfig::chunk`).
    #[arg(long)]
    chunk: Option<usize>,
}

const CLASSES: usize = 20;

impl Args {
    /// Checks every numeric flag before any work starts, naming the flag.
    fn validate(&self) -> Result<()> {
        flags::count("--hidden", self.hidden, 1..=65_536)?;
        flags::count("--inputs", self.inputs, 1..=65_536)?;
        flags::count("--batch", self.batch, 1..=65_536)?;
        flags::count("--steps", self.steps, 1..=1_000_000)?;
        flags::count("--iters", self.iters, 1..=1_000_000)?;
        flags::optional("--threads", self.threads, 1..=4096)?;
        flags::optional("--shards", self.shards, 1..=65_536)?;
        flags::optional("--chunk", self.chunk, 1..=4096)?;
        flags::non_negative("--kappa", self.kappa, 1.0)?;
        if self.kappa >= 1.0 {
            anyhow::bail!("--kappa {}: expected a leak in [0, 1)", self.kappa);
        }
        if let Some(p) = self.connectivity {
            flags::positive("--connectivity", p, 1.0)?;
        }
        let eprop = self.algorithm == Algo::Eprop;
        let training = flags::training_bytes(eprop, self.hidden, self.inputs, self.batch, self.steps);
        flags::memory(
            training + 4.0 * (self.batch * self.steps * self.inputs) as f64,
            &format!(
                "--hidden {} --inputs {} --batch {} --steps {}",
                self.hidden, self.inputs, self.batch, self.steps
            ),
        )
    }
}

fn main() -> ExitCode {
    job::run(run)
}

fn run(job: &Job) -> Result<()> {
    let args = Args::parse();
    args.validate()?;
    if let Some(path) = &args.sweep {
        if job.size() > 1 {
            anyhow::bail!("--sweep runs its points in child processes: start it without mpirun");
        }
        return sweep(&args, path);
    }
    let comm = Arc::new(Counting {
        inner: job.comm(),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
    });
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let m = pool.install(|| match args.model {
        Model::Lif => measure(BellecLif::default(), &args, comm.clone()),
        Model::Alif => measure(BellecAlif::default(), &args, comm.clone()),
        Model::PaperLif => measure(PaperLif::default(), &args, comm.clone()),
        Model::PaperAlif => measure(PaperAlif::default(), &args, comm.clone()),
        Model::SigmaDelta => measure(SigmaDelta::default(), &args, comm.clone()),
    })?;
    // Peak RSS is read before the bandwidth probe allocates its large arrays.
    let peak = peak_rss_bytes();
    let bandwidth = if args.no_triad {
        0.0
    } else {
        pool.install(triad_bandwidth)
    };
    let achieved = m.trace_traffic_bytes / (m.ms_per_step * 1e-3) / 1e9;
    let line = serde_json::json!({
        "model": args.model.name(),
        "algorithm": match args.algorithm {
            Algo::Eprop => "eprop",
            Algo::Bptt => "bptt",
        },
        "hidden": args.hidden,
        "inputs": args.inputs,
        "batch": args.batch,
        "steps": args.steps,
        "recurrent": args.recurrent,
        "kappa": args.kappa,
        "connectivity": args.connectivity.unwrap_or(1.0),
        "threads": threads,
        "ranks": job.size(),
        "shards": args.shards.unwrap_or(job.size()),
        "chunk": args.chunk,
        "ms_per_step": m.ms_per_step,
        "rank0_bytes_sent_per_update": m.sent_per_update,
        "rank0_bytes_received_per_update": m.received_per_update,
        "sequence_ms": m.sequence_ms,
        "state_bytes": m.state_bytes,
        "peak_rss_bytes": peak,
        "triad_gb_per_s": bandwidth,
        "trace_traffic_gb_per_s": achieved,
        "trace_traffic_fraction": if bandwidth > 0.0 { achieved / bandwidth } else { 0.0 },
    });
    println!("{line}");
    Ok(())
}

fn measure<M: NeuronModel>(model: M, args: &Args, comm: Arc<Counting>) -> Result<Measurement> {
    let builder = NetworkBuilder::<f32>::new(args.inputs);
    let builder = match args.connectivity {
        None => builder.layer(LayerSpec::new(model, args.hidden).recurrent(args.recurrent)),
        Some(p) => {
            let sparse = |seed| Connectivity::Probability { p, seed };
            let b = builder
                .population(PopulationSpec::new("layer0", model, args.hidden))
                .projection(ProjectionSpec::input("layer0").connectivity(sparse(5)));
            if args.recurrent {
                b.projection(ProjectionSpec::new("layer0", "layer0").connectivity(sparse(6)))
            } else {
                b
            }
        }
    };
    let net = builder.readout(ReadoutSpec::new(CLASSES, args.kappa)).seed(1).build()?;
    let algorithm = match args.algorithm {
        Algo::Eprop => Algorithm::Eprop(Feedback::Symmetric),
        Algo::Bptt => Algorithm::Bptt,
    };
    // The paper's models are timed as its code trains them: AdamW with gradient clipping
    // inside the step.
    let paper = matches!(args.model, Model::PaperLif | Model::PaperAlif | Model::SigmaDelta);
    let optimizer = if paper {
        Optimizer::adamw(1e-3, 1e-2)
    } else {
        Optimizer::adam(1e-3)
    };
    let mut config = TrainConfig::new(algorithm, Loss::CrossEntropy(Window::All), optimizer);
    if paper {
        config.clip_norm = Some(1.0);
    }
    config.shards = args.shards.unwrap_or(comm.size());
    config.chunk = args.chunk.map_or(Chunking::Auto, Chunking::Steps);
    let mut trainer = Trainer::with_collective(net, config, comm.clone())?;
    let (batch, steps) = (args.batch, args.steps);
    // A small, fast generator: the input stream is part of the timed loop.
    let mut rng = SmallRng::seed_from_u64(2);
    let classes: Vec<usize> = (0..batch).map(|b| b % CLASSES).collect();
    let class_view = Array1::from_vec(classes.clone());
    let mut x = Array2::<f32>::zeros((batch, args.inputs));
    // BPTT needs the whole sequence at once; the buffer is drawn anew in place every
    // iteration, the same generation work e-prop does step by step.
    let mut xs = match args.algorithm {
        Algo::Eprop => Array3::<f32>::zeros((0, 0, 0)),
        Algo::Bptt => Array3::<f32>::zeros((steps, batch, args.inputs)),
    };
    let mut times = Vec::new();
    // e-prop: milliseconds per sequence spent outside the time loop (begin_sequence and
    // end_sequence: resetting traces, copying gradients, the optimiser step).
    let mut outside = Vec::new();
    for iter in 0..=args.iters {
        if iter == 1 {
            comm.sent.store(0, Ordering::Relaxed);
            comm.received.store(0, Ordering::Relaxed);
        }
        let start = Instant::now();
        match args.algorithm {
            Algo::Eprop => {
                trainer.begin_sequence(batch, steps)?;
                let begun = start.elapsed();
                for _ in 0..steps {
                    x.mapv_inplace(|_| if rng.random_bool(0.1) { 1.0 } else { 0.0 });
                    trainer.step(x.view(), Some(StepTargets::Classes(class_view.view())))?;
                }
                let ending = Instant::now();
                trainer.end_sequence()?;
                if iter > 0 {
                    outside.push((begun + ending.elapsed()).as_secs_f64() * 1e3);
                }
            }
            Algo::Bptt => {
                xs.mapv_inplace(|_| if rng.random_bool(0.1) { 1.0 } else { 0.0 });
                trainer.train_batch(xs.view(), Targets::Classes(&classes))?;
            }
        }
        if iter > 0 {
            times.push(start.elapsed().as_secs_f64() * 1e3 / steps as f64);
        }
    }
    times.sort_by(f64::total_cmp);
    let ms_per_step = times[times.len() / 2];
    outside.sort_by(f64::total_cmp);
    let sequence_ms = outside.get(outside.len() / 2).copied().unwrap_or(0.0);
    let state_bytes = trainer.state_bytes(batch, steps);
    // Per-synapse trace traffic per step (e-prop): every per-synapse row and κ-filtered
    // trace is read and written once per sample. BPTT keeps no traces.
    let layout = &M::PATTERN.ports[0];
    let synapses: usize = trainer.network().projections.iter().map(|p| p.synapses().len()).sum();
    let per_synapse_rows = layout.per_synapse + usize::from(args.kappa != 0.0);
    let trace_traffic_bytes = match args.algorithm {
        Algo::Eprop => (2 * per_synapse_rows * synapses * batch * std::mem::size_of::<f32>()) as f64,
        Algo::Bptt => 0.0,
    };
    let updates = (trainer.updates() - 1).max(1) as f64;
    Ok(Measurement {
        ms_per_step,
        sequence_ms,
        sent_per_update: comm.sent.load(Ordering::Relaxed) as f64 / updates,
        received_per_update: comm.received.load(Ordering::Relaxed) as f64 / updates,
        state_bytes,
        trace_traffic_bytes,
    })
}

/// What one configuration measured.
struct Measurement {
    ms_per_step: f64,
    /// Bytes this rank sent and received per optimiser update (a broadcast counts once).
    sent_per_update: f64,
    received_per_update: f64,
    /// e-prop: median ms per sequence in begin_sequence and end_sequence (0 for BPTT).
    sequence_ms: f64,
    state_bytes: usize,
    trace_traffic_bytes: f64,
}

/// A communicator that counts the bytes this rank sends and receives.
struct Counting {
    inner: Arc<dyn Collective>,
    sent: AtomicU64,
    received: AtomicU64,
}

impl Collective for Counting {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn send(&self, to: usize, bytes: &[u8]) -> plasticity_runtime::Result<()> {
        self.sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.inner.send(to, bytes)
    }
    fn receive(&self, from: usize, bytes: &mut [u8]) -> plasticity_runtime::Result<()> {
        self.received.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.inner.receive(from, bytes)
    }
    fn broadcast(&self, root: usize, bytes: &mut [u8]) -> plasticity_runtime::Result<()> {
        let counter = if self.rank() == root {
            &self.sent
        } else {
            &self.received
        };
        if self.size() > 1 {
            counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        self.inner.broadcast(root, bytes)
    }
    fn abort(&self, code: i32) -> ! {
        self.inner.abort(code)
    }
}

/// STREAM-style triad `a = b + s·c` over arrays far larger than cache, in parallel over
/// the current thread pool; the best of five runs, counting three arrays of traffic.
fn triad_bandwidth() -> f64 {
    use rayon::prelude::*;
    let n = 32 << 20; // 32 Mi floats = 128 MiB per array
    let mut a = vec![0.0f32; n];
    let b = vec![1.0f32; n];
    let c = vec![2.0f32; n];
    let mut best = 0.0f64;
    for _ in 0..5 {
        let start = Instant::now();
        a.par_chunks_mut(1 << 16)
            .zip(b.par_chunks(1 << 16))
            .zip(c.par_chunks(1 << 16))
            .for_each(|((a, b), c)| {
                for i in 0..a.len() {
                    a[i] = b[i] + 0.5 * c[i];
                }
            });
        let secs = start.elapsed().as_secs_f64();
        best = best.max((3 * n * 4) as f64 / secs / 1e9);
    }
    std::hint::black_box(&a);
    best
}

/// Peak resident set size of this process (Linux `VmHWM`), 0 where unavailable.
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// One sweep point for the plots: algorithm, hidden, steps, ms per step, peak RSS in MiB.
type Point = (&'static str, usize, usize, f64, f64);

/// Runs one measurement per point in a child process (so peak RSS is per point) and
/// collects the JSON lines into a CSV.
fn sweep(args: &Args, path: &Path) -> Result<()> {
    let exe = std::env::current_exe()?;
    let mut csv =
        String::from("model,algorithm,hidden,inputs,batch,steps,threads,ms_per_step,state_bytes,peak_rss_bytes\n");
    let model = args.model.name();
    let mut points = Vec::new();
    for algorithm in ["eprop", "bptt"] {
        for hidden in [64, 128, 256, 512] {
            points.push((algorithm, hidden, 100));
        }
        for steps in [100, 500, 1000, 2000] {
            points.push((algorithm, 256, steps));
        }
    }
    let mut measured: Vec<Point> = Vec::new();
    for (algorithm, hidden, steps) in points {
        let out = std::process::Command::new(&exe)
            .args(["--model", model, "--algorithm", algorithm])
            .args(["--hidden", &hidden.to_string(), "--inputs", &args.inputs.to_string()])
            .args(["--batch", &args.batch.to_string(), "--steps", &steps.to_string()])
            .args(["--iters", &args.iters.to_string(), "--no-triad"])
            .output()
            .context("running a sweep point")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().last().context("a sweep point printed nothing")?;
        let point: serde_json::Value = serde_json::from_str(line).context("a sweep point's JSON line")?;
        let field = |k: &str| -> String {
            match &point[k] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            }
        };
        let row = [
            "model",
            "algorithm",
            "hidden",
            "inputs",
            "batch",
            "steps",
            "threads",
            "ms_per_step",
            "state_bytes",
            "peak_rss_bytes",
        ]
        .map(field)
        .join(",");
        eprintln!("{row}");
        csv.push_str(&row);
        csv.push('\n');
        let number = |k: &str| -> Result<f64> {
            point[k]
                .as_f64()
                .with_context(|| format!("sweep point {algorithm} H={hidden} T={steps}: no number `{k}` in {line:?}"))
        };
        measured.push((
            algorithm,
            hidden,
            steps,
            number("ms_per_step")?,
            number("peak_rss_bytes")? / (1024.0 * 1024.0),
        ));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    write_atomic(path, csv.as_bytes())?;
    std::io::stdout().flush()?;
    println!("wrote {}", path.display());
    // Three plots beside the CSV: time against H (T = 100), and time and memory against T (H = 256).
    let series = |x_of: fn(&Point) -> Option<f64>, y_of: fn(&Point) -> f64| {
        ["eprop", "bptt"].map(|a| {
            let mut points: Vec<(f64, f64)> = measured
                .iter()
                .filter(|m| m.0 == a)
                .filter_map(|m| x_of(m).map(|x| (x, y_of(m))))
                .collect();
            // (H = 256, T = 100) is in both grids: plot it once.
            points.sort_by(|p, q| p.0.total_cmp(&q.0));
            points.dedup_by(|p, q| p.0 == q.0);
            (if a == "eprop" { "e-prop" } else { "BPTT" }, points)
        })
    };
    let stem = path.with_extension("");
    let png = |suffix: &str| PathBuf::from(format!("{}_{suffix}.png", stem.display()));
    let by_hidden = series(|m| (m.2 == 100).then_some(m.1 as f64), |m| m.3);
    let by_steps = series(|m| (m.1 == 256).then_some(m.2 as f64), |m| m.3);
    let rss_by_steps = series(|m| (m.1 == 256).then_some(m.2 as f64), |m| m.4);
    let title = format!("{model}, {} inputs, batch {}", args.inputs, args.batch);
    for (file, what, x_label, data) in [
        (png("hidden"), "ms per step, T = 100", "hidden neurons H", by_hidden),
        (png("steps"), "ms per step, H = 256", "sequence length T", by_steps),
        (
            png("memory"),
            "peak RSS (MiB), H = 256",
            "sequence length T",
            rss_by_steps,
        ),
    ] {
        plots::line_chart(&file, &format!("{what}: {title}"), x_label, &data)?;
        println!("wrote {}", file.display());
    }
    Ok(())
}
