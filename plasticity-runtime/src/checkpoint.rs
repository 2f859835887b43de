//! Checkpoints: a network's trainable tensors (and a trainer's optimiser state) in one
//! [safetensors](https://github.com/huggingface/safetensors) file, written atomically and read
//! back with every inconsistency reported as an error.
//!
//! Tensors are stored in the network's float type (`F32` or `F64`) under the names of
//! [`Network::tensor_name`] (and `optimizer.*` for a trainer's state). The metadata holds the
//! format and its version, the network's structure ([`Network::structure`]), the float type,
//! a fingerprint of each model's generated code (its published pattern, formulas included),
//! and, for a trainer, its configuration. A file written for another structure or another
//! version of a model is refused with an error naming both. Values load into either float
//! type.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::error::{Error, Result};
use crate::network::Network;
use crate::params::Slot;
use crate::real::Float;

/// The `format` entry of the metadata.
const FORMAT: &str = "plasticity-checkpoint";
/// The `version` entry: files of another version are refused.
const VERSION: &str = "3";

/// Named tensors, in a stable order (values widened to `f64`, which is exact for `f32`).
pub(crate) type Tensors = BTreeMap<String, ArrayD<f64>>;

/// The metadata of a checkpoint, as stored.
pub(crate) type Metadata = HashMap<String, String>;

/// FNV-1a, 64 bits: a fingerprint, not a cryptographic hash.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn format_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Writes `v` little-endian into `dst`: as an f32 when `dst` has 4 bytes, as an f64 when 8
/// (the two float types of checkpoints and of gradient messages between ranks).
pub(crate) fn put_le(v: f64, dst: &mut [u8]) {
    if dst.len() == 4 {
        dst.copy_from_slice(&(v as f32).to_le_bytes());
    } else {
        dst.copy_from_slice(&v.to_le_bytes());
    }
}

/// Reads a value written by [`put_le`] (4 bytes: f32, 8: f64).
pub(crate) fn get_le(src: &[u8]) -> f64 {
    match src.len() {
        4 => f64::from(f32::from_le_bytes(src.try_into().expect("4 bytes"))),
        _ => f64::from_le_bytes(src.try_into().expect("8 bytes")),
    }
}

/// Serialises `tensors` with `metadata`, each tensor as `dtype` (`F32` or `F64`).
pub(crate) fn encode(metadata: Metadata, tensors: &Tensors, dtype: Dtype) -> Result<Vec<u8>> {
    let data: Vec<(&String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| {
            let width = if dtype == Dtype::F32 { 4 } else { 8 };
            let mut bytes = vec![0u8; t.len() * width];
            for (&v, dst) in t.iter().zip(bytes.chunks_exact_mut(width)) {
                put_le(v, dst);
            }
            (name, t.shape().to_vec(), bytes)
        })
        .collect();
    let views = data
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(dtype, shape.clone(), bytes)
                .map(|v| ((*name).clone(), v))
                .map_err(|e| Error::State(format!("checkpoint tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, Some(metadata)).map_err(|e| Error::State(format!("checkpoint: {e}")))
}

/// Parses a checkpoint: its metadata and tensors. Every failure is an [`Error::Format`]
/// naming the file.
pub(crate) fn decode(path: &Path, bytes: &[u8]) -> Result<(Metadata, Tensors)> {
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| {
        format_error(
            path,
            format!("not a readable safetensors file (truncated or corrupt): {e}"),
        )
    })?;
    let metadata = header.metadata().clone().unwrap_or_default();
    match (metadata.get("format").map(String::as_str), metadata.get("version")) {
        (Some(FORMAT), Some(v)) if v == VERSION => {}
        (Some(FORMAT), v) => {
            return Err(format_error(
                path,
                format!("checkpoint version {v:?}, this build reads version {VERSION}"),
            ));
        }
        (other, _) => {
            return Err(format_error(
                path,
                format!("not a plasticity checkpoint (metadata format {other:?}, expected \"{FORMAT}\")"),
            ));
        }
    }
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| format_error(path, format!("corrupt safetensors file: {e}")))?;
    let mut tensors = Tensors::new();
    for (name, view) in st.tensors() {
        let width = match view.dtype() {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
            other => {
                return Err(format_error(
                    path,
                    format!("tensor {name}: dtype {other:?}, expected F32 or F64"),
                ));
            }
        };
        let values: Vec<f64> = view.data().chunks_exact(width).map(get_le).collect();
        let array = ArrayD::from_shape_vec(IxDyn(view.shape()), values)
            .map_err(|e| format_error(path, format!("tensor {name}: {e}")))?;
        tensors.insert(name, array);
    }
    Ok((metadata, tensors))
}

/// Writes `bytes` to `path` so that a reader sees the old file or the new one, never a part:
/// a temporary file in the same folder is written and synced, renamed over the target, and
/// the folder is synced so that the rename itself survives a crash.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source, p: &Path| Error::Io {
        path: p.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io(
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
            path,
        )
    })?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| io(e, &tmp))?;
        f.write_all(bytes).map_err(|e| io(e, &tmp))?;
        f.sync_all().map_err(|e| io(e, &tmp))?;
        std::fs::rename(&tmp, path).map_err(|e| io(e, path))?;
        #[cfg(unix)]
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(e, &dir))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads and parses the checkpoint at `path`.
pub(crate) fn read(path: &Path) -> Result<(Metadata, Tensors)> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode(path, &bytes)
}

