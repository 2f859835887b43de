//! The few dense products the time loop needs, written so that they never allocate (a
//! general GEMM allocates packing buffers on every call). Rows are independent, so they run
//! in parallel over the batch or the output rows. [`outer_acc_t`] runs once per sequence,
//! after BPTT's backward pass, and allocates its small per-task scratch.

use ndarray::{ArrayView2, ArrayView3, ArrayViewMut2, Axis};
use rayon::prelude::*;

use crate::real::{Float, Real};

/// `out[b, j] = beta·out[b, j] + Σ_i a[b, i] · w[j, i]` (`out = β out + a wᵀ`): one dot
/// product of contiguous rows per output (the readout, where `w` has few rows).
pub(crate) fn gemm_nt<F: Float>(beta: F, out: &mut ArrayViewMut2<F>, a: &ArrayView2<F>, w: &ArrayView2<F>) {
    debug_assert_eq!(a.ncols(), w.ncols());
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(a.axis_iter(Axis(0)).into_par_iter())
        .for_each(|(mut o, a)| {
            for (o, w_row) in o.iter_mut().zip(w.axis_iter(Axis(0))) {
                let d = match (a.as_slice(), w_row.as_slice()) {
                    (Some(a), Some(w)) => dot(a, w),
                    _ => a.dot(&w_row),
                };
                *o = if beta == <F as Real>::zero() { d } else { beta * *o + d };
            }
        });
}

/// `Σ a[i]·b[i]` in 8 independent lanes, so that it vectorises (a single running sum cannot
/// be reordered by the compiler). Wider accumulators measured slower.
fn dot<F: Float>(a: &[F], b: &[F]) -> F {
    const LANES: usize = 8;
    let len = a.len().min(b.len());
    let (a_chunks, a_tail) = a[..len].as_chunks::<LANES>();
    let (b_chunks, b_tail) = b[..len].as_chunks::<LANES>();
    let mut acc = [<F as Real>::zero(); LANES];
    for (x, y) in a_chunks.iter().zip(b_chunks) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let tail = a_tail
        .iter()
        .zip(b_tail)
        .fold(<F as Real>::zero(), |s, (&x, &y)| s + x * y);
    acc.iter().fold(tail, |s, &v| s + v)
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

/// `dst = srcᵀ`; see [`transpose_with`].
pub(crate) fn transpose_into<F: Float>(dst: &mut ArrayViewMut2<F>, src: &ArrayView2<F>) {
    transpose_with(dst, src, |d, s| *d = s);
}

/// `dst += srcᵀ`; see [`transpose_with`].
pub(crate) fn add_transposed<F: Float>(dst: &mut ArrayViewMut2<F>, src: &ArrayView2<F>) {
    transpose_with(dst, src, |d, s| *d += s);
}

/// `combine(&mut dst[r, c], src[c, r])` for every element, in 32×32 tiles, so both sides are
/// read and written a cache line at a time (an element-wise strided walk misses the cache on
/// every element of one side). `dst` is split over threads by tile rows. Arrays that are not
/// row-major take a plain element-wise walk.
fn transpose_with<F: Float>(dst: &mut ArrayViewMut2<F>, src: &ArrayView2<F>, combine: impl Fn(&mut F, F) + Sync) {
    const TILE: usize = 32;
    debug_assert_eq!(dst.dim(), (src.ncols(), src.nrows()));
    let (rows, cols) = dst.dim();
    let (Some(src_s), true) = (src.as_slice(), dst.is_standard_layout()) else {
        dst.zip_mut_with(&src.t(), |d, &s| combine(d, s));
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
                        combine(o, src_s[(c0 + k) * rows + r0 + r]);
                    }
                }
            }
        });
}

