// AuxK, per token: the difference between the dead features' reconstruction E_hat (no
// decoder bias) and the live features' error X - R, which is -dR B / 2; its squared norm
// times the head's scale; and E_hat replaced in place by the difference's gradient,
// 2 coef scale (E_hat - (X - R)) / B. One invocation per (head, token).
// factors: [scale_h for each head, 2 coef scale_h / B for each head, coef].
@group(0) @binding(0) var<storage, read_write> dr: array<f32>;          // [H, B, D]
@group(0) @binding(1) var<storage, read_write> ehat: array<f32>;  // [H, B, D], E_hat in, gradient out
@group(0) @binding(2) var<storage, read_write> aux_sq: array<f32>; // [H, B]
@group(0) @binding(3) var<storage, read_write> factors: array<f32>;    // [2 H + 1]

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let b = id.x;
    let h = id.y;
    if (b >= B) {
        return;
    }
    let half_b = f32(B) * 0.5;
    let row = (h * B + b) * D;
    let grad = factors[H + h];
    var sq = 0.0;
    for (var j = 0u; j < D; j++) {
        let diff = ehat[row + j] + dr[row + j] * half_b;
        sq = fma(diff, diff, sq);
        ehat[row + j] = grad * diff;
    }
    aux_sq[h * B + b] = factors[h] * sq;
}
