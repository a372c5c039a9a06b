// Sparse path: everything the backward needs from one feature, per workgroup, from its
// list of entries (fill.wgsl), in token order: dP = dR . W_dec[i] (+ l1 n_i / B) at each
// firing entry, dW_dec[i] = sum f dR, dW_enc[:, i] = sum dP X, db_enc[i] = sum dP, and
// (JumpReLU) d log theta_i from the entries near the threshold. The feature's outputs are
// written by this workgroup alone, zeros included.
@group(0) @binding(0) var<storage, read_write> ent: array<u32>;     // [2 CAP]
@group(0) @binding(1) var<storage, read_write> lists: array<u32>;   // scan.wgsl
@group(0) @binding(2) var<storage, read_write> dr: array<f32>;      // [H, B, D]
@group(0) @binding(3) var<storage, read_write> x: array<f32>;       // [H, B, D]
@group(0) @binding(4) var<storage, read_write> w_dec: array<f32>;   // [H, M, D]
@group(0) @binding(5) var<storage, read_write> gate: array<f32>;    // see act.wgsl
@group(0) @binding(6) var<storage, read_write> norms: array<f32>;   // [H, M]
@group(0) @binding(7) var<storage, read_write> fsum: array<f32>;    // [H, M]
@group(0) @binding(8) var<storage, read_write> sc: array<f32>;      // step scalars
@group(0) @binding(9) var<storage, read_write> g_wdec: array<f32>;  // [H, M, D]
@group(0) @binding(10) var<storage, read_write> g_wenc: array<f32>; // [H, D, M]
@group(0) @binding(11) var<storage, read_write> g_benc: array<f32>; // [H, M]
@group(0) @binding(12) var<storage, read_write> g_lt: array<f32>;   // [H, M] (JumpReLU)

const DW: u32 = (D + 255u) / 256u;

var<workgroup> wrow: array<f32, D>;
var<workgroup> eb: array<u32, 256>;
var<workgroup> ef: array<f32, 256>;
var<workgroup> edp: array<f32, 256>;
var<workgroup> ejc: array<f32, 256>;
var<workgroup> span: array<u32, 3>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = wg.x;
    let h = wg.y;
    let fi = h * M + i;
    if (li == 0u) {
        span[0] = lists[FLAG_AT];
        span[1] = lists[fi];
        span[2] = lists[fi + 1u];
    }
    if (workgroupUniformLoad(&span[0]) == 0u) {
        return;
    }
    let start = workgroupUniformLoad(&span[1]);
    let end = workgroupUniformLoad(&span[2]);
    for (var j = li; j < D; j += 256u) {
        wrow[j] = w_dec[fi * D + j];
    }
    workgroupBarrier();
    var l1 = 0.0;
    if (ACT == ACT_RELU) {
        l1 = sc[SC_COEF] * norms[fi] * INV_B;
    }
    var theta = 0.0;
    if (ACT == ACT_JUMP) {
        theta = exp(gate[fi]);
    }
    let inv_eps = sc[SC_INV_EPS];
    var gw: array<f32, DW>;
    var ge: array<f32, DW>;
    for (var v = 0u; v < DW; v++) {
        gw[v] = 0.0;
        ge[v] = 0.0;
    }
    var sbe = 0.0;
    var slt = 0.0;
    for (var c = start; c < end; c += 256u) {
        let e = c + li;
        var bb = 0u;
        var f = 0.0;
        var dpv = 0.0;
        var jcv = 0.0;
        if (e < end) {
            let packed = ent[2u * e];
            bb = packed & 0x7fffffffu;
            f = bitcast<f32>(ent[2u * e + 1u]);
            var g = 0.0;
            for (var j = 0u; j < D; j++) {
                g = fma(dr[(h * B + bb) * D + j], wrow[j], g);
            }
            dpv = select(0.0, g + l1, f > 0.0);
            if (ACT == ACT_JUMP && (packed >> 31u) == 1u) {
                jcv = theta * (g * (-theta * inv_eps) - sc[SC_COEF] * INV_B * inv_eps);
            }
        }
        eb[li] = bb;
        ef[li] = f;
        edp[li] = dpv;
        ejc[li] = jcv;
        workgroupBarrier();
        let n = min(256u, end - c);
        for (var v = 0u; v < DW; v++) {
            let j = li + 256u * v;
            if (j < D) {
                for (var t = 0u; t < n; t++) {
                    let at = (h * B + eb[t]) * D + j;
                    gw[v] = fma(ef[t], dr[at], gw[v]);
                    ge[v] = fma(edp[t], x[at], ge[v]);
                }
            }
        }
        if (li == 0u) {
            for (var t = 0u; t < n; t++) {
                sbe += edp[t];
                slt += ejc[t];
            }
        }
        workgroupBarrier();
    }
    let nrm = norms[fi];
    let s = fsum[fi];
    for (var v = 0u; v < DW; v++) {
        let j = li + 256u * v;
        if (j < D) {
            var g = gw[v];
            if (ACT == ACT_RELU && nrm > 0.0 && s != 0.0) {
                g += sc[SC_COEF] * INV_B * s / nrm * wrow[j];
            }
            g_wdec[fi * D + j] = g;
            g_wenc[(h * D + j) * M + i] = ge[v];
        }
    }
    if (li == 0u) {
        g_benc[fi] = sbe;
        if (ACT == ACT_JUMP) {
            g_lt[fi] = slt;
        }
    }
}
