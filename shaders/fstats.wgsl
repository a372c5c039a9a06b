// Per feature over the batch: how many tokens fire it, the sum of its activations, and
// how many entries its sparse list will hold (the firing ones, and for JumpReLU also those
// within half the bandwidth of the threshold). One invocation per (head, feature), rows
// summed in chunks of 64 (as the CPU step's tiles).
@group(0) @binding(0) var<storage, read_write> pre: array<f32>;    // [H, B, M]
@group(0) @binding(1) var<storage, read_write> gate: array<f32>;   // see act.wgsl
@group(0) @binding(2) var<storage, read_write> fired: array<f32>;  // [H, M]
@group(0) @binding(3) var<storage, read_write> fsum: array<f32>;   // [H, M]
@group(0) @binding(4) var<storage, read_write> lcount: array<u32>; // [H, M]
@group(0) @binding(5) var<storage, read_write> sc: array<f32>;     // step scalars

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    let h = id.y;
    if (i >= M) {
        return;
    }
    var n = 0.0;
    var listed = 0u;
    var total = 0.0;
    for (var b0 = 0u; b0 < B; b0 += 64u) {
        var s = 0.0;
        for (var b = b0; b < min(b0 + 64u, B); b++) {
            let p = pre[(h * B + b) * M + i];
            let g = gate_of(h, b, i);
            let f = act(p, g);
            s += f;
            n += select(0.0, 1.0, f > 0.0);
            if (f > 0.0 || is_near(p, g)) {
                listed += 1u;
            }
        }
        total += s;
    }
    fired[h * M + i] = n;
    fsum[h * M + i] = total;
    lcount[h * M + i] = listed;
}