/// `out_t[i, j] += Σ_{t,b} pre[t, b, i] · d[t, b, j]` (`out_t += preᵀ d` over all `T·B` rows),
/// visiting only the nonzero entries of `pre`: with spiking inputs at 10 % density this is a
/// tenth of a dense product.
///
/// Threads own blocks of rows of `out_t`. Within a block, the `T·B` rows of `d` are taken
/// [`ROW_BLOCK`] at a time and one [`TILE`]-wide column strip of them is packed (so it stays
/// in L1); for each row `i` of `out_t` the active rows are summed into accumulators held in
/// registers, so every `out_t` element is read and written once per row block rather than
/// once per active entry.
pub(crate) fn outer_acc_t<F: Float>(out_t: &mut ArrayViewMut2<F>, d: &ArrayView3<F>, pre: &ArrayView3<F>) {
    let (n_pre, n) = out_t.dim();
    debug_assert_eq!(
        (d.shape()[0], d.shape()[1], d.shape()[2]),
        (pre.shape()[0], pre.shape()[1], n)
    );
    debug_assert_eq!(pre.shape()[2], n_pre);
    if n_pre == 0 || n == 0 || d.is_empty() {
        return;
    }
    let (d_owned, pre_owned);
    let d = if d.is_standard_layout() || d.strides()[2] == 1 {
        d.view()
    } else {
        d_owned = d.as_standard_layout().into_owned();
        d_owned.view()
    };
    let pre = if pre.is_standard_layout() || pre.strides()[2] == 1 {
        pre.view()
    } else {
        pre_owned = pre.as_standard_layout().into_owned();
        pre_owned.view()
    };
    let (d_rows, pre_rows) = (rows_of(d), rows_of(pre));
    let rows_per_task = n_pre.div_ceil(4 * rayon::current_num_threads()).max(1);
    out_t
        .axis_chunks_iter_mut(Axis(0), rows_per_task)
        .into_par_iter()
        .enumerate()
        .for_each(|(task, mut block)| {
            let i0 = task * rows_per_task;
            let len = block.nrows();
            // Active entries of this task's columns of `pre` in the current row block, grouped
            // by column: column `c` holds `count[c]` of at most `ROW_BLOCK` slots. Filled
            // without branches (every entry is written, only nonzero ones are kept).
            let mut count = vec![0usize; len];
            let mut entries: Vec<(u32, F)> = vec![(0, <F as Real>::zero()); len * ROW_BLOCK];
            let mut packed = vec![<F as Real>::zero(); ROW_BLOCK * TILE];
            for r0 in (0..d_rows.len()).step_by(ROW_BLOCK) {
                let r1 = (r0 + ROW_BLOCK).min(d_rows.len());
                count.fill(0);
                for (r, row) in (0u32..).zip(&pre_rows[r0..r1]) {
                    for ((c, n_c), &v) in count.iter_mut().enumerate().zip(&row[i0..i0 + len]) {
                        entries[c * ROW_BLOCK + *n_c] = (r, v);
                        *n_c += usize::from(v != <F as Real>::zero());
                    }
                }
                // Tile-major: the block's rows of `d` restricted to one tile are packed into
                // `packed` (ROW_BLOCK·TILE values, in L1; rows of `d` a power of two apart would
                // all fall into the same cache sets) while every column of the task is summed.
                let n = block.ncols();
                for c0 in (0..n).step_by(TILE) {
                    let c1 = (c0 + TILE).min(n);
                    let width = c1 - c0;
                    for (dst, row) in packed.chunks_exact_mut(TILE).zip(&d_rows[r0..r1]) {
                        dst[..width].copy_from_slice(&row[c0..c1]);
                    }
                    for (c, &n_c) in count.iter().enumerate() {
                        if n_c > 0 {
                            let mut out_row = block.row_mut(c);
                            let out = &mut out_row.as_slice_mut().expect("standard-layout accumulator")[c0..c1];
                            accumulate_tile::<F, TILE>(out, &entries[c * ROW_BLOCK..c * ROW_BLOCK + n_c], &packed);
                        }
                    }
                }
            }
        });
}

/// Rows of `d` per block in [`outer_acc_t`].
const ROW_BLOCK: usize = 128;
/// Width of the register accumulators in [`outer_acc_t`].
const TILE: usize = 64;

