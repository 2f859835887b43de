//! Sparse spike input: events instead of a dense `[T, B, n_in]` array.

use ndarray::{Array2, Array3};

use crate::error::{Result, invalid};
use crate::real::{Float, Real};

/// Binary input spikes of a batch as events `(step, sample, channel)`.
///
/// Memory is proportional to the number of events. e-prop streams them one step at a time
/// into a `[B, n_in]` buffer, so a long, sparse sequence never exists as a dense array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpikeEvents {
    t_len: usize,
    batch: usize,
    n_in: usize,
    /// `(sample, channel)` of each event, sorted by step.
    events: Vec<(u32, u32)>,
    /// `offsets[t]..offsets[t + 1]` are the events of step `t`.
    offsets: Vec<usize>,
}

impl SpikeEvents {
    /// Builds the event list of a batch of `batch` sequences of `t_len` steps over `n_in`
    /// channels. Events may come in any order; duplicates count once. An event outside the
    /// declared sizes is an error naming it.
    pub fn new(
        t_len: usize,
        batch: usize,
        n_in: usize,
        events: impl IntoIterator<Item = (usize, usize, usize)>,
    ) -> Result<Self> {
        if t_len == 0 || batch == 0 || n_in == 0 {
            return Err(invalid(
                "spike events sizes",
                format!("T = {t_len}, B = {batch}, n_in = {n_in}"),
                "all at least 1",
            ));
        }
        if batch > u32::MAX as usize || n_in > u32::MAX as usize {
            return Err(invalid(
                "spike events sizes",
                format!("B = {batch}, n_in = {n_in}"),
                "at most 2^32 - 1",
            ));
        }
        let mut all: Vec<(usize, u32, u32)> = Vec::new();
        for (i, (t, b, c)) in events.into_iter().enumerate() {
            if t >= t_len || b >= batch || c >= n_in {
                return Err(invalid(
                    &format!("spike event {i}"),
                    format!("(step {t}, sample {b}, channel {c})"),
                    &format!("step < {t_len}, sample < {batch}, channel < {n_in}"),
                ));
            }
            all.push((t, b as u32, c as u32));
        }
        all.sort_unstable();
        all.dedup();
        let mut offsets = vec![0; t_len + 1];
        for &(t, _, _) in &all {
            offsets[t + 1] += 1;
        }
        for t in 0..t_len {
            offsets[t + 1] += offsets[t];
        }
        Ok(SpikeEvents {
            t_len,
            batch,
            n_in,
            events: all.into_iter().map(|(_, b, c)| (b, c)).collect(),
            offsets,
        })
    }

    /// Number of steps.
    pub fn steps(&self) -> usize {
        self.t_len
    }
    /// Batch size.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Number of input channels.
    pub fn channels(&self) -> usize {
        self.n_in
    }
    /// Number of (distinct) events.
    pub fn len(&self) -> usize {
        self.events.len()
    }
    /// Whether there are no events.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Writes step `t` into `out` (`[B, n_in]`): ones at the events, zeros elsewhere.
    pub fn fill_step<F: Float>(&self, t: usize, out: &mut Array2<F>) {
        out.fill(<F as Real>::zero());
        for &(b, c) in &self.events[self.offsets[t]..self.offsets[t + 1]] {
            out[[b as usize, c as usize]] = <F as Real>::one();
        }
    }

    /// The dense `[T, B, n_in]` array.
    pub fn to_dense<F: Float>(&self) -> Array3<F> {
        let mut x = Array3::from_elem((self.t_len, self.batch, self.n_in), <F as Real>::zero());
        for t in 0..self.t_len {
            for &(b, c) in &self.events[self.offsets[t]..self.offsets[t + 1]] {
                x[[t, b as usize, c as usize]] = <F as Real>::one();
            }
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_reject_out_of_range() {
        let ev = SpikeEvents::new(3, 2, 4, [(2, 1, 3), (0, 0, 0), (0, 0, 0), (1, 1, 2)]).unwrap();
        assert_eq!(ev.len(), 3);
        let x: Array3<f32> = ev.to_dense();
        assert_eq!(x.sum(), 3.0);
        assert_eq!(x[[2, 1, 3]], 1.0);
        let mut step = Array2::<f32>::from_elem((2, 4), 7.0);
        ev.fill_step(1, &mut step);
        assert_eq!(step.sum(), 1.0);
        assert_eq!(step[[1, 2]], 1.0);
        let err = SpikeEvents::new(3, 2, 4, [(0, 0, 4)]).unwrap_err().to_string();
        assert!(err.contains("spike event 0") && err.contains("channel < 4"), "{err}");
    }
}
