//! The Llama-family decoder forward pass (inference) over a batched KV cache:
//! any mix of sequences, each adding any number of tokens (prefill or decode).

use super::Model;
use super::weights::Proj;
use crate::kernels;
use anyhow::{Result, bail};
use rayon::prelude::*;

/// Keys and values of every layer for `slots` sequences of up to `capacity` tokens.
pub struct KvCache {
    slots: usize,
    capacity: usize,
    kv_dim: usize,
    /// `[layer][slot][position][kv_dim]`.
    k: Vec<f32>,
    v: Vec<f32>,
    len: Vec<usize>,
}

impl KvCache {
    pub fn new(model: &Model, slots: usize, capacity: usize) -> KvCache {
        let c = &model.config;
        let n = c.layers * slots * capacity * c.kv_dim();
        KvCache {
            slots,
            capacity,
            kv_dim: c.kv_dim(),
            k: vec![0.0; n],
            v: vec![0.0; n],
            len: vec![0; slots],
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Tokens stored for `slot`.
    pub fn len(&self, slot: usize) -> usize {
        self.len[slot]
    }

    pub fn clear(&mut self, slot: usize) {
        self.len[slot] = 0;
    }

    fn base(&self, layer: usize, slot: usize) -> usize {
        (layer * self.slots + slot) * self.capacity * self.kv_dim
    }

    /// Make slot `to` a copy of slot `from` (same prompt, several samples).
    pub fn copy_slot(&mut self, from: usize, to: usize) {
        if from == to {
            return;
        }
        let n = self.len[from] * self.kv_dim;
        let layers = self.k.len() / (self.slots * self.capacity * self.kv_dim);
        for l in 0..layers {
            let (a, b) = (self.base(l, from), self.base(l, to));
            self.k.copy_within(a..a + n, b);
            self.v.copy_within(a..a + n, b);
        }
        self.len[to] = self.len[from];
    }
}

/// Query rows per attention task (bounds the score scratch to ATTN_ROWS × context).
const ATTN_ROWS: usize = 128;

/// Which positions get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// No logits (prefill).
    None,
    /// Only the last new token of each sequence (generation).
    Last,
    /// Every new token.
    All,
}

/// How the matrix products of a forward pass are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Matmul {
    /// `gemm`: fastest for many rows (scoring, training); a row's rounding may depend
    /// on how many rows share the call.
    Gemm,
    /// A kernel whose result for a row never depends on the other rows, so a sequence
    /// gets the same numbers alone or in any batch (generation).
    RowIndependent,
}

/// Reusable activation buffers, grown on demand, so decoding allocates nothing.
#[derive(Default)]
pub struct Workspace {
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    scores: Vec<f32>,
    /// (slot, position) of each row.
    rows: Vec<(usize, usize)>,
    /// Attention tasks `(first row, slot, rows, head)` and per-thread score scratch.
    tasks: Vec<(usize, usize, usize, usize)>,
    attn_scratch: Vec<std::sync::Mutex<Vec<f32>>>,
    /// Rows that get logits, and their normed hidden states.
    picked_rows: Vec<usize>,
    picked: Vec<f32>,
    logits: Vec<f32>,
}

fn grow(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if buf.len() < n {
        buf.resize(n, 0.0);
    }
    &mut buf[..n]
}

