//! Dequantization of GGUF / ggml tensor data to `f32`.
//!
//! GGUF files store each tensor as a flat run of little-endian blocks whose
//! layout is fixed by ggml (`ggml-common.h`, `ggml-quants.c`). This module
//! understands the plain float types (F32, F16, BF16) and the quantized types
//! that Llama-family checkpoints use in practice (Q4_0, Q4_1, Q8_0, Q4_K,
//! Q5_K, Q6_K), and expands them into `f32` with the same arithmetic as ggml's
//! reference dequantizers, so results match ggml bit for bit.
//!
//! Malformed input (wrong byte count, element count that is not a whole
//! number of blocks, unsupported type id) is reported as `Err`, never a panic.
//! Large tensors are dequantized in parallel over runs of whole blocks.

use half::{bf16, f16};
use rayon::prelude::*;

/// A ggml tensor element type that this module can dequantize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
    BF16,
}

/// Elements in one K-quant super-block (`QK_K` in ggml).
const QK_K: usize = 256;

/// Tensors with at least this many elements are dequantized in parallel.
const PAR_MIN_ELEMS: usize = 1 << 16;

/// Elements handed to one parallel task; a multiple of every block size.
const PAR_CHUNK_ELEMS: usize = 1 << 14;

impl GgmlType {
    /// Map a ggml type id; Err(message naming the id) for unsupported ids.
    pub fn from_id(id: u32) -> Result<GgmlType, String> {
        let unsupported = match id {
            0 => return Ok(GgmlType::F32),
            1 => return Ok(GgmlType::F16),
            2 => return Ok(GgmlType::Q4_0),
            3 => return Ok(GgmlType::Q4_1),
            8 => return Ok(GgmlType::Q8_0),
            12 => return Ok(GgmlType::Q4K),
            13 => return Ok(GgmlType::Q5K),
            14 => return Ok(GgmlType::Q6K),
            30 => return Ok(GgmlType::BF16),
            4 => "Q4_2",
            5 => "Q4_3",
            6 => "Q5_0",
            7 => "Q5_1",
            9 => "Q8_1",
            10 => "Q2_K",
            11 => "Q3_K",
            15 => "Q8_K",
            16 => "IQ2_XXS",
            17 => "IQ2_XS",
            18 => "IQ3_XXS",
            19 => "IQ1_S",
            20 => "IQ4_NL",
            21 => "IQ3_S",
            22 => "IQ2_S",
            23 => "IQ4_XS",
            24 => "I8",
            25 => "I16",
            26 => "I32",
            27 => "I64",
            28 => "F64",
            29 => "IQ1_M",
            34 => "TQ1_0",
            35 => "TQ2_0",
            39 => "MXFP4",
            _ => return Err(format!("unknown ggml type id {id}")),
        };
        Err(format!(
            "unsupported ggml type {unsupported} (id {id}); supported: \
             F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K"
        ))
    }

    /// The type's name as ggml spells it (e.g. `"Q4_K"`).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::BF16 => "BF16",
        }
    }

    /// Elements per block: 1 for the float types, 32 or 256 for quantized ones.
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => 32,
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 2 + 16,
            GgmlType::Q4_1 => 2 + 2 + 16,
            GgmlType::Q8_0 => 2 + 32,
            GgmlType::Q4K => 2 + 2 + 12 + 128,
            GgmlType::Q5K => 2 + 2 + 12 + 32 + 128,
            GgmlType::Q6K => 128 + 64 + 16 + 2,
        }
    }

    /// Bytes needed for n elements; Err if n is not a multiple of the block size.
    pub fn bytes_for(self, n: usize) -> Result<usize, String> {
        let bs = self.block_size();
        if !n.is_multiple_of(bs) {
            return Err(format!(
                "{}: element count {n} is not a multiple of the block size {bs}",
                self.name()
            ));
        }
        (n / bs)
            .checked_mul(self.block_bytes())
            .ok_or_else(|| format!("{}: byte size of {n} elements overflows", self.name()))
    }
}

/// Dequantize `n` elements from `data` into `out` (out.len() == n). Err (clear message) if data.len() != bytes_for(n) or n not a multiple of block size.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), String> {
    let n = out.len();
    let need = ty.bytes_for(n)?;
    if data.len() != need {
        return Err(format!(
            "{}: {n} elements need {need} bytes of data, got {}",
            ty.name(),
            data.len()
        ));
    }
    let kernel: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => dequant_f32,
        GgmlType::F16 => dequant_f16,
        GgmlType::BF16 => dequant_bf16,
        GgmlType::Q4_0 => dequant_q4_0,
        GgmlType::Q4_1 => dequant_q4_1,
        GgmlType::Q8_0 => dequant_q8_0,
        GgmlType::Q4K => dequant_q4_k,
        GgmlType::Q5K => dequant_q5_k,
        GgmlType::Q6K => dequant_q6_k,
    };
    if n >= PAR_MIN_ELEMS {
        let chunk_bytes = PAR_CHUNK_ELEMS / ty.block_size() * ty.block_bytes();
        data.par_chunks(chunk_bytes)
            .zip(out.par_chunks_mut(PAR_CHUNK_ELEMS))
            .for_each(|(d, o)| kernel(d, o));
    } else {
        kernel(data, out);
    }
    Ok(())
}

