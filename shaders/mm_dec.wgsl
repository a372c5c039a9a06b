// Reconstruction R = F W_dec + b_dec, per head: [B, M] x [M, D], with F = act(P) formed as
// it is loaded (the features are never written).
@group(0) @binding(0) var<storage, read_write> pre: array<f32>;        // [H, B, M]
@group(0) @binding(1) var<storage, read_write> gate: array<f32>;       // see act.wgsl
@group(0) @binding(2) var<storage, read_write> w_dec: array<f32>;      // [H, M, D]
@group(0) @binding(3) var<storage, read_write> b_dec: array<f32>;      // [H, D]
@group(0) @binding(4) var<storage, read_write> rec: array<f32>;  // [H, B, D]

const RD: u32 = B;
const CD: u32 = D;
const KD: u32 = M;
const A_K_FAST: bool = true;
const B_K_FAST: bool = false;

fn load_a(h: u32, r: u32, k: u32) -> f32 {
    return act(pre[(h * B + r) * M + k], gate_of(h, r, k));
}

fn load_b(h: u32, k: u32, c: u32) -> f32 {
    return w_dec[(h * M + k) * D + c];
}

fn store(h: u32, r: u32, c: u32, v: f32) {
    rec[(h * B + r) * D + c] = v + b_dec[h * D + c];
}
