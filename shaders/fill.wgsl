// Sparse path: each feature's list of entries, in token order: the token (its top bit set
// when the entry is near a JumpReLU threshold) and the activation's bits. One invocation
// per (head, feature) walks the batch, so no two invocations write the same entry.
@group(0) @binding(0) var<storage, read_write> pre: array<f32>;    // [H, B, M]
@group(0) @binding(1) var<storage, read_write> gate: array<f32>;   // see act.wgsl
@group(0) @binding(2) var<storage, read_write> lists: array<u32>;  // scan.wgsl
@group(0) @binding(3) var<storage, read_write> ent: array<u32>;    // [2 CAP]
@group(0) @binding(4) var<storage, read_write> sc: array<f32>;     // step scalars

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    let h = id.y;
    if (i >= M || lists[FLAG_AT] == 0u) {
        return;
    }
    var o = lists[h * M + i];
    for (var b = 0u; b < B; b++) {
        let p = pre[(h * B + b) * M + i];
        let g = gate_of(h, b, i);
        let f = act(p, g);
        let near = is_near(p, g);
        if (f > 0.0 || near) {
            ent[2u * o] = b | select(0u, 0x80000000u, near);
            ent[2u * o + 1u] = bitcast<u32>(f);
            o += 1u;
        }
    }
}
