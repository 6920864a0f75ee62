//! CPU kernels of the forward pass: matrix products, RMSNorm, rope, causal
//! attention over a KV cache, SwiGLU and softmax. The transformer calls only these.

mod matmul;
pub mod simd;

use rayon::prelude::*;

pub use matmul::{
    MatRef, Packed, dots_strided_group, linear, linear_group, matmul, matmul_into, matmul_packed,
    matmul_tn,
};

/// `out[r] = x[r] / rms(x[r]) * w` for each row of width `w.len()`.
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    x.par_chunks(d)
        .zip(out.par_chunks_mut(d))
        .with_min_len(min_rows(d))
        .for_each(|(xr, or)| {
            let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let inv = 1.0 / (ss + eps).sqrt();
            for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
                *o = g * (v * inv);
            }
        });
}

/// Fewest rows of width `d` worth a parallel task for cheap element-wise work.
pub fn min_rows(d: usize) -> usize {
    (16384 / d.max(1)).max(1)
}

/// Elements per parallel task of cheap element-wise work.
const ELEMENTWISE_CHUNK: usize = 16384;

/// Backward of [`rmsnorm`] for each row: `dx` receives (adds) the gradient given the
/// input `x`, the weight `w` and the output gradient `dy`.
pub fn rmsnorm_backward(x: &[f32], w: &[f32], eps: f32, dy: &[f32], dx: &mut [f32]) {
    let d = w.len();
    x.par_chunks(d)
        .zip(dy.par_chunks(d))
        .zip(dx.par_chunks_mut(d))
        .with_min_len(min_rows(d))
        .for_each(|((xr, dyr), dxr)| {
            let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let inv = 1.0 / (ss + eps).sqrt();
            let dot: f32 = xr
                .iter()
                .zip(dyr)
                .zip(w)
                .map(|((&x, &g), &wv)| x * g * wv)
                .sum();
            let k = inv * inv * inv * dot / d as f32;
            for (((o, &x), &g), &wv) in dxr.iter_mut().zip(xr).zip(dyr).zip(w) {
                *o += inv * wv * g - x * k;
            }
        });
}

/// Backward of [`swiglu`]: from the inputs `gate`, `up` and the output gradient `dh`,
/// write the gradients of gate and up.
pub fn swiglu_backward(gate: &[f32], up: &[f32], dh: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
    let c = ELEMENTWISE_CHUNK;
    gate.par_chunks(c)
        .zip(up.par_chunks(c))
        .zip(dh.par_chunks(c))
        .zip(dgate.par_chunks_mut(c).zip(dup.par_chunks_mut(c)))
        .for_each(|(((gate, up), dh), (dgate, dup))| {
            for i in 0..gate.len() {
                let g = gate[i];
                let sig = 1.0 / (1.0 + exp(-g));
                let silu = g * sig;
                dup[i] = dh[i] * silu;
                dgate[i] = dh[i] * up[i] * sig * (1.0 + g * (1.0 - sig));
            }
        });
}

/// Root mean square of a vector (diagnostics).
pub fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / x.len() as f64).sqrt() as f32
}

/// Precomputed rotary-embedding tables for the half-split ("rotate_half") layout.
pub struct Rope {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f64, max_pos: usize) -> Rope {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for i in 0..half {
                // Hugging Face computes inv_freq in float32; match it.
                let inv = (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32;
                let ang = (p as f32 * inv) as f64;
                cos.push(ang.cos() as f32);
                sin.push(ang.sin() as f32);
            }
        }
        Rope { half, cos, sin }
    }

    pub fn max_positions(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// Rotate every head of one token's vector `x` (`heads × head_dim`) at position `pos`.
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        self.rotate(x, pos, 1.0);
    }

    /// The inverse rotation (the backward of [`Rope::apply`], as rotations are orthogonal).
    pub fn apply_inverse(&self, x: &mut [f32], pos: usize) {
        self.rotate(x, pos, -1.0);
    }

    fn rotate(&self, x: &mut [f32], pos: usize, sign: f32) {
        let h = self.half;
        let c = &self.cos[pos * h..(pos + 1) * h];
        let s = &self.sin[pos * h..(pos + 1) * h];
        for head in x.chunks_exact_mut(2 * h) {
            let (a, b) = head.split_at_mut(h);
            for i in 0..h {
                let (x0, x1) = (a[i], b[i]);
                let si = sign * s[i];
                a[i] = x0 * c[i] - x1 * si;
                b[i] = x1 * c[i] + x0 * si;
            }
        }
    }
}

