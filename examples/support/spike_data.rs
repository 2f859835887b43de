//! A compact file of spike-encoded utterances (the bundled spoken-digits set), and binning
//! of spikes into network input.
//!
//! Format (little-endian): the 16-byte magic `PLASTICITY-SPK1\0`, `u32` channels, `u32`
//! sample count, then per sample: `u8` label, `u8` split (0 train, 1 test), `u16` speaker,
//! `u32` spike count and that many `(u16 time in 0.1 ms, u16 channel)` pairs.

use std::path::Path;

use anyhow::{Context, Result, bail};
use ndarray::Array3;

use crate::audio::Spike;

const MAGIC: &[u8; 16] = b"PLASTICITY-SPK1\0";
/// Time resolution of stored spikes, seconds.
const TICK: f64 = 1e-4;

/// One utterance.
#[derive(Clone, Debug, PartialEq)]
pub struct SpikeSample {
    /// Class: 0–9 English digits, 10–19 German digits.
    pub label: u8,
    /// Speaker id.
    pub speaker: u16,
    /// Held out for testing.
    pub test: bool,
    /// Spikes sorted by time.
    pub spikes: Vec<Spike>,
}

/// A set of utterances over `channels` input channels.
#[derive(Clone, Debug, PartialEq)]
pub struct SpikeDataset {
    /// Number of channels.
    pub channels: usize,
    /// The utterances.
    pub samples: Vec<SpikeSample>,
}

impl SpikeDataset {
    /// Serialises the set.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.channels as u32).to_le_bytes());
        out.extend_from_slice(&(self.samples.len() as u32).to_le_bytes());
        for s in &self.samples {
            out.push(s.label);
            out.push(u8::from(s.test));
            out.extend_from_slice(&s.speaker.to_le_bytes());
            out.extend_from_slice(&(s.spikes.len() as u32).to_le_bytes());
            for sp in &s.spikes {
                let tick = (f64::from(sp.time) / TICK).round();
                if !(0.0..=f64::from(u16::MAX)).contains(&tick) {
                    bail!("spike time {} s does not fit the format (at most 6.5 s)", sp.time);
                }
                out.extend_from_slice(&(tick as u16).to_le_bytes());
                out.extend_from_slice(&sp.unit.to_le_bytes());
            }
        }
        Ok(out)
    }

    /// Reads a file written by [`SpikeDataset::to_bytes`]; every inconsistency is an error
    /// naming the sample.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_bytes(&bytes).with_context(|| format!("{}", path.display()))
    }

    /// Parses the format.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < 24 || &bytes[..16] != MAGIC {
            bail!("not a plasticity spike data file (bad magic bytes)");
        }
        let u32_at = |p: usize| u32::from_le_bytes(bytes[p..p + 4].try_into().expect("4 bytes"));
        let channels = u32_at(16) as usize;
        let count = u32_at(20) as usize;
        let mut pos = 24;
        let mut samples = Vec::with_capacity(count.min(1 << 20));
        for i in 0..count {
            if bytes.len() < pos + 8 {
                bail!("truncated in the header of sample {i}");
            }
            let label = bytes[pos];
            let test = bytes[pos + 1] != 0;
            let speaker = u16::from_le_bytes([bytes[pos + 2], bytes[pos + 3]]);
            let n = u32_at(pos + 4) as usize;
            pos += 8;
            if bytes.len() - pos < n * 4 {
                bail!("truncated in the spikes of sample {i}");
            }
            let mut spikes = Vec::with_capacity(n);
            for k in 0..n {
                let p = pos + 4 * k;
                let tick = u16::from_le_bytes([bytes[p], bytes[p + 1]]);
                let unit = u16::from_le_bytes([bytes[p + 2], bytes[p + 3]]);
                if usize::from(unit) >= channels {
                    bail!("sample {i}: spike on channel {unit}, the file has {channels} channels");
                }
                spikes.push(Spike {
                    time: (f64::from(tick) * TICK) as f32,
                    unit,
                });
            }
            pos += n * 4;
            samples.push(SpikeSample {
                label,
                speaker,
                test,
                spikes,
            });
        }
        if pos != bytes.len() {
            bail!("{} unexpected bytes after the last sample", bytes.len() - pos);
        }
        Ok(SpikeDataset { channels, samples })
    }
}

/// Spike counts of `samples` binned into `steps` bins over `duration` seconds and pooled
/// by summing groups of `pool` neighbouring channels: `[steps, samples, ceil(channels/pool)]`.
/// Spikes after `duration` are dropped.
pub fn bin(samples: &[&SpikeSample], channels: usize, steps: usize, duration: f64, pool: usize) -> Array3<f32> {
    let pooled = channels.div_ceil(pool.max(1));
    let mut x = Array3::zeros((steps, samples.len(), pooled));
    for (b, s) in samples.iter().enumerate() {
        for sp in &s.spikes {
            let t = (f64::from(sp.time) / duration * steps as f64) as usize;
            if t < steps {
                x[[t, b, usize::from(sp.unit) / pool.max(1)]] += 1.0;
            }
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let set = SpikeDataset {
            channels: 4,
            samples: vec![SpikeSample {
                label: 3,
                speaker: 7,
                test: true,
                spikes: vec![Spike { time: 0.0123, unit: 1 }, Spike { time: 0.5, unit: 3 }],
            }],
        };
        let bytes = set.to_bytes().unwrap();
        let back = SpikeDataset::from_bytes(&bytes).unwrap();
        assert_eq!(back.samples[0].spikes[1].unit, 3);
        assert!((back.samples[0].spikes[0].time - 0.0123).abs() < 1e-4);
        assert!(
            SpikeDataset::from_bytes(&bytes[..bytes.len() - 2])
                .unwrap_err()
                .to_string()
                .contains("sample 0")
        );
        let mut bad = bytes.clone();
        let last = bad.len() - 2;
        bad[last] = 9;
        assert!(
            SpikeDataset::from_bytes(&bad)
                .unwrap_err()
                .to_string()
                .contains("channel 9")
        );
        let x = bin(&[&back.samples[0]], 4, 10, 1.0, 2);
        assert_eq!(x.shape(), &[10, 1, 2]);
        assert_eq!(x.sum(), 2.0);
        assert_eq!(x[[5, 0, 1]], 1.0);
    }
}
