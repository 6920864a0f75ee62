//! One training pass over a batch of sequences under base weights + a LoRA adapter:
//! the summed log-probability of each sequence's label tokens, and the backward of any
//! loss of those sums into the adapter's `A` and `B` (never into base weights).
//!
//! Memory: each layer keeps its input and the activations that are costly to
//! recompute (projections, attention output, MLP inputs); norms, SwiGLU outputs,
//! attention probabilities and dropout masks are recomputed in the backward. The LM
//! head and log-softmax run in chunks over label positions only, and the gradient of
//! each label's log-prob with respect to the hidden state is taken in the same pass,
//! so no `[tokens × vocab]` tensor exists.

use crate::kernels::{self, MatRef, matmul, matmul_into};
use crate::model::Model;
use crate::model::lora::{Adapter, LoraPair};
use crate::model::weights::{Layer, Proj};
use anyhow::{Result, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Label rows processed together by the LM head. `gemm` packs the whole LM-head matrix
/// (vocab × hidden) once per chunk, so chunks must be large enough to amortize it: 256
/// rows made a LoRA step over 4 × 256 tokens about 12 % faster than 64, at the same peak
/// memory (the chunk's logits are 256 × vocab floats).
const HEAD_CHUNK: usize = 256;

/// One training sequence: `ids[t]` for `t ≥ label_from` are labels (predicted from
/// the positions before them). `label_from ≥ 1`.
#[derive(Clone, Copy, Debug)]
pub struct Example<'a> {
    pub ids: &'a [u32],
    pub label_from: usize,
}

/// Dropout on the adapter inputs: probability and the seed of this pass's masks.
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    pub p: f32,
    pub seed: u64,
}

/// Per-sequence sums of label log-probabilities and label counts.
#[derive(Clone, Debug, PartialEq)]
pub struct LogProbs {
    pub sums: Vec<f64>,
    pub counts: Vec<usize>,
}

/// What the backward needs from the forward.
pub struct Tape {
    /// Input of every layer, then the final hidden state: `layers + 1` buffers of n × d.
    inputs: Vec<Vec<f32>>,
    /// (first row, length) of each sequence.
    segments: Vec<(usize, usize)>,
    /// Every layer's activations (slimmed).
    acts: Vec<LayerActs>,
    /// (row, label id) of every label row, in row order.
    labels: Vec<(usize, u32)>,
    /// `∂ log p(label) / ∂ normed hidden` per label row (`labels × d`).
    head_grads: Vec<f32>,
    dropout: Option<Dropout>,
}

/// Gradients shaped like the adapter (`a` holds dA, `b` holds dB).
pub fn zero_grads(adapter: &Adapter) -> Adapter {
    let mut g = adapter.clone();
    for p in g.iter_mut() {
        p.a.fill(0.0);
        p.b.fill(0.0);
    }
    g
}

fn dropout_mask(d: Dropout, layer: usize, p: Proj, n: usize) -> Vec<f32> {
    let seed = crate::sample::sample_seed(d.seed, layer, p as usize);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let keep = 1.0 / (1.0 - d.p);
    (0..n)
        .map(|_| if rng.random::<f32>() < d.p { 0.0 } else { keep })
        .collect()
}

/// Activations of one projection with its LoRA branch.
#[derive(Default)]
struct ProjActs {
    /// Adapter input (after dropout), n × in; empty when it equals the layer input.
    xd: Vec<f32>,
    /// `xd Aᵀ`, n × r.
    u: Vec<f32>,
}

/// `y = x Wᵀ + b + s·(xd Aᵀ) Bᵀ`.
#[allow(clippy::too_many_arguments)]
fn proj_forward(
    x: &[f32],
    n: usize,
    layer: &Layer,
    p: Proj,
    pair: Option<&LoraPair>,
    scale: f32,
    r: usize,
    mask: Option<Vec<f32>>,
    y: &mut [f32],
) -> Option<ProjActs> {
    let lin = layer.get(p);
    kernels::linear(x, n, lin, y, false);
    let pair = pair?;
    let xd: Vec<f32> = match mask {
        Some(m) => x.iter().zip(&m).map(|(a, b)| a * b).collect(),
        None => Vec::new(),
    };
    let xin = if xd.is_empty() { x } else { &xd };
    let mut u = vec![0f32; n * r];
    matmul(
        &mut u,
        MatRef::new(xin, n, lin.in_dim),
        MatRef::new(&pair.a, r, lin.in_dim).t(),
        1.0,
        false,
    );
    matmul(
        y,
        MatRef::new(&u, n, r),
        MatRef::new(&pair.b, lin.out_dim, r).t(),
        scale,
        true,
    );
    Some(ProjActs { xd, u })
}