/// `e^x` without branches, so loops over slices vectorize: `x = k·ln2 + r` with
/// `|r| ≤ ln2/2`, a degree-7 Taylor polynomial for `e^r` (relative error < 3e-7 on
/// that range), and `2^k` put in the exponent bits. Inputs are clamped to
/// [-87.3, 88.7], the range where `e^x` is a normal f32 (below it returns ~1e-38).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.7);
    let k = (x * std::f32::consts::LOG2_E).round();
    let r = k.mul_add(-0.693_145_75, x);
    let r = k.mul_add(-1.428_606_8e-6, r);
    let mut p: f32 = 1.0 / 5040.0;
    p = p.mul_add(r, 1.0 / 720.0);
    p = p.mul_add(r, 1.0 / 120.0);
    p = p.mul_add(r, 1.0 / 24.0);
    p = p.mul_add(r, 1.0 / 6.0);
    p = p.mul_add(r, 0.5);
    p = p.mul_add(r, 1.0);
    p = p.mul_add(r, 1.0);
    let scale = f32::from_bits(((k as i32 + 127) as u32) << 23);
    p * scale
}

/// `gate[i] = silu(gate[i]) * up[i]`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    gate.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(up.par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|(gate, up)| {
            for (g, &u) in gate.iter_mut().zip(up) {
                *g = *g / (1.0 + exp(-*g)) * u;
            }
        });
}

/// Lanes of the reductions below: partial results over interleaved elements, combined
/// at the end in a fixed order, so the loops vectorize and the result is reproducible.
const REDUCE_LANES: usize = 8;

/// Fold `f(x[i])` into `REDUCE_LANES` partial results with `op`, then combine them.
#[inline(always)]
fn reduce<T: Copy>(x: &[f32], init: T, f: impl Fn(f32) -> T, op: impl Fn(T, T) -> T) -> T {
    let mut lanes = [init; REDUCE_LANES];
    let chunks = x.chunks_exact(REDUCE_LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = op(*l, f(v));
        }
    }
    let head = lanes.into_iter().fold(init, &op);
    tail.iter().fold(head, |a, &v| op(a, f(v)))
}

fn max_of(x: &[f32]) -> f32 {
    reduce(x, f32::NEG_INFINITY, |v| v, f32::max)
}

/// In-place softmax of `x`.
pub fn softmax(x: &mut [f32]) {
    let max = max_of(x);
    for v in x.iter_mut() {
        *v = exp(*v - max);
    }
    let inv = 1.0 / reduce(x, 0f32, |v| v, |a, b| a + b);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `log Σ exp(x)`, stably: exponentials of `x − max` with [`exp`], summed in f64.
pub fn log_sum_exp(x: &[f32]) -> f64 {
    let max = max_of(x);
    let s = reduce(x, 0f64, |v| exp(v - max) as f64, |a, b| a + b);
    max as f64 + s.ln()
}

/// Causal attention of one query token's heads that share one KV head (GQA group)
/// over `len` cached positions. `q` holds the group's heads (`group × head_dim`),
/// `k`/`v` rows of `stride` floats of which this KV head starts at `offset`; `scores` is
/// scratch of at least `group × len`; `out` receives `group × head_dim`. Each cached
/// row is read once for the whole group.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &[f32],
    head_dim: usize,
    k: &[f32],
    v: &[f32],
    stride: usize,
    offset: usize,
    len: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = head_dim;
    let group = q.len() / d;
    if group > matmul::MAX_GROUP {
        for j in 0..group {
            let (qj, oj) = (&q[j * d..(j + 1) * d], &mut out[j * d..(j + 1) * d]);
            attend(qj, d, k, v, stride, offset, len, scores, oj);
        }
        return;
    }
    let scale = 1.0 / (d as f32).sqrt();
    let scores = &mut scores[..group * len];
    matmul::dots_strided_group(q, d, k, stride, offset, len, scores);
    for row in scores.chunks_exact_mut(len) {
        for s in row.iter_mut() {
            *s *= scale;
        }
        softmax(row);
    }
    matmul::weighted_rows_group(scores, len, v, stride, offset, d, &mut out[..group * d]);
}

