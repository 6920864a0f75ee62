//! CPU kernels of the forward pass: matrix products, RMSNorm, rope, causal
//! attention over a KV cache, SwiGLU and softmax. The transformer calls only these.

mod matmul;

pub use matmul::{dot, dots_strided, linear, matmul_rows, matmul_tn};

/// `out[r] = x[r] / rms(x[r]) * w` for each row of width `w.len()`.
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let inv = 1.0 / (ss + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = g * (v * inv);
        }
    }
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
        let h = self.half;
        let c = &self.cos[pos * h..(pos + 1) * h];
        let s = &self.sin[pos * h..(pos + 1) * h];
        for head in x.chunks_exact_mut(2 * h) {
            let (a, b) = head.split_at_mut(h);
            for i in 0..h {
                let (x0, x1) = (a[i], b[i]);
                a[i] = x0 * c[i] - x1 * s[i];
                b[i] = x1 * c[i] + x0 * s[i];
            }
        }
    }
}

/// `gate[i] = silu(gate[i]) * up[i]`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// In-place softmax of `x`.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `log Σ exp(x)`, computed stably in f64.
pub fn log_sum_exp(x: &[f32]) -> f64 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let s: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
    max + s.ln()
}

/// Causal attention of one query token over `len` cached positions of one KV head.
/// `q` is one head (`head_dim`), `k`/`v` hold rows of `stride` floats of which this
/// head's slice starts at `offset`; `scores` is scratch of at least `len`.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    offset: usize,
    len: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = q.len();
    let scale = 1.0 / (d as f32).sqrt();
    let scores = &mut scores[..len];
    matmul::dots_strided(q, k, stride, offset, scores);
    for s in scores.iter_mut() {
        *s *= scale;
    }
    softmax(scores);
    out.fill(0.0);
    for (t, &p) in scores.iter().enumerate() {
        let vr = &v[t * stride + offset..t * stride + offset + d];
        for (o, &x) in out.iter_mut().zip(vr) {
            *o += p * x;
        }
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
        attend(&q, &k, &v, 4, 2, 1, &mut scores, &mut out);
        assert_eq!(out, [9.0, 10.0]);
    }

    #[test]
    fn softmax_and_log_sum_exp_agree() {
        let mut x = [1.0f32, 2.0, 3.0];
        let lse = log_sum_exp(&x);
        let expect = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((lse - expect).abs() < 1e-9);
        softmax(&mut x);
        assert!((x[2] as f64 - (3.0 - expect).exp()).abs() < 1e-6);
    }
}