impl<F: Float> Network<F> {
    /// The name of the tensor in `slot`, as checkpoints store it: `populations.P.learnable`,
    /// `populations.P.bias`, `projections.SOURCE->TARGET.PORT`, `readout.w.P`, `readout.b`.
    pub fn tensor_name(&self, slot: Slot) -> String {
        match slot {
            Slot::Learnable(p) => format!("populations.{}.learnable", self.populations[p].name),
            Slot::Bias(p) => format!("populations.{}.bias", self.populations[p].name),
            Slot::Projection(i) => format!("projections.{}", self.projections[i].name),
            Slot::ReadoutWeights(r) => format!("readout.w.{}", self.populations[self.readout.sources[r]].name),
            Slot::ReadoutBias => "readout.b".into(),
        }
    }

    /// The shape of the tensor in `slot`: `[n_post, n_pre]` for a dense projection, the
    /// synapse count for a sparse one.
    pub fn tensor_shape(&self, slot: Slot) -> Vec<usize> {
        match slot {
            Slot::Learnable(p) => self.params.learnable[p].shape().to_vec(),
            Slot::Bias(p) => self.params.bias[p].as_ref().map_or(vec![0], |b| b.shape().to_vec()),
            Slot::Projection(i) => {
                let proj = &self.projections[i];
                if proj.is_sparse() {
                    vec![proj.num_weights()]
                } else {
                    vec![proj.n_post, proj.n_pre]
                }
            }
            Slot::ReadoutWeights(r) => self.params.readout_w[r].shape().to_vec(),
            Slot::ReadoutBias => vec![self.readout.size],
        }
    }

    /// What the network is built of, as a checkpoint records it: every population's name,
    /// model and size.
    pub fn structure(&self) -> String {
        let pops: Vec<String> = (self.populations.iter())
            .map(|p| format!("{}:{}[{}]", p.name, p.pattern().model, p.size))
            .collect();
        pops.join(",")
    }

    /// Every model's fingerprint: `name:Model:hex` per population, comma-separated. The
    /// fingerprint hashes the model's published pattern (its partials, their formulas and the
    /// trace layout), so a model whose generated code changed no longer matches.
    pub fn model_fingerprints(&self) -> String {
        let each: Vec<String> = (self.populations.iter())
            .map(|p| {
                let pattern = p.pattern();
                let hash = fnv1a(format!("{pattern:?}").as_bytes());
                format!("{}:{}:{hash:016x}", p.name, pattern.model)
            })
            .collect();
        each.join(",")
    }

    /// The metadata a checkpoint of this network carries.
    pub(crate) fn metadata(&self) -> Metadata {
        let float = if std::mem::size_of::<F>() == 4 { "f32" } else { "f64" };
        Metadata::from([
            ("format".to_string(), FORMAT.to_string()),
            ("version".to_string(), VERSION.to_string()),
            ("structure".to_string(), self.structure()),
            ("models".to_string(), self.model_fingerprints()),
            ("float".to_string(), float.to_string()),
        ])
    }

    /// The dtype tensors of this network are stored in.
    pub(crate) fn dtype() -> Dtype {
        if std::mem::size_of::<F>() == 4 {
            Dtype::F32
        } else {
            Dtype::F64
        }
    }

    /// The trainable tensors by name ([`Network::tensor_name`]).
    pub(crate) fn tensors(&self) -> Tensors {
        let mut t = Tensors::new();
        self.params.for_each(|slot, values| {
            let data = values.iter().map(|v| v.to_f64()).collect();
            let array = ArrayD::from_shape_vec(IxDyn(&self.tensor_shape(slot)), data).expect("tensor shape");
            t.insert(self.tensor_name(slot), array);
        });
        t
    }