/// Causal attention of one head for `n` consecutive query rows at positions
/// `start..start + n` over keys/values `0..start + n`, as two `gemm` products
/// (scores, then probabilities × values). `q`, `k`, `v` start at this head's first
/// column; rows are `q_stride`, `kv_stride` and `out_stride` floats apart.
///
/// # Safety
/// `out` must be valid for writes of `n` rows of `head_dim` floats at `out_stride`, and
/// nothing else may access those elements during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn attend_causal_block(
    q: &[f32],
    q_stride: usize,
    k: &[f32],
    v: &[f32],
    kv_stride: usize,
    head_dim: usize,
    start: usize,
    n: usize,
    scores: &mut Vec<f32>,
    out: *mut f32,
    out_stride: usize,
) {
    let len = start + n;
    assert!(q.len() >= (n - 1) * q_stride + head_dim);
    assert!(
        k.len() >= (len - 1) * kv_stride + head_dim && v.len() >= (len - 1) * kv_stride + head_dim
    );
    scores.clear();
    scores.resize(n * len, 0.0);
    let scale = 1.0 / (head_dim as f32).sqrt();
    // SAFETY: the operands cover the strided ranges asserted above; `out` is the
    // caller's responsibility.
    unsafe {
        gemm::gemm(
            n,
            len,
            head_dim,
            scores.as_mut_ptr(),
            1,
            len as isize,
            false,
            q.as_ptr(),
            1,
            q_stride as isize,
            k.as_ptr(),
            kv_stride as isize,
            1,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    for (i, row) in scores.chunks_exact_mut(len).enumerate() {
        let valid = start + i + 1;
        softmax(&mut row[..valid]);
        row[valid..].fill(0.0);
    }
    // SAFETY: as above.
    unsafe {
        gemm::gemm(
            n,
            head_dim,
            len,
            out,
            1,
            out_stride as isize,
            false,
            scores.as_ptr(),
            1,
            len as isize,
            v.as_ptr(),
            1,
            kv_stride as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmsnorm_matches_formula() {
        let x = [1.0f32, -2.0, 3.0, 4.0, 0.5, 0.5, 0.5, 0.5];
        let w = [1.0f32, 2.0, 0.5, 1.0];
        let mut out = [0f32; 8];
        rmsnorm(&x, &w, 1e-5, &mut out);
        let r = ((1.0 + 4.0 + 9.0 + 16.0) / 4.0f32 + 1e-5).sqrt();
        assert!((out[1] - (-2.0 / r * 2.0)).abs() < 1e-6);
        assert!((out[7] - 0.5 / (0.25f32 + 1e-5).sqrt()).abs() < 1e-6);
    }

    #[test]
    fn rope_rotates_pairs_half_apart() {
        let rope = Rope::new(4, 10000.0, 8);
        let mut x = [1.0f32, 0.0, 0.0, 0.0];
        rope.apply(&mut x, 1);
        // Pair (x0, x2) rotates by angle 1·θ^0 = 1 rad.
        assert!((x[0] - 1f32.cos()).abs() < 1e-6);
        assert!((x[2] - 1f32.sin()).abs() < 1e-6);
        let mut y = [3.0f32, 4.0, 5.0, 6.0];
        rope.apply(&mut y, 0);
        assert_eq!(y, [3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn attention_over_one_position_returns_its_value() {
        let q = [1.0f32, 2.0];
        let k = [0.0f32, 0.0, 5.0, 5.0];
        let v = [7.0f32, 8.0, 9.0, 10.0];
        let mut scores = [0f32; 4];
        let mut out = [0f32; 2];
        attend(&q, 2, &k, &v, 4, 2, 1, &mut scores, &mut out);
        assert_eq!(out, [9.0, 10.0]);
    }

    #[test]
    fn softmax_and_log_sum_exp_agree() {
        let mut x = [1.0f32, 2.0, 3.0];
        let lse = log_sum_exp(&x);
        let expect = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        // The f32 exponential's relative error (< 5e-7) bounds the error of the sum.
        assert!((lse - expect).abs() < 1e-6);
        softmax(&mut x);
        assert!((x[2] as f64 - (3.0 - expect).exp()).abs() < 1e-6);
        // A vocabulary-sized row (lanes and a tail), its maximum in the tail.
        let mut row: Vec<f32> = (0..49155)
            .map(|i| 12.0 * (i as f32 * 0.013).sin())
            .collect();
        row[49154] = 13.5;
        let max = 13.5f64;
        let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        let expect = max + sum.ln();
        assert!((log_sum_exp(&row) - expect).abs() < 1e-6);
        softmax(&mut row);
        let total: f64 = row.iter().map(|&v| v as f64).sum();
        assert!((total - 1.0).abs() < 1e-5);
        assert!((row[49154] as f64 - (max - expect).exp()).abs() < 1e-6);
    }

    #[test]
    fn block_attention_equals_per_row_attention() {
        let (hd, stride, start, n) = (8usize, 24usize, 3usize, 5usize);
        let len = start + n;
        let k: Vec<f32> = (0..len * stride).map(|i| (i as f32 * 0.37).sin()).collect();
        let v: Vec<f32> = (0..len * stride).map(|i| (i as f32 * 0.11).cos()).collect();
        let q: Vec<f32> = (0..n * 16).map(|i| (i as f32 * 0.53).sin()).collect();
        let mut block = vec![0f32; n * 16];
        let mut scratch = Vec::new();
        // Head at column 8 of K/V rows and of the output rows.
        unsafe {
            attend_causal_block(
                &q,
                16,
                &k[8..],
                &v[8..],
                stride,
                hd,
                start,
                n,
                &mut scratch,
                block.as_mut_ptr().add(8),
                16,
            )
        };
        let mut scores = vec![0f32; len];
        for i in 0..n {
            let mut out = vec![0f32; hd];
            attend(
                &q[i * 16..i * 16 + hd],
                hd,
                &k,
                &v,
                stride,
                8,
                start + i + 1,
                &mut scores,
                &mut out,
            );
            for j in 0..hd {
                assert!(
                    (out[j] - block[i * 16 + 8 + j]).abs() < 1e-5,
                    "row {i} col {j}"
                );
            }
            assert!(block[i * 16..i * 16 + 8].iter().all(|&x| x == 0.0));
        }
    }

    #[test]
    fn exp_is_accurate_over_the_whole_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64 - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn grouped_attention_equals_one_head_at_a_time() {
        let (hd, stride, len, group) = (16usize, 48usize, 7usize, 3usize);
        let k: Vec<f32> = (0..len * stride).map(|i| (i as f32 * 0.29).sin()).collect();
        let v: Vec<f32> = (0..len * stride).map(|i| (i as f32 * 0.17).cos()).collect();
        let q: Vec<f32> = (0..group * hd).map(|i| (i as f32 * 0.41).sin()).collect();
        let mut scores = vec![0f32; group * len];
        let mut together = vec![0f32; group * hd];
        attend(&q, hd, &k, &v, stride, 16, len, &mut scores, &mut together);
        for j in 0..group {
            let mut one = vec![0f32; hd];
            attend(
                &q[j * hd..(j + 1) * hd],
                hd,
                &k,
                &v,
                stride,
                16,
                len,
                &mut scores,
                &mut one,
            );
            assert_eq!(one, together[j * hd..(j + 1) * hd]);
        }
    }
}
