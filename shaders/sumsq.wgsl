// Sums of squares of one gradient array, a partial per workgroup of 4096 values (for the
// global norm that clipping needs), written at partials[OFF + workgroup].
@group(0) @binding(0) var<storage, read_write> g: array<f32>;             // [N]
@group(0) @binding(1) var<storage, read_write> partials: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    var s = 0.0;
    for (var e = 0u; e < 16u; e++) {
        let i = wg.x * 4096u + e * 256u + li;
        if (i < N) {
            s = fma(g[i], g[i], s);
        }
    }
    let total = reduce(li, s);
    if (li == 0u) {
        partials[OFF + wg.x] = total;
    }
}
