//! Matrix products `y = x Wᵀ` with `W` row-major `[out, in]`: `gemm` for many rows
//! (prefill, training) and a row-independent kernel for few rows (decoding), whose
//! result for one row never depends on the other rows in the batch.

use crate::model::weights::Linear;
use rayon::prelude::*;

const LANES: usize = 16;

#[inline(always)]
fn dot_generic(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let split = n - n % LANES;
    let mut acc = [0f32; LANES];
    for (ca, cb) in a[..split]
        .chunks_exact(LANES)
        .zip(b[..split].chunks_exact(LANES))
    {
        for l in 0..LANES {
            acc[l] = ca[l].mul_add(cb[l], acc[l]);
        }
    }
    // Fixed-order tree reduction of the lanes.
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            acc[l] += acc[l + width];
        }
        width /= 2;
    }
    let mut s = acc[0];
    for i in split..n {
        s = a[i].mul_add(b[i], s);
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_generic(a, b)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// Dot product with a fixed summation order (16 lanes, tree reduction, tail).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports the enabled features (checked above).
        return unsafe { dot_avx2(a, b) };
    }
    dot_generic(a, b)
}

/// Raw pointer that may be shared across threads which write disjoint elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: every user writes a disjoint set of indices.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// `y[b, j] = x[b, :] · w[j, :]` for `n` rows, each output an independent [`dot`].
pub fn matmul_rows(x: &[f32], n: usize, w: &[f32], out_dim: usize, in_dim: usize, y: &mut [f32]) {
    assert!(x.len() >= n * in_dim && w.len() >= out_dim * in_dim && y.len() >= n * out_dim);
    let out = SharedOut(y.as_mut_ptr());
    let chunk = 64;
    (0..out_dim.div_ceil(chunk)).into_par_iter().for_each(|c| {
        let out = out;
        let j0 = c * chunk;
        let j1 = (j0 + chunk).min(out_dim);
        for j in j0..j1 {
            let wr = &w[j * in_dim..(j + 1) * in_dim];
            for b in 0..n {
                let v = dot(&x[b * in_dim..(b + 1) * in_dim], wr);
                // SAFETY: (b, j) is written by exactly one task; b < n, j < out_dim.
                unsafe { *out.0.add(b * out_dim + j) = v };
            }
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
}
