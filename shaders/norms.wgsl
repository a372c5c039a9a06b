// Decoder row norms n_i = ||W_dec[h][i]||, one invocation per (head, feature).
@group(0) @binding(0) var<storage, read_write> w_dec: array<f32>;       // [H, M, D]
@group(0) @binding(1) var<storage, read_write> norms: array<f32>; // [H, M]

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    let h = id.y;
    if (i >= M) {
        return;
    }
    var s = 0.0;
    for (var j = 0u; j < D; j++) {
        let w = w_dec[(h * M + i) * D + j];
        s = fma(w, w, s);
    }
    norms[h * M + i] = sqrt(s);
}
