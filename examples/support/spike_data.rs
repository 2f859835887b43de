//! A compact file of spike-encoded utterances (the bundled spoken-digits set), and binning
//! of spikes into network input.
//!
//! Format (little-endian): the 16-byte magic `PLASTICITY-SPK2\0`, `u32` channels, `u32`
//! sample count, then per sample: `u8` label, `u8` split (0 train, 1 test), `u16` speaker,
//! `u32` spike count, then the spikes in time order, each one LEB128 varint
//! `(Δtick << bits) | channel`: `Δtick` is the time since the previous spike in ticks of 0.1 ms
//! and `bits` the bits needed for a channel id. A typical spike takes two bytes.

use std::path::Path;

use anyhow::{Context, Result, bail};
use ndarray::Array3;

use crate::audio::Spike;

const MAGIC: &[u8; 16] = b"PLASTICITY-SPK2\0";
/// The first version of the format, two `u16` per spike.
const MAGIC_V1: &[u8; 16] = b"PLASTICITY-SPK1\0";
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
    /// Serialises the set. Spike times must lie in 0 to 7 days (ticks of 0.1 ms in a `u32`).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let bits = channel_bits(self.channels);
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.channels as u32).to_le_bytes());
        out.extend_from_slice(&(self.samples.len() as u32).to_le_bytes());
        for (i, s) in self.samples.iter().enumerate() {
            out.push(s.label);
            out.push(u8::from(s.test));
            out.extend_from_slice(&s.speaker.to_le_bytes());
            out.extend_from_slice(&(s.spikes.len() as u32).to_le_bytes());
            let mut ticks = Vec::with_capacity(s.spikes.len());
            for sp in &s.spikes {
                let tick = (f64::from(sp.time) / TICK).round();
                if !(0.0..=f64::from(u32::MAX)).contains(&tick) {
                    bail!("sample {i}: spike time {} s does not fit the format", sp.time);
                }
                if usize::from(sp.unit) >= self.channels {
                    bail!(
                        "sample {i}: spike on channel {}, the set has {} channels",
                        sp.unit,
                        self.channels
                    );
                }
                ticks.push((tick as u64, u64::from(sp.unit)));
            }
            ticks.sort_unstable();
            let mut last = 0;
            for (tick, unit) in ticks {
                write_varint(&mut out, ((tick - last) << bits) | unit);
                last = tick;
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
        if bytes.len() >= 16 && &bytes[..16] == MAGIC_V1 {
            bail!("written in the first version of the format; regenerate it with make_spoken_digits");
        }
        if bytes.len() < 24 || &bytes[..16] != MAGIC {
            bail!("not a plasticity spike data file (bad magic bytes)");
        }
        let u32_at = |p: usize| u32::from_le_bytes(bytes[p..p + 4].try_into().expect("4 bytes"));
        let channels = u32_at(16) as usize;
        let count = u32_at(20) as usize;
        if channels == 0 || channels > usize::from(u16::MAX) + 1 {
            bail!("{channels} channels; expected 1 to 65536");
        }
        let bits = channel_bits(channels);
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
            // Every spike takes at least one byte.
            let mut spikes = Vec::with_capacity(n.min(bytes.len() - pos));
            let mut tick = 0u64;
            for _ in 0..n {
                let Some((v, used)) = read_varint(&bytes[pos..]) else {
                    bail!("truncated or corrupt in the spikes of sample {i}");
                };
                pos += used;
                let Some(next) = tick.checked_add(v >> bits) else {
                    bail!("sample {i}: spike times overflow (corrupt time steps)");
                };
                tick = next;
                let unit = v & ((1 << bits) - 1);
                if unit as usize >= channels {
                    bail!("sample {i}: spike on channel {unit}, the file has {channels} channels");
                }
                spikes.push(Spike {
                    time: (tick as f64 * TICK) as f32,
                    unit: unit as u16,
                });
            }
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

/// Loads the training and test splits: the compact format (one file holding both), or with
/// the `hdf5` feature an SHD/SSC training file (`.h5`) and its test file, by default the same
/// name with `train` replaced by `test`. `channels` applies to HDF5 files, which do not
/// store it. Skipped spikes are reported once per file on standard error.
pub fn load_splits(data: &Path, test_data: Option<&Path>, channels: usize) -> Result<SpikeDataset> {
    let is_h5 = data.extension().is_some_and(|e| e == "h5" || e == "hdf5");
    if !is_h5 {
        if test_data.is_some() {
            bail!(
                "--test-data goes with an .h5 training file; {} holds both splits",
                data.display()
            );
        }
        return SpikeDataset::load(data);
    }
    let test = match test_data {
        Some(t) => t.to_path_buf(),
        None => {
            let name = data
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !name.contains("train") {
                bail!(
                    "{}: give the test split with --test-data (the name has no `train` to replace)",
                    data.display()
                );
            }
            data.with_file_name(name.replace("train", "test"))
        }
    };
    load_h5_splits(data, &test, channels)
}

#[cfg(feature = "hdf5")]
fn load_h5_splits(train: &Path, test: &Path, channels: usize) -> Result<SpikeDataset> {
    let mut samples = Vec::new();
    for (path, is_test) in [(train, false), (test, true)] {
        let (set, report) = crate::shd::read_shd(path, channels, is_test)?;
        eprintln!("{}: {report}", path.display());
        samples.extend(set.samples);
    }
    Ok(SpikeDataset { channels, samples })
}

#[cfg(not(feature = "hdf5"))]
fn load_h5_splits(train: &Path, _test: &Path, _channels: usize) -> Result<SpikeDataset> {
    bail!(
        "{}: reading HDF5 needs the `hdf5` feature (cargo run --release --features hdf5 ...) and \
         the system HDF5 library (Debian: libhdf5-dev)",
        train.display()
    )
}

/// Bits that hold any channel id below `channels`.
fn channel_bits(channels: usize) -> u32 {
    usize::BITS - channels.saturating_sub(1).max(1).leading_zeros()
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The value and the bytes it took; `None` if the input ends inside it or it overflows.
fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (k, &b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * k);
        if b & 0x80 == 0 {
            return Some((v, k + 1));
        }
    }
    None
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
    fn split_loading_explains_what_is_wrong() {
        let msg = |r: Result<SpikeDataset>| format!("{:#}", r.unwrap_err());
        let e = msg(load_splits(Path::new("set.bin"), Some(Path::new("t.bin")), 700));
        assert!(e.contains("holds both splits"), "{e}");
        let e = msg(load_splits(Path::new("digits.h5"), None, 700));
        assert!(e.contains("--test-data"), "{e}");
        let e = msg(load_splits(Path::new("/nonexistent/shd_train.h5"), None, 700));
        if cfg!(feature = "hdf5") {
            assert!(e.contains("shd_train.h5"), "{e}");
        } else {
            assert!(e.contains("`hdf5` feature"), "{e}");
        }
        let e = msg(load_splits(Path::new("/nonexistent/set.bin"), None, 700));
        assert!(e.contains("/nonexistent/set.bin"), "{e}");
    }

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
            SpikeDataset::from_bytes(&bytes[..bytes.len() - 1])
                .unwrap_err()
                .to_string()
                .contains("sample 0")
        );
        // Claim 3 channels: ids still take two bits, and the last spike's channel 3 is out of range.
        let mut bad = bytes.clone();
        bad[16..20].copy_from_slice(&3u32.to_le_bytes());
        assert!(
            SpikeDataset::from_bytes(&bad)
                .unwrap_err()
                .to_string()
                .contains("channel 3, the file has 3")
        );
        // Many spikes over 700 channels, with equal times and large gaps: exact to the tick,
        // sorted, and a second round trip changes nothing.
        let spikes: Vec<Spike> = (0..5000u32)
            .map(|k| Spike {
                time: ((k / 3) * (1 + k % 7)) as f32 * 1e-4,
                unit: ((k * 7919) % 700) as u16,
            })
            .collect();
        let big = SpikeDataset {
            channels: 700,
            samples: vec![SpikeSample {
                label: 19,
                speaker: 65535,
                test: false,
                spikes,
            }],
        };
        let once = SpikeDataset::from_bytes(&big.to_bytes().unwrap()).unwrap();
        let twice = SpikeDataset::from_bytes(&once.to_bytes().unwrap()).unwrap();
        assert_eq!(once, twice);
        let mut want: Vec<(u32, u16)> = big.samples[0]
            .spikes
            .iter()
            .map(|s| ((f64::from(s.time) / TICK).round() as u32, s.unit))
            .collect();
        want.sort_unstable();
        let got: Vec<(u32, u16)> = once.samples[0]
            .spikes
            .iter()
            .map(|s| ((f64::from(s.time) / TICK).round() as u32, s.unit))
            .collect();
        assert_eq!(got, want);
        let x = bin(&[&back.samples[0]], 4, 10, 1.0, 2);
        assert_eq!(x.shape(), &[10, 1, 2]);
        assert_eq!(x.sum(), 2.0);
        assert_eq!(x[[5, 0, 1]], 1.0);
    }

    /// A valid file of a few samples, the seed of the hostile files below.
    fn valid() -> Vec<u8> {
        let sample = |label, test, n: u32| SpikeSample {
            label,
            speaker: u16::from(label),
            test,
            spikes: (0..n)
                .map(|k| Spike {
                    time: k as f32 * 3e-3,
                    unit: (k * 37 % 700) as u16,
                })
                .collect(),
        };
        SpikeDataset {
            channels: 700,
            samples: vec![sample(1, false, 40), sample(2, true, 0), sample(19, false, 300)],
        }
        .to_bytes()
        .unwrap()
    }

    /// Hand-made broken files: each is refused with a message saying what is wrong, without
    /// allocating from the lengths it claims.
    #[test]
    fn hostile_files_are_refused() {
        let good = valid();
        let header = |channels: u32, count: u32| {
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&channels.to_le_bytes());
            b.extend_from_slice(&count.to_le_bytes());
            b
        };
        let mut huge_spikes = header(700, 1);
        huge_spikes.extend_from_slice(&[0, 0, 0, 0]);
        huge_spikes.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut overflow = header(2, 1);
        overflow.extend_from_slice(&[0, 0, 0, 0, 3, 0, 0, 0]);
        // Three spikes whose time steps sum past 2^64 ticks (each varint is 10 bytes).
        for _ in 0..3 {
            overflow.extend_from_slice(&[0xfe; 9]);
            overflow.push(0x01);
        }
        let mut endless_varint = header(2, 1);
        endless_varint.extend_from_slice(&[0, 0, 0, 0, 1, 0, 0, 0]);
        endless_varint.extend_from_slice(&[0xff; 11]);
        let mut trailing = good.clone();
        trailing.push(0);
        let mut v1 = good.clone();
        v1[..16].copy_from_slice(MAGIC_V1);
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", Vec::new(), "bad magic"),
            ("random", b"\x89PNG\r\n\x1a\n not spikes at all".to_vec(), "bad magic"),
            ("magic only", MAGIC.to_vec(), "bad magic"),
            ("first version", v1, "first version"),
            ("no channels", header(0, 0), "0 channels"),
            ("too many channels", header(1 << 20, 0), "expected 1 to 65536"),
            (
                "4e9 samples claimed",
                header(700, u32::MAX),
                "truncated in the header of sample 0",
            ),
            ("4e9 spikes claimed", huge_spikes, "sample 0"),
            ("time overflow", overflow, "overflow"),
            ("endless varint", endless_varint, "corrupt in the spikes of sample 0"),
            ("trailing bytes", trailing, "1 unexpected bytes"),
            ("truncated", good[..good.len() - 3].to_vec(), "sample 2"),
        ];
        for (what, bytes, expected) in cases {
            let e = format!("{:#}", SpikeDataset::from_bytes(&bytes).unwrap_err());
            assert!(e.contains(expected), "{what}: {e}");
        }
        // Every truncation of a valid file is an error.
        for cut in 0..good.len() {
            assert!(SpikeDataset::from_bytes(&good[..cut]).is_err(), "cut at {cut}");
        }
    }

    proptest::proptest! {
        /// Arbitrary bytes, and valid files with bytes changed, parse or fail: never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            edits in proptest::collection::vec((0usize..4000, proptest::num::u8::ANY), 1..8),
        ) {
            let _ = SpikeDataset::from_bytes(&tail);
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&tail);
            let _ = SpikeDataset::from_bytes(&with_magic);
            let mut edited = valid();
            for (at, value) in edits {
                let n = edited.len();
                edited[at % n] = value;
            }
            if let Ok(set) = SpikeDataset::from_bytes(&edited) {
                // Whatever parses is consistent with what the rest of the code assumes.
                for s in &set.samples {
                    proptest::prop_assert!(s.spikes.iter().all(|sp| usize::from(sp.unit) < set.channels));
                }
            }
        }
    }
}
