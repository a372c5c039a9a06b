// Per feature over the batch: how many tokens fire it and the sum of its activations, one
// invocation per (head, feature), rows summed in chunks of 64 (as the CPU step's tiles).
@group(0) @binding(0) var<storage, read_write> pre: array<f32>;         // [H, B, M]
@group(0) @binding(1) var<storage, read_write> gate: array<f32>;        // see act.wgsl
@group(0) @binding(2) var<storage, read_write> fired: array<f32>; // [H, M]
@group(0) @binding(3) var<storage, read_write> fsum: array<f32>;  // [H, M]

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    let h = id.y;
    if (i >= M) {
        return;
    }
    var n = 0.0;
    var total = 0.0;
    for (var b0 = 0u; b0 < B; b0 += 64u) {
        var s = 0.0;
        for (var b = b0; b < min(b0 + 64u, B); b++) {
            let f = act(pre[(h * B + b) * M + i], gate_of(h, b, i));
            s += f;
            n += select(0.0, 1.0, f > 0.0);
        }
        total += s;
    }
    fired[h * M + i] = n;
    fsum[h * M + i] = total;
}
