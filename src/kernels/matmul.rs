//! Matrix products `y = x Wᵀ` with `W` row-major `[out, in]`: `gemm` for many rows
//! (prefill, training) and a row-independent kernel for few rows (decoding), whose
//! result for one row never depends on the other rows in the batch.

use crate::model::weights::Linear;
use rayon::prelude::*;

/// Width of the accumulators: every dot product sums 16 lanes over chunks of 16
/// elements, reduces the lanes as a fixed tree, then adds the tail in order.
const LANES: usize = 16;

/// Sixteen f32 lanes, on whichever SIMD the CPU has. All implementations perform the
/// same arithmetic (lane-wise fused multiply-add, the same reduction tree), so results
/// are bit-identical across them and independent of how products are grouped.
trait V16: Copy {
    /// # Safety
    /// The CPU must support the implementation's instruction set.
    unsafe fn zero() -> Self;
    /// # Safety
    /// `p` must point to 16 readable f32 and the CPU must support the instruction set.
    unsafe fn load(p: *const f32) -> Self;
    /// `self + a·b`, lane-wise, fused.
    /// # Safety
    /// The CPU must support the implementation's instruction set.
    unsafe fn fma(self, a: Self, b: Self) -> Self;
    /// Lane tree: `l += l+8`, then `l += l+4`, `l += l+2`, `l += l+1`.
    /// # Safety
    /// The CPU must support the implementation's instruction set.
    unsafe fn reduce(self) -> f32;
}

#[derive(Clone, Copy)]
struct Scalar([f32; LANES]);

impl V16 for Scalar {
    unsafe fn zero() -> Self {
        Scalar([0.0; LANES])
    }
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller guarantees 16 readable floats.
        Scalar(unsafe { std::ptr::read_unaligned(p as *const [f32; LANES]) })
    }
    unsafe fn fma(self, a: Self, b: Self) -> Self {
        let mut r = self.0;
        for ((r, a), b) in r.iter_mut().zip(a.0).zip(b.0) {
            *r = a.mul_add(b, *r);
        }
        Scalar(r)
    }
    unsafe fn reduce(self) -> f32 {
        let mut a = self.0;
        let mut width = LANES / 2;
        while width > 0 {
            for l in 0..width {
                a[l] += a[l + width];
            }
            width /= 2;
        }
        a[0]
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::V16;
    use std::arch::x86_64::*;

    /// Reduce 8 lanes `a` (lanes 0..8 of the tree after the first step).
    #[inline(always)]
    unsafe fn reduce8(a: __m256) -> f32 {
        // SAFETY (all blocks): callers run with AVX enabled.
        unsafe {
            let q = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
            let h = _mm_add_ps(q, _mm_movehl_ps(q, q));
            let o = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
            _mm_cvtss_f32(o)
        }
    }

    #[derive(Clone, Copy)]
    pub struct Avx512(__m512);

    impl V16 for Avx512 {
        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx512(unsafe { _mm512_setzero_ps() })
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx512(unsafe { _mm512_loadu_ps(p) })
        }
        #[inline(always)]
        unsafe fn fma(self, a: Self, b: Self) -> Self {
            Avx512(unsafe { _mm512_fmadd_ps(a.0, b.0, self.0) })
        }
        #[inline(always)]
        unsafe fn reduce(self) -> f32 {
            unsafe {
                let lo = _mm512_castps512_ps256(self.0);
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(self.0), 1));
                reduce8(_mm256_add_ps(lo, hi))
            }
        }
    }

    #[derive(Clone, Copy)]
    pub struct Avx2(__m256, __m256);

    impl V16 for Avx2 {
        #[inline(always)]
        unsafe fn zero() -> Self {
            unsafe { Avx2(_mm256_setzero_ps(), _mm256_setzero_ps()) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { Avx2(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))) }
        }
        #[inline(always)]
        unsafe fn fma(self, a: Self, b: Self) -> Self {
            unsafe {
                Avx2(
                    _mm256_fmadd_ps(a.0, b.0, self.0),
                    _mm256_fmadd_ps(a.1, b.1, self.1),
                )
            }
        }
        #[inline(always)]
        unsafe fn reduce(self) -> f32 {
            unsafe { reduce8(_mm256_add_ps(self.0, self.1)) }
        }
    }
}

