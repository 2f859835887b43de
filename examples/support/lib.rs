//! Support code shared by the examples: atomic file writing and safetensors dumps.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use safetensors::{Dtype, tensor::TensorView};

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, synced, then
/// renamed over the target, so a reader never sees a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .context("the output path has no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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
