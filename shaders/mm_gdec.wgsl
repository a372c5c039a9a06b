// dW_dec = F^T dR, per head: [M, B] x [B, D], plus (ReLU) the L1 term through the decoder
// norms, l1 / B * (sum_b f_i) * W_dec[i] / n_i.
@group(0) @binding(0) var<storage, read_write> pre: array<f32>;         // [H, B, M]
@group(0) @binding(1) var<storage, read_write> gate: array<f32>;        // see act.wgsl
@group(0) @binding(2) var<storage, read_write> dr: array<f32>;          // [H, B, D]
@group(0) @binding(3) var<storage, read_write> w_dec: array<f32>;       // [H, M, D]
@group(0) @binding(4) var<storage, read_write> norms: array<f32>;       // [H, M]
@group(0) @binding(5) var<storage, read_write> fsum: array<f32>;        // [H, M]
@group(0) @binding(6) var<storage, read_write> g_wdec: array<f32>; // [H, M, D]
@group(0) @binding(7) var<storage, read_write> sc: array<f32>;          // step scalars

const RD: u32 = M;
const CD: u32 = D;
const KD: u32 = B;
const A_K_FAST: bool = false;
const B_K_FAST: bool = false;

fn load_a(h: u32, r: u32, k: u32) -> f32 {
    return act(pre[(h * B + k) * M + r], gate_of(h, k, r));
}

fn load_b(h: u32, k: u32, c: u32) -> f32 {
    return dr[(h * B + k) * D + c];
}

fn store(h: u32, r: u32, c: u32, v: f32) {
    var g = v;
    if (ACT == ACT_RELU) {
        let n = norms[h * M + r];
        let s = fsum[h * M + r];
        if (n > 0.0 && s != 0.0) {
            g += sc[SC_COEF] * INV_B * s / n * w_dec[(h * M + r) * D + c];
        }
    }
    g_wdec[(h * M + r) * D + c] = g;
}