// The kernels below take a run of whole blocks (`data`) and the matching
// output run; `dequantize` has already checked that the lengths agree.

/// Little-endian f16 at byte offset `i`, widened to f32.
#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

fn dequant_f32(data: &[u8], out: &mut [f32]) {
    for (c, y) in data.chunks_exact(4).zip(out) {
        *y = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

fn dequant_f16(data: &[u8], out: &mut [f32]) {
    for (c, y) in data.chunks_exact(2).zip(out) {
        *y = f16::from_le_bytes([c[0], c[1]]).to_f32();
    }
}

fn dequant_bf16(data: &[u8], out: &mut [f32]) {
    for (c, y) in data.chunks_exact(2).zip(out) {
        *y = bf16::from_le_bytes([c[0], c[1]]).to_f32();
    }
}

/// block_q4_0: f16 d, 16 bytes of nibbles. Low nibbles are elements 0..16,
/// high nibbles 16..32; value = (q - 8) * d.
fn dequant_q4_0(data: &[u8], out: &mut [f32]) {
    for (b, y) in data.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        let (lo, hi) = y.split_at_mut(16);
        for ((&q, l), h) in b[2..18].iter().zip(lo).zip(hi) {
            *l = (i32::from(q & 0x0F) - 8) as f32 * d;
            *h = (i32::from(q >> 4) - 8) as f32 * d;
        }
    }
}

/// block_q4_1: f16 d, f16 m, 16 bytes of nibbles (ordered as Q4_0);
/// value = q * d + m.
fn dequant_q4_1(data: &[u8], out: &mut [f32]) {
    for (b, y) in data.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        let m = f16_at(b, 2);
        let (lo, hi) = y.split_at_mut(16);
        for ((&q, l), h) in b[4..20].iter().zip(lo).zip(hi) {
            *l = f32::from(q & 0x0F) * d + m;
            *h = f32::from(q >> 4) * d + m;
        }
    }
}

/// block_q8_0: f16 d, 32 signed bytes; value = q * d.
fn dequant_q8_0(data: &[u8], out: &mut [f32]) {
    for (b, y) in data.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        for (&q, y) in b[2..34].iter().zip(y) {
            *y = f32::from(q as i8) * d;
        }
    }
}

/// Unpack the 12-byte K-quant scale field into eight 6-bit scales and eight
/// 6-bit mins (ggml's `get_scale_min_k4`). Sub-blocks 0..4 keep their values
/// in the low 6 bits of bytes 0..4 (scales) and 4..8 (mins); sub-blocks 4..8
/// take their low 4 bits from bytes 8..12 and their top 2 bits from the top
/// bits of bytes 0..8.
#[inline]
fn k_scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, mn)
}

/// block_q4_K: f16 d, f16 dmin, 12 bytes packed scales/mins, 128 bytes of
/// nibbles. Each 64-element group g uses 32 bytes: low nibbles are sub-block
/// 2g, high nibbles sub-block 2g+1; value = d*sc * q - dmin*m.
fn dequant_q4_k(data: &[u8], out: &mut [f32]) {
    for (b, y) in data.chunks_exact(144).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 0);
        let dmin = f16_at(b, 2);
        let (sc, mn) = k_scales_mins(&b[4..16]);
        let groups = b[16..144].chunks_exact(32).zip(y.chunks_exact_mut(64));
        for (g, (qs, yg)) in groups.enumerate() {
            let d1 = d * f32::from(sc[2 * g]);
            let m1 = dmin * f32::from(mn[2 * g]);
            let d2 = d * f32::from(sc[2 * g + 1]);
            let m2 = dmin * f32::from(mn[2 * g + 1]);
            let (lo, hi) = yg.split_at_mut(32);
            for ((&q, l), h) in qs.iter().zip(lo).zip(hi) {
                *l = d1 * f32::from(q & 0x0F) - m1;
                *h = d2 * f32::from(q >> 4) - m2;
            }
        }
    }
}

/// block_q5_K: as Q4_K plus 32 bytes `qh` between the scales and the
/// nibbles; bit j of qh[l] is the fifth bit of element l of sub-block j.
fn dequant_q5_k(data: &[u8], out: &mut [f32]) {
    for (b, y) in data.chunks_exact(176).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 0);
        let dmin = f16_at(b, 2);
        let (sc, mn) = k_scales_mins(&b[4..16]);
        let qh = &b[16..48];
        let groups = b[48..176].chunks_exact(32).zip(y.chunks_exact_mut(64));
        for (g, (qs, yg)) in groups.enumerate() {
            let d1 = d * f32::from(sc[2 * g]);
            let m1 = dmin * f32::from(mn[2 * g]);
            let d2 = d * f32::from(sc[2 * g + 1]);
            let m2 = dmin * f32::from(mn[2 * g + 1]);
            let (lo, hi) = yg.split_at_mut(32);
            for (((&q, &h5), l), h) in qs.iter().zip(qh).zip(lo).zip(hi) {
                let h5 = h5 >> (2 * g);
                *l = d1 * f32::from((q & 0x0F) | ((h5 & 1) << 4)) - m1;
                *h = d2 * f32::from((q >> 4) | ((h5 & 2) << 3)) - m2;
            }
        }
    }
}

