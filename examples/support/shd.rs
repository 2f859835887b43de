//! Spiking Heidelberg Digits (SHD) and Spiking Speech Commands (SSC) HDF5 files: reading
//! them into a [`SpikeDataset`], and writing a set in the same layout.
//!
//! The layout is SHD's: `spikes/times` (one variable-length array of spike times in seconds
//! per sample, stored as 16-bit floats), `spikes/units` (one variable-length array of channel
//! ids per sample), `labels`, and `extra/speaker`. SHD and SSC ship one file per split
//! (`shd_train.h5`, `shd_test.h5`). Reading accepts any floating-point type for the times and
//! any integer type for the units, labels and speakers; HDF5 converts on read.
//!
//! Needs the system HDF5 library (Debian: `libhdf5-dev`), hence the `hdf5` cargo feature.

use std::path::{Path, PathBuf};

use half::f16;
use hdf5::types::VarLenArray;

use crate::audio::Spike;
use crate::spike_data::{SpikeDataset, SpikeSample};

/// The most samples a file may hold (SSC, the largest of the sets, has about 75 000).
pub const MAX_SAMPLES: usize = 10_000_000;

/// Channels of the SHD/SSC cochlea model.
pub const SHD_CHANNELS: usize = 700;

/// What can go wrong reading or writing an SHD-layout file.
#[derive(Debug, thiserror::Error)]
pub enum ShdError {
    /// The HDF5 library could not open, read or write the file: missing, truncated, not HDF5.
    #[error("{path}: {what}: {source}")]
    Hdf5 {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// The library's message.
        source: hdf5::Error,
    },
    /// A dataset the layout needs is missing.
    #[error("{path}: no dataset `{name}` (expected SHD's layout: spikes/times, spikes/units, labels)")]
    Missing {
        /// The file.
        path: PathBuf,
        /// The dataset.
        name: &'static str,
    },
    /// Two datasets that hold one entry per sample disagree on the number of samples.
    #[error("{path}: `{name}` has {found} entries, `spikes/times` has {expected}")]
    Length {
        /// The file.
        path: PathBuf,
        /// The dataset.
        name: &'static str,
        /// Its number of entries.
        found: usize,
        /// The number of samples.
        expected: usize,
    },
    /// A dataset is not a list of at most [`MAX_SAMPLES`] entries (its size is checked before
    /// anything is read, so a corrupt or hostile size never becomes an allocation).
    #[error("{path}: `{name}` has shape {shape:?}, expected one dimension of at most {max} entries")]
    Shape {
        /// The file.
        path: PathBuf,
        /// The dataset.
        name: &'static str,
        /// Its shape.
        shape: Vec<usize>,
        /// The largest number of entries accepted.
        max: usize,
    },
    /// A sample has a different number of spike times and units.
    #[error("{path}: sample {sample} has {times} spike times but {units} units")]
    Ragged {
        /// The file.
        path: PathBuf,
        /// Sample index.
        sample: usize,
        /// Spike times.
        times: usize,
        /// Units.
        units: usize,
    },
    /// A spike's channel id is not below the channel count.
    #[error("{path}: sample {sample} has a spike on unit {unit}, expected units 0..{channels}")]
    Unit {
        /// The file.
        path: PathBuf,
        /// Sample index.
        sample: usize,
        /// The offending unit.
        unit: i64,
        /// Channel count.
        channels: usize,
    },
    /// A label or speaker id does not fit the in-memory types (labels 0–255, speakers 0–65535).
    #[error("{path}: sample {sample} has {field} {value}, expected 0..={max}")]
    Field {
        /// The file.
        path: PathBuf,
        /// Sample index.
        sample: usize,
        /// `label` or `speaker`.
        field: &'static str,
        /// The value found.
        value: i64,
        /// The largest value allowed.
        max: i64,
    },
    /// A spike time cannot be stored as a finite 16-bit float of seconds.
    #[error("sample {sample}: spike time {time} s cannot be written (expected 0 to 65504 s)")]
    Time {
        /// Sample index.
        sample: usize,
        /// The time.
        time: f32,
    },
}

