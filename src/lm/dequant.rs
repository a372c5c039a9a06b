//! ggml's block-quantised tensor types, dequantised to `f32` as llama.cpp's
//! `dequantize_row_*` do: the legacy 32-weight blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), the
//! 256-weight K-quants (Q2_K to Q6_K: what `Q4_K_M`, `Q5_K_M` and `Q6_K` files hold) and the
//! non-linear 4-bit types (IQ4_NL, IQ4_XS). Each value is computed in the same order of
//! `f32` operations as the reference (llama.cpp's C and gguf-py's numpy), so the two agree
//! bit for bit (`tests/fixtures/gguf/make_gguf_fixtures.py` writes the reference's values).

use half::f16;

use super::gguf::GgmlType;

/// IQ4_NL's and IQ4_XS's 16 levels (`kvalues_iq4nl`).
const IQ4_LEVELS: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The block types [`dequantize`] reads.
pub const BLOCK_TYPES: [GgmlType; 12] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
];

/// `n` weights from `bytes`, whole blocks of type `ty`; `None` for a type that is not a
/// block type read here, or bytes that are not `n` weights' worth of blocks.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Option<Vec<f32>> {
    use GgmlType::*;
    let block: fn(&[u8], &mut [f32]) = match ty {
        Q8_0 => q8_0,
        Q4_0 => q4_0,
        Q4_1 => q4_1,
        Q5_0 => q5_0,
        Q5_1 => q5_1,
        Q2_K => q2_k,
        Q3_K => q3_k,
        Q4_K => q4_k,
        Q5_K => q5_k,
        Q6_K => q6_k,
        IQ4_NL => iq4_nl,
        IQ4_XS => iq4_xs,
        _ => return None,
    };
    let (weights, size) = ty.block_layout()?;
    let (weights, size) = (weights as usize, size as usize);
    if !n.is_multiple_of(weights) || bytes.len() != n / weights * size {
        return None;
    }
    let mut out = vec![0f32; n];
    for (b, y) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(weights)) {
        block(b, y);
    }
    Some(out)
}

/// The f16 at byte `at`.
fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Q8_0: f16 scale, 32 signed bytes.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = f32::from(q as i8) * d;
    }
}

/// Q4_0: f16 scale, 16 bytes of nibbles (the low ones are weights 0-15), offset 8.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = f32::from((q & 15) as i8 - 8) * d;
        y[j + 16] = f32::from((q >> 4) as i8 - 8) * d;
    }
}

/// Q4_1: f16 scale and minimum, 16 bytes of nibbles.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half_at(b, 0), half_at(b, 2));
    for (j, &q) in b[4..20].iter().enumerate() {
        y[j] = f32::from(q & 15) * d + m;
        y[j + 16] = f32::from(q >> 4) * d + m;
    }
}

/// Q5_0 and Q5_1's 5-bit values: nibbles as Q4's, the fifth bit of weight `i` bit `i` of
/// the 32-bit `qh`.
fn five_bits(qh: &[u8], qs: &[u8], mut put: impl FnMut(usize, u8)) {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    for (j, &q) in qs.iter().enumerate() {
        let high = |i: usize| (((qh >> i) & 1) as u8) << 4;
        put(j, (q & 15) | high(j));
        put(j + 16, (q >> 4) | high(j + 16));
    }
}

/// Q5_0: f16 scale, `qh`, 16 bytes of nibbles, offset 16.
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    five_bits(&b[2..6], &b[6..22], |i, q| {
        y[i] = f32::from(q as i8 - 16) * d
    });
}

/// Q5_1: f16 scale and minimum, `qh`, 16 bytes of nibbles.
fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half_at(b, 0), half_at(b, 2));
    five_bits(&b[4..8], &b[8..24], |i, q| y[i] = f32::from(q) * d + m);
}

/// The 2-bit field of K-quant weight `i` (of 256) in `qs`: each 128 weights read 32 bytes,
/// each 32 of them the next 2 bits of those bytes.
fn two_bits(qs: &[u8], i: usize) -> u8 {
    let (half, shift, l) = (i / 128, (i % 128) / 32, i % 32);
    (qs[half * 32 + l] >> (2 * shift)) & 3
}

/// Q2_K: 16 bytes of 4-bit scale (low) and minimum (high) per 16 weights, 64 bytes of 2-bit
/// values, f16 `d` and `dmin`.
fn q2_k(b: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, dmin) = (half_at(b, 80), half_at(b, 82));
    for (i, y) in y.iter_mut().enumerate() {
        let sc = scales[i / 16];
        let dl = d * f32::from(sc & 15);
        let ml = dmin * f32::from(sc >> 4);
        *y = dl * f32::from(two_bits(qs, i)) - ml;
    }
}

