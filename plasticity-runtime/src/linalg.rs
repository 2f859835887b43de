//! The few dense products the time loop needs, written so that they never allocate (a
//! general GEMM allocates packing buffers on every call). Rows are independent, so they run
//! in parallel over the batch or the output rows.

use ndarray::{ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use crate::real::{Float, Real};

/// `out[b, j] = beta·out[b, j] + Σ_i a[b, i] · w[j, i]` (`out = β out + a wᵀ`), skipping
/// zero entries of `a` (sparse spikes cost nothing).
pub(crate) fn gemm_nt<F: Float>(beta: F, out: &mut ArrayViewMut2<F>, a: &ArrayView2<F>, w: &ArrayView2<F>) {
    gemm_nn(beta, out, a, &w.t());
}

/// `y += s·x` on contiguous rows as a plain slice loop (vectorised, no per-call dispatch:
/// the products above make thousands of these calls per step); other layouts go through
/// ndarray.
#[inline]
fn axpy<F: Float>(y: &mut ndarray::ArrayViewMut1<F>, s: F, x: &ndarray::ArrayView1<F>) {
    match (y.as_slice_mut(), x.as_slice()) {
        (Some(y), Some(x)) => {
            for (y, &x) in y.iter_mut().zip(x) {
                *y += s * x;
            }
        }
        _ => y.scaled_add(s, x),
    }
}

/// `out[b, j] = beta·out[b, j] + Σ_k a[b, k] · w[k, j]` (`out = β out + a w`), skipping
/// zero entries of `a`.
pub(crate) fn gemm_nn<F: Float>(beta: F, out: &mut ArrayViewMut2<F>, a: &ArrayView2<F>, w: &ArrayView2<F>) {
    debug_assert_eq!(a.ncols(), w.nrows());
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(a.axis_iter(Axis(0)).into_par_iter())
        .for_each(|(mut o, a)| {
            if beta == <F as Real>::zero() {
                o.fill(<F as Real>::zero());
            } else if beta != <F as Real>::one() {
                o.mapv_inplace(|v| v * beta);
            }
            for (k, &ak) in a.iter().enumerate() {
                if ak == <F as Real>::zero() {
                    continue;
                }
                axpy(&mut o, ak, &w.row(k));
            }
        });
}

/// `out[i, j] += Σ_b a[b, i] · c[b, j]` (`out += aᵀ c`), in parallel over rows of `out`.
pub(crate) fn gemm_tn_acc<F: Float>(out: &mut ArrayViewMut2<F>, a: &ArrayView2<F>, c: &ArrayView2<F>) {
    debug_assert_eq!(a.nrows(), c.nrows());
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(i, mut o)| {
            for (a_row, c_row) in a.axis_iter(Axis(0)).zip(c.axis_iter(Axis(0))) {
                let s = a_row[i];
                if s != <F as Real>::zero() {
                    axpy(&mut o, s, &c_row);
                }
            }
        });
}

/// `dst = srcᵀ` in 32×32 tiles, so both sides are read and written a cache line at a time
/// (an element-wise strided copy misses the cache on every element of one side). `dst` is
/// split over threads by tile rows. Arrays that are not row-major fall back to ndarray's copy.
pub(crate) fn transpose_into<F: Float>(dst: &mut ArrayViewMut2<F>, src: &ArrayView2<F>) {
    const TILE: usize = 32;
    debug_assert_eq!(dst.dim(), (src.ncols(), src.nrows()));
    let (rows, cols) = dst.dim();
    let (Some(src_s), true) = (src.as_slice(), dst.is_standard_layout()) else {
        dst.assign(&src.t());
        return;
    };
    let dst_s = dst.as_slice_mut().expect("standard layout");
    dst_s
        .par_chunks_mut(TILE * cols.max(1))
        .enumerate()
        .for_each(|(tile_row, block)| {
            let r0 = tile_row * TILE;
            let r_len = block.len() / cols.max(1);
            for c0 in (0..cols).step_by(TILE) {
                let c1 = (c0 + TILE).min(cols);
                for r in 0..r_len {
                    let out = &mut block[r * cols + c0..r * cols + c1];
                    for (k, o) in out.iter_mut().enumerate() {
                        // src is [cols, rows]: element (c0 + k, r0 + r).
                        *o = src_s[(c0 + k) * rows + r0 + r];
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn products_match_ndarray() {
        let a = Array2::from_shape_fn((3, 4), |(i, j)| (i * 4 + j) as f64 * 0.1 - 0.5);
        let w = Array2::from_shape_fn((5, 4), |(i, j)| ((i + 2 * j) % 7) as f64 - 3.0);
        let mut out = Array2::from_elem((3, 5), 1.0);
        gemm_nt(2.0, &mut out.view_mut(), &a.view(), &w.view());
        let want = a.dot(&w.t()) + 2.0;
        assert!((&out - &want).iter().all(|d| d.abs() < 1e-12));

        let w2 = w.t().to_owned();
        let mut out = Array2::zeros((3, 5));
        gemm_nn(0.0, &mut out.view_mut(), &a.view(), &w2.view());
        assert!((&out - &a.dot(&w2)).iter().all(|d| d.abs() < 1e-12));

        let c = Array2::from_shape_fn((3, 5), |(i, j)| (i + j) as f64);
        let mut out = Array2::from_elem((4, 5), 1.0);
        gemm_tn_acc(&mut out.view_mut(), &a.view(), &c.view());
        let want = a.t().dot(&c) + 1.0;
        assert!((&out - &want).iter().all(|d| d.abs() < 1e-12));
    }

    #[test]
    fn transpose_matches_ndarray() {
        for (r, c) in [(1, 1), (3, 70), (33, 65), (64, 32), (100, 7)] {
            let src = Array2::from_shape_fn((r, c), |(i, j)| (i * 1000 + j) as f32);
            let mut dst = Array2::zeros((c, r));
            transpose_into(&mut dst.view_mut(), &src.view());
            assert_eq!(dst, src.t());
            // A transposed view as the source takes the fallback path.
            let mut back = Array2::zeros((c, r));
            transpose_into(&mut back.view_mut(), &dst.t());
            assert_eq!(back, dst);
        }
    }
}