/// What reading a file skipped or noticed, for the caller to report once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShdReport {
    /// Samples read.
    pub samples: usize,
    /// Spikes read.
    pub spikes: usize,
    /// Spikes dropped because their time was NaN, infinite or negative.
    pub invalid_times: usize,
    /// Samples that had at least one such spike.
    pub samples_with_invalid_times: usize,
    /// Samples without any spike (kept: they are valid, silent inputs).
    pub empty_samples: usize,
}

impl std::fmt::Display for ShdReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} samples, {} spikes", self.samples, self.spikes)?;
        if self.invalid_times > 0 {
            write!(
                f,
                "; skipped {} spikes with NaN, infinite or negative times in {} samples",
                self.invalid_times, self.samples_with_invalid_times
            )?;
        }
        if self.empty_samples > 0 {
            write!(f, "; {} samples have no spikes", self.empty_samples)?;
        }
        Ok(())
    }
}

fn h5err(path: &Path, what: impl Into<String>) -> impl FnOnce(hdf5::Error) -> ShdError {
    let path = path.to_path_buf();
    let what = what.into();
    move |source| ShdError::Hdf5 { path, what, source }
}

fn dataset(file: &hdf5::File, path: &Path, name: &'static str) -> Result<hdf5::Dataset, ShdError> {
    if !file.link_exists(name) {
        return Err(ShdError::Missing {
            path: path.to_path_buf(),
            name,
        });
    }
    let ds = file.dataset(name).map_err(h5err(path, format!("opening `{name}`")))?;
    let shape = ds.shape();
    if shape.len() != 1 || shape[0] > MAX_SAMPLES {
        return Err(ShdError::Shape {
            path: path.to_path_buf(),
            name,
            shape,
            max: MAX_SAMPLES,
        });
    }
    Ok(ds)
}

/// Reads an SHD/SSC file. Every sample is marked `test`. Spikes with NaN, infinite or
/// negative times are skipped and counted in the report; a unit outside `0..channels` is an
/// error naming the sample. Spikes are returned sorted by time.
pub fn read_shd(path: &Path, channels: usize, test: bool) -> Result<(SpikeDataset, ShdReport), ShdError> {
    let file = hdf5::File::open(path).map_err(h5err(path, "opening"))?;
    let times: Vec<VarLenArray<f32>> = dataset(&file, path, "spikes/times")?
        .read_raw()
        .map_err(h5err(path, "reading `spikes/times`"))?;
    let units: Vec<VarLenArray<i64>> = dataset(&file, path, "spikes/units")?
        .read_raw()
        .map_err(h5err(path, "reading `spikes/units`"))?;
    let labels: Vec<i64> = dataset(&file, path, "labels")?
        .read_raw()
        .map_err(h5err(path, "reading `labels`"))?;
    let speakers: Option<Vec<i64>> = if file.link_exists("extra/speaker") {
        Some(
            dataset(&file, path, "extra/speaker")?
                .read_raw()
                .map_err(h5err(path, "reading `extra/speaker`"))?,
        )
    } else {
        None
    };
    let n = times.len();
    let check_len = |name: &'static str, found: usize| {
        if found == n {
            Ok(())
        } else {
            Err(ShdError::Length {
                path: path.to_path_buf(),
                name,
                found,
                expected: n,
            })
        }
    };
    check_len("spikes/units", units.len())?;
    check_len("labels", labels.len())?;
    if let Some(s) = &speakers {
        check_len("extra/speaker", s.len())?;
    }
    let field = |sample: usize, field: &'static str, value: i64, max: i64| {
        if (0..=max).contains(&value) {
            Ok(())
        } else {
            Err(ShdError::Field {
                path: path.to_path_buf(),
                sample,
                field,
                value,
                max,
            })
        }
    };
    let mut report = ShdReport {
        samples: n,
        ..ShdReport::default()
    };
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let (t, u) = (times[i].as_slice(), units[i].as_slice());
        if t.len() != u.len() {
            return Err(ShdError::Ragged {
                path: path.to_path_buf(),
                sample: i,
                times: t.len(),
                units: u.len(),
            });
        }
        field(i, "label", labels[i], i64::from(u8::MAX))?;
        let speaker = match &speakers {
            Some(s) => {
                field(i, "speaker", s[i], i64::from(u16::MAX))?;
                s[i] as u16
            }
            None => 0,
        };
        let mut spikes = Vec::with_capacity(t.len());
        let mut invalid = 0;
        for (&time, &unit) in t.iter().zip(u) {
            if !(0..channels as i64).contains(&unit) {
                return Err(ShdError::Unit {
                    path: path.to_path_buf(),
                    sample: i,
                    unit,
                    channels,
                });
            }
            if !time.is_finite() || time < 0.0 {
                invalid += 1;
                continue;
            }
            spikes.push(Spike {
                time,
                unit: unit as u16,
            });
        }
        spikes.sort_by(|a, b| a.time.total_cmp(&b.time).then(a.unit.cmp(&b.unit)));
        report.spikes += spikes.len();
        report.invalid_times += invalid;
        report.samples_with_invalid_times += usize::from(invalid > 0);
        report.empty_samples += usize::from(spikes.is_empty());
        samples.push(SpikeSample {
            label: labels[i] as u8,
            speaker,
            test,
            spikes,
        });
    }
    Ok((SpikeDataset { channels, samples }, report))
}

