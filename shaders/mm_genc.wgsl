// dW_enc = X^T dP, per head: [D, B] x [B, M], as KSPLIT partial products over ranges of KS
// rows of the batch (ksum.wgsl adds them).
@group(0) @binding(0) var<storage, read_write> x: array<f32>;           // [H, B, D]
@group(0) @binding(1) var<storage, read_write> dp: array<f32>;          // [H, B, M]
@group(0) @binding(2) var<storage, read_write> g_part: array<f32>; // [KSPLIT, H, D, M]

const RD: u32 = D;
const CD: u32 = M;
const KD: u32 = B;
const A_K_FAST: bool = false;
const B_K_FAST: bool = false;

fn load_a(h: u32, r: u32, k: u32) -> f32 {
    return x[(h * B + k) * D + r];
}

fn load_b(h: u32, k: u32, c: u32) -> f32 {
    return dp[(h * B + k) * M + c];
}

fn store(h: u32, r: u32, c: u32, v: f32) {
    g_part[((split * H + h) * D + r) * M + c] = v;
}
