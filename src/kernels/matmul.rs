//! Products with weight matrices `W` (row-major `[out, in]`): `gemm` for many rows
//! (prefill for scoring, training), and for generation a kernel over weights packed in
//! panels of 16 outputs whose result for a row never depends on the other rows.
//! Also the strided dot products of attention scores.

use super::simd::{LANES, V16, dispatch};
use crate::model::weights::Linear;
use rayon::prelude::*;

/// Raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: every user writes a disjoint set of indices.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// # Safety
    /// `i` must be inside the output.
    #[inline(always)]
    unsafe fn at(self, i: usize) -> *mut f32 {
        // SAFETY: forwarded from the caller.
        unsafe { self.0.add(i) }
    }
}

/// A weight matrix repacked for [`matmul_packed`]: panel `p` holds outputs
/// `16p..16p+16` as `[in][16]`, zero-padded past `out_dim`.
#[derive(Clone, Debug)]
pub struct Packed {
    data: Vec<f32>,
    pub out_dim: usize,
    pub in_dim: usize,
}

impl Packed {
    pub fn new(w: &[f32], out_dim: usize, in_dim: usize) -> Packed {
        assert!(w.len() >= out_dim * in_dim);
        let panels = out_dim.div_ceil(LANES);
        let mut data = vec![0f32; panels * in_dim * LANES];
        data.par_chunks_mut(in_dim * LANES)
            .enumerate()
            .for_each(|(p, panel)| {
                for j in 0..LANES.min(out_dim - p * LANES) {
                    let row = &w[(p * LANES + j) * in_dim..(p * LANES + j + 1) * in_dim];
                    for (k, &v) in row.iter().enumerate() {
                        panel[k * LANES + j] = v;
                    }
                }
            });
        Packed {
            data,
            out_dim,
            in_dim,
        }
    }
}

/// How many `k` steps ahead [`tile`] prefetches weight panels.
const PREFETCH_AHEAD: usize = 32;

/// Outputs of `RX` rows of `x` (from row `x0`) for `RJ` panels (from panel `p0`).
/// Every output accumulates `x[b,k]·w[j,k]` over `k` in order in one lane with fused
/// multiply-adds: the same arithmetic whatever the tile shape or batch.
///
/// # Safety
/// Rows and panels must exist, `y` must hold `(x0+RX)·out_dim` floats, no other thread
/// may write these outputs, and the CPU must support `V`'s instruction set.
#[inline(always)]
unsafe fn tile<V: V16, const RX: usize, const RJ: usize>(
    x: &[f32],
    x0: usize,
    w: &Packed,
    p0: usize,
    y: SharedOut,
) {
    let k = w.in_dim;
    // SAFETY: see the function contract; loads stay inside panels p0..p0+RJ and rows
    // x0..x0+RX.
    unsafe {
        let mut acc = [[V::zero(); RJ]; RX];
        let wp = w.data.as_ptr().add(p0 * k * LANES);
        let xp = x.as_ptr().add(x0 * k);
        for kk in 0..k {
            let mut wv = [V::zero(); RJ];
            for (j, v) in wv.iter_mut().enumerate() {
                let at = wp.add((j * k + kk) * LANES);
                *v = V::load(at);
                // Ask for the panel data a few iterations ahead; the streams are too
                // short for the hardware prefetcher to ramp up on its own.
                #[cfg(target_arch = "x86_64")]
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    at.wrapping_add(PREFETCH_AHEAD * LANES) as *const i8,
                );
            }
            for (b, ab) in acc.iter_mut().enumerate() {
                let xb = V::splat(*xp.add(b * k + kk));
                for (a, &wj) in ab.iter_mut().zip(&wv) {
                    *a = a.fma(xb, wj);
                }
            }
        }
        for (b, ab) in acc.iter().enumerate() {
            for (j, a) in ab.iter().enumerate() {
                let col = (p0 + j) * LANES;
                let row = (x0 + b) * w.out_dim;
                if col + LANES <= w.out_dim {
                    a.store(y.at(row + col));
                } else {
                    let mut tmp = [0f32; LANES];
                    a.store(tmp.as_mut_ptr());
                    for (l, &v) in tmp.iter().enumerate().take(w.out_dim - col) {
                        *y.at(row + col + l) = v;
                    }
                }
            }
        }
    }
}