/// Backward of [`proj_forward`]: `dx += dy W + s·(dy B) A ⊙ mask`, and the pair's
/// gradients accumulate into `g`.
#[allow(clippy::too_many_arguments)]
fn proj_backward(
    x: &[f32],
    n: usize,
    layer: &Layer,
    p: Proj,
    pair: Option<&LoraPair>,
    acts: Option<&ProjActs>,
    mask: Option<&[f32]>,
    scale: f32,
    r: usize,
    dy: &[f32],
    dx: &mut [f32],
    g: Option<&mut LoraPair>,
) {
    let lin = layer.get(p);
    let (o, i) = (lin.out_dim, lin.in_dim);
    matmul(
        dx,
        MatRef::new(dy, n, o),
        MatRef::new(&lin.w, o, i),
        1.0,
        true,
    );
    let (Some(pair), Some(acts), Some(g)) = (pair, acts, g) else {
        return;
    };
    let xin = if acts.xd.is_empty() { x } else { &acts.xd };
    // dB += s · dyᵀ u
    matmul(
        &mut g.b,
        MatRef::new(dy, n, o).t(),
        MatRef::new(&acts.u, n, r),
        scale,
        true,
    );
    // gu = dy B (n × r); dA += s · guᵀ xd; dx += s · (gu A) ⊙ mask
    let mut gu = vec![0f32; n * r];
    matmul(
        &mut gu,
        MatRef::new(dy, n, o),
        MatRef::new(&pair.b, o, r),
        1.0,
        false,
    );
    matmul(
        &mut g.a,
        MatRef::new(&gu, n, r).t(),
        MatRef::new(xin, n, i),
        scale,
        true,
    );
    match mask {
        None => matmul(
            dx,
            MatRef::new(&gu, n, r),
            MatRef::new(&pair.a, r, i),
            scale,
            true,
        ),
        Some(m) => {
            let mut t = vec![0f32; n * i];
            matmul(
                &mut t,
                MatRef::new(&gu, n, r),
                MatRef::new(&pair.a, r, i),
                scale,
                false,
            );
            for ((d, &tv), &mv) in dx.iter_mut().zip(&t).zip(m) {
                *d += tv * mv;
            }
        }
    }
}

/// Query rows per block of the causal attention products: block `(r0, rows)` only meets
/// the first `r0 + rows` keys, so the products skip most of the zero upper triangle.
const CAUSAL_BLOCK: usize = 64;

/// `(r0, rows)` of each block of [`CAUSAL_BLOCK`] query rows of a `len`-token sequence.
fn causal_blocks(len: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..len)
        .step_by(CAUSAL_BLOCK)
        .map(move |r0| (r0, CAUSAL_BLOCK.min(len - r0)))
}

/// `dst (+)= scale · a · b` for a causal `a` (`len × len`, zero above the diagonal), one
/// block of rows at a time and only over the keys the block sees; `dst` row-major
/// `len × b.cols`. Runs on the calling thread (callers loop over heads in parallel).
pub(super) fn causal_times(dst: &mut [f32], a: MatRef, b: MatRef, scale: f32, accumulate: bool) {
    let w = b.cols;
    for (r0, rows) in causal_blocks(a.rows) {
        let keys = r0 + rows;
        let (ab, bb) = (a.block(r0, rows, 0, keys), b.block(0, keys, 0, w));
        matmul_into(&mut dst[r0 * w..], w, ab, bb, scale, accumulate, false);
    }
}