impl Model {
    /// Run the decoder on new tokens of several sequences: `batch[i] = (slot, tokens)`
    /// appends `tokens` to cache slot `slot`. Returns logits `[rows, vocab]` for the rows
    /// chosen by `want`, in batch order; `matmul` picks the matrix-product kernel.
    /// `probe`, if given, receives the RMS of the
    /// last row's residual stream after the embeddings, after every layer and after
    /// the final norm.
    pub fn forward<'w>(
        &self,
        ws: &'w mut Workspace,
        cache: &mut KvCache,
        batch: &[(usize, &[u32])],
        want: Logits,
        matmul: Matmul,
        mut probe: Option<&mut Vec<f32>>,
    ) -> Result<&'w [f32]> {
        let c = &self.config;
        let (d, qd, kvd, hd) = (c.hidden, c.q_dim(), c.kv_dim(), c.head_dim);
        let rowwise = matmul == Matmul::RowIndependent;
        ws.rows.clear();
        for &(slot, toks) in batch {
            if slot >= cache.slots {
                bail!("cache slot {slot} out of range ({} slots)", cache.slots);
            }
            let start = cache.len[slot];
            let end = start + toks.len();
            let limit = cache.capacity.min(self.rope.max_positions());
            if end > limit {
                bail!(
                    "sequence of {end} tokens exceeds the context of {limit} tokens \
                     (model context {}, cache {})",
                    c.max_positions,
                    cache.capacity
                );
            }
            for (i, &t) in toks.iter().enumerate() {
                if t as usize >= c.vocab {
                    bail!("token id {t} is outside the vocabulary ({})", c.vocab);
                }
                ws.rows.push((slot, start + i));
            }
        }
        let n = ws.rows.len();
        if n == 0 {
            bail!("forward called without tokens");
        }
        let x = grow(&mut ws.x, n * d);
        let mut r = 0;
        for &(_, toks) in batch {
            for &t in toks {
                let t = t as usize;
                x[r * d..(r + 1) * d].copy_from_slice(&self.weights.embed[t * d..(t + 1) * d]);
                r += 1;
            }
        }
        if let Some(p) = probe.as_deref_mut() {
            p.push(kernels::rms(&x[(n - 1) * d..]));
        }
        let max_ctx = ws.rows.iter().map(|&(_, p)| p + 1).max().unwrap_or(0);
        grow(&mut ws.xn, n * d);
        grow(&mut ws.q, n * qd);
        grow(&mut ws.k, n * kvd);
        grow(&mut ws.v, n * kvd);
        grow(&mut ws.att, n * qd);
        grow(&mut ws.gate, n * c.ffn);
        grow(&mut ws.up, n * c.ffn);
        let group = c.heads / c.kv_heads;
        grow(&mut ws.scores, n * max_ctx * group);
        for (li, layer) in self.weights.layers.iter().enumerate() {
            let x = &mut ws.x[..n * d];
            let xn = &mut ws.xn[..n * d];
            kernels::rmsnorm(x, &layer.attn_norm, c.rms_eps, xn);
            let (q, k, v) = (
                &mut ws.q[..n * qd],
                &mut ws.k[..n * kvd],
                &mut ws.v[..n * kvd],
            );
            kernels::linear_group(
                xn,
                n,
                [
                    (layer.get(Proj::Q), &mut *q),
                    (layer.get(Proj::K), &mut *k),
                    (layer.get(Proj::V), &mut *v),
                ],
                rowwise,
            );
            let rows = &ws.rows;
            q.par_chunks_mut(qd)
                .zip(k.par_chunks_mut(kvd))
                .zip(rows.par_iter())
                .with_min_len(kernels::min_rows(qd))
                .for_each(|((qr, kr), &(_, pos))| {
                    self.rope.apply(qr, pos);
                    self.rope.apply(kr, pos);
                });
            for (r, &(slot, pos)) in rows.iter().enumerate() {
                let at = cache.base(li, slot) + pos * kvd;
                cache.k[at..at + kvd].copy_from_slice(&k[r * kvd..(r + 1) * kvd]);
                cache.v[at..at + kvd].copy_from_slice(&v[r * kvd..(r + 1) * kvd]);
            }
            let cache_ref = &*cache;
            let q = &ws.q[..n * qd];
            if rowwise {
                ws.att[..n * qd]
                    .par_chunks_mut(qd)
                    .zip(ws.scores[..n * max_ctx * group].par_chunks_mut(max_ctx * group))
                    .enumerate()
                    .for_each(|(r, (out, scores))| {
                        let (slot, pos) = rows[r];
                        let base = cache_ref.base(li, slot);
                        let kc = &cache_ref.k[base..base + (pos + 1) * kvd];
                        let vc = &cache_ref.v[base..base + (pos + 1) * kvd];
                        for g in 0..c.kv_heads {
                            let heads = g * group * hd..(g + 1) * group * hd;
                            kernels::attend(
                                &q[r * qd..(r + 1) * qd][heads.clone()],
                                hd,
                                kc,
                                vc,
                                kvd,
                                g * hd,
                                pos + 1,
                                scores,
                                &mut out[heads],
                            );
                        }
                    });
            } else {
                // One task per (sequence, head, block of query rows): two gemm products.
                let att = SharedMut(ws.att.as_mut_ptr());
                ws.tasks.clear();
                let mut r0 = 0;
                for &(slot, toks) in batch {
                    for b0 in (0..toks.len()).step_by(ATTN_ROWS) {
                        let len = ATTN_ROWS.min(toks.len() - b0);
                        for h in 0..c.heads {
                            ws.tasks.push((r0 + b0, slot, len, h));
                        }
                    }
                    r0 += toks.len();
                }
                let threads = rayon::current_num_threads();
                if ws.attn_scratch.len() < threads + 1 {
                    ws.attn_scratch.resize_with(threads + 1, Default::default);
                }
                let scratch = &ws.attn_scratch;
                ws.tasks.par_iter().for_each(|&(r0, slot, len, h)| {
                    let (_, start) = rows[r0];
                    let base = cache_ref.base(li, slot) + (h / group) * hd;
                    let end = cache_ref.base(li, slot) + (start + len) * kvd;
                    let me = rayon::current_thread_index().map_or(threads, |i| i.min(threads));
                    let mut scores = scratch[me].lock().unwrap_or_else(|e| e.into_inner());
                    // SAFETY: rows r0..r0+len, columns of head h of `att` are written by
                    // this task only; the buffer holds n·qd floats.
                    unsafe {
                        kernels::attend_causal_block(
                            &q[r0 * qd + h * hd..],
                            qd,
                            &cache_ref.k[base..end],
                            &cache_ref.v[base..end],
                            kvd,
                            hd,
                            start,
                            len,
                            &mut scores,
                            att.at(r0 * qd + h * hd),
                            qd,
                        )
                    };
                });
            }
            let x = &mut ws.x[..n * d];
            let tmp = &mut ws.xn[..n * d];
            kernels::linear(&ws.att[..n * qd], n, layer.get(Proj::O), tmp, rowwise);
            add(x, tmp);
            kernels::rmsnorm(x, &layer.ffn_norm, c.rms_eps, tmp);
            let (gate, up) = (&mut ws.gate[..n * c.ffn], &mut ws.up[..n * c.ffn]);
            kernels::linear_group(
                tmp,
                n,
                [
                    (layer.get(Proj::Gate), &mut *gate),
                    (layer.get(Proj::Up), &mut *up),
                ],
                rowwise,
            );
            kernels::swiglu(gate, up);
            kernels::linear(gate, n, layer.get(Proj::Down), tmp, rowwise);
            add(x, tmp);
            if let Some(p) = probe.as_deref_mut() {
                p.push(kernels::rms(&x[(n - 1) * d..]));
            }
        }
        for &(slot, toks) in batch {
            cache.len[slot] += toks.len();
        }
        // Final norm, only on the rows that need logits.
        ws.picked_rows.clear();
        match want {
            Logits::None => return Ok(&[]),
            Logits::All => ws.picked_rows.extend(0..n),
            Logits::Last => {
                let mut acc = 0;
                for (_, t) in batch {
                    acc += t.len();
                    ws.picked_rows.push(acc - 1);
                }
            }
        }
        let m = ws.picked_rows.len();
        let sel = grow(&mut ws.picked, m * d);
        for (i, &r) in ws.picked_rows.iter().enumerate() {
            kernels::rmsnorm(
                &ws.x[r * d..(r + 1) * d],
                &self.weights.final_norm,
                c.rms_eps,
                &mut sel[i * d..(i + 1) * d],
            );
        }
        if let Some(p) = probe {
            p.push(kernels::rms(&sel[(m - 1) * d..]));
        }
        let logits = grow(&mut ws.logits, m * c.vocab);
        if rowwise {
            kernels::matmul_packed(sel, m, self.weights.lm_head_packed(), logits);
        } else {
            kernels::matmul_tn(sel, m, self.weights.lm_head(), c.vocab, d, logits);
        }
        Ok(&ws.logits[..m * c.vocab])
    }

    /// Log-probability of every next token of `ids` (`out[i] = log p(ids[i+1] | ids[..=i])`),
    /// one fresh sequence, no cache kept.
    pub fn next_token_logprobs(&self, ids: &[u32]) -> Result<Vec<f64>> {
        let mut cache = KvCache::new(self, 1, ids.len());
        let mut ws = Workspace::default();
        let logits = self.forward(
            &mut ws,
            &mut cache,
            &[(0, ids)],
            Logits::All,
            Matmul::Gemm,
            None,
        )?;
        let v = self.config.vocab;
        Ok((0..ids.len().saturating_sub(1))
            .map(|i| {
                let row = &logits[i * v..(i + 1) * v];
                row[ids[i + 1] as usize] as f64 - kernels::log_sum_exp(row)
            })
            .collect())
    }
}

/// Raw pointer for tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: users write disjoint elements only.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// # Safety
    /// `i` must be inside the buffer.
    unsafe fn at(self, i: usize) -> *mut f32 {
        // SAFETY: forwarded from the caller.
        unsafe { self.0.add(i) }
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