    /// Writes the network's trainable tensors to `path` as safetensors, atomically. The
    /// models' fixed parameters and the structure are part of the code that builds the
    /// network, not of the file (the metadata records them to refuse a mismatch).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path.as_ref(), &encode(self.metadata(), &self.tensors(), Self::dtype())?)
    }

    /// Reads tensors written by [`Network::save`] into this network, which must have the
    /// same structure. Nothing is changed unless the whole file matches.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let (metadata, mut tensors) = read(path)?;
        self.assign(path, &metadata, &mut tensors)?;
        if let Some(extra) = tensors.keys().next() {
            return Err(Error::Format {
                path: path.to_path_buf(),
                message: format!("unexpected tensor {extra}: the checkpoint is of a different network"),
            });
        }
        Ok(())
    }

    /// Moves this network's tensors out of `tensors` into a copy, checks it, and installs it.
    pub(crate) fn assign(&mut self, path: &Path, metadata: &Metadata, tensors: &mut Tensors) -> Result<()> {
        let fail = |message: String| Error::Format {
            path: path.to_path_buf(),
            message,
        };
        let stored = |key: &str| metadata.get(key).map_or("(none)", String::as_str);
        if stored("structure") != self.structure() {
            return Err(fail(format!(
                "checkpoint of network {}, this network is {}",
                stored("structure"),
                self.structure()
            )));
        }
        if stored("models") != self.model_fingerprints() {
            return Err(fail(format!(
                "checkpoint of models {}, this network's models are {} (a model's equations changed)",
                stored("models"),
                self.model_fingerprints()
            )));
        }
        let mut next = self.params.clone();
        for slot in self.params.slots() {
            let (name, shape) = (self.tensor_name(slot), self.tensor_shape(slot));
            let t = tensors
                .remove(&name)
                .ok_or_else(|| fail(format!("missing tensor {name}")))?;
            if t.shape() != shape {
                return Err(fail(format!(
                    "tensor {name}: shape {:?}, this network needs {shape:?}",
                    t.shape()
                )));
            }
            if let Some(bad) = t.iter().find(|v| !v.is_finite()) {
                return Err(fail(format!("tensor {name}: non-finite value {bad}")));
            }
            next.get_mut(slot)
                .iter_mut()
                .zip(t.iter())
                .for_each(|(d, &s)| *d = F::from_f64(s));
        }
        for (proj, w) in self.projections.iter().zip(&next.projections) {
            if !proj.respects_mask(w) {
                return Err(fail(format!(
                    "tensor projections.{}: nonzero weight where the mask has no synapse",
                    proj.name
                )));
            }
        }
        self.params = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata() -> Metadata {
        Metadata::from([
            ("format".to_string(), FORMAT.to_string()),
            ("version".to_string(), VERSION.to_string()),
        ])
    }

    #[test]
    fn round_trip_and_broken_files() {
        let mut t = Tensors::new();
        t.insert(
            "a".into(),
            ArrayD::from_shape_vec(IxDyn(&[2, 3]), (0..6).map(f64::from).collect()).unwrap(),
        );
        t.insert("b".into(), ArrayD::from_shape_vec(IxDyn(&[1]), vec![-1.5]).unwrap());
        let p = Path::new("x.safetensors");
        for dtype in [Dtype::F32, Dtype::F64] {
            let bytes = encode(metadata(), &t, dtype).unwrap();
            let (m, back) = decode(p, &bytes).unwrap();
            assert_eq!(m, metadata());
            assert_eq!(back, t);
            // Every truncation is an error, never a panic.
            for cut in [0, 7, 8, 20, bytes.len() / 2, bytes.len() - 1] {
                assert!(
                    matches!(decode(p, &bytes[..cut]), Err(Error::Format { .. })),
                    "cut at {cut}"
                );
            }
        }
        // A header length that claims far more than the file.
        let mut huge = encode(metadata(), &t, Dtype::F64).unwrap();
        huge[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(
            decode(p, &huge)
                .unwrap_err()
                .to_string()
                .contains("truncated or corrupt")
        );
        assert!(decode(p, b"not a checkpoint at all, clearly").is_err());
        // A safetensors file of something else, or of another version.
        let mut other = metadata();
        other.insert("format".into(), "weights".into());
        let e = decode(p, &encode(other, &t, Dtype::F64).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a plasticity checkpoint"), "{e}");
        let mut old = metadata();
        old.insert("version".into(), "2".into());
        let e = decode(p, &encode(old, &t, Dtype::F64).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("version"), "{e}");
        // A dtype the runtime does not store.
        let ints = [1u8, 0, 2, 0];
        let view = TensorView::new(Dtype::I16, vec![2], &ints).unwrap();
        let bytes = safetensors::serialize([("a".to_string(), view)], Some(metadata())).unwrap();
        let e = decode(p, &bytes).unwrap_err().to_string();
        assert!(e.contains("I16"), "{e}");
    }
}
