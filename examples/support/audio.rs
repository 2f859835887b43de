//! A cochlea-style audio-to-spike encoder, in the spirit of the Spiking Heidelberg Digits.
//!
//! 1. A bank of fourth-order gammatone band-pass filters with centre frequencies evenly
//!    spaced on the ERB-rate scale (Glasberg & Moore 1990), each realised as a complex
//!    baseband cascade: the signal is shifted down by the centre frequency and passed through
//!    four one-pole low-pass filters of the channel's bandwidth.
//! 2. Inner hair cells: half-wave rectification of the band-passed signal, a short smoothing
//!    low-pass (1 ms), then compression by a power law (`x^0.3`).
//! 3. Spiking units: one leaky integrate-and-fire unit per channel with an adaptive
//!    threshold, so onsets produce bursts and sustained sounds fewer spikes.
//!
//! The input level is normalised per utterance (peak of the compressed response), so the
//! spikes encode spectral shape and timing rather than loudness.

use std::f64::consts::PI;
use std::path::Path;

use anyhow::{Context, Result, bail};
use rayon::prelude::*;

/// The hair-cell output (smoothed below 1 kHz) is sampled every this many input samples.
const DECIMATE: usize = 4;

/// Encoder settings.
#[derive(Clone, Debug)]
pub struct CochleaConfig {
    /// Number of channels (SHD: 700).
    pub channels: usize,
    /// Lowest centre frequency, Hz.
    pub f_min: f64,
    /// Highest centre frequency, Hz (capped below the Nyquist frequency).
    pub f_max: f64,
    /// Hair-cell compression exponent.
    pub compression: f64,
    /// Membrane time constant of the spiking units, seconds.
    pub tau: f64,
    /// Threshold-adaptation time constant, seconds.
    pub tau_adapt: f64,
    /// Threshold increase per spike.
    pub adapt: f64,
    /// Base threshold of the units (input is normalised to peak 1).
    pub threshold: f64,
    /// Refractory period, seconds.
    pub refractory: f64,
}

impl Default for CochleaConfig {
    fn default() -> Self {
        CochleaConfig {
            channels: 700,
            f_min: 50.0,
            f_max: 8000.0,
            compression: 0.3,
            tau: 0.005,
            tau_adapt: 0.05,
            adapt: 0.5,
            threshold: 0.35,
            refractory: 0.002,
        }
    }
}

/// A spike: time in seconds and channel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spike {
    /// Seconds from the start of the sound.
    pub time: f32,
    /// Channel, 0 = lowest frequency.
    pub unit: u16,
}

/// ERB-rate of a frequency (Glasberg & Moore 1990).
fn erb_rate(f: f64) -> f64 {
    21.4 * (4.37e-3 * f + 1.0).log10()
}

fn erb_rate_inverse(e: f64) -> f64 {
    (10f64.powf(e / 21.4) - 1.0) / 4.37e-3
}

/// Equivalent rectangular bandwidth at `f`, Hz.
fn erb(f: f64) -> f64 {
    24.7 * (4.37e-3 * f + 1.0)
}

/// Centre frequencies of the channels, ascending.
pub fn centre_frequencies(cfg: &CochleaConfig, sample_rate: f64) -> Vec<f64> {
    let f_max = cfg.f_max.min(0.45 * sample_rate);
    let (lo, hi) = (erb_rate(cfg.f_min), erb_rate(f_max));
    (0..cfg.channels)
        .map(|c| erb_rate_inverse(lo + (hi - lo) * c as f64 / (cfg.channels.max(2) - 1) as f64))
        .collect()
}

