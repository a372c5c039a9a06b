// Sparse path: each feature's list of entries, in token order: the token (its top bit set
// when the entry is near a JumpReLU threshold) and the activation's bits. One invocation
// per (head, feature, chunk of CHUNK_ROWS rows) walks its rows, from where the chunk's
// entries start (the list's start, scan.wgsl, plus the earlier chunks' entries,
// fstats_total.wgsl), so no two invocations write the same entry.
@group(0) @binding(0) var<storage, read_write> pre: array<f32>;    // [H, B, M]
@group(0) @binding(1) var<storage, read_write> gate: array<f32>;   // see act.wgsl
@group(0) @binding(2) var<storage, read_write> lists: array<u32>;  // scan.wgsl
@group(0) @binding(3) var<storage, read_write> ent: array<u32>;    // [2 CAP]
@group(0) @binding(4) var<storage, read_write> sc: array<f32>;     // step scalars
@group(0) @binding(5) var<storage, read_write> fparts: array<f32>; // fstats.wgsl

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    let h = id.y;
    let ch = id.z;
    if (i >= M || lists[FLAG_AT] == 0u) {
        return;
    }
    var o = lists[h * M + i] + u32(fparts[2u * H * NCH * M + (h * NCH + ch) * M + i]);
    let b0 = ch * CHUNK_ROWS;
    for (var b = b0; b < min(b0 + CHUNK_ROWS, B); b++) {
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