/// `dst (+)= scale · aᵀ · b` for a causal `a` as in [`causal_times`]: block `(r0, rows)`
/// of `a`'s rows adds to the first `r0 + rows` rows of `dst` (`len × b.cols`).
pub(super) fn causal_t_times(dst: &mut [f32], a: MatRef, b: MatRef, scale: f32, accumulate: bool) {
    let w = b.cols;
    if !accumulate {
        dst[..a.rows * w].fill(0.0);
    }
    for (r0, rows) in causal_blocks(a.rows) {
        let keys = r0 + rows;
        let (ab, bb) = (a.block(r0, rows, 0, keys).t(), b.block(r0, rows, 0, w));
        matmul_into(dst, w, ab, bb, scale, true, false);
    }
}

/// `scale · q kᵀ` on and below the diagonal (`len × len`, rows `len` apart, the entries
/// above the diagonal left as they are), one block of query rows at a time.
pub(super) fn causal_scores(dst: &mut [f32], q: MatRef, k: MatRef, scale: f32) {
    let len = q.rows;
    for (r0, rows) in causal_blocks(len) {
        let keys = r0 + rows;
        let (qb, kb) = (
            q.block(r0, rows, 0, q.cols),
            k.block(0, keys, 0, k.cols).t(),
        );
        matmul_into(&mut dst[r0 * len..], len, qb, kb, scale, false, false);
    }
}

/// Causal softmax of `q kᵀ · scale` (`len × len`, zero above the diagonal).
fn attention_probs(q: MatRef, k: MatRef, scale: f32) -> Vec<f32> {
    let len = q.rows;
    let mut p = vec![0f32; len * len];
    causal_scores(&mut p, q, k, scale);
    for (t, row) in p.chunks_exact_mut(len).enumerate() {
        kernels::softmax(&mut row[..=t]);
        row[t + 1..].fill(0.0);
    }
    p
}

/// A head's rows inside a `[rows, stride]` buffer: `len` rows from `r0`, columns from `col`.
fn head_view(
    buf: &[f32],
    r0: usize,
    len: usize,
    stride: usize,
    col: usize,
    hd: usize,
) -> MatRef<'_> {
    MatRef {
        data: &buf[r0 * stride + col..],
        rows: len,
        cols: hd,
        rs: stride,
        cs: 1,
    }
}

/// Everything one layer's forward produces that its backward uses.
#[derive(Default)]
struct LayerActs {
    xn1: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention probabilities per (segment, head): len × len each.
    probs: Vec<Vec<f32>>,
    att: Vec<f32>,
    x2: Vec<f32>,
    xn2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    h: Vec<f32>,
    proj: [Option<ProjActs>; 7],
    masks: [Option<Vec<f32>>; 7],
}

impl LayerActs {
    /// Drop what is cheap to recompute (norm outputs, SwiGLU output, attention
    /// probabilities, dropout masks and masked inputs) before keeping the rest.
    fn slim(&mut self) {
        self.xn1 = Vec::new();
        self.xn2 = Vec::new();
        self.h = Vec::new();
        self.probs = Vec::new();
        self.masks = Default::default();
        for p in self.proj.iter_mut().flatten() {
            p.xd = Vec::new();
        }
    }
}

struct Ctx<'a> {
    model: &'a Model,
    adapter: &'a Adapter,
    n: usize,
    segments: &'a [(usize, usize)],
    dropout: Option<Dropout>,
}