/// `out += Σ_(r, v) v · rows[r][..out.len()]` (`rows` in rows of `W` values), summed in
/// registers when `out` is a full row of `W`.
#[inline(always)]
fn accumulate_tile<F: Float, const W: usize>(out: &mut [F], active: &[(u32, F)], rows: &[F]) {
    let row = |r: u32| &rows[r as usize * W..][..W];
    if let Ok(out) = <&mut [F; W]>::try_from(&mut *out) {
        let mut acc = *out;
        for &(r, v) in active {
            let src: &[F; W] = row(r).try_into().expect("a full row");
            for (a, &x) in acc.iter_mut().zip(src) {
                *a += v * x;
            }
        }
        *out = acc;
    } else {
        for &(r, v) in active {
            for (o, &x) in out.iter_mut().zip(row(r)) {
                *o += v * x;
            }
        }
    }
}

/// Presynaptic neurons (rows of a transposed gradient) per register block of [`window_acc`].
pub(crate) const MR: usize = 4;
/// Postsynaptic neurons (columns) per register block of [`window_acc`].
pub(crate) const NR: usize = 32;

/// The two factors of a windowed e-prop gradient update (see [`window_acc`]). Row `k` of
/// term `r` is `r·rows + k`, `k < used`.
pub(crate) struct WindowProduct<'a, F> {
    /// Rows per term, and rows in use.
    pub rows: usize,
    pub used: usize,
    /// Postsynaptic coefficients `c[row, j]`, `[n/NR panels][terms·rows][NR]`, zero-padded.
    pub coef: &'a [F],
    /// `(term, _)` of the dense terms; the `d`-th has its presynaptic rows at `d·rows` of `fact`.
    pub dense: &'a [(usize, usize)],
    /// Presynaptic rows of the dense terms, `[n_pre/MR panels][dense·rows][MR]`, zero-padded.
    pub fact: &'a [F],
    /// The sparse term: its index, and per presynaptic neuron `i` its nonzero values as
    /// `(k, value)` from `i·rows`, `count[i]` of them.
    pub input: Option<SparseTerm<'a, F>>,
}

/// The sparse term of a [`WindowProduct`]: `(term, active, count)`.
pub(crate) type SparseTerm<'a, F> = (usize, &'a [(u32, F)], &'a [u32]);

/// `grad_t[i, j] += Σ_dense Σ_k fact[k, i]·coef[k, j] + Σ_(k, v) in active(i) v·coef_input[k, j]`
/// for the row-major `grad_t` (`[n_pre, n]`).
///
/// Threads own blocks of [`MR`] rows of `grad_t`. Each [`MR`]×[`NR`] block is read once, summed
/// over every row of the window in registers (each loaded coefficient feeds [`MR`] fused
/// multiply-adds, each presynaptic value [`NR`]), then the sparse term adds one coefficient row
/// per nonzero presynaptic value, and the block is written once.
pub(crate) fn window_acc<F: Float>(grad_t: &mut [F], n: usize, w: &WindowProduct<'_, F>) {
    if n == 0 || w.used == 0 || grad_t.is_empty() {
        return;
    }
    let n_pre = grad_t.len() / n;
    let groups = n_pre.div_ceil(MR);
    let per_task = groups.div_ceil(4 * rayon::current_num_threads()).max(1);
    let span = w.coef.len() / (n.div_ceil(NR) * NR);
    let fact_span = w.dense.len() * w.rows;
    let panel = |c0: usize, term: usize| &w.coef[((c0 / NR) * span + term * w.rows) * NR..][..w.rows * NR];
    grad_t
        .par_chunks_mut(n * MR * per_task)
        .enumerate()
        .for_each(|(task, chunk)| {
            // Column tiles outer: a tile's coefficient panel stays in L1 while the task's rows
            // pass over it.
            for c0 in (0..n).step_by(NR) {
                let width = NR.min(n - c0);
                for (g, group) in chunk.chunks_mut(n * MR).enumerate() {
                    let gi = task * per_task + g;
                    for (d, &(term, _)) in w.dense.iter().enumerate() {
                        let a = &w.fact[(gi * fact_span + d * w.rows) * MR..][..w.used * MR];
                        let p = &panel(c0, term)[..w.used * NR];
                        with_block(group, n, c0, |block| F::register_block::<MR>(a, p, block));
                    }
                    // The sparse term on the same block, while it is in L1.
                    if let Some((term, active, count)) = w.input {
                        for (i, row) in (gi * MR..).zip(group.chunks_mut(n)) {
                            let active = &active[i * w.rows..][..count[i] as usize];
                            if !active.is_empty() {
                                accumulate_tile::<F, NR>(&mut row[c0..c0 + width], active, panel(c0, term));
                            }
                        }
                    }
                }
            }
        });
}