/// All `n` rows of `x` against panels `p0..p1`, `RJ` panels at a time.
///
/// # Safety
/// As for [`tile`].
#[inline(always)]
unsafe fn panels<V: V16, const RJ: usize>(
    x: &[f32],
    n: usize,
    w: &Packed,
    p0: usize,
    p1: usize,
    y: SharedOut,
) {
    macro_rules! rows {
        ($p:expr, $rj:literal) => {{
            let mut b = 0;
            // SAFETY (all tiles): forwarded from the caller.
            while b + 8 <= n {
                unsafe { tile::<V, 8, $rj>(x, b, w, $p, y) };
                b += 8;
            }
            while b + 4 <= n {
                unsafe { tile::<V, 4, $rj>(x, b, w, $p, y) };
                b += 4;
            }
            while b + 2 <= n {
                unsafe { tile::<V, 2, $rj>(x, b, w, $p, y) };
                b += 2;
            }
            if b < n {
                unsafe { tile::<V, 1, $rj>(x, b, w, $p, y) };
            }
        }};
    }
    let mut p = p0;
    while p + RJ <= p1 {
        match RJ {
            3 => rows!(p, 3),
            6 => rows!(p, 6),
            _ => rows!(p, 8),
        }
        p += RJ;
    }
    while p < p1 {
        rows!(p, 1);
        p += 1;
    }
}

/// Panels `p0..p1` for all rows, with a tile width suited to the number of rows
/// (more panels per tile when fewer rows share it).
///
/// # Safety
/// As for [`tile`].
#[inline(always)]
unsafe fn panel_range<V: V16>(x: &[f32], n: usize, w: &Packed, p0: usize, p1: usize, y: SharedOut) {
    // SAFETY: forwarded from the caller.
    unsafe {
        if n >= 8 {
            panels::<V, 3>(x, n, w, p0, p1, y)
        } else if n >= 4 {
            panels::<V, 6>(x, n, w, p0, p1, y)
        } else {
            panels::<V, 8>(x, n, w, p0, p1, y)
        }
    }
}

dispatch!(fn panel_range_dispatch => panel_range(x: &[f32], n: usize, w: &Packed, p0: usize, p1: usize, y: SharedOut));

/// `y[b, :] = x[b, :] Wᵀ` for `n` rows with packed weights. A row's result depends
/// only on that row: generating a sequence alone or in any batch gives the same numbers.
pub fn matmul_packed(x: &[f32], n: usize, w: &Packed, y: &mut [f32]) {
    matmul_packed_group(x, n, &mut [(w, y)]);
}

/// [`matmul_packed`] of the same rows `x` with `N` weight matrices (q/k/v, or gate/up)
/// in one parallel region: fewer thread wake-ups per layer, and the narrow matrices
/// share the threads with the wide ones.
pub fn matmul_packed_group<const N: usize>(
    x: &[f32],
    n: usize,
    products: &mut [(&Packed, &mut [f32]); N],
) {
    for (w, y) in products.iter() {
        assert!(x.len() >= n * w.in_dim && y.len() >= n * w.out_dim);
    }
    if n == 0 {
        return;
    }
    let outs: [(&Packed, SharedOut); N] =
        std::array::from_fn(|m| (products[m].0, SharedOut(products[m].1.as_mut_ptr())));
    // About four tasks per thread, each a whole number of tiles of the width
    // `panel_range` uses for this many rows (3, 6 or 8 panels).
    let tile = if n >= 8 {
        3
    } else if n >= 4 {
        6
    } else {
        8
    };
    let panels = outs.map(|(w, _)| w.out_dim.div_ceil(LANES));
    let per_task = panels
        .iter()
        .sum::<usize>()
        .div_ceil(4 * rayon::current_num_threads())
        .next_multiple_of(tile);
    let tasks = panels.map(|p| p.div_ceil(per_task));
    (0..tasks.iter().sum::<usize>())
        .into_par_iter()
        .for_each(|mut t| {
            let mut m = 0;
            while t >= tasks[m] {
                t -= tasks[m];
                m += 1;
            }
            let (p0, p1) = (t * per_task, ((t + 1) * per_task).min(panels[m]));
            let (w, out) = outs[m];
            // SAFETY: rows and panels are in bounds (asserted); each task writes the
            // columns of its own panels of its own output only.
            unsafe { panel_range_dispatch(x, n, w, p0, p1, out) };
        });
}