impl Ctx<'_> {
    /// Rotate every row of `buf` (rows of `width`) by rope at its position in its
    /// sequence, or by the inverse rotation (the backward).
    fn rope(&self, buf: &mut [f32], width: usize, inverse: bool) {
        let rope = &self.model.rope;
        buf.par_chunks_mut(width)
            .enumerate()
            .with_min_len(kernels::min_rows(width))
            .for_each(|(row, x)| {
                let s = self.segments.partition_point(|&(r0, _)| r0 <= row) - 1;
                let pos = row - self.segments[s].0;
                if inverse {
                    rope.apply_inverse(x, pos);
                } else {
                    rope.apply(x, pos);
                }
            });
    }

    fn mask(&self, li: usize, p: Proj, len: usize) -> Option<Vec<f32>> {
        let d = self.dropout.filter(|d| d.p > 0.0)?;
        self.adapter.get(li, p)?;
        Some(dropout_mask(d, li, p, len))
    }

    /// Layer `li` forward from `x` (n × d); returns the output and the activations.
    fn layer_forward(&self, li: usize, x: &[f32]) -> (Vec<f32>, LayerActs) {
        let m = self.model;
        let c = &m.config;
        let layer = &m.weights.layers[li];
        let (n, d, qd, kvd, hd) = (self.n, c.hidden, c.q_dim(), c.kv_dim(), c.head_dim);
        let (scale, r) = (self.adapter.config.scale(), self.adapter.config.r);
        let mut masks: [Option<Vec<f32>>; 7] = Default::default();
        for p in Proj::ALL {
            let (_, in_dim) = p.shape(c);
            masks[p as usize] = self.mask(li, p, n * in_dim);
        }
        let mut proj: [Option<ProjActs>; 7] = Default::default();
        let mut fwd = |p: Proj, input: &[f32], y: &mut [f32]| {
            proj[p as usize] = proj_forward(
                input,
                n,
                layer,
                p,
                self.adapter.get(li, p),
                scale,
                r,
                masks[p as usize].clone(),
                y,
            );
        };
        let mut xn1 = vec![0f32; n * d];
        kernels::rmsnorm(x, &layer.attn_norm, c.rms_eps, &mut xn1);
        let (mut q, mut k, mut v) = (vec![0f32; n * qd], vec![0f32; n * kvd], vec![0f32; n * kvd]);
        fwd(Proj::Q, &xn1, &mut q);
        fwd(Proj::K, &xn1, &mut k);
        fwd(Proj::V, &xn1, &mut v);
        self.rope(&mut q, qd, false);
        self.rope(&mut k, kvd, false);
        let group = c.heads / c.kv_heads;
        let tasks: Vec<(usize, usize)> = (0..self.segments.len())
            .flat_map(|s| (0..c.heads).map(move |h| (s, h)))
            .collect();
        let att_scale = 1.0 / (hd as f32).sqrt();
        let results: Vec<(Vec<f32>, Vec<f32>)> = tasks
            .par_iter()
            .map(|&(s, h)| {
                let (r0, len) = self.segments[s];
                let g = h / group;
                let qv = head_view(&q, r0, len, qd, h * hd, hd);
                let kv = head_view(&k, r0, len, kvd, g * hd, hd);
                let vv = head_view(&v, r0, len, kvd, g * hd, hd);
                let p = attention_probs(qv, kv, att_scale);
                let mut o = vec![0f32; len * hd];
                causal_times(&mut o, MatRef::new(&p, len, len), vv, 1.0, false);
                (p, o)
            })
            .collect();
        let mut att = vec![0f32; n * qd];
        let mut probs = Vec::with_capacity(tasks.len());
        for (&(s, h), (p, o)) in tasks.iter().zip(results) {
            let (r0, len) = self.segments[s];
            for t in 0..len {
                att[(r0 + t) * qd + h * hd..(r0 + t) * qd + (h + 1) * hd]
                    .copy_from_slice(&o[t * hd..(t + 1) * hd]);
            }
            probs.push(p);
        }
        let mut x2 = vec![0f32; n * d];
        fwd(Proj::O, &att, &mut x2);
        for (a, &b) in x2.iter_mut().zip(x) {
            *a += b;
        }
        let mut xn2 = vec![0f32; n * d];
        kernels::rmsnorm(&x2, &layer.ffn_norm, c.rms_eps, &mut xn2);
        let (mut gate, mut up) = (vec![0f32; n * c.ffn], vec![0f32; n * c.ffn]);
        fwd(Proj::Gate, &xn2, &mut gate);
        fwd(Proj::Up, &xn2, &mut up);
        let mut h = gate.clone();
        kernels::swiglu(&mut h, &up);
        let mut out = vec![0f32; n * d];
        fwd(Proj::Down, &h, &mut out);
        for (a, &b) in out.iter_mut().zip(&x2) {
            *a += b;
        }
        let acts = LayerActs {
            xn1,
            q,
            k,
            v,
            probs,
            att,
            x2,
            xn2,
            gate,
            up,
            h,
            proj,
            masks,
        };
        (out, acts)
    }

    /// Recompute what [`LayerActs::slim`] dropped, from the layer input `x`.
    fn restore(&self, li: usize, x: &[f32], a: &mut LayerActs) {
        let c = &self.model.config;
        let layer = &self.model.weights.layers[li];
        let (n, d, qd, kvd, hd) = (self.n, c.hidden, c.q_dim(), c.kv_dim(), c.head_dim);
        a.xn1 = vec![0f32; n * d];
        kernels::rmsnorm(x, &layer.attn_norm, c.rms_eps, &mut a.xn1);
        a.xn2 = vec![0f32; n * d];
        kernels::rmsnorm(&a.x2, &layer.ffn_norm, c.rms_eps, &mut a.xn2);
        a.h = a.gate.clone();
        kernels::swiglu(&mut a.h, &a.up);
        let group = c.heads / c.kv_heads;
        let att_scale = 1.0 / (hd as f32).sqrt();
        let tasks: Vec<(usize, usize)> = (0..self.segments.len())
            .flat_map(|s| (0..c.heads).map(move |h| (s, h)))
            .collect();
        a.probs = tasks
            .par_iter()
            .map(|&(s, h)| {
                let (r0, len) = self.segments[s];
                attention_probs(
                    head_view(&a.q, r0, len, qd, h * hd, hd),
                    head_view(&a.k, r0, len, kvd, (h / group) * hd, hd),
                    att_scale,
                )
            })
            .collect();
        for p in Proj::ALL {
            let (_, in_dim) = p.shape(c);
            a.masks[p as usize] = self.mask(li, p, n * in_dim);
            if let (Some(m), Some(pa)) = (&a.masks[p as usize], a.proj[p as usize].as_mut()) {
                let input = match p {
                    Proj::Q | Proj::K | Proj::V => &a.xn1,
                    Proj::O => &a.att,
                    Proj::Gate | Proj::Up => &a.xn2,
                    Proj::Down => &a.h,
                };
                pa.xd = input.iter().zip(m).map(|(x, k)| x * k).collect();
            }
        }
    }

    /// Backward of layer `li`: from the gradient of its output `dout`, return the
    /// gradient of its input and accumulate adapter gradients.
    fn layer_backward(
        &self,
        li: usize,
        x: &[f32],
        a: &LayerActs,
        dout: &[f32],
        grads: &mut Adapter,
    ) -> Vec<f32> {
        let m = self.model;
        let c = &m.config;
        let layer = &m.weights.layers[li];
        let (n, d, qd, kvd, hd) = (self.n, c.hidden, c.q_dim(), c.kv_dim(), c.head_dim);
        let (scale, r) = (self.adapter.config.scale(), self.adapter.config.r);
        let bwd = |p: Proj, input: &[f32], dy: &[f32], dx: &mut [f32], grads: &mut Adapter| {
            let g = grads.pairs[li][p as usize].as_mut();
            proj_backward(
                input,
                n,
                layer,
                p,
                self.adapter.get(li, p),
                a.proj[p as usize].as_ref(),
                a.masks[p as usize].as_deref(),
                scale,
                r,
                dy,
                dx,
                g,
            );
        };
        // MLP
        let mut dh = vec![0f32; n * c.ffn];
        bwd(Proj::Down, &a.h, dout, &mut dh, grads);
        let (mut dgate, mut dup) = (vec![0f32; n * c.ffn], vec![0f32; n * c.ffn]);
        kernels::swiglu_backward(&a.gate, &a.up, &dh, &mut dgate, &mut dup);
        let mut dxn2 = vec![0f32; n * d];
        bwd(Proj::Gate, &a.xn2, &dgate, &mut dxn2, grads);
        bwd(Proj::Up, &a.xn2, &dup, &mut dxn2, grads);
        let mut dx2 = dout.to_vec();
        kernels::rmsnorm_backward(&a.x2, &layer.ffn_norm, c.rms_eps, &dxn2, &mut dx2);
        // Attention
        let mut datt = vec![0f32; n * qd];
        bwd(Proj::O, &a.att, &dx2, &mut datt, grads);
        let group = c.heads / c.kv_heads;
        let att_scale = 1.0 / (hd as f32).sqrt();
        let tasks: Vec<(usize, usize)> = (0..self.segments.len())
            .flat_map(|s| (0..c.kv_heads).map(move |g| (s, g)))
            .collect();
        type Parts = (Vec<(usize, Vec<f32>)>, Vec<f32>, Vec<f32>);
        let parts: Vec<Parts> = tasks
            .par_iter()
            .map(|&(s, g)| {
                let (r0, len) = self.segments[s];
                let kv = head_view(&a.k, r0, len, kvd, g * hd, hd);
                let vv = head_view(&a.v, r0, len, kvd, g * hd, hd);
                let mut dk = vec![0f32; len * hd];
                let mut dv = vec![0f32; len * hd];
                let mut dqs = Vec::with_capacity(group);
                for h in g * group..(g + 1) * group {
                    let p = &a.probs[s * c.heads + h];
                    let pm = MatRef::new(p, len, len);
                    let dov = head_view(&datt, r0, len, qd, h * hd, hd);
                    let qv = head_view(&a.q, r0, len, qd, h * hd, hd);
                    causal_t_times(&mut dv, pm, dov, 1.0, true);
                    let mut dp = vec![0f32; len * len];
                    causal_scores(&mut dp, dov, vv, 1.0);
                    for (t, (dr, pr)) in dp
                        .chunks_exact_mut(len)
                        .zip(p.chunks_exact(len))
                        .enumerate()
                    {
                        let (dr, above) = dr.split_at_mut(t + 1);
                        let pr = &pr[..=t];
                        let dot: f32 = dr.iter().zip(pr).map(|(x, y)| x * y).sum();
                        for (dv_, &pv) in dr.iter_mut().zip(pr) {
                            *dv_ = pv * (*dv_ - dot);
                        }
                        above.fill(0.0);
                    }
                    let dpm = MatRef::new(&dp, len, len);
                    let mut dq = vec![0f32; len * hd];
                    causal_times(&mut dq, dpm, kv, att_scale, false);
                    causal_t_times(&mut dk, dpm, qv, att_scale, true);
                    dqs.push((h, dq));
                }
                (dqs, dk, dv)
            })
            .collect();
        let (mut dq, mut dk, mut dv) =
            (vec![0f32; n * qd], vec![0f32; n * kvd], vec![0f32; n * kvd]);
        for (&(s, g), (dqs, dkp, dvp)) in tasks.iter().zip(parts) {
            let (r0, len) = self.segments[s];
            for t in 0..len {
                let row = r0 + t;
                dk[row * kvd + g * hd..row * kvd + (g + 1) * hd]
                    .copy_from_slice(&dkp[t * hd..(t + 1) * hd]);
                dv[row * kvd + g * hd..row * kvd + (g + 1) * hd]
                    .copy_from_slice(&dvp[t * hd..(t + 1) * hd]);
                for (h, dqh) in &dqs {
                    dq[row * qd + h * hd..row * qd + (h + 1) * hd]
                        .copy_from_slice(&dqh[t * hd..(t + 1) * hd]);
                }
            }
        }
        self.rope(&mut dq, qd, true);
        self.rope(&mut dk, kvd, true);
        let mut dxn1 = vec![0f32; n * d];
        bwd(Proj::Q, &a.xn1, &dq, &mut dxn1, grads);
        bwd(Proj::K, &a.xn1, &dk, &mut dxn1, grads);
        bwd(Proj::V, &a.xn1, &dv, &mut dxn1, grads);
        kernels::rmsnorm_backward(x, &layer.attn_norm, c.rms_eps, &dxn1, &mut dx2);
        dx2
    }
}

