// Sparse path: the reconstruction R = F W_dec + b_dec of one token and head per workgroup,
// over the features that fire on it (in feature order); 64 invocations share the row.
@group(0) @binding(0) var<storage, read_write> pre: array<f32>;    // [H, B, M]
@group(0) @binding(1) var<storage, read_write> gate: array<f32>;   // see act.wgsl
@group(0) @binding(2) var<storage, read_write> w_dec: array<f32>;  // [H, M, D]
@group(0) @binding(3) var<storage, read_write> b_dec: array<f32>;  // [H, D]
@group(0) @binding(4) var<storage, read_write> lists: array<u32>;  // scan.wgsl
@group(0) @binding(5) var<storage, read_write> rec: array<f32>;    // [H, B, D]

const DV: u32 = (D + 63u) / 64u;

var<workgroup> path: u32;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    if (li == 0u) {
        path = lists[FLAG_AT];
    }
    if (workgroupUniformLoad(&path) == 0u) {
        return;
    }
    let b = wg.x;
    let h = wg.y;
    var acc: array<f32, DV>;
    for (var v = 0u; v < DV; v++) {
        acc[v] = 0.0;
    }
    let row = (h * B + b) * M;
    for (var i = 0u; i < M; i++) {
        let f = act(pre[row + i], gate_of(h, b, i));
        if (f > 0.0) {
            for (var v = 0u; v < DV; v++) {
                let j = li + 64u * v;
                if (j < D) {
                    acc[v] = fma(f, w_dec[(h * M + i) * D + j], acc[v]);
                }
            }
        }
    }
    for (var v = 0u; v < DV; v++) {
        let j = li + 64u * v;
        if (j < D) {
            rec[(h * B + b) * D + j] = acc[v] + b_dec[h * D + j];
        }
    }
}
