//! Weight initialisation: seedable and reproducible.

use ndarray::Array2;
use rand::RngExt;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Result, invalid};
use crate::real::Float;

/// How a weight matrix `[fan_out, fan_in]` is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// `N(0, gain² / fan_in)`.
    Gaussian {
        /// Scale.
        gain: f64,
    },
    /// `U(−gain·√(3/fan_in), gain·√(3/fan_in))` (same variance as `Gaussian`).
    Uniform {
        /// Scale.
        gain: f64,
    },
    /// `gain` times a random matrix with orthonormal rows (or columns, if taller than wide).
    Orthogonal {
        /// Scale.
        gain: f64,
    },
    /// All zeros.
    Zeros,
}

impl Default for Init {
    fn default() -> Self {
        Init::Gaussian { gain: 1.0 }
    }
}

impl Init {
    pub(crate) fn validate(&self, what: &str) -> Result<()> {
        let gain = match *self {
            Init::Gaussian { gain } | Init::Uniform { gain } | Init::Orthogonal { gain } => gain,
            Init::Zeros => return Ok(()),
        };
        if gain.is_finite() {
            Ok(())
        } else {
            Err(invalid(&format!("{what} init gain"), gain, "a finite number"))
        }
    }

    /// Draws a `[rows, cols]` matrix; `cols` is the fan-in.
    pub fn draw<F: Float>(&self, rows: usize, cols: usize, rng: &mut StdRng) -> Array2<F> {
        let fan_in = cols.max(1) as f64;
        match *self {
            Init::Zeros => Array2::zeros((rows, cols)),
            Init::Gaussian { gain } => {
                let s = gain / fan_in.sqrt();
                Array2::from_shape_simple_fn((rows, cols), || {
                    let x: f64 = StandardNormal.sample(rng);
                    F::from_f64(s * x)
                })
            }
            Init::Uniform { gain } => {
                let a = gain * (3.0 / fan_in).sqrt();
                Array2::from_shape_simple_fn((rows, cols), || F::from_f64(rng.random_range(-a..=a)))
            }
            Init::Orthogonal { gain } => orthogonal(rows, cols, rng).mapv(|x| F::from_f64(gain * x)),
        }
    }
}

/// Modified Gram–Schmidt on a Gaussian matrix: orthonormal rows when `rows <= cols`,
/// orthonormal columns otherwise.
fn orthogonal(rows: usize, cols: usize, rng: &mut StdRng) -> Array2<f64> {
    let tall = rows > cols;
    let (r, c) = if tall { (cols, rows) } else { (rows, cols) };
    let mut m = Array2::<f64>::from_shape_simple_fn((r, c), || StandardNormal.sample(rng));
    for i in 0..r {
        for j in 0..i {
            let d = m.row(i).dot(&m.row(j));
            let rj = m.row(j).to_owned();
            m.row_mut(i).scaled_add(-d, &rj);
        }
        let norm = m.row(i).dot(&m.row(i)).sqrt();
        if norm > 0.0 {
            m.row_mut(i).mapv_inplace(|x| x / norm);
        }
    }
    if tall { m.reversed_axes() } else { m }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn orthogonal_rows_are_orthonormal() {
        let mut rng = StdRng::seed_from_u64(1);
        let w: Array2<f64> = Init::Orthogonal { gain: 1.0 }.draw(5, 8, &mut rng);
        let g = w.dot(&w.t());
        for i in 0..5 {
            for j in 0..5 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((g[[i, j]] - want).abs() < 1e-12);
            }
        }
        let tall: Array2<f64> = Init::Orthogonal { gain: 1.0 }.draw(8, 5, &mut rng);
        let g = tall.t().dot(&tall);
        assert!((g[[2, 2]] - 1.0).abs() < 1e-12 && g[[1, 3]].abs() < 1e-12);
    }

    #[test]
    fn seeded_draws_repeat() {
        let a: Array2<f32> = Init::Gaussian { gain: 1.0 }.draw(3, 4, &mut StdRng::seed_from_u64(7));
        let b: Array2<f32> = Init::Gaussian { gain: 1.0 }.draw(3, 4, &mut StdRng::seed_from_u64(7));
        assert_eq!(a, b);
        let var = {
            let w: Array2<f64> = Init::Uniform { gain: 1.0 }.draw(200, 100, &mut StdRng::seed_from_u64(3));
            w.mapv(|x| x * x).mean().unwrap()
        };
        assert!((var - 0.01).abs() < 0.001, "variance {var} should be 1/fan_in");
    }
}