/// Forward over `batch` for training: label log-prob sums per sequence, and the tape
/// for [`backward`].
pub fn forward(
    model: &Model,
    adapter: &Adapter,
    batch: &[Example],
    dropout: Option<Dropout>,
) -> Result<(LogProbs, Tape)> {
    forward_with_head_chunk(model, adapter, batch, dropout, HEAD_CHUNK)
}

/// [`forward`] with the LM head run over `head_chunk` label rows at a time.
pub(super) fn forward_with_head_chunk(
    model: &Model,
    adapter: &Adapter,
    batch: &[Example],
    dropout: Option<Dropout>,
    head_chunk: usize,
) -> Result<(LogProbs, Tape)> {
    let (lp, tape) = run(model, adapter, batch, dropout, true, head_chunk)?;
    Ok((lp, tape.expect("a tape was requested")))
}

/// Label log-prob sums per sequence without anything for a backward (scoring).
pub fn logprobs(model: &Model, adapter: &Adapter, batch: &[Example]) -> Result<LogProbs> {
    Ok(run(model, adapter, batch, None, false, HEAD_CHUNK)?.0)
}

/// [`logprobs`] over any number of examples, a few at a time to bound memory.
pub fn logprobs_chunked(model: &Model, adapter: &Adapter, batch: &[Example]) -> Result<LogProbs> {
    let mut all = LogProbs {
        sums: Vec::with_capacity(batch.len()),
        counts: Vec::with_capacity(batch.len()),
    };
    for chunk in batch.chunks(8) {
        let lp = logprobs(model, adapter, chunk)?;
        all.sums.extend(lp.sums);
        all.counts.extend(lp.counts);
    }
    Ok(all)
}