/// Most query heads [`dots_strided_group`] handles in one pass.
pub const MAX_GROUP: usize = 8;

/// Dot products of the `qs.len() / d` query vectors of `qs` with `len` rows of `base`
/// (`stride` apart, starting `offset` into each row), loading each row once for all
/// queries: `out[j·len + t]`. Each product accumulates 16 lanes over chunks of 16, reduces
/// the lanes in a fixed tree, then adds the tail in order.
///
/// # Safety
/// The CPU must support `V`'s instruction set; `qs.len() / d ≤ MAX_GROUP`.
#[inline(always)]
unsafe fn dots_strided_group_impl<V: V16>(
    qs: &[f32],
    d: usize,
    base: &[f32],
    stride: usize,
    offset: usize,
    len: usize,
    out: &mut [f32],
) {
    let group = qs.len() / d;
    let split = d - d % LANES;
    for t in 0..len {
        let row = &base[t * stride + offset..t * stride + offset + d];
        // SAFETY: chunks stay inside each query and `row` (c + 16 ≤ split ≤ d).
        unsafe {
            let mut acc = [V::zero(); MAX_GROUP];
            let mut c = 0;
            while c < split {
                let kv = V::load(row.as_ptr().add(c));
                for (j, a) in acc.iter_mut().enumerate().take(group) {
                    *a = a.fma(V::load(qs.as_ptr().add(j * d + c)), kv);
                }
                c += LANES;
            }
            for (j, a) in acc.iter().enumerate().take(group) {
                let mut s = a.reduce();
                for i in split..d {
                    s = qs[j * d + i].mul_add(row[i], s);
                }
                out[j * len + t] = s;
            }
        }
    }
}

/// `base` holds `len` rows `stride` apart, each with `d` floats from `offset`.
fn assert_rows_fit(base: &[f32], len: usize, stride: usize, offset: usize, d: usize) {
    if len > 0 {
        assert!(
            base.len() >= (len - 1) * stride + offset + d,
            "{len} rows of {d} at stride {stride} (offset {offset}) exceed {} floats",
            base.len()
        );
    }
}

dispatch!(fn dots_strided_group_dispatch => dots_strided_group_impl(qs: &[f32], d: usize, base: &[f32], stride: usize, offset: usize, len: usize, out: &mut [f32]));

/// Scores of several query vectors (`qs`, `d` floats each, at most [`MAX_GROUP`])
/// against `len` rows of `base`: `out[j·len + t]` (attention scores over a KV cache).
pub fn dots_strided_group(
    qs: &[f32],
    d: usize,
    base: &[f32],
    stride: usize,
    offset: usize,
    len: usize,
    out: &mut [f32],
) {
    let group = qs.len() / d;
    assert!(group <= MAX_GROUP && qs.len() == group * d && out.len() >= group * len);
    assert_rows_fit(base, len, stride, offset, d);
    // SAFETY: bounds are checked by slicing inside; group ≤ MAX_GROUP.
    unsafe { dots_strided_group_dispatch(qs, d, base, stride, offset, len, out) }
}