/// block_q6_K: 128 bytes `ql` (low 4 bits), 64 bytes `qh` (high 2 bits),
/// 16 signed 8-bit scales (one per 16 elements), f16 d. Each 128-element
/// half uses 64 bytes of ql and 32 of qh: for l in 0..32, ql[l] holds
/// elements l (low nibble) and l+64 (high), ql[l+32] holds l+32 and l+96,
/// and qh[l] holds the top bits of l, l+32, l+64, l+96 in bit pairs 0..4.
/// value = d * scale * (q - 32).
fn dequant_q6_k(data: &[u8], out: &mut [f32]) {
    for (b, y) in data.chunks_exact(210).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 208);
        let halves = b[0..128]
            .chunks_exact(64)
            .zip(b[128..192].chunks_exact(32))
            .zip(b[192..208].chunks_exact(8))
            .zip(y.chunks_exact_mut(128));
        for (((ql, qh), sc), yh) in halves {
            let (ql_a, ql_b) = ql.split_at(32);
            let (y01, y23) = yh.split_at_mut(64);
            let (y0, y1) = y01.split_at_mut(32);
            let (y2, y3) = y23.split_at_mut(32);
            for l in 0..32 {
                let is = l / 16;
                let (a, c, h) = (ql_a[l], ql_b[l], qh[l]);
                let q1 = i32::from((a & 0x0F) | ((h & 3) << 4)) - 32;
                let q2 = i32::from((c & 0x0F) | (((h >> 2) & 3) << 4)) - 32;
                let q3 = i32::from((a >> 4) | (((h >> 4) & 3) << 4)) - 32;
                let q4 = i32::from((c >> 4) | (((h >> 6) & 3) << 4)) - 32;
                y0[l] = d * f32::from(sc[is] as i8) * q1 as f32;
                y1[l] = d * f32::from(sc[is + 2] as i8) * q2 as f32;
                y2[l] = d * f32::from(sc[is + 4] as i8) * q3 as f32;
                y3[l] = d * f32::from(sc[is + 6] as i8) * q4 as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [GgmlType; 9] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::BF16,
    ];

    fn hex(s: &str) -> Vec<u8> {
        assert!(s.len().is_multiple_of(2));
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn deq(ty: GgmlType, data: &[u8]) -> Vec<f32> {
        let n = data.len() / ty.block_bytes() * ty.block_size();
        let mut out = vec![f32::NAN; n];
        dequantize(ty, data, &mut out).unwrap();
        out
    }

    /// Bitwise equality (so -0.0 vs 0.0 and NaN are checked too).
    fn assert_bits_eq(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "element {i}: got {g}, want {w}");
        }
    }

    fn f16_bytes(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    // ---------------------------------------------------------------------
    // Reference data from an independent implementation: gguf-py 0.19.0
    // (numpy 2.4.6), `gguf.quants.quantize` / `gguf.quants.dequantize`.
    // F32/F16/BF16/Q4_0/Q4_1/Q8_0: input x[i] = float32(sin(i * 0.37) * 3),
    // quantized by gguf-py, then dequantized by gguf-py (all values kept).
    // Q4_K/Q5_K/Q6_K (gguf-py cannot quantize these): two blocks of bytes from
    // numpy RandomState(1234).randint(0, 256), with the f16 d (and dmin) of
    // block i overwritten by (0.0125, 0.0071) * (i + 1) for Q4_K,
    // (0.0061, 0.0033) * (i + 1) for Q5_K and 0.0042 * (i + 1) for Q6_K, then
    // dequantized by gguf-py. Kept: the values at indices 0, 13, 26, .., 507
    // and 511 (`*_PICKS`), the f64 sum, the f64 sum of (i + 1) * y[i] (order
    // sensitive), min and max.
    // ---------------------------------------------------------------------
    #[rustfmt::skip]
    mod gguf_py {
        pub const F32_RAW: &str = "000000003edc8a3f9976014062f92b4089353f4099903840c9f01840a83bc93f";
        pub const F32_EXP: [f32; 8] = [
            0.0, 1.0848463, 2.0228636, 2.687096, 2.9876425, 2.8838255, 2.3896964, 1.5721331,
        ];
        pub const F16_RAW: &str = "0000573c0c406041fa41c541c8404a3e";
        pub const F16_EXP: [f32; 8] = [
            0.0, 1.0849609, 2.0234375, 2.6875, 2.9882812, 2.8847656, 2.390625, 1.5722656,
        ];
        pub const BF16_RAW: &str = "00008b3f01402c403f4039401940c93f";
        pub const BF16_EXP: [f32; 8] = [
            0.0, 1.0859375, 2.015625, 2.6875, 2.984375, 2.890625, 2.390625, 1.5703125,
        ];
        pub const Q4_0_RAW: &str = "fbb5b885533110000224477aacceeffffffdfcb5fddbb885532110000224477aacceffff";
        pub const Q4_0_EXP: [f32; 64] = [
            -0.0, 1.1213379, 1.8688965, 2.616455, 2.9902344, 2.9902344, 2.2426758, 1.4951172,
            0.3737793, -0.7475586, -1.4951172, -2.2426758, -2.616455, -2.616455, -2.616455, -1.8688965,
            -1.1213379, -0.0, 1.1213379, 1.8688965, 2.616455, 2.9902344, 2.9902344, 2.2426758,
            1.4951172, 0.3737793, -0.7475586, -1.4951172, -2.2426758, -2.616455, -2.616455, -2.616455,
            -1.8701172, -1.1220703, -0.0, 1.1220703, 1.8701172, 2.618164, 2.9921875, 2.9921875,
            2.2441406, 1.4960938, 0.37402344, -0.7480469, -1.4960938, -2.2441406, -2.618164, -2.618164,
            -2.618164, -1.8701172, -1.1220703, -0.0, 1.1220703, 2.2441406, 2.618164, 2.9921875,
            2.9921875, 2.2441406, 1.4960938, 0.37402344, -0.7480469, -1.4960938, -2.618164, -2.618164,
        ];
        pub const Q4_1_RAW: &str = "6036f9c1578aaddeeffffddbb9966431100001125f36f7c11235588aaddeeffffddbb99663311000";
        pub const Q4_1_EXP: [f32; 64] = [
            -0.19726562, 0.9980469, 2.1933594, 2.5917969, 2.9902344, 2.9902344, 2.1933594, 1.3964844,
            0.5996094, -0.5957031, -1.3925781, -2.5878906, -2.9863281, -2.9863281, -2.5878906, -2.1894531,
            -0.9941406, 0.20117188, 0.9980469, 2.1933594, 2.5917969, 2.9902344, 2.9902344, 2.1933594,
            1.3964844, 0.5996094, -0.5957031, -1.7910156, -2.5878906, -2.9863281, -2.9863281, -2.5878906,
            -2.1860352, -0.9914551, 0.203125, 0.9995117, 2.1940918, 2.5922852, 2.9904785, 2.9904785,
            2.1940918, 1.3977051, 0.60131836, -0.5932617, -1.7878418, -2.5842285, -2.9824219, -2.9824219,
            -2.5842285, -1.7878418, -0.9914551, 0.203125, 0.9995117, 2.1940918, 2.5922852, 2.9904785,
            2.9904785, 2.1940918, 1.3977051, 0.60131836, -0.5932617, -1.7878418, -2.5842285, -2.9824219,
        ];
        pub const Q8_0_RAW: &str = concat!(
            "0726002e56727f7b664317e8bc9a85818eabd3012f57737f7a654216e7bc9985818f0826abd4023057737f7a644115e6",
            "bb9985818facd4033058737f7a644014e6ba9985",
        );
        pub const Q8_0_EXP: [f32; 64] = [
            0.0, 1.0830383, 2.0248108, 2.6840515, 2.9901276, 2.8959503, 2.4015198, 1.5774689,
            0.54151917, -0.5650635, -1.6010132, -2.4015198, -2.8959503, -2.9901276, -2.6840515, -2.0012665,
            -1.059494, 0.023544312, 1.1065826, 2.048355, 2.7075958, 2.9901276, 2.872406, 2.3779755,
            1.5539246, 0.51797485, -0.5886078, -1.6010132, -2.425064, -2.8959503, -2.9901276, -2.6605072,
            -2.0025635, -1.0366211, 0.04711914, 1.1308594, 2.0496826, 2.7093506, 2.9920654, 2.8742676,
            2.355957, 1.5313721, 0.49475098, -0.6125488, -1.6256104, -2.4266357, -2.8978271, -2.9920654,
            -2.6622314, -1.9790039, -1.0366211, 0.07067871, 1.1308594, 2.0732422, 2.7093506, 2.9920654,
            2.8742676, 2.355957, 1.5078125, 0.4711914, -0.6125488, -1.6491699, -2.4266357, -2.8978271,
        ];
        pub const Q4K_RAW: &str = concat!(
            "6622451fd3e2667f2685429f35dc5dd1ccec0e70745db39c98420dc9f9d777c58f7eacc7b1da54dc17a1c845e9249026",
            "9a5cc6461e20d232ab7e47cd9e84aed0ec9e48f57c1fa8281a1f3de07635bb1dbae9995b78e84d0370374180dc1da17c",
            "456df7ae506dbd54c9a373b67fc979cdf6c0c85efe092719af8daa8f3296550ef00eca80fb5652714c5486032539ab05",
            "66264523a62f6d4afac5f4e1c3b4133fe72a695d8b5c00bd809a8a9de952a4e34b2f4c135029b5fc03406b5e02c5101e",
            "1345e2ee8cebce64c1b7c0a6cb19e6737311af656b0ec489fa37eac9d13566ca0e2c1c51f30c4177c7e96e913cef716f",
            "ea217fde6b5ac991ae0fa96f9c5b21f8518c59cd57e3610a0de7cd247490518c60724ab48c6b6b76c5705fb4fd7b6060",
        );
        pub const Q4K_PICKS: [f32; 41] = [
            2.5795364, 1.3923264, 1.6297684, 3.7885704, 4.638363, 5.68441, 6.634178, -0.014198303,
            7.6530037, 0.56723404, 5.939747, 7.9267616, 9.913776, 1.9299889, 7.928524, 4.924679,
            -0.14908218, 3.1126213, 1.8050194, 1.167675, 9.623947, 13.423019, -0.8235016, 10.501427,
            -0.070991516, 11.633667, 16.132568, 10.508942, 2.5307236, 0.2812729, 0.022888184, 11.395111,
            -0.8376999, 0.5619583, 0.16205597, 4.0531235, 5.0028915, 5.474373, 3.1499405, 7.798805,
            3.9247513,
        ];
        pub const Q4K_SUM: f64 = 2125.184555053711;
        pub const Q4K_WSUM: f64 = 549266.7502593994;
        pub const Q4K_MIN: f32 = -0.8376999;
        pub const Q4K_MAX: f32 = 17.549706;
        pub const Q5K_RAW: &str = concat!(
            "3f1ec21adf0bf253e51fc4ec9f6e43d0f9223071fc7384a559eec8e85424240c2da84f0f108ab5fe29702d2f48bf71b0",
            "b8791f0cecb8f6ed46ffc4acb8af09eb56543998ac5fadf9da038788d3eba1652f49170bb1763b431214ba8f55661e6e",
            "ae266554e249b8c3256fc2806df58799261ba51c87f0b814e40b719bc3065db485bfe190eec6fc292f4abb01f60b4808",
            "f4a8109e76a90154afe280e98fe34e7922ca5fca0a006e111c0df9fd0454f9613f22c21e6790591e5929beca37c975e5",
            "eb3406494eb9a9c3978afa9fb2891a60f95a647a3ec29b06b7c41732546912e8698edf6100ad52c979aaca0d62718b9e",
            "f93a9f735ab12a36a1a964fb726fd44a79b5ba1ff1fd5aa915bf8f1ec7ffe1e2c4d80fbd7738d2abe7875996d1f56554",
            "fae8bc78b4a91535c0a96c1bd551fa027411ae3a69ab5012721e64e6a9f1e4ba015cb06a8ec4d6fa03932d891ee7a4b0",
            "8ce19601f54f96fdc9daf64c6ddbc6b0",
        );
        pub const Q5K_PICKS: [f32; 41] = [
            4.416088, 2.7142715, 4.2269974, 0.83706284, 0.568676, 2.7316666, 9.136353, 4.866562,
            1.825016, 2.172699, 7.8818207, 1.349041, 2.1176033, 1.3465347, 2.627472, 9.160957,
            0.4505844, 1.0727539, 2.1410027, 1.4578362, -0.16498566, 4.592781, 1.738121, 2.8524704,
            4.8043747, 3.5556412, 9.045372, 0.81077576, 4.3257904, 2.8618622, 1.2775421, 7.169853,
            15.426247, 2.4216843, 2.9218597, 6.403496, 1.0235596, -0.10417938, 0.20080566, -0.16517639,
            1.2377548,
        ];
        pub const Q5K_SUM: f64 = 1872.3300285339355;
        pub const Q5K_WSUM: f64 = 519624.11444854736;
        pub const Q5K_MIN: f32 = -0.40916443;
        pub const Q5K_MAX: f32 = 15.426247;
        pub const Q6K_RAW: &str = concat!(
            "133bd86f1a34b8f2e0cbb59c44bc69957b070febe4df1388404730a096202d2bb841bcb4d49fa72888805b26ac7e1ef0",
            "f102febe982fe0b7dedfbcd4e9b2fe790fda3ba2481b37e28213357090cd79676b020f278254e52bf24a83914fbebf21",
            "c3b439872ed07269e2d590f339f75c06b7d1f87a2485459058bea780a12629c879d97089aa0a5e44023ab7d1d769d936",
            "6d219f0ed460742d23395fab125be46d4cc161c4c567dcf8750c47b5517ee90bd07cffcb08bed7eaed69c98e4ba4af28",
            "0f1041f7148781f11013ac25c08d5ec34d1c960771f7ca0d606709987e7e0b41d368331d399d8fed314668f33e959bd6",
            "b98f6153d3342c289bfe903157b1d6b0e9243375a333f05da4809feb5436feef3dad0ae11c7a059d016dab400b9708b3",
            "be1a1759fd15c1809122be2e1e5d0bb6261bdce6621c67229907dfb438e234d4e74906ba98252bbe0c286ce6cc290075",
            "604777c7081e40142f35629957fb7f5f192f874aedca02ef15d7c126968c316bad01ce55134af53b295055a8af5d8e92",
            "a493c612e7db759227e6140e917fb96a27e5bc52bbdf39a0d2d029977ba96938a5184d20",
        );
        pub const Q6K_PICKS: [f32; 41] = [
            -0.8189964, -0.2519989, 1.0751953, -2.1839905, 0.30239868, -1.0919952, -0.83999634, -5.081978,
            12.801544, 0.88199615, -0.33599854, 1.5455933, 2.4737892, -7.4087677, -1.7093925, 5.913574,
            4.829979, -5.312977, -2.763588, -6.404972, 12.566345, 8.954361, -4.821579, -0.5795975,
            4.7123795, -7.6607666, -2.4191895, 19.353516, 1.159195, 7.2575684, -5.1659775, -18.52192,
            28.929474, -28.929474, 14.615936, -8.819962, 13.171143, 1.5287933, -10.701553, -2.8223877,
            4.0319824,
        ];
        pub const Q6K_SUM: f64 = 56.388954162597656;
        pub const Q6K_WSUM: f64 = 774.2498245239258;
        pub const Q6K_MIN: f32 = -30.995865;
        pub const Q6K_MAX: f32 = 28.929474;
    }
    use gguf_py::*;

    fn check_k(ty: GgmlType, raw: &str, picks: &[f32; 41], sums: (f64, f64), min: f32, max: f32) {
        let y = deq(ty, &hex(raw));
        assert_eq!(y.len(), 512, "two blocks");
        let idx = (0..512).step_by(13).chain([511]);
        for (i, &v) in idx.zip(picks) {
            assert_eq!(
                y[i].to_bits(),
                v.to_bits(),
                "{} element {i}: got {}, want {v}",
                ty.name(),
                y[i]
            );
        }
        let mut s = 0.0f64;
        let mut w = 0.0f64;
        for (i, &v) in y.iter().enumerate() {
            s += f64::from(v);
            w += (i + 1) as f64 * f64::from(v);
        }
        assert_eq!(s, sums.0, "{} sum", ty.name());
        assert_eq!(w, sums.1, "{} weighted sum", ty.name());
        let lo = y.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = y.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!((lo, hi), (min, max), "{} min/max", ty.name());
    }

    #[test]
    fn f32_matches_gguf_py() {
        assert_bits_eq(&deq(GgmlType::F32, &hex(F32_RAW)), &F32_EXP);
    }

    #[test]
    fn f16_matches_gguf_py() {
        assert_bits_eq(&deq(GgmlType::F16, &hex(F16_RAW)), &F16_EXP);
    }

    #[test]
    fn bf16_matches_gguf_py() {
        assert_bits_eq(&deq(GgmlType::BF16, &hex(BF16_RAW)), &BF16_EXP);
    }

    #[test]
    fn q4_0_matches_gguf_py() {
        assert_bits_eq(&deq(GgmlType::Q4_0, &hex(Q4_0_RAW)), &Q4_0_EXP);
    }

    #[test]
    fn q4_1_matches_gguf_py() {
        assert_bits_eq(&deq(GgmlType::Q4_1, &hex(Q4_1_RAW)), &Q4_1_EXP);
    }

    #[test]
    fn q8_0_matches_gguf_py() {
        assert_bits_eq(&deq(GgmlType::Q8_0, &hex(Q8_0_RAW)), &Q8_0_EXP);
    }

    #[test]
    fn q4_k_matches_gguf_py() {
        check_k(
            GgmlType::Q4K,
            Q4K_RAW,
            &Q4K_PICKS,
            (Q4K_SUM, Q4K_WSUM),
            Q4K_MIN,
            Q4K_MAX,
        );
    }

    #[test]
    fn q5_k_matches_gguf_py() {
        check_k(
            GgmlType::Q5K,
            Q5K_RAW,
            &Q5K_PICKS,
            (Q5K_SUM, Q5K_WSUM),
            Q5K_MIN,
            Q5K_MAX,
        );
    }

    #[test]
    fn q6_k_matches_gguf_py() {
        check_k(
            GgmlType::Q6K,
            Q6K_RAW,
            &Q6K_PICKS,
            (Q6K_SUM, Q6K_WSUM),
            Q6K_MIN,
            Q6K_MAX,
        );
    }

    // ---------------------------------------------------------------------
    // Hand-built blocks whose values follow directly from the format.
    // ---------------------------------------------------------------------

    #[test]
    fn f32_f16_bf16_by_hand() {
        let mut raw = Vec::new();
        for v in [1.5f32, -0.0, f32::INFINITY, -2.25] {
            raw.extend_from_slice(&v.to_le_bytes());
        }
        assert_bits_eq(
            &deq(GgmlType::F32, &raw),
            &[1.5, -0.0, f32::INFINITY, -2.25],
        );
        // f16 0x3C00 = 1.0, 0xC000 = -2.0, 0x7BFF = 65504 (max), 0x0001 = 2^-24.
        let raw = [0x00, 0x3C, 0x00, 0xC0, 0xFF, 0x7B, 0x01, 0x00];
        assert_bits_eq(
            &deq(GgmlType::F16, &raw),
            &[1.0, -2.0, 65504.0, 2f32.powi(-24)],
        );
        // bf16 is the top half of an f32: 0x3FC0 = 1.5, 0xC080 = -4.0.
        let raw = [0xC0, 0x3F, 0x80, 0xC0];
        assert_bits_eq(&deq(GgmlType::BF16, &raw), &[1.5, -4.0]);
    }

    #[test]
    fn q8_0_by_hand_two_blocks() {
        // Block 0: d = 0.5, qs[i] = -128 + 8i. Block 1: d = -2.0, qs[i] = i - 16.
        let mut raw = Vec::new();
        raw.extend_from_slice(&f16_bytes(0.5));
        raw.extend((0..32).map(|i| (-128 + 8 * i) as i8 as u8));
        raw.extend_from_slice(&f16_bytes(-2.0));
        raw.extend((0..32).map(|i| (i - 16) as i8 as u8));
        let want: Vec<f32> = (0..32)
            .map(|i| (-128 + 8 * i) as f32 * 0.5)
            .chain((0..32).map(|i| (i - 16) as f32 * -2.0))
            .collect();
        assert_eq!(want[0], -64.0);
        assert_bits_eq(&deq(GgmlType::Q8_0, &raw), &want);
    }

    #[test]
    fn q4_0_and_q4_1_by_hand_nibble_order() {
        // qs[j] = low nibble j, high nibble 15 - j: element j <- j, element j+16 <- 15-j.
        let qs: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
        let q: Vec<f32> = (0..16).chain((0..16).rev()).map(|v| v as f32).collect();

        let mut raw = f16_bytes(2.0).to_vec();
        raw.extend_from_slice(&qs);
        let want: Vec<f32> = q.iter().map(|v| (v - 8.0) * 2.0).collect();
        assert_bits_eq(&deq(GgmlType::Q4_0, &raw), &want);

        let mut raw = f16_bytes(0.25).to_vec();
        raw.extend_from_slice(&f16_bytes(-1.0));
        raw.extend_from_slice(&qs);
        let want: Vec<f32> = q.iter().map(|v| v * 0.25 - 1.0).collect();
        assert_bits_eq(&deq(GgmlType::Q4_1, &raw), &want);
    }

    /// Pack eight 6-bit scales and mins the way ggml's K-quants store them.
    fn pack_k_scales(sc: [u8; 8], mn: [u8; 8]) -> [u8; 12] {
        let mut s = [0u8; 12];
        for j in 0..4 {
            s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            s[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
            s[j + 8] = (sc[j + 4] & 0x0F) | ((mn[j + 4] & 0x0F) << 4);
        }
        s
    }

    const SC: [u8; 8] = [1, 2, 3, 63, 17, 33, 48, 63];
    const MN: [u8; 8] = [0, 5, 63, 7, 16, 31, 62, 1];

    #[test]
    fn k_scale_unpacking_round_trips() {
        assert_eq!(k_scales_mins(&pack_k_scales(SC, MN)), (SC, MN));
    }

    #[test]
    fn q4_k_by_hand() {
        // d = 1, dmin = 0.5, every qs byte 0x53: sub-blocks 0,2,4,6 read q = 3,
        // sub-blocks 1,3,5,7 read q = 5. Element e is in sub-block e / 32.
        let mut raw = f16_bytes(1.0).to_vec();
        raw.extend_from_slice(&f16_bytes(0.5));
        raw.extend_from_slice(&pack_k_scales(SC, MN));
        raw.extend_from_slice(&[0x53; 128]);
        let want: Vec<f32> = (0..256)
            .map(|e| {
                let j = e / 32;
                let q = if j % 2 == 0 { 3.0 } else { 5.0 };
                f32::from(SC[j]) * q - 0.5 * f32::from(MN[j])
            })
            .collect();
        assert_bits_eq(&deq(GgmlType::Q4K, &raw), &want);
    }

    #[test]
    fn q5_k_by_hand() {
        // d = 0.5, dmin = 0.25, qs bytes 0xA5 (low 5, high 10), qh bytes 0x96:
        // sub-block j gets fifth bit (0x96 >> j) & 1.
        let mut raw = f16_bytes(0.5).to_vec();
        raw.extend_from_slice(&f16_bytes(0.25));
        raw.extend_from_slice(&pack_k_scales(SC, MN));
        raw.extend_from_slice(&[0x96; 32]);
        raw.extend_from_slice(&[0xA5; 128]);
        let want: Vec<f32> = (0..256)
            .map(|e| {
                let j = e / 32;
                let low = if j % 2 == 0 { 5.0 } else { 10.0 };
                let q = low + 16.0 * f32::from((0x96u8 >> j) & 1);
                0.5 * f32::from(SC[j]) * q - 0.25 * f32::from(MN[j])
            })
            .collect();
        // Element 0: 0.5 * 1 * 5 - 0; element 32: 0.5 * 2 * (10 + 16) - 0.25 * 5.
        assert_eq!((want[0], want[32]), (2.5, 24.75));
        assert_bits_eq(&deq(GgmlType::Q5K, &raw), &want);
    }

    #[test]
    fn q6_k_by_hand() {
        // ql bytes 0xA5, qh bytes 0xE4 (bit pairs 0,1,2,3): within each 128-element
        // half, elements 0..32 read (5 | 0<<4) - 32 = -27, 32..64 read (5 | 1<<4) - 32
        // = -11, 64..96 read (10 | 2<<4) - 32 = 10, 96..128 read (10 | 3<<4) - 32 = 26.
        // Scale s of element e is scales[e / 16] = e / 16 - 8; d = 0.5.
        let mut raw = vec![0xA5; 128];
        raw.extend_from_slice(&[0xE4; 64]);
        raw.extend((0..16).map(|i| (i - 8) as i8 as u8));
        raw.extend_from_slice(&f16_bytes(0.5));
        let want: Vec<f32> = (0..256)
            .map(|e| {
                let q = [-27.0, -11.0, 10.0, 26.0][(e % 128) / 32];
                0.5 * ((e / 16) as f32 - 8.0) * q
            })
            .collect();
        assert_bits_eq(&deq(GgmlType::Q6K, &raw), &want);
    }

    // ---------------------------------------------------------------------
    // Sizes, ids, errors, and the parallel path.
    // ---------------------------------------------------------------------

    #[test]
    fn sizes_and_names_match_ggml() {
        // (id, name, block size, block bytes) as in GGML_QUANT_SIZES of gguf-py.
        let table = [
            (0, "F32", 1, 4),
            (1, "F16", 1, 2),
            (2, "Q4_0", 32, 18),
            (3, "Q4_1", 32, 20),
            (8, "Q8_0", 32, 34),
            (12, "Q4_K", 256, 144),
            (13, "Q5_K", 256, 176),
            (14, "Q6_K", 256, 210),
            (30, "BF16", 1, 2),
        ];
        for (ty, (id, name, bs, bb)) in ALL.into_iter().zip(table) {
            assert_eq!(GgmlType::from_id(id), Ok(ty));
            assert_eq!(
                (ty.name(), ty.block_size(), ty.block_bytes()),
                (name, bs, bb)
            );
            assert_eq!(ty.bytes_for(0), Ok(0));
            assert_eq!(ty.bytes_for(bs * 3), Ok(bb * 3));
        }
    }

    #[test]
    fn unsupported_and_unknown_ids() {
        for (id, name) in [
            (6, "Q5_0"),
            (7, "Q5_1"),
            (10, "Q2_K"),
            (11, "Q3_K"),
            (15, "Q8_K"),
            (23, "IQ4_XS"),
        ] {
            let e = GgmlType::from_id(id).unwrap_err();
            assert!(e.contains(name) && e.contains(&format!("id {id}")), "{e}");
        }
        let e = GgmlType::from_id(1000).unwrap_err();
        assert!(e.contains("1000"), "{e}");
    }

    #[test]
    fn bytes_for_rejects_partial_blocks_and_overflow() {
        let e = GgmlType::Q4K.bytes_for(100).unwrap_err();
        assert!(
            e.contains("Q4_K") && e.contains("100") && e.contains("256"),
            "{e}"
        );
        assert!(GgmlType::Q8_0.bytes_for(33).is_err());
        assert!(GgmlType::F32.bytes_for(usize::MAX).is_err());
        assert_eq!(GgmlType::F32.bytes_for(7), Ok(28));
    }

    #[test]
    fn dequantize_rejects_bad_lengths() {
        for ty in ALL {
            let bs = ty.block_size();
            let good = vec![0u8; 2 * ty.block_bytes()];
            let mut out = vec![0.0f32; 2 * bs];
            assert!(dequantize(ty, &good, &mut out).is_ok());
            // One byte short / one byte too many.
            let e = dequantize(ty, &good[1..], &mut out).unwrap_err();
            assert!(e.contains(ty.name()) && e.contains("bytes"), "{e}");
            let mut long = good.clone();
            long.push(0);
            assert!(dequantize(ty, &long, &mut out).is_err());
            // Output shorter than the data describes.
            assert!(dequantize(ty, &good, &mut out[bs..]).is_err());
            // Element count that is not a whole number of blocks.
            if bs > 1 {
                assert!(dequantize(ty, &good, &mut out[1..]).is_err());
            }
        }
        let mut empty: [f32; 0] = [];
        assert!(dequantize(GgmlType::Q6K, &[], &mut empty).is_ok());
    }

    #[test]
    fn parallel_path_matches_per_block_results() {
        // Big enough to take the rayon path, and not a multiple of the chunk size.
        for (ty, raw) in [
            (GgmlType::F16, hex(F16_RAW)),
            (GgmlType::Q4_0, hex(Q4_0_RAW)),
            (GgmlType::Q8_0, hex(Q8_0_RAW)),
            (GgmlType::Q4K, hex(Q4K_RAW)),
            (GgmlType::Q6K, hex(Q6K_RAW)),
        ] {
            let small = deq(ty, &raw);
            let reps = PAR_MIN_ELEMS / small.len() + 3;
            let big = deq(ty, &raw.repeat(reps));
            assert!(big.len() >= PAR_MIN_ELEMS && !big.len().is_multiple_of(PAR_CHUNK_ELEMS));
            for chunk in big.chunks(small.len()) {
                assert_bits_eq(chunk, &small);
            }
        }
    }
}
