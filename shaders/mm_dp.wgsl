// G = dR W_dec^T, per head: [B, D] x [D, M]; then dP = (G + l1 n_i / B) * (f > 0), and
// (JumpReLU) each entry's share of d loss / d log(theta): within half the bandwidth of
// theta, theta (G (-theta / eps) - coef / B / eps), the straight-through estimate.
@group(0) @binding(0) var<storage, read_write> dr: array<f32>;          // [H, B, D]
@group(0) @binding(1) var<storage, read_write> w_dec: array<f32>;       // [H, M, D]
@group(0) @binding(2) var<storage, read_write> pre: array<f32>;         // [H, B, M]
@group(0) @binding(3) var<storage, read_write> gate: array<f32>;        // see act.wgsl
@group(0) @binding(4) var<storage, read_write> norms: array<f32>;       // [H, M]
@group(0) @binding(5) var<storage, read_write> dp: array<f32>;    // [H, B, M]
@group(0) @binding(6) var<storage, read_write> jc: array<f32>;    // [H, B, M] (JumpReLU)
@group(0) @binding(7) var<storage, read_write> sc: array<f32>;          // step scalars

const RD: u32 = B;
const CD: u32 = M;
const KD: u32 = D;
const A_K_FAST: bool = true;
const B_K_FAST: bool = true;

fn load_a(h: u32, r: u32, k: u32) -> f32 {
    return dr[(h * B + r) * D + k];
}

fn load_b(h: u32, k: u32, c: u32) -> f32 {
    return w_dec[(h * M + c) * D + k];
}

fn store(h: u32, r: u32, c: u32, v: f32) {
    let at = (h * B + r) * M + c;
    let p = pre[at];
    let g = gate_of(h, r, c);
    let f = act(p, g);
    var l1 = 0.0;
    if (ACT == ACT_RELU) {
        l1 = sc[SC_COEF] * norms[h * M + c] * INV_B;
    }
    dp[at] = select(0.0, v + l1, f > 0.0);
    if (ACT == ACT_JUMP) {
        let theta = exp(g);
        let inv_eps = sc[SC_INV_EPS];
        let near = abs(p - theta) < sc[SC_HALF_BAND];
        let share = theta * (v * (-theta * inv_eps) - sc[SC_COEF] * INV_B * inv_eps);
        jc[at] = select(0.0, share, near);
    }
}
