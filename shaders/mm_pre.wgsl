// P = X W_enc + b_enc, per head: [B, D] x [D, M].
@group(0) @binding(0) var<storage, read_write> x: array<f32>;          // [H, B, D]
@group(0) @binding(1) var<storage, read_write> w_enc: array<f32>;      // [H, D, M]
@group(0) @binding(2) var<storage, read_write> b_enc: array<f32>;      // [H, M]
@group(0) @binding(3) var<storage, read_write> pre: array<f32>;  // [H, B, M]

const RD: u32 = B;
const CD: u32 = M;
const KD: u32 = D;
const A_K_FAST: bool = true;
const B_K_FAST: bool = false;

fn load_a(h: u32, r: u32, k: u32) -> f32 {
    return x[(h * B + r) * D + k];
}

fn load_b(h: u32, k: u32, c: u32) -> f32 {
    return w_enc[(h * D + k) * M + c];
}

fn store(h: u32, r: u32, c: u32, v: f32) {
    pre[(h * B + r) * M + c] = v + b_enc[h * M + c];
}