fn run(
    model: &Model,
    adapter: &Adapter,
    batch: &[Example],
    dropout: Option<Dropout>,
    grad: bool,
    head_chunk: usize,
) -> Result<(LogProbs, Option<Tape>)> {
    let c = &model.config;
    let d = c.hidden;
    let mut segments = Vec::with_capacity(batch.len());
    let mut n = 0;
    for (i, e) in batch.iter().enumerate() {
        if e.ids.is_empty() || e.label_from == 0 || e.label_from > e.ids.len() {
            bail!(
                "example {i}: label_from {} is outside 1..={}",
                e.label_from,
                e.ids.len()
            );
        }
        if e.ids.len() > model.context_len() {
            bail!(
                "example {i}: {} tokens exceed the model context of {}",
                e.ids.len(),
                model.context_len()
            );
        }
        if let Some(&t) = e.ids.iter().find(|&&t| t as usize >= c.vocab) {
            bail!(
                "example {i}: token id {t} is outside the vocabulary ({})",
                c.vocab
            );
        }
        segments.push((n, e.ids.len()));
        n += e.ids.len();
    }
    adapter.check_fits(c)?;
    let mut x = vec![0f32; n * d];
    for (row, &t) in batch.iter().flat_map(|e| e.ids.iter()).enumerate() {
        let t = t as usize;
        x[row * d..(row + 1) * d].copy_from_slice(&model.weights.embed[t * d..(t + 1) * d]);
    }
    let ctx = Ctx {
        model,
        adapter,
        n,
        segments: &segments,
        dropout,
    };
    let mut inputs = Vec::with_capacity(if grad { c.layers + 1 } else { 0 });
    let mut acts = Vec::with_capacity(if grad { c.layers } else { 0 });
    for li in 0..c.layers {
        let (out, mut a) = ctx.layer_forward(li, &x);
        if grad {
            a.slim();
            acts.push(a);
            inputs.push(std::mem::replace(&mut x, out));
        } else {
            x = out;
        }
    }
    // Label rows: row of position t-1 predicts ids[t].
    let mut labels = Vec::new();
    for (e, &(r0, len)) in batch.iter().zip(&segments) {
        for t in e.label_from..len {
            labels.push((r0 + t - 1, e.ids[t]));
        }
    }
    let mut sums = vec![0f64; batch.len()];
    let counts: Vec<usize> = batch.iter().map(|e| e.ids.len() - e.label_from).collect();
    let seg_of = |row: usize| segments.partition_point(|&(r0, _)| r0 <= row) - 1;
    // With gradients: ∂ log p(label) / ∂ normed hidden = E[label] − softmaxᵀ·E per row,
    // computed here while the chunk's logits exist.
    let mut head_grads = if grad {
        vec![0f32; labels.len() * d]
    } else {
        Vec::new()
    };
    // One logits buffer for every chunk: a fresh one per chunk (50 MB at 256 rows) is
    // a fresh mapping from the kernel each time, page faults and zeroing included.
    let mut logits_buf = vec![0f32; head_chunk.min(labels.len()) * c.vocab];
    for (ci, chunk) in labels.chunks(head_chunk).enumerate() {
        let logits = &mut logits_buf[..chunk.len() * c.vocab];
        head_logits(model, &x, chunk, logits);
        let lps: Vec<f64> = chunk
            .par_iter()
            .zip(logits.par_chunks_exact_mut(c.vocab))
            .map(|(lab, row)| {
                let lse = kernels::log_sum_exp(row);
                let lp = row[lab.1 as usize] as f64 - lse;
                if grad {
                    let lse = lse as f32;
                    for v in row.iter_mut() {
                        *v = -kernels::exp(*v - lse);
                    }
                    row[lab.1 as usize] += 1.0;
                }
                lp
            })
            .collect();
        for (lab, lp) in chunk.iter().zip(lps) {
            sums[seg_of(lab.0)] += lp;
        }
        if grad {
            let at = ci * head_chunk * d;
            matmul(
                &mut head_grads[at..at + chunk.len() * d],
                MatRef::new(logits, chunk.len(), c.vocab),
                MatRef::new(model.weights.lm_head(), c.vocab, d),
                1.0,
                false,
            );
        }
    }
    let lp = LogProbs { sums, counts };
    if !grad {
        return Ok((lp, None));
    }
    inputs.push(x);
    let tape = Tape {
        inputs,
        acts,
        segments,
        labels,
        head_grads,
        dropout,
    };
    Ok((lp, Some(tape)))
}