/// Runs `f` on the [`MR`]×[`NR`] block at column `c0` of `rows` (rows of `stride` values):
/// on the rows themselves for a full block, through a zero-padded copy for an edge block.
#[inline(always)]
fn with_block<F: Float>(rows: &mut [F], stride: usize, c0: usize, f: impl FnOnce([&mut [F; NR]; MR])) {
    let width = NR.min(stride - c0);
    if width == NR && rows.len() == stride * MR {
        let mut it = rows.chunks_exact_mut(stride);
        f(std::array::from_fn(|_| {
            let row = it.next().expect("MR rows");
            (&mut row[c0..c0 + NR]).try_into().expect("NR columns")
        }));
    } else {
        edge_block(rows, stride, c0, width, f);
    }
}

/// [`with_block`] for a block cut by the last row or column.
#[inline(never)]
fn edge_block<F: Float>(rows: &mut [F], stride: usize, c0: usize, width: usize, f: impl FnOnce([&mut [F; NR]; MR])) {
    let mut acc = [[<F as Real>::zero(); NR]; MR];
    for (acc_r, row) in acc.iter_mut().zip(rows.chunks(stride)) {
        acc_r[..width].copy_from_slice(&row[c0..c0 + width]);
    }
    f(acc.each_mut());
    for (acc_r, row) in acc.iter().zip(rows.chunks_mut(stride)) {
        row[c0..c0 + width].copy_from_slice(&acc_r[..width]);
    }
}

/// The register-blocked kernel per float type: written out with AVX-512 for `f32` where the
/// processor has it (the compiler's own vectorisation of [`portable_block`] keeps to 256-bit
/// registers), portable otherwise.
pub(crate) mod block {
    use super::{MR, NR, portable_block};

    /// `block[r][c] += Σ_k a[k·A + r] · p[k][c]` (`a` in rows of `A ≥ MR` values of which the
    /// first [`MR`] are used, `p` in rows of [`NR`]), over the rows `p` holds, all sums held in
    /// registers. Sealed: a supertrait of `Float`.
    pub trait RegisterBlock: Copy {
        /// Adds the product into the block's rows.
        fn register_block<const A: usize>(a: &[Self], p: &[Self], block: [&mut [Self; NR]; MR]);
    }

    impl RegisterBlock for f64 {
        #[inline(always)]
        fn register_block<const A: usize>(a: &[f64], p: &[f64], block: [&mut [f64; NR]; MR]) {
            portable_block::<f64, A>(a, p, block);
        }
    }

    impl RegisterBlock for f32 {
        #[inline(always)]
        fn register_block<const A: usize>(a: &[f32], p: &[f32], block: [&mut [f32; NR]; MR]) {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the processor supports AVX-512F (checked above).
                return unsafe { avx512::<A>(a, p, block) };
            }
            portable_block::<f32, A>(a, p, block);
        }
    }

    /// [`RegisterBlock::register_block`] for `f32` in eight 512-bit accumulators ([`MR`] rows
    /// of two registers each).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn avx512<const A: usize>(a: &[f32], p: &[f32], block: [&mut [f32; NR]; MR]) {
        use std::arch::x86_64::{__m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_storeu_ps};
        const { assert!(NR == 32 && A >= MR) };
        let (p, _) = p.as_chunks::<NR>();
        // Rows of `a` with a whole `MR` prefix: `(len − MR)/A + 1` of them.
        let a_rows = if a.len() < MR { 0 } else { (a.len() - MR) / A + 1 };
        // SAFETY: every pointer below points into an array of `NR` = 32 f32s at offset 0 or
        // 16, so each 16-lane load and store stays inside it.
        unsafe {
            let mut c: [[__m512; 2]; MR] = std::array::from_fn(|r| {
                [
                    _mm512_loadu_ps(block[r].as_ptr()),
                    _mm512_loadu_ps(block[r].as_ptr().add(16)),
                ]
            });
            for (k, pv) in p.iter().enumerate().take(a_rows) {
                let av = &a[k * A..k * A + MR];
                let p0 = _mm512_loadu_ps(pv.as_ptr());
                let p1 = _mm512_loadu_ps(pv.as_ptr().add(16));
                for (c, &ar) in c.iter_mut().zip(av) {
                    let ar = _mm512_set1_ps(ar);
                    c[0] = _mm512_fmadd_ps(ar, p0, c[0]);
                    c[1] = _mm512_fmadd_ps(ar, p1, c[1]);
                }
            }
            for (row, c) in block.into_iter().zip(&c) {
                _mm512_storeu_ps(row.as_mut_ptr(), c[0]);
                _mm512_storeu_ps(row.as_mut_ptr().add(16), c[1]);
            }
        }
    }
}

