// Column sums over the batch: out[h, c] = sum_b v[h, b, c] for v [H, B, N], one invocation
// per (head, column), rows summed in chunks of 64.
@group(0) @binding(0) var<storage, read_write> v: array<f32>;          // [H, B, N]
@group(0) @binding(1) var<storage, read_write> out: array<f32>;  // [H, N]

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(global_invocation_id) id: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    if (skip_dense(li)) {
        return;
    }
    let c = id.x;
    let h = id.y;
    if (c >= N) {
        return;
    }
    var total = 0.0;
    for (var b0 = 0u; b0 < B; b0 += 64u) {
        var s = 0.0;
        for (var b = b0; b < min(b0 + 64u, B); b++) {
            s += v[(h * B + b) * N + c];
        }
        total += s;
    }
    out[h * N + c] = total;
}