/// Writes `samples` in SHD's layout: times as 16-bit floats of seconds, units, labels and
/// speakers as 16-bit unsigned integers, and `extra/keys` with the class names if given.
/// The file is written next to `path` and renamed into place, so a reader never sees half a
/// file.
pub fn write_shd(path: &Path, samples: &[&SpikeSample], keys: &[&str]) -> Result<(), ShdError> {
    let mut times = Vec::with_capacity(samples.len());
    let mut units = Vec::with_capacity(samples.len());
    for (i, s) in samples.iter().enumerate() {
        let mut t = Vec::with_capacity(s.spikes.len());
        for sp in &s.spikes {
            let h = f16::from_f32(sp.time);
            if !h.is_finite() || sp.time < 0.0 {
                return Err(ShdError::Time {
                    sample: i,
                    time: sp.time,
                });
            }
            t.push(h);
        }
        times.push(VarLenArray::from_slice(&t));
        units.push(VarLenArray::from_slice(
            &s.spikes.iter().map(|sp| sp.unit).collect::<Vec<u16>>(),
        ));
    }
    let labels: Vec<u16> = samples.iter().map(|s| u16::from(s.label)).collect();
    let speakers: Vec<u16> = samples.iter().map(|s| s.speaker).collect();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> hdf5::Result<()> {
        let file = hdf5::File::create(&tmp)?;
        let spikes = file.create_group("spikes")?;
        spikes.new_dataset_builder().with_data(&times).create("times")?;
        spikes.new_dataset_builder().with_data(&units).create("units")?;
        file.new_dataset_builder().with_data(&labels).create("labels")?;
        let extra = file.create_group("extra")?;
        extra.new_dataset_builder().with_data(&speakers).create("speaker")?;
        if !keys.is_empty() {
            let keys: Vec<hdf5::types::VarLenUnicode> = keys
                .iter()
                .map(|k| {
                    k.parse()
                        .map_err(|e| hdf5::Error::from(format!("class name {k:?}: {e}")))
                })
                .collect::<hdf5::Result<_>>()?;
            extra.new_dataset_builder().with_data(&keys).create("keys")?;
        }
        file.flush()?;
        Ok(())
    };
    let result = write().map_err(h5err(path, "writing"));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| ShdError::Hdf5 {
        path: path.to_path_buf(),
        what: "renaming the finished file into place".into(),
        source: hdf5::Error::from(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(label: u8, speaker: u16, spikes: &[(f32, u16)]) -> SpikeSample {
        SpikeSample {
            label,
            speaker,
            test: false,
            spikes: spikes.iter().map(|&(time, unit)| Spike { time, unit }).collect(),
        }
    }

    /// A fresh folder for one test; the test removes it when it passes.
    fn dir(test: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("plasticity-shd-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip() {
        let d = dir("round_trip");
        let path = d.join("round_trip.h5");
        let a = sample(3, 7, &[(0.0125, 1), (0.5, 699)]);
        let b = sample(19, 300, &[]);
        write_shd(&path, &[&a, &b], &["zero", "fünf"]).unwrap();
        let (set, report) = read_shd(&path, SHD_CHANNELS, true).unwrap();
        assert_eq!(set.samples.len(), 2);
        assert_eq!(
            report,
            ShdReport {
                samples: 2,
                spikes: 2,
                empty_samples: 1,
                ..ShdReport::default()
            }
        );
        let s = &set.samples[0];
        assert_eq!((s.label, s.speaker, s.test), (3, 7, true));
        assert_eq!(s.spikes[1].unit, 699);
        // 16-bit floats keep 11 significant bits: 0.0125 s to within 10 µs.
        assert!((s.spikes[0].time - 0.0125).abs() < 1e-5);
        assert_eq!(s.spikes[1].time, 0.5);
        assert!(set.samples[1].spikes.is_empty());
        let file = hdf5::File::open(&path).unwrap();
        let keys: Vec<hdf5::types::VarLenUnicode> = file.dataset("extra/keys").unwrap().read_raw().unwrap();
        assert_eq!(keys[1].as_str(), "fünf");
        // Nothing is left beside the file.
        let leftovers = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".tmp-"))
            .count();
        assert_eq!(leftovers, 0);
        std::fs::remove_dir_all(d).unwrap();
    }

    /// Writes a file with f32 times and i32 units, as other tools might.
    fn write_raw(path: &Path, times: &[&[f32]], units: &[&[i32]], labels: &[i32]) {
        let file = hdf5::File::create(path).unwrap();
        let g = file.create_group("spikes").unwrap();
        let t: Vec<VarLenArray<f32>> = times.iter().map(|t| VarLenArray::from_slice(t)).collect();
        let u: Vec<VarLenArray<i32>> = units.iter().map(|u| VarLenArray::from_slice(u)).collect();
        g.new_dataset_builder().with_data(&t).create("times").unwrap();
        g.new_dataset_builder().with_data(&u).create("units").unwrap();
        file.new_dataset_builder().with_data(labels).create("labels").unwrap();
    }

    #[test]
    fn invalid_times_are_skipped_and_counted() {
        let d = dir("nan");
        let path = d.join("nan.h5");
        write_raw(
            &path,
            &[&[0.3, f32::NAN, 0.1], &[f32::INFINITY, -0.5], &[0.2]],
            &[&[1, 2, 3], &[4, 5], &[6]],
            &[0, 1, 2],
        );
        let (set, report) = read_shd(&path, 10, false).unwrap();
        assert_eq!(report.invalid_times, 3);
        assert_eq!(report.samples_with_invalid_times, 2);
        assert_eq!(report.empty_samples, 1);
        assert_eq!(report.spikes, 3);
        // Sorted by time, NaN gone; no speaker dataset means speaker 0.
        let s = &set.samples[0];
        assert_eq!(s.spikes.iter().map(|s| s.unit).collect::<Vec<_>>(), vec![3, 1]);
        assert_eq!(s.speaker, 0);
        assert!(report.to_string().contains("skipped 3 spikes"));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let d = dir("bad");
        let range = d.join("range.h5");
        write_raw(&range, &[&[0.1], &[0.1, 0.2]], &[&[1], &[2, 700]], &[0, 1]);
        let e = read_shd(&range, SHD_CHANNELS, false).unwrap_err();
        assert!(
            matches!(
                e,
                ShdError::Unit {
                    sample: 1,
                    unit: 700,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("sample 1"), "{e}");
        let negative = d.join("negative.h5");
        write_raw(&negative, &[&[0.1]], &[&[-1]], &[0]);
        assert!(matches!(
            read_shd(&negative, SHD_CHANNELS, false).unwrap_err(),
            ShdError::Unit { unit: -1, .. }
        ));
        let ragged = d.join("ragged.h5");
        write_raw(&ragged, &[&[0.1, 0.2]], &[&[1]], &[0]);
        assert!(matches!(
            read_shd(&ragged, SHD_CHANNELS, false).unwrap_err(),
            ShdError::Ragged { sample: 0, .. }
        ));
        let labels = d.join("labels.h5");
        write_raw(&labels, &[&[0.1]], &[&[1]], &[0, 1]);
        assert!(matches!(
            read_shd(&labels, SHD_CHANNELS, false).unwrap_err(),
            ShdError::Length { name: "labels", .. }
        ));
        let big_label = d.join("big_label.h5");
        write_raw(&big_label, &[&[0.1]], &[&[1]], &[256]);
        assert!(matches!(
            read_shd(&big_label, SHD_CHANNELS, false).unwrap_err(),
            ShdError::Field { field: "label", .. }
        ));
        let missing = d.join("missing.h5");
        hdf5::File::create(&missing).unwrap();
        assert!(matches!(
            read_shd(&missing, SHD_CHANNELS, false).unwrap_err(),
            ShdError::Missing {
                name: "spikes/times",
                ..
            }
        ));
        // Truncated and corrupt files, and a file that is not there.
        let good = d.join("good.h5");
        let a = sample(1, 2, &[(0.1, 3); 200]);
        write_shd(&good, &[&a; 20], &[]).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        let truncated = d.join("truncated.h5");
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        let e = read_shd(&truncated, SHD_CHANNELS, false).unwrap_err();
        assert!(matches!(e, ShdError::Hdf5 { .. }), "{e}");
        let corrupt = d.join("corrupt.h5");
        std::fs::write(&corrupt, b"this is not an HDF5 file at all").unwrap();
        let e = read_shd(&corrupt, SHD_CHANNELS, false).unwrap_err();
        assert!(e.to_string().contains("corrupt.h5"), "{e}");
        let e = read_shd(&d.join("absent.h5"), SHD_CHANNELS, false).unwrap_err();
        assert!(matches!(e, ShdError::Hdf5 { .. }), "{e}");
        // Sizes that claim billions of entries (a chunked dataset never written takes no
        // room in the file), more than one dimension, and the wrong types.
        let huge = d.join("huge.h5");
        {
            write_raw(&huge, &[&[0.1]], &[&[1]], &[0]);
            let file = hdf5::File::open_rw(&huge).unwrap();
            file.unlink("labels").unwrap();
            file.new_dataset::<i64>()
                .chunk(4096)
                .shape(1usize << 34)
                .create("labels")
                .unwrap();
        }
        assert!(std::fs::metadata(&huge).unwrap().len() < 1 << 20);
        let e = read_shd(&huge, SHD_CHANNELS, false).unwrap_err();
        assert!(matches!(e, ShdError::Shape { name: "labels", .. }), "{e}");
        let flat = d.join("flat.h5");
        {
            write_raw(&flat, &[&[0.1]], &[&[1]], &[0]);
            let file = hdf5::File::open_rw(&flat).unwrap();
            file.unlink("labels").unwrap();
            file.new_dataset_builder()
                .with_data(&ndarray::arr2(&[[0i64, 1], [2, 3]]))
                .create("labels")
                .unwrap();
        }
        let e = read_shd(&flat, SHD_CHANNELS, false).unwrap_err();
        assert!(matches!(e, ShdError::Shape { name: "labels", .. }), "{e}");
        let strings = d.join("strings.h5");
        {
            write_raw(&strings, &[&[0.1]], &[&[1]], &[0]);
            let file = hdf5::File::open_rw(&strings).unwrap();
            file.unlink("labels").unwrap();
            let names: Vec<hdf5::types::VarLenUnicode> = vec!["zero".parse().unwrap()];
            file.new_dataset_builder().with_data(&names).create("labels").unwrap();
        }
        let e = read_shd(&strings, SHD_CHANNELS, false).unwrap_err();
        assert!(matches!(e, ShdError::Hdf5 { .. }), "{e}");
        assert!(e.to_string().contains("reading `labels`"), "{e}");
        // Times that a 16-bit float cannot hold are refused on writing.
        let far = sample(0, 0, &[(1e6, 0)]);
        assert!(matches!(
            write_shd(&d.join("far.h5"), &[&far], &[]).unwrap_err(),
            ShdError::Time { sample: 0, .. }
        ));
        std::fs::remove_dir_all(d).unwrap();
    }
}
