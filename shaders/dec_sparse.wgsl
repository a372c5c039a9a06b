// Sparse path: the reconstruction R = F W_dec + b_dec of one token and head per workgroup,
// over the features that fire on it, in feature order. The 64 invocations share the row:
// each 256 features at a time, each invocation tests 4 neighbouring ones, a scan of their
// counts packs the firing ones (in order) into workgroup memory, and every invocation adds
// them to its columns of the row.
@group(0) @binding(0) var<storage, read_write> pre: array<f32>;    // [H, B, M]
@group(0) @binding(1) var<storage, read_write> gate: array<f32>;   // see act.wgsl
@group(0) @binding(2) var<storage, read_write> w_dec: array<f32>;  // [H, M, D]
@group(0) @binding(3) var<storage, read_write> b_dec: array<f32>;  // [H, D]
@group(0) @binding(4) var<storage, read_write> lists: array<u32>;  // scan.wgsl
@group(0) @binding(5) var<storage, read_write> rec: array<f32>;    // [H, B, D]

const DV: u32 = (D + 63u) / 64u;

var<workgroup> path: u32;
var<workgroup> counts: array<u32, 64>;
var<workgroup> firing: u32;
var<workgroup> feat: array<u32, 256>;
var<workgroup> fval: array<f32, 256>;

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
    for (var i0 = 0u; i0 < M; i0 += 256u) {
        var f: array<f32, 4>;
        var n = 0u;
        for (var q = 0u; q < 4u; q++) {
            let i = i0 + 4u * li + q;
            f[q] = 0.0;
            if (i < M) {
                f[q] = act(pre[row + i], gate_of(h, b, i));
            }
            n += select(0u, 1u, f[q] > 0.0);
        }
        // Inclusive scan of the counts over the 64 invocations.
        counts[li] = n;
        workgroupBarrier();
        for (var off = 1u; off < 64u; off <<= 1u) {
            var add = 0u;
            if (li >= off) {
                add = counts[li - off];
            }
            workgroupBarrier();
            counts[li] += add;
            workgroupBarrier();
        }
        var o = counts[li] - n;
        for (var q = 0u; q < 4u; q++) {
            if (f[q] > 0.0) {
                feat[o] = i0 + 4u * li + q;
                fval[o] = f[q];
                o += 1u;
            }
        }
        if (li == 63u) {
            firing = counts[63];
        }
        let total = workgroupUniformLoad(&firing);
        for (var e = 0u; e < total; e++) {
            let i = feat[e];
            let fe = fval[e];
            for (var v = 0u; v < DV; v++) {
                let j = li + 64u * v;
                if (j < D) {
                    acc[v] = fma(fe, w_dec[(h * M + i) * D + j], acc[v]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var v = 0u; v < DV; v++) {
        let j = li + 64u * v;
        if (j < D) {
            rec[(h * B + b) * D + j] = acc[v] + b_dec[h * D + j];
        }
    }
}