/// Q3_K: a high bit per weight (`hmask`: weight `g * 32 + l`'s is bit `g` of byte `l`, and
/// a clear bit takes 4 off), 2-bit values, 16 signed 6-bit scales packed in 12 bytes
/// (offset 32), f16 `d`.
fn q3_k(b: &[u8], y: &mut [f32]) {
    let (hmask, qs, packed) = (&b[..32], &b[32..96], &b[96..108]);
    let d = half_at(b, 108);
    let scale = |s: usize| {
        let low = match s {
            0..8 => packed[s] & 15,
            _ => packed[s - 8] >> 4,
        };
        let high = (packed[8 + s % 4] >> (2 * (s / 4))) & 3;
        f32::from((low | (high << 4)) as i8 - 32)
    };
    for (i, y) in y.iter_mut().enumerate() {
        let (g, l) = (i / 32, i % 32);
        let off = if (hmask[l] >> g) & 1 == 1 { 0 } else { 4 };
        let q = two_bits(qs, i) as i8 - off;
        *y = (d * scale(i / 16)) * f32::from(q);
    }
}

/// Q4_K's and Q5_K's 6-bit scale and minimum of sub-block `j` (of 8), packed in 12 bytes.
fn scale_min_k4(s: &[u8], j: usize) -> (f32, f32) {
    let (sc, m) = match j {
        0..4 => (s[j] & 63, s[j + 4] & 63),
        _ => (
            (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        ),
    };
    (f32::from(sc), f32::from(m))
}

/// Q4_K and Q5_K: f16 `d` and `dmin`, 8 sub-blocks of 32 with a 6-bit scale and minimum;
/// weight `c * 64 + k * 32 + l` is nibble `k` of byte `c * 32 + l`, plus 16 times the
/// sub-block's bit of `qh[l]` for Q5_K.
fn k4_k5(b: &[u8], y: &mut [f32], qh: Option<&[u8]>, qs: &[u8]) {
    let (d, dmin) = (half_at(b, 0), half_at(b, 2));
    let scales = &b[4..16];
    for (sub, y) in y.chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min_k4(scales, sub);
        let (dl, ml) = (d * sc, dmin * m);
        let (c, k) = (sub / 2, sub % 2);
        for (l, y) in y.iter_mut().enumerate() {
            let mut q = (qs[c * 32 + l] >> (4 * k)) & 15;
            if let Some(qh) = qh {
                q |= ((qh[l] >> sub) & 1) << 4;
            }
            *y = dl * f32::from(q) - ml;
        }
    }
}

/// Q4_K: `d`, `dmin`, 12 bytes of scales, 128 bytes of nibbles.
fn q4_k(b: &[u8], y: &mut [f32]) {
    k4_k5(b, y, None, &b[16..144]);
}

/// Q5_K: as Q4_K with 32 bytes of fifth bits before the nibbles.
fn q5_k(b: &[u8], y: &mut [f32]) {
    k4_k5(b, y, Some(&b[16..48]), &b[48..176]);
}

/// Q6_K: 128 bytes of low nibbles, 64 of 2-bit high parts, 16 signed 8-bit scales (one per
/// 16 weights), f16 `d`; offset 32. In each 128 weights, weight `r`'s nibble is nibble
/// `r / 64` of byte `r % 64` and its high part field `r / 32` of byte `r % 32`.
fn q6_k(b: &[u8], y: &mut [f32]) {
    let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
    let d = half_at(b, 208);
    for (i, y) in y.iter_mut().enumerate() {
        let (half, r) = (i / 128, i % 128);
        let low = (ql[half * 64 + r % 64] >> (4 * (r / 64))) & 15;
        let high = (qh[half * 32 + r % 32] >> (2 * (r / 32))) & 3;
        let q = (low | (high << 4)) as i8 - 32;
        *y = (d * f32::from(scales[i / 16] as i8)) * f32::from(q);
    }
}

/// IQ4_NL: f16 scale, 16 bytes of nibbles indexing [`IQ4_LEVELS`].
fn iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    levels(&b[2..18], d, y);
}

/// 32 weights of IQ4 levels from 16 bytes of nibbles (the low ones first) times `d`.
fn levels(qs: &[u8], d: f32, y: &mut [f32]) {
    for (j, &q) in qs.iter().enumerate() {
        y[j] = d * f32::from(IQ4_LEVELS[usize::from(q & 15)]);
        y[j + 16] = d * f32::from(IQ4_LEVELS[usize::from(q >> 4)]);
    }
}

/// IQ4_XS: f16 `d`, 8 signed 6-bit scales (low nibbles in 4 bytes, high bits in a u16),
/// 8 x 16 bytes of IQ4 nibbles.
fn iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let high = u16::from_le_bytes([b[2], b[3]]);
    let (low, qs) = (&b[4..8], &b[8..136]);
    for (ib, y) in y.chunks_exact_mut(32).enumerate() {
        let ls = ((low[ib / 2] >> (4 * (ib % 2))) & 15) | ((((high >> (2 * ib)) & 3) as u8) << 4);
        let dl = d * f32::from(ls as i8 - 32);
        levels(&qs[ib * 16..][..16], dl, y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_block_type_has_its_layout() {
        for ty in BLOCK_TYPES {
            let (weights, size) = ty.block_layout().unwrap();
            let bytes = vec![0u8; 3 * size as usize];
            let out = dequantize(ty, &bytes, 3 * weights as usize).unwrap();
            assert_eq!(out.len(), 3 * weights as usize, "{ty}");
            // A block one byte short is refused, not read past.
            assert!(dequantize(ty, &bytes[1..], 3 * weights as usize).is_none());
        }
        assert!(dequantize(GgmlType::IQ2_XXS, &[0; 66], 256).is_none());
    }
}
