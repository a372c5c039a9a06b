// Per feature over the batch: the chunks' firings, activation sums and list sizes
// (fstats.wgsl) added in chunk order, one invocation per (feature, head). Each chunk's list
// size is replaced by the sizes of the chunks before it (where fill.wgsl starts writing).
@group(0) @binding(0) var<storage, read_write> part: array<f32>;   // [3, H, NCH, M]
@group(0) @binding(1) var<storage, read_write> fired: array<f32>;  // [H, M]
@group(0) @binding(2) var<storage, read_write> fsum: array<f32>;   // [H, M]
@group(0) @binding(3) var<storage, read_write> lcount: array<u32>; // [H, M]

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    let h = id.y;
    if (i >= M) {
        return;
    }
    let q = H * NCH * M;
    var n = 0.0;
    var total = 0.0;
    var listed = 0u;
    for (var ch = 0u; ch < NCH; ch++) {
        let at = (h * NCH + ch) * M + i;
        n += part[at];
        total += part[q + at];
        // The sparse path's fill starts each chunk's entries after the earlier chunks'.
        let here = part[2u * q + at];
        part[2u * q + at] = f32(listed);
        listed += u32(here);
    }
    fired[h * M + i] = n;
    fsum[h * M + i] = total;
    lcount[h * M + i] = listed;
}