/// Raw pointer that may be shared across threads which write disjoint elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: every user writes a disjoint set of indices.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Pointer to element `i`.
    ///
    /// # Safety
    /// `i` must be inside the output.
    #[inline(always)]
    unsafe fn at(self, i: usize) -> *mut f32 {
        // SAFETY: forwarded from the caller.
        unsafe { self.0.add(i) }
    }
}

/// Rows of `x` and of `w` handled together by one register tile.
const TILE_X: usize = 4;
const TILE_W: usize = 6;

/// Dot products of `RX` rows of `x` (from row `x0`) with `RW` rows of `w` (from row
/// `w0`), each of length `k`, stored at `y[(x0+b)·out_dim + w0+j]`.
///
/// # Safety
/// The rows must exist, `y` must have room, no other thread may write those outputs,
/// and the CPU must support `V`'s instruction set.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<V: V16, const RX: usize, const RW: usize>(
    x: &[f32],
    x0: usize,
    w: &[f32],
    w0: usize,
    k: usize,
    out_dim: usize,
    y: SharedOut,
) {
    let split = k - k % LANES;
    // SAFETY: the caller guarantees the instruction set; every pointer below stays
    // inside rows x0..x0+RX of x and w0..w0+RW of w (c + 16 ≤ split ≤ k).
    unsafe {
        let mut acc = [[V::zero(); RW]; RX];
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        let mut c = 0;
        while c < split {
            let mut wc = [V::zero(); RW];
            for (j, v) in wc.iter_mut().enumerate() {
                *v = V::load(wp.add((w0 + j) * k + c));
            }
            for (b, ab) in acc.iter_mut().enumerate() {
                let xv = V::load(xp.add((x0 + b) * k + c));
                for (a, &wv) in ab.iter_mut().zip(&wc) {
                    *a = a.fma(xv, wv);
                }
            }
            c += LANES;
        }
        for (b, ab) in acc.iter().enumerate() {
            for (j, a) in ab.iter().enumerate() {
                let mut s = a.reduce();
                for i in split..k {
                    s = x[(x0 + b) * k + i].mul_add(w[(w0 + j) * k + i], s);
                }
                *y.at((x0 + b) * out_dim + w0 + j) = s;
            }
        }
    }
}

/// Weight rows `w0..w0+rw` (`rw ≤ TILE_W`) against all `n` rows of `x`.
///
/// # Safety
/// As for [`tile`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_block<V: V16>(
    x: &[f32],
    n: usize,
    w: &[f32],
    w0: usize,
    rw: usize,
    k: usize,
    out_dim: usize,
    y: SharedOut,
) {
    macro_rules! tiles {
        ($rw:literal) => {{
            let mut b = 0;
            while b + TILE_X <= n {
                // SAFETY: forwarded from the caller.
                unsafe { tile::<V, TILE_X, $rw>(x, b, w, w0, k, out_dim, y) };
                b += TILE_X;
            }
            while b < n {
                // SAFETY: forwarded from the caller.
                unsafe { tile::<V, 1, $rw>(x, b, w, w0, k, out_dim, y) };
                b += 1;
            }
        }};
    }
    match rw {
        8 => tiles!(8),
        7 => tiles!(7),
        6 => tiles!(6),
        5 => tiles!(5),
        4 => tiles!(4),
        3 => tiles!(3),
        2 => tiles!(2),
        _ => tiles!(1),
    }
}

/// Which SIMD implementation this CPU runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Simd {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

