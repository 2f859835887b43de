//! Checkpoints: a network's trainable tensors (and a trainer's optimiser state) in one file,
//! written atomically and read back with every inconsistency reported as an error.
//!
//! Format (little-endian): the 16-byte magic `PLASTICITY-CKPT\0`, a `u32` version, the
//! network's structure (`u32` length + UTF-8, see [`Network::structure`]), a `u32` tensor count, then per tensor its name, `u32`
//! rank, `u64` dimensions and `f64` values, and finally an FNV-1a `u64` checksum of all
//! preceding bytes. Values are stored as `f64` whatever the network's float type.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};

use crate::error::{Error, Result};
use crate::network::Network;
use crate::params::Slot;
use crate::real::Float;

const MAGIC: &[u8; 16] = b"PLASTICITY-CKPT\0";
const VERSION: u32 = 2;

/// Named tensors, in a stable order.
pub(crate) type Tensors = BTreeMap<String, ArrayD<f64>>;

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Serialises `tensors` for `model`.
pub(crate) fn encode(model: &str, tensors: &Tensors) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    put_str(&mut out, model);
    out.extend_from_slice(&(tensors.len() as u32).to_le_bytes());
    for (name, t) in tensors {
        put_str(&mut out, name);
        out.extend_from_slice(&(t.ndim() as u32).to_le_bytes());
        for &d in t.shape() {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
        for &v in t.iter() {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    let sum = fnv1a(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl Reader<'_> {
    fn fail(&self, message: impl Into<String>) -> Error {
        Error::Format {
            path: self.path.to_path_buf(),
            message: message.into(),
        }
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&[u8]> {
        if self.bytes.len() - self.pos < n {
            return Err(self.fail(format!("truncated: the file ends inside {what} at byte {}", self.pos)));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u32(what)? as usize;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.fail(format!("{what} is not UTF-8")))
    }
}

/// Parses a checkpoint: the model name and its tensors.
pub(crate) fn decode(path: &Path, bytes: &[u8]) -> Result<(String, Tensors)> {
    let mut r = Reader { bytes, pos: 0, path };
    if bytes.len() < MAGIC.len() + 8 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(r.fail("not a plasticity checkpoint (bad magic bytes)"));
    }
    let body = &bytes[..bytes.len() - 8];
    let stored = u64::from_le_bytes(bytes[bytes.len() - 8..].try_into().expect("8 bytes"));
    if fnv1a(body) != stored {
        return Err(r.fail("checksum mismatch: the file is truncated or corrupt"));
    }
    r.bytes = body;
    r.pos = MAGIC.len();
    let version = r.u32("the version")?;
    if version != VERSION {
        return Err(r.fail(format!(
            "checkpoint version {version}, this build reads version {VERSION}"
        )));
    }
    let model = r.string("the model name")?;
    let count = r.u32("the tensor count")?;
    let mut tensors = Tensors::new();
    for _ in 0..count {
        let name = r.string("a tensor name")?;
        let rank = r.u32("a tensor rank")? as usize;
        if rank > 8 {
            return Err(r.fail(format!("tensor {name}: rank {rank}, expected at most 8")));
        }
        let mut shape = Vec::with_capacity(rank);
        for _ in 0..rank {
            shape.push(r.u64("a tensor dimension")? as usize);
        }
        let len = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let Some(len) = len.filter(|&l| l.checked_mul(8).is_some_and(|b| b <= r.bytes.len() - r.pos)) else {
            return Err(r.fail(format!("tensor {name}: shape {shape:?} is larger than the file")));
        };
        let data = r.take(len * 8, "tensor data")?;
        let values: Vec<f64> = data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let array = ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|e| r.fail(format!("tensor {name}: {e}")))?;
        if tensors.insert(name.clone(), array).is_some() {
            return Err(r.fail(format!("tensor {name} appears twice")));
        }
    }
    if r.pos != r.bytes.len() {
        return Err(r.fail(format!(
            "{} unexpected bytes after the last tensor",
            r.bytes.len() - r.pos
        )));
    }
    Ok((model, tensors))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, synced, then
/// renamed over the target, so a reader never sees a partial file. Used for checkpoints, and
/// available to programs that write their own results.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source: std::io::Error, p: &Path| Error::Io {
        path: p.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| Error::Format {
        path: path.to_path_buf(),
        message: "the path has no file name".into(),
    })?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| io(e, &tmp))?;
        f.write_all(bytes).map_err(|e| io(e, &tmp))?;
        f.sync_all().map_err(|e| io(e, &tmp))?;
        std::fs::rename(&tmp, path).map_err(|e| io(e, path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

pub(crate) fn read(path: &Path) -> Result<(String, Tensors)> {
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

    /// Writes the network's trainable tensors to `path`, atomically. The models' fixed
    /// parameters and the structure are part of the code that builds the network, not of the
    /// file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path.as_ref(), &encode(&self.structure(), &self.tensors()))
    }

    /// Reads tensors written by [`Network::save`] into this network, which must have the
    /// same structure. Nothing is changed unless the whole file matches.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let (structure, mut tensors) = read(path)?;
        self.assign(path, &structure, &mut tensors)?;
        if let Some(extra) = tensors.keys().next() {
            return Err(Error::Format {
                path: path.to_path_buf(),
                message: format!("unexpected tensor {extra}: the checkpoint is of a different network"),
            });
        }
        Ok(())
    }

    /// Moves this network's tensors out of `tensors` into a copy, checks it, and installs it.
    pub(crate) fn assign(&mut self, path: &Path, structure: &str, tensors: &mut Tensors) -> Result<()> {
        let fail = |message: String| Error::Format {
            path: path.to_path_buf(),
            message,
        };
        if structure != self.structure() {
            return Err(fail(format!(
                "checkpoint of network {structure}, this network is {}",
                self.structure()
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

    #[test]
    fn encode_decode_round_trip_and_corruption() {
        let mut t = Tensors::new();
        t.insert(
            "a".into(),
            ArrayD::from_shape_vec(IxDyn(&[2, 3]), (0..6).map(f64::from).collect()).unwrap(),
        );
        t.insert("b".into(), ArrayD::from_shape_vec(IxDyn(&[1]), vec![-1.5]).unwrap());
        let bytes = encode("Model", &t);
        let p = Path::new("x.ckpt");
        let (m, back) = decode(p, &bytes).unwrap();
        assert_eq!(m, "Model");
        assert_eq!(back, t);
        let msg = decode(p, &bytes[..bytes.len() - 3]).unwrap_err().to_string();
        assert!(msg.contains("checksum") || msg.contains("truncated"), "{msg}");
        let mut flipped = bytes.clone();
        flipped[40] ^= 0xff;
        assert!(decode(p, &flipped).unwrap_err().to_string().contains("checksum"));
        assert!(
            decode(p, b"not a checkpoint at all, clearly")
                .unwrap_err()
                .to_string()
                .contains("magic")
        );
        assert!(decode(p, b"").is_err());
    }
}