/// Encodes mono `samples` at `sample_rate` Hz into spikes, sorted by time.
pub fn encode(samples: &[f32], sample_rate: u32, cfg: &CochleaConfig) -> Vec<Spike> {
    let fs = f64::from(sample_rate);
    let dt = 1.0 / fs;
    let freqs = centre_frequencies(cfg, fs);
    // Hair-cell responses per channel, then a common normalisation.
    let smooth = (-dt / 0.001).exp();
    let responses: Vec<Vec<f32>> = freqs
        .par_iter()
        .map(|&fc| {
            let bw = 1.019 * erb(fc);
            let a = (-2.0 * PI * bw * dt).exp();
            let (mut re, mut im) = ([0.0f64; 4], [0.0f64; 4]);
            let (step_s, step_c) = (2.0 * PI * fc * dt).sin_cos();
            let (mut s, mut c) = (0.0f64, 1.0f64);
            let mut out = Vec::with_capacity(samples.len());
            let mut lp = 0.0f64;
            for (n, &x) in samples.iter().enumerate() {
                // The carrier e^{iωn} by rotation, renormalised now and then against drift.
                if n > 0 {
                    (s, c) = (s * step_c + c * step_s, c * step_c - s * step_s);
                    if n % 1024 == 0 {
                        let norm = (s * s + c * c).sqrt();
                        (s, c) = (s / norm, c / norm);
                    }
                }
                // Shift down by fc, then four one-pole low-pass stages.
                let (mut xr, mut xi) = (f64::from(x) * c, -f64::from(x) * s);
                for k in 0..4 {
                    re[k] = a * re[k] + (1.0 - a) * xr;
                    im[k] = a * im[k] + (1.0 - a) * xi;
                    xr = re[k];
                    xi = im[k];
                }
                // Back to the band: the real part of the shifted-up baseband signal.
                let band = (xr * c - xi * s) * 2.0;
                lp = smooth * lp + (1.0 - smooth) * band.max(0.0);
                if n % DECIMATE == 0 {
                    out.push((lp as f32).powf(cfg.compression as f32));
                }
            }
            out
        })
        .collect();
    let peak = responses.iter().flat_map(|r| r.iter()).fold(0.0f32, |m, &v| m.max(v));
    if peak <= 0.0 {
        return Vec::new();
    }
    // The units run on the decimated hair-cell output.
    let dt = dt * DECIMATE as f64;
    let decay = (-dt / cfg.tau).exp();
    let adapt_decay = (-dt / cfg.tau_adapt).exp();
    let refractory = (cfg.refractory / dt).round() as usize;
    let mut spikes = Vec::new();
    for (unit, r) in responses.iter().enumerate() {
        let (mut v, mut th, mut wait) = (0.0f64, 0.0f64, 0usize);
        for (n, &x) in r.iter().enumerate() {
            v = decay * v + (1.0 - decay) * f64::from(x / peak);
            th *= adapt_decay;
            if wait > 0 {
                wait -= 1;
                continue;
            }
            if v > cfg.threshold + th {
                spikes.push(Spike {
                    time: (n as f64 * dt) as f32,
                    unit: unit as u16,
                });
                th += cfg.adapt;
                v = 0.0;
                wait = refractory;
            }
        }
    }
    spikes.sort_by(|a, b| a.time.total_cmp(&b.time).then(a.unit.cmp(&b.unit)));
    spikes
}

