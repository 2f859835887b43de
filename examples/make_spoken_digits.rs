//! Generates the bundled spoken-digits set: twenty words (English and German digits) spoken
//! by many synthetic speakers with espeak-ng, encoded into spikes by the cochlea model in
//! `plasticity_examples::audio`. Speakers differ in voice variant, pitch, speed and
//! amplitude. Test speakers use voice variants that no training speaker uses.
//!
//! Needs the `espeak-ng` program (Debian package `espeak-ng`).
//!
//! cargo run --release --example make_spoken_digits -- --out examples/data/spoken_digits.bin

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use plasticity_examples::audio::{CochleaConfig, encode, read_wav};
use plasticity_examples::spike_data::{SpikeDataset, SpikeSample};
use plasticity_examples::{flags, write_atomic};

/// Synthesises and encodes the spoken-digits set.
#[derive(Parser, Debug)]
struct Args {
    /// Output file.
    #[arg(long, default_value = "examples/data/spoken_digits.bin")]
    out: PathBuf,
    /// Training speakers.
    #[arg(long, default_value_t = 128)]
    train_speakers: usize,
    /// Held-out test speakers.
    #[arg(long, default_value_t = 8)]
    test_speakers: usize,
    /// Also write the set in SHD's HDF5 layout into this folder, as `spoken_digits_train.h5`
    /// and `spoken_digits_test.h5` (needs the `hdf5` feature).
    #[arg(long)]
    h5: Option<PathBuf>,
    /// Channels of the cochlea model.
    #[arg(long, default_value_t = 700)]
    channels: usize,
}

const ENGLISH: [&str; 10] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];
const GERMAN: [&str; 10] = [
    "null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun",
];
/// espeak-ng voice variants. Test speakers take them from the back, one each; training
/// speakers cycle through the rest with different pitch, speed and loudness, so the two sets
/// never share a variant.
const VARIANTS: [&str; 40] = [
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "adam", "alex", "andy", "annie", "benjamin",
    "caleb", "david", "ed", "edward", "gene", "iven", "john", "linda", "max", "michel", "norbert", "paul", "robert",
    "steph", "travis", "victor", "zac", "m8", "f5", "iven2", "steph2", "edward2", "gene2", "iven3",
];

/// Test speaker `k` takes the pitch, speed and loudness of index `TEST_PROSODY + k`, whatever
/// the number of training speakers, so enlarging the training set leaves the test set as it is.
const TEST_PROSODY: usize = 64;

struct Speaker {
    id: u16,
    variant: &'static str,
    pitch: u32,
    speed: u32,
    amplitude: u32,
    test: bool,
}

fn speakers(train: usize, test: usize) -> Result<Vec<Speaker>> {
    if test == 0 || train == 0 || test >= VARIANTS.len() {
        bail!(
            "needs at least one training and one test speaker, and at most {} test speakers",
            VARIANTS.len() - 1
        );
    }
    let train_variants = VARIANTS.len() - test;
    let pick = |i: usize, variant: &'static str, test: bool| Speaker {
        id: i as u16,
        variant,
        pitch: 25 + (i as u32 * 17) % 50,
        speed: 120 + (i as u32 * 23) % 70,
        amplitude: 60 + (i as u32 * 29) % 100,
        test,
    };
    let mut out: Vec<Speaker> = (0..train)
        .map(|i| pick(i, VARIANTS[i % train_variants], false))
        .collect();
    out.extend((0..test).map(|k| Speaker {
        id: (train + k) as u16,
        ..pick(TEST_PROSODY + k, VARIANTS[VARIANTS.len() - 1 - k], true)
    }));
    Ok(out)
}

fn main() -> Result<()> {
    let args = Args::parse();
    flags::count("--train-speakers", args.train_speakers, 1..=10_000)?;
    flags::count("--test-speakers", args.test_speakers, 1..=VARIANTS.len() - 1)?;
    flags::count("--channels", args.channels, 1..=4096)?;
    if args.h5.is_some() && !cfg!(feature = "hdf5") {
        // Fail before the synthesis, not after it.
        bail!(NO_HDF5);
    }
    Command::new("espeak-ng")
        .arg("--version")
        .output()
        .context("espeak-ng is needed: apt-get install espeak-ng")?;
    let speakers = speakers(args.train_speakers, args.test_speakers)?;
    let cfg = CochleaConfig {
        channels: args.channels,
        ..CochleaConfig::default()
    };
    let dir = std::env::temp_dir().join(format!("spoken-digits-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let total = speakers.len() * 20;
    let bar = ProgressBar::new(total as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} utterances [{elapsed_precise}]",
    )?);
    let mut samples = Vec::with_capacity(total);
    for sp in &speakers {
        for (label, (lang, word)) in ENGLISH
            .iter()
            .map(|w| ("en-us", *w))
            .chain(GERMAN.iter().map(|w| ("de", *w)))
            .enumerate()
        {
            let wav = dir.join(format!("{}-{label}.wav", sp.id));
            let status = Command::new("espeak-ng")
                .args(["-v", &format!("{lang}+{}", sp.variant)])
                .args([
                    "-p",
                    &sp.pitch.to_string(),
                    "-s",
                    &sp.speed.to_string(),
                    "-a",
                    &sp.amplitude.to_string(),
                ])
                .arg("-w")
                .arg(&wav)
                .arg(word)
                .status()
                .context("running espeak-ng")?;
            if !status.success() {
                bail!("espeak-ng failed for speaker {} word {word}", sp.id);
            }
            let (audio, rate) = read_wav(&wav)?;
            let spikes = encode(&audio, rate, &cfg);
            samples.push(SpikeSample {
                label: label as u8,
                speaker: sp.id,
                test: sp.test,
                spikes,
            });
            std::fs::remove_file(&wav)?;
            bar.inc(1);
        }
    }
    bar.finish();
    let set = SpikeDataset {
        channels: args.channels,
        samples,
    };
    let bytes = set.to_bytes()?;
    write_atomic(&args.out, &bytes)?;
    let spikes: usize = set.samples.iter().map(|s| s.spikes.len()).sum();
    println!(
        "wrote {} ({} utterances, {} speakers of which {} held out, {} spikes, {:.1} MB)",
        args.out.display(),
        set.samples.len(),
        speakers.len(),
        args.test_speakers,
        spikes,
        bytes.len() as f64 / 1e6
    );
    let _ = std::fs::remove_dir(&dir);
    if let Some(folder) = &args.h5 {
        write_h5(folder, &set)?;
    }
    Ok(())
}

/// The set in SHD's layout, one file per split, with the twenty words as `extra/keys`.
#[cfg(feature = "hdf5")]
fn write_h5(folder: &std::path::Path, set: &SpikeDataset) -> Result<()> {
    std::fs::create_dir_all(folder)?;
    let keys: Vec<&str> = ENGLISH.iter().chain(GERMAN.iter()).copied().collect();
    for (name, test) in [("spoken_digits_train.h5", false), ("spoken_digits_test.h5", true)] {
        let split: Vec<&SpikeSample> = set.samples.iter().filter(|s| s.test == test).collect();
        let path = folder.join(name);
        plasticity_examples::shd::write_shd(&path, &split, &keys)?;
        println!("wrote {} ({} utterances)", path.display(), split.len());
    }
    Ok(())
}

const NO_HDF5: &str =
    "--h5 needs the `hdf5` feature (cargo run --release --features hdf5 --example make_spoken_digits)";

#[cfg(not(feature = "hdf5"))]
fn write_h5(_folder: &std::path::Path, _set: &SpikeDataset) -> Result<()> {
    bail!(NO_HDF5)
}