/// The portable register block: plain loops the compiler vectorises.
#[inline(always)]
fn portable_block<F: Float, const A: usize>(a: &[F], p: &[F], block: [&mut [F; NR]; MR]) {
    let (p, _) = p.as_chunks::<NR>();
    let a_rows = if a.len() < MR { 0 } else { (a.len() - MR) / A + 1 };
    let mut sums = block.each_ref().map(|r| **r);
    for (k, pv) in p.iter().enumerate().take(a_rows) {
        let av = &a[k * A..k * A + MR];
        for (s, &ar) in sums.iter_mut().zip(av) {
            for (s, &pc) in s.iter_mut().zip(pv) {
                *s = ar.mul_add_fast(pc, *s);
            }
        }
    }
    for (row, sum) in block.into_iter().zip(sums) {
        *row = sum;
    }
}

/// The `[T, B]` rows of `a`, each with unit stride, as slices in `(t, b)` order.
fn rows_of<F>(a: ArrayView3<'_, F>) -> Vec<&[F]> {
    let (t_len, batch) = (a.shape()[0], a.shape()[1]);
    (0..t_len * batch)
        .map(move |r| {
            a.slice_move(ndarray::s![r / batch, r % batch, ..])
                .to_slice()
                .expect("rows with unit stride")
        })
        .collect()
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

        // Rows longer than the 8 dot-product lanes, with a tail.
        let a_long = Array2::from_shape_fn((2, 37), |(i, j)| ((i * 37 + j) % 9) as f64 - 4.0);
        let w_long = Array2::from_shape_fn((3, 37), |(i, j)| ((i + 5 * j) % 13) as f64 * 0.5);
        let mut out = Array2::from_elem((2, 3), 7.0);
        gemm_nt(0.0, &mut out.view_mut(), &a_long.view(), &w_long.view());
        assert!((&out - &a_long.dot(&w_long.t())).iter().all(|d| d.abs() < 1e-12));

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
    fn outer_product_over_time_matches_ndarray() {
        use ndarray::{Array3, s};
        for (t, b, n, n_pre) in [
            (1, 1, 1, 1),
            (3, 2, 5, 7),
            (4, 3, 40, 300),
            (2, 5, 1100, 3),
            (30, 9, 130, 50),
        ] {
            let d = Array3::from_shape_fn((t, b, n), |(i, j, k)| ((i * 7 + j * 3 + k) % 11) as f64 - 5.0);
            // Sparse binary presynaptic activity with a few zeros rows and a rate value.
            let pre = Array3::from_shape_fn((t, b, n_pre), |(i, j, k)| match (i + 2 * j + 3 * k) % 5 {
                0 => 1.0,
                1 => 0.25,
                _ => 0.0,
            });
            let rows = t * b;
            let d2 = d.to_shape((rows, n)).unwrap();
            let p2 = pre.to_shape((rows, n_pre)).unwrap();
            let mut out_t = Array2::from_elem((n_pre, n), 0.5);
            outer_acc_t(&mut out_t.view_mut(), &d.view(), &pre.view());
            let want = p2.t().dot(&d2) + 0.5;
            assert!((&out_t - &want).iter().all(|e| e.abs() < 1e-9), "{t}x{b}x{n}x{n_pre}");
            // A strided view of `d` (one port of a [T, B, p, n] tape) gives the same result.
            let wide = Array3::from_shape_fn(
                (t, b, 2 * n),
                |(i, j, k)| if k % 2 == 0 { d[[i, j, k / 2]] } else { 9.0 },
            );
            let strided = wide.slice(s![.., .., ..;2]);
            let mut again = Array2::from_elem((n_pre, n), 0.5);
            outer_acc_t(&mut again.view_mut(), &strided, &pre.view());
            assert_eq!(again, out_t);
            // Added back transposed.
            let mut grad = Array2::from_elem((n, n_pre), 1.0);
            add_transposed(&mut grad.view_mut(), &out_t.view());
            assert!((&grad - &(want.t().to_owned() + 1.0)).iter().all(|e| e.abs() < 1e-9));
        }
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

    /// The windowed product against a plain triple loop, in f32 (the AVX-512 kernel where
    /// available) and f64, with full and edge register blocks, two dense terms and the
    /// sparse term, and a window that is not full.
    fn window_product_matches_loops<F: Float>(tolerance: f64) {
        for (n, n_pre) in [(70usize, 37usize), (32, 4), (5, 3), (96, 130)] {
            let (rows, used, terms) = (24, 19, 3);
            let dense = [(0, 0), (2, 1)];
            let input = 1;
            let value = |i: usize| F::from_f64(((i * 7919) % 113) as f64 / 56.0 - 1.0);
            // Factors in plain layout: coefficients c[term][k][j], presynaptic rows x[d][k][i].
            let c = |t: usize, k: usize, j: usize| value(t * 100_003 + k * 1009 + j);
            let x = |d: usize, k: usize, i: usize| value(d * 70_001 + k * 313 + i * 3 + 1);
            let sparse = |k: usize, i: usize| {
                if (k * 5 + i * 3).is_multiple_of(7) {
                    value(k * 17 + i + 5)
                } else {
                    F::from_f64(0.0)
                }
            };
            let mut coef = vec![F::from_f64(0.0); n.div_ceil(NR) * NR * terms * rows];
            for t in 0..terms {
                for k in 0..used {
                    for j in 0..n {
                        coef[((j / NR) * terms * rows + t * rows + k) * NR + j % NR] = c(t, k, j);
                    }
                }
            }
            let mut fact = vec![F::from_f64(0.0); n_pre.div_ceil(MR) * MR * dense.len() * rows];
            for d in 0..dense.len() {
                for k in 0..used {
                    for i in 0..n_pre {
                        fact[((i / MR) * dense.len() * rows + d * rows + k) * MR + i % MR] = x(d, k, i);
                    }
                }
            }
            let mut active = vec![(0u32, F::from_f64(0.0)); n_pre * rows];
            let mut count = vec![0u32; n_pre];
            for i in 0..n_pre {
                for k in 0..used {
                    let v = sparse(k, i);
                    if v != F::from_f64(0.0) {
                        active[i * rows + count[i] as usize] = (k as u32, v);
                        count[i] += 1;
                    }
                }
            }
            let start = |i: usize, j: usize| F::from_f64((i as f64 - j as f64) * 0.01);
            let mut grad_t: Vec<F> = (0..n_pre * n).map(|e| start(e / n, e % n)).collect();
            let product = WindowProduct {
                rows,
                used,
                coef: &coef,
                dense: &dense,
                fact: &fact,
                input: Some((input, &active, &count)),
            };
            window_acc(&mut grad_t, n, &product);
            for i in 0..n_pre {
                for j in 0..n {
                    let mut want = start(i, j).to_f64();
                    for k in 0..used {
                        for (d, &(t, _)) in dense.iter().enumerate() {
                            want += c(t, k, j).to_f64() * x(d, k, i).to_f64();
                        }
                        want += c(input, k, j).to_f64() * sparse(k, i).to_f64();
                    }
                    let got = grad_t[i * n + j].to_f64();
                    assert!(
                        (got - want).abs() <= tolerance * (1.0 + want.abs()),
                        "{n}x{n_pre} at ({i}, {j}): {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn window_product_matches_loops_f32_and_f64() {
        window_product_matches_loops::<f32>(1e-5);
        window_product_matches_loops::<f64>(1e-12);
    }
}
