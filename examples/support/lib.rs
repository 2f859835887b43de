//! Support code shared by the examples: the audio-to-spike encoder, the spike data file,
//! PNG plots, SHD/SSC HDF5 files (feature `hdf5`), atomic file writing, safetensors dumps and
//! the per-run metrics and summary.

pub mod audio;
pub mod flags;
pub mod job;
pub mod plots;
pub mod resume;
pub mod run_log;
#[cfg(feature = "hdf5")]
pub mod shd;
pub mod spike_data;

use std::collections::BTreeMap;
use std::path::Path;

use std::io::Write;

use anyhow::{Context, Result};
use safetensors::{Dtype, tensor::TensorView};

/// Writes `bytes` to `path` atomically: a temporary file in the same folder is written,
/// synced and renamed over the target, then the folder is synced, so a reader (or a crash)
/// sees the old file or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("{}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("{}", tmp.path().display()))?;
    tmp.persist(path).with_context(|| format!("{}", path.display()))?;
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("{}", dir.display()))?;
    Ok(())
}

/// f64 tensors by name, written as one safetensors file.
#[derive(Default)]
pub struct TensorDump {
    tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)>,
}

impl TensorDump {
    /// Adds a tensor of `shape` (row-major `values`).
    pub fn add(&mut self, name: &str, shape: &[usize], values: impl IntoIterator<Item = f64>) {
        let bytes: Vec<u8> = values.into_iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            bytes.len(),
            shape.iter().product::<usize>() * 8,
            "{name}: shape does not match the data"
        );
        self.tensors.insert(name.to_string(), (shape.to_vec(), bytes));
    }

    /// Writes the file atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let views: Vec<(String, TensorView<'_>)> = self
            .tensors
            .iter()
            .map(|(k, (shape, bytes))| Ok((k.clone(), TensorView::new(Dtype::F64, shape.clone(), bytes)?)))
            .collect::<Result<_>>()?;
        let bytes = safetensors::serialize(views, None)?;
        write_atomic(path, &bytes)
    }
}