/// Probability-weighted sums of `len` rows of `base` for each of the `out.len() / d`
/// probability rows in `probs` (`probs[j·len + t]`, at most [`MAX_GROUP`] rows):
/// `out[j·d + c] = Σ_t probs[j·len + t] · base[t·stride + offset + c]`. Every output
/// accumulates over `t` in order with fused multiply-adds in its own lane.
///
/// # Safety
/// The CPU must support `V`'s instruction set; the bounds asserted by
/// [`weighted_rows_group`] must hold.
#[inline(always)]
unsafe fn weighted_rows_group_impl<V: V16>(
    probs: &[f32],
    len: usize,
    base: &[f32],
    stride: usize,
    offset: usize,
    d: usize,
    out: &mut [f32],
) {
    let group = out.len() / d;
    let split = d - d % LANES;
    // SAFETY: row `t` of `base` covers `offset..offset + d` and `probs` holds
    // `group × len` values (asserted by the caller); chunks end at `split ≤ d`.
    unsafe {
        for c in (0..split).step_by(LANES) {
            let mut acc = [V::zero(); MAX_GROUP];
            for t in 0..len {
                let x = V::load(base.as_ptr().add(t * stride + offset + c));
                for (j, a) in acc.iter_mut().enumerate().take(group) {
                    *a = a.fma(V::splat(*probs.get_unchecked(j * len + t)), x);
                }
            }
            for (j, a) in acc.iter().enumerate().take(group) {
                a.store(out.as_mut_ptr().add(j * d + c));
            }
        }
    }
    for j in 0..group {
        for i in split..d {
            out[j * d + i] = (0..len).fold(0f32, |s, t| {
                probs[j * len + t].mul_add(base[t * stride + offset + i], s)
            });
        }
    }
}

dispatch!(fn weighted_rows_group_dispatch => weighted_rows_group_impl(probs: &[f32], len: usize, base: &[f32], stride: usize, offset: usize, d: usize, out: &mut [f32]));

/// Attention outputs over a KV cache: for each of the `out.len() / d` rows of
/// probabilities in `probs` (`len` each, at most [`MAX_GROUP`] rows), the weighted sum
/// of `len` value rows of `base` (`stride` apart, `d` floats from `offset`).
pub fn weighted_rows_group(
    probs: &[f32],
    len: usize,
    base: &[f32],
    stride: usize,
    offset: usize,
    d: usize,
    out: &mut [f32],
) {
    let group = out.len() / d;
    assert!(group <= MAX_GROUP && out.len() == group * d && probs.len() >= group * len);
    assert_rows_fit(base, len, stride, offset, d);
    // SAFETY: bounds asserted above; group ≤ MAX_GROUP.
    unsafe { weighted_rows_group_dispatch(probs, len, base, stride, offset, d, out) }
}

/// A read-only strided matrix view: element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// Row-major `rows × cols`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> MatRef<'a> {
        MatRef {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> MatRef<'a> {
        MatRef {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// The `rows × cols` block whose top-left element is `(r0, c0)` (no copy).
    pub fn block(self, r0: usize, rows: usize, c0: usize, cols: usize) -> MatRef<'a> {
        assert!(
            r0 + rows <= self.rows && c0 + cols <= self.cols,
            "block outside the matrix"
        );
        MatRef {
            data: &self.data[r0 * self.rs + c0 * self.cs..],
            rows,
            cols,
            ..self
        }
    }

    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(last < self.data.len(), "matrix view out of bounds");
        }
    }
}

/// `dst = scale · a · b` (or `dst += scale · a · b` when `accumulate`), `dst` row-major
/// `a.rows × b.cols`, with `gemm` on all threads.
pub fn matmul(dst: &mut [f32], a: MatRef, b: MatRef, scale: f32, accumulate: bool) {
    matmul_into(dst, b.cols, a, b, scale, accumulate, true);
}

/// As [`matmul`], with `dst`'s rows `dst_rs` apart; `parallel: false` keeps the product
/// on the calling thread (for small products inside an already parallel loop, where
/// splitting each one again costs more than it gains).
pub fn matmul_into(
    dst: &mut [f32],
    dst_rs: usize,
    a: MatRef,
    b: MatRef,
    scale: f32,
    accumulate: bool,
    parallel: bool,
) {
    assert_eq!(a.cols, b.rows, "inner dimensions differ");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    assert!(dst_rs >= n && (m == 0 || dst.len() >= (m - 1) * dst_rs + n));
    a.check();
    b.check();
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_rs).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    let threads = rayon::current_num_threads();
    let par = if parallel && threads > 1 && m * n * k > 1 << 16 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the views were bounds-checked above and dst holds m rows of n elements,
    // dst_rs apart.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        );
    }
}

