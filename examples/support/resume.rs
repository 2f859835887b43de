//! Exact resume of a training run: the trainer's checkpoint (weights, optimiser moments and
//! step) plus what the training loop itself needs to continue as if it had never stopped —
//! the epochs done, the position of the random generator, the data order, and the flags the
//! run was started with.
//!
//! Every example writes `OUTPUT/last.safetensors` after each epoch. With `--resume` it reads
//! that file back and continues up to `--epochs` (or the example's equivalent) in total; the
//! result is bit-identical to a run that was never interrupted, because
//! - the generator is rand's standard one (ChaCha12, the algorithm behind `StdRng`, same
//!   stream for the same seed) and its position is saved word-exactly;
//! - the data order is saved as it stands (the examples shuffle it in place every epoch);
//! - the weights and optimiser moments are saved in the network's own float type.
//!
//! Flags that change training must be the same when resuming; the ones that only say how
//! long to train or where to write are free. A mismatch is an error naming the flags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use plasticity_runtime::{Float, Trainer};
use rand::SeedableRng;
use serde::Serialize;

use crate::run_log::RunLog;

/// The examples' random generator: ChaCha with 12 rounds, the generator (and, for the same
/// seed, the stream) of rand's `StdRng`, with a position that can be saved and restored.
pub type Rng = chacha20::ChaCha12Rng;

/// Where a training loop stands.
pub struct Progress {
    /// Epochs (or the example's unit of training) completed.
    pub done: usize,
    /// The loop's random generator.
    pub rng: Rng,
    /// The training set's order, shuffled in place each epoch (empty when the example draws
    /// fresh data instead).
    pub order: Vec<usize>,
    /// Values the loop carries from one epoch to the next (running averages), restored
    /// exactly.
    pub carry: Vec<f64>,
}

impl Progress {
    /// A fresh run: nothing done, the generator seeded with `seed`, the identity order over
    /// `samples` items.
    pub fn new(seed: u64, samples: usize) -> Self {
        Progress {
            done: 0,
            rng: Rng::seed_from_u64(seed),
            order: (0..samples).collect(),
            carry: Vec::new(),
        }
    }
}

/// A run's checkpoint file and the flags it must be resumed with.
pub struct Resume {
    path: PathBuf,
    flags: String,
}

/// The file every example keeps its latest state in, inside its output folder.
pub const LAST: &str = "last.safetensors";

impl Resume {
    /// The checkpoint in `output`, for a run configured by `args` (the parsed flags); `free`
    /// lists the flags (by field name) that may change between the runs, such as the number
    /// of epochs and the output folder. `--shards` is always free: it changes the order in
    /// which gradients are summed, not what is trained (the same value keeps a resumed run
    /// bit-identical, on any number of ranks).
    pub fn new(output: &Path, args: &impl Serialize, free: &[&str]) -> Result<Self> {
        let mut flags = match serde_json::to_value(args)? {
            serde_json::Value::Object(m) => m,
            other => bail!("flags serialise to {other}, expected an object"),
        };
        for key in free.iter().chain(&["resume", "output", "shards"]) {
            flags.remove(*key);
        }
        Ok(Resume {
            path: output.join(LAST),
            flags: serde_json::to_string(&flags)?,
        })
    }

