// dW_dec = F^T dR, per head: [M, B] x [B, D], as KSPLIT partial products over ranges of KS
// rows of the batch (ksum.wgsl adds them, sum_gdec.wgsl the L1 term).
@group(0) @binding(0) var<storage, read_write> pre: array<f32>;     // [H, B, M]
@group(0) @binding(1) var<storage, read_write> gate: array<f32>;    // see act.wgsl
@group(0) @binding(2) var<storage, read_write> dr: array<f32>;      // [H, B, D]
@group(0) @binding(3) var<storage, read_write> g_part: array<f32>;  // [KSPLIT, H, M, D]

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
    g_part[((split * H + h) * M + r) * D + c] = v;
}