/// Reads a WAV file as mono f32 in [-1, 1] (channels averaged) and its sample rate.
pub fn read_wav(path: &Path) -> Result<(Vec<f32>, u32)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    let mut reader = hound::WavReader::new(std::io::BufReader::new(file))
        .with_context(|| format!("{}: not a readable WAV file", path.display()))?;
    let spec = reader.spec();
    if spec.channels == 0 {
        bail!("{}: no channels", path.display());
    }
    if !(1000..=1_000_000).contains(&spec.sample_rate) {
        bail!(
            "{}: sample rate {} Hz, expected 1 kHz to 1 MHz",
            path.display(),
            spec.sample_rate
        );
    }
    // The data chunk's length field may claim more than the file holds: refuse it before
    // reading rather than trusting it for an allocation.
    let claimed = u64::from(reader.len()) * u64::from(spec.bits_per_sample.div_ceil(8));
    if claimed > file_len {
        bail!(
            "{}: claims {} samples ({claimed} bytes), the file has {file_len} bytes",
            path.display(),
            reader.len()
        );
    }
    let corrupt = || format!("{}: corrupt or truncated sample data", path.display());
    let raw: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .collect::<Result<_, _>>()
            .with_context(corrupt)?,
        hound::SampleFormat::Int => {
            if !(1..=32).contains(&spec.bits_per_sample) {
                bail!(
                    "{}: {} bits per integer sample, expected 1 to 32",
                    path.display(),
                    spec.bits_per_sample
                );
            }
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()
                .with_context(corrupt)?
        }
    };
    let ch = usize::from(spec.channels);
    let mono = raw.chunks(ch).map(|c| c.iter().sum::<f32>() / ch as f32).collect();
    Ok((mono, spec.sample_rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(f: f64, fs: u32, secs: f64) -> Vec<f32> {
        (0..(secs * f64::from(fs)) as usize)
            .map(|n| (2.0 * PI * f * n as f64 / f64::from(fs)).sin() as f32)
            .collect()
    }

    #[test]
    fn a_tone_excites_the_channels_around_its_frequency() {
        let cfg = CochleaConfig {
            channels: 64,
            ..CochleaConfig::default()
        };
        let fs = 16000;
        for f in [300.0, 1000.0, 3000.0] {
            let spikes = encode(&tone(f, fs, 0.3), fs, &cfg);
            assert!(!spikes.is_empty(), "{f} Hz gives spikes");
            let freqs = centre_frequencies(&cfg, f64::from(fs));
            let mut counts = vec![0usize; cfg.channels];
            for s in &spikes {
                counts[usize::from(s.unit)] += 1;
            }
            let best = (0..cfg.channels).max_by_key(|&c| counts[c]).unwrap();
            let ratio = freqs[best] / f;
            assert!(
                (0.8..1.25).contains(&ratio),
                "{f} Hz peaks at channel {best} ({} Hz)",
                freqs[best]
            );
        }
    }

    #[test]
    fn silence_gives_no_spikes_and_output_is_sorted() {
        let cfg = CochleaConfig {
            channels: 32,
            ..CochleaConfig::default()
        };
        assert!(encode(&vec![0.0; 4000], 16000, &cfg).is_empty());
        let s = encode(&tone(500.0, 16000, 0.2), 16000, &cfg);
        assert!(s.windows(2).all(|w| w[0].time <= w[1].time));
    }

    /// A valid 16-bit mono WAV file, the seed of the hostile files below.
    fn wav_bytes() -> Vec<u8> {
        let mut cursor = std::io::Cursor::new(Vec::new());
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::new(&mut cursor, spec).unwrap();
        for n in 0..400 {
            w.write_sample(((n * 97) % 2000) as i16 - 1000).unwrap();
        }
        w.finalize().unwrap();
        cursor.into_inner()
    }

    fn read_bytes(name: &str, bytes: &[u8]) -> Result<(Vec<f32>, u32)> {
        let dir = std::env::temp_dir().join(format!("plasticity-wav-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        read_wav(&path)
    }

    /// Position of a RIFF chunk's length field.
    fn chunk_len_at(bytes: &[u8], id: &[u8; 4]) -> usize {
        bytes.windows(4).position(|w| w == id).unwrap() + 4
    }

    #[test]
    fn hostile_wav_files_are_refused() {
        let good = wav_bytes();
        let (samples, rate) = read_bytes("good.wav", &good).unwrap();
        assert_eq!((samples.len(), rate), (400, 16000));
        let mut huge = good.clone();
        let at = chunk_len_at(&good, b"data");
        huge[at..at + 4].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        let mut zero_rate = good.clone();
        let fmt = chunk_len_at(&good, b"fmt ") + 4;
        zero_rate[fmt + 4..fmt + 8].copy_from_slice(&0u32.to_le_bytes());
        let mut no_channels = good.clone();
        no_channels[fmt + 2..fmt + 4].copy_from_slice(&0u16.to_le_bytes());
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", Vec::new(), "not a readable WAV"),
            ("random", b"definitely not a RIFF file".to_vec(), "not a readable WAV"),
            ("data length of 4 GiB", huge, "the file has"),
            ("sample rate 0", zero_rate, ""),
            ("no channels", no_channels, ""),
            ("truncated", good[..good.len() - 101].to_vec(), ""),
        ];
        for (what, bytes, expected) in cases {
            let e = format!("{:#}", read_bytes("bad.wav", &bytes).unwrap_err());
            assert!(e.contains(expected), "{what}: {e}");
        }
        for cut in (0..good.len()).step_by(7) {
            let _ = read_bytes("cut.wav", &good[..cut]);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(64))]
        /// Valid files with bytes changed read or fail: never a panic.
        #[test]
        fn edited_wav_files_never_panic(
            edits in proptest::collection::vec((0usize..900, proptest::num::u8::ANY), 1..6),
        ) {
            let mut bytes = wav_bytes();
            for (at, value) in edits {
                let n = bytes.len();
                bytes[at % n] = value;
            }
            let _ = read_bytes("edited.wav", &bytes);
        }
    }
}