    /// Writes the trainer's checkpoint with `progress`, atomically (the previous file stays
    /// whole until the new one is complete).
    pub fn save<F: Float>(&self, trainer: &Trainer<F>, progress: &Progress) -> Result<()> {
        if !crate::job::is_root() {
            return Ok(());
        }
        let order = progress
            .order
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let user = BTreeMap::from([
            ("done".to_string(), progress.done.to_string()),
            ("rng_seed".to_string(), hex(&progress.rng.get_seed())),
            ("rng_word_pos".to_string(), progress.rng.get_word_pos().to_string()),
            ("order".to_string(), order),
            // Rust prints the shortest decimal that parses back to the same f64.
            (
                "carry".to_string(),
                progress.carry.iter().map(f64::to_string).collect::<Vec<_>>().join(","),
            ),
            ("flags".to_string(), self.flags.clone()),
        ]);
        trainer
            .save_checkpoint_with(&self.path, &user)
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// Where this invocation starts: `fresh` for a new run, or with `resume` the checkpoint's
    /// state, `log` continued after the epochs `epochs(done)` the checkpoint completed.
    pub fn start<F: Float>(
        &self,
        trainer: &mut Trainer<F>,
        resume: bool,
        fresh: Progress,
        log: &mut RunLog,
        epochs: impl Fn(usize) -> usize,
    ) -> Result<Progress> {
        if !resume {
            return Ok(fresh);
        }
        let progress = self.load(trainer)?;
        if crate::job::is_root() {
            remove_stale_temporaries(self.path.parent().unwrap_or(Path::new(".")));
        }
        if progress.carry.len() != fresh.carry.len() {
            bail!(
                "--resume: {} carries {} values, this program {}",
                self.path.display(),
                progress.carry.len(),
                fresh.carry.len()
            );
        }
        log.resume(epochs(progress.done))?;
        Ok(progress)
    }

    /// Restores the trainer from the checkpoint and returns where the loop stood. The
    /// checkpoint must come from a run with the same flags (except the free ones).
    pub fn load<F: Float>(&self, trainer: &mut Trainer<F>) -> Result<Progress> {
        let path = &self.path;
        if !path.exists() {
            bail!("--resume: {} does not exist (nothing to resume from)", path.display());
        }
        let user = trainer.load_checkpoint(path)?;
        let get = |key: &str| {
            user.get(key)
                .with_context(|| format!("{}: no `{key}` entry: not written by an example run", path.display()))
        };
        let flags = get("flags")?;
        if *flags != self.flags {
            bail!(
                "--resume: {} was written with different flags: {}",
                path.display(),
                differences(flags, &self.flags)
            );
        }
        let bad = |key: &str| format!("{}: malformed `{key}` entry", path.display());
        let done: usize = get("done")?.parse().with_context(|| bad("done"))?;
        let seed = unhex(get("rng_seed")?).with_context(|| bad("rng_seed"))?;
        let pos: u128 = get("rng_word_pos")?.parse().with_context(|| bad("rng_word_pos"))?;
        let mut rng = Rng::from_seed(seed);
        rng.set_word_pos(pos);
        let order: Vec<usize> = list(get("order")?).with_context(|| bad("order"))?;
        let carry: Vec<f64> = list(get("carry")?).with_context(|| bad("carry"))?;
        let mut seen = vec![false; order.len()];
        for &i in &order {
            if i >= order.len() || std::mem::replace(&mut seen[i], true) {
                bail!("{}", bad("order"));
            }
        }
        Ok(Progress {
            done,
            rng,
            order,
            carry,
        })
    }
}

/// A comma-separated list (empty for none).
fn list<T: std::str::FromStr>(text: &str) -> Result<Vec<T>, T::Err> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',').map(str::parse).collect()
}

/// Removes the temporary files (`.tmpXXXXXX`, from `tempfile`) that a run killed in the
/// middle of an atomic write leaves in its output folder. Best effort: a file that cannot be
/// removed is left.
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let stale = name.to_str().is_some_and(|n| n.starts_with(".tmp"));
        if stale && entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The `done` count at which an invocation stops: `total`, or sooner after `stop_after`
/// units of `unit` (epochs of `unit` steps of `done`).
pub fn stop_at(done: usize, total: usize, stop_after: Option<usize>, unit: usize) -> usize {
    stop_after.map_or(total, |n| total.min(done.saturating_add(n.saturating_mul(unit))))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 || !s.is_ascii() {
        bail!("expected 64 hexadecimal digits");
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)?;
    }
    Ok(out)
}

/// `flag: stored -> given` for each flag that differs between two JSON objects.
fn differences(stored: &str, given: &str) -> String {
    let parse = |s: &str| -> BTreeMap<String, serde_json::Value> { serde_json::from_str(s).unwrap_or_default() };
    let (a, b) = (parse(stored), parse(given));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let null = serde_json::Value::Null;
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            format!(
                "--{} {} (now {})",
                k.replace('_', "-"),
                a.get(k).unwrap_or(&null),
                b.get(k).unwrap_or(&null)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;
    use rand::rngs::StdRng;

    #[test]
    fn generator_matches_std_and_resumes_word_exactly() {
        let (mut a, mut b) = (Rng::seed_from_u64(7), StdRng::seed_from_u64(7));
        for _ in 0..100 {
            assert_eq!(a.random::<u64>(), b.random::<u64>());
        }
        // An odd number of 32-bit words, then a restore from seed and position.
        let _: u32 = a.random();
        let mut c = Rng::from_seed(unhex(&hex(&a.get_seed())).unwrap());
        c.set_word_pos(a.get_word_pos());
        for _ in 0..50 {
            assert_eq!(a.random::<u64>(), c.random::<u64>());
            assert_eq!(a.random_range(0..1000), c.random_range(0..1000));
        }
    }

    #[test]
    fn differences_name_the_flags() {
        let d = differences(r#"{"lr":0.01,"hidden":8}"#, r#"{"lr":0.02,"hidden":8}"#);
        assert_eq!(d, "--lr 0.01 (now 0.02)");
    }
}