/// Logits (`rows × vocab`, written over `logits`) of the final-normed hidden states of
/// `rows`.
fn head_logits(model: &Model, x: &[f32], rows: &[(usize, u32)], logits: &mut [f32]) {
    let c = &model.config;
    let d = c.hidden;
    let mut xn = vec![0f32; rows.len() * d];
    for (i, &(r, _)) in rows.iter().enumerate() {
        kernels::rmsnorm(
            &x[r * d..(r + 1) * d],
            &model.weights.final_norm,
            c.rms_eps,
            &mut xn[i * d..(i + 1) * d],
        );
    }
    kernels::matmul_tn(&xn, rows.len(), model.weights.lm_head(), c.vocab, d, logits);
}

/// Backward of a loss `L(sums)` given `dsum[i] = ∂L/∂sums[i]`: accumulates `∂L/∂A`,
/// `∂L/∂B` of every adapter pair into `grads` (shaped by [`zero_grads`]).
pub fn backward(
    model: &Model,
    adapter: &Adapter,
    mut tape: Tape,
    dsum: &[f32],
    grads: &mut Adapter,
) -> Result<()> {
    let c = &model.config;
    let d = c.hidden;
    if dsum.len() != tape.segments.len() {
        bail!(
            "{} loss gradients for {} sequences",
            dsum.len(),
            tape.segments.len()
        );
    }
    grads.check_fits(c)?;
    let n: usize = tape.segments.iter().map(|s| s.1).sum();
    let x_final = &tape.inputs[c.layers];
    let seg_of = |row: usize| tape.segments.partition_point(|&(r0, _)| r0 <= row) - 1;
    let mut dxn = vec![0f32; n * d];
    for (i, &(r, _)) in tape.labels.iter().enumerate() {
        let coef = dsum[seg_of(r)];
        for (a, &g) in dxn[r * d..(r + 1) * d]
            .iter_mut()
            .zip(&tape.head_grads[i * d..(i + 1) * d])
        {
            *a += coef * g;
        }
    }
    let mut dx = vec![0f32; n * d];
    kernels::rmsnorm_backward(x_final, &model.weights.final_norm, c.rms_eps, &dxn, &mut dx);
    let ctx = Ctx {
        model,
        adapter,
        n,
        segments: &tape.segments,
        dropout: tape.dropout,
    };
    for li in (0..c.layers).rev() {
        let x = &tape.inputs[li];
        let mut acts = std::mem::take(&mut tape.acts[li]);
        ctx.restore(li, x, &mut acts);
        dx = ctx.layer_backward(li, x, &acts, &dx, grads);
    }
    Ok(())
}