/// `y = x Wᵀ` for `n` rows with `gemm` (y is overwritten).
pub fn matmul_tn(x: &[f32], n: usize, w: &[f32], out_dim: usize, in_dim: usize, y: &mut [f32]) {
    assert!(x.len() >= n * in_dim && w.len() >= out_dim * in_dim && y.len() >= n * out_dim);
    if n == 0 {
        return;
    }
    matmul(
        y,
        MatRef::new(x, n, in_dim),
        MatRef::new(w, out_dim, in_dim).t(),
        1.0,
        false,
    );
}

/// Apply a dense layer to `n` rows: the packed row-independent kernel when `rowwise`,
/// `gemm` otherwise.
pub fn linear(x: &[f32], n: usize, lin: &Linear, y: &mut [f32], rowwise: bool) {
    linear_group(x, n, [(lin, y)], rowwise);
}

/// Apply `N` dense layers to the same `n` rows (as [`linear`]); the packed kernel runs
/// them in one parallel region.
pub fn linear_group<const N: usize>(
    x: &[f32],
    n: usize,
    layers: [(&Linear, &mut [f32]); N],
    rowwise: bool,
) {
    let lins = layers.each_ref().map(|(lin, _)| *lin);
    let ys = if rowwise {
        let mut products = layers.map(|(lin, y)| (lin.packed(), y));
        matmul_packed_group(x, n, &mut products);
        products.map(|(_, y)| y)
    } else {
        layers.map(|(lin, y)| {
            matmul_tn(x, n, &lin.w, lin.out_dim, lin.in_dim, y);
            y
        })
    };
    for (lin, y) in lins.iter().zip(ys) {
        if let Some(b) = &lin.b {
            let o = lin.out_dim;
            for row in y[..n * o].chunks_exact_mut(o) {
                for (v, &bb) in row.iter_mut().zip(b) {
                    *v += bb;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::simd::Scalar;
    use super::*;

    fn naive(x: &[f32], n: usize, w: &[f32], o: usize, i: usize) -> Vec<f64> {
        let mut y = vec![0f64; n * o];
        for b in 0..n {
            for j in 0..o {
                y[b * o + j] = (0..i)
                    .map(|k| x[b * i + k] as f64 * w[j * i + k] as f64)
                    .sum();
            }
        }
        y
    }

    fn data(len: usize, salt: f32) -> Vec<f32> {
        (0..len).map(|k| (k as f32 * 0.731 + salt).sin()).collect()
    }

    #[test]
    fn both_kernels_match_naive_product() {
        let (o, i) = (45, 37);
        let w = data(o * i, 0.7);
        let packed = Packed::new(&w, o, i);
        for n in [1, 3, 7, 13] {
            let x = data(n * i, 0.1);
            let expect = naive(&x, n, &w, o, i);
            let mut a = vec![0f32; n * o];
            let mut b = vec![0f32; n * o];
            matmul_packed(&x, n, &packed, &mut a);
            matmul_tn(&x, n, &w, o, i, &mut b);
            for k in 0..n * o {
                assert!((a[k] as f64 - expect[k]).abs() < 1e-4, "packed n={n} {k}");
                assert!((b[k] as f64 - expect[k]).abs() < 1e-4, "gemm n={n} {k}");
            }
        }
    }

    #[test]
    fn packed_result_of_a_row_does_not_depend_on_the_batch() {
        let (o, i) = (1000, 70);
        let w = data(o * i, 0.9);
        let packed = Packed::new(&w, o, i);
        let n = 19;
        let x = data(n * i, 0.3);
        let mut all = vec![0f32; n * o];
        matmul_packed(&x, n, &packed, &mut all);
        for b in 0..n {
            for m in [1usize, 2, 5] {
                let rows = &x[b * i..(b + 1) * i].repeat(m);
                let mut some = vec![0f32; m * o];
                matmul_packed(rows, m, &packed, &mut some);
                assert_eq!(
                    &all[b * o..(b + 1) * o],
                    &some[(m - 1) * o..],
                    "row {b} in {m}"
                );
            }
        }
    }

    #[test]
    fn simd_and_scalar_paths_are_bit_identical() {
        let (n, o, k) = (11, 83, 57);
        let x = data(n * k, 0.2);
        let w = data(o * k, 0.4);
        let packed = Packed::new(&w, o, k);
        let mut fast = vec![0f32; n * o];
        matmul_packed(&x, n, &packed, &mut fast);
        let mut slow = vec![0f32; n * o];
        let panels = o.div_ceil(LANES);
        // SAFETY: in bounds; single-threaded; the scalar path needs no CPU feature.
        unsafe { panel_range::<Scalar>(&x, n, &packed, 0, panels, SharedOut(slow.as_mut_ptr())) };
        assert_eq!(fast, slow);
        let mut fast_dots = vec![0f32; 3 * 5];
        dots_strided_group(&x[..3 * k], k, &w, k, 0, 5, &mut fast_dots);
        let mut slow_dots = vec![0f32; 3 * 5];
        // SAFETY: as above.
        unsafe { dots_strided_group_impl::<Scalar>(&x[..3 * k], k, &w, k, 0, 5, &mut slow_dots) };
        assert_eq!(fast_dots, slow_dots);
        // Grouping does not change a query's scores.
        let mut alone = vec![0f32; 5];
        dots_strided_group(&x[k..2 * k], k, &w, k, 0, 5, &mut alone);
        assert_eq!(alone, fast_dots[5..10]);
    }

    #[test]
    fn weighted_rows_match_naive_sums_on_every_path() {
        // d = 37: two 16-lane chunks and a scalar tail; rows 50 floats apart from 6.
        let (d, stride, offset, len, group) = (37usize, 50usize, 6usize, 9usize, 3usize);
        let base = data(len * stride, 0.5);
        let probs = data(group * len, 0.8);
        let mut fast = vec![0f32; group * d];
        weighted_rows_group(&probs, len, &base, stride, offset, d, &mut fast);
        for j in 0..group {
            for c in 0..d {
                let want: f64 = (0..len)
                    .map(|t| probs[j * len + t] as f64 * base[t * stride + offset + c] as f64)
                    .sum();
                assert!(
                    (fast[j * d + c] as f64 - want).abs() < 1e-5,
                    "row {j} col {c}"
                );
            }
        }
        let mut slow = vec![0f32; group * d];
        // SAFETY: bounds as asserted by the public wrapper; scalar needs no CPU feature.
        unsafe {
            weighted_rows_group_impl::<Scalar>(&probs, len, &base, stride, offset, d, &mut slow)
        };
        assert_eq!(fast, slow);
        let mut alone = vec![0f32; d];
        weighted_rows_group(&probs[len..], len, &base, stride, offset, d, &mut alone);
        assert_eq!(alone, fast[d..2 * d]);
    }

    #[test]
    fn strided_matmul_handles_transposes_and_accumulation() {
        let a = data(3 * 4, 0.1); // 3×4
        let b = data(5 * 4, 0.2); // 5×4, used as its transpose 4×5
        let mut y = vec![1f32; 15];
        matmul(
            &mut y,
            MatRef::new(&a, 3, 4),
            MatRef::new(&b, 5, 4).t(),
            2.0,
            true,
        );
        for i in 0..3 {
            for j in 0..5 {
                let want: f32 =
                    1.0 + 2.0 * (0..4).map(|k| a[i * 4 + k] * b[j * 4 + k]).sum::<f32>();
                assert!((y[i * 5 + j] - want).abs() < 1e-5);
            }
        }
        // aᵀ·a is 4×4 and symmetric.
        let mut g = vec![0f32; 16];
        matmul(
            &mut g,
            MatRef::new(&a, 3, 4).t(),
            MatRef::new(&a, 3, 4),
            1.0,
            false,
        );
        for i in 0..4 {
            for j in 0..4 {
                assert!((g[i * 4 + j] - g[j * 4 + i]).abs() < 1e-6);
            }
        }
    }
}
