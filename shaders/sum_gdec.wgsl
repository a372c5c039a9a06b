// dW_dec's total (ksum.wgsl), plus (ReLU) the L1 term through the decoder norms,
// l1 / B * (sum_b f_i) * W_dec[i] / n_i.
@group(0) @binding(0) var<storage, read_write> part: array<f32>;    // [PARTS, H, M, D]
@group(0) @binding(1) var<storage, read_write> g_wdec: array<f32>;  // [H, M, D]
@group(0) @binding(2) var<storage, read_write> w_dec: array<f32>;   // [H, M, D]
@group(0) @binding(3) var<storage, read_write> norms: array<f32>;   // [H, M]
@group(0) @binding(4) var<storage, read_write> fsum: array<f32>;    // [H, M]
@group(0) @binding(5) var<storage, read_write> sc: array<f32>;      // step scalars

fn finish(h: u32, i: u32, at: u32, v: f32) {
    var g = v;
    if (ACT == ACT_RELU) {
        let r = h * M + i / D;
        let n = norms[r];
        let s = fsum[r];
        if (n > 0.0 && s != 0.0) {
            g += sc[SC_COEF] * INV_B * s / n * w_dec[at];
        }
    }
    g_wdec[at] = g;
}