fn simd() -> Simd {
    use std::sync::OnceLock;
    static SIMD: OnceLock<Simd> = OnceLock::new();
    *SIMD.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Simd::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Simd::Avx2;
            }
        }
        Simd::Scalar
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_block_avx512(
    x: &[f32],
    n: usize,
    w: &[f32],
    w0: usize,
    rw: usize,
    k: usize,
    out_dim: usize,
    y: SharedOut,
) {
    // SAFETY: forwarded from the caller, who checked AVX-512F.
    unsafe { rows_block::<x86::Avx512>(x, n, w, w0, rw, k, out_dim, y) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_block_avx2(
    x: &[f32],
    n: usize,
    w: &[f32],
    w0: usize,
    rw: usize,
    k: usize,
    out_dim: usize,
    y: SharedOut,
) {
    // SAFETY: forwarded from the caller, who checked AVX2 and FMA.
    unsafe { rows_block::<x86::Avx2>(x, n, w, w0, rw, k, out_dim, y) }
}

/// Dispatch one block to the CPU's implementation.
///
/// # Safety
/// Bounds and exclusivity as for [`tile`].
#[allow(clippy::too_many_arguments)]
unsafe fn rows_block_dispatch(
    x: &[f32],
    n: usize,
    w: &[f32],
    w0: usize,
    rw: usize,
    k: usize,
    out_dim: usize,
    y: SharedOut,
) {
    // SAFETY: the instruction set matches what `simd()` detected.
    unsafe {
        match simd() {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => rows_block_avx512(x, n, w, w0, rw, k, out_dim, y),
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => rows_block_avx2(x, n, w, w0, rw, k, out_dim, y),
            Simd::Scalar => rows_block::<Scalar>(x, n, w, w0, rw, k, out_dim, y),
        }
    }
}

/// `out[t] = q · base[t·stride + offset ..][..q.len()]` for `t < out.len()`.
///
/// # Safety
/// The CPU must support `V`'s instruction set.
#[inline(always)]
unsafe fn dots_strided_impl<V: V16>(
    q: &[f32],
    base: &[f32],
    stride: usize,
    offset: usize,
    out: &mut [f32],
) {
    let d = q.len();
    let split = d - d % LANES;
    for (t, o) in out.iter_mut().enumerate() {
        let row = &base[t * stride + offset..t * stride + offset + d];
        // SAFETY: chunks stay inside `q` and `row` (c + 16 ≤ split ≤ d).
        let mut s = unsafe {
            let mut acc = V::zero();
            let mut c = 0;
            while c < split {
                acc = acc.fma(V::load(q.as_ptr().add(c)), V::load(row.as_ptr().add(c)));
                c += LANES;
            }
            acc.reduce()
        };
        for i in split..d {
            s = q[i].mul_add(row[i], s);
        }
        *o = s;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dots_strided_avx512(
    q: &[f32],
    base: &[f32],
    stride: usize,
    offset: usize,
    out: &mut [f32],
) {
    // SAFETY: the caller checked AVX-512F.
    unsafe { dots_strided_impl::<x86::Avx512>(q, base, stride, offset, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_strided_avx2(
    q: &[f32],
    base: &[f32],
    stride: usize,
    offset: usize,
    out: &mut [f32],
) {
    // SAFETY: the caller checked AVX2 and FMA.
    unsafe { dots_strided_impl::<x86::Avx2>(q, base, stride, offset, out) }
}

/// Dot products of `q` with `out.len()` rows of `base` spaced `stride` apart, each
/// starting `offset` into its row (attention scores over a KV cache). Same arithmetic
/// as [`dot`].
pub fn dots_strided(q: &[f32], base: &[f32], stride: usize, offset: usize, out: &mut [f32]) {
    if let Some(last) = out.len().checked_sub(1) {
        assert!(base.len() >= last * stride + offset + q.len());
    }
    // SAFETY: the instruction set matches what `simd()` detected.
    unsafe {
        match simd() {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => dots_strided_avx512(q, base, stride, offset, out),
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => dots_strided_avx2(q, base, stride, offset, out),
            Simd::Scalar => dots_strided_impl::<Scalar>(q, base, stride, offset, out),
        }
    }
}

/// Dot product with the fixed arithmetic of this module.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut out = [0f32];
    dots_strided(a, b, 0, 0, &mut out);
    out[0]
}

/// `y[b, j] = x[b, :] · w[j, :]` for `n` rows; each output has the arithmetic of
/// [`dot`], so a row's result never depends on the other rows (decoding a sequence
/// alone or in a batch gives identical numbers).
pub fn matmul_rows(x: &[f32], n: usize, w: &[f32], out_dim: usize, in_dim: usize, y: &mut [f32]) {
    assert!(x.len() >= n * in_dim && w.len() >= out_dim * in_dim && y.len() >= n * out_dim);
    let out = SharedOut(y.as_mut_ptr());
    let blocks = out_dim.div_ceil(TILE_W);
    let per_task = (blocks / (4 * rayon::current_num_threads())).clamp(1, 64);
    (0..blocks.div_ceil(per_task))
        .into_par_iter()
        .for_each(|t| {
            for blk in t * per_task..((t + 1) * per_task).min(blocks) {
                let w0 = blk * TILE_W;
                let rw = TILE_W.min(out_dim - w0);
                // SAFETY: rows and outputs are in bounds (asserted); each task writes the
                // outputs of its own weight rows only.
                unsafe { rows_block_dispatch(x, n, w, w0, rw, in_dim, out_dim, out) };
            }
        });
}

/// `y = x Wᵀ` for `n` rows with `gemm` (y is overwritten).
pub fn matmul_tn(x: &[f32], n: usize, w: &[f32], out_dim: usize, in_dim: usize, y: &mut [f32]) {
    assert!(x.len() >= n * in_dim && w.len() >= out_dim * in_dim && y.len() >= n * out_dim);
    if n == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    let par = if threads > 1 && n * out_dim * in_dim > 1 << 16 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the pointers cover m×k, k×n and m×n elements with the given strides
    // (checked by the assertion above).
    unsafe {
        gemm::gemm(
            n,
            out_dim,
            in_dim,
            y.as_mut_ptr(),
            1,
            out_dim as isize,
            false,
            x.as_ptr(),
            1,
            in_dim as isize,
            w.as_ptr(),
            in_dim as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Apply a dense layer to `n` rows: `rowwise` selects the batch-independent kernel.
pub fn linear(x: &[f32], n: usize, lin: &Linear, y: &mut [f32], rowwise: bool) {
    let (o, i) = (lin.out_dim, lin.in_dim);
    if rowwise {
        matmul_rows(x, n, &lin.w, o, i, y);
    } else {
        matmul_tn(x, n, &lin.w, o, i, y);
    }
    if let Some(b) = &lin.b {
        for row in y[..n * o].chunks_exact_mut(o) {
            for (v, &bb) in row.iter_mut().zip(b) {
                *v += bb;
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
        let (n, o, i) = (7, 45, 37);
        let x = data(n * i, 0.1);
        let w = data(o * i, 0.7);
        let expect = naive(&x, n, &w, o, i);
        let mut a = vec![0f32; n * o];
        let mut b = vec![0f32; n * o];
        matmul_rows(&x, n, &w, o, i, &mut a);
        matmul_tn(&x, n, &w, o, i, &mut b);
        for k in 0..n * o {
            assert!((a[k] as f64 - expect[k]).abs() < 1e-4, "rows {k}");
            assert!((b[k] as f64 - expect[k]).abs() < 1e-4, "gemm {k}");
        }
    }

    #[test]
    fn rowwise_result_does_not_depend_on_batch() {
        let (n, o, i) = (5, 33, 70);
        let x = data(n * i, 0.3);
        let w = data(o * i, 0.9);
        let mut all = vec![0f32; n * o];
        matmul_rows(&x, n, &w, o, i, &mut all);
        for b in 0..n {
            let mut one = vec![0f32; o];
            matmul_rows(&x[b * i..(b + 1) * i], 1, &w, o, i, &mut one);
            assert_eq!(&all[b * o..(b + 1) * o], one.as_slice());
        }
    }

    #[test]
    fn simd_and_scalar_paths_are_bit_identical() {
        let (n, o, k) = (6, 11, 83);
        let x = data(n * k, 0.2);
        let w = data(o * k, 0.4);
        let mut fast = vec![0f32; n * o];
        matmul_rows(&x, n, &w, o, k, &mut fast);
        let mut slow = vec![0f32; n * o];
        for w0 in (0..o).step_by(TILE_W) {
            let rw = TILE_W.min(o - w0);
            // SAFETY: in bounds; single-threaded; the scalar path needs no CPU feature.
            unsafe { rows_block::<Scalar>(&x, n, &w, w0, rw, k, o, SharedOut(slow.as_mut_ptr())) };
        }
        assert_eq!(fast, slow);
        let mut scores = vec![0f32; 3];
        dots_strided(&x[..k], &w, k, 0, &mut scores);
        assert_eq!(scores, [slow[0], slow[1], slow[2]]);
    }
}
